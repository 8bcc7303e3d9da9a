//! The caching-proxy policy, sans IO: how a batch request is answered from a store of data
//! tiles in front of an origin. The edge proxy ([`Proxy`](super::Proxy), whose store is one
//! [`ItemCache`](crate::cache::ItemCache) per tier) and the server (`server/src/batch.rs`,
//! whose store is its in-process or Redis tier) both run it; each owns its store and its
//! origin calls, and hands the policy what they found as values.
//!
//! One request goes through these steps:
//! 1. **plan** ([`Plan::new`]): route every requested tile onto the *data tiles* that hold
//!    its items ([`TileId::data_tiles`]), each data tile once; a tile more than
//!    [`Rules::split_levels`] coarser than the data zoom is *direct* (answered straight from
//!    the origin, never stored). A request whose tiles cover more than
//!    [`Rules::max_data_tiles`] data tiles is refused here ([`TooManyDataTiles`]), before
//!    the store is read or the origin paid: the request's cost is bounded up front.
//! 2. **read results** ([`Plan::read`]): the shell reads [`Plan::data_tiles`] from its store
//!    and says which it found; [`Read::origin_tiles`] is then the one origin call's tiles
//!    for everything missing (how a coarse tile with a missing data tile is asked for is the
//!    [`CoarseMiss`] rule).
//! 3. **origin results**: the shell makes that call; [`Read::cacheable`] says which of the
//!    origin's tile lists are written back to the store, [`Rules::write_back`] which of its
//!    items.
//! 4. **answer** ([`Read::assemble`]): per requested tile, the items of its sources (stored
//!    or fetched) that the *caller* may see and that lie inside the tile (a tile finer than
//!    the data zoom keeps only the items positioned inside it); each item once; requested
//!    ids found, missing, or left unanswered.
//!
//! The caller's verified tier is the only input to the filter in step 4, whatever tier the
//! store or the origin answered at, so an item above it never leaves through this step.

use crate::access::Access;
use crate::protocol::{ErrorCode, Item, TileList, Unanswered};
use crate::tile::TileId;
use crate::util::{HashMap, HashSet};

/// How a tile coarser than the data zoom (but within [`Rules::split_levels`]) is asked for
/// when some of its data tiles are not in the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoarseMiss {
    /// Ask for the missing data tiles themselves; stored ones are used (the server: its
    /// tier is shared by all callers, so every data tile is worth keeping).
    FetchDataTiles,
    /// Ask for the requested tile whole, so the origin request never has more tiles than
    /// the caller's, and answer it from the origin's list alone (the edge: only a tile whose
    /// data tiles are all fresh is answered from the store).
    ForwardTile,
}

/// The rules of one proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    /// The zoom of the store's tile lists.
    pub data_zoom: u8,
    /// How many levels coarser than `data_zoom` a requested tile may be and still be
    /// answered from (and written to) the store.
    pub split_levels: u8,
    /// See [`CoarseMiss`].
    pub coarse_miss: CoarseMiss,
    /// Most data tiles one request may cover once its coarse tiles are split
    /// ([`DEFAULT_MAX_DATA_TILES`] in both shells): past it [`Plan::new`] refuses it.
    pub max_data_tiles: usize,
}

/// The default of [`Rules::max_data_tiles`]: 1024, the package's default request (16 tiles,
/// coalesced up to 3 levels, so up to 64 data tiles each).
pub const DEFAULT_MAX_DATA_TILES: usize = 1024;

/// A request that covers too many data tiles ([`Rules::max_data_tiles`]); its message
/// names the count, the cap and what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the request's tiles cover more than {max} data tiles (zoom {data_zoom}; {at_least} \
     counted when it stopped), at most {max} are allowed: request fewer or finer tiles"
)]
pub struct TooManyDataTiles {
    /// Data tiles counted when the plan stopped (the first past the cap).
    pub at_least: usize,
    /// The cap.
    pub max: usize,
    /// The data zoom they were counted at.
    pub data_zoom: u8,
}

impl TooManyDataTiles {
    /// The protocol's error: `400 bad_request` with this message.
    pub fn to_error_body(&self) -> crate::protocol::ErrorBody {
        crate::protocol::ErrorBody {
            code: crate::protocol::ErrorCode::BadRequest,
            message: self.to_string(),
        }
    }
}

impl Rules {
    /// Whether the origin's list of `tile` is written back to the store: data tiles under
    /// [`CoarseMiss::FetchDataTiles`]; under [`CoarseMiss::ForwardTile`] also tiles up to
    /// [`Rules::split_levels`] coarser (the store splits them onto their data tiles).
    pub fn cacheable(&self, tile: TileId) -> bool {
        match self.coarse_miss {
            CoarseMiss::FetchDataTiles => tile.z() == self.data_zoom,
            CoarseMiss::ForwardTile => {
                tile.z() <= self.data_zoom && self.data_zoom - tile.z() <= self.split_levels
            }
        }
    }
}

/// Which of an origin answer's items a shell writes back to its store
/// ([`Rules::write_back`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteBack<'a> {
    /// Every item of the answer.
    All,
    /// Only the items with these ids.
    Only(HashSet<&'a str>),
}

