//! The converter against ffmpeg's own conversion of the same samples (real
//! ffmpeg, frames generated at test time): what a ring holds must not depend on
//! whether ffmpeg or the broker converted the decoder's output.
//!
//! Tolerances, measured on x86-64 with ffmpeg 5.1 and written down in
//! `framebroker::convert`: gray, yuv420p and nv12 are exact; bgr24/rgb24 differ
//! by at most 3 levels per channel wherever 16 <= Y <= 235, and on at least
//! 99.9 % of all pixels. Below Y = 16 swscale's x86 code clamps `Y - 16` at 0
//! before it adds chroma, so dark saturated pixels can be off by more there
//! (ffmpeg is the inexact side).

use std::path::PathBuf;
use std::process::Command;

use framebroker::convert::{Colour, Converter, Matrix, Range, SourceFormat};
use framebroker_proto::{Geometry, PixelFormat};

/// Bound per channel where 16 <= Y <= 235, and on 99.9 % of all pixels.
const RGB_TOLERANCE: u8 = 3;

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("fb-convert-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ffmpeg(args: &[&str]) -> Vec<u8> {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin"])
        .args(args)
        .args(["-f", "rawvideo", "pipe:1"])
        .output()
        .expect("ffmpeg runs (it is a requirement of the project)");
    assert!(
        out.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// One yuv420p frame of a lavfi source.
fn lavfi_frame(graph: &str) -> Vec<u8> {
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        graph,
        "-frames:v",
        "1",
        "-pix_fmt",
        "yuv420p",
    ])
}

/// A frame holding every value 0..=255 in Y, U and V (512x16: chroma is 256 wide).
fn ramp() -> (u32, u32, Vec<u8>) {
    let (w, h) = (512u32, 16u32);
    let mut f = Vec::new();
    for _ in 0..h {
        f.extend((0..w).map(|x| (x / 2) as u8));
    }
    for _ in 0..h / 2 {
        f.extend((0..w / 2).map(|x| x as u8));
    }
    for _ in 0..h / 2 {
        f.extend((0..w / 2).map(|x| 255 - x as u8));
    }
    (w, h, f)
}

/// ffmpeg's conversion of raw `yuv` (read as `colour`) into `pix_fmt`.
fn reference(
    dir: &Scratch,
    yuv: &[u8],
    w: u32,
    h: u32,
    colour: Colour,
    cs: Option<&str>,
    pix_fmt: &str,
) -> Vec<u8> {
    let input = dir.path("in.yuv");
    std::fs::write(&input, yuv).unwrap();
    let size = format!("{w}x{h}");
    let in_fmt = match colour.range {
        Range::Limited => "yuv420p",
        Range::Full => "yuvj420p",
    };
    let range = match colour.range {
        Range::Limited => "tv",
        Range::Full => "pc",
    };
    let vf = match cs {
        Some(cs) => format!("setparams=range={range}:colorspace={cs}"),
        None => format!("setparams=range={range}"),
    };
    let input = input.to_str().unwrap();
    let mut args = vec![
        "-f", "rawvideo", "-pix_fmt", in_fmt, "-s", &size, "-i", input,
    ];
    if cs.is_some() || colour.range == Range::Full {
        args.extend(["-vf", vf.as_str()]);
    }
    args.extend(["-pix_fmt", pix_fmt]);
    ffmpeg(&args)
}

fn to_nv12(yuv: &[u8], w: u32, h: u32) -> Vec<u8> {
    let ys = (w * h) as usize;
    let cs = (w.div_ceil(2) * h.div_ceil(2)) as usize;
    let mut out = yuv[..ys].to_vec();
    for i in 0..cs {
        out.push(yuv[ys + i]);
        out.push(yuv[ys + cs + i]);
    }
    out
}

fn ours(
    src: SourceFormat,
    frame: &[u8],
    w: u32,
    h: u32,
    colour: Colour,
    dst: PixelFormat,
) -> Vec<u8> {
    let geometry = Geometry {
        width: w,
        height: h,
        pixel_format: dst,
    };
    let conv = Converter::new(src, colour, geometry).unwrap();
    let mut out = vec![0xA5u8; conv.frame_bytes()];
    conv.convert(frame, &mut out).unwrap();
    out
}

struct Diff {
    max: [u8; 3],
    max_in_range: u8,
    over: usize,
    mean: f64,
}

