//! The cache's unit tests, one file per part of the cache, and its property tests against
//! a reference model (`properties.rs`).

mod classes;
mod config;
mod invalidate;
mod items;
mod properties;
mod tiles;

use super::*;
use crate::access::Access;
use crate::tile::unproject;

const Z: u8 = 14;

fn tile(x: u32, y: u32) -> TileId {
    TileId::new(Z, 2600 + x, 5700 + y).unwrap()
}

/// An item positioned at the centre of `t`.
fn meta_in(t: TileId, size_bytes: usize) -> ItemMeta {
    let (lon, lat) = unproject(t.centre(), t.z());
    ItemMeta {
        lon,
        lat,
        class: "active".into(),
        access: Access::Public,
        ttl_ms: None,
        size_bytes,
    }
}

fn small(max_items: usize, max_bytes: usize) -> ItemCache<u32> {
    ItemCache::new(CacheConfig {
        max_items,
        max_bytes,
        ..CacheConfig::default()
    })
    .unwrap()
}

fn put(c: &mut ItemCache<u32>, id: &str, t: TileId, size: usize, p: Priority) -> InsertOutcome {
    c.insert(id, meta_in(t, size), 0, 0, p).unwrap()
}

fn ids(v: &[&str]) -> Refresh {
    Refresh::Ids(v.iter().map(|s| s.to_string()).collect())
}

fn held(c: &ItemCache<u32>) -> Vec<String> {
    let mut v: Vec<String> = c.items.iter().map(|(k, _)| k.to_string()).collect();
    v.sort();
    v
}
