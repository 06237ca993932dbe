//! The async handlers behind the routes of [`filters`](crate::filters).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use framebroker_client::{PixelFormat, StartRequest};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, watch};
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::ws::{Message, WebSocket, Ws};
use warp::{Rejection, Reply};

use crate::auth::Auth;
use crate::broker::BrokerLink;
use crate::errors::ApiError;
use crate::hub::{Feed, Framed, Hub, JpegSubscription, Kind, RawFrame, StreamHub, Subscription};
use crate::jpeg::JpegSetting;
use crate::limits::Limits;
use crate::models::{
    url_stream_id, FrameQuery, Health, OriginalHealth, StartBody, StartOptions, StartUrlBody,
    Started, StatsView, StillWatched, Stopped, StreamList, StreamView,
};

/// Boundary of the MJPEG multipart stream.
pub const MJPEG_BOUNDARY: &str = "fbframe";
/// How long `/frame` waits for a frame it may hand out before answering 204
/// (the original server's wait).
pub const PACED_WAIT: Duration = Duration::from_secs(5);
/// How often a WebSocket client is pinged (the original server's period).
const PING_EVERY: Duration = Duration::from_secs(54);

/// What every handler shares.
pub struct AppState {
    pub link: Arc<BrokerLink>,
    pub hub: Arc<Hub>,
    pub auth: Auth,
    /// Default JPEG quality.
    pub jpeg_quality: u8,
    /// How long `/frame` and `snapshot.jpg` wait for a first frame before 204/503.
    pub first_frame_wait: Duration,
    /// Caps on WebSocket clients and MJPEG responses.
    pub limits: Limits,
    /// A WebSocket or MJPEG client that accepts no data for this long is dropped.
    pub client_deadline: Duration,
    /// Turns true when the gateway shuts down: streaming answers end.
    pub shutdown: watch::Receiver<bool>,
    pub started: Instant,
}

pub type State = Arc<AppState>;

fn validate_id(id: &str) -> Result<(), ApiError> {
    framebroker_proto::naming::validate_stream_id(id)
        .map_err(|e| ApiError::bad_request(e.to_string()))
}

/// The fan-out of `id` once we know the broker has that stream: a running fan-out
/// with frames proves it; otherwise the broker is asked (404, 503).
async fn known_stream(state: &State, id: &str) -> Result<Arc<StreamHub>, ApiError> {
    validate_id(id)?;
    if let Some(h) = state.hub.get(id).filter(|h| h.is_live()) {
        return Ok(h);
    }
    let owned = id.to_string();
    state.link.call(move |c| c.stats(&owned)).await?;
    Ok(state.hub.stream(id))
}

fn json_reply<T: serde::Serialize>(value: &T, status: StatusCode) -> Response {
    warp::reply::with_status(warp::reply::json(value), status).into_response()
}

fn header_value(v: impl ToString) -> HeaderValue {
    HeaderValue::from_str(&v.to_string()).expect("numbers and names are valid header values")
}

fn no_store(res: &mut Response) {
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-cache, must-revalidate"),
    );
}

/// The one id `/api/streams/{id}` cannot name (its path is a route).
pub const RESERVED_ID: &str = "start-with-url";

/// The output size the original server's start routes give when a request
/// names none (its documented default, also the size its clients send).
pub const DEFAULT_SIZE: (u32, u32) = (640, 480);

/// The size a start route asks the broker for (`None`: the camera's own). As
/// the original: `width` or `height` absent or 0 takes 640 or 480, each on its
/// own. `native_size: true` asks for the camera's own size, and then a size
/// beside it is a contradiction, refused rather than guessed at.
fn start_size(
    width: Option<u32>,
    height: Option<u32>,
    native_size: Option<bool>,
) -> Result<Option<(u32, u32)>, ApiError> {
    let (w, h) = (width.unwrap_or(0), height.unwrap_or(0));
    if native_size == Some(true) {
        if w != 0 || h != 0 {
            return Err(ApiError::bad_request(format!(
                "native_size asks for the camera's own size, width/height for {w}x{h}: \
                 send one or the other"
            )));
        }
        return Ok(None);
    }
    let or = |v: u32, d: u32| if v == 0 { d } else { v };
    Ok(Some((or(w, DEFAULT_SIZE.0), or(h, DEFAULT_SIZE.1))))
}

