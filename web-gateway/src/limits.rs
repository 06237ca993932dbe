//! Caps on long-lived connections: WebSocket clients (`--max-ws-clients`) and
//! MJPEG responses (`--max-http-streams`), over all streams of the gateway.
//!
//! A connection takes a [`Permit`] before it is accepted (before the WebSocket
//! upgrade, before the MJPEG answer starts) and holds it until it ends; past the
//! cap the request gets a 503 JSON error and nothing starts. The cap on JPEG
//! settings per stream lives in the [`hub`](crate::hub) (it is per stream).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use warp::http::StatusCode;

use crate::errors::ApiError;

/// Default of `--max-ws-clients`.
pub const DEFAULT_MAX_WS_CLIENTS: usize = 1000;
/// Default of `--max-http-streams`.
pub const DEFAULT_MAX_HTTP_STREAMS: usize = 1000;
/// Default of `--max-jpeg-settings`.
pub const DEFAULT_MAX_JPEG_SETTINGS: usize = 4;

/// One capped kind of connection.
#[derive(Debug)]
pub struct Gauge {
    /// What is counted, for messages (`WebSocket clients`).
    what: &'static str,
    /// The flag that sets the cap, for messages (`--max-ws-clients`).
    flag: &'static str,
    max: usize,
    open: AtomicUsize,
    refused: AtomicU64,
    /// Connections dropped because the client accepted no data for the deadline.
    pub dropped_slow: AtomicU64,
}

impl Gauge {
    pub fn new(what: &'static str, flag: &'static str, max: usize) -> Arc<Self> {
        Arc::new(Gauge {
            what,
            flag,
            max,
            open: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
            dropped_slow: AtomicU64::new(0),
        })
    }

    /// A permit, or a 503 when `max` are open already.
    pub fn try_acquire(self: &Arc<Self>) -> Result<Permit, ApiError> {
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            });
        match taken {
            Ok(_) => Ok(Permit(self.clone())),
            Err(_) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "too many {}: this gateway serves at most {} at once ({}); try again later",
                        self.what, self.max, self.flag
                    ),
                ))
            }
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Connections refused because the cap was reached.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// One open connection of a [`Gauge`]; released on drop.
#[derive(Debug)]
pub struct Permit(Arc<Gauge>);

impl Permit {
    /// Counts this connection as dropped for accepting no data in time.
    pub fn dropped_slow(&self) {
        self.0.dropped_slow.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The gateway-wide connection caps.
#[derive(Debug)]
pub struct Limits {
    pub ws: Arc<Gauge>,
    pub mjpeg: Arc<Gauge>,
}

impl Limits {
    pub fn new(max_ws_clients: usize, max_http_streams: usize) -> Self {
        Limits {
            ws: Gauge::new("WebSocket clients", "--max-ws-clients", max_ws_clients),
            mjpeg: Gauge::new("MJPEG streams", "--max-http-streams", max_http_streams),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_up_to_the_cap_and_back() {
        let g = Gauge::new("things", "--max-things", 2);
        let a = g.try_acquire().unwrap();
        let b = g.try_acquire().unwrap();
        assert_eq!(g.open(), 2);
        let e = g.try_acquire().unwrap_err();
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(e.message.contains("too many things"), "{}", e.message);
        assert!(e.message.contains("at most 2"), "{}", e.message);
        assert!(e.message.contains("--max-things"), "{}", e.message);
        assert_eq!(g.refused(), 1);
        drop(a);
        assert_eq!(g.open(), 1);
        let _c = g.try_acquire().unwrap();
        drop(b);
        assert_eq!(g.open(), 1);
        // A zero cap refuses everything.
        let none = Gauge::new("things", "--max-things", 0);
        assert!(none.try_acquire().is_err());
        assert_eq!(none.open(), 0);
    }
}
