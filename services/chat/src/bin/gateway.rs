//! `gateway`: parses flags, starts, serves until SIGTERM or Ctrl-C.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = chat_gateway::app::Config::parse();
    chat_core::telemetry::init("info");
    let app = chat_gateway::app::App::build(cfg, chat_core::shutdown::on_signal()).await?;
    tracing::info!(http = ?app.http_addr(), admin = ?app.admin_addr(), "gateway listening");
    app.run().await
}
