//! `framebroker`: the broker daemon (`serve`) and its control CLI.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use framebroker::control_server::ControlSocket;
use framebroker::ffmpeg::{Ffmpeg, Handover};
use framebroker::registry::{Broker, BrokerConfig};
use framebroker::supervisor::SupervisorConfig;
use framebroker_client::{Client, PixelFormat, StartRequest, Transport};
use framebroker_proto::config::Config;
use framebroker_proto::control::default_socket_path;
use framebroker_proto::control::{HwAccel, StreamInfo, VariantRequest};
use framebroker_proto::naming::{self, UrlPolicy};

#[derive(Parser)]
#[command(
    name = "framebroker",
    version,
    about = "Pull and decode each camera once; share its frames through shared memory."
)]
struct Cli {
    /// Control socket (default: $FRAMEBROKER_SOCKET, else the per-user runtime directory).
    #[arg(long, global = true, env = "FRAMEBROKER_SOCKET")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker.
    Serve(ServeArgs),
    /// Add, remove, list and inspect streams of a running broker.
    #[command(subcommand)]
    Streams(StreamsCommand),
    /// Make a running broker re-read its config file (what SIGHUP does on Unix;
    /// works on every system).
    Reload,
    /// Check that ffmpeg and shared memory are usable.
    Doctor {
        #[arg(long)]
        ffmpeg: Option<PathBuf>,
    },
}

#[derive(Args, Clone)]
struct ServeArgs {
    /// Config file (TOML, see docs/CONFIG.md). Flags beat FRAMEBROKER_* variables,
    /// which beat the file. `framebroker reload` (or SIGHUP on Unix) reloads its streams.
    #[arg(long, env = "FRAMEBROKER_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// ffmpeg binary [default: `ffmpeg` on PATH; never downloaded].
    #[arg(long)]
    ffmpeg: Option<PathBuf>,
    /// How ffmpeg hands frames to the broker: `nut` (the decoder's own format,
    /// converted by the broker, each frame's pts in the container) or
    /// `rawvideo` (ffmpeg converts, pts from its log; the original path, kept
    /// for comparison) [default: nut].
    #[arg(long, env = "FRAMEBROKER_HANDOVER", value_parser = ["nut", "rawvideo"])]
    handover: Option<String>,
    /// Who decodes network cameras: `libav` (Linux: our own decoder process,
    /// `framebroker-decoder`, built with `--features libav`; frames through
    /// shared memory, cheaper than a pipe; test patterns, files and hardware
    /// decoders stay with ffmpeg), `ffmpeg` (the system ffmpeg, frames over a
    /// pipe), or `auto`: libav when a working `framebroker-decoder` is found,
    /// else ffmpeg [default: auto].
    #[arg(long, env = "FRAMEBROKER_DECODER", value_parser = ["auto", "ffmpeg", "libav"])]
    decoder: Option<String>,
    /// The `framebroker-decoder` binary [default: next to this one, else on PATH].
    #[arg(long, env = "FRAMEBROKER_DECODER_PATH")]
    decoder_path: Option<PathBuf>,
    /// Prefix of shared-memory segment names [default: fb-].
    #[arg(long)]
    shm_prefix: Option<String>,
    /// Let the owner's group read segments and use the socket (mode 0640/0660).
    #[arg(long)]
    group_access: bool,
    /// Total shared memory all rings may use, MiB [default: 4096].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=(1 << 30)))]
    shm_budget_mb: Option<u64>,
    /// Ring slots when a start request does not say [default: 4].
    #[arg(long)]
    ring_slots: Option<u32>,
    /// [default: 64]
    #[arg(long)]
    max_streams: Option<usize>,
    /// Readers per stream [default: 256].
    #[arg(long)]
    max_readers: Option<u32>,
    /// Store a CRC-32 of each frame in its slot (for verification; costs a pass per frame).
    #[arg(long)]
    checksum: bool,
    /// A live stream silent this long is restarted, ms [default: 5000].
    #[arg(long)]
    stall_timeout_ms: Option<u64>,
    /// ffmpeg socket I/O timeout, ms [default: 5000].
    #[arg(long)]
    io_timeout_ms: Option<u64>,
    /// First reconnect delay, ms (doubles up to --backoff-max-ms) [default: 500].
    #[arg(long)]
    backoff_initial_ms: Option<u64>,
    /// [default: 30000]
    #[arg(long)]
    backoff_max_ms: Option<u64>,
    /// On-demand streams stop this long after their last reader leaves, ms [default: 10000].
    #[arg(long)]
    idle_grace_ms: Option<u64>,
    /// Allow file:// sources.
    #[arg(long)]
    allow_files: bool,
    /// Allow http(s):// and rtmp:// sources.
    #[arg(long)]
    allow_http: bool,
    /// Streams to start at once: ID=URL (repeatable), e.g. demo=testsrc://?size=640x480&rate=30.
    #[arg(long = "stream", value_name = "ID=URL")]
    streams: Vec<String>,
}

