//! `tilewarm-server`: the reference backend for the tilewarm batch protocol.
//!
//! A request goes: HTTP ([`http`]) → decode with the core's bounded decoder → [`batch`]:
//! the cache tier ([`tier`]: the core `ItemCache` in-process, or Redis shared by several
//! instances) → one call to the [`origin`] for every miss → write-back → per-caller filter →
//! JSON. After answering, [`warmup`] plans the neighbour ring with the core and warms it in
//! the background through a bounded queue. [`metrics`] exports Prometheus text.
//!
//! See `docs/server.md` for the design (keys, degraded mode, limits) and
//! `docs/openapi.yaml` for the protocol.

pub mod adaptive;
pub mod admission;
pub mod auth;
pub mod backoff;
pub mod batch;
pub mod client_addr;
pub mod config;
pub mod empty_tiles;
pub mod http;
pub mod invalidate;
pub mod jwks;
pub mod loadgen;
pub mod metrics;
pub mod origin;
pub mod owner;
pub mod redis_conn;
pub mod single_flight;
pub mod sse;
pub mod stored;
pub mod stream;
pub mod tier;
pub mod tiles;
pub mod warmup;
pub mod write_timeout;

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tilewarm::cache::CacheConfig;
use tilewarm::protocol::Limits;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

pub use config::Config;

use metrics::Metrics;
use origin::OriginService;
use tier::{CacheTier, LocalTier, RedisTier};
use warmup::Warmup;

/// Everything a request needs.
pub struct App {
    pub config: Config,
    pub limits: Limits,
    pub cache_config: CacheConfig,
    pub tile_ttl_ms: u64,
    pub origin: OriginService,
    pub tier: CacheTier,
    pub metrics: Arc<Metrics>,
    pub warmup: Warmup,
    /// The invalidation log and counters ([`invalidate`]).
    pub invalidation: invalidate::Invalidations,
    /// Who is calling: verifies bearer tokens ([`auth`]).
    pub auth: auth::Verifier,
    /// Per-caller limits and the body timeout ([`admission`]).
    pub admission: admission::Admission,
    /// The change stream: invalidations for the other instances and `GET /v1/changes`
    /// ([`stream`]).
    pub changes: Arc<stream::ChangeStream>,
    /// Data tiles being fetched from the origin, shared by concurrent requests
    /// ([`single_flight`]).
    pub single_flight: single_flight::SingleFlight,
    /// Origin calls allowed at once while the cache tier is down (`--degraded-origin-calls`).
    pub degraded_calls: tokio::sync::Semaphore,
    /// Requests waiting for the origin without a batch slot (`--max-origin-waits`).
    pub origin_waits: admission::OriginWaits,
    /// The batch slots of `POST /v1/batch` and of `GET /v1/tiles` ([`admission::Shed`]).
    pub sheds: Sheds,
    /// The short TTL and cap of empty tile lists in the tier ([`empty_tiles`]).
    pub empty_tiles: empty_tiles::EmptyTiles,
    /// `--bounds` as the `x-tilewarm-bounds` header value every answer with data carries
    /// ([`http::data_headers`]), written once.
    pub bounds_header: Option<axum::http::HeaderValue>,
    /// The `Arc` this app lives in, for a path that has only `&App` and must spawn a task
    /// holding it (a write-back's failed re-invalidation: [`invalidate::write_back`]).
    this: std::sync::Weak<App>,
}

/// Each admitted route's own bound ([`admission::Shed`]).
pub struct Sheds {
    pub batch: Arc<admission::Shed>,
    pub tiles: Arc<admission::Shed>,
}

/// Starting failed; the message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] config::ConfigError),
    #[error("{0}")]
    Load(#[from] origin::LoadError),
    #[error("--redis: {0}")]
    Redis(String),
    /// `flag` is `--listen` or `--metrics-listen`.
    #[error("{flag} {addr}: cannot listen there: {source}")]
    Listen {
        flag: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

/// A running server.
pub struct Server {
    /// The bound address (the real port when `--listen` had port 0).
    pub addr: SocketAddr,
    /// The bound `--metrics-listen` address, when given.
    pub metrics_addr: Option<SocketAddr>,
    pub app: Arc<App>,
    shutdown: Option<watch::Sender<bool>>,
    task: JoinHandle<()>,
}

impl Server {
    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, finishes in-flight requests, and returns when done.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(true);
        }
        // Feed streams never end by themselves: end them so connections can close.
        self.app.changes.close();
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.task).await;
    }

    /// Waits until the server stops (it stops on [`shutdown`](Self::shutdown)).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// Builds the app: loads the data set, sets up the cache tier and the warm-up workers.
/// Needs a Tokio runtime.
pub async fn build(config: Config) -> Result<Arc<App>, StartError> {
    build_app(config, None).await
}

