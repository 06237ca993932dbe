//! The command-line tools end quietly when the reader of their output goes
//! away (`framebroker streams stats demo | head -3`), like any Unix tool: no
//! panic, no backtrace, and the command's effect still happens. The real
//! binaries write into a pipe whose read end is already closed, so every
//! write fails with EPIPE, whatever the timing.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use framebroker_client::StartRequest;
use framebroker_tests::{broker_bin, workspace_bin, Broker};

/// A pipe's write end whose read end is closed.
fn closed_pipe() -> OwnedFd {
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    write
}

/// Runs `bin args` with standard output into a closed pipe; stderr captured
/// (or into a closed pipe as well with `close_stderr`).
fn run_into_closed_pipe(bin: &Path, args: &[&str], close_stderr: bool) -> Output {
    let stderr = if close_stderr {
        Stdio::from(closed_pipe())
    } else {
        Stdio::piped()
    };
    Command::new(bin)
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::from(closed_pipe()))
        .stderr(stderr)
        .output()
        .unwrap()
}

fn assert_quiet(what: &str, out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{what}: {:?}, stderr: {stderr}",
        out.status
    );
    assert!(
        stderr.is_empty(),
        "{what}: nothing on stderr, got: {stderr}"
    );
}

#[test]
fn broker_commands_end_quietly_when_the_reader_closes_the_pipe() {
    let broker = Broker::start(&[]).unwrap();
    let client = broker.client();
    client
        .start(StartRequest::new("demo", "testsrc://?size=64x48&rate=10"))
        .unwrap();
    client.attach_wait("demo", Duration::from_secs(15)).unwrap();
    let socket = broker.socket.to_str().unwrap();
    let bin = broker_bin();
    for args in [
        &["streams", "ls"][..],
        &["streams", "ls", "--json"],
        &["streams", "stats", "demo"],
        &["streams", "stats", "demo", "--json"],
        &["doctor"],
    ] {
        let mut all = vec!["--socket", socket];
        all.extend_from_slice(args);
        let out = run_into_closed_pipe(&bin, &all, false);
        assert_quiet(&args.join(" "), &out);
    }

    // A command that changes something does it, though its report is lost.
    let out = run_into_closed_pipe(
        &bin,
        &[
            "--socket",
            socket,
            "streams",
            "add",
            "two",
            "testsrc://?size=32x24",
        ],
        false,
    );
    assert_quiet("streams add", &out);
    assert!(client.list().unwrap().iter().any(|s| s.id == "two"));
    let out = run_into_closed_pipe(&bin, &["--socket", socket, "streams", "rm", "two"], false);
    assert_quiet("streams rm", &out);
    assert!(!client.list().unwrap().iter().any(|s| s.id == "two"));

    // Errors are still errors, reported on stderr.
    let out = run_into_closed_pipe(
        &bin,
        &["--socket", socket, "streams", "stats", "nope"],
        false,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("nope") && !stderr.contains("panicked"),
        "{stderr}"
    );
}

#[test]
fn gateway_ends_quietly_when_the_reader_closes_the_pipe() {
    let bin = workspace_bin("framebroker-gateway");
    for args in [&["--help"][..], &["--version"]] {
        let out = run_into_closed_pipe(&bin, args, false);
        assert_quiet(&args.join(" "), &out);
    }
    // Its refusal to listen beyond loopback without a token is exit status 2,
    // said on stderr; with stderr closed too, still 2 (a panic would be 101).
    let args = [
        "--listen",
        "0.0.0.0:0",
        "--socket",
        "/nonexistent/broker.sock",
    ];
    let out = run_into_closed_pipe(&bin, &args, false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:0"),
        "{stderr}"
    );
    let out = run_into_closed_pipe(&bin, &args, true);
    assert_eq!(out.status.code(), Some(2));
}
