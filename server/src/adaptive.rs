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
            state: Mutex::new(State { vegas, permits }),
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

    /// One slot was held for `held`; `in_flight` slots (this one included) were held when it
    /// was given back. Moves the limit.
    pub fn observe(&self, held: Duration, in_flight: usize) {
        // A poisoned lock only means another thread panicked mid-update; the state is
        // still a valid limit.
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.vegas.update(held, in_flight, false, false);
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

    #[test]
    fn slots_held_far_longer_than_the_no_load_time_lower_the_limit() {
        let limit = InFlightLimit::adaptive(30, 64);
        limit.observe(ms(2), 30);
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
        limit.observe(ms(2), 30);
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

    #[test]
    fn the_initial_limit_is_two_per_core_within_the_ceiling() {
        assert_eq!(initial_limit(1), 1);
        assert!(initial_limit(1000) >= 2);
        assert!(initial_limit(1000) % 2 == 0);
    }
}
