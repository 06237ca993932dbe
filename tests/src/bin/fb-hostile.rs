//! A hostile control client, for the cross-process tests on every system (the
//! Windows stage under Wine connects it to the broker's named pipe): each case
//! opens its own connection, sends what a broken or malicious client would, and
//! prints one JSON line `{"case": .., "answer": ..}` with what the broker said
//! (`"closed"` when it closed the connection without a word). Exits non-zero if
//! any answer is not the clear refusal the protocol promises. With `--gone NAME`
//! it checks instead that no segment of that name can be opened any more.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use framebroker_proto::control::{self, ErrorCode, Request, Response};
use framebroker_proto::naming::windows_pipe_name;
use interprocess::local_socket::prelude::*;
use interprocess::local_socket::{GenericFilePath, Stream};
use serde_json::json;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Instead: check that these segments no longer exist (after a clean
    /// shutdown), printing one line each; exits non-zero if one still opens.
    #[arg(long)]
    gone: Vec<String>,
}

fn connect(socket: &std::path::Path) -> anyhow::Result<Stream> {
    let path = if cfg!(windows) {
        PathBuf::from(windows_pipe_name(&socket.to_string_lossy()))
    } else {
        socket.to_path_buf()
    };
    Ok(Stream::connect(
        path.as_path().to_fs_name::<GenericFilePath>()?,
    )?)
}

fn frame(req: &Request) -> Vec<u8> {
    let mut v = Vec::new();
    control::write_frame(&mut v, req).expect("encodes");
    v
}

/// The broker's answer, or `None` when it closed the connection. A broker that
/// neither answers nor closes would hang this read: the test's own timeout ends it.
fn answer(s: &mut Stream) -> Option<Response> {
    control::read_frame::<Response>(s).ok().flatten()
}

fn check_gone(names: &[String]) -> anyhow::Result<()> {
    let mut left = Vec::new();
    for name in names {
        let r = framebroker_proto::shm::ReadOnlySegment::open(name, None);
        println!(
            "{}",
            json!({"segment": name, "gone": r.is_err(), "open": r.as_ref().err().map(|e| e.to_string())})
        );
        if r.is_ok() {
            left.push(name.clone());
        }
    }
    if !left.is_empty() {
        anyhow::bail!("segments left behind: {left:?}");
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    if !a.gone.is_empty() {
        return check_gone(&a.gone);
    }
    let Some(socket) = a.socket else {
        anyhow::bail!("--socket or --gone");
    };
    let mut ok = true;
    let mut report = |case: &str, got: Option<Response>, good: bool| {
        ok &= good;
        println!(
            "{}",
            json!({"case": case, "ok": good, "answer": got.map_or("closed".into(), |r| format!("{r:?}"))})
        );
    };
    let refused = |r: &Option<Response>| {
        matches!(
            r,
            Some(Response::Error {
                code: ErrorCode::BadRequest,
                ..
            })
        )
    };

    // Bytes that are no framebroker client at all.
    let mut s = connect(&socket)?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let r = answer(&mut s);
    let good = r.is_none() || refused(&r);
    report("http_request", r, good);

    // A request before the hello.
    let mut s = connect(&socket)?;
    s.write_all(&frame(&Request::List))?;
    let r = answer(&mut s);
    let good = refused(&r);
    report("no_hello", r, good);

    // A good hello, then a length prefix far above the limit.
    let mut s = connect(&socket)?;
    s.write_all(&frame(&control::hello("fb-hostile")))?;
    let hello = answer(&mut s);
    s.write_all(&u32::MAX.to_le_bytes())?;
    let r = answer(&mut s);
    let good = matches!(hello, Some(Response::Hello { .. })) && refused(&r);
    report("oversized_frame", r, good);

    // A good hello, then a body that decodes to nothing.
    let mut s = connect(&socket)?;
    s.write_all(&frame(&control::hello("fb-hostile")))?;
    answer(&mut s);
    s.write_all(&[5, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff])?;
    let r = answer(&mut s);
    let good = refused(&r);
    report("garbage_body", r, good);

    // A client that connects, sends half a frame and goes away.
    let mut s = connect(&socket)?;
    s.write_all(&[200, 0, 0, 0, 1, 2, 3])?;
    drop(s);
    std::thread::sleep(Duration::from_millis(100));

    // The broker still serves a proper client.
    let mut s = connect(&socket)?;
    s.write_all(&frame(&control::hello("fb-hostile")))?;
    answer(&mut s);
    s.write_all(&frame(&Request::List))?;
    let r = answer(&mut s);
    let good = matches!(r, Some(Response::List { .. }));
    report("still_serving", r, good);

    if !ok {
        anyhow::bail!("the broker did not refuse every hostile input clearly");
    }
    Ok(())
}
