use super::*;
use crate::cache::bounds::MAX_LISTED_OUTSIDE;
use crate::tile::Bbox;

#[test]
fn tile_states_fresh_partial_and_unknown() {
    let t = tile(0, 0);
    let mut c = small(10, 1000);
    assert_eq!(
        c.tile_freshness(t, Access::Public, 0),
        TileFreshness::Unknown
    );
    for id in ["a", "b", "c", "d"] {
        put(&mut c, id, t, 1, Priority::Visible);
    }
    c.insert_tile(t, &["a", "b", "c", "d"], Some(1_000), Access::Public, 0)
        .unwrap();
    assert_eq!(
        c.tile_freshness(t, Access::Public, 999),
        TileFreshness::Fresh
    );
    assert!(c.tile_freshness(t, Access::Public, 0).is_showable());
    c.invalidate(Invalidate::Ids(&["b"]));
    assert_eq!(
        c.tile_freshness(t, Access::Public, 0),
        TileFreshness::Partial(ids(&["b"]))
    );
    assert!(!c.tile_freshness(t, Access::Public, 0).is_showable());
    c.invalidate(Invalidate::Ids(&["d"]));
    // Exactly half missing: still the ids.
    assert_eq!(
        c.tile_freshness(t, Access::Public, 0),
        TileFreshness::Partial(ids(&["b", "d"]))
    );
    c.invalidate(Invalidate::Ids(&["a"]));
    assert_eq!(
        c.tile_freshness(t, Access::Public, 0),
        TileFreshness::Partial(Refresh::Tile)
    );
    // Membership expiry without a window: Unknown at exactly 1 000.
    assert_eq!(
        c.tile_freshness(t, Access::Public, 1_000),
        TileFreshness::Unknown
    );
    // Other zooms are Unknown.
    assert_eq!(
        c.tile_freshness(t.parent().unwrap(), Access::Public, 0),
        TileFreshness::Unknown
    );
}

#[test]
fn evicted_or_expired_items_make_their_tile_partial() {
    let t = tile(0, 0);
    let mut c = small(2, 1000);
    put(&mut c, "a", t, 1, Priority::Visible);
    put(&mut c, "b", t, 1, Priority::Visible);
    let mut m = meta_in(t, 1);
    m.ttl_ms = Some(10);
    c.insert_tile(t, &["a", "b"], None, Access::Public, 0)
        .unwrap();
    assert_eq!(c.tile_freshness(t, Access::Public, 0), TileFreshness::Fresh);
    put(&mut c, "x", tile(3, 3), 1, Priority::Visible);
    assert_eq!(
        c.tile_freshness(t, Access::Public, 0),
        TileFreshness::Partial(ids(&["a"]))
    );
    c.insert("b", m, 0, 0, Priority::Visible).unwrap();
    assert_eq!(
        c.tile_freshness(t, Access::Public, 10),
        TileFreshness::Partial(Refresh::Tile)
    );
}

