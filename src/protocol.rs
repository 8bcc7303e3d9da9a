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

use crate::{HashMap, HashSet};
use std::cell::Cell;
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
    #[error("tiles[{index}] {}: {reason}", crate::Quoted(input))]
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
    #[error("items[{index}] ({}): {reason}", crate::Quoted(id))]
    InvalidItem {
        index: usize,
        id: String,
        reason: String,
    },
    /// An item's fields are invalid, from [`validate_item_fields`], which does not know the
    /// item's position; [`ProtocolError::at_item`] turns it into [`InvalidItem`].
    ///
    /// [`InvalidItem`]: ProtocolError::InvalidItem
    #[error("item {}: {reason}", crate::Quoted(id))]
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
    crate::Quoted(&clip(s)).to_string()
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
            "class {} contains {}; allowed are a-z, 0-9, '_' and '-'",
            quote(class),
            crate::QuotedChar(c)
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

/// An entry's wire `ttl`: whole seconds left until `exp_ms`, rounded up, at least 1 (an
/// entry still being served is never sent as already expired). The server and the edge
/// proxy both answer with it.
///
/// ```
/// use tilewarm::protocol::ttl_left_s;
/// assert_eq!(ttl_left_s(10_500, 10_000), 1);
/// assert_eq!(ttl_left_s(12_001, 10_000), 3);
/// assert_eq!(ttl_left_s(5_000, 10_000), 1);
/// ```
pub fn ttl_left_s(exp_ms: u64, now_ms: u64) -> u32 {
    exp_ms
        .saturating_sub(now_ms)
        .div_ceil(1000)
        .clamp(1, u64::from(u32::MAX)) as u32
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
                Err(format!(
                    "lon must be in -180..=180, got {}",
                    crate::Num(lon)
                ))
            }
        })
        .and_then(|()| {
            if lat.is_finite() && (-90.0..=90.0).contains(&lat) {
                Ok(())
            } else {
                Err(format!("lat must be in -90..=90, got {}", crate::Num(lat)))
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

impl<D> Item<D> {
    /// The same item with its payload turned into another type (e.g. raw JSON into its
    /// size, for a simulator, or into a `String`).
    ///
    /// ```
    /// use tilewarm::{Access, Item};
    /// let it = Item { id: "a".into(), lon: 0.0, lat: 0.0, class: "active".into(),
    ///     access: Access::Public, ttl: None, data: "{\"v\":1}" };
    /// assert_eq!(it.map_data(str::len).data, 7);
    /// ```
    pub fn map_data<E>(self, f: impl FnOnce(D) -> E) -> Item<E> {
        Item {
            id: self.id,
            lon: self.lon,
            lat: self.lat,
            class: self.class,
            access: self.access,
            ttl: self.ttl,
            data: f(self.data),
        }
    }
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

        // The ids seen (a set: the position, only needed for a message, is looked up then;
        // and one hash table type fewer in the wasm than a map of positions).
        let mut item_ids: HashSet<&str> = HashSet::with_capacity(self.items.len());
        let item_at = |id: &str| self.items.iter().position(|it| it.id == id).unwrap_or(0);
        for (index, it) in self.items.iter().enumerate() {
            validate_item_fields(&it.id, it.lon, it.lat, &it.class, it.ttl, limits)
                .map_err(|e| e.at_item(index))?;
            if item_ids.contains(it.id.as_str()) {
                let first = item_at(&it.id);
                return Err(ProtocolError::InvalidItem {
                    index,
                    id: clip(&it.id),
                    reason: format!(
                        "id already listed at items[{first}]; each item may be listed once"
                    ),
                });
            }
            item_ids.insert(&it.id);
        }

        // Positions as u64: the same table as the client's other maps from tile to u64.
        let mut tile_at: HashMap<TileId, u64> = HashMap::with_capacity(self.tiles.len());
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
            tile_at.insert(tile, index as u64);
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
                if !item_ids.contains(id.as_str()) {
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
            if item_ids.contains(id.as_str()) {
                let at = item_at(id);
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
fn clip_middle(s: &str, max: usize) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const REQUEST: &[u8] = include_bytes!("../tests/fixtures/protocol/request.json");
    const RESPONSE: &[u8] = include_bytes!("../tests/fixtures/protocol/response.json");
    const BAD_LAT: &[u8] = include_bytes!("../tests/fixtures/protocol/response_bad_lat.json");
    const TRUNCATED: &[u8] = include_bytes!("../tests/fixtures/protocol/response_truncated.json");
    const NEGATIVE_TTL: &[u8] =
        include_bytes!("../tests/fixtures/protocol/response_negative_ttl.json");
    const DANGLING: &[u8] = include_bytes!("../tests/fixtures/protocol/response_dangling_id.json");
    const UNKNOWN_ACCESS: &[u8] =
        include_bytes!("../tests/fixtures/protocol/response_unknown_access.json");
    const ITEMS_NOT_ARRAY: &[u8] =
        include_bytes!("../tests/fixtures/protocol/response_items_not_array.json");
    const ERROR: &[u8] = include_bytes!("../tests/fixtures/protocol/error.json");

    fn tile(s: &str) -> TileId {
        s.parse().unwrap()
    }

    fn lim() -> Limits {
        Limits::default()
    }

    fn req_err(body: &str) -> ProtocolError {
        decode_request(body.as_bytes(), &lim()).unwrap_err()
    }

    fn resp_err(body: &str) -> ProtocolError {
        decode_response(body.as_bytes(), &lim()).unwrap_err()
    }

    /// A response body with one tile listing `a`, with `item` (JSON fields) as item `a`.
    fn one_item(fields: &str) -> String {
        format!(
            r#"{{"tiles":[{{"tile":"14/2624/5721","ids":["a"]}}],"items":[{{"id":"a",{fields}}}]}}"#
        )
    }

    const OK_FIELDS: &str = r#""lon":1.5,"lat":2.5,"class":"sold","access":"public","data":1"#;

    // ---- limits -------------------------------------------------------------------------

    #[test]
    fn default_limits_are_the_documented_ones() {
        let l = Limits::default();
        assert_eq!(l.max_body_bytes, 8_388_608);
        assert_eq!((l.max_tiles, l.max_ids, l.max_items), (64, 1000, 50_000));
        assert_eq!((l.max_id_len, l.max_class_len), (256, 64));
        assert_eq!((l.max_ttl_s, l.min_zoom), (2_592_000, 0));
    }

    // ---- requests -----------------------------------------------------------------------

    #[test]
    fn request_fixture_decodes_and_dedups_in_first_seen_order() {
        let r = decode_request(REQUEST, &lim()).unwrap();
        assert_eq!(
            r.tiles,
            vec![
                tile("14/2624/5721"),
                tile("14/2625/5721"),
                tile("12/656/1430")
            ]
        );
        assert_eq!(r.ids, vec!["a", "far-away-1"]);
        assert_eq!(r.access, Access::Registered);
    }

    #[test]
    fn request_round_trips_through_compact_json() {
        let r = BatchRequest {
            tiles: vec![tile("14/2624/5721"), tile("0/0/0"), tile("24/16777215/0")],
            ids: vec!["a".into(), "é \"quoted\"".into()],
            access: Access::Agent,
        };
        let json = r.to_json();
        assert_eq!(decode_request(json.as_bytes(), &lim()).unwrap(), r);
        let small = BatchRequest {
            tiles: vec![tile("1/1/0")],
            ids: vec![],
            access: Access::Verified,
        };
        assert_eq!(
            small.to_json(),
            r#"{"tiles":["1/1/0"],"ids":[],"access":"verified"}"#
        );
    }

    #[test]
    fn request_optional_fields_may_be_absent_or_null() {
        let r = decode_request(br#"{"tiles":["3/1/2"]}"#, &lim()).unwrap();
        assert_eq!((r.ids.len(), r.access), (0, Access::Public));
        let r = decode_request(br#"{"ids":["x"],"tiles":null,"access":null}"#, &lim()).unwrap();
        assert_eq!(
            (r.tiles.len(), r.ids.len(), r.access),
            (0, 1, Access::Public)
        );
    }

    #[test]
    fn request_unknown_fields_are_ignored() {
        let r = decode_request(
            br#"{"v":2,"tiles":["3/1/2"],"extra":{"deep":[[[{"x":null}]]]},"access":"agent"}"#,
            &lim(),
        )
        .unwrap();
        assert_eq!(r.access, Access::Agent);
    }

    #[test]
    fn is_empty() {
        assert!(BatchRequest::default().is_empty());
        let r = BatchRequest {
            ids: vec!["a".into()],
            ..BatchRequest::default()
        };
        assert!(!r.is_empty());
    }

    #[test]
    fn request_errors_name_the_problem_and_the_allowed_range() {
        let tiles: Vec<String> = (0..80).map(|x| format!("\"14/{x}/0\"")).collect();
        let e = req_err(&format!(r#"{{"tiles":[{}]}}"#, tiles.join(",")));
        assert_eq!(
            e,
            ProtocolError::TooMany {
                what: "request tiles",
                count: 80,
                max: 64
            }
        );
        assert_eq!(
            e.to_string(),
            "request has 80 tiles, at most 64 are allowed"
        );

        let ids: Vec<String> = (0..1001).map(|x| format!("\"{x}\"")).collect();
        let e = req_err(&format!(r#"{{"ids":[{}]}}"#, ids.join(",")));
        assert_eq!(
            e.to_string(),
            "request has 1001 ids, at most 1000 are allowed"
        );

        let e = req_err(r#"{"tiles":["3/1/1", "14/99999/1"]}"#);
        assert_eq!(
            e.to_string(),
            "tiles[1] \"14/99999/1\": tile 14/99999/1 does not exist: \
             x and y must be below 2^14 = 16384"
        );
        assert!(matches!(e, ProtocolError::InvalidTile { index: 1, .. }));
        let e = req_err(r#"{"tiles":["14-1-1"]}"#);
        assert_eq!(
            e.to_string(),
            "tiles[0] \"14-1-1\": expected z/x/y, three integers separated by '/'"
        );

        let limits = Limits {
            min_zoom: 10,
            ..lim()
        };
        let e = decode_request(br#"{"tiles":["12/0/0","9/1/1"]}"#, &limits).unwrap_err();
        assert_eq!(
            e,
            ProtocolError::ZoomTooLow {
                index: 1,
                tile: tile("9/1/1"),
                min_zoom: 10
            }
        );
        assert_eq!(
            e.to_string(),
            "tiles[1] \"9/1/1\": zoom 9 is too coarse, zoom must be in 10..=24"
        );

        assert_eq!(
            req_err(r#"{"ids":["a",""]}"#).to_string(),
            "ids[1]: id must not be empty"
        );
        let long = "x".repeat(257);
        let e = req_err(&format!(r#"{{"ids":["{long}"]}}"#));
        assert!(matches!(e, ProtocolError::InvalidId { index: 0, .. }));
        assert!(
            e.to_string()
                .ends_with("is 257 bytes, at most 256 are allowed"),
            "{e}"
        );
        assert!(
            e.to_string().contains('…'),
            "long ids are cut in messages: {e}"
        );
        assert_eq!(
            req_err(r#"{"ids":["a\u0007b"]}"#).to_string(),
            "ids[0]: id \"a\\u{7}b\" contains the control character U+0007; \
             control characters are not allowed"
        );

        let e = req_err(r#"{"tiles":["1/0/0"],"access":"admin"}"#);
        assert_eq!(
            e,
            ProtocolError::UnknownAccess(UnknownAccess("admin".into()))
        );
        assert_eq!(
            e.to_string(),
            "access: unknown access tier \"admin\": allowed are public, registered, verified, agent"
        );

        for empty in [r#"{}"#, r#"{"tiles":[],"ids":[]}"#, r#"{"tiles":null}"#] {
            assert_eq!(req_err(empty), ProtocolError::EmptyRequest);
        }
        assert_eq!(
            ProtocolError::EmptyRequest.to_string(),
            "request has no tiles and no ids: at least one tile or one id is required"
        );
    }

    #[test]
    fn request_shape_errors_are_json_errors_with_positions() {
        let e = req_err(r#"{"tiles":["1/0/0"],"tiles":["1/0/1"]}"#);
        assert_eq!(
            e,
            ProtocolError::Json {
                line: 1,
                column: 37,
                message: "duplicate field `tiles`".into()
            }
        );
        assert_eq!(
            e.to_string(),
            "malformed JSON at line 1, column 37: duplicate field `tiles`"
        );
        let e = req_err("{\n  \"tiles\": 5}");
        assert_eq!(
            e.to_string(),
            "malformed JSON at line 2, column 12: invalid type: integer `5`, expected an array"
        );
        assert!(matches!(req_err("[]"), ProtocolError::Json { .. }));
        assert!(matches!(
            req_err(r#"{"tiles":[1]}"#),
            ProtocolError::Json { .. }
        ));
        assert!(matches!(
            req_err(r#"{"access":3}"#),
            ProtocolError::Json { .. }
        ));
        assert!(matches!(
            req_err(r#"{"ids":["a"]} x"#),
            ProtocolError::Json { .. }
        ));
        assert!(matches!(
            decode_request(b"{\"ids\":[\"\xff\"]}", &lim()),
            Err(ProtocolError::Json { .. })
        ));
    }

    #[test]
    fn body_size_is_checked_before_parsing() {
        let limits = Limits {
            max_body_bytes: 10,
            ..lim()
        };
        // Eleven bytes of garbage: the size error wins, so nothing was parsed.
        for decode in [
            |b: &[u8], l: &Limits| decode_request(b, l).err(),
            |b: &[u8], l: &Limits| decode_response(b, l).err(),
        ] {
            let e = decode(b"not json!!!", &limits).unwrap();
            assert_eq!(e, ProtocolError::BodyTooLarge { size: 11, max: 10 });
            assert_eq!(e.to_string(), "body is 11 bytes, at most 10 are allowed");
        }
        assert!(decode_request(br#"{"ids":[1]}"#, &limits).is_err());
        assert_eq!(
            ProtocolError::BodyTooLarge {
                size: 9_000_000,
                max: 8_388_608
            }
            .to_string(),
            "body is 9000000 bytes, at most 8388608 are allowed"
        );
    }

    #[test]
    fn request_validate_checks_a_built_request() {
        let mut r = BatchRequest {
            tiles: vec![tile("2/1/1")],
            ..BatchRequest::default()
        };
        assert!(r.validate(&lim()).is_ok());
        r.ids.push(String::new());
        assert!(matches!(
            r.validate(&lim()),
            Err(ProtocolError::InvalidId { index: 0, .. })
        ));
    }

    // ---- responses ----------------------------------------------------------------------

    #[test]
    fn response_fixture_decodes() {
        let r = decode_response(RESPONSE, &lim()).unwrap();
        assert_eq!(
            r.tiles,
            vec![
                TileList {
                    tile: tile("14/2624/5721"),
                    ids: vec!["a".into(), "b".into()],
                    ttl: Some(300)
                },
                TileList {
                    tile: tile("14/2625/5721"),
                    ids: vec![],
                    ttl: None
                },
                TileList {
                    tile: tile("12/656/1430"),
                    ids: vec!["a".into(), "b".into(), "c".into()],
                    ttl: None
                },
            ]
        );
        let [a, b, c] = &r.items[..] else {
            panic!("three items expected, got {}", r.items.len())
        };
        assert_eq!(
            (
                a.id.as_str(),
                a.lon,
                a.lat,
                a.class.as_str(),
                a.access,
                a.ttl
            ),
            (
                "a",
                -122.33,
                47.61,
                "off_market",
                Access::Public,
                Some(14400)
            )
        );
        assert_eq!(a.data.get(), r#"{"price": 850000, "beds": 3}"#);
        assert_eq!((b.access, b.ttl), (Access::Registered, None));
        assert_eq!(
            b.data.get(),
            r#"{"price": 1200000, "photos": ["x.jpg", "y.jpg"], "note": "caf\u00e9"}"#
        );
        assert_eq!((c.ttl, c.data.get()), (None, "null"));
        assert_eq!(r.missing, vec!["far-away-1"]);
    }

    #[test]
    fn spec_example_decodes() {
        let body = br#"{"tiles": [{"tile": "14/2624/5721", "ids": ["a", "b"], "ttl": 300}],
            "items": [{"id": "a", "lon": -122.33, "lat": 47.61, "class": "off_market",
                       "access": "public", "ttl": 14400, "data": {"beds": 2}},
                      {"id": "b", "lon": -122.33, "lat": 47.61, "class": "off_market",
                       "access": "public", "ttl": 14400, "data": [1]}],
            "missing": ["ids that do not exist"]}"#;
        let r = decode_response(body, &lim()).unwrap();
        assert_eq!((r.tiles.len(), r.items.len(), r.missing.len()), (1, 2, 1));
    }

    #[test]
    fn response_round_trips_with_data_byte_for_byte() {
        let r = decode_response(RESPONSE, &lim()).unwrap();
        let json = r.to_json();
        assert!(
            json.contains(r#""data":{"price": 850000, "beds": 3}"#),
            "{json}"
        );
        assert!(
            !json.contains("\"ttl\":null"),
            "None ttls are left out: {json}"
        );
        let again = decode_response(json.as_bytes(), &lim()).unwrap();
        assert_eq!(again.tiles, r.tiles);
        assert_eq!(again.missing, r.missing);
        assert_eq!(again.items.len(), r.items.len());
        for (x, y) in again.items.iter().zip(&r.items) {
            assert_eq!(
                (&x.id, x.lon, x.lat, &x.class, x.access, x.ttl),
                (&y.id, y.lon, y.lat, &y.class, y.access, y.ttl)
            );
            assert_eq!(x.data.get(), y.data.get());
        }
        assert_eq!(again.to_json(), json);
    }

    #[test]
    fn response_optional_fields_may_be_absent() {
        let r = decode_response(b"{}", &lim()).unwrap();
        assert!(r.tiles.is_empty() && r.items.is_empty() && r.missing.is_empty());
        let r = decode_response(br#"{"tiles":null,"items":null,"missing":null}"#, &lim()).unwrap();
        assert!(r.tiles.is_empty() && r.items.is_empty() && r.missing.is_empty());
        let r = decode_response(br#"{"tiles":[{"tile":"3/1/1"}]}"#, &lim()).unwrap();
        assert_eq!((r.tiles[0].ids.len(), r.tiles[0].ttl), (0, None));
        let r = decode_response(one_item(OK_FIELDS).as_bytes(), &lim()).unwrap();
        assert_eq!(r.items[0].ttl, None);
        let r = decode_response(
            one_item(&format!("{OK_FIELDS},\"ttl\":0")).as_bytes(),
            &lim(),
        )
        .unwrap();
        assert_eq!(r.items[0].ttl, Some(0));
    }

    #[test]
    fn response_unknown_fields_are_ignored_at_every_level() {
        let body = r#"{"x":1,"tiles":[{"tile":"3/1/1","ids":["a"],"y":[{}]}],
            "items":[{"id":"a","z":{"deep":[1,2]},"lon":0,"lat":0,"class":"c","access":"agent",
                      "data":{}}], "missing":[], "w":null}"#;
        let r = decode_response(body.as_bytes(), &lim()).unwrap();
        assert_eq!(r.items[0].access, Access::Agent);
        // Integer coordinates are fine.
        assert_eq!((r.items[0].lon, r.items[0].lat), (0.0, 0.0));
    }

    #[test]
    fn bad_lat_fixture_names_the_item() {
        let e = decode_response(BAD_LAT, &lim()).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"items[3] ("abc"): lat must be in -90..=90, got 123.4"#
        );
        assert_eq!(
            e,
            ProtocolError::InvalidItem {
                index: 3,
                id: "abc".into(),
                reason: "lat must be in -90..=90, got 123.4".into()
            }
        );
    }

    #[test]
    fn malformed_fixtures_give_typed_errors() {
        let e = decode_response(TRUNCATED, &lim()).unwrap_err();
        assert!(
            matches!(&e, ProtocolError::Json { line: 2, column: 0, message } if message == "EOF while parsing an object"),
            "{e:?}"
        );
        assert_eq!(
            decode_response(NEGATIVE_TTL, &lim())
                .unwrap_err()
                .to_string(),
            r#"items[0] ("a"): ttl must be a whole number of seconds in 0..=2592000, got -60"#
        );
        assert_eq!(
            decode_response(DANGLING, &lim()).unwrap_err().to_string(),
            "tiles[0] \"14/2624/5721\": ids[1] \"ghost\" is not in items; \
             every listed id must have an item"
        );
        assert_eq!(
            decode_response(UNKNOWN_ACCESS, &lim())
                .unwrap_err()
                .to_string(),
            "items[0] (\"a\"): unknown access tier \"admin\": \
             allowed are public, registered, verified, agent"
        );
        let e = decode_response(ITEMS_NOT_ARRAY, &lim()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "malformed JSON at line 1, column 20: invalid type: map, expected an array"
        );
    }

    #[test]
    fn item_field_errors() {
        let cases: &[(&str, &str)] = &[
            (
                r#""lon":180.5,"lat":0,"class":"c","access":"public","data":1"#,
                "lon must be in -180..=180, got 180.5",
            ),
            (
                r#""lon":0,"lat":-90.01,"class":"c","access":"public","data":1"#,
                "lat must be in -90..=90, got -90.01",
            ),
            (
                r#""lon":0,"lat":0,"class":"","access":"public","data":1"#,
                "class must not be empty",
            ),
            (
                r#""lon":0,"lat":0,"class":"for sale","access":"public","data":1"#,
                "class \"for sale\" contains ' '; allowed are a-z, 0-9, '_' and '-'",
            ),
            (
                r#""lon":0,"lat":0,"class":"c","access":"public","ttl":2592001,"data":1"#,
                "ttl must be a whole number of seconds in 0..=2592000, got 2592001",
            ),
            (
                r#""lon":0,"lat":0,"class":"c","access":"public","ttl":1.5,"data":1"#,
                "ttl must be a whole number of seconds in 0..=2592000, got 1.5",
            ),
            (
                r#""lon":0,"lat":0,"class":"c","access":"public","ttl":300.0,"data":1"#,
                "ttl must be a whole number of seconds in 0..=2592000, got 300.0",
            ),
            (
                r#""lon":0,"lat":0,"class":"c","access":"public","ttl":99999999999999999999,"data":1"#,
                "ttl must be a whole number of seconds in 0..=2592000, got 1e+20",
            ),
        ];
        for (fields, reason) in cases {
            let e = resp_err(&one_item(fields));
            assert_eq!(
                e,
                ProtocolError::InvalidItem {
                    index: 0,
                    id: "a".into(),
                    reason: reason.to_string()
                },
                "{fields}"
            );
        }
        let long_class = "c".repeat(65);
        let e = resp_err(&one_item(&format!(
            r#""lon":0,"lat":0,"class":"{long_class}","access":"public","data":1"#
        )));
        assert!(
            e.to_string()
                .ends_with("is 65 bytes, at most 64 are allowed"),
            "{e}"
        );
        // Missing required fields and wrong types are shape errors.
        for fields in [
            r#""lat":0,"class":"c","access":"public","data":1"#,
            r#""lon":0,"lat":0,"class":"c","access":"public""#,
            r#""lon":0,"lat":0,"class":"c","data":1"#,
            r#""lon":"0","lat":0,"class":"c","access":"public","data":1"#,
            r#""lon":0,"lat":0,"class":"c","access":"public","ttl":"300","data":1"#,
            r#""lon":0,"lat":0,"lat":1,"class":"c","access":"public","data":1"#,
            r#""lon":1e999,"lat":0,"class":"c","access":"public","data":1"#,
        ] {
            assert!(
                matches!(resp_err(&one_item(fields)), ProtocolError::Json { .. }),
                "{fields}"
            );
        }
        let e = resp_err(&one_item(
            r#""lat":0,"class":"c","access":"public","data":1"#,
        ));
        assert!(e.to_string().contains("missing field `lon`"), "{e}");
        // An item must be an object, not serde's positional array form of a struct.
        assert!(matches!(
            resp_err(r#"{"items":[["a",0,0,"c","public",null,1]]}"#),
            ProtocolError::Json { .. }
        ));
    }

    #[test]
    fn tile_list_errors() {
        let e = resp_err(r#"{"tiles":[{"tile":"3/9/9"}]}"#);
        assert_eq!(
            e.to_string(),
            "tiles[0] \"3/9/9\": tile 3/9/9 does not exist: x and y must be below 2^3 = 8"
        );
        let e = resp_err(r#"{"tiles":[{"tile":"3/1/1","ttl":-1}]}"#);
        assert_eq!(
            e,
            ProtocolError::InvalidTileList {
                index: 0,
                tile: tile("3/1/1"),
                reason: "ttl must be a whole number of seconds in 0..=2592000, got -1".into()
            }
        );
        let e = resp_err(r#"{"tiles":[{"tile":"3/1/1"},{"tile":"3/1/2"},{"tile":"3/1/1"}]}"#);
        assert_eq!(
            e.to_string(),
            "tiles[2] \"3/1/1\": tile already listed at tiles[0]; each tile may be listed once"
        );
        let e = resp_err(r#"{"tiles":[{"tile":"3/1/1","ids":[""]}]}"#);
        assert_eq!(
            e.to_string(),
            "tiles[0] \"3/1/1\": ids[0]: id must not be empty"
        );
        assert!(matches!(
            resp_err(r#"{"tiles":[{"ids":[]}]}"#),
            ProtocolError::Json { .. }
        ));
        assert!(matches!(
            resp_err(r#"{"tiles":["3/1/1"]}"#),
            ProtocolError::Json { .. }
        ));
    }

    #[test]
    fn duplicate_items_and_contradictory_missing_are_errors() {
        let item = r#"{"id":"a","lon":0,"lat":0,"class":"c","access":"public","data":1}"#;
        let e = resp_err(&format!(r#"{{"items":[{item},{item}]}}"#));
        assert_eq!(
            e.to_string(),
            "items[1] (\"a\"): id already listed at items[0]; each item may be listed once"
        );
        let e = resp_err(&format!(r#"{{"items":[{item}],"missing":["b","a"]}}"#));
        assert_eq!(
            e,
            ProtocolError::InvalidMissing {
                index: 1,
                reason: "id \"a\" is also items[0]; an id is either returned or missing".into()
            }
        );
        assert_eq!(
            resp_err(r#"{"missing":["\u001f"]}"#).to_string(),
            "missing[0]: id \"\\u{1f}\" contains the control character U+001F; \
             control characters are not allowed"
        );
    }

    #[test]
    fn response_counts_are_bounded_while_parsing() {
        let limits = Limits {
            max_items: 2,
            max_tiles: 1,
            max_ids: 1,
            ..lim()
        };
        let item = |id: &str| {
            format!(r#"{{"id":"{id}","lon":0,"lat":0,"class":"c","access":"public","data":1}}"#)
        };
        // Entries past the limit are skipped unread: `0` is not an item, yet the error is
        // the count, not a type error.
        let body = format!(r#"{{"items":[{},{},0,0,"x",[]]}}"#, item("a"), item("b"));
        let e = decode_response(body.as_bytes(), &limits).unwrap_err();
        assert_eq!(
            e,
            ProtocolError::TooMany {
                what: "response items",
                count: 6,
                max: 2
            }
        );
        assert_eq!(e.to_string(), "response has 6 items, at most 2 are allowed");
        // Exactly at the limit is fine.
        let body = format!(r#"{{"items":[{},{}]}}"#, item("a"), item("b"));
        assert_eq!(
            decode_response(body.as_bytes(), &limits)
                .unwrap()
                .items
                .len(),
            2
        );

        let e = decode_response(br#"{"tiles":[{"tile":"1/0/0"},7]}"#, &limits).unwrap_err();
        assert_eq!(e.to_string(), "response has 2 tiles, at most 1 are allowed");
        let e = decode_response(br#"{"missing":["a","b",{}]}"#, &limits).unwrap_err();
        assert_eq!(e.to_string(), "missing has 3 ids, at most 1 are allowed");
        let e = decode_response(
            br#"{"tiles":[{"tile":"1/0/0","ids":["a","b",1]}]}"#,
            &limits,
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "tile list has 3 ids, at most 2 are allowed");

        // A hostile default-limit response with a million entries is refused by count
        // (the first 50 000 are read, the rest only counted).
        let mut body = String::from(r#"{"items":["#);
        body.push_str(&format!("{},", item("a")).repeat(50_000));
        body.push_str(&"0,".repeat(949_999));
        body.push_str("0]}");
        assert_eq!(
            decode_response(body.as_bytes(), &lim()).unwrap_err(),
            ProtocolError::TooMany {
                what: "response items",
                count: 1_000_000,
                max: 50_000
            }
        );
    }

    #[test]
    fn deep_nesting_in_data_and_unknown_fields_does_not_overflow() {
        let depth = 200_000;
        let deep = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let body = one_item(&format!(
            r#""lon":0,"lat":0,"class":"c","access":"public","data":{deep},"x":{deep}"#
        ));
        let r = decode_response(body.as_bytes(), &lim()).unwrap();
        assert_eq!(r.items[0].data.get().len(), 2 * depth);
        let unbalanced = format!(r#"{{"tiles":["1/0/0"],"x":{}}}"#, "[".repeat(depth));
        assert!(matches!(
            decode_request(unbalanced.as_bytes(), &lim()),
            Err(ProtocolError::Json { .. })
        ));
    }

    #[test]
    fn json_errors_quote_at_most_a_bounded_part_of_the_input() {
        // Regression (fuzz target server_request): serde_json quotes a wrongly typed
        // string whole, so a body that was one long string came back in full.
        let long = format!("\"{}\"", "2".repeat(5_000));
        let l = Limits::default();
        for e in [
            decode_request(long.as_bytes(), &l).unwrap_err(),
            decode_response(long.as_bytes(), &l).unwrap_err(),
            decode_request(format!("{{\"tiles\":{long}}}").as_bytes(), &l).unwrap_err(),
        ] {
            let msg = e.to_string();
            assert!(
                msg.chars().count() <= 400,
                "{} characters: {msg}",
                msg.len()
            );
            assert!(
                msg.starts_with("malformed JSON at line 1, column "),
                "{msg}"
            );
            assert!(msg.contains("invalid type: string \"222"), "{msg}");
            assert!(msg.contains('…') && msg.contains("expected"), "{msg}");
        }
        assert_eq!(clip_middle("abcdefgh", 8), "abcdefgh");
        assert_eq!(clip_middle("abcdefghij", 8), "abcde…ij");
    }

    #[test]
    fn validate_item_fields_and_at_item() {
        let l = lim();
        assert!(validate_item_fields("a", -180.0, 90.0, "x-1_y", Some(2_592_000), &l).is_ok());
        let e = validate_item_fields("a", f64::NAN, 0.0, "c", None, &l).unwrap_err();
        assert_eq!(
            e.to_string(),
            "item \"a\": lon must be in -180..=180, got NaN"
        );
        let e = validate_item_fields("a", 0.0, f64::INFINITY, "c", None, &l).unwrap_err();
        assert_eq!(
            e,
            ProtocolError::InvalidItemFields {
                id: "a".into(),
                reason: "lat must be in -90..=90, got inf".into()
            }
        );
        assert_eq!(
            e.clone().at_item(7),
            ProtocolError::InvalidItem {
                index: 7,
                id: "a".into(),
                reason: "lat must be in -90..=90, got inf".into()
            }
        );
        assert_eq!(
            ProtocolError::EmptyRequest.at_item(1),
            ProtocolError::EmptyRequest
        );
        assert!(validate_item_fields("", 0.0, 0.0, "c", None, &l).is_err());
        assert!(validate_item_fields("a", 0.0, 0.0, "c", Some(2_592_001), &l).is_err());
    }

    #[test]
    fn validate_checks_a_built_response() {
        let mut r: BatchResponse<()> = BatchResponse {
            tiles: vec![TileList {
                tile: tile("2/1/1"),
                ids: vec!["a".into()],
                ttl: Some(60),
            }],
            items: vec![Item {
                id: "a".into(),
                lon: 1.0,
                lat: 2.0,
                class: "sold".into(),
                access: Access::Public,
                ttl: None,
                data: (),
            }],
            missing: vec![],
        };
        assert_eq!(r.validate(&lim()), Ok(()));
        r.tiles[0].ttl = Some(u32::MAX);
        assert!(matches!(
            r.validate(&lim()),
            Err(ProtocolError::InvalidTileList { index: 0, .. })
        ));
        r.tiles[0].ttl = None;
        r.tiles[0].ids = vec!["a".into(); 3];
        let small = Limits {
            max_items: 2,
            ..lim()
        };
        assert_eq!(
            r.validate(&small),
            Err(ProtocolError::TooMany {
                what: "tile list ids",
                count: 3,
                max: 2
            })
        );
        r.missing = vec!["m".into(); 1001];
        assert_eq!(
            r.validate(&lim()).unwrap_err().to_string(),
            "missing has 1001 ids, at most 1000 are allowed"
        );
    }

    #[test]
    fn unanswered_tiles_and_ids() {
        let r = decode_response(RESPONSE, &lim()).unwrap();
        let request = BatchRequest {
            tiles: vec![
                tile("14/2624/5721"),
                tile("14/2626/5721"),
                tile("12/656/1430"),
                tile("0/0/0"),
                tile("14/2626/5721"),
            ],
            ids: vec!["c".into(), "far-away-1".into(), "q".into(), "q".into()],
            access: Access::Public,
        };
        assert_eq!(
            r.unanswered_tiles(&request),
            vec![tile("14/2626/5721"), tile("0/0/0")]
        );
        assert_eq!(r.unanswered_ids(&request), vec!["q".to_string()]);
        let answered = decode_request(REQUEST, &lim()).unwrap();
        assert!(r.unanswered_tiles(&answered).is_empty());
        assert!(r.unanswered_ids(&answered).is_empty());
    }

    #[test]
    fn to_json_never_fails_when_data_does_not_serialise() {
        struct Broken;
        impl Serialize for Broken {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("broken"))
            }
        }
        let item = |id: &str| Item {
            id: id.into(),
            lon: 0.5,
            lat: -0.5,
            class: "c".into(),
            access: Access::Verified,
            ttl: Some(5),
            data: Broken,
        };
        let r = BatchResponse {
            tiles: vec![],
            items: vec![item("a"), item("b")],
            missing: vec!["m".into()],
        };
        assert_eq!(
            r.to_json(),
            r#"{"tiles":[],"items":[{"id":"a","lon":0.5,"lat":-0.5,"class":"c","access":"verified","ttl":5,"data":null},{"id":"b","lon":0.5,"lat":-0.5,"class":"c","access":"verified","ttl":5,"data":null}],"missing":["m"]}"#
        );
    }

    // ---- error bodies -------------------------------------------------------------------

    #[test]
    fn error_codes_statuses_and_names() {
        let expected = [
            (ErrorCode::BadRequest, 400, "bad_request"),
            (ErrorCode::PayloadTooLarge, 413, "payload_too_large"),
            (
                ErrorCode::UnsupportedMediaType,
                415,
                "unsupported_media_type",
            ),
            (ErrorCode::MethodNotAllowed, 405, "method_not_allowed"),
            (ErrorCode::NotFound, 404, "not_found"),
            (ErrorCode::RateLimited, 429, "rate_limited"),
            (ErrorCode::UpstreamError, 502, "upstream_error"),
            (ErrorCode::UpstreamTimeout, 504, "upstream_timeout"),
            (ErrorCode::Internal, 500, "internal"),
        ];
        assert_eq!(expected.len(), ErrorCode::ALL.len());
        for (code, status, name) in expected {
            assert_eq!((code.http_status(), code.as_str()), (status, name));
            // The serde names agree with as_str.
            assert_eq!(serde_json::to_string(&code).unwrap(), format!("\"{name}\""));
            assert_eq!(ErrorCode::from_name(name), Some(code));
            assert_eq!(ErrorCode::from_http_status(status), code);
            assert_eq!(code.to_string(), name);
        }
        assert_eq!(ErrorCode::from_http_status(403), ErrorCode::BadRequest);
        assert_eq!(ErrorCode::from_http_status(503), ErrorCode::Internal);
        assert_eq!(ErrorCode::from_name("Bad_Request"), None);
    }

    #[test]
    fn protocol_error_codes() {
        assert_eq!(
            ProtocolError::BodyTooLarge { size: 2, max: 1 }.code(),
            ErrorCode::PayloadTooLarge
        );
        for e in [
            ProtocolError::EmptyRequest,
            req_err("{"),
            resp_err(std::str::from_utf8(BAD_LAT).unwrap()),
        ] {
            assert_eq!(e.code(), ErrorCode::BadRequest, "{e}");
        }
        let body = ErrorBody::from(&ProtocolError::EmptyRequest);
        assert_eq!(body.code, ErrorCode::BadRequest);
        assert_eq!(body.message, ProtocolError::EmptyRequest.to_string());
    }

    #[test]
    fn error_body_round_trip_and_leniency() {
        let e = decode_error(ERROR).unwrap();
        assert_eq!(
            e,
            ErrorBody {
                code: ErrorCode::RateLimited,
                message: "too many requests: at most 10 per second are allowed".into()
            }
        );
        for code in ErrorCode::ALL {
            let body = ErrorBody {
                code,
                message: "m \"q\"".into(),
            };
            assert_eq!(decode_error(body.to_json().as_bytes()), Some(body));
        }
        let e = decode_error(br#"{"error":{"code":"forbidden","message":"nope"}}"#).unwrap();
        assert_eq!(e.code, ErrorCode::Internal);
        assert_eq!(e.message, "nope (error code \"forbidden\")");
        let e = decode_error(br#"{"error":{"code":"not_found"}}"#).unwrap();
        assert_eq!((e.code, e.message.as_str()), (ErrorCode::NotFound, ""));
        let long = "é".repeat(5000);
        let body = format!(r#"{{"error":{{"code":"internal","message":"{long}"}}}}"#);
        assert_eq!(
            decode_error(body.as_bytes())
                .unwrap()
                .message
                .chars()
                .count(),
            MAX_ERROR_MESSAGE_CHARS
        );
        for bad in [
            &b""[..],
            b"Bad Gateway",
            b"{}",
            br#"{"error":"boom"}"#,
            br#"{"error":{"code":5,"message":"x"}}"#,
        ] {
            assert_eq!(
                decode_error(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let huge = format!(
            r#"{{"error":{{"code":"internal","message":"{}"}}}}"#,
            "x".repeat(MAX_ERROR_BODY_BYTES)
        );
        assert_eq!(decode_error(huge.as_bytes()), None);
    }

    // ---- properties ---------------------------------------------------------------------

    const FIXTURES: &[&[u8]] = &[
        REQUEST,
        RESPONSE,
        BAD_LAT,
        TRUNCATED,
        NEGATIVE_TTL,
        DANGLING,
        UNKNOWN_ACCESS,
        ITEMS_NOT_ARRAY,
        ERROR,
    ];

    #[derive(Debug, Clone)]
    enum Mutation {
        Flip(usize, u8),
        Insert(usize, u8),
        Delete(usize),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        // Bytes that matter to JSON are favoured over arbitrary ones.
        let byte = prop_oneof![
            3 => prop::sample::select(b"{}[]\",:0123456789-.eE \\nultrfa/".to_vec()),
            1 => any::<u8>(),
        ];
        prop_oneof![
            (any::<usize>(), byte.clone()).prop_map(|(i, b)| Mutation::Flip(i, b)),
            (any::<usize>(), byte).prop_map(|(i, b)| Mutation::Insert(i, b)),
            any::<usize>().prop_map(Mutation::Delete),
        ]
    }

    fn mutate(mut doc: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
        for m in mutations {
            let n = doc.len();
            match *m {
                Mutation::Flip(i, b) if n > 0 => doc[i % n] = b,
                Mutation::Insert(i, b) => doc.insert(i % (n + 1), b),
                Mutation::Delete(i) if n > 0 => {
                    doc.remove(i % n);
                }
                _ => {}
            }
        }
        doc
    }

    fn decode_all(body: &[u8]) {
        // Whatever comes back must be consistent: a decoded response validates again and
        // re-encodes to something that decodes to the same thing.
        if let Ok(r) = decode_response(body, &lim()) {
            assert_eq!(r.validate(&lim()), Ok(()));
            let again = decode_response(r.to_json().as_bytes(), &lim()).unwrap();
            assert_eq!(again.tiles, r.tiles);
        }
        if let Ok(r) = decode_request(body, &lim()) {
            assert_eq!(r.validate(&lim()), Ok(()));
            assert_eq!(decode_request(r.to_json().as_bytes(), &lim()), Ok(r));
        }
        let _ = decode_error(body);
    }

    fn id_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9_-]{1,12}",
            "\\PC{1,8}",
            "[\u{a0}-\u{10ffff}]{1,3}",
            Just("\"quote\\ slash/".to_string()),
        ]
    }

    fn tile_strategy() -> impl Strategy<Value = TileId> {
        (0u8..=24, any::<u32>(), any::<u32>()).prop_map(|(z, x, y)| {
            let n = 1u32 << z;
            TileId::new(z, x % n, y % n).unwrap()
        })
    }

    fn data_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("null".to_string()),
            Just("{ \"a\" : [1, 2.50, -0, 1e3], \"b\":\"\\u00e9\\n\" }".to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            "\\PC{0,12}".prop_map(|s| serde_json::to_string(&s).unwrap()),
            prop::collection::vec(any::<bool>(), 0..4)
                .prop_map(|v| serde_json::to_string(&v).unwrap()),
        ]
    }

    /// serde_json's default float parser (without its `float_roundtrip` feature) may land
    /// one ulp from the correctly rounded value.
    fn within_one_ulp(a: f64, b: f64) -> bool {
        a == b || (a.signum() == b.signum() && a.to_bits().abs_diff(b.to_bits()) <= 1)
    }

    prop_compose! {
        fn response_strategy()(
            ids in prop::collection::hash_set(id_strategy(), 0..12),
            tiles in prop::collection::hash_set(tile_strategy(), 0..6),
            missing in prop::collection::hash_set(id_strategy(), 0..4),
            seed in prop::collection::vec(
                (-180.0f64..=180.0, -90.0f64..=90.0, "[a-z0-9_-]{1,10}",
                 prop::sample::select(Access::ALL.to_vec()),
                 prop::option::of(0u32..=2_592_000), data_strategy(),
                 prop::collection::vec(any::<bool>(), 6), prop::option::of(0u32..=600)),
                12),
        ) -> BatchResponse<RawData> {
            let ids: Vec<String> = ids.into_iter().collect();
            let items: Vec<Item<RawData>> = ids.iter().zip(&seed).map(
                |(id, (lon, lat, class, access, ttl, data, _, _))| Item {
                    id: id.clone(), lon: *lon, lat: *lat, class: class.clone(),
                    access: *access, ttl: *ttl,
                    data: RawValue::from_string(data.clone()).unwrap(),
                }).collect();
            let tiles = tiles.into_iter().enumerate().map(|(t, tile)| TileList {
                tile,
                ids: ids.iter().enumerate().filter(|(i, _)| seed[*i].6[t]).map(|(_, id)| id.clone()).collect(),
                ttl: seed[t].7,
            }).collect();
            let missing = missing.into_iter().filter(|m| !ids.contains(m)).collect();
            BatchResponse { tiles, items, missing }
        }
    }

    proptest! {
        #[test]
        fn decoders_never_panic_on_arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..512)) {
            decode_all(&body);
        }

        #[test]
        fn decoders_never_panic_on_mutated_documents(
            which in 0..FIXTURES.len() + 1,
            generated in response_strategy(),
            mutations in prop::collection::vec(mutation(), 1..8),
        ) {
            let doc = match FIXTURES.get(which) {
                Some(f) => f.to_vec(),
                None => generated.to_json().into_bytes(),
            };
            decode_all(&mutate(doc, &mutations));
        }

        #[test]
        fn valid_responses_round_trip(r in response_strategy()) {
            prop_assert_eq!(r.validate(&lim()), Ok(()));
            let json = r.to_json();
            let d = decode_response(json.as_bytes(), &lim()).unwrap();
            prop_assert_eq!(&d.tiles, &r.tiles);
            prop_assert_eq!(&d.missing, &r.missing);
            prop_assert_eq!(d.items.len(), r.items.len());
            for (x, y) in d.items.iter().zip(&r.items) {
                prop_assert_eq!(
                    (&x.id, &x.class, x.access, x.ttl),
                    (&y.id, &y.class, y.access, y.ttl)
                );
                prop_assert!(within_one_ulp(x.lon, y.lon), "lon {} != {}", x.lon, y.lon);
                prop_assert!(within_one_ulp(x.lat, y.lat), "lat {} != {}", x.lat, y.lat);
                prop_assert_eq!(x.data.get(), y.data.get());
            }
        }

        #[test]
        fn valid_requests_round_trip(
            tiles in prop::collection::vec(tile_strategy(), 0..64),
            ids in prop::collection::vec(id_strategy(), 0..40),
            access in prop::sample::select(Access::ALL.to_vec()),
        ) {
            let r = BatchRequest { tiles, ids, access };
            let decoded = decode_request(r.to_json().as_bytes(), &lim());
            if r.is_empty() {
                prop_assert_eq!(decoded, Err(ProtocolError::EmptyRequest));
            } else {
                let mut expected = r.clone();
                dedup(&mut expected.tiles);
                dedup(&mut expected.ids);
                prop_assert_eq!(decoded, Ok(expected));
            }
        }
    }
}
