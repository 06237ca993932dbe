//! Control sessions on arbitrary request sequences.
//!
//! The input is a byte stream of frames in the wire format (u32 length + bincode
//! body), read with `control::read_frame` exactly as the control server reads a
//! connection. Each request goes to `Session::handle` of one of two sessions on
//! one in-process `Broker` whose sources are a fake (no ffmpeg): a source that
//! reports its geometry at once, writes two frames and then waits until it is
//! killed. A `Hello` (which a session refuses after its handshake) also moves the
//! following requests to the other session; a `Hello` with an empty client name
//! first replaces that session with a fresh one (a reader process that died).
//!
//! Checked after every request, and after each session is dropped at the end:
//! - nothing panics, every answer encodes, and each answer is of a kind the
//!   request allows (an error has a code the request can produce);
//! - limits hold: at most `MAX_STREAMS` streams, `MAX_READERS` readers each;
//! - every stream's reader count equals the attachments the live sessions hold
//!   on *that* stream (an attachment to a stream that was stopped and started
//!   again under the same id is not a reader of the new one);
//! - after `shutdown`, no segment with this broker's prefix is left in /dev/shm.

#![no_main]

use std::collections::{BTreeSet, HashMap};
use std::io::Read;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use framebroker::control_server::Session;
use framebroker::error::{Error, ErrorKind};
use framebroker::ffmpeg::{KillHandle, RunningSource, SourceFactory, SourceSpec};
use framebroker::registry::{Broker, BrokerConfig};
use framebroker::supervisor::SupervisorConfig;
use framebroker_proto::control::{self, ErrorCode, Request, Response};
use framebroker_proto::{shm, Geometry, StreamState};
use libfuzzer_sys::fuzz_target;

const MAX_STREAMS: usize = 4;
const MAX_READERS: u32 = 3;
const SHM_BUDGET: u64 = 16 << 20;
const SESSIONS: usize = 2;
/// Requests per input (each start spawns a thread and a segment).
const MAX_REQUESTS: usize = 64;
/// Size a source reports when the request gives none (a camera's native size).
const NATIVE: (u32, u32) = (16, 8);

/// Set by the kill handle; the source's frame reader ends when it is.
#[derive(Default)]
struct Killed {
    flag: Mutex<bool>,
    cond: Condvar,
}

struct FakeFrames {
    data: std::io::Cursor<Vec<u8>>,
    killed: Arc<Killed>,
}

impl Read for FakeFrames {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.data.read(buf)?;
        if n > 0 {
            return Ok(n);
        }
        // Out of frames: a live camera with nothing new, until killed. The bound
        // only keeps a broker bug from hanging the fuzzer forever (libFuzzer's
        // -timeout reports it first).
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut k = self.killed.flag.lock().unwrap();
        while !*k && Instant::now() < deadline {
            k = self
                .killed
                .cond
                .wait_timeout(k, Duration::from_millis(100))
                .unwrap()
                .0;
        }
        Ok(0)
    }
}

struct FakeRun {
    geometry: Geometry,
    frames: FakeFrames,
}

impl RunningSource for FakeRun {
    fn geometry(&mut self, _: Duration, stop: &dyn Fn() -> bool) -> Result<Geometry, Error> {
        // As ffmpeg's probe does: a stop requested before the kill handle was
        // installed is seen here.
        if stop() {
            return Err(Error::new(ErrorKind::Stopped, "stopped while probing"));
        }
        Ok(self.geometry)
    }
    fn frames(&mut self) -> &mut dyn Read {
        &mut self.frames
    }
    fn pid(&self) -> u32 {
        0
    }
    fn kill_handle(&self) -> KillHandle {
        let k = self.frames.killed.clone();
        Arc::new(move || {
            *k.flag.lock().unwrap() = true;
            k.cond.notify_all();
        })
    }
    fn finish(&mut self) -> String {
        "exit status: 0".into()
    }
    fn last_error(&self) -> Option<Error> {
        None
    }
    fn decode_errors(&self) -> u64 {
        0
    }
}

struct Fake;

impl SourceFactory for Fake {
    fn spawn(&self, spec: &SourceSpec) -> Result<Box<dyn RunningSource>, Error> {
        let (width, height) = spec.size.unwrap_or(NATIVE);
        let geometry = Geometry {
            width,
            height,
            pixel_format: spec.pixel_format,
        };
        let n = geometry.frame_bytes() as usize;
        Ok(Box::new(FakeRun {
            geometry,
            frames: FakeFrames {
                data: std::io::Cursor::new(vec![0x5A; 2 * n]),
                killed: Arc::default(),
            },
        }))
    }
}

