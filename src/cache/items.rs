//! The item LRU: items by id in one recency list (the item store, `store.rs`) bounded by
//! count and bytes, with the items
//! of visible tiles, then those of tiles a host loads, protected from eviction (see
//! [`ItemCache`]'s docs for how).

use super::classes::{ClassIndex, Classes};
use super::key::ItemKey;

use super::{check_id, expiry, short, CacheError, Expiry, ItemCache};
use crate::access::Access;
use crate::tile::{TileId, MAX_ZOOM};
use crate::util::Num;

/// What the backend says about an item, besides its payload.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemMeta {
    /// Longitude, finite, in −180..=180.
    pub lon: f64,
    /// Latitude, finite, in −90..=90.
    pub lat: f64,
    /// Item class, keying [`CacheConfig::class_ttl_ms`](super::CacheConfig::class_ttl_ms).
    pub class: String,
    /// The lowest tier allowed to see the item.
    pub access: Access,
    /// TTL the server gave, overriding the class TTL.
    pub ttl_ms: Option<u64>,
    /// Size charged against [`CacheConfig::max_bytes`](super::CacheConfig::max_bytes); at most `max_bytes`.
    pub size_bytes: usize,
}

/// Bytes of bookkeeping charged per cached item on top of its id, class and payload (its
/// slot in the item store, the position's tile, class index and expiry among it: 44 bytes
/// on wasm32, 48 while the class was a pointer and the slot 8-byte aligned; its tile-list
/// entry, 4; and its share of the hash tables, about 8: about 56 bytes on wasm32 in all, 71
/// when the item first kept its position as a zoom-24 tile, 87 before that, 95 before the
/// browser's payload dropped its size; the charge is kept, so what a `max_bytes` holds is
/// unchanged).
pub const ITEM_OVERHEAD_BYTES: usize = 96;

/// The bytes an item is charged in a cache ([`ItemMeta::size_bytes`]): its id, class and
/// payload plus [`ITEM_OVERHEAD_BYTES`]. The one estimate the client, the edge proxy and the
/// server's tier all use.
///
/// ```
/// use tilewarm::cache::item_size_bytes;
/// assert_eq!(item_size_bytes("h1", "active", 10), 2 + 6 + 10 + 96);
/// ```
pub fn item_size_bytes(id: &str, class: &str, payload_bytes: usize) -> usize {
    ITEM_OVERHEAD_BYTES + id.len() + class.len() + payload_bytes
}

/// One cached item.
///
/// Its fields are laid out for the item store's slot that holds it (on wasm32: this and two
/// `u32` links, 44 bytes with the browser's payload, aligned to 4 bytes): the id is inline
/// when short (`ItemKey`), and the position is kept as the zoom-24 tile it falls in, in one
/// 64-bit word with the data zoom, the tier and the class's index in the cache's table of
/// class names (`TileTier`; its name: [`ItemCache::class_of`], or a read's [`Lookup`]).
/// That word and the expiry are each kept as two `u32`s (`SplitU64`), so no field needs
/// 8-byte alignment. That tile answers every question the cache asks of the position exactly:
/// the data tile is its ancestor, and a tile contains the point
/// ([`TileId::contains_point`]) exactly when it contains that tile. The exact longitude and
/// latitude are not kept: a cache whose items are written out again keeps them in its
/// payload (the edge proxy's, the server's stored items), and the browser's items have them
/// in their JS objects.
#[derive(Debug, Clone)]
pub struct CacheItem<P> {
    pub(super) id: ItemKey,
    pub(super) place: TileTier,
    pub(super) expires: SplitU64,
    pub(super) size_bytes: usize,
    pub(super) payload: P,
}

/// The class index an insert stores ([`ItemCache::insert`]'s check).
#[derive(Clone, Copy, Debug)]
enum Class {
    /// An index the name has, or one no held item has, given to it.
    Held(ClassIndex),
    /// The index of the old version of the item, the last item of its class, which the
    /// new name takes once that version has left its slot (every other index being held).
    Replacing(ClassIndex),
}

/// A `u64` kept as two `u32`s: a field of this type needs only 4-byte alignment, so the item
/// store's slot on wasm32 is 44 bytes, not 48 (a `u64` field made it 8-byte aligned).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct SplitU64([u32; 2]);

impl SplitU64 {
    pub(super) fn new(value: u64) -> SplitU64 {
        SplitU64([value as u32, (value >> 32) as u32])
    }

    #[inline(always)]
    pub(super) fn get(self) -> u64 {
        u64::from(self.0[0]) | u64::from(self.0[1]) << 32
    }
}

/// An item's position, data zoom, tier and class in one word: the zoom-24 tile its
/// position falls in (x and y, 24 bits each, as [`TileId::to_u64`] packs them), the data
/// zoom above them (5 bits: at most 24), the tier's rank above that (2 bits) and the
/// class's index in the cache's table of names above that (9 bits: up to
/// [`MAX_CLASSES`](super::MAX_CLASSES)). The data tile is derived from the zoom-24 tile (its
/// ancestor at the data zoom, the tile [`TileId::from_lon_lat`] gives at that zoom: scaling
/// by a power of two is exact, so both floor the same number).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct TileTier(SplitU64);

