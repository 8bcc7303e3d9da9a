//! Loopback integration tests of `tilewarm-server`: one test binary, servers spawned in
//! process on 127.0.0.1:0, a real `redis-server` for the shared-tier tests.

mod admission;
mod auth;
mod class_generations;
mod cluster;
mod common;
mod empty_blocks;
mod fastpath;
mod feed;
mod invalidate;
mod jwks_rotation;
mod logs;
mod moved;
mod openapi;
mod overload;
mod owner;
mod pause_relay;
mod postgis;
mod redis;
mod tiers;
mod tiles;
mod trusted_proxy;
mod upstream;
mod upstream_feed;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use common::{config, eventually, server, Http};
use tilewarm::access::Access;
use tilewarm::dataset::synthetic_city;
use tilewarm::origin::Origin;
use tilewarm::protocol::{BatchRequest, BatchResponse, ErrorBody, ErrorCode, RawData};
use tilewarm::tile::TileId;
use tilewarm_server::origin::{
    Answer, ItemBound, ItemCount, OriginBackend, OriginFailure, OriginFuture,
};

/// The test city's origin, built the same way as the server's.
fn origin(seed: u64, n: usize) -> Origin<RawData> {
    Origin::new(synthetic_city(seed, n)).unwrap()
}

/// The densest data tile of the test city.
fn densest(o: &Origin<RawData>) -> TileId {
    o.occupied_tiles(14)
        .into_iter()
        .max_by_key(|&(_, n)| n)
        .unwrap()
        .0
}

fn request(tiles: &[TileId], ids: &[&str], access: Access) -> String {
    BatchRequest {
        tiles: tiles.to_vec(),
        ids: ids.iter().map(|s| s.to_string()).collect(),
        access,
    }
    .to_json()
}

/// A server over `items` in memory (items kept 300 s), started with `config`.
async fn serving(
    items: Vec<tilewarm::protocol::Item<RawData>>,
    config: common::Config,
) -> tilewarm_server::Server {
    let backend = tilewarm_server::origin::memory::MemoryOrigin::new(
        Origin::new(items).unwrap(),
        300,
        "test".into(),
    );
    tilewarm_server::start_with_origin(config, Box::new(backend), Arc::default())
        .await
        .unwrap()
}

/// A server over the [`Scripted`] origin `origin`, started with `config`.
async fn scripted<T: Scripted>(config: common::Config, origin: T) -> tilewarm_server::Server {
    tilewarm_server::start_with_origin(config, Box::new(Test(origin)), Arc::default())
        .await
        .unwrap()
}

/// Per tile: the set of ids; items: id → (lon, lat, class, access, data).
type Digest = (
    BTreeMap<String, BTreeSet<String>>,
    BTreeMap<String, (f64, f64, String, Access, String)>,
    BTreeSet<String>,
);

