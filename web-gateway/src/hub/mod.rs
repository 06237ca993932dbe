//! Per-stream fan-out.
//!
//! For each stream somebody watches, the hub runs **one** reader thread: a
//! `framebroker-client` [`Reader`](framebroker_client::Reader) in *latest* mode
//! that publishes each new frame (shared bytes + metadata) into a tokio `watch`
//! channel. A `watch` holds only the newest value, so every subscriber (each
//! WebSocket is its own task) sees every frame it can keep up with and a slow one
//! skips frames instead of queueing them. HTTP `/frame` reads the channel's
//! current value and consumes nothing.
//!
//! JPEG is encoded **once per frame per [`JpegSetting`]** and only while
//! someone wants that setting: the first JPEG subscriber of a setting starts an
//! encoder thread fed from the raw channel, which publishes the encoded bytes
//! (already framed for WebSocket) into its own `watch`. One-off JPEG requests
//! (`snapshot.jpg`, `/frame?format=jpeg`) reuse the setting's newest JPEG when it
//! is of the newest frame, and otherwise encode that frame once for everybody.
//!
//! Readers and encoders stop when nobody has used them for `idle`.
//!
//! A stream serves at most `max_jpeg_settings` distinct settings at once (plus
//! the default one, always served), so that clients cannot multiply the encoder
//! CPU by asking for many qualities: a setting is in use while its encoder runs,
//! someone subscribes to it, or a one-off request used it within `idle`; past
//! the cap a new setting is refused with 400.
//!
//! Locking: `StreamHub::ctl` guards starting and retiring the reader and the
//! encoders; the subscriber counts are incremented *before* taking it and
//! re-checked under it, so a thread never retires under a new subscriber.
//! Lock order: `ctl` before a slot's or the stream's `last_used`; those,
//! `pollers` and `spare_encoders` are leaves (nothing is locked under them);
//! `Hub::streams` is never held while a stream's lock is taken.
//!
//! The parts, one file each: `feed.rs` (what a channel carries and how one waits
//! on it), `reader.rs` (the reader thread and its retirement), `encoder.rs` (the
//! JPEG settings, their encoder threads and one-off encodes) and `subscribers.rs`
//! (subscriptions, counters and HTTP pollers). This file holds the state they
//! share and the table of streams.

mod encoder;
mod feed;
mod reader;
mod subscribers;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use framebroker_proto::lock::lock;
use tokio::sync::watch;

use crate::jpeg::{self, JpegSetting};
use crate::models::GatewayCounters;

pub use encoder::EncoderSlot;
pub use feed::{End, Feed, Framed, JpegFrame, RawFrame};
pub use subscribers::{JpegSubscription, Kind, StreamMetrics, Subscription, POLLER_WINDOW};

/// How long the reader waits for a frame before it looks at its subscribers again.
const POLL: Duration = Duration::from_millis(200);

/// Settings of the hub.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// The broker's control socket.
    pub socket: PathBuf,
    /// Readers and encoders nobody used for this long stop.
    pub idle: Duration,
    /// Distinct JPEG settings in use per stream besides the default one
    /// (encoder CPU grows with them).
    pub max_jpeg_settings: usize,
    /// The gateway's default setting: always served, even past the cap.
    pub default_jpeg: JpegSetting,
}

struct Ctl {
    reader_running: bool,
    encoders: HashMap<JpegSetting, Arc<EncoderSlot>>,
}

/// The fan-out of one stream.
pub struct StreamHub {
    pub id: String,
    cfg: HubConfig,
    raw: watch::Sender<Feed<RawFrame>>,
    ctl: Mutex<Ctl>,
    /// Subscribers of any kind (they keep the reader running).
    active: AtomicUsize,
    last_used: Mutex<Instant>,
    seq: AtomicU64,
    pub metrics: StreamMetrics,
    /// Encoders for one-off JPEGs, reused.
    spare_encoders: Mutex<Vec<jpeg::Encoder>>,
    /// Whether the reader is (or is about to be) one of the broker's readers of
    /// the stream: set before it attaches, cleared after it detached.
    attached: AtomicBool,
    /// Short attachments of the stats route (see `handlers::peek`) under way.
    pub peeking: AtomicU32,
    /// Slots of the ring the reader last attached to (0: not known).
    pub slot_count: AtomicU32,
    /// HTTP clients that asked for frames, by connection, and when.
    pollers: Mutex<HashMap<SocketAddr, Instant>>,
}

