//! `gateway-bench`: the gateway's CPU with 1 vs N WebSocket subscribers on one
//! stream, frames delivered per second to each, the gateway's JPEG encode time
//! per frame (from its own counters), snapshot latency, raw `/frame` polling
//! throughput, and optionally a memory soak (`--soak-seconds`: RSS of the
//! gateway and the broker sampled under a fixed WebSocket load).
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
//! target/release/gateway-bench --subscribers 1,10,50,100 --reps 3 --json out.json
//! ```
//!
//! With `--reps N` every subscriber count is measured N times (rounds over all
//! counts, so a drift of the machine hits every count alike); the table shows the
//! median with min–max, and the JSON keeps every run.

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
    /// Repetitions of every subscriber count (rounds over all counts).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    reps: u32,
    /// Seconds of raw `/frame` polling per poller count (0: skip).
    #[arg(long, default_value_t = 5)]
    poll_seconds: u64,
    /// Concurrent pollers of `/frame` to measure, in order.
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    pollers: Vec<usize>,
    /// Memory soak: seconds under `--soak-subscribers` JPEG WebSocket clients,
    /// sampling RSS of gateway and broker every `--soak-interval` s (0: skip).
    #[arg(long, default_value_t = 0.0)]
    soak_seconds: f64,
    #[arg(long, default_value_t = 50)]
    soak_subscribers: usize,
    #[arg(long, default_value_t = 10.0)]
    soak_interval: f64,
    /// Also write every figure as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
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
    encode_ms: f64,
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
    let enc0 = encode_totals(&stats0);
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
    let enc1 = encode_totals(&stats1);
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
        encode_ms: if enc1.0 > enc0.0 {
            (enc1.1 - enc0.1) / (enc1.0 - enc0.0)
        } else {
            f64::NAN
        },
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

/// (JPEG frames encoded, total encode ms) from the gateway's stats answer.
fn encode_totals(body: &[u8]) -> (f64, f64) {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let n = v["gateway"]["jpeg_encoded"].as_f64().unwrap_or(0.0);
    let avg = v["gateway"]["jpeg_encode_ms_avg"].as_f64().unwrap_or(0.0);
    (n, n * avg)
}

/// Raw `/frame` polling: `pollers` tasks each GET the frame back to back for
/// `seconds` (no sleep, as the original server's Python client did; the
/// gateway paces each request to the next new frame). Returns (requests/s,
/// MB/s, distinct frames/s).
async fn poll_frames(addr: SocketAddr, pollers: usize, seconds: u64) -> Result<(f64, f64, f64)> {
    let end = Instant::now() + Duration::from_secs(seconds);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..pollers {
        tasks.push(tokio::spawn(async move {
            let (mut reqs, mut bytes, mut numbers) =
                (0u64, 0u64, std::collections::BTreeSet::new());
            while Instant::now() < end {
                let (status, head, body) = http_get(addr, "/api/streams/bench/frame").await?;
                if status != 200 {
                    bail!("/frame answered {status}");
                }
                reqs += 1;
                bytes += body.len() as u64;
                if let Some(n) = head.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("x-frame-number")
                        .then(|| v.trim().parse::<u64>().ok())?
                }) {
                    numbers.insert(n);
                }
            }
            Ok::<_, anyhow::Error>((reqs, bytes, numbers))
        }));
    }
    let (mut reqs, mut bytes, mut numbers) = (0u64, 0u64, std::collections::BTreeSet::new());
    for t in tasks {
        let (r, b, n) = t.await??;
        reqs += r;
        bytes += b;
        numbers.extend(n);
    }
    let wall = t0.elapsed().as_secs_f64();
    Ok((
        reqs as f64 / wall,
        bytes as f64 / wall / 1e6,
        numbers.len() as f64 / wall,
    ))
}

/// `VmRSS` and `RssAnon` of a process, KiB (0 when unreadable).
fn rss_kib(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("RssAnon:"))
}

