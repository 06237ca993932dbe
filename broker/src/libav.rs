//! Our own decoder process, `framebroker-decoder` (crate `broker/decoder`), as a
//! [`SourceFactory`]: libavcodec decodes in a child process of its own, and each
//! frame reaches the broker through a staging buffer in shared memory instead of
//! a pipe. The broker converts from there straight into the ring's slot, as it
//! does for ffmpeg's NUT output ([`crate::convert`]).
//!
//! What the pipe cost and this does not: ffmpeg's write of every frame into the
//! pipe and the broker's read out of it (two copies through the kernel and their
//! system calls, about 4 % of a core at 1080p30 even for yuv420p). What stays as
//! with ffmpeg: the decoder is a separate process (a crash in libavcodec takes
//! only it down; it cannot touch the readers' ring, only its own staging
//! memory), the supervisor kills it on a stall and restarts it with backoff, it
//! dies with the broker (`PR_SET_PDEATHSIG`), its log is read and classified as
//! ffmpeg's, and the URL's credentials are redacted from everything logged (it
//! gets the URL through its environment, not its command line).
//!
//! Variants are outputs of the same decode, as with ffmpeg: each its own staging
//! memory and its own converter. Streams this decoder does not take (test
//! patterns, files, hardware decoders, and any stream whose frames it or the
//! broker could not hand over, from its next run on) are given to ffmpeg
//! ([`Ffmpeg`]) unchanged.
//!
//! The frame pool: a `memfd` the broker creates and passes at
//! `framebroker_decoder::POOL_FD`; libavcodec decodes into its slots (the
//! decoder sizes and seals it, the broker checks the seals before mapping it
//! read-only), so a frame of the decoded size is converted in place, with no
//! copy at all. Other frames (another size, a full pool) come through staging.
//!
//! Staging memory: a `memfd` per output that the broker creates and passes as
//! fd 3, 4, ... After the decoder's geometry messages the broker sizes each,
//! seals it against shrinking and growing (so the decoder cannot take pages
//! away from under the broker's mapping, which would be a SIGBUS here), maps it
//! read-only and says ready.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use framebroker_decoder::{
    Ack, Layout, Message, Place, PoolLayout, MAX_OUTPUTS, MESSAGE_BYTES, POOL_FD, READY,
    STAGING_FD, URL_ENV,
};
use framebroker_proto::control::{HwAccel, Transport};
use framebroker_proto::naming::Source;
use framebroker_proto::{Geometry, PixelFormat};

use crate::convert::{Colour, Converter, Planes, SourceFormat};
use crate::error::{Error, ErrorKind};
use crate::ffmpeg::{
    drain_log, Ffmpeg, FrameClock, FrameRead, KillHandle, Reaper, RunningSource, SourceFactory,
    SourceSpec, StderrState,
};
use crate::sync::Lock;

/// Which program decodes network sources.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Decoder {
    /// The system ffmpeg, frames over a pipe (the default).
    #[default]
    Ffmpeg,
    /// `framebroker-decoder` (libavcodec), frames through shared memory.
    Libav,
}

impl Decoder {
    pub fn name(self) -> &'static str {
        match self {
            Decoder::Ffmpeg => "ffmpeg",
            Decoder::Libav => "libav",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [Decoder::Ffmpeg, Decoder::Libav]
            .into_iter()
            .find(|d| d.name() == name)
    }
}

/// How many staging buffers the decoder gets: one being filled, one being
/// converted, one spare for a burst.
const BUFFERS: u32 = 3;

/// The decoder, with ffmpeg for what it does not take.
pub struct Libav {
    pub path: PathBuf,
    pub ffmpeg: Ffmpeg,
    /// Streams whose frames this path could not hand over: ffmpeg from their next
    /// run on.
    to_ffmpeg: Arc<Mutex<HashSet<String>>>,
}

