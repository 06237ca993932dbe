//! The control protocol between the broker and its clients.
//!
//! A connection is a session. Every message is a frame: a `u32` little-endian
//! length, then that many bytes of one `bincode` 2 value (little-endian,
//! fixed-width integers; see [`CONFIG`] and `proto/doc/control-protocol.md`).
//! The client speaks first with [`Request::Hello`]; the broker answers
//! [`Response::Hello`] or an [`ErrorCode::UnsupportedVersion`] error and closes.
//! After that each request gets exactly one response, in order.
//!
//! This file is the contract: changing a type or the order of variants or fields
//! changes the bytes, breaks `proto/testdata/golden.json`, and needs
//! [`PROTOCOL_VERSION`] bumped.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

use crate::layout::{PixelFormat, StreamState};
use crate::Error;

/// Version of the messages below.
pub const PROTOCOL_VERSION: u32 = 3;
/// `b"FBCP"` as a little-endian u32: the first field of every Hello.
pub const PROTOCOL_MAGIC: u32 = u32::from_le_bytes(*b"FBCP");
/// Largest frame (the bytes after the length) either side accepts. Checked before
/// any allocation.
pub const MAX_FRAME: u32 = 1 << 20;

/// The bincode configuration of the protocol: little-endian, fixed-width
/// integers, at most [`MAX_FRAME`] bytes per value.
pub const CONFIG: bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Fixint,
    bincode::config::Limit<{ MAX_FRAME as usize }>,
> = bincode::config::standard()
    .with_little_endian()
    .with_fixed_int_encoding()
    .with_limit::<{ MAX_FRAME as usize }>();

/// What a client asks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Always the first message, and always variant 0, in every version.
    Hello {
        magic: u32,
        protocol: u32,
        client: String,
    },
    /// Start a stream. The same id and URL again returns the running stream; a
    /// new id for a URL already decoded becomes an alias or a variant of that
    /// decode (see `proto/doc/control-protocol.md`).
    Start(StartRequest),
    /// Stop a stream; its readers see `stopped`.
    Stop { id: String },
    /// Every stream.
    List,
    /// One stream's counters.
    Stats { id: String },
    /// Become a reader of a stream: returns the segment to map.
    Attach { id: String },
    /// Stop being a reader (also implied when the connection closes).
    Detach { id: String },
    /// Re-read the broker's config file and apply its streams: what SIGHUP does on
    /// Unix, on every system (Windows has no SIGHUP). Answered by `Reloaded`.
    Reload,
}

/// Parameters of [`Request::Start`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StartRequest {
    /// Stream id (`[A-Za-z0-9_.-]{1,64}`, not starting with `.`, without `..`).
    pub id: String,
    /// Source: `rtsp://`, `rtsps://`, `testsrc://…`.
    pub url: String,
    /// Output width; `None` with `height` `None`: the camera's own size.
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub pixel_format: PixelFormat,
    /// Slots in the ring; `None`: the broker's default.
    pub ring_slots: Option<u32>,
    /// RTSP transport.
    pub transport: Transport,
    /// Start a second decode of a URL that is already running under another id
    /// (normally the new id reads the running decode: single ingest is the point).
    pub allow_duplicate_url: bool,
    /// Stop the stream once its last reader detaches (after the broker's grace period).
    pub on_demand: bool,
    /// Hardware decoder; `None`: the broker's default (software unless configured).
    /// Falls back to software decode when the device is missing (see the stats'
    /// `decoder`).
    pub hwaccel: Option<HwAccel>,
    /// Further outputs of the same decode, each its own stream with its own ring
    /// (at most [`MAX_VARIANTS`]).
    pub variants: Vec<VariantRequest>,
}

/// Most variants one start request may ask for.
pub const MAX_VARIANTS: usize = 8;

/// One more output of a stream's single decode: its own id, size and format, its
/// own ring, listed as a stream whose `parent` is the main stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VariantRequest {
    /// Stream id of the variant (same rules as any stream id).
    pub id: String,
    /// Output size; both `None`: the camera's own size.
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub pixel_format: PixelFormat,
}

impl VariantRequest {
    /// A variant of `width`×`height` (native size when `None`) in `pixel_format`.
    pub fn new(id: impl Into<String>, size: Option<(u32, u32)>, pixel_format: PixelFormat) -> Self {
        VariantRequest {
            id: id.into(),
            width: size.map(|s| s.0),
            height: size.map(|s| s.1),
            pixel_format,
        }
    }

