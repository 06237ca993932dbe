//! Subscriber bookkeeping: subscriptions (which keep the reader and the
//! encoders running), the per-stream counters and the HTTP pollers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::encoder::EncoderSlot;
use super::feed::{wait_feed, Feed, JpegFrame, RawFrame};
use super::{lock, StreamHub};
use crate::errors::ApiError;
use crate::jpeg::JpegSetting;

/// An HTTP client that asked for a frame this recently still counts as watching.
pub const POLLER_WINDOW: Duration = Duration::from_secs(5);
/// Most HTTP pollers remembered per stream (a flood of new connections cannot
/// grow the table beyond it).
const MAX_POLLERS: usize = 4096;

/// Kinds of subscribers, counted separately in the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Ws,
    Mjpeg,
    Http,
}

/// Counters of one stream in the gateway.
#[derive(Default, Debug)]
pub struct StreamMetrics {
    pub frames: AtomicU64,
    pub skipped: AtomicU64,
    pub attaches: AtomicU64,
    pub ws_clients: AtomicU64,
    pub mjpeg_clients: AtomicU64,
    pub http_in_flight: AtomicU64,
    pub http_requests: AtomicU64,
    pub ws_sent: AtomicU64,
    pub ws_skipped: AtomicU64,
    pub mjpeg_sent: AtomicU64,
    pub jpeg_encoded: AtomicU64,
    pub jpeg_encode_ns: AtomicU64,
    /// Requests refused because the stream served as many JPEG settings as it may.
    pub jpeg_settings_refused: AtomicU64,
    /// WebSocket and MJPEG clients dropped because they accepted no data for the deadline.
    pub slow_dropped: AtomicU64,
}

impl StreamMetrics {
    fn gauge(&self, kind: Kind) -> &AtomicU64 {
        match kind {
            Kind::Ws => &self.ws_clients,
            Kind::Mjpeg => &self.mjpeg_clients,
            Kind::Http => &self.http_in_flight,
        }
    }
}

/// A subscription to a stream's raw frames. Dropping it unsubscribes.
pub struct Subscription {
    hub: Arc<StreamHub>,
    kind: Kind,
    pub rx: watch::Receiver<Feed<RawFrame>>,
}

impl Subscription {
    pub fn hub(&self) -> &Arc<StreamHub> {
        &self.hub
    }

    /// The current frame, or the first one to come within `timeout` (`None`
    /// then). An ended feed is an error (stream stopped, broker gone).
    pub async fn wait_frame(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<Arc<RawFrame>>, ApiError> {
        wait_feed(&mut self.rx, timeout, |_| true).await
    }

    /// The first frame of the hub's sequence past `seq`, current or within
    /// `timeout` (`None` then).
    pub async fn wait_frame_after(
        &mut self,
        seq: u64,
        timeout: Duration,
    ) -> Result<Option<Arc<RawFrame>>, ApiError> {
        wait_feed(&mut self.rx, timeout, |f| f.seq > seq).await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub
            .metrics
            .gauge(self.kind)
            .fetch_sub(1, Ordering::Relaxed);
        self.hub.touch();
        self.hub.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A subscription to one JPEG setting of a stream (it keeps the raw reader and
/// the setting's encoder running). Dropping it unsubscribes.
pub struct JpegSubscription {
    pub(super) slot: Arc<EncoderSlot>,
    pub rx: watch::Receiver<Feed<JpegFrame>>,
    // Dropped after `Drop::drop` below: the raw subscription outlives the JPEG one.
    raw: Subscription,
}

impl JpegSubscription {
    pub fn hub(&self) -> &Arc<StreamHub> {
        self.raw.hub()
    }
}

impl Drop for JpegSubscription {
    fn drop(&mut self) {
        *lock(&self.slot.last_used) = Instant::now();
        self.slot.active.fetch_sub(1, Ordering::SeqCst);
    }
}

impl StreamHub {
    /// Remembers that the HTTP client at `peer` asked for a frame now.
    pub fn note_poller(&self, peer: SocketAddr) {
        let now = Instant::now();
        let mut p = lock(&self.pollers);
        if p.len() >= MAX_POLLERS {
            p.retain(|_, t| now.duration_since(*t) < POLLER_WINDOW);
        }
        if p.len() < MAX_POLLERS || p.contains_key(&peer) {
            p.insert(peer, now);
        }
    }

    /// HTTP clients that asked for frames within [`POLLER_WINDOW`] (at least
    /// those with a request under way).
    pub fn recent_pollers(&self) -> u64 {
        let recent = lock(&self.pollers)
            .values()
            .filter(|t| t.elapsed() < POLLER_WINDOW)
            .count() as u64;
        recent.max(self.metrics.http_in_flight.load(Ordering::Relaxed))
    }

    /// The gateway's own sessions among the broker's readers of this stream.
    pub fn own_readers(&self) -> u32 {
        u32::from(self.attached.load(Ordering::SeqCst)) + self.peeking.load(Ordering::SeqCst)
    }

    /// The gateway's clients of this stream: WebSockets, MJPEG responses and
    /// recent HTTP pollers.
    pub fn watchers(&self) -> u64 {
        let m = &self.metrics;
        m.ws_clients.load(Ordering::Relaxed)
            + m.mjpeg_clients.load(Ordering::Relaxed)
            + self.recent_pollers()
    }

    fn touch(&self) {
        *lock(&self.last_used) = Instant::now();
    }

    pub(super) fn idle_for(&self) -> Duration {
        lock(&self.last_used).elapsed()
    }

    /// Subscribes to raw frames (and starts the reader if it is not running).
    pub fn subscribe(self: &Arc<Self>, kind: Kind) -> Subscription {
        self.active.fetch_add(1, Ordering::SeqCst);
        self.metrics.gauge(kind).fetch_add(1, Ordering::Relaxed);
        if kind == Kind::Http {
            self.metrics.http_requests.fetch_add(1, Ordering::Relaxed);
        }
        self.touch();
        self.ensure_reader();
        Subscription {
            hub: self.clone(),
            kind,
            rx: self.raw.subscribe(),
        }
    }

    /// Subscribes to JPEG frames of `setting` (starting the reader and the
    /// setting's encoder as needed). 400 when the stream serves as many settings
    /// as it may already.
    pub fn subscribe_jpeg(
        self: &Arc<Self>,
        kind: Kind,
        setting: JpegSetting,
    ) -> Result<JpegSubscription, ApiError> {
        // Reserve the setting first (nothing starts when it is refused)...
        let slot = {
            let mut ctl = lock(&self.ctl);
            let slot = self.slot_for(&mut ctl, setting)?;
            slot.active.fetch_add(1, Ordering::SeqCst);
            *lock(&slot.last_used) = Instant::now();
            slot
        };
        // ...then the raw feed (the encoder reads it), then the encoder.
        let raw = self.subscribe(kind);
        self.ensure_encoder(&slot);
        let rx = slot.tx.subscribe();
        Ok(JpegSubscription { slot, rx, raw })
    }
}
