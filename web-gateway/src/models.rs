//! The JSON bodies of the API (requests and answers) and the query strings.
//!
//! Field names follow the original Go server where it had one (`stream_id`,
//! `rtsp_url`, `width`, `height`); every URL in an answer is the broker's
//! redacted form: credentials never come back.

use framebroker_client::{StreamInfo, StreamStats};
use serde::{Deserialize, Serialize};

/// Largest `POST /api/streams` body accepted, bytes.
pub const MAX_BODY: u64 = 16 * 1024;

/// `POST /api/streams/start-with-url`: the id is derived from the URL
/// ([`url_stream_id`]).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct StartUrlBody {
    pub rtsp_url: String,
    #[serde(flatten)]
    pub options: StartOptions,
}

/// The id `start-with-url` gives a URL, the original server's: the first 16
/// characters of `"stream_"` followed by the hex MD5 of the URL (so the same URL
/// always gets the same id, and its clients can compute it themselves).
pub fn url_stream_id(url: &str) -> String {
    use md5::{Digest, Md5};
    let hex: String = Md5::digest(url.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("stream_{hex}")[..16].to_string()
}

/// `POST /api/streams`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct StartBody {
    pub stream_id: String,
    pub rtsp_url: String,
    #[serde(flatten)]
    pub options: StartOptions,
}

/// What both start routes take besides the camera and its id.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct StartOptions {
    /// Output size; absent (or 0): 640 wide, 480 high, the original server's
    /// default (each on its own, as there).
    #[serde(default)]
    pub width: Option<u32>,
    #[serde(default)]
    pub height: Option<u32>,
    /// `true`: the camera's own size (then `width` and `height` must be absent
    /// or 0). The original server had no way to ask for it.
    #[serde(default)]
    pub native_size: Option<bool>,
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
    /// Whether frames are arriving (state `live`), the original's field.
    #[serde(default)]
    pub is_running: bool,
    /// Frames the broker wrote to the stream since it started.
    #[serde(default)]
    pub frame_count: u64,
    /// Everyone watching now: WebSocket, MJPEG and recent HTTP clients of the
    /// gateway, and local shared-memory readers.
    #[serde(default)]
    pub client_count: u64,
    /// The frame rate the source declares (0 while not known); `fps` in the
    /// stats is the measured one.
    #[serde(default)]
    pub declared_fps: f64,
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
            is_running: s.state == framebroker_proto::StreamState::Live,
            frame_count: 0,
            client_count: 0,
            declared_fps: s.declared_fps,
        }
    }
}

impl StreamView {
    /// The view with the counters of `stats` and the gateway's `client_count`.
    pub fn counted(s: &StreamStats, client_count: u64) -> Self {
        StreamView {
            frame_count: s.frames_written,
            client_count,
            ..StreamView::from(&s.info)
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

/// `DELETE /api/streams/{id}` and `/force` answer.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Stopped {
    pub message: String,
    pub stream_id: String,
    pub stopped: bool,
}

/// `409` answer of `DELETE /api/streams/{id}` while someone watches.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct StillWatched {
    pub error: String,
    pub client_count: u64,
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
    /// Distinct HTTP clients (connections) that asked for frames in the last few seconds.
    #[serde(default)]
    pub http_pollers: u64,
    /// WebSocket and MJPEG clients dropped because they accepted no data for the deadline.
    #[serde(default)]
    pub slow_clients_dropped: u64,
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
    /// When the newest frame was captured (RFC 3339, UTC), `null` before the first.
    pub last_frame_time: Option<String>,
    /// Frames held in the stream's shared-memory ring now: the ring's slot count
    /// once it has filled (each reader takes the newest of them).
    pub buffer_size: u64,
    pub gateway: GatewayCounters,
}

impl StatsView {
    pub fn new(
        s: &StreamStats,
        gateway: GatewayCounters,
        client_count: u64,
        last_frame_time: Option<String>,
        buffer_size: u64,
    ) -> Self {
        StatsView {
            stream: StreamView::counted(s, client_count),
            fps: s.fps,
            frames_written: s.frames_written,
            frames_dropped: s.frames_dropped,
            reconnects: s.reconnects,
            last_error: s.last_error.as_deref().map(crate::errors::redact),
            uptime_ms: s.uptime_ms,
            bytes_per_frame: s.bytes_per_frame,
            decoder: s.decoder.clone(),
            last_frame_time,
            buffer_size,
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

/// `GET /health`, the original's.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct OriginalHealth {
    pub status: String,
    /// Unix time, seconds.
    pub timestamp: u64,
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
    /// `/frame` only: the newest frame if its `X-Frame-Number` is above this,
    /// else the next one (up to 5 s, then 204).
    pub after: Option<u64>,
    /// `/frame` only: how long to wait for a new frame, ms (at most 5000, the
    /// default); `0` answers the newest frame at once, new or not.
    pub wait: Option<u64>,
}

/// Seconds since the Unix epoch as RFC 3339 UTC with nanoseconds
/// (`2026-01-02T03:04:05.123456789Z`).
pub fn rfc3339_ns(unix_ns: u64) -> String {
    let secs = unix_ns / 1_000_000_000;
    let nanos = unix_ns % 1_000_000_000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_from_urls_are_the_original_servers() {
        // md5("rtsp://127.0.0.1:8554/test") = 5642dbdef96a...: the id keeps 9 hex digits.
        let id = url_stream_id("rtsp://127.0.0.1:8554/test");
        assert_eq!(id, "stream_5642dbdef");
        assert_ne!(id, url_stream_id("rtsp://127.0.0.1:8554/other"));
        // The MD5 of the empty string is d41d8cd98f00b204e9800998ecf8427e.
        assert_eq!(url_stream_id(""), "stream_d41d8cd98");
    }

    #[test]
    fn rfc3339() {
        assert_eq!(rfc3339_ns(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339_ns(951_782_400_000_000_001),
            "2000-02-29T00:00:00.000000001Z"
        );
        assert_eq!(
            rfc3339_ns(1_767_323_045_500_000_000),
            "2026-01-02T03:04:05.500000000Z"
        );
    }
}
