//! `tw-overload`: `tilewarm-server` offered 1x, 2x and 4x its measured capacity, on
//! loopback (issue 15).
//!
//! Starts `redis-server` and `tilewarm-server` (Redis tier, the admission defaults unless
//! `--server-arg` says otherwise) as child processes and warms a working set of 16-tile
//! batches. Then:
//! 1. **capacity**: a closed loop of `--concurrency` workers (default 64, the server's
//!    `--max-in-flight`) for `--seconds`: answered batches per second;
//! 2. **unloaded**: an open loop at a quarter of that: the reference p99;
//! 3. **1x, 2x, 4x**: open loops (a request is sent on schedule whether or not earlier ones
//!    were answered) at those multiples of the capacity, `--seconds` each.
//!
//! Nine requests in ten are warm blocks, one in ten a block never asked before (an origin
//! call), in every phase. Per phase: what was sent, answered 200 (accepted), refused
//! (503/429), failed (any other status, a transport error or no answer within
//! `--request-timeout-s`); the accepted p50/p99, the refusal p99; the server's peak VmRSS.
//! Prints a markdown report and writes it to `--out`. The figures are measurements, not
//! checks (no timing thresholds); the exit status is 1 only if an accepted request failed
//! or a phase sent less than 90 % of its schedule. The load generator shares the machine
//! with the server: at 4x it competes for the same cores.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use tilewarm::dataset::synthetic_city;
use tilewarm::origin::Origin;
use tilewarm_server::loadgen::{
    cold_block, free_port, get_text, http_client, percentile, plan_batches, post_batch,
    public_body, start_server, vm_rss_kib, wait_port, Proc,
};
use tilewarm_server::tier::loopback_redis_command;
use tokio::sync::Mutex;

#[derive(Parser, Debug)]
#[command(
    name = "tw-overload",
    about = "tilewarm-server at 1x, 2x and 4x its measured capacity"
)]
struct Args {
    /// The tilewarm-server binary.
    #[arg(long)]
    server_bin: PathBuf,
    /// Length of each phase, in seconds (3..=120).
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Workers of the closed loop that measures capacity.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Client timeout per request, in seconds; a request not answered in time failed.
    #[arg(long, default_value_t = 10)]
    request_timeout_s: u64,
    /// Synthetic city size and seed, for the server and the batches.
    #[arg(long, default_value_t = 50_000)]
    homes: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// An extra flag for the server (repeatable), e.g. `--server-arg=--max-queue=16`.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// Where to write the markdown report.
    #[arg(long, default_value = "target/bench/overload.md")]
    out: PathBuf,
}

/// One answered (or failed) request.
struct Sample {
    latency_ms: f64,
    /// HTTP status, or 0 for a transport error or a timeout.
    status: u16,
    /// What went wrong when `status` is 0.
    error: Option<String>,
}

/// The request body for the `i`th request of a phase: warm nine times in ten.
fn pick(warm: &[Bytes], cold_base: usize, i: usize) -> Bytes {
    if i % 10 == 9 {
        public_body(&cold_block(cold_base + i / 10))
    } else {
        warm[i % warm.len()].clone()
    }
}

struct Phase {
    label: String,
    /// Offered batches per second (0 for the closed loop).
    rate: f64,
    samples: Vec<Sample>,
    elapsed_s: f64,
    rss_peak_kib: u64,
}

