//! The batch wire protocol: one `POST` with tiles and ids in, tile lists and items out.
//!
//! ```text
//! request:  {"tiles": ["14/2624/5721", ...], "ids": ["...", ...], "access": "public"}
//! response: {"tiles": [{"tile": "14/2624/5721", "ids": ["a", "b"], "ttl": 300}],
//!            "items": [{"id": "a", "lon": -122.33, "lat": 47.61, "class": "off_market",
//!                       "access": "public", "ttl": 14400, "data": {...any JSON...}}],
//!            "missing": ["ids that do not exist"]}
//! error:    4xx/5xx with {"error": {"code": "bad_request", "message": "..."}}
//! ```
//!
//! Both directions are decoded here: [`decode_request`] for the server, [`decode_response`]
//! and [`decode_error`] for the client. Decoding never panics; every failure is a
//! [`ProtocolError`] whose message names the offending field and what is allowed.
//!
//! # What the decoders accept
//!
//! - Unknown fields are ignored, at every level. A field given twice is an error.
//! - In a request, `tiles` and `ids` may be absent or `null` (= empty) and `access` may be
//!   absent or `null` (= `public`). A request with no tiles and no ids is an error.
//! - In a response, `tiles`, `items` and `missing` may be absent or `null` (= empty); a tile
//!   list's `ids` may be absent (= empty). `ttl` may be absent or `null`; otherwise it is a
//!   whole number of seconds (an integer literal such as `300`, not `300.0`) in
//!   `0..=`[`Limits::max_ttl_s`]. Every item needs `id`, `lon`, `lat`, `class`, `access` and
//!   `data` (`data` may be any JSON value, `null` included).
//! - Ids: non-empty, at most [`Limits::max_id_len`] bytes, no control characters
//!   (`char::is_control`: U+0000–U+001F, U+007F–U+009F).
//! - Classes: non-empty, at most [`Limits::max_class_len`] bytes of lowercase ASCII letters,
//!   digits, `_` and `-`.
//! - `lon` in −180..=180, `lat` in −90..=90, both finite. Numbers are parsed by serde_json's
//!   default float parser, which may land one ulp (about 1e-14 degrees) from the correctly
//!   rounded value; serde_json's `float_roundtrip` feature would make it exact.
//! - A response must be self-consistent: each item id once, each tile once, every id in a
//!   tile list present in `items`, and no id both in `items` and in `missing`.
//!
//! # What is bounded, and how
//!
//! - The body size is checked before anything is parsed ([`Limits::max_body_bytes`]).
//! - Counts are enforced *while parsing*: request `tiles` and `ids`, response `tiles`,
//!   `items`, `missing`, and each tile list's `ids`. Once a list reaches its maximum, the
//!   remaining elements are skipped without being deserialised or allocated (only counted,
//!   so the error can say how many there were). Counts are of entries as sent, duplicates
//!   included.
//! - Not bounded by a count, only by the body size: the total number of ids over all tile
//!   lists (each list is bounded by [`Limits::max_items`]), the length of strings while they
//!   are parsed (they are checked right after), and the size of `data` and of unknown
//!   fields. `data` is kept as raw JSON text ([`RawData`]) and unknown fields are skipped;
//!   serde_json skips both iteratively, so deep nesting there costs no stack. The
//!   protocol's own objects nest a fixed three levels deep.
//!
//! ```
//! use tilewarm::{decode_response, Limits};
//! let body = br#"{"tiles":[{"tile":"14/2624/5721","ids":["a"],"ttl":300}],
//!   "items":[{"id":"a","lon":-122.33,"lat":47.61,"class":"off_market","access":"public",
//!             "data":{"price":1}}]}"#;
//! let resp = decode_response(body, &Limits::default()).unwrap();
//! assert_eq!(resp.items[0].data.get(), r#"{"price":1}"#);
//! assert!(resp.missing.is_empty());
//! ```

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use serde_json::Number;

use crate::access::{Access, UnknownAccess};
use crate::tile::{TileError, TileId, MAX_ZOOM};