    /// Parses the CLI form `ID:WxH:FORMAT` or `ID:native:FORMAT` (the format may be
    /// left out: bgr24).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = text.split(':');
        let id = parts.next().unwrap_or_default();
        let size = parts.next().unwrap_or("native");
        let format = parts.next().unwrap_or("bgr24");
        if id.is_empty() || parts.next().is_some() {
            return Err(format!(
                "variant {text:?}: expected ID:WIDTHxHEIGHT:FORMAT or ID:native:FORMAT"
            ));
        }
        let pixel_format = PixelFormat::from_name(format).ok_or_else(|| {
            format!(
                "variant {text:?}: unknown pixel format {format:?} (one of {})",
                PixelFormat::ALL.map(|f| f.name()).join(", ")
            )
        })?;
        let size = if size == "native" {
            None
        } else {
            let (w, h) = size
                .split_once('x')
                .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
                .ok_or_else(|| {
                    format!("variant {text:?}: size {size:?} is not WIDTHxHEIGHT or native")
                })?;
            Some((w, h))
        };
        Ok(VariantRequest::new(id, size, pixel_format))
    }
}

/// Hardware decoders: ffmpeg's `-hwaccel` methods, named as it spells them, and
/// the ARM boards' decoders that ffmpeg offers as decoders of their own (named as
/// ffmpeg's decoder, used with `-c:v` before the input; see [`HwAccel::decoder`]).
///
/// New variants go at the end: the wire carries the variant's index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HwAccel {
    /// Software decode.
    None,
    /// Whatever ffmpeg finds first (software when nothing works).
    Auto,
    Vaapi,
    Cuda,
    Qsv,
    VideoToolbox,
    /// V4L2 memory-to-memory H.264 decoder (Raspberry Pi 4 and other SoCs).
    H264V4l2m2m,
    /// V4L2 memory-to-memory HEVC decoder, where the SoC has one.
    HevcV4l2m2m,
    /// Rockchip MPP H.264 decoder (RK3588 and kin; needs an ffmpeg built with rkmpp).
    H264Rkmpp,
    /// Rockchip MPP HEVC decoder.
    HevcRkmpp,
}

impl HwAccel {
    pub const ALL: [HwAccel; 10] = [
        HwAccel::None,
        HwAccel::Auto,
        HwAccel::Vaapi,
        HwAccel::Cuda,
        HwAccel::Qsv,
        HwAccel::VideoToolbox,
        HwAccel::H264V4l2m2m,
        HwAccel::HevcV4l2m2m,
        HwAccel::H264Rkmpp,
        HwAccel::HevcRkmpp,
    ];

    /// The name our CLI, config and stats use: ffmpeg's `-hwaccel` method, or its
    /// decoder's name for the boards' decoders.
    pub const fn name(self) -> &'static str {
        match self {
            HwAccel::None => "none",
            HwAccel::Auto => "auto",
            HwAccel::Vaapi => "vaapi",
            HwAccel::Cuda => "cuda",
            HwAccel::Qsv => "qsv",
            HwAccel::VideoToolbox => "videotoolbox",
            HwAccel::H264V4l2m2m => "h264_v4l2m2m",
            HwAccel::HevcV4l2m2m => "hevc_v4l2m2m",
            HwAccel::H264Rkmpp => "h264_rkmpp",
            HwAccel::HevcRkmpp => "hevc_rkmpp",
        }
    }

    /// The ffmpeg decoder to force with `-c:v` (the boards' decoders, which are not
    /// `-hwaccel` methods); `None` for the `-hwaccel` methods and software.
    pub const fn decoder(self) -> Option<&'static str> {
        match self {
            HwAccel::H264V4l2m2m
            | HwAccel::HevcV4l2m2m
            | HwAccel::H264Rkmpp
            | HwAccel::HevcRkmpp => Some(self.name()),
            _ => None,
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|h| h.name() == name)
    }

    /// Every name, comma-separated (for help and error texts).
    pub fn names() -> String {
        Self::ALL.map(Self::name).join(", ")
    }
}

impl std::fmt::Display for HwAccel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl StartRequest {
    /// A request with the defaults: native size, bgr24, TCP.
    pub fn new(id: impl Into<String>, url: impl Into<String>) -> Self {
        StartRequest {
            id: id.into(),
            url: url.into(),
            width: None,
            height: None,
            pixel_format: PixelFormat::Bgr24,
            ring_slots: None,
            transport: Transport::Tcp,
            allow_duplicate_url: false,
            on_demand: false,
            hwaccel: None,
            variants: Vec::new(),
        }
    }
}

