//! Soak: the real gateway binary (a process of its own, so that its RSS is its
//! own) in front of the real broker with one 640x480@30 test source, on
//! loopback, for `FRAMEBROKER_SOAK_SECS` seconds (60 by default):
//!
//! - 200 WebSocket clients connecting and disconnecting in a loop (raw and JPEG
//!   at two scales; each reads 1-3 frames, then closes cleanly or just vanishes);
//! - 50 HTTP pollers of `/frame` (raw) and `snapshot.jpg`.
//!
//! Asserted: no errors (counted by kind; a client's own disconnect is benign),
//! the gateway's RSS after the run within 64 MiB of before (and within 16 MiB
//! of what it was after the first quarter: flat under load), the broker's stream
//! still at ~30 fps, and its reader count, the gateway's client gauges and
//! connection counts back to where they were. The numbers are printed (run with
//! `--nocapture`):
//!
//! ```sh
//! cargo build --workspace --bins
//! FRAMEBROKER_SOAK_SECS=15 cargo test -p framebroker-gateway --test soak -- --nocapture
//! ```

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use framebroker_gateway::jpeg::parse_ws_message;
use framebroker_tests::{Broker, TempDir};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::{self, Message};

const WS_CLIENTS: usize = 200;
const POLLERS: usize = 50;
const RAW_BYTES: usize = 640 * 480 * 3;
/// Allowed growth of the gateway's RSS over the run.
const RSS_BOUND: u64 = 64 << 20;
/// Allowed growth from the end of the first quarter (buffers and pools grown)
/// to the end: memory stays flat under a steady load.
const RSS_STEADY_BOUND: u64 = 16 << 20;
/// Any single step (connect, a frame, an answer) longer than this is an error.
const STEP: Duration = Duration::from_secs(10);