/// Size limits for decoding. Every field has a documented default ([`Limits::default`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest body accepted, in bytes. Default 8 MiB.
    pub max_body_bytes: usize,
    /// Most tiles in a request (and tile lists in a response). Default 64.
    pub max_tiles: usize,
    /// Most ids in a request (and entries in a response's `missing`). Default 1000.
    pub max_ids: usize,
    /// Most items in a response (and ids in one tile list). Default 50 000.
    pub max_items: usize,
    /// Longest id, in bytes. Default 256.
    pub max_id_len: usize,
    /// Longest item class, in bytes. Default 64.
    pub max_class_len: usize,
    /// Longest ttl, in seconds. Default 30 days (2 592 000).
    pub max_ttl_s: u32,
    /// Coarsest zoom a request may ask for (the finest is always 24). Default 0.
    pub min_zoom: u8,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_body_bytes: 8 * 1024 * 1024,
            max_tiles: 64,
            max_ids: 1000,
            max_items: 50_000,
            max_id_len: 256,
            max_class_len: 64,
            max_ttl_s: 30 * 24 * 60 * 60,
            min_zoom: 0,
        }
    }
}

/// Item payloads as raw JSON text: kept byte for byte, never re-parsed.
pub type RawData = Box<RawValue>;

/// Largest error body [`decode_error`] reads; larger bodies give `None`.
pub const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// Longest error message [`decode_error`] keeps, in characters; the rest is cut off.
pub const MAX_ERROR_MESSAGE_CHARS: usize = 1024;

/// How many characters of offending input an error message quotes.
const QUOTE_CHARS: usize = 64;

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// Why a body could not be decoded. Every message names the field and what is allowed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The body is longer than [`Limits::max_body_bytes`]; nothing was parsed.
    #[error("body is {size} bytes, at most {max} are allowed")]
    BodyTooLarge { size: usize, max: usize },
    /// The body is not JSON of the expected shape (syntax, a wrong type, a missing or
    /// duplicated field). `message` is serde_json's, without the position.
    #[error("malformed JSON at line {line}, column {column}: {message}")]
    Json {
        line: usize,
        column: usize,
        message: String,
    },
    /// A list has more entries than allowed. `what` is `"<container> <entries>"`, e.g.
    /// `"request tiles"`, and the message reads "request has 80 tiles, ...".
    #[error("{}", too_many_message(what, *count, *max))]
    TooMany {
        what: &'static str,
        count: usize,
        max: usize,
    },
    /// `tiles[index]` is not a `z/x/y` tile. `input` is the text (cut to 64 characters).
    #[error("tiles[{index}] {input:?}: {reason}")]
    InvalidTile {
        index: usize,
        input: String,
        reason: String,
    },
    /// A requested tile is coarser than [`Limits::min_zoom`].
    #[error(
        "tiles[{index}] \"{tile}\": zoom {} is too coarse, zoom must be in {min_zoom}..={MAX_ZOOM}",
        tile.z()
    )]
    ZoomTooLow {
        index: usize,
        tile: TileId,
        min_zoom: u8,
    },
    /// Request `ids[index]` is not a valid id.
    #[error("ids[{index}]: {reason}")]
    InvalidId { index: usize, reason: String },
    /// Response `items[index]` is invalid. `id` is the item's id (cut to 64 characters).
    #[error("items[{index}] ({id:?}): {reason}")]
    InvalidItem {
        index: usize,
        id: String,
        reason: String,
    },
    /// An item's fields are invalid, from [`validate_item_fields`], which does not know the
    /// item's position; [`ProtocolError::at_item`] turns it into [`InvalidItem`].
    ///
    /// [`InvalidItem`]: ProtocolError::InvalidItem
    #[error("item {id:?}: {reason}")]
    InvalidItemFields { id: String, reason: String },
    /// Response `tiles[index]` (a tile list) is invalid.
    #[error("tiles[{index}] \"{tile}\": {reason}")]
    InvalidTileList {
        index: usize,
        tile: TileId,
        reason: String,
    },
    /// Response `missing[index]` is invalid.
    #[error("missing[{index}]: {reason}")]
    InvalidMissing { index: usize, reason: String },
    /// The request's `access` is not a known tier.
    #[error("access: {0}")]
    UnknownAccess(#[from] UnknownAccess),
    /// A request with no tiles and no ids.
    #[error("request has no tiles and no ids: at least one tile or one id is required")]
    EmptyRequest,
}

