//! What a [`TileCache`](crate::TileCache) hands out: [`Item`]s, [`Shown`] in a [`View`], and
//! the [`Update`]s of its stream. Plain data, host-compiled (unlike the cache, which is
//! wasm32 only), so code shared with a server build (Leptos or Dioxus with SSR) can name
//! them, in a signal's type say, and `cargo test` checks how the stream queues them.

use std::rc::Rc;

use tilewarm::client::ViewTooLarge;
use tilewarm::{Access, TileId};

use crate::error::Error;
use crate::updates::{QueueRule, Queued};

/// A cached item: the wire fields, and `data` decoded into `T`.
#[derive(Debug, PartialEq)]
pub struct Item<T> {
    pub id: String,
    pub lon: f64,
    pub lat: f64,
    pub class: String,
    pub access: Access,
    pub data: T,
}

/// An item in a view, and whether it is stale (shown while it is fetched again).
///
/// Equal (`==`) when it is the same cached item (`Rc::ptr_eq`: the same arrival; the cache
/// hands out one `Rc` per item while it holds it) with the same `stale` flag: cheap, with no
/// bound on `T`, and what a UI framework's equality (a Leptos `Memo`, Yew's props) needs to
/// tell an unchanged view from a changed one.
#[derive(Debug)]
pub struct Shown<T> {
    pub item: Rc<Item<T>>,
    pub stale: bool,
}

impl<T> PartialEq for Shown<T> {
    fn eq(&self, other: &Self) -> bool {
        Rc::ptr_eq(&self.item, &other.item) && self.stale == other.stale
    }
}

impl<T> Clone for Shown<T> {
    fn clone(&self) -> Self {
        Shown {
            item: Rc::clone(&self.item),
            stale: self.stale,
        }
    }
}

/// What the cache has for the view.
///
/// Each call hands out a new `View` (a `Vec` of `Rc`s: no item is copied), where the npm
/// package hands back the same object while nothing changed. To tell whether anything did,
/// compare with `==`: two views are equal when they hold the same cached items
/// ([`Shown`]'s identity) with the same flags, the same missing tiles and the same `too_wide`
/// (pointer comparisons, no bound on `T`), so a Leptos `Memo` or Yew's props skip a
/// redraw when a pan reads the same view.
#[derive(Debug)]
pub struct View<T> {
    /// Every cached item in the visible tiles.
    pub items: Vec<Shown<T>>,
    /// Every visible tile can be shown.
    pub complete: bool,
    /// Visible data tiles not showable yet (being fetched).
    pub missing_tiles: Vec<TileId>,
    /// The view covers more data tiles than the planner's `max_visible_tiles` (a large
    /// window at a low zoom, a pitched view): nothing is fetched for it and `items` are the
    /// cached ones in it. Not an error (the npm package's `tooWide`): zoom in, or raise
    /// [`Options::max_visible_tiles`](crate::Options::max_visible_tiles) (`maxVisibleTiles`).
    /// [`TileCache::when_complete`] fails with `TooManyTiles` while it is.
    pub too_wide: Option<ViewTooLarge>,
}

impl<T> PartialEq for View<T> {
    fn eq(&self, other: &Self) -> bool {
        self.complete == other.complete
            && self.too_wide == other.too_wide
            && self.missing_tiles == other.missing_tiles
            && self.items == other.items
    }
}

impl<T> Clone for View<T> {
    fn clone(&self) -> Self {
        View {
            items: self.items.clone(),
            complete: self.complete,
            missing_tiles: self.missing_tiles.clone(),
            too_wide: self.too_wide,
        }
    }
}

/// One tile's answer from [`TileCache::load_tiles`](crate::TileCache::load_tiles), the npm
/// package's `TileLoad`: the host tile asked for, and its items (those inside it when it is
/// finer than `tileZoom`, those of its data tiles when coarser), or why it has none: the
/// [`Error`] of the request that gave up on it (or of an answer that left it out, or whose
/// items the cache could not keep beside the view and the other tiles waited for:
/// `maxItems`, `maxBytes`), or `TooManyTiles` for a tile covering more than
/// `maxVisibleTiles` data tiles.
#[derive(Debug)]
pub struct TileLoad<T> {
    pub tile: TileId,
    pub items: Result<Vec<Shown<T>>, Error>,
}

