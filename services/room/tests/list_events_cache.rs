//! `ListEvents` with the recent-event cache: the same answers as the store,
//! whatever the cache holds (see the docs of chat-room's `recent` module).
//!
//! Each test runs the service on a real SQLite store, the in-process bus
//! and ephemeral store, and calls the gRPC methods directly. Writes go
//! through a service with the cache on; a second service on the same store
//! with the cache off gives the reference answer.

mod common;

use async_trait::async_trait;
use bytes::Bytes;
use chat_auth::token::Issuer;
use chat_auth::{SigningKey, Verifier};
use chat_bus::{Bus, MemoryBus, Subjects};
use chat_core::{RoomId, Seq, SessionId, UserId};
use chat_ephemeral::{Ephemeral, EphemeralError, MemoryEphemeral, RateDecision};
use chat_proto::v1 as pb;
use chat_proto::v1::room_service_server::RoomService;
use chat_room::{RoomConfig, RoomSvc};
use chat_store::Store;
use common::as_user as req;
use prost::Message as _;
use std::sync::Arc;
use std::time::Duration;

struct World {
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    /// The cache of `svc`.
    cache: Arc<MemoryEphemeral>,
    /// Cache on (256 events per room): every write goes through it.
    svc: RoomSvc,
    /// Cache off, same store: the reference answer.
    plain: RoomSvc,
    issuer: Issuer,
    verifier: Verifier,
}

fn config(recent_cache: usize) -> RoomConfig {
    RoomConfig {
        send_limit: 0,
        recent_cache,
        ..RoomConfig::default()
    }
}

