use super::*;

#[test]
fn expiry_is_exact_to_the_ms_without_swr() {
    let mut c = small(10, 1000);
    let mut m = meta_in(tile(0, 0), 1);
    m.ttl_ms = Some(500);
    c.insert("a", m, 1, 1_000, Priority::Visible).unwrap();
    assert_eq!(
        c.get("a", Access::Public, 1_000)
            .unwrap()
            .item
            .expires_at_ms(),
        1_500
    );
    assert!(!c.peek("a", Access::Public, 1_499).unwrap().stale);
    assert!(c.peek("a", Access::Public, 1_500).is_none());
    assert!(c.contains("a"), "peek removes nothing");
    assert!(c.get("a", Access::Public, 1_500).is_none());
    assert!(!c.contains("a"));
    let s = c.stats();
    assert_eq!((s.hits, s.misses, s.expirations), (1, 1, 1));
    assert_eq!((s.entries, s.bytes), (0, 0));
}

#[test]
fn stale_while_revalidate_window_is_exact() {
    let mut c: ItemCache<u32> = ItemCache::new(CacheConfig {
        stale_while_revalidate_ms: 100,
        ..CacheConfig::default()
    })
    .unwrap();
    let mut m = meta_in(tile(0, 0), 1);
    m.ttl_ms = Some(500);
    c.insert("a", m, 1, 1_000, Priority::Visible).unwrap();
    assert!(!c.get("a", Access::Public, 1_499).unwrap().stale);
    assert!(c.get("a", Access::Public, 1_500).unwrap().stale);
    assert!(c.get("a", Access::Public, 1_599).unwrap().stale);
    assert!(c.peek("a", Access::Public, 1_600).is_none());
    assert!(c.get("a", Access::Public, 1_600).is_none());
    let s = c.stats();
    assert_eq!(
        (s.hits, s.stale_hits, s.misses, s.expirations),
        (1, 2, 1, 1)
    );
}

#[test]
fn invalid_items_are_errors_and_change_nothing() {
    let mut c = small(10, 100);
    put(&mut c, "keep", tile(0, 0), 5, Priority::Visible);
    let before = (c.len(), c.bytes(), c.stats());
    let t = tile(0, 0);
    let cases: Vec<(&str, ItemMeta, &str)> = vec![
        (
            "",
            meta_in(t, 1),
            "invalid item \"\": the id must not be empty",
        ),
        (
            "x",
            ItemMeta {
                lon: f64::NAN,
                ..meta_in(t, 1)
            },
            "invalid item \"x\": longitude must be a finite number in -180..=180, got NaN",
        ),
        (
            "x",
            ItemMeta {
                lon: 180.5,
                ..meta_in(t, 1)
            },
            "invalid item \"x\": longitude must be a finite number in -180..=180, got 180.5",
        ),
        (
            "x",
            ItemMeta {
                lat: -91.0,
                ..meta_in(t, 1)
            },
            "invalid item \"x\": latitude must be a finite number in -90..=90, got -91",
        ),
        (
            "x",
            ItemMeta {
                lat: f64::INFINITY,
                ..meta_in(t, 1)
            },
            "invalid item \"x\": latitude must be a finite number in -90..=90, got inf",
        ),
        (
            "x",
            meta_in(t, 101),
            "item \"x\" is 101 bytes, more than the cache's max_bytes of 100",
        ),
    ];
    for (id, m, want) in cases {
        let e = c.insert(id, m, 9, 0, Priority::Visible).unwrap_err();
        assert_eq!(e.to_string(), want);
    }
    let long = "y".repeat(MAX_ID_BYTES + 1);
    let e = c
        .insert(&long, meta_in(t, 1), 9, 0, Priority::Visible)
        .unwrap_err();
    assert!(e.to_string().contains("257 bytes long, at most 256"), "{e}");
    assert!(c
        .insert(
            &"y".repeat(MAX_ID_BYTES),
            meta_in(t, 1),
            9,
            0,
            Priority::Visible
        )
        .is_ok());
    c.invalidate(Invalidate::Ids(&[&"y".repeat(MAX_ID_BYTES)]));
    // A failed replace leaves the old item alone.
    assert!(c
        .insert("keep", meta_in(t, 101), 9, 0, Priority::Visible)
        .is_err());
    assert_eq!((c.len(), c.bytes(), c.stats()), before);
    assert_eq!(
        *c.peek("keep", Access::Public, 0).unwrap().item.payload(),
        0
    );
}

