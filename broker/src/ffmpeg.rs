//! The seam to the outside world that produces frames: [`SourceFactory`] spawns a
//! [`RunningSource`]. [`Ffmpeg`] is the real one (one ffmpeg process per stream,
//! through `ffmpeg-sidecar`, with the system ffmpeg); tests of the supervisor can
//! plug in a fake.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use ffmpeg_sidecar::command::FfmpegCommand;
use ffmpeg_sidecar::event::{FfmpegEvent, LogLevel};
use ffmpeg_sidecar::log_parser::FfmpegLogParser;
use framebroker_proto::control::{HwAccel, Transport};
use framebroker_proto::naming::Source;
use framebroker_proto::ring::wall_ns;
use framebroker_proto::{Geometry, PixelFormat, StreamTime};

use crate::convert::{Colour, Converter, SourceFormat};
use crate::error::{classify_line, is_damage, Error, ErrorKind};
use crate::nut::NutReader;
use crate::sync::{wait_timeout, Lock};

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
    /// Hardware decoder to ask ffmpeg for ([`HwAccel::None`]: software).
    pub hwaccel: HwAccel,
    /// Further outputs of the same decode (variants), in order: output `k + 1`.
    pub variants: Vec<OutputSpec>,
}

/// One extra output of a decode: a variant's id, size (`None`: native) and format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputSpec {
    pub id: String,
    pub size: Option<(u32, u32)>,
    pub pixel_format: PixelFormat,
}

/// First file descriptor of the variants' pipes in the ffmpeg child: variant `k`
/// (0-based) writes to `pipe:{VARIANT_FD0 + k}`.
pub const VARIANT_FD0: i32 = 3;

/// Kills a running source from another thread (stall detection, stop).
pub type KillHandle = Arc<dyn Fn() + Send + Sync>;

/// A source that produces raw frames.
pub trait RunningSource: Send {
    /// Waits until the output geometry is known (ffmpeg has probed the input).
    fn geometry(&mut self, timeout: Duration, stop: &dyn Fn() -> bool) -> Result<Geometry, Error>;
    /// The raw frame bytes, `frame_bytes` per frame, back to back.
    fn frames(&mut self) -> &mut dyn Read;
    fn pid(&self) -> u32;
    fn kill_handle(&self) -> KillHandle;
    /// Kills (if still running) and reaps the source; returns how it ended
    /// (`exit status: 0`), for the log.
    fn finish(&mut self) -> String;
    /// The error that best says why the source ended, as far as it reported one.
    fn last_error(&self) -> Option<Error>;
    /// Count of decode errors (corrupt input) reported so far.
    fn decode_errors(&self) -> u64;
    /// Waits until the geometry of every variant output is known (in the order of
    /// [`SourceSpec::variants`]). Called after [`geometry`](Self::geometry).
    fn variant_geometries(
        &mut self,
        _timeout: Duration,
        _stop: &dyn Fn() -> bool,
    ) -> Result<Vec<Geometry>, Error> {
        Ok(Vec::new())
    }
    /// The variants' frame streams, in the order of [`SourceSpec::variants`]; once.
    fn take_variant_outputs(&mut self) -> Vec<Box<dyn Read + Send>> {
        Vec::new()
    }
    /// Each frame's time on the stream's clock, when the source reports it.
    fn clock(&self) -> Option<Arc<FrameClock>> {
        None
    }
    /// Why the hardware decoder could not be used, when the source said so.
    fn hwaccel_error(&self) -> Option<Error> {
        None
    }
    /// The frame rate the input declares (its stream information), once known.
    fn declared_fps(&self) -> Option<f64> {
        None
    }
    /// Reads the main output's next frame into `dst` (exactly one ring frame);
    /// returns its pts in ns when the frame carries one. An error ends the run
    /// (`UnexpectedEof`: the output ended).
    fn read_frame(&mut self, dst: &mut [u8]) -> std::io::Result<Option<i64>> {
        self.frames().read_exact(dst).map(|()| None)
    }
    /// The variants' frames, in the order of [`SourceSpec::variants`]; once.
    fn take_variant_readers(&mut self) -> Vec<Box<dyn FrameRead>> {
        self.take_variant_outputs()
            .into_iter()
            .map(|r| Box::new(RawFrames(r)) as Box<dyn FrameRead>)
            .collect()
    }
}

/// One output's frames, each as the ring wants it.
pub trait FrameRead: Send {
    /// Reads the next frame into `dst` (exactly one ring frame); returns its pts
    /// in ns when the source knows it.
    fn read_frame(&mut self, dst: &mut [u8]) -> std::io::Result<Option<i64>>;
}

/// Frames back to back, already in the ring's format (`-f rawvideo -pix_fmt`).
pub struct RawFrames<R>(pub R);

impl<R: Read + Send> FrameRead for RawFrames<R> {
    fn read_frame(&mut self, dst: &mut [u8]) -> std::io::Result<Option<i64>> {
        self.0.read_exact(dst).map(|()| None)
    }
}

/// How ffmpeg hands frames to the broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Handover {
    /// The decoder's own format (yuv420p, yuvj420p, nv12) in NUT: each frame's
    /// pts in the container, the broker converts into the ring's format
    /// ([`crate::convert`]). Half the bytes of bgr24 on the pipe, and no log
    /// line per frame.
    #[default]
    Nut,
    /// The ring's format as rawvideo, converted by ffmpeg, each frame's pts from
    /// `showinfo`'s log line (the original path; kept for comparison).
    Rawvideo,
}

impl Handover {
    pub fn name(self) -> &'static str {
        match self {
            Handover::Nut => "nut",
            Handover::Rawvideo => "rawvideo",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [Handover::Nut, Handover::Rawvideo]
            .into_iter()
            .find(|h| h.name() == name)
    }
}

pub trait SourceFactory: Send + Sync {
    fn spawn(&self, spec: &SourceSpec) -> Result<Box<dyn RunningSource>, Error>;
}

/// The real source: the system ffmpeg.
pub struct Ffmpeg {
    pub path: PathBuf,
    /// How frames come over the pipe ([`Handover::Nut`] unless set otherwise).
    pub handover: Handover,
    /// Streams whose decoder output the broker cannot convert itself (odd size,
    /// a format or colourspace [`crate::convert`] does not take): ffmpeg
    /// converts for them, as with [`Handover::Rawvideo`], from their next run on.
    ffmpeg_converts: Arc<Mutex<std::collections::HashSet<String>>>,
    /// How this ffmpeg spells "keep the input's time base" for the NUT outputs.
    pub input_time_base: InputTimeBase,
}

/// The value of `-enc_time_base` that keeps the input's time base, so each
/// frame's pts in NUT is the input's: `-1` up to FFmpeg 6 (Debian 12's 5.1),
/// `demux` from FFmpeg 7 on, which refuses `-1` ("Invalid time base: -1"; seen
/// with the Windows build 9.0.2). `demux` exists since 6.1, so 6.x takes either.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InputTimeBase {
    #[default]
    Negative,
    Demux,
}

impl InputTimeBase {
    /// From `ffmpeg -version`'s first line (`ffmpeg version 5.1.6-0+deb12u1 ...`,
    /// `ffmpeg version n7.1 ...`, `ffmpeg version 9.0.2-essentials_build-...`).
    /// A build from git (`N-...`) is newer than any release: `demux`.
    pub fn for_version(line: &str) -> Self {
        let v = line
            .split_whitespace()
            .skip_while(|w| *w != "version")
            .nth(1)
            .unwrap_or("");
        let v = v.strip_prefix('n').unwrap_or(v);
        if v.starts_with("N-") {
            return InputTimeBase::Demux;
        }
        let major: String = v.chars().take_while(char::is_ascii_digit).collect();
        match major.parse::<u32>() {
            Ok(m) if m >= 7 => InputTimeBase::Demux,
            _ => InputTimeBase::Negative,
        }
    }

