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
//!
//! # Empty blocks: the cap counts keys, not data tiles
//! A zoomed-out request is split onto up to `--max-data-tiles` (1024) data tiles
//! (`--split-levels` 3: a zoom-11 tile is 64 of them), and over sparse land most come back
//! empty: ten such requests over distinct areas would fill a cap counted in data tiles, and
//! from then on every zoomed-out request over sparse land would ask the origin again for
//! its empty tiles (a paid call, for an upstream origin). So for the Redis tier, before the
//! cap is applied, the empty lists of a write-back are gathered into *empty blocks*: each
//! largest aligned tile 1 to `--split-levels` levels coarser than the data zoom (at most
//! [`MAX_BLOCK_LEVELS`]) whose every data tile the write-back lists empty to `public` is
//! stored as ONE key (`<prefix>v4:e:<z/x/y>`, `crate::stored::Keys::block`), with the short
//! TTL, and counts once against the cap. A zoom-11 tile with nothing is one key, not 64; one
//! with a single item in a corner is 9 empty keys (3 zoom-12 blocks, 3 zoom-13 blocks and
//! the lists of the 3 data tiles beside the item's) and the list of the item's tile. The
//! tier answers a data tile whose own key is absent from the blocks over it (`crate::tier`:
//! read in the same `MGET` as the tile keys, one more key per distinct ancestor, paid by
//! every read: about a third more keys for a request of 16 zoom-11 tiles, 6 to 17 more for
//! 16 data tiles), warm-up counts a tile under a block as held, and an invalidation of
//! anything inside a block, or of an id it holds, deletes it.
//!
//! What the cap bounds stays what it was: keys. Junk of distinct coarse tiles makes a block
//! each and stops at the cap as junk of distinct data tiles does; a block's value is a tile
//! value holding the items of its data tiles above `public` (usually none), so Redis holds
//! at most instances x `--max-empty-tiles` of these keys, each of about 100 bytes when empty.
//!
//! The alternatives weighed: a cap scaled to `--max-data-tiles` (10 000 x 64 data tiles
//! would be some 60 MB of keys per instance that junk can fill as easily, so it bounds
//! less to buy the same); `--bounds` (the extent is a promise clients use to skip tiles,
//! but an item outside it is still served to a client that asks, so the server still asks
//! the origin there; and sparse land is mostly inside the extent). Blocks cost nothing
//! to junk's bound and make legitimate zoomed-out traffic a few keys per request.
//!
//! A block is made only of lists empty to `public` (the rule above): whether a tile is
//! stored in a block or on its own, and so how long it lives and whether the cap let it be
//! stored, never depends on items `public` may not see. Those items stay in the block's
//! value, so an `agent` caller is answered them from it. The in-process tier (the core
//! cache, bounded by `--cache-tiles` entries) makes no blocks: there the cap counts
//! data tiles as before, since a block would still take one entry per data tile.
//!
//! Blocks are made within one write-back (one origin call's answer): a coarse tile some of
//! whose data tiles were hits is stored as the blocks its misses make.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Mutex;

use tilewarm::access::Access;
use tilewarm::tile::TileId;

use crate::tier::Fill;

/// The most levels above the data zoom an empty block spans (`--split-levels` is at most
/// 4): an invalidation deletes the blocks over what it covers at every one of them, whatever
/// `--split-levels` the instance that wrote them ran with.
pub const MAX_BLOCK_LEVELS: u8 = 4;

/// The budget of empty tile lists one instance writes.
pub struct EmptyTiles {
    ttl_ms: u64,
    cap: usize,
    /// How many levels above the data zoom empty blocks may span (0: none).
    block_levels: u8,
    /// Expiries (Unix ms) of the empty lists and blocks written and still alive, oldest
    /// first.
    alive: Mutex<VecDeque<u64>>,
    /// Empty blocks made (`tilewarm_empty_blocks_total`).
    blocks_made: AtomicU64,
    /// Empty lists and blocks answered but not stored, past the cap
    /// (`tilewarm_empty_not_stored_total`).
    not_stored: AtomicU64,
}

