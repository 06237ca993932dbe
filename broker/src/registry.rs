//! The broker's streams: start, stop, attach, detach, limits, and the ticker that
//! keeps heartbeats fresh, measures rates, restarts stalled sources and stops idle
//! on-demand streams.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use framebroker_proto::config::Mode;
use framebroker_proto::control::{
    Attachment, ErrorCode, HwAccel, StartRequest, StreamInfo, StreamStats, MAX_VARIANTS,
};
use framebroker_proto::layout::{self, DEFAULT_SLOTS, MAX_SLOTS, MIN_SLOTS};
use framebroker_proto::naming::{self, classify_url, redact_url, Source, UrlPolicy};
use framebroker_proto::ring::RingConfig;
use framebroker_proto::shm::{self, OwnedSegment};
use framebroker_proto::{Geometry, StreamState};

use crate::clock::{self, Clock};
use crate::declared::Declared;
use crate::error::{Error, ErrorKind};
use crate::ffmpeg::{OutputSpec, SourceFactory, SourceSpec};
use crate::supervisor::{self, SegmentAllocator, StreamHandle, SupervisorConfig};
use crate::sync::{Lock, Rank, RankedGuard, RankedMutex};

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
pub(crate) struct Allocator {
    prefix: String,
    mode: u32,
    checksum: bool,
    budget: u64,
    used: Mutex<u64>,
    generation: AtomicU64,
}

impl Allocator {
    pub(crate) fn new(cfg: &SupervisorConfig, budget: u64) -> Self {
        Allocator {
            prefix: cfg.shm_prefix.clone(),
            mode: cfg.shm_mode,
            checksum: cfg.checksum,
            budget,
            used: Mutex::new(0),
            generation: AtomicU64::new(1),
        }
    }
}

