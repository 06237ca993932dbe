//! Windows: console control events instead of signals, a Job object so ffmpeg
//! dies with the broker, `TerminateProcess` to kill, and the control pipe with an
//! owner-only security descriptor. Decision 14 in `proto/doc/decisions.md`.

use std::os::windows::io::AsRawHandle;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

use interprocess::local_socket::prelude::*;
use interprocess::local_socket::{GenericFilePath, ListenerOptions};
use interprocess::os::windows::local_socket::ListenerOptionsExt;
use interprocess::os::windows::security_descriptor::SecurityDescriptor;
use windows_sys::core::BOOL;
use windows_sys::Win32::Foundation::{CloseHandle, HANDLE};
use windows_sys::Win32::System::Console::{
    SetConsoleCtrlHandler, CTRL_BREAK_EVENT, CTRL_CLOSE_EVENT, CTRL_C_EVENT, CTRL_LOGOFF_EVENT,
    CTRL_SHUTDOWN_EVENT,
};
use windows_sys::Win32::System::JobObjects::{
    AssignProcessToJobObject, CreateJobObjectW, JobObjectExtendedLimitInformation,
    SetInformationJobObject, JOBOBJECT_EXTENDED_LIMIT_INFORMATION,
    JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
};
use windows_sys::Win32::System::Threading::{OpenProcess, TerminateProcess, PROCESS_TERMINATE};

use framebroker_proto::naming::windows_pipe_name;
use framebroker_proto::win32::{last_error, owner_only_sddl, OwnedHandle};

use super::Event;

/// Where the console handler sends its events; set once by [`Signals::install`].
static EVENTS: OnceLock<Mutex<Sender<Event>>> = OnceLock::new();
/// Set when the shutdown is complete, so the handler of a closing console can
/// let Windows end the process.
static FINISHED: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());

/// Windows gives a closing console's handler 5 s before it ends the process.
const CLOSE_GRACE: Duration = Duration::from_millis(4500);

unsafe extern "system" fn on_console_event(kind: u32) -> BOOL {
    let why = match kind {
        CTRL_C_EVENT => "Ctrl-C",
        CTRL_BREAK_EVENT => "Ctrl-Break",
        CTRL_CLOSE_EVENT => "console closed",
        CTRL_LOGOFF_EVENT => "logoff",
        CTRL_SHUTDOWN_EVENT => "system shutdown",
        _ => return 0,
    };
    if let Some(tx) = EVENTS.get() {
        let _ = framebroker_proto::lock::lock(tx).send(Event::Shutdown(why.into()));
    }
    if matches!(
        kind,
        CTRL_CLOSE_EVENT | CTRL_LOGOFF_EVENT | CTRL_SHUTDOWN_EVENT
    ) {
        // The process ends when this returns: hold it until streams are stopped.
        let (m, cv) = &FINISHED;
        let g = framebroker_proto::lock::lock(m);
        let _ = cv.wait_timeout_while(g, CLOSE_GRACE, |done| !*done);
    }
    1
}

/// Ctrl-C, Ctrl-Break, console close, logoff and shutdown, as [`Event`]s.
pub struct Signals(Receiver<Event>);

impl Signals {
    pub fn install() -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::channel();
        if EVENTS.set(Mutex::new(tx)).is_err() {
            anyhow::bail!("console handler installed twice");
        }
        // SAFETY: registers a handler with the signature Windows expects; it only
        // touches statics that live for the whole process.
        if unsafe { SetConsoleCtrlHandler(Some(on_console_event), 1) } == 0 {
            anyhow::bail!("SetConsoleCtrlHandler: {}", last_error());
        }
        Ok(Signals(rx))
    }

    pub fn wait(&self) -> anyhow::Result<Event> {
        self.0
            .recv()
            .map_err(|_| anyhow::anyhow!("console handler gone"))
    }

    /// The shutdown is complete: a closing console may end the process now.
    pub fn finished(&self) {
        let (m, cv) = &FINISHED;
        *framebroker_proto::lock::lock(m) = true;
        cv.notify_all();
    }
}

