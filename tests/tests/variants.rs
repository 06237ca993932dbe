//! Several variants of one camera from ONE decode, and per-frame stream-clock
//! timestamps: the real broker binary, the real ffmpeg and the real RTSP test camera
//! on 127.0.0.1.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use framebroker_client::{Client, PixelFormat, Reader, StartRequest, StreamState, VariantRequest};
use framebroker_proto::control::ErrorCode;
use framebroker_tests::{
    decoders_of, expect_state, read_side_by_side, sample_bars, wait_for, Broker, Camera,
    SMPTE_BARS_BGR,
};

const READ: Duration = Duration::from_secs(10);

fn close(a: [u8; 3], b: [u8; 3], tol: i32) -> bool {
    a.iter()
        .zip(b)
        .all(|(x, y)| (*x as i32 - y as i32).abs() <= tol)
}

/// Main 640x480 bgr24 (native), `motion` 320x240 gray, `rgb` native rgb24.
fn start_with_variants(client: &Client, url: &str) {
    let mut req = StartRequest::new("cam", url);
    req.variants = vec![
        VariantRequest::new("cam-motion", Some((320, 240)), PixelFormat::Gray),
        VariantRequest::new("cam-rgb", None, PixelFormat::Rgb24),
    ];
    let (info, created) = client.start(req).unwrap();
    assert!(created);
    assert_eq!(info.parent, None);
}

fn live(client: &Client, id: &str) {
    wait_for(Duration::from_secs(15), || {
        (client.stats(id).ok()?.info.state == StreamState::Live).then_some(())
    })
    .unwrap_or_else(|| panic!("{id} goes live: {:?}", client.stats(id)));
}

fn attach(client: &Client, id: &str) -> Reader {
    client.attach_wait(id, READ).unwrap()
}

#[test]
fn variants_come_from_one_ffmpeg_and_are_streams_of_their_own() {
    let cam = Camera::start(640, 480, 30, "smpte").unwrap();
    let broker = Broker::start(&[]).unwrap();
    let client = broker.client();
    start_with_variants(&client, &cam.url);
    for id in ["cam", "cam-motion", "cam-rgb"] {
        live(&client, id);
    }
    assert_eq!(
        decoders_of(&cam.url).len(),
        1,
        "one ffmpeg decodes for every variant"
    );
    let list = client.list().unwrap();
    let by_id: BTreeMap<_, _> = list.iter().map(|s| (s.id.as_str(), s)).collect();
    assert_eq!(by_id.len(), 3, "{list:?}");
    assert_eq!(by_id["cam-motion"].parent.as_deref(), Some("cam"));
    assert_eq!(by_id["cam-rgb"].parent.as_deref(), Some("cam"));
    assert_eq!(
        (by_id["cam-motion"].width, by_id["cam-motion"].height),
        (320, 240)
    );
    assert_eq!(
        (by_id["cam-rgb"].width, by_id["cam-rgb"].height),
        (640, 480),
        "native size learnt from ffmpeg's output line"
    );
    assert_eq!(broker.segments().len(), 3, "one ring per variant");

    // Each variant is attachable by its id with the unchanged client.
    let mut main = attach(&client, "cam");
    let mut motion = attach(&client, "cam-motion");
    let mut rgb = attach(&client, "cam-rgb");
    assert_eq!(
        (motion.width(), motion.height(), motion.pixel_format()),
        (320, 240, PixelFormat::Gray)
    );
    assert_eq!(rgb.pixel_format(), PixelFormat::Rgb24);
    assert_eq!(motion.frame_bytes(), 320 * 240);

    let f = main.latest(READ).unwrap();
    for (i, (got, want)) in sample_bars(&f.data, 640, 480)
        .into_iter()
        .zip(SMPTE_BARS_BGR)
        .enumerate()
    {
        assert!(close(got, want, 48), "main bar {i}: {got:?} vs {want:?}");
    }
    // rgb24 is the same picture with the channels the other way round.
    let f = rgb.latest(READ).unwrap();
    for (i, (got, want)) in sample_bars(&f.data, 640, 480)
        .into_iter()
        .zip(SMPTE_BARS_BGR)
        .enumerate()
    {
        let bgr = [got[2], got[1], got[0]];
        assert!(close(bgr, want, 48), "rgb bar {i}: {got:?} vs {want:?}");
    }
    // gray: the bars' luma falls from white to blue (BT.601 weights of the colours).
    let f = motion.latest(READ).unwrap();
    let luma: Vec<u8> = (0..7)
        .map(|i| f.data[60 * 320 + (320 * (2 * i + 1)) / 14])
        .collect();
    for w in luma.windows(2) {
        assert!(w[0] > w[1], "bar luma decreasing: {luma:?}");
    }

    // Same decode: frame n of every ring is the same decoded picture, with the
    // same pts. Read both sequentially and compare the frames they share.
    let (pts_main, pts_motion, shared) = read_side_by_side(&mut main, &mut motion, 45, READ, |f| {
        f.meta.stream_time.map(|t| t.pts_ns)
    });
    assert!(shared.len() >= 20, "rings overlap: {shared:?}");
    for n in &shared {
        assert!(pts_main[n].is_some(), "frame {n} has a stream time");
        assert_eq!(pts_main[n], pts_motion[n], "frame {n}: one decode, one pts");
    }

    // A variant stops alone: its readers see `stopped`, the decode restarts
    // without its output (still one ffmpeg) and the others stay attached.
    let pid_before = client.stats("cam").unwrap().ffmpeg_pid;
    let main_gen = client.stats("cam").unwrap().info.generation;
    client.stop("cam-motion").unwrap();
    expect_state(
        &motion,
        StreamState::Stopped,
        "the stopped variant's reader sees stopped",
    );
    let ids: Vec<String> = client.list().unwrap().into_iter().map(|s| s.id).collect();
    assert_eq!(ids, ["cam", "cam-rgb"]);
    wait_for(Duration::from_secs(15), || {
        let pid = client.stats("cam").ok()?.ffmpeg_pid;
        (pid != 0 && pid != pid_before).then_some(())
    })
    .expect("ffmpeg restarted without the stopped output");
    let n = main.latest(READ).unwrap().meta.number;
    let later = main.next(READ).unwrap().meta.number;
    assert!(later > n, "the main reader stays attached and reads on");
    assert_eq!(main.state(), StreamState::Live);
    assert_eq!(
        client.stats("cam").unwrap().info.generation,
        main_gen,
        "same ring across the restart"
    );
    rgb.latest(READ).unwrap();
    assert_eq!(decoders_of(&cam.url).len(), 1);

    // Stopping the main stream stops the variants of its own request; their
    // readers see `stopped`.
    client.stop("cam").unwrap();
    expect_state(&rgb, StreamState::Stopped, "variant readers see stopped");
    assert!(client.list().unwrap().is_empty());
    assert!(
        wait_for(Duration::from_secs(5), || broker
            .segments()
            .is_empty()
            .then_some(()))
        .is_some(),
        "all rings unlinked: {:?}",
        broker.segments()
    );
}

