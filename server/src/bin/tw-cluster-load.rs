//! `tw-cluster-load`: the Redis Cluster benchmark (`server/bench/cluster.sh`). Loopback
//! only, bounded in time, one run:
//!
//! 1. Starts a single `redis-server` and a Redis Cluster of 3 masters + 3 replicas
//!    (`scripts/redis-cluster.sh`), each on free ports.
//! 2. Server throughput: 16-tile batches (the `tw-load` batches, access `public`, all
//!    warm) for `--seconds` each against one `tilewarm-server` on the single Redis, one on
//!    the cluster, and two on the cluster (the clients spread over both).
//! 3. Raw reads, the choice docs/server.md explains: `MGET` of as many keys as an average
//!    batch reads, from `--concurrency` tasks, on the single Redis; on the cluster split
//!    by slot, one pipeline of per-slot `MGET`s per node (what the tier does,
//!    `RedisConn::mget`); and on the cluster with every key hash-tagged into one slot
//!    (one `MGET` to one master: the most that tagging could buy).
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
    wait_port, Proc,
};
use tilewarm_server::redis_conn::{ConnOptions, RedisConn, RedisTarget};

#[derive(Parser, Debug)]
#[command(
    name = "tw-cluster-load",
    about = "Loopback benchmark of tilewarm-server on a Redis Cluster"
)]
struct Args {
    /// The tilewarm-server binary.
    #[arg(long)]
    server_bin: PathBuf,
    /// scripts/redis-cluster.sh.
    #[arg(long, default_value = "scripts/redis-cluster.sh")]
    cluster_script: PathBuf,
    /// Seconds of measured load per row (at most 20).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Distinct batches cycled through.
    #[arg(long, default_value_t = 64)]
    batches: usize,
    /// Where to write the markdown table.
    #[arg(long, default_value = "target/bench/cluster.md")]
    out: PathBuf,
    /// Synthetic city size and seed (the server's defaults).
    #[arg(long, default_value_t = 50_000)]
    homes: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

struct Row {
    label: String,
    ops: u64,
    secs: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    /// Server rows: requests the servers answered without the tier (Redis marked down).
    degraded: Option<u64>,
}

impl Row {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.secs
    }
}

fn percentile(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted_us.len() as f64 - 1.0) * p).round() as usize;
    sorted_us[i] as f64 / 1000.0
}

/// Runs `op(task, i)` from `concurrency` tasks for `seconds`: latencies and errors.
async fn drive<F, Fut>(label: &str, concurrency: usize, seconds: u64, op: F) -> Row
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..concurrency {
        let (op, stop) = (Arc::clone(&op), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(50_000);
            let mut errors = 0u64;
            let mut i = c * 7;
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                if op(c, i).await {
                    lat.push(t0.elapsed().as_micros() as u64);
                } else {
                    errors += 1;
                }
                i += 1;
            }
            (lat, errors)
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            all.extend(l);
            errors += e;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort_unstable();
    Row {
        label: label.to_string(),
        ops: all.len() as u64,
        secs,
        p50_ms: percentile(&all, 0.50),
        p99_ms: percentile(&all, 0.99),
        errors,
        degraded: None,
    }
}

