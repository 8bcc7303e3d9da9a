//! Core micro-benchmarks (divan). `make bench` runs them; figures go to docs/BENCHMARKS.md.
//!
//! Peers in the same run, so ratios hold on a noisy machine:
//! - `cover_viewport` vs `cover_brute_force` (every tile of the bbox's enclosing block,
//!   checked one by one against the tile bounds); `cover_and_ring1` adds the ring;
//! - `cache_get_hit` vs `hashmap_get` (a plain `HashMap<String, _>` lookup, the floor);
//! - `planner_round` (one `set_viewport` with 10k cached items) vs `read_only_round` (the
//!   same read of the view without planning);
//! - `cache_evict_listed_10k`: 10k inserts into a full cache of 10k listed items, each
//!   evicting one (its tile's list then names it by its key), in lists of 25 or 2,500;
//! - `cache_refresh_lists_10k`: every list of 10k listed items fetched again, each without
//!   its first item (which the cache forgets) against unchanged.

use std::collections::HashMap;
use std::hint::black_box;

use tilewarm::access::Access;
use tilewarm::cache::{CacheConfig, ItemCache, ItemMeta, Priority};
use tilewarm::client::{Client, ClientConfig};
use tilewarm::origin::{Origin, OriginItem};
use tilewarm::planner::Viewport;
use tilewarm::tile::{cover, ring_around, TileId, TilePoint};

fn main() {
    divan::main();
}

const Z: u8 = 14;

/// A 1280 x 800 px map at zoom 14.5 over Seattle: about 3.5 x 2.2 data tiles.
fn typical_view(dx: f64) -> Viewport {
    view_at(dx, 0.0)
}

fn view_at(dx: f64, dy: f64) -> Viewport {
    let c = tilewarm::tile::project(-122.3321, 47.6062, Z).unwrap();
    let (w, h) = (
        1280.0 / 256.0 / 2f64.powf(0.5),
        800.0 / 256.0 / 2f64.powf(0.5),
    );
    let (west, north) = tilewarm::tile::unproject(
        TilePoint {
            x: c.x + dx - w / 2.0,
            y: c.y + dy - h / 2.0,
        },
        Z,
    );
    let (east, south) = tilewarm::tile::unproject(
        TilePoint {
            x: c.x + dx + w / 2.0,
            y: c.y + dy + h / 2.0,
        },
        Z,
    );
    Viewport::new(west, south, east, north, 14.5).unwrap()
}

#[divan::bench]
fn cover_viewport() -> usize {
    let vp = typical_view(0.0);
    cover(black_box(&vp.bbox), Z, 1024).unwrap().len()
}

#[divan::bench]
fn cover_and_ring1() -> usize {
    let vp = typical_view(0.0);
    let tiles = cover(black_box(&vp.bbox), Z, 1024).unwrap();
    tiles.len() + ring_around(&tiles, 1).unwrap().len()
}

#[divan::bench]
fn cover_brute_force() -> usize {
    let vp = typical_view(0.0);
    let b = black_box(vp.bbox);
    let nw = TileId::from_lon_lat(b.west, b.north, Z).unwrap();
    let se = TileId::from_lon_lat(b.east, b.south, Z).unwrap();
    let mut n = 0;
    for y in nw.y().saturating_sub(1)..=se.y() + 1 {
        for x in nw.x().saturating_sub(1)..=se.x() + 1 {
            let t = TileId::new(Z, x, y).unwrap().bounds();
            if t.west < b.east && t.east > b.west && t.south < b.north && t.north > b.south {
                n += 1;
            }
        }
    }
    n
}

fn items(n: usize) -> Vec<OriginItem<String>> {
    let c = tilewarm::tile::project(-122.3321, 47.6062, Z).unwrap();
    (0..n)
        .map(|i| {
            // Spread over a 20 x 20 tile block with a deterministic scatter.
            let fx = ((i * 7919) % 2000) as f64 / 100.0 - 10.0;
            let fy = ((i * 104_729) % 2000) as f64 / 100.0 - 10.0;
            let (lon, lat) = tilewarm::tile::unproject(
                TilePoint {
                    x: c.x + fx,
                    y: c.y + fy,
                },
                Z,
            );
            OriginItem {
                id: format!("home-{i}"),
                lon,
                lat,
                class: if i % 3 == 0 {
                    "active".into()
                } else {
                    "off_market".into()
                },
                access: Access::Public,
                ttl: None,
                data: format!("{{\"value\":{}}}", 300_000 + i),
            }
        })
        .collect()
}

fn filled_cache(n: usize) -> ItemCache<String> {
    let mut cache = ItemCache::new(CacheConfig::default()).unwrap();
    for it in items(n) {
        let meta = ItemMeta {
            lon: it.lon,
            lat: it.lat,
            class: it.class,
            access: it.access,
            ttl_ms: None,
            size_bytes: 128,
        };
        cache
            .insert(&it.id, meta, it.data, 0, Priority::Visible)
            .unwrap();
    }
    cache
}

#[divan::bench]
fn cache_insert_10k(bencher: divan::Bencher) {
    let all = items(10_000);
    bencher.bench_local(|| {
        let mut cache = ItemCache::new(CacheConfig::default()).unwrap();
        for it in &all {
            let meta = ItemMeta {
                lon: it.lon,
                lat: it.lat,
                class: it.class.clone(),
                access: it.access,
                ttl_ms: None,
                size_bytes: 128,
            };
            cache
                .insert(&it.id, meta, (), 0, Priority::Visible)
                .unwrap();
        }
        cache.len()
    });
}

