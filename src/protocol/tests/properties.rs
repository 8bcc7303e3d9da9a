use super::*;

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
        prop::collection::vec(any::<bool>(), 0..4).prop_map(|v| serde_json::to_string(&v).unwrap()),
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
        access in prop::option::of(prop::sample::select(Access::ALL.to_vec())),
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
        BatchResponse { access, tiles, items, missing, left_out: None }
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
