//! gRPC between the services over TLS (`--grpc-tls-cert`/`--grpc-tls-key`
//! on auth and room, `--grpc-tls-ca` and `https://` URLs on their clients):
//! the stack works, and a client without TLS, or trusting another CA, gets
//! nothing out of auth or room.

use crate::cluster::GrpcTls;
use crate::helpers::{cluster_options, start_cluster_with, within, TestApp};
use chat_proto::v1::auth_service_client::AuthServiceClient;
use chat_proto::v1::GetPublicKeysRequest;
use std::path::Path;
use std::sync::Arc;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// A CA, and a certificate it signed for 127.0.0.1 and localhost, as PEM
/// files in `dir`; the CA's private key is thrown away.
fn certificates(dir: &Path, name: &str) -> GrpcTls {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().expect("a CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, format!("{name} test CA"));
    let ca = ca.self_signed(&ca_key).expect("a CA certificate");
    let key = KeyPair::generate().expect("a server key");
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("server params")
        .signed_by(&key, &ca, &ca_key)
        .expect("a server certificate");
    let files = GrpcTls {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
        ca: dir.join(format!("{name}-ca.crt")),
    };
    std::fs::write(&files.cert, cert.pem()).expect("write cert");
    std::fs::write(&files.key, key.serialize_pem()).expect("write key");
    std::fs::write(&files.ca, ca.pem()).expect("write CA");
    files
}

/// `GetPublicKeys` (a call that needs no credentials) through `endpoint`.
async fn public_keys(endpoint: Endpoint) -> Result<usize, String> {
    let channel = endpoint.connect().await.map_err(|e| format!("{e:?}"))?;
    AuthServiceClient::new(channel)
        .get_public_keys(GetPublicKeysRequest {})
        .await
        .map(|r| r.into_inner().keys.len())
        .map_err(|s| format!("{s:?}"))
}

fn tls_to(url: &str, ca: &Path) -> Endpoint {
    let pem = std::fs::read(ca).expect("CA file");
    Endpoint::from_shared(url.to_owned())
        .expect("a URL")
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
        .expect("TLS config")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_talk_grpc_over_tls_and_refuse_plaintext_clients() {
    let dir = Arc::new(tempfile::tempdir().expect("dir"));
    let tls = certificates(dir.path(), "cluster");
    let other = certificates(dir.path(), "other");
    let mut opts = cluster_options(|_| {});
    opts.grpc_tls = Some(tls.clone());
    // Ready means room and both gateways fetched auth's keys over TLS.
    let cluster = start_cluster_with(opts).await;
    let (auth, room) = (cluster.auth_grpc.clone(), cluster.room_grpcs[0].clone());
    assert!(auth.starts_with("https://") && room.starts_with("https://"));
    let app = TestApp::for_cluster(cluster, dir.clone(), |_| {});

    // Gateways reach auth (sign-up) and room (a message, delivered live)
    // over TLS.
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let room_id = app.room_with(&alice, &[&bob]).await;
    let mut wb = app.ws(&bob).await;
    wb.subscribe(&room_id, None).await;
    app.say(&alice, &room_id, "over TLS").await;
    assert_eq!(wb.recv_event().await["body"], "over TLS");

    // A client with the CA gets an answer; one in plaintext, or one that
    // trusts another CA, does not.
    let keys = within(
        "GetPublicKeys over TLS",
        public_keys(tls_to(&auth, &tls.ca)),
    )
    .await;
    assert!(keys.is_ok_and(|n| n > 0));
    for url in [&auth, &room] {
        let plain = url.replacen("https://", "http://", 1);
        let endpoint = Endpoint::from_shared(plain.clone()).expect("a URL");
        let r = within("a plaintext call", public_keys(endpoint)).await;
        assert!(r.is_err(), "{plain} answered a plaintext client: {r:?}");
        let r = within(
            "a call trusting another CA",
            public_keys(tls_to(url, &other.ca)),
        )
        .await;
        assert!(r.is_err(), "{url} answered a client of another CA: {r:?}");
    }
}
