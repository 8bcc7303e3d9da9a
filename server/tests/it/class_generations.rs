//! Class invalidation in Redis by generation (`docs/server.md`, *Cache tier*): a class's
//! generation is bumped, nothing is scanned, and every instance treats a value stamped
//! with an older generation as a miss; a write-back fetched before the bump is born stale;
//! `all` keeps the generations. Real Redis (one, or a cluster in `cluster.rs`).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tilewarm::access::Access;
use tilewarm::tile::TileId;
use tilewarm_server::invalidate::{invalidate, Invalidation};
use tilewarm_server::tier::{Fill, StoredItem};

use crate::common::{eventually, redis_available, server, Http, RedisServer};
use crate::invalidate::{admin_invalidates, redis_config, redis_do};
use crate::{densest, origin, request};

fn classes(c: &[&str]) -> Invalidation {
    Invalidation {
        classes: c.iter().map(|c| c.to_string()).collect(),
        ..Invalidation::default()
    }
}

/// `HGET tw:v4:g <class>`, 0 when absent.
async fn generation(r: &RedisServer, class: &str) -> u64 {
    match redis_do(r, &["HGET", "tw:v4:g", class]).await {
        redis::Value::Nil => 0,
        v => redis::from_redis_value::<String>(v)
            .unwrap()
            .parse()
            .unwrap(),
    }
}

/// The id of the first item of class `class` in tile `t` of `o`.
fn first_of_class(
    o: &tilewarm::origin::Origin<tilewarm::protocol::RawData>,
    t: TileId,
    class: &str,
) -> String {
    let mut of_class = o.tile_items(t, Access::Agent).filter(|i| i.class == class);
    of_class.next().unwrap().id.clone()
}

/// Whether `s`'s tier holds tile `t` and item `id`.
async fn held(s: &tilewarm_server::Server, t: TileId, id: &str) -> (bool, bool) {
    let r = s.app.tier.read(&[t], &[id.to_string()]).await.unwrap();
    (r.tiles[0].is_some(), r.ids[0].is_some())
}

