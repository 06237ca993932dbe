//! Our own decoder process (`serve --decoder libav`, `framebroker-decoder`):
//! the real broker, the real decoder linked with the system's libavcodec, the
//! real RTSP test camera on 127.0.0.1, and ffmpeg beside it as the reference.
//! `scripts/test.sh` also runs the end-to-end and chaos suites with
//! `FRAMEBROKER_DECODER=libav`; these tests check what only this path has.

use std::time::Duration;

use framebroker_client::{Client, PixelFormat, StartRequest, StreamState};
use framebroker_tests::{
    processes_with_arg, sample_bars, wait_for, workspace_bin, Broker, Camera, TempDir,
    SMPTE_BARS_BGR,
};

const READ: Duration = Duration::from_secs(10);

/// The `framebroker-decoder` processes decoding `url` (they get it in their
/// environment).
fn own_decoders(url: &str) -> Vec<u32> {
    let want = format!("FRAMEBROKER_DECODE_URL={url}");
    processes_with_arg("framebroker-decoder", "")
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == want.as_bytes()))
        })
        .collect()
}

fn libav_broker(extra: &[&str]) -> Broker {
    let bin = workspace_bin("framebroker-decoder");
    assert!(
        bin.is_file(),
        "{} is missing: cargo build -p framebroker-decoder --features libav",
        bin.display()
    );
    let mut args = vec!["--decoder", "libav"];
    args.extend_from_slice(extra);
    Broker::start(&args).unwrap()
}

fn live(client: &Client, id: &str) {
    wait_for(Duration::from_secs(15), || {
        (client.stats(id).ok()?.info.state == StreamState::Live).then_some(())
    })
    .unwrap_or_else(|| panic!("{id} goes live: {:?}", client.stats(id)));
}

/// Largest per-byte difference and the count of bytes that differ by more than `tol`.
fn diff(a: &[u8], b: &[u8], tol: u8) -> (u8, usize) {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold((0, 0), |(m, n), (x, y)| {
        let d = x.abs_diff(*y);
        (m.max(d), n + usize::from(d > tol))
    })
}

fn start(client: &Client, id: &str, url: &str, size: Option<(u32, u32)>, pf: PixelFormat) {
    let mut req = StartRequest::new(id, url);
    // Each id its own decode, not a variant of the first (variants are ffmpeg's).
    req.allow_duplicate_url = true;
    if let Some((w, h)) = size {
        req.width = Some(w);
        req.height = Some(h);
    }
    req.pixel_format = pf;
    client.start(req).unwrap();
    live(client, id);
}

