//! `chat`: the all-in-one server. Parses flags, starts, runs until SIGTERM
//! or Ctrl-C.

use chat::{App, Config};
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = Config::parse();
    chat_core::telemetry::init("info");
    if let Some(chat::Command::RotateKey { key_file }) = &cfg.command {
        let kid = chat::rotate_key(&cfg, key_file.as_deref()).await?;
        println!("{kid}");
        return Ok(());
    }
    let shutdown = chat_core::shutdown::on_signal();
    let app = App::build(cfg, shutdown).await?;
    tracing::info!(
        http = %app.http_addr(),
        admin = %app.admin_addr(),
        grpc = %app.grpc_addr(),
        "listening"
    );
    app.run().await
}