#[derive(Subcommand)]
enum StreamsCommand {
    /// Start a stream (or get the running one for this URL).
    Add {
        id: String,
        url: String,
        #[arg(long)]
        width: Option<u32>,
        #[arg(long)]
        height: Option<u32>,
        /// bgr24, rgb24, gray, yuv420p, nv12.
        #[arg(long, default_value = "bgr24")]
        pixel_format: String,
        #[arg(long)]
        slots: Option<u32>,
        /// RTSP over UDP instead of TCP.
        #[arg(long)]
        udp: bool,
        /// Stop when the last reader leaves.
        #[arg(long)]
        on_demand: bool,
        /// Start even if this URL already runs under another id.
        #[arg(long)]
        allow_duplicate: bool,
        /// Hardware decoder: none, auto, vaapi, cuda, qsv, videotoolbox, and the boards'
        /// h264_v4l2m2m, hevc_v4l2m2m, h264_rkmpp, hevc_rkmpp (falls back to software
        /// when the device or decoder is missing). Default: the broker's.
        #[arg(long)]
        hwaccel: Option<String>,
        /// Another output of the same decode, its own stream: ID:WIDTHxHEIGHT:FORMAT
        /// or ID:native:FORMAT (repeatable).
        #[arg(long = "variant", value_name = "ID:WxH:FORMAT")]
        variants: Vec<String>,
    },
    /// Stop a stream.
    Rm { id: String },
    /// List streams.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Counters of one stream.
    Stats {
        id: String,
        #[arg(long)]
        json: bool,
    },
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .or_else(|| std::env::var("LOG_LEVEL").ok())
        .unwrap_or_else(|| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => {
            init_logging();
            serve(cli.socket, args)
        }
        Command::Streams(cmd) => {
            streams(cli.socket.clone().unwrap_or_else(default_socket_path), cmd)
        }
        Command::Reload => reload(cli.socket.clone().unwrap_or_else(default_socket_path)),
        Command::Doctor { ffmpeg } => doctor(ffmpeg),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output has gone (`framebroker streams ls | head -3`):
        // what it wanted it has; end quietly, like any Unix tool.
        Err(e) if e.is::<OutputClosed>() => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "Error: {e:?}");
            ExitCode::FAILURE
        }
    }
}

/// The reader of standard output closed it (a pipe into `head`, `grep -q`).
#[derive(Debug)]
struct OutputClosed;

impl std::fmt::Display for OutputClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("standard output was closed by its reader")
    }
}

impl std::error::Error for OutputClosed {}

/// Writes one line of a command's output. A closed pipe is [`OutputClosed`],
/// which `main` ends on quietly, where `println!` would panic. (Restoring
/// SIGPIPE's default action instead would also kill the process on a write to
/// a control socket whose other end has gone: a broker whose client vanished,
/// or a command that should report a lost broker connection.)
fn print_line(line: std::fmt::Arguments<'_>) -> anyhow::Result<()> {
    match writeln!(std::io::stdout().lock(), "{line}") {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(OutputClosed.into()),
        // Windows: a pipe whose reader has gone can also say "not connected".
        #[cfg(windows)]
        Err(e) if e.raw_os_error() == Some(233) => Err(OutputClosed.into()),
        Err(e) => Err(anyhow::Error::new(e).context("writing to standard output")),
    }
}

/// `println!` for the commands' output, through [`print_line`]; returns early
/// with its error.
macro_rules! out {
    ($($arg:tt)*) => {
        print_line(format_args!($($arg)*))?
    };
}

/// The broker's settings after flags, environment, file and defaults.
#[derive(Clone, Debug, PartialEq)]
struct Settings {
    socket: PathBuf,
    ffmpeg: Option<PathBuf>,
    shm_prefix: String,
    group_access: bool,
    shm_budget_mb: u64,
    ring_slots: u32,
    max_streams: usize,
    max_readers: u32,
    checksum: bool,
    stall_timeout_ms: u64,
    io_timeout_ms: u64,
    backoff_initial_ms: u64,
    backoff_max_ms: u64,
    idle_grace_ms: u64,
    url_policy: UrlPolicy,
    hwaccel: Option<String>,
}

