//! The JPEG encoder cache: one slot per setting in use (capped per stream),
//! its encoder thread fed from the raw channel, and one-off encodes shared by
//! whoever asks for the same frame.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use warp::http::StatusCode;

use super::feed::{block_on_timeout, End, Feed, JpegFrame, RawFrame};
use super::subscribers::Kind;
use super::{lock, Ctl, StreamHub, POLL};
use crate::errors::ApiError;
use crate::jpeg::{self, JpegSetting, WsHeader, WS_FORMAT_JPEG, WS_HEADER_LEN};

/// The reusable state of one JPEG setting of one stream.
pub struct EncoderSlot {
    pub setting: JpegSetting,
    pub(super) tx: watch::Sender<Feed<JpegFrame>>,
    /// Streaming subscribers (WebSocket, MJPEG) of this setting.
    pub(super) active: AtomicUsize,
    pub(super) last_used: Mutex<Instant>,
    /// Whether its encoder thread runs; changed only under `StreamHub::ctl`.
    pub(super) running: AtomicBool,
    /// Serialises one-off encodes so that a frame is encoded once.
    pub(super) once: tokio::sync::Mutex<()>,
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

impl StreamHub {
    /// The slot of `setting`, made if the cap allows it (400 otherwise). Call
    /// with `ctl` held. Slots nobody has used for `idle` are forgotten first.
    pub(super) fn slot_for(
        &self,
        ctl: &mut Ctl,
        setting: JpegSetting,
    ) -> Result<Arc<EncoderSlot>, ApiError> {
        if let Some(slot) = ctl.encoders.get(&setting) {
            return Ok(slot.clone());
        }
        let idle = self.cfg.idle;
        ctl.encoders
            .retain(|_, s| s.running.load(Ordering::SeqCst) || !self.slot_idle(s));
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

    /// Retires an encoder that nobody uses, or whose raw feed ended.
    fn retire_encoder(&self, slot: &EncoderSlot, failure: Option<End>) -> bool {
        if failure.is_none() && !self.encoder_may_retire(slot) {
            return false;
        }
        let ctl = lock(&self.ctl);
        self.retire_encoder_locked(&ctl, slot, failure)
    }

    /// Nobody streams the slot's setting, and nobody used it for `idle`.
    fn slot_idle(&self, slot: &EncoderSlot) -> bool {
        slot.active.load(Ordering::SeqCst) == 0 && lock(&slot.last_used).elapsed() >= self.cfg.idle
    }

    /// The first look, without `ctl`: the slot is idle or the raw feed ended.
    /// Either may change right after it: [`Self::retire_encoder_locked`] decides.
    pub(super) fn encoder_may_retire(&self, slot: &EncoderSlot) -> bool {
        self.slot_idle(slot) || self.raw.borrow().end.is_some()
    }

    /// The decision, with `ctl` held. Re-checked here: a subscriber may have
    /// come (it counts itself in the slot before it takes `ctl`), or the reader
    /// may have been restarted (clearing the end, also under `ctl`) meanwhile.
    pub(super) fn retire_encoder_locked(
        &self,
        _ctl: &Ctl,
        slot: &EncoderSlot,
        failure: Option<End>,
    ) -> bool {
        let idle = self.slot_idle(slot);
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

    /// Starts the encoder thread of `slot` unless it runs.
    pub(super) fn ensure_encoder(self: &Arc<Self>, slot: &Arc<EncoderSlot>) {
        let _ctl = lock(&self.ctl);
        if slot.running.load(Ordering::SeqCst) {
            return;
        }
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