impl ProtocolError {
    /// The error code a server answers with: [`ErrorCode::PayloadTooLarge`] for
    /// [`BodyTooLarge`](ProtocolError::BodyTooLarge), [`ErrorCode::BadRequest`] for the
    /// rest. (A client that fails to decode a *response* should report it as an upstream
    /// problem rather than use this code.)
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtocolError::BodyTooLarge { .. } => ErrorCode::PayloadTooLarge,
            _ => ErrorCode::BadRequest,
        }
    }

    /// Attaches an item's position to an [`InvalidItemFields`] error, making it
    /// [`InvalidItem`]; any other error is returned unchanged.
    ///
    /// ```
    /// use tilewarm::{validate_item_fields, Limits, ProtocolError};
    /// let e = validate_item_fields("abc", 0.0, 123.4, "sold", None, &Limits::default())
    ///     .unwrap_err()
    ///     .at_item(3);
    /// assert_eq!(e.to_string(), r#"items[3] ("abc"): lat must be in -90..=90, got 123.4"#);
    /// ```
    ///
    /// [`InvalidItemFields`]: ProtocolError::InvalidItemFields
    /// [`InvalidItem`]: ProtocolError::InvalidItem
    pub fn at_item(self, index: usize) -> ProtocolError {
        match self {
            ProtocolError::InvalidItemFields { id, reason } => {
                ProtocolError::InvalidItem { index, id, reason }
            }
            other => other,
        }
    }
}

fn too_many_message(what: &str, count: usize, max: usize) -> String {
    let (owner, entries) = what.rsplit_once(' ').unwrap_or(("list", what));
    format!("{owner} has {count} {entries}, at most {max} are allowed")
}

/// The first [`QUOTE_CHARS`] characters of `s`, with `…` when cut.
fn clip(s: &str) -> String {
    match s.char_indices().nth(QUOTE_CHARS) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_owned(),
    }
}

/// `s` clipped and quoted with escapes, for messages.
fn quote(s: &str) -> String {
    format!("{:?}", clip(s))
}

// ---------------------------------------------------------------------------------------
// Field checks
// ---------------------------------------------------------------------------------------

fn check_id(id: &str, limits: &Limits) -> Result<(), String> {
    if id.is_empty() {
        return Err("id must not be empty".to_owned());
    }
    if id.len() > limits.max_id_len {
        return Err(format!(
            "id {} is {} bytes, at most {} are allowed",
            quote(id),
            id.len(),
            limits.max_id_len
        ));
    }
    if let Some(c) = id.chars().find(|c| c.is_control()) {
        return Err(format!(
            "id {} contains the control character U+{:04X}; control characters are not allowed",
            quote(id),
            c as u32
        ));
    }
    Ok(())
}

fn check_class(class: &str, limits: &Limits) -> Result<(), String> {
    if class.is_empty() {
        return Err("class must not be empty".to_owned());
    }
    if class.len() > limits.max_class_len {
        return Err(format!(
            "class {} is {} bytes, at most {} are allowed",
            quote(class),
            class.len(),
            limits.max_class_len
        ));
    }
    if let Some(c) = class
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '_' | '-'))
    {
        return Err(format!(
            "class {} contains {c:?}; allowed are a-z, 0-9, '_' and '-'",
            quote(class)
        ));
    }
    Ok(())
}

fn ttl_message(got: impl fmt::Display, limits: &Limits) -> String {
    format!(
        "ttl must be a whole number of seconds in 0..={}, got {got}",
        limits.max_ttl_s
    )
}

fn check_ttl(ttl: Option<u32>, limits: &Limits) -> Result<(), String> {
    match ttl {
        Some(t) if t > limits.max_ttl_s => Err(ttl_message(t, limits)),
        _ => Ok(()),
    }
}

/// A wire ttl (any JSON number) as seconds: a non-negative integer within the limit.
fn ttl_from_wire(n: Option<Number>, limits: &Limits) -> Result<Option<u32>, String> {
    let Some(n) = n else { return Ok(None) };
    match n.as_u64() {
        Some(t) if t <= u64::from(limits.max_ttl_s) && t <= u64::from(u32::MAX) => {
            Ok(Some(t as u32))
        }
        _ => Err(ttl_message(n, limits)),
    }
}

