//! Following the upstream's change feed: with `--origin http(s)://…/v1/batch` naming another
//! tilewarm-server, this server follows that server's `GET /v1/changes` (server-sent
//! events, [`crate::stream`]) and applies each event here as an invalidation made here
//! ([`super::relay`]): this server's tier and write guard, then this server's change stream,
//! so that its other instances and its own followers (pages, edges, servers chained below)
//! hear of it. Without it, a `POST /v1/invalidate` on the upstream (or a change in its
//! database) would reach this tier only when its entries expire.
//!
//! # Where and as whom
//! The feed is at the origin's URL with `/v1/batch` replaced by `/v1/changes` (query
//! dropped), or where `--origin-changes URL` says; `--origin-changes off` follows none (an
//! upstream that is not a tilewarm-server; an origin URL that does not end in `/v1/batch`
//! without the flag follows none either, with a warning at startup). The request carries
//! the upstream client's own bearer token (`--origin-token-file`, re-read when the file
//! changes, or `TILEWARM_ORIGIN_TOKEN`): the upstream filters its feed by the tier the
//! token verifies to, and only a follower at `agent` gets invalidations by id; a lower one
//! gets each of them as `reset` (reason `ids`), which this server applies as invalidate-all
//! (correct, and costly: warned once).
//!
//! # Events
//! - `ready`: the stream is in place. On a first connect, or a reconnect without an id to
//!   resume from, **the whole tier is invalidated** (and `all` is published): what the
//!   upstream invalidated while nobody listened is unknown, so nothing cached before can be
//!   proven fresh (the PostGIS listener's rule, [`super::changes`]). After a reconnect with
//!   `Last-Event-ID` it is nothing: the upstream sends what was missed, or a `reset`.
//! - `invalidate`: decoded with the core's bounded decoder and applied; one that does not
//!   decode is applied as `all` (counted). One whose data says `"reach":"tiles"` (a change
//!   from a PostGIS feed up the chain, [`Reach::Tiles`]) makes this server forget the
//!   counts of only its tiles ([`crate::warmup::OverLimit`]); any other, every tile's.
//! - `reset` (any reason: `gap` when the upstream cannot send what was missed, `ids`,
//!   `unreadable`): everything here is invalidated and `all` published.
//! - `expired`: the token stopped verifying; the follower reconnects at once with the
//!   current token and its last id, losing nothing.
//!
//! The last event id is kept only once its event is applied, so a drop in the middle
//! resumes from before it.
//!
//! # Reconnects, silence, refusals, and an upstream without a feed
//! A lost connection (or one that could not be made, or a 5xx answer: an upstream that is
//! restarting, or a proxy in front of it) is replaced after 100 ms doubling to 2 s
//! (starting over only after a connection that lasted [`STABLE_AFTER`]): short, because
//! while the follower is away nothing is invalidated here. Each delay is jittered over its
//! upper half ([`crate::backoff::jitter`]) so that the instances of a fleet do not
//! reconnect in step. A connection on which nothing arrives for `--origin-changes-idle-ms`
//! (35 s by default; a tilewarm-server sends a keep-alive comment every 15 s) is dropped
//! and replaced: a peer that died without closing (a lost NAT entry, a stopped VM) is not
//! waited on for ever.
//!
//! Any other 4xx (429 over the upstream's `--changes-max-per-caller`, a 400 to a request
//! without an id, a 405, …) says that asking again at once will not help: such answers
//! in a row wait [`REFUSED_FIRST`] doubling to [`SLOW_RETRY`], jittered. Whatever the
//! status, an answer's `Retry-After` (seconds or an HTTP date,
//! [`super::upstream::retry_after_s`]) is the least the next try waits, up to
//! [`MAX_RETRY_AFTER`]. Each kind of failure (a status, or no answer) is logged at warn
//! once until the stream is up again, then at debug.
//!
//! An upstream that answers 404 (a version without the feed, or not a tilewarm-server), 401
//! or 403 (the token is refused for the feed), a redirect (3xx: a configuration error; it
//! is not followed, since the token would go wherever it points: the warning names the URL
//! and where it points), or 200 with something else than an event stream, is logged once
//! at warn and tried again every [`SLOW_RETRY`] (it may be upgraded, reconfigured, or the
//! token rotated); `/healthz` says so (`upstream_changes`) and so does
//! `tilewarm_upstream_changes_unavailable`. Meanwhile, and while the upstream is
//! unreachable, nothing is invalidated from it: cached entries are served until their TTL.
//!
//! # Bounded memory
//! The stream is read with [`crate::sse::Parser`] bounded to [`max_event_bytes`] (what the
//! largest invalidation the core decodes takes, with room for the fields): a longer line or
//! event ends the connection with an error instead of growing a buffer. An error answer's
//! body is read up to [`MAX_ERROR_BYTES`].
//!
//! # Several instances
//! Every instance of this server follows the upstream and publishes what it applies, as
//! every instance listening to a database does: a follower of this server's stream sees
//! each upstream event once per instance (and one `all` per instance at each of its
//! unresumable reconnects): a repeated invalidation, not a wrong answer. The upstream
//! counts each instance as a follower: with a shared `sub` in their token, raise the
//! upstream's `--changes-max-per-caller` or list the `sub` in its `--unlimited-sub`. A chain
//! must not loop (a server following its own stream, directly or through others): every
//! event would be published again for ever.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, AtomicU8};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{ACCEPT, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use tilewarm::protocol::{decode_error, decode_invalidation, Limits};
use tracing::{debug, info, warn};

