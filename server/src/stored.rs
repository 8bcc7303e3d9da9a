//! The cache tier's storage format, in one place: what an item and a tile are as bytes (in
//! Redis; the in-process tier holds the same [`StoredItem`]s), and the Redis keys.
//!
//! An item is held as the JSON text it is served as, so answering a request copies bytes
//! into the response instead of parsing and re-serialising each item. The text is split
//! where the per-request `ttl` goes: `{"id":…,"lon":…,"lat":…,"class":…,"access":…,"ttl":`
//! (the *head*), then the seconds left, then `,"data":…}` (the *tail*). What the request path
//! needs without parsing JSON (the tier, for the per-caller filter; the position, for tiles
//! finer than the data zoom; the expiry) sits in a fixed-size binary trailer.
//!
//! # Format version 4 (keys `<prefix>v4:…`)
//! The version is part of every key ([`VERSION`]), so entries written in another format are
//! never read as this one (they are simply not found, and expire).
//! - `<prefix>v4:i:<id>` → item: UTF-8 text `id ‖ class ‖ head ‖ tail`, then a 46-byte
//!   *item trailer*, little-endian: `access` (u8, 0 = public … 3 = agent), `exp` (u64, Unix
//!   ms), `lon`, `lat` (f64), `gen` (u64: the generation of its class it was fetched under,
//!   [`Generations`]), the byte lengths of id, class and head (u32 each), and the version
//!   byte `4`.
//! - `<prefix>v4:t:<z>/<x>/<y>` → tile: the tile's items themselves, in list order, so a
//!   tile hit is one value (version 2 stored the ids and the reader fetched every item key
//!   in a second `MGET`, about 1,700 keys per 16-tile batch). Laid out as the items' texts
//!   concatenated (UTF-8), then per item its text's byte length (u32) and its item trailer
//!   (the 46 bytes an item value ends with, its `gen` included), then a 13-byte *tile
//!   trailer*: the item count (u32), `exp` (u64, Unix ms) and the version byte `4`; a list
//!   fetched below `agent` (the request path asks a tile over `--max-tile-items` at `agent`
//!   again at the caller's tier, `crate::batch`) ends with its tier (u8, as the item
//!   trailer's) and the byte `0x84` instead, one byte more, so that a reader which does not
//!   know this form (an older instance) finds no version-4 tile there: a miss, never the
//!   list of every tier. The texts
//!   come first so the whole value is checked as UTF-8 once and its items share that one
//!   buffer (no copy or allocation of text per item). `exp` is the list's expiry
//!   ([`encode_tile`]), and the key expires with it: not the soonest of its items', since
//!   the value holds the items of every tier and a hit's `ttl` (`Cache-Control` too) counts
//!   down to it, so an item above the caller's tier expiring sooner would show in it. The
//!   tier's rule that a tile is a hit only when its list and every listed item are fresh is
//!   kept by the read, which checks each item's own `exp`, kept inside for its `ttl` in
//!   answers.
//! - `<prefix>v4:e:<z>/<x>/<y>` → an *empty block*: a tile 1 to
//!   [`crate::empty_tiles::MAX_BLOCK_LEVELS`] levels coarser than the data zoom, every data
//!   tile of which is empty to `public` (`crate::empty_tiles`), one key for all of them.
//!   Laid out as a tile is, with the items of all its data tiles (those above `public`,
//!   usually none): a reader gives each data tile those positioned in it (the origin's
//!   rule for which tile lists an item). An instance that does not know these keys does not
//!   read them (a miss) and, applying an invalidation, does not delete them: another
//!   instance reading it from the change stream does.
//! - `<prefix>v4:g` → a hash: per class invalidated so far, its *generation*, which each
//!   invalidation of the class raises to the larger of one more and the time of the bump in
//!   Unix ms (`crate::tier`'s bump script, so a bump passes every stamp made before it even
//!   after the hash lost its value); a class never invalidated is at 0. Its field `*`
//!   ([`ALL_FIELD`], no class) is the generation of `all`, above every other when bumped.
//!   No expiry. An item or tile value is stale when one of its items' `gen` is below its
//!   class's current generation or that of `all` (`crate::tier`).
//! - `<prefix>v4:owner` → which deployment owns the prefix: text, `crate::owner`'s
//!   fingerprint (format, data zoom, origin). Written `SET … NX` by the first instance, no
//!   expiry, kept by `all`; an instance whose fingerprint differs does not use the tier.
//!
//! Version 3 was the same without `gen` (a 38-byte item trailer, version byte `3`, keys
//! `<prefix>v3:…`): a class was invalidated by reading every value, which a big tier could
//! not do in time. Its values are under other keys and never read by this version; were one
//! read anyway, its version byte refuses it.
//!
//! Every item of a tile is also written under its item key (reads by id, invalidation by
//! id find it there), so Redis holds an item twice while its tile is cached.
//!
//! A value that does not decode (wrong version byte, lengths or counts that do not fit,
//! text that is not UTF-8, an unknown tier) is treated as absent, never served.

use std::sync::Arc;

use serde::Serialize;
use serde_json::value::RawValue;
use tilewarm::access::Access;
use tilewarm::proxy::policy::ProxyItem;
use tilewarm::tile::TileId;

/// The storage format's part of every Redis key (after the configured prefix).
pub const VERSION: &str = "v4:";