#[test]
fn the_own_decoder_hands_over_what_ffmpeg_does() {
    let cam = Camera::start(320, 240, 30, "smpte").unwrap();
    let ours = libav_broker(&[]);
    let reference = Broker::start(&["--decoder", "ffmpeg"]).unwrap();
    let (a, b) = (ours.client(), reference.client());
    // Native bgr24, a scaled gray ring, and a scaled rgb24 ring.
    let cases = [
        ("cam", None, PixelFormat::Bgr24),
        ("small", Some((160, 120)), PixelFormat::Gray),
        ("rgb", Some((240, 180)), PixelFormat::Rgb24),
    ];
    for (id, size, pf) in cases {
        let url = &cam.url;
        start(&a, id, url, size, pf);
        start(&b, id, url, size, pf);
        let stats = a.stats(id).unwrap();
        let (w, h) = size.unwrap_or((320, 240));
        // The native stream is decoded straight into the shared frame pool
        // (fd 12 of the decoder, sized on the first frame); scaled ones are
        // copied to staging, but the pool is set up for every decode.
        let pool = std::fs::metadata(format!("/proc/{}/fd/12", stats.ffmpeg_pid))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(pool > 0, "{id}: the frame pool is in use ({pool} bytes)");
        let decoders = own_decoders(url);
        assert!(
            decoders.contains(&stats.ffmpeg_pid),
            "{id}: the stats name a framebroker-decoder ({}), not ffmpeg: {decoders:?}",
            stats.ffmpeg_pid
        );
        let ffmpegs = processes_with_arg("ffmpeg", url);
        assert!(
            ffmpegs.contains(&b.stats(id).unwrap().ffmpeg_pid) && decoders.len() == ffmpegs.len(),
            "{id}: one framebroker-decoder per decode of ours, one ffmpeg per reference decode: \
             {decoders:?} {ffmpegs:?}"
        );
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", stats.ffmpeg_pid)).unwrap();
        assert!(
            !String::from_utf8_lossy(&cmdline).contains(url.as_str()),
            "the URL is not on the decoder's command line"
        );
        assert_eq!((stats.info.width, stats.info.height), (w, h), "{id}");
        assert!(
            (stats.info.declared_fps - 30.0).abs() < 0.5,
            "{id}: {stats:?}"
        );

        let mut ra = a.attach_wait(id, READ).unwrap();
        let mut rb = b.attach_wait(id, READ).unwrap();
        let fa = ra.next(READ).unwrap();
        let fb = rb.next(READ).unwrap();
        let st = fa.meta.stream_time.expect("each frame has its stream time");
        assert!(st.pts_ns >= 0);
        // The bars (the top two thirds of the pattern) are static: any frame of
        // one equals any frame of the other, up to the encoder's noise. (The
        // bottom right corner is noise, different in every frame.)
        let bars = fa.data.len() / h as usize * (h as usize * 2 / 3);
        let (max, over) = diff(&fa.data[..bars], &fb.data[..bars], 3);
        println!("{id}: libav vs ffmpeg: max {max}, {over} bytes over 3");
        if std::env::var_os("FB_DUMP").is_some() {
            std::fs::write(format!("/tmp/libav-{id}.raw"), &fa.data).unwrap();
            std::fs::write(format!("/tmp/ffmpeg-{id}.raw"), &fb.data).unwrap();
        }
        // Measured: byte for byte the same (the same libavcodec, the same scaler,
        // the same conversion); 3 levels leave room for the encoder's noise.
        assert_eq!(
            over, 0,
            "{id}: {over} of {bars} bytes differ by more than 3 (max {max})"
        );
        if pf == PixelFormat::Bgr24 {
            for (got, want) in sample_bars(&fa.data, w, h).iter().zip(SMPTE_BARS_BGR) {
                assert!(
                    got.iter().zip(want).all(|(g, w)| g.abs_diff(w) <= 6),
                    "{id}: bar {got:?} vs {want:?}"
                );
            }
        }
        // Frames keep coming, each with a later stream time.
        let later = ra.next(READ).unwrap();
        assert!(later.meta.number > fa.meta.number);
        let st2 = later.meta.stream_time.expect("stream time");
        assert!(st2.pts_ns > st.pts_ns, "pts advance: {st:?} then {st2:?}");
    }
}

