//! Harness for the cross-process tests: start the real RTSP test camera and the
//! real broker binary on loopback with unique names, and clean up after them.
//!
//! The broker binary is the one `cargo build --workspace --bins` put next to the
//! test executable (`target/<profile>/framebroker`), or `$FRAMEBROKER_BIN`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use framebroker_client::Client;

/// Repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A binary built in this workspace (next to the running test executable).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|d| {
            if d.ends_with("deps") {
                d.parent()
            } else {
                Some(d)
            }
        })
        .unwrap();
    dir.join(name)
}

pub fn broker_bin() -> PathBuf {
    std::env::var_os("FRAMEBROKER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_bin("framebroker"))
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call, for sockets and segment prefixes.
pub fn unique(tag: &str) -> String {
    format!(
        "{tag}{}x{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The GStreamer RTSP test camera (`tests/camera/rtsp_camera.py`), killed on drop.
pub struct Camera {
    child: Child,
    pub url: String,
    pub port: u16,
    args: Vec<String>,
}

impl Camera {
    /// Starts a camera on a free loopback port; `pattern` is a videotestsrc pattern.
    pub fn start(width: u32, height: u32, fps: u32, pattern: &str) -> Result<Self> {
        let args = vec![
            "--width".into(),
            width.to_string(),
            "--height".into(),
            height.to_string(),
            "--fps".into(),
            fps.to_string(),
            "--pattern".into(),
            pattern.into(),
        ];
        Self::spawn(args, 0)
    }

    fn spawn(args: Vec<String>, port: u16) -> Result<Self> {
        let script = repo_root().join("tests/camera/rtsp_camera.py");
        let mut child = Command::new("/usr/bin/python3")
            .arg(&script)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the RTSP test camera (run scripts/setup.sh --test for GStreamer)")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line)?;
        let Some(url) = line.trim().strip_prefix("READY ") else {
            let _ = child.kill();
            bail!("camera did not start: {line:?}");
        };
        let port = url
            .rsplit_once(':')
            .unwrap()
            .1
            .split('/')
            .next()
            .unwrap()
            .parse()?;
        Ok(Camera {
            child,
            url: url.to_string(),
            port,
            args,
        })
    }

    /// Kills the camera (SIGKILL: a camera that drops off the network).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGSTOP: the camera freezes with its sockets open (the hard case: ffmpeg
    /// sees no error, only silence).
    #[cfg(unix)]
    pub fn freeze(&self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::SIGSTOP,
        );
    }

    /// SIGCONT after [`freeze`](Self::freeze).
    #[cfg(unix)]
    pub fn thaw(&self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::SIGCONT,
        );
    }

    /// Starts it again on the same port and path.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        let again = Self::spawn(self.args.clone(), self.port)?;
        // The old one is dead already; dropping it kills nothing new.
        drop(std::mem::replace(self, again));
        Ok(())
    }
}

impl Drop for Camera {
    fn drop(&mut self) {
        #[cfg(unix)]
        self.thaw();
        self.kill();
    }
}

/// A broker process on its own socket and segment prefix; SIGTERM on drop.
pub struct Broker {
    child: Option<Child>,
    pub socket: PathBuf,
    pub prefix: String,
    pub log: PathBuf,
    _dir: TempDir,
}

impl Broker {
    /// Starts `framebroker serve` with the extra `args` and waits until it answers.
    pub fn start(args: &[&str]) -> Result<Self> {
        Self::start_with_prefix(&format!("{}-", unique("fbt")), args)
    }

    /// [`start`](Self::start) with a given segment prefix (to play the next broker
    /// after a crash).
    pub fn start_with_prefix(prefix: &str, args: &[&str]) -> Result<Self> {
        let dir = TempDir::new("fbtest")?;
        let socket = dir.path().join("broker.sock");
        Self::spawn(dir, socket, prefix, args)
    }

    /// A broker on a given socket path (to play a restarted broker). The socket's
    /// directory must exist.
    pub fn start_at(socket: &Path, prefix: &str, args: &[&str]) -> Result<Self> {
        let dir = TempDir::new("fbtest")?;
        Self::spawn(dir, socket.to_path_buf(), prefix, args)
    }

    fn spawn(dir: TempDir, socket: PathBuf, prefix: &str, args: &[&str]) -> Result<Self> {
        let mut all = vec!["--shm-prefix", prefix];
        all.extend_from_slice(args);
        Self::spawn_env(dir, socket, prefix, &all, &[])
    }

    /// A broker on its own socket with a config file, extra `args` and
    /// environment `env`. `prefix` is the segment prefix the config (or env)
    /// sets, so the segments are cleaned up; nothing passes `--shm-prefix`.
    pub fn start_configured(
        config: &Path,
        prefix: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let dir = TempDir::new("fbtest")?;
        let socket = dir.path().join("broker.sock");
        let mut all = vec!["--config", config.to_str().expect("utf-8 path")];
        all.extend_from_slice(args);
        Self::spawn_env(dir, socket, prefix, &all, env)
    }

    fn spawn_env(
        dir: TempDir,
        socket: PathBuf,
        prefix: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let prefix = prefix.to_string();
        let log = dir.path().join("broker.log");
        let bin = broker_bin();
        if !bin.exists() {
            bail!(
                "{} not built: run `cargo build --workspace --bins` first",
                bin.display()
            );
        }
        let child = Command::new(&bin)
            .args(["serve", "--socket"])
            .arg(&socket)
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut b = Broker {
            child: Some(child),
            socket,
            prefix,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Client::connect_to(&b.socket).is_err() {
            if Instant::now() > deadline {
                bail!("broker did not come up; log:\n{}", b.log_text());
            }
            if let Some(st) = b.child.as_mut().unwrap().try_wait()? {
                bail!("broker exited with {st}; log:\n{}", b.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(b)
    }

    pub fn client(&self) -> Client {
        Client::connect_to(&self.socket).expect("connect to test broker")
    }

    /// Runs the broker binary's command line (`streams ls`, …) against this
    /// broker; panics unless it succeeds, returns its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(broker_bin())
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .output()
            .expect("run the broker's command line");
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Segment files of this broker in /dev/shm.
    pub fn segments(&self) -> Vec<String> {
        framebroker_proto::shm::list(&self.prefix)
    }

    /// SIGTERM and wait; returns the exit status.
    #[cfg(unix)]
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `sig` (SIGHUP to reload, say).
    #[cfg(unix)]
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        if let Some(c) = &self.child {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig);
        }
    }

    /// SIGKILL: a broker that crashes.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        #[cfg(unix)]
        self.terminate();
        #[cfg(not(unix))]
        self.kill();
        // Whatever a crashed broker left behind.
        for s in self.segments() {
            let _ = framebroker_proto::shm::unlink(&s);
        }
    }
}

/// A directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Result<Self> {
        let p = std::env::temp_dir().join(unique(tag));
        std::fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Processes of `program` whose command line contains `needle` (from /proc;
/// an empty `needle`: every process of `program`).
pub fn processes_with_arg(program: &str, needle: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
            let prog_ok = args
                .first()
                .is_some_and(|a| a.ends_with(program.as_bytes()));
            prog_ok
                && (needle.is_empty()
                    || args
                        .iter()
                        .any(|a| a.windows(needle.len()).any(|w| w == needle.as_bytes())))
        })
        .collect()
}

/// The processes decoding `url`: ffmpeg with it on its command line, or our own
/// decoder (`--decoder libav`), which gets it in its environment so that no
/// other user sees credentials in `ps`.
pub fn decoders_of(url: &str) -> Vec<u32> {
    let mut pids = processes_with_arg("ffmpeg", url);
    let want = format!("FRAMEBROKER_DECODE_URL={url}");
    pids.extend(
        processes_with_arg("framebroker-decoder", "")
            .into_iter()
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == want.as_bytes()))
            }),
    );
    pids
}