#[test]
fn tile_states_with_stale_while_revalidate() {
    let t = tile(0, 0);
    let mut c: ItemCache<u32> = ItemCache::new(CacheConfig {
        stale_while_revalidate_ms: 100,
        ..CacheConfig::default()
    })
    .unwrap();
    let mut short = meta_in(t, 1);
    short.ttl_ms = Some(500);
    c.insert("a", short.clone(), 0, 0, Priority::Visible)
        .unwrap();
    c.insert("b", meta_in(t, 1), 0, 0, Priority::Visible)
        .unwrap();
    c.insert_tile(t, &["a", "b"], Some(1_000), Access::Public, 0)
        .unwrap();
    assert_eq!(
        c.tile_freshness(t, Access::Public, 499),
        TileFreshness::Fresh
    );
    assert_eq!(
        c.tile_freshness(t, Access::Public, 500),
        TileFreshness::Stale(ids(&["a"]))
    );
    assert!(c.tile_freshness(t, Access::Public, 599).is_showable());
    assert_eq!(
        c.tile_freshness(t, Access::Public, 600),
        TileFreshness::Partial(ids(&["a"]))
    );
    c.insert("a", short, 0, 600, Priority::Visible).unwrap(); // refetched
    assert_eq!(
        c.tile_freshness(t, Access::Public, 999),
        TileFreshness::Fresh
    );
    assert_eq!(
        c.tile_freshness(t, Access::Public, 1_000),
        TileFreshness::Stale(Refresh::Tile)
    );
    assert_eq!(
        c.tile_freshness(t, Access::Public, 1_099),
        TileFreshness::Stale(Refresh::Tile)
    );
    assert_eq!(
        c.tile_freshness(t, Access::Public, 1_100),
        TileFreshness::Unknown
    );
    // Membership stale and an item missing: refetch the tile, even for one id of two.
    c.invalidate(Invalidate::Ids(&["b"]));
    assert_eq!(
        c.tile_freshness(t, Access::Public, 1_050),
        TileFreshness::Partial(Refresh::Tile)
    );
}

#[test]
fn tile_lists_and_tiers() {
    let t = tile(0, 0);
    let mut c = small(10, 1000);
    put(&mut c, "pub", t, 1, Priority::Visible);
    let mut agent = meta_in(t, 1);
    agent.access = Access::Agent;
    c.insert("agt", agent, 0, 0, Priority::Visible).unwrap();
    // A verified list cannot contain the agent item: it is left out.
    c.insert_tile(t, &["pub", "agt", "pub"], None, Access::Verified, 0)
        .unwrap();
    assert_eq!(c.tiles.peek(&t).unwrap().ids.len(), 1);
    assert_eq!(c.tile_freshness(t, Access::Public, 0), TileFreshness::Fresh);
    assert_eq!(
        c.tile_freshness(t, Access::Verified, 0),
        TileFreshness::Fresh
    );
    // An agent caller fetches it again whole, and is shown what it lists meanwhile.
    assert_eq!(
        c.tile_freshness(t, Access::Agent, 0),
        TileFreshness::Partial(Refresh::Tile)
    );
    let mut seen = Vec::new();
    c.read_tile(t, Access::Agent, 0, |it, _, _| {
        seen.push(it.id().to_string())
    });
    assert_eq!(seen, ["pub"]);
    // An agent list: a public caller ignores the agent item, even when it is stale.
    c.insert_tile(t, &["pub", "agt"], None, Access::Agent, 0)
        .unwrap();
    assert_eq!(c.tile_freshness(t, Access::Agent, 0), TileFreshness::Fresh);
    seen.clear();
    c.read_tile(t, Access::Public, 0, |it, _, _| {
        seen.push(it.id().to_string())
    });
    assert_eq!(seen, ["pub"]);
    seen.clear();
    c.read_tile(t, Access::Agent, 0, |it, _, _| {
        seen.push(it.id().to_string())
    });
    assert_eq!(seen, ["pub", "agt"]);
    assert_eq!(c.stats().hits, 4);
}

#[test]
fn tile_index_is_bounded_and_keeps_visible_tiles() {
    let mut c: ItemCache<u32> = ItemCache::new(CacheConfig {
        max_tiles: 2,
        ..CacheConfig::default()
    })
    .unwrap();
    let (a, b, d) = (tile(0, 0), tile(1, 0), tile(2, 0));
    c.insert_tile(a, &[], None, Access::Public, 0).unwrap();
    c.insert_tile(b, &[], None, Access::Public, 0).unwrap();
    c.insert_tile(d, &[], None, Access::Public, 0).unwrap();
    assert_eq!(
        c.tile_freshness(a, Access::Public, 0),
        TileFreshness::Unknown
    );
    assert_eq!(c.stats().tiles, 2);
    // Reading b makes d the least recently used tile entry...
    c.read_tile(b, Access::Public, 0, |_, _, _| {});
    c.insert_tile(a, &[], None, Access::Public, 0).unwrap();
    assert_eq!(
        c.tile_freshness(d, Access::Public, 0),
        TileFreshness::Unknown
    );
    assert_eq!(c.tile_freshness(b, Access::Public, 0), TileFreshness::Fresh);
    // ...but a visible entry outlives a less recent invisible one.
    c.set_visible(&[b]);
    c.insert_tile(d, &[], None, Access::Public, 0).unwrap();
    assert_eq!(c.tile_freshness(b, Access::Public, 0), TileFreshness::Fresh);
    assert_eq!(
        c.tile_freshness(a, Access::Public, 0),
        TileFreshness::Unknown
    );
    assert_eq!(c.stats().tiles, 2);
}

