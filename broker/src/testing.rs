//! A scripted fake source for the supervisor's and the registry's tests: runs
//! that deliver some frames and then end, or hold (a camera that stays connected
//! and silent) until killed. The real ffmpeg is exercised by `tests/`.

use std::collections::VecDeque;
use std::io::Read;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use framebroker_proto::control::{HwAccel, Transport};
use framebroker_proto::naming::{classify_url, UrlPolicy};
use framebroker_proto::{Geometry, PixelFormat};

use crate::error::{Error, ErrorKind};
use crate::ffmpeg::{KillHandle, RunningSource, SourceFactory, SourceSpec};
use crate::sync::Lock;

/// A spec for `id` reading a camera URL, gray frames of the source's size.
pub(crate) fn spec(id: &str, hwaccel: HwAccel) -> SourceSpec {
    let url = format!("rtsp://127.0.0.1:8554/{id}");
    SourceSpec {
        id: id.into(),
        source: classify_url(&url, &UrlPolicy::default()).unwrap(),
        redacted: url.clone(),
        url,
        size: None,
        pixel_format: PixelFormat::Gray,
        transport: Transport::Tcp,
        io_timeout: Duration::from_secs(5),
        hwaccel,
        variants: Vec::new(),
    }
}

/// An error of the camera's.
pub(crate) fn unreachable(msg: &str) -> Option<Error> {
    Some(Error::new(ErrorKind::Unreachable, msg))
}

/// One run of the fake source: `frames` frames of `size` (frame k filled
/// with byte k, then half a frame), then the end, or (`hold`) a wait for
/// the kill, as a camera that stays connected.
#[derive(Clone)]
pub(crate) struct Run {
    pub size: (u32, u32),
    pub frames: usize,
    pub hold: bool,
    pub error: Option<Error>,
    pub hwaccel_error: Option<Error>,
}

impl Run {
    pub fn ends(frames: usize, error: Option<Error>) -> Run {
        Run {
            size: (16, 8),
            frames,
            hold: false,
            error,
            hwaccel_error: None,
        }
    }
    pub fn holds(frames: usize) -> Run {
        Run {
            hold: true,
            ..Run::ends(frames, None)
        }
    }
}

#[derive(Default)]
struct Killed {
    flag: Mutex<bool>,
    cv: Condvar,
}

/// Plays `runs` in order, the last one again and again; spawning fails with
/// `refuse` when set.
#[derive(Default)]
pub(crate) struct Script {
    runs: Mutex<VecDeque<Run>>,
    refuse: Option<Error>,
    /// The decoder each spawn asked for.
    spawned: Mutex<Vec<HwAccel>>,
    /// Runs that are waiting for their kill.
    pub holding: AtomicU32,
}

impl Script {
    pub fn new(runs: Vec<Run>) -> Arc<Script> {
        Arc::new(Script {
            runs: Mutex::new(runs.into()),
            ..Script::default()
        })
    }
    /// A source whose every spawn fails with `e`.
    pub fn refusing(e: Error) -> Arc<Script> {
        Arc::new(Script {
            refuse: Some(e),
            ..Script::default()
        })
    }

    pub fn spawned(&self) -> Vec<HwAccel> {
        self.spawned.locked().clone()
    }
}

struct FakeRun {
    script: Arc<Script>,
    run: Run,
    data: std::io::Cursor<Vec<u8>>,
    killed: Arc<Killed>,
}

impl Read for FakeRun {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.data.read(buf)?;
        if n == 0 && self.run.hold {
            self.script.holding.fetch_add(1, Ordering::SeqCst);
            let mut k = self.killed.flag.locked();
            while !*k {
                k = self.killed.cv.wait(k).unwrap();
            }
            self.script.holding.fetch_sub(1, Ordering::SeqCst);
        }
        Ok(n)
    }
}

impl RunningSource for FakeRun {
    fn geometry(&mut self, _: Duration, _: &dyn Fn() -> bool) -> Result<Geometry, Error> {
        Ok(geometry(self.run.size))
    }
    fn frames(&mut self) -> &mut dyn Read {
        self
    }
    fn pid(&self) -> u32 {
        1
    }
    fn kill_handle(&self) -> KillHandle {
        let k = self.killed.clone();
        Arc::new(move || {
            *k.flag.locked() = true;
            k.cv.notify_all();
        })
    }
    fn finish(&mut self) -> String {
        "exit status: 0".into()
    }
    fn last_error(&self) -> Option<Error> {
        self.run.error.clone()
    }
    fn decode_errors(&self) -> u64 {
        0
    }
    fn hwaccel_error(&self) -> Option<Error> {
        self.run.hwaccel_error.clone()
    }
    /// A camera at 25 fps.
    fn declared_fps(&self) -> Option<f64> {
        Some(25.0)
    }
}

impl SourceFactory for Arc<Script> {
    fn spawn(&self, spec: &SourceSpec) -> Result<Box<dyn RunningSource>, Error> {
        self.spawned.locked().push(spec.hwaccel);
        if let Some(e) = &self.refuse {
            return Err(e.clone());
        }
        let run = {
            let mut runs = self.runs.locked();
            if runs.len() > 1 {
                runs.pop_front().unwrap()
            } else {
                runs[0].clone()
            }
        };
        let n = geometry(run.size).frame_bytes() as usize;
        let mut data: Vec<u8> = (0..run.frames).flat_map(|k| vec![k as u8; n]).collect();
        data.extend(vec![0xEE; n / 2]);
        Ok(Box::new(FakeRun {
            script: self.clone(),
            run,
            data: std::io::Cursor::new(data),
            killed: Arc::default(),
        }))
    }
}

pub(crate) fn geometry((width, height): (u32, u32)) -> Geometry {
    Geometry {
        width,
        height,
        pixel_format: PixelFormat::Gray,
    }
}
