//! `TileCache` in headless Chromium against tilewarm-server on loopback, through the fault
//! proxy of `fault-proxy.mjs` (each test its own session, so they cannot disturb each
//! other). Run by `make web-test` (scripts/test-web.sh), which starts both and sets
//! `TILEWARM_WEB_PROXY` at build time.
#![cfg(target_arch = "wasm32")]

use futures_util::StreamExt;
use gloo_timers::future::TimeoutFuture;
use serde_json::Value;
use tilewarm_web::{
    Access, Auth, BatchOptions, ChangedTiles, Credentials, ErrorCode, Options, PrefetchOptions,
    TileCache, TileId, Update,
};
use wasm_bindgen::JsValue;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

/// The fault proxy's base URL, fixed when the test wasm was built.
fn proxy() -> &'static str {
    option_env!("TILEWARM_WEB_PROXY")
        .expect("TILEWARM_WEB_PROXY is not set: run these tests with `make web-test`")
}

fn endpoint(session: &str) -> String {
    format!("{}/s/{session}/v1/batch", proxy())
}

async fn control(session: &str, what: &str) -> Value {
    let url = format!("{}/s/{session}/{what}", proxy());
    let res = gloo_net::http::Request::get(&url).send().await.unwrap();
    res.json().await.unwrap()
}

async fn set_mode(session: &str, mode: &str) {
    control(session, &format!("mode/{mode}")).await;
}

/// How many batch requests reached the proxy, and how many the client aborted.
async fn log(session: &str) -> (u64, u64) {
    let l = control(session, "log").await;
    (
        l["requests"].as_u64().unwrap(),
        l["aborted"].as_u64().unwrap(),
    )
}

/// Waits (up to 15 s, then fails) until `cond` holds; a guard against hanging, not a
/// timing assertion.
async fn wait_until<F: std::future::Future<Output = bool>>(
    what: &str,
    mut cond: impl FnMut() -> F,
) {
    for _ in 0..300 {
        if cond().await {
            return;
        }
        TimeoutFuture::new(50).await;
    }
    panic!("gave up waiting until {what}");
}

/// Options: `ring` rings of prefetch (0: no prefetch at all), `retries`, a timeout of 10 s
/// (a first answer through the proxy and a debug server on a busy machine can take more
/// than a second; the tests of a stalled request use [`stalling`]).
fn options(session: &str, ring: u32, retries: u32) -> Options {
    timing_out_after(10_000, session, ring, retries)
}

/// [`options`] with a timeout of 800 ms: for the tests that wait for a stalled request to
/// time out.
fn stalling(session: &str, ring: u32, retries: u32) -> Options {
    timing_out_after(800, session, ring, retries)
}

fn timing_out_after(timeout_ms: u64, session: &str, ring: u32, retries: u32) -> Options {
    let off = (ring == 0).then_some(0u32);
    Options {
        prefetch: PrefetchOptions {
            ring: Some(ring),
            view_ring: off.map(f64::from),
            lookahead_ms: off.map(u64::from),
            ..PrefetchOptions::default()
        },
        batch: BatchOptions {
            retries: Some(retries),
            timeout_ms: Some(timeout_ms),
            ..BatchOptions::default()
        },
        ..Options::new(endpoint(session))
    }
}

/// The data tile (zoom 14) `dx` tiles east and `dy` south of downtown Seattle, where the
/// server's synthetic city is.
fn tile(dx: i64, dy: i64) -> TileId {
    TileId::from_lon_lat(-122.3321, 47.6062, 14)
        .unwrap()
        .offset(dx, dy)
        .unwrap()
}

/// A viewport inside one data tile, at map zoom 15.
fn inside(t: TileId) -> [f64; 5] {
    let b = t.bounds();
    let (w, h) = (b.east - b.west, b.north - b.south);
    [
        b.west + w * 0.3,
        b.south + h * 0.3,
        b.east - w * 0.3,
        b.north - h * 0.3,
        15.0,
    ]
}

fn show<T>(cache: &TileCache<T>, v: [f64; 5]) -> tilewarm_web::View<T>
where
    T: serde::de::DeserializeOwned + 'static,
{
    cache.set_viewport(v[0], v[1], v[2], v[3], v[4]).unwrap()
}

/// An "agent" cache (`retries` retries, no prefetch) of session `s`, whose server ignores
/// tiers: every tile holds one "agent" item (the proxy's mode `tier`).
async fn agent_cache_of_a_tier_blind_server(s: &str, retries: u32) -> TileCache {
    set_mode(s, "tier").await;
    let o = Options {
        access: Some("agent".into()),
        ..stalling(s, 0, retries)
    };
    TileCache::new(&o).unwrap()
}

/// A cache of session `s` (no prefetch, no retry) that was shown a view inside tile (0, 0)
/// and fetched it (`when_complete`).
async fn complete_downtown_cache(s: &str) -> TileCache {
    let cache: TileCache = TileCache::new(&options(s, 0, 0)).unwrap();
    show(&cache, inside(tile(0, 0)));
    cache.when_complete().await.unwrap();
    cache
}

/// As [`complete_downtown_cache`], the cache keeping at most `n` items: with `n` the view's
/// items, it is full once the view is complete.
async fn full_downtown_cache(s: &str, n: usize) -> TileCache {
    let full = Options {
        max_items: Some(n),
        ..options(s, 0, 0)
    };
    let cache: TileCache = TileCache::new(&full).unwrap();
    show(&cache, inside(tile(0, 0)));
    cache.when_complete().await.unwrap();
    cache
}

/// A cache of session `s` (one ring of prefetch, no retry) whose requests time out after
/// `timeout_ms`, on a server that does not answer (the proxy's mode `stall`: held until
/// cancelled, not answered after 1.5 s, which a busy machine could reach before the test
/// cancelled them), shown a view inside tile (0, 0): its requests, prefetches among them,
/// are out.
async fn stalled_cache_shown_a_view(s: &str, timeout_ms: u64) -> TileCache {
    set_mode(s, "stall").await;
    let o = options(s, 1, 0);
    let cache: TileCache = TileCache::new(&Options {
        batch: BatchOptions {
            timeout_ms: Some(timeout_ms),
            ..o.batch.clone()
        },
        ..o
    })
    .unwrap();
    show(&cache, inside(tile(0, 0)));
    cache
}

/// Loads tile `a` into `cache` and checks that an "agent" item came with it.
async fn load_with_an_agent_item(cache: &TileCache, a: TileId) {
    let first = cache.load_tiles(&[a]).await.unwrap();
    assert!(first[0]
        .items
        .as_ref()
        .unwrap()
        .iter()
        .any(|s| s.item.access == Access::Agent));
}

#[wasm_bindgen_test]
async fn the_extent_a_server_declares_is_adopted() {
    let s = "declared";
    // The server declares that its items lie within the tile at downtown.
    let b = tile(0, 0).bounds();
    set_mode(
        s,
        &format!("bounds={},{},{},{}", b.west, b.south, b.east, b.north),
    )
    .await;
    let cache = complete_downtown_cache(s).await;
    let (asked, _) = log(s).await;
    // 30 tiles east: outside the declared extent, complete at once, nothing asked.
    let far = show(&cache, inside(tile(30, 0)));
    assert!(
        far.complete && far.items.is_empty(),
        "{:?}",
        far.missing_tiles
    );
    TimeoutFuture::new(100).await;
    assert_eq!(log(s).await.0, asked);
    // The same without the header: the far view is asked for.
    let s = "undeclared";
    let cache = complete_downtown_cache(s).await;
    assert!(!show(&cache, inside(tile(30, 0))).complete);
    cache.when_complete().await.unwrap();
    assert_eq!(log(s).await.0, 2);
}

/// What Yew's and Dioxus's props and contexts ask of a value: clones of one cache are
/// equal, two caches are not; and it can be printed.
#[wasm_bindgen_test]
fn a_cache_equals_its_clones_only() {
    let a: TileCache = TileCache::new(&options("eq", 0, 0)).unwrap();
    let b: TileCache = TileCache::new(&options("eq", 0, 0)).unwrap();
    assert_eq!(a, a.clone());
    assert_ne!(a, b);
    assert!(format!("{a:?}").contains("/s/eq/v1/batch"), "{a:?}");
}

/// An endpoint the browser cannot make a URL of is refused when the cache is made, as the
/// npm package refuses it, not a network error at every request.
#[wasm_bindgen_test]
fn an_endpoint_that_is_not_a_url_is_refused_when_the_cache_is_made() {
    for bad in [
        "http://[::1/v1/batch",
        "http://exa%zzmple.com/v1/batch",
        "https://:443/v1",
    ] {
        let e = TileCache::<Value>::new(&Options::new(bad))
            .err()
            .unwrap_or_else(|| panic!("{bad} was taken"));
        assert_eq!(e.code, ErrorCode::InvalidArgValue, "{bad}: {e}");
        assert!(e.message.contains("endpoint must be"), "{bad}: {e}");
    }
    assert!(TileCache::<Value>::new(&Options::new("http://127.0.0.1:1/v1/batch")).is_ok());
}

#[wasm_bindgen_test]
async fn a_cold_view_fetches_once_and_completes() {
    let s = "cold";
    let cache: TileCache = TileCache::new(&options(s, 0, 0)).unwrap();
    let view = show(&cache, inside(tile(0, 0)));
    assert!(!view.complete && view.items.is_empty());
    assert_eq!(view.missing_tiles, vec![tile(0, 0)]);
    cache.when_complete().await.unwrap();
    let view = cache.view();
    assert!(view.complete, "{:?}", view.missing_tiles);
    assert!(!view.items.is_empty(), "the synthetic city has homes here");
    assert!(view
        .items
        .iter()
        .all(|i| tile(0, 0).contains_point(i.item.lon, i.item.lat)));
    assert!(view.items[0].item.data.is_object(), "data kept as JSON");
    // The same view again is served from the cache.
    let again = show(&cache, inside(tile(0, 0)));
    assert!(again.complete);
    assert_eq!(again.items.len(), view.items.len());
    assert_eq!(
        log(s).await,
        (1, 0),
        "one request on the wire, none aborted"
    );
    assert_eq!(cache.stats().batch.requests, 1);
}

/// `maxBytes` means what it means in the npm package: each item is charged its id, class
/// and `data` as JSON, plus the core's overhead, once.
#[wasm_bindgen_test]
async fn an_item_is_charged_its_id_class_and_data_once() {
    let cache: TileCache = TileCache::new(&options("charged", 0, 0)).unwrap();
    show(&cache, inside(tile(0, 0)));
    cache.when_complete().await.unwrap();
    let items = cache.view().items;
    assert!(!items.is_empty());
    let stats = cache.stats().cache;
    assert_eq!(stats.entries, items.len(), "only the view's tile is cached");
    let charged: usize = (items.iter())
        .map(|s| {
            let data = serde_json::to_string(&s.item.data).unwrap();
            tilewarm::cache::item_size_bytes(&s.item.id, &s.item.class, data.len())
        })
        .sum();
    assert_eq!(stats.bytes, charged);
}

#[wasm_bindgen_test]
async fn a_one_tile_pan_after_prefetch_needs_no_foreground_request() {
    let s = "pan";
    let cache: TileCache = TileCache::new(&options(s, 1, 1)).unwrap();
    show(&cache, inside(tile(0, 0)));
    cache.when_complete().await.unwrap();
    wait_until("the prefetch ring has arrived", || async {
        let st = cache.stats();
        st.in_flight == 0 && st.prefetch_tiles_fetched > 0
    })
    .await;
    let before = cache.stats();
    let (wire_before, _) = log(s).await;
    let view = show(&cache, inside(tile(1, 0)));
    assert!(
        view.complete,
        "the tile east was prefetched: {:?}",
        view.missing_tiles
    );
    assert!(!view.items.is_empty());
    let after = cache.stats();
    let foreground =
        |st: &tilewarm_web::ClientStats| st.batch.requests - st.batch.prefetch_requests;
    assert_eq!(
        foreground(&after),
        foreground(&before),
        "no foreground request"
    );
    // Only prefetch requests (for the next ring) went out since.
    let prefetches = after.batch.prefetch_requests - before.batch.prefetch_requests;
    wait_until("the new prefetches reached the proxy", || async {
        log(s).await.0 >= wire_before + prefetches
    })
    .await;
    assert_eq!(log(s).await.0, wire_before + prefetches);
}

#[wasm_bindgen_test]
async fn a_stale_prefetch_is_aborted_on_the_wire() {
    let s = "stale";
    let cache = stalled_cache_shown_a_view(s, 5000).await;
    let st = cache.stats();
    assert!(
        st.batch.prefetch_requests >= 1,
        "a prefetch went out: {st:?}"
    );
    wait_until("the requests reached the proxy", || async {
        log(s).await.0 >= st.batch.requests
    })
    .await;
    // Far away: nothing around the first view is wanted any more.
    set_mode(s, "pass").await;
    show(&cache, inside(tile(40, 40)));
    let cancelled = cache.stats().batch.cancelled;
    assert!(cancelled >= 1, "the core cancelled the unwanted requests");
    wait_until("the proxy saw the aborted requests closed", || async {
        log(s).await.1 >= cancelled
    })
    .await;
    cache.when_complete().await.unwrap();
    assert!(cache.view().complete);
}