/// RTSP transport ffmpeg uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Transport {
    Tcp,
    Udp,
}

/// What the broker answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Hello {
        protocol: u32,
        broker: String,
    },
    /// `created` is false when the requested id was already running.
    Started {
        stream: StreamInfo,
        created: bool,
    },
    Stopped {
        id: String,
    },
    List {
        streams: Vec<StreamInfo>,
    },
    Stats {
        stats: StreamStats,
    },
    Attached(Attachment),
    Detached {
        id: String,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
    /// The config file was reloaded; `summary` says what changed (streams started,
    /// stopped, restarted; settings that need a restart).
    Reloaded {
        summary: String,
    },
}

/// A stream as listed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamInfo {
    pub id: String,
    /// Source URL with credentials redacted.
    pub url: String,
    pub state: StreamState,
    /// Frame geometry; 0×0 until the first segment exists (native size not known yet).
    pub width: u32,
    pub height: u32,
    pub pixel_format: PixelFormat,
    pub generation: u64,
    pub readers: u32,
    pub on_demand: bool,
    /// For a variant or an alias: the id of the main stream whose decode feeds it.
    pub parent: Option<String>,
    /// The frame rate the source declares (ffmpeg's stream information, e.g. the
    /// camera's SDP or a `testsrc` rate), in frames per second; 0.0 while not known
    /// yet. [`StreamStats::fps`] is the measured rate.
    pub declared_fps: f64,
}

/// Counters of one stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamStats {
    pub info: StreamInfo,
    /// Measured input rate over the last seconds.
    pub fps: f64,
    pub frames_written: u64,
    /// Damage seen: frames ffmpeg reported decoding from corrupt input (one per
    /// frame), plus frames lost between ffmpeg and the ring.
    pub frames_dropped: u64,
    /// ffmpeg restarts after the first start.
    pub reconnects: u64,
    /// Last error from ffmpeg or the supervisor, credentials redacted.
    pub last_error: Option<String>,
    pub uptime_ms: u64,
    pub bytes_per_frame: u64,
    /// Process id of the running ffmpeg (0 when none).
    pub ffmpeg_pid: u32,
    /// Who decodes: `software`, a hardware decoder's name (`vaapi`, …), or
    /// `software (vaapi unavailable: <reason>)` after a fallback.
    pub decoder: String,
}

/// Everything a reader needs to map a stream's ring.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attachment {
    pub id: String,
    /// POSIX shared-memory name (`/dev/shm` + this name without its leading slash).
    pub segment: String,
    pub generation: u64,
    pub width: u32,
    pub height: u32,
    pub pixel_format: PixelFormat,
    pub frame_bytes: u64,
    pub slot_count: u32,
    pub segment_size: u64,
}

/// Why a request failed; the message says more.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    BadRequest,
    UnsupportedVersion,
    InvalidId,
    InvalidUrl,
    InvalidGeometry,
    NotFound,
    AlreadyExists,
    LimitExceeded,
    /// The stream has no segment yet (starting, native size not known) or failed.
    NotReady,
    NotAttached,
    Internal,
}

fn codec_err(e: impl std::fmt::Display) -> Error {
    Error::Codec(e.to_string())
}

/// Encodes one value to the bytes of a frame body.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, Error> {
    let bytes = bincode::serde::encode_to_vec(value, CONFIG).map_err(codec_err)?;
    if bytes.len() > MAX_FRAME as usize {
        return Err(Error::FrameTooLarge {
            len: bytes.len() as u64,
            max: MAX_FRAME,
        });
    }
    Ok(bytes)
}

/// Decodes one frame body; trailing bytes are an error.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, CONFIG).map_err(codec_err)?;
    if used != bytes.len() {
        return Err(Error::Codec(format!(
            "{} trailing bytes after the message",
            bytes.len() - used
        )));
    }
    Ok(value)
}

