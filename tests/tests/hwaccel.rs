//! Hardware decode with a fallback to software: the real broker binary, the real
//! ffmpeg and the real RTSP test camera on 127.0.0.1. Where the machine has a
//! VA-API render node (`/dev/dri/renderD*`, seen by `build.rs`), `vaapi` must
//! decode in hardware or fall back with ffmpeg's own reason; where it has none,
//! `vaapi` must fall back and say so. Each of the two tests is ignored, with
//! the reason, on the machines where it cannot run. `auto` must produce frames
//! everywhere (ffmpeg itself picks software when nothing else works).

use std::time::Duration;

use framebroker_client::{
    HwAccel, PixelFormat, StartRequest, StreamState, StreamStats, VariantRequest,
};
use framebroker_tests::{decoders_of, processes_with_arg, Broker, Camera};

const READ: Duration = Duration::from_secs(15);

/// What a `vaapi` stream with a variant did on this machine.
struct VaapiRun {
    stats: StreamStats,
    /// The command line of the decoder (ffmpeg or ours) that decodes now.
    cmdline: String,
    log: String,
}

/// Starts a `vaapi` stream with a gray variant from the camera, checks that
/// frames flow on both and that the variant shares the decode, and returns
/// what the broker reports.
fn run_vaapi() -> VaapiRun {
    let cam = Camera::start(320, 240, 30, "smpte").unwrap();
    let broker = Broker::start(&[]).unwrap();
    let client = broker.client();
    let mut req = StartRequest::new("cam", &cam.url);
    req.hwaccel = Some(HwAccel::Vaapi);
    req.variants = vec![VariantRequest::new(
        "cam-gray",
        Some((160, 120)),
        PixelFormat::Gray,
    )];
    client.start(req).unwrap();
    let mut r = client.attach_wait("cam", READ).unwrap();
    let a = r.next(READ).unwrap();
    let b = r.next(READ).unwrap();
    assert!(b.meta.number > a.meta.number, "frames flow");
    let mut v = client.attach_wait("cam-gray", READ).unwrap();
    v.latest(READ).unwrap();
    let stats = client.stats("cam").unwrap();
    assert_eq!(stats.info.state, StreamState::Live);
    assert_eq!(
        client.stats("cam-gray").unwrap().decoder,
        stats.decoder,
        "the variant shares the decode"
    );
    assert_eq!(stats.reconnects, 0, "a fallback is not a reconnect");
    // ffmpeg, or our own decoder with `--decoder libav`, which takes the
    // software run (variants included).
    let decoders = decoders_of(&cam.url);
    assert_eq!(decoders.len(), 1, "{decoders:?}");
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", decoders[0])).unwrap();
    VaapiRun {
        stats,
        cmdline: String::from_utf8_lossy(&cmdline).replace('\0', " "),
        log: broker.log_text(),
    }
}

/// Checks a fallback: the stats give ffmpeg's reason, the log warns, and the
/// ffmpeg running now decodes in software.
fn assert_fell_back_with_a_reason(run: &VaapiRun) {
    let reason = run
        .stats
        .decoder
        .strip_prefix("software (vaapi unavailable: ")
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("decoder: {:?}", run.stats.decoder));
    assert!(
        !reason.trim().is_empty(),
        "the fallback gives ffmpeg's reason: {:?}",
        run.stats.decoder
    );
    assert!(
        run.log.contains("hardware decoder vaapi unavailable"),
        "a warning in the log"
    );
    assert!(
        !run.cmdline.contains("vaapi"),
        "the running ffmpeg decodes in software: {}",
        run.cmdline
    );
}

#[test]
#[cfg_attr(
    fb_render_node,
    ignore = "this machine has a VA-API render node (/dev/dri/renderD*), so the no-device \
              fallback cannot happen here; vaapi_with_a_device_decodes_in_hardware_or_says_why \
              checks this machine"
)]
fn vaapi_without_a_device_falls_back_to_software_and_says_so() {
    let run = run_vaapi();
    assert_fell_back_with_a_reason(&run);
}

#[test]
#[cfg_attr(
    not(fb_render_node),
    ignore = "no VA-API render node (/dev/dri/renderD*) on this machine: the hardware decode \
              path cannot run here; vaapi_without_a_device_falls_back_to_software_and_says_so \
              checks this machine"
)]
fn vaapi_with_a_device_decodes_in_hardware_or_says_why() {
    let run = run_vaapi();
    if run.stats.decoder == "vaapi" {
        // The hardware path: ffmpeg decodes with VA-API and nothing fell back.
        assert!(
            run.cmdline.contains("-hwaccel vaapi"),
            "the running ffmpeg decodes with vaapi: {}",
            run.cmdline
        );
        assert!(
            !run.log.contains("hardware decoder vaapi unavailable"),
            "no fallback warning while decoding in hardware"
        );
    } else {
        // A render node that VA-API cannot use (no driver for it, no access to it,
        // a codec it does not decode): the fallback, with ffmpeg's real error.
        assert_fell_back_with_a_reason(&run);
    }
}