impl Libav {
    /// `framebroker-decoder`'s path and `--version` line: `explicit`, else next
    /// to the running executable, else on `PATH`; an error when it cannot run.
    pub fn find(explicit: Option<&Path>) -> Result<(PathBuf, String), String> {
        const NAME: &str = "framebroker-decoder";
        let path = match explicit {
            Some(p) => p.to_path_buf(),
            None => std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(|d| d.join(NAME)))
                .filter(|p| p.is_file())
                .unwrap_or_else(|| PathBuf::from(NAME)),
        };
        let out = Command::new(&path)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", path.display()))?;
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr);
            return Err(format!(
                "{} cannot decode: {}",
                path.display(),
                why.trim().trim_start_matches("[fatal] ")
            ));
        }
        let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Ok((path, version))
    }

    /// The decoder at `path`, with `ffmpeg` for what it does not take.
    pub fn new(path: PathBuf, ffmpeg: Ffmpeg) -> Self {
        Libav {
            path,
            ffmpeg,
            to_ffmpeg: Default::default(),
        }
    }

    /// Why stream `spec` goes to ffmpeg instead, or `None` if the decoder takes it.
    pub fn declines(&self, spec: &SourceSpec) -> Option<&'static str> {
        if !matches!(spec.source, Source::Network) {
            Some("test patterns and files are ffmpeg's")
        } else if spec.hwaccel != HwAccel::None {
            Some("hardware decoders are ffmpeg's")
        } else if self.to_ffmpeg.locked().contains(&spec.id) {
            Some("its frames could not be handed over by this decoder")
        } else {
            None
        }
    }
}

impl SourceFactory for Libav {
    fn spawn(&self, spec: &SourceSpec) -> Result<Box<dyn RunningSource>, Error> {
        if let Some(why) = self.declines(spec) {
            tracing::debug!(stream = spec.id, "decoded by ffmpeg: {why}");
            return self.ffmpeg.spawn(spec);
        }
        spawn(&self.path, spec, self.to_ffmpeg.clone())
    }
}

fn internal(what: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Internal, what.to_string())
}

/// A memory file for the decoder, at fd 64 or above and close-on-exec (the child
/// gets its copy at its own number between fork and exec).
fn staging_memfd() -> Result<OwnedFd, Error> {
    use nix::sys::memfd::{memfd_create, MFdFlags};
    let fd = memfd_create(
        "framebroker-staging",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .map_err(|e| internal(format!("cannot create the staging memory: {e}")))?;
    crate::platform::fd_above_targets(&fd)
        .map_err(|e| internal(format!("cannot move the staging descriptor: {e}")))
}

fn spawn(
    path: &Path,
    spec: &SourceSpec,
    to_ffmpeg: Arc<Mutex<HashSet<String>>>,
) -> Result<Box<dyn RunningSource>, Error> {
    // Output 0 is the stream, then its variants, each with its staging memory.
    let sizes: Vec<Option<(u32, u32)>> = std::iter::once(spec.size)
        .chain(spec.variants.iter().map(|v| v.size))
        .collect();
    let formats: Vec<PixelFormat> = std::iter::once(spec.pixel_format)
        .chain(spec.variants.iter().map(|v| v.pixel_format))
        .collect();
    if sizes.len() > MAX_OUTPUTS as usize {
        return Err(internal(format!(
            "at most {MAX_OUTPUTS} outputs per decode"
        )));
    }
    let memfds = sizes
        .iter()
        .map(|_| staging_memfd())
        .collect::<Result<Vec<_>, _>>()?;
    // The frame pool the decoder decodes into (it sizes and seals it).
    let pool_fd = staging_memfd()?;
    let mut cmd = Command::new(path);
    cmd.env(URL_ENV, &spec.url)
        .arg("--timeout-us")
        .arg(spec.io_timeout.as_micros().to_string())
        .arg("--buffers")
        .arg(BUFFERS.to_string())
        .arg("--transport")
        .arg(match spec.transport {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        })
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for size in &sizes {
        cmd.arg("--output").arg(match size {
            Some((w, h)) => format!("{w}x{h}"),
            None => "native".into(),
        });
    }
    // Output k's staging memory at STAGING_FD + k, the pool at POOL_FD.
    let fds = memfds
        .iter()
        .enumerate()
        .map(|(k, m)| (m.as_raw_fd(), STAGING_FD + k as i32))
        .chain(std::iter::once((pool_fd.as_raw_fd(), POOL_FD)))
        .collect();
    crate::platform::child_setup(&mut cmd, fds);
    let mut child = cmd
        .spawn()
        .map_err(|e| internal(format!("cannot start the decoder {}: {e}", path.display())))?;
    let pid = child.id();
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(internal("the decoder has no stdio pipes"));
    };
    let shared = Arc::new(StderrState::default());
    let clock = Arc::new(FrameClock::default());
    let reaper = Reaper::new(pid);
    let kill = reaper.kill_handle();
    let (st, ck) = (shared.clone(), clock.clone());
    let id = spec.id.clone();
    let log_formats = formats.clone();
    let (geo_tx, _geo_rx) = mpsc::channel();
    std::thread::Builder::new()
        .name(format!("decoder-log-{id}"))
        .spawn(move || drain_log(stderr, &id, &log_formats, false, geo_tx, &st, &ck))
        .map_err(|e| internal(format!("cannot start log thread: {e}")))?;
    Ok(Box::new(LibavSource {
        child,
        pid,
        reaper,
        kill,
        acks: Arc::new(Mutex::new(stdin)),
        stdout: Some(stdout),
        frame_rxs: Vec::new(),
        outputs: memfds
            .into_iter()
            .zip(formats)
            .map(|(memfd, ring_format)| Port {
                memfd,
                ring_format,
                staged: None,
            })
            .collect(),
        main: None,
        pool_fd,
        pool: None,
        shared,
        clock,
        declared_fps: None,
        id: spec.id.clone(),
        to_ffmpeg,
        empty: std::io::empty(),
    }))
}

