//! The number of batch slots, chosen from measurements instead of a flag (issue 15).
//!
//! A fixed `--max-in-flight` has no value right for every deployment: 64 batches at once
//! starve a 2-core box with Redis on it (their round trips pass the Redis timeout and the
//! tier goes degraded), while 4 would leave a big server idle. [`InFlightLimit`] starts at
//! [`initial_limit`] and moves the limit with TCP Vegas' rule, as Netflix's
//! concurrency-limits and Envoy's adaptive concurrency filter do: the shortest time a slot
//! has been held is the no-load time; when slots are held much longer than that, work is
//! queueing for the CPU (or for Redis) inside the server, so the limit goes down; when they
//! are held about as long, it goes up, never past `--max-in-flight`. The rule itself is the
//! `tower-acc` crate's [`Vegas`] (including its periodic reset of the no-load time, so a
//! slower baseline is learnt); this file only measures and resizes the semaphore.
//!
//! A slot is held for the server's own work (reading the request, the cache tier, writing
//! the answer) and given back while the request waits for the origin
//! ([`crate::admission::HeldSlot::release`]): an origin's latency is not queueing here, and
//! counting it would shrink the limit whenever the origin is slow.
//!
//! Vegas takes the shortest hold it has seen as the no-load time, so one hold far shorter
//! than a batch's work (a request refused inside its slot, or one that gave its slot back
//! right after planning) made every later batch look queued, and the limit fell to 2 within
//! a few hundred batches and stayed there until the next relearning. Two things keep such
//! holds out of the no-load time:
//! - only holds that did the work are reported: [`crate::admission::HeldSlot::worked`],
//!   called once the request has read the cache tier; the others give their slot back
//!   without a sample;
//! - a reported hold shorter than the [`FLOOR_PERCENTILE`]th percentile of the last
//!   [`WINDOW`] reported holds counts as that percentile (a windowed low percentile as the
//!   no-load time, as Envoy's gradient controller measures its minRTT), and nothing moves
//!   the limit before [`MIN_SAMPLES`] holds were reported.

use std::cmp::Ordering;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tower_acc::{Algorithm, Vegas};

/// The no-load time is relearnt (reset to the next hold time) every `PROBE_MULTIPLIER x
/// limit` samples, about (0.5..1 jittered). The crate's 30 relearns it several times a second
/// under load, each time from a loaded sample, so under sustained overload the limit crept
/// up to 18 on 2 cores (accepted p99 7x the unloaded; docs/RELIABILITY.md); at 1,000 it is
/// relearnt every few thousand batches, and between relearnings it is the shortest hold.
const PROBE_MULTIPLIER: usize = 1_000;

/// Reported holds remembered for the floor (module docs).
pub const WINDOW: usize = 256;

/// A reported hold counts as at least this percentile of the last [`WINDOW`] ones.
pub const FLOOR_PERCENTILE: usize = 10;

/// Holds reported before the limit moves (the first ones only fill the window).
pub const MIN_SAMPLES: usize = 20;

/// The limit a server starts from: two batches per core (what measured best on a 2-core
/// box with Redis co-located, docs/RELIABILITY.md), at most `max`.
pub fn initial_limit(max: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (2 * cores).clamp(1, max.max(1))
}

/// Batch slots: a semaphore whose size follows the measured hold times, between 1 and
/// `max`.
pub struct InFlightLimit {
    slots: Arc<Semaphore>,
    state: Mutex<State>,
    /// The limit now (read without the lock, for metrics and tests).
    limit: AtomicUsize,
}

struct State {
    vegas: Vegas,
    /// Permits the semaphore was given, held or not.
    permits: usize,
    recent: Recent,
}

/// The last [`WINDOW`] reported holds, in nanoseconds (a ring).
struct Recent {
    ns: [u64; WINDOW],
    len: usize,
    next: usize,
}

impl Recent {
    fn new() -> Recent {
        Recent {
            ns: [0; WINDOW],
            len: 0,
            next: 0,
        }
    }

    fn push(&mut self, held: Duration) {
        self.ns[self.next] = u64::try_from(held.as_nanos()).unwrap_or(u64::MAX);
        self.next = (self.next + 1) % WINDOW;
        self.len = (self.len + 1).min(WINDOW);
    }

