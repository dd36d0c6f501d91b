//! The `chat.v1` protocol: messages, gRPC clients and servers generated from
//! `proto/chat/v1`, and the encoded descriptor set for server reflection.

#[allow(clippy::all, rust_2018_idioms)]
pub mod v1 {
    tonic::include_proto!("chat.v1");
}

/// The encoded `FileDescriptorSet` of every chat.v1 file, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("chat_descriptor");

pub use v1::*;

pub const AUTH_SERVICE: &str = "chat.v1.AuthService";
pub const ROOM_SERVICE: &str = "chat.v1.RoomService";

/// Adds gRPC server reflection (v1 and v1alpha, for every grpcurl) to
/// `routes` when `enabled` (`--grpc-reflection`), advertising `services`
/// (the ones this process serves). Off, a reflection call is answered
/// UNIMPLEMENTED like any unknown service.
pub fn with_reflection(
    routes: tonic::service::Routes,
    services: &[&str],
    enabled: bool,
) -> Result<tonic::service::Routes, tonic_reflection::server::Error> {
    if !enabled {
        return Ok(routes);
    }
    let mut v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET);
    let mut v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET);
    for s in services {
        v1 = v1.with_service_name(*s);
        v1alpha = v1alpha.with_service_name(*s);
    }
    Ok(routes
        .add_service(v1.build_v1()?)
        .add_service(v1alpha.build_v1alpha()?))
}