#[test]
fn coarse_tiles_split_onto_data_tiles_by_position() {
    let z12 = tile(0, 0).ancestor(12).unwrap();
    let kids = z12.descendants(Z).unwrap();
    assert_eq!(kids.len(), 16);
    let (k0, k5) = (kids[0], kids[5]);
    let outside = tile(40, 40);
    let mut c = small(10, 1000);
    put(&mut c, "a", k0, 1, Priority::Visible);
    put(&mut c, "b", k5, 1, Priority::Visible);
    put(&mut c, "c", k5, 1, Priority::Visible);
    put(&mut c, "far", outside, 1, Priority::Visible);
    c.insert_tile(z12, &["a", "b", "c", "far"], None, Access::Public, 0)
        .unwrap();
    assert_eq!(c.stats().tiles, 16);
    let listed = |c: &ItemCache<u32>, t: TileId| -> Vec<String> {
        c.tiles
            .peek(&t)
            .unwrap()
            .ids
            .keys(&|s| c.items.item(s).map(|i| &i.id))
            .map(|k| k.unwrap().to_string())
            .collect()
    };
    assert_eq!(listed(&c, k0), ["a"]);
    assert_eq!(listed(&c, k5), ["b", "c"]);
    assert_eq!(listed(&c, kids[15]), Vec::<String>::new());
    assert_eq!(
        c.tile_freshness(outside, Access::Public, 0),
        TileFreshness::Unknown
    );
    for k in &kids {
        assert_eq!(
            c.tile_freshness(*k, Access::Public, 0),
            TileFreshness::Fresh
        );
    }
    // A listed id that is not held: no descendant is complete.
    c.insert_tile(z12, &["a", "lost"], None, Access::Public, 0)
        .unwrap();
    for k in &kids {
        assert_eq!(
            c.tile_freshness(*k, Access::Public, 0),
            TileFreshness::Partial(Refresh::Tile)
        );
    }
    // A data-zoom tile records its list as given.
    c.insert_tile(k0, &["a", "lost"], None, Access::Public, 0)
        .unwrap();
    assert_eq!(
        c.tile_freshness(k0, Access::Public, 0),
        TileFreshness::Partial(ids(&["lost"]))
    );
}

#[test]
fn membership_zoom_limits() {
    let mut c = small(10, 1000);
    let fine = TileId::new(15, 0, 0).unwrap();
    let e = c
        .insert_tile(fine, &[], None, Access::Public, 0)
        .unwrap_err();
    assert_eq!(
        e,
        CacheError::TooFine {
            tile: fine,
            tile_zoom: 14
        }
    );
    assert_eq!(
        e.to_string(),
        "tile 15/0/0 is finer than the cache's data zoom 14: membership tiles must have zoom 6..=14"
    );
    let coarse = TileId::new(5, 0, 0).unwrap();
    let e = c
        .insert_tile(coarse, &[], None, Access::Public, 0)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "tile 5/0/0 is more than 8 zoom levels coarser than the cache's data zoom 14: \
         membership tiles must have zoom 6..=14"
    );
    let e = c
        .insert_tile(tile(0, 0), &["ok", ""], None, Access::Public, 0)
        .unwrap_err();
    assert!(matches!(e, CacheError::InvalidItem { .. }));
    assert_eq!(c.stats().tiles, 0, "errors change nothing");
    // Exactly 8 levels: 65 536 data tiles, all known-empty.
    c.insert_tile(TileId::new(6, 0, 0).unwrap(), &[], None, Access::Public, 0)
        .unwrap();
    assert_eq!(c.stats().tiles, 65_536);
    assert_eq!(
        c.tile_freshness(TileId::new(14, 255, 255).unwrap(), Access::Public, 0),
        TileFreshness::Fresh
    );
}

