//! The `set_viewport` measurement of docs/BENCHMARKS.md (not a test): the Rust shell and
//! the npm package in the same headless Chromium page, each warmed with the same 10k+
//! items from the same tilewarm-server, then timed over the same views, alternating.
//! Run by `scripts/bench-web.sh` (release build; sets `TILEWARM_WEB_BENCH_SERVER`, a
//! server whose `--www` holds the npm package under `pkg/`). Prints one `BENCH` line.
#![cfg(target_arch = "wasm32")]

use tilewarm_web::{Options, PrefetchOptions, TileCache};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

const ROUNDS: u32 = 400;

/// `bench/js/micro.mjs`'s `view(dx, dy)`: a 1280x800 view at map zoom 14.5 over downtown
/// Seattle, `dx`/`dy` data tiles off.
fn view(dx: f64, dy: f64) -> [f64; 5] {
    let n = 2f64.powi(14);
    let (lon0, lat0) = (-122.3321f64, 47.6062f64);
    let cx = (lon0 + 180.0) / 360.0 * n + dx;
    let lat = lat0.to_radians();
    let cy = (1.0 - (lat.tan() + 1.0 / lat.cos()).ln() / std::f64::consts::PI) / 2.0 * n + dy;
    let (w, h) = (1280.0 / 256.0 / 2f64.sqrt(), 800.0 / 256.0 / 2f64.sqrt());
    let lon = |x: f64| x / n * 360.0 - 180.0;
    let lat_of = |y: f64| {
        (std::f64::consts::PI * (1.0 - 2.0 * y / n))
            .sinh()
            .atan()
            .to_degrees()
    };
    [
        lon(cx - w / 2.0),
        lat_of(cy + h / 2.0),
        lon(cx + w / 2.0),
        lat_of(cy - h / 2.0),
        14.5,
    ]
}

fn now() -> f64 {
    web_sys::window().unwrap().performance().unwrap().now()
}

/// The JS half: the npm package's `TileCache`, warmed and timed the same way.
const NPM: &str = r#"
return (async () => {
  const { TileCache } = await import(server + '/pkg/index.js');
  const cache = await TileCache.create({
    endpoint: server + '/v1/batch', tileZoom: 14, minZoom: 12, maxItems: 100000,
    prefetch: { ring: 1, lookaheadMs: 0, maxTilesPerRound: 64 },
  });
  const v = (a) => ({ west: a[0], south: a[1], east: a[2], north: a[3], zoom: a[4] });
  for (const w of warm) { cache.setViewport(v(w)); await cache.whenComplete(); }
  const views = timed.map(v);
  const first = cache.setViewport(views[0]);
  const run = (rounds) => {
    const t0 = performance.now();
    for (let i = 0; i < rounds; i++) cache.setViewport(views[i % 3]);
    return (performance.now() - t0) / rounds;
  };
  return { run, items: first.items.length, entries: cache.stats().entries };
})();
"#;

fn to_js(views: &[[f64; 5]]) -> JsValue {
    serde_wasm_bindgen::to_value(views).unwrap()
}

#[wasm_bindgen_test]
async fn set_viewport_with_10k_cached_rust_and_npm() {
    let Some(server) = option_env!("TILEWARM_WEB_BENCH_SERVER") else {
        panic!("TILEWARM_WEB_BENCH_SERVER is not set: run scripts/bench-web.sh");
    };
    let mut warm = Vec::new();
    for dy in (-9..=9).step_by(3) {
        for dx in (-9..=9).step_by(3) {
            warm.push(view(dx as f64, dy as f64));
        }
    }
    let timed = [view(0.0, 0.0), view(0.25, 0.0), view(0.5, 0.0)];

    let rust: TileCache = TileCache::new(&Options {
        max_items: Some(100_000),
        min_zoom: Some(12.0),
        prefetch: PrefetchOptions {
            ring: Some(1),
            lookahead_ms: Some(0),
            max_tiles_per_round: Some(64),
            ..PrefetchOptions::default()
        },
        ..Options::new(format!("{server}/v1/batch"))
    })
    .unwrap();
    for w in &warm {
        rust.set_viewport(w[0], w[1], w[2], w[3], w[4]).unwrap();
        rust.when_complete().await.unwrap();
    }
    let first = rust
        .set_viewport(
            timed[0][0],
            timed[0][1],
            timed[0][2],
            timed[0][3],
            timed[0][4],
        )
        .unwrap();
    let rust_items = first.items.len();
    let run_rust = |rounds: u32| {
        let t0 = now();
        for i in 0..rounds as usize {
            let v = timed[i % 3];
            rust.set_viewport(v[0], v[1], v[2], v[3], v[4]).unwrap();
        }
        (now() - t0) / rounds as f64
    };

    let f = js_sys::Function::new_with_args("server, warm, timed", NPM);
    let p = f
        .call3(
            &JsValue::NULL,
            &server.into(),
            &to_js(&warm),
            &to_js(&timed),
        )
        .unwrap();
    let npm = JsFuture::from(p.unchecked_into::<js_sys::Promise>())
        .await
        .unwrap();
    let get = |k: &str| js_sys::Reflect::get(&npm, &k.into()).unwrap();
    let run_npm: js_sys::Function = get("run").unchecked_into();
    let npm_items = get("items").as_f64().unwrap() as usize;
    let npm_entries = get("entries").as_f64().unwrap() as usize;

    // Warm-up, then three alternating runs each; the median of each.
    run_rust(ROUNDS);
    run_npm.call1(&JsValue::NULL, &ROUNDS.into()).unwrap();
    let (mut r, mut j) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        r.push(run_rust(ROUNDS));
        j.push(
            run_npm
                .call1(&JsValue::NULL, &ROUNDS.into())
                .unwrap()
                .as_f64()
                .unwrap(),
        );
    }
    r.sort_by(f64::total_cmp);
    j.sort_by(f64::total_cmp);
    let entries = rust.stats().cache.entries;
    assert_eq!(rust_items, npm_items, "both caches show the same view");
    assert!(
        entries >= 10_000 && npm_entries >= 10_000,
        "{entries} / {npm_entries} cached"
    );
    console_log!(
        "BENCH rust_ms={:.4} npm_ms={:.4} items_in_view={} rust_entries={} npm_entries={}",
        r[1],
        j[1],
        rust_items,
        entries,
        npm_entries
    );
}