fn digest(r: &tilewarm::protocol::BatchResponse<RawData>) -> Digest {
    let tiles = r
        .tiles
        .iter()
        .map(|t| (t.tile.to_string(), t.ids.iter().cloned().collect()))
        .collect();
    let items = r
        .items
        .iter()
        .map(|i| {
            let v = (
                i.lon,
                i.lat,
                i.class.clone(),
                i.access,
                i.data.get().to_string(),
            );
            (i.id.clone(), v)
        })
        .collect();
    (tiles, items, r.missing.iter().cloned().collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_round_trip_matches_the_origin_at_every_zoom() {
    let o = origin(42, 5_000);
    let t14 = densest(&o);
    let (_, sample) = o
        .tile_items(t14, Access::Public)
        .next()
        .map(|it| (it.id.clone(), it))
        .unwrap();
    // Finer than the data zoom: the z16 tile of a home in the densest tile.
    let t16 = TileId::from_lon_lat(sample.lon, sample.lat, 16).unwrap();
    let t13 = t14.ancestor(13).unwrap(); // split onto 4 data tiles
    let t10 = t14.ancestor(10).unwrap(); // direct from the origin
    let far = TileId::new(14, 0, 0).unwrap(); // empty
    let ids = [sample.id.as_str(), "no-such-home"];
    let http = Http::new();
    let s = server(config()).await;

    for tiles in [vec![t14], vec![t16, t13], vec![t10, far, t14]] {
        let body = request(&tiles, &ids, Access::Public);
        let got = http.ok(&s, &body).await;
        let want = o.answer(
            &tilewarm::protocol::decode_request(body.as_bytes(), &Default::default()).unwrap(),
            None,
        );
        assert_eq!(digest(&got), digest(&want), "tiles {tiles:?}");
        // Every requested tile appears, in order.
        let order: Vec<TileId> = got.tiles.iter().map(|t| t.tile).collect();
        assert_eq!(order, tiles);
        // TTLs: tiles at most the tile TTL, items at most their class TTL.
        for t in &got.tiles {
            assert!(matches!(t.ttl, Some(1..=300)), "{:?}", t.ttl);
        }
        for i in &got.items {
            let max = if i.class == "active" { 300 } else { 14_400 };
            assert!(i.ttl.is_some_and(|t| t >= 1 && t <= max), "{i:?}");
        }
    }
    assert!(s.app.metrics.origin_calls_request.load(Relaxed) >= 3);

    // Asked again: the cached tiles are hits — no new origin call for tiles within the
    // split levels.
    let before = s.app.metrics.origin_calls_request.load(Relaxed);
    let body = request(&[t14, t16, t13], &[sample.id.as_str()], Access::Public);
    let again = http.ok(&s, &body).await;
    assert_eq!(s.app.metrics.origin_calls_request.load(Relaxed), before);
    let want = o.answer(
        &tilewarm::protocol::decode_request(body.as_bytes(), &Default::default()).unwrap(),
        None,
    );
    assert_eq!(digest(&again), digest(&want));
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_tiers_are_enforced_on_cached_data() {
    let o = origin(42, 5_000);
    let t = densest(&o);
    let above = |tier: Access| {
        o.tile_items(t, Access::Agent)
            .find(|it| it.access > tier)
            .map(|it| it.id.clone())
            .unwrap()
    };
    let agent_only = o
        .items()
        .iter()
        .find(|it| it.access == Access::Agent)
        .unwrap()
        .id
        .clone();
    let http = Http::new();
    let s = server(config()).await;
    // Warm the cache at the top tier first: lower tiers must still see only their share.
    let all = http
        .ok(&s, &request(&[t], &[&agent_only], Access::Agent))
        .await;
    assert!(all.missing.is_empty());
    let mut counts = Vec::new();
    for tier in Access::ALL {
        let r = http
            .ok(
                &s,
                &request(&[t], &[&agent_only, &above(Access::Public)], tier),
            )
            .await;
        for item in &r.items {
            assert!(item.access <= tier, "{tier:?} got {item:?}");
        }
        let listed: BTreeSet<&String> = r.tiles[0].ids.iter().collect();
        let want: BTreeSet<&String> = o.tile_items(t, tier).map(|it| &it.id).collect();
        assert_eq!(listed, want, "{tier:?}");
        if tier < Access::Agent {
            assert!(
                r.missing.contains(&agent_only),
                "{tier:?} sees an agent-only id"
            );
            assert!(!r.items.iter().any(|i| i.id == agent_only));
        } else {
            assert!(r.missing.is_empty());
        }
        counts.push(listed.len());
    }
    assert!(counts.windows(2).all(|w| w[0] <= w[1]) && counts[0] < counts[3]);
    // All of that came from one origin call.
    assert_eq!(s.app.metrics.origin_calls_request.load(Relaxed), 1);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_mistakes_get_4xx_json_errors() {
    let http = Http::new();
    let s = server(common::Config {
        max_tiles: 4,
        max_ids: 3,
        max_body_bytes: Some(2_000),
        max_response_items: 100,
        ..config()
    })
    .await;
    let url = format!("{}/v1/batch", s.url());
    let post = |body: &str| {
        let body = body.to_string();
        let (http, s) = (&http, &s);
        async move { http.batch(s, &body).await }
    };

    let m = post("{\"tiles\":[").await.error(400, "bad_request");
    assert!(m.contains("malformed JSON"), "{m}");
    let m = post("not json").await.error(400, "bad_request");
    assert!(m.contains("malformed JSON"), "{m}");
    let m = post(r#"{"tiles":["14/1/1"],"access":"admin"}"#)
        .await
        .error(400, "bad_request");
    assert!(
        m.contains("admin") && m.contains("public, registered, verified, agent"),
        "{m}"
    );
    let m = post(r#"{"tiles":["14/99999/1"]}"#)
        .await
        .error(400, "bad_request");
    assert!(m.contains("tiles[0]") && m.contains("14/99999/1"), "{m}");
    let m = post(r#"{"tiles":["banana"]}"#)
        .await
        .error(400, "bad_request");
    assert!(m.contains("banana"), "{m}");
    let m = post(r#"{"tiles":["14/1/1","14/1/2","14/1/3","14/1/4","14/1/5"]}"#)
        .await
        .error(400, "bad_request");
    assert!(m.contains("5 tiles") && m.contains("at most 4"), "{m}");
    let m = post(r#"{"ids":["a","b","c","d"]}"#)
        .await
        .error(400, "bad_request");
    assert!(m.contains("4 ids") && m.contains("at most 3"), "{m}");
    let m = post("{}").await.error(400, "bad_request");
    assert!(m.contains("no tiles and no ids"), "{m}");
    let m = post(r#"{"ids":[""]}"#).await.error(400, "bad_request");
    assert!(m.contains("ids[0]"), "{m}");
    let m = post(r#"{"tiles":"14/1/1"}"#)
        .await
        .error(400, "bad_request");
    assert!(!m.is_empty());
    // Too large, with a Content-Length ...
    let big = format!(r#"{{"ids":["{}"]}}"#, "x".repeat(3_000));
    let m = post(&big).await.error(413, "payload_too_large");
    assert!(m.contains("at most 2000"), "{m}");
    // ... and chunked, without one.
    let raw = raw_chunked(&s.addr, &big).await;
    assert!(raw.starts_with("HTTP/1.1 413"), "{raw}");
    assert!(raw.contains("payload_too_large"), "{raw}");
    // Too many items for one response (a whole-world tile).
    let m = post(r#"{"tiles":["0/0/0"]}"#)
        .await
        .error(400, "bad_request");
    assert!(
        m.contains("at most 100") && m.contains("finer tiles"),
        "{m}"
    );
    // Wrong content type, method, route.
    let r = http
        .send(
            "POST",
            &url,
            &[("content-type", "application/x-www-form-urlencoded")],
            "a=b",
        )
        .await;
    r.error(415, "unsupported_media_type");
    http.get(&url).await.error(405, "method_not_allowed");
    http.send("DELETE", &format!("{}/healthz", s.url()), &[], "")
        .await
        .error(405, "method_not_allowed");
    http.get(&format!("{}/nope", s.url()))
        .await
        .error(404, "not_found");
    // text/plain and no content type are read as JSON (browsers may skip the preflight).
    let ok = http
        .send(
            "POST",
            &url,
            &[("content-type", "text/plain;charset=UTF-8")],
            r#"{"ids":["x"]}"#,
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let ok = http.send("POST", &url, &[], r#"{"ids":["x"]}"#).await;
    assert_eq!(ok.status, 200, "{}", ok.text());

    assert_eq!(s.app.metrics.requests("/v1/batch", 500), 0);
    s.shutdown().await;
}

/// Sends `body` with chunked transfer encoding over a raw socket; the response head+body.
async fn raw_chunked(addr: &std::net::SocketAddr, body: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut msg = String::from(
        "POST /v1/batch HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n",
    );
    for chunk in body.as_bytes().chunks(500) {
        msg.push_str(&format!(
            "{:x}\r\n{}\r\n",
            chunk.len(),
            String::from_utf8_lossy(chunk)
        ));
    }
    msg.push_str("0\r\n\r\n");
    // The server may answer and close before reading everything; ignore write errors.
    let _ = s.write_all(msg.as_bytes()).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warmup_fills_the_neighbour_ring_off_the_request_path() {
    let o = origin(42, 5_000);
    let t = densest(&o);
    let http = Http::new();
    let s = server(config()).await;
    http.ok(&s, &request(&[t], &[], Access::Public)).await;
    let m = &s.app.metrics;
    assert!(
        eventually(Duration::from_secs(5), || m.warmup_tiles.load(Relaxed) >= 8).await,
        "warm-up wrote {} tiles",
        m.warmup_tiles.load(Relaxed)
    );
    // A neighbour is now a hit: no request-path origin call.
    let before = m.origin_calls_request.load(Relaxed);
    let east = t.offset(1, 0).unwrap();
    let r = http.ok(&s, &request(&[east], &[], Access::Public)).await;
    assert_eq!(m.origin_calls_request.load(Relaxed), before);
    let want: BTreeSet<String> = o
        .tile_items(east, Access::Public)
        .map(|i| i.id.clone())
        .collect();
    assert_eq!(
        r.tiles[0].ids.iter().cloned().collect::<BTreeSet<_>>(),
        want
    );
    s.shutdown().await;
}

/// `tilewarm_warmup_tiles` counts the tiles warm-up wrote into the tier: a neighbour over
/// `--max-tile-items`, left out of the origin's answer and not cached, is not one of them
/// (it was counted as written, the whole chunk being counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warmup_does_not_count_a_neighbour_over_the_tile_limit_as_written() {
    let o = origin(42, 5_000);
    let dense = densest(&o);
    let n = o.count_in(dense, Access::Agent);
    // A neighbour of the densest tile, with items but fewer: the limit, so that the
    // requested tile is answered and the densest, one of its ring, is over it.
    let ring = |t: TileId| tilewarm::tile::ring_around(&[t], 1).unwrap();
    let (t, limit) = ring(dense)
        .into_iter()
        .map(|t| (t, o.count_in(t, Access::Agent)))
        .filter(|&(_, c)| c >= 1 && c < n)
        .max_by_key(|&(_, c)| c)
        .unwrap();
    let ring = ring(t);
    let over = ring
        .iter()
        .filter(|&&r| o.count_in(r, Access::Agent) > limit)
        .count() as u64;
    assert!(over >= 1 && ring.len() == 8, "{over}");
    let http = Http::new();
    let s = server(common::Config {
        max_tile_items: limit,
        ..config()
    })
    .await;
    http.ok(&s, &request(&[t], &[], Access::Public)).await;
    let m = &s.app.metrics;
    let stats = &s.app.origin.stats;
    let done = || m.warmup_tiles.load(Relaxed) + stats.tiles_over_limit.load(Relaxed) >= 8;
    assert!(eventually(Duration::from_secs(5), done).await);
    assert_eq!(stats.tiles_over_limit.load(Relaxed), over);
    assert_eq!(m.warmup_tiles.load(Relaxed), 8 - over);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_warmup_queue_drops_work_instead_of_slowing_requests() {
    let o = origin(42, 5_000);
    let tiles: Vec<TileId> = o.occupied_tiles(14).into_iter().map(|(t, _)| t).collect();
    let http = Http::new();
    // A batch may wait 5 s for a slot (the default 10 ms would refuse one whose slot
    // holder was descheduled on a busy machine): this is about warm-up, not admission.
    let s = server(common::Config {
        warmup_queue: 1,
        origin_latency_ms: 40,
        max_queue_wait_ms: 5_000,
        ..config()
    })
    .await;
    let started = std::time::Instant::now();
    let futs: Vec<_> = tiles
        .iter()
        .take(24)
        .map(|&t| {
            let body = request(&[t], &[], Access::Public);
            let http = &http;
            let s = &s;
            async move { http.batch(s, &body).await.status }
        })
        .collect();
    let statuses = futures_join_all(futs).await;
    assert!(statuses.iter().all(|&st| st == 200));
    let m = &s.app.metrics;
    assert!(m.warmup_dropped.load(Relaxed) > 0, "nothing dropped");
    // 24 concurrent requests, each one origin call of 40 ms: with warm-up on the request
    // path they would queue behind each other's warm-up calls.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let text = http.metrics(&s.url()).await;
    assert!(text.contains("tilewarm_warmup_dropped_total "), "{text}");
    s.shutdown().await;
}

/// Runs futures concurrently on this task.
async fn futures_join_all<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futs {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<F::Output>> = (0..set.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|o| o.unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_static_files_and_cors() {
    let www = std::env::temp_dir().join(format!("tw-www-{}", std::process::id()));
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "<h1>tilewarm demo</h1>").unwrap();
    let http = Http::new();
    let s = server(common::Config {
        www: Some(www.clone()),
        cors: "https://demo.example".into(),
        ..config()
    })
    .await;
    let h = http.get(&format!("{}/healthz", s.url())).await;
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["status"], "ok");
    assert_eq!(h.json()["tier"], "local");
    let page = http.get(&format!("{}/", s.url())).await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains("tilewarm demo"));
    http.get(&format!("{}/missing.js", s.url()))
        .await
        .error(404, "not_found");

    let pre = http
        .send(
            "OPTIONS",
            &format!("{}/v1/batch", s.url()),
            &[
                ("origin", "https://demo.example"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "content-type"),
            ],
            "",
        )
        .await;
    assert_eq!(pre.status, 200);
    assert_eq!(
        pre.headers["access-control-allow-origin"],
        "https://demo.example"
    );
    let other = http
        .send(
            "GET",
            &format!("{}/healthz", s.url()),
            &[("origin", "https://evil.example")],
            "",
        )
        .await;
    assert!(other.headers.get("access-control-allow-origin").is_none());

    http.ok(&s, r#"{"tiles":["14/2624/5721"]}"#).await;
    let text = http.metrics(&s.url()).await;
    for name in [
        "tilewarm_http_requests_total{route=\"/v1/batch\",status=\"200\"} 1",
        "tilewarm_batch_duration_seconds_bucket{le=\"+Inf\"} 1",
        "tilewarm_batch_duration_seconds_count 1",
        "tilewarm_cache_misses_total{tier=\"local\",kind=\"tile\"} 1",
        "tilewarm_cache_hits_total{tier=\"local\",kind=\"tile\"} 0",
        "tilewarm_origin_calls_total{source=\"request\"} 1",
        "tilewarm_warmup_queue_depth ",
        "tilewarm_warmup_dropped_total 0",
        "tilewarm_origin_dataset_items 5000",
    ] {
        assert!(text.contains(name), "missing {name:?} in\n{text}");
    }
    s.shutdown().await;
    let _ = std::fs::remove_dir_all(www);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_latency_is_paid_once_per_request_and_counted() {
    let o = origin(42, 5_000);
    let tiles: Vec<TileId> = o
        .occupied_tiles(14)
        .into_iter()
        .take(16)
        .map(|(t, _)| t)
        .collect();
    let http = Http::new();
    let s = server(common::Config {
        origin_latency_ms: 100,
        warmup_ring: 0,
        ..config()
    })
    .await;
    let t0 = std::time::Instant::now();
    http.ok(&s, &request(&tiles, &["s2a-1", "s2a-2"], Access::Public))
        .await;
    let cold = t0.elapsed();
    assert!(cold >= Duration::from_millis(100));
    assert!(
        cold < Duration::from_millis(1_000),
        "16 misses must be one origin call: {cold:?}"
    );
    assert_eq!(s.app.metrics.origin_calls(), 1);
    let t1 = std::time::Instant::now();
    http.ok(&s, &request(&tiles, &["s2a-1", "s2a-2"], Access::Public))
        .await;
    assert!(
        t1.elapsed() < Duration::from_millis(100),
        "warm: {:?}",
        t1.elapsed()
    );
    assert_eq!(s.app.metrics.origin_calls(), 1);
    s.shutdown().await;
}

/// Issue 8: a stalled origin (the soak test's fault hook, 60 s on every call) makes the
/// requests that need it fail with a 504 `upstream_timeout` after `--origin-timeout-ms`,
/// instead of holding them; requests the cache tier answers do not notice; the next
/// request after the stall is answered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_origin_times_out_misses_and_leaves_hits_alone() {
    let o = origin(42, 5_000);
    let occupied: Vec<TileId> = o.occupied_tiles(14).into_iter().map(|(t, _)| t).collect();
    let (warm, cold) = (&occupied[..4], &occupied[4..8]);
    let http = Http::new();
    let s = server(common::Config {
        origin_timeout_ms: 200,
        warmup_ring: 0,
        ..config()
    })
    .await;
    let warm_body = request(warm, &[], Access::Public);
    let cold_body = request(cold, &[], Access::Public);
    let before = http.ok(&s, &warm_body).await;

    s.app.origin.set_stall_ms(60_000);
    let ids = |r: &tilewarm::protocol::BatchResponse<RawData>| {
        r.tiles.iter().map(|t| t.ids.clone()).collect::<Vec<_>>()
    };
    assert_eq!(ids(&http.ok(&s, &warm_body).await), ids(&before));
    let r = http.batch(&s, &cold_body).await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "upstream_timeout");
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("200 ms"), "{message}");
    assert_eq!(s.app.metrics.origin_timeouts.load(Relaxed), 1);

    s.app.origin.set_stall_ms(0);
    let after = http.ok(&s, &cold_body).await;
    assert_eq!(after.tiles.len(), cold.len());
    let metrics = http.metrics(&s.url()).await;
    assert!(
        metrics.contains("tilewarm_origin_timeouts_total 1"),
        "{metrics}"
    );
    s.shutdown().await;
}

/// Warm-up's origin calls are bounded by `--origin-timeout-ms` too: with the origin stalled
/// for a minute, a job ends after the timeout (counted) and releases its tiles, which a job
/// warms once the origin is back and their retry delay (`WARM_RETRY_MS`) has passed: not
/// the next request's job at once, or a failing origin would get a warm-up call per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_origin_ends_warmup_jobs_at_the_timeout_and_frees_their_tiles() {
    let o = origin(42, 5_000);
    let t = densest(&o);
    let http = Http::new();
    let s = server(common::Config {
        origin_timeout_ms: 200,
        warmup_ring: 1,
        ..config()
    })
    .await;
    let m = &s.app.metrics;
    http.ok(&s, &request(&[t], &[], Access::Public)).await;
    assert!(
        eventually(Duration::from_secs(5), || m.warmup_tiles.load(Relaxed) >= 8).await,
        "warm-up wrote {} tiles",
        m.warmup_tiles.load(Relaxed)
    );
    let warmed = m.warmup_tiles.load(Relaxed);

    // The east neighbour is cached; its ring's far column is not, and the origin stalls.
    s.app.origin.set_stall_ms(60_000);
    let east = request(&[t.offset(1, 0).unwrap()], &[], Access::Public);
    http.ok(&s, &east).await;
    let gave_up = || m.warmup_timeouts.load(Relaxed) >= 1;
    assert!(
        eventually(Duration::from_secs(5), gave_up).await,
        "no warm-up job gave up on the stalled origin"
    );
    assert_eq!(m.warmup_tiles.load(Relaxed), warmed);

    let timed_out = std::time::Instant::now();

    // Origin back: a request at once does not warm the ring again (its tiles wait)...
    s.app.origin.set_stall_ms(0);
    http.ok(&s, &east).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(m.warmup_tiles.load(Relaxed), warmed);
    // ...one after the retry delay does, so the timed-out job released its claim.
    let retry = Duration::from_millis(tilewarm::proxy::WARM_RETRY_MS);
    tokio::time::sleep((timed_out + retry).saturating_duration_since(std::time::Instant::now()))
        .await;
    http.ok(&s, &east).await;
    let warmed_more = || m.warmup_tiles.load(Relaxed) > warmed;
    assert!(
        eventually(Duration::from_secs(5), warmed_more).await,
        "the far column was never warmed after the timeout"
    );
    let metrics = http.metrics(&s.url()).await;
    assert!(
        metrics.contains("tilewarm_warmup_timeouts_total 1"),
        "{metrics}"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_files_king_county_csv_and_json_lines() {
    let dir = std::env::temp_dir().join(format!("tw-data-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let csv = dir.join("kc.csv");
    std::fs::write(
        &csv,
        "id,date,price,bedrooms,bathrooms,sqft_living,yr_built,zipcode,lat,long\n\
         7129300520,20141013T000000,221900,3,1,1180,1955,98178,47.5112,-122.257\n\
         6414100192,20141209T000000,538000,3,2.25,2570,1951,98125,47.721,-122.319\n\
         7129300520,20150105T000000,250000,3,1,1180,1955,98178,47.5112,-122.257\n",
    )
    .unwrap();
    let jsonl = dir.join("homes.jsonl");
    std::fs::write(
        &jsonl,
        "{\"id\":\"h1\",\"lon\":2.3522,\"lat\":48.8566,\"class\":\"active\",\"access\":\"public\",\"ttl\":60,\"data\":{\"p\":1}}\n\
         {\"id\":\"h2\",\"lon\":2.3523,\"lat\":48.8567,\"class\":\"off_market\",\"access\":\"agent\",\"data\":null}\n",
    )
    .unwrap();
    let http = Http::new();

    let s = server(common::Config {
        data: Some(csv),
        ..config()
    })
    .await;
    assert_eq!(
        s.app.origin.dataset_items().unwrap(),
        2,
        "a resale is one home"
    );
    let r = http
        .ok(
            &s,
            r#"{"ids":["7129300520","6414100192"],"access":"agent"}"#,
        )
        .await;
    assert_eq!(r.items.len(), 2);
    let sold = r.items.iter().find(|i| i.id == "7129300520").unwrap();
    assert!(
        sold.data.get().contains("\"price\":250000"),
        "{}",
        sold.data.get()
    );
    s.shutdown().await;

    let s = server(common::Config {
        data: Some(jsonl),
        ..config()
    })
    .await;
    let t = TileId::from_lon_lat(2.3522, 48.8566, 14).unwrap();
    let r = http.ok(&s, &request(&[t], &[], Access::Public)).await;
    assert_eq!(r.tiles[0].ids, ["h1"]);
    assert_eq!(
        r.items[0].ttl,
        Some(60),
        "the origin's ttl wins over the class TTL"
    );
    assert_eq!(r.items[0].data.get(), r#"{"p":1}"#);
    let r = http.ok(&s, &request(&[t], &[], Access::Agent)).await;
    assert_eq!(r.tiles[0].ids.len(), 2);
    s.shutdown().await;

    let bad = dir.join("homes.txt");
    std::fs::write(&bad, "x").unwrap();
    let e = tilewarm_server::start(common::Config {
        data: Some(bad),
        ..config()
    })
    .await
    .err()
    .unwrap();
    assert!(e.to_string().contains(".jsonl"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}

/// A test origin: how it answers (and, when it does, what it leaves out, its count and
/// kind). [`Test`] makes it an [`OriginBackend`], so that each states only what it does.
trait Scripted: Send + Sync + 'static {
    /// Its [`OriginBackend::kind`]: `upstream` (out of process: a request waiting for it
    /// gives back its slot) unless it says `memory`.
    const KIND: &'static str = "upstream";

    /// Its answer to `request` (a bound is ignored, as an upstream must).
    fn answer<'a>(
        &'a self,
        request: &'a BatchRequest,
    ) -> OriginFuture<'a, Result<BatchResponse<RawData>, OriginFailure>>;

    /// Its answer `a` under the per-tile limit, with what else it leaves out (nothing).
    fn leave_out(&self, _request: &BatchRequest, a: Answer) -> Answer {
        a
    }

    /// The items in `tiles` visible at `access`: unknown unless it counts.
    fn count(&self, _tiles: &[TileId], _access: Access) -> ItemCount {
        ItemCount::Unknown
    }

    /// Its [`OriginBackend::describe`]: its type's name unless it says.
    fn describe(&self) -> String {
        std::any::type_name::<Self>().into()
    }
}

/// A [`Scripted`] origin as the server's backend.
struct Test<T>(T);

impl<T: Scripted> OriginBackend for Test<T> {
    fn kind(&self) -> &'static str {
        T::KIND
    }

    fn answer<'a>(
        &'a self,
        request: &'a BatchRequest,
        _bound: Option<ItemBound<'a>>,
    ) -> OriginFuture<'a, Result<BatchResponse<RawData>, OriginFailure>> {
        self.0.answer(request)
    }

    fn answer_limited<'a>(
        &'a self,
        request: &'a BatchRequest,
        bound: Option<ItemBound<'a>>,
        tile_limit: usize,
    ) -> OriginFuture<'a, Result<Answer, OriginFailure>> {
        Box::pin(async move {
            let r = self.0.answer(request).await?;
            let a = Answer::limit_lists(r, tile_limit, bound, request.access);
            Ok(self.0.leave_out(request, a))
        })
    }

    fn count_up_to<'a>(
        &'a self,
        tiles: &'a [TileId],
        access: Access,
        _limit: usize,
    ) -> OriginFuture<'a, Result<ItemCount, OriginFailure>> {
        let n = self.0.count(tiles, access);
        Box::pin(async move { Ok(n) })
    }

    fn describe(&self) -> String {
        self.0.describe()
    }
}

/// A data set that grows between a request's count and its fetch: counts answer from
/// `before`, fetches from `after`. The fetch ignores its bound (as an upstream must), so what
/// stands between the grown data and the response is the origin service's check. A fetch
/// answers once `gate` has a permit.
struct GrowsAfterTheCount {
    before: Origin<RawData>,
    after: Origin<RawData>,
    gate: Arc<tokio::sync::Semaphore>,
}

impl GrowsAfterTheCount {
    /// The test city, whose densest zoom-10 tile holds 3 items before and more than
    /// `10 * max` for the public after; with that tile and a data tile elsewhere holding 1 to
    /// `max` public items.
    fn city(max: usize, gate: Arc<tokio::sync::Semaphore>) -> (GrowsAfterTheCount, TileId, TileId) {
        let items = synthetic_city(11, 3_000);
        let after = Origin::new(items.clone()).unwrap();
        let (t10, _) = after
            .occupied_tiles(10)
            .into_iter()
            .max_by_key(|x| x.1)
            .unwrap();
        let grown: HashSet<String> = after
            .tile_items(t10, Access::Agent)
            .skip(3)
            .map(|it| it.id.clone())
            .collect();
        let before = Origin::new(
            items
                .into_iter()
                .filter(|it| !grown.contains(&it.id))
                .collect(),
        )
        .unwrap();
        assert!(before.count_in(t10, Access::Public) <= max);
        assert!(after.count_in(t10, Access::Public) > 10 * max);
        let d = after
            .occupied_tiles(14)
            .into_iter()
            .map(|(t, _)| t)
            .filter(|t| t.ancestor(10).unwrap() != t10)
            .find(|&t| (1..=max).contains(&after.count_in(t, Access::Public)))
            .unwrap();
        let origin = GrowsAfterTheCount {
            before,
            after,
            gate,
        };
        (origin, t10, d)
    }
}

impl Scripted for GrowsAfterTheCount {
    fn answer<'a>(
        &'a self,
        request: &'a BatchRequest,
    ) -> OriginFuture<'a, Result<BatchResponse<RawData>, OriginFailure>> {
        Box::pin(async move {
            drop(self.gate.acquire().await);
            Ok(self.after.answer(request, Some(60)))
        })
    }

    fn count(&self, tiles: &[TileId], access: Access) -> ItemCount {
        ItemCount::Exact(tiles.iter().map(|&t| self.before.count_in(t, access)).sum())
    }
}

impl GrowsAfterTheCount {
    /// A server over [`Self::city`] answering at most `max` items a response.
    async fn serve(
        max: usize,
        gate: Arc<tokio::sync::Semaphore>,
    ) -> (tilewarm_server::Server, TileId, TileId) {
        let (origin, t10, d) = GrowsAfterTheCount::city(max, gate);
        let c = common::Config {
            max_response_items: max,
            warmup_ring: 0,
            ..config()
        };
        (scripted(c, origin).await, t10, d)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coarse_tile_that_grew_after_its_count_is_refused_and_nothing_is_cached() {
    let max = 10;
    let open = Arc::new(tokio::sync::Semaphore::new(1));
    let (s, t10, d) = GrowsAfterTheCount::serve(max, open).await;
    let http = Http::with_token(Some(common::token_for(Access::Public)));

    let msg = http
        .batch(&s, &request(&[t10, d], &[], Access::Public))
        .await
        .error(400, "bad_request");
    assert!(
        msg.contains(&format!("more than {max} items")) && msg.contains("request finer tiles"),
        "{msg}"
    );
    // The count let it through; the fetch's bound refused it ...
    assert_eq!(s.app.metrics.origin_calls_request.load(Relaxed), 1);
    assert_eq!(s.app.origin.stats.over_bound.load(Relaxed), 1);
    let m = http.metrics(&s.url()).await;
    assert!(m.contains("tilewarm_origin_over_bound_total 1"), "{m}");
    // ... and nothing of the call was cached, though the tier takes the data tile.
    assert!(s.app.tier.read(&[d], &[]).await.unwrap().tiles[0].is_none());
    let r = http.ok(&s, &request(&[d], &[], Access::Public)).await;
    assert!(!r.tiles[0].ids.is_empty());
    assert!(s.app.tier.read(&[d], &[]).await.unwrap().tiles[0].is_some());
    s.shutdown().await;
}

/// Sends `leader`, which leads its data tile and waits at `gate` in the origin, then
/// `follower`, which follows that tile; opens the gate once both wait. Their replies.
async fn lead_then_follow(
    s: &tilewarm_server::Server,
    http: &Http,
    gate: &tokio::sync::Semaphore,
    leader: &str,
    follower: &str,
) -> (common::Reply, common::Reply) {
    let within = Duration::from_secs(20);
    tokio::join!(http.batch(s, leader), async {
        assert!(eventually(within, || s.app.single_flight.len() == 1).await);
        let follow = http.batch(s, follower);
        let open = async {
            assert!(eventually(within, || s.app.origin_waits.waiting() == 2).await);
            gate.add_permits(1);
        };
        tokio::join!(follow, open).0
    })
}

/// [`lead_then_follow`] with an `agent` request for data tile `d` and `ids` leading and a
/// `public` one for `d` following (both sent with an agent's token).
async fn agent_then_public(
    s: &tilewarm_server::Server,
    gate: &tokio::sync::Semaphore,
    d: TileId,
    ids: &[&str],
) -> (common::Reply, common::Reply) {
    let leader = request(&[d], ids, Access::Agent);
    let follower = request(&[d], &[], Access::Public);
    lead_then_follow(s, &Http::new(), gate, &leader, &follower).await
}

/// A request following a data tile whose leader's fetch is refused for the leader's own
/// coarse tiles is not handed that refusal: it fetches the tile itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_following_a_fetch_refused_for_its_size_fetches_its_tiles_itself() {
    let max = 10;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (s, t10, d) = GrowsAfterTheCount::serve(max, Arc::clone(&gate)).await;
    let http = Http::with_token(Some(common::token_for(Access::Public)));
    let (coarse, fine) = (
        request(&[t10, d], &[], Access::Public),
        request(&[d], &[], Access::Public),
    );
    let (led, followed) = lead_then_follow(&s, &http, &gate, &coarse, &fine).await;
    let msg = led.error(400, "bad_request");
    assert!(msg.contains(&format!("more than {max} items")), "{msg}");
    assert_eq!(followed.status, 200, "{}", followed.text());
    assert!(!followed.json()["tiles"][0]["ids"]
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(s.app.metrics.origin_calls_request.load(Relaxed), 2);
    s.shutdown().await;
}

/// What [`TroubleOverAnId`] does with a call naming its id.
enum IdTrouble {
    /// Refuses it as the caller's mistake (an upstream's 400 naming the id).
    Refuse,
    /// Answers without the id (neither an item nor `missing`: the shape guard fails the
    /// call, a 502 naming the id).
    LeaveOut,
    /// Answers as an upstream's partial answer that leaves every requested tile out, its
    /// `error` naming them with a message only an agent may read ("... holds 99 items").
    TellTiles,
    /// Answers as an upstream's partial answer that sheds load: every requested tile left
    /// out as `overloaded` (a 200, no `Retry-After`).
    Shed,
}

/// An origin that answers from a synthetic city once `gate` has a permit, with trouble
/// ([`IdTrouble`]) over the id `id`.
struct TroubleOverAnId {
    city: Origin<RawData>,
    gate: Arc<tokio::sync::Semaphore>,
    id: String,
    trouble: IdTrouble,
}

impl Scripted for TroubleOverAnId {
    fn answer<'a>(
        &'a self,
        request: &'a BatchRequest,
    ) -> OriginFuture<'a, Result<BatchResponse<RawData>, OriginFailure>> {
        Box::pin(async move {
            drop(self.gate.acquire().await);
            let mut r = self.city.answer(request, Some(60));
            match self.trouble {
                IdTrouble::Refuse if request.ids.contains(&self.id) => {
                    return Err(OriginFailure::Refused {
                        error: ErrorBody {
                            code: ErrorCode::BadRequest,
                            message: format!("unknown id {:?}", self.id),
                        },
                        asked: request.access,
                    });
                }
                IdTrouble::Refuse | IdTrouble::TellTiles | IdTrouble::Shed => {}
                IdTrouble::LeaveOut => {
                    r.items.retain(|it| it.id != self.id);
                    r.missing.retain(|id| *id != self.id);
                }
            }
            Ok(r)
        })
    }

    fn leave_out(&self, request: &BatchRequest, mut a: Answer) -> Answer {
        let told = match self.trouble {
            IdTrouble::TellTiles => Some((ErrorCode::PayloadTooLarge, "the tile holds 99 items")),
            IdTrouble::Shed => Some((ErrorCode::Overloaded, "at capacity: retry later")),
            IdTrouble::Refuse | IdTrouble::LeaveOut => None,
        };
        if let Some((code, message)) = told {
            a.response.tiles.clear();
            a.unanswered = Some(tilewarm::protocol::Unanswered {
                code,
                message: message.into(),
                tiles: request.tiles.clone(),
                ids: Vec::new(),
            });
        }
        a
    }
}

/// A server with `config` over [`TroubleOverAnId`] on a synthetic city, the id `pick`
/// picks given the city and its densest data tile; with the gate, that tile and the id.
async fn trouble_over_an_id(
    config: common::Config,
    trouble: IdTrouble,
    pick: impl FnOnce(&Origin<RawData>, TileId) -> String,
) -> (
    tilewarm_server::Server,
    Arc<tokio::sync::Semaphore>,
    TileId,
    String,
) {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let city = Origin::new(synthetic_city(12, 2_000)).unwrap();
    let (d, _) = city
        .occupied_tiles(14)
        .into_iter()
        .max_by_key(|x| x.1)
        .unwrap();
    let id = pick(&city, d);
    let origin = TroubleOverAnId {
        city,
        gate: Arc::clone(&gate),
        id: id.clone(),
        trouble,
    };
    (scripted(config, origin).await, gate, d, id)
}

/// A request following a data tile whose leader's origin call is refused for the leader's
/// own request (an upstream 400 about an id only the leader asked for) is not handed that
/// refusal, nor its message, which names what the leader asked: it fetches the tile itself.
/// (The leader asks at `agent`, the tier the server asks its origin at: below it, an
/// upstream's message is not passed on, `OriginFailure::for_caller`.) Backend trouble (502, 504, 429, 503) is still shared (`followers_hear_failures_and_abandonment`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_following_a_fetch_refused_for_the_leaders_ids_fetches_its_tiles_itself() {
    let no_warmup = common::Config {
        warmup_ring: 0,
        ..config()
    };
    let (s, gate, d, id) = trouble_over_an_id(no_warmup, IdTrouble::Refuse, |_, _| {
        "no-such-home-42".into()
    })
    .await;
    let (led, followed) = agent_then_public(&s, &gate, d, &[id.as_str()]).await;
    let msg = led.error(400, "bad_request");
    assert!(msg.contains(&id), "{msg}");
    assert_eq!(followed.status, 200, "{}", followed.text());
    assert!(!followed.text().contains(&id));
    assert!(!followed.json()["tiles"][0]["ids"]
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(s.app.metrics.origin_calls_request.load(Relaxed), 2);
    s.shutdown().await;
}

/// A request following a data tile whose leader's origin call failed shares the failure
/// (a 502: the backend cannot answer now), but not its message, which says what the
/// leader asked: here the shape guard's, naming the first id the answer left out, an
/// `agent` item's that an `agent` leader asked for by id, which a `public` follower of the
/// tile must not see. Fails without the follower's own message (the id in its 502).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_shared_with_followers_does_not_name_what_the_leader_asked() {
    let no_warmup = common::Config {
        warmup_ring: 0,
        ..config()
    };
    let (s, gate, d, secret) = trouble_over_an_id(no_warmup, IdTrouble::LeaveOut, |city, d| {
        city.items()
            .iter()
            .find(|it| it.access == Access::Agent && !d.contains_point(it.lon, it.lat))
            .unwrap()
            .id
            .clone()
    })
    .await;
    let (led, followed) = agent_then_public(&s, &gate, d, &[secret.as_str()]).await;
    let msg = led.error(502, "upstream_error");
    assert!(msg.contains(&secret), "{msg}");
    let msg = followed.error(502, "upstream_error");
    assert!(!msg.contains(&secret), "{msg}");
    assert_eq!(s.app.metrics.origin_calls_request.load(Relaxed), 1);
    s.shutdown().await;
}

/// One request's waits for the origin share `--origin-timeout-ms`: counting a coarse
/// tile's items and then fetching them, 700 ms each with a 1 s timeout, is a 504 at the
/// timeout, not a 200 after 1.4 s. Fails without `batch::OriginDeadline` (each call had
/// the whole timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counting_and_fetching_share_one_origin_timeout() {
    let o = origin(42, 5_000);
    let d = densest(&o);
    let s = server(common::Config {
        origin_latency_ms: 700,
        origin_timeout_ms: 1_000,
        warmup_ring: 0,
        ..config()
    })
    .await;
    let http = Http::new();
    let coarse = d.ancestor(10).unwrap(); // past --split-levels (3): direct
    let msg = http
        .batch(&s, &request(&[coarse], &[], Access::Public))
        .await
        .error(504, "upstream_timeout");
    assert!(msg.contains("1000 ms (--origin-timeout-ms)"), "{msg}");
    assert_eq!(s.app.metrics.origin_timeouts.load(Relaxed), 1);
    // One call alone fits in the budget.
    http.ok(&s, &request(&[d], &[], Access::Public)).await;
    s.shutdown().await;
}

/// A request following a data tile whose leader's call is refused for the leader's own
/// request fetches the tile itself within what is left of its own budget: the leader's
/// call took 800 ms of the follower's 1 s, so the follower's 800 ms fetch is a 504 at the
/// timeout, not a 200 after 1.6 s. Fails without `batch::OriginDeadline`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_then_fetching_again_share_one_origin_timeout() {
    let slow = common::Config {
        origin_latency_ms: 800,
        origin_timeout_ms: 1_000,
        warmup_ring: 0,
        ..config()
    };
    let (s, gate, d, id) =
        trouble_over_an_id(slow, IdTrouble::Refuse, |_, _| "no-such-home-42".into()).await;
    let (led, followed) = agent_then_public(&s, &gate, d, &[id.as_str()]).await;
    led.error(400, "bad_request");
    let msg = followed.error(504, "upstream_timeout");
    assert!(msg.contains("1000 ms (--origin-timeout-ms)"), "{msg}");
    assert_eq!(s.app.metrics.origin_calls_request.load(Relaxed), 2);
    s.shutdown().await;
}

/// A request following a data tile that its leader's answer left out for holding more than
/// `--max-tile-items` reports it as the leader does: unanswered, `payload_too_large`,
/// naming the tile and the limit (counted at its own tier: a follower below `agent` asks
/// for the tile again at its tier), not as an origin that failed (`upstream_error`, "the
/// origin's answer left out ...").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_following_a_tile_over_the_tile_limit_is_told_why_it_is_left_out() {
    let c = common::Config {
        max_tile_items: 1,
        warmup_ring: 0,
        ..config()
    };
    let mut public_items = 0;
    let (s, gate, d, _) = trouble_over_an_id(c, IdTrouble::Refuse, |city, d| {
        public_items = city.count_in(d, Access::Public);
        "not-asked".into()
    })
    .await;
    assert!(public_items > 1, "{public_items}");
    let (led, followed) = agent_then_public(&s, &gate, d, &[]).await;
    assert_eq!(s.app.metrics.origin_calls_request.load(Relaxed), 2);
    for (r, says) in [
        (led, format!("tile {d} holds ")),
        (
            followed,
            format!("tile {d} holds {public_items} items a \"public\" caller may see"),
        ),
    ] {
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        assert_eq!(v["error"]["code"], "payload_too_large", "{v}");
        assert_eq!(v["error"]["tiles"], serde_json::json!([d.to_string()]));
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains(&says) && msg.contains("at most 1 are served per tile"),
            "{msg}"
        );
    }
    s.shutdown().await;

    // Named by an upstream's partial answer: its code to both, its message to the agent.
    let c = common::Config {
        warmup_ring: 0,
        ..config()
    };
    let (s, gate, d, _) =
        trouble_over_an_id(c, IdTrouble::TellTiles, |_, _| "not-asked".into()).await;
    let (led, followed) = agent_then_public(&s, &gate, d, &[]).await;
    // The follower asks for it again at its own tier (the upstream counted it at `agent`).
    assert_eq!(s.app.metrics.origin_calls_request.load(Relaxed), 2);
    for (r, says) in [
        (led, "the origin says: the tile holds 99 items"),
        (followed, "the origin left them out (payload_too_large)"),
    ] {
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        assert_eq!(v["error"]["code"], "payload_too_large", "{v}");
        assert_eq!(v["error"]["tiles"], serde_json::json!([d.to_string()]));
        let msg = v["error"]["message"].as_str().unwrap();
        // The count is of items at `agent`: the public follower does not hear it.
        assert!(
            msg.contains(says) && msg.contains("99") == says.contains("99"),
            "{msg}"
        );
    }
    s.shutdown().await;
}

/// Over any backend (here memory, read whole): a data tile over `--max-tile-items` and an
/// item over `--max-item-data-bytes` are left out of the answer and named in its `error`,
/// the rest answered. The tile's exact count (at `agent`, the tier the origin is asked at)
/// is told to an agent only; a public caller hears it is over the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_memory_a_dense_tile_and_an_oversized_item_are_left_out_and_named() {
    let mut items = synthetic_city(12, 2_000);
    let city = Origin::new(items.clone()).unwrap();
    let mut occupied = city.occupied_tiles(14);
    occupied.sort_by_key(|&(t, _)| city.count_in(t, Access::Agent));
    let sparse = occupied[occupied.len() / 2].0;
    let dense = occupied[occupied.len() - 1].0;
    let limit = city.count_in(sparse, Access::Agent);
    let n = city.count_in(dense, Access::Agent);
    assert!(limit >= 2 && n > limit, "{limit} {n}");
    // One public item of the sparse tile gets a payload over the limit.
    let big = items
        .iter_mut()
        .find(|it| {
            it.access == Access::Public
                && TileId::from_lon_lat(it.lon, it.lat, 14).unwrap() == sparse
        })
        .unwrap();
    big.data = serde_json::value::to_raw_value(&"x".repeat(1_000)).unwrap();
    let big = big.id.clone();
    let c = common::Config {
        warmup_ring: 0,
        max_tile_items: limit,
        max_item_data_bytes: 500,
        ..config()
    };
    let s = serving(items, c).await;
    let agent = Http::new();
    let r = agent
        .batch(
            &s,
            &request(&[dense, sparse], &[big.as_str()], Access::Agent),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["code"], "payload_too_large", "{v}");
    assert_eq!(v["error"]["tiles"], serde_json::json!([dense.to_string()]));
    assert_eq!(v["error"]["ids"], serde_json::json!([big]));
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("tile {dense} holds {n} items"))
            && msg.contains(&format!("at most {limit} are served per tile")),
        "{msg}"
    );
    let d = tilewarm::protocol::decode_response(&r.body, &tilewarm::protocol::Limits::default())
        .unwrap();
    assert_eq!(d.tiles.len(), 1);
    assert_eq!(d.tiles[0].ids.len(), limit - 1);
    assert!(!d.tiles[0].ids.contains(&big) && !d.items.iter().any(|it| it.id == big));
    // The item alone: named with its size and the limit.
    let r = agent
        .batch(&s, &request(&[], &[big.as_str()], Access::Agent))
        .await;
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains(&format!(
            "item \"{big}\": data is 1002 bytes, at most 500 are allowed"
        )),
        "{msg}"
    );
    // Below agent: asked again at its tier, and over the limit there too; the count is of
    // the items it may see, not of those (above its tier) the tile holds.
    let p = city.count_in(dense, Access::Public);
    assert!(p > limit && p < n, "{limit} < {p} < {n}");
    let public = Http::with_token(Some(common::token_for(Access::Public)));
    let r = public
        .batch(&s, &request(&[dense], &[], Access::Public))
        .await;
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains(&format!(
            "tile {dense} holds {p} items a \"public\" caller may see"
        )) && !msg.contains(&format!(" {n} ")),
        "{msg}"
    );
    let stats = &s.app.origin.stats;
    assert_eq!(stats.tiles_over_limit.load(Relaxed), 3);
    assert_eq!(stats.items_too_large.load(Relaxed), 2);
    s.shutdown().await;
}

