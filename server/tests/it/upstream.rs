//! The upstream origin (`--origin http://…/v1/batch`) against a stub batch endpoint on
//! loopback that can answer honestly, answer garbage, stall, fail, leave a tile out or leak
//! items above the asked tier, and against a real second tilewarm-server.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, AtomicU8};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes as AxBytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use tilewarm::dataset::synthetic_city;
use tilewarm::origin::Origin;
use tilewarm::protocol::{BatchRequest, Limits, RawData};
use tilewarm::Access;
use tilewarm_server::metrics::Metrics;
use tilewarm_server::origin::upstream::UpstreamOrigin;
use tilewarm_server::origin::{CallSource, OriginService, OriginStats};

use crate::common::{
    config, now_s, redis_available, server, sign_hs256, Config, Http, RedisServer,
};
use crate::{densest, digest, request, serving};

const HONEST: u8 = 0;
const GARBAGE: u8 = 1;
const STALL: u8 = 2;
const LEAK: u8 = 3;
const DROP_TILE: u8 = 4;
const FAIL_500: u8 = 5;
const LIMITED_429: u8 = 6;
/// Answers for `registered` and says so, whatever was asked (an upstream whose token gives
/// less than the server asks at).
const LOWER_TIER: u8 = 7;
/// Answers honestly, and also lists under each requested tile the first item of the data
/// tile east of it (an item the tile does not hold).
const MISPLACE: u8 = 8;
/// A 429 with `Retry-After: 7`.
const LIMITED_429_RETRY_7: u8 = 9;
/// A 429 with `Retry-After` an HTTP date 30 s from now.
const LIMITED_429_RETRY_DATE: u8 = 10;
/// A 503 (an overloaded upstream) with `Retry-After: 7`.
const OVERLOADED_503_RETRY_7: u8 = 11;
/// A 503 without `Retry-After`.
const OVERLOADED_503: u8 = 12;
/// A 400 for more than 16 tiles (a tilewarm-server started with `--max-tiles 16`), else
/// honest.
const AT_MOST_16_TILES: u8 = 13;
/// A 400 for every request (one the upstream finds wrong whatever its size), naming a tile.
const REFUSE_400: u8 = 14;
/// Honest, but an answer for more than 16 tiles, or for `Stub::huge`, is padded past the
/// 8 MiB read limit (an upstream that does not fit its answers to 8 MiB): `over_8_mib`.
const OVER_8_MIB: u8 = 15;
/// Answers at `agent` whatever was asked, and says it answered the tier asked (an upstream
/// whose tier filter is broken, not its token).
const LEAK_AS_ASKED: u8 = 16;

struct Stub {
    origin: Origin<RawData>,
    mode: AtomicU8,
    calls: AtomicU64,
    auth: Mutex<Option<String>>,
    /// The tile whose answer is over 8 MiB even alone (`OVER_8_MIB`).
    huge: Mutex<Option<tilewarm::TileId>>,
}

async fn answer(
    State(stub): State<Arc<Stub>>,
    headers: HeaderMap,
    body: AxBytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mode = stub.mode.load(Relaxed);
    if mode == OVER_8_MIB {
        return over_8_mib(&stub, headers, body).await;
    }
    let mut r = answer_as(&stub, mode, headers, body).await.into_response();
    if mode == LIMITED_429_RETRY_7 || mode == OVERLOADED_503_RETRY_7 {
        r.headers_mut().insert("retry-after", 7.into());
    }
    if mode == LIMITED_429_RETRY_DATE {
        let at = std::time::SystemTime::now() + Duration::from_secs(30);
        r.headers_mut()
            .insert("retry-after", httpdate::fmt_http_date(at).parse().unwrap());
    }
    r
}

async fn answer_as(
    stub: &Stub,
    mode: u8,
    headers: HeaderMap,
    body: AxBytes,
) -> (StatusCode, String) {
    stub.calls.fetch_add(1, Relaxed);
    *stub.auth.lock().unwrap() = headers
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_string());
    let req = tilewarm::protocol::decode_request(&body, &Limits::default()).unwrap();
    match mode {
        GARBAGE => (StatusCode::OK, "{\"tiles\": [oops".into()),
        STALL => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            (StatusCode::OK, String::new())
        }
        LEAK => {
            // Answers at agent whatever was asked.
            let all = BatchRequest {
                access: Access::Agent,
                ..req
            };
            (StatusCode::OK, stub.origin.answer(&all, Some(60)).to_json())
        }
        LEAK_AS_ASKED => {
            let asked = req.access;
            let all = BatchRequest {
                access: Access::Agent,
                ..req
            };
            let mut r = stub.origin.answer(&all, Some(60));
            r.access = Some(asked);
            (StatusCode::OK, r.to_json())
        }
        DROP_TILE => {
            let mut r = stub.origin.answer(&req, Some(60));
            r.tiles.pop();
            (StatusCode::OK, r.to_json())
        }
        LOWER_TIER => {
            let lower = BatchRequest {
                access: Access::Registered,
                ..req
            };
            let mut r = stub.origin.answer(&lower, Some(60));
            r.access = Some(Access::Registered);
            (StatusCode::OK, r.to_json())
        }
        MISPLACE => {
            let mut r = stub.origin.answer(&req, Some(60));
            for list in &mut r.tiles {
                let Some(east) = list.tile.offset(1, 0) else {
                    continue;
                };
                let Some(stray) = stub.origin.tile_items(east, Access::Agent).next() else {
                    continue;
                };
                list.ids.push(stray.id.clone());
                if !r.items.iter().any(|i| i.id == stray.id) {
                    r.items.push(stray.clone());
                }
            }
            (StatusCode::OK, r.to_json())
        }
        FAIL_500 => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "{\"error\":{\"code\":\"internal\",\"message\":\"boom\"}}".into(),
        ),
        LIMITED_429 | LIMITED_429_RETRY_7 | LIMITED_429_RETRY_DATE => (
            StatusCode::TOO_MANY_REQUESTS,
            "{\"error\":{\"code\":\"rate_limited\",\"message\":\"slow down\"}}".into(),
        ),
        OVERLOADED_503 | OVERLOADED_503_RETRY_7 => (
            StatusCode::SERVICE_UNAVAILABLE,
            "{\"error\":{\"code\":\"overloaded\",\"message\":\"busy with tile 14/1/2\"}}".into(),
        ),
        AT_MOST_16_TILES if req.tiles.len() > 16 => (
            StatusCode::BAD_REQUEST,
            format!(
                "{{\"error\":{{\"code\":\"bad_request\",\"message\":\"request tiles: {}, at most 16\"}}}}",
                req.tiles.len()
            ),
        ),
        REFUSE_400 => (
            StatusCode::BAD_REQUEST,
            "{\"error\":{\"code\":\"bad_request\",\"message\":\"tile 14/1/2 is not served here\"}}".into(),
        ),
        _ => (StatusCode::OK, stub.origin.answer(&req, Some(60)).to_json()),
    }
}

/// `OVER_8_MIB`'s answer: honest, padded past 8 MiB with its length declared for more than
/// 16 tiles, and streamed (no length) for `Stub::huge`.
async fn over_8_mib(stub: &Stub, headers: HeaderMap, body: AxBytes) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (status, json) = answer_as(stub, HONEST, headers, body.clone()).await;
    let req = tilewarm::protocol::decode_request(&body, &Limits::default()).unwrap();
    let pad = || " ".repeat(Limits::default().max_body_bytes);
    if req.tiles.len() > 16 {
        return (status, json + &pad()).into_response();
    }
    let huge = *stub.huge.lock().unwrap();
    if huge.is_some_and(|h| req.tiles.contains(&h)) {
        let chunks = [json, pad()].map(|c| Ok::<_, std::io::Error>(AxBytes::from(c)));
        let streamed = axum::body::Body::from_stream(futures_util::stream::iter(chunks));
        return (status, streamed).into_response();
    }
    (status, json).into_response()
}

