//! The framebroker daemon as a library: the binary in `main.rs` wires these
//! together, and tests can drive them directly.
//!
//! - [`ffmpeg`]: the source seam and the real ffmpeg behind it;
//! - [`nut`]: frames and their pts from ffmpeg's NUT output;
//! - [`convert`]: the decoder's own format into the ring's, straight into the slot;
//! - [`supervisor`]: one thread per stream, restart with backoff, frames into the ring;
//! - [`registry`]: the streams, limits, attachments, and the ticker;
//! - [`declared`]: the streams of the config file, always or on demand, and reload;
//! - [`control_server`]: the control socket and its sessions.

pub mod control_server;
pub mod convert;
pub mod declared;
pub mod ffmpeg;
pub mod nut;
pub mod registry;
pub mod supervisor;