    fn arg(self) -> &'static str {
        match self {
            InputTimeBase::Negative => "-1",
            InputTimeBase::Demux => "demux",
        }
    }
}

impl Ffmpeg {
    /// `explicit` (from `--ffmpeg`) or `ffmpeg` found on PATH. Never a downloaded one.
    pub fn locate(explicit: Option<&Path>) -> Result<Self, String> {
        if let Some(p) = explicit {
            if p.is_file() {
                return Ok(Ffmpeg::at(p.to_path_buf()));
            }
            return Err(format!("ffmpeg not found at {}", p.display()));
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .map(|d| d.join("ffmpeg"))
            .find(|p| p.is_file())
            .map(Ffmpeg::at)
            .ok_or_else(|| "ffmpeg not found on PATH: install it (Debian/Ubuntu: apt-get install ffmpeg) or pass --ffmpeg PATH".into())
    }

    /// The ffmpeg at `path`, with the default hand-over.
    pub fn at(path: PathBuf) -> Self {
        Ffmpeg {
            path,
            handover: Handover::default(),
            ffmpeg_converts: Default::default(),
            input_time_base: InputTimeBase::default(),
        }
    }

    /// The hand-over a run of stream `spec` uses.
    pub fn handover_for(&self, spec: &SourceSpec) -> Handover {
        let test_pattern = matches!(spec.source, Source::Test(_));
        // lavfi patterns are mostly RGB: converting them to YUV and back would
        // only lose colour, and they cost no camera anything.
        if self.handover == Handover::Rawvideo
            || test_pattern
            || self.ffmpeg_converts.locked().contains(&spec.id)
        {
            Handover::Rawvideo
        } else {
            Handover::Nut
        }
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
///
/// One decode feeds every output: a `-filter_complex` graph starts with `showinfo`
/// (each frame's pts on stderr, see [`FrameClock`]), splits into one branch per
/// output, scales a branch only when it has a size, and each branch is its own
/// rawvideo output: the main stream on stdout, variant `k` on fd
/// [`VARIANT_FD0`]` + k`. This is [`Handover::Rawvideo`]; see [`ffmpeg_args_with`].
pub fn ffmpeg_args(spec: &SourceSpec) -> Vec<String> {
    ffmpeg_args_with(spec, Handover::Rawvideo)
}

/// The arguments for a hand-over. [`Handover::Nut`]: the same graph without
/// `showinfo`, and each output is the decoder's own pixel format (no
/// `-pix_fmt`) as rawvideo in NUT, with the input's time base
/// (`-enc_time_base -1`) so each frame's pts is the input's.
pub fn ffmpeg_args_with(spec: &SourceSpec, handover: Handover) -> Vec<String> {
    ffmpeg_args_for(spec, handover, InputTimeBase::Negative)
}

/// [`ffmpeg_args_with`] for an ffmpeg that spells the input time base `tb`.
pub fn ffmpeg_args_for(spec: &SourceSpec, handover: Handover, tb: InputTimeBase) -> Vec<String> {
    let mut a: Vec<String> = [
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "level+info",
        "-copyts",
    ]
    .map(String::from)
    .into();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    if let Some(decoder) = spec.hwaccel.decoder() {
        // The boards' decoders (v4l2m2m, rkmpp) are decoders, not -hwaccel methods;
        // they hand frames back in system memory, so the filters work unchanged.
        a.extend(s(&["-c:v", decoder]));
    } else if spec.hwaccel != HwAccel::None {
        // Without -hwaccel_output_format ffmpeg downloads decoded frames to system
        // memory itself, so the filters below work unchanged.
        a.extend(s(&["-hwaccel", spec.hwaccel.name()]));
    }
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
    let outputs: Vec<(Option<(u32, u32)>, PixelFormat)> =
        std::iter::once((spec.size, spec.pixel_format))
            .chain(spec.variants.iter().map(|v| (v.size, v.pixel_format)))
            .collect();
    let showinfo = handover == Handover::Rawvideo;
    a.extend(s(&["-filter_complex", &filter_graph(&outputs, showinfo)]));
    for (k, (_, pixel_format)) in outputs.iter().enumerate() {
        let target = if k == 0 {
            "pipe:1".to_string()
        } else {
            format!("pipe:{}", VARIANT_FD0 + k as i32 - 1)
        };
        // passthrough: exactly one output frame per decoded frame (no duplicates or
        // drops to a constant rate), so frame k of every output is showinfo's n = k.
        a.extend(s(&["-map", &format!("[o{k}]"), "-fps_mode", "passthrough"]));
        match handover {
            Handover::Rawvideo => a.extend(s(&["-f", "rawvideo", "-pix_fmt", pixel_format.name()])),
            Handover::Nut => a.extend(s(&[
                "-enc_time_base",
                tb.arg(),
                "-c:v",
                "rawvideo",
                "-f",
                "nut",
            ])),
        }
        a.push(target);
    }
    a
}

/// `[0:v:0]showinfo=checksum=0,split=N[..]...` with output labels `[o0]`…`[oN-1]`
/// (without `showinfo`: `[0:v:0]split=N...`, or `[0:v:0]null[o0]`).
fn filter_graph(outputs: &[(Option<(u32, u32)>, PixelFormat)], showinfo: bool) -> String {
    let scale = |size: Option<(u32, u32)>| size.map(|(w, h)| format!("scale={w}:{h}"));
    let mut g = String::from("[0:v:0]");
    let mut filters: Vec<String> = Vec::new();
    if showinfo {
        filters.push("showinfo=checksum=0".into());
    }
    if outputs.len() == 1 {
        filters.extend(scale(outputs[0].0));
        if filters.is_empty() {
            filters.push("null".into());
        }
        g += &filters.join(",");
        g += "[o0]";
        return g;
    }
    filters.push(format!("split={}", outputs.len()));
    g += &filters.join(",");
    let mut branches = String::new();
    for (k, (size, _)) in outputs.iter().enumerate() {
        match scale(*size) {
            Some(sc) => {
                g += &format!("[s{k}]");
                branches += &format!(";[s{k}]{sc}[o{k}]");
            }
            None => g += &format!("[o{k}]"),
        }
    }
    g + &branches
}

impl SourceFactory for Ffmpeg {
    fn spawn(&self, spec: &SourceSpec) -> Result<Box<dyn RunningSource>, Error> {
        let internal = |what: &str| Error::new(ErrorKind::Internal, what);
        let mut cmd = FfmpegCommand::new_with_path(&self.path);
        // `new_with_path` already adds `-loglevel level+info`; ours repeats it
        // harmlessly, and keeps ffmpeg_args() complete on its own.
        let handover = self.handover_for(spec);
        cmd.args(ffmpeg_args_for(spec, handover, self.input_time_base));
        // One pipe per variant: the broker keeps the read end; the write end goes to
        // the child as fd VARIANT_FD0 + k. Both ends are close-on-exec, so no other
        // child inherits them; the write ends are first moved above every target fd
        // so the dup2 calls in the child cannot clobber one another.
        #[cfg_attr(not(unix), allow(unused_mut))]
        let mut variant_reads = Vec::with_capacity(spec.variants.len());
        #[cfg(unix)]
        let mut variant_writes = Vec::with_capacity(spec.variants.len());
        #[cfg(unix)]
        for _ in &spec.variants {
            let (r, w) = variant_pipe()?;
            grow_pipe(&r);
            variant_reads.push(std::fs::File::from(r));
            variant_writes.push(w);
        }
        // Windows: a child gets no numbered descriptors beyond stdio.
        #[cfg(windows)]
        if !spec.variants.is_empty() {
            // The registry refuses such requests up front; this is the backstop.
            return Err(internal(
                "variants are not available on Windows yet (they need extra pipes to ffmpeg)",
            ));
        }
        #[cfg(unix)]
        let write_fds: Vec<i32> = {
            use std::os::fd::AsRawFd;
            variant_writes.iter().map(|w| w.as_raw_fd()).collect()
        };
        // stdin stays a pipe (ffmpeg-sidecar requires it); `-nostdin` makes ffmpeg
        // ignore it.
        #[cfg(target_os = "linux")]
        crate::platform::child_setup(
            cmd.as_inner_mut(),
            write_fds
                .iter()
                .enumerate()
                .map(|(k, fd)| (*fd, VARIANT_FD0 + k as i32))
                .collect(),
        );
        let spawned = cmd.spawn();
        // The child has its copies; ours must go or the readers never see EOF.
        #[cfg(unix)]
        drop(variant_writes);
        let mut child = spawned.map_err(|e| internal(&format!("cannot start ffmpeg: {e}")))?;
        if let Err(e) = crate::platform::adopt_child(child.as_inner()) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(internal(&e));
        }
        let pid = child.as_inner().id();
        let stdout = child
            .take_stdout()
            .ok_or_else(|| internal("ffmpeg has no stdout"))?;
        let stderr = child
            .take_stderr()
            .ok_or_else(|| internal("ffmpeg has no stderr"))?;
        #[cfg(unix)]
        grow_pipe(&stdout);
        let (geo_tx, geo_rx) = mpsc::channel();
        let shared = Arc::new(StderrState::default());
        let clock = Arc::new(FrameClock::default());
        let (st, ck) = (shared.clone(), clock.clone());
        let id = spec.id.clone();
        let formats: Vec<PixelFormat> = std::iter::once(spec.pixel_format)
            .chain(spec.variants.iter().map(|v| v.pixel_format))
            .collect();
        let hw = spec.hwaccel != HwAccel::None;
        std::thread::Builder::new()
            .name(format!("ffmpeg-log-{id}"))
            .spawn(move || drain_log(stderr, &id, &formats, hw, geo_tx, &st, &ck))
            .map_err(|e| internal(&format!("cannot start log thread: {e}")))?;
        tracing::debug!(
            stream = spec.id,
            handover = handover.name(),
            "frames over the pipe"
        );
        Ok(Box::new(FfmpegSource {
            child,
            pid,
            stdout: Some(stdout),
            variants: variant_reads,
            geos: vec![None; 1 + spec.variants.len()],
            wires: vec![None; 1 + spec.variants.len()],
            geo_rx,
            shared,
            clock,
            reaper: Reaper::new(pid),
            handover,
            id: spec.id.clone(),
            ffmpeg_converts: self.ffmpeg_converts.clone(),
            main: None,
            empty: std::io::empty(),
        }))
    }
}

/// A close-on-exec pipe whose write end sits at fd 64 or above.
#[cfg(unix)]
fn variant_pipe() -> Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd), Error> {
    use nix::fcntl::OFlag;
    let internal = |e: String| Error::new(ErrorKind::Internal, e);
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
        .map_err(|e| internal(format!("cannot create a pipe: {e}")))?;
    let high = crate::platform::fd_above_targets(&w)
        .map_err(|e| internal(format!("cannot move a pipe descriptor: {e}")))?;
    Ok((r, high))
}

/// A bigger pipe means fewer wake-ups per frame (a 640×480 frame is 900 KiB; the
/// default pipe holds 64 KiB). Best effort.
#[cfg(unix)]
fn grow_pipe(pipe: &impl std::os::fd::AsFd) {
    #[cfg(target_os = "linux")]
    {
        use nix::fcntl::{fcntl, FcntlArg};
        let _ = fcntl(pipe, FcntlArg::F_SETPIPE_SZ(1 << 20));
    }
}

/// A decoder child (ffmpeg or ours) as the supervisor sees it: it can be
/// killed from any thread until it is reaped, never after (its pid may belong
/// to another process by then).
pub(crate) struct Reaper {
    pid: u32,
    alive: Arc<Mutex<bool>>,
}

impl Reaper {
    pub(crate) fn new(pid: u32) -> Self {
        Reaper {
            pid,
            alive: Arc::new(Mutex::new(true)),
        }
    }