impl WriteBack<'_> {
    /// Whether the item with this id is written back.
    pub fn keeps(&self, id: &str) -> bool {
        match self {
            WriteBack::All => true,
            WriteBack::Only(ids) => ids.contains(id),
        }
    }
}

impl Rules {
    /// The write-back rule, the same for every shell: of an origin answer, the tile lists
    /// that are [`Rules::cacheable`] are written to the store, and of its items those that
    /// such a list names or that the request asked for by id (`asked_ids`). An item that
    /// only a direct (too coarse) tile's list names is answered but not stored: no stored
    /// list leads to it, and a coarse tile may hold thousands of items.
    ///
    /// `lists` are the answer's tile lists as `(tile, ids)`.
    pub fn write_back<'a>(
        &self,
        lists: impl IntoIterator<Item = (TileId, &'a [String])> + Clone,
        asked_ids: &'a [String],
    ) -> WriteBack<'a> {
        if lists.clone().into_iter().all(|(t, _)| self.cacheable(t)) {
            return WriteBack::All;
        }
        let mut keep: HashSet<&'a str> = asked_ids.iter().map(String::as_str).collect();
        for (t, ids) in lists {
            if self.cacheable(t) {
                keep.extend(ids.iter().map(String::as_str));
            }
        }
        WriteBack::Only(keep)
    }
}

/// What the policy needs to know of a stored or fetched item.
pub trait ProxyItem {
    /// The item's id.
    fn id(&self) -> &str;
    /// Longitude.
    fn lon(&self) -> f64;
    /// Latitude.
    fn lat(&self) -> f64;
    /// The lowest tier allowed to see it.
    fn access(&self) -> Access;
}

impl<P> ProxyItem for Item<P> {
    fn id(&self) -> &str {
        &self.id
    }
    fn lon(&self) -> f64 {
        self.lon
    }
    fn lat(&self) -> f64 {
        self.lat
    }
    fn access(&self) -> Access {
        self.access
    }
}

impl<T: ProxyItem + ?Sized> ProxyItem for std::sync::Arc<T> {
    fn id(&self) -> &str {
        (**self).id()
    }
    fn lon(&self) -> f64 {
        (**self).lon()
    }
    fn lat(&self) -> f64 {
        (**self).lat()
    }
    fn access(&self) -> Access {
        (**self).access()
    }
}

/// How one requested tile is routed (step 1).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Route {
    /// From these entries of [`Plan::data_tiles`].
    Data(Vec<usize>),
    /// Straight from the origin.
    Direct,
}

/// Where one requested tile's answer comes from (step 2).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Source {
    /// These data tiles, each from the store when found, else from the origin.
    Data(Vec<usize>),
    /// The origin's list of this tile (the tile itself, or its data-zoom ancestor).
    Origin(TileId),
}

/// Step 1: the requested tiles routed onto data tiles.
#[derive(Clone, Debug)]
pub struct Plan {
    rules: Rules,
    tiles: Vec<TileId>,
    routes: Vec<Route>,
    data_tiles: Vec<TileId>,
}

impl Plan {
    /// Routes `tiles` (a decoded request's, so de-duplicated). Refuses, before routing any
    /// further, a request covering more than [`Rules::max_data_tiles`] data tiles.
    pub fn new(tiles: &[TileId], rules: Rules) -> Result<Plan, TooManyDataTiles> {
        let mut data_tiles = Vec::new();
        let mut index: HashMap<TileId, usize> = HashMap::new();
        let mut routes = Vec::with_capacity(tiles.len());
        for t in tiles {
            let route = match t.data_tiles(rules.data_zoom, rules.split_levels) {
                Some(ds) => Route::Data(
                    ds.into_iter()
                        .map(|d| {
                            *index.entry(d).or_insert_with(|| {
                                data_tiles.push(d);
                                data_tiles.len() - 1
                            })
                        })
                        .collect(),
                ),
                None => Route::Direct,
            };
            if data_tiles.len() > rules.max_data_tiles {
                return Err(TooManyDataTiles {
                    at_least: data_tiles.len(),
                    max: rules.max_data_tiles,
                    data_zoom: rules.data_zoom,
                });
            }
            routes.push(route);
        }
        Ok(Plan {
            rules,
            tiles: tiles.to_vec(),
            routes,
            data_tiles,
        })
    }

    /// The data tiles to read from the store, each once, in the order first requested.
    pub fn data_tiles(&self) -> &[TileId] {
        &self.data_tiles
    }

    /// The requested tiles too coarse for the store, answered straight from the origin.
    pub fn direct_tiles(&self) -> Vec<TileId> {
        self.tiles
            .iter()
            .zip(&self.routes)
            .filter(|(_, r)| **r == Route::Direct)
            .map(|(&t, _)| t)
            .collect()
    }

