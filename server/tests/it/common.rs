//! Test harness: servers on 127.0.0.1:0 in this process, a small HTTP client, and a real
//! `redis-server` on a free loopback port.

use std::net::TcpListener as StdListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
pub use tilewarm_server::config::InFlightLimitKind;
pub use tilewarm_server::Config;
use tilewarm_server::{start, Server};

/// The HS256 secret test servers verify tokens with.
pub const TEST_SECRET: &str = "tilewarm-test-secret-0123456789abcdef";

/// A small city so tests start fast, tokens verified with [`TEST_SECRET`], `/metrics` on
/// the API's address; everything else at the binary's defaults.
pub fn config() -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        synthetic_homes: 5_000,
        jwt_secret: Some(TEST_SECRET.into()),
        metrics_public: true,
        ..Config::default()
    }
}

/// Seconds since the epoch.
pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HS256 token signed with [`TEST_SECRET`] with these claims.
pub fn sign_hs256(claims: &serde_json::Value) -> String {
    use jsonwebtoken::{encode, EncodingKey, Header};
    encode(
        &Header::default(),
        claims,
        &EncodingKey::from_secret(TEST_SECRET.as_bytes()),
    )
    .unwrap()
}

/// A valid token for `tier` (an hour left), signed with [`TEST_SECRET`].
pub fn token_for(tier: tilewarm::access::Access) -> String {
    sign_hs256(&serde_json::json!({
        "sub": format!("test-{tier}"),
        "exp": now_s() + 3600,
        "tilewarm_access": tier.as_str(),
    }))
}

pub async fn server(config: Config) -> Server {
    start(config).await.expect("server starts")
}

pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts a protocol error body with `code` and returns its message.
    pub fn error(&self, status: u16, code: &str) -> String {
        assert_eq!(self.status, status, "body: {}", self.text());
        let ct = self.headers.get("content-type").unwrap().to_str().unwrap();
        assert!(ct.starts_with("application/json"), "content-type {ct}");
        let v = self.json();
        assert_eq!(v["error"]["code"], code, "body: {}", self.text());
        let message = v["error"]["message"].as_str().unwrap().to_string();
        assert!(!message.is_empty());
        message
    }
}

pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    /// Sent as `Authorization: Bearer` unless a request sets its own `authorization`.
    token: Option<String>,
}

impl Http {
    /// A client holding an `agent` token for [`TEST_SECRET`] servers: it may see every
    /// tier, as the data-path tests need. The auth tests use [`Http::anonymous`] and
    /// [`Http::with_token`].
    pub fn new() -> Http {
        Http::with_token(Some(token_for(tilewarm::access::Access::Agent)))
    }

    /// A client sending no credential.
    pub fn anonymous() -> Http {
        Http::with_token(None)
    }

    pub fn with_token(token: Option<String>) -> Http {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
            token,
        }
    }

    pub async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let own = headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("authorization"));
        if let (Some(t), false) = (&self.token, own) {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req.body(Full::new(body.into())).unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(30), self.client.request(req))
            .await
            .expect("answer within 30 s")
            .expect("request succeeds");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            headers,
            body,
        }
    }

    /// POSTs `body` with an `Authorization` header of arbitrary bytes (not valid UTF-8).
    pub async fn send_raw_header(&self, url: &str, authorization: &[u8], body: String) -> Reply {
        let req = Request::builder()
            .method("POST")
            .uri(url)
            .header(
                "authorization",
                hyper::header::HeaderValue::from_bytes(authorization).unwrap(),
            )
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = self.client.request(req).await.expect("request succeeds");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            headers,
            body,
        }
    }

    /// The text of `GET {server}/metrics`, with this client's credential.
    pub async fn metrics(&self, server: &str) -> String {
        self.get(&format!("{server}/metrics")).await.text()
    }

    pub async fn get(&self, url: &str) -> Reply {
        self.send("GET", url, &[], Bytes::new()).await
    }

    pub async fn batch(&self, server: &Server, body: &str) -> Reply {
        self.send(
            "POST",
            &format!("{}/v1/batch", server.url()),
            &[("content-type", "application/json")],
            body.to_string(),
        )
        .await
    }

    /// A batch that must succeed; the decoded, validated response.
    pub async fn ok(
        &self,
        server: &Server,
        body: &str,
    ) -> tilewarm::protocol::BatchResponse<tilewarm::protocol::RawData> {
        let r = self.batch(server, body).await;
        assert_eq!(r.status, 200, "body: {}", r.text());
        tilewarm::protocol::decode_response(&r.body, &tilewarm::protocol::Limits::default())
            .unwrap_or_else(|e| panic!("response does not decode: {e}"))
    }
}