impl SegmentAllocator for Allocator {
    fn allocate(
        &self,
        id: &str,
        geometry: Geometry,
        slots: u32,
    ) -> Result<(Arc<OwnedSegment>, RingConfig), Error> {
        let internal = |e: framebroker_proto::Error| Error::new(ErrorKind::Internal, e.to_string());
        let mut config = RingConfig {
            stream_id: id.to_string(),
            geometry,
            slot_count: slots,
            generation: 0,
            checksum: self.checksum,
            writer_pid: std::process::id(),
        };
        let size = config
            .segment_size()
            .map_err(|e| Error::new(ErrorKind::BadGeometry, e.to_string()))?;
        let mut used = self.used.locked();
        if *used + size > self.budget {
            return Err(Error::new(
                ErrorKind::NoRoom,
                budget_message(size, *used, self.budget),
            ));
        }
        let free = shm::free_bytes().map_err(internal)?;
        if size > free {
            return Err(Error::new(ErrorKind::NoRoom, format!(
                "/dev/shm has {} free, the ring needs {}: enlarge /dev/shm or use fewer slots or a smaller size",
                mib(free),
                mib(size)
            )));
        }
        // A name can be taken by a segment we must not remove (another live broker
        // with our prefix, a foreign file): move on to the next generation.
        let mut last_err = String::new();
        for _ in 0..16 {
            config.generation = self.generation.fetch_add(1, Ordering::Relaxed);
            let name =
                naming::segment_name(&self.prefix, id, config.generation).map_err(internal)?;
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
                Err(e) => return Err(internal(e)),
            }
        }
        Err(Error::new(ErrorKind::Internal, last_err))
    }

    fn release(&self, bytes: u64) {
        let mut used = self.used.locked();
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

/// Bytes of a ring of `slots` frames of `frame_bytes` (saturating on nonsense).
fn ring_bytes(frame_bytes: u64, slots: u32) -> u64 {
    layout::segment_size(frame_bytes, slots).unwrap_or(u64::MAX)
}

fn budget_message(need: u64, used: u64, budget: u64) -> String {
    format!(
        "shared-memory budget exceeded: the ring needs {}, {} of {} are in use (raise --shm-budget-mb)",
        mib(need),
        mib(used),
        mib(budget)
    )
}

/// One registered id: the stream it shows and the decode it belongs to.
struct Entry {
    handle: Arc<StreamHandle>,
    family: Arc<Family>,
}

/// One decode (one ffmpeg): its main stream, which runs the supervisor and owns
/// the outputs, and the supervisor's thread. The ids of a family are the entries
/// that point to it: the main stream's, its variants', and aliases. The decode
/// runs while any of them is registered, even after the main id was stopped.
struct Family {
    root: Arc<StreamHandle>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Whether `output` (a main stream or a variant) delivers `size` (`None`:
/// native) in `pixel_format`: a native output matches an explicit size equal to
/// the native size once that is known.
fn output_matches(
    output: &StreamHandle,
    size: Option<(u32, u32)>,
    pixel_format: framebroker_proto::PixelFormat,
) -> bool {
    output.spec.pixel_format == pixel_format
        && match (size, output.spec.size) {
            (None, None) => true,
            (Some(a), Some(b)) => a == b,
            (Some((w, h)), None) => output
                .status()
                .geometry
                .is_some_and(|g| (g.width, g.height) == (w, h)),
            (None, Some(_)) => false,
        }
}

fn describe_output(
    size: Option<(u32, u32)>,
    pixel_format: framebroker_proto::PixelFormat,
) -> String {
    match size {
        Some((w, h)) => format!("{w}x{h} {}", pixel_format.name()),
        None => format!("native size {}", pixel_format.name()),
    }
}

/// All streams of one broker.
pub struct Broker {
    cfg: BrokerConfig,
    factory: Arc<dyn SourceFactory>,
    alloc: Arc<Allocator>,
    clock: Clock,
    /// See [`crate::sync`] for the order with a stream's status lock.
    streams: RankedMutex<HashMap<String, Entry>>,
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
    let have = running.variants();
    for w in wanted {
        if !have.iter().any(|v| {
            v.id() == w.id && v.spec.size == w.size && v.spec.pixel_format == w.pixel_format
        }) {
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

/// Takes every id of the decode of `id` out of the list and returns the decode
/// (to be stopped).
fn remove_family(streams: &mut HashMap<String, Entry>, id: &str) -> Option<Arc<Family>> {
    let family = streams.get(id)?.family.clone();
    streams.retain(|_, e| !Arc::ptr_eq(&e.family, &family));
    Some(family)
}

/// A start request that passed [`Broker::validate`]: its URL classified, its
/// sizes and variants checked, its slot count decided.
struct Checked {
    req: StartRequest,
    source: Source,
    size: Option<(u32, u32)>,
    variants: Vec<OutputSpec>,
    slots: u32,
}

impl Checked {
    /// Bytes of the rings whose size is known now (the main stream's and each
    /// variant's): refused at once rather than failing later.
    fn ring_bytes(&self) -> u64 {
        std::iter::once((self.size, self.req.pixel_format))
            .chain(self.variants.iter().map(|v| (v.size, v.pixel_format)))
            .filter_map(|(size, pf)| {
                let (w, h) = size?;
                Some(ring_bytes(pf.frame_bytes(w, h).unwrap_or(0), self.slots))
            })
            .fold(0u64, u64::saturating_add)
    }
}

/// What [`Broker::admit`] gives a request.
enum Admission {
    /// The stream that runs under the id already.
    Running(StreamInfo),
    /// The request's id joins the running decode of the same URL.
    Join(Arc<Family>),
    /// A new decode.
    New,
}

/// The variants of a request, checked: at most [`MAX_VARIANTS`], valid ids used
/// once, valid sizes.
/// Variants need numbered pipes to ffmpeg beyond stdio, which a Windows child
/// does not get (decision 14): refused before anything starts.
fn variants_supported(id: &str) -> Result<(), Refusal> {
    if cfg!(windows) {
        return Err(Refusal::new(
            ErrorCode::BadRequest,
            format!(
                "stream {id:?}: variants (another size or format of a running decode) are not \
                 available on Windows yet; start a stream of its own with allow_duplicate_url"
            ),
        ));
    }
    Ok(())
}

fn checked_variants(req: &StartRequest) -> Result<Vec<OutputSpec>, Refusal> {
    if !req.variants.is_empty() {
        variants_supported(&req.id)?;
    }
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
    Ok(variants)
}

/// The answer to a request for an id that is registered: the same stream when
/// the request asks for what it is, else a refusal.
fn answer_same_id(e: &Entry, c: &Checked) -> Result<StreamInfo, Refusal> {
    let (h, req) = (&e.handle, &c.req);
    if h.spec.url != req.url {
        return Err(Refusal::new(
            ErrorCode::AlreadyExists,
            format!(
                "stream {:?} already exists with another URL ({})",
                req.id, h.spec.redacted
            ),
        ));
    }
    if Arc::ptr_eq(h, &e.family.root) {
        lacks_variants(h, &c.variants)?;
        return Ok(h.info());
    }
    // A variant or an alias: the same request again gets it.
    if c.variants.is_empty() && output_matches(h.source(), c.size, req.pixel_format) {
        return Ok(h.info());
    }
    Err(Refusal::new(
        ErrorCode::AlreadyExists,
        format!(
            "{:?} is already {} of stream {:?} ({}): stop it first to ask for another size or format",
            req.id,
            if h.alias_of.is_some() { "an alias" } else { "a variant" },
            e.family.root.id(),
            describe_output(h.source().spec.size, h.source().spec.pixel_format),
        ),
    ))
}

impl Broker {
    pub fn new(cfg: BrokerConfig, factory: Arc<dyn SourceFactory>) -> Arc<Self> {
        Self::with_clock(cfg, factory, clock::real())
    }

    /// A broker whose stall, idle and backoff time is `clock`'s (tests simulate it).
    pub fn with_clock(
        cfg: BrokerConfig,
        factory: Arc<dyn SourceFactory>,
        clock: Clock,
    ) -> Arc<Self> {
        let alloc = Arc::new(Allocator::new(&cfg.supervisor, cfg.shm_budget));
        Arc::new(Broker {
            cfg,
            factory,
            alloc,
            clock,
            streams: RankedMutex::new(Rank::Streams, HashMap::new()),
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

    fn streams(&self) -> RankedGuard<'_, HashMap<String, Entry>> {
        self.streams.locked()
    }

    fn get(&self, id: &str) -> Result<Arc<StreamHandle>, Refusal> {
        self.streams()
            .get(id)
            .map(|e| e.handle.clone())
            .ok_or_else(|| Refusal::new(ErrorCode::NotFound, format!("no stream {id:?}")))
    }

    /// Starts a stream, or returns the one running with the same id and URL, or
    /// (unless `allow_duplicate_url`) puts the id on the running decode of the
    /// same URL (see [`join_family`](Self::join_family)).
    ///
    /// Variants in the request become streams of their own (listed with `parent`
    /// set) fed by the same ffmpeg; everything about them is checked before
    /// anything starts. Three steps: [`validate`](Self::validate) the request on
    /// its own, [`admit`](Self::admit) it against the table (every refusal comes
    /// before any change), then [`spawn`](Self::spawn) the new decode.
    pub fn start(self: &Arc<Self>, req: StartRequest) -> Result<(StreamInfo, bool), Refusal> {
        let checked = self.validate(req)?;
        let mut streams = self.streams();
        match self.admit(&mut streams, &checked)? {
            Admission::Running(info) => Ok((info, false)),
            Admission::Join(family) => {
                let c = &checked;
                self.join_family(&mut streams, &family, &c.req.id, c.size, &c.req)
            }
            Admission::New => self.spawn(&mut streams, checked),
        }
    }

    /// Checks a start request on its own: ids, URL, sizes, variants, slots.
    fn validate(&self, req: StartRequest) -> Result<Checked, Refusal> {
        naming::validate_stream_id(&req.id)?;
        let source = classify_url(&req.url, &self.cfg.url_policy)?;
        let size = checked_size(&req.id, req.width, req.height, req.pixel_format)?;
        let variants = checked_variants(&req)?;
        let slots = req.ring_slots.unwrap_or(self.cfg.default_slots);
        if !(MIN_SLOTS..=MAX_SLOTS).contains(&slots) {
            return Err(framebroker_proto::Error::InvalidSlots { slots }.into());
        }
        Ok(Checked {
            req,
            source,
            size,
            variants,
            slots,
        })
    }

    /// Decides what a checked request gets from the table: a running stream, a
    /// place on a running decode, or a new decode; refuses it when an id is
    /// taken or a limit would be passed. Changes nothing unless it admits: then
    /// a failed stream under the same id, and the oldest ended streams when the
    /// room is needed, make way.
    fn admit(
        &self,
        streams: &mut HashMap<String, Entry>,
        c: &Checked,
    ) -> Result<Admission, Refusal> {
        let id = &c.req.id;
        if streams
            .get(id)
            .is_some_and(|e| e.family.root.status().state.is_final())
        {
            // A failed stream is replaced by a new attempt under the same id.
            if let Some(old) = remove_family(streams, id) {
                self.retire(&old);
            }
        }
        if let Some(e) = streams.get(id) {
            return answer_same_id(e, c).map(Admission::Running);
        }
        if let Some(v) = c.variants.iter().find(|v| streams.contains_key(&v.id)) {
            return Err(Refusal::new(
                ErrorCode::AlreadyExists,
                format!("variant id {:?} is already a stream; pick another id", v.id),
            ));
        }
        let running = if c.req.allow_duplicate_url {
            None
        } else {
            streams
                .values()
                .find(|e| {
                    e.family.root.spec.url == c.req.url && !e.family.root.status().state.is_final()
                })
                .map(|e| e.family.clone())
        };
        if let Some(family) = running {
            // The variants asked for must be there already; the request adds one id.
            lacks_variants(&family.root, &c.variants)?;
            self.check_stream_limit(streams, 1)?;
            // The joined family is running, so making room never removes it.
            self.make_room(streams, 1);
            return Ok(Admission::Join(family));
        }
        let wanted = 1 + c.variants.len();
        self.check_stream_limit(streams, wanted)?;
        self.check_budget(streams, c.ring_bytes())?;
        self.make_room(streams, wanted);
        Ok(Admission::New)
    }

    /// Refuses `wanted` more ids when the running ones would pass
    /// `--max-streams`. Failed (or stopped) streams stay listed with their last
    /// error until the room is needed; they do not count against the limit, and
    /// the oldest make way ([`make_room`](Self::make_room)), so the list stays
    /// within `--max-streams` and a client starting bad URLs cannot grow the
    /// broker without bound.
    fn check_stream_limit(
        &self,
        streams: &HashMap<String, Entry>,
        wanted: usize,
    ) -> Result<(), Refusal> {
        let ended = streams
            .values()
            .filter(|e| e.family.root.status().state.is_final())
            .count();
        let active = streams.len().saturating_sub(ended);
        if active + wanted > self.cfg.max_streams {
            return Err(Refusal::new(
                ErrorCode::LimitExceeded,
                format!(
                    "at most {} streams, variants and aliases included (raise --max-streams); \
                     {active} running, this request needs {wanted}",
                    self.cfg.max_streams
                ),
            ));
        }
        Ok(())
    }

    /// Removes the oldest ended streams until `wanted` more ids fit the list.
    fn make_room(&self, streams: &mut HashMap<String, Entry>, wanted: usize) {
        while streams.len() + wanted > self.cfg.max_streams {
            let Some(oldest) = streams
                .values()
                .filter(|e| e.family.root.status().state.is_final())
                .min_by_key(|e| e.family.root.started)
                .map(|e| e.handle.id().to_string())
            else {
                break;
            };
            if let Some(old) = remove_family(streams, &oldest) {
                self.retire(&old);
            }
            tracing::info!(stream = %oldest, "ended stream removed from the list to make room");
        }
    }

    /// Starts the decode of an admitted request: its stream, the variants of the
    /// request, and the supervisor's thread.
    fn spawn(
        &self,
        streams: &mut HashMap<String, Entry>,
        c: Checked,
    ) -> Result<(StreamInfo, bool), Refusal> {
        let Checked {
            req,
            source,
            size,
            variants,
            slots,
        } = c;
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
        let handle = Arc::new(StreamHandle::new(
            spec,
            slots,
            req.on_demand,
            self.clock.clone(),
        ));
        let thread = self.spawn_supervisor(&handle)?;
        tracing::info!(stream = %req.id, url = %handle.spec.redacted, on_demand = req.on_demand, "stream added");
        let info = handle.info();
        let family = Arc::new(Family {
            root: handle.clone(),
            thread: Mutex::new(Some(thread)),
        });
        for v in handle.variants() {
            tracing::info!(stream = v.id(), parent = %req.id, "variant added");
            streams.insert(
                v.id().to_string(),
                Entry {
                    handle: v,
                    family: family.clone(),
                },
            );
        }
        streams.insert(req.id, Entry { handle, family });
        Ok((info, true))
    }

    /// The supervisor's thread for `handle`. A panic in it is a bug, not a camera
    /// problem: the stream says so (`failed`) instead of hanging in `starting`.
    fn spawn_supervisor(
        &self,
        handle: &Arc<StreamHandle>,
    ) -> Result<std::thread::JoinHandle<()>, Refusal> {
        let (h, f, a, c) = (
            handle.clone(),
            self.factory.clone(),
            self.alloc.clone() as Arc<dyn SegmentAllocator>,
            self.cfg.supervisor.clone(),
        );
        std::thread::Builder::new()
            .name(format!("stream-{}", handle.id()))
            .spawn(move || {
                let h2 = h.clone();
                let run = std::panic::AssertUnwindSafe(move || supervisor::run(h, f, a, c));
                if std::panic::catch_unwind(run).is_err() {
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
            })
    }

    /// Refuses `need` more bytes of rings when they would not fit the budget,
    /// counting the rings of streams still starting as if they were allocated.
    fn check_budget(&self, streams: &HashMap<String, Entry>, need: u64) -> Result<(), Refusal> {
        if need == 0 {
            return Ok(());
        }
        let pending: u64 = streams
            .values()
            .filter(|e| e.handle.alias_of.is_none())
            .filter(|e| e.handle.status().segment.is_none() && !e.handle.status().state.is_final())
            .filter_map(|e| {
                let (w, h) = e.handle.spec.size?;
                Some(ring_bytes(
                    e.handle.spec.pixel_format.frame_bytes(w, h)?,
                    e.handle.slot_count,
                ))
            })
            .sum();
        let used = *self.alloc.used.locked() + pending;
        if used.saturating_add(need) > self.cfg.shm_budget {
            return Err(Refusal::new(
                ErrorCode::LimitExceeded,
                budget_message(need, used, self.cfg.shm_budget),
            ));
        }
        Ok(())
    }

    /// A new id for a camera that is already decoded: an alias of the output of
    /// the same size and format (same ring), else a variant added to the decode
    /// (ffmpeg restarts with one more output; the other rings stay). The caller
    /// checked the id and the stream limit.
    fn join_family(
        &self,
        streams: &mut HashMap<String, Entry>,
        family: &Arc<Family>,
        id: &str,
        size: Option<(u32, u32)>,
        req: &StartRequest,
    ) -> Result<(StreamInfo, bool), Refusal> {
        let root = &family.root;
        if id == root.id() {
            // The main id was stopped while other ids kept its decode, and comes
            // back: a new stream under that id (readers of the stopped one are not
            // its readers), on the main output, listed as a main stream again.
            let mut h = StreamHandle::alias(id, root.clone(), id, req.on_demand);
            h.parent = None;
            let h = Arc::new(h);
            let info = h.info();
            streams.insert(
                id.to_string(),
                Entry {
                    handle: h,
                    family: family.clone(),
                },
            );
            tracing::info!(stream = id, "main id back on its running decode");
            return Ok((info, true));
        }
        let outputs: Vec<Arc<StreamHandle>> = std::iter::once(root.clone())
            .chain(root.variants())
            .collect();
        let handle = match outputs
            .iter()
            .find(|o| output_matches(o, size, req.pixel_format))
        {
            Some(target) => {
                tracing::info!(
                    stream = id,
                    of = target.id(),
                    decode = root.id(),
                    "alias added: same camera, same output"
                );
                Arc::new(StreamHandle::alias(
                    id,
                    target.clone(),
                    root.id(),
                    req.on_demand,
                ))
            }
            None => {
                variants_supported(id)?;
                if outputs.len() > MAX_VARIANTS {
                    return Err(Refusal::new(
                        ErrorCode::LimitExceeded,
                        format!(
                            "the decode of {:?} already has {MAX_VARIANTS} variants; ask for one of \
                             their sizes and formats, or set allow_duplicate_url for a decode of its own",
                            root.id()
                        ),
                    ));
                }
                let need = size.map_or(0, |(w, h)| {
                    ring_bytes(
                        req.pixel_format.frame_bytes(w, h).unwrap_or(0),
                        root.slot_count,
                    )
                });
                self.check_budget(streams, need)?;
                let output = OutputSpec {
                    id: id.to_string(),
                    size,
                    pixel_format: req.pixel_format,
                };
                let v = Arc::new(StreamHandle::added_variant(root, output, req.on_demand));
                tracing::info!(
                    stream = id,
                    decode = root.id(),
                    "{}: variant added to the running decode",
                    describe_output(size, req.pixel_format)
                );
                root.add_variant(v.clone());
                v
            }
        };
        let info = handle.info();
        streams.insert(
            id.to_string(),
            Entry {
                handle,
                family: family.clone(),
            },
        );
        Ok((info, true))
    }

    /// Stops a decode none of whose ids is left; otherwise drops the outputs no
    /// id reads any more (the decode restarts without them).
    fn prune(&self, streams: &HashMap<String, Entry>, family: &Arc<Family>) {
        let ids: Vec<&Arc<StreamHandle>> = streams
            .values()
            .filter(|e| Arc::ptr_eq(&e.family, family))
            .map(|e| &e.handle)
            .collect();
        if ids.is_empty() {
            self.retire(family);
            return;
        }
        for v in family.root.variants() {
            let read = ids.iter().any(|h| {
                Arc::ptr_eq(h, &v) || h.alias_of.as_ref().is_some_and(|t| Arc::ptr_eq(t, &v))
            });
            if !read {
                tracing::info!(stream = v.id(), "no id reads this variant any more");
                family.root.remove_variant(&v);
            }
        }
    }

    /// Stops a decode; shutdown waits for its supervisor.
    fn retire(&self, family: &Family) {
        family.root.request_stop();
        if let Some(t) = family.thread.locked().take() {
            let mut stopping = self.stopping.locked();
            stopping.retain(|t| !t.is_finished());
            stopping.push(t);
        }
    }

    /// Stops one id: its readers see `stopped` unless another id still reads the
    /// same ring (an alias).
    ///
    /// The main stream's id takes the variants of its own start request with it;
    /// any other id (a variant, an alias) goes alone. The decode stops when no id
    /// of it is left; until then it runs on, without the outputs nobody reads.
    pub fn stop(&self, id: &str) -> Result<(), Refusal> {
        let mut streams = self.streams();
        let e = streams
            .get(id)
            .ok_or_else(|| Refusal::new(ErrorCode::NotFound, format!("no stream {id:?}")))?;
        let family = e.family.clone();
        let handle = e.handle.clone();
        let mut gone = vec![id.to_string()];
        if Arc::ptr_eq(&handle, &family.root) {
            for v in family.root.variants().iter().filter(|v| !v.standalone) {
                if streams
                    .get(v.id())
                    .is_some_and(|e| Arc::ptr_eq(&e.handle, v))
                {
                    gone.push(v.id().to_string());
                }
            }
        }
        for g in &gone {
            streams.remove(g);
        }
        self.prune(&streams, &family);
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
            let s = h.source().status();
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

    /// Runs `f` on the id whose idle time a reader of `h` counts for: `h` itself,
    /// or for a variant of the main stream's own start request, the main stream.
    fn with_idle_owner(&self, h: &Arc<StreamHandle>, f: impl FnOnce(&StreamHandle)) {
        if h.parent.is_none() || h.standalone {
            return f(h);
        }
        let root = self
            .streams()
            .values()
            .find(|e| Arc::ptr_eq(&e.handle, h))
            .map(|e| e.family.root.clone());
        if let Some(root) = root {
            f(&root)
        }
    }

    /// Gives back one reader registered by [`attach`](Self::attach).
    pub fn detach(&self, handle: &Arc<StreamHandle>) {
        let prev = handle
            .readers
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| r.checked_sub(1))
            .unwrap_or(0);
        if prev == 1 {
            // Idle once no reader of the stream or of its variants is left.
            self.with_idle_owner(handle, |o| {
                if o.total_readers() == 0 {
                    o.idle_since_ns
                        .store(self.clock.monotonic_ns(), Ordering::Relaxed);
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
        let mut families: Vec<Arc<Family>> = Vec::new();
        for (_, e) in self.streams().drain() {
            if !families.iter().any(|f| Arc::ptr_eq(f, &e.family)) {
                families.push(e.family);
            }
        }
        for f in &families {
            self.retire(f);
        }
        let stopping: Vec<_> = self.stopping.locked().drain(..).collect();
        for t in stopping {
            let _ = t.join();
        }
    }

    /// Runs the ticker on its own thread, every heartbeat interval (its period
    /// is the one bound on a heartbeat's age while the broker lives).
    pub fn spawn_ticker(self: &Arc<Self>) -> std::thread::JoinHandle<()> {
        let broker = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("ticker".into())
            .spawn(move || {
                let mut rates = Rates::new();
                while let Some(b) = broker.upgrade() {
                    b.tick(&mut rates);
                    drop(b);
                    std::thread::sleep(Duration::from_millis(layout::HEARTBEAT_INTERVAL_MS));
                }
            })
            .expect("spawn ticker")
    }

    /// Once per heartbeat interval: heartbeats, rates and the stall policy
    /// ([`StreamHandle::kill_if_stalled`]) for every output, and the idle policy
    /// ([`StreamHandle::idle`]) for every id.
    fn tick(&self, rates: &mut Rates) {
        // Every output of every decode once (a decode whose main id was stopped
        // still writes for its other ids), and every registered id.
        let (handles, ids) = {
            let streams = self.streams();
            let mut outputs: Vec<Arc<StreamHandle>> = Vec::new();
            for e in streams.values() {
                let root = &e.family.root;
                if !outputs.iter().any(|o| Arc::ptr_eq(o, root)) {
                    outputs.push(root.clone());
                    outputs.extend(root.variants());
                }
            }
            let ids: Vec<Arc<StreamHandle>> = streams.values().map(|e| e.handle.clone()).collect();
            (outputs, ids)
        };
        let now_ns = self.clock.monotonic_ns();
        let now = Duration::from_nanos(now_ns);
        let mut idle = Vec::new();
        for h in &handles {
            let ring = h.ring_status();
            if let Some(r) = &ring {
                r.heartbeat();
            }
            let live = h.status().state == StreamState::Live;
            let (_, samples) = rates
                .entry(Arc::as_ptr(h) as usize)
                .or_insert_with(|| (Arc::downgrade(h), VecDeque::new()));
            let frames = h.frames_written.load(Ordering::Relaxed);
            if let Some(fps) = measure_fps(samples, now, frames, live) {
                h.status().fps = fps;
                if let Some(r) = &ring {
                    r.set_fps(fps);
                }
            }
            h.kill_if_stalled(now_ns, &self.cfg.supervisor);
        }
        rates.retain(|k, _| handles.iter().any(|h| Arc::as_ptr(h) as usize == *k));
        for h in &ids {
            if h.idle(
                now_ns,
                self.cfg.idle_grace,
                self.cfg.supervisor.probe_timeout,
            ) {
                idle.push(h.clone());
            }
        }
        for h in idle {
            if self.current(h.id()).is_some_and(|c| Arc::ptr_eq(&c, &h)) {
                tracing::info!(
                    stream = h.id(),
                    "no readers for {:?}: stopping on-demand stream",
                    self.cfg.idle_grace
                );
                let _ = self.stop(h.id());
            }
        }
    }
}

/// Each output's rate samples, by the address of its handle. The entry holds a
/// `Weak` of the handle, which keeps that address from being given to another
/// handle (a stream stopped and started again between two ticks) while the
/// samples are there: the new one would inherit a count it never wrote.
type Rates = HashMap<usize, (Weak<StreamHandle>, VecDeque<(Duration, u64)>)>;

/// The rate over the last two seconds of being live, from `(time, frames
/// written)` samples, one added per call (a window that reached back into a
/// start-up or a reconnect would under-report). `Some(0.0)` when not live;
/// `None` until the window spans half a second. A count lower than the last
/// one starts a new window.
fn measure_fps(
    samples: &mut VecDeque<(Duration, u64)>,
    now: Duration,
    frames: u64,
    live: bool,
) -> Option<f64> {
    if !live {
        samples.clear();
        return Some(0.0);
    }
    if samples.back().is_some_and(|&(_, last)| frames < last) {
        samples.clear();
    }
    samples.push_back((now, frames));
    while samples.len() > 2 && now.saturating_sub(samples[0].0) > Duration::from_secs(2) {
        samples.pop_front();
    }
    match (samples.front(), samples.back()) {
        (Some(a), Some(b)) if b.0.saturating_sub(a.0) > Duration::from_millis(500) => {
            Some((b.1 - a.1) as f64 / b.0.saturating_sub(a.0).as_secs_f64())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    //! The supervisor's restart logic against a fake source (the real ffmpeg is
    //! exercised by the end-to-end tests in `tests/`).
    use super::*;
    use crate::clock::SimulatedClocks;
    use crate::ffmpeg::{KillHandle, RunningSource};
    use crate::testing::{Run, Script};
    use framebroker_proto::ring::monotonic_ns;
    use framebroker_proto::PixelFormat;
    use std::io::Read;
    use std::sync::atomic::AtomicU32;
    use std::time::Instant;

    /// Each run yields `frames` frames of the run's geometry, then ends (as ffmpeg
    /// does when a camera drops).
    struct Fake {
        runs: AtomicU32,
        frames: usize,
        sizes: Vec<(u32, u32)>,
        /// The variant outputs of each run (ids), in order.
        spawned: Mutex<Vec<Vec<String>>>,
    }

    struct FakeRun {
        geometry: Geometry,
        data: std::io::Cursor<Vec<u8>>,
        /// Each variant output's geometry and frames (same numbering as the main).
        variants: Vec<(Geometry, Vec<u8>)>,
    }

    /// `frames` frames of `g`, frame k filled with byte k, then half a frame.
    fn fake_frames(g: Geometry, frames: usize) -> Vec<u8> {
        let n = g.frame_bytes() as usize;
        let mut data: Vec<u8> = (0..frames).flat_map(|k| vec![k as u8; n]).collect();
        data.extend(vec![0xEE; n / 2]);
        data
    }

    impl RunningSource for FakeRun {
        fn geometry(&mut self, _: Duration, _: &dyn Fn() -> bool) -> Result<Geometry, Error> {
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
        fn last_error(&self) -> Option<Error> {
            Some(Error::new(
                ErrorKind::Unreachable,
                "Connection reset by peer",
            ))
        }
        fn decode_errors(&self) -> u64 {
            0
        }
        fn declared_fps(&self) -> Option<f64> {
            Some(25.0)
        }
        fn variant_geometries(
            &mut self,
            _: Duration,
            _: &dyn Fn() -> bool,
        ) -> Result<Vec<Geometry>, Error> {
            Ok(self.variants.iter().map(|v| v.0).collect())
        }
        fn take_variant_outputs(&mut self) -> Vec<Box<dyn Read + Send>> {
            std::mem::take(&mut self.variants)
                .into_iter()
                .map(|(_, d)| Box::new(std::io::Cursor::new(d)) as Box<dyn Read + Send>)
                .collect()
        }
    }

    impl SourceFactory for Fake {
        fn spawn(&self, spec: &SourceSpec) -> Result<Box<dyn RunningSource>, Error> {
            if spec.url.contains("denied") {
                return Err(Error::new(
                    ErrorKind::Unauthorized,
                    "method DESCRIBE failed: 401 Unauthorized",
                ));
            }
            let run = self.runs.fetch_add(1, Ordering::SeqCst) as usize;
            let (width, height) = self.sizes[run.min(self.sizes.len() - 1)];
            let geometry = Geometry {
                width,
                height,
                pixel_format: PixelFormat::Gray,
            };
            self.spawned
                .lock()
                .unwrap()
                .push(spec.variants.iter().map(|v| v.id.clone()).collect());
            let variants = spec
                .variants
                .iter()
                .map(|v| {
                    let (width, height) = v.size.unwrap_or((width, height));
                    let g = Geometry {
                        width,
                        height,
                        pixel_format: v.pixel_format,
                    };
                    (g, fake_frames(g, self.frames))
                })
                .collect();
            Ok(Box::new(FakeRun {
                geometry,
                data: std::io::Cursor::new(fake_frames(geometry, self.frames)),
                variants,
            }))
        }
    }

    fn broker(sizes: Vec<(u32, u32)>) -> (Arc<Broker>, String) {
        let (b, _, prefix) = fake_broker(sizes);
        (b, prefix)
    }

    fn fake_broker(sizes: Vec<(u32, u32)>) -> (Arc<Broker>, Arc<Fake>, String) {
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
        let fake = Arc::new(Fake {
            runs: AtomicU32::new(0),
            frames: 5,
            sizes,
            spawned: Mutex::new(Vec::new()),
        });
        (Broker::new(cfg, fake.clone()), fake, prefix)
    }

    fn ids(b: &Broker) -> Vec<String> {
        b.list().into_iter().map(|s| s.id).collect()
    }

    #[test]
    fn a_second_id_for_a_running_url_is_an_alias_on_the_same_ring() {
        let (b, prefix) = broker(vec![(16, 8)]);
        let (a, created) = b.start(StartRequest::new("a", "testsrc://x")).unwrap();
        assert!(created && a.parent.is_none());
        let (alias, created) = b.start(StartRequest::new("cam.2", "testsrc://x")).unwrap();
        assert!(created, "a stream of its own");
        assert_eq!(alias.id, "cam.2");
        assert_eq!(
            alias.parent.as_deref(),
            Some("a"),
            "parent names the decode"
        );
        // The same request again is that alias, not a new one.
        let (again, created) = b.start(StartRequest::new("cam.2", "testsrc://x")).unwrap();
        assert!(!created && again.id == "cam.2");
        assert!(wait(|| b.attach("a").is_ok() && b.attach("cam.2").is_ok()));
        let (att_a, _) = b.attach("a").unwrap();
        let (att_b, hb) = b.attach("cam.2").unwrap();
        assert_eq!(att_b.id, "cam.2");
        assert_eq!(
            (att_a.segment.as_str(), att_a.generation),
            (att_b.segment.as_str(), att_b.generation),
            "one ring"
        );
        assert_eq!(framebroker_proto::shm::list(&prefix).len(), 1);
        assert_eq!(ids(&b), ["a", "cam.2"]);
        // Readers per id.
        assert_eq!(b.stats("a").unwrap().info.readers, 2);
        assert_eq!(b.stats("cam.2").unwrap().info.readers, 2);
        b.detach(&hb);
        assert_eq!(b.stats("cam.2").unwrap().info.readers, 1);
        // Stopping the original id keeps the decode for the alias.
        b.stop("a").unwrap();
        assert_eq!(b.stats("a").unwrap_err().code, ErrorCode::NotFound);
        assert_eq!(ids(&b), ["cam.2"]);
        let before = b.stats("cam.2").unwrap().frames_written;
        assert!(
            wait(|| b.stats("cam.2").unwrap().frames_written > before + 10),
            "the alias keeps getting frames"
        );
        assert_eq!(b.attach("cam.2").unwrap().0.segment, att_a.segment);
        // The original id comes back as itself on the same decode.
        let (back, created) = b.start(StartRequest::new("a", "testsrc://x")).unwrap();
        assert!(created && back.parent.is_none());
        assert_eq!(b.attach("a").unwrap().0.segment, att_a.segment);
        // The last id gone, the decode stops and its ring is unlinked.
        b.stop("a").unwrap();
        b.stop("cam.2").unwrap();
        assert!(b.list().is_empty());
        assert!(wait(|| framebroker_proto::shm::list(&prefix).is_empty()));
        b.shutdown();
    }

    #[test]
    fn another_size_under_a_new_id_is_a_variant_added_to_the_running_decode() {
        let (b, fake, prefix) = fake_broker(vec![(16, 8)]);
        b.start(StartRequest::new("a", "testsrc://x")).unwrap();
        assert!(wait(|| b.attach("a").is_ok()));
        let (main, _) = b.attach("a").unwrap();
        let mut req = StartRequest::new("small", "testsrc://x");
        req.width = Some(8);
        req.height = Some(4);
        let (v, created) = b.start(req.clone()).unwrap();
        assert!(created);
        assert_eq!((v.id.as_str(), v.parent.as_deref()), ("small", Some("a")));
        assert!(wait(|| b.attach("small").is_ok()));
        let (small, _) = b.attach("small").unwrap();
        assert_eq!((small.width, small.height), (8, 4));
        assert!(
            fake.spawned
                .lock()
                .unwrap()
                .iter()
                .any(|run| run == &["small"]),
            "the decode restarted with the extra output"
        );
        assert_eq!(
            b.attach("a").unwrap().0.segment,
            main.segment,
            "the main ring stays across the restart"
        );
        // The same size again under a third id: an alias of the variant.
        req.id = "small2".into();
        let (s2, _) = b.start(req).unwrap();
        assert_eq!(s2.parent.as_deref(), Some("a"));
        assert_eq!(b.attach("small2").unwrap().0.segment, small.segment);
        // The variant's id goes; its alias keeps the output.
        b.stop("small").unwrap();
        assert_eq!(b.attach("small2").unwrap().0.segment, small.segment);
        // The last reader of the output gone, the decode drops it.
        let runs = fake.spawned.lock().unwrap().len();
        b.stop("small2").unwrap();
        assert!(wait(|| fake
            .spawned
            .lock()
            .unwrap()
            .iter()
            .skip(runs)
            .any(|run| run.is_empty())));
        assert!(wait(|| framebroker_proto::shm::list(&prefix).len() == 1));
        assert_eq!(ids(&b), ["a"]);
        b.shutdown();
    }

    #[test]
    fn refused_alias_requests_change_nothing() {
        let (b, _) = broker(vec![(16, 8)]);
        b.start(StartRequest::new("a", "testsrc://x")).unwrap();
        for bad in [".x", "a..b", "a/b", ""] {
            let e = b.start(StartRequest::new(bad, "testsrc://x")).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidId, "{bad:?}: {}", e.message);
        }
        let mut odd = StartRequest::new("b", "testsrc://x");
        odd.width = Some(8);
        let e = b.start(odd).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidGeometry);
        b.start(StartRequest::new("b", "testsrc://x")).unwrap();
        // An alias asked for at another size is refused, not changed.
        let mut other = StartRequest::new("b", "testsrc://x");
        other.width = Some(8);
        other.height = Some(4);
        let e = b.start(other).unwrap_err();
        assert_eq!(e.code, ErrorCode::AlreadyExists, "{}", e.message);
        assert!(
            e.message.contains("an alias of stream \"a\""),
            "{}",
            e.message
        );
        assert_eq!(ids(&b), ["a", "b"]);
        // With allow_duplicate_url the same URL gets a decode of its own.
        let mut dup = StartRequest::new("c", "testsrc://x");
        dup.allow_duplicate_url = true;
        let (c, created) = b.start(dup).unwrap();
        assert!(created && c.parent.is_none());
        assert!(wait(|| b.attach("a").is_ok() && b.attach("c").is_ok()));
        assert_ne!(
            b.attach("a").unwrap().0.segment,
            b.attach("c").unwrap().0.segment
        );
        b.shutdown();
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
    fn readers_are_counted_and_on_demand_streams_stop_when_idle() {
        // A camera that stays connected (the fake holds after its frames), and
        // a simulated clock: the grace is exact, nothing sleeps through it.
        let (b, _) = broker(vec![(16, 8)]);
        let cfg = b.cfg.clone();
        b.shutdown();
        let clock = SimulatedClocks::new();
        let script = Script::new(vec![Run::holds(3)]);
        let b = Broker::with_clock(cfg, Arc::new(script.clone()), clock.clone());
        let mut req = StartRequest::new("s", "testsrc://");
        req.on_demand = true;
        b.start(req).unwrap();
        assert!(wait(|| b.attach("s").is_ok()));
        assert!(wait(|| script.holding.load(Ordering::SeqCst) == 1));
        let h = b.current("s").unwrap();
        assert_eq!(b.stats("s").unwrap().info.readers, 1);
        b.detach(&h);
        assert_eq!(b.stats("s").unwrap().info.readers, 0);
        b.detach(&h); // never below zero
        assert_eq!(b.stats("s").unwrap().info.readers, 0);
        let mut rates = HashMap::new();
        clock.advance(b.cfg.idle_grace);
        b.tick(&mut rates);
        assert_eq!(b.list().len(), 1, "kept for the whole grace period");
        clock.advance(Duration::from_nanos(1));
        b.tick(&mut rates);
        assert!(
            b.list().is_empty(),
            "idle on-demand stream stopped after the grace period"
        );
        b.shutdown(); // waits for the stopped stream to unlink its segment
    }

    #[test]
    fn the_rate_is_measured_over_two_seconds_of_being_live() {
        let mut s = VecDeque::new();
        let ms = Duration::from_millis;
        assert_eq!(measure_fps(&mut s, ms(0), 0, true), None);
        assert_eq!(
            measure_fps(&mut s, ms(500), 15, true),
            None,
            "half a second is not a measure"
        );
        assert_eq!(measure_fps(&mut s, ms(1000), 30, true), Some(30.0));
        // The samples older than two seconds leave the window (two stay).
        assert_eq!(measure_fps(&mut s, ms(3000), 120, true), Some(45.0));
        assert_eq!(s.len(), 2);
        assert_eq!(measure_fps(&mut s, ms(3100), 120, false), Some(0.0));
        assert!(s.is_empty(), "a reconnect starts a new window");
        assert_eq!(measure_fps(&mut s, ms(4000), 500, true), None);
        assert_eq!(
            measure_fps(&mut s, ms(4600), 10, true),
            None,
            "a count that went back starts a new window"
        );
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn validate_refuses_a_bad_request_on_its_own_and_admit_changes_nothing_it_refuses() {
        use framebroker_proto::control::VariantRequest;
        let (b, prefix) = broker(vec![(16, 8)]);
        let code = |r: StartRequest| b.validate(r).err().map(|e| e.code);
        let req = |id: &str| StartRequest::new(id, "testsrc://");
        assert_eq!(code(req("a b")), Some(ErrorCode::InvalidId));
        assert_eq!(
            code(StartRequest::new("s", "ftp://h/x")),
            Some(ErrorCode::InvalidUrl)
        );
        let mut r = req("s");
        r.width = Some(320);
        assert_eq!(code(r), Some(ErrorCode::InvalidGeometry), "width alone");
        let mut r = req("s");
        r.ring_slots = Some(MIN_SLOTS - 1);
        assert_eq!(code(r), Some(ErrorCode::InvalidGeometry));
        let mut r = req("s");
        r.variants = vec![VariantRequest::new("s", None, PixelFormat::Gray)];
        assert_eq!(
            code(r),
            Some(ErrorCode::InvalidId),
            "a variant named like its stream"
        );
        let mut r = req("s");
        r.variants = (0..=MAX_VARIANTS)
            .map(|k| VariantRequest::new(format!("v{k}"), None, PixelFormat::Gray))
            .collect();
        assert_eq!(code(r), Some(ErrorCode::LimitExceeded));
        let ok = b.validate(req("s")).unwrap();
        assert_eq!((ok.slots, ok.size), (b.cfg.default_slots, None));
        // Admitted against a table that refuses it: nothing changes.
        let mut r = req("t");
        r.variants = vec![VariantRequest::new("s", None, PixelFormat::Gray)];
        let c = b.validate(r).unwrap();
        b.start(req("s")).unwrap();
        let ids = |b: &Broker| b.list().into_iter().map(|s| s.id).collect::<Vec<_>>();
        let mut streams = b.streams();
        let e = b.admit(&mut streams, &c).err().unwrap();
        drop(streams);
        assert_eq!(e.code, ErrorCode::AlreadyExists, "{}", e.message);
        assert_eq!(ids(&b), ["s"]);
        b.shutdown();
        assert!(framebroker_proto::shm::list(&prefix).is_empty());
    }
}
