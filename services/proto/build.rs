//! Generates the chat.v1 code with the vendored protoc, so no system protoc
//! is needed, and writes the descriptor set that server reflection serves.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = ["auth.proto", "room.proto", "events.proto"].map(|f| root.join("chat/v1").join(f));
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    tonic_prost_build::configure()
        // The gateway serialises these straight into the client contract's
        // JSON (field names match it), so no hand-written mirror types.
        .type_attribute(".chat.v1", "#[derive(serde::Serialize)]")
        .field_attribute(
            "chat.v1.Message.edited_at",
            "#[serde(skip_serializing_if = \"Option::is_none\")]",
        )
        .field_attribute("chat.v1.MyRoom.room", "#[serde(flatten)]")
        .file_descriptor_set_path(out.join("chat_descriptor.bin"))
        .compile_protos(&files, &[root])?;
    Ok(())
}
