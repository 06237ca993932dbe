//! What a hub's `watch` channel carries (the newest frame, or why none will
//! come), and waiting on one from async code or from a plain thread.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use framebroker_client::{FrameMeta, PixelFormat};
use tokio::sync::watch;
use warp::http::StatusCode;

use crate::errors::ApiError;

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
    pub(super) fn stopped(id: &str) -> Self {
        End {
            status: StatusCode::NOT_FOUND,
            message: format!("stream {id:?} stopped"),
            ws_code: 1000,
        }
    }
    pub(super) fn error(status: StatusCode, message: String) -> Self {
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

pub(super) async fn wait_feed<T>(
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

/// Polls `fut` on this (non-async) thread until it completes or `timeout`
/// passes. The hub's threads wait on tokio `watch` channels this way: those need
/// no runtime, so a thread outliving the runtime (at shutdown) cannot panic.
pub(super) fn block_on_timeout<F: std::future::Future>(
    fut: F,
    timeout: Duration,
) -> Option<F::Output> {
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