/// What the sessions hold, by stream id and instance of that id.
#[derive(Default)]
struct Model {
    /// Current instance of each id: bumped when the stream under that id is
    /// removed or replaced.
    instance: HashMap<String, u64>,
    /// Per session: (id, instance) → attachments held.
    held: Vec<HashMap<(String, u64), u32>>,
}

impl Model {
    fn inst(&self, id: &str) -> u64 {
        self.instance.get(id).copied().unwrap_or(0)
    }

    fn bump(&mut self, id: &str) {
        *self.instance.entry(id.to_string()).or_default() += 1;
    }

    fn holds_any(&self, s: usize, id: &str) -> bool {
        self.held[s].iter().any(|((i, _), n)| i == id && *n > 0)
    }

    fn current_readers(&self, id: &str) -> u32 {
        let key = (id.to_string(), self.inst(id));
        self.held
            .iter()
            .map(|h| h.get(&key).copied().unwrap_or(0))
            .sum()
    }

    /// Takes one attachment of `id` from session `s`: one on the current
    /// instance if it holds one (what a correct broker decrements), else one on
    /// an older instance (which must leave the current count alone).
    fn release(&mut self, s: usize, id: &str) -> bool {
        let cur = (id.to_string(), self.inst(id));
        let key = if self.held[s].get(&cur).is_some_and(|n| *n > 0) {
            Some(cur)
        } else {
            self.held[s]
                .iter()
                .find(|((i, _), n)| i == id && **n > 0)
                .map(|(k, _)| k.clone())
        };
        match key {
            Some(k) => {
                let n = self.held[s].get_mut(&k).unwrap();
                *n -= 1;
                if *n == 0 {
                    self.held[s].remove(&k);
                }
                true
            }
            None => false,
        }
    }

    /// Checks the broker's reader counts and limits against the model.
    fn check(&self, broker: &Broker, after: &dyn std::fmt::Display) {
        let streams = broker.list();
        assert!(
            streams.len() <= MAX_STREAMS,
            "{} streams listed with --max-streams {MAX_STREAMS} (after {after}): {:?}",
            streams.len(),
            streams.iter().map(|s| (&s.id, s.state, &s.parent)).collect::<Vec<_>>()
        );
        for info in &streams {
            let expected = self.current_readers(&info.id);
            assert!(
                info.readers <= MAX_READERS,
                "stream {:?} has {} readers with a limit of {MAX_READERS} (after {after})",
                info.id,
                info.readers
            );
            assert_eq!(
                info.readers, expected,
                "stream {:?}: the broker counts {} readers, the live sessions hold {} \
                 attachments on it (after {after})",
                info.id, info.readers, expected
            );
        }
    }
}

fn ids(broker: &Broker) -> BTreeSet<String> {
    broker.list().into_iter().map(|s| s.id).collect()
}

/// Waits (bounded) until a new stream has left `starting`, so an attach that
/// follows in the input sees a deterministic state.
fn settle(broker: &Broker, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        match broker.stats(id) {
            Ok(s) if s.info.state == StreamState::Starting => {
                std::thread::sleep(Duration::from_micros(200))
            }
            _ => return,
        }
    }
}

/// Checks that `resp` is an answer `req` may get.
fn check_kind(req: &Request, resp: &Response, streams_before: usize) {
    let bad = || panic!("{req:?} answered with {resp:?}");
    if let Response::Error { code, message } = resp {
        assert!(
            !message.is_empty(),
            "{req:?}: error {code:?} without a message"
        );
        let allowed: &[ErrorCode] = match req {
            Request::Hello { .. } => &[ErrorCode::BadRequest],
            Request::Start(_) => &[
                ErrorCode::InvalidId,
                ErrorCode::InvalidUrl,
                ErrorCode::InvalidGeometry,
                ErrorCode::AlreadyExists,
                ErrorCode::LimitExceeded,
            ],
            Request::Stop { .. } | Request::Stats { .. } => &[ErrorCode::NotFound],
            Request::List => &[],
            Request::Attach { .. } => &[
                ErrorCode::NotFound,
                ErrorCode::NotReady,
                ErrorCode::LimitExceeded,
            ],
            Request::Detach { .. } => &[ErrorCode::NotAttached],
            // A bare Session has no reload hook (only `framebroker serve` sets one).
            Request::Reload => &[ErrorCode::BadRequest],
        };
        assert!(
            allowed.contains(code),
            "{req:?} refused with {code:?} ({message})"
        );
        if let (Request::Start(start), ErrorCode::LimitExceeded) = (req, code) {
            // A start takes one id for the stream and one per variant; the
            // listed streams include ended ones, which never count against
            // the limit, so this is the weakest bound a refusal must meet.
            let wanted = 1 + start.variants.len();
            assert!(
                streams_before + wanted > MAX_STREAMS || message.contains("budget"),
                "start needing {wanted} refused as over a limit with {streams_before} streams: {message}"
            );
        }
        return;
    }
    match (req, resp) {
        (Request::Start(_), Response::Started { .. })
        | (Request::Stop { .. }, Response::Stopped { .. })
        | (Request::List, Response::List { .. })
        | (Request::Stats { .. }, Response::Stats { .. })
        | (Request::Attach { .. }, Response::Attached(_))
        | (Request::Detach { .. }, Response::Detached { .. }) => {}
        _ => bad(),
    }
}