/// Pictures of up to 640x480 decode on one thread (no slice workers to wake for
/// every frame); larger ones on libavcodec's `auto` (one more thread than cores).
#[test]
fn small_pictures_decode_on_one_thread() {
    let small = Camera::start(640, 480, 15, "smpte").unwrap();
    let large = Camera::start(1280, 720, 15, "smpte").unwrap();
    let broker = libav_broker(&[]);
    let c = broker.client();
    start(&c, "small", &small.url, None, PixelFormat::Bgr24);
    start(&c, "large", &large.url, None, PixelFormat::Bgr24);
    let threads = |id: &str, url: &str| {
        let pid = c.stats(id).unwrap().ffmpeg_pid;
        assert!(
            own_decoders(url).contains(&pid),
            "{id}: {pid} is the framebroker-decoder of {url}"
        );
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap_or_else(|e| panic!("{id}: the decoder {pid}'s threads: {e}"))
            .count()
    };
    assert_eq!(
        threads("small", &small.url),
        1,
        "a 640x480 picture decodes on one thread"
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // On one core `auto` is one thread too, and the two rules cannot be told apart.
    if cores > 1 {
        let n = threads("large", &large.url);
        assert!(
            n > 1,
            "a 1280x720 picture decodes on auto's threads, not on one ({n})"
        );
    } else {
        eprintln!("one core: auto is one thread as well; the large case is not checked");
    }
}

#[test]
fn variants_are_outputs_of_the_one_own_decode() {
    use framebroker_client::VariantRequest;
    let cam = Camera::start(320, 240, 30, "smpte").unwrap();
    let ours = libav_broker(&[]);
    let reference = Broker::start(&["--decoder", "ffmpeg"]).unwrap();
    for b in [&ours, &reference] {
        let mut req = StartRequest::new("cam", &cam.url);
        req.variants = vec![
            VariantRequest::new("cam-small", Some((160, 120)), PixelFormat::Gray),
            VariantRequest::new("cam-rgb", None, PixelFormat::Rgb24),
        ];
        b.client().start(req).unwrap();
        for id in ["cam", "cam-small", "cam-rgb"] {
            live(&b.client(), id);
        }
    }
    let decoders = own_decoders(&cam.url);
    assert_eq!(
        decoders.len(),
        1,
        "one framebroker-decoder for the three: {decoders:?}"
    );
    let cmdline =
        String::from_utf8_lossy(&std::fs::read(format!("/proc/{}/cmdline", decoders[0])).unwrap())
            .replace('\0', " ");
    assert!(
        cmdline.contains("--output native --output 160x120 --output native"),
        "{cmdline}"
    );
    assert_eq!(
        processes_with_arg("ffmpeg", &cam.url),
        vec![reference.client().stats("cam").unwrap().ffmpeg_pid],
        "only the reference broker runs ffmpeg"
    );
    for (id, h) in [("cam", 240usize), ("cam-small", 120), ("cam-rgb", 240)] {
        let fa = ours
            .client()
            .attach_wait(id, READ)
            .unwrap()
            .next(READ)
            .unwrap();
        let fb = reference
            .client()
            .attach_wait(id, READ)
            .unwrap()
            .next(READ)
            .unwrap();
        assert!(fa.meta.stream_time.is_some(), "{id}: stream time");
        let bars = fa.data.len() / h * (h * 2 / 3);
        let (max, over) = diff(&fa.data[..bars], &fb.data[..bars], 3);
        println!("{id}: libav vs ffmpeg: max {max}, {over} bytes over 3");
        assert_eq!(
            over, 0,
            "{id}: {over} of {bars} bytes differ by more than 3 (max {max})"
        );
    }
}

#[test]
fn what_the_own_decoder_does_not_take_goes_to_ffmpeg() {
    let broker = libav_broker(&[]);
    let client = broker.client();
    start(
        &client,
        "pattern",
        "testsrc://?pattern=smptebars&size=160x120&rate=15",
        None,
        PixelFormat::Bgr24,
    );
    assert_eq!(
        processes_with_arg("ffmpeg", "smptebars=size=160x120").len(),
        1,
        "a test pattern is ffmpeg's"
    );
    assert!(processes_with_arg("framebroker-decoder", "")
        .iter()
        .all(|pid| {
            // Other tests' decoders may run; none of them belongs to this broker.
            !std::fs::read_to_string(format!("/proc/{pid}/status"))
                .unwrap_or_default()
                .contains(&format!("PPid:\t{}", broker.pid()))
        }));
}

#[test]
fn a_decoder_that_breaks_the_protocol_ends_its_run_with_the_reason() {
    // A stand-in decoder: answers --version, then writes garbage where the
    // geometry belongs and waits to be killed.
    let dir = TempDir::new("fbfake").unwrap();
    let fake = dir.path().join("framebroker-decoder");
    std::fs::write(
        &fake,
        "#!/bin/sh\n\
         [ \"$1\" = --version ] && { echo 'fake decoder'; exit 0; }\n\
         head -c 200 /dev/zero | tr '\\0' x\n\
         exec sleep 30\n",
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let cam = Camera::start(160, 120, 15, "smpte").unwrap();
    let broker = Broker::start(&[
        "--decoder",
        "libav",
        "--decoder-path",
        fake.to_str().unwrap(),
    ])
    .unwrap();
    let client = broker.client();
    client.start(StartRequest::new("cam", &cam.url)).unwrap();
    let err = wait_for(Duration::from_secs(10), || {
        client.stats("cam").ok()?.last_error
    })
    .expect("the run ends with an error");
    assert!(err.contains("broke its protocol"), "{err}");
    assert_ne!(client.stats("cam").unwrap().info.state, StreamState::Live);
    // The broker itself is fine: another stream (ffmpeg's) goes live.
    start(
        &client,
        "other",
        "testsrc://?size=64x48&rate=10",
        None,
        PixelFormat::Gray,
    );
}

#[test]
fn the_broker_refuses_to_start_without_a_working_decoder() {
    let out = std::process::Command::new(framebroker_tests::broker_bin())
        .args([
            "serve",
            "--socket",
            "/nonexistent-dir/fb.sock",
            "--decoder",
            "libav",
            "--decoder-path",
            "/nonexistent/framebroker-decoder",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--decoder libav") && err.contains("/nonexistent/framebroker-decoder"),
        "{err}"
    );
}

#[test]
fn auto_falls_back_to_ffmpeg_without_a_decoder() {
    // The default, `--decoder auto`: a machine without framebroker-decoder (a
    // cross build, `cargo install` of the broker alone) decodes with ffmpeg.
    let cam = Camera::start(160, 120, 15, "smpte").unwrap();
    // `--decoder auto` spelled out: CI also runs this suite with
    // FRAMEBROKER_DECODER=ffmpeg, which the flag overrides.
    let broker = Broker::start(&[
        "--decoder",
        "auto",
        "--decoder-path",
        "/nonexistent/framebroker-decoder",
    ])
    .unwrap();
    let client = broker.client();
    start(&client, "cam", &cam.url, None, PixelFormat::Bgr24);
    let pid = client.stats("cam").unwrap().ffmpeg_pid;
    assert!(
        processes_with_arg("ffmpeg", &cam.url).contains(&pid),
        "ffmpeg decodes"
    );
    assert!(own_decoders(&cam.url).is_empty());
    assert!(
        broker
            .log_text()
            .contains("ffmpeg decodes every stream (no framebroker-decoder"),
        "the log says why"
    );
}

#[test]
fn auto_uses_the_decoder_next_to_the_broker() {
    let cam = Camera::start(160, 120, 15, "smpte").unwrap();
    assert!(workspace_bin("framebroker-decoder").is_file());
    let broker = Broker::start(&["--decoder", "auto"]).unwrap();
    let client = broker.client();
    start(&client, "cam", &cam.url, None, PixelFormat::Bgr24);
    assert_eq!(
        own_decoders(&cam.url),
        vec![client.stats("cam").unwrap().ffmpeg_pid]
    );
}

#[test]
fn the_decoder_dies_with_the_broker() {
    let cam = Camera::start(160, 120, 15, "smpte").unwrap();
    let mut broker = libav_broker(&[]);
    let client = broker.client();
    start(&client, "cam", &cam.url, None, PixelFormat::Bgr24);
    let pids = own_decoders(&cam.url);
    assert_eq!(pids.len(), 1);
    broker.kill(); // SIGKILL: no chance to clean up
    assert!(
        wait_for(Duration::from_secs(5), || own_decoders(&cam.url)
            .is_empty()
            .then_some(()))
        .is_some(),
        "the decoder outlived its broker: {:?}",
        own_decoders(&cam.url)
    );
}