    pub(crate) fn kill_handle(&self) -> KillHandle {
        let (alive, pid) = (self.alive.clone(), self.pid);
        Arc::new(move || {
            if *alive.locked() {
                crate::platform::kill_pid(pid);
            }
        })
    }

    /// Kills and reaps the child through `kill_and_wait`; how it ended, for the log.
    pub(crate) fn finish(
        &self,
        kill_and_wait: impl FnOnce() -> std::io::Result<std::process::ExitStatus>,
    ) -> String {
        let mut alive = self.alive.locked();
        let status = kill_and_wait();
        *alive = false;
        match status {
            Ok(s) => s.to_string(),
            Err(e) => format!("wait failed: {e}"),
        }
    }
}

/// What ffmpeg's log said, for the supervisor.
#[derive(Default)]
pub(crate) struct StderrState {
    /// The error that best explains an end: the latest line naming a cause, else
    /// the latest error line.
    pub(crate) last_error: Mutex<Option<Error>>,
    /// Damaged frames the decoder reported.
    pub(crate) decode_errors: std::sync::atomic::AtomicU64,
    /// The first line saying the hardware decoder could not be set up.
    pub(crate) hwaccel_error: Mutex<Option<Error>>,
    /// The input's declared frame rate (see [`declared_rate`]).
    pub(crate) declared_fps: Mutex<Option<f64>>,
}

/// The frame rate a stream line of ffmpeg's log declares: `30 fps` (the container's
/// or SDP's average rate), else `30 tbr` (the rate ffmpeg guesses from the
/// timestamps; a lavfi source prints only this). `None` when it says neither, or
/// a value that is not a positive finite number.
pub fn declared_rate(line: &str) -> Option<f64> {
    let value = |unit: &str| {
        line.split(',').find_map(|part| {
            let mut words = part.split_whitespace();
            let (n, u) = (words.next()?, words.next()?);
            if u != unit || words.next().is_some() {
                return None;
            }
            // ffmpeg prints e.g. `29.97`, `30`, `1k` (1000) or `90k`.
            let (digits, scale) = match n.strip_suffix('k') {
                Some(d) => (d, 1000.0),
                None => (n, 1.0),
            };
            let v = digits.parse::<f64>().ok()? * scale;
            (v.is_finite() && v > 0.0).then_some(v)
        })
    };
    value("fps").or_else(|| value("tbr"))
}

impl StderrState {
    pub(crate) fn last_error(&self) -> Option<Error> {
        self.last_error.locked().clone()
    }