/// What a start route asks the broker for.
struct Start {
    id: String,
    url: String,
    /// `None`: the camera's own size.
    size: Option<(u32, u32)>,
    pixel_format: Option<String>,
    on_demand: Option<bool>,
}

impl Start {
    fn new(id: String, url: String, o: StartOptions) -> Result<Start, ApiError> {
        Ok(Start {
            size: start_size(o.width, o.height, o.native_size)?,
            id,
            url,
            pixel_format: o.pixel_format,
            on_demand: o.on_demand,
        })
    }
}

/// Starts (or finds) a stream and answers as the original server did: 200 with
/// `message`, `stream_id`, `rtsp_url`, `width`, `height`, plus our fields.
async fn start(s: Start, state: &State) -> Result<Response, Rejection> {
    // Refused here, before the broker sees (and logs) whatever the id holds.
    validate_id(&s.id)?;
    if s.id == RESERVED_ID {
        return Err(ApiError::bad_request(format!(
            "stream id {RESERVED_ID:?} is taken by the route POST /api/streams/{RESERVED_ID}: choose another"
        ))
        .into());
    }
    let mut req = StartRequest::new(s.id.clone(), s.url.clone());
    if let Some((w, h)) = s.size {
        req.width = Some(w);
        req.height = Some(h);
    }
    if let Some(pf) = &s.pixel_format {
        req.pixel_format = PixelFormat::from_name(pf).ok_or_else(|| {
            ApiError::bad_request(format!(
                "unknown pixel_format {pf:?}: use bgr24, rgb24, gray, yuv420p or nv12"
            ))
        })?;
    }
    req.on_demand = s.on_demand.unwrap_or(false);
    let (info, created) = state.link.call(move |c| c.start(req.clone())).await?;
    tracing::info!(stream = %info.id, url = %framebroker_proto::naming::redact_url(&info.url), created, "start");
    let mut stream = StreamView::from(&info);
    // While the stream starts its size is not known yet: echo the one asked for
    // (0x0 for the camera's own, until its first frame tells).
    if stream.width == 0 && stream.height == 0 {
        (stream.width, stream.height) = s.size.unwrap_or((0, 0));
    }
    let answer = Started {
        stream,
        created,
        message: if created {
            "Stream started successfully".into()
        } else {
            "Stream already running".into()
        },
    };
    Ok(json_reply(&answer, StatusCode::OK))
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// `POST /api/streams`; absent (or 0) size: 640x480, as the original
/// documented; `native_size: true`: the camera's own.
pub async fn start_stream(body: Bytes, state: State) -> Result<Response, Rejection> {
    let b: StartBody = parse_body(&body)?;
    start(Start::new(b.stream_id, b.rtsp_url, b.options)?, &state).await
}

/// `POST /api/streams/start-with-url`: the id is the original server's hash of
/// the URL; the size as on `POST /api/streams`.
pub async fn start_with_url(body: Bytes, state: State) -> Result<Response, Rejection> {
    let b: StartUrlBody = parse_body(&body)?;
    let id = url_stream_id(&b.rtsp_url);
    start(Start::new(id, b.rtsp_url, b.options)?, &state).await
}

/// Everyone watching a stream now: the gateway's WebSocket, MJPEG and recent
/// HTTP clients, and the broker's other readers (local shared-memory clients;
/// the gateway's own attachment does not count).
fn client_count(state: &State, stats: &framebroker_client::StreamStats) -> u64 {
    match state.hub.get(&stats.info.id) {
        Some(h) => h.watchers() + u64::from(stats.info.readers.saturating_sub(h.own_readers())),
        None => u64::from(stats.info.readers),
    }
}

/// `GET /api/streams`.
pub async fn list_streams(state: State) -> Result<Response, Rejection> {
    let list = state
        .link
        .call(|c| {
            let list = c.list()?;
            Ok(list
                .into_iter()
                .map(|s| match c.stats(&s.id) {
                    Ok(st) => Ok(st),
                    Err(_) => Err(s),
                })
                .collect::<Vec<_>>())
        })
        .await?;
    let streams: Vec<StreamView> = list
        .iter()
        .map(|s| match s {
            Ok(st) => StreamView::counted(st, client_count(&state, st)),
            // Stopped between the list and its stats.
            Err(info) => StreamView::from(info),
        })
        .collect();
    Ok(json_reply(
        &StreamList {
            count: streams.len(),
            streams,
        },
        StatusCode::OK,
    ))
}

/// `GET /api/streams/{id}`.
pub async fn get_stream(id: String, state: State) -> Result<Response, Rejection> {
    validate_id(&id)?;
    let stats = state.link.call(move |c| c.stats(&id)).await?;
    Ok(json_reply(&StreamView::from(&stats.info), StatusCode::OK))
}

/// `DELETE /api/streams/{id}`: 409 with `client_count` while anyone watches
/// (the original's rule), else stops it.
pub async fn stop_stream(id: String, state: State) -> Result<Response, Rejection> {
    validate_id(&id)?;
    let owned = id.clone();
    let stats = state.link.call(move |c| c.stats(&owned)).await?;
    let n = client_count(&state, &stats);
    if n > 0 {
        return Ok(json_reply(
            &StillWatched {
                error: format!(
                    "Cannot stop stream {id}: {n} client(s) still watching; \
                     DELETE /api/streams/{id}/force stops it anyway"
                ),
                client_count: n,
            },
            StatusCode::CONFLICT,
        ));
    }
    stop(id, "Stream stopped successfully", &state).await
}

/// `DELETE /api/streams/{id}/force`: stops it whoever watches; their
/// WebSockets get a close frame, their MJPEG answers end.
pub async fn force_stop_stream(id: String, state: State) -> Result<Response, Rejection> {
    validate_id(&id)?;
    stop(id, "Stream force-stopped successfully", &state).await
}

async fn stop(id: String, message: &str, state: &State) -> Result<Response, Rejection> {
    let owned = id.clone();
    state.link.call(move |c| c.stop(&owned)).await?;
    tracing::info!(stream = %id, message, "stop");
    Ok(json_reply(
        &Stopped {
            message: message.into(),
            stream_id: id,
            stopped: true,
        },
        StatusCode::OK,
    ))
}

/// `GET /api/streams/{id}/stats`.
pub async fn stream_stats(id: String, state: State) -> Result<Response, Rejection> {
    validate_id(&id)?;
    let owned = id.clone();
    let stats = state.link.call(move |c| c.stats(&owned)).await?;
    let hub = state.hub.get(&id);
    let counters = hub.as_ref().map(|h| h.counters()).unwrap_or_default();
    // The newest frame and the ring's size: the gateway's reader knows them
    // when it runs; else a short look at the ring.
    let (wall_ns, slots) = match hub.as_ref().and_then(|h| Some((h.latest()?, h))) {
        Some((f, h)) => (Some(f.meta.wall_ns), h.slot_count.load(Relaxed)),
        None => peek(&state, &id).await,
    };
    let clients = client_count(&state, &stats);
    let buffer_size = stats.frames_written.min(u64::from(slots));
    Ok(json_reply(
        &StatsView::new(
            &stats,
            counters,
            clients,
            wall_ns.map(crate::models::rfc3339_ns),
            buffer_size,
        ),
        StatusCode::OK,
    ))
}

/// The capture time of the newest frame in `id`'s ring and its slot count,
/// from a short attachment (counted as the gateway's own while it lasts).
/// `(None, 0)` when the stream has no ring yet.
async fn peek(state: &State, id: &str) -> (Option<u64>, u32) {
    let hub = state.hub.stream(id);
    hub.peeking.fetch_add(1, Relaxed);
    let owned = id.to_string();
    let r = state
        .link
        .call(move |c| {
            let mut reader = c.attach(&owned)?;
            let slots = reader.attachment().slot_count;
            let wall = reader
                .view(
                    framebroker_proto::ReadMode::Latest,
                    Duration::ZERO,
                    |m, _| m.wall_ns,
                )
                .ok()
                .map(|(_, w)| w);
            Ok((wall, slots))
        })
        .await;
    hub.peeking.fetch_sub(1, Relaxed);
    r.unwrap_or((None, 0))
}

/// Whether a request wants JPEG: `?format=` first, then `Accept`.
fn wants_jpeg(q: &FrameQuery, accept: Option<&str>) -> Result<bool, ApiError> {
    match q.format.as_deref() {
        Some("jpeg" | "jpg") => Ok(true),
        Some("raw" | "bgr" | "bgr24" | "octet-stream") => Ok(false),
        Some(other) => Err(ApiError::bad_request(format!(
            "unknown format {other:?}: use raw or jpeg"
        ))),
        None => Ok(accept.is_some_and(|a| a.contains("image/jpeg"))),
    }
}

fn frame_headers(res: &mut Response, number: u64, wall_ns: u64, width: u32, height: u32, pf: &str) {
    let h = res.headers_mut();
    // The original server's name for the time, ns since the Unix epoch.
    h.insert("x-frame-timestamp", header_value(wall_ns));
    h.insert("x-frame-width", header_value(width));
    h.insert("x-frame-height", header_value(height));
    h.insert("x-pixel-format", header_value(pf));
    h.insert("x-frame-number", header_value(number));
    h.insert("x-capture-time-ns", header_value(wall_ns));
    no_store(res);
}

fn raw_response(f: &RawFrame) -> Response {
    let mut res = Response::new(f.data.clone().into());
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    frame_headers(
        &mut res,
        f.meta.number,
        f.meta.wall_ns,
        f.width,
        f.height,
        f.format.name(),
    );
    res.headers_mut()
        .insert("x-frame-generation", header_value(f.generation));
    res
}

fn jpeg_response(j: &crate::hub::JpegFrame) -> Response {
    let mut res = Response::new(j.jpeg.clone().into());
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("image/jpeg"));
    frame_headers(&mut res, j.number, j.wall_ns, j.width, j.height, "jpeg");
    res
}

