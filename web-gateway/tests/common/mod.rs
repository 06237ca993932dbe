//! Shared pieces of the end-to-end tests: the gateway in-process on a loopback
//! port (its own runtime and thread), a minimal HTTP client, an MJPEG part
//! reader, and a shared-memory recorder that remembers what the ring held.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use framebroker_gateway::{auth::Auth, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The 640×480 30 fps test source of the broker.
pub const TESTSRC: &str = "testsrc://?size=640x480&rate=30";

/// A gateway serving on `127.0.0.1:<free port>`; stopped on drop.
pub struct Gateway {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Gateway {
    pub fn start(socket: &Path) -> Self {
        Self::start_with(socket, |_| {})
    }

    pub fn start_with(socket: &Path, tweak: impl FnOnce(&mut Config)) -> Self {
        let mut cfg = Config::new(socket);
        cfg.idle = Duration::from_secs(2);
        tweak(&mut cfg);
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                framebroker_gateway::serve(cfg, listener, async {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap();
            });
            rt.shutdown_timeout(Duration::from_secs(1));
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("gateway started");
        Gateway {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn with_token(socket: &Path, token: &str) -> Self {
        let token = token.to_string();
        Self::start_with(socket, move |c| c.auth = Auth::new(Some(&token)))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// Lower-case names.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
    }
    pub fn header_u64(&self, name: &str) -> u64 {
        self.header(name).parse().unwrap()
    }
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .expect("error field")
            .to_string()
    }
}

fn parse_head(head: &str) -> (u16, HashMap<String, String>) {
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers)
}

async fn send_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    // HTTP/1.0: the server closes after the body and never chunks it.
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    s
}

/// One request; the whole answer.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut s = send_request(addr, method, path, headers, body).await;
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut all))
        .await
        .expect("answer within 20 s")
        .unwrap();
    let at = find(&all, b"\r\n\r\n").expect("a complete head");
    let (status, headers) = parse_head(std::str::from_utf8(&all[..at]).unwrap());
    Reply {
        status,
        headers,
        body: all[at + 4..].to_vec(),
    }
}

pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path, &[], b"").await
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads the parts of a `multipart/x-mixed-replace` answer.
pub struct Mjpeg {
    s: TcpStream,
    buf: Vec<u8>,
    pub status: u16,
    pub headers: HashMap<String, String>,
    boundary: String,
}

/// One MJPEG part.
pub struct Part {
    pub headers: HashMap<String, String>,
    pub jpeg: Vec<u8>,
}

impl Mjpeg {
    pub async fn open(addr: SocketAddr, path: &str) -> Self {
        let s = send_request(addr, "GET", path, &[], b"").await;
        let mut m = Mjpeg {
            s,
            buf: Vec::new(),
            status: 0,
            headers: HashMap::new(),
            boundary: String::new(),
        };
        let at = loop {
            if let Some(at) = find(&m.buf, b"\r\n\r\n") {
                break at;
            }
            m.fill().await;
        };
        let (status, headers) = parse_head(std::str::from_utf8(&m.buf[..at]).unwrap());
        m.buf.drain(..at + 4);
        m.status = status;
        m.boundary = headers
            .get("content-type")
            .and_then(|ct| ct.split("boundary=").nth(1))
            .map(|b| b.trim_matches('"').to_string())
            .unwrap_or_default();
        m.headers = headers;
        m
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 65536];
        let n = tokio::time::timeout(Duration::from_secs(10), self.s.read(&mut chunk))
            .await
            .expect("MJPEG data within 10 s")
            .unwrap();
        assert!(n > 0, "MJPEG stream closed");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    pub async fn next_part(&mut self) -> Part {
        let marker = format!("--{}\r\n", self.boundary);
        let start = loop {
            if let Some(i) = find(&self.buf, marker.as_bytes()) {
                break i;
            }
            self.fill().await;
        };
        self.buf.drain(..start + marker.len());
        let at = loop {
            if let Some(at) = find(&self.buf, b"\r\n\r\n") {
                break at;
            }
            self.fill().await;
        };
        let headers: HashMap<String, String> = std::str::from_utf8(&self.buf[..at])
            .unwrap()
            .split("\r\n")
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        self.buf.drain(..at + 4);
        let len: usize = headers["content-length"].parse().unwrap();
        while self.buf.len() < len {
            self.fill().await;
        }
        let jpeg = self.buf.drain(..len).collect();
        Part { headers, jpeg }
    }
}

