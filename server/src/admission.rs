//! Admission control: what the server refuses before doing any work for a batch, so that
//! overload and abuse cost a quick refusal instead of growing latency and memory.
//!
//! In the order a `POST /v1/batch` meets them:
//! 0. Failed credentials ([`AuthFailures`]): a client address ([`crate::client_addr`])
//!    whose credentials failed more than `--auth-fail-burst` times, refilled at
//!    `--auth-fail-rate` a second, gets 429 `rate_limited` with `Retry-After` for a request
//!    carrying a credential *before* it is checked, so invalid or expired tokens cannot
//!    make the server verify signatures at any rate. At most `--auth-fail-max-addresses` addresses are tracked (an IPv6 address by
//!    its /64); past them the rest share one bucket, so memory stays bounded.
//! 1. Connections: at most `--max-connections` at once (more wait in the kernel's accept
//!    backlog), a request's headers must arrive within `--header-timeout-ms` (hyper's
//!    header read timeout; [`crate::start`]'s accept loop), and a write the client takes
//!    no byte of for `--write-timeout-ms` closes the connection
//!    ([`crate::write_timeout`]), so a client that never reads its answers cannot keep its
//!    connection. With `--max-connections-per-address N`, one TCP peer address outside
//!    the trusted proxies has at most N open ([`ConnsPerAddress`]; one more is closed at
//!    accept).
//! 2. Per caller ([`per_caller`]): at most `--caller-rate` batches a second with bursts of
//!    `--caller-burst` per caller, keyed by the verified token's `sub` when there is one,
//!    else by the client address ([`crate::client_addr`]; an IPv6 one by its /64); past
//!    it, 429 `rate_limited` with `Retry-After` (a [`governor`] keyed limiter, GCRA; at
//!    most [`MAX_CALLERS`] callers tracked, the rest sharing one bucket).
//! 3. The body, read whole before a slot is asked for (a slot is for the server's own
//!    work; a client sending its body slowly holds a connection, bounded by
//!    `--max-connections`, not a slot): at most the protocol's largest valid request
//!    ([`tilewarm::protocol::Limits::max_request_bytes`]), arriving within
//!    `--body-timeout-ms` (408 `request_timeout`), in [`crate::http`].
//! 4. Server-wide ([`Shed`]): at most the limit of batches answered at once (adaptive,
//!    [`crate::adaptive`], up to `--max-in-flight`; or fixed) and `--max-queue` waiting for
//!    a slot, none longer than `--max-queue-wait-ms`; past the queue at once, past the wait
//!    then: 503 `overloaded` with `Retry-After`. A request gives its slot back while it
//!    waits for the origin ([`HeldSlot::release`]), after its tier read; at most
//!    `--max-origin-waits` do ([`OriginWaits`]). An origin at capacity (every PostGIS
//!    connection busy for `--origin-pool-wait-ms`, an upstream's 503) is a 503 as well
//!    ([`crate::origin::OriginFailure::Overloaded`]).
//!
//! `POST /v1/invalidate` meets 0 and 2 (after its admin check) and then a server-wide
//! rate, `--invalidate-rate` with bursts of `--invalidate-burst` ([`Admission::invalidation`]):
//! each invalidation unlinks keys in the shared tier and sends the next requests to the
//! origin, so even an admin token must not be able to repeat them without bound.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::MethodRouter;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::{DefaultKeyedStateStore, ShrinkableKeyedStateStore};
use governor::state::StateStore;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tilewarm::protocol::ErrorCode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::adaptive::InFlightLimit;
use crate::auth::{Caller, CredentialError};
use crate::client_addr::ClientAddr;
use crate::http::{credential_required, error_response, keys_unavailable, no_token, unauthorized};
use crate::App;

/// Most callers the per-caller table tracks ([`Admission::check`]).
pub const MAX_CALLERS: usize = 100_000;

/// The key the callers share that find the per-caller table full (every caller key is
/// `sub:…`, `ip:…` or `unknown`: see [`caller_key`]).
const OVERFLOW_CALLER: &str = "overflow";