    /// Step 2: which of [`Plan::data_tiles`] the store holds (`found[i]` for
    /// `data_tiles()[i]`; a shorter slice counts the rest as not found).
    pub fn read(self, found: &[bool]) -> Read {
        let found: Vec<bool> = (0..self.data_tiles.len())
            .map(|i| found.get(i).copied().unwrap_or(false))
            .collect();
        let dz = self.rules.data_zoom;
        let sources = self
            .tiles
            .iter()
            .zip(&self.routes)
            .map(|(&t, route)| match route {
                Route::Direct => Source::Origin(t),
                Route::Data(idx) => match self.rules.coarse_miss {
                    CoarseMiss::FetchDataTiles => Source::Data(idx.clone()),
                    CoarseMiss::ForwardTile if idx.iter().all(|&i| found[i]) => {
                        Source::Data(idx.clone())
                    }
                    // A finer tile forwards its data tile, others themselves.
                    CoarseMiss::ForwardTile => Source::Origin(match idx.first() {
                        Some(&i) if t.z() > dz => self.data_tiles[i],
                        _ => t,
                    }),
                },
            })
            .collect();
        Read {
            plan: self,
            found,
            sources,
        }
    }
}

/// A stored or fetched tile list handed to [`Read::assemble`].
#[derive(Debug)]
pub struct TileSource<'a, I> {
    /// The list's items (any tier; the caller's filter is applied here).
    pub items: Vec<&'a I>,
    /// Seconds the list stays fresh, as the answer's `ttl`.
    pub ttl_s: Option<u32>,
}

/// What became of one requested id.
#[derive(Debug)]
pub enum IdSource<'a, I> {
    /// Found (in the store or the origin's answer); answered when the caller may see it.
    Found(&'a I),
    /// Known not to exist (or not for the caller): listed in `missing`.
    Missing,
    /// Not answered (the origin call failed, or its answer says nothing of it): left out
    /// and listed in [`Assembled::unanswered_ids`].
    Unanswered,
}

/// Step 4's result: the response's parts, items borrowed.
#[derive(Debug)]
pub struct Assembled<'a, I> {
    /// One list per requested tile that has an answer, in request order; its ids are
    /// borrowed from the items.
    pub tiles: Vec<TileList<&'a str>>,
    /// Every item listed or asked for, once, in first-listed order.
    pub items: Vec<&'a I>,
    /// Requested ids that do not exist for the caller.
    pub missing: Vec<String>,
    /// Requested tiles with no answer (their origin list is absent: the call failed or
    /// left them out), in request order. The shell reports them in the response's
    /// [`Unanswered`] `error` member, never as empty.
    pub unanswered_tiles: Vec<TileId>,
    /// Requested ids with no answer ([`IdSource::Unanswered`]), reported the same way.
    pub unanswered_ids: Vec<String>,
}

impl<I> Assembled<'_, I> {
    /// Whether something requested could not be answered.
    pub fn is_partial(&self) -> bool {
        !self.unanswered_tiles.is_empty() || !self.unanswered_ids.is_empty()
    }
}

/// How much one answer may hold ([`Assembled::fit`]): items, and bytes of JSON as a shell
/// counts them (an upper bound of what it writes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Room {
    pub items: usize,
    pub bytes: usize,
}

/// What [`Assembled::fit`] left out of an answer.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NotFitted {
    /// Requested tiles, then ids, that did not fit after what came before them (in request
    /// order): served when asked again
    /// ([`ErrorCode::ResponseFull`]).
    pub tiles: Vec<TileId>,
    pub ids: Vec<String>,
    /// Requested tiles that would not fit in an answer of their own, with the bytes and
    /// items that would take: never served at this bound
    /// ([`ErrorCode::PayloadTooLarge`]).
    pub too_large: Vec<(TileId, usize, usize)>,
}

impl NotFitted {
    /// Whether nothing was left out.
    pub fn is_empty(&self) -> bool {
        self.tiles.is_empty() && self.ids.is_empty() && self.too_large.is_empty()
    }

