//! The batch wire protocol: one `POST` with tiles and ids in, tile lists and items out.
//!
//! ```text
//! request:  {"tiles": ["14/2624/5721", ...], "ids": ["...", ...], "access": "public"}
//! response: {"access": "public",
//!            "tiles": [{"tile": "14/2624/5721", "ids": ["a", "b"], "ttl": 300}],
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
//! Invalidation (`POST /v1/invalidate`, the change feed) is in `change.rs`
//! ([`Invalidation`], [`decode_invalidation`], [`StreamId`]).
//!
//! Files: `request.rs` ([`BatchRequest`], [`decode_request`]), `response.rs`
//! ([`BatchResponse`], [`decode_response`]), `error_body.rs` ([`ErrorBody`], [`ErrorCode`],
//! [`decode_error`]), `limits.rs` ([`Limits`]), `error.rs` ([`ProtocolError`]),
//! `validate.rs` (the field checks) and `decode.rs` (the bounded serde decoding).
//!
//! # What the decoders accept
//!
//! - Unknown fields are ignored, at every level. A field given twice is an error.
//! - In a request, `tiles` and `ids` may be absent or `null` (= empty) and `access` may be
//!   absent or `null` (= `public`). A request with no tiles and no ids is an error.
//! - The request's `access` can only lower the tier the server verified for the caller
//!   (its bearer token; no token is `public`); asking for more is a 403 `forbidden`. The
//!   response's `access` reports the tier the answer was filtered for; it may be absent
//!   or `null` (servers from before it), and is otherwise a tier name.
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
//! - One item's `data` is bounded by [`Limits::max_data_bytes`], not by the decoder (one
//!   oversized item would fail the whole answer): a layer reading an origin's answer leaves
//!   such items out with [`BatchResponse::take_oversized`], which names each ([`DataTooLarge`]:
//!   id, size, limit) and keeps the rest of the answer; a database row is checked with
//!   [`check_item_data`].
//!
//! ```
//! use tilewarm::protocol::{decode_response, Limits};
//! let body = br#"{"tiles":[{"tile":"14/2624/5721","ids":["a"],"ttl":300}],
//!   "items":[{"id":"a","lon":-122.33,"lat":47.61,"class":"off_market","access":"public",
//!             "data":{"price":1}}]}"#;
//! let resp = decode_response(body, &Limits::default()).unwrap();
//! assert_eq!(resp.items[0].data.get(), r#"{"price":1}"#);
//! assert!(resp.missing.is_empty());
//! ```

mod change;
mod decode;
mod error;
mod error_body;
mod limits;
mod request;
mod response;
#[cfg(test)]
mod tests;
mod validate;

pub use change::{decode_invalidation, Invalidation, StreamId, MAX_CLASSES};
pub use error::ProtocolError;
pub use error_body::{
    decode_error, ErrorBody, ErrorCode, Unanswered, MAX_ERROR_BODY_BYTES, MAX_ERROR_MESSAGE_CHARS,
};
pub use limits::{Limits, MAX_TTL_S};
pub use request::{decode_request, BatchRequest};
pub use response::{decode_response, BatchResponse, Item, OtherTier, RawData, TileList};
pub use validate::{check_item_data, ttl_left_s, validate_item_fields, DataTooLarge};

/// The response header in which a server declares the data's extent, `west,south,east,north`
/// in degrees ([`parse_bounds`](crate::cache::parse_bounds)): clients that declare none adopt
/// it ([`Client::on_declared_response`](crate::client::Client::on_declared_response)).
/// Each accepted answer decides: one without it, or with one that does not read as an
/// extent, declares none.
pub const BOUNDS_HEADER: &str = "x-tilewarm-bounds";

/// The response header naming the caller's tier: on an answer, the tier it was filtered
/// for; on a `403` refusing a request `access` above the caller's credential, the tier the
/// credential gives ([`AboveCredential::verified`](crate::access::AboveCredential)), which a
/// client that asked above it follows
/// ([`Client::on_reported_failure`](crate::client::Client::on_reported_failure)).
pub const ACCESS_HEADER: &str = "x-tilewarm-access";

use error::{clip, quote};
pub(crate) use validate::check_id;
use validate::{check_body, check_ttl, dedup, parse_tile, parse_tiles, ttl_from_wire};
