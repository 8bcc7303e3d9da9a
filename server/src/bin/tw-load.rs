//! `tw-load`: the server benchmark. Loopback only, bounded in time.
//!
//! 1. Starts `redis-server` on a free 127.0.0.1 port (no persistence).
//! 2. For each cache tier (in-process, then Redis) starts `tilewarm-server` as a child
//!    process on a free port, warms every batch once, then runs `--concurrency` clients
//!    sending 16-tile batches (4x4 blocks of data tiles around occupied tiles of the
//!    default synthetic city, access `public`) for `--seconds`, and records throughput and
//!    latency percentiles.
//! 3. Runs `redis-benchmark` `MGET` with as many real item keys as an average batch holds,
//!    same client count, no pipelining (one round trip per batch, like the server), against
//!    the same redis-server in the same run (the issue-22 peer); then `MGET` of one batch's
//!    16 tile keys (what the storage format v3 tier reads per batch).
//! 4. Prints a markdown table with ratios and writes it to `--out`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use tilewarm::access::Access;
use tilewarm::dataset::synthetic_city;
use tilewarm::origin::Origin;
use tilewarm_server::loadgen::{
    free_port, get_text, http_client, plan_batches, post_batch, public_body, start_server,
    throughput_flags, wait_port, HttpClient, Proc,
};

#[derive(Parser, Debug)]
#[command(
    name = "tw-load",
    about = "Loopback benchmark of tilewarm-server (16-tile batches)"
)]
struct Args {
    /// The tilewarm-server binary.
    #[arg(long)]
    server_bin: PathBuf,
    /// Seconds of measured load per tier (at most 20).
    #[arg(long, default_value_t = 8)]
    seconds: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Distinct batches cycled through.
    #[arg(long, default_value_t = 64)]
    batches: usize,
    /// Where to write the markdown table.
    #[arg(long, default_value = "target/bench/server.md")]
    out: PathBuf,
    /// Synthetic city size and seed (the server's defaults).
    #[arg(long, default_value_t = 50_000)]
    homes: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// What the raw `MGET` keys start with (an item's key without its id); by default the
    /// item keys of this build's storage format under the bench's prefix. Set it to measure
    /// a server binary that stores items under other keys.
    #[arg(long)]
    mget_key_prefix: Option<String>,
    /// What the raw `MGET`'s tile keys start with (a tile's key without `z/x/y`); by default
    /// this build's tile keys under the bench's prefix.
    #[arg(long)]
    mget_tile_key_prefix: Option<String>,
    /// Classes given a generation in Redis before the redis-tier run (as invalidating them
    /// would: the data's `active` and `off_market`, then made-up ones up to this many), so
    /// that every read fetches them and checks every item against its class's. 0: none,
    /// the hash is absent (no class was ever invalidated).
    #[arg(long, default_value_t = 0)]
    class_generations: usize,
}

struct Run {
    label: String,
    batches: u64,
    items: u64,
    secs: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    /// Requests answered from the origin because the tier was marked down
    /// (`tilewarm_degraded_requests_total` over the measured seconds).
    degraded: u64,
}

