//! A request's life as the batcher sees it: what goes out ([`Transmit`]), how it can fail
//! ([`Failure`]), and what it was for once it ends ([`Finished`], [`FailureOutcome`]).

use super::{Kind, RequestId};
use crate::planner::Work;
use crate::protocol::{BatchRequest, ErrorCode};
use crate::tile::TileId;

/// A batch request to send, as [`Batcher::poll`](super::Batcher::poll) and
/// [`Client::poll_request`](crate::client::Client::poll_request) hand it out. The shell
/// POSTs `request` (its [`to_json`](BatchRequest::to_json)), aborts it after `timeout_ms`,
/// and reports how it ended under `id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub id: RequestId,
    pub kind: Kind,
    /// The tiles, ids and tier to ask the batch endpoint for.
    pub request: BatchRequest,
    /// 0 for the first try.
    pub attempt: u32,
    /// Abort the request if it has not completed after this long.
    pub timeout_ms: u64,
}

/// Why a request failed, as the shell saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No answer within the timeout.
    Timeout,
    /// The connection failed.
    Network(String),
    /// An HTTP error status; `retry_after_ms` from a `Retry-After` header.
    Http {
        status: u16,
        retry_after_ms: Option<u64>,
    },
    /// The answer could not be decoded or failed validation.
    Invalid(String),
    /// The shell aborted it (e.g. after [`Batcher::cancel_unwanted`](super::Batcher::cancel_unwanted)).
    Aborted,
}

impl Failure {
    /// Whether trying again may help: network trouble, timeouts, 5xx, 408, 429, bad
    /// answers (a proxy may have cut them short) and 401 (the shell asks for a fresh token
    /// on every attempt, so a refreshed credential gets through). Other 4xx statuses are the
    /// caller's bug.
    pub fn is_retryable(&self) -> bool {
        match self {
            Failure::Timeout | Failure::Network(_) | Failure::Invalid(_) => true,
            Failure::Http { status, .. } => {
                *status >= 500 || *status == 408 || *status == 429 || *status == 401
            }
            Failure::Aborted => false,
        }
    }

    /// The failure of what a partial answer left out with `code` (its `error`): the one a
    /// whole answer with that code is (a 502 for `upstream_error`, a 413 for
    /// `payload_too_large`); none for [`ErrorCode::ResponseFull`], which says nothing
    /// against the tiles or the backend (what did not fit is asked again).
    pub(crate) fn left_out(code: ErrorCode) -> Option<Self> {
        (code != ErrorCode::ResponseFull).then_some(Failure::Http {
            status: code.http_status(),
            retry_after_ms: None,
        })
    }

    /// Whether the failure says something about the backend's health (counts towards the
    /// breaker): a refused credential does not.
    pub(super) fn is_backend_trouble(&self) -> bool {
        self.is_retryable() && !matches!(self, Failure::Http { status: 401, .. })
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Timeout => f.write_str("request timed out"),
            Failure::Network(m) => write!(f, "network error: {m}"),
            Failure::Http { status, .. } => write!(f, "backend answered HTTP {status}"),
            Failure::Invalid(m) => write!(f, "invalid response: {m}"),
            Failure::Aborted => f.write_str("request aborted"),
        }
    }
}

/// A request that has finished (successfully, or for good).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finished {
    pub id: RequestId,
    pub kind: Kind,
    pub works: Vec<Work>,
    /// The ids asked for directly ([`Batcher::request_ids`](super::Batcher::request_ids)),
    /// also those of its tiles' work asked for so while it was out.
    pub loose_ids: Vec<String>,
    pub sent_at_ms: u64,
    pub attempt: u32,
}

impl Finished {
    /// The tiles this request served.
    pub fn tiles(&self) -> impl Iterator<Item = TileId> + '_ {
        self.works.iter().map(Work::tile)
    }
}

/// What became of a failed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailureOutcome {
    /// Its work is queued again and may go out at `at_ms`.
    Retrying { at_ms: u64, request: Finished },
    /// Out of retries, or not retryable: the work is dropped.
    GaveUp(Finished),
    /// The id was not in flight (already cancelled or finished): nothing to do.
    Unknown,
}
