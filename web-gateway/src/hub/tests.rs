//! The hub's retire/re-subscribe windows, against a real broker decoding its
//! test source through real ffmpeg, with the hub's real reader and encoder
//! threads running.
//!
//! A thread retires in two steps: a first look without `ctl`, then the
//! decision under it. A subscriber may come between the two; these tests play
//! that interleaving step by step, the test thread taking the retiring
//! thread's part (the real threads may retire or restart meanwhile too: every
//! assertion holds in each of those orders).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use framebroker_client::StartRequest;
use framebroker_proto::lock::lock;
use framebroker_tests::{wait_for, Broker};

use super::feed::wait_feed;
use super::{Hub, HubConfig, Kind, StreamHub};
use crate::jpeg::JpegSetting;

const SOURCE: &str = "testsrc://?size=320x240&rate=30";
/// Bound of every wait for frames, threads or the broker.
const WAIT: Duration = Duration::from_secs(15);
const SETTING: JpegSetting = JpegSetting {
    quality: 80,
    divisor: 1,
};

fn broker() -> Broker {
    let stream = format!("demo={SOURCE}");
    Broker::start(&["--stream", &stream])
        .expect("broker starts (cargo build --workspace --bins first)")
}

fn config(broker: &Broker, idle: Duration) -> HubConfig {
    HubConfig {
        socket: broker.socket.clone(),
        idle,
        max_jpeg_settings: 2,
        default_jpeg: SETTING,
    }
}

fn stream_hub(broker: &Broker, idle: Duration) -> Arc<StreamHub> {
    StreamHub::new("demo".into(), config(broker, idle))
}

