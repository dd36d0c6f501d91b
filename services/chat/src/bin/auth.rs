//! `auth`: parses flags, starts, serves until SIGTERM or Ctrl-C.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `auth rotate-key` needs none of the serving flags.
    if std::env::args().nth(1).as_deref() == Some("rotate-key") {
        let args = chat_auth::app::RotateKeyArgs::parse_from(std::env::args().skip(1));
        chat_core::telemetry::init("info");
        let kid = chat_auth::app::rotate_key(&args).await?;
        println!("{kid}");
        return Ok(());
    }
    let cfg = chat_auth::app::Config::parse();
    chat_core::telemetry::init("info");
    let app = chat_auth::app::App::build(cfg).await?;
    tracing::info!(grpc = ?app.grpc_addr(), http = ?app.http_addr(), "auth listening");
    app.run(chat_core::shutdown::on_signal()).await
}
