//! Error bodies: `{"error": {"code": ..., "message": ...}}`, their codes and HTTP
//! statuses, and the lenient reader a client uses.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{quote, ProtocolError};

/// Largest error body [`decode_error`] reads; larger bodies give `None`.
pub const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// Longest error message [`decode_error`] keeps, in characters; the rest is cut off.
pub const MAX_ERROR_MESSAGE_CHARS: usize = 1024;

/// The `code` of an error body. Wire names are snake_case (`bad_request`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    BadRequest,
    /// No valid credential: a bearer token that is malformed, expired, not yet valid,
    /// wrongly signed, for another issuer or audience, or too long (401).
    Unauthorized,
    /// The credential is valid but does not allow what was asked, e.g. a request `access`
    /// above the token's tier (403).
    Forbidden,
    PayloadTooLarge,
    /// The request's body did not arrive in time (408).
    RequestTimeout,
    UnsupportedMediaType,
    MethodNotAllowed,
    NotFound,
    /// Too many requests from this caller: retry after `Retry-After` seconds (429).
    RateLimited,
    /// The server is at capacity (every batch slot and queue place taken): retry after
    /// `Retry-After` seconds (503). Nothing was read or fetched for the request.
    Overloaded,
    UpstreamError,
    UpstreamTimeout,
    Internal,
    /// Only in a partial answer's `error` ([`Unanswered`]), never a whole answer's: the
    /// tiles and ids it names did not fit in this answer (it reached what clients read,
    /// [`Limits::max_body_bytes`](super::Limits::max_body_bytes), or the server's most items
    /// per answer) and are served when asked again in a later request. What was answered
    /// came first in request order. Unlike [`ErrorCode::PayloadTooLarge`] (that tile or item
    /// cannot be served) it says nothing against them nor the backend. Its status, 413, is
    /// what a whole answer refused for its size would have had.
    ResponseFull,
}

impl ErrorCode {
    /// Every code.
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::PayloadTooLarge,
        ErrorCode::RequestTimeout,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::MethodNotAllowed,
        ErrorCode::NotFound,
        ErrorCode::RateLimited,
        ErrorCode::Overloaded,
        ErrorCode::UpstreamError,
        ErrorCode::UpstreamTimeout,
        ErrorCode::Internal,
        ErrorCode::ResponseFull,
    ];

    /// The HTTP status to answer with: 400, 401, 403, 413, 408, 415, 405, 404, 429, 503, 502,
    /// 504, 500, 413.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::RequestTimeout => 408,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::NotFound => 404,
            ErrorCode::RateLimited => 429,
            ErrorCode::Overloaded => 503,
            ErrorCode::UpstreamError => 502,
            ErrorCode::UpstreamTimeout => 504,
            ErrorCode::Internal => 500,
            ErrorCode::ResponseFull => 413,
        }
    }

    /// Whether an answer left something out to shed load (`overloaded`, `rate_limited`,
    /// `upstream_timeout`): a failure of what it left out, as the whole refusal would be.
    pub fn sheds_load(self) -> bool {
        matches!(
            self,
            ErrorCode::Overloaded | ErrorCode::RateLimited | ErrorCode::UpstreamTimeout
        )
    }

    /// A code for an HTTP error status when the body says nothing usable: the code with
    /// that status, else `BadRequest` for other 4xx and `Internal` for anything else.
    pub fn from_http_status(status: u16) -> ErrorCode {
        ErrorCode::ALL
            .into_iter()
            .find(|c| c.http_status() == status)
            .unwrap_or(if (400..500).contains(&status) {
                ErrorCode::BadRequest
            } else {
                ErrorCode::Internal
            })
    }

    /// The wire name, e.g. `"bad_request"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::NotFound => "not_found",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::UpstreamError => "upstream_error",
            ErrorCode::UpstreamTimeout => "upstream_timeout",
            ErrorCode::Internal => "internal",
            ErrorCode::ResponseFull => "response_full",
        }
    }

    /// The code with wire name `name`, if there is one.
    pub fn from_name(name: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `error` member of a *partial* response (200, some of the request answered): why the
/// rest could not be answered, and exactly which requested tiles and ids that is. A client
/// treats those as failed (asked again later), never as empty or as "does not exist":
/// `missing` is only for ids known not to exist for the caller.
///
/// ```
/// use tilewarm::protocol::{ErrorCode, Unanswered};
/// let u = Unanswered {
///     code: ErrorCode::UpstreamTimeout,
///     message: "the origin did not answer in time".into(),
///     tiles: vec!["14/2616/5714".parse().unwrap()],
///     ids: vec!["a1".into()],
/// };
/// assert_eq!(
///     serde_json::to_string(&u).unwrap(),
///     r#"{"code":"upstream_timeout","message":"the origin did not answer in time","tiles":["14/2616/5714"],"ids":["a1"]}"#
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unanswered {
    pub code: ErrorCode,
    pub message: String,
    /// Requested tiles left out of the response's `tiles`.
    pub tiles: Vec<crate::tile::TileId>,
    /// Requested ids neither in `items` nor in `missing`.
    pub ids: Vec<String>,
}

/// An error body: `{"error":{"code":"bad_request","message":"..."}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Serialize)]
struct ErrorEnvelope<'a> {
    error: ErrorFields<'a>,
}