fn no_frame_yet() -> Response {
    let mut res = StatusCode::NO_CONTENT.into_response();
    res.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    no_store(&mut res);
    res
}

/// `GET /api/streams/{id}/frame`, raw, paced like the original server: with
/// `?after=N` the newest frame if its number is above N, else the next one;
/// without it the next frame published after the request came; `?wait=0` the
/// newest at once; `?wait=MS` waits at most MS (up to 5 s). 204 when none
/// came within [`PACED_WAIT`] (or `wait`). A loop of these
/// requests thus runs at the stream's rate and never gets a frame twice.
/// JPEG (`?format=jpeg` or `Accept: image/jpeg`): the newest frame at once.
pub async fn frame(
    id: String,
    q: FrameQuery,
    accept: Option<String>,
    peer: Option<std::net::SocketAddr>,
    state: State,
) -> Result<Response, Rejection> {
    let jpeg = wants_jpeg(&q, accept.as_deref())?;
    let setting = JpegSetting::from_query(&q, state.jpeg_quality)?;
    let hub = known_stream(&state, &id).await?;
    if let Some(p) = peer {
        hub.note_poller(p);
    }
    if jpeg {
        return Ok(match hub.jpeg_now(setting, state.first_frame_wait).await? {
            Some(j) => jpeg_response(&j),
            None => no_frame_yet(),
        });
    }
    let mut sub = hub.subscribe(Kind::Http);
    let newest = hub.latest();
    let got = match q.wait {
        Some(0) => sub.wait_frame(state.first_frame_wait).await?,
        wait => {
            let wait = wait.map_or(PACED_WAIT, |ms| Duration::from_millis(ms).min(PACED_WAIT));
            match (newest, q.after) {
                (Some(f), Some(after)) if f.meta.number > after => Some(f),
                (newest, _) => {
                    let seen = newest.map_or(0, |f| f.seq);
                    sub.wait_frame_after(seen, wait).await?
                }
            }
        }
    };
    Ok(match got {
        Some(f) => raw_response(&f),
        None => no_frame_yet(),
    })
}

