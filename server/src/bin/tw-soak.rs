//! `tw-soak`: fixed-rate load with faults against `tilewarm-server`, on loopback.
//!
//! Starts `redis-server` and `tilewarm-server` (Redis tier, `--fault-origin-stall-ms`) as
//! child processes, warms a working set of 16-tile batches, then sends batches at a fixed
//! rate (open loop: a request is sent on schedule whether or not earlier ones have been
//! answered) for `--seconds`. One request in ten asks for a block outside the warm set, so
//! the origin is on the request path too. On a fixed schedule (fractions of the run):
//!
//! - 20 %: SIGUSR1, the origin stalls (`--stall-ms` extra on every call); 35 %: it recovers;
//! - 45 %: `redis-server` is killed (SIGKILL); 60 %: it is restarted, empty, on the same port.
//!
//! It samples the server's VmRSS (`/proc/PID/status`) and `/healthz` every 250 ms.
//! Pass/fail, with no timing thresholds: every request answered 200 (no error, no
//! timeout at `--request-timeout-s`), Redis outage seen by the server (degraded) and
//! recovered from before the end, and peak RSS within `--rss-bound` of the RSS after
//! warm-up (start + max(`--rss-slack-mib`, 50 %)). Prints a markdown report (phases,
//! latency, RSS curve) and writes it to `--out`; exits 1 if a check failed.

use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::SeqCst;
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
    name = "tw-soak",
    about = "Fixed-rate load with Redis and origin faults"
)]
struct Args {
    /// The tilewarm-server binary.
    #[arg(long)]
    server_bin: PathBuf,
    /// Length of the measured run, in seconds (5..=600).
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Batches per second (1..=5000). The default is about a sixth of what the Redis tier
    /// sustains on an idle 2-core machine (`make bench`): a soak, not a saturation test.
    #[arg(long, default_value_t = 50)]
    rate: u64,
    /// Extra origin latency while the origin stalls, in ms.
    #[arg(long, default_value_t = 1500)]
    stall_ms: u64,
    /// Client timeout per request, in seconds; a request not answered in time is an error.
    #[arg(long, default_value_t = 10)]
    request_timeout_s: u64,
    /// Least RSS growth allowed over the RSS after warm-up, in MiB (the bound is the larger
    /// of this and 50 % of the start).
    #[arg(long, default_value_t = 64)]
    rss_slack_mib: u64,
    /// Synthetic city size and seed, for the server and the batches.
    #[arg(long, default_value_t = 50_000)]
    homes: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Where to write the markdown report.
    #[arg(long, default_value = "target/soak/soak.md")]
    out: PathBuf,
}

/// One answered (or failed) request.
struct Sample {
    /// Sent at, ms since the start of the measured run.
    at_ms: u64,
    latency_ms: f64,
    /// HTTP status, or 0 for a transport error or a timeout.
    status: u16,
    cold: bool,
}

/// What the monitor saw.
#[derive(Default)]
struct Monitor {
    /// (ms since start, VmRSS KiB), about one a second.
    rss_curve: Vec<(u64, u64)>,
    /// `/healthz` said Redis was degraded while it was down.
    degraded_seen: bool,
    /// When `/healthz` first said not degraded after the restart (ms since start).
    recovered_at_ms: Option<u64>,
    /// `/healthz` probes that failed or took over 2 s.
    health_errors: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Steady,
    OriginStall,
    Between,
    RedisDown,
    Recovery,
}

impl Phase {
    const ALL: [Phase; 5] = [
        Phase::Steady,
        Phase::OriginStall,
        Phase::Between,
        Phase::RedisDown,
        Phase::Recovery,
    ];
    fn at(frac: f64) -> Phase {
        match frac {
            f if f < 0.20 => Phase::Steady,
            f if f < 0.35 => Phase::OriginStall,
            f if f < 0.45 => Phase::Between,
            f if f < 0.60 => Phase::RedisDown,
            _ => Phase::Recovery,
        }
    }
    fn label(self) -> &'static str {
        match self {
            Phase::Steady => "steady (0-20 %)",
            Phase::OriginStall => "origin stalled (20-35 %)",
            Phase::Between => "origin back (35-45 %)",
            Phase::RedisDown => "redis killed (45-60 %)",
            Phase::Recovery => "redis restarted (60-100 %)",
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid} failed");
}