/// Checks one item's fields: id, `lon` finite in −180..=180, `lat` finite in −90..=90,
/// class, and ttl (see the [module docs](self) for the rules). Used by [`decode_response`]
/// through [`BatchResponse::validate`], and by decoders that build items themselves.
///
/// The error is [`ProtocolError::InvalidItemFields`]; [`ProtocolError::at_item`] adds the
/// item's position.
///
/// ```
/// use tilewarm::{validate_item_fields, Limits};
/// let limits = Limits::default();
/// assert!(validate_item_fields("a", -122.33, 47.61, "off_market", Some(300), &limits).is_ok());
/// let e = validate_item_fields("a", 0.0, 0.0, "Sold", None, &limits).unwrap_err();
/// assert_eq!(e.to_string(), r#"item "a": class "Sold" contains 'S'; allowed are a-z, 0-9, '_' and '-'"#);
/// ```
pub fn validate_item_fields(
    id: &str,
    lon: f64,
    lat: f64,
    class: &str,
    ttl: Option<u32>,
    limits: &Limits,
) -> Result<(), ProtocolError> {
    let reason = check_id(id, limits)
        .and_then(|()| {
            if lon.is_finite() && (-180.0..=180.0).contains(&lon) {
                Ok(())
            } else {
                Err(format!("lon must be in -180..=180, got {lon}"))
            }
        })
        .and_then(|()| {
            if lat.is_finite() && (-90.0..=90.0).contains(&lat) {
                Ok(())
            } else {
                Err(format!("lat must be in -90..=90, got {lat}"))
            }
        })
        .and_then(|()| check_class(class, limits))
        .and_then(|()| check_ttl(ttl, limits));
    reason.map_err(|reason| ProtocolError::InvalidItemFields {
        id: clip(id),
        reason,
    })
}

fn check_body(body: &[u8], limits: &Limits) -> Result<(), ProtocolError> {
    if body.len() > limits.max_body_bytes {
        return Err(ProtocolError::BodyTooLarge {
            size: body.len(),
            max: limits.max_body_bytes,
        });
    }
    Ok(())
}

fn parse_tile(index: usize, s: &str) -> Result<TileId, ProtocolError> {
    s.parse()
        .map_err(|e: TileError| ProtocolError::InvalidTile {
            index,
            input: clip(s),
            reason: match e {
                TileError::Parse { reason, .. } => reason.to_owned(),
                other => other.to_string(),
            },
        })
}

/// `v` without repeats, keeping the first occurrence of each value in order.
fn dedup<T: Eq + Hash + Clone>(v: &mut Vec<T>) {
    let mut seen = HashSet::with_capacity(v.len());
    v.retain(|x| seen.insert(x.clone()));
}

// ---------------------------------------------------------------------------------------
// Request
// ---------------------------------------------------------------------------------------

/// What the client asks for: the tiles in (or near) view and single ids, at its tier.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BatchRequest {
    /// Tiles whose item lists are wanted, at any zoom from [`Limits::min_zoom`] to 24.
    pub tiles: Vec<TileId>,
    /// Ids of items wanted by themselves.
    pub ids: Vec<String>,
    /// The caller's tier; items above it are left out.
    pub access: Access,
}