/// `GET /api/streams/{id}/snapshot.jpg`: a JPEG of the newest decoded frame, at once.
pub async fn snapshot(id: String, q: FrameQuery, state: State) -> Result<Response, Rejection> {
    let setting = JpegSetting::from_query(&q, state.jpeg_quality)?;
    let hub = known_stream(&state, &id).await?;
    match hub.jpeg_now(setting, state.first_frame_wait).await? {
        Some(j) => Ok(jpeg_response(&j)),
        None => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("stream {id:?} has no frame yet"),
        )
        .into()),
    }
}

/// `GET /api/streams/{id}/mjpeg`: `multipart/x-mixed-replace`, one JPEG part per
/// frame the client can take (a slow client skips frames).
pub async fn mjpeg(id: String, q: FrameQuery, state: State) -> Result<Response, Rejection> {
    let setting = JpegSetting::from_query(&q, state.jpeg_quality)?;
    validate_id(&id)?;
    // Held by the task that feeds the answer: released when the client leaves.
    let permit = state.limits.mjpeg.try_acquire()?;
    let hub = known_stream(&state, &id).await?;
    let mut sub = hub.subscribe_jpeg(Kind::Mjpeg, setting)?;
    // Parts go through a channel of a few chunks: when the client is slow,
    // `send` waits and the next part is of the newest frame.
    let (tx, mut rx) = mpsc::channel::<Bytes>(3);
    let mut shutdown = state.shutdown.clone();
    let deadline = state.client_deadline;
    // Set when the client is dropped for taking nothing: the answer then ends
    // with an error, so that the connection is closed (not kept alive).
    let slow = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let slow_tx = slow.clone();
    tokio::spawn(async move {
        let mut last = 0;
        loop {
            let feed = sub.rx.borrow_and_update().clone();
            if feed.end.is_some() {
                break;
            }
            if let Some(j) = feed.frame.filter(|j| j.seq > last) {
                last = j.seq;
                let head = format!(
                    "--{MJPEG_BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\nX-Frame-Number: {}\r\nX-Capture-Time-Ns: {}\r\n\r\n",
                    j.jpeg.len(),
                    j.number,
                    j.wall_ns
                );
                let send = async {
                    tx.send(Bytes::from(head)).await.is_ok()
                        && tx.send(j.jpeg.clone()).await.is_ok()
                        && tx.send(Bytes::from_static(b"\r\n")).await.is_ok()
                };
                // A client that takes nothing for the deadline is dropped (the
                // channel stays full while the connection does not drain).
                match tokio::time::timeout(deadline, send).await {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(_) => {
                        slow_tx.store(true, Relaxed);
                        permit.dropped_slow();
                        sub.hub().metrics.slow_dropped.fetch_add(1, Relaxed);
                        tracing::info!(stream = %sub.hub().id, "MJPEG client took no data for {deadline:?}: dropped");
                        break;
                    }
                }
                sub.hub().metrics.mjpeg_sent.fetch_add(1, Relaxed);
            }
            tokio::select! {
                r = sub.rx.changed() => if r.is_err() { break },
                _ = shutdown.changed() => break,
                _ = tx.closed() => break,
            }
        }
        drop(permit);
    });
    let body = futures_util::stream::poll_fn(move |cx| match rx.poll_recv(cx) {
        std::task::Poll::Ready(None) if slow.swap(false, Relaxed) => {
            std::task::Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client took no data for the deadline",
            ))))
        }
        p => p.map(|o| o.map(Ok)),
    });
    let mut res = warp::reply::stream(body).into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header_value(format!(
            "multipart/x-mixed-replace; boundary={MJPEG_BOUNDARY}"
        )),
    );
    res.headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    no_store(&mut res);
    Ok(res)
}