fn soak_duration() -> Duration {
    let secs = std::env::var("FRAMEBROKER_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|s| *s > 0)
        .unwrap_or(60);
    Duration::from_secs(secs)
}

/// What happened, by kind.
#[derive(Default)]
struct Tally {
    ws_connects: AtomicU64,
    ws_frames_raw: AtomicU64,
    ws_frames_jpeg: AtomicU64,
    ws_clean_closes: AtomicU64,
    ws_vanished: AtomicU64,
    http_frames: AtomicU64,
    http_snapshots: AtomicU64,
    http_bytes: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    benign: Mutex<BTreeMap<String, u64>>,
    /// The first few errors in full.
    samples: Mutex<Vec<String>>,
}

impl Tally {
    fn error(&self, kind: &str, detail: String) {
        *self
            .errors
            .lock()
            .unwrap()
            .entry(kind.to_string())
            .or_default() += 1;
        let mut s = self.samples.lock().unwrap();
        if s.len() < 20 {
            s.push(format!("{kind}: {detail}"));
        }
    }
    fn benign(&self, kind: &str) {
        *self
            .benign
            .lock()
            .unwrap()
            .entry(kind.to_string())
            .or_default() += 1;
    }
}

/// A small deterministic generator (no dependency for randomness).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// `GET path` over HTTP/1.0 (one connection per request, as naive pollers do):
/// status, lower-case headers, body; or the kind of failure.
async fn http_get(
    addr: SocketAddr,
    path: &str,
) -> Result<(u16, HashMap<String, String>, Vec<u8>), (&'static str, String)> {
    let mut s = tokio::time::timeout(STEP, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| ("http_connect_timeout", path.to_string()))?
        .map_err(|e| ("http_connect", e.to_string()))?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| ("http_write", e.to_string()))?;
    let mut all = Vec::with_capacity(RAW_BYTES + 1024);
    tokio::time::timeout(STEP, s.read_to_end(&mut all))
        .await
        .map_err(|_| ("http_timeout", path.to_string()))?
        .map_err(|e| ("http_read", e.to_string()))?;
    let at = find(&all, b"\r\n\r\n").ok_or(("http_malformed", format!("{} bytes", all.len())))?;
    let head = String::from_utf8_lossy(&all[..at]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or(("http_malformed", head.clone()))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok((status, headers, all.split_off(at + 4)))
}

async fn poller(addr: SocketAddr, i: usize, until: Instant, t: Arc<Tally>) {
    let mut rng = Lcg(i as u64 * 7919 + 1);
    let mut n = i;
    while Instant::now() < until {
        n += 1;
        let snapshot = n % 2 == 0;
        let path = if snapshot {
            "/api/streams/demo/snapshot.jpg"
        } else {
            "/api/streams/demo/frame"
        };
        match http_get(addr, path).await {
            Err((kind, detail)) => t.error(kind, detail),
            Ok((status, _, body)) if status != 200 => t.error(
                &format!("http_status_{status}"),
                format!("{path}: {}", String::from_utf8_lossy(&body)),
            ),
            Ok((_, h, body)) => {
                let ok = if snapshot {
                    body.starts_with(&[0xFF, 0xD8]) && body.ends_with(&[0xFF, 0xD9])
                } else {
                    body.len() == RAW_BYTES
                        && h.get("x-frame-width").map(String::as_str) == Some("640")
                };
                if !ok {
                    t.error("http_bad_body", format!("{path}: {} bytes", body.len()));
                } else {
                    t.http_bytes.fetch_add(body.len() as u64, Relaxed);
                    if snapshot {
                        t.http_snapshots.fetch_add(1, Relaxed);
                    } else {
                        t.http_frames.fetch_add(1, Relaxed);
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20 + rng.below(100))).await;
    }
}

/// One WebSocket session: connect, read `frames` frames, leave (cleanly or not).
async fn ws_session(
    url: &str,
    jpeg: Option<(u32, u32)>,
    frames: u64,
    vanish: bool,
    t: &Tally,
) -> Result<(), (&'static str, String)> {
    let (mut ws, _) = tokio::time::timeout(STEP, tokio_tungstenite::connect_async(url))
        .await
        .map_err(|_| ("ws_connect_timeout", url.to_string()))?
        .map_err(|e| match e {
            tungstenite::Error::Http(r) => ("ws_handshake_refused", format!("{}", r.status())),
            e => ("ws_connect", e.to_string()),
        })?;
    t.ws_connects.fetch_add(1, Relaxed);
    let mut got = 0;
    while got < frames {
        let m = tokio::time::timeout(STEP, ws.next())
            .await
            .map_err(|_| ("ws_frame_timeout", url.to_string()))?;
        match m {
            None => return Err(("ws_closed_by_server", "EOF".into())),
            Some(Err(e)) => return Err(("ws_error", e.to_string())),
            Some(Ok(Message::Close(c))) => return Err(("ws_closed_by_server", format!("{c:?}"))),
            Some(Ok(Message::Binary(b))) => {
                match jpeg {
                    None if b.len() == RAW_BYTES => {
                        t.ws_frames_raw.fetch_add(1, Relaxed);
                    }
                    None => return Err(("ws_bad_frame", format!("raw of {} bytes", b.len()))),
                    Some((w, h)) => match parse_ws_message(&b) {
                        Some((hd, jpg))
                            if hd.width == w
                                && hd.height == h
                                && jpg.starts_with(&[0xFF, 0xD8]) =>
                        {
                            t.ws_frames_jpeg.fetch_add(1, Relaxed);
                        }
                        _ => return Err(("ws_bad_frame", format!("FBJ1 of {} bytes", b.len()))),
                    },
                }
                got += 1;
            }
            Some(Ok(_)) => {}
        }
    }
    if vanish {
        // The client just goes away (TCP closed, no close frame): benign.
        drop(ws);
        t.ws_vanished.fetch_add(1, Relaxed);
        return Ok(());
    }
    // A clean close: ours, then the server's answer. Frames in flight before it
    // are fine; whatever fails after our close is the client's own disconnect.
    if ws.send(Message::Close(None)).await.is_err() {
        t.benign("ws_send_close_failed");
        return Ok(());
    }
    loop {
        match tokio::time::timeout(STEP, ws.next()).await {
            Err(_) => return Err(("ws_close_timeout", url.to_string())),
            Ok(None) | Ok(Some(Ok(Message::Close(_)))) => {
                t.ws_clean_closes.fetch_add(1, Relaxed);
                return Ok(());
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_))) => {
                t.benign("ws_error_after_own_close");
                return Ok(());
            }
        }
    }
}

async fn ws_client(gw: Arc<String>, i: usize, until: Instant, t: Arc<Tally>) {
    let mut rng = Lcg(i as u64 * 104729 + 3);
    // Spread the first handshakes over 1 s.
    tokio::time::sleep(Duration::from_millis(rng.below(1000))).await;
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        // 1 in 8 raw (900 KB frames, as the original API), the others JPEG at
        // full and half size (two settings, each encoded once per frame).
        let (path, jpeg) = match (i + n as usize) % 8 {
            0 => ("/ws/demo", None),
            1 | 2 => ("/ws/demo?format=jpeg&scale=0.5", Some((320, 240))),
            _ => ("/ws/demo?format=jpeg", Some((640, 480))),
        };
        let url = format!("{gw}{path}");
        let frames = 1 + rng.below(3);
        let vanish = rng.below(4) == 0;
        if let Err((kind, detail)) = ws_session(&url, jpeg, frames, vanish, &t).await {
            t.error(kind, format!("{path}: {detail}"));
        }
        tokio::time::sleep(Duration::from_millis(50 + rng.below(200))).await;
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_websocket_churn_and_http_polling() {
    let duration = soak_duration();
    let broker = Broker::start(&["--stream", &format!("demo={TESTSRC}")])
        .expect("broker starts (cargo build --workspace --bins first)");
    let client = broker.client();
    let dir = TempDir::new("gwsoak").unwrap();
    let mut gw = GatewayProcess::start(
        &broker.socket,
        &["--idle-ms", "1000"],
        "info",
        &dir.path().join("gateway.log"),
    );
    let pid = gw.pid();
    let addr = gw.addr;

    // The stream is live at its rate before anything starts.
    let stats = {
        let c = client.clone();
        tokio::task::spawn_blocking(move || {
            framebroker_tests::wait_for(Duration::from_secs(20), || {
                c.stats("demo").ok().filter(|s| s.fps >= 25.0)
            })
        })
        .await
        .unwrap()
        .expect("the test source runs at ~30 fps")
    };
    let readers_before = stats.info.readers;
    let dropped_before = stats.frames_dropped;
    // One frame through the gateway: its reader runs; then the baseline RSS.
    let (status, _, body) = http_get(addr, "/api/streams/demo/frame").await.unwrap();
    assert_eq!((status, body.len()), (200, RAW_BYTES));
    let rss_before = rss_bytes(pid);
    eprintln!(
        "soak: {} s, {WS_CLIENTS} WebSocket clients connecting/disconnecting, {POLLERS} HTTP pollers, \
         one 640x480@30 stream; gateway pid {pid} RSS before {:.1} MiB; broker readers {readers_before}",
        duration.as_secs(),
        mib(rss_before)
    );

    let t = Arc::new(Tally::default());
    let start = Instant::now();
    let until = start + duration;
    let ws_base = Arc::new(format!("ws://{addr}"));
    let mut tasks = Vec::new();
    for i in 0..WS_CLIENTS {
        tasks.push(tokio::spawn(ws_client(
            ws_base.clone(),
            i,
            until,
            t.clone(),
        )));
    }
    for i in 0..POLLERS {
        tasks.push(tokio::spawn(poller(addr, i, until, t.clone())));
    }
    // Every second: the gateway's RSS and the broker's fps.
    let sampler = {
        let c = client.clone();
        tokio::spawn(async move {
            let mut rss = Vec::new();
            let mut fps = Vec::new();
            while Instant::now() < until {
                tokio::time::sleep(Duration::from_secs(1)).await;
                rss.push(rss_bytes(pid));
                let c = c.clone();
                if let Ok(Ok(s)) = tokio::task::spawn_blocking(move || c.stats("demo")).await {
                    fps.push(s.fps);
                }
            }
            (rss, fps)
        })
    };
    for task in tasks {
        tokio::time::timeout(duration + Duration::from_secs(60), task)
            .await
            .expect("every client ends within its deadline plus a minute")
            .expect("no client task panicked");
    }
    let elapsed = start.elapsed();
    let (rss_samples, fps_samples) = sampler.await.unwrap();
    let rss_peak = rss_samples.iter().copied().max().unwrap_or(0);
    // RSS once the first quarter is done (buffers and pools grown).
    let rss_warm = rss_samples
        .get(rss_samples.len() / 4)
        .copied()
        .unwrap_or(rss_before);
    let end_stats = client.stats("demo").unwrap();

    // Everything goes back to where it was: no client left in the gateway's
    // gauges, its reader retired (idle 1 s), the broker's reader count as before.
    let gauges = |v: &serde_json::Value| {
        let g = &v["gateway"];
        (
            g["ws_clients"].as_u64(),
            g["mjpeg_clients"].as_u64(),
            g["http_in_flight"].as_u64(),
        )
    };
    let settle = Instant::now() + Duration::from_secs(15);
    let (stats_after, readers_after) = loop {
        let (status, _, body) = http_get(addr, "/api/streams/demo/stats").await.unwrap();
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let readers = client.stats("demo").unwrap().info.readers;
        if gauges(&v) == (Some(0), Some(0), Some(0)) && readers == readers_before {
            break (v, readers);
        }
        assert!(
            Instant::now() < settle,
            "not back to rest 15 s after the load: gateway {} broker readers {readers} (before {readers_before})",
            v["gateway"]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (status, _, metrics) = http_get(addr, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains("framebroker_gateway_connections{kind=\"ws\"} 0"),
        "{metrics}"
    );
    let rss_after = rss_bytes(pid);

    // The numbers.
    let g = &stats_after["gateway"];
    let n = |a: &AtomicU64| a.load(Relaxed);
    let errors = t.errors.lock().unwrap().clone();
    let benign = t.benign.lock().unwrap().clone();
    let total_errors: u64 = errors.values().sum();
    let secs = elapsed.as_secs_f64();
    let fps_min = fps_samples.iter().copied().fold(f64::INFINITY, f64::min);
    eprintln!("soak: ran {secs:.1} s");
    eprintln!(
        "  WebSocket: {} connections made ({:.0}/s), {} raw + {} JPEG frames received, {} clean closes, {} vanished",
        n(&t.ws_connects),
        n(&t.ws_connects) as f64 / secs,
        n(&t.ws_frames_raw),
        n(&t.ws_frames_jpeg),
        n(&t.ws_clean_closes),
        n(&t.ws_vanished)
    );
    eprintln!(
        "  HTTP: {} /frame + {} snapshot.jpg served ({:.0} requests/s, {:.0} MiB)",
        n(&t.http_frames),
        n(&t.http_snapshots),
        (n(&t.http_frames) + n(&t.http_snapshots)) as f64 / secs,
        mib(n(&t.http_bytes))
    );
    eprintln!("  errors: {total_errors} {errors:?}; benign: {benign:?}");
    for s in t.samples.lock().unwrap().iter() {
        eprintln!("    {s}");
    }
    eprintln!(
        "  gateway RSS: before {:.1} MiB, after the first quarter {:.1} MiB, peak {:.1} MiB, after {:.1} MiB (growth {:+.1} MiB, bound {} MiB)",
        mib(rss_before),
        mib(rss_warm),
        mib(rss_peak),
        mib(rss_after),
        (rss_after as f64 - rss_before as f64) / (1 << 20) as f64,
        RSS_BOUND >> 20
    );
    eprintln!(
        "  gateway: {} frames read, {} JPEG encodes ({:.2} ms avg), {} WebSocket frames sent, {} skipped",
        g["frames"], g["jpeg_encoded"], g["jpeg_encode_ms_avg"].as_f64().unwrap_or(0.0),
        g["ws_frames_sent"], g["ws_frames_skipped"]
    );
    eprintln!(
        "  broker: fps at the end {:.2}, lowest 1 s sample {fps_min:.2} ({} samples), frames dropped during the run {}, readers before {readers_before} after {readers_after}",
        end_stats.fps,
        fps_samples.len(),
        end_stats.frames_dropped - dropped_before
    );
    let log = gw.log_text();
    let warn_lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    eprintln!(
        "  gateway log: {} lines, {} WARN/ERROR",
        log.lines().count(),
        warn_lines.len()
    );
    for l in warn_lines.iter().take(10) {
        eprintln!("    {l}");
    }

    // The verdict.
    assert_eq!(total_errors, 0, "errors: {errors:?}");
    assert!(
        n(&t.ws_connects) >= WS_CLIENTS as u64,
        "every WebSocket client connected"
    );
    assert!(n(&t.http_frames) + n(&t.http_snapshots) >= POLLERS as u64);
    assert!(
        rss_after < rss_before + RSS_BOUND,
        "the gateway's RSS grew from {:.1} to {:.1} MiB",
        mib(rss_before),
        mib(rss_after)
    );
    assert!(
        rss_after < rss_warm + RSS_STEADY_BOUND,
        "the gateway's RSS kept growing under a steady load: {:.1} MiB after the first quarter, {:.1} MiB at the end",
        mib(rss_warm),
        mib(rss_after)
    );
    assert!(
        end_stats.fps >= 25.0,
        "the broker's stream slowed to {:.2} fps",
        end_stats.fps
    );
    assert_eq!(readers_after, readers_before);
    assert!(!log.contains("panicked"), "the gateway panicked:\n{log}");
    assert!(
        warn_lines.is_empty(),
        "the gateway warned:\n{}",
        warn_lines.join("\n")
    );
    let status = gw.stop().expect("the gateway was running");
    assert!(status.success(), "the gateway exited with {status}");
}