impl Settings {
    fn resolve(socket: Option<&PathBuf>, a: &ServeArgs, c: &Config) -> Settings {
        let (b, d) = (&c.file.broker, &c.file.defaults);
        Settings {
            socket: socket
                .cloned()
                .or_else(|| b.socket.clone())
                .unwrap_or_else(default_socket_path),
            ffmpeg: a.ffmpeg.clone().or_else(|| b.ffmpeg.clone()),
            shm_prefix: a
                .shm_prefix
                .clone()
                .or_else(|| b.shm_prefix.clone())
                .unwrap_or_else(|| naming::DEFAULT_PREFIX.into()),
            group_access: a.group_access || b.group_access.unwrap_or(false),
            shm_budget_mb: a.shm_budget_mb.or(b.shm_budget_mb).unwrap_or(4096),
            ring_slots: a
                .ring_slots
                .or(d.ring_slots)
                .unwrap_or(framebroker_proto::layout::DEFAULT_SLOTS),
            max_streams: a.max_streams.or(b.max_streams).unwrap_or(64),
            max_readers: a.max_readers.or(b.max_readers).unwrap_or(256),
            checksum: a.checksum || b.checksum.unwrap_or(false),
            stall_timeout_ms: a.stall_timeout_ms.or(d.stall_timeout_ms).unwrap_or(5000),
            io_timeout_ms: a.io_timeout_ms.or(d.io_timeout_ms).unwrap_or(5000),
            backoff_initial_ms: a.backoff_initial_ms.or(d.backoff_initial_ms).unwrap_or(500),
            backoff_max_ms: a.backoff_max_ms.or(d.backoff_max_ms).unwrap_or(30_000),
            idle_grace_ms: a.idle_grace_ms.or(b.idle_grace_ms).unwrap_or(10_000),
            url_policy: UrlPolicy {
                allow_files: a.allow_files || b.allow_files.unwrap_or(false),
                allow_http: a.allow_http || b.allow_http.unwrap_or(false),
            },
            hwaccel: d.hwaccel.clone(),
        }
    }

    fn broker_config(&self) -> BrokerConfig {
        BrokerConfig {
            supervisor: SupervisorConfig {
                shm_prefix: self.shm_prefix.clone(),
                shm_mode: if self.group_access { 0o640 } else { 0o600 },
                checksum: self.checksum,
                stall_timeout: Duration::from_millis(self.stall_timeout_ms),
                backoff_initial: Duration::from_millis(self.backoff_initial_ms),
                backoff_max: Duration::from_millis(self.backoff_max_ms),
                ..SupervisorConfig::default()
            },
            url_policy: self.url_policy.clone(),
            default_slots: self.ring_slots,
            max_streams: self.max_streams,
            max_readers_per_stream: self.max_readers,
            shm_budget: self.shm_budget_mb << 20,
            idle_grace: Duration::from_millis(self.idle_grace_ms),
            io_timeout: Duration::from_millis(self.io_timeout_ms),
            default_hwaccel: self
                .hwaccel
                .as_deref()
                .and_then(HwAccel::from_name)
                .unwrap_or(HwAccel::None),
        }
    }

    /// Settings that differ from `other` by name (they need a restart).
    fn differences(&self, other: &Settings) -> Vec<&'static str> {
        let mut v = Vec::new();
        macro_rules! cmp {
            ($($f:ident),+) => {$( if self.$f != other.$f { v.push(stringify!($f)); } )+};
        }
        cmp!(
            socket,
            ffmpeg,
            shm_prefix,
            group_access,
            shm_budget_mb,
            ring_slots,
            max_streams,
            max_readers,
            checksum,
            stall_timeout_ms,
            io_timeout_ms,
            backoff_initial_ms,
            backoff_max_ms,
            idle_grace_ms,
            url_policy,
            hwaccel
        );
        v
    }
}

