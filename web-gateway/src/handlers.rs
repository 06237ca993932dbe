//! The async handlers behind the routes of [`filters`](crate::filters).

use std::convert::Infallible;
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
    FrameQuery, Health, StartBody, Started, StatsView, Stopped, StreamList, StreamView,
};

/// Boundary of the MJPEG multipart stream.
pub const MJPEG_BOUNDARY: &str = "fbframe";
/// A WebSocket send that takes longer than this drops the client.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

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

/// `POST /api/streams`.
pub async fn start_stream(body: Bytes, state: State) -> Result<Response, Rejection> {
    let body: StartBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    // Refused here, before the broker sees (and logs) whatever the id holds.
    validate_id(&body.stream_id)?;
    let mut req = StartRequest::new(body.stream_id.clone(), body.rtsp_url.clone());
    // 0 (or absent) width and height: the camera's own size.
    let (w, h) = (body.width.unwrap_or(0), body.height.unwrap_or(0));
    if w != 0 || h != 0 {
        req.width = Some(w);
        req.height = Some(h);
    }
    if let Some(pf) = &body.pixel_format {
        req.pixel_format = PixelFormat::from_name(pf).ok_or_else(|| {
            ApiError::bad_request(format!(
                "unknown pixel_format {pf:?}: use bgr24, rgb24, gray, yuv420p or nv12"
            ))
        })?;
    }
    req.on_demand = body.on_demand.unwrap_or(false);
    let (info, created) = state.link.call(move |c| c.start(req.clone())).await?;
    tracing::info!(stream = %info.id, url = %framebroker_proto::naming::redact_url(&info.url), created, "start");
    let answer = Started {
        stream: StreamView::from(&info),
        created,
        message: if created {
            "stream started".into()
        } else {
            "stream already running".into()
        },
    };
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json_reply(&answer, status))
}

/// `GET /api/streams`.
pub async fn list_streams(state: State) -> Result<Response, Rejection> {
    let list = state.link.call(|c| c.list()).await?;
    let streams: Vec<StreamView> = list.iter().map(StreamView::from).collect();
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

/// `DELETE /api/streams/{id}`.
pub async fn stop_stream(id: String, state: State) -> Result<Response, Rejection> {
    validate_id(&id)?;
    let owned = id.clone();
    state.link.call(move |c| c.stop(&owned)).await?;
    tracing::info!(stream = %id, "stop");
    Ok(json_reply(
        &Stopped {
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
    let counters = state.hub.get(&id).map(|h| h.counters()).unwrap_or_default();
    Ok(json_reply(
        &StatsView::new(&stats, counters),
        StatusCode::OK,
    ))
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

/// `GET /api/streams/{id}/frame`: the newest frame, raw or JPEG; 204 when the
/// stream has none yet.
pub async fn frame(
    id: String,
    q: FrameQuery,
    accept: Option<String>,
    state: State,
) -> Result<Response, Rejection> {
    let jpeg = wants_jpeg(&q, accept.as_deref())?;
    let setting = JpegSetting::from_query(&q, state.jpeg_quality)?;
    let hub = known_stream(&state, &id).await?;
    if jpeg {
        return Ok(match hub.jpeg_now(setting, state.first_frame_wait).await? {
            Some(j) => jpeg_response(&j),
            None => no_frame_yet(),
        });
    }
    let mut sub = hub.subscribe(Kind::Http);
    Ok(match sub.wait_frame(state.first_frame_wait).await? {
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
    tokio::spawn(async move {
        let _permit = permit;
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
                let sent = tx.send(Bytes::from(head)).await.is_ok()
                    && tx.send(j.jpeg.clone()).await.is_ok()
                    && tx.send(Bytes::from_static(b"\r\n")).await.is_ok();
                if !sent {
                    break;
                }
                sub.hub()
                    .metrics
                    .mjpeg_sent
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            tokio::select! {
                r = sub.rx.changed() => if r.is_err() { break },
                _ = shutdown.changed() => break,
                _ = tx.closed() => break,
            }
        }
    });
    let body = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|o| o.map(Ok::<_, Infallible>))
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
    Ok(ws
        .max_message_size(64 * 1024)
        .on_upgrade(move |socket| async move {
            let _permit = permit;
            match sub {
                WsSub::Jpeg(sub) => {
                    let rx = sub.rx.clone();
                    pump_ws(socket, rx, &hub, shutdown).await;
                    drop(sub);
                }
                WsSub::Raw(sub) => {
                    let rx = sub.rx.clone();
                    pump_ws(socket, rx, &hub, shutdown).await;
                    drop(sub);
                }
            }
        })
        .into_response())
}

/// What a WebSocket subscribes to.
enum WsSub {
    Raw(Subscription),
    Jpeg(JpegSubscription),
}

/// Sends each new item of `feed` to `socket` until the client leaves, the feed
/// ends (close frame with the reason) or the gateway shuts down.
async fn pump_ws<T: Framed>(
    socket: WebSocket,
    mut feed: watch::Receiver<Feed<T>>,
    hub: &StreamHub,
    mut shutdown: watch::Receiver<bool>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let (mut tx, mut incoming) = socket.split();
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
            match tokio::time::timeout(SEND_TIMEOUT, send).await {
                Ok(Ok(())) => {
                    hub.metrics.ws_sent.fetch_add(1, Relaxed);
                }
                _ => break None,
            }
        }
        tokio::select! {
            r = feed.changed() => if r.is_err() { break None },
            _ = &mut gone => break None,
            _ = shutdown.changed() => break Some((1001, "gateway shutting down".into())),
        }
    };
    reader.abort();
    if let Some((code, reason)) = close {
        let _ = tx
            .send(Message::close_with(code, close_reason(&reason)))
            .await;
    }
    let _ = tx.close().await;
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
}
