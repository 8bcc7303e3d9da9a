//! Invalidation by id of an item that moved to another data tile (cars, listings): no
//! layer of the server serves the copy cached before the move once the id is invalidated.
//! In Redis a tile's value holds copies of its items and an id's invalidation finds them by
//! the position its item key holds, which names the new tile once the moved item was written
//! again (`docs/server.md`, *Invalidation and the copies in tile values*).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use axum::body::Bytes as AxBytes;
use axum::extract::State;
use axum::routing::post;
use axum::Router;
use tilewarm::origin::Origin;
use tilewarm::protocol::{decode_request, Item, Limits, RawData};
use tilewarm::{Access, TileId};
use tilewarm_server::Server;

use crate::common::{config, redis_available, server, Config, Http, RedisCluster, RedisServer};
use crate::invalidate::admin_invalidates;
use crate::request;

/// An upstream whose items can move: it answers honestly from the items it holds now.
struct Moving(Mutex<Origin<RawData>>);

impl Moving {
    /// Car `x` moves to `tile`, its data now `{"v":v}`; car `y` stays in tile A.
    fn move_x(&self, tile: TileId, v: u32) {
        let a = tiles().0;
        *self.0.lock().unwrap() = Origin::new(vec![item("x", tile, v), item("y", a, 1)]).unwrap();
    }
}

async fn answer(State(m): State<Arc<Moving>>, body: AxBytes) -> String {
    let req = decode_request(&body, &Limits::default()).unwrap();
    let origin = m.0.lock().unwrap().clone();
    origin.answer(&req, Some(60)).to_json()
}

/// Item `id` at the centre of `tile`, its data `{"v":v}`.
fn item(id: &str, tile: TileId, v: u32) -> Item<RawData> {
    let b = tile.bounds();
    Item {
        id: id.into(),
        lon: (b.west + b.east) / 2.0,
        lat: (b.south + b.north) / 2.0,
        class: "active".into(),
        access: Access::Public,
        ttl: None,
        data: serde_json::value::to_raw_value(&serde_json::json!({ "v": v })).unwrap(),
    }
}

/// The upstream on a free loopback port, holding `items`: its state and its URL.
async fn moving(items: Vec<Item<RawData>>) -> (Arc<Moving>, String) {
    let m = Arc::new(Moving(Mutex::new(Origin::new(items).unwrap())));
    let app = Router::new()
        .route("/v1/batch", post(answer))
        .with_state(Arc::clone(&m));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/batch", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (m, url)
}

/// The tile the moving car starts in, and the one east of it it moves to.
fn tiles() -> (TileId, TileId) {
    let a = TileId::from_lon_lat(-122.33, 47.61, 14).unwrap();
    (a, a.offset(1, 0).unwrap())
}

/// A server over a [`moving`] upstream holding cars `x` and `y` in tile A, with the Redis at
/// `redis` as its shared tier (none: the in-process tier alone): the upstream and the server.
async fn over_moving(redis: Option<String>) -> (Arc<Moving>, Server) {
    let a = tiles().0;
    let (up, upstream) = moving(vec![item("x", a, 1), item("y", a, 1)]).await;
    let s = server(Config {
        origin: Some(upstream),
        origin_timeout_ms: 10_000,
        warmup_ring: 0,
        redis,
        redis_timeout_ms: 2_000,
        ..config()
    })
    .await;
    (up, s)
}

/// Tile A is cached holding car `x`, `x` moves to tile B and B is fetched (every item of a
/// fill is written under its own key too, so `x`'s item key now names B), then `x` is
/// invalidated by id: a read of A must not answer the copy of `x` from before the move (the
/// origin lists A without it now). Over the in-process tier and over Redis. Fails over
/// Redis without the unlink of the old tile at write time (`RedisTier::write`): A's value
/// still held the old copy and was a hit. (Fetching `x` by id instead does not write it
/// again while A is fresh: its item key is as fresh as A, so it is a hit.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidated_id_that_moved_tile_is_served_by_no_tile_it_was_cached_in() {
    moved_then_invalidated("in-process", None).await;
    if redis_available() {
        let redis = RedisServer::start();
        moved_then_invalidated("redis", Some(redis.url())).await;
    }
}

