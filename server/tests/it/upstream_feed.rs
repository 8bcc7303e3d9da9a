//! A server chained to another tilewarm-server follows the upstream's change feed
//! (`server/src/origin/upstream_changes.rs`): an invalidation made upstream is applied in
//! the downstream's tier and told to the downstream's own followers; a dropped or silent
//! connection resumes with `Last-Event-ID`, an upstream that cannot resume it (restarted)
//! resets it; an upstream without a feed is logged and shown, and the downstream serves on.
//! Both servers run in this process; a loopback proxy between them can cut or freeze the
//! feed's connection.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tilewarm::access::Access;
use tilewarm::dataset::synthetic_city;
use tilewarm::origin::Origin;
use tilewarm::protocol::{BatchRequest, BatchResponse, RawData};
use tilewarm_server::origin::upstream_changes::FeedState;
use tilewarm_server::origin::{OriginFailure, OriginFuture};
use tilewarm_server::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::{config, eventually, now_s, server, sign_hs256, token_for, Config, Http};
use crate::feed::Feed;
use crate::{request, scripted, Scripted};

// ---------------------------------------------------------------------------------------
// An upstream whose data can change: the synthetic city, with one item's data a version.
// ---------------------------------------------------------------------------------------

const N: usize = 2_000;

struct Versioned {
    current: Mutex<Arc<Origin<RawData>>>,
}

/// The city with the first item's data `{"v":version}`; that item's id.
fn city(version: u32) -> (Origin<RawData>, String) {
    let mut items = synthetic_city(42, N);
    items[0].data =
        serde_json::value::RawValue::from_string(format!("{{\"v\":{version}}}")).unwrap();
    let id = items[0].id.clone();
    (Origin::new(items).unwrap(), id)
}

impl Versioned {
    fn set(&self, version: u32) {
        *self.current.lock().unwrap() = Arc::new(city(version).0);
    }
}

struct Shared(Arc<Versioned>);

impl Scripted for Shared {
    const KIND: &'static str = "memory";

    fn answer<'a>(
        &'a self,
        request: &'a BatchRequest,
    ) -> OriginFuture<'a, Result<BatchResponse<RawData>, OriginFailure>> {
        let o = Arc::clone(&self.0.current.lock().unwrap());
        Box::pin(async move { Ok(o.answer(request, Some(60))) })
    }

    fn describe(&self) -> String {
        "a city whose first item changes".into()
    }
}

/// The upstream: the city at version 1, on `listen`.
async fn upstream(listen: &str) -> (Server, Arc<Versioned>, String) {
    let (o, id) = city(1);
    let data = Arc::new(Versioned {
        current: Mutex::new(Arc::new(o)),
    });
    let c = Config {
        listen: listen.parse().unwrap(),
        warmup_ring: 0,
        ..config()
    };
    (scripted(c, Shared(Arc::clone(&data))).await, data, id)
}

/// A file holding `token`, removed with the test's directory.
fn token_file(name: &str, token: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tw-feed-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("token");
    std::fs::write(&f, token).unwrap();
    f
}

/// The downstream: `--origin <up>/v1/batch` with an agent token, and `more` on top.
pub(crate) async fn downstream(
    up: &str,
    name: &str,
    more: impl FnOnce(Config) -> Config,
) -> Server {
    server(more(Config {
        origin: Some(format!("{up}/v1/batch")),
        origin_token_file: Some(token_file(name, &token_for(Access::Agent))),
        warmup_ring: 0,
        ..config()
    }))
    .await
}

fn admin_token() -> String {
    sign_hs256(&serde_json::json!({
        "sub": "ops",
        "exp": now_s() + 3600,
        "tilewarm_access": "agent",
        "tilewarm_admin": true,
    }))
}

