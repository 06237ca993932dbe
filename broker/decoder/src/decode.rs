//! The decoder proper: libavformat reads the source, libavcodec decodes, each
//! frame goes into a staging buffer and its message onto stdout.
//!
//! It mirrors what the broker asks of ffmpeg for a network source
//! (`-rtsp_transport`, `-timeout`, `-analyzeduration 500000 -probesize 500000
//! -fflags nobuffer -flags low_delay`, `-copyts`), so the frames,
//! their timestamps and the log lines the broker classifies are the same. Its
//! threads differ on small pictures (`framebroker_decoder::decode_threads`).

use std::collections::HashMap;
use std::ffi::c_void;
use std::io::Write;
use std::process::ExitCode;

use ffmpeg_next as ff;
use framebroker_decoder::{
    Ack, Layout, Message, Place, ACK_BYTES, MAX_BUFFERS, MAX_OUTPUTS, READY, STAGING_FD, URL_ENV,
};

use crate::pool::Pool;

struct Args {
    transport: Option<String>,
    timeout_us: u64,
    /// Each output's size (`None`: the decoded size): the stream, then its variants.
    outputs: Vec<Option<(u32, u32)>>,
    buffers: u32,
    version: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        transport: None,
        timeout_us: 5_000_000,
        outputs: Vec::new(),
        buffers: 3,
        version: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--version" => a.version = true,
            "--transport" => {
                let t = value()?;
                if t != "tcp" && t != "udp" {
                    return Err(format!("--transport {t}: tcp or udp"));
                }
                a.transport = Some(t);
            }
            "--timeout-us" => {
                a.timeout_us = value()?.parse().map_err(|e| format!("--timeout-us: {e}"))?
            }
            "--output" => {
                let v = value()?;
                let size = if v == "native" {
                    None
                } else {
                    Some(
                        v.split_once('x')
                            .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
                            .filter(|&(w, h): &(u32, u32)| w > 0 && h > 0)
                            .ok_or_else(|| format!("--output {v}: native or WIDTHxHEIGHT"))?,
                    )
                };
                a.outputs.push(size);
            }
            "--buffers" => {
                a.buffers = value()?
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_BUFFERS).contains(n))
                    .ok_or_else(|| format!("--buffers: 1 to {MAX_BUFFERS}"))?
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if a.outputs.is_empty() {
        a.outputs.push(None);
    }
    if a.outputs.len() > MAX_OUTPUTS as usize {
        return Err(format!("at most {MAX_OUTPUTS} outputs"));
    }
    Ok(a)
}

pub fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("[fatal] {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = ff::init() {
        eprintln!("[fatal] cannot initialise libav: {e}");
        return ExitCode::from(2);
    }
    if args.version {
        // SAFETY: av_version_info returns a static NUL-terminated string.
        let v = unsafe { std::ffi::CStr::from_ptr(ff::ffi::av_version_info()) };
        println!(
            "framebroker-decoder {} libav {}",
            env!("CARGO_PKG_VERSION"),
            v.to_string_lossy()
        );
        return ExitCode::SUCCESS;
    }
    let Ok(url) = std::env::var(URL_ENV) else {
        eprintln!("[fatal] no source: {URL_ENV} is not set");
        return ExitCode::from(2);
    };
    // SAFETY: plain setters of libavutil's global log state, called before any
    // other thread exists. ffmpeg's `-loglevel level+info` sets the same.
    unsafe {
        ff::ffi::av_log_set_flags(ff::ffi::AV_LOG_PRINT_LEVEL | ff::ffi::AV_LOG_SKIP_REPEATED);
        ff::ffi::av_log_set_level(ff::ffi::AV_LOG_INFO);
    }
    ff::format::network::init();
    match run(&args, &url) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("[error] {e}");
            ExitCode::from(1)
        }
    }
}

/// One output's staging buffers: the memory file at fd `STAGING_FD + k`,
/// mapped once the broker has sized it.
struct Staging {
    ptr: *mut u8,
    len: usize,
    frame_bytes: usize,
    free: Vec<u32>,
}

impl Staging {
    fn map(fd: i32, buffers: u32, frame_bytes: usize) -> Result<Staging, String> {
        let len = frame_bytes
            .checked_mul(buffers as usize)
            .ok_or("staging size overflows")?;
        // SAFETY: `stat` is plain old data, for which all-zero bytes are valid.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat on a descriptor number writes only into `st`; a closed or
        // foreign descriptor makes it fail, which is reported.
        let status = unsafe { libc::fstat(fd, &mut st) };
        if status != 0 {
            return Err(format!(
                "no staging memory at fd {fd}: {}",
                std::io::Error::last_os_error()
            ));
        }
        if (st.st_size as u64) < len as u64 {
            return Err(format!(
                "the staging memory has {} bytes, {len} needed",
                st.st_size
            ));
        }
        // SAFETY: the broker sized the memory file to at least `len` (checked
        // above) and sealed it against shrinking.
        let ptr = unsafe { crate::pool::map_shared(fd, len) }
            .map_err(|e| format!("cannot map the staging memory: {e}"))?;
        Ok(Staging {
            ptr,
            len,
            frame_bytes,
            free: (0..buffers).rev().collect(),
        })
    }

