//! Credentials in a camera URL never leave the gateway: a stream started with
//! `rtsp://admin:s3cr3tpw@…` (and one with `?user=admin&password=s3cr3tpw`)
//! through `POST /api/streams`, then every answer
//! about it (the POST answer, the list, the stream, its stats, `/metrics` with
//! its labels, frames, snapshots, MJPEG and WebSocket attempts, error bodies of
//! conflicts and refusals, the stop) and the gateway's own log, at debug level,
//! are searched for the password.
//!
//! The real broker and the real gateway binary (so that its log is its own).
//! Needs `cargo build --workspace --bins` first.

mod common;

use std::time::{Duration, Instant};

use common::*;
use framebroker_tests::{Broker, TempDir};
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

const PASSWORD: &str = "s3cr3tpw";
/// Nothing listens on port 1: ffmpeg fails, the broker records why.
const URL: &str = "rtsp://admin:s3cr3tpw@127.0.0.1:1/x";
const REDACTED: &str = "rtsp://***@127.0.0.1:1/x";
/// Cheap cameras take credentials in the query.
const URL_Q: &str = "rtsp://127.0.0.1:1/q?user=admin&password=s3cr3tpw&channel=1";
const REDACTED_Q: &str = "rtsp://127.0.0.1:1/q?user=***&password=***&channel=1";

/// Every answer seen, with what was asked.
#[derive(Default)]
struct Seen(Vec<(String, u16, String)>);

impl Seen {
    fn add(&mut self, what: &str, r: &Reply) -> String {
        let mut text = String::from_utf8_lossy(&r.body).to_string();
        // Headers count too (an error could hide in one).
        for (k, v) in &r.headers {
            text.push_str(&format!("\n{k}: {v}"));
        }
        self.0.push((what.to_string(), r.status, text.clone()));
        text
    }
    fn add_text(&mut self, what: &str, text: String) {
        self.0.push((what.to_string(), 0, text));
    }
}

