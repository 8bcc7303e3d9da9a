//! The upstream backend (`--origin http(s)://…/v1/batch`): another batch endpoint that
//! speaks `docs/openapi.yaml` — an existing service, or a second tilewarm-server — so tiers
//! can be chained (edge → this server with its cache tier → upstream).
//!
//! The server's misses go upstream as one `POST` (one per 64 tiles, the protocol's
//! `max_tiles`, at most `PARTS_AT_ONCE` (4) at once, joined into one answer; a part refused
//! with a 400 or 413, or answered with more than 8 MiB, asked again in halves:
//! `UpstreamOrigin::answer_partial`; the smaller limit of tiles or ids a call found from
//! the upstream's 400s kept for the later requests for `LIMIT_KEPT_FOR` (10 minutes):
//! `PartLimits`) at the tier the server asks at (`agent`; a
//! tile the upstream leaves out as `payload_too_large` there is asked again at the tier of a
//! caller below it, `crate::batch`, and the upstream counts it at that tier),
//! with `Authorization: Bearer <token>` when a token is configured (`--origin-token-file`,
//! re-read when the file changes, or `TILEWARM_ORIGIN_TOKEN`): the server's own credential,
//! which carries the tier once the upstream verifies tokens (issue 14). The token never
//! appears in logs or error messages.
//!
//! When the upstream is another tilewarm-server, its change feed (`GET /v1/changes`) is
//! followed with the same client and token ([`super::upstream_changes`]), so that what is
//! invalidated there is invalidated here too.
//!
//! Answers pass through unchanged (items, their `ttl`s, lists) after the checks the edge
//! makes of its origin:
//! - the body is read up to the protocol's 8 MiB and decoded with the core's bounded
//!   [`decode_response`]; garbage, a truncated body, or an invalid answer is a 502
//!   `upstream_error` naming what was wrong; a `2xx` body over 8 MiB (not read when its
//!   `Content-Length` says so) is asked again in halves, and for one tile or id alone left out as `payload_too_large` (past
//!   `MAX_HALVED_PARTS` (16) halvings a 502 as before; past `MAX_CALLS` (128) calls for
//!   one request, a 502 naming the limit found);
//! - an error status is a 502 with the upstream's message, except 400, 413 and 429, which
//!   are the request's problem and passed on with their code (a 400 or 413 once asking in
//!   smaller parts does not help, `UpstreamOrigin::answer_partial`; as the edge does; a 400 or 413
//!   of a call made at a tier above the caller's loses its message, which may count items
//!   above the caller's tier: [`OriginFailure::for_caller`]), and 503, an overloaded
//!   upstream, which is a 503 `overloaded` ([`OriginFailure::Overloaded`], without the
//!   upstream's message) so that callers back off; a 429 or 503
//!   keeps the upstream's `Retry-After` ([`retry_after_s`]: seconds, or an HTTP date as the
//!   seconds from now; at most [`MAX_RETRY_AFTER_S`]; none or unreadable: the server's
//!   `--retry-after-s`);
//! - no answer within `--origin-timeout-ms` is a 504 (the request is dropped, which closes
//!   its connection);
//! - items above the asked tier (a leaking upstream) are dropped and counted by
//!   [`super::OriginService`]'s tier guard, an answer that reports another tier than the
//!   one asked (the upstream filtered for what the server's token gives) or that leaves out
//!   a requested tile or id is a 502, and list entries for items outside their tile are
//!   dropped, as for every backend;
//! - except a *partial* answer (a `200` with an `error` member, [`Unanswered`]: a
//!   tilewarm-server's data tile over its `--max-tile-items`, an item over its
//!   `--max-item-data-bytes`): the requested tiles and ids it names and leaves out are
//!   passed on as unanswered with its code (its message to `agent` callers only: it was
//!   asked at `agent` and may count items above a caller's tier; below `agent`, `crate::batch`
//!   asks every id it was asked again at the caller's tier when it names any), the rest answered
//!   ([`super::Answer::unanswered`]);
//!   tiles or ids it leaves out without naming them are still a 502.
//!
//! Counting before paying is not possible here ([`ItemCount::Unknown`]): the upstream
//! applies its own `--max-response-items` (a 400, passed on). So the direct tiles (the
//! bound's) are asked at the caller's tier, in a call of their own beside the one at the
//! request's (`UpstreamOrigin::answer_split`): the upstream counts them for the caller,
//! not for the top tier, as PostGIS reads them. Nor can the fetch stop early: the bound of its direct tiles ([`ItemBound`]) is checked by
//! [`super::OriginService`] on the decoded answer, which is dropped (400, nothing cached)
//! when they hold more than the limit.

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tilewarm::protocol::{
    decode_error, decode_response, BatchRequest, BatchResponse, ErrorCode, Limits, RawData,
    Unanswered,
};
use tilewarm::{Access, TileId};

use super::{Answer, ItemBound, ItemCount, LoadError, OriginBackend, OriginFailure, OriginFuture};
use crate::config::Config;

/// The longest upstream `Retry-After` passed on, in seconds: an upstream that asks for more
/// (by mistake or not) does not park every client for longer than an hour. The edge proxy's
/// cap on its origin's, one figure for both layers.
pub use tilewarm::proxy::MAX_RETRY_AFTER_S;

/// An upstream's `Retry-After` in seconds from `now` (RFC 9110 10.2.3): delay-seconds, or
/// an HTTP date (`httpdate`: the IMF-fixdate and the two obsolete forms), counted from
/// `now` and rounded up (a date in the past: 0); either capped at [`MAX_RETRY_AFTER_S`].
/// Garbage or none: `None`.
pub fn retry_after_s(value: Option<&hyper::header::HeaderValue>, now: SystemTime) -> Option<u64> {
    let text = value?.to_str().ok()?.trim();
    if text.is_empty() {
        return None;
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        let at = httpdate::parse_http_date(text).ok()?;
        let ahead = at.duration_since(now).unwrap_or_default();
        let whole = ahead.as_secs() + u64::from(ahead.subsec_nanos() > 0);
        return Some(whole.min(MAX_RETRY_AFTER_S));
    }
    // All digits: only an overflow fails, and that is more than the cap.
    Some(
        text.parse::<u64>()
            .map_or(MAX_RETRY_AFTER_S, |s| s.min(MAX_RETRY_AFTER_S)),
    )
}

/// The environment variable that holds the upstream token when no file is given.
pub const TOKEN_ENV: &str = "TILEWARM_ORIGIN_TOKEN";

/// Where the bearer token comes from (shared with the change feed's follower).
pub(super) enum Token {
    None,
    Fixed(String),
    /// Re-read when the file's modification time changes (rotated secrets).
    File {
        path: PathBuf,
        cached: Mutex<(Option<SystemTime>, String)>,
    },
}

/// Checks that a token can be sent as a header value; the error never includes it.
fn check_token(token: &str, from: &str) -> Result<String, String> {
    let token = token.trim();
    if token.is_empty() {
        return Err(format!("{from}: the token is empty"));
    }
    if token.len() > 16 * 1024 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{from}: a bearer token must be at most 16 KiB of visible ASCII without spaces"
        ));
    }
    Ok(token.to_owned())
}

fn read_token(path: &PathBuf) -> Result<(Option<SystemTime>, String), String> {
    let from = format!("--origin-token-file {}", path.display());
    let meta = std::fs::metadata(path).map_err(|e| format!("{from}: {e}"))?;
    let text = std::fs::read_to_string(path).map_err(|e| format!("{from}: {e}"))?;
    Ok((meta.modified().ok(), check_token(&text, &from)?))
}

impl Token {
    /// The token to send now (`None`: none is configured); re-reads a changed file.
    pub(super) fn current(&self) -> Result<Option<String>, String> {
        match self {
            Token::None => Ok(None),
            Token::Fixed(t) => Ok(Some(t.clone())),
            Token::File { path, cached } => {
                let modified = std::fs::metadata(path).ok().and_then(|m| m.modified().ok());
                let mut c = cached.lock().unwrap_or_else(|p| p.into_inner());
                if modified != c.0 {
                    *c = read_token(path)?;
                }
                Ok(Some(c.1.clone()))
            }
        }
    }
}

