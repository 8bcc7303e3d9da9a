//! Placeholder until the cache branch merges: the tile-state contract the planner codes against.

/// What to refetch to make a tile fresh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refresh {
    Tile,
    Ids(Vec<String>),
}

/// The state of one data-zoom tile in the cache, for one caller tier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TileState {
    Fresh,
    Stale(Refresh),
    Partial(Refresh),
    Unknown,
}

impl TileState {
    pub fn is_showable(&self) -> bool {
        matches!(self, TileState::Fresh | TileState::Stale(_))
    }
}
