//! Bounded work per request (issue 15): the data-tile cap before any origin call, single
//! flight per data tile across concurrent requests, the origin bound while Redis is down,
//! and empty tile lists kept short-lived and capped in Redis.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tilewarm::access::Access;
use tilewarm::tile::TileId;

use crate::common::{config, eventually, redis_available, server, Config, Http, RedisServer};
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
    let z11 = d.ancestor(11).unwrap();
    // 17 z11 tiles of 8x8 data tiles: 1088 > 1024, every one within --split-levels.
    let tiles: Vec<TileId> = (0..17)
        .map(|i| TileId::new(11, z11.x() + i, z11.y()).unwrap())
        .collect();
    let r = Http::new()
        .batch(&s, &request(&tiles, &[], Access::Public))
        .await;
    let m = r.error(400, "bad_request");
    assert!(m.contains("at most 1024 are allowed"), "{m}");
    let metrics = &s.app.metrics;
    assert_eq!(metrics.origin_calls(), 0);
    assert_eq!(
        metrics.cache.tile_misses.load(Relaxed),
        0,
        "the tier was read"
    );
    // 16 of them (1024 data tiles, the package's largest default request) are answered.
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

/// An origin over `city` whose calls at `agent` say they arrived (a permit on `reached`)
/// and wait for `gate` (one permit each).
struct GatedAtAgent {
    city: tilewarm::origin::Origin<tilewarm::protocol::RawData>,
    reached: Arc<tokio::sync::Semaphore>,
    gate: Arc<tokio::sync::Semaphore>,
    asked_at: Arc<std::sync::Mutex<Vec<Access>>>,
}

impl GatedAtAgent {
    /// Over `items`, no call arrived nor let through yet.
    fn new(items: Vec<tilewarm::protocol::Item<tilewarm::protocol::RawData>>) -> Self {
        GatedAtAgent {
            city: tilewarm::origin::Origin::new(items).unwrap(),
            reached: Arc::new(tokio::sync::Semaphore::new(0)),
            gate: Arc::new(tokio::sync::Semaphore::new(0)),
            asked_at: Arc::default(),
        }
    }
}

impl crate::Scripted for GatedAtAgent {
    fn answer<'a>(
        &'a self,
        request: &'a tilewarm::protocol::BatchRequest,
    ) -> tilewarm_server::origin::OriginFuture<
        'a,
        Result<
            tilewarm::protocol::BatchResponse<tilewarm::protocol::RawData>,
            tilewarm_server::origin::OriginFailure,
        >,
    > {
        self.asked_at.lock().unwrap().push(request.access);
        Box::pin(async move {
            if request.access == Access::Agent {
                self.reached.add_permits(1);
                self.gate.acquire().await.unwrap().forget();
            }
            Ok(self.city.answer(request, Some(60)))
        })
    }
}