#[test]
fn an_item_of_exactly_max_bytes_fits_by_evicting_everything() {
    let mut c = small(10, 100);
    put(&mut c, "a", tile(0, 0), 30, Priority::Visible);
    put(&mut c, "b", tile(0, 0), 30, Priority::Visible);
    let out = put(&mut c, "big", tile(0, 0), 100, Priority::Visible);
    assert_eq!(
        out,
        InsertOutcome {
            evicted: 2,
            rejected: false
        }
    );
    assert_eq!((c.len(), c.bytes(), c.stats().evictions), (1, 100, 2));
}

#[test]
fn count_capacity_evicts_least_recently_used() {
    let mut c = small(3, 1000);
    for id in ["a", "b", "c"] {
        put(&mut c, id, tile(0, 0), 1, Priority::Visible);
    }
    assert!(c.get("a", Access::Public, 0).is_some()); // b is now the LRU
    assert_eq!(
        put(&mut c, "d", tile(0, 0), 1, Priority::Visible).evicted,
        1
    );
    assert_eq!(held(&c), ["a", "c", "d"]);
    assert!(c.peek("c", Access::Public, 0).is_some()); // peek does not refresh c
    let _ = c.tile_freshness(tile(0, 0), Access::Public, 0);
    put(&mut c, "e", tile(0, 0), 1, Priority::Visible);
    assert_eq!(held(&c), ["a", "d", "e"]);
    assert_eq!(c.stats().evictions, 2);
}

#[test]
fn byte_capacity_evicts_as_many_as_needed() {
    let mut c = small(100, 100);
    put(&mut c, "a", tile(0, 0), 40, Priority::Visible);
    put(&mut c, "b", tile(0, 0), 40, Priority::Visible);
    put(&mut c, "c", tile(0, 0), 20, Priority::Visible);
    assert_eq!(c.bytes(), 100);
    let out = put(&mut c, "d", tile(0, 0), 60, Priority::Visible);
    assert_eq!(out.evicted, 2);
    assert_eq!(held(&c), ["c", "d"]);
    assert_eq!(c.bytes(), 80);
}

#[test]
fn replacing_updates_bytes_and_moves_between_tiles() {
    let (t1, t2) = (tile(0, 0), tile(1, 0));
    let mut c = small(10, 100);
    put(&mut c, "a", t1, 70, Priority::Visible);
    put(&mut c, "b", t1, 10, Priority::Visible);
    c.insert_tile(t1, &["a", "b"], None, Access::Public, 0)
        .unwrap();
    c.insert_tile(t2, &[], None, Access::Public, 0).unwrap();
    c.set_visible(&[t1]);
    assert!(c.is_protected("a"));
    // Replacing in place: 70 → 90 bytes fits without evicting b.
    let out = put(&mut c, "a", t1, 90, Priority::Visible);
    assert_eq!(out.evicted, 0);
    assert_eq!((c.len(), c.bytes()), (2, 100));
    // Moving a to t2: its listing moves too, and it is no longer protected.
    let out = put(&mut c, "a", t2, 20, Priority::Prefetch);
    assert_eq!(out, InsertOutcome::default());
    assert_eq!((c.len(), c.bytes()), (2, 30));
    assert_eq!(c.peek("a", Access::Public, 0).unwrap().item.tile(), t2);
    assert!(!c.is_protected("a") && c.is_protected("b"));
    assert_eq!(
        c.protected,
        Load {
            items: 1,
            bytes: 10
        }
    );
    assert_eq!(c.tiles.peek(&t1).unwrap().ids.len(), 1);
    let mut seen = Vec::new();
    c.read_tile(t2, Access::Public, 0, |it, _, _| {
        seen.push(it.id().to_string())
    });
    assert_eq!(seen, ["a"]);
    assert_eq!(
        c.tile_freshness(t1, Access::Public, 0),
        TileFreshness::Fresh
    );
}