impl BatchRequest {
    /// The compact wire form, all three fields always present.
    ///
    /// ```
    /// use tilewarm::{Access, BatchRequest};
    /// let r = BatchRequest {
    ///     tiles: vec!["14/2624/5721".parse().unwrap()],
    ///     ids: vec!["a".into()],
    ///     access: Access::Public,
    /// };
    /// assert_eq!(r.to_json(), r#"{"tiles":["14/2624/5721"],"ids":["a"],"access":"public"}"#);
    /// ```
    pub fn to_json(&self) -> String {
        // Tiles, strings and a tier always serialise, so this cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Whether the request asks for nothing (no tiles and no ids).
    pub fn is_empty(&self) -> bool {
        self.tiles.is_empty() && self.ids.is_empty()
    }

    /// Checks what [`decode_request`] checks after parsing: counts, non-empty, tile zooms
    /// and ids. Duplicates are allowed here (and count against the limits).
    pub fn validate(&self, limits: &Limits) -> Result<(), ProtocolError> {
        if self.tiles.len() > limits.max_tiles {
            return Err(ProtocolError::TooMany {
                what: "request tiles",
                count: self.tiles.len(),
                max: limits.max_tiles,
            });
        }
        if self.ids.len() > limits.max_ids {
            return Err(ProtocolError::TooMany {
                what: "request ids",
                count: self.ids.len(),
                max: limits.max_ids,
            });
        }
        if self.is_empty() {
            return Err(ProtocolError::EmptyRequest);
        }
        for (index, &tile) in self.tiles.iter().enumerate() {
            if tile.z() < limits.min_zoom {
                return Err(ProtocolError::ZoomTooLow {
                    index,
                    tile,
                    min_zoom: limits.min_zoom,
                });
            }
        }
        for (index, id) in self.ids.iter().enumerate() {
            check_id(id, limits).map_err(|reason| ProtocolError::InvalidId { index, reason })?;
        }
        Ok(())
    }
}

/// Decodes and checks a request body (server side). Tiles and ids are de-duplicated,
/// keeping the first occurrence of each in order. See the [module docs](self) for the rules
/// and bounds.
///
/// ```
/// use tilewarm::{decode_request, Access, Limits};
/// let body = br#"{"tiles":["14/2624/5721","14/2624/5721"],"ids":["a"]}"#;
/// let r = decode_request(body, &Limits::default()).unwrap();
/// assert_eq!((r.tiles.len(), r.access), (1, Access::Public));
///
/// let limits = Limits { min_zoom: 10, ..Limits::default() };
/// let e = decode_request(br#"{"tiles":["3/1/1"]}"#, &limits).unwrap_err();
/// assert_eq!(e.to_string(), r#"tiles[0] "3/1/1": zoom 3 is too coarse, zoom must be in 10..=24"#);
/// ```
pub fn decode_request(body: &[u8], limits: &Limits) -> Result<BatchRequest, ProtocolError> {
    check_body(body, limits)?;
    let slot = Slot::default();
    let wire = parse(
        body,
        RequestSeed {
            limits,
            slot: &slot,
        },
        &slot,
    )?;
    let tiles = wire
        .tiles
        .iter()
        .enumerate()
        .map(|(i, s)| parse_tile(i, s))
        .collect::<Result<Vec<_>, _>>()?;
    let access = match wire.access {
        Some(a) => a.parse::<Access>()?,
        None => Access::Public,
    };
    let mut request = BatchRequest {
        tiles,
        ids: wire.ids,
        access,
    };
    request.validate(limits)?;
    dedup(&mut request.tiles);
    dedup(&mut request.ids);
    Ok(request)
}

// ---------------------------------------------------------------------------------------
// Response
// ---------------------------------------------------------------------------------------

/// The items of one requested tile.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TileList {
    pub tile: TileId,
    /// Ids of the tile's items that the caller may see; each is in the response's `items`.
    pub ids: Vec<String>,
    /// How long the list may be cached, in seconds; `None` leaves it to the client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u32>,
}

/// One item with its payload `data` (raw JSON text in [`decode_response`]'s output).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Item<D> {
    pub id: String,
    pub lon: f64,
    pub lat: f64,
    pub class: String,
    pub access: Access,
    /// How long the item may be cached, in seconds; `None` leaves it to its class.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u32>,
    pub data: D,
}

/// A decoded batch response.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BatchResponse<D> {
    /// One entry per requested tile.
    pub tiles: Vec<TileList>,
    /// The items listed in `tiles` plus the requested ids that exist, each once.
    pub items: Vec<Item<D>>,
    /// Requested ids that do not exist or that the caller may not see.
    pub missing: Vec<String>,
}

impl<D> Default for BatchResponse<D> {
    fn default() -> Self {
        BatchResponse {
            tiles: Vec::new(),
            items: Vec::new(),
            missing: Vec::new(),
        }
    }
}

/// Decodes and checks a response body (client side); see the [module docs](self) for the
/// rules and bounds. Item `data` is kept as raw JSON text.
pub fn decode_response(
    body: &[u8],
    limits: &Limits,
) -> Result<BatchResponse<RawData>, ProtocolError> {
    check_body(body, limits)?;
    let slot = Slot::default();
    let wire = parse(
        body,
        ResponseSeed {
            limits,
            slot: &slot,
        },
        &slot,
    )?;

    let mut tiles = Vec::with_capacity(wire.tiles.len());
    for (index, t) in wire.tiles.into_iter().enumerate() {
        let tile = parse_tile(index, &t.tile)?;
        let ttl =
            ttl_from_wire(t.ttl, limits).map_err(|reason| ProtocolError::InvalidTileList {
                index,
                tile,
                reason,
            })?;
        tiles.push(TileList {
            tile,
            ids: t.ids,
            ttl,
        });
    }
    let mut items = Vec::with_capacity(wire.items.len());
    for (index, it) in wire.items.into_iter().enumerate() {
        let invalid = |reason: String| ProtocolError::InvalidItem {
            index,
            id: clip(&it.id),
            reason,
        };
        let access = it
            .access
            .parse::<Access>()
            .map_err(|e| invalid(e.to_string()))?;
        let ttl = ttl_from_wire(it.ttl, limits).map_err(invalid)?;
        items.push(Item {
            id: it.id,
            lon: it.lon,
            lat: it.lat,
            class: it.class,
            access,
            ttl,
            data: it.data,
        });
    }
    let response = BatchResponse {
        tiles,
        items,
        missing: wire.missing,
    };
    response.validate(limits)?;
    Ok(response)
}

