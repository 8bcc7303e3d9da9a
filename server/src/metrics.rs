//! Prometheus text exposition from plain atomics: a handful of counters and gauges and one
//! fixed-bucket latency histogram. Small enough that a metrics crate would be more code.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the latency histogram buckets, in seconds.
pub const LATENCY_BUCKETS_S: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A cumulative latency histogram.
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS_S.len()],
    count: AtomicU64,
    /// Sum in microseconds.
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS_S.iter().position(|&b| s <= b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, b) in LATENCY_BUCKETS_S.iter().enumerate() {
            cumulative += self.buckets[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_us.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// Hits and misses of one cache tier, for tile lists and for items asked for by id.
#[derive(Default)]
pub struct TierCounters {
    pub tile_hits: AtomicU64,
    pub tile_misses: AtomicU64,
    pub id_hits: AtomicU64,
    pub id_misses: AtomicU64,
}

/// Every metric the server exports.
#[derive(Default)]
pub struct Metrics {
    /// (route, status) → responses.
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    pub batch_latency: Histogram,
    pub cache: TierCounters,
    /// Origin calls made to answer requests.
    pub origin_calls_request: AtomicU64,
    /// Origin calls made by warm-up workers.
    pub origin_calls_warmup: AtomicU64,
    /// Items the origin returned, over all calls.
    pub origin_items: AtomicU64,
    pub warmup_enqueued: AtomicU64,
    pub warmup_dropped: AtomicU64,
    /// Planned warm-up tiles already in the cache tier (or being warmed), so skipped.
    pub warmup_skipped_tiles: AtomicU64,
    /// Tiles written into the cache tier by warm-up.
    pub warmup_tiles: AtomicU64,
    pub warmup_errors: AtomicU64,
    pub warmup_timeouts: AtomicU64,
    pub redis_errors: AtomicU64,
    pub redis_recoveries: AtomicU64,
    /// Requests answered without the cache tier because it was unavailable.
    pub degraded_requests: AtomicU64,
    /// Requests refused with 504 because the origin passed `--origin-timeout-ms`.
    pub origin_timeouts: AtomicU64,
}

/// Gauges read at scrape time.
pub struct Gauges {
    pub tier: &'static str,
    pub warmup_queue_depth: usize,
    pub warmup_queue_capacity: usize,
    pub redis_degraded: Option<bool>,
    pub origin_items: usize,
    pub local_cache_items: Option<usize>,
}

impl Metrics {
    pub fn count_request(&self, route: &'static str, status: u16) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((route, status)).or_default() += 1;
        }
    }

    /// Responses so far for `route` with `status`.
    pub fn requests(&self, route: &'static str, status: u16) -> u64 {
        self.requests
            .lock()
            .map(|m| m.get(&(route, status)).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Origin calls so far, requests and warm-up together.
    pub fn origin_calls(&self) -> u64 {
        self.origin_calls_request.load(Relaxed) + self.origin_calls_warmup.load(Relaxed)
    }

    /// The Prometheus text form.
    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let counter = |out: &mut String, name: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        };
        let gauge = |out: &mut String, name: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        };

        counter(
            &mut out,
            "tilewarm_http_requests_total",
            "HTTP responses by route and status.",
        );
        if let Ok(m) = self.requests.lock() {
            for ((route, status), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "tilewarm_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
        }
        self.batch_latency.render(
            &mut out,
            "tilewarm_batch_duration_seconds",
            "Time to answer POST /v1/batch, body read to response built.",
        );

        let t = g.tier;
        counter(
            &mut out,
            "tilewarm_cache_hits_total",
            "Cache-tier hits by tier and kind (tile list, id).",
        );
        let _ = writeln!(
            out,
            "tilewarm_cache_hits_total{{tier=\"{t}\",kind=\"tile\"}} {}",
            self.cache.tile_hits.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "tilewarm_cache_hits_total{{tier=\"{t}\",kind=\"id\"}} {}",
            self.cache.id_hits.load(Relaxed)
        );
        counter(
            &mut out,
            "tilewarm_cache_misses_total",
            "Cache-tier misses by tier and kind (tile list, id).",
        );
        let _ = writeln!(
            out,
            "tilewarm_cache_misses_total{{tier=\"{t}\",kind=\"tile\"}} {}",
            self.cache.tile_misses.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "tilewarm_cache_misses_total{{tier=\"{t}\",kind=\"id\"}} {}",
            self.cache.id_misses.load(Relaxed)
        );

        counter(
            &mut out,
            "tilewarm_origin_calls_total",
            "Origin calls by source (request path, warm-up).",
        );
        let _ = writeln!(
            out,
            "tilewarm_origin_calls_total{{source=\"request\"}} {}",
            self.origin_calls_request.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "tilewarm_origin_calls_total{{source=\"warmup\"}} {}",
            self.origin_calls_warmup.load(Relaxed)
        );
        counter(
            &mut out,
            "tilewarm_origin_items_total",
            "Items returned by the origin.",
        );
        let _ = writeln!(
            out,
            "tilewarm_origin_items_total {}",
            self.origin_items.load(Relaxed)
        );

        gauge(
            &mut out,
            "tilewarm_warmup_queue_depth",
            "Warm-up jobs waiting.",
        );
        let _ = writeln!(out, "tilewarm_warmup_queue_depth {}", g.warmup_queue_depth);
        gauge(
            &mut out,
            "tilewarm_warmup_queue_capacity",
            "Warm-up queue capacity.",
        );
        let _ = writeln!(
            out,
            "tilewarm_warmup_queue_capacity {}",
            g.warmup_queue_capacity
        );
        for (name, help, v) in [
            (
                "tilewarm_warmup_enqueued_total",
                "Warm-up jobs queued.",
                &self.warmup_enqueued,
            ),
            (
                "tilewarm_warmup_dropped_total",
                "Warm-up jobs dropped because the queue was full.",
                &self.warmup_dropped,
            ),
            (
                "tilewarm_warmup_skipped_tiles_total",
                "Planned warm-up tiles already cached or in flight.",
                &self.warmup_skipped_tiles,
            ),
            (
                "tilewarm_warmup_tiles_total",
                "Tiles written into the cache tier by warm-up.",
                &self.warmup_tiles,
            ),
            (
                "tilewarm_warmup_errors_total",
                "Warm-up jobs that failed (cache tier unavailable).",
                &self.warmup_errors,
            ),
            (
                "tilewarm_warmup_timeouts_total",
                "Warm-up jobs ended because the origin did not answer within --origin-timeout-ms.",
                &self.warmup_timeouts,
            ),
            (
                "tilewarm_redis_errors_total",
                "Redis commands that failed or timed out.",
                &self.redis_errors,
            ),
            (
                "tilewarm_redis_recoveries_total",
                "Times Redis came back after being marked down.",
                &self.redis_recoveries,
            ),
            (
                "tilewarm_degraded_requests_total",
                "Requests answered from the origin because the cache tier was unavailable.",
                &self.degraded_requests,
            ),
            (
                "tilewarm_origin_timeouts_total",
                "Requests refused with 504 because the origin did not answer within --origin-timeout-ms.",
                &self.origin_timeouts,
            ),
        ] {
            counter(&mut out, name, help);
            let _ = writeln!(out, "{name} {}", v.load(Relaxed));
        }
        if let Some(d) = g.redis_degraded {
            gauge(
                &mut out,
                "tilewarm_redis_degraded",
                "1 while Redis is unavailable and requests go to the origin.",
            );
            let _ = writeln!(out, "tilewarm_redis_degraded {}", d as u8);
        }
        gauge(
            &mut out,
            "tilewarm_origin_dataset_items",
            "Items in the origin's data set.",
        );
        let _ = writeln!(out, "tilewarm_origin_dataset_items {}", g.origin_items);
        if let Some(n) = g.local_cache_items {
            gauge(
                &mut out,
                "tilewarm_local_cache_items",
                "Items held by the in-process cache tier.",
            );
            let _ = writeln!(out, "tilewarm_local_cache_items {n}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.batch_latency.observe(Duration::from_micros(50));
        m.batch_latency.observe(Duration::from_millis(3));
        m.batch_latency.observe(Duration::from_secs(10));
        m.count_request("/v1/batch", 200);
        let g = Gauges {
            tier: "local",
            warmup_queue_depth: 2,
            warmup_queue_capacity: 8,
            redis_degraded: None,
            origin_items: 5,
            local_cache_items: Some(1),
        };
        let text = m.render(&g);
        assert!(text.contains("tilewarm_batch_duration_seconds_bucket{le=\"0.0001\"} 1\n"));
        assert!(text.contains("tilewarm_batch_duration_seconds_bucket{le=\"0.005\"} 2\n"));
        assert!(text.contains("tilewarm_batch_duration_seconds_bucket{le=\"2.5\"} 2\n"));
        assert!(text.contains("tilewarm_batch_duration_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(
            text.contains("tilewarm_http_requests_total{route=\"/v1/batch\",status=\"200\"} 1\n")
        );
        assert!(text.contains("tilewarm_warmup_queue_depth 2\n"));
        assert!(!text.contains("tilewarm_redis_degraded"));
    }
}
