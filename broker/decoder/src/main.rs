//! `framebroker-decoder`: decodes one source with libavcodec and hands each
//! frame to the broker through a staging buffer in shared memory (the protocol
//! is in the library, `framebroker_decoder`). The broker starts and supervises
//! it as it does ffmpeg; nobody else needs to run it.
//!
//! Usage (by the broker): `framebroker-decoder [--transport tcp|udp]
//! [--timeout-us N] [--output native|WxH]... [--buffers N]` with the URL in
//! `FRAMEBROKER_DECODE_URL` and each output's staging memory file at fd 3, 4, ...;
//! `framebroker-decoder --version` names the libav it runs with.
//! Built only with `--features libav`.

use std::process::ExitCode;

#[cfg(all(feature = "libav", target_os = "linux"))]
mod decode;
#[cfg(all(feature = "libav", target_os = "linux"))]
mod pool;

fn main() -> ExitCode {
    #[cfg(all(feature = "libav", target_os = "linux"))]
    {
        decode::main()
    }
    #[cfg(not(all(feature = "libav", target_os = "linux")))]
    {
        // The staging memory is a Linux memfd; elsewhere the broker uses ffmpeg.
        eprintln!("[fatal] framebroker-decoder runs on Linux only");
        ExitCode::from(2)
    }
}
