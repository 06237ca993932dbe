//! The control connection.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use framebroker_proto::control::{
    self, Attachment, ErrorCode, Request, Response, StartRequest, StreamInfo, StreamStats,
};
use interprocess::local_socket::prelude::*;
use interprocess::local_socket::{GenericFilePath, Stream};

use crate::reader::Reader;
use crate::Error;

pub(crate) struct Conn {
    stream: Stream,
    pub(crate) path: PathBuf,
}

impl Conn {
    pub(crate) fn call(&mut self, req: &Request) -> Result<Response, Error> {
        let what = request_name(req);
        let lost = |e: framebroker_proto::Error| Error::Disconnected {
            request: what.clone(),
            reason: e.to_string(),
        };
        control::write_frame(&mut self.stream, req).map_err(lost)?;
        match control::read_frame::<Response>(&mut self.stream).map_err(lost)? {
            Some(Response::Error { code, message }) => Err(Error::Broker {
                request: what,
                code,
                message,
            }),
            Some(r) => Ok(r),
            None => Err(Error::Disconnected {
                request: what,
                reason: "the broker closed the connection".into(),
            }),
        }
    }
}

fn request_name(req: &Request) -> String {
    match req {
        Request::Hello { .. } => "hello".into(),
        Request::Start(s) => format!("start {}", s.id),
        Request::Stop { id } => format!("stop {id}"),
        Request::List => "list".into(),
        Request::Stats { id } => format!("stats {id}"),
        Request::Attach { id } => format!("attach {id}"),
        Request::Detach { id } => format!("detach {id}"),
        Request::Reload => "reload".into(),
    }
}

/// A session with the broker. Cheap to clone (clones share the session).
#[derive(Clone)]
pub struct Client {
    conn: Arc<Mutex<Conn>>,
    broker: String,
}

impl Client {
    /// Connects to the default socket (`$FRAMEBROKER_SOCKET`, else the per-user
    /// runtime directory; see [`control::default_socket_path`]).
    pub fn connect() -> Result<Self, Error> {
        Self::connect_to(control::default_socket_path())
    }

    /// Connects to the broker listening at `path` and does the version handshake.
    pub fn connect_to(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        // Windows: a pipe name, `\\.\pipe\X` or just `X` (decision 14).
        #[cfg(windows)]
        let path = PathBuf::from(framebroker_proto::naming::windows_pipe_name(
            &path.to_string_lossy(),
        ));
        let connect_err = |source| Error::Connect {
            path: path.clone(),
            source,
        };
        let name = path
            .as_path()
            .to_fs_name::<GenericFilePath>()
            .map_err(connect_err)?;
        let stream = Stream::connect(name).map_err(connect_err)?;
        let mut conn = Conn {
            stream,
            path: path.clone(),
        };
        let broker = match conn.call(&control::hello(concat!(
            "framebroker-client/",
            env!("CARGO_PKG_VERSION")
        ))) {
            Ok(Response::Hello { broker, .. }) => broker,
            Ok(other) => {
                return Err(Error::Unexpected {
                    request: "hello".into(),
                    answer: format!("{other:?}"),
                })
            }
            Err(Error::Broker {
                code: ErrorCode::UnsupportedVersion,
                message,
                ..
            }) => {
                tracing::warn!(%message, "broker refused our protocol version");
                return Err(Error::Version {
                    path,
                    broker: control::refused_by_version(&message),
                    client: control::PROTOCOL_VERSION,
                });
            }
            Err(e) => return Err(e),
        };
        tracing::debug!(path = %conn.path.display(), %broker, "connected");
        Ok(Client {
            conn: Arc::new(Mutex::new(conn)),
            broker,
        })
    }

    /// The broker's name and version, from the handshake.
    pub fn broker_version(&self) -> &str {
        &self.broker
    }

    /// Path of the socket this client is connected to.
    pub fn socket_path(&self) -> PathBuf {
        self.lock().path.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Conn> {
        // A panic while holding the lock leaves the connection usable (a frame is
        // written and read as a whole under it), so poisoning is ignored.
        framebroker_proto::lock::lock(&self.conn)
    }

    pub(crate) fn call(&self, req: Request) -> Result<Response, Error> {
        self.lock().call(&req)
    }

    /// Starts a stream: the same id and URL again return the running one (`created`
    /// false); a new id for a URL already decoded is an alias or a variant of
    /// that decode (`parent` set): one ingest per camera.
    pub fn start(&self, req: StartRequest) -> Result<(StreamInfo, bool), Error> {
        match self.call(Request::Start(req))? {
            Response::Started { stream, created } => Ok((stream, created)),
            other => Err(unexpected("start", other)),
        }
    }

    pub fn stop(&self, id: &str) -> Result<(), Error> {
        match self.call(Request::Stop { id: id.into() })? {
            Response::Stopped { .. } => Ok(()),
            other => Err(unexpected("stop", other)),
        }
    }

    /// Makes the broker re-read its config file and apply its streams (what SIGHUP
    /// does on Unix, on every system); returns what changed.
    pub fn reload(&self) -> Result<String, Error> {
        match self.call(Request::Reload)? {
            Response::Reloaded { summary } => Ok(summary),
            other => Err(unexpected("reload", other)),
        }
    }

    pub fn list(&self) -> Result<Vec<StreamInfo>, Error> {
        match self.call(Request::List)? {
            Response::List { streams } => Ok(streams),
            other => Err(unexpected("list", other)),
        }
    }

    pub fn stats(&self, id: &str) -> Result<StreamStats, Error> {
        match self.call(Request::Stats { id: id.into() })? {
            Response::Stats { stats } => Ok(stats),
            other => Err(unexpected("stats", other)),
        }
    }

    /// Registers this session as a reader of `id` and returns the segment to map.
    pub fn attach_raw(&self, id: &str) -> Result<Attachment, Error> {
        match self.call(Request::Attach { id: id.into() })? {
            Response::Attached(a) => Ok(a),
            other => Err(unexpected("attach", other)),
        }
    }

    pub fn detach(&self, id: &str) -> Result<(), Error> {
        match self.call(Request::Detach { id: id.into() })? {
            Response::Detached { .. } => Ok(()),
            other => Err(unexpected("detach", other)),
        }
    }

    /// Attaches to `id` and maps its ring read-only.
    pub fn attach(&self, id: &str) -> Result<Reader, Error> {
        let a = self.attach_raw(id)?;
        match Reader::map(self.clone(), a) {
            Ok(r) => Ok(r),
            Err(e) => {
                let _ = self.detach(id);
                Err(e)
            }
        }
    }

    /// Like [`attach`](Self::attach), retrying while the stream is still starting
    /// (its size not known yet) until `timeout`.
    pub fn attach_wait(&self, id: &str, timeout: std::time::Duration) -> Result<Reader, Error> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match self.attach(id) {
                Err(Error::Broker {
                    code: ErrorCode::NotReady,
                    ..
                }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                r => return r,
            }
        }
    }

    /// Uid owning the socket file: the broker's, trusted as owner of its segments.
    /// (Windows: `None`; the pipe and the segments are owner-only by their DACL.)
    pub(crate) fn broker_uid(&self) -> Option<u32> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(self.socket_path()).ok().map(|m| m.uid())
        }
        #[cfg(not(unix))]
        None
    }
}

fn unexpected(request: &str, answer: Response) -> Error {
    Error::Unexpected {
        request: request.into(),
        answer: format!("{answer:?}"),
    }
}
