//! The reader thread: one broker session per stream, publishing each new frame
//! into the raw channel, re-attaching after a new segment, retiring when idle.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use framebroker_client::Client;
use framebroker_proto::control::ErrorCode;
use warp::http::StatusCode;

use super::feed::{End, Feed, RawFrame};
use super::{lock, Ctl, StreamHub, POLL};
use crate::errors::ApiError;

/// How long one attach waits for a stream that is still starting.
const ATTACH_WAIT: Duration = Duration::from_secs(1);
/// Raw frame buffers kept for reuse by a reader.
const POOL: usize = 6;

/// Clears a flag when dropped.
struct ClearOnDrop<'a>(&'a AtomicBool);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
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
    pub(super) fn ensure_reader(self: &Arc<Self>) {
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

    /// Retires the reader if nobody used it for `idle`.
    pub(super) fn retire_if_idle(&self) -> bool {
        if !self.looks_idle() {
            return false;
        }
        let mut ctl = lock(&self.ctl);
        self.retire_idle_locked(&mut ctl)
    }

    /// The first look, without `ctl`: no subscriber, and unused for `idle`. A
    /// subscriber may come right after it: [`Self::retire_idle_locked`] decides.
    pub(super) fn looks_idle(&self) -> bool {
        self.active.load(Ordering::SeqCst) == 0 && self.idle_for() >= self.cfg.idle
    }

    /// The decision, with `ctl` held. A subscriber counts itself in `active`
    /// before it takes `ctl` (see `subscribe`), so one that came after
    /// [`Self::looks_idle`] is seen here and the reader stays.
    pub(super) fn retire_idle_locked(&self, ctl: &mut Ctl) -> bool {
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

    /// What a refused attach means for the reader: the stream is gone, still
    /// starting, or the broker is.
    fn attach_failed(&self, e: &framebroker_client::Error) -> Outcome {
        match e.code() {
            Some(ErrorCode::NotFound) => Outcome::End(End::stopped(&self.id)),
            Some(ErrorCode::NotReady) => Outcome::Retry(e.to_string()),
            _ if e.is_connection_lost() => Outcome::End(End::error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("broker unavailable: {e}"),
            )),
            _ => {
                let api = ApiError::from_client(e);
                Outcome::End(End::error(api.status, api.message))
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
            Err(e) => return self.attach_failed(&e),
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
}