impl<T> Clone for TileLoad<T> {
    fn clone(&self) -> Self {
        TileLoad {
            tile: self.tile,
            items: self.items.clone(),
        }
    }
}

/// What [`TileCache::updates`] streams.
#[derive(Debug)]
pub enum Update<T> {
    /// Data for the view arrived (or was invalidated): the view as it is now.
    View(View<T>),
    /// Every visible tile can now be shown.
    Complete,
    /// The tier the cache asks and views at changed: [`TileCache::set_access`], or a lower
    /// tier the server reported for the credential (an answer, or a `403` naming it), as
    /// the npm package's `onAccess` tells. Sent before the view it changed.
    Access(Access),
    /// A request failed (foreground or prefetch), or an answer left requested ids out;
    /// cached data stays usable.
    Error(Error),
}

impl<T> QueueRule for Update<T> {
    fn rule(&self) -> Queued {
        match self {
            Update::View(_) => Queued::Latest(0),
            Update::Access(_) => Queued::Latest(1),
            Update::Complete => Queued::Once,
            Update::Error(_) => Queued::Each,
        }
    }
}

impl<T> Clone for Update<T> {
    fn clone(&self) -> Self {
        match self {
            Update::View(v) => Update::View(v.clone()),
            Update::Complete => Update::Complete,
            Update::Access(a) => Update::Access(*a),
            Update::Error(e) => Update::Error(e.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::task::{Context, Poll, Waker};

    use super::*;
    use crate::updates::Subscribers;

    fn view(n: usize) -> View<u32> {
        let item = Rc::new(Item {
            id: format!("h{n}"),
            lon: 0.0,
            lat: 0.0,
            class: "active".into(),
            access: Access::Public,
            data: n as u32,
        });
        View {
            items: vec![Shown { item, stale: false }],
            complete: true,
            missing_tiles: Vec::new(),
            too_wide: None,
        }
    }

    /// Views compare by the identity of their items (no `T: PartialEq`): the same cached
    /// items are equal, an equal copy arrived since is not, nor a stale flag changed.
    #[test]
    fn views_are_equal_when_they_hold_the_same_cached_items() {
        #[derive(Debug)]
        struct NoEq;
        let h1 = || {
            Rc::new(Item {
                id: "h1".into(),
                lon: 0.0,
                lat: 0.0,
                class: "active".into(),
                access: Access::Public,
                data: NoEq,
            })
        };
        let item = h1();
        let view = |item: &Rc<Item<NoEq>>, stale: bool| View {
            items: vec![Shown {
                item: Rc::clone(item),
                stale,
            }],
            complete: true,
            missing_tiles: Vec::new(),
            too_wide: None,
        };
        assert_eq!(view(&item, false), view(&item, false));
        assert_ne!(view(&item, false), view(&item, true));
        let again = h1();
        assert_ne!(view(&item, false), view(&again, false));
        let mut missing = view(&item, false);
        missing.complete = false;
        missing.missing_tiles.push(TileId::ROOT);
        assert_ne!(view(&item, false), missing);
    }

    /// The stream's queue for a subscriber that does not read, with the shell's own
    /// updates: the latest view and tier replace the ones not read, `Complete` is queued
    /// once, errors each; the tier comes before the view it changed.
    #[test]
    fn a_subscriber_that_does_not_read_holds_the_latest_view_and_tier() {
        let mut subs: Subscribers<Update<u32>> = Subscribers::default();
        let idle = subs.subscribe();
        subs.send(&Update::View(view(1)));
        subs.send(&Update::Complete);
        subs.send(&Update::Access(Access::Agent));
        subs.send(&Update::Error(Error::disposed()));
        subs.send(&Update::Access(Access::Public));
        subs.send(&Update::View(view(2)));
        subs.send(&Update::Complete);
        let mut cx = Context::from_waker(Waker::noop());
        let mut got = Vec::new();
        while let Poll::Ready(Some(u)) = idle.poll_update(&mut cx) {
            got.push(match u {
                Update::View(v) => format!("view {}", v.items[0].item.data),
                Update::Complete => "complete".into(),
                Update::Access(a) => format!("access {a}"),
                Update::Error(e) => format!("error {}", e.code.as_str()),
            });
        }
        assert_eq!(
            got,
            ["complete", "error ERR_DISPOSED", "access public", "view 2"]
        );
    }
}
