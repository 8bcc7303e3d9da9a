//! Empty tile lists in the cache tier: a short TTL and a cap (issue 15).
//!
//! The origin answers every tile asked for, most of the world with an empty list. Stored
//! like any other list, junk requests (tiles over the ocean, random zoom-14 tiles) would
//! each leave a key in Redis for the full tile TTL: key growth driven by whoever sends
//! requests. So before a write-back ([`crate::invalidate::write_back`], the one way the
//! request path and warm-up write), [`EmptyTiles::limit`] gives each empty list at most
//! `--empty-tile-ttl-s` (default 60 s), and stores at most `--max-empty-tiles` (default
//! 10 000) of them alive at once from this instance; past the cap an empty list is not
//! written at all (the request that asked still gets its empty answer; the next one asks
//! the origin again, which costs it an empty answer).
//!
//! The cap counts what this instance wrote in the last TTL (a queue of expiries, at most
//! the cap long), so the keys for empty tiles in Redis stay below instances x cap however
//! many distinct tiles are asked for.

use std::collections::VecDeque;
use std::sync::Mutex;

use crate::tier::Fill;

/// The budget of empty tile lists one instance writes.
pub struct EmptyTiles {
    ttl_ms: u64,
    cap: usize,
    /// Expiries (Unix ms) of the empty lists written and still alive, oldest first.
    alive: Mutex<VecDeque<u64>>,
}

impl EmptyTiles {
    /// At most `cap` empty lists alive, each for at most `ttl_ms`.
    pub fn new(ttl_ms: u64, cap: usize) -> EmptyTiles {
        EmptyTiles {
            ttl_ms,
            cap,
            alive: Mutex::new(VecDeque::new()),
        }
    }

    /// Shortens the expiry of each empty list in `fill` to the negative TTL and drops those
    /// past the cap; lists with ids are untouched. Returns how many were dropped.
    pub fn limit(&self, fill: &mut Fill, now_ms: u64) -> usize {
        if !fill.tiles.iter().any(|(_, ids, _)| ids.is_empty()) {
            return 0;
        }
        let mut alive = self.alive.lock().unwrap_or_else(|p| p.into_inner());
        while alive.front().is_some_and(|&exp| exp <= now_ms) {
            alive.pop_front();
        }
        let before = fill.tiles.len();
        let short = now_ms.saturating_add(self.ttl_ms);
        fill.tiles.retain_mut(|(_, ids, exp)| {
            if !ids.is_empty() {
                return true;
            }
            if alive.len() >= self.cap {
                return false;
            }
            *exp = (*exp).min(short);
            alive.push_back(*exp);
            true
        });
        // Expiries pushed out of order (a shorter tile TTL) only make the count cautious.
        before - fill.tiles.len()
    }

    /// Empty lists counted alive now (at most the cap).
    pub fn alive(&self, now_ms: u64) -> usize {
        let alive = self.alive.lock().unwrap_or_else(|p| p.into_inner());
        alive.iter().filter(|&&e| e > now_ms).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tilewarm::tile::TileId;

    fn fill(empty: u32, full: u32, exp: u64) -> Fill {
        let mut f = Fill::default();
        for x in 0..empty {
            f.tiles
                .push((TileId::new(14, x, 1).unwrap(), Vec::new(), exp));
        }
        for x in 0..full {
            f.tiles
                .push((TileId::new(14, x, 2).unwrap(), vec![format!("id{x}")], exp));
        }
        f
    }

    #[test]
    fn empty_lists_get_the_short_ttl_and_stop_at_the_cap() {
        let e = EmptyTiles::new(60_000, 3);
        let mut f = fill(5, 2, 3_600_000);
        assert_eq!(e.limit(&mut f, 0), 2);
        let empty: Vec<u64> = f
            .tiles
            .iter()
            .filter(|t| t.1.is_empty())
            .map(|t| t.2)
            .collect();
        assert_eq!(empty, vec![60_000; 3]);
        assert!(f
            .tiles
            .iter()
            .filter(|t| !t.1.is_empty())
            .all(|t| t.2 == 3_600_000));
        // Full: another empty list is dropped until the first ones expire.
        let mut g = fill(1, 0, 3_600_000);
        assert_eq!(e.limit(&mut g, 59_999), 1);
        let mut g = fill(1, 0, 3_600_000);
        assert_eq!(e.limit(&mut g, 60_000), 0);
        assert_eq!(e.alive(60_000), 1);
    }
}
