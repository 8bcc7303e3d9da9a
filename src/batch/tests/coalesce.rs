use crate::batch::coalesce;
use crate::tile::TileId;

/// [`coalesce`]'s answer as each request tile with its data tiles.
fn grouped(tiles: &[TileId], levels: u8) -> Vec<(TileId, Vec<TileId>)> {
    let (request_tiles, group_of) = coalesce(tiles, levels);
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
