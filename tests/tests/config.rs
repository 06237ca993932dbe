//! The config file end to end: streams at boot, on-demand streams, reload on
//! SIGHUP, refused files, variants and hwaccel, environment and flag precedence. Real broker, real
//! ffmpeg, real RTSP camera.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use framebroker_client::{Client, StreamState};
use framebroker_tests::{broker_bin, unique, wait_for, Broker, Camera, TempDir};
use nix::sys::signal::Signal;

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write config");
}

fn state_of(c: &Client, id: &str) -> Option<StreamState> {
    c.list()
        .ok()?
        .into_iter()
        .find(|s| s.id == id)
        .map(|s| s.state)
}

fn pid_alive(pid: u32) -> bool {
    // A reaped child leaves no /proc entry; a zombie counts as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.split(' ').nth(2).is_none_or(|st| st != "Z"))
}

/// Frames `reader` gets in `d`.
fn frames_in(r: &mut framebroker_client::Reader, d: Duration) -> u64 {
    let end = Instant::now() + d;
    let mut buf = vec![0u8; r.frame_bytes()];
    let mut n = 0;
    while Instant::now() < end {
        if r.next_into(&mut buf, Duration::from_millis(300)).is_ok() {
            n += 1;
        }
    }
    n
}

#[test]
fn always_streams_start_at_boot_and_on_demand_ones_wait_for_a_reader() {
    let cam = Camera::start(320, 240, 15, "smpte").unwrap();
    let dir = TempDir::new("cfg").unwrap();
    let prefix = format!("{}-", unique("fbc"));
    let cfg = dir.path().join("framebroker.toml");
    write(
        &cfg,
        &format!(
            r#"
[broker]
shm_prefix = "{prefix}"
idle_grace_ms = 800

[defaults]
pixel_format = "gray"

[[streams]]
id = "door"
url = "{url}"

[[streams]]
id = "lazy"
url = "testsrc://?size=160x120&rate=15"
mode = "on-demand"
pixel_format = "rgb24"
"#,
            url = cam.url
        ),
    );
    let b = Broker::start_configured(&cfg, &prefix, &[], &[]).unwrap();
    let c = b.client();

    // `always`: running from the start, with the [defaults] pixel format.
    let door = wait_for(Duration::from_secs(20), || {
        c.list()
            .ok()?
            .into_iter()
            .find(|s| s.id == "door" && s.state == StreamState::Live)
    })
    .expect("door live");
    assert_eq!((door.width, door.height), (320, 240));
    assert_eq!(door.pixel_format.name(), "gray");

    // `on-demand`: listed, not running, no segment.
    let lazy = c
        .list()
        .unwrap()
        .into_iter()
        .find(|s| s.id == "lazy")
        .unwrap();
    assert!(lazy.on_demand);
    assert_eq!(lazy.state, StreamState::Stopped);
    assert!(
        c.stats("lazy").is_err(),
        "no ffmpeg before the first reader"
    );
    assert!(!b.segments().iter().any(|s| s.contains("lazy")));

    // The first attach starts it; frames flow in its own pixel format.
    for round in 0..2 {
        let t = Instant::now();
        let mut r = c.attach_wait("lazy", Duration::from_secs(20)).unwrap();
        let first = t.elapsed();
        assert_eq!(r.pixel_format().name(), "rgb24");
        let n = frames_in(&mut r, Duration::from_secs(2));
        let pid = c.stats("lazy").unwrap().ffmpeg_pid;
        println!(
            "on-demand round {round}: attached after {first:?}, {n} frames in 2 s, ffmpeg {pid}"
        );
        assert!(n >= 3, "frames flow from an on-demand stream ({n})");
        assert!(pid_alive(pid));
        drop(r); // detaches
                 // After the idle grace period the stream and its ffmpeg are gone, and
                 // it is listed as waiting again.
        let gone = wait_for(Duration::from_secs(20), || {
            (!pid_alive(pid)
                && state_of(&c, "lazy") == Some(StreamState::Stopped)
                && !b.segments().iter().any(|s| s.contains("lazy")))
            .then_some(())
        });
        assert!(
            gone.is_some(),
            "on-demand stream, its ffmpeg and segment end after the grace period; log:\n{}",
            b.log_text()
        );
    }
    // The `always` stream was never touched.
    assert_eq!(state_of(&c, "door"), Some(StreamState::Live));
}

