//! Keys from a `--jwks` URL, fetched again as the key server rotates them.
//!
//! An identity provider rotates its signing keys: it publishes a new key in its JWKS, signs
//! new tokens with it, and later drops the old one. A server that read the set once would
//! refuse every token signed with the new key (401) until restarted, and accept tokens of a
//! dropped key for ever. The rules are the edge worker's (`remoteKeys` in
//! `js/edge-auth.js`, the same constants and flags), so a deployment behaves alike at both:
//!
//! - The set is used for `--jwks-max-age-s` (600 s); after that, the first request that
//!   needs it starts a fetch in the background and goes on with the old set (a server does
//!   not make requests wait for the key server while it has a set to use).
//! - A token whose `kid` the set lacks waits for a fetch (or joins the one in flight) if
//!   none started in the last `--jwks-cooldown-s` (30 s), then is checked against the new
//!   set; within the cool-down it is a 401 at once, so unknown `kid`s cannot make the
//!   server ask the key server once per request.
//! - A failed fetch keeps the last good set: it verifies for up to [`STALE_IF_ERROR`] past
//!   its max age, and the key server is asked again after [`RETRY_AFTER_FAILURE`]. Past
//!   that, a token checked against the set is answered 502 (`upstream_error`, with
//!   `Retry-After`), and the key server is asked again after [`FIRST_RETRY`] doubled per
//!   failure in a row, up to [`RETRY_AFTER_FAILURE`]. A token whose `kid` the set lacks
//!   while the last fetch failed is a 502 too: the key may be in the set that could not be
//!   fetched.
//!
//! [`Schedule`] decides when (sans-IO: times in milliseconds come in); [`RemoteKeys`] does
//! the fetching, at most one at a time, each in a task of its own.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::auth::{fetch_jwks, parse_jwks, Key};

/// How long past its max age the last key set fetched still verifies tokens while the key
/// server fails (stale-if-error): an outage of the key server does not turn every caller
/// away at once, and a key it dropped is not trusted for ever.
pub const STALE_IF_ERROR: Duration = Duration::from_secs(3600);

/// After a failed fetch, how long the key server is not asked again while the last set
/// still verifies (and the longest back-off when none does).
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// With no set to verify with, the first wait after a failed fetch, doubled per failure in
/// a row up to [`RETRY_AFTER_FAILURE`].
pub const FIRST_RETRY: Duration = Duration::from_millis(250);

/// Longest a fetch of the key set may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// When to ask the key server, given when the set was fetched, the last attempt and the
/// failures since. Times are milliseconds on one monotonic clock.
#[derive(Debug, Clone)]
pub struct Schedule {
    max_age_ms: u64,
    cooldown_ms: u64,
    /// When the set in use was fetched.
    set_at: u64,
    /// When the last fetch started.
    attempt_at: u64,
    /// Failed fetches in a row, and when the last one failed.
    failures: u32,
    failed_at: u64,
}

impl Schedule {
    /// The schedule of a set fetched at `now_ms` (at startup).
    pub fn new(max_age: Duration, cooldown: Duration, now_ms: u64) -> Schedule {
        Schedule {
            max_age_ms: ms(max_age),
            cooldown_ms: ms(cooldown),
            set_at: now_ms,
            attempt_at: now_ms,
            failures: 0,
            failed_at: 0,
        }
    }

