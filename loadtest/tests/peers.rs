//! The peer adapters without a peer server: the per-sender checks, and
//! each protocol's handshake, publish frames and deliveries fed frames as
//! the servers write them (Engine.IO v4 / Socket.IO, Pusher, Centrifuge
//! JSON, gorilla's newline-joined frames).

use loadtest::peers::{pusher_subscribe, Got, Peer, PerSender};
use loadtest::scan::Body;
use loadtest::shard::Seen;
use loadtest::Protocol;

/// Feeds one frame; returns what it meant and empties the outbox.
fn feed(p: &mut Peer, frame: &str) -> (Vec<Got>, Vec<String>) {
    let mut got = Vec::new();
    p.on_frame(frame.as_bytes(), |g| got.push(g));
    (got, std::mem::take(&mut p.outbox))
}

fn body(t: u64, sender: u64, n: u64) -> Got {
    Got::Body(Body { t, sender, n })
}

#[test]
fn per_sender_checks_count_loss_duplicates_and_order() {
    let mut c = PerSender::new(2, None);
    let seen: Vec<_> = [(0, 1), (0, 2), (1, 2), (1, 1), (0, 2), (0, 4), (7, 1)]
        .iter()
        .map(|&(s, n)| c.see(s, n))
        .collect();
    assert_eq!(
        seen,
        vec![
            Some(Seen::InOrder),
            Some(Seen::InOrder),
            Some(Seen::OutOfOrder), // 1 skipped ...
            Some(Seen::OutOfOrder), // ... and filled late
            Some(Seen::Duplicate),
            Some(Seen::OutOfOrder), // 3 skipped
            None,                   // not a sender of this run
        ]
    );
    // Sender 0 published 5 (3 and 5 never came), sender 1 published 2.
    assert_eq!(c.lost(&[5, 2]), 2);
    assert_eq!(c.lost(&[4, 3]), 2);

    // A sender that gets no echo of its own messages expects none.
    let own = PerSender::new(2, Some(1));
    assert_eq!(own.lost(&[0, 10]), 0);
    assert_eq!(own.lost(&[3, 10]), 3);
}