/// Dropping the last clone of a cache aborts what it has out (the proxy sees the request
/// closed) and ends its update streams; nothing of it is left running.
#[wasm_bindgen_test]
async fn dropping_the_cache_aborts_its_requests_and_ends_its_streams() {
    let s = "dropped";
    set_mode(s, "stall").await;
    let cache: TileCache = TileCache::new(&options(s, 0, 0)).unwrap();
    let mut updates = cache.updates();
    show(&cache, inside(tile(0, 0)));
    wait_until("the request is out", || async { log(s).await.0 >= 1 }).await;
    drop(cache);
    wait_until("it is aborted", || async { log(s).await.1 >= 1 }).await;
    let end = within(5000, updates.next()).await;
    assert!(matches!(end, Some(None)), "{:?}", end.map(|u| u.is_some()));
}

#[wasm_bindgen_test]
async fn a_500_and_a_stall_leave_cached_data_usable() {
    let s = "faults";
    let cache: TileCache = TileCache::new(&stalling(s, 0, 0)).unwrap();
    let home = inside(tile(0, 0));
    show(&cache, home);
    // Its first answer may take longer than the 800 ms timeout on a busy machine: asked
    // again (the update stream is followed from after it).
    for _ in 0..10 {
        if cache.when_complete().await.is_ok() {
            break;
        }
        show(&cache, home);
    }
    let mut updates = cache.updates();
    let cached = cache.view().items.len();
    assert!(cached > 0);

    set_mode(s, "500").await;
    show(&cache, inside(tile(3, 0)));
    let e = cache.when_complete().await.unwrap_err();
    assert_eq!((e.code, e.status), (ErrorCode::Http, Some(500)), "{e}");
    let view = show(&cache, home);
    assert!(
        view.complete && view.items.len() == cached,
        "cached data still shown"
    );

    set_mode(s, "stall").await;
    show(&cache, inside(tile(0, 3)));
    let e = cache.when_complete().await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Timeout, "{e}");
    let view = show(&cache, home);
    assert!(
        view.complete && view.items.len() == cached,
        "cached data still shown"
    );
    wait_until("the stalled request was aborted", || async {
        log(s).await.1 >= 1
    })
    .await;

    // Both failures went to the update stream too.
    let mut codes = Vec::new();
    while codes.len() < 2 {
        match updates.next().await.unwrap() {
            Update::Error(e) => codes.push(e.code),
            _ => {}
        }
    }
    assert_eq!(codes, vec![ErrorCode::Http, ErrorCode::Timeout]);
}

#[wasm_bindgen_test]
async fn hostile_answers_are_errors_not_panics() {
    let s = "hostile";
    set_mode(s, "hostile").await;
    let cache: TileCache = TileCache::new(&options(s, 0, 0)).unwrap();
    // One cold tile per hostile body in fault-proxy.mjs (8).
    for i in 0..8 {
        show(&cache, inside(tile(10 + i, 10)));
        let e = cache.when_complete().await.unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidResponse, "body {i}: {e}");
    }
    assert_eq!(cache.stats().cache.entries, 0);
    assert_eq!(cache.stats().errors, 8);
}

/// A body over the 8 MiB limit, declared or streamed without a length, is an invalid answer
/// (the stream given up once past the limit), not buffered whole.
#[wasm_bindgen_test]
async fn an_answer_larger_than_the_limit_is_refused() {
    for mode in ["huge", "huge-stream"] {
        set_mode(mode, mode).await;
        let cache: TileCache = TileCache::new(&options(mode, 0, 0)).unwrap();
        show(&cache, inside(tile(30, 10)));
        let e = cache.when_complete().await.unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidResponse, "{mode}: {e}");
        assert!(
            e.message.contains("the body is larger than 8388608 bytes"),
            "{mode}: {e}"
        );
        assert_eq!(cache.stats().cache.entries, 0);
    }
}

/// Security: a server that ignores tiers answers every tile with an item of tier "agent";
/// none reaches a public caller's cache, view or get.
#[wasm_bindgen_test]
async fn items_above_the_callers_tier_never_reach_the_page() {
    let s = "tier";
    set_mode(s, "tier").await;
    let cache: TileCache = TileCache::new(&options(s, 0, 0)).unwrap();
    show(&cache, inside(tile(0, 0)));
    let _ = cache.when_complete().await;
    assert!(log(s).await.0 >= 1);
    assert!(cache
        .view()
        .items
        .iter()
        .all(|i| i.item.access == Access::Public));
    assert_eq!(cache.stats().cache.entries, 0);
}

/// The tier each batch request of `session` that reached the proxy asked at, in order.
async fn asked_access(session: &str) -> Vec<String> {
    let bodies = control(session, "log").await["bodies"].clone();
    (bodies.as_array().unwrap().iter())
        .map(|b| b["access"].as_str().unwrap().to_string())
        .collect()
}

/// Security: a cache asking above the caller's verified tier (no token: public) gets the
/// server's 403, which names that tier in `x-tilewarm-access`; the cache follows it down and
/// asks again at it, so the view completes with nothing above it and no error.
#[wasm_bindgen_test]
async fn a_403_naming_a_lower_tier_lowers_the_cache() {
    let s = "forbidden-tier";
    let o = Options {
        access: Some("agent".into()),
        ..options(s, 0, 0)
    };
    let cache: TileCache = TileCache::new(&o).unwrap();
    assert_eq!(cache.access(), Access::Agent);
    let mut updates = cache.updates();
    show(&cache, inside(tile(0, 0)));
    cache.when_complete().await.unwrap();
    let view = cache.view();
    assert!(!view.items.is_empty());
    assert!(view.items.iter().all(|i| i.item.access == Access::Public));
    // The page can read the tier it was lowered to, and heard of it once.
    assert_eq!(cache.access(), Access::Public);
    let mut heard = Vec::new();
    while let Some(Some(u)) = within(100, updates.next()).await {
        if let Update::Access(a) = u {
            heard.push(a);
        }
    }
    assert_eq!(heard, [Access::Public]);
    let asked = asked_access(s).await;
    assert_eq!(asked, ["agent", "public"]);
    assert_eq!(cache.stats().errors, 0);
    // The old tier cannot be set again (a host doing so at every update would loop).
    let e = cache.set_access(Access::Agent).unwrap_err();
    assert_eq!(e.code, tilewarm_web::ErrorCode::OutOfRange, "{e}");
    assert!(e.message.contains("at most \"public\""), "{e}");
    cache.set_access(Access::Public).unwrap();
    // A sign-in is said with set_access_new_credential: the cache asks at agent again, and
    // shows the public items meanwhile. This credential (none) still gives public: the
    // server refuses again and the cache follows it down again, with no error.
    cache.set_access_new_credential(Access::Agent).unwrap();
    assert_eq!(cache.access(), Access::Agent);
    assert!(
        !cache.view().items.is_empty(),
        "the public items stay while agent loads"
    );
    let mut heard = Vec::new();
    while let Some(Some(u)) = within(100, updates.next()).await {
        if let Update::Access(a) = u {
            heard.push(a);
        }
        if cache.access() == Access::Public {
            break;
        }
    }
    cache.when_complete().await.unwrap();
    while let Some(Some(u)) = within(100, updates.next()).await {
        if let Update::Access(a) = u {
            heard.push(a);
        }
    }
    assert_eq!(cache.access(), Access::Public);
    assert_eq!(heard.first(), Some(&Access::Agent), "{heard:?}");
    assert_eq!(heard.last(), Some(&Access::Public), "{heard:?}");
    let asked = asked_access(s).await;
    assert_eq!(asked, ["agent", "public", "agent"]);
    assert_eq!(cache.stats().errors, 0);
}

#[wasm_bindgen_test]
async fn get_and_get_many_use_the_cache_then_the_endpoint() {
    let s = "get";
    let cache = complete_downtown_cache(s).await;
    let id = cache.view().items[0].item.id.clone();
    let (wire, _) = log(s).await;
    let hit = cache.get(&id).await.unwrap().expect("cached");
    assert_eq!(hit.id, id);
    assert_eq!(log(s).await.0, wire, "a cached item needs no request");
    let got = cache.get_many(&[&id, "no-such-home"]).await.unwrap();
    assert!(got[0].is_some() && got[1].is_none());
    assert_eq!(log(s).await.0, wire + 1, "one request for the unknown id");
    let e = cache.get_many(&[""]).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::OutOfRange);
}

/// A get's answer never pushes out the view's items: with the cache full of a view at rest,
/// an item outside it is handed to the get without being kept (it was, pushing one of the
/// view's items out, and the view was fetched again), never `None`.
#[wasm_bindgen_test]
async fn a_get_with_the_cache_full_of_the_view_is_handed_out_and_the_view_stays() {
    let s = "get-full";
    // What the view and a tile beside it hold, read by a cache without limits.
    let probe = complete_downtown_cache(s).await;
    let n = probe.view().items.len();
    show(&probe, inside(tile(3, 0)));
    probe.when_complete().await.unwrap();
    let far = probe.view().items[0].item.clone();
    drop(probe);
    let cache = full_downtown_cache(s, n).await;
    let (asked, _) = log(s).await;
    let got = cache.get(&far.id).await.unwrap();
    assert_eq!(got.as_deref(), Some(&*far), "handed out, not None");
    TimeoutFuture::new(200).await;
    assert_eq!(log(s).await.0, asked + 1, "the id, and not the view again");
    let now = show(&cache, inside(tile(0, 0)));
    assert!(
        now.complete && now.items.len() == n,
        "{:?}",
        now.missing_tiles
    );
    assert_eq!(cache.stats().errors, 0);
}

#[wasm_bindgen_test]
async fn the_update_stream_and_invalidate() {
    let s = "stream";
    let cache: TileCache = TileCache::new(&options(s, 0, 0)).unwrap();
    let mut updates = cache.updates();
    show(&cache, inside(tile(0, 0)));
    let first = loop {
        if let Update::View(v) = updates.next().await.unwrap() {
            break v;
        }
    };
    assert!(!first.items.is_empty());
    cache.when_complete().await.unwrap();
    let n = cache.invalidate(tilewarm_web::Invalidate::All);
    assert!(n > 0);
    match updates.next().await.unwrap() {
        Update::View(v) => assert!(!v.complete && v.items.is_empty()),
        other => panic!("expected the emptied view, got {other:?}"),
    }
    cache.when_complete().await.unwrap();
    assert_eq!(
        log(s).await.0,
        2,
        "the emptied visible tile was fetched again"
    );
}

/// The next changed tiles on `updates`, skipping the rest.
async fn next_changed<T>(updates: &mut tilewarm_web::Updates<Update<T>>) -> ChangedTiles {
    loop {
        match within(5000, updates.next()).await {
            Some(Some(Update::TilesChanged(c))) => return c,
            Some(Some(_)) => {}
            other => panic!(
                "no changed tiles on the update stream: {:?}",
                other.map(|u| u.is_some())
            ),
        }
    }
}

/// The tiles whose cached items changed, in the view or not, as the npm package's
/// `onTilesChanged` names them: a host tile `load_tiles` read outside the view when its
/// answer arrives, and when it is invalidated; any tile for an invalidation of everything.
#[wasm_bindgen_test]
async fn the_update_stream_names_the_tiles_whose_items_changed() {
    let s = "changed";
    let cache: TileCache = TileCache::new(&options(s, 0, 0)).unwrap();
    show(&cache, inside(tile(0, 0)));
    cache.when_complete().await.unwrap();
    let mut updates = cache.updates();
    // A host's tile at zoom 15, outside the view, in data tile (5, 5).
    let host = tile(5, 5).children().unwrap()[0];
    let loaded = cache.load_tiles(&[host]).await.unwrap();
    assert!(!loaded[0].items.as_ref().unwrap().is_empty());
    let changed = next_changed(&mut updates).await;
    assert!(
        changed.touches(host) && changed.touches(tile(5, 5)),
        "{changed:?}"
    );
    assert!(!changed.touches(tile(0, 0)), "{changed:?}");
    cache.invalidate(tilewarm_web::Invalidate::Tiles(&[tile(5, 5)]));
    let changed = next_changed(&mut updates).await;
    assert!(changed.touches(tile(5, 5)), "{changed:?}");
    assert!(!changed.touches(tile(0, 0)), "{changed:?}");
    cache.invalidate(tilewarm_web::Invalidate::All);
    assert_eq!(next_changed(&mut updates).await, ChangedTiles::All);
}

