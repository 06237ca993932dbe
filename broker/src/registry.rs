//! The broker's streams: start, stop, attach, detach, limits, and the ticker that
//! keeps heartbeats fresh, measures rates, restarts stalled sources and stops idle
//! on-demand streams.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use framebroker_proto::config::Mode;
use framebroker_proto::control::{
    Attachment, ErrorCode, HwAccel, StartRequest, StreamInfo, StreamStats, MAX_VARIANTS,
};
use framebroker_proto::layout::{self, DEFAULT_SLOTS, MAX_SLOTS, MIN_SLOTS};
use framebroker_proto::naming::{self, classify_url, redact_url, UrlPolicy};
use framebroker_proto::ring::{monotonic_ns, RingConfig};
use framebroker_proto::shm::{self, OwnedSegment};
use framebroker_proto::{Geometry, StreamState};

use crate::declared::Declared;
use crate::ffmpeg::{OutputSpec, SourceFactory, SourceSpec};
use crate::supervisor::{self, SegmentAllocator, StreamHandle, SupervisorConfig};

/// A refused request: the code and a message for the caller (no secrets in it).
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }
}

impl From<framebroker_proto::Error> for Refusal {
    fn from(e: framebroker_proto::Error) -> Self {
        use framebroker_proto::Error as E;
        let code = match &e {
            E::InvalidId { .. } | E::InvalidPrefix { .. } => ErrorCode::InvalidId,
            E::InvalidUrl { .. } => ErrorCode::InvalidUrl,
            E::InvalidGeometry { .. } | E::InvalidSlots { .. } => ErrorCode::InvalidGeometry,
            _ => ErrorCode::Internal,
        };
        Refusal {
            code,
            message: e.to_string(),
        }
    }
}

/// Broker-wide settings.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    pub supervisor: SupervisorConfig,
    pub url_policy: UrlPolicy,
    pub default_slots: u32,
    pub max_streams: usize,
    pub max_readers_per_stream: u32,
    /// Total bytes of shared memory all rings may use.
    pub shm_budget: u64,
    /// On-demand streams stop this long after their last reader leaves.
    pub idle_grace: Duration,
    pub io_timeout: Duration,
    /// Decoder of streams whose start request does not name one.
    pub default_hwaccel: HwAccel,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            supervisor: SupervisorConfig::default(),
            url_policy: UrlPolicy::default(),
            default_slots: DEFAULT_SLOTS,
            max_streams: 64,
            max_readers_per_stream: 256,
            shm_budget: 4 << 30,
            idle_grace: Duration::from_secs(10),
            io_timeout: Duration::from_secs(5),
            default_hwaccel: HwAccel::None,
        }
    }
}

/// Hands out segments within the budget and the free space of `/dev/shm`.
struct Allocator {
    prefix: String,
    mode: u32,
    checksum: bool,
    budget: u64,
    used: Mutex<u64>,
    generation: AtomicU64,
}