/// Points evenly across the middle row of `t`, their tiers in turn from `tiers` (`n` of
/// each): each point's number (from 0), tier, longitude and latitude.
fn across_tile(t: TileId, tiers: &[(Access, usize)]) -> Vec<(usize, Access, f64, f64)> {
    let b = t.bounds();
    let all: Vec<Access> = tiers
        .iter()
        .flat_map(|&(a, n)| std::iter::repeat_n(a, n))
        .collect();
    let n = all.len();
    let lat = (b.south + b.north) / 2.0;
    (all.into_iter().enumerate())
        .map(|(i, a)| {
            let lon = b.west + (b.east - b.west) * (i + 1) as f64 / (n + 1) as f64;
            (i, a, lon, lat)
        })
        .collect()
}

/// Items across the middle row of `t`, their tiers in turn from `tiers` (`n` of each).
fn items_in_tile(t: TileId, tiers: &[(Access, usize)]) -> Vec<tilewarm::protocol::Item<RawData>> {
    (across_tile(t, tiers).into_iter())
        .map(|(i, access, lon, lat)| tilewarm::protocol::Item {
            id: format!("{t}-{access}-{i}"),
            lon,
            lat,
            class: "active".into(),
            access,
            ttl: None,
            data: serde_json::value::to_raw_value(&1).unwrap(),
        })
        .collect()
}

