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
//!
//! # Empty to whom
//! A list counts as empty when it names no item the lowest tier (`public`) may see, not
//! only when it names none at all. The tier holds the top tier's lists and every caller
//! reads them, and a list's `ttl` (and `GET /v1/tiles`' `Cache-Control`) shows how long
//! it lives there: were only lists with no ids shortened, a tile whose items are all above
//! `public` would answer a `public` caller with the full tile TTL where a tile with nothing
//! answers the short one, telling it that items it may not see are there. So such a tile is
//! stored like an empty one, for every tier (its `agent` callers ask the origin for it
//! again after `--empty-tile-ttl-s`, and past the cap on each request).

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use tilewarm::access::Access;

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
    /// past the cap; lists naming an item of `fill` that `public` may see are untouched.
    /// Empty means naming no such item (see the module docs: a list of items above
    /// `public` only must not live longer than one of nothing). Returns how many were
    /// dropped.
    pub fn limit(&self, fill: &mut Fill, now_ms: u64) -> usize {
        let public: HashSet<&str> = fill
            .items
            .iter()
            .filter(|it| Access::Public.can_see(it.access()))
            .map(|it| it.id())
            .collect();
        let shown = |ids: &[String]| ids.iter().any(|id| public.contains(id.as_str()));
        if fill.tiles.iter().all(|(_, ids, _)| shown(ids)) {
            return 0;
        }
        let mut alive = self.alive.lock().unwrap_or_else(|p| p.into_inner());
        while alive.front().is_some_and(|&exp| exp <= now_ms) {
            alive.pop_front();
        }
        let before = fill.tiles.len();
        let short = now_ms.saturating_add(self.ttl_ms);
        fill.tiles.retain_mut(|(_, ids, exp)| {
            if shown(ids) {
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
    use crate::tier::StoredItem;
    use std::sync::Arc;
    use tilewarm::tile::TileId;

    fn item(id: &str, access: Access) -> Arc<StoredItem> {
        let data = serde_json::value::RawValue::from_string("null".into()).unwrap();
        Arc::new(StoredItem::new(id, 0.0, 0.0, "c", access, 1, &data))
    }

    /// `empty` lists with no ids, then `full` lists each naming one public item of the fill.
    fn fill(empty: u32, full: u32, exp: u64) -> Fill {
        let mut f = Fill::default();
        for x in 0..empty {
            f.tiles
                .push((TileId::new(14, x, 1).unwrap(), Vec::new(), exp));
        }
        for x in 0..full {
            let id = format!("id{x}");
            f.items.push(item(&id, Access::Public));
            f.tiles
                .push((TileId::new(14, x, 2).unwrap(), vec![id], exp));
        }
        f
    }

    /// A list whose items are all above `public` (or not in the fill) is an empty one to a
    /// `public` caller, so it is stored as one: the short TTL, within the cap. One naming a
    /// single public item among hidden ones keeps the tile TTL.
    #[test]
    fn a_list_of_items_above_public_is_empty() {
        let e = EmptyTiles::new(60_000, 2);
        let mut f = Fill::default();
        for (x, a) in [Access::Registered, Access::Verified, Access::Agent]
            .into_iter()
            .enumerate()
        {
            let id = format!("hidden{x}");
            f.items.push(item(&id, a));
            f.tiles
                .push((TileId::new(14, x as u32, 3).unwrap(), vec![id], 3_600_000));
        }
        f.items.push(item("seen", Access::Public));
        let mixed = vec!["hidden2".to_string(), "seen".to_string()];
        f.tiles
            .push((TileId::new(14, 9, 3).unwrap(), mixed.clone(), 3_600_000));
        // Named, but its item is not in the fill: not known to be public.
        f.tiles.push((
            TileId::new(14, 10, 3).unwrap(),
            vec!["elsewhere".into()],
            3_600_000,
        ));
        // Cap 2: of the four lists empty to `public`, two are kept with the short TTL.
        assert_eq!(e.limit(&mut f, 0), 2);
        let exps: Vec<(Vec<String>, u64)> = f.tiles.iter().map(|t| (t.1.clone(), t.2)).collect();
        assert_eq!(
            exps,
            vec![
                (vec!["hidden0".to_string()], 60_000),
                (vec!["hidden1".to_string()], 60_000),
                (mixed, 3_600_000),
            ]
        );
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
