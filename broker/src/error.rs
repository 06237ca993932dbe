//! Why a source ended or a stream cannot go on: an [`ErrorKind`] the supervisor
//! decides on, beside the message the stream reports (credentials redacted).
//!
//! The kind is decided once, where the text comes from (ffmpeg's log in
//! [`crate::ffmpeg`], the broker's own stall and stop decisions); nothing
//! downstream looks into the message to decide what to do.

use std::fmt;

use framebroker_proto::naming::redact_text;

/// What went wrong, as far as deciding what to do next is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The camera refused the credentials (401, 403).
    Unauthorized,
    /// No such stream, path, file or protocol (404, ENOENT).
    NotFound,
    /// The input is not a video ffmpeg can read.
    InvalidData,
    /// The camera cannot be reached or dropped the connection (refused, timed
    /// out, no route, reset).
    Unreachable,
    /// The input ended (end of file, the camera closed the session).
    Ended,
    /// The broker killed a source that delivered no frame for too long.
    Stalled,
    /// The broker stopped the stream.
    Stopped,
    /// ffmpeg said nothing about the stream's size within the probe timeout.
    NoStreamInfo,
    /// The hardware decoder (device or driver) cannot be used.
    HardwareDecoder,
    /// The decoder reported damaged input (concealed or dropped frames).
    Damaged,
    /// ffmpeg ended without a reason this broker recognises.
    Exited,
    /// The stream's geometry cannot make a ring.
    BadGeometry,
    /// No room for the ring (budget, `/dev/shm`).
    NoRoom,
    /// The broker could not do its own part (spawn, pipe, thread).
    Internal,
}

impl ErrorKind {
    /// Retrying cannot help: the camera answered, and said no.
    pub fn is_permanent(self) -> bool {
        matches!(
            self,
            ErrorKind::Unauthorized | ErrorKind::NotFound | ErrorKind::InvalidData
        )
    }

    /// The camera's (or the network's, or the broker's stop) doing, not the
    /// decoder's: a hardware decoder that saw this is not to blame for it.
    pub fn is_the_cameras(self) -> bool {
        self.is_permanent()
            || matches!(
                self,
                ErrorKind::Unreachable | ErrorKind::Ended | ErrorKind::Stalled | ErrorKind::Stopped
            )
    }
}

