//! `fb-bench`: the performance benchmark of framebroker's core data path.
//!
//! ```text
//! cargo build --release --workspace --bins
//! cargo run --release -p framebroker-tests --bin fb-bench -- [--quick]
//! ```
//!
//! Three measurements, each repeated (`--reps`, at least 3); every figure printed is
//! the median over the repetitions with their min–max, and every comparison is a
//! ratio against a baseline measured in the same run:
//!
//! 1. **Broker CPU vs readers.** A release broker with one `testsrc://` stream
//!    (640x480@30 and 1280x720@30, one broker each), with 0, 1 and 16 `fb-reader`
//!    processes (`--mode latest`). Over a fixed window we read the broker
//!    process's own CPU time (all its threads; ffmpeg is a separate process, the
//!    broker's unreaped child, so it is not included) and divide by the frames
//!    published: the per-frame cost must not grow with readers (goal 16/1 ≤ 1.1).
//!    The CPU time comes from the process CPU-time clock (`clock_getcpuclockid`,
//!    ns resolution); `utime+stime` of `/proc/<pid>/stat` (10 ms ticks) is shown
//!    beside it as a cross-check. ffmpeg's and the readers' CPU are given for context.
//! 2. **Publish→reader wake-up latency.** 1, 8 and 64 `fb-reader --mode next`
//!    processes (`--lat-readers`) on a 640x480@60 stream; `age_ns` of each
//!    record is `now − mono_ns`, `mono_ns` being stamped by the broker right before it publishes and wakes the futex, so the
//!    age covers the wake-up, the scheduling and the reader's copy of the frame.
//!    Pooled over all readers, and per frame for the first and the last reader to
//!    get it (on two cores the readers queue behind one another). Shown beside the
//!    time of one memcpy of the same frame size (back-to-back, hot caches).
//! 3. **`latest()` copy cost in-process.** A [`Reader`] in this process, 640x480
//!    and 1920x1080 bgr24. We wait (sleeping) until a new frame is published
//!    *without* reading it, then time only the call, which therefore copies at
//!    once. One operation per frame, in rotation: `latest_into()`; a zero-copy
//!    `view()` summing 16 bytes; a `view()` whose closure memcpys the slot out and
//!    then once more (the protocol's share, and the cost once the lines are in this
//!    core's caches); and a plain `copy_from_slice` between two private buffers
//!    (twice), so that every operation starts in the same state, just woken up.
//!    Baselines: that woken-up memcpy and the median of many back-to-back copies
//!    between two pre-faulted buffers (hot caches). Goal: `latest_into` ≤ 1.3×.
//!
//! Progress goes to stderr; the table, then one JSON summary line, to stdout
//! (and, with `--json PATH`, the same JSON to that file).
//! Every loop is bounded in count and time. Child processes (broker, readers) are
//! stopped on every exit path: normal, error, panic, and SIGINT/SIGTERM (the
//! first one stops the run cleanly, a second one exits at once).

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::{Parser, ValueEnum};
use framebroker_client::{Client, ReadMode, Reader, StartRequest, StreamState, StreamStats};
use framebroker_tests::{broker_bin, workspace_bin, Broker, ReadRecord};
use nix::time::ClockId;
use nix::unistd::Pid;
use serde_json::json;

// ---------------------------------------------------------------------------
// Command line and run configuration
// ---------------------------------------------------------------------------

#[derive(Parser)]
#[command(about = "Benchmark of framebroker's data path (build first: \
                   cargo build --release --workspace --bins)")]
struct Args {
    /// Shorter windows and fewer frames (5 s CPU windows, 120 frames per reader).
    #[arg(long)]
    quick: bool,
    /// Repetitions of every measurement; each figure is their median (below 3
    /// only for smoke runs: a median of fewer says little).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    reps: u32,
    /// Reader processes of the latency section, one measurement per count.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64",
          value_parser = clap::value_parser!(u32).range(1..=256))]
    lat_readers: Vec<u32>,
    /// Also write the JSON summary to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Run only these sections (comma separated); default: all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<Section>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Section {
    Cpu,
    Latency,
    Copy,
}

/// Sizes of the measurements, from `--quick`.
struct Config {
    quick: bool,
    reps: usize,
    /// Section 1: reader counts: 0 (context), 1 (the baseline), 16.
    cpu_readers: [usize; 3],
    cpu_streams: [(u32, u32, u32); 2],
    cpu_warmup: Duration,
    cpu_window: Duration,
    /// Section 2.
    lat_readers: Vec<usize>,
    lat_rate: u32,
    lat_frames: u64,
    /// Records dropped at the start of each reader (page faults on first touch of
    /// each slot, frames already waiting when the readers were released).
    lat_warmup: u64,
    /// Section 3: streams, and samples per operation per repetition.
    copy_streams: [(u32, u32, u32); 2],
    copy_samples: usize,
    /// Back-to-back copies for the hot memcpy baseline (sections 2 and 3).
    memcpy_iters: usize,
}

impl Config {
    fn new(a: &Args) -> Self {
        let q = a.quick;
        Config {
            quick: q,
            reps: a.reps as usize,
            cpu_readers: [0, 1, 16],
            cpu_streams: [(640, 480, 30), (1280, 720, 30)],
            cpu_warmup: Duration::from_secs(if q { 1 } else { 2 }),
            cpu_window: Duration::from_secs(if q { 5 } else { 10 }),
            lat_readers: a.lat_readers.iter().map(|n| *n as usize).collect(),
            lat_rate: 60,
            lat_frames: if q { 120 } else { 600 },
            lat_warmup: 10,
            copy_streams: [(640, 480, 30), (1920, 1080, 30)],
            copy_samples: if q { 15 } else { 40 },
            memcpy_iters: if q { 100 } else { 300 },
        }
    }
}

/// Paths of the binaries the benchmark drives.
struct Bins {
    broker: PathBuf,
    reader: PathBuf,
}

impl Bins {
    fn find() -> Result<Self> {
        let bins = Bins {
            broker: broker_bin(),
            reader: workspace_bin("fb-reader"),
        };
        for b in [&bins.broker, &bins.reader] {
            if !b.exists() {
                bail!(
                    "{} is missing: build the release binaries first with\n    \
                     cargo build --release --workspace --bins\n\
                     (or point FRAMEBROKER_BIN at a release broker)",
                    b.display()
                );
            }
        }
        Ok(bins)
    }
}

