//! `framebroker-gateway`: the web gateway binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use framebroker_gateway::{auth, limits, Config};

#[derive(Parser)]
#[command(
    name = "framebroker-gateway",
    version,
    about = "HTTP/WebSocket gateway of framebroker: the original API on port 8091, JPEG, MJPEG, metrics and a live web page."
)]
struct Cli {
    /// Address to listen on [default: 127.0.0.1:8091; $PORT sets the port of the default].
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<SocketAddr>,
    /// The broker's control socket [default: $FRAMEBROKER_SOCKET, else the per-user runtime directory].
    #[arg(long, env = "FRAMEBROKER_SOCKET")]
    socket: Option<PathBuf>,
    /// Access token required on every API, WebSocket, MJPEG and metrics route
    /// (`Authorization: Bearer …` or `?token=…`).
    #[arg(long, env = "FRAMEBROKER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Allow listening beyond loopback without a token.
    #[arg(long)]
    insecure_no_auth: bool,
    /// Origin allowed by CORS (repeatable; none by default).
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    cors_origins: Vec<String>,
    /// Default JPEG quality (1-100).
    #[arg(long, default_value_t = 80, value_parser = clap::value_parser!(u8).range(1..=100))]
    jpeg_quality: u8,
    /// Stop reading (and encoding) a stream this long after its last subscriber left, ms.
    #[arg(long, default_value_t = 10_000)]
    idle_ms: u64,
    /// WebSocket clients served at once, over all streams; more are refused with 503.
    #[arg(long, default_value_t = limits::DEFAULT_MAX_WS_CLIENTS)]
    max_ws_clients: usize,
    /// Long-lived HTTP responses (MJPEG) served at once, over all streams; more are refused with 503.
    #[arg(long, default_value_t = limits::DEFAULT_MAX_HTTP_STREAMS)]
    max_http_streams: usize,
    /// Distinct JPEG settings (quality, scale) in use per stream besides the
    /// default one (--jpeg-quality, full size, always served); each is encoded
    /// once per frame, and a request for one more gets 400.
    #[arg(long, default_value_t = limits::DEFAULT_MAX_JPEG_SETTINGS as u16,
          value_parser = clap::value_parser!(u16).range(0..=100))]
    max_jpeg_settings: u16,
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .or_else(|| std::env::var("LOG_LEVEL").ok())
        .unwrap_or_else(|| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
}

fn listen_addr(flag: Option<SocketAddr>) -> anyhow::Result<SocketAddr> {
    if let Some(a) = flag {
        return Ok(a);
    }
    let port = match std::env::var("PORT") {
        Ok(p) if !p.is_empty() => p
            .parse::<u16>()
            .with_context(|| format!("PORT={p:?} is not a port number"))?,
        _ => 8091,
    };
    Ok(SocketAddr::from(([127, 0, 0, 1], port)))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging();
    let mut cfg = Config::new(
        cli.socket
            .unwrap_or_else(framebroker_proto::control::default_socket_path),
    );
    cfg.listen = listen_addr(cli.listen)?;
    cfg.auth = auth::Auth::new(cli.token.as_deref());
    cfg.insecure_no_auth = cli.insecure_no_auth;
    cfg.cors_origins = cli.cors_origins;
    cfg.jpeg_quality = cli.jpeg_quality;
    cfg.idle = Duration::from_millis(cli.idle_ms);
    cfg.max_ws_clients = cli.max_ws_clients;
    cfg.max_http_streams = cli.max_http_streams;
    cfg.max_jpeg_settings = usize::from(cli.max_jpeg_settings);
    // Refuse before binding anything.
    if let Err(msg) = auth::check_exposure(cfg.listen, &cfg.auth, cfg.insecure_no_auth) {
        eprintln!("framebroker-gateway: {msg}");
        std::process::exit(2);
    }
    if cfg.insecure_no_auth && !cfg.listen.ip().is_loopback() && !cfg.auth.enabled() {
        tracing::warn!(addr = %cfg.listen, "listening beyond loopback WITHOUT authentication (--insecure-no-auth)");
    }
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let server = tokio::spawn(framebroker_gateway::serve(cfg, listener, shutdown_signal()));
    // Streaming answers end on shutdown; give the rest a moment, then leave.
    tokio::select! {
        r = server => r??,
        _ = async {
            shutdown_signal().await;
            tokio::time::sleep(Duration::from_secs(3)).await;
        } => tracing::warn!("connections still open after 3 s; exiting"),
    }
    Ok(())
}