/// The HTTP client and the endpoint.
pub struct UpstreamOrigin {
    client: UpstreamClient,
    url: hyper::Uri,
    token: Arc<Token>,
    limits: Limits,
    /// The most tiles and ids a call carries, as found from the upstream's 400s.
    parts: PartLimits,
    feed: Option<super::upstream_changes::UpstreamFeed>,
    /// The service's counters: items a leaking upstream answered above the caller's tier
    /// to the direct tiles' call are counted here (the service's guard sees that call's
    /// answer only after they are dropped).
    stats: Arc<super::OriginStats>,
}

/// The HTTP client of the upstream origin and its change feed's follower.
pub(super) type UpstreamClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

impl UpstreamOrigin {
    /// A client for `url` (`http://` or `https://`, with the web PKI's roots), counting
    /// in `stats` (those of the [`super::OriginService`] it is given to).
    pub fn new(
        url: &str,
        config: &Config,
        stats: Arc<super::OriginStats>,
    ) -> Result<UpstreamOrigin, LoadError> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| LoadError::Upstream(format!("{}: {e}", super::redact_url(url))))?;
        if uri.host().is_none() {
            return Err(LoadError::Upstream(format!(
                "{}: no host",
                super::redact_url(url)
            )));
        }
        let token = match (&config.origin_token_file, std::env::var(TOKEN_ENV)) {
            (Some(path), _) => {
                let first = read_token(path).map_err(LoadError::Upstream)?;
                Token::File {
                    path: path.clone(),
                    cached: Mutex::new(first),
                }
            }
            (None, Ok(t)) => Token::Fixed(check_token(&t, TOKEN_ENV).map_err(LoadError::Upstream)?),
            (None, Err(_)) => Token::None,
        };
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(config.origin_pool)
            .build(https);
        let token = Arc::new(token);
        let feed = super::upstream_changes::UpstreamFeed::new(
            url,
            config,
            client.clone(),
            Arc::clone(&token),
        )
        .map_err(LoadError::Upstream)?;
        Ok(UpstreamOrigin {
            client,
            url: uri,
            token,
            limits: Limits::default(),
            parts: PartLimits::default(),
            feed,
            stats,
        })
    }

    /// The decoded answer to `request`, and the `error` member of a partial answer
    /// ([`partial_error`]): one call, or, for more tiles than one request may carry (the
    /// protocol's `max_tiles`, 64: a tilewarm upstream refuses more with a 400), one call
    /// per 64 tiles (the ids go with the first), their answers joined ([`join_parts`]). The
    /// misses of a caller's coarse tiles are asked as their data tiles
    /// (`CoarseMiss::FetchDataTiles`): up to `--max-data-tiles` of them.
    ///
    /// At most [`PARTS_AT_ONCE`] calls are in flight (each answer is read whole, up to the
    /// protocol's 8 MiB, and decoded). A part is asked again in halves (its tiles apart from
    /// its ids first, then half of its tiles or ids each) when the upstream
    /// - refuses it with a 400 (an upstream with a smaller `--max-tiles` or `--max-ids`, or
    ///   any batch endpoint with smaller limits): the parts after it are then cut to that
    ///   half too, and asked one at a time until one is answered. A 400 of a part of one
    ///   tile or id, or of one no larger than a part already answered, is about something
    ///   else: it fails the whole, as one call's would;
    /// - refuses it with a 413 or answers it with more than the 8 MiB read ([`CallFailed`]):
    ///   only that part is halved (how large an answer is depends on its tiles); a tile or
    ///   id too large alone is left out as `payload_too_large` ([`too_large_alone`]), the
    ///   rest answered.
    ///
    /// At most [`MAX_HALVED_PARTS`] parts of a request are halved; a refusal past that fails
    /// the whole. Any other failure of a part fails the whole at once.
    ///
    /// A limit of tiles or ids a call found by a 400's halving is kept for the requests
    /// after it ([`PartLimits`], for [`LIMIT_KEPT_FOR`]): they are cut to it from the
    /// start, with no refused call.
    async fn answer_partial(
        &self,
        request: &BatchRequest,
    ) -> Result<(BatchResponse<RawData>, Option<Unanswered>), OriginFailure> {
        in_parts(
            request,
            self.limits,
            &self.parts,
            Instant::now(),
            |part| async move { self.answer_call(&part).await },
        )
        .await
    }

    /// The most tiles and ids this origin asks the upstream for in one call now: the limits
    /// found from its 400s (kept 10 minutes, `PartLimits`), `None` for none found (tiles:
    /// the protocol's 64; ids: all of a request's).
    pub fn part_limits(&self) -> (Option<usize>, Option<usize>) {
        self.parts.found(self.limits, Instant::now())
    }

    /// One call: the decoded answer, and the `error` member of a partial answer
    /// ([`partial_error`]).
    async fn answer_call(
        &self,
        request: &BatchRequest,
    ) -> Result<(BatchResponse<RawData>, Option<Unanswered>), CallFailed> {
        let mut req = hyper::Request::post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header("accept", "application/json");
        if let Some(t) = self.token.current().map_err(OriginFailure::Failed)? {
            req = req.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(Full::new(Bytes::from(request.to_json())))
            .map_err(|e| OriginFailure::Failed(format!("cannot build the request: {e}")))?;
        let resp = self.client.request(req).await.map_err(|e| {
            OriginFailure::Failed(format!(
                "the upstream could not be reached: {}",
                error_chain(&e)
            ))
        })?;
        let status = resp.status().as_u16();
        let retry_after = retry_after_s(
            resp.headers().get(hyper::header::RETRY_AFTER),
            SystemTime::now(),
        );
        let max = self.limits.max_body_bytes;
        let declared = (resp.headers().get(hyper::header::CONTENT_LENGTH))
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if let Some(n) = declared.filter(|&n| n > max as u64 && (200..300).contains(&status)) {
            // Not read: asked again in halves (`answer_partial`).
            return Err(CallFailed {
                failure: OriginFailure::Failed(format!(
                    "the upstream's answer (HTTP {status}) is {n} bytes, at most {max} are read"
                )),
                too_large: true,
            });
        }
        let body = Limited::new(resp.into_body(), max)
            .collect()
            .await
            .map_err(|e| CallFailed {
                // A 2xx answer over the limit: asked again in halves (`answer_partial`).
                too_large: (200..300).contains(&status)
                    && e.downcast_ref::<http_body_util::LengthLimitError>().is_some(),
                failure: OriginFailure::Failed(format!(
                    "reading the upstream's answer (HTTP {status}) failed: {e} (at most {max} bytes are read)"
                )),
            })?
            .to_bytes();
        if (200..300).contains(&status) {
            let r = decode_response(&body, &self.limits).map_err(|e| {
                OriginFailure::Failed(format!("the upstream's answer is invalid: {e}"))
            })?;
            let partial = partial_error(&body, request, &r);
            return Ok((r, partial));
        }
        let said = decode_error(&body);
        let message = said.as_ref().map_or("", |e| e.message.as_str()).to_owned();
        let failure = match status {
            429 => OriginFailure::RateLimited {
                message,
                retry_after_s: retry_after,
            },
            // Overloaded: this server's callers back off as from its own 503. Its message
            // is not passed on (it may be about what this call asked, at `agent`).
            503 => OriginFailure::Overloaded {
                message: "the upstream answered HTTP 503".into(),
                retry_after_s: retry_after,
            },
            400 | 413 => OriginFailure::Refused {
                error: tilewarm::protocol::ErrorBody {
                    code: ErrorCode::from_http_status(status),
                    message,
                },
                asked: request.access,
            },
            _ => OriginFailure::Failed(format!("the upstream answered HTTP {status}: {message}")),
        };
        Err(CallFailed {
            failure,
            too_large: status == 413,
        })
    }
}

