//! Route tests through `warp::test`: no broker runs (its socket does not exist),
//! so what is checked here is routing, auth, CORS, errors and the OpenAPI
//! document, not frames.

use std::collections::BTreeSet;

use framebroker_gateway::{auth::Auth, errors::NO_ROUTE, filters, Config};
use serde_json::Value;
use warp::http::StatusCode;

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "DELETE", "PATCH"];

fn config(token: Option<&str>, origins: &[&str]) -> Config {
    let mut cfg = Config::new("/nonexistent/framebroker-gateway-test.sock");
    cfg.auth = Auth::new(token);
    cfg.cors_origins = origins.iter().map(|s| s.to_string()).collect();
    cfg
}

fn app(
    token: Option<&str>,
    origins: &[&str],
) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    let cfg = config(token, origins);
    let (state, _stop) = framebroker_gateway::state(&cfg);
    filters::app(state, &cfg.cors_origins)
}

fn error_of(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)));
    v["error"].as_str().expect("an error field").to_string()
}

/// `/api/streams/{id}` → `/api/streams/cam1`.
fn concrete(path: &str) -> String {
    path.replace("{id}", "cam1")
        .replace("{file}", "js_client.js")
}

fn openapi() -> Value {
    serde_json::from_str(filters::OPENAPI_JSON).expect("openapi.json is JSON")
}

fn documented() -> BTreeSet<(String, String)> {
    let doc = openapi();
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in METHODS {
            if item.get(m.to_lowercase()).is_some() {
                ops.insert((m.to_string(), path.clone()));
            }
        }
    }
    ops
}

/// Whether the router has a route for `method path`: anything but our
/// "no such route" 404 and a 405.
async fn routed(
    app: &warp::filters::BoxedFilter<(warp::reply::Response,)>,
    method: &str,
    path: &str,
) -> bool {
    let res = warp::test::request()
        .method(method)
        .path(path)
        .header("content-length", "2")
        .body("{}")
        .reply(app)
        .await;
    if res.status() == StatusCode::METHOD_NOT_ALLOWED {
        return false;
    }
    !(res.status() == StatusCode::NOT_FOUND && error_of(res.body()) == NO_ROUTE)
}

#[tokio::test]
async fn openapi_document_matches_the_router() {
    let app = app(None, &[]);
    let doc = openapi();
    assert_eq!(doc["openapi"].as_str().unwrap().chars().next(), Some('3'));
    let ops = documented();
    assert!(ops.len() >= 13, "{ops:?}");
    // Every documented operation exists...
    for (m, p) in &ops {
        assert!(
            routed(&app, m, &concrete(p)).await,
            "documented {m} {p} is not routed"
        );
    }
    // ...and on documented paths, no undocumented method is routed.
    let paths: BTreeSet<&String> = ops.iter().map(|(_, p)| p).collect();
    for p in &paths {
        for m in METHODS {
            if !ops.contains(&(m.to_string(), p.to_string())) {
                assert!(
                    !routed(&app, m, &concrete(p)).await,
                    "{m} {p} is routed but not documented"
                );
            }
        }
    }
    // Paths near the real ones are not routed (the router has nothing undocumented).
    for p in [
        "/api",
        "/api/",
        "/api/stream",
        "/api/streams/cam1/frames",
        "/api/streams/cam1/stats/x",
        "/api/streams/cam1/snapshot.png",
        "/api/streams/cam1/mjpeg/x",
        "/ws",
        "/ws/cam1/x",
        "/web/nope.js",
        "/static/nope.js",
        "/static",
        "/viewer/x",
        "/health/x",
        "/api/streams/cam1/force/x",
        "/api/streams/start-with-url/x",
        "/metrics/x",
        "/healthz/x",
        "/index.html",
    ] {
        for m in METHODS {
            assert!(
                !routed(&app, m, p).await,
                "{m} {p} is routed but not documented"
            );
        }
    }
    // Documented responses carry a JSON error schema for every error status.
    for (m, p) in &ops {
        let responses = &doc["paths"][p][m.to_lowercase()]["responses"];
        assert!(
            responses.as_object().is_some_and(|r| !r.is_empty()),
            "{m} {p} has no responses"
        );
    }
}