/// Writes one frame (length + body) and flushes.
pub fn write_frame<T: Serialize>(w: &mut impl Write, value: &T) -> Result<(), Error> {
    let body = encode(value)?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame. `Ok(None)` on a clean end of stream before the length;
/// a length over [`MAX_FRAME`] is refused before allocating.
pub fn read_frame<T: serde::de::DeserializeOwned>(r: &mut impl Read) -> Result<Option<T>, Error> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => {
                return Err(Error::Codec(
                    "connection closed inside a frame length".into(),
                ))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_le_bytes(len);
    if len > MAX_FRAME {
        return Err(Error::FrameTooLarge {
            len: u64::from(len),
            max: MAX_FRAME,
        });
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body)?;
    decode(&body).map(Some)
}

/// Environment variable naming the control socket.
pub const SOCKET_ENV: &str = "FRAMEBROKER_SOCKET";

/// Where the broker listens unless told otherwise: `$FRAMEBROKER_SOCKET`, else
/// `$XDG_RUNTIME_DIR/framebroker/broker.sock`, else `/tmp/framebroker-<uid>/broker.sock`.
pub fn default_socket_path() -> std::path::PathBuf {
    #[cfg(windows)]
    {
        // Decision 14: `\\.\pipe\framebroker-<user>`, or the variable's pipe.
        let setting = std::env::var(SOCKET_ENV)
            .ok()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| {
                format!(
                    "framebroker-{}",
                    crate::win32::user_name().unwrap_or_else(|| "user".into())
                )
            });
        std::path::PathBuf::from(crate::naming::windows_pipe_name(&setting))
    }
    #[cfg(not(windows))]
    {
        if let Some(p) = std::env::var_os(SOCKET_ENV).filter(|p| !p.is_empty()) {
            return p.into();
        }
        if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
            return std::path::Path::new(&d)
                .join("framebroker")
                .join("broker.sock");
        }
        #[cfg(unix)]
        let uid = nix::unistd::getuid().as_raw();
        #[cfg(not(unix))]
        let uid = 0;
        std::path::PathBuf::from(format!("/tmp/framebroker-{uid}/broker.sock"))
    }
}

/// The client's first message.
pub fn hello(client: &str) -> Request {
    Request::Hello {
        magic: PROTOCOL_MAGIC,
        protocol: PROTOCOL_VERSION,
        client: client.into(),
    }
}

/// The message of the broker's [`ErrorCode::UnsupportedVersion`] refusal. It
/// names both versions in a fixed form (the same since protocol 1), so a client
/// of any version can read the broker's ([`refused_by_version`]) and tell its
/// user which side to upgrade.
pub fn version_refusal(broker: u32, client: u32) -> String {
    format!(
        "this broker speaks control protocol {broker}, the client {client}: upgrade the older side"
    )
}