/// The memory soak: `n` JPEG WebSocket clients for `seconds`, RSS of the gateway
/// and the broker every `interval` s. Returns the samples as JSON rows.
async fn soak(
    args: &Args,
    addr: SocketAddr,
    gw_pid: u32,
    broker_pid: u32,
) -> Result<Vec<serde_json::Value>> {
    let url = format!("ws://{addr}/ws/bench?format=jpeg&quality={}", args.quality);
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..args.soak_subscribers {
        let (mut ws, _) = tokio_tungstenite::connect_async(&url)
            .await
            .with_context(|| format!("connect {url}"))?;
        let (stop, received) = (stop.clone(), received.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(500), ws.next()).await {
                    Ok(Some(Ok(Message::Binary(_)))) => {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Some(Ok(_))) | Err(_) => {}
                    Ok(_) => break,
                }
            }
            let _ = ws.close(None).await;
        }));
    }
    let interval = Duration::from_secs_f64(args.soak_interval.clamp(0.5, 600.0));
    let total = Duration::from_secs_f64(args.soak_seconds.clamp(0.0, 86_400.0));
    let t0 = Instant::now();
    let mut rows = Vec::new();
    let mut last_count = 0;
    let mut last_t = 0.0;
    loop {
        let t = t0.elapsed().as_secs_f64();
        let (gw_rss, gw_anon) = rss_kib(gw_pid);
        let (br_rss, br_anon) = rss_kib(broker_pid);
        let count = received.load(Ordering::Relaxed);
        let fps = if !rows.is_empty() && t > last_t {
            (count - last_count) as f64 / (t - last_t) / args.soak_subscribers.max(1) as f64
        } else {
            f64::NAN
        };
        (last_count, last_t) = (count, t);
        println!(
            "soak t={t:6.1} s: gateway RSS {gw_rss} KiB (anon {gw_anon}), broker RSS {br_rss} KiB (anon {br_anon}), {fps:.1} fps per client"
        );
        rows.push(serde_json::json!({
            "t_s": t, "gateway_rss_kib": gw_rss, "gateway_anon_kib": gw_anon,
            "broker_rss_kib": br_rss, "broker_anon_kib": br_anon, "fps_per_client": fps,
        }));
        let elapsed = t0.elapsed();
        if elapsed >= total {
            break;
        }
        tokio::time::sleep(interval.min(total - elapsed)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    Ok(rows)
}

fn median_min_max(v: &[f64]) -> (f64, f64, f64) {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let med = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (med, v[0], v[n - 1])
}

fn mmm_json(v: &[f64]) -> serde_json::Value {
    let (med, min, max) = median_min_max(v);
    let f = |x: f64| {
        if x.is_finite() {
            serde_json::json!(x)
        } else {
            serde_json::Value::Null
        }
    };
    serde_json::json!({ "median": f(med), "min": f(min), "max": f(max) })
}

fn mmm_fmt(v: &[f64], prec: usize) -> String {
    let (med, min, max) = median_min_max(v);
    format!("{med:.prec$} [{min:.prec$}–{max:.prec$}]")
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
    let broker_proc = Proc(
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
    let mut runs: Vec<Run> = Vec::new();
    for rep in 0..args.reps {
        for &n in &args.subscribers {
            let r = measure(&args, addr, gw_pid, n, ticks).await?;
            println!(
                "{:>4} subscribers (run {}/{}): gateway CPU {:6.1} %  | per-subscriber fps min {:5.1} mean {:5.1} max {:5.1} | gateway read {:5.1} fps, JPEG encodes {:5.1}/s, {:.2} ms each | {:7.1} Mbit/s delivered | bench clients CPU {:5.1} %",
                r.subscribers, rep + 1, args.reps, r.cpu_pct, r.fps_min, r.fps_mean, r.fps_max, r.frames_per_s, r.encodes_per_s, r.encode_ms, r.mbit_per_s, r.bench_cpu_pct
            );
            runs.push(r);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    let mut js_subs = Vec::new();
    if args.reps > 1 {
        println!("median [min–max] over {} runs:", args.reps);
    }
    for &n in &args.subscribers {
        let rs: Vec<&Run> = runs.iter().filter(|r| r.subscribers == n).collect();
        let col = |f: fn(&Run) -> f64| rs.iter().map(|r| f(r)).collect::<Vec<f64>>();
        if args.reps > 1 {
            println!(
                "{:>4} subscribers: gateway CPU {} % | mean fps per subscriber {} (min over subscribers {}) | JPEG encode {} ms",
                n,
                mmm_fmt(&col(|r| r.cpu_pct), 1),
                mmm_fmt(&col(|r| r.fps_mean), 1),
                mmm_fmt(&col(|r| r.fps_min), 1),
                mmm_fmt(&col(|r| r.encode_ms), 2)
            );
        }
        js_subs.push(serde_json::json!({
            "subscribers": n,
            "gateway_cpu_pct": mmm_json(&col(|r| r.cpu_pct)),
            "fps_mean": mmm_json(&col(|r| r.fps_mean)),
            "fps_min": mmm_json(&col(|r| r.fps_min)),
            "fps_max": mmm_json(&col(|r| r.fps_max)),
            "gateway_read_fps": mmm_json(&col(|r| r.frames_per_s)),
            "jpeg_encodes_per_s": mmm_json(&col(|r| r.encodes_per_s)),
            "jpeg_encode_ms": mmm_json(&col(|r| r.encode_ms)),
            "mbit_per_s": mmm_json(&col(|r| r.mbit_per_s)),
            "bench_clients_cpu_pct": mmm_json(&col(|r| r.bench_cpu_pct)),
        }));
    }
    if let (Some(first), Some(last)) = (args.subscribers.first(), args.subscribers.last()) {
        if args.subscribers.len() > 1 {
            // Ratios within each round (same conditions), then their median.
            let ratios: Vec<f64> = (0..args.reps as usize)
                .filter_map(|k| {
                    let a = runs.iter().filter(|r| r.subscribers == *first).nth(k)?;
                    let b = runs.iter().filter(|r| r.subscribers == *last).nth(k)?;
                    Some(b.cpu_pct / a.cpu_pct)
                })
                .collect();
            println!(
                "CPU ratio {last} vs {first} subscribers: {}x",
                mmm_fmt(&ratios, 2)
            );
        }
    }
    let mut js_snap = serde_json::Value::Null;
    if args.snapshots > 0 {
        let ms = snapshot_latency(addr, args.snapshots).await?;
        println!(
            "snapshot.jpg latency over {} requests (no other subscriber): p50 {:.2} ms  p95 {:.2} ms  max {:.2} ms",
            ms.len(),
            pct(&ms, 0.5),
            pct(&ms, 0.95),
            ms.last().unwrap()
        );
        js_snap = serde_json::json!({
            "requests": ms.len(), "p50_ms": pct(&ms, 0.5), "p95_ms": pct(&ms, 0.95),
            "max_ms": ms.last().copied().unwrap_or(f64::NAN),
        });
    }
    let mut js_poll = Vec::new();
    if args.poll_seconds > 0 {
        for &n in &args.pollers {
            let (rps, mbs, fps) = poll_frames(addr, n.max(1), args.poll_seconds).await?;
            println!(
                "raw /frame polling, {n} concurrent pollers: {rps:.1} requests/s, {mbs:.1} MB/s, {fps:.1} distinct frames/s, {:.2} requests per new frame per poller",
                rps / n.max(1) as f64 / fps.max(f64::MIN_POSITIVE)
            );
            js_poll.push(serde_json::json!({
                "pollers": n, "requests_per_s": rps, "mb_per_s": mbs, "distinct_frames_per_s": fps,
            }));
        }
    }
    let mut js_soak = serde_json::Value::Null;
    if args.soak_seconds > 0.0 {
        let rows = soak(&args, addr, gw_pid, broker_proc.0.id()).await?;
        js_soak = serde_json::json!({
            "subscribers": args.soak_subscribers, "seconds": args.soak_seconds,
            "interval_s": args.soak_interval, "samples": rows,
        });
    }
    if let Some(path) = &args.json {
        let js = serde_json::json!({
            "width": args.width, "height": args.height, "fps": args.fps, "format": args.format,
            "quality": args.quality, "seconds": args.seconds, "warmup": args.warmup, "reps": args.reps,
            "subscribers": js_subs,
            "runs": runs.iter().map(|r| serde_json::json!({
                "subscribers": r.subscribers, "gateway_cpu_pct": r.cpu_pct, "fps_mean": r.fps_mean,
                "fps_min": r.fps_min, "fps_max": r.fps_max, "jpeg_encode_ms": r.encode_ms,
            })).collect::<Vec<_>>(),
            "snapshot": js_snap, "polling": js_poll, "soak": js_soak,
        });
        std::fs::write(path, format!("{js}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    drop(gateway);
    drop(broker_proc);
    let _ = std::fs::remove_dir_all(&dir);
    for s in framebroker_proto::shm::list(&prefix) {
        let _ = framebroker_proto::shm::unlink(&s);
    }
    Ok(())
}
