//! Data tiles known to be fresh, so that a planning round and the read after it do not
//! classify them again: reading a tile's state means looking up each of its items.

use crate::access::Access;
use crate::planner::Plan;
use crate::tile::TileId;
use crate::util::HashMap;

/// Tiles known fresh at one cache generation and tier: those a round found fresh, with
/// when that can end, and the last round when it found every tile it asked about
/// (visible and candidates) fresh. Any tile that round wanted is fresh until the first of
/// them can stop being fresh. Most of a round's candidates were the last round's, so
/// while the map pans over a cached area a round looks few of them up.
pub(super) struct FreshTiles {
    generation: u64,
    access: Access,
    memo: HashMap<TileId, u64>,
    round: Option<(Plan, u64)>,
}

impl FreshTiles {
    pub(super) fn new(access: Access) -> FreshTiles {
        FreshTiles {
            generation: 0,
            access,
            memo: HashMap::new(),
            round: None,
        }
    }

    /// Before a planning round at `generation` and `access`: what was known at another
    /// generation or tier is forgotten, and the memo once it grew past 4,096 tiles.
    pub(super) fn begin(&mut self, generation: u64, access: Access) {
        if (self.generation, self.access) != (generation, access) {
            *self = FreshTiles {
                generation,
                ..FreshTiles::new(access)
            };
        } else if self.memo.len() > 4096 {
            self.memo = HashMap::new();
        }
    }

    /// When `tile` can stop being fresh, if it is known fresh at `now_ms`, `generation`
    /// and `access`.
    pub(super) fn until(
        &self,
        tile: TileId,
        generation: u64,
        access: Access,
        now_ms: u64,
    ) -> Option<u64> {
        if (self.generation, self.access) != (generation, access) {
            return None;
        }
        let by_round = self
            .round
            .as_ref()
            .filter(|(plan, until)| now_ms < *until && plan.wanted(tile))
            .map(|&(_, until)| until);
        by_round.or_else(|| {
            self.memo
                .get(&tile)
                .copied()
                .filter(|&until| now_ms < until)
        })
    }

    /// `tile` was found fresh until `until`.
    pub(super) fn insert(&mut self, tile: TileId, until: u64) {
        self.memo.insert(tile, until);
    }

    /// The round just planned, with the first time one of its tiles can stop being fresh,
    /// when it found every tile it asked about fresh; else `None`.
    pub(super) fn keep_round(&mut self, round: Option<(Plan, u64)>) {
        self.round = round;
    }
}
