//! The framebroker daemon as a library: the binary in `main.rs` wires these
//! together, and tests can drive them directly.
//!
//! - [`ffmpeg`]: the source seam and the real ffmpeg behind it;
//! - `libav` (Linux): our own decoder process, frames through shared memory;
//! - [`nut`]: frames and their pts from ffmpeg's NUT output;
//! - [`convert`]: the decoder's own format into the ring's, straight into the slot;
//! - [`error`]: why a source ended, as a kind the supervisor decides on;
//! - [`clock`]: the broker's time, real or simulated in tests;
//! - [`sync`]: the locks' poison policy and lock order;
//! - [`supervisor`]: one thread per stream, restart with backoff, frames into the ring;
//! - [`registry`]: the streams, limits, attachments, and the ticker;
//! - [`declared`]: the streams of the config file, always or on demand, and reload;
//! - [`control_server`]: the control socket and its sessions;
//! - [`platform`]: shutdown/reload events, ffmpeg's death with the broker, the
//!   Windows control pipe: what differs between Unix and Windows.

pub mod clock;
pub mod control_server;
pub mod convert;
pub mod declared;
pub mod error;
pub mod ffmpeg;
#[cfg(target_os = "linux")]
pub mod libav;
pub mod nut;
pub mod platform;
pub mod registry;
pub mod supervisor;
pub mod sync;
#[cfg(test)]
mod testing;