#[test]
fn stream_clock_advances_by_the_frame_interval_beside_the_receive_time() {
    let cam = Camera::start(320, 240, 30, "smpte").unwrap();
    let broker = Broker::start(&[]).unwrap();
    let client = broker.client();
    client.start(StartRequest::new("cam", &cam.url)).unwrap();
    live(&client, "cam");
    let mut r = attach(&client, "cam");
    let mut metas = Vec::new();
    while metas.len() < 60 {
        metas.push(r.next(READ).unwrap().meta);
    }
    let mut steps = 0;
    for w in metas.windows(2) {
        let (a, b) = (w[0], w[1]);
        let (Some(ta), Some(tb)) = (a.stream_time, b.stream_time) else {
            panic!("frames {} and {} carry a stream time", a.number, b.number);
        };
        assert!(
            b.wall_ns > 0 && b.mono_ns > 0,
            "receive time stays beside it"
        );
        if b.number != a.number + 1 {
            continue;
        }
        // 30 fps on a 90 kHz RTP clock: 3000 ticks = 33.33 ms per frame.
        let d = tb.pts_ns - ta.pts_ns;
        assert!(
            (d - 33_333_333).abs() < 1_000_000,
            "pts step {d} ns between frames {} and {}",
            a.number,
            b.number
        );
        assert_eq!(
            tb.wall_ns as i64 - ta.wall_ns as i64,
            d,
            "the stream-clock capture time moves with pts"
        );
        steps += 1;
    }
    assert!(steps >= 40, "consecutive frames read: {steps}");
    let last = metas.last().unwrap();
    let t = last.stream_time.unwrap();
    let apart = (t.wall_ns as i64 - last.wall_ns as i64).abs();
    assert!(
        apart < 5_000_000_000,
        "the stream clock is anchored on the receive clock ({apart} ns apart)"
    );
}

