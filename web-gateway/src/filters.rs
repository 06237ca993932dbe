//! The routes. Shared state comes in through one filter ([`with_state`]); every
//! API, WebSocket, MJPEG and metrics route passes [`auth::require`] after its
//! path matched (so an unknown path stays a 404); every error becomes JSON
//! through [`errors::recover`].

use warp::filters::BoxedFilter;
use warp::http::{header, HeaderValue};
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::auth;
use crate::errors;
use crate::handlers::{self, State};
use crate::models::{FrameQuery, MAX_BODY};

/// The web page at `/`.
pub const INDEX_HTML: &str = include_str!("../web/index.html");
/// The OpenAPI document at `/api/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");
/// Files served under `/web/` and `/static/` (the original server's URL):
/// name, content type, bytes.
pub const ASSETS: &[(&str, &str, &str)] = &[
    (
        "js_client.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/js_client.js"),
    ),
    (
        "RTSPStreamViewer.jsx",
        "text/javascript; charset=utf-8",
        include_str!("../web/RTSPStreamViewer.jsx"),
    ),
    (
        "client_example.html",
        "text/html; charset=utf-8",
        include_str!("../web/client_example.html"),
    ),
];

/// Injects the shared state.
pub fn with_state(
    state: State,
) -> impl Filter<Extract = (State,), Error = std::convert::Infallible> + Clone {
    warp::any().map(move || state.clone())
}

fn typed(body: &'static str, content_type: &'static str) -> Response {
    let mut res = Response::new(body.into());
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    res
}

