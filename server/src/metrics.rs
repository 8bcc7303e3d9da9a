//! `GET /metrics` through the official Prometheus client library (`prometheus-client`),
//! in the OpenMetrics text format.
//!
//! The counters the request path, warm-up, the tier, the origin and invalidation bump are
//! plain atomics where they live (lock-free, and what the tests read); at scrape time a
//! [`Collector`] reads them into the library's constant counters and gauges, so nothing here
//! writes the exposition format by hand. The HTTP request counts and the latency histogram
//! are the library's own metrics. Besides the `tilewarm_*` metrics listed in
//! `docs/server.md`, every scrape has `tilewarm_build_info{version}` and, on Linux, the
//! standard `process_*` metrics (CPU seconds, resident and virtual memory, open and maximum
//! file descriptors, threads, start time), read from `/proc` by the `procfs` crate.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::App;

/// The `Content-Type` of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of the latency histogram buckets, in seconds.
pub const LATENCY_BUCKETS_S: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The batch latency histogram (`tilewarm_batch_duration_seconds`).
#[derive(Debug, Clone)]
pub struct LatencyHistogram(Histogram);

impl Default for LatencyHistogram {
    fn default() -> LatencyHistogram {
        LatencyHistogram(Histogram::new(LATENCY_BUCKETS_S))
    }
}

impl LatencyHistogram {
    pub fn observe(&self, d: Duration) {
        self.0.observe(d.as_secs_f64());
    }
}

/// Hits and misses of one cache tier, for tile lists and for items asked for by id.
#[derive(Default, Debug)]
pub struct TierCounters {
    pub tile_hits: AtomicU64,
    pub tile_misses: AtomicU64,
    pub id_hits: AtomicU64,
    pub id_misses: AtomicU64,
}

/// The labels of `tilewarm_http_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    status: String,
}

/// The server's own counters (the origin's and invalidation's live with them).
#[derive(Default, Debug)]
pub struct Metrics {
    /// (route, status) → responses.
    requests: Family<RequestLabels, Counter>,
    pub batch_latency: LatencyHistogram,
    pub cache: TierCounters,
    /// Origin calls made to answer requests.
    pub origin_calls_request: AtomicU64,
    /// Origin calls made by warm-up workers.
    pub origin_calls_warmup: AtomicU64,
    /// Items the origin returned, over all calls.
    pub origin_items: AtomicU64,
    /// Data tiles over `--max-tile-items` at `agent`, or an upstream's answer at `agent` had
    /// no room for, asked again at a caller's tier below it (`crate::batch`).
    pub tiles_asked_at_caller_tier: AtomicU64,
    /// Requested data tiles left out at once as over `--max-tile-items` at the caller's
    /// tier, from what was found so within the tile TTL (`crate::warmup::OverLimit`): no
    /// origin call.
    pub tiles_over_limit_remembered: AtomicU64,
    pub warmup_enqueued: AtomicU64,
    pub warmup_dropped: AtomicU64,
    /// Planned warm-up tiles already in the cache tier (or being warmed), so skipped.
    pub warmup_skipped_tiles: AtomicU64,
    /// Tiles written into the cache tier by warm-up.
    pub warmup_tiles: AtomicU64,
    /// Planned warm-up tiles another instance had claimed (so this one skipped them).
    pub warmup_claimed_elsewhere: AtomicU64,
    /// Planned warm-up tiles skipped because they were found over `--max-tile-items` at
    /// `agent` within the tile TTL (`crate::warmup::OverLimit`): nothing of them could be
    /// cached, and asking is a full origin read of a dense tile.
    pub warmup_over_limit_skipped: AtomicU64,
    /// Planned warm-up tiles skipped because the origin asked for quiet (a 429 or 503,
    /// for its `Retry-After`: `OriginService::quiet_for_ms`).
    pub warmup_origin_quiet_skipped: AtomicU64,
    pub warmup_errors: AtomicU64,
    pub warmup_timeouts: AtomicU64,
    pub redis_errors: AtomicU64,
    pub redis_recoveries: AtomicU64,
    /// Times this instance took its Redis prefix over from another deployment
    /// (`--redis-take-over`, [`crate::owner`]).
    pub redis_take_overs: AtomicU64,
    /// Items a Redis write found moved: the copy it replaced lay in another data tile,
    /// whose value (and the empty blocks over it) it then unlinked, unless it wrote them
    /// itself (`RedisTier::write`).
    pub redis_moved_items: AtomicU64,
    /// Requests answered without the cache tier because it was unavailable.
    pub degraded_requests: AtomicU64,
    /// Requests refused with 503 because the cache tier was down and
    /// `--degraded-origin-calls` origin calls were in flight.
    pub degraded_refusals: AtomicU64,
    /// Origin calls that did not answer within `--origin-timeout-ms` (or what was left of
    /// the request's budget): each is a 504 for what it was asked, the whole answer or the
    /// part an answer leaves out; one request may count more than once (its calls at
    /// `agent`, at its tier, for its ids).
    pub origin_timeouts: AtomicU64,
    /// Origin calls refused because the origin was at capacity (every PostGIS connection
    /// busy for `--origin-pool-wait-ms`, an upstream's 503): each a 503 for what it was
    /// asked, the whole answer or the part an answer leaves out.
    pub origin_overloaded: AtomicU64,
    /// Connections closed because a write made no progress for `--write-timeout-ms`.
    pub write_timeouts: AtomicU64,
    /// Connections closed at accept because their address had
    /// `--max-connections-per-address` open.
    pub connections_refused: AtomicU64,
}