#[tokio::test]
async fn every_protected_route_wants_the_token() {
    let token = "tok-123";
    let app = app(Some(token), &[]);
    let doc = openapi();
    let mut protected = 0;
    for (m, p) in documented() {
        let op = &doc["paths"][&p][m.to_lowercase()];
        let public = op["security"].as_array().is_some_and(|s| s.is_empty());
        let path = concrete(&p);
        let without = warp::test::request()
            .method(&m)
            .path(&path)
            .header("content-length", "2")
            .body("{}")
            .reply(&app)
            .await;
        if public {
            assert_ne!(
                without.status(),
                StatusCode::UNAUTHORIZED,
                "{m} {p} is public"
            );
            continue;
        }
        protected += 1;
        assert_eq!(
            without.status(),
            StatusCode::UNAUTHORIZED,
            "{m} {p} without token"
        );
        assert!(error_of(without.body()).contains("token"));
        assert!(without.headers().contains_key("www-authenticate"));
        let wrong = warp::test::request()
            .method(&m)
            .path(&path)
            .header("authorization", "Bearer nope")
            .reply(&app)
            .await;
        assert_eq!(
            wrong.status(),
            StatusCode::UNAUTHORIZED,
            "{m} {p} wrong token"
        );
        for (header, query) in [
            (Some(format!("Bearer {token}")), ""),
            (None, "?token=tok-123"),
        ] {
            let mut req = warp::test::request()
                .method(&m)
                .path(&format!("{path}{query}"))
                .header("content-length", "2")
                .body("{}");
            if let Some(h) = header {
                req = req.header("authorization", h);
            }
            let res = req.reply(&app).await;
            assert_ne!(
                res.status(),
                StatusCode::UNAUTHORIZED,
                "{m} {p}{query} with token"
            );
        }
    }
    assert!(protected >= 10, "{protected}");
    // An unknown route stays a 404, not a 401.
    let res = warp::test::request().path("/nope").reply(&app).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn errors_are_json() {
    let app = app(None, &[]);
    let check = |res: warp::http::Response<bytes::Bytes>, status: StatusCode, needle: &str| {
        assert_eq!(
            res.status(),
            status,
            "{}",
            String::from_utf8_lossy(res.body())
        );
        assert_eq!(res.headers()["content-type"], "application/json");
        let e = error_of(res.body());
        assert!(e.contains(needle), "{e:?} should contain {needle:?}");
    };
    // Unknown route.
    check(
        warp::test::request().path("/nope").reply(&app).await,
        StatusCode::NOT_FOUND,
        NO_ROUTE,
    );
    // Malformed JSON, wrong types, missing fields: 400 before the broker is asked.
    for (body, needle) in [
        ("{\"stream_id\": \"a\"", "invalid JSON"),
        (
            "{\"stream_id\": 5, \"rtsp_url\": \"rtsp://h/x\"}",
            "invalid type",
        ),
        ("{\"stream_id\": \"a\"}", "rtsp_url"),
        (
            "{\"stream_id\": \"a\", \"rtsp_url\": \"rtsp://h\", \"width\": -1}",
            "invalid",
        ),
        (
            "{\"stream_id\": \"a\", \"rtsp_url\": \"rtsp://h\", \"pixel_format\": \"rgba\"}",
            "pixel_format",
        ),
        // The camera's own size and a size at once: a contradiction, not a guess.
        (
            "{\"stream_id\": \"a\", \"rtsp_url\": \"rtsp://h\", \"native_size\": true, \"width\": 320}",
            "native_size",
        ),
        (
            "{\"stream_id\": \"a\", \"rtsp_url\": \"rtsp://h\", \"native_size\": 1}",
            "invalid type",
        ),
        ("[]", "invalid"),
    ] {
        let res = warp::test::request()
            .method("POST")
            .path("/api/streams")
            .body(body)
            .reply(&app)
            .await;
        check(res, StatusCode::BAD_REQUEST, needle);
    }
    // Oversized body: 413, whatever it holds.
    let big = format!(
        "{{\"stream_id\": \"a\", \"rtsp_url\": \"rtsp://h/{}\"}}",
        "x".repeat(20_000)
    );
    let res = warp::test::request()
        .method("POST")
        .path("/api/streams")
        .body(big)
        .reply(&app)
        .await;
    check(res, StatusCode::PAYLOAD_TOO_LARGE, "too large");
    // Invalid ids in paths: 400 with the reason, before the broker is asked
    // (a dot is fine, `camera.1`; a leading dot or `..` is not).
    for p in [
        "/api/streams/a..b/frame",
        "/api/streams/.ab/stats",
        "/api/streams/a%2Fb/stats",
        "/api/streams/a%20b",
        "/ws/a..b",
        "/api/streams/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/mjpeg",
    ] {
        let mut req = warp::test::request().path(p);
        if p.starts_with("/ws") {
            req = req
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-version", "13")
                .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
        }
        check(
            req.reply(&app).await,
            StatusCode::BAD_REQUEST,
            "invalid stream id",
        );
    }
    // Bad query values.
    for (q, needle) in [
        ("?format=png", "format"),
        ("?format=jpeg&quality=0", "quality"),
        ("?format=jpeg&quality=abc", "query"),
        ("?format=jpeg&scale=0.3", "scale"),
    ] {
        let res = warp::test::request()
            .path(&format!("/api/streams/cam1/frame{q}"))
            .reply(&app)
            .await;
        check(res, StatusCode::BAD_REQUEST, needle);
    }
    // The broker is not running: 503, saying so.
    for (m, p) in [
        ("GET", "/api/streams"),
        ("GET", "/api/streams/cam1/frame"),
        ("DELETE", "/api/streams/cam1"),
    ] {
        let res = warp::test::request().method(m).path(p).reply(&app).await;
        check(res, StatusCode::SERVICE_UNAVAILABLE, "broker unavailable");
    }
    let res = warp::test::request()
        .method("POST")
        .path("/api/streams")
        .body("{\"stream_id\": \"a\", \"rtsp_url\": \"rtsp://admin:hunter2@cam/x\"}")
        .reply(&app)
        .await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(!String::from_utf8_lossy(res.body()).contains("hunter2"));
    // A WebSocket route without the upgrade.
    let res = warp::test::request().path("/ws/cam1").reply(&app).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(
        error_of(res.body()).contains("WebSocket"),
        "{:?}",
        res.body()
    );
    // Wrong method.
    check(
        warp::test::request()
            .method("PUT")
            .path("/api/streams")
            .reply(&app)
            .await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method",
    );
}

#[tokio::test]
async fn health_page_and_assets() {
    let app = app(Some("t"), &[]);
    let res = warp::test::request().path("/healthz").reply(&app).await;
    assert_eq!(res.status(), 200);
    let v: Value = serde_json::from_slice(res.body()).unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["broker_reachable"], false);
    assert_eq!(v["auth"], true);
    let res = warp::test::request().path("/").reply(&app).await;
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(String::from_utf8_lossy(res.body()).contains("framebroker"));
    for (name, ct, _) in filters::ASSETS {
        let res = warp::test::request()
            .path(&format!("/web/{name}"))
            .reply(&app)
            .await;
        assert_eq!(res.status(), 200, "{name}");
        assert_eq!(res.headers()["content-type"], *ct);
    }
    let res = warp::test::request()
        .path("/api/openapi.json")
        .reply(&app)
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/json");
    // Metrics want the token, and say when the broker is down.
    let res = warp::test::request()
        .path("/metrics?token=t")
        .reply(&app)
        .await;
    assert_eq!(res.status(), 200);
    let text = String::from_utf8_lossy(res.body());
    assert!(text.contains("framebroker_broker_up 0"), "{text}");
}