/// The per-caller table: `governor`'s keyed store (a `DashMap`) holding at most `max`
/// callers (and the shared bucket). A caller not in it that finds it full is counted in
/// the one bucket of [`OVERFLOW_CALLER`]: a flood from more callers than that is limited
/// as one caller, and memory stays bounded. (Two callers arriving at once may each see
/// room for one: it can hold a few more, as many as run at once.)
struct Callers {
    map: DefaultKeyedStateStore<String>,
    max: usize,
}

impl StateStore for Callers {
    type Key = String;

    fn measure_and_replace<T, F, E>(&self, key: &String, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        if self.map.len() >= self.max && !self.map.contains_key(key) {
            return self.map.measure_and_replace(&OVERFLOW_CALLER.to_owned(), f);
        }
        self.map.measure_and_replace(key, f)
    }
}

impl ShrinkableKeyedStateStore<String> for Callers {
    fn retain_recent(&self, drop_below: Nanos) {
        ShrinkableKeyedStateStore::retain_recent(&self.map, drop_below);
    }

    fn shrink_to_fit(&self) {
        ShrinkableKeyedStateStore::shrink_to_fit(&self.map);
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

type CallerLimiter =
    RateLimiter<String, Callers, DefaultClock, NoOpMiddleware<<DefaultClock as Clock>::Instant>>;

/// The per-caller limiter and when its table was last swept because it was full.
struct PerCaller {
    limiter: Arc<CallerLimiter>,
    /// The table's [`Callers::max`].
    max: usize,
    start: Instant,
    /// Milliseconds since `start`; a full table is swept at most once a second.
    swept_ms: AtomicU64,
}

/// The admission state shared by every request.
pub struct Admission {
    /// Per-caller rate limits; `None` when `--caller-rate 0`.
    callers: Option<PerCaller>,
    /// Failed credentials per client address (off until [`Admission::with_auth_failures`]).
    pub auth_failures: Arc<AuthFailures>,
    /// The server-wide rate of `POST /v1/invalidate`; `None` when off.
    invalidations: Option<DefaultDirectRateLimiter>,
    /// `Retry-After` of a 503, in seconds.
    pub retry_after_s: u64,
    /// Longest wait for a request body.
    pub body_timeout: Duration,
}

impl Admission {
    /// `rate` batches a second per caller with bursts of `burst` (`rate` 0: no per-caller
    /// limit), at most [`MAX_CALLERS`] callers tracked. Needs a Tokio runtime: a background
    /// task forgets idle callers every 10 s so the table stays as small as the set of
    /// recent callers.
    pub fn new(rate: u32, burst: u32, retry_after_s: u64, body_timeout: Duration) -> Admission {
        Admission::with_max_callers(rate, burst, MAX_CALLERS, retry_after_s, body_timeout)
    }

    /// The same with at most `max_callers` callers tracked (at least 1): when the table
    /// is full, the callers that have refilled are forgotten (at most once a second), and
    /// if it is still full, callers not in it share one bucket.
    pub fn with_max_callers(
        rate: u32,
        burst: u32,
        max_callers: usize,
        retry_after_s: u64,
        body_timeout: Duration,
    ) -> Admission {
        let max = max_callers.max(1);
        let callers = NonZeroU32::new(rate).map(|rate| {
            let burst = NonZeroU32::new(burst).unwrap_or(rate);
            let store = Callers {
                map: DefaultKeyedStateStore::default(),
                max,
            };
            let limiter = Arc::new(RateLimiter::new(
                Quota::per_second(rate).allow_burst(burst),
                store,
                DefaultClock::default(),
            ));
            tokio::spawn(forget_idle(Arc::downgrade(&limiter)));
            PerCaller {
                limiter,
                max,
                start: Instant::now(),
                swept_ms: AtomicU64::new(0),
            }
        });
        Admission {
            callers,
            auth_failures: Arc::new(AuthFailures::new(0, 0, 1)),
            invalidations: None,
            retry_after_s,
            body_timeout,
        }
    }

    /// The same with failed credentials limited per address: `rate` a second after bursts
    /// of `burst`, at most `max_addresses` tracked ([`AuthFailures`]; `rate` 0: no limit).
    /// Needs a Tokio runtime: a background task forgets recovered addresses every 10 s.
    pub fn with_auth_failures(mut self, rate: u32, burst: u32, max_addresses: usize) -> Self {
        let failures = Arc::new(AuthFailures::new(rate, burst, max_addresses));
        if rate > 0 {
            tokio::spawn(sweep_auth_failures(Arc::downgrade(&failures)));
        }
        self.auth_failures = failures;
        self
    }

    /// The same with `POST /v1/invalidate` limited to `rate` a second server-wide, with
    /// bursts of `burst` (`rate` 0: no limit).
    pub fn with_invalidate_limit(mut self, rate: u32, burst: u32) -> Self {
        self.invalidations = NonZeroU32::new(rate).map(|rate| {
            let burst = NonZeroU32::new(burst).unwrap_or(rate);
            RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
        });
        self
    }

    /// `Ok` when an invalidation may run now, else how long until one may.
    pub fn invalidation(&self) -> Result<(), Duration> {
        let Some(limiter) = &self.invalidations else {
            return Ok(());
        };
        limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Callers the per-caller table holds now (with the shared bucket, when in use).
    pub fn tracked_callers(&self) -> usize {
        self.callers.as_ref().map_or(0, |c| c.limiter.len())
    }

    /// `Ok` when `key` may send a batch now, else how long it should wait.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        let Some(callers) = &self.callers else {
            return Ok(());
        };
        let limiter = &callers.limiter;
        if limiter.len() >= callers.max {
            let now = callers.start.elapsed().as_millis() as u64;
            let last = callers.swept_ms.load(Relaxed);
            if now.saturating_sub(last) >= 1000
                && callers
                    .swept_ms
                    .compare_exchange(last, now, Relaxed, Relaxed)
                    .is_ok()
            {
                limiter.retain_recent();
            }
        }
        limiter
            .check_key(&key.to_owned())
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

async fn forget_idle(limiter: Weak<CallerLimiter>) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tick.tick().await;
        let Some(l) = limiter.upgrade() else { break };
        l.retain_recent();
        l.shrink_to_fit();
    }
}

async fn sweep_auth_failures(failures: Weak<AuthFailures>) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tick.tick().await;
        let Some(f) = failures.upgrade() else { break };
        f.sweep();
    }
}

