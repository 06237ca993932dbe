//! Golden files that keep other implementations (the Python client) byte-for-byte
//! identical to this one:
//! - `proto/testdata/golden.json`: control messages, each as its serde JSON value
//!   and the hex of its encoded frame body;
//! - `proto/testdata/layout.json`: every layout constant and offset.
//!
//! The test regenerates both and compares. After an intended change, run with
//! `FRAMEBROKER_BLESS=1` to rewrite them (and bump the version that changed).

use framebroker_proto::control::{
    self, Attachment, ErrorCode, HwAccel, Request, Response, StartRequest, StreamInfo, StreamStats,
    Transport, VariantRequest,
};
use framebroker_proto::layout::{self, offsets, PixelFormat, StreamState};
use serde_json::{json, Value};

fn info() -> StreamInfo {
    StreamInfo {
        id: "cam-1".into(),
        url: "rtsp://***@10.0.0.5:554/s1".into(),
        state: StreamState::Live,
        width: 640,
        height: 480,
        pixel_format: PixelFormat::Bgr24,
        generation: 3,
        readers: 2,
        on_demand: false,
        parent: None,
        declared_fps: 30.0,
    }
}

fn requests() -> Vec<(&'static str, Request)> {
    let mut full = StartRequest::new("cam-1", "rtsp://user:pw@10.0.0.5:554/s1");
    full.width = Some(640);
    full.height = Some(480);
    full.pixel_format = PixelFormat::Gray;
    full.ring_slots = Some(6);
    full.transport = Transport::Udp;
    full.allow_duplicate_url = true;
    full.on_demand = true;
    full.hwaccel = Some(HwAccel::Vaapi);
    full.variants = vec![
        VariantRequest::new("cam-1-motion", Some((320, 240)), PixelFormat::Gray),
        VariantRequest::new("cam-1-rgb", None, PixelFormat::Rgb24),
    ];
    vec![
        ("hello", control::hello("framebroker-py/0.1.0")),
        (
            "start_defaults",
            Request::Start(StartRequest::new(
                "cam-1",
                "testsrc://?size=320x240&rate=15",
            )),
        ),
        ("start_full", Request::Start(full)),
        ("stop", Request::Stop { id: "cam-1".into() }),
        ("list", Request::List),
        ("stats", Request::Stats { id: "cam-1".into() }),
        ("attach", Request::Attach { id: "cam-1".into() }),
        ("detach", Request::Detach { id: "cam-1".into() }),
        ("reload", Request::Reload),
    ]
}

fn responses() -> Vec<(&'static str, Response)> {
    vec![
        (
            "hello",
            Response::Hello {
                protocol: control::PROTOCOL_VERSION,
                broker: "framebroker 0.1.0".into(),
            },
        ),
        (
            "started",
            Response::Started {
                stream: info(),
                created: true,
            },
        ),
        ("stopped", Response::Stopped { id: "cam-1".into() }),
        ("list_empty", Response::List { streams: vec![] }),
        (
            "list",
            Response::List {
                streams: vec![
                    info(),
                    StreamInfo {
                        id: "b".into(),
                        state: StreamState::Starting,
                        width: 0,
                        height: 0,
                        on_demand: true,
                        declared_fps: 0.0,
                        ..info()
                    },
                    StreamInfo {
                        id: "cam-1-motion".into(),
                        width: 320,
                        height: 240,
                        pixel_format: PixelFormat::Gray,
                        parent: Some("cam-1".into()),
                        declared_fps: 29.97,
                        ..info()
                    },
                ],
            },
        ),
        (
            "stats",
            Response::Stats {
                stats: StreamStats {
                    info: info(),
                    fps: 29.97,
                    frames_written: 123_456,
                    frames_dropped: 7,
                    reconnects: 1,
                    last_error: Some("connection refused".into()),
                    uptime_ms: 3_600_000,
                    bytes_per_frame: 921_600,
                    ffmpeg_pid: 4242,
                    decoder: "software (vaapi unavailable: Device creation failed)".into(),
                },
            },
        ),
        (
            "attached",
            Response::Attached(Attachment {
                id: "cam-1".into(),
                segment: "/fb-cam-1.3".into(),
                generation: 3,
                width: 640,
                height: 480,
                pixel_format: PixelFormat::Bgr24,
                frame_bytes: 921_600,
                slot_count: 4,
                segment_size: 3_690_752,
            }),
        ),
        ("detached", Response::Detached { id: "cam-1".into() }),
        (
            "error",
            Response::Error {
                code: ErrorCode::NotFound,
                message: "no stream \"x\"".into(),
            },
        ),
        (
            "reloaded",
            Response::Reloaded {
                summary: "started 1, stopped 0, restarted 0".into(),
            },
        ),
    ]
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn entry<T: serde::Serialize>(kind: &str, name: &str, v: &T) -> Value {
    json!({ "kind": kind, "name": name, "value": serde_json::to_value(v).unwrap(), "hex": hex(&control::encode(v).unwrap()) })
}

fn check_or_bless(file: &str, value: Value) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(file);
    let text = serde_json::to_string_pretty(&value).unwrap() + "\n";
    if std::env::var_os("FRAMEBROKER_BLESS").is_some() {
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let stored = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with FRAMEBROKER_BLESS=1 to create it)",
            path.display()
        )
    });
    assert!(stored == text, "{} is out of date with the code: if the change is intended, bump the version and rerun with FRAMEBROKER_BLESS=1", path.display());
}