impl<D: Serialize> BatchResponse<D> {
    /// The compact wire form. Optional `ttl`s that are `None` are left out; `RawData` is
    /// written byte for byte. Does not validate (call [`validate`](Self::validate) first):
    /// a non-finite `lon`/`lat` comes out as `null`. Never fails: an item whose `data` does
    /// not serialise is written with `"data":null`.
    pub fn to_json(&self) -> String {
        match serde_json::to_string(self) {
            Ok(s) => s,
            Err(_) => self.to_json_lossy(),
        }
    }

    fn to_json_lossy(&self) -> String {
        let items = self
            .items
            .iter()
            .map(|it| Item {
                id: it.id.clone(),
                lon: it.lon,
                lat: it.lat,
                class: it.class.clone(),
                access: it.access,
                ttl: it.ttl,
                data: serde_json::value::to_raw_value(&it.data)
                    .unwrap_or_else(|_| RawValue::NULL.to_owned()),
            })
            .collect();
        let lossy = BatchResponse {
            tiles: self.tiles.clone(),
            items,
            missing: self.missing.clone(),
        };
        // Every field now serialises, so this cannot fail.
        serde_json::to_string(&lossy).unwrap_or_default()
    }
}

impl<D> BatchResponse<D> {
    /// Checks everything [`decode_response`] checks after parsing: counts, every tile list
    /// (no tile twice, ttl, ids valid and present in `items`), every item
    /// ([`validate_item_fields`], no id twice) and `missing` (ids valid, none also in
    /// `items`). For decoders that build a `BatchResponse` themselves.
    pub fn validate(&self, limits: &Limits) -> Result<(), ProtocolError> {
        for (what, count, max) in [
            ("response tiles", self.tiles.len(), limits.max_tiles),
            ("response items", self.items.len(), limits.max_items),
            ("missing ids", self.missing.len(), limits.max_ids),
        ] {
            if count > max {
                return Err(ProtocolError::TooMany { what, count, max });
            }
        }

        let mut item_at: HashMap<&str, usize> = HashMap::with_capacity(self.items.len());
        for (index, it) in self.items.iter().enumerate() {
            validate_item_fields(&it.id, it.lon, it.lat, &it.class, it.ttl, limits)
                .map_err(|e| e.at_item(index))?;
            if let Some(&first) = item_at.get(it.id.as_str()) {
                return Err(ProtocolError::InvalidItem {
                    index,
                    id: clip(&it.id),
                    reason: format!(
                        "id already listed at items[{first}]; each item may be listed once"
                    ),
                });
            }
            item_at.insert(&it.id, index);
        }

        let mut tile_at: HashMap<TileId, usize> = HashMap::with_capacity(self.tiles.len());
        for (index, list) in self.tiles.iter().enumerate() {
            let tile = list.tile;
            let invalid = |reason: String| ProtocolError::InvalidTileList {
                index,
                tile,
                reason,
            };
            if let Some(&first) = tile_at.get(&tile) {
                return Err(invalid(format!(
                    "tile already listed at tiles[{first}]; each tile may be listed once"
                )));
            }
            tile_at.insert(tile, index);
            if list.ids.len() > limits.max_items {
                return Err(ProtocolError::TooMany {
                    what: "tile list ids",
                    count: list.ids.len(),
                    max: limits.max_items,
                });
            }
            check_ttl(list.ttl, limits).map_err(invalid)?;
            for (j, id) in list.ids.iter().enumerate() {
                check_id(id, limits).map_err(|r| invalid(format!("ids[{j}]: {r}")))?;
                if !item_at.contains_key(id.as_str()) {
                    return Err(invalid(format!(
                        "ids[{j}] {} is not in items; every listed id must have an item",
                        quote(id)
                    )));
                }
            }
        }

        for (index, id) in self.missing.iter().enumerate() {
            check_id(id, limits)
                .map_err(|reason| ProtocolError::InvalidMissing { index, reason })?;
            if let Some(&at) = item_at.get(id.as_str()) {
                return Err(ProtocolError::InvalidMissing {
                    index,
                    reason: format!(
                        "id {} is also items[{at}]; an id is either returned or missing",
                        quote(id)
                    ),
                });
            }
        }
        Ok(())
    }

