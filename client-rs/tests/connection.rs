//! The client's connection errors, against a broker stand-in on a real Unix
//! socket that answers with the bytes the broker sends (built by the same
//! `proto::control` functions the broker uses).

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::thread::JoinHandle;

use framebroker_client::{Client, Error};
use framebroker_proto::control::{self, ErrorCode, Request, Response, PROTOCOL_VERSION};

fn socket_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("fbclient-{tag}-{}.sock", std::process::id()))
}

/// Listens at `path` and answers one connection: each request read gets the
/// next answer of `answers`; then the connection is closed.
fn broker(path: &PathBuf, answers: Vec<Response>) -> JoinHandle<Vec<Request>> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut seen = Vec::new();
        for answer in answers {
            match control::read_frame::<Request>(&mut conn).unwrap() {
                Some(req) => seen.push(req),
                None => break,
            }
            control::write_frame(&mut conn, &answer).unwrap();
        }
        seen
    })
}

fn hello() -> Response {
    Response::Hello {
        protocol: PROTOCOL_VERSION,
        broker: "framebroker (stand-in)".into(),
    }
}

#[test]
fn a_refused_protocol_names_the_brokers_real_version() {
    let path = socket_path("version");
    let newer = PROTOCOL_VERSION + 1;
    let b = broker(
        &path,
        vec![Response::Error {
            code: ErrorCode::UnsupportedVersion,
            message: control::version_refusal(newer, PROTOCOL_VERSION),
        }],
    );
    let e = Client::connect_to(&path).err().expect("refused");
    assert!(
        matches!(
            e,
            Error::Version { broker: Some(v), client, .. } if v == newer && client == PROTOCOL_VERSION
        ),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(
        text.contains(&format!(
            "speaks protocol {newer}, this client protocol {PROTOCOL_VERSION}"
        )),
        "{text}"
    );
    assert!(!e.is_connection_lost());
    assert!(matches!(b.join().unwrap()[..], [Request::Hello { .. }]));
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn a_refusal_in_another_form_does_not_invent_a_version() {
    let path = socket_path("other-refusal");
    let b = broker(
        &path,
        vec![Response::Error {
            code: ErrorCode::UnsupportedVersion,
            message: "not this one".into(),
        }],
    );
    let e = Client::connect_to(&path).err().expect("refused");
    assert!(matches!(e, Error::Version { broker: None, .. }), "{e:?}");
    assert!(e.to_string().contains("speaks another protocol"), "{e}");
    b.join().unwrap();
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn a_lost_connection_is_told_apart_from_a_refusal() {
    // No broker at all.
    let e = Client::connect_to(socket_path("nobody"))
        .err()
        .expect("no broker");
    assert!(
        matches!(e, Error::Connect { .. }) && e.is_connection_lost(),
        "{e:?}"
    );

    // A refusal of one request: the connection is fine.
    let path = socket_path("lost");
    let b = broker(
        &path,
        vec![
            hello(),
            Response::Error {
                code: ErrorCode::NotFound,
                message: "no stream \"x\"".into(),
            },
        ],
    );
    let c = Client::connect_to(&path).unwrap();
    let e = c.stats("x").unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound));
    assert!(!e.is_connection_lost(), "{e:?}");
    // The broker went away (the stand-in closed the connection after its answers).
    b.join().unwrap();
    let e = c.list().unwrap_err();
    assert!(
        matches!(e, Error::Disconnected { .. }) && e.is_connection_lost(),
        "{e:?}"
    );
    std::fs::remove_file(&path).unwrap();
}