/// [`UpstreamOrigin::answer_partial`] with the upstream call `call` (each part's request),
/// the limits `found` before (read and taught at `now`).
async fn in_parts<F, Fut>(
    request: &BatchRequest,
    limits: Limits,
    found: &PartLimits,
    now: Instant,
    call: F,
) -> Partial
where
    F: Fn(BatchRequest) -> Fut,
    Fut: std::future::Future<Output = Result<Answered, CallFailed>>,
{
    use futures_util::stream::{FuturesUnordered, StreamExt};
    // The most tiles and ids a part may carry: what an earlier request found, else the
    // protocol's tiles and all the ids.
    let start = found.cap(limits, now);
    // Only a request that started from full parts teaches (`PartLimits::learn`): one
    // started from a limit kept would teach a lower one from a refusal of parts of it,
    // which may be for the items its tiles hold together, and so slide down request after
    // request.
    let from_full = [start.0 >= limits.max_tiles.max(1), start.1 == usize::MAX];
    let max = start.0;
    let mut queue: std::collections::VecDeque<Part> = if request.tiles.len() <= max {
        [Part {
            at: 0,
            tiles: request.tiles.clone(),
            ids: request.ids.clone(),
        }]
        .into()
    } else {
        (request.tiles.chunks(max).enumerate())
            .map(|(i, tiles)| Part {
                at: i * max,
                tiles: tiles.to_vec(),
                ids: if i == 0 {
                    request.ids.clone()
                } else {
                    Vec::new()
                },
            })
            .collect()
    };
    let n_tiles = request.tiles.len();
    // The most tiles and ids a part may carry (lowered by a 400), and the most a part
    // that was answered carried.
    let (mut cap, mut answered) = (start, (0, 0));
    // What this request finds of the upstream's limit of tiles, and of ids, a call, for
    // the requests after it (`PartLimits::learn`).
    let mut finding: [Option<Finding>; 2] = [None, None];
    // A 400 lowered the cap (the `lowered`th time) and no part asked since has been
    // answered: one call at a time.
    let (mut probing, mut lowered) = (false, 0);
    let (mut halved, mut calls) = (0, 0);
    let mut done: Vec<(usize, Answered)> = Vec::new();
    let mut flying = FuturesUnordered::new();
    loop {
        while flying.len() < PARTS_AT_ONCE && (flying.is_empty() || !probing) {
            let Some(mut part) = queue.pop_front() else {
                break;
            };
            if let Some(rest) = part.cut(cap, n_tiles) {
                queue.push_front(rest);
            }
            if calls == MAX_CALLS {
                return Err(OriginFailure::Failed(format!(
                    "asking the upstream for {n_tiles} tiles and {} ids took more than {MAX_CALLS} \
                     calls (its limit found: {} tiles, {} ids a call): raise its limits or lower \
                     this server's --max-data-tiles",
                    request.ids.len(),
                    cap.0,
                    cap.1.min(limits.max_ids),
                )));
            }
            calls += 1;
            let asked = call(BatchRequest {
                tiles: part.tiles.clone(),
                ids: part.ids.clone(),
                access: request.access,
            });
            let at = lowered;
            flying.push(async move { (part, at, asked.await) });
        }
        let Some((part, asked_at, result)) = flying.next().await else {
            break;
        };
        let n = part.tiles.len() + part.ids.len();
        match result {
            Ok(answer) => {
                answered = (
                    answered.0.max(part.tiles.len()),
                    answered.1.max(part.ids.len()),
                );
                for (f, carried) in finding.iter_mut().zip([part.tiles.len(), part.ids.len()]) {
                    if let Some(f) = f.as_mut().filter(|f| asked_at >= f.since) {
                        f.most = f.most.max(carried);
                    }
                }
                // A part asked before the last 400 says nothing of the cap it set.
                probing &= asked_at < lowered;
                done.push((part.at, answer));
            }
            Err(CallFailed {
                too_large: true, ..
            }) if n == 1 => {
                done.push((part.at, too_large_alone(&part, request.access, limits)));
            }
            Err(CallFailed { failure, too_large }) => {
                let refused = matches!(failure, OriginFailure::Refused { .. });
                let known = part.tiles.len() <= answered.0 && part.ids.len() <= answered.1;
                let halve = too_large || (refused && !known);
                if !halve || n == 1 || halved >= MAX_HALVED_PARTS {
                    return Err(failure);
                }
                halved += 1;
                // A part of tiles as many as a part may carry (tiles hold many items: a
                // smaller part may be refused for the items its tiles hold together, a
                // tilewarm upstream's 400 for direct tiles over its --max-response-items);
                // an id is one item.
                let full = (part.tiles.len() >= cap.0, true);
                let (first, then) = part.halves(n_tiles);
                if !too_large {
                    // Mixed: tiles apart from ids, the cap unchanged.
                    let mut which = None;
                    if first.ids.is_empty() && then.ids.is_empty() {
                        cap.0 = cap.0.min(first.tiles.len());
                        which = Some((0, full.0));
                    } else if first.tiles.is_empty() && then.tiles.is_empty() {
                        cap.1 = cap.1.min(first.ids.len());
                        which = Some((1, full.1));
                    }
                    probing = true;
                    lowered += 1;
                    if let Some((i, full)) = which {
                        let teaches = finding[i].is_none_or(|f| f.teaches) && full;
                        finding[i] = Some(Finding {
                            since: lowered,
                            teaches,
                            most: 0,
                        });
                    }
                }
                queue.push_front(then);
                queue.push_front(first);
            }
        }
    }
    // Every part answered: what the halving found holds for the requests after this one.
    for (i, f) in finding.into_iter().enumerate() {
        if let Some(f) = f.filter(|f| f.teaches && f.most > 0 && from_full[i]) {
            found.learn(i, f.most, limits, now);
        }
    }
    if done.len() == 1 {
        return Ok(done.remove(0).1);
    }
    done.sort_by_key(|(at, _)| *at);
    join_parts(
        done.into_iter().map(|(_, a)| Ok(a)).collect(),
        request.access,
    )
}

/// What one request finds of the upstream's limit of tiles (or ids) a call
/// ([`in_parts`]): since a 400 of a part of them alone last lowered the cap (the request's
/// `since`th lowering), the most of them an answered part asked after it carried; whether
/// every such 400 was of a full part (one that carried the cap), and so teaches a limit.
#[derive(Clone, Copy)]
struct Finding {
    since: usize,
    teaches: bool,
    most: usize,
}

/// How long a limit found from the upstream's 400s is kept ([`PartLimits`]): from the
/// request that found it, not extended by use, so that an upstream whose limits were
/// raised (upgraded, reconfigured) is asked in full parts again within this time. Finding
/// it again costs a request the refused calls once (2 for an upstream's `--max-tiles 16`).
const LIMIT_KEPT_FOR: Duration = Duration::from_secs(10 * 60);

/// The most tiles and ids the upstream was found to take in one call, kept across requests
/// for [`LIMIT_KEPT_FOR`] ([`UpstreamOrigin::answer_partial`]): an upstream with a smaller
/// `--max-tiles` cost every request of 64 tiles its refused calls before. Taught by a
/// request that lowered its cap after a 400 and had every part answered
/// ([`in_parts`]): parts of the most tiles (ids) an answered part carried since work. Each
/// between 1 and the protocol's limit; tiles and ids apart (`[tiles, ids]`), each with
/// when it was found. The lock is never held across an `.await`.
///
/// Not taught: by a request that started from a limit kept (its refusals may be of the
/// items its tiles hold together: taught, the limit would slide down request after
/// request; a lower limit is found once this one lapses); by a request that fails (its 400 may be about one tile or id, and the
/// halves answered before it say nothing of a count); by a 413 or an answer over 8 MiB
/// (about the size of those tiles' data, which the next tiles may not share: only that
/// part is halved); by a 400 of fewer tiles than a part may carry (an upstream may refuse a
/// few tiles for the items they hold together, a tilewarm-server's direct tiles over its
/// `--max-response-items`: taught, every later request would go in parts of a few tiles,
/// and one of 1,024 data tiles past [`MAX_CALLS`]).
#[derive(Default)]
struct PartLimits {
    found: Mutex<[Option<(usize, Instant)>; 2]>,
}