/// The stub on a free loopback port: its state and its URL.
async fn stub(seed: u64, n: usize) -> (Arc<Stub>, String) {
    let s = Arc::new(Stub {
        origin: Origin::new(synthetic_city(seed, n)).unwrap(),
        mode: AtomicU8::new(HONEST),
        calls: AtomicU64::new(0),
        auth: Mutex::new(None),
        huge: Mutex::new(None),
    });
    let app = Router::new()
        .route("/v1/batch", post(answer))
        .with_state(Arc::clone(&s));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/batch", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (s, url)
}

/// One public request to `b` for `tiles` and `ids`: its lists' lengths, its `error`'s
/// code, whether that error names `left` alone, and its `missing`.
async fn told_public(
    b: &tilewarm_server::Server,
    tiles: &[tilewarm::TileId],
    ids: &[&str],
    left: tilewarm::TileId,
) -> (Vec<usize>, serde_json::Value, bool, serde_json::Value) {
    let public = Http::with_token(Some(crate::common::token_for(Access::Public)));
    let r = public.batch(b, &request(tiles, ids, Access::Public)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let left_out = v["error"]["tiles"] == serde_json::json!([left.to_string()]);
    let code = v["error"]["code"].clone();
    (list_lengths(&v), code, left_out, v["missing"].clone())
}

/// How many ids each tile list of an answer holds, in its order.
fn list_lengths(v: &serde_json::Value) -> Vec<usize> {
    (v["tiles"].as_array().unwrap().iter())
        .map(|l| l["ids"].as_array().unwrap().len())
        .collect()
}

/// An item at the centre of `tile` whose data is a string of `len` bytes.
fn item_at_centre(
    id: String,
    tile: tilewarm::TileId,
    access: Access,
    len: usize,
) -> tilewarm::protocol::Item<RawData> {
    let b = tile.bounds();
    tilewarm::protocol::Item {
        id,
        lon: (b.west + b.east) / 2.0,
        lat: (b.south + b.north) / 2.0,
        class: "active".into(),
        access,
        ttl: None,
        data: serde_json::value::to_raw_value(&"x".repeat(len)).unwrap(),
    }
}

/// What `told_public` returns for an answer whose lists hold `lists` ids, that leaves the
/// named tile out as `response_full` and tells `probe` missing.
fn left_out_full(
    lists: &[usize],
    probe: &str,
) -> (Vec<usize>, serde_json::Value, bool, serde_json::Value) {
    (
        lists.to_vec(),
        "response_full".into(),
        true,
        serde_json::json!([probe]),
    )
}

/// Two neighbouring coarse tiles (zoom 10: direct, past `--split-levels` 3) of 110 public items of 40 kB each (about 4.4 MB
/// a tile: one fits an answer, not both), and a data tile (zoom 14) far from them.
fn two_coarse_tiles() -> (
    [tilewarm::TileId; 2],
    tilewarm::TileId,
    Vec<tilewarm::protocol::Item<RawData>>,
) {
    let d1 = tilewarm::TileId::from_lon_lat(-122.33, 47.6, 10).unwrap();
    let d2 = d1.offset(1, 0).unwrap();
    let far = tilewarm::TileId::from_lon_lat(-100.0, 40.0, 14).unwrap();
    let mut items = Vec::new();
    for (n, d) in [(1, d1), (2, d2)] {
        items.extend(
            (0..110).map(|i| item_at_centre(format!("big-{n}-{i}"), d, Access::Public, 40_000)),
        );
    }
    ([d1, d2], far, items)
}

/// B: a server whose origin is the batch endpoint of the server at `url`, authenticating
/// with an `agent` token kept in a file of a temporary directory named by `tag` (`dir`,
/// which the test removes).
async fn chained_to(url: &str, tag: &str) -> (tilewarm_server::Server, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, crate::common::token_for(Access::Agent)).unwrap();
    let b = server(Config {
        origin_token_file: Some(token_file),
        ..upstream_config(&format!("{url}/v1/batch"))
    })
    .await;
    (b, dir)
}