/// `--max-tile-items` is counted at the caller's tier (here over memory, which counts
/// exactly): a data tile over it at `agent` is asked again at a lower caller's tier and
/// served when that caller may see at most the limit; an agent hears the exact count at
/// `agent`, and a caller over the limit at its own tier hears the exact count of the items
/// it may see, never one including items above its tier. Before, the public caller lost
/// both tiles and heard "more than 10 items".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_memory_the_tile_limit_is_counted_at_the_callers_tier() {
    let limit = 10;
    let few = TileId::from_lon_lat(-122.33, 47.6, 14).unwrap();
    let many = TileId::from_lon_lat(-122.0, 47.0, 14).unwrap();
    let mut items = items_in_tile(few, &[(Access::Public, 4), (Access::Agent, 30)]);
    items.extend(items_in_tile(
        many,
        &[(Access::Public, 12), (Access::Agent, 30)],
    ));
    let c = common::Config {
        warmup_ring: 0,
        max_tile_items: limit,
        ..config()
    };
    let s = serving(items, c).await;
    let public = Http::with_token(Some(common::token_for(Access::Public)));
    let r = public
        .batch(&s, &request(&[few, many], &[], Access::Public))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["tiles"][0]["tile"], few.to_string(), "{v}");
    assert_eq!(v["tiles"][0]["ids"].as_array().unwrap().len(), 4, "{v}");
    assert_eq!(v["error"]["code"], "payload_too_large", "{v}");
    assert_eq!(v["error"]["tiles"], serde_json::json!([many.to_string()]));
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!(
            "tile {many} holds 12 items a \"public\" caller may see at the origin, at most {limit}"
        )) && !msg.contains("42"),
        "{msg}"
    );
    // The agent: the exact count at `agent`, for both.
    let r = Http::new()
        .batch(&s, &request(&[few, many], &[], Access::Agent))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["tiles"], serde_json::json!([]), "{v}");
    assert_eq!(
        v["error"]["tiles"],
        serde_json::json!([few.to_string(), many.to_string()])
    );
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("tile {few} holds 34 items at the origin")),
        "{msg}"
    );
    s.shutdown().await;
}

