//! The request: what the client asks for, and its decoder (server side).

use serde::Serialize;

use super::decode::{parse, RequestSeed, Slot};
use super::{check_body, check_id, dedup, parse_tiles, Limits, ProtocolError};
use crate::access::Access;
use crate::tile::TileId;

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
    /// use tilewarm::access::Access;
    /// use tilewarm::protocol::BatchRequest;
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
/// keeping the first occurrence of each in order. See the [module docs](super) for the rules
/// and bounds.
///
/// ```
/// use tilewarm::access::Access;
/// use tilewarm::protocol::{decode_request, Limits};
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
    let tiles = parse_tiles(&wire.tiles)?;
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