    /// Buffer `k` to write into. The broker does not read it until the frame's
    /// message is sent, and returns it before we take it again.
    fn buffer(&mut self, k: u32) -> &mut [u8] {
        let start = k as usize * self.frame_bytes;
        assert!(start + self.frame_bytes <= self.len);
        // SAFETY: in bounds of the mapping (asserted); the protocol gives this
        // process sole use of buffer `k` between the broker's return of `k` and
        // our next message naming it, and `&mut self` keeps it unique here.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), self.frame_bytes) }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`; no slice of it outlives
        // `self` (they borrow it).
        unsafe { libc::munmap(self.ptr.cast::<c_void>(), self.len) };
    }
}

/// How decoded frames become staged ones.
struct Output {
    width: u32,
    height: u32,
    layout: Layout,
    /// Set when the frames must be scaled (a size was asked for).
    scaler: Option<(ff::software::scaling::Context, ff::frame::Video)>,
    /// The decoded frames' format and size, which must not change.
    input: (ff::format::Pixel, u32, u32),
    /// Frames go over in place when they are in the pool (decoded size and
    /// layout, and the pool in use).
    in_place: bool,
}

fn send(out: &mut impl Write, m: Message) -> Result<(), String> {
    out.write_all(&m.encode())
        .and_then(|()| out.flush())
        .map_err(|e| format!("the broker is gone ({e})"))
}

fn run(args: &Args, url: &str) -> Result<(), String> {
    let shown = framebroker_proto::naming::redact_text(url);
    let mut opts = ff::Dictionary::new();
    if url.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("rtsp")) {
        opts.set("rtsp_transport", args.transport.as_deref().unwrap_or("tcp"));
    }
    opts.set("timeout", &args.timeout_us.to_string());
    opts.set("analyzeduration", "500000");
    opts.set("probesize", "500000");
    opts.set("fflags", "nobuffer");
    let mut ictx =
        ff::format::input_with_dictionary(&url, opts).map_err(|e| format!("{shown}: {e}"))?;
    let (index, time_base, fps, parameters) = {
        let st = ictx
            .streams()
            .best(ff::media::Type::Video)
            .ok_or_else(|| format!("{shown}: no video stream"))?;
        let rate = [st.avg_frame_rate(), st.rate()]
            .into_iter()
            .find(|r| r.numerator() > 0 && r.denominator() > 0);
        let fps_milli = rate.map_or(0, |r| {
            (i64::from(r.numerator()) * 1000 / i64::from(r.denominator())).max(0) as u64
        });
        (st.index(), st.time_base(), fps_milli, st.parameters())
    };
    let codec = ff::codec::decoder::find(parameters.id())
        .ok_or_else(|| format!("no decoder for {:?}", parameters.id()))?;
    let mut ctx = ff::codec::Context::from_parameters(parameters).map_err(|e| e.to_string())?;
    // Decode straight into the shared frame pool where it can hold the frames.
    let pool = Pool::leak();
    // SAFETY: the context is not open yet; `opaque` gets a pool that lives for
    // the rest of the process, which is what `pool::get_buffer2` relies on. The
    // size was copied from the stream's parameters (0 when unknown).
    let (width, height) = unsafe {
        let c = ctx.as_mut_ptr();
        (*c).opaque = (pool as *const Pool).cast_mut().cast();
        (*c).get_buffer2 = Some(crate::pool::get_buffer2);
        ((*c).width, (*c).height)
    };
    let mut copts = ff::Dictionary::new();
    copts.set(
        "threads",
        framebroker_decoder::decode_threads(width, height),
    );
    copts.set("flags", "low_delay");
    let mut decoder = ctx
        .decoder()
        .open_as_with(codec, copts)
        .and_then(|d| d.video())
        .map_err(|e| format!("cannot open the decoder: {e}"))?;

    let mut stdout = std::io::stdout().lock();
    let mut acks = Acks::default();
    // Each output's plan and staging buffers, once the first frame is decoded.
    let mut outputs: Vec<(Output, Staging)> = Vec::new();
    // A reference to each pool frame the broker has not returned, per output.
    let mut inflight: HashMap<(u32, u32), ff::frame::Video> = HashMap::new();
    let mut frame = ff::frame::Video::empty();
    let mut packet = ff::Packet::empty();
    let pts_ns = |pts: i64| -> i64 {
        let ns = i128::from(pts) * i128::from(time_base.numerator()) * 1_000_000_000
            / i128::from(time_base.denominator().max(1));
        ns.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
    };

    let mut ended = false;
    while !ended {
        match packet.read(&mut ictx) {
            Ok(()) => {
                if packet.stream() != index {
                    continue;
                }
                if let Err(e) = decoder.send_packet(&packet) {
                    // ffmpeg's words, which the broker counts as one damaged frame.
                    eprintln!("[error] Error while decoding stream #0:0: {e}");
                    continue;
                }
            }
            Err(ff::Error::Eof) => {
                let _ = decoder.send_eof();
                ended = true;
            }
            Err(e) => return Err(format!("{shown}: {e}")),
        }
        while decoder.receive_frame(&mut frame).is_ok() {
            if outputs.is_empty() {
                outputs = start_outputs(args, &frame, fps, pool, &mut stdout, &mut acks)?;
            }
            let pts = frame.timestamp().map(pts_ns);
            let slot = pool.slot_of(&frame);
            // Returned frames first: they free pool slots and staging buffers.
            for a in acks.read(false)? {
                returned(a, &mut outputs, &mut inflight, args.buffers)?;
            }
            for k in 0..outputs.len() {
                let place = match slot.filter(|_| outputs[k].0.in_place) {
                    Some(s) => {
                        // One more reference for this output; the broker returns it.
                        let mut r = ff::frame::Video::empty();
                        // SAFETY: both frames are valid; av_frame_ref only adds a
                        // reference to `frame`'s buffers.
                        if unsafe { ff::ffi::av_frame_ref(r.as_mut_ptr(), frame.as_ptr()) } < 0 {
                            return Err("cannot reference a decoded frame".into());
                        }
                        inflight.insert((k as u32, s), r);
                        Place::Pool(s)
                    }
                    None => {
                        while outputs[k].1.free.is_empty() {
                            for a in acks.read(true)? {
                                returned(a, &mut outputs, &mut inflight, args.buffers)?;
                            }
                        }
                        let (o, s) = &mut outputs[k];
                        let b = s.free.pop().expect("checked above");
                        stage(o, &frame, s.buffer(b))?;
                        Place::Staging(b)
                    }
                };
                send(
                    &mut stdout,
                    Message::Frame {
                        output: k as u32,
                        place,
                        pts_ns: pts,
                    },
                )?;
            }
        }
    }
    Err(format!("{shown}: end of stream"))
}