    /// The set is within its max age.
    pub fn fresh(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.set_at) < self.max_age_ms
    }

    /// The set may verify tokens: within its max age plus [`STALE_IF_ERROR`].
    pub fn usable(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.set_at) < self.max_age_ms.saturating_add(ms(STALE_IF_ERROR))
    }

    /// The last fetch failed (and none succeeded since).
    pub fn failing(&self) -> bool {
        self.failures > 0
    }

    /// What the set in use is now, for `/healthz` and `/metrics`. A set within its max age
    /// is `fresh` though a fetch for a `kid` it lacks failed: it verifies every token it
    /// has the key of, and calling the server degraded for that would let one unknown `kid`
    /// take it out of a load balancer until the max age (the failure shows in
    /// `tilewarm_jwks_fetches_total{result="failed"}`).
    pub fn state(&self, now_ms: u64) -> KeysState {
        if !self.usable(now_ms) {
            KeysState::Unavailable
        } else if self.fresh(now_ms) {
            KeysState::Fresh
        } else if self.failing() {
            KeysState::Failing
        } else {
            KeysState::Stale
        }
    }

    /// How long ago the set in use was fetched, in ms.
    pub fn age_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.set_at)
    }

    /// How long after the last failure the key server is not asked again.
    fn failure_wait_ms(&self, now_ms: u64) -> u64 {
        if self.usable(now_ms) {
            return ms(RETRY_AFTER_FAILURE);
        }
        let doublings = self.failures.saturating_sub(1).min(20);
        ms(FIRST_RETRY)
            .saturating_mul(1 << doublings)
            .min(ms(RETRY_AFTER_FAILURE))
    }

    fn backing_off(&self, now_ms: u64) -> bool {
        self.failing() && now_ms.saturating_sub(self.failed_at) < self.failure_wait_ms(now_ms)
    }

    /// Whether a fetch may start now: never while backing off after a failure; else when
    /// the set is past its max age, or, for a token whose `kid` the set lacks
    /// (`kid_unknown`), when no fetch started within the cool-down.
    pub fn may_fetch(&self, now_ms: u64, kid_unknown: bool) -> bool {
        if self.backing_off(now_ms) {
            return false;
        }
        !self.fresh(now_ms)
            || (kid_unknown && now_ms.saturating_sub(self.attempt_at) >= self.cooldown_ms)
    }

    /// A fetch started at `now_ms`.
    pub fn started(&mut self, now_ms: u64) {
        self.attempt_at = now_ms;
    }

    /// The fetch brought a new set at `now_ms`.
    pub fn succeeded(&mut self, now_ms: u64) {
        self.set_at = now_ms;
        self.failures = 0;
    }

    /// The fetch failed at `now_ms`.
    pub fn failed(&mut self, now_ms: u64) {
        self.failures = self.failures.saturating_add(1);
        self.failed_at = now_ms;
    }

    /// Whole seconds (at least 1) until a fetch may be tried for a request refused because
    /// of the key server: after the failure back-off, and for a token whose `kid` the
    /// fresh set lacks, after the cool-down too.
    pub fn retry_after_s(&self, now_ms: u64, kid_unknown: bool) -> u64 {
        let mut at = now_ms;
        if self.failing() {
            at = at.max(self.failed_at.saturating_add(self.failure_wait_ms(now_ms)));
        }
        if kid_unknown && self.fresh(now_ms) {
            at = at.max(self.attempt_at.saturating_add(self.cooldown_ms));
        }
        (at - now_ms).div_ceil(1000).max(1)
    }
}

/// The set in use, as `/healthz` names it (`jwks`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeysState {
    /// Within its max age.
    Fresh,
    /// Past its max age, to be fetched again by the next request that needs it.
    Stale,
    /// Past its max age and the last fetch failed; the set verifies for up to
    /// [`STALE_IF_ERROR`] past its max age.
    Failing,
    /// Past that: tokens are answered 502 until a fetch succeeds.
    Unavailable,
}

impl KeysState {
    /// Its name in `/healthz`.
    pub fn name(self) -> &'static str {
        match self {
            KeysState::Fresh => "fresh",
            KeysState::Stale => "stale",
            KeysState::Failing => "failing",
            KeysState::Unavailable => "unavailable",
        }
    }

    /// The key server needs the operator's eye (`/healthz` says `degraded`).
    pub fn degraded(self) -> bool {
        matches!(self, KeysState::Failing | KeysState::Unavailable)
    }
}

/// The key set's health and its fetches since startup (`/healthz`, `/metrics`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeysHealth {
    pub state: KeysState,
    /// Whole seconds since the set in use was fetched.
    pub age_s: u64,
    /// Fetches that brought a set, and fetches that failed (the one at startup not counted).
    pub fetched: u64,
    pub failed: u64,
}

/// The state shared by requests: the set in use, its schedule, and the last failure.
struct State {
    keys: Arc<[Key]>,
    schedule: Schedule,
    failure: Option<String>,
    /// Fetches finished (a request that waits for a fetch waits for this to pass what it
    /// saw).
    fetches: u64,
    /// A fetch is running (its own task: a request that gives up waiting does not cancel it).
    in_flight: bool,
    /// Of `fetches`, those that failed.
    failed: u64,
}

/// The key set of a `--jwks` URL, fetched again by [`Schedule`]'s rules, at most one fetch
/// at a time.
pub struct RemoteKeys {
    url: String,
    epoch: Instant,
    state: Mutex<State>,
    /// [`State::fetches`], sent when a fetch ends.
    done: tokio::sync::watch::Sender<u64>,
}

/// What [`RemoteKeys::keys`] and [`RemoteKeys::refetch`] give a request.
pub struct Snapshot {
    /// The set to verify with; `None` when it is past [`STALE_IF_ERROR`].
    pub keys: Option<Arc<[Key]>>,
    /// The last fetch failed, with its message.
    pub failure: Option<String>,
    /// Fetches finished when this was taken.
    fetches: u64,
}

