//! One thread per stream: start the source, learn the frame size, create the ring,
//! read each frame straight into its slot, and when the source ends, restart it
//! with exponential backoff into the **same** ring (readers stay attached).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use framebroker_proto::control::{Attachment, HwAccel, StreamInfo, StreamStats};
use framebroker_proto::naming;
use framebroker_proto::ring::{monotonic_ns, wall_ns, Region, RingConfig, RingWriter};
use framebroker_proto::shm::OwnedSegment;
use framebroker_proto::{Geometry, RingStatus, StreamState};

use crate::ffmpeg::{FrameClock, KillHandle, SourceFactory, SourceSpec};

/// Settings every supervisor shares.
#[derive(Clone, Debug)]
pub struct SupervisorConfig {
    pub shm_prefix: String,
    pub shm_mode: u32,
    pub checksum: bool,
    /// How long to wait for ffmpeg to report the stream's size.
    pub probe_timeout: Duration,
    /// A running source that delivers no frame for this long is restarted.
    pub stall_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// A run this long resets the backoff.
    pub healthy_after: Duration,
    /// Give up (state `failed`) after this many consecutive runs that produced no
    /// frame and ended with an error that retrying cannot fix (401, 404, …).
    pub max_permanent_failures: u32,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        SupervisorConfig {
            shm_prefix: naming::DEFAULT_PREFIX.into(),
            shm_mode: 0o600,
            checksum: false,
            probe_timeout: Duration::from_secs(20),
            stall_timeout: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            healthy_after: Duration::from_secs(60),
            max_permanent_failures: 3,
        }
    }
}

/// Exponential backoff with jitter: `initial` doubling up to `max`, each delay
/// drawn from [½·d, d].
#[derive(Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
    seed: u64,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            current: initial,
            seed: wall_ns() | 1,
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        // xorshift: jitter only needs to differ between streams and runs.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let d = self.current;
        self.current = (self.current * 2).min(self.max);
        let half = d / 2;
        half + Duration::from_nanos(self.seed % (half.as_nanos() as u64 + 1))
    }

    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

/// Counters and state the control server reads; written by the supervisor.
#[derive(Debug)]
pub struct Status {
    pub state: StreamState,
    pub geometry: Option<Geometry>,
    pub segment: Option<String>,
    pub generation: u64,
    pub segment_size: u64,
    pub slot_count: u32,
    pub last_error: Option<String>,
    pub reconnects: u64,
    pub ffmpeg_pid: u32,
    pub fps: f64,
    /// What decodes, as the stats say it (see [`StreamStats::decoder`]).
    pub decoder: String,
}

/// One stream, shared between its supervisor thread, the ticker and the control
/// server.
pub struct StreamHandle {
    pub spec: SourceSpec,
    pub slot_count: u32,
    pub on_demand: bool,
    /// For a variant: the id of the main stream whose decode feeds it.
    pub parent: Option<String>,
    /// For a main stream: its variants (each also registered as a stream).
    pub variants: Vec<Arc<StreamHandle>>,
    pub started: Instant,
    pub status: Mutex<Status>,
    pub readers: AtomicU32,
    pub frames_written: AtomicU64,
    pub frames_dropped: AtomicU64,
    /// CLOCK_MONOTONIC ns of the last frame, or of the current run's start.
    pub last_progress_ns: AtomicU64,
    /// When readers dropped to zero (on-demand streams), ns; 0 while read.
    pub idle_since_ns: AtomicU64,
    /// Whether a frame was ever published (the idle grace restarts at the first).
    pub ever_live: AtomicBool,
    stop: AtomicBool,
    wakeup: (Mutex<()>, Condvar),
    kill: Mutex<Option<KillHandle>>,
    /// Why the broker killed the current source, if it did (reported as the error).
    kill_reason: Mutex<Option<String>>,
    /// The current ring, for the ticker's heartbeat.
    ring: Mutex<Option<Arc<OwnedSegment>>>,
}

