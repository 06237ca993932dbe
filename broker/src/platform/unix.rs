//! Unix: signals through `sigwait`, ffmpeg's death with the broker through
//! `PR_SET_PDEATHSIG` (set in `ffmpeg.rs` between fork and exec).

use nix::sys::signal::{SigSet, Signal};

use super::Event;

/// SIGINT, SIGTERM and SIGHUP, blocked in every thread and taken by [`Signals::wait`].
pub struct Signals(SigSet);

impl Signals {
    /// Blocks the signals in the calling thread and so in every thread it starts
    /// afterwards (threads inherit the mask); call before starting any. ffmpeg
    /// children unblock them.
    pub fn install() -> anyhow::Result<Self> {
        let mut set = SigSet::empty();
        set.add(Signal::SIGINT);
        set.add(Signal::SIGTERM);
        set.add(Signal::SIGHUP);
        set.thread_block()
            .map_err(|e| anyhow::anyhow!("blocking signals: {e}"))?;
        Ok(Signals(set))
    }

    /// The next signal, as what to do.
    pub fn wait(&self) -> anyhow::Result<Event> {
        let sig = self
            .0
            .wait()
            .map_err(|e| anyhow::anyhow!("waiting for signals: {e}"))?;
        Ok(if sig == Signal::SIGHUP {
            Event::Reload
        } else {
            Event::Shutdown(format!("{sig:?}"))
        })
    }

    /// The shutdown is complete (Windows waits for this before the console closes).
    pub fn finished(&self) {}
}

/// Kills process `pid` at once (SIGKILL).
pub fn kill_pid(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::SIGKILL,
    );
}

/// Makes a freshly spawned ffmpeg die with the broker: done before exec on Linux
/// (`PR_SET_PDEATHSIG` in `ffmpeg.rs`), nothing to do after the spawn.
pub fn adopt_child(_child: &std::process::Child) -> Result<(), String> {
    Ok(())
}
