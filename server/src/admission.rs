//! Admission control: what the server refuses before doing any work for a batch, so that
//! overload and abuse cost a quick refusal instead of growing latency and memory.
//!
//! In the order a `POST /v1/batch` meets them:
//! 1. Connections: at most `--max-connections` at once (more wait in the kernel's accept
//!    backlog), and a request's headers must arrive within `--header-timeout-ms` (hyper's
//!    header read timeout; [`crate::start`]'s accept loop).
//! 2. Per caller ([`per_caller`]): at most `--caller-rate` batches a second with bursts of
//!    `--caller-burst` per caller, keyed by the verified token's `sub` when there is one,
//!    else by the peer address; past it, 429 `rate_limited` with `Retry-After`
//!    (a [`governor`] keyed limiter, GCRA).
//! 3. The body, read whole before a slot is asked for (a slot is for the server's own
//!    work; a client sending its body slowly holds a connection, bounded by
//!    `--max-connections`, not a slot): at most the protocol's largest valid request
//!    ([`tilewarm::protocol::Limits::max_request_bytes`]), arriving within
//!    `--body-timeout-ms` (408 `request_timeout`), in [`crate::http`].
//! 4. Server-wide ([`Shed`]): at most the limit of batches answered at once (adaptive,
//!    [`crate::adaptive`], up to `--max-in-flight`; or fixed) and `--max-queue` waiting for
//!    a slot, none longer than `--max-queue-wait-ms`; past the queue at once, past the wait
//!    then: 503 `overloaded` with `Retry-After`. A request gives its slot back while it
//!    waits for the origin ([`HeldSlot::release`]); at most `--max-origin-waits` do
//!    ([`OriginWaits`]).

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::RETRY_AFTER;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::MethodRouter;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tilewarm::protocol::ErrorCode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::adaptive::InFlightLimit;
use crate::auth::Caller;
use crate::http::{error_response, unauthorized};
use crate::App;

/// The admission state shared by every request.
pub struct Admission {
    /// Per-caller rate limits; `None` when `--caller-rate 0`.
    callers: Option<Arc<DefaultKeyedRateLimiter<String>>>,
    /// `Retry-After` of a 503, in seconds.
    pub retry_after_s: u64,
    /// Longest wait for a request body.
    pub body_timeout: Duration,
}

impl Admission {
    /// `rate` batches a second per caller with bursts of `burst` (`rate` 0: no per-caller
    /// limit). Needs a Tokio runtime: a background task forgets idle callers every 10 s so
    /// the table stays as small as the set of recent callers.
    pub fn new(rate: u32, burst: u32, retry_after_s: u64, body_timeout: Duration) -> Admission {
        let callers = NonZeroU32::new(rate).map(|rate| {
            let burst = NonZeroU32::new(burst).unwrap_or(rate);
            let limiter = Arc::new(RateLimiter::keyed(
                Quota::per_second(rate).allow_burst(burst),
            ));
            tokio::spawn(forget_idle(Arc::downgrade(&limiter)));
            limiter
        });
        Admission {
            callers,
            retry_after_s,
            body_timeout,
        }
    }

    /// Callers the per-caller table holds now.
    pub fn tracked_callers(&self) -> usize {
        self.callers.as_ref().map_or(0, |l| l.len())
    }

    /// `Ok` when `key` may send a batch now, else how long it should wait.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        let Some(limiter) = &self.callers else {
            return Ok(());
        };
        limiter
            .check_key(&key.to_owned())
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

async fn forget_idle(limiter: Weak<DefaultKeyedRateLimiter<String>>) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tick.tick().await;
        let Some(l) = limiter.upgrade() else { break };
        l.retain_recent();
        l.shrink_to_fit();
    }
}

/// Whom a per-caller limit counts against: the verified token's `sub`, else the peer's
/// address (the whole address; behind a proxy every caller shares the proxy's).
pub fn caller_key(caller: &Caller, peer: Option<IpAddr>) -> String {
    match (&caller.sub, peer) {
        (Some(sub), _) => format!("sub:{sub}"),
        (None, Some(ip)) => format!("ip:{ip}"),
        (None, None) => "unknown".to_owned(),
    }
}

/// Whole seconds for `Retry-After`, rounded up, at least 1.
fn retry_after(wait: Duration) -> HeaderValue {
    let s = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    HeaderValue::from(s.max(1))
}

/// 429 `rate_limited` with `Retry-After`.
pub fn rate_limited(wait: Duration) -> Response {
    let mut r = error_response(
        ErrorCode::RateLimited,
        format!(
            "too many batches from this caller: retry in {} ms",
            wait.as_millis().max(1)
        ),
    );
    r.headers_mut().insert(RETRY_AFTER, retry_after(wait));
    r
}

/// 503 `overloaded` with `Retry-After`.
pub fn overloaded(retry_after_s: u64) -> Response {
    overloaded_because(
        "the server is at capacity: every batch slot and queue place is taken; retry later",
        retry_after_s,
    )
}

