//! The shared Redis tier, against a real `redis-server` started here on a free loopback
//! port. Skipped (with a SKIP line) when redis-server is not installed, unless
//! `TILEWARM_REQUIRE_REDIS=1`.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tilewarm::access::Access;
use tilewarm::tile::TileId;

use crate::common::{config, eventually, redis_available, server, Config, Http, RedisServer};
use crate::{densest, digest, origin, request};

/// An instance on `r`. Redis commands time out after 2 s: these tests count hits and
/// origin calls, and one command slower than a shorter limit on a busy machine would mark
/// Redis down (the test of a Redis killed sets its own).
fn redis_config(r: &RedisServer) -> Config {
    Config {
        redis: Some(r.url()),
        redis_timeout_ms: 2_000,
        ..config()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_answers_a_warmed_tile_with_zero_origin_calls() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let o = origin(42, 5_000);
    let t = densest(&o);
    let http = Http::new();
    let a = server(Config {
        origin_latency_ms: 20,
        ..redis_config(&redis)
    })
    .await;
    // A answers t (one origin call) and warms its ring in the background.
    let first = http.ok(&a, &request(&[t], &[], Access::Verified)).await;
    assert_eq!(a.app.metrics.origin_calls_request.load(Relaxed), 1);
    let m = &a.app.metrics;
    assert!(
        eventually(Duration::from_secs(5), || m.warmup_tiles.load(Relaxed) >= 8).await,
        "warm-up wrote {} tiles",
        m.warmup_tiles.load(Relaxed)
    );

    // B: same Redis, no warm-up of its own, a slow origin it must not call.
    let b = server(Config {
        origin_latency_ms: 500,
        warmup_ring: 0,
        ..redis_config(&redis)
    })
    .await;
    let again = http.ok(&b, &request(&[t], &[], Access::Verified)).await;
    assert_eq!(digest(&again), digest(&first));
    // A neighbour that only A's warm-up fetched, asked for at another tier, and finer.
    let east = t.offset(1, 0).unwrap();
    let child = east.children().unwrap()[0];
    let r = http
        .ok(&b, &request(&[east, child], &[], Access::Public))
        .await;
    let want: Vec<String> = o
        .tile_items(east, Access::Public)
        .map(|i| i.id.clone())
        .collect();
    assert_eq!(r.tiles[0].ids.len(), want.len());
    assert!(r.tiles[1].ids.iter().all(|id| r.tiles[0].ids.contains(id)));
    assert_eq!(b.app.metrics.origin_calls(), 0, "B called the origin");
    assert_eq!(b.app.metrics.cache.tile_misses.load(Relaxed), 0);
    assert!(b.app.metrics.cache.tile_hits.load(Relaxed) >= 2);
    // The remaining TTL is reported, not the full one, once time has passed.
    assert!(r.tiles[0].ttl.is_some_and(|t| (1..=300).contains(&t)));

    let text = http.metrics(&b.url()).await;
    assert!(
        text.contains("tilewarm_cache_hits_total{tier=\"redis\",kind=\"tile\"}"),
        "{text}"
    );
    assert!(text.contains("tilewarm_redis_degraded 0"), "{text}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_test_degrades_to_the_origin_and_recovers() {
    if !redis_available() {
        return;
    }
    let mut redis = RedisServer::start();
    let o = origin(42, 5_000);
    let tiles: Vec<TileId> = o
        .occupied_tiles(14)
        .into_iter()
        .map(|(t, _)| t)
        .take(6)
        .collect();
    let http = Http::new();
    // Each request once Redis is gone answers within 2 s: the limit is 1 s (a killed
    // Redis refuses at once; the limit bounds a command that would hang).
    let s = server(Config {
        warmup_ring: 0,
        redis_timeout_ms: 1_000,
        ..redis_config(&redis)
    })
    .await;
    let m = &s.app.metrics;
    let body = request(&tiles[..2], &["s2a-7"], Access::Public);
    let want = http.ok(&s, &body).await;
    http.ok(&s, &body).await;
    assert_eq!(
        m.origin_calls_request.load(Relaxed),
        1,
        "second answer from redis"
    );

    redis.kill();
    // Every request still answers, correctly, from the origin.
    for _ in 0..5 {
        let t0 = std::time::Instant::now();
        let got = http.ok(&s, &body).await;
        assert_eq!(digest(&got), digest(&want));
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    }
    assert!(m.redis_errors.load(Relaxed) >= 1);
    assert!(m.degraded_requests.load(Relaxed) >= 5);
    let h = http.get(&format!("{}/healthz", s.url())).await;
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["status"], "degraded");
    let text = http.metrics(&s.url()).await;
    assert!(text.contains("tilewarm_redis_degraded 1"), "{text}");

    // Back (empty: no persistence); the probe notices within its back-off.
    redis.restart();
    let tier = &s.app.tier;
    assert!(
        eventually(Duration::from_secs(10), || tier.redis_degraded()
            == Some(false))
        .await,
        "did not recover"
    );
    assert!(m.redis_recoveries.load(Relaxed) >= 1);
    let calls = m.origin_calls_request.load(Relaxed);
    let body2 = request(&tiles[2..], &[], Access::Public);
    http.ok(&s, &body2).await; // miss: origin, written to the new redis
    http.ok(&s, &body2).await; // hit
    assert_eq!(m.origin_calls_request.load(Relaxed), calls + 1);
    // `ok` once the change stream's reader reads the new Redis too (its back-off: at most
    // 2 s).
    let health =
        || async { http.get(&format!("{}/healthz", s.url())).await.json()["status"] == "ok" };
    assert!(
        eventually_async(Duration::from_secs(10), health).await,
        "not ok after recovery"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_started_without_redis_serves_and_picks_it_up_later() {
    if !redis_available() {
        return;
    }
    let mut redis = RedisServer::start();
    redis.kill();
    let http = Http::new();
    // (A CI run on a busy machine saw no recovery within 10 s with a 200 ms limit.)
    let s = server(Config {
        warmup_ring: 0,
        ..redis_config(&redis)
    })
    .await;
    assert_eq!(s.app.tier.redis_degraded(), Some(true));
    let body = r#"{"tiles":["14/2624/5721"]}"#;
    http.ok(&s, body).await;
    redis.restart();
    let tier = &s.app.tier;
    assert!(
        eventually(Duration::from_secs(30), || tier.redis_degraded()
            == Some(false))
        .await,
        "redis is back but the tier is still degraded after 30 s"
    );
    http.ok(&s, body).await;
    http.ok(&s, body).await;
    assert_eq!(s.app.metrics.origin_calls_request.load(Relaxed), 2);
    s.shutdown().await;
}

/// A tile list served from Redis reports the list key's own remaining life there (`PTTL`),
/// not the expiry written in its value (the writing instance's clock and tile TTL): with
/// 5 s left on the key in Redis, a hit answers `ttl` 5 at most, and `GET /v1/tiles` its
/// `Cache-Control` too, so no client keeps the list longer than the shared tier does. Fails
/// when the read ignores `PTTL` (the hit says about 300).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tile_hit_reports_the_remaining_ttl_of_its_redis_key() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let o = origin(42, 5_000);
    let t = densest(&o);
    let http = Http::new();
    let s = server(Config {
        warmup_ring: 0,
        redis_prefix: "pttl:".into(),
        ..redis_config(&redis)
    })
    .await;
    let body = request(&[t], &[], Access::Agent);
    let first = http.ok(&s, &body).await;
    assert!(
        first.tiles[0].ttl.is_some_and(|s| s > 250),
        "{:?}",
        first.tiles[0].ttl
    );
    let key = tilewarm_server::stored::Keys::new("pttl:").tile(t);
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let set: i64 = redis::cmd("PEXPIRE")
        .arg(&key)
        .arg(5_000)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(set, 1, "the tile key {key} is in Redis");
    let hits = s.app.metrics.cache.tile_hits.load(Relaxed);
    let again = http.ok(&s, &body).await;
    assert_eq!(
        s.app.metrics.cache.tile_hits.load(Relaxed),
        hits + 1,
        "a hit"
    );
    assert_eq!(s.app.metrics.origin_calls_request.load(Relaxed), 1);
    assert_eq!(digest(&again), digest(&first));
    let ttl = again.tiles[0].ttl.expect("a ttl");
    assert!((1..=5).contains(&ttl), "ttl {ttl}");
    let r = http
        .get(&format!("{}/v1/tiles/{t}?access=agent", s.url()))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let cc = r.headers["cache-control"].to_str().unwrap().to_owned();
    let max_age: u32 = cc
        .split(',')
        .find_map(|d| d.trim().strip_prefix("max-age="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{cc}"));
    assert!(max_age <= 5, "{cc}");
    s.shutdown().await;
}

/// An invalidation read from the change stream that fails here (its delete times out and
/// marks Redis down) holds requests off the tier until it is applied again, though the
/// probe brings the tier back sooner: otherwise what it covers is served from Redis in
/// between. Right after the change goes on the stream, Redis refuses deletes for a second
/// (`ACL SETUSER default -unlink -del`): the delete fails and marks Redis down, the
/// probe's `PING` answers, and the item stays in Redis until deletes are allowed again.
/// Fails without the hold (the tier is back, and the item read from it, within about
/// 100 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_invalidation_from_the_stream_holds_reads_until_it_is_applied() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let o = origin(42, 5_000);
    let t = densest(&o);
    let s = server(Config {
        warmup_ring: 0,
        ..redis_config(&redis)
    })
    .await;
    let r = Http::new().ok(&s, &request(&[t], &[], Access::Agent)).await;
    let id = r.tiles[0].ids[0].clone();
    let held = || async {
        s.app
            .tier
            .read(&[], std::slice::from_ref(&id))
            .await
            .is_ok_and(|r| r.ids[0].is_some())
    };
    assert!(
        eventually_async(Duration::from_secs(10), held).await,
        "{id} written back"
    );

    // Another instance's change, then deletes refused, in one round trip.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let acl = |rule: &'static str| {
        let mut c = redis::cmd("ACL");
        c.arg("SETUSER")
            .arg("default")
            .arg(rule[..1].to_owned() + "unlink");
        c.arg(rule[..1].to_owned() + "del");
        c
    };
    let inv = format!(r#"{{"ids":["{id}"]}}"#);
    let () = redis::pipe()
        .cmd("XADD")
        .arg("tw:changes")
        .arg("*")
        .arg("inv")
        .arg(&inv)
        .ignore()
        .add_command(acl("-"))
        .ignore()
        .query_async(&mut conn)
        .await
        .unwrap();
    let (mut was_held, mut served) = (false, Vec::new());
    let start = std::time::Instant::now();
    let mut allowed = false;
    while start.elapsed() < Duration::from_millis(2500) {
        if !allowed && start.elapsed() > Duration::from_millis(1000) {
            let () = acl("+").query_async(&mut conn).await.unwrap();
            allowed = true;
        }
        if !s.app.tier.available() {
            was_held = true;
        } else if was_held && held().await {
            served.push(start.elapsed().as_millis());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        was_held,
        "the invalidation never failed: the test did not test"
    );
    assert!(
        served.is_empty(),
        "the tier was read while the invalidated item was still in it, at {served:?} ms"
    );
    // Deletes allowed again after 1 s, the invalidation is retried (a back-off doubling
    // from 100 ms): the tier is used again once it is applied.
    assert!(
        eventually(Duration::from_secs(10), || s.app.tier.available()).await,
        "the tier is used again"
    );
    assert!(!held().await, "the item is gone");
    s.shutdown().await;
}

/// Polls `f` until it is true or `within` passes.
pub(crate) async fn eventually_async<F: std::future::Future<Output = bool>>(
    within: Duration,
    mut f: impl FnMut() -> F,
) -> bool {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

/// A Redis tile hit answers its list's `ttl`, not the soonest expiry of every item the tile
/// holds: the tile's value holds the items of every tier, and a hit whose `ttl` (and
/// `Cache-Control` max-age) followed the expiry of an item above the caller's tier would
/// tell a `public` caller that such an item is there, and when it expires. Lists live an
/// hour here, `active` items a minute, `off_market` ones an hour: the tile asked for shows
/// `public` only `off_market` items and holds an `active` item above `public`. Fails
/// without the fix (the hit's `ttl` is at most 60).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tile_hits_ttl_says_nothing_of_items_above_the_caller() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let o = origin(42, 5_000);
    // A data tile whose public items are all off_market, holding an active item above
    // public.
    let t = o
        .occupied_tiles(14)
        .into_iter()
        .map(|(t, _)| t)
        .find(|&t| {
            let items: Vec<_> = o.tile_items(t, Access::Agent).collect();
            let public: Vec<_> = items
                .iter()
                .filter(|it| it.access == Access::Public)
                .collect();
            !public.is_empty()
                && public.iter().all(|it| it.class == "off_market")
                && items
                    .iter()
                    .any(|it| it.access > Access::Public && it.class == "active")
        })
        .expect("such a tile in the test city");
    let http = Http::anonymous();
    let s = server(Config {
        warmup_ring: 0,
        tile_ttl_s: 3_600,
        ttl_active_s: 60,
        ttl_off_market_s: 3_600,
        redis_prefix: "hidden-ttl:".into(),
        ..redis_config(&redis)
    })
    .await;
    let body = request(&[t], &[], Access::Public);
    let first = http.ok(&s, &body).await;
    assert!(first.items.iter().all(|it| it.class == "off_market"));
    let hits = s.app.metrics.cache.tile_hits.load(Relaxed);
    let again = http.ok(&s, &body).await;
    assert_eq!(
        s.app.metrics.cache.tile_hits.load(Relaxed),
        hits + 1,
        "a hit"
    );
    assert_eq!(digest(&again), digest(&first));
    let ttl = again.tiles[0].ttl.expect("a ttl");
    assert!(
        ttl > 600,
        "the hit's ttl {ttl} follows an item above public"
    );
    let r = http.get(&format!("{}/v1/tiles/{t}", s.url())).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let cc = r.headers["cache-control"].to_str().unwrap().to_owned();
    assert!(cc.starts_with("public, max-age="), "{cc}");
    let max_age: u32 = cc
        .split(',')
        .find_map(|d| d.trim().strip_prefix("max-age="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{cc}"));
    assert!(max_age > 600, "{cc}");
    s.shutdown().await;
}

/// [`crate::a_cached_item_grown_too_large_is_dropped_and_not_served`] over Redis: the item
/// key and the tile value holding a copy of it are unlinked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_item_grown_too_large_is_dropped_from_redis() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    crate::a_cached_item_grown_too_large_is_dropped_and_not_served(Some(redis.url())).await;
}
