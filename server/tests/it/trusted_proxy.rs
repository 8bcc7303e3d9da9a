//! `--trusted-proxy`: behind a reverse proxy the server trusts, each caller is known by the
//! address the proxy forwarded for (`X-Forwarded-For`'s right-most untrusted entry), for
//! refused credentials, the per-caller limits and `/dev/token`; from any other peer the
//! header is ignored. The test's peer is 127.0.0.1, standing in for the proxy.

use bytes::Bytes;
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tilewarm::access::Access;
use tilewarm::tile::TileId;
use tilewarm_server::client_addr::ForwardedHeader;
use tilewarm_server::Server;

use crate::common::{config, server, Config, Http, Reply};
use crate::request;

/// `c` trusting these `--trusted-proxy` values.
fn trusting(ranges: &[&str], c: Config) -> Config {
    Config {
        trusted_proxies: ranges.iter().map(|r| r.parse().unwrap()).collect(),
        ..c
    }
}

/// Refused credentials counted per address, three before the 429; no per-caller rate.
fn three_bad_tokens() -> Config {
    Config {
        caller_rate: 0,
        auth_fail_burst: 3,
        ..config()
    }
}

/// A batch from `http` with this `X-Forwarded-For` (none when empty).
async fn batch_for(http: &Http, s: &Server, forwarded_for: &str) -> Reply {
    // An empty tile: a valid request, answered without data.
    let body = request(&[TileId::new(14, 0, 0).unwrap()], &[], Access::Public);
    let mut headers = vec![("content-type", "application/json")];
    if !forwarded_for.is_empty() {
        headers.push(("x-forwarded-for", forwarded_for));
    }
    http.send("POST", &format!("{}/v1/batch", s.url()), &headers, body)
        .await
}

/// A batch with an invalid token, forwarded for `client`.
async fn bad_token_for(s: &Server, client: &str) -> Reply {
    batch_for(&Http::with_token(Some("not-a-jwt".into())), s, client).await
}

/// Behind a trusted proxy, two forwarded clients have their own refused-credential
/// buckets: one past its burst gets 429 while the other still gets 401, and entries a
/// client wrote left of the proxy's own do not give it a fresh bucket. Without the option
/// the same requests share the proxy's bucket. Fails when the client address is the peer's
/// (the second client gets 429) and when the walk takes the left-most entry (the spoofed
/// request gets 401).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_refused_credentials() {
    let (a, b) = ("198.51.100.1", "198.51.100.2");
    let s = server(trusting(&["127.0.0.1"], three_bad_tokens())).await;
    for _ in 0..3 {
        bad_token_for(&s, a).await.error(401, "unauthorized");
    }
    let m = bad_token_for(&s, a).await.error(429, "rate_limited");
    assert!(m.contains("--auth-fail-rate"), "{m}");
    // A client that writes another address in front of its own is still itself.
    bad_token_for(&s, &format!("203.0.113.50, {a}"))
        .await
        .error(429, "rate_limited");
    // So is one behind a second trusted hop, on several header lines.
    let r = Http::with_token(Some("not-a-jwt".into()))
        .send(
            "POST",
            &format!("{}/v1/batch", s.url()),
            &[
                ("content-type", "application/json"),
                ("x-forwarded-for", "203.0.113.51"),
                ("x-forwarded-for", &format!("{a}, 127.0.0.1")),
            ],
            "{}",
        )
        .await;
    r.error(429, "rate_limited");
    // The other client is not affected, nor is the proxy's own address.
    bad_token_for(&s, b).await.error(401, "unauthorized");
    bad_token_for(&s, "").await.error(401, "unauthorized");
    assert_eq!(s.app.admission.auth_failures.tracked(), 3);
    s.shutdown().await;

    // Without --trusted-proxy the header is ignored: one bucket, the peer's.
    let s = server(three_bad_tokens()).await;
    for _ in 0..3 {
        bad_token_for(&s, a).await.error(401, "unauthorized");
    }
    bad_token_for(&s, a).await.error(429, "rate_limited");
    bad_token_for(&s, b).await.error(429, "rate_limited");
    assert_eq!(s.app.admission.auth_failures.tracked(), 1);
    s.shutdown().await;
}