async fn post(addr: std::net::SocketAddr, body: &str) -> Reply {
    request(
        addr,
        "POST",
        "/api/streams",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_in_a_camera_url_appears_nowhere() {
    let broker = Broker::start(&[]).expect("broker (cargo build --workspace --bins)");
    let dir = TempDir::new("gwcred").unwrap();
    let mut gw = GatewayProcess::start(
        &broker.socket,
        &["--idle-ms", "1000"],
        "debug",
        &dir.path().join("gateway.log"),
    );
    let addr = gw.addr;
    let mut seen = Seen::default();

    // Start it: 200, the URL comes back redacted.
    let start =
        format!(r#"{{"stream_id": "cam", "rtsp_url": "{URL}", "width": 320, "height": 240}}"#);
    let r = post(addr, &start).await;
    let text = seen.add("POST (created)", &r);
    assert_eq!(r.status, 200, "{text}");
    assert_eq!(r.json()["created"], true, "{text}");
    assert_eq!(r.json()["rtsp_url"], REDACTED, "{text}");
    let r = post(
        addr,
        &format!(r#"{{"stream_id": "camq", "rtsp_url": "{URL_Q}"}}"#),
    )
    .await;
    let text = seen.add("POST (created, query credentials)", &r);
    assert_eq!(r.status, 200, "{text}");
    assert_eq!(r.json()["rtsp_url"], REDACTED_Q, "{text}");
    // Again: 200, already running.
    let r = post(addr, &start).await;
    seen.add("POST (again)", &r);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["rtsp_url"], REDACTED);
    // Error answers that concern such URLs.
    for (what, body, status) in [
        (
            "POST another URL under the id (409)",
            r#"{"stream_id": "cam", "rtsp_url": "rtsp://admin:s3cr3tpw@127.0.0.1:2/y"}"#,
            409,
        ),
        (
            "POST a forbidden scheme",
            r#"{"stream_id": "web", "rtsp_url": "http://admin:s3cr3tpw@127.0.0.1:1/x"}"#,
            400,
        ),
        (
            "POST a file URL",
            r#"{"stream_id": "f", "rtsp_url": "file://admin:s3cr3tpw@localhost/etc/passwd"}"#,
            400,
        ),
        (
            "POST a URL that starts with '-'",
            r#"{"stream_id": "dash", "rtsp_url": "-rtsp://admin:s3cr3tpw@127.0.0.1:1/x"}"#,
            400,
        ),
        (
            "POST a URL with a space",
            r#"{"stream_id": "sp", "rtsp_url": "rtsp://admin:s3cr3tpw@127.0.0.1:1/x y"}"#,
            400,
        ),
        (
            "POST an invalid id",
            r#"{"stream_id": "../cam", "rtsp_url": "rtsp://admin:s3cr3tpw@127.0.0.1:1/x"}"#,
            400,
        ),
        (
            "POST the URL as an id",
            r#"{"stream_id": "rtsp://admin:s3cr3tpw@127.0.0.1:1/x", "rtsp_url": "rtsp://h/x"}"#,
            400,
        ),
        (
            "POST a wrong type echoing the URL",
            r#"{"stream_id": "cam", "rtsp_url": "rtsp://admin:s3cr3tpw@127.0.0.1:1/x", "width": "rtsp://admin:s3cr3tpw@127.0.0.1:1/x"}"#,
            400,
        ),
        (
            "POST malformed JSON",
            r#"{"stream_id": "cam", "rtsp_url": "rtsp://admin:s3cr3tpw@127.0.0.1:1/x""#,
            400,
        ),
    ] {
        let r = post(addr, body).await;
        let text = seen.add(what, &r);
        assert_eq!(r.status, status, "{what}: {text}");
        r.error();
    }

    // The broker tries, fails, and says why in the stats (ffmpeg's error names
    // the URL).
    for (id, redacted) in [("cam", REDACTED), ("camq", REDACTED_Q)] {
        let deadline = Instant::now() + Duration::from_secs(30);
        let stats = loop {
            let r = get(addr, &format!("/api/streams/{id}/stats")).await;
            seen.add(&format!("GET {id} stats (waiting for last_error)"), &r);
            assert_eq!(r.status, 200);
            let v = r.json();
            if !v["last_error"].is_null() {
                break v;
            }
            assert!(Instant::now() < deadline, "no last_error after 30 s: {v}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        eprintln!(
            "stats of {id}: state {}, last_error {}",
            stats["state"], stats["last_error"]
        );
        assert_eq!(stats["rtsp_url"], redacted);
    }

    for path in [
        "/api/streams",
        "/api/streams/cam",
        "/api/streams/cam/stats",
        "/api/streams/camq",
        "/api/streams/camq/stats",
        "/metrics",
        "/healthz",
        "/api/streams/cam/frame",
        "/api/streams/cam/frame?format=jpeg",
        "/api/streams/cam/snapshot.jpg",
        "/api/streams/camq/snapshot.jpg?quality=50",
    ] {
        let r = get(addr, path).await;
        seen.add(&format!("GET {path}"), &r);
    }
    let list = get(addr, "/api/streams").await.json();
    let urls: Vec<&str> = list["streams"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["rtsp_url"].as_str())
        .collect();
    assert!(
        urls.contains(&REDACTED) && urls.contains(&REDACTED_Q),
        "{urls:?}"
    );
    assert_eq!(
        get(addr, "/api/streams/cam").await.json()["rtsp_url"],
        REDACTED
    );
    // MJPEG: the head and whatever comes within a second.
    let mut m = Mjpeg::open(addr, "/api/streams/cam/mjpeg").await;
    let head = format!("{} {:?}", m.status, m.headers);
    let part = tokio::time::timeout(Duration::from_secs(1), m.next_part()).await;
    seen.add_text("GET mjpeg", format!("{head} {}", part.is_ok()));
    drop(m);
    // WebSocket: whatever it says within 3 s (frames or a close reason).
    match tokio_tungstenite::connect_async(gw.ws_url("/ws/cam")).await {
        Ok((mut ws, _)) => {
            let mut said = String::new();
            let until = tokio::time::Instant::now() + Duration::from_secs(3);
            while let Ok(Some(m)) = tokio::time::timeout_at(until, ws.next()).await {
                match m {
                    Ok(Message::Close(c)) => said.push_str(&format!("close {c:?}")),
                    Ok(Message::Text(t)) => said.push_str(&t),
                    Ok(_) => {}
                    Err(e) => said.push_str(&e.to_string()),
                }
            }
            seen.add_text("WS /ws/cam", said);
        }
        Err(e) => seen.add_text("WS /ws/cam (refused)", format!("{e:?}")),
    }
    // Stop them (whoever still counts as watching), and ask again.
    for id in ["cam", "camq"] {
        let r = request(
            addr,
            "DELETE",
            &format!("/api/streams/{id}/force"),
            &[],
            b"",
        )
        .await;
        seen.add(&format!("DELETE {id}"), &r);
        assert_eq!(r.status, 200);
    }
    for path in ["/api/streams/cam", "/api/streams/cam/stats", "/api/streams"] {
        let r = get(addr, path).await;
        seen.add(&format!("GET {path} (stopped)"), &r);
    }

    // Nothing said the password.
    for (what, status, text) in &seen.0 {
        assert!(
            !text.contains(PASSWORD),
            "{what} ({status}) gave the password away: {text}"
        );
    }
    eprintln!("{} answers checked, none has the password", seen.0.len());
    // Nor did the gateway's log, which did log the (redacted) URL.
    gw.stop();
    let log = gw.log_text();
    assert!(
        log.contains(REDACTED) && log.contains(REDACTED_Q),
        "the starts were logged with the redacted URLs; log:\n{log}"
    );
    assert!(
        !log.contains(PASSWORD),
        "the gateway's log has the password:\n{}",
        log.lines()
            .filter(|l| l.contains(PASSWORD))
            .collect::<Vec<_>>()
            .join("\n")
    );
    eprintln!(
        "gateway log: {} lines at debug level, no password",
        log.lines().count()
    );
    // The broker's log is the broker's business, but say what it holds.
    let broker_log = broker.log_text();
    eprintln!(
        "broker log: {} lines, password {}",
        broker_log.lines().count(),
        if broker_log.contains(PASSWORD) {
            "PRESENT"
        } else {
            "absent"
        }
    );
}