/// `tilewarm_degraded_requests_total` from the server's `/metrics`.
async fn degraded_requests(client: &HttpClient, url: &str) -> u64 {
    let text = get_text(client, &format!("{url}/metrics"))
        .await
        .unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("tilewarm_degraded_requests_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted_us.len() as f64 - 1.0) * p).round() as usize;
    sorted_us[i] as f64 / 1000.0
}

async fn load(label: &str, url: &str, bodies: &[Bytes], concurrency: usize, seconds: u64) -> Run {
    let client = http_client();
    let base = url;
    let url: hyper::Uri = format!("{url}/v1/batch").parse().expect("url");
    let bodies: Arc<Vec<Bytes>> = Arc::new(bodies.to_vec());
    // Warm every batch (and let the warm-up queue drain).
    for b in bodies.iter() {
        let _ = post(&client, &url, b.clone()).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let degraded_before = degraded_requests(&client, base).await;

    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..concurrency {
        let (client, url, bodies, stop) = (
            client.clone(),
            url.clone(),
            Arc::clone(&bodies),
            Arc::clone(&stop),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(100_000);
            let (mut items, mut errors) = (0u64, 0u64);
            let mut i = c * 7;
            while !stop.load(Ordering::Relaxed) {
                let body = bodies[i % bodies.len()].clone();
                i += 1;
                let t0 = Instant::now();
                match post(&client, &url, body).await {
                    Some(n) => {
                        lat.push(t0.elapsed().as_micros() as u64);
                        items += n;
                    }
                    None => errors += 1,
                }
            }
            (lat, items, errors)
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let (mut items, mut errors) = (0, 0);
    for t in tasks {
        if let Ok((l, n, e)) = t.await {
            all.extend(l);
            items += n;
            errors += e;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let degraded = degraded_requests(&client, base)
        .await
        .saturating_sub(degraded_before);
    all.sort_unstable();
    Run {
        label: label.to_string(),
        batches: all.len() as u64,
        items,
        secs,
        p50_ms: percentile(&all, 0.50),
        p99_ms: percentile(&all, 0.99),
        errors,
        degraded,
    }
}

/// POSTs a batch; the number of items in the answer, or None on failure.
async fn post(client: &HttpClient, url: &hyper::Uri, body: Bytes) -> Option<u64> {
    match post_batch(client, url, body).await {
        Ok((200, n)) => Some(n),
        _ => None,
    }
}

/// `redis-benchmark` MGET of `keys`: (rps, p50 ms, p99 ms).
fn redis_benchmark(
    port: u16,
    keys: &[String],
    clients: usize,
    requests: usize,
) -> Option<(f64, f64, f64)> {
    let out = Command::new("timeout")
        .arg("20")
        .arg("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args([
            "-n",
            &requests.to_string(),
            "-c",
            &clients.to_string(),
            "-P",
            "1",
            "--csv",
        ])
        .arg("MGET")
        .args(keys)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last()?;
    let cols: Vec<f64> = line
        .split("\",\"")
        .skip(1)
        .map(|c| c.trim_matches('"').parse().unwrap_or(f64::NAN))
        .collect();
    // rps, avg, min, p50, p95, p99, max
    Some((*cols.first()?, *cols.get(3)?, *cols.get(5)?))
}

fn main() {
    let args = Args::parse();
    let seconds = args.seconds.clamp(1, 20);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    let origin = Origin::new(synthetic_city(args.seed, args.homes)).expect("city");
    let batches = plan_batches(&origin, args.batches);
    let bodies: Vec<Bytes> = batches.iter().map(|tiles| public_body(tiles)).collect();
    // Keys an average batch reads from Redis: every item of its tiles (all tiers).
    let per_batch: Vec<Vec<String>> = batches
        .iter()
        .map(|tiles| {
            tiles
                .iter()
                .flat_map(|&t| origin.tile_items(t, Access::Agent).map(|i| i.id.clone()))
                .collect()
        })
        .collect();
    let mget_prefix = args.mget_key_prefix.clone().unwrap_or_else(|| {
        tilewarm_server::stored::Keys::new("tw:bench:")
            .items_prefix()
            .to_string()
    });
    let avg_keys = per_batch.iter().map(Vec::len).sum::<usize>() / per_batch.len().max(1);
    let mut keys: Vec<String> = per_batch
        .iter()
        .flatten()
        .take(avg_keys.max(16))
        .map(|id| format!("{mget_prefix}{id}"))
        .collect();
    keys.truncate(avg_keys.max(16));
    let tile_prefix = args.mget_tile_key_prefix.clone().unwrap_or_else(|| {
        tilewarm_server::stored::Keys::new("tw:bench:")
            .tiles_prefix()
            .to_string()
    });
    let tile_keys: Vec<String> = batches
        .first()
        .map(|tiles| tiles.iter().map(|t| format!("{tile_prefix}{t}")).collect())
        .unwrap_or_default();

    let redis_port = free_port();
    let redis = Proc(
        tilewarm_server::tier::loopback_redis_command(redis_port)
            .spawn()
            .expect("redis-server (run server/tests/setup.sh)"),
    );
    wait_port(redis_port, Duration::from_secs(10));
    if args.class_generations > 0 {
        let gens = tilewarm_server::stored::Keys::new("tw:bench:")
            .gens()
            .to_string();
        let mut cmd = std::process::Command::new("redis-cli");
        cmd.args(["-p", &redis_port.to_string(), "HSET", &gens]);
        let classes = ["active".to_string(), "off_market".to_string()]
            .into_iter()
            .chain((0..).map(|i| format!("made-up-{i}")))
            .take(args.class_generations);
        for (i, class) in classes.enumerate() {
            cmd.arg(class).arg((i + 1).to_string());
        }
        let ok = cmd.output().is_ok_and(|o| o.status.success());
        assert!(ok, "redis-cli HSET {gens} (run server/tests/setup.sh)");
    }

    let mut runs = Vec::new();
    for (label, extra) in [
        ("in-process tier", vec![]),
        (
            "redis tier",
            vec![
                "--redis".to_string(),
                format!("redis://127.0.0.1:{redis_port}/0"),
                "--redis-prefix".to_string(),
                "tw:bench:".to_string(),
                // The tier's speed is measured, not degraded mode: on a busy machine a
                // 250 ms limit marks Redis down now and then and answers from the origin
                // (the `degraded` column counts those requests).
                "--redis-timeout-ms".to_string(),
                "2000".to_string(),
            ],
        ),
    ] {
        let port = free_port();
        let extra = [&extra[..], &throughput_flags()].concat();
        let server = start_server(&args.server_bin, port, &extra);
        let url = format!("http://127.0.0.1:{port}");
        eprintln!(
            "tw-load: {label}: {seconds} s, {} clients",
            args.concurrency
        );
        let run = rt.block_on(load(label, &url, &bodies, args.concurrency, seconds));
        drop(server);
        runs.push(run);
    }

    // The same redis-server, now holding the items the redis-tier run wrote.
    // About five seconds of MGETs: raw Redis answers roughly a million keys a second.
    let rb_requests = (5_000_000 / keys.len().max(1)).clamp(1_000, 200_000);
    eprintln!("tw-load: redis-benchmark MGET of {} keys", keys.len());
    let rb = redis_benchmark(redis_port, &keys, args.concurrency, rb_requests);
    eprintln!(
        "tw-load: redis-benchmark MGET of {} tile keys",
        tile_keys.len()
    );
    let rb_tiles = redis_benchmark(redis_port, &tile_keys, args.concurrency, 5_000);
    drop(redis);

    let mut md = String::new();
    md.push_str(&format!(
        "16-tile batches against `tilewarm-server` on loopback (`server/bench/run.sh`). \
         Synthetic city of {} homes; {} distinct 4x4 blocks of z14 tiles, access `public`, \
         all warm; an average batch holds {} items of every tier ({} for `public`). \
         {} concurrent clients, {} s per tier, client and server on the same {}-core machine.\n\n",
        args.homes,
        bodies.len(),
        avg_keys,
        runs.first()
            .map(|r| r.items / r.batches.max(1))
            .unwrap_or(0),
        args.concurrency,
        seconds,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
    ));
    if args.class_generations > 0 {
        md.push_str(&format!(
            "The Redis tier ran with {} classes holding a generation \
             (`--class-generations`): each read fetched them and checked every item.\n\n",
            args.class_generations
        ));
    }
    md.push_str("| what | batches/s | items/s | p50 ms | p99 ms | errors | degraded |\n|---|---:|---:|---:|---:|---:|---:|\n");
    for r in &runs {
        md.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.2} | {:.2} | {} | {} |\n",
            r.label,
            r.batches as f64 / r.secs,
            r.items as f64 / r.secs,
            r.p50_ms,
            r.p99_ms,
            r.errors,
            r.degraded
        ));
    }
    match rb {
        Some((rps, p50, p99)) => {
            md.push_str(&format!(
                "| redis-benchmark MGET {} keys (-c {}, -P 1) | {:.0} | {:.0} | {:.2} | {:.2} | 0 | |\n",
                keys.len(),
                args.concurrency,
                rps,
                rps * keys.len() as f64,
                p50,
                p99
            ));
            if let Some((t_rps, t_p50, t_p99)) = rb_tiles {
                md.push_str(&format!(
                    "| redis-benchmark MGET {} tile keys (-c {}, -P 1) | {:.0} | | {:.2} | {:.2} | 0 | |\n",
                    tile_keys.len(),
                    args.concurrency,
                    t_rps,
                    t_p50,
                    t_p99
                ));
            }
            md.push('\n');
            let tput = |r: &Run| r.batches as f64 / r.secs;
            if let [local, redis] = &runs[..] {
                md.push_str(&format!(
                    "Ratios: redis tier / raw MGET throughput = {:.2}; in-process / redis tier = {:.2}; \
                     redis tier p99 / raw MGET p99 = {:.1}.\n",
                    tput(redis) / rps,
                    tput(local) / tput(redis),
                    redis.p99_ms / p99
                ));
                if let Some((t_rps, _, t_p99)) = rb_tiles {
                    md.push_str(&format!(
                        "Against raw MGET of the {} tile keys: throughput {:.2}, p99 {:.1}.\n",
                        tile_keys.len(),
                        tput(redis) / t_rps,
                        redis.p99_ms / t_p99
                    ));
                }
            }
        }
        None => md.push_str("\nredis-benchmark did not run (install redis-tools).\n"),
    }
    print!("{md}");
    if let Some(dir) = args.out.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(e) = std::fs::write(&args.out, &md) {
        eprintln!("tw-load: cannot write {}: {e}", args.out.display());
    }
}
