//! [`Error`]: every error of the Rust shell, with a code the npm package uses for the same
//! case (`ERR_TIMEOUT`, `ERR_HTTP`, `ERR_UNAUTHORIZED`, ...) and a message saying what was
//! wrong and, for the caller's own mistakes, what is allowed.

use tilewarm::batch::{Failure, Kind};
use tilewarm::client::FetchError;

/// What kind of error; [`ErrorCode::as_str`] is the npm package's `code` for the same case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// A request got no answer within `batch.timeoutMs`.
    Timeout,
    /// The request could not be made (connection refused, CORS, offline).
    Network,
    /// The server answered with an HTTP error status.
    Http,
    /// The server answered 401 twice, the second time with a token fetched again; or the
    /// token callback failed or gave something that is not a bearer token (nothing was
    /// sent then, and `status` is `None`).
    Unauthorized,
    /// The answer was not a valid batch response (or an item's `data` did not fit `T`); or
    /// it left a requested id out of both `items` and `missing` without saying why.
    InvalidResponse,
    /// An option or argument has a wrong type or shape.
    InvalidArgType,
    /// An option or argument is not one of the allowed values.
    InvalidArgValue,
    /// A number out of its range.
    OutOfRange,
    /// A tile string that is not `z/x/y`.
    InvalidTile,
    /// A viewport covering more data tiles than the planner plans for.
    TooManyTiles,
    /// The cache was disposed ([`TileCache::dispose`](crate::TileCache::dispose)) or
    /// dropped while this was pending, or before this call.
    Disposed,
}

impl ErrorCode {
    /// The npm package's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Timeout => "ERR_TIMEOUT",
            ErrorCode::Network => "ERR_NETWORK",
            ErrorCode::Http => "ERR_HTTP",
            ErrorCode::Unauthorized => "ERR_UNAUTHORIZED",
            ErrorCode::InvalidResponse => "ERR_INVALID_RESPONSE",
            ErrorCode::InvalidArgType => "ERR_INVALID_ARG_TYPE",
            ErrorCode::InvalidArgValue => "ERR_INVALID_ARG_VALUE",
            ErrorCode::OutOfRange => "ERR_OUT_OF_RANGE",
            ErrorCode::InvalidTile => "ERR_INVALID_TILE",
            ErrorCode::TooManyTiles => "ERR_TOO_MANY_TILES",
            ErrorCode::Disposed => "ERR_DISPOSED",
        }
    }
}

/// An error: a code, a message, and for failed requests what the request was.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{message} ({})", code.as_str())]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
    /// For a failed request: foreground or prefetch.
    pub kind: Option<Kind>,
    /// For a failed request: it is queued again after a backoff.
    pub will_retry: bool,
    /// The HTTP status of an `Http` or `Unauthorized` error.
    pub status: Option<u16>,
    /// The server's `Retry-After`, in ms.
    pub retry_after_ms: Option<u64>,
    /// The `error.code` of the server's error body, when it sent one (`forbidden`,
    /// `upstream_timeout`, `overloaded`…; the npm package's `serverCode`).
    pub server_code: Option<String>,
    /// For a failed request: the ids it asked for (a partial answer: the ids it left out).
    pub ids: Vec<String>,
}

impl Error {
    /// A caller's error (bad option or argument).
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Error {
        Error {
            code,
            message: message.into(),
            kind: None,
            will_retry: false,
            status: None,
            retry_after_ms: None,
            server_code: None,
            ids: Vec::new(),
        }
    }

    /// A pending call whose cache was disposed or dropped.
    pub fn disposed() -> Error {
        Error::new(
            ErrorCode::Disposed,
            "the TileCache was disposed or dropped while this was pending",
        )
    }

    /// A failed request as the core reported it. A 401 is `Unauthorized` (the shell only
    /// reports one after asking the token callback again).
    pub fn from_fetch(e: &FetchError) -> Error {
        let (code, status, retry_after_ms) = match &e.failure {
            Failure::Timeout => (ErrorCode::Timeout, None, None),
            Failure::Network(_) | Failure::Aborted => (ErrorCode::Network, None, None),
            Failure::Http {
                status: 401,
                retry_after_ms,
            } => (ErrorCode::Unauthorized, Some(401), *retry_after_ms),
            Failure::Http {
                status,
                retry_after_ms,
            } => (ErrorCode::Http, Some(*status), *retry_after_ms),
            Failure::Invalid(_) => (ErrorCode::InvalidResponse, None, None),
        };
        Error {
            code,
            message: e.to_string(),
            kind: Some(e.kind),
            will_retry: e.will_retry,
            status,
            retry_after_ms,
            server_code: None,
            ids: Vec::new(),
        }
    }