/// Records a protocol error as the run's error and ends the run.
fn broken(shared: &StderrState, kill: &KillHandle, why: impl std::fmt::Display) -> Error {
    let e = Error::new(
        ErrorKind::Internal,
        format!("the decoder broke its protocol: {why}"),
    );
    *shared.last_error.locked() = Some(e.clone());
    kill();
    e
}

/// Whether `stdout` has data (or its end) within `timeout`.
fn readable_within(stdout: &ChildStdout, timeout: Duration) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(stdout.as_fd(), PollFlags::POLLIN)];
    // EINTR and the like: the caller looks again.
    matches!(poll(&mut fds, PollTimeout::from(ms)), Ok(n) if n > 0)
}

/// The decoder's next message. `None` at the end of its output (it exited or
/// was killed); a malformed message is an error, which ends the run.
fn next_message(stdout: &mut impl Read) -> Result<Option<Message>, String> {
    let mut b = [0u8; MESSAGE_BYTES];
    // A message is written whole (96 bytes, less than PIPE_BUF), so a read that
    // found the pipe readable does not wait for the rest of one.
    if stdout.read_exact(&mut b).is_err() {
        return Ok(None);
    }
    Message::decode(&b).map(Some).map_err(|why| why.to_string())
}

/// The frame message of one of `outputs` outputs, as `(output, frame)`.
fn frame_message(m: Message, outputs: u32) -> Result<(u32, StagedFrame), String> {
    match m {
        Message::Frame {
            output,
            place,
            pts_ns,
        } if output < outputs => Ok((output, (place, pts_ns))),
        Message::Frame { output, .. } => Err(format!("a frame of output {output}")),
        Message::Geometry { output, .. } => Err(format!(
            "a geometry of output {output} after the first frame"
        )),
    }
}

/// With variants: reads the decoder's frame messages to their end, each to its
/// output's channel. A malformed message ends the run.
fn split_frames(
    mut stdout: impl Read,
    frame_txs: Vec<mpsc::SyncSender<StagedFrame>>,
    shared: &StderrState,
    kill: &KillHandle,
) {
    let outputs = frame_txs.len() as u32;
    loop {
        let frame = match next_message(&mut stdout) {
            Ok(None) => return,
            Ok(Some(m)) => frame_message(m, outputs),
            Err(why) => Err(why),
        };
        match frame {
            // The receiver is gone when its pump ended: the run is ending.
            Ok((output, f)) => {
                if frame_txs[output as usize].send(f).is_err() {
                    return;
                }
            }
            Err(why) => {
                broken(shared, kill, why);
                return;
            }
        }
    }
}

/// A frame the decoder handed over: where it is, and its pts in ns.
type StagedFrame = (Place, Option<i64>);
/// One output's staged frames, as the decoder announces them.
type StagedFrames = mpsc::Receiver<StagedFrame>;

/// Where an output's frame messages come from.
enum Incoming {
    /// The decoder's stdout itself. A run with one output (no variants, the
    /// usual case) reads it on the stream's own thread: no thread in between
    /// to wake and hand each frame over.
    Pipe(ChildStdout),
    /// An output's share, from the thread that splits the messages by output.
    Split(StagedFrames),
}