// The class's index fits in the bits left (`MAX_CLASSES` is what they can tell apart).
const _: () = assert!(super::MAX_CLASSES <= 1 << (64 - TileTier::CLASS_SHIFT));

impl TileTier {
    const ZOOM_SHIFT: u32 = 48;
    const TIER_SHIFT: u32 = 53;
    const CLASS_SHIFT: u32 = 55;
    /// The zoom-24 tile's x and y.
    const POINT_BITS: u64 = (1 << Self::ZOOM_SHIFT) - 1;
    const AXIS_BITS: u64 = (1 << MAX_ZOOM) - 1;
    /// The data zoom's bits (the zoom itself is at most 24).
    const ZOOM_BITS: u64 = 0x1f << Self::ZOOM_SHIFT;

    /// `point`: the zoom-[`MAX_ZOOM`] tile of the item's position; `data_zoom`: at most
    /// [`MAX_ZOOM`]; `class`: less than [`MAX_CLASSES`](super::MAX_CLASSES).
    pub(super) fn new(point: TileId, data_zoom: u8, access: Access, class: ClassIndex) -> TileTier {
        TileTier(SplitU64::new(
            point.to_u64() & Self::POINT_BITS
                | u64::from(data_zoom) << Self::ZOOM_SHIFT & Self::ZOOM_BITS
                | u64::from(access.rank()) << Self::TIER_SHIFT
                | u64::from(class) << Self::CLASS_SHIFT,
        ))
    }

    /// The zoom-24 tile of the position.
    fn point(self) -> TileId {
        let word = self.0.get();
        TileId::from_packed(word & Self::POINT_BITS | u64::from(MAX_ZOOM) << Self::ZOOM_SHIFT)
    }

    /// The data tile: the zoom-24 tile's ancestor at the data zoom.
    fn tile(self) -> TileId {
        let word = self.0.get();
        let z = (word & Self::ZOOM_BITS) >> Self::ZOOM_SHIFT;
        let up = u64::from(MAX_ZOOM).saturating_sub(z);
        let x = (word >> MAX_ZOOM & Self::AXIS_BITS) >> up;
        let y = (word & Self::AXIS_BITS) >> up;
        TileId::from_packed(z << Self::ZOOM_SHIFT | x << MAX_ZOOM | y)
    }

    /// Whether the item's data tile is `tile`: the data zoom is `tile`'s and the zoom-24
    /// tile's x and y, without the bits below `tile`'s zoom, are `tile`'s. One mask and one
    /// comparison per item (reads compare every item; the mask and the value depend on
    /// `tile` alone, so inlined into a read's loop they are worked out once per tile).
    #[inline(always)]
    pub(super) fn lies_in(self, tile: TileId) -> bool {
        let up = u32::from(MAX_ZOOM.saturating_sub(tile.z()));
        let axis = Self::AXIS_BITS >> up << up;
        let mask = Self::ZOOM_BITS | axis << MAX_ZOOM | axis;
        let want = u64::from(tile.z()) << Self::ZOOM_SHIFT
            | u64::from(tile.x()) << up << MAX_ZOOM
            | u64::from(tile.y()) << up;
        self.0.get() & mask == want
    }

    fn access(self) -> Access {
        match self.0.get() >> Self::TIER_SHIFT & 3 {
            0 => Access::Public,
            1 => Access::Registered,
            2 => Access::Verified,
            _ => Access::Agent,
        }
    }

    /// The class's index in the cache's table of names.
    pub(super) fn class(self) -> ClassIndex {
        (self.0.get() >> Self::CLASS_SHIFT) as ClassIndex
    }
}

impl<P> CacheItem<P> {
    /// The item's id.
    pub fn id(&self) -> &str {
        &self.id
    }
    /// The lowest tier allowed to see it.
    pub fn access(&self) -> Access {
        self.place.access()
    }
    /// The data-zoom tile its position falls in.
    pub fn tile(&self) -> TileId {
        self.place.tile()
    }
    /// The zoom-[`MAX_ZOOM`] tile its position falls in: a tile contains the position
    /// ([`TileId::contains_point`]) exactly when it [contains](TileId::contains) this tile.
    /// The cache keeps this, not the exact longitude and latitude (see the type docs).
    ///
    /// ```
    /// use tilewarm::access::Access;
    /// use tilewarm::cache::{CacheConfig, ItemMeta, Priority, ItemCache};
    /// use tilewarm::tile::TileId;
    /// let mut cache = ItemCache::new(CacheConfig::default()).unwrap();
    /// let meta = ItemMeta { lon: 2.35, lat: 48.85, class: "active".into(),
    ///     access: Access::Public, ttl_ms: None, size_bytes: 10 };
    /// cache.insert("a", meta, (), 0, Priority::Visible).unwrap();
    /// let item = cache.peek("a", Access::Public, 0).unwrap().item;
    /// assert_eq!(item.point_tile(), TileId::from_lon_lat(2.35, 48.85, 24).unwrap());
    /// let t = TileId::from_lon_lat(2.35, 48.85, 16).unwrap();
    /// assert!(t.contains(item.point_tile()) && t.contains_point(2.35, 48.85));
    /// ```
    pub fn point_tile(&self) -> TileId {
        self.place.point()
    }
    /// First millisecond at which it is no longer fresh.
    pub fn expires_at_ms(&self) -> u64 {
        self.expires.get()
    }
    /// Size charged against `max_bytes`.
    pub fn size_bytes(&self) -> usize {
        self.size_bytes
    }
    /// The payload.
    pub fn payload(&self) -> &P {
        &self.payload
    }
}