    /// [`Error::from_fetch`] for the request that asked for `ids`, with the `error` member
    /// of the server's error body (`detail`: its code and message), when it sent one: the
    /// code is `server_code`, and both are in the message (the message cut at 256 bytes).
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))] // used by cache.rs
    pub(crate) fn from_failed_request(
        e: &FetchError,
        detail: Option<(&str, &str)>,
        ids: Vec<String>,
    ) -> Error {
        let mut err = Error::from_fetch(e);
        err.ids = ids;
        if let (Some((code, message)), Failure::Http { .. }) = (detail, &e.failure) {
            let mut message = message.to_string();
            if message.len() > 256 {
                let mut end = 256;
                while !message.is_char_boundary(end) {
                    end -= 1;
                }
                message.truncate(end);
                message.push('…');
            }
            let retry = if e.will_retry { " (will retry)" } else { "" };
            err.message = format!(
                "{} batch request for {} tiles failed: {}: {code}: {message}{retry}",
                kind_name(e.kind),
                e.tiles.len(),
                e.failure
            );
            err.server_code = Some(code.to_string());
        }
        err
    }

    /// A failed request whose token never went out: the callback failed or gave something
    /// that is not a bearer token (`why` says which, never the token). The core had it as a
    /// 401 (retried like one, not a sign of the backend's health); no status was answered.
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))] // used by cache.rs
    pub(crate) fn from_token_failure(e: &FetchError, why: &str) -> Error {
        let retry = if e.will_retry { " (will retry)" } else { "" };
        Error {
            code: ErrorCode::Unauthorized,
            message: format!(
                "{} batch request for {} tiles failed: {why}{retry}",
                kind_name(e.kind),
                e.tiles.len()
            ),
            kind: Some(e.kind),
            will_retry: e.will_retry,
            status: None,
            retry_after_ms: None,
            server_code: None,
            ids: Vec::new(),
        }
    }

    /// A `200` that left some of the requested `ids` out of both `items` and `missing`: a
    /// partial answer, whose `error` member (`why`: its code and message) says why, as the
    /// edge gives when its origin fails. Those ids are not known not to exist: the `get`s
    /// of them fail with this, as in the npm package (`ERR_HTTP` with the status the server
    /// answers that code with, `ErrorCode::http_status`: 504 `upstream_timeout`, 503
    /// `overloaded`, 429 `rate_limited`, 502 `upstream_error`, 413 `payload_too_large` and
    /// `response_full`, 400 `bad_request`; 502 for an unknown code; `ERR_INVALID_RESPONSE`
    /// when the answer says nothing). `will_retry`: the core asks for them again (a code
    /// whose failure is retried, within `batch.retries`), and their `get`s wait.
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))] // used by cache.rs
    pub(crate) fn unanswered(
        kind: Kind,
        ids: &[String],
        why: Option<(&str, &str)>,
        will_retry: bool,
    ) -> Error {
        let first = ids.first().map(String::as_str).unwrap_or_default();
        let head = format!(
            "{} batch request failed for {} of its ids (first {first:?}): ",
            kind_name(kind),
            ids.len()
        );
        let retry = if will_retry { " (will retry)" } else { "" };
        let (code, status, message) = match why {
            Some((code, message)) => {
                let status = tilewarm::protocol::ErrorCode::from_name(code)
                    .map_or(502, tilewarm::protocol::ErrorCode::http_status);
                (
                    ErrorCode::Http,
                    Some(status),
                    format!("{head}{code}: {message}{retry}"),
                )
            }
            None => (
                ErrorCode::InvalidResponse,
                None,
                format!("{head}the answer neither lists them in items nor in missing{retry}"),
            ),
        };
        Error {
            code,
            message,
            kind: Some(kind),
            will_retry,
            status,
            retry_after_ms: None,
            server_code: why.map(|(code, _)| code.to_string()),
            ids: ids.to_vec(),
        }
    }
}