fn main() {
    let args = Args::parse();
    let seconds = args.seconds.clamp(5, 600);
    let rate = args.rate.clamp(1, 5000);
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
    let server = start_server(
        &args.server_bin,
        port,
        &[
            "--redis".into(),
            format!("redis://127.0.0.1:{redis_port}/0"),
            "--redis-prefix".into(),
            "tw:soak:".into(),
            "--fault-origin-stall-ms".into(),
            args.stall_ms.to_string(),
            "--synthetic-homes".into(),
            args.homes.to_string(),
            "--seed".into(),
            args.seed.to_string(),
        ],
    );
    let pid = server.id();
    let base = format!("http://127.0.0.1:{port}");
    let batch_url: hyper::Uri = format!("{base}/v1/batch").parse().expect("url");
    let client = http_client();

    // Warm the working set, let the warm-up queue drain, then take the starting RSS.
    rt.block_on(async {
        for b in warm.iter() {
            let r = post_batch(&client, &batch_url, b.clone()).await;
            assert!(matches!(r, Ok((200, _))), "warming failed: {r:?}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    let rss_start = vm_rss_kib(pid).expect("the server's VmRSS");
    eprintln!(
        "tw-soak: {seconds} s at {rate} batches/s; RSS after warm-up {} MiB",
        rss_start / 1024
    );

    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let timeout = Duration::from_secs(args.request_timeout_s);
    let total = Duration::from_secs(seconds);
    let events: [(f64, &str); 4] = [
        (0.20, "origin stall on"),
        (0.35, "origin stall off"),
        (0.45, "redis killed"),
        (0.60, "redis restarted"),
    ];
    let events_done = Arc::new(AtomicUsize::new(0));

    let (event_log, monitor, redis) = rt.block_on(async {
        let start = Instant::now();
        // The fixed-rate sender: one task per request, on schedule.
        let sender = {
            let (client, url, warm, samples) = (
                client.clone(),
                batch_url.clone(),
                Arc::clone(&warm),
                Arc::clone(&samples),
            );
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
                let mut tasks = Vec::new();
                let mut i = 0usize;
                while start.elapsed() < total {
                    tick.tick().await;
                    let is_cold = i % 10 == 9;
                    let b = if is_cold {
                        public_body(&cold_block(i / 10))
                    } else {
                        warm[i % warm.len()].clone()
                    };
                    i += 1;
                    let (client, url, samples) =
                        (client.clone(), url.clone(), Arc::clone(&samples));
                    tasks.push(tokio::spawn(async move {
                        let sent = Instant::now();
                        let at_ms = start.elapsed().as_millis() as u64;
                        let status =
                            match tokio::time::timeout(timeout, post_batch(&client, &url, b)).await
                            {
                                Ok(Ok((s, _))) => s,
                                _ => 0,
                            };
                        samples.lock().await.push(Sample {
                            at_ms,
                            latency_ms: sent.elapsed().as_secs_f64() * 1000.0,
                            status,
                            cold: is_cold,
                        });
                    }));
                }
                for t in tasks {
                    let _ = t.await;
                }
            })
        };

        // The faults, on schedule.
        let faults = {
            let done = Arc::clone(&events_done);
            let mut redis = redis;
            tokio::spawn(async move {
                let mut log = Vec::new();
                for (frac, what) in events {
                    tokio::time::sleep_until((start + total.mul_f64(frac)).into()).await;
                    match what {
                        "origin stall on" | "origin stall off" => signal(pid, "-USR1"),
                        "redis killed" => {
                            let _ = redis.0.kill();
                            let _ = redis.0.wait();
                        }
                        _ => {
                            redis = Proc(
                                loopback_redis_command(redis_port)
                                    .spawn()
                                    .expect("redis-server"),
                            );
                        }
                    }
                    log.push((start.elapsed().as_millis() as u64, what));
                    done.fetch_add(1, SeqCst);
                }
                (log, redis)
            })
        };

        // RSS and /healthz every 250 ms.
        let monitor = {
            let (client, done) = (client.clone(), Arc::clone(&events_done));
            let health_url = format!("{base}/healthz");
            tokio::spawn(async move {
                let mut m = Monitor::default();
                let mut last_rss_s = u64::MAX;
                while start.elapsed() < total {
                    let now_ms = start.elapsed().as_millis() as u64;
                    if now_ms / 1000 != last_rss_s {
                        last_rss_s = now_ms / 1000;
                        if let Some(kib) = vm_rss_kib(pid) {
                            m.rss_curve.push((now_ms, kib));
                        }
                    }
                    let probe = tokio::time::timeout(
                        Duration::from_secs(2),
                        get_text(&client, &health_url),
                    )
                    .await;
                    let events = done.load(SeqCst);
                    match probe {
                        Ok(Ok(h)) => {
                            let degraded = h.contains("\"redis_degraded\":true");
                            if degraded && events == 3 {
                                m.degraded_seen = true;
                            }
                            if events == 4
                                && m.degraded_seen
                                && !degraded
                                && m.recovered_at_ms.is_none()
                            {
                                m.recovered_at_ms = Some(start.elapsed().as_millis() as u64);
                            }
                        }
                        _ => m.health_errors += 1,
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                m
            })
        };
        let _ = sender.await;
        let (log, redis) = faults.await.expect("the fault task");
        let monitor = monitor.await.expect("the monitor task");
        (log, monitor, redis)
    });
    let Monitor {
        rss_curve,
        degraded_seen,
        mut recovered_at_ms,
        health_errors,
    } = monitor;
    // Recovery is pass/fail, not a deadline: if the run ended first, wait for it (the
    // server re-probes Redis with a back-off of at most 2 s) up to 30 s more.
    if degraded_seen && recovered_at_ms.is_none() {
        let health_url = format!("{base}/healthz");
        let end = Instant::now();
        recovered_at_ms = rt.block_on(async {
            while end.elapsed() < Duration::from_secs(30) {
                if let Ok(h) = get_text(&client, &health_url).await {
                    if h.contains("\"redis_degraded\":false") {
                        return Some(seconds * 1000 + end.elapsed().as_millis() as u64);
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            None
        });
    }
    let rss_end = vm_rss_kib(pid).unwrap_or(0);
    let metrics = rt
        .block_on(get_text(&client, &format!("{base}/metrics")))
        .unwrap_or_default();
    drop(server);
    drop(redis);

    // Report.
    let samples = std::mem::take(&mut *rt.block_on(samples.lock()));
    let run_ms = seconds * 1000;
    let mut md = String::new();
    md.push_str(&format!(
        "`tilewarm-server` (Redis tier, {} build, synthetic city of {} homes) under {rate} batches/s \
         for {seconds} s on loopback (`server/soak/run.sh`, tw-soak): 16-tile batches, 9 in 10 from a warm set of {} blocks, \
         1 in 10 a block never asked before (an origin call); origin stall +{} ms at 20-35 %, redis-server SIGKILLed at 45 % \
         and restarted empty at 60 %; client timeout {} s.\n\n",
        if cfg!(debug_assertions) { "debug" } else { "optimised" },
        args.homes,
        warm.len(),
        args.stall_ms,
        args.request_timeout_s
    ));
    md.push_str("| phase | requests | 200 | errors | p50 ms | p99 ms | max ms | cold p99 ms |\n|---|---:|---:|---:|---:|---:|---:|---:|\n");
    let mut errors = 0usize;
    for phase in Phase::ALL {
        let in_phase: Vec<&Sample> = samples
            .iter()
            .filter(|s| Phase::at(s.at_ms as f64 / run_ms as f64) == phase)
            .collect();
        let ok = in_phase.iter().filter(|s| s.status == 200).count();
        let errs = in_phase.len() - ok;
        errors += errs;
        let mut lat: Vec<f64> = in_phase.iter().map(|s| s.latency_ms).collect();
        lat.sort_by(f64::total_cmp);
        let mut cold_lat: Vec<f64> = in_phase
            .iter()
            .filter(|s| s.cold)
            .map(|s| s.latency_ms)
            .collect();
        cold_lat.sort_by(f64::total_cmp);
        md.push_str(&format!(
            "| {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} |\n",
            phase.label(),
            in_phase.len(),
            ok,
            errs,
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            lat.last().copied().unwrap_or(f64::NAN),
            percentile(&cold_lat, 0.99),
        ));
    }
    let mut statuses: Vec<u16> = samples
        .iter()
        .map(|s| s.status)
        .filter(|&s| s != 200)
        .collect();
    statuses.sort_unstable();
    statuses.dedup();

    let rss_peak = rss_curve
        .iter()
        .map(|&(_, k)| k)
        .max()
        .unwrap_or(0)
        .max(rss_end);
    let bound = rss_start + (rss_start / 2).max(args.rss_slack_mib * 1024);
    md.push_str(&format!(
        "\nRSS (MiB): after warm-up {:.1}, peak {:.1}, end {:.1}; bound {:.1} (start + max({} MiB, 50 %)). Curve, one sample per {} s: {}.\n",
        rss_start as f64 / 1024.0,
        rss_peak as f64 / 1024.0,
        rss_end as f64 / 1024.0,
        bound as f64 / 1024.0,
        args.rss_slack_mib,
        (seconds / 12).max(1),
        rss_curve
            .iter()
            .step_by((seconds / 12).max(1) as usize)
            .map(|&(ms, k)| format!("{}s {:.1}", ms / 1000, k as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let restarted_at = event_log
        .iter()
        .find(|e| e.1 == "redis restarted")
        .map(|e| e.0);
    md.push_str(&format!(
        "\nRedis: degraded mode seen during the outage: {}; recovered (healthz not degraded) {}. \
         Events at (ms): {}.\n",
        if degraded_seen { "yes" } else { "NO" },
        match (recovered_at_ms, restarted_at) {
            (Some(r), Some(s)) => format!("{} ms after the restart", r.saturating_sub(s)),
            _ => "NEVER".to_string(),
        },
        event_log
            .iter()
            .map(|(ms, what)| format!("{what} {ms}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let metric = |name: &str| {
        metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .map(|l| l.rsplit(' ').next().unwrap_or("?").to_string())
            .collect::<Vec<_>>()
            .join("+")
    };
    md.push_str(&format!(
        "Server counters: degraded requests {}, warm-up jobs dropped {}, origin calls (request) {}.\n",
        metric("tilewarm_degraded_requests_total"),
        metric("tilewarm_warmup_dropped_total"),
        metric("tilewarm_origin_calls_total{source=\"request\"}"),
    ));

    let mut failures = Vec::new();
    if samples.len() as u64 * 10 < rate * seconds * 9 {
        failures.push(format!(
            "only {} of {} scheduled requests were sent",
            samples.len(),
            rate * seconds
        ));
    }
    if errors > 0 {
        failures.push(format!(
            "{errors} requests failed (statuses {statuses:?}; 0 = transport error or timeout)"
        ));
    }
    if health_errors > 0 {
        failures.push(format!("{health_errors} /healthz probes failed"));
    }
    if !degraded_seen {
        failures.push("the server never reported Redis degraded while it was down".into());
    }
    if recovered_at_ms.is_none() {
        failures.push("the server did not leave degraded mode after Redis came back".into());
    }
    if rss_peak > bound {
        failures.push(format!(
            "peak RSS {} KiB is above the bound {} KiB",
            rss_peak, bound
        ));
    }
    md.push_str(&if failures.is_empty() {
        format!("\nResult: PASS ({} requests, 0 errors).\n", samples.len())
    } else {
        format!("\nResult: FAIL: {}.\n", failures.join("; "))
    });
    print!("{md}");
    if let Some(dir) = args.out.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(e) = std::fs::write(&args.out, &md) {
        eprintln!("tw-soak: cannot write {}: {e}", args.out.display());
    }
    if !failures.is_empty() {
        std::process::exit(1);
    }
}