/// When the call again at a public caller's tier (for a tile over `--max-tile-items` at
/// `agent`) fails, only that tile is left out, with the call's code; the rest of the answer
/// is served. Before, the whole request failed with the second call's 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_call_at_the_callers_tier_leaves_out_only_its_tile() {
    let limit = 10;
    let few = TileId::from_lon_lat(-122.33, 47.6, 14).unwrap();
    let small = TileId::from_lon_lat(-122.0, 47.0, 14).unwrap();
    let mut items = items_in_tile(few, &[(Access::Public, 4), (Access::Agent, 30)]);
    items.extend(items_in_tile(small, &[(Access::Public, 3)]));
    let c = common::Config {
        warmup_ring: 0,
        max_tile_items: limit,
        ..config()
    };
    // At capacity below `agent`: the call again at the caller's tier fails.
    let backend = Busy::new(Origin::new(items).unwrap(), |r, _| r.access < Access::Agent);
    let s = scripted(c, backend).await;
    let public = Http::with_token(Some(common::token_for(Access::Public)));
    let r = public
        .batch(&s, &request(&[few, small], &[], Access::Public))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["tiles"][0]["tile"], small.to_string(), "{v}");
    assert_eq!(v["tiles"][0]["ids"].as_array().unwrap().len(), 3, "{v}");
    assert_eq!(v["tiles"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["error"]["code"], "overloaded", "{v}");
    assert_eq!(v["error"]["tiles"], serde_json::json!([few.to_string()]));
    s.shutdown().await;
}

/// A tile left out because a call failed (here the call at a public caller's tier, at
/// capacity) keeps that call's code when the same answer also leaves out an item over
/// `--max-item-data-bytes`: it was `payload_too_large` for both, so a client did not retry
/// the tile as the overload it is, and an edge held it from warming for a tile TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tile_a_failed_call_left_out_is_not_called_too_large_beside_an_item_that_is() {
    let few = TileId::from_lon_lat(-122.33, 47.6, 14).unwrap();
    let small = TileId::from_lon_lat(-122.0, 47.0, 14).unwrap();
    let mut items = items_in_tile(few, &[(Access::Public, 4), (Access::Agent, 30)]);
    let mut smalls = items_in_tile(small, &[(Access::Public, 3)]);
    smalls[0].data = serde_json::value::to_raw_value(&"x".repeat(1_000)).unwrap();
    let big = smalls[0].id.clone();
    items.extend(smalls);
    let c = common::Config {
        warmup_ring: 0,
        max_tile_items: 10,
        max_item_data_bytes: 500,
        ..config()
    };
    let backend = Busy::new(Origin::new(items).unwrap(), |r, _| r.access < Access::Agent);
    let s = scripted(c, backend).await;
    let public = Http::with_token(Some(common::token_for(Access::Public)));
    let r = public
        .batch(&s, &request(&[few, small], &[big.as_str()], Access::Public))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["tiles"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["error"]["tiles"], serde_json::json!([few.to_string()]));
    assert_eq!(v["error"]["ids"], serde_json::json!([big]));
    assert_eq!(v["error"]["code"], "overloaded", "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("--max-item-data-bytes"), "{msg}");
    s.shutdown().await;
}