#[tokio::test]
async fn origin_policy_and_cors() {
    // None configured: no Origin (curl, OpenCV) and the gateway's own page pass
    // without CORS headers; any other origin is refused, WebSocket handshakes too.
    let closed = app(None, &[]);
    for origin in [
        None,
        Some("http://127.0.0.1:8091"),
        Some("http://127.0.0.1:8091/"),
    ] {
        let mut req = warp::test::request()
            .path("/healthz")
            .header("host", "127.0.0.1:8091");
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        let res = req.reply(&closed).await;
        assert_eq!(res.status(), 200, "{origin:?}");
        assert!(!res.headers().contains_key("access-control-allow-origin"));
    }
    for (method, path) in [
        ("GET", "/healthz"),
        ("POST", "/api/streams"),
        ("GET", "/ws/cam1"),
        ("GET", "/api/streams/cam1/mjpeg"),
    ] {
        let res = warp::test::request()
            .method(method)
            .path(path)
            .header("host", "127.0.0.1:8091")
            .header("origin", "http://evil.example")
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .body("{\"stream_id\":\"x\",\"rtsp_url\":\"rtsp://h/x\"}")
            .reply(&closed)
            .await;
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{method} {path}");
        let e = error_of(res.body());
        assert!(e.contains("--cors-origin http://evil.example"), "{e}");
    }
    // Same host, other port: another origin.
    let res = warp::test::request()
        .path("/healthz")
        .header("host", "127.0.0.1:8091")
        .header("origin", "http://127.0.0.1:9999")
        .reply(&closed)
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);

    let open = app(None, &["http://app.example"]);
    let res = warp::test::request()
        .path("/healthz")
        .header("origin", "http://app.example")
        .reply(&open)
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "http://app.example"
    );
    // Preflight of an allowed origin.
    let res = warp::test::request()
        .method("OPTIONS")
        .path("/api/streams")
        .header("origin", "http://app.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type, authorization",
        )
        .reply(&open)
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "http://app.example"
    );
    // Another origin is refused, as JSON, preflight or not.
    for method in ["GET", "OPTIONS"] {
        let res = warp::test::request()
            .method(method)
            .path("/healthz")
            .header("origin", "http://evil.example")
            .header("access-control-request-method", "GET")
            .reply(&open)
            .await;
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{method}");
        assert!(!res.headers().contains_key("access-control-allow-origin"));
        error_of(res.body());
    }
    // Errors of an allowed origin carry the CORS headers (so the page can read them).
    let res = warp::test::request()
        .path("/nope")
        .header("origin", "http://app.example")
        .reply(&open)
        .await;
    assert_eq!(res.status(), 404);
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "http://app.example"
    );
    error_of(res.body());
}