    /// The [`FLOOR_PERCENTILE`]th percentile of the holds held, once there are
    /// [`MIN_SAMPLES`].
    fn floor(&self) -> Option<Duration> {
        if self.len < MIN_SAMPLES {
            return None;
        }
        let mut ns = self.ns;
        let held = &mut ns[..self.len];
        let (_, &mut nth, _) = held.select_nth_unstable(self.len * FLOOR_PERCENTILE / 100);
        Some(Duration::from_nanos(nth))
    }
}

impl InFlightLimit {
    /// Starts at `initial` (at most `max`).
    pub fn adaptive(initial: usize, max: usize) -> InFlightLimit {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        let initial = initial.clamp(1, max);
        let vegas = Vegas::builder()
            .initial_limit(initial)
            .max_limit(max)
            .probe_multiplier(PROBE_MULTIPLIER)
            // Queue bounds proportional to the limit (Vegas' log10 bounds allow a queue of 3
            // to 6 whatever the limit, so at the few slots a small box needs the limit could
            // never go down: the estimated queue is at most the limit).
            .alpha(|limit| (limit / 5).max(1))
            .beta(|limit| (limit / 3).max(2))
            .threshold(|_| 0)
            .increase(|limit| limit + 1.0)
            .decrease(|limit| limit - 1.0)
            .build();
        Self::with(vegas, initial)
    }

    /// `n` slots that stay `n` (`--in-flight-limit fixed`): [`crate::admission::Shed`]
    /// never reports hold times to it.
    pub fn fixed(n: usize) -> InFlightLimit {
        Self::adaptive(n, n)
    }

    fn with(vegas: Vegas, permits: usize) -> InFlightLimit {
        InFlightLimit {
            slots: Arc::new(Semaphore::new(permits)),
            state: Mutex::new(State {
                vegas,
                permits,
                recent: Recent::new(),
            }),
            limit: AtomicUsize::new(permits),
        }
    }

    /// The semaphore holding the slots.
    pub fn slots(&self) -> &Arc<Semaphore> {
        &self.slots
    }

    /// The number of slots now.
    pub fn limit(&self) -> usize {
        self.limit.load(Relaxed)
    }

    /// One slot that did the server's work was held for `held`; `in_flight` slots (this one
    /// included) were held when it was given back. Moves the limit, with `held` raised to
    /// the recent holds' floor (module docs).
    pub fn observe(&self, held: Duration, in_flight: usize) {
        // A poisoned lock only means another thread panicked mid-update; the state is
        // still a valid limit.
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.recent.push(held);
        if let Some(floor) = s.recent.floor() {
            s.vegas.update(held.max(floor), in_flight, false, false);
        }
        self.resize(&mut s);
    }

    /// A slot was given back without a sample (it did not do the work): only takes back
    /// free permits above the limit.
    pub fn settle(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.resize(&mut s);
    }

    /// Gives the semaphore as many permits as the limit says, as far as they are free.
    fn resize(&self, s: &mut State) {
        let wanted = s.vegas.max_concurrency().max(1);
        match wanted.cmp(&s.permits) {
            Ordering::Greater => {
                self.slots.add_permits(wanted - s.permits);
                s.permits = wanted;
            }
            // Only free permits can be taken back; the rest are taken at later updates.
            Ordering::Less => s.permits -= self.slots.forget_permits(s.permits - wanted),
            Ordering::Equal => {}
        }
        self.limit.store(s.permits, Relaxed);
    }

    /// Holds reported and remembered for the floor (at most [`WINDOW`]).
    pub(crate) fn reported(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .recent
            .len
    }