/// `calls=` of `cmdstat_<cmd>` in `INFO commandstats`.
async fn calls(r: &RedisServer, cmd: &str) -> u64 {
    let info: String =
        redis::from_redis_value(redis_do(r, &["INFO", "commandstats"]).await).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

/// Two instances on one Redis: once `POST /v1/invalidate {"classes":[…]}` on A returns,
/// neither serves an item of the class cached before it, by id or inside a tile, while
/// items of other classes are still hits. Redis is sent no `SCAN` and no value is read to
/// do it; the class is bumped once, not again by B's reader nor by A's second delete
/// (fails if either re-bumps: the generation moves on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_class_invalidation_reaches_every_instance_without_a_scan() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let o = origin(42, 5_000);
    let t = densest(&o);
    let of = |class: &str| {
        o.tile_items(t, Access::Agent)
            .find(|i| i.class == class)
            .unwrap()
            .id
            .clone()
    };
    let (active, off) = (of("active"), of("off_market"));
    let http = Http::new();
    let a = server(redis_config(&redis)).await;
    let b = server(redis_config(&redis)).await;
    let body = request(&[t], &[&active, &off], Access::Agent);
    http.ok(&a, &body).await;
    http.ok(&b, &body).await;
    assert_eq!(b.app.metrics.origin_calls(), 0, "B did not read A's writes");
    let (scans, mgets) = (calls(&redis, "scan").await, calls(&redis, "mget").await);
    let evals = calls(&redis, "eval").await;

    // What B's reader hands its followers, once it has applied it.
    let mut b_applied = b.app.changes.events();
    admin_invalidates(&a, r#"{"classes":["active"]}"#).await;
    let bumped = generation(&redis, "active").await;
    assert!(bumped > 0, "the class was not bumped");
    assert_eq!(
        calls(&redis, "scan").await,
        scans,
        "a class invalidation scanned"
    );
    assert_eq!(
        calls(&redis, "mget").await,
        mgets,
        "a class invalidation read values"
    );

    // Another class is still a hit, on both.
    for s in [&a, &b] {
        let before = s.app.metrics.origin_calls();
        http.ok(s, &request(&[], &[&off], Access::Agent)).await;
        assert_eq!(s.app.metrics.origin_calls(), before, "off_market missed");
    }
    // B: the active item by id is a miss (its refetch writes it back, current).
    let before = b.app.metrics.origin_calls();
    http.ok(&b, &request(&[], &[&active], Access::Agent)).await;
    assert_eq!(
        b.app.metrics.origin_calls(),
        before + 1,
        "B served an item of an invalidated class from Redis"
    );
    // A: the tile holds copies of active items (not written again since): a miss.
    let before = a.app.metrics.origin_calls();
    let misses = a.app.metrics.cache.tile_misses.load(Relaxed);
    http.ok(&a, &request(&[t], &[], Access::Agent)).await;
    assert_eq!(
        (
            a.app.metrics.origin_calls(),
            a.app.metrics.cache.tile_misses.load(Relaxed)
        ),
        (before + 1, misses + 1),
        "A served a tile holding an item of an invalidated class from Redis"
    );
    // Written back by A's refetch, current: both hit it again.
    for s in [&a, &b] {
        let before = s.app.metrics.origin_calls();
        http.ok(s, &request(&[t], &[&active], Access::Agent)).await;
        assert_eq!(
            s.app.metrics.origin_calls(),
            before,
            "the refetch was not kept"
        );
    }
    // B's reader applied A's change (its write guard has it) without bumping again: it
    // hands an entry to its followers once applied.
    tokio::time::timeout(Duration::from_secs(10), b_applied.recv())
        .await
        .expect("B's reader did not apply A's change within 10 s")
        .unwrap();
    assert_eq!(
        generation(&redis, "active").await,
        bumped,
        "bumped again by B's reader or A's second delete"
    );
    // Counted too: B's reader may have bumped again before `bumped` was read.
    assert_eq!(
        calls(&redis, "eval").await,
        evals + 1,
        "bumped again by B's reader or A's second delete"
    );
    assert_eq!(generation(&redis, "off_market").await, 0);
    a.shutdown().await;
    b.shutdown().await;
}

/// A write-back whose origin call began before a class's bump is stamped with the
/// generation read before it, so it lands stale: here written straight to the tier after
/// the bump (as a fetch in flight on an instance whose write guard has not heard of the
/// change would), its tile and its items of the class are misses. Fails when the write
/// stamps the generations current at writing. The same write stamped after the bump is a
/// hit. `all` keeps the generations: the old write-back is still stale after it (fails
/// when `all` deletes `tw:v4:g`, which sets every class back to 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_back_fetched_before_a_class_bump_is_born_stale() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let o = origin(42, 5_000);
    let t = densest(&o);
    let ids: Vec<String> = o
        .tile_items(t, Access::Agent)
        .map(|i| i.id.clone())
        .collect();
    let active = first_of_class(&o, t, "active");
    let off = first_of_class(&o, t, "off_market");
    let http = Http::new();
    let s = server(redis_config(&redis)).await;
    // Invalidated once before: generations are there, and the items written since carry
    // the class's.
    invalidate(&s.app, &classes(&["active"])).await.unwrap();
    http.ok(&s, &request(&[t], &[], Access::Agent)).await;
    let tier = &s.app.tier;
    let asked = [active.clone(), off.clone()];
    // What a fetch starting now reads before calling the origin: t and its items.
    let before = tier.read(&[t], &[]).await.unwrap();
    let first = before.gens.of("active");
    assert!(first > 0);
    let items: Vec<Arc<StoredItem>> = before.tiles[0]
        .as_ref()
        .expect("t is in Redis")
        .items
        .iter()
        .cloned()
        .map(Arc::new)
        .collect();
    let exp = tilewarm_server::tier::now_ms() + 60_000;
    let fill = |gens| Fill {
        items: items.clone(),
        tiles: vec![(t, ids.clone(), exp)],
        gens,
        ..Fill::default()
    };
    let hits = |r: &tilewarm_server::tier::TierRead| {
        (r.tiles[0].is_some(), r.ids[0].is_some(), r.ids[1].is_some())
    };

    invalidate(&s.app, &classes(&["active"])).await.unwrap();
    let second = generation(&redis, "active").await;
    assert!(second > first);
    tier.write(&fill(before.gens.clone())).await.unwrap();
    let r = tier.read(&[t], &asked).await.unwrap();
    assert_eq!(
        hits(&r),
        (false, false, true),
        "a write-back fetched before the bump was served"
    );
    // Fetched after the bump: current.
    tier.write(&fill(r.gens.clone())).await.unwrap();
    let r = tier.read(&[t], &asked).await.unwrap();
    assert_eq!(hits(&r), (true, true, true));

    invalidate(&s.app, &Invalidation::everything())
        .await
        .unwrap();
    assert_eq!(
        generation(&redis, "active").await,
        second,
        "`all` reset the class"
    );
    tier.write(&fill(before.gens.clone())).await.unwrap();
    let r = tier.read(&[t], &asked).await.unwrap();
    assert_eq!(
        hits(&r),
        (false, false, false),
        "a write-back fetched before the bump (and before `all`, which bumps every class's \
         values past it) was served after `all`"
    );
    s.shutdown().await;
}