impl RemoteKeys {
    /// The keys of `url`, whose set `keys` was just fetched (at startup).
    pub fn new(url: String, keys: Vec<Key>, max_age: Duration, cooldown: Duration) -> RemoteKeys {
        RemoteKeys {
            url,
            epoch: Instant::now(),
            state: Mutex::new(State {
                keys: keys.into(),
                schedule: Schedule::new(max_age, cooldown, 0),
                failure: None,
                fetches: 0,
                in_flight: false,
                failed: 0,
            }),
            done: tokio::sync::watch::Sender::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        ms(self.epoch.elapsed())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn snapshot(state: &State, now_ms: u64) -> Snapshot {
        Snapshot {
            keys: state
                .schedule
                .usable(now_ms)
                .then(|| Arc::clone(&state.keys)),
            failure: state.failure.clone(),
            fetches: state.fetches,
        }
    }

    /// The set to verify with now. A set past its max age is fetched again in the
    /// background (when the schedule allows and no fetch runs), and used meanwhile.
    pub fn keys(self: &Arc<Self>) -> Snapshot {
        let now = self.now_ms();
        let mut state = self.lock();
        let snapshot = Self::snapshot(&state, now);
        // Without a kid to look for, the schedule allows a fetch only for a set past its
        // max age. One without a usable set is fetched by the request (`refetch`).
        if snapshot.keys.is_some() && !state.in_flight && state.schedule.may_fetch(now, false) {
            self.start(&mut state, now);
        }
        snapshot
    }

    /// For a token whose `kid` `seen`'s set lacks (`kid_unknown`), or when `seen` had no
    /// set to verify with: the set after a fetch that ended since `seen` was taken, waiting
    /// for the one running or starting one if the schedule allows; `None` when none ended,
    /// none runs and the schedule allows none now.
    pub async fn refetch(self: &Arc<Self>, seen: &Snapshot, kid_unknown: bool) -> Option<Snapshot> {
        let mut done = self.done.subscribe();
        {
            let mut state = self.lock();
            let now = self.now_ms();
            if state.fetches != seen.fetches {
                return Some(Self::snapshot(&state, now));
            }
            if !state.in_flight {
                if !state.schedule.may_fetch(now, kid_unknown) {
                    return None;
                }
                self.start(&mut state, now);
            }
        }
        // The fetch ends within FETCH_TIMEOUT; the margin only guards against a task that
        // never ran (the runtime shutting down).
        let wait = FETCH_TIMEOUT + Duration::from_secs(1);
        let _ = tokio::time::timeout(wait, done.wait_for(|&n| n != seen.fetches)).await;
        let state = self.lock();
        Some(Self::snapshot(&state, self.now_ms()))
    }

    /// The set's state and the fetches so far.
    pub fn health(&self) -> KeysHealth {
        let now = self.now_ms();
        let state = self.lock();
        KeysHealth {
            state: state.schedule.state(now),
            age_s: state.schedule.age_ms(now) / 1000,
            fetched: state.fetches - state.failed,
            failed: state.failed,
        }
    }

    /// Whole seconds until asking again may help a request refused because of the key
    /// server (its `Retry-After`).
    pub fn retry_after_s(&self, kid_unknown: bool) -> u64 {
        self.lock()
            .schedule
            .retry_after_s(self.now_ms(), kid_unknown)
    }

    /// Starts a fetch in a task of its own (so a request that stops waiting for it does not
    /// cancel it halfway).
    fn start(self: &Arc<Self>, state: &mut State, now_ms: u64) {
        state.in_flight = true;
        state.schedule.started(now_ms);
        let me = Arc::clone(self);
        tokio::spawn(async move { me.fetch().await });
    }

    async fn fetch(&self) {
        let outcome = match tokio::time::timeout(FETCH_TIMEOUT, fetch_jwks(&self.url)).await {
            Err(_) => Err(format!(
                "--jwks {}: no answer within {} s",
                self.url,
                FETCH_TIMEOUT.as_secs()
            )),
            Ok(text) => text.and_then(|t| parse_jwks(&t)),
        };
        let mut state = self.lock();
        let now = self.now_ms();
        match outcome {
            Ok(keys) => {
                let kids = |k: &[Key]| k.iter().filter_map(|k| k.kid.clone()).collect::<Vec<_>>();
                let (before, after) = (kids(&state.keys), kids(&keys));
                if before != after {
                    tracing::info!(url = %self.url, ?before, ?after, "--jwks: the key set changed");
                }
                state.keys = keys.into();
                state.schedule.succeeded(now);
                state.failure = None;
            }
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    usable = state.schedule.usable(now),
                    "--jwks: fetching the key set failed; the last set verifies while it may"
                );
                state.schedule.failed(now);
                state.failure = Some(e);
                state.failed += 1;
            }
        }
        state.fetches += 1;
        state.in_flight = false;
        let n = state.fetches;
        drop(state);
        self.done.send_replace(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX_AGE: Duration = Duration::from_secs(600);
    const COOLDOWN: Duration = Duration::from_secs(30);

    fn at_start() -> Schedule {
        Schedule::new(MAX_AGE, COOLDOWN, 1_000)
    }

    #[test]
    fn a_fresh_set_is_fetched_again_for_an_unknown_kid_once_per_cooldown() {
        let mut s = at_start();
        assert!(s.fresh(1_000) && !s.may_fetch(1_000, false));
        assert!(
            !s.may_fetch(30_999, true),
            "within the cool-down of the startup fetch"
        );
        assert_eq!(s.retry_after_s(29_999, true), 2);
        assert!(s.may_fetch(31_000, true));
        s.started(31_000);
        s.succeeded(31_200);
        assert!(
            !s.may_fetch(60_999, true),
            "the cool-down counts from the last attempt"
        );
        assert!(s.may_fetch(61_000, true));
        assert!(
            !s.may_fetch(61_000, false),
            "a fresh set is not fetched for a known kid"
        );
    }

    #[test]
    fn a_set_past_its_max_age_is_fetched_again_and_verifies_for_an_hour_while_failing() {
        let mut s = at_start();
        let old = 1_000 + 600_000;
        assert!(!s.fresh(old) && s.usable(old) && s.may_fetch(old, false));
        s.started(old);
        s.failed(old + 5);
        assert!(
            s.failing() && !s.may_fetch(old + 29_000, false),
            "backing off"
        );
        assert_eq!(s.retry_after_s(old + 5, false), 30);
        assert!(s.may_fetch(old + 5 + 30_000, false));
        let gone = 1_000 + 600_000 + 3_600_000;
        assert!(s.usable(gone - 1) && !s.usable(gone));
        s.succeeded(gone + 10);
        assert!(s.fresh(gone + 10) && !s.failing());
    }

    #[test]
    fn with_no_usable_set_failures_back_off_from_250_ms_doubling_to_30_s() {
        let mut s = at_start();
        let gone = 1_000 + 600_000 + 3_600_000;
        let mut now = gone;
        let mut waits = Vec::new();
        for _ in 0..10 {
            s.started(now);
            s.failed(now);
            let mut t = now;
            while !s.may_fetch(t, false) {
                t += 1;
            }
            waits.push(t - now);
            now = t;
        }
        assert_eq!(
            waits,
            [250, 500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000]
        );
        assert_eq!(s.retry_after_s(now, false), 1, "the back-off is over");
        s.started(now);
        s.failed(now);
        assert_eq!(s.retry_after_s(now, false), 30);
        assert_eq!(s.retry_after_s(now + 29_500, false), 1);
    }

    #[test]
    fn a_failed_fetch_for_an_unknown_kid_leaves_a_fresh_set_fresh() {
        let mut s = at_start();
        s.started(31_000);
        s.failed(31_100);
        assert!(s.failing());
        assert_eq!(
            s.state(31_100),
            KeysState::Fresh,
            "the set verifies as before"
        );
        let old = 1_000 + 600_000;
        assert_eq!(
            s.state(old),
            KeysState::Failing,
            "past its max age it is failing"
        );
    }

    #[test]
    fn the_state_goes_fresh_stale_failing_unavailable_and_back_to_fresh() {
        let mut s = at_start();
        let state = |s: &Schedule, now| s.state(now).name();
        assert_eq!(state(&s, 1_000), "fresh");
        let old = 1_000 + 600_000;
        assert_eq!(state(&s, old), "stale");
        assert_eq!(s.age_ms(old), 600_000);
        s.started(old);
        s.failed(old);
        assert_eq!(state(&s, old), "failing");
        assert!(s.state(old).degraded() && !KeysState::Stale.degraded());
        assert_eq!(state(&s, old + 3_600_000), "unavailable");
        s.succeeded(old + 3_600_001);
        assert_eq!(state(&s, old + 3_600_001), "fresh");
        assert_eq!(s.age_ms(old + 3_600_001), 0);
    }
}