impl StreamHandle {
    pub fn new(spec: SourceSpec, slot_count: u32, on_demand: bool) -> Self {
        let variants = spec
            .variants
            .iter()
            .map(|v| {
                let vspec = SourceSpec {
                    id: v.id.clone(),
                    size: v.size,
                    pixel_format: v.pixel_format,
                    variants: Vec::new(),
                    ..spec.clone()
                };
                let mut h = StreamHandle::new(vspec, slot_count, on_demand);
                h.parent = Some(spec.id.clone());
                Arc::new(h)
            })
            .collect();
        let decoder = match spec.hwaccel {
            HwAccel::None => "software".to_string(),
            h => h.name().to_string(),
        };
        StreamHandle {
            spec,
            slot_count,
            on_demand,
            parent: None,
            variants,
            started: Instant::now(),
            status: Mutex::new(Status {
                state: StreamState::Starting,
                geometry: None,
                segment: None,
                generation: 0,
                segment_size: 0,
                slot_count,
                last_error: None,
                reconnects: 0,
                ffmpeg_pid: 0,
                fps: 0.0,
                decoder,
            }),
            readers: AtomicU32::new(0),
            frames_written: AtomicU64::new(0),
            frames_dropped: AtomicU64::new(0),
            last_progress_ns: AtomicU64::new(monotonic_ns()),
            idle_since_ns: AtomicU64::new(monotonic_ns()),
            ever_live: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            wakeup: (Mutex::new(()), Condvar::new()),
            kill: Mutex::new(None),
            kill_reason: Mutex::new(None),
            ring: Mutex::new(None),
        }
    }

    pub fn id(&self) -> &str {
        &self.spec.id
    }

