//! Breaking things on purpose: cameras that freeze, ffmpeg killed, readers that
//! misbehave. Bounds here are generous (shared, noisy machines); the tight
//! numbers belong to the benchmarks. Each case prints what it measured.

use std::time::{Duration, Instant};

use framebroker_client::{StartRequest, StreamState};
use framebroker_proto::layout;
use framebroker_tests::{wait_for, Broker, Camera};

/// Reads frames for `d` and returns how many arrived.
fn frames_in(reader: &mut framebroker_client::Reader, d: Duration) -> u64 {
    let end = Instant::now() + d;
    let mut n = 0;
    let mut buf = vec![0u8; reader.frame_bytes()];
    while Instant::now() < end {
        if reader
            .latest_into(&mut buf, Duration::from_millis(200))
            .is_ok()
        {
            n += 1;
        }
    }
    n
}

#[test]
fn a_frozen_camera_is_detected_by_the_stall_timeout_and_recovers() {
    let cam = Camera::start(160, 120, 15, "smpte").unwrap();
    let broker = Broker::start(&[
        "--stall-timeout-ms",
        "1500",
        "--backoff-initial-ms",
        "200",
        "--backoff-max-ms",
        "500",
    ])
    .unwrap();
    let c = broker.client();
    c.start(StartRequest::new("cam", &cam.url)).unwrap();
    let mut r = c.attach_wait("cam", Duration::from_secs(20)).unwrap();
    r.latest(Duration::from_secs(10)).unwrap();

    cam.freeze();
    let t = Instant::now();
    // No frame comes now: only the broker's ticker keeps the heartbeat fresh,
    // and a reader must never take the live broker for a dead one.
    let mut oldest_heartbeat = Duration::ZERO;
    let noticed = wait_for(Duration::from_secs(15), || {
        oldest_heartbeat = oldest_heartbeat.max(r.heartbeat_age());
        (r.state() == StreamState::Reconnecting).then(|| t.elapsed())
    });
    let noticed = noticed.expect("a frozen camera must be noticed");
    eprintln!(
        "frozen camera noticed after {noticed:?} (stall timeout 1.5 s); \
         oldest heartbeat seen meanwhile {oldest_heartbeat:?} (refreshed every {} ms)",
        layout::HEARTBEAT_INTERVAL_MS
    );
    assert!(
        noticed >= Duration::from_millis(1000),
        "not before the stall timeout: {noticed:?}"
    );
    assert!(
        oldest_heartbeat < Duration::from_millis(layout::HEARTBEAT_STALE_MS),
        "the heartbeat of a live broker went stale without frames: {oldest_heartbeat:?}"
    );
    let stats = c.stats("cam").unwrap();
    let reason = stats.last_error.unwrap_or_default();
    assert!(reason.contains("stalled"), "{reason}");

    cam.thaw();
    let before = r.last_frame();
    let t = Instant::now();
    let back = wait_for(Duration::from_secs(30), || {
        (r.last_frame() > before && r.state() == StreamState::Live).then(|| t.elapsed())
    });
    eprintln!("camera thawed → frames again after {back:?}");
    assert!(back.is_some(), "frames resume after the camera comes back");
    assert!(
        r.latest(Duration::from_secs(5)).is_ok(),
        "the same reader keeps reading"
    );
}

#[test]
fn ffmpeg_killed_is_restarted_and_counted() {
    let broker =
        Broker::start(&["--backoff-initial-ms", "100", "--backoff-max-ms", "200"]).unwrap();
    let c = broker.client();
    c.start(StartRequest::new("t", "testsrc://?size=160x120&rate=30"))
        .unwrap();
    let mut r = c.attach_wait("t", Duration::from_secs(10)).unwrap();
    r.latest(Duration::from_secs(5)).unwrap();
    let generation = r.attachment().generation;
    for round in 1..=3u64 {
        let pid = c.stats("t").unwrap().ffmpeg_pid;
        assert_ne!(pid, 0);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::SIGKILL,
        )
        .unwrap();
        let t = Instant::now();
        let st = wait_for(Duration::from_secs(10), || {
            let s = c.stats("t").unwrap();
            (s.reconnects >= round
                && s.ffmpeg_pid != 0
                && s.ffmpeg_pid != pid
                && s.info.state == StreamState::Live)
                .then_some(s)
        })
        .expect("ffmpeg restarted");
        eprintln!(
            "ffmpeg kill -9 #{round}: live again after {:?}",
            t.elapsed()
        );
        assert_eq!(st.info.generation, generation, "same segment");
    }
    let before = r.last_frame();
    assert!(frames_in(&mut r, Duration::from_millis(500)) > 0);
    assert!(r.last_frame() > before);
}

