//! Who owns a Redis key prefix (`<prefix>v4:owner`, `tilewarm_server::owner`): two
//! deployments of different origins on one Redis and one prefix never serve each other's
//! items; instances of one deployment share it as before. Against a real `redis-server`
//! (and a Redis Cluster), skipped without one unless `TILEWARM_REQUIRE_REDIS=1`.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tilewarm::access::Access;
use tilewarm::tile::TileId;
use tilewarm_server::tier::PrefixOwner;
use tilewarm_server::Server;

use crate::common::{
    config, eventually, redis_available, server, Config, Http, RedisCluster, RedisServer,
};
use crate::invalidate::admin_invalidates;
use crate::{densest, digest, origin, request};

/// A deployment over the synthetic city of `seed` on `redis`, default prefix, no warm-up
/// (so that what is in Redis is what the requests put there). Redis commands time out after
/// 2 s, as in the cluster tests (`cluster::on`): the owner record is read by a new client's
/// first command, and on a cluster of six processes on two busy cores that took over 500 ms.
fn deployment(redis: String, seed: u64) -> Config {
    Config {
        redis: Some(redis),
        redis_timeout_ms: 2_000,
        seed,
        warmup_ring: 0,
        ..config()
    }
}

/// What a server of the city of `seed` with no Redis at all answers: the reference.
async fn alone(seed: u64) -> Server {
    server(Config {
        seed,
        warmup_ring: 0,
        ..config()
    })
    .await
}

/// The tile `t` and the first few ids of its list at `seed`'s origin.
fn ask(seed: u64, t: TileId) -> String {
    let o = origin(seed, 5_000);
    let ids: Vec<String> = o
        .tile_items(t, Access::Agent)
        .take(4)
        .map(|i| i.id.clone())
        .collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    request(&[t], &ids, Access::Agent)
}

async fn owner_record(url: &str) -> Option<String> {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("GET")
        .arg("tw:v4:owner")
        .query_async(&mut conn)
        .await
        .unwrap()
}

fn owner_of(s: &Server) -> Option<PrefixOwner> {
    s.app.tier.prefix_owner()
}

/// A (city 42) fills the tier; B (city 7: another origin) on the same Redis and prefix
/// finds A's owner record, does not use the tier, answers every request from its own
/// origin exactly as a server without Redis does, and says so on `/healthz` and
/// `/metrics`. A goes on using its tier, and its `all` keeps the record. Without the check, B
/// serves A's tile list and items (the digest differs at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_deployment_on_the_same_prefix_serves_its_own_origin_never_the_tiers() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let http = Http::new();
    let t = densest(&origin(42, 5_000));
    let a = server(deployment(redis.url(), 42)).await;
    assert_eq!(owner_of(&a), Some(PrefixOwner::This));
    let body_a = ask(42, t);
    let from_a = http.ok(&a, &body_a).await;
    let record = owner_record(&redis.url())
        .await
        .expect("A wrote its record");
    assert!(
        record.contains("origin=memory:synthetic:5000:42"),
        "{record}"
    );

    let b = server(deployment(redis.url(), 7)).await;
    assert_eq!(owner_of(&b), Some(PrefixOwner::Other));
    let reference = alone(7).await;
    // A's tile and ids, and B's own: each as B's origin has them.
    for body in [body_a.clone(), ask(7, t)] {
        let got = http.ok(&b, &body).await;
        let want = http.ok(&reference, &body).await;
        assert_eq!(
            digest(&got),
            digest(&want),
            "B answered other than its origin"
        );
        assert_ne!(
            digest(&got),
            digest(&from_a),
            "the two cities agree here: no test"
        );
    }
    assert!(
        b.app.metrics.origin_calls() >= 2,
        "B did not ask its origin"
    );
    assert_eq!(b.app.metrics.cache.tile_hits.load(Relaxed), 0);

    let health = http.get(&format!("{}/healthz", b.url())).await.json();
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["redis_prefix_owner"], "other", "{health}");
    assert!(http
        .metrics(&b.url())
        .await
        .contains("tilewarm_redis_prefix_other_owner 1"));
    let what = b.app.tier.owner_conflict().expect("the conflict is kept");
    assert!(
        what.contains(
            "origin is \"memory:synthetic:5000:42\" there, \"memory:synthetic:5000:7\" here"
        ) && what.contains("\"tw:\"")
            && what.contains("--redis-prefix"),
        "{what}"
    );

    // A goes on using its tier: a hit, no origin call.
    let a_calls = a.app.metrics.origin_calls();
    assert_eq!(digest(&http.ok(&a, &body_a).await), digest(&from_a));
    assert_eq!(a.app.metrics.origin_calls(), a_calls);
    let health = http.get(&format!("{}/healthz", a.url())).await.json();
    assert_eq!(health["redis_prefix_owner"], "this", "{health}");
    assert!(http
        .metrics(&a.url())
        .await
        .contains("tilewarm_redis_prefix_other_owner 0"));
    // A's own `all` keeps the owner record.
    admin_invalidates(&a, r#"{"all":true}"#).await;
    assert_eq!(owner_record(&redis.url()).await, Some(record));
    for s in [a, b, reference] {
        s.shutdown().await;
    }
}

