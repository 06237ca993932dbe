//! Names and validation: stream ids, segment names, allowed source URLs, and the
//! redaction of credentials. Everything that becomes a file name or an ffmpeg
//! argument passes through here first.

use crate::layout::MAX_ID_LEN;
use crate::Error;

/// Default prefix of segment names; configurable so parallel brokers (and tests)
/// never collide.
pub const DEFAULT_PREFIX: &str = "fb-";
/// Longest URL accepted.
pub const MAX_URL_LEN: usize = 4096;
/// The scheme of the broker's built-in test source.
pub const TEST_SCHEME: &str = "testsrc";

/// Checks a stream id: 1 to 64 characters from `[A-Za-z0-9_.-]`, not starting
/// with `.` and without `..` (so an id is never `.`, `..` or a hidden file name,
/// and reads as one path segment in URLs and file names: `/` is never allowed).
///
/// A dot keeps segment names unambiguous: [`segment_name`] appends `.` and the
/// decimal generation, which has no dot, so the text after the name's last dot
/// is always the generation and everything before it the id.
pub fn validate_stream_id(id: &str) -> Result<(), Error> {
    let bad = |reason: &str| Error::InvalidId {
        id: printable(id, 80),
        reason: reason.into(),
    };
    if id.is_empty() {
        return Err(bad("empty"));
    }
    if id.len() > MAX_ID_LEN {
        return Err(bad(&format!("longer than {MAX_ID_LEN} characters")));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-' || *c == '.'))
    {
        return Err(bad(&format!(
            "character {c:?} not allowed (use A-Z a-z 0-9 _ - .)"
        )));
    }
    if id.starts_with('.') {
        return Err(bad("must not start with '.'"));
    }
    if id.contains("..") {
        return Err(bad("must not contain '..'"));
    }
    Ok(())
}

/// Checks a segment-name prefix: 1 to 32 characters from `[A-Za-z0-9_.-]`.
pub fn validate_prefix(prefix: &str) -> Result<(), Error> {
    let ok = !prefix.is_empty()
        && prefix.len() <= 32
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidPrefix {
            prefix: printable(prefix, 40),
        })
    }
}

/// The one function that names segments: `/<prefix><id>.<generation>`, the POSIX
/// shared-memory name (the file under `/dev/shm` is the same without the slash).
///
/// One name per (id, generation) even with dots in ids (`camera.1` generation 2
/// is `/fb-camera.1.2`): the generation is written in decimal, without a dot, so
/// it is exactly the text after the last dot, and the id the text before it
/// ([`parse_segment_name`] reads it back that way).
pub fn segment_name(prefix: &str, id: &str, generation: u64) -> Result<String, Error> {
    validate_prefix(prefix)?;
    validate_stream_id(id)?;
    Ok(format!("/{prefix}{id}.{generation}"))
}

/// Splits a segment name made by [`segment_name`] back into id and generation.
pub fn parse_segment_name<'a>(prefix: &str, name: &'a str) -> Option<(&'a str, u64)> {
    let rest = name
        .strip_prefix('/')
        .unwrap_or(name)
        .strip_prefix(prefix)?;
    let (id, generation) = rest.rsplit_once('.')?;
    validate_stream_id(id).ok()?;
    Some((id, generation.parse().ok()?))
}

/// The Windows kernel-object name of segment `segment` (`/fb-cam.1` →
/// `Local\fb-cam.1`): the name without its slash in the session namespace.
/// Decision 12 in `proto/doc/decisions.md`.
pub fn windows_object_name(segment: &str) -> String {
    format!("Local\\{}", segment.strip_prefix('/').unwrap_or(segment))
}

/// The name of wake event `k` (0..4) of segment `segment`
/// (`Local\fb-cam.1~wake0`). `~` is in no prefix or stream id, so no segment
/// name equals an event name. Decision 13 in `proto/doc/decisions.md`.
pub fn windows_wake_event_name(segment: &str, k: usize) -> String {
    format!("{}~wake{k}", windows_object_name(segment))
}

