//! Resource limits of the real broker binary (`--max-streams`, `--max-readers`,
//! `--shm-budget-mb`): each refusal is a `LimitExceeded` with a message that
//! names the limit and its flag, and changes nothing. Also what a new broker does
//! at startup with segments under its prefix that it did not create.
//!
//! Sources are the broker's built-in `testsrc://` (the real ffmpeg, lavfi) at
//! small sizes and low rates; every wait is bounded.

use std::time::Duration;

use framebroker_client::{Client, Error, StartRequest, StreamInfo, StreamState};
use framebroker_proto::control::ErrorCode;
use framebroker_proto::layout::DEFAULT_SLOTS;
use framebroker_proto::ring::{RingConfig, RingWriter};
use framebroker_proto::shm::{self, OwnedSegment};
use framebroker_proto::{Geometry, PixelFormat};
use framebroker_tests::{unique, wait_for, Broker};

/// Long enough for ffmpeg to start and probe on a loaded machine.
const READY: Duration = Duration::from_secs(20);

/// The code and message of a broker refusal; anything else fails the test.
fn refusal<T: std::fmt::Debug>(what: &str, r: Result<T, Error>) -> (ErrorCode, String) {
    match r {
        Err(Error::Broker { code, message, .. }) => (code, message),
        other => panic!("{what}: expected the broker to refuse, got {other:?}"),
    }
}

/// Command lines of the ffmpeg processes `broker` has running (its children
/// only, so other tests' ffmpegs never count).
fn ffmpeg_children(broker: &Broker) -> Vec<String> {
    let parent = broker.pid().to_string();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // /proc/<pid>/stat: "pid (comm) state ppid ..."; comm may hold spaces.
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|st| {
                st.rsplit_once(')')
                    .and_then(|(head, tail)| {
                        let ppid = tail.split_whitespace().nth(1)?;
                        Some(head.ends_with("(ffmpeg") && ppid == parent)
                    })
                    .unwrap_or(false)
            })
        })
        .filter_map(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            Some(String::from_utf8_lossy(&cmd).replace('\0', " "))
        })
        .collect()
}

fn ids(streams: &[StreamInfo]) -> Vec<String> {
    streams.iter().map(|s| s.id.clone()).collect()
}

#[test]
fn max_streams_refuses_the_next_start_and_changes_nothing() {
    let broker = Broker::start(&["--max-streams", "2"]).unwrap();
    let c = broker.client();
    for (id, rate) in [("a", 5), ("b", 6)] {
        let (_, created) = c
            .start(StartRequest::new(
                id,
                format!("testsrc://?size=64x48&rate={rate}"),
            ))
            .unwrap_or_else(|e| panic!("start {id} under the limit: {e}"));
        assert!(created, "{id} is a new stream");
    }
    let before = c.list().unwrap();
    assert_eq!(ids(&before), ["a", "b"]);
    // Both ffmpegs show up as the broker's children (so the check after the
    // refusal below is not vacuous).
    assert!(
        wait_for(Duration::from_secs(10), || (ffmpeg_children(&broker).len()
            == 2)
            .then_some(()))
        .is_some(),
        "two ffmpeg children expected: {:?}",
        ffmpeg_children(&broker)
    );

    let (code, message) = refusal(
        "third start with --max-streams 2",
        c.start(StartRequest::new("c", "testsrc://?size=64x48&rate=7")),
    );
    assert_eq!(code, ErrorCode::LimitExceeded, "{message}");
    assert!(
        message.contains("at most 2 streams") && message.contains("--max-streams"),
        "the message names the limit and the flag that raises it: {message:?}"
    );
    let after = c.list().unwrap();
    assert_eq!(
        ids(&after),
        ids(&before),
        "a refused start changes the list"
    );
    let children = ffmpeg_children(&broker);
    assert!(
        children.len() <= 2 && !children.iter().any(|c| c.contains("rate=7")),
        "no ffmpeg was spawned for the refused stream: {children:?}"
    );
    assert!(
        !broker.segments().iter().any(|s| s.contains("c.")),
        "no segment for the refused stream: {:?}",
        broker.segments()
    );

    // Asking again for a running stream is not a new stream: never refused.
    let (info, created) = c
        .start(StartRequest::new("a", "testsrc://?size=64x48&rate=5"))
        .expect("the running stream is returned at the limit");
    assert!(!created);
    assert_eq!(info.id, "a");

    // Room again once one stops.
    c.stop("b").unwrap();
    let (_, created) = c
        .start(StartRequest::new("c", "testsrc://?size=64x48&rate=7"))
        .expect("start after a stop frees a place");
    assert!(created);
    assert_eq!(ids(&c.list().unwrap()), ["a", "c"]);
}