    /// The answer's `error` member with this added to `unanswered` (what it left out for
    /// other reasons): tiles and ids that did not fit after what came first make it
    /// `response_full` (the client asks them again at once, and whatever else is left out
    /// comes back in that answer with its own reason); tiles too large for any answer are
    /// `payload_too_large` when nothing else is left out, named with their size and the
    /// bounds (`max_items`, `max_bytes`: what one answer may hold). The message says each,
    /// cut to [`MAX_MESSAGE_BYTES`] (as is `unanswered`'s own).
    pub fn report(
        self,
        unanswered: Option<Unanswered>,
        max_items: usize,
        max_bytes: usize,
    ) -> Option<Unanswered> {
        let mut u = match (unanswered, self.is_empty()) {
            (None, true) => return None,
            (Some(u), _) => u,
            (None, false) => Unanswered {
                code: ErrorCode::PayloadTooLarge,
                message: String::new(),
                tiles: Vec::new(),
                ids: Vec::new(),
            },
        };
        let mut why = Vec::new();
        if !u.message.is_empty() {
            why.push(std::mem::take(&mut u.message));
        }
        if let Some((tile, bytes, items)) = self.too_large.first() {
            why.push(format!(
                "{} tiles are too large for one answer (first {tile}: about {bytes} bytes and \
                 {items} items alone, one answer holds at most {max_bytes} bytes and \
                 {max_items} items): request finer tiles",
                self.too_large.len()
            ));
            u.tiles.extend(self.too_large.iter().map(|(t, ..)| *t));
        }
        if !(self.tiles.is_empty() && self.ids.is_empty()) {
            u.code = ErrorCode::ResponseFull;
            why.push(format!(
                "{} of the tiles and {} of the ids asked for did not fit in this answer (one \
                 answer holds at most {max_bytes} bytes and {max_items} items): ask for them \
                 again",
                self.tiles.len(),
                self.ids.len()
            ));
            u.tiles.extend(self.tiles);
            u.ids.extend(self.ids);
        }
        let mut message = why.join("; ");
        if message.len() > MAX_MESSAGE_BYTES {
            let mut end = MAX_MESSAGE_BYTES;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        u.message = message;
        Some(u)
    }
}

/// What an id costs in a list of the answer: its quotes, a comma, and each byte escaped at
/// most once more (ids hold no control characters).
pub fn quoted_bytes(id: &str) -> usize {
    2 * id.len() + 3
}

/// What a tile list costs beside its ids: its keys, the tile's name, the longest `ttl`.
pub const LIST_BYTES: usize = 64;

/// What an answer object costs beside its lists: its keys and its tier.
pub const ANSWER_BYTES: usize = 96;

/// Longest message of a partial answer's `error` that [`NotFitted::report`] writes, in
/// bytes (a longer one is cut).
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// An upper bound of a partial answer's `error` member, `,"error":` included: its keys and
/// code, a message of `message_len` bytes each escaped as `\u00XX` (an origin's message
/// passed on may hold control characters), each tile and id quoted.
pub fn error_bytes_at_most(message_len: usize, tiles: &[TileId], ids: &[String]) -> usize {
    128 + 6 * message_len + 32 * tiles.len() + ids.iter().map(|i| quoted_bytes(i)).sum::<usize>()
}

/// What an answer to `tiles` and `ids` keeps aside beside its lists, items and `missing`:
/// the object's keys, and an `error` member leaving out every tile and id asked for with
/// the longest message. [`Room::bytes`] is what clients read less this.
pub fn reserved_bytes(tiles: &[TileId], ids: &[String]) -> usize {
    ANSWER_BYTES + error_bytes_at_most(MAX_MESSAGE_BYTES, tiles, ids)
}

impl<'a, I: ProxyItem> Assembled<'a, I> {
    /// Keeps what fits in `room`, in request order: each tile's list (its ids, and its
    /// items not already in the answer), then each requested id (its item or its `missing`
    /// entry), up to the first that does not fit; that one and everything after it is left
    /// out (asked again later), except a tile that would not fit even alone, which is left
    /// out as [`NotFitted::too_large`] and passed over. `item_bytes` is an item's cost as the
    /// shell writes it, its separator included. What is left out is removed from the answer
    /// (lists, items, `missing`) and returned; the shell reports it.
    pub fn fit(
        &mut self,
        room: Room,
        requested_ids: &[String],
        item_bytes: impl Fn(&I) -> usize,
    ) -> NotFitted {
        // Whether all of it fits, counted without sets (the common case: nothing to leave
        // out): every list, every item once and every requested id as its `missing` entry,
        // at least what the count below charges.
        let all_bytes = (self.tiles.iter())
            .map(|l| LIST_BYTES + l.ids.iter().map(|i| quoted_bytes(i)).sum::<usize>())
            .chain(self.items.iter().map(|it| item_bytes(it)))
            .chain(requested_ids.iter().map(|i| quoted_bytes(i)))
            .fold(0usize, usize::saturating_add);
        if all_bytes <= room.bytes && self.items.len() <= room.items {
            return NotFitted::default();
        }
        self.fit_counted(room, requested_ids, item_bytes)
    }