fn until(what: &str, mut cond: impl FnMut() -> bool) {
    wait_for(WAIT, || cond().then_some(()))
        .unwrap_or_else(|| panic!("not within {WAIT:?}: {what}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reader_stays_for_a_subscriber_that_comes_between_its_two_checks() {
    let broker = broker();
    // Idle 0: a reader nobody subscribes to retires at its next look.
    let hub = stream_hub(&broker, Duration::ZERO);
    let mut sub = hub.subscribe(Kind::Ws);
    let first = sub.wait_frame(WAIT).await.unwrap().expect("a first frame");
    assert_eq!((first.width, first.height), (320, 240));
    drop(sub);

    // The retiring thread's first look: nobody subscribes, idle long enough.
    assert!(hub.looks_idle());
    // A subscriber comes before that thread takes `ctl`...
    let mut sub = hub.subscribe(Kind::Ws);
    // ...so the decision under `ctl` keeps the reader.
    assert!(!hub.retire_idle_locked(&mut lock(&hub.ctl)));
    assert!(hub.reading());
    let next = sub
        .wait_frame_after(first.seq, WAIT)
        .await
        .unwrap()
        .expect("frames reach the subscriber that came in the window");
    assert!(next.seq > first.seq);

    // With nobody left the reader retires on its own, clears its feed (no
    // stale frame, no end: a later subscriber starts afresh) and detaches.
    drop(sub);
    until("the idle reader retires", || !hub.reading());
    let feed = hub.raw.borrow().clone();
    assert!(feed.frame.is_none() && feed.end.is_none(), "{feed:?}");
    until("the reader detaches", || hub.own_readers() == 0);

    // And the decision under `ctl` retires when nobody came.
    let mut sub = hub.subscribe(Kind::Http);
    sub.wait_frame(WAIT)
        .await
        .unwrap()
        .expect("the reader restarts");
    drop(sub);
    let retired = {
        let mut ctl = lock(&hub.ctl);
        // Either the real thread retired first, or this decision does.
        !ctl.reader_running || hub.retire_idle_locked(&mut ctl)
    };
    assert!(retired);
    assert!(!hub.reading());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_encoder_stays_for_a_subscriber_that_comes_between_its_two_checks() {
    let broker = broker();
    let hub = stream_hub(&broker, Duration::ZERO);
    let mut js = hub.subscribe_jpeg(Kind::Ws, SETTING).unwrap();
    let first = wait_feed(&mut js.rx, WAIT, |_| true)
        .await
        .unwrap()
        .expect("a first JPEG");
    assert_eq!(&first.jpeg[..2], &[0xFF, 0xD8], "a JPEG starts with SOI");
    let slot = js.slot.clone();
    drop(js);

    // The encoder's first look: nobody streams the setting.
    assert!(hub.encoder_may_retire(&slot));
    // A subscriber to the same setting comes before the encoder takes `ctl`...
    let mut js = hub.subscribe_jpeg(Kind::Mjpeg, SETTING).unwrap();
    assert!(Arc::ptr_eq(&js.slot, &slot), "the setting's slot is reused");
    // ...so the decision under `ctl` keeps the encoder.
    assert!(!hub.retire_encoder_locked(&lock(&hub.ctl), &slot, None));
    assert!(slot.running.load(Ordering::SeqCst));
    let next = wait_feed(&mut js.rx, WAIT, |j| j.seq > first.seq)
        .await
        .unwrap()
        .expect("JPEGs reach the subscriber that came in the window");
    assert_eq!(&next.jpeg[..2], &[0xFF, 0xD8]);

    drop(js);
    until("the idle encoder retires", || {
        !slot.running.load(Ordering::SeqCst)
    });
    // Retired for idleness, not for an end: a later subscriber starts afresh.
    assert!(slot.tx.borrow().end.is_none());
    until("the idle reader retires", || !hub.reading());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_stream_stopped_a_new_subscriber_restarts_reader_and_encoder() {
    let broker = broker();
    // A long idle: only the end of the stream retires anything here.
    let hub = stream_hub(&broker, Duration::from_secs(600));
    let mut js = hub.subscribe_jpeg(Kind::Ws, SETTING).unwrap();
    let first = wait_feed(&mut js.rx, WAIT, |_| true)
        .await
        .unwrap()
        .expect("a first JPEG");
    let slot = js.slot.clone();

    // The stream stops: the raw feed ends with "stopped" and the encoder
    // passes that end on to its subscribers.
    broker.client().stop("demo").unwrap();
    let err = wait_feed(&mut js.rx, WAIT, |_| false)
        .await
        .expect_err("the JPEG feed ends when the stream stops");
    assert_eq!(err.status, 404, "{}", err.message);
    assert!(err.message.contains("stopped"), "{}", err.message);
    assert!(!hub.reading());
    until("the encoder retires with the feed", || {
        !slot.running.load(Ordering::SeqCst)
    });

    // An encoder's first look now sees the ended raw feed (its subscriber
    // still holds the setting: only the end makes it retirable)...
    assert!(hub.encoder_may_retire(&slot));
    // ...the stream starts again and a subscriber comes, restarting the reader
    // (which clears the end) and the encoder...
    broker
        .client()
        .start(StartRequest::new("demo", SOURCE))
        .unwrap();
    let mut again = hub.subscribe_jpeg(Kind::Ws, SETTING).unwrap();
    assert!(
        hub.raw.borrow().end.is_none(),
        "the restart cleared the end"
    );
    // ...so the decision under `ctl` keeps the encoder.
    assert!(!hub.retire_encoder_locked(&lock(&hub.ctl), &slot, None));
    assert!(slot.running.load(Ordering::SeqCst));
    let next = wait_feed(&mut again.rx, WAIT, |j| j.seq > first.seq)
        .await
        .unwrap()
        .expect("JPEGs of the restarted stream");
    assert_eq!(&next.jpeg[..2], &[0xFF, 0xD8]);
    // The first subscription, which saw the end, is fed again too.
    wait_feed(&mut js.rx, WAIT, |j| j.seq > first.seq)
        .await
        .unwrap()
        .expect("the earlier subscription gets the restarted stream's JPEGs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_keeps_a_stream_whose_reader_runs_and_forgets_it_once_retired() {
    let broker = broker();
    let hub = Hub::new(config(&broker, Duration::from_secs(600)));
    let stream = hub.stream("demo");
    let mut sub = stream.subscribe(Kind::Http);
    sub.wait_frame(WAIT).await.unwrap().expect("a first frame");
    drop(sub);
    drop(stream);

    // Nobody subscribes and the broker no longer lists it (`known` is empty),
    // but the reader runs (idle is long): only its thread's clone says so.
    hub.prune(&[]);
    let stream = hub.get("demo").expect("a running reader is kept");
    assert!(stream.reading());

    // Once the reader retired and its thread returned, prune forgets the entry.
    broker.client().stop("demo").unwrap();
    until("the reader ends with the stream", || !stream.reading());
    // Two owners left: the table and this test.
    until("the reader thread returns", || {
        Arc::strong_count(&stream) == 2
    });
    drop(stream);
    hub.prune(&["other".to_string()]);
    assert!(
        hub.get("demo").is_none(),
        "a stopped, unused stream is forgotten"
    );
    // A known id is kept whatever its state.
    hub.stream("demo");
    hub.prune(&["demo".to_string()]);
    assert!(hub.get("demo").is_some());
}