/// Reads the config (file or none) with the environment applied, resolves the
/// settings and the declared streams (the file's plus `--stream`). Has no
/// side effects, so a failure leaves a running broker as it was.
fn load(
    socket: Option<&PathBuf>,
    a: &ServeArgs,
) -> anyhow::Result<(Settings, Vec<framebroker_proto::config::StreamDecl>)> {
    let config = match &a.config {
        Some(path) => Config::load(path)?,
        None => {
            let mut c = Config::parse("(no config file)", "")?;
            c.apply_env(|k| std::env::var(k).ok())?;
            c
        }
    };
    let settings = Settings::resolve(socket, a, &config);
    naming::validate_prefix(&settings.shm_prefix)?;
    let mut decls = config.streams_with(&settings.url_policy)?;
    for s in &a.streams {
        let Some((id, url)) = s.split_once('=') else {
            bail!("--stream takes ID=URL, got {s:?}")
        };
        let text = format!(
            "[[streams]]\nid = {}\nurl = {}\n",
            toml_quote(id),
            toml_quote(url)
        );
        let one = Config::parse("--stream", &text)
            .and_then(|c| c.streams_with(&settings.url_policy))
            .map_err(|e| anyhow::anyhow!("--stream {s}: {}", e.message))?;
        decls.retain(|d| d.id != id);
        decls.extend(one);
    }
    Ok((settings, decls))
}

fn toml_quote(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

fn serve(socket: Option<PathBuf>, a: ServeArgs) -> anyhow::Result<()> {
    let (settings, decls) = load(socket.as_ref(), &a)?;
    // Before any thread starts: on Unix the signals are blocked in every thread and
    // taken by the main thread; on Windows console events arrive through a handler.
    let signals = framebroker::platform::Signals::install()?;

    let mut ffmpeg = Ffmpeg::locate(settings.ffmpeg.as_deref()).map_err(anyhow::Error::msg)?;
    if let Some(h) = a.handover.as_deref() {
        ffmpeg.handover = Handover::from_name(h).context("--handover")?;
    }
    let version = ffmpeg.version().map_err(anyhow::Error::msg)?;
    ffmpeg.input_time_base = framebroker::ffmpeg::InputTimeBase::for_version(&version);
    tracing::info!(ffmpeg = %ffmpeg.path.display(), handover = ffmpeg.handover.name(), "{version}");

    for v in framebroker_proto::shm::remove_stale(&settings.shm_prefix) {
        match v {
            framebroker_proto::shm::StaleVerdict::Removed { name, pid, why } => {
                tracing::info!(segment = %name, pid, "removed segment of a dead broker ({why})")
            }
            framebroker_proto::shm::StaleVerdict::Alive { name, pid } => {
                tracing::warn!(segment = %name, pid, "segment with our prefix belongs to a live process; left alone")
            }
            framebroker_proto::shm::StaleVerdict::Skipped { name, reason } => {
                tracing::debug!(segment = %name, "not touched: {reason}")
            }
        }
    }

    let factory: Arc<dyn framebroker::ffmpeg::SourceFactory> = match (
        a.decoder.as_deref().unwrap_or("auto"),
        a.decoder_path.as_deref(),
    ) {
        ("ffmpeg", _) => Arc::new(ffmpeg),
        #[cfg(target_os = "linux")]
        (wanted, path) => match framebroker::libav::Libav::find(path) {
            Ok((path, version)) => {
                tracing::info!(decoder = %path.display(), "{version}");
                Arc::new(framebroker::libav::Libav::new(path, ffmpeg))
            }
            Err(why) if wanted == "auto" => {
                tracing::info!("ffmpeg decodes every stream (no framebroker-decoder: {why})");
                Arc::new(ffmpeg)
            }
            Err(why) => return Err(anyhow::Error::msg(why).context("--decoder libav")),
        },
        #[cfg(not(target_os = "linux"))]
        ("auto", _) => Arc::new(ffmpeg),
        #[cfg(not(target_os = "linux"))]
        (d, _) => anyhow::bail!("--decoder {d} is only available on Linux"),
    };

    let broker = Broker::new(settings.broker_config(), factory);
    let control = Arc::new(ControlSocket::bind(
        &settings.socket,
        if settings.group_access { 0o660 } else { 0o600 },
    )?);
    broker.spawn_ticker();
    let applied = broker.apply_declared(decls);
    if let Some((id, why)) = applied.failed.first() {
        control.remove_file();
        broker.shutdown();
        bail!("stream {id}: {why}");
    }
    // One reload at a time, whether a signal or a control request asked.
    let reloader: framebroker::control_server::ReloadHook = {
        let (socket, a, settings, broker) =
            (socket.clone(), a.clone(), settings.clone(), broker.clone());
        let one_at_a_time = std::sync::Mutex::new(());
        Arc::new(move || {
            let _g = framebroker_proto::lock::lock(&one_at_a_time);
            reload_config(socket.as_ref(), &a, &settings, &broker)
        })
    };
    control.set_reload(reloader.clone());
    {
        let (c, b) = (control.clone(), broker.clone());
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || c.serve(b))?;
    }
    tracing::info!(
        socket = %control.path().display(),
        prefix = %settings.shm_prefix,
        config = %a.config.as_deref().map_or("-".into(), |p| p.display().to_string()),
        streams = broker.declared().all().len(),
        "framebroker ready"
    );

    loop {
        match signals.wait()? {
            framebroker::platform::Event::Shutdown(why) => {
                tracing::info!("{why}: shutting down");
                break;
            }
            framebroker::platform::Event::Reload => {
                let _ = reloader();
            }
        }
    }
    control.remove_file();
    broker.shutdown();
    tracing::info!("bye");
    signals.finished();
    Ok(())
}