/// One output's staging buffers as the broker reads them.
struct Staged {
    map: memmap2::Mmap,
    frame_bytes: usize,
    buffers: u32,
    conv: Converter,
    geometry: Geometry,
    /// The frame pool, when this output gets frames in place.
    pool: Option<Arc<PoolMap>>,
}

/// The decoder's frame pool, mapped read-only.
struct PoolMap {
    map: memmap2::Mmap,
    layout: PoolLayout,
}

impl PoolMap {
    /// The planes of slot `slot` (the converter checks that they hold the frame).
    fn planes(&self, slot: u32, layout: Layout) -> Option<Planes<'_>> {
        let l = &self.layout;
        if slot >= l.slots {
            return None;
        }
        let start = slot as usize * l.slot_bytes as usize;
        let end = start + l.slot_bytes as usize;
        let plane = |k: usize| -> Option<(&[u8], usize)> {
            let at = start + l.offsets[k] as usize;
            (at <= end).then(|| (&self.map[at..end], l.strides[k] as usize))
        };
        Some(match layout {
            Layout::Yuv420p => Planes {
                y: plane(0)?,
                u: plane(1)?,
                v: plane(2)?,
            },
            Layout::Nv12 => Planes {
                y: plane(0)?,
                u: plane(1)?,
                v: (&[], 0),
            },
        })
    }
}

/// One output of the decode: its staging memory and the ring's format.
struct Port {
    memfd: OwnedFd,
    ring_format: PixelFormat,
    staged: Option<Arc<Staged>>,
}

struct LibavSource {
    child: Child,
    pid: u32,
    reaper: Reaper,
    kill: KillHandle,
    acks: Arc<Mutex<ChildStdin>>,
    /// The decoder's messages, until the frames' readers take them.
    stdout: Option<ChildStdout>,
    /// With variants, each output's frames until its reader is made.
    frame_rxs: Vec<Option<StagedFrames>>,
    outputs: Vec<Port>,
    main: Option<OutputFrames>,
    /// The frame pool's memory file, and its mapping once the decoder uses it.
    pool_fd: OwnedFd,
    pool: Option<Arc<PoolMap>>,
    shared: Arc<StderrState>,
    clock: Arc<FrameClock>,
    declared_fps: Option<f64>,
    id: String,
    to_ffmpeg: Arc<Mutex<HashSet<String>>>,
    empty: std::io::Empty,
}

impl LibavSource {
    /// The frames cannot be handed over this way: ffmpeg takes the stream from
    /// its next run on, and this run ends with the reason.
    fn hand_to_ffmpeg(&self, why: impl std::fmt::Display) -> Error {
        self.to_ffmpeg.locked().insert(self.id.clone());
        let e = Error::new(
            ErrorKind::Exited,
            format!("the decoder does not hand over this stream ({why}); restarting with ffmpeg"),
        );
        tracing::info!(stream = self.id, "{e}");
        *self.shared.last_error.locked() = Some(e.clone());
        (self.kill)();
        e
    }