/// `POST /v1/invalidate` on `s` with `body`; the stream id it answers.
async fn invalidate(s: &Server, body: &str) -> String {
    let r = Http::with_token(Some(admin_token()))
        .send(
            "POST",
            &format!("{}/v1/invalidate", s.url()),
            &[("content-type", "application/json")],
            body.to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["id"].as_str().unwrap().to_owned()
}

/// The version `s` serves for item `id` (agent).
async fn version(http: &Http, s: &Server, id: &str) -> u64 {
    let r = http.ok(s, &request(&[], &[id], Access::Agent)).await;
    let item = r.items.iter().find(|i| i.id == id).expect("the item");
    let v: serde_json::Value = serde_json::from_str(item.data.get()).unwrap();
    v["v"].as_u64().unwrap()
}

/// Asks `s` for `id` until it serves `want` (at most `within`).
async fn serves(http: &Http, s: &Server, id: &str, want: u64, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        // A pooled connection to an upstream that restarted may fail one call: not yet.
        let r = http.batch(s, &request(&[], &[id], Access::Agent)).await;
        if r.status == 200 {
            let r = tilewarm::protocol::decode_response(&r.body, &Default::default()).unwrap();
            let item = r.items.iter().find(|i| i.id == id).expect("the item");
            let v: serde_json::Value = serde_json::from_str(item.data.get()).unwrap();
            if v["v"].as_u64() == Some(want) {
                return true;
            }
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn state(s: &Server) -> FeedState {
    s.app.origin.upstream_feed().expect("a feed").stats.state()
}

/// Waits until `s` follows its upstream's feed, its first `ready` applied (its tier
/// invalidated): what it caches from now on stays.
pub(crate) async fn connected(s: &Server) {
    assert!(
        eventually(Duration::from_secs(10), || state(s) == FeedState::Connected).await,
        "the downstream never followed the upstream's feed: {:?}",
        state(s)
    );
}

fn stat(
    s: &Server,
    f: impl Fn(&tilewarm_server::origin::upstream_changes::UpstreamFeedStats) -> &AtomicU64,
) -> u64 {
    f(&s.app.origin.upstream_feed().unwrap().stats).load(Relaxed)
}

/// A follower of `s`'s own feed at the top tier, past its `ready`.
async fn follow(s: &Server) -> Feed {
    let mut f = Feed::open(s, Some(&token_for(Access::Agent)), None).await;
    assert_eq!(f.next().await.event, "ready");
    f
}

// ---------------------------------------------------------------------------------------
// A loopback TCP proxy that can cut its connections or freeze them (silent, left open).
// ---------------------------------------------------------------------------------------

struct Proxy {
    url: String,
    /// Connections opened before this generation are cut (`cut`) or silent (`freeze`).
    cut_before: Arc<AtomicUsize>,
    frozen_before: Arc<AtomicUsize>,
    generation: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
}

impl Proxy {
    async fn start(to: std::net::SocketAddr) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let p = Proxy {
            url,
            cut_before: Arc::default(),
            frozen_before: Arc::default(),
            generation: Arc::default(),
            accepted: Arc::default(),
        };
        let (cut, frozen, generation, accepted) = (
            Arc::clone(&p.cut_before),
            Arc::clone(&p.frozen_before),
            Arc::clone(&p.generation),
            Arc::clone(&p.accepted),
        );
        tokio::spawn(async move {
            while let Ok((a, _)) = l.accept().await {
                accepted.fetch_add(1, Relaxed);
                let Ok(b) = TcpStream::connect(to).await else {
                    continue;
                };
                let g = generation.load(Relaxed);
                let (ar, aw) = a.into_split();
                let (br, bw) = b.into_split();
                for (r, w) in [
                    (
                        Box::new(ar) as Box<dyn Read>,
                        Box::new(bw) as Box<dyn Write>,
                    ),
                    (Box::new(br), Box::new(aw)),
                ] {
                    let (cut, frozen) = (Arc::clone(&cut), Arc::clone(&frozen));
                    tokio::spawn(pipe(r, w, g, cut, frozen));
                }
            }
        });
        p
    }

    fn next_generation(&self) -> usize {
        self.generation.fetch_add(1, Relaxed) + 1
    }

    /// Connections open now are closed at their next byte (at once, for a feed's next
    /// keep-alive or event: callers wait for the drop).
    fn cut(&self) {
        let g = self.next_generation();
        self.cut_before.store(g, Relaxed);
    }

    /// Connections open now stop forwarding and stay open.
    fn freeze(&self) {
        let g = self.next_generation();
        self.frozen_before.store(g, Relaxed);
    }
}

trait Read: tokio::io::AsyncRead + Unpin + Send {}
impl<T: tokio::io::AsyncRead + Unpin + Send> Read for T {}
trait Write: tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncWrite + Unpin + Send> Write for T {}

async fn pipe(
    mut r: Box<dyn Read>,
    mut w: Box<dyn Write>,
    generation: usize,
    cut: Arc<AtomicUsize>,
    frozen: Arc<AtomicUsize>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            n = r.read(&mut buf) => n,
            // Checked every 20 ms too, so that a cut does not wait for the next byte.
            _ = tokio::time::sleep(Duration::from_millis(20)) => {
                if generation < cut.load(Relaxed) {
                    return;
                }
                continue;
            }
        };
        let Ok(n) = n else { return };
        if n == 0 || generation < cut.load(Relaxed) {
            return;
        }
        if generation < frozen.load(Relaxed) {
            // Silent, open: the peer sees nothing more, and no end either.
            let _hold = (r, w);
            std::future::pending::<()>().await;
            return;
        }
        if w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

/// The chain's promise: an item changed on the upstream and invalidated there (`POST
/// /v1/invalidate`) is served fresh by the downstream within a bounded time, though the
/// downstream had it cached, and the downstream's own follower is told. Fails without the
/// follower: the downstream serves version 1 until its TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_upstream_reaches_the_downstreams_tier_and_followers() {
    let http = Http::new();
    let (up, data, id) = upstream("127.0.0.1:0").await;
    let down = downstream(&up.url(), "fresh", |c| c).await;
    connected(&down).await;
    let mut follower = follow(&down).await;
    assert_eq!(version(&http, &down, &id).await, 1);
    data.set(2);
    // Cached on both tiers: nobody asks the origin, both serve version 1.
    assert_eq!(version(&http, &down, &id).await, 1);
    assert_eq!(version(&http, &up, &id).await, 1);
    let calls = up.app.metrics.origin_calls_request.load(Relaxed);
    invalidate(&up, &format!(r#"{{"ids":["{id}"]}}"#)).await;
    assert!(
        serves(&http, &down, &id, 2, Duration::from_secs(5)).await,
        "the downstream still serves the old version 5 s after the upstream's invalidation"
    );
    assert!(up.app.metrics.origin_calls_request.load(Relaxed) > calls);
    // The downstream's follower heard it, by id (it follows at agent).
    let m = follower
        .until(|v| {
            v["ids"]
                .as_array()
                .is_some_and(|ids| ids.iter().any(|i| i == id.as_str()))
        })
        .await;
    assert!(!m.id.is_empty(), "an id");
    assert!(stat(&down, |s| &s.events) >= 1);
    let metrics = http.metrics(&down.url()).await;
    assert!(
        metrics.contains("tilewarm_upstream_changes_connected 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tilewarm_upstream_changes_events_total 1"),
        "{metrics}"
    );
    let health = http.get(&format!("{}/healthz", down.url())).await.json();
    assert_eq!(health["upstream_changes"], "connected");
    assert_eq!(health["changes_connected"], true);
    // Invalidating everything upstream: the same, for the whole tier.
    data.set(3);
    invalidate(&up, r#"{"all":true}"#).await;
    assert!(serves(&http, &down, &id, 3, Duration::from_secs(5)).await);
    follower.until(|v| v["all"] == true).await;
    down.shutdown().await;
    up.shutdown().await;
}

/// A feed connection cut in the middle is resumed with `Last-Event-ID`: what was
/// invalidated upstream meanwhile arrives from the upstream's backlog, without an
/// invalidate-all. One that goes silent (frozen, not closed) is dropped after
/// `--origin-changes-idle-ms` and resumed the same way. Fails without the resume (a reset
/// each time) or without the idle bound (the frozen connection is waited on for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_or_silent_feed_connection_resumes_from_its_last_id() {
    let http = Http::new();
    let (up, data, id) = upstream("127.0.0.1:0").await;
    let proxy = Proxy::start(up.addr).await;
    let down = downstream(&up.url(), "resume", |c| Config {
        origin_changes: Some(format!("{}/v1/changes", proxy.url)),
        origin_changes_idle_ms: 1_500,
        ..c
    })
    .await;
    connected(&down).await;
    let resets = stat(&down, |s| &s.resets);
    assert_eq!(resets, 1, "the first connect invalidates everything");
    let mut follower = follow(&down).await;
    for (round, version_now) in [("cut", 2u32), ("frozen", 3)] {
        assert_eq!(version(&http, &down, &id).await, u64::from(version_now - 1));
        let accepted = proxy.accepted.load(Relaxed);
        if round == "cut" {
            proxy.cut();
        } else {
            proxy.freeze();
        }
        // Changed and invalidated upstream while the downstream is not connected.
        data.set(version_now);
        let inv_id = invalidate(&up, &format!(r#"{{"ids":["{id}"]}}"#)).await;
        assert!(
            serves(
                &http,
                &down,
                &id,
                u64::from(version_now),
                Duration::from_secs(10)
            )
            .await,
            "{round}: the downstream never got the invalidation made while it was away"
        );
        assert!(
            proxy.accepted.load(Relaxed) > accepted,
            "{round}: reconnected"
        );
        let m = follower
            .until(|v| {
                v["ids"]
                    .as_array()
                    .is_some_and(|ids| ids.iter().any(|i| i == id.as_str()))
            })
            .await;
        assert!(!m.id.is_empty(), "{round}");
        assert_eq!(
            stat(&down, |s| &s.resets),
            resets,
            "{round}: resumed, no reset"
        );
        assert!(stat(&down, |s| &s.resumes) >= 1, "{round}");
        let _ = inv_id;
    }
    down.shutdown().await;
    up.shutdown().await;
}

/// An upstream restarted without Redis keeps no stream: the downstream's `Last-Event-ID`
/// is unknown to it and it answers `reset` (gap); the downstream invalidates everything,
/// so what changed across the restart is served fresh, and tells its own followers (`all`).
/// Fails without the reset handling (version 1 is served until its TTL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_restart_that_cannot_resume_resets_the_downstream() {
    let http = Http::new();
    let (up, _data, id) = upstream("127.0.0.1:0").await;
    let addr = up.addr;
    let down = downstream(&up.url(), "restart", |c| c).await;
    connected(&down).await;
    // An event, so that the downstream has an id to resume from.
    invalidate(&up, r#"{"tiles":["3/1/1"]}"#).await;
    assert!(eventually(Duration::from_secs(5), || stat(&down, |s| &s.events) == 1).await);
    assert_eq!(version(&http, &down, &id).await, 1);
    let mut follower = follow(&down).await;
    let resets = stat(&down, |s| &s.resets);
    up.shutdown().await;
    // The same address, a new process's stream, and the item changed meanwhile.
    let (up2, data2, _) = upstream(&addr.to_string()).await;
    data2.set(2);
    assert!(
        serves(&http, &down, &id, 2, Duration::from_secs(10)).await,
        "the downstream serves what it cached before the upstream's restart"
    );
    assert!(stat(&down, |s| &s.resets) > resets);
    follower.until(|v| v["all"] == true).await;
    down.shutdown().await;
    up2.shutdown().await;
}

/// An upstream without a feed at that URL (404) or refusing the token for it (401): a
/// warning, said in `/healthz` and `/metrics`, and the downstream serves on. Fails without
/// the follower (no `upstream_changes` in `/healthz`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_without_a_feed_is_shown_and_the_downstream_serves_on() {
    let http = Http::new();
    let (up, _data, id) = upstream("127.0.0.1:0").await;
    let down = downstream(&up.url(), "missing", |c| Config {
        origin_changes: Some(format!("{}/v1/no-feed-here", up.url())),
        ..c
    })
    .await;
    assert!(
        eventually(Duration::from_secs(10), || state(&down)
            == FeedState::NotFound)
        .await,
        "{:?}",
        state(&down)
    );
    assert_eq!(version(&http, &down, &id).await, 1);
    let health = http.get(&format!("{}/healthz", down.url())).await.json();
    assert_eq!(health["upstream_changes"], "not_found");
    assert_eq!(health["changes_connected"], false);
    let metrics = http.metrics(&down.url()).await;
    assert!(
        metrics.contains("tilewarm_upstream_changes_unavailable 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tilewarm_upstream_changes_connected 0"),
        "{metrics}"
    );
    down.shutdown().await;
    // A token the upstream does not verify: refused.
    let refused = server(Config {
        origin: Some(format!("{}/v1/batch", up.url())),
        origin_token_file: Some(token_file("refused", "not-a-jwt")),
        ..config()
    })
    .await;
    assert!(
        eventually(Duration::from_secs(10), || state(&refused)
            == FeedState::Refused)
        .await,
        "{:?}",
        state(&refused)
    );
    refused.shutdown().await;
    // `off`: nothing followed, nothing said.
    let off = downstream(&up.url(), "off", |c| Config {
        origin_changes: Some("off".into()),
        ..c
    })
    .await;
    assert!(off.app.origin.upstream_feed().is_none());
    let health = http.get(&format!("{}/healthz", off.url())).await.json();
    assert_eq!(health["upstream_changes"], serde_json::Value::Null);
    off.shutdown().await;
    up.shutdown().await;
}

/// The warning an upstream without a feed gives, once, naming the way out; the token
/// never reaches the log. Current-thread runtime: the scoped subscriber sees the
/// follower's task.
#[tokio::test]
async fn an_upstream_without_a_feed_is_warned_once_without_the_token() {
    let (log, guard) = crate::logs::captured_on_this_thread(tracing::Level::INFO);
    let (up, _data, _) = upstream("127.0.0.1:0").await;
    let token = token_for(Access::Agent);
    let down = server(Config {
        origin: Some(format!("{}/v1/batch", up.url())),
        origin_token_file: Some(token_file("warn", &token)),
        origin_changes: Some(format!("{}/v1/nope", up.url())),
        ..config()
    })
    .await;
    assert!(
        eventually(Duration::from_secs(10), || state(&down)
            == FeedState::NotFound)
        .await
    );
    down.shutdown().await;
    up.shutdown().await;
    drop(guard);
    let text = String::from_utf8_lossy(&log.0.lock().unwrap()).into_owned();
    let warned: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("upstream feed: not followed"))
        .collect();
    assert_eq!(warned.len(), 1, "log: {text}");
    assert!(
        warned[0].contains("HTTP 404") && warned[0].contains("--origin-changes"),
        "{}",
        warned[0]
    );
    assert!(!text.contains(&token), "the token is in the log");
}

/// An upstream that cannot read the id the follower resumes from answers 400: the follower
/// drops the id and connects afresh (invalidating everything) instead of sending the same
/// id for ever. A stub feed that gives an id the real server would refuse, then ends.
/// Fails when the id is kept: one reset, then 400s only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_the_upstream_refuses_is_dropped_and_the_follower_starts_afresh() {
    use axum::http::{HeaderMap, StatusCode};
    let refused = Arc::new(AtomicU64::new(0));
    let r = Arc::clone(&refused);
    let app = axum::Router::new().route(
        "/v1/changes",
        axum::routing::get(move |headers: HeaderMap| {
            let r = Arc::clone(&r);
            async move {
                if headers.contains_key("last-event-id") {
                    r.fetch_add(1, Relaxed);
                    return (
                        StatusCode::BAD_REQUEST,
                        [("content-type", "application/json")],
                        r#"{"error":{"code":"bad_request","message":"Last-Event-ID: not a stream id"}}"#,
                    );
                }
                (
                    StatusCode::OK,
                    [("content-type", "text/event-stream")],
                    "event: ready\nid: not-a-stream-id\ndata: {}\n\n",
                )
            }
        }),
    );
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stub = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    let (up, _data, _) = upstream("127.0.0.1:0").await;
    let down = downstream(&up.url(), "bad-id", |c| Config {
        origin_changes: Some(format!("{stub}/v1/changes")),
        ..c
    })
    .await;
    assert!(
        eventually(Duration::from_secs(10), || stat(&down, |s| &s.resets) >= 2).await,
        "resets {}, refused {}",
        stat(&down, |s| &s.resets),
        refused.load(Relaxed)
    );
    assert!(refused.load(Relaxed) >= 1);
    down.shutdown().await;
    up.shutdown().await;
}

/// A stream the follower cannot read past (here an event id longer than the SSE reader's
/// bound) must not be resumed into again: resuming after the last id read meets the same
/// event, for ever, and no change after it is ever applied. The follower connects afresh
/// instead (invalidating everything). A stub feed that sends `ready` with a good id, then
/// an over-long id, each time. Fails when the id is kept: one reset, then resumes only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_that_cannot_be_read_past_is_followed_afresh_not_resumed_into() {
    use axum::http::{HeaderMap, StatusCode};
    let resumed = Arc::new(AtomicU64::new(0));
    let r = Arc::clone(&resumed);
    let body = format!(
        "event: ready\nid: 1-1\ndata: {{}}\n\nid: {}\ndata: {{}}\n\n",
        "7".repeat(tilewarm_server::sse::MAX_ID_BYTES + 1)
    );
    let app = axum::Router::new().route(
        "/v1/changes",
        axum::routing::get(move |headers: HeaderMap| {
            let (r, body) = (Arc::clone(&r), body.clone());
            async move {
                if headers.contains_key("last-event-id") {
                    r.fetch_add(1, Relaxed);
                }
                (
                    StatusCode::OK,
                    [("content-type", "text/event-stream")],
                    body,
                )
            }
        }),
    );
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stub = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    let (up, _data, _) = upstream("127.0.0.1:0").await;
    let down = downstream(&up.url(), "unreadable", |c| Config {
        origin_changes: Some(format!("{stub}/v1/changes")),
        ..c
    })
    .await;
    assert!(
        eventually(Duration::from_secs(10), || stat(&down, |s| &s.resets) >= 3).await,
        "resets {}, resumed {}",
        stat(&down, |s| &s.resets),
        resumed.load(Relaxed)
    );
    assert_eq!(
        resumed.load(Relaxed),
        0,
        "never resumed into the unreadable event"
    );
    down.shutdown().await;
    up.shutdown().await;
}

/// Two instances sharing one Redis each follow the upstream and each publish what they
/// apply (as each PostGIS listener does): both serve the change fresh, and a follower of
/// either hears it once per instance (docs/server.md, "Several instances").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_sharing_redis_each_follow_and_their_followers_hear_each_change_per_instance() {
    if !crate::common::redis_available() {
        return;
    }
    let redis = crate::common::RedisServer::start();
    let http = Http::new();
    let (up, data, id) = upstream("127.0.0.1:0").await;
    let with_redis = |c: Config| Config {
        redis: Some(redis.url()),
        redis_timeout_ms: 500,
        ..c
    };
    let a = downstream(&up.url(), "redis-a", with_redis).await;
    let b = downstream(&up.url(), "redis-b", with_redis).await;
    connected(&a).await;
    connected(&b).await;
    let mut follower = follow(&a).await;
    assert_eq!(version(&http, &a, &id).await, 1);
    assert_eq!(version(&http, &b, &id).await, 1);
    data.set(2);
    invalidate(&up, &format!(r#"{{"ids":["{id}"]}}"#)).await;
    assert!(serves(&http, &a, &id, 2, Duration::from_secs(5)).await);
    assert!(serves(&http, &b, &id, 2, Duration::from_secs(5)).await);
    let names = |v: &serde_json::Value| {
        v["ids"]
            .as_array()
            .is_some_and(|ids| ids.iter().any(|i| i == id.as_str()))
    };
    let first = follower.until(names).await;
    let second = follower.until(names).await;
    assert_ne!(first.id, second.id, "two entries, one per instance");
    assert_eq!(stat(&a, |s| &s.events), 1);
    assert_eq!(stat(&b, |s| &s.events), 1);
    b.shutdown().await;
    a.shutdown().await;
    up.shutdown().await;
}

/// A stub feed at `/v1/changes` that gives every request `answer`'s response and records
/// when each came; its root URL.
async fn stub_feed(
    answer: impl Fn() -> axum::response::Response + Clone + Send + Sync + 'static,
) -> (String, Arc<Mutex<Vec<tokio::time::Instant>>>) {
    let calls: Arc<Mutex<Vec<tokio::time::Instant>>> = Arc::default();
    let c = Arc::clone(&calls);
    let app = axum::Router::new().route(
        "/v1/changes",
        axum::routing::get(move || {
            let (c, answer) = (Arc::clone(&c), answer.clone());
            async move {
                c.lock().unwrap().push(tokio::time::Instant::now());
                answer()
            }
        }),
    );
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, calls)
}

/// A downstream whose origin and feed are the stub at `stub` (no token).
async fn following(stub: &str) -> Server {
    server(Config {
        origin: Some(format!("{stub}/v1/batch")),
        origin_changes: Some(format!("{stub}/v1/changes")),
        warmup_ring: 0,
        ..config()
    })
    .await
}

/// The gaps between the calls recorded.
fn gaps(calls: &Mutex<Vec<tokio::time::Instant>>) -> Vec<Duration> {
    let c = calls.lock().unwrap();
    c.windows(2).map(|w| w[1] - w[0]).collect()
}

/// An upstream whose feed answers 429 with `Retry-After: 2` or 503 with a `Retry-After`
/// date 3 s ahead is not asked again sooner; one that answers 410 (neither the feed's
/// absence nor the id: asking again at once will not help) is asked after 1 s, doubling,
/// not every 2 s at most; each is warned once. Fails when Retry-After is ignored (the
/// reconnect back-off's 100 ms…2 s) or when a 4xx takes that back-off (about 8 calls in
/// 5 s). Current-thread runtime: the scoped subscriber sees the followers' tasks.
#[tokio::test]
async fn feed_answers_that_say_wait_are_waited_for_and_refusals_backed_off() {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let (log, guard) = crate::logs::captured_on_this_thread(tracing::Level::INFO);
    let body = r#"{"error":{"code":"rate_limited","message":"slow down"}}"#;
    let (limited, limited_calls) = stub_feed(move || {
        (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "2"), ("content-type", "application/json")],
            body,
        )
            .into_response()
    })
    .await;
    let (full, full_calls) = stub_feed(|| {
        let at = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(3));
        (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", at)], "").into_response()
    })
    .await;
    let (gone, gone_calls) = stub_feed(|| StatusCode::GONE.into_response()).await;
    let downs = [
        following(&limited).await,
        following(&full).await,
        following(&gone).await,
    ];
    tokio::time::sleep(Duration::from_secs(5)).await;
    for d in downs {
        assert_eq!(state(&d), FeedState::Connecting);
        d.shutdown().await;
    }
    drop(guard);
    let g = gaps(&limited_calls);
    assert!(!g.is_empty(), "asked again after its Retry-After");
    assert!(
        g.iter().all(|g| *g >= Duration::from_millis(1_950)),
        "429 with Retry-After: 2: {g:?}"
    );
    let g = gaps(&full_calls);
    assert!(!g.is_empty(), "asked again after its Retry-After");
    // A date is whole seconds: 3 s ahead at the answer is at least 2 s after it.
    assert!(
        g.iter().all(|g| *g >= Duration::from_millis(1_950)),
        "503 with a Retry-After date: {g:?}"
    );
    let g = gaps(&gone_calls);
    assert!(
        (1..=3).contains(&g.len()) && g.iter().all(|g| *g >= Duration::from_millis(450)),
        "410: 1 s doubling, jittered: {g:?}"
    );
    let text = String::from_utf8_lossy(&log.0.lock().unwrap()).into_owned();
    for (says, url) in [
        ("HTTP 429: slow down", &limited),
        ("HTTP 503", &full),
        ("HTTP 410", &gone),
    ] {
        let warned: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.contains("WARN") && l.contains(says) && l.contains(&format!("{url}/v1/changes "))
            })
            .collect();
        assert_eq!(warned.len(), 1, "{says}: log: {text}");
    }
}

