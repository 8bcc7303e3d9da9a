//! The cache tier's storage format, in one place: what an item and a tile list are as
//! bytes (in Redis; the in-process tier holds the same [`StoredItem`]s), and the Redis keys.
//!
//! An item is held as the JSON text it is served as, so answering a request copies bytes
//! into the response instead of parsing and re-serialising each item. The text is split
//! where the per-request `ttl` goes: `{"id":…,"lon":…,"lat":…,"class":…,"access":…,"ttl":`
//! (the *head*), then the seconds left, then `,"data":…}` (the *tail*). What the request path
//! needs without parsing JSON (the tier, for the per-caller filter; the position, for tiles
//! finer than the data zoom; the expiry) sits in a fixed-size binary trailer.
//!
//! # Format version 2 (keys `<prefix>v2:…`)
//! The version is part of every key ([`VERSION`]), so entries written in another format are
//! never read as this one (they are simply not found, and expire).
//! - `<prefix>v2:i:<id>` → item: UTF-8 text `id ‖ class ‖ head ‖ tail`, then a 38-byte
//!   trailer, little-endian: `access` (u8, 0 = public … 3 = agent), `exp` (u64, Unix ms),
//!   `lon`, `lat` (f64), the byte lengths of id, class and head (u32 each), and the
//!   version byte `2`.
//! - `<prefix>v2:t:<z>/<x>/<y>` → tile list: the ids joined by `\n` (ids never hold control
//!   characters), then a 9-byte trailer: `exp` (u64, Unix ms) and the version byte `2`.
//!
//! A value that does not decode (wrong version byte, lengths that do not fit, text that is
//! not UTF-8, an unknown tier) is treated as absent, never served.

use serde::Serialize;
use serde_json::value::RawValue;
use tilewarm::access::Access;
use tilewarm::proxy::policy::ProxyItem;
use tilewarm::tile::TileId;

/// The storage format's part of every Redis key (after the configured prefix).
pub const VERSION: &str = "v2:";

/// The last byte of every stored value.
const VERSION_BYTE: u8 = 2;

/// Item trailer: access, exp, lon, lat, three lengths, version.
const ITEM_TRAILER: usize = 1 + 8 + 8 + 8 + 4 + 4 + 4 + 1;

/// Tile list trailer: exp, version.
const TILE_TRAILER: usize = 8 + 1;

/// Between the item's head and its data.
const DATA_KEY: &str = ",\"data\":";

/// One item as the cache tier holds it: its wire JSON (split around `ttl`), its tier,
/// position and expiry. Built once per origin answer ([`StoredItem::new`]) or per Redis
/// read ([`StoredItem::decode`], which takes the value's buffer without copying it).
#[derive(Clone)]
pub struct StoredItem {
    /// `id ‖ class ‖ head ‖ tail`.
    text: String,
    id_end: usize,
    class_end: usize,
    head_end: usize,
    access: Access,
    /// Unix milliseconds at which it stops being fresh.
    exp: u64,
    lon: f64,
    lat: f64,
}