#[test]
fn prefetch_never_evicts_what_is_visible() {
    let (v, o) = (tile(0, 0), tile(5, 5));
    let mut c = small(3, 1000);
    put(&mut c, "v1", v, 1, Priority::Visible);
    put(&mut c, "v2", v, 1, Priority::Visible);
    put(&mut c, "u1", o, 1, Priority::Prefetch);
    c.set_visible(&[v]);
    // v1 is least recently used, but protected: u1 goes instead.
    let out = put(&mut c, "p1", o, 1, Priority::Prefetch);
    assert_eq!(
        out,
        InsertOutcome {
            evicted: 1,
            rejected: false
        }
    );
    assert_eq!(held(&c), ["p1", "v1", "v2"]);
    // Then p1, again not the visible ones.
    put(&mut c, "p2", o, 1, Priority::Prefetch);
    assert_eq!(held(&c), ["p2", "v1", "v2"]);
    // Only protected items left: a prefetch is refused and nothing changes.
    c.set_visible(&[v, o]);
    let stats = c.stats();
    let out = put(&mut c, "p3", o, 1, Priority::Prefetch);
    assert_eq!(
        out,
        InsertOutcome {
            evicted: 0,
            rejected: true
        }
    );
    assert_eq!(held(&c), ["p2", "v1", "v2"]);
    assert_eq!(c.stats().rejected, stats.rejected + 1);
    assert_eq!(c.stats().evictions, stats.evictions);
    // A visible insert must fit: it evicts the least recently used protected item.
    // Order now (LRU first): v1, v2 (promoted while skipped), then p2 (inserted after).
    let out = put(&mut c, "n", v, 1, Priority::Visible);
    assert_eq!(
        out,
        InsertOutcome {
            evicted: 1,
            rejected: false
        }
    );
    assert_eq!(held(&c), ["n", "p2", "v2"]);
}

#[test]
fn visible_insert_evicts_lru_protected_item_in_order() {
    let v = tile(0, 0);
    let mut c = small(2, 1000);
    put(&mut c, "v1", v, 1, Priority::Visible);
    put(&mut c, "v2", v, 1, Priority::Visible);
    c.set_visible(&[v]);
    c.get("v1", Access::Public, 0);
    put(&mut c, "v3", v, 1, Priority::Visible);
    assert_eq!(held(&c), ["v1", "v3"]);
}

/// Two levels of protection: unprotected items go first, then those of loading tiles, then
/// (for the view's own items only) those of visible tiles; a load never pushes out the
/// view, however long the view has been at rest.
#[test]
fn eviction_takes_unprotected_then_loading_then_visible_items() {
    let (v, l, u) = (tile(0, 0), tile(2, 0), tile(5, 5));
    let mut c = small(4, 1000);
    let load = |items, bytes| Load { items, bytes };
    // The view's items are the oldest (at rest), then a load's, then another item.
    put(&mut c, "v1", v, 1, Priority::Visible);
    put(&mut c, "v2", v, 2, Priority::Visible);
    put(&mut c, "l1", l, 10, Priority::Loading);
    put(&mut c, "u1", u, 100, Priority::Prefetch);
    c.set_visible(&[v]);
    c.set_loading(&[l, v]);
    assert_eq!(
        (c.protected, c.loading_protected),
        (load(2, 3), load(1, 10))
    );
    assert!(c.is_protected("v1") && c.is_protected("l1") && !c.is_protected("u1"));
    // A load's answer: the unprotected item goes, not the older protected ones.
    let out = put(&mut c, "l2", l, 20, Priority::Loading);
    assert_eq!((out.evicted, out.rejected), (1, false));
    assert_eq!(held(&c), ["l1", "l2", "v1", "v2"]);
    assert_eq!(c.loading_protected, load(2, 30));
    // Only protected items left: a prefetch is refused, nothing changed.
    let out = put(&mut c, "p", u, 1, Priority::Prefetch);
    assert!(out.rejected);
    assert_eq!(held(&c), ["l1", "l2", "v1", "v2"]);
    // Another load's answer pushes out the least recently used loading item (l1), though
    // the view's are older.
    let out = put(&mut c, "l3", l, 30, Priority::Loading);
    assert_eq!((out.evicted, out.rejected), (1, false));
    assert_eq!(held(&c), ["l2", "l3", "v1", "v2"]);
    assert_eq!(
        (c.protected, c.loading_protected),
        (load(2, 3), load(2, 50))
    );
    // So does the view's own answer: loading items before visible ones, though the view's
    // are the least recently used.
    c.get("l2", Access::Public, 0);
    c.get("l3", Access::Public, 0);
    let out = put(&mut c, "v3", v, 3, Priority::Visible);
    assert_eq!((out.evicted, out.rejected), (1, false));
    assert_eq!(held(&c), ["l3", "v1", "v2", "v3"]);
    assert_eq!(
        (c.protected, c.loading_protected),
        (load(3, 6), load(1, 30))
    );
    // A load that only the view's items could make room for is refused with nothing
    // changed (l3, unprotected now, is not evicted for nothing): the load fails.
    c.set_loading(&[]);
    let stats = c.stats();
    let out = put(&mut c, "big", u, 995, Priority::Loading);
    assert_eq!((out.evicted, out.rejected), (0, true));
    assert_eq!(held(&c), ["l3", "v1", "v2", "v3"]);
    assert_eq!(c.stats().rejected, stats.rejected + 1);
    assert_eq!(c.stats().evictions, stats.evictions);
    // The room the rest makes is taken.
    let out = put(&mut c, "big", u, 994, Priority::Loading);
    assert_eq!((out.evicted, out.rejected), (1, false));
    assert_eq!(held(&c), ["big", "v1", "v2", "v3"]);
    // All visible: a load is refused; the view's own items push out the least recently
    // used of its others.
    c.set_visible(&[v, u]);
    assert!(put(&mut c, "l4", l, 1, Priority::Loading).rejected);
    for id in ["v2", "big", "v3"] {
        c.get(id, Access::Public, 0);
    }
    let out = put(&mut c, "v4", v, 1, Priority::Visible);
    assert_eq!((out.evicted, out.rejected), (1, false));
    assert_eq!(held(&c), ["big", "v2", "v3", "v4"]);
    assert_eq!(
        (c.protected, c.loading_protected),
        (load(4, 1000), load(0, 0))
    );
}

