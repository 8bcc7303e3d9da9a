//! Admission control (issue 15): overload is a quick 503, one caller's flood a 429, slow
//! headers and bodies are cut off, and a body is capped at the largest valid request.

use std::io::{Read, Write};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tilewarm::access::Access;
use tilewarm::tile::TileId;

use crate::common::{config, eventually, server, token_for, Config, Http, InFlightLimitKind};
use crate::{densest, origin, request};

/// Sends `head` (and nothing more) on a raw connection and returns what the server
/// answers before closing it, or `None` if it says nothing within 20 s.
fn raw_exchange(addr: std::net::SocketAddr, head: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(String::from_utf8_lossy(&got).into_owned()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            // Reset by the server: it closed the connection.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(String::from_utf8_lossy(&got).into_owned())
            }
            Err(_) => return None,
        }
    }
}

/// Opens a `POST /v1/batch` whose body never comes (until the body timeout). Returns the
/// open connection.
fn stalled_batch(addr: std::net::SocketAddr) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(
        b"POST /v1/batch HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"tiles\":[",
    )
    .unwrap();
    s
}

/// Takes one of `s`'s batch slots, or waits for one in its queue, as a batch being
/// answered does; held until the task is aborted.
fn busy_batch(s: &tilewarm_server::Server) -> tokio::task::JoinHandle<()> {
    let shed = std::sync::Arc::clone(&s.app.sheds.batch);
    tokio::spawn(async move {
        let _slot = shed.admit().await;
        std::future::pending::<()>().await;
    })
}

/// Waits (10 s at the most) until `s`'s batch slots are all taken and `waiting` batches
/// wait for one: the busy batches are in place.
async fn until_busy(s: &tilewarm_server::Server, waiting: usize) {
    let shed = &s.app.sheds.batch;
    let in_place = || shed.free_and_waiting() == (0, waiting);
    assert!(
        eventually(Duration::from_secs(10), in_place).await,
        "the busy batches never took their places: {:?}",
        shed.free_and_waiting()
    );
}

/// One slot (fixed), the given queue and wait, a 10 s body timeout; nothing else limits.
fn one_slot(queue: usize, wait_ms: u64) -> Config {
    Config {
        in_flight_limit: InFlightLimitKind::Fixed,
        max_in_flight: 1,
        max_queue: queue,
        max_queue_wait_ms: wait_ms,
        body_timeout_ms: 10_000,
        caller_rate: 0,
        warmup_ring: 0,
        ..config()
    }
}