impl SegmentAllocator for Allocator {
    fn allocate(
        &self,
        id: &str,
        geometry: Geometry,
        slots: u32,
    ) -> Result<(Arc<OwnedSegment>, RingConfig), String> {
        let mut config = RingConfig {
            stream_id: id.to_string(),
            geometry,
            slot_count: slots,
            generation: 0,
            checksum: self.checksum,
            writer_pid: std::process::id(),
        };
        let size = config.segment_size().map_err(|e| e.to_string())?;
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        if *used + size > self.budget {
            return Err(budget_message(size, *used, self.budget));
        }
        let free = shm::free_bytes().map_err(|e| e.to_string())?;
        if size > free {
            return Err(format!(
                "/dev/shm has {} free, the ring needs {}: enlarge /dev/shm or use fewer slots or a smaller size",
                mib(free),
                mib(size)
            ));
        }
        // A name can be taken by a segment we must not remove (another live broker
        // with our prefix, a foreign file): move on to the next generation.
        let mut last_err = String::new();
        for _ in 0..16 {
            config.generation = self.generation.fetch_add(1, Ordering::Relaxed);
            let name = naming::segment_name(&self.prefix, id, config.generation)
                .map_err(|e| e.to_string())?;
            match OwnedSegment::create(&name, size, self.mode) {
                Ok(seg) => {
                    *used += size;
                    return Ok((Arc::new(seg), config));
                }
                Err(framebroker_proto::Error::Shm { reason, .. })
                    if reason.contains("already exists") =>
                {
                    tracing::warn!(segment = %name, "name taken by another segment; trying the next generation");
                    last_err = format!("{name}: {reason}");
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Err(last_err)
    }

    fn release(&self, bytes: u64) {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        *used = used.saturating_sub(bytes);
    }
}

/// `Some((w, h))` for a valid fixed size, `None` for native size; both or neither.
fn checked_size(
    id: &str,
    width: Option<u32>,
    height: Option<u32>,
    pixel_format: framebroker_proto::PixelFormat,
) -> Result<Option<(u32, u32)>, Refusal> {
    match (width, height) {
        (None, None) => Ok(None),
        (Some(w), Some(h)) => {
            Geometry {
                width: w,
                height: h,
                pixel_format,
            }
            .validate()?;
            Ok(Some((w, h)))
        }
        _ => Err(Refusal::new(
            ErrorCode::InvalidGeometry,
            format!("{id:?}: give both width and height, or neither (native size)"),
        )),
    }
}

/// Bytes as MiB for messages: whole when exact, else with one decimal (never
/// rounded down to a number that would contradict the message).
fn mib(bytes: u64) -> String {
    if bytes % (1 << 20) == 0 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

fn budget_message(need: u64, used: u64, budget: u64) -> String {
    format!(
        "shared-memory budget exceeded: the ring needs {}, {} of {} are in use (raise --shm-budget-mb)",
        mib(need),
        mib(used),
        mib(budget)
    )
}

struct Entry {
    handle: Arc<StreamHandle>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// All streams of one broker.
pub struct Broker {
    cfg: BrokerConfig,
    factory: Arc<dyn SourceFactory>,
    alloc: Arc<Allocator>,
    streams: Mutex<HashMap<String, Entry>>,
    /// Supervisors of stopped streams that may still be cleaning up; shutdown
    /// waits for them so no segment outlives a clean exit.
    stopping: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// Streams the config file declares (see [`crate::declared`]).
    declared: Declared,
}

/// A request that finds its camera already running gets the running stream,
/// which must already have every variant the request asks for: silently
/// handing back a stream without them would leave the caller attaching to ids
/// that do not exist.
fn lacks_variants(running: &StreamHandle, wanted: &[OutputSpec]) -> Result<(), Refusal> {
    for w in wanted {
        if !running.spec.variants.iter().any(|v| v == w) {
            return Err(Refusal::new(
                ErrorCode::AlreadyExists,
                format!(
                    "stream {:?} already reads this camera without variant {:?} ({}, {}); \
                     variants are fixed when a stream starts: stop {:?} and start it again \
                     with every variant wanted",
                    running.id(),
                    w.id,
                    match w.size {
                        Some((wd, h)) => format!("{wd}x{h}"),
                        None => "native size".into(),
                    },
                    w.pixel_format.name(),
                    running.id()
                ),
            ));
        }
    }
    Ok(())
}

/// Takes a main stream out of the list with its variants (which share its
/// decode and never outlive it).
fn remove_family(streams: &mut HashMap<String, Entry>, id: &str) -> Option<Entry> {
    let entry = streams.remove(id)?;
    for v in &entry.handle.variants {
        streams.remove(v.id());
    }
    Some(entry)
}

impl Broker {
    pub fn new(cfg: BrokerConfig, factory: Arc<dyn SourceFactory>) -> Arc<Self> {
        let alloc = Arc::new(Allocator {
            prefix: cfg.supervisor.shm_prefix.clone(),
            mode: cfg.supervisor.shm_mode,
            checksum: cfg.supervisor.checksum,
            budget: cfg.shm_budget,
            used: Mutex::new(0),
            generation: AtomicU64::new(1),
        });
        Arc::new(Broker {
            cfg,
            factory,
            alloc,
            streams: Mutex::new(HashMap::new()),
            stopping: Mutex::new(Vec::new()),
            declared: Declared::default(),
        })
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.cfg
    }

    /// The streams the config file declares.
    pub fn declared(&self) -> &Declared {
        &self.declared
    }

    fn streams(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, id: &str) -> Result<Arc<StreamHandle>, Refusal> {
        self.streams()
            .get(id)
            .map(|e| e.handle.clone())
            .ok_or_else(|| Refusal::new(ErrorCode::NotFound, format!("no stream {id:?}")))
    }

    /// Starts a stream, or returns the one running with the same id and URL, or
    /// (unless `allow_duplicate_url`) with the same URL under another id.
    ///
    /// Variants in the request become streams of their own (listed with `parent`
    /// set) fed by the same ffmpeg; everything about them is checked before
    /// anything starts.
    pub fn start(self: &Arc<Self>, req: StartRequest) -> Result<(StreamInfo, bool), Refusal> {
        naming::validate_stream_id(&req.id)?;
        let source = classify_url(&req.url, &self.cfg.url_policy)?;
        let size = checked_size(&req.id, req.width, req.height, req.pixel_format)?;
        if req.variants.len() > MAX_VARIANTS {
            return Err(Refusal::new(
                ErrorCode::LimitExceeded,
                format!(
                    "stream {:?}: at most {MAX_VARIANTS} variants, {} requested",
                    req.id,
                    req.variants.len()
                ),
            ));
        }
        let mut variants = Vec::with_capacity(req.variants.len());
        for v in &req.variants {
            naming::validate_stream_id(&v.id)?;
            if v.id == req.id || variants.iter().any(|o: &OutputSpec| o.id == v.id) {
                return Err(Refusal::new(
                    ErrorCode::InvalidId,
                    format!("variant id {:?} is used twice in the request", v.id),
                ));
            }
            variants.push(OutputSpec {
                id: v.id.clone(),
                size: checked_size(&v.id, v.width, v.height, v.pixel_format)?,
                pixel_format: v.pixel_format,
            });
        }
        let slots = req.ring_slots.unwrap_or(self.cfg.default_slots);
        if !(MIN_SLOTS..=MAX_SLOTS).contains(&slots) {
            return Err(framebroker_proto::Error::InvalidSlots { slots }.into());
        }
        let mut streams = self.streams();
        if streams
            .get(&req.id)
            .is_some_and(|e| e.handle.parent.is_none() && e.handle.status().state.is_final())
        {
            // A failed stream is replaced by a new attempt under the same id.
            if let Some(old) = remove_family(&mut streams, &req.id) {
                old.handle.request_stop();
            }
        }
        if let Some(e) = streams.get(&req.id) {
            if let Some(parent) = &e.handle.parent {
                return Err(Refusal::new(
                    ErrorCode::AlreadyExists,
                    format!("{:?} is already a variant of stream {parent:?}", req.id),
                ));
            }
            if e.handle.spec.url == req.url {
                lacks_variants(&e.handle, &variants)?;
                return Ok((e.handle.info(), false));
            }
            return Err(Refusal::new(
                ErrorCode::AlreadyExists,
                format!(
                    "stream {:?} already exists with another URL ({})",
                    req.id, e.handle.spec.redacted
                ),
            ));
        }
        if !req.allow_duplicate_url {
            if let Some(e) = streams
                .values()
                .find(|e| e.handle.spec.url == req.url && !e.handle.status().state.is_final())
            {
                lacks_variants(&e.handle, &variants)?;
                tracing::info!(requested = %req.id, running = e.handle.id(), "URL already running: single ingest");
                return Ok((e.handle.info(), false));
            }
        }
        if let Some(v) = variants.iter().find(|v| streams.contains_key(&v.id)) {
            return Err(Refusal::new(
                ErrorCode::AlreadyExists,
                format!("variant id {:?} is already a stream; pick another id", v.id),
            ));
        }
        // Failed (or stopped) streams stay listed with their last error until
        // the room is needed; they do not count against the limit, and the
        // oldest make way below, so the list stays within --max-streams and a
        // client starting bad URLs cannot grow the broker without bound.
        let ended: usize = streams
            .values()
            .filter(|e| e.handle.parent.is_none() && e.handle.status().state.is_final())
            .map(|e| 1 + e.handle.variants.len())
            .sum();
        let active = streams.len().saturating_sub(ended);
        let wanted = 1 + variants.len();
        if active + wanted > self.cfg.max_streams {
            return Err(Refusal::new(
                ErrorCode::LimitExceeded,
                format!(
                    "at most {} streams, variants included (raise --max-streams); \
                     {active} running, this request needs {wanted}",
                    self.cfg.max_streams
                ),
            ));
        }
        // Rings of known size (the main stream's and each variant's): refuse now
        // rather than fail later, counting the rings of streams still starting as if
        // they were allocated.
        let ring_bytes =
            |bytes: u64, slots: u32| layout::segment_size(bytes, slots).unwrap_or(u64::MAX);
        let need: u64 = std::iter::once((size, req.pixel_format))
            .chain(variants.iter().map(|v| (v.size, v.pixel_format)))
            .filter_map(|(size, pf)| {
                let (w, h) = size?;
                Some(ring_bytes(pf.frame_bytes(w, h).unwrap_or(0), slots))
            })
            .fold(0u64, u64::saturating_add);
        if need > 0 {
            let pending: u64 = streams
                .values()
                .filter(|e| {
                    e.handle.status().segment.is_none() && !e.handle.status().state.is_final()
                })
                .filter_map(|e| {
                    let (w, h) = e.handle.spec.size?;
                    Some(ring_bytes(
                        e.handle.spec.pixel_format.frame_bytes(w, h)?,
                        e.handle.slot_count,
                    ))
                })
                .sum();
            let used = *self.alloc.used.lock().unwrap_or_else(|p| p.into_inner()) + pending;
            if used.saturating_add(need) > self.cfg.shm_budget {
                return Err(Refusal::new(
                    ErrorCode::LimitExceeded,
                    budget_message(need, used, self.cfg.shm_budget),
                ));
            }
        }
        while streams.len() + wanted > self.cfg.max_streams {
            let Some(oldest) = streams
                .values()
                .filter(|e| e.handle.parent.is_none() && e.handle.status().state.is_final())
                .min_by_key(|e| e.handle.started)
                .map(|e| e.handle.id().to_string())
            else {
                break;
            };
            if let Some(old) = remove_family(&mut streams, &oldest) {
                old.handle.request_stop();
            }
            tracing::info!(stream = %oldest, "ended stream removed from the list to make room");
        }
        let spec = SourceSpec {
            id: req.id.clone(),
            redacted: redact_url(&req.url),
            url: req.url,
            source,
            size,
            pixel_format: req.pixel_format,
            transport: req.transport,
            io_timeout: self.cfg.io_timeout,
            hwaccel: req.hwaccel.unwrap_or(self.cfg.default_hwaccel),
            variants,
        };
        let handle = Arc::new(StreamHandle::new(spec, slots, req.on_demand));
        let (h, f, a, c) = (
            handle.clone(),
            self.factory.clone(),
            self.alloc.clone() as Arc<dyn SegmentAllocator>,
            self.cfg.supervisor.clone(),
        );
        let thread = std::thread::Builder::new()
            .name(format!("stream-{}", req.id))
            .spawn(move || {
                let h2 = h.clone();
                let run = std::panic::AssertUnwindSafe(move || supervisor::run(h, f, a, c));
                if std::panic::catch_unwind(run).is_err() {
                    // A bug, not a camera problem: say so instead of hanging in `starting`.
                    h2.status().state = StreamState::Failed;
                    h2.status().last_error =
                        Some("internal error: the stream supervisor panicked (see the log)".into());
                    if let Some(r) = h2.ring_status() {
                        r.set_state(StreamState::Failed);
                    }
                }
            })
            .map_err(|e| {
                Refusal::new(
                    ErrorCode::Internal,
                    format!("cannot start supervisor thread: {e}"),
                )
            })?;
        tracing::info!(stream = %req.id, url = %handle.spec.redacted, on_demand = req.on_demand, "stream added");
        let info = handle.info();
        for v in &handle.variants {
            tracing::info!(stream = v.id(), parent = %req.id, "variant added");
            streams.insert(
                v.id().to_string(),
                Entry {
                    handle: v.clone(),
                    thread: None,
                },
            );
        }
        streams.insert(
            req.id,
            Entry {
                handle,
                thread: Some(thread),
            },
        );
        Ok((info, true))
    }

    /// Stops a stream: its readers see `stopped`, its segment is unlinked.
    ///
    /// Stopping a main stream stops its variants; a variant cannot be stopped alone
    /// (it shares its parent's ffmpeg).
    pub fn stop(&self, id: &str) -> Result<(), Refusal> {
        let entry = {
            let mut streams = self.streams();
            let e = streams
                .get(id)
                .ok_or_else(|| Refusal::new(ErrorCode::NotFound, format!("no stream {id:?}")))?;
            if let Some(parent) = &e.handle.parent {
                return Err(Refusal::new(
                    ErrorCode::BadRequest,
                    format!(
                        "stream {id:?} is a variant of {parent:?} and shares its decode: \
                         stop {parent:?} (which stops its variants)"
                    ),
                ));
            }
            remove_family(&mut streams, id).expect("looked up above")
        };
        entry.handle.request_stop();
        // The supervisor exits within a moment; shutdown waits for it.
        if let Some(t) = entry.thread {
            let mut stopping = self.stopping.lock().unwrap_or_else(|p| p.into_inner());
            stopping.retain(|t| !t.is_finished());
            stopping.push(t);
        }
        tracing::info!(stream = id, "stream removed");
        Ok(())
    }

    pub fn list(&self) -> Vec<StreamInfo> {
        let mut v: Vec<_> = self.streams().values().map(|e| e.handle.info()).collect();
        // On-demand streams of the config file that wait for their first reader.
        for d in self.declared.all() {
            if d.mode == Mode::OnDemand && !v.iter().any(|i| i.id == d.id) {
                v.push(StreamInfo {
                    id: d.id.clone(),
                    url: redact_url(&d.url),
                    state: StreamState::Stopped,
                    width: d.size.map_or(0, |s| s.0),
                    height: d.size.map_or(0, |s| s.1),
                    pixel_format: d.pixel_format,
                    generation: 0,
                    readers: 0,
                    on_demand: true,
                    parent: None,
                    declared_fps: 0.0,
                });
            }
        }
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    pub fn stats(&self, id: &str) -> Result<StreamStats, Refusal> {
        Ok(self.get(id)?.stats())
    }

    /// Registers one reader of `id`. The caller keeps the handle and gives it back
    /// to [`detach`](Self::detach): a stream stopped and started again under the
    /// same id is another stream, with its own count.
    pub fn attach(self: &Arc<Self>, id: &str) -> Result<(Attachment, Arc<StreamHandle>), Refusal> {
        if self.current(id).is_none() && self.start_on_demand(id)? {
            return Err(Refusal::new(
                ErrorCode::NotReady,
                format!("stream {id:?} is on demand and starting; retry shortly"),
            ));
        }
        let h = self.get(id)?;
        let Some(a) = h.attachment() else {
            let s = h.status();
            return Err(Refusal::new(
                ErrorCode::NotReady,
                match s.state {
                    StreamState::Failed => format!(
                        "stream {id:?} failed: {}",
                        s.last_error.clone().unwrap_or_default()
                    ),
                    StreamState::Stopped => format!("stream {id:?} is stopped"),
                    _ => format!(
                        "stream {id:?} is {} and has no frames yet; retry shortly",
                        s.state
                    ),
                },
            ));
        };
        let readers = h.readers.fetch_add(1, Ordering::AcqRel) + 1;
        if readers > self.cfg.max_readers_per_stream {
            h.readers.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::new(
                ErrorCode::LimitExceeded,
                format!(
                    "stream {id:?} has the maximum of {} readers",
                    self.cfg.max_readers_per_stream
                ),
            ));
        }
        self.with_idle_owner(&h, |o| o.idle_since_ns.store(0, Ordering::Relaxed));
        Ok((a, h))
    }

    /// Runs `f` on the stream whose ffmpeg a reader of `h` keeps running, which
    /// owns the idle time of an on-demand stream: `h` itself, or its parent for
    /// a variant.
    fn with_idle_owner(&self, h: &StreamHandle, f: impl FnOnce(&StreamHandle)) {
        match &h.parent {
            None => f(h),
            Some(p) => {
                if let Some(parent) = self.current(p) {
                    f(&parent)
                }
            }
        }
    }

    /// Gives back one reader registered by [`attach`](Self::attach).
    pub fn detach(&self, handle: &StreamHandle) {
        let prev = handle
            .readers
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| r.checked_sub(1))
            .unwrap_or(0);
        if prev == 1 {
            // Idle once no reader of the stream or of its variants is left.
            self.with_idle_owner(handle, |o| {
                if o.total_readers() == 0 {
                    o.idle_since_ns.store(monotonic_ns(), Ordering::Relaxed);
                }
            });
        }
    }

    /// The stream currently registered under `id`, if any.
    pub fn current(&self, id: &str) -> Option<Arc<StreamHandle>> {
        self.streams().get(id).map(|e| e.handle.clone())
    }

    /// Stops everything (shutdown).
    pub fn shutdown(&self) {
        let entries: Vec<Entry> = self.streams().drain().map(|(_, e)| e).collect();
        for e in &entries {
            e.handle.request_stop();
        }
        for mut e in entries {
            if let Some(t) = e.thread.take() {
                let _ = t.join();
            }
        }
        let stopping: Vec<_> = self
            .stopping
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        for t in stopping {
            let _ = t.join();
        }
    }

    /// Runs the ticker on its own thread (every heartbeat interval).
    pub fn spawn_ticker(self: &Arc<Self>) -> std::thread::JoinHandle<()> {
        let broker = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("ticker".into())
            .spawn(move || {
                let mut rates: HashMap<String, VecDeque<(Instant, u64)>> = HashMap::new();
                while let Some(b) = broker.upgrade() {
                    b.tick(&mut rates);
                    drop(b);
                    std::thread::sleep(Duration::from_millis(layout::HEARTBEAT_INTERVAL_MS));
                }
            })
            .expect("spawn ticker")
    }

    fn tick(&self, rates: &mut HashMap<String, VecDeque<(Instant, u64)>>) {
        let handles: Vec<Arc<StreamHandle>> =
            self.streams().values().map(|e| e.handle.clone()).collect();
        let now = Instant::now();
        let now_ns = monotonic_ns();
        let mut idle = Vec::new();
        for h in &handles {
            let ring = h.ring_status();
            if let Some(r) = &ring {
                r.heartbeat();
            }
            // Rate over the last two seconds of being live (a window that reached
            // back into a start-up or a reconnect would under-report).
            let samples = rates.entry(h.id().to_string()).or_default();
            let fps = if h.status().state == StreamState::Live {
                samples.push_back((now, h.frames_written.load(Ordering::Relaxed)));
                while samples.len() > 2 && now.duration_since(samples[0].0) > Duration::from_secs(2)
                {
                    samples.pop_front();
                }
                match (samples.front(), samples.back()) {
                    (Some(a), Some(b)) if b.0.duration_since(a.0) > Duration::from_millis(500) => {
                        Some((b.1 - a.1) as f64 / b.0.duration_since(a.0).as_secs_f64())
                    }
                    _ => None,
                }
            } else {
                samples.clear();
                Some(0.0)
            };
            if let Some(fps) = fps {
                h.status().fps = fps;
                if let Some(r) = &ring {
                    r.set_fps(fps);
                }
            }
            // Stall: a source that delivers nothing for the stall timeout is killed
            // (ffmpeg can hang on a frozen camera; its exit restarts it).
            let quiet = Duration::from_nanos(
                now_ns.saturating_sub(h.last_progress_ns.load(Ordering::Relaxed)),
            );
            let state = h.status().state;
            let limit = match state {
                StreamState::Live => self.cfg.supervisor.stall_timeout,
                _ => self.cfg.supervisor.probe_timeout + self.cfg.supervisor.stall_timeout,
            };
            if !state.is_final() && quiet > limit && h.status().ffmpeg_pid != 0 {
                h.kill_source(&format!(
                    "source stalled: no frame for {:.1} s",
                    quiet.as_secs_f64()
                ));
                h.last_progress_ns.store(now_ns, Ordering::Relaxed);
            }
            // On-demand streams stop after the grace period without readers of
            // their own or of their variants (attach and detach keep the time).
            let since = h.idle_since_ns.load(Ordering::Relaxed);
            if h.on_demand
                && h.parent.is_none()
                && since != 0
                && h.total_readers() == 0
                && Duration::from_nanos(now_ns.saturating_sub(since)) > self.cfg.idle_grace
            {
                idle.push(h.id().to_string());
            }
        }
        rates.retain(|id, _| handles.iter().any(|h| h.id() == id));
        for id in idle {
            tracing::info!(stream = %id, "no readers for {:?}: stopping on-demand stream", self.cfg.idle_grace);
            let _ = self.stop(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The supervisor's restart logic against a fake source (the real ffmpeg is
    //! exercised by the end-to-end tests in `tests/`).
    use super::*;
    use crate::ffmpeg::{KillHandle, RunningSource};
    use framebroker_proto::shm::ReadOnlySegment;
    use framebroker_proto::{PixelFormat, RingReader};
    use std::io::Read;
    use std::sync::atomic::AtomicU32;

    /// Each run yields `frames` frames of the run's geometry, then ends (as ffmpeg
    /// does when a camera drops).
    struct Fake {
        runs: AtomicU32,
        frames: usize,
        sizes: Vec<(u32, u32)>,
    }

    struct FakeRun {
        geometry: Geometry,
        data: std::io::Cursor<Vec<u8>>,
    }

    impl RunningSource for FakeRun {
        fn geometry(&mut self, _: Duration, _: &dyn Fn() -> bool) -> Result<Geometry, String> {
            Ok(self.geometry)
        }
        fn frames(&mut self) -> &mut dyn Read {
            &mut self.data
        }
        fn pid(&self) -> u32 {
            0
        }
        fn kill_handle(&self) -> KillHandle {
            Arc::new(|| {})
        }
        fn finish(&mut self) -> String {
            "exit status: 0".into()
        }
        fn last_error(&self) -> Option<String> {
            Some("Connection reset by peer".into())
        }
        fn decode_errors(&self) -> u64 {
            0
        }
    }

    impl SourceFactory for Fake {
        fn spawn(&self, spec: &SourceSpec) -> Result<Box<dyn RunningSource>, String> {
            if spec.url.contains("denied") {
                return Err("method DESCRIBE failed: 401 Unauthorized".into());
            }
            let run = self.runs.fetch_add(1, Ordering::SeqCst) as usize;
            let (width, height) = self.sizes[run.min(self.sizes.len() - 1)];
            let geometry = Geometry {
                width,
                height,
                pixel_format: PixelFormat::Gray,
            };
            let n = geometry.frame_bytes() as usize;
            // Frame k of the run is filled with byte k; a half frame at the end.
            let mut data: Vec<u8> = (0..self.frames).flat_map(|k| vec![k as u8; n]).collect();
            data.extend(vec![0xEE; n / 2]);
            Ok(Box::new(FakeRun {
                geometry,
                data: std::io::Cursor::new(data),
            }))
        }
    }

    fn broker(sizes: Vec<(u32, u32)>) -> (Arc<Broker>, String) {
        let prefix = format!(
            "fbunit{}-{}-",
            std::process::id(),
            monotonic_ns() % 1_000_000
        );
        let cfg = BrokerConfig {
            supervisor: SupervisorConfig {
                shm_prefix: prefix.clone(),
                backoff_initial: Duration::from_millis(20),
                backoff_max: Duration::from_millis(40),
                ..SupervisorConfig::default()
            },
            idle_grace: Duration::from_millis(200),
            ..BrokerConfig::default()
        };
        (
            Broker::new(
                cfg,
                Arc::new(Fake {
                    runs: AtomicU32::new(0),
                    frames: 5,
                    sizes,
                }),
            ),
            prefix,
        )
    }

    fn wait(mut f: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    #[test]
    fn failed_streams_stay_listed_until_their_room_is_needed() {
        let (b, _) = broker(vec![(16, 8)]);
        let b = {
            // Same broker, with room for three streams.
            let mut cfg = b.cfg.clone();
            b.shutdown();
            cfg.max_streams = 3;
            Broker::new(cfg, b.factory.clone())
        };
        let failed = |id: &str| {
            wait(|| {
                b.stats(id)
                    .is_ok_and(|s| s.info.state == StreamState::Failed)
            })
        };
        b.start(StartRequest::new("live", "testsrc://ok")).unwrap();
        for id in ["bad1", "bad2"] {
            b.start(StartRequest::new(id, format!("rtsp://h/{id}/denied")))
                .unwrap();
            assert!(failed(id), "{id} fails for good");
        }
        // Listed with their error, though at the limit.
        let ids = |b: &Broker| b.list().into_iter().map(|s| s.id).collect::<Vec<_>>();
        assert_eq!(ids(&b), ["bad1", "bad2", "live"]);
        assert!(b.stats("bad1").unwrap().last_error.unwrap().contains("401"));
        // A new stream takes the room of the oldest failed one, never more.
        b.start(StartRequest::new("new", "testsrc://new")).unwrap();
        assert_eq!(ids(&b), ["bad2", "live", "new"]);
        // With only live streams at the limit, the next is refused, and the
        // refusal changes nothing.
        b.start(StartRequest::new("new2", "testsrc://new2"))
            .unwrap();
        let e = b
            .start(StartRequest::new("new3", "testsrc://new3"))
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::LimitExceeded, "{}", e.message);
        assert_eq!(ids(&b), ["live", "new", "new2"]);
        b.shutdown();
    }

    #[test]
    fn a_source_that_ends_is_restarted_into_the_same_segment() {
        let (b, prefix) = broker(vec![(16, 8)]);
        b.start(StartRequest::new("s", "testsrc://")).unwrap();
        assert!(wait(|| b.attach("s").is_ok()));
        let (a, _) = b.attach("s").unwrap();
        assert!(wait(|| b.stats("s").unwrap().reconnects >= 2));
        let st = b.stats("s").unwrap();
        assert!(st.frames_written >= 10, "{st:?}");
        assert_eq!(
            st.info.generation, a.generation,
            "same segment across restarts"
        );
        assert_eq!(st.last_error.as_deref(), Some("Connection reset by peer"));
        assert_eq!(framebroker_proto::shm::list(&prefix).len(), 1);
        // The half frame at the end of each run was abandoned, never published.
        let seg = ReadOnlySegment::open(&a.segment, None).unwrap();
        let mut r = RingReader::open(&seg).unwrap();
        let mut buf = vec![0; 128];
        let m = r.try_latest(&mut buf).unwrap().unwrap();
        assert!(
            buf.iter().all(|x| *x < 5),
            "frame {} holds partial data",
            m.number
        );
        b.shutdown();
        assert!(
            framebroker_proto::shm::list(&prefix).is_empty(),
            "segments unlinked on shutdown"
        );
        assert_eq!(r.state(), StreamState::Stopped);
    }

    #[test]
    fn a_new_geometry_gets_a_new_generation_and_stops_the_old_segment() {
        let (b, prefix) = broker(vec![(16, 8), (32, 8)]);
        b.start(StartRequest::new("s", "testsrc://")).unwrap();
        assert!(wait(|| b.attach("s").is_ok()));
        let (first, _) = b.attach("s").unwrap();
        let seg = ReadOnlySegment::open(&first.segment, None).unwrap();
        let old = RingReader::open(&seg).unwrap();
        assert!(wait(|| b
            .attach("s")
            .map(|(a, _)| a.generation != first.generation)
            .unwrap_or(false)));
        let (second, _) = b.attach("s").unwrap();
        assert_eq!((second.width, second.height), (32, 8));
        assert_eq!(
            old.state(),
            StreamState::Stopped,
            "readers of the old segment are told to re-attach"
        );
        assert!(
            wait(|| framebroker_proto::shm::list(&prefix).len() == 1),
            "old segment unlinked"
        );
        b.shutdown();
    }

    #[test]
    fn readers_are_counted_and_on_demand_streams_stop_when_idle() {
        let (b, _) = broker(vec![(16, 8)]);
        let mut req = StartRequest::new("s", "testsrc://");
        req.on_demand = true;
        b.start(req).unwrap();
        assert!(wait(|| b.attach("s").is_ok()));
        let h = b.current("s").unwrap();
        assert_eq!(b.stats("s").unwrap().info.readers, 1);
        b.detach(&h);
        assert_eq!(b.stats("s").unwrap().info.readers, 0);
        b.detach(&h); // never below zero
        assert_eq!(b.stats("s").unwrap().info.readers, 0);
        b.spawn_ticker();
        assert!(
            wait(|| b.list().is_empty()),
            "idle on-demand stream stopped after the grace period"
        );
        b.shutdown(); // waits for the stopped stream to unlink its segment
    }
}
