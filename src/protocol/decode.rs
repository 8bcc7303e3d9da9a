//! Bounded deserialisation: the seeds that read requests and responses with serde_json,
//! enforcing the count limits while parsing (see the [module docs](super)).
//!
//! serde errors can only carry a message, so a typed error found mid-parse (a list over its
//! limit) is put in a [`Slot`] and a placeholder serde error unwinds the parse; [`parse`]
//! then returns the slot's error in preference to serde_json's.

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Number;

use super::{ErrorCode, Limits, ProtocolError, RawData};

pub(super) type Slot = Cell<Option<ProtocolError>>;

pub(super) fn parse<'de, S: DeserializeSeed<'de>>(
    body: &'de [u8],
    seed: S,
    slot: &Slot,
) -> Result<S::Value, ProtocolError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    seed.deserialize(&mut de)
        .and_then(|value| de.end().map(|()| value))
        .map_err(|e| slot.take().unwrap_or_else(|| json_error(&e)))
}

/// Longest serde_json message kept in [`ProtocolError::Json`], in characters. serde_json
/// quotes an offending string whole (`invalid type: string "…", expected …`), so without a
/// cap a body that is one long string came back in full in the error (found by the
/// `server_request` fuzz target). Longer messages keep their head and their tail (what
/// was expected), joined by `…`.
const MAX_JSON_MESSAGE_CHARS: usize = 256;

fn json_error(e: &serde_json::Error) -> ProtocolError {
    let (line, column) = (e.line(), e.column());
    let full = e.to_string();
    let message = full
        .strip_suffix(&format!(" at line {line} column {column}"))
        .unwrap_or(&full);
    ProtocolError::Json {
        line,
        column,
        message: clip_middle(message, MAX_JSON_MESSAGE_CHARS),
    }
}

/// `s` if it has at most `max` characters; else its first `max * 5 / 8` and last
/// `max / 4` characters joined by `…`.
pub(super) fn clip_middle(s: &str, max: usize) -> String {
    let count = s.chars().count();
    if count <= max {
        return s.to_owned();
    }
    let (head, tail) = (max * 5 / 8, max / 4);
    let mut out: String = s.chars().take(head).collect();
    out.push('…');
    out.extend(s.chars().skip(count - tail));
    out
}

/// A JSON array (or `null`, read as empty) of at most `max` elements, each read with a seed
/// from `seed`. Elements past `max` are skipped unread and counted for the error.
pub(super) struct Bounded<'a, F> {
    what: &'static str,
    max: usize,
    slot: &'a Slot,
    seed: F,
}

impl<'de, F, S> DeserializeSeed<'de> for Bounded<'_, F>
where
    F: FnMut() -> S,
    S: DeserializeSeed<'de>,
{
    type Value = Vec<S::Value>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de, F, S> Visitor<'de> for Bounded<'_, F>
where
    F: FnMut() -> S,
    S: DeserializeSeed<'de>,
{
    type Value = Vec<S::Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Self::Value, A::Error> {
        let hint = seq.size_hint().unwrap_or(0);
        let mut out = Vec::with_capacity(hint.min(self.max).min(1024));
        while out.len() < self.max {
            match seq.next_element_seed((self.seed)())? {
                Some(v) => out.push(v),
                None => return Ok(out),
            }
        }
        let mut count = out.len();
        while seq.next_element::<IgnoredAny>()?.is_some() {
            count += 1;
        }
        if count > self.max {
            let e = ProtocolError::TooMany {
                what: self.what,
                count,
                max: self.max,
            };
            let message = e.to_string();
            self.slot.set(Some(e));
            return Err(de::Error::custom(message));
        }
        Ok(out)
    }
}

pub(super) fn bounded<'a, T>(
    what: &'static str,
    max: usize,
    slot: &'a Slot,
) -> Bounded<'a, impl FnMut() -> PhantomData<T>> {
    Bounded {
        what,
        max,
        slot,
        seed: PhantomData::<T>::default,
    }
}