#[test]
fn membership_ttl_defaults_and_overrides() {
    let t = tile(0, 0);
    let mut c: ItemCache<u32> = ItemCache::new(CacheConfig {
        tile_ttl_ms: Some(2_000),
        ..CacheConfig::default()
    })
    .unwrap();
    c.insert_tile(t, &[], None, Access::Public, 100).unwrap();
    assert_eq!(
        c.tile_freshness(t, Access::Public, 2_099),
        TileFreshness::Fresh
    );
    assert_eq!(
        c.tile_freshness(t, Access::Public, 2_100),
        TileFreshness::Unknown
    );
    c.insert_tile(t, &[], Some(50), Access::Public, 100)
        .unwrap();
    assert_eq!(
        c.tile_freshness(t, Access::Public, 149),
        TileFreshness::Fresh
    );
    assert_eq!(
        c.tile_freshness(t, Access::Public, 150),
        TileFreshness::Unknown
    );
    let mut d = small(10, 10);
    d.insert_tile(t, &[], None, Access::Public, 0).unwrap();
    assert_eq!(
        d.tile_freshness(t, Access::Public, 299_999),
        TileFreshness::Fresh
    );
    assert_eq!(
        d.tile_freshness(t, Access::Public, 300_000),
        TileFreshness::Unknown
    );
}

#[test]
fn read_tile_counts_flags_and_refreshes() {
    let t = tile(0, 0);
    let mut c: ItemCache<u32> = ItemCache::new(CacheConfig {
        max_items: 3,
        stale_while_revalidate_ms: 100,
        ..CacheConfig::default()
    })
    .unwrap();
    let with_ttl = |ttl| ItemMeta {
        ttl_ms: Some(ttl),
        ..meta_in(t, 1)
    };
    c.insert("old", with_ttl(10), 1, 0, Priority::Visible)
        .unwrap();
    c.insert("stale", with_ttl(150), 2, 0, Priority::Visible)
        .unwrap();
    c.insert("fresh", with_ttl(1_000), 3, 0, Priority::Visible)
        .unwrap();
    c.insert_tile(
        t,
        &["fresh", "stale", "old", "never"],
        None,
        Access::Public,
        0,
    )
    .unwrap();
    let mut seen = Vec::new();
    let state = c.read_tile(t, Access::Public, 200, |it, _, stale| {
        seen.push((*it.payload(), stale))
    });
    assert_eq!(state, TileFreshness::Partial(ids(&["old", "never"])));
    assert_eq!(seen, [(3, false), (2, true)]);
    let s = c.stats();
    assert_eq!(
        (s.hits, s.stale_hits, s.misses, s.expirations),
        (1, 1, 2, 1)
    );
    assert!(!c.contains("old"));
    // Recency: the read touched "fresh" then "stale"; a get on "stale" after x keeps
    // "fresh" the LRU, so y (the fourth item) evicts it.
    put(&mut c, "x", tile(3, 3), 1, Priority::Visible);
    c.get("stale", Access::Public, 200);
    put(&mut c, "y", tile(3, 3), 1, Priority::Visible);
    assert!(!c.contains("fresh") && c.contains("stale"));
    // An unknown tile shows and counts nothing.
    let before = c.stats();
    let state = c.read_tile(tile(9, 9), Access::Public, 0, |_, _, _| {
        panic!("nothing to show")
    });
    assert_eq!(state, TileFreshness::Unknown);
    assert_eq!(c.stats(), before);
}