/// The broker's protocol version, read from the message of its
/// [`ErrorCode::UnsupportedVersion`] refusal (made by [`version_refusal`]);
/// `None` for a message not in that form.
pub fn refused_by_version(message: &str) -> Option<u32> {
    let rest = message.split_once("speaks control protocol ")?.1;
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_refusal_names_the_brokers_version() {
        let m = version_refusal(3, 2);
        assert_eq!(
            m,
            "this broker speaks control protocol 3, the client 2: upgrade the older side"
        );
        assert_eq!(refused_by_version(&m), Some(3));
        assert_eq!(
            refused_by_version(&version_refusal(u32::MAX, 1)),
            Some(u32::MAX)
        );
        for other in [
            "",
            "speaks control protocol ",
            "speaks control protocol x",
            "speaks control protocol 99999999999",
            "bad hello",
        ] {
            assert_eq!(refused_by_version(other), None, "{other:?}");
        }
    }

    #[test]
    fn round_trip_every_request() {
        let reqs = [
            hello("t"),
            Request::Start(StartRequest::new("a", "rtsp://h/x")),
            Request::Stop { id: "a".into() },
            Request::List,
            Request::Stats { id: "a".into() },
            Request::Attach { id: "a".into() },
            Request::Detach { id: "a".into() },
        ];
        for r in reqs {
            let mut buf = Vec::new();
            write_frame(&mut buf, &r).unwrap();
            let back: Request = read_frame(&mut &buf[..]).unwrap().unwrap();
            assert_eq!(back, r);
        }
    }

    #[test]
    fn oversized_length_is_refused_before_allocating() {
        let mut frame = (u32::MAX).to_le_bytes().to_vec();
        frame.extend_from_slice(&[0; 8]);
        let e = read_frame::<Request>(&mut &frame[..]).unwrap_err();
        assert!(matches!(e, Error::FrameTooLarge { .. }), "{e}");
    }

    #[test]
    fn malformed_bodies_are_errors() {
        // Unknown variant 99.
        assert!(decode::<Request>(&99u32.to_le_bytes()).is_err());
        // A string whose length runs past the end.
        let mut b = 2u32.to_le_bytes().to_vec(); // Stop
        b.extend_from_slice(&1000u64.to_le_bytes());
        assert!(decode::<Request>(&b).is_err());
        // A string length of 2^60: must fail without trying to allocate it.
        let mut b = 2u32.to_le_bytes().to_vec();
        b.extend_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(decode::<Request>(&b).is_err());
        // Trailing bytes.
        let mut b = encode(&Request::List).unwrap();
        b.push(0);
        assert!(decode::<Request>(&b).is_err());
        // Truncated length and body.
        assert!(read_frame::<Request>(&mut &[1u8, 0][..]).is_err());
        assert!(read_frame::<Request>(&mut &[8u8, 0, 0, 0, 1][..]).is_err());
        // Clean end of stream.
        assert!(read_frame::<Request>(&mut &[][..]).unwrap().is_none());
    }

    use proptest::prelude::*;

    fn any_start() -> impl Strategy<Value = StartRequest> {
        (
            ".{0,80}",
            ".{0,300}",
            proptest::option::of(any::<u32>()),
            proptest::option::of(any::<u32>()),
            0usize..5,
            proptest::option::of(any::<u32>()),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            (
                proptest::option::of(0..HwAccel::ALL.len()),
                proptest::collection::vec(
                    (
                        ".{0,20}",
                        proptest::option::of(any::<u32>()),
                        proptest::option::of(any::<u32>()),
                        0usize..5,
                    ),
                    0..3,
                ),
            ),
        )
            .prop_map(
                |(
                    id,
                    url,
                    width,
                    height,
                    pf,
                    ring_slots,
                    udp,
                    allow_duplicate_url,
                    on_demand,
                    (hw, variants),
                )| {
                    StartRequest {
                        id,
                        url,
                        width,
                        height,
                        pixel_format: PixelFormat::ALL[pf],
                        ring_slots,
                        transport: if udp { Transport::Udp } else { Transport::Tcp },
                        allow_duplicate_url,
                        on_demand,
                        hwaccel: hw.map(|h| HwAccel::ALL[h]),
                        variants: variants
                            .into_iter()
                            .map(|(id, width, height, pf)| VariantRequest {
                                id,
                                width,
                                height,
                                pixel_format: PixelFormat::ALL[pf],
                            })
                            .collect(),
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn start_requests_round_trip(req in any_start()) {
            let r = Request::Start(req);
            let mut buf = Vec::new();
            write_frame(&mut buf, &r).unwrap();
            prop_assert_eq!(read_frame::<Request>(&mut &buf[..]).unwrap().unwrap(), r);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<Request>(&bytes);
            let _ = decode::<Response>(&bytes);
            let _ = read_frame::<Request>(&mut &bytes[..]);
        }

        #[test]
        fn truncated_frames_are_errors(req in any_start(), cut in 1usize..64) {
            let mut buf = Vec::new();
            write_frame(&mut buf, &Request::Start(req)).unwrap();
            let cut = cut.min(buf.len() - 1);
            prop_assert!(read_frame::<Request>(&mut &buf[..buf.len() - cut]).is_err());
        }
    }

    #[test]
    fn hwaccel_names_round_trip() {
        for h in HwAccel::ALL {
            assert_eq!(HwAccel::from_name(h.name()), Some(h));
        }
        assert_eq!(HwAccel::from_name("VAAPI"), None);
    }

    #[test]
    fn variant_cli_form() {
        let v = VariantRequest::parse("motion:320x240:gray").unwrap();
        assert_eq!(
            v,
            VariantRequest::new("motion", Some((320, 240)), PixelFormat::Gray)
        );
        let v = VariantRequest::parse("rec:native:rgb24").unwrap();
        assert_eq!(v, VariantRequest::new("rec", None, PixelFormat::Rgb24));
        assert_eq!(
            VariantRequest::parse("x").unwrap(),
            VariantRequest::new("x", None, PixelFormat::Bgr24)
        );
        for bad in [
            "",
            ":320x240:gray",
            "m:320:gray",
            "m:320x240:yuv",
            "m:1x2:gray:x",
        ] {
            assert!(VariantRequest::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hello_is_variant_zero_with_magic_first() {
        let b = encode(&hello("x")).unwrap();
        assert_eq!(&b[0..4], &0u32.to_le_bytes());
        assert_eq!(&b[4..8], b"FBCP");
        assert_eq!(&b[8..12], &PROTOCOL_VERSION.to_le_bytes());
    }
}