    pub(crate) fn decode_errors(&self) -> u64 {
        self.decode_errors
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Takes in one log line other than showinfo's.
    fn line(&self, level: &LogLevel, line: &str, hw: bool) {
        let kind = classify_line(line);
        if hw && kind == Some(ErrorKind::HardwareDecoder) {
            let mut e = self.hwaccel_error.locked();
            if e.is_none() {
                *e = Some(Error::new(ErrorKind::HardwareDecoder, short_reason(line)));
            }
        }
        if is_damage(line) {
            self.decode_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if matches!(level, LogLevel::Error | LogLevel::Fatal) {
            let mut last = self.last_error.locked();
            // A later line that names no cause ("Conversion failed!") does not
            // hide an earlier one that does.
            let named = last.as_ref().is_some_and(|e| e.kind() != ErrorKind::Exited);
            if kind.is_some() || !named {
                *last = Some(Error::new(kind.unwrap_or(ErrorKind::Exited), line));
            }
        }
    }
}

/// Reads ffmpeg's log (its stderr, or a captured one in the tests) to its end:
/// the outputs' geometry to `geo_tx`, each frame's pts to `clock`, errors and
/// damage to `st`. Also reads the log of our own decoder
/// ([`crate::libav`]), which prints libav's lines in ffmpeg's form.
pub(crate) fn drain_log(
    log: impl Read,
    id: &str,
    formats: &[PixelFormat],
    hw: bool,
    geo_tx: mpsc::Sender<(usize, Geometry, Wire)>,
    st: &StderrState,
    clock: &FrameClock,
) {
    let mut parser = FfmpegLogParser::new(log);
    let mut showinfo = ShowinfoParser::default();
    loop {
        match parser.parse_next_event() {
            Ok(FfmpegEvent::ParsedInputStream(s)) => {
                // The first video stream of the input is the one decoded (`0:v:0`).
                if s.video_data().is_some() {
                    if let Some(fps) = declared_rate(&s.raw_log_message) {
                        let mut d = st.declared_fps.locked();
                        d.get_or_insert(fps);
                    }
                }
            }
            Ok(FfmpegEvent::ParsedOutputStream(s)) => {
                let k = s.parent_index as usize;
                // An input line without `fps` (a lavfi source prints only `tbr`) is
                // not parsed as a stream; the main output then says the rate its
                // frames come at (passthrough: the input's).
                if k == 0 {
                    if let Some(fps) = declared_rate(&s.raw_log_message) {
                        let mut d = st.declared_fps.locked();
                        d.get_or_insert(fps);
                    }
                }
                if let (Some(v), Some(pixel_format)) = (s.video_data(), formats.get(k)) {
                    let _ = geo_tx.send((
                        k,
                        Geometry {
                            width: v.width,
                            height: v.height,
                            pixel_format: *pixel_format,
                        },
                        wire_format(&s.raw_log_message),
                    ));
                }
            }
            Ok(FfmpegEvent::Log(level, line)) => {
                // showinfo prints two lines per frame (`n: pts:`, then the colour
                // properties): read the first, log neither, so no frame pays for
                // classifying them below.
                if line.contains("Parsed_showinfo") {
                    if let Some((n, pts_ns)) = showinfo.parse(&line) {
                        clock.record(n, pts_ns, wall_ns());
                    }
                    continue;
                }
                st.line(&level, &line, hw);
                let line = framebroker_proto::naming::redact_text(&line);
                match level {
                    LogLevel::Error | LogLevel::Fatal => {
                        tracing::warn!(stream = id, "ffmpeg: {line}")
                    }
                    LogLevel::Warning => tracing::debug!(stream = id, "ffmpeg: {line}"),
                    _ => tracing::trace!(stream = id, "ffmpeg: {line}"),
                }
            }
            Ok(FfmpegEvent::LogEOF) => return,
            // The parser refuses a stream line outside an input/output section
            // (a filter may print one); skip it rather than lose the rest of the log.
            Err(_) => {}
            Ok(_) => {}
        }
    }
}

/// What an output carries on the pipe, from its stream line: the raw format and
/// how to read its colours, or why the broker cannot convert it itself.
pub type Wire = Result<(SourceFormat, Colour), String>;

/// The [`Wire`] of an output stream line such as `Stream #0:0: Video: rawvideo
/// (I420 / 0x30323449), yuvj420p(pc, bt709, progressive), 640x480, ...`: the
/// pixel format, then in parentheses the range (`tv`/`pc`, absent when
/// unspecified), the colourspace (`csp` or `csp/primaries/trc`, absent when
/// unspecified) and the field order.
pub fn wire_format(line: &str) -> Wire {
    let after = line
        .split_once("Video:")
        .map(|(_, r)| r)
        .ok_or("no video stream line")?;
    // The codec, `rawvideo (I420 / 0x30323449)`, ends at its first `), `.
    let rest = after
        .split_once("), ")
        .map(|(_, r)| r)
        .ok_or("no pixel format")?;
    let end = rest.find([',', '(']).unwrap_or(rest.len());
    let pix_fmt = rest[..end].trim();
    let (format, implied) = SourceFormat::from_ffmpeg(pix_fmt)
        .ok_or_else(|| format!("the decoder puts out {pix_fmt}"))?;
    let (mut range, mut colorspace) = (None, None);
    if rest[end..].starts_with('(') {
        let inner = rest[end + 1..].split(')').next().unwrap_or("");
        for token in inner.split(',').map(str::trim) {
            match token {
                "tv" | "pc" => range = Some(token),
                "progressive" | "top first" | "bottom first" => {}
                t if t.ends_with("(swapped)") => {}
                t if colorspace.is_none() => colorspace = t.split('/').next(),
                _ => {}
            }
        }
    }
    let mut colour = Colour::from_ffmpeg(range, colorspace).ok_or_else(|| {
        format!(
            "colourspace {} range {}",
            colorspace.unwrap_or("-"),
            range.unwrap_or("-")
        )
    })?;
    if let Some(r) = implied {
        colour.range = r;
    }
    Ok((format, colour))
}

/// An output in NUT ([`Handover::Nut`]): reads each frame's header and payload
/// and converts the payload into the ring's format, straight into the slot
/// when no conversion is needed.
struct NutFrames<R: Read> {
    /// Until the first frame: the pipe (reading the NUT headers blocks).
    pipe: Option<R>,
    nut: Option<NutReader<R>>,
    conv: Converter,
    format: SourceFormat,
    scratch: Vec<u8>,
    /// Where a protocol error is reported (the run's error).
    shared: Arc<StderrState>,
}

impl<R: Read> NutFrames<R> {
    fn new(pipe: R, conv: Converter, format: SourceFormat, shared: Arc<StderrState>) -> Self {
        let scratch = if conv.is_copy() {
            Vec::new()
        } else {
            vec![0; conv.source_bytes()]
        };
        NutFrames {
            pipe: Some(pipe),
            nut: None,
            conv,
            format,
            scratch,
            shared,
        }
    }

    /// Ends the run: the reason becomes the run's error. Not the camera's
    /// `InvalidData` (which counts towards giving up): a frame of another size
    /// (the camera changed resolution) or damage on the pipe is survived by a
    /// restart, which also re-reads the geometry.
    fn fail(&self, what: String) -> std::io::Error {
        let e = Error::new(ErrorKind::Exited, format!("ffmpeg's NUT output: {what}"));
        *self.shared.last_error.locked() = Some(e);
        std::io::Error::new(std::io::ErrorKind::InvalidData, what)
    }

    fn next(&mut self, dst: &mut [u8]) -> std::io::Result<Option<i64>> {
        if self.nut.is_none() {
            let Some(pipe) = self.pipe.take() else {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            };
            let nut = match NutReader::new(pipe, self.conv.source_bytes() as u64) {
                Ok(n) => n,
                // ffmpeg ended before its first frame: not a protocol error.
                Err(crate::nut::NutError::NotNut) | Err(crate::nut::NutError::Truncated { .. }) => {
                    return Err(std::io::ErrorKind::UnexpectedEof.into())
                }
                Err(e) => return Err(self.fail(e.to_string())),
            };
            let (s, g) = (nut.stream(), self.conv.geometry());
            let fourcc: &[u8] = match self.format {
                SourceFormat::Yuv420p => b"I420",
                SourceFormat::Nv12 => b"NV12",
            };
            if (s.width, s.height) != (g.width, g.height) || s.fourcc != fourcc {
                let what = format!(
                    "stream {}x{} {:?}, {}x{} {:?} expected",
                    s.width,
                    s.height,
                    String::from_utf8_lossy(&s.fourcc),
                    g.width,
                    g.height,
                    String::from_utf8_lossy(fourcc)
                );
                return Err(self.fail(what));
            }
            self.nut = Some(nut);
        }
        let nut = self.nut.as_mut().expect("set above");
        let header = match nut.next_frame() {
            Ok(Some(h)) => h,
            Ok(None) | Err(crate::nut::NutError::Truncated { .. }) => {
                return Err(std::io::ErrorKind::UnexpectedEof.into())
            }
            Err(e) => return Err(self.fail(e.to_string())),
        };
        let pts_ns = nut.stream().pts_ns(header.pts);
        let read = if self.conv.is_copy() {
            nut.read_payload(dst)
        } else {
            nut.read_payload(&mut self.scratch)
        };
        match read {
            Ok(()) => {}
            Err(crate::nut::NutError::Truncated { .. }) => {
                return Err(std::io::ErrorKind::UnexpectedEof.into())
            }
            Err(e) => return Err(self.fail(e.to_string())),
        }
        if !self.conv.is_copy() {
            if let Err(e) = self.conv.convert(&self.scratch, dst) {
                return Err(self.fail(e.to_string()));
            }
        }
        Ok(Some(pts_ns))
    }
}

impl<R: Read + Send> FrameRead for NutFrames<R> {
    fn read_frame(&mut self, dst: &mut [u8]) -> std::io::Result<Option<i64>> {
        self.next(dst)
    }
}

/// The text of an ffmpeg log line without its `[level]` and `[ctx @ 0x..]` prefixes.
fn short_reason(line: &str) -> String {
    let mut rest = line.trim();
    while let Some(r) = rest.strip_prefix('[') {
        match r.find(']') {
            Some(end) => rest = r[end + 1..].trim_start(),
            None => break,
        }
    }
    rest.chars().take(160).collect()
}

/// Reads `showinfo`'s per-frame lines: the input time base once, then
/// `n:   0 pts:   3000 pts_time:0.0333 ...` for every frame.
#[derive(Default)]
struct ShowinfoParser {
    /// (num, den) from `config in time_base: num/den`.
    time_base: Option<(i64, i64)>,
}

impl ShowinfoParser {
    /// `Some((n, pts_ns))` for a frame line; `None` for any other line.
    fn parse(&mut self, line: &str) -> Option<(u64, Option<i64>)> {
        if !line.contains("Parsed_showinfo") {
            return None;
        }
        if let Some(i) = line.find("config in time_base:") {
            let tb = line[i + "config in time_base:".len()..].split(',').next()?;
            let (num, den) = tb.trim().split_once('/')?;
            let (num, den) = (num.trim().parse().ok()?, den.trim().parse().ok()?);
            if num > 0 && den > 0 {
                self.time_base = Some((num, den));
            }
            return None;
        }
        let i = line.find(" n:")?;
        let mut words = line[i + 3..].split_whitespace();
        let n: u64 = words.next()?.parse().ok()?;
        let value = |key: &str| {
            let j = line.find(key)?;
            line[j + key.len()..].split_whitespace().next()
        };
        let pts_ns = match (
            self.time_base,
            value(" pts:").and_then(|v| v.parse::<i64>().ok()),
        ) {
            (Some((num, den)), Some(pts)) => {
                i64::try_from(i128::from(pts) * i128::from(num) * 1_000_000_000 / i128::from(den))
                    .ok()
            }
            _ => value("pts_time:")
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|t| t.is_finite())
                .map(|t| (t * 1e9).round() as i64),
        };
        Some((n, pts_ns))
    }
}

/// Each decoded frame's time on the stream's clock, by frame index since ffmpeg
/// started: filled from ffmpeg's log, read by every output's frame pump.
///
/// The wall-clock mapping is anchored at the first frame's arrival (wall clock when
/// its log line is read) and advanced by pts deltas; it is re-anchored when pts goes
/// backwards or jumps more than [`REANCHOR_JUMP_NS`] from the previous frame.
#[derive(Default)]
pub struct FrameClock {
    state: Mutex<ClockState>,
    cv: Condvar,
}

/// A pts step larger than this (either way) restarts the wall-clock mapping.
pub const REANCHOR_JUMP_NS: i64 = 5_000_000_000;
const CLOCK_WINDOW: usize = 256;

#[derive(Default)]
struct ClockState {
    /// `(n, time)` at `n % CLOCK_WINDOW`.
    window: Vec<Option<(u64, Option<StreamTime>)>>,
    /// Highest n recorded.
    newest: Option<u64>,
    /// (pts_ns, wall_ns) of the anchor, and the previous frame's pts.
    anchor: Option<(i64, u64)>,
    prev_pts: Option<i64>,
}

impl FrameClock {
    /// Records frame `n`'s pts (`None`: not reported), seen at wall clock `now_ns`.
    pub fn record(&self, n: u64, pts_ns: Option<i64>, now_ns: u64) {
        let mut s = self.state.locked();
        if s.window.is_empty() {
            s.window = vec![None; CLOCK_WINDOW];
        }
        let time = pts_ns.and_then(|pts| {
            let jump = s
                .prev_pts
                .is_some_and(|prev| pts < prev || pts - prev > REANCHOR_JUMP_NS);
            if s.anchor.is_none() || jump {
                s.anchor = Some((pts, now_ns));
            }
            s.prev_pts = Some(pts);
            let (apts, awall) = s.anchor?;
            let wall = i128::from(awall) + i128::from(pts) - i128::from(apts);
            u64::try_from(wall)
                .ok()
                .filter(|w| *w != 0)
                .map(|wall_ns| StreamTime {
                    pts_ns: pts,
                    wall_ns,
                })
        });
        s.window[(n % CLOCK_WINDOW as u64) as usize] = Some((n, time));
        s.newest = Some(s.newest.map_or(n, |m| m.max(n)));
        drop(s);
        self.cv.notify_all();
    }

