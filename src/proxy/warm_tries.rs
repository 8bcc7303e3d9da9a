//! Warming's retry delays: a data tile warmed and not fresh (or held) since is not warmed
//! again before its time. Its answer may still be out, or it failed, or the cache could
//! not keep it (an empty list past a cap, a view larger than the cache); without the delay
//! every request planned the same warming again, one origin request per request. The
//! delay is [`WARM_RETRY_MS`], doubled per try up to [`WARM_RETRY_MAX_MS`]; a tile is
//! forgotten ([`WarmTries::forget`]) once it is seen fresh or written. A tile its origin
//! left out as too large is held for longer ([`WarmTries::held_until`]); holds are kept
//! apart from the tries (at most [`MAX_WARM_HOLDS`]), so no burst of ordinary failures
//! pushes one out and the tile is warmed (paid for) again before its time. A tile in a
//! warming whose answer was too large to read is warmed next in smaller groups
//! ([`WarmTries::split`], [`WarmTries::group`]). Used by the edge proxy ([`super::Proxy`],
//! keyed by tier and tile) and the server's warm-up (by tile).

use std::hash::Hash;
use std::num::NonZeroUsize;

use lru::LruCache;

/// The first wait before a tile warmed and not fresh since is warmed again (the edge's
/// `warmTimeoutMs` is 5 s: its answer may still be out).
pub const WARM_RETRY_MS: u64 = 5_000;

/// The longest wait between two warmings of a tile that does not become fresh.
pub const WARM_RETRY_MAX_MS: u64 = 60_000;

/// Most tiles whose warming tries are remembered (least recently used go first).
pub const MAX_WARM_TRIES: usize = 4096;

/// Most tiles held ([`WarmTries::held_until`]) at once, apart from [`MAX_WARM_TRIES`]: only
/// another hold pushes one out (the one held longest ago first).
pub const MAX_WARM_HOLDS: usize = 4096;

/// One key's tries since it was last fresh.
#[derive(Clone, Copy)]
struct Try {
    /// How many.
    count: u32,
    /// When the next may start (ms).
    at: u64,
    /// Most tiles in one warming with it ([`WarmTries::group`]).
    group: usize,
}

/// A key held ([`WarmTries::held_until`]).
#[derive(Clone, Copy)]
struct Hold {
    /// Not due before (ms).
    until: u64,
    /// Found too large alone ([`WarmTries::split`]): warmed alone, its hold over too, until
    /// it is forgotten. Kept here, not with the tries, so that other keys' tries do not
    /// push it out and put it back in a full warming, too large again.
    alone: bool,
}

/// The warming tries of keys (tiles, or tiers and tiles) since each was last fresh: how
/// many, and when the next may start; at most [`MAX_WARM_TRIES`]. Apart from them, the
/// keys held until a time ([`WarmTries::held_until`]), at most [`MAX_WARM_HOLDS`].
pub struct WarmTries<K: Hash + Eq> {
    tries: LruCache<K, Try>,
    holds: LruCache<K, Hold>,
}

impl<K: Hash + Eq> Default for WarmTries<K> {
    fn default() -> Self {
        let cap = |n| NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN);
        WarmTries {
            tries: LruCache::new(cap(MAX_WARM_TRIES)),
            holds: LruCache::new(cap(MAX_WARM_HOLDS)),
        }
    }
}

impl<K: Hash + Eq> WarmTries<K> {
    /// Whether `key` may be warmed at `now_ms` (never tried, or its wait is over, and not
    /// held).
    pub fn due(&self, key: &K, now_ms: u64) -> bool {
        self.not_before(key).is_none_or(|at| at <= now_ms)
    }

    /// `key` is being warmed at `now_ms`: the next try waits twice as long as the last.
    /// A hold that is over is dropped (but not that the key is warmed alone).
    pub fn tried(&mut self, key: K, now_ms: u64) {
        if self
            .holds
            .peek(&key)
            .is_some_and(|h| h.until <= now_ms && !h.alone)
        {
            self.holds.pop(&key);
        }
        let last = self.tries.peek(&key).copied();
        let count = last.map_or(0, |t| t.count) + 1;
        let delay = WARM_RETRY_MS
            .saturating_mul(1 << (count - 1).min(16))
            .min(WARM_RETRY_MAX_MS);
        let group = last.map_or(usize::MAX, |t| t.group);
        let at = now_ms.saturating_add(delay);
        self.tries.put(key, Try { count, at, group });
    }

