use std::path::PathBuf;

use framebroker_proto::control::ErrorCode;

/// Errors of the client; each names the socket, stream or request involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach the framebroker at {path}: {source} (is it running? start it with `framebroker serve`, or set FRAMEBROKER_SOCKET)")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the broker at {path} speaks {}, this client protocol {client}: upgrade the older side", protocol(.broker))]
    Version {
        path: PathBuf,
        /// The broker's protocol version, as its refusal states it (`None`: a
        /// refusal in another form).
        broker: Option<u32>,
        client: u32,
    },
    #[error("{request} refused by the broker ({code:?}): {message}")]
    Broker {
        request: String,
        code: ErrorCode,
        message: String,
    },
    #[error("{request}: unexpected answer from the broker: {answer}")]
    Unexpected { request: String, answer: String },
    #[error("connection to the broker lost during {request}: {reason}")]
    Disconnected { request: String, reason: String },
    #[error("stream {stream}: {source}")]
    Ring {
        stream: String,
        source: framebroker_proto::Error,
    },
}

impl Error {
    /// The broker's error code, when the broker refused a request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Broker { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// True when the connection to the broker is gone (it could not be made, or
    /// broke during a request): make a new one ([`Client::connect`](crate::Client::connect))
    /// to go on; the broker may have restarted.
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, Error::Connect { .. } | Error::Disconnected { .. })
    }

    /// True when no more frames will come from this attachment (stream stopped or
    /// failed, broker gone): re-attach to go on.
    pub fn is_end_of_stream(&self) -> bool {
        matches!(
            self,
            Error::Ring {
                source: framebroker_proto::Error::StreamEnded { .. }
                    | framebroker_proto::Error::WriterGone { .. },
                ..
            }
        )
    }

    /// True for a read that simply timed out.
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            Error::Ring {
                source: framebroker_proto::Error::Timeout { .. },
                ..
            }
        )
    }
}

fn protocol(version: &Option<u32>) -> String {
    version.map_or_else(|| "another protocol".into(), |v| format!("protocol {v}"))
}