/// 10k items spread over a `side` x `side` block of data tiles, every tile listed: a
/// cache full at 10k items, and 10k other items that each evict one of them.
fn listed_and_more(side: usize) -> (ItemCache<()>, Vec<OriginItem<String>>) {
    let config = CacheConfig {
        max_items: 10_000,
        ..CacheConfig::default()
    };
    let mut cache = ItemCache::new(config).unwrap();
    let c = tilewarm::tile::project(-122.3321, 47.6062, Z).unwrap();
    let mut all: Vec<OriginItem<String>> = items(20_000);
    for (i, it) in all.iter_mut().enumerate() {
        let (x, y) = ((i * 7919) % (side * 100), (i * 104_729) % (side * 100));
        let p = TilePoint {
            x: c.x + x as f64 / 100.0,
            y: c.y + y as f64 / 100.0,
        };
        (it.lon, it.lat) = tilewarm::tile::unproject(p, Z);
    }
    let more = all.split_off(10_000);
    let mut lists: HashMap<TileId, Vec<&str>> = HashMap::new();
    for it in &all {
        insert(&mut cache, it);
        let t = TileId::from_lon_lat(it.lon, it.lat, Z).unwrap();
        lists.entry(t).or_default().push(&it.id);
    }
    for (t, ids) in lists {
        cache.insert_tile(t, &ids, None, Access::Public, 0).unwrap();
    }
    (cache, more)
}

fn insert(cache: &mut ItemCache<()>, it: &OriginItem<String>) {
    let meta = ItemMeta {
        lon: it.lon,
        lat: it.lat,
        class: it.class.clone(),
        access: it.access,
        ttl_ms: None,
        size_bytes: 128,
    };
    cache
        .insert(&it.id, meta, (), 0, Priority::Visible)
        .unwrap();
}

/// The tile lists of `cache`, as an answer would bring them again.
fn lists_of(cache: &mut ItemCache<()>) -> Vec<(TileId, Vec<String>)> {
    let tiles: Vec<TileId> = cache.cached_tiles().collect();
    let mut lists = Vec::with_capacity(tiles.len());
    for t in tiles {
        let mut ids = Vec::new();
        cache.read_tile(t, Access::Public, 0, |it, _, _| {
            ids.push(it.id().to_string())
        });
        lists.push((t, ids));
    }
    lists
}

/// Every tile list of 10k listed items fetched again: unchanged, or each without its first
/// item (which the cache then forgets: the backend moved or deleted it).
#[divan::bench(args = [(20, false), (20, true), (2, false), (2, true)])]
fn cache_refresh_lists_10k(bencher: divan::Bencher, (side, one_gone): (usize, bool)) {
    bencher
        .with_inputs(|| {
            let (mut cache, _) = listed_and_more(side);
            let lists = lists_of(&mut cache);
            (cache, lists)
        })
        .bench_local_values(|(mut cache, lists)| {
            for (t, ids) in &lists {
                let skip = usize::from(one_gone);
                let ids: Vec<&str> = ids.iter().skip(skip).map(String::as_str).collect();
                cache
                    .insert_tile(*t, &ids, None, Access::Public, 1)
                    .unwrap();
            }
            cache.len()
        });
}

#[divan::bench(args = [20, 2])]
fn cache_evict_listed_10k(bencher: divan::Bencher, side: usize) {
    bencher
        .with_inputs(|| listed_and_more(side))
        .bench_local_values(|(mut cache, more)| {
            for it in &more {
                insert(&mut cache, it);
            }
            cache.stats().evictions
        });
}

#[divan::bench]
fn cache_get_hit(bencher: divan::Bencher) {
    let mut cache = filled_cache(10_000);
    let mut i = 0usize;
    bencher.bench_local(|| {
        i = (i + 7919) % 10_000;
        let id = format!("home-{i}");
        cache
            .get(black_box(&id), Access::Public, 1)
            .map(|l| l.item.payload().len())
    });
}

#[divan::bench]
fn hashmap_get(bencher: divan::Bencher) {
    let map: HashMap<String, String> = items(10_000)
        .into_iter()
        .map(|it| (it.id, it.data))
        .collect();
    let mut i = 0usize;
    bencher.bench_local(|| {
        i = (i + 7919) % 10_000;
        let id = format!("home-{i}");
        map.get(black_box(&id)).map(String::len)
    });
}

/// A client whose cache holds the 10k items around the view, every tile list known:
/// viewports are set across the whole block and every request answered.
fn warmed_client() -> Client<String> {
    let origin = Origin::new(items(10_000)).unwrap();
    let mut client: Client<String> = Client::new(ClientConfig::default()).unwrap();
    let mut now = 0;
    for dy in (-9..=9).step_by(3) {
        for dx in (-9..=9).step_by(3) {
            now += 1_000;
            client.set_viewport(view_at(dx as f64, dy as f64), now, |_, _| {});
            while let Some(s) = client.poll_request(now) {
                let r = origin.answer(&s.request, None);
                client.on_response(s.id, r, now);
            }
        }
    }
    assert!(client.cache().len() > 5_000, "{}", client.cache().len());
    client
}

#[divan::bench]
fn planner_round(bencher: divan::Bencher) {
    let mut client = warmed_client();
    let mut k = 0u64;
    bencher.bench_local(|| {
        k += 1;
        let vp = typical_view((k % 3) as f64 * 0.25);
        let mut n = 0;
        client.set_viewport(vp, 50_000 + k, |_, _| n += 1);
        n
    });
}

#[divan::bench]
fn read_only_round(bencher: divan::Bencher) {
    let mut client = warmed_client();
    let _ = client.set_viewport(typical_view(0.0), 50_000, |_, _| {});
    bencher.bench_local(|| {
        let mut n = 0;
        client.view_items(50_001, |_, _| n += 1);
        n
    });
}
