//! What the tests of `shm.rs` and `shm_windows.rs` share: unique segment names
//! and a small ring configuration.

use crate::layout::{Geometry, PixelFormat};
use crate::ring::RingConfig;

/// A segment name no other test (or test process) uses.
pub fn unique(tag: &str) -> String {
    format!(
        "/fbtest-{tag}-{}-{}",
        std::process::id(),
        crate::ring::monotonic_ns() % 1_000_000_007
    )
}

/// A 16x8 bgr24 ring of 3 slots written by this process.
pub fn config() -> RingConfig {
    RingConfig {
        stream_id: "t".into(),
        geometry: Geometry {
            width: 16,
            height: 8,
            pixel_format: PixelFormat::Bgr24,
        },
        slot_count: 3,
        generation: 1,
        checksum: false,
        writer_pid: std::process::id(),
    }
}