#[test]
fn prefetch_refused_when_unprotected_items_could_not_make_room() {
    let (v, o) = (tile(0, 0), tile(5, 5));
    let mut c = small(10, 100);
    put(&mut c, "v", v, 80, Priority::Visible);
    put(&mut c, "u", o, 10, Priority::Visible);
    c.set_visible(&[v]);
    // Freeing u gives 20 bytes, not 30: refuse without evicting u.
    let out = put(&mut c, "p", o, 30, Priority::Prefetch);
    assert!(out.rejected);
    assert_eq!(held(&c), ["u", "v"]);
    // 20 bytes is enough once u goes.
    let out = put(&mut c, "p", o, 20, Priority::Prefetch);
    assert_eq!(
        out,
        InsertOutcome {
            evicted: 1,
            rejected: false
        }
    );
    assert_eq!(held(&c), ["p", "v"]);
    // Replacing a protected item by prefetch counts its own bytes as freed.
    let out = put(&mut c, "v", v, 80, Priority::Prefetch);
    assert!(!out.rejected && out.evicted == 0);
}

#[test]
fn get_above_tier_is_a_miss_without_reordering() {
    let mut c = small(2, 1000);
    let mut m = meta_in(tile(0, 0), 1);
    m.access = Access::Verified;
    c.insert("v", m, 0, 0, Priority::Visible).unwrap();
    put(&mut c, "p", tile(0, 0), 1, Priority::Visible);
    assert!(c.get("v", Access::Registered, 0).is_none());
    assert_eq!(c.stats().misses, 1);
    assert!(c.get("v", Access::Verified, 0).is_some());
    assert!(c.get("nope", Access::Agent, 0).is_none());
    let s = c.stats();
    assert_eq!((s.hits, s.misses), (1, 2));
}

#[test]
fn huge_times_and_ttls_saturate() {
    let mut c = small(10, 1000);
    let mut m = meta_in(tile(0, 0), 1);
    m.ttl_ms = Some(u64::MAX);
    c.insert("a", m, 0, u64::MAX - 1, Priority::Visible)
        .unwrap();
    assert!(c.get("a", Access::Public, u64::MAX - 1).is_some());
    c.insert_tile(tile(0, 0), &["a"], Some(u64::MAX), Access::Public, u64::MAX)
        .unwrap();
    assert_eq!(
        c.tile_freshness(tile(0, 0), Access::Public, u64::MAX),
        TileFreshness::Unknown
    );
}

#[test]
fn an_item_keeps_its_tile_and_tier_at_every_tier_and_the_deepest_zoom() {
    // The tile and the tier share one word in the item (`TileTier`): the largest tile
    // coordinates of the deepest data zoom and every tier come back as they went in.
    let config = CacheConfig {
        tile_zoom: 24,
        ..CacheConfig::default()
    };
    let mut c: ItemCache<()> = ItemCache::new(config).unwrap();
    let corners = [(-180.0, 85.0), (179.999_999, -85.051_128), (2.35, 48.85)];
    for (i, &(lon, lat)) in corners.iter().enumerate() {
        for access in Access::ALL {
            let id = format!("{i}-{}", access.rank());
            let meta = ItemMeta {
                lon,
                lat,
                class: "active".into(),
                access,
                ttl_ms: None,
                size_bytes: 10,
            };
            c.insert(&id, meta, (), 0, Priority::Visible).unwrap();
            let item = c.peek(&id, Access::Agent, 0).unwrap().item;
            assert_eq!(item.tile(), TileId::from_lon_lat(lon, lat, 24).unwrap());
            assert_eq!(item.access(), access);
            assert_eq!(
                item.point_tile(),
                TileId::from_lon_lat(lon, lat, 24).unwrap()
            );
            assert_eq!(c.class_of(item), "active");
        }
    }
    let far = c.peek("1-3", Access::Agent, 0).unwrap().item.tile();
    assert_eq!((far.x(), far.y()), ((1 << 24) - 1, (1 << 24) - 1));
}