/// [`build`] over a backend of the embedder's own instead of the one `--origin` names (the
/// tests use it for origins that change at chosen moments). `stats` are the counters the
/// backend shares with the service ([`origin::OriginService::with_backend`]).
pub async fn build_with_origin(
    config: Config,
    backend: Box<dyn origin::OriginBackend>,
    stats: Arc<origin::OriginStats>,
) -> Result<Arc<App>, StartError> {
    build_app(config, Some((backend, stats))).await
}

async fn build_app(
    config: Config,
    backend: Option<(Box<dyn origin::OriginBackend>, Arc<origin::OriginStats>)>,
) -> Result<Arc<App>, StartError> {
    config.validate()?;
    let jwks = match &config.jwks {
        Some(spec) => Some(auth::read_jwks(spec).await.map_err(StartError::Other)?),
        None => None,
    };
    let verifier =
        auth::Verifier::from_config(&config, jwks.as_deref()).map_err(StartError::Other)?;
    if verifier.verifies_tokens() || config.trust_tier_header.is_some() {
        info!(auth = %verifier.describe(), "callers");
    } else {
        tracing::warn!(auth = %verifier.describe(), "callers");
    }
    if !config.trusted_proxies.is_empty() {
        let ranges: Vec<String> = config
            .trusted_proxies
            .iter()
            .map(|t| t.to_string())
            .collect();
        let header = config.trusted_proxy_header.name();
        info!(ranges = %ranges.join(","), header, "the client address is read from this header of these peers (--trusted-proxy)");
        if config.trusted_proxies.iter().any(|t| t.is_everything()) {
            tracing::warn!(header, "--trusted-proxy trusts every peer: any client can choose its address with this header");
        }
    }
    if config.dev_tokens {
        tracing::warn!("--dev-tokens: POST /dev/token issues tokens for any tier to loopback callers; development only");
    }
    let metrics = Arc::new(Metrics::default());
    let cache_config = config.cache_config();
    // Whose keys this deployment's are under `--redis-prefix` (the tier's owner record and
    // the change stream's tag): worked out once (it may read `--origin-config`).
    let fingerprint = owner::Fingerprint::of(&config);
    let tier = match &config.redis {
        Some(spec) => {
            let target = redis_conn::RedisTarget::parse(spec).map_err(StartError::Redis)?;
            let r = RedisTier::new(
                &target,
                config.redis_prefix.clone(),
                Duration::from_millis(config.redis_timeout_ms),
                config.redis_read_from_replicas,
                Arc::clone(&metrics),
            )
            .map_err(|e| StartError::Redis(e.to_string()))?
            .with_block_levels(config.split_levels)
            .with_data_zoom(config.data_zoom)
            .with_owner(fingerprint.clone(), config.redis_take_over);
            let r = Arc::new(r);
            if r.probe().await {
                // The URL may hold a password: never log it as given.
                info!(url = %target.describe(), "cache tier: redis");
            }
            tokio::spawn(RedisTier::watch(Arc::downgrade(&r)));
            CacheTier::Redis(r)
        }
        None => {
            info!(
                items = config.cache_items,
                mib = config.cache_mib,
                "cache tier: in-process"
            );
            CacheTier::Local(Box::new(
                LocalTier::new(cache_config.clone())
                    .map_err(|e| StartError::Other(format!("cache flags: {e}")))?,
            ))
        }
    };
    if config.postgis_load {
        if let Some(url) = config.origin.as_deref() {
            let n = origin::postgis::load_from_config(url, &config).await?;
            info!(
                rows = n,
                "--postgis-load: data set written to the PostGIS table"
            );
        }
    }
    let changes = match &config.redis {
        Some(spec) => stream::ChangeStream::redis(
            &redis_conn::RedisTarget::parse(spec).map_err(StartError::Redis)?,
            &config.redis_prefix,
            Duration::from_millis(config.redis_timeout_ms),
            config.changes_retention,
            config.changes_max_subscribers,
        )
        .map_err(|e| StartError::Redis(e.to_string()))?
        .with_owner_tag(fingerprint.stream_tag()),
        None => {
            stream::ChangeStream::local(config.changes_retention, config.changes_max_subscribers)
        }
    };
    let origin = match backend {
        Some((backend, stats)) => {
            OriginService::with_backend(backend, &config, Arc::clone(&metrics), stats)
        }
        None => OriginService::open(&config, Arc::clone(&metrics)).await?,
    };
    info!(origin = %origin.describe(), "origin ready");
    let (warmup, rx) = Warmup::new(
        config.warmup_ring,
        config.warmup_queue,
        config.warmup_max_tiles,
        Arc::clone(&metrics),
    );
    // Empty blocks for Redis only (`empty_tiles`' module docs).
    let block_levels = match tier {
        CacheTier::Redis(_) => config.split_levels,
        CacheTier::Local(_) => 0,
    };
    let app = Arc::new_cyclic(|this| App {
        this: this.clone(),
        limits: config.limits(),
        tile_ttl_ms: config.tile_ttl_s * 1000,
        cache_config,
        origin,
        tier,
        metrics,
        warmup,
        invalidation: invalidate::Invalidations::default(),
        auth: verifier,
        admission: admission::Admission::new(
            config.caller_rate,
            config.caller_burst,
            config.retry_after_s,
            Duration::from_millis(config.body_timeout_ms),
        )
        .with_auth_failures(
            config.auth_fail_rate,
            config.auth_fail_burst,
            config.auth_fail_max_addresses,
        )
        .with_invalidate_limit(config.invalidate_rate, config.invalidate_burst),
        changes: Arc::new(changes),
        single_flight: single_flight::SingleFlight::default(),
        degraded_calls: tokio::sync::Semaphore::new(config.degraded_origin_calls),
        origin_waits: admission::OriginWaits::new(config.max_origin_waits),
        sheds: Sheds {
            batch: Arc::new(config.shed()),
            tiles: Arc::new(config.shed()),
        },
        empty_tiles: empty_tiles::EmptyTiles::with_blocks(
            config.empty_tile_ttl_s.min(config.tile_ttl_s) * 1000,
            config.max_empty_tiles,
            block_levels,
        ),
        bounds_header: config.bounds.and_then(|b| {
            let text = format!("{},{},{},{}", b.west, b.south, b.east, b.north);
            axum::http::HeaderValue::from_str(&text).ok()
        }),
        config,
    });
    if app.changes.is_redis() {
        let from = app.changes.reader_start().await;
        stream::spawn_reader(Arc::downgrade(&app), from);
    }
    if let Some(feed) = app.origin.change_feed() {
        origin::changes::spawn(Arc::downgrade(&app), feed);
    }
    if let Some(feed) = app.origin.upstream_feed() {
        info!(url = %feed.url(), "following the upstream's change feed");
        origin::upstream_changes::spawn(Arc::downgrade(&app), feed);
    }
    if let Some(rx) = rx {
        warmup::run_workers(Arc::downgrade(&app), rx, app.config.warmup_workers);
    }
    if app.config.fault_origin_stall_ms > 0 {
        stall_on_sigusr1(Arc::downgrade(&app))?;
    }
    Ok(app)
}