thread_local! {
    /// The cache a `Probe`'s `Drop` calls, and how many probes were dropped.
    static PROBED: std::cell::RefCell<Option<TileCache<Probe>>> = const { std::cell::RefCell::new(None) };
    static PROBES_DROPPED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// A `Probe`'s `Drop` disposes the cache (a component unmounting when an item it shows goes).
    static PROBE_DISPOSES: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// An item type whose `Drop` calls the cache holding it (a framework's signal that
/// unsubscribes, a handle that asks the cache again).
#[derive(Debug)]
struct Probe;

impl<'de> serde::Deserialize<'de> for Probe {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Probe, D::Error> {
        serde::de::IgnoredAny::deserialize(d)?;
        Ok(Probe)
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let cache = PROBED.with(|c| c.borrow().clone());
        if let Some(cache) = cache {
            let _ = (
                cache.stats(),
                cache.access(),
                cache.view(),
                cache.is_disposed(),
            );
            if PROBE_DISPOSES.with(|d| d.get()) {
                cache.dispose();
            }
        }
        PROBES_DROPPED.with(|n| n.set(n.get() + 1));
    }
}

/// An item's `T` whose `Drop` calls the cache: the cache drops its items after the call
/// that let go of them (an invalidation, a view replaced in an update queue nobody read,
/// `dispose`), never while its state is borrowed (a panic, which ends the page's cache).
#[wasm_bindgen_test]
async fn an_items_drop_may_call_the_cache() {
    let dropped = || PROBES_DROPPED.with(|n| n.get());
    let cache: TileCache<Probe> = TileCache::new(&options("probe", 0, 0)).unwrap();
    PROBED.with(|c| *c.borrow_mut() = Some(cache.clone()));
    show(&cache, inside(tile(0, 0)));
    cache.when_complete().await.unwrap();
    // Evicted by an invalidation, the cache holding the last `Rc`.
    let before = dropped();
    assert!(cache.invalidate(tilewarm_web::Invalidate::All) > 0);
    assert!(dropped() > before, "the invalidated items were dropped");
    // The last `Rc`s in a view queued for a stream not read, replaced by the next view.
    let idle = cache.updates();
    cache.when_complete().await.unwrap();
    assert!(idle.queued() > 0);
    let before = dropped();
    cache.invalidate(tilewarm_web::Invalidate::All);
    assert!(dropped() > before, "the replaced view's items were dropped");
    cache.when_complete().await.unwrap();
    // Dropped by `dispose` (the stream's view no longer holds them).
    drop(idle);
    let before = dropped();
    cache.dispose();
    assert!(
        dropped() > before,
        "the disposed cache's items were dropped"
    );
    let last = PROBED.with(|c| c.borrow_mut().take());
    drop(last);
}

/// Items' data into the caller's own type.
#[derive(serde::Deserialize, Debug)]
#[allow(dead_code)] // read through Debug only
struct Home {
    price: Option<f64>,
}

#[wasm_bindgen_test]
async fn data_into_a_callers_type() {
    let cache: TileCache<Home> = TileCache::new(&options("typed", 0, 0)).unwrap();
    show(&cache, inside(tile(0, 0)));
    cache.when_complete().await.unwrap();
    let items = cache.view().items;
    assert!(!items.is_empty());
    assert!(format!("{:?}", items[0].item.data).starts_with("Home"));
    // A type the data does not fit: the answer is refused as invalid, not half-used.
    let strict: TileCache<Vec<Home>> = TileCache::new(&options("typed2", 0, 0)).unwrap();
    show(&strict, inside(tile(0, 0)));
    let e = strict.when_complete().await.unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidResponse);
    assert!(e.message.contains("does not fit the item type"), "{e}");
}

fn js(json: &str) -> JsValue {
    js_sys::JSON::parse(json).unwrap()
}

/// A cache made from a JS options object (no prefetch, no retries) for `session`, whose auth
/// callback answers the token `stale` first and `good` after: the cache, and an array
/// holding one entry per call of the callback.
fn cache_with_a_stale_token_first(session: &str) -> (TileCache, js_sys::Array) {
    let o = js(&format!(
        r#"{{"endpoint":"{}","prefetch":{{"ring":0,"viewRing":0,"lookaheadMs":0}},"batch":{{"retries":0}}}}"#,
        endpoint(session)
    ));
    let calls = js_sys::Array::new();
    let token = js_sys::Function::new_with_args(
        "calls",
        "return () => { calls.push(1); return Promise.resolve(calls.length === 1 ? 'stale' : 'good'); }",
    )
    .call1(&JsValue::UNDEFINED, &calls)
    .unwrap();
    let auth = js_sys::Object::new();
    js_sys::Reflect::set(&auth, &"token".into(), &token).unwrap();
    js_sys::Reflect::set(&o, &"auth".into(), &auth).unwrap();
    let cache: TileCache = TileCache::from_js(&o).unwrap();
    (cache, calls)
}