/// `WS /ws/{id}`: one binary message per frame, raw BGR24 bytes, or `FBJ1`-framed
/// JPEG with `?format=jpeg`.
pub async fn websocket(
    id: String,
    q: FrameQuery,
    ws: Ws,
    state: State,
) -> Result<Response, Rejection> {
    let jpeg = wants_jpeg(&q, None)?;
    let setting = JpegSetting::from_query(&q, state.jpeg_quality)?;
    validate_id(&id)?;
    // Taken before the upgrade (past the cap the handshake gets a 503), held by
    // the socket's task until it ends; dropped with the closure if the upgrade
    // never completes.
    let permit = state.limits.ws.try_acquire()?;
    let hub = known_stream(&state, &id).await?;
    // Subscribed before the upgrade too, so that a refused JPEG setting is a 400
    // answer to the handshake, not a socket closed at once.
    let sub = if jpeg {
        WsSub::Jpeg(hub.subscribe_jpeg(Kind::Ws, setting)?)
    } else {
        WsSub::Raw(hub.subscribe(Kind::Ws))
    };
    let shutdown = state.shutdown.clone();
    let deadline = state.client_deadline;
    Ok(ws
        .max_message_size(64 * 1024)
        .on_upgrade(move |socket| async move {
            let slow = match sub {
                WsSub::Jpeg(sub) => {
                    let rx = sub.rx.clone();
                    let slow = pump_ws(socket, rx, &hub, shutdown, deadline).await;
                    drop(sub);
                    slow
                }
                WsSub::Raw(sub) => {
                    let rx = sub.rx.clone();
                    let slow = pump_ws(socket, rx, &hub, shutdown, deadline).await;
                    drop(sub);
                    slow
                }
            };
            if slow {
                permit.dropped_slow();
                hub.metrics.slow_dropped.fetch_add(1, Relaxed);
                tracing::info!(stream = %hub.id, "WebSocket client took no data for {deadline:?}: dropped");
            }
            drop(permit);
        })
        .into_response())
}