/// Re-reads the config file and applies its streams (SIGHUP, `framebroker
/// reload`). A file that does not load changes nothing. Logs what it did and
/// returns it for the control answer.
fn reload_config(
    socket: Option<&PathBuf>,
    a: &ServeArgs,
    settings: &Settings,
    broker: &Arc<Broker>,
) -> Result<String, String> {
    let Some(path) = &a.config else {
        tracing::warn!("reload: started without --config, nothing to reload");
        return Err("the broker was started without --config: nothing to reload".into());
    };
    match load(socket, a) {
        Err(e) => {
            let why = format!(
                "reload of {} refused, running config unchanged: {e:#}",
                path.display()
            );
            tracing::error!("{why}");
            Err(why)
        }
        Ok((next, decls)) => {
            let kept = next.differences(settings);
            for key in &kept {
                tracing::warn!(
                    key,
                    "reload: this setting needs a restart; the running value is kept"
                );
            }
            let applied = broker.apply_declared(decls);
            tracing::info!("reloaded {}: {applied}", path.display());
            let mut summary = format!("reloaded {}: {applied}", path.display());
            if !kept.is_empty() {
                summary += &format!("; needs a restart, kept: {}", kept.join(", "));
            }
            Ok(summary)
        }
    }
}

fn reload(socket: PathBuf) -> anyhow::Result<()> {
    let client = Client::connect_to(&socket)?;
    let summary = client.reload()?;
    out!("{summary}");
    Ok(())
}

/// How a stream with a parent reads its decode, for `streams ls` / `stats`:
/// `variant of P`, or `alias on P` when another listed id shares its ring (ring
/// generations are unique per broker, so the same one means the same ring), or
/// `decode of P` before its ring exists.
fn relation(s: &StreamInfo, list: &[StreamInfo]) -> Option<String> {
    let p = s.parent.as_deref()?;
    Some(if s.generation == 0 {
        format!("decode of {p}")
    } else if list
        .iter()
        .any(|t| t.id != s.id && t.generation == s.generation)
    {
        format!("alias on {p}")
    } else {
        format!("variant of {p}")
    })
}

