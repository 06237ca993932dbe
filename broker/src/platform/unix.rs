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

/// A descriptor at `MIN_HIGH_FD` or above, close-on-exec: a source for
/// [`child_setup`], which no `dup2` onto a low target number can clobber.
pub fn fd_above_targets(fd: &impl std::os::fd::AsFd) -> nix::Result<std::os::fd::OwnedFd> {
    use nix::fcntl::{fcntl, FcntlArg};
    use std::os::fd::{FromRawFd, OwnedFd};
    let high = fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(MIN_HIGH_FD))?;
    // SAFETY: F_DUPFD_CLOEXEC just returned `high` as a new descriptor that nothing
    // else owns; the OwnedFd takes sole ownership and closes it once.
    Ok(unsafe { OwnedFd::from_raw_fd(high) })
}

/// Descriptors handed to children go through numbers at or above this one;
/// their targets in the child stay below it.
pub const MIN_HIGH_FD: i32 = 64;

/// Prepares a decoder child (ffmpeg or ours): it dies with the broker
/// (`PR_SET_PDEATHSIG`), does not inherit the broker's blocked signals, and
/// gets each `(source, target)` descriptor at `target`. Every source must come
/// from [`fd_above_targets`] and every target be below [`MIN_HIGH_FD`].
#[cfg(target_os = "linux")]
pub fn child_setup(cmd: &mut std::process::Command, fds: Vec<(i32, i32)>) {
    use std::os::unix::process::CommandExt;
    debug_assert!(fds
        .iter()
        .all(|&(src, dst)| src >= MIN_HIGH_FD && dst < MIN_HIGH_FD));
    // SAFETY: runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed: prctl, sigemptyset, pthread_sigmask and
    // dup2 are, and iterating the captured Vec does not allocate. The broker blocks
    // SIGINT/SIGTERM/SIGHUP in all its threads; the child must not inherit that
    // mask, and must die with the broker. Every source is >= MIN_HIGH_FD and every
    // target below it, so dup2 never overwrites a source still needed; dup2 clears
    // close-on-exec on the target only.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            for &(src, dst) in &fds {
                if libc::dup2(src, dst) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}