#[derive(Serialize)]
struct ErrorFields<'a> {
    code: ErrorCode,
    message: &'a str,
}

#[derive(Deserialize)]
struct WireErrorEnvelope {
    error: WireErrorFields,
}

#[derive(Deserialize)]
struct WireErrorFields {
    code: String,
    #[serde(default)]
    message: String,
}

impl ErrorBody {
    /// The compact wire form.
    ///
    /// ```
    /// use tilewarm::protocol::{ErrorBody, ErrorCode};
    /// let e = ErrorBody { code: ErrorCode::RateLimited, message: "slow down".into() };
    /// assert_eq!(e.to_json(), r#"{"error":{"code":"rate_limited","message":"slow down"}}"#);
    /// ```
    pub fn to_json(&self) -> String {
        let envelope = ErrorEnvelope {
            error: ErrorFields {
                code: self.code,
                message: self.message.as_str(),
            },
        };
        // A code and a string always serialise, so this cannot fail.
        serde_json::to_string(&envelope).unwrap_or_default()
    }
}

impl From<&ProtocolError> for ErrorBody {
    /// The body a server answers a bad request with: [`ProtocolError::code`] and the
    /// error's message.
    fn from(e: &ProtocolError) -> ErrorBody {
        ErrorBody {
            code: e.code(),
            message: e.to_string(),
        }
    }
}

/// Reads an error body, leniently: unknown fields are ignored, a missing `message` is
/// empty, a message longer than [`MAX_ERROR_MESSAGE_CHARS`] is cut. An unknown `code`
/// (a newer server) becomes [`ErrorCode::Internal`] with the code appended to the message,
/// e.g. `"nope (error code \"teapot\")"`. Anything else — not JSON, no `error` object, a
/// non-string code, a body over [`MAX_ERROR_BODY_BYTES`] — gives `None`; the caller can fall
/// back to [`ErrorCode::from_http_status`].
///
/// ```
/// use tilewarm::protocol::{decode_error, ErrorCode};
/// let e = decode_error(br#"{"error":{"code":"upstream_timeout","message":"backend slow"}}"#).unwrap();
/// assert_eq!(e.code, ErrorCode::UpstreamTimeout);
/// assert!(decode_error(b"<html>502</html>").is_none());
/// ```
pub fn decode_error(body: &[u8]) -> Option<ErrorBody> {
    if body.len() > MAX_ERROR_BODY_BYTES {
        return None;
    }
    let envelope: WireErrorEnvelope = serde_json::from_slice(body).ok()?;
    let WireErrorFields { code, message } = envelope.error;
    let mut message = match message.char_indices().nth(MAX_ERROR_MESSAGE_CHARS) {
        Some((end, _)) => message[..end].to_owned(),
        None => message,
    };
    let code = match ErrorCode::from_name(&code) {
        Some(c) => c,
        None => {
            message = format!("{message} (error code {})", quote(&code));
            ErrorCode::Internal
        }
    };
    Some(ErrorBody { code, message })
}
