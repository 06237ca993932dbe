//! The one rejection type of the gateway and the `.recover()` handler that turns
//! every rejection (ours and warp's) into a JSON `{"error": "..."}` answer.

use std::convert::Infallible;

use framebroker_client::Error as ClientError;
use framebroker_proto::control::ErrorCode;
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Rejection, Reply};

use crate::models::ErrorBody;

/// `text` with every credential in it replaced by `***`: the user-info of
/// every URL and credential-looking `key=value` pairs (`?user=…&password=…`).
/// For everything the gateway answers or logs that may hold a URL: broker
/// messages, ffmpeg errors, parser echoes. The one redaction of the project,
/// [`framebroker_proto::naming::redact_text`].
pub use framebroker_proto::naming::redact_text as redact;

/// Message of the answer to a request no route matches. The OpenAPI test tells a
/// missing route from a missing stream by it.
pub const NO_ROUTE: &str = "no such route";

/// An error answer: a status and a message that says which stream or request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl warp::reject::Reject for ApiError {}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong token: send `Authorization: Bearer <token>` or `?token=<token>`",
        )
    }

    pub fn stream_not_found(id: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("stream {id:?} not found"))
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// The error answer for a failed broker call. Broker messages pass through
    /// [`redact`] so that no URL credentials ever reach a client.
    pub fn from_client(e: &ClientError) -> Self {
        let text = redact(&e.to_string());
        match e {
            ClientError::Connect { .. } | ClientError::Disconnected { .. } => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("broker unavailable: {text}"),
            ),
            ClientError::Version { .. } | ClientError::Unexpected { .. } => {
                Self::new(StatusCode::BAD_GATEWAY, text)
            }
            ClientError::Broker { code, message, .. } => {
                let message = redact(message);
                let status = match code {
                    ErrorCode::BadRequest
                    | ErrorCode::InvalidId
                    | ErrorCode::InvalidUrl
                    | ErrorCode::InvalidGeometry => StatusCode::BAD_REQUEST,
                    ErrorCode::NotFound => StatusCode::NOT_FOUND,
                    ErrorCode::AlreadyExists => StatusCode::CONFLICT,
                    ErrorCode::LimitExceeded => StatusCode::TOO_MANY_REQUESTS,
                    ErrorCode::NotReady => StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::UnsupportedVersion => StatusCode::BAD_GATEWAY,
                    ErrorCode::NotAttached | ErrorCode::Internal => {
                        StatusCode::INTERNAL_SERVER_ERROR
                    }
                };
                Self::new(status, message)
            }
            ClientError::Ring { .. } => Self::new(StatusCode::SERVICE_UNAVAILABLE, text),
        }
    }

    /// True when the broker could not be reached (the connection should be redone).
    pub fn is_unavailable(&self) -> bool {
        self.status == StatusCode::SERVICE_UNAVAILABLE
    }
}

impl Reply for ApiError {
    fn into_response(self) -> Response {
        json_error(self.status, &self.message)
    }
}

/// `{"error": message}` with `status`. The message passes through [`redact`]
/// whatever made it: a URL with credentials (echoed by a JSON parser, a broker
/// message, a path) never comes back in an error.
pub fn json_error(status: StatusCode, message: &str) -> Response {
    let mut res = warp::reply::with_status(
        warp::reply::json(&ErrorBody {
            error: redact(message),
        }),
        status,
    )
    .into_response();
    if status == StatusCode::UNAUTHORIZED {
        res.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"framebroker\""),
        );
    }
    res
}

/// Turns any rejection into a JSON error. Ours first (they carry the precise
/// status), then warp's own, then "no such route".
pub async fn recover(r: Rejection) -> Result<Response, Infallible> {
    Ok(rejection_response(&r))
}

pub fn rejection_response(r: &Rejection) -> Response {
    use warp::reject;
    if let Some(e) = r.find::<ApiError>() {
        return json_error(e.status, &e.message);
    }
    if let Some(e) = r.find::<warp::filters::body::BodyDeserializeError>() {
        // The serde message says which field and what type was expected.
        return json_error(
            StatusCode::BAD_REQUEST,
            &format!(
                "invalid JSON body: {}",
                std::error::Error::source(e)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| e.to_string())
            ),
        );
    }
    if r.find::<reject::PayloadTooLarge>().is_some() {
        return json_error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
    }
    if r.find::<reject::LengthRequired>().is_some() {
        return json_error(
            StatusCode::LENGTH_REQUIRED,
            "a Content-Length header is required",
        );
    }
    if r.find::<reject::UnsupportedMediaType>().is_some() {
        return json_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be JSON (Content-Type: application/json)",
        );
    }
    if let Some(e) = r.find::<reject::InvalidQuery>() {
        return json_error(
            StatusCode::BAD_REQUEST,
            &format!("invalid query string: {e}"),
        );
    }
    if r.find::<warp::filters::ws::MissingConnectionUpgrade>()
        .is_some()
        || r.find::<reject::InvalidHeader>().is_some_and(|h| {
            [
                "connection",
                "upgrade",
                "sec-websocket-key",
                "sec-websocket-version",
            ]
            .contains(&h.name())
        })
    {
        return json_error(
            StatusCode::BAD_REQUEST,
            "this route is a WebSocket: send an Upgrade: websocket request",
        );
    }
    if let Some(e) = r.find::<reject::InvalidHeader>() {
        return json_error(StatusCode::BAD_REQUEST, &e.to_string());
    }
    if let Some(e) = r.find::<reject::MissingHeader>() {
        return json_error(StatusCode::BAD_REQUEST, &e.to_string());
    }
    if let Some(e) = r.find::<warp::filters::cors::CorsForbidden>() {
        return json_error(StatusCode::FORBIDDEN, &e.to_string());
    }
    if r.find::<reject::MethodNotAllowed>().is_some() {
        return json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed on this route",
        );
    }
    if r.is_not_found() {
        return json_error(StatusCode::NOT_FOUND, NO_ROUTE);
    }
    tracing::warn!(rejection = %redact(&format!("{r:?}")), "unhandled rejection");
    json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redacts_user_info_and_query_credentials_of_every_url() {
        assert_eq!(
            redact(
                "[error] rtsp://admin:pw@cam:554/x?user=admin&password=pw&ch=1: Connection refused"
            ),
            "[error] rtsp://***@cam:554/x?user=***&password=***&ch=1: Connection refused"
        );
        assert_eq!(
            redact("invalid source URL \"http://cam/x?token=abc\": scheme not allowed"),
            "invalid source URL \"http://cam/x?token=***\": scheme not allowed"
        );
        assert_eq!(
            redact("a rtsp://h/x?pwd=1, then rtsps://u:p@h2/y?a=b. done"),
            "a rtsp://h/x?pwd=***, then rtsps://***@h2/y?a=b. done"
        );
        assert_eq!(redact("no url here: a://"), "no url here: a://");
        assert_eq!(redact("«rtsp://u:p@h»"), "«rtsp://***@h»");
        assert_eq!(redact("://x?password=1"), "://x?password=***");
        for s in ["", "rtsp://", "é://x", "x:// y", "::///??=="] {
            redact(s);
        }
    }
}