#[test]
fn socketio_joins_answers_pings_and_reads_events_and_acks() {
    let mut p = Peer::new(Protocol::Socketio, "ltrun", "", "");
    assert_eq!(p.open(), (vec![], false));
    let open = r#"0{"sid":"x","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#;
    assert_eq!(feed(&mut p, open), (vec![], vec!["40".to_string()]));
    assert_eq!(
        feed(&mut p, r#"40{"sid":"y"}"#),
        (vec![], vec![r#"420["join","ltrun"]"#.to_string()])
    );
    assert_eq!(feed(&mut p, "430[]"), (vec![Got::Subscribed], vec![]));
    assert_eq!(feed(&mut p, "2"), (vec![], vec!["3".to_string()]));
    assert_eq!(p.publish(7, "t=5;s1n7;xx"), r#"427["m","t=5;s1n7;xx"]"#);
    assert_eq!(
        feed(&mut p, r#"42["m","t=5;s1n7;xx"]"#),
        (vec![body(5, 1, 7)], vec![])
    );
    assert_eq!(feed(&mut p, "437[]"), (vec![Got::Ack(7)], vec![]));
    let (got, _) = feed(&mut p, r#"44{"message":"no"}"#);
    assert!(matches!(&got[..], [Got::Refused(_)]));
}

#[test]
fn pusher_signs_the_private_subscription() {
    // The example of Pusher's channel authorization docs.
    let f = pusher_subscribe(
        "278d425bdf160c739803",
        "7ad3773142a6692b25b8",
        "1234.1234",
        "private-foobar",
    );
    assert_eq!(
        f,
        r#"{"event":"pusher:subscribe","data":{"auth":"278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4","channel":"private-foobar"}}"#
    );
}

#[test]
fn pusher_subscribes_after_the_greeting_and_reads_client_events() {
    let mut p = Peer::new(Protocol::Pusher, "private-ltrun", "k", "s");
    assert_eq!(p.open(), (vec![], false));
    let hello = r#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"123.456\",\"activity_timeout\":120}"}"#;
    let (got, out) = feed(&mut p, hello);
    assert!(got.is_empty());
    assert_eq!(
        out,
        vec![pusher_subscribe("k", "s", "123.456", "private-ltrun")]
    );
    let ok = r#"{"event":"pusher_internal:subscription_succeeded","channel":"private-ltrun","data":"{}"}"#;
    assert_eq!(feed(&mut p, ok), (vec![Got::Subscribed], vec![]));
    assert_eq!(
        feed(&mut p, r#"{"event":"pusher:ping","data":{}}"#).1,
        vec![r#"{"event":"pusher:pong","data":{}}"#.to_string()]
    );
    assert_eq!(
        p.publish(3, "t=9;s0n3;"),
        r#"{"event":"client-m","channel":"private-ltrun","data":"t=9;s0n3;"}"#
    );
    let ev = r#"{"event":"client-m","channel":"private-ltrun","data":"t=9;s0n3;xxx"}"#;
    assert_eq!(feed(&mut p, ev), (vec![body(9, 0, 3)], vec![]));
}

#[test]
fn pusher_refusal_before_the_subscription_fails_the_connection() {
    let mut p = Peer::new(Protocol::Pusher, "private-ltrun", "k", "s");
    let (got, _) = feed(
        &mut p,
        r#"{"event":"pusher:error","data":{"code":4001,"message":"App key not in this cluster"}}"#,
    );
    assert!(matches!(&got[..], [Got::Refused(_)]));
}

#[test]
fn centrifuge_connects_subscribes_and_reads_batched_lines() {
    let mut p = Peer::new(Protocol::Centrifuge, "ltrun", "", "");
    assert_eq!(
        p.open(),
        (vec![r#"{"id":1,"params":{}}"#.to_string()], false)
    );
    let (got, out) = feed(&mut p, "{\"id\":1,\"result\":{\"client\":\"c\"}}\n");
    assert!(got.is_empty());
    assert_eq!(
        out,
        vec![r#"{"id":2,"method":1,"params":{"channel":"ltrun"}}"#.to_string()]
    );
    assert_eq!(
        feed(&mut p, "{\"id\":2,\"result\":{}}\n").0,
        vec![Got::Subscribed]
    );
    assert_eq!(
        p.publish(1, "t=4;s0n1;"),
        r#"{"id":3,"method":3,"params":{"channel":"ltrun","data":"t=4;s0n1;"}}"#
    );
    // A push, a publish reply and a refused publish in one frame.
    let frame = concat!(
        r#"{"result":{"channel":"ltrun","data":{"data":"t=4;s0n1;","info":{"client":"c"}}}}"#,
        "\n",
        r#"{"id":3,"result":{}}"#,
        "\n",
        r#"{"id":4,"error":{"code":103,"message":"permission denied"}}"#,
        "\n"
    );
    let (got, _) = feed(&mut p, frame);
    assert_eq!(got.len(), 3);
    assert_eq!(&got[..2], &[body(4, 0, 1), Got::Ack(1)]);
    assert!(matches!(&got[2], Got::SendRefused(2, _)));
}

#[test]
fn gorilla_and_nchan_are_subscribed_on_connect_and_read_raw_bodies() {
    for proto in [Protocol::Gorilla, Protocol::Nchan] {
        let mut p = Peer::new(proto, "ltrun", "", "");
        assert_eq!(p.open(), (vec![], true));
        assert_eq!(p.publish(2, "t=1;s3n2;x"), "t=1;s3n2;x");
        // gorilla's hub joins queued messages with newlines.
        let (got, out) = feed(&mut p, "t=1;s3n2;x\nt=2;s0n9;xx");
        assert_eq!(got, vec![body(1, 3, 2), body(2, 0, 9)]);
        assert!(out.is_empty());
    }
}

#[test]
fn peers_run_only_room_and_idle() {
    for (scenario, ok) in [("room", true), ("idle", true), ("rooms", false)] {
        let args = loadtest::Args::from_flags([
            "--protocol",
            "gorilla",
            "--scenario",
            scenario,
            "--url",
            "http://127.0.0.1:1",
            "--connections",
            "1",
        ])
        .expect("valid flags");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let err = rt
            .block_on(loadtest::run(args))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        // Allowed scenarios get as far as the (absent) peer.
        assert_eq!(
            err.contains("only the room and idle scenarios"),
            !ok,
            "{scenario}: {err}"
        );
    }
}