/// A peer outside every trusted range is its own client, whatever `X-Forwarded-For` it
/// sends: a fresh address per request does not escape the refused-credentials limit.
/// Fails when the header is read from any peer (every request is a new address, a 401).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_peers_forwarded_for_is_ignored() {
    let s = server(trusting(
        &["10.0.0.0/8", "2001:db8::/32"],
        three_bad_tokens(),
    ))
    .await;
    for i in 1..=3 {
        bad_token_for(&s, &format!("198.51.100.{i}"))
            .await
            .error(401, "unauthorized");
    }
    for i in 4..=6 {
        bad_token_for(&s, &format!("198.51.100.{i}"))
            .await
            .error(429, "rate_limited");
    }
    assert_eq!(s.app.admission.auth_failures.tracked(), 1);
    s.shutdown().await;
}

/// With `--trusted-proxy-header forwarded`, the client is the right-most untrusted `for=`
/// of `Forwarded`, and `X-Forwarded-For` (which that proxy would pass on as the client sent
/// it) is not read. Fails when the named header is not the one read (the request with a
/// fresh `X-Forwarded-For` gets 401).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_forwarded_named_its_for_is_the_client_and_x_forwarded_for_is_ignored() {
    let s = server(trusting(
        &["127.0.0.1"],
        Config {
            trusted_proxy_header: ForwardedHeader::Forwarded,
            ..three_bad_tokens()
        },
    ))
    .await;
    let bad = |headers: &'static [(&'static str, &'static str)]| {
        let url = format!("{}/v1/batch", s.url());
        async move {
            let mut h = vec![("content-type", "application/json")];
            h.extend_from_slice(headers);
            Http::with_token(Some("not-a-jwt".into()))
                .send("POST", &url, &h, "{}")
                .await
        }
    };
    let a = &[("forwarded", "for=198.51.100.1;proto=https")];
    for _ in 0..3 {
        bad(a).await.error(401, "unauthorized");
    }
    bad(a).await.error(429, "rate_limited");
    bad(&[
        ("forwarded", "for=203.0.113.7, for=198.51.100.1"),
        ("x-forwarded-for", "198.51.100.9"),
    ])
    .await
    .error(429, "rate_limited");
    bad(&[("forwarded", "for=\"[2001:db8::b]:443\"")])
        .await
        .error(401, "unauthorized");
    s.shutdown().await;
}

/// Opens a followed change feed forwarded for `client`; the response holds it open.
async fn open_feed(s: &Server, client: &str) -> hyper::Response<Incoming> {
    let req = hyper::Request::get(format!("{}/v1/changes", s.url()))
        .header("x-forwarded-for", client)
        .body(Empty::<Bytes>::new())
        .unwrap();
    Client::builder(TokioExecutor::new())
        .build_http()
        .request(req)
        .await
        .unwrap()
}

/// The per-caller limits of callers without a token `sub` count the forwarded client: the
/// batch rate and the change feed's open streams. Fails when they count the peer (the
/// second client is refused as well).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_caller_limits_of_anonymous_callers_count_the_forwarded_client() {
    let (a, b) = ("198.51.100.1", "2001:db8::b");
    let s = server(trusting(
        &["127.0.0.1"],
        Config {
            caller_rate: 1,
            caller_burst: 2,
            ..config()
        },
    ))
    .await;
    let anonymous = Http::anonymous();
    assert_eq!(batch_for(&anonymous, &s, a).await.status, 200);
    assert_eq!(batch_for(&anonymous, &s, a).await.status, 200);
    batch_for(&anonymous, &s, a)
        .await
        .error(429, "rate_limited");
    assert_eq!(batch_for(&anonymous, &s, b).await.status, 200);
    s.shutdown().await;

    let s = server(trusting(
        &["127.0.0.1"],
        Config {
            changes_max_per_caller: 1,
            ..config()
        },
    ))
    .await;
    let held = open_feed(&s, a).await;
    assert_eq!(held.status(), 200);
    assert_eq!(s.app.changes.open_for(&format!("ip:{a}")), 1);
    let poll = |client: &'static str| {
        let url = format!("{}/v1/changes?follow=false", s.url());
        async move {
            Http::anonymous()
                .send("GET", &url, &[("x-forwarded-for", client)], Bytes::new())
                .await
        }
    };
    let m = poll(a).await.error(429, "rate_limited");
    assert!(m.contains("--changes-max-per-caller"), "{m}");
    assert_eq!(poll(b).await.status, 200);
    drop(held);
    s.shutdown().await;
}

