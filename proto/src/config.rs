//! The config file shared by the broker and the gateway (TOML).
//!
//! ```toml
//! [broker]              # the broker process: socket, shared memory, limits
//! [defaults]            # for every stream: transport, pixel format, timeouts, ...
//! [[streams]]           # streams to run: `always` or `on-demand`
//! [gateway]             # the HTTP/WebSocket gateway
//! ```
//!
//! Precedence, highest first: command-line flags, `FRAMEBROKER_*` environment
//! variables, the file, built-in defaults. Environment names: `FRAMEBROKER_<KEY>`
//! for `[broker]` keys (`FRAMEBROKER_SHM_BUDGET_MB`), `FRAMEBROKER_DEFAULTS_<KEY>`
//! and `FRAMEBROKER_GATEWAY_<KEY>` for the other sections. Values are TOML
//! literals (`4096`, `true`, `["a", "b"]`) or bare strings.
//!
//! Every error names the file (or the variable), the line and column, and the
//! key; loading never has side effects, so a bad file given to a running broker
//! leaves it as it was. The reference with every key is `docs/CONFIG.md`.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;
use toml::Spanned;

use crate::control::{HwAccel, Transport};
use crate::layout::{PixelFormat, MAX_SLOTS, MIN_SLOTS};
use crate::naming::{self, UrlPolicy};

/// Hardware decoders the config accepts: the names of [`HwAccel`], in its order.
pub const HWACCELS: [&str; HwAccel::ALL.len()] = {
    let mut names = [""; HwAccel::ALL.len()];
    let mut i = 0;
    while i < names.len() {
        names[i] = HwAccel::ALL[i].name();
        i += 1;
    }
    names
};

/// A config problem: where it is and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, or `environment` for a variable.
    pub origin: String,
    /// 1-based line and column; 0 when the problem has no single place.
    pub line: usize,
    pub column: usize,
    /// Dotted key, e.g. `streams[1].url` or `FRAMEBROKER_MAX_STREAMS`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// `[broker]`: settings of the broker process. `None`: not set here.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSection {
    pub socket: Option<PathBuf>,
    pub shm_prefix: Option<String>,
    pub shm_budget_mb: Option<u64>,
    pub group_access: Option<bool>,
    pub max_streams: Option<usize>,
    pub max_readers: Option<u32>,
    pub ffmpeg: Option<PathBuf>,
    pub checksum: Option<bool>,
    pub idle_grace_ms: Option<u64>,
    pub allow_files: Option<bool>,
    pub allow_http: Option<bool>,
}

/// `[defaults]`: what a stream gets when neither it nor its start request says.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamDefaults {
    #[serde(default, deserialize_with = "de_transport")]
    pub transport: Option<Transport>,
    #[serde(default, deserialize_with = "de_pixel_format")]
    pub pixel_format: Option<PixelFormat>,
    #[serde(default, deserialize_with = "de_slots")]
    pub ring_slots: Option<u32>,
    #[serde(default, deserialize_with = "de_hwaccel")]
    pub hwaccel: Option<String>,
    pub io_timeout_ms: Option<u64>,
    pub stall_timeout_ms: Option<u64>,
    pub backoff_initial_ms: Option<u64>,
    pub backoff_max_ms: Option<u64>,
}

/// When a configured stream runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// From start-up (or reload) until it is removed from the file.
    #[default]
    Always,
    /// From the first reader's attach until the idle grace period after the last one left.
    OnDemand,
}

/// One `[[streams]]` entry as written.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamEntry {
    pub id: Spanned<String>,
    pub url: Spanned<String>,
    #[serde(default)]
    pub mode: Mode,
    pub width: Option<Spanned<u32>>,
    pub height: Option<Spanned<u32>>,
    #[serde(default, deserialize_with = "de_pixel_format")]
    pub pixel_format: Option<PixelFormat>,
    #[serde(default, deserialize_with = "de_transport")]
    pub transport: Option<Transport>,
    #[serde(default, deserialize_with = "de_slots")]
    pub ring_slots: Option<u32>,
    #[serde(default, deserialize_with = "de_hwaccel")]
    pub hwaccel: Option<String>,
    #[serde(default)]
    pub variants: Vec<VariantEntry>,
}

/// Another picture of the same decode: its own ring, size and pixel format.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariantEntry {
    pub id: Spanned<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    #[serde(deserialize_with = "de_pixel_format_required")]
    pub pixel_format: PixelFormat,
}