/// Every route, with errors turned into JSON (CORS is added by [`app`]).
pub fn routes(state: State) -> BoxedFilter<(Response,)> {
    let auth = auth::require(state.auth.clone());
    let st = with_state(state);
    let accept = warp::header::optional::<String>("accept");

    let create = warp::path!("api" / "streams")
        .and(warp::post())
        .and(auth.clone())
        .and(warp::body::content_length_limit(MAX_BODY))
        // Parsed whatever the Content-Type says, as the original server did.
        .and(warp::body::bytes())
        .and(st.clone())
        .and_then(handlers::start_stream);
    let create_url = warp::path!("api" / "streams" / "start-with-url")
        .and(warp::post())
        .and(auth.clone())
        .and(warp::body::content_length_limit(MAX_BODY))
        .and(warp::body::bytes())
        .and(st.clone())
        .and_then(handlers::start_with_url);
    // Not a stream id: only POST goes there. An answer, not a rejection (a
    // rejection would let `/api/streams/{id}` below take the path).
    let reserved = warp::path!("api" / "streams" / "start-with-url")
        .and(warp::get().or(warp::delete()).unify())
        .map(|| {
            errors::json_error(
                warp::http::StatusCode::METHOD_NOT_ALLOWED,
                "start-with-url takes POST {\"rtsp_url\": ...}; it is not a stream id",
            )
        });
    let force = warp::path!("api" / "streams" / String / "force")
        .and(warp::delete())
        .and(auth.clone())
        .and(st.clone())
        .and_then(handlers::force_stop_stream);
    let list = warp::path!("api" / "streams")
        .and(warp::get())
        .and(auth.clone())
        .and(st.clone())
        .and_then(handlers::list_streams);
    let one = warp::path!("api" / "streams" / String)
        .and(warp::get())
        .and(auth.clone())
        .and(st.clone())
        .and_then(handlers::get_stream);
    let stop = warp::path!("api" / "streams" / String)
        .and(warp::delete())
        .and(auth.clone())
        .and(st.clone())
        .and_then(handlers::stop_stream);
    let stats = warp::path!("api" / "streams" / String / "stats")
        .and(warp::get())
        .and(auth.clone())
        .and(st.clone())
        .and_then(handlers::stream_stats);
    let frame = warp::path!("api" / "streams" / String / "frame")
        .and(warp::get())
        .and(auth.clone())
        .and(warp::query::<FrameQuery>())
        .and(accept)
        .and(warp::addr::remote())
        .and(st.clone())
        .and_then(handlers::frame);
    let snapshot = warp::path!("api" / "streams" / String / "snapshot.jpg")
        .and(warp::get())
        .and(auth.clone())
        .and(warp::query::<FrameQuery>())
        .and(st.clone())
        .and_then(handlers::snapshot);
    let mjpeg = warp::path!("api" / "streams" / String / "mjpeg")
        .and(warp::get())
        .and(auth.clone())
        .and(warp::query::<FrameQuery>())
        .and(st.clone())
        .and_then(handlers::mjpeg);
    let ws = warp::path!("ws" / String)
        .and(warp::get())
        .and(auth.clone())
        .and(warp::query::<FrameQuery>())
        .and(warp::ws())
        .and(st.clone())
        .and_then(handlers::websocket);
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(auth.clone())
        .and(st.clone())
        .and_then(handlers::metrics);
    let openapi = warp::path!("api" / "openapi.json")
        .and(warp::get())
        .map(|| typed(OPENAPI_JSON, "application/json"));
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .and(st.clone())
        .and_then(handlers::healthz);
    let health = warp::path!("health")
        .and(warp::get())
        .and_then(handlers::health);
    // `/viewer` is where the original served its page.
    let index = warp::path::end()
        .or(warp::path!("viewer"))
        .unify()
        .and(warp::get())
        .map(|| typed(INDEX_HTML, "text/html; charset=utf-8"));
    let asset = |name: String| async move {
        ASSETS
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, ct, body)| typed(body, ct))
            .ok_or_else(warp::reject::not_found)
    };
    let assets = warp::path!("web" / String)
        .or(warp::path!("static" / String))
        .unify()
        .and(warp::get())
        .and_then(asset);

    // Boxed in groups (same order, same rejections): one long chain of `or`s
    // makes a type the compiler spends many minutes on.
    let control = create
        .or(create_url)
        .unify()
        .or(reserved)
        .unify()
        .or(force)
        .unify()
        .or(list)
        .unify()
        .or(one)
        .unify()
        .or(stop)
        .unify()
        .boxed();
    let media = stats
        .or(frame)
        .unify()
        .or(snapshot)
        .unify()
        .or(mjpeg)
        .unify()
        .or(ws)
        .unify()
        .boxed();
    let rest = metrics
        .or(openapi)
        .unify()
        .or(healthz)
        .unify()
        .or(health)
        .unify()
        .or(index)
        .unify()
        .or(assets)
        .unify()
        .boxed();
    control
        .or(media)
        .unify()
        .or(rest)
        .unify()
        .recover(errors::recover)
        .unify()
        .boxed()
}

/// Whether `origin` (`scheme://host[:port]`) names the host the request was sent
/// to (its `Host` header): a same-origin request from the gateway's own page.
pub fn same_origin(origin: &str, host: Option<&str>) -> bool {
    let Some(host) = host else { return false };
    origin
        .split_once("://")
        .is_some_and(|(_, rest)| rest.trim_end_matches('/').eq_ignore_ascii_case(host))
}