    /// `key` was left out of a warming's answer for want of room (`response_full`), which
    /// answered others: it is due again at `now_ms`, not after its delay (it did not fail,
    /// it only did not fit). Its tries and group are kept; a hold is not shortened.
    pub fn again(&mut self, key: &K, now_ms: u64) {
        if let Some(t) = self.tries.peek_mut(key) {
            t.at = t.at.min(now_ms);
        }
    }

    /// `key` cannot be cached until `until_ms` (its origin left it out as too large): not
    /// due before then (nor before a later time already set); a try after it waits the
    /// first delay. Only another hold pushes it out, not other keys' tries.
    pub fn held_until(&mut self, key: K, until_ms: u64) {
        let tried = self.tries.pop(&key).map_or(0, |t| t.at);
        let (held, alone) = self
            .holds
            .peek(&key)
            .map_or((0, false), |h| (h.until, h.alone));
        let until = until_ms.max(tried).max(held);
        self.holds.put(key, Hold { until, alone });
    }

    /// `key` was among `tiles` tiles of a warming whose answer was too large to read (which
    /// of them made it so is not known): it is warmed next in a warming of at most half as
    /// many ([`WarmTries::group`]), as soon as `now_ms`, unless held. Alone (`tiles` 1), it
    /// is the one: held until `hold_until_ms`, and warmed alone after that (until it is
    /// forgotten), so it never makes a larger warming too large again.
    pub fn split(&mut self, key: K, tiles: usize, now_ms: u64, hold_until_ms: u64)
    where
        K: Clone,
    {
        if tiles <= 1 {
            self.held_until(key.clone(), hold_until_ms);
            if let Some(h) = self.holds.peek_mut(&key) {
                h.alone = true;
            }
        }
        let group = self.group(&key).min(tiles / 2).max(1);
        self.tries.put(
            key,
            Try {
                count: 0,
                at: now_ms,
                group,
            },
        );
    }

    /// Most tiles a warming of `key` may hold ([`WarmTries::split`]; any number unless it
    /// was split).
    pub fn group(&self, key: &K) -> usize {
        if self.holds.peek(key).is_some_and(|h| h.alone) {
            return 1;
        }
        self.tries.peek(key).map_or(usize::MAX, |t| t.group)
    }

    /// `key` is fresh (or was written): its next warming, when it expires, waits for
    /// nothing, in a group of any size.
    pub fn forget(&mut self, key: &K) {
        self.tries.pop(key);
        self.holds.pop(key);
    }

    /// Ends the holds of the keys `reached` names (a change may have made them smaller):
    /// due again at once. One found too large alone is still warmed alone
    /// ([`WarmTries::split`]), so it cannot make a larger warming too large again.
    pub fn release(&mut self, mut reached: impl FnMut(&K) -> bool) {
        for (key, hold) in self.holds.iter_mut() {
            if reached(key) {
                hold.until = 0;
            }
        }
    }

    /// When `key` may be warmed again, if it was tried or held.
    pub fn not_before(&self, key: &K) -> Option<u64> {
        let tried = self.tries.peek(key).map(|t| t.at);
        let held = self.holds.peek(key).map(|h| h.until);
        tried.max(held)
    }