/// The soak test's fault hook: each SIGUSR1 toggles `--fault-origin-stall-ms` of extra
/// latency on every origin call. Ends with the app.
#[cfg(unix)]
fn stall_on_sigusr1(app: std::sync::Weak<App>) -> Result<(), StartError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut usr1 = signal(SignalKind::user_defined1()).map_err(|e| {
        StartError::Other(format!("--fault-origin-stall-ms: no SIGUSR1 handler: {e}"))
    })?;
    tokio::spawn(async move {
        while usr1.recv().await.is_some() {
            let Some(app) = app.upgrade() else { break };
            let ms = if app.origin.stall_ms() == 0 {
                app.config.fault_origin_stall_ms
            } else {
                0
            };
            app.origin.set_stall_ms(ms);
            tracing::warn!(stall_ms = ms, "fault hook: origin stall toggled");
        }
    });
    Ok(())
}

#[cfg(not(unix))]
fn stall_on_sigusr1(_app: std::sync::Weak<App>) -> Result<(), StartError> {
    Err(StartError::Other(
        "--fault-origin-stall-ms needs Unix signals".into(),
    ))
}

/// Builds the app and serves it on `config.listen` until [`Server::shutdown`].
pub async fn start(config: Config) -> Result<Server, StartError> {
    serve(build(config).await?).await
}

/// [`start`] over a backend of the embedder's own ([`build_with_origin`]).
pub async fn start_with_origin(
    config: Config,
    backend: Box<dyn origin::OriginBackend>,
    stats: Arc<origin::OriginStats>,
) -> Result<Server, StartError> {
    serve(build_with_origin(config, backend, stats).await?).await
}