/// `[gateway]`: settings of `framebroker-gateway`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    pub listen: Option<std::net::SocketAddr>,
    /// The broker's socket when it is not `[broker].socket`.
    pub socket: Option<PathBuf>,
    pub token: Option<String>,
    /// A file whose first line is the token (keeps it out of the config).
    pub token_file: Option<PathBuf>,
    pub insecure_no_auth: Option<bool>,
    pub cors_origins: Option<Vec<String>>,
    pub jpeg_quality: Option<u8>,
    pub idle_ms: Option<u64>,
    /// A WebSocket or MJPEG client that accepts no data for this long is dropped.
    pub client_deadline_ms: Option<u64>,
    pub max_ws_clients: Option<usize>,
    pub max_http_streams: Option<usize>,
    pub max_jpeg_settings: Option<u16>,
}

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub broker: BrokerSection,
    #[serde(default)]
    pub defaults: StreamDefaults,
    #[serde(default)]
    pub streams: Vec<StreamEntry>,
    #[serde(default)]
    pub gateway: GatewaySection,
}

/// A configured stream, validated and with the defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamDecl {
    pub id: String,
    pub url: String,
    pub mode: Mode,
    /// `None`: the camera's own size.
    pub size: Option<(u32, u32)>,
    pub pixel_format: PixelFormat,
    pub transport: Transport,
    /// `None`: the broker's default.
    pub ring_slots: Option<u32>,
    /// `None`: the broker's default (`[defaults].hwaccel`, else software).
    pub hwaccel: Option<String>,
    pub variants: Vec<VariantDecl>,
}

/// A validated variant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VariantDecl {
    pub id: String,
    pub size: Option<(u32, u32)>,
    pub pixel_format: PixelFormat,
}

/// A parsed file plus its text, for locating errors found after parsing.
#[derive(Clone, Debug)]
pub struct Config {
    pub origin: String,
    pub file: ConfigFile,
    text: String,
}