use super::relay::Relay;
use super::upstream::{error_chain, Token, UpstreamClient};
use crate::backoff::{jitter, Backoff};
use crate::config::Config;
use crate::invalidate::{Invalidation, Reach};
use crate::sse::{Message, Parser};
use crate::stream::feed_reach;
use crate::tier::ReadHold;
use crate::App;

/// Longest event (or line) read from the feed: the largest invalidation the core decodes
/// ([`Limits::max_request_bytes`], which the upstream's stream splits its entries to) and
/// 4 KiB for the event's name and id.
pub fn max_event_bytes() -> usize {
    Limits::default().max_request_bytes() + 4096
}

/// Most bytes of an error answer read (for its message).
pub const MAX_ERROR_BYTES: usize = 64 * 1024;

/// How long the answer's head may take (connect, TLS, the upstream's catch-up).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Between tries while the upstream has no feed for this server (404, 401, 403, a
/// redirect, not an event stream); the longest wait between refused tries.
pub const SLOW_RETRY: Duration = Duration::from_secs(30);

/// The first wait after a refusal (a 4xx that is not about the feed or the id sent),
/// doubling per refusal in a row up to [`SLOW_RETRY`].
pub const REFUSED_FIRST: Duration = Duration::from_secs(1);

/// The longest upstream `Retry-After` the follower honours: an upstream that asks for more
/// (by mistake or not) leaves this tier without its invalidations for no longer than this
/// between tries.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// How long a connection must have lasted for the reconnect back-off to start over.
pub const STABLE_AFTER: Duration = Duration::from_secs(30);

/// Where the feed is (module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedUrl {
    /// Follow the feed at this URL.
    Follow(String),
    /// `--origin-changes off`.
    Off,
    /// No flag, and the origin URL does not end in `/v1/batch`.
    NotDerivable,
}