#[test]
fn same_origin_compares_host_and_port() {
    use framebroker_gateway::filters::same_origin;
    assert!(same_origin("http://127.0.0.1:8091", Some("127.0.0.1:8091")));
    assert!(same_origin("https://Gw.Example", Some("gw.example")));
    assert!(!same_origin(
        "http://127.0.0.1:8092",
        Some("127.0.0.1:8091")
    ));
    assert!(!same_origin("null", Some("127.0.0.1:8091")));
    assert!(!same_origin("http://127.0.0.1:8091", None));
}

/// Quality and scale are checked on every JPEG-capable route, before anything
/// else happens (no broker runs here: a valid query would get 503).
#[tokio::test]
async fn jpeg_quality_and_scale_are_bounded() {
    let app = app(None, &[]);
    let bad = [
        ("quality=0", "quality 0 out of range 1..=100"),
        ("quality=101", "quality 101 out of range 1..=100"),
        ("quality=255", "quality 255 out of range 1..=100"),
        ("quality=256", "invalid query string"),
        ("quality=-1", "invalid query string"),
        ("quality=50.5", "invalid query string"),
        ("quality=", "invalid query string"),
        ("scale=2", "scale 2 not supported"),
        ("scale=0", "scale 0 not supported"),
        ("scale=-0.5", "scale -0.5 not supported"),
        ("scale=0.3", "scale 0.3 not supported"),
        ("scale=NaN", "not supported"),
        ("scale=inf", "not supported"),
        ("scale=1e999", "not supported"),
        ("scale=abc", "invalid query string"),
    ];
    for route in [
        "/api/streams/cam1/frame?format=jpeg&",
        "/api/streams/cam1/frame?",
        "/api/streams/cam1/snapshot.jpg?",
        "/api/streams/cam1/mjpeg?",
        "/ws/cam1?format=jpeg&",
    ] {
        for (q, needle) in bad {
            let path = format!("{route}{q}");
            let res = warp::test::request()
                .path(&path)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-version", "13")
                .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
                .reply(&app)
                .await;
            assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{path}");
            let e = error_of(res.body());
            assert!(
                e.contains(needle),
                "{path}: {e:?} should contain {needle:?}"
            );
        }
        // The bounds themselves pass validation (then the missing broker answers).
        for q in ["quality=1", "quality=100", "scale=1", "scale=0.125"] {
            let path = format!("{route}{q}");
            let res = warp::test::request()
                .path(&path)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-version", "13")
                .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
                .reply(&app)
                .await;
            assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
        }
    }
}

