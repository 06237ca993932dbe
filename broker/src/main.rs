//! `framebroker`: the broker daemon (`serve`) and its control CLI.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use framebroker::control_server::ControlSocket;
use framebroker::ffmpeg::Ffmpeg;
use framebroker::registry::{Broker, BrokerConfig};
use framebroker::supervisor::SupervisorConfig;
use framebroker_client::{Client, PixelFormat, StartRequest, Transport};
use framebroker_proto::control::default_socket_path;
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
    /// Check that ffmpeg and shared memory are usable.
    Doctor {
        #[arg(long)]
        ffmpeg: Option<PathBuf>,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// ffmpeg binary (default: `ffmpeg` on PATH; never downloaded).
    #[arg(long)]
    ffmpeg: Option<PathBuf>,
    /// Prefix of shared-memory segment names.
    #[arg(long, default_value = naming::DEFAULT_PREFIX, env = "FRAMEBROKER_SHM_PREFIX")]
    shm_prefix: String,
    /// Let the owner's group read segments and use the socket (mode 0640/0660).
    #[arg(long)]
    group_access: bool,
    /// Total shared memory all rings may use, MiB.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=(1 << 30)))]
    shm_budget_mb: u64,
    /// Ring slots when a start request does not say.
    #[arg(long, default_value_t = framebroker_proto::layout::DEFAULT_SLOTS)]
    ring_slots: u32,
    #[arg(long, default_value_t = 64)]
    max_streams: usize,
    #[arg(long, default_value_t = 256)]
    max_readers: u32,
    /// Store a CRC-32 of each frame in its slot (for verification; costs a pass per frame).
    #[arg(long)]
    checksum: bool,
    /// A live stream silent this long is restarted, ms.
    #[arg(long, default_value_t = 5000)]
    stall_timeout_ms: u64,
    /// ffmpeg socket I/O timeout, ms.
    #[arg(long, default_value_t = 5000)]
    io_timeout_ms: u64,
    /// First reconnect delay, ms (doubles up to --backoff-max-ms).
    #[arg(long, default_value_t = 500)]
    backoff_initial_ms: u64,
    #[arg(long, default_value_t = 30_000)]
    backoff_max_ms: u64,
    /// On-demand streams stop this long after their last reader leaves, ms.
    #[arg(long, default_value_t = 10_000)]
    idle_grace_ms: u64,
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let socket = cli.socket.clone().unwrap_or_else(default_socket_path);
    match cli.command {
        Command::Serve(args) => {
            init_logging();
            serve(socket, args)
        }
        Command::Streams(cmd) => streams(socket, cmd),
        Command::Doctor { ffmpeg } => doctor(ffmpeg),
    }
}

