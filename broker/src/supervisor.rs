//! One thread per stream: start the source, learn the frame size, create the ring,
//! read each frame straight into its slot, and when the source ends, restart it
//! with exponential backoff into the **same** ring (readers stay attached).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use framebroker_proto::control::{Attachment, HwAccel, StreamInfo, StreamStats};
use framebroker_proto::naming;
use framebroker_proto::ring::{monotonic_ns, wall_ns, Region, RingConfig, RingWriter};
use framebroker_proto::shm::OwnedSegment;
use framebroker_proto::{Geometry, RingStatus, StreamState};

use crate::clock::{Clock, Wakeup};
use crate::error::{Error, ErrorKind};
use crate::ffmpeg::{FrameClock, KillHandle, OutputSpec, SourceFactory, SourceSpec};
use crate::sync::{Lock, Rank, RankedGuard, RankedMutex};

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
    /// frame and ended with an error that retrying cannot fix
    /// ([`ErrorKind::is_permanent`]: 401, 404, …).
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

    /// The largest delay the next [`next_delay`](Self::next_delay) may return.
    pub fn cap(&self) -> Duration {
        self.current
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
    /// The rate the source declares (0.0 until a run learned it; kept across
    /// restarts, updated by each run that reports one).
    pub declared_fps: f64,
}

/// One stream, shared between its supervisor thread, the ticker and the control
/// server.
pub struct StreamHandle {
    pub spec: SourceSpec,
    pub slot_count: u32,
    pub on_demand: bool,
    /// For a variant or an alias: the id of the main stream whose decode feeds it.
    pub parent: Option<String>,
    /// For a main stream: its variants (each also registered as a stream), in
    /// the order of ffmpeg's outputs `1..`. Changed while running by
    /// [`add_variant`](Self::add_variant) / [`remove_variant`](Self::remove_variant),
    /// which restart the decode with the new outputs.
    variants: Mutex<Vec<Arc<StreamHandle>>>,
    /// Bumped by every change of `variants`; a run whose outputs are older is
    /// restarted at once.
    outputs_version: AtomicU64,
    /// Set with a change of the outputs: the run that ends next ended for it, not
    /// because of the camera (no backoff, no reconnect counted).
    reconfigure: AtomicBool,
    /// For an alias: the stream whose ring it reads (the main stream or one of its
    /// variants, same size and format). An alias has no ring and no writer of its
    /// own; its id, readers and on-demand rule are its own.
    pub alias_of: Option<Arc<StreamHandle>>,
    /// An alias, or a variant added to a running decode by a later start request:
    /// its id is stopped alone and is idle by its own readers (a variant of the
    /// main stream's own start request goes with the main stream).
    pub standalone: bool,
    /// The broker's clock (stall, idle, backoff and uptime read it).
    pub clock: Clock,
    /// When the stream was added, on [`clock`](Self::clock).
    pub started: Duration,
    status: RankedMutex<Status>,
    pub readers: AtomicU32,
    pub frames_written: AtomicU64,
    pub frames_dropped: AtomicU64,
    /// [`clock`](Self::clock) ns of the last frame, or of the current run's start.
    pub last_progress_ns: AtomicU64,
    /// When readers dropped to zero (on-demand streams), [`clock`](Self::clock)
    /// ns; 0 while read.
    pub idle_since_ns: AtomicU64,
    /// Whether a frame was ever published (the idle grace restarts at the first).
    pub ever_live: AtomicBool,
    stop: AtomicBool,
    wakeup: Wakeup,
    kill: Mutex<Option<KillHandle>>,
    /// Why the broker killed the current source, if it did (reported as the error).
    kill_reason: Mutex<Option<Error>>,
    /// The current ring, for the ticker's heartbeat.
    ring: Mutex<Option<Arc<OwnedSegment>>>,
}