/// `all` bumps a generation of its own (`*` in `tw:v4:g`): a value stored before it is a
/// miss wherever it is, so a key its `SCAN` does not reach is not served (on a Redis
/// Cluster moving slots while it runs, a key that moved from a master not walked yet to one
/// walked before is returned by neither). Such a key is stood in for by a write-back
/// fetched before the `all` (its generations read before it) and written after its `SCAN`:
/// its tile and its items, of every class, are misses, on A and on B; written with
/// generations read after, hits. B's reader applies A's `all` without bumping it again
/// (the entry says it was bumped) nor walking the keyspace again. Fails when `all` only
/// deletes what its `SCAN` finds (the old values are served), or when every reader bumps
/// `all` again (its generation moves on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_stored_before_all_that_its_scan_did_not_reach_is_not_served() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let o = origin(42, 5_000);
    let t = densest(&o);
    let ids: Vec<String> = o
        .tile_items(t, Access::Agent)
        .map(|i| i.id.clone())
        .collect();
    let asked = [ids[0].clone(), ids[ids.len() - 1].clone()];
    let http = Http::new();
    let a = server(redis_config(&redis)).await;
    let b = server(redis_config(&redis)).await;
    http.ok(&a, &request(&[t], &[], Access::Agent)).await;
    // What a fetch starting now reads before calling the origin.
    let before = a.app.tier.read(&[t], &[]).await.unwrap();
    let items: Vec<Arc<StoredItem>> = before.tiles[0]
        .as_ref()
        .expect("t is in Redis")
        .items
        .iter()
        .cloned()
        .map(Arc::new)
        .collect();
    let exp = tilewarm_server::tier::now_ms() + 60_000;
    let fill = |gens| Fill {
        items: items.clone(),
        tiles: vec![(t, ids.clone(), exp)],
        gens,
        ..Fill::default()
    };
    let hits = |r: &tilewarm_server::tier::TierRead| {
        (r.tiles[0].is_some(), r.ids[0].is_some(), r.ids[1].is_some())
    };
    let sees_all = b.app.invalidation.stats.all.load(Relaxed);
    let scans = calls(&redis, "scan").await;
    admin_invalidates(&a, r#"{"all":true}"#).await;
    // Missed by the SCAN: stored before, there after.
    a.app.tier.write(&fill(before.gens.clone())).await.unwrap();
    for s in [&a, &b] {
        let r = s.app.tier.read(&[t], &asked).await.unwrap();
        assert_eq!(
            hits(&r),
            (false, false, false),
            "a value stored before `all` was served"
        );
    }
    let bumped = generation(&redis, "*").await;
    assert!(bumped > 0, "`all` bumped no generation");
    // Fetched after: current.
    let after = a.app.tier.read(&[t], &[]).await.unwrap().gens;
    a.app.tier.write(&fill(after)).await.unwrap();
    let r = b.app.tier.read(&[t], &asked).await.unwrap();
    assert_eq!(hits(&r), (true, true, true));
    // B's reader applied it (recorded in its write guard; counted once applied) without
    // a bump or a SCAN.
    assert!(
        eventually(Duration::from_secs(10), || b
            .app
            .changes
            .stats
            .applied_remote
            .load(Relaxed)
            == 1)
        .await,
        "B's reader did not apply A's `all`"
    );
    assert!(b.app.invalidation.stats.all.load(Relaxed) > sees_all);
    assert_eq!(generation(&redis, "*").await, bumped, "bumped again");
    assert_eq!(
        calls(&redis, "scan").await,
        scans + 1,
        "the keyspace was walked more than once (A's one SCAN call of a small tier)"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// A generations hash that is lost (evicted under an `allkeys-*` policy, a failover whose
/// new master missed the bump, deleted by hand) sets its classes back, which brings back
/// what was stamped before the lost bump (`docs/server.md`, *Limits*); the class's next
/// bump must still make everything stamped before it stale, whatever was stamped while the
/// hash lasted. Here a tile and an item are written back after a first bump, the hash is
/// deleted, and the class is invalidated again (a new change): they must be misses. Fails
/// when a bump only adds 1 to what is left (`HINCRBY`: the second bump lands on the
/// generation the write-back was stamped with, and the old values are served).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bump_after_the_generations_were_lost_still_passes_every_stamp() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let o = origin(42, 5_000);
    let t = densest(&o);
    let active = first_of_class(&o, t, "active");
    let http = Http::new();
    let s = server(redis_config(&redis)).await;
    invalidate(&s.app, &classes(&["active"])).await.unwrap();
    let first = generation(&redis, "active").await;
    assert!(first > 0);
    // Fetched after the first bump: stamped with it, hits.
    http.ok(&s, &request(&[t], &[&active], Access::Agent)).await;
    assert_eq!(held(&s, t, &active).await, (true, true));

    redis_do(&redis, &["DEL", "tw:v4:g"]).await;
    invalidate(&s.app, &classes(&["active"])).await.unwrap();
    assert_eq!(
        held(&s, t, &active).await,
        (false, false),
        "an item of a class invalidated since was served"
    );
    assert!(
        generation(&redis, "active").await > first,
        "a bump after the loss landed on a generation already stamped"
    );
    s.shutdown().await;
}

/// `all` deletes every key under its prefix (`SCAN <prefix>*`), which also matches the keys
/// of a deployment whose prefix starts with it (`tw:` and `tw:x:` on one Redis). Deleting
/// that deployment's values is harmless (they are refetched), but not its class
/// generations: a write-back it fetched before a bump of its own, landing after the `all`,
/// would then read as current. Fails when `all` deletes every key ending like a
/// generations hash but its own; this deployment's keys that merely end like one (an item
/// whose id ends in `v4:g`) are still deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_keeps_the_generations_of_a_deployment_under_a_longer_prefix() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let o = origin(42, 5_000);
    let t = densest(&o);
    let ids: Vec<String> = o
        .tile_items(t, Access::Agent)
        .map(|i| i.id.clone())
        .collect();
    let http = Http::new();
    let s = server(redis_config(&redis)).await;
    let x = server(tilewarm_server::config::Config {
        redis_prefix: "tw:x:".into(),
        ..redis_config(&redis)
    })
    .await;
    // X fetches t with the generations read before its origin call (none yet)...
    http.ok(&x, &request(&[t], &[], Access::Agent)).await;
    let before = x.app.tier.read(&[t], &[]).await.unwrap();
    let items: Vec<Arc<StoredItem>> = before.tiles[0]
        .as_ref()
        .expect("t is in Redis")
        .items
        .iter()
        .cloned()
        .map(Arc::new)
        .collect();
    // ... a class of X's is invalidated while the call is out, then `all` on S ...
    invalidate(&x.app, &classes(&["active"])).await.unwrap();
    redis_do(&redis, &["SET", "tw:v4:i:zv4:g", "x"]).await;
    invalidate(&s.app, &Invalidation::everything())
        .await
        .unwrap();
    assert!(
        matches!(
            redis_do(&redis, &["EXISTS", "tw:v4:i:zv4:g"]).await,
            redis::Value::Int(0)
        ),
        "`all` kept a key of its own"
    );
    // ... and X's write-back lands: stale, as it would be without S.
    let exp = tilewarm_server::tier::now_ms() + 60_000;
    let fill = Fill {
        items,
        tiles: vec![(t, ids, exp)],
        gens: before.gens.clone(),
        ..Fill::default()
    };
    x.app.tier.write(&fill).await.unwrap();
    let r = x.app.tier.read(&[t], &[]).await.unwrap();
    assert!(
        r.tiles[0].is_none(),
        "`all` under a shorter prefix set another deployment's classes back"
    );
    s.shutdown().await;
    x.shutdown().await;
}