// ---------------------------------------------------------------------------
// Interruption: SIGINT/SIGTERM set a flag that every wait loop checks
// ---------------------------------------------------------------------------

static STOP: OnceLock<Arc<AtomicBool>> = OnceLock::new();

fn install_signal_handlers() -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let flag = STOP.get_or_init(|| Arc::new(AtomicBool::new(false)));
    for sig in [SIGINT, SIGTERM] {
        // A second signal while the flag is already set exits at once (status 1).
        signal_hook::flag::register_conditional_shutdown(sig, 1, Arc::clone(flag))?;
        signal_hook::flag::register(sig, Arc::clone(flag))?;
    }
    Ok(())
}

fn check_interrupted() -> Result<()> {
    if STOP.get().is_some_and(|f| f.load(Ordering::Relaxed)) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps `d` in short steps, returning early with an error when interrupted.
fn sleep_checked(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        check_interrupted()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

// ---------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------

/// Median with min and max, over repetitions (or over samples).
#[derive(Clone, Copy, Debug)]
struct Summary {
    median: f64,
    min: f64,
    max: f64,
}

impl Summary {
    fn of(values: &[f64]) -> Self {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Summary {
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
            };
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Summary {
            median,
            min: v[0],
            max: v[n - 1],
        }
    }

    /// `12.3 [11.9–13.0]` with `prec` decimals.
    fn fmt(&self, prec: usize) -> String {
        format!(
            "{:.p$} [{:.p$}–{:.p$}]",
            self.median,
            self.min,
            self.max,
            p = prec
        )
    }

    fn json(&self) -> serde_json::Value {
        json!({ "median": round3(self.median), "min": round3(self.min), "max": round3(self.max) })
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Median of samples (ns) as f64.
fn median_ns(samples: &[u64]) -> f64 {
    Summary::of(&samples.iter().map(|x| *x as f64).collect::<Vec<_>>()).median
}

/// Nearest-rank percentile `q` (0..=1) of sorted samples.
fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// "met" or "MISSED by N %" for a ratio against its goal.
fn verdict(ratio: f64, goal: f64) -> String {
    if ratio <= goal {
        "met".into()
    } else {
        format!("MISSED by {:.0} %", (ratio / goal - 1.0) * 100.0)
    }
}

// ---------------------------------------------------------------------------
// CPU time of another process
// ---------------------------------------------------------------------------

/// CPU time (user + system, all threads, living and exited, not children) of
/// process `pid`, in ns, from its CPU-time clock.
fn cpu_ns(pid: u32) -> Result<u64> {
    let clock = ClockId::pid_cpu_clock_id(Pid::from_raw(pid as i32))
        .with_context(|| format!("CPU clock of pid {pid}"))?;
    let t = clock
        .now()
        .with_context(|| format!("CPU time of pid {pid}"))?;
    Ok(t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
}

/// `utime + stime` of `/proc/<pid>/stat`, in clock ticks.
fn stat_ticks(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) may contain spaces: count fields after its ')'.
    let rest = s
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc/pid/stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': field 3 (state) is f[0], so utime (14) is f[11] and stime (15) f[12].
    let utime: u64 = f.get(11).context("no utime")?.parse()?;
    let stime: u64 = f.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}

fn clock_ticks_per_s() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map(|t| t as f64)
        .unwrap_or(100.0)
}

// ---------------------------------------------------------------------------
// Broker and stream helpers
// ---------------------------------------------------------------------------

fn testsrc_url(w: u32, h: u32, rate: u32) -> String {
    format!("testsrc://?size={w}x{h}&rate={rate}")
}

/// Starts stream `id` on `url` and waits (bounded) until it is live with frames.
fn start_stream(client: &Client, id: &str, url: &str) -> Result<StreamStats> {
    client
        .start(StartRequest::new(id, url))
        .with_context(|| format!("starting stream {id} ({url})"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        check_interrupted()?;
        let s = client.stats(id)?;
        if s.info.state == StreamState::Live && s.frames_written >= 2 && s.ffmpeg_pid != 0 {
            return Ok(s);
        }
        if Instant::now() > deadline {
            bail!("stream {id} did not go live within 30 s: {s:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn connect(broker: &Broker) -> Result<Client> {
    Client::connect_to(&broker.socket).context("connecting to the benchmark broker")
}

// ---------------------------------------------------------------------------
// Reader processes
// ---------------------------------------------------------------------------

/// What one `fb-reader` printed.
#[derive(Default)]
struct ReaderOutput {
    records: Vec<ReadRecord>,
    bad_lines: u64,
}

/// A group of `fb-reader` processes started with `--sync-start`, so that they all
/// attach first and start reading together. Killed and reaped on drop.
struct ReaderFleet {
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
    stdout_threads: Vec<JoinHandle<ReaderOutput>>,
    stderr_threads: Vec<Option<JoinHandle<String>>>,
    /// Records printed so far, per reader.
    progress: Vec<Arc<AtomicU64>>,
    attached: mpsc::Receiver<usize>,
}

struct FleetSpec<'a> {
    bin: &'a Path,
    socket: &'a Path,
    stream: &'a str,
    readers: usize,
    mode: &'a str,
    count: u64,
    /// Parse and keep every record (else only count them).
    keep_records: bool,
}

impl ReaderFleet {
    fn spawn(spec: &FleetSpec) -> Result<Self> {
        let (tx, rx) = mpsc::channel();
        let mut fleet = ReaderFleet {
            children: vec![],
            stdins: vec![],
            stdout_threads: vec![],
            stderr_threads: vec![],
            progress: vec![],
            attached: rx,
        };
        for i in 0..spec.readers {
            let mut child = Command::new(spec.bin)
                .arg("--socket")
                .arg(spec.socket)
                .args(["--stream", spec.stream, "--mode", spec.mode])
                .args(["--count", &spec.count.to_string(), "--sync-start"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .with_context(|| format!("starting {}", spec.bin.display()))?;
            let stdin = child.stdin.take().context("reader stdin")?;
            let stdout = child.stdout.take().context("reader stdout")?;
            let mut stderr = child.stderr.take().context("reader stderr")?;
            // Pushed first, so that drop kills it whatever fails below.
            fleet.children.push(child);
            fleet.stdins.push(stdin);
            let progress = Arc::new(AtomicU64::new(0));
            fleet.progress.push(Arc::clone(&progress));
            let tx = tx.clone();
            let keep = spec.keep_records;
            // Drain stdout continuously (a full pipe would stall the reader).
            fleet.stdout_threads.push(std::thread::spawn(move || {
                let mut out = ReaderOutput::default();
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if line == "attached" {
                        let _ = tx.send(i);
                        continue;
                    }
                    progress.fetch_add(1, Ordering::Relaxed);
                    if keep {
                        match serde_json::from_str::<ReadRecord>(&line) {
                            Ok(r) => out.records.push(r),
                            Err(_) => out.bad_lines += 1,
                        }
                    }
                }
                out
            }));
            fleet.stderr_threads.push(Some(std::thread::spawn(move || {
                let mut s = String::new();
                let _ = stderr.read_to_string(&mut s);
                s
            })));
        }
        Ok(fleet)
    }

    fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// Waits until every reader has attached, then releases them all at once.
    fn attach_and_go(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut seen = 0;
        while seen < self.children.len() {
            check_interrupted()?;
            match self.attached.recv_timeout(Duration::from_millis(100)) {
                Ok(_) => seen += 1,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    for (i, c) in self.children.iter_mut().enumerate() {
                        if let Some(st) = c.try_wait()? {
                            bail!("reader {i} exited before attaching ({st})");
                        }
                    }
                    if Instant::now() > deadline {
                        bail!("only {seen} of {} readers attached", self.children.len());
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!("reader output closed"),
            }
        }
        for s in &mut self.stdins {
            writeln!(s)?;
            s.flush()?;
        }
        Ok(())
    }

    /// Records printed so far, per reader.
    fn progress(&self) -> Vec<u64> {
        self.progress
            .iter()
            .map(|p| p.load(Ordering::Relaxed))
            .collect()
    }

    /// Waits (bounded) for every reader to finish its count and returns what each
    /// printed; fails if one fails or the time runs out (drop then kills them).
    fn finish(mut self, timeout: Duration) -> Result<Vec<ReaderOutput>> {
        let deadline = Instant::now() + timeout;
        for i in 0..self.children.len() {
            loop {
                check_interrupted()?;
                if let Some(st) = self.children[i].try_wait()? {
                    if !st.success() {
                        let err = self.stderr_of(i);
                        bail!("reader {i} failed ({st}): {}", err.trim());
                    }
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "readers did not finish within {timeout:?} (progress {:?})",
                        self.progress()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // All exited: their stdout is at EOF, so the joins return at once.
        let outs = std::mem::take(&mut self.stdout_threads)
            .into_iter()
            .map(|t| t.join().unwrap_or_default())
            .collect();
        Ok(outs)
    }

    /// Stderr of reader `i` once it has exited.
    fn stderr_of(&mut self, i: usize) -> String {
        self.stderr_threads
            .get_mut(i)
            .and_then(Option::take)
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }

    /// SIGKILL and reap every reader still running.
    fn kill_all(&mut self) {
        self.stdins.clear();
        for c in &mut self.children {
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
        // Their pipes are closed now: the threads end.
        for t in self.stdout_threads.drain(..) {
            let _ = t.join();
        }
        for t in self.stderr_threads.drain(..).flatten() {
            let _ = t.join();
        }
    }
}

impl Drop for ReaderFleet {
    fn drop(&mut self) {
        self.kill_all();
    }
}

// ---------------------------------------------------------------------------
// memcpy baseline
// ---------------------------------------------------------------------------

/// Two private, pre-faulted buffers of one frame.
struct CopyBuffers {
    src: Vec<u8>,
    dst: Vec<u8>,
}

impl CopyBuffers {
    fn new(bytes: usize) -> Self {
        // Non-zero fills write every page, so neither buffer page-faults later.
        let src: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
        let dst = vec![1u8; bytes];
        CopyBuffers { src, dst }
    }

    /// One timed `copy_from_slice`, ns.
    fn time_one(&mut self) -> u64 {
        let t0 = Instant::now();
        self.dst.copy_from_slice(std::hint::black_box(&self.src));
        std::hint::black_box(&mut self.dst);
        t0.elapsed().as_nanos() as u64
    }

    /// Median of `iters` back-to-back copies (after 3 untimed ones), ns.
    fn median_ns(&mut self, iters: usize) -> f64 {
        for _ in 0..3 {
            self.time_one();
        }
        let t: Vec<u64> = (0..iters).map(|_| self.time_one()).collect();
        median_ns(&t)
    }
}

// ---------------------------------------------------------------------------
// Section 1: broker CPU vs number of readers
// ---------------------------------------------------------------------------

/// One measurement window.
struct CpuWindow {
    wall_s: f64,
    frames: u64,
    broker_ns: u64,
    broker_ticks: u64,
    ffmpeg_ns: u64,
    readers_ns: u64,
    /// Fewest records any reader printed in the window.
    min_reads: u64,
}

impl CpuWindow {
    fn broker_pct(&self) -> f64 {
        self.broker_ns as f64 / 1e9 / self.wall_s * 100.0
    }
    fn broker_stat_pct(&self) -> f64 {
        self.broker_ticks as f64 / clock_ticks_per_s() / self.wall_s * 100.0
    }
    fn broker_us_per_frame(&self) -> f64 {
        self.broker_ns as f64 / 1e3 / self.frames.max(1) as f64
    }
    fn ffmpeg_pct(&self) -> f64 {
        self.ffmpeg_ns as f64 / 1e9 / self.wall_s * 100.0
    }
    fn readers_pct(&self) -> f64 {
        self.readers_ns as f64 / 1e9 / self.wall_s * 100.0
    }
    fn fps(&self) -> f64 {
        self.frames as f64 / self.wall_s
    }
}

/// Results of one stream geometry: per reader count, one window per repetition.
struct CpuResult {
    label: String,
    windows: Vec<(usize, Vec<CpuWindow>)>,
}

impl CpuResult {
    fn windows(&self, readers: usize) -> &[CpuWindow] {
        self.windows
            .iter()
            .find(|(n, _)| *n == readers)
            .map(|(_, w)| w.as_slice())
            .unwrap_or(&[])
    }

    fn summary(&self, readers: usize, f: impl Fn(&CpuWindow) -> f64) -> Summary {
        Summary::of(&self.windows(readers).iter().map(f).collect::<Vec<_>>())
    }

    /// Ratio `many / one` of `f`, per repetition (both measured in the same repetition).
    fn ratio(&self, many: usize, one: usize, f: impl Fn(&CpuWindow) -> f64) -> Summary {
        let r: Vec<f64> = self
            .windows(many)
            .iter()
            .zip(self.windows(one))
            .map(|(m, o)| f(m) / f(o))
            .collect();
        Summary::of(&r)
    }
}

fn bench_cpu(cfg: &Config, bins: &Bins) -> Result<Vec<CpuResult>> {
    let mut results = vec![];
    for &(w, h, rate) in &cfg.cpu_streams {
        // One broker per geometry, so the broker's CPU is this stream's alone.
        let broker = Broker::start(&[])?;
        let client = connect(&broker)?;
        let id = format!("cpu{w}x{h}");
        let url = testsrc_url(w, h, rate);
        start_stream(&client, &id, &url)?;
        sleep_checked(Duration::from_secs(1))?;
        let label = format!("{w}x{h}@{rate}");
        let mut windows: Vec<(usize, Vec<CpuWindow>)> =
            cfg.cpu_readers.iter().map(|n| (*n, vec![])).collect();
        for rep in 0..cfg.reps {
            // Alternate the order so a slow drift of the machine hits every count alike.
            let mut order: Vec<usize> = (0..cfg.cpu_readers.len()).collect();
            if rep % 2 == 1 {
                order.reverse();
            }
            for k in order {
                let n = cfg.cpu_readers[k];
                eprintln!(
                    "[cpu] {label} rep {}/{}: {n} readers, {:?} window",
                    rep + 1,
                    cfg.reps,
                    cfg.cpu_window
                );
                let win = cpu_window(cfg, bins, &broker, &client, &id, rate, n)?;
                eprintln!(
                    "      broker {:.2} % ({:.1} µs/frame), ffmpeg {:.1} %, readers {:.1} %, {:.1} fps",
                    win.broker_pct(),
                    win.broker_us_per_frame(),
                    win.ffmpeg_pct(),
                    win.readers_pct(),
                    win.fps()
                );
                windows[k].1.push(win);
            }
        }
        let _ = client.stop(&id);
        results.push(CpuResult { label, windows });
        // `broker` drops here: SIGTERM, it stops ffmpeg and unlinks its segments.
    }
    Ok(results)
}

/// Runs `readers` reader processes on the stream and measures one window.
fn cpu_window(
    cfg: &Config,
    bins: &Bins,
    broker: &Broker,
    client: &Client,
    id: &str,
    rate: u32,
    readers: usize,
) -> Result<CpuWindow> {
    // Enough frames to outlast warm-up + window with a wide margin; killed after.
    let count =
        u64::from(rate) * (cfg.cpu_warmup + cfg.cpu_window).as_secs() + 30 * u64::from(rate);
    let mut fleet = ReaderFleet::spawn(&FleetSpec {
        bin: &bins.reader,
        socket: &broker.socket,
        stream: id,
        readers,
        mode: "latest",
        count,
        keep_records: false,
    })?;
    fleet.attach_and_go(Duration::from_secs(30))?;
    sleep_checked(cfg.cpu_warmup)?;

    let bpid = broker.pid();
    let rpids = fleet.pids();
    let readers_cpu = |pids: &[u32]| -> Result<u64> { pids.iter().map(|p| cpu_ns(*p)).sum() };

    // The stats request runs outside the CPU window (before start, after end).
    let s0 = client.stats(id)?;
    let fpid = s0.ffmpeg_pid;
    let t0 = Instant::now();
    let (b0, k0, f0, r0) = (
        cpu_ns(bpid)?,
        stat_ticks(bpid)?,
        cpu_ns(fpid)?,
        readers_cpu(&rpids)?,
    );
    let p0 = fleet.progress();

    sleep_checked(cfg.cpu_window)?;

    let (b1, k1, f1, r1) = (
        cpu_ns(bpid)?,
        stat_ticks(bpid)?,
        cpu_ns(fpid)?,
        readers_cpu(&rpids)?,
    );
    let wall_s = t0.elapsed().as_secs_f64();
    let p1 = fleet.progress();
    let s1 = client.stats(id)?;
    drop(fleet);

    ensure!(
        s1.ffmpeg_pid == fpid && s1.reconnects == s0.reconnects,
        "ffmpeg restarted during the window (pid {fpid} → {}, reconnects {} → {})",
        s1.ffmpeg_pid,
        s0.reconnects,
        s1.reconnects
    );
    let frames = s1.frames_written - s0.frames_written;
    let min_reads = p0.iter().zip(&p1).map(|(a, b)| b - a).min().unwrap_or(0);
    if readers > 0 && (min_reads as f64) < 0.8 * frames as f64 {
        eprintln!("      warning: a reader read only {min_reads} of {frames} frames in the window");
    }
    Ok(CpuWindow {
        wall_s,
        frames,
        broker_ns: b1 - b0,
        broker_ticks: k1 - k0,
        ffmpeg_ns: f1 - f0,
        readers_ns: r1 - r0,
        min_reads,
    })
}

// ---------------------------------------------------------------------------
// Section 2: publish→reader wake-up latency
// ---------------------------------------------------------------------------

/// One repetition: ages pooled over all readers, µs.
struct LatencyRep {
    median_us: f64,
    p99_us: f64,
    max_us: f64,
    /// Per frame, the reader that got it first (the pure wake-up + one copy, no
    /// queueing behind the other readers on the two cores): median and p99.
    first_median_us: f64,
    first_p99_us: f64,
    /// Per frame, the reader that got it last: median.
    last_median_us: f64,
    memcpy_us: f64,
    samples: usize,
    missed: u64,
}

/// Latency repetitions for one reader count.
struct LatencyResult {
    readers: usize,
    reps: Vec<LatencyRep>,
}

fn bench_latency(cfg: &Config, bins: &Bins) -> Result<Vec<LatencyResult>> {
    let (w, h, rate) = (640, 480, cfg.lat_rate);
    let broker = Broker::start(&[])?;
    let client = connect(&broker)?;
    let id = "lat";
    start_stream(&client, id, &testsrc_url(w, h, rate))?;
    let mut memcpy = CopyBuffers::new(w as usize * h as usize * 3);
    let mut results: Vec<LatencyResult> = cfg
        .lat_readers
        .iter()
        .map(|&readers| LatencyResult {
            readers,
            reps: vec![],
        })
        .collect();
    // Repetitions outermost, so a slow drift of the machine hits every count alike.
    for rep in 0..cfg.reps {
        for res in &mut results {
            let r = latency_rep(cfg, bins, &broker, id, rate, res.readers, rep, &mut memcpy)?;
            res.reps.push(r);
        }
    }
    let _ = client.stop(id);
    Ok(results)
}

/// One repetition with `readers` reader processes.
#[allow(clippy::too_many_arguments)]
fn latency_rep(
    cfg: &Config,
    bins: &Bins,
    broker: &Broker,
    id: &str,
    rate: u32,
    readers: usize,
    rep: usize,
    memcpy: &mut CopyBuffers,
) -> Result<LatencyRep> {
    eprintln!(
        "[latency] rep {}/{}: {readers} readers × {} frames at {rate} fps",
        rep + 1,
        cfg.reps,
        cfg.lat_frames
    );
    // The baseline, just before the readers start (not while they run: it
    // would compete with them for the two cores).
    let memcpy_us = memcpy.median_ns(cfg.memcpy_iters) / 1e3;
    let count = cfg.lat_warmup + cfg.lat_frames;
    let mut fleet = ReaderFleet::spawn(&FleetSpec {
        bin: &bins.reader,
        socket: &broker.socket,
        stream: id,
        readers,
        mode: "next",
        count,
        keep_records: true,
    })?;
    fleet.attach_and_go(Duration::from_secs(30))?;
    let expected = Duration::from_secs_f64(count as f64 / f64::from(rate));
    let outs = fleet.finish(expected * 2 + Duration::from_secs(20))?;

    let mut ages: Vec<u64> = vec![];
    // Frame number → (first, last) age over the readers that read it.
    let mut per_frame: std::collections::BTreeMap<u64, (u64, u64)> = Default::default();
    let mut missed = 0;
    for (i, o) in outs.iter().enumerate() {
        ensure!(
            o.records.len() as u64 == count && o.bad_lines == 0,
            "reader {i} printed {} records ({} unparsable), expected {count}",
            o.records.len(),
            o.bad_lines
        );
        let kept = &o.records[cfg.lat_warmup as usize..];
        missed += kept.iter().map(|r| r.missed).sum::<u64>();
        ages.extend(kept.iter().map(|r| r.age_ns));
        for r in kept {
            let e = per_frame.entry(r.number).or_insert((u64::MAX, 0));
            e.0 = e.0.min(r.age_ns);
            e.1 = e.1.max(r.age_ns);
        }
    }
    ages.sort_unstable();
    let mut first: Vec<u64> = per_frame.values().map(|v| v.0).collect();
    let mut last: Vec<u64> = per_frame.values().map(|v| v.1).collect();
    first.sort_unstable();
    last.sort_unstable();
    let r = LatencyRep {
        median_us: percentile(&ages, 0.5) as f64 / 1e3,
        p99_us: percentile(&ages, 0.99) as f64 / 1e3,
        max_us: *ages.last().unwrap_or(&0) as f64 / 1e3,
        first_median_us: percentile(&first, 0.5) as f64 / 1e3,
        first_p99_us: percentile(&first, 0.99) as f64 / 1e3,
        last_median_us: percentile(&last, 0.5) as f64 / 1e3,
        memcpy_us,
        samples: ages.len(),
        missed,
    };
    eprintln!(
        "      age median {:.1} µs, p99 {:.1} µs, max {:.1} µs (first reader per frame: median {:.1} µs); \
         memcpy {:.1} µs; {} samples, {} missed",
        r.median_us, r.p99_us, r.max_us, r.first_median_us, r.memcpy_us, r.samples, r.missed
    );
    Ok(r)
}

// ---------------------------------------------------------------------------
// Section 3: latest() copy cost in-process
// ---------------------------------------------------------------------------

/// One repetition at one size: medians over the samples, µs. Every sample is
/// taken right after the thread woke up for a new frame (the state a real reader
/// is in), except `memcpy_hot_us`.
struct CopyRep {
    /// `latest_into()`: the copy out of the freshly published slot.
    latest_us: f64,
    /// `view()` whose closure reads 16 bytes spread over the frame.
    view_sum_us: f64,
    /// `view()` whose closure memcpys the slot out: the call minus its second copy.
    view_copy_us: f64,
    /// Inside that closure, a second memcpy of the same slot right after the first.
    slot_again_us: f64,
    /// A plain `copy_from_slice` between two private buffers, in place of a read.
    memcpy_wake_us: f64,
    /// The same private copy again right after.
    private_again_us: f64,
    /// Back-to-back private copies (median of many): the hot-cache floor.
    memcpy_hot_us: f64,
}

struct CopyResult {
    label: String,
    bytes: usize,
    reps: Vec<CopyRep>,
}

impl CopyResult {
    fn summary(&self, f: impl Fn(&CopyRep) -> f64) -> Summary {
        Summary::of(&self.reps.iter().map(f).collect::<Vec<_>>())
    }
}

/// Waits, sleeping, until a frame newer than the last one this reader returned is
/// published, without reading it. Bounded by `deadline`.
fn wait_new_frame(reader: &mut Reader, deadline: Instant) -> Result<()> {
    loop {
        let pos = reader.ring().position();
        if reader.last_frame() > pos {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("no new frame from {} (last {pos})", reader.stream_id());
        }
        check_interrupted()?;
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn bench_copy(cfg: &Config) -> Result<Vec<CopyResult>> {
    let broker = Broker::start(&[])?;
    let client = connect(&broker)?;
    let mut results = vec![];
    for &(w, h, rate) in &cfg.copy_streams {
        let id = format!("copy{w}x{h}");
        let label = format!("{w}x{h}");
        start_stream(&client, &id, &testsrc_url(w, h, rate))?;
        let reps = copy_one_size(cfg, &client, &id, &label, rate)?;
        let bytes = w as usize * h as usize * 3;
        client.stop(&id)?;
        results.push(CopyResult { label, bytes, reps });
    }
    Ok(results)
}

fn copy_one_size(
    cfg: &Config,
    client: &Client,
    id: &str,
    label: &str,
    rate: u32,
) -> Result<Vec<CopyRep>> {
    let mut reader = client.attach_wait(id, Duration::from_secs(20))?;
    let bytes = reader.frame_bytes();
    let slots = u64::from(reader.attachment().slot_count);
    let mut dst = vec![1u8; bytes]; // pre-faulted destination of latest_into
    let mut bufs = CopyBuffers::new(bytes);
    let frame_period = Duration::from_secs_f64(1.0 / f64::from(rate));
    let timeout = Duration::from_secs(2);
    let ns = |d: Duration| d.as_nanos() as u64;

    // Warm-up: touch every slot of the mapping (first touches page-fault).
    for _ in 0..3 * slots {
        check_interrupted()?;
        reader.latest_into(&mut dst, timeout)?;
    }

    let mut reps = vec![];
    for rep in 0..cfg.reps {
        eprintln!("[copy] {label} rep {}/{}", rep + 1, cfg.reps);
        let memcpy_hot = bufs.median_ns(cfg.memcpy_iters);
        let mut t: [Vec<u64>; 6] = Default::default();
        let [latest, view_sum, view_copy, slot_again, wake, private_again] = &mut t;
        // One operation per new frame, in rotation, so that each one starts in the
        // same state: just woken up, the frame just published by the broker.
        const OPS: usize = 4;
        let frames = OPS * cfg.copy_samples;
        // Bounded in time too: twice the frames' duration plus slack.
        let deadline =
            Instant::now() + frame_period * (2 * frames as u32) + Duration::from_secs(10);
        for i in 0..frames {
            wait_new_frame(&mut reader, deadline)?;
            // The frame is published: each call below returns without waiting.
            match i % OPS {
                0 => {
                    let t0 = Instant::now();
                    let m = reader.latest_into(&mut dst, timeout)?;
                    latest.push(ns(t0.elapsed()));
                    std::hint::black_box((&m, &dst));
                }
                1 => {
                    let t0 = Instant::now();
                    let (_, s) = reader.view(ReadMode::Latest, timeout, |_, b| {
                        let step = (b.len() / 16).max(1);
                        b.iter().step_by(step).map(|x| u64::from(*x)).sum::<u64>()
                    })?;
                    view_sum.push(ns(t0.elapsed()));
                    std::hint::black_box(s);
                }
                2 => {
                    let t0 = Instant::now();
                    let (_, second) = reader.view(ReadMode::Latest, timeout, |_, b| {
                        dst[..b.len()].copy_from_slice(b);
                        std::hint::black_box(&mut dst);
                        let t1 = Instant::now();
                        dst[..b.len()].copy_from_slice(b);
                        std::hint::black_box(&mut dst);
                        t1.elapsed()
                    })?;
                    view_copy.push(ns(t0.elapsed().saturating_sub(second)));
                    slot_again.push(ns(second));
                }
                _ => {
                    wake.push(bufs.time_one());
                    private_again.push(bufs.time_one());
                    // Consume the frame (untimed) so the next operation waits for a new one.
                    reader.latest_into(&mut dst, timeout)?;
                }
            }
        }
        let r = CopyRep {
            latest_us: median_ns(latest) / 1e3,
            view_sum_us: median_ns(view_sum) / 1e3,
            view_copy_us: median_ns(view_copy) / 1e3,
            slot_again_us: median_ns(slot_again) / 1e3,
            memcpy_wake_us: median_ns(wake) / 1e3,
            private_again_us: median_ns(private_again) / 1e3,
            memcpy_hot_us: memcpy_hot / 1e3,
        };
        eprintln!(
            "      latest_into {:.1} µs, view-sum {:.2} µs, view+memcpy {:.1} µs (same slot again {:.1} µs), \
             private memcpy after wake-up {:.1} µs (again {:.1} µs), memcpy hot {:.1} µs",
            r.latest_us,
            r.view_sum_us,
            r.view_copy_us,
            r.slot_again_us,
            r.memcpy_wake_us,
            r.private_again_us,
            r.memcpy_hot_us
        );
        reps.push(r);
    }
    Ok(reps)
}

// ---------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------

struct Report {
    cpu: Option<Result<Vec<CpuResult>>>,
    latency: Option<Result<Vec<LatencyResult>>>,
    copy: Option<Result<Vec<CopyResult>>>,
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(String::from))
        .unwrap_or_default()
}

fn host_line() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_default();
    format!("{cpus} CPUs ({model})")
}

fn print_cpu(out: &mut String, cfg: &Config, res: &[CpuResult], js: &mut serde_json::Value) {
    let _ = writeln!(
        out,
        "\n1. Broker CPU vs reader processes (fb-reader --mode latest; {} s window after {} s warm-up)",
        cfg.cpu_window.as_secs(),
        cfg.cpu_warmup.as_secs()
    );
    let _ = writeln!(
        out,
        "   {:<12} {:>7}  {:<22} {:<22} {:<22} {:<20} {:<22} {:>6}",
        "stream",
        "readers",
        "broker CPU %",
        "broker µs/frame",
        "/proc stat CPU %",
        "ffmpeg CPU %",
        "readers CPU % (sum)",
        "fps"
    );
    let mut jres = vec![];
    for r in res {
        for &n in &cfg.cpu_readers {
            let s = |f: fn(&CpuWindow) -> f64| r.summary(n, f);
            let _ = writeln!(
                out,
                "   {:<12} {:>3}  {:<22} {:<22} {:<20} {:<20} {:<22} {:>6.1}",
                r.label,
                n,
                s(CpuWindow::broker_pct).fmt(2),
                s(CpuWindow::broker_us_per_frame).fmt(1),
                s(CpuWindow::broker_stat_pct).fmt(2),
                s(CpuWindow::ffmpeg_pct).fmt(1),
                s(CpuWindow::readers_pct).fmt(1),
                s(CpuWindow::fps).median,
            );
        }
        let (one, many) = (cfg.cpu_readers[1], cfg.cpu_readers[2]);
        let per_frame = r.ratio(many, one, CpuWindow::broker_us_per_frame);
        let pct = r.ratio(many, one, CpuWindow::broker_pct);
        let min_reads = r
            .windows(many)
            .iter()
            .map(|w| w.min_reads)
            .min()
            .unwrap_or(0);
        let _ = writeln!(
            out,
            "   {:<12} ratio {many}/{one} readers: broker µs/frame {}, CPU % {}  → goal ≤ 1.10: {}",
            r.label,
            per_frame.fmt(3),
            pct.fmt(3),
            verdict(per_frame.median, 1.10)
        );
        let _ = writeln!(
            out,
            "   {:<12} (every one of the {many} readers read ≥ {min_reads} frames per window)",
            ""
        );
        jres.push(json!({
            "stream": r.label,
            "readers": cfg.cpu_readers.iter().map(|&n| json!({
                "readers": n,
                "broker_cpu_pct": r.summary(n, CpuWindow::broker_pct).json(),
                "broker_us_per_frame": r.summary(n, CpuWindow::broker_us_per_frame).json(),
                "broker_stat_cpu_pct": r.summary(n, CpuWindow::broker_stat_pct).json(),
                "ffmpeg_cpu_pct": r.summary(n, CpuWindow::ffmpeg_pct).json(),
                "readers_cpu_pct": r.summary(n, CpuWindow::readers_pct).json(),
                "fps": r.summary(n, CpuWindow::fps).json(),
            })).collect::<Vec<_>>(),
            "ratio_per_frame": per_frame.json(),
            "ratio_cpu_pct": pct.json(),
            "goal": 1.10,
            "met": per_frame.median <= 1.10,
        }));
    }
    js["cpu"] = json!(jres);
}

fn print_latency(
    out: &mut String,
    cfg: &Config,
    res: &[LatencyResult],
    js: &mut serde_json::Value,
) {
    let _ = writeln!(
        out,
        "\n2. Publish→reader wake-up latency: fb-reader processes (--mode next), testsrc 640x480@{}, \
         {} frames per reader per repetition (first {} dropped); age = now − publish, pooled over readers",
        cfg.lat_rate, cfg.lat_frames, cfg.lat_warmup
    );
    let _ = writeln!(
        out,
        "   {:>7}  {:<22} {:<22} {:<24} {:<22} {:<22} {:<16} {:>8} {:>7}",
        "readers",
        "median µs",
        "p99 µs",
        "max µs",
        "first woken median µs",
        "last woken median µs",
        "median / memcpy",
        "samples",
        "missed"
    );
    let mut jres = vec![];
    let mut memcpy_all = vec![];
    for lr in res {
        let reps = &lr.reps;
        let s = |f: fn(&LatencyRep) -> f64| Summary::of(&reps.iter().map(f).collect::<Vec<_>>());
        let median = s(|r| r.median_us);
        let p99 = s(|r| r.p99_us);
        let max = s(|r| r.max_us);
        let memcpy = s(|r| r.memcpy_us);
        let ratio = s(|r| r.median_us / r.memcpy_us);
        let first_median = s(|r| r.first_median_us);
        let first_p99 = s(|r| r.first_p99_us);
        let last_median = s(|r| r.last_median_us);
        let first_ratio = s(|r| r.first_median_us / r.memcpy_us);
        let samples: usize = reps.iter().map(|r| r.samples).sum();
        let missed: u64 = reps.iter().map(|r| r.missed).sum();
        memcpy_all.extend(reps.iter().map(|r| r.memcpy_us));
        let _ = writeln!(
            out,
            "   {:>7}  {:<22} {:<22} {:<24} {:<22} {:<22} {:<16} {:>8} {:>7}",
            lr.readers,
            median.fmt(1),
            p99.fmt(1),
            max.fmt(1),
            first_median.fmt(1),
            last_median.fmt(1),
            ratio.fmt(2),
            samples,
            missed
        );
        jres.push(json!({
            "readers": lr.readers,
            "age_median_us": median.json(), "age_p99_us": p99.json(), "age_max_us": max.json(),
            "memcpy_us": memcpy.json(), "median_over_memcpy": ratio.json(),
            "first_reader_median_us": first_median.json(), "first_reader_p99_us": first_p99.json(),
            "first_reader_median_over_memcpy": first_ratio.json(),
            "last_reader_median_us": last_median.json(),
            "samples": samples, "missed": missed,
        }));
    }
    let memcpy = Summary::of(&memcpy_all);
    let _ = writeln!(
        out,
        "   floor: memcpy of one 640x480x3 frame {} µs (median of {} back-to-back copies, before each repetition)",
        memcpy.fmt(1),
        cfg.memcpy_iters
    );
    js["latency"] = json!({
        "fps": cfg.lat_rate, "width": 640, "height": 480,
        "frames_per_reader": cfg.lat_frames, "memcpy_us": memcpy.json(),
        "by_readers": jres,
    });
}

fn print_copy(out: &mut String, cfg: &Config, res: &[CopyResult], js: &mut serde_json::Value) {
    let _ = writeln!(
        out,
        "\n3. latest() copy cost in-process (bgr24; each call timed right after waking up for a \
         frame already published; {} samples per operation per repetition)",
        cfg.copy_samples
    );
    let cols = [
        "latest_into µs",
        "view(sum 16 B) µs",
        "view+memcpy µs",
        "same slot again µs",
        "memcpy µs (woken)",
        "private again µs",
        "memcpy hot µs",
    ];
    let _ = write!(out, "   {:<10}", "size");
    for c in cols {
        let _ = write!(out, " {c:<21}");
    }
    let _ = writeln!(out);
    let mut jres = vec![];
    for r in res {
        let latest = r.summary(|x| x.latest_us);
        let view_sum = r.summary(|x| x.view_sum_us);
        let view_copy = r.summary(|x| x.view_copy_us);
        let again = r.summary(|x| x.slot_again_us);
        let wake = r.summary(|x| x.memcpy_wake_us);
        let private_again = r.summary(|x| x.private_again_us);
        let hot = r.summary(|x| x.memcpy_hot_us);
        let vs_hot = r.summary(|x| x.latest_us / x.memcpy_hot_us);
        let vs_wake = r.summary(|x| x.latest_us / x.memcpy_wake_us);
        let vs_view_copy = r.summary(|x| x.latest_us / x.view_copy_us);
        let _ = write!(out, "   {:<10}", r.label);
        for v in [
            latest.fmt(1),
            view_sum.fmt(2),
            view_copy.fmt(1),
            again.fmt(1),
            wake.fmt(1),
            private_again.fmt(1),
            hot.fmt(1),
        ] {
            let _ = write!(out, " {v:<21}");
        }
        let _ = writeln!(out);
        // The goal against both baselines, and the protocol's own share.
        let pad = "";
        let _ = writeln!(
            out,
            "   {pad:<10} latest_into / memcpy hot (back-to-back)              {}  → goal ≤ 1.3: {}",
            vs_hot.fmt(2),
            verdict(vs_hot.median, 1.3)
        );
        let _ = writeln!(
            out,
            "   {pad:<10} latest_into / memcpy after the same wake-up          {}  → goal ≤ 1.3: {}",
            vs_wake.fmt(2),
            verdict(vs_wake.median, 1.3)
        );
        let _ = writeln!(
            out,
            "   {pad:<10} latest_into / (view + plain memcpy of the same slot) {}  (protocol overhead)",
            vs_view_copy.fmt(2)
        );
        jres.push(json!({
            "size": r.label, "bytes": r.bytes,
            "latest_into_us": latest.json(), "view_sum_us": view_sum.json(),
            "view_memcpy_us": view_copy.json(), "same_slot_again_us": again.json(),
            "memcpy_after_wakeup_us": wake.json(), "private_again_us": private_again.json(),
            "memcpy_hot_us": hot.json(),
            "ratio_latest_over_memcpy_hot": vs_hot.json(),
            "ratio_latest_over_memcpy_after_wakeup": vs_wake.json(),
            "ratio_latest_over_view_memcpy": vs_view_copy.json(),
            "goal": 1.3,
            "met_vs_hot": vs_hot.median <= 1.3,
            "met_vs_after_wakeup": vs_wake.median <= 1.3,
        }));
    }
    js["copy"] = json!(jres);
}

/// Prints a section or its error; returns whether it succeeded.
fn section<T>(
    out: &mut String,
    js: &mut serde_json::Value,
    name: &str,
    r: &Option<Result<T>>,
    print: impl FnOnce(&mut String, &T, &mut serde_json::Value),
) -> bool {
    match r {
        None => true,
        Some(Ok(v)) => {
            print(out, v, js);
            true
        }
        Some(Err(e)) => {
            let _ = writeln!(out, "\n{name}: FAILED: {e:#}");
            js[name] = json!({ "error": format!("{e:#}") });
            false
        }
    }
}

pub fn main() -> std::process::ExitCode {
    match run() {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("fb-bench: some measurements failed (see the table)");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("fb-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the selected sections and prints the report; `Ok(false)` when a section failed.
fn run() -> Result<bool> {
    let args = Args::parse();
    let cfg = Config::new(&args);
    install_signal_handlers()?;
    let bins = Bins::find()?;
    if cfg!(debug_assertions) {
        eprintln!("warning: fb-bench is a debug build; run it with `cargo run --release …`");
    }
    if bins.broker.components().any(|c| c.as_os_str() == "debug") {
        eprintln!(
            "warning: {} looks like a debug build",
            bins.broker.display()
        );
    }
    let want = |s: Section| args.only.is_empty() || args.only.contains(&s);
    let host = host_line();
    let load_start = load_average();
    let started = Instant::now();

    // Each section cleans up after itself; a failing one does not stop the others.
    let mut report = Report {
        cpu: None,
        latency: None,
        copy: None,
    };
    if want(Section::Cpu) {
        report.cpu = Some(bench_cpu(&cfg, &bins));
    }
    if want(Section::Latency) && check_interrupted().is_ok() {
        report.latency = Some(bench_latency(&cfg, &bins));
    }
    if want(Section::Copy) && check_interrupted().is_ok() {
        report.copy = Some(bench_copy(&cfg));
    }
    let elapsed = started.elapsed();

    let mut out = String::new();
    let _ = writeln!(
        out,
        "framebroker data-path benchmark ({}, {} repetitions; each figure: median [min–max] over repetitions)",
        if cfg.quick { "--quick" } else { "full" },
        cfg.reps
    );
    let _ = writeln!(
        out,
        "broker {}; host {host}; 1-min load average {load_start} at start, {} at end",
        bins.broker.display(),
        load_average()
    );
    let mut js = json!({
        "bench": "fb-bench", "quick": cfg.quick, "reps": cfg.reps,
        "elapsed_s": round3(elapsed.as_secs_f64()),
    });
    let mut ok = true;
    ok &= section(&mut out, &mut js, "cpu", &report.cpu, |o, v, j| {
        print_cpu(o, &cfg, v, j)
    });
    ok &= section(&mut out, &mut js, "latency", &report.latency, |o, v, j| {
        print_latency(o, &cfg, v, j)
    });
    ok &= section(&mut out, &mut js, "copy", &report.copy, |o, v, j| {
        print_copy(o, &cfg, v, j)
    });
    let _ = writeln!(out, "\nrun time {:.0} s", elapsed.as_secs_f64());
    print!("{out}");
    println!("{js}");
    if let Some(path) = &args.json {
        std::fs::write(path, format!("{js}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    std::io::stdout().flush()?;
    Ok(ok)
}