#[test]
fn max_readers_refuses_the_next_attach_until_one_leaves() {
    let broker = Broker::start(&["--max-readers", "2"]).unwrap();
    let c = broker.client();
    c.start(StartRequest::new("r", "testsrc://?size=64x48&rate=10"))
        .unwrap();
    // Each reader is its own session, as separate processes would be.
    let r1 = broker.client();
    let _map1 = r1
        .attach_wait("r", READY)
        .expect("first reader (stream goes live)");
    let r2 = broker.client();
    r2.attach_raw("r").expect("second reader");
    assert_eq!(c.stats("r").unwrap().info.readers, 2);

    let r3 = broker.client();
    let (code, message) = refusal("third attach with --max-readers 2", r3.attach_raw("r"));
    assert_eq!(code, ErrorCode::LimitExceeded, "{message}");
    assert!(
        message.contains("maximum of 2 readers") && message.contains("\"r\""),
        "the message names the stream and the limit: {message:?}"
    );
    assert_eq!(
        c.stats("r").unwrap().info.readers,
        2,
        "a refused attach is not counted"
    );
    // A refused session holds nothing it could detach.
    let (code, _) = refusal("detach after a refused attach", r3.detach("r"));
    assert_eq!(code, ErrorCode::NotAttached);

    // One reader detaches: the next attach works.
    r2.detach("r").unwrap();
    assert_eq!(c.stats("r").unwrap().info.readers, 1);
    r3.attach_raw("r")
        .expect("attach after a detach freed a place");
    assert_eq!(c.stats("r").unwrap().info.readers, 2);

    // A reader whose connection closes (a process that exits) frees its place too.
    drop(r3);
    let readers = wait_for(Duration::from_secs(5), || {
        let n = c.stats("r").unwrap().info.readers;
        (n == 1).then_some(n)
    });
    assert_eq!(
        readers,
        Some(1),
        "a closed session's attachment is dropped; stats say {}",
        c.stats("r").unwrap().info.readers
    );
    r2.attach_raw("r")
        .expect("attach after a reader's session closed");
}

/// `--max-readers` must hold across a stop and a new start under the same id: an
/// attachment made to the old stream is not a reader of the new one, and undoing
/// it must not free a place on the new one.
#[test]
fn an_attachment_to_a_stopped_stream_does_not_free_a_place_on_its_successor() {
    let broker = Broker::start(&["--max-readers", "1"]).unwrap();
    let c = broker.client();
    let req = || StartRequest::new("s", "testsrc://?size=64x48&rate=10");
    c.start(req()).unwrap();
    let old = broker.client();
    let _old_map = old.attach_wait("s", READY).unwrap();
    c.stop("s").unwrap();
    c.start(req()).unwrap();
    let new = broker.client();
    let _new_map = new.attach_wait("s", READY).unwrap();
    assert_eq!(c.stats("s").unwrap().info.readers, 1);
    // The old reader lets go of the stream it attached to (which is gone).
    let _ = old.detach("s");
    assert_eq!(
        c.stats("s").unwrap().info.readers,
        1,
        "the new stream's only reader is still attached"
    );
    let (code, message) = refusal(
        "second reader of the new stream with --max-readers 1",
        broker.client().attach_raw("s"),
    );
    assert_eq!(code, ErrorCode::LimitExceeded, "{message}");
}

