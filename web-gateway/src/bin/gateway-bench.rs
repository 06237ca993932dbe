//! `gateway-bench`: the gateway's CPU with 1 vs N WebSocket subscribers on one
//! stream, frames delivered per second to each, and snapshot latency.
//!
//! It starts the broker (`framebroker serve` with the built-in test source) and
//! the gateway binary, both from the directory of this executable, on a private
//! socket and port; the subscribers run in this process. The gateway's CPU is
//! read from `/proc/<pid>/stat` (user + system), so the clients' own work is not
//! counted.
//!
//! ```sh
//! cargo build --release --workspace --bins
//! target/release/gateway-bench --width 1280 --height 720 --subscribers 1,50
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
#[command(
    about = "Gateway CPU with 1 vs N WebSocket subscribers, per-subscriber fps, snapshot latency."
)]
struct Args {
    #[arg(long, default_value_t = 1280)]
    width: u32,
    #[arg(long, default_value_t = 720)]
    height: u32,
    #[arg(long, default_value_t = 30)]
    fps: u32,
    /// Subscriber counts to measure, in order.
    #[arg(long, value_delimiter = ',', default_value = "1,50")]
    subscribers: Vec<usize>,
    /// `jpeg` (FBJ1) or `raw`.
    #[arg(long, default_value = "jpeg")]
    format: String,
    #[arg(long, default_value_t = 80)]
    quality: u8,
    /// Measured seconds per run (after the warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// Snapshot requests for the latency figure.
    #[arg(long, default_value_t = 50)]
    snapshots: usize,
    /// Binaries (default: next to this executable).
    #[arg(long)]
    broker_bin: Option<PathBuf>,
    #[arg(long)]
    gateway_bin: Option<PathBuf>,
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sibling(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent().unwrap().join(name)
}

/// CPU seconds (user + system) of a process so far.
fn cpu_seconds(pid: u32, ticks: f64) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').context("bad stat")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f[11].parse()?;
    let stime: f64 = f[12].parse()?;
    Ok((utime + stime) / ticks)
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String, Vec<u8>)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut all = Vec::new();
    s.read_to_end(&mut all).await?;
    let at = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no head")?;
    let head = String::from_utf8_lossy(&all[..at]).to_string();
    let status = head
        .split(' ')
        .nth(1)
        .context("no status")?
        .parse()
        .context("status")?;
    Ok((status, head, all[at + 4..].to_vec()))
}

fn json_u64(body: &[u8], path: &[&str]) -> u64 {
    let mut v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    for p in path {
        v = v[*p].take();
    }
    v.as_u64().unwrap_or(0)
}

struct Run {
    subscribers: usize,
    cpu_pct: f64,
    fps_min: f64,
    fps_mean: f64,
    fps_max: f64,
    encodes_per_s: f64,
    frames_per_s: f64,
    mbit_per_s: f64,
    bench_cpu_pct: f64,
}

async fn measure(args: &Args, addr: SocketAddr, gw_pid: u32, n: usize, ticks: f64) -> Result<Run> {
    let query = if args.format == "jpeg" {
        format!("?format=jpeg&quality={}", args.quality)
    } else {
        String::new()
    };
    let url = format!("ws://{addr}/ws/bench{query}");
    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut counters = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (mut ws, _) = tokio_tungstenite::connect_async(&url)
            .await
            .with_context(|| format!("connect {url}"))?;
        let msgs = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        counters.push((msgs.clone(), bytes.clone()));
        let (counting, stop) = (counting.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(500), ws.next()).await {
                    Ok(Some(Ok(Message::Binary(b)))) => {
                        if counting.load(Ordering::Relaxed) {
                            msgs.fetch_add(1, Ordering::Relaxed);
                            bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
                        }
                    }
                    Ok(Some(Ok(_))) | Err(_) => {}
                    Ok(_) => break,
                }
            }
            let _ = ws.close(None).await;
        }));
    }
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;
    let stats0 = http_get(addr, "/api/streams/bench/stats").await?.2;
    let (cpu0, me0, t0) = (
        cpu_seconds(gw_pid, ticks)?,
        cpu_seconds(std::process::id(), ticks)?,
        Instant::now(),
    );
    counting.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    counting.store(false, Ordering::Relaxed);
    let (cpu1, me1, wall) = (
        cpu_seconds(gw_pid, ticks)?,
        cpu_seconds(std::process::id(), ticks)?,
        t0.elapsed().as_secs_f64(),
    );
    let stats1 = http_get(addr, "/api/streams/bench/stats").await?.2;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let fps: Vec<f64> = counters
        .iter()
        .map(|(m, _)| m.load(Ordering::Relaxed) as f64 / wall)
        .collect();
    let bytes: u64 = counters
        .iter()
        .map(|(_, b)| b.load(Ordering::Relaxed))
        .sum();
    let d = |path: &[&str]| {
        json_u64(&stats1, path).saturating_sub(json_u64(&stats0, path)) as f64 / wall
    };
    Ok(Run {
        subscribers: n,
        cpu_pct: (cpu1 - cpu0) / wall * 100.0,
        fps_min: fps.iter().copied().fold(f64::INFINITY, f64::min),
        fps_mean: fps.iter().sum::<f64>() / fps.len().max(1) as f64,
        fps_max: fps.iter().copied().fold(0.0, f64::max),
        encodes_per_s: d(&["gateway", "jpeg_encoded"]),
        frames_per_s: d(&["gateway", "frames"]),
        mbit_per_s: bytes as f64 * 8.0 / wall / 1e6,
        bench_cpu_pct: (me1 - me0) / wall * 100.0,
    })
}