/// Past `--max-ws-clients` the WebSocket handshake is refused with a 503 JSON
/// error, and past `--max-http-streams` the MJPEG answer, before the broker is
/// even asked (here it does not run: within the caps the answer would be 503
/// "broker unavailable" instead).
#[tokio::test]
async fn connection_caps_refuse_with_503() {
    let mut cfg = config(None, &[]);
    cfg.max_ws_clients = 0;
    cfg.max_http_streams = 0;
    let (state, _stop) = framebroker_gateway::state(&cfg);
    let app = filters::app(state, &cfg.cors_origins);
    let res = warp::test::request()
        .path("/ws/cam1?format=jpeg")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .reply(&app)
        .await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["content-type"], "application/json");
    let e = error_of(res.body());
    assert!(
        e.contains("too many WebSocket clients") && e.contains("--max-ws-clients"),
        "{e}"
    );
    let res = warp::test::request()
        .path("/api/streams/cam1/mjpeg")
        .reply(&app)
        .await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let e = error_of(res.body());
    assert!(
        e.contains("too many MJPEG streams") && e.contains("--max-http-streams"),
        "{e}"
    );
    // Short-lived requests are not capped: they reach the (missing) broker.
    let res = warp::test::request()
        .path("/api/streams/cam1/frame")
        .reply(&app)
        .await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(error_of(res.body()).contains("broker unavailable"));
    // The refusals are counted in the metrics.
    let res = warp::test::request().path("/metrics").reply(&app).await;
    let text = String::from_utf8_lossy(res.body());
    for line in [
        "framebroker_gateway_connections{kind=\"ws\"} 0",
        "framebroker_gateway_connections_limit{kind=\"ws\"} 0",
        "framebroker_gateway_connections_refused_total{kind=\"ws\"} 1",
        "framebroker_gateway_connections_refused_total{kind=\"mjpeg\"} 1",
    ] {
        assert!(text.contains(line), "{line} missing in:\n{text}");
    }
}

/// Error messages never carry URL credentials, whoever wrote them (here: the
/// JSON parser echoing a value).
#[tokio::test]
async fn error_messages_are_redacted() {
    let app = app(None, &[]);
    let res = warp::test::request()
        .method("POST")
        .path("/api/streams")
        .body(r#"{"stream_id": "a", "rtsp_url": "rtsp://h/x", "on_demand": "rtsp://admin:s3cr3tpw@cam/x"}"#)
        .reply(&app)
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let e = error_of(res.body());
    assert!(!e.contains("s3cr3tpw"), "{e}");
    assert!(e.contains("rtsp://***@cam"), "{e}");
}

/// A 405 carries `Allow` with the documented methods of the path (RFC 9110).
#[tokio::test]
async fn method_not_allowed_says_which_methods_are() {
    let app = app(None, &[]);
    let ops = documented();
    let paths: BTreeSet<&String> = ops.iter().map(|(_, p)| p).collect();
    let mut checked = 0;
    for p in paths {
        let mut want: Vec<&str> = METHODS
            .iter()
            .copied()
            .filter(|m| ops.contains(&(m.to_string(), p.to_string())))
            .collect();
        want.sort_unstable();
        for m in ["PUT", "PATCH", "TRACE", "POST", "DELETE"] {
            if want.contains(&m) {
                continue;
            }
            let res = warp::test::request()
                .method(m)
                .path(&concrete(p))
                .reply(&app)
                .await;
            assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED, "{m} {p}");
            let allow = res
                .headers()
                .get("allow")
                .unwrap_or_else(|| panic!("{m} {p}: no Allow header"))
                .to_str()
                .unwrap();
            let mut got: Vec<&str> = allow.split(", ").collect();
            got.sort_unstable();
            assert_eq!(got, want, "{m} {p}");
            checked += 1;
        }
    }
    assert!(checked >= 40, "{checked}");
}