impl World {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("chat.db").display());
        let store = chat_store::connect(&url).await.unwrap();
        let bus: Arc<dyn Bus> = Arc::new(MemoryBus::default());
        let key = SigningKey::generate().unwrap();
        let revocations: Arc<dyn Ephemeral> = Arc::new(MemoryEphemeral::default());
        let verifier = Verifier::new(&[key.public_key()], revocations);
        let cache = Arc::new(MemoryEphemeral::default());
        let service = |ephemeral: Arc<dyn Ephemeral>, recent_cache| {
            RoomSvc::new(
                store.clone(),
                bus.clone(),
                ephemeral,
                Subjects::default(),
                verifier.clone(),
                config(recent_cache),
            )
        };
        World {
            svc: service(cache.clone(), 256),
            plain: service(Arc::new(MemoryEphemeral::default()), 0),
            _dir: dir,
            store,
            bus,
            cache,
            issuer: Issuer::new(&key, Duration::from_secs(600)),
            verifier,
        }
    }

    /// Another service on the same store and bus.
    fn service(&self, ephemeral: Arc<dyn Ephemeral>, recent_cache: usize) -> RoomSvc {
        RoomSvc::new(
            self.store.clone(),
            self.bus.clone(),
            ephemeral,
            Subjects::default(),
            self.verifier.clone(),
            config(recent_cache),
        )
    }

    /// A new user and an access token of theirs.
    async fn user(&self, name: &str) -> String {
        common::user(&*self.store, &self.issuer, name).await
    }

    /// A public room of `owner`'s that `others` joined.
    async fn room(&self, owner: &str, others: &[&str]) -> String {
        let room = self
            .svc
            .create_room(req(
                owner,
                pb::CreateRoomRequest {
                    name: "general".into(),
                    topic: String::new(),
                    visibility: "public".into(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        for t in others {
            self.svc
                .join_room(req(
                    t,
                    pb::JoinRoomRequest {
                        room_id: room.id.clone(),
                    },
                ))
                .await
                .unwrap();
        }
        room.id
    }
}

fn room_id(id: &str) -> RoomId {
    RoomId::parse(id).unwrap()
}

async fn post(svc: &RoomSvc, token: &str, room: &str, body: &str) -> Seq {
    let r = svc
        .post_message(req(
            token,
            pb::PostMessageRequest {
                room_id: room.into(),
                client_msg_id: uuid::Uuid::new_v4().to_string(),
                body: body.into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(r.created);
    r.message.unwrap().seq
}

async fn edit(svc: &RoomSvc, token: &str, room: &str, seq: Seq, body: &str) {
    svc.edit_message(req(
        token,
        pb::EditMessageRequest {
            room_id: room.into(),
            seq,
            body: body.into(),
        },
    ))
    .await
    .unwrap();
}

async fn delete(svc: &RoomSvc, token: &str, room: &str, seq: Seq) {
    svc.delete_message(req(
        token,
        pb::DeleteMessageRequest {
            room_id: room.into(),
            seq,
        },
    ))
    .await
    .unwrap();
}

async fn events(
    svc: &RoomSvc,
    token: &str,
    room: &str,
    after: Seq,
    limit: u32,
) -> pb::ListEventsResponse {
    svc.list_events(req(
        token,
        pb::ListEventsRequest {
            room_id: room.into(),
            after_seq: after,
            limit,
        },
    ))
    .await
    .unwrap()
    .into_inner()
}

async fn last_seq(w: &World, token: &str, room: &str) -> Seq {
    w.plain
        .get_room(req(
            token,
            pb::GetRoomRequest {
                room_id: room.into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .room
        .unwrap()
        .last_seq
}

/// `svc` answers every `ListEvents` of the room (every start, several page
/// sizes) exactly as the store does.
async fn assert_same_as_the_store(w: &World, svc: &RoomSvc, token: &str, room: &str) {
    let last = last_seq(w, token, room).await;
    for after in 0..=last + 1 {
        for limit in [1, 2, 5, 0] {
            let expected = events(&w.plain, token, room, after, limit).await;
            let got = events(svc, token, room, after, limit).await;
            assert_eq!(got, expected, "after {after}, limit {limit}");
        }
    }
}

fn body_of(e: &pb::RoomEvent) -> &str {
    match &e.kind {
        Some(pb::room_event::Kind::Message(m)) => &m.body,
        Some(pb::room_event::Kind::Edited(ed)) => &ed.body,
        _ => "",
    }
}

/// The room's cache entries, decoded.
async fn cached(w: &World, room: &str) -> Vec<pb::RoomEvent> {
    w.cache
        .cached_events(room_id(room), 0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|(seq, b)| {
            let e = pb::RoomEvent::decode(b).unwrap();
            assert_eq!(e.seq, seq);
            e
        })
        .collect()
}

/// Overwrites cache entries (as a racing or failed writer might leave them).
async fn put(w: &World, room: &str, entries: &[pb::RoomEvent]) {
    let entries: Vec<(Seq, Bytes)> = entries
        .iter()
        .map(|e| (e.seq, Bytes::from(e.encode_to_vec())))
        .collect();
    w.cache
        .cache_events(room_id(room), &entries, 256)
        .await
        .unwrap();
}

/// A copy of a message event with another body.
fn with_body(e: &pb::RoomEvent, body: &str) -> pb::RoomEvent {
    let mut e = e.clone();
    match &mut e.kind {
        Some(pb::room_event::Kind::Message(m)) => m.body = body.into(),
        Some(pb::room_event::Kind::Edited(ed)) => ed.body = body.into(),
        _ => panic!("no body to change"),
    }
    e
}

#[tokio::test]
async fn list_events_answers_as_the_store_does_across_posts_edits_and_deletes() {
    let w = World::new().await;
    let (alice, bob) = (w.user("alice").await, w.user("bob").await);
    let room = w.room(&alice, &[&bob]).await;
    assert_same_as_the_store(&w, &w.svc, &alice, &room).await;

    for i in 1..=12 {
        let who = if i % 2 == 0 { &bob } else { &alice };
        let seq = post(&w.svc, who, &room, &format!("message {i}")).await;
        assert_eq!(seq, i);
    }
    assert_same_as_the_store(&w, &w.svc, &alice, &room).await;

    // An edit: the message at seq 3 shows its new body from its own seq on.
    edit(&w.svc, &alice, &room, 3, "message 3, edited").await;
    assert_same_as_the_store(&w, &w.svc, &bob, &room).await;
    let third = events(&w.svc, &bob, &room, 2, 1).await.items.remove(0);
    match third.kind {
        Some(pb::room_event::Kind::Message(m)) => {
            assert_eq!(m.body, "message 3, edited");
            assert!(m.edited_at.is_some());
        }
        other => panic!("expected the message, got {other:?}"),
    }

    // Edited twice, then deleted by its author: a tombstone, and its edits
    // lose their bodies.
    edit(&w.svc, &alice, &room, 5, "secret, take two").await;
    edit(&w.svc, &alice, &room, 5, "secret, take three").await;
    delete(&w.svc, &alice, &room, 5).await;
    assert_same_as_the_store(&w, &w.svc, &bob, &room).await;
    let replay = events(&w.svc, &bob, &room, 0, 200).await;
    assert!(!replay.has_more);
    let fifth = &replay.items[4];
    match &fifth.kind {
        Some(pb::room_event::Kind::Message(m)) => {
            assert!(m.deleted);
            assert_eq!(m.body, "");
        }
        other => panic!("expected the tombstone, got {other:?}"),
    }
    for e in &replay.items {
        assert!(!body_of(e).contains("secret"), "deleted text in {e:?}");
    }

    // An admin deletes someone else's message.
    delete(&w.svc, &alice, &room, 4).await;
    for i in 13..=17 {
        post(&w.svc, &bob, &room, &format!("message {i}")).await;
    }
    assert_same_as_the_store(&w, &w.svc, &bob, &room).await;

    // The cache itself was rewritten: tombstones and blanked edits, with
    // every seq there.
    let entries = cached(&w, &room).await;
    assert_eq!(
        entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=last_seq(&w, &bob, &room).await).collect::<Vec<_>>()
    );
    for e in &entries {
        assert!(!body_of(e).contains("secret"), "deleted text cached: {e:?}");
    }
    assert_eq!(
        entries[3..5],
        events(&w.plain, &bob, &room, 3, 2).await.items[..],
        "the deleted messages' cache entries are their tombstones"
    );
}

#[tokio::test]
async fn pages_from_the_cache_say_whether_more_follow() {
    let w = World::new().await;
    let alice = w.user("alice").await;
    let room = w.room(&alice, &[]).await;
    for i in 1..=10 {
        post(&w.svc, &alice, &room, &format!("m{i}")).await;
    }
    let (mut after, mut pages) = (0, Vec::new());
    loop {
        let page = events(&w.svc, &alice, &room, after, 3).await;
        assert_eq!(page, events(&w.plain, &alice, &room, after, 3).await);
        let seqs: Vec<Seq> = page.items.iter().map(|e| e.seq).collect();
        after = *seqs.last().unwrap();
        pages.push((seqs, page.has_more));
        if !page.has_more {
            break;
        }
    }
    assert_eq!(
        pages,
        vec![
            (vec![1, 2, 3], true),
            (vec![4, 5, 6], true),
            (vec![7, 8, 9], true),
            (vec![10], false),
        ]
    );
    let done = events(&w.svc, &alice, &room, 10, 3).await;
    assert!(done.items.is_empty() && !done.has_more);
    let beyond = events(&w.svc, &alice, &room, 50, 3).await;
    assert!(beyond.items.is_empty() && !beyond.has_more);
}

#[tokio::test]
async fn a_resume_near_the_end_is_answered_from_the_cache() {
    let w = World::new().await;
    let alice = w.user("alice").await;
    let room = w.room(&alice, &[]).await;
    for i in 1..=5 {
        post(&w.svc, &alice, &room, &format!("m{i}")).await;
    }
    // Mark the cache's copy of seq 4, to tell where an answer came from.
    let fourth = cached(&w, &room).await.remove(3);
    put(&w, &room, &[with_body(&fourth, "from the cache")]).await;

    let page = events(&w.svc, &alice, &room, 3, 10).await;
    assert_eq!(
        page.items.iter().map(body_of).collect::<Vec<_>>(),
        ["from the cache", "m5"]
    );
    assert!(!page.has_more);
    let store = events(&w.plain, &alice, &room, 3, 10).await;
    assert_eq!(
        store.items.iter().map(body_of).collect::<Vec<_>>(),
        ["m4", "m5"]
    );
}

#[tokio::test]
async fn a_cache_missing_an_entry_still_gives_the_full_answer_from_the_store() {
    let w = World::new().await;
    let alice = w.user("alice").await;
    let room = w.room(&alice, &[]).await;
    for i in 1..=10 {
        post(&w.svc, &alice, &room, &format!("m{i}")).await;
    }
    // Rebuild the cache, marked, without seq 6 (a write that failed).
    let marked: Vec<pb::RoomEvent> = cached(&w, &room)
        .await
        .iter()
        .filter(|e| e.seq != 6)
        .map(|e| with_body(e, &format!("cached {}", e.seq)))
        .collect();
    w.cache.cache_events(room_id(&room), &[], 0).await.unwrap();
    put(&w, &room, &marked).await;
    // And seq 11, cached by a writer racing this reader: beyond the last
    // seq the reader saw, so it never shows, and it does not fill the hole.
    let mut racing = marked[marked.len() - 1].clone();
    racing.seq = 11;
    if let Some(pb::room_event::Kind::Message(m)) = &mut racing.kind {
        m.seq = 11;
    }
    put(&w, &room, &[racing]).await;

    for after in 0..=10 {
        let expected = events(&w.plain, &alice, &room, after, 0).await;
        let got = events(&w.svc, &alice, &room, after, 0).await;
        let seqs: Vec<Seq> = got.items.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (after + 1..=10).collect::<Vec<_>>(), "after {after}");
        if after < 6 {
            // The hole is in range: every event, from the store.
            assert_eq!(got, expected, "after {after}");
        } else {
            // Past the hole the cache holds everything, and answers.
            assert!(got.items.iter().all(|e| body_of(e).starts_with("cached")));
        }
    }

    // The newest entry missing (a write still in flight): the store answers.
    w.cache.cache_events(room_id(&room), &[], 0).await.unwrap();
    put(&w, &room, &marked[..marked.len() - 1]).await;
    for after in 0..10 {
        assert_eq!(
            events(&w.svc, &alice, &room, after, 3).await,
            events(&w.plain, &alice, &room, after, 3).await,
            "after {after}"
        );
    }

    // An empty cache (a fresh Redis): the store answers everything.
    let fresh = w.service(Arc::new(MemoryEphemeral::default()), 256);
    assert_same_as_the_store(&w, &fresh, &alice, &room).await;
}

#[tokio::test]
async fn a_stale_entry_of_an_edited_or_deleted_message_never_shows() {
    let w = World::new().await;
    let alice = w.user("alice").await;
    let room = w.room(&alice, &[]).await;
    for body in ["the original", "two", "three"] {
        post(&w.svc, &alice, &room, body).await;
    }
    let original = cached(&w, &room).await.remove(0);

    // The edit's rewrite of seq 1 lost (a racing writer put the old state
    // back): its edit, later in the log, still decides.
    edit(&w.svc, &alice, &room, 1, "the edit").await;
    put(&w, &room, std::slice::from_ref(&original)).await;
    assert_same_as_the_store(&w, &w.svc, &alice, &room).await;

    // Deleted, then both the message and its edit put back with their text.
    let edit_event = cached(&w, &room).await.remove(3);
    delete(&w.svc, &alice, &room, 1).await;
    put(
        &w,
        &room,
        &[original.clone(), with_body(&edit_event, "the edit")],
    )
    .await;
    assert_same_as_the_store(&w, &w.svc, &alice, &room).await;
    for after in 0..5 {
        for e in events(&w.svc, &alice, &room, after, 0).await.items {
            assert!(!body_of(&e).starts_with("the "), "deleted text in {e:?}");
        }
    }

    // A tombstone in the cache stays one even when its deletion is beyond
    // the page, and hides the text of edits in it.
    put(&w, &room, &[with_body(&edit_event, "the edit")]).await;
    let page = events(&w.svc, &alice, &room, 0, 4).await;
    assert_eq!(page, events(&w.plain, &alice, &room, 0, 4).await);
    assert!(page.has_more);
}

#[tokio::test]
async fn garbage_or_another_rooms_entries_send_the_reader_to_the_store() {
    let w = World::new().await;
    let alice = w.user("alice").await;
    let (room, other) = (w.room(&alice, &[]).await, w.room(&alice, &[]).await);
    for i in 1..=4 {
        post(&w.svc, &alice, &room, &format!("m{i}")).await;
        post(&w.svc, &alice, &other, &format!("other m{i}")).await;
    }
    w.cache
        .cache_events(
            room_id(&room),
            &[(2, Bytes::from_static(b"\xffnot protobuf"))],
            256,
        )
        .await
        .unwrap();
    assert_same_as_the_store(&w, &w.svc, &alice, &room).await;

    let foreign = cached(&w, &other).await.remove(2);
    put(&w, &room, &[foreign]).await;
    assert_same_as_the_store(&w, &w.svc, &alice, &room).await;
}

#[tokio::test]
async fn a_small_cache_serves_the_newest_events_and_the_store_the_rest() {
    let w = World::new().await;
    let alice = w.user("alice").await;
    let room = w.room(&alice, &[]).await;
    let small_cache = Arc::new(MemoryEphemeral::default());
    let small = w.service(small_cache.clone(), 4);
    for i in 1..=10 {
        post(&small, &alice, &room, &format!("m{i}")).await;
    }
    let kept = small_cache
        .cached_events(room_id(&room), 0, 100)
        .await
        .unwrap();
    assert_eq!(
        kept.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        [7, 8, 9, 10]
    );
    assert_same_as_the_store(&w, &small, &alice, &room).await;
}

#[tokio::test]
async fn past_its_byte_bound_the_cache_drops_the_oldest_rooms_and_resumes_use_the_store() {
    let w = World::new().await;
    let alice = w.user("alice").await;
    let max = 32 * 1024;
    let bounded_cache = Arc::new(MemoryEphemeral::default().with_recent_cache_bytes(max));
    let bounded = w.service(bounded_cache.clone(), 256);
    let body = "x".repeat(1000);
    let mut rooms = Vec::new();
    for _ in 0..12 {
        let room = w.room(&alice, &[]).await;
        for _ in 0..5 {
            post(&bounded, &alice, &room, &body).await;
            assert!(bounded_cache.recent_cache_bytes() <= max);
        }
        rooms.push(room);
    }
    let cached = |room: &String| {
        let c = bounded_cache.clone();
        let room = room_id(room);
        async move { c.cached_events(room, 0, 1000).await.unwrap().len() }
    };
    assert_eq!(cached(&rooms[0]).await, 0, "the oldest room was evicted");
    assert!(cached(&rooms[11]).await > 0, "the newest room is cached");
    // Every resume, evicted or not, returns every event: from the store
    // when the cache lacks any of them.
    for room in [&rooms[0], &rooms[11]] {
        let all = events(&bounded, &alice, room, 0, 0).await;
        assert_eq!(all, events(&w.plain, &alice, room, 0, 0).await);
        assert!(all.items.len() >= 5);
        assert_same_as_the_store(&w, &bounded, &alice, room).await;
    }
}

#[tokio::test]
async fn without_a_cache_nothing_is_cached() {
    let w = World::new().await;
    let alice = w.user("alice").await;
    let room = w.room(&alice, &[]).await;
    let cache = Arc::new(MemoryEphemeral::default());
    let uncached = w.service(cache.clone(), 0);
    let seq = post(&uncached, &alice, &room, "m1").await;
    edit(&uncached, &alice, &room, seq, "m1 edited").await;
    delete(&uncached, &alice, &room, seq).await;
    assert!(cache
        .cached_events(room_id(&room), 0, 100)
        .await
        .unwrap()
        .is_empty());
    assert_same_as_the_store(&w, &uncached, &alice, &room).await;
}

#[tokio::test]
async fn outsiders_are_refused_though_the_events_are_cached() {
    let w = World::new().await;
    let (alice, mallory) = (w.user("alice").await, w.user("mallory").await);
    let room = w.room(&alice, &[]).await;
    post(&w.svc, &alice, &room, "members only").await;
    let refused = w
        .svc
        .list_events(req(
            &mallory,
            pb::ListEventsRequest {
                room_id: room.clone(),
                after_seq: 0,
                limit: 10,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
}

/// An ephemeral store whose event cache is down; the rest works.
#[derive(Default)]
struct CacheDown(MemoryEphemeral);

#[async_trait]
impl Ephemeral for CacheDown {
    async fn revoke_session(&self, id: SessionId, ttl: Duration) -> chat_ephemeral::Result<()> {
        self.0.revoke_session(id, ttl).await
    }
    async fn is_session_revoked(&self, id: SessionId) -> chat_ephemeral::Result<bool> {
        self.0.is_session_revoked(id).await
    }
    async fn hit(
        &self,
        key: &str,
        limit: u32,
        window: Duration,
    ) -> chat_ephemeral::Result<RateDecision> {
        self.0.hit(key, limit, window).await
    }
    async fn over_limit(&self, key: &str, limit: u32) -> chat_ephemeral::Result<Option<Duration>> {
        self.0.over_limit(key, limit).await
    }
    async fn reset(&self, key: &str) -> chat_ephemeral::Result<()> {
        self.0.reset(key).await
    }
    async fn connection_opened(&self, user: UserId) -> chat_ephemeral::Result<u32> {
        self.0.connection_opened(user).await
    }
    async fn connection_closed(&self, user: UserId) -> chat_ephemeral::Result<u32> {
        self.0.connection_closed(user).await
    }
    async fn connections(&self, user: UserId) -> chat_ephemeral::Result<u32> {
        self.0.connections(user).await
    }
    async fn online(&self, users: &[UserId]) -> chat_ephemeral::Result<Vec<bool>> {
        self.0.online(users).await
    }
    async fn cache_events(
        &self,
        _room: RoomId,
        _events: &[(Seq, Bytes)],
        _keep: usize,
    ) -> chat_ephemeral::Result<()> {
        Err(EphemeralError::Unavailable("cache down".into()))
    }
    async fn cached_events(
        &self,
        _room: RoomId,
        _after: Seq,
        _limit: usize,
    ) -> chat_ephemeral::Result<Vec<(Seq, Bytes)>> {
        Err(EphemeralError::Unavailable("cache down".into()))
    }
    async fn ping(&self) -> chat_ephemeral::Result<()> {
        self.0.ping().await
    }
}

#[tokio::test]
async fn a_cache_that_is_down_changes_neither_writes_nor_answers() {
    let w = World::new().await;
    let alice = w.user("alice").await;
    let room = w.room(&alice, &[]).await;
    let down = w.service(Arc::new(CacheDown::default()), 256);
    for i in 1..=4 {
        post(&down, &alice, &room, &format!("m{i}")).await;
    }
    edit(&down, &alice, &room, 2, "m2 edited").await;
    delete(&down, &alice, &room, 3).await;
    assert_same_as_the_store(&w, &down, &alice, &room).await;
}