#[test]
fn sighup_applies_the_changes_and_leaves_other_streams_running() {
    let cam = Camera::start(320, 240, 15, "smpte").unwrap();
    let dir = TempDir::new("cfg").unwrap();
    let prefix = format!("{}-", unique("fbc"));
    let cfg = dir.path().join("framebroker.toml");
    let head = format!("[broker]\nshm_prefix = \"{prefix}\"\n");
    let keep = format!("[[streams]]\nid = \"keep\"\nurl = \"{}\"\n", cam.url);
    write(
        &cfg,
        &format!(
            "{head}{keep}\
             [[streams]]\nid = \"gone\"\nurl = \"testsrc://?size=160x120&rate=10\"\n\
             [[streams]]\nid = \"resize\"\nurl = \"testsrc://?size=320x240&rate=10\"\n"
        ),
    );
    let b = Broker::start_configured(&cfg, &prefix, &[], &[]).unwrap();
    let c = b.client();
    for id in ["keep", "gone", "resize"] {
        wait_for(Duration::from_secs(20), || {
            (state_of(&c, id) == Some(StreamState::Live)).then_some(())
        })
        .unwrap_or_else(|| panic!("{id} live; log:\n{}", b.log_text()));
    }
    let mut reader = c.attach_wait("keep", Duration::from_secs(10)).unwrap();
    let keep_before = c.stats("keep").unwrap();
    let gone_pid = c.stats("gone").unwrap().ffmpeg_pid;

    // Remove one, change one (size), add one; `keep` is the same text.
    write(
        &cfg,
        &format!(
            "{head}{keep}\
             [[streams]]\nid = \"resize\"\nurl = \"testsrc://?size=320x240&rate=10\"\nwidth = 160\nheight = 96\n\
             [[streams]]\nid = \"new\"\nurl = \"testsrc://?size=160x120&rate=10\"\nmode = \"always\"\n"
        ),
    );
    b.signal(Signal::SIGHUP);
    // Read through the reload: the kept stream must not miss a beat.
    let during = frames_in(&mut reader, Duration::from_secs(2));
    let applied = wait_for(Duration::from_secs(20), || {
        let l = c.list().ok()?;
        let has = |id: &str| {
            l.iter()
                .find(|s| s.id == id && s.state == StreamState::Live)
        };
        let resized = has("resize").filter(|s| (s.width, s.height) == (160, 96));
        (l.iter().all(|s| s.id != "gone") && has("new").is_some() && resized.is_some())
            .then_some(())
    });
    assert!(applied.is_some(), "reload applied; log:\n{}", b.log_text());
    assert!(
        wait_for(Duration::from_secs(5), || (!pid_alive(gone_pid))
            .then_some(()))
        .is_some(),
        "removed stream's ffmpeg ended"
    );
    let keep_after = c.stats("keep").unwrap();
    println!(
        "kept stream: {during} frames in the 2 s around the reload, ffmpeg {} -> {}",
        keep_before.ffmpeg_pid, keep_after.ffmpeg_pid
    );
    assert_eq!(
        keep_after.ffmpeg_pid, keep_before.ffmpeg_pid,
        "not restarted"
    );
    assert_eq!(keep_after.info.generation, keep_before.info.generation);
    assert_eq!(keep_after.reconnects, keep_before.reconnects);
    assert!(
        during >= 10,
        "the kept stream kept delivering ({during} frames in 2 s)"
    );
    assert!(b
        .log_text()
        .contains("added: new; removed: gone; changed: resize"));
}

