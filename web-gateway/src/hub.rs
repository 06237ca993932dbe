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

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use framebroker_client::{Client, FrameMeta, PixelFormat};
use framebroker_proto::control::ErrorCode;
use tokio::sync::watch;
use warp::http::StatusCode;

use crate::errors::ApiError;
use crate::jpeg::{self, JpegSetting, WsHeader, WS_FORMAT_JPEG, WS_HEADER_LEN};
use crate::models::GatewayCounters;

/// How long the reader waits for a frame before it looks at its subscribers again.
const POLL: Duration = Duration::from_millis(200);
/// How long one attach waits for a stream that is still starting.
const ATTACH_WAIT: Duration = Duration::from_secs(1);
/// Raw frame buffers kept for reuse by a reader.
const POOL: usize = 6;
/// An HTTP client that asked for a frame this recently still counts as watching.
pub const POLLER_WINDOW: Duration = Duration::from_secs(5);
/// Most HTTP pollers remembered per stream (a flood of new connections cannot
/// grow the table beyond it).
const MAX_POLLERS: usize = 4096;

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

/// Why a feed ended: no more frames will come through it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct End {
    /// What an HTTP request waiting for a frame answers.
    pub status: StatusCode,
    pub message: String,
    /// WebSocket close code: 1000 (stream stopped) or 1011 (error).
    pub ws_code: u16,
}

impl End {
    fn stopped(id: &str) -> Self {
        End {
            status: StatusCode::NOT_FOUND,
            message: format!("stream {id:?} stopped"),
            ws_code: 1000,
        }
    }
    fn error(status: StatusCode, message: String) -> Self {
        End {
            status,
            // Sent as a close reason and an error answer, logged: no credentials.
            message: crate::errors::redact(&message),
            ws_code: 1011,
        }
    }
    pub fn to_api(&self) -> ApiError {
        ApiError::new(self.status, self.message.clone())
    }
}

/// What a `watch` channel of the hub carries: the newest item, or why there will
/// be none.
#[derive(Debug)]
pub struct Feed<T> {
    pub frame: Option<Arc<T>>,
    pub end: Option<Arc<End>>,
}

impl<T> Clone for Feed<T> {
    fn clone(&self) -> Self {
        Feed {
            frame: self.frame.clone(),
            end: self.end.clone(),
        }
    }
}

impl<T> Default for Feed<T> {
    fn default() -> Self {
        Feed {
            frame: None,
            end: None,
        }
    }
}

/// A decoded frame as the broker wrote it.
#[derive(Debug)]
pub struct RawFrame {
    /// Position in this hub's sequence of published frames (never reset, unlike
    /// frame numbers, which restart with each new segment).
    pub seq: u64,
    pub meta: FrameMeta,
    pub generation: u64,
    pub width: u32,
    pub height: u32,
    pub format: PixelFormat,
    /// The pixels (shared, not copied, by every subscriber).
    pub data: Bytes,
}

/// A JPEG of one frame at one setting.
#[derive(Debug)]
pub struct JpegFrame {
    pub seq: u64,
    pub number: u64,
    pub wall_ns: u64,
    pub width: u32,
    pub height: u32,
    /// The `FBJ1` WebSocket message: header then JPEG.
    pub ws: Bytes,
    /// The JPEG alone (a view into `ws`).
    pub jpeg: Bytes,
}

/// Something a WebSocket sends one binary message of.
pub trait Framed: Send + Sync + 'static {
    fn seq(&self) -> u64;
    fn ws_payload(&self) -> Bytes;
}

impl Framed for RawFrame {
    fn seq(&self) -> u64 {
        self.seq
    }
    fn ws_payload(&self) -> Bytes {
        self.data.clone()
    }
}

impl Framed for JpegFrame {
    fn seq(&self) -> u64 {
        self.seq
    }
    fn ws_payload(&self) -> Bytes {
        self.ws.clone()
    }
}

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