static RUN: AtomicU32 = AtomicU32::new(0);

fn run(data: &[u8]) {
    let prefix = format!(
        "fbfz{}-{}-",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    );
    let cfg = BrokerConfig {
        supervisor: SupervisorConfig {
            shm_prefix: prefix.clone(),
            backoff_initial: Duration::from_millis(1),
            backoff_max: Duration::from_millis(5),
            ..SupervisorConfig::default()
        },
        max_streams: MAX_STREAMS,
        max_readers_per_stream: MAX_READERS,
        shm_budget: SHM_BUDGET,
        ..BrokerConfig::default()
    };
    let broker = Broker::new(cfg, Arc::new(Fake));
    let mut sessions: Vec<Option<Session>> = (0..SESSIONS)
        .map(|_| Some(Session::new(broker.clone())))
        .collect();
    let mut model = Model {
        held: vec![HashMap::new(); SESSIONS],
        ..Model::default()
    };
    let mut cur = 0;
    let mut rest = data;
    for _ in 0..MAX_REQUESTS {
        let Ok(Some(req)) = control::read_frame::<Request>(&mut rest) else {
            break;
        };
        if let Request::Hello { client, .. } = &req {
            cur = (cur + 1) % SESSIONS;
            if client.is_empty() {
                sessions[cur] = None;
                model.held[cur].clear();
                model.check(&broker, &format_args!("dropping session {cur}"));
                sessions[cur] = Some(Session::new(broker.clone()));
            }
        }
        let before = ids(&broker);
        let resp = sessions[cur].as_mut().unwrap().handle(req.clone());
        control::encode(&resp).unwrap_or_else(|e| panic!("answer to {req:?} does not encode: {e}"));
        check_kind(&req, &resp, before.len());
        let after = ids(&broker);
        for gone in before.difference(&after) {
            model.bump(gone);
        }
        match (&req, &resp) {
            (Request::Start(r), Response::Started { stream, created }) => {
                if *created {
                    assert_eq!(stream.id, r.id, "a new stream under another id");
                    if before.contains(&r.id) {
                        // A failed stream replaced by a new attempt.
                        model.bump(&r.id);
                    }
                    settle(&broker, &r.id);
                }
            }
            (Request::Attach { id }, Response::Attached(a)) => {
                assert_eq!(&a.id, id, "attached to another stream");
                let key = (id.clone(), model.inst(id));
                *model.held[cur].entry(key).or_default() += 1;
            }
            (
                Request::Attach { id },
                Response::Error {
                    code: ErrorCode::LimitExceeded,
                    ..
                },
            ) => {
                assert_eq!(
                    model.current_readers(id),
                    MAX_READERS,
                    "attach to {id:?} refused as over the limit below the limit"
                );
            }
            (Request::Detach { id }, Response::Detached { id: d }) => {
                assert_eq!(d, id);
                assert!(
                    model.release(cur, id),
                    "session {cur} detached from {id:?} without holding an attachment"
                );
            }
            (Request::Detach { id }, Response::Error { .. }) => {
                assert!(
                    !model.holds_any(cur, id),
                    "session {cur} holds an attachment of {id:?} but detach was refused"
                );
            }
            _ => {}
        }
        model.check(
            &broker,
            &format_args!("{req:?} → {resp:?} in session {cur}"),
        );
    }
    // Sessions end (their connections close): attachments go with them.
    for (s, session) in sessions.iter_mut().enumerate() {
        *session = None;
        model.held[s].clear();
        model.check(&broker, &format_args!("session {s} closed"));
    }
    broker.shutdown();
    // Stopped streams are joined by reaper threads: give them a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = shm::list(&prefix);
        if left.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            for s in &left {
                let _ = shm::unlink(s);
            }
            panic!("segments left in /dev/shm after shutdown: {left:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fuzz_target!(|data: &[u8]| run(data));