/// [`routes`] behind the origin policy, with request logging.
///
/// - no `Origin` header (curl, OpenCV, Python, the broker's tools) or the
///   gateway's own origin (its page): served, no CORS headers;
/// - an origin given with `--cors-origin`: served with CORS headers;
/// - any other origin: 403. Browsers send `Origin` on every cross-site
///   WebSocket handshake and non-GET request, so another web site can neither
///   read frames (WebSockets ignore CORS) nor start or stop streams, even when
///   the gateway runs on loopback without a token.
pub fn app(state: State, origins: &[String]) -> BoxedFilter<(Response,)> {
    let log = warp::log::custom(|info| {
        // Path only: a `?token=` never reaches the log.
        tracing::debug!(method = %info.method(), path = info.path(), status = info.status().as_u16(), elapsed = ?info.elapsed(), "request");
    });
    let inner = routes(state);
    let local = warp::header::optional::<String>("origin")
        .and(warp::header::optional::<String>("host"))
        .and_then(|origin: Option<String>, host: Option<String>| async move {
            match origin {
                None => Ok(()),
                Some(o) if same_origin(&o, host.as_deref()) => Ok(()),
                Some(_) => Err(warp::reject::not_found()),
            }
        })
        .untuple_one()
        .and(inner.clone());
    let refused = warp::header::<String>("origin").map(|o: String| {
        errors::json_error(
            warp::http::StatusCode::FORBIDDEN,
            &format!(
                "cross-origin request from {o} refused: start the gateway with --cors-origin {o} to allow it"
            ),
        )
    });
    let cross = if origins.iter().any(|o| o == "*") {
        any_origin(inner.clone())
    } else if origins.is_empty() {
        refused.boxed()
    } else {
        let cors = warp::cors()
            .allow_origins(origins.iter().map(String::as_str))
            .allow_methods(["GET", "POST", "DELETE", "OPTIONS"])
            .allow_headers(["content-type", "authorization", "accept"])
            .expose_headers([
                "x-frame-width",
                "x-frame-height",
                "x-pixel-format",
                "x-frame-number",
                "x-capture-time-ns",
                "x-frame-timestamp",
            ]);
        inner
            .with(cors)
            .map(Reply::into_response)
            .or(refused)
            .unify()
            .boxed()
    };
    warp::path::full()
        .and(local.or(cross).unify())
        .map(|path: warp::path::FullPath, mut res: Response| {
            // RFC 9110: a 405 says which methods the resource has.
            if res.status() == warp::http::StatusCode::METHOD_NOT_ALLOWED {
                if let Some(allow) = allowed_methods(path.as_str()) {
                    res.headers_mut()
                        .insert(header::ALLOW, HeaderValue::from_static(allow));
                }
            }
            res
        })
        .with(log)
        .map(Reply::into_response)
        .boxed()
}

/// Every origin (`--cors-origin '*'`), as the original server allowed: `OPTIONS`
/// on any path answers 204, and every answer carries its three headers (plus the
/// frame headers a page may read).
fn any_origin(inner: BoxedFilter<(Response,)>) -> BoxedFilter<(Response,)> {
    fn cors_headers(res: &mut Response) {
        let h = res.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("Content-Type, Authorization"),
        );
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(
                "X-Frame-Width, X-Frame-Height, X-Pixel-Format, X-Frame-Number, \
                 X-Capture-Time-Ns, X-Frame-Timestamp, X-Frame-Generation",
            ),
        );
    }
    let preflight = warp::options().map(|| {
        let mut res = warp::http::StatusCode::NO_CONTENT.into_response();
        cors_headers(&mut res);
        res
    });
    preflight
        .or(inner.map(|mut res: Response| {
            cors_headers(&mut res);
            res
        }))
        .unify()
        .boxed()
}

/// The methods [`routes`] serves on `path` (the `Allow` header of a 405), or
/// `None` for a path it does not route.
pub fn allowed_methods(path: &str) -> Option<&'static str> {
    let segments: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
    let named = |s: &&str| !s.is_empty();
    match segments.as_slice() {
        ["api", "streams"] => Some("GET, POST"),
        ["api", "streams", "start-with-url"] => Some("POST"),
        ["api", "streams", id, "force"] if named(id) => Some("DELETE"),
        ["api", "streams", id] if named(id) => Some("GET, DELETE"),
        ["api", "streams", id, "stats" | "frame" | "snapshot.jpg" | "mjpeg"] if named(id) => {
            Some("GET")
        }
        ["ws", id] | ["web", id] | ["static", id] if named(id) => Some("GET"),
        ["metrics"] | ["healthz"] | ["health"] | ["viewer"] | ["api", "openapi.json"] | [""] => {
            Some("GET")
        }
        _ => None,
    }
}