    /// Frame `n`'s time from its pts, carried with the frame (NUT): the first
    /// output to see frame `n` records it at `now_ns`, the others (variants of
    /// the same decode) get the same time.
    pub fn observe(&self, n: u64, pts_ns: i64, now_ns: u64) -> Option<StreamTime> {
        {
            let s = self.state.locked();
            if let Some(Some((m, t))) = s.window.get((n % CLOCK_WINDOW as u64) as usize) {
                if *m == n {
                    return *t;
                }
            }
        }
        self.record(n, Some(pts_ns), now_ns);
        let s = self.state.locked();
        match s.window.get((n % CLOCK_WINDOW as u64) as usize) {
            Some(Some((m, t))) if *m == n => *t,
            _ => None,
        }
    }

    /// Frame `n`'s time. When the log is at most a few frames behind, waits up to
    /// `wait` for its line; a log that reports nothing costs no waiting.
    pub fn stream_time(&self, n: u64, wait: Duration) -> Option<StreamTime> {
        let deadline = Instant::now() + wait;
        let mut s = self.state.locked();
        loop {
            if let Some(Some((m, t))) = s.window.get((n % CLOCK_WINDOW as u64) as usize) {
                if *m == n {
                    return *t;
                }
            }
            let close = s.newest.is_some_and(|m| m + 16 >= n);
            let now = Instant::now();
            if !close || now >= deadline || s.newest.is_some_and(|m| m > n) {
                return None;
            }
            s = wait_timeout(&self.cv, s, deadline - now);
        }
    }
}

struct FfmpegSource {
    child: ffmpeg_sidecar::child::FfmpegChild,
    pid: u32,
    /// The main output's pipe (taken by the NUT reader of the main output).
    stdout: Option<ChildStdout>,
    /// Read ends of the variants' pipes (taken once by the supervisor).
    variants: Vec<std::fs::File>,
    /// Geometry of output k, once ffmpeg reported it.
    geos: Vec<Option<Geometry>>,
    /// What output k carries on its pipe, once ffmpeg reported it.
    wires: Vec<Option<Wire>>,
    geo_rx: mpsc::Receiver<(usize, Geometry, Wire)>,
    shared: Arc<StderrState>,
    clock: Arc<FrameClock>,
    /// True until the child is reaped: a kill after that could hit a reused pid.
    reaper: Reaper,
    handover: Handover,
    id: String,
    ffmpeg_converts: Arc<Mutex<std::collections::HashSet<String>>>,
    /// The main output's NUT reader, made at its first frame.
    main: Option<Box<dyn FrameRead>>,
    /// What [`RunningSource::frames`] reads once the NUT reader has the pipe.
    empty: std::io::Empty,
}

impl FfmpegSource {
    /// Waits for the geometry of output `k`.
    fn output_geometry(
        &mut self,
        k: usize,
        deadline: Instant,
        timeout: Duration,
        stop: &dyn Fn() -> bool,
    ) -> Result<Geometry, Error> {
        loop {
            if let Some(g) = self.geos.get(k).copied().flatten() {
                return Ok(g);
            }
            if stop() {
                return Err(Error::new(ErrorKind::Stopped, "stopped"));
            }
            match self.geo_rx.recv_timeout(Duration::from_millis(50)) {
                Ok((i, g, wire)) => {
                    if let Some(slot) = self.geos.get_mut(i) {
                        *slot = Some(g);
                    }
                    if let Some(slot) = self.wires.get_mut(i) {
                        *slot = Some(wire);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(Error::new(
                        ErrorKind::NoStreamInfo,
                        format!("no stream information from ffmpeg within {timeout:?}"),
                    ))
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(self.last_error().unwrap_or_else(|| {
                        Error::new(ErrorKind::Exited, "ffmpeg exited before opening the input")
                    }))
                }
            }
        }
    }
}

impl FfmpegSource {
    /// The NUT reader of output `k` over `pipe`. When the broker cannot convert
    /// what the decoder puts out, the stream is marked for ffmpeg's conversion
    /// from its next run on, and this run ends with the reason.
    fn nut_reader<R: Read + Send + 'static>(
        &self,
        k: usize,
        pipe: R,
    ) -> Result<Box<dyn FrameRead>, std::io::Error> {
        let geometry = self.geos.get(k).copied().flatten();
        let wire = self.wires.get(k).cloned().flatten();
        let made = match (geometry, wire) {
            (Some(g), Some(Ok((format, colour)))) => Converter::new(format, colour, g)
                .map(|c| (c, format))
                .map_err(|e| e.to_string()),
            (_, Some(Err(why))) => Err(why),
            _ => Err("no stream information for the output".into()),
        };
        match made {
            Ok((conv, format)) => Ok(Box::new(NutFrames::new(
                pipe,
                conv,
                format,
                self.shared.clone(),
            ))),
            Err(why) => {
                self.ffmpeg_converts.locked().insert(self.id.clone());
                let e = Error::new(
                    ErrorKind::Exited,
                    format!("the broker does not convert this output itself ({why}); restarting with ffmpeg converting"),
                );
                tracing::info!(stream = self.id, "{e}");
                *self.shared.last_error.locked() = Some(e);
                // The whole run ends (a variant's too): the next one has every
                // output converted by ffmpeg.
                (self.kill_handle())();
                Err(std::io::Error::new(std::io::ErrorKind::Unsupported, why))
            }
        }
    }
}

/// Hands out an error once (the variant's pipe was already taken).
struct Failed(Option<std::io::Error>);

impl FrameRead for Failed {
    fn read_frame(&mut self, _dst: &mut [u8]) -> std::io::Result<Option<i64>> {
        Err(self
            .0
            .take()
            .unwrap_or_else(|| std::io::ErrorKind::UnexpectedEof.into()))
    }
}

impl RunningSource for FfmpegSource {
    fn read_frame(&mut self, dst: &mut [u8]) -> std::io::Result<Option<i64>> {
        if self.handover == Handover::Rawvideo {
            return match self.stdout.as_mut() {
                Some(out) => out.read_exact(dst).map(|()| None),
                None => Err(std::io::ErrorKind::UnexpectedEof.into()),
            };
        }
        if self.main.is_none() {
            let Some(pipe) = self.stdout.take() else {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            };
            self.main = Some(self.nut_reader(0, pipe)?);
        }
        self.main.as_mut().expect("set above").read_frame(dst)
    }