    /// Sets up output `k`'s staging memory for its geometry message `m`.
    fn stage(&mut self, m: Message) -> Result<(), Error> {
        let Message::Geometry {
            output,
            width,
            height,
            layout,
            colorspace,
            range,
            buffers,
            fps_milli,
            pool,
        } = m
        else {
            return Err(broken(
                &self.shared,
                &self.kill,
                "a frame before the geometry",
            ));
        };
        let Some(port) = self.outputs.get(output as usize) else {
            return Err(broken(
                &self.shared,
                &self.kill,
                format_args!("a geometry for output {output}"),
            ));
        };
        if port.staged.is_some() {
            return Err(broken(&self.shared, &self.kill, "a second geometry"));
        }
        if fps_milli > 0 {
            self.declared_fps = Some(fps_milli as f64 / 1000.0);
            *self.shared.declared_fps.locked() = self.declared_fps;
        }
        let geometry = Geometry {
            width,
            height,
            pixel_format: port.ring_format,
        };
        let format = match layout {
            Layout::Yuv420p => SourceFormat::Yuv420p,
            Layout::Nv12 => SourceFormat::Nv12,
        };
        let cs = framebroker_decoder::colorspace_name(colorspace);
        let rg = framebroker_decoder::range_name(range);
        let Some(colour) = Colour::from_ffmpeg(rg, cs) else {
            return Err(self.hand_to_ffmpeg(format_args!(
                "colourspace {} range {}",
                cs.unwrap_or("-"),
                rg.unwrap_or("-")
            )));
        };
        let conv = match Converter::new(format, colour, geometry) {
            Ok(c) => c,
            Err(e) => return Err(self.hand_to_ffmpeg(e)),
        };
        let frame_bytes = conv.source_bytes();
        let Some(len) = frame_bytes.checked_mul(buffers as usize) else {
            return Err(broken(&self.shared, &self.kill, "staging size overflows"));
        };
        let io = |what: &str, e: &dyn std::fmt::Display| internal(format!("{what}: {e}"));
        let memfd = &port.memfd;
        nix::unistd::ftruncate(memfd, len as i64)
            .map_err(|e| io("cannot size the staging memory", &e))?;
        {
            use nix::fcntl::{fcntl, FcntlArg, SealFlag};
            fcntl(
                memfd,
                FcntlArg::F_ADD_SEALS(
                    SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL,
                ),
            )
            .map_err(|e| io("cannot seal the staging memory", &e))?;
        }
        let file = std::fs::File::from(
            memfd
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| io("cannot map the staging memory", &e))?,
        );
        // SAFETY: the memory file is `len` bytes and sealed against shrinking, so
        // every page of the mapping stays backed (no SIGBUS). The decoder may write
        // into it at any time; we only read a buffer between the decoder's message
        // naming it and our return of it, when the protocol gives it to us. A
        // decoder that broke that rule could only change pixel values of that
        // frame: every byte pattern is a valid u8.
        let map = unsafe { memmap2::MmapOptions::new().len(len).map(&file) }
            .map_err(|e| io("cannot map the staging memory", &e))?;
        let pool = match pool {
            Some(l) => Some(self.map_pool(l)?),
            None => None,
        };
        self.outputs[output as usize].staged = Some(Arc::new(Staged {
            map,
            frame_bytes,
            buffers,
            conv,
            geometry,
            pool,
        }));
        Ok(())
    }

    /// Maps the decoder's frame pool read-only (once; every output that gets
    /// frames in place shares it), after checking that the decoder sealed it at
    /// the size its layout says.
    fn map_pool(&mut self, l: PoolLayout) -> Result<Arc<PoolMap>, Error> {
        if let Some(p) = &self.pool {
            if p.layout != l {
                return Err(broken(&self.shared, &self.kill, "two frame pool layouts"));
            }
            return Ok(p.clone());
        }
        let Some(len) = l
            .slot_bytes
            .checked_mul(u64::from(l.slots))
            .and_then(|n| usize::try_from(n).ok())
        else {
            return Err(broken(
                &self.shared,
                &self.kill,
                "frame pool size overflows",
            ));
        };
        if l.offsets.iter().any(|o| u64::from(*o) > l.slot_bytes) {
            return Err(broken(
                &self.shared,
                &self.kill,
                "a plane outside its pool slot",
            ));
        }
        use nix::fcntl::{fcntl, FcntlArg, SealFlag};
        let seals = fcntl(&self.pool_fd, FcntlArg::F_GET_SEALS)
            .map(SealFlag::from_bits_truncate)
            .unwrap_or(SealFlag::empty());
        let size = nix::sys::stat::fstat(&self.pool_fd)
            .map(|st| st.st_size)
            .unwrap_or(0);
        if !seals.contains(SealFlag::F_SEAL_SHRINK) || (size as u64) < len as u64 {
            return Err(broken(
                &self.shared,
                &self.kill,
                format_args!("the frame pool is not sealed at {len} bytes ({size}, {seals:?})"),
            ));
        }
        let file = std::fs::File::from(
            self.pool_fd
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| internal(format!("cannot map the frame pool: {e}")))?,
        );
        // SAFETY: the memory file holds at least `len` bytes and is sealed against
        // shrinking (checked above), so every page of the mapping stays backed. As
        // with the staging buffers, we read a slot only between the decoder's
        // message naming it and our return of it; libavcodec writes a frame only
        // before handing it out, and a decoder breaking that could only change
        // pixel values (every byte pattern is a valid u8).
        let map = unsafe { memmap2::MmapOptions::new().len(len).map(&file) }
            .map_err(|e| internal(format!("cannot map the frame pool: {e}")))?;
        let p = Arc::new(PoolMap { map, layout: l });
        self.pool = Some(p.clone());
        Ok(p)
    }

    /// With variants, a thread splits the decoder's frame messages by output.
    fn split_outputs(&mut self) -> Result<(), Error> {
        let stdout = self
            .stdout
            .take()
            .ok_or_else(|| internal("the decoder's output was already taken"))?;
        let mut frame_txs = Vec::new();
        for _ in &self.outputs {
            let (tx, rx) = mpsc::sync_channel(BUFFERS as usize);
            frame_txs.push(tx);
            self.frame_rxs.push(Some(rx));
        }
        let (st, kill) = (self.shared.clone(), self.kill.clone());
        std::thread::Builder::new()
            .name(format!("decoder-out-{}", self.id))
            .spawn(move || split_frames(stdout, frame_txs, &st, &kill))
            .map_err(|e| internal(format!("cannot start the decoder's reader: {e}")))?;
        Ok(())
    }

    fn exited_early(&self) -> Error {
        self.last_error().unwrap_or_else(|| {
            Error::new(
                ErrorKind::Exited,
                "the decoder exited before its first frame",
            )
        })
    }

    /// Output `k`'s frames, once: the pipe itself when there is one output,
    /// else output `k`'s share of it.
    fn frames_of(&mut self, k: usize) -> Option<OutputFrames> {
        let staged = self.outputs.get(k)?.staged.clone()?;
        let frames = match self.stdout.take() {
            Some(stdout) if self.outputs.len() == 1 => Incoming::Pipe(stdout),
            stdout => {
                self.stdout = stdout;
                Incoming::Split(self.frame_rxs.get_mut(k)?.take()?)
            }
        };
        Some(OutputFrames {
            output: k as u32,
            frames,
            staged,
            acks: self.acks.clone(),
            shared: self.shared.clone(),
            kill: self.kill.clone(),
        })
    }
}

