//! Warming's retry delays: a data tile warmed and not fresh (or held) since is not warmed
//! again before its time. Its answer may still be out, or it failed, or the cache could
//! not keep it (an empty list past a cap, a view larger than the cache); without the delay
//! every request planned the same warming again, one origin request per request. The
//! delay is [`WARM_RETRY_MS`], doubled per try up to [`WARM_RETRY_MAX_MS`]; a tile is
//! forgotten ([`WarmTries::forget`]) once it is seen fresh or written. A tile its origin
//! left out as too large is held for longer ([`WarmTries::held_until`]). Used by the edge
//! proxy ([`super::Proxy`], keyed by tier and tile) and the server's warm-up (by tile).

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

/// The warming tries of keys (tiles, or tiers and tiles) since each was last fresh: how
/// many, and when the next may start; at most [`MAX_WARM_TRIES`].
pub struct WarmTries<K: Hash + Eq> {
    tries: LruCache<K, (u32, u64)>,
}

impl<K: Hash + Eq> Default for WarmTries<K> {
    fn default() -> Self {
        WarmTries {
            tries: LruCache::new(NonZeroUsize::new(MAX_WARM_TRIES).unwrap_or(NonZeroUsize::MIN)),
        }
    }
}

impl<K: Hash + Eq> WarmTries<K> {
    /// Whether `key` may be warmed at `now_ms` (never tried, or its wait is over).
    pub fn due(&self, key: &K, now_ms: u64) -> bool {
        self.tries.peek(key).is_none_or(|&(_, at)| at <= now_ms)
    }

    /// `key` is being warmed at `now_ms`: the next try waits twice as long as the last.
    pub fn tried(&mut self, key: K, now_ms: u64) {
        let tries = self.tries.peek(&key).map_or(0, |&(n, _)| n) + 1;
        let delay = WARM_RETRY_MS
            .saturating_mul(1 << (tries - 1).min(16))
            .min(WARM_RETRY_MAX_MS);
        self.tries.put(key, (tries, now_ms.saturating_add(delay)));
    }

    /// `key` cannot be cached until `until_ms` (its origin left it out as too large): not
    /// due before then (nor before a later time already set); a try after it waits the
    /// first delay.
    pub fn held_until(&mut self, key: K, until_ms: u64) {
        let at = self
            .tries
            .peek(&key)
            .map_or(until_ms, |&(_, at)| at.max(until_ms));
        self.tries.put(key, (0, at));
    }

    /// `key` is fresh (or was written): its next warming, when it expires, waits for nothing.
    pub fn forget(&mut self, key: &K) {
        self.tries.pop(key);
    }

    /// When `key` may be warmed again, if it was tried.
    pub fn not_before(&self, key: &K) -> Option<u64> {
        self.tries.peek(key).map(|&(_, at)| at)
    }

    /// How many keys are remembered.
    pub fn len(&self) -> usize {
        self.tries.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.tries.is_empty()
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

    #[test]
    fn the_tries_kept_stay_bounded() {
        let mut tries = WarmTries::default();
        for x in 0..(3 * MAX_WARM_TRIES as u32) {
            tries.tried(x, 0);
            assert!(tries.len() <= MAX_WARM_TRIES);
        }
    }
}
