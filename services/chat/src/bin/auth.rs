//! `auth`: parses flags, starts, serves until SIGTERM or Ctrl-C.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = chat_auth::app::Config::parse();
    chat_core::telemetry::init("info");
    let app = chat_auth::app::App::build(cfg).await?;
    tracing::info!(grpc = ?app.grpc_addr(), http = ?app.http_addr(), "auth listening");
    app.run(chat_core::shutdown::on_signal()).await
}