/// The same on a Redis Cluster, where the tile keys and the item key are in other slots
/// (the `SET … GET` answers come back per node, the unlink goes to the old tile's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidated_id_that_moved_tile_is_served_by_no_tile_on_a_cluster() {
    if !redis_available() {
        return;
    }
    let cluster = RedisCluster::start();
    moved_then_invalidated("cluster", Some(cluster.url.clone())).await;
}

async fn moved_then_invalidated(tier: &str, redis: Option<String>) {
    let (a, b) = tiles();
    let (up, s) = over_moving(redis).await;
    let http = Http::new();
    let read_a = request(&[a], &[], Access::Agent);
    let r = http.ok(&s, &read_a).await;
    assert!(r.items.iter().any(|i| i.id == "x"), "{tier}: x is in A");
    let calls = s.app.metrics.origin_calls();
    http.ok(&s, &read_a).await;
    assert_eq!(s.app.metrics.origin_calls(), calls, "{tier}: A is cached");

    up.move_x(b, 2);
    let r = http.ok(&s, &request(&[b], &[], Access::Agent)).await;
    let x = r.items.iter().find(|i| i.id == "x").expect("x is in B");
    assert_eq!(x.data.get(), r#"{"v":2}"#, "{tier}: x moved");

    admin_invalidates(&s, r#"{"ids":["x"]}"#).await;
    let r = http.ok(&s, &read_a).await;
    let old: Vec<&str> = (r.items.iter())
        .filter(|i| i.id == "x")
        .map(|i| i.data.get())
        .collect();
    assert!(
        old.is_empty(),
        "{tier}: tile A answered x {old:?} after its invalidation"
    );
    let r = http.ok(&s, &request(&[b], &["x"], Access::Agent)).await;
    assert!(
        r.items
            .iter()
            .all(|i| i.id != "x" || i.data.get() == r#"{"v":2}"#),
        "{tier}: {:?}",
        r.items
    );
    assert_eq!(
        s.app.metrics.redis_errors.load(Relaxed),
        0,
        "{tier}: no Redis error"
    );
    s.shutdown().await;
}

/// The unlink at write time spares a tile the same write filled: car `x` is cached by id in
/// tile A, moves to B, and A and B are fetched in one batch; the write replaces `x`'s copy
/// in A, and A's new value (without `x`) stays cached. Then `x` moves on to C, fetched
/// alone: B, which held `x`, is unlinked. Fails if the write unlinks the tiles it just
/// wrote (A is then fetched again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_does_not_unlink_the_tile_the_same_write_filled() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let (a, b) = tiles();
    let (up, s) = over_moving(Some(redis.url())).await;
    let http = Http::new();
    let moves = || s.app.metrics.redis_moved_items.load(Relaxed);
    http.ok(&s, &request(&[], &["x"], Access::Agent)).await;
    up.move_x(b, 2);
    let both = request(&[a, b], &[], Access::Agent);
    http.ok(&s, &both).await;
    assert_eq!(moves(), 1, "x's move from A to B");
    let calls = s.app.metrics.origin_calls();
    http.ok(&s, &both).await;
    assert_eq!(s.app.metrics.origin_calls(), calls, "A and B are cached");

    // x moves on to C, east of B, fetched alone: B held x and is unlinked.
    let c = b.offset(1, 0).unwrap();
    up.move_x(c, 3);
    http.ok(&s, &request(&[c], &[], Access::Agent)).await;
    assert_eq!(moves(), 2, "x's move from B to C");
    let calls = s.app.metrics.origin_calls();
    let r = http.ok(&s, &request(&[b], &[], Access::Agent)).await;
    assert!(r.items.iter().all(|i| i.id != "x"), "{:?}", r.items);
    assert_eq!(s.app.metrics.origin_calls(), calls + 1, "B was unlinked");
    s.shutdown().await;
}