/// A class invalidation read from the change stream that no instance of this storage
/// format made (an instance of format v3, which has no generations, during a rolling
/// upgrade: it deleted its own keys of the class, and its entry says nothing of a bump) is
/// bumped here: this instance's values of the class cached before are misses. Its entry is
/// written here as such an instance writes it. Fails when the reader takes every entry for
/// one whose classes were bumped already (the v4 values were served until their TTL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_class_invalidation_from_an_instance_without_generations_is_bumped_by_the_reader() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let o = origin(42, 5_000);
    let t = densest(&o);
    let active = first_of_class(&o, t, "active");
    let http = Http::new();
    let a = server(redis_config(&redis)).await;
    let body = request(&[t], &[&active], Access::Agent);
    http.ok(&a, &body).await;
    let calls = a.app.metrics.origin_calls();
    http.ok(&a, &body).await;
    assert_eq!(a.app.metrics.origin_calls(), calls, "not cached");

    // A v3 instance's `POST /v1/invalidate {"classes":["active"]}`: its own keys deleted,
    // then this entry. A's reader hands it to its followers once it has applied it.
    let mut applied = a.app.changes.events();
    let inv = r#"{"ids":[],"tiles":[],"classes":["active"],"all":false}"#;
    let xadd = [
        "XADD",
        "tw:changes",
        "MAXLEN",
        "~",
        "10000",
        "*",
        "inv",
        inv,
    ];
    redis_do(&redis, &xadd).await;
    tokio::time::timeout(Duration::from_secs(10), applied.recv())
        .await
        .expect("the reader did not apply the entry within 10 s")
        .unwrap();
    assert_eq!(a.app.changes.stats.applied_remote.load(Relaxed), 1);
    assert!(generation(&redis, "active").await > 0, "not bumped");
    let calls = a.app.metrics.origin_calls();
    http.ok(&a, &request(&[], &[&active], Access::Agent)).await;
    assert_eq!(
        a.app.metrics.origin_calls(),
        calls + 1,
        "an item of the class cached before was served"
    );
    // An entry of this format (A's own call, read by another instance) is not bumped
    // again: that is `a_class_invalidation_reaches_every_instance_without_a_scan`.
    a.shutdown().await;
}

