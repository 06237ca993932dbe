//! The seam to the outside world that produces frames: [`SourceFactory`] spawns a
//! [`RunningSource`]. [`Ffmpeg`] is the real one (one ffmpeg process per stream,
//! through `ffmpeg-sidecar`, with the system ffmpeg); tests of the supervisor can
//! plug in a fake.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ffmpeg_sidecar::command::FfmpegCommand;
use ffmpeg_sidecar::event::{FfmpegEvent, LogLevel};
use ffmpeg_sidecar::log_parser::FfmpegLogParser;
use framebroker_proto::control::Transport;
use framebroker_proto::naming::{redact_text, Source};
use framebroker_proto::{Geometry, PixelFormat};

/// What to pull and how: everything the source needs, already validated.
#[derive(Clone, Debug)]
pub struct SourceSpec {
    pub id: String,
    /// The full URL (may hold credentials: never log it, use `redacted`).
    pub url: String,
    pub redacted: String,
    pub source: Source,
    pub size: Option<(u32, u32)>,
    pub pixel_format: PixelFormat,
    pub transport: Transport,
    /// ffmpeg's socket I/O timeout.
    pub io_timeout: Duration,
}

/// Kills a running source from another thread (stall detection, stop).
pub type KillHandle = Arc<dyn Fn() + Send + Sync>;

/// A source that produces raw frames.
pub trait RunningSource: Send {
    /// Waits until the output geometry is known (ffmpeg has probed the input).
    fn geometry(&mut self, timeout: Duration, stop: &dyn Fn() -> bool) -> Result<Geometry, String>;
    /// The raw frame bytes, `frame_bytes` per frame, back to back.
    fn frames(&mut self) -> &mut dyn Read;
    fn pid(&self) -> u32;
    fn kill_handle(&self) -> KillHandle;
    /// Kills (if still running) and reaps the source; returns how it ended.
    fn finish(&mut self) -> String;
    /// The last error the source reported, credentials redacted.
    fn last_error(&self) -> Option<String>;
    /// Count of decode errors (corrupt input) reported so far.
    fn decode_errors(&self) -> u64;
}

pub trait SourceFactory: Send + Sync {
    fn spawn(&self, spec: &SourceSpec) -> Result<Box<dyn RunningSource>, String>;
}

/// The real source: the system ffmpeg.
pub struct Ffmpeg {
    pub path: PathBuf,
}