pub(super) fn set_once<T, E: de::Error>(
    field: &mut Option<T>,
    name: &'static str,
    v: T,
) -> Result<(), E> {
    if field.is_some() {
        return Err(E::duplicate_field(name));
    }
    *field = Some(v);
    Ok(())
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum RequestField {
    Tiles,
    Ids,
    Access,
    #[serde(other)]
    Other,
}

pub(super) struct WireRequest {
    pub(super) tiles: Vec<String>,
    pub(super) ids: Vec<String>,
    pub(super) access: Option<String>,
}

pub(super) struct RequestSeed<'a> {
    pub(super) limits: &'a Limits,
    pub(super) slot: &'a Slot,
}

impl<'de> DeserializeSeed<'de> for RequestSeed<'_> {
    type Value = WireRequest;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<WireRequest, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RequestSeed<'_> {
    type Value = WireRequest;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a batch request object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WireRequest, A::Error> {
        let (mut tiles, mut ids, mut access) = (None, None, None);
        while let Some(key) = map.next_key()? {
            match key {
                RequestField::Tiles => {
                    let seed = bounded::<String>("request tiles", self.limits.max_tiles, self.slot);
                    set_once(&mut tiles, "tiles", map.next_value_seed(seed)?)?
                }
                RequestField::Ids => {
                    let seed = bounded::<String>("request ids", self.limits.max_ids, self.slot);
                    set_once(&mut ids, "ids", map.next_value_seed(seed)?)?
                }
                RequestField::Access => {
                    set_once(&mut access, "access", map.next_value::<Option<String>>()?)?
                }
                RequestField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(WireRequest {
            tiles: tiles.unwrap_or_default(),
            ids: ids.unwrap_or_default(),
            access: access.flatten(),
        })
    }
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum ResponseField {
    Tiles,
    Items,
    Missing,
    Access,
    Error,
    #[serde(other)]
    Other,
}

pub(super) struct WireResponse {
    pub(super) tiles: Vec<WireTileList>,
    pub(super) items: Vec<WireItem>,
    pub(super) missing: Vec<String>,
    pub(super) access: Option<String>,
    /// The known `code` of a partial answer's `error` member.
    pub(super) left_out: Option<ErrorCode>,
}

/// A partial answer's `error` member as far as a client reads it: its code (the tiles and
/// ids it names are what the request asked and the answer does not hold).
#[derive(Deserialize)]
struct WireLeftOut {
    code: String,
}

pub(super) struct ResponseSeed<'a> {
    pub(super) limits: &'a Limits,
    pub(super) slot: &'a Slot,
}

impl<'de> DeserializeSeed<'de> for ResponseSeed<'_> {
    type Value = WireResponse;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<WireResponse, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ResponseSeed<'_> {
    type Value = WireResponse;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a batch response object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WireResponse, A::Error> {
        let (mut tiles, mut items, mut missing, mut access) = (None, None, None, None);
        let mut left_out = None;
        let Self { limits, slot } = self;
        while let Some(key) = map.next_key()? {
            match key {
                ResponseField::Tiles => {
                    let seed = Bounded {
                        what: "response tiles",
                        max: limits.max_tiles,
                        slot,
                        seed: || TileListSeed { limits, slot },
                    };
                    set_once(&mut tiles, "tiles", map.next_value_seed(seed)?)?
                }
                ResponseField::Items => {
                    let seed = Bounded {
                        what: "response items",
                        max: limits.max_items,
                        slot,
                        seed: || ItemSeed,
                    };
                    set_once(&mut items, "items", map.next_value_seed(seed)?)?
                }
                ResponseField::Missing => {
                    let seed = bounded::<String>("missing ids", limits.max_ids, slot);
                    set_once(&mut missing, "missing", map.next_value_seed(seed)?)?
                }
                ResponseField::Access => {
                    set_once(&mut access, "access", map.next_value::<Option<String>>()?)?
                }
                ResponseField::Error => {
                    // Leniently: an `error` of another shape, or an unknown code (a newer
                    // server), is none; what it leaves out is still a failure to the client.
                    let raw = map.next_value::<RawData>()?;
                    let code = serde_json::from_str::<WireLeftOut>(raw.get()).ok();
                    let code = code.and_then(|e| ErrorCode::from_name(&e.code));
                    set_once(&mut left_out, "error", code)?
                }
                ResponseField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(WireResponse {
            tiles: tiles.unwrap_or_default(),
            items: items.unwrap_or_default(),
            missing: missing.unwrap_or_default(),
            access: access.flatten(),
            left_out: left_out.flatten(),
        })
    }
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum TileListField {
    Tile,
    Ids,
    Ttl,
    #[serde(other)]
    Other,
}

pub(super) struct WireTileList {
    pub(super) tile: String,
    pub(super) ids: Vec<String>,
    pub(super) ttl: Option<Number>,
}

struct TileListSeed<'a> {
    limits: &'a Limits,
    slot: &'a Slot,
}

impl<'de> DeserializeSeed<'de> for TileListSeed<'_> {
    type Value = WireTileList;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<WireTileList, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TileListSeed<'_> {
    type Value = WireTileList;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a tile list object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WireTileList, A::Error> {
        let (mut tile, mut ids, mut ttl) = (None, None, None);
        while let Some(key) = map.next_key()? {
            match key {
                TileListField::Tile => set_once(&mut tile, "tile", map.next_value::<String>()?)?,
                TileListField::Ids => {
                    let seed = bounded::<String>("tile list ids", self.limits.max_items, self.slot);
                    set_once(&mut ids, "ids", map.next_value_seed(seed)?)?
                }
                TileListField::Ttl => {
                    set_once(&mut ttl, "ttl", map.next_value::<Option<Number>>()?)?
                }
                TileListField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(WireTileList {
            tile: tile.ok_or_else(|| de::Error::missing_field("tile"))?,
            ids: ids.unwrap_or_default(),
            ttl: ttl.flatten(),
        })
    }
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum ItemField {
    Id,
    Lon,
    Lat,
    Class,
    Access,
    Ttl,
    Data,
    #[serde(other)]
    Other,
}

pub(super) struct WireItem {
    pub(super) id: String,
    pub(super) lon: f64,
    pub(super) lat: f64,
    pub(super) class: String,
    pub(super) access: String,
    pub(super) ttl: Option<Number>,
    pub(super) data: RawData,
}

/// Reads an item object; hand-written (not derived) so that only objects are accepted,
/// not serde's positional-array form of a struct.
struct ItemSeed;

impl<'de> DeserializeSeed<'de> for ItemSeed {
    type Value = WireItem;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<WireItem, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ItemSeed {
    type Value = WireItem;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an item object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WireItem, A::Error> {
        let (mut id, mut lon, mut lat, mut class) = (None, None, None, None);
        let (mut access, mut ttl, mut data) = (None, None, None);
        while let Some(key) = map.next_key()? {
            match key {
                ItemField::Id => set_once(&mut id, "id", map.next_value::<String>()?)?,
                ItemField::Lon => set_once(&mut lon, "lon", map.next_value::<f64>()?)?,
                ItemField::Lat => set_once(&mut lat, "lat", map.next_value::<f64>()?)?,
                ItemField::Class => set_once(&mut class, "class", map.next_value::<String>()?)?,
                ItemField::Access => set_once(&mut access, "access", map.next_value::<String>()?)?,
                ItemField::Ttl => set_once(&mut ttl, "ttl", map.next_value::<Option<Number>>()?)?,
                ItemField::Data => set_once(&mut data, "data", map.next_value::<RawData>()?)?,
                ItemField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(WireItem {
            id: id.ok_or_else(|| de::Error::missing_field("id"))?,
            lon: lon.ok_or_else(|| de::Error::missing_field("lon"))?,
            lat: lat.ok_or_else(|| de::Error::missing_field("lat"))?,
            class: class.ok_or_else(|| de::Error::missing_field("class"))?,
            access: access.ok_or_else(|| de::Error::missing_field("access"))?,
            ttl: ttl.flatten(),
            data: data.ok_or_else(|| de::Error::missing_field("data"))?,
        })
    }
}