impl EmptyTiles {
    /// At most `cap` empty lists alive, each for at most `ttl_ms`; none gathered into
    /// blocks (the in-process tier).
    pub fn new(ttl_ms: u64, cap: usize) -> EmptyTiles {
        EmptyTiles::with_blocks(ttl_ms, cap, 0)
    }

    /// At most `cap` empty lists and blocks alive, each for at most `ttl_ms`; the empty
    /// lists of a write-back gathered into blocks up to `block_levels` (at most
    /// [`MAX_BLOCK_LEVELS`]) levels above the data zoom (the Redis tier: `--split-levels`).
    pub fn with_blocks(ttl_ms: u64, cap: usize, block_levels: u8) -> EmptyTiles {
        EmptyTiles {
            ttl_ms,
            cap,
            block_levels: block_levels.min(MAX_BLOCK_LEVELS),
            alive: Mutex::new(VecDeque::new()),
            blocks_made: AtomicU64::new(0),
            not_stored: AtomicU64::new(0),
        }
    }

    /// Shortens the expiry of each empty list in `fill` to the negative TTL, gathers them
    /// into empty blocks ([`Fill::blocks`], module docs) and drops the lists and blocks
    /// past the cap; lists naming an item of `fill` that `public` may see are untouched.
    /// Empty means naming no such item (see the module docs: a list of items above
    /// `public` only must not live longer than one of nothing). Returns how many lists and
    /// blocks were dropped.
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
        let short = now_ms.saturating_add(self.ttl_ms);
        let empty: Vec<bool> = fill.tiles.iter().map(|(_, ids, _)| !shown(ids)).collect();
        let blocks = self.blocks(fill, &empty);
        let mut in_block = vec![false; fill.tiles.len()];
        let mut dropped = 0;
        for (block, members) in blocks {
            for &i in &members {
                in_block[i] = true;
            }
            if alive.len() >= self.cap {
                dropped += 1;
                continue;
            }
            let exp = (members.iter().map(|&i| fill.tiles[i].2)).fold(short, u64::min);
            let ids = (members.iter())
                .flat_map(|&i| fill.tiles[i].1.iter().cloned())
                .collect();
            alive.push_back(exp);
            fill.blocks.push((block, ids, exp));
        }
        let mut i = 0;
        fill.tiles.retain_mut(|(_, _, exp)| {
            let (empty, in_block) = (empty[i], in_block[i]);
            i += 1;
            if !empty {
                return true;
            }
            if in_block {
                return false;
            }
            if alive.len() >= self.cap {
                dropped += 1;
                return false;
            }
            *exp = (*exp).min(short);
            alive.push_back(*exp);
            true
        });
        // Expiries pushed out of order (a shorter tile TTL) only make the count cautious.
        self.blocks_made
            .fetch_add(fill.blocks.len() as u64, Relaxed);
        self.not_stored.fetch_add(dropped as u64, Relaxed);
        dropped
    }

    /// Empty blocks made so far (each stored within the cap).
    pub fn blocks_made(&self) -> u64 {
        self.blocks_made.load(Relaxed)
    }

    /// Empty lists and blocks answered but not stored so far, past the cap: each is an
    /// origin call again on the next request for it.
    pub fn not_stored(&self) -> u64 {
        self.not_stored.load(Relaxed)
    }

    /// The empty blocks `fill`'s lists make (`empty[i]`: list `i` is empty to `public`):
    /// the largest first, each with the indices of its data tiles' lists, in the order
    /// their first lists come. A block is a tile 1 to `block_levels` levels above the data
    /// zoom (the zoom of the lists) all 4^levels data tiles of which are listed once, empty.
    fn blocks(&self, fill: &Fill, empty: &[bool]) -> Vec<(TileId, Vec<usize>)> {
        let mut out = Vec::new();
        let Some(dz) = fill.tiles.first().map(|(t, _, _)| t.z()) else {
            return out;
        };
        let mut seen = HashSet::new();
        // The lists a block may take: empty, at the data zoom, each tile once.
        let mut free: Vec<bool> = (fill.tiles.iter().zip(empty))
            .map(|((t, _, _), &e)| e && t.z() == dz && seen.insert(*t))
            .collect();
        for levels in (1..=self.block_levels.min(dz)).rev() {
            let whole = 1usize << (2 * levels);
            let mut order = Vec::new();
            let mut under: HashMap<TileId, Vec<usize>> = HashMap::new();
            for (i, (t, _, _)) in fill.tiles.iter().enumerate() {
                if !free[i] {
                    continue;
                }
                let Ok(block) = t.ancestor(dz - levels) else {
                    continue;
                };
                let members = under.entry(block).or_default();
                if members.is_empty() {
                    order.push(block);
                }
                members.push(i);
            }
            for block in order {
                let members = under.remove(&block).unwrap_or_default();
                if members.len() == whole {
                    for &i in &members {
                        free[i] = false;
                    }
                    out.push((block, members));
                }
            }
        }
        out
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

    /// The empty lists of whole coarse tiles become one block each, the largest first; a
    /// tile with a list naming a public item, or a list not in the write-back, keeps its
    /// siblings as lists. Blocks and lists share the cap.
    #[test]
    fn empty_lists_of_whole_coarse_tiles_become_one_block_each() {
        let e = EmptyTiles::with_blocks(60_000, 4, 3);
        let z12 = TileId::new(12, 40, 40).unwrap();
        let mut f = Fill::default();
        // Every data tile of z12 empty, but one of its zoom-13 quarters holds a hidden
        // item (above public); the zoom-13 tile beside it lacks one data tile.
        f.items.push(item("hidden", Access::Agent));
        for (i, d) in z12.descendants(14).unwrap().into_iter().enumerate() {
            let ids = if i == 5 {
                vec!["hidden".into()]
            } else {
                Vec::new()
            };
            f.tiles.push((d, ids, 3_600_000));
        }
        let beside = TileId::new(13, 82, 80).unwrap();
        let partial = beside.descendants(14).unwrap();
        for &d in &partial[..3] {
            f.tiles.push((d, Vec::new(), 3_600_000));
        }
        f.items.push(item("seen", Access::Public));
        f.tiles.push((partial[3], vec!["seen".into()], 3_600_000));
        assert_eq!(e.limit(&mut f, 0), 0);
        assert_eq!(f.blocks, [(z12, vec!["hidden".to_string()], 60_000)]);
        let lists: Vec<(TileId, u64)> = f.tiles.iter().map(|t| (t.0, t.2)).collect();
        let want: Vec<(TileId, u64)> = (partial[..3].iter().map(|&d| (d, 60_000)))
            .chain([(partial[3], 3_600_000)])
            .collect();
        assert_eq!(lists, want);
        assert_eq!(e.alive(0), 4);
        // Full: another block is dropped with its lists.
        let mut g = Fill::default();
        let other = TileId::new(13, 0, 0).unwrap();
        for d in other.descendants(14).unwrap() {
            g.tiles.push((d, Vec::new(), 3_600_000));
        }
        assert_eq!(e.limit(&mut g, 1), 1);
        assert!(g.tiles.is_empty() && g.blocks.is_empty());
    }

    /// Without blocks (the in-process tier), a whole coarse tile's lists stay lists.
    #[test]
    fn no_blocks_are_made_for_the_in_process_tier() {
        let e = EmptyTiles::new(60_000, 100);
        let mut f = Fill::default();
        for d in TileId::new(13, 0, 0).unwrap().descendants(14).unwrap() {
            f.tiles.push((d, Vec::new(), 3_600_000));
        }
        assert_eq!(e.limit(&mut f, 0), 0);
        assert_eq!((f.tiles.len(), f.blocks.len()), (4, 0));
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