/// An item found by [`ItemCache::get`] or [`ItemCache::peek`], with its class's name;
/// `stale` when it has expired but is within the stale-while-revalidate window (show it,
/// refetch it).
#[derive(Debug)]
pub struct Lookup<'a, P> {
    pub item: &'a CacheItem<P>,
    /// The item's class ([`ItemMeta::class`]).
    pub class: &'a str,
    pub stale: bool,
}

impl<'a, P> Lookup<'a, P> {
    pub(super) fn new(item: &'a CacheItem<P>, classes: &'a Classes, stale: bool) -> Self {
        Lookup {
            item,
            class: classes.name(item.place.class()),
            stale,
        }
    }
}

impl<P> Clone for Lookup<'_, P> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<P> Copy for Lookup<'_, P> {}

/// Why an item is inserted: for the viewport, for a host waiting for it, or ahead of both.
/// It decides which protected items the insert may evict (see [`ItemCache`]'s docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// Needed now, on screen: may evict the items of loading tiles, and those of visible
    /// tiles as a last resort, if nothing else is left.
    Visible,
    /// Waited for by a host (a tile it loads): may evict the items of other loading tiles
    /// if nothing unprotected is left, never those of visible tiles; refused instead.
    Loading,
    /// Wanted later: never evicts protected items; refused instead.
    Prefetch,
}

/// What an insert did to the rest of the cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InsertOutcome {
    /// Items evicted to make room.
    pub evicted: usize,
    /// A [`Priority::Prefetch`] insert was refused because only protected items could have
    /// made room, or a [`Priority::Loading`] one because only visible items could have.
    /// Nothing changed.
    pub rejected: bool,
}

/// Items and bytes positioned in some set of tiles.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Load {
    pub(super) items: usize,
    pub(super) bytes: usize,
}

impl Load {
    fn add(&mut self, size: usize) {
        self.items += 1;
        self.bytes += size;
    }
    fn sub(&mut self, size: usize) {
        self.items = self.items.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(size);
    }
    fn add_all(&mut self, other: Load) {
        self.items += other.items;
        self.bytes += other.bytes;
    }
}

impl<P> ItemCache<P> {
    /// Insert or replace an item. It expires at `now_ms + config.ttl_for(class, meta.ttl_ms)`.
    ///
    /// Errors (nothing changed): an empty id or one longer than [`MAX_ID_BYTES`](super::MAX_ID_BYTES), a
    /// longitude or latitude that is not finite or out of range, `size_bytes > max_bytes`.
    ///
    /// Makes room by evicting least-recently-used items, unprotected ones first, then those
    /// of loading tiles, then those of visible tiles (see the type docs). An insert that
    /// could only fit by evicting items it may not evict (a [`Priority::Prefetch`] one:
    /// protected items; a [`Priority::Loading`] one: visible items) is refused:
    /// `rejected: true`, counted in [`CacheStats::rejected`](super::CacheStats::rejected),
    /// nothing changed (a replaced item stays as it was).
    ///
    /// Replacing an item whose position moved to another data tile moves its id from the old
    /// tile's list to the new tile's (if that list is held, complete, and fetched at a tier
    /// that may see the item).
    ///
    /// ```
    /// use tilewarm::access::Access;
    /// use tilewarm::cache::{CacheConfig, ItemMeta, Priority, ItemCache};
    /// let config = CacheConfig { max_items: 1, ..CacheConfig::default() };
    /// let mut cache = ItemCache::new(config).unwrap();
    /// let meta = ItemMeta { lon: 2.35, lat: 48.85, class: "active".into(),
    ///     access: Access::Public, ttl_ms: None, size_bytes: 10 };
    /// cache.insert("a", meta.clone(), 1, 0, Priority::Visible).unwrap();
    /// let out = cache.insert("b", meta, 2, 0, Priority::Visible).unwrap();
    /// assert_eq!(out.evicted, 1);
    /// assert!(!cache.contains("a") && cache.contains("b"));
    /// ```
    pub fn insert(
        &mut self,
        id: &str,
        meta: ItemMeta,
        payload: P,
        now_ms: u64,
        priority: Priority,
    ) -> Result<InsertOutcome, CacheError> {
        self.insert_or_return(id, meta, payload, now_ms, priority, &mut Vec::new())
            .map_err(|(e, _)| e)
            .map(|(outcome, _)| outcome)
    }

