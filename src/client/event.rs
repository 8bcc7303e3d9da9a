//! What the client tells the page: [`Event`]s, what a view looks like ([`ViewOutcome`]),
//! and each tile's display state ([`TileState`]).

use super::{Failure, Kind, RequestId, ViewTooLarge};
use crate::tile::TileId;

/// What the view looks like right after [`Client::set_viewport`](super::Client::set_viewport).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ViewOutcome {
    /// Every visible tile can be shown (fresh, or stale within the SWR window).
    pub complete: bool,
    /// Visible tiles that cannot be shown yet (being fetched).
    pub missing: Vec<TileId>,
    /// Some shown items are stale (a refresh is planned).
    pub stale: bool,
    /// Number of visible data tiles (0 below `min_zoom`).
    pub visible: usize,
    /// Items handed to the sink.
    pub items: usize,
    /// The viewport covers more than `max_visible_tiles` data tiles (the limit is here):
    /// nothing is fetched for it, `complete` is false, `missing` and `visible` are empty,
    /// and the items are the cached ones of the data tiles in it.
    pub too_wide: Option<ViewTooLarge>,
    /// The view reads exactly as the last read did (only from
    /// [`Client::update_viewport`](super::Client::update_viewport), which then does not call
    /// the sink): the same items in the same order, with the same stale flags.
    pub unchanged: bool,
}

/// Something the page should hear about.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Data for visible tiles arrived: read the view again ([`Client::view_items`](super::Client::view_items)).
    Updated,
    /// Every visible tile can now be shown.
    Complete,
    /// A request failed.
    Error(FetchError),
}

/// A failed request, as reported to the page.
#[derive(Clone, Debug, PartialEq)]
pub struct FetchError {
    pub request: RequestId,
    pub kind: Kind,
    pub failure: Failure,
    pub tiles: Vec<TileId>,
    /// The work is queued again (after a backoff).
    pub will_retry: bool,
    /// One of the view's data tiles this request was for cannot be shown after it: the view
    /// is incomplete for want of it. A request that carried none of them (a `get`'s ids, the
    /// tiles a host loads, a neighbour's) leaves the view as it was, so a shell fails a wait
    /// for the complete view with an error that will not be retried only when this is set.
    pub view_incomplete: bool,
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            Kind::Foreground => "foreground",
            Kind::Prefetch => "prefetch",
        };
        write!(
            f,
            "{kind} batch request for {} tiles failed: {}",
            self.tiles.len(),
            self.failure
        )?;
        if self.will_retry {
            f.write_str(" (will retry)")?;
        }
        Ok(())
    }
}

/// Display state of a data tile, for overlays and debugging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TileState {
    /// Showable, and was fetched for the view (or already shown).
    Loaded,
    /// Showable, fetched ahead by prefetch and not shown yet.
    Prefetched,
    /// A request for it is out.
    InFlight,
    /// Not showable and not being fetched.
    Missing,
}