impl Ffmpeg {
    /// `explicit` (from `--ffmpeg`) or `ffmpeg` found on PATH. Never a downloaded one.
    pub fn locate(explicit: Option<&Path>) -> Result<Self, String> {
        if let Some(p) = explicit {
            if p.is_file() {
                return Ok(Ffmpeg {
                    path: p.to_path_buf(),
                });
            }
            return Err(format!("ffmpeg not found at {}", p.display()));
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .map(|d| d.join("ffmpeg"))
            .find(|p| p.is_file())
            .map(|path| Ffmpeg { path })
            .ok_or_else(|| "ffmpeg not found on PATH: install it (Debian/Ubuntu: apt-get install ffmpeg) or pass --ffmpeg PATH".into())
    }

    /// `ffmpeg -version`'s first line.
    pub fn version(&self) -> Result<String, String> {
        let out = std::process::Command::new(&self.path)
            .arg("-version")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.path.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .next()
            .map(str::to_string)
            .ok_or_else(|| "ffmpeg -version printed nothing".into())
    }
}

/// The ffmpeg arguments for a spec (after the program name). The URL is one
/// argument; nothing goes through a shell.
pub fn ffmpeg_args(spec: &SourceSpec) -> Vec<String> {
    let mut a: Vec<String> = ["-hide_banner", "-nostdin", "-loglevel", "level+info"]
        .map(String::from)
        .into();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    match &spec.source {
        Source::Test(t) => {
            a.extend(s(&["-re", "-f", "lavfi", "-i"]));
            a.push(format!(
                "{}=size={}x{}:rate={}",
                t.pattern, t.width, t.height, t.rate
            ));
        }
        Source::File(path) => {
            a.extend(s(&["-re", "-stream_loop", "-1", "-i"]));
            a.push(path.clone());
        }
        Source::Network => {
            let rtsp = spec
                .url
                .get(..4)
                .is_some_and(|p| p.eq_ignore_ascii_case("rtsp"));
            if rtsp {
                let t = match spec.transport {
                    Transport::Tcp => "tcp",
                    Transport::Udp => "udp",
                };
                a.extend(s(&["-rtsp_transport", t]));
            }
            a.extend(s(&["-timeout", &spec.io_timeout.as_micros().to_string()]));
            // Small probe: the first frame in ~0.4 s instead of ~1 s; the stream
            // parameters of RTSP come from the SDP and in-band SPS anyway.
            a.extend(s(&["-analyzeduration", "500000", "-probesize", "500000"]));
            a.extend(s(&["-fflags", "nobuffer", "-flags", "low_delay", "-i"]));
            a.push(spec.url.clone());
        }
    }
    a.extend(s(&["-map", "0:v:0", "-an", "-sn", "-dn"]));
    if let Some((w, h)) = spec.size {
        a.extend(s(&["-vf", &format!("scale={w}:{h}")]));
    }
    a.extend(s(&[
        "-f",
        "rawvideo",
        "-pix_fmt",
        spec.pixel_format.name(),
        "pipe:1",
    ]));
    a
}

impl SourceFactory for Ffmpeg {
    fn spawn(&self, spec: &SourceSpec) -> Result<Box<dyn RunningSource>, String> {
        let mut cmd = FfmpegCommand::new_with_path(&self.path);
        // `new_with_path` already adds `-loglevel level+info`; ours repeats it
        // harmlessly, and keeps ffmpeg_args() complete on its own.
        cmd.args(ffmpeg_args(spec));
        // stdin stays a pipe (ffmpeg-sidecar requires it); `-nostdin` makes ffmpeg
        // ignore it.
        let inner = cmd.as_inner_mut();
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: runs in the child between fork and exec, where only
            // async-signal-safe calls are allowed: prctl and pthread_sigmask are.
            // The broker blocks SIGINT/SIGTERM in all its threads; the child must not
            // inherit that mask, and must die with the broker.
            unsafe {
                inner.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    let mut set: libc::sigset_t = std::mem::zeroed();
                    libc::sigemptyset(&mut set);
                    libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
                    Ok(())
                });
            }
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start ffmpeg: {e}"))?;
        let pid = child.as_inner().id();
        let stdout = child.take_stdout().ok_or("ffmpeg has no stdout")?;
        let stderr = child.take_stderr().ok_or("ffmpeg has no stderr")?;
        grow_pipe(&stdout);
        let (geo_tx, geo_rx) = mpsc::channel();
        let shared = Arc::new(StderrState::default());
        let st = shared.clone();
        let id = spec.id.clone();
        let pixel_format = spec.pixel_format;
        std::thread::Builder::new()
            .name(format!("ffmpeg-log-{id}"))
            .spawn(move || drain_stderr(stderr, &id, pixel_format, geo_tx, &st))
            .map_err(|e| format!("cannot start log thread: {e}"))?;
        let alive = Arc::new(Mutex::new(true));
        Ok(Box::new(FfmpegSource {
            child,
            pid,
            stdout,
            geo_rx,
            shared,
            alive,
        }))
    }
}

/// A bigger pipe means fewer wake-ups per frame (a 640×480 frame is 900 KiB; the
/// default pipe holds 64 KiB). Best effort.
fn grow_pipe(stdout: &ChildStdout) {
    #[cfg(target_os = "linux")]
    {
        use nix::fcntl::{fcntl, FcntlArg};
        let _ = fcntl(stdout, FcntlArg::F_SETPIPE_SZ(1 << 20));
    }
}

#[derive(Default)]
struct StderrState {
    last_error: Mutex<Option<String>>,
    decode_errors: std::sync::atomic::AtomicU64,
}