async fn snapshot_latency(addr: SocketAddr, count: usize) -> Result<Vec<f64>> {
    let mut ms = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        let (status, _, body) = http_get(addr, "/api/streams/bench/snapshot.jpg").await?;
        if status != 200 || body.len() < 100 {
            bail!("snapshot answered {status}");
        }
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        // Spread over several frames (each request then encodes a new one).
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Ok(ms)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !f() {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let broker_bin = args
        .broker_bin
        .clone()
        .unwrap_or_else(|| sibling("framebroker"));
    let gateway_bin = args
        .gateway_bin
        .clone()
        .unwrap_or_else(|| sibling("framebroker-gateway"));
    for b in [&broker_bin, &gateway_bin] {
        if !b.exists() {
            bail!(
                "{} missing: cargo build --release --workspace --bins",
                b.display()
            );
        }
    }
    let dir = std::env::temp_dir().join(format!("fbgw-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let socket = dir.join("broker.sock");
    let prefix = format!("fbgwbench{}-", std::process::id());
    let source = format!(
        "bench=testsrc://?size={}x{}&rate={}",
        args.width, args.height, args.fps
    );
    let broker = Proc(
        Command::new(&broker_bin)
            .args(["serve", "--socket"])
            .arg(&socket)
            .args(["--shm-prefix", &prefix, "--stream", &source])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("broker")?,
    );
    wait_for("the broker", Duration::from_secs(10), || socket.exists())?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let gateway = Proc(
        Command::new(&gateway_bin)
            .arg("--socket")
            .arg(&socket)
            .args(["--listen", &addr.to_string()])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("gateway")?,
    );
    let gw_pid = gateway.0.id();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok((200, _, _)) = http_get(addr, "/api/streams/bench/frame").await {
            break;
        }
        if Instant::now() > deadline {
            bail!("no frame from the gateway");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ticks = clock_ticks();
    println!(
        "stream {}x{} @ {} fps (testsrc), WebSocket format {} (quality {}), {} s per run after {} s warm-up",
        args.width, args.height, args.fps, args.format, args.quality, args.seconds, args.warmup
    );
    println!(
        "gateway {} (pid {gw_pid}), broker {}",
        gateway_bin.display(),
        broker_bin.display()
    );
    let mut runs = Vec::new();
    for &n in &args.subscribers {
        let r = measure(&args, addr, gw_pid, n, ticks).await?;
        println!(
            "{:>4} subscribers: gateway CPU {:6.1} %  | per-subscriber fps min {:5.1} mean {:5.1} max {:5.1} | gateway read {:5.1} fps, JPEG encodes {:5.1}/s | {:7.1} Mbit/s delivered | bench clients CPU {:5.1} %",
            r.subscribers, r.cpu_pct, r.fps_min, r.fps_mean, r.fps_max, r.frames_per_s, r.encodes_per_s, r.mbit_per_s, r.bench_cpu_pct
        );
        runs.push(r);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if let (Some(first), Some(last)) = (runs.first(), runs.last()) {
        if runs.len() > 1 {
            println!(
                "CPU ratio {} vs {} subscribers: {:.2}x",
                last.subscribers,
                first.subscribers,
                last.cpu_pct / first.cpu_pct
            );
        }
    }
    if args.snapshots > 0 {
        let ms = snapshot_latency(addr, args.snapshots).await?;
        println!(
            "snapshot.jpg latency over {} requests (no other subscriber): p50 {:.2} ms  p95 {:.2} ms  max {:.2} ms",
            ms.len(),
            pct(&ms, 0.5),
            pct(&ms, 0.95),
            ms.last().unwrap()
        );
    }
    drop(gateway);
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
    for s in framebroker_proto::shm::list(&prefix) {
        let _ = framebroker_proto::shm::unlink(&s);
    }
    Ok(())
}