/// `/dev/token` refuses every request a trusted proxy forwarded, whatever it names: a
/// remote client, one it does not name by address, none at all (nginx's default, which
/// writes no header: every remote client would come from the proxy's loopback address), or
/// a loopback address, which a proxy that does not append to the header passes on as the
/// remote client wrote it. A loopback caller reaching the server directly, from an address
/// outside the trusted ranges, is answered. Without --trusted-proxy the header is ignored,
/// as before. Fails when the check looks at the peer (the remote client gets a token), or
/// believes a forwarded address.
#[tokio::test]
async fn dev_tokens_refuse_every_request_a_trusted_proxy_forwarded() {
    let dev = || Config {
        dev_tokens: true,
        ..config()
    };
    let ask = |s: &Server, forwarded_for: &'static str| {
        let url = format!("{}/dev/token", s.url());
        async move {
            let mut headers = vec![];
            if !forwarded_for.is_empty() {
                headers.push(("x-forwarded-for", forwarded_for));
            }
            Http::anonymous()
                .send("POST", &url, &headers, r#"{"access":"agent"}"#)
                .await
        }
    };
    let s = server(trusting(&["127.0.0.1"], dev())).await;
    for forwarded in [
        "203.0.113.9",
        "127.0.0.1, 203.0.113.9",
        "::1, [2001:db8::9]:443",
        "unknown",
        "_hidden",
        "127.0.0.1, unknown",
        "not an address",
        "",
        // What a remote client writes itself through a proxy that does not append.
        "127.0.0.1",
        "[::1]:50000",
    ] {
        let m = ask(&s, forwarded).await.error(403, "forbidden");
        assert!(m.contains("loopback"), "{forwarded:?}: {m}");
        // A loopback address forwarded: refused for being forwarded, not for the address.
        if forwarded.contains("127.0.0.1") && !forwarded.contains(',')
            || forwarded.starts_with("[::1]")
        {
            assert!(m.contains("trusted proxy"), "{forwarded:?}: {m}");
        }
    }
    s.shutdown().await;

    // A proxy trusted elsewhere: the loopback caller reaches the server directly.
    let s = server(trusting(&["10.0.0.0/8"], dev())).await;
    assert_eq!(ask(&s, "").await.status, 200);
    assert_eq!(ask(&s, "203.0.113.9").await.status, 200);
    s.shutdown().await;

    let s = server(dev()).await;
    assert_eq!(ask(&s, "203.0.113.9").await.status, 200);
    s.shutdown().await;
}

/// A `--trusted-proxy` value that is not an address or a range stops the command line,
/// saying what is allowed.
#[test]
fn a_bad_trusted_proxy_is_refused_at_start() {
    use clap::Parser;
    let e = Config::try_parse_from(["tilewarm-server", "--trusted-proxy", "proxy.local"])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--trusted-proxy") && e.contains("proxy.local") && e.contains("CIDR range"),
        "{e}"
    );
    let e = Config::try_parse_from(["tilewarm-server", "--trusted-proxy", "10.0.0.1/8"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("did you mean 10.0.0.0/8?"), "{e}");
    let c = Config::try_parse_from([
        "tilewarm-server",
        "--trusted-proxy",
        "10.0.0.0/8",
        "--trusted-proxy",
        "::1",
    ])
    .unwrap();
    let got: Vec<String> = c.trusted_proxies.iter().map(|t| t.to_string()).collect();
    assert_eq!(got, ["10.0.0.0/8", "::1/128"]);
    assert_eq!(c.trusted_proxy_header, ForwardedHeader::XForwardedFor);
    let c =
        Config::try_parse_from(["tilewarm-server", "--trusted-proxy-header", "forwarded"]).unwrap();
    assert_eq!(c.trusted_proxy_header, ForwardedHeader::Forwarded);
    let e = Config::try_parse_from(["tilewarm-server", "--trusted-proxy-header", "x-real-ip"])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("x-forwarded-for") && e.contains("forwarded"),
        "{e}"
    );
}
