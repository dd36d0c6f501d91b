//! The `chat.v1` protocol: messages, gRPC clients and servers generated from
//! `proto/chat/v1`, and the encoded descriptor set for server reflection.

#[allow(clippy::all, rust_2018_idioms)]
pub mod v1 {
    tonic::include_proto!("chat.v1");
}

/// The encoded `FileDescriptorSet` of every chat.v1 file, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("chat_descriptor");

pub use v1::*;
