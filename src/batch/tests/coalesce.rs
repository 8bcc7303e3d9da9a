use crate::batch::coalesce;
use crate::tile::TileId;

/// [`coalesce`]'s answer as each request tile with its data tiles.
fn grouped(tiles: &[TileId], levels: u8) -> Vec<(TileId, Vec<TileId>)> {
    grouped_at(tiles, levels, 100)
}

/// [`grouped`] with a `min_share` (percent of a block's data tiles listed).
fn grouped_at(tiles: &[TileId], levels: u8, min_share: u8) -> Vec<(TileId, Vec<TileId>)> {
    let (request_tiles, group_of) = coalesce(tiles, levels, min_share, |_| true, |_| 0);
    assert_eq!(group_of.len(), tiles.len());
    let mut groups: Vec<(TileId, Vec<TileId>)> =
        request_tiles.into_iter().map(|t| (t, Vec::new())).collect();
    for (&t, &g) in tiles.iter().zip(&group_of) {
        groups[g].1.push(t);
    }
    assert!(groups.iter().all(|(_, m)| !m.is_empty()), "{groups:?}");
    groups
}

#[test]
fn coalesces_complete_groups_into_coarse_tiles() {
    let parent = TileId::new(12, 100, 100).unwrap();
    let block = parent.descendants(14).unwrap(); // 16 tiles
    let lone = TileId::new(14, 1000, 1000).unwrap();
    let mut tiles = vec![lone];
    tiles.extend(&block);
    let groups = grouped(&tiles, 2);
    assert_eq!(groups.len(), 2);
    assert_eq!(groups[0], (lone, vec![lone]));
    assert_eq!(groups[1].0, parent);
    assert_eq!(groups[1].1.len(), 16);
    // 15 of 16: four zoom-13 groups minus one tile -> three z13 tiles + 3 singles.
    let groups = grouped(&block[1..], 2);
    assert_eq!(groups.len(), 6, "{groups:?}");
    assert!(groups.iter().filter(|(t, _)| t.z() == 13).count() == 3);
    // Every data tile is covered exactly once.
    let covered: usize = groups.iter().map(|(_, m)| m.len()).sum();
    assert_eq!(covered, 15);
    assert_eq!(grouped(&block, 0).len(), 16);
}

proptest::proptest! {
    /// Against the definition: each data tile goes out as its coarsest ancestor up to
    /// `levels` zooms up whose descendants are all listed (else as itself), and the
    /// request tiles come in order of first appearance.
    #[test]
    fn coalesce_matches_the_definition(
        cells in proptest::collection::vec((0u32..8, 0u32..8), 0..80),
        levels in 0u8..4,
    ) {
        let tiles: Vec<TileId> = cells
            .iter()
            .map(|&(x, y)| TileId::new(14, 1000 + x, 2000 + y).unwrap())
            .collect();
        let full = |a: TileId| {
            a.descendants(14).unwrap().iter().all(|d| tiles.contains(d))
        };
        let mut want: Vec<(TileId, Vec<TileId>)> = Vec::new();
        for &t in &tiles {
            let chosen = (1..=levels)
                .rev()
                .map(|k| t.ancestor(14 - k).unwrap())
                .find(|&a| full(a))
                .unwrap_or(t);
            match want.iter_mut().find(|(r, _)| *r == chosen) {
                Some((_, members)) => members.push(t),
                None => want.push((chosen, vec![t])),
            }
        }
        proptest::prop_assert_eq!(grouped(&tiles, levels), want);
    }
}

#[test]
fn a_share_of_a_block_is_enough_when_the_caller_agrees() {
    let parent = TileId::new(12, 100, 100).unwrap();
    let block = parent.descendants(14).unwrap();
    // 8 of 16 at 50%: the block; at 51% the z13 quarters with 2 of their 4 (rows 0-1 of a
    // row-major block fill the two top quarters).
    assert_eq!(
        grouped_at(&block[..8], 2, 50),
        vec![(parent, block[..8].to_vec())]
    );
    let groups = grouped_at(&block[..8], 2, 51);
    assert_eq!(groups.len(), 2);
    assert!(groups.iter().all(|(t, m)| t.z() == 13 && m.len() == 4));
    // The caller refuses the partly listed block: its quarters are complete, so they go.
    let (request_tiles, _) = coalesce(&block[..8], 2, 50, |a| a != parent, |_| 0);
    assert_eq!(request_tiles.len(), 2);
    assert!(request_tiles.iter().all(|t| t.z() == 13));
    // A complete block never asks the caller.
    let (request_tiles, _) = coalesce(
        &block,
        2,
        50,
        |_| panic!("asked for a complete block"),
        |_| 0,
    );
    assert_eq!(request_tiles, vec![parent]);
    // 1% of 16 is one tile: any listed tile stands for its block.
    assert_eq!(
        grouped_at(&block[5..6], 2, 1),
        vec![(parent, vec![block[5]])]
    );
}

