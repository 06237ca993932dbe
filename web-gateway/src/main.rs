//! `framebroker-gateway`: the web gateway binary.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use framebroker_gateway::{auth, limits, Config};
use framebroker_proto::config::Config as FileConfig;

#[derive(Parser)]
#[command(
    name = "framebroker-gateway",
    version,
    about = "HTTP/WebSocket gateway of framebroker: the original API on port 8091, JPEG, MJPEG, metrics and a live web page."
)]
struct Cli {
    /// Config file (TOML, its `[gateway]` section and `[broker].socket`; see
    /// docs/CONFIG.md). Flags beat FRAMEBROKER_GATEWAY_* variables, which beat the file.
    #[arg(long, env = "FRAMEBROKER_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
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
    /// Default JPEG quality (1-100) [default: 80].
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=100))]
    jpeg_quality: Option<u8>,
    /// Stop reading (and encoding) a stream this long after its last subscriber left, ms
    /// [default: 10000].
    #[arg(long)]
    idle_ms: Option<u64>,
    /// WebSocket clients served at once, over all streams; more are refused with 503
    /// [default: 1000].
    #[arg(long)]
    max_ws_clients: Option<usize>,
    /// Long-lived HTTP responses (MJPEG) served at once, over all streams; more are refused
    /// with 503 [default: 1000].
    #[arg(long)]
    max_http_streams: Option<usize>,
    /// Distinct JPEG settings (quality, scale) in use per stream besides the
    /// default one (--jpeg-quality, full size, always served); each is encoded
    /// once per frame, and a request for one more gets 400.
    /// [default: 4]
    #[arg(long, value_parser = clap::value_parser!(u16).range(0..=100))]
    max_jpeg_settings: Option<u16>,
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

#[cfg(unix)]
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

/// Windows: Ctrl-C, Ctrl-Break and a closing console.
#[cfg(windows)]
async fn shutdown_signal() {
    use tokio::signal::windows::{ctrl_break, ctrl_close};
    let mut brk = ctrl_break().expect("Ctrl-Break handler");
    let mut close = ctrl_close().expect("console close handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = brk.recv() => {}
        _ = close.recv() => {}
    }
    tracing::info!("shutting down");
}

/// Errors go to standard error through `writeln!`, never `eprintln!`, which
/// panics when stderr is a pipe its reader closed (`… 2>&1 | head -1`); the
/// gateway prints nothing else itself (logs go through `tracing`, which drops
/// what it cannot write; `--help` and `--version` are clap's, which do too).
fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "Error: {e:?}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging();
    let file = match &cli.config {
        Some(path) => FileConfig::load(path)?,
        None => {
            let mut c = FileConfig::parse("(no config file)", "")?;
            c.apply_env(|k| std::env::var(k).ok())?;
            c
        }
    };
    let g = &file.file.gateway;
    if let Some(q) = g.jpeg_quality.filter(|q| !(1..=100).contains(q)) {
        anyhow::bail!("[gateway] jpeg_quality must be 1..=100, got {q}");
    }
    let token = match (&cli.token, &g.token, &g.token_file) {
        (Some(t), _, _) => Some(t.clone()),
        (None, Some(t), _) => Some(t.clone()),
        (None, None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("[gateway] token_file {}", path.display()))?
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string(),
        ),
        _ => None,
    };
    let mut cfg = Config::new(
        cli.socket
            .or_else(|| g.socket.clone())
            .or_else(|| file.file.broker.socket.clone())
            .unwrap_or_else(framebroker_proto::control::default_socket_path),
    );
    cfg.listen = listen_addr(cli.listen.or(g.listen))?;
    cfg.auth = auth::Auth::new(token.as_deref().filter(|t| !t.is_empty()));
    cfg.insecure_no_auth = cli.insecure_no_auth || g.insecure_no_auth.unwrap_or(false);
    cfg.cors_origins = if cli.cors_origins.is_empty() {
        g.cors_origins.clone().unwrap_or_default()
    } else {
        cli.cors_origins
    };
    cfg.jpeg_quality = cli.jpeg_quality.or(g.jpeg_quality).unwrap_or(80);
    cfg.idle = Duration::from_millis(cli.idle_ms.or(g.idle_ms).unwrap_or(10_000));
    cfg.max_ws_clients = cli
        .max_ws_clients
        .or(g.max_ws_clients)
        .unwrap_or(limits::DEFAULT_MAX_WS_CLIENTS);
    cfg.max_http_streams = cli
        .max_http_streams
        .or(g.max_http_streams)
        .unwrap_or(limits::DEFAULT_MAX_HTTP_STREAMS);
    cfg.max_jpeg_settings = usize::from(
        cli.max_jpeg_settings
            .or(g.max_jpeg_settings)
            .unwrap_or(limits::DEFAULT_MAX_JPEG_SETTINGS as u16),
    );
    // Refuse before binding anything.
    if let Err(msg) = auth::check_exposure(cfg.listen, &cfg.auth, cfg.insecure_no_auth) {
        let _ = writeln!(std::io::stderr(), "framebroker-gateway: {msg}");
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