#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Foreground => "foreground",
        Kind::Prefetch => "prefetch",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tilewarm::batch::RequestId;

    fn failed(failure: Failure) -> Error {
        Error::from_fetch(&FetchError {
            request: RequestId(1),
            kind: Kind::Foreground,
            failure,
            tiles: vec![],
            will_retry: true,
            view_incomplete: false,
        })
    }

    #[test]
    fn failures_get_the_npm_packages_codes() {
        assert_eq!(failed(Failure::Timeout).code.as_str(), "ERR_TIMEOUT");
        let e = failed(Failure::Http {
            status: 500,
            retry_after_ms: Some(2000),
        });
        assert_eq!(
            (e.code, e.status, e.retry_after_ms),
            (ErrorCode::Http, Some(500), Some(2000))
        );
        assert!(
            e.message.contains("500") && e.message.contains("will retry"),
            "{e}"
        );
        let e = failed(Failure::Http {
            status: 401,
            retry_after_ms: None,
        });
        assert_eq!(e.code.as_str(), "ERR_UNAUTHORIZED");
        assert_eq!(
            failed(Failure::Invalid("x".into())).code,
            ErrorCode::InvalidResponse
        );
    }

    #[test]
    fn a_servers_error_body_gives_the_code_and_is_in_the_message() {
        let fe = FetchError {
            request: RequestId(1),
            kind: Kind::Foreground,
            failure: Failure::Http {
                status: 503,
                retry_after_ms: Some(1000),
            },
            tiles: vec![],
            will_retry: true,
            view_incomplete: false,
        };
        let ids = vec!["h1".to_string()];
        let long = "x".repeat(300);
        let e = Error::from_failed_request(&fe, Some(("overloaded", &long)), ids.clone());
        assert_eq!(e.server_code.as_deref(), Some("overloaded"));
        assert_eq!(
            (e.status, e.retry_after_ms, &e.ids),
            (Some(503), Some(1000), &ids)
        );
        assert!(
            e.message.starts_with(
                "foreground batch request for 0 tiles failed: backend answered HTTP 503: overloaded: xxx"
            ) && e.message.ends_with("x… (will retry)"),
            "{e}"
        );
        let plain = Error::from_failed_request(&fe, None, Vec::new());
        assert_eq!((plain.server_code, plain.message), (None, fe.to_string()));
        let partial = Error::unanswered(
            Kind::Prefetch,
            &ids,
            Some(("upstream_timeout", "slow")),
            false,
        );
        assert_eq!(partial.server_code.as_deref(), Some("upstream_timeout"));
        assert_eq!(partial.ids, ids);
    }

    #[test]
    fn a_token_that_never_went_out_is_unauthorized_without_a_status() {
        let fe = FetchError {
            request: RequestId(1),
            kind: Kind::Prefetch,
            failure: Failure::Http {
                status: 401,
                retry_after_ms: None,
            },
            tiles: vec![],
            will_retry: false,
            view_incomplete: false,
        };
        let e = Error::from_token_failure(&fe, "the auth token callback failed: offline");
        assert_eq!((e.code, e.status), (ErrorCode::Unauthorized, None));
        assert_eq!(
            e.message,
            "prefetch batch request for 0 tiles failed: the auth token callback failed: offline"
        );
    }

    #[test]
    fn ids_a_partial_answer_left_out_are_the_npm_packages_errors() {
        let ids = ["a1".to_string(), "a2".to_string()];
        let e = Error::unanswered(
            Kind::Foreground,
            &ids,
            Some(("upstream_timeout", "the origin did not answer in time")),
            false,
        );
        assert_eq!((e.code, e.status), (ErrorCode::Http, Some(504)));
        assert_eq!(
            e.message,
            "foreground batch request failed for 2 of its ids (first \"a1\"): \
             upstream_timeout: the origin did not answer in time"
        );
        let e = Error::unanswered(Kind::Prefetch, &ids, Some(("upstream_error", "502")), false);
        assert_eq!((e.code, e.status), (ErrorCode::Http, Some(502)));
        // The status the server answers each code with, as the npm package's.
        for (code, status) in [
            ("overloaded", 503),
            ("rate_limited", 429),
            ("payload_too_large", 413),
            ("response_full", 413),
        ] {
            let e = Error::unanswered(Kind::Prefetch, &ids, Some((code, "m")), false);
            assert_eq!(
                (e.status, e.server_code.as_deref()),
                (Some(status), Some(code))
            );
        }
        // Retried (a code that sheds load): the get()s wait, the page hears it.
        let e = Error::unanswered(Kind::Foreground, &ids, Some(("overloaded", "busy")), true);
        assert!(
            e.will_retry && e.message.ends_with("overloaded: busy (will retry)"),
            "{e}"
        );
        let e = Error::unanswered(Kind::Prefetch, &ids, None, false);
        assert_eq!((e.code, e.status), (ErrorCode::InvalidResponse, None));
        assert!(
            e.message
                .ends_with("neither lists them in items nor in missing"),
            "{e}"
        );
    }
}