/// 503 `overloaded` with `Retry-After` and this message.
pub fn overloaded_because(message: impl Into<String>, retry_after_s: u64) -> Response {
    let mut r = error_response(ErrorCode::Overloaded, message);
    r.headers_mut()
        .insert(RETRY_AFTER, retry_after(Duration::from_secs(retry_after_s)));
    r
}

/// Whether `caller` is exempt from the per-caller limit: its *verified* token's `sub` is one
/// of `--unlimited-sub` (an edge's service token). Anonymous callers never are.
fn is_unlimited(caller: &Caller, unlimited: &[String]) -> bool {
    caller
        .sub
        .as_ref()
        .is_some_and(|sub| unlimited.iter().any(|u| u == sub))
}

/// Middleware on `POST /v1/batch`: who is calling (401 for a refused credential, before
/// anything else), then the per-caller limit (429). The verified [`Caller`] goes on in the
/// request's extensions.
pub async fn per_caller(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    let caller = match app.auth.caller(req.headers()) {
        Ok(c) => c,
        Err(e) => return unauthorized(e.0),
    };
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    if !is_unlimited(&caller, &app.config.unlimited_subs) {
        if let Err(wait) = app.admission.check(&caller_key(&caller, peer)) {
            return rate_limited(wait);
        }
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// The server-wide bound on one route: at most `limit` requests answered at once (the
/// adaptive [`InFlightLimit`], or fixed), at most `queue` more waiting for a slot, none
/// waiting longer than `max_wait`. A request past the queue is refused at once; one that
/// waited `max_wait` without a slot is refused then. Both are 503 `overloaded` with
/// `Retry-After`, so past capacity latency stays at about `max_wait` plus the time to
/// answer, instead of growing with the queue.
///
/// A tokio [`Semaphore`] (FIFO) holds the slots. tower's `ConcurrencyLimit` + `Buffer` +
/// `LoadShed`, used before, bound the queue's length but not the time spent in it, and
/// tower has no layer that times out only the wait.
pub struct Shed {
    limit: InFlightLimit,
    /// Whether hold times move the limit (`--in-flight-limit adaptive`).
    adaptive: bool,
    waiting: AtomicUsize,
    queue: usize,
    max_wait: Duration,
    retry_after_s: u64,
}

impl Shed {
    /// `in_flight` slots, fixed.
    pub fn fixed(in_flight: usize, queue: usize, max_wait: Duration, retry_after_s: u64) -> Shed {
        let n = in_flight.clamp(1, Semaphore::MAX_PERMITS);
        Shed::with(
            InFlightLimit::fixed(n),
            false,
            queue,
            max_wait,
            retry_after_s,
        )
    }

    /// Slots from `initial` up to `max`, moved by hold times ([`crate::adaptive`]).
    pub fn adaptive(
        initial: usize,
        max: usize,
        queue: usize,
        max_wait: Duration,
        retry_after_s: u64,
    ) -> Shed {
        let limit = InFlightLimit::adaptive(initial, max);
        Shed::with(limit, true, queue, max_wait, retry_after_s)
    }

    fn with(
        limit: InFlightLimit,
        adaptive: bool,
        queue: usize,
        max_wait: Duration,
        retry_after_s: u64,
    ) -> Shed {
        Shed {
            limit,
            adaptive,
            waiting: AtomicUsize::new(0),
            queue,
            max_wait,
            retry_after_s,
        }
    }

    /// The number of slots now.
    pub fn limit(&self) -> usize {
        self.limit.limit()
    }

    /// A slot, or the refusal to answer with.
    pub async fn admit(self: &Arc<Self>) -> Result<Slot, Response> {
        let slots = self.limit.slots();
        if let Ok(p) = Arc::clone(slots).try_acquire_owned() {
            return Ok(Slot::new(self, p));
        }
        // A place in the queue, given back on drop: also when the request is dropped while
        // it waits (its client went away), or the count would only grow.
        let place = Place(&self.waiting);
        if place.0.fetch_add(1, Relaxed) >= self.queue {
            return Err(overloaded(self.retry_after_s));
        }
        let got = tokio::time::timeout(self.max_wait, Arc::clone(slots).acquire_owned()).await;
        drop(place);
        match got {
            Ok(Ok(p)) => Ok(Slot::new(self, p)),
            Ok(Err(_closed)) => Err(overloaded(self.retry_after_s)),
            Err(_elapsed) => Err(overloaded_because(
                format!(
                    "the server is at capacity: no batch slot came free within {} ms; retry later",
                    self.max_wait.as_millis()
                ),
                self.retry_after_s,
            )),
        }
    }
}

/// A held slot of a [`Shed`]. Given back on drop, reporting how long it was held to the
/// adaptive limit.
pub struct Slot {
    shed: Arc<Shed>,
    permit: Option<OwnedSemaphorePermit>,
    since: Instant,
}

impl Slot {
    fn new(shed: &Arc<Shed>, permit: OwnedSemaphorePermit) -> Slot {
        Slot {
            shed: Arc::clone(shed),
            permit: Some(permit),
            since: Instant::now(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.shed.adaptive {
            let in_flight = self.shed.limit.in_flight();
            drop(self.permit.take());
            self.shed.limit.observe(self.since.elapsed(), in_flight);
        }
    }
}

/// The request's slot, shared by the middleware that took it and the handler, which gives
/// it back early ([`HeldSlot::release`]) before waiting for the origin. A request without
/// one (a handler called without admission) has nothing to release.
#[derive(Clone, Default)]
pub struct HeldSlot(Arc<std::sync::Mutex<Option<Slot>>>);

impl HeldSlot {
    fn holding(slot: Slot) -> HeldSlot {
        HeldSlot(Arc::new(std::sync::Mutex::new(Some(slot))))
    }

    /// Gives the slot back now: the request goes on without one (the origin's wait is not
    /// the server's work; [`OriginWaits`] bounds those requests instead).
    pub fn release(&self) {
        let slot = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        drop(slot);
    }
}

/// A bound on requests waiting for the origin (their own call or another request's, see
/// `single_flight`) after giving their slot back: past `--max-origin-waits`, 503
/// `overloaded` at once, so a slow origin cannot gather an unbounded number of requests.
pub struct OriginWaits {
    waiting: AtomicUsize,
    max: usize,
}

impl OriginWaits {
    pub fn new(max: usize) -> OriginWaits {
        OriginWaits {
            waiting: AtomicUsize::new(0),
            max,
        }
    }

    /// A place among the requests waiting for the origin; `None` when all are taken.
    pub fn enter(&self) -> Option<OriginWait<'_>> {
        let place = Place(&self.waiting);
        (place.0.fetch_add(1, Relaxed) < self.max).then_some(OriginWait { _place: place })
    }

    /// Requests waiting for the origin now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Relaxed)
    }
}

/// One request counted in [`OriginWaits`]; uncounted when dropped.
pub struct OriginWait<'a> {
    _place: Place<'a>,
}

/// One request counted in [`Shed`]'s queue or among [`OriginWaits`]; uncounted when dropped.
struct Place<'a>(&'a AtomicUsize);

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// Middleware holding a [`Shed`] slot until the answer is written or the handler gives it
/// back.
async fn shed_middleware(State(shed): State<Arc<Shed>>, mut req: Request, next: Next) -> Response {
    match shed.admit().await {
        Ok(slot) => {
            let held = HeldSlot::holding(slot);
            req.extensions_mut().insert(held.clone());
            let response = next.run(req).await;
            held.release();
            response
        }
        Err(refusal) => refusal,
    }
}