/// Per-channel differences of two packed 3-channel frames; "in range" are the
/// pixels whose Y is 16..=235 (for a full-range source: every pixel).
fn diff3(a: &[u8], b: &[u8], y: &[u8], full: bool) -> Diff {
    assert_eq!(a.len(), b.len());
    let mut d = Diff {
        max: [0; 3],
        max_in_range: 0,
        over: 0,
        mean: 0.0,
    };
    let mut sum = 0u64;
    for (i, (pa, pb)) in a.chunks_exact(3).zip(b.chunks_exact(3)).enumerate() {
        let in_range = full || (16..=235).contains(&y[i]);
        let mut worst = 0;
        for c in 0..3 {
            let e = pa[c].abs_diff(pb[c]);
            d.max[c] = d.max[c].max(e);
            worst = worst.max(e);
            sum += u64::from(e);
        }
        if in_range {
            d.max_in_range = d.max_in_range.max(worst);
        }
        if worst > RGB_TOLERANCE {
            d.over += 1;
        }
    }
    d.mean = sum as f64 / a.len() as f64;
    d
}

/// (name in the output, range, ffmpeg's colourspace tag or None)
const TAGS: &[(&str, Range, Option<&str>)] = &[
    ("untagged", Range::Limited, None),
    ("smpte170m", Range::Limited, Some("smpte170m")),
    ("bt470bg", Range::Limited, Some("bt470bg")),
    ("bt709", Range::Limited, Some("bt709")),
    ("pc untagged", Range::Full, None),
    ("pc bt470bg", Range::Full, Some("bt470bg")),
    ("pc bt709", Range::Full, Some("bt709")),
    ("fcc", Range::Limited, Some("fcc")),
    ("bt2020nc", Range::Limited, Some("bt2020nc")),
];

fn colour_of(range: Range, cs: Option<&str>) -> Colour {
    let r = match range {
        Range::Limited => "tv",
        Range::Full => "pc",
    };
    Colour::from_ffmpeg(Some(r), cs).expect("a tag we convert")
}

/// `natural`: a picture, not a synthetic table of extremes, where at least
/// 99.9 % of all pixels (dark ones included) are held to the tolerance too.
fn check_rgb(name: &str, w: u32, h: u32, yuv: &[u8], natural: bool) {
    let dir = Scratch::new(name);
    let ys = (w * h) as usize;
    let nv12 = to_nv12(yuv, w, h);
    for &(tag, range, cs) in TAGS {
        let colour = colour_of(range, cs);
        for fmt in [PixelFormat::Bgr24, PixelFormat::Rgb24] {
            let want = reference(&dir, yuv, w, h, colour, cs, fmt.name());
            for (src, frame) in [
                (SourceFormat::Yuv420p, yuv),
                (SourceFormat::Nv12, &nv12[..]),
            ] {
                let got = ours(src, frame, w, h, colour, fmt);
                let d = diff3(&got, &want, &yuv[..ys], range == Range::Full);
                let pixels = ys;
                println!(
                    "{name} {w}x{h} {tag:12} {fmt} from {src:?}: max per channel {:?}, max where 16<=Y<=235 {}, \
                     {} of {pixels} pixels over {RGB_TOLERANCE}, mean {:.3}",
                    d.max, d.max_in_range, d.over, d.mean
                );
                assert!(
                    d.max_in_range <= RGB_TOLERANCE,
                    "{name} {tag} {fmt} from {src:?}: {} > {RGB_TOLERANCE} where 16 <= Y <= 235",
                    d.max_in_range
                );
                assert!(
                    !natural || d.over * 1000 <= pixels,
                    "{name} {tag} {fmt} from {src:?}: {} of {pixels} pixels differ by more than {RGB_TOLERANCE}",
                    d.over
                );
            }
        }
    }
}

#[test]
fn bgr_and_rgb_match_ffmpeg_on_smpte_bars() {
    let (w, h) = (320, 240);
    check_rgb(
        "smptebars",
        w,
        h,
        &lavfi_frame(&format!("smptebars=size={w}x{h}")),
        true,
    );
}

#[test]
fn bgr_and_rgb_match_ffmpeg_on_the_like_camera_picture() {
    // The picture rtsp_camera.py --like-camera encodes: testsrc2 with temporal noise.
    let (w, h) = (640, 480);
    let graph = format!("testsrc2=size={w}x{h}:rate=30,noise=alls=10:allf=t");
    check_rgb("like-camera", w, h, &lavfi_frame(&graph), true);
}

#[test]
fn bgr_and_rgb_match_ffmpeg_on_every_value() {
    let (w, h, f) = ramp();
    // Every Y below 16 meets every chroma here: 6 % of the pixels are in the
    // range where ffmpeg clamps early, so only the 16..=235 bound applies.
    check_rgb("ramp", w, h, &f, false);
}