/// The Job object every ffmpeg is put in. Created once with
/// `JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE` and never inheritable, so only the
/// broker holds it: when the broker ends, however it ends, Windows closes the
/// handle and kills every process in the job (what `PR_SET_PDEATHSIG` does on Linux).
fn job() -> Result<HANDLE, String> {
    static JOB: OnceLock<Result<OwnedHandle, String>> = OnceLock::new();
    JOB.get_or_init(|| {
        // SAFETY: an anonymous job with default security (not inheritable).
        let h = unsafe { CreateJobObjectW(std::ptr::null(), std::ptr::null()) };
        if h.is_null() {
            return Err(format!("CreateJobObjectW: {}", last_error()));
        }
        let job = OwnedHandle(h);
        // SAFETY: all-zero is a valid JOBOBJECT_EXTENDED_LIMIT_INFORMATION.
        let mut info: JOBOBJECT_EXTENDED_LIMIT_INFORMATION = unsafe { std::mem::zeroed() };
        info.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
        // SAFETY: `info` is ours and of the size passed, for this information class.
        let ok = unsafe {
            SetInformationJobObject(
                job.0,
                JobObjectExtendedLimitInformation,
                (&info as *const JOBOBJECT_EXTENDED_LIMIT_INFORMATION).cast(),
                std::mem::size_of::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>() as u32,
            )
        };
        if ok == 0 {
            return Err(format!("SetInformationJobObject: {}", last_error()));
        }
        Ok(job)
    })
    .as_ref()
    .map(|j| j.0)
    .map_err(Clone::clone)
}

/// Puts a freshly spawned ffmpeg into the broker's Job object, so it dies with the
/// broker. (ffmpeg starts no children of its own, so the moment between spawn and
/// assignment leaves nothing outside the job.)
pub fn adopt_child(child: &std::process::Child) -> Result<(), String> {
    let job = job()?;
    // SAFETY: `child` owns a live process handle for the call; `job` lives for the
    // whole process.
    if unsafe { AssignProcessToJobObject(job, child.as_raw_handle() as HANDLE) } == 0 {
        return Err(format!(
            "cannot put ffmpeg in the broker's job: {}",
            last_error()
        ));
    }
    Ok(())
}

/// Kills process `pid` at once (`TerminateProcess`).
pub fn kill_pid(pid: u32) {
    // SAFETY: opens a handle we close below; a dead pid gives null.
    let h = unsafe { OpenProcess(PROCESS_TERMINATE, 0, pid) };
    if !h.is_null() {
        // SAFETY: a live handle with PROCESS_TERMINATE, closed once.
        unsafe {
            TerminateProcess(h, 1);
            CloseHandle(h);
        }
    }
}

/// Binds the control pipe: the pipe name for `path` (decision 14), owner-only
/// (`D:P(A;;GA;;;<user SID>)`), local clients only, and the first instance
/// created exclusively, so a broker already there (or a process squatting the
/// name) is an error instead of a second listener.
pub fn bind_control(path: &Path, mode: u32) -> anyhow::Result<LocalSocketListener> {
    let pipe = windows_pipe_name(&path.to_string_lossy());
    if mode & 0o077 != 0 {
        tracing::warn!("group access is not offered on Windows: the control pipe stays owner-only");
    }
    let sddl = owner_only_sddl().map_err(anyhow::Error::msg)?;
    let wide = widestring::U16CString::from_str(&sddl)?;
    let sd = SecurityDescriptor::deserialize(&wide)?;
    let name = pipe.as_str().to_fs_name::<GenericFilePath>()?;
    ListenerOptions::new()
        .name(name)
        .security_descriptor(sd)
        .create_sync()
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {pipe}: {e} (another broker, or another program, holds this pipe name)"
            )
        })
}
