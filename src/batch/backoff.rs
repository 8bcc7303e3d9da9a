//! Retry backoff per tile: exponential in the tile's failures in a row, with jitter.

use crate::tile::TileId;

/// Most tiles remembered as backing off; older entries are dropped beyond it.
const MAX_ENTRIES: usize = 4096;

/// One tile's backoff.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Entry {
    /// Attempt number of the tile's next request within its current round of retries.
    pub(super) attempt: u32,
    /// Consecutive failures of the tile's requests, across rounds (a round ends when the
    /// request gives up and a later round asks again): the backoff exponent, so a tile that
    /// keeps failing waits longer each time, up to `max_ms`, until a success.
    pub(super) failures: u32,
    /// The tile is not requested before this time.
    pub(super) not_before_ms: u64,
}

/// The tiles backing off, and the seeded jitter generator their delays are drawn from.
#[derive(Clone, Debug)]
pub(super) struct Backoff {
    base_ms: u64,
    max_ms: u64,
    rng: u64,
    /// `(packed tile, entry)` sorted by tile and found by binary search. A sorted `Vec`
    /// rather than a hash map (no hash table code of its own in the wasm): at most
    /// [`MAX_ENTRIES`] entries, and usually a handful (tiles whose requests failed), so
    /// inserting into the middle moves little. Measured on 2026-12-02: a `HashMap<u64,
    /// Entry>` here costs the browser wasm 0.37 KB gzipped more (68,750 → 69,118 bytes).
    entries: Vec<(u64, Entry)>,
}

impl Backoff {
    /// No tile backing off; delays start at `base_ms` and never exceed `max_ms`; the jitter
    /// is drawn from a generator seeded with `seed` (deterministic).
    pub(super) fn new(base_ms: u64, max_ms: u64, seed: u64) -> Backoff {
        Backoff {
            base_ms,
            max_ms,
            rng: seed | 1,
            entries: Vec::new(),
        }
    }

    /// Where `tile` is in `entries`, or where it would go.
    fn find(&self, tile: TileId) -> Result<usize, usize> {
        let key = tile.to_u64();
        self.entries.binary_search_by(|(k, _)| k.cmp(&key))
    }

    /// The tile's backoff, if it has one.
    pub(super) fn get(&self, tile: TileId) -> Option<&Entry> {
        let i = self.find(tile).ok()?;
        Some(&self.entries[i].1)
    }

    /// Whether the tile may be requested at `now_ms`.
    pub(super) fn ready(&self, tile: TileId, now_ms: u64) -> bool {
        self.get(tile).is_none_or(|b| b.not_before_ms <= now_ms)
    }

    /// A request for the tile succeeded: it backs off no more, and its streak is over.
    pub(super) fn forget(&mut self, tile: TileId) {
        if let Ok(i) = self.find(tile) {
            self.entries.remove(i);
        }
    }

    /// Holds `tiles` back for a backoff whose exponent is one more than the most failures in
    /// a row of any of them, and at least `at_least`; their next request counts as attempt
    /// `attempt`. The delay is at least `retry_after_ms`. Returns when they may go out
    /// again.
    pub(super) fn hold_back(
        &mut self,
        tiles: &[TileId],
        attempt: u32,
        at_least: u32,
        retry_after_ms: Option<u64>,
        now_ms: u64,
    ) -> u64 {
        let failures = tiles
            .iter()
            .filter_map(|&t| self.get(t))
            .map(|b| b.failures)
            .max()
            .unwrap_or(0)
            .saturating_add(1)
            .max(at_least);
        let at = now_ms.saturating_add(self.delay(failures, retry_after_ms));
        for &t in tiles {
            self.remember(t, attempt, failures, at);
        }
        at
    }

    fn remember(&mut self, t: TileId, attempt: u32, failures: u32, not_before_ms: u64) {
        let b = Entry {
            attempt,
            failures,
            not_before_ms,
        };
        if let Ok(i) = self.find(t) {
            self.entries[i].1 = b;
            return;
        }
        if self.entries.len() >= MAX_ENTRIES {
            // Forget the entries whose wait is over; if that is not enough, forget all.
            let horizon = not_before_ms.saturating_sub(self.max_ms);
            self.entries.retain(|(_, b)| b.not_before_ms > horizon);
            if self.entries.len() >= MAX_ENTRIES {
                self.entries.clear();
            }
        }
        if let Err(i) = self.find(t) {
            self.entries.insert(i, (t.to_u64(), b));
        }
    }

    /// Exponential backoff with equal jitter: a uniform delay in `[d/2, d]` where
    /// `d = min(max, base * 2^(attempt-1))`, at least any `Retry-After`.
    pub(super) fn delay(&mut self, attempt: u32, retry_after_ms: Option<u64>) -> u64 {
        let exp = self
            .base_ms
            .saturating_mul(1u64 << (attempt.saturating_sub(1)).min(20))
            .min(self.max_ms);
        let half = exp / 2;
        let jittered = half + self.next_rand() % (exp - half + 1);
        match retry_after_ms {
            Some(ra) => jittered.max(ra.min(3_600_000)),
            None => jittered,
        }
    }

    /// xorshift64*: small, deterministic, good enough for jitter.
    fn next_rand(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}