    pub fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Asks the supervisor to stop: kills the source, wakes any backoff sleep.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.kill_source("stop requested");
        let _g = self.wakeup.0.lock().unwrap_or_else(|p| p.into_inner());
        self.wakeup.1.notify_all();
    }

    /// Kills the running source (the supervisor then restarts it unless stopping);
    /// `why` becomes the stream's last error.
    pub fn kill_source(&self, why: &str) {
        if let Some(k) = self.kill.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            tracing::info!(stream = self.id(), "killing ffmpeg: {why}");
            *self.kill_reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.to_string());
            k();
        }
    }

    fn sleep_unless_stopped(&self, d: Duration) {
        let deadline = Instant::now() + d;
        let mut g = self.wakeup.0.lock().unwrap_or_else(|p| p.into_inner());
        while !self.stopping() {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            g = self
                .wakeup
                .1
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// The current ring, for heartbeat and state updates from other threads.
    pub fn ring_status(&self) -> Option<RingStatus<Arc<OwnedSegment>>> {
        let ring = self
            .ring
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        RingStatus::new(ring).ok()
    }

    fn set_state(&self, state: StreamState) {
        self.status().state = state;
        if let Some(r) = self.ring_status() {
            r.set_state(state);
        }
    }

    /// Sets the state of the stream and its variants (a variant turns `live` on
    /// its own first frame, not when the main output does).
    fn set_state_all(&self, state: StreamState) {
        self.set_state(state);
        for v in &self.variants {
            if state != StreamState::Live {
                v.set_state(state);
            }
        }
    }

    fn set_decoder(&self, decoder: &str) {
        self.status().decoder = decoder.to_string();
        for v in &self.variants {
            v.status().decoder = decoder.to_string();
        }
    }

    /// Readers of this stream and of its variants (what keeps an on-demand stream).
    pub fn total_readers(&self) -> u32 {
        self.readers.load(Ordering::Relaxed)
            + self
                .variants
                .iter()
                .map(|v| v.readers.load(Ordering::Relaxed))
                .sum::<u32>()
    }

    pub fn info(&self) -> StreamInfo {
        let s = self.status();
        let g = s.geometry;
        StreamInfo {
            id: self.spec.id.clone(),
            url: self.spec.redacted.clone(),
            state: s.state,
            width: g.map_or(0, |g| g.width),
            height: g.map_or(0, |g| g.height),
            pixel_format: self.spec.pixel_format,
            generation: s.generation,
            readers: self.readers.load(Ordering::Relaxed),
            on_demand: self.on_demand,
            parent: self.parent.clone(),
            declared_fps: 0.0,
        }
    }

    pub fn stats(&self) -> StreamStats {
        let info = self.info();
        let s = self.status();
        StreamStats {
            info,
            fps: s.fps,
            frames_written: self.frames_written.load(Ordering::Relaxed),
            frames_dropped: self.frames_dropped.load(Ordering::Relaxed),
            reconnects: s.reconnects,
            last_error: s.last_error.clone(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            bytes_per_frame: s.geometry.map_or(0, |g| g.frame_bytes()),
            ffmpeg_pid: s.ffmpeg_pid,
            decoder: s.decoder.clone(),
        }
    }

    /// What a reader needs to map the ring; `None` until the ring exists or once
    /// the stream has ended.
    pub fn attachment(&self) -> Option<Attachment> {
        let s = self.status();
        let g = s.geometry?;
        if s.state.is_final() {
            return None;
        }
        Some(Attachment {
            id: self.spec.id.clone(),
            segment: s.segment.clone()?,
            generation: s.generation,
            width: g.width,
            height: g.height,
            pixel_format: g.pixel_format,
            frame_bytes: g.frame_bytes(),
            slot_count: s.slot_count,
            segment_size: s.segment_size,
        })
    }
}

/// Decides whether an error means retrying cannot help.
fn is_permanent(error: &str) -> bool {
    let e = error.to_ascii_lowercase();
    [
        "401 unauthorized",
        "403 forbidden",
        "404 not found",
        "no such file",
        "invalid data found",
        "protocol not found",
    ]
    .iter()
    .any(|p| e.contains(p))
}

/// Creates segments; shared so the broker can enforce its memory budget.
pub trait SegmentAllocator: Send + Sync {
    fn allocate(
        &self,
        id: &str,
        geometry: Geometry,
        slots: u32,
    ) -> Result<(Arc<OwnedSegment>, RingConfig), String>;
    fn release(&self, bytes: u64);
}

type Writer = RingWriter<Arc<OwnedSegment>>;

/// The supervisor loop of one stream (and its variants); returns when the stream
/// is stopped or failed.
pub fn run(
    handle: Arc<StreamHandle>,
    factory: Arc<dyn SourceFactory>,
    alloc: Arc<dyn SegmentAllocator>,
    cfg: SupervisorConfig,
) {
    let id = handle.id().to_string();
    let mut backoff = Backoff::new(cfg.backoff_initial, cfg.backoff_max);
    let mut writer: Option<Writer> = None;
    let mut variant_writers: Vec<Option<Writer>> = handle.variants.iter().map(|_| None).collect();
    let mut permanent_failures = 0;
    let mut final_state = StreamState::Stopped;
    // Set once the hardware decoder proved unusable: software from then on.
    let mut software = handle.spec.hwaccel == HwAccel::None;
    let mut attempt = 0u64;
    while !handle.stopping() {
        let run_start = Instant::now();
        handle
            .last_progress_ns
            .store(monotonic_ns(), Ordering::Relaxed);
        let mut ctx = RunCtx {
            handle: &handle,
            factory: &*factory,
            alloc: &*alloc,
            cfg: &cfg,
            writer: &mut writer,
            variant_writers: &mut variant_writers,
            software,
        };
        let outcome = run_once(&mut ctx);
        attempt += 1;
        if handle.stopping() {
            break;
        }
        let error = match outcome {
            RunOutcome::Ended {
                frames,
                error,
                hwaccel_error,
            } => {
                if frames == 0 && !software {
                    if let Some(reason) =
                        hwaccel_fallback(hwaccel_error.as_deref(), error.as_deref(), attempt == 1)
                    {
                        let name = handle.spec.hwaccel.name();
                        tracing::warn!(stream = %id, "hardware decoder {name} unavailable ({reason}); decoding in software");
                        handle.set_decoder(&format!("software ({name} unavailable: {reason})"));
                        software = true;
                        continue; // at once: this is not the camera's fault
                    }
                }
                if frames > 0 {
                    permanent_failures = 0;
                } else if error.as_deref().is_some_and(is_permanent) {
                    permanent_failures += 1;
                }
                error.unwrap_or_else(|| "source ended".into())
            }
            RunOutcome::Fatal(e) => {
                handle.status().last_error = Some(e.clone());
                tracing::error!(stream = %id, "giving up: {e}");
                final_state = StreamState::Failed;
                break;
            }
        };
        if permanent_failures >= cfg.max_permanent_failures {
            tracing::error!(stream = %id, "giving up after {permanent_failures} attempts: {error}");
            handle.status().last_error = Some(error);
            final_state = StreamState::Failed;
            break;
        }
        if run_start.elapsed() >= cfg.healthy_after {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        {
            let mut s = handle.status();
            s.reconnects += 1;
            s.last_error = Some(error.clone());
        }
        handle.set_state_all(StreamState::Reconnecting);
        tracing::warn!(stream = %id, "source ended ({error}); reconnecting in {delay:?}");
        handle.sleep_unless_stopped(delay);
    }
    if final_state == StreamState::Failed {
        let why = handle.status().last_error.clone();
        for v in &handle.variants {
            v.status().last_error = why.clone();
        }
    }
    handle.set_state_all(final_state);
    for (v, w) in handle.variants.iter().zip(variant_writers.iter_mut()) {
        *v.ring.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if let Some(w) = w.take() {
            alloc.release(w.region().len() as u64);
        }
    }
    *handle.ring.lock().unwrap_or_else(|p| p.into_inner()) = None;
    if let Some(w) = writer.take() {
        alloc.release(w.region().len() as u64);
        // Dropping the writer's Arc unlinks the segment (readers keep their mapping).
    }
    tracing::info!(stream = %id, state = %final_state, "stream ended");
}

/// Whether a run that produced no frame with a hardware decoder should be retried
/// in software, and the short reason: ffmpeg said the device failed, or the first
/// attempt ended early for a reason that is not the camera's.
fn hwaccel_fallback(hw_error: Option<&str>, error: Option<&str>, first: bool) -> Option<String> {
    if let Some(e) = hw_error {
        return Some(e.to_string());
    }
    let e = error?;
    let lower = e.to_ascii_lowercase();
    let camera = is_permanent(e)
        || [
            "connection refused",
            "timed out",
            "network is unreachable",
            "no route to host",
            "connection reset",
            "stalled",
            "stop requested",
            "end of file",
        ]
        .iter()
        .any(|p| lower.contains(p));
    (first && !camera).then(|| e.chars().take(160).collect())
}

enum RunOutcome {
    Ended {
        frames: u64,
        error: Option<String>,
        /// What the source said about an unusable hardware decoder.
        hwaccel_error: Option<String>,
    },
    Fatal(String),
}

struct RunCtx<'a> {
    handle: &'a StreamHandle,
    factory: &'a dyn SourceFactory,
    alloc: &'a dyn SegmentAllocator,
    cfg: &'a SupervisorConfig,
    writer: &'a mut Option<Writer>,
    variant_writers: &'a mut Vec<Option<Writer>>,
    software: bool,
}

/// Makes sure `writer` is a ring of `geometry` for `handle`: keeps the current one
/// when the geometry is the same, else creates a new segment (new generation) and
/// marks the old one `stopped` so its readers re-attach.
fn ensure_ring(
    handle: &StreamHandle,
    alloc: &dyn SegmentAllocator,
    writer: &mut Option<Writer>,
    geometry: Geometry,
) -> Result<(), String> {
    geometry
        .validate()
        .map_err(|e| format!("source geometry refused: {e}"))?;
    let same = writer.as_ref().is_some_and(|w| {
        let h = w.header();
        h.width == geometry.width
            && h.height == geometry.height
            && h.pixel_format == geometry.pixel_format as u32
    });
    if same {
        return Ok(());
    }
    let id = handle.id();
    let (seg, config) = alloc.allocate(id, geometry, handle.slot_count)?;
    let w = RingWriter::create(seg.clone(), &config)
        .map_err(|e| format!("cannot initialise the ring: {e}"))?;
    if let Some(old) = writer.replace(w) {
        old.status().set_state(StreamState::Stopped);
        alloc.release(old.region().len() as u64);
    }
    *handle.ring.lock().unwrap_or_else(|p| p.into_inner()) = Some(seg.clone());
    let mut s = handle.status();
    s.geometry = Some(geometry);
    s.segment = Some(seg.name().to_string());
    s.generation = config.generation;
    s.segment_size = seg_len(&seg);
    tracing::info!(
        stream = id,
        segment = seg.name(),
        "{}x{} {}",
        geometry.width,
        geometry.height,
        geometry.pixel_format
    );
    Ok(())
}

/// How long a frame may wait for its stream-clock line from ffmpeg's log.
const CLOCK_WAIT: Duration = Duration::from_millis(50);

/// Where a pump reads frames: the source itself (main output, with its decode
/// error count) or a variant's pipe.
trait FrameInput {
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<()>;
    /// Decode errors reported so far.
    fn decode_errors(&self) -> u64 {
        0
    }
}

impl FrameInput for Box<dyn crate::ffmpeg::RunningSource> {
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        self.frames().read_exact(buf)
    }
    fn decode_errors(&self) -> u64 {
        crate::ffmpeg::RunningSource::decode_errors(&**self)
    }
}

impl FrameInput for Box<dyn std::io::Read + Send> {
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        self.read_exact(buf)
    }
}