impl Config {
    /// Reads, parses and applies the environment overrides of `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            origin: origin.clone(),
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read: {e}"),
        })?;
        let mut c = Config::parse(&origin, &text)?;
        c.apply_env(|k| std::env::var(k).ok())?;
        Ok(c)
    }

    /// Parses `text` (no environment). `origin` names it in errors.
    pub fn parse(origin: &str, text: &str) -> Result<Config, ConfigError> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
            ConfigError {
                origin: origin.into(),
                line,
                column,
                key: key_at(text, e.span().map(|s| s.start)),
                message: e.message().trim_end().to_string(),
            }
        })?;
        let c = Config {
            origin: origin.into(),
            file,
            text: text.into(),
        };
        c.streams()?;
        if let Some(p) = &c.file.broker.shm_prefix {
            naming::validate_prefix(p).map_err(|e| c.err_key("broker.shm_prefix", e))?;
        }
        Ok(c)
    }

    /// Applies `FRAMEBROKER_*` overrides read through `var` (the process
    /// environment in [`load`](Self::load); a map in tests).
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        macro_rules! over {
            ($section:expr, $prefix:literal, $($field:ident),+) => {$(
                let name = concat!($prefix, stringify!($field)).to_ascii_uppercase();
                if let Some(raw) = var(&name) {
                    $section.$field = Some(env_value(&name, &raw)?);
                }
            )+};
        }
        // Work on a copy: a refused value leaves the config as it was.
        let mut next = self.file.clone();
        let b = &mut next.broker;
        over!(
            b,
            "FRAMEBROKER_",
            socket,
            shm_prefix,
            shm_budget_mb,
            group_access,
            max_streams,
            max_readers,
            ffmpeg,
            checksum,
            idle_grace_ms,
            allow_files,
            allow_http
        );
        let d = &mut next.defaults;
        over!(
            d,
            "FRAMEBROKER_DEFAULTS_",
            io_timeout_ms,
            stall_timeout_ms,
            backoff_initial_ms,
            backoff_max_ms
        );
        // Fields parsed from names go through the same checks as the file.
        #[derive(Deserialize)]
        struct Named {
            #[serde(default, deserialize_with = "de_transport")]
            transport: Option<Transport>,
            #[serde(default, deserialize_with = "de_pixel_format")]
            pixel_format: Option<PixelFormat>,
            #[serde(default, deserialize_with = "de_slots")]
            ring_slots: Option<u32>,
            #[serde(default, deserialize_with = "de_hwaccel")]
            hwaccel: Option<String>,
        }
        for key in ["transport", "pixel_format", "ring_slots", "hwaccel"] {
            let name = format!("FRAMEBROKER_DEFAULTS_{}", key.to_ascii_uppercase());
            let Some(raw) = var(&name) else { continue };
            let doc = format!("{key} = {}", toml_literal(&raw));
            let n: Named = toml::from_str(&doc).map_err(|e| env_error(&name, e.message()))?;
            match key {
                "transport" => d.transport = n.transport,
                "pixel_format" => d.pixel_format = n.pixel_format,
                "ring_slots" => d.ring_slots = n.ring_slots,
                _ => d.hwaccel = n.hwaccel,
            }
        }
        let g = &mut next.gateway;
        over!(
            g,
            "FRAMEBROKER_GATEWAY_",
            listen,
            socket,
            token_file,
            insecure_no_auth,
            cors_origins,
            jpeg_quality,
            idle_ms,
            client_deadline_ms,
            max_ws_clients,
            max_http_streams,
            max_jpeg_settings
        );
        if let Some(p) = &next.broker.shm_prefix {
            naming::validate_prefix(p).map_err(|e| env_error("FRAMEBROKER_SHM_PREFIX", e))?;
        }
        self.file = next;
        Ok(())
    }

    /// The URL policy the file asks for.
    pub fn url_policy(&self) -> UrlPolicy {
        UrlPolicy {
            allow_files: self.file.broker.allow_files.unwrap_or(false),
            allow_http: self.file.broker.allow_http.unwrap_or(false),
        }
    }

    /// The configured streams, validated, with `[defaults]` applied.
    pub fn streams(&self) -> Result<Vec<StreamDecl>, ConfigError> {
        self.streams_with(&self.url_policy())
    }

    /// As [`streams`](Self::streams), with the URL policy given (the command
    /// line may widen the file's).
    pub fn streams_with(&self, policy: &UrlPolicy) -> Result<Vec<StreamDecl>, ConfigError> {
        let d = &self.file.defaults;
        let mut ids = HashSet::new();
        let mut urls = HashSet::new();
        let mut out = Vec::with_capacity(self.file.streams.len());
        for (i, s) in self.file.streams.iter().enumerate() {
            let key = |k: &str| format!("streams[{i}].{k}");
            let id = s.id.get_ref();
            naming::validate_stream_id(id).map_err(|e| self.err(&s.id, key("id"), e))?;
            if !ids.insert(id.clone()) {
                return Err(self.err(&s.id, key("id"), format!("duplicate stream id {id:?}")));
            }
            let url = s.url.get_ref();
            naming::classify_url(url, policy).map_err(|e| self.err(&s.url, key("url"), e))?;
            if !urls.insert(url.clone()) {
                return Err(self.err(
                    &s.url,
                    key("url"),
                    "this URL is already configured under another id (one ingest per camera; \
                     use `variants` for other sizes or formats)",
                ));
            }
            let size = match (&s.width, &s.height) {
                (None, None) => None,
                (Some(w), Some(h)) => {
                    for v in [w, h] {
                        if *v.get_ref() == 0 || *v.get_ref() > 16384 {
                            return Err(self.err(v, key("width"), "must be 1..=16384"));
                        }
                    }
                    Some((*w.get_ref(), *h.get_ref()))
                }
                (Some(w), None) => {
                    return Err(self.err(
                        w,
                        key("height"),
                        "give both width and height, or neither",
                    ))
                }
                (None, Some(h)) => {
                    return Err(self.err(h, key("width"), "give both width and height, or neither"))
                }
            };
            let mut variants = Vec::with_capacity(s.variants.len());
            for (j, v) in s.variants.iter().enumerate() {
                let vkey = format!("streams[{i}].variants[{j}].id");
                let vid = v.id.get_ref();
                naming::validate_stream_id(vid).map_err(|e| self.err(&v.id, vkey.clone(), e))?;
                if !ids.insert(vid.clone()) {
                    return Err(self.err(&v.id, vkey, format!("duplicate stream id {vid:?}")));
                }
                let vsize = match (v.width, v.height) {
                    (None, None) => None,
                    (Some(w), Some(h)) if (1..=16384).contains(&w) && (1..=16384).contains(&h) => {
                        Some((w, h))
                    }
                    _ => {
                        return Err(self.err(
                            &v.id,
                            vkey,
                            "a variant needs both width and height (1..=16384), or neither",
                        ))
                    }
                };
                variants.push(VariantDecl {
                    id: vid.clone(),
                    size: vsize,
                    pixel_format: v.pixel_format,
                });
            }
            out.push(StreamDecl {
                id: id.clone(),
                url: url.clone(),
                mode: s.mode,
                size,
                pixel_format: s
                    .pixel_format
                    .or(d.pixel_format)
                    .unwrap_or(PixelFormat::Bgr24),
                transport: s.transport.or(d.transport).unwrap_or(Transport::Tcp),
                ring_slots: s.ring_slots.or(d.ring_slots),
                hwaccel: s.hwaccel.clone().or_else(|| d.hwaccel.clone()),
                variants,
            });
        }
        Ok(out)
    }

    fn err<T>(&self, at: &Spanned<T>, key: String, message: impl fmt::Display) -> ConfigError {
        let (line, column) = line_col(&self.text, at.span().start);
        ConfigError {
            origin: self.origin.clone(),
            line,
            column,
            key,
            message: message.to_string(),
        }
    }

    fn err_key(&self, key: &str, message: impl fmt::Display) -> ConfigError {
        // The line of `key = ...` in its section, found in the text.
        let leaf = key.rsplit('.').next().unwrap_or(key);
        let line = self
            .text
            .lines()
            .position(|l| {
                l.trim_start()
                    .strip_prefix(leaf)
                    .is_some_and(|r| r.trim_start().starts_with('='))
            })
            .map_or(0, |n| n + 1);
        ConfigError {
            origin: self.origin.clone(),
            line,
            column: usize::from(line > 0),
            key: key.into(),
            message: message.to_string(),
        }
    }
}