#[test]
fn control_messages_match_golden_bytes() {
    let mut all: Vec<Value> = requests()
        .iter()
        .map(|(n, r)| entry("request", n, r))
        .collect();
    all.extend(responses().iter().map(|(n, r)| entry("response", n, r)));
    // Every vector decodes back to its value.
    for (_, r) in requests() {
        assert_eq!(
            control::decode::<Request>(&control::encode(&r).unwrap()).unwrap(),
            r
        );
    }
    for (_, r) in responses() {
        assert_eq!(
            control::decode::<Response>(&control::encode(&r).unwrap()).unwrap(),
            r
        );
    }
    check_or_bless(
        "golden.json",
        json!({
            "protocol_version": control::PROTOCOL_VERSION,
            "protocol_magic": control::PROTOCOL_MAGIC,
            "max_frame": control::MAX_FRAME,
            // `HwAccel` by wire index (the request carries the index).
            "hwaccels": HwAccel::ALL.map(HwAccel::name),
            "vectors": all,
        }),
    );
}

#[test]
fn stream_ids_and_redaction_match_golden() {
    use framebroker_proto::naming::{redact_url, stream_id_for_url};
    let urls = [
        "rtsp://admin:secret@10.0.0.1:554/stream1?x=1",
        "rtsp://127.0.0.1:8554/cam",
        "testsrc://?size=640x480&rate=30",
        "testsrc://",
        "rtsps://user:p@ss@cam.example.com/live/ch01#frag",
        "rtsp://[::1]:8554/a/b.sdp",
        "rtsp://h\u{e9}llo.local/cam\u{e9}ra",
        "no-scheme-at-all",
        "",
        "rtsp://host/____x____",
        "rtsp://cam/x?user=admin&password=hunter2&channel=1",
        "rtsp://averyveryveryveryverylonghostname.example.com:554/some/deep/path/to/the/stream/main",
    ];
    let vectors: Vec<Value> = urls
        .iter()
        .map(|u| json!({ "url": u, "stream_id": stream_id_for_url(u), "redacted": redact_url(u) }))
        .collect();
    // Stream ids: which are valid, and the segment name of each valid one
    // (generation 7), which must split back into the id and generation at its
    // last dot.
    use framebroker_proto::naming::{parse_segment_name, segment_name, validate_stream_id};
    let ids = [
        "cam-1",
        "camera.1",
        "a.b.c",
        "cam.",
        "Front_Door",
        ".hidden",
        ".",
        "..",
        "a..b",
        "a/b",
        "../etc",
        "a b",
        "",
        "x".repeat(64).leak(),
        "x".repeat(65).leak(),
    ];
    let ids: Vec<Value> = ids
        .iter()
        .map(|id| {
            let valid = validate_stream_id(id).is_ok();
            let segment = valid.then(|| segment_name("fb-", id, 7).unwrap());
            if let Some(n) = &segment {
                assert_eq!(parse_segment_name("fb-", n), Some((*id, 7)));
            }
            json!({ "id": id, "valid": valid, "segment": segment })
        })
        .collect();
    check_or_bless("naming.json", json!({ "vectors": vectors, "ids": ids }));
}

#[test]
fn layout_constants_match_golden() {
    let offs: serde_json::Map<String, Value> = offsets::ALL
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    let formats: serde_json::Map<String, Value> = PixelFormat::ALL
        .iter()
        .map(|f| {
            (
                f.name().to_string(),
                json!({ "code": *f as u32, "bytes_640x480": f.frame_bytes(640, 480) }),
            )
        })
        .collect();
    let states: serde_json::Map<String, Value> = [
        StreamState::Starting,
        StreamState::Live,
        StreamState::Reconnecting,
        StreamState::Stopped,
        StreamState::Failed,
    ]
    .iter()
    .map(|s| (s.name().to_string(), json!(*s as u32)))
    .collect();
    check_or_bless(
        "layout.json",
        json!({
            "magic": layout::MAGIC,
            "layout_version": layout::LAYOUT_VERSION,
            "header_page": layout::HEADER_PAGE,
            "slot_header": layout::SLOT_HEADER,
            "payload_align": layout::PAYLOAD_ALIGN,
            "min_slots": layout::MIN_SLOTS,
            "max_slots": layout::MAX_SLOTS,
            "max_dimension": layout::MAX_DIMENSION,
            "flag_checksum": layout::FLAG_CHECKSUM,
            "pts_unknown": layout::PTS_UNKNOWN,
            "heartbeat_interval_ms": layout::HEARTBEAT_INTERVAL_MS,
            "heartbeat_stale_ms": layout::HEARTBEAT_STALE_MS,
            "reader_slice_ms": layout::READER_SLICE_MS,
            "slot_stride_640x480_bgr24": layout::slot_stride(921_600),
            "offsets": offs,
            "pixel_formats": formats,
            "states": states,
        }),
    );
}
