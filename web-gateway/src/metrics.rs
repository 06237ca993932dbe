//! `GET /metrics` in the Prometheus text format (version 0.0.4).

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use framebroker_client::{StreamState, StreamStats};

use crate::hub::StreamHub;
use crate::limits::Limits;

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {value}");
        } else {
            let _ = writeln!(self.0, "{name}{{{labels}}} {value}");
        }
    }
}

/// Stream ids are `[A-Za-z0-9_.-]` (validated by the broker), so they need no
/// escaping in a label value.
fn stream_label(id: &str) -> String {
    format!("stream=\"{id}\"")
}

/// The metrics text: the broker's counters of each stream (`broker` is `None`
/// when the broker is unreachable) and the gateway's own.
pub fn render(
    broker: Option<&[StreamStats]>,
    hubs: &[Arc<StreamHub>],
    limits: &Limits,
    started: Instant,
) -> String {
    let mut o = Out(String::with_capacity(4096));
    o.family(
        "framebroker_gateway_uptime_seconds",
        "gauge",
        "Seconds since the gateway started.",
    );
    o.sample(
        "framebroker_gateway_uptime_seconds",
        "",
        format!("{:.3}", started.elapsed().as_secs_f64()),
    );
    o.family(
        "framebroker_broker_up",
        "gauge",
        "1 when the broker answered the gateway.",
    );
    o.sample("framebroker_broker_up", "", u8::from(broker.is_some()));
    o.family(
        "framebroker_gateway_connections",
        "gauge",
        "Long-lived connections open, over all streams (kind: ws, mjpeg).",
    );
    o.family(
        "framebroker_gateway_connections_limit",
        "gauge",
        "Most long-lived connections served at once (--max-ws-clients, --max-http-streams).",
    );
    o.family(
        "framebroker_gateway_connections_refused_total",
        "counter",
        "Connections refused with 503 because the limit was reached.",
    );
    o.family(
        "framebroker_gateway_slow_clients_dropped_total",
        "counter",
        "Connections dropped because the client accepted no data for the deadline (--client-deadline-ms).",
    );
    for (kind, g) in [("ws", &limits.ws), ("mjpeg", &limits.mjpeg)] {
        let l = format!("kind=\"{kind}\"");
        o.sample(
            "framebroker_gateway_slow_clients_dropped_total",
            &l,
            g.dropped_slow.load(Relaxed),
        );
        o.sample("framebroker_gateway_connections", &l, g.open());
        o.sample("framebroker_gateway_connections_limit", &l, g.max());
        o.sample(
            "framebroker_gateway_connections_refused_total",
            &l,
            g.refused(),
        );
    }

    let stats = broker.unwrap_or(&[]);
    type Get = fn(&StreamStats) -> String;
    let broker_families: [(&str, &str, &str, Get); 6] = [
        (
            "framebroker_stream_fps",
            "gauge",
            "Input frame rate measured by the broker.",
            |s| format!("{:.3}", s.fps),
        ),
        (
            "framebroker_stream_frames_total",
            "counter",
            "Frames the broker wrote to the ring.",
            |s| s.frames_written.to_string(),
        ),
        (
            "framebroker_stream_dropped_frames_total",
            "counter",
            "Frames lost between ffmpeg and the ring.",
            |s| s.frames_dropped.to_string(),
        ),
        (
            "framebroker_stream_reconnects_total",
            "counter",
            "ffmpeg restarts after the first start.",
            |s| s.reconnects.to_string(),
        ),
        (
            "framebroker_stream_readers",
            "gauge",
            "Reader sessions the broker counts (the gateway is one while it streams).",
            |s| s.info.readers.to_string(),
        ),
        (
            "framebroker_stream_uptime_seconds",
            "gauge",
            "Seconds since the stream started.",
            |s| format!("{:.3}", s.uptime_ms as f64 / 1000.0),
        ),
    ];
    for (name, kind, help, get) in broker_families {
        o.family(name, kind, help);
        for s in stats {
            o.sample(name, &stream_label(&s.info.id), get(s));
        }
    }
    o.family(
        "framebroker_stream_state",
        "gauge",
        "1 for the state the stream is in.",
    );
    for s in stats {
        for st in [
            StreamState::Starting,
            StreamState::Live,
            StreamState::Reconnecting,
            StreamState::Stopped,
            StreamState::Failed,
        ] {
            o.sample(
                "framebroker_stream_state",
                &format!("{},state=\"{}\"", stream_label(&s.info.id), st.name()),
                u8::from(s.info.state == st),
            );
        }
    }

    type GetHub = fn(&StreamHub) -> String;
    let gateway_families: [(&str, &str, &str, GetHub); 13] = [
        (
            "framebroker_gateway_reading",
            "gauge",
            "1 while the gateway reads the stream.",
            |h| u8::from(h.reading()).to_string(),
        ),
        (
            "framebroker_gateway_frames_total",
            "counter",
            "Frames the gateway took from shared memory.",
            |h| h.metrics.frames.load(Relaxed).to_string(),
        ),
        (
            "framebroker_gateway_skipped_frames_total",
            "counter",
            "Frames the gateway's reader skipped because a newer one was there.",
            |h| h.metrics.skipped.load(Relaxed).to_string(),
        ),
        (
            "framebroker_gateway_attaches_total",
            "counter",
            "Times the gateway attached to the stream.",
            |h| h.metrics.attaches.load(Relaxed).to_string(),
        ),
        (
            "framebroker_gateway_ws_subscribers",
            "gauge",
            "Open WebSocket clients.",
            |h| h.metrics.ws_clients.load(Relaxed).to_string(),
        ),
        (
            "framebroker_gateway_mjpeg_subscribers",
            "gauge",
            "Open MJPEG clients.",
            |h| h.metrics.mjpeg_clients.load(Relaxed).to_string(),
        ),
        (
            "framebroker_gateway_http_subscribers",
            "gauge",
            "HTTP frame and snapshot requests in flight.",
            |h| h.metrics.http_in_flight.load(Relaxed).to_string(),
        ),
        (
            "framebroker_gateway_http_frame_requests_total",
            "counter",
            "HTTP frame and snapshot requests.",
            |h| h.metrics.http_requests.load(Relaxed).to_string(),
        ),
        (
            "framebroker_gateway_ws_frames_sent_total",
            "counter",
            "Frames sent to WebSocket clients.",
            |h| h.metrics.ws_sent.load(Relaxed).to_string(),
        ),
        (
            "framebroker_gateway_ws_frames_skipped_total",
            "counter",
            "Frames WebSocket clients skipped because they were slower than the stream.",
            |h| h.metrics.ws_skipped.load(Relaxed).to_string(),
        ),
        (
            "framebroker_gateway_mjpeg_frames_sent_total",
            "counter",
            "Frames sent to MJPEG clients.",
            |h| h.metrics.mjpeg_sent.load(Relaxed).to_string(),
        ),
        (
            "framebroker_gateway_jpeg_encoded_total",
            "counter",
            "Frames encoded to JPEG (once per frame and setting).",
            |h| h.metrics.jpeg_encoded.load(Relaxed).to_string(),
        ),
        (
            "framebroker_gateway_jpeg_settings_refused_total",
            "counter",
            "JPEG requests refused because the stream served as many settings as it may (--max-jpeg-settings).",
            |h| h.metrics.jpeg_settings_refused.load(Relaxed).to_string(),
        ),
    ];
    for (name, kind, help, get) in gateway_families {
        o.family(name, kind, help);
        for h in hubs {
            o.sample(name, &stream_label(&h.id), get(h));
        }
    }
    o.family(
        "framebroker_gateway_jpeg_encode_seconds",
        "summary",
        "Time spent encoding JPEG.",
    );
    for h in hubs {
        let l = stream_label(&h.id);
        let ns = h.metrics.jpeg_encode_ns.load(Relaxed);
        o.sample(
            "framebroker_gateway_jpeg_encode_seconds_sum",
            &l,
            format!("{:.6}", ns as f64 / 1e9),
        );
        o.sample(
            "framebroker_gateway_jpeg_encode_seconds_count",
            &l,
            h.metrics.jpeg_encoded.load(Relaxed),
        );
    }
    o.0
}