    /// Slots held now.
    pub fn in_flight(&self) -> usize {
        let permits = self.state.lock().unwrap_or_else(|p| p.into_inner()).permits;
        permits.saturating_sub(self.slots.available_permits())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Holds `n` slots, reports each held for `held`, and gives them back.
    fn round(limit: &InFlightLimit, n: usize, held: Duration) {
        let permits: Vec<_> = (0..n)
            .filter_map(|_| limit.slots().clone().try_acquire_owned().ok())
            .collect();
        let in_flight = permits.len();
        drop(permits);
        for _ in 0..in_flight {
            limit.observe(held, in_flight);
        }
    }

    #[test]
    fn slots_held_as_long_as_the_no_load_time_raise_the_limit_up_to_the_ceiling() {
        let limit = InFlightLimit::adaptive(4, 40);
        round(&limit, 4, ms(2));
        for _ in 0..50 {
            let n = limit.limit();
            round(&limit, n, ms(2));
        }
        assert_eq!(limit.limit(), 40);
        assert_eq!(limit.slots().available_permits(), 40);
    }

    /// A window of holds at the no-load time, reported with one slot held (which moves no
    /// limit above 2, Vegas' light-load rule): the no-load time is learnt.
    fn unloaded(limit: &InFlightLimit, held: Duration) {
        for _ in 0..WINDOW {
            limit.observe(held, 1);
        }
    }

    #[test]
    fn slots_held_far_longer_than_the_no_load_time_lower_the_limit() {
        let limit = InFlightLimit::adaptive(30, 64);
        unloaded(&limit, ms(2));
        assert_eq!(limit.limit(), 30);
        for _ in 0..10 {
            limit.observe(ms(40), 30);
        }
        assert!(limit.limit() <= 20, "limit {}", limit.limit());
        assert_eq!(limit.slots().available_permits(), limit.limit());
        // Held as long as the no-load time again: back up.
        let low = limit.limit();
        limit.observe(ms(2), low);
        assert!(limit.limit() > low);
    }

    #[test]
    fn a_lower_limit_takes_back_held_slots_as_they_are_given_back() {
        let limit = InFlightLimit::adaptive(30, 64);
        unloaded(&limit, ms(2));
        let held: Vec<_> = (0..30)
            .map(|_| limit.slots().clone().try_acquire_owned().unwrap())
            .collect();
        // Every slot held: the lower limit cannot take any back yet.
        for _ in 0..5 {
            limit.observe(ms(40), 30);
        }
        assert_eq!(limit.in_flight(), 30);
        drop(held);
        for _ in 0..5 {
            limit.observe(ms(40), 30);
        }
        assert!(limit.limit() < 30, "limit {}", limit.limit());
        assert_eq!(limit.slots().available_permits(), limit.limit());
        assert_eq!(limit.in_flight(), 0);
    }

    /// The reviewer's case: 1 ms holds only take the limit to the ceiling; one 20 µs hold
    /// among them (a request answered inside its slot without the work) made Vegas take
    /// 20 µs as the no-load time and every later 1 ms hold a queue, and the limit fell to 2
    /// within 200 holds. Raised to the recent holds' floor, it moves nothing.
    #[test]
    fn one_hold_far_shorter_than_the_others_does_not_collapse_the_limit() {
        let limit = InFlightLimit::adaptive(4, 64);
        for _ in 0..200 {
            limit.observe(ms(1), limit.limit());
        }
        assert_eq!(limit.limit(), 64);
        limit.observe(Duration::from_micros(20), 64);
        for _ in 0..200 {
            limit.observe(ms(1), limit.limit());
        }
        assert_eq!(limit.limit(), 64);
        // Short holds that are the norm, not an outlier, are the no-load time: 1 ms holds
        // then mean a queue, and the limit goes down.
        for _ in 0..WINDOW {
            limit.observe(Duration::from_micros(20), 1);
        }
        for _ in 0..200 {
            limit.observe(ms(1), limit.limit());
        }
        assert!(limit.limit() <= 4, "limit {}", limit.limit());
    }

    #[test]
    fn nothing_moves_the_limit_before_the_first_holds_fill_the_window() {
        let limit = InFlightLimit::adaptive(30, 64);
        for _ in 0..MIN_SAMPLES - 1 {
            limit.observe(ms(40), 30);
        }
        assert_eq!(limit.limit(), 30);
        assert_eq!(limit.reported(), MIN_SAMPLES - 1);
    }

    #[test]
    fn the_initial_limit_is_two_per_core_within_the_ceiling() {
        assert_eq!(initial_limit(1), 1);
        assert!(initial_limit(1000) >= 2);
        assert!(initial_limit(1000) % 2 == 0);
    }
}