fn env_error(name: &str, message: impl fmt::Display) -> ConfigError {
    ConfigError {
        origin: "environment".into(),
        line: 0,
        column: 0,
        key: name.into(),
        message: message.to_string().trim_end().to_string(),
    }
}

/// A TOML literal as written in a variable, or the text as a string.
fn toml_literal(raw: &str) -> String {
    #[derive(Deserialize)]
    struct Probe {
        #[allow(dead_code)]
        v: toml::Value,
    }
    if toml::from_str::<Probe>(&format!("v = {raw}")).is_ok() {
        raw.to_string()
    } else {
        toml::Value::String(raw.to_string()).to_string()
    }
}

fn env_value<T: DeserializeOwned>(name: &str, raw: &str) -> Result<T, ConfigError> {
    #[derive(Deserialize)]
    struct One<T> {
        v: T,
    }
    // A bare word that also parses as a literal of the wrong type (say `8091`
    // for an address) gets a second chance as a string.
    toml::from_str::<One<T>>(&format!("v = {}", toml_literal(raw)))
        .or_else(|_| toml::from_str::<One<T>>(&format!("v = {}", toml::Value::String(raw.into()))))
        .map(|o| o.v)
        .map_err(|e| env_error(name, format!("{raw:?}: {}", e.message())))
}

/// 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The key written on the line of `offset`, if the line is `key = value`.
fn key_at(text: &str, offset: Option<usize>) -> String {
    let Some(offset) = offset else {
        return String::new();
    };
    let start = text[..offset.min(text.len())]
        .rfind('\n')
        .map_or(0, |p| p + 1);
    let line = text[start..].lines().next().unwrap_or("");
    match line.split_once('=') {
        Some((k, _)) if !k.trim_start().starts_with('[') => k.trim().to_string(),
        _ => String::new(),
    }
}

fn de_name<'de, D, T>(
    d: D,
    what: &str,
    parse: impl Fn(&str) -> Option<T>,
    names: &str,
) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let s = String::deserialize(d)?;
    parse(&s)
        .ok_or_else(|| serde::de::Error::custom(format!("unknown {what} {s:?} (one of: {names})")))
}

fn de_pixel_format<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<PixelFormat>, D::Error> {
    de_pixel_format_required(d).map(Some)
}

fn de_pixel_format_required<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<PixelFormat, D::Error> {
    de_name(
        d,
        "pixel format",
        PixelFormat::from_name,
        "bgr24, rgb24, gray, yuv420p, nv12",
    )
}