impl StreamHandle {
    pub fn new(spec: SourceSpec, slot_count: u32, on_demand: bool, clock: Clock) -> Self {
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
                let mut h = StreamHandle::new(vspec, slot_count, on_demand, clock.clone());
                h.parent = Some(spec.id.clone());
                Arc::new(h)
            })
            .collect::<Vec<_>>();
        let decoder = match spec.hwaccel {
            HwAccel::None => "software".to_string(),
            h => h.name().to_string(),
        };
        StreamHandle {
            spec,
            slot_count,
            on_demand,
            parent: None,
            variants: Mutex::new(variants),
            outputs_version: AtomicU64::new(0),
            reconfigure: AtomicBool::new(false),
            alias_of: None,
            standalone: false,
            started: clock.monotonic(),
            status: RankedMutex::new(
                Rank::Status,
                Status {
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
                    declared_fps: 0.0,
                },
            ),
            readers: AtomicU32::new(0),
            frames_written: AtomicU64::new(0),
            frames_dropped: AtomicU64::new(0),
            last_progress_ns: AtomicU64::new(clock.monotonic_ns()),
            idle_since_ns: AtomicU64::new(clock.monotonic_ns()),
            clock,
            ever_live: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            wakeup: Wakeup::default(),
            kill: Mutex::new(None),
            kill_reason: Mutex::new(None),
            ring: Mutex::new(None),
        }
    }

    pub fn id(&self) -> &str {
        &self.spec.id
    }

    /// Another id for the output `target` (of the decode whose main stream is
    /// `parent`): same ring, its own id, readers and on-demand rule.
    pub fn alias(id: &str, target: Arc<StreamHandle>, parent: &str, on_demand: bool) -> Self {
        let spec = SourceSpec {
            id: id.to_string(),
            variants: Vec::new(),
            ..target.spec.clone()
        };
        let mut h = StreamHandle::new(spec, target.slot_count, on_demand, target.clock.clone());
        h.parent = Some(parent.to_string());
        h.alias_of = Some(target);
        h.standalone = true;
        h
    }

    /// A variant of `parent`'s decode asked for by a later start request (see
    /// [`add_variant`](Self::add_variant)).
    pub fn added_variant(parent: &StreamHandle, output: OutputSpec, on_demand: bool) -> Self {
        let spec = SourceSpec {
            id: output.id,
            size: output.size,
            pixel_format: output.pixel_format,
            variants: Vec::new(),
            ..parent.spec.clone()
        };
        let mut h = StreamHandle::new(spec, parent.slot_count, on_demand, parent.clock.clone());
        h.parent = Some(parent.id().to_string());
        h.standalone = true;
        h
    }

    /// The stream whose ring and counters this id shows: the alias's target, else
    /// itself.
    pub fn source(&self) -> &StreamHandle {
        self.alias_of.as_deref().unwrap_or(self)
    }

    /// The variants of a main stream, in output order.
    pub fn variants(&self) -> Vec<Arc<StreamHandle>> {
        self.variants.locked().clone()
    }

    /// Adds an output to the running decode. ffmpeg cannot grow its filter graph
    /// while it runs, so the decode restarts at once with the extra output; the
    /// rings of the other outputs stay (same geometry), their readers attached.
    pub fn add_variant(&self, v: Arc<StreamHandle>) {
        self.variants.locked().push(v);
        self.outputs_changed("a variant was added");
    }

    /// Takes an output out of the decode (restarted at once without it); its ring
    /// is marked stopped and unlinked by the supervisor.
    pub fn remove_variant(&self, v: &StreamHandle) {
        self.variants.locked().retain(|x| !std::ptr::eq(&**x, v));
        self.outputs_changed("a variant was removed");
    }

    fn outputs_changed(&self, why: &str) {
        self.outputs_version.fetch_add(1, Ordering::AcqRel);
        self.reconfigure.store(true, Ordering::Release);
        // Wakes a backoff sleep too: the new outputs start now.
        self.wakeup.wake();
        if let Some(k) = self.kill.locked().as_ref() {
            tracing::info!(stream = self.id(), "restarting ffmpeg: {why}");
            k();
        }
    }

    /// The stream's status; see [`crate::sync`] for the lock order.
    pub fn status(&self) -> RankedGuard<'_, Status> {
        self.status.locked()
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Asks the supervisor to stop: kills the source, wakes any backoff sleep.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.kill_source(Error::new(ErrorKind::Stopped, "stop requested"));
        self.wakeup.wake();
    }

    /// Kills the running source (the supervisor then restarts it unless stopping);
    /// `why` becomes the run's error.
    pub fn kill_source(&self, why: Error) {
        if let Some(k) = self.kill.locked().as_ref() {
            tracing::info!(stream = self.id(), "killing ffmpeg: {why}");
            *self.kill_reason.locked() = Some(why);
            k();
        }
    }

    fn sleep_unless_stopped(&self, d: Duration) {
        self.clock.sleep(&self.wakeup, d, &|| {
            !self.stopping() && !self.reconfigure.load(Ordering::Acquire)
        });
    }

    /// Notes that the source made progress (a frame, a new run), on the clock.
    fn progressed(&self) {
        self.last_progress_ns
            .store(self.clock.monotonic_ns(), Ordering::Relaxed);
    }

    /// The current ring, for heartbeat and state updates from other threads.
    pub fn ring_status(&self) -> Option<RingStatus<Arc<OwnedSegment>>> {
        let ring = self.ring.locked().clone()?;
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
        for v in &self.variants() {
            if state != StreamState::Live {
                v.set_state(state);
            }
        }
    }

    fn set_decoder(&self, decoder: &str) {
        self.status().decoder = decoder.to_string();
        for v in &self.variants() {
            v.status().decoder = decoder.to_string();
        }
    }

    /// The stall policy: a running source that has delivered no frame for
    /// `stall_timeout` while live, or for `probe_timeout + stall_timeout` before
    /// its first frame (ffmpeg may still be probing), is stalled at `now_ns` on
    /// the clock. The error says for how long.
    pub fn stalled(&self, now_ns: u64, cfg: &SupervisorConfig) -> Option<Error> {
        let quiet = Duration::from_nanos(
            now_ns.saturating_sub(self.last_progress_ns.load(Ordering::Relaxed)),
        );
        let (state, running) = {
            let s = self.status();
            (s.state, s.ffmpeg_pid != 0)
        };
        let limit = match state {
            StreamState::Live => cfg.stall_timeout,
            _ => cfg.probe_timeout + cfg.stall_timeout,
        };
        (running && !state.is_final() && quiet > limit).then(|| {
            Error::new(
                ErrorKind::Stalled,
                format!("source stalled: no frame for {:.1} s", quiet.as_secs_f64()),
            )
        })
    }

    /// Kills the source if it is [`stalled`](Self::stalled) (ffmpeg can hang on a
    /// frozen camera; its exit restarts it), and gives the next run a full stall
    /// timeout. Whether it did.
    pub fn kill_if_stalled(&self, now_ns: u64, cfg: &SupervisorConfig) -> bool {
        let Some(why) = self.stalled(now_ns, cfg) else {
            return false;
        };
        self.kill_source(why);
        self.last_progress_ns.store(now_ns, Ordering::Relaxed);
        true
    }

    /// The idle policy: an on-demand id stops once it has had no reader for more
    /// than `grace` at `now_ns`. A main stream counts the readers of its
    /// request's variants too (which go with it, and are never idle alone); an
    /// alias or an added variant counts its own. Attach and detach keep
    /// [`idle_since_ns`](Self::idle_since_ns).
    ///
    /// Until its output has published a first frame nobody can read it, so a
    /// stream that has never been live gets `start` (the time a source has to
    /// deliver its first frame) on top of the grace: a slow camera is not
    /// stopped before its first reader could attach, and one that never comes
    /// up still stops.
    pub fn idle(&self, now_ns: u64, grace: Duration, start: Duration) -> bool {
        let since = self.idle_since_ns.load(Ordering::Relaxed);
        let allowed = if self.source().ever_live.load(Ordering::Relaxed) {
            grace
        } else {
            grace + start
        };
        self.on_demand
            && (self.parent.is_none() || self.standalone)
            && since != 0
            && self.total_readers() == 0
            && Duration::from_nanos(now_ns.saturating_sub(since)) > allowed
    }

    /// Readers of this stream and of the variants of its own start request (what
    /// keeps an on-demand main stream).
    pub fn total_readers(&self) -> u32 {
        self.readers.load(Ordering::Relaxed)
            + self
                .variants()
                .iter()
                .filter(|v| !v.standalone)
                .map(|v| v.readers.load(Ordering::Relaxed))
                .sum::<u32>()
    }

    pub fn info(&self) -> StreamInfo {
        if let Some(t) = &self.alias_of {
            return StreamInfo {
                id: self.spec.id.clone(),
                readers: self.readers.load(Ordering::Relaxed),
                on_demand: self.on_demand,
                parent: self.parent.clone(),
                ..t.info()
            };
        }
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
            declared_fps: s.declared_fps,
        }
    }

    pub fn stats(&self) -> StreamStats {
        if let Some(t) = &self.alias_of {
            return StreamStats {
                info: self.info(),
                ..t.stats()
            };
        }
        let info = self.info();
        let s = self.status();
        StreamStats {
            info,
            fps: s.fps,
            frames_written: self.frames_written.load(Ordering::Relaxed),
            frames_dropped: self.frames_dropped.load(Ordering::Relaxed),
            reconnects: s.reconnects,
            last_error: s.last_error.clone(),
            uptime_ms: (self.clock.monotonic().saturating_sub(self.started)).as_millis() as u64,
            bytes_per_frame: s.geometry.map_or(0, |g| g.frame_bytes()),
            ffmpeg_pid: s.ffmpeg_pid,
            decoder: s.decoder.clone(),
        }
    }

    /// What a reader needs to map the ring; `None` until the ring exists or once
    /// the stream has ended.
    pub fn attachment(&self) -> Option<Attachment> {
        if let Some(t) = &self.alias_of {
            return Some(Attachment {
                id: self.spec.id.clone(),
                ..t.attachment()?
            });
        }
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

/// Creates segments; shared so the broker can enforce its memory budget.
pub trait SegmentAllocator: Send + Sync {
    fn allocate(
        &self,
        id: &str,
        geometry: Geometry,
        slots: u32,
    ) -> Result<(Arc<OwnedSegment>, RingConfig), Error>;
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
    let mut variant_writers: Vec<VariantWriter> = Vec::new();
    let mut permanent_failures = 0;
    let mut final_state = StreamState::Stopped;
    // Set once the hardware decoder proved unusable: software from then on.
    let mut software = handle.spec.hwaccel == HwAccel::None;
    let mut attempt = 0u64;
    while !handle.stopping() {
        let run_start = handle.clock.monotonic();
        handle.progressed();
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
        if handle.reconfigure.swap(false, Ordering::AcqRel) {
            // Ended (or was about to start) for a change of the outputs: start again
            // now with the new ones, the same rings for the unchanged outputs.
            continue;
        }
        let error = match outcome {
            RunOutcome::Ended {
                frames,
                error,
                hwaccel_error,
            } => {
                if frames == 0 && !software {
                    if let Some(reason) =
                        hwaccel_fallback(hwaccel_error.as_ref(), error.as_ref(), attempt == 1)
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
                } else if error.as_ref().is_some_and(|e| e.kind().is_permanent()) {
                    permanent_failures += 1;
                }
                error.unwrap_or_else(|| Error::new(ErrorKind::Ended, "source ended"))
            }
            RunOutcome::Fatal(e) => {
                handle.status().last_error = Some(e.to_string());
                tracing::error!(stream = %id, "giving up: {e}");
                final_state = StreamState::Failed;
                break;
            }
        };
        if permanent_failures >= cfg.max_permanent_failures {
            tracing::error!(stream = %id, "giving up after {permanent_failures} attempts: {error}");
            handle.status().last_error = Some(error.to_string());
            final_state = StreamState::Failed;
            break;
        }
        if handle.clock.monotonic().saturating_sub(run_start) >= cfg.healthy_after {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        {
            let mut s = handle.status();
            s.reconnects += 1;
            s.last_error = Some(error.to_string());
        }
        handle.set_state_all(StreamState::Reconnecting);
        tracing::warn!(stream = %id, "source ended ({error}); reconnecting in {delay:?}");
        handle.sleep_unless_stopped(delay);
    }
    if final_state == StreamState::Failed {
        let why = handle.status().last_error.clone();
        for v in &handle.variants() {
            v.status().last_error = why.clone();
        }
    }
    handle.set_state_all(final_state);
    for (v, w) in variant_writers.iter_mut() {
        v.set_state(final_state);
        *v.ring.locked() = None;
        if let Some(w) = w.take() {
            alloc.release(w.region().len() as u64);
        }
    }
    *handle.ring.locked() = None;
    if let Some(w) = writer.take() {
        alloc.release(w.region().len() as u64);
        // Dropping the writer's Arc unlinks the segment (readers keep their mapping).
    }
    tracing::info!(stream = %id, state = %final_state, "stream ended");
}

/// Whether a run that produced no frame with a hardware decoder should be retried
/// in software, and the short reason: ffmpeg said the device failed, or the first
/// attempt ended early for a reason that is not the camera's.
fn hwaccel_fallback(
    hw_error: Option<&Error>,
    error: Option<&Error>,
    first: bool,
) -> Option<String> {
    if let Some(e) = hw_error {
        return Some(e.to_string());
    }
    let e = error?;
    let decoder = first && (e.kind() == ErrorKind::HardwareDecoder || !e.kind().is_the_cameras());
    decoder.then(|| e.message().chars().take(160).collect())
}

enum RunOutcome {
    Ended {
        frames: u64,
        error: Option<Error>,
        /// What the source said about an unusable hardware decoder.
        hwaccel_error: Option<Error>,
    },
    Fatal(Error),
}

struct RunCtx<'a> {
    handle: &'a StreamHandle,
    factory: &'a dyn SourceFactory,
    alloc: &'a dyn SegmentAllocator,
    cfg: &'a SupervisorConfig,
    writer: &'a mut Option<Writer>,
    variant_writers: &'a mut Vec<VariantWriter>,
    software: bool,
}

/// A variant and its ring (none until its geometry is known).
type VariantWriter = (Arc<StreamHandle>, Option<Writer>);

/// Brings the variant writers in line with the stream's current variants, in
/// output order: a removed variant's ring is marked stopped (its readers see it)
/// and given back; a new one starts without a ring; the others keep theirs.
fn sync_variant_writers(
    handle: &StreamHandle,
    alloc: &dyn SegmentAllocator,
    writers: &mut Vec<VariantWriter>,
) -> Vec<Arc<StreamHandle>> {
    let current = handle.variants();
    let mut old = std::mem::take(writers);
    for v in &current {
        let w = old
            .iter()
            .position(|(h, _)| Arc::ptr_eq(h, v))
            .and_then(|i| old.swap_remove(i).1);
        writers.push((v.clone(), w));
    }
    for (v, w) in old {
        v.set_state(StreamState::Stopped);
        *v.ring.locked() = None;
        if let Some(w) = w {
            w.status().set_state(StreamState::Stopped);
            alloc.release(w.region().len() as u64);
        }
        tracing::info!(stream = v.id(), "variant left the decode; ring unlinked");
    }
    current
}

/// Makes sure `writer` is a ring of `geometry` for `handle`: keeps the current one
/// when the geometry is the same, else creates a new segment (new generation) and
/// marks the old one `stopped` so its readers re-attach.
fn ensure_ring(
    handle: &StreamHandle,
    alloc: &dyn SegmentAllocator,
    writer: &mut Option<Writer>,
    geometry: Geometry,
) -> Result<(), Error> {
    geometry.validate().map_err(|e| {
        Error::new(
            ErrorKind::BadGeometry,
            format!("source geometry refused: {e}"),
        )
    })?;
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
    let w = RingWriter::create(seg.clone(), &config).map_err(|e| {
        Error::new(
            ErrorKind::Internal,
            format!("cannot initialise the ring: {e}"),
        )
    })?;
    if let Some(old) = writer.replace(w) {
        old.status().set_state(StreamState::Stopped);
        alloc.release(old.region().len() as u64);
    }
    *handle.ring.locked() = Some(seg.clone());
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
/// error count) or a variant's output.
trait FrameInput {
    /// The next frame into `buf`; its pts in ns when it carries one.
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<Option<i64>>;
    /// Decode errors reported so far.
    fn decode_errors(&self) -> u64 {
        0
    }
}

impl FrameInput for Box<dyn crate::ffmpeg::RunningSource> {
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<Option<i64>> {
        crate::ffmpeg::RunningSource::read_frame(&mut **self, buf)
    }
    fn decode_errors(&self) -> u64 {
        crate::ffmpeg::RunningSource::decode_errors(&**self)
    }
}

impl FrameInput for Box<dyn crate::ffmpeg::FrameRead> {
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<Option<i64>> {
        crate::ffmpeg::FrameRead::read_frame(&mut **self, buf)
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
            Ok(pts_ns) => {
                let (wall, mono) = (wall_ns(), monotonic_ns());
                let stream = clock.and_then(|c| match pts_ns {
                    // The pts came with the frame (NUT): no log line to wait for.
                    Some(pts) => c.observe(frames, pts, wall),
                    None => c.stream_time(frames, CLOCK_WAIT),
                });
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
    let version = handle.outputs_version.load(Ordering::Acquire);
    let variants = sync_variant_writers(handle, ctx.alloc, ctx.variant_writers);
    let mut spec = SourceSpec {
        variants: variants
            .iter()
            .map(|v| OutputSpec {
                id: v.id().to_string(),
                size: v.spec.size,
                pixel_format: v.spec.pixel_format,
            })
            .collect(),
        ..handle.spec.clone()
    };
    if ctx.software {
        spec.hwaccel = HwAccel::None;
    }
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
    *handle.kill.locked() = Some(source.kill_handle());
    if handle.outputs_version.load(Ordering::Acquire) != version {
        // The outputs changed while this ffmpeg was being started: it has the old
        // ones, so it ends now and the loop starts the new set.
        handle.reconfigure.store(true, Ordering::Release);
        (source.kill_handle())();
    }
    tracing::info!(stream = id, pid = source.pid(), url = %handle.spec.redacted, hwaccel = %spec.hwaccel, "source started");

    let outcome = (|| {
        let ended = |error: Error| RunOutcome::Ended {
            frames: 0,
            error: Some(error),
            hwaccel_error: None,
        };
        let geometry = match source.geometry(ctx.cfg.probe_timeout, &|| handle.stopping()) {
            Ok(g) => g,
            Err(e) => return ended(e),
        };
        if let Some(fps) = source.declared_fps() {
            // Every output of the decode runs at the input's rate.
            handle.status().declared_fps = fps;
            for v in &variants {
                v.status().declared_fps = fps;
            }
        }
        if let Err(e) = ensure_ring(handle, ctx.alloc, ctx.writer, geometry) {
            return RunOutcome::Fatal(e);
        }
        let mut outputs = Vec::new();
        if !variants.is_empty() {
            let geos = match source.variant_geometries(ctx.cfg.probe_timeout, &|| handle.stopping())
            {
                Ok(g) => g,
                Err(e) => return ended(e),
            };
            outputs = source.take_variant_readers();
            if geos.len() != variants.len() || outputs.len() != variants.len() {
                return RunOutcome::Fatal(Error::new(
                    ErrorKind::Internal,
                    format!(
                        "internal error: the source has {} variant outputs, the stream {}",
                        outputs.len(),
                        variants.len()
                    ),
                ));
            }
            for ((v, w), g) in ctx.variant_writers.iter_mut().zip(geos) {
                if let Err(e) = ensure_ring(v, ctx.alloc, w, g) {
                    return RunOutcome::Fatal(e.context(format_args!("variant {}", v.id())));
                }
            }
        }
        let clock = source.clock();
        let kill = source.kill_handle();
        let w = ctx.writer.as_mut().expect("writer set above");
        let variant_writers = &mut *ctx.variant_writers;
        let frames = std::thread::scope(|scope| {
            for ((v, w), mut input) in variant_writers.iter_mut().zip(outputs) {
                let w = w.as_mut().expect("variant writer set above");
                let v = &**v;
                let clock = clock.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("variant-{}", v.id()))
                    .spawn_scoped(scope, move || {
                        pump(w, &mut input, clock.as_deref(), |n, _, _| {
                            v.frames_written.fetch_add(1, Ordering::Relaxed);
                            v.progressed();
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
                    handle.progressed();
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
                                .store(handle.clock.monotonic_ns(), Ordering::Relaxed);
                        }
                    }
                })
            };
            if !variants.is_empty() {
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
    *handle.kill.locked() = None;
    let killed_for = handle.kill_reason.locked().take();
    let how = source.finish();
    handle.status().ffmpeg_pid = 0;
    tracing::debug!(stream = id, "ffmpeg exited: {how}");
    match outcome {
        RunOutcome::Ended { frames, error, .. } => {
            let error = killed_for
                .or(error)
                .or_else(|| source.last_error())
                .or_else(|| {
                    Some(Error::new(
                        ErrorKind::Exited,
                        format!("ffmpeg exited ({how})"),
                    ))
                });
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
    //! The supervisor's restart logic against a scripted fake source and a
    //! simulated clock (the real ffmpeg is exercised by the end-to-end tests in
    //! `tests/`): backoff and healthy runs are exact, nothing sleeps.
    use super::*;
    use crate::clock::{Clocks, SimulatedClocks};
    use crate::registry::Allocator;
    use crate::testing::{spec, unreachable as reset, Run, Script};
    use framebroker_proto::shm::ReadOnlySegment;
    use framebroker_proto::{PixelFormat, RingReader};

    /// A supervisor of stream `s` on its own thread, with a simulated clock.
    struct Harness {
        handle: Arc<StreamHandle>,
        clock: Arc<SimulatedClocks>,
        /// The clock when the supervisor started.
        t0: Duration,
        prefix: String,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Harness {
        fn start(script: &Arc<Script>, hwaccel: HwAccel, cfg: SupervisorConfig) -> Harness {
            let prefix = format!(
                "fbsup{}-{}-",
                std::process::id(),
                monotonic_ns() % 1_000_000_000
            );
            let cfg = SupervisorConfig {
                shm_prefix: prefix.clone(),
                ..cfg
            };
            let clock = SimulatedClocks::new();
            let t0 = clock.monotonic();
            let spec = spec("s", hwaccel);
            let handle = Arc::new(StreamHandle::new(spec, 8, false, clock.clone()));
            let alloc = Arc::new(Allocator::new(&cfg, 1 << 30));
            let (h, f) = (handle.clone(), Arc::new(script.clone()));
            let thread = std::thread::spawn(move || run(h, f, alloc, cfg));
            Harness {
                handle,
                t0,
                clock,
                prefix,
                thread: Some(thread),
            }
        }

        /// Waits (real time, bounded) for the supervisor thread to get there.
        fn until(&self, what: &str, mut f: impl FnMut() -> bool) {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !f() {
                assert!(std::time::Instant::now() < deadline, "never: {what}");
                std::thread::yield_now();
                std::thread::sleep(Duration::from_millis(1));
            }
        }

        fn stop(&mut self) {
            self.handle.request_stop();
            if let Some(t) = self.thread.take() {
                t.join().unwrap();
            }
        }
    }

    impl Drop for Harness {
        fn drop(&mut self) {
            self.stop();
        }
    }

    fn quick() -> SupervisorConfig {
        SupervisorConfig {
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(2),
            ..SupervisorConfig::default()
        }
    }

    #[test]
    fn a_source_that_ends_is_restarted_into_the_same_segment() {
        let script = Script::new(vec![
            Run::ends(5, reset("Connection reset by peer")),
            Run::ends(5, reset("Connection reset by peer")),
            Run::holds(5),
        ]);
        let mut h = Harness::start(&script, HwAccel::None, quick());
        h.until("the third run holds", || {
            script.holding.load(Ordering::SeqCst) == 1
        });
        let a = h.handle.attachment().unwrap();
        let st = h.handle.stats();
        assert_eq!(st.frames_written, 15, "{st:?}");
        assert_eq!(st.reconnects, 2);
        assert_eq!(st.info.state, StreamState::Live);
        assert_eq!(st.last_error.as_deref(), Some("Connection reset by peer"));
        assert_eq!(st.info.declared_fps, 25.0, "the source's declared rate");
        assert_eq!(a.generation, 1, "same segment across restarts");
        assert_eq!(framebroker_proto::shm::list(&h.prefix).len(), 1);
        // The half frame at the end of each run was abandoned, never published.
        let seg = ReadOnlySegment::open(&a.segment, None).unwrap();
        let mut r = RingReader::open(&seg).unwrap();
        let mut buf = vec![0; 128];
        let m = r.try_latest(&mut buf).unwrap().unwrap();
        assert_eq!(m.number, 15);
        assert!(
            buf.iter().all(|x| *x == 4),
            "frame {} holds partial data",
            m.number
        );
        h.stop();
        assert!(
            framebroker_proto::shm::list(&h.prefix).is_empty(),
            "segment unlinked when the stream ends"
        );
        assert_eq!(r.state(), StreamState::Stopped);
    }

    #[test]
    fn a_new_geometry_gets_a_new_generation_and_stops_the_old_segment() {
        let script = Script::new(vec![
            Run::holds(3),
            Run {
                size: (32, 8),
                ..Run::holds(3)
            },
        ]);
        let mut h = Harness::start(&script, HwAccel::None, quick());
        h.until("the first run holds", || {
            script.holding.load(Ordering::SeqCst) == 1
        });
        let first = h.handle.attachment().unwrap();
        let seg = ReadOnlySegment::open(&first.segment, None).unwrap();
        let old = RingReader::open(&seg).unwrap();
        h.handle
            .kill_source(Error::new(ErrorKind::Ended, "camera restarted"));
        h.until("the second run holds", || {
            script.spawned().len() == 2 && script.holding.load(Ordering::SeqCst) == 1
        });
        let second = h.handle.attachment().unwrap();
        assert_ne!(second.generation, first.generation);
        assert_eq!((second.width, second.height), (32, 8));
        assert_eq!(
            old.state(),
            StreamState::Stopped,
            "readers of the old segment are told to re-attach"
        );
        assert_eq!(
            framebroker_proto::shm::list(&h.prefix),
            std::slice::from_ref(&second.segment),
            "old segment unlinked"
        );
        h.stop();
    }

    /// The delay before each restart, `k`-th within [cap/2, cap] of a cap that
    /// doubles from `backoff_initial` to `backoff_max`; the clock moved by
    /// exactly their sum.
    #[test]
    fn restarts_back_off_doubling_to_the_cap_on_the_clock() {
        let mut runs = vec![Run::ends(0, reset("Connection refused")); 6];
        runs.push(Run::holds(0));
        let script = Script::new(runs);
        let mut h = Harness::start(&script, HwAccel::None, quick());
        h.until("the seventh run holds", || {
            script.holding.load(Ordering::SeqCst) == 1
        });
        let sleeps = h.clock.sleeps();
        let ms = Duration::from_millis;
        let caps = [ms(500), ms(1000), ms(2000), ms(2000), ms(2000), ms(2000)];
        assert_eq!(sleeps.len(), caps.len(), "{sleeps:?}");
        for (d, cap) in sleeps.iter().zip(caps) {
            assert!(
                *d >= cap / 2 && *d <= cap,
                "{d:?} outside [{:?}, {cap:?}]",
                cap / 2
            );
        }
        assert_eq!(h.clock.monotonic() - h.t0, sleeps.iter().sum::<Duration>());
        let st = h.handle.stats();
        assert_eq!(
            (st.reconnects, st.info.state),
            (6, StreamState::Reconnecting)
        );
        assert_eq!(st.last_error.as_deref(), Some("Connection refused"));
        h.stop();
    }

    #[test]
    fn a_run_healthy_for_long_enough_resets_the_backoff() {
        let cfg = quick();
        let healthy = cfg.healthy_after;
        let script = Script::new(vec![
            Run::ends(0, reset("Connection refused")),
            Run::ends(0, reset("Connection refused")),
            Run::ends(0, reset("Connection refused")),
            Run::holds(1),
            Run::holds(1),
        ]);
        let mut h = Harness::start(&script, HwAccel::None, cfg);
        h.until("the fourth run holds", || {
            script.holding.load(Ordering::SeqCst) == 1
        });
        assert_eq!(h.clock.sleeps().len(), 3);
        // One tick short of healthy: the backoff goes on doubling.
        h.clock.advance(healthy - Duration::from_nanos(1));
        h.handle
            .kill_source(Error::new(ErrorKind::Unreachable, "camera dropped"));
        h.until("the fifth run holds", || {
            h.clock.sleeps().len() == 4 && script.holding.load(Ordering::SeqCst) == 1
        });
        assert!(
            h.clock.sleeps()[3] >= Duration::from_secs(1),
            "still backing off"
        );
        // Healthy for exactly healthy_after: the next delay starts over.
        h.clock.advance(healthy);
        h.handle
            .kill_source(Error::new(ErrorKind::Unreachable, "camera dropped"));
        h.until("the sixth run", || h.clock.sleeps().len() == 5);
        assert!(h.clock.sleeps()[4] <= Duration::from_millis(500), "reset");
        assert_eq!(
            h.handle.stats().last_error.as_deref(),
            Some("camera dropped"),
            "the kill's reason is the run's error"
        );
        h.stop();
    }

    #[test]
    fn permanent_errors_fail_the_stream_after_the_allowed_attempts() {
        let script = Script::refusing(Error::new(
            ErrorKind::Unauthorized,
            "rtsp://admin:pw@127.0.0.1/cam: 401 Unauthorized",
        ));
        let mut h = Harness::start(&script, HwAccel::None, quick());
        h.until("the supervisor gives up", || {
            h.thread.as_ref().is_some_and(|t| t.is_finished())
        });
        assert_eq!(script.spawned().len(), 3, "max_permanent_failures attempts");
        assert_eq!(h.clock.sleeps().len(), 2, "a delay between attempts");
        let st = h.handle.stats();
        assert_eq!(st.info.state, StreamState::Failed);
        assert_eq!(
            st.last_error.as_deref(),
            Some("rtsp://***@127.0.0.1/cam: 401 Unauthorized")
        );
        h.stop();
    }

    #[test]
    fn an_unusable_hardware_decoder_falls_back_to_software_at_once() {
        let script = Script::new(vec![
            Run {
                hwaccel_error: Some(Error::new(
                    ErrorKind::HardwareDecoder,
                    "Device creation failed: -542398533.",
                )),
                ..Run::ends(0, None)
            },
            Run::ends(0, reset("Connection refused")),
            Run::holds(2),
        ]);
        let mut h = Harness::start(&script, HwAccel::Vaapi, quick());
        h.until("the third run holds", || {
            script.holding.load(Ordering::SeqCst) == 1
        });
        assert_eq!(
            script.spawned(),
            [HwAccel::Vaapi, HwAccel::None, HwAccel::None],
            "software from the fallback on, even after the camera's own error"
        );
        assert_eq!(h.clock.sleeps().len(), 1, "no delay for the fallback");
        let st = h.handle.stats();
        assert_eq!(
            st.decoder,
            "software (vaapi unavailable: Device creation failed: -542398533.)"
        );
        assert_eq!(st.info.state, StreamState::Live);
        h.stop();
    }

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
    fn the_decoder_is_blamed_only_for_what_is_not_the_cameras() {
        let e = |k, m: &str| Error::new(k, m);
        let hw = e(ErrorKind::HardwareDecoder, "Device creation failed: -5.");
        assert_eq!(
            hwaccel_fallback(Some(&hw), None, false).as_deref(),
            Some("Device creation failed: -5."),
            "the device failed: always"
        );
        let exited = e(ErrorKind::Exited, "ffmpeg exited (exit status: 1)");
        assert!(hwaccel_fallback(None, Some(&exited), true).is_some());
        assert!(
            hwaccel_fallback(None, Some(&exited), false).is_none(),
            "after the first attempt, an unexplained end is not the decoder's"
        );
        for k in [
            ErrorKind::Unauthorized,
            ErrorKind::NotFound,
            ErrorKind::Unreachable,
            ErrorKind::Stalled,
            ErrorKind::Stopped,
            ErrorKind::Ended,
        ] {
            assert!(
                hwaccel_fallback(None, Some(&e(k, "x")), true).is_none(),
                "{k:?}"
            );
        }
        assert!(hwaccel_fallback(None, None, true).is_none());
    }

    fn policy_cfg() -> SupervisorConfig {
        SupervisorConfig {
            probe_timeout: Duration::from_secs(20),
            stall_timeout: Duration::from_secs(5),
            ..SupervisorConfig::default()
        }
    }

    #[test]
    fn a_running_source_is_stalled_one_nanosecond_after_its_timeout() {
        let clock = SimulatedClocks::new();
        let h = StreamHandle::new(spec("s", HwAccel::None), 8, false, clock.clone());
        let cfg = policy_cfg();
        let ns = |d: Duration| d.as_nanos() as u64;
        let t0 = clock.monotonic_ns();
        assert_eq!(
            h.stalled(t0 + ns(Duration::from_secs(3600)), &cfg),
            None,
            "no source running"
        );
        h.status().ffmpeg_pid = 7;
        // Before the first frame: the probe's time and the stall timeout.
        let starting = ns(cfg.probe_timeout + cfg.stall_timeout);
        assert_eq!(h.stalled(t0 + starting, &cfg), None);
        let e = h.stalled(t0 + starting + 1, &cfg).unwrap();
        assert_eq!(e.kind(), ErrorKind::Stalled);
        assert_eq!(e.message(), "source stalled: no frame for 25.0 s");
        // Live: the stall timeout from the last frame.
        h.set_state(StreamState::Live);
        clock.advance(Duration::from_secs(1));
        h.progressed();
        let t1 = clock.monotonic_ns();
        assert_eq!(h.stalled(t1 + ns(cfg.stall_timeout), &cfg), None);
        assert_eq!(
            h.stalled(t1 + ns(cfg.stall_timeout) + 1, &cfg)
                .map(|e| e.kind()),
            Some(ErrorKind::Stalled)
        );
        // Killing gives the next run a full timeout.
        let late = t1 + ns(cfg.stall_timeout) + 1;
        assert!(h.kill_if_stalled(late, &cfg));
        assert!(!h.kill_if_stalled(late + ns(cfg.stall_timeout), &cfg));
        // An ended stream is not stalled.
        h.set_state(StreamState::Failed);
        assert_eq!(h.stalled(late + ns(Duration::from_secs(3600)), &cfg), None);
    }

    #[test]
    fn an_on_demand_stream_is_idle_one_nanosecond_after_the_grace() {
        let clock = SimulatedClocks::new();
        let grace = Duration::from_secs(10);
        // No allowance for a start here: the grace alone (the allowance below).
        const NOW: Duration = Duration::ZERO;
        let mut sp = spec("s", HwAccel::None);
        sp.variants = vec![crate::ffmpeg::OutputSpec {
            id: "v".into(),
            size: Some((8, 8)),
            pixel_format: PixelFormat::Gray,
        }];
        let h = StreamHandle::new(sp.clone(), 8, true, clock.clone());
        let t0 = clock.monotonic_ns();
        let at = |d: Duration| t0 + d.as_nanos() as u64;
        assert!(!h.idle(at(grace), grace, NOW));
        assert!(h.idle(at(grace) + 1, grace, NOW));
        // A reader of the stream, or of one of its variants, keeps it.
        h.readers.store(1, Ordering::Relaxed);
        assert!(!h.idle(at(grace) + 1, grace, NOW));
        h.readers.store(0, Ordering::Relaxed);
        let v = h.variants()[0].clone();
        v.readers.store(1, Ordering::Relaxed);
        assert!(!h.idle(at(grace) + 1, grace, NOW));
        v.readers.store(0, Ordering::Relaxed);
        // Being read (idle_since 0) is never idle; a variant of the request is
        // never idle itself (its main stream decides for both).
        h.idle_since_ns.store(0, Ordering::Relaxed);
        assert!(!h.idle(u64::MAX, grace, NOW));
        assert!(!v.idle(u64::MAX, grace, NOW), "its parent decides");
        // A variant added by a later request (or an alias) is idle by its own
        // readers, and does not keep its decode's main stream.
        let added = Arc::new(StreamHandle::added_variant(
            &h,
            crate::ffmpeg::OutputSpec {
                id: "w".into(),
                size: Some((4, 4)),
                pixel_format: PixelFormat::Gray,
            },
            true,
        ));
        h.add_variant(added.clone());
        added.readers.store(1, Ordering::Relaxed);
        h.idle_since_ns.store(t0, Ordering::Relaxed);
        assert!(
            h.idle(at(grace) + 1, grace, NOW),
            "not kept by an added variant"
        );
        added.readers.store(0, Ordering::Relaxed);
        let t2 = added.idle_since_ns.load(Ordering::Relaxed);
        let g = grace.as_nanos() as u64;
        assert!(!added.idle(t2 + g, grace, NOW));
        assert!(added.idle(t2 + g + 1, grace, NOW));
        let always = StreamHandle::new(sp, 8, false, clock.clone());
        assert!(!always.idle(u64::MAX, grace, NOW), "not on demand");
    }

    #[test]
    fn a_stream_never_live_gets_its_start_on_top_of_the_grace() {
        let clock = SimulatedClocks::new();
        let (grace, start) = (Duration::from_millis(1500), Duration::from_secs(20));
        let h = StreamHandle::new(spec("s", HwAccel::None), 8, true, clock.clone());
        let t0 = clock.monotonic_ns();
        let at = |d: Duration| t0 + d.as_nanos() as u64;
        // Starting slowly (no frame yet, so nobody could attach): kept.
        assert!(!h.idle(at(grace) + 1, grace, start));
        assert!(!h.idle(at(grace + start), grace, start));
        // Never came up and nobody waits: it stops all the same.
        assert!(h.idle(at(grace + start) + 1, grace, start));
        // Once it has been live, the grace alone counts (from the first frame).
        h.ever_live.store(true, Ordering::Relaxed);
        assert!(h.idle(at(grace) + 1, grace, start));
        // An alias follows the output it reads.
        let target = Arc::new(StreamHandle::new(
            spec("t", HwAccel::None),
            8,
            false,
            clock.clone(),
        ));
        let alias = StreamHandle::alias("a", target.clone(), "t", true);
        let a0 = alias.idle_since_ns.load(Ordering::Relaxed);
        let after = |d: Duration| a0 + d.as_nanos() as u64 + 1;
        assert!(!alias.idle(after(grace), grace, start));
        target.ever_live.store(true, Ordering::Relaxed);
        assert!(alias.idle(after(grace), grace, start));
    }

    #[test]
    fn a_stalled_source_is_killed_and_restarted_with_the_reason() {
        let script = Script::new(vec![Run::holds(0), Run::holds(2)]);
        let cfg = quick();
        let mut h = Harness::start(&script, HwAccel::None, cfg.clone());
        h.until("the first run holds", || {
            script.holding.load(Ordering::SeqCst) == 1
        });
        let limit = cfg.probe_timeout + cfg.stall_timeout;
        h.clock.advance(limit);
        assert!(!h.handle.kill_if_stalled(h.clock.monotonic_ns(), &cfg));
        h.clock.advance(Duration::from_nanos(1));
        assert!(h.handle.kill_if_stalled(h.clock.monotonic_ns(), &cfg));
        h.until("the second run holds", || {
            script.spawned().len() == 2 && script.holding.load(Ordering::SeqCst) == 1
        });
        let st = h.handle.stats();
        assert_eq!(st.reconnects, 1);
        assert_eq!(
            st.last_error.as_deref(),
            Some("source stalled: no frame for 25.0 s")
        );
        assert_eq!(st.info.state, StreamState::Live);
        h.stop();
    }
}
