//! What a [`TileCache`](crate::TileCache) hands out: [`Item`]s, [`Shown`] in a [`View`], and
//! the [`Update`]s of its stream. Plain data, host-compiled (unlike the cache, which is
//! wasm32 only), so code shared with a server build (Leptos or Dioxus with SSR) can name
//! them, in a signal's type say, and `cargo test` checks how the stream queues them.

use std::rc::Rc;

use tilewarm::client::{ChangedTiles, ViewTooLarge, MAX_CHANGED_TILES};
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
    /// [`TileCache::when_complete`](crate::TileCache::when_complete) fails with
    /// `TooManyTiles` while it is.
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

/// What [`TileCache::updates`](crate::TileCache::updates) streams.
#[derive(Debug)]
pub enum Update<T> {
    /// Data for the view arrived (or was invalidated): the view as it is now.
    View(View<T>),
    /// Every visible tile can now be shown.
    Complete,
    /// The tier the cache asks and views at changed:
    /// [`TileCache::set_access`](crate::TileCache::set_access), or a lower tier the server
    /// reported for the credential (an answer, or a `403` naming it), as the npm package's
    /// `onAccess` tells. Sent before the view it changed.
    Access(Access),
    /// A request failed (foreground or prefetch), or an answer left requested ids out;
    /// cached data stays usable.
    Error(Error),
    /// The tiles whose cached items changed, in the view or not, as the npm package's
    /// `onTilesChanged` names them (`All`: any tile may have): an answer that added,
    /// replaced, moved or deleted items or changed a tile's list (a refresh, a prefetch, a
    /// `load_tiles` or `get` answer), an `invalidate`, a tier change, the view's tiles when
    /// their items turn stale or expire, and the tiles `load_tiles` read when what it read
    /// turns stale or expires (once: a host that still draws the tile reads it again, which
    /// counts it again). Items pushed out to make room are no change. A map layer that
    /// draws tiles itself loads again (`load_tiles`, answered from the cache when it can be)
    /// the tiles it draws that [`ChangedTiles::touches`]. Changes a subscriber has not read
    /// add up in one update (past [`MAX_CHANGED_TILES`] tiles: `All`).
    TilesChanged(ChangedTiles),
}

impl<T> QueueRule for Update<T> {
    fn rule(&self) -> Queued {
        match self {
            Update::View(_) => Queued::Latest(0),
            Update::Access(_) => Queued::Latest(1),
            Update::Complete => Queued::Once,
            Update::Error(_) => Queued::Each,
            Update::TilesChanged(_) => Queued::Merge,
        }
    }

    fn merge(&mut self, later: &Self) {
        let (Update::TilesChanged(mine), Update::TilesChanged(more)) = (self, later) else {
            return;
        };
        let all = match (&mut *mine, more) {
            (ChangedTiles::Tiles(mine), ChangedTiles::Tiles(more)) => {
                for &t in more {
                    if !mine.contains(&t) {
                        mine.push(t);
                    }
                }
                mine.len() > MAX_CHANGED_TILES
            }
            _ => true,
        };
        if all {
            *mine = ChangedTiles::All;
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
            Update::TilesChanged(t) => Update::TilesChanged(t.clone()),
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
                Update::TilesChanged(t) => format!("changed {t:?}"),
            });
        }
        assert_eq!(
            got,
            ["complete", "error ERR_DISPOSED", "access public", "view 2"]
        );
    }

    /// Changed tiles a subscriber has not read add up in the one queued: each tile once;
    /// `All` (or past `MAX_CHANGED_TILES` tiles) is any tile.
    #[test]
    fn changed_tiles_not_read_add_up() {
        let t = |s: &str| s.parse::<TileId>().unwrap();
        let (a, b) = (t("14/2624/5721"), t("14/2625/5721"));
        let mut subs: Subscribers<Update<u32>> = Subscribers::default();
        let idle = subs.subscribe();
        let changed = |tiles: Vec<TileId>| Update::TilesChanged(ChangedTiles::Tiles(tiles));
        subs.send(&changed(vec![a]));
        subs.send(&Update::Complete);
        subs.send(&changed(vec![b, a]));
        let mut cx = Context::from_waker(Waker::noop());
        let next = |cx: &mut Context<'_>| match idle.poll_update(cx) {
            Poll::Ready(Some(Update::TilesChanged(c))) => Some(c),
            _ => None,
        };
        assert_eq!(next(&mut cx), Some(ChangedTiles::Tiles(vec![a, b])));
        assert!(matches!(
            idle.poll_update(&mut cx),
            Poll::Ready(Some(Update::Complete))
        ));
        subs.send(&changed(vec![a]));
        subs.send(&Update::TilesChanged(ChangedTiles::All));
        subs.send(&changed(vec![b]));
        assert_eq!(next(&mut cx), Some(ChangedTiles::All));
        let many = (0..=MAX_CHANGED_TILES as u32).map(|x| TileId::new(14, x, 0).unwrap());
        for tile in many {
            subs.send(&changed(vec![tile]));
        }
        assert_eq!(next(&mut cx), Some(ChangedTiles::All));
        assert_eq!(idle.queued(), 0);
    }
}