#[test]
fn a_bad_file_on_reload_is_refused_with_its_place_and_nothing_changes() {
    let dir = TempDir::new("cfg").unwrap();
    let prefix = format!("{}-", unique("fbc"));
    let cfg = dir.path().join("framebroker.toml");
    let good = format!(
        "[broker]\nshm_prefix = \"{prefix}\"\n\
         [[streams]]\nid = \"a\"\nurl = \"testsrc://?size=160x120&rate=10\"\n"
    );
    write(&cfg, &good);
    let b = Broker::start_configured(&cfg, &prefix, &[], &[]).unwrap();
    let c = b.client();
    wait_for(Duration::from_secs(20), || {
        (state_of(&c, "a") == Some(StreamState::Live)).then_some(())
    })
    .expect("a live");
    let before = c.stats("a").unwrap().ffmpeg_pid;

    // Each broken file: a removal of `a` plus an error, so applying any part
    // of it would show.
    let broken = [
        (
            "[broker]\nshm_prefix = \"x-\"\nmax_stream = 3\n",
            3,
            "max_stream",
        ),
        (
            "[[streams]]\nid = \"b\"\nurl = \"testsrc://?size=160x120\"\npixel_format = \"bgra\"\n",
            4,
            "pixel_format",
        ),
        (
            "[[streams]]\nid = \"b\"\nurl = \"smb://host/share\"\n",
            3,
            "streams[0].url",
        ),
    ];
    for (n, (text, line, key)) in broken.iter().enumerate() {
        write(&cfg, text);
        b.signal(Signal::SIGHUP);
        let want = format!("{}:{line}:", cfg.display());
        let logged = wait_for(Duration::from_secs(10), || {
            let log = b.log_text();
            (log.matches("refused, running config unchanged").count() > n).then_some(log)
        })
        .expect("refusal logged");
        let last = logged
            .lines()
            .rfind(|l| l.contains("refused, running config unchanged"))
            .unwrap();
        println!("{last}");
        assert!(last.contains(&want) && last.contains(key), "{last}");
        assert_eq!(state_of(&c, "a"), Some(StreamState::Live));
        assert_eq!(c.stats("a").unwrap().ffmpeg_pid, before);
        assert_eq!(c.list().unwrap().len(), 1);
    }
    // A good file afterwards is applied as usual.
    write(&cfg, &good.replace("id = \"a\"", "id = \"z\""));
    b.signal(Signal::SIGHUP);
    assert!(wait_for(Duration::from_secs(20), || {
        (state_of(&c, "z") == Some(StreamState::Live) && state_of(&c, "a").is_none()).then_some(())
    })
    .is_some());
}

/// `framebroker reload`: the control request that does what SIGHUP does, on every
/// system. It answers with what changed, refuses a broken file with its place
/// (changing nothing), and says when there is no file to reload.
#[test]
fn the_reload_command_applies_the_file_and_reports_refusals() {
    let dir = TempDir::new("cfg").unwrap();
    let prefix = format!("{}-", unique("fbc"));
    let cfg = dir.path().join("framebroker.toml");
    let head = format!("[broker]\nshm_prefix = \"{prefix}\"\n");
    // One URL per id: the broker refuses a camera configured twice.
    let stream = |id: &str, rate: u32| {
        format!("[[streams]]\nid = \"{id}\"\nurl = \"testsrc://?size=160x120&rate={rate}\"\n")
    };
    write(&cfg, &format!("{head}{}", stream("a", 10)));
    let b = Broker::start_configured(&cfg, &prefix, &[], &[]).unwrap();
    let c = b.client();
    let reload = || {
        Command::new(broker_bin())
            .arg("--socket")
            .arg(&b.socket)
            .arg("reload")
            .output()
            .unwrap()
    };

    write(
        &cfg,
        &format!("{head}{}{}", stream("a", 10), stream("b", 12)),
    );
    let out = reload();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("added: b; removed: -; changed: -; unchanged: 1"),
        "{said}"
    );
    assert!(wait_for(Duration::from_secs(20), || {
        (state_of(&c, "b") == Some(StreamState::Live)).then_some(())
    })
    .is_some());

    write(
        &cfg,
        &format!("{head}{}pixel_format = \"bgra\"\n", stream("c", 14)),
    );
    let out = reload();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("running config unchanged") && err.contains("pixel_format"),
        "{err}"
    );
    assert_eq!(c.list().unwrap().len(), 2, "nothing changed");

    // A broker without a config file says so.
    let plain = Broker::start(&[]).unwrap();
    let out = Command::new(broker_bin())
        .arg("--socket")
        .arg(&plain.socket)
        .arg("reload")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("without --config"), "{err}");
}