#[wasm_bindgen_test]
async fn options_from_a_js_object_with_an_auth_callback() {
    let s = "auth-js";
    set_mode(s, "auth").await;
    // The first token is stale: the 401 makes the cache ask again, once.
    let (cache, calls) = cache_with_a_stale_token_first(s);
    show(&cache, inside(tile(0, 0)));
    cache.when_complete().await.unwrap();
    assert!(!cache.view().items.is_empty());
    assert_eq!(calls.length(), 2);
    let l = control(s, "log").await;
    assert_eq!(
        l["auth"],
        serde_json::json!(["Bearer stale", "Bearer good"])
    );

    let bad = TileCache::<Value>::from_js(&js(r#"{"endpoint":"http://h/","maxItem":3}"#));
    let e = bad.err().unwrap();
    assert!(e.message.contains("maxItem"), "{e}");
    let bad = TileCache::<Value>::from_js(&js(r#"{"endpoint":"http://h/","auth":{}}"#));
    assert_eq!(bad.err().unwrap().code, ErrorCode::InvalidArgType);
}

/// The first 401's body is cancelled before the request goes again with a fresh token, so
/// the browser can reuse the connection (an unread body holds it until it is collected).
/// `fetch` is wrapped for the test: each 401's body is a stream that counts its cancels.
#[wasm_bindgen_test]
async fn the_body_of_a_401_is_cancelled_before_the_retry() {
    let s = "auth-401-body";
    set_mode(s, "auth").await;
    let cancels = js_sys::Function::new_no_args(
        "const real = globalThis.fetch, n = { cancels: 0, restore: () => { globalThis.fetch = real; } };
         globalThis.fetch = async (...args) => {
           const r = await real(...args);
           if (r.status !== 401) return r;
           const text = await r.text();
           const body = new ReadableStream({
             start(c) { c.enqueue(new TextEncoder().encode(text)); },
             cancel() { n.cancels++; },
           });
           return new Response(body, { status: 401, headers: r.headers });
         };
         return n;",
    )
    .call0(&JsValue::NULL)
    .unwrap();
    let (cache, calls) = cache_with_a_stale_token_first(s);
    show(&cache, inside(tile(0, 0)));
    let done = cache.when_complete().await;
    let restore = js_sys::Reflect::get(&cancels, &"restore".into()).unwrap();
    js_sys::Function::from(restore)
        .call0(&JsValue::NULL)
        .unwrap();
    done.unwrap();
    assert_eq!(calls.length(), 2, "asked for a token again after the 401");
    // The cancel is started before the retry; its promise may settle after the answer.
    wait_until("the 401's body was cancelled", || async {
        // (At least: another test's 401 meanwhile would count too.)
        js_sys::Reflect::get(&cancels, &"cancels".into())
            .unwrap()
            .as_f64()
            >= Some(1.0)
    })
    .await;
}

/// A JS options object is read as the npm package reads its options: a key left
/// `undefined` (a group too) takes the default, `null` and a number that is not finite are
/// errors naming the option (not silently the default), and `headers` may be a `Headers`.
#[wasm_bindgen_test]
async fn js_options_undefined_null_nan_and_a_headers_instance_as_in_the_npm_package() {
    let s = "js-shapes";
    set_mode(s, "auth").await;
    let with = |key: &str, v: &JsValue| {
        let o = js(&format!(
            r#"{{"endpoint":"{}","prefetch":{{"ring":0,"viewRing":0,"lookaheadMs":0}},"batch":{{"retries":0}}}}"#,
            endpoint(s)
        ));
        let (group, key) = key
            .split_once('.')
            .map_or((None, key), |(g, k)| (Some(g), k));
        let target = group.map_or(o.clone(), |g| js_sys::Reflect::get(&o, &g.into()).unwrap());
        js_sys::Reflect::set(&target, &key.into(), v).unwrap();
        TileCache::<Value>::from_js(&o)
    };
    for key in [
        "ttl",
        "headers",
        "bounds",
        "maxItems",
        "batch.timeoutMs",
        "access",
    ] {
        assert!(with(key, &JsValue::UNDEFINED).is_ok(), "{key}: undefined");
    }
    for (key, v) in [
        ("maxItems", JsValue::from_f64(f64::NAN)),
        ("batch.timeoutMs", JsValue::from_f64(f64::INFINITY)),
        ("minZoom", JsValue::from_f64(f64::NEG_INFINITY)),
    ] {
        let e = with(key, &v)
            .err()
            .unwrap_or_else(|| panic!("{key}: {v:?} was taken"));
        assert_eq!(e.code, ErrorCode::OutOfRange, "{key}: {e}");
        assert!(e.message.contains(key), "{key}: {e}");
    }
    // A fraction or a negative number for an integer option is the npm package's range
    // error naming the option, as a number above its range is.
    for (key, v, says) in [
        (
            "batch.maxTiles",
            1.5,
            "batch.maxTiles must be an integer in 1..=64, got 1.5",
        ),
        (
            "batch.coalesceLevels",
            -1.0,
            "batch.coalesceLevels must be an integer in 0..=4, got -1",
        ),
        (
            "tileZoom",
            300.0,
            "tileZoom must be an integer in 0..=24, got 300",
        ),
        (
            "ttl",
            0.5,
            "ttl.byClass.sold must be an integer number of seconds in 1..=2592000, got 0.5",
        ),
    ] {
        let v = if key == "ttl" {
            js(&format!(r#"{{"byClass":{{"sold":{v}}}}}"#))
        } else {
            JsValue::from_f64(v)
        };
        let e = with(key, &v)
            .err()
            .unwrap_or_else(|| panic!("{key}: {v:?} was taken"));
        assert_eq!((e.code, e.message.as_str()), (ErrorCode::OutOfRange, says));
    }
    // A value of another type: the npm package's message, naming the option and what it
    // must be (serde's named neither).
    for (key, v, says) in [
        (
            "batch.timeoutMs",
            JsValue::from_str("fast"),
            r#"batch.timeoutMs must be an integer in 1..=600000, got "fast""#,
        ),
        (
            "maxItems",
            JsValue::TRUE,
            "maxItems must be an integer in 1..=10000000, got true",
        ),
        (
            "access",
            JsValue::from_f64(2.0),
            r#"access must be one of "public", "registered", "verified", "agent", got 2"#,
        ),
    ] {
        let e = with(key, &v).err().unwrap();
        assert_eq!(
            (e.code, e.message.as_str()),
            (ErrorCode::InvalidArgType, says)
        );
    }
    for key in ["ttl", "headers", "maxItems", "batch.retries", "access"] {
        let e = with(key, &JsValue::NULL)
            .err()
            .unwrap_or_else(|| panic!("{key}: null was taken"));
        assert_eq!(e.code, ErrorCode::InvalidArgType, "{key}: {e}");
        assert!(e.message.contains(key), "{key}: {e}");
    }
    // `headers: new Headers(...)` or a `Map`, as the npm package takes them: the header
    // goes out.
    let h = web_sys::Headers::new().unwrap();
    h.set("authorization", "Bearer good").unwrap();
    let m = js_sys::Map::new();
    m.set(&"authorization".into(), &"Bearer good".into());
    for (n, headers) in [JsValue::from(h), m.into()].iter().enumerate() {
        let cache = with("headers", headers).unwrap();
        show(&cache, inside(tile(n as i64, 0)));
        cache.when_complete().await.unwrap();
    }
    let l = control(s, "log").await;
    assert_eq!(l["auth"], serde_json::json!(["Bearer good", "Bearer good"]));
}

#[wasm_bindgen_test]
async fn a_token_refused_twice_is_err_unauthorized() {
    let s = "auth-bad";
    set_mode(s, "auth").await;
    let cache: TileCache =
        TileCache::with_auth(&options(s, 0, 0), Some(Auth::fixed("wrong"))).unwrap();
    show(&cache, inside(tile(0, 0)));
    let e = cache.when_complete().await.unwrap_err();
    assert_eq!(e.code.as_str(), "ERR_UNAUTHORIZED", "{e}");
    assert_eq!(log(s).await.0, 2, "asked again once, not more");
}

/// Resolves to `None` when `f` has not finished within `ms` (a guard against hanging).
async fn within<F: std::future::Future + Unpin>(ms: u32, f: F) -> Option<F::Output> {
    use futures_util::future::{select, Either};
    match select(f, TimeoutFuture::new(ms)).await {
        Either::Left((v, _)) => Some(v),
        Either::Right(_) => None,
    }
}

/// The next error on `updates`, skipping views.
async fn next_error<T>(updates: &mut tilewarm_web::Updates<Update<T>>) -> tilewarm_web::Error {
    loop {
        match within(5000, updates.next()).await {
            Some(Some(Update::Error(e))) => return e,
            Some(Some(_)) => {}
            other => panic!(
                "no error on the update stream: {:?}",
                other.map(|u| u.is_some())
            ),
        }
    }
}

/// Shows tile (0, 0), then a view far from it (which would otherwise fetch its tile again),
/// and drops one of its items from the cache: a `get` of that id must go to the endpoint.
async fn an_id_no_longer_cached(cache: &TileCache) -> String {
    show(cache, inside(tile(0, 0)));
    cache.when_complete().await.unwrap();
    let id = cache.view().items[0].item.id.clone();
    show(cache, inside(tile(40, 40)));
    cache.when_complete().await.unwrap();
    cache.invalidate(tilewarm_web::Invalidate::Ids(&[id.as_str()]));
    id
}

/// A partial answer (200, the edge's origin failed) leaves an item that exists out of both
/// `items` and `missing`: its `get` fails with the answer's `error`, never "does not
/// exist", and the page hears of it; one with no `error` member is an invalid answer.
#[wasm_bindgen_test]
async fn a_get_a_partial_answer_left_out_fails() {
    for (mode, code, status, says) in [
        (
            "partial",
            ErrorCode::Http,
            Some(504),
            "upstream_timeout: injected by fault-proxy",
        ),
        (
            "partial-bare",
            ErrorCode::InvalidResponse,
            None,
            "neither lists them in items nor in missing",
        ),
    ] {
        let cache: TileCache = TileCache::new(&options(mode, 0, 0)).unwrap();
        let id = an_id_no_longer_cached(&cache).await;
        let mut updates = cache.updates();
        let errors_before = cache.stats().errors;
        set_mode(mode, mode).await;
        let e = within(5000, Box::pin(cache.get(&id)))
            .await
            .expect("the get ended")
            .unwrap_err();
        assert_eq!((e.code, e.status), (code, status), "{mode}: {e}");
        assert!(e.message.contains(says), "{mode}: {e}");
        assert!(e.message.contains(&format!("(first {id:?})")), "{e}");
        assert_eq!(e.ids, [id.clone()], "{e}");
        assert_eq!(next_error(&mut updates).await, e);
        // Counted as every error the page hears is (the shell's, not the core's: it was not).
        assert_eq!(cache.stats().errors, errors_before + 1, "{mode}");
        // The server has it: once the answer is whole, the get finds it.
        set_mode(mode, "pass").await;
        assert_eq!(cache.get(&id).await.unwrap().unwrap().id, id);
    }
}

/// What a partial answer shedding load (`overloaded`: an edge whose origin is at capacity)
/// leaves out is retried as a whole 503's work is: the `get` waits for the retry, and the
/// page hears of each try as the npm package's `onError` does (`will_retry` until the
/// retries are spent), with the status the server answers the code with. A code that does
/// not shed load (`payload_too_large`) fails the get at once, with its status too.
#[wasm_bindgen_test]
async fn ids_a_partial_answer_shedding_load_left_out_are_retried_and_reported() {
    use std::cell::RefCell;
    use std::rc::Rc;
    // A code whose failure is retried (shed load, a failed origin) as the core retries it;
    // one that is not (too large, a bad request) at once, with the code's own status.
    let cases = [
        ("overloaded", 503, 2),
        ("upstream_error", 502, 2),
        ("payload_too_large", 413, 1),
        ("bad_request", 400, 1),
    ];
    for (code, status, tries) in cases {
        let s = format!("partial-{code}").replace('_', "-");
        let cache: TileCache = TileCache::new(&options(&s, 0, 1)).unwrap();
        let id = an_id_no_longer_cached(&cache).await;
        let mut updates = cache.updates();
        set_mode(&s, &format!("partial={code}")).await;
        let got: Rc<RefCell<Option<tilewarm_web::Error>>> = Rc::default();
        let (c, g, gid) = (cache.clone(), got.clone(), id.clone());
        wasm_bindgen_futures::spawn_local(async move {
            *g.borrow_mut() = Some(c.get(&gid).await.unwrap_err());
        });
        for t in 1..=tries {
            let e = next_error(&mut updates).await;
            let last = t == tries;
            assert_eq!(e.will_retry, !last, "{code}, try {t}: {e}");
            assert_eq!((e.code, e.status), (ErrorCode::Http, Some(status)), "{e}");
            assert_eq!(e.server_code.as_deref(), Some(code), "{e}");
            assert_eq!(e.ids, [id.clone()], "{e}");
            if !last {
                // Its get waits for the retry.
                assert!(got.borrow().is_none(), "{code}: the get ended at try {t}");
                continue;
            }
            wait_until("the get ends", || async { got.borrow().is_some() }).await;
            assert_eq!(got.borrow().as_ref(), Some(&e), "{code}");
        }
        let bodies = control(&s, "log").await["bodies"].clone();
        let asked = (bodies.as_array().unwrap().iter())
            .filter(|b| {
                b["ids"]
                    .as_array()
                    .is_some_and(|ids| ids.contains(&id.as_str().into()))
            })
            .count();
        assert_eq!(asked, tries, "{code}: one request a try");
    }
}

/// Shows tile (0, 0) on `cache` and waits for it to fail: the error, checked to be the fault
/// proxy's injected 503 `overloaded` (its status, the error body's code as the npm
/// package's serverCode, and its message).
async fn fails_as_the_injected_overload(cache: &TileCache) -> tilewarm_web::Error {
    show(cache, inside(tile(0, 0)));
    let e = cache.when_complete().await.unwrap_err();
    assert_eq!((e.code, e.status), (ErrorCode::Http, Some(503)), "{e}");
    assert_eq!(e.server_code.as_deref(), Some("overloaded"), "{e}");
    assert!(
        e.message
            .contains("HTTP 503: overloaded: injected by fault-proxy"),
        "{e}"
    );
    e
}

/// Tiles a partial answer shedding load left out fail as a whole refusal's would: their
/// error carries the server's code (`server_code`) and the status it answers it with, as
/// the npm package's does.
#[wasm_bindgen_test]
async fn tiles_a_partial_answer_left_out_fail_with_the_servers_code() {
    let s = "partial-tiles";
    set_mode(s, "partial-tiles=overloaded").await;
    let cache: TileCache = TileCache::new(&options(s, 0, 0)).unwrap();
    let mut updates = cache.updates();
    let e = fails_as_the_injected_overload(&cache).await;
    assert_eq!(next_error(&mut updates).await, e);
}

/// An answer the client's checks refuse (well-formed JSON, an item's latitude out of range)
/// is not taken: the `get` of an id in it ends with the error when no retry is left, or
/// waits for the retry, whose whole answer it gets; never `Ok(None)`, as if the item did
/// not exist.
#[wasm_bindgen_test]
async fn a_get_an_invalid_answer_was_for_fails_or_waits_for_the_retry() {
    for (mode, retries) in [("bad-lat", 0), ("bad-lat-once", 1)] {
        let cache: TileCache = TileCache::new(&options(mode, 0, retries)).unwrap();
        let id = an_id_no_longer_cached(&cache).await;
        let mut updates = cache.updates();
        set_mode(mode, mode).await;
        let got = within(5000, Box::pin(cache.get(&id)))
            .await
            .expect("the get ended");
        let e = next_error(&mut updates).await;
        assert_eq!(e.code, ErrorCode::InvalidResponse, "{mode}: {e}");
        assert!(
            e.message.contains("lat must be in -90..=90, got 95"),
            "{mode}: {e}"
        );
        if retries == 0 {
            assert_eq!(got.unwrap_err(), e, "{mode}");
        } else {
            assert_eq!(got.unwrap().expect("found by the retry").id, id, "{mode}");
        }
    }
}

/// Shows tile (0, 0) with its ring prefetched, then drops one item of the tile east from
/// the cache and shows (0, 0) again with the proxy stalling: the refresh of that item goes
/// out in a prefetch request. Returns the item's id.
async fn an_id_in_a_stalled_prefetch(s: &str, cache: &TileCache) -> String {
    show(cache, inside(tile(1, 0)));
    cache.when_complete().await.unwrap();
    let victim = cache.view().items[0].item.id.clone();
    show(cache, inside(tile(0, 0)));
    cache.when_complete().await.unwrap();
    wait_until("the ring has arrived", || async {
        cache.stats().in_flight == 0
    })
    .await;
    cache.invalidate(tilewarm_web::Invalidate::Ids(&[victim.as_str()]));
    set_mode(s, "stall").await;
    let before = cache.stats().batch.prefetch_requests;
    show(cache, inside(tile(0, 0)));
    let st = cache.stats();
    assert!(
        st.batch.prefetch_requests > before && st.in_flight > 0,
        "the item's refresh went out in a prefetch: {st:?}"
    );
    victim
}

/// A `get` of an id already out in a prefetch request joins it (no request of its own);
/// when that request is cancelled (the map moved away) the id is asked for again, and when
/// it gives up the get fails with its error: it never waits for ever.
#[wasm_bindgen_test]
async fn a_get_joined_to_a_prefetch_outlives_its_cancel_and_ends_with_its_failure() {
    let s = "get-cancelled";
    let mut o = options(s, 1, 0);
    o.batch.timeout_ms = Some(5000);
    let cache: TileCache = TileCache::new(&o).unwrap();
    let victim = an_id_in_a_stalled_prefetch(s, &cache).await;
    let requests = cache.stats().batch.requests;
    let mut get = Box::pin(cache.get(&victim));
    assert!(within(300, &mut get).await.is_none());
    assert_eq!(
        cache.stats().batch.requests,
        requests,
        "joined the prefetch"
    );
    set_mode(s, "pass").await;
    show(&cache, inside(tile(40, 40)));
    assert!(cache.stats().batch.cancelled >= 1);
    let got = within(3000, &mut get).await.expect("asked again, answered");
    assert_eq!(got.unwrap().unwrap().id, victim);

    // No retries: the prefetch's timeout is the end of it.
    let s = "get-gave-up";
    let mut o = options(s, 1, 0);
    o.batch.timeout_ms = Some(1500);
    let cache: TileCache = TileCache::new(&o).unwrap();
    let victim = an_id_in_a_stalled_prefetch(s, &cache).await;
    let requests = cache.stats().batch.requests;
    let e = within(3000, Box::pin(cache.get(&victim)))
        .await
        .expect("the get ended with its prefetch")
        .unwrap_err();
    assert_eq!(
        cache.stats().batch.requests,
        requests,
        "joined the prefetch"
    );
    assert_eq!(
        (e.code, e.kind, e.will_retry),
        (
            ErrorCode::Timeout,
            Some(tilewarm_web::Kind::Prefetch),
            false
        ),
        "{e}"
    );
}

/// A view too wide to fetch is not an error: it says so (`too_wide`) and holds the cached
/// items in it; it never completes, so `when_complete` fails with `TooManyTiles` (the
/// waiters of the view before too), and what was in flight for the last view is cancelled
/// on the wire at once.
#[wasm_bindgen_test]
async fn a_view_too_wide_fails_when_complete_and_cancels_at_once() {
    const WIDE: [f64; 5] = [-125.0, 40.0, -115.0, 50.0, 14.5];
    let s = "too-wide";
    let cache = complete_downtown_cache(s).await;
    let cached = cache.view().items.len();
    assert!(cached > 0);
    let sent = cache.stats().batch.requests;
    let wide = cache
        .set_viewport(WIDE[0], WIDE[1], WIDE[2], WIDE[3], WIDE[4])
        .unwrap();
    let limit = wide.too_wide.expect("too wide");
    assert!(limit.max > 0);
    assert!(!wide.complete);
    assert!(
        wide.items.len() >= cached,
        "the cached items in it are shown"
    );
    assert_eq!(cache.view().too_wide, Some(limit));
    assert_eq!(
        cache.stats().batch.requests,
        sent,
        "nothing is fetched for it"
    );
    let e = cache.when_complete().await.unwrap_err();
    assert_eq!(e.code, ErrorCode::TooManyTiles, "{e}");
    assert!(e.message.contains("never completes"), "{e}");
    assert!(!cache.view().complete);
    // Back to a view it can fetch: complete again.
    show(&cache, inside(tile(0, 0)));
    cache.when_complete().await.unwrap();

    let s = "too-wide-cancels";
    let cache = stalled_cache_shown_a_view(s, 6000).await;
    let waiting = cache.when_complete();
    let sent = cache.stats().batch.requests;
    assert!(cache.stats().batch.prefetch_requests >= 1);
    wait_until("the requests reached the proxy", || async {
        log(s).await.0 >= sent
    })
    .await;
    let _ = cache.set_viewport(WIDE[0], WIDE[1], WIDE[2], WIDE[3], WIDE[4]);
    let e = within(500, Box::pin(waiting))
        .await
        .expect("failed at once");
    assert_eq!(e.unwrap_err().code, ErrorCode::TooManyTiles);
    let cancelled = cache.stats().batch.cancelled;
    assert!(cancelled >= 1, "the prefetches were cancelled");
    wait_until("the proxy saw them aborted", || async {
        log(s).await.1 >= cancelled
    })
    .await;
}

/// A token the browser would refuse in a header (a line break) is `ERR_UNAUTHORIZED` with
/// nothing sent, not a request that throws and times out; so is a callback that fails,
/// which is not the backend's trouble (the breaker stays shut). A bad header is refused
/// when the cache is made.
#[wasm_bindgen_test]
async fn tokens_and_headers_the_browser_would_refuse_never_go_out() {
    let s = "token-newline";
    let cache: TileCache =
        TileCache::with_auth(&options(s, 0, 0), Some(Auth::fixed("good\nbad"))).unwrap();
    show(&cache, inside(tile(0, 0)));
    let e = within(600, Box::pin(cache.when_complete()))
        .await
        .expect("failed at once, not by the timeout")
        .unwrap_err();
    assert_eq!((e.code, e.status), (ErrorCode::Unauthorized, None), "{e}");
    assert!(e.message.contains("must give a bearer token"), "{e}");
    assert!(!e.message.contains("good"), "never the token: {e}");
    assert_eq!(log(s).await.0, 0, "nothing sent");

    let s = "token-fails";
    let cache: TileCache = TileCache::with_auth(
        &options(s, 0, 0),
        Some(Auth::new(|| async { Err("signed out".to_string()) })),
    )
    .unwrap();
    for i in 0..4 {
        show(&cache, inside(tile(20 + i, 20)));
        let e = cache.when_complete().await.unwrap_err();
        assert_eq!((e.code, e.status), (ErrorCode::Unauthorized, None), "{e}");
        assert!(e.message.contains("callback failed: signed out"), "{e}");
    }
    let st = cache.stats();
    assert_eq!((st.breaker_open, st.batch.breaker_opened), (false, 0));
    assert_eq!(log(s).await.0, 0, "nothing sent");

    let mut o = options("header", 0, 0);
    o.headers.insert("x-bad".into(), "a\nb".into());
    let e = TileCache::<Value>::new(&o).err().unwrap();
    assert_eq!(e.code, ErrorCode::InvalidArgValue);
    assert!(e.message.contains("headers.x-bad"), "{e}");
}

/// A `Retry-After` given as an HTTP date is honoured (the wait until then), as in the npm
/// package.
#[wasm_bindgen_test]
async fn a_retry_after_date_is_a_wait() {
    let s = "retry-date";
    set_mode(s, "503-date").await;
    let cache: TileCache = TileCache::new(&options(s, 0, 0)).unwrap();
    let e = fails_as_the_injected_overload(&cache).await;
    // 3 s ahead, to the second the date holds, less the time the answer took.
    let wait = e.retry_after_ms.expect("a wait");
    assert!((1000..=3000).contains(&wait), "{wait} ms");
}

/// A view that `set_access` makes complete at once (back to a tier whose tiles are cached)
/// says so on the update stream, as an answer completing it does.
#[wasm_bindgen_test]
async fn a_view_set_access_completes_is_a_complete_update() {
    let s = "access-complete";
    let cache = complete_downtown_cache(s).await;
    set_mode(s, "stall").await;
    cache.set_access(Access::Registered).unwrap();
    assert!(
        !cache.view().complete,
        "the public lists do not serve a registered caller"
    );
    let mut updates = cache.updates();
    cache.set_access(Access::Public).unwrap();
    let mut got = Vec::new();
    while let Some(Some(u)) = within(100, updates.next()).await {
        got.push(match u {
            Update::View(v) => format!("view complete={}", v.complete),
            Update::Access(a) => format!("access {a}"),
            Update::Complete => "complete".to_string(),
            Update::Error(e) => format!("error {e}"),
            Update::TilesChanged(t) => format!("changed {t:?}"),
        });
    }
    // Any tile may have changed (the tier did), as the npm package's `onTilesChanged(null)`.
    assert_eq!(
        got,
        [
            "access public",
            "complete",
            "view complete=true",
            "changed All"
        ]
    );
}

/// Sets `document.visibilityState` as the browser would for a tab behind another (hidden)
/// or in front again, and tells the page.
fn page_hidden(hidden: bool) {
    let js = if hidden {
        "Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => 'hidden' });"
    } else {
        "delete document.visibilityState;"
    };
    js_sys::Function::new_no_args(&format!(
        "{js} document.dispatchEvent(new Event('visibilitychange'));"
    ))
    .call0(&JsValue::NULL)
    .unwrap();
}

/// A view at rest is refreshed when its items expire (here every second), but not while
/// the page is hidden: the wake-up waits until it is shown, or until the page waits.
#[wasm_bindgen_test]
async fn a_hidden_page_at_rest_makes_no_requests_until_it_is_shown() {
    let s = "hidden";
    set_mode(s, "ttl1").await;
    let cache = complete_downtown_cache(s).await;
    page_hidden(true);
    let (before, _) = log(s).await;
    TimeoutFuture::new(3000).await;
    let (hidden, _) = log(s).await;
    page_hidden(false);
    assert_eq!(hidden, before, "no request in 3 s hidden at rest");
    wait_until("the view is refreshed once shown", || async {
        log(s).await.0 > before
    })
    .await;
    // Hidden again: when_complete wakes the cache, which sees the view expired.
    page_hidden(true);
    TimeoutFuture::new(2500).await;
    let (hidden, _) = log(s).await;
    cache.when_complete().await.unwrap();
    wait_until("when_complete() refetches the expired view", || async {
        log(s).await.0 > hidden
    })
    .await;
    page_hidden(false);
}

/// A `get` whose future was dropped while it waited for a retry does not keep a hidden
/// page sending: the retry waits until the page is shown, as for a view at rest.
#[wasm_bindgen_test]
async fn a_dropped_get_does_not_keep_a_hidden_page_asking() {
    let s = "get-dropped";
    let cache: TileCache = TileCache::new(&options(s, 0, 3)).unwrap();
    let id = an_id_no_longer_cached(&cache).await;
    set_mode(s, "503-date").await;
    let (before, _) = log(s).await;
    // Answered 503 with a wait of about 3 s: the get waits for the retry, and is dropped.
    assert!(within(1000, Box::pin(cache.get(&id))).await.is_none());
    let (asked, _) = log(s).await;
    assert!(asked > before, "the get was asked");
    page_hidden(true);
    TimeoutFuture::new(4500).await;
    let (hidden, _) = log(s).await;
    page_hidden(false);
    assert_eq!(
        hidden, asked,
        "no retry while hidden for a get nobody awaits"
    );
    set_mode(s, "pass").await;
    wait_until("the retry goes once shown", || async {
        log(s).await.0 > asked
    })
    .await;
}

/// Invalidations (a change feed's, all day) drop what changed at once, in a hidden page
/// too: the view reports the items gone. A hidden page that awaits nothing refetches only
/// when it is shown again; a visible one at once.
#[wasm_bindgen_test]
async fn a_hidden_page_refetches_what_was_invalidated_only_when_shown() {
    let s = "hidden-invalidate";
    let cache = complete_downtown_cache(s).await;
    let ids: Vec<String> = cache
        .view()
        .items
        .iter()
        .map(|i| i.item.id.clone())
        .collect();
    assert!(ids.len() >= 50, "{} items in view", ids.len());
    page_hidden(true);
    let (before, _) = log(s).await;
    for id in &ids[..50] {
        assert_eq!(
            cache.invalidate(tilewarm_web::Invalidate::Ids(&[id.as_str()])),
            1
        );
        let v = cache.view();
        assert!(
            !v.complete && v.items.iter().all(|i| &i.item.id != id),
            "{id} gone at once"
        );
        TimeoutFuture::new(20).await;
    }
    TimeoutFuture::new(1000).await;
    let (hidden, _) = log(s).await;
    page_hidden(false);
    assert_eq!(hidden, before, "no request while hidden");
    wait_until("the view is refetched once shown", || async {
        cache.view().complete
    })
    .await;
    assert_eq!(log(s).await.0, before + 1, "one request");
    let shown: Vec<String> = cache
        .view()
        .items
        .iter()
        .map(|i| i.item.id.clone())
        .collect();
    assert!(ids[..50].iter().all(|id| shown.contains(id)));
    // A visible page refetches at once.
    cache.invalidate(tilewarm_web::Invalidate::Ids(&[ids[0].as_str()]));
    assert_eq!(cache.stats().in_flight, 1, "sent at once when visible");
    cache.when_complete().await.unwrap();
}

/// A `get` whose request gives up (a foreground request of ids alone) fails, and
/// `when_complete` waits on for the view, which it does not touch: it fails only with a
/// request for one of the view's tiles.
#[wasm_bindgen_test]
async fn a_get_that_fails_does_not_fail_when_complete() {
    let s = "get-500";
    let cache: TileCache = TileCache::new(&options(s, 0, 0)).unwrap();
    let id = an_id_no_longer_cached(&cache).await;
    set_mode(s, "ids-500").await;
    // A cold view, answered after 500 ms; the get's 500 comes first. Both are awaited
    // together, so the wait for the view is registered before the get fails.
    show(&cache, inside(tile(-3, 2)));
    let both = futures_util::future::join(cache.when_complete(), Box::pin(cache.get(&id)));
    let (complete, got) = within(5000, Box::pin(both)).await.expect("both ended");
    let e = got.unwrap_err();
    assert_eq!(e.status, Some(500), "{e}");
    complete.expect("the view completes: the get's failure is not the view's");
    assert!(cache.view().complete);
}

/// The tiles the session's first `requests` requests asked for, in the order they came.
async fn asked_tiles(session: &str, requests: usize) -> Vec<String> {
    let l = control(session, "log").await;
    let bodies = l["bodies"].as_array().cloned().unwrap_or_default();
    bodies
        .iter()
        .take(requests)
        .flat_map(|b| b["tiles"].as_array().cloned().unwrap_or_default())
        .map(|t| t.as_str().unwrap_or_default().to_string())
        .collect()
}

/// `batch.coalesceLevels`: by default a view over the four data tiles of a zoom-13 tile asks
/// for that one tile; at 0 it asks for the four data tiles.
#[wasm_bindgen_test]
async fn batch_coalesce_levels_changes_the_tiles_asked_for() {
    let t13 = TileId::from_lon_lat(-122.3321, 47.6062, 13).unwrap();
    let b = t13.bounds();
    let (w, h) = (b.east - b.west, b.north - b.south);
    let view = [
        b.west + w * 0.1,
        b.south + h * 0.1,
        b.east - w * 0.1,
        b.north - h * 0.1,
        14.0,
    ];
    let mut data: Vec<String> = t13.children().unwrap().map(|t| t.to_string()).to_vec();
    data.sort();
    for (s, levels, want) in [
        ("coalesce-default", None, vec![t13.to_string()]),
        ("coalesce-off", Some(0), data),
    ] {
        let mut o = options(s, 0, 0);
        o.batch.coalesce_levels = levels;
        let cache: TileCache = TileCache::new(&o).unwrap();
        assert!(!show(&cache, view).complete);
        cache.when_complete().await.unwrap();
        let mut asked = asked_tiles(s, usize::MAX).await;
        asked.sort();
        assert_eq!(asked, want, "{s}");
    }
}

/// `prefetch.warmBelowMinZoom`: a view just below `minZoom` fetches nothing by default, and
/// prefetches the data tiles under it when it is set; `prefetch.budgetPerVisible` 0 with
/// `maxTilesPerRound` 1 holds that round to one tile.
#[wasm_bindgen_test]
async fn prefetch_warm_below_min_zoom_and_budget_change_what_is_prefetched() {
    let v = inside(tile(0, 0));
    let below = [v[0] - 0.02, v[1] - 0.01, v[2] + 0.02, v[3] + 0.01, 11.5];
    let round = |s: &'static str, warm: Option<f64>, budget: Option<(f64, usize)>| async move {
        let mut o = options(s, 0, 0);
        o.prefetch.warm_below_min_zoom = warm;
        if let Some((per_visible, per_round)) = budget {
            o.prefetch.budget_per_visible = Some(per_visible);
            o.prefetch.max_tiles_per_round = Some(per_round);
        }
        // Prefetch areas as data tiles, so the tiles asked for are counted as they are.
        o.batch.coalesce_levels = Some(0);
        let cache: TileCache = TileCache::new(&o).unwrap();
        let view = show(&cache, below);
        assert!(view.complete && view.items.is_empty(), "{s}: below minZoom");
        // Planned and sent by set_viewport itself.
        let prefetches = cache.stats().batch.prefetch_requests;
        wait_until("the prefetches reached the proxy", || async {
            log(s).await.0 >= prefetches
        })
        .await;
        // The tiles of those requests (later rounds may follow their answers).
        let n = asked_tiles(s, prefetches as usize).await.len();
        drop(cache);
        (prefetches, n)
    };
    assert_eq!(round("warm-default", None, None).await, (0, 0));
    let (requests, tiles) = round("warm-on", Some(1.0), None).await;
    assert!(
        requests > 0 && tiles > 4,
        "{requests} requests, {tiles} tiles"
    );
    let (requests, tiles) = round("warm-budget", Some(1.0), Some((0.0, 1))).await;
    assert_eq!((requests, tiles), (1, 1));
}

/// `set_popular_tiles`: prefetch asks for the popular tiles alone, the view wherever it
/// is; a list with a tile finer than `tileZoom` is refused and the limit kept.
#[wasm_bindgen_test]
async fn popular_tiles_limit_prefetch_to_them() {
    let s = "popular";
    let mut o = options(s, 1, 0);
    // Prefetch areas as data tiles, so the tiles asked for are counted as they are.
    o.batch.coalesce_levels = Some(0);
    let cache: TileCache = TileCache::new(&o).unwrap();
    let east = tile(1, 0);
    cache.set_popular_tiles(Some(&[east])).unwrap();
    let fine = TileId::new(16, 1, 1).unwrap();
    let e = cache.set_popular_tiles(Some(&[east, fine])).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidTile, "{e}");
    assert!(
        e.message.contains(
            "popular tiles must be data tiles (zoom 14) or coarser ones, got one at zoom 16"
        ),
        "{e}"
    );
    let view = show(&cache, inside(tile(0, 0)));
    assert!(!view.complete);
    cache.when_complete().await.unwrap();
    wait_until("the prefetch has arrived", || async {
        let st = cache.stats();
        st.in_flight == 0 && st.prefetch_tiles_fetched > 0
    })
    .await;
    let requests = cache.stats().batch.requests;
    wait_until("the requests reached the proxy", || async {
        log(s).await.0 >= requests
    })
    .await;
    let mut asked = asked_tiles(s, requests as usize).await;
    asked.sort();
    assert_eq!(asked, [tile(0, 0).to_string(), east.to_string()]);
}

/// The page's `document.cookie` (set or cleared), without web-sys's `HtmlDocument`.
fn set_cookie(cookie: &str) {
    let doc = web_sys::window().unwrap().document().unwrap();
    js_sys::Reflect::set(
        &doc,
        &JsValue::from_str("cookie"),
        &JsValue::from_str(cookie),
    )
    .unwrap();
}

/// `credentials: "include"` sends the page's cookies to the endpoint on another origin (the
/// fault proxy is on another port of the page's host, so same-site: the cookie applies);
/// by default (`"same-origin"`) and with `"omit"` they stay home. The proxy allows
/// credentials for these sessions, so only the cache's mode decides.
#[wasm_bindgen_test]
async fn credentials_include_sends_the_pages_cookie_to_the_endpoint() {
    let page = web_sys::window().unwrap().location().host().unwrap();
    let proxy_host = proxy().split("://").nth(1).unwrap_or_default();
    assert_eq!(
        page.split(':').next(),
        proxy_host.split(':').next(),
        "the page and the proxy must share a host for its cookie to apply"
    );
    assert_ne!(page, proxy_host, "the endpoint must be on another origin");
    set_cookie("tw_session=c1; path=/");
    for (s, mode, want) in [
        (
            "cookie-include",
            Some(Credentials::Include),
            Some("tw_session=c1"),
        ),
        ("cookie-default", None, None),
        ("cookie-omit", Some(Credentials::Omit), None),
        ("cookie-include-js", None, Some("tw_session=c1")),
    ] {
        set_mode(s, "credentials").await;
        let cache: TileCache = if s.ends_with("-js") {
            // From a JS object, as the npm package's options are written.
            TileCache::from_js(&js(&format!(
                r#"{{"endpoint":"{}","credentials":"include",
                    "prefetch":{{"ring":0,"viewRing":0,"lookaheadMs":0}}}}"#,
                endpoint(s)
            )))
            .unwrap()
        } else {
            TileCache::new(&Options {
                credentials: mode,
                ..options(s, 0, 0)
            })
            .unwrap()
        };
        show(&cache, inside(tile(0, 0)));
        cache.when_complete().await.unwrap();
        let l = control(s, "log").await;
        let cookies = l["cookies"].as_array().cloned().unwrap_or_default();
        assert!(!cookies.is_empty(), "{s}: no request");
        for c in cookies {
            assert_eq!(c.as_str(), want, "{s}");
        }
    }
    set_cookie("tw_session=; path=/; max-age=0");
    let bad = TileCache::<Value>::from_js(&js(r#"{"endpoint":"http://h/","credentials":"cors"}"#));
    let e = bad.err().unwrap();
    assert_eq!(e.code, ErrorCode::InvalidArgValue);
    assert_eq!(
        e.message,
        r#"credentials must be one of "omit", "same-origin", "include", got "cors""#
    );
}

/// In the browser too each cache draws its own retry jitter (`Math.random`), not the core's
/// fixed default seed, which would keep every page's retries in step.
#[wasm_bindgen_test]
fn each_cache_draws_its_own_jitter_seed() {
    let seed = || {
        let o = Options::new(endpoint("seed"));
        o.check().unwrap().config.batch.seed
    };
    let (a, b) = (seed(), seed());
    assert_ne!(a, b);
    assert_ne!(a, tilewarm::batch::BatchConfig::default().seed);
}

/// `load_tiles`, the npm package's `loadTiles`: the calls of one tick go out in one request,
/// each host tile gets its items (a finer tile those inside it), a tile read again comes
/// from the cache, a tile too coarse and a tile whose request gave up get their own errors
/// while the others load.
#[wasm_bindgen_test]
async fn load_tiles_reads_the_calls_of_a_tick_together_and_answers_per_tile() {
    let s = "load-tiles";
    let cache: TileCache = TileCache::new(&options(s, 0, 0)).unwrap();
    let (a, b, c) = (tile(0, 0), tile(1, 0), tile(0, 1));
    let (ra, rbc) =
        futures_util::future::join(cache.load_tiles(&[a]), cache.load_tiles(&[b, c])).await;
    let (ra, rbc) = (ra.unwrap(), rbc.unwrap());
    assert_eq!(ra.len(), 1);
    assert_eq!((rbc[0].tile, rbc[1].tile), (b, c));
    let items = ra[0].items.as_ref().unwrap();
    assert!(!items.is_empty());
    for (load, t) in ra.iter().chain(&rbc).zip([a, b, c]) {
        for shown in load.items.as_ref().unwrap() {
            assert!(
                t.contains_point(shown.item.lon, shown.item.lat),
                "{t}: {:?}",
                shown.item
            );
        }
    }
    assert_eq!(
        log(s).await.0,
        1,
        "the three tiles of one tick in one request"
    );
    // Read again: from the cache, the same items, nothing asked.
    let again = cache.load_tiles(&[a]).await.unwrap();
    assert_eq!(again[0].items.as_ref().unwrap().len(), items.len());
    assert_eq!(log(s).await.0, 1);
    // A finer host tile gets the items inside it; the root covers more data tiles than a
    // view may (TooManyTiles), and the other tile still loads.
    let fine = a.children().unwrap();
    let r = cache
        .load_tiles(&[fine[0], TileId::ROOT, fine[3]])
        .await
        .unwrap();
    let inside_fine = |i: usize, t: TileId| {
        let got = r[i].items.as_ref().unwrap();
        assert!(got.iter().all(|s| t.contains_point(s.item.lon, s.item.lat)));
        got.len()
    };
    assert!(inside_fine(0, fine[0]) + inside_fine(2, fine[3]) <= items.len());
    let e = r[1].items.as_ref().unwrap_err();
    assert_eq!(e.code, ErrorCode::TooManyTiles, "{e}");
    // A request that gives up (a 500, no retries): that tile's error, the call resolves.
    set_mode(s, "500").await;
    let r = cache.load_tiles(&[tile(5, 5), a]).await.unwrap();
    let e = r[0].items.as_ref().unwrap_err();
    assert_eq!((e.code, e.status), (ErrorCode::Http, Some(500)), "{e}");
    assert!(r[1].items.is_ok());
}

/// `dispose`, for a component that unmounts while clones of the handle live: what is
/// pending fails with `Disposed` (none hangs), the request out is aborted, the streams
/// end, and every later call is an error or does nothing, never a panic.
#[wasm_bindgen_test]
async fn dispose_fails_what_is_pending_and_every_later_call() {
    use std::cell::RefCell;
    use std::rc::Rc;
    let s = "dispose";
    set_mode(s, "stall").await;
    let mut o = options(s, 0, 0);
    o.batch.timeout_ms = Some(60_000);
    let cache: TileCache = TileCache::new(&o).unwrap();
    let mut updates = cache.updates();
    show(&cache, inside(tile(0, 0)));
    let ended: Rc<RefCell<Vec<tilewarm_web::Error>>> = Rc::default();
    let (c, e) = (cache.clone(), ended.clone());
    wasm_bindgen_futures::spawn_local(async move {
        let r = c.when_complete().await.unwrap_err();
        e.borrow_mut().push(r);
    });
    let (c, e) = (cache.clone(), ended.clone());
    wasm_bindgen_futures::spawn_local(async move {
        let r = c.get("h-not-cached").await.unwrap_err();
        e.borrow_mut().push(r);
    });
    let (c, e) = (cache.clone(), ended.clone());
    wasm_bindgen_futures::spawn_local(async move {
        let r = c.load_tiles(&[tile(3, 3)]).await.unwrap_err();
        e.borrow_mut().push(r);
    });
    // The view's, the get's and the load's.
    wait_until("the requests are out", || async { log(s).await.0 >= 3 }).await;
    assert!(ended.borrow().is_empty());
    let clone = cache.clone();
    clone.dispose();
    assert!(cache.is_disposed());
    wait_until("what was pending ends", || async {
        ended.borrow().len() == 3
    })
    .await;
    for e in ended.borrow().iter() {
        assert_eq!(e.code, ErrorCode::Disposed, "{e}");
    }
    let sent = log(s).await.0;
    wait_until("the requests are aborted", || async {
        log(s).await.1 >= sent
    })
    .await;
    let end = within(5000, updates.next()).await;
    assert!(matches!(end, Some(None)), "{:?}", end.map(|u| u.is_some()));
    let later = within(1000, cache.updates().next()).await;
    assert!(
        matches!(later, Some(None)),
        "a stream made after dispose ends"
    );
    // Every later call: an error, or nothing.
    let v = inside(tile(0, 0));
    let disposed = |r: Result<(), tilewarm_web::Error>| {
        assert_eq!(r.unwrap_err().code, ErrorCode::Disposed);
    };
    disposed(cache.set_viewport(v[0], v[1], v[2], v[3], v[4]).map(drop));
    disposed(cache.when_complete().await);
    disposed(cache.get("h1").await.map(drop));
    disposed(cache.load_tiles(&[tile(0, 0)]).await.map(drop));
    disposed(cache.set_access(Access::Registered));
    assert!(cache.view().items.is_empty());
    assert_eq!(cache.invalidate(tilewarm_web::Invalidate::All), 0);
    cache.dispose();
    TimeoutFuture::new(100).await;
    assert_eq!(log(s).await.0, sent, "nothing sent after dispose");
}

/// `tile_size` 512 (MapLibre's zoom) is read and handed back. The viewport's zoom and
/// `minZoom` are both in its units, so a view below `minZoom` fetches nothing and one above
/// it does, as with 256: the one level both gain in the core's 256-px units cancels out
/// (only `tile_size()` here could fail; the npm package's `tileSize` is the same).
#[wasm_bindgen_test]
async fn tile_size_512_sets_the_units_of_the_zoom() {
    let s = "tile-size";
    let mut o = options(s, 0, 0);
    o.tile_size = Some(512);
    let cache: TileCache = TileCache::new(&o).unwrap();
    assert_eq!(cache.tile_size(), 512);
    let mut v = inside(tile(0, 0));
    v[4] = 11.5;
    let view = show(&cache, v);
    assert!(view.complete && view.missing_tiles.is_empty());
    v[4] = 12.5;
    assert!(!show(&cache, v).complete);
    cache.when_complete().await.unwrap();
}

/// A pan that reads the same view hands out a view equal (`==`, by the items' identity) to
/// the last, as the npm package hands back the same object; one an answer or an
/// invalidation changed is not.
#[wasm_bindgen_test]
async fn a_view_read_again_unchanged_is_equal_to_the_last() {
    let s = "view-eq";
    let cache: TileCache = TileCache::new(&options(s, 0, 0)).unwrap();
    let v = inside(tile(0, 0));
    let cold = show(&cache, v);
    cache.when_complete().await.unwrap();
    let a = show(&cache, v);
    assert_ne!(a, cold);
    assert!(!a.items.is_empty());
    let b = show(&cache, v);
    assert_eq!(a, b);
    assert_eq!(cache.view(), b);
    let id = a.items[0].item.id.clone();
    cache.invalidate(tilewarm_web::Invalidate::Ids(&[id.as_str()]));
    assert_ne!(cache.view(), b);
}

/// An item's `Drop` that disposes the cache runs once the call that let go of the item (an
/// invalidation) released the state, before that call sent the refetch it planned: the
/// disposed cache sends nothing. (It sent it, and that answer went on into the disposed
/// cache's core, as the npm package's did into its freed engine.)
#[wasm_bindgen_test]
async fn a_cache_an_items_drop_disposed_sends_nothing_more() {
    let s = "dispose-in-drop";
    let cache: TileCache<Probe> = TileCache::new(&options(s, 0, 0)).unwrap();
    show(&cache, inside(tile(0, 0)));
    cache.when_complete().await.unwrap();
    let (sent, _) = log(s).await;
    PROBED.with(|c| *c.borrow_mut() = Some(cache.clone()));
    PROBE_DISPOSES.with(|d| d.set(true));
    // The view's tile emptied: its refetch is planned, then the items go.
    assert!(cache.invalidate(tilewarm_web::Invalidate::All) > 0);
    PROBE_DISPOSES.with(|d| d.set(false));
    let last = PROBED.with(|c| c.borrow_mut().take());
    drop(last);
    assert!(cache.is_disposed());
    TimeoutFuture::new(300).await;
    assert_eq!(log(s).await.0, sent, "a request after dispose");
}

thread_local! {
    /// Token futures of `gated_token_auth`'s callbacks not dropped yet.
    static TOKENS_AWAITED: std::cell::Cell<i32> = const { std::cell::Cell::new(0) };
    /// Calls of `gated_token_auth`'s callbacks.
    static TOKENS_ASKED: std::cell::Cell<i32> = const { std::cell::Cell::new(0) };
    /// The gate of `gated_token_auth`'s tokens: open, and the wakers of those waiting.
    static TOKEN_GATE: std::cell::RefCell<(bool, Vec<std::task::Waker>)> = const { std::cell::RefCell::new((false, Vec::new())) };
}

/// Opens (or closes) the gate `gated_token_auth`'s tokens wait for.
fn token_gate(open: bool) {
    let wakers = TOKEN_GATE.with(|g| {
        let mut g = g.borrow_mut();
        g.0 = open;
        std::mem::take(&mut g.1)
    });
    wakers.into_iter().for_each(std::task::Waker::wake);
}

/// An auth callback whose token comes once `token_gate(true)` (as a sign-in would: its
/// waker held meanwhile); each of its futures counts in `TOKENS_AWAITED` until it is
/// dropped.
fn gated_token_auth() -> Auth {
    struct Awaited;
    impl Drop for Awaited {
        fn drop(&mut self) {
            TOKENS_AWAITED.with(|n| n.set(n.get() - 1));
        }
    }
    Auth::new(|| {
        TOKENS_AWAITED.with(|n| n.set(n.get() + 1));
        TOKENS_ASKED.with(|n| n.set(n.get() + 1));
        let awaited = Awaited;
        async move {
            let _awaited = awaited;
            std::future::poll_fn(|cx| {
                TOKEN_GATE.with(|g| {
                    let mut g = g.borrow_mut();
                    if g.0 {
                        return std::task::Poll::Ready(());
                    }
                    g.1.push(cx.waker().clone());
                    std::task::Poll::Pending
                })
            })
            .await;
            Ok("good".to_string())
        }
    })
}

/// Counts the calls of the page's `fetch` for session `s`'s endpoint from now on (the
/// requests given to the browser, whether or not their signal was aborted); the returned
/// closure reads the count and puts `fetch` back.
fn count_fetches(s: &str) -> impl FnOnce() -> u32 {
    let install = js_sys::Function::new_with_args(
        "session",
        "const orig = globalThis.fetch; let n = 0; \
         globalThis.fetch = function (input, init) { \
           if (String(input?.url ?? input).includes(`/s/${session}/`)) n++; \
           return orig.call(this, input, init); }; \
         return () => { globalThis.fetch = orig; return n; };",
    );
    let done: js_sys::Function = install
        .call1(&JsValue::UNDEFINED, &JsValue::from_str(s))
        .unwrap()
        .into();
    move || done.call0(&JsValue::UNDEFINED).unwrap().as_f64().unwrap() as u32
}

/// A request given up on while its token is awaited (past its deadline, or the cache
/// disposed) is never given to `fetch` once the token comes, and a token that never comes
/// does not keep the request's task (its body, its token future) alive once it is given up.
#[wasm_bindgen_test]
async fn a_request_given_up_while_its_token_is_awaited_is_never_fetched() {
    // A token not come by the request's deadline: the timeout, the token's future dropped
    // (not kept for ever), and no fetch once the token comes (the cache dropped by then).
    let s = "token-late";
    let mut o = options(s, 0, 0);
    o.batch.timeout_ms = Some(200);
    let fetches = count_fetches(s);
    let (before, asked) = (
        TOKENS_AWAITED.with(|n| n.get()),
        TOKENS_ASKED.with(|n| n.get()),
    );
    let cache: TileCache = TileCache::with_auth(&o, Some(gated_token_auth())).unwrap();
    show(&cache, inside(tile(0, 0)));
    let e = cache.when_complete().await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Timeout, "{e}");
    assert!(
        TOKENS_ASKED.with(|n| n.get()) > asked,
        "the token was asked for"
    );
    wait_until(
        "the timed-out request's token future is dropped",
        || async { TOKENS_AWAITED.with(|n| n.get()) == before },
    )
    .await;
    // The cache asks for the view again meanwhile (a new request, a new token): dropped,
    // every request it still awaits a token for is given up too.
    drop(cache);
    token_gate(true);
    TimeoutFuture::new(200).await;
    let (called, sent) = (fetches(), log(s).await.0);
    token_gate(false);
    assert_eq!((called, sent), (0, 0), "fetch calls, requests sent");

    // The cache disposed while the token is awaited: no fetch once it comes, and nothing
    // left awaiting.
    let s = "token-disposed";
    let mut o = options(s, 0, 0);
    o.batch.timeout_ms = Some(60_000);
    let fetches = count_fetches(s);
    let asked = TOKENS_ASKED.with(|n| n.get());
    let cache: TileCache = TileCache::with_auth(&o, Some(gated_token_auth())).unwrap();
    show(&cache, inside(tile(0, 0)));
    wait_until("the token is asked for", || async {
        TOKENS_ASKED.with(|n| n.get()) > asked
    })
    .await;
    cache.dispose();
    token_gate(true);
    TimeoutFuture::new(200).await;
    let (called, sent) = (fetches(), log(s).await.0);
    token_gate(false);
    assert_eq!((called, sent), (0, 0), "fetch calls, requests sent");
    wait_until("the disposed cache's token future is dropped", || async {
        TOKENS_AWAITED.with(|n| n.get()) == before
    })
    .await;
}

/// A hidden page's put-off wake-up that the page's being shown set going just before
/// `dispose` sends nothing: the disposed cache makes no request.
#[wasm_bindgen_test]
async fn a_wake_up_queued_before_dispose_sends_nothing() {
    let s = "dispose-shown";
    let cache = complete_downtown_cache(s).await;
    page_hidden(true);
    // Dropped: the refetch waits until the page is shown.
    cache.invalidate(tilewarm_web::Invalidate::All);
    TimeoutFuture::new(100).await;
    let (before, _) = log(s).await;
    page_hidden(false); // its listener queues the wake-up
    cache.dispose();
    TimeoutFuture::new(300).await;
    assert_eq!(log(s).await.0, before, "a request after dispose");
}

/// A tile whose items the cache cannot keep beside the view (`maxItems` full of it) is an
/// error for that tile, not a load fetched again for ever or one that never ends; the view
/// stays.
#[wasm_bindgen_test]
async fn a_loaded_tile_the_cache_cannot_keep_is_an_error_and_the_view_stays() {
    let s = "load-full";
    let probe = complete_downtown_cache(s).await;
    let n = probe.view().items.len();
    probe.dispose();
    let cache = full_downtown_cache(s, n).await;
    let r = within(10_000, Box::pin(cache.load_tiles(&[tile(3, 0)])))
        .await
        .expect("the load ends")
        .unwrap();
    let e = r[0].items.as_ref().unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidResponse, "{e}");
    assert!(e.message.contains("could not be kept"), "{e}");
    let now = show(&cache, inside(tile(0, 0)));
    assert!(now.complete && now.items.len() == n);
}

/// Dropping a `load_tiles` future is the npm package's abort: a load dropped before its
/// tick was read asks for nothing.
#[wasm_bindgen_test]
async fn a_load_dropped_before_it_is_read_asks_for_nothing() {
    let s = "load-dropped";
    let cache: TileCache = TileCache::new(&options(s, 0, 0)).unwrap();
    // The call is made (queued for this tick's read), and given up before the read.
    let load = cache.load_tiles(&[tile(6, 6)]);
    drop(load);
    TimeoutFuture::new(300).await;
    assert_eq!(log(s).await.0, 0);
    // Read, it is asked for.
    let r = cache.load_tiles(&[tile(6, 6)]).await.unwrap();
    assert!(r[0].items.is_ok());
    assert_eq!(log(s).await.0, 1);
}

/// Security: a load that read one tile at a tier the page then lowered (a sign-out) hands
/// out none of that tile's items above the new tier when its other tiles arrive.
#[wasm_bindgen_test]
async fn a_load_settled_after_the_tier_was_lowered_holds_nothing_above_it() {
    let s = "load-tier";
    // Three retries: the stalled request times out after 800 ms, and on a busy machine the
    // next may go out before the server is set to pass (one retry failed that way in CI).
    let cache = agent_cache_of_a_tier_blind_server(s, 3).await;
    let (a, b) = (tile(0, 0), tile(2, 2));
    load_with_an_agent_item(&cache, a).await;
    // `a` from the cache at once, `b` waits on a stalled request.
    set_mode(s, "stall").await;
    let load = cache.load_tiles(&[a, b]);
    let before = log(s).await.0;
    wait_until("b is asked for", || async { log(s).await.0 > before }).await;
    cache.set_access(Access::Public).unwrap();
    set_mode(s, "pass").await; // the retry, at the public tier, is answered
    let r = within(15_000, Box::pin(load))
        .await
        .expect("the load ends")
        .unwrap();
    for t in &r {
        for shown in t.items.as_ref().unwrap() {
            assert_eq!(
                shown.item.access,
                Access::Public,
                "{}: {:?}",
                t.tile,
                shown.item
            );
        }
    }
}

/// Security: a `get_many` that found one id cached at a tier the page then lowered, while
/// it waited for another, hands out nothing above the new tier (`None`: the tier may not
/// see it).
#[wasm_bindgen_test]
async fn a_get_many_ended_after_the_tier_was_lowered_holds_nothing_above_it() {
    let s = "get-tier";
    // Every tile holds one "agent" item, `secret-<i>`. Three retries, as above.
    let cache = agent_cache_of_a_tier_blind_server(s, 3).await;
    let first = cache.load_tiles(&[tile(0, 0)]).await.unwrap();
    let secret = first[0].items.as_ref().unwrap()[0].item.id.clone();
    assert_eq!(
        cache.get(&secret).await.unwrap().unwrap().access,
        Access::Agent
    );
    set_mode(s, "stall").await;
    let (c, ids) = (cache.clone(), [secret.clone(), "h-unknown-id".to_string()]);
    let many = async move {
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        c.get_many(&ids).await
    };
    let mut many = Box::pin(many);
    let before = log(s).await.0;
    assert!(within(0, &mut many).await.is_none());
    wait_until("the id is asked for", || async { log(s).await.0 > before }).await;
    cache.set_access(Access::Public).unwrap();
    set_mode(s, "pass").await; // the retry, at the public tier, is answered
    let got = within(15_000, many).await.expect("get_many ends").unwrap();
    assert!(
        got.iter().flatten().all(|i| i.access == Access::Public),
        "{got:?}"
    );
}

/// `prefetch` (the npm package's `prefetch(destination)`): a destination's tiles, or a
/// viewport's, are fetched ahead, and the view there is complete at once, with no
/// request of its own.
#[wasm_bindgen_test]
async fn a_prefetched_destination_is_complete_when_the_map_gets_there() {
    let s = "prefetch";
    let cache: TileCache = TileCache::new(&options(s, 0, 0)).unwrap();
    let (far, farther) = (tile(8, 8), tile(-8, 8));
    assert_eq!(cache.prefetch(&[far]).unwrap(), 1);
    let v = inside(farther);
    assert_eq!(
        cache
            .prefetch_viewport(v[0], v[1], v[2], v[3], v[4])
            .unwrap(),
        1
    );
    wait_until("both are fetched", || async {
        cache.tile_states(&[far, farther]) == [tilewarm_web::TileState::Prefetched; 2]
    })
    .await;
    let asked = log(s).await.0;
    assert!(show(&cache, inside(far)).complete);
    assert!(show(&cache, v).complete);
    TimeoutFuture::new(100).await;
    assert_eq!(log(s).await.0, asked);
    let e = cache.prefetch(&[TileId::ROOT]).unwrap_err();
    assert_eq!(e.code, ErrorCode::TooManyTiles, "{e}");
    let e = cache
        .prefetch_viewport(-180.0, -85.0, 180.0, 85.0, 12.0)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::TooManyTiles, "{e}");
    // The npm package's message (maxVisibleTiles at its default).
    assert_eq!(
        e.message,
        "the viewport covers more than maxVisibleTiles (1024) data tiles: prefetch a smaller \
         one, or its tiles"
    );
}

/// Session `s`'s agent cache of a tier-blind server that loaded tile (0, 0) with an agent
/// item, and a load of that tile read from the cache in this tick's read (not polled yet),
/// after which the tier was lowered to public.
async fn a_load_settled_before_the_tier_was_lowered(
    s: &str,
) -> (
    TileCache,
    impl std::future::Future<Output = Result<Vec<tilewarm_web::TileLoad<Value>>, tilewarm_web::Error>>,
) {
    let cache = agent_cache_of_a_tier_blind_server(s, 0).await;
    let a = tile(0, 0);
    load_with_an_agent_item(&cache, a).await;
    let load = cache.load_tiles(&[a]);
    TimeoutFuture::new(0).await;
    cache.set_access(Access::Public).unwrap();
    (cache, load)
}

/// Security: a load that settled before the tier was lowered, and whose future is polled
/// only after, hands out nothing above the new tier either.
#[wasm_bindgen_test]
async fn a_load_read_after_the_tier_was_lowered_holds_nothing_above_it() {
    let (_cache, load) = a_load_settled_before_the_tier_was_lowered("load-tier-late").await;
    let r = load.await.unwrap();
    let items = r[0].items.as_ref().unwrap();
    assert!(
        items.iter().all(|s| s.item.access == Access::Public),
        "{items:?}"
    );
}

/// Security: a load that settled before the tier was lowered, and whose future is polled
/// only after every clone of the cache was dropped, hands out nothing: with no cache there
/// is no tier to check its items against, so it fails with `Disposed`, as a load still
/// pending then does.
#[wasm_bindgen_test]
async fn a_load_read_after_its_cache_was_dropped_hands_out_nothing() {
    let (cache, load) = a_load_settled_before_the_tier_was_lowered("load-tier-dropped").await;
    drop(cache);
    match load.await {
        Err(e) => assert_eq!(e.code, ErrorCode::Disposed, "{e}"),
        Ok(r) => panic!("handed out with no tier check: {:?}", r[0].items),
    }
}

/// Re-entrancy: no borrow of the cache is held across an await or while the page's code
/// runs, so the page may call back in from anywhere (a `BorrowMutError` would kill the
/// page's cache): a token callback that calls into the cache while its request is made, an
/// update stream's reader that calls back in (a get too) at each update, and gets, a
/// `when_complete` and a load polled together in one task.
#[wasm_bindgen_test]
async fn the_cache_may_be_called_from_its_callbacks_and_futures_polled_together() {
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;
    let s = "reentrant";
    set_mode(s, "auth").await; // forwards `Bearer good` only
    let slot: Rc<RefCell<Option<TileCache>>> = Rc::default();
    let in_token = Rc::new(Cell::new(0));
    let (c_slot, c_in_token) = (slot.clone(), in_token.clone());
    let auth = Auth::new(move || {
        if let Some(c) = c_slot.borrow().as_ref() {
            let _ = c.view();
            let _ = (c.tile_states(&[tile(0, 0)]), c.stats(), c.access());
            let _ = (c.is_disposed(), c.prefetch(&[]));
            c.invalidate(tilewarm_web::Invalidate::Ids(&["no-such-home"]));
            c_in_token.set(c_in_token.get() + 1);
        }
        async { Ok("good".to_string()) }
    });
    let cache: TileCache = TileCache::with_auth(&options(s, 0, 0), Some(auth)).unwrap();
    *slot.borrow_mut() = Some(cache.clone());

    let (reader, mut updates) = (cache.clone(), cache.updates());
    let read = Rc::new(Cell::new(0));
    let c_read = read.clone();
    wasm_bindgen_futures::spawn_local(async move {
        while let Some(u) = updates.next().await {
            if let Update::View(v) = u {
                let _ = reader.view();
                if let Some(first) = v.items.first() {
                    let got = reader.get(&first.item.id).await;
                    assert!(got.is_ok(), "{got:?}");
                }
                c_read.set(c_read.get() + 1);
            }
        }
    });

    show(&cache, inside(tile(0, 0)));
    let (one, many, done, loaded) = futures_util::future::join4(
        cache.get("no-such-home"),
        cache.get_many(&["no-such-home", "no-such-flat"]),
        cache.when_complete(),
        cache.load_tiles(&[tile(2, 0)]),
    )
    .await;
    assert!(one.unwrap().is_none());
    assert!(many.unwrap().iter().all(Option::is_none));
    done.unwrap();
    assert!(loaded.unwrap()[0].items.is_ok());
    let id = cache.view().items[0].item.id.clone();
    cache.invalidate(tilewarm_web::Invalidate::Ids(&[&id]));
    let (x, y) = futures_util::future::join(cache.get(&id), cache.get(&id)).await;
    assert_eq!(x.unwrap().unwrap().id, id);
    assert_eq!(y.unwrap().unwrap().id, id);
    wait_until("the reader read a view", || async { read.get() > 0 }).await;
    assert!(in_token.get() > 0);
    // Ends the reader's stream (and so its clone) and the token callback's.
    slot.borrow_mut().take();
    cache.dispose();
}

/// A visible data tile the server refuses as too large on its own (`payload_too_large`)
/// is held by the core for a tile TTL: asked for within the first request, once more on
/// its own, then not again. `when_complete` fails with its 413, and a later call fails with
/// it at once (before, it waited for the TTL, 5 minutes by default, before it settled).
#[wasm_bindgen_test]
async fn when_complete_fails_at_once_while_a_tile_too_large_is_held() {
    use futures_util::FutureExt;
    let s = "held-too-large";
    set_mode(s, "partial-tiles=payload_too_large").await;
    let cache: TileCache = TileCache::new(&options(s, 0, 0)).unwrap();
    let v = inside(tile(0, 0));
    show(&cache, v);
    let first = within(5000, Box::pin(cache.when_complete()))
        .await
        .expect("when_complete ended")
        .unwrap_err();
    assert_eq!(first.status, Some(413), "{first}");
    assert_eq!(show(&cache, v).missing_tiles, [tile(0, 0)]);
    let again = cache.when_complete().now_or_never();
    assert_eq!(
        again,
        Some(Err(first.clone())),
        "fails at once with the same error"
    );
    assert_eq!(
        log(s).await.0,
        2,
        "within the first request, then on its own"
    );
    // A change elsewhere (an id, as a live feed sends for any change; another tile) leaves
    // the core's hold: it still fails at once (it waited for the hold's end, a tile TTL).
    cache.invalidate(tilewarm_web::Invalidate::Ids(&["elsewhere"]));
    cache.invalidate(tilewarm_web::Invalidate::Tiles(&[tile(5, 5)]));
    let again = cache.when_complete().now_or_never();
    assert_eq!(
        again,
        Some(Err(first)),
        "held still after a change elsewhere"
    );
    assert_eq!(log(s).await.0, 2, "not asked again");
    // Invalidated, it may have shrunk: asked for again, answered, the view completes.
    set_mode(s, "pass").await;
    cache.invalidate(tilewarm_web::Invalidate::Tiles(&[tile(0, 0)]));
    within(5000, Box::pin(cache.when_complete()))
        .await
        .expect("when_complete ended")
        .unwrap();
}

/// A small seeded generator for the random run (xorshift64*).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) % n
    }
}