impl PartLimits {
    /// The limits found within [`LIMIT_KEPT_FOR`] of `now` (tiles, ids), each between 1 and
    /// `limits`' `max_tiles` / `max_ids`.
    fn found(&self, limits: Limits, now: Instant) -> (Option<usize>, Option<usize>) {
        let found = *self.found.lock().unwrap_or_else(|p| p.into_inner());
        let kept = |i: usize, max: usize| {
            (found[i])
                .filter(|&(_, at)| now.saturating_duration_since(at) < LIMIT_KEPT_FOR)
                .map(|(n, _)| n.clamp(1, max.max(1)))
        };
        (kept(0, limits.max_tiles), kept(1, limits.max_ids))
    }

    /// The most tiles and ids a part may carry at `now`: the limits found, else the
    /// protocol's tiles and all the ids.
    fn cap(&self, limits: Limits, now: Instant) -> (usize, usize) {
        let (tiles, ids) = self.found(limits, now);
        (
            tiles.unwrap_or(limits.max_tiles.max(1)),
            ids.unwrap_or(usize::MAX),
        )
    }

    /// Parts of `most` tiles (`i` 0) or ids (`i` 1) were answered after larger ones were
    /// refused: kept from `now`, in place of what was found before.
    fn learn(&self, i: usize, most: usize, limits: Limits, now: Instant) {
        let max = [limits.max_tiles, limits.max_ids][i].max(1);
        let mut found = self.found.lock().unwrap_or_else(|p| p.into_inner());
        found[i] = Some((most.clamp(1, max), now));
    }
}

/// Calls for the parts of one request in flight at once
/// ([`UpstreamOrigin::answer_partial`]): each answer is read whole (up to the protocol's
/// 8 MiB) and decoded, so one request holds at most this many bodies being read.
const PARTS_AT_ONCE: usize = 4;

/// The most parts of one request asked again in halves ([`UpstreamOrigin::answer_partial`]):
/// each such part cost a refused call, or an answer over 8 MiB read and dropped. A refusal
/// past it fails the request, as one call's would.
const MAX_HALVED_PARTS: usize = 16;

/// The most calls one request's parts make ([`UpstreamOrigin::answer_partial`]): 64 parts
/// of 16 tiles (an upstream's `--max-tiles 16` under this server's default
/// `--max-data-tiles` 1024) and their refusals fit; an upstream that takes fewer tiles a
/// call fails the request past it (a 502 naming the limit found), not 1,024 calls.
const MAX_CALLS: usize = 128;

/// Why one upstream call failed, and whether for the size of what it asked (a 413, or a
/// 2xx answer over the read limit): such a part is asked again in halves.
struct CallFailed {
    failure: OriginFailure,
    too_large: bool,
}

impl From<OriginFailure> for CallFailed {
    fn from(failure: OriginFailure) -> Self {
        CallFailed {
            failure,
            too_large: false,
        }
    }
}

/// A part of a request asked in a call of its own ([`UpstreamOrigin::answer_partial`]):
/// consecutive tiles of the request, then consecutive ids; `at` is where it starts among the
/// request's tiles then ids, the order its answer is joined in.
struct Part {
    at: usize,
    tiles: Vec<TileId>,
    ids: Vec<String>,
}

impl Part {
    /// The part cut to `cap` (tiles, ids); what is cut off, if anything (`n_tiles`: the
    /// request's tiles, for `at`).
    fn cut(&mut self, cap: (usize, usize), n_tiles: usize) -> Option<Part> {
        if self.tiles.len() > cap.0 {
            return Some(Part {
                at: self.at + cap.0,
                tiles: self.tiles.split_off(cap.0),
                ids: std::mem::take(&mut self.ids),
            });
        }
        if self.ids.len() > cap.1 {
            let first_id = if self.tiles.is_empty() {
                self.at - n_tiles
            } else {
                0
            };
            return Some(Part {
                at: n_tiles + first_id + cap.1,
                tiles: Vec::new(),
                ids: self.ids.split_off(cap.1),
            });
        }
        None
    }

    /// Two parts that ask what this one asks: its tiles and its ids apart, or else the first
    /// half (rounded up) of its tiles or ids and the rest. At least two tiles or ids.
    fn halves(mut self, n_tiles: usize) -> (Part, Part) {
        let cap = match (self.tiles.len(), self.ids.len()) {
            (0, i) => (0, i.div_ceil(2)),
            (t, 0) => (t.div_ceil(2), 0),
            (t, _) => (t, 0),
        };
        let then = self.cut(cap, n_tiles).unwrap_or(Part {
            at: self.at,
            tiles: Vec::new(),
            ids: Vec::new(),
        });
        (self, then)
    }
}

/// The answer for a part of one tile or id (`part`) that the upstream refused with a 413 or
/// answered with more than `limits.max_body_bytes`: it is left out as `payload_too_large`.
/// The message is this server's own: the upstream's may count items above a caller's tier.
fn too_large_alone(part: &Part, asked: Access, limits: Limits) -> Answered {
    let max = limits.max_body_bytes;
    let what = match (part.tiles.first(), part.ids.first()) {
        (Some(t), _) => format!("tile {t}"),
        (None, Some(_)) => "the id".to_owned(),
        (None, None) => "the part".to_owned(),
    };
    let left = Unanswered {
        code: ErrorCode::PayloadTooLarge,
        message: format!(
            "the upstream's answer for {what} alone is more than {max} bytes (or refused as too large), the most read"
        ),
        tiles: part.tiles.clone(),
        ids: part.ids.clone(),
    };
    let answer = BatchResponse {
        access: Some(asked),
        left_out: Some(ErrorCode::PayloadTooLarge),
        ..BatchResponse::default()
    };
    (answer, Some(left))
}

