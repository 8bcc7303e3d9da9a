//! Answers overtaken by an invalidation: a change that reached the page (`tilewarm/live`,
//! a host's `invalidate`) while a request was out may be newer than what the server read
//! for it. Such an answer is true as of its read, but cached it would bring the old value
//! back for a full TTL, and fill the tile the change just emptied (a tile in flight is not
//! asked for again). So each request remembers the invalidation count it was sent at, the
//! client keeps the invalidations made while requests are out, and an answer that one of
//! them covers is dropped and its work asked again, as an answer sent at a tier left since
//! is (the edge's epoch, `proxy/change.rs`, guards its caches the same way).
//!
//! An invalidation covers an answer when it is `all`, names one of its items' or missing
//! ids, one of its items' classes, or a tile that contains or lies in one of its lists' tiles
//! or its items' data tiles. Past [`MAX_OVERTAKING`] ids, tiles and classes kept, the oldest
//! invalidations are folded into a floor: an answer sent before it is covered whatever it
//! holds.
//!
//! Work is asked again once: the answer to a request carrying work asked again is taken
//! even when another invalidation covers it too. Changes that keep coming faster than a
//! round trip (a feed flooding every class or the view's tiles) would otherwise drop every
//! answer, for ever; taken, the answer is at most a round trip older than the last change
//! it crossed, and a change still coming invalidates it again.

use crate::batch::Finished;
use crate::cache::Invalidate;
use crate::planner::Work;
use crate::protocol::{BatchRequest, BatchResponse};
use crate::tile::TileId;

/// Most ids, tiles and classes kept for the requests in flight (an `all` counts one); the
/// oldest invalidations past it fold into a floor.
pub const MAX_OVERTAKING: usize = 1024;

/// Most pieces of work remembered as asked again (the oldest are forgotten: their work
/// was dropped before it went out again, or it is asked again twice at worst).
const MAX_ASKED_AGAIN: usize = 256;

/// An invalidation, owned.
#[derive(Debug)]
enum Change {
    Ids(Vec<String>),
    Tiles(Vec<TileId>),
    Class(String),
    All,
}

impl Change {
    /// Its ids, tiles and classes, for [`MAX_OVERTAKING`].
    fn keys(&self) -> usize {
        match self {
            Change::Ids(ids) => ids.len(),
            Change::Tiles(tiles) => tiles.len(),
            Change::Class(_) | Change::All => 1,
        }
    }

    fn of(what: &Invalidate<'_>) -> Change {
        match *what {
            Invalidate::Ids(ids) => Change::Ids(ids.iter().map(|&i| i.to_string()).collect()),
            Invalidate::Tiles(tiles) => Change::Tiles(tiles.to_vec()),
            Invalidate::Class(class) => Change::Class(class.to_string()),
            Invalidate::All => Change::All,
        }
    }

    fn covers<P>(&self, answer: &BatchResponse<P>, tile_zoom: u8) -> bool {
        let touches = |tile: TileId, tiles: &[TileId]| {
            tiles.iter().any(|&t| t.contains(tile) || tile.contains(t))
        };
        match self {
            Change::All => true,
            Change::Ids(ids) => {
                let named = |id: &str| ids.iter().any(|i| i == id);
                answer.items.iter().any(|it| named(&it.id))
                    || answer.missing.iter().any(|id| named(id))
            }
            Change::Class(class) => answer.items.iter().any(|it| it.class == *class),
            Change::Tiles(tiles) => {
                answer.tiles.iter().any(|l| touches(l.tile, tiles))
                    || answer.items.iter().any(|it| {
                        TileId::from_lon_lat(it.lon, it.lat, tile_zoom)
                            .is_ok_and(|t| touches(t, tiles))
                    })
            }
        }
    }
}

/// The invalidations made while requests were out, counted.
#[derive(Debug, Default)]
pub(super) struct Overtaking {
    /// Invalidations so far; a request remembers the count it was sent at.
    count: u64,
    /// The kept ones, oldest first, each with the count it made. (A `Vec`: a `VecDeque`
    /// costs the browser page 0.4 KB gzipped more.)
    kept: Vec<(u64, Change)>,
    /// Answers to requests sent at a count below this are covered whatever they hold.
    floor: u64,
    /// Data tiles and ids of work an overtaken answer asked again, not sent again yet.
    again_tiles: Vec<TileId>,
    again_ids: Vec<String>,
}

impl Overtaking {
    /// The count a request sent now remembers.
    pub(super) fn count(&self) -> u64 {
        self.count
    }

    /// An invalidation was made; `oldest_out` is the count the oldest request in flight
    /// was sent at (`None`: nothing is out, and nothing needs to be kept).
    pub(super) fn record(&mut self, what: &Invalidate<'_>, oldest_out: Option<u64>) {
        self.count += 1;
        let Some(oldest) = oldest_out else {
            self.kept.clear();
            return;
        };
        // Changes no request out predates are of no answer's concern.
        self.kept.retain(|&(n, _)| n > oldest);
        self.kept.push((self.count, Change::of(what)));
        let mut keys: usize = self.kept.iter().map(|(_, c)| c.keys()).sum();
        while keys > MAX_OVERTAKING && !self.kept.is_empty() {
            let (n, oldest) = self.kept.remove(0);
            keys -= oldest.keys();
            self.floor = n;
        }
    }

