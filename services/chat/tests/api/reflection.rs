//! gRPC server reflection on the all-in-one's `--grpc-addr`: on by default
//! (the README's grpcurl tour), off with `--grpc-reflection false`.

use crate::helpers::{test_config, within};
use chat::App;
use tokio_util::sync::CancellationToken;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

/// The services `list` shows through reflection on `grpc`, or the status
/// the reflection call failed with.
async fn reflection_list(grpc: std::net::SocketAddr) -> Result<Vec<String>, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .expect("a gRPC URL")
        .connect()
        .await
        .expect("a gRPC connection");
    let mut client = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([req]))
        .await?
        .into_inner();
    let first = answers.message().await?.expect("one answer");
    match first.message_response {
        Some(MessageResponse::ListServicesResponse(l)) => {
            Ok(l.service.into_iter().map(|s| s.name).collect())
        }
        other => panic!("not a service list: {other:?}"),
    }
}

/// An all-in-one server in this process (in either test mode: its gRPC
/// port is what is tested), with reflection on or off.
async fn grpc_server(reflection: Option<bool>) -> (std::net::SocketAddr, CancellationToken) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = test_config(dir.path());
    if let Some(on) = reflection {
        cfg.grpc_reflection = on;
    }
    let stop = CancellationToken::new();
    let app = within("the server to build", App::build(cfg, stop.clone()))
        .await
        .expect("the server builds");
    let grpc = app.grpc_addr();
    tokio::spawn(async move {
        let _dir = dir;
        app.run().await
    });
    (grpc, stop)
}

#[tokio::test]
async fn the_all_in_one_serves_reflection_by_default() {
    let (grpc, stop) = grpc_server(None).await;
    let services = within("reflection", reflection_list(grpc))
        .await
        .expect("reflection answers");
    assert!(
        services.iter().any(|s| s == "chat.v1.AuthService")
            && services.iter().any(|s| s == "chat.v1.RoomService"),
        "{services:?}"
    );
    stop.cancel();
}

#[tokio::test]
async fn with_reflection_off_a_reflection_call_is_unimplemented() {
    let (grpc, stop) = grpc_server(Some(false)).await;
    let status = within("reflection", reflection_list(grpc))
        .await
        .expect_err("no reflection");
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
    stop.cancel();
}