/// Where failed credentials are counted: the client's IPv4 address, or the /64 network of
/// its IPv6 address (one host usually holds a whole /64, so counting single IPv6
/// addresses would let it pick a fresh key for every request).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddrKey {
    V4(Ipv4Addr),
    /// The upper 64 bits of an IPv6 address.
    V6Net(u64),
    /// No client address known (the router served without the peer's address).
    Unknown,
}

impl AddrKey {
    /// The key of `client` (an IPv4-mapped IPv6 address counts as its IPv4 address).
    pub fn of(client: Option<IpAddr>) -> AddrKey {
        match client {
            Some(IpAddr::V4(a)) => AddrKey::V4(a),
            Some(IpAddr::V6(a)) => match a.to_ipv4_mapped() {
                Some(v4) => AddrKey::V4(v4),
                None => AddrKey::V6Net((u128::from(a) >> 64) as u64),
            },
            None => AddrKey::Unknown,
        }
    }
}

/// Open connections per TCP peer address (`--max-connections-per-address`), so that one
/// address cannot take every `--max-connections` slot. Keyed as [`AddrKey`] (an IPv6 peer
/// by its /64). The peer, not the client address of [`crate::client_addr`]: the cap is
/// applied at accept, before any header is read; peers in `--trusted-proxy` ranges are
/// not capped (the accept loop skips them), as they carry many clients' connections.
/// The table holds only addresses with a connection open: at most `--max-connections`.
pub struct ConnsPerAddress {
    max: usize,
    open: Arc<Mutex<HashMap<AddrKey, usize>>>,
}

/// One open connection counted against its address; dropping it gives the place back.
pub struct AddressConn {
    open: Arc<Mutex<HashMap<AddrKey, usize>>>,
    key: AddrKey,
}