    /// Requested tiles that the response does not list (a server bug or truncation); the
    /// client treats them as failed. In request order, each once.
    pub fn unanswered_tiles(&self, request: &BatchRequest) -> Vec<TileId> {
        let answered: HashSet<TileId> = self.tiles.iter().map(|t| t.tile).collect();
        let mut seen = HashSet::new();
        request
            .tiles
            .iter()
            .filter(|t| !answered.contains(*t) && seen.insert(**t))
            .copied()
            .collect()
    }

    /// Requested ids that are neither in `items` nor in `missing`; like
    /// [`unanswered_tiles`](Self::unanswered_tiles), the client treats them as failed.
    pub fn unanswered_ids(&self, request: &BatchRequest) -> Vec<String> {
        let answered: HashSet<&str> = self
            .items
            .iter()
            .map(|it| it.id.as_str())
            .chain(self.missing.iter().map(String::as_str))
            .collect();
        let mut seen = HashSet::new();
        request
            .ids
            .iter()
            .filter(|id| !answered.contains(id.as_str()) && seen.insert(id.as_str()))
            .cloned()
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// Error bodies
// ---------------------------------------------------------------------------------------

/// The `code` of an error body. Wire names are snake_case (`bad_request`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    BadRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
    MethodNotAllowed,
    NotFound,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
    Internal,
}

impl ErrorCode {
    /// Every code.
    pub const ALL: [ErrorCode; 9] = [
        ErrorCode::BadRequest,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::MethodNotAllowed,
        ErrorCode::NotFound,
        ErrorCode::RateLimited,
        ErrorCode::UpstreamError,
        ErrorCode::UpstreamTimeout,
        ErrorCode::Internal,
    ];

    /// The HTTP status to answer with: 400, 413, 415, 405, 404, 429, 502, 504, 500.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::NotFound => 404,
            ErrorCode::RateLimited => 429,
            ErrorCode::UpstreamError => 502,
            ErrorCode::UpstreamTimeout => 504,
            ErrorCode::Internal => 500,
        }
    }

    /// A code for an HTTP error status when the body says nothing usable: the code with
    /// that status, else `BadRequest` for other 4xx and `Internal` for anything else.
    pub fn from_http_status(status: u16) -> ErrorCode {
        ErrorCode::ALL
            .into_iter()
            .find(|c| c.http_status() == status)
            .unwrap_or(if (400..500).contains(&status) {
                ErrorCode::BadRequest
            } else {
                ErrorCode::Internal
            })
    }

    /// The wire name, e.g. `"bad_request"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::NotFound => "not_found",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::UpstreamError => "upstream_error",
            ErrorCode::UpstreamTimeout => "upstream_timeout",
            ErrorCode::Internal => "internal",
        }
    }

    /// The code with wire name `name`, if there is one.
    pub fn from_name(name: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error body: `{"error":{"code":"bad_request","message":"..."}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Serialize)]
struct ErrorEnvelope<'a> {
    error: ErrorFields<'a>,
}

#[derive(Serialize)]
struct ErrorFields<'a> {
    code: ErrorCode,
    message: &'a str,
}

#[derive(Deserialize)]
struct WireErrorEnvelope {
    error: WireErrorFields,
}

#[derive(Deserialize)]
struct WireErrorFields {
    code: String,
    #[serde(default)]
    message: String,
}

impl ErrorBody {
    /// The compact wire form.
    ///
    /// ```
    /// use tilewarm::{ErrorBody, ErrorCode};
    /// let e = ErrorBody { code: ErrorCode::RateLimited, message: "slow down".into() };
    /// assert_eq!(e.to_json(), r#"{"error":{"code":"rate_limited","message":"slow down"}}"#);
    /// ```
    pub fn to_json(&self) -> String {
        let envelope = ErrorEnvelope {
            error: ErrorFields {
                code: self.code,
                message: self.message.as_str(),
            },
        };
        // A code and a string always serialise, so this cannot fail.
        serde_json::to_string(&envelope).unwrap_or_default()
    }
}