fn de_transport<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Transport>, D::Error> {
    de_name(
        d,
        "transport",
        |s| match s {
            "tcp" => Some(Transport::Tcp),
            "udp" => Some(Transport::Udp),
            _ => None,
        },
        "tcp, udp",
    )
    .map(Some)
}

fn de_hwaccel<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    de_name(
        d,
        "hwaccel",
        |s| HWACCELS.contains(&s).then(|| s.to_string()),
        &HWACCELS.join(", "),
    )
    .map(Some)
}

fn de_slots<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let n = u32::deserialize(d)?;
    if (MIN_SLOTS..=MAX_SLOTS).contains(&n) {
        Ok(Some(n))
    } else {
        Err(serde::de::Error::custom(format!(
            "ring_slots must be {MIN_SLOTS}..={MAX_SLOTS}, got {n}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const GOOD: &str = r#"
[broker]
shm_prefix = "fbt-"
max_streams = 8

[defaults]
pixel_format = "rgb24"
hwaccel = "vaapi"

[[streams]]
id = "front"
url = "rtsp://user:pw@10.0.0.2/s1"
mode = "on-demand"
variants = [ { id = "front_motion", width = 320, height = 240, pixel_format = "gray" } ]

[[streams]]
id = "demo"
url = "testsrc://?size=640x480&rate=30"
width = 320
height = 240
pixel_format = "bgr24"
hwaccel = "none"

[gateway]
listen = "0.0.0.0:8091"
cors_origins = ["http://localhost:3000"]
"#;

    #[test]
    fn hwaccel_names_are_the_enums() {
        assert_eq!(HWACCELS, HwAccel::ALL.map(HwAccel::name));
        for name in HWACCELS {
            let text =
                format!("[[streams]]\nid = \"a\"\nurl = \"rtsp://h/s\"\nhwaccel = \"{name}\"\n");
            let c = Config::parse("t.toml", &text).unwrap();
            assert_eq!(c.streams().unwrap()[0].hwaccel.as_deref(), Some(name));
        }
        let e = Config::parse("t.toml", "[defaults]\nhwaccel = \"rkmpp\"\n").unwrap_err();
        assert!(
            e.message
                .contains("h264_v4l2m2m, hevc_v4l2m2m, h264_rkmpp, hevc_rkmpp"),
            "{e:?}"
        );
    }

    #[test]
    fn good_file_resolves_with_defaults() {
        let c = Config::parse("t.toml", GOOD).unwrap();
        let s = c.streams().unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].mode, Mode::OnDemand);
        assert_eq!(s[0].pixel_format, PixelFormat::Rgb24);
        assert_eq!(s[0].hwaccel.as_deref(), Some("vaapi"));
        assert_eq!(s[0].variants[0].size, Some((320, 240)));
        assert_eq!(s[0].variants[0].pixel_format, PixelFormat::Gray);
        assert_eq!(s[1].mode, Mode::Always);
        assert_eq!(s[1].size, Some((320, 240)));
        assert_eq!(s[1].pixel_format, PixelFormat::Bgr24);
        assert_eq!(s[1].hwaccel.as_deref(), Some("none"));
        assert_eq!(c.file.broker.max_streams, Some(8));
        assert_eq!(c.file.gateway.listen, Some("0.0.0.0:8091".parse().unwrap()));
    }

    fn err(text: &str) -> ConfigError {
        Config::parse("bad.toml", text).unwrap_err()
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let e = err("[broker]\nmax_streams = 8\nshm_budgt_mb = 3\n");
        assert_eq!((e.origin.as_str(), e.line), ("bad.toml", 3), "{e}");
        assert!(e.message.contains("shm_budgt_mb"), "{e}");

        let e = err("[broker]\nmax_streams = \"many\"\n");
        assert_eq!((e.line, e.key.as_str()), (2, "max_streams"), "{e}");

        let e = err("[[streams]]\nid = \"a\"\nurl = \"rtsp://h/x\"\npixel_format = \"bgra\"\n");
        assert_eq!((e.line, e.key.as_str()), (4, "pixel_format"), "{e}");
        assert!(e.message.contains("bgr24, rgb24"), "{e}");

        let e = err("[[streams]]\nid = \"a\"\nurl = \"ftp://h/x\"\n");
        assert_eq!((e.line, e.key.as_str()), (3, "streams[0].url"), "{e}");

        let e = err("[[streams]]\nid = \"a b\"\nurl = \"rtsp://h/x\"\n");
        assert_eq!((e.line, e.key.as_str()), (2, "streams[0].id"), "{e}");

        let text = "[[streams]]\nid = \"a\"\nurl = \"rtsp://h/x\"\n\
                    [[streams]]\nid = \"a\"\nurl = \"rtsp://h/y\"\n";
        let e = err(text);
        assert_eq!((e.line, e.key.as_str()), (5, "streams[1].id"), "{e}");
        assert!(e.message.contains("duplicate"), "{e}");

        let text = "[[streams]]\nid = \"a\"\nurl = \"rtsp://h/x\"\nwidth = 320\n";
        let e = err(text);
        assert_eq!((e.line, e.key.as_str()), (4, "streams[0].height"), "{e}");

        let e = err("[defaults]\nring_slots = 1\n");
        assert_eq!(e.line, 2, "{e}");

        let e = err("[broker]\nshm_prefix = \"../x\"\n");
        assert_eq!((e.line, e.key.as_str()), (2, "broker.shm_prefix"), "{e}");

        let e = err("[brokr]\n");
        assert_eq!(e.line, 1, "{e}");

        let text = format!("{}\n", "[broker]\nx = [");
        assert!(err(&text).line >= 2);
        // The rendering carries all of it.
        let shown = err("[broker]\nmax_streams = -1\n").to_string();
        assert!(shown.starts_with("bad.toml:2:"), "{shown}");
        assert!(shown.contains("max_streams"), "{shown}");
    }

    #[test]
    fn credentials_stay_out_of_url_errors() {
        let e = err("[[streams]]\nid = \"a\"\nurl = \"gopher://user:hunter2@h/x\"\n");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn environment_overrides_the_file() {
        let mut c = Config::parse("t.toml", GOOD).unwrap();
        let env: HashMap<&str, &str> = [
            ("FRAMEBROKER_MAX_STREAMS", "3"),
            ("FRAMEBROKER_SOCKET", "/run/x/c.sock"),
            ("FRAMEBROKER_DEFAULTS_PIXEL_FORMAT", "gray"),
            ("FRAMEBROKER_DEFAULTS_STALL_TIMEOUT_MS", "1500"),
            ("FRAMEBROKER_GATEWAY_LISTEN", "127.0.0.1:9000"),
            (
                "FRAMEBROKER_GATEWAY_CORS_ORIGINS",
                r#"["https://a.example"]"#,
            ),
            ("FRAMEBROKER_UNRELATED", "ignored"),
        ]
        .into_iter()
        .collect();
        c.apply_env(|k| env.get(k).map(|v| v.to_string())).unwrap();
        assert_eq!(c.file.broker.max_streams, Some(3));
        assert_eq!(c.file.broker.socket, Some("/run/x/c.sock".into()));
        assert_eq!(c.file.defaults.stall_timeout_ms, Some(1500));
        assert_eq!(
            c.file.gateway.listen,
            Some("127.0.0.1:9000".parse().unwrap())
        );
        assert_eq!(
            c.file.gateway.cors_origins,
            Some(vec!["https://a.example".to_string()])
        );
        // Defaults apply only where a stream does not say.
        let s = c.streams().unwrap();
        assert_eq!(s[0].pixel_format, PixelFormat::Gray);
        assert_eq!(s[1].pixel_format, PixelFormat::Bgr24);
    }

    #[test]
    fn bad_environment_values_are_refused_by_name() {
        for (k, v) in [
            ("FRAMEBROKER_MAX_STREAMS", "lots"),
            ("FRAMEBROKER_DEFAULTS_PIXEL_FORMAT", "bgra"),
            ("FRAMEBROKER_GATEWAY_LISTEN", "nowhere"),
            ("FRAMEBROKER_SHM_PREFIX", "a/b"),
        ] {
            let mut c = Config::parse("t.toml", GOOD).unwrap();
            let before = c.file.clone();
            let e = c
                .apply_env(|n| (n == k).then(|| v.to_string()))
                .unwrap_err();
            assert_eq!(
                (e.origin.as_str(), e.key.as_str()),
                ("environment", k),
                "{e}"
            );
            assert_eq!(c.file, before, "a refused value changes nothing");
        }
    }

    #[test]
    fn empty_file_is_valid() {
        let c = Config::parse("e.toml", "").unwrap();
        assert!(c.streams().unwrap().is_empty());
    }
}