/// Sends a batch to `s` and checks it is a 503 `overloaded` saying `why`, with
/// `Retry-After`, in well under the 10 s a stalled body holds a slot, and that no origin
/// call was paid.
async fn refused_quickly(s: &tilewarm_server::Server, why: &str) {
    let o = origin(42, 5_000);
    let started = std::time::Instant::now();
    let r = Http::new()
        .batch(s, &request(&[densest(&o)], &[], Access::Public))
        .await;
    let m = r.error(503, "overloaded");
    assert!(m.contains(why), "{m}");
    assert_eq!(r.headers.get("retry-after").unwrap(), "1");
    assert!(started.elapsed() < Duration::from_secs(5));
    let paid = &s.app.metrics.origin_calls_request;
    assert_eq!(paid.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_in_flight_and_queue_bounds_a_batch_is_a_503_with_retry_after() {
    // One slot and one queue place, each held by a batch being answered; a 10 s bound on
    // the wait, so only the full queue can refuse in time.
    let s = server(one_slot(1, 10_000)).await;
    let holds_slot = busy_batch(&s);
    until_busy(&s, 0).await;
    let queued = busy_batch(&s);
    until_busy(&s, 1).await;
    refused_quickly(&s, "every batch slot and queue place is taken").await;
    holds_slot.abort();
    queued.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_waits_longer_than_the_queue_wait_for_a_slot_is_a_503() {
    // One slot, held by a batch being answered; room in the queue; a 300 ms bound on the
    // wait. Without the bound the batch would wait until the slot came free.
    let s = server(one_slot(8, 300)).await;
    let holds_slot = busy_batch(&s);
    until_busy(&s, 0).await;
    refused_quickly(&s, "no batch slot came free within 300 ms").await;
    holds_slot.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_arrives_slowly_holds_no_batch_slot() {
    // One slot, one queue place, a 300 ms wait: were the slot taken before the body was
    // read, clients sending their bodies slowly would hold it (and the queue) for the
    // 10 s body timeout and every other batch would be a 503.
    let s = server(one_slot(1, 300)).await;
    let slow: Vec<_> = (0..3).map(|_| stalled_batch(s.addr)).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let o = origin(42, 5_000);
    let r = Http::new()
        .batch(&s, &request(&[densest(&o)], &[], Access::Public))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    drop(slow);
}

/// A server with one slot, a 300 ms queue wait and an origin that takes 3 s (`extra`
/// changes more), with one batch for a cold tile already waiting for the origin: the
/// server, that batch's task, and a second cold tile to ask for.
async fn one_batch_waiting_for_the_origin(
    extra: impl FnOnce(Config) -> Config,
) -> (
    tilewarm_server::Server,
    tokio::task::JoinHandle<crate::common::Reply>,
    tilewarm::tile::TileId,
) {
    let o = origin(42, 5_000);
    let tiles: Vec<_> = o.occupied_tiles(14).into_iter().map(|(t, _)| t).collect();
    let s = server(extra(Config {
        origin_latency_ms: 3_000,
        ..one_slot(8, 300)
    }))
    .await;
    let (url, body) = (
        format!("{}/v1/batch", s.url()),
        request(&[tiles[0]], &[], Access::Public),
    );
    let json = [("content-type", "application/json")];
    let first = tokio::spawn(async move { Http::new().send("POST", &url, &json, body).await });
    while s
        .app
        .metrics
        .origin_calls_request
        .load(std::sync::atomic::Ordering::Relaxed)
        == 0
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (s, first, tiles[1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_waiting_for_the_origin_gives_its_slot_back() {
    // The first batch's wait for the origin is not the server's work: the second gets the
    // slot and is answered too. Were the slot held through the origin call, the second
    // would wait 300 ms for it and be a 503.
    let (s, first, tile) = one_batch_waiting_for_the_origin(|c| c).await;
    let second = Http::new()
        .batch(&s, &request(&[tile], &[], Access::Public))
        .await;
    assert_eq!(second.status, 200, "{}", second.text());
    assert_eq!(first.await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_counting_a_coarse_tiles_items_at_the_origin_gives_its_slot_back() {
    // A tile coarser than --split-levels is counted at the origin before it is fetched;
    // that round trip (3 s here) is not the server's work either. Were the slot held
    // through it, the second batch would wait 300 ms for it and be a 503.
    let (s, first, tile) = one_batch_waiting_for_the_origin(|c| c).await;
    drop(first);
    let o = origin(42, 5_000);
    let coarse = densest(&o).ancestor(10).unwrap();
    let (url, body) = (
        format!("{}/v1/batch", s.url()),
        request(&[coarse], &[], Access::Public),
    );
    let json = [("content-type", "application/json")];
    let counting = tokio::spawn(async move { Http::new().send("POST", &url, &json, body).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = Http::new()
        .batch(&s, &request(&[tile], &[], Access::Public))
        .await;
    assert_eq!(second.status, 200, "{}", second.text());
    assert_eq!(counting.await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_origin_waits_a_batch_that_needs_the_origin_is_a_503() {
    let (s, first, tile) = one_batch_waiting_for_the_origin(|c| Config {
        max_origin_waits: 1,
        ..c
    })
    .await;
    let r = Http::new()
        .batch(&s, &request(&[tile], &[], Access::Public))
        .await;
    let m = r.error(503, "overloaded");
    assert!(m.contains("--max-origin-waits"), "{m}");
    assert_eq!(r.headers.get("retry-after").unwrap(), "1");
    assert!(!first.is_finished(), "refused while the first still waits");
    assert_eq!(first.await.unwrap().status, 200);
    // Only the first paid the origin.
    assert_eq!(
        s.app
            .metrics
            .origin_calls_request
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_past_its_rate_gets_429_with_retry_after_and_other_callers_do_not() {
    let o = origin(42, 5_000);
    let body = request(&[densest(&o)], &[], Access::Public);
    let s = server(Config {
        caller_rate: 1,
        caller_burst: 2,
        ..config()
    })
    .await;
    // The agent token's `sub` is the key: two batches pass, the third is refused.
    let agent = Http::new();
    assert_eq!(agent.batch(&s, &body).await.status, 200);
    assert_eq!(agent.batch(&s, &body).await.status, 200);
    let r = agent.batch(&s, &body).await;
    let m = r.error(429, "rate_limited");
    assert!(m.contains("retry in"), "{m}");
    assert_eq!(r.headers.get("retry-after").unwrap(), "1");
    // Another subject and an anonymous caller (keyed by address) are not affected.
    let other = Http::with_token(Some(token_for(Access::Registered)));
    assert_eq!(other.batch(&s, &body).await.status, 200);
    assert_eq!(Http::anonymous().batch(&s, &body).await.status, 200);
    // A refused credential is still a 401, not counted against anyone.
    let bad = Http::with_token(Some("not-a-jwt".into()));
    assert_eq!(bad.batch(&s, &body).await.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlimited_sub_such_as_an_edges_service_token_is_not_rate_limited() {
    let o = origin(42, 5_000);
    let body = request(&[densest(&o)], &[], Access::Public);
    let s = server(Config {
        caller_rate: 1,
        caller_burst: 2,
        unlimited_subs: vec![format!("test-{}", Access::Agent)],
        ..config()
    })
    .await;
    // The agent token's `sub` is listed: well past the burst, every batch is answered.
    let edge = Http::new();
    for _ in 0..6 {
        assert_eq!(edge.batch(&s, &body).await.status, 200);
    }
    // Anyone else is still limited.
    let other = Http::with_token(Some(token_for(Access::Registered)));
    assert_eq!(other.batch(&s, &body).await.status, 200);
    assert_eq!(other.batch(&s, &body).await.status, 200);
    other.batch(&s, &body).await.error(429, "rate_limited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_arriving_is_a_408() {
    let s = server(Config {
        body_timeout_ms: 300,
        ..config()
    })
    .await;
    let addr = s.addr;
    let answer = tokio::task::spawn_blocking(move || {
        raw_exchange(
            addr,
            "POST /v1/batch HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\nconnection: close\r\n\r\n{\"tiles\":[",
        )
    })
    .await
    .unwrap()
    .expect("the server answers a stalled body");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_that_stop_arriving_close_the_connection() {
    let s = server(Config {
        header_timeout_ms: 300,
        ..config()
    })
    .await;
    let addr = s.addr;
    let answer = tokio::task::spawn_blocking(move || {
        raw_exchange(addr, "POST /v1/batch HTTP/1.1\r\nhost: x\r\n")
    })
    .await
    .unwrap();
    // Closed (hyper may say 408 first) rather than held open.
    let answer = answer.expect("the server closes a connection whose headers stall");
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_longer_than_the_largest_valid_request_is_a_413() {
    let s = server(config()).await;
    let cap = s.app.limits.max_body_bytes;
    assert_eq!(
        cap,
        tilewarm::protocol::Limits::default().max_request_bytes()
    );
    // Well-formed JSON one byte over the cap: refused for its size, not parsed.
    let mut body = String::from("{\"tiles\":[],\"pad\":\"");
    body.push_str(&"x".repeat(cap + 1 - body.len() - 2));
    body.push_str("\"}");
    assert_eq!(body.len(), cap + 1);
    let r = Http::new().batch(&s, &body).await;
    let m = r.error(413, "payload_too_large");
    assert!(m.contains(&format!("at most {cap}")), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_the_next_connection_waits_for_one_to_close() {
    let s = server(Config {
        max_connections: 1,
        ..config()
    })
    .await;
    let addr = s.addr;
    let answer = tokio::task::spawn_blocking(move || {
        // The one slot: a connection that sends nothing yet.
        let first = std::net::TcpStream::connect(addr).unwrap();
        let mut second = std::net::TcpStream::connect(addr).unwrap();
        second
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .unwrap();
        // Not accepted while the first holds the slot: nothing comes back.
        second
            .set_read_timeout(Some(Duration::from_millis(1_500)))
            .unwrap();
        let mut buf = [0u8; 64];
        let early = second.read(&mut buf);
        assert!(
            early.is_err(),
            "answered while the only connection slot was taken: {early:?}"
        );
        // The first goes away: the second is accepted and answered.
        drop(first);
        second
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut got = Vec::new();
        let _ = second.read_to_end(&mut got);
        String::from_utf8_lossy(&got).into_owned()
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// A client that pipelines requests for a large answer and never reads what comes back
/// (issue: its write stays pending, hyper has no write timer) loses its connection once a
/// write has made no progress for `--write-timeout-ms`: the only connection slot comes
/// back and the next client is answered. Fails without `write_timeout::WriteTimeout` in
/// `serve_api` (the second client waits in the backlog forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_answers_gives_its_slot_back_at_the_write_timeout() {
    let s = server(Config {
        max_connections: 1,
        write_timeout_ms: 500,
        caller_rate: 0,
        warmup_ring: 0,
        ..config()
    })
    .await;
    // The whole city in one tile: an answer of about a megabyte.
    let body = request(&[TileId::new(0, 0, 0).unwrap()], &[], Access::Public);
    let one = Http::new().batch(&s, &body).await;
    assert_eq!(one.status, 200, "{}", one.text());
    let size = one.text().len();
    assert!(size > 256 * 1024, "answer of {size} bytes");
    // Enough answers to fill both ends' socket buffers many times over.
    let n = 64 * 1024 * 1024 / size + 1;
    let addr = s.addr;
    let served = tokio::task::spawn_blocking(move || {
        let mut hog = std::net::TcpStream::connect(addr).unwrap();
        let head = format!(
            "POST /v1/batch HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        for _ in 0..n {
            hog.write_all(head.as_bytes()).unwrap();
        }
        // The hog reads nothing. Another client, waiting for the only slot.
        let mut next = std::net::TcpStream::connect(addr).unwrap();
        next.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .unwrap();
        next.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let started = std::time::Instant::now();
        let mut got = Vec::new();
        let _ = next.read_to_end(&mut got);
        drop(hog);
        (String::from_utf8_lossy(&got).into_owned(), started.elapsed())
    })
    .await
    .unwrap();
    let (answer, waited) = served;
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "not served within {waited:?}: {answer:?}"
    );
    assert_eq!(s.app.metrics.write_timeouts.load(Relaxed), 1);
    let m = Http::new().metrics(&s.url()).await;
    assert!(m.contains("tilewarm_write_timeouts_total 1"), "{m}");
}

/// A connection to `addr` from the loopback address `from`.
async fn connect_from(addr: std::net::SocketAddr, from: &str) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.unwrap()
}

/// A connection from `from` that sends `GET /healthz` and reads the answer: what came back
/// within 20 s (empty: closed unanswered).
async fn healthz_from(addr: std::net::SocketAddr, from: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = connect_from(addr, from).await;
    let _ = s
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut got)).await;
    String::from_utf8_lossy(&got).into_owned()
}

/// With `--max-connections-per-address 1`, a second connection from an address that has one
/// open is closed unanswered while another address is served, and once the first closes
/// the address is served again; a `--trusted-proxy` peer is not capped. Fails without the
/// cap in `serve_api` (the second connection is answered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_connection_slot() {
    let s = server(Config {
        max_connections: 8,
        max_connections_per_address: 1,
        ..config()
    })
    .await;
    // Holds 127.0.0.1's one place, sending nothing.
    let first = connect_from(s.addr, "127.0.0.1").await;
    let second = healthz_from(s.addr, "127.0.0.1").await;
    let other = healthz_from(s.addr, "127.0.0.2").await;
    drop(first);
    let mut again = String::new();
    for _ in 0..100 {
        again = healthz_from(s.addr, "127.0.0.1").await;
        if !again.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        second, "",
        "a second connection from 127.0.0.1 was answered"
    );
    assert!(other.starts_with("HTTP/1.1 200"), "{other:?}");
    assert!(again.starts_with("HTTP/1.1 200"), "{again:?}");
    assert!(s.app.metrics.connections_refused.load(Relaxed) >= 1);
    s.shutdown().await;

    // A trusted proxy's connections are not capped.
    let s = server(Config {
        max_connections: 8,
        max_connections_per_address: 1,
        trusted_proxies: vec!["127.0.0.1".parse().unwrap()],
        ..config()
    })
    .await;
    let _first = connect_from(s.addr, "127.0.0.1").await;
    let second = healthz_from(s.addr, "127.0.0.1").await;
    assert!(second.starts_with("HTTP/1.1 200"), "{second:?}");
    assert_eq!(s.app.metrics.connections_refused.load(Relaxed), 0);
    s.shutdown().await;
}

/// Invalid and expired tokens from one address are refused (401) up to
/// `--auth-fail-burst` (20 by default); past it a request carrying a credential from that
/// address is refused with 429 and `Retry-After` before its token is looked at (even a
/// valid one: it would be verified first), while a request without a credential and other
/// addresses' are not affected. Fails without the check in `admission::authenticate` (the
/// 21st is a 401 and the valid token a 200).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_from_one_address_are_limited_before_verification() {
    let o = origin(42, 5_000);
    let body = request(&[densest(&o)], &[], Access::Public);
    let s = server(Config {
        caller_rate: 0,
        ..config()
    })
    .await;
    let expired = crate::common::sign_hs256(&serde_json::json!({
        "sub": "late", "exp": crate::common::now_s() - 3600, "tilewarm_access": "agent",
    }));
    for i in 0..20 {
        let token = if i % 2 == 0 {
            "not-a-jwt".to_owned()
        } else {
            expired.clone()
        };
        let r = Http::with_token(Some(token)).batch(&s, &body).await;
        assert_eq!(r.status, 401, "refused credential {i}: {}", r.text());
    }
    let r = Http::with_token(Some(expired.clone()))
        .batch(&s, &body)
        .await;
    let m = r.error(429, "rate_limited");
    assert!(m.contains("--auth-fail-rate"), "{m}");
    assert_eq!(r.headers.get("retry-after").unwrap(), "1");
    // Not verified at all: a valid token from the same address waits too.
    Http::new()
        .batch(&s, &body)
        .await
        .error(429, "rate_limited");
    // The other routes are behind the same check.
    let tiles = format!("{}/v1/tiles/{}", s.url(), densest(&o));
    Http::with_token(Some("not-a-jwt".into()))
        .get(&tiles)
        .await
        .error(429, "rate_limited");
    // No credential: nothing to check, answered.
    assert_eq!(Http::anonymous().batch(&s, &body).await.status, 200);
    assert_eq!(s.app.admission.auth_failures.tracked(), 1);
    // One cell a second comes back (--auth-fail-rate 1): then tokens are checked again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(Http::new().batch(&s, &body).await.status, 200);
    s.shutdown().await;

    // 0 turns it off.
    let s = server(Config {
        caller_rate: 0,
        auth_fail_rate: 0,
        ..config()
    })
    .await;
    for _ in 0..30 {
        let r = Http::with_token(Some("not-a-jwt".into()))
            .batch(&s, &body)
            .await;
        assert_eq!(r.status, 401);
    }
    s.shutdown().await;
}

/// `POST /v1/invalidate` is limited server-wide (`--invalidate-rate`, `--invalidate-burst`)
/// after its admin check: past the burst an admin gets 429 with `Retry-After`, and a
/// non-admin caller's 403s do not use the budget up. Refused credentials there count
/// against the address as on the batch route. Fails without the limit in the handler (the
/// third invalidation is a 200).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_are_rate_limited_and_refused_credentials_count_there_too() {
    let s = server(Config {
        invalidate_rate: 1,
        invalidate_burst: 2,
        auth_fail_burst: 3,
        ..config()
    })
    .await;
    let url = format!("{}/v1/invalidate", s.url());
    let post = |http: Http| {
        let url = url.clone();
        async move {
            http.send(
                "POST",
                &url,
                &[("content-type", "application/json")],
                r#"{"ids":["s2a-7"]}"#,
            )
            .await
        }
    };
    let admin = || {
        Http::with_token(Some(crate::common::sign_hs256(&serde_json::json!({
            "sub": "ops", "exp": crate::common::now_s() + 3600,
            "tilewarm_access": "agent", "tilewarm_admin": true,
        }))))
    };
    for _ in 0..5 {
        post(Http::new()).await.error(403, "forbidden");
    }
    assert_eq!(post(admin()).await.status, 200);
    assert_eq!(post(admin()).await.status, 200);
    let r = post(admin()).await;
    let m = r.error(429, "rate_limited");
    assert!(m.contains("--invalidate-rate"), "{m}");
    assert_eq!(r.headers.get("retry-after").unwrap(), "1");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(post(admin()).await.status, 200);
    // Refused credentials: three 401s, then 429 before the token is checked.
    for _ in 0..3 {
        post(Http::with_token(Some("not-a-jwt".into())))
            .await
            .error(401, "unauthorized");
    }
    post(Http::with_token(Some("not-a-jwt".into())))
        .await
        .error(429, "rate_limited");
    s.shutdown().await;
}