/// `route` behind `shed`.
pub fn shed<S: Clone + Send + Sync + 'static>(
    route: MethodRouter<S>,
    shed: Arc<Shed>,
) -> MethodRouter<S> {
    route.layer(axum::middleware::from_fn_with_state(shed, shed_middleware))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request dropped while it waits gives its queue place back; a later one still
    /// queues instead of being refused at once.
    #[tokio::test]
    async fn a_waiter_dropped_in_the_queue_gives_its_place_back() {
        let shed = Arc::new(Shed::fixed(1, 1, Duration::from_secs(60), 1));
        let held = shed.admit().await.ok().unwrap();
        for _ in 0..3 {
            // Waits for the held slot; dropped after 10 ms, as when its client goes away.
            let waited = tokio::time::timeout(Duration::from_millis(10), shed.admit()).await;
            assert!(waited.is_err(), "the only slot is held");
            assert_eq!(shed.waiting.load(Relaxed), 0);
        }
        // The queue has its place: this one waits and gets the slot once it is free.
        let mut waiter = std::pin::pin!(shed.admit());
        let early = tokio::time::timeout(Duration::from_millis(10), &mut waiter).await;
        assert!(early.is_err(), "waits for the held slot");
        assert_eq!(shed.waiting.load(Relaxed), 1, "queued, not refused");
        drop(held);
        assert!(waiter.await.is_ok());
    }
    use tilewarm::access::Access;

    #[test]
    fn keys_prefer_the_verified_subject() {
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let with_sub = Caller {
            tier: Access::Verified,
            sub: Some("alice".into()),
            admin: false,
        };
        assert_eq!(caller_key(&with_sub, Some(ip)), "sub:alice");
        assert_eq!(caller_key(&Caller::anonymous(), Some(ip)), "ip:192.0.2.7");
        assert_eq!(caller_key(&Caller::anonymous(), None), "unknown");
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after(Duration::from_millis(1)), "1");
        assert_eq!(retry_after(Duration::from_millis(1001)), "2");
        assert_eq!(retry_after(Duration::ZERO), "1");
    }

    #[tokio::test]
    async fn a_caller_past_its_burst_waits_and_others_do_not() {
        let a = Admission::new(1, 2, 1, Duration::from_secs(1));
        assert!(a.check("ip:a").is_ok());
        assert!(a.check("ip:a").is_ok());
        let wait = a.check("ip:a").unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1));
        assert!(a.check("ip:b").is_ok());
        assert_eq!(a.tracked_callers(), 2);
        let off = Admission::new(0, 0, 1, Duration::from_secs(1));
        for _ in 0..100 {
            assert!(off.check("ip:a").is_ok());
        }
    }
}