impl FeedUrl {
    /// The feed of the upstream at `origin` (its batch URL), given `--origin-changes`
    /// (`flag`). The error names the flag and what it accepts.
    pub fn choose(origin: &str, flag: Option<&str>) -> Result<FeedUrl, String> {
        match flag.map(str::trim) {
            Some(v) if v.eq_ignore_ascii_case("off") => Ok(FeedUrl::Off),
            Some(v) => {
                let shown = super::redact_url(v);
                let lower = v.to_ascii_lowercase();
                let uri = (lower.starts_with("http://") || lower.starts_with("https://"))
                    .then(|| v.parse::<hyper::Uri>().ok())
                    .flatten()
                    .filter(|u| u.host().is_some_and(|h| !h.is_empty()));
                // The origin's token goes with it: never in clear when the origin is
                // reached over TLS.
                if origin.to_ascii_lowercase().starts_with("https://")
                    && lower.starts_with("http://")
                {
                    return Err(format!(
                        "--origin-changes {shown:?} is plain http while --origin is https: the origin's token would be sent in clear; use https"
                    ));
                }
                match uri {
                    Some(_) => Ok(FeedUrl::Follow(v.to_owned())),
                    None => Err(format!(
                        "--origin-changes: expected off or an http(s)://host/…/v1/changes URL, got {shown:?}"
                    )),
                }
            }
            None => {
                let base = origin.split(['?', '#']).next().unwrap_or(origin);
                Ok(match base.strip_suffix("/v1/batch") {
                    Some(root) => FeedUrl::Follow(format!("{root}/v1/changes")),
                    None => FeedUrl::NotDerivable,
                })
            }
        }
    }
}

/// Why the upstream does not serve this server a feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FeedState {
    /// Not connected yet, or reconnecting.
    Connecting = 0,
    /// The stream is in place (`ready` received).
    Connected = 1,
    /// The upstream answered 404: no feed there.
    NotFound = 2,
    /// The upstream answered 401 or 403: the token is refused for the feed.
    Refused = 3,
    /// The upstream answered 200 with something else than an event stream.
    NotAFeed = 4,
    /// The upstream answered a redirect (3xx), which the follower does not follow.
    Redirected = 5,
}

impl FeedState {
    fn from_u8(v: u8) -> FeedState {
        match v {
            1 => FeedState::Connected,
            2 => FeedState::NotFound,
            3 => FeedState::Refused,
            4 => FeedState::NotAFeed,
            5 => FeedState::Redirected,
            _ => FeedState::Connecting,
        }
    }

    /// Its name in `/healthz`.
    pub fn name(self) -> &'static str {
        match self {
            FeedState::Connecting => "connecting",
            FeedState::Connected => "connected",
            FeedState::NotFound => "not_found",
            FeedState::Refused => "refused",
            FeedState::NotAFeed => "not_a_feed",
            FeedState::Redirected => "redirected",
        }
    }

    /// Whether the upstream said it serves no feed to this server (slow retries).
    pub fn unavailable(self) -> bool {
        matches!(
            self,
            FeedState::NotFound | FeedState::Refused | FeedState::NotAFeed | FeedState::Redirected
        )
    }
}

/// The follower's counters and state (`/metrics`, `/healthz`).
#[derive(Default)]
pub struct UpstreamFeedStats {
    state: AtomicU8,
    /// Streams that came up (`ready` received).
    pub connects: AtomicU64,
    /// Connection attempts after a lost or failed one.
    pub reconnects: AtomicU64,
    /// Reconnects resumed with `Last-Event-ID` (no invalidate-all needed).
    pub resumes: AtomicU64,
    /// `invalidate` events applied here.
    pub events: AtomicU64,
    /// Invalidate-alls made because of the upstream: `reset` events, and connects that
    /// could not resume.
    pub resets: AtomicU64,
    /// Events that could not be read (applied as invalidate-all).
    pub bad_events: AtomicU64,
    /// Invalidations applied here that this server's change stream did not take
    /// ([`super::relay`]).
    pub unpublished: Arc<AtomicU64>,
}

impl UpstreamFeedStats {
    /// Where the follower is.
    pub fn state(&self) -> FeedState {
        FeedState::from_u8(self.state.load(Relaxed))
    }

    /// Sets the state; returns the one before.
    fn set(&self, s: FeedState) -> FeedState {
        FeedState::from_u8(self.state.swap(s as u8, Relaxed))
    }
}