    /// [`fit`](Self::fit) counted list by list and id by id.
    fn fit_counted(
        &mut self,
        room: Room,
        requested_ids: &[String],
        item_bytes: impl Fn(&I) -> usize,
    ) -> NotFitted {
        let by_id: HashMap<&str, &'a I> = self.items.iter().map(|it| (it.id(), *it)).collect();
        let mut kept: HashSet<&str> = HashSet::with_capacity(self.items.len());
        let (mut bytes, mut items, mut full) = (0usize, 0usize, false);
        let mut out = NotFitted::default();
        let mut lists = Vec::with_capacity(self.tiles.len());
        for list in std::mem::take(&mut self.tiles) {
            let mut own: HashSet<&str> = HashSet::new();
            let (mut alone, mut alone_items) = (LIST_BYTES, 0);
            let (mut more, mut more_items) = (LIST_BYTES, 0);
            for id in &list.ids {
                alone += quoted_bytes(id);
                more += quoted_bytes(id);
                let Some(it) = by_id.get(*id) else {
                    continue;
                };
                if own.insert(it.id()) {
                    let b = item_bytes(it);
                    (alone, alone_items) = (alone + b, alone_items + 1);
                    if !kept.contains(it.id()) {
                        (more, more_items) = (more + b, more_items + 1);
                    }
                }
            }
            if alone > room.bytes || alone_items > room.items {
                out.too_large.push((list.tile, alone, alone_items));
                continue;
            }
            full = full || bytes + more > room.bytes || items + more_items > room.items;
            if full {
                out.tiles.push(list.tile);
                continue;
            }
            (bytes, items) = (bytes + more, items + more_items);
            kept.extend(own);
            lists.push(list);
        }
        self.tiles = lists;
        let missing: HashSet<&str> = self.missing.iter().map(String::as_str).collect();
        let mut kept_missing: HashSet<&str> = HashSet::new();
        for id in requested_ids {
            let (more, more_items) = match by_id.get(id.as_str()) {
                Some(it) if kept.contains(it.id()) => (0, 0),
                Some(it) => (item_bytes(it), 1),
                None if missing.contains(id.as_str()) => (quoted_bytes(id), 0),
                None => continue, // unanswered already
            };
            // One already in the answer (an item a list holds, an id asked twice) costs
            // nothing, and is never left out.
            full = full || bytes + more > room.bytes || items + more_items > room.items;
            if full && more > 0 {
                if !out.ids.contains(id) {
                    out.ids.push(id.clone());
                }
                continue;
            }
            (bytes, items) = (bytes + more, items + more_items);
            match by_id.get(id.as_str()) {
                Some(it) => kept.insert(it.id()),
                None => kept_missing.insert(id.as_str()),
            };
        }
        self.items.retain(|it| kept.contains(it.id()));
        drop(missing);
        self.missing.retain(|m| kept_missing.contains(m.as_str()));
        out
    }
}

/// Steps 2 to 4: a plan with what the store held.
#[derive(Clone, Debug)]
pub struct Read {
    plan: Plan,
    found: Vec<bool>,
    sources: Vec<Source>,
}

impl Read {
    /// The plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The tiles of the one origin call: the missing data tiles, then the tiles forwarded
    /// whole, each once. Empty when the store answers every tile.
    pub fn origin_tiles(&self) -> Vec<TileId> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        let mut missing_data = vec![false; self.found.len()];
        for s in &self.sources {
            if let Source::Data(idx) = s {
                for &i in idx {
                    missing_data[i] = !self.found[i];
                }
            }
        }
        for (i, &d) in self.plan.data_tiles.iter().enumerate() {
            if missing_data[i] && seen.insert(d) {
                out.push(d);
            }
        }
        for s in &self.sources {
            if let Source::Origin(t) = s {
                if seen.insert(*t) {
                    out.push(*t);
                }
            }
        }
        out
    }

    /// The data tiles (indices into [`Plan::data_tiles`]) whose stored lists the answer
    /// uses: the shell reads (or keeps) only these.
    pub fn stored_tiles(&self) -> Vec<usize> {
        let mut used = vec![false; self.found.len()];
        for s in &self.sources {
            if let Source::Data(idx) = s {
                for &i in idx {
                    used[i] = self.found[i];
                }
            }
        }
        (0..used.len()).filter(|&i| used[i]).collect()
    }

    /// Whether some requested tile is answered from the store.
    pub fn uses_store(&self) -> bool {
        !self.stored_tiles().is_empty()
    }

    /// Whether the origin's list of `tile` is written back to the store
    /// ([`Rules::cacheable`]).
    pub fn cacheable(&self, tile: TileId) -> bool {
        self.plan.rules.cacheable(tile)
    }

