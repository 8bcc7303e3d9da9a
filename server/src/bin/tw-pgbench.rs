//! `tw-pgbench`: the PostGIS origin's benchmark (`scripts/bench.sh postgis`). Loopback
//! only, bounded in time.
//!
//! 1. Starts a scratch PostgreSQL + PostGIS (`scripts/pg-scratch.sh`, removed at the end)
//!    and loads the synthetic city (`--homes`, 50 000) into its table.
//! 2. Origin latency: the same 16-tile batches (4x4 blocks of data tiles, as `tw-load`)
//!    through the PostGIS backend and the memory backend in this process, p50/p99.
//! 3. Server throughput: `tilewarm-server` over each origin (child processes, in-process
//!    tier, warm-up off), `--concurrency` clients: a cold pass (every batch once, on an
//!    empty tier) and a warm run of `--seconds`.
//! 4. Change to served: `UPDATE` of a cached home's price, then the time until the server
//!    over PostGIS serves the new price, `--updates` times, p50/p99.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use tilewarm::dataset::synthetic_city;
use tilewarm::origin::Origin;
use tilewarm::protocol::BatchRequest;
use tilewarm::Access;
use tilewarm_server::loadgen::{
    free_port, http_client, percentile, plan_batches, post_batch, public_body, start_server,
};
use tilewarm_server::metrics::Metrics;
use tilewarm_server::origin::memory::MemoryOrigin;
use tilewarm_server::origin::postgis::{load_items, Layout, PostgisOrigin};
use tilewarm_server::origin::{CallSource, OriginService, OriginStats};
use tilewarm_server::Config;

