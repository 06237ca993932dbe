//! The NUT reader on real ffmpeg output (generated at test time) and on damaged
//! copies of it: every frame and pts as ffmpeg wrote them, and a clear error,
//! never a panic or a misframed frame, on bad bytes.

use std::io::Cursor;
use std::process::Command;

use framebroker::nut::{NutError, NutReader};
use proptest::prelude::*;

const W: u32 = 64;
const H: u32 = 48;
const FRAMES: i64 = 12;
const FRAME: usize = (W * H * 3 / 2) as usize;

/// Each frame's pts in 1/90000 s: 40 ms apart, every third one 5 ms late, and
/// a jump of 1,000,000 ticks at frame 6 (beyond what 14 pts bits can code as a
/// difference, so the full pts is coded).
fn want_pts(n: i64) -> i64 {
    n * 3600 + if n % 3 == 1 { 450 } else { 0 } + if n >= 6 { 1_000_000 } else { 0 }
}

fn ffmpeg(size: &str, frames: i64, pix_fmt: &str, format: &[&str]) -> Vec<u8> {
    let graph = format!("testsrc2=size={size}:rate=25");
    let setpts = "settb=1/90000,setpts=N*3600+eq(mod(N\\,3)\\,1)*450+gte(N\\,6)*1000000";
    let frames = frames.to_string();
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin"])
        .args([
            "-f",
            "lavfi",
            "-i",
            &graph,
            "-frames:v",
            &frames,
            "-vf",
            setpts,
        ])
        .args(["-fps_mode", "passthrough", "-enc_time_base", "1/90000"])
        .args(["-c:v", "rawvideo", "-pix_fmt", pix_fmt])
        .args(format)
        .arg("pipe:1")
        .output()
        .expect("ffmpeg runs (it is a requirement of the project)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn nut(size: &str, frames: i64, pix_fmt: &str) -> Vec<u8> {
    ffmpeg(size, frames, pix_fmt, &["-f", "nut"])
}

fn raw(size: &str, frames: i64, pix_fmt: &str) -> Vec<u8> {
    ffmpeg(size, frames, pix_fmt, &["-f", "rawvideo"])
}

/// Every frame of a stream, or the first error.
fn read_all(bytes: &[u8], frame: usize) -> (Vec<(i64, Vec<u8>)>, Option<NutError>) {
    let mut out = Vec::new();
    let mut r = match NutReader::new(Cursor::new(bytes), frame as u64) {
        Ok(r) => r,
        Err(e) => return (out, Some(e)),
    };
    let mut buf = vec![0u8; frame];
    loop {
        match r.read_frame(&mut buf) {
            Ok(Some(pts)) => out.push((pts, buf.clone())),
            Ok(None) => return (out, None),
            Err(e) => return (out, Some(e)),
        }
    }
}

#[test]
fn frames_and_pts_are_ffmpegs() {
    let size = format!("{W}x{H}");
    let bytes = nut(&size, FRAMES, "yuv420p");
    let want = raw(&size, FRAMES, "yuv420p");
    let r = NutReader::new(Cursor::new(&bytes), FRAME as u64).unwrap();
    let s = r.stream().clone();
    assert_eq!((s.width, s.height, &s.fourcc[..]), (W, H, &b"I420"[..]));
    assert_eq!(s.time_base, (1, 90000));
    assert_eq!(s.pts_ns(want_pts(1)), 45_000_000);
    let (frames, err) = read_all(&bytes, FRAME);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(frames.len(), FRAMES as usize);
    for (n, (pts, payload)) in frames.iter().enumerate() {
        assert_eq!(*pts, want_pts(n as i64), "pts of frame {n}");
        assert_eq!(
            payload[..],
            want[n * FRAME..(n + 1) * FRAME],
            "payload of frame {n}"
        );
    }
}

#[test]
fn big_frames_and_other_formats() {
    for (pix_fmt, fourcc, bpp2) in [
        ("yuv420p", &b"I420"[..], 3),
        ("nv12", b"NV12", 3),
        ("bgr24", b"BGR\x18", 6),
    ] {
        let (w, h) = (1920usize, 1080usize);
        let frame = w * h * bpp2 / 2;
        let bytes = nut("1920x1080", 3, pix_fmt);
        let want = raw("1920x1080", 3, pix_fmt);
        let r = NutReader::new(Cursor::new(&bytes), frame as u64).unwrap();
        assert_eq!((r.stream().width, r.stream().height), (1920, 1080));
        assert_eq!(r.stream().fourcc, fourcc, "{pix_fmt}");
        let (frames, err) = read_all(&bytes, frame);
        assert!(err.is_none(), "{pix_fmt}: {err:?}");
        assert_eq!(frames.len(), 3);
        for (n, (pts, payload)) in frames.iter().enumerate() {
            assert_eq!(*pts, want_pts(n as i64));
            assert!(
                payload[..] == want[n * frame..(n + 1) * frame],
                "{pix_fmt} frame {n}"
            );
        }
        // Container overhead: a few dozen bytes per frame.
        println!(
            "{pix_fmt} 1080p: {} bytes of NUT for {} of frames",
            bytes.len(),
            want.len()
        );
        assert!(bytes.len() - want.len() < 1024);
    }
}

#[test]
fn a_frame_bigger_than_the_geometry_is_refused_before_it_is_read() {
    let bytes = nut(&format!("{W}x{H}"), 2, "yuv420p");
    let mut r = NutReader::new(Cursor::new(&bytes), FRAME as u64 - 1).unwrap();
    match r.next_frame() {
        Err(NutError::FrameSize { size, expected, .. }) => {
            assert_eq!((size, expected), (FRAME as u64, FRAME - 1))
        }
        other => panic!("{other:?}"),
    }
    // A slot of the wrong size for a frame within the bound: refused too.
    let mut r = NutReader::new(Cursor::new(&bytes), FRAME as u64).unwrap();
    let mut small = vec![0u8; FRAME - 2];
    let e = r.read_frame(&mut small).unwrap_err();
    assert!(matches!(e, NutError::FrameSize { .. }), "{e}");
}

#[test]
fn damaged_headers_fail_their_checksum() {
    let bytes = nut(&format!("{W}x{H}"), 3, "yuv420p");
    // The main header's body starts after the file id (25), the startcode (8)
    // and a one-byte forward pointer.
    let mut bad = bytes.clone();
    bad[25 + 8 + 1 + 3] ^= 0x01;
    let (_, err) = read_all(&bad, FRAME);
    assert!(
        matches!(
            err,
            Some(NutError::Checksum { .. }) | Some(NutError::Invalid { .. })
        ),
        "{err:?}"
    );
    let mut bad = bytes.clone();
    bad[0] = b'm';
    assert!(matches!(read_all(&bad, FRAME).1, Some(NutError::NotNut)));
    // Damage the first frame header's pts (the byte after its frame code and
    // coded flags). ffmpeg puts a CRC on the headers of frames over 64 KiB
    // (twice its max_distance): there it is a checksum error...
    let frame = 320 * 240 * 3 / 2;
    let big = nut("320x240", 2, "yuv420p");
    let mut bad = big.clone();
    bad[find_first_frame(&big) + 2] ^= 0x01;
    let (frames, err) = read_all(&bad, frame);
    assert!(frames.is_empty());
    assert!(
        matches!(
            err,
            Some(NutError::Checksum {
                what: "frame header",
                ..
            })
        ),
        "{err:?}"
    );
    // ... and on smaller frames, which have none (a damaged pts there goes
    // unnoticed), a damaged size is still refused.
    let mut bad = bytes.clone();
    bad[find_first_frame(&bytes) + 2] ^= 0x04; // in the size
    let (frames, err) = read_all(&bad, FRAME);
    assert!(frames.is_empty());
    assert!(matches!(err, Some(NutError::FrameSize { .. })), "{err:?}");
}

/// Offset of the first frame: after the first syncpoint packet.
fn find_first_frame(bytes: &[u8]) -> usize {
    let sync = 0x4E4B_E4AD_EECA_4569u64.to_be_bytes();
    let at = bytes.windows(8).position(|w| w == sync).unwrap();
    let forward = bytes[at + 8] as usize; // small: one byte
    at + 8 + 1 + forward
}

#[test]
fn a_cut_stream_ends_with_a_truncation_error_or_cleanly_between_packets() {
    let bytes = nut(&format!("{W}x{H}"), 3, "yuv420p");
    let (full, _) = read_all(&bytes, FRAME);
    let cuts = (0..bytes.len().min(600)).chain((600..bytes.len()).step_by(61));
    for cut in cuts {
        let (frames, err) = read_all(&bytes[..cut], FRAME);
        // Never a frame that was not in the stream, and whatever was read is
        // a prefix of the full stream.
        assert!(frames.len() < full.len() || cut == bytes.len());
        assert_eq!(frames[..], full[..frames.len()], "cut at {cut}");
        match err {
            None
            | Some(NutError::Truncated { .. })
            | Some(NutError::NotNut)
            | Some(NutError::Invalid { .. }) => {}
            Some(e) => panic!("cut at {cut}: {e}"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let mut bytes = b"nut/multimedia container\0".to_vec();
        bytes.extend(tail);
        let _ = read_all(&bytes, FRAME);
    }

    #[test]
    fn damaged_real_streams_never_panic(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        thread_local!(static STREAM: Vec<u8> = nut(&format!("{W}x{H}"), 3, "yuv420p"));
        let mut bytes = STREAM.with(|s| s.clone());
        for (i, x) in flips {
            let i = i.index(bytes.len());
            bytes[i] ^= x;
        }
        let (frames, _) = read_all(&bytes, FRAME);
        prop_assert!(frames.len() <= 3);
    }
}
