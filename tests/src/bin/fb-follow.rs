//! A reader process that outlives its broker, for the cross-process tests on
//! every system (the Windows stage under Wine runs it): follows one stream
//! through a [`Subscription`] and prints one JSON line per event on stdout:
//!
//! - `{"frame": n, "crc": c, "slot_crc": s, "age_ns": a}` per frame read;
//! - `{"ended": "<error>", "ms": t}` when the attachment ends (broker killed,
//!   stream stopped), `t` being the time since the last frame;
//! - `{"copy_ns": [...]}` with `--measure-copy N`: N timed `latest_into` calls,
//!   each made once a newer frame is published, so it measures the read (the
//!   protocol and the copy) and not the wait.
//!
//! It stops after `--frames` frames or `--seconds`, whichever comes first, and
//! exits 0; the test decides from the lines what happened.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use framebroker_client::Subscription;
use framebroker_proto::ring::monotonic_ns;
use serde_json::json;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    socket: PathBuf,
    #[arg(long)]
    stream: String,
    /// Stop after this many frames.
    #[arg(long, default_value_t = 1_000_000)]
    frames: u64,
    /// Stop after this long, s.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Instead of following: time N reads of a waiting frame, then exit.
    #[arg(long)]
    measure_copy: Option<u32>,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let mut sub = Subscription::new(&a.socket, &a.stream);
    let mut out = std::io::stdout().lock();
    if let Some(n) = a.measure_copy {
        return measure_copy(&mut sub, n, &mut out);
    }
    let end = Instant::now() + Duration::from_secs(a.seconds);
    let mut last = Instant::now();
    let mut frames = 0;
    while frames < a.frames && Instant::now() < end {
        let left = end.saturating_duration_since(Instant::now());
        match sub.next(left.min(Duration::from_secs(5))) {
            Ok(f) => {
                frames += 1;
                last = Instant::now();
                let line = json!({
                    "frame": f.meta.number,
                    "crc": crc32fast::hash(&f.data),
                    "slot_crc": f.meta.checksum,
                    "age_ns": monotonic_ns().saturating_sub(f.meta.mono_ns),
                });
                writeln!(out, "{line}")?;
            }
            Err(e) if e.is_timeout() => {}
            Err(e) => {
                let line = json!({"ended": e.to_string(), "ms": last.elapsed().as_millis() as u64});
                writeln!(out, "{line}")?;
                out.flush()?;
                // Do not spin against a broker that is not back yet.
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        out.flush()?;
    }
    Ok(())
}

fn measure_copy(sub: &mut Subscription, n: u32, out: &mut impl Write) -> anyhow::Result<()> {
    let first = sub.latest(Duration::from_secs(20))?;
    let mut buf = vec![0u8; first.data.len()];
    let mut last = first.meta.number;
    let mut copy_ns = Vec::with_capacity(n as usize);
    let give_up = Instant::now() + Duration::from_secs(60);
    while copy_ns.len() < n as usize && Instant::now() < give_up {
        let reader = sub.reader().ok_or_else(|| anyhow::anyhow!("detached"))?;
        // Sleep (not spin) until a newer frame is published, so the timed call
        // returns at once: it measures the read, not a wait.
        if reader.last_frame() <= last {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let t = Instant::now();
        let meta = reader.latest_into(&mut buf, Duration::from_secs(5))?;
        copy_ns.push(t.elapsed().as_nanos() as u64);
        last = meta.number;
    }
    writeln!(
        out,
        "{}",
        json!({"copy_ns": copy_ns, "frame_bytes": buf.len()})
    )?;
    Ok(())
}