/// Batches against the servers at `urls` (client `c` sends to `urls[c % n]`).
async fn load_servers(
    label: &str,
    urls: &[String],
    bodies: &[Bytes],
    concurrency: usize,
    seconds: u64,
) -> Row {
    let client = http_client();
    let uris: Vec<hyper::Uri> = urls
        .iter()
        .map(|u| format!("{u}/v1/batch").parse().expect("url"))
        .collect();
    // Warm every batch on every instance (and let the warm-up queues drain).
    for uri in &uris {
        for b in bodies {
            let _ = post_batch(&client, uri, b.clone()).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let degraded = || async {
        let mut n = 0;
        for u in urls {
            let text = get_text(&client, &format!("{u}/metrics"))
                .await
                .unwrap_or_default();
            n += text
                .lines()
                .find_map(|l| l.strip_prefix("tilewarm_degraded_requests_total "))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
        n
    };
    let before = degraded().await;
    let (uris, bodies) = (Arc::new(uris), Arc::new(bodies.to_vec()));
    let c2 = client.clone();
    let mut row = drive(label, concurrency, seconds, move |c, i| {
        let (client, uris, bodies) = (c2.clone(), Arc::clone(&uris), Arc::clone(&bodies));
        async move {
            let uri = &uris[c % uris.len()];
            let body = bodies[i % bodies.len()].clone();
            matches!(post_batch(&client, uri, body).await, Ok((200, _)))
        }
    })
    .await;
    row.degraded = Some(degraded().await - before);
    row
}

/// `MGET` of `keys` through `conn` (split by slot and grouped by node on a cluster).
async fn load_mget(
    label: &str,
    conn: RedisConn,
    keys: Vec<String>,
    concurrency: usize,
    seconds: u64,
) -> Row {
    let keys = Arc::new(keys);
    drive(label, concurrency, seconds, move |_, _| {
        let (conn, keys) = (conn.clone(), Arc::clone(&keys));
        async move {
            conn.mget(&keys)
                .await
                .is_ok_and(|v| v.iter().all(Option::is_some))
        }
    })
    .await
}

/// Writes `keys` (values of `value_len` bytes) through `conn`.
async fn fill(conn: &RedisConn, keys: &[String], value_len: usize) {
    let value = vec![b'x'; value_len];
    let cmds = keys
        .iter()
        .map(|k| (k.clone(), redis::Cmd::set(k, value.clone())))
        .collect();
    conn.per_key(cmds).await.expect("keys written");
}

struct Cluster {
    script: PathBuf,
    dir: PathBuf,
    url: String,
}

impl Cluster {
    fn start(script: &PathBuf) -> Cluster {
        let dir = std::env::temp_dir().join(format!("tw-cluster-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let out = Command::new(script)
            .arg("start")
            .arg(&dir)
            .output()
            .expect("scripts/redis-cluster.sh runs");
        let url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let c = Cluster {
            script: script.clone(),
            dir,
            url,
        };
        assert!(
            out.status.success(),
            "redis-cluster.sh start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        c
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(&self.script)
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
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
    // Keys an average batch reads: every item of its tiles (all tiers).
    let per_batch: Vec<usize> = batches
        .iter()
        .map(|tiles| {
            tiles
                .iter()
                .map(|&t| origin.tile_items(t, Access::Agent).count())
                .sum()
        })
        .collect();
    let avg_keys = (per_batch.iter().sum::<usize>() / per_batch.len().max(1)).max(16);

    let redis_port = free_port();
    let _redis = Proc(
        tilewarm_server::tier::loopback_redis_command(redis_port)
            .spawn()
            .expect("redis-server (run server/tests/setup.sh)"),
    );
    wait_port(redis_port, Duration::from_secs(10));
    let single = format!("redis://127.0.0.1:{redis_port}/0");
    eprintln!("tw-cluster-load: starting a 3+3 Redis Cluster");
    let cluster = Cluster::start(&args.cluster_script);

    let mut servers_rows = Vec::new();
    for (label, redis, n) in [
        ("1 instance, single Redis", single.clone(), 1),
        ("1 instance, cluster", cluster.url.clone(), 1),
        ("2 instances, cluster", cluster.url.clone(), 2),
    ] {
        let extra = [
            "--redis".to_string(),
            redis,
            "--redis-prefix".to_string(),
            "tw:bench:".to_string(),
            // The tier is what is measured: on a loaded machine a 250 ms round trip is
            // not a dead Redis, so do not fall back to the origin for it.
            "--redis-timeout-ms".to_string(),
            "2000".to_string(),
        ];
        let extra = [&extra[..], &tilewarm_server::loadgen::throughput_flags()].concat();
        let procs: Vec<(Proc, String)> = (0..n)
            .map(|_| {
                let port = free_port();
                let p = start_server(&args.server_bin, port, &extra);
                (p, format!("http://127.0.0.1:{port}"))
            })
            .collect();
        let urls: Vec<String> = procs.iter().map(|(_, u)| u.clone()).collect();
        eprintln!(
            "tw-cluster-load: {label}: {seconds} s, {} clients",
            args.concurrency
        );
        servers_rows.push(rt.block_on(load_servers(
            label,
            &urls,
            &bodies,
            args.concurrency,
            seconds,
        )));
        drop(procs);
    }

    // Raw reads: the same key count, 200-byte values.
    let opts = ConnOptions {
        timeout: Duration::from_secs(5),
        read_from_replicas: false,
    };
    let _in_runtime = rt.enter();
    let single_conn =
        RedisConn::open(&RedisTarget::Single(single.clone()), opts).expect("single redis");
    let cluster_conn = RedisConn::open(
        &RedisTarget::parse(&cluster.url).expect("cluster url"),
        opts,
    )
    .expect("cluster");
    let spread: Vec<String> = (0..avg_keys).map(|i| format!("bench:k{i}")).collect();
    let tagged: Vec<String> = (0..avg_keys).map(|i| format!("{{bench}}:k{i}")).collect();
    let mut mget_rows = Vec::new();
    rt.block_on(async {
        fill(&single_conn, &spread, 200).await;
        fill(&cluster_conn, &spread, 200).await;
        fill(&cluster_conn, &tagged, 200).await;
        for (label, conn, keys) in [
            (
                "single Redis: one MGET",
                single_conn.clone(),
                spread.clone(),
            ),
            (
                "cluster, keys spread: one MGET per slot, one pipeline per node",
                cluster_conn.clone(),
                spread.clone(),
            ),
            (
                "cluster, keys hash-tagged into one slot: one MGET",
                cluster_conn.clone(),
                tagged.clone(),
            ),
        ] {
            eprintln!("tw-cluster-load: {label}: {seconds} s");
            mget_rows.push(load_mget(label, conn, keys, args.concurrency, seconds).await);
        }
    });
    drop(cluster);

    let mut md = String::new();
    md.push_str(&format!(
        "16-tile batches against `tilewarm-server` on a single Redis and on a Redis Cluster of \
         3 masters + 3 replicas (`scripts/redis-cluster.sh`), all on loopback \
         (`server/bench/cluster.sh`). Synthetic city of {} homes; {} distinct 4x4 blocks of \
         z14 tiles, access `public`, all warm. {} concurrent clients, {} s per row, \
         everything on the same {}-core machine (the cluster's six redis-servers included).\n\n",
        args.homes,
        bodies.len(),
        args.concurrency,
        seconds,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
    ));
    let table = |md: &mut String, unit: &str, rows: &[Row]| {
        md.push_str(&format!(
            "| what | {unit}/s | p50 ms | p99 ms | errors | answered without the tier |\n\
             |---|---:|---:|---:|---:|---:|\n"
        ));
        for r in rows {
            md.push_str(&format!(
                "| {} | {:.0} | {:.2} | {:.2} | {} | {} |\n",
                r.label,
                r.rate(),
                r.p50_ms,
                r.p99_ms,
                r.errors,
                r.degraded.map_or("-".to_string(), |n| n.to_string())
            ));
        }
    };
    table(&mut md, "batches", &servers_rows);
    if let [single, one, two] = &servers_rows[..] {
        md.push_str(&format!(
            "\nRatios: 1 instance on the cluster / on a single Redis = {:.2}; \
             2 instances / 1 instance on the cluster = {:.2}.\n\n",
            one.rate() / single.rate(),
            two.rate() / one.rate()
        ));
    }
    md.push_str(&format!(
        "Raw reads of {avg_keys} keys (what an average batch reads; 200-byte values), \
         {} concurrent tasks through the tier's connection (`RedisConn::mget`):\n\n",
        args.concurrency
    ));
    table(&mut md, "MGETs", &mget_rows);
    if let [single, split, tagged] = &mget_rows[..] {
        md.push_str(&format!(
            "\nRatios: spread (split by slot) / single Redis = {:.2}; hash-tagged / spread = \
             {:.2}.\n",
            split.rate() / single.rate(),
            tagged.rate() / split.rate()
        ));
    }
    print!("{md}");
    if let Some(dir) = args.out.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(e) = std::fs::write(&args.out, &md) {
        eprintln!("tw-cluster-load: cannot write {}: {e}", args.out.display());
    }
}