#[derive(Parser, Debug)]
#[command(
    name = "tw-pgbench",
    about = "Loopback benchmark of the PostGIS origin"
)]
struct Args {
    #[arg(long)]
    server_bin: PathBuf,
    /// scripts/pg-scratch.sh
    #[arg(long, default_value = "scripts/pg-scratch.sh")]
    pg_script: PathBuf,
    #[arg(long, default_value_t = 50_000)]
    homes: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Seconds of warm load per origin (at most 20).
    #[arg(long, default_value_t = 6)]
    seconds: u64,
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Origin calls per backend for the latency figures.
    #[arg(long, default_value_t = 300)]
    calls: usize,
    #[arg(long, default_value_t = 30)]
    updates: usize,
    #[arg(long, default_value = "target/bench/postgis.md")]
    out: PathBuf,
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

struct Load {
    batches: u64,
    secs: f64,
    p50: f64,
    p99: f64,
    errors: u64,
}

/// `concurrency` clients over `bodies`: one pass each when `seconds` is 0, else cycling for
/// `seconds`.
async fn load(url: &str, bodies: &[Bytes], concurrency: usize, seconds: u64) -> Load {
    let url: hyper::Uri = format!("{url}/v1/batch").parse().unwrap();
    let bodies: Arc<Vec<Bytes>> = Arc::new(bodies.to_vec());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (url, bodies, next, stop) = (
            url.clone(),
            Arc::clone(&bodies),
            Arc::clone(&next),
            Arc::clone(&stop),
        );
        tasks.push(tokio::spawn(async move {
            let client = http_client();
            let mut lat = Vec::new();
            let mut errors = 0;
            loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if seconds == 0 && i >= bodies.len() {
                    break;
                }
                let t = Instant::now();
                match post_batch(&client, &url, bodies[i % bodies.len()].clone()).await {
                    Ok((200, _)) => lat.push(t.elapsed().as_secs_f64() * 1000.0),
                    _ => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    if seconds > 0 {
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        stop.store(true, Ordering::Relaxed);
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.unwrap();
        all.extend(l);
        errors += e;
    }
    let secs = started.elapsed().as_secs_f64();
    let all = sorted(all);
    Load {
        batches: all.len() as u64,
        secs,
        p50: percentile(&all, 0.5),
        p99: percentile(&all, 0.99),
        errors,
    }
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = std::env::temp_dir().join(format!("tw-pgbench-{}", std::process::id()));
    let out = Command::new(&args.pg_script)
        .args(["start", dir.to_str().unwrap()])
        .output()
        .expect("scripts/pg-scratch.sh runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
    struct Destroy(PathBuf, PathBuf);
    impl Drop for Destroy {
        fn drop(&mut self) {
            let _ = Command::new(&self.0)
                .args(["destroy", self.1.to_str().unwrap()])
                .output();
        }
    }
    let _destroy = Destroy(args.pg_script.clone(), dir.clone());

    let items = synthetic_city(args.seed, args.homes);
    let origin = Origin::new(items.clone()).unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        load_items(&client, &Layout::default(), &items)
            .await
            .unwrap();
    });
    let batches = plan_batches(&origin, 64);
    let requests: Vec<BatchRequest> = batches
        .iter()
        .map(|tiles| BatchRequest {
            tiles: tiles.clone(),
            ids: vec![],
            access: Access::Agent,
        })
        .collect();

    // 2. Origin latency, in process.
    let c = Config::default();
    let mem = OriginService::with_backend(
        Box::new(MemoryOrigin::new(
            origin.clone(),
            c.tile_ttl_s,
            "bench".into(),
        )),
        &c,
        Arc::new(Metrics::default()),
        Arc::default(),
    );
    let stats = Arc::new(OriginStats::default());
    let pg = OriginService::with_backend(
        Box::new(
            PostgisOrigin::with_layout(&url, Layout::default(), &c, Arc::clone(&stats), true)
                .unwrap(),
        ),
        &c,
        Arc::new(Metrics::default()),
        stats,
    );
    let (mem_lat, pg_lat, items_per_call) = rt.block_on(async {
        let mut m = Vec::new();
        let mut p = Vec::new();
        let mut n = 0;
        // One warm-up pass (connections, prepared statements, page cache).
        for r in &requests {
            pg.fetch(r, CallSource::Request).await.unwrap();
        }
        for i in 0..args.calls {
            let r = &requests[i % requests.len()];
            let t = Instant::now();
            let a = mem.fetch(r, CallSource::Request).await.unwrap().response;
            m.push(t.elapsed().as_secs_f64() * 1000.0);
            let t = Instant::now();
            let b = pg.fetch(r, CallSource::Request).await.unwrap().response;
            p.push(t.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(a.items.len(), b.items.len());
            n += a.items.len();
        }
        (sorted(m), sorted(p), n / args.calls.max(1))
    });

    // 3. Server throughput, cold then warm, per origin.
    let bodies: Vec<Bytes> = batches.iter().map(|tiles| public_body(tiles)).collect();
    let homes = args.homes.to_string();
    let seed = args.seed.to_string();
    let mut rows = Vec::new();
    let mut update_lat = Vec::new();
    for (label, extra) in [
        (
            "memory",
            vec![
                "--synthetic-homes".to_string(),
                homes.clone(),
                "--seed".into(),
                seed.clone(),
            ],
        ),
        ("postgis", vec!["--origin".to_string(), url.clone()]),
    ] {
        let port = free_port();
        let mut flags = vec!["--warmup-ring".to_string(), "0".into()];
        flags.extend(extra);
        flags.extend(tilewarm_server::loadgen::throughput_flags());
        let _server = start_server(&args.server_bin, port, &flags);
        let base = format!("http://127.0.0.1:{port}");
        rt.block_on(async {
            // The change feed's first connect invalidates the tier: let it happen first.
            tokio::time::sleep(Duration::from_millis(300)).await;
        });
        let cold = rt.block_on(load(&base, &bodies, args.concurrency, 0));
        let warm = rt.block_on(load(&base, &bodies, args.concurrency, args.seconds.min(20)));
        rows.push((label, cold, warm));
        if label == "postgis" {
            update_lat = rt.block_on(updates(&url, &base, &origin, &batches, args.updates));
        }
    }

    let mut md = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(
        md,
        "Synthetic city of {} homes in PostGIS (scratch PostgreSQL 15 + PostGIS 3 on loopback, GiST index) and in memory, same run.\n",
        args.homes
    );
    let _ = writeln!(md, "Origin latency of one 16-tile batch (4x4 data tiles at zoom 14, asked at `agent`, {} items on average), {} calls each, in process:\n", items_per_call, args.calls);
    let _ = writeln!(
        md,
        "| origin | p50 ms | p99 ms | p50 vs memory |\n| --- | ---: | ---: | ---: |"
    );
    let _ = writeln!(
        md,
        "| memory (core `Origin`) | {:.3} | {:.3} | 1.0x |",
        percentile(&mem_lat, 0.5),
        percentile(&mem_lat, 0.99)
    );
    let _ = writeln!(
        md,
        "| PostGIS (one envelope join, pool of 8) | {:.3} | {:.3} | {:.0}x |\n",
        percentile(&pg_lat, 0.5),
        percentile(&pg_lat, 0.99),
        percentile(&pg_lat, 0.5) / percentile(&mem_lat, 0.5)
    );
    let _ = writeln!(md, "`tilewarm-server` throughput, {} clients, 16-tile batches (`public`), in-process tier, warm-up off. Cold: each of {} batches once on an empty tier; warm: {} s cycling over them.\n", args.concurrency, bodies.len(), args.seconds.min(20));
    let _ = writeln!(md, "| origin | cold batches/s | cold p50 ms | cold p99 ms | warm batches/s | warm p50 ms | warm p99 ms | errors |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (label, cold, warm) in &rows {
        let _ = writeln!(
            md,
            "| {label} | {:.0} | {:.2} | {:.2} | {:.0} | {:.2} | {:.2} | {} |",
            cold.batches as f64 / cold.secs,
            cold.p50,
            cold.p99,
            warm.batches as f64 / warm.secs,
            warm.p50,
            warm.p99,
            cold.errors + warm.errors
        );
    }
    let u = sorted(update_lat);
    let _ = writeln!(
        md,
        "\nChange to served (the freshness bound): `UPDATE` of a cached home's price committed, then the same request polled every 2 ms until the new price is served, {} updates: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (TTL 300 s).",
        u.len(),
        percentile(&u, 0.5),
        percentile(&u, 0.99),
        u.last().copied().unwrap_or(f64::NAN)
    );
    println!("{md}");
    if let Some(p) = args.out.parent() {
        let _ = std::fs::create_dir_all(p);
    }
    std::fs::write(&args.out, md).unwrap();
}

/// UPDATE → served, `n` times.
async fn updates(
    url: &str,
    base: &str,
    origin: &Origin<tilewarm::protocol::RawData>,
    batches: &[Vec<tilewarm::TileId>],
    n: usize,
) -> Vec<f64> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let http = http_client();
    let uri: hyper::Uri = format!("{base}/v1/batch").parse().unwrap();
    let mut out = Vec::new();
    for i in 0..n {
        let tile = batches[i % batches.len()][5];
        let Some(home) = origin.tile_items(tile, Access::Public).next() else {
            continue;
        };
        let body = Bytes::from(
            BatchRequest {
                tiles: vec![],
                ids: vec![home.id.clone()],
                access: Access::Public,
            }
            .to_json(),
        );
        let _ = post_batch(&http, &uri, body.clone()).await; // cached now
        let price = 1_000_000 + i as i64;
        client
            .execute(
                "UPDATE tilewarm_items SET data = jsonb_set(data, '{estimate}', to_jsonb($2::bigint)) WHERE id = $1",
                &[&home.id, &price],
            )
            .await
            .unwrap();
        let t = Instant::now();
        let needle = format!("\"estimate\": {price}");
        while t.elapsed() < Duration::from_secs(5) {
            let req = hyper::Request::post(uri.clone())
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(body.clone()))
                .unwrap();
            if let Ok(resp) = http.request(req).await {
                use http_body_util::BodyExt;
                let b = resp.into_body().collect().await.unwrap().to_bytes();
                if String::from_utf8_lossy(&b).contains(&needle) {
                    out.push(t.elapsed().as_secs_f64() * 1000.0);
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    out
}