    fn take_variant_readers(&mut self) -> Vec<Box<dyn FrameRead>> {
        let pipes = std::mem::take(&mut self.variants);
        pipes
            .into_iter()
            .enumerate()
            .map(|(k, f)| match self.handover {
                Handover::Rawvideo => Box::new(RawFrames(f)) as Box<dyn FrameRead>,
                Handover::Nut => self
                    .nut_reader(k + 1, f)
                    .unwrap_or_else(|e| Box::new(Failed(Some(e)))),
            })
            .collect()
    }

    fn geometry(&mut self, timeout: Duration, stop: &dyn Fn() -> bool) -> Result<Geometry, Error> {
        self.output_geometry(0, Instant::now() + timeout, timeout, stop)
    }

    fn variant_geometries(
        &mut self,
        timeout: Duration,
        stop: &dyn Fn() -> bool,
    ) -> Result<Vec<Geometry>, Error> {
        let deadline = Instant::now() + timeout;
        (1..self.geos.len())
            .map(|k| self.output_geometry(k, deadline, timeout, stop))
            .collect()
    }

    fn take_variant_outputs(&mut self) -> Vec<Box<dyn Read + Send>> {
        std::mem::take(&mut self.variants)
            .into_iter()
            .map(|f| Box::new(f) as Box<dyn Read + Send>)
            .collect()
    }

    fn clock(&self) -> Option<Arc<FrameClock>> {
        Some(self.clock.clone())
    }

    fn hwaccel_error(&self) -> Option<Error> {
        self.shared.hwaccel_error.locked().clone()
    }

    fn declared_fps(&self) -> Option<f64> {
        *self.shared.declared_fps.locked()
    }

    fn frames(&mut self) -> &mut dyn Read {
        match self.stdout.as_mut() {
            Some(out) => out,
            None => &mut self.empty,
        }
    }

    fn pid(&self) -> u32 {
        self.pid
    }

    fn kill_handle(&self) -> KillHandle {
        self.reaper.kill_handle()
    }

    fn finish(&mut self) -> String {
        let child = &mut self.child;
        self.reaper.finish(|| {
            let _ = child.kill();
            child.wait()
        })
    }

    fn last_error(&self) -> Option<Error> {
        self.shared.last_error()
    }

    fn decode_errors(&self) -> u64 {
        self.shared.decode_errors()
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
            hwaccel: HwAccel::None,
            variants: Vec::new(),
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
        assert!(a.windows(2).any(|w| w
            == [
                "-filter_complex",
                "[0:v:0]showinfo=checksum=0,scale=320:240[o0]"
            ]));
        assert!(!a.contains(&"-hwaccel".to_string()));
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
        assert!(a
            .windows(2)
            .any(|w| w == ["-filter_complex", "[0:v:0]showinfo=checksum=0[o0]"]));
    }

    #[test]
    fn board_decoders_are_forced_decoders_not_hwaccels() {
        for (hw, decoder) in [
            (HwAccel::H264V4l2m2m, "h264_v4l2m2m"),
            (HwAccel::HevcRkmpp, "hevc_rkmpp"),
        ] {
            let mut sp = spec("rtsp://127.0.0.1:8554/cam", None);
            sp.hwaccel = hw;
            let a = ffmpeg_args(&sp);
            let c = a.iter().position(|x| x == "-c:v").unwrap();
            assert_eq!(a[c + 1], decoder);
            assert!(
                c < a.iter().position(|x| x == "-i").unwrap(),
                "before the input"
            );
            assert!(!a.contains(&"-hwaccel".to_string()));
        }
    }

    #[test]
    fn variants_share_one_decode() {
        let mut sp = spec("rtsp://127.0.0.1:8554/cam", None);
        sp.hwaccel = HwAccel::Vaapi;
        sp.variants = vec![
            OutputSpec {
                id: "m".into(),
                size: Some((320, 240)),
                pixel_format: PixelFormat::Gray,
            },
            OutputSpec {
                id: "r".into(),
                size: None,
                pixel_format: PixelFormat::Rgb24,
            },
        ];
        let a = ffmpeg_args(&sp);
        let hw = a.iter().position(|x| x == "-hwaccel").unwrap();
        assert_eq!(a[hw + 1], "vaapi");
        assert!(
            hw < a.iter().position(|x| x == "-i").unwrap(),
            "before the input"
        );
        let g = a.iter().position(|x| x == "-filter_complex").unwrap();
        assert_eq!(
            a[g + 1],
            "[0:v:0]showinfo=checksum=0,split=3[o0][s1][o2];[s1]scale=320:240[o1]"
        );
        assert_eq!(a.iter().filter(|x| *x == "-map").count(), 3);
        let tail = a[g + 2..].join(" ");
        assert_eq!(
            tail,
            "-map [o0] -fps_mode passthrough -f rawvideo -pix_fmt bgr24 pipe:1 \
             -map [o1] -fps_mode passthrough -f rawvideo -pix_fmt gray pipe:3 \
             -map [o2] -fps_mode passthrough -f rawvideo -pix_fmt rgb24 pipe:4"
        );
    }