    /// [`insert`](Self::insert), handing the payload back when it is not stored: with the
    /// outcome of a refused insert (`rejected`), and with the error of one that failed. Each
    /// item evicted to make room goes to `evicted` (its id and payload).
    pub(crate) fn insert_or_return(
        &mut self,
        id: &str,
        meta: ItemMeta,
        payload: P,
        now_ms: u64,
        priority: Priority,
        evicted: &mut Vec<(ItemKey, P)>,
    ) -> Result<(InsertOutcome, Option<P>), (CacheError, P)> {
        match self.check_item(id, &meta) {
            Ok((point, class)) => {
                Ok(self.insert_checked(id, point, class, meta, payload, now_ms, priority, evicted))
            }
            Err(e) => Err((e, payload)),
        }
    }

    /// The zoom-[`MAX_ZOOM`] tile of the position of an item [`insert`](Self::insert) may
    /// store, and its class's index; its errors otherwise.
    fn check_item(&mut self, id: &str, meta: &ItemMeta) -> Result<(TileId, Class), CacheError> {
        self.changed();
        check_id(id)?;
        let (lon, lat, size_bytes) = (meta.lon, meta.lat, meta.size_bytes);
        if !lon.is_finite() || !(-180.0..=180.0).contains(&lon) {
            return Err(CacheError::InvalidItem {
                id: short(id),
                reason: format!(
                    "longitude must be a finite number in -180..=180, got {}",
                    Num(lon)
                ),
            });
        }
        if !lat.is_finite() || !(-90.0..=90.0).contains(&lat) {
            return Err(CacheError::InvalidItem {
                id: short(id),
                reason: format!(
                    "latitude must be a finite number in -90..=90, got {}",
                    Num(lat)
                ),
            });
        }
        if size_bytes > self.config.max_bytes {
            return Err(CacheError::ItemTooLarge {
                id: short(id),
                size_bytes,
                max_bytes: self.config.max_bytes,
            });
        }
        let point =
            TileId::from_lon_lat(lon, lat, MAX_ZOOM).map_err(|e| CacheError::InvalidItem {
                id: short(id),
                reason: e.to_string(),
            })?;
        let class = match self.classes.index(&meta.class) {
            Some(i) => Class::Held(i),
            // Every index held by other names: the item's own old version may be the last
            // of its class, whose index the new name takes once that version has left its
            // slot (`insert_checked`, when the insert is committed).
            None => match self.items.peek(id).map(|old| old.place.class()) {
                Some(i) if self.classes.count(i) == 1 => Class::Replacing(i),
                _ => {
                    return Err(CacheError::TooManyClasses {
                        id: short(id),
                        class: short(&meta.class),
                    })
                }
            },
        };
        Ok((point, class))
    }