#[test]
fn read_tile_refreshes_item_recency() {
    let t = tile(0, 0);
    let mut c = small(3, 1000);
    put(&mut c, "a", t, 1, Priority::Visible);
    put(&mut c, "b", tile(1, 1), 1, Priority::Visible);
    put(&mut c, "c", tile(1, 1), 1, Priority::Visible);
    c.insert_tile(t, &["a"], None, Access::Public, 0).unwrap();
    c.read_tile(t, Access::Public, 0, |_, _, _| {});
    put(&mut c, "d", tile(1, 1), 1, Priority::Visible);
    assert_eq!(held(&c), ["a", "c", "d"]);
}

/// Bounds: a data tile outside is fresh and empty for every tier, at any time, and reads
/// nothing; one the backend answered with items anyway (bounds set too tight) is the
/// index's like any other, so it expires and is refetched; a bad bound is refused.
#[test]
fn tiles_outside_the_bounds_hold_nothing_unless_the_backend_listed_items() {
    let inside = tile(0, 0);
    let (west, north) = unproject(inside.centre(), Z);
    let bounds = Bbox::new(west - 0.001, north - 0.001, west, north).unwrap();
    let mut c: ItemCache<u32> = ItemCache::new(CacheConfig {
        bounds,
        ..CacheConfig::default()
    })
    .unwrap();
    let (outside, listed) = (tile(3, 0), tile(0, 3));
    assert!(c.has_bounds());
    assert!(!c.outside_bounds(inside) && c.outside_bounds(outside));
    assert_eq!(
        c.tile_freshness(inside, Access::Public, 0),
        TileFreshness::Unknown
    );
    for (caller, now) in [(Access::Public, 0), (Access::Agent, u64::MAX / 2)] {
        assert_eq!(c.tile_freshness(outside, caller, now), TileFreshness::Fresh);
    }
    let mut n = 0;
    assert_eq!(
        c.read_tile(outside, Access::Public, 0, |_, _, _| n += 1),
        TileFreshness::Fresh
    );
    assert_eq!(n, 0);
    // Not a data-zoom tile: not this rule's.
    assert!(!c.outside_bounds(outside.parent().unwrap()));

    put(&mut c, "x", listed, 1, Priority::Visible);
    c.insert_tile(listed, &["x"], Some(1_000), Access::Public, 0)
        .unwrap();
    assert!(!c.outside_bounds(listed));
    let mut n = 0;
    c.read_tile(listed, Access::Public, 0, |_, _, _| n += 1);
    assert_eq!(n, 1);
    assert!(!c
        .tile_freshness(listed, Access::Public, 2_000)
        .is_showable());
    // A tile the backend listed items in stays the index's when its list goes: invalidated,
    // dropped with a lower tier, or after a coarse tile's split.
    c.invalidate(crate::cache::Invalidate::Tiles(&[listed]));
    assert!(!c.outside_bounds(listed));
    assert_eq!(
        c.tile_freshness(listed, Access::Public, 0),
        TileFreshness::Unknown
    );
    let (also, parent) = (tile(1, 3), tile(1, 3).parent().unwrap());
    put(&mut c, "y", also, 2, Priority::Visible);
    c.insert_tile(parent, &["y"], Some(1_000), Access::Registered, 0)
        .unwrap();
    c.drop_above(Access::Public);
    assert!(!c.outside_bounds(also));
    assert_eq!(
        c.tile_freshness(also, Access::Public, 0),
        TileFreshness::Unknown
    );
    // An empty list outside stays the bounds' (fresh for ever).
    c.insert_tile(outside, &[], Some(1_000), Access::Public, 0)
        .unwrap();
    assert_eq!(
        c.tile_freshness(outside, Access::Public, 5_000),
        TileFreshness::Fresh
    );

    let bad = CacheConfig {
        bounds: Bbox {
            south: 50.0,
            ..bounds
        },
        ..CacheConfig::default()
    };
    assert_eq!(
        ItemCache::<u32>::new(bad).unwrap_err().to_string(),
        "cache config bounds.south must be a latitude in -90..=90, south not above north, got 50"
    );
    assert!(!small(1, 1).has_bounds());
}