/// One output's frames: each converted from its staging buffer into the slot.
struct OutputFrames {
    output: u32,
    frames: Incoming,
    staged: Arc<Staged>,
    acks: Arc<Mutex<ChildStdin>>,
    shared: Arc<StderrState>,
    kill: KillHandle,
}

impl OutputFrames {
    fn broken(&self, why: impl std::fmt::Display) -> std::io::Error {
        std::io::Error::other(broken(&self.shared, &self.kill, why).to_string())
    }
}

impl FrameRead for OutputFrames {
    fn read_frame(&mut self, dst: &mut [u8]) -> std::io::Result<Option<i64>> {
        let (place, pts_ns) = match &mut self.frames {
            Incoming::Split(rx) => rx
                .recv()
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?,
            Incoming::Pipe(stdout) => match next_message(stdout) {
                Ok(None) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(Some(m)) => match frame_message(m, 1) {
                    Ok((_, f)) => f,
                    Err(why) => return Err(self.broken(why)),
                },
                Err(why) => return Err(self.broken(why)),
            },
        };
        let s = &self.staged;
        let converted = match place {
            Place::Staging(b) if b < s.buffers => {
                let at = b as usize * s.frame_bytes;
                s.conv.convert(&s.map[at..at + s.frame_bytes], dst)
            }
            Place::Pool(slot) => {
                let layout = match s.conv.source() {
                    SourceFormat::Yuv420p => Layout::Yuv420p,
                    SourceFormat::Nv12 => Layout::Nv12,
                };
                match s.pool.as_ref().and_then(|p| p.planes(slot, layout)) {
                    Some(planes) => s.conv.convert_planes(&planes, dst),
                    None => return Err(self.broken(format_args!("a frame in pool slot {slot}"))),
                }
            }
            Place::Staging(b) => {
                return Err(self.broken(format_args!("buffer {b} of {}", s.buffers)))
            }
        };
        // The frame is the decoder's again. A closed pipe means it is gone: the
        // next message read says so.
        let ack = Ack {
            output: self.output,
            place,
        };
        let _ = self.acks.locked().write_all(&ack.encode());
        converted.map_err(|e| self.broken(e))?;
        Ok(pts_ns)
    }
}