impl Metrics {
    pub fn count_request(&self, route: &'static str, status: u16) {
        self.requests.get_or_create(&labels(route, status)).inc();
    }

    /// Responses so far for `route` with `status`.
    pub fn requests(&self, route: &'static str, status: u16) -> u64 {
        self.requests
            .get(&labels(route, status))
            .map_or(0, |c| c.get())
    }

    /// Origin calls so far, requests and warm-up together.
    pub fn origin_calls(&self) -> u64 {
        self.origin_calls_request.load(Relaxed) + self.origin_calls_warmup.load(Relaxed)
    }
}

fn labels(route: &str, status: u16) -> RequestLabels {
    RequestLabels {
        route: route.to_owned(),
        status: status.to_string(),
    }
}

/// One scraped value: its labels and number.
type Sample = (Vec<(&'static str, String)>, u64);

/// One metric family read at scrape time.
#[derive(Debug)]
struct Read {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    samples: Vec<Sample>,
}

/// Everything read from the app's atomics and state for one scrape.
#[derive(Debug, Default)]
struct Scrape(Vec<Read>);

impl Scrape {
    fn counter(&mut self, name: &'static str, help: &'static str, v: &AtomicU64) {
        self.push(
            name,
            help,
            MetricType::Counter,
            vec![(vec![], v.load(Relaxed))],
        );
    }

    fn gauge(&mut self, name: &'static str, help: &'static str, v: u64) {
        self.push(name, help, MetricType::Gauge, vec![(vec![], v)]);
    }

    fn push(&mut self, name: &'static str, help: &'static str, kind: MetricType, s: Vec<Sample>) {
        self.0.push(Read {
            name,
            help,
            kind,
            samples: s,
        });
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for r in &self.0 {
            let mut family = encoder.encode_descriptor(r.name, r.help, None, r.kind)?;
            for (labels, v) in &r.samples {
                if r.kind == MetricType::Info {
                    family.encode_info(labels)?;
                } else if labels.is_empty() {
                    encode_value(&mut family, r.kind, *v)?;
                } else {
                    encode_value(&mut family.encode_family(labels)?, r.kind, *v)?;
                }
            }
        }
        Ok(())
    }
}

fn encode_value(e: &mut MetricEncoder, kind: MetricType, v: u64) -> Result<(), std::fmt::Error> {
    match kind {
        MetricType::Counter => e.encode_counter::<NoLabelSet, _, u64>(&v, None),
        _ => e.encode_gauge(&v),
    }
}

/// The standard process metrics of this process, read from `/proc` at scrape time.
#[derive(Debug)]
struct ProcessMetrics;

impl Collector for ProcessMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        #[cfg(target_os = "linux")]
        {
            use procfs::process::Process;
            use procfs::WithCurrentSystemInfo;
            // What cannot be read (a restricted /proc) is left out, not an error.
            let Ok(me) = Process::myself() else {
                return Ok(());
            };
            if let Ok(stat) = me.stat() {
                let tps = procfs::ticks_per_second() as f64;
                let cpu = (stat.utime + stat.stime) as f64 / tps;
                let m = encoder.encode_descriptor(
                    "process_cpu_seconds",
                    "Total user and system CPU time spent in seconds.",
                    None,
                    MetricType::Counter,
                )?;
                ConstCounter::new(cpu).encode(m)?;
                let mut gauge = |name, help, v: f64| -> Result<(), std::fmt::Error> {
                    let m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                    ConstGauge::new(v).encode(m)
                };
                gauge(
                    "process_resident_memory_bytes",
                    "Resident memory size in bytes.",
                    stat.rss_bytes().get() as f64,
                )?;
                gauge(
                    "process_virtual_memory_bytes",
                    "Virtual memory size in bytes.",
                    stat.vsize as f64,
                )?;
                gauge(
                    "process_threads",
                    "Number of OS threads in the process.",
                    stat.num_threads as f64,
                )?;
                if let Ok(boot) = procfs::boot_time_secs() {
                    gauge(
                        "process_start_time_seconds",
                        "Start time of the process since the Unix epoch in seconds.",
                        boot as f64 + stat.starttime as f64 / tps,
                    )?;
                }
            }
            if let Ok(n) = me.fd_count() {
                let m = encoder.encode_descriptor(
                    "process_open_fds",
                    "Number of open file descriptors.",
                    None,
                    MetricType::Gauge,
                )?;
                ConstGauge::new(n as i64).encode(m)?;
            }
            if let Ok(limits) = me.limits() {
                if let procfs::process::LimitValue::Value(max) = limits.max_open_files.soft_limit {
                    let m = encoder.encode_descriptor(
                        "process_max_fds",
                        "Maximum number of open file descriptors.",
                        None,
                        MetricType::Gauge,
                    )?;
                    ConstGauge::new(max as i64).encode(m)?;
                }
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = &mut encoder;
        Ok(())
    }
}

/// Reads every metric of `app` into `scrape`.
fn read_app(app: &App, s: &mut Scrape) {
    let m = &app.metrics;
    let tier = app.tier.name();
    for (name, help, tile, id) in [
        (
            "tilewarm_cache_hits",
            "Cache-tier hits by tier and kind (tile list, id).",
            &m.cache.tile_hits,
            &m.cache.id_hits,
        ),
        (
            "tilewarm_cache_misses",
            "Cache-tier misses by tier and kind (tile list, id).",
            &m.cache.tile_misses,
            &m.cache.id_misses,
        ),
    ] {
        let sample = |kind: &str, v: &AtomicU64| {
            (
                vec![("tier", tier.to_owned()), ("kind", kind.to_owned())],
                v.load(Relaxed),
            )
        };
        let samples = vec![sample("tile", tile), sample("id", id)];
        s.push(name, help, MetricType::Counter, samples);
    }
    s.push(
        "tilewarm_in_flight_limit",
        "Batch slots by route now (--in-flight-limit: adaptive or fixed).",
        MetricType::Gauge,
        vec![
            (
                vec![("route", "/v1/batch".into())],
                app.sheds.batch.limit() as u64,
            ),
            (
                vec![("route", "/v1/tiles".into())],
                app.sheds.tiles.limit() as u64,
            ),
        ],
    );
    s.gauge(
        "tilewarm_origin_waits",
        "Requests waiting for the origin without a batch slot (at most --max-origin-waits).",
        app.origin_waits.waiting() as u64,
    );
    s.push(
        "tilewarm_origin_calls",
        "Origin calls by source (request path, warm-up).",
        MetricType::Counter,
        vec![
            (
                vec![("source", "request".into())],
                m.origin_calls_request.load(Relaxed),
            ),
            (
                vec![("source", "warmup".into())],
                m.origin_calls_warmup.load(Relaxed),
            ),
        ],
    );
    s.counter(
        "tilewarm_origin_tiles_asked_at_caller_tier",
        "Data tiles over --max-tile-items at agent, or an upstream's answer at agent had no room for (response_full), asked again at the tier of a caller below it (served, and cached at that tier, when within the limit there; not the tiles an upstream is asked beside them as padding).",
        &m.tiles_asked_at_caller_tier,
    );
    s.counter(
        "tilewarm_tiles_over_limit_remembered",
        "Requested data tiles answered payload_too_large at once, with no origin call: found over --max-tile-items at the caller's tier within the tile TTL, and not invalidated since.",
        &m.tiles_over_limit_remembered,
    );
    s.gauge(
        "tilewarm_empty_alive",
        "Empty tile lists and empty blocks this instance wrote to the cache tier that are still alive (at most --max-empty-tiles).",
        app.empty_tiles.alive(crate::tier::now_ms()) as u64,
    );
    s.push(
        "tilewarm_empty_blocks",
        "Empty blocks written: coarse tiles every data tile of which an answer listed empty to public, stored as one Redis key.",
        MetricType::Counter,
        vec![(vec![], app.empty_tiles.blocks_made())],
    );
    s.push(
        "tilewarm_empty_not_stored",
        "Empty tile lists and empty blocks answered but not stored, past --max-empty-tiles: each asked of the origin again on its next request.",
        MetricType::Counter,
        vec![(vec![], app.empty_tiles.not_stored())],
    );
    s.counter(
        "tilewarm_origin_items",
        "Items returned by the origin.",
        &m.origin_items,
    );
    s.gauge(
        "tilewarm_warmup_queue_depth",
        "Warm-up jobs waiting.",
        app.warmup.depth() as u64,
    );
    s.gauge(
        "tilewarm_warmup_queue_capacity",
        "Warm-up queue capacity.",
        app.warmup.capacity() as u64,
    );
    for (name, help, v) in [
        ("tilewarm_warmup_enqueued", "Warm-up jobs queued.", &m.warmup_enqueued),
        (
            "tilewarm_warmup_dropped",
            "Warm-up jobs dropped because the queue was full.",
            &m.warmup_dropped,
        ),
        (
            "tilewarm_warmup_skipped_tiles",
            "Planned warm-up tiles already cached or in flight.",
            &m.warmup_skipped_tiles,
        ),
        (
            "tilewarm_warmup_tiles",
            "Tiles written into the cache tier by warm-up.",
            &m.warmup_tiles,
        ),
        (
            "tilewarm_warmup_claimed_elsewhere",
            "Planned warm-up tiles skipped because another instance had claimed them.",
            &m.warmup_claimed_elsewhere,
        ),
        (
            "tilewarm_warmup_over_limit_skipped",
            "Planned warm-up tiles skipped: found over --max-tile-items at agent within the tile TTL, and not invalidated since.",
            &m.warmup_over_limit_skipped,
        ),
        (
            "tilewarm_warmup_origin_quiet_skipped",
            "Planned warm-up tiles skipped: the origin answered 429 or 503 (or a partial answer shedding load, rate_limited or overloaded) within its Retry-After.",
            &m.warmup_origin_quiet_skipped,
        ),
        (
            "tilewarm_warmup_errors",
            "Warm-up jobs that failed (cache tier unavailable).",
            &m.warmup_errors,
        ),
        (
            "tilewarm_warmup_timeouts",
            "Warm-up jobs ended because the origin did not answer within --origin-timeout-ms.",
            &m.warmup_timeouts,
        ),
        (
            "tilewarm_redis_errors",
            "Redis commands that failed or timed out.",
            &m.redis_errors,
        ),
        (
            "tilewarm_redis_recoveries",
            "Times Redis came back after being marked down.",
            &m.redis_recoveries,
        ),
        (
            "tilewarm_redis_take_overs",
            "Times this instance took its --redis-prefix over from another deployment (--redis-take-over).",
            &m.redis_take_overs,
        ),
        (
            "tilewarm_redis_moved_items",
            "Items a Redis write found in another data tile than the copy it replaced (that tile's value is unlinked).",
            &m.redis_moved_items,
        ),
        (
            "tilewarm_degraded_requests",
            "Requests answered from the origin because the cache tier was unavailable.",
            &m.degraded_requests,
        ),
        (
            "tilewarm_degraded_refusals",
            "Requests refused with 503 because the cache tier was down and --degraded-origin-calls origin calls were in flight.",
            &m.degraded_refusals,
        ),
        (
            "tilewarm_write_timeouts",
            "Connections closed because a write to the client made no progress for --write-timeout-ms.",
            &m.write_timeouts,
        ),
        (
            "tilewarm_connections_refused",
            "Connections closed at accept because their address had --max-connections-per-address open.",
            &m.connections_refused,
        ),
        (
            "tilewarm_origin_timeouts",
            "Origin calls that did not answer within --origin-timeout-ms (or the request's budget left): each a 504 for what it was asked, whole or in part; a request may count more than once.",
            &m.origin_timeouts,
        ),
        (
            "tilewarm_origin_overloaded",
            "Origin calls refused because the origin was at capacity (every PostGIS connection busy for --origin-pool-wait-ms, or an upstream's 503): each a 503 for what it was asked, whole or in part.",
            &m.origin_overloaded,
        ),
    ] {
        s.counter(name, help, v);
    }
    if let Some(d) = app.tier.redis_degraded() {
        s.gauge(
            "tilewarm_redis_degraded",
            "1 while Redis is marked unavailable and requests go to the origin.",
            d as u64,
        );
        s.gauge(
            "tilewarm_redis_reads_held",
            "How many sources hold reads off Redis while a failed invalidation waits to be applied again (requests go to the origin; /healthz names them).",
            app.tier.read_holds().len() as u64,
        );
    }
    if let Some(owner) = app.tier.prefix_owner() {
        s.gauge(
            "tilewarm_redis_prefix_other_owner",
            "1 while the --redis-prefix belongs to another deployment (its owner record differs: the log says what) and requests go to the origin.",
            (owner == crate::tier::PrefixOwner::Other) as u64,
        );
    }
    s.gauge(
        "tilewarm_auth_fail_addresses",
        "Client addresses whose refused credentials are being counted (--auth-fail-max-addresses at most).",
        app.admission.auth_failures.tracked() as u64,
    );
    s.gauge(
        "tilewarm_origin_dataset_items",
        "Items in the origin's data set.",
        app.origin.dataset_items().unwrap_or(0) as u64,
    );
    if let Some(n) = app.tier.local_len() {
        s.gauge(
            "tilewarm_local_cache_items",
            "Items held by the in-process cache tier.",
            n as u64,
        );
    }

    let o = &app.origin.stats;
    for (name, help, v) in [
        (
            "tilewarm_origin_failures",
            ORIGIN_FAILURES_HELP,
            &o.failures,
        ),
        (
            "tilewarm_origin_call_timeouts",
            "Origin calls (request path, warm-up and counts) given up after --origin-timeout-ms or a statement timeout.",
            &o.timeouts,
        ),
        (
            "tilewarm_origin_leaked_items",
            "Items above the asked tier that the origin answered and the tier guard dropped.",
            &o.leaked_items,
        ),
        (
            "tilewarm_origin_incomplete_answers",
            "Origin answers refused because they left out a requested tile or id.",
            &o.incomplete_answers,
        ),
        (
            "tilewarm_origin_misplaced_items",
            "Tile list entries the origin answered for items outside the tile, dropped by the shape guard.",
            &o.misplaced_items,
        ),
        (
            "tilewarm_origin_bad_rows",
            "Database rows skipped as unusable (id, coordinates, class or tier), and answered items no client can read, dropped by the guard.",
            &o.bad_rows,
        ),
        (
            "tilewarm_origin_count_queries",
            "Queries made to bound the size of coarse tiles before answering them.",
            &o.count_queries,
        ),
        (
            "tilewarm_origin_over_bound",
            "Origin fetches refused because their coarse tiles held more than --max-response-items (more than the count before them found).",
            &o.over_bound,
        ),
        (
            "tilewarm_origin_tiles_over_limit",
            "Tiles left out of origin answers (unanswered, not cached) because they held more than --max-tile-items items.",
            &o.tiles_over_limit,
        ),
        (
            "tilewarm_origin_items_too_large",
            "Items left out of origin answers (not cached or served) because their data was larger than --max-item-data-bytes.",
            &o.items_too_large,
        ),
    ] {
        s.counter(name, help, v);
    }
    s.push(
        "tilewarm_origin",
        "The origin backend.",
        MetricType::Info,
        vec![(vec![("kind", app.origin.kind().to_owned())], 1)],
    );
    if let Some(feed) = app.origin.change_feed() {
        let c = &feed.stats;
        s.gauge(
            "tilewarm_changes_connected",
            "1 while the change feed's LISTEN connection is up.",
            c.connected.load(Relaxed) as u64,
        );
        for (name, help, v) in [
            (
                "tilewarm_changes_connects",
                "LISTEN connections made (each one invalidates the whole tier).",
                &c.connects,
            ),
            (
                "tilewarm_changes_notifications",
                "Change notifications received.",
                &c.notifications,
            ),
            (
                "tilewarm_changes_bad_payloads",
                "Notifications that could not be read (handled as invalidate-all).",
                &c.bad_payloads,
            ),
            (
                "tilewarm_changes_slow_checks",
                "Checks of the LISTEN connection unanswered after 2 s (logged; the connection is kept until 15 s without an answer, then replaced).",
                &c.slow_checks,
            ),
            (
                "tilewarm_changes_queue_overflows",
                "Times more changes waited than --change-queue-max and they were collapsed into one invalidate-all.",
                &c.queue_overflows,
            ),
            (
                "tilewarm_changes_unpublished",
                "Database changes applied to the cache tier that the change stream did not take, retries included (owed to its followers as one invalidate-all).",
                &*c.unpublished,
            ),
        ] {
            s.counter(name, help, v);
        }
    }
    if let Some((tiles, ids)) = app.origin.upstream_part_limits() {
        let n = |v: Option<usize>| v.map_or(0, |n| n as u64);
        s.push(
            "tilewarm_upstream_part_limit",
            "The most tiles or ids asked of the upstream in one call as found from its 400s (kept 10 minutes from when found); 0 while none is found (then 64 tiles, the protocol's, and all of a request's ids).",
            MetricType::Gauge,
            vec![
                (vec![("part", "tiles".into())], n(tiles)),
                (vec![("part", "ids".into())], n(ids)),
            ],
        );
    }
    if let Some(feed) = app.origin.upstream_feed() {
        let c = &feed.stats;
        let state = c.state();
        s.gauge(
            "tilewarm_upstream_changes_connected",
            "1 while the upstream's change feed is followed (its stream is in place).",
            (state == crate::origin::upstream_changes::FeedState::Connected) as u64,
        );
        s.gauge(
            "tilewarm_upstream_changes_unavailable",
            "1 while the upstream serves no change feed to this server (it answered 404, 401 or 403, or not an event stream); retried slowly.",
            state.unavailable() as u64,
        );
        for (name, help, v) in [
            (
                "tilewarm_upstream_changes_events",
                "Invalidations from the upstream's change feed applied here.",
                &c.events,
            ),
            (
                "tilewarm_upstream_changes_resets",
                "Invalidate-alls because of the upstream's feed: its reset events, and connects that could not resume.",
                &c.resets,
            ),
            (
                "tilewarm_upstream_changes_connects",
                "Times the upstream's change feed came up.",
                &c.connects,
            ),
            (
                "tilewarm_upstream_changes_reconnects",
                "Connection attempts to the upstream's change feed after a lost or failed one.",
                &c.reconnects,
            ),
            (
                "tilewarm_upstream_changes_resumes",
                "Reconnects to the upstream's change feed that resumed with Last-Event-ID.",
                &c.resumes,
            ),
            (
                "tilewarm_upstream_changes_bad_events",
                "Events of the upstream's change feed that could not be read (applied as invalidate-all).",
                &c.bad_events,
            ),
            (
                "tilewarm_upstream_changes_unpublished",
                "Upstream invalidations applied here that this server's change stream did not take, retries included (owed to its followers as one invalidate-all).",
                &*c.unpublished,
            ),
        ] {
            s.counter(name, help, v);
        }
    }
    if let Some(keys) = app.auth.remote_keys() {
        let h = keys.health();
        s.gauge(
            "tilewarm_jwks_usable",
            "1 while the --jwks URL's key set verifies tokens (0: past its max age plus an hour of failed fetches; tokens are answered 502).",
            (h.state != crate::jwks::KeysState::Unavailable) as u64,
        );
        s.gauge(
            "tilewarm_jwks_age_seconds",
            "Seconds since the --jwks URL's key set in use was fetched.",
            h.age_s,
        );
        s.push(
            "tilewarm_jwks_fetches",
            "Fetches of the --jwks URL's key set after startup, by result.",
            MetricType::Counter,
            vec![
                (vec![("result", "ok".into())], h.fetched),
                (vec![("result", "failed".into())], h.failed),
            ],
        );
    }
    let c = &app.changes.stats;
    if app.changes.is_redis() {
        s.gauge(
            "tilewarm_change_stream_reading",
            "1 while this instance's reader of the change stream reads it; while 0 no other instance's change reaches this one, nor its followers.",
            c.reading.load(Relaxed) as u64,
        );
    }
    s.gauge(
        "tilewarm_change_stream_subscribers",
        "Open GET /v1/changes streams.",
        c.subscribers.load(Relaxed),
    );
    for (name, help, v) in [
        (
            "tilewarm_change_stream_published",
            "Entries this instance put on the change stream.",
            &c.published,
        ),
        (
            "tilewarm_change_stream_applied_remote",
            "Entries of other instances this instance's reader applied to its tier (counted once applied; one whose apply failed counts in tilewarm_change_stream_apply_failures_total, and here once applied again).",
            &c.applied_remote,
        ),
        (
            "tilewarm_change_stream_resets",
            "Times this instance's reader found entries lost before it read them and invalidated everything.",
            &c.resets,
        ),
        (
            "tilewarm_change_stream_bad_entries",
            "Stream entries whose id or body could not be read (each handled as invalidate-all and a reset).",
            &c.bad_entries,
        ),
        (
            "tilewarm_change_stream_apply_failures",
            "Entries of other instances this instance failed to apply to its tier (applied again once it answers).",
            &c.apply_failures,
        ),
    ] {
        s.counter(name, help, v);
    }
    let i = &app.invalidation.stats;
    for (name, help, v) in [
        (
            "tilewarm_invalidations",
            "Invalidations applied to the cache tier.",
            &i.applied,
        ),
        (
            "tilewarm_invalidations_all",
            "Invalidations that covered everything.",
            &i.all,
        ),
        (
            "tilewarm_invalidation_errors",
            "Invalidations the cache tier could not apply.",
            &i.errors,
        ),
        (
            "tilewarm_invalidation_writes_dropped",
            "Write-back entries dropped because they changed while being fetched.",
            &i.writes_dropped,
        ),
    ] {
        s.counter(name, help, v);
    }
}

/// A registry with the library-kept metrics of `metrics`, the build info and the process
/// metrics; `scrape` adds what is read at scrape time.
fn registry(metrics: &Metrics, scrape: Scrape) -> Registry {
    let mut r = Registry::default();
    r.register(
        "tilewarm_http_requests",
        "HTTP responses by route and status",
        metrics.requests.clone(),
    );
    r.register(
        "tilewarm_batch_duration_seconds",
        "Time to answer POST /v1/batch, body read to response built",
        metrics.batch_latency.0.clone(),
    );
    r.register(
        "tilewarm_build",
        "The server's build",
        Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
    );
    r.register_collector(Box::new(scrape));
    r.register_collector(Box::new(ProcessMetrics));
    r
}

/// The help of `tilewarm_origin_failures_total`: every origin call (request path and
/// warm-up) that gave no answer, but for a timeout (`tilewarm_origin_call_timeouts_total`)
/// and an answer over its bound (`tilewarm_origin_over_bound_total`); see
/// [`crate::origin::OriginService`]'s `fetch_bounded`.
pub const ORIGIN_FAILURES_HELP: &str = "Origin calls (request path and warm-up) that gave no answer other than by timing out or going over a bound: the backend failed (502), an upstream refused the request (400, 413) or asked to slow down (429), or the origin was at capacity (503: every PostGIS connection busy for --origin-pool-wait-ms, or an upstream's 503; these are in tilewarm_origin_overloaded_total too).";

/// `GET /metrics`: every metric of `app` as OpenMetrics text ([`CONTENT_TYPE`]).
pub fn render(app: &App) -> String {
    let mut scrape = Scrape::default();
    read_app(app, &mut scrape);
    encode(&registry(&app.metrics, scrape))
}

fn encode(registry: &Registry) -> String {
    let mut out = String::with_capacity(8192);
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_names_as_before() {
        let m = Metrics::default();
        m.batch_latency.observe(Duration::from_micros(50));
        m.batch_latency.observe(Duration::from_millis(3));
        m.batch_latency.observe(Duration::from_secs(10));
        m.count_request("/v1/batch", 200);
        assert_eq!(m.requests("/v1/batch", 200), 1);
        assert_eq!(m.requests("/v1/batch", 500), 0);
        let mut s = Scrape::default();
        s.gauge("tilewarm_warmup_queue_depth", "Warm-up jobs waiting.", 2);
        s.counter(
            "tilewarm_warmup_dropped",
            "Warm-up jobs dropped.",
            &AtomicU64::new(3),
        );
        s.push(
            "tilewarm_origin",
            "The origin backend.",
            MetricType::Info,
            vec![(vec![("kind", "memory".into())], 1)],
        );
        let text = encode(&registry(&m, s));
        for line in [
            "tilewarm_batch_duration_seconds_bucket{le=\"0.0001\"} 1\n",
            "tilewarm_batch_duration_seconds_bucket{le=\"0.005\"} 2\n",
            "tilewarm_batch_duration_seconds_bucket{le=\"2.5\"} 2\n",
            "tilewarm_batch_duration_seconds_bucket{le=\"+Inf\"} 3\n",
            "tilewarm_batch_duration_seconds_count 3\n",
            "tilewarm_http_requests_total{route=\"/v1/batch\",status=\"200\"} 1\n",
            "tilewarm_warmup_queue_depth 2\n",
            "tilewarm_warmup_dropped_total 3\n",
            "tilewarm_origin_info{kind=\"memory\"} 1\n",
            "tilewarm_build_info{version=\"",
            "# EOF\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        #[cfg(target_os = "linux")]
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_start_time_seconds ",
        ] {
            assert!(text.contains(name), "missing {name:?} in\n{text}");
        }
    }
}