impl From<&ProtocolError> for ErrorBody {
    /// The body a server answers a bad request with: [`ProtocolError::code`] and the
    /// error's message.
    fn from(e: &ProtocolError) -> ErrorBody {
        ErrorBody {
            code: e.code(),
            message: e.to_string(),
        }
    }
}

/// Reads an error body, leniently: unknown fields are ignored, a missing `message` is
/// empty, a message longer than [`MAX_ERROR_MESSAGE_CHARS`] is cut. An unknown `code`
/// (a newer server) becomes [`ErrorCode::Internal`] with the code appended to the message,
/// e.g. `"nope (error code \"forbidden\")"`. Anything else — not JSON, no `error` object, a
/// non-string code, a body over [`MAX_ERROR_BODY_BYTES`] — gives `None`; the caller can fall
/// back to [`ErrorCode::from_http_status`].
///
/// ```
/// use tilewarm::{decode_error, ErrorCode};
/// let e = decode_error(br#"{"error":{"code":"upstream_timeout","message":"backend slow"}}"#).unwrap();
/// assert_eq!(e.code, ErrorCode::UpstreamTimeout);
/// assert!(decode_error(b"<html>502</html>").is_none());
/// ```
pub fn decode_error(body: &[u8]) -> Option<ErrorBody> {
    if body.len() > MAX_ERROR_BODY_BYTES {
        return None;
    }
    let envelope: WireErrorEnvelope = serde_json::from_slice(body).ok()?;
    let WireErrorFields { code, message } = envelope.error;
    let mut message = match message.char_indices().nth(MAX_ERROR_MESSAGE_CHARS) {
        Some((end, _)) => message[..end].to_owned(),
        None => message,
    };
    let code = match ErrorCode::from_name(&code) {
        Some(c) => c,
        None => {
            message = format!("{message} (error code {})", quote(&code));
            ErrorCode::Internal
        }
    };
    Some(ErrorBody { code, message })
}

// ---------------------------------------------------------------------------------------
// Bounded deserialisation
// ---------------------------------------------------------------------------------------
//
// serde errors can only carry a message, so a typed error found mid-parse (a list over its
// limit) is put in a `Slot` and a placeholder serde error unwinds the parse; `parse` then
// returns the slot's error in preference to serde_json's.

type Slot = Cell<Option<ProtocolError>>;

fn parse<'de, S: DeserializeSeed<'de>>(
    body: &'de [u8],
    seed: S,
    slot: &Slot,
) -> Result<S::Value, ProtocolError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    seed.deserialize(&mut de)
        .and_then(|value| de.end().map(|()| value))
        .map_err(|e| slot.take().unwrap_or_else(|| json_error(&e)))
}

fn json_error(e: &serde_json::Error) -> ProtocolError {
    let (line, column) = (e.line(), e.column());
    let full = e.to_string();
    let message = full
        .strip_suffix(&format!(" at line {line} column {column}"))
        .unwrap_or(&full)
        .to_owned();
    ProtocolError::Json {
        line,
        column,
        message,
    }
}

/// A JSON array (or `null`, read as empty) of at most `max` elements, each read with a seed
/// from `seed`. Elements past `max` are skipped unread and counted for the error.
struct Bounded<'a, F> {
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

fn bounded<'a, T>(
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

fn set_once<T, E: de::Error>(field: &mut Option<T>, name: &'static str, v: T) -> Result<(), E> {
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

struct WireRequest {
    tiles: Vec<String>,
    ids: Vec<String>,
    access: Option<String>,
}

struct RequestSeed<'a> {
    limits: &'a Limits,
    slot: &'a Slot,
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
    #[serde(other)]
    Other,
}

struct WireResponse {
    tiles: Vec<WireTileList>,
    items: Vec<WireItem>,
    missing: Vec<String>,
}

struct ResponseSeed<'a> {
    limits: &'a Limits,
    slot: &'a Slot,
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
        let (mut tiles, mut items, mut missing) = (None, None, None);
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
                ResponseField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(WireResponse {
            tiles: tiles.unwrap_or_default(),
            items: items.unwrap_or_default(),
            missing: missing.unwrap_or_default(),
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

struct WireTileList {
    tile: String,
    ids: Vec<String>,
    ttl: Option<Number>,
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

struct WireItem {
    id: String,
    lon: f64,
    lat: f64,
    class: String,
    access: String,
    ttl: Option<Number>,
    data: RawData,
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