/// A backend that lists items in more data tiles outside the extent than the cache keeps
/// track of: the extent is not the data's, so it is set aside (every tile asked for, as
/// without one) rather than the set of such tiles growing with every answer.
#[test]
fn an_extent_the_data_plainly_lies_outside_is_set_aside() {
    let inside = tile(0, 0);
    let (west, north) = unproject(inside.centre(), Z);
    let bounds = Bbox::new(west - 0.001, north - 0.001, west, north).unwrap();
    let mut c: ItemCache<u32> = ItemCache::new(CacheConfig {
        max_tiles: 16,
        ..CacheConfig::default()
    })
    .unwrap();
    assert_eq!(c.adopt_bounds(Some(&bounds)), Ok(true));
    let far = tile(200, 200);
    assert!(c.outside_bounds(far));
    // Lists naming an item (not held yet, so wherever it lies) in tiles all around, each
    // outside the extent.
    let mut n = 0;
    'outer: for y in 2..100 {
        for x in 2..100 {
            c.insert_tile(tile(x, y), &["x"], Some(1_000), Access::Public, 0)
                .unwrap();
            n += 1;
            if n > MAX_LISTED_OUTSIDE {
                break 'outer;
            }
        }
    }
    assert!(!c.has_bounds());
    assert!(!c.outside_bounds(far));
    assert_eq!(
        c.tile_freshness(far, Access::Public, 0),
        TileFreshness::Unknown
    );
    // For good: the extent declared again is set aside too.
    assert_eq!(c.adopt_bounds(Some(&bounds)), Ok(false));
    assert!(!c.outside_bounds(far));
}

#[test]
fn an_adopted_extent_keeps_the_tiles_already_listed_with_items_outside_it() {
    let mut c: ItemCache<u32> = ItemCache::new(CacheConfig::default()).unwrap();
    let (inside, listed, empty) = (tile(0, 0), tile(0, 3), tile(3, 0));
    put(&mut c, "x", listed, 1, Priority::Visible);
    c.insert_tile(listed, &["x"], Some(1_000), Access::Public, 0)
        .unwrap();
    let (west, north) = unproject(inside.centre(), Z);
    let bounds = Bbox::new(west - 0.001, north - 0.001, west, north).unwrap();
    assert_eq!(c.adopt_bounds(Some(&bounds)), Ok(true));
    assert_eq!(
        c.adopt_bounds(Some(&bounds)),
        Ok(false),
        "the same extent again"
    );
    assert!(c.outside_bounds(empty) && !c.outside_bounds(listed));
    c.invalidate(crate::cache::Invalidate::All);
    assert_eq!(
        c.tile_freshness(listed, Access::Public, 0),
        TileFreshness::Unknown
    );
    assert_eq!(
        c.tile_freshness(empty, Access::Public, 0),
        TileFreshness::Fresh
    );
}

