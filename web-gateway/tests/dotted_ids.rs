//! Stream ids with dots (`camera.1`) through the gateway's routes, with the real
//! broker binary and its ffmpeg test source; ids the rule refuses (a leading dot,
//! `..`) get a clear 400 and change nothing.
//!
//! Needs `cargo build --workspace --bins` first (the broker binary).

mod common;

use common::*;
use framebroker_tests::Broker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dotted_id_works_on_every_read_route() {
    let stream = format!("camera.1={TESTSRC}");
    let broker = Broker::start(&["--stream", stream.as_str()])
        .expect("broker starts (cargo build --workspace --bins first)");
    let rec = Recorder::start(broker.client(), "camera.1");
    let gw = Gateway::start(&broker.socket);

    let r = get(gw.addr, "/api/streams/camera.1/frame").await;
    assert_eq!(r.status, 200, "{}", r.error());
    assert_eq!(r.body.len(), 640 * 480 * 3);
    let seen = rec.frame(r.header_u64("x-frame-number"));
    assert!(r.body == *seen.data, "the bytes of the ring of camera.1");

    let r = get(gw.addr, "/api/streams/camera.1").await;
    assert_eq!(r.status, 200, "{}", r.error());
    assert_eq!(r.json()["stream_id"], "camera.1");
    let r = get(gw.addr, "/api/streams/camera.1/stats").await;
    assert_eq!(r.status, 200, "{}", r.error());
    let listed = get(gw.addr, "/api/streams").await.json();
    assert!(
        listed.to_string().contains("\"camera.1\""),
        "listed: {listed}"
    );

    // The segment is named after the id and its generation, read back unambiguously.
    let segments = broker.segments();
    assert_eq!(segments.len(), 1, "{segments:?}");
    let (id, generation) =
        framebroker_proto::naming::parse_segment_name(&broker.prefix, &segments[0])
            .expect("a segment name of this broker");
    assert_eq!(id, "camera.1");
    assert!(generation > 0);

    // Refused ids: 400 with the rule, and nothing started.
    for (path, body) in [
        ("/api/streams/.hidden/frame", None),
        ("/api/streams/a..b/stats", None),
        (
            "/api/streams",
            Some(format!(r#"{{"stream_id":"a..b","rtsp_url":"{TESTSRC}"}}"#)),
        ),
        (
            "/api/streams",
            Some(format!(r#"{{"stream_id":".cam","rtsp_url":"{TESTSRC}"}}"#)),
        ),
    ] {
        let r = match &body {
            None => get(gw.addr, path).await,
            Some(b) => {
                request(
                    gw.addr,
                    "POST",
                    path,
                    &[("content-type", "application/json")],
                    b.as_bytes(),
                )
                .await
            }
        };
        assert_eq!(r.status, 400, "{path} {body:?}: {}", r.error());
        assert!(
            r.error().contains("'.'") || r.error().contains("'..'"),
            "{path}: {}",
            r.error()
        );
    }
    assert_eq!(broker.client().list().unwrap().len(), 1, "nothing started");
}