#[test]
fn misbehaving_readers_do_not_slow_the_writer_or_other_readers() {
    let broker = Broker::start(&[]).unwrap();
    let c = broker.client();
    c.start(StartRequest::new("t", "testsrc://?size=320x240&rate=30"))
        .unwrap();
    let mut good = c.attach_wait("t", Duration::from_secs(10)).unwrap();
    good.latest(Duration::from_secs(5)).unwrap();
    let baseline = frames_in(&mut good, Duration::from_secs(2));

    // A reader that attaches and never reads, and 100 readers attaching and
    // detaching in a loop, each in its own session.
    let idle = broker.client().attach("t").unwrap();
    let socket = broker.socket.clone();
    let churn = std::thread::spawn(move || {
        let t = Instant::now();
        for _ in 0..100 {
            let cl = framebroker_client::Client::connect_to(&socket).unwrap();
            let mut r = cl.attach("t").unwrap();
            let _ = r.latest(Duration::from_secs(1));
        }
        t.elapsed()
    });
    let during = frames_in(&mut good, Duration::from_secs(2));
    let churn_time = churn.join().unwrap();
    eprintln!("good reader: {baseline} frames in 2 s before, {during} during churn (100 attach/read/detach in {churn_time:?})");
    assert!(
        during as f64 >= baseline as f64 * 0.7,
        "{during} vs {baseline}"
    );
    let rate = c.stats("t").unwrap().fps;
    assert!(rate > 20.0, "writer rate {rate}");
    assert_eq!(
        c.stats("t").unwrap().info.readers,
        2,
        "good + idle; the 100 are gone"
    );
    drop(idle);
    assert!(wait_for(Duration::from_secs(5), || (c
        .stats("t")
        .unwrap()
        .info
        .readers
        == 1)
        .then_some(()))
    .is_some());
}

#[test]
fn a_corrupt_stream_is_counted_and_survived() {
    // An H.264 transport stream made now, then damaged in the middle: the decoder
    // meets garbage on every loop of the file.
    let dir = framebroker_tests::TempDir::new("fbcorrupt").unwrap();
    let path = dir.path().join("damaged.ts");
    let made = std::process::Command::new("ffmpeg")
        .args([
            "-nostdin",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=15",
            "-t",
            "4",
        ])
        .args(["-c:v", "libx264", "-g", "15", "-f", "mpegts", "-y"])
        .arg(&path)
        .status()
        .unwrap();
    assert!(made.success());
    let mut bytes = std::fs::read(&path).unwrap();
    let len = bytes.len();
    for k in 0..40 {
        let at = len / 4 + k * (len / 2 / 40);
        for b in &mut bytes[at..at + 300] {
            *b ^= 0x5a;
        }
    }
    std::fs::write(&path, &bytes).unwrap();

    let broker = Broker::start(&["--allow-files"]).unwrap();
    let c = broker.client();
    c.start(StartRequest::new(
        "bad",
        format!("file://{}", path.display()),
    ))
    .unwrap();
    let mut r = c.attach_wait("bad", Duration::from_secs(20)).unwrap();
    let frames = frames_in(&mut r, Duration::from_secs(6));
    let stats = c.stats("bad").unwrap();
    eprintln!(
        "damaged stream: {frames} frames read in 6 s, {} decode errors counted, state {}, reconnects {}",
        stats.frames_dropped, stats.info.state, stats.reconnects
    );
    assert!(frames > 30, "frames keep coming despite the damage");
    assert!(stats.frames_dropped > 0, "decode errors are counted");
    assert!(!stats.info.state.is_final(), "the stream goes on");
    assert!(c.list().is_ok(), "the broker is alive");
}
