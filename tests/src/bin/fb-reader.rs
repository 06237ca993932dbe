//! A reader process for the cross-process tests and benchmarks: attaches to a
//! stream and prints one JSON line (`ReadRecord`) per frame read.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use framebroker_client::Client;
use framebroker_proto::ring::monotonic_ns;
use framebroker_tests::{sample_bars, ReadRecord};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    socket: PathBuf,
    #[arg(long)]
    stream: String,
    /// Frames to read.
    #[arg(long, default_value_t = 30)]
    count: u64,
    /// `latest` or `next`.
    #[arg(long, default_value = "next")]
    mode: String,
    /// Print "attached" and wait for a line on stdin before reading.
    #[arg(long)]
    sync_start: bool,
    /// Sleep this long after each frame (a slow consumer), ms.
    #[arg(long, default_value_t = 0)]
    work_ms: u64,
    /// Print a bare "f" line per frame instead of its record (no checksum, no
    /// bars, no JSON): a program that only reads, as `bench/consumer.py` does
    /// with cv2, for the CPU benchmark.
    #[arg(long)]
    bare: bool,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let client = Client::connect_to(&a.socket)?;
    let mut reader = client.attach_wait(&a.stream, Duration::from_secs(20))?;
    let (w, h) = (reader.width(), reader.height());
    let mut out = std::io::stdout().lock();
    if a.sync_start {
        writeln!(out, "attached")?;
        out.flush()?;
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
    }
    let mut buf = vec![0u8; reader.frame_bytes()];
    for _ in 0..a.count {
        let meta = if a.mode == "latest" {
            reader.latest_into(&mut buf, Duration::from_secs(10))?
        } else {
            reader.next_into(&mut buf, Duration::from_secs(10))?
        };
        if a.bare {
            writeln!(out, "f")?; // stdout is line-buffered: one write per frame
            continue;
        }
        let age_ns = monotonic_ns().saturating_sub(meta.mono_ns);
        let rec = ReadRecord {
            number: meta.number,
            missed: meta.missed,
            crc: crc32fast::hash(&buf[..meta.len as usize]),
            slot_crc: meta.checksum,
            age_ns,
            bars: if reader.pixel_format() == framebroker_client::PixelFormat::Bgr24 {
                sample_bars(&buf, w, h)
            } else {
                vec![]
            },
        };
        writeln!(out, "{}", serde_json::to_string(&rec)?)?;
        if a.work_ms > 0 {
            std::thread::sleep(Duration::from_millis(a.work_ms));
        }
    }
    out.flush()?;
    Ok(())
}
