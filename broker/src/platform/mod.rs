//! What differs between Unix and Windows for the broker process itself: how it
//! hears "shut down" and "reload" (signals; console control events), how ffmpeg
//! dies with it (`PR_SET_PDEATHSIG`; a Job object), how a child is killed, and
//! (Windows) how the control pipe is bound. Decision 14 in `proto/doc/decisions.md`.

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub use unix::*;

#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub use windows::*;

/// What the main thread of `framebroker serve` is told to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Stop every stream and exit; the text says why (for the log).
    Shutdown(String),
    /// Re-read the config file (SIGHUP; Windows has none: `framebroker reload`).
    Reload,
}