/// Reads `rounds` frames in order from each of two readers in turn and keeps
/// `keep(frame)` by frame number; returns both maps and the numbers both read
/// (for "frame n is the same under both" checks).
pub fn read_side_by_side<T>(
    a: &mut framebroker_client::Reader,
    b: &mut framebroker_client::Reader,
    rounds: usize,
    timeout: Duration,
    mut keep: impl FnMut(framebroker_client::Frame) -> T,
) -> (
    std::collections::BTreeMap<u64, T>,
    std::collections::BTreeMap<u64, T>,
    Vec<u64>,
) {
    let (mut under_a, mut under_b) = (
        std::collections::BTreeMap::new(),
        std::collections::BTreeMap::new(),
    );
    for _ in 0..rounds {
        let f = a.next(timeout).expect("a frame from the first reader");
        under_a.insert(f.meta.number, keep(f));
        let f = b.next(timeout).expect("a frame from the second reader");
        under_b.insert(f.meta.number, keep(f));
    }
    let shared = under_a
        .keys()
        .filter(|n| under_b.contains_key(n))
        .copied()
        .collect();
    (under_a, under_b, shared)
}

/// Waits up to 5 s for a reader's ring to show `state` (e.g. `stopped` after a
/// stop); panics with `why` otherwise.
pub fn expect_state(
    reader: &framebroker_client::Reader,
    state: framebroker_client::StreamState,
    why: &str,
) {
    wait_for(Duration::from_secs(5), || {
        (reader.state() == state).then_some(())
    })
    .unwrap_or_else(|| panic!("{why}: the reader sees {:?}", reader.state()));
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// One line of `fb-reader` output.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ReadRecord {
    pub number: u64,
    pub missed: u64,
    /// CRC-32 of the payload as read.
    pub crc: u32,
    /// CRC-32 the broker stored in the slot (0 without --checksum).
    pub slot_crc: u32,
    /// now − capture time (CLOCK_MONOTONIC) when the read returned, ns.
    pub age_ns: u64,
    /// BGR at the centre of each of the 7 top bars of an SMPTE pattern (row h/4).
    pub bars: Vec<[u8; 3]>,
}

/// BGR of the 7 top bars of GStreamer's 100 % `smpte` pattern.
pub const SMPTE_BARS_BGR: [[u8; 3]; 7] = [
    [255, 255, 255], // white
    [0, 255, 255],   // yellow
    [255, 255, 0],   // cyan
    [0, 255, 0],     // green
    [255, 0, 255],   // magenta
    [0, 0, 255],     // red
    [255, 0, 0],     // blue
];

/// Samples the bar centres of a BGR frame.
pub fn sample_bars(data: &[u8], width: u32, height: u32) -> Vec<[u8; 3]> {
    let y = height as usize / 4;
    (0..7)
        .map(|i| {
            let x = (width as usize * (2 * i + 1)) / 14;
            let o = (y * width as usize + x) * 3;
            [data[o], data[o + 1], data[o + 2]]
        })
        .collect()
}