/// What the follower needs: the feed's URL, the upstream client and its token.
#[derive(Clone)]
pub struct UpstreamFeed {
    url: hyper::Uri,
    shown: String,
    client: UpstreamClient,
    token: Arc<Token>,
    idle: Duration,
    pub stats: Arc<UpstreamFeedStats>,
}

impl UpstreamFeed {
    /// The feed of the upstream at `origin` (module docs); `None` when none is followed.
    pub(super) fn new(
        origin: &str,
        config: &Config,
        client: UpstreamClient,
        token: Arc<Token>,
    ) -> Result<Option<UpstreamFeed>, String> {
        let url = match FeedUrl::choose(origin, config.origin_changes.as_deref())? {
            FeedUrl::Follow(url) => url,
            FeedUrl::Off => return Ok(None),
            FeedUrl::NotDerivable => {
                warn!(origin = %super::redact_url(origin), "the upstream's change feed is not followed: its URL does not end in /v1/batch; give --origin-changes URL (or off): invalidations made there reach this tier only as entries expire");
                return Ok(None);
            }
        };
        let shown = super::redact_url(&url);
        let url = url
            .parse()
            .map_err(|e| format!("--origin-changes {shown}: {e}"))?;
        Ok(Some(UpstreamFeed {
            url,
            shown,
            client,
            token,
            idle: Duration::from_millis(config.origin_changes_idle_ms),
            stats: Arc::default(),
        }))
    }

    /// The feed's URL, for logs (credentials redacted).
    pub fn url(&self) -> &str {
        &self.shown
    }
}

/// How one connection ended.
#[derive(Debug)]
enum Ended {
    /// The app is gone: stop.
    AppGone,
    /// The upstream's `expired`: reconnect now with the current token.
    Expired,
    /// The upstream serves no feed to this server (404, 401, 403, a redirect, not an event
    /// stream).
    Unavailable(FeedState, String),
    /// Any other error answer: its status, what it said, and its `Retry-After`.
    Answered {
        status: u16,
        why: String,
        retry_after: Option<Duration>,
    },
    /// No answer, or a connection that failed or ended: why.
    Failed(String),
}

/// The wait before the next try after an error answer with `status`: the next delay of
/// `backoff` (5xx: the upstream or a proxy in front of it is failing, tried again soon) or
/// of `refused` (any other status: asking again at once will not help), jittered, and at
/// least the answer's `Retry-After` (capped at [`MAX_RETRY_AFTER`]).
fn wait_after_answer(
    status: u16,
    retry_after: Option<Duration>,
    backoff: &mut Backoff,
    refused: &mut Backoff,
) -> Duration {
    let delay = if status >= 500 {
        backoff.after_connection(None, STABLE_AFTER)
    } else {
        refused.next_delay()
    };
    jitter(delay).max(retry_after.unwrap_or_default().min(MAX_RETRY_AFTER))
}

/// Whether a failure of `kind` (an HTTP status, 0 for no answer) is logged at warn: the
/// first of each kind since the stream was last up (`warned` holds those already told).
fn first_of_its_kind(warned: &mut Vec<u16>, kind: u16) -> bool {
    if warned.contains(&kind) {
        return false;
    }
    warned.push(kind);
    true
}

