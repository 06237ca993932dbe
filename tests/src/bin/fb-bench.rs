//! `fb-bench`: the performance benchmark of framebroker's core data path
//! (`tests/src/fb_bench.rs` says what it measures and how). Linux only: it reads
//! CPU time through `/proc` and the process CPU-time clocks.

#[cfg(unix)]
#[path = "../fb_bench.rs"]
mod fb_bench;

#[cfg(unix)]
fn main() -> std::process::ExitCode {
    fb_bench::main()
}

#[cfg(not(unix))]
fn main() -> std::process::ExitCode {
    eprintln!("fb-bench runs on Linux only: it measures CPU time through /proc");
    std::process::ExitCode::FAILURE
}
