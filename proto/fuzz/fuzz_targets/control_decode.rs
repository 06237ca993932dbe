//! The control-protocol codec on arbitrary bytes.
//!
//! The input is used three ways: as one frame body (`decode` of a `Request` and
//! of a `Response`), and as a byte stream of frames (`read_frame` until the end or
//! the first error, for each side). Nothing may panic, and every value that
//! decodes must be canonical: `encode` gives back exactly the bytes it came
//! from, and those decode to the same value again.
//!
//! Values are compared through their bytes and `Debug` text rather than
//! `PartialEq`, because a `Response::Stats` may carry an `fps` of NaN, which is
//! a legal value the codec must carry unchanged but is never `==` to itself.

#![no_main]

use std::fmt::Debug;

use framebroker_proto::control::{self, Request, Response, MAX_FRAME};
use libfuzzer_sys::fuzz_target;
use serde::{de::DeserializeOwned, Serialize};

/// `value` was decoded from exactly `body`: check it is canonical and stable.
fn check_canonical<T: Serialize + DeserializeOwned + Debug>(value: &T, body: &[u8]) {
    let again = control::encode(value).unwrap_or_else(|e| {
        panic!("{value:?} decoded from {body:02x?} but does not re-encode: {e}")
    });
    assert_eq!(
        again, body,
        "{value:?}: the re-encoding differs from the bytes it was decoded from (codec not canonical)"
    );
    let back: T = control::decode(&again)
        .unwrap_or_else(|e| panic!("{value:?}: its own encoding does not decode: {e}"));
    assert_eq!(
        format!("{back:?}"),
        format!("{value:?}"),
        "round trip changed the value"
    );
}

fn body<T: Serialize + DeserializeOwned + Debug>(data: &[u8]) {
    if let Ok(v) = control::decode::<T>(data) {
        check_canonical(&v, data);
    }
}

fn stream<T: Serialize + DeserializeOwned + Debug>(data: &[u8]) {
    let mut rest = data;
    loop {
        let before = rest;
        match control::read_frame::<T>(&mut rest) {
            Ok(Some(v)) => {
                // read_frame consumed exactly 4 + len bytes; the body is in between.
                let used = before.len() - rest.len();
                assert!(used >= 4, "a frame shorter than its length prefix");
                let len = u32::from_le_bytes(before[..4].try_into().unwrap());
                assert!(len <= MAX_FRAME, "accepted a frame over MAX_FRAME");
                assert_eq!(
                    used,
                    4 + len as usize,
                    "read_frame consumed the wrong length"
                );
                check_canonical(&v, &before[4..used]);
                // write_frame gives back the same frame.
                let mut out = Vec::new();
                control::write_frame(&mut out, &v).expect("write_frame of a decoded value");
                assert_eq!(
                    out,
                    &before[..used],
                    "write_frame differs from the frame read"
                );
            }
            Ok(None) => {
                assert!(before.is_empty(), "end of stream reported with bytes left");
                return;
            }
            Err(_) => return,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    body::<Request>(data);
    body::<Response>(data);
    stream::<Request>(data);
    stream::<Response>(data);
});