/// Runs the follower until the app is dropped (module docs).
pub fn spawn(app: Weak<App>, feed: UpstreamFeed) {
    // A tilewarm-server sends a keep-alive every 15 s (crate::stream).
    if feed.idle < Duration::from_secs(15) {
        warn!(
            idle_ms = feed.idle.as_millis() as u64,
            "--origin-changes-idle-ms is below the upstream's 15 s keep-alive: a quiet feed is replaced each time (nothing is lost)"
        );
    }
    tokio::spawn(async move {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut refused = Backoff::new(REFUSED_FIRST, SLOW_RETRY);
        let mut relay = Relay::new(
            "upstream feed",
            ReadHold::UpstreamFeed,
            Arc::clone(&feed.stats.unpublished),
        );
        let mut last: Option<String> = None;
        // The kinds of failure (a status, 0: no answer) logged at warn since the stream was
        // last up: later ones of the same kind are logged at debug.
        let mut warned: Vec<u16> = Vec::new();
        let mut warned_ids = false;
        let mut first = true;
        loop {
            {
                let Some(a) = app.upgrade() else { return };
                // Also while the upstream is unreachable: the followers need not wait.
                relay.pay(&a).await;
            }
            if !std::mem::take(&mut first) {
                feed.stats.reconnects.fetch_add(1, Relaxed);
            }
            let began = tokio::time::Instant::now();
            let mut up = false;
            let ended =
                follow_once(&app, &feed, &mut relay, &mut last, &mut up, &mut warned_ids).await;
            let was = feed.stats.set(FeedState::Connecting);
            if up || was.unavailable() {
                // Connected, or no longer refused as unavailable: what goes wrong now is
                // news.
                warned.clear();
                refused.reset();
            }
            let wait = match ended {
                Ended::AppGone => return,
                Ended::Expired => {
                    info!("upstream feed: the upstream says the token expired; reconnecting with the current one");
                    if began.elapsed() < Duration::from_secs(1) {
                        // An upstream that expires every stream at once: not a busy loop.
                        jitter(backoff.next_delay())
                    } else {
                        Duration::ZERO
                    }
                }
                Ended::Unavailable(state, why) => {
                    feed.stats.set(state);
                    if was != state {
                        warn!(url = %feed.shown, retry_s = SLOW_RETRY.as_secs(), "upstream feed: not followed: {why}; invalidations made upstream reach this tier only as entries expire");
                    } else {
                        debug!(why = %why, "upstream feed: still not served");
                    }
                    backoff.reset();
                    refused.reset();
                    jitter(SLOW_RETRY)
                }
                Ended::Answered {
                    status,
                    why,
                    retry_after,
                } => {
                    let wait = wait_after_answer(status, retry_after, &mut backoff, &mut refused);
                    if first_of_its_kind(&mut warned, status) {
                        warn!(url = %feed.shown, error = %why, retry_in_ms = wait.as_millis() as u64, "upstream feed: not served; trying again after a delay that grows (further answers of this kind are logged at debug until it connects)");
                    } else {
                        debug!(error = %why, retry_in_ms = wait.as_millis() as u64, "upstream feed: not served yet");
                    }
                    wait
                }
                Ended::Failed(why) => {
                    if up {
                        warn!(url = %feed.shown, error = %why, resume_from = last.as_deref().unwrap_or("none"), "upstream feed: connection lost; reconnecting");
                    } else if first_of_its_kind(&mut warned, 0) {
                        warn!(url = %feed.shown, error = %why, "upstream feed: cannot connect; retrying (further failures are logged at debug until it connects)");
                    } else {
                        debug!(error = %why, "upstream feed: cannot connect yet");
                    }
                    let up_for = up.then(|| began.elapsed());
                    jitter(backoff.after_connection(up_for, STABLE_AFTER))
                }
            };
            tokio::time::sleep(wait).await;
        }
    });
}

