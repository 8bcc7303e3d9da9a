//! The server's request parser: `tilewarm_server::http::parse_batch`, everything
//! `POST /v1/batch` checks before answering (media type, size, the core's bounded
//! `decode_request`), as a pure function.
//!
//! Input: the first byte picks the `Content-Type` header (none, accepted ones, refused
//! ones, raw bytes) and, with its top bit, tight limits; the rest is the body.
//!
//! Properties, beyond not panicking:
//! - an accepted request respects the limits (counts, zooms, id lengths), has no tile or id
//!   twice, validates again, and does not depend on which accepted media type carried it;
//! - its compact form (`to_json`) parses back to the same request (a fixed point);
//! - a refusal is a 4xx with a non-empty message of at most `MAX_ERROR_MESSAGE_CHARS`
//!   characters, and its error body survives the client's `decode_error` unchanged.
#![no_main]

use std::collections::HashSet;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tilewarm::protocol::MAX_ERROR_MESSAGE_CHARS;
use tilewarm::protocol::{decode_error, Limits};
use tilewarm_server::http::parse_batch;

const TIGHT: Limits = Limits {
    max_body_bytes: 2048,
    max_tiles: 4,
    max_ids: 4,
    max_items: 8,
    max_id_len: 16,
    max_class_len: 8,
    max_ttl_s: 3600,
    min_zoom: 10,
    max_data_bytes: 64,
};

/// The server's default limits (parsing the flags once, not per input).
static SERVER_LIMITS: OnceLock<Limits> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let limits = if head & 0x80 != 0 {
        TIGHT
    } else {
        *SERVER_LIMITS.get_or_init(|| tilewarm_server::Config::default().limits())
    };
    // Raw header bytes: a prefix of the body up to the first newline.
    let raw_ct;
    let (content_type, body): (Option<&[u8]>, &[u8]) = match head & 0x07 {
        0 => (None, rest),
        1 => (Some(b"application/json"), rest),
        2 => (Some(b"text/plain;charset=UTF-8"), rest),
        3 => (Some(b"application/geo+json; charset=utf-8"), rest),
        4 => (Some(b"text/xml"), rest),
        5 => (Some(b"multipart/form-data; boundary=x"), rest),
        _ => {
            let cut = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            raw_ct = &rest[..cut];
            (Some(raw_ct), rest.get(cut + 1..).unwrap_or(&[]))
        }
    };
    match parse_batch(content_type, body, &limits) {
        Ok(req) => {
            assert!(body.len() <= limits.max_body_bytes);
            assert!(!req.tiles.is_empty() || !req.ids.is_empty());
            assert!(req.tiles.len() <= limits.max_tiles);
            assert!(req.ids.len() <= limits.max_ids);
            assert!(req.tiles.iter().all(|t| t.z() >= limits.min_zoom));
            assert!(req
                .ids
                .iter()
                .all(|id| !id.is_empty() && id.len() <= limits.max_id_len));
            assert_eq!(
                req.tiles.iter().collect::<HashSet<_>>().len(),
                req.tiles.len()
            );
            assert_eq!(req.ids.iter().collect::<HashSet<_>>().len(), req.ids.len());
            req.validate(&limits)
                .expect("an accepted request validates again");
            for ct in [None, Some(&b"application/json"[..]), Some(b"text/plain")] {
                assert_eq!(parse_batch(ct, body, &limits).ok().as_ref(), Some(&req));
            }
            let json = req.to_json();
            let relaxed = Limits {
                max_body_bytes: usize::MAX,
                ..limits
            };
            let again = parse_batch(Some(b"application/json"), json.as_bytes(), &relaxed)
                .unwrap_or_else(|e| panic!("the compact form is refused: {}\n{json}", e.message));
            assert_eq!(again, req, "the compact form is not a fixed point");
        }
        Err(e) => {
            let status = e.code.http_status();
            assert!(
                (400..500).contains(&status),
                "status {status} for a bad request"
            );
            assert!(!e.message.is_empty());
            assert!(
                e.message.chars().count() <= MAX_ERROR_MESSAGE_CHARS,
                "a {}-character message from a {}-byte body: {:.200}",
                e.message.chars().count(),
                body.len(),
                e.message
            );
            let wire = e.to_json();
            let back = decode_error(wire.as_bytes()).expect("the error body decodes");
            assert_eq!(back, e, "the error body does not survive decode_error");
        }
    }
});