/// The broker returned a frame: a staging buffer is free again, or this
/// output's reference to a pool frame goes.
fn returned(
    a: Ack,
    outputs: &mut [(Output, Staging)],
    inflight: &mut HashMap<(u32, u32), ff::frame::Video>,
    buffers: u32,
) -> Result<(), String> {
    let bad = || format!("the broker returned {a:?}, which it does not hold");
    match a.place {
        Place::Staging(b) => {
            let s = &mut outputs.get_mut(a.output as usize).ok_or_else(bad)?.1;
            if b >= buffers || s.free.contains(&b) {
                return Err(bad());
            }
            s.free.push(b);
        }
        Place::Pool(slot) => {
            inflight.remove(&(a.output, slot)).ok_or_else(bad)?;
        }
    }
    Ok(())
}

/// The broker's answers on stdin: one READY byte, then two-byte acks.
#[derive(Default)]
struct Acks {
    pending: Vec<u8>,
}

impl Acks {
    /// Reads from stdin what is there (`wait`: at least one byte), or fails when
    /// the broker is gone.
    fn fill(&mut self, wait: bool) -> Result<(), String> {
        let mut pfd = libc::pollfd {
            fd: 0,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, if wait { -1 } else { 0 }) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return if e.kind() == std::io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(format!("the broker is gone ({e})"))
            };
        }
        if n == 0 {
            return Ok(());
        }
        let mut buf = [0u8; 256];
        // SAFETY: reads into a local buffer of the given length from stdin.
        let got = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
        match got {
            0 => Err("the broker is gone (stdin closed)".into()),
            n if n < 0 => {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    Ok(())
                } else {
                    Err(format!("the broker is gone ({e})"))
                }
            }
            n => {
                self.pending.extend_from_slice(&buf[..n as usize]);
                Ok(())
            }
        }
    }

    /// The broker's READY byte (blocks).
    fn ready(&mut self) -> Result<(), String> {
        while self.pending.is_empty() {
            self.fill(true)?;
        }
        match self.pending.remove(0) {
            READY => Ok(()),
            b => Err(format!("the broker answered {b:#x}, not ready")),
        }
    }

    /// The acks that arrived (`wait`: at least one).
    fn read(&mut self, wait: bool) -> Result<Vec<Ack>, String> {
        self.fill(false)?;
        while wait && self.pending.len() < ACK_BYTES {
            self.fill(true)?;
        }
        let whole = self.pending.len() / ACK_BYTES * ACK_BYTES;
        let acks = self.pending[..whole]
            .chunks_exact(ACK_BYTES)
            .map(|c| Ack::decode([c[0], c[1]]))
            .collect();
        self.pending.drain(..whole);
        Ok(acks)
    }
}