/// One connection's life (module docs). `up` is set once `ready` arrived.
async fn follow_once(
    app: &Weak<App>,
    feed: &UpstreamFeed,
    relay: &mut Relay,
    last: &mut Option<String>,
    up: &mut bool,
    warned_ids: &mut bool,
) -> Ended {
    let token = match feed.token.current() {
        Ok(t) => t,
        Err(e) => return Ended::Failed(e),
    };
    let mut req = hyper::Request::get(feed.url.clone())
        .header(ACCEPT, "text/event-stream")
        .header(CACHE_CONTROL, "no-cache");
    if let Some(t) = token {
        req = req.header(AUTHORIZATION, format!("Bearer {t}"));
    }
    if let Some(id) = last.as_deref() {
        req = req.header("last-event-id", id);
    }
    let req = match req.body(Full::new(Bytes::new())) {
        Ok(r) => r,
        Err(e) => {
            // Only the id can be unsendable (a control character): start afresh.
            *last = None;
            return Ended::Failed(format!(
                "cannot build the request: {e} (the next connect starts afresh, without Last-Event-ID)"
            ));
        }
    };
    let resp = match tokio::time::timeout(CONNECT_TIMEOUT, feed.client.request(req)).await {
        Err(_) => {
            return Ended::Failed(format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()))
        }
        Ok(Err(e)) => {
            return Ended::Failed(format!(
                "the upstream could not be reached: {}",
                error_chain(&e)
            ))
        }
        Ok(Ok(r)) => r,
    };
    let status = resp.status().as_u16();
    if status != 200 {
        let retry_after =
            super::upstream::retry_after_s(resp.headers().get(RETRY_AFTER), SystemTime::now())
                .map(Duration::from_secs);
        let location = resp.headers().get(LOCATION).map(|v| match v.to_str() {
            Ok(l) => super::redact_url(&l.chars().take(300).collect::<String>()),
            Err(_) => "(a Location that is not visible ASCII)".to_owned(),
        });
        let body = tokio::time::timeout(
            Duration::from_secs(5),
            Limited::new(resp.into_body(), MAX_ERROR_BYTES).collect(),
        )
        .await;
        let message = match body {
            Ok(Ok(b)) => decode_error(&b.to_bytes()).map(|e| e.message),
            _ => None,
        }
        .map(|m| format!(": {}", m.chars().take(300).collect::<String>()))
        .unwrap_or_default();
        let said = format!("the upstream answered HTTP {status}{message}");
        return match status {
            300..=399 => Ended::Unavailable(
                FeedState::Redirected,
                format!(
                    "{} redirects (HTTP {status}) to {}: redirects are not followed (the token would go wherever they point); set --origin-changes (or --origin) to the URL it points to",
                    feed.shown,
                    location.as_deref().unwrap_or("nowhere (no Location)")
                ),
            ),
            404 => Ended::Unavailable(
                FeedState::NotFound,
                format!("{said} (it has no change feed there: an older tilewarm-server, or not one; --origin-changes sets the URL, or off)"),
            ),
            401 | 403 => Ended::Unavailable(
                FeedState::Refused,
                format!("{said} (the token of --origin-token-file or TILEWARM_ORIGIN_TOKEN is refused for its feed)"),
            ),
            400 | 413 | 414 | 431 if last.is_some() => {
                // The only thing a follower sends that can be wrong is its id (one this
                // upstream cannot read, or too long): connect afresh next time,
                // invalidating everything, rather than resend it for ever.
                *last = None;
                Ended::Failed(format!("{said} (the next connect starts afresh, without Last-Event-ID)"))
            }
            _ => Ended::Answered {
                status,
                why: said,
                retry_after,
            },
        };
    }
    let content_type = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if !content_type
        .to_ascii_lowercase()
        .starts_with("text/event-stream")
    {
        let shown: String = content_type.chars().take(100).collect();
        return Ended::Unavailable(
            FeedState::NotAFeed,
            format!("the upstream answered 200 with {shown:?}, not text/event-stream (is it a tilewarm-server's /v1/changes?)"),
        );
    }
    let resuming = last.is_some();
    let mut body = resp.into_body();
    let mut parser = Parser::new(max_event_bytes());
    let mut events = Vec::new();
    let check = Duration::from_secs(1).min(feed.idle);
    let mut heard = tokio::time::Instant::now();
    loop {
        let frame = match tokio::time::timeout(check, body.frame()).await {
            Err(_) => {
                if app.strong_count() == 0 {
                    return Ended::AppGone;
                }
                if heard.elapsed() >= feed.idle {
                    return Ended::Failed(format!(
                        "nothing arrived for {} ms (--origin-changes-idle-ms), not even a keep-alive",
                        feed.idle.as_millis()
                    ));
                }
                if relay.owed() && tokio::time::Instant::now() >= relay.next_try() {
                    let Some(a) = app.upgrade() else {
                        return Ended::AppGone;
                    };
                    relay.pay(&a).await;
                }
                continue;
            }
            Ok(None) => return Ended::Failed("the upstream ended the stream".into()),
            Ok(Some(Err(e))) => {
                return Ended::Failed(format!("reading the stream failed: {}", error_chain(&e)))
            }
            Ok(Some(Ok(frame))) => frame,
        };
        heard = tokio::time::Instant::now();
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        let read = parser.push(&data, &mut events);
        for m in events.drain(..) {
            if let Some(ended) = handle(app, feed, relay, &m, resuming, up, warned_ids).await {
                return ended;
            }
            if m.id.is_some() {
                last.clone_from(&m.id);
            }
        }
        if let Err(e) = read {
            // The stream cannot be read past this point, and resuming after the last id
            // read would meet the same event again, for ever: start afresh (invalidating
            // everything) instead.
            *last = None;
            return Ended::Failed(format!(
                "{e} (the next connect starts afresh, without Last-Event-ID)"
            ));
        }
    }
}

