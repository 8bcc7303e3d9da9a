use super::*;

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
        access: None,
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
        left_out: None,
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
        access: None,
        tiles: vec![],
        items: vec![item("a"), item("b")],
        missing: vec!["m".into()],
        left_out: None,
    };
    assert_eq!(
        r.to_json(),
        r#"{"tiles":[],"items":[{"id":"a","lon":0.5,"lat":-0.5,"class":"c","access":"verified","ttl":5,"data":null},{"id":"b","lon":0.5,"lat":-0.5,"class":"c","access":"verified","ttl":5,"data":null}],"missing":["m"]}"#
    );
}

#[test]
fn response_access_is_optional_and_checked() {
    // Older servers send no `access`; `null` is the same.
    for body in [r#"{"tiles":[],"items":[]}"#, r#"{"access":null}"#] {
        assert_eq!(
            decode_response(body.as_bytes(), &lim()).unwrap().access,
            None
        );
    }
    let r = decode_response(br#"{"access":"registered","tiles":[]}"#, &lim()).unwrap();
    assert_eq!(r.access, Some(Access::Registered));
    // Written first when known, left out when not.
    assert!(r.to_json().starts_with(r#"{"access":"registered","#));
    let e = resp_err(r#"{"access":"admin"}"#);
    assert!(e.to_string().starts_with("access: "), "{e}");
    assert!(e.to_string().contains("\"admin\""), "{e}");
    let e = resp_err(r#"{"access":"public","access":"agent"}"#);
    assert!(e.to_string().contains("duplicate field `access`"), "{e}");
}

/// A partial answer's `error` code is read (a client asks again what did not fit), and
/// leniently: an unknown code or an `error` of another shape is none, not a bad answer;
/// given twice it is a bad answer, as any field.
#[test]
fn a_partial_answers_error_code_is_read_leniently() {
    let body = |error: &str| {
        format!(r#"{{"tiles":[{{"tile":"14/2624/5721","ids":[]}}],"items":[],"error":{error}}}"#)
    };
    let full = r#"{"code":"response_full","message":"m","tiles":["14/2624/5722"],"ids":["x"]}"#;
    let r = decode_response(body(full).as_bytes(), &lim()).unwrap();
    assert_eq!(r.left_out, Some(ErrorCode::ResponseFull));
    assert_eq!(r.tiles.len(), 1);
    for other in [
        r#"{"code":"teapot"}"#,
        r#""boom""#,
        "null",
        r#"{"code":5}"#,
        "[1]",
    ] {
        let r = decode_response(body(other).as_bytes(), &lim()).unwrap();
        assert_eq!(r.left_out, None, "{other}");
    }
    let twice = format!(r#"{{"error":{full},"error":{full}}}"#);
    assert!(decode_response(twice.as_bytes(), &lim()).is_err());
    assert_eq!(decode_response(RESPONSE, &lim()).unwrap().left_out, None);
}