    /// How many keys are remembered (tried, and held).
    pub fn len(&self) -> usize {
        self.tries.len() + self.holds.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.tries.is_empty() && self.holds.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tile_tried_again_waits_longer_each_time_up_to_the_cap() {
        let mut tries = WarmTries::default();
        assert!(tries.due(&1u32, 0));
        let mut now = 0;
        let mut waits = Vec::new();
        for _ in 0..7 {
            tries.tried(1u32, now);
            assert!(!tries.due(&1, now + 1));
            let at = tries.not_before(&1).unwrap();
            waits.push(at - now);
            now = at;
            assert!(tries.due(&1, now));
        }
        assert_eq!(
            waits,
            [5_000, 10_000, 20_000, 40_000, 60_000, 60_000, 60_000]
        );
        tries.forget(&1);
        tries.tried(1, now);
        assert_eq!(tries.not_before(&1), Some(now + WARM_RETRY_MS), "forgotten");
    }

    #[test]
    fn a_held_tile_waits_its_time_then_the_first_delay() {
        let mut tries = WarmTries::default();
        tries.tried(1u32, 0);
        tries.tried(1, 5_000);
        tries.held_until(1, 300_000);
        assert!(!tries.due(&1, 299_999));
        assert!(tries.due(&1, 300_000));
        tries.held_until(1, 100_000);
        assert_eq!(tries.not_before(&1), Some(300_000), "not shortened");
        tries.tried(1, 300_000);
        assert_eq!(tries.not_before(&1), Some(300_000 + WARM_RETRY_MS));
    }

    /// A hold used to share the tries' room: a burst of [`MAX_WARM_TRIES`] ordinary tries
    /// (other tiles failing) pushed it out, and the too-large tile was due (warmed, and
    /// paid for) again at once. Holds are kept apart now; only other holds push one out.
    #[test]
    fn a_hold_outlasts_a_burst_of_other_tiles_tries() {
        let mut tries = WarmTries::default();
        tries.held_until(u32::MAX, 300_000);
        for x in 0..(2 * MAX_WARM_TRIES as u32) {
            tries.tried(x, 1_000);
        }
        assert!(!tries.due(&u32::MAX, 299_999), "held still");
        assert!(tries.due(&u32::MAX, 300_000));
        for x in 0..(MAX_WARM_HOLDS as u32) {
            tries.held_until(x, 300_000);
        }
        assert!(
            tries.due(&u32::MAX, 1_000),
            "pushed out by newer holds only"
        );
        assert!(tries.len() <= MAX_WARM_TRIES + MAX_WARM_HOLDS);
    }

    #[test]
    fn a_tile_in_an_answer_too_large_is_due_at_once_in_half_the_group_until_alone() {
        let mut tries = WarmTries::default();
        assert_eq!(tries.group(&1u32), usize::MAX);
        tries.tried(1u32, 0);
        tries.split(1, 16, 10, 300_000);
        assert!(tries.due(&1, 10));
        assert_eq!(tries.group(&1), 8);
        tries.tried(1, 10);
        assert_eq!(tries.group(&1), 8, "kept by a try");
        assert_eq!(
            tries.not_before(&1),
            Some(10 + WARM_RETRY_MS),
            "the first delay"
        );
        // A split of a larger group never widens it.
        tries.split(1, 16, 20, 300_000);
        assert_eq!(tries.group(&1), 8);
        tries.split(1, 3, 20, 300_000);
        assert_eq!(tries.group(&1), 1);
        // Alone, it is the tile that is too large: held, then warmed alone.
        tries.split(1, 1, 30, 300_000);
        assert!(!tries.due(&1, 299_999));
        assert!(tries.due(&1, 300_000));
        assert_eq!(tries.group(&1), 1, "after its hold, alone still");
        tries.tried(1, 300_000);
        assert_eq!(tries.not_before(&1), Some(300_000 + WARM_RETRY_MS));
        tries.split(2u32, 4, 0, 300_000);
        tries.forget(&2);
        assert_eq!(tries.group(&2), usize::MAX, "fresh: forgotten");
    }

    /// A tile found too large alone is warmed alone after its hold (c7cafbc), but that was
    /// kept with the ordinary tries: a burst of [`MAX_WARM_TRIES`] other tiles' tries pushed
    /// it out, the tile went back into a full warming, too large again, and was split down
    /// once more (five oversized answers from 16 tiles, not one). It is kept with the hold.
    #[test]
    fn a_tile_too_large_alone_stays_alone_through_a_burst_of_other_tiles_tries() {
        let mut tries = WarmTries::default();
        let dense = u32::MAX;
        tries.split(dense, 1, 0, 300_000);
        for x in 0..(2 * MAX_WARM_TRIES as u32) {
            tries.tried(x, 1_000);
        }
        assert!(!tries.due(&dense, 299_999), "held still");
        assert!(tries.due(&dense, 300_000));
        assert_eq!(tries.group(&dense), 1, "alone after the burst");
        tries.tried(dense, 300_000);
        assert_eq!(tries.not_before(&dense), Some(300_000 + WARM_RETRY_MS));
        for x in 0..(2 * MAX_WARM_TRIES as u32) {
            tries.tried(x, 301_000);
        }
        assert_eq!(
            tries.group(&dense),
            1,
            "alone after its try and another burst"
        );
        tries.forget(&dense);
        assert_eq!(tries.group(&dense), usize::MAX, "fresh: in any group again");
    }

    #[test]
    fn the_tries_kept_stay_bounded() {
        let mut tries = WarmTries::default();
        for x in 0..(3 * MAX_WARM_TRIES as u32) {
            tries.tried(x, 0);
            assert!(tries.len() <= MAX_WARM_TRIES);
        }
    }
}
