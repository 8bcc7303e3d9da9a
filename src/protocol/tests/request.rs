use super::*;

// ---- limits -------------------------------------------------------------------------

#[test]
fn default_limits_are_the_documented_ones() {
    let l = Limits::default();
    assert_eq!(l.max_body_bytes, 8_388_608);
    assert_eq!((l.max_tiles, l.max_ids, l.max_items), (64, 1000, 50_000));
    assert_eq!((l.max_id_len, l.max_class_len), (256, 64));
    assert_eq!((l.max_ttl_s, l.min_zoom), (2_592_000, 0));
}

#[test]
fn the_largest_valid_request_fits_max_request_bytes() {
    // Every id of the longest length, made of the byte JSON escapes (`"` → `\"`), every
    // tile of the longest name, pretty-printed: the worst a valid request looks.
    for l in [
        Limits::default(),
        Limits {
            max_tiles: 3,
            max_ids: 2,
            max_id_len: 5,
            ..Limits::default()
        },
    ] {
        let r = BatchRequest {
            tiles: (0..l.max_tiles as u32)
                .map(|i| TileId::new(24, 16_777_215 - i, 16_777_215).unwrap())
                .collect(),
            ids: (0..l.max_ids)
                .map(|i| {
                    let mut id = format!("{i}");
                    id.push_str(&"\"".repeat(l.max_id_len - id.len()));
                    id
                })
                .collect(),
            access: Access::Registered,
        };
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        let pretty = serde_json::to_string_pretty(&v).unwrap();
        assert!(
            pretty.len() <= l.max_request_bytes(),
            "{} > {}",
            pretty.len(),
            l.max_request_bytes()
        );
        let strict = Limits {
            max_body_bytes: l.max_request_bytes(),
            ..l
        };
        assert_eq!(decode_request(pretty.as_bytes(), &strict).unwrap(), r);
    }
    // And it is far below the 8 MiB a client reads of a response.
    assert!(Limits::default().max_request_bytes() < 600 * 1024);
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
