//! The JSON bodies of the API (requests and answers) and the query strings.
//!
//! Field names follow the original Go server where it had one (`stream_id`,
//! `rtsp_url`, `width`, `height`); every URL in an answer is the broker's
//! redacted form: credentials never come back.

use framebroker_client::{StreamInfo, StreamStats};
use serde::{Deserialize, Serialize};

/// Largest `POST /api/streams` body accepted, bytes.
pub const MAX_BODY: u64 = 16 * 1024;

/// `POST /api/streams`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct StartBody {
    pub stream_id: String,
    pub rtsp_url: String,
    /// Output size; absent (or 0) with `height`: the camera's own size.
    #[serde(default)]
    pub width: Option<u32>,
    #[serde(default)]
    pub height: Option<u32>,
    /// `bgr24` (default), `rgb24`, `gray`, `yuv420p`, `nv12`.
    #[serde(default)]
    pub pixel_format: Option<String>,
    /// Stop the stream once nobody reads it.
    #[serde(default)]
    pub on_demand: Option<bool>,
}

/// One stream as listed.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct StreamView {
    pub stream_id: String,
    /// The source URL, credentials redacted.
    pub rtsp_url: String,
    pub state: String,
    pub width: u32,
    pub height: u32,
    pub pixel_format: String,
    pub generation: u64,
    /// Reader sessions the broker counts (the gateway is one while it streams).
    pub readers: u32,
    pub on_demand: bool,
    /// For a variant (another size or format of the same decode): its main stream.
    #[serde(default)]
    pub parent: Option<String>,
}

impl From<&StreamInfo> for StreamView {
    fn from(s: &StreamInfo) -> Self {
        StreamView {
            stream_id: s.id.clone(),
            rtsp_url: framebroker_proto::naming::redact_url(&s.url),
            state: s.state.name().to_string(),
            width: s.width,
            height: s.height,
            pixel_format: s.pixel_format.name().to_string(),
            generation: s.generation,
            readers: s.readers,
            on_demand: s.on_demand,
            parent: s.parent.clone(),
        }
    }
}

/// `GET /api/streams`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct StreamList {
    pub streams: Vec<StreamView>,
    pub count: usize,
}

/// `POST /api/streams` answer (201 when created, 200 when the stream already ran).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Started {
    #[serde(flatten)]
    pub stream: StreamView,
    pub created: bool,
    pub message: String,
}

/// `DELETE /api/streams/{id}` answer.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Stopped {
    pub stream_id: String,
    pub stopped: bool,
}

/// The gateway's own counters of one stream.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct GatewayCounters {
    /// Whether the gateway is reading the stream right now.
    pub reading: bool,
    /// Frames the gateway took from shared memory.
    pub frames: u64,
    /// Frames the gateway's reader skipped (newer ones were there already).
    pub skipped: u64,
    /// Times the gateway attached to the stream.
    pub attaches: u64,
    pub ws_clients: u64,
    pub mjpeg_clients: u64,
    pub http_in_flight: u64,
    /// Frames sent to WebSocket clients, and frames they skipped (too slow).
    pub ws_frames_sent: u64,
    pub ws_frames_skipped: u64,
    pub jpeg_encoded: u64,
    /// Mean JPEG encode time, ms.
    pub jpeg_encode_ms_avg: f64,
}

/// `GET /api/streams/{id}/stats`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct StatsView {
    #[serde(flatten)]
    pub stream: StreamView,
    pub fps: f64,
    pub frames_written: u64,
    pub frames_dropped: u64,
    pub reconnects: u64,
    pub last_error: Option<String>,
    pub uptime_ms: u64,
    pub bytes_per_frame: u64,
    /// What decodes: `software`, the hwaccel's name, or
    /// `software (<hwaccel> unavailable: <reason>)` after a fallback.
    #[serde(default)]
    pub decoder: String,
    /// WebSocket + MJPEG + in-flight HTTP clients of the gateway (the original's name).
    pub client_count: u64,
    pub gateway: GatewayCounters,
}

impl StatsView {
    pub fn new(s: &StreamStats, gateway: GatewayCounters) -> Self {
        StatsView {
            stream: StreamView::from(&s.info),
            fps: s.fps,
            frames_written: s.frames_written,
            frames_dropped: s.frames_dropped,
            reconnects: s.reconnects,
            last_error: s.last_error.as_deref().map(crate::errors::redact),
            uptime_ms: s.uptime_ms,
            bytes_per_frame: s.bytes_per_frame,
            decoder: s.decoder.clone(),
            client_count: gateway.ws_clients + gateway.mjpeg_clients + gateway.http_in_flight,
            gateway,
        }
    }
}

/// `GET /healthz`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Health {
    pub status: String,
    pub version: String,
    pub broker_reachable: bool,
    pub broker: Option<String>,
    pub socket: String,
    pub auth: bool,
}

/// Every error answer.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ErrorBody {
    pub error: String,
}

/// Query of the frame, snapshot, MJPEG and WebSocket routes.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct FrameQuery {
    /// `raw` (default for `/frame` and `/ws`) or `jpeg`.
    pub format: Option<String>,
    /// JPEG quality 1-100 (default: the gateway's `--jpeg-quality`).
    pub quality: Option<u8>,
    /// Downscale: 1, 0.5, 0.25 or 0.125 (JPEG only).
    pub scale: Option<f64>,
}