/// An answer larger than clients read (`Limits::max_body_bytes`, 8 MiB: 200 items of 60 KB
/// payloads, each under `--max-item-data-bytes`, within `--max-response-items`) is never
/// written. A tile that holds more alone is left out of a partial answer and named
/// (`payload_too_large`, its size and the limit); tiles that fit one by one but not
/// together are answered as far as they fit, in request order, the rest left out as
/// `response_full` and served when asked again. The server built and sent the 12 MB answer
/// once, which every client refused; then the whole request was a 400, every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_larger_than_clients_read_answers_what_fits() {
    let t = TileId::from_lon_lat(-122.33, 47.6, 14).unwrap();
    let b = t.bounds();
    let payload = serde_json::value::to_raw_value(&"x".repeat(60_000)).unwrap();
    let items: Vec<tilewarm::protocol::Item<RawData>> = (0..200)
        .map(|i| tilewarm::protocol::Item {
            id: format!("big-{i}"),
            lon: b.west + (b.east - b.west) * (i as f64 + 0.5) / 200.0,
            lat: b.south + (b.north - b.south) * 0.5,
            class: "active".into(),
            access: Access::Public,
            ttl: None,
            data: payload.clone(),
        })
        .collect();
    let c = common::Config {
        warmup_ring: 0,
        ..config()
    };
    let s = serving(items, c).await;
    let http = Http::new();
    let max = tilewarm::protocol::Limits::default().max_body_bytes;
    let r = http.batch(&s, &request(&[t], &[], Access::Agent)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body.len() < 4096, "{} bytes", r.body.len());
    let v = r.json();
    assert_eq!(v["error"]["code"], "payload_too_large", "{v}");
    assert_eq!(v["error"]["tiles"], serde_json::json!([t.to_string()]));
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("first {t}: about ")) && msg.contains(&format!("{max} bytes")),
        "{msg}"
    );
    // Its four z16 tiles across the items' row (50 items, 3 MB each): two fit, the last
    // two are left out to be asked again, and then fit.
    let lat = (b.south + b.north) / 2.0;
    let quarter = |q: f64| {
        TileId::from_lon_lat(b.west + (b.east - b.west) * (q + 0.5) / 4.0, lat, 16).unwrap()
    };
    let row: Vec<TileId> = (0..4).map(|q| quarter(q as f64)).collect();
    let r = http.batch(&s, &request(&row, &[], Access::Agent)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body.len() <= max, "{} bytes", r.body.len());
    let d = tilewarm::protocol::decode_response(&r.body, &tilewarm::protocol::Limits::default())
        .unwrap();
    assert_eq!(
        d.left_out,
        Some(tilewarm::protocol::ErrorCode::ResponseFull)
    );
    let listed: Vec<TileId> = d.tiles.iter().map(|l| l.tile).collect();
    assert_eq!(listed, row[..2]);
    assert_eq!(d.items.len(), 100);
    let v = r.json();
    assert_eq!(
        v["error"]["tiles"],
        serde_json::json!([row[2].to_string(), row[3].to_string()])
    );
    let r = http.ok(&s, &request(&row[2..], &[], Access::Agent)).await;
    assert_eq!((r.tiles.len(), r.items.len(), r.left_out), (2, 100, None));
    s.shutdown().await;
}

/// A city whose items' data can grow ([`ItemGrows::grow`]), read whole like memory, that
/// records every tile it is asked for and at which tier.
struct ItemGrows {
    city: std::sync::Mutex<Arc<Origin<RawData>>>,
    items: std::sync::Mutex<Vec<tilewarm::protocol::Item<RawData>>>,
    asked: std::sync::Mutex<Vec<(TileId, Access)>>,
}

impl ItemGrows {
    fn new(items: Vec<tilewarm::protocol::Item<RawData>>) -> ItemGrows {
        ItemGrows {
            city: std::sync::Mutex::new(Arc::new(Origin::new(items.clone()).unwrap())),
            items: std::sync::Mutex::new(items),
            asked: std::sync::Mutex::default(),
        }
    }

    /// How many times tile `t` was asked for (at any tier).
    fn asked(&self, t: TileId) -> usize {
        self.asked
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.0 == t)
            .count()
    }

    /// Gives item `id` a payload of `bytes` bytes of JSON text.
    fn grow(&self, id: &str, bytes: usize) {
        let mut items = self.items.lock().unwrap();
        let it = items.iter_mut().find(|it| it.id == id).unwrap();
        it.data = serde_json::value::to_raw_value(&"x".repeat(bytes - 2)).unwrap();
        *self.city.lock().unwrap() = Arc::new(Origin::new(items.clone()).unwrap());
    }
}

/// The server's end of an [`ItemGrows`] the test keeps.
struct Grows(Arc<ItemGrows>);

impl Scripted for Grows {
    const KIND: &'static str = "memory";

    fn answer<'a>(
        &'a self,
        request: &'a BatchRequest,
    ) -> OriginFuture<'a, Result<BatchResponse<RawData>, OriginFailure>> {
        let o = Arc::clone(&self.0.city.lock().unwrap());
        let mut asked = self.0.asked.lock().unwrap();
        asked.extend(request.tiles.iter().map(|&t| (t, request.access)));
        Box::pin(async move { Ok(o.answer(request, Some(60))) })
    }
}

/// An item cached while small that grows past `--max-item-data-bytes` at the origin (no
/// change notice): once an origin answer names it too large, the copy the tier held is
/// neither served in that answer nor later (it is dropped from the tier, in-process or
/// Redis), and the next request by id asks the origin and hears it is too large. Before,
/// the old copy went on being served by id until its TTL, in the very answer whose tile
/// list left it out, while the origin said it was too large.
pub(crate) async fn a_cached_item_grown_too_large_is_dropped_and_not_served(redis: Option<String>) {
    let items = synthetic_city(12, 2_000);
    let city = Origin::new(items.clone()).unwrap();
    let (t, _) = city
        .occupied_tiles(14)
        .into_iter()
        .find(|&(t, _)| city.count_in(t, Access::Public) >= 3)
        .unwrap();
    let mut ids = city.tile_items(t, Access::Public).map(|it| it.id.clone());
    let (big, other) = (ids.next().unwrap(), ids.next().unwrap());
    let backend = Arc::new(ItemGrows::new(items));
    let c = common::Config {
        warmup_ring: 0,
        max_item_data_bytes: 500,
        redis,
        redis_timeout_ms: 2_000,
        ..config()
    };
    let s = scripted(c, Grows(Arc::clone(&backend))).await;
    let http = Http::new();
    let r = http
        .ok(&s, &request(&[t], &[big.as_str()], Access::Public))
        .await;
    assert!(r.items.iter().any(|it| it.id == big));
    assert!(r.tiles[0].ids.contains(&big));

    // It grows at the origin; another item of its tile changes (so the tile is a miss,
    // the item by id still a hit).
    backend.grow(&big, 1_000);
    let inv = tilewarm::protocol::Invalidation {
        ids: vec![other],
        ..Default::default()
    };
    tilewarm_server::invalidate::invalidate(&s.app, &inv)
        .await
        .unwrap();
    let calls = || s.app.metrics.origin_calls_request.load(Relaxed);
    let before = calls();
    let r = http
        .batch(&s, &request(&[t], &[big.as_str()], Access::Public))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(calls(), before + 1);
    let v = r.json();
    assert_eq!(v["error"]["code"], "payload_too_large", "{v}");
    assert_eq!(v["error"]["ids"], serde_json::json!([big]), "{v}");
    let d = tilewarm::protocol::decode_response(&r.body, &tilewarm::protocol::Limits::default())
        .unwrap();
    assert!(!d.items.iter().any(|it| it.id == big), "{v}");
    assert!(!d.tiles[0].ids.contains(&big), "{v}");

    // By id alone: not a hit any more; the origin is asked and says it is too large.
    let before = calls();
    let r = http
        .batch(&s, &request(&[], &[big.as_str()], Access::Public))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(calls(), before + 1, "the old copy was served from the tier");
    let v = r.json();
    assert_eq!(v["error"]["code"], "payload_too_large", "{v}");
    assert_eq!(v["items"], serde_json::json!([]), "{v}");
    // The tile, written back without it, is a hit that does not list it.
    let before = calls();
    let r = http.ok(&s, &request(&[t], &[], Access::Public)).await;
    assert_eq!(calls(), before);
    assert!(!r.tiles[0].ids.contains(&big) && !r.items.iter().any(|it| it.id == big));
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_item_grown_too_large_is_dropped_from_the_in_process_tier() {
    a_cached_item_grown_too_large_is_dropped_and_not_served(None).await;
}

/// A data tile over `--max-tile-items` at `agent` next to a tile under it, in the test
/// city: (the city's items, the dense tile, its neighbour, the limit: the neighbour's count).
fn dense_and_neighbour() -> (
    Vec<tilewarm::protocol::Item<RawData>>,
    TileId,
    TileId,
    usize,
) {
    let items = synthetic_city(42, 5_000);
    let o = Origin::new(items.clone()).unwrap();
    let dense = densest(&o);
    let n = o.count_in(dense, Access::Agent);
    let (next, limit) = tilewarm::tile::ring_around(&[dense], 1)
        .unwrap()
        .into_iter()
        .map(|t| (t, o.count_in(t, Access::Agent)))
        .filter(|&(_, c)| c >= 1 && c < n)
        .max_by_key(|&(_, c)| c)
        .unwrap();
    (items, dense, next, limit)
}

/// A server over [`ItemGrows`] with warm-up (ring 1) and `--max-tile-items limit`.
async fn warming_server(
    items: Vec<tilewarm::protocol::Item<RawData>>,
    limit: usize,
) -> (tilewarm_server::Server, Arc<ItemGrows>) {
    let backend = Arc::new(ItemGrows::new(items));
    let c = common::Config {
        max_tile_items: limit,
        ..config()
    };
    let s = scripted(c, Grows(Arc::clone(&backend))).await;
    (s, backend)
}

/// A tile the request path found over `--max-tile-items` at `agent` is not asked again by
/// warm-up (which asks at `agent`: nothing of it could be cached) within the tile TTL; it
/// is counted in `tilewarm_warmup_over_limit_skipped_total`. Before, warm-up asked for it
/// (a full origin read of a dense tile) the first time a neighbour's ring planned it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warmup_does_not_ask_for_a_tile_a_request_found_over_the_tile_limit() {
    let (items, dense, next, limit) = dense_and_neighbour();
    let (s, origin) = warming_server(items, limit).await;
    let http = Http::new();
    let r = http.batch(&s, &request(&[dense], &[], Access::Agent)).await;
    assert_eq!(r.json()["error"]["code"], "payload_too_large");
    assert_eq!(origin.asked(dense), 1);
    // The neighbour's ring holds the dense tile.
    http.ok(&s, &request(&[next], &[], Access::Agent)).await;
    let m = &s.app.metrics;
    let skipped = || m.warmup_over_limit_skipped.load(Relaxed) >= 1;
    assert!(eventually(Duration::from_secs(5), skipped).await);
    assert_eq!(origin.asked(dense), 1);
    s.shutdown().await;
}