#[test]
fn an_item_is_read_only_in_the_tile_it_lies_in() {
    let (a, b) = (tile(0, 0), tile(1, 0));
    let mut c = small(10, 1000);
    put(&mut c, "h", a, 1, Priority::Visible);
    put(&mut c, "b1", b, 1, Priority::Visible);
    // A server lists "h" under both tiles: it is b's by mistake, and not kept there.
    c.insert_tile(a, &["h"], None, Access::Public, 0).unwrap();
    c.insert_tile(b, &["h", "b1"], None, Access::Public, 0)
        .unwrap();
    let read = |c: &mut ItemCache<u32>, t| {
        let mut seen = Vec::new();
        c.read_tile(t, Access::Public, 0, |it, _, _| {
            seen.push(it.id().to_string())
        });
        seen
    };
    assert_eq!(read(&mut c, a), ["h"]);
    assert_eq!(read(&mut c, b), ["b1"]);
    assert_eq!(c.tile_freshness(b, Access::Public, 0), TileFreshness::Fresh);
    // Listed before it is held, then arriving at a's position: b does not show it either.
    c.insert_tile(b, &["b1", "late"], None, Access::Public, 0)
        .unwrap();
    assert_eq!(
        c.tile_freshness(b, Access::Public, 0),
        TileFreshness::Partial(ids(&["late"]))
    );
    put(&mut c, "late", a, 1, Priority::Visible);
    assert_eq!(read(&mut c, b), ["b1"]);
    assert_eq!(c.tile_freshness(b, Access::Public, 0), TileFreshness::Fresh);
    // An item that moved (a new version at b's position) leaves a's list.
    put(&mut c, "h", b, 1, Priority::Visible);
    assert!(read(&mut c, a).is_empty());
}

#[test]
fn held_lists_are_as_long_as_their_ids() {
    // A list is held as long as its tile: its vector has no room it does not use (a
    // collected list kept the buffer of the ids with their tiles, two to three times its
    // length; a split list the slack of its pushes).
    let t = tile(0, 0);
    let mut c = small(100, 100_000);
    let names: Vec<String> = (0..37).map(|i| format!("h{i}")).collect();
    for id in &names {
        put(&mut c, id, t, 1, Priority::Visible);
    }
    let listed: Vec<&str> = names.iter().map(String::as_str).collect();
    c.insert_tile(t, &listed, None, Access::Public, 0).unwrap();
    let e = c.tiles.peek(&t).unwrap();
    assert_eq!((e.ids.len(), e.ids.capacity()), (37, 37));
    // The same ids listed by a coarser tile: split onto `t`, the one data tile holding them.
    let coarse = t.parent().unwrap().parent().unwrap();
    c.insert_tile(coarse, &listed, None, Access::Public, 0)
        .unwrap();
    let e = c.tiles.peek(&t).unwrap();
    assert_eq!((e.ids.len(), e.ids.capacity()), (37, 37));
}

#[test]
fn a_list_names_held_items_by_slot_and_the_others_by_key() {
    let (t, u) = (tile(0, 0), tile(1, 0));
    let mut c = small(3, 100_000);
    for id in ["a", "b", "c"] {
        put(&mut c, id, t, 1, Priority::Visible);
    }
    c.insert_tile(t, &["a", "b", "c", "never"], None, Access::Public, 0)
        .unwrap();
    let by_key = |c: &ItemCache<u32>| c.tiles.peek(&t).unwrap().ids.by_key();
    assert_eq!(by_key(&c), (1, 1), "only `never` is named by its key");
    // Evicted (`a`, the least recently used), invalidated (`b`): named by their keys.
    put(&mut c, "d", u, 1, Priority::Visible);
    c.invalidate(Invalidate::Ids(&["b"]));
    assert_eq!(by_key(&c).0, 3);
    assert_eq!(
        c.tile_freshness(t, Access::Public, 0),
        TileFreshness::Partial(Refresh::Tile)
    );
    // Replaced in place, `c` keeps its slot; fetched again, `a` and `b` are held again: a
    // read names them by their slots and frees the keys it no longer needs.
    put(&mut c, "c", t, 2, Priority::Visible);
    c.invalidate(Invalidate::Ids(&["d"]));
    put(&mut c, "a", t, 1, Priority::Visible);
    put(&mut c, "b", t, 1, Priority::Visible);
    assert_eq!(by_key(&c).0, 3);
    let mut shown = Vec::new();
    c.read_tile(t, Access::Public, 0, |it, _, _| {
        shown.push(it.id().to_string())
    });
    assert_eq!(shown, ["a", "b", "c"]);
    assert_eq!(by_key(&c), (1, 1));
    assert_eq!(
        c.tile_freshness(t, Access::Public, 0),
        TileFreshness::Partial(ids(&["never"]))
    );
    c.forget_ids(&["never"]);
    assert_eq!(by_key(&c), (0, 0), "no keys, no allocation");
    assert_eq!(c.tile_freshness(t, Access::Public, 0), TileFreshness::Fresh);
    assert_eq!(c.check_lists(), Ok(()));
}

