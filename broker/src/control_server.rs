//! The control socket: one thread per connection, one session per connection.
//! Attachments made by a session are undone when its connection closes, so the
//! reader counts always match the live sessions.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use framebroker_proto::control::{
    self, ErrorCode, Request, Response, PROTOCOL_MAGIC, PROTOCOL_VERSION,
};
use interprocess::local_socket::prelude::*;
use interprocess::local_socket::Stream;
#[cfg(unix)]
use interprocess::local_socket::{GenericFilePath, ListenerOptions};
#[cfg(unix)]
use interprocess::os::unix::local_socket::ListenerOptionsExt;

use crate::registry::{Broker, Refusal};
use crate::supervisor::StreamHandle;
use framebroker_proto::naming::redact_text;

/// Most connections served at once; more are refused with a clear error.
pub const MAX_CONNECTIONS: usize = 1024;

/// What `Request::Reload` runs: re-read the config file and apply it; `Ok` says
/// what changed, `Err` why nothing did. Set by the binary (`ControlSocket::set_reload`).
pub type ReloadHook = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// The bound control socket (a named pipe on Windows); removes its file when dropped.
pub struct ControlSocket {
    listener: LocalSocketListener,
    path: PathBuf,
    reload: OnceLock<ReloadHook>,
}

impl ControlSocket {
    /// Binds the named pipe for `path` (`\\.\pipe\X` or `X`), owner-only; a broker
    /// (or anyone) already holding the name is an error.
    #[cfg(windows)]
    pub fn bind(path: &Path, mode: u32) -> anyhow::Result<Self> {
        let pipe = framebroker_proto::naming::windows_pipe_name(&path.to_string_lossy());
        Ok(ControlSocket {
            listener: crate::platform::bind_control(Path::new(&pipe), mode)?,
            path: PathBuf::from(pipe),
            reload: OnceLock::new(),
        })
    }

    /// Binds `path` owner-only. A live broker already there is an error; a stale
    /// socket file from a dead one is replaced.
    #[cfg(unix)]
    pub fn bind(path: &Path, mode: u32) -> anyhow::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        if let Some(dir) = path.parent() {
            if !dir.exists() {
                std::fs::create_dir_all(dir)?;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
            }
        }
        if path.exists() {
            let name = path.to_fs_name::<GenericFilePath>()?;
            if Stream::connect(name).is_ok() {
                anyhow::bail!("another broker is already listening on {}", path.display());
            }
            tracing::info!(path = %path.display(), "removing stale control socket");
            std::fs::remove_file(path)?;
        }
        let name = path.to_fs_name::<GenericFilePath>()?;
        let listener = ListenerOptions::new()
            .name(name)
            .mode(mode as libc::mode_t)
            .create_sync()
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        Ok(ControlSocket {
            listener,
            path: path.to_path_buf(),
            reload: OnceLock::new(),
        })
    }

    /// What `Request::Reload` does from now on (without a hook it is refused).
    pub fn set_reload(&self, hook: ReloadHook) {
        let _ = self.reload.set(hook);
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the socket file (shutdown; the serving thread may still hold `self`).
    /// A named pipe has no file: it goes with the process.
    pub fn remove_file(&self) {
        #[cfg(unix)]
        let _ = std::fs::remove_file(&self.path);
    }

    /// Serves connections forever (run it on its own thread).
    pub fn serve(&self, broker: Arc<Broker>) {
        let live = Arc::new(AtomicUsize::new(0));
        for conn in self.listener.incoming() {
            let mut conn = match conn {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    continue;
                }
            };
            if live.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
                live.fetch_sub(1, Ordering::AcqRel);
                let _ = control::write_frame(
                    &mut conn,
                    &Response::Error {
                        code: ErrorCode::LimitExceeded,
                        message: format!("the broker serves at most {MAX_CONNECTIONS} connections"),
                    },
                );
                continue;
            }
            let (b, l) = (broker.clone(), live.clone());
            let reload = self.reload.get().cloned();
            let spawned = std::thread::Builder::new()
                .name("session".into())
                .spawn(move || {
                    let mut session = Session::new(b);
                    session.reload = reload;
                    session.run(conn);
                    l.fetch_sub(1, Ordering::AcqRel);
                });
            if let Err(e) = spawned {
                live.fetch_sub(1, Ordering::AcqRel);
                tracing::error!("cannot start session thread: {e}");
            }
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.remove_file();
    }
}

/// One client connection.
pub struct Session {
    broker: Arc<Broker>,
    /// The attachments this session holds, by stream id; each names the stream
    /// instance it counted on (a stream restarted under the same id is another).
    attached: HashMap<String, Vec<Arc<StreamHandle>>>,
    /// What `Request::Reload` runs; `None`: reload is refused.
    pub reload: Option<ReloadHook>,
}

impl Session {
    pub fn new(broker: Arc<Broker>) -> Self {
        Session {
            broker,
            attached: HashMap::new(),
            reload: None,
        }
    }

