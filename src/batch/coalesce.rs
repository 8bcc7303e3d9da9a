//! Data tiles into coarser request tiles.

use crate::tile::{find_tile, TileId};
use crate::util::sort_pairs;

/// Groups data tiles (in priority order) into request tiles: an ancestor up to `levels`
/// zooms up stands for its descendants when at least `min_share` percent of them are in
/// `tiles` (the coarsest such ancestor does; 100 = all of them). Returns the request tiles
/// in order of first appearance, and for each data tile the index of its request tile.
/// Below 100 a request tile may stand for data tiles that are not in `tiles`: its answer
/// holds their items too, fewer request tiles for more items. Such a partly listed
/// ancestor is chosen only when `partial_ok(ancestor)` says so (the caller refuses one
/// whose other data tiles it already holds or has asked for: their items would come twice).
/// `empty_below(ancestor)` counts the ancestor's data tiles that are not in `tiles` and are
/// known to hold no items (outside the data's extent): the share is of the other tiles, the
/// ones that may hold items, so a request tile never brings more unwanted data tiles than
/// `min_share` allows, and a block made of listed and empty tiles only is complete.
///
/// Sorted `(u64, u64)` vectors throughout (the one `sort_pairs` of the crate), no hash tables: per level,
/// the `(ancestor, tile)` pairs sorted and deduplicated count the distinct tiles below each
/// ancestor, and one with at least `min_share`% of its `4^k` tiles `k` zooms up is chosen.
/// O(levels · n log n).
///
/// Written this way for the browser's wasm: the plain form (a `HashMap<TileId,
/// HashSet<TileId>>` per level and a map of first positions) was measured on 2026-12-02 at
/// 1.3 KB gzipped more (browser wasm 68,444 → 69,747 bytes gzipped, same tree otherwise),
/// above the 0.3 KB a size trick must save to stay.
pub fn coalesce(
    tiles: &[TileId],
    levels: u8,
    min_share: u8,
    mut partial_ok: impl FnMut(TileId) -> bool,
    mut empty_below: impl FnMut(TileId) -> usize,
) -> (Vec<TileId>, Vec<usize>) {
    // (request tile, position) of each data tile: the tile itself unless an ancestor is complete.
    let mut chosen: Vec<(u64, u64)> = Vec::with_capacity(tiles.len());
    for (i, t) in tiles.iter().enumerate() {
        chosen.push((t.to_u64(), i as u64));
    }
    let above = |t: TileId, k: u8| t.ancestor(t.z().checked_sub(k)?).ok();
    // Finest level first, so a chosen coarser ancestor replaces a finer one.
    for k in 1..=levels {
        // Data tiles below an ancestor k zooms up; of those that may hold items, the share
        // that must be listed (at least one; all of them at 100%).
        let all = 1usize << (2 * k);
        let share = usize::from(min_share.min(100));
        let mut pairs: Vec<(u64, u64)> = Vec::with_capacity(tiles.len());
        for &t in tiles {
            if let Some(a) = above(t, k) {
                pairs.push((a.to_u64(), t.to_u64()));
            }
        }
        sort_pairs(&mut pairs);
        pairs.dedup();
        let mut complete: Vec<(u64, u64)> = Vec::new();
        for below in pairs.chunk_by(|p, q| p.0 == q.0) {
            let block = TileId::from_packed(below[0].0);
            let listed = below.len();
            let empty = if listed < all {
                empty_below(block).min(all - listed)
            } else {
                0
            };
            let need = ((all - empty) * share).div_ceil(100).max(1);
            if listed >= need && (listed + empty >= all || partial_ok(block)) {
                complete.push((below[0].0, 0));
            }
        }
        if complete.is_empty() {
            continue;
        }
        for (&t, c) in tiles.iter().zip(chosen.iter_mut()) {
            if let Some(a) = above(t, k).filter(|&a| find_tile(&complete, a).is_ok()) {
                c.0 = a.to_u64();
            }
        }
    }
    // Sorted by request tile, each run is one group, first seen at its smallest position;
    // the groups sorted by that position are in order of first appearance.
    sort_pairs(&mut chosen);
    let mut firsts: Vec<(u64, u64)> = Vec::new();
    for (j, c) in chosen.iter().enumerate() {
        if j == 0 || chosen[j - 1].0 != c.0 {
            firsts.push((c.1, j as u64));
        }
    }
    sort_pairs(&mut firsts);
    let mut request_tiles = Vec::with_capacity(firsts.len());
    let mut group_of = vec![0; tiles.len()];
    for (g, &(_, start)) in firsts.iter().enumerate() {
        let key = chosen[start as usize].0;
        request_tiles.push(TileId::from_packed(key));
        for &(_, i) in chosen[start as usize..].iter().take_while(|c| c.0 == key) {
            group_of[i as usize] = g;
        }
    }
    (request_tiles, group_of)
}