    /// An overtaken answer's work (`finished`) is asked again.
    pub(super) fn asked_again(&mut self, finished: &Finished) {
        self.again_tiles.extend(finished.tiles());
        self.again_ids.extend(finished.loose_ids.iter().cloned());
        for w in &finished.works {
            if let Work::Ids { ids, .. } = w {
                self.again_ids.extend(ids.iter().cloned());
            }
        }
        let over = self.again_tiles.len().saturating_sub(MAX_ASKED_AGAIN);
        self.again_tiles.drain(..over);
        let over = self.again_ids.len().saturating_sub(MAX_ASKED_AGAIN);
        self.again_ids.drain(..over);
    }

    /// Whether `request`, going out now, carries work an overtaken answer asked again (its
    /// answer is then taken whatever covers it); that work is forgotten.
    pub(super) fn carries_again(&mut self, request: &BatchRequest) -> bool {
        let (tiles, ids) = (self.again_tiles.len(), self.again_ids.len());
        self.again_tiles.retain(|&t| {
            !request
                .tiles
                .iter()
                .any(|&r| r.contains(t) || t.contains(r))
        });
        self.again_ids.retain(|id| !request.ids.contains(id));
        (tiles, ids) != (self.again_tiles.len(), self.again_ids.len())
    }

    /// Whether an invalidation made after a request was sent at `sent_at` covers its
    /// `answer` (see the module docs).
    pub(super) fn covers<P>(&self, sent_at: u64, answer: &BatchResponse<P>, tile_zoom: u8) -> bool {
        if sent_at == self.count {
            return false;
        }
        sent_at < self.floor
            || self
                .kept
                .iter()
                .any(|(n, change)| *n > sent_at && change.covers(answer, tile_zoom))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Access;
    use crate::protocol::{Item, TileList};

    fn answer(tile: TileId, id: &str) -> BatchResponse<()> {
        let (lon, lat) = (-122.33, 47.6);
        BatchResponse {
            tiles: vec![TileList {
                tile,
                ids: vec![id.into()],
                ttl: None,
            }],
            items: vec![Item {
                id: id.into(),
                lon,
                lat,
                class: "active".into(),
                access: Access::Public,
                ttl: None,
                data: (),
            }],
            ..BatchResponse::default()
        }
    }

    #[test]
    fn an_invalidation_covers_an_answer_sent_before_it_that_holds_what_it_names() {
        let tile = TileId::from_lon_lat(-122.33, 47.6, 14).unwrap();
        let other = tile.offset(3, 0).unwrap();
        let a = answer(tile, "h1");
        let cases: [(Invalidate<'_>, bool); 9] = [
            (Invalidate::Ids(&["h1"]), true),
            (Invalidate::Ids(&["h2"]), false),
            (Invalidate::Class("active"), true),
            (Invalidate::Class("sold"), false),
            (Invalidate::Tiles(&[tile]), true),
            (
                Invalidate::Tiles(&[tile.parent().unwrap().parent().unwrap()]),
                true,
            ),
            (Invalidate::Tiles(&[tile.children().unwrap()[1]]), true),
            (Invalidate::Tiles(&[other]), false),
            (Invalidate::All, true),
        ];
        for (what, covers) in cases {
            let mut o = Overtaking::default();
            let sent = o.count();
            o.record(&what, Some(sent));
            assert_eq!(o.covers(sent, &a, 14), covers, "{what:?}");
            // A request sent after it is not covered.
            assert!(!o.covers(o.count(), &a, 14), "{what:?}");
        }
        // A missing id the change names: the item may exist now.
        let mut o = Overtaking::default();
        o.record(&Invalidate::Ids(&["gone"]), Some(0));
        let missing = BatchResponse::<()> {
            missing: vec!["gone".into()],
            ..BatchResponse::default()
        };
        assert!(o.covers(0, &missing, 14));
    }

    #[test]
    fn past_the_kept_invalidations_an_older_answer_is_covered_whatever_it_holds() {
        let tile = TileId::from_lon_lat(-122.33, 47.6, 14).unwrap();
        let far = tile.offset(100, 0).unwrap();
        let mut o = Overtaking::default();
        for _ in 0..=MAX_OVERTAKING {
            o.record(&Invalidate::Tiles(&[far]), Some(0));
        }
        assert!(o.covers(0, &answer(tile, "h1"), 14));
        // One sent after the folded ones is judged by what is kept.
        assert!(!o.covers(2, &answer(tile, "h1"), 14));
    }

    #[test]
    fn nothing_is_kept_while_nothing_is_out() {
        let mut o = Overtaking::default();
        o.record(&Invalidate::All, None);
        assert!(o.kept.is_empty());
        o.record(&Invalidate::All, Some(1));
        o.record(&Invalidate::Class("x"), Some(2));
        assert_eq!(o.kept.len(), 1, "only what a request out predates is kept");
    }
}