    /// Which items of the origin's answer are written back ([`Rules::write_back`]).
    pub fn write_back<'a>(
        &self,
        lists: impl IntoIterator<Item = (TileId, &'a [String])> + Clone,
        asked_ids: &'a [String],
    ) -> WriteBack<'a> {
        self.plan.rules.write_back(lists, asked_ids)
    }

    /// Step 4: the answer for `caller`. `stored(i)` is the store's list of data tile `i`
    /// (asked only for [`Read::stored_tiles`]), `fetched(t)` the origin's list of tile `t`
    /// (`None` when it has none: the requested tiles it is part of are left out and listed
    /// in [`Assembled::unanswered_tiles`]),
    /// `ids` one [`IdSource`] per requested id in `requested_ids`' order. A requested id
    /// whose item a list already put in the answer is answered by it, whatever its source
    /// says: the store's list and the id's source can disagree (a negative entry older than
    /// the origin's list naming the item, a stored list older than the item's new tier),
    /// and an id both returned and `missing` (or left out) makes the whole answer invalid.
    pub fn assemble<'a, I: ProxyItem>(
        &self,
        caller: Access,
        mut stored: impl FnMut(usize) -> Option<TileSource<'a, I>>,
        mut fetched: impl FnMut(TileId) -> Option<TileSource<'a, I>>,
        requested_ids: &[String],
        ids: impl IntoIterator<Item = IdSource<'a, I>>,
    ) -> Assembled<'a, I> {
        let dz = self.plan.rules.data_zoom;
        let mut seen: HashSet<&'a str> = HashSet::new();
        let mut out = Assembled {
            tiles: Vec::with_capacity(self.plan.tiles.len()),
            items: Vec::new(),
            missing: Vec::new(),
            unanswered_tiles: Vec::new(),
            unanswered_ids: Vec::new(),
        };
        for (&t, source) in self.plan.tiles.iter().zip(&self.sources) {
            let lists: Vec<TileSource<'a, I>> = match source {
                Source::Data(idx) => {
                    let lists: Vec<_> = idx
                        .iter()
                        .filter_map(|&i| {
                            if self.found[i] {
                                stored(i)
                            } else {
                                fetched(self.plan.data_tiles[i])
                            }
                        })
                        .collect();
                    // A data tile with no list (the origin's answer left it out): the
                    // tile would be shown with a hole, so it is not answered at all.
                    if lists.len() < idx.len() {
                        out.unanswered_tiles.push(t);
                        continue;
                    }
                    lists
                }
                Source::Origin(f) => match fetched(*f) {
                    Some(list) => vec![list],
                    None => {
                        out.unanswered_tiles.push(t);
                        continue;
                    }
                },
            };
            let ttl = lists.iter().filter_map(|l| l.ttl_s).min();
            let mut list_ids = Vec::new();
            for list in lists {
                seen.reserve(list.items.len());
                for it in list.items {
                    if !caller.can_see(it.access())
                        || (t.z() > dz && !t.contains_point(it.lon(), it.lat()))
                    {
                        continue;
                    }
                    list_ids.push(it.id());
                    if seen.insert(it.id()) {
                        out.items.push(it);
                    }
                }
            }
            out.tiles.push(TileList {
                tile: t,
                ids: list_ids,
                ttl,
            });
        }
        for (id, source) in requested_ids.iter().zip(ids) {
            if seen.contains(id.as_str()) {
                continue;
            }
            match source {
                IdSource::Found(it) if caller.can_see(it.access()) => {
                    if seen.insert(it.id()) {
                        out.items.push(it);
                    }
                }
                IdSource::Found(_) | IdSource::Missing => out.missing.push(id.clone()),
                IdSource::Unanswered => out.unanswered_ids.push(id.clone()),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tile(s: &str) -> TileId {
        s.parse().unwrap()
    }

    fn rules(coarse_miss: CoarseMiss) -> Rules {
        Rules {
            data_zoom: 14,
            split_levels: 2,
            coarse_miss,
            max_data_tiles: DEFAULT_MAX_DATA_TILES,
        }
    }

    #[test]
    fn plan_routes_each_data_tile_once() {
        let tiles = [
            tile("15/5248/11442"),
            tile("15/5249/11442"),
            tile("13/1312/2860"),
            tile("11/328/715"),
        ];
        let plan = Plan::new(&tiles, rules(CoarseMiss::FetchDataTiles)).unwrap();
        // The two z15 tiles share their z14 ancestor, which is one of the z13 tile's four.
        assert_eq!(plan.data_tiles().len(), 4);
        assert_eq!(plan.direct_tiles(), vec![tile("11/328/715")]);
    }

    #[test]
    fn coarse_misses_ask_data_tiles_or_the_tile_whole() {
        let tiles = [tile("13/1312/2860"), tile("16/10496/22884")];
        let found = [true, false, true, true];
        let server = Plan::new(&tiles, rules(CoarseMiss::FetchDataTiles))
            .unwrap()
            .read(&found);
        let missing = server.plan().data_tiles()[1];
        assert_eq!(server.origin_tiles(), vec![missing]);
        assert_eq!(server.stored_tiles(), vec![0, 2, 3]);
        let edge = Plan::new(&tiles, rules(CoarseMiss::ForwardTile))
            .unwrap()
            .read(&found);
        assert_eq!(edge.origin_tiles(), vec![tile("13/1312/2860")]);
        // The z16 tile's data tile is found, so it alone is answered from the store.
        let d16 = tile("16/10496/22884").ancestor(14).unwrap();
        let i16 = edge.plan().data_tiles().iter().position(|&d| d == d16);
        assert_eq!(edge.stored_tiles(), vec![i16.unwrap()]);
        assert!(edge.cacheable(tile("13/1312/2860")) && !server.cacheable(tile("13/1312/2860")));
        assert!(!edge.cacheable(tile("11/328/715")));
    }

    #[test]
    fn write_back_keeps_items_of_cacheable_lists_and_asked_ids_for_both_shells() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let (data, coarse, far) = (
            tile("14/2624/5721"),
            tile("13/1312/2860"),
            tile("11/328/715"),
        );
        let (d, c, f, asked) = (
            s(&["a", "b"]),
            s(&["b", "c"]),
            s(&["c", "d", "e"]),
            s(&["e"]),
        );
        for coarse_miss in [CoarseMiss::FetchDataTiles, CoarseMiss::ForwardTile] {
            let r = rules(coarse_miss);
            // Every list cacheable: every item is written.
            let only_data = [(data, &d[..])];
            assert_eq!(r.write_back(only_data, &asked), WriteBack::All);
            // A direct list: its items are kept only when another list names them or they
            // were asked for by id.
            let keep = r.write_back([(data, &d[..]), (coarse, &c[..]), (far, &f[..])], &asked);
            let kept: Vec<&str> = ["a", "b", "c", "d", "e"]
                .into_iter()
                .filter(|id| keep.keeps(id))
                .collect();
            let want: &[&str] = match coarse_miss {
                // The server stores data tiles only: the z13 list is direct too.
                CoarseMiss::FetchDataTiles => &["a", "b", "e"],
                CoarseMiss::ForwardTile => &["a", "b", "c", "e"],
            };
            assert_eq!(kept, want, "{coarse_miss:?}");
        }
    }

    struct It(&'static str, f64, f64, Access);
    impl ProxyItem for It {
        fn id(&self) -> &str {
            self.0
        }
        fn lon(&self) -> f64 {
            self.1
        }
        fn lat(&self) -> f64 {
            self.2
        }
        fn access(&self) -> Access {
            self.3
        }
    }

    proptest::proptest! {
        /// `fit`'s count without sets (all of it fits) decides as the count list by list
        /// does: the same answer and the same left out, whatever the room.
        #[test]
        fn fit_is_fit_counted(
            lists in proptest::collection::vec(proptest::collection::vec(0usize..12, 0..6), 0..6),
            asked in proptest::collection::vec(0usize..16, 0..6),
            bytes in 0usize..2000,
            items in 0usize..14,
        ) {
            const NAMES: [&str; 16] = [
                "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p",
            ];
            let names: Vec<String> = NAMES.iter().map(|n| n.to_string()).collect();
            let pool: Vec<It> = NAMES[..12].iter().map(|n| It(n, 0.0, 0.0, Access::Public)).collect();
            let asked: Vec<String> = asked.iter().map(|&i| names[i].clone()).collect();
            let assembled = || {
                let tiles: Vec<TileList<&str>> = lists.iter().enumerate().map(|(x, ids)| TileList {
                    tile: TileId::new(14, x as u32, 1).unwrap(),
                    ids: ids.iter().map(|&i| NAMES[i]).collect(),
                    ttl: None,
                }).collect();
                let mut used: Vec<usize> = lists.iter().flatten().copied().collect();
                used.extend(asked.iter().filter_map(|a| names[..12].iter().position(|n| n == a)));
                used.sort_unstable();
                used.dedup();
                Assembled {
                    tiles,
                    items: used.iter().map(|&i| &pool[i]).collect(),
                    missing: asked.iter().filter(|a| !names[..12].contains(a)).cloned().collect(),
                    unanswered_tiles: Vec::new(),
                    unanswered_ids: Vec::new(),
                }
            };
            let room = Room { items, bytes };
            let (mut a, mut b) = (assembled(), assembled());
            let (l, r) = (a.fit(room, &asked, |_| 100), b.fit_counted(room, &asked, |_| 100));
            proptest::prop_assert_eq!(l, r);
            let seen = |x: &Assembled<'_, It>| {
                let t: Vec<(TileId, Vec<String>)> = x.tiles.iter().map(|l| (l.tile, l.ids.iter().map(|s| s.to_string()).collect())).collect();
                let i: Vec<&str> = x.items.iter().map(|it| it.0).collect();
                (t, i, x.missing.clone())
            };
            proptest::prop_assert_eq!(seen(&a), seen(&b));
        }
    }

    /// `fit` keeps what fits in request order up to the first that does not (tiles, then
    /// ids; an id already in the answer costs nothing), passes over a tile too large
    /// alone, and takes what it left out out of the lists, items and `missing`.
    #[test]
    fn fit_keeps_what_fits_in_request_order() {
        let ids = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
        let items: Vec<It> = ids
            .iter()
            .map(|id| It(id, 0.0, 0.0, Access::Public))
            .collect();
        let (t1, t2, t3, t4) = (
            tile("14/1/1"),
            tile("14/2/1"),
            tile("14/3/1"),
            tile("14/4/1"),
        );
        let list = |t, ids: &[&'static str]| TileList {
            tile: t,
            ids: ids.to_vec(),
            ttl: None,
        };
        let asked: Vec<String> = ["a", "m", "j"].iter().map(|s| s.to_string()).collect();
        let assembled = || Assembled {
            tiles: vec![
                list(t1, &["a", "b"]),
                list(t2, &["c", "d", "e", "f", "g"]),
                list(t3, &["b", "h"]),
                list(t4, &["i"]),
            ],
            items: items.iter().collect(),
            missing: vec!["m".to_string()],
            unanswered_tiles: Vec::new(),
            unanswered_ids: Vec::new(),
        };
        let names = |a: &Assembled<'_, It>| {
            let tiles: Vec<TileId> = a.tiles.iter().map(|l| l.tile).collect();
            let items: Vec<&str> = a.items.iter().map(|it| it.0).collect();
            (tiles, items, a.missing.clone())
        };
        // Four items: t2 (five) never fits, t4 does after it; j is one item too many.
        let mut a = assembled();
        let room = Room {
            items: 4,
            bytes: usize::MAX,
        };
        let left = a.fit(room, &asked, |_| 100);
        assert_eq!(
            names(&a),
            (
                vec![t1, t3, t4],
                vec!["a", "b", "h", "i"],
                vec!["m".to_string()]
            )
        );
        assert_eq!(
            left,
            NotFitted {
                tiles: vec![],
                ids: vec!["j".to_string()],
                too_large: vec![(t2, LIST_BYTES + 25 + 500, 5)],
            }
        );
        // 300 bytes: t1 (64 + 10 + 200) fits, t3 does not, nor anything after it but `a`.
        let mut a = assembled();
        let room = Room {
            items: usize::MAX,
            bytes: 300,
        };
        let left = a.fit(room, &asked, |_| 100);
        assert_eq!(names(&a), (vec![t1], vec!["a", "b"], vec![]));
        assert_eq!(left.tiles, [t3, t4]);
        assert_eq!(left.ids, ["m", "j"]);
        assert_eq!(left.too_large.len(), 1);
        // Room for all: nothing left out, nothing changed.
        let mut a = assembled();
        let room = Room {
            items: usize::MAX,
            bytes: usize::MAX,
        };
        assert!(a.fit(room, &asked, |_| 100).is_empty());
        assert_eq!(names(&a).0, [t1, t2, t3, t4]);
        assert_eq!(a.items.len(), 10);
    }

    #[test]
    fn assemble_filters_by_caller_and_position() {
        let fine = tile("15/5248/11442");
        let b = fine.bounds();
        let (lon, lat) = ((b.west + b.east) / 2.0, (b.south + b.north) / 2.0);
        let inside = It("in", lon, lat, Access::Public);
        let outside = It("out", lon + 0.1, lat, Access::Public);
        let secret = It("agent", lon, lat, Access::Agent);
        let all = vec![&inside, &outside, &secret];
        let read = Plan::new(&[fine], rules(CoarseMiss::FetchDataTiles))
            .unwrap()
            .read(&[true]);
        let asked = vec!["agent".to_string(), "gone".to_string(), "later".to_string()];
        let got = read.assemble(
            Access::Public,
            |_| {
                Some(TileSource {
                    items: all.clone(),
                    ttl_s: Some(30),
                })
            },
            |_| None,
            &asked,
            [
                IdSource::Found(&secret),
                IdSource::Missing,
                IdSource::Unanswered,
            ],
        );
        assert_eq!(got.tiles[0].ids, vec!["in".to_string()]);
        assert_eq!(got.tiles[0].ttl, Some(30));
        assert_eq!(got.items.len(), 1);
        // Asked for by id above the caller's tier: missing, not served.
        assert_eq!(got.missing, vec!["agent".to_string(), "gone".to_string()]);
        // Not answered: listed as such, not as missing.
        assert_eq!(got.unanswered_ids, vec!["later".to_string()]);
        assert!(got.unanswered_tiles.is_empty() && got.is_partial());
    }

    /// Found by a random hostile-origin run of the edge proxy: an id the proxy's negative
    /// cache held as missing, asked beside a tile whose fresh list names its item, was
    /// answered both in `items` and in `missing`, which clients refuse as a whole.
    #[test]
    fn an_id_a_list_answers_is_neither_missing_nor_left_out() {
        let fine = tile("15/5248/11442");
        let b = fine.bounds();
        let (lon, lat) = ((b.west + b.east) / 2.0, (b.south + b.north) / 2.0);
        let listed = It("listed", lon, lat, Access::Public);
        let stale = It("raised", lon, lat, Access::Public);
        let raised = It("raised", lon, lat, Access::Agent);
        let read = Plan::new(&[fine], rules(CoarseMiss::FetchDataTiles))
            .unwrap()
            .read(&[true]);
        let asked = ["listed", "raised", "other", "gone"]
            .map(String::from)
            .to_vec();
        let got = read.assemble(
            Access::Public,
            |_| {
                Some(TileSource {
                    items: vec![&listed, &stale],
                    ttl_s: Some(30),
                })
            },
            |_| None,
            &asked,
            [
                IdSource::Missing,
                IdSource::Found(&raised),
                IdSource::Unanswered,
                IdSource::Missing,
            ],
        );
        let ids: Vec<&str> = got.items.iter().map(|it| it.id()).collect();
        assert_eq!(ids, ["listed", "raised"]);
        assert!(got.items.iter().all(|it| it.access() == Access::Public));
        assert_eq!(got.missing, ["gone"]);
        assert_eq!(got.unanswered_ids, ["other"]);
    }

    #[test]
    fn a_plan_past_max_data_tiles_is_refused_before_routing_the_rest() {
        // 17 z12 tiles, 16 data tiles each: 272 > 256 (a cap set below the default).
        let tiles: Vec<TileId> = (0..17)
            .map(|x| tile(&format!("12/{}/1430", 650 + x)))
            .collect();
        let capped = |coarse_miss| Rules {
            max_data_tiles: 256,
            ..rules(coarse_miss)
        };
        let r = capped(CoarseMiss::FetchDataTiles);
        let err = Plan::new(&tiles, r).unwrap_err();
        assert_eq!((err.at_least, err.max), (272, 256));
        assert!(err.to_string().contains("at most 256 are allowed"));
        assert_eq!(err.to_error_body().code.http_status(), 400);
        // 16 of them are exactly at the cap; shared data tiles count once.
        assert_eq!(Plan::new(&tiles[..16], r).unwrap().data_tiles().len(), 256);
        let mut overlapping = tiles[..16].to_vec();
        overlapping.push(tile("13/1300/2860"));
        assert!(Plan::new(&overlapping, r).is_ok());
        // The edge's rules refuse the same request.
        assert!(Plan::new(&tiles, capped(CoarseMiss::ForwardTile)).is_err());
        // The default cap takes 16 tiles of 8x8 (`batch.coalesceLevels` 3), not one more.
        let z11: Vec<TileId> = (0..17)
            .map(|x| tile(&format!("11/{}/715", 320 + x)))
            .collect();
        let r = Rules {
            split_levels: 3,
            ..rules(CoarseMiss::FetchDataTiles)
        };
        assert_eq!(Plan::new(&z11[..16], r).unwrap().data_tiles().len(), 1024);
        let err = Plan::new(&z11, r).unwrap_err();
        assert_eq!((err.at_least, err.max), (1088, DEFAULT_MAX_DATA_TILES));
    }
}