#[test]
fn a_known_size_over_the_shm_budget_is_refused_at_start() {
    let broker = Broker::start(&["--shm-budget-mb", "3"]).unwrap();
    let c = broker.client();
    // 640x480 bgr24: 921,600 bytes a frame, DEFAULT_SLOTS (4) slots ≈ 3.5 MiB.
    assert_eq!(DEFAULT_SLOTS, 4, "the sizes below assume 4 slots");
    let mut req = StartRequest::new("big", "testsrc://?size=640x480&rate=5");
    req.width = Some(640);
    req.height = Some(480);
    let (code, message) = refusal("640x480 bgr24 ring with a 3 MiB budget", c.start(req));
    assert_eq!(code, ErrorCode::LimitExceeded, "{message}");
    assert!(
        message.contains("budget") && message.contains("3 MiB"),
        "the message names the budget: {message:?}"
    );
    assert!(c.list().unwrap().is_empty(), "nothing was added");
    assert!(broker.segments().is_empty(), "no segment was created");
    assert_eq!(
        ffmpeg_children(&broker),
        Vec::<String>::new(),
        "no ffmpeg was spawned"
    );

    // A ring that fits is still accepted: 320x240 bgr24, 4 slots ≈ 0.9 MiB.
    let mut small = StartRequest::new("small", "testsrc://?size=320x240&rate=5");
    small.width = Some(320);
    small.height = Some(240);
    c.start(small).expect("a ring within the budget");
}

/// A budget refusal must show numbers that explain it (a 3.5 MiB ring is not a
/// "3 MiB" ring) and name the flag that raises the budget.
#[test]
fn the_budget_refusal_message_shows_a_need_over_the_budget() {
    let broker = Broker::start(&["--shm-budget-mb", "3"]).unwrap();
    let mut req = StartRequest::new("big", "testsrc://?size=640x480&rate=5");
    req.width = Some(640);
    req.height = Some(480);
    let (_, message) = refusal("3.5 MiB ring, 3 MiB budget", broker.client().start(req));
    assert!(
        !message.contains("needs 3 MiB"),
        "3.5 MiB shown as 3 MiB: {message:?}"
    );
    assert!(
        message.contains("--shm-budget-mb"),
        "the refusal at start names the flag, as the one at allocation does: {message:?}"
    );
}

#[test]
fn a_native_size_over_the_shm_budget_ends_failed_with_the_budget_in_the_error() {
    let broker = Broker::start(&["--shm-budget-mb", "5"]).unwrap();
    let c = broker.client();
    // No width/height: the size is known only once ffmpeg has probed the source.
    // 1920x1080 bgr24 × 4 slots ≈ 23.7 MiB.
    let (info, created) = c
        .start(StartRequest::new("hd", "testsrc://?size=1920x1080&rate=5"))
        .expect("an unknown size cannot be checked at start");
    assert!(created);
    assert_eq!((info.width, info.height), (0, 0), "size not known yet");

    let stats = wait_for(READY, || {
        let s = c.stats("hd").unwrap();
        s.info.state.is_final().then_some(s)
    })
    .unwrap_or_else(|| {
        panic!(
            "stream did not end within {READY:?}: {:?}\nlog:\n{}",
            c.stats("hd"),
            broker.log_text()
        )
    });
    assert_eq!(stats.info.state, StreamState::Failed, "{stats:?}");
    let error = stats.last_error.clone().unwrap_or_default();
    assert!(
        error.contains("budget") && error.contains("5 MiB") && error.contains("--shm-budget-mb"),
        "last_error names the budget and its flag: {error:?}"
    );
    assert_eq!(stats.reconnects, 0, "a budget refusal is not retried");
    assert!(
        broker.segments().is_empty(),
        "no segment was created: {:?}",
        broker.segments()
    );
    assert!(
        wait_for(Duration::from_secs(5), || ffmpeg_children(&broker)
            .is_empty()
            .then_some(()))
        .is_some(),
        "the failed stream's ffmpeg is gone: {:?}",
        ffmpeg_children(&broker)
    );
    // Readers are told why.
    let (code, message) = refusal("attach to the failed stream", c.attach_raw("hd"));
    assert_eq!(code, ErrorCode::NotReady, "{message}");
    assert!(message.contains("budget"), "{message:?}");
}