/// A tile's new list that leaves out an item the old one named, lying there, at a tier
/// that sees it: the backend moved, deleted or raised it, so its copy goes (it would be
/// served by id until its TTL). Items the new list could not name (above its tier), items
/// lying in another tile and items it names stay.
#[test]
fn a_list_that_leaves_out_an_item_it_could_name_forgets_the_item() {
    let (t, u) = (tile(0, 0), tile(1, 0));
    let mut c = small(10, 1000);
    for id in ["a", "b", "gone"] {
        put(&mut c, id, t, 1, Priority::Visible);
    }
    let agent = ItemMeta {
        access: Access::Agent,
        ..meta_in(t, 1)
    };
    c.insert("secret", agent, 0, 0, Priority::Visible).unwrap();
    c.insert_tile(t, &["a", "b", "gone", "secret"], None, Access::Agent, 0)
        .unwrap();
    // Fetched again at public: "gone" left out (it could have named it); "secret" too,
    // which it could not.
    c.insert_tile(t, &["a", "b"], None, Access::Public, 1)
        .unwrap();
    assert_eq!(held(&c), ["a", "b", "secret"]);
    assert!(c.get("gone", Access::Public, 1).is_none());
    assert!(c.get("secret", Access::Agent, 1).is_some());
    // "b" moved to `u` (its new copy lies there): `t`'s list without it leaves it be.
    put(&mut c, "b", u, 1, Priority::Visible);
    c.insert_tile(t, &["a"], None, Access::Public, 2).unwrap();
    assert_eq!(held(&c), ["a", "b", "secret"]);
    // A coarse tile's list leaves "a" out: gone too.
    c.insert_tile(t.parent().unwrap(), &["b"], None, Access::Public, 3)
        .unwrap();
    assert_eq!(held(&c), ["b", "secret"]);
}

/// An item removed so leaves every list: a neighbour's list that still names it by key (it
/// lay there before it was pushed out, and came back lying in the refreshed tile) does
/// not wait for it (it would turn partial, and the client call it a tile it cannot keep).
#[test]
fn an_item_a_list_leaves_out_leaves_the_other_lists_naming_it() {
    let (t, u) = (tile(0, 0), tile(1, 0));
    let mut c = small(10, 1000);
    for id in ["a", "b", "x"] {
        put(&mut c, id, u, 1, Priority::Visible);
    }
    put(&mut c, "c", t, 1, Priority::Visible);
    c.insert_tile(u, &["a", "b", "x"], None, Access::Public, 0)
        .unwrap();
    c.insert_tile(t, &["c"], None, Access::Public, 0).unwrap();
    // x pushed out: u names it by key and waits for it.
    c.invalidate(Invalidate::Ids(&["x"]));
    assert_eq!(
        c.tile_freshness(u, Access::Public, 0),
        TileFreshness::Partial(ids(&["x"]))
    );
    // Back by id, lying in t now: u does not wait for it; t's refresh names it.
    put(&mut c, "x", t, 1, Priority::Visible);
    assert_eq!(c.tile_freshness(u, Access::Public, 1), TileFreshness::Fresh);
    c.insert_tile(t, &["c", "x"], None, Access::Public, 1)
        .unwrap();
    // It moved on: t's next list leaves it out, and u stays fresh.
    c.insert_tile(t, &["c"], None, Access::Public, 2).unwrap();
    assert_eq!(held(&c), ["a", "b", "c"]);
    assert_eq!(c.tile_freshness(u, Access::Public, 2), TileFreshness::Fresh);
}
