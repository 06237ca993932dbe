//! Tells the tests whether this machine has a VA-API render node
//! (`/dev/dri/renderD*`): `tests/hwaccel.rs` checks the hardware decode path
//! where one exists and the software fallback where none does, and marks the
//! test that cannot run here as ignored, with the reason.
//!
//! The answer is taken when this crate is built: a machine that gains its first
//! render node later needs `cargo clean -p framebroker-tests` once (`/dev/dri`
//! is watched for changes only when it exists).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(fb_render_node)");
    println!("cargo::rerun-if-changed=build.rs");
    let dri = std::path::Path::new("/dev/dri");
    if dri.is_dir() {
        println!("cargo::rerun-if-changed=/dev/dri");
    }
    let has_render_node = std::fs::read_dir(dri)
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("renderD"))
        })
        .unwrap_or(false);
    if has_render_node {
        println!("cargo::rustc-cfg=fb_render_node");
    }
}