#[test]
fn a_second_id_on_a_running_decode_makes_room_like_a_new_stream() {
    // A failed stream stays listed with its reason until its place is needed;
    // an id joining a running decode needs a place as much as a new decode.
    let broker = Broker::start(&["--max-streams", "2", "--shm-budget-mb", "5"]).unwrap();
    let c = broker.client();
    c.start(StartRequest::new("hd", "testsrc://?size=1920x1080&rate=5"))
        .unwrap();
    wait_for(READY, || {
        (c.stats("hd").unwrap().info.state == StreamState::Failed).then_some(())
    })
    .expect("the stream over the budget ends failed");
    let url = "testsrc://?size=64x48&rate=5";
    c.start(StartRequest::new("a", url)).unwrap();
    let mut listed = ids(&c.list().unwrap());
    listed.sort();
    assert_eq!(listed, ["a", "hd"]);

    let (info, created) = c
        .start(StartRequest::new("b", url))
        .expect("a second id on a running decode fits the limit");
    assert!(created, "{info:?}");
    assert_eq!(info.parent.as_deref(), Some("a"), "{info:?}");
    let mut listed = ids(&c.list().unwrap());
    listed.sort();
    assert_eq!(listed, ["a", "b"], "the failed stream made way");
}

/// Plants a segment named `name` the way a broker with writer `pid` would have
/// made it, and leaves it behind (as a crash does).
fn plant_ring(name: &str, pid: u32) {
    let config = RingConfig {
        stream_id: "planted".into(),
        geometry: Geometry {
            width: 16,
            height: 8,
            pixel_format: PixelFormat::Gray,
        },
        slot_count: 3,
        generation: 1,
        checksum: false,
        writer_pid: pid,
    };
    let mut seg = OwnedSegment::create(name, config.segment_size().unwrap(), 0o600)
        .unwrap_or_else(|e| panic!("planting {name}: {e}"));
    RingWriter::create(&seg, &config).unwrap();
    seg.leak_name();
}

/// Unlinks the planted names whatever the test's outcome.
struct Planted(Vec<String>);

impl Drop for Planted {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = shm::unlink(n);
        }
    }
}

#[test]
fn a_new_broker_removes_segments_of_dead_writers_only() {
    let prefix = format!("{}-", unique("fbstale"));
    let dead = format!("/{prefix}dead.1");
    let live = format!("/{prefix}live.1");
    let garbage = format!("/{prefix}garbage.1");
    let short = format!("/{prefix}short.1");
    let _cleanup = Planted(vec![
        dead.clone(),
        live.clone(),
        garbage.clone(),
        short.clone(),
    ]);
    // A pid above pid_max on every Linux: that writer cannot be alive.
    plant_ring(&dead, 4_194_305);
    // pid 1 (init) is alive and not the broker: another live broker's segment.
    plant_ring(&live, 1);
    // Not a ring at all: a full header page of garbage, and a file too short to
    // hold a header. Both are left to whoever made them.
    let file = |name: &str| std::path::Path::new(shm::SHM_DIR).join(&name[1..]);
    std::fs::write(file(&garbage), vec![0xAB; 8192]).unwrap();
    std::fs::write(file(&short), b"FBRING").unwrap();

    let broker = Broker::start_with_prefix(&prefix, &[]).unwrap();
    let log = broker.log_text();
    let mut left = shm::list(&prefix);
    left.sort();
    let mut want = vec![garbage.clone(), live.clone(), short.clone()];
    want.sort();
    assert_eq!(
        left, want,
        "only the dead writer's segment is removed; log:\n{log}"
    );
    let line = |needle: &str, name: &str| {
        log.lines()
            .find(|l| l.contains(needle) && l.contains(name))
            .map(str::to_string)
    };
    let removed = line("removed segment of a dead broker", &dead)
        .unwrap_or_else(|| panic!("no log line for the removal of {dead}; log:\n{log}"));
    assert!(
        removed.contains("4194305"),
        "the line names the dead pid: {removed}"
    );
    assert!(
        line("belongs to a live process", &live).is_some(),
        "no log line for the live writer's segment {live}; log:\n{log}"
    );
    for other in [&live, &garbage, &short] {
        assert!(
            line("removed segment", other).is_none(),
            "{other} reported as removed; log:\n{log}"
        );
    }
    // The broker works with the leftovers around it.
    let c = broker.client();
    c.start(StartRequest::new("fresh", "testsrc://?size=64x48&rate=10"))
        .unwrap();
    c.attach_wait("fresh", READY)
        .expect("a new stream next to foreign segments");
    assert!(
        Client::connect_to(&broker.socket).is_ok(),
        "broker still serving"
    );
}
