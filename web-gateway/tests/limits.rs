//! The gateway's caps, end to end with the real broker: WebSocket clients
//! (`--max-ws-clients`), MJPEG responses (`--max-http-streams`) and JPEG
//! settings per stream (`--max-jpeg-settings`). Each refusal is a clear JSON
//! error, changes nothing for the clients already served, and a freed place is
//! usable again.
//!
//! Needs `cargo build --workspace --bins` first (the broker binary).

mod common;

use std::time::{Duration, Instant};

use common::*;
use framebroker_tests::Broker;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{self, Message};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A broker with the given streams: the first of the 640x480 test source, the
/// others of smaller ones (the broker ingests a URL once, whatever the ids).
fn broker(streams: &[&str]) -> Broker {
    let specs: Vec<String> = streams
        .iter()
        .enumerate()
        .map(|(i, s)| match i {
            0 => format!("{s}={TESTSRC}"),
            _ => format!("{s}=testsrc://?size=320x240&rate={}", 30 - i),
        })
        .collect();
    let mut args = Vec::new();
    for s in &specs {
        args.extend(["--stream", s.as_str()]);
    }
    Broker::start(&args).expect("broker starts (cargo build --workspace --bins first)")
}

/// The next binary message, within 10 s.
async fn next_binary(ws: &mut Ws) -> Vec<u8> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message within 10 s")
            .expect("socket open")
            .expect("no error");
        if let Message::Binary(b) = m {
            return b.to_vec();
        }
    }
}

async fn ws_connect(url: &str) -> Ws {
    let (mut ws, resp) = tokio_tungstenite::connect_async(url)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    assert_eq!(resp.status(), 101);
    next_binary(&mut ws).await;
    ws
}

/// The status a WebSocket handshake gets (101 when it succeeds).
async fn ws_status(url: &str) -> u16 {
    match tokio_tungstenite::connect_async(url).await {
        Ok((_, resp)) => resp.status().as_u16(),
        Err(tungstenite::Error::Http(r)) => r.status().as_u16(),
        Err(e) => panic!("{url}: {e}"),
    }
}

