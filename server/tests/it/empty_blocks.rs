//! Empty blocks (`empty_tiles.rs`): a zoomed-out request over land with nothing on it
//! stores one key per coarse tile it found empty to `public`, not one per data tile, so
//! `--max-empty-tiles` counts blocks; junk still stops at the cap, and nothing above
//! `public` leaks through how it is stored.

use std::sync::atomic::Ordering::Relaxed;

use tilewarm::access::Access;
use tilewarm::protocol::Invalidation;
use tilewarm::tile::TileId;

use crate::common::{config, redis_available, token_for, Http, RedisServer};
use crate::{request, serving};

/// Far north Pacific, where the test data has nothing: zoom-11 tiles, 64 data tiles each.
fn sea(i: u32) -> TileId {
    TileId::new(11, 2 * i, 40).unwrap()
}

/// Every key under `tw:v4:` of the given kind (`t` tile lists, `e` empty blocks).
async fn keys(redis: &RedisServer, kind: &str) -> Vec<String> {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("tw:v4:{kind}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    keys.sort();
    keys
}

fn with_redis(redis: &RedisServer, max_empty_tiles: usize) -> crate::common::Config {
    crate::common::Config {
        redis: Some(redis.url()),
        redis_timeout_ms: 1_000,
        max_empty_tiles,
        warmup_ring: 0,
        caller_rate: 0,
        ..config()
    }
}

/// Four requests of two zoom-11 tiles each over distinct empty areas (512 data tiles),
/// then the same four again within `--empty-tile-ttl-s`: with `--max-empty-tiles` 64,
/// the second pass is answered from the tier. Before, the first pass stored 64 of its 512
/// empty lists and the second asked the origin four times again (a paid call each for an
/// upstream origin).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zoomed_out_requests_over_empty_land_are_asked_once_within_the_empty_ttl() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let s = serving(Vec::new(), with_redis(&redis, 64)).await;
    let bodies: Vec<String> = (0..4)
        .map(|i| request(&[sea(2 * i), sea(2 * i + 1)], &[], Access::Public))
        .collect();
    for body in &bodies {
        let r = Http::new().ok(&s, body).await;
        assert!(r.tiles.iter().all(|t| t.ids.is_empty()));
    }
    let first = s.app.metrics.origin_calls();
    assert_eq!(first, 4);
    for body in &bodies {
        Http::new().ok(&s, body).await;
    }
    assert_eq!(
        s.app.metrics.origin_calls() - first,
        0,
        "origin calls for the same four requests again"
    );
    // One key per zoom-11 tile, none per data tile.
    let blocks = keys(&redis, "e").await;
    assert_eq!(blocks.len(), 8, "{blocks:?}");
    assert!(keys(&redis, "t").await.is_empty());
    assert_eq!(s.app.empty_tiles.alive(tilewarm_server::tier::now_ms()), 8);
    // Warm-up counts a data tile under a block as held (it does not ask for it again).
    let under = sea(0).descendants(14).unwrap();
    let beside = TileId::new(14, sea(0).x() * 8 + 8, sea(0).y() * 8).unwrap();
    let mut asked = under.clone();
    asked.push(beside);
    let held = s.app.tier.has_tiles(&asked).await.unwrap();
    assert!(held[..64].iter().all(|&h| h) && !held[64], "{held:?}");
    s.shutdown().await;
}

/// A zoom-11 tile with one item in one corner data tile: its 63 empty data tiles are
/// stored as 9 keys (3 zoom-12 blocks, 3 zoom-13 blocks, 3 data tiles' lists), the full
/// one as its list (before: 63 keys, the cap permitting).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sparse_coarse_tile_is_stored_as_few_blocks_and_answered_from_them() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let z11 = sea(0);
    let corner = TileId::new(14, z11.x() * 8, z11.y() * 8).unwrap();
    let items = crate::items_in_tile(corner, &[(Access::Public, 1)]);
    let s = serving(items, with_redis(&redis, 64)).await;
    let body = request(&[z11], &[], Access::Public);
    let r = Http::new().ok(&s, &body).await;
    assert_eq!(r.tiles[0].ids.len(), 1);
    // Its list and the 3 empty data tiles beside it; 3 zoom-13 and 3 zoom-12 blocks.
    assert_eq!(keys(&redis, "t").await.len(), 4);
    assert!(keys(&redis, "t")
        .await
        .contains(&format!("tw:v4:t:{corner}")));
    let blocks = keys(&redis, "e").await;
    assert_eq!(blocks.len(), 6, "{blocks:?}");
    assert_eq!(blocks.iter().filter(|k| k.contains(":e:12/")).count(), 3);
    let again = Http::new().ok(&s, &body).await;
    assert_eq!(s.app.metrics.origin_calls(), 1);
    assert_eq!(again.tiles[0].ids, r.tiles[0].ids);
    s.shutdown().await;
}