/// Polls `f` every 20 ms until it is true or `within` passes.
pub async fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------
// redis-server
// ---------------------------------------------------------------------------------------

/// A `redis-server` child on a free loopback port, without persistence. Killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    /// Where a persistent one keeps its snapshot ([`RedisServer::start_persistent`]).
    dir: Option<std::path::PathBuf>,
    /// Config given to the next start only ([`RedisServer::restart_with`]).
    next_args: Vec<String>,
}

/// Whether `redis-server` can be run. When it cannot, Redis tests print SKIP and pass,
/// unless `TILEWARM_REQUIRE_REDIS=1` (set by `server/tests/run.sh`), which makes them fail.
pub fn redis_available() -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        if std::env::var("TILEWARM_REQUIRE_REDIS").as_deref() == Ok("1") {
            panic!("redis-server is not installed and TILEWARM_REQUIRE_REDIS=1 (run server/tests/setup.sh)");
        }
        eprintln!("SKIP: redis-server is not installed; run server/tests/setup.sh to install it");
    }
    found
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RedisServer {
    /// Starts one on a free loopback port. A port taken between the check and
    /// redis-server's bind (another test's outgoing connection can get it) makes the
    /// child exit; it is started again on a new port, up to 5 times.
    pub fn start() -> RedisServer {
        for _ in 0..5 {
            let mut r = RedisServer {
                port: free_port(),
                child: None,
                dir: None,
                next_args: Vec::new(),
            };
            if r.try_restart() {
                return r;
            }
        }
        panic!("redis-server did not come up on 5 free ports");
    }

    /// One that keeps its data across [`Self::kill`] and [`Self::restart`] as a production
    /// Redis with persistence does: a `SAVE` writes a snapshot into a directory of its own
    /// (removed on drop), which the next start loads.
    pub fn start_persistent() -> RedisServer {
        for attempt in 0..5 {
            let dir = std::env::temp_dir().join(format!(
                "tw-redis-{}-{attempt}-{}",
                std::process::id(),
                free_port()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let mut r = RedisServer {
                port: free_port(),
                child: None,
                dir: Some(dir),
                next_args: Vec::new(),
            };
            if r.try_restart() {
                return r;
            }
        }
        panic!("redis-server did not come up on 5 free ports");
    }

    /// Writes a snapshot (`SAVE`, with [`RedisServer::start_persistent`]) and kills it: a
    /// restart brings that data back, as a Redis with persistence does.
    pub async fn save_and_kill(&mut self) {
        let mut conn = redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let () = redis::cmd("SAVE").query_async(&mut conn).await.unwrap();
        drop(conn);
        self.kill();
    }

    /// Starts it again (from its snapshot) answering `PING` but refusing deletes (`DEL`,
    /// `UNLINK`) until [`RedisServer::allow_deletes`]: an invalidation cannot land.
    pub fn restart_refusing_deletes(&mut self) {
        self.restart_with(&[
            "--user", "default", "on", "nopass", "~*", "&*", "+@all", "-unlink", "-del",
        ]);
    }

    /// Lets deletes through again after [`RedisServer::restart_refusing_deletes`].
    pub async fn allow_deletes(&self) {
        let mut conn = redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg("default")
            .arg("+unlink")
            .arg("+del")
            .query_async(&mut conn)
            .await
            .unwrap();
    }

    /// Starts it again on the same port with `args` (config directives, as
    /// `["--user", "default", "on", ...]`) added for this start only.
    pub fn restart_with(&mut self, args: &[&str]) {
        self.next_args = args.iter().map(|a| a.to_string()).collect();
        self.restart();
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts it (again) on the same port and waits until it accepts connections.
    pub fn restart(&mut self) {
        assert!(self.try_restart(), "redis-server did not come up");
    }

    /// Starts it on its port; true once it answers PING, false when it exited first
    /// (the port was taken). Panics after 10 s of neither.
    fn try_restart(&mut self) -> bool {
        assert!(self.child.is_none(), "already running");
        let mut cmd = tilewarm_server::tier::loopback_redis_command(self.port);
        if let Some(dir) = &self.dir {
            cmd.arg("--dir").arg(dir);
        }
        let child = cmd
            .args(std::mem::take(&mut self.next_args))
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read, Write};
                let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                if s.write_all(b"PING\r\n").is_ok() {
                    let mut buf = [0u8; 16];
                    if let Ok(n) = s.read(&mut buf) {
                        if buf[..n].starts_with(b"+PONG") {
                            return true;
                        }
                    }
                }
            }
            if let Some(c) = self.child.as_mut() {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    self.child = None;
                    return false;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it (SIGKILL: no goodbye to clients) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Redis Cluster (scripts/redis-cluster.sh)
// ---------------------------------------------------------------------------------------

/// A Redis Cluster of 3 masters + 3 replicas on free loopback ports, started by
/// `scripts/redis-cluster.sh` in a temporary directory; stopped and removed on drop.
pub struct RedisCluster {
    dir: std::path::PathBuf,
    /// `redis+cluster://127.0.0.1:P1,…` (every node as a seed).
    pub url: String,
}

fn cluster_script() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/redis-cluster.sh")
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        RedisCluster::start_with_node_timeout(1000)
    }

    /// A cluster whose nodes flag a master failed only after `ms` without an answer
    /// (`cluster-node-timeout`; `start` gives 1000).
    pub fn start_with_node_timeout(ms: u32) -> RedisCluster {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tw-redis-cluster-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let out = Command::new(cluster_script())
            .arg("start")
            .arg(&dir)
            .env("REDIS_CLUSTER_NODE_TIMEOUT_MS", ms.to_string())
            .stderr(Stdio::inherit())
            .output()
            .expect("scripts/redis-cluster.sh runs");
        let cluster = RedisCluster {
            dir,
            url: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        };
        assert!(
            out.status.success(),
            "scripts/redis-cluster.sh start failed"
        );
        assert!(
            cluster.url.starts_with("redis+cluster://"),
            "{}",
            cluster.url
        );
        cluster
    }

    /// The masters now: (port, pid).
    pub fn masters(&self) -> Vec<(u16, u32)> {
        let out = Command::new(cluster_script())
            .arg("masters")
            .arg(&self.dir)
            .output()
            .expect("scripts/redis-cluster.sh runs");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let (port, pid) = l.split_once(' ')?;
                Some((port.parse().ok()?, pid.parse().ok()?))
            })
            .collect()
    }

    /// Whether 3 masters answer and the cluster says it is ok.
    pub fn healthy(&self) -> bool {
        Command::new(cluster_script())
            .arg("healthy")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// SIGKILLs the master on `port` (its replica takes over after the node timeout).
    pub fn kill_node(&self, pid: u32) {
        let ok = Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -9 {pid}");
    }

    /// Keys held by the node on `port`.
    pub fn dbsize(&self, port: u16) -> u64 {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "dbsize"])
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }
}