/// What a WebSocket subscribes to.
enum WsSub {
    Raw(Subscription),
    Jpeg(JpegSubscription),
}

/// Sends each new item of `feed` to `socket` until the client leaves, the feed
/// ends (close frame with the reason) or the gateway shuts down. A send (or
/// ping) the client does not take within `deadline` drops it: then `true`.
async fn pump_ws<T: Framed>(
    socket: WebSocket,
    mut feed: watch::Receiver<Feed<T>>,
    hub: &StreamHub,
    mut shutdown: watch::Receiver<bool>,
    deadline: Duration,
) -> bool {
    let (mut tx, mut incoming) = socket.split();
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
    let mut slow = false;
    // The client's messages are read in their own task, polled only when the
    // socket is readable: polling the read half once per frame from the loop
    // below would cost a read attempt each time (and tungstenite zero-fills up
    // to 128 KiB of read buffer per attempt).
    let (gone_tx, mut gone) = tokio::sync::oneshot::channel::<()>();
    let reader = tokio::spawn(async move {
        while let Some(Ok(m)) = incoming.next().await {
            if m.is_close() {
                break;
            }
        }
        let _ = gone_tx.send(());
    });
    let mut last = 0u64;
    let close: Option<(u16, String)> = loop {
        let now = feed.borrow_and_update().clone();
        if let Some(end) = &now.end {
            break Some((end.ws_code, end.message.clone()));
        }
        if let Some(f) = now.frame.filter(|f| f.seq() > last) {
            if last != 0 {
                hub.metrics
                    .ws_skipped
                    .fetch_add(f.seq() - last - 1, Relaxed);
            }
            last = f.seq();
            let send = tx.send(Message::binary(f.ws_payload()));
            match tokio::time::timeout(deadline, send).await {
                Ok(Ok(())) => {
                    hub.metrics.ws_sent.fetch_add(1, Relaxed);
                }
                Ok(Err(_)) => break None,
                Err(_) => {
                    slow = true;
                    break None;
                }
            }
        }
        tokio::select! {
            r = feed.changed() => if r.is_err() { break None },
            _ = &mut gone => break None,
            _ = shutdown.changed() => break Some((1001, "gateway shutting down".into())),
            _ = ping.tick() => {
                match tokio::time::timeout(deadline, tx.send(Message::ping(Vec::new()))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break None,
                    Err(_) => {
                        slow = true;
                        break None;
                    }
                }
            }
        }
    };
    reader.abort();
    if slow {
        // Its socket takes nothing: a close frame would wait too. Dropping the
        // halves closes the TCP connection.
        return true;
    }
    if let Some((code, reason)) = close {
        let _ = tokio::time::timeout(
            deadline,
            tx.send(Message::close_with(code, close_reason(&reason))),
        )
        .await;
    }
    let _ = tokio::time::timeout(deadline, tx.close()).await;
    false
}