/// A flood of distinct junk still stops at the cap: empty zoom-11 tiles (a block each) and
/// scattered data tiles (a list each) share `--max-empty-tiles`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_junk_flood_of_distinct_tiles_stops_at_the_cap() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let s = serving(Vec::new(), with_redis(&redis, 5)).await;
    for i in 0..12 {
        Http::new()
            .ok(&s, &request(&[sea(i)], &[], Access::Public))
            .await;
    }
    assert_eq!(keys(&redis, "e").await.len(), 5);
    for i in 0..12 {
        let scattered = TileId::new(14, 1000 + 3 * i, 900).unwrap();
        Http::new()
            .ok(&s, &request(&[scattered], &[], Access::Public))
            .await;
    }
    assert!(keys(&redis, "t").await.is_empty(), "past the cap");
    assert_eq!(s.app.metrics.origin_calls(), 24);
    // Told on /metrics: 5 blocks stored, 7 blocks and 12 lists past the cap.
    let text = Http::new().metrics(&s.url()).await;
    for line in [
        "tilewarm_empty_alive 5",
        "tilewarm_empty_blocks_total 5",
        "tilewarm_empty_not_stored_total 19",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
    s.shutdown().await;
}

/// A coarse tile whose only items are above `public` is empty to `public`: stored as a
/// block, like one with nothing (its `ttl` the same short one), and an `agent` caller is
/// answered its items from that block with no origin call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_of_items_above_public_answers_an_agent_and_hides_them_from_public() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let hidden = sea(0);
    let corner = TileId::new(14, hidden.x() * 8 + 3, hidden.y() * 8 + 5).unwrap();
    let items = crate::items_in_tile(corner, &[(Access::Agent, 2)]);
    let s = serving(items, with_redis(&redis, 64)).await;
    let body = request(&[hidden, sea(1)], &[], Access::Public);
    let r = Http::new().ok(&s, &body).await;
    assert!(r.tiles.iter().all(|t| t.ids.is_empty()));
    assert_eq!(
        r.tiles[0].ttl, r.tiles[1].ttl,
        "hidden items show in the ttl"
    );
    assert_eq!(keys(&redis, "e").await.len(), 2);
    assert!(keys(&redis, "t").await.is_empty());
    let r = Http::new().ok(&s, &body).await;
    assert_eq!(r.tiles[0].ttl, r.tiles[1].ttl);
    let agent = Http::with_token(Some(token_for(Access::Agent)));
    let r = agent.ok(&s, &request(&[hidden], &[], Access::Agent)).await;
    assert_eq!(r.tiles[0].ids.len(), 2);
    let r = agent.ok(&s, &request(&[corner], &[], Access::Agent)).await;
    assert_eq!(r.tiles[0].ids.len(), 2);
    assert_eq!(s.app.metrics.origin_calls(), 1);
    assert_eq!(s.app.metrics.cache.tile_misses.load(Relaxed), 128);
    s.shutdown().await;
}

/// An invalidation of a tile inside a block (a data tile, a finer one, a coarse one, one
/// far coarser: its `SCAN`), or of an id it holds, drops the block: the next request
/// asks the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_inside_a_block_drops_it() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let z11 = sea(0);
    let corner = TileId::new(14, z11.x() * 8 + 3, z11.y() * 8 + 5).unwrap();
    let items = crate::items_in_tile(corner, &[(Access::Agent, 1)]);
    let id = items[0].id.clone();
    let s = serving(items, with_redis(&redis, 64)).await;
    let body = request(&[z11], &[], Access::Public);
    let invalidations = [
        Invalidation {
            tiles: vec![TileId::new(14, z11.x() * 8 + 7, z11.y() * 8 + 7).unwrap()],
            ..Invalidation::default()
        },
        Invalidation {
            tiles: vec![TileId::new(16, z11.x() * 32 + 1, z11.y() * 32 + 30).unwrap()],
            ..Invalidation::default()
        },
        Invalidation {
            tiles: vec![z11.ancestor(10).unwrap()],
            ..Invalidation::default()
        },
        Invalidation {
            tiles: vec![z11.ancestor(6).unwrap()],
            ..Invalidation::default()
        },
        Invalidation {
            ids: vec![id],
            ..Invalidation::default()
        },
    ];
    for (n, inv) in invalidations.iter().enumerate() {
        Http::new().ok(&s, &body).await;
        assert_eq!(keys(&redis, "e").await.len(), 1, "{inv:?}");
        Http::new().ok(&s, &body).await;
        assert_eq!(s.app.metrics.origin_calls(), n as u64 + 1, "{inv:?}");
        tilewarm_server::invalidate::invalidate(&s.app, inv)
            .await
            .unwrap();
        assert!(keys(&redis, "e").await.is_empty(), "{inv:?}");
    }
    s.shutdown().await;
}