/// Applies one event (module docs); `Some` ends the connection.
async fn handle(
    app: &Weak<App>,
    feed: &UpstreamFeed,
    relay: &mut Relay,
    m: &Message,
    resuming: bool,
    up: &mut bool,
    warned_ids: &mut bool,
) -> Option<Ended> {
    let s = &feed.stats;
    let applied = match m.event.as_str() {
        "ready" => {
            let applied = if resuming {
                s.resumes.fetch_add(1, Relaxed);
                true
            } else {
                // Nothing cached before this point can be proven fresh.
                s.resets.fetch_add(1, Relaxed);
                relay
                    .apply(app, Invalidation::everything(), Reach::Anywhere)
                    .await
            };
            *up = true;
            s.connects.fetch_add(1, Relaxed);
            s.set(FeedState::Connected);
            info!(url = %feed.shown, resumed = resuming, "upstream feed: following{}", if resuming { "" } else { "; cache tier invalidated" });
            applied
        }
        "invalidate" => {
            let (inv, reach) = match decode_invalidation(m.data.as_bytes(), &Limits::default()) {
                Ok(inv) => {
                    s.events.fetch_add(1, Relaxed);
                    // Where its ids were, when the upstream says (`"reach":"tiles"`: its
                    // tiles hold them, as its PostGIS feed's do); anywhere otherwise.
                    (inv, feed_reach(&m.data))
                }
                Err(e) => {
                    s.bad_events.fetch_add(1, Relaxed);
                    warn!(error = %e, id = m.id.as_deref().unwrap_or(""), "upstream feed: an invalidation that does not decode; invalidating everything");
                    (Invalidation::everything(), Reach::Anywhere)
                }
            };
            relay.apply(app, inv, reach).await
        }
        "reset" => {
            s.resets.fetch_add(1, Relaxed);
            let reason = serde_json::from_str::<serde_json::Value>(&m.data)
                .ok()
                .and_then(|v| v.get("reason")?.as_str().map(str::to_owned))
                .unwrap_or_default();
            if reason == "ids" && !std::mem::replace(warned_ids, true) {
                warn!(url = %feed.shown, "upstream feed: the upstream sends invalidations by id as resets (invalidate everything): its feed does not verify this server's token at agent (--origin-token-file or TILEWARM_ORIGIN_TOKEN)");
            } else {
                info!(reason = %reason, "upstream feed: reset; invalidating everything");
            }
            relay
                .apply(app, Invalidation::everything(), Reach::Anywhere)
                .await
        }
        "expired" => return Some(Ended::Expired),
        other => {
            debug!(event = %other.chars().take(64).collect::<String>(), "upstream feed: an event this server does not know; ignored");
            true
        }
    };
    (!applied).then_some(Ended::AppGone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_feed_is_beside_the_batch_endpoint_unless_the_flag_says() {
        let c = |o: &str, f: Option<&str>| FeedUrl::choose(o, f);
        assert_eq!(
            c("https://up.example/api/v1/batch?k=1", None),
            Ok(FeedUrl::Follow("https://up.example/api/v1/changes".into()))
        );
        assert_eq!(c("http://up/batch", None), Ok(FeedUrl::NotDerivable));
        assert_eq!(c("http://up/v1/batch", Some(" Off ")), Ok(FeedUrl::Off));
        assert_eq!(
            c("http://up/batch", Some("http://feed:81/x")),
            Ok(FeedUrl::Follow("http://feed:81/x".into()))
        );
        let e = c("http://up/v1/batch", Some("https://u:pw@/v1/changes")).unwrap_err();
        assert!(e.contains("--origin-changes") && !e.contains("pw"), "{e}"); // The origin's token never goes in clear when the origin is reached over TLS.
        let e = c("https://up/v1/batch", Some("http://up/v1/changes")).unwrap_err();
        assert!(e.contains("in clear"), "{e}");
        assert_eq!(
            c("https://up/v1/batch", Some("HTTPS://feed/v1/changes")),
            Ok(FeedUrl::Follow("HTTPS://feed/v1/changes".into()))
        );
    }

    /// 5xx: the short back-off; other statuses: the refused one, from 1 s doubling to 30 s;
    /// either at least the answer's `Retry-After`, capped. Fails when a 4xx takes the short
    /// back-off (tried every 2 s at most) or `Retry-After` is ignored.
    #[test]
    fn an_answer_waits_by_its_kind_and_at_least_its_retry_after() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        let fresh = || {
            (
                Backoff::new(ms(100), s(2)),
                Backoff::new(REFUSED_FIRST, SLOW_RETRY),
            )
        };
        let within = |d: Duration, full: Duration| d >= full / 2 && d <= full;
        let (mut b, mut r) = fresh();
        for full in [1, 2, 4, 8, 16, 30, 30].map(s) {
            let w = wait_after_answer(429, None, &mut b, &mut r);
            assert!(within(w, full), "{w:?} for {full:?}");
        }
        let (mut b, mut r) = fresh();
        for full in [100, 200, 400, 800, 1600, 2000].map(ms) {
            let w = wait_after_answer(502, None, &mut b, &mut r);
            assert!(within(w, full), "{w:?} for {full:?}");
        }
        let (mut b, mut r) = fresh();
        assert_eq!(wait_after_answer(503, Some(s(7)), &mut b, &mut r), s(7));
        assert_eq!(wait_after_answer(429, Some(s(7)), &mut b, &mut r), s(7));
        assert_eq!(
            wait_after_answer(429, Some(s(3_600)), &mut b, &mut r),
            MAX_RETRY_AFTER
        );
        // A Retry-After shorter than the back-off does not shorten it.
        let (mut b, mut r) = fresh();
        for _ in 0..5 {
            wait_after_answer(410, None, &mut b, &mut r);
        }
        assert!(wait_after_answer(410, Some(s(1)), &mut b, &mut r) >= s(15));
    }

    #[test]
    fn each_kind_of_failure_is_warned_once() {
        let mut warned = Vec::new();
        assert!(first_of_its_kind(&mut warned, 0));
        assert!(!first_of_its_kind(&mut warned, 0));
        assert!(first_of_its_kind(&mut warned, 429));
        assert!(!first_of_its_kind(&mut warned, 429));
        assert!(!first_of_its_kind(&mut warned, 0));
    }

    #[test]
    fn states_round_trip() {
        for s in [
            FeedState::Connecting,
            FeedState::Connected,
            FeedState::NotFound,
            FeedState::Refused,
            FeedState::NotAFeed,
            FeedState::Redirected,
        ] {
            assert_eq!(FeedState::from_u8(s as u8), s);
        }
    }
}
