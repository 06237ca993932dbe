//! What converting the decoder's frame into the ring's format costs per frame,
//! beside a plain copy of the ring's frame measured in the same run (issue 17).
//! Prints, asserts nothing. The picture is the like-camera's (testsrc2 with
//! noise, made by ffmpeg).
//!
//!     cargo run --release -p framebroker --example convert_cost [-- 640x480,1920x1080]

use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};

use framebroker::convert::{Colour, Converter, Range, SourceFormat};
use framebroker_proto::{Geometry, PixelFormat};

fn frame(w: u32, h: u32) -> Vec<u8> {
    let graph = format!("testsrc2=size={w}x{h}:rate=30,noise=alls=10:allf=t");
    let out = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-nostdin",
            "-f",
            "lavfi",
            "-i",
            &graph,
        ])
        .args([
            "-frames:v",
            "1",
            "-pix_fmt",
            "yuv420p",
            "-f",
            "rawvideo",
            "pipe:1",
        ])
        .output()
        .expect("ffmpeg runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Median time of one call over 7 batches of at most `budget / 7` each.
fn time_per_call(budget: Duration, mut f: impl FnMut()) -> Duration {
    f(); // fault pages in, warm caches
    let mut per = Vec::new();
    for _ in 0..7 {
        let start = Instant::now();
        let mut n = 0u32;
        while n < 1000 && (n < 3 || start.elapsed() < budget / 7) {
            f();
            n += 1;
        }
        per.push(start.elapsed() / n);
    }
    per.sort();
    per[3]
}

fn main() {
    let sizes = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "640x480,1920x1080".into());
    #[cfg(target_arch = "x86_64")]
    println!("avx2: {}", std::is_x86_feature_detected!("avx2"));
    for size in sizes.split(',') {
        let (w, h) = size.split_once('x').expect("WxH");
        let (w, h): (u32, u32) = (w.parse().unwrap(), h.parse().unwrap());
        let yuv = frame(w, h);
        let ys = (w * h) as usize;
        let cs = ys / 4;
        let mut nv12 = yuv[..ys].to_vec();
        for i in 0..cs {
            nv12.extend([yuv[ys + i], yuv[ys + cs + i]]);
        }
        let bgr_bytes = ys * 3;
        let src = vec![1u8; bgr_bytes];
        let mut dst = vec![0u8; bgr_bytes];
        let copy = time_per_call(Duration::from_millis(700), || {
            dst.copy_from_slice(black_box(&src));
            black_box(&mut dst);
        });
        println!(
            "{size}: memcpy of a bgr24 frame ({bgr_bytes} bytes): {:.3} ms",
            copy.as_secs_f64() * 1e3
        );
        let full = Colour {
            range: Range::Full,
            ..Colour::DEFAULT
        };
        // A limited-range source (most cameras) into every ring format, then a
        // full-range one (`yuvj420p`) into the formats where the range changes.
        let limited = PixelFormat::ALL.map(|f| (Colour::DEFAULT, f));
        let ranged = [PixelFormat::Yuv420p, PixelFormat::Nv12].map(|f| (full, f));
        for (src_fmt, frame) in [(SourceFormat::Yuv420p, &yuv), (SourceFormat::Nv12, &nv12)] {
            for (colour, dst_fmt) in limited.iter().chain(&ranged).copied() {
                let g = Geometry {
                    width: w,
                    height: h,
                    pixel_format: dst_fmt,
                };
                let conv = Converter::new(src_fmt, colour, g).unwrap();
                let mut out = vec![0u8; conv.frame_bytes()];
                let t = time_per_call(Duration::from_millis(700), || {
                    conv.convert(black_box(frame), &mut out).unwrap();
                    black_box(&mut out);
                });
                let ms = t.as_secs_f64() * 1e3;
                let range = match colour.range {
                    Range::Limited => "",
                    Range::Full => " (full range)",
                };
                println!(
                    "{size}: {src_fmt:?}{range} -> {dst_fmt}: {ms:.3} ms/frame, {:.2} % of a core at 30 fps, \
                     {:.2}x the bgr24 memcpy",
                    ms * 30.0 / 10.0,
                    t.as_secs_f64() / copy.as_secs_f64()
                );
            }
        }
    }
}