/// While Redis is down, a public request for a tile over `--max-tile-items` at `agent`
/// whose call again at `public` the degraded bound refuses (`--degraded-origin-calls`
/// taken) asks the origin nothing at `public`: the tile is left out `overloaded`, and
/// `tilewarm_origin_tiles_asked_at_caller_tier_total` does not count it (it did, counted
/// before the bound was tried).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_again_at_the_callers_tier_the_degraded_bound_refuses_is_not_counted_as_asked() {
    if !redis_available() {
        return;
    }
    let t = TileId::from_lon_lat(-122.33, 47.6, 14).unwrap();
    let items = crate::items_in_tile(t, &[(Access::Public, 4), (Access::Agent, 30)]);
    let backend = GatedAtAgent::new(items);
    let (reached, gate, asked_at) = (
        Arc::clone(&backend.reached),
        Arc::clone(&backend.gate),
        Arc::clone(&backend.asked_at),
    );
    let c = Config {
        redis: Some(dead_redis()),
        redis_timeout_ms: 200,
        degraded_origin_calls: 1,
        warmup_ring: 0,
        max_tile_items: 10,
        caller_rate: 0,
        ..config()
    };
    let s = tilewarm_server::start_with_origin(c, Box::new(crate::Test(backend)), Arc::default())
        .await
        .unwrap();
    let s = Arc::new(s);
    assert_eq!(s.app.tier.redis_degraded(), Some(true));
    let public = Http::with_token(Some(crate::common::token_for(Access::Public)));
    let reply = tokio::spawn({
        let s = Arc::clone(&s);
        let body = request(&[t], &[], Access::Public);
        async move { public.batch(&s, &body).await }
    });
    // The call at `agent` holds the one degraded call; the test queues for it (the
    // semaphore is fair: it goes to the test, not to the call again at `public`).
    reached.acquire().await.unwrap().forget();
    let held = s.app.degraded_calls.acquire();
    tokio::pin!(held);
    let queued = tokio::time::timeout(std::time::Duration::from_millis(10), &mut held).await;
    assert!(queued.is_err(), "the call at agent holds it");
    gate.add_permits(1);
    let permit = held.await.unwrap();
    let r = reply.await.unwrap();
    drop(permit);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["code"], "overloaded", "{v}");
    assert_eq!(v["error"]["tiles"], serde_json::json!([t.to_string()]));
    assert_eq!(*asked_at.lock().unwrap(), [Access::Agent]);
    let m = &s.app.metrics;
    assert_eq!(m.degraded_refusals.load(Relaxed), 1);
    assert_eq!(m.tiles_asked_at_caller_tier.load(Relaxed), 0);
}

/// A request for a tile another request's origin call is fetching follows that call across
/// a database change elsewhere (the PostGIS feed's, which names the tiles its rows were and
/// are in, `Reach::Tiles`): the change cannot have touched the flight's answer. Before,
/// every change named ids and let go of every flight, so on a busy table requests for the
/// same tile each made their own call. A change of the tile, or of one next to it, still
/// lets go of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flight_is_followed_across_a_database_change_elsewhere() {
    use tilewarm_server::invalidate::{invalidate_with, Invalidation, Reach};
    let t = TileId::from_lon_lat(-122.33, 47.6, 14).unwrap();
    let u = t.offset(20, 0).unwrap();
    let mut items = crate::items_in_tile(t, &[(Access::Public, 4)]);
    items.extend(crate::items_in_tile(u, &[(Access::Public, 3)]));
    let backend = GatedAtAgent::new(items);
    let (reached, gate, asked_at) = (
        Arc::clone(&backend.reached),
        Arc::clone(&backend.gate),
        Arc::clone(&backend.asked_at),
    );
    let c = Config {
        warmup_ring: 0,
        caller_rate: 0,
        ..config()
    };
    let s = tilewarm_server::start_with_origin(c, Box::new(crate::Test(backend)), Arc::default())
        .await
        .unwrap();
    let s = Arc::new(s);
    let ask = |tile: TileId| {
        let s = Arc::clone(&s);
        let body = request(&[tile], &[], Access::Public);
        tokio::spawn(async move { Http::new().batch(&s, &body).await })
    };
    let asked = || asked_at.lock().unwrap().len();
    let change = |ids: &[&str], tiles: Vec<TileId>| Invalidation {
        ids: ids.iter().map(|i| i.to_string()).collect(),
        tiles,
        ..Invalidation::default()
    };
    // For each tile: the first request's call is out; a change; a second request.
    for (tile, changed, follows) in [
        (t, t.offset(5, 5).unwrap(), true),
        (u, u.offset(1, -1).unwrap(), false),
    ] {
        let before = asked();
        let first = ask(tile);
        reached.acquire().await.unwrap().forget();
        invalidate_with(&s.app, &change(&["x"], vec![changed]), Reach::Tiles)
            .await
            .unwrap();
        let second = ask(tile);
        let flight = &s.app.single_flight;
        let settled = || flight.following(Access::Agent) == 1 || asked() == before + 2;
        assert!(eventually(std::time::Duration::from_secs(20), settled).await);
        assert_eq!(
            asked() == before + 1,
            follows,
            "{tile} after a change of {changed}"
        );
        gate.add_permits(asked() - before);
        for r in [first.await.unwrap(), second.await.unwrap()] {
            assert_eq!(r.status, 200, "{}", r.text());
        }
    }
}