fn streams(socket: PathBuf, cmd: StreamsCommand) -> anyhow::Result<()> {
    let client = Client::connect_to(&socket)?;
    match cmd {
        StreamsCommand::Add {
            id,
            url,
            width,
            height,
            pixel_format,
            slots,
            udp,
            on_demand,
            allow_duplicate,
            hwaccel,
            variants,
        } => {
            let mut req = StartRequest::new(id, url);
            req.hwaccel = hwaccel
                .map(|h| {
                    HwAccel::from_name(&h)
                        .with_context(|| format!("unknown hwaccel {h:?} ({})", HwAccel::names()))
                })
                .transpose()?;
            req.variants = variants
                .iter()
                .map(|v| VariantRequest::parse(v).map_err(anyhow::Error::msg))
                .collect::<anyhow::Result<_>>()?;
            req.width = width;
            req.height = height;
            req.pixel_format = PixelFormat::from_name(&pixel_format).with_context(|| {
                format!("unknown pixel format {pixel_format:?} (bgr24, rgb24, gray, yuv420p, nv12)")
            })?;
            req.ring_slots = slots;
            req.transport = if udp { Transport::Udp } else { Transport::Tcp };
            req.on_demand = on_demand;
            req.allow_duplicate_url = allow_duplicate;
            let (info, created) = client.start(req)?;
            if created {
                match &info.parent {
                    // Same camera already decoded: an alias or a variant of that decode.
                    Some(p) => out!(
                        "started {} ({}) on the running decode of {p}",
                        info.id,
                        info.url
                    ),
                    None => out!("started {} ({})", info.id, info.url),
                }
            } else {
                out!("already running as {} ({})", info.id, info.url);
            }
        }
        StreamsCommand::Rm { id } => {
            client.stop(&id)?;
            out!("stopped {id}");
        }
        StreamsCommand::Ls { json } => {
            let list = client.list()?;
            if json {
                out!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                out!(
                    "{:<24} {:<13} {:>11} {:<8} {:>7}  URL",
                    "ID",
                    "STATE",
                    "SIZE",
                    "FORMAT",
                    "READERS"
                );
                for s in &list {
                    // A variant or an alias shows its decode in place of the URL
                    // it shares.
                    let source = match relation(s, &list) {
                        Some(r) => format!("({r})"),
                        None => s.url.clone(),
                    };
                    out!(
                        "{:<24} {:<13} {:>11} {:<8} {:>7}  {}",
                        s.id,
                        s.state.name(),
                        format!("{}x{}", s.width, s.height),
                        s.pixel_format.name(),
                        s.readers,
                        source
                    );
                }
            }
        }
        StreamsCommand::Stats { id, json } => {
            let s = client.stats(&id)?;
            if json {
                out!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                out!("stream          {}", s.info.id);
                out!("url             {}", s.info.url);
                out!("state           {}", s.info.state.name());
                out!(
                    "size            {}x{} {}",
                    s.info.width,
                    s.info.height,
                    s.info.pixel_format.name()
                );
                out!("fps             {:.2}", s.fps);
                out!("frames written  {}", s.frames_written);
                out!("frames dropped  {}", s.frames_dropped);
                out!("reconnects      {}", s.reconnects);
                out!("readers         {}", s.info.readers);
                out!("uptime          {:.1} s", s.uptime_ms as f64 / 1000.0);
                out!("bytes/frame     {}", s.bytes_per_frame);
                if let Some(r) = relation(&s.info, &client.list()?) {
                    let (what, p) = r.rsplit_once(' ').unwrap_or(("", &r));
                    out!("{what:<15} {p}");
                }
                out!("decoder         {}", s.decoder);
                out!("decoder pid     {}", s.ffmpeg_pid);
                out!("last error      {}", s.last_error.as_deref().unwrap_or("-"));
            }
        }
    }
    Ok(())
}

fn doctor(ffmpeg: Option<PathBuf>) -> anyhow::Result<()> {
    let mut ok = true;
    match Ffmpeg::locate(ffmpeg.as_deref()).and_then(|f| f.version().map(|v| (f, v))) {
        Ok((f, v)) => {
            out!("ok    ffmpeg: {} ({v})", f.path.display());
            let out = std::process::Command::new(&f.path)
                .args(["-hide_banner", "-hwaccels"])
                .output();
            if let Ok(out) = out {
                let list: Vec<String> = String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .skip(1)
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty())
                    .collect();
                out!(
                    "info  ffmpeg hwaccels: {}",
                    if list.is_empty() {
                        "none".into()
                    } else {
                        list.join(", ")
                    }
                );
            }
            // The boards' decoders are ffmpeg decoders, not -hwaccel methods.
            let out = std::process::Command::new(&f.path)
                .args(["-hide_banner", "-decoders"])
                .output();
            if let Ok(out) = out {
                let text = String::from_utf8_lossy(&out.stdout);
                let have: Vec<&str> = HwAccel::ALL
                    .iter()
                    .filter_map(|h| h.decoder())
                    .filter(|d| text.split_whitespace().any(|w| w == *d))
                    .collect();
                println!(
                    "info  ffmpeg board decoders: {} (each also needs its device)",
                    if have.is_empty() {
                        "none".into()
                    } else {
                        have.join(", ")
                    }
                );
            }
        }
        Err(e) => {
            ok = false;
            out!("FAIL  ffmpeg: {e}");
        }
    }
    match framebroker_proto::shm::free_bytes() {
        Ok(b) => out!("ok    /dev/shm: {} MiB free", b >> 20),
        Err(e) => {
            ok = false;
            out!("FAIL  /dev/shm: {e}");
        }
    }
    out!("info  control socket: {}", default_socket_path().display());
    if !ok {
        bail!("some checks failed");
    }
    Ok(())
}
