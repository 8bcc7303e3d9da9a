//! The protocol's tests: requests, responses, error bodies, and properties of the
//! decoders (never panic, round trips).

mod error_body;
mod properties;
mod request;
mod response;

use super::decode::clip_middle;
use super::*;
use crate::access::{Access, UnknownAccess};
use crate::tile::TileId;
use proptest::prelude::*;
use serde::Serialize;
use serde_json::value::RawValue;

const REQUEST: &[u8] = include_bytes!("../../../tests/fixtures/protocol/request.json");
const RESPONSE: &[u8] = include_bytes!("../../../tests/fixtures/protocol/response.json");
const BAD_LAT: &[u8] = include_bytes!("../../../tests/fixtures/protocol/response_bad_lat.json");
const TRUNCATED: &[u8] = include_bytes!("../../../tests/fixtures/protocol/response_truncated.json");
const NEGATIVE_TTL: &[u8] =
    include_bytes!("../../../tests/fixtures/protocol/response_negative_ttl.json");
const DANGLING: &[u8] =
    include_bytes!("../../../tests/fixtures/protocol/response_dangling_id.json");
const UNKNOWN_ACCESS: &[u8] =
    include_bytes!("../../../tests/fixtures/protocol/response_unknown_access.json");
const ITEMS_NOT_ARRAY: &[u8] =
    include_bytes!("../../../tests/fixtures/protocol/response_items_not_array.json");
const ERROR: &[u8] = include_bytes!("../../../tests/fixtures/protocol/error.json");

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