/// The tags change ffmpeg's reference, so the comparison above is one of matrices
/// and ranges, not just of pictures: reading a BT.709 stream as BT.601 (or a
/// full-range one as limited) would fail it by far.
#[test]
fn the_signalled_matrix_and_range_matter() {
    let dir = Scratch::new("matter");
    let (w, h) = (320, 240);
    let yuv = lavfi_frame(&format!("smptebars=size={w}x{h}"));
    let ys = (w * h) as usize;
    let bt709 = colour_of(Range::Limited, Some("bt709"));
    let want = reference(&dir, &yuv, w, h, bt709, Some("bt709"), "bgr24");
    for wrong in [Colour::DEFAULT, colour_of(Range::Full, Some("bt709"))] {
        let got = ours(SourceFormat::Yuv420p, &yuv, w, h, wrong, PixelFormat::Bgr24);
        let d = diff3(&got, &want, &yuv[..ys], false);
        println!("bt709 read as {wrong:?}: max per channel {:?}", d.max);
        assert!(
            d.max.iter().any(|&m| m > 10),
            "{wrong:?} vs bt709: {:?}",
            d.max
        );
    }
}

/// gray, yuv420p and nv12 rings are exact: the same integer range conversion as
/// swscale, over every value 0..=255, from limited and full range, from yuv420p
/// and nv12 sources.
#[test]
fn gray_yuv420p_and_nv12_are_exact() {
    let dir = Scratch::new("exact");
    let (rw, rh, ramp) = ramp();
    let bars = lavfi_frame("smptebars=size=320x240");
    for (name, w, h, yuv) in [("ramp", rw, rh, ramp), ("smptebars", 320, 240, bars)] {
        let nv12 = to_nv12(&yuv, w, h);
        for range in [Range::Limited, Range::Full] {
            let colour = Colour {
                matrix: Matrix::Bt601,
                range,
            };
            for fmt in [PixelFormat::Gray, PixelFormat::Yuv420p, PixelFormat::Nv12] {
                let want = reference(&dir, &yuv, w, h, colour, None, fmt.name());
                for (src, frame) in [
                    (SourceFormat::Yuv420p, &yuv[..]),
                    (SourceFormat::Nv12, &nv12[..]),
                ] {
                    let got = ours(src, frame, w, h, colour, fmt);
                    assert_eq!(got.len(), want.len());
                    let bad = got.iter().zip(&want).filter(|(a, b)| a != b).count();
                    assert_eq!(
                        bad, 0,
                        "{name} {range:?} {fmt} from {src:?}: {bad} bytes differ from ffmpeg"
                    );
                }
            }
        }
    }
}

/// ffmpeg's own conversion at odd sizes is far from any exact one (up to 248
/// levels on `testsrc=size=321x241`), so the converter refuses them and such
/// streams keep ffmpeg's conversion; a bad source size changes nothing.
#[test]
fn odd_sizes_and_wrong_lengths_are_refused() {
    for (w, h) in [(321, 240), (320, 241)] {
        let g = Geometry {
            width: w,
            height: h,
            pixel_format: PixelFormat::Bgr24,
        };
        let e = Converter::new(SourceFormat::Yuv420p, Colour::DEFAULT, g).unwrap_err();
        assert!(e.to_string().contains("odd width or height"), "{e}");
    }
    let g = Geometry {
        width: 64,
        height: 48,
        pixel_format: PixelFormat::Bgr24,
    };
    let conv = Converter::new(SourceFormat::Nv12, Colour::DEFAULT, g).unwrap();
    assert_eq!(conv.source_bytes(), 64 * 48 * 3 / 2);
    let mut dst = vec![7u8; conv.frame_bytes()];
    let e = conv
        .convert(&vec![0; conv.source_bytes() - 1], &mut dst)
        .unwrap_err();
    assert!(e.to_string().contains("4607 bytes, 4608 expected"), "{e}");
    let e = conv
        .convert(&vec![0; conv.source_bytes()], &mut dst[1..])
        .unwrap_err();
    assert!(e.to_string().contains("destination has 9215 bytes"), "{e}");
    assert!(
        dst.iter().all(|&b| b == 7),
        "a refused frame must not touch the slot"
    );
    assert_eq!(Colour::from_ffmpeg(None, Some("ycgco")), None);
    assert_eq!(Colour::from_ffmpeg(None, Some("smpte240m")), None);
    assert_eq!(
        Colour::from_ffmpeg(Some("pc"), Some("bt709")),
        Some(Colour {
            matrix: Matrix::Bt709,
            range: Range::Full
        })
    );
}