/// A WebSocket handshake over plain HTTP, to read the whole refusal.
async fn ws_handshake(gw: &Gateway, path: &str) -> Reply {
    request(
        gw.addr,
        "GET",
        path,
        &[
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
        b"",
    )
    .await
}

/// Polls `f` every 100 ms until it is true, for at most `secs`.
async fn eventually<F, Fut>(secs: u64, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn metric(gw: &Gateway, line_start: &str) -> Option<u64> {
    let text = String::from_utf8(get(gw.addr, "/metrics").await.body).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .map(|v| v.trim().parse::<f64>().unwrap() as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_cap_refuses_the_upgrade_with_503() {
    let broker = broker(&["demo"]);
    let gw = Gateway::start_with(&broker.socket, |c| c.max_ws_clients = 2);
    let mut a = ws_connect(&gw.ws_url("/ws/demo")).await;
    let mut b = ws_connect(&gw.ws_url("/ws/demo?format=jpeg")).await;
    // The third is refused before the upgrade, with a JSON reason...
    assert_eq!(ws_status(&gw.ws_url("/ws/demo?format=jpeg")).await, 503);
    let r = ws_handshake(&gw, "/ws/demo").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("content-type"), "application/json");
    let e = r.error();
    assert!(
        e.contains("too many WebSocket clients")
            && e.contains("at most 2")
            && e.contains("--max-ws-clients"),
        "{e}"
    );
    // ...whatever the stream (the cap is the gateway's).
    assert_eq!(ws_handshake(&gw, "/ws/nope").await.status, 503);
    // The two served keep getting frames; HTTP is not capped.
    next_binary(&mut a).await;
    next_binary(&mut b).await;
    assert_eq!(get(gw.addr, "/api/streams/demo/frame").await.status, 200);
    assert_eq!(
        get(gw.addr, "/api/streams/demo/snapshot.jpg").await.status,
        200
    );
    let mut mjpeg = Mjpeg::open(gw.addr, "/api/streams/demo/mjpeg").await;
    assert_eq!(mjpeg.status, 200);
    mjpeg.next_part().await;
    assert_eq!(
        metric(&gw, "framebroker_gateway_connections{kind=\"ws\"}").await,
        Some(2)
    );
    assert_eq!(
        metric(
            &gw,
            "framebroker_gateway_connections_refused_total{kind=\"ws\"}"
        )
        .await,
        Some(3)
    );
    // A client leaves: its place is free again.
    a.close(None).await.ok();
    drop(a);
    eventually(5, "a freed WebSocket place", || async {
        ws_status(&gw.ws_url("/ws/demo")).await == 101
    })
    .await;
    // A client that vanishes without a close frame frees its place too.
    drop(b);
    eventually(5, "the place of a vanished client", || async {
        metric(&gw, "framebroker_gateway_connections{kind=\"ws\"}").await == Some(0)
    })
    .await;
    let _c = ws_connect(&gw.ws_url("/ws/demo")).await;
    let _d = ws_connect(&gw.ws_url("/ws/demo")).await;
    assert_eq!(ws_status(&gw.ws_url("/ws/demo")).await, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mjpeg_cap_refuses_with_503() {
    let broker = broker(&["demo", "demo2"]);
    let gw = Gateway::start_with(&broker.socket, |c| c.max_http_streams = 1);
    let mut first = Mjpeg::open(gw.addr, "/api/streams/demo/mjpeg").await;
    assert_eq!(first.status, 200);
    first.next_part().await;
    // Another MJPEG, of this stream or another: 503 with the reason.
    for path in [
        "/api/streams/demo/mjpeg",
        "/api/streams/demo2/mjpeg?quality=50",
    ] {
        let r = get(gw.addr, path).await;
        assert_eq!(r.status, 503, "{path}");
        let e = r.error();
        assert!(
            e.contains("too many MJPEG streams") && e.contains("--max-http-streams"),
            "{e}"
        );
    }
    // WebSockets and one-off requests are not affected; the first stream goes on.
    let _ws = ws_connect(&gw.ws_url("/ws/demo2?format=jpeg")).await;
    assert_eq!(
        get(gw.addr, "/api/streams/demo2/snapshot.jpg").await.status,
        200
    );
    first.next_part().await;
    // The client leaves: the next one is served (the gateway notices at its next
    // write, within a frame or two).
    drop(first);
    eventually(5, "a freed MJPEG place", || async {
        metric(&gw, "framebroker_gateway_connections{kind=\"mjpeg\"}").await == Some(0)
    })
    .await;
    let mut again = Mjpeg::open(gw.addr, "/api/streams/demo2/mjpeg").await;
    assert_eq!(again.status, 200);
    again.next_part().await;
    assert_eq!(
        metric(
            &gw,
            "framebroker_gateway_connections_refused_total{kind=\"mjpeg\"}"
        )
        .await,
        Some(2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jpeg_settings_per_stream_are_capped() {
    let broker = broker(&["demo", "demo2"]);
    // Default cap (4); the test gateway forgets unused settings after 2 s.
    let gw = Gateway::start(&broker.socket);
    let addr = gw.addr;
    // A streaming subscriber holds its setting for as long as it stays.
    let mut held = ws_connect(&gw.ws_url("/ws/demo?format=jpeg&quality=10")).await;
    for q in ["quality=20", "quality=30&scale=0.5", "quality=40"] {
        let r = get(addr, &format!("/api/streams/demo/snapshot.jpg?{q}")).await;
        assert_eq!(r.status, 200, "{q}: {}", String::from_utf8_lossy(&r.body));
    }
    // A fifth setting: refused on every JPEG route, with the reason.
    for path in [
        "/api/streams/demo/snapshot.jpg?quality=50",
        "/api/streams/demo/frame?format=jpeg&quality=50",
        "/api/streams/demo/frame?format=jpeg&scale=0.25",
        "/api/streams/demo/mjpeg?quality=50",
    ] {
        let r = get(addr, path).await;
        assert_eq!(r.status, 400, "{path}");
        assert_eq!(r.header("content-type"), "application/json");
        let e = r.error();
        assert!(
            e.contains("already serves 4 JPEG settings besides the default")
                && e.contains("--max-jpeg-settings")
                && e.contains("quality=30&scale=0.5"),
            "{e}"
        );
    }
    let r = ws_handshake(&gw, "/ws/demo?format=jpeg&quality=50").await;
    assert_eq!(r.status, 400);
    assert!(r.error().contains("--max-jpeg-settings"), "{}", r.error());
    // Settings in use, the default one (quality 80, full size), raw frames and
    // other streams are still served.
    for path in [
        "/api/streams/demo/snapshot.jpg?quality=20",
        "/api/streams/demo/snapshot.jpg",
        "/api/streams/demo/frame?format=jpeg&quality=80&scale=1",
        "/api/streams/demo/frame?quality=50",
        "/api/streams/demo2/snapshot.jpg?quality=50",
    ] {
        assert_eq!(get(addr, path).await.status, 200, "{path}");
    }
    let mut default_ws = ws_connect(&gw.ws_url("/ws/demo?format=jpeg")).await;
    next_binary(&mut held).await;
    next_binary(&mut default_ws).await;
    assert_eq!(
        metric(
            &gw,
            "framebroker_gateway_jpeg_settings_refused_total{stream=\"demo\"}"
        )
        .await,
        Some(5)
    );
    // Unused one-off settings are forgotten after the idle time (2 s); the
    // subscribed one stays: three new settings fit, a fourth does not. Until
    // the old ones are forgotten a new one is refused, which changes nothing.
    for q in [50, 60, 70] {
        let path = format!("/api/streams/demo/snapshot.jpg?quality={q}");
        eventually(
            10,
            &format!("quality {q} served once unused settings are forgotten"),
            || async { get(addr, &path).await.status == 200 },
        )
        .await;
    }
    next_binary(&mut held).await;
    let r = get(addr, "/api/streams/demo/snapshot.jpg?quality=90").await;
    assert_eq!(r.status, 400);
    assert!(r.error().contains("quality=10&scale=1"), "{}", r.error());
    held.send(Message::Close(None)).await.ok();
}

/// A client that upgrades (or asks for MJPEG) and then never reads: the socket
/// as the test sees it, with a small receive buffer so that it fills quickly.
async fn stalled(gw: &Gateway, path: &str, websocket: bool) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(16 * 1024).unwrap();
    let mut s = sock.connect(gw.addr).await.unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n", gw.addr);
    if websocket {
        req.push_str(
            "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        );
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    // Read the status line, then nothing more.
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await.unwrap();
    let want: &[u8] = if websocket {
        b"HTTP/1.1 101"
    } else {
        b"HTTP/1.1 200"
    };
    assert_eq!(&head, want, "{}", String::from_utf8_lossy(&head));
    s
}

/// Reads until the server closes the connection (what it had buffered first),
/// within `secs`; false if it stays open.
async fn closed_by_server(s: &mut tokio::net::TcpStream, secs: u64) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 1 << 20];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

/// The original server's write deadline: WebSocket and MJPEG clients that take
/// no data for `client_deadline` are dropped and counted, while a healthy
/// WebSocket beside them keeps receiving every frame the gateway reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_are_dropped_after_the_deadline() {
    const STALLED_WS: usize = 6;
    let broker = broker(&["demo"]);
    let gw = Gateway::start_with(&broker.socket, |c| {
        c.client_deadline = Duration::from_secs(2);
    });
    let healthy = ws_connect(&gw.ws_url("/ws/demo")).await;
    let frames_at = |gw: &Gateway| {
        let addr = gw.addr;
        async move {
            let text = String::from_utf8(get(addr, "/metrics").await.body).unwrap();
            text.lines()
                .find_map(|l| l.strip_prefix("framebroker_gateway_frames_total{stream=\"demo\"}"))
                .map_or(0, |v| v.trim().parse::<u64>().unwrap())
        }
    };
    // The healthy client reads all along (for at most 60 s), in its own task.
    let got = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (got, stop) = (got.clone(), stop.clone());
        let mut healthy = healthy;
        tokio::spawn(async move {
            let start = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && start.elapsed() < Duration::from_secs(60)
            {
                next_binary(&mut healthy).await;
                got.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            healthy
        })
    };
    let read_before = frames_at(&gw).await;
    let got_before = got.load(std::sync::atomic::Ordering::Relaxed);
    let mut stuck = Vec::new();
    for _ in 0..STALLED_WS {
        stuck.push(stalled(&gw, "/ws/demo", true).await);
    }
    let mut stuck_mjpeg = stalled(&gw, "/api/streams/demo/mjpeg?quality=95", false).await;
    assert_eq!(
        metric(&gw, "framebroker_gateway_connections{kind=\"ws\"}").await,
        Some(1 + STALLED_WS as u64)
    );
    let start = Instant::now();
    eventually(30, "every stalled WebSocket dropped", || async {
        metric(
            &gw,
            "framebroker_gateway_slow_clients_dropped_total{kind=\"ws\"}",
        )
        .await
            == Some(STALLED_WS as u64)
    })
    .await;
    let read = frames_at(&gw).await - read_before;
    let got_ws = got.load(std::sync::atomic::Ordering::Relaxed) - got_before;
    println!(
        "healthy client: {got_ws} frames while the gateway read {read}; {STALLED_WS} stalled dropped after {:?}",
        start.elapsed()
    );
    // Not before the deadline...
    assert!(start.elapsed() >= Duration::from_secs(2));
    // ...and the healthy one kept up meanwhile (frames it got / frames read).
    assert!(
        got_ws as f64 >= 0.8 * read as f64,
        "healthy client got {got_ws} of {read} frames"
    );
    assert_eq!(
        metric(&gw, "framebroker_gateway_connections{kind=\"ws\"}").await,
        Some(1)
    );
    for s in &mut stuck {
        assert!(closed_by_server(s, 10).await, "a dropped socket stays open");
    }
    // The stalled MJPEG client too (its buffers take longer to fill).
    eventually(30, "the stalled MJPEG client dropped", || async {
        metric(
            &gw,
            "framebroker_gateway_slow_clients_dropped_total{kind=\"mjpeg\"}",
        )
        .await
            == Some(1)
    })
    .await;
    assert!(closed_by_server(&mut stuck_mjpeg, 10).await);
    // The healthy one was never dropped and still gets frames; the per-stream
    // counter agrees.
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut healthy = reader.await.expect("the healthy reader never failed");
    next_binary(&mut healthy).await;
    let g = get(gw.addr, "/api/streams/demo/stats").await.json()["gateway"].clone();
    assert_eq!(g["slow_clients_dropped"], 1 + STALLED_WS as u64);
    assert_eq!(g["ws_clients"], 1);
}
