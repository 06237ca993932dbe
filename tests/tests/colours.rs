//! End to end through the broker: a reader's frame against ffmpeg's own
//! conversion (`-pix_fmt bgr24` / `gray`) of the same source frame, for both
//! hand-overs: `nut` (the decoder's own format, converted by the broker) and
//! `rawvideo` (ffmpeg converts, the original path).
//!
//! The source is a file the broker decodes with the real ffmpeg (`file://`,
//! `--allow-files`): one picture (the SMPTE bars, and the like-camera's
//! picture, testsrc2 with noise) encoded as H.264 High, every frame the same
//! intra frame, so any frame the reader gets is "the same source frame" as
//! ffmpeg's first. Untagged (BT.601), BT.709-tagged and full-range (yuvj420p)
//! files check that the matrix and range follow the stream's signalling.
//! Tolerance as in broker/tests/convert_accuracy.rs: bgr24 within 3 levels per
//! channel where 16 <= Y <= 235 and on 99.9 % of all pixels; gray exact.

use std::process::Command;
use std::time::Duration;

use framebroker_client::{PixelFormat, StartRequest, VariantRequest};
use framebroker_tests::{processes_with_arg, wait_for, Broker, TempDir};

const W: u32 = 320;
const H: u32 = 240;

fn ffmpeg(args: &[&str]) -> Vec<u8> {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y"])
        .args(args)
        .output()
        .expect("ffmpeg runs");
    assert!(
        out.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A clip of 60 identical intra frames of `picture`, with the given
/// ffmpeg output options (pixel format and colour tags).
fn clip(dir: &TempDir, name: &str, picture: &str, tags: &[&str]) -> String {
    let path = dir.path().join(format!("{name}.mkv"));
    let path = path.to_str().unwrap().to_string();
    let graph = format!("{picture},loop=loop=59:size=1:start=0");
    let mut args = vec!["-f", "lavfi", "-i", &graph, "-frames:v", "60"];
    args.extend([
        "-c:v", "libx264", "-preset", "veryfast", "-g", "1", "-qp", "18",
    ]);
    args.extend(tags);
    args.push(&path);
    ffmpeg(&args);
    path
}

/// ffmpeg's conversion of the clip's first frame.
fn reference(path: &str, pix_fmt: &str) -> Vec<u8> {
    ffmpeg(&[
        "-i",
        path,
        "-frames:v",
        "1",
        "-pix_fmt",
        pix_fmt,
        "-f",
        "rawvideo",
        "pipe:1",
    ])
}

/// One frame of `stream`, read once the stream is live.
fn frame(broker: &Broker, stream: &str) -> Vec<u8> {
    let c = broker.client();
    let mut r = c.attach_wait(stream, Duration::from_secs(20)).unwrap();
    let mut buf = vec![0u8; r.frame_bytes()];
    // A few frames in: the picture is the same in every frame.
    for _ in 0..3 {
        r.next_into(&mut buf, Duration::from_secs(10)).unwrap();
    }
    buf
}

/// (max difference where 16 <= Y <= 235 or full range, pixels over 3, max overall)
fn compare_bgr(got: &[u8], want: &[u8], y: &[u8], full: bool) -> (u8, usize, u8) {
    assert_eq!(got.len(), want.len());
    let (mut in_range, mut over, mut max) = (0u8, 0usize, 0u8);
    for (i, (a, b)) in got.chunks_exact(3).zip(want.chunks_exact(3)).enumerate() {
        let d = (0..3).map(|c| a[c].abs_diff(b[c])).max().unwrap();
        max = max.max(d);
        if full || (16..=235).contains(&y[i]) {
            in_range = in_range.max(d);
        }
        if d > 3 {
            over += 1;
        }
    }
    (in_range, over, max)
}

fn check(handover: &str, name: &str, path: &str, full: bool) {
    let broker = Broker::start(&["--allow-files", "--handover", handover]).unwrap();
    let c = broker.client();
    let mut req = StartRequest::new("c", format!("file://{path}"));
    req.variants = vec![VariantRequest::new("c.gray", None, PixelFormat::Gray)];
    c.start(req).unwrap();
    let bgr = frame(&broker, "c");
    let gray = frame(&broker, "c.gray");
    // The hand-over the broker's ffmpeg really uses.
    let pids = wait_for(Duration::from_secs(5), || {
        Some(processes_with_arg("ffmpeg", path)).filter(|p| !p.is_empty())
    })
    .expect("the stream's ffmpeg");
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", pids[0])).unwrap();
    let nut = cmdline.split(|b| *b == 0).any(|a| a == b"nut");
    assert_eq!(nut, handover == "nut", "{name}: ffmpeg's hand-over");

    let want = reference(path, "bgr24");
    let want_gray = reference(path, "gray");
    let y = &reference(path, "yuv420p")[..(W * H) as usize];
    let (in_range, over, max) = compare_bgr(&bgr, &want, y, full);
    let gray_diff = gray.iter().zip(&want_gray).filter(|(a, b)| a != b).count();
    println!(
        "{handover:8} {name:16} bgr24: max {in_range} where 16<=Y<=235, {over} pixels over 3, max {max}; \
         gray: {gray_diff} pixels differ"
    );
    assert!(
        in_range <= 3,
        "{handover} {name}: {in_range} > 3 where 16 <= Y <= 235"
    );
    assert!(
        over * 1000 <= (W * H) as usize,
        "{handover} {name}: {over} pixels over 3"
    );
    assert_eq!(
        gray_diff, 0,
        "{handover} {name}: gray differs from ffmpeg's"
    );
}

fn clips(dir: &TempDir) -> Vec<(&'static str, String, bool)> {
    let bars = format!("smptebars=size={W}x{H}:rate=30");
    let like = format!("testsrc2=size={W}x{H}:rate=30,noise=alls=10:allf=t");
    vec![
        (
            "bars untagged",
            clip(dir, "bars", &bars, &["-pix_fmt", "yuv420p"]),
            false,
        ),
        (
            "bars bt709",
            clip(
                dir,
                "bars709",
                &bars,
                &[
                    "-pix_fmt",
                    "yuv420p",
                    "-colorspace",
                    "bt709",
                    "-color_primaries",
                    "bt709",
                    "-color_trc",
                    "bt709",
                    "-color_range",
                    "tv",
                ],
            ),
            false,
        ),
        (
            "bars full range",
            clip(
                dir,
                "barspc",
                &bars,
                &["-pix_fmt", "yuvj420p", "-color_range", "pc"],
            ),
            true,
        ),
        (
            "like-camera",
            clip(dir, "like", &like, &["-pix_fmt", "yuv420p"]),
            false,
        ),
    ]
}

#[test]
fn a_readers_frame_matches_ffmpegs_own_conversion_on_both_hand_overs() {
    let dir = TempDir::new("colours").unwrap();
    let clips = clips(&dir);
    // The tags are in the files as ffmpeg reads them.
    for ((name, path, _), want) in clips
        .iter()
        .zip(["unknown,", "tv,bt709", "pc,", "unknown,"])
    {
        let out = Command::new("ffprobe")
            .args(["-v", "error", "-select_streams", "v:0"])
            .args([
                "-show_entries",
                "stream=color_range,color_space",
                "-of",
                "csv=p=0",
            ])
            .arg(path)
            .output()
            .expect("ffprobe runs");
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.trim().starts_with(want),
            "{name}: ffprobe says {said:?}"
        );
    }
    for (name, path, full) in clips {
        for handover in ["nut", "rawvideo"] {
            check(handover, name, &path, full);
        }
    }
}

/// A decoder output the broker does not convert itself (H.264 4:4:4 decodes to
/// yuv444p): the first run ends with the reason, the next has ffmpeg convert,
/// and the frames are then ffmpeg's own.
#[test]
fn what_the_broker_cannot_convert_falls_back_to_ffmpegs_conversion() {
    let dir = TempDir::new("colours444").unwrap();
    let bars = format!("smptebars=size={W}x{H}:rate=30");
    let path = clip(&dir, "bars444", &bars, &["-pix_fmt", "yuv444p"]);
    let broker = Broker::start(&["--allow-files", "--handover", "nut"]).unwrap();
    let c = broker.client();
    c.start(StartRequest::new("c", format!("file://{path}")))
        .unwrap();
    let got = frame(&broker, "c");
    assert_eq!(got, reference(&path, "bgr24"), "ffmpeg's own conversion");
    let stats = c.stats("c").unwrap();
    assert!(stats.reconnects >= 1, "one run ended to fall back");
    let pids = processes_with_arg("ffmpeg", &path);
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", pids[0])).unwrap();
    assert!(
        !cmdline.split(|b| *b == 0).any(|a| a == b"nut"),
        "the running ffmpeg converts"
    );
    assert!(
        broker
            .log_text()
            .contains("does not convert this output itself (the decoder puts out yuv444p)"),
        "the reason is logged"
    );
}