    /// [`insert`](Self::insert) of a checked item whose position falls in the zoom-24 tile
    /// `point`, of class index `class`: the outcome, and the payload when the insert was
    /// refused; each item evicted goes to `evicted`.
    #[allow(clippy::too_many_arguments)]
    fn insert_checked(
        &mut self,
        id: &str,
        point: TileId,
        class_index: Class,
        meta: ItemMeta,
        payload: P,
        now_ms: u64,
        priority: Priority,
        evicted_to: &mut Vec<(ItemKey, P)>,
    ) -> (InsertOutcome, Option<P>) {
        let ItemMeta {
            class,
            access,
            ttl_ms,
            size_bytes,
            ..
        } = meta;
        let expires_at_ms = now_ms.saturating_add(self.config.ttl_for(&class, ttl_ms));
        let (class_index, renamed) = match class_index {
            Class::Held(i) => (i, false),
            Class::Replacing(i) => (i, true),
        };
        let place = TileTier::new(point, self.config.tile_zoom, access, class_index);
        let tile = place.tile();

        // What is held once the old version (if any) is gone: in all, in visible tiles, and
        // in loading tiles that are not visible.
        let mut after = self.held();
        let (mut visible_after, mut loading_after) = (self.protected, self.loading_protected);
        if let Some(old) = self.items.peek(id) {
            let size = old.size_bytes;
            after.sub(size);
            match self.protection(old.tile()) {
                Protection::Visible => visible_after.sub(size),
                Protection::Loading => loading_after.sub(size),
                Protection::None => {}
            }
        }
        // What the insert may not evict, and so must fit beside.
        let kept = match priority {
            Priority::Visible => None,
            Priority::Loading => Some(visible_after),
            Priority::Prefetch => {
                let mut protected = visible_after;
                protected.add_all(loading_after);
                Some(protected)
            }
        };
        if kept.is_some_and(|kept| !self.fits(after, size_bytes) && !self.fits(kept, size_bytes)) {
            self.stats.rejected += 1;
            let outcome = InsertOutcome {
                evicted: 0,
                rejected: true,
            };
            return (outcome, Some(payload));
        }

        // Committed: the insert will succeed. The old version leaves its slot, which its
        // tile's list may name: the list is told where it goes, or given its key (below).
        let old = self.take_item(id);
        let mut evicted = 0;
        while !self.fits(self.held(), size_bytes) {
            let Some(gone) = self.evict_one(priority) else {
                break;
            };
            evicted_to.push((gone.id, gone.payload));
            evicted += 1;
        }
        if !self.fits(self.held(), size_bytes) {
            // Unreachable while the protected totals are right; refuse rather than overfill.
            if let Some((slot, old)) = &old {
                self.unlist(*slot, old);
            }
            self.stats.rejected += 1;
            let outcome = InsertOutcome {
                evicted,
                rejected: true,
            };
            return (outcome, Some(payload));
        }

        let key = match &old {
            Some((_, o)) => o.id.clone(),
            None => ItemKey::new(id),
        };
        if let Some((slot, old)) = &old {
            if old.tile() != tile {
                self.unlist(*slot, old);
                self.move_listing(&key, old.tile(), tile, access);
            }
        }
        self.account_add(tile, size_bytes);
        if renamed {
            // The old version, the last of its class, has left its slot: its index is free.
            self.classes.rename(class_index, &class);
        }
        // The class's index is counted while the item holds its slot (an index no item has
        // may be given to another name: `classes.rs`).
        self.classes.hold(class_index);
        let replaced = self.items.put(CacheItem {
            id: key,
            place,
            expires: SplitU64::new(expires_at_ms),
            size_bytes,
            payload,
        });
        if let Some(replaced) = replaced {
            // Unreachable: the old version was taken above.
            self.classes.release(replaced.place.class());
        }
        if let Some((slot, old)) = &old {
            if old.tile() == tile {
                // Its slot, unless evictions freed others since it was taken.
                match self.items.find(&old.id) {
                    Some(now) if now == *slot => {}
                    Some(now) => {
                        if let Some(e) = self.tiles.peek_mut(&tile) {
                            e.ids.rehold(*slot, now, &old.id);
                        }
                    }
                    None => self.unlist(*slot, old),
                }
            }
        }
        let outcome = InsertOutcome {
            evicted,
            rejected: false,
        };
        (outcome, None)
    }