/// The Windows pipe name for a control-socket setting: a value that starts with
/// `\\.\pipe\` is used as it is, any other value `X` means `\\.\pipe\X`
/// (decision 14).
pub fn windows_pipe_name(setting: &str) -> String {
    const PIPES: &str = r"\\.\pipe\";
    if setting.len() >= PIPES.len() && setting[..PIPES.len()].eq_ignore_ascii_case(PIPES) {
        setting.to_string()
    } else {
        format!("{PIPES}{setting}")
    }
}

/// What kind of source a URL names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A network camera: `rtsp`, `rtsps` (and `rtmp`, `http(s)` when allowed).
    Network,
    /// The built-in test pattern: `testsrc://?size=640x480&rate=30&pattern=testsrc2`.
    Test(TestPattern),
    /// A local file (`file:///…`): only with the broker's `--allow-files`.
    File(String),
}

/// Parameters of the built-in test source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestPattern {
    pub width: u32,
    pub height: u32,
    pub rate: u32,
    /// ffmpeg lavfi source name: `testsrc2`, `testsrc`, `smptebars`, `rgbtestsrc`, `mandelbrot`.
    pub pattern: String,
}

/// Which schemes reach ffmpeg.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UrlPolicy {
    /// Allow `file://` sources.
    pub allow_files: bool,
    /// Allow `http://`, `https://` and `rtmp://` sources.
    pub allow_http: bool,
}

/// Checks a source URL and says what it is. Only `rtsp://`, `rtsps://`, the test
/// source and (when allowed) `file://`, `http(s)://`, `rtmp://` pass; ffmpeg
/// pseudo-protocols (`concat:`, `subfile:`, `pipe:`, …), anything that could be
/// read as an option (leading `-`) and control characters are refused.
pub fn classify_url(url: &str, policy: &UrlPolicy) -> Result<Source, Error> {
    let bad = |reason: &str| Error::InvalidUrl {
        url: redact_url(&printable(url, 200)),
        reason: reason.into(),
    };
    if url.is_empty() {
        return Err(bad("empty"));
    }
    if url.len() > MAX_URL_LEN {
        return Err(bad(&format!("longer than {MAX_URL_LEN} bytes")));
    }
    if url.starts_with('-') {
        return Err(bad("must not start with '-'"));
    }
    if url.chars().any(|c| c.is_control() || c == ' ') {
        return Err(bad("contains spaces or control characters"));
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(bad("no scheme (expected rtsp://, rtsps:// or testsrc://)"));
    };
    // A scheme is letters only: this refuses "concat:", "subfile,,…", "crypto+…".
    if scheme.is_empty() || !scheme.chars().all(|c| c.is_ascii_alphabetic()) {
        return Err(bad("malformed scheme"));
    }
    match scheme.to_ascii_lowercase().as_str() {
        "rtsp" | "rtsps" => {
            if rest.is_empty() || rest.starts_with('/') {
                return Err(bad("no host"));
            }
            Ok(Source::Network)
        }
        "http" | "https" | "rtmp" if policy.allow_http => Ok(Source::Network),
        "http" | "https" | "rtmp" => Err(bad(
            "scheme not allowed (start the broker with --allow-http)",
        )),
        "file" if policy.allow_files => {
            let path = rest.strip_prefix("localhost").unwrap_or(rest);
            if !path.starts_with('/') {
                return Err(bad("file URLs need an absolute path"));
            }
            Ok(Source::File(path.to_string()))
        }
        "file" => Err(bad(
            "local files are not allowed (start the broker with --allow-files)",
        )),
        TEST_SCHEME => parse_test_url(rest).map(Source::Test).map_err(|r| bad(&r)),
        _ => Err(bad("scheme not allowed (allowed: rtsp, rtsps, testsrc)")),
    }
}