fn upstream_config(url: &str) -> Config {
    Config {
        origin: Some(url.to_string()),
        // Generous: a debug-built upstream on a loaded machine; the failure test sets 500.
        origin_timeout_ms: 10_000,
        warmup_ring: 0,
        ..config()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_pass_through_unchanged_with_the_servers_token() {
    let (stub, url) = stub(42, 5_000).await;
    let token = std::env::temp_dir().join(format!("tw-token-{}", std::process::id()));
    std::fs::write(&token, "s3cret-one\n").unwrap();
    let http = Http::new();
    let s = server(Config {
        origin_token_file: Some(token.clone()),
        ..upstream_config(&url)
    })
    .await;
    let o = &stub.origin;
    let t = densest(o);
    let id = o.tile_items(t, Access::Agent).next().unwrap().id.clone();
    for (tiles, access) in [
        (vec![t], Access::Public),
        (
            vec![t.children().unwrap()[0], t.ancestor(13).unwrap()],
            Access::Verified,
        ),
        (vec![t.ancestor(10).unwrap()], Access::Agent),
    ] {
        let body = request(&tiles, &[id.as_str(), "nope"], access);
        let got = http.ok(&s, &body).await;
        let want = o.answer(
            &tilewarm::protocol::decode_request(body.as_bytes(), &Limits::default()).unwrap(),
            None,
        );
        assert_eq!(digest(&got), digest(&want), "{body}");
    }
    assert_eq!(
        stub.auth.lock().unwrap().as_deref(),
        Some("Bearer s3cret-one")
    );
    // A rotated token file is picked up.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&token, "s3cret-two").unwrap();
    let far = t.offset(5, 5).unwrap();
    http.ok(&s, &request(&[far], &[], Access::Public)).await;
    assert_eq!(
        stub.auth.lock().unwrap().as_deref(),
        Some("Bearer s3cret-two")
    );
    // The token is nowhere in what the server says about itself.
    let h = http.get(&format!("{}/healthz", s.url())).await.text();
    let m = http.metrics(&s.url()).await;
    assert!(!h.contains("s3cret") && !m.contains("s3cret"));
    assert!(!s.app.origin.describe().contains("s3cret"));
    assert!(
        m.contains("tilewarm_origin_info{kind=\"upstream\"} 1"),
        "{m}"
    );
    s.shutdown().await;
    let _ = std::fs::remove_file(token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_two_servers_answers_as_one() {
    let http = Http::new();
    let a = server(config()).await;
    // B authenticates to A with an agent token (it asks its origin for every tier).
    let (b, _dir) = chained_to(&a.url(), "tw-chain").await;
    // B's first `ready` from A's feed invalidates B's whole tier: once in place, B keeps
    // what it caches.
    crate::upstream_feed::connected(&b).await;
    let o = Origin::new(synthetic_city(42, 5_000)).unwrap();
    let t = densest(&o);
    let body = request(&[t, t.offset(1, 0).unwrap()], &[], Access::Registered);
    assert_eq!(
        digest(&http.ok(&b, &body).await),
        digest(&http.ok(&a, &body).await)
    );
    // Cached in B: A is not asked again.
    let calls = a.app.metrics.origin_calls_request.load(Relaxed);
    let before = a.app.metrics.cache.tile_hits.load(Relaxed);
    http.ok(&b, &body).await;
    assert_eq!(a.app.metrics.origin_calls_request.load(Relaxed), calls);
    assert_eq!(a.app.metrics.cache.tile_hits.load(Relaxed), before);
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_upstream_is_a_502_or_504_and_nothing_is_cached() {
    let (stub, url) = stub(42, 5_000).await;
    let http = Http::new();
    let s = server(Config {
        origin_timeout_ms: 500,
        ..upstream_config(&url)
    })
    .await;
    let t = densest(&stub.origin);
    let body = request(&[t, t.offset(1, 0).unwrap()], &[], Access::Public);
    // A 429 keeps the upstream's Retry-After, else gets --retry-after-s (fails without
    // either: no header). So does a 503 (an overloaded upstream): a 503 `overloaded`, so
    // that callers back off, without the upstream's message (it used to be a 502 with it
    // and no Retry-After).
    for (mode, status, code, says, retry_after) in [
        (GARBAGE, 502, "upstream_error", "invalid", None),
        (DROP_TILE, 502, "upstream_error", "left out", None),
        (FAIL_500, 502, "upstream_error", "HTTP 500: boom", None),
        (LIMITED_429, 429, "rate_limited", "slow down", Some("1")),
        (
            LIMITED_429_RETRY_7,
            429,
            "rate_limited",
            "slow down",
            Some("7"),
        ),
        // Made for a lower tier than asked (removing the tier check in the origin guard
        // caches it, and the honest answer below is never fetched).
        (
            LOWER_TIER,
            502,
            "upstream_error",
            r#"answered for tier "registered", not the "agent" asked for"#,
            None,
        ),
        (STALL, 504, "upstream_timeout", "500 ms", None),
        (
            OVERLOADED_503_RETRY_7,
            503,
            "overloaded",
            "at capacity: the upstream answered HTTP 503",
            Some("7"),
        ),
        (
            OVERLOADED_503,
            503,
            "overloaded",
            "at capacity: the upstream answered HTTP 503",
            Some("1"),
        ),
    ] {
        stub.mode.store(mode, Relaxed);
        let started = Instant::now();
        let r = http.batch(&s, &body).await;
        let msg = r.error(status, code);
        assert!(msg.contains(says), "mode {mode}: {msg}");
        assert!(!msg.contains("14/1/2"), "mode {mode}: {msg}");
        assert_eq!(
            r.headers.get("retry-after").map(|v| v.to_str().unwrap()),
            retry_after,
            "mode {mode}"
        );
        assert!(started.elapsed() < Duration::from_secs(3), "mode {mode}");
    }
    // A Retry-After given as an HTTP date 30 s ahead is passed on as about 30 seconds
    // (fails when dates are not read: --retry-after-s, 1).
    stub.mode.store(LIMITED_429_RETRY_DATE, Relaxed);
    let r = http.batch(&s, &body).await;
    assert!(r.error(429, "rate_limited").contains("slow down"));
    let secs: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((28..=30).contains(&secs), "Retry-After: {secs}");
    assert_eq!(s.app.metrics.origin_overloaded.load(Relaxed), 2);
    // Nothing of that was cached: the honest answer is fetched, then cached.
    stub.mode.store(HONEST, Relaxed);
    let calls = stub.calls.load(Relaxed);
    let got = http.ok(&s, &body).await;
    let want = stub.origin.answer(
        &tilewarm::protocol::decode_request(body.as_bytes(), &Limits::default()).unwrap(),
        None,
    );
    assert_eq!(digest(&got), digest(&want));
    assert_eq!(stub.calls.load(Relaxed), calls + 1);
    http.ok(&s, &body).await;
    assert_eq!(
        stub.calls.load(Relaxed),
        calls + 1,
        "cached after the good answer"
    );
    s.shutdown().await;
}

/// A request with a coarse tile (answered straight from the origin, its items counted
/// first) reads the tier in its batch slot, as every request does, then gives the slot
/// back for the count and the fetch together, in one place among the requests waiting
/// for the origin (so `--max-origin-waits 1` is enough for it). It used to give the slot
/// back for the count, before the tier read, and to leave the count's place after the
/// count: its tier read was bounded by neither, and the adaptive in-flight limit did not
/// learn from it (fails so: no hold reported).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coarse_tile_reads_the_tier_in_its_slot_and_waits_for_the_origin_in_one_place() {
    let (stub, url) = stub(42, 5_000).await;
    let http = Http::new();
    let s = server(Config {
        max_origin_waits: 1,
        ..upstream_config(&url)
    })
    .await;
    let t = densest(&stub.origin);
    // Four levels above the data zoom: more than --split-levels (3), so direct.
    let coarse = t.ancestor(t.z() - 4).unwrap();
    let body = request(&[coarse, t], &[], Access::Public);
    assert_eq!(s.app.sheds.batch.reported_holds(), 0);
    let got = http.ok(&s, &body).await;
    let want = stub.origin.answer(
        &tilewarm::protocol::decode_request(body.as_bytes(), &Limits::default()).unwrap(),
        None,
    );
    assert_eq!(digest(&got), digest(&want));
    assert_eq!(
        s.app.sheds.batch.reported_holds(),
        1,
        "the tier read was done in the slot"
    );
    assert_eq!(s.app.origin_waits.waiting(), 0);
    s.shutdown().await;
}

/// A caller's coarse tiles whose data tiles miss go upstream as those data tiles (up to
/// `--max-data-tiles`, 1024): more than one request may carry (64), so in parts, one call
/// per 64 tiles, answered as one. In one call a tilewarm upstream refused them (400: too
/// many tiles; the stub cannot decode them), and with the package's default requests any
/// two zoom-11 tiles did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misses_of_more_data_tiles_than_one_call_may_carry_go_upstream_in_parts() {
    let (stub, url) = stub(42, 5_000).await;
    let s = server(upstream_config(&url)).await;
    let z11 = densest(&stub.origin).ancestor(11).unwrap();
    two_z11_answered_as_the_origin(&s, &stub, z11).await;
    assert_eq!(stub.calls.load(Relaxed), 2, "128 data tiles, 64 a call");
    s.shutdown().await;
}

/// Asks server `s` (in front of `stub`) at `public` for zoom-11 tile `t` and the one east
/// of it, and checks the answer is the stub origin's own.
async fn two_z11_answered_as_the_origin(
    s: &tilewarm_server::Server,
    stub: &Stub,
    t: tilewarm::tile::TileId,
) {
    let body = request(&[t, t.offset(1, 0).unwrap()], &[], Access::Public);
    let got = Http::new().ok(s, &body).await;
    let want = stub.origin.answer(
        &tilewarm::protocol::decode_request(body.as_bytes(), &Limits::default()).unwrap(),
        None,
    );
    assert_eq!(digest(&got), digest(&want));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_an_upstream_leaks_above_the_asked_tier_never_leave_the_origin_layer() {
    let (stub, url) = stub(42, 5_000).await;
    stub.mode.store(LEAK, Relaxed);
    let c = upstream_config(&url);
    let stats = Arc::new(OriginStats::default());
    let o = OriginService::with_backend(
        Box::new(UpstreamOrigin::new(&url, &c, Arc::clone(&stats)).unwrap()),
        &c,
        Arc::new(Metrics::default()),
        Arc::clone(&stats),
    );
    let t = densest(&stub.origin);
    let secret = stub
        .origin
        .tile_items(t, Access::Agent)
        .find(|i| i.access == Access::Agent)
        .unwrap()
        .id
        .clone();
    for asked in [Access::Public, Access::Registered, Access::Verified] {
        let req = BatchRequest {
            tiles: vec![t],
            ids: vec![secret.clone()],
            access: asked,
        };
        let r = o.fetch(&req, CallSource::Request).await.unwrap().response;
        assert!(r.items.iter().all(|i| asked.can_see(i.access)), "{asked}");
        assert!(r.tiles[0]
            .ids
            .iter()
            .all(|id| r.items.iter().any(|i| &i.id == id)));
        assert_eq!(r.missing, std::slice::from_ref(&secret));
        let want: Vec<String> = stub
            .origin
            .tile_items(t, asked)
            .map(|i| i.id.clone())
            .collect();
        assert_eq!(r.tiles[0].ids, want);
    }
    assert!(stats.leaked_items.load(Relaxed) > 0);
}

/// The same for the direct tiles' call, which is made at the caller's tier: an upstream
/// answering it with items above that tier (and saying it answered that tier) has them
/// dropped, and counted and logged as a leak. Failed before: they were dropped but not
/// counted, so `tilewarm_origin_leaked_items_total` stayed 0 in the one call where an
/// upstream can leak (the others are asked at `agent`, which sees everything).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_an_upstream_leaks_to_a_direct_tile_are_dropped_and_counted() {
    let (stub, url) = stub(42, 5_000).await;
    stub.mode.store(LEAK_AS_ASKED, Relaxed);
    let http = Http::new();
    let s = server(upstream_config(&url)).await;
    let o = &stub.origin;
    let coarse = densest(o).ancestor(10).unwrap(); // past --split-levels (3): direct
    let above = o.count_in(coarse, Access::Agent) - o.count_in(coarse, Access::Public);
    assert!(above > 0);
    let body = request(&[coarse], &[], Access::Public);
    let got = http.ok(&s, &body).await;
    assert!(got.items.iter().all(|i| i.access == Access::Public));
    let want = o.answer(
        &tilewarm::protocol::decode_request(body.as_bytes(), &Limits::default()).unwrap(),
        None,
    );
    assert_eq!(digest(&got), digest(&want));
    assert_eq!(s.app.origin.stats.leaked_items.load(Relaxed), above as u64);
    let m = http.metrics(&s.url()).await;
    assert!(
        m.contains(&format!("tilewarm_origin_leaked_items_total {above}")),
        "{m}"
    );
}

/// Warm-up of tiles the tier cannot keep (here a tile far from the data, whose ring is
/// empty, with `--max-empty-tiles 0`: no empty list is stored; an origin failing warm-up
/// calls is the same case): every request used to queue the same ring again, one warm-up
/// origin call per request beside its own. A tile warmed and not seen held since is not
/// warmed again before 5 s (doubling to 60 s).
#[tokio::test]
async fn warm_up_of_tiles_it_cannot_keep_is_not_repeated_per_request() {
    let s = server(Config {
        max_empty_tiles: 0,
        warmup_ring: 1,
        ..config()
    })
    .await;
    let http = Http::new();
    let far: tilewarm::tile::TileId = "14/100/100".parse().unwrap();
    let m = &s.app.metrics;
    for _ in 0..30 {
        let r = http.ok(&s, &request(&[far], &[], Access::Public)).await;
        assert!(r.tiles.iter().all(|l| l.ids.is_empty()));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Its own calls: each request asks again (an empty list is not stored), by design.
    assert_eq!(m.origin_calls_request.load(Relaxed), 30);
    let warm = m.origin_calls_warmup.load(Relaxed);
    assert_eq!(warm, 1, "{warm} warm-up calls for 30 requests of one tile");
    s.shutdown().await;
}

/// An item an upstream lists under a tile it does not lie in is dropped from that list and
/// counted, never cached there: the Redis tier finds the tiles holding an item by its
/// position, so a copy cached under another tile outlived `POST /v1/invalidate` of the item
/// (or of its own tile) and was served old. Removing the placement check in the origin's
/// shape guard lists the stray item under the tile and fails the first assertion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_listed_under_a_tile_they_do_not_lie_in_are_dropped_before_the_cache() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let (stub, url) = stub(42, 5_000).await;
    let http = Http::new();
    let s = server(Config {
        redis: Some(redis.url()),
        redis_timeout_ms: 2_000,
        ..upstream_config(&url)
    })
    .await;
    let o = &stub.origin;
    let a = densest(o);
    let b = a.offset(1, 0).unwrap();
    let stray = o.tile_items(b, Access::Agent).next().unwrap().id.clone();
    let honest: Vec<String> = o
        .tile_items(a, Access::Agent)
        .map(|i| i.id.clone())
        .collect();
    let body = request(&[a], &[], Access::Agent);

    stub.mode.store(MISPLACE, Relaxed);
    let got = http.ok(&s, &body).await;
    assert!(
        !got.tiles[0].ids.contains(&stray),
        "{stray} listed under {a}"
    );
    assert_eq!(got.tiles[0].ids, honest);
    assert!(got.items.iter().all(|i| i.id != stray), "{stray} answered");
    assert_eq!(s.app.origin.stats.misplaced_items.load(Relaxed), 1);
    let m = http.metrics(&s.url()).await;
    assert!(m.contains("tilewarm_origin_misplaced_items_total 1"), "{m}");

    // The stray item is invalidated by id and by its own tile; the tile it was listed under
    // is answered from the tier (no upstream call) and still does not hold it.
    stub.mode.store(HONEST, Relaxed);
    let admin = Http::with_token(Some(sign_hs256(&serde_json::json!({
        "sub": "ops", "exp": now_s() + 3600, "tilewarm_access": "agent", "tilewarm_admin": true,
    }))));
    for inv in [
        format!(r#"{{"ids":["{stray}"]}}"#),
        format!(r#"{{"tiles":["{b}"]}}"#),
    ] {
        let r = admin
            .send(
                "POST",
                &format!("{}/v1/invalidate", s.url()),
                &[("content-type", "application/json")],
                inv.clone(),
            )
            .await;
        assert_eq!(r.status, 200, "{inv}: {}", r.text());
    }
    let calls = stub.calls.load(Relaxed);
    let again = http.ok(&s, &body).await;
    assert_eq!(stub.calls.load(Relaxed), calls, "{a} is a tier hit");
    assert_eq!(again.tiles[0].ids, honest);
    // The stray item where it lies.
    let at_b = http.ok(&s, &request(&[b], &[], Access::Agent)).await;
    assert!(at_b.tiles[0].ids.contains(&stray));
    s.shutdown().await;
}

/// Two servers chained, B (upstream A, with an agent token) and A with a small
/// `--max-response-items`: A counts what B asks for at the tier B asks at, and B asks at
/// `agent` so that its tier serves every caller. A coarse tile (direct: answered straight
/// from the origin, never cached) holding more items than A allows at `agent` but not at
/// `public` was refused to a `public` caller of B, with A's message naming the `agent`
/// count: what a `public` caller may not learn. B now asks for direct tiles at its caller's
/// tier (as PostGIS reads them at it), so the `public` caller gets its answer; and a
/// answer of B's `agent` call that A could not fit in one (data tiles holding too many
/// items at `agent`: `response_full`) reaches a caller below `agent` without A's message,
/// and the rest is answered when asked again (below `agent`, B asks A for it again at the
/// caller's tier at once). Fails without the fix (a 400 naming the `agent` count, then A's
/// message passed on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstreams_refusal_at_the_top_tier_tells_a_lower_caller_nothing_of_it() {
    let o = Origin::new(synthetic_city(42, 5_000)).unwrap();
    let t = densest(&o);
    let coarse = t.ancestor(10).unwrap(); // past --split-levels (3): direct
    let public = o.count_in(coarse, Access::Public);
    let agent = o.count_in(coarse, Access::Agent);
    assert!(agent > public, "{agent} > {public}");
    let a = server(Config {
        max_response_items: public,
        ..config()
    })
    .await;
    let (b, dir) = chained_to(&a.url(), "tw-chain-max").await;
    let as_public = Http::anonymous();
    // A at `agent` refuses the coarse tile, naming its count.
    let r = Http::new()
        .batch(&a, &request(&[coarse], &[], Access::Agent))
        .await;
    let m = r.error(400, "bad_request");
    assert!(m.contains(&agent.to_string()), "{m}");
    // B answers the public caller what A answers it.
    let body = request(&[coarse], &[], Access::Public);
    let got = as_public.batch(&b, &body).await;
    assert_eq!(got.status, 200, "{}", got.text());
    let got = tilewarm::protocol::decode_response(&got.body, &Limits::default()).unwrap();
    assert_eq!(digest(&got), digest(&as_public.ok(&a, &body).await));
    // Data tiles (B's call at `agent`) holding more than A allows at `agent`: refused, and
    // A's message, which counts them at `agent`, is not passed on below `agent`.
    let block: Vec<_> = coarse.children().unwrap().to_vec();
    let (p, g): (usize, usize) = block.iter().fold((0, 0), |(p, g), &c| {
        (
            p + o.count_in(c, Access::Public),
            g + o.count_in(c, Access::Agent),
        )
    });
    assert!(g > public && p <= public, "{p} <= {public} < {g}");
    // A answers what fits at `agent` and leaves the rest out (`response_full`: A's message
    // to an agent, only the code below, where B asks A for the rest again at the caller's
    // tier at once); asked again, the rest is answered, so every caller gets the whole
    // block in a few requests.
    // (A's message names no count: what did not fit, and the bounds.)
    for tier in [
        Access::Public,
        Access::Registered,
        Access::Verified,
        Access::Agent,
    ] {
        let http = Http::with_token(Some(crate::common::token_for(tier)));
        let (mut ask, mut answered, mut rounds) = (block.clone(), Vec::new(), 0);
        while !ask.is_empty() {
            rounds += 1;
            assert!(rounds <= block.len(), "{tier}: asked again in a loop");
            let r = http.batch(&b, &request(&ask, &[], tier)).await;
            assert_eq!(r.status, 200, "{tier}: {}", r.text());
            let v = r.json();
            let d = tilewarm::protocol::decode_response(&r.body, &Limits::default()).unwrap();
            answered.extend(d.tiles.iter().map(|l| l.tile));
            ask.retain(|t| !d.tiles.iter().any(|l| l.tile == *t));
            if ask.is_empty() {
                break;
            }
            assert_eq!(v["error"]["code"], "response_full", "{tier}: {v}");
            let m = v["error"]["message"].as_str().unwrap();
            assert!(!m.contains(&g.to_string()), "{tier}: {m}");
            assert_eq!(
                m.contains("did not fit"),
                tier == Access::Agent,
                "{tier}: {m}"
            );
        }
        // The first asks A; B's tier serves the others what it wrote back (at `agent`, or
        // at `public` for what A asked again had no room for at `agent`). The block's
        // public items fit one answer of A's: how many of its items are above `public`
        // (they filled A's answer at `agent`) costs a public caller no request more.
        if tier == Access::Public {
            assert_eq!(
                rounds, 1,
                "{tier}: the block is not answered in one request"
            );
        }
        answered.sort();
        let mut want = block.clone();
        want.sort();
        assert_eq!(answered, want, "{tier}");
    }
    b.shutdown().await;
    a.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A chain of two servers where the upstream leaves a data tile out (over its
/// `--max-tile-items`) in a partial answer: the downstream passes that on as a partial
/// answer of its own (the tile unanswered, with the upstream's reason to an agent and only
/// its code below), the other tile answered; it failed the whole call (502) before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstreams_partial_answer_is_passed_on_not_a_502() {
    let o = Origin::new(synthetic_city(42, 5_000)).unwrap();
    let dense = densest(&o);
    let n = o.count_in(dense, Access::Agent);
    let (sparse, limit) = o
        .occupied_tiles(14)
        .into_iter()
        .map(|(t, _)| (t, o.count_in(t, Access::Agent)))
        .filter(|&(_, c)| c >= 1 && c < n)
        .max_by_key(|&(_, c)| c)
        .unwrap();
    let a = server(Config {
        max_tile_items: limit,
        ..config()
    })
    .await;
    let (b, dir) = chained_to(&a.url(), "tw-partial").await;
    let body = request(&[dense, sparse], &[], Access::Agent);
    let agent = Http::new();
    let r = agent.batch(&b, &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["code"], "payload_too_large", "{v}");
    assert_eq!(v["error"]["tiles"], serde_json::json!([dense.to_string()]));
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("the origin says:") && msg.contains(&format!("tile {dense} holds {n} items")),
        "{msg}"
    );
    let d = tilewarm::protocol::decode_response(&r.body, &Limits::default()).unwrap();
    assert_eq!(d.tiles.len(), 1);
    assert_eq!(d.tiles[0].ids.len(), limit);
    // Below agent: the code, not the upstream's message (it counts items above the tier).
    let public = Http::with_token(Some(crate::common::token_for(Access::Public)));
    let r = public
        .batch(&b, &request(&[dense, sparse], &[], Access::Public))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("the origin left them out (payload_too_large)") && !msg.contains("holds"),
        "{msg}"
    );
    b.shutdown().await;
    a.shutdown().await;

    // An upstream whose every payload is over its --max-item-data-bytes: an id it names is
    // unanswered for an agent (with its reason); below, it is asked again at the caller's
    // tier, and what the upstream says there is told: this public item is left out as too
    // large (it was called `missing`, its tier not known).
    let a = server(Config {
        max_item_data_bytes: 1,
        ..config()
    })
    .await;
    let b = server(Config {
        origin_token_file: Some(dir.join("token")),
        ..upstream_config(&format!("{}/v1/batch", a.url()))
    })
    .await;
    let id = o
        .answer(
            &BatchRequest {
                tiles: vec![sparse],
                ids: vec![],
                access: Access::Public,
            },
            None,
        )
        .items[0]
        .id
        .clone();
    let r = agent.batch(&b, &request(&[], &[&id], Access::Agent)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["ids"], serde_json::json!([id]), "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("the origin says:") && msg.contains(&format!("item \"{id}\": data is ")),
        "{msg}"
    );
    let r = public
        .batch(&b, &request(&[], &[&id], Access::Public))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["code"], "payload_too_large", "{v}");
    assert_eq!(v["error"]["ids"], serde_json::json!([id]), "{v}");
    assert_eq!(v["missing"], serde_json::json!([]), "{v}");
    b.shutdown().await;
    a.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A data tile an upstream tilewarm-server leaves out at `agent` (over its
/// `--max-tile-items`) is asked of it again at the tier of a caller below `agent`; the
/// upstream counts it at that tier, and the tile is served and cached here as fetched at
/// it: a second public request is a hit, an agent is still told the tile is left out.
/// Before, the public caller lost the tile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_is_asked_again_at_the_callers_tier_for_a_tile_over_its_limit() {
    let t = tilewarm::TileId::from_lon_lat(-122.33, 47.6, 14).unwrap();
    let b = t.bounds();
    let items: Vec<tilewarm::protocol::Item<RawData>> = (0..34)
        .map(|i| tilewarm::protocol::Item {
            id: format!("home-{i}"),
            lon: b.west + (b.east - b.west) * (i as f64 + 0.5) / 34.0,
            lat: (b.south + b.north) / 2.0,
            class: "active".into(),
            access: if i % 10 == 0 {
                Access::Public
            } else {
                Access::Agent
            },
            ttl: None,
            data: serde_json::value::to_raw_value(&1).unwrap(),
        })
        .collect();
    let a = serving(
        items,
        Config {
            max_tile_items: 10,
            ..config()
        },
    )
    .await;
    let (b, dir) = chained_to(&a.url(), "tw-tierlimit").await;
    // B's first `ready` from A's feed invalidates B's whole tier (nothing cached before it
    // can be proven fresh): landing after the first request, it made the second a miss,
    // asked at `agent` and at `public` again (4 calls).
    crate::upstream_feed::connected(&b).await;
    let public = Http::with_token(Some(crate::common::token_for(Access::Public)));
    let body = request(&[t], &[], Access::Public);
    for _ in 0..2 {
        let r = public.ok(&b, &body).await;
        assert_eq!(r.tiles.len(), 1, "{r:?}");
        let mut ids = r.tiles[0].ids.clone();
        ids.sort();
        assert_eq!(ids, ["home-0", "home-10", "home-20", "home-30"]);
    }
    // Asked at `agent`, then at `public`; the second request a hit.
    assert_eq!(b.app.metrics.origin_calls_request.load(Relaxed), 2);
    let r = Http::new()
        .batch(&b, &request(&[t], &[], Access::Agent))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["tiles"], serde_json::json!([]), "{v}");
    assert_eq!(v["error"]["code"], "payload_too_large", "{v}");
    assert_eq!(v["error"]["tiles"], serde_json::json!([t.to_string()]));
    b.shutdown().await;
    a.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// Ids an upstream's answer had no room for (`response_full`: a tilewarm-server with a
/// smaller `--max-response-items`) are left out to be asked again, for a caller below
/// `agent` too, never called `missing` (which says they do not exist: a client forgets
/// them and its `get` ends with nothing). Below `agent` all the ids are asked again at the
/// caller's tier at once (not only the 5 left out, whose number depends on the items above
/// the caller's tier the first answer held), and what that answer has no room for is left
/// out: the last 5 again here, every id public.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_an_upstream_had_no_room_for_are_not_missing_below_agent() {
    let o = Origin::new(synthetic_city(42, 500)).unwrap();
    let ids: Vec<String> = (o.items().iter())
        .filter(|it| it.access == Access::Public)
        .take(8)
        .map(|it| it.id.clone())
        .collect();
    assert_eq!(ids.len(), 8);
    let a = server(Config {
        max_response_items: 3,
        ..config()
    })
    .await;
    let (b, dir) = chained_to(&a.url(), "tw-chain-full-ids").await;
    let http = Http::with_token(Some(crate::common::token_for(Access::Public)));
    let asked: Vec<&str> = ids.iter().map(String::as_str).collect();
    let r = http.batch(&b, &request(&[], &asked, Access::Public)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["items"].as_array().unwrap().len(), 3, "{v}");
    assert_eq!(v["missing"], serde_json::json!([]), "{v}");
    assert_eq!(v["error"]["code"], "response_full", "{v}");
    assert_eq!(v["error"]["ids"], serde_json::json!(ids[3..]), "{v}");
    b.shutdown().await;
    a.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// Behind a chained server, a caller below `agent` cannot tell an id above its tier whose
/// item is over the upstream's `--max-item-data-bytes` from an id that does not exist, by
/// padding its request until the upstream's answer is full. The server asks the upstream
/// at `agent`, which left the large item out and folded it into its `response_full` (the
/// answer had no room for the padding's last id): it was left out here, to be asked again
/// (and then `missing`), where an id that does not exist was `missing` at once. Ids an
/// upstream's partial answer names are now asked again at the caller's tier (with the
/// others asked: `how_full_the_second_answer_for_ids_was_tells_nothing_below_agent`): both
/// are `missing` at once, the two answers alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstreams_large_item_above_the_callers_tier_is_not_told_from_none() {
    let t = tilewarm::TileId::from_lon_lat(-122.33, 47.6, 14).unwrap();
    let item = |id: String, access: Access, len: usize| item_at_centre(id, t, access, len);
    let mut items: Vec<_> = (0..8)
        .map(|i| item(format!("pad-{i}"), Access::Public, 5))
        .collect();
    items.push(item("secret".into(), Access::Agent, 200));
    let a = serving(
        items,
        Config {
            max_response_items: 3,
            max_item_data_bytes: 100,
            ..config()
        },
    )
    .await;
    let (b, dir) = chained_to(&a.url(), "tw-chain-large-id").await;
    let public = Http::with_token(Some(crate::common::token_for(Access::Public)));
    // The probe first, then four padding ids (their own each time, none cached here): the
    // upstream's answer at `agent` has room for three.
    let mut answers = Vec::new();
    for (probe, pad) in [("secret", 0), ("nope", 4)] {
        let pads: Vec<String> = (pad..pad + 4).map(|i| format!("pad-{i}")).collect();
        let mut asked = vec![probe];
        asked.extend(pads.iter().map(String::as_str));
        let r = public
            .batch(&b, &request(&[], &asked, Access::Public))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        let mut got: Vec<String> = (v["items"].as_array().unwrap().iter())
            .map(|it| it["id"].as_str().unwrap().to_string())
            .collect();
        got.sort();
        let left_out = (v["error"]["code"].clone(), v["error"]["ids"].clone());
        let last = serde_json::json!([pads[3]]);
        answers.push((
            got == pads[..3],
            v["missing"].clone(),
            left_out == ("response_full".into(), last),
        ));
    }
    // Before: (false, [], response_full naming "secret" and pad-3) for the large item,
    // (false, ["nope"], response_full naming pad-7) for none. Both now as the upstream
    // answers all five at the caller's tier: the probe missing, three pads, the last left
    // out.
    assert_eq!(
        answers,
        [
            (true, serde_json::json!(["secret"]), true),
            (true, serde_json::json!(["nope"]), true)
        ]
    );
    b.shutdown().await;
    a.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// The same with tiles: whether a data tile fits in the upstream's answer at `agent` after
/// the caller's others depends on the items above the caller's tier those hold. A tile
/// with four `agent` items and a public one, asked with a tile of two public items, filled
/// an upstream answer of 5 items and left the second out (`response_full`) where a tile
/// with the public item alone did not: a public caller learned how many items above its
/// tier a tile holds. A tile an upstream's answer at `agent` had no room for is now asked
/// again at the caller's tier: both answers whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn how_full_an_upstreams_answer_at_agent_was_is_not_told_below_it() {
    let t = tilewarm::TileId::from_lon_lat(-122.33, 47.6, 14).unwrap();
    let tiles: Vec<tilewarm::TileId> = (0..4).map(|i| t.offset(i, 0).unwrap()).collect();
    let item = |id, tile, access| item_at_centre(id, tile, access, 1);
    // tiles[0]: a public item and four agent ones; tiles[2]: the public item alone; tiles[1]
    // and tiles[3]: two public items each (the padding).
    let mut items = vec![
        item("probe-0".into(), tiles[0], Access::Public),
        item("probe-2".into(), tiles[2], Access::Public),
    ];
    items.extend((0..4).map(|i| item(format!("agent-{i}"), tiles[0], Access::Agent)));
    for p in [1, 3] {
        items.extend((0..2).map(|i| item(format!("pad-{p}-{i}"), tiles[p], Access::Public)));
    }
    let a = serving(
        items,
        Config {
            max_response_items: 5,
            ..config()
        },
    )
    .await;
    let (b, dir) = chained_to(&a.url(), "tw-chain-full-tiles").await;
    let public = Http::with_token(Some(crate::common::token_for(Access::Public)));
    let mut answers = Vec::new();
    for pair in tiles.chunks(2) {
        let r = public.batch(&b, &request(pair, &[], Access::Public)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        let lists = list_lengths(&v);
        answers.push((lists, v.get("error").cloned()));
    }
    // Before: ([1], response_full naming tiles[1]) for the first pair, ([1, 2], none) for
    // the second.
    assert_eq!(answers, [(vec![1, 2], None), (vec![1, 2], None)]);
    b.shutdown().await;
    a.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// The second answer, at the caller's tier, of the ids an upstream's answer at `agent` had
/// no room for, may itself be full: which ids it is asked for depends on how many items
/// above the caller's tier the first answer held. With an upstream answering at most 3
/// items, a public caller asking an `agent` id then six padding ids got five of them and
/// the sixth left out (`response_full`: the second answer held the four the first had no
/// room for); asking an id that does not exist, all six: it told the `agent` id from none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn how_full_the_second_answer_for_ids_was_tells_nothing_below_agent() {
    let t = tilewarm::TileId::from_lon_lat(-122.33, 47.6, 14).unwrap();
    let item = |id, access| item_at_centre(id, t, access, 5);
    let mut items: Vec<_> = (0..12)
        .map(|i| item(format!("pad-{i}"), Access::Public))
        .collect();
    items.push(item("secret".into(), Access::Agent));
    let a = serving(
        items,
        Config {
            max_response_items: 3,
            ..config()
        },
    )
    .await;
    let (b, dir) = chained_to(&a.url(), "tw-chain-second-ids").await;
    let public = Http::with_token(Some(crate::common::token_for(Access::Public)));
    // The probe first, then six padding ids (their own each time, none cached here).
    let mut answers = Vec::new();
    for (probe, pad) in [("secret", 0), ("nope", 6)] {
        let pads: Vec<String> = (pad..pad + 6).map(|i| format!("pad-{i}")).collect();
        let mut asked = vec![probe];
        asked.extend(pads.iter().map(String::as_str));
        let r = public
            .batch(&b, &request(&[], &asked, Access::Public))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        let got = v["items"].as_array().unwrap().len();
        let left_out = v["error"]["ids"].as_array().map_or(0, Vec::len);
        answers.push((got, left_out, v["missing"].clone()));
    }
    // Before: (5, 1, ["secret"]) for the agent id, (6, 0, ["nope"]) for none.
    assert_eq!(answers[0].0, answers[1].0, "{answers:?}");
    assert_eq!(answers[0].1, answers[1].1, "{answers:?}");
    assert_eq!(answers[0].2, serde_json::json!(["secret"]));
    assert_eq!(answers[1].2, serde_json::json!(["nope"]));
    b.shutdown().await;
    a.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// The same with tiles: the data tiles an upstream's answer at `agent` had no room for were
/// asked again at the caller's tier alone, and whether that answer had room for them all
/// depended on how many they were, so on the items above the caller's tier the first
/// answer held. With an upstream answering at most 5 items, a public caller asking a tile
/// of one public and four `agent` items then three tiles of two public items got [1, 2, 2]
/// and the last left out (`response_full`); with a tile of the public item alone, all four
/// lists. The call at the caller's tier now asks every data tile of the call at `agent` (the
/// others only as padding: their lists at `agent` are served and kept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn how_full_the_second_answer_for_tiles_was_tells_nothing_below_agent() {
    let t = tilewarm::TileId::from_lon_lat(-122.33, 47.6, 14).unwrap();
    let tiles: Vec<tilewarm::TileId> = (0..8).map(|i| t.offset(i, 0).unwrap()).collect();
    let item = |id, tile, access| item_at_centre(id, tile, access, 1);
    // tiles[0]: a public item and four agent ones; tiles[4]: the public item alone; the
    // others: two public items each (the padding).
    let mut items = vec![
        item("probe-0".into(), tiles[0], Access::Public),
        item("probe-4".into(), tiles[4], Access::Public),
    ];
    items.extend((0..4).map(|i| item(format!("agent-{i}"), tiles[0], Access::Agent)));
    for p in [1, 2, 3, 5, 6, 7] {
        items.extend((0..2).map(|i| item(format!("pad-{p}-{i}"), tiles[p], Access::Public)));
    }
    let a = serving(
        items,
        Config {
            max_response_items: 5,
            ..config()
        },
    )
    .await;
    let (b, dir) = chained_to(&a.url(), "tw-chain-second-tiles").await;
    let public = Http::with_token(Some(crate::common::token_for(Access::Public)));
    let mut answers = Vec::new();
    for four in tiles.chunks(4) {
        let r = public.batch(&b, &request(four, &[], Access::Public)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        let lists = list_lengths(&v);
        let left_out = v["error"]["tiles"].as_array().map_or(0, Vec::len);
        answers.push((lists, v["error"]["code"].clone(), left_out));
    }
    // Before: ([1, 2, 2], response_full, 1) for the first, ([1, 2, 2, 2], null, 0) for the
    // second.
    assert_eq!(answers[0], answers[1], "{answers:?}");
    b.shutdown().await;
    a.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// The padding's own outcome at the caller's tier is told, not its answer at `agent`: a tile
/// too large alone for the upstream's answer at `agent` (three public and three `agent`
/// items, an upstream answering at most 5) is skipped there and the next tile answered, but
/// at the caller's tier it fits and leaves the next no room. Served the next tile's list
/// from `agent`, a public caller got both lists where, with a first tile of three public
/// items alone, the second was left out (`response_full`): it told the `agent` items apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_paddings_answer_at_the_callers_tier_is_told_not_its_answer_at_agent() {
    let t = tilewarm::TileId::from_lon_lat(-122.33, 47.6, 14).unwrap();
    let tiles: Vec<tilewarm::TileId> = (0..4).map(|i| t.offset(i, 0).unwrap()).collect();
    let item = |id, tile, access| item_at_centre(id, tile, access, 1);
    // tiles[0]: three public items and three agent ones; tiles[2]: three public items;
    // tiles[1] and tiles[3]: three public items each (the padding).
    let mut items = Vec::new();
    for (p, &tile) in tiles.iter().enumerate() {
        items.extend((0..3).map(|i| item(format!("pub-{p}-{i}"), tile, Access::Public)));
    }
    items.extend((0..3).map(|i| item(format!("agent-{i}"), tiles[0], Access::Agent)));
    let a = serving(
        items,
        Config {
            max_response_items: 5,
            ..config()
        },
    )
    .await;
    let (b, dir) = chained_to(&a.url(), "tw-chain-padding").await;
    let public = Http::with_token(Some(crate::common::token_for(Access::Public)));
    let mut answers = Vec::new();
    for pair in tiles.chunks(2) {
        let r = public.batch(&b, &request(pair, &[], Access::Public)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        let lists = list_lengths(&v);
        answers.push((
            lists,
            v["error"]["code"].clone(),
            v["error"]["tiles"].clone(),
        ));
    }
    // Before: ([3, 3], none) for the first pair, ([3], response_full naming tiles[3]) for
    // the second.
    let named = |t: tilewarm::TileId| serde_json::json!([t.to_string()]);
    assert_eq!(
        answers,
        [
            (vec![3], "response_full".into(), named(tiles[1])),
            (vec![3], "response_full".into(), named(tiles[3])),
        ]
    );
    b.shutdown().await;
    a.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// The reason told for a tile left out at the caller's tier is that call's. The ids an
/// upstream's partial answer at `agent` named were forgotten only after the tiles asked
/// again had been added, so that answer's reason stood for them: a tile over the
/// upstream's `--max-tile-items` at `agent` (not at `public`) that the answer at `public`
/// had no room for was told `payload_too_large` (not asked again by a client) when the
/// request also asked an `agent` id over the upstream's `--max-item-data-bytes`, and
/// `response_full` when it asked an id that does not exist: a public caller told them
/// apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tile_left_out_at_the_callers_tier_is_told_that_calls_reason() {
    let t = tilewarm::TileId::from_lon_lat(-122.33, 47.6, 14).unwrap();
    let tiles: Vec<tilewarm::TileId> = (0..5).map(|i| t.offset(i, 0).unwrap()).collect();
    let item = item_at_centre;
    // Two pairs: a tile of two public items, then one of four public items and an agent
    // one (over a --max-tile-items of 4 at `agent` only); the large agent item elsewhere.
    let mut items = Vec::new();
    for pair in [0, 2] {
        let (pad, dense) = (tiles[pair], tiles[pair + 1]);
        items.extend((0..2).map(|i| item(format!("pad-{pair}-{i}"), pad, Access::Public, 1)));
        items.extend((0..4).map(|i| item(format!("pub-{pair}-{i}"), dense, Access::Public, 1)));
        items.push(item(format!("agent-{pair}"), dense, Access::Agent, 1));
    }
    items.push(item("secret".into(), tiles[4], Access::Agent, 200));
    let a = serving(
        items,
        Config {
            max_response_items: 5,
            max_tile_items: 4,
            max_item_data_bytes: 100,
            ..config()
        },
    )
    .await;
    let (b, dir) = chained_to(&a.url(), "tw-chain-reason").await;
    let mut answers = Vec::new();
    for (pair, probe) in [(0, "secret"), (2, "nope")] {
        let asked = &tiles[pair..pair + 2];
        answers.push(told_public(&b, asked, &[probe], tiles[pair + 1]).await);
    }
    // Before: payload_too_large for the first, response_full for the second.
    assert_eq!(
        answers,
        [left_out_full(&[2], "secret"), left_out_full(&[2], "nope")]
    );
    b.shutdown().await;
    a.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// Below `agent` the direct tiles go upstream at the caller's tier in a call of their own,
/// beside the one at `agent` (`answer_split`), and one `error` is made of both partial
/// answers. The one at `agent` came first, so its code stood for the direct tiles the
/// other had no room for (they are not asked again): a public caller asking two coarse
/// tiles too large together (bytes) and an `agent` id over the upstream's
/// `--max-item-data-bytes` was told the second tile `payload_too_large` (a client does not
/// ask it again), and `response_full` when it asked an id that does not exist instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_tile_left_out_at_the_callers_tier_is_told_that_calls_reason() {
    let ([d1, d2], far, mut items) = two_coarse_tiles();
    let item = item_at_centre;
    items.push(item("secret".into(), far, Access::Agent, 55_000));
    let a = serving(
        items,
        Config {
            max_item_data_bytes: 50_000,
            ..config()
        },
    )
    .await;
    let (b, dir) = chained_to(&a.url(), "tw-chain-split").await;
    let mut answers = Vec::new();
    for probe in ["secret", "nope"] {
        answers.push(told_public(&b, &[d1, d2], &[probe], d2).await);
    }
    // Before: payload_too_large for the first, response_full for the second.
    assert_eq!(
        answers,
        [
            left_out_full(&[110], "secret"),
            left_out_full(&[110], "nope")
        ]
    );
    b.shutdown().await;
    a.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// The same beside a data tile over the upstream's `--max-tile-items` at `agent` (not at
/// `public`): the call at `agent` names it `payload_too_large`, and that code stood for the
/// direct tile the call at the caller's tier had no room for; with a data tile of public
/// items only, `response_full`. `response_full` now wins, as in one answer's report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_tile_left_out_beside_a_tile_over_the_limit_at_agent_is_told_its_own_reason() {
    let ([d1, d2], far, mut items) = two_coarse_tiles();
    let item = item_at_centre;
    // Two data tiles of four public items, the first with an agent item too (over a
    // --max-tile-items of 4 at `agent` only).
    let dense = [far, far.offset(1, 0).unwrap()];
    for (n, &t) in dense.iter().enumerate() {
        items.extend((0..4).map(|i| item(format!("pub-{n}-{i}"), t, Access::Public, 1)));
    }
    items.push(item("agent-0".into(), dense[0], Access::Agent, 1));
    let a = serving(
        items,
        Config {
            max_item_data_bytes: 50_000,
            max_tile_items: 4,
            ..config()
        },
    )
    .await;
    let (b, dir) = chained_to(&a.url(), "tw-chain-split-tiles").await;
    let mut answers = Vec::new();
    for data in dense {
        let (lists, code, left_out, _) = told_public(&b, &[data, d1, d2], &[], d2).await;
        answers.push((lists, code, left_out));
    }
    // Before: payload_too_large for the first, response_full for the second.
    assert_eq!(
        answers,
        [
            (vec![4, 110], "response_full".into(), true),
            (vec![4, 110], "response_full".into(), true),
        ]
    );
    b.shutdown().await;
    a.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// An upstream that refuses more than 16 tiles a request (a tilewarm-server started with
/// `--max-tiles 16`, or any batch endpoint with a smaller limit) answers the misses of two
/// zoom-11 tiles (128 data tiles) all the same: the two calls of 64 are refused, a half is
/// refused, its half answered, and the rest asked in parts of 16 (11 calls, 8 answered).
/// Every such miss was a 400 before (fails without the fix: the upstream's 400 passed on).
/// An upstream refusing every request whatever its size is asked at most log2(64) times
/// more, one call at a time, and its 400 passed on without its message below `agent`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_with_a_smaller_tile_limit_is_asked_in_smaller_parts() {
    let (stub, url) = stub(42, 5_000).await;
    let s = server(upstream_config(&url)).await;
    stub.mode.store(AT_MOST_16_TILES, Relaxed);
    let z11 = densest(&stub.origin).ancestor(11).unwrap();
    two_z11_answered_as_the_origin(&s, &stub, z11).await;
    assert_eq!(
        stub.calls.load(Relaxed),
        2 + 1 + 8,
        "64 and 64 refused, 32 refused, then 16 a call"
    );
    let metrics = Http::new().metrics(&s.url()).await;
    assert!(
        metrics.contains("tilewarm_upstream_part_limit{part=\"tiles\"} 16"),
        "{metrics}"
    );
    // The limit found is kept: the misses of two more zoom-11 tiles go in parts of 16 from
    // the start, no call refused (11 calls again, 3 refused, before).
    let before = stub.calls.load(Relaxed);
    two_z11_answered_as_the_origin(&s, &stub, z11.offset(0, 1).unwrap()).await;
    assert_eq!(
        stub.calls.load(Relaxed) - before,
        8,
        "16 a call, none refused"
    );
    // A 400 about something else: halved down to one tile, then passed on (it ends there:
    // no part was answered): 4 parts of 16 at once, then 8, 4, 2 and 1, one at a time.
    stub.mode.store(REFUSE_400, Relaxed);
    let before = stub.calls.load(Relaxed);
    let other = z11.offset(0, 2).unwrap();
    let body = request(&[other, other.offset(1, 0).unwrap()], &[], Access::Public);
    let r = Http::new().batch(&s, &body).await;
    let m = r.error(400, "bad_request");
    assert!(!m.contains("14/1/2"), "{m}");
    assert_eq!(
        stub.calls.load(Relaxed) - before,
        4 + 4,
        "4 x 16, then 8, 4, 2 and 1"
    );
    // It taught nothing: the limit found stands.
    let metrics = Http::new().metrics(&s.url()).await;
    assert!(
        metrics.contains("tilewarm_upstream_part_limit{part=\"tiles\"} 16"),
        "{metrics}"
    );
    s.shutdown().await;
}

/// An upstream that answers more than 16 tiles with more than the 8 MiB read, and one tile
/// with more even alone: asked for 64 data tiles, each part over the limit is asked again in
/// halves, the tile over it alone is left out as `payload_too_large`, the other 63 tiles
/// answered (15 calls: 64, 2 x 32, 4 x 16, then 8, 4, 2 and 1 twice down to the tile; the
/// answers for more than 16 tiles declare their length and are not read, those with the
/// tile are streamed and read up to the limit). The whole was a 502 before (fails without
/// the fix).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_answer_over_the_read_limit_is_asked_again_in_halves() {
    let (stub, url) = stub(42, 5_000).await;
    let s = server(upstream_config(&url)).await;
    let z11 = densest(&stub.origin).ancestor(11).unwrap();
    let huge = densest(&stub.origin);
    assert_eq!(huge.ancestor(11).unwrap(), z11);
    *stub.huge.lock().unwrap() = Some(huge);
    stub.mode.store(OVER_8_MIB, Relaxed);
    let block = z11.descendants(14).unwrap();
    let r = Http::new()
        .batch(&s, &request(&block, &[], Access::Agent))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["code"], "payload_too_large", "{v}");
    assert_eq!(v["error"]["tiles"], serde_json::json!([huge.to_string()]));
    let got = tilewarm::protocol::decode_response(&r.body, &Limits::default()).unwrap();
    let mut rest = block.clone();
    rest.retain(|&t| t != huge);
    let want = stub.origin.answer(
        &BatchRequest {
            tiles: rest,
            ids: Vec::new(),
            access: Access::Agent,
        },
        None,
    );
    assert_eq!(digest(&got), digest(&want));
    assert_eq!(stub.calls.load(Relaxed), 15);
    s.shutdown().await;
}

/// A chain to a tilewarm-server started with `--max-tiles 16`: the misses of a zoom-11 tile
/// (64 data tiles) are answered as that server answers the tile itself. It refused the
/// call of 64 (400: "request tiles: 64, at most 16") before (fails without the fix). The
/// limit found is kept: the misses of the next zoom-11 tile cost the upstream no 400 (2
/// each before: 64, then 32).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_to_a_server_with_a_smaller_max_tiles_answers_as_one() {
    let a = server(Config {
        max_tiles: 16,
        ..config()
    })
    .await;
    let (b, dir) = chained_to(&a.url(), "tw-chain-16").await;
    let o = Origin::new(synthetic_city(42, 5_000)).unwrap();
    let z11 = densest(&o).ancestor(11).unwrap();
    let http = Http::new();
    for access in [Access::Public, Access::Agent] {
        let body = request(&[z11], &[], access);
        let want = http.ok(&a, &body).await;
        assert!(!want.tiles[0].ids.is_empty());
        assert_eq!(digest(&http.ok(&b, &body).await), digest(&want), "{access}");
    }
    let refused = || a.app.metrics.requests("/v1/batch", 400);
    assert_eq!(refused(), 2, "64 and 32 tiles, once");
    let next = z11.offset(1, 0).unwrap();
    for access in [Access::Public, Access::Agent] {
        let body = request(&[next], &[], access);
        let want = http.ok(&a, &body).await;
        assert_eq!(digest(&http.ok(&b, &body).await), digest(&want), "{access}");
    }
    assert_eq!(refused(), 2, "none more: parts of 16 from the start");
    b.shutdown().await;
    a.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}