/// A generation that is not a number (written by something else) fails the read instead
/// of reading as 0, which would serve the class's stale values: the tier is marked down
/// and requests are answered from the origin. The bump fails too (503).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_that_is_not_a_number_fails_safe() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let o = origin(42, 5_000);
    let t = densest(&o);
    let http = Http::new();
    let s = server(redis_config(&redis)).await;
    http.ok(&s, &request(&[t], &[], Access::Agent)).await;
    redis_do(&redis, &["HSET", "tw:v4:g", "active", "x"]).await;
    let Err(e) = s.app.tier.read(&[t], &[]).await else {
        panic!("a generation that is not a number was read as one");
    };
    assert!(e.to_string().contains("not a number"), "{e}");
    assert_eq!(s.app.tier.redis_degraded(), Some(true));
    assert!(
        eventually(Duration::from_secs(5), || s.app.tier.redis_degraded()
            == Some(false))
        .await
    );
    let r = invalidate(&s.app, &classes(&["active"])).await;
    assert!(r.is_err(), "a failed bump passed for one that took");
    // A number the bump's Lua cannot add 1 to exactly (2^54: it would stay where it is,
    // and the class's values would go on being served) fails the bump too.
    let huge = (1u64 << 54).to_string();
    redis_do(&redis, &["HSET", "tw:v4:g", "active", &huge]).await;
    let r = invalidate(&s.app, &classes(&["active"])).await;
    assert!(
        r.is_err(),
        "a bump that could not move the generation passed"
    );
    assert_eq!(generation(&redis, "active").await, 1u64 << 54);
    s.shutdown().await;
}