    #[test]
    fn declared_rates_from_stream_lines() {
        let cam = "[info]   Stream #0:0: Video: h264 (Constrained Baseline), yuv420p(tv, smpte170m, progressive), 640x480 [SAR 1:1 DAR 4:3], 30 fps, 30 tbr, 90k tbn";
        assert_eq!(declared_rate(cam), Some(30.0));
        let ntsc =
            "Stream #0:0: Video: h264 (Main), yuv420p, 1920x1080, 29.97 fps, 29.97 tbr, 90k tbn";
        assert_eq!(declared_rate(ntsc), Some(29.97));
        let lavfi = "  Stream #0:0: Video: rawvideo (RGB[24] / 0x18424752), rgb24, 320x240 [SAR 1:1 DAR 4:3], 15 tbr, 15 tbn";
        assert_eq!(declared_rate(lavfi), Some(15.0));
        let out = "  Stream #0:0: Video: rawvideo (BGR[24] / 0x18524742), bgr24, 640x480, q=2-31, 221184 kb/s, 25 fps, 25 tbn";
        assert_eq!(declared_rate(out), Some(25.0));
        assert_eq!(
            declared_rate("Stream #0:0: Video: h264, yuv420p, 640x480, 90k tbn"),
            None
        );
        assert_eq!(
            declared_rate("Stream #0:0: Video: h264, 0 fps, nan tbr"),
            None
        );
    }

    #[test]
    fn showinfo_lines_give_pts() {
        let mut p = ShowinfoParser::default();
        assert_eq!(p.parse("[info] frame=    1 fps=0.0"), None);
        assert_eq!(
            p.parse(
                "[Parsed_showinfo_0 @ 0x5] [info] config in time_base: 1/90000, frame_rate: 30/1"
            ),
            None
        );
        assert_eq!(
            p.parse("[Parsed_showinfo_0 @ 0x5] [info] n:   1 pts:   3000 pts_time:0.0333333 pos: -1 fmt:yuv420p"),
            Some((1, Some(33_333_333)))
        );
        assert_eq!(
            p.parse("[Parsed_showinfo_0 @ 0x5] [info] color_range:tv color_space:smpte170m"),
            None
        );
        let mut q = ShowinfoParser::default();
        assert_eq!(
            q.parse("[Parsed_showinfo_0 @ 0x5] [info] n:  12 pts:  6 pts_time:0.5 pos: -1"),
            Some((12, Some(500_000_000)))
        );
    }

    #[test]
    fn frame_clock_anchors_and_reanchors() {
        let c = FrameClock::default();
        let ms = 1_000_000i64;
        c.record(0, Some(1_000 * ms), 5_000_000_000);
        c.record(1, Some(1_033 * ms), 5_100_000_000);
        c.record(2, None, 5_200_000_000);
        c.record(3, Some(100 * ms), 5_300_000_000); // backwards: new anchor
        let t = |n| c.stream_time(n, Duration::ZERO);
        assert_eq!(t(0).unwrap().wall_ns, 5_000_000_000);
        assert_eq!(
            t(1).unwrap().wall_ns,
            5_033_000_000,
            "pts delta, not arrival"
        );
        assert_eq!(t(1).unwrap().pts_ns, 1_033 * ms);
        assert_eq!(t(2), None);
        assert_eq!(t(3).unwrap().wall_ns, 5_300_000_000);
        assert_eq!(t(99), None, "far ahead of the log: no wait, unknown");
    }

    #[test]
    fn short_reasons_drop_the_prefixes() {
        assert_eq!(
            short_reason("[h264 @ 0x1] [error] No device available for decoder"),
            "No device available for decoder"
        );
    }

    /// What the log parser made of a captured ffmpeg log (`broker/testdata/`,
    /// see its README for how each was captured).
    struct Replay {
        geometries: Vec<(usize, Geometry)>,
        state: StderrState,
        clock: FrameClock,
    }

    impl Replay {
        fn of(name: &str, hw: bool) -> Replay {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("testdata")
                .join(format!("{name}.log"));
            let log = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
            let (tx, rx) = mpsc::channel();
            let (state, clock) = (StderrState::default(), FrameClock::default());
            drain_log(log, name, &[PixelFormat::Bgr24], hw, tx, &state, &clock);
            Replay {
                geometries: rx.try_iter().map(|(k, g, _)| (k, g)).collect(),
                state,
                clock,
            }
        }
        fn error(&self) -> Error {
            self.state.last_error.locked().clone().expect("an error")
        }
        fn kind(&self) -> ErrorKind {
            self.error().kind()
        }
        fn decode_errors(&self) -> u64 {
            self.state
                .decode_errors
                .load(std::sync::atomic::Ordering::Relaxed)
        }
        fn frame(&self, n: u64) -> Option<StreamTime> {
            self.clock.stream_time(n, Duration::ZERO)
        }
    }

    const QVGA: Geometry = Geometry {
        width: 320,
        height: 240,
        pixel_format: PixelFormat::Bgr24,
    };

    #[test]
    fn the_test_camera_gives_its_size_and_every_frames_pts_and_no_error() {
        let r = Replay::of("camera_ok", false);
        assert_eq!(r.geometries, [(0, QVGA)]);
        assert!(r.state.last_error.locked().is_none());
        assert_eq!(r.decode_errors(), 0);
        assert_eq!(*r.state.declared_fps.locked(), Some(15.0));
        assert_eq!(
            r.frame(0).unwrap().pts_ns,
            1_000_000_000,
            "pts 90000 at 1/90000"
        );
        let (a, b) = (r.frame(1).unwrap(), r.frame(14).unwrap());
        assert_eq!(
            (a.pts_ns, b.pts_ns),
            (1_066_666_666, 1_933_333_333),
            "6000 ticks a frame: 15 fps"
        );
        assert_eq!(b.wall_ns - a.wall_ns, (b.pts_ns - a.pts_ns) as u64);
        assert_eq!(r.frame(15), None, "15 frames captured");
    }

    #[test]
    fn a_401_is_unauthorized_and_its_message_holds_no_password() {
        let r = Replay::of("unauthorized_401", false);
        assert_eq!(r.kind(), ErrorKind::Unauthorized);
        assert!(r.kind().is_permanent());
        assert_eq!(
            r.error().message(),
            "[error] rtsp://***@127.0.0.1:8554/cam: Server returned 401 Unauthorized (authorization failed)"
        );
        assert!(r.geometries.is_empty());
    }

    #[test]
    fn a_404_is_not_found() {
        let r = Replay::of("not_found_404", false);
        assert_eq!(r.kind(), ErrorKind::NotFound);
        assert!(r.error().message().contains("404 Not Found"));
        assert!(r.geometries.is_empty());
    }

    #[test]
    fn a_refused_connection_is_unreachable_and_retried() {
        let r = Replay::of("refused", false);
        assert_eq!(r.kind(), ErrorKind::Unreachable);
        assert!(!r.kind().is_permanent());
        assert_eq!(
            r.error().message(),
            "[error] rtsp://127.0.0.1:8554/cam: Connection refused"
        );
    }

    #[test]
    fn a_frozen_camera_ends_unreachable_after_its_frames() {
        let r = Replay::of("stalled", false);
        assert_eq!(r.geometries, [(0, QVGA)]);
        assert!(r.frame(0).is_some(), "frames before the freeze");
        assert_eq!(r.kind(), ErrorKind::Unreachable);
        assert!(r.error().message().ends_with("Connection timed out"));
    }