/// The last byte of every stored value and of every item trailer.
const VERSION_BYTE: u8 = 4;

/// Item trailer: access, exp, lon, lat, gen, three lengths, version.
const ITEM_TRAILER: usize = 1 + 8 + 8 + 8 + 8 + 4 + 4 + 4 + 1;

/// Per item of a tile value: its text length, then its item trailer.
const TILE_ENTRY: usize = 4 + ITEM_TRAILER;

/// Tile trailer: item count, exp, version (a list fetched below `agent`: its tier's rank,
/// then [`BELOW_TOP_BYTE`] instead of the version, one byte more).
const TILE_TRAILER: usize = 4 + 8 + 1;

/// The last byte of a tile value whose list was fetched below `agent` (module docs).
const BELOW_TOP_BYTE: u8 = 0x80 | VERSION_BYTE;

/// Between the item's head and its data.
const DATA_KEY: &str = ",\"data\":";

/// One item as the cache tier holds it: its wire JSON (split around `ttl`), its tier,
/// position and expiry. Built once per origin answer ([`StoredItem::new`]) or per Redis
/// read ([`StoredItem::decode`], [`decode_tile`], which take the value's buffer without
/// copying it).
#[derive(Clone)]
pub struct StoredItem {
    /// Holds `id ‖ class ‖ head ‖ tail` at `start..start + len`: the item's own text, or the text
    /// of a whole tile value, shared by the items decoded from it.
    buf: Arc<String>,
    start: usize,
    /// Where the id, class and head end, relative to `start`.
    id_end: usize,
    class_end: usize,
    head_end: usize,
    /// The text's byte length.
    len: usize,
    access: Access,
    /// Unix milliseconds at which it stops being fresh.
    exp: u64,
    lon: f64,
    lat: f64,
    /// The generation of its class it was fetched under ([`Generations`]); 0 until the
    /// Redis tier stamps it on writing ([`StoredItem::with_gen`]).
    gen: u64,
}

impl std::fmt::Debug for StoredItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredItem")
            .field("id", &self.id())
            .field("access", &self.access)
            .field("exp", &self.exp)
            .field("gen", &self.gen)
            .field("wire", &self.wire(0))
            .finish()
    }
}

/// The wire item's fields before `ttl`, in the protocol's order (`Item`).
#[derive(Serialize)]
struct WireHead<'a> {
    id: &'a str,
    lon: f64,
    lat: f64,
    class: &'a str,
    access: Access,
}

/// What an item trailer holds.
struct Trailer {
    access: Access,
    exp: u64,
    lon: f64,
    lat: f64,
    gen: u64,
    id_len: usize,
    class_len: usize,
    head_len: usize,
}

impl Trailer {
    /// Reads an item trailer (exactly [`ITEM_TRAILER`] bytes), or `None` when it is not
    /// this version's or names a tier that does not exist.
    fn read(t: &[u8]) -> Option<Trailer> {
        if t.len() != ITEM_TRAILER || t[ITEM_TRAILER - 1] != VERSION_BYTE {
            return None;
        }
        Some(Trailer {
            access: *Access::ALL.get(t[0] as usize)?,
            exp: u64_at(t, 1)?,
            lon: f64::from_bits(u64_at(t, 9)?),
            lat: f64::from_bits(u64_at(t, 17)?),
            gen: u64_at(t, 25)?,
            id_len: u32_at(t, 33)?,
            class_len: u32_at(t, 37)?,
            head_len: u32_at(t, 41)?,
        })
    }
}