#[test]
fn a_bad_file_at_start_names_file_line_and_key_and_exits() {
    let dir = TempDir::new("cfg").unwrap();
    let cfg = dir.path().join("bad.toml");
    write(
        &cfg,
        "[broker]\nmax_streams = 4\nshm_budget_mb = \"lots\"\n",
    );
    let sock = dir.path().join("s.sock");
    let out = Command::new(broker_bin())
        .args(["serve", "--socket"])
        .arg(&sock)
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    println!("{err}");
    assert!(!out.status.success());
    assert!(err.contains(&format!("{}:3:", cfg.display())), "{err}");
    assert!(err.contains("shm_budget_mb"), "{err}");
    assert!(!sock.exists(), "nothing started");

    let missing = dir.path().join("missing.toml");
    let out = Command::new(broker_bin())
        .args(["serve", "--config"])
        .arg(&missing)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("missing.toml") && err.contains("cannot read"),
        "{err}"
    );
}

#[test]
fn variants_and_hwaccel_in_the_file_run_from_one_decode() {
    let cam = Camera::start(320, 240, 15, "smpte").unwrap();
    let dir = TempDir::new("cfg").unwrap();
    let prefix = format!("{}-", unique("fbc"));
    let cfg = dir.path().join("framebroker.toml");
    write(
        &cfg,
        &format!(
            r#"
[broker]
shm_prefix = "{prefix}"

[[streams]]
id = "gate"
url = "{url}"
hwaccel = "vaapi"
variants = [
  {{ id = "gate_small", width = 160, height = 120, pixel_format = "gray" }},
  {{ id = "gate_rgb", pixel_format = "rgb24" }},
]
"#,
            url = cam.url
        ),
    );
    let b = Broker::start_configured(&cfg, &prefix, &[], &[]).unwrap();
    let c = b.client();
    for (id, (w, h), fmt) in [
        ("gate", (320, 240), "bgr24"),
        ("gate_small", (160, 120), "gray"),
        ("gate_rgb", (320, 240), "rgb24"),
    ] {
        let mut r = c
            .attach_wait(id, Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("{id}: {e}; log:\n{}", b.log_text()));
        assert_eq!((r.width(), r.height()), (w, h), "{id}");
        assert_eq!(r.pixel_format().name(), fmt, "{id}");
        assert!(
            frames_in(&mut r, Duration::from_secs(2)) >= 3,
            "{id}: frames flow"
        );
    }
    let list = c.list().unwrap();
    for v in ["gate_small", "gate_rgb"] {
        let s = list.iter().find(|s| s.id == v).unwrap();
        assert_eq!(s.parent.as_deref(), Some("gate"), "{v}");
    }
    // The file's hwaccel reached ffmpeg: it runs on the device, or the stream
    // fell back to software and says why. Either way, one ffmpeg for three rings.
    let decoder = c.stats("gate").unwrap().decoder;
    assert!(decoder.contains("vaapi"), "decoder: {decoder:?}");
    assert_eq!(c.stats("gate_small").unwrap().decoder, decoder);
    let ffmpegs = framebroker_tests::decoders_of(&cam.url);
    assert_eq!(ffmpegs.len(), 1, "one decode: {ffmpegs:?}");

    // The command line shows the family and the decoder.
    let ls = b.cli(&["streams", "ls"]);
    assert!(ls.contains("(variant of gate)"), "{ls}");
    let stats = b.cli(&["streams", "stats", "gate_small"]);
    assert!(stats.contains("variant of      gate"), "{stats}");
    assert!(
        stats.contains(&format!("decoder         {decoder}")),
        "{stats}"
    );
}

