//! The access token and the exposure rule.
//!
//! When a token is configured every API, WebSocket, MJPEG and metrics route wants
//! it, as `Authorization: Bearer <token>` or as `?token=<token>` (for WebSocket
//! and `<img>` URLs, which cannot carry headers). Without a token the gateway
//! must listen on loopback, unless told `--insecure-no-auth`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use warp::{Filter, Rejection};

use crate::errors::ApiError;

/// The configured token, if any.
#[derive(Clone, Default)]
pub struct Auth {
    token: Option<Arc<str>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("Auth")
            .field("token", &self.token.as_ref().map(|_| "***"))
            .finish()
    }
}

impl Auth {
    /// `None` or an empty token: no authentication.
    pub fn new(token: Option<&str>) -> Self {
        Auth {
            token: token.filter(|t| !t.is_empty()).map(Arc::from),
        }
    }

    pub fn enabled(&self) -> bool {
        self.token.is_some()
    }

    /// Whether a request with this `Authorization` header and `token` query
    /// parameter may pass.
    pub fn allows(&self, authorization: Option<&str>, query_token: Option<&str>) -> bool {
        let Some(want) = self.token.as_deref() else {
            return true;
        };
        let bearer = authorization.and_then(|h| {
            let (scheme, value) = h.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| value.trim())
        });
        [bearer, query_token]
            .into_iter()
            .flatten()
            .any(|given| constant_time_eq(given.as_bytes(), want.as_bytes()))
    }
}

/// Compares without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A filter that passes requests carrying the token and rejects the others with
/// 401 (it extracts nothing).
pub fn require(auth: Auth) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization")
        .and(
            warp::query::<HashMap<String, String>>()
                .or(warp::any().map(HashMap::new))
                .unify(),
        )
        .and_then(move |h: Option<String>, q: HashMap<String, String>| {
            let ok = auth.allows(h.as_deref(), q.get("token").map(String::as_str));
            async move {
                if ok {
                    Ok(())
                } else {
                    Err(warp::reject::custom(ApiError::unauthorized()))
                }
            }
        })
        .untuple_one()
}

/// Refuses to expose the gateway beyond loopback without a token, unless the
/// operator said `--insecure-no-auth`.
pub fn check_exposure(addr: SocketAddr, auth: &Auth, insecure_no_auth: bool) -> Result<(), String> {
    if addr.ip().is_loopback() || auth.enabled() || insecure_no_auth {
        return Ok(());
    }
    Err(format!(
        "refusing to listen on {addr} without a token: anyone who can reach it could start \
         streams and watch every camera. Set --token (or FRAMEBROKER_TOKEN), listen on \
         127.0.0.1, or pass --insecure-no-auth if you really mean it."
    ))
}

/// Refuses `--cors-origin '*'` beyond loopback without a token: every web page
/// any visitor of that network opens could then start and stop streams and read
/// every camera's frames through the visitor's browser.
pub fn check_cors(addr: SocketAddr, auth: &Auth, origins: &[String]) -> Result<(), String> {
    if !origins.iter().any(|o| o == "*") || addr.ip().is_loopback() || auth.enabled() {
        return Ok(());
    }
    Err(format!(
        "refusing --cors-origin '*' on {addr} without a token: any web page opened in a \
         browser that can reach {addr} could start and stop streams and read every camera's \
         frames. Set --token (or FRAMEBROKER_TOKEN), listen on 127.0.0.1, or list the \
         origins that may call the gateway."
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_header_or_query_token() {
        let a = Auth::new(Some("s3cret"));
        assert!(a.allows(Some("Bearer s3cret"), None));
        assert!(a.allows(Some("bearer  s3cret "), None));
        assert!(a.allows(None, Some("s3cret")));
        assert!(a.allows(Some("Bearer wrong"), Some("s3cret")));
        assert!(!a.allows(None, None));
        assert!(!a.allows(Some("Bearer wrong"), None));
        assert!(!a.allows(Some("Basic s3cret"), None));
        assert!(!a.allows(None, Some("s3cre")));
        assert!(!a.allows(None, Some("")));
        let open = Auth::new(None);
        assert!(open.allows(None, None));
        assert!(!Auth::new(Some("")).enabled());
        assert!(!format!("{a:?}").contains("s3cret"));
    }

    #[test]
    fn exposure_rule() {
        let lo: SocketAddr = "127.0.0.1:8091".parse().unwrap();
        let lo6: SocketAddr = "[::1]:8091".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:8091".parse().unwrap();
        let none = Auth::new(None);
        let tok = Auth::new(Some("t"));
        assert!(check_exposure(lo, &none, false).is_ok());
        assert!(check_exposure(lo6, &none, false).is_ok());
        let e = check_exposure(any, &none, false).unwrap_err();
        assert!(e.contains("--token"), "{e}");
        assert!(check_exposure(any, &tok, false).is_ok());
        assert!(check_exposure(any, &none, true).is_ok());
    }

    #[test]
    fn any_origin_beyond_loopback_needs_a_token() {
        let lo: SocketAddr = "127.0.0.1:8091".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:8091".parse().unwrap();
        let star = vec!["*".to_string()];
        let some = vec!["http://localhost:8000".to_string()];
        let none = Auth::new(None);
        assert!(check_cors(lo, &none, &star).is_ok());
        assert!(check_cors(any, &none, &some).is_ok());
        assert!(check_cors(any, &Auth::new(Some("t")), &star).is_ok());
        let e = check_cors(any, &none, &star).unwrap_err();
        assert!(e.contains("--token") && e.contains("any web page"), "{e}");
    }
}