#[test]
fn auto_produces_frames() {
    let cam = Camera::start(320, 240, 30, "smpte").unwrap();
    let broker = Broker::start(&[]).unwrap();
    let client = broker.client();
    let mut req = StartRequest::new("cam", &cam.url);
    req.hwaccel = Some(HwAccel::Auto);
    client.start(req).unwrap();
    let mut r = client.attach_wait("cam", READ).unwrap();
    let a = r.next(READ).unwrap();
    let b = r.next(READ).unwrap();
    assert!(b.meta.number > a.meta.number);
    let stats = client.stats("cam").unwrap();
    assert!(
        stats.decoder == "auto" || stats.decoder.starts_with("software (auto unavailable"),
        "decoder: {:?}",
        stats.decoder
    );
    let ffmpegs = processes_with_arg("ffmpeg", &cam.url);
    assert_eq!(ffmpegs.len(), 1, "{ffmpegs:?}");
}

/// Whether this machine's ffmpeg could use `decoder` at all: it was built with
/// it and, for v4l2m2m, a V4L2 device exists for it to open.
fn board_decoder_may_work(decoder: &str) -> bool {
    let out = std::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-decoders"])
        .output()
        .expect("run ffmpeg -decoders");
    let built = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .any(|w| w == decoder);
    let device = !decoder.contains("v4l2m2m")
        || std::fs::read_dir("/dev")
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with("video"))
            })
            .unwrap_or(false);
    built && device
}

/// The ARM boards' decoders (v4l2m2m on a Raspberry Pi 4, rkmpp on Rockchip) go to
/// ffmpeg as `-c:v <decoder>`. This machine has neither a V4L2 decoder device nor
/// an ffmpeg built with rkmpp, so what runs here is the fallback: frames flow in
/// software and the stats say which decoder was asked for and why it is not in
/// use. (The hardware path itself can only run on such a board.)
fn board_decoder_falls_back_to_software(hw: HwAccel, reason: &str) {
    let name = hw.name();
    assert!(
        !board_decoder_may_work(name),
        "this machine may really decode with {name}: the fallback cannot be tested here"
    );
    let cam = Camera::start(320, 240, 30, "smpte").unwrap();
    let broker = Broker::start(&[]).unwrap();
    let client = broker.client();
    let mut req = StartRequest::new("cam", &cam.url);
    req.hwaccel = Some(hw);
    client.start(req).unwrap();
    let mut r = client.attach_wait("cam", READ).unwrap();
    let a = r.next(READ).unwrap();
    let b = r.next(READ).unwrap();
    assert!(b.meta.number > a.meta.number, "frames flow");
    let stats = client.stats("cam").unwrap();
    assert_eq!(stats.info.state, StreamState::Live);
    assert_eq!(
        stats.decoder,
        format!("software ({name} unavailable: {reason})")
    );
    assert_eq!(stats.reconnects, 0, "a fallback is not a reconnect");
    assert!(broker
        .log_text()
        .contains(&format!("hardware decoder {name} unavailable")));
    // ffmpeg, or our own decoder with `--decoder libav`, which takes the
    // software run.
    let decoders = decoders_of(&cam.url);
    assert_eq!(decoders.len(), 1, "{decoders:?}");
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", decoders[0])).unwrap();
    assert!(
        !String::from_utf8_lossy(&cmdline).contains(name),
        "the running decoder decodes in software"
    );
}

#[test]
fn v4l2m2m_without_a_device_falls_back_to_software_and_says_so() {
    board_decoder_falls_back_to_software(HwAccel::H264V4l2m2m, "Could not find a valid device");
}

#[test]
fn rkmpp_missing_from_ffmpeg_falls_back_to_software_and_says_so() {
    board_decoder_falls_back_to_software(HwAccel::H264Rkmpp, "Unknown decoder 'h264_rkmpp'");
}

#[test]
fn software_is_the_default() {
    let broker = Broker::start(&[]).unwrap();
    let client = broker.client();
    client
        .start(StartRequest::new("t", "testsrc://?size=64x48&rate=10"))
        .unwrap();
    let mut r = client.attach_wait("t", READ).unwrap();
    r.latest(READ).unwrap();
    assert_eq!(client.stats("t").unwrap().decoder, "software");
}