/// Reads frames of one output into its ring until the output ends; returns the
/// number of frames. `on_frame(n, writer, decode_errors)` runs after each
/// published frame.
fn pump(
    w: &mut Writer,
    input: &mut dyn FrameInput,
    clock: Option<&FrameClock>,
    mut on_frame: impl FnMut(u64, &Writer, u64),
) -> u64 {
    let mut frames = 0u64;
    loop {
        let mut slot = w.begin_frame();
        match input.read_frame(slot.payload_mut()) {
            Ok(()) => {
                let (wall, mono) = (wall_ns(), monotonic_ns());
                let stream = clock.and_then(|c| c.stream_time(frames, CLOCK_WAIT));
                slot.commit_with(wall, mono, stream);
                frames += 1;
                on_frame(frames, w, input.decode_errors());
            }
            Err(e) => {
                drop(slot); // abandoned: marked empty
                if e.kind() != std::io::ErrorKind::UnexpectedEof {
                    tracing::debug!("read from ffmpeg: {e}");
                }
                return frames;
            }
        }
    }
}

fn run_once(ctx: &mut RunCtx<'_>) -> RunOutcome {
    let handle = ctx.handle;
    let id = handle.id();
    let spec = if ctx.software && handle.spec.hwaccel != HwAccel::None {
        SourceSpec {
            hwaccel: HwAccel::None,
            ..handle.spec.clone()
        }
    } else {
        handle.spec.clone()
    };
    let mut source = match ctx.factory.spawn(&spec) {
        Ok(s) => s,
        Err(e) => {
            return RunOutcome::Ended {
                frames: 0,
                error: Some(e),
                hwaccel_error: None,
            }
        }
    };
    handle.status().ffmpeg_pid = source.pid();
    *handle.kill.lock().unwrap_or_else(|p| p.into_inner()) = Some(source.kill_handle());
    tracing::info!(stream = id, pid = source.pid(), url = %handle.spec.redacted, hwaccel = %spec.hwaccel, "source started");

    let outcome = (|| {
        let ended = |error: String| RunOutcome::Ended {
            frames: 0,
            error: Some(error),
            hwaccel_error: None,
        };
        let geometry = match source.geometry(ctx.cfg.probe_timeout, &|| handle.stopping()) {
            Ok(g) => g,
            Err(e) => return ended(e),
        };
        if let Err(e) = ensure_ring(handle, ctx.alloc, ctx.writer, geometry) {
            return RunOutcome::Fatal(e);
        }
        let mut outputs = Vec::new();
        if !handle.variants.is_empty() {
            let geos = match source.variant_geometries(ctx.cfg.probe_timeout, &|| handle.stopping())
            {
                Ok(g) => g,
                Err(e) => return ended(e),
            };
            outputs = source.take_variant_outputs();
            if geos.len() != handle.variants.len() || outputs.len() != handle.variants.len() {
                return RunOutcome::Fatal(format!(
                    "internal error: the source has {} variant outputs, the stream {}",
                    outputs.len(),
                    handle.variants.len()
                ));
            }
            for ((v, w), g) in handle
                .variants
                .iter()
                .zip(ctx.variant_writers.iter_mut())
                .zip(geos)
            {
                if let Err(e) = ensure_ring(v, ctx.alloc, w, g) {
                    return RunOutcome::Fatal(format!("variant {}: {e}", v.id()));
                }
            }
        }
        let clock = source.clock();
        let kill = source.kill_handle();
        let w = ctx.writer.as_mut().expect("writer set above");
        let variant_writers = &mut *ctx.variant_writers;
        let frames = std::thread::scope(|scope| {
            for ((v, w), mut input) in handle
                .variants
                .iter()
                .zip(variant_writers.iter_mut())
                .zip(outputs)
            {
                let w = w.as_mut().expect("variant writer set above");
                let clock = clock.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("variant-{}", v.id()))
                    .spawn_scoped(scope, move || {
                        pump(w, &mut input, clock.as_deref(), |n, _, _| {
                            v.frames_written.fetch_add(1, Ordering::Relaxed);
                            v.last_progress_ns.store(monotonic_ns(), Ordering::Relaxed);
                            if n == 1 {
                                v.set_state(StreamState::Live);
                            }
                        });
                    });
                if let Err(e) = spawned {
                    tracing::error!(stream = v.id(), "cannot start the variant's reader: {e}");
                }
            }
            let mut decode_errors = 0;
            let frames = {
                pump(w, &mut source, clock.as_deref(), |n, w, d| {
                    // Corrupt input the decoder reported (concealed, but damaged).
                    if d > decode_errors {
                        handle
                            .frames_dropped
                            .fetch_add(d - decode_errors, Ordering::Relaxed);
                        w.status().count_dropped_n(d - decode_errors);
                        decode_errors = d;
                    }
                    handle.frames_written.fetch_add(1, Ordering::Relaxed);
                    handle
                        .last_progress_ns
                        .store(monotonic_ns(), Ordering::Relaxed);
                    if n == 1 {
                        handle.set_state(StreamState::Live);
                        // An on-demand stream's idle grace counts from when it can
                        // first be read, not from a slow start (once: a flapping
                        // source must not keep an unread stream alive).
                        if !handle.ever_live.swap(true, Ordering::Relaxed)
                            && handle.total_readers() == 0
                        {
                            handle
                                .idle_since_ns
                                .store(monotonic_ns(), Ordering::Relaxed);
                        }
                    }
                })
            };
            if !handle.variants.is_empty() {
                // The main output ended: make sure the variants' pipes end too.
                kill();
            }
            frames
        });
        RunOutcome::Ended {
            frames,
            error: None,
            hwaccel_error: None,
        }
    })();
    *handle.kill.lock().unwrap_or_else(|p| p.into_inner()) = None;
    let killed_for = handle
        .kill_reason
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    let how = source.finish();
    handle.status().ffmpeg_pid = 0;
    tracing::debug!(stream = id, "ffmpeg exited: {how}");
    match outcome {
        RunOutcome::Ended { frames, error, .. } => {
            let error = killed_for
                .or(error)
                .or_else(|| source.last_error())
                .or_else(|| Some(format!("ffmpeg exited ({how})")));
            RunOutcome::Ended {
                frames,
                error,
                hwaccel_error: source.hwaccel_error(),
            }
        }
        fatal => fatal,
    }
}

fn seg_len(seg: &OwnedSegment) -> u64 {
    seg.len() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let mut caps = vec![];
        for _ in 0..10 {
            caps.push(b.current);
            let d = b.next_delay();
            let cap = *caps.last().unwrap();
            assert!(
                d >= cap / 2 && d <= cap,
                "{d:?} outside [{:?}, {cap:?}]",
                cap / 2
            );
        }
        assert_eq!(caps[0], Duration::from_millis(500));
        assert_eq!(caps[1], Duration::from_secs(1));
        assert_eq!(caps[6], Duration::from_secs(30), "capped");
        assert_eq!(caps[9], Duration::from_secs(30));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(500));
    }

    #[test]
    fn permanent_errors() {
        assert!(is_permanent(
            "[rtsp @ 0x1] method DESCRIBE failed: 401 Unauthorized"
        ));
        assert!(is_permanent("rtsp://***@h/x: 404 Not Found"));
        assert!(!is_permanent("Connection refused"));
        assert!(!is_permanent("Connection timed out"));
    }
}
