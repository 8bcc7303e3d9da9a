//! The Redis tier's fast path (items stored as the JSON text they are served as, spliced
//! into the answer without parsing; `server/src/stored.rs`) answers exactly what the
//! in-process tier and the origin answer, for every tier, cold and warm; and a value that
//! is not in the current storage format is never served as one.

use std::sync::atomic::Ordering::Relaxed;

use tilewarm::access::Access;
use tilewarm::tile::TileId;

use crate::common::{config, redis_available, server, token_for, Config, Http, RedisServer};
use crate::{densest, origin, request};

/// The body with every `ttl` removed (seconds left depend on when each tier wrote it).
fn without_ttls(body: &[u8]) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_slice(body).expect("JSON body");
    for key in ["tiles", "items"] {
        for entry in v[key].as_array_mut().expect("an array").iter_mut() {
            entry.as_object_mut().expect("an object").remove("ttl");
        }
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_fast_path_answers_what_the_in_process_tier_answers_for_every_tier() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let quiet = || Config {
        warmup_ring: 0,
        ..config()
    };
    let local = server(quiet()).await;
    let shared = server(Config {
        redis: Some(redis.url()),
        redis_timeout_ms: 500,
        ..quiet()
    })
    .await;
    let o = origin(42, 5_000);
    let t = densest(&o);
    // Mixed tiers in one tile; a finer tile (position filter), a coarser one (split onto
    // data tiles), ids of every tier and one that does not exist.
    let ids: Vec<String> = Access::ALL
        .iter()
        .filter_map(|&a| {
            o.tile_items(t, Access::Agent)
                .find(|i| i.access == a)
                .map(|i| i.id.clone())
        })
        .collect();
    assert_eq!(ids.len(), 4, "the densest tile holds items of every tier");
    let mut asked: Vec<&str> = ids.iter().map(String::as_str).collect();
    asked.push("no-such-home");
    let finer = t.children().unwrap()[1];
    let coarser: TileId = t.ancestor(13).unwrap();
    let requests = [
        (vec![t], vec![]),
        (vec![finer, t.offset(1, 0).unwrap()], asked.clone()),
        (vec![coarser], asked.clone()),
        (vec![], asked.clone()),
    ];
    for tier in Access::ALL {
        let http = Http::with_token(Some(token_for(tier)));
        for (tiles, ids) in &requests {
            let body = request(tiles, ids, tier);
            let mut answers = Vec::new();
            // Cold (from the origin, written back), then warm (from the tier).
            for _ in 0..2 {
                for s in [&local, &shared] {
                    let r = http.batch(s, &body).await;
                    assert_eq!(r.status, 200, "{}", r.text());
                    answers.push(without_ttls(&r.body));
                }
            }
            for a in &answers[1..] {
                assert_eq!(a, &answers[0], "{tier:?} {body}");
            }
            let items = answers[0]["items"].as_array().unwrap();
            assert!(
                items
                    .iter()
                    .all(|it| tier.can_see(it["access"].as_str().unwrap().parse().unwrap())),
                "{tier:?} got an item above its tier"
            );
        }
    }
    let m = &shared.app.metrics;
    assert!(m.cache.tile_hits.load(Relaxed) > 0 && m.cache.id_hits.load(Relaxed) > 0);
    local.shutdown().await;
    shared.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_not_in_the_storage_format_are_misses_never_answers() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let shared = server(Config {
        redis: Some(redis.url()),
        redis_timeout_ms: 500,
        redis_prefix: "fp:".into(),
        warmup_ring: 0,
        ..config()
    })
    .await;
    let o = origin(42, 5_000);
    let t = densest(&o);
    let http = Http::with_token(Some(token_for(Access::Agent)));
    let body = request(&[t], &[], Access::Agent);
    let want = without_ttls(&http.batch(&shared, &body).await.body);
    let id = want["items"][0]["id"].as_str().unwrap().to_string();
    let keys = tilewarm_server::stored::Keys::new("fp:");
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // The tile as the previous format stored it (its ids, an expiry far ahead, version
    // byte 2), under the new key: the tile is then a miss and refetched, not answered.
    let mut list = id.clone().into_bytes();
    list.extend_from_slice(&u64::MAX.to_le_bytes());
    list.push(2);
    let _: () = redis::cmd("SET")
        .arg(keys.tile(t))
        .arg(list)
        .query_async(&mut conn)
        .await
        .unwrap();
    let calls = shared.app.metrics.origin_calls();
    let again = without_ttls(&http.batch(&shared, &body).await.body);
    assert_eq!(again, want);
    assert_eq!(shared.app.metrics.origin_calls(), calls + 1, "refetched");
    // The item as the format before that stored it (a JSON object), under the new item
    // key: a request by id is a miss and refetched.
    let old = serde_json::json!({"id": id, "lon": 0.0, "lat": 0.0, "class": "x",
        "access": "public", "exp": u64::MAX, "data": {"forged": true}});
    let _: () = redis::cmd("SET")
        .arg(keys.item(&id))
        .arg(old.to_string())
        .query_async(&mut conn)
        .await
        .unwrap();
    let by_id = request(&[], &[&*id], Access::Agent);
    let answer = without_ttls(&http.batch(&shared, &by_id).await.body);
    assert_eq!(answer["items"][0], want["items"][0]);
    assert_eq!(shared.app.metrics.origin_calls(), calls + 2, "refetched");
    shared.shutdown().await;
}