/// The little-endian u64 at `i`, if the bytes are there.
fn u64_at(b: &[u8], i: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(i..i.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// The little-endian u32 at `i` as a length, if the bytes are there.
fn u32_at(b: &[u8], i: usize) -> Option<usize> {
    let n = u32::from_le_bytes(b.get(i..i.checked_add(4)?)?.try_into().ok()?);
    usize::try_from(n).ok()
}

impl StoredItem {
    /// An item from an origin answer, expiring at `exp` (Unix ms).
    pub fn new(
        id: &str,
        lon: f64,
        lat: f64,
        class: &str,
        access: Access,
        exp: u64,
        data: &RawValue,
    ) -> StoredItem {
        let mut text = String::with_capacity(2 * (id.len() + class.len()) + data.get().len() + 96);
        text.push_str(id);
        text.push_str(class);
        // Serialising these fields into a String cannot fail (no map keys, no I/O); a
        // non-finite coordinate is written as `null`, as serde_json always does.
        let head = serde_json::to_string(&WireHead {
            id,
            lon,
            lat,
            class,
            access,
        })
        .unwrap_or_default();
        text.push_str(head.strip_suffix('}').unwrap_or(&head));
        text.push_str(",\"ttl\":");
        let head_end = text.len();
        text.push_str(DATA_KEY);
        text.push_str(data.get());
        text.push('}');
        StoredItem {
            id_end: id.len(),
            class_end: id.len() + class.len(),
            head_end,
            len: text.len(),
            start: 0,
            buf: Arc::new(text),
            access,
            exp,
            lon,
            lat,
            gen: 0,
        }
    }

    /// The same item stamped with generation `gen` of its class (the text is shared, not
    /// copied).
    pub fn with_gen(&self, gen: u64) -> StoredItem {
        StoredItem {
            gen,
            ..self.clone()
        }
    }

    /// The same item with its expiry at `exp` (Unix ms; the text is shared, not copied).
    pub fn with_exp(&self, exp: u64) -> StoredItem {
        StoredItem {
            exp,
            ..self.clone()
        }
    }

    /// The item at `start..end` of `buf`, described by its trailer, or `None` when the
    /// trailer's lengths do not fit the text or the text is not an item's.
    fn within(buf: &Arc<String>, start: usize, end: usize, t: &Trailer) -> Option<StoredItem> {
        let text = buf.get(start..end)?;
        let id_end = t.id_len;
        let class_end = id_end.checked_add(t.class_len)?;
        let head_end = class_end.checked_add(t.head_len)?;
        let fits = head_end <= text.len()
            && [id_end, class_end, head_end]
                .iter()
                .all(|&i| text.is_char_boundary(i))
            && text[head_end..].starts_with(DATA_KEY)
            && text.ends_with('}');
        fits.then(|| StoredItem {
            buf: Arc::clone(buf),
            start,
            id_end,
            class_end,
            head_end,
            len: text.len(),
            access: t.access,
            exp: t.exp,
            lon: t.lon,
            lat: t.lat,
            gen: t.gen,
        })
    }

    /// `id ‖ class ‖ head ‖ tail`.
    fn text(&self) -> &str {
        // The range was checked when the item was built; `get` keeps this panic-free anyway.
        self.buf
            .get(self.start..self.start + self.len)
            .unwrap_or("")
    }

    /// The text between two of its offsets (checked char boundaries).
    fn part(&self, from: usize, to: usize) -> &str {
        self.text().get(from..to).unwrap_or("")
    }

    /// The item's id.
    pub fn id(&self) -> &str {
        self.part(0, self.id_end)
    }

    /// The item's class.
    pub fn class(&self) -> &str {
        self.part(self.id_end, self.class_end)
    }

    /// The lowest tier allowed to see it.
    pub fn access(&self) -> Access {
        self.access
    }

    /// Unix milliseconds at which it stops being fresh.
    pub fn exp(&self) -> u64 {
        self.exp
    }

    /// The generation of its class it was fetched under (0 for an item not read from
    /// Redis).
    pub fn gen(&self) -> u64 {
        self.gen
    }

    /// Longitude.
    pub fn lon(&self) -> f64 {
        self.lon
    }

    /// Latitude.
    pub fn lat(&self) -> f64 {
        self.lat
    }

    /// The `data` JSON text.
    pub fn data(&self) -> &str {
        let tail = self.part(self.head_end, self.len);
        tail.get(DATA_KEY.len()..tail.len().saturating_sub(1))
            .unwrap_or("")
    }

    /// The size the in-process tier counts against its budget
    /// ([`tilewarm::cache::item_size_bytes`]).
    pub fn size_bytes(&self) -> usize {
        tilewarm::cache::item_size_bytes(self.id(), self.class(), self.data().len())
    }

    /// The wire item's length without its `ttl` digits.
    pub fn wire_len(&self) -> usize {
        self.len - self.class_end
    }

    /// Appends the wire item with `ttl` seconds left to `out`: the protocol's `Item` JSON,
    /// byte for byte what serde_json writes for it.
    pub fn write_wire(&self, out: &mut String, ttl: u32) {
        out.push_str(self.part(self.class_end, self.head_end));
        out.push_str(itoa::Buffer::new().format(ttl));
        out.push_str(self.part(self.head_end, self.len));
    }

    /// The wire item with `ttl` seconds left.
    pub fn wire(&self, ttl: u32) -> String {
        let mut s = String::with_capacity(self.wire_len() + 10);
        self.write_wire(&mut s, ttl);
        s
    }

    /// Appends the item trailer.
    fn write_trailer(&self, v: &mut Vec<u8>) {
        v.push(self.access.rank());
        v.extend_from_slice(&self.exp.to_le_bytes());
        v.extend_from_slice(&self.lon.to_le_bytes());
        v.extend_from_slice(&self.lat.to_le_bytes());
        v.extend_from_slice(&self.gen.to_le_bytes());
        for len in [
            self.id_end,
            self.class_end - self.id_end,
            self.head_end - self.class_end,
        ] {
            v.extend_from_slice(&(len as u32).to_le_bytes());
        }
        v.push(VERSION_BYTE);
    }

    /// The Redis value of its item key.
    pub fn encode(&self) -> Vec<u8> {
        let text = self.text();
        let mut v = Vec::with_capacity(text.len() + ITEM_TRAILER);
        v.extend_from_slice(text.as_bytes());
        self.write_trailer(&mut v);
        v
    }

    /// An item from its Redis value (the buffer becomes the item's text, not copied), or
    /// `None` when it is not a version-4 item.
    pub fn decode(mut v: Vec<u8>) -> Option<StoredItem> {
        let at = v.len().checked_sub(ITEM_TRAILER)?;
        let trailer = Trailer::read(&v[at..])?;
        v.truncate(at);
        let text = Arc::new(String::from_utf8(v).ok()?);
        StoredItem::within(&text, 0, at, &trailer)
    }

    /// The position (lon, lat) an item key's Redis value holds, read from its trailer
    /// alone (no UTF-8 check, no copy), or `None` when it is not a version-4 item. What a
    /// write reads of the value it replaced, to find the data tile its old copy was filed
    /// under (`RedisTier::write`).
    pub fn position_in(v: &[u8]) -> Option<(f64, f64)> {
        let at = v.len().checked_sub(ITEM_TRAILER)?;
        let trailer = Trailer::read(&v[at..])?;
        Some((trailer.lon, trailer.lat))
    }
}

impl ProxyItem for StoredItem {
    fn id(&self) -> &str {
        StoredItem::id(self)
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

/// A tile's Redis value: its items in list order, expiring with the list (`list_exp`, module
/// docs), fetched at tier `fetched_at` (the tile trailer's last two bytes for a list
/// fetched below `agent`, module docs). `None` when it cannot be stored in this format
/// (more items, or a longer item, than a u32 counts).
pub fn encode_tile(items: &[&StoredItem], list_exp: u64, fetched_at: Access) -> Option<Vec<u8>> {
    let text_len: usize = items.iter().map(|it| it.len).sum();
    let mut v = Vec::with_capacity(text_len + items.len() * TILE_ENTRY + TILE_TRAILER + 1);
    for it in items {
        v.extend_from_slice(it.text().as_bytes());
    }
    for it in items {
        v.extend_from_slice(&u32::try_from(it.len).ok()?.to_le_bytes());
        it.write_trailer(&mut v);
    }
    v.extend_from_slice(&u32::try_from(items.len()).ok()?.to_le_bytes());
    v.extend_from_slice(&list_exp.to_le_bytes());
    if fetched_at == Access::Agent {
        v.push(VERSION_BYTE);
    } else {
        v.push(fetched_at.rank());
        v.push(BELOW_TOP_BYTE);
    }
    Some(v)
}

/// A tile from its Redis value: its expiry, the tier its list was fetched at, and its items
/// in list order (sharing the value's buffer, not copied), or `None` when it is not a
/// version-4 tile.
pub fn decode_tile(mut v: Vec<u8>) -> Option<(u64, Access, Vec<StoredItem>)> {
    let (at, fetched_at) = match *v.last()? {
        VERSION_BYTE => (v.len().checked_sub(TILE_TRAILER)?, Access::Agent),
        BELOW_TOP_BYTE => {
            let at = v.len().checked_sub(TILE_TRAILER + 1)?;
            let tier = Access::from_rank(v[v.len() - 2]).filter(|&a| a < Access::Agent)?;
            (at, tier)
        }
        _ => return None,
    };
    let trailer = &v[at..];
    let count = u32_at(trailer, 0)?;
    let exp = u64_at(trailer, 4)?;
    // The count is bounded by the value's length before anything is allocated for it.
    let text_len = at.checked_sub(count.checked_mul(TILE_ENTRY)?)?;
    let mut spans = Vec::with_capacity(count);
    let mut start = 0usize;
    for entry in v[text_len..at].chunks_exact(TILE_ENTRY) {
        let end = start.checked_add(u32_at(entry, 0)?)?;
        spans.push((start, end, Trailer::read(&entry[4..])?));
        start = end;
    }
    if start != text_len {
        return None;
    }
    v.truncate(text_len);
    let text = Arc::new(String::from_utf8(v).ok()?);
    let items = spans
        .iter()
        .map(|(start, end, t)| StoredItem::within(&text, *start, *end, t))
        .collect::<Option<Vec<_>>>()?;
    // A list fetched below `agent` cannot hold an item above its tier.
    if items.iter().any(|it| !fetched_at.can_see(it.access)) {
        return None;
    }
    Some((exp, fetched_at, items))
}

/// The field of the generations hash that `all` bumps ([`ALL_FIELD`]): no class can be
/// named so (a class is lowercase letters, digits, `_` and `-`).
pub const ALL_FIELD: &str = "*";

/// The current generation of each class that has one (module docs), and that of `all`
/// ([`ALL_FIELD`]): read from Redis in the same round trip as the values it judges, and,
/// read before an origin call, the generations the items it answers are stamped with. A
/// class it does not name is at 0. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Generations {
    table: Arc<GenTable>,
    /// The generation of `all`: every value stamped below it is stale, whatever its class.
    all: u64,
}

/// A few classes are looked up by a scan (cheaper than hashing each item's class), many
/// in a map.
#[derive(Debug, Default)]
enum GenTable {
    #[default]
    None,
    Few(Vec<(String, u64)>),
    Many(std::collections::HashMap<String, u64>),
}

/// Up to this many classes are scanned.
const FEW_CLASSES: usize = 16;

impl Generations {
    /// From the hash's fields and values. A value that is not a number is an error: one
    /// read as 0 could hide an invalidation.
    pub fn from_fields(fields: Vec<(String, String)>) -> Result<Generations, String> {
        let mut all = 0;
        let mut gens = Vec::with_capacity(fields.len());
        for (class, n) in fields {
            let Ok(n) = n.parse::<u64>() else {
                return Err(format!(
                    "the generation of class {class:?} is {n:?}, not a number"
                ));
            };
            if class == ALL_FIELD {
                all = n;
            } else {
                gens.push((class, n));
            }
        }
        let table = match gens.len() {
            0 => GenTable::None,
            n if n <= FEW_CLASSES => GenTable::Few(gens),
            _ => GenTable::Many(gens.into_iter().collect()),
        };
        Ok(Generations {
            table: Arc::new(table),
            all,
        })
    }

    /// The generation a value of `class` must be stamped with to be current: the larger
    /// of its class's (0 when it was never invalidated) and that of `all`. An item fetched
    /// now is stamped with it.
    pub fn of(&self, class: &str) -> u64 {
        let own = match &*self.table {
            GenTable::None => 0,
            GenTable::Few(v) => v.iter().find(|(c, _)| c == class).map_or(0, |(_, n)| *n),
            GenTable::Many(m) => m.get(class).copied().unwrap_or(0),
        };
        own.max(self.all)
    }

    /// Whether `item` was fetched under its class's current generation (and that of `all`)
    /// or a later one: false when its class, or everything, was invalidated since (a stale
    /// copy: a miss).
    pub fn current(&self, item: &StoredItem) -> bool {
        (matches!(*self.table, GenTable::None) && self.all == 0)
            || item.gen >= self.of(item.class())
    }

    /// How many classes have a generation (`all`'s not counted).
    pub fn len(&self) -> usize {
        match &*self.table {
            GenTable::None => 0,
            GenTable::Few(v) => v.len(),
            GenTable::Many(m) => m.len(),
        }
    }

    /// Whether no class has one.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The Redis keys under a configured prefix, in this format's version.
#[derive(Debug, Clone)]
pub struct Keys {
    /// The configured prefix.
    prefix: String,
    /// `<prefix>v4:i:`
    items: String,
    /// `<prefix>v4:t:`
    tiles: String,
    /// `<prefix>v4:e:`
    blocks: String,
    /// `<prefix>v4:g`
    gens: String,
    /// `<prefix>v4:owner`
    owner: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
            items: format!("{prefix}{VERSION}i:"),
            tiles: format!("{prefix}{VERSION}t:"),
            blocks: format!("{prefix}{VERSION}e:"),
            gens: format!("{prefix}{VERSION}g"),
            owner: format!("{prefix}{VERSION}owner"),
        }
    }

    /// The configured prefix (every key of every format version starts with it).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// What every item key starts with.
    pub fn items_prefix(&self) -> &str {
        &self.items
    }

    /// What every tile key starts with.
    pub fn tiles_prefix(&self) -> &str {
        &self.tiles
    }

    /// What every empty block's key starts with ([`Keys::block`]).
    pub fn blocks_prefix(&self) -> &str {
        &self.blocks
    }

    /// `<prefix>v4:g`: the class generations ([`Generations`]).
    pub fn gens(&self) -> &str {
        &self.gens
    }

    /// `<prefix>v4:owner`: which deployment owns the prefix (`crate::owner`).
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Whether `key`, found under this prefix, is the class generations or the owner record
    /// of a deployment whose prefix starts with this one (`tw:x:v4:g` or `tw:x:v4:owner`
    /// under `tw:`): it ends as one of those and is none of this format's item or tile keys
    /// (an item whose id ends in `v4:g` is one). `all` must not delete it: that would set the
    /// other deployment's classes back ([`Generations`]), or leave its prefix to whichever
    /// deployment starts next. A prefix that starts with this one's item, tile or block key
    /// prefix (`tw:v4:i:`) cannot be told apart from an item: use prefixes that do not.
    pub fn is_other_kept(&self, key: &str) -> bool {
        let p = self.prefix.len();
        [&self.gens, &self.owner].into_iter().any(|own| {
            key.len() > own.len() && key.ends_with(&own[p..]) && key.starts_with(&self.prefix)
        }) && !key.starts_with(&self.items)
            && !key.starts_with(&self.tiles)
            && !key.starts_with(&self.blocks)
    }

    /// `<prefix>v4:i:<id>`
    pub fn item(&self, id: &str) -> String {
        let mut k = String::with_capacity(self.items.len() + id.len());
        k.push_str(&self.items);
        k.push_str(id);
        k
    }

    /// `<prefix>v4:t:<z>/<x>/<y>`
    pub fn tile(&self, t: TileId) -> String {
        format!("{}{t}", self.tiles)
    }

    /// `<prefix>v4:e:<z>/<x>/<y>`: an empty block, a tile coarser than the data zoom whose
    /// every data tile is empty to `public` (`crate::empty_tiles`), valued as a tile is
    /// ([`encode_tile`]) with the items of all of them (those above `public`, if any).
    pub fn block(&self, t: TileId) -> String {
        format!("{}{t}", self.blocks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The protocol's wire item, serialised by serde_json: what the server answered
    /// before items were stored as text (the reference the spliced text must equal).
    #[derive(Serialize)]
    struct WireItem<'a> {
        id: &'a str,
        lon: f64,
        lat: f64,
        class: &'a str,
        access: Access,
        ttl: u32,
        data: &'a RawValue,
    }

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    #[test]
    fn an_item_round_trips_and_is_served_as_serde_writes_it() {
        let data = raw(r#"{"p": [1, 2], "s":"é\"x"}"#);
        let it = StoredItem::new(
            "a\"b\\ü",
            -122.123456789012,
            47.1,
            "off_market",
            Access::Agent,
            42,
            &data,
        );
        let back = StoredItem::decode(it.with_gen(u64::MAX - 1).encode()).unwrap();
        assert_eq!(back.id(), "a\"b\\ü");
        assert_eq!(back.class(), "off_market");
        assert_eq!(
            (back.lon, back.lat, back.access, back.exp, back.gen()),
            (it.lon, 47.1, Access::Agent, 42, u64::MAX - 1)
        );
        assert_eq!(it.gen(), 0, "stamping makes a copy");
        assert_eq!(back.data(), data.get());
        let want = serde_json::to_string(&WireItem {
            id: "a\"b\\ü",
            lon: -122.123456789012,
            lat: 47.1,
            class: "off_market",
            access: Access::Agent,
            ttl: 300,
            data: &data,
        })
        .unwrap();
        assert_eq!(back.wire(300), want);
        assert_eq!(
            StoredItem::position_in(&it.encode()),
            Some((-122.123456789012, 47.1)),
            "the position read from the trailer alone"
        );
        let mut not_v4 = it.encode();
        *not_v4.last_mut().unwrap() ^= 0xff;
        assert_eq!(StoredItem::position_in(&not_v4), None);
        assert_eq!(StoredItem::position_in(b"short"), None);
    }

    #[test]
    fn values_of_another_format_are_not_read() {
        let it = StoredItem::new("x", 1.0, 2.0, "active", Access::Public, 9, &raw("1"));
        let mut v = it.encode();
        // The version-1 format: the item as a JSON object.
        assert!(StoredItem::decode(br#"{"id":"x","lon":1,"lat":2}"#.to_vec()).is_none());
        assert!(StoredItem::decode(Vec::new()).is_none());
        let n = v.len();
        v[n - 1] = 2;
        assert!(StoredItem::decode(v.clone()).is_none());
        v[n - 1] = VERSION_BYTE;
        // A tier that does not exist, and lengths that do not fit.
        v[n - ITEM_TRAILER] = 9;
        assert!(StoredItem::decode(v.clone()).is_none());
        v[n - ITEM_TRAILER] = 0;
        v[n - 13..n - 9].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(StoredItem::decode(v).is_none());
        // A version-2 tile list (ids joined by newlines, exp, version byte 2).
        let mut list = b"a\nb".to_vec();
        list.extend_from_slice(&77u64.to_le_bytes());
        list.push(2);
        assert!(decode_tile(list).is_none());
        assert!(decode_tile(br#"{"exp":1,"ids":["a"]}"#.to_vec()).is_none());
        // An item value is not a tile value.
        assert!(decode_tile(it.encode()).is_none());
    }

    /// An item value of format version 3 (before class generations), as its encoder wrote
    /// it: the same text, then a 38-byte trailer without `gen`, ending in 3.
    fn v3_trailer(it: &StoredItem, v: &mut Vec<u8>) {
        v.push(it.access.rank());
        v.extend_from_slice(&it.exp.to_le_bytes());
        v.extend_from_slice(&it.lon.to_le_bytes());
        v.extend_from_slice(&it.lat.to_le_bytes());
        for len in [
            it.id_end,
            it.class_end - it.id_end,
            it.head_end - it.class_end,
        ] {
            v.extend_from_slice(&(len as u32).to_le_bytes());
        }
        v.push(3);
    }

    fn v3_item(it: &StoredItem) -> Vec<u8> {
        let mut v = it.text().as_bytes().to_vec();
        v3_trailer(it, &mut v);
        v
    }

    fn v3_tile(items: &[&StoredItem], exp: u64) -> Vec<u8> {
        let mut v = Vec::new();
        for it in items {
            v.extend_from_slice(it.text().as_bytes());
        }
        for it in items {
            v.extend_from_slice(&(it.len as u32).to_le_bytes());
            v3_trailer(it, &mut v);
        }
        v.extend_from_slice(&(items.len() as u32).to_le_bytes());
        v.extend_from_slice(&exp.to_le_bytes());
        v.push(3);
        v
    }

    /// Values of format version 3 carry no class generation: read as version 4 they would
    /// be items of generation 0 (or garbage), so they are refused, whole or in part, even
    /// when their lengths happen to fit.
    #[test]
    fn values_of_version_3_are_refused() {
        let (a, b) = (item("a", 900), item("b/ü", 500));
        assert!(StoredItem::decode(v3_item(&a)).is_none());
        assert!(decode_tile(v3_tile(&[&a, &b], 800)).is_none());
        assert!(decode_tile(v3_tile(&[], 800)).is_none());
        // A v3 value with only its last byte changed to 4 does not decode either: the
        // trailer is 8 bytes shorter, so its lengths and text do not fit.
        for mut v in [v3_item(&a), v3_item(&b)] {
            *v.last_mut().unwrap() = VERSION_BYTE;
            assert!(StoredItem::decode(v).is_none());
        }
        // The keys differ, so a v4 server never asks for one anyway.
        assert!(Keys::new("tw:").item("a").starts_with("tw:v4:i:"));
        assert!(Keys::new("tw:")
            .tile(TileId::new(1, 0, 0).unwrap())
            .starts_with("tw:v4:t:"));
    }

    /// `all` keeps the generations and owner record of a deployment under a longer prefix,
    /// and nothing of this one's that only ends like them.
    #[test]
    fn other_deployments_generations_are_told_from_this_ones_keys() {
        let k = Keys::new("tw:");
        for other in [
            "tw:x:v4:g",
            "tw:staging:v4:g",
            "tw:v4:v4:g",
            "tw:w:v4:g",
            "tw:x:v4:owner",
        ] {
            assert!(k.is_other_kept(other), "{other}");
        }
        for not in [
            "tw:v4:g",
            "tw:v4:owner",
            "tw:v4:i:x:v4:owner",
            "tw:v4:i:v4:g",
            "tw:v4:i:av4:g",
            "tw:v4:t:v4:g",
            "tw:x:v4:i:a",
            "tw:x:v3:g",
            "tw:changes",
            "v4:g",
            "xx:v4:g",
        ] {
            assert!(!k.is_other_kept(not), "{not}");
        }
    }

    #[test]
    fn generations_say_which_items_are_stale() {
        let it = item("a", 9);
        assert!(Generations::default().current(&it));
        let gens = |fields: &[(&str, &str)]| {
            Generations::from_fields(
                fields
                    .iter()
                    .map(|(c, n)| (c.to_string(), n.to_string()))
                    .collect(),
            )
        };
        let g = gens(&[("sold", "4"), ("active", "2")]).unwrap();
        assert_eq!((g.of("active"), g.of("sold"), g.of("other")), (2, 4, 0));
        // Stamped before the bump to 2: stale; at 2 or after: current.
        assert!(!g.current(&it));
        assert!(!g.current(&it.with_gen(1)));
        assert!(g.current(&it.with_gen(2)) && g.current(&it.with_gen(3)));
        // Another class's bump does not touch it.
        assert!(gens(&[("sold", "4")]).unwrap().current(&it));
        // Many classes (a map rather than a scan) answer the same.
        let many: Vec<(String, String)> = (0..40)
            .map(|i| (format!("c{i}"), i.to_string()))
            .chain([("active".to_string(), "7".to_string())])
            .collect();
        let g = Generations::from_fields(many).unwrap();
        assert_eq!((g.len(), g.of("c39"), g.of("x")), (41, 39, 0));
        assert!(!g.current(&it.with_gen(6)) && g.current(&it.with_gen(7)));
        // `all` (its field is no class) makes every value stamped before it stale, and
        // is the least a value fetched after it is stamped with.
        let g = gens(&[(ALL_FIELD, "5"), ("sold", "7")]).unwrap();
        assert_eq!((g.len(), g.of("active"), g.of("sold")), (1, 5, 7));
        assert!(!g.current(&it.with_gen(4)), "stamped before all");
        assert!(g.current(&it.with_gen(5)));
        let g = gens(&[(ALL_FIELD, "5"), ("active", "7")]).unwrap();
        assert!(!g.current(&it.with_gen(6)) && g.current(&it.with_gen(7)));
        let g = gens(&[(ALL_FIELD, "5")]).unwrap();
        assert!(g.is_empty() && !g.current(&it.with_gen(4)) && g.current(&it.with_gen(5)));
        // A generation that is not a number is an error, not 0.
        let e = gens(&[("active", "x")]).unwrap_err();
        assert!(
            e.contains("\"active\"") && e.contains("not a number"),
            "{e}"
        );
    }

    fn item(id: &str, exp: u64) -> StoredItem {
        StoredItem::new(
            id,
            -122.3,
            47.6,
            "active",
            Access::Registered,
            exp,
            &raw(r#"{"p":1}"#),
        )
    }

    #[test]
    fn a_tile_round_trips_its_items_in_order_sharing_one_buffer() {
        let (a, b, c) = (item("a", 900), item("b/ü", 500), item("c", 700));
        let (a, c) = (a.with_gen(3), c.with_gen(1 << 40));
        let v = encode_tile(&[&a, &b, &c], 800, Access::Agent).unwrap();
        let (exp, at, items) = decode_tile(v).unwrap();
        assert_eq!(at, Access::Agent);
        // The list's expiry, not the soonest of its items' (b's): which items a tile holds
        // is the top tier's business.
        assert_eq!(exp, 800);
        let ids: Vec<&str> = items.iter().map(|i| i.id()).collect();
        assert_eq!(ids, ["a", "b/ü", "c"]);
        for (back, it) in items.iter().zip([&a, &b, &c]) {
            assert_eq!(back.wire(42), it.wire(42));
            assert_eq!(
                (back.exp(), back.access(), back.gen()),
                (it.exp(), it.access(), it.gen())
            );
            assert_eq!((back.lon(), back.lat()), (it.lon(), it.lat()));
            // The item re-encoded alone is its item key's value.
            assert_eq!(back.encode(), it.encode());
        }
        assert!(Arc::ptr_eq(&items[0].buf, &items[2].buf));
        // An empty tile.
        let (exp, _, items) = decode_tile(encode_tile(&[], 60, Access::Agent).unwrap()).unwrap();
        assert_eq!((exp, items.len()), (60, 0));
    }

    /// A list fetched below `agent` comes back with its tier; an older reader (one that
    /// knows only the version byte) finds no tile there; a value claiming a tier below one
    /// of its items is absent.
    #[test]
    fn a_tile_fetched_below_agent_keeps_its_tier() {
        let (a, b) = (item("a", 900), item("b", 500));
        for tier in [Access::Public, Access::Registered, Access::Verified] {
            let v = encode_tile(&[], 800, tier).unwrap();
            assert_eq!(v.len(), TILE_TRAILER + 1);
            assert_ne!(v.last(), Some(&VERSION_BYTE));
            let (exp, at, items) = decode_tile(v).unwrap();
            assert_eq!((exp, at, items.len()), (800, tier, 0));
        }
        // `item` is `registered`.
        let v = encode_tile(&[&a, &b], 800, Access::Registered).unwrap();
        let (_, at, items) = decode_tile(v.clone()).unwrap();
        assert_eq!((at, items.len()), (Access::Registered, 2));
        assert!(decode_tile(encode_tile(&[&a, &b], 800, Access::Public).unwrap()).is_none());
        // The tier byte must name a tier below agent.
        let mut bad = v.clone();
        let n = bad.len();
        for rank in [3u8, 4, 0xff] {
            bad[n - 2] = rank;
            assert!(decode_tile(bad.clone()).is_none(), "rank {rank}");
        }
        // Every truncation.
        for k in 0..v.len() {
            assert!(decode_tile(v[..k].to_vec()).is_none(), "first {k} bytes");
        }
    }

    #[test]
    fn a_damaged_tile_is_absent() {
        let (a, b) = (item("a", 900), item("b", 500));
        let v = encode_tile(&[&a, &b], 800, Access::Agent).unwrap();
        // Every truncation, from either end.
        for n in 0..v.len() {
            assert!(decode_tile(v[..n].to_vec()).is_none(), "first {n} bytes");
            assert!(
                decode_tile(v[n + 1..].to_vec()).is_none(),
                "from byte {}",
                n + 1
            );
        }
        // A count that claims more items than the value holds, or fewer.
        let n = v.len();
        for count in [0u32, 1, 3, u32::MAX] {
            let mut bad = v.clone();
            bad[n - TILE_TRAILER..n - TILE_TRAILER + 4].copy_from_slice(&count.to_le_bytes());
            assert!(decode_tile(bad).is_none(), "count {count}");
        }
        // A text length that cuts an item in the middle of a character, and text that is
        // not UTF-8.
        let text_len = n - TILE_TRAILER - 2 * TILE_ENTRY;
        let mut bad = v.clone();
        bad[text_len..text_len + 4].copy_from_slice(&1u32.to_le_bytes());
        assert!(decode_tile(bad).is_none());
        let mut bad = v.clone();
        bad[3] = 0xff;
        assert!(decode_tile(bad).is_none());
        // An item trailer of another version inside.
        let mut bad = v;
        bad[text_len + TILE_ENTRY - 1] = 2;
        assert!(decode_tile(bad).is_none());
    }

    fn access() -> impl Strategy<Value = Access> {
        prop::sample::select(Access::ALL.to_vec())
    }

    fn json_data() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("null".to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            "\\PC{0,12}".prop_map(|s| serde_json::to_string(&s).unwrap()),
            (
                "\\PC{0,6}",
                any::<f64>().prop_filter("finite", |f| f.is_finite())
            )
                .prop_map(|(k, f)| format!(
                    "{{ {} : [ {f} , true ] }}",
                    serde_json::to_string(&k).unwrap()
                )),
        ]
    }

    proptest! {
        /// The spliced item is exactly what serde_json writes for the protocol's item,
        /// for any id, class, position, tier, ttl and data, after a Redis round trip.
        #[test]
        fn spliced_items_equal_serde_items(
            id in "\\PC{1,12}",
            class in "\\PC{0,10}",
            lon in -180.0f64..180.0,
            lat in -85.0f64..85.0,
            tier in access(),
            exp in any::<u64>(),
            ttl in any::<u32>(),
            data in json_data(),
        ) {
            let data = raw(&data);
            let it = StoredItem::new(&id, lon, lat, &class, tier, exp, &data);
            let back = StoredItem::decode(it.encode()).unwrap();
            let want = serde_json::to_string(&WireItem {
                id: &id, lon, lat, class: &class, access: tier, ttl, data: &data,
            }).unwrap();
            prop_assert_eq!(back.wire(ttl), want);
            prop_assert_eq!((back.id(), back.class(), back.access, back.exp), (&id[..], &class[..], tier, exp));
            prop_assert_eq!((back.lon.to_bits(), back.lat.to_bits()), (lon.to_bits(), lat.to_bits()));
        }

        /// Whatever bytes Redis hands back, decoding answers or refuses; it never panics.
        #[test]
        fn any_bytes_decode_or_are_refused(v in prop::collection::vec(any::<u8>(), 0..80)) {
            let _ = StoredItem::decode(v.clone());
            let _ = decode_tile(v);
        }

        /// A tile of any items round trips, and any byte of its value changed or cut off
        /// decodes to something or to absent, never a panic.
        #[test]
        fn tiles_round_trip_and_damaged_tiles_never_panic(
            items in prop::collection::vec(
                ("\\PC{1,8}", "\\PC{0,6}", access(), any::<u64>(), json_data()),
                0..6,
            ),
            list_exp in any::<u64>(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let items: Vec<StoredItem> = items
                .iter()
                .map(|(id, class, tier, exp, data)| {
                    StoredItem::new(id, 1.5, -2.5, class, *tier, *exp, &raw(data))
                })
                .collect();
            let refs: Vec<&StoredItem> = items.iter().collect();
            let v = encode_tile(&refs, list_exp, Access::Agent).unwrap();
            let (exp, _, back) = decode_tile(v.clone()).unwrap();
            prop_assert_eq!(exp, list_exp);
            prop_assert_eq!(back.len(), items.len());
            for (b, i) in back.iter().zip(&items) {
                prop_assert_eq!(b.wire(7), i.wire(7));
            }
            let i = at.index(v.len());
            let mut changed = v.clone();
            changed[i] = byte;
            let _ = decode_tile(changed);
            let _ = decode_tile(v[..i].to_vec());
        }
    }
}