/// The reusable state of one JPEG setting of one stream.
pub struct EncoderSlot {
    pub setting: JpegSetting,
    tx: watch::Sender<Feed<JpegFrame>>,
    /// Streaming subscribers (WebSocket, MJPEG) of this setting.
    active: AtomicUsize,
    last_used: Mutex<Instant>,
    /// Whether its encoder thread runs; changed only under `StreamHub::ctl`.
    running: AtomicBool,
    /// Serialises one-off encodes so that a frame is encoded once.
    once: tokio::sync::Mutex<()>,
}

impl EncoderSlot {
    fn current(&self) -> Option<Arc<JpegFrame>> {
        self.tx.borrow().frame.clone()
    }

    /// Stores `j` unless a newer frame is there already.
    fn publish(&self, j: Arc<JpegFrame>) {
        self.tx.send_if_modified(|cur| {
            if cur.frame.as_ref().is_none_or(|c| c.seq < j.seq) {
                cur.frame = Some(j);
                true
            } else {
                false
            }
        });
    }
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

/// Clears a flag when dropped.
struct ClearOnDrop<'a>(&'a AtomicBool);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
    slot: Arc<EncoderSlot>,
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

async fn wait_feed<T>(
    rx: &mut watch::Receiver<Feed<T>>,
    timeout: Duration,
    wanted: impl Fn(&T) -> bool,
) -> Result<Option<Arc<T>>, ApiError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        {
            let feed = rx.borrow_and_update();
            if let Some(end) = &feed.end {
                return Err(end.to_api());
            }
            if let Some(f) = feed.frame.as_ref().filter(|f| wanted(f)) {
                return Ok(Some(f.clone()));
            }
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(ApiError::internal("frame channel closed")),
            Err(_) => return Ok(None),
        }
    }
}