fn parse_test_url(rest: &str) -> Result<TestPattern, String> {
    let query = rest.split_once('?').map(|(_, q)| q).unwrap_or("");
    let mut p = TestPattern {
        width: 640,
        height: 480,
        rate: 30,
        pattern: "testsrc2".into(),
    };
    for kv in query.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("bad query item {kv:?}"))?;
        match k {
            "size" => {
                let (w, h) = v.split_once('x').ok_or("size must be WxH")?;
                p.width = w.parse().map_err(|_| "bad width")?;
                p.height = h.parse().map_err(|_| "bad height")?;
                if !(1..=crate::layout::MAX_DIMENSION).contains(&p.width)
                    || !(1..=crate::layout::MAX_DIMENSION).contains(&p.height)
                {
                    return Err("size out of range".into());
                }
            }
            "rate" => {
                p.rate = v.parse().map_err(|_| "bad rate")?;
                if !(1..=240).contains(&p.rate) {
                    return Err("rate must be 1..240".into());
                }
            }
            "pattern" => {
                const PATTERNS: [&str; 5] = [
                    "testsrc2",
                    "testsrc",
                    "smptebars",
                    "rgbtestsrc",
                    "mandelbrot",
                ];
                if !PATTERNS.contains(&v) {
                    return Err(format!("pattern must be one of {PATTERNS:?}"));
                }
                p.pattern = v.into();
            }
            _ => return Err(format!("unknown parameter {k:?}")),
        }
    }
    Ok(p)
}

/// The URL with any `user:password@` replaced by `***@`: the only form of a URL
/// that may reach logs, stats, errors or API answers.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let mut out = match authority.rfind('@') {
        Some(at) => format!("{scheme}://***@{}{path}", &authority[at + 1..]),
        None => url.to_string(),
    };
    // Credentials in the query (`?user=…&password=…`, common on cheap cameras).
    if let Some(q) = out.find('?') {
        let (head, query) = out.split_at(q + 1);
        let redacted: Vec<String> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if SECRET_KEYS.contains(&k.to_ascii_lowercase().as_str()) => {
                    format!("{k}=***")
                }
                _ => kv.to_string(),
            })
            .collect();
        out = format!("{head}{}", redacted.join("&"));
    }
    out
}

