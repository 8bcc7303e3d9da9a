//! The response: tile lists and items, its decoder (client side), its checks and its wire
//! form.

use serde::Serialize;
use serde_json::value::RawValue;

use super::decode::{parse, ResponseSeed, Slot};
use super::{
    check_body, check_id, check_ttl, clip, parse_tile, quote, ttl_from_wire, validate_item_fields,
};
use super::{check_item_data, BatchRequest, DataTooLarge, Limits, ProtocolError};
use crate::access::Access;
use crate::tile::TileId;
use crate::util::{HashMap, HashSet};

/// Item payloads as raw JSON text: kept byte for byte, never re-parsed.
pub type RawData = Box<RawValue>;

/// The items of one requested tile. Its ids are owned (`String`, as decoded) or borrowed
/// from the items they name (`&str`, as a proxy assembles an answer: no copy per item).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TileList<S = String> {
    pub tile: TileId,
    /// Ids of the tile's items that the caller may see; each is in the response's `items`.
    pub ids: Vec<S>,
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
    /// use tilewarm::access::Access;
    /// use tilewarm::protocol::Item;
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

/// An origin's answer reports a tier other than the one it was asked at
/// ([`BatchResponse::check_tier`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OtherTier {
    /// The tier the request was made at.
    pub asked: Access,
    /// The tier the answer says it was filtered for.
    pub reported: Access,
}

impl std::fmt::Display for OtherTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the origin answered for tier \"{}\", not the \"{}\" asked for",
            self.reported, self.asked
        )
    }
}

impl std::error::Error for OtherTier {}

/// A decoded batch response.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BatchResponse<D> {
    /// The tier the server filtered the answer for: the caller's verified tier, lowered by
    /// the request's `access`. `None` from servers that do not report it (older ones); a
    /// client then keeps assuming the tier it asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access: Option<Access>,
    /// One entry per requested tile.
    pub tiles: Vec<TileList>,
    /// The items listed in `tiles` plus the requested ids that exist, each once.
    pub items: Vec<Item<D>>,
    /// Requested ids that do not exist or that the caller may not see.
    pub missing: Vec<String>,
    /// The `code` of a partial answer's `error` member ([`Unanswered`](super::Unanswered)):
    /// why the requested tiles and ids it leaves out are not in it (a client reads which
    /// those are from the request it sent). `None` for a whole answer, and for an `error`
    /// that is not an object with a known code. Not written by
    /// [`to_json`](Self::to_json): the layer that leaves something out writes the member.
    #[serde(skip)]
    pub left_out: Option<super::ErrorCode>,
}

impl<D> Default for BatchResponse<D> {
    fn default() -> Self {
        BatchResponse {
            access: None,
            tiles: Vec::new(),
            items: Vec::new(),
            missing: Vec::new(),
            left_out: None,
        }
    }
}

/// Decodes and checks a response body (client side); see the [module docs](super) for the
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
    let access = match wire.access {
        Some(a) => Some(a.parse::<Access>()?),
        None => None,
    };
    let response = BatchResponse {
        access,
        tiles,
        items,
        missing: wire.missing,
        left_out: wire.left_out,
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
            access: self.access,
            tiles: self.tiles.clone(),
            items,
            missing: self.missing.clone(),
            left_out: self.left_out,
        };
        // Every field now serialises, so this cannot fail.
        serde_json::to_string(&lossy).unwrap_or_default()
    }
}

impl BatchResponse<RawData> {
    /// Leaves out the items whose `data` is larger than [`Limits::max_data_bytes`], from
    /// `items` and from every tile list, and returns one [`DataTooLarge`] per item left out
    /// (in `items` order). The rest of the answer is kept: each layer that reads an origin's
    /// answer (the server, the edge) calls it once, so an oversized payload is neither cached
    /// nor served. A requested id among them is in neither `items` nor `missing`: the caller
    /// decides how to report it (tilewarm-server: unanswered, naming the item).
    ///
    /// ```
    /// use tilewarm::protocol::{decode_response, Limits};
    /// let body = br#"{"tiles":[{"tile":"14/2624/5721","ids":["a","b"]}],"items":[
    ///   {"id":"a","lon":-122.33,"lat":47.61,"class":"c","access":"public","data":[1]},
    ///   {"id":"b","lon":-122.33,"lat":47.61,"class":"c","access":"public","data":"0123456789"}]}"#;
    /// let mut r = decode_response(body, &Limits::default()).unwrap();
    /// let limits = Limits { max_data_bytes: 8, ..Limits::default() };
    /// let out = r.take_oversized(&limits);
    /// assert_eq!(out[0].to_string(), r#"item "b": data is 12 bytes, at most 8 are allowed"#);
    /// assert_eq!(r.tiles[0].ids, ["a"]);
    /// assert_eq!(r.items.len(), 1);
    /// ```
    pub fn take_oversized(&mut self, limits: &Limits) -> Vec<DataTooLarge> {
        let mut out = Vec::new();
        self.items.retain(|it| {
            let checked = check_item_data(&it.id, it.access, it.data.get().len(), limits);
            checked.map_err(|e| out.push(e)).is_ok()
        });
        if !out.is_empty() {
            let gone: HashSet<&str> = out.iter().map(|o| o.id.as_str()).collect();
            for list in &mut self.tiles {
                list.ids.retain(|id| !gone.contains(id.as_str()));
            }
        }
        out
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

    /// Whether the answer was made for the tier `asked` for, as a proxy that caches it under
    /// that tier needs: an answer that reports another tier (its origin filtered it for the
    /// tier the proxy's own credential gives, say) is [`OtherTier`], and must be neither
    /// used nor stored. An answer that reports no tier (a server from before the field) is
    /// taken as made for `asked`. The edge proxy and the server's upstream origin both
    /// apply this rule. (A client is different: it follows a lower tier the server
    /// reports.)
    ///
    /// ```
    /// use tilewarm::protocol::BatchResponse;
    /// use tilewarm::Access;
    /// let mut r = BatchResponse::<()>::default();
    /// assert!(r.check_tier(Access::Agent).is_ok());
    /// r.access = Some(Access::Registered);
    /// let e = r.check_tier(Access::Agent).unwrap_err();
    /// assert_eq!(e.to_string(), "the origin answered for tier \"registered\", not the \"agent\" asked for");
    /// ```
    pub fn check_tier(&self, asked: Access) -> Result<(), OtherTier> {
        match self.access {
            Some(reported) if reported != asked => Err(OtherTier { asked, reported }),
            _ => Ok(()),
        }
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