fn serve(socket: PathBuf, a: ServeArgs) -> anyhow::Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    naming::validate_prefix(&a.shm_prefix)?;
    // Block the shutdown signals in every thread (threads inherit the mask); one
    // thread below waits for them with sigwait. ffmpeg children unblock them.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.thread_block().context("blocking signals")?;

    let ffmpeg = Ffmpeg::locate(a.ffmpeg.as_deref()).map_err(anyhow::Error::msg)?;
    let version = ffmpeg.version().map_err(anyhow::Error::msg)?;
    tracing::info!(ffmpeg = %ffmpeg.path.display(), "{version}");

    for v in framebroker_proto::shm::remove_stale(&a.shm_prefix) {
        match v {
            framebroker_proto::shm::StaleVerdict::Removed { name, pid } => {
                tracing::info!(segment = %name, pid, "removed segment of a dead broker")
            }
            framebroker_proto::shm::StaleVerdict::Alive { name, pid } => {
                tracing::warn!(segment = %name, pid, "segment with our prefix belongs to a live process; left alone")
            }
            framebroker_proto::shm::StaleVerdict::Skipped { name, reason } => {
                tracing::debug!(segment = %name, "not touched: {reason}")
            }
        }
    }

    let cfg = BrokerConfig {
        supervisor: SupervisorConfig {
            shm_prefix: a.shm_prefix.clone(),
            shm_mode: if a.group_access { 0o640 } else { 0o600 },
            checksum: a.checksum,
            stall_timeout: Duration::from_millis(a.stall_timeout_ms),
            backoff_initial: Duration::from_millis(a.backoff_initial_ms),
            backoff_max: Duration::from_millis(a.backoff_max_ms),
            ..SupervisorConfig::default()
        },
        url_policy: UrlPolicy {
            allow_files: a.allow_files,
            allow_http: a.allow_http,
        },
        default_slots: a.ring_slots,
        max_streams: a.max_streams,
        max_readers_per_stream: a.max_readers,
        shm_budget: a.shm_budget_mb << 20,
        idle_grace: Duration::from_millis(a.idle_grace_ms),
        io_timeout: Duration::from_millis(a.io_timeout_ms),
    };
    let broker = Broker::new(cfg, Arc::new(ffmpeg));
    let control = Arc::new(ControlSocket::bind(
        &socket,
        if a.group_access { 0o660 } else { 0o600 },
    )?);
    broker.spawn_ticker();
    for s in &a.streams {
        let Some((id, url)) = s.split_once('=') else {
            bail!("--stream takes ID=URL, got {s:?}")
        };
        broker
            .start(StartRequest::new(id, url))
            .map_err(|r| anyhow::anyhow!("--stream {id}: {}", r.message))?;
    }
    {
        let (c, b) = (control.clone(), broker.clone());
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || c.serve(b))?;
    }
    tracing::info!(socket = %control.path().display(), prefix = %a.shm_prefix, "framebroker ready");

    let sig = signals.wait().context("waiting for signals")?;
    tracing::info!("{sig:?}: shutting down");
    control.remove_file();
    broker.shutdown();
    tracing::info!("bye");
    Ok(())
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
        } => {
            let mut req = StartRequest::new(id, url);
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
                println!("started {} ({})", info.id, info.url);
            } else {
                println!("already running as {} ({})", info.id, info.url);
            }
        }
        StreamsCommand::Rm { id } => {
            client.stop(&id)?;
            println!("stopped {id}");
        }
        StreamsCommand::Ls { json } => {
            let list = client.list()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!(
                    "{:<24} {:<13} {:>11} {:<8} {:>7}  URL",
                    "ID", "STATE", "SIZE", "FORMAT", "READERS"
                );
                for s in list {
                    println!(
                        "{:<24} {:<13} {:>11} {:<8} {:>7}  {}",
                        s.id,
                        s.state.name(),
                        format!("{}x{}", s.width, s.height),
                        s.pixel_format.name(),
                        s.readers,
                        s.url
                    );
                }
            }
        }
        StreamsCommand::Stats { id, json } => {
            let s = client.stats(&id)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!("stream          {}", s.info.id);
                println!("url             {}", s.info.url);
                println!("state           {}", s.info.state.name());
                println!(
                    "size            {}x{} {}",
                    s.info.width,
                    s.info.height,
                    s.info.pixel_format.name()
                );
                println!("fps             {:.2}", s.fps);
                println!("frames written  {}", s.frames_written);
                println!("frames dropped  {}", s.frames_dropped);
                println!("reconnects      {}", s.reconnects);
                println!("readers         {}", s.info.readers);
                println!("uptime          {:.1} s", s.uptime_ms as f64 / 1000.0);
                println!("bytes/frame     {}", s.bytes_per_frame);
                println!("ffmpeg pid      {}", s.ffmpeg_pid);
                println!("last error      {}", s.last_error.as_deref().unwrap_or("-"));
            }
        }
    }
    Ok(())
}

fn doctor(ffmpeg: Option<PathBuf>) -> anyhow::Result<()> {
    let mut ok = true;
    match Ffmpeg::locate(ffmpeg.as_deref()).and_then(|f| f.version().map(|v| (f, v))) {
        Ok((f, v)) => {
            println!("ok    ffmpeg: {} ({v})", f.path.display());
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
                println!(
                    "info  ffmpeg hwaccels: {}",
                    if list.is_empty() {
                        "none".into()
                    } else {
                        list.join(", ")
                    }
                );
            }
        }
        Err(e) => {
            ok = false;
            println!("FAIL  ffmpeg: {e}");
        }
    }
    match framebroker_proto::shm::free_bytes() {
        Ok(b) => println!("ok    /dev/shm: {} MiB free", b >> 20),
        Err(e) => {
            ok = false;
            println!("FAIL  /dev/shm: {e}");
        }
    }
    println!("info  control socket: {}", default_socket_path().display());
    if !ok {
        bail!("some checks failed");
    }
    Ok(())
}