impl ConnsPerAddress {
    /// At most `max` open connections per address.
    pub fn new(max: usize) -> ConnsPerAddress {
        ConnsPerAddress {
            max,
            open: Arc::default(),
        }
    }

    /// A place for one more connection from `peer`, or `None` when it has `max` open.
    pub fn enter(&self, peer: IpAddr) -> Option<AddressConn> {
        let key = AddrKey::of(Some(peer));
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(key).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(AddressConn {
            open: Arc::clone(&self.open),
            key,
        })
    }

    /// Addresses with a connection open.
    pub fn addresses(&self) -> usize {
        self.open.lock().map(|m| m.len()).unwrap_or(0)
    }
}

impl Drop for AddressConn {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// Failed credentials per client address, so that invalid or expired tokens cannot make
/// the server verify signatures (the expensive part of a refused request) at any rate.
///
/// Each address has a GCRA bucket (as `governor`'s, which has no way to look without
/// taking): every refused credential takes one cell, `burst` cells at most, refilled at
/// `rate` a second. While an address's bucket is empty, a request from it that carries a
/// credential is refused (429) before the credential is looked at; requests without one
/// are not affected (they cost nothing to check), and a valid credential from an address
/// with cells left costs nothing here.
///
/// Memory is bounded: at most `max_addresses` buckets. A full bucket is the same as none,
/// so buckets that have refilled are dropped (every 10 s, and when the table is full, at
/// most once a second). When the table is still full, addresses not in it share one more
/// bucket: a flood from more addresses than that is limited as one caller.
pub struct AuthFailures {
    /// `None`: off (`--auth-fail-rate 0`).
    gcra: Option<Gcra>,
    max_addresses: usize,
    /// Buckets held (plus one while the shared bucket is in use); 0 lets every check
    /// through without taking the lock.
    held: AtomicUsize,
    table: Mutex<FailTable>,
    start: Instant,
}

#[derive(Clone, Copy, Debug)]
struct Gcra {
    /// Nanoseconds per cell (1 / rate).
    interval: u64,
    /// How far ahead of now a bucket's theoretical arrival time may be and still take a
    /// cell: `interval * (burst - 1)`.
    tolerance: u64,
}

#[derive(Default)]
struct FailTable {
    /// Theoretical arrival time (ns since `start`) per address.
    tat: HashMap<AddrKey, u64>,
    /// The shared bucket of addresses that found the table full.
    shared: u64,
    last_sweep: u64,
}

impl AuthFailures {
    /// `rate` refused credentials a second per address after bursts of `burst` (at least
    /// 1), `max_addresses` addresses tracked (at least 1). `rate` 0: no limit.
    pub fn new(rate: u32, burst: u32, max_addresses: usize) -> AuthFailures {
        let gcra = (rate > 0).then(|| {
            let interval = 1_000_000_000 / u64::from(rate);
            Gcra {
                interval,
                tolerance: interval.saturating_mul(u64::from(burst.max(1)) - 1),
            }
        });
        AuthFailures {
            gcra,
            max_addresses: max_addresses.max(1),
            held: AtomicUsize::new(0),
            table: Mutex::new(FailTable::default()),
            start: Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FailTable> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Ok` when a credential from `key` may be checked now, else how long until one may.
    pub fn admit(&self, key: AddrKey) -> Result<(), Duration> {
        self.admit_at(key, self.now())
    }

    fn admit_at(&self, key: AddrKey, now: u64) -> Result<(), Duration> {
        let Some(g) = self.gcra else { return Ok(()) };
        if self.held.load(Relaxed) == 0 {
            return Ok(());
        }
        let t = self.lock();
        let tat = match t.tat.get(&key) {
            Some(&tat) => tat,
            None if t.tat.len() >= self.max_addresses => t.shared,
            None => return Ok(()),
        };
        let allowed_from = tat.saturating_sub(g.tolerance);
        if allowed_from > now {
            Err(Duration::from_nanos(allowed_from - now))
        } else {
            Ok(())
        }
    }

    /// Counts a refused credential from `key`.
    pub fn failed(&self, key: AddrKey) {
        self.failed_at(key, self.now());
    }

    fn failed_at(&self, key: AddrKey, now: u64) {
        let Some(g) = self.gcra else { return };
        let mut t = self.lock();
        let next = |tat: u64| tat.max(now).saturating_add(g.interval);
        if let Some(tat) = t.tat.get_mut(&key) {
            *tat = next(*tat);
            return;
        }
        if t.tat.len() >= self.max_addresses && now.saturating_sub(t.last_sweep) >= 1_000_000_000 {
            Self::sweep_table(&mut t, now);
        }
        if t.tat.len() < self.max_addresses {
            t.tat.insert(key, next(now));
        } else {
            t.shared = next(t.shared);
        }
        self.held.store(Self::held_of(&t, now), Relaxed);
    }

    /// Drops the buckets that have refilled (the same as no bucket).
    pub fn sweep(&self) {
        let now = self.now();
        let mut t = self.lock();
        Self::sweep_table(&mut t, now);
        self.held.store(Self::held_of(&t, now), Relaxed);
    }

    fn sweep_table(t: &mut FailTable, now: u64) {
        t.tat.retain(|_, tat| *tat > now);
        t.tat.shrink_to(t.tat.len().max(16) * 2);
        t.last_sweep = now;
    }

    fn held_of(t: &FailTable, now: u64) -> usize {
        t.tat.len() + usize::from(t.shared > now)
    }

    /// Addresses tracked now (`/metrics`).
    pub fn tracked(&self) -> usize {
        self.lock().tat.len()
    }
}

/// 429 `rate_limited` with `Retry-After`, for an address past its failed credentials.
pub fn auth_rate_limited(wait: Duration) -> Response {
    rate_limited_because(
        format!(
            "too many refused credentials from this address (--auth-fail-rate): retry in {} ms with a valid token, or without one",
            wait.as_millis().max(1)
        ),
        wait,
    )
}

/// Why [`authenticate`] refused a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The address is past its refused credentials: 429 after this wait, nothing checked.
    TooManyFailures(Duration),
    /// The credential was checked and refused: 401 with this message.
    Unauthorized(String),
    /// The `Authorization` header is not `Bearer`: 401 with this message and a challenge
    /// without an error code ([`crate::auth::CredentialError::NotBearer`]).
    NotBearer(String),
    /// The `Authorization` header is `Bearer` with no token: 400 with this message
    /// ([`crate::auth::CredentialError::NoToken`]).
    NoToken(String),
    /// The credential could not be checked: the `--jwks` URL's key server failed (502).
    KeysUnavailable(crate::auth::KeysUnavailable),
}

impl Refused {
    /// The answer: 429 `rate_limited` with `Retry-After`, or 401 `unauthorized` (400
    /// `bad_request` for `Bearer` with no token) with `WWW-Authenticate`.
    pub fn into_response(self) -> Response {
        match self {
            Refused::TooManyFailures(wait) => auth_rate_limited(wait),
            Refused::Unauthorized(message) => unauthorized(message),
            Refused::NotBearer(message) => credential_required(message),
            Refused::NoToken(message) => no_token(message),
            Refused::KeysUnavailable(e) => keys_unavailable(e),
        }
    }
}

/// Who is calling ([`crate::auth`]), with failed credentials limited per address
/// ([`AuthFailures`]): a request with no credential is `public` at no cost; one from an
/// address past its failures is refused (429) before its credential is checked; a
/// refused credential is a 401 and counts against the address; one that could not be
/// checked (the key server failed) is a 502 and does not.
pub async fn authenticate(
    app: &App,
    headers: &HeaderMap,
    client: Option<IpAddr>,
) -> Result<Caller, Refused> {
    if !app.auth.credential_sent(headers) {
        return Ok(Caller::anonymous());
    }
    let key = AddrKey::of(client);
    let failures = &app.admission.auth_failures;
    failures.admit(key).map_err(Refused::TooManyFailures)?;
    app.auth.caller(headers).await.map_err(|e| match e {
        CredentialError::Unauthorized(e) => {
            failures.failed(key);
            Refused::Unauthorized(e.0)
        }
        CredentialError::NotBearer(e) => {
            failures.failed(key);
            Refused::NotBearer(e.0)
        }
        // Nothing was checked: no failure to count.
        CredentialError::NoToken(m) => Refused::NoToken(m),
        CredentialError::KeysUnavailable(e) => Refused::KeysUnavailable(e),
    })
}

/// Whom a per-caller limit counts against: the verified token's `sub`, else the client's
/// address ([`crate::client_addr`]: behind an untrusted proxy, every caller shares the
/// proxy's), an IPv6 address by its /64 as [`AddrKey`] counts it: a host is given a whole
/// /64, and keyed by address it could be any number of callers, each with its own burst
/// and its own entry in the table.
pub fn caller_key(caller: &Caller, client: Option<IpAddr>) -> String {
    match (&caller.sub, AddrKey::of(client)) {
        (Some(sub), _) => format!("sub:{sub}"),
        (None, AddrKey::V4(a)) => format!("ip:{a}"),
        (None, AddrKey::V6Net(net)) => format!("ip:{}/64", Ipv6Addr::from(u128::from(net) << 64)),
        (None, AddrKey::Unknown) => "unknown".to_owned(),
    }
}

/// Whole seconds for `Retry-After`, rounded up, at least 1.
pub fn retry_after(wait: Duration) -> HeaderValue {
    let s = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    HeaderValue::from(s.max(1))
}

/// 429 `rate_limited` with `Retry-After`.
pub fn rate_limited(wait: Duration) -> Response {
    rate_limited_because(
        format!(
            "too many batches from this caller: retry in {} ms",
            wait.as_millis().max(1)
        ),
        wait,
    )
}

/// 429 `rate_limited` with this message and `Retry-After` of `wait` (whole seconds,
/// rounded up, at least 1): every limit's refusal.
pub fn rate_limited_because(message: String, wait: Duration) -> Response {
    let mut r = error_response(ErrorCode::RateLimited, message);
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

/// Middleware on `POST /v1/batch` (and the other API routes): who is calling
/// ([`authenticate`]: 429 past the address's failed credentials, 401 for a refused
/// credential, before anything else), then the per-caller limit (429). The verified
/// [`Caller`] goes on in the request's extensions.
pub async fn per_caller(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    let client = ClientAddr::of(&req);
    let caller = match authenticate(&app, req.headers(), client).await {
        Ok(c) => c,
        Err(refused) => return refused.into_response(),
    };
    if !is_unlimited(&caller, &app.config.unlimited_subs) {
        if let Err(wait) = app.admission.check(&caller_key(&caller, client)) {
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

    /// Slot holds reported to the adaptive limit so far (at most its window of 256): for
    /// tests of what a slot covers.
    #[doc(hidden)]
    pub fn reported_holds(&self) -> usize {
        self.limit.reported()
    }

    /// Slots free now, and requests waiting for one: for tests that fill them.
    #[doc(hidden)]
    pub fn free_and_waiting(&self) -> (usize, usize) {
        let free = self.limit.slots().available_permits();
        (free, self.waiting.load(Relaxed))
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
/// adaptive limit when it did the work ([`HeldSlot::worked`]).
pub struct Slot {
    shed: Arc<Shed>,
    permit: Option<OwnedSemaphorePermit>,
    since: Instant,
    worked: bool,
}

impl Slot {
    fn new(shed: &Arc<Shed>, permit: OwnedSemaphorePermit) -> Slot {
        Slot {
            shed: Arc::clone(shed),
            permit: Some(permit),
            since: Instant::now(),
            worked: false,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if !self.shed.adaptive {
            return;
        }
        if self.worked {
            let in_flight = self.shed.limit.in_flight();
            drop(self.permit.take());
            self.shed.limit.observe(self.since.elapsed(), in_flight);
        } else {
            drop(self.permit.take());
            self.shed.limit.settle();
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

    /// The request did the server's work in this slot (it read the cache tier): how long
    /// the slot is held is reported to the adaptive limit when it is given back. A slot
    /// given back without it (a request refused before, or one that gave its slot back to
    /// wait for the origin right after planning) reports nothing: such holds are far
    /// shorter than a batch's work and would read as the no-load time
    /// ([`crate::adaptive`]). Nothing once the slot was given back.
    pub fn worked(&self) {
        if let Some(slot) = self.0.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            slot.worked = true;
        }
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
    async fn only_slots_that_did_the_work_report_their_hold_time() {
        let shed = Arc::new(Shed::adaptive(4, 64, 8, Duration::from_secs(1), 1));
        // Refused inside its slot: no sample.
        drop(shed.admit().await.ok().unwrap());
        // Given back to wait for the origin before reading the tier: none either, and
        // marking it afterwards changes nothing.
        let held = HeldSlot::holding(shed.admit().await.ok().unwrap());
        held.release();
        held.worked();
        drop(held);
        assert_eq!(shed.limit.reported(), 0);
        assert_eq!(shed.limit.in_flight(), 0);
        // Read the tier: one sample, when the slot is given back.
        let held = HeldSlot::holding(shed.admit().await.ok().unwrap());
        held.worked();
        assert_eq!(shed.limit.reported(), 0);
        held.release();
        assert_eq!(shed.limit.reported(), 1);
        assert_eq!(shed.limit.in_flight(), 0);
    }

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
            expires_at: None,
        };
        assert_eq!(caller_key(&with_sub, Some(ip)), "sub:alice");
        assert_eq!(caller_key(&Caller::anonymous(), Some(ip)), "ip:192.0.2.7");
        assert_eq!(caller_key(&Caller::anonymous(), None), "unknown");
        // An IPv6 host is one caller for its whole /64 (and an IPv4-mapped one its IPv4).
        let v6 = |a: &str| caller_key(&Caller::anonymous(), Some(a.parse().unwrap()));
        assert_eq!(v6("2001:db8:1:2::1"), "ip:2001:db8:1:2::/64");
        assert_eq!(v6("2001:db8:1:2:ffff:1:2:3"), v6("2001:db8:1:2::1"));
        assert_ne!(v6("2001:db8:1:3::1"), v6("2001:db8:1:2::1"));
        assert_eq!(v6("::ffff:192.0.2.7"), "ip:192.0.2.7");
    }

    /// An IPv6 /64 is one address (one host holds it whole); a place given back is reused
    /// and the table forgets addresses with nothing open.
    #[test]
    fn connections_per_address_count_an_ipv6_64_as_one() {
        let cap = ConnsPerAddress::new(2);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let a = cap.enter(ip("2001:db8::1")).unwrap();
        let b = cap.enter(ip("2001:db8::ffff:2")).unwrap();
        assert!(cap.enter(ip("2001:db8::3")).is_none());
        let c = cap.enter(ip("2001:db8:0:1::1")).unwrap();
        let d = cap.enter(ip("192.0.2.1")).unwrap();
        // An IPv4-mapped IPv6 peer is its IPv4 address.
        let e = cap.enter(ip("::ffff:192.0.2.1")).unwrap();
        assert!(cap.enter(ip("192.0.2.1")).is_none());
        assert_eq!(cap.addresses(), 3);
        drop(a);
        let a = cap.enter(ip("2001:db8::9")).unwrap();
        drop((a, b, c, d, e));
        assert_eq!(cap.addresses(), 0);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after(Duration::from_millis(1)), "1");
        assert_eq!(retry_after(Duration::from_millis(1001)), "2");
        assert_eq!(retry_after(Duration::ZERO), "1");
    }

    const SEC: u64 = 1_000_000_000;

    fn v4(s: &str) -> AddrKey {
        AddrKey::of(Some(s.parse().unwrap()))
    }

    #[test]
    fn refused_credentials_empty_an_addresss_bucket_and_it_refills_at_the_rate() {
        let f = AuthFailures::new(2, 3, 100);
        let (a, b) = (v4("192.0.2.1"), v4("192.0.2.2"));
        let t0 = 10 * SEC;
        for _ in 0..3 {
            assert!(f.admit_at(a, t0).is_ok());
            f.failed_at(a, t0);
        }
        // Three refused at once: the fourth credential is not looked at for 0.5 s.
        assert_eq!(f.admit_at(a, t0), Err(Duration::from_millis(500)));
        assert_eq!(f.admit_at(a, t0 + SEC / 4), Err(Duration::from_millis(250)));
        assert!(f.admit_at(a, t0 + SEC / 2).is_ok());
        // Another address is not affected.
        assert!(f.admit_at(b, t0).is_ok());
        // Refilled: the bucket is dropped by a sweep, as if never used.
        assert_eq!(f.tracked(), 1);
        {
            let mut t = f.lock();
            AuthFailures::sweep_table(&mut t, t0 + 2 * SEC);
        }
        assert_eq!(f.tracked(), 0);
        // Off: nothing is counted or refused.
        let off = AuthFailures::new(0, 3, 100);
        for _ in 0..100 {
            off.failed_at(a, t0);
        }
        assert!(off.admit_at(a, t0).is_ok());
        assert_eq!(off.tracked(), 0);
    }

    #[test]
    fn the_failure_table_is_bounded_and_the_rest_share_one_bucket() {
        let f = AuthFailures::new(1, 2, 2);
        let t0 = 10 * SEC;
        for a in ["192.0.2.1", "192.0.2.2"] {
            f.failed_at(v4(a), t0);
        }
        // Full: two more addresses share the spare bucket, and empty it together.
        f.failed_at(v4("198.51.100.1"), t0);
        f.failed_at(v4("198.51.100.2"), t0);
        assert_eq!(f.tracked(), 2);
        assert!(f.admit_at(v4("203.0.113.9"), t0).is_err());
        // Tracked addresses keep their own buckets (one cell left each).
        assert!(f.admit_at(v4("192.0.2.1"), t0).is_ok());
        // Once the tracked ones refilled, a sweep makes room for new addresses.
        let later = t0 + 5 * SEC;
        f.failed_at(v4("203.0.113.9"), later);
        let t = f.lock();
        assert!(t.tat.contains_key(&v4("203.0.113.9")), "{:?}", t.tat);
        assert_eq!(t.tat.len(), 1);
    }

    #[test]
    fn an_ipv6_host_is_counted_by_its_64() {
        let k = |s: &str| AddrKey::of(Some(s.parse().unwrap()));
        assert_eq!(k("2001:db8:1:2::1"), k("2001:db8:1:2:ffff::9"));
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
        assert_eq!(k("::ffff:192.0.2.7"), k("192.0.2.7"));
        assert_eq!(AddrKey::of(None), AddrKey::Unknown);
    }

    #[test]
    fn invalidations_are_limited_server_wide() {
        let a = Admission {
            callers: None,
            auth_failures: Arc::new(AuthFailures::new(0, 0, 1)),
            invalidations: None,
            retry_after_s: 1,
            body_timeout: Duration::from_secs(1),
        }
        .with_invalidate_limit(1, 2);
        assert!(a.invalidation().is_ok());
        assert!(a.invalidation().is_ok());
        let wait = a.invalidation().unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1));
        let off = a.with_invalidate_limit(0, 0);
        for _ in 0..100 {
            assert!(off.invalidation().is_ok());
        }
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

    #[tokio::test]
    async fn the_caller_table_stays_bounded_and_callers_past_it_share_one_bucket() {
        let a = Admission::with_max_callers(1, 2, 100, 1, Duration::from_secs(1));
        let key = |i: u32| format!("ip:10.0.{}.{}", i / 256, i % 256);
        for i in 0..1000 {
            let _ = a.check(&key(i));
            assert!(
                a.tracked_callers() <= 101,
                "{} callers tracked",
                a.tracked_callers()
            );
        }
        // The callers in the table keep their own bucket (one of two cells left) ...
        assert!(a.check(&key(5)).is_ok());
        // ... while the 900 after them took the shared one's long ago.
        assert!(a.check(&key(999)).is_err());
        assert!(a.check("ip:192.0.2.1").is_err());
        assert_eq!(a.tracked_callers(), 101);
    }
}
