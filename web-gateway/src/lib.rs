//! # framebroker-gateway
//!
//! The web gateway of framebroker: a client of the broker like any other reader,
//! it serves the original Go server's HTTP/WebSocket API (port 8091), JPEG
//! snapshots, MJPEG, Prometheus metrics, an OpenAPI document and a live web page.
//!
//! - [`filters`]: the routes; [`handlers`]: what they do; [`models`]: the JSON;
//! - [`hub`]: one reader per stream, fan-out through `watch` channels, JPEG
//!   encoded once per frame and setting;
//! - [`auth`]: the token and the rule against exposing the gateway without one;
//! - [`broker`]: the control session, reconnected lazily;
//! - [`limits`]: caps on WebSocket clients and MJPEG responses (the cap on JPEG
//!   settings per stream is the hub's).

pub mod auth;
pub mod broker;
pub mod errors;
pub mod filters;
pub mod handlers;
pub mod hub;
pub mod jpeg;
pub mod limits;
pub mod metrics;
pub mod models;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

pub use handlers::{AppState, State};

/// Default of `--client-deadline-ms`: the original server's write deadline.
pub const DEFAULT_CLIENT_DEADLINE: Duration = Duration::from_secs(10);

/// Everything the gateway is configured with.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// The broker's control socket.
    pub socket: PathBuf,
    pub auth: auth::Auth,
    pub insecure_no_auth: bool,
    /// Origins allowed by CORS (none by default; `*`: every origin, `null` too).
    pub cors_origins: Vec<String>,
    /// Default JPEG quality, 1-100.
    pub jpeg_quality: u8,
    /// A stream's reader (and a JPEG setting's encoder) stops after this long
    /// without subscribers.
    pub idle: Duration,
    /// How long `/frame?wait=0` and `snapshot.jpg` wait for a first frame
    /// before answering 204 / 503.
    pub first_frame_wait: Duration,
    /// A WebSocket or MJPEG client that accepts no data for this long is dropped.
    pub client_deadline: Duration,
    /// WebSocket clients served at once (all streams); past it, 503.
    pub max_ws_clients: usize,
    /// MJPEG responses served at once (all streams); past it, 503.
    pub max_http_streams: usize,
    /// Distinct JPEG settings (quality, scale) in use per stream besides the
    /// default one (`jpeg_quality`, full size), which is always served; past
    /// it, 400.
    pub max_jpeg_settings: usize,
}

impl Config {
    /// Defaults for `socket`, listening on `127.0.0.1:0`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            socket: socket.into(),
            auth: auth::Auth::default(),
            insecure_no_auth: false,
            cors_origins: Vec::new(),
            jpeg_quality: 80,
            idle: Duration::from_secs(10),
            first_frame_wait: Duration::from_millis(2500),
            client_deadline: DEFAULT_CLIENT_DEADLINE,
            max_ws_clients: limits::DEFAULT_MAX_WS_CLIENTS,
            max_http_streams: limits::DEFAULT_MAX_HTTP_STREAMS,
            max_jpeg_settings: limits::DEFAULT_MAX_JPEG_SETTINGS,
        }
    }
}

/// The shared state for `cfg`, and the sender that starts a shutdown.
pub fn state(cfg: &Config) -> (State, watch::Sender<bool>) {
    let (tx, rx) = watch::channel(false);
    let link = broker::BrokerLink::new(cfg.socket.clone());
    let hub = hub::Hub::new(hub::HubConfig {
        socket: cfg.socket.clone(),
        idle: cfg.idle,
        max_jpeg_settings: cfg.max_jpeg_settings,
        default_jpeg: jpeg::JpegSetting {
            quality: cfg.jpeg_quality,
            divisor: 1,
        },
    });
    let state = Arc::new(AppState {
        link,
        hub,
        auth: cfg.auth.clone(),
        jpeg_quality: cfg.jpeg_quality,
        first_frame_wait: cfg.first_frame_wait,
        limits: limits::Limits::new(cfg.max_ws_clients, cfg.max_http_streams),
        client_deadline: cfg.client_deadline,
        shutdown: rx,
        started: Instant::now(),
    });
    (state, tx)
}

/// Serves the gateway on `listener` until `shutdown` completes; then streaming
/// answers end (WebSockets get a 1001 close) and open requests finish.
pub async fn serve(
    cfg: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    auth::check_exposure(addr, &cfg.auth, cfg.insecure_no_auth).map_err(anyhow::Error::msg)?;
    auth::check_cors(addr, &cfg.auth, &cfg.cors_origins).map_err(anyhow::Error::msg)?;
    let (state, stop) = state(&cfg);
    spawn_pruner(state.clone());
    let app = filters::app(state, &cfg.cors_origins);
    tracing::info!(%addr, socket = %cfg.socket.display(), auth = cfg.auth.enabled(), "framebroker-gateway listening");
    warp::serve(app)
        .incoming(listener)
        .graceful(async move {
            shutdown.await;
            let _ = stop.send(true);
        })
        .run()
        .await;
    Ok(())
}

/// Forgets the fan-outs of streams nobody watches and the broker no longer has.
fn spawn_pruner(state: State) {
    let weak = Arc::downgrade(&state);
    drop(state);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(state) = weak.upgrade() else { return };
            if state.hub.all().is_empty() {
                continue;
            }
            let known = state
                .link
                .call(|c| Ok(c.list()?.into_iter().map(|s| s.id).collect::<Vec<_>>()))
                .await
                .unwrap_or_default();
            state.hub.prune(&known);
        }
    });
}