/// A feed URL that redirects is a configuration error: it is not followed (the token would
/// go wherever it points), the warning says once which URL redirects and where to, `/healthz`
/// says `redirected`, and it is asked again only after the slow retry (30 s, jittered), not
/// every 2 s. Fails without the redirect case (state `connecting`, asked again within 2 s,
/// no Location in the log). Current-thread runtime: the scoped subscriber sees the
/// follower's task.
#[tokio::test]
async fn a_feed_url_that_redirects_is_warned_once_with_where_it_points() {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let (log, guard) = crate::logs::captured_on_this_thread(tracing::Level::INFO);
    let (stub, calls) = stub_feed(|| {
        (
            StatusCode::MOVED_PERMANENTLY,
            [("location", "https://feed.example/v1/changes")],
        )
            .into_response()
    })
    .await;
    let down = following(&stub).await;
    assert!(
        eventually(Duration::from_secs(10), || state(&down)
            == FeedState::Redirected)
        .await,
        "{:?}",
        state(&down)
    );
    let http = Http::new();
    let health = http.get(&format!("{}/healthz", down.url())).await.json();
    assert_eq!(health["upstream_changes"], "redirected");
    let metrics = http.metrics(&down.url()).await;
    assert!(
        metrics.contains("tilewarm_upstream_changes_unavailable 1"),
        "{metrics}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(calls.lock().unwrap().len(), 1, "asked again within 3 s");
    down.shutdown().await;
    drop(guard);
    let text = String::from_utf8_lossy(&log.0.lock().unwrap()).into_owned();
    let warned: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("upstream feed"))
        .collect();
    assert_eq!(warned.len(), 1, "log: {text}");
    assert!(
        warned[0].contains(&format!(
            "{stub}/v1/changes redirects (HTTP 301) to https://feed.example/v1/changes"
        )) && warned[0].contains("--origin-changes"),
        "{}",
        warned[0]
    );
}