/// The measurement behind docs/BENCHMARKS.md "Class invalidation on a big Redis tier": a
/// tier of `TILEWARM_BENCH_KEYS` item keys (default 1,000,000; every 100 items also under
/// a tile key) filled through the tier's own writes, then one class invalidated through
/// `invalidate::invalidate`, timed. Written against APIs main had before generations, so
/// the same file measures the scan it replaced. Run:
/// `TILEWARM_BENCH_KEYS=1000000 cargo test --release -p tilewarm-server --test it
/// class_invalidation_on_a_big_tier -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: fills Redis with a million keys"]
async fn class_invalidation_on_a_big_tier() {
    if !redis_available() {
        return;
    }
    let n: usize = std::env::var("TILEWARM_BENCH_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let redis = RedisServer::start();
    let s = server(redis_config(&redis)).await;
    let data = serde_json::value::to_raw_value(&serde_json::json!({
        "price": 450_000, "beds": 3, "baths": 2, "sqft": 1_800,
        "address": "1234 Some Street, Some Town", "photo": "https://example.com/p/123.jpg"
    }))
    .unwrap();
    let exp = tilewarm_server::tier::now_ms() + 3_600_000;
    let filled = Instant::now();
    let per_fill = 10_000;
    for start in (0..n).step_by(per_fill) {
        let mut fill = Fill::default();
        for i in start..(start + per_fill).min(n) {
            // Spread over a zoom-14 grid, 100 items per tile.
            let (tx, ty) = ((i / 100) % 1000, (i / 100) / 1000);
            let tile = TileId::new(14, 2000 + tx as u32, 5000 + ty as u32).unwrap();
            let (lon, lat) = tile.bounds().centre();
            let class = if i % 7 == 0 { "active" } else { "off_market" };
            let id = format!("bench-{i}");
            fill.items.push(Arc::new(StoredItem::new(
                &id,
                lon,
                lat,
                class,
                Access::Public,
                exp,
                &data,
            )));
            if i % 100 == 99 {
                let ids = (i - 99..=i).map(|j| format!("bench-{j}")).collect();
                fill.tiles.push((tile, ids, exp));
            }
        }
        s.app.tier.write(&fill).await.expect("written");
    }
    let keys: u64 = redis::from_redis_value(redis_do(&redis, &["DBSIZE"]).await).unwrap();
    eprintln!(
        "filled {keys} keys ({n} items, {} tiles) in {:.1} s",
        n / 100,
        filled.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let r = invalidate(&s.app, &classes(&["active"])).await;
    let took = started.elapsed();
    eprintln!(
        "class invalidation over {keys} keys: {} in {:.1} ms",
        if r.is_ok() { "applied" } else { "FAILED" },
        took.as_secs_f64() * 1000.0
    );
    assert!(r.is_ok(), "{r:?}");
    s.shutdown().await;
}
