//! Field checks shared by the request and response decoders: ids, classes, coordinates,
//! ttls, body size, tiles.

use std::fmt;
use std::hash::Hash;

use serde_json::Number;

use super::{clip, quote, Limits, ProtocolError, MAX_TTL_S};
use crate::access::Access;
use crate::tile::{TileError, TileId};
use crate::util::{HashSet, Num, QuotedChar};

pub(crate) fn check_id(id: &str, limits: &Limits) -> Result<(), String> {
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

pub(super) fn check_class(class: &str, limits: &Limits) -> Result<(), String> {
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
            QuotedChar(c)
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

pub(super) fn check_ttl(ttl: Option<u32>, limits: &Limits) -> Result<(), String> {
    match ttl {
        Some(t) if t > limits.max_ttl_s => Err(ttl_message(t, limits)),
        _ => Ok(()),
    }
}

/// A wire ttl (any JSON number) as seconds: a non-negative integer within the limit.
pub(super) fn ttl_from_wire(n: Option<Number>, limits: &Limits) -> Result<Option<u32>, String> {
    let Some(n) = n else { return Ok(None) };
    match n.as_u64() {
        Some(t) if t <= u64::from(limits.max_ttl_s) && t <= u64::from(u32::MAX) => {
            Ok(Some(t as u32))
        }
        _ => Err(ttl_message(n, limits)),
    }
}

/// An entry's wire `ttl`: whole seconds left until `exp_ms`, rounded up, at least 1 (an
/// entry still being served is never sent as already expired) and at most [`MAX_TTL_S`]
/// (30 days), the longest a client accepts: an entry kept longer (a cache configured with
/// a longer TTL, a clock that stepped back since it was stored) would make clients refuse
/// the whole answer. The server and the edge proxy both answer with it.
///
/// ```
/// use tilewarm::protocol::{ttl_left_s, MAX_TTL_S};
/// assert_eq!(ttl_left_s(10_500, 10_000), 1);
/// assert_eq!(ttl_left_s(12_001, 10_000), 3);
/// assert_eq!(ttl_left_s(5_000, 10_000), 1);
/// assert_eq!(ttl_left_s(u64::MAX, 0), MAX_TTL_S);
/// ```
pub fn ttl_left_s(exp_ms: u64, now_ms: u64) -> u32 {
    exp_ms
        .saturating_sub(now_ms)
        .div_ceil(1000)
        .clamp(1, u64::from(MAX_TTL_S)) as u32
}

/// Checks one item's fields: id, `lon` finite in −180..=180, `lat` finite in −90..=90,
/// class, and ttl (see the [module docs](super) for the rules). Used by [`decode_response`](super::decode_response)
/// through [`BatchResponse::validate`](super::BatchResponse::validate), and by decoders that build items themselves.
///
/// The error is [`ProtocolError::InvalidItemFields`]; [`ProtocolError::at_item`] adds the
/// item's position.
///
/// ```
/// use tilewarm::protocol::{validate_item_fields, Limits};
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
                Err(format!("lon must be in -180..=180, got {}", Num(lon)))
            }
        })
        .and_then(|()| {
            if lat.is_finite() && (-90.0..=90.0).contains(&lat) {
                Ok(())
            } else {
                Err(format!("lat must be in -90..=90, got {}", Num(lat)))
            }
        })
        .and_then(|()| check_class(class, limits))
        .and_then(|()| check_ttl(ttl, limits));
    reason.map_err(|reason| ProtocolError::InvalidItemFields {
        id: clip(id),
        reason,
    })
}

/// An item whose `data` is larger than [`Limits::max_data_bytes`]
/// ([`check_item_data`], [`BatchResponse::take_oversized`](super::BatchResponse::take_oversized)).
///
/// ```
/// use tilewarm::protocol::{check_item_data, Limits};
/// use tilewarm::Access;
/// let limits = Limits { max_data_bytes: 8, ..Limits::default() };
/// assert!(check_item_data("a", Access::Public, 8, &limits).is_ok());
/// let e = check_item_data("a", Access::Agent, 9, &limits).unwrap_err();
/// assert_eq!((e.id.as_str(), e.access, e.size, e.max), ("a", Access::Agent, 9, 8));
/// assert_eq!(e.to_string(), r#"item "a": data is 9 bytes, at most 8 are allowed"#);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataTooLarge {
    /// The item's id, whole.
    pub id: String,
    /// The item's tier: report it only to callers who may see the item.
    pub access: Access,
    /// Its `data`'s size, in bytes of JSON text.
    pub size: usize,
    /// [`Limits::max_data_bytes`].
    pub max: usize,
}

impl fmt::Display for DataTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "item {}: data is {} bytes, at most {} are allowed",
            quote(&self.id),
            self.size,
            self.max
        )
    }
}

impl std::error::Error for DataTooLarge {}

/// Checks an item's `data` size: `size` bytes of JSON text, at most
/// [`Limits::max_data_bytes`]. For layers that read payloads themselves (a database row);
/// an answer's items are checked by [`BatchResponse::take_oversized`](super::BatchResponse::take_oversized).
pub fn check_item_data(
    id: &str,
    access: Access,
    size: usize,
    limits: &Limits,
) -> Result<(), DataTooLarge> {
    if size > limits.max_data_bytes {
        return Err(DataTooLarge {
            id: id.to_owned(),
            access,
            size,
            max: limits.max_data_bytes,
        });
    }
    Ok(())
}

pub(super) fn check_body(body: &[u8], limits: &Limits) -> Result<(), ProtocolError> {
    if body.len() > limits.max_body_bytes {
        return Err(ProtocolError::BodyTooLarge {
            size: body.len(),
            max: limits.max_body_bytes,
        });
    }
    Ok(())
}

pub(super) fn parse_tile(index: usize, s: &str) -> Result<TileId, ProtocolError> {
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

/// Each of a body's `tiles` parsed with [`parse_tile`] (the error names the first that is
/// not a tile, by its index).
pub(super) fn parse_tiles(tiles: &[String]) -> Result<Vec<TileId>, ProtocolError> {
    tiles
        .iter()
        .enumerate()
        .map(|(i, s)| parse_tile(i, s))
        .collect()
}

/// `v` without repeats, keeping the first occurrence of each value in order.
pub(super) fn dedup<T: Eq + Hash + Clone>(v: &mut Vec<T>) {
    let mut seen = HashSet::with_capacity(v.len());
    v.retain(|x| seen.insert(x.clone()));
}