impl RedisCluster {
    /// The ports of every node (masters and replicas).
    pub fn ports(&self) -> Vec<u16> {
        std::fs::read_to_string(self.dir.join("ports"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// The pid of the node on `port` (its pid file).
    pub fn pid(&self, port: u16) -> u32 {
        let f = self.dir.join(port.to_string()).join("pid");
        let text = std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{f:?}: {e}"));
        text.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{f:?} holds {text:?}: {e}"))
    }

    /// Sends `signal` (`STOP`, `CONT`) to the node on `port`.
    pub fn signal(&self, port: u16, signal: &str) {
        let pid = self.pid(port).to_string();
        let ok = Command::new("kill")
            .args([format!("-{signal}").as_str(), &pid])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{signal} {pid}");
    }

    /// How many of the other nodes that answer list the node on `port` in their `CLUSTER
    /// SLOTS` (as a master or a replica of a slot range), and how many answered.
    pub fn listing(&self, port: u16) -> (usize, usize) {
        let (mut listing, mut answered) = (0, 0);
        for p in self.ports().into_iter().filter(|&p| p != port) {
            let out = Command::new("redis-cli")
                .args(["-h", "127.0.0.1", "-p", &p.to_string(), "--json"])
                .args(["cluster", "slots"])
                .output()
                .expect("redis-cli runs");
            let Ok(serde_json::Value::Array(ranges)) = serde_json::from_slice(&out.stdout) else {
                continue;
            };
            answered += 1;
            let lists = ranges.iter().any(|r| {
                r.as_array().is_some_and(|r| {
                    r.iter()
                        .skip(2)
                        .any(|n| n.get(1).and_then(|v| v.as_u64()) == Some(u64::from(port)))
                })
            });
            listing += usize::from(lists);
        }
        (listing, answered)
    }

    /// `MGET` calls the node on `port` has answered (`INFO commandstats`).
    pub fn mget_calls(&self, port: u16) -> u64 {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["info", "commandstats"])
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("cmdstat_mget:calls="))
            .and_then(|rest| rest.split(',').next()?.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        let _ = Command::new(cluster_script())
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}
