//! End-to-end: the real broker binary, the real ffmpeg, the real RTSP test camera
//! on 127.0.0.1, and readers in separate processes.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use framebroker_client::{StartRequest, StreamState};
use framebroker_proto::control::{self, ErrorCode, Request, Response};
use framebroker_tests::{
    decoders_of, processes_with_arg, wait_for, Broker, Camera, ReadRecord, SMPTE_BARS_BGR,
};

const READER: &str = env!("CARGO_BIN_EXE_fb-reader");

fn close(a: [u8; 3], b: [u8; 3], tol: i32) -> bool {
    a.iter()
        .zip(b)
        .all(|(x, y)| (*x as i32 - y as i32).abs() <= tol)
}

fn spawn_reader(broker: &Broker, stream: &str, count: u64, mode: &str) -> std::process::Child {
    Command::new(READER)
        .args([
            "--socket",
            broker.socket.to_str().unwrap(),
            "--stream",
            stream,
            "--count",
            &count.to_string(),
            "--mode",
            mode,
            "--sync-start",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fb-reader")
}

fn records(out: &[u8]) -> Vec<ReadRecord> {
    String::from_utf8_lossy(out)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn four_reader_processes_get_the_same_frames_from_one_ffmpeg() {
    let cam = Camera::start(320, 240, 30, "smpte").unwrap();
    let broker = Broker::start(&["--checksum"]).unwrap();
    let client = broker.client();
    let (info, created) = client.start(StartRequest::new("cam", &cam.url)).unwrap();
    assert!(created);
    assert_eq!(info.id, "cam");

    let mut readers: Vec<_> = (0..4)
        .map(|_| spawn_reader(&broker, "cam", 45, "next"))
        .collect();
    // Wait until all four are attached, then release them together.
    for r in &mut readers {
        let mut line = String::new();
        BufReader::new(r.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "attached", "reader failed: {}", {
            let mut e = String::new();
            r.stderr.as_mut().unwrap().read_to_string(&mut e).ok();
            e
        });
    }
    let stats = wait_for(Duration::from_secs(10), || {
        let s = client.stats("cam").unwrap();
        (s.info.state == StreamState::Live).then_some(s)
    })
    .expect("stream goes live");
    assert_eq!(stats.info.readers, 4, "the broker counts the four sessions");
    assert_eq!(
        (stats.info.width, stats.info.height),
        (320, 240),
        "native camera size"
    );
    for r in &mut readers {
        writeln!(r.stdin.as_mut().unwrap()).unwrap();
    }

    let ffmpegs = decoders_of(&cam.url);
    assert_eq!(
        ffmpegs.len(),
        1,
        "exactly one decoder pulls the camera: {ffmpegs:?}"
    );

    let outputs: Vec<Vec<ReadRecord>> = readers
        .into_iter()
        .map(|r| {
            let out = r.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "reader failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            records(&out.stdout)
        })
        .collect();
    let mut by_frame: BTreeMap<u64, HashSet<u32>> = BTreeMap::new();
    for recs in &outputs {
        assert_eq!(recs.len(), 45);
        for pair in recs.windows(2) {
            assert_eq!(
                pair[1].number,
                pair[0].number + 1 + pair[1].missed,
                "sequential numbering"
            );
        }
        let missed: u64 = recs.iter().map(|r| r.missed).sum();
        assert!(
            missed <= 2,
            "a reader that keeps up misses (almost) nothing; missed {missed}"
        );
        for r in recs {
            assert_eq!(
                r.crc, r.slot_crc,
                "frame {} torn or corrupted between broker and reader",
                r.number
            );
            for (i, (got, want)) in r.bars.iter().zip(SMPTE_BARS_BGR).enumerate() {
                assert!(
                    close(*got, want, 48),
                    "frame {} bar {i}: got {got:?}, want ~{want:?}",
                    r.number
                );
            }
            by_frame.entry(r.number).or_default().insert(r.crc);
        }
    }
    let shared = by_frame.values().filter(|c| !c.is_empty()).count();
    assert!(shared >= 40, "readers overlap on most frames");
    for (n, crcs) in &by_frame {
        assert_eq!(crcs.len(), 1, "frame {n} differs between readers");
    }
    // Detached on exit: the count returns to the truth.
    assert!(wait_for(Duration::from_secs(5), || (client
        .stats("cam")
        .unwrap()
        .info
        .readers
        == 0)
        .then_some(()))
    .is_some());
}

#[test]
fn same_url_is_one_stream_and_bad_requests_change_nothing() {
    let broker = Broker::start(&[]).unwrap();
    let c = broker.client();
    let url = "testsrc://?size=160x120&rate=10";
    let (a, created) = c.start(StartRequest::new("a", url)).unwrap();
    assert!(created);
    let (b, created) = c.start(StartRequest::new("b", url)).unwrap();
    assert!(
        created && b.id == "b",
        "same URL under another id is that id (on the running decode)"
    );
    assert_eq!(b.parent.as_deref(), Some(a.id.as_str()));
    let (again, created) = c.start(StartRequest::new("b", url)).unwrap();
    assert!(!created && again.id == "b", "asked again: the same stream");
    let mut dup = StartRequest::new("b2", url);
    dup.allow_duplicate_url = true;
    let (d, created) = c.start(dup).unwrap();
    assert!(
        created && d.parent.is_none(),
        "a duplicate when asked explicitly"
    );

    let before = c.list().unwrap();
    let bad: Vec<(StartRequest, ErrorCode)> = vec![
        (StartRequest::new("../x", url), ErrorCode::InvalidId),
        (StartRequest::new("", url), ErrorCode::InvalidId),
        (StartRequest::new("x".repeat(65), url), ErrorCode::InvalidId),
        (
            StartRequest::new("c", "file:///etc/passwd"),
            ErrorCode::InvalidUrl,
        ),
        (StartRequest::new("c", "concat:a|b"), ErrorCode::InvalidUrl),
        (StartRequest::new("c", "-i rtsp://x"), ErrorCode::InvalidUrl),
        (
            StartRequest::new("c", "http://127.0.0.1/x"),
            ErrorCode::InvalidUrl,
        ),
        (
            StartRequest {
                width: Some(0),
                height: Some(10),
                ..StartRequest::new("c", url)
            },
            ErrorCode::InvalidGeometry,
        ),
        (
            StartRequest {
                width: Some(8193),
                height: Some(10),
                ..StartRequest::new("c", url)
            },
            ErrorCode::InvalidGeometry,
        ),
        (
            StartRequest {
                width: Some(640),
                height: None,
                ..StartRequest::new("c", url)
            },
            ErrorCode::InvalidGeometry,
        ),
        (
            StartRequest {
                ring_slots: Some(2),
                ..StartRequest::new("c", url)
            },
            ErrorCode::InvalidGeometry,
        ),
        (
            StartRequest {
                ring_slots: Some(65),
                ..StartRequest::new("c", url)
            },
            ErrorCode::InvalidGeometry,
        ),
        (
            StartRequest::new("a", "testsrc://?size=320x240"),
            ErrorCode::AlreadyExists,
        ),
    ];
    for (req, code) in bad {
        let what = format!("{req:?}");
        let e = c.start(req).unwrap_err();
        assert_eq!(e.code(), Some(code), "{what}: {e}");
    }
    assert_eq!(
        c.stop("nope").unwrap_err().code(),
        Some(ErrorCode::NotFound)
    );
    assert_eq!(
        c.detach("a").unwrap_err().code(),
        Some(ErrorCode::NotAttached)
    );
    let after = c.list().unwrap();
    assert_eq!(
        before.iter().map(|s| &s.id).collect::<Vec<_>>(),
        after.iter().map(|s| &s.id).collect::<Vec<_>>()
    );
}

/// Raw bytes on the control socket: wrong version, oversized and garbage frames.
#[test]
fn hostile_control_frames_get_clear_errors() {
    use std::os::unix::net::UnixStream;
    let broker = Broker::start(&[]).unwrap();
    let frame = |req: &Request| {
        let mut v = Vec::new();
        control::write_frame(&mut v, req).unwrap();
        v
    };
    let answer = |s: &mut UnixStream| -> Option<Response> {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        control::read_frame::<Response>(s).ok().flatten()
    };

    // A future protocol version: a clear error, not a hang.
    let mut s = UnixStream::connect(&broker.socket).unwrap();
    s.write_all(&frame(&Request::Hello {
        magic: control::PROTOCOL_MAGIC,
        protocol: 99,
        client: "x".into(),
    }))
    .unwrap();
    match answer(&mut s) {
        Some(Response::Error {
            code: ErrorCode::UnsupportedVersion,
            message,
        }) => {
            assert!(message.contains("99"), "{message}");
            // The broker's own version, in the form every client reads it from.
            assert_eq!(
                control::refused_by_version(&message),
                Some(control::PROTOCOL_VERSION),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }

    // No hello first.
    let mut s = UnixStream::connect(&broker.socket).unwrap();
    s.write_all(&frame(&Request::List)).unwrap();
    assert!(matches!(
        answer(&mut s),
        Some(Response::Error {
            code: ErrorCode::BadRequest,
            ..
        })
    ));

    // An oversized length prefix after a good hello: refused, connection closed.
    let mut s = UnixStream::connect(&broker.socket).unwrap();
    s.write_all(&frame(&control::hello("t"))).unwrap();
    assert!(matches!(answer(&mut s), Some(Response::Hello { .. })));
    s.write_all(&u32::MAX.to_le_bytes()).unwrap();
    match answer(&mut s) {
        Some(Response::Error {
            code: ErrorCode::BadRequest,
            message,
        }) => assert!(message.contains("exceeds"), "{message}"),
        other => panic!("{other:?}"),
    }

    // Garbage body.
    let mut s = UnixStream::connect(&broker.socket).unwrap();
    s.write_all(&frame(&control::hello("t"))).unwrap();
    answer(&mut s);
    s.write_all(&[5, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff])
        .unwrap();
    assert!(matches!(
        answer(&mut s),
        Some(Response::Error {
            code: ErrorCode::BadRequest,
            ..
        })
    ));

    // The broker is unharmed.
    assert!(broker.client().list().unwrap().is_empty());
}

#[test]
fn sessions_that_die_release_their_readers() {
    let broker = Broker::start(&[]).unwrap();
    let c = broker.client();
    c.start(StartRequest::new("t", "testsrc://?size=160x120&rate=15"))
        .unwrap();
    let mut r = spawn_reader(&broker, "t", 1000, "latest");
    let mut line = String::new();
    BufReader::new(r.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(c.stats("t").unwrap().info.readers, 1);
    r.kill().unwrap(); // SIGKILL mid-session
    r.wait().unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || (c
            .stats("t")
            .unwrap()
            .info
            .readers
            == 0)
            .then_some(()))
        .is_some(),
        "reader count returns to 0 after the reader process dies"
    );
    // An in-process reader keeps working meanwhile.
    let mut rd = c.attach("t").unwrap();
    let f1 = rd.latest(Duration::from_secs(5)).unwrap();
    let f2 = rd.latest(Duration::from_secs(5)).unwrap();
    assert!(f2.meta.number > f1.meta.number);
    assert_eq!(f1.data.len(), 160 * 120 * 3);
}

#[test]
fn camera_that_drops_is_reconnected_into_the_same_segment() {
    let mut cam = Camera::start(160, 120, 15, "smpte").unwrap();
    let broker =
        Broker::start(&["--backoff-initial-ms", "200", "--backoff-max-ms", "1000"]).unwrap();
    let c = broker.client();
    c.start(StartRequest::new("cam", &cam.url)).unwrap();
    let mut reader = c.attach_wait("cam", Duration::from_secs(20)).unwrap();
    let first = reader.latest(Duration::from_secs(10)).unwrap();
    let generation = reader.attachment().generation;

    cam.kill();
    let saw = wait_for(Duration::from_secs(10), || {
        (reader.state() == StreamState::Reconnecting).then_some(())
    });
    assert!(
        saw.is_some(),
        "readers see `reconnecting`, state is {:?}",
        reader.state()
    );
    let before = reader.last_frame();
    let t = Instant::now();
    cam.restart().unwrap();
    // The same reader, without re-attaching, gets new frames.
    let after = loop {
        match reader.latest(Duration::from_secs(1)) {
            Ok(f) if f.meta.number > before => break f,
            Ok(_) => continue, // published before the camera died
            Err(e) if e.is_timeout() && t.elapsed() < Duration::from_secs(30) => continue,
            Err(e) => panic!("no frame after the camera returned: {e}"),
        }
    };
    eprintln!("camera back → first frame: {:?}", t.elapsed());
    assert!(after.meta.number > first.meta.number);
    assert!(wait_for(Duration::from_secs(2), || (reader.state()
        == StreamState::Live)
        .then_some(()))
    .is_some());
    let stats = c.stats("cam").unwrap();
    assert!(stats.reconnects >= 1);
    assert_eq!(stats.info.generation, generation, "same segment");
}

#[test]
fn credentials_never_leave_the_broker() {
    let broker =
        Broker::start(&["--backoff-initial-ms", "100", "--backoff-max-ms", "200"]).unwrap();
    let c = broker.client();
    // Nothing listens on port 1: ffmpeg fails, with the URL in its error line.
    let url = "rtsp://admin:s3cr3tpw@127.0.0.1:1/stream";
    let (info, _) = c.start(StartRequest::new("cam", url)).unwrap();
    assert!(!info.url.contains("s3cr3tpw"), "{}", info.url);
    let stats = wait_for(Duration::from_secs(15), || {
        let s = c.stats("cam").unwrap();
        (s.reconnects >= 2).then_some(s)
    })
    .expect("the broker retries");
    let text = format!("{:?} {:?}", c.list().unwrap(), stats);
    assert!(stats.last_error.is_some());
    assert!(!text.contains("s3cr3tpw"), "{text}");
    let e = c
        .start(StartRequest::new(
            "cam",
            "rtsp://admin:s3cr3tpw@127.0.0.1:2/x",
        ))
        .unwrap_err();
    assert!(!e.to_string().contains("s3cr3tpw"), "{e}");
    // Credentials in the query string, common on cheap cameras.
    c.start(StartRequest::new(
        "q",
        "rtsp://127.0.0.1:1/x?user=admin&password=qu3rypw&channel=1",
    ))
    .unwrap();
    let q = wait_for(Duration::from_secs(15), || {
        let s = c.stats("q").unwrap();
        (s.reconnects >= 2).then_some(s)
    })
    .expect("the broker retries");
    let text = format!("{:?} {:?}", c.list().unwrap(), q);
    assert!(!text.contains("qu3rypw"), "{text}");
    let log = broker.log_text();
    assert!(
        log.contains("127.0.0.1:1"),
        "the log talks about the stream"
    );
    assert!(!log.contains("s3cr3tpw"), "password in the broker log");
    assert!(
        !log.contains("qu3rypw"),
        "query-string password in the broker log"
    );
}

#[test]
fn sigterm_cleans_up_segments_socket_and_ffmpeg() {
    let mut broker = Broker::start(&[]).unwrap();
    let c = broker.client();
    let url = "testsrc://?size=160x120&rate=15&pattern=smptebars";
    c.start(StartRequest::new("t", url)).unwrap();
    let r = c.attach_wait("t", Duration::from_secs(10)).unwrap();
    assert_eq!(broker.segments().len(), 1);
    let ffmpeg = processes_with_arg("ffmpeg", "smptebars=size=160x120");
    assert_eq!(ffmpeg.len(), 1);
    let st = broker.terminate().unwrap();
    assert!(st.success(), "{st}");
    assert!(broker.segments().is_empty(), "segments unlinked");
    assert!(!broker.socket.exists(), "socket removed");
    assert!(wait_for(Duration::from_secs(5), || processes_with_arg(
        "ffmpeg",
        "smptebars=size=160x120"
    )
    .is_empty()
    .then_some(()))
    .is_some());
    // The reader's mapping stays valid and says the stream ended.
    assert_eq!(r.state(), StreamState::Stopped);
}

#[test]
fn crashed_broker_is_noticed_and_its_segments_cleaned_by_the_next() {
    let mut broker = Broker::start(&[]).unwrap();
    let c = broker.client();
    c.start(StartRequest::new("t", "testsrc://?size=160x120&rate=15"))
        .unwrap();
    let mut r = c.attach_wait("t", Duration::from_secs(10)).unwrap();
    r.latest(Duration::from_secs(5)).unwrap();
    let prefix = broker.prefix.clone();
    broker.kill();
    let t = Instant::now();
    let err = loop {
        match r.latest(Duration::from_secs(5)) {
            Ok(_) => continue, // frames already in the ring
            Err(e) => break e,
        }
    };
    assert!(err.is_end_of_stream(), "{err}");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "noticed in {:?}",
        t.elapsed()
    );
    eprintln!("dead broker noticed in {:?}", t.elapsed());
    assert_eq!(
        framebroker_proto::shm::list(&prefix).len(),
        1,
        "a crash leaves the segment behind"
    );
    // A new broker with the same prefix removes it.
    let b2 = Broker::start_with_prefix(&prefix, &[]).unwrap();
    assert!(
        framebroker_proto::shm::list(&prefix).is_empty(),
        "stale segment removed; log:\n{}",
        b2.log_text()
    );
}

#[test]
fn a_camera_that_answers_404_ends_failed_with_the_reason() {
    let cam = Camera::start(160, 120, 15, "smpte").unwrap();
    let broker =
        Broker::start(&["--backoff-initial-ms", "100", "--backoff-max-ms", "200"]).unwrap();
    let c = broker.client();
    let bad = cam.url.replace("/cam", "/nope");
    c.start(StartRequest::new("cam", &bad)).unwrap();
    let stats = wait_for(Duration::from_secs(20), || {
        let s = c.stats("cam").unwrap();
        (s.info.state == StreamState::Failed).then_some(s)
    })
    .expect("the stream gives up instead of retrying forever");
    let reason = stats.last_error.unwrap_or_default();
    assert!(reason.contains("404"), "{reason}");
    assert_eq!(
        c.attach("cam").unwrap_err().code(),
        Some(ErrorCode::NotReady)
    );
    // Adding it again replaces the failed stream with a new attempt.
    let (_, created) = c.start(StartRequest::new("cam", &cam.url)).unwrap();
    assert!(created);
    assert!(c.attach_wait("cam", Duration::from_secs(20)).is_ok());
}

#[test]
fn a_subscription_survives_a_broker_crash_and_restart() {
    use framebroker_client::Subscription;
    let url = "testsrc://?size=160x120&rate=15";
    let mut broker = Broker::start(&[]).unwrap();
    broker.client().start(StartRequest::new("t", url)).unwrap();
    let mut sub = Subscription::new(&broker.socket, "t");
    let before = sub.latest(Duration::from_secs(10)).unwrap();
    assert_eq!(before.data.len(), 160 * 120 * 3);
    let (socket, prefix) = (broker.socket.clone(), broker.prefix.clone());
    broker.kill();
    // Frames already in the ring may still come; then the end is reported.
    let t = Instant::now();
    let err = loop {
        match sub.latest(Duration::from_secs(5)) {
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert!(err.is_end_of_stream(), "{err}");
    assert!(t.elapsed() < Duration::from_secs(3));
    assert!(
        sub.latest(Duration::from_millis(300)).is_err(),
        "no broker: the read fails, it does not hang"
    );
    // A new broker on the same socket, configured with the same stream: the stream
    // comes back by itself and the subscription re-attaches.
    let _b2 = Broker::start_at(&socket, &prefix, &["--stream", &format!("t={url}")]).unwrap();
    let t = Instant::now();
    let after = sub.latest(Duration::from_secs(20)).unwrap();
    eprintln!(
        "re-attached and read a frame {:?} after the new broker started",
        t.elapsed()
    );
    assert_eq!(after.data.len(), 160 * 120 * 3);
}
