//! The client's response decoder: `decode_response` (bounded parse + validation) and
//! `decode_error` on arbitrary bytes, under the default limits and under tight ones.
//!
//! Properties, beyond not panicking:
//! - an accepted response respects every limit, validates again, and its items are in
//!   range (finite lon in -180..=180, lat in -90..=90, ids/classes within their lengths);
//!   every id a tile list names has exactly one item, and no id is both returned and missing;
//! - its compact form (`to_json`) decodes again to the same compact form (a fixed point);
//! - a refusal has a non-empty message of at most `MAX_ERROR_MESSAGE_CHARS` characters,
//!   whatever the input's size, so it survives a trip through an error body uncut;
//! - `decode_error` never keeps more than `MAX_ERROR_MESSAGE_CHARS` of a message (plus the
//!   note it appends for an unknown code).
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use tilewarm::protocol::MAX_ERROR_MESSAGE_CHARS;
use tilewarm::protocol::{decode_error, decode_response, Limits};

const TIGHT: Limits = Limits {
    max_body_bytes: 4096,
    max_tiles: 4,
    max_ids: 4,
    max_items: 8,
    max_id_len: 16,
    max_class_len: 8,
    max_ttl_s: 3600,
    min_zoom: 10,
    max_data_bytes: 64,
};

fuzz_target!(|data: &[u8]| {
    for limits in [Limits::default(), TIGHT] {
        check(data, &limits);
    }
    if let Some(e) = decode_error(data) {
        // The kept message, plus at most ` (error code "<code>")` with a clipped code.
        assert!(
            e.message.chars().count() <= MAX_ERROR_MESSAGE_CHARS + 200,
            "decode_error kept {} characters",
            e.message.chars().count()
        );
    }
});

fn check(data: &[u8], limits: &Limits) {
    match decode_response(data, limits) {
        Ok(r) => {
            assert!(r.tiles.len() <= limits.max_tiles);
            assert!(r.items.len() <= limits.max_items);
            assert!(r.missing.len() <= limits.max_ids);
            r.validate(limits)
                .expect("a decoded response validates again");
            // Leaving out the oversized items keeps the rest whole and valid.
            let mut kept = r.clone();
            let out = kept.take_oversized(limits);
            assert_eq!(kept.items.len() + out.len(), r.items.len());
            let max = limits.max_data_bytes;
            assert!(kept.items.iter().all(|it| it.data.get().len() <= max));
            assert!(out
                .iter()
                .all(|o| o.size > max && !kept.tiles.iter().any(|t| t.ids.contains(&o.id))));
            kept.validate(limits)
                .expect("an answer without its oversized items validates");
            let mut ids = HashSet::new();
            for it in &r.items {
                assert!(it.lon.is_finite() && (-180.0..=180.0).contains(&it.lon));
                assert!(it.lat.is_finite() && (-90.0..=90.0).contains(&it.lat));
                assert!(!it.id.is_empty() && it.id.len() <= limits.max_id_len);
                assert!(it.class.len() <= limits.max_class_len);
                assert!(it.ttl.is_none_or(|t| t <= limits.max_ttl_s));
                assert!(ids.insert(it.id.as_str()), "item {:?} twice", it.id);
            }
            let mut tiles = HashSet::new();
            for t in &r.tiles {
                assert!(tiles.insert(t.tile), "tile {} twice", t.tile);
                assert!(t.ids.iter().all(|id| ids.contains(id.as_str())));
                assert!(t.ttl.is_none_or(|s| s <= limits.max_ttl_s));
            }
            assert!(r.missing.iter().all(|id| !ids.contains(id.as_str())));

            let json = r.to_json();
            let relaxed = Limits {
                max_body_bytes: usize::MAX,
                ..*limits
            };
            let again = decode_response(json.as_bytes(), &relaxed)
                .unwrap_or_else(|e| panic!("the compact form does not decode: {e}\n{json}"));
            assert_eq!(
                again.to_json(),
                json,
                "the compact form is not a fixed point"
            );
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.is_empty());
            assert!(
                msg.chars().count() <= MAX_ERROR_MESSAGE_CHARS,
                "a {}-character message from a {}-byte body: {msg:.200}",
                msg.chars().count(),
                data.len()
            );
        }
    }
}
