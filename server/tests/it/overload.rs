//! Bounded work per request (issue 15): the data-tile cap before any origin call, single
//! flight per data tile across concurrent requests, the origin bound while Redis is down,
//! and empty tile lists kept short-lived and capped in Redis.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tilewarm::access::Access;
use tilewarm::tile::TileId;

use crate::common::{config, redis_available, server, Config, Http, RedisServer};
use crate::{digest, origin, request};

/// `n` occupied data tiles of the test city.
fn occupied(n: usize) -> Vec<TileId> {
    origin(42, 5_000)
        .occupied_tiles(14)
        .into_iter()
        .map(|(t, _)| t)
        .take(n)
        .collect()
}

/// A Redis URL nobody answers on: the server starts with its tier marked down.
fn dead_redis() -> String {
    let mut r = RedisServer::start();
    r.kill();
    r.url()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_max_data_tiles_is_a_400_before_the_tier_or_the_origin() {
    let s = server(Config {
        warmup_ring: 0,
        ..config()
    })
    .await;
    let d = occupied(1)[0];
    let z12 = d.ancestor(12).unwrap();
    // 17 z12 tiles of 4x4 data tiles: 272 > 256, every one within --split-levels.
    let tiles: Vec<TileId> = (0..17)
        .map(|i| TileId::new(12, z12.x() + i, z12.y()).unwrap())
        .collect();
    let r = Http::new()
        .batch(&s, &request(&tiles, &[], Access::Public))
        .await;
    let m = r.error(400, "bad_request");
    assert!(m.contains("at most 256 are allowed"), "{m}");
    let metrics = &s.app.metrics;
    assert_eq!(metrics.origin_calls(), 0);
    assert_eq!(
        metrics.cache.tile_misses.load(Relaxed),
        0,
        "the tier was read"
    );
    // 16 of them (256 data tiles) are answered.
    Http::new()
        .ok(&s, &request(&tiles[..16], &[], Access::Public))
        .await;
    assert_eq!(metrics.origin_calls(), 1);
}

/// Sends `body` `n` times at once; the answers' statuses and decoded bodies.
async fn together(s: &Arc<tilewarm_server::Server>, body: &str, n: usize) -> Vec<(u16, String)> {
    let http = Arc::new(Http::new());
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (http, s, body) = (http.clone(), s.clone(), body.to_string());
            tokio::spawn(async move { http.batch(&s, &body).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        out.push((r.status, r.text()));
    }
    out
}

async fn one_call_for_sixteen_identical_requests(redis: Option<String>) {
    let tiles = occupied(4);
    let s = Arc::new(
        server(Config {
            redis,
            redis_timeout_ms: 200,
            origin_latency_ms: 1_000,
            warmup_ring: 0,
            caller_rate: 0,
            ..config()
        })
        .await,
    );
    let body = request(&tiles, &[], Access::Public);
    let answers = together(&s, &body, 16).await;
    // Sixteen requests missed the same four data tiles; one origin call fetched them.
    assert_eq!(s.app.metrics.cache.tile_misses.load(Relaxed), 16 * 4);
    assert_eq!(s.app.metrics.origin_calls_request.load(Relaxed), 1);
    assert!(s.app.single_flight.is_empty());
    let want = Http::new().ok(&s, &body).await;
    for (status, text) in &answers {
        assert_eq!(*status, 200, "{text}");
        let got = tilewarm::protocol::decode_response(
            text.as_bytes(),
            &tilewarm::protocol::Limits::default(),
        )
        .unwrap();
        // The followers' answers are the leader's: the same as a lone request's.
        assert_eq!(digest(&got), digest(&want));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_identical_requests_ask_the_origin_once_per_missing_tile() {
    one_call_for_sixteen_identical_requests(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_sixteen_identical_requests_still_ask_once_per_tile() {
    if !redis_available() {
        return;
    }
    one_call_for_sixteen_identical_requests(Some(dead_redis())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_origin_calls_are_bounded_and_the_rest_is_a_503() {
    if !redis_available() {
        return;
    }
    let tiles = occupied(8);
    let s = Arc::new(
        server(Config {
            redis: Some(dead_redis()),
            redis_timeout_ms: 200,
            degraded_origin_calls: 1,
            origin_latency_ms: 1_000,
            warmup_ring: 0,
            caller_rate: 0,
            ..config()
        })
        .await,
    );
    assert_eq!(s.app.tier.redis_degraded(), Some(true));
    let http = Arc::new(Http::new());
    let tasks: Vec<_> = tiles
        .iter()
        .map(|t| {
            let (http, s, body) = (http.clone(), s.clone(), request(&[*t], &[], Access::Public));
            tokio::spawn(async move { http.batch(&s, &body).await })
        })
        .collect();
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            200 => ok += 1,
            503 => {
                let m = r.error(503, "overloaded");
                assert!(m.contains("cache tier is down"), "{m}");
                assert_eq!(r.headers.get("retry-after").unwrap(), "1");
                refused += 1;
            }
            other => panic!("status {other}: {}", r.text()),
        }
    }
    assert!(ok >= 1 && refused >= 1, "{ok} answered, {refused} refused");
    assert_eq!(s.app.metrics.origin_calls_request.load(Relaxed), ok);
    assert_eq!(s.app.metrics.degraded_refusals.load(Relaxed), refused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_tile_lists_live_briefly_in_redis_and_stop_at_the_cap() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let s = server(Config {
        redis: Some(redis.url()),
        redis_timeout_ms: 500,
        empty_tile_ttl_s: 30,
        max_empty_tiles: 3,
        warmup_ring: 0,
        ..config()
    })
    .await;
    // Ten tiles in the far north Pacific, where the city has nothing, and one it has.
    let empty: Vec<TileId> = (0..10).map(|x| TileId::new(14, x, 100).unwrap()).collect();
    let full = occupied(1)[0];
    let mut tiles = empty.clone();
    tiles.push(full);
    let r = Http::new()
        .ok(&s, &request(&tiles, &[], Access::Public))
        .await;
    assert_eq!(r.tiles.len(), 11);
    assert!(r.tiles[..10].iter().all(|t| t.ids.is_empty()));
    assert!(!r.tiles[10].ids.is_empty());

    let keys = tilewarm_server::stored::Keys::new("tw:");
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut stored = Vec::new();
    for t in &empty {
        let ttl: i64 = redis::cmd("TTL")
            .arg(keys.tile(*t))
            .query_async(&mut conn)
            .await
            .unwrap();
        if ttl != -2 {
            stored.push(ttl);
        }
    }
    assert_eq!(stored.len(), 3, "empty lists stored: {stored:?}");
    assert!(
        stored.iter().all(|&ttl| (1..=30).contains(&ttl)),
        "{stored:?}"
    );
    let ttl: i64 = redis::cmd("TTL")
        .arg(keys.tile(full))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 30, "a list with items keeps the tile TTL, got {ttl}");
    s.shutdown().await;
}