/// A frame as a shared-memory reader saw it.
#[derive(Clone)]
pub struct Seen {
    pub crc: u32,
    pub slot_crc: u32,
    pub data: Arc<Vec<u8>>,
}

/// Reads a stream's ring in order in a thread and remembers the last frames.
pub struct Recorder {
    pub frames: Arc<Mutex<BTreeMap<u64, Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub width: u32,
    pub height: u32,
}

impl Recorder {
    pub fn start(client: framebroker_client::Client, stream: &str) -> Self {
        let mut reader = client
            .attach_wait(stream, Duration::from_secs(15))
            .expect("attach the recorder");
        let (width, height) = (reader.width(), reader.height());
        let frames = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (f, st) = (frames.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match reader.next(Duration::from_millis(200)) {
                    Ok(frame) => {
                        let seen = Seen {
                            crc: crc32fast::hash(&frame.data),
                            slot_crc: frame.meta.checksum,
                            data: Arc::new(frame.data),
                        };
                        let mut m = f.lock().unwrap();
                        m.insert(frame.meta.number, seen);
                        while m.len() > 120 {
                            m.pop_first();
                        }
                    }
                    Err(e) if e.is_timeout() => {}
                    Err(e) => panic!("recorder: {e}"),
                }
            }
        });
        Recorder {
            frames,
            stop,
            thread: Some(thread),
            width,
            height,
        }
    }

    /// The frame `number`, waiting a little for the recorder to get it.
    pub fn frame(&self, number: u64) -> Seen {
        for _ in 0..100 {
            if let Some(s) = self.frames.lock().unwrap().get(&number) {
                return s.clone();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let have: Vec<u64> = self.frames.lock().unwrap().keys().copied().collect();
        panic!("the recorder never saw frame {number}; it has {have:?}");
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Mean absolute difference of two equally sized byte images.
pub fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let sum: u64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| u64::from(x.abs_diff(*y)))
        .sum();
    sum as f64 / a.len() as f64
}

/// Decodes a JPEG to BGR: (width, height, pixels).
pub fn decode_bgr(jpeg: &[u8]) -> (usize, usize, Vec<u8>) {
    let img = turbojpeg::decompress(jpeg, turbojpeg::PixelFormat::BGR).expect("a valid JPEG");
    (img.width, img.height, img.pixels)
}

/// The real `framebroker-gateway` binary as a child process on a free loopback
/// port, its log (stderr) in a file; SIGTERM on drop.
pub struct GatewayProcess {
    child: Option<std::process::Child>,
    pub addr: SocketAddr,
    pub log: std::path::PathBuf,
}

/// `text` without ANSI escape sequences (colours of the log).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ params... final byte in @..~
            if chars.next() == Some('[') {
                for d in chars.by_ref() {
                    if ('@'..='~').contains(&d) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl GatewayProcess {
    /// Starts the binary with `--socket socket --listen 127.0.0.1:0` and `args`,
    /// logging at `log_level` into `log`, and waits for its "listening" line.
    pub fn start(socket: &Path, args: &[&str], log_level: &str, log: &Path) -> Self {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_framebroker-gateway"))
            .arg("--socket")
            .arg(socket)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", log_level)
            .env("NO_COLOR", "1")
            .env_remove("FRAMEBROKER_TOKEN")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(log).expect("gateway log file"))
            .spawn()
            .expect("the framebroker-gateway binary");
        let mut g = GatewayProcess {
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log: log.to_path_buf(),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let text = g.log_text();
            if let Some(addr) = text
                .lines()
                .find(|l| l.contains("listening"))
                .and_then(|l| l.split("addr=").nth(1))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|a| a.parse().ok())
            {
                g.addr = addr;
                return g;
            }
            if let Some(st) = g.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("the gateway exited with {st}; log:\n{text}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the gateway did not say it listens; log:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Its log so far, without colours.
    pub fn log_text(&self) -> String {
        strip_ansi(&String::from_utf8_lossy(
            &std::fs::read(&self.log).unwrap_or_default(),
        ))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// SIGTERM, then waits (SIGKILL after 10 s); the exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Resident set size of process `pid` (`VmRSS` of /proc/<pid>/status), bytes.
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .expect("a VmRSS line")
        * 1024
}