impl std::fmt::Debug for StoredItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredItem")
            .field("id", &self.id())
            .field("access", &self.access)
            .field("exp", &self.exp)
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
            text,
            access,
            exp,
            lon,
            lat,
        }
    }

    /// The item's id.
    pub fn id(&self) -> &str {
        &self.text[..self.id_end]
    }

    /// The item's class.
    pub fn class(&self) -> &str {
        &self.text[self.id_end..self.class_end]
    }

    /// The lowest tier allowed to see it.
    pub fn access(&self) -> Access {
        self.access
    }

    /// Unix milliseconds at which it stops being fresh.
    pub fn exp(&self) -> u64 {
        self.exp
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
        let tail = &self.text[self.head_end..];
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
        self.text.len() - self.class_end
    }

    /// Appends the wire item with `ttl` seconds left to `out`: the protocol's `Item` JSON,
    /// byte for byte what serde_json writes for it.
    pub fn write_wire(&self, out: &mut String, ttl: u32) {
        out.push_str(&self.text[self.class_end..self.head_end]);
        out.push_str(itoa::Buffer::new().format(ttl));
        out.push_str(&self.text[self.head_end..]);
    }

    /// The wire item with `ttl` seconds left.
    pub fn wire(&self, ttl: u32) -> String {
        let mut s = String::with_capacity(self.text.len() - self.class_end + 10);
        self.write_wire(&mut s, ttl);
        s
    }

    /// The Redis value.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.text.len() + ITEM_TRAILER);
        v.extend_from_slice(self.text.as_bytes());
        v.push(self.access.rank());
        v.extend_from_slice(&self.exp.to_le_bytes());
        v.extend_from_slice(&self.lon.to_le_bytes());
        v.extend_from_slice(&self.lat.to_le_bytes());
        for len in [
            self.id_end,
            self.class_end - self.id_end,
            self.head_end - self.class_end,
        ] {
            v.extend_from_slice(&(len as u32).to_le_bytes());
        }
        v.push(VERSION_BYTE);
        v
    }

    /// An item from its Redis value (the buffer becomes the item's text, not copied), or
    /// `None` when it is not a version-2 item.
    pub fn decode(mut v: Vec<u8>) -> Option<StoredItem> {
        let at = v.len().checked_sub(ITEM_TRAILER)?;
        let t = &v[at..];
        if t[ITEM_TRAILER - 1] != VERSION_BYTE {
            return None;
        }
        let access = *Access::ALL.get(t[0] as usize)?;
        let u64_at = |i: usize| u64::from_le_bytes(t[i..i + 8].try_into().unwrap_or([0; 8]));
        let u32_at =
            |i: usize| u32::from_le_bytes(t[i..i + 4].try_into().unwrap_or([0; 4])) as usize;
        let exp = u64_at(1);
        let lon = f64::from_bits(u64_at(9));
        let lat = f64::from_bits(u64_at(17));
        let id_end = u32_at(25);
        let class_end = id_end.checked_add(u32_at(29))?;
        let head_end = class_end.checked_add(u32_at(33))?;
        v.truncate(at);
        let text = String::from_utf8(v).ok()?;
        let fits = head_end <= text.len()
            && [id_end, class_end, head_end]
                .iter()
                .all(|&i| text.is_char_boundary(i))
            && text[head_end..].starts_with(DATA_KEY)
            && text.ends_with('}');
        fits.then_some(StoredItem {
            text,
            id_end,
            class_end,
            head_end,
            access,
            exp,
            lon,
            lat,
        })
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

/// A tile list's Redis value, or `None` when it cannot be stored in this format (an id that
/// is empty or holds a newline; the protocol allows neither).
pub fn encode_tile<S: AsRef<str>>(ids: &[S], exp: u64) -> Option<Vec<u8>> {
    let len: usize = ids.iter().map(|id| id.as_ref().len() + 1).sum();
    let mut v = Vec::with_capacity(len + TILE_TRAILER);
    for (i, id) in ids.iter().enumerate() {
        let id = id.as_ref();
        if id.is_empty() || id.contains('\n') {
            return None;
        }
        if i > 0 {
            v.push(b'\n');
        }
        v.extend_from_slice(id.as_bytes());
    }
    v.extend_from_slice(&exp.to_le_bytes());
    v.push(VERSION_BYTE);
    Some(v)
}

/// A tile list from its Redis value: the expiry and the ids (borrowed), or `None` when it
/// is not a version-2 list.
pub fn decode_tile(v: &[u8]) -> Option<(u64, Vec<&str>)> {
    let at = v.len().checked_sub(TILE_TRAILER)?;
    if v[v.len() - 1] != VERSION_BYTE {
        return None;
    }
    let exp = u64::from_le_bytes(v[at..at + 8].try_into().ok()?);
    let text = std::str::from_utf8(&v[..at]).ok()?;
    let ids = if text.is_empty() {
        Vec::new()
    } else {
        text.split('\n').collect()
    };
    Some((exp, ids))
}

/// The Redis keys under a configured prefix, in this format's version.
#[derive(Debug, Clone)]
pub struct Keys {
    /// The configured prefix.
    prefix: String,
    /// `<prefix>v2:i:`
    items: String,
    /// `<prefix>v2:t:`
    tiles: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
            items: format!("{prefix}{VERSION}i:"),
            tiles: format!("{prefix}{VERSION}t:"),
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

    /// What every tile list key starts with.
    pub fn tiles_prefix(&self) -> &str {
        &self.tiles
    }

    /// `<prefix>v2:i:<id>`
    pub fn item(&self, id: &str) -> String {
        let mut k = String::with_capacity(self.items.len() + id.len());
        k.push_str(&self.items);
        k.push_str(id);
        k
    }

    /// `<prefix>v2:t:<z>/<x>/<y>`
    pub fn tile(&self, t: TileId) -> String {
        format!("{}{t}", self.tiles)
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
        let back = StoredItem::decode(it.encode()).unwrap();
        assert_eq!(back.id(), "a\"b\\ü");
        assert_eq!(back.class(), "off_market");
        assert_eq!(
            (back.lon, back.lat, back.access, back.exp),
            (it.lon, 47.1, Access::Agent, 42)
        );
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
    }

    #[test]
    fn values_of_another_format_are_not_read() {
        let it = StoredItem::new("x", 1.0, 2.0, "active", Access::Public, 9, &raw("1"));
        let mut v = it.encode();
        // The version-1 format: the item as a JSON object.
        assert!(StoredItem::decode(br#"{"id":"x","lon":1,"lat":2}"#.to_vec()).is_none());
        assert!(StoredItem::decode(Vec::new()).is_none());
        let n = v.len();
        v[n - 1] = 1;
        assert!(StoredItem::decode(v.clone()).is_none());
        v[n - 1] = VERSION_BYTE;
        // A tier that does not exist, and lengths that do not fit.
        v[n - ITEM_TRAILER] = 9;
        assert!(StoredItem::decode(v.clone()).is_none());
        v[n - ITEM_TRAILER] = 0;
        v[n - 13..n - 9].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(StoredItem::decode(v).is_none());
        assert!(decode_tile(br#"{"exp":1,"ids":["a"]}"#).is_none());
    }

    #[test]
    fn tile_lists_round_trip_and_refuse_ids_they_cannot_hold() {
        let v = encode_tile(&["a", "b/c", "ü"], 77).unwrap();
        assert_eq!(decode_tile(&v), Some((77, vec!["a", "b/c", "ü"])));
        let empty: [&str; 0] = [];
        assert_eq!(
            decode_tile(&encode_tile(&empty, 5).unwrap()),
            Some((5, vec![]))
        );
        assert!(encode_tile(&["a\nb"], 1).is_none());
        assert!(encode_tile(&["a", ""], 1).is_none());
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
            let _ = decode_tile(&v);
        }
    }
}
