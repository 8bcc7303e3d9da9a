use super::*;

#[test]
fn defaults_and_ttl_for() {
    let c = CacheConfig::default();
    assert_eq!(c.tile_zoom, 14);
    assert_eq!(c.max_items, 50_000);
    assert_eq!(c.max_bytes, 32 * 1024 * 1024);
    assert_eq!(c.max_tiles, 65_536);
    assert_eq!(c.default_ttl_ms, 300_000);
    assert_eq!(c.stale_while_revalidate_ms, 0);
    assert_eq!(c.ttl_for("active", None), 300_000);
    assert_eq!(c.ttl_for("off_market", None), 14_400_000);
    assert_eq!(c.ttl_for("unlisted", None), 300_000);
    assert_eq!(c.ttl_for("off_market", Some(7)), 7);
    assert_eq!(c.tile_ttl(None), 300_000);
    let c = CacheConfig {
        tile_ttl_ms: Some(9),
        ..c
    };
    assert_eq!(c.tile_ttl(None), 9);
    assert_eq!(c.tile_ttl(Some(3)), 3);
    assert!(c.validate().is_ok());
}

#[test]
fn validate_names_field_value_and_range() {
    let base = CacheConfig::default;
    let msg = |c: CacheConfig| c.validate().unwrap_err().to_string();
    assert_eq!(
        msg(CacheConfig {
            max_items: 0,
            ..base()
        }),
        "cache config max_items must be at least 1, got 0"
    );
    assert_eq!(
        msg(CacheConfig {
            tile_zoom: 25,
            ..base()
        }),
        "cache config tile_zoom must be an integer in 0..=24, got 25"
    );
    assert_eq!(
        msg(CacheConfig {
            max_bytes: 0,
            ..base()
        }),
        "cache config max_bytes must be at least 1, got 0"
    );
    assert_eq!(
        msg(CacheConfig {
            max_tiles: 0,
            ..base()
        }),
        "cache config max_tiles must be at least 1, got 0"
    );
    assert_eq!(
        msg(CacheConfig {
            default_ttl_ms: 0,
            ..base()
        }),
        "cache config default_ttl_ms must be at least 1, got 0"
    );
    let mut c = base();
    c.class_ttl_ms.insert("sold".into(), 0);
    assert_eq!(
        msg(c),
        "cache config class_ttl_ms must be a map of class to a TTL of at least 1, got \"sold\": 0"
    );
    assert_eq!(
        msg(CacheConfig {
            tile_ttl_ms: Some(0),
            ..base()
        }),
        "cache config tile_ttl_ms must be None or at least 1, got Some(0)"
    );
    let e = ItemCache::<()>::new(CacheConfig {
        max_tiles: 0,
        ..base()
    })
    .unwrap_err();
    assert!(matches!(
        e,
        CacheError::InvalidConfig {
            field: "max_tiles",
            ..
        }
    ));
}

#[test]
fn class_ttls_default_to_5_min_and_4_h() {
    let mut c = small(10, 1000);
    let mut off = meta_in(tile(0, 0), 1);
    off.class = "off_market".into();
    let mut other = meta_in(tile(0, 0), 1);
    other.class = "pending".into();
    let mut server = meta_in(tile(0, 0), 1);
    server.class = "off_market".into();
    server.ttl_ms = Some(60_000);
    c.insert("act", meta_in(tile(0, 0), 1), 0, 0, Priority::Visible)
        .unwrap();
    c.insert("off", off, 0, 0, Priority::Visible).unwrap();
    c.insert("oth", other, 0, 0, Priority::Visible).unwrap();
    c.insert("srv", server, 0, 0, Priority::Visible).unwrap();
    let exp = |id| c.items.peek(id).unwrap().expires_at_ms();
    assert_eq!(exp("act"), 300_000);
    assert_eq!(exp("off"), 14_400_000);
    assert_eq!(exp("oth"), 300_000);
    assert_eq!(exp("srv"), 60_000);
    assert!(c.peek("act", Access::Public, 299_999).is_some());
    assert!(c.peek("act", Access::Public, 300_000).is_none());
    assert!(c.peek("off", Access::Public, 14_399_999).is_some());
    assert!(c.peek("off", Access::Public, 14_400_000).is_none());
}