    /// Look up an item for `caller`, counting a hit, stale hit or miss and refreshing its
    /// recency. `None` when absent, above the caller's tier, or expired beyond the
    /// stale-while-revalidate window (such an item is removed and counted in `expirations`).
    ///
    /// ```
    /// use tilewarm::access::Access;
    /// use tilewarm::cache::{CacheConfig, ItemMeta, Priority, ItemCache};
    /// let config = CacheConfig { stale_while_revalidate_ms: 1_000, ..CacheConfig::default() };
    /// let mut cache = ItemCache::new(config).unwrap();
    /// let meta = ItemMeta { lon: 2.35, lat: 48.85, class: "active".into(),
    ///     access: Access::Public, ttl_ms: Some(500), size_bytes: 10 };
    /// cache.insert("a", meta, (), 0, Priority::Visible).unwrap();
    /// assert!(!cache.get("a", Access::Public, 499).unwrap().stale);
    /// assert!(cache.get("a", Access::Public, 500).unwrap().stale);
    /// assert!(cache.get("a", Access::Public, 1_500).is_none());
    /// assert!(!cache.contains("a"));
    /// ```
    pub fn get(&mut self, id: &str, caller: Access, now_ms: u64) -> Option<Lookup<'_, P>> {
        let stale = self.count_lookup(id, caller, now_ms, true)?;
        let classes = &self.classes;
        (self.items.get(id)).map(|item| Lookup::new(item, classes, stale))
    }

    /// A hit or stale hit for `caller`, counted, with its recency refreshed; anything else
    /// (absent, above the caller's tier, expired beyond the window) is `None` and left as
    /// it is: not counted, not removed. For a caller that takes the slow path on `None`
    /// (which counts the miss then): one lookup, then the recency update.
    ///
    /// ```
    /// use tilewarm::access::Access;
    /// use tilewarm::cache::{CacheConfig, ItemMeta, Priority, ItemCache};
    /// let mut cache = ItemCache::new(CacheConfig::default()).unwrap();
    /// let meta = ItemMeta { lon: 2.35, lat: 48.85, class: "active".into(),
    ///     access: Access::Verified, ttl_ms: Some(500), size_bytes: 10 };
    /// cache.insert("a", meta, (), 0, Priority::Visible).unwrap();
    /// assert!(cache.get_hit("a", Access::Public, 0).is_none());
    /// assert!(cache.get_hit("b", Access::Agent, 0).is_none());
    /// assert!(cache.get_hit("a", Access::Agent, 1_000).is_none());
    /// assert_eq!((cache.stats().hits, cache.stats().misses), (0, 0));
    /// assert!(cache.contains("a"));
    /// assert!(!cache.get_hit("a", Access::Agent, 0).unwrap().stale);
    /// assert_eq!(cache.stats().hits, 1);
    /// ```
    pub fn get_hit(&mut self, id: &str, caller: Access, now_ms: u64) -> Option<Lookup<'_, P>> {
        let item = self.items.peek(id)?;
        if !caller.can_see(item.access()) {
            return None;
        }
        let stale = match expiry(item.expires_at_ms(), self.swr(), now_ms) {
            Expiry::Gone => return None,
            f => f == Expiry::Stale,
        };
        if stale {
            self.stats.stale_hits += 1;
        } else {
            self.stats.hits += 1;
        }
        let classes = &self.classes;
        (self.items.get(id)).map(|item| Lookup::new(item, classes, stale))
    }

    /// One lookup of `id` for `caller`, counted: `Some(stale)` for a hit or stale hit, else
    /// `None` and a miss (absent, or expired beyond the window: then it is removed and
    /// counted in `expirations`, or above the caller's tier). With `hidden_counts` false an
    /// item above the caller's tier is passed over instead: not counted, not removed.
    /// Does not touch LRU order.
    #[inline]
    pub(super) fn count_lookup(
        &mut self,
        id: &str,
        caller: Access,
        now_ms: u64,
        hidden_counts: bool,
    ) -> Option<bool> {
        let (access, expires) = match self.items.peek(id) {
            Some(item) => (item.access(), item.expires_at_ms()),
            None => {
                self.stats.misses += 1;
                return None;
            }
        };
        let seen = caller.can_see(access);
        if !seen && !hidden_counts {
            return None;
        }
        let f = expiry(expires, self.swr(), now_ms);
        if f == Expiry::Gone {
            self.remove_item(id);
            self.stats.expirations += 1;
            self.stats.misses += 1;
            return None;
        }
        if !seen {
            self.stats.misses += 1;
            return None;
        }
        let stale = f == Expiry::Stale;
        if stale {
            self.stats.stale_hits += 1;
        } else {
            self.stats.hits += 1;
        }
        Some(stale)
    }

    /// Like [`get`](Self::get) without counting, reordering or removing anything.
    ///
    /// ```
    /// use tilewarm::access::Access;
    /// use tilewarm::cache::{CacheConfig, ItemMeta, Priority, ItemCache};
    /// let mut cache = ItemCache::new(CacheConfig::default()).unwrap();
    /// let meta = ItemMeta { lon: 2.35, lat: 48.85, class: "active".into(),
    ///     access: Access::Verified, ttl_ms: None, size_bytes: 10 };
    /// cache.insert("a", meta, (), 0, Priority::Visible).unwrap();
    /// assert!(cache.peek("a", Access::Public, 0).is_none());
    /// assert!(cache.peek("a", Access::Agent, 0).is_some());
    /// assert_eq!(cache.stats().hits, 0);
    /// ```
    pub fn peek(&self, id: &str, caller: Access, now_ms: u64) -> Option<Lookup<'_, P>> {
        let item = self.items.peek(id)?;
        if !caller.can_see(item.access()) {
            return None;
        }
        match expiry(item.expires_at_ms(), self.swr(), now_ms) {
            Expiry::Gone => None,
            f => Some(Lookup::new(item, &self.classes, f == Expiry::Stale)),
        }
    }

    /// The class of `item`, an item this cache holds (its name from the cache's table of
    /// class names: an item keeps only its index, see [`MAX_CLASSES`](super::MAX_CLASSES)).
    /// A clone kept after the item left the cache, or another cache's item, reads whatever
    /// name its index has here now.
    ///
    /// ```
    /// use tilewarm::access::Access;
    /// use tilewarm::cache::{CacheConfig, ItemMeta, Priority, ItemCache};
    /// let mut cache = ItemCache::new(CacheConfig::default()).unwrap();
    /// let meta = ItemMeta { lon: 2.35, lat: 48.85, class: "sold".into(),
    ///     access: Access::Public, ttl_ms: None, size_bytes: 10 };
    /// cache.insert("a", meta, (), 0, Priority::Visible).unwrap();
    /// let found = cache.peek("a", Access::Public, 0).unwrap();
    /// assert_eq!((found.class, cache.class_of(found.item)), ("sold", "sold"));
    /// ```
    pub fn class_of(&self, item: &CacheItem<P>) -> &str {
        self.classes.name(item.place.class())
    }

    /// The data tile of the item `id` when it is held, whatever its tier or expiry.
    pub fn tile_of(&self, id: &str) -> Option<TileId> {
        self.items.peek(id).map(|item| item.tile())
    }

    /// Protect the items of these data-zoom tiles (what the user is looking at) from
    /// eviction by [`Priority::Prefetch`] and [`Priority::Loading`] inserts, and from
    /// [`Priority::Visible`] ones until nothing else is left; and their tile-index entries
    /// from being trimmed first. Replaces the previous set; tiles at other zooms are ignored.
    /// A tile both visible and [loading](Self::set_loading) is protected as visible.
    ///
    /// ```
    /// use tilewarm::access::Access;
    /// use tilewarm::cache::{CacheConfig, ItemMeta, Priority, ItemCache};
    /// use tilewarm::tile::TileId;
    /// let config = CacheConfig { max_items: 1, ..CacheConfig::default() };
    /// let mut cache = ItemCache::new(config).unwrap();
    /// let meta = ItemMeta { lon: 2.35, lat: 48.85, class: "active".into(),
    ///     access: Access::Public, ttl_ms: None, size_bytes: 10 };
    /// cache.insert("seen", meta.clone(), (), 0, Priority::Visible).unwrap();
    /// cache.set_visible(&[TileId::from_lon_lat(2.35, 48.85, 14).unwrap()]);
    /// let out = cache.insert("ahead", meta, (), 0, Priority::Prefetch).unwrap();
    /// assert!(out.rejected);
    /// assert!(cache.contains("seen"));
    /// ```
    pub fn set_visible(&mut self, tiles: &[TileId]) {
        let dz = self.config.tile_zoom;
        self.visible.clear();
        self.visible.extend(tiles.iter().filter(|t| t.z() == dz));
        self.recount_protected();
    }

    /// Protect the items of these data-zoom tiles (what a host waits for: the client
    /// passes its loading tiles) one level below the [visible](Self::set_visible) ones:
    /// from eviction by [`Priority::Prefetch`] inserts, and by [`Priority::Loading`] and
    /// [`Priority::Visible`] ones until nothing unprotected is left, before any visible
    /// item; and their tile-index entries from being trimmed first. Replaces the previous
    /// set; tiles at other zooms are ignored.
    ///
    /// ```
    /// use tilewarm::access::Access;
    /// use tilewarm::cache::{CacheConfig, ItemMeta, Priority, ItemCache};
    /// use tilewarm::tile::TileId;
    /// let config = CacheConfig { max_items: 2, ..CacheConfig::default() };
    /// let mut cache = ItemCache::new(config).unwrap();
    /// let at = |lon: f64| ItemMeta { lon, lat: 48.85, class: "active".into(),
    ///     access: Access::Public, ttl_ms: None, size_bytes: 10 };
    /// let (seen, loaded) = (at(2.35), at(2.40));
    /// cache.insert("seen", seen.clone(), (), 0, Priority::Visible).unwrap();
    /// cache.insert("loaded", loaded.clone(), (), 0, Priority::Loading).unwrap();
    /// cache.set_visible(&[TileId::from_lon_lat(seen.lon, seen.lat, 14).unwrap()]);
    /// cache.set_loading(&[TileId::from_lon_lat(loaded.lon, loaded.lat, 14).unwrap()]);
    /// let out = cache.insert("ahead", at(2.45), (), 0, Priority::Prefetch).unwrap();
    /// assert!(out.rejected, "a prefetch pushes out neither");
    /// // A load may push out another load's items, never the view's.
    /// let out = cache.insert("loaded-2", loaded, (), 0, Priority::Loading).unwrap();
    /// assert_eq!(out.evicted, 1);
    /// assert!(cache.contains("seen") && !cache.contains("loaded"));
    /// cache.set_visible(&[TileId::from_lon_lat(2.35, 48.85, 14).unwrap(),
    ///     TileId::from_lon_lat(2.40, 48.85, 14).unwrap()]);
    /// let out = cache.insert("elsewhere", at(2.45), (), 0, Priority::Loading).unwrap();
    /// assert!(out.rejected, "only the view's items could make room");
    /// // The view's own items push out the least recently used of its others.
    /// let out = cache.insert("seen-2", seen, (), 0, Priority::Visible).unwrap();
    /// assert_eq!(out.evicted, 1);
    /// assert!(!cache.contains("seen") && cache.contains("loaded-2"));
    /// ```
    pub fn set_loading(&mut self, tiles: &[TileId]) {
        let dz = self.config.tile_zoom;
        self.loading.clear();
        self.loading.extend(tiles.iter().filter(|t| t.z() == dz));
        self.recount_protected();
    }

    /// The protected totals of both levels, from the per-tile loads.
    fn recount_protected(&mut self) {
        let (mut visible, mut loading) = (Load::default(), Load::default());
        for t in &self.visible {
            if let Some(&held) = self.load.get(t) {
                visible.add_all(held);
            }
        }
        for t in &self.loading {
            match self.load.get(t) {
                Some(&held) if !self.visible.contains(t) => loading.add_all(held),
                _ => {}
            }
        }
        self.protected = visible;
        self.loading_protected = loading;
    }

    /// How an item positioned in `tile` is protected. (Not inlined: one copy of the two
    /// lookups rather than one per caller keeps the wasm smaller.)
    #[inline(never)]
    pub(super) fn protection(&self, tile: TileId) -> Protection {
        if self.visible.contains(&tile) {
            Protection::Visible
        } else if self.loading.contains(&tile) {
            Protection::Loading
        } else {
            Protection::None
        }
    }

    /// Whether the item is held and protected (its data tile is visible or loading).
    pub fn is_protected(&self, id: &str) -> bool {
        self.items
            .peek(id)
            .is_some_and(|item| self.protection(item.tile()) != Protection::None)
    }

    /// Whether one more item of `size` bytes would fit on top of `load`.
    pub(super) fn fits(&self, load: Load, size: usize) -> bool {
        load.items < self.config.max_items
            && size <= self.config.max_bytes.saturating_sub(load.bytes)
    }

    pub(super) fn held(&self) -> Load {
        Load {
            items: self.items.len(),
            bytes: self.bytes,
        }
    }

    pub(super) fn account_add(&mut self, tile: TileId, size: usize) {
        self.load.entry(tile).or_default().add(size);
        self.bytes += size;
        match self.protection(tile) {
            Protection::Visible => self.protected.add(size),
            Protection::Loading => self.loading_protected.add(size),
            Protection::None => {}
        }
    }

    pub(super) fn account_sub(&mut self, tile: TileId, size: usize) {
        if let Some(l) = self.load.get_mut(&tile) {
            l.sub(size);
            if l.items == 0 {
                self.load.remove(&tile);
            }
        }
        self.bytes = self.bytes.saturating_sub(size);
        match self.protection(tile) {
            Protection::Visible => self.protected.sub(size),
            Protection::Loading => self.loading_protected.sub(size),
            Protection::None => {}
        }
    }

    /// Removes an item and its accounting; the tile lists naming it then report it missing.
    pub(super) fn remove_item(&mut self, id: &str) -> Option<CacheItem<P>> {
        let (slot, item) = self.take_item(id)?;
        self.unlist(slot, &item);
        Some(item)
    }

    /// [`remove_item`](Self::remove_item), leaving its tile's list naming the slot it left,
    /// which the caller must then [`unlist`](Self::unlist) or give the item back to.
    fn take_item(&mut self, id: &str) -> Option<(u32, CacheItem<P>)> {
        self.changed();
        let (slot, item) = self.items.pop(id)?;
        // The one place an item leaves the item store, but for a clear (`invalidate`).
        self.classes.release(item.place.class());
        self.account_sub(item.tile(), item.size_bytes);
        Some((slot, item))
    }

    /// `item` left `slot`: the one list that may name the slot, its tile's, names it by its
    /// key instead (see `list.rs`). A scan of that list: an eviction's cost.
    fn unlist(&mut self, slot: u32, item: &CacheItem<P>) {
        if let Some(e) = self.tiles.peek_mut(&item.tile()) {
            e.ids.unhold(slot, &item.id);
        }
    }

    /// Removes the given ids; returns how many were held.
    pub(super) fn remove_ids(&mut self, ids: &[&str]) -> usize {
        let mut removed = 0;
        for id in ids {
            if self.remove_item(id).is_some() {
                removed += 1;
            }
        }
        removed
    }

    /// Evicts one item for an insert of `priority`: the least-recently-used unprotected
    /// one; when none is left and the insert is not a prefetch, the least-recently-used
    /// one of a loading (not visible) tile; when none of those is left either and the
    /// insert is for the view, the least-recently-used (visible) one. Returns the item evicted,
    /// `None` when it may evict nothing. See the type docs for why this does not rescan.
    pub(super) fn evict_one(&mut self, priority: Priority) -> Option<CacheItem<P>> {
        self.changed();
        let protected = self.protected.items + self.loading_protected.items;
        // The level evicted: items less protected than it are gone, more protected ones
        // are passed over (promoted).
        let level = if self.items.len() > protected {
            Protection::None
        } else if self.loading_protected.items > 0 && priority != Priority::Prefetch {
            Protection::Loading
        } else if priority == Priority::Visible {
            Protection::Visible
        } else {
            return None;
        };
        // At most as many promotions as items of the levels above happen before one of
        // `level` is at the tail; the bound only guards against a broken count.
        for _ in 0..=self.items.len() {
            let (key, passed) = match self.items.peek_lru() {
                Some(item) => (item.id.clone(), self.protection(item.tile()) != level),
                None => return None,
            };
            if passed {
                self.items.promote_lru();
            } else {
                let gone = self.remove_item(&key);
                self.stats.evictions += 1;
                return gone;
            }
        }
        None
    }
}

/// How an item is protected from eviction, by its data tile (see [`ItemCache`]'s docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Protection {
    /// Neither visible nor loading.
    None,
    /// Loading ([`ItemCache::set_loading`]) and not visible.
    Loading,
    /// Visible ([`ItemCache::set_visible`]).
    Visible,
}
