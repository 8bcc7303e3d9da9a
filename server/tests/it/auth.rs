//! Who is calling (issue 14): the tier comes from a verified bearer token and the body's
//! `access` may only lower it. Each attack is its own test; a property checks that no
//! item above min(token tier, body tier) is ever served, with the in-process and the Redis
//! tier.

use std::path::PathBuf;

use base64::Engine as _;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use proptest::prelude::*;
use proptest::test_runner::{Config as PropConfig, TestRunner};
use serde_json::json;
use tilewarm::access::Access;
use tilewarm::protocol::{decode_response, Limits};
use tilewarm::tile::TileId;
use tilewarm_server::Server;

use crate::common::{
    config, now_s, redis_available, server, sign_hs256, token_for, Config, Http, RedisServer,
};

/// The densest data tile of the test city (every tier has items there).
fn tile() -> String {
    static TILE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TILE.get_or_init(|| {
        let o =
            tilewarm::origin::Origin::new(tilewarm::dataset::synthetic_city(42, 5_000)).unwrap();
        let (t, _) = o
            .occupied_tiles(14)
            .into_iter()
            .max_by_key(|&(_, n)| n)
            .unwrap();
        for a in Access::ALL {
            assert!(
                o.tile_items(t, Access::Agent).any(|i| i.access == a),
                "{a} in {t}"
            );
        }
        t.to_string()
    })
    .clone()
}

fn keys_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/auth_keys")
}