proptest::proptest! {
    /// Against the definition, with a share: each data tile goes out as its coarsest
    /// ancestor up to `levels` zooms up with at least `min_share`% of its descendants
    /// listed that is complete or that the caller accepts (else as itself).
    #[test]
    fn coalesce_with_a_share_matches_the_definition(
        cells in proptest::collection::vec((0u32..8, 0u32..8), 0..80),
        levels in 0u8..4,
        min_share in 1u8..=100,
        refuse in 0u64..4,
    ) {
        let tiles: Vec<TileId> = cells
            .iter()
            .map(|&(x, y)| TileId::new(14, 1000 + x, 2000 + y).unwrap())
            .collect();
        // The caller refuses some ancestors, deterministically.
        let accepts = |a: TileId| (a.x() as u64 + a.y() as u64 + a.z() as u64) % 4 != refuse;
        let chosen_ok = |a: TileId| {
            let below = a.descendants(14).unwrap();
            let listed = below.iter().filter(|d| tiles.contains(d)).count();
            let all = below.len();
            listed * 100 >= all * min_share as usize && (listed == all || accepts(a))
        };
        let mut want: Vec<(TileId, Vec<TileId>)> = Vec::new();
        for &t in &tiles {
            let chosen = (1..=levels)
                .rev()
                .map(|k| t.ancestor(14 - k).unwrap())
                .find(|&a| chosen_ok(a))
                .unwrap_or(t);
            match want.iter_mut().find(|(r, _)| *r == chosen) {
                Some((_, members)) => members.push(t),
                None => want.push((chosen, vec![t])),
            }
        }
        let (request_tiles, group_of) = coalesce(&tiles, levels, min_share, accepts, |_| 0);
        let mut got: Vec<(TileId, Vec<TileId>)> =
            request_tiles.into_iter().map(|t| (t, Vec::new())).collect();
        for (&t, &g) in tiles.iter().zip(&group_of) {
            got[g].1.push(t);
        }
        proptest::prop_assert_eq!(got, want);
    }
}

/// Tiles known to hold nothing count neither way: the share is of the tiles that may hold
/// items, so a request tile never brings more unwanted tiles than `min_share` allows.
#[test]
fn empty_tiles_leave_the_share_of_the_others() {
    let parent = TileId::new(12, 100, 100).unwrap();
    let block = parent.descendants(14).unwrap(); // 16 tiles, row by row
                                                 // The first 7 hold nothing (outside the data's extent).
    let empty = |a: TileId| -> usize {
        let below = a.descendants(14).unwrap();
        below.iter().filter(|d| block[..7].contains(d)).count()
    };
    let request_tiles = |tiles: &[TileId], partial: bool| {
        let (r, _) = coalesce(
            tiles,
            2,
            50,
            |_| partial,
            |a| {
                // What the batcher passes: the empty ones not listed.
                let below = a.descendants(14).unwrap();
                below
                    .iter()
                    .filter(|d| block[..7].contains(d) && !tiles.contains(d))
                    .count()
            },
        );
        r
    };
    assert_eq!(empty(parent), 7);
    // 1 of the 9 that may hold items: not the block with 8 unwanted tiles (its zoom-13
    // quarter, whose 3 other tiles are empty, brings none).
    let alone = request_tiles(&block[7..8], true);
    assert_eq!(alone, [block[7].parent().unwrap()]);
    // 5 of 9 (at least half): the block, when the caller agrees.
    assert_eq!(request_tiles(&block[7..12], true), [parent]);
    assert!(!request_tiles(&block[7..12], false).contains(&parent));
    // All 9: the block is complete, whatever the caller says.
    assert_eq!(request_tiles(&block[7..], false), [parent]);
    // Empty tiles listed as well count once.
    assert_eq!(request_tiles(&block[3..], false), [parent]);
}