/// An [`ErrorKind`] and the message for the stream's `last_error`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    /// The message is redacted here, once: an `Error` never holds a credential.
    pub fn new(kind: ErrorKind, message: impl AsRef<str>) -> Self {
        Error {
            kind,
            message: redact_text(message.as_ref()),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// The same error with `context` in front of its message.
    pub fn context(self, context: impl fmt::Display) -> Self {
        Error {
            kind: self.kind,
            message: format!("{context}: {}", self.message),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// Texts of ffmpeg's log that name a cause, most specific first.
const CAUSES: &[(&str, ErrorKind)] = &[
    ("401 unauthorized", ErrorKind::Unauthorized),
    ("403 forbidden", ErrorKind::Unauthorized),
    ("404 not found", ErrorKind::NotFound),
    ("no such file", ErrorKind::NotFound),
    ("protocol not found", ErrorKind::NotFound),
    ("invalid data found", ErrorKind::InvalidData),
    ("connection refused", ErrorKind::Unreachable),
    ("timed out", ErrorKind::Unreachable),
    ("network is unreachable", ErrorKind::Unreachable),
    ("no route to host", ErrorKind::Unreachable),
    ("connection reset", ErrorKind::Unreachable),
    ("end of file", ErrorKind::Ended),
];

/// Lines ffmpeg prints when a `-hwaccel` device or decoder cannot be set up.
const HWACCEL_FAILURES: &[&str] = &[
    "device creation failed",
    "device setup failed",
    "no device available for decoder",
    "failed setup for format",
    "hwaccel initialisation returned error",
    "failed to initialise vaapi",
    "cannot load libcuda",
    "cannot load nvcuvid",
    "failed to create",
    "unsupported hwaccel",
    "unrecognized hwaccel",
    // v4l2m2m without a /dev/video* decoder; an ffmpeg built without the decoder.
    "could not find a valid device",
    "can't configure decoder",
    "unknown decoder",
];

/// Lines of the decoder about damaged input (the codec's own per-macroblock
/// lines come with them and are not counted).
const DAMAGE: &[&str] = &["corrupt decoded frame", "error while decoding stream"];

/// The kind an ffmpeg log line names, if it names one. A line that names none
/// (most lines) says nothing about what to do.
pub fn classify_line(line: &str) -> Option<ErrorKind> {
    let l = line.to_ascii_lowercase();
    if let Some((_, kind)) = CAUSES.iter().find(|(p, _)| l.contains(p)) {
        return Some(*kind);
    }
    if HWACCEL_FAILURES.iter().any(|p| l.contains(p)) {
        return Some(ErrorKind::HardwareDecoder);
    }
    if is_damage(&l) || l.contains("error while decoding") || l.contains("concealing") {
        return Some(ErrorKind::Damaged);
    }
    None
}

/// Whether a line reports one damaged frame (one such line per frame).
pub fn is_damage(line: &str) -> bool {
    let l = line.to_ascii_lowercase();
    DAMAGE.iter().any(|p| l.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn board_decoder_failures_are_hardware_decoder_failures() {
        // Debian's ffmpeg 5.1 asked for h264_v4l2m2m without a V4L2 decoder device,
        // and for h264_rkmpp, which it was built without.
        for line in [
            "[h264_v4l2m2m @ 0x55bda78bd0c0] [error] Could not find a valid device",
            "[h264_v4l2m2m @ 0x55bda78bd0c0] [error] can't configure decoder",
            "[fatal] Unknown decoder 'h264_rkmpp'",
        ] {
            assert_eq!(
                classify_line(line),
                Some(ErrorKind::HardwareDecoder),
                "{line}"
            );
        }
        assert_eq!(
            classify_line("[error] Connection refused"),
            Some(ErrorKind::Unreachable)
        );
    }

    #[test]
    fn lines_name_their_kind() {
        let k = classify_line;
        assert_eq!(
            k("[rtsp @ 0x1] method DESCRIBE failed: 401 Unauthorized"),
            Some(ErrorKind::Unauthorized)
        );
        assert_eq!(
            k("rtsp://***@h/x: 404 Not Found"),
            Some(ErrorKind::NotFound)
        );
        assert_eq!(k("Connection refused"), Some(ErrorKind::Unreachable));
        assert_eq!(k("Connection timed out"), Some(ErrorKind::Unreachable));
        assert_eq!(
            k("[error] Device creation failed: -542398533."),
            Some(ErrorKind::HardwareDecoder)
        );
        assert_eq!(
            k("[h264 @ 0x1] No device available for decoder: device type vaapi needed"),
            Some(ErrorKind::HardwareDecoder)
        );
        assert_eq!(
            k("Error while decoding stream #0:0: Invalid data found when processing input"),
            Some(ErrorKind::InvalidData),
            "the cause beats the symptom"
        );
        assert_eq!(k("[fatal] Error marking filters as finished"), None);
    }

    #[test]
    fn permanent_kinds_are_the_cameras_answer() {
        assert!(ErrorKind::Unauthorized.is_permanent());
        assert!(ErrorKind::NotFound.is_permanent());
        assert!(!ErrorKind::Unreachable.is_permanent());
        assert!(!ErrorKind::Stalled.is_permanent());
        assert!(ErrorKind::Stalled.is_the_cameras());
        assert!(!ErrorKind::HardwareDecoder.is_the_cameras());
        assert!(!ErrorKind::Exited.is_the_cameras());
        assert!(!ErrorKind::NoStreamInfo.is_the_cameras());
    }

    #[test]
    fn messages_never_hold_credentials() {
        let e = Error::new(
            ErrorKind::Unauthorized,
            "rtsp://user:wrong@127.0.0.1:8554/cam: Server returned 401 Unauthorized",
        );
        assert_eq!(
            e.to_string(),
            "rtsp://***@127.0.0.1:8554/cam: Server returned 401 Unauthorized"
        );
        assert_eq!(e.kind(), ErrorKind::Unauthorized);
        assert_eq!(
            e.context("variant v").message(),
            "variant v: rtsp://***@127.0.0.1:8554/cam: Server returned 401 Unauthorized"
        );
    }
}