impl UpstreamOrigin {
    /// `request` with the tiles of `bound` (the request path's direct tiles, never cached)
    /// asked at the bound's tier, the caller's, in a call of their own, and the rest at the
    /// request's, the two at once; one answer. The upstream counts what it is asked for at
    /// the tier it is asked at (a tilewarm-server refuses tiles holding more than its
    /// `--max-response-items` with a message naming the count): asked at the top tier, a
    /// coarse tile would be refused to a `public` caller for items it may not see, and the
    /// message would count them (as PostGIS reads these tiles at the bound's tier). A
    /// refusal of the caller's own call comes first: it is about what the caller may see.
    async fn answer_split(
        &self,
        request: &BatchRequest,
        bound: ItemBound<'_>,
    ) -> Result<(BatchResponse<RawData>, Option<Unanswered>), OriginFailure> {
        let (low_tiles, high_tiles): (Vec<TileId>, Vec<TileId>) =
            request.tiles.iter().partition(|&&t| bound.covers(t));
        let low = BatchRequest {
            tiles: low_tiles,
            ids: Vec::new(),
            access: bound.access,
        };
        let high = BatchRequest {
            tiles: high_tiles,
            ids: request.ids.clone(),
            access: request.access,
        };
        let high_call = async {
            if high.tiles.is_empty() && high.ids.is_empty() {
                return Ok((BatchResponse::default(), None));
            }
            self.answer_partial(&high).await
        };
        let (low_answer, high_answer) = tokio::join!(self.answer_partial(&low), high_call);
        let (mut low_answer, low_partial) = low_answer?;
        let (mut out, partial) = high_answer?;
        // One `error` for both calls, every tile and id, with one code and message: the one
        // at the caller's tier's, unless the call at the request's tier names tiles it had
        // no room for (`crate::batch` tells its tiles apart by the code: over the limit, or
        // no room; either is asked again below `agent`, as are all its ids, whatever the
        // code). Its reason, which depends on items above the caller's tier, must not stand
        // for the direct tiles the other left out (not asked again); `response_full` wins,
        // as in one answer's report.
        let partial = match (partial, low_partial) {
            (Some(high), Some(low)) => {
                let low_first = high.tiles.is_empty()
                    || (high.code != ErrorCode::ResponseFull
                        && low.code == ErrorCode::ResponseFull);
                let (mut first, then) = match low_first {
                    true => (low, high),
                    false => (high, low),
                };
                first.tiles.extend(then.tiles);
                first.ids.extend(then.ids);
                Some(first)
            }
            (a, b) => a.or(b),
        };
        if let Err(other) = low_answer.check_tier(bound.access) {
            return Err(OriginFailure::Failed(format!(
                "{other}: check the tier of the server's origin token (--origin-token-file or {TOKEN_ENV})"
            )));
        }
        // Items above the bound's tier (a leaking upstream) are not the caller's: dropped
        // here, since the service's guard checks at the request's tier.
        let above: std::collections::HashSet<String> = low_answer
            .items
            .iter()
            .filter(|it| !bound.access.can_see(it.access))
            .map(|it| it.id.clone())
            .collect();
        if !above.is_empty() {
            self.stats
                .leaked_items
                .fetch_add(above.len() as u64, Relaxed);
            tracing::warn!(
                origin = "upstream",
                items = above.len(),
                tier = %bound.access,
                "the origin answered items above the asked tier; dropped"
            );
        }
        let mut have: std::collections::HashSet<String> =
            out.items.iter().map(|it| it.id.clone()).collect();
        for mut list in low_answer.tiles.drain(..) {
            list.ids.retain(|id| !above.contains(id));
            out.tiles.push(list);
        }
        for it in low_answer.items {
            if !above.contains(&it.id) && have.insert(it.id.clone()) {
                out.items.push(it);
            }
        }
        Ok((out, partial))
    }
}

/// The answers to the parts of one request ([`UpstreamOrigin::answer_partial`]) as one: the
/// first failure fails it, as one call's would; lists and `missing` are joined, each item
/// kept once, and the parts' `error`s are one with every tile and id they name. Its code is
/// `response_full` when any part's is (its tiles are asked again at once, so no tile is
/// given up for another part's reason), else a failure's when any part's is (not
/// `payload_too_large` for what shed load left out: [`rank`]), else the first part's. The
/// tier reported is one that is not `asked` if any part reports one (so that the caller's
/// check of the tier fails as it would for that part alone), else the first part's.
fn join_parts(answers: Vec<Partial>, asked: tilewarm::access::Access) -> Partial {
    let mut out = BatchResponse::<RawData>::default();
    let mut have = std::collections::HashSet::new();
    let mut partial: Option<Unanswered> = None;
    for answer in answers {
        let (r, p) = answer?;
        out.access = match (out.access, r.access) {
            (Some(a), _) if a != asked => Some(a),
            (_, Some(b)) if b != asked => Some(b),
            (a, b) => a.or(b),
        };
        out.left_out = out.left_out.or(r.left_out);
        out.tiles.extend(r.tiles);
        out.missing.extend(r.missing);
        for it in r.items {
            if have.insert(it.id.clone()) {
                out.items.push(it);
            }
        }
        partial = match (partial, p) {
            (Some(mut first), Some(then)) => {
                if rank(then.code) > rank(first.code) {
                    (first.code, first.message) = (then.code, then.message);
                }
                first.tiles.extend(then.tiles);
                first.ids.extend(then.ids);
                Some(first)
            }
            (a, b) => a.or(b),
        };
    }
    if let Some(p) = &partial {
        out.left_out = Some(p.code);
    }
    Ok((out, partial))
}

/// One upstream call's outcome: the decoded answer and the `error` member of a partial
/// answer, or the failure.
type Partial = Result<Answered, OriginFailure>;

/// The decoded answer and the `error` member of a partial answer.
type Answered = (BatchResponse<RawData>, Option<Unanswered>);

/// Which part's `error` code the joined one takes ([`join_parts`]): `response_full` over
/// all, then a failure (shed load, a failing origin) over `payload_too_large`, as the
/// request path merges its calls' (`crate::batch`, `Fetched::merge_told`). Told
/// `payload_too_large`, the tiles another part left out for shed load would be remembered
/// as over `--max-tile-items` for a tile TTL (`crate::warmup::OverLimit`), refused with no
/// origin call and skipped by warm-up.
fn rank(code: ErrorCode) -> u8 {
    match code {
        ErrorCode::ResponseFull => 2,
        ErrorCode::PayloadTooLarge => 0,
        _ => 1,
    }
}

/// The `error` member of an upstream's partial answer (a `200` that leaves requested tiles
/// or ids out and says why, [`Unanswered`]; a tilewarm-server sends one for a data tile over
/// its `--max-tile-items` or an item over its `--max-item-data-bytes`): its code and
/// message, and those of the requested tiles and ids it names that `r` indeed leaves out.
/// `None` when there is none, it does not read as one, or it names nothing left out. The
/// body is only parsed again when it holds `"error"`.
fn partial_error(
    body: &[u8],
    request: &BatchRequest,
    r: &BatchResponse<RawData>,
) -> Option<Unanswered> {
    #[derive(serde::Deserialize)]
    struct Body {
        error: Option<Wire>,
    }
    #[derive(serde::Deserialize)]
    struct Wire {
        code: String,
        message: String,
        #[serde(default)]
        tiles: Vec<String>,
        #[serde(default)]
        ids: Vec<String>,
    }
    if !body.windows(7).any(|w| w == b"\"error\"") {
        return None;
    }
    let wire = serde_json::from_slice::<Body>(body).ok()?.error?;
    let listed: std::collections::HashSet<TileId> = r.tiles.iter().map(|l| l.tile).collect();
    let tiles: Vec<TileId> = request
        .tiles
        .iter()
        .copied()
        .filter(|t| !listed.contains(t) && wire.tiles.iter().any(|w| w.parse() == Ok(*t)))
        .collect();
    let ids: Vec<String> = r
        .unanswered_ids(request)
        .into_iter()
        .filter(|id| wire.ids.contains(id))
        .collect();
    if tiles.is_empty() && ids.is_empty() {
        return None;
    }
    Some(Unanswered {
        code: ErrorCode::from_name(&wire.code).unwrap_or(ErrorCode::UpstreamError),
        message: wire.message.chars().take(1024).collect(),
        tiles,
        ids,
    })
}

/// An error with its sources, for a message.
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

impl UpstreamOrigin {
    /// One call, or two when the bound's tiles are asked at a lower tier
    /// ([`answer_split`](Self::answer_split)).
    async fn answer_either(
        &self,
        request: &BatchRequest,
        bound: Option<ItemBound<'_>>,
    ) -> Result<(BatchResponse<RawData>, Option<Unanswered>), OriginFailure> {
        match bound
            .filter(|b| b.access < request.access && request.tiles.iter().any(|&t| b.covers(t)))
        {
            Some(b) => self.answer_split(request, b).await,
            None => self.answer_partial(request).await,
        }
    }
}