/// A close reason fits in a control frame: at most 123 bytes (125 minus the code),
/// cut at a character boundary.
fn close_reason(reason: &str) -> String {
    const MAX: usize = 123;
    if reason.len() <= MAX {
        return reason.to_string();
    }
    let mut end = MAX - 3;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &reason[..end])
}

/// `GET /metrics`.
pub async fn metrics(state: State) -> Result<Response, Rejection> {
    let broker = state
        .link
        .call(|c| {
            let list = c.list()?;
            Ok(list
                .iter()
                .filter_map(|s| c.stats(&s.id).ok())
                .collect::<Vec<_>>())
        })
        .await;
    let text = crate::metrics::render(
        broker.as_deref().ok(),
        &state.hub.all(),
        &state.limits,
        state.started,
    );
    let mut res = Response::new(text.into());
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(res)
}

/// `GET /health`: the original server's answer.
pub async fn health() -> Result<Response, Rejection> {
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Ok(json_reply(
        &OriginalHealth {
            status: "healthy".into(),
            timestamp,
        },
        StatusCode::OK,
    ))
}

/// `GET /healthz`: 200 while the gateway runs; says whether the broker answers.
pub async fn healthz(state: State) -> Result<Response, Rejection> {
    let broker = state
        .link
        .call(|c| c.list().map(|_| c.broker_version().to_string()))
        .await;
    Ok(json_reply(
        &Health {
            status: "ok".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            broker_reachable: broker.is_ok(),
            broker: broker.as_ref().ok().cloned(),
            socket: state.link.socket().display().to_string(),
            auth: state.auth.enabled(),
        },
        StatusCode::OK,
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn close_reasons_fit_a_control_frame() {
        assert_eq!(super::close_reason("stream stopped"), "stream stopped");
        let long = "é".repeat(100);
        let r = super::close_reason(&long);
        assert!(r.len() <= 123 && r.ends_with("..."), "{}", r.len());
    }

    #[test]
    fn start_sizes_follow_the_original_unless_native_is_asked() {
        use super::start_size;
        // The original's rule: each of width and height absent or 0 takes 640 or 480.
        for (w, h, want) in [
            (None, None, (640, 480)),
            (Some(0), Some(0), (640, 480)),
            (Some(320), None, (320, 480)),
            (None, Some(240), (640, 240)),
            (Some(320), Some(240), (320, 240)),
        ] {
            for native in [None, Some(false)] {
                assert_eq!(start_size(w, h, native).unwrap(), Some(want), "{w:?} {h:?}");
            }
        }
        assert_eq!(start_size(None, None, Some(true)).unwrap(), None);
        assert_eq!(start_size(Some(0), Some(0), Some(true)).unwrap(), None);
        for (w, h) in [(Some(320), None), (None, Some(240)), (Some(320), Some(240))] {
            let e = start_size(w, h, Some(true)).unwrap_err();
            assert_eq!(e.status, warp::http::StatusCode::BAD_REQUEST);
            assert!(e.message.contains("native_size"), "{}", e.message);
        }
    }
}