/// A raw buffer that readers reuse once no subscriber holds it any more.
struct Shared(Arc<Vec<u8>>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

#[derive(Default)]
struct Pool {
    bufs: Vec<Arc<Vec<u8>>>,
}

impl Pool {
    /// A buffer of `len` bytes nobody else holds.
    fn take(&mut self, len: usize) -> Arc<Vec<u8>> {
        if let Some(i) = self
            .bufs
            .iter()
            .position(|b| Arc::strong_count(b) == 1 && b.len() == len)
        {
            return self.bufs.swap_remove(i);
        }
        self.bufs.retain(|b| b.len() == len);
        Arc::new(vec![0u8; len])
    }

    fn give(&mut self, b: Arc<Vec<u8>>) {
        if self.bufs.len() < POOL {
            self.bufs.push(b);
        }
    }
}

/// What ended one attachment of the reader thread.
enum Outcome {
    /// Nobody watches any more; the reader retired.
    Idle,
    /// No more frames will come (stream stopped, broker gone).
    End(End),
    /// Try to attach again after a pause (stream starting, new segment).
    Retry(String),
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

    fn idle_for(&self) -> Duration {
        lock(&self.last_used).elapsed()
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

    fn ensure_reader(self: &Arc<Self>) {
        let mut ctl = lock(&self.ctl);
        if ctl.reader_running {
            return;
        }
        ctl.reader_running = true;
        self.raw.send_replace(Feed::default());
        let hub = self.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("read-{}", self.id))
            .spawn(move || hub.run_reader());
        if let Err(e) = spawned {
            ctl.reader_running = false;
            self.raw.send_replace(Feed {
                frame: None,
                end: Some(Arc::new(End::error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot start a reader thread: {e}"),
                ))),
            });
        }
    }

    /// The slot of `setting`, made if the cap allows it (400 otherwise). Call
    /// with `ctl` held. Slots nobody has used for `idle` are forgotten first.
    fn slot_for(&self, ctl: &mut Ctl, setting: JpegSetting) -> Result<Arc<EncoderSlot>, ApiError> {
        if let Some(slot) = ctl.encoders.get(&setting) {
            return Ok(slot.clone());
        }
        let idle = self.cfg.idle;
        ctl.encoders.retain(|_, s| {
            s.active.load(Ordering::SeqCst) > 0
                || s.running.load(Ordering::SeqCst)
                || lock(&s.last_used).elapsed() < idle
        });
        let default = self.cfg.default_jpeg;
        let in_use = ctl.encoders.keys().filter(|k| **k != default).count();
        if setting != default && in_use >= self.cfg.max_jpeg_settings {
            let mut list: Vec<String> = ctl
                .encoders
                .keys()
                .filter(|k| **k != default)
                .map(|k| format!("quality={}&scale={}", k.quality, k.scale()))
                .collect();
            list.sort();
            self.metrics
                .jpeg_settings_refused
                .fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::bad_request(format!(
                "stream {:?} already serves {} JPEG settings besides the default ({}), the most \
                 it encodes at once (--max-jpeg-settings): ask for one of those or the default \
                 (quality={}&scale=1), or retry once one has gone unused for {} ms",
                self.id,
                in_use,
                list.join(", "),
                default.quality,
                idle.as_millis()
            )));
        }
        Ok(ctl
            .encoders
            .entry(setting)
            .or_insert_with(|| Arc::new(new_slot(setting)))
            .clone())
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
        {
            let _ctl = lock(&self.ctl);
            if !slot.running.load(Ordering::SeqCst) {
                slot.running.store(true, Ordering::SeqCst);
                // A new encoder run: nothing stale from an earlier one.
                slot.tx.send_replace(Feed::default());
                let (hub, s) = (self.clone(), slot.clone());
                let spawned = std::thread::Builder::new()
                    .name(format!("jpeg-{}", self.id))
                    .spawn(move || hub.run_encoder(s));
                if let Err(e) = spawned {
                    slot.running.store(false, Ordering::SeqCst);
                    slot.tx.send_replace(Feed {
                        frame: None,
                        end: Some(Arc::new(End::error(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            format!("cannot start an encoder thread: {e}"),
                        ))),
                    });
                }
            }
        }
        let rx = slot.tx.subscribe();
        Ok(JpegSubscription { slot, rx, raw })
    }

    /// The JPEG of the newest frame at `setting`, at once: the shared one when it
    /// is of the newest frame, else that frame encoded now (once, whoever asks).
    /// Waits up to `wait` for a first frame; `None` when none came.
    pub async fn jpeg_now(
        self: &Arc<Self>,
        setting: JpegSetting,
        wait: Duration,
    ) -> Result<Option<Arc<JpegFrame>>, ApiError> {
        let slot = {
            let mut ctl = lock(&self.ctl);
            let slot = self.slot_for(&mut ctl, setting)?;
            *lock(&slot.last_used) = Instant::now();
            slot
        };
        let mut sub = self.subscribe(Kind::Http);
        let Some(raw) = sub.wait_frame(wait).await? else {
            return Ok(None);
        };
        let fresh = |slot: &EncoderSlot| slot.current().filter(|j| j.seq >= raw.seq);
        if let Some(j) = fresh(&slot) {
            return Ok(Some(j));
        }
        let _once = slot.once.lock().await;
        if let Some(j) = fresh(&slot) {
            return Ok(Some(j));
        }
        let (hub, s) = (self.clone(), slot.clone());
        let j = tokio::task::spawn_blocking(move || {
            let mut enc = match lock(&hub.spare_encoders).pop() {
                Some(e) => e,
                None => jpeg::Encoder::new().map_err(|e| e.to_string())?,
            };
            let r = hub.encode(&mut enc, &raw, &s);
            lock(&hub.spare_encoders).push(enc);
            r
        })
        .await
        .map_err(|e| ApiError::internal(format!("encoder panicked: {e}")))?
        .map_err(|e| ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, e))?;
        *lock(&slot.last_used) = Instant::now();
        Ok(Some(j))
    }

    /// Encodes `raw` at the slot's setting and publishes it to the slot.
    fn encode(
        &self,
        enc: &mut jpeg::Encoder,
        raw: &RawFrame,
        slot: &EncoderSlot,
    ) -> Result<Arc<JpegFrame>, String> {
        let t = Instant::now();
        let out = enc
            .encode(&raw.data, raw.width, raw.height, raw.format, slot.setting)
            .map_err(|e| format!("stream {:?}: {e}", self.id))?;
        let ns = t.elapsed().as_nanos() as u64;
        self.metrics.jpeg_encoded.fetch_add(1, Ordering::Relaxed);
        self.metrics.jpeg_encode_ns.fetch_add(ns, Ordering::Relaxed);
        let ws = jpeg::ws_message(
            &WsHeader {
                frame_number: raw.meta.number,
                capture_wall_ns: raw.meta.wall_ns,
                width: out.width,
                height: out.height,
                format: WS_FORMAT_JPEG,
                payload_len: out.jpeg.len() as u32,
            },
            &out.jpeg,
        );
        let j = Arc::new(JpegFrame {
            seq: raw.seq,
            number: raw.meta.number,
            wall_ns: raw.meta.wall_ns,
            width: out.width,
            height: out.height,
            jpeg: ws.slice(WS_HEADER_LEN..),
            ws,
        });
        slot.publish(j.clone());
        Ok(j)
    }

    /// Retires the reader if nobody used it for `idle`.
    fn retire_if_idle(&self) -> bool {
        if self.active.load(Ordering::SeqCst) > 0 || self.idle_for() < self.cfg.idle {
            return false;
        }
        let mut ctl = lock(&self.ctl);
        if self.active.load(Ordering::SeqCst) > 0 {
            return false;
        }
        ctl.reader_running = false;
        self.raw.send_replace(Feed::default());
        tracing::debug!(stream = %self.id, "reader idle: stopped");
        true
    }

    /// Retires the reader for good: no more frames will come.
    fn retire_with(&self, end: End) {
        let mut ctl = lock(&self.ctl);
        ctl.reader_running = false;
        tracing::info!(stream = %self.id, reason = %end.message, "feed ended");
        self.raw.send_replace(Feed {
            frame: None,
            end: Some(Arc::new(end)),
        });
    }

    fn run_reader(self: Arc<Self>) {
        let mut pool = Pool::default();
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.read_attachment(&mut pool) {
                Outcome::Idle => return,
                Outcome::End(end) => return self.retire_with(end),
                Outcome::Retry(why) => {
                    tracing::debug!(stream = %self.id, why = %crate::errors::redact(&why), "re-attaching in {backoff:?}");
                    let until = Instant::now() + backoff;
                    while Instant::now() < until {
                        if self.retire_if_idle() {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(50).min(backoff));
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// One session and attachment: reads until it ends.
    fn read_attachment(&self, pool: &mut Pool) -> Outcome {
        let id = self.id.as_str();
        // Declared before the reader: cleared only after it detached.
        self.attached.store(true, Ordering::SeqCst);
        let _attached = ClearOnDrop(&self.attached);
        let client = match Client::connect_to(&self.cfg.socket) {
            Ok(c) => c,
            Err(e) => {
                return Outcome::End(End::error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("broker unavailable: {e}"),
                ))
            }
        };
        let mut reader = match client.attach_wait(id, ATTACH_WAIT) {
            Ok(r) => r,
            Err(e) => {
                return match e.code() {
                    Some(ErrorCode::NotFound) => Outcome::End(End::stopped(id)),
                    Some(ErrorCode::NotReady) => Outcome::Retry(e.to_string()),
                    _ if e.is_connection_lost() => Outcome::End(End::error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("broker unavailable: {e}"),
                    )),
                    _ => {
                        let api = ApiError::from_client(&e);
                        Outcome::End(End::error(api.status, api.message))
                    }
                }
            }
        };
        self.metrics.attaches.fetch_add(1, Ordering::Relaxed);
        let (width, height, format) = (reader.width(), reader.height(), reader.pixel_format());
        let generation = reader.attachment().generation;
        self.slot_count
            .store(reader.attachment().slot_count, Ordering::Relaxed);
        let len = reader.frame_bytes();
        tracing::debug!(stream = id, width, height, %format, generation, "attached");
        loop {
            if self.retire_if_idle() {
                return Outcome::Idle;
            }
            let mut buf = pool.take(len);
            let target = Arc::get_mut(&mut buf).expect("pool buffers are unshared");
            match reader.latest_into(target, POLL) {
                Ok(meta) => {
                    let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
                    self.metrics.frames.fetch_add(1, Ordering::Relaxed);
                    self.metrics
                        .skipped
                        .fetch_add(meta.missed, Ordering::Relaxed);
                    let data = Bytes::from_owner(Shared(buf.clone()));
                    pool.give(buf);
                    self.raw.send_modify(|f| {
                        f.frame = Some(Arc::new(RawFrame {
                            seq,
                            meta,
                            generation,
                            width,
                            height,
                            format,
                            data,
                        }));
                    });
                }
                Err(e) if e.is_timeout() => pool.give(buf),
                Err(e) if e.is_end_of_stream() => return Outcome::Retry(e.to_string()),
                Err(e) => {
                    tracing::warn!(stream = id, error = %crate::errors::redact(&e.to_string()), "read failed");
                    return Outcome::Retry(e.to_string());
                }
            }
        }
    }

    /// Retires an encoder that nobody uses, or whose raw feed ended.
    fn retire_encoder(&self, slot: &EncoderSlot, failure: Option<End>) -> bool {
        let idle = slot.active.load(Ordering::SeqCst) == 0
            && lock(&slot.last_used).elapsed() >= self.cfg.idle;
        if !idle && failure.is_none() && self.raw.borrow().end.is_none() {
            return false;
        }
        let _ctl = lock(&self.ctl);
        // Re-checked under the lock: a subscriber may have come, or the reader
        // may have been restarted (clearing the end) meanwhile.
        let idle = slot.active.load(Ordering::SeqCst) == 0
            && lock(&slot.last_used).elapsed() >= self.cfg.idle;
        let end = failure.or_else(|| self.raw.borrow().end.as_deref().cloned());
        if !idle && end.is_none() {
            return false;
        }
        slot.running.store(false, Ordering::SeqCst);
        slot.tx.send_replace(Feed {
            frame: None,
            end: end.map(Arc::new),
        });
        tracing::debug!(stream = %self.id, setting = ?slot.setting, "encoder stopped");
        true
    }

    fn run_encoder(self: Arc<Self>, slot: Arc<EncoderSlot>) {
        let mut rx = self.raw.subscribe();
        let mut enc = match jpeg::Encoder::new() {
            Ok(e) => e,
            Err(e) => {
                self.retire_encoder(
                    &slot,
                    Some(End::error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
                );
                return;
            }
        };
        let mut last = 0;
        loop {
            let frame = rx.borrow_and_update().frame.clone();
            let mut failure = None;
            if let Some(f) = frame.filter(|f| f.seq > last) {
                last = f.seq;
                if let Err(e) = self.encode(&mut enc, &f, &slot) {
                    failure = Some(End::error(StatusCode::UNSUPPORTED_MEDIA_TYPE, e));
                }
            }
            if self.retire_encoder(&slot, failure) {
                return;
            }
            let _ = block_on_timeout(rx.changed(), POLL);
        }
    }
}

/// Polls `fut` on this (non-async) thread until it completes or `timeout`
/// passes. The hub's threads wait on tokio `watch` channels this way: those need
/// no runtime, so a thread outliving the runtime (at shutdown) cannot panic.
fn block_on_timeout<F: std::future::Future>(fut: F, timeout: Duration) -> Option<F::Output> {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    let deadline = Instant::now() + timeout;
    loop {
        if let std::task::Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return Some(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::park_timeout(deadline - now);
    }
}

fn new_slot(setting: JpegSetting) -> EncoderSlot {
    EncoderSlot {
        setting,
        tx: watch::Sender::new(Feed::default()),
        active: AtomicUsize::new(0),
        last_used: Mutex::new(Instant::now()),
        running: AtomicBool::new(false),
        once: tokio::sync::Mutex::new(()),
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
        lock(&self.streams).retain(|id, s| {
            known.contains(id)
                || s.active.load(Ordering::SeqCst) > 0
                || lock(&s.ctl).reader_running
                || Arc::strong_count(s) > 1
        });
    }
}