#[test]
fn flags_beat_the_environment_which_beats_the_file() {
    let dir = TempDir::new("cfg").unwrap();
    let cfg = dir.path().join("framebroker.toml");
    let file_prefix = format!("{}-", unique("fbfile"));
    let env_prefix = format!("{}-", unique("fbenv"));
    write(
        &cfg,
        &format!(
            "[broker]\nshm_prefix = \"{file_prefix}\"\nmax_streams = 1\n\
             [defaults]\npixel_format = \"gray\"\n\
             [[streams]]\nid = \"a\"\nurl = \"testsrc://?size=160x120&rate=10\"\n"
        ),
    );
    // The environment moves the prefix and the default pixel format; a flag
    // raises the stream limit the file set.
    let b = Broker::start_configured(
        &cfg,
        &env_prefix,
        &["--max-streams", "2"],
        &[
            ("FRAMEBROKER_SHM_PREFIX", env_prefix.as_str()),
            ("FRAMEBROKER_DEFAULTS_PIXEL_FORMAT", "rgb24"),
            ("FRAMEBROKER_MAX_STREAMS", "1"),
        ],
    )
    .unwrap();
    let c = b.client();
    let a = wait_for(Duration::from_secs(20), || {
        c.list()
            .ok()?
            .into_iter()
            .find(|s| s.id == "a" && s.state == StreamState::Live)
    })
    .expect("a live");
    assert_eq!(a.pixel_format.name(), "rgb24", "environment beats the file");
    assert!(
        b.segments()
            .iter()
            .any(|s| s.starts_with(&format!("/{env_prefix}"))),
        "segments use the prefix from the environment: {:?}",
        b.segments()
    );
    assert!(framebroker_proto::shm::list(&file_prefix).is_empty());
    let mut second = framebroker_client::StartRequest::new("b", "testsrc://?size=160x120&rate=5");
    second.on_demand = false;
    c.start(second)
        .expect("the flag's --max-streams 2 beats the environment's 1");

    // A bad value in the environment is refused by name.
    let out = Command::new(broker_bin())
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("FRAMEBROKER_MAX_STREAMS", "many")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("FRAMEBROKER_MAX_STREAMS"), "{err}");
}

#[test]
fn the_gateway_reads_its_section_and_the_broker_socket_from_the_same_file() {
    use std::io::{Read, Write};
    let dir = TempDir::new("cfg").unwrap();
    let prefix = format!("{}-", unique("fbc"));
    let sock = dir.path().join("broker.sock");
    let token = dir.path().join("token");
    write(&token, "s3cret-token\n");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = dir.path().join("framebroker.toml");
    write(
        &cfg,
        &format!(
            "[broker]\nsocket = \"{}\"\nshm_prefix = \"{prefix}\"\n\
             [[streams]]\nid = \"a\"\nurl = \"testsrc://?size=160x120&rate=10\"\n\
             [gateway]\nlisten = \"127.0.0.1:{port}\"\ntoken_file = \"{}\"\n",
            sock.display(),
            token.display()
        ),
    );
    // The harness passes its own --socket; the file's is used by the gateway,
    // so point the broker at the same path.
    let _b = Broker::start_at(&sock, &prefix, &["--config", cfg.to_str().unwrap()]).unwrap();
    let mut gw = Command::new(framebroker_tests::workspace_bin("framebroker-gateway"))
        .arg("--config")
        .arg(&cfg)
        .env_remove("FRAMEBROKER_SOCKET")
        .env_remove("FRAMEBROKER_TOKEN")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let get = |path: &str, auth: Option<&str>| -> Option<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let auth = auth.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n"
        )
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    };
    let listed = wait_for(Duration::from_secs(20), || {
        get("/api/streams", Some("s3cret-token")).filter(|r| r.contains("\"a\""))
    });
    let refused = get("/api/streams", None);
    let _ = gw.kill();
    let _ = gw.wait();
    let listed = listed.expect("gateway on the configured port lists the broker's stream");
    assert!(listed.starts_with("HTTP/1.1 200"), "{listed}");
    let refused = refused.unwrap_or_default();
    assert!(
        refused.starts_with("HTTP/1.1 401"),
        "token from token_file required: {refused}"
    );
}

/// Every ```toml block of the README and docs/ is a valid config (with the
/// file policy the broker has by default).
#[test]
fn every_toml_example_in_the_docs_is_a_valid_config() {
    let root = framebroker_tests::repo_root();
    let mut checked = 0;
    for doc in ["README.md", "docs/CONFIG.md", "docs/DEPLOY.md"] {
        let Ok(text) = std::fs::read_to_string(root.join(doc)) else {
            assert_ne!(doc, "README.md", "the README exists");
            continue;
        };
        let mut rest = text.as_str();
        while let Some(start) = rest.find("```toml\n") {
            let body = &rest[start + 8..];
            let end = body.find("```").expect("closed block");
            let origin = format!("{doc} block {checked}");
            let c = framebroker_proto::config::Config::parse(&origin, &body[..end])
                .unwrap_or_else(|e| panic!("{e}"));
            c.streams().unwrap_or_else(|e| panic!("{e}"));
            checked += 1;
            rest = &body[end + 3..];
        }
    }
    println!("{checked} config examples parsed");
    assert!(checked >= 2, "the README and docs/CONFIG.md have examples");
}
