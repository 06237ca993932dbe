//! End to end: the real broker binary (through the `framebroker-tests` harness)
//! with its ffmpeg test source or the real RTSP test camera, the gateway on a
//! loopback port, and HTTP / WebSocket / MJPEG clients over TCP.
//!
//! Needs `cargo build --workspace --bins` first (the broker binary).

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use framebroker_gateway::jpeg::{parse_ws_message, WS_FORMAT_JPEG};
use framebroker_tests::{sample_bars, Broker, Camera, SMPTE_BARS_BGR};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

fn demo_broker(extra: &[&str]) -> Broker {
    let stream = format!("demo={TESTSRC}");
    let mut args = vec!["--stream", stream.as_str()];
    args.extend_from_slice(extra);
    Broker::start(&args).expect("broker starts (cargo build --workspace --bins first)")
}

async fn ws_connect(
    url: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let (ws, resp) = tokio_tungstenite::connect_async(url)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    assert_eq!(resp.status(), 101);
    ws
}

/// The next binary message (skipping pings), within 10 s.
async fn next_binary<S>(ws: &mut S) -> Vec<u8>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message within 10 s")
            .expect("socket open")
            .expect("no error");
        match m {
            Message::Binary(b) => return b.to_vec(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected message {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_frame_is_the_frame_in_shared_memory() {
    let broker = demo_broker(&["--checksum"]);
    let rec = Recorder::start(broker.client(), "demo");
    let gw = Gateway::start(&broker.socket);
    let mut checked = 0;
    let mut numbers = HashSet::new();
    for _ in 0..8 {
        let r = get(gw.addr, "/api/streams/demo/frame").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), "application/octet-stream");
        assert_eq!(r.header("x-frame-width"), "640");
        assert_eq!(r.header("x-frame-height"), "480");
        assert_eq!(r.header("x-pixel-format"), "bgr24");
        assert_eq!(r.body.len(), 640 * 480 * 3);
        let wall = r.header_u64("x-capture-time-ns");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        assert!(
            wall <= now && now - wall < 10_000_000_000,
            "capture time {wall} vs now {now}"
        );
        let number = r.header_u64("x-frame-number");
        let seen = rec.frame(number);
        let crc = crc32fast::hash(&r.body);
        assert_eq!(
            crc, seen.crc,
            "frame {number}: the gateway's bytes differ from the ring's"
        );
        assert_eq!(
            crc, seen.slot_crc,
            "frame {number}: and from the broker's checksum"
        );
        assert!(r.body == *seen.data);
        numbers.insert(number);
        checked += 1;
        tokio::time::sleep(Duration::from_millis(70)).await;
    }
    assert_eq!(checked, 8);
    assert!(numbers.len() >= 4, "the frames move on: {numbers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jpeg_frame_and_snapshot_are_the_frame_encoded() {
    let broker = demo_broker(&[]);
    let rec = Recorder::start(broker.client(), "demo");
    let gw = Gateway::start(&broker.socket);
    for (path, headers, w, h) in [
        ("/api/streams/demo/frame?format=jpeg", vec![], 640, 480),
        (
            "/api/streams/demo/frame",
            vec![("Accept", "image/jpeg")],
            640,
            480,
        ),
        ("/api/streams/demo/snapshot.jpg", vec![], 640, 480),
        (
            "/api/streams/demo/snapshot.jpg?scale=0.5&quality=60",
            vec![],
            320,
            240,
        ),
        (
            "/api/streams/demo/frame?format=jpeg&scale=0.25",
            vec![],
            160,
            120,
        ),
    ] {
        let r = request(gw.addr, "GET", path, &headers, b"").await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), "image/jpeg", "{path}");
        assert_eq!(r.header_u64("x-frame-width"), w as u64);
        assert_eq!(r.header_u64("x-frame-height"), h as u64);
        let (dw, dh, pixels) = decode_bgr(&r.body);
        assert_eq!((dw, dh), (w, h), "{path} decodes to its size");
        if w == 640 {
            // The JPEG is of the frame it names: close to the ring's pixels, colours
            // not swapped.
            let seen = rec.frame(r.header_u64("x-frame-number"));
            let d = mean_abs_diff(&pixels, &seen.data);
            assert!(d < 6.0, "{path}: mean abs diff {d} from the raw frame");
        }
    }
    // Raw stays the default without Accept: image/jpeg.
    let r = get(gw.addr, "/api/streams/demo/frame").await;
    assert_eq!(r.header("content-type"), "application/octet-stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_raw_and_jpeg_formats() {
    let broker = demo_broker(&[]);
    let gw = Gateway::start(&broker.socket);

    // Raw: one binary message of the BGR bytes per frame, as the original.
    let mut ws = ws_connect(&gw.ws_url("/ws/demo")).await;
    let mut crcs = HashSet::new();
    for _ in 0..10 {
        let m = next_binary(&mut ws).await;
        assert_eq!(m.len(), 640 * 480 * 3);
        crcs.insert(crc32fast::hash(&m));
    }
    assert!(crcs.len() >= 9, "ten different frames");
    ws.close(None).await.ok();

    // JPEG: FBJ1 header + JPEG, frame numbers increasing.
    let mut ws = ws_connect(&gw.ws_url("/ws/demo?format=jpeg&quality=70")).await;
    let mut last = 0;
    for _ in 0..10 {
        let m = next_binary(&mut ws).await;
        let (h, jpeg) = parse_ws_message(&m).expect("an FBJ1 message");
        assert_eq!(&m[..4], b"FBJ1");
        assert_eq!(h.format, WS_FORMAT_JPEG);
        assert_eq!((h.width, h.height), (640, 480));
        assert!(h.frame_number > last, "{} after {last}", h.frame_number);
        last = h.frame_number;
        assert!(h.capture_wall_ns > 1_600_000_000_000_000_000);
        let (w, hh, _) = decode_bgr(jpeg);
        assert_eq!((w, hh), (640, 480));
    }
    // A scaled JPEG socket.
    let mut small = ws_connect(&gw.ws_url("/ws/demo?format=jpeg&scale=0.5")).await;
    let m = next_binary(&mut small).await;
    let (h, jpeg) = parse_ws_message(&m).unwrap();
    assert_eq!((h.width, h.height), (320, 240));
    assert_eq!(decode_bgr(jpeg).0, 320);

    // Bad queries are refused before the upgrade.
    let e = tokio_tungstenite::connect_async(gw.ws_url("/ws/demo?format=png")).await;
    assert!(e.is_err());
    let e = tokio_tungstenite::connect_async(gw.ws_url("/ws/nope")).await;
    match e {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 404),
        other => panic!("expected 404, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_closes_with_a_reason_when_the_stream_stops() {
    let broker = demo_broker(&[]);
    let gw = Gateway::start(&broker.socket);
    let mut ws = ws_connect(&gw.ws_url("/ws/demo")).await;
    next_binary(&mut ws).await;
    // While it watches, a plain DELETE is refused (the original's rule) and
    // changes nothing...
    let r = request(gw.addr, "DELETE", "/api/streams/demo", &[], b"").await;
    assert_eq!(r.status, 409, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["client_count"], 1);
    assert!(r.error().contains("/force"), "{}", r.error());
    next_binary(&mut ws).await;
    // ...and /force stops it.
    let r = request(gw.addr, "DELETE", "/api/streams/demo/force", &[], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["stopped"], true);
    assert_eq!(r.json()["message"], "Stream force-stopped successfully");
    let deadline = Instant::now() + Duration::from_secs(10);
    let close = loop {
        assert!(Instant::now() < deadline, "no close frame");
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Close(c))) => break c,
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    let close = close.expect("a close code and reason");
    assert_eq!(u16::from(close.code), 1000);
    assert!(close.reason.contains("stopped"), "{}", close.reason);
    // And the stream is gone.
    let r = get(gw.addr, "/api/streams/demo/frame").await;
    assert_eq!(r.status, 404);
    assert!(r.error().contains("demo"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_jpeg_subscribers_share_one_encode_per_frame() {
    let broker = demo_broker(&[]);
    let gw = Gateway::start(&broker.socket);
    let n = 12;
    let mut sockets = Vec::new();
    for _ in 0..n {
        sockets.push(ws_connect(&gw.ws_url("/ws/demo?format=jpeg")).await);
    }
    // Same setting over MJPEG too.
    let mut mjpeg = Mjpeg::open(gw.addr, "/api/streams/demo/mjpeg").await;
    assert_eq!(mjpeg.status, 200);
    let window = Duration::from_secs(2);
    let tasks: Vec<_> = sockets
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let start = Instant::now();
                let mut got = 0;
                while start.elapsed() < window {
                    let m = next_binary(&mut ws).await;
                    parse_ws_message(&m).expect("FBJ1");
                    got += 1;
                }
                (got, ws)
            })
        })
        .collect();
    let mut parts = 0;
    let start = Instant::now();
    while start.elapsed() < window {
        let p = mjpeg.next_part().await;
        assert_eq!(&p.jpeg[..2], &[0xFF, 0xD8]);
        parts += 1;
    }
    let mut counts = Vec::new();
    let mut open = Vec::new();
    for t in tasks {
        let (c, ws) = t.await.unwrap();
        counts.push(c);
        open.push(ws);
    }
    // 30 fps for 2 s: each subscriber gets most frames.
    for c in &counts {
        assert!(
            *c >= 30,
            "a subscriber got only {c} frames in 2 s: {counts:?}"
        );
    }
    assert!(parts >= 30, "MJPEG got {parts} parts");
    let stats = get(gw.addr, "/api/streams/demo/stats").await.json();
    let g = &stats["gateway"];
    let frames = g["frames"].as_u64().unwrap();
    let encoded = g["jpeg_encoded"].as_u64().unwrap();
    assert_eq!(g["ws_clients"].as_u64().unwrap(), n as u64);
    assert_eq!(g["mjpeg_clients"].as_u64().unwrap(), 1);
    assert!(
        encoded <= frames + 2,
        "{encoded} encodes for {frames} frames and {n} subscribers: not encoded once"
    );
    assert_eq!(stats["client_count"].as_u64().unwrap(), n as u64 + 1);
    // Metrics say the same.
    let m = get(gw.addr, "/metrics").await;
    let text = String::from_utf8(m.body).unwrap();
    assert!(
        text.contains(&format!(
            "framebroker_gateway_ws_subscribers{{stream=\"demo\"}} {n}"
        )),
        "{text}"
    );
    assert!(text.contains("framebroker_gateway_jpeg_encode_seconds_count{stream=\"demo\"}"));
    assert!(text.contains("framebroker_stream_fps{stream=\"demo\"}"));
    drop(open);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_skips_frames_and_http_consumes_nothing() {
    let broker = demo_broker(&[]);
    let gw = Gateway::start(&broker.socket);
    let mut fast = ws_connect(&gw.ws_url("/ws/demo?format=jpeg")).await;
    // Raw frames (900 KB) so that the kernel's socket buffers hold only a few:
    // past them, a slow client is slow for the server too.
    let mut slow = ws_connect(&gw.ws_url("/ws/demo")).await;
    let addr = gw.addr;
    // HTTP polling all along: it must not take frames from the sockets.
    let poller = tokio::spawn(async move {
        let mut n = 0;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(3) {
            let r = get(addr, "/api/streams/demo/frame").await;
            assert_eq!(r.status, 200);
            n += 1;
        }
        n
    });
    let fast_task = tokio::spawn(async move {
        let mut numbers = Vec::new();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(3) {
            let m = next_binary(&mut fast).await;
            numbers.push(parse_ws_message(&m).unwrap().0.frame_number);
        }
        numbers
    });
    let start = Instant::now();
    let mut slow_got = 0;
    while start.elapsed() < Duration::from_secs(3) {
        assert_eq!(next_binary(&mut slow).await.len(), 640 * 480 * 3);
        slow_got += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let polls = poller.await.unwrap();
    let fast_numbers = fast_task.await.unwrap();
    assert!(polls >= 5, "{polls} polls");
    // The fast socket saw (nearly) every frame despite the polls and the slow one.
    let span = fast_numbers.last().unwrap() - fast_numbers.first().unwrap() + 1;
    assert!(
        fast_numbers.len() as f64 >= 0.8 * span as f64,
        "fast socket got {} of {span} frames",
        fast_numbers.len()
    );
    assert!(span >= 60, "3 s at 30 fps: {span}");
    // The slow one skipped frames instead of queueing them.
    let g = get(gw.addr, "/api/streams/demo/stats").await.json()["gateway"].clone();
    let skipped = g["ws_frames_skipped"].as_u64().unwrap();
    assert!(
        skipped >= 30,
        "the slow socket (read {slow_got}) skipped only {skipped} frames"
    );
    assert!(slow_got <= 12, "{slow_got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_compatible_with_the_original_server() {
    let broker = Broker::start(&[]).unwrap();
    let gw = Gateway::start(&broker.socket);
    let addr = gw.addr;
    // Start a stream as the seed's README does (credentials in the URL).
    let body = br#"{"stream_id": "camera1", "rtsp_url": "testsrc://?size=320x240&rate=15", "width": 160, "height": 120}"#;
    let r = request(
        addr,
        "POST",
        "/api/streams",
        &[("Content-Type", "application/json")],
        body,
    )
    .await;
    // 200 either way, as the original answered, with its fields.
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["stream_id"], "camera1");
    assert_eq!(v["created"], true);
    assert_eq!(v["message"], "Stream started successfully");
    assert_eq!(
        (v["width"].as_u64(), v["height"].as_u64()),
        (Some(160), Some(120))
    );
    // Again: already running.
    let r = request(addr, "POST", "/api/streams", &[], body).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["created"], false);
    assert_eq!(r.json()["message"], "Stream already running");
    // Another URL under the same id: 409.
    let r = request(
        addr,
        "POST",
        "/api/streams",
        &[],
        br#"{"stream_id": "camera1", "rtsp_url": "testsrc://?size=320x240&rate=10"}"#,
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.error());
    // Forbidden scheme and invalid id: 400 with the broker's reason.
    let r = request(
        addr,
        "POST",
        "/api/streams",
        &[],
        br#"{"stream_id": "x", "rtsp_url": "file:///etc/passwd"}"#,
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.error().contains("file"), "{}", r.error());
    let r = request(
        addr,
        "POST",
        "/api/streams",
        &[],
        br#"{"stream_id": "x", "rtsp_url": "ftp://admin:hunter2@cam/x"}"#,
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.error().contains("scheme"), "{}", r.error());
    assert!(!r.error().contains("hunter2"), "{}", r.error());
    let r = request(
        addr,
        "POST",
        "/api/streams",
        &[],
        br#"{"stream_id": "../etc", "rtsp_url": "rtsp://cam/x"}"#,
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.error().contains("invalid stream id"), "{}", r.error());
    // Credentials are never echoed (a camera that does not answer: it stays starting).
    let r = request(addr, "POST", "/api/streams", &[], br#"{"stream_id": "cam2", "rtsp_url": "rtsp://admin:hunter2@127.0.0.1:9/x?password=hunter2"}"#).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let text = String::from_utf8_lossy(&r.body).to_string();
    assert!(!text.contains("hunter2"), "credentials echoed: {text}");
    assert!(
        r.json()["rtsp_url"]
            .as_str()
            .unwrap()
            .contains("***@127.0.0.1:9"),
        "{text}"
    );
    for p in [
        "/api/streams",
        "/api/streams/cam2",
        "/api/streams/cam2/stats",
    ] {
        let r = get(addr, p).await;
        assert_eq!(r.status, 200, "{p}");
        assert!(
            !String::from_utf8_lossy(&r.body).contains("hunter2"),
            "{p}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    let r = request(addr, "DELETE", "/api/streams/cam2", &[], b"").await;
    assert_eq!(r.status, 200);
    // List and stats.
    let list = get(addr, "/api/streams").await.json();
    assert_eq!(list["count"], 1);
    assert_eq!(list["streams"][0]["stream_id"], "camera1");
    // Frame: 204 or a frame while it starts, then a frame of the asked size.
    let deadline = Instant::now() + Duration::from_secs(15);
    let frame = loop {
        let r = get(addr, "/api/streams/camera1/frame").await;
        match r.status {
            200 => break r,
            204 => assert_eq!(r.body.len(), 0),
            s => panic!("status {s}: {}", String::from_utf8_lossy(&r.body)),
        }
        assert!(Instant::now() < deadline, "no frame");
    };
    assert_eq!(frame.header("x-frame-width"), "160");
    assert_eq!(frame.body.len(), 160 * 120 * 3);
    let stats = get(addr, "/api/streams/camera1/stats").await.json();
    assert_eq!(stats["stream_id"], "camera1");
    assert_eq!(stats["width"], 160);
    assert!(stats["fps"].as_f64().is_some());
    assert!(stats["declared_fps"].as_f64().is_some(), "{stats}");
    // Unknown stream: 404 JSON everywhere.
    for p in [
        "/api/streams/nope/stats",
        "/api/streams/nope/frame",
        "/api/streams/nope/snapshot.jpg",
        "/api/streams/nope/mjpeg",
        "/api/streams/nope",
    ] {
        let r = get(addr, p).await;
        assert_eq!(r.status, 404, "{p}");
        assert!(r.error().contains("nope"), "{p}: {}", r.error());
    }
    let r = request(addr, "DELETE", "/api/streams/nope", &[], b"").await;
    assert_eq!(r.status, 404);
    let r = request(addr, "DELETE", "/api/streams/nope/force", &[], b"").await;
    assert_eq!(r.status, 404);
    // Stop: this test polled /frame a moment ago, so it still counts as a
    // client (HTTP pollers count for 5 s): 409, then /force.
    let r = request(addr, "DELETE", "/api/streams/camera1", &[], b"").await;
    assert_eq!(r.status, 409, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.json()["client_count"].as_u64().unwrap() >= 1);
    assert_eq!(get(addr, "/api/streams").await.json()["count"], 1);
    let r = request(addr, "DELETE", "/api/streams/camera1/force", &[], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(get(addr, "/api/streams").await.json()["count"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_is_required_over_tcp() {
    let broker = demo_broker(&[]);
    let gw = Gateway::with_token(&broker.socket, "s3cret");
    let addr = gw.addr;
    for p in [
        "/api/streams",
        "/api/streams/demo/frame",
        "/api/streams/demo/mjpeg",
        "/api/streams/demo/stats",
        "/metrics",
        "/ws/demo",
    ] {
        let r = get(addr, p).await;
        assert_eq!(r.status, 401, "{p}");
        assert!(r.error().contains("token"));
    }
    let r = request(
        addr,
        "GET",
        "/api/streams/demo/frame",
        &[("Authorization", "Bearer s3cret")],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    let r = get(addr, "/api/streams/demo/snapshot.jpg?token=s3cret").await;
    assert_eq!(r.status, 200);
    assert_eq!(get(addr, "/healthz").await.status, 200);
    // WebSocket: refused without, works with ?token=.
    match tokio_tungstenite::connect_async(gw.ws_url("/ws/demo")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("expected 401, got {other:?}"),
    }
    let mut ws = ws_connect(&gw.ws_url("/ws/demo?token=s3cret")).await;
    assert_eq!(next_binary(&mut ws).await.len(), 640 * 480 * 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_rtsp_camera_through_the_gateway() {
    let cam = Camera::start(320, 240, 30, "smpte").expect("RTSP camera (scripts/setup.sh --test)");
    let broker = Broker::start(&[]).unwrap();
    let gw = Gateway::start(&broker.socket);
    let body = format!(
        r#"{{"stream_id": "door", "rtsp_url": "{}", "width": 320, "height": 240}}"#,
        cam.url
    );
    let r = request(gw.addr, "POST", "/api/streams", &[], body.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let deadline = Instant::now() + Duration::from_secs(20);
    let frame = loop {
        let r = get(gw.addr, "/api/streams/door/frame").await;
        if r.status == 200 {
            break r;
        }
        assert!(matches!(r.status, 204 | 503), "{}", r.status);
        assert!(Instant::now() < deadline, "no frame from the camera");
    };
    assert_eq!(frame.body.len(), 320 * 240 * 3);
    let close = |a: [u8; 3], b: [u8; 3]| {
        a.iter()
            .zip(b)
            .all(|(x, y)| (*x as i32 - y as i32).abs() <= 40)
    };
    let bars = sample_bars(&frame.body, 320, 240);
    for (got, want) in bars.iter().zip(SMPTE_BARS_BGR) {
        assert!(close(*got, want), "raw bars {bars:?}");
    }
    // The JPEG has the same bars, in BGR order once decoded.
    let r = get(gw.addr, "/api/streams/door/snapshot.jpg").await;
    assert_eq!(r.status, 200);
    let (w, h, px) = decode_bgr(&r.body);
    assert_eq!((w, h), (320, 240));
    let bars = sample_bars(&px, 320, 240);
    for (got, want) in bars.iter().zip(SMPTE_BARS_BGR) {
        assert!(close(*got, want), "JPEG bars {bars:?}");
    }
    // WebSocket raw from the camera.
    let mut ws = ws_connect(&gw.ws_url("/ws/door")).await;
    assert_eq!(next_binary(&mut ws).await.len(), 320 * 240 * 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_is_503_then_the_gateway_recovers() {
    let dir = framebroker_tests::TempDir::new("gwout").unwrap();
    let socket = dir.path().join("broker.sock");
    let prefix = format!("{}-", framebroker_tests::unique("gwo"));
    let spawn = || {
        std::process::Command::new(framebroker_tests::broker_bin())
            .args(["serve", "--socket"])
            .arg(&socket)
            .args([
                "--shm-prefix",
                &prefix,
                "--stream",
                &format!("demo={TESTSRC}"),
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("broker binary (cargo build --workspace --bins)")
    };
    let wait_up = || {
        framebroker_tests::wait_for(Duration::from_secs(10), || {
            framebroker_client::Client::connect_to(&socket).ok()
        })
        .expect("broker up")
    };
    /// Kills the broker it holds and removes the prefix's segments, even when
    /// the test fails half-way.
    struct Cleanup {
        child: Option<std::process::Child>,
        prefix: String,
    }
    impl Drop for Cleanup {
        fn drop(&mut self) {
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            for s in framebroker_proto::shm::list(&self.prefix) {
                let _ = framebroker_proto::shm::unlink(&s);
            }
        }
    }
    let mut guard = Cleanup {
        child: Some(spawn()),
        prefix: prefix.clone(),
    };
    wait_up();
    let gw = Gateway::start(&socket);
    let addr = gw.addr;
    assert_eq!(get(addr, "/api/streams").await.status, 200);
    let mut ws = ws_connect(&gw.ws_url("/ws/demo")).await;
    next_binary(&mut ws).await;
    let health = get(addr, "/healthz").await.json();
    assert_eq!(health["broker_reachable"], true);

    // The broker dies.
    let mut child = guard.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let r = get(addr, "/api/streams").await;
    assert_eq!(r.status, 503);
    assert!(r.error().contains("broker"), "{}", r.error());
    // Frames stop within a few seconds (the reader notices the missing heartbeat
    // within a second, finds the broker gone, and the feed ends with a 503).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = get(addr, "/api/streams/demo/frame").await;
        if r.status == 503 {
            assert!(r.error().contains("broker"), "{}", r.error());
            break;
        }
        assert_eq!(r.status, 200);
        assert!(
            Instant::now() < deadline,
            "still serving frames of a dead broker"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        get(addr, "/healthz").await.json()["broker_reachable"],
        false
    );
    // The open socket is closed with a reason (1011) within a few seconds.
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("close within 10 s")
        {
            Some(Ok(Message::Close(c))) => break c.expect("close frame with code"),
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(u16::from(close.code), 1011, "{}", close.reason);

    // It comes back (same socket): the gateway reconnects by itself.
    guard.child = Some(spawn());
    wait_up();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = get(addr, "/api/streams/demo/frame").await;
        if r.status == 200 {
            assert_eq!(r.body.len(), 640 * 480 * 3);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery: {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get(addr, "/api/streams").await.status, 200);
    let mut ws = ws_connect(&gw.ws_url("/ws/demo")).await;
    next_binary(&mut ws).await;
    ws.send(Message::Close(None)).await.ok();
    drop(gw);
    let mut child = guard.child.take().unwrap();
    nix_kill(child.id()).unwrap();
    child.wait().unwrap();
    drop(guard);
    assert!(framebroker_proto::shm::list(&prefix).is_empty());
}

fn nix_kill(pid: u32) -> std::io::Result<()> {
    let status = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other("kill failed"))
    }
}

#[test]
fn binary_refuses_a_public_address_without_a_token() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_framebroker-gateway"))
        .args(["--listen", "0.0.0.0:0", "--socket", "/nonexistent.sock"])
        .env_remove("FRAMEBROKER_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to listen on 0.0.0.0:0 without a token"),
        "{err}"
    );
}

#[test]
fn binary_serves_and_stops_on_sigterm() {
    use std::io::BufRead;
    // A free port (bind, read, release).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_framebroker-gateway"))
        .args(["--socket", "/nonexistent.sock", "--token", "t"])
        .env("PORT", port.to_string())
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let line = lines.next().unwrap().unwrap();
    assert!(
        line.contains("listening") && line.contains(&format!("127.0.0.1:{port}")),
        "{line}"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let r = rt.block_on(get(addr, "/api/streams"));
    assert_eq!(r.status, 401);
    let r = rt.block_on(request(
        addr,
        "GET",
        "/api/streams",
        &[("Authorization", "Bearer t")],
        b"",
    ));
    assert_eq!(r.status, 503);
    nix_kill(child.id()).unwrap();
    let start = Instant::now();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_and_encoder_stop_when_nobody_watches() {
    let broker = demo_broker(&[]);
    let client = broker.client();
    // The test gateway stops readers after 2 s without subscribers.
    let gw = Gateway::start(&broker.socket);
    let readers = |c: &framebroker_client::Client| c.stats("demo").unwrap().info.readers;
    assert_eq!(
        readers(&client),
        0,
        "nobody reads before a subscriber comes"
    );
    let mut ws = ws_connect(&gw.ws_url("/ws/demo?format=jpeg")).await;
    next_binary(&mut ws).await;
    let g = get(gw.addr, "/api/streams/demo/stats").await.json();
    assert_eq!(g["gateway"]["reading"], true);
    assert_eq!(g["readers"], 1, "one reader session for the gateway");
    // More subscribers: still one reader session, one encoder.
    let mut more = Vec::new();
    for _ in 0..3 {
        let mut w = ws_connect(&gw.ws_url("/ws/demo?format=jpeg")).await;
        next_binary(&mut w).await;
        more.push(w);
    }
    assert_eq!(readers(&client), 1);
    ws.close(None).await.ok();
    for mut w in more {
        w.close(None).await.ok();
    }
    drop(ws);
    // Gone within the idle time (2 s) plus a poll.
    let stopped = framebroker_tests::wait_for(Duration::from_secs(6), || {
        (readers(&client) == 0).then_some(())
    });
    assert!(
        stopped.is_some(),
        "the gateway still reads a stream nobody watches"
    );
    let g = get(gw.addr, "/api/streams/demo/stats").await.json()["gateway"].clone();
    assert_eq!(g["reading"], false);
    assert_eq!(g["ws_clients"], 0);
    let encoded = g["jpeg_encoded"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let g = get(gw.addr, "/api/streams/demo/stats").await.json()["gateway"].clone();
    assert_eq!(
        g["jpeg_encoded"].as_u64().unwrap(),
        encoded,
        "the encoder stopped too"
    );
    // And it comes back on demand.
    let r = get(gw.addr, "/api/streams/demo/frame").await;
    assert_eq!(r.status, 200);
    assert_eq!(readers(&client), 1);
}