impl OriginBackend for UpstreamOrigin {
    fn kind(&self) -> &'static str {
        "upstream"
    }

    /// The bound cannot be sent upstream: the answer is read whole (at most 8 MiB, decoded
    /// by the bounded decoder) and [`super::OriginService`] checks it right after. Its tiles
    /// are asked at its tier, below the request's, in a call of their own
    /// (`UpstreamOrigin::answer_split`).
    fn answer<'a>(
        &'a self,
        request: &'a BatchRequest,
        bound: Option<ItemBound<'a>>,
    ) -> OriginFuture<'a, Result<BatchResponse<RawData>, OriginFailure>> {
        Box::pin(async move { Ok(self.answer_either(request, bound).await?.0) })
    }

    /// [`answer`](Self::answer) that takes an upstream's partial answer: the tiles and ids
    /// its `error` names are left out with its reason ([`Answer::unanswered`]), not a
    /// failure of the whole call. The per-tile limit is applied to the rest.
    fn answer_limited<'a>(
        &'a self,
        request: &'a BatchRequest,
        bound: Option<ItemBound<'a>>,
        tile_limit: usize,
    ) -> OriginFuture<'a, Result<Answer, OriginFailure>> {
        Box::pin(async move {
            let (r, partial) = self.answer_either(request, bound).await?;
            Ok(Answer {
                unanswered: partial,
                ..Answer::limit_lists(r, tile_limit, bound, request.access)
            })
        })
    }

    fn count_up_to<'a>(
        &'a self,
        _tiles: &'a [TileId],
        _access: Access,
        _limit: usize,
    ) -> OriginFuture<'a, Result<ItemCount, OriginFailure>> {
        Box::pin(async { Ok(ItemCount::Unknown) })
    }

    fn upstream_feed(&self) -> Option<super::upstream_changes::UpstreamFeed> {
        self.feed.clone()
    }

    fn upstream_part_limits(&self) -> Option<(Option<usize>, Option<usize>)> {
        Some(self.part_limits())
    }

    fn describe(&self) -> String {
        let auth = match *self.token {
            Token::None => "no token",
            Token::Fixed(_) => "bearer token from TILEWARM_ORIGIN_TOKEN",
            Token::File { .. } => "bearer token from --origin-token-file",
        };
        format!(
            "upstream: {} ({auth})",
            super::redact_url(&self.url.to_string())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use tilewarm::access::Access;

    #[test]
    fn parts_are_joined_into_one_answer() {
        let tile = |x| TileId::new(14, x, 100).unwrap();
        let list = |x: u32, ids: &[&str]| tilewarm::protocol::TileList {
            tile: tile(x),
            ids: ids.iter().map(|s| s.to_string()).collect(),
            ttl: None,
        };
        let item = |id: &str| tilewarm::protocol::Item {
            id: id.into(),
            lon: 0.0,
            lat: 0.0,
            class: "active".into(),
            access: Access::Public,
            ttl: None,
            data: serde_json::value::to_raw_value(&1).unwrap(),
        };
        let part = |lists, items, missing: &[&str], access| BatchResponse::<RawData> {
            access,
            tiles: lists,
            items,
            missing: missing.iter().map(|s| s.to_string()).collect(),
            left_out: None,
        };
        let left = |code, x| Unanswered {
            code,
            message: format!("{code:?}"),
            tiles: vec![tile(x)],
            ids: Vec::new(),
        };
        let a = part(
            vec![list(1, &["a", "b"])],
            vec![item("a"), item("b")],
            &["gone"],
            Some(Access::Agent),
        );
        let b = part(
            vec![list(3, &["b", "c"])],
            vec![item("b"), item("c")],
            &[],
            Some(Access::Agent),
        );
        let (r, p) = join_parts(
            vec![
                Ok((a.clone(), Some(left(ErrorCode::PayloadTooLarge, 2)))),
                Ok((b.clone(), Some(left(ErrorCode::ResponseFull, 4)))),
            ],
            Access::Agent,
        )
        .unwrap();
        assert_eq!(
            r.tiles.iter().map(|l| l.tile).collect::<Vec<_>>(),
            [tile(1), tile(3)]
        );
        let ids: Vec<&str> = r.items.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"], "each item once");
        assert_eq!(
            (r.missing, r.access),
            (vec!["gone".to_string()], Some(Access::Agent))
        );
        // No tile is given up for another part's reason: asked again at once.
        let p = p.unwrap();
        assert_eq!(
            (p.code, p.tiles),
            (ErrorCode::ResponseFull, vec![tile(2), tile(4)])
        );
        assert_eq!(r.left_out, Some(ErrorCode::ResponseFull));
        // A part reporting another tier than asked is not hidden by the others.
        let lower = part(Vec::new(), Vec::new(), &[], Some(Access::Public));
        let (r, _) = join_parts(
            vec![
                Ok((a.clone(), None)),
                Ok((lower, None)),
                Ok((b.clone(), None)),
            ],
            Access::Agent,
        )
        .unwrap();
        assert_eq!(r.access, Some(Access::Public));
        assert!(r.check_tier(Access::Agent).is_err());
        // One part failing fails the whole, as one call's failure would.
        let failed = join_parts(
            vec![
                Ok((a, None)),
                Err(OriginFailure::Failed(
                    "the upstream could not be reached".into(),
                )),
            ],
            Access::Agent,
        );
        assert!(failed.is_err());
    }

    /// One part leaves a tile out as over the upstream's limit, another leaves tiles out for
    /// shed load (a chained upstream's own upstream at capacity): the joined code is the
    /// failure's, as the request path merges calls. Taken as `payload_too_large` (the first
    /// part's), the shed tiles were remembered as over --max-tile-items for a tile TTL.
    #[test]
    fn a_part_shedding_load_is_not_told_as_too_large() {
        let tile = |x| TileId::new(14, x, 100).unwrap();
        let left = |code, x| Unanswered {
            code,
            message: format!("{code:?}"),
            tiles: vec![tile(x)],
            ids: Vec::new(),
        };
        let part = || BatchResponse::<RawData> {
            access: Some(Access::Agent),
            ..BatchResponse::default()
        };
        for shed in [ErrorCode::Overloaded, ErrorCode::UpstreamTimeout] {
            for order in [[0, 1], [1, 0]] {
                let lefts = [left(ErrorCode::PayloadTooLarge, 1), left(shed, 2)];
                let answers = order
                    .iter()
                    .map(|&i| Ok((part(), Some(lefts[i].clone()))))
                    .collect();
                let (r, p) = join_parts(answers, Access::Agent).unwrap();
                let p = p.unwrap();
                assert_eq!((p.code, r.left_out), (shed, Some(shed)), "{order:?}");
                assert_eq!(p.tiles.len(), 2);
            }
        }
    }

    /// What a fake upstream answers for `part`: every tile listed empty, every id
    /// `missing`.
    fn answered(part: &BatchRequest) -> (BatchResponse<RawData>, Option<Unanswered>) {
        let lists = part.tiles.iter().map(|&tile| tilewarm::protocol::TileList {
            tile,
            ids: Vec::new(),
            ttl: None,
        });
        let r = BatchResponse::<RawData> {
            access: Some(part.access),
            tiles: lists.collect(),
            missing: part.ids.clone(),
            ..BatchResponse::default()
        };
        (r, None)
    }

    fn refused_with(status: u16, message: &str) -> CallFailed {
        CallFailed {
            failure: OriginFailure::Refused {
                error: tilewarm::protocol::ErrorBody {
                    code: ErrorCode::from_http_status(status),
                    message: message.into(),
                },
                asked: Access::Agent,
            },
            too_large: status == 413,
        }
    }

    fn tiles(n: u32) -> Vec<TileId> {
        (0..n).map(|x| TileId::new(14, x, 100).unwrap()).collect()
    }

    /// The parts of a request are asked at most [`PARTS_AT_ONCE`] at once (each answer is
    /// read whole, up to 8 MiB): all 16 parts of 1024 tiles were asked at once before.
    #[tokio::test]
    async fn at_most_a_few_parts_are_asked_at_once() {
        let request = BatchRequest {
            tiles: tiles(1024),
            ids: Vec::new(),
            access: Access::Agent,
        };
        let (now, most, calls) = (Cell::new(0), Cell::new(0), Cell::new(0));
        let (r, _) = in_parts(
            &request,
            Limits::default(),
            &PartLimits::default(),
            Instant::now(),
            |part| {
                let (now, most, calls) = (&now, &most, &calls);
                async move {
                    calls.set(calls.get() + 1);
                    now.set(now.get() + 1);
                    most.set(most.get().max(now.get()));
                    tokio::task::yield_now().await;
                    now.set(now.get() - 1);
                    Ok(answered(&part))
                }
            },
        )
        .await
        .unwrap();
        assert_eq!((most.get(), calls.get()), (PARTS_AT_ONCE, 16));
        let listed: Vec<TileId> = r.tiles.iter().map(|l| l.tile).collect();
        assert_eq!(listed, request.tiles, "joined in request order");
    }

    /// An upstream refusing more than 16 tiles or 10 ids a call (400): the first part's ids
    /// are asked apart from its tiles, then the tiles in halves down to 16 and the ids down
    /// to 10, each limit found one call at a time and kept for the rest (15 calls). Before,
    /// the whole was the upstream's 400.
    #[tokio::test]
    async fn a_smaller_limit_of_tiles_or_ids_is_found_by_halving() {
        let ids: Vec<String> = (0..40).map(|i| format!("id-{i}")).collect();
        let request = BatchRequest {
            tiles: tiles(70),
            ids: ids.clone(),
            access: Access::Agent,
        };
        let calls = Cell::new(0);
        let (r, _) = in_parts(
            &request,
            Limits::default(),
            &PartLimits::default(),
            Instant::now(),
            |part| {
                calls.set(calls.get() + 1);
                async move {
                    tokio::task::yield_now().await;
                    match part.tiles.len() > 16 || part.ids.len() > 10 {
                        true => Err(refused_with(400, "too many")),
                        false => Ok(answered(&part)),
                    }
                }
            },
        )
        .await
        .unwrap();
        let listed: Vec<TileId> = r.tiles.iter().map(|l| l.tile).collect();
        assert_eq!((listed, r.missing), (request.tiles.clone(), ids));
        // 64 tiles and 40 ids, 6 tiles; 64, 32 tiles refused, 4 x 16; 40, 20 ids, 4 x 10.
        assert_eq!(calls.get(), 2 + 2 + 4 + 2 + 4);
    }

    /// An upstream that answers one tile a call is asked at most [`MAX_CALLS`] times for a
    /// request of 1,024 tiles, then the request fails naming the limit it found (it made
    /// 1,024 calls, 4 at once, before).
    #[tokio::test]
    async fn the_calls_of_one_request_are_bounded() {
        let request = BatchRequest {
            tiles: tiles(1024),
            ids: Vec::new(),
            access: Access::Agent,
        };
        let calls = Cell::new(0);
        let e = in_parts(
            &request,
            Limits::default(),
            &PartLimits::default(),
            Instant::now(),
            |part| {
                calls.set(calls.get() + 1);
                async move {
                    match part.tiles.len() > 1 {
                        true => Err(refused_with(400, "too many")),
                        false => Ok(answered(&part)),
                    }
                }
            },
        )
        .await
        .expect_err("the request fails");
        assert_eq!(calls.get(), MAX_CALLS);
        let OriginFailure::Failed(m) = e else {
            panic!("{e:?}")
        };
        assert!(
            m.contains("more than 128 calls") && m.contains("1 tiles"),
            "{m}"
        );
    }

    /// An id whose answer is too large even alone (a 413 for it) is left out as
    /// `payload_too_large` with this server's message, not the upstream's (which may count
    /// items above a caller's tier); the rest answered. A 400 for one id fails the whole.
    #[tokio::test]
    async fn what_is_too_large_alone_is_left_out_and_a_bad_request_fails() {
        let ask = |ids: &[&str]| BatchRequest {
            tiles: Vec::new(),
            ids: ids.iter().map(|s| s.to_string()).collect(),
            access: Access::Agent,
        };
        let (found, now) = (PartLimits::default(), Instant::now());
        let calls = Cell::new(0);
        let fake = |part: BatchRequest| {
            calls.set(calls.get() + 1);
            async move {
                if part.ids.iter().any(|i| i == "big") {
                    return Err(refused_with(413, "1234 items above your tier"));
                }
                if part.ids.iter().any(|i| i == "bad") {
                    return Err(refused_with(400, "bad id"));
                }
                Ok(answered(&part))
            }
        };
        let (r, p) = in_parts(
            &ask(&["a", "big", "c"]),
            Limits::default(),
            &found,
            now,
            fake,
        )
        .await
        .unwrap();
        let p = p.unwrap();
        assert_eq!(
            (r.missing, p.ids),
            (vec!["a".into(), "c".into()], vec!["big".to_string()])
        );
        assert_eq!(
            (p.code, r.left_out),
            (ErrorCode::PayloadTooLarge, Some(p.code))
        );
        assert!(!p.message.contains("1234"), "{}", p.message);
        assert_eq!(
            calls.get(),
            5,
            "3 refused, 1 answered, then \"big\" alone refused"
        );
        calls.set(0);
        let e = in_parts(&ask(&["a", "bad"]), Limits::default(), &found, now, fake)
            .await
            .unwrap_err();
        assert!(matches!(e, OriginFailure::Refused { .. }), "{e:?}");
        assert_eq!(
            calls.get(),
            3,
            "both, then each alone (\"a\" may be answered)"
        );
        // A 413 is about the size of those ids' answer, and a 400 of one id about that id:
        // neither teaches a limit of ids a call.
        assert_eq!(found.found(Limits::default(), now), (None, None));
    }

    /// Asks for `n` tiles (the limits `found` before, at `now`) an upstream that refuses a
    /// call of more than `most` tiles with a 400: its answer, and how many calls it took.
    async fn tiles_of_one_taking(
        n: u32,
        most: usize,
        found: &PartLimits,
        now: Instant,
    ) -> (Answered, usize) {
        let request = BatchRequest {
            tiles: tiles(n),
            ids: Vec::new(),
            access: Access::Agent,
        };
        let calls = Cell::new(0);
        let answer = in_parts(&request, Limits::default(), found, now, |part| {
            calls.set(calls.get() + 1);
            std::future::ready(match part.tiles.len() > most {
                true => Err(refused_with(400, "too many")),
                false => Ok(answered(&part)),
            })
        })
        .await
        .unwrap();
        (answer, calls.get())
    }

    /// The fake upstream of [`a_smaller_limit_of_tiles_or_ids_is_found_by_halving`]: a 400
    /// for more than 16 tiles or 10 ids, counted in `refused`; `calls` counts every call.
    fn at_most_16_tiles_10_ids<'a>(
        calls: &'a Cell<usize>,
        refused: &'a Cell<usize>,
    ) -> impl Fn(BatchRequest) -> std::future::Ready<Result<Answered, CallFailed>> + 'a {
        move |part| {
            calls.set(calls.get() + 1);
            if part.tiles.len() > 16 || part.ids.len() > 10 {
                refused.set(refused.get() + 1);
                return std::future::ready(Err(refused_with(400, "too many")));
            }
            std::future::ready(Ok(answered(&part)))
        }
    }

    /// The limits found by one request's halving (16 tiles, 10 ids) are kept: the next
    /// request is asked in parts of at most 16 tiles and 10 ids from the start, with no
    /// refused call (8 calls, not 14 of which 5 refused); once [`LIMIT_KEPT_FOR`] has passed
    /// they are forgotten and found again (the upstream may have been reconfigured). Fails
    /// without the memory: every request made 5 refused calls.
    #[tokio::test]
    async fn the_limits_found_are_kept_for_the_next_requests_until_they_lapse() {
        let ids: Vec<String> = (0..40).map(|i| format!("id-{i}")).collect();
        let request = BatchRequest {
            tiles: tiles(70),
            ids: ids.clone(),
            access: Access::Agent,
        };
        let found = PartLimits::default();
        let t0 = Instant::now();
        let (calls, refused) = (Cell::new(0), Cell::new(0));
        let fake = at_most_16_tiles_10_ids(&calls, &refused);
        let ask = |at: Instant| {
            calls.set(0);
            refused.set(0);
            in_parts(&request, Limits::default(), &found, at, &fake)
        };
        let check = |(r, _): Answered| {
            let listed: Vec<TileId> = r.tiles.iter().map(|l| l.tile).collect();
            assert_eq!((listed, r.missing), (request.tiles.clone(), ids.clone()));
        };
        check(ask(t0).await.unwrap());
        assert_eq!((calls.get(), refused.get()), (14, 5));
        assert_eq!(found.found(Limits::default(), t0), (Some(16), Some(10)));
        // 16 tiles and 10 ids, 3 x 10 ids, 3 x 16 tiles and 6 tiles: none refused.
        let later = t0 + LIMIT_KEPT_FOR - Duration::from_secs(1);
        check(ask(later).await.unwrap());
        assert_eq!((calls.get(), refused.get()), (8, 0));
        // Lapsed: asked in full parts again, and the limits found again.
        let lapsed = t0 + LIMIT_KEPT_FOR;
        assert_eq!(found.found(Limits::default(), lapsed), (None, None));
        check(ask(lapsed).await.unwrap());
        assert_eq!((calls.get(), refused.get()), (14, 5));
        assert_eq!(found.found(Limits::default(), lapsed), (Some(16), Some(10)));
        // Not extended by use: still forgotten LIMIT_KEPT_FOR after it was found.
        check(ask(lapsed + LIMIT_KEPT_FOR / 2).await.unwrap());
        assert_eq!(refused.get(), 0);
        let again = lapsed + LIMIT_KEPT_FOR;
        assert_eq!(found.found(Limits::default(), again), (None, None));
    }

    /// A request started from a limit kept teaches no lower one: a 400 for a part of the
    /// kept size may be for the items its tiles hold together (a tilewarm upstream's
    /// `--max-response-items`), and learnt, the limit would slide down request after request
    /// (32, 16, 8 ...). It stays until it lapses; the request is answered as before.
    #[tokio::test]
    async fn a_request_started_from_a_kept_limit_teaches_no_lower_one() {
        let found = PartLimits::default();
        let now = Instant::now();
        found.learn(0, 32, Limits::default(), now);
        let ((r, _), calls) = tiles_of_one_taking(64, 16, &found, now).await;
        assert_eq!(r.tiles.len(), 64);
        assert_eq!(calls, 2 + 4, "2 parts of 32 refused, then 4 of 16");
        assert_eq!(found.found(Limits::default(), now), (Some(32), None));
    }

    /// A limit found is never below 1 nor above the protocol's (`Limits`): an upstream that
    /// takes one tile a call teaches 1; what is learned or read is held between 1 and the
    /// limits given.
    #[tokio::test]
    async fn a_limit_found_is_between_one_and_the_protocols() {
        let found = PartLimits::default();
        let now = Instant::now();
        let ((r, _), calls) = tiles_of_one_taking(64, 1, &found, now).await;
        assert_eq!(r.tiles.len(), 64);
        assert_eq!(calls, 6 + 64, "64, 32, ..., 2 refused, then 1 a call");
        assert_eq!(found.found(Limits::default(), now), (Some(1), None));
        assert_eq!(found.cap(Limits::default(), now), (1, usize::MAX));
        found.learn(0, 0, Limits::default(), now);
        found.learn(1, 5_000, Limits::default(), now);
        assert_eq!(found.found(Limits::default(), now), (Some(1), Some(1000)));
        let small = Limits {
            max_tiles: 8,
            max_ids: 4,
            ..Limits::default()
        };
        found.learn(0, 16, Limits::default(), now);
        assert_eq!(found.found(small, now), (Some(8), Some(4)));
        assert_eq!(found.cap(small, now), (8, 4));
    }

    /// A 400 that is not about how many tiles a call carries teaches no limit: a request
    /// that fails (a 400 for one tile, found by halving: its other half was answered), and
    /// a part smaller than a part may be whose halves are answered (an upstream refusing
    /// tiles for the items they hold together). Either taught 32 or 2 tiles a call before
    /// the guards (each fails without its guard).
    #[tokio::test]
    async fn a_400_about_something_else_teaches_no_limit() {
        let found = PartLimits::default();
        let now = Instant::now();
        let bad = tiles(64)[40];
        let request = BatchRequest {
            tiles: tiles(64),
            ids: Vec::new(),
            access: Access::Agent,
        };
        let calls = Cell::new(0);
        let e = in_parts(&request, Limits::default(), &found, now, |part| {
            calls.set(calls.get() + 1);
            std::future::ready(match part.tiles.contains(&bad) {
                true => Err(refused_with(400, "tile 14/40/100 is not served here")),
                false => Ok(answered(&part)),
            })
        })
        .await
        .unwrap_err();
        assert!(matches!(e, OriginFailure::Refused { .. }), "{e:?}");
        assert_eq!(
            calls.get(),
            3,
            "64 refused, 32 answered, 32 refused as known"
        );
        assert_eq!(found.found(Limits::default(), now), (None, None));
        // Four tiles refused together (too many items), answered two at a time.
        tiles_of_one_taking(4, 2, &found, now).await;
        assert_eq!(found.found(Limits::default(), now), (None, None));
    }

    #[test]
    fn tokens_are_checked_without_being_echoed() {
        assert_eq!(check_token(" abc.def \n", "x").unwrap(), "abc.def");
        let e = check_token("sec ret", "file f").unwrap_err();
        assert!(!e.contains("sec"), "{e}");
        assert!(check_token("", "x").is_err());
    }

    #[test]
    fn retry_after_is_read_as_seconds_and_capped() {
        let h = |s: &'static str| hyper::header::HeaderValue::from_static(s);
        let now = SystemTime::UNIX_EPOCH;
        assert_eq!(retry_after_s(Some(&h("7")), now), Some(7));
        assert_eq!(retry_after_s(Some(&h(" 0 ")), now), Some(0));
        assert_eq!(
            retry_after_s(Some(&h("86400")), now),
            Some(MAX_RETRY_AFTER_S)
        );
        assert_eq!(
            retry_after_s(Some(&h("99999999999999999999999")), now),
            Some(MAX_RETRY_AFTER_S)
        );
        for bad in [
            "-1",
            "1.5",
            "",
            "soon",
            "Wed, 21 Oct 2015 07:28:00",
            "Wed, 32 Oct 2015 07:28:00 GMT",
        ] {
            assert_eq!(retry_after_s(Some(&h(bad)), now), None, "{bad}");
        }
        assert_eq!(retry_after_s(None, now), None);
    }

    /// RFC 9110 10.2.3: `Retry-After` may be an HTTP date; it is read as the seconds from
    /// the `now` given (rounded up), capped, and 0 once past. Fails when dates are ignored
    /// (`None`: the server's `--retry-after-s` would be sent instead).
    #[test]
    fn retry_after_as_an_http_date_is_the_seconds_from_now() {
        let h = |s: &'static str| hyper::header::HeaderValue::from_static(s);
        // Wed, 21 Oct 2015 07:28:00 GMT.
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_445_412_480);
        let before = |s: u64| at - std::time::Duration::from_secs(s);
        for form in [
            "Wed, 21 Oct 2015 07:28:00 GMT",
            "Wednesday, 21-Oct-15 07:28:00 GMT",
            "Wed Oct 21 07:28:00 2015",
        ] {
            assert_eq!(
                retry_after_s(Some(&h(form)), before(90)),
                Some(90),
                "{form}"
            );
        }
        let date = h("Wed, 21 Oct 2015 07:28:00 GMT");
        // Part of a second ahead counts as a whole one: the client waits until the date.
        let almost = before(7) + std::time::Duration::from_millis(400);
        assert_eq!(retry_after_s(Some(&date), almost), Some(7));
        assert_eq!(retry_after_s(Some(&date), at), Some(0));
        assert_eq!(
            retry_after_s(Some(&date), at + std::time::Duration::from_secs(60)),
            Some(0),
            "a date in the past"
        );
        assert_eq!(
            retry_after_s(Some(&date), before(86_400)),
            Some(MAX_RETRY_AFTER_S)
        );
    }
}
