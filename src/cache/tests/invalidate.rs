use super::*;

#[test]
fn drop_above_forgets_everything_above_the_tier() {
    let (t, u) = (tile(0, 0), tile(1, 0));
    let mut c = small(10, 1000);
    for (id, access) in [
        ("p", Access::Public),
        ("r", Access::Registered),
        ("a", Access::Agent),
    ] {
        let mut m = meta_in(t, 10);
        m.access = access;
        c.insert(id, m, 0, 0, Priority::Visible).unwrap();
    }
    c.insert_tile(t, &["p", "r", "a"], None, Access::Agent, 0)
        .unwrap();
    c.insert_tile(u, &["p", "r"], None, Access::Registered, 0)
        .unwrap();
    assert_eq!(c.drop_above(Access::Registered), 1);
    assert_eq!(held(&c), ["p", "r"]);
    assert_eq!(c.bytes(), 20);
    assert!(c.tiles.peek(&t).is_none(), "agent list dropped");
    assert_eq!(
        c.tile_freshness(u, Access::Registered, 0),
        TileFreshness::Fresh
    );
    // A public-tier list that names an item reclassified to registered.
    c.insert_tile(t, &["p", "r"], None, Access::Public, 0)
        .unwrap();
    let mut m = meta_in(t, 10);
    m.access = Access::Registered;
    c.insert("p", m, 0, 0, Priority::Visible).unwrap();
    assert_eq!(c.drop_above(Access::Public), 2);
    assert!(c.is_empty());
    assert!(c.tiles.peek(&u).is_none());
    assert!(
        c.tiles.peek(&t).unwrap().ids.is_empty(),
        "ids stripped from lists"
    );
    assert_eq!(c.tile_freshness(t, Access::Public, 0), TileFreshness::Fresh);
}

#[test]
fn invalidate_variants() {
    let (t, u) = (tile(0, 0), tile(1, 0));
    let mut c = small(10, 1000);
    for id in ["a", "b"] {
        put(&mut c, id, t, 5, Priority::Visible);
    }
    for id in ["c", "d"] {
        put(&mut c, id, u, 5, Priority::Visible);
    }
    let mut off = meta_in(u, 5);
    off.class = "off_market".into();
    c.insert("e", off, 0, 0, Priority::Visible).unwrap();
    c.insert_tile(t, &["a", "b"], None, Access::Public, 0)
        .unwrap();
    c.insert_tile(u, &["c", "d", "e"], None, Access::Public, 0)
        .unwrap();

    assert_eq!(c.invalidate(Invalidate::Ids(&["a", "a", "zz"])), 1);
    assert_eq!(
        c.tile_freshness(t, Access::Public, 0),
        TileFreshness::Partial(ids(&["a"]))
    );
    assert_eq!(c.invalidate(Invalidate::Class("off_market")), 1);
    assert_eq!(
        c.tile_freshness(u, Access::Public, 0),
        TileFreshness::Partial(ids(&["e"]))
    );
    // A finer tile stands for its data tile.
    let finer = t.children().unwrap()[3];
    assert_eq!(c.invalidate(Invalidate::Tiles(&[finer])), 1);
    assert_eq!(
        c.tile_freshness(t, Access::Public, 0),
        TileFreshness::Unknown
    );
    assert_eq!(held(&c), ["c", "d"]);
    // A coarser tile stands for the held data tiles inside it.
    assert_eq!(
        c.invalidate(Invalidate::Tiles(&[u.ancestor(10).unwrap()])),
        2
    );
    assert_eq!(
        c.tile_freshness(u, Access::Public, 0),
        TileFreshness::Unknown
    );
    assert!(c.is_empty() && c.bytes() == 0);

    put(&mut c, "f", t, 5, Priority::Visible);
    c.insert_tile(t, &["f"], None, Access::Public, 0).unwrap();
    c.set_visible(&[t]);
    assert_eq!(c.invalidate(Invalidate::All), 1);
    let s = c.stats();
    assert_eq!((s.entries, s.bytes, s.tiles), (0, 0, 0));
    assert_eq!(c.protected, Load::default());
    assert_eq!(s.evictions + s.expirations, 0, "invalidation is neither");
    // The visible set survives: a new item there is protected.
    put(&mut c, "g", t, 5, Priority::Visible);
    assert!(c.is_protected("g"));
}

#[test]
fn purge_expired_removes_items_and_lists() {
    let t = tile(0, 0);
    let mut c: ItemCache<u32> = ItemCache::new(CacheConfig {
        stale_while_revalidate_ms: 10,
        ..CacheConfig::default()
    })
    .unwrap();
    let with_ttl = |ttl| ItemMeta {
        ttl_ms: Some(ttl),
        ..meta_in(t, 3)
    };
    c.insert("a", with_ttl(100), 0, 0, Priority::Visible)
        .unwrap();
    c.insert("b", with_ttl(200), 0, 0, Priority::Visible)
        .unwrap();
    c.insert_tile(t, &["a", "b"], Some(150), Access::Public, 0)
        .unwrap();
    assert_eq!(c.purge_expired(109), 0);
    assert_eq!(c.purge_expired(110), 1);
    assert_eq!(
        c.tile_freshness(t, Access::Public, 159),
        TileFreshness::Partial(Refresh::Tile)
    );
    assert_eq!(c.purge_expired(160), 0);
    assert_eq!(c.stats().tiles, 0);
    assert_eq!(c.purge_expired(u64::MAX), 1);
    let s = c.stats();
    assert_eq!((s.expirations, s.entries, s.bytes), (2, 0, 0));
}