    #[test]
    fn a_damaged_stream_counts_one_decode_error_per_damaged_frame_and_goes_on() {
        let r = Replay::of("damaged", false);
        assert_eq!(r.geometries, [(0, QVGA)]);
        // ffmpeg's "corrupt decoded frame" lines; the codec's own lines about
        // macroblocks and concealment come with them and are not counted again.
        assert_eq!(r.decode_errors(), 7);
        assert_eq!(r.kind(), ErrorKind::Damaged);
        assert!(!r.kind().is_permanent());
        assert!(r.frame(29).is_some(), "every frame decoded");
    }

    #[test]
    fn a_missing_vaapi_device_is_a_hardware_decoder_error_with_the_first_reason() {
        let r = Replay::of("vaapi_missing", true);
        let hw = r.state.hwaccel_error.locked().clone().unwrap();
        assert_eq!(hw.kind(), ErrorKind::HardwareDecoder);
        assert_eq!(hw.message(), "Device creation failed: -542398533.");
        assert_eq!(r.kind(), ErrorKind::HardwareDecoder);
        assert!(!r.kind().is_the_cameras());
        // Without -hwaccel the same lines are not the decoder's business.
        let sw = Replay::of("vaapi_missing", false);
        assert!(sw.state.hwaccel_error.locked().is_none());
    }

    #[test]
    fn input_that_is_not_video_is_invalid_data_despite_later_lines() {
        let r = Replay::of("invalid_data", false);
        assert_eq!(r.kind(), ErrorKind::InvalidData);
        assert!(r.kind().is_permanent());
        assert!(r.error().message().contains("Invalid data found"));
        assert!(r.geometries.is_empty());
    }

    #[test]
    fn the_input_time_base_is_spelled_for_the_ffmpeg_at_hand() {
        let tb = InputTimeBase::for_version;
        for (line, want) in [
            (
                "ffmpeg version 5.1.6-0+deb12u1 Copyright (c) 2000-2024",
                InputTimeBase::Negative,
            ),
            (
                "ffmpeg version 6.1.1-3ubuntu5 Copyright",
                InputTimeBase::Negative,
            ),
            ("ffmpeg version n7.1 Copyright", InputTimeBase::Demux),
            (
                "ffmpeg version 9.0.2-essentials_build-www.gyan.dev Copyright",
                InputTimeBase::Demux,
            ),
            (
                "ffmpeg version N-118000-gabcdef Copyright",
                InputTimeBase::Demux,
            ),
            ("something else entirely", InputTimeBase::Negative),
        ] {
            assert_eq!(tb(line), want, "{line}");
        }
        let sp = spec("rtsp://127.0.0.1:8554/cam", None);
        let a = ffmpeg_args_for(&sp, Handover::Nut, InputTimeBase::Demux).join(" ");
        assert!(
            a.contains("-enc_time_base demux -c:v rawvideo -f nut"),
            "{a}"
        );
        let a = ffmpeg_args_for(&sp, Handover::Rawvideo, InputTimeBase::Demux).join(" ");
        assert!(!a.contains("-enc_time_base"), "{a}");
    }

    #[test]
    fn nut_arguments_carry_the_decoders_format_without_showinfo() {
        let mut sp = spec("rtsp://127.0.0.1:8554/cam", None);
        sp.variants = vec![OutputSpec {
            id: "t.small".into(),
            size: Some((320, 240)),
            pixel_format: PixelFormat::Gray,
        }];
        let a = ffmpeg_args_with(&sp, Handover::Nut).join(" ");
        assert!(
            a.contains("-filter_complex [0:v:0]split=2[o0][s1];[s1]scale=320:240[o1]"),
            "{a}"
        );
        assert!(
            a.ends_with(
                "-map [o0] -fps_mode passthrough -enc_time_base -1 -c:v rawvideo -f nut pipe:1 \
             -map [o1] -fps_mode passthrough -enc_time_base -1 -c:v rawvideo -f nut pipe:3"
            ),
            "{a}"
        );
        assert!(!a.contains("showinfo") && !a.contains("-pix_fmt"), "{a}");
        let one = ffmpeg_args_with(&spec("rtsp://127.0.0.1:8554/cam", None), Handover::Nut);
        assert!(one
            .windows(2)
            .any(|w| w == ["-filter_complex", "[0:v:0]null[o0]"]));
        // Test patterns keep ffmpeg's conversion; so does the switch.
        let f = Ffmpeg::at("ffmpeg".into());
        assert_eq!(
            f.handover_for(&spec("testsrc://?size=320x240&rate=15", None)),
            Handover::Rawvideo
        );
        assert_eq!(f.handover_for(&sp), Handover::Nut);
        let old = Ffmpeg {
            handover: Handover::Rawvideo,
            ..Ffmpeg::at("ffmpeg".into())
        };
        assert_eq!(old.handover_for(&sp), Handover::Rawvideo);
    }

    #[test]
    fn the_wire_format_comes_from_the_output_stream_line() {
        use crate::convert::{Matrix, Range};
        let line = |fmt: &str| {
            format!("  Stream #0:0: Video: rawvideo (I420 / 0x30323449), {fmt}, 640x480, q=2-31, 110592 kb/s, 30 fps, 90k tbn")
        };
        let c = |matrix, range| Colour { matrix, range };
        let cases = [
            (
                "yuv420p(progressive)",
                Ok((SourceFormat::Yuv420p, c(Matrix::Bt601, Range::Limited))),
            ),
            (
                "yuv420p",
                Ok((SourceFormat::Yuv420p, c(Matrix::Bt601, Range::Limited))),
            ),
            (
                "yuv420p(tv, bt709, progressive)",
                Ok((SourceFormat::Yuv420p, c(Matrix::Bt709, Range::Limited))),
            ),
            (
                "yuv420p(tv, smpte170m/smpte170m/bt709, progressive)",
                Ok((SourceFormat::Yuv420p, c(Matrix::Bt601, Range::Limited))),
            ),
            (
                "yuvj420p(pc, bt709, progressive)",
                Ok((SourceFormat::Yuv420p, c(Matrix::Bt709, Range::Full))),
            ),
            (
                "yuvj420p(progressive)",
                Ok((SourceFormat::Yuv420p, c(Matrix::Bt601, Range::Full))),
            ),
            (
                "nv12(tv, bt709, top first)",
                Ok((SourceFormat::Nv12, c(Matrix::Bt709, Range::Limited))),
            ),
            (
                "nv12",
                Ok((SourceFormat::Nv12, c(Matrix::Bt601, Range::Limited))),
            ),
        ];
        for (fmt, want) in cases {
            assert_eq!(wire_format(&line(fmt)), want, "{fmt}");
        }
        for fmt in [
            "yuv422p(progressive)",
            "yuv420p(tv, smpte240m, progressive)",
            "yuv444p10le",
            "rgb24",
        ] {
            assert!(wire_format(&line(fmt)).is_err(), "{fmt}");
        }
    }

    #[test]
    fn pts_carried_with_frames_give_every_output_the_same_time() {
        let c = FrameClock::default();
        let ms = 1_000_000i64;
        let w = |x: i64| (x * ms) as u64;
        let t0 = c.observe(0, 1_000 * ms, w(5_000)).unwrap();
        assert_eq!((t0.pts_ns, t0.wall_ns), (1_000 * ms, w(5_000)));
        // A variant sees frame 0 later: the same time.
        assert_eq!(c.observe(0, 1_000 * ms, w(5_007)), Some(t0));
        // Frame 1 arrives late: its time follows its pts, not its arrival.
        let t1 = c.observe(1, 1_033 * ms, w(5_090)).unwrap();
        assert_eq!(t1.wall_ns, w(5_033));
        assert_eq!(c.stream_time(1, Duration::ZERO), Some(t1));
    }
}