#[test]
fn bad_variants_are_refused_before_anything_starts() {
    let cam = Camera::start(320, 240, 15, "smpte").unwrap();
    let broker = Broker::start(&["--max-streams", "3", "--shm-budget-mb", "8"]).unwrap();
    let client = broker.client();
    client
        .start(StartRequest::new("other", "testsrc://?size=64x48&rate=5"))
        .unwrap();
    let with = |variants: Vec<VariantRequest>| {
        let mut req = StartRequest::new("cam", &cam.url);
        req.variants = variants.clone();
        match client.start(req) {
            Err(e) => e,
            Ok(started) => panic!("{variants:?} was accepted: {started:?}"),
        }
    };
    let gray = |id: &str| VariantRequest::new(id, Some((320, 240)), PixelFormat::Gray);
    let cases = [
        (vec![gray("a/b")], ErrorCode::InvalidId),
        (vec![gray("cam")], ErrorCode::InvalidId),
        (vec![gray("m"), gray("m")], ErrorCode::InvalidId),
        (vec![gray("other")], ErrorCode::AlreadyExists),
        (
            vec![VariantRequest {
                height: None,
                ..gray("m")
            }],
            ErrorCode::InvalidGeometry,
        ),
        (
            vec![VariantRequest::new(
                "m",
                Some((321, 241)),
                PixelFormat::Yuv420p,
            )],
            ErrorCode::InvalidGeometry,
        ),
        // other + cam + 2 variants > 3 streams.
        (vec![gray("m1"), gray("m2")], ErrorCode::LimitExceeded),
        // 4 slots of 1920x1080 bgr24 is ~24 MiB > 8 MiB: each ring counts.
        (
            vec![VariantRequest::new(
                "big",
                Some((1920, 1080)),
                PixelFormat::Bgr24,
            )],
            ErrorCode::LimitExceeded,
        ),
    ];
    for (variants, code) in cases {
        let e = with(variants.clone());
        assert_eq!(e.code(), Some(code), "{variants:?}: {e}");
        let ids: Vec<String> = client.list().unwrap().into_iter().map(|s| s.id).collect();
        assert_eq!(ids, ["other"], "{variants:?} changed nothing");
    }
    assert!(
        decoders_of(&cam.url).is_empty(),
        "no ffmpeg started for a refused request"
    );

    // The camera running without variants: asking again for it (same id, or
    // another id for the same URL) with a variant is refused, not answered with
    // a stream that lacks it; without variants it is the running stream.
    let (running, created) = client.start(StartRequest::new("cam", &cam.url)).unwrap();
    assert!(created);
    for id in ["cam", "cam2"] {
        let mut req = StartRequest::new(id, &cam.url);
        req.variants = vec![gray("m")];
        let e = client.start(req).unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::AlreadyExists), "{id}: {e}");
        assert!(e.to_string().contains("without variant \"m\""), "{e}");
    }
    // Without variants the same id is the running stream, and another id a
    // stream of its own on the same decode (an alias; see aliases.rs).
    let again = client.start(StartRequest::new("cam", &cam.url)).unwrap();
    assert_eq!((again.0.id.as_str(), again.1), (running.id.as_str(), false));
    let alias = client.start(StartRequest::new("cam2", &cam.url)).unwrap();
    assert_eq!((alias.0.id.as_str(), alias.1), ("cam2", true));
    assert_eq!(alias.0.parent.as_deref(), Some("cam"));
    let ids: Vec<String> = client.list().unwrap().into_iter().map(|s| s.id).collect();
    assert_eq!(ids, ["cam", "cam2", "other"]);
}

#[test]
fn a_read_variant_keeps_its_on_demand_parent_running() {
    let cam = Camera::start(320, 240, 15, "smpte").unwrap();
    let broker = Broker::start(&["--idle-grace-ms", "1500"]).unwrap();
    let client = broker.client();
    let mut req = StartRequest::new("cam", &cam.url);
    req.on_demand = true;
    req.variants = vec![VariantRequest::new(
        "cam-small",
        Some((160, 120)),
        PixelFormat::Gray,
    )];
    client.start(req).unwrap();
    let mut small = attach(&client, "cam-small");
    small.latest(READ).unwrap();
    // Well past the grace period, only the variant is read: the parent stays.
    let until = Instant::now() + Duration::from_millis(3500);
    while Instant::now() < until {
        small.latest(READ).unwrap();
    }
    assert_eq!(client.stats("cam").unwrap().info.state, StreamState::Live);
    assert_eq!(client.stats("cam-small").unwrap().info.readers, 1);
    drop(small);
    assert!(
        wait_for(Duration::from_secs(10), || client
            .list()
            .unwrap()
            .is_empty()
            .then_some(()))
        .is_some(),
        "the parent and its variant stop once the variant's reader left: {:?}",
        client.list()
    );
}

#[test]
fn variants_reconnect_into_their_rings_when_the_camera_returns() {
    let mut cam = Camera::start(320, 240, 30, "smpte").unwrap();
    let broker =
        Broker::start(&["--backoff-initial-ms", "100", "--backoff-max-ms", "200"]).unwrap();
    let client = broker.client();
    let mut req = StartRequest::new("cam", &cam.url);
    req.variants = vec![VariantRequest::new(
        "cam-small",
        Some((160, 120)),
        PixelFormat::Gray,
    )];
    client.start(req).unwrap();
    let mut small = attach(&client, "cam-small");
    let before = small.latest(READ).unwrap().meta.number;
    let generation = small.attachment().generation;
    cam.kill();
    assert!(
        wait_for(Duration::from_secs(10), || (small.state()
            == StreamState::Reconnecting)
            .then_some(()))
        .is_some(),
        "the variant's readers see the camera drop"
    );
    let dropped_at = small.last_frame();
    assert!(dropped_at >= before);
    cam.restart().unwrap();
    let after = wait_for(Duration::from_secs(20), || {
        let n = small.latest(READ).ok()?.meta.number;
        (n > dropped_at).then_some(n)
    })
    .expect("frames after the camera returned");
    assert!(after > dropped_at, "frames again in the same ring");
    let stats = client.stats("cam-small").unwrap();
    assert_eq!(stats.info.generation, generation, "same segment");
    live(&client, "cam-small");
    assert!(client.stats("cam").unwrap().reconnects >= 1);
    assert_eq!(decoders_of(&cam.url).len(), 1);
}