/// The original server's routes beside ours: `/health`, `/viewer`, `/static/…`,
/// `start-with-url`'s bad input, and `--cors-origin '*'` (preflight 204 with the
/// original's three headers on any path, every origin including `null`, the
/// WebSocket handshake not refused).
#[tokio::test]
async fn original_routes_and_any_origin() {
    let closed = app(None, &[]);
    let res = warp::test::request().path("/health").reply(&closed).await;
    assert_eq!(res.status(), 200);
    let v: Value = serde_json::from_slice(res.body()).unwrap();
    assert_eq!(v["status"], "healthy");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let ts = v["timestamp"].as_u64().expect("integer timestamp");
    assert!(ts.abs_diff(now) <= 5, "{ts} vs {now}");
    let res = warp::test::request().path("/viewer").reply(&closed).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.body(), filters::INDEX_HTML.as_bytes());
    for (name, ct, body) in filters::ASSETS {
        let res = warp::test::request()
            .path(&format!("/static/{name}"))
            .reply(&closed)
            .await;
        assert_eq!(res.status(), 200, "{name}");
        assert_eq!(res.headers()["content-type"], *ct);
        assert_eq!(res.body(), body.as_bytes());
    }
    // start-with-url: bad input is a 400 before the broker is asked.
    for (body, needle) in [
        ("{\"rtsp_url\": 5}", "invalid type"),
        ("{\"width\": 640}", "rtsp_url"),
        (
            "{\"rtsp_url\": \"rtsp://h/x\", \"width\": \"wide\"}",
            "invalid type",
        ),
        (
            "{\"rtsp_url\": \"rtsp://h/x\", \"pixel_format\": \"rgba\"}",
            "pixel_format",
        ),
        (
            "{\"rtsp_url\": \"rtsp://h/x\", \"native_size\": true, \"height\": 240}",
            "native_size",
        ),
        ("nope", "invalid JSON"),
    ] {
        let res = warp::test::request()
            .method("POST")
            .path("/api/streams/start-with-url")
            .body(body)
            .reply(&closed)
            .await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{body}");
        let e = error_of(res.body());
        assert!(e.contains(needle), "{body}: {e}");
    }
    // Its path is not a stream id.
    for m in ["GET", "DELETE"] {
        let res = warp::test::request()
            .method(m)
            .path("/api/streams/start-with-url")
            .reply(&closed)
            .await;
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED, "{m}");
        assert_eq!(res.headers()["allow"], "POST");
    }
    let res = warp::test::request()
        .method("POST")
        .path("/api/streams")
        .body("{\"stream_id\": \"start-with-url\", \"rtsp_url\": \"rtsp://h/x\"}")
        .reply(&closed)
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(error_of(res.body()).contains("taken by the route"));
    // Unknown id on /force: the broker is asked (here: down, 503), never a 404 route.
    let res = warp::test::request()
        .method("DELETE")
        .path("/api/streams/cam1/force")
        .reply(&closed)
        .await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let res = warp::test::request()
        .method("DELETE")
        .path("/api/streams/a%20b/force")
        .reply(&closed)
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    // Closed by default: a page from a file (Origin: null) is refused.
    let res = warp::test::request()
        .path("/api/streams")
        .header("origin", "null")
        .reply(&closed)
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);

    let star = app(None, &["*"]);
    for origin in ["null", "http://localhost:8000", "https://anything.example"] {
        // Preflight on any path, as the original's middleware answered it.
        for path in [
            "/api/streams",
            "/api/streams/start-with-url",
            "/api/streams/x/force",
            "/nope",
        ] {
            let res = warp::test::request()
                .method("OPTIONS")
                .path(path)
                .header("origin", origin)
                .header("access-control-request-method", "DELETE")
                .header("access-control-request-headers", "content-type")
                .reply(&star)
                .await;
            assert_eq!(res.status(), StatusCode::NO_CONTENT, "{origin} {path}");
            let h = res.headers();
            assert_eq!(h["access-control-allow-origin"], "*");
            assert_eq!(
                h["access-control-allow-methods"],
                "GET, POST, DELETE, OPTIONS"
            );
            assert!(h["access-control-allow-headers"]
                .to_str()
                .unwrap()
                .contains("Content-Type"));
        }
        // Answers (errors too) carry the header.
        for (m, p, status) in [
            ("GET", "/health", StatusCode::OK),
            ("GET", "/api/streams", StatusCode::SERVICE_UNAVAILABLE),
            (
                "POST",
                "/api/streams/start-with-url",
                StatusCode::BAD_REQUEST,
            ),
        ] {
            let res = warp::test::request()
                .method(m)
                .path(p)
                .header("origin", origin)
                .body("{}")
                .reply(&star)
                .await;
            assert_eq!(res.status(), status, "{origin} {m} {p}");
            assert_eq!(res.headers()["access-control-allow-origin"], "*");
            assert!(res.headers()["access-control-expose-headers"]
                .to_str()
                .unwrap()
                .contains("X-Frame-Timestamp"));
        }
        // The WebSocket handshake passes the origin check (then: broker down).
        let res = warp::test::request()
            .path("/ws/cam1")
            .header("origin", origin)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .reply(&star)
            .await;
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "{origin}");
    }
    // '*' opens origins, not the token.
    let star_token = app(Some("t"), &["*"]);
    let res = warp::test::request()
        .path("/api/streams")
        .header("origin", "null")
        .reply(&star_token)
        .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(res.headers()["access-control-allow-origin"], "*");
}