    fn run(mut self, mut conn: Stream) {
        let client = match self.handshake(&mut conn) {
            Ok(c) => c,
            Err(e) => {
                tracing::info!("control connection refused at handshake: {e}");
                return;
            }
        };
        tracing::debug!(%client, "session opened");
        loop {
            let req = match control::read_frame::<Request>(&mut conn) {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(framebroker_proto::Error::Io(e))
                    if e.kind() == io::ErrorKind::UnexpectedEof =>
                {
                    break
                }
                Err(e) => {
                    // The stream may be out of step now: answer and close.
                    tracing::warn!(%client, "bad control frame: {e}");
                    let _ = control::write_frame(
                        &mut conn,
                        &Response::Error {
                            code: ErrorCode::BadRequest,
                            message: e.to_string(),
                        },
                    );
                    break;
                }
            };
            let resp = self.handle(req);
            if control::write_frame(&mut conn, &resp).is_err() {
                break;
            }
        }
        tracing::debug!(%client, "session closed");
    }

    fn handshake(&mut self, conn: &mut Stream) -> Result<String, String> {
        let refuse = |conn: &mut Stream, code, message: String| {
            let _ = control::write_frame(
                conn,
                &Response::Error {
                    code,
                    message: message.clone(),
                },
            );
            Err(message)
        };
        match control::read_frame::<Request>(conn) {
            Ok(Some(Request::Hello {
                magic,
                protocol,
                client,
            })) => {
                if magic != PROTOCOL_MAGIC {
                    return refuse(
                        conn,
                        ErrorCode::BadRequest,
                        "not a framebroker client (bad magic)".into(),
                    );
                }
                if protocol != PROTOCOL_VERSION {
                    return refuse(
                        conn,
                        ErrorCode::UnsupportedVersion,
                        control::version_refusal(PROTOCOL_VERSION, protocol),
                    );
                }
                let hello = Response::Hello {
                    protocol: PROTOCOL_VERSION,
                    broker: concat!("framebroker ", env!("CARGO_PKG_VERSION")).into(),
                };
                control::write_frame(conn, &hello).map_err(|e| e.to_string())?;
                Ok(client
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(64)
                    .collect())
            }
            Ok(Some(_)) => refuse(
                conn,
                ErrorCode::BadRequest,
                "the first message must be Hello".into(),
            ),
            Ok(None) => Err("closed before hello".into()),
            Err(e) => refuse(conn, ErrorCode::BadRequest, format!("bad hello: {e}")),
        }
    }

    /// Answers one request (public for tests and for embedding).
    pub fn handle(&mut self, req: Request) -> Response {
        let result = match req {
            Request::Hello { .. } => Err(Refusal::new(
                ErrorCode::BadRequest,
                "hello was already done",
            )),
            Request::Start(s) => self
                .broker
                .start(s)
                .map(|(stream, created)| Response::Started { stream, created }),
            Request::Stop { id } => self.broker.stop(&id).map(|()| Response::Stopped { id }),
            Request::List => Ok(Response::List {
                streams: self.broker.list(),
            }),
            Request::Stats { id } => self
                .broker
                .stats(&id)
                .map(|stats| Response::Stats { stats }),
            Request::Attach { id } => self.broker.attach(&id).map(|(a, handle)| {
                self.attached.entry(id).or_default().push(handle);
                Response::Attached(a)
            }),
            Request::Detach { id } => {
                let current = self.broker.current(&id);
                match self.attached.get_mut(&id) {
                    Some(held) if !held.is_empty() => {
                        // Release the attachment on the current stream if this session
                        // holds one, else one on an earlier stream of that id.
                        let i = held
                            .iter()
                            .position(|h| current.as_ref().is_some_and(|c| Arc::ptr_eq(c, h)))
                            .unwrap_or(0);
                        let handle = held.swap_remove(i);
                        if held.is_empty() {
                            self.attached.remove(&id);
                        }
                        self.broker.detach(&handle);
                        Ok(Response::Detached { id })
                    }
                    _ => Err(Refusal::new(
                        ErrorCode::NotAttached,
                        format!("this session is not attached to {id:?}"),
                    )),
                }
            }
            Request::Reload => match &self.reload {
                Some(hook) => hook()
                    .map(|summary| Response::Reloaded {
                        summary: redact_text(&summary),
                    })
                    .map_err(|why| Refusal::new(ErrorCode::BadRequest, why)),
                None => Err(Refusal::new(
                    ErrorCode::BadRequest,
                    "this broker cannot reload (it was not started by `framebroker serve`)",
                )),
            },
        };
        result
            .map_err(|r| Refusal {
                message: redact_text(&r.message),
                ..r
            })
            .unwrap_or_else(|r| {
                tracing::info!(code = ?r.code, "request refused: {}", r.message);
                Response::Error {
                    code: r.code,
                    message: r.message,
                }
            })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for handle in self.attached.drain().flat_map(|(_, held)| held) {
            self.broker.detach(&handle);
        }
    }
}