fn main() {
    let args = Args::parse();
    let seconds = args.seconds.clamp(3, 120);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    let origin = Origin::new(synthetic_city(args.seed, args.homes)).expect("city");
    let warm: Arc<Vec<Bytes>> = Arc::new(
        plan_batches(&origin, 64)
            .iter()
            .map(|b| public_body(b))
            .collect(),
    );
    drop(origin);

    let redis_port = free_port();
    let redis = Proc(
        loopback_redis_command(redis_port)
            .spawn()
            .expect("redis-server (run server/tests/setup.sh)"),
    );
    wait_port(redis_port, Duration::from_secs(10));
    let port = free_port();
    let mut server_args = vec![
        "--redis".into(),
        format!("redis://127.0.0.1:{redis_port}/0"),
        "--redis-prefix".into(),
        "tw:overload:".into(),
        "--synthetic-homes".into(),
        args.homes.to_string(),
        "--seed".into(),
        args.seed.to_string(),
    ];
    server_args.extend(args.server_args.iter().cloned());
    let server = start_server(&args.server_bin, port, &server_args);
    let pid = server.id();
    let base = format!("http://127.0.0.1:{port}");
    let url: hyper::Uri = format!("{base}/v1/batch").parse().expect("url");
    let client = http_client();
    let timeout = Duration::from_secs(args.request_timeout_s);
    let total = Duration::from_secs(seconds);

    rt.block_on(async {
        for b in warm.iter() {
            let r = post_batch(&client, &url, b.clone()).await;
            assert!(matches!(r, Ok((200, _))), "warming failed: {r:?}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    let rss_start = vm_rss_kib(pid).expect("the server's VmRSS");

    // RSS is sampled every 100 ms by one task; each phase reads the peak it saw.
    let rss_peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    {
        let peak = Arc::clone(&rss_peak);
        rt.spawn(async move {
            loop {
                if let Some(k) = vm_rss_kib(pid) {
                    peak.fetch_max(k, std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
    let take_peak = || rss_peak.swap(0, std::sync::atomic::Ordering::Relaxed);

    let send = {
        let (client, url) = (client.clone(), url.clone());
        move |b: Bytes| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let sent = Instant::now();
                let (status, error) =
                    match tokio::time::timeout(timeout, post_batch(&client, &url, b)).await {
                        Ok(Ok((s, _))) => (s, None),
                        Ok(Err(e)) => (0, Some(e)),
                        Err(_) => (0, Some(format!("no answer within {timeout:?}"))),
                    };
                Sample {
                    latency_ms: sent.elapsed().as_secs_f64() * 1000.0,
                    status,
                    error,
                }
            }
        }
    };

    // 1. Capacity: a closed loop.
    take_peak();
    let samples = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    rt.block_on(async {
        let conc = args.concurrency.max(1);
        let workers: Vec<_> = (0..conc)
            .map(|w| {
                let (warm, samples, send) = (Arc::clone(&warm), Arc::clone(&samples), send.clone());
                tokio::spawn(async move {
                    let mut i = w;
                    while start.elapsed() < total {
                        let s = send(pick(&warm, 0, i)).await;
                        samples.lock().await.push(s);
                        i += conc;
                    }
                })
            })
            .collect();
        for w in workers {
            let _ = w.await;
        }
    });
    let elapsed_s = start.elapsed().as_secs_f64();
    let samples = std::mem::take(&mut *rt.block_on(samples.lock()));
    let answered = samples.iter().filter(|s| s.status == 200).count();
    let capacity = answered as f64 / elapsed_s;
    let mut phases = vec![Phase {
        label: format!("capacity: closed loop, {} workers", args.concurrency),
        rate: 0.0,
        samples,
        elapsed_s,
        rss_peak_kib: take_peak(),
    }];
    eprintln!("tw-overload: capacity {capacity:.0} batches/s");

    // 2 and 3. Open loops at multiples of it.
    for (k, (label, factor)) in [
        ("unloaded (0.25x)", 0.25),
        ("1x", 1.0),
        ("2x", 2.0),
        ("4x", 4.0),
    ]
    .into_iter()
    .enumerate()
    {
        let rate = (capacity * factor).max(1.0);
        eprintln!("tw-overload: {label}: {rate:.0} batches/s for {seconds} s");
        let start = Instant::now();
        let cold_base = (k + 1) * 100_000;
        let samples = rt.block_on(async {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            let mut tasks = Vec::new();
            let mut i = 0usize;
            while start.elapsed() < total {
                tick.tick().await;
                tasks.push(tokio::spawn(send(pick(&warm, cold_base, i))));
                i += 1;
            }
            let mut out = Vec::with_capacity(tasks.len());
            for t in tasks {
                if let Ok(s) = t.await {
                    out.push(s);
                }
            }
            out
        });
        phases.push(Phase {
            label: label.to_string(),
            rate,
            samples,
            elapsed_s: seconds as f64,
            rss_peak_kib: take_peak(),
        });
        // Let queues drain between phases.
        rt.block_on(async { tokio::time::sleep(Duration::from_secs(1)).await });
    }
    let metrics = rt
        .block_on(get_text(&client, &format!("{base}/metrics")))
        .unwrap_or_default();
    drop(server);
    drop(redis);

    // Report.
    let mut md = format!(
        "`tilewarm-server` (Redis tier, {} build, synthetic city of {} homes{}) offered 1x, 2x and 4x \
         its measured capacity on loopback (`server/soak/overload.sh`, tw-overload): 16-tile batches, 9 in \
         10 from a warm set of {} blocks, 1 in 10 a block never asked before (an origin call); {} s per \
         phase; client timeout {} s; the load generator runs on the same cores.\n\n",
        if cfg!(debug_assertions) { "debug" } else { "optimised" },
        args.homes,
        if args.server_args.is_empty() {
            String::from(", admission defaults")
        } else {
            format!(", server flags {}", args.server_args.join(" "))
        },
        warm.len(),
        seconds,
        args.request_timeout_s,
    );
    md.push_str(
        "| phase | offered /s | sent | accepted (200) | refused (503/429) | failed | accepted /s | \
         accepted p50 ms | accepted p99 ms | p99 / unloaded p99 | refusal p99 ms | peak RSS MiB |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut unloaded_p99 = f64::NAN;
    let mut failures = Vec::new();
    for p in &phases {
        let mut ok: Vec<f64> = p
            .samples
            .iter()
            .filter(|s| s.status == 200)
            .map(|s| s.latency_ms)
            .collect();
        ok.sort_by(f64::total_cmp);
        let mut refused: Vec<f64> = p
            .samples
            .iter()
            .filter(|s| s.status == 503 || s.status == 429)
            .map(|s| s.latency_ms)
            .collect();
        refused.sort_by(f64::total_cmp);
        let failed = p.samples.len() - ok.len() - refused.len();
        let p99 = percentile(&ok, 0.99);
        if p.label.starts_with("unloaded") {
            unloaded_p99 = p99;
        }
        let mut statuses: Vec<u16> = p
            .samples
            .iter()
            .map(|s| s.status)
            .filter(|&s| !matches!(s, 200 | 503 | 429))
            .collect();
        statuses.sort_unstable();
        statuses.dedup();
        if failed > 0 {
            let mut errors: Vec<&str> = p
                .samples
                .iter()
                .filter_map(|s| s.error.as_deref())
                .collect();
            errors.sort_unstable();
            errors.dedup();
            errors.truncate(3);
            failures.push(format!(
                "{}: {failed} requests failed (statuses {statuses:?}; 0 = transport error or timeout: {})",
                p.label,
                errors.join("; ")
            ));
        }
        if p.rate > 0.0 && (p.samples.len() as f64) < 0.9 * p.rate * p.elapsed_s {
            failures.push(format!(
                "{}: only {} of {:.0} scheduled requests were sent",
                p.label,
                p.samples.len(),
                p.rate * p.elapsed_s
            ));
        }
        let ratio = if p.rate > 0.0 && !p.label.starts_with("unloaded") {
            format!("{:.2}", p99 / unloaded_p99)
        } else {
            "".into()
        };
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {:.0} | {:.1} | {:.1} | {} | {} | {:.1} |\n",
            p.label,
            if p.rate > 0.0 {
                format!("{:.0}", p.rate)
            } else {
                "-".into()
            },
            p.samples.len(),
            ok.len(),
            refused.len(),
            failed,
            ok.len() as f64 / p.elapsed_s,
            percentile(&ok, 0.5),
            p99,
            ratio,
            if refused.is_empty() {
                "-".to_string()
            } else {
                format!("{:.1}", percentile(&refused, 0.99))
            },
            p.rss_peak_kib as f64 / 1024.0,
        ));
    }
    let metric = |name: &str| {
        metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .map(|l| l.rsplit(' ').next().unwrap_or("?").to_string())
            .collect::<Vec<_>>()
            .join("+")
    };
    md.push_str(&format!(
        "\nCapacity {capacity:.0} batches/s. RSS after warm-up {:.1} MiB. Server counters: origin calls \
         (request) {}, degraded requests {}, degraded refusals {}; batch slots at the end {}.\n",
        rss_start as f64 / 1024.0,
        metric("tilewarm_origin_calls_total{source=\"request\"}"),
        metric("tilewarm_degraded_requests_total"),
        metric("tilewarm_degraded_refusals_total"),
        metric("tilewarm_in_flight_limit{route=\"/v1/batch\"}"),
    ));
    md.push_str(&if failures.is_empty() {
        "\nResult: nothing accepted failed; every other request was refused (503/429).\n"
            .to_string()
    } else {
        format!("\nResult: FAIL: {}.\n", failures.join("; "))
    });
    print!("{md}");
    if let Some(dir) = args.out.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(e) = std::fs::write(&args.out, &md) {
        eprintln!("tw-overload: cannot write {}: {e}", args.out.display());
    }
    if !failures.is_empty() {
        std::process::exit(1);
    }
}