impl RunningSource for LibavSource {
    fn geometry(&mut self, timeout: Duration, stop: &dyn Fn() -> bool) -> Result<Geometry, Error> {
        let deadline = Instant::now() + timeout;
        // Every output's geometry comes after the first decoded frame, together.
        while self.outputs.iter().any(|p| p.staged.is_none()) {
            if stop() {
                return Err(Error::new(ErrorKind::Stopped, "stopped"));
            }
            let Some(stdout) = self.stdout.as_mut() else {
                return Err(internal("the decoder's output was already taken"));
            };
            if !readable_within(stdout, Duration::from_millis(50)) {
                if Instant::now() < deadline {
                    continue;
                }
                return Err(Error::new(
                    ErrorKind::NoStreamInfo,
                    format!("no stream information from the decoder within {timeout:?}"),
                ));
            }
            match next_message(stdout) {
                Ok(Some(m @ Message::Geometry { .. })) => self.stage(m)?,
                Ok(Some(Message::Frame { output, .. })) => {
                    return Err(broken(
                        &self.shared,
                        &self.kill,
                        format_args!("a frame of output {output} before every geometry"),
                    ))
                }
                Ok(None) => {
                    // The log thread may still be reading the reason.
                    std::thread::sleep(Duration::from_millis(50));
                    return Err(self.exited_early());
                }
                Err(why) => return Err(broken(&self.shared, &self.kill, why)),
            }
        }
        if self.acks.locked().write_all(&[READY]).is_err() {
            return Err(self.exited_early());
        }
        if self.outputs.len() > 1 {
            self.split_outputs()?;
        }
        self.main = self.frames_of(0);
        Ok(self.outputs[0]
            .staged
            .as_ref()
            .expect("staged above")
            .geometry)
    }

    fn variant_geometries(
        &mut self,
        _timeout: Duration,
        _stop: &dyn Fn() -> bool,
    ) -> Result<Vec<Geometry>, Error> {
        // Known with the main output's (see `geometry`).
        self.outputs[1..]
            .iter()
            .map(|p| {
                p.staged
                    .as_ref()
                    .map(|s| s.geometry)
                    .ok_or_else(|| internal("a variant's geometry before the stream's"))
            })
            .collect()
    }

    fn take_variant_readers(&mut self) -> Vec<Box<dyn FrameRead>> {
        (1..self.outputs.len())
            .filter_map(|k| self.frames_of(k))
            .map(|f| Box::new(f) as Box<dyn FrameRead>)
            .collect()
    }

    fn read_frame(&mut self, dst: &mut [u8]) -> std::io::Result<Option<i64>> {
        match self.main.as_mut() {
            Some(m) => m.read_frame(dst),
            None => Err(std::io::ErrorKind::UnexpectedEof.into()),
        }
    }

    fn frames(&mut self) -> &mut dyn Read {
        // Frames come through `read_frame`; there is no byte stream.
        &mut self.empty
    }

    fn pid(&self) -> u32 {
        self.pid
    }

    fn kill_handle(&self) -> KillHandle {
        self.kill.clone()
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

    fn clock(&self) -> Option<Arc<FrameClock>> {
        Some(self.clock.clone())
    }

    fn declared_fps(&self) -> Option<f64> {
        self.declared_fps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(output: u32) -> Message {
        Message::Frame {
            output,
            place: Place::Pool(3),
            pts_ns: Some(42),
        }
    }

    #[test]
    fn frame_messages_are_checked_against_the_outputs() {
        assert_eq!(
            frame_message(frame(0), 1),
            Ok((0, (Place::Pool(3), Some(42))))
        );
        assert_eq!(frame_message(frame(2), 3).map(|(k, _)| k), Ok(2));
        assert_eq!(
            frame_message(frame(1), 1),
            Err("a frame of output 1".into())
        );
        let geometry = Message::Geometry {
            output: 0,
            width: 64,
            height: 48,
            layout: Layout::Yuv420p,
            colorspace: 2,
            range: 1,
            buffers: 2,
            fps_milli: 0,
            pool: None,
        };
        assert!(frame_message(geometry, 1)
            .unwrap_err()
            .contains("geometry of output 0 after the first frame"));
    }

    #[test]
    fn messages_are_read_whole_and_their_end_is_none() {
        let mut bytes = frame(0).encode().to_vec();
        bytes.extend_from_slice(&[0xAB; MESSAGE_BYTES]); // not a message
        bytes.extend_from_slice(&frame(0).encode()[..10]); // cut short
        let mut input = &bytes[..];
        assert_eq!(next_message(&mut input), Ok(Some(frame(0))));
        assert!(next_message(&mut input).is_err());
        assert_eq!(next_message(&mut input), Ok(None));
    }
}
