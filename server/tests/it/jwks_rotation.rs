//! A `--jwks` URL's keys follow its key server (`server/src/jwks.rs`): a key it adds
//! verifies once the cool-down since the last fetch is over, a key it drops stops verifying
//! once the set's max age is over, unknown `kid`s do not make the server ask it once per
//! request, and while it fails the last set verifies and a token it cannot check is a 502
//! with `Retry-After`.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tilewarm_server::Server;

use crate::auth::key_bytes;
use crate::common::{config, now_s, server, Config, Http, Reply};

/// A key server: its JWKS (or a failure status) can be changed, and its fetches counted.
struct Idp {
    url: String,
    answer: Arc<Mutex<(StatusCode, String)>>,
    fetches: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Idp {
    async fn start(kids: &[&str]) -> Idp {
        let answer = Arc::new(Mutex::new((StatusCode::OK, jwks(kids))));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (a, f) = (Arc::clone(&answer), Arc::clone(&fetches));
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let (a, f) = (Arc::clone(&a), Arc::clone(&f));
                async move {
                    f.fetch_add(1, Relaxed);
                    a.lock().unwrap().clone()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Idp {
            url,
            answer,
            fetches,
            task,
        }
    }

    /// Publishes the keys named `kids` (see [`jwks`]).
    fn publish(&self, kids: &[&str]) {
        *self.answer.lock().unwrap() = (StatusCode::OK, jwks(kids));
    }

    /// Answers every fetch with a 500 from now on.
    fn fail(&self) {
        *self.answer.lock().unwrap() = (StatusCode::INTERNAL_SERVER_ERROR, "down".into());
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Relaxed)
    }

    /// A server verifying tokens with this key server's set.
    /// A server verifying tokens with this key server's set; past `auth_fail_burst`
    /// refused credentials an address is answered 429.
    async fn server(&self, max_age_s: u64, cooldown_s: u64, auth_fail_burst: u32) -> Server {
        server(Config {
            jwks: Some(self.url.clone()),
            jwks_max_age_s: max_age_s,
            jwks_cooldown_s: cooldown_s,
            auth_fail_burst,
            ..config()
        })
        .await
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The test JWKS's P-256 key (`ec-1` in `auth_keys/jwks.json`) under each of `kids`: a
/// rotation publishes the key a new token is signed with under a new `kid`.
fn jwks(kids: &[&str]) -> String {
    let set: Value = serde_json::from_slice(&key_bytes("jwks.json")).unwrap();
    let ec = set["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == "ec-1")
        .unwrap()
        .clone();
    let keys: Vec<Value> = kids
        .iter()
        .map(|kid| {
            let mut k = ec.clone();
            k["kid"] = json!(kid);
            k
        })
        .collect();
    json!({ "keys": keys }).to_string()
}

/// An ES256 token for `registered` signed with the test key, naming `kid`.
fn token(kid: &str) -> String {
    let der = key_bytes("ec_private_pkcs8.der");
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some(kid.into());
    encode(
        &h,
        &json!({"exp": now_s() + 600, "tilewarm_access": "registered"}),
        &EncodingKey::from_ec_der(&der),
    )
    .unwrap()
}

/// A batch of one tile at `registered` with a token naming `kid`.
async fn call(s: &Server, kid: &str) -> Reply {
    Http::anonymous()
        .send(
            "POST",
            &format!("{}/v1/batch", s.url()),
            &[
                ("content-type", "application/json"),
                ("authorization", &format!("Bearer {}", token(kid))),
            ],
            r#"{"tiles":["14/2620/5718"],"access":"registered"}"#.to_owned(),
        )
        .await
}

/// What `/healthz` says of the key set, and its `status`.
async fn health(s: &Server) -> (String, String) {
    let h = Http::anonymous()
        .get(&format!("{}/healthz", s.url()))
        .await
        .json();
    let name = |v: &Value| v.as_str().unwrap_or("null").to_owned();
    (name(&h["jwks"]), name(&h["status"]))
}

/// The `/metrics` lines about the key set.
async fn jwks_metrics(s: &Server) -> String {
    let m = Http::anonymous().metrics(&s.url()).await;
    m.lines()
        .filter(|l| l.starts_with("tilewarm_jwks_"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn verified(r: &Reply) -> bool {
    r.status == 200 && r.headers["x-tilewarm-access"] == "registered"
}

#[tokio::test]
async fn a_key_the_key_server_adds_verifies_once_the_cooldown_is_over() {
    let idp = Idp::start(&["ec-1"]).await;
    let s = idp.server(600, 1, 20).await;
    assert_eq!(idp.fetches(), 1, "read at startup");
    assert!(verified(&call(&s, "ec-1").await));
    // The key server rotates: new tokens name ec-2.
    idp.publish(&["ec-1", "ec-2"]);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let r = call(&s, "ec-2").await;
    assert!(verified(&r), "{} {}", r.status, r.text());
    assert_eq!(idp.fetches(), 2, "fetched once for the new kid");
    // The old key still verifies: it is still published.
    assert!(verified(&call(&s, "ec-1").await));
    s.shutdown().await;
}

#[tokio::test]
async fn unknown_kids_are_refused_without_asking_the_key_server_each_time() {
    let idp = Idp::start(&["ec-1"]).await;
    let s = idp.server(600, 3600, 20).await;
    for i in 0..20 {
        let r = call(&s, &format!("forged-{i}")).await;
        let m = r.error(401, "unauthorized");
        assert!(m.contains("kid"), "{m}");
    }
    assert_eq!(
        idp.fetches(),
        1,
        "only the startup fetch, within the cool-down"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn a_key_the_key_server_drops_stops_verifying_after_the_max_age() {
    let idp = Idp::start(&["ec-1", "ec-2"]).await;
    let s = idp.server(1, 3600, 20).await;
    assert!(verified(&call(&s, "ec-1").await));
    idp.publish(&["ec-2"]);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    // The set past its max age is fetched again in the background; the old one verifies
    // meanwhile, then the dropped key does not.
    let mut last = None;
    for _ in 0..250 {
        let r = call(&s, "ec-1").await;
        if r.status != 200 {
            last = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = last.expect("the dropped key still verifies 5 s after the set's max age");
    let m = r.error(401, "unauthorized");
    assert!(m.contains("kid"), "{m}");
    assert!(verified(&call(&s, "ec-2").await));
    s.shutdown().await;
}

#[tokio::test]
async fn while_the_key_server_fails_the_last_set_verifies_and_a_new_kid_is_a_502() {
    let idp = Idp::start(&["ec-1"]).await;
    // Two refused credentials per address, then 429: a 502 is not the caller's, and must
    // not count.
    let s = idp.server(1, 1, 2).await;
    assert_eq!(health(&s).await, ("fresh".into(), "ok".into()));
    idp.fail();
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    // Past its max age, the set is fetched again and the fetch fails: it still verifies.
    assert!(verified(&call(&s, "ec-1").await));
    assert!(
        crate::common::eventually(Duration::from_secs(5), || idp.fetches() >= 2).await,
        "the set past its max age was fetched again"
    );
    // A kid the last set lacks may be in the set that could not be fetched: a 502 with
    // when to ask again, not a 401 (the token may be fine).
    let r = call(&s, "ec-2").await;
    let m = r.error(502, "upstream_error");
    assert!(m.contains("key server failed") && m.contains("500"), "{m}");
    let after: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&after), "{after}");
    // The key server is not asked again while backing off.
    let fetched = idp.fetches();
    for _ in 0..5 {
        call(&s, "ec-2").await.error(502, "upstream_error");
        assert!(verified(&call(&s, "ec-1").await));
    }
    assert_eq!(idp.fetches(), fetched);
    // The operator sees it: /healthz says the set is failing, /metrics counts the failure.
    assert_eq!(health(&s).await, ("failing".into(), "degraded".into()));
    let m = jwks_metrics(&s).await;
    for line in [
        "tilewarm_jwks_usable 1",
        "tilewarm_jwks_fetches_total{result=\"failed\"} 1",
        "tilewarm_jwks_fetches_total{result=\"ok\"} 0",
    ] {
        assert!(m.contains(line), "{line} not in\n{m}");
    }
    s.shutdown().await;
}

/// A fetch for an unknown `kid` that fails while the set is within its max age leaves the
/// set `fresh` and the server `ok`: the set verifies every token it has the key of as
/// before, and a load balancer polling `/healthz` must not pull the server until the max
/// age for one token naming a key nobody has. The failure is counted in `/metrics`. It
/// used to say `failing` (status `degraded`) until the set's max age. Fails when a failed
/// fetch marks a fresh set failing.
#[tokio::test]
async fn a_failed_fetch_for_an_unknown_kid_leaves_a_fresh_set_fresh() {
    let idp = Idp::start(&["ec-1"]).await;
    let s = idp.server(600, 1, 20).await;
    idp.fail();
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    // Past the cool-down, the unknown kid makes the server ask; the key server fails.
    let r = call(&s, "ec-2").await;
    r.error(502, "upstream_error");
    assert_eq!(idp.fetches(), 2, "the unknown kid was fetched for");
    assert!(verified(&call(&s, "ec-1").await));
    assert_eq!(health(&s).await, ("fresh".into(), "ok".into()));
    let m = jwks_metrics(&s).await;
    for line in [
        "tilewarm_jwks_usable 1",
        "tilewarm_jwks_fetches_total{result=\"failed\"} 1",
        "tilewarm_jwks_fetches_total{result=\"ok\"} 0",
    ] {
        assert!(m.contains(line), "{line} not in\n{m}");
    }
    s.shutdown().await;
}