/// A tile warm-up itself found over `--max-tile-items` is not asked again when planned
/// after its back-off (`WARM_RETRY_MS`, 5 s) is over, within the tile TTL. Before, each
/// planning past the back-off (at most a minute apart) asked the origin again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warmup_does_not_ask_again_for_a_tile_it_found_over_the_tile_limit() {
    let (items, dense, next, limit) = dense_and_neighbour();
    let (s, origin) = warming_server(items, limit).await;
    let http = Http::new();
    http.ok(&s, &request(&[next], &[], Access::Agent)).await;
    let o = Arc::clone(&origin);
    assert!(eventually(Duration::from_secs(5), || o.asked(dense) == 1).await);
    // Past the back-off of its first try (not a timing assertion: only that much at least).
    tokio::time::sleep(Duration::from_millis(tilewarm::proxy::WARM_RETRY_MS + 500)).await;
    http.ok(&s, &request(&[next], &[], Access::Agent)).await;
    let m = &s.app.metrics;
    let skipped = || m.warmup_over_limit_skipped.load(Relaxed) >= 1;
    assert!(eventually(Duration::from_secs(5), skipped).await);
    assert_eq!(origin.asked(dense), 1);
    s.shutdown().await;
}

/// An origin at capacity (503 `overloaded`, `Retry-After` a minute) for the calls `busy`
/// picks (given the request and how many calls came before it); the others are answered
/// from `city`.
struct Busy {
    city: Origin<RawData>,
    calls: std::sync::atomic::AtomicUsize,
    busy: fn(&BatchRequest, usize) -> bool,
}

impl Busy {
    fn new(city: Origin<RawData>, busy: fn(&BatchRequest, usize) -> bool) -> Busy {
        let calls = Default::default();
        Busy { city, calls, busy }
    }
}

impl Scripted for Busy {
    const KIND: &'static str = "memory";

    fn answer<'a>(
        &'a self,
        request: &'a BatchRequest,
    ) -> OriginFuture<'a, Result<BatchResponse<RawData>, OriginFailure>> {
        Box::pin(async move {
            if (self.busy)(request, self.calls.fetch_add(1, Relaxed)) {
                return Err(OriginFailure::Overloaded {
                    message: "busy".into(),
                    retry_after_s: Some(60),
                });
            }
            Ok(self.city.answer(request, Some(60)))
        })
    }
}

/// After the origin answered a call with 503 and a `Retry-After`, warm-up asks it nothing
/// within that time (the jobs are skipped and counted in
/// `tilewarm_warmup_origin_quiet_skipped_total`); requests still ask. Before, the next
/// request's warm-up ring went to the origin at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warmup_is_quiet_while_the_origin_asked_for_it() {
    let items = synthetic_city(42, 2_000);
    let o = Origin::new(items.clone()).unwrap();
    let t = densest(&o);
    // Busy at its first call.
    let s = scripted(config(), Busy::new(o, |_, before| before == 0)).await;
    let http = Http::new();
    let r = http.batch(&s, &request(&[t], &[], Access::Agent)).await;
    assert_eq!(r.status, 503, "{}", r.text());
    // The request's own call goes out; its ring's warm-up does not.
    http.ok(&s, &request(&[t], &[], Access::Agent)).await;
    let m = &s.app.metrics;
    let quiet = || m.warmup_origin_quiet_skipped.load(Relaxed) >= 1;
    assert!(eventually(Duration::from_secs(5), quiet).await);
    assert_eq!(m.origin_calls_warmup.load(Relaxed), 0);
    assert_eq!(m.origin_calls_request.load(Relaxed), 2);
    s.shutdown().await;
}

/// Tiers asked at, as [`GatedAt`] records them.
type AskedAt = Arc<std::sync::Mutex<Vec<Access>>>;

/// An origin over `city` (out of process as far as the server can tell) that records the
/// tier of every call and holds those asked at `gated` until `gate` has a permit (one each).
struct GatedAt {
    city: Origin<RawData>,
    gated: Access,
    gate: Arc<tokio::sync::Semaphore>,
    asked_at: AskedAt,
}

impl Scripted for GatedAt {
    fn answer<'a>(
        &'a self,
        request: &'a BatchRequest,
    ) -> OriginFuture<'a, Result<BatchResponse<RawData>, OriginFailure>> {
        self.asked_at.lock().unwrap().push(request.access);
        Box::pin(async move {
            if request.access == self.gated {
                self.gate.acquire().await.unwrap().forget();
            }
            Ok(self.city.answer(request, Some(60)))
        })
    }
}

impl GatedAt {
    /// Over 4 public and 30 `agent` items in data tile `t`, holding the calls at `gated`:
    /// it, its gate (closed) and the tiers it is asked at.
    fn in_tile(t: TileId, gated: Access) -> (GatedAt, Arc<tokio::sync::Semaphore>, AskedAt) {
        let tiers = [(Access::Public, 4), (Access::Agent, 30)];
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let asked_at = AskedAt::default();
        let backend = GatedAt {
            city: Origin::new(items_in_tile(t, &tiers)).unwrap(),
            gated,
            gate: Arc::clone(&gate),
            asked_at: Arc::clone(&asked_at),
        };
        (backend, gate, asked_at)
    }
}

/// Requests of one tier arriving together for a data tile over `--max-tile-items` at
/// `agent` share one call at their tier (`single_flight`, by tile and tier), and all are
/// served its list. Before, each made its own: four public requests, four origin calls at
/// `public` for the same dense tile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_at_one_tier_share_the_call_at_it_for_a_tile_over_the_limit_at_agent() {
    let t = TileId::from_lon_lat(-122.33, 47.6, 14).unwrap();
    let (backend, gate, asked_at) = GatedAt::in_tile(t, Access::Public);
    let c = common::Config {
        warmup_ring: 0,
        max_tile_items: 10,
        ..config()
    };
    let s = scripted(c, backend).await;
    let public = Http::with_token(Some(common::token_for(Access::Public)));
    let body = request(&[t], &[], Access::Public);
    let n = 4;
    let asked_public = || {
        let asked = asked_at.lock().unwrap();
        asked.iter().filter(|&&a| a == Access::Public).count()
    };
    let replies = tokio::join!(
        futures_join_all((0..n).map(|_| public.batch(&s, &body)).collect()),
        async {
            // Each request asks at its tier or follows the one asking (one of either
            // without the fix); the gate opens once all are there.
            let flight = &s.app.single_flight;
            let all_there = || asked_public() + flight.following(Access::Public) == n;
            assert!(eventually(Duration::from_secs(20), all_there).await);
            gate.add_permits(n);
        }
    )
    .0;
    for r in replies {
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        assert_eq!(v["tiles"][0]["ids"].as_array().unwrap().len(), 4, "{v}");
        assert!(v.get("error").is_none(), "{v}");
    }
    assert_eq!(asked_public(), 1);
    let m = &s.app.metrics;
    assert_eq!(m.tiles_asked_at_caller_tier.load(Relaxed), 1);
    s.shutdown().await;
}

/// A request leading the call for a data tile (at `agent`, or at its own tier for a tile
/// over `--max-tile-items` at `agent`) whose client hangs up leaves the requests following
/// it the tile: the first of them to claim it again leads it, the others follow, one
/// origin call again. Before, each follower asked the origin itself: three calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_followers_of_a_leader_that_went_away_share_one_call_again() {
    let t = TileId::from_lon_lat(-122.33, 47.6, 14).unwrap();
    for tier in [Access::Public, Access::Agent] {
        let (backend, gate, asked_at) = GatedAt::in_tile(t, tier);
        // Public: the tile is over the limit at `agent`, asked again at `public`.
        let c = common::Config {
            warmup_ring: 0,
            max_tile_items: if tier == Access::Agent { 100 } else { 10 },
            ..config()
        };
        let s = scripted(c, backend).await;
        let asked = || {
            asked_at
                .lock()
                .unwrap()
                .iter()
                .filter(|&&a| a == tier)
                .count()
        };
        let token = common::token_for(tier);
        let body = request(&[t], &[], tier);
        // The leader, on a connection of its own to hang up.
        let mut conn = std::net::TcpStream::connect(s.addr).unwrap();
        use std::io::Write;
        write!(
            conn,
            "POST /v1/batch HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        assert!(eventually(Duration::from_secs(20), || asked() == 1).await);
        let http = Http::with_token(Some(token.clone()));
        let n = 3;
        let replies = tokio::join!(
            futures_join_all((0..n).map(|_| http.batch(&s, &body)).collect()),
            async {
                let flight = &s.app.single_flight;
                assert!(eventually(Duration::from_secs(20), || flight.following(tier) == n).await);
                drop(conn);
                // Its flight gone, each follower leads the tile or follows the one that does
                // (each asks without the fix); then the gate opens.
                let settled = || asked() >= 2 && asked() - 1 + flight.following(tier) == n;
                assert!(eventually(Duration::from_secs(20), settled).await, "{tier}");
                gate.add_permits(2 * n);
            }
        )
        .0;
        for r in replies {
            assert_eq!(r.status, 200, "{tier}: {}", r.text());
            let v = r.json();
            let want = if tier == Access::Agent { 34 } else { 4 };
            assert_eq!(v["tiles"][0]["ids"].as_array().unwrap().len(), want, "{v}");
        }
        assert_eq!(asked(), 2, "{tier}: asked again by each follower");
        s.shutdown().await;
    }
}

/// A data tile over `--max-tile-items` even at the caller's tier is remembered at that
/// tier for a tile TTL: the next request at it is told `payload_too_large` at once, with no
/// origin call (each cost two, at `agent` and at its tier). What is remembered for one tier
/// decides nothing for another: a public caller, for which the tile is within the limit, is
/// asked for and served (hearing it is over for `verified` would tell it of items above
/// its tier). An invalidation of the tile forgets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tile_over_the_limit_at_the_callers_tier_is_remembered_at_that_tier_only() {
    let t = TileId::from_lon_lat(-122.33, 47.6, 14).unwrap();
    let tiers = [
        (Access::Public, 4),
        (Access::Verified, 12),
        (Access::Agent, 30),
    ];
    let backend = Arc::new(ItemGrows::new(items_in_tile(t, &tiers)));
    let c = common::Config {
        warmup_ring: 0,
        max_tile_items: 10,
        ..config()
    };
    let s = scripted(c, Grows(Arc::clone(&backend))).await;
    let verified = Http::with_token(Some(common::token_for(Access::Verified)));
    let over = |r: common::Reply, says: &str| {
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        assert_eq!(v["error"]["code"], "payload_too_large", "{v}");
        assert_eq!(v["error"]["tiles"], serde_json::json!([t.to_string()]));
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(&format!("tile {t} holds {says}")), "{msg}");
    };
    let at_verified = "16 items a \"verified\" caller may see";
    let ask = request(&[t], &[], Access::Verified);
    // Tiles told over the limit from what was found before (`OverLimit`).
    let told = || s.app.metrics.tiles_over_limit_remembered.load(Relaxed);
    over(verified.batch(&s, &ask).await, at_verified);
    assert_eq!((backend.asked(t), told()), (2, 0));
    over(verified.batch(&s, &ask).await, at_verified);
    assert_eq!(backend.asked(t), 2, "asked again at agent and at verified");
    assert_eq!(told(), 1);
    // Found over the limit at `agent` by the same call: an agent is told at once too.
    let agent = Http::new()
        .batch(&s, &request(&[t], &[], Access::Agent))
        .await;
    over(agent, "46 items at the origin");
    assert_eq!((backend.asked(t), told()), (2, 2));
    // Public: asked (at agent, then at its tier) and served.
    let public = Http::with_token(Some(common::token_for(Access::Public)));
    let r = public.ok(&s, &request(&[t], &[], Access::Public)).await;
    assert_eq!(r.tiles[0].ids.len(), 4);
    assert_eq!((backend.asked(t), told()), (4, 2));
    let text = tilewarm_server::metrics::render(&s.app);
    assert!(
        text.contains("tilewarm_tiles_over_limit_remembered_total 2\n"),
        "{text}"
    );
    // Invalidated: asked again.
    let inv = tilewarm::protocol::Invalidation {
        tiles: vec![t],
        ..Default::default()
    };
    tilewarm_server::invalidate::invalidate(&s.app, &inv)
        .await
        .unwrap();
    over(verified.batch(&s, &ask).await, at_verified);
    assert_eq!(backend.asked(t), 6);
    s.shutdown().await;
}