/// `v` moved by `steps` representable values (towards +∞ for positive steps).
fn ulps(v: f64, steps: i64) -> f64 {
    let mut v = v;
    for _ in 0..steps.unsigned_abs() {
        v = if steps > 0 {
            v.next_up()
        } else {
            v.next_down()
        };
    }
    v
}

/// Points anywhere, and points on and a few ulps either side of tile edges at any zoom
/// (where a rounding difference would show), the poles, the Mercator limit and the
/// antimeridian.
fn point() -> impl proptest::strategy::Strategy<Value = (f64, f64)> {
    use crate::tile::{tiles_per_axis, TilePoint, MAX_LATITUDE, MAX_ZOOM};
    use proptest::prelude::*;
    let special = [
        -180.0,
        180.0,
        0.0,
        -0.0,
        90.0,
        -90.0,
        MAX_LATITUDE,
        -MAX_LATITUDE,
        ulps(180.0, -1),
        ulps(-180.0, 1),
        ulps(MAX_LATITUDE, 1),
        ulps(-MAX_LATITUDE, -1),
    ];
    let anywhere = (-180.0f64..=180.0, -90.0f64..=90.0);
    let edge = (0u8..=MAX_ZOOM)
        .prop_flat_map(|z| {
            let n = tiles_per_axis(z);
            (Just(z), 0..=n, 0..=n, -3i64..=3, -3i64..=3)
        })
        .prop_map(|(z, x, y, dx, dy)| {
            let p = TilePoint {
                x: f64::from(x),
                y: f64::from(y),
            };
            let (lon, lat) = crate::tile::unproject(p, z);
            (
                ulps(lon, dx).clamp(-180.0, 180.0),
                ulps(lat, dy).clamp(-90.0, 90.0),
            )
        });
    let specials = (
        proptest::sample::select(special.to_vec()),
        proptest::sample::select(special.to_vec()),
        -180.0f64..=180.0,
        any::<bool>(),
    )
        .prop_map(|(a, b, lon, on_lon)| {
            if on_lon {
                (a.clamp(-180.0, 180.0), b.clamp(-90.0, 90.0))
            } else {
                (lon, b.clamp(-90.0, 90.0))
            }
        });
    prop_oneof![anywhere, edge, specials]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4_000))]

    /// The cache keeps an item's position as its zoom-24 tile: the data tile derived from it
    /// is the one the position falls in at the data zoom (`TileId::from_lon_lat`), and every
    /// tile at every zoom contains it exactly when `TileId::contains_point` says the position
    /// lies in it (the tile the point falls in and its eight neighbours).
    #[test]
    fn the_zoom_24_tile_answers_as_the_position((lon, lat) in point(), dz in 0u8..=24) {
        use crate::tile::MAX_ZOOM;
        let config = CacheConfig { tile_zoom: dz, ..CacheConfig::default() };
        let mut c: ItemCache<()> = ItemCache::new(config).unwrap();
        let meta = ItemMeta {
            lon,
            lat,
            class: "active".into(),
            access: Access::Verified,
            ttl_ms: None,
            size_bytes: 10,
        };
        c.insert("a", meta, (), 0, Priority::Visible).unwrap();
        let item = c.peek("a", Access::Agent, 0).unwrap().item;
        proptest::prop_assert_eq!(Ok(item.tile()), TileId::from_lon_lat(lon, lat, dz));
        proptest::prop_assert_eq!(item.access(), Access::Verified);
        proptest::prop_assert_eq!(c.tile_of("a"), Some(item.tile()));
        for z in [dz, dz.saturating_sub(1), (dz + 1).min(24)] {
            let at = TileId::from_lon_lat(lon, lat, z).unwrap();
            for (dx, dy) in [(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1), (1, 1)] {
                if let Some(t) = at.offset(dx, dy) {
                    // A tile list's read keeps the items whose data tile is the list's.
                    proptest::prop_assert_eq!(item.place.lies_in(t), t == item.tile(), "{}", t);
                }
            }
        }
        for z in 0..=MAX_ZOOM {
            let at = TileId::from_lon_lat(lon, lat, z).unwrap();
            for (dx, dy) in [(0, 0), (-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)] {
                if let Some(t) = at.offset(dx, dy) {
                    proptest::prop_assert_eq!(
                        t.contains(item.point_tile()),
                        t.contains_point(lon, lat),
                        "{} at ({}, {})", t, lon, lat
                    );
                }
            }
        }
    }
}