/// Plans every output from the first decoded frame and sends their geometries.
/// The staging memory is mapped once the broker has said ready (`ready`).
fn start_outputs(
    args: &Args,
    frame: &ff::frame::Video,
    fps_milli: u64,
    pool: &Pool,
    stdout: &mut impl Write,
    acks: &mut Acks,
) -> Result<Vec<(Output, Staging)>, String> {
    // A yuvj420p frame is full range whatever its range field says.
    let range = if frame.format() == ff::format::Pixel::YUVJ420P {
        2
    } else {
        ff::ffi::AVColorRange::from(frame.color_range()) as u32
    };
    let colorspace = ff::ffi::AVColorSpace::from(frame.color_space()) as u32;
    let pooled = pool.slot_of(frame).and(pool.layout());
    let mut plans = Vec::new();
    for (k, size) in args.outputs.iter().enumerate() {
        let mut o = plan(frame, *size)?;
        // Frames of the decoded size and layout can be handed over in place.
        o.in_place = pooled.is_some() && o.scaler.is_none();
        let bytes = o
            .layout
            .frame_bytes(o.width, o.height)
            .and_then(|b| usize::try_from(b).ok())
            .ok_or("frame size overflows")?;
        send(
            stdout,
            Message::Geometry {
                output: k as u32,
                width: o.width,
                height: o.height,
                layout: o.layout,
                colorspace,
                range,
                buffers: args.buffers,
                fps_milli,
                pool: pooled.filter(|_| o.in_place),
            },
        )?;
        plans.push((o, bytes));
    }
    acks.ready()?;
    plans
        .into_iter()
        .enumerate()
        .map(|(k, (o, bytes))| Ok((o, Staging::map(STAGING_FD + k as i32, args.buffers, bytes)?)))
        .collect()
}

/// How to stage the frames of a stream whose first decoded frame is `f`.
fn plan(f: &ff::frame::Video, size: Option<(u32, u32)>) -> Result<Output, String> {
    use ff::format::Pixel;
    let (fw, fh, fmt) = (f.width(), f.height(), f.format());
    let (width, height) = size.unwrap_or((fw, fh));
    let layout = match fmt {
        Pixel::YUV420P | Pixel::YUVJ420P => Layout::Yuv420p,
        Pixel::NV12 => Layout::Nv12,
        other => {
            return Err(format!(
                "the decoder puts out {other:?}, which this decoder does not hand over"
            ))
        }
    };
    let scaler = if (width, height) != (fw, fh) {
        // ffmpeg's scale filter uses bicubic unless told otherwise.
        let ctx = ff::software::scaling::Context::get(
            fmt,
            fw,
            fh,
            fmt,
            width,
            height,
            ff::software::scaling::Flags::BICUBIC,
        )
        .map_err(|e| format!("cannot scale {fw}x{fh} to {width}x{height}: {e}"))?;
        Some((ctx, ff::frame::Video::empty()))
    } else {
        None
    };
    Ok(Output {
        width,
        height,
        layout,
        scaler,
        input: (fmt, fw, fh),
        in_place: false,
    })
}

/// Copies (scaling first if asked) frame `f` into `dst`, planes packed.
fn stage(o: &mut Output, f: &ff::frame::Video, dst: &mut [u8]) -> Result<(), String> {
    if (f.format(), f.width(), f.height()) != o.input {
        return Err(format!(
            "the decoded frames changed from {:?} {}x{} to {:?} {}x{}",
            o.input.0,
            o.input.1,
            o.input.2,
            f.format(),
            f.width(),
            f.height()
        ));
    }
    let f = match o.scaler.as_mut() {
        Some((ctx, scaled)) => {
            ctx.run(f, scaled)
                .map_err(|e| format!("scaling failed: {e}"))?;
            &*scaled
        }
        None => f,
    };
    let (w, h) = (o.width as usize, o.height as usize);
    let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
    let planes: &[(usize, usize)] = match o.layout {
        Layout::Yuv420p => &[(w, h), (cw, ch), (cw, ch)],
        Layout::Nv12 => &[(w, h), (2 * cw, ch)],
    };
    let mut at = 0;
    for (i, &(row, rows)) in planes.iter().enumerate() {
        let (src, stride) = (f.data(i), f.stride(i));
        for r in 0..rows {
            dst[at..at + row].copy_from_slice(&src[r * stride..r * stride + row]);
            at += row;
        }
    }
    debug_assert_eq!(at, dst.len());
    Ok(())
}