impl StreamHub {
    fn new(id: String, cfg: HubConfig) -> Arc<Self> {
        Arc::new(StreamHub {
            id,
            cfg,
            raw: watch::Sender::new(Feed::default()),
            ctl: Mutex::new(Ctl {
                reader_running: false,
                encoders: HashMap::new(),
            }),
            active: AtomicUsize::new(0),
            last_used: Mutex::new(Instant::now()),
            seq: AtomicU64::new(0),
            metrics: StreamMetrics::default(),
            spare_encoders: Mutex::new(Vec::new()),
            attached: AtomicBool::new(false),
            peeking: AtomicU32::new(0),
            slot_count: AtomicU32::new(0),
            pollers: Mutex::new(HashMap::new()),
        })
    }

    /// Whether the reader runs and has a frame (then the stream surely exists).
    pub fn is_live(&self) -> bool {
        let feed = self.raw.borrow();
        feed.frame.is_some() && feed.end.is_none()
    }

    pub fn reading(&self) -> bool {
        lock(&self.ctl).reader_running
    }

    /// The newest frame, without subscribing.
    pub fn latest(&self) -> Option<Arc<RawFrame>> {
        self.raw.borrow().frame.clone()
    }

    /// The gateway's counters of this stream.
    pub fn counters(&self) -> GatewayCounters {
        let m = &self.metrics;
        let enc = m.jpeg_encoded.load(Ordering::Relaxed);
        let ns = m.jpeg_encode_ns.load(Ordering::Relaxed);
        GatewayCounters {
            reading: self.reading(),
            frames: m.frames.load(Ordering::Relaxed),
            skipped: m.skipped.load(Ordering::Relaxed),
            attaches: m.attaches.load(Ordering::Relaxed),
            ws_clients: m.ws_clients.load(Ordering::Relaxed),
            mjpeg_clients: m.mjpeg_clients.load(Ordering::Relaxed),
            http_in_flight: m.http_in_flight.load(Ordering::Relaxed),
            http_pollers: self.recent_pollers(),
            slow_clients_dropped: m.slow_dropped.load(Ordering::Relaxed),
            ws_frames_sent: m.ws_sent.load(Ordering::Relaxed),
            ws_frames_skipped: m.ws_skipped.load(Ordering::Relaxed),
            jpeg_encoded: enc,
            jpeg_encode_ms_avg: if enc == 0 {
                0.0
            } else {
                ns as f64 / enc as f64 / 1e6
            },
        }
    }
}

/// Every stream's fan-out.
pub struct Hub {
    cfg: HubConfig,
    streams: Mutex<HashMap<String, Arc<StreamHub>>>,
}

impl Hub {
    pub fn new(cfg: HubConfig) -> Arc<Self> {
        Arc::new(Hub {
            cfg,
            streams: Mutex::new(HashMap::new()),
        })
    }

    pub fn config(&self) -> &HubConfig {
        &self.cfg
    }

    /// The fan-out of `id` (made if needed). Call it only for a stream the broker
    /// knows (or a known one): entries are pruned when unused.
    pub fn stream(&self, id: &str) -> Arc<StreamHub> {
        lock(&self.streams)
            .entry(id.to_string())
            .or_insert_with(|| StreamHub::new(id.to_string(), self.cfg.clone()))
            .clone()
    }

    pub fn get(&self, id: &str) -> Option<Arc<StreamHub>> {
        lock(&self.streams).get(id).cloned()
    }

    pub fn all(&self) -> Vec<Arc<StreamHub>> {
        let mut v: Vec<_> = lock(&self.streams).values().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Forgets fan-outs that nobody uses, whose reader stopped and whose id the
    /// broker no longer lists (`known`).
    pub fn prune(&self, known: &[String]) {
        // No stream's `ctl` is taken under the table's lock. It need not be: an
        // entry has clones beyond the table's own while a subscription exists
        // (it holds one) and while its reader runs (`ensure_reader`'s caller
        // holds one until the thread owns its own, kept until the thread has
        // cleared `reader_running` and returned). No new clone can be taken
        // from the table while we hold its lock, so the count is final here.
        lock(&self.streams).retain(|id, s| {
            known.contains(id) || s.active.load(Ordering::SeqCst) > 0 || Arc::strong_count(s) > 1
        });
    }
}