fn drain_stderr(
    stderr: std::process::ChildStderr,
    id: &str,
    pixel_format: PixelFormat,
    geo_tx: mpsc::Sender<Geometry>,
    st: &StderrState,
) {
    let mut parser = FfmpegLogParser::new(stderr);
    loop {
        match parser.parse_next_event() {
            Ok(FfmpegEvent::ParsedOutputStream(s)) => {
                if let Some(v) = s.video_data() {
                    let _ = geo_tx.send(Geometry {
                        width: v.width,
                        height: v.height,
                        pixel_format,
                    });
                }
            }
            Ok(FfmpegEvent::Log(level, line)) => {
                let line = redact_text(&line);
                let lower = line.to_ascii_lowercase();
                if lower.contains("corrupt")
                    || lower.contains("error while decoding")
                    || lower.contains("concealing")
                {
                    st.decode_errors
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                match level {
                    LogLevel::Error | LogLevel::Fatal => {
                        tracing::warn!(stream = id, "ffmpeg: {line}");
                        *st.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(line);
                    }
                    LogLevel::Warning => tracing::debug!(stream = id, "ffmpeg: {line}"),
                    _ => tracing::trace!(stream = id, "ffmpeg: {line}"),
                }
            }
            Ok(FfmpegEvent::LogEOF) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

struct FfmpegSource {
    child: ffmpeg_sidecar::child::FfmpegChild,
    pid: u32,
    stdout: ChildStdout,
    geo_rx: mpsc::Receiver<Geometry>,
    shared: Arc<StderrState>,
    /// True until the child is reaped: a kill after that could hit a reused pid.
    alive: Arc<Mutex<bool>>,
}

impl RunningSource for FfmpegSource {
    fn geometry(&mut self, timeout: Duration, stop: &dyn Fn() -> bool) -> Result<Geometry, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if stop() {
                return Err("stopped".into());
            }
            match self.geo_rx.recv_timeout(Duration::from_millis(50)) {
                Ok(g) => return Ok(g),
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "no stream information from ffmpeg within {timeout:?}"
                    ))
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(self
                        .last_error()
                        .unwrap_or_else(|| "ffmpeg exited before opening the input".into()))
                }
            }
        }
    }

    fn frames(&mut self) -> &mut dyn Read {
        &mut self.stdout
    }

    fn pid(&self) -> u32 {
        self.pid
    }

    fn kill_handle(&self) -> KillHandle {
        let alive = self.alive.clone();
        let pid = self.pid;
        Arc::new(move || {
            let alive = alive.lock().unwrap_or_else(|p| p.into_inner());
            if *alive {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::SIGKILL,
                );
            }
        })
    }

    fn finish(&mut self) -> String {
        let mut alive = self.alive.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self.child.kill();
        let status = self.child.wait();
        *alive = false;
        match status {
            Ok(s) => s.to_string(),
            Err(e) => format!("wait failed: {e}"),
        }
    }

    fn last_error(&self) -> Option<String> {
        self.shared
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn decode_errors(&self) -> u64 {
        self.shared
            .decode_errors
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use framebroker_proto::naming::{classify_url, UrlPolicy};

    fn spec(url: &str, size: Option<(u32, u32)>) -> SourceSpec {
        SourceSpec {
            id: "t".into(),
            url: url.into(),
            redacted: url.into(),
            source: classify_url(url, &UrlPolicy::default()).unwrap(),
            size,
            pixel_format: PixelFormat::Bgr24,
            transport: Transport::Tcp,
            io_timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn rtsp_arguments() {
        let a = ffmpeg_args(&spec("rtsp://u:p@127.0.0.1:8554/cam", Some((320, 240))));
        let i = a.iter().position(|x| x == "-i").unwrap();
        assert_eq!(
            a[i + 1],
            "rtsp://u:p@127.0.0.1:8554/cam",
            "URL is exactly one argument"
        );
        assert!(a.windows(2).any(|w| w == ["-rtsp_transport", "tcp"]));
        assert!(a.windows(2).any(|w| w == ["-timeout", "5000000"]));
        assert!(a.windows(2).any(|w| w == ["-vf", "scale=320:240"]));
        assert!(a.contains(&"-nostdin".to_string()));
        assert_eq!(a.last().unwrap(), "pipe:1");
        assert!(a.windows(2).any(|w| w == ["-pix_fmt", "bgr24"]));
    }

    #[test]
    fn test_source_arguments() {
        let a = ffmpeg_args(&spec("testsrc://?size=320x240&rate=15", None));
        assert!(a
            .windows(2)
            .any(|w| w == ["-i", "testsrc2=size=320x240:rate=15"]));
        assert!(a.contains(&"-re".to_string()));
        assert!(!a.contains(&"-vf".to_string()));
    }
}