/// A seeded random run of page calls against a backend that changes its answers between
/// them (slow, failing, stalled, malformed, partial, 503 with a Retry-After date, a server
/// ignoring tiers with "agent" items): after every call and in every answer a future gets,
/// nothing above the cache's tier; once the backend heals, every `get`, `when_complete` and
/// `load_tiles` settles; and the cache, disposed, with some still pending in half the seeds,
/// settles them and sends nothing more. A failing seed is named.
#[wasm_bindgen_test]
async fn a_seeded_random_run_of_hostile_answers_and_page_calls() {
    use std::cell::Cell;
    use std::rc::Rc;
    const MODES: [&str; 12] = [
        "pass",
        "pass",
        "slow",
        "500",
        "stall",
        "hostile",
        "tier",
        "partial",
        "partial=overloaded",
        "partial-tiles=rate_limited",
        "bad-lat",
        "503-date",
    ];
    for seed in 1..=6u64 {
        let s = format!("random-{seed}");
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut o = options(&s, rng.below(2) as u32, rng.below(2) as u32);
        o.access = Some("registered".into());
        o.batch.timeout_ms = Some(300);
        let cache: TileCache = TileCache::new(&o).unwrap();
        let (spawned, settled) = (Rc::new(Cell::new(0u32)), Rc::new(Cell::new(0u32)));
        let mut seen: Vec<String> = Vec::new();
        let above = |items: &mut dyn Iterator<Item = Access>, tier: Access, what: &str| {
            for a in items {
                assert!(
                    a <= tier,
                    "seed {seed}: {what} holds an {a} item at tier {tier}"
                );
            }
        };
        for step in 0..30 {
            match rng.below(10) {
                0 => set_mode(&s, MODES[rng.below(MODES.len() as u64) as usize]).await,
                1 | 2 => {
                    let v = inside(tile(rng.below(4) as i64, rng.below(4) as i64));
                    let view = show(&cache, v);
                    seen.extend(view.items.iter().map(|s| s.item.id.clone()));
                    seen.truncate(200);
                    let tier = cache.access();
                    above(
                        &mut view.items.iter().map(|s| s.item.access),
                        tier,
                        "a view",
                    );
                }
                3 => {
                    let (c, n) = (cache.clone(), settled.clone());
                    spawned.set(spawned.get() + 1);
                    // An id seen in a view (invalidated since, perhaps), else one made up.
                    let id = match seen.len() as u64 {
                        0 => format!("h{}", rng.below(50)),
                        n => seen[rng.below(n) as usize].clone(),
                    };
                    wasm_bindgen_futures::spawn_local(async move {
                        if let Ok(Some(item)) = c.get(&id).await {
                            assert!(
                                item.access <= c.access(),
                                "seed {seed}: a get above the tier"
                            );
                        }
                        n.set(n.get() + 1);
                    });
                }
                4 => {
                    let (c, n) = (cache.clone(), settled.clone());
                    spawned.set(spawned.get() + 1);
                    wasm_bindgen_futures::spawn_local(async move {
                        let _ = c.when_complete().await;
                        n.set(n.get() + 1);
                    });
                }
                5 => {
                    let t = tile(rng.below(4) as i64, rng.below(4) as i64);
                    let load = cache.load_tiles(&[t]);
                    let (c, n) = (cache.clone(), settled.clone());
                    spawned.set(spawned.get() + 1);
                    wasm_bindgen_futures::spawn_local(async move {
                        if let Ok(loads) = load.await {
                            let tier = c.access();
                            for l in loads {
                                for it in l.items.iter().flatten() {
                                    assert!(
                                        it.item.access <= tier,
                                        "seed {seed}: a load above the tier"
                                    );
                                }
                            }
                        }
                        n.set(n.get() + 1);
                    });
                }
                6 => {
                    let tier = [Access::Public, Access::Registered][rng.below(2) as usize];
                    let _ = cache.set_access(tier);
                }
                7 => {
                    cache.invalidate(tilewarm_web::Invalidate::All);
                }
                _ => TimeoutFuture::new(rng.below(150) as u32).await,
            }
            let view = cache.view();
            above(
                &mut view.items.iter().map(|s| s.item.access),
                cache.access(),
                &format!("step {step}'s view"),
            );
        }
        if seed % 2 == 0 {
            // The backend heals: everything pending settles (timeouts, retries, Retry-After).
            set_mode(&s, "pass").await;
            wait_until(&format!("seed {seed}: every call settles"), || async {
                settled.get() == spawned.get()
            })
            .await;
        }
        cache.dispose();
        wait_until(
            &format!("seed {seed}: every call settles once disposed"),
            || async { settled.get() == spawned.get() },
        )
        .await;
        let (sent, _) = log(&s).await;
        TimeoutFuture::new(100).await;
        assert_eq!(
            log(&s).await.0,
            sent,
            "seed {seed}: a request after dispose"
        );
    }
}