/// A file of `auth_keys/` (throwaway test keys and their JWKS).
pub(crate) fn key_bytes(name: &str) -> Vec<u8> {
    std::fs::read(keys_dir().join(name)).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn body(access: Access) -> String {
    format!(
        r#"{{"tiles":["{}"],"access":"{}"}}"#,
        tile(),
        access.as_str()
    )
}

/// A server verifying HS256 ([`common::TEST_SECRET`]) and the test JWKS (RS256 `rsa-1`,
/// ES256 `ec-1`).
async fn jwks_server(extra: impl FnOnce(&mut Config)) -> Server {
    let mut c = Config {
        jwks: Some(keys_dir().join("jwks.json").display().to_string()),
        ..config()
    };
    extra(&mut c);
    server(c).await
}

/// POSTs [`tile`] at `access` with `authorization` (exactly as given, or none).
async fn call(s: &Server, authorization: Option<&str>, access: Access) -> crate::common::Reply {
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = authorization {
        headers.push(("authorization", a));
    }
    Http::anonymous()
        .send(
            "POST",
            &format!("{}/v1/batch", s.url()),
            &headers,
            body(access),
        )
        .await
}

/// Asserts a 401 with `WWW-Authenticate: Bearer error="invalid_token"` whose message does
/// not quote `token`; returns the message.
fn refused(r: &crate::common::Reply, token: &str) -> String {
    let m = r.error(401, "unauthorized");
    assert_eq!(
        r.headers["www-authenticate"], "Bearer error=\"invalid_token\"",
        "{m}"
    );
    if token.len() > 8 {
        assert!(!m.contains(token), "the message quotes the token: {m}");
        // Nor any of its parts.
        for part in token.split('.').filter(|p| p.len() > 8) {
            assert!(
                !m.contains(part),
                "the message quotes part of the token: {m}"
            );
        }
    }
    m
}

/// The tiers of the items of a 200 answer, and its reported tier (body and header agree).
fn served(r: &crate::common::Reply) -> (Access, Vec<Access>) {
    assert_eq!(r.status, 200, "body: {}", r.text());
    let resp = decode_response(&r.body, &Limits::default()).unwrap();
    let reported = resp.access.expect("the response reports its tier");
    assert_eq!(r.headers["x-tilewarm-access"], reported.as_str());
    (reported, resp.items.iter().map(|i| i.access).collect())
}

// ---- tiers: token, body, effective ------------------------------------------------

#[tokio::test]
async fn anonymous_callers_get_public_and_asking_for_more_is_403() {
    let s = server(config()).await;
    let (tier, items) = served(&call(&s, None, Access::Public).await);
    assert_eq!(tier, Access::Public);
    assert!(!items.is_empty());
    assert!(items.iter().all(|&a| a == Access::Public), "{items:?}");
    // The issue's reproduction: no credential, body says agent.
    for asked in [Access::Registered, Access::Verified, Access::Agent] {
        let r = call(&s, None, asked).await;
        // The verified tier in the tier header: a client that asked above it follows it.
        assert_eq!(r.headers["x-tilewarm-access"], "public");
        let m = r.error(403, "forbidden");
        assert!(
            m.contains(&format!("\"{asked}\"")) && m.contains("\"public\""),
            "names both tiers: {m}"
        );
        // The core's wording, the edge's too.
        let above = tilewarm::access::AboveCredential {
            asked,
            verified: Access::Public,
        };
        assert_eq!(m, above.to_string());
    }
    s.shutdown().await;
}

#[tokio::test]
async fn the_body_may_lower_the_token_tier_never_raise_it() {
    let s = server(config()).await;
    let registered = format!("Bearer {}", token_for(Access::Registered));
    let (tier, items) = served(&call(&s, Some(&registered), Access::Registered).await);
    assert_eq!(tier, Access::Registered);
    assert!(items.contains(&Access::Registered), "{items:?}");
    assert!(items.iter().all(|&a| a <= Access::Registered));
    let (tier, items) = served(&call(&s, Some(&registered), Access::Public).await);
    assert_eq!(tier, Access::Public);
    assert!(items.iter().all(|&a| a == Access::Public));
    let r = call(&s, Some(&registered), Access::Agent).await;
    assert_eq!(r.headers["x-tilewarm-access"], "registered");
    let m = r.error(403, "forbidden");
    assert!(
        m.contains("\"agent\"") && m.contains("\"registered\""),
        "{m}"
    );
    let agent = format!("Bearer {}", token_for(Access::Agent));
    let (tier, items) = served(&call(&s, Some(&agent), Access::Agent).await);
    assert_eq!(tier, Access::Agent);
    assert!(items.contains(&Access::Agent), "{items:?}");
    s.shutdown().await;
}

#[tokio::test]
async fn rs256_and_es256_tokens_from_the_jwks_are_verified() {
    let s = jwks_server(|_| {}).await;
    let rsa = EncodingKey::from_rsa_der(&key_bytes("rsa_private.der"));
    let ec = EncodingKey::from_ec_der(&key_bytes("ec_private_pkcs8.der"));
    let claims = json!({"exp": now_s() + 600, "tilewarm_access": "verified", "sub": "u1"});
    for (alg, kid, key) in [
        (Algorithm::RS256, "rsa-1", &rsa),
        (Algorithm::ES256, "ec-1", &ec),
    ] {
        let mut h = Header::new(alg);
        h.kid = Some(kid.into());
        let t = encode(&h, &claims, key).unwrap();
        let (tier, _) = served(&call(&s, Some(&format!("Bearer {t}")), Access::Verified).await);
        assert_eq!(tier, Access::Verified, "{alg:?}");
    }
    s.shutdown().await;
}

#[tokio::test]
async fn a_token_without_the_tier_claim_is_public_and_the_claim_name_is_configurable() {
    let s = server(Config {
        jwt_tier_claim: "tier".into(),
        ..config()
    })
    .await;
    let t = sign_hs256(&json!({"exp": now_s() + 600, "tilewarm_access": "agent"}));
    let a = format!("Bearer {t}");
    call(&s, Some(&a), Access::Agent)
        .await
        .error(403, "forbidden");
    let t = sign_hs256(&json!({"exp": now_s() + 600, "tier": "agent"}));
    let (tier, _) = served(&call(&s, Some(&format!("Bearer {t}")), Access::Agent).await);
    assert_eq!(tier, Access::Agent);
    let t = sign_hs256(&json!({"exp": now_s() + 600, "tier": "admin"}));
    let m = refused(
        &call(&s, Some(&format!("Bearer {t}")), Access::Public).await,
        &t,
    );
    assert!(m.contains("not a tier"), "{m}");
    let t = sign_hs256(&json!({"exp": now_s() + 600, "tier": 3}));
    refused(
        &call(&s, Some(&format!("Bearer {t}")), Access::Public).await,
        &t,
    );
    s.shutdown().await;
}

// ---- attacks, one test each --------------------------------------------------------

#[tokio::test]
async fn attack_alg_none_is_refused() {
    let s = jwks_server(|_| {}).await;
    let claims = json!({"exp": now_s() + 600, "tilewarm_access": "agent"});
    for header in [
        json!({"alg": "none", "typ": "JWT"}),
        json!({"alg": "None"}),
        json!({"alg": "none", "kid": "rsa-1"}),
    ] {
        let t = format!(
            "{}.{}.",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        refused(
            &call(&s, Some(&format!("Bearer {t}")), Access::Public).await,
            &t,
        );
        // With a junk signature too.
        let t = format!("{t}c2ln");
        refused(
            &call(&s, Some(&format!("Bearer {t}")), Access::Public).await,
            &t,
        );
    }
    s.shutdown().await;
}

#[tokio::test]
async fn attack_hs_rs_confusion_with_the_public_key_as_hmac_secret_is_refused() {
    let s = jwks_server(|_| {}).await;
    let public = key_bytes("rsa_public_pkcs1.der");
    let jwks = std::fs::read_to_string(keys_dir().join("jwks.json")).unwrap();
    let claims = json!({"exp": now_s() + 600, "tilewarm_access": "agent"});
    // The public key in every form an attacker might guess the verifier uses as bytes.
    for secret in [public.clone(), jwks.clone().into_bytes()] {
        for kid in [Some("rsa-1"), Some("ec-1"), None] {
            let mut h = Header::new(Algorithm::HS256);
            h.kid = kid.map(str::to_owned);
            let t = encode(&h, &claims, &EncodingKey::from_secret(&secret)).unwrap();
            let m = refused(
                &call(&s, Some(&format!("Bearer {t}")), Access::Public).await,
                &t,
            );
            assert!(
                m.contains("allows only") || m.contains("signature"),
                "{kid:?}: {m}"
            );
        }
    }
    s.shutdown().await;
}

#[tokio::test]
async fn attack_tampered_payload_is_refused() {
    let s = server(config()).await;
    let t = token_for(Access::Registered);
    let parts: Vec<&str> = t.split('.').collect();
    let forged =
        json!({"exp": now_s() + 3600, "tilewarm_access": "agent", "sub": "test-registered"});
    let t2 = format!(
        "{}.{}.{}",
        parts[0],
        b64(forged.to_string().as_bytes()),
        parts[2]
    );
    refused(
        &call(&s, Some(&format!("Bearer {t2}")), Access::Public).await,
        &t2,
    );
    // A flipped signature byte.
    let mut sig = parts[2].to_string();
    let c = if sig.starts_with('A') { "B" } else { "A" };
    sig.replace_range(0..1, c);
    let t3 = format!("{}.{}.{}", parts[0], parts[1], sig);
    refused(
        &call(&s, Some(&format!("Bearer {t3}")), Access::Public).await,
        &t3,
    );
    // The untouched token still works (the refusals above are the tampering's doing).
    served(&call(&s, Some(&format!("Bearer {t}")), Access::Registered).await);
    s.shutdown().await;
}

#[tokio::test]
async fn attack_wrong_secret_is_refused() {
    let s = server(config()).await;
    let t = encode(
        &Header::default(),
        &json!({"exp": now_s() + 600, "tilewarm_access": "agent"}),
        &EncodingKey::from_secret(b"another-secret-of-at-least-32-bytes!!"),
    )
    .unwrap();
    let m = refused(
        &call(&s, Some(&format!("Bearer {t}")), Access::Public).await,
        &t,
    );
    assert!(m.contains("signature"), "{m}");
    s.shutdown().await;
}

#[tokio::test]
async fn attack_expired_token_is_refused_within_leeway_accepted() {
    let s = server(config()).await;
    let t = sign_hs256(&json!({"exp": now_s() - 120, "tilewarm_access": "agent"}));
    let m = refused(
        &call(&s, Some(&format!("Bearer {t}")), Access::Public).await,
        &t,
    );
    assert!(m.contains("expired"), "{m}");
    // Inside the default 30 s leeway.
    let t = sign_hs256(&json!({"exp": now_s() - 5, "tilewarm_access": "agent"}));
    served(&call(&s, Some(&format!("Bearer {t}")), Access::Agent).await);
    // No exp at all.
    let t = sign_hs256(&json!({"tilewarm_access": "agent"}));
    let m = refused(
        &call(&s, Some(&format!("Bearer {t}")), Access::Public).await,
        &t,
    );
    assert!(m.contains("exp"), "{m}");
    s.shutdown().await;
}

#[tokio::test]
async fn attack_nbf_in_the_future_is_refused() {
    let s = server(config()).await;
    let t = sign_hs256(
        &json!({"exp": now_s() + 3600, "nbf": now_s() + 600, "tilewarm_access": "agent"}),
    );
    let m = refused(
        &call(&s, Some(&format!("Bearer {t}")), Access::Public).await,
        &t,
    );
    assert!(m.contains("nbf"), "{m}");
    s.shutdown().await;
}

#[tokio::test]
async fn attack_wrong_issuer_or_audience_is_refused() {
    let s = server(Config {
        jwt_issuer: Some("https://idp.example".into()),
        jwt_audience: Some("tilewarm".into()),
        ..config()
    })
    .await;
    let base = || json!({"exp": now_s() + 600, "tilewarm_access": "agent"});
    let mut ok = base();
    ok["iss"] = json!("https://idp.example");
    ok["aud"] = json!("tilewarm");
    let t = sign_hs256(&ok);
    served(&call(&s, Some(&format!("Bearer {t}")), Access::Agent).await);
    for (field, value, says) in [
        ("iss", json!("https://evil.example"), "iss"),
        ("iss", serde_json::Value::Null, "iss"),
        ("aud", json!("other"), "aud"),
        ("aud", serde_json::Value::Null, "aud"),
    ] {
        let mut c = ok.clone();
        if value.is_null() {
            c.as_object_mut().unwrap().remove(field);
        } else {
            c[field] = value;
        }
        let t = sign_hs256(&c);
        let m = refused(
            &call(&s, Some(&format!("Bearer {t}")), Access::Public).await,
            &t,
        );
        assert!(m.contains(says), "{field}: {m}");
    }
    s.shutdown().await;
}

#[tokio::test]
async fn attack_unknown_kid_is_refused() {
    let s = jwks_server(|_| {}).await;
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("rsa-2".into());
    let t = encode(
        &h,
        &json!({"exp": now_s() + 600, "tilewarm_access": "agent"}),
        &EncodingKey::from_rsa_der(&key_bytes("rsa_private.der")),
    )
    .unwrap();
    let m = refused(
        &call(&s, Some(&format!("Bearer {t}")), Access::Public).await,
        &t,
    );
    assert!(m.contains("kid"), "{m}");
    // The RSA key cannot stand in for the EC key's kid either.
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("ec-1".into());
    let t = encode(
        &h,
        &json!({"exp": now_s() + 600, "tilewarm_access": "agent"}),
        &EncodingKey::from_rsa_der(&key_bytes("rsa_private.der")),
    )
    .unwrap();
    refused(
        &call(&s, Some(&format!("Bearer {t}")), Access::Public).await,
        &t,
    );
    s.shutdown().await;
}

#[tokio::test]
async fn attack_oversized_token_is_refused_unparsed() {
    let s = server(config()).await;
    let pad = "x".repeat(9 * 1024);
    let t = sign_hs256(&json!({"exp": now_s() + 600, "tilewarm_access": "agent", "pad": pad}));
    let m = refused(
        &call(&s, Some(&format!("Bearer {t}")), Access::Public).await,
        &t,
    );
    assert!(m.contains("at most 8192"), "{m}");
    s.shutdown().await;
}

#[tokio::test]
async fn attack_garbage_credentials_are_refused() {
    let s = server(config()).await;
    for a in [
        "Bearer garbage",
        "Bearer a.b.c",
        "Bearer ....",
        "Bearer eyJhbGciOiJIUzI1NiJ9.e30",
    ] {
        refused(&call(&s, Some(a), Access::Public).await, "");
    }
    // Non-UTF-8 bytes in the header.
    let r = Http::anonymous()
        .send_raw_header(
            &format!("{}/v1/batch", s.url()),
            b"Bearer \xff\xfe",
            body(Access::Public),
        )
        .await;
    refused(&r, "");
    s.shutdown().await;
}

/// RFC 6750 section 3.1: `Authorization: Bearer` with no token is a malformed request, 400
/// `bad_request` with `WWW-Authenticate: Bearer error="invalid_request"`, with a key
/// configured or not, on the batch and the tile route; not a 401 `invalid_token`, which
/// tells a client to fetch a fresh token for a request that carried none. Nothing was
/// checked, so it does not count against the address's refused credentials: past a burst
/// of 1, a bad token after three of them is still a 401, and only the next one a 429.
/// Before: 401 `invalid_token`, counted.
#[tokio::test]
async fn bearer_without_a_token_is_an_invalid_request() {
    let plain = server(Config {
        jwt_secret: None,
        ..config()
    })
    .await;
    let s = server(Config {
        auth_fail_burst: 1,
        ..config()
    })
    .await;
    for server in [&s, &plain] {
        for a in ["Bearer", "Bearer ", "bearer   ", " BEARER"] {
            let r = call(server, Some(a), Access::Public).await;
            let m = r.error(400, "bad_request");
            assert_eq!(
                r.headers["www-authenticate"], "Bearer error=\"invalid_request\"",
                "{a:?}: {m}"
            );
            assert!(m.contains("no token"), "{m}");
        }
        let r = Http::anonymous()
            .send(
                "GET",
                &format!("{}/v1/tiles/{}", server.url(), tile()),
                &[("authorization", "Bearer")],
                String::new(),
            )
            .await;
        r.error(400, "bad_request");
        assert_eq!(
            r.headers["www-authenticate"],
            "Bearer error=\"invalid_request\""
        );
    }
    plain.shutdown().await;
    refused(&call(&s, Some("Bearer garbage"), Access::Public).await, "");
    call(&s, Some("Bearer garbage"), Access::Public)
        .await
        .error(429, "rate_limited");
    s.shutdown().await;
}

/// RFC 6750 section 3.1: an `Authorization` of another scheme than `Bearer` is an
/// unsupported authentication method, answered 401 with the challenge alone (no error
/// code: no bearer token was sent, so none is invalid), with a key configured or not; a
/// verified token that lacks the tier asked for is a 403 with `insufficient_scope`; a 403
/// with no token, or with a gateway's tier header, carries no challenge. Before: the other
/// scheme got `error="invalid_token"` and the 403s no challenge.
#[tokio::test]
async fn challenges_follow_rfc_6750() {
    let plain = server(Config {
        jwt_secret: None,
        ..config()
    })
    .await;
    let s = server(config()).await;
    for server in [&s, &plain] {
        for a in [
            "Basic dXNlcjpwYXNz",
            "token-without-scheme",
            "Digest u=\"a\"",
        ] {
            let r = call(server, Some(a), Access::Public).await;
            let m = r.error(401, "unauthorized");
            assert_eq!(
                r.headers["www-authenticate"], "Bearer realm=\"tilewarm\"",
                "{a}: {m}"
            );
        }
    }
    plain.shutdown().await;
    let registered = format!("Bearer {}", token_for(Access::Registered));
    let r = call(&s, Some(&registered), Access::Agent).await;
    r.error(403, "forbidden");
    assert_eq!(
        r.headers["www-authenticate"],
        "Bearer error=\"insufficient_scope\""
    );
    // The same on a tile's GET.
    let r = Http::anonymous()
        .send(
            "GET",
            &format!("{}/v1/tiles/{}?access=agent", s.url(), tile()),
            &[("authorization", registered.as_str())],
            String::new(),
        )
        .await;
    r.error(403, "forbidden");
    assert_eq!(
        r.headers["www-authenticate"],
        "Bearer error=\"insufficient_scope\""
    );
    let r = call(&s, None, Access::Agent).await;
    r.error(403, "forbidden");
    assert!(r.headers.get("www-authenticate").is_none());
    s.shutdown().await;
    let s = server(Config {
        jwt_secret: None,
        trust_tier_header: Some("X-Gateway-Tier".into()),
        ..config()
    })
    .await;
    let r = Http::anonymous()
        .send(
            "POST",
            &format!("{}/v1/batch", s.url()),
            &[
                ("x-gateway-tier", "registered"),
                ("authorization", "Bearer x"),
            ],
            body(Access::Agent),
        )
        .await;
    r.error(403, "forbidden");
    assert!(r.headers.get("www-authenticate").is_none());
    s.shutdown().await;
}

// ---- configuration -----------------------------------------------------------------

#[tokio::test]
async fn without_a_key_every_caller_is_public_and_a_token_is_refused() {
    let s = server(Config {
        jwt_secret: None,
        ..config()
    })
    .await;
    // The environment may not supply one either in this test.
    assert!(std::env::var(tilewarm_server::auth::SECRET_ENV).is_err());
    let (tier, _) = served(&call(&s, None, Access::Public).await);
    assert_eq!(tier, Access::Public);
    call(&s, None, Access::Agent).await.error(403, "forbidden");
    let t = token_for(Access::Agent);
    let m = refused(
        &call(&s, Some(&format!("Bearer {t}")), Access::Public).await,
        &t,
    );
    assert!(m.contains("no key"), "{m}");
    s.shutdown().await;
}

#[tokio::test]
async fn key_flags_are_checked_at_startup() {
    for (c, says) in [
        (
            Config {
                jwt_secret: Some("short".into()),
                ..config()
            },
            "at least 32",
        ),
        (
            Config {
                trust_tier_header: Some("x-tier".into()),
                ..config()
            },
            "--trust-tier-header",
        ),
        (
            Config {
                jwt_secret: None,
                dev_tokens: true,
                ..config()
            },
            "--dev-tokens",
        ),
        (
            Config {
                jwks: Some("/nonexistent/jwks.json".into()),
                ..config()
            },
            "--jwks",
        ),
    ] {
        let e = match tilewarm_server::start(c).await {
            Ok(_) => panic!("starts, but {says} should refuse"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(says), "{e}");
    }
    // A JWKS with a symmetric key would reopen HS/RS confusion: refused.
    let dir = std::env::temp_dir().join(format!("tw-jwks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("oct.json");
    std::fs::write(&f, r#"{"keys":[{"kty":"oct","kid":"k","k":"c2VjcmV0"}]}"#).unwrap();
    let e = tilewarm_server::start(Config {
        jwks: Some(f.display().to_string()),
        ..config()
    })
    .await
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("symmetric"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn trust_tier_header_is_an_explicit_opt_in() {
    let s = server(Config {
        jwt_secret: None,
        trust_tier_header: Some("X-Gateway-Tier".into()),
        ..config()
    })
    .await;
    let post = |h: Vec<(&'static str, &'static str)>, a: Access| {
        let url = format!("{}/v1/batch", s.url());
        async move { Http::anonymous().send("POST", &url, &h, body(a)).await }
    };
    let (tier, _) = served(&post(vec![("x-gateway-tier", "verified")], Access::Verified).await);
    assert_eq!(tier, Access::Verified);
    post(vec![], Access::Registered)
        .await
        .error(403, "forbidden");
    refused(
        &post(vec![("x-gateway-tier", "root")], Access::Public).await,
        "",
    );
    s.shutdown().await;
    // Without the flag the same header is ignored.
    let s = server(config()).await;
    let r = Http::anonymous()
        .send(
            "POST",
            &format!("{}/v1/batch", s.url()),
            &[("x-gateway-tier", "agent")],
            body(Access::Agent),
        )
        .await;
    r.error(403, "forbidden");
    s.shutdown().await;
}

#[tokio::test]
async fn metrics_are_not_public_by_default() {
    let s = server(Config {
        metrics_public: false,
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..config()
    })
    .await;
    let http = Http::anonymous();
    http.get(&format!("{}/metrics", s.url()))
        .await
        .error(404, "not_found");
    let m = s.metrics_addr.expect("bound");
    let text = http.get(&format!("http://{m}/metrics")).await;
    assert_eq!(text.status, 200);
    assert!(text.text().contains("tilewarm_"), "{}", text.text());
    http.get(&format!("http://{m}/v1/batch"))
        .await
        .error(404, "not_found");
    s.shutdown().await;
}

/// `/healthz` answers anyone, without a token: it must not count the data set, whose items
/// above `public` an anonymous caller may not see, not even as a number (the total less the
/// public items it can list itself). The operator reads the count on `/metrics`
/// (`tilewarm_origin_dataset_items`), not public by default.
#[tokio::test]
async fn healthz_does_not_count_the_items() {
    let s = server(config()).await;
    let total = s.app.origin.dataset_items().expect("the memory origin");
    assert!(total > 0);
    let h = Http::anonymous().get(&format!("{}/healthz", s.url())).await;
    assert_eq!(h.status, 200);
    let body = h.json();
    assert_eq!(body["status"], "ok");
    let numbers: Vec<(&String, &serde_json::Value)> = body
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, v)| v.as_u64() == Some(total as u64) || k.contains("items"))
        .collect();
    assert!(
        numbers.is_empty(),
        "/healthz counts the data set: {numbers:?}"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn dev_tokens_only_with_the_flag() {
    let s = server(config()).await;
    let http = Http::anonymous();
    let url = format!("{}/dev/token", s.url());
    http.send("POST", &url, &[], r#"{"access":"agent"}"#)
        .await
        .error(404, "not_found");
    s.shutdown().await;

    let s = server(Config {
        dev_tokens: true,
        ..config()
    })
    .await;
    let url = format!("{}/dev/token", s.url());
    let r = http
        .send("POST", &url, &[], r#"{"access":"verified"}"#)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["access"], "verified");
    let t = v["token"].as_str().unwrap().to_owned();
    let (tier, _) = served(&call(&s, Some(&format!("Bearer {t}")), Access::Verified).await);
    assert_eq!(tier, Access::Verified);
    call(&s, Some(&format!("Bearer {t}")), Access::Agent)
        .await
        .error(403, "forbidden");
    http.send("POST", &url, &[], r#"{"access":"root"}"#)
        .await
        .error(400, "bad_request");
    s.shutdown().await;
}

#[tokio::test]
async fn cors_allows_the_authorization_header_and_exposes_the_tier() {
    let s = server(config()).await;
    let pre = Http::anonymous()
        .send(
            "OPTIONS",
            &format!("{}/v1/batch", s.url()),
            &[
                ("origin", "https://demo.example"),
                ("access-control-request-method", "POST"),
                (
                    "access-control-request-headers",
                    "authorization,content-type",
                ),
            ],
            "",
        )
        .await;
    assert_eq!(pre.status, 200);
    let allowed = pre.headers["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("authorization"), "{allowed}");
    let r = Http::new()
        .send(
            "POST",
            &format!("{}/v1/batch", s.url()),
            &[("origin", "https://demo.example")],
            body(Access::Public),
        )
        .await;
    assert_eq!(r.status, 200);
    let exposed = r.headers["access-control-expose-headers"].to_str().unwrap();
    assert!(exposed.contains("x-tilewarm-access"), "{exposed}");
    s.shutdown().await;
}

/// A page on another origin reads only the headers CORS exposes: the `Retry-After` of a
/// 429 (without it the package backs off on its own schedule, not the server's) and the
/// `WWW-Authenticate` of a 401 must be among them, as the edge worker exposes them.
#[tokio::test]
async fn cors_exposes_retry_after_and_www_authenticate_to_a_cross_origin_page() {
    let s = server(Config {
        caller_rate: 1,
        caller_burst: 1,
        ..config()
    })
    .await;
    let url = format!("{}/v1/batch", s.url());
    let origin = [("origin", "https://demo.example")];
    let exposed = |r: &crate::common::Reply| {
        r.headers["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .to_ascii_lowercase()
    };
    let agent = Http::new();
    assert_eq!(
        agent
            .send("POST", &url, &origin, body(Access::Public))
            .await
            .status,
        200
    );
    let refused = agent
        .send("POST", &url, &origin, body(Access::Public))
        .await;
    refused.error(429, "rate_limited");
    assert!(refused.headers.contains_key("retry-after"));
    assert!(
        exposed(&refused).contains("retry-after"),
        "{}",
        exposed(&refused)
    );
    let bad = Http::with_token(Some("not-a-jwt".into()))
        .send("POST", &url, &origin, body(Access::Public))
        .await;
    bad.error(401, "unauthorized");
    assert!(
        exposed(&bad).contains("www-authenticate"),
        "{}",
        exposed(&bad)
    );
    s.shutdown().await;
}

// ---- the property ------------------------------------------------------------------

/// One step of a sequence: which token (none or a tier), which body tier, which tiles.
#[derive(Debug, Clone)]
struct Step {
    token: Option<Access>,
    asked: Access,
    tiles: Vec<usize>,
    ids: Vec<usize>,
}

fn step(n_tiles: usize, n_ids: usize) -> impl Strategy<Value = Step> {
    let tier = || prop::sample::select(Access::ALL.to_vec());
    (
        prop::option::of(tier()),
        tier(),
        prop::collection::vec(0..n_tiles, 1..4),
        prop::collection::vec(0..n_ids, 0..4),
    )
        .prop_map(|(token, asked, tiles, ids)| Step {
            token,
            asked,
            tiles,
            ids,
        })
}

/// Runs request sequences against `s`: every answer is a 403 exactly when the body asks
/// above the token, and otherwise holds no item above min(token, body), reports that tier,
/// and lists an id above it as missing.
fn no_item_above_the_verified_tier(s: &Server, cases: u32) {
    let rt = tokio::runtime::Handle::current();
    let o = tilewarm::origin::Origin::new(tilewarm::dataset::synthetic_city(42, 5_000)).unwrap();
    let mut tiles: Vec<TileId> = o.occupied_tiles(14).into_iter().map(|(t, _)| t).collect();
    tiles.sort();
    tiles.truncate(24);
    // Ids of every tier, so id lookups cross tiers too.
    let ids: Vec<(String, Access)> = tiles
        .iter()
        .flat_map(|&t| {
            o.tile_items(t, Access::Agent)
                .map(|i| (i.id.clone(), i.access))
        })
        .take(200)
        .collect();
    let mut runner = TestRunner::new(PropConfig {
        cases,
        failure_persistence: None,
        ..PropConfig::default()
    });
    let url = format!("{}/v1/batch", s.url());
    let result = runner.run(
        &prop::collection::vec(step(tiles.len(), ids.len()), 1..6),
        |steps| {
            for st in steps {
                let verified = st.token.unwrap_or(Access::Public);
                let want = verified.min(st.asked);
                let auth = st.token.map(|t| format!("Bearer {}", token_for(t)));
                let mut headers = vec![];
                if let Some(a) = &auth {
                    headers.push(("authorization", a.as_str()));
                }
                let req = json!({
                    "tiles": st.tiles.iter().map(|&i| tiles[i].to_string()).collect::<Vec<_>>(),
                    "ids": st.ids.iter().map(|&i| ids[i].0.clone()).collect::<Vec<_>>(),
                    "access": st.asked.as_str(),
                });
                let r = tokio::task::block_in_place(|| {
                    rt.block_on(Http::anonymous().send("POST", &url, &headers, req.to_string()))
                });
                if st.asked > verified {
                    prop_assert_eq!(r.status, 403, "{:?}: {}", st, r.text());
                    continue;
                }
                prop_assert_eq!(r.status, 200, "{:?}: {}", st, r.text());
                let resp = decode_response(&r.body, &Limits::default()).unwrap();
                prop_assert_eq!(resp.access, Some(want));
                for it in &resp.items {
                    prop_assert!(
                        it.access <= want,
                        "{:?} served {:?} to {:?}",
                        st,
                        it.access,
                        want
                    );
                }
                for &i in &st.ids {
                    let (id, a) = &ids[i];
                    let listed = resp.items.iter().any(|it| &it.id == id);
                    prop_assert_eq!(listed, *a <= want, "id {} ({:?}) for {:?}", id, a, want);
                }
            }
            Ok(())
        },
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn property_no_item_above_min_of_token_and_body_in_process() {
    let s = server(config()).await;
    no_item_above_the_verified_tier(&s, 48);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn property_no_item_above_min_of_token_and_body_redis() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let s = server(Config {
        redis: Some(redis.url()),
        redis_prefix: format!("auth{}:", std::process::id()),
        ..config()
    })
    .await;
    no_item_above_the_verified_tier(&s, 32);
    s.shutdown().await;
}

#[tokio::test]
async fn jwks_from_a_url_is_read_at_startup() {
    use axum::routing::get;
    let text = std::fs::read_to_string(keys_dir().join("jwks.json")).unwrap();
    let app = axum::Router::new().route("/jwks.json", get(move || async move { text }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let idp = tokio::spawn(async move { axum::serve(listener, app).await });
    let s = server(Config {
        jwks: Some(format!("http://{addr}/jwks.json")),
        ..config()
    })
    .await;
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("ec-1".into());
    let t = encode(
        &h,
        &json!({"exp": now_s() + 600, "tilewarm_access": "registered"}),
        &EncodingKey::from_ec_der(&key_bytes("ec_private_pkcs8.der")),
    )
    .unwrap();
    let (tier, _) = served(&call(&s, Some(&format!("Bearer {t}")), Access::Registered).await);
    assert_eq!(tier, Access::Registered);
    s.shutdown().await;
    // A URL that does not answer with a key set stops startup with a message.
    let e = tilewarm_server::start(Config {
        jwks: Some(format!("http://{addr}/nope")),
        ..config()
    })
    .await
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("--jwks") && e.contains("404"), "{e}");
    idp.abort();
}

/// `/dev/token` answers only a peer it knows is loopback: served without the peer
/// address (as by a proxy or another embedding of the router), it refuses.
#[tokio::test]
async fn dev_tokens_refuse_a_peer_not_known_to_be_loopback() {
    let app = tilewarm_server::build(Config {
        dev_tokens: true,
        ..config()
    })
    .await
    .unwrap();
    let router = tilewarm_server::http::router(app).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move { axum::serve(listener, router).await });
    let r = Http::anonymous()
        .send(
            "POST",
            &format!("http://{addr}/dev/token"),
            &[],
            r#"{"access":"agent"}"#,
        )
        .await;
    let m = r.error(403, "forbidden");
    assert!(m.contains("loopback"), "{m}");
    task.abort();
}