/// `text` (an ffmpeg log line, an error, an API answer) with every credential in
/// it replaced by `***`: the user-info of every URL (`rtsp://admin:pw@cam/x: 401`
/// → `rtsp://***@cam/x: 401`) and the value of every secret-looking `key=value`,
/// in a URL's query or in free text (`?user=admin&password=pw` →
/// `?user=***&password=***`; keys such as password, token, user). The one
/// redaction of free text in the project: the broker's logs and errors, the
/// gateway's answers.
pub fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || "/?#'\"<>".contains(c))
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                out.push_str("***@");
                out.push_str(&authority[at + 1..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    redact_secret_params(&out)
}

/// Query keys whose values are secrets wherever they appear.
const SECRET_KEYS: [&str; 8] = [
    "password", "pass", "pwd", "passwd", "user", "username", "token", "auth",
];

/// `key=value` pairs with a secret key (see [`SECRET_KEYS`]) get their value
/// replaced by `***`, in free text as in URLs.
fn redact_secret_params(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(eq) = rest.find('=') {
        let (head, tail) = rest.split_at(eq);
        let key_start = head
            .char_indices()
            .rev()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '_'))
            .map_or(0, |(i, c)| i + c.len_utf8());
        let key = &head[key_start..];
        out.push_str(head);
        out.push('=');
        let tail = &tail[1..];
        if SECRET_KEYS.contains(&key.to_ascii_lowercase().as_str()) {
            let end = tail
                .find(|c: char| c == '&' || c == '#' || c.is_whitespace() || "'\"<>,;)".contains(c))
                .unwrap_or(tail.len());
            out.push_str("***");
            rest = &tail[end..];
        } else {
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

/// A stream id derived from a URL (for clients that open by URL): host, port and
/// path squeezed into `[A-Za-z0-9_-]`, never the credentials, with a short hash of
/// the whole URL so two URLs never share an id.
pub fn stream_id_for_url(url: &str) -> String {
    let without_scheme = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority_end = without_scheme
        .find(['/', '?', '#'])
        .unwrap_or(without_scheme.len());
    let (authority, path) = without_scheme.split_at(authority_end);
    let host = authority
        .rsplit_once('@')
        .map(|(_, h)| h)
        .unwrap_or(authority);
    let path = path.split(['?', '#']).next().unwrap_or("");
    let mut readable: String = format!("{host}{path}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    readable = readable.trim_matches('_').to_string();
    if readable.is_empty() {
        // No host or path (`testsrc://?size=…`): name it after the scheme.
        readable = url
            .split_once("://")
            .map(|(s, _)| s.to_ascii_lowercase())
            .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphabetic()))
            .unwrap_or_else(|| "stream".into());
    }
    readable.truncate(MAX_ID_LEN - 9);
    format!("{readable}-{:08x}", crc32fast::hash(url.as_bytes()))
}

fn printable(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .take(max)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if s.chars().count() > max {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ids() {
        for ok in [
            "a",
            "cam-1",
            "Front_Door",
            &"x".repeat(64),
            "camera.1",
            "a.b.c",
            "cam.",
        ] {
            validate_stream_id(ok).unwrap();
        }
        for bad in [
            "",
            "../etc",
            "a/b",
            ".",
            "..",
            ".hidden",
            "a..b",
            "camera.1/..",
            "a b",
            "nul\0",
            "é",
            &"x".repeat(65),
            "%2e%2e",
        ] {
            assert!(validate_stream_id(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn segment_names_round_trip() {
        let n = segment_name("fb-", "cam-1", 3).unwrap();
        assert_eq!(n, "/fb-cam-1.3");
        assert_eq!(parse_segment_name("fb-", &n), Some(("cam-1", 3)));
        assert_eq!(parse_segment_name("fb-", "/other-cam.3"), None);
        assert!(segment_name("fb/", "cam", 1).is_err());
        assert!(segment_name("fb-", "../x", 1).is_err());
        let n = segment_name("fb-", "camera.1", 2).unwrap();
        assert_eq!(n, "/fb-camera.1.2");
        assert_eq!(parse_segment_name("fb-", &n), Some(("camera.1", 2)));
    }

    #[test]
    fn windows_names() {
        let n = segment_name("fb-", "cam-1", 3).unwrap();
        assert_eq!(windows_object_name(&n), r"Local\fb-cam-1.3");
        assert_eq!(windows_wake_event_name(&n, 0), r"Local\fb-cam-1.3~wake0");
        assert_eq!(windows_wake_event_name(&n, 3), r"Local\fb-cam-1.3~wake3");
        assert_eq!(windows_pipe_name(r"\\.\pipe\fb-test"), r"\\.\pipe\fb-test");
        assert_eq!(windows_pipe_name(r"\\.\PIPE\fb-test"), r"\\.\PIPE\fb-test");
        assert_eq!(windows_pipe_name("fb-test"), r"\\.\pipe\fb-test");
    }

    proptest::proptest! {
        #[test]
        fn no_segment_name_is_an_event_name(
            p1 in "[A-Za-z0-9_.-]{1,32}", id1 in "[A-Za-z0-9_-]{1,64}", g1 in 0u64..1000,
            p2 in "[A-Za-z0-9_.-]{1,32}", id2 in "[A-Za-z0-9_-]{1,64}", g2 in 0u64..1000,
            k in 0usize..4,
        ) {
            let (Ok(a), Ok(b)) = (segment_name(&p1, &id1, g1), segment_name(&p2, &id2, g2)) else {
                return Ok(());
            };
            proptest::prop_assert_ne!(windows_object_name(&a), windows_wake_event_name(&b, k));
        }
    }

    #[test]
    fn url_schemes() {
        let p = UrlPolicy::default();
        assert_eq!(
            classify_url("rtsp://127.0.0.1:8554/cam", &p).unwrap(),
            Source::Network
        );
        assert_eq!(
            classify_url("RTSPS://cam.local/x", &p).unwrap(),
            Source::Network
        );
        for bad in [
            "file:///etc/passwd",
            "concat:a|b",
            "subfile,,start,0,end,0,,:/etc/passwd",
            "pipe:0",
            "http://x/y",
            "-i rtsp://x",
            "-rtsp://x",
            "rtsp://",
            "rtsp:///path",
            "rtsp://a b",
            "rtsp://a\nb",
            "crypto+rtsp://x",
            "gopher://x",
            "",
        ] {
            assert!(classify_url(bad, &p).is_err(), "{bad:?} accepted");
        }
        let allow = UrlPolicy {
            allow_files: true,
            allow_http: true,
        };
        assert_eq!(
            classify_url("file:///tmp/a.mp4", &allow).unwrap(),
            Source::File("/tmp/a.mp4".into())
        );
        assert_eq!(classify_url("http://x/y", &allow).unwrap(), Source::Network);
    }

    #[test]
    fn test_source_urls() {
        let p = UrlPolicy::default();
        let Source::Test(t) = classify_url("testsrc://", &p).unwrap() else {
            panic!()
        };
        assert_eq!(
            (t.width, t.height, t.rate, t.pattern.as_str()),
            (640, 480, 30, "testsrc2")
        );
        let Source::Test(t) =
            classify_url("testsrc://?size=320x240&rate=15&pattern=smptebars", &p).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (t.width, t.height, t.rate, t.pattern.as_str()),
            (320, 240, 15, "smptebars")
        );
        for bad in [
            "testsrc://?size=0x1",
            "testsrc://?rate=1000",
            "testsrc://?pattern=movie",
            "testsrc://?x=1",
        ] {
            assert!(classify_url(bad, &p).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redact_url("rtsp://admin:secret@10.0.0.1:554/s1"),
            "rtsp://***@10.0.0.1:554/s1"
        );
        assert_eq!(redact_url("rtsp://u:p@ss@host/x"), "rtsp://***@host/x");
        assert_eq!(
            redact_url("rtsp://host/x?user=a&password=b&ch=1"),
            "rtsp://host/x?user=***&password=***&ch=1"
        );
        assert_eq!(redact_url("rtsp://host/x"), "rtsp://host/x");
        let e = classify_url("gopher://admin:secret@host/", &UrlPolicy::default()).unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    #[test]
    fn redaction_in_free_text() {
        assert_eq!(
            redact_text(
                "[rtsp @ 0x5] method DESCRIBE failed for rtsp://admin:pw@10.0.0.1:554/s: 401"
            ),
            "[rtsp @ 0x5] method DESCRIBE failed for rtsp://***@10.0.0.1:554/s: 401"
        );
        assert_eq!(
            redact_text("a rtsp://x/y and rtsps://u:p@h b"),
            "a rtsp://x/y and rtsps://***@h b"
        );
        assert_eq!(redact_text("no urls"), "no urls");
        assert_eq!(
            redact_text("[rtsp @ 0x1] rtsp://cam/x?user=admin&password=pw&ch=1: 401 Unauthorized"),
            "[rtsp @ 0x1] rtsp://cam/x?user=***&password=***&ch=1: 401 Unauthorized"
        );
        assert_eq!(
            redact_text("size=640x480 token=abc def"),
            "size=640x480 token=*** def"
        );
    }

    #[test]
    fn ids_from_urls_hide_credentials() {
        let a = stream_id_for_url("rtsp://admin:secret@10.0.0.1:554/stream1?x=1");
        validate_stream_id(&a).unwrap();
        assert!(!a.contains("secret") && !a.contains("admin"), "{a}");
        assert!(a.starts_with("10_0_0_1_554_stream1-"), "{a}");
        assert_ne!(
            a,
            stream_id_for_url("rtsp://admin:other@10.0.0.1:554/stream1?x=1")
        );
    }

    proptest! {
        #[test]
        fn segment_names_are_one_per_id_and_generation(
            a in "[a-z0-9.]{1,12}", ga in 0u64..10_000,
            b in "[a-z0-9.]{1,12}", gb in 0u64..10_000,
        ) {
            if let (Ok(na), Ok(nb)) = (segment_name("fb-", &a, ga), segment_name("fb-", &b, gb)) {
                prop_assert_eq!(na == nb, (a.as_str(), ga) == (b.as_str(), gb));
                prop_assert_eq!(parse_segment_name("fb-", &na), Some((a.as_str(), ga)));
            }
        }

        #[test]
        fn derived_ids_are_always_valid(url in ".{0,300}") {
            validate_stream_id(&stream_id_for_url(&url)).unwrap();
        }

        #[test]
        fn redact_text_takes_any_text(text in "\\PC{0,200}") {
            let _ = redact_text(&text);
        }

        #[test]
        fn redaction_never_leaks_userinfo(user in "[a-z]{1,8}", pass in "[A-Z]{6,12}", host in "[a-z0-9.]{1,20}") {
            let url = format!("rtsp://{user}:{pass}@{host}:554/p");
            let r = redact_url(&url);
            prop_assert!(!r.contains(&pass));
        }
    }
}