/// Serves a built app on its `--listen` address until [`Server::shutdown`].
async fn serve(app: Arc<App>) -> Result<Server, StartError> {
    let addr = app.config.listen;
    let router = http::router(Arc::clone(&app)).map_err(StartError::Other)?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen {
            flag: "--listen",
            addr,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen {
        flag: "--listen",
        addr,
        source,
    })?;
    let (tx, rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let mut metrics_addr = None;
    let metrics_task = match app.config.metrics_listen {
        Some(maddr) => {
            let ml = TcpListener::bind(maddr)
                .await
                .map_err(|source| StartError::Listen {
                    flag: "--metrics-listen",
                    addr: maddr,
                    source,
                })?;
            let bound = ml.local_addr().map_err(|source| StartError::Listen {
                flag: "--metrics-listen",
                addr: maddr,
                source,
            })?;
            metrics_addr = Some(bound);
            info!(addr = %bound, "metrics listening");
            let mrouter = http::metrics_router(Arc::clone(&app));
            let rx = rx.clone();
            Some(tokio::spawn(async move {
                let serve = axum::serve(ml, mrouter).with_graceful_shutdown(stopped(rx));
                if let Err(e) = serve.await {
                    tracing::error!(error = %e, "metrics listener stopped with an error");
                }
            }))
        }
        None => None,
    };
    let limits = ConnLimits {
        max: app.config.max_connections,
        per_address: (app.config.max_connections_per_address > 0)
            .then(|| admission::ConnsPerAddress::new(app.config.max_connections_per_address)),
        trusted: app.config.trusted_proxies.clone(),
        header_timeout: Duration::from_millis(app.config.header_timeout_ms),
        write_timeout: Duration::from_millis(app.config.write_timeout_ms),
        metrics: Arc::clone(&app.metrics),
    };
    let task = tokio::spawn(async move {
        serve_api(listener, router, rx, limits).await;
        if let Some(t) = metrics_task {
            let _ = t.await;
        }
    });
    info!(%addr, "listening");
    Ok(Server {
        addr,
        metrics_addr,
        app,
        shutdown: Some(tx),
        task,
    })
}

/// The connections' bounds and timers.
struct ConnLimits {
    /// `--max-connections`.
    max: usize,
    /// `--max-connections-per-address` (`None`: 0, no cap), not applied to `trusted`.
    per_address: Option<admission::ConnsPerAddress>,
    /// `--trusted-proxy`.
    trusted: Vec<client_addr::TrustedProxy>,
    /// hyper's header read timeout (`--header-timeout-ms`).
    header_timeout: Duration,
    /// The deadline on writes that make no progress (`--write-timeout-ms`,
    /// [`write_timeout`]).
    write_timeout: Duration,
    metrics: Arc<Metrics>,
}

/// Whether a connection ended because [`write_timeout::WriteTimeout`] failed a write.
fn is_write_timeout(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        source = s.source();
    }
    false
}

/// The API's accept loop: at most `--max-connections` connections at once (the next accept
/// waits for one to close) and, when capped, `--max-connections-per-address` from one peer
/// address outside the trusted proxies (one more is closed at once), each HTTP/1 with
/// hyper's header read timeout (axum's `serve` sets no timer, so it has none) over a socket
/// whose stalled writes fail ([`write_timeout::WriteTimeout`]: hyper has no write timeout,
/// and a client that never reads its answers would otherwise hold its slot forever). On
/// `stop`: no more accepts, every connection finishes its request in flight, and this
/// returns when all are closed.
async fn serve_api(
    listener: TcpListener,
    router: axum::Router,
    stop: watch::Receiver<bool>,
    limits: ConnLimits,
) {
    use axum::extract::ConnectInfo;
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tokio::sync::Semaphore;
    use tower::ServiceExt;

    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let max_conns = limits.max;
    let slots = Arc::new(Semaphore::new(max_conns));
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stopped(stop.clone()) => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(stop.clone()) => break,
        };
        let address_slot = match &limits.per_address {
            Some(cap) if !client_addr::is_trusted(&limits.trusted, peer.ip()) => {
                match cap.enter(peer.ip()) {
                    Some(slot) => Some(slot),
                    None => {
                        // Closed unread: nothing of the request is worth its cost.
                        limits.metrics.connections_refused.fetch_add(1, Relaxed);
                        drop(stream);
                        continue;
                    }
                }
            }
            _ => None,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        // The peer address, from which `client_addr::layer` finds the client's address.
        let service =
            hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let mut req = req.map(axum::body::Body::new);
                req.extensions_mut().insert(ConnectInfo(peer));
                router.clone().oneshot(req)
            });
        let stop = stop.clone();
        let (header_timeout, write_timeout) = (limits.header_timeout, limits.write_timeout);
        let metrics = Arc::clone(&limits.metrics);
        tokio::spawn(async move {
            let _permit = permit;
            let _address_slot = address_slot;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let io = write_timeout::WriteTimeout::new(stream, write_timeout);
            let conn = builder.serve_connection(TokioIo::new(io), service);
            tokio::pin!(conn);
            let ended = tokio::select! {
                r = conn.as_mut() => r,
                _ = stopped(stop) => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if ended.is_err_and(|e| is_write_timeout(&e)) {
                metrics.write_timeouts.fetch_add(1, Relaxed);
            }
        });
    }
    // Every connection gives its slot back when it closes.
    let _ = slots
        .acquire_many(max_conns.try_into().unwrap_or(u32::MAX))
        .await;
}