/// The change stream `<prefix>changes` is shared by both deployments; each entry names the
/// deployment that made it, and a reader skips another's. B (refused the tier) invalidates
/// A's tile: A neither applies it nor tells its feed; A2, of A's deployment, invalidates
/// an id next, which A applies (so A's reader has read past B's entry), and A's tile is
/// still a hit. Without the tag, A applies B's entry and calls its origin again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_deployments_invalidations_are_not_applied_here() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let http = Http::new();
    let t = densest(&origin(42, 5_000));
    let a = server(deployment(redis.url(), 42)).await;
    let a2 = server(deployment(redis.url(), 42)).await;
    let b = server(deployment(redis.url(), 7)).await;
    assert_eq!(owner_of(&b), Some(PrefixOwner::Other));
    let body = ask(42, t);
    let first = http.ok(&a, &body).await;
    let calls = a.app.metrics.origin_calls();
    let applied = a.app.changes.stats.applied_remote.load(Relaxed);
    admin_invalidates(&b, &format!(r#"{{"tiles":["{t}"]}}"#)).await;
    admin_invalidates(&a2, r#"{"ids":["no-such-id"]}"#).await;
    let stats = &a.app.changes.stats;
    assert!(
        eventually(Duration::from_secs(10), || stats
            .applied_remote
            .load(Relaxed)
            > applied)
        .await,
        "A did not apply A2's change"
    );
    assert_eq!(
        stats.applied_remote.load(Relaxed),
        applied + 1,
        "A applied B's change"
    );
    assert_eq!(digest(&http.ok(&a, &body).await), digest(&first));
    assert_eq!(a.app.metrics.origin_calls(), calls, "A's tile was dropped");
    for s in [a, a2, b] {
        s.shutdown().await;
    }
}

/// Instances of one deployment share the prefix as before, whatever the flags outside the
/// fingerprint (warm-up, TTLs, origin latency): the second is answered from what the first
/// wrote, with no origin call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_of_one_deployment_share_the_prefix() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let http = Http::new();
    let t = densest(&origin(42, 5_000));
    let a = server(deployment(redis.url(), 42)).await;
    let first = http.ok(&a, &ask(42, t)).await;
    let b = server(Config {
        ttl_active_s: 120,
        split_levels: 2,
        origin_latency_ms: 50,
        ..deployment(redis.url(), 42)
    })
    .await;
    assert_eq!(owner_of(&b), Some(PrefixOwner::This));
    assert_eq!(digest(&http.ok(&b, &ask(42, t)).await), digest(&first));
    assert_eq!(b.app.metrics.origin_calls(), 0, "B did not share A's tier");
    a.shutdown().await;
    b.shutdown().await;
}

/// One deployment's instances whose `--data` is the same file at two paths (as on two
/// hosts) are two deployments to the owner record, unless both are given the same
/// `--redis-owner-origin`: then the second is answered from what the first wrote. Without
/// the name (or with the flag ignored), B refuses the prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_naming_their_origin_alike_share_the_prefix_whatever_its_path() {
    if !redis_available() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("tw-owner-name-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("b")).unwrap();
    let homes = "{\"id\":\"h1\",\"lon\":2.3522,\"lat\":48.8566,\"class\":\"active\",\"access\":\"public\",\"data\":{\"p\":1}}\n";
    let (path_a, path_b) = (dir.join("homes.jsonl"), dir.join("b").join("homes.jsonl"));
    std::fs::write(&path_a, homes).unwrap();
    std::fs::write(&path_b, homes).unwrap();
    let redis = RedisServer::start();
    let http = Http::new();
    let on = |data: &std::path::Path, name: Option<&str>| Config {
        data: Some(data.to_owned()),
        redis_owner_origin: name.map(Into::into),
        ..deployment(redis.url(), 42)
    };
    let t = TileId::from_lon_lat(2.3522, 48.8566, 14).unwrap();
    let ask = request(&[t], &["h1"], Access::Public);
    let a = server(on(&path_a, Some("paris-homes"))).await;
    let first = http.ok(&a, &ask).await;
    assert_eq!(first.items.len(), 1);
    assert_eq!(owner_of(&a), Some(PrefixOwner::This));

    let unnamed = server(on(&path_b, None)).await;
    assert!(
        owner_of(&unnamed) == Some(PrefixOwner::Other),
        "another path without the name taken for the same deployment"
    );
    unnamed.shutdown().await;

    let b = server(on(&path_b, Some("paris-homes"))).await;
    assert_eq!(owner_of(&b), Some(PrefixOwner::This));
    assert_eq!(digest(&http.ok(&b, &ask).await), digest(&first));
    assert_eq!(b.app.metrics.origin_calls(), 0, "B did not share A's tier");
    a.shutdown().await;
    b.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--redis-take-over`: B (city 7) writes its record over A's, waits until A has stepped
/// off, invalidates `all`, and uses the tier; from then on neither serves the other's
/// items, and A answers from its origin. Without the check, B serves A's cached tile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_take_over_steps_the_old_deployment_off_and_serves_none_of_its_items() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let http = Http::new();
    let t = densest(&origin(42, 5_000));
    let a = server(deployment(redis.url(), 42)).await;
    let from_a = http.ok(&a, &ask(42, t)).await;
    let b = server(Config {
        redis_take_over: true,
        ..deployment(redis.url(), 7)
    })
    .await;
    assert_eq!(owner_of(&b), Some(PrefixOwner::This));
    assert_eq!(b.app.metrics.redis_take_overs.load(Relaxed), 1);
    // A reads the record again every 2 s (the take-over waited that long and more).
    assert!(
        eventually(Duration::from_secs(10), || owner_of(&a)
            == Some(PrefixOwner::Other))
        .await,
        "A did not step off"
    );
    let record = owner_record(&redis.url()).await.unwrap();
    assert!(record.contains("memory:synthetic:5000:7"), "{record}");

    let reference = alone(7).await;
    let body = ask(42, t);
    let want_b = digest(&http.ok(&reference, &body).await);
    assert_eq!(digest(&http.ok(&b, &body).await), want_b);
    // Now from B's tier: a hit, still B's items.
    let hits = b.app.metrics.cache.tile_hits.load(Relaxed);
    assert_eq!(digest(&http.ok(&b, &body).await), want_b);
    assert!(b.app.metrics.cache.tile_hits.load(Relaxed) > hits);
    // A answers from its own origin, never from B's tier.
    let a_hits = a.app.metrics.cache.tile_hits.load(Relaxed);
    assert_eq!(digest(&http.ok(&a, &body).await), digest(&from_a));
    assert_eq!(a.app.metrics.cache.tile_hits.load(Relaxed), a_hits);
    for s in [a, b, reference] {
        s.shutdown().await;
    }
}

/// A prefix whose owner record is deleted goes to whichever deployment reads it first: B,
/// waiting on A's record, writes its own within its probe's back-off and uses the tier.
/// Only the record was deleted here, not A's values, so B invalidates `all` before it
/// uses the tier (it saw another's record there): it serves none of A's items. Without
/// that, B serves A's cached tile; without the check, B serves it from the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_whose_record_is_deleted_goes_to_the_deployment_that_asks_first() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let http = Http::new();
    let t = densest(&origin(42, 5_000));
    let a = server(deployment(redis.url(), 42)).await;
    let body = ask(42, t);
    http.ok(&a, &body).await;
    let b = server(deployment(redis.url(), 7)).await;
    assert_eq!(owner_of(&b), Some(PrefixOwner::Other));
    let reference = alone(7).await;
    let want = digest(&http.ok(&reference, &body).await);
    assert_eq!(digest(&http.ok(&b, &body).await), want);
    // A stops; the operator deletes the record alone (A's values stay).
    a.shutdown().await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let () = redis::cmd("DEL")
        .arg("tw:v4:owner")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || owner_of(&b)
            == Some(PrefixOwner::This))
        .await,
        "B did not take the prefix"
    );
    let hits = b.app.metrics.cache.tile_hits.load(Relaxed);
    assert_eq!(digest(&http.ok(&b, &body).await), want);
    assert_eq!(
        b.app.metrics.cache.tile_hits.load(Relaxed),
        hits,
        "A's tile was left"
    );
    // Now a hit of B's own.
    assert_eq!(digest(&http.ok(&b, &body).await), want);
    // A started again finds B's record.
    let a = server(deployment(redis.url(), 42)).await;
    assert_eq!(owner_of(&a), Some(PrefixOwner::Other));
    for s in [a, b, reference] {
        s.shutdown().await;
    }
}

/// A server started while Redis is down does not know whose the prefix is: it stays off
/// the tier (`unchecked`) and reads the record when Redis is back. Here Redis comes back
/// with A's record and A's cached tile (a restart from its snapshot): B stays off the tier
/// and answers A's tile from its own origin. Without the check at the probe, B serves A's
/// tile as soon as Redis answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_started_while_redis_is_down_checks_the_record_when_it_is_back() {
    if !redis_available() {
        return;
    }
    let mut redis = RedisServer::start_persistent();
    let http = Http::new();
    let t = densest(&origin(42, 5_000));
    let a = server(deployment(redis.url(), 42)).await;
    let body = ask(42, t);
    http.ok(&a, &body).await;
    a.shutdown().await;
    redis.save_and_kill().await;
    let b = server(deployment(redis.url(), 7)).await;
    assert_eq!(owner_of(&b), Some(PrefixOwner::Unchecked));
    let health = http.get(&format!("{}/healthz", b.url())).await.json();
    assert_eq!(health["redis_prefix_owner"], "unchecked", "{health}");
    redis.restart();
    assert!(
        eventually(Duration::from_secs(10), || owner_of(&b)
            == Some(PrefixOwner::Other))
        .await,
        "B did not read A's record once Redis was back: {:?}",
        owner_of(&b)
    );
    assert_eq!(b.app.tier.redis_degraded(), Some(false), "Redis is back");
    let reference = alone(7).await;
    assert_eq!(
        digest(&http.ok(&b, &body).await),
        digest(&http.ok(&reference, &body).await)
    );
    assert_eq!(b.app.metrics.cache.tile_hits.load(Relaxed), 0);
    for s in [b, reference] {
        s.shutdown().await;
    }
}

/// The same on a Redis Cluster: the record is one key in one slot, read and written through
/// the cluster client on that slot's master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_deployment_on_a_clusters_prefix_refuses_it() {
    if !redis_available() {
        return;
    }
    let cluster = RedisCluster::start();
    let http = Http::new();
    let t = densest(&origin(42, 5_000));
    let a = server(deployment(cluster.url.clone(), 42)).await;
    let from_a = http.ok(&a, &ask(42, t)).await;
    let same = server(deployment(cluster.url.clone(), 42)).await;
    assert_eq!(owner_of(&same), Some(PrefixOwner::This));
    assert_eq!(digest(&http.ok(&same, &ask(42, t)).await), digest(&from_a));
    assert_eq!(same.app.metrics.origin_calls(), 0);
    let b = server(deployment(cluster.url.clone(), 7)).await;
    assert_eq!(owner_of(&b), Some(PrefixOwner::Other));
    let reference = alone(7).await;
    let body = ask(42, t);
    assert_eq!(
        digest(&http.ok(&b, &body).await),
        digest(&http.ok(&reference, &body).await)
    );
    for s in [a, same, b, reference] {
        s.shutdown().await;
    }
}