/// An upstream that leaves tile `dense` out of its partial answers as `payload_too_large`
/// and tile `shed` as `overloaded` (a chained tilewarm-server over its tile limit for one,
/// shedding load for the other); a call asking for `shed` answers once `gate` has a permit.
struct DenseAndShed {
    city: Origin<RawData>,
    dense: TileId,
    shed: TileId,
    gate: Arc<tokio::sync::Semaphore>,
    calls: Arc<std::sync::Mutex<Vec<Vec<TileId>>>>,
}

impl Scripted for DenseAndShed {
    fn answer<'a>(
        &'a self,
        request: &'a BatchRequest,
    ) -> OriginFuture<'a, Result<BatchResponse<RawData>, OriginFailure>> {
        self.calls.lock().unwrap().push(request.tiles.clone());
        Box::pin(async move {
            if request.tiles.contains(&self.shed) {
                self.gate.acquire().await.unwrap().forget();
            }
            Ok(self.city.answer(request, Some(60)))
        })
    }

    fn leave_out(&self, request: &BatchRequest, mut a: Answer) -> Answer {
        // One reason per answer, as the protocol has: the shed tile's if asked.
        let (tile, code, message) = if request.tiles.contains(&self.shed) {
            (self.shed, ErrorCode::Overloaded, "at capacity: retry later")
        } else if request.tiles.contains(&self.dense) {
            (
                self.dense,
                ErrorCode::PayloadTooLarge,
                "the tile holds 99 items",
            )
        } else {
            return a;
        };
        a.response.tiles.retain(|l| l.tile != tile);
        a.unanswered = Some(tilewarm::protocol::Unanswered {
            code,
            message: message.into(),
            tiles: vec![tile],
            ids: Vec::new(),
        });
        a
    }
}

/// A request whose own call hears an upstream leave tile `dense` out as `payload_too_large`
/// while the call it follows for tile `shed` hears `shed` left out as `overloaded`: only
/// `dense` is over the limit. `shed` was merged under the first reason, remembered over the
/// limit for a tile TTL, and every agent request for it told `payload_too_large` (given up
/// by clients) with no origin call, warm-up skipping it too; and the request's own answer
/// said `payload_too_large` of both (the first reason merged stood), though what shed load
/// wins over a size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tile_shed_alongside_a_tile_too_large_is_not_remembered_over_the_limit() {
    let dense = TileId::from_lon_lat(-122.33, 47.6, 14).unwrap();
    let shed = TileId::new(14, dense.x() + 1, dense.y()).unwrap();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let calls: Arc<std::sync::Mutex<Vec<Vec<TileId>>>> = Arc::default();
    let backend = DenseAndShed {
        city: Origin::new(items_in_tile(dense, &[(Access::Public, 3)])).unwrap(),
        dense,
        shed,
        gate: Arc::clone(&gate),
        calls: Arc::clone(&calls),
    };
    // The calls that asked for `t`.
    let asked = |t: TileId| {
        calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.contains(&t))
            .count()
    };
    let c = common::Config {
        warmup_ring: 0,
        ..config()
    };
    let s = scripted(c, backend).await;
    let http = Http::new();
    let code = |r: &common::Reply| r.json()["error"]["code"].as_str().unwrap_or("").to_string();
    let (shed_only, both) = (
        request(&[shed], &[], Access::Agent),
        request(&[dense, shed], &[], Access::Agent),
    );
    let (first, second) = tokio::join!(http.batch(&s, &shed_only), async {
        // The second asks once the first's call for `shed` is out, and follows it.
        assert!(eventually(Duration::from_secs(20), || asked(shed) == 1).await);
        let flight = &s.app.single_flight;
        tokio::join!(http.batch(&s, &both), async {
            let following = || flight.following(Access::Agent) == 1;
            assert!(eventually(Duration::from_secs(20), following).await);
            gate.add_permits(1);
        })
        .0
    });
    assert_eq!(code(&first), "overloaded", "{}", first.text());
    // One code for both: shed load wins over the size (told `payload_too_large`, the shed
    // tile would be given up by a client, and held from warming by an edge).
    assert_eq!(code(&second), "overloaded", "{}", second.text());
    assert_eq!(
        second.json()["error"]["tiles"].as_array().map(Vec::len),
        Some(2)
    );
    let message = second.json()["error"]["message"].to_string();
    assert!(
        message.contains("at capacity") && message.contains("99 items"),
        "both reasons told: {message}"
    );
    assert_eq!((asked(dense), asked(shed)), (1, 1));
    // `shed` is asked again (not told from memory); `dense` is told from memory.
    gate.add_permits(1);
    let again = http.batch(&s, &request(&[shed], &[], Access::Agent)).await;
    assert_eq!(code(&again), "overloaded", "{}", again.text());
    assert_eq!(asked(shed), 2);
    let dense_again = http.batch(&s, &request(&[dense], &[], Access::Agent)).await;
    assert_eq!(
        code(&dense_again),
        "payload_too_large",
        "{}",
        dense_again.text()
    );
    assert_eq!(asked(dense), 1);
    s.shutdown().await;
}

/// A tile found over `--max-tile-items` is asked for again once an invalidation may have
/// shrunk it (one of the tile, of an item in it, or of everything): by warm-up, which
/// skipped it for a whole tile TTL whatever changed, and by a request, which is told at
/// once what was found before only until then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tile_over_the_limit_is_asked_again_after_an_invalidation_covering_it() {
    let (items, dense, next, limit) = dense_and_neighbour();
    let id = items
        .iter()
        .find(|it| dense.contains_point(it.lon, it.lat))
        .unwrap()
        .id
        .clone();
    let (s, origin) = warming_server(items, limit).await;
    let http = Http::new();
    let over = || async {
        let r = http.batch(&s, &request(&[dense], &[], Access::Agent)).await;
        assert_eq!(r.json()["error"]["code"], "payload_too_large");
    };
    let app = &s.app;
    let invalidate = |inv: tilewarm::protocol::Invalidation| async move {
        tilewarm_server::invalidate::invalidate(app, &inv)
            .await
            .unwrap();
    };
    over().await;
    over().await;
    assert_eq!(origin.asked(dense), 1);
    // The tile: warm-up (the neighbour's ring holds it) asks for it again.
    invalidate(tilewarm::protocol::Invalidation {
        tiles: vec![dense],
        ..Default::default()
    })
    .await;
    http.ok(&s, &request(&[next], &[], Access::Agent)).await;
    let o = Arc::clone(&origin);
    // Asked, and found over the limit (the origin counts the ask before warm-up reads
    // the answer and remembers the tile).
    let found = || o.asked(dense) == 2 && app.warmup.over_limit.holds(dense, Access::Agent, 0);
    assert!(eventually(Duration::from_secs(5), found).await);
    // Found over the limit again by warm-up: a request is told at once ...
    over().await;
    assert_eq!(origin.asked(dense), 2);
    // ... until an item in it, or everything, is invalidated.
    invalidate(tilewarm::protocol::Invalidation {
        ids: vec![id],
        ..Default::default()
    })
    .await;
    over().await;
    assert_eq!(origin.asked(dense), 3);
    invalidate(tilewarm::protocol::Invalidation::everything()).await;
    over().await;
    assert_eq!(origin.asked(dense), 4);
    s.shutdown().await;
}

/// A partial answer that sheds load (an upstream's 200 leaving tiles out as `overloaded`)
/// quiets warm-up as a whole 503 does, for `--retry-after-s` (it carries no
/// `Retry-After`): the request's neighbour ring is skipped and asks the origin nothing.
/// Before, warm-up went on asking an upstream that was asking for less.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warmup_is_quiet_after_a_partial_answer_that_sheds_load() {
    let c = common::Config {
        retry_after_s: 60,
        ..config()
    };
    let (s, gate, d, _) = trouble_over_an_id(c, IdTrouble::Shed, |_, _| "not-asked".into()).await;
    gate.add_permits(1_000);
    let r = Http::new()
        .batch(&s, &request(&[d], &[], Access::Agent))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "overloaded", "{}", r.text());
    let m = &s.app.metrics;
    let quiet = || m.warmup_origin_quiet_skipped.load(Relaxed) >= 1;
    assert!(eventually(Duration::from_secs(5), quiet).await);
    assert_eq!(m.origin_calls_warmup.load(Relaxed), 0);
    s.shutdown().await;
}

/// A start that fails on a file, an address or a URL names the flag that gave it: "cannot
/// read /x.csv", "cannot listen on 127.0.0.1:8080" (which of --listen and
/// --metrics-listen?) and "Redis URL did not parse - InvalidClientConfig" named none, or
/// nothing allowed; a PostGIS URL without a host started a server whose every connection
/// failed ("invalid configuration"). Fails without the flags in the messages.
#[tokio::test]
async fn start_errors_name_the_flag() {
    use tilewarm_server::Config;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    for (c, says) in [
        (
            Config {
                data: Some("/nonexistent/tilewarm-homes.csv".into()),
                ..config()
            },
            &["--data", "/nonexistent/tilewarm-homes.csv"][..],
        ),
        (
            Config {
                listen: taken_addr,
                ..config()
            },
            &["--listen", "cannot listen"],
        ),
        (
            Config {
                metrics_listen: Some(taken_addr),
                ..config()
            },
            &["--metrics-listen", "cannot listen"],
        ),
        (
            Config {
                redis: Some("http://127.0.0.1:6379".into()),
                ..config()
            },
            &["--redis", "give redis://"],
        ),
        (
            Config {
                origin: Some("postgres:///geo".into()),
                ..config()
            },
            &["--origin", "names no host", "postgres://"],
        ),
    ] {
        let e = match tilewarm_server::start(c).await {
            Ok(_) => panic!("starts, but should say {says:?}"),
            Err(e) => e.to_string(),
        };
        for s in says {
            assert!(e.contains(s), "{e}");
        }
    }
    drop(taken);
}
