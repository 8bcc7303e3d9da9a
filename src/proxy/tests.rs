//! The edge proxy against the in-memory origin.

use super::*;
use crate::origin::Origin;
use proptest::prelude::*;
use serde_json::value::RawValue;

fn raw(s: &str) -> RawData {
    RawValue::from_string(s.to_owned()).unwrap()
}

fn tile(s: &str) -> TileId {
    s.parse().unwrap()
}

/// Items in and around 14/2624/5721 (Seattle), one per tier per data tile of a 3×3 block,
/// plus a second public item in the centre tile.
fn items() -> Vec<Item<RawData>> {
    let centre = tile("14/2624/5721");
    let mut out = Vec::new();
    for dx in -1..=1i64 {
        for dy in -1..=1i64 {
            let t = centre.offset(dx, dy).unwrap();
            let b = t.bounds();
            for (k, access) in Access::ALL.into_iter().enumerate() {
                let f = (k as f64 + 1.0) / 6.0;
                out.push(Item {
                    id: format!("{}-{}-{}", t.x(), t.y(), access.as_str()),
                    lon: b.west + (b.east - b.west) * f,
                    lat: b.south + (b.north - b.south) * f,
                    class: "active".into(),
                    access,
                    ttl: None,
                    data: raw(&format!("{{\"k\":{k}}}")),
                });
            }
        }
    }
    let b = centre.bounds();
    out.push(Item {
        id: "extra".into(),
        lon: b.west + (b.east - b.west) * 0.9,
        lat: b.south + (b.north - b.south) * 0.9,
        class: "off_market".into(),
        access: Access::Public,
        ttl: Some(60),
        data: raw("null"),
    });
    out
}

fn origin() -> Origin<RawData> {
    Origin::new(items()).unwrap()
}

/// Runs one request through the proxy against `origin`; the forwarded request (if any)
/// and the answer's decoded body.
fn run(
    proxy: &mut Proxy,
    origin: &Origin<RawData>,
    request: BatchRequest,
    now: u64,
) -> (Option<BatchRequest>, Answer, BatchResponse<RawData>) {
    let pending = proxy.begin(request, now).unwrap();
    let forwarded = pending.origin_request().cloned();
    let body = forwarded
        .as_ref()
        .map(|r| origin.answer(r, Some(300)).to_json())
        .unwrap_or_default();
    let answer = proxy.complete(pending, answered(&body), now);
    let decoded = decode_response(answer.body.as_bytes(), &Limits::default()).unwrap();
    (forwarded, answer, decoded)
}

/// The origin's 200 answer with `body`.
fn answered(body: &str) -> OriginOutcome<'_> {
    OriginOutcome::Answer {
        status: 200,
        body: body.as_bytes(),
        retry_after_ms: None,
    }
}

fn req(tiles: &[&str], ids: &[&str], access: Access) -> BatchRequest {
    BatchRequest {
        tiles: tiles.iter().map(|t| tile(t)).collect(),
        ids: ids.iter().map(|s| s.to_string()).collect(),
        access,
    }
}

/// A request for `tiles` (no ids) at `access`.
fn tiles_req(tiles: &[TileId], access: Access) -> BatchRequest {
    BatchRequest {
        tiles: tiles.to_vec(),
        ids: vec![],
        access,
    }
}

fn no_warm() -> ProxyConfig {
    ProxyConfig {
        warm_ring: 0,
        ..ProxyConfig::default()
    }
}

/// The ids and items of a response, sorted, for comparison with the origin's answer.
type Shape = (Vec<(TileId, Vec<String>)>, Vec<String>, Vec<String>);

fn shape(r: &BatchResponse<RawData>) -> Shape {
    let mut tiles: Vec<_> = r
        .tiles
        .iter()
        .map(|l| {
            let mut ids = l.ids.clone();
            ids.sort();
            (l.tile, ids)
        })
        .collect();
    tiles.sort();
    let mut items: Vec<String> = r
        .items
        .iter()
        .map(|i| {
            format!(
                "{}|{}|{}|{}",
                i.id,
                i.class,
                i.access.as_str(),
                i.data.get()
            )
        })
        .collect();
    items.sort();
    let mut missing = r.missing.clone();
    missing.sort();
    (tiles, items, missing)
}

#[test]
fn repeat_request_is_a_hit_with_the_same_answer() {
    let o = origin();
    let mut p = Proxy::new(no_warm()).unwrap();
    let r = req(
        &["14/2624/5721", "14/2625/5721"],
        &["extra", "nope"],
        Access::Verified,
    );
    let (fwd, first, body1) = run(&mut p, &o, r.clone(), 1_000);
    assert_eq!(first.verdict, Verdict::Miss);
    assert_eq!(fwd.unwrap(), r);
    let (fwd, second, body2) = run(&mut p, &o, r.clone(), 2_000);
    assert_eq!(fwd, None);
    assert_eq!(second.verdict, Verdict::Hit);
    assert_eq!(shape(&body1), shape(&body2));
    // Both equal what the origin says directly.
    assert_eq!(shape(&body2), shape(&o.answer(&r, None)));
    assert_eq!(body2.missing, vec!["nope".to_string()]);
    assert_eq!(p.stats().origin_requests, 1);
}

#[test]
fn partial_hit_forwards_only_the_misses() {
    let o = origin();
    let mut p = Proxy::new(no_warm()).unwrap();
    run(
        &mut p,
        &o,
        req(&["14/2624/5721"], &["extra"], Access::Public),
        0,
    );
    let r = req(
        &["14/2624/5721", "14/2625/5721", "14/2624/5722"],
        &["extra", "2625-5721-public"],
        Access::Public,
    );
    let (fwd, a, body) = run(&mut p, &o, r.clone(), 10);
    assert_eq!(a.verdict, Verdict::Partial);
    assert_eq!(
        fwd.unwrap(),
        req(
            &["14/2625/5721", "14/2624/5722"],
            &["2625-5721-public"],
            Access::Public
        )
    );
    assert_eq!(shape(&body), shape(&o.answer(&r, None)));
    // Finer tiles are answered from their cached data tile, filtered by position.
    let fine = req(&["15/5248/11442", "16/10496/22884"], &[], Access::Public);
    let (fwd, a, body) = run(&mut p, &o, fine.clone(), 20);
    assert_eq!((fwd, a.verdict), (None, Verdict::Hit));
    assert_eq!(shape(&body), shape(&o.answer(&fine, None)));
}

#[test]
fn fine_misses_forward_their_data_tile_once() {
    let o = origin();
    let mut p = Proxy::new(no_warm()).unwrap();
    let fine = req(
        &["15/5248/11442", "15/5249/11442", "16/10496/22884"],
        &[],
        Access::Agent,
    );
    let (fwd, a, body) = run(&mut p, &o, fine.clone(), 0);
    assert_eq!(a.verdict, Verdict::Miss);
    assert_eq!(fwd.unwrap().tiles, vec![tile("14/2624/5721")]);
    assert_eq!(shape(&body), shape(&o.answer(&fine, None)));
}

#[test]
fn coarse_tiles_split_onto_data_tiles_and_far_ones_pass_through() {
    let o = origin();
    let mut p = Proxy::new(no_warm()).unwrap();
    let coarse = req(&["13/1312/2860"], &[], Access::Registered);
    let (fwd, a, body) = run(&mut p, &o, coarse.clone(), 0);
    assert_eq!(
        (fwd.unwrap().tiles, a.verdict),
        (coarse.tiles.clone(), Verdict::Miss)
    );
    assert_eq!(shape(&body), shape(&o.answer(&coarse, None)));
    // Its four data tiles are now known (some empty), and so is the coarse tile.
    for t in [
        "14/2624/5720",
        "14/2624/5721",
        "14/2625/5720",
        "14/2625/5721",
        "13/1312/2860",
    ] {
        let r = req(&[t], &[], Access::Registered);
        let (fwd, a, body) = run(&mut p, &o, r.clone(), 5);
        assert_eq!((fwd, a.verdict), (None, Verdict::Hit), "{t}");
        assert_eq!(shape(&body), shape(&o.answer(&r, None)), "{t}");
    }
    // Four levels coarser (past the default `split_levels`, 3): always forwarded.
    let far = req(&["10/164/357"], &[], Access::Registered);
    for _ in 0..2 {
        let (fwd, a, body) = run(&mut p, &o, far.clone(), 5);
        assert_eq!((fwd.unwrap(), a.verdict), (far.clone(), Verdict::Miss));
        assert_eq!(shape(&body), shape(&o.answer(&far, None)));
    }
}

#[test]
fn items_only_a_direct_tile_lists_are_answered_not_cached() {
    let o = origin();
    let mut p = Proxy::new(no_warm()).unwrap();
    // Four levels coarser than the data zoom: forwarded, and by the policy's write-back
    // rule neither its list nor its items are stored.
    let far = req(&["10/164/357"], &[], Access::Public);
    let (_, _, body) = run(&mut p, &o, far, 0);
    let id = "2624-5721-public";
    assert!(body.items.iter().any(|i| i.id == id));
    let by_id = req(&[], &[id], Access::Public);
    let (fwd, a, body) = run(&mut p, &o, by_id.clone(), 5);
    assert_eq!((fwd, a.verdict), (Some(by_id.clone()), Verdict::Miss));
    assert_eq!(shape(&body), shape(&o.answer(&by_id, None)));
    // Asked for by id, it is stored.
    let (fwd, a, _) = run(&mut p, &o, by_id, 6);
    assert_eq!((fwd, a.verdict), (None, Verdict::Hit));
}

#[test]
fn agent_warmed_tile_gives_a_public_caller_nothing_above_public() {
    let o = origin();
    let mut p = Proxy::new(ProxyConfig::default()).unwrap();
    let t = "14/2624/5721";
    let (_, a, body) = run(
        &mut p,
        &o,
        req(&[t], &["2624-5721-agent"], Access::Agent),
        0,
    );
    assert_eq!(a.verdict, Verdict::Miss);
    assert!(body.items.iter().any(|i| i.access == Access::Agent));
    let (fwd, a, body) = run(
        &mut p,
        &o,
        req(&[t], &["2624-5721-agent"], Access::Public),
        1,
    );
    // The public tier's cache is separate: a miss, forwarded at the public tier.
    assert_eq!(a.verdict, Verdict::Miss);
    assert_eq!(fwd.unwrap().access, Access::Public);
    assert!(body.items.iter().all(|i| i.access == Access::Public));
    assert_eq!(body.missing, vec!["2624-5721-agent".to_string()]);
}

#[test]
fn an_origin_that_leaks_higher_tiers_is_filtered_and_not_cached() {
    let o = origin();
    let mut p = Proxy::new(no_warm()).unwrap();
    let r = req(&["14/2624/5721"], &["2624-5721-agent"], Access::Public);
    let pending = p.begin(r.clone(), 0).unwrap();
    // A broken origin answers at the agent tier.
    let leaky = BatchRequest {
        access: Access::Agent,
        ..pending.origin_request().unwrap().clone()
    };
    let body = o.answer(&leaky, None).to_json();
    let a = p.complete(pending, answered(&body), 0);
    let got = decode_response(a.body.as_bytes(), &Limits::default()).unwrap();
    assert!(got.items.iter().all(|i| i.access == Access::Public));
    assert_eq!(got.missing, vec!["2624-5721-agent".to_string()]);
    // Registered, verified and agent in the tile (the agent one also asked for by id).
    assert_eq!(p.stats().dropped_above_tier, 3);
    let (fwd, a, got) = run(&mut p, &o, r, 1);
    assert_eq!((fwd, a.verdict), (None, Verdict::Hit));
    assert!(got.items.iter().all(|i| i.access == Access::Public));
}

#[test]
fn answers_report_their_tier_and_an_origin_answer_for_another_tier_is_refused() {
    let o = origin();
    let mut p = Proxy::new(no_warm()).unwrap();
    let (_, a, got) = run(&mut p, &o, req(&["14/2624/5721"], &[], Access::Verified), 0);
    assert_eq!(
        (a.access, got.access),
        (Access::Verified, Some(Access::Verified))
    );

    // The origin filtered for `registered` (say the edge's credential gives no more):
    // not usable for an `agent` request, and nothing is cached under `agent`.
    let r = req(&["14/2625/5721"], &[], Access::Agent);
    let pending = p.begin(r.clone(), 0).unwrap();
    let mut lower = o.answer(
        &BatchRequest {
            access: Access::Registered,
            ..r.clone()
        },
        None,
    );
    lower.access = Some(Access::Registered);
    let body = lower.to_json();
    let a = p.complete(pending, answered(&body), 0);
    assert_eq!(a.status, 502, "{}", a.body);
    assert!(
        a.body
            .contains(r#"answered for tier \"registered\", not the \"agent\""#),
        "{}",
        a.body
    );
    assert_eq!(p.cache_stats(Access::Agent).entries, 0);
    // Reported as asked: used.
    lower.access = Some(Access::Agent);
    let pending = p.begin(r, 0).unwrap();
    let body = lower.to_json();
    let a = p.complete(pending, answered(&body), 0);
    assert_eq!(a.status, 200);
}

#[test]
fn origin_failures_serve_what_is_cached() {
    let o = origin();
    let mut p = Proxy::new(no_warm()).unwrap();
    run(&mut p, &o, req(&["14/2624/5721"], &[], Access::Public), 0);
    let both = req(
        &["14/2624/5721", "14/2625/5721"],
        &["extra", "2625-5722-public"],
        Access::Public,
    );
    let cases: [(OriginOutcome<'_>, u16, ErrorCode); 7] = [
        (OriginOutcome::Timeout(""), 504, ErrorCode::UpstreamTimeout),
        (
            OriginOutcome::TooLarge {
                status: 200,
                bytes: 9 << 20,
                retry_after_ms: None,
            },
            502,
            ErrorCode::UpstreamError,
        ),
        (
            OriginOutcome::Unreachable("connection refused"),
            502,
            ErrorCode::UpstreamError,
        ),
        (
            OriginOutcome::Answer {
                status: 500,
                body: b"oops",
                retry_after_ms: None,
            },
            502,
            ErrorCode::UpstreamError,
        ),
        (
            OriginOutcome::Answer {
                status: 200,
                body: b"{\"tiles\":7}",
                retry_after_ms: None,
            },
            502,
            ErrorCode::UpstreamError,
        ),
        (
            OriginOutcome::Answer {
                status: 429,
                body: br#"{"error":{"code":"rate_limited","message":"slow down"}}"#,
                retry_after_ms: None,
            },
            429,
            ErrorCode::RateLimited,
        ),
        (
            OriginOutcome::Answer {
                status: 503,
                body: br#"{"error":{"code":"overloaded","message":"at capacity"}}"#,
                retry_after_ms: Some(3_000),
            },
            503,
            ErrorCode::Overloaded,
        ),
    ];
    for (outcome, status, code) in cases {
        // Nothing cached for this one: the error itself.
        let pending = p
            .begin(req(&["14/2625/5722"], &[], Access::Public), 0)
            .unwrap();
        let a = p.complete(pending, outcome, 0);
        assert_eq!((a.status, a.verdict), (status, Verdict::Miss));
        assert_eq!(decode_error(a.body.as_bytes()).unwrap().code, code);
        // The error is the answer (its body): no x-tilewarm-origin-error, which names the
        // failure behind the part a partial answer leaves out.
        assert_eq!(a.origin_error, None);
        // Partly cached: 200 with the cached tile, the rest left out, the error named.
        let pending = p.begin(both.clone(), 0).unwrap();
        let a = p.complete(pending, outcome, 0);
        assert_eq!((a.status, a.verdict), (200, Verdict::Partial));
        assert_eq!(a.origin_error.as_ref().unwrap().code, code);
        let got = decode_response(a.body.as_bytes(), &Limits::default()).unwrap();
        assert_eq!(got.tiles.len(), 1);
        assert_eq!(got.tiles[0].tile, tile("14/2624/5721"));
        assert_eq!(got.tiles[0].ids.len(), 2);
        assert!(got.missing.is_empty());
        let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(v["error"]["code"], code.as_str());
        // Exactly what is not answered is listed: never a silent hole.
        assert_eq!(v["error"]["tiles"], serde_json::json!(["14/2625/5721"]));
        assert_eq!(v["error"]["ids"], serde_json::json!(["2625-5722-public"]));
        assert!(a.warm.is_none());
        // A 200 never carries a Retry-After.
        assert_eq!(a.retry_after_s, None);
    }
}

/// The answer of `p` to a public request for tile `t` alone whose origin call ends in
/// `outcome`, checked to be `want` (its status and `Retry-After`), and the error it holds.
fn refused_alone(
    p: &mut Proxy,
    t: &str,
    outcome: OriginOutcome<'_>,
    want: (u16, Option<u64>),
) -> (Answer, ErrorBody) {
    let pending = p.begin(req(&[t], &[], Access::Public), 0).unwrap();
    let a = p.complete(pending, outcome, 0);
    assert_eq!((a.status, a.retry_after_s), want, "{outcome:?}");
    let e = decode_error(a.body.as_bytes()).unwrap();
    (a, e)
}

/// An origin's 503 (the server at capacity, or its own origin) is a 503 `overloaded`, as
/// the server answers its origin's, not a 502: a client behind the edge backs off as one
/// in front of the server does. Its `Retry-After` goes on, rounded up to whole seconds, at
/// least 1 and at most an hour (as the server caps an upstream's), 1 s when it sent none;
/// a 429's the same way. Other 5xx and a network failure stay 502, with no `Retry-After`.
/// Fails before the 503 was its own case (502 `upstream_error`, no `Retry-After`).
#[test]
fn an_origin_at_capacity_is_a_503_overloaded_with_its_retry_after_capped() {
    let mut p = Proxy::new(no_warm()).unwrap();
    let overloaded = br#"{"error":{"code":"overloaded","message":"every batch slot is taken"}}"#;
    let answer = |status, retry_after_ms| OriginOutcome::Answer {
        status,
        body: overloaded,
        retry_after_ms,
    };
    let cases = [
        (answer(503, Some(3_000)), 503, Some(3)),
        (answer(503, Some(2_001)), 503, Some(3)),
        (answer(503, Some(0)), 503, Some(1)),
        (answer(503, Some(86_400_000)), 503, Some(MAX_RETRY_AFTER_S)),
        (answer(503, Some(u64::MAX)), 503, Some(MAX_RETRY_AFTER_S)),
        (answer(503, None), 503, Some(DEFAULT_RETRY_AFTER_S)),
        (answer(429, Some(7_000)), 429, Some(7)),
        (answer(429, None), 429, Some(DEFAULT_RETRY_AFTER_S)),
        (answer(500, Some(5_000)), 502, None),
        (answer(504, Some(5_000)), 502, None),
        (OriginOutcome::Unreachable("connection reset"), 502, None),
        (OriginOutcome::Timeout(""), 504, None),
    ];
    for (outcome, status, retry_after_s) in cases {
        let (a, e) = refused_alone(&mut p, "14/2625/5722", outcome, (status, retry_after_s));
        assert_eq!(e.code.http_status(), status);
        assert_eq!(a.origin_error, None, "an error answer is the error itself");
        if status == 503 {
            assert_eq!(e.code, ErrorCode::Overloaded);
            // The origin's message, said to be the origin's.
            assert_eq!(
                e.message,
                "the origin is at capacity (HTTP 503): every batch slot is taken"
            );
        }
    }
}

#[test]
fn an_origin_answer_over_the_body_limit_is_named_as_such_with_the_size_and_the_limit() {
    let mut p = Proxy::new(no_warm()).unwrap();
    let max = p.config().limits.max_body_bytes;
    let pending = p
        .begin(req(&["14/2625/5722"], &[], Access::Public), 0)
        .unwrap();
    let outcome = OriginOutcome::TooLarge {
        status: 200,
        bytes: 12_582_912,
        retry_after_ms: None,
    };
    let a = p.complete(pending, outcome, 0);
    assert_eq!(a.status, 502);
    let e = decode_error(a.body.as_bytes()).unwrap();
    assert_eq!(e.code, ErrorCode::UpstreamError);
    // What was wrong (the answer's size, not the origin's reachability) and what is allowed.
    assert_eq!(
        e.message,
        format!(
            "the origin's answer (HTTP 200) is too large: 12582912 bytes or more, at most {max} \
             are allowed"
        )
    );
    assert_eq!(p.stats().origin_failures, 1);
}

/// An origin's refusal whose body is over the body limit keeps its meaning: a `503` is
/// `503 overloaded` with its `Retry-After` (and warming waits for it), a `429` is a `429`;
/// the message says the body was too large to read. Before, any such answer was a `502`
/// with no `Retry-After`, and warming went on at once.
#[test]
fn an_origin_refusal_over_the_body_limit_keeps_its_status_and_retry_after() {
    let o = origin();
    let max = Limits::default().max_body_bytes;
    let too_large = |status, retry_after_ms| OriginOutcome::TooLarge {
        status,
        bytes: 9 << 20,
        retry_after_ms,
    };
    let cases = [
        (
            too_large(503, Some(30_000)),
            503,
            ErrorCode::Overloaded,
            Some(30),
        ),
        (too_large(503, None), 503, ErrorCode::Overloaded, Some(1)),
        (
            too_large(429, Some(7_000)),
            429,
            ErrorCode::RateLimited,
            Some(7),
        ),
        (
            too_large(500, Some(5_000)),
            502,
            ErrorCode::UpstreamError,
            None,
        ),
        (
            too_large(200, Some(5_000)),
            502,
            ErrorCode::UpstreamError,
            None,
        ),
    ];
    for (outcome, status, code, retry_after_s) in cases {
        let mut p = Proxy::new(ProxyConfig::default()).unwrap();
        let (_, e) = refused_alone(&mut p, "14/2630/5730", outcome, (status, retry_after_s));
        assert_eq!(e.code, code);
        let s = outcome_status(&outcome);
        assert!(
            e.message.ends_with(&format!(
                "the origin's answer (HTTP {s}) is too large: 9437184 bytes or more, at most \
                 {max} are allowed"
            )),
            "{}",
            e.message
        );
        // Warming waits for a 429's or 503's Retry-After, as after one with a small body.
        let (_, a, _) = run(&mut p, &o, req(&["14/2624/5721"], &[], Access::Public), 1);
        assert_eq!(a.warm.is_none(), retry_after_s.is_some(), "{outcome:?}");
    }
}

/// The status of an origin's outcome, if it answered.
fn outcome_status(outcome: &OriginOutcome<'_>) -> u16 {
    match *outcome {
        OriginOutcome::Answer { status, .. } | OriginOutcome::TooLarge { status, .. } => status,
        _ => 0,
    }
}

/// A proxy (no warming) allowing items' `data` of at most 64 bytes.
fn data_limit_64() -> Proxy {
    Proxy::new(ProxyConfig {
        limits: Limits {
            max_data_bytes: 64,
            ..Limits::default()
        },
        ..no_warm()
    })
    .unwrap()
}

/// The test origin with item `extra`'s `data` grown to 102 bytes (a string of 100 `x`).
fn extra_grown() -> Origin<RawData> {
    let mut big = items();
    let at = big.iter().position(|it| it.id == "extra").unwrap();
    big[at].data = raw(&format!("\"{}\"", "x".repeat(100)));
    Origin::new(big).unwrap()
}

/// An origin item whose `data` is over `Limits::max_data_bytes` is neither cached nor
/// served: its tile is answered (and cached) without it, and asked for by id it is
/// unanswered, named with its size and the limit; the rest of the answer is served.
#[test]
fn an_origin_item_over_the_data_limit_is_left_out_and_named_not_the_whole_answer() {
    let o = extra_grown();
    let mut p = data_limit_64();
    let r = req(
        &["14/2624/5721"],
        &["extra", "2624-5721-public"],
        Access::Public,
    );
    let (_, a, d) = run(&mut p, &o, r.clone(), 0);
    assert_eq!(a.status, 200);
    assert!(
        !d.tiles[0].ids.contains(&"extra".to_string()),
        "{:?}",
        d.tiles
    );
    assert!(d.tiles[0].ids.contains(&"2624-5721-public".to_string()));
    assert!(d.items.iter().all(|it| it.id != "extra") && d.missing.is_empty());
    let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(v["error"]["code"], "payload_too_large", "{v}");
    assert_eq!(v["error"]["ids"], serde_json::json!(["extra"]));
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.ends_with("item \"extra\": data is 102 bytes, at most 64 are allowed"),
        "{msg}"
    );
    assert_eq!(p.stats().items_too_large, 1);
    // The tile was cached without it: a hit, with no word of it.
    let (forwarded, a, d) = run(&mut p, &o, req(&["14/2624/5721"], &[], Access::Public), 1);
    assert!(forwarded.is_none() && a.status == 200);
    assert!(!d.tiles[0].ids.contains(&"extra".to_string()));
}

/// A tile an origin's partial answer left out to shed load keeps the origin's code when the
/// answer also leaves out an item over `Limits::max_data_bytes`: it was `payload_too_large`
/// for both, so a client did not retry the tile as the overload it is.
#[test]
fn a_tile_the_origin_shed_is_not_called_too_large_beside_an_item_that_is() {
    let o = extra_grown();
    let mut p = data_limit_64();
    let shed = tile("14/2625/5721");
    let r = req(
        &["14/2624/5721", "14/2625/5721"],
        &["extra"],
        Access::Public,
    );
    let pending = p.begin(r, 0).unwrap();
    let forwarded = pending.origin_request().cloned().unwrap();
    let body = answer_leaving_out(&o, &forwarded, shed, ErrorCode::Overloaded);
    let a = p.complete(pending, answered(&body), 0);
    assert_eq!(a.status, 200, "{}", a.body);
    let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(
        v["error"]["tiles"],
        serde_json::json!([shed.to_string()]),
        "{v}"
    );
    assert_eq!(v["error"]["ids"], serde_json::json!(["extra"]), "{v}");
    assert_eq!(v["error"]["code"], "overloaded", "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("at most 64 are allowed"), "{msg}");
}

/// An item cached while small that grew over `Limits::max_data_bytes` at the origin (with
/// no change): once an origin answer names it too large, the cached copy is not served in
/// that answer, and it is dropped, so a request by id asks the origin again. Before, the
/// copy was served by id (in the very answer whose fresh list left it out) until its TTL.
#[test]
fn a_cached_item_grown_over_the_data_limit_is_dropped_not_served() {
    let mut p = data_limit_64();
    let r = req(&["14/2624/5721"], &["extra"], Access::Public);
    let (_, _, d) = run(&mut p, &origin(), r.clone(), 0);
    assert!(d.items.iter().any(|it| it.id == "extra"));
    let grown = extra_grown();
    // Another item of its tile changes: the tile is a miss, the item by id still a hit.
    let inv = crate::protocol::Invalidation {
        ids: vec!["2624-5721-public".into()],
        ..Default::default()
    };
    p.invalidate(&inv, 1);
    let (forwarded, a, d) = run(&mut p, &grown, r, 2);
    assert!(forwarded.is_some_and(|f| f.ids.is_empty()));
    let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(v["error"]["code"], "payload_too_large", "{v}");
    assert_eq!(v["error"]["ids"], serde_json::json!(["extra"]));
    assert!(d.items.iter().all(|it| it.id != "extra"), "{v}");
    assert!(!d.tiles[0].ids.contains(&"extra".to_string()));
    // By id: no longer a hit; the origin is asked and names it again.
    let (forwarded, a, d) = run(&mut p, &grown, req(&[], &["extra"], Access::Public), 3);
    assert_eq!(forwarded.map(|f| f.ids), Some(vec!["extra".to_string()]));
    assert!(
        d.items.is_empty() && a.body.contains("payload_too_large"),
        "{}",
        a.body
    );
}

#[test]
fn an_origin_answer_that_leaves_something_out_is_reported_not_missing() {
    let o = origin();
    let mut p = Proxy::new(no_warm()).unwrap();
    let r = req(
        &["14/2624/5721", "14/2625/5721"],
        &["2625-5722-public"],
        Access::Public,
    );
    let pending = p.begin(r, 0).unwrap();
    // The origin answers only the first tile and says nothing of the id.
    let full = o.answer(pending.origin_request().unwrap(), Some(300));
    let mut part = full.clone();
    part.tiles.retain(|l| l.tile == tile("14/2624/5721"));
    let keep: HashSet<String> = part.tiles[0].ids.iter().cloned().collect();
    part.items.retain(|i| keep.contains(&i.id));
    part.missing.clear();
    let body = part.to_json();
    let a = p.complete(pending, answered(&body), 0);
    assert_eq!(a.status, 200);
    let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(v["error"]["code"], "upstream_error");
    assert_eq!(v["error"]["tiles"], serde_json::json!(["14/2625/5721"]));
    assert_eq!(v["error"]["ids"], serde_json::json!(["2625-5722-public"]));
    assert_eq!(v["missing"], serde_json::json!([]));
}

#[test]
fn warming_plans_uncached_neighbours_and_fills_them() {
    let o = origin();
    let mut p = Proxy::new(ProxyConfig::default()).unwrap();
    let (_, a, _) = run(
        &mut p,
        &o,
        req(&["14/2624/5721"], &[], Access::Registered),
        0,
    );
    let warm = a.warm.unwrap();
    assert_eq!(warm.access, Access::Registered);
    assert_eq!(warm.tiles.len(), 8);
    let body = o.answer(&warm, Some(300)).to_json();
    let n = p.warmed(&warm, answered(&body), 0).unwrap();
    assert_eq!(n, 16); // two tiers visible to registered, in 8 tiles
    let r = req(&["14/2623/5720", "14/2625/5722"], &[], Access::Registered);
    let (fwd, a, body) = run(&mut p, &o, r.clone(), 1);
    assert_eq!((fwd, a.verdict), (None, Verdict::Hit));
    assert_eq!(shape(&body), shape(&o.answer(&r, None)));
    // A warming answer that fails fills nothing.
    assert!(p.warmed(&warm, OriginOutcome::Timeout(""), 2).is_err());
}

/// Hits on one tile whose neighbours' warming never fills the cache (the origin fails it,
/// its answer is lost, or the cache cannot keep it): every hit used to plan the same
/// warming request again, one origin request per hit (24,000 in four minutes here). Now a
/// tile is warmed again only after [`WARM_RETRY_MS`], doubled per try up to
/// [`WARM_RETRY_MAX_MS`], and requests in between (its answer still out) plan none.
#[test]
fn warming_that_does_not_fill_is_not_asked_again_per_hit() {
    let o = origin();
    let mut p = Proxy::new(ProxyConfig::default()).unwrap();
    let centre = req(&["14/2624/5721"], &[], Access::Public);
    let mut warms = Vec::new();
    for now in (0..240_000).step_by(10) {
        let (_, a, _) = run(&mut p, &o, centre.clone(), now);
        if let Some(w) = a.warm {
            assert!(p.warmed(&w, OriginOutcome::Timeout(""), now).is_err());
            warms.push(now);
        }
    }
    // At 0, 5, 15, 35, 75 s, then every 60 s: 135, 195 s.
    assert_eq!(warms, [0, 5_000, 15_000, 35_000, 75_000, 135_000, 195_000]);
}

/// Warming that filled its tiles does not hold them back, nor count as a try: once they
/// expire, the next hit warms them again at once, and a failure then waits the first
/// delay, not a longer one.
#[test]
fn warming_that_filled_is_asked_again_once_its_tiles_expire() {
    let o = origin();
    let mut p = Proxy::new(ProxyConfig::default()).unwrap();
    let centre = req(&["14/2624/5721"], &[], Access::Public);
    let (_, a, _) = run(&mut p, &o, centre.clone(), 0);
    let warm = a.warm.unwrap();
    let body = o.answer(&warm, Some(300)).to_json();
    let ok = answered(&body);
    p.warmed(&warm, ok, 0).unwrap();
    // 300 s later the centre and its neighbours have expired: the centre is fetched, and
    // the neighbours warmed with it.
    let (fwd, a, _) = run(&mut p, &o, centre.clone(), 301_000);
    assert!(fwd.is_some());
    let warm = a.warm.unwrap();
    assert_eq!(warm.tiles.len(), 8);
    assert!(p
        .warmed(&warm, OriginOutcome::Timeout(""), 301_000)
        .is_err());
    let (_, a, _) = run(&mut p, &o, centre.clone(), 301_000 + WARM_RETRY_MS - 1);
    assert!(a.warm.is_none());
    let (_, a, _) = run(&mut p, &o, centre, 301_000 + WARM_RETRY_MS);
    assert_eq!(a.warm.map(|w| w.tiles.len()), Some(8));
}

/// An origin that answers a warming `503 overloaded` or `429` with a `Retry-After` asked
/// for quiet: warming used to go on with the tiles' own delay (5 s after the first try),
/// and other tiles' warming at once. Now no warming is planned until the `Retry-After`
/// (capped at [`MAX_RETRY_AFTER_S`]) has passed; nor after a caller's request got one.
#[test]
fn warming_waits_for_the_origins_retry_after() {
    let o = origin();
    let overloaded = br#"{"error":{"code":"overloaded","message":"at capacity"}}"#;
    let refused = |status, retry_after_ms| OriginOutcome::Answer {
        status,
        body: overloaded,
        retry_after_ms,
    };
    let centre = req(&["14/2624/5721"], &[], Access::Public);
    let elsewhere = req(&["14/2630/5730"], &[], Access::Public);
    for (status, retry_after_ms, quiet_ms) in [
        (503, Some(30_000), 30_000),
        (429, Some(12_500), 13_000),
        (503, Some(86_400_000), MAX_RETRY_AFTER_S * 1000),
    ] {
        let mut p = Proxy::new(ProxyConfig::default()).unwrap();
        let (_, a, _) = run(&mut p, &o, centre.clone(), 0);
        let w = a.warm.unwrap();
        assert!(p.warmed(&w, refused(status, retry_after_ms), 0).is_err());
        for now in [WARM_RETRY_MS, quiet_ms - 1] {
            let (_, a, _) = run(&mut p, &o, centre.clone(), now);
            assert!(a.warm.is_none(), "{status} at {now}");
            let (_, a, _) = run(&mut p, &o, elsewhere.clone(), now);
            assert!(a.warm.is_none(), "other tiles, {status} at {now}");
        }
        let (_, a, _) = run(&mut p, &o, centre.clone(), quiet_ms);
        assert!(a.warm.is_some(), "{status} after its Retry-After");
    }
    // A warming's 503 whose body is over the body limit too (it used to put nothing off).
    let mut p = Proxy::new(ProxyConfig::default()).unwrap();
    let (_, a, _) = run(&mut p, &o, centre.clone(), 0);
    let over = OriginOutcome::TooLarge {
        status: 503,
        bytes: 9 << 20,
        retry_after_ms: Some(30_000),
    };
    assert!(p.warmed(&a.warm.unwrap(), over, 0).is_err());
    let (_, a, _) = run(&mut p, &o, elsewhere.clone(), 29_999);
    assert!(a.warm.is_none(), "a 503 too large to read");
    let (_, a, _) = run(&mut p, &o, centre.clone(), 30_000);
    assert!(a.warm.is_some());
    // A caller's request refused the same way puts warming off too; 1 s without a
    // Retry-After.
    for (retry_after_ms, quiet_ms) in [(Some(20_000), 20_000), (None, 1_000)] {
        let mut p = Proxy::new(ProxyConfig::default()).unwrap();
        let pending = p.begin(centre.clone(), 0).unwrap();
        let a = p.complete(pending, refused(503, retry_after_ms), 0);
        assert_eq!(a.status, 503);
        let (_, a, _) = run(&mut p, &o, elsewhere.clone(), quiet_ms - 1);
        assert!(a.warm.is_none());
        let (_, a, _) = run(&mut p, &o, centre.clone(), quiet_ms);
        assert!(a.warm.is_some());
    }
}

/// A proxy whose first warming (at 0, after a request for `centre`) the origin answered
/// leaving `dense` out as `payload_too_large`: `dense` held from warming for a tile TTL.
fn held_from_warming(o: &Origin<RawData>, centre: &BatchRequest, dense: TileId) -> Proxy {
    let mut p = Proxy::new(ProxyConfig::default()).unwrap();
    let (_, a, _) = run(&mut p, o, centre.clone(), 0);
    let w = a.warm.unwrap();
    let body = answer_leaving_out(o, &w, dense, ErrorCode::PayloadTooLarge);
    p.warmed(&w, answered(&body), 0).unwrap();
    p
}

/// The origin's answer to `request` with `left_out`'s list (and its items) left out as
/// `code` (a tilewarm-server's partial answer).
fn answer_leaving_out(
    o: &Origin<RawData>,
    request: &BatchRequest,
    left_out: TileId,
    code: ErrorCode,
) -> String {
    let mut r = o.answer(request, Some(300));
    let gone: Vec<String> = (r.tiles.iter().find(|l| l.tile == left_out))
        .map(|l| l.ids.clone())
        .unwrap();
    r.tiles.retain(|l| l.tile != left_out);
    r.items.retain(|i| !gone.contains(&i.id));
    let json = r.to_json();
    format!(
        r#"{},"error":{{"code":"{}","message":"tile {left_out} has more than 2 items","tiles":["{left_out}"],"ids":[]}}}}"#,
        &json[..json.len() - 1],
        code.as_str()
    )
}

/// A partial answer (a `200`) that left work out as `overloaded` or `rate_limited` (a
/// tilewarm-server whose upstream sheds load) asks for less as its whole `503` or `429`
/// does, with no `Retry-After`: warming plans nothing for [`DEFAULT_RETRY_AFTER_S`], as the
/// server's warm-up is quiet for its `--retry-after-s` (docs/server.md says the edge's
/// warming does the same; it went on at once). A timeout left out does not.
#[test]
fn warming_is_quiet_after_a_partial_answer_that_sheds_load() {
    let o = origin();
    let centre = req(&["14/2624/5721"], &[], Access::Public);
    let elsewhere = req(&["14/2630/5730"], &[], Access::Public);
    let further = req(&["14/2640/5740"], &[], Access::Public);
    let shed = tile("14/2625/5721");
    let quiet_ms = DEFAULT_RETRY_AFTER_S * 1000;
    for (code, quiet) in [
        (ErrorCode::Overloaded, true),
        (ErrorCode::RateLimited, true),
        (ErrorCode::UpstreamTimeout, false),
    ] {
        // A warming answered so.
        let mut p = Proxy::new(ProxyConfig::default()).unwrap();
        let (_, a, _) = run(&mut p, &o, centre.clone(), 0);
        let w = a.warm.unwrap();
        let body = answer_leaving_out(&o, &w, shed, code);
        p.warmed(&w, answered(&body), 0).unwrap();
        let (_, a, _) = run(&mut p, &o, elsewhere.clone(), quiet_ms - 1);
        assert_eq!(a.warm.is_none(), quiet, "{code:?}");
        let (_, a, _) = run(&mut p, &o, further.clone(), quiet_ms);
        assert!(a.warm.is_some(), "{code:?}: after the quiet");
        // A caller's request answered so.
        let mut p = Proxy::new(ProxyConfig::default()).unwrap();
        let asked = req(&["14/2625/5721", "14/2625/5722"], &[], Access::Public);
        let pending = p.begin(asked.clone(), 0).unwrap();
        let body = answer_leaving_out(&o, &asked, shed, code);
        let a = p.complete(pending, answered(&body), 0);
        assert_eq!((a.status, a.retry_after_s), (200, None));
        let (_, a, _) = run(&mut p, &o, elsewhere.clone(), quiet_ms - 1);
        assert_eq!(a.warm.is_none(), quiet, "{code:?}, a caller's request");
    }
}

/// A neighbour tile the origin leaves out of a warming answer as `payload_too_large` (a
/// tilewarm-server's tile over `--max-tile-items`) can never be cached: it used to be
/// warmed again on the retry delays (5 s doubling to 60 s), each an origin request and a
/// full read of a dense tile behind it, seven in four minutes here. Now it is not warmed
/// for a tile TTL (300 s here); a tile left out for another reason still is.
#[test]
fn a_tile_the_origin_says_is_too_large_is_not_warmed_for_a_tile_ttl() {
    let o = origin();
    let dense = tile("14/2625/5721");
    let centre = req(&["14/2624/5721"], &[], Access::Public);
    for (code, planned) in [
        (ErrorCode::PayloadTooLarge, 1),
        (ErrorCode::ResponseFull, 7),
    ] {
        let mut p = Proxy::new(ProxyConfig::default()).unwrap();
        for now in (0..240_000).step_by(10) {
            let (_, a, _) = run(&mut p, &o, centre.clone(), now);
            if let Some(w) = a.warm {
                assert!(w.tiles.contains(&dense), "{code:?} at {now}");
                let body = answer_leaving_out(&o, &w, dense, code);
                p.warmed(&w, answered(&body), now).unwrap();
            }
        }
        assert_eq!(p.stats().warm_requests, planned, "{code:?}");
    }
    // Its hold lapses with the tile TTL (the other neighbours' lists expire with it).
    let mut p = held_from_warming(&o, &centre, dense);
    let (_, a, _) = run(&mut p, &o, centre.clone(), 299_999);
    assert!(a.warm.is_none());
    let (_, a, _) = run(&mut p, &o, centre, 300_000);
    assert!(a.warm.unwrap().tiles.contains(&dense));
    // A caller's request answered so: the tile is not warmed for the next request's ring.
    let mut p = Proxy::new(ProxyConfig::default()).unwrap();
    let asked = req(&["14/2625/5721", "14/2625/5722"], &[], Access::Public);
    let pending = p.begin(asked.clone(), 0).unwrap();
    let body = answer_leaving_out(&o, &asked, dense, ErrorCode::PayloadTooLarge);
    let a = p.complete(pending, answered(&body), 0);
    assert_eq!((a.status, a.verdict), (200, Verdict::Miss));
    let (_, a, _) = run(&mut p, &o, req(&["14/2624/5721"], &[], Access::Public), 1);
    let w = a.warm.unwrap();
    assert!(!w.tiles.contains(&dense));
    assert_eq!(
        w.tiles.len(),
        6,
        "nor the neighbour the caller's request cached"
    );
}

/// A change from the feed covering a tile held from warming as too large ends the hold (the
/// tile may have shrunk): the next request's ring warms it again, as the server's warm-up
/// forgets such a tile on a change. One elsewhere does not. Before, the hold lasted the
/// tile TTL whatever changed.
#[test]
fn a_change_covering_a_tile_held_from_warming_warms_it_again() {
    let o = origin();
    let dense = tile("14/2625/5721");
    let centre = req(&["14/2624/5721"], &[], Access::Public);
    let mut p = held_from_warming(&o, &centre, dense);
    let warms_dense = |p: &mut Proxy, now| {
        let (_, a, _) = run(p, &o, centre.clone(), now);
        a.warm.is_some_and(|w| w.tiles.contains(&dense))
    };
    assert!(!warms_dense(&mut p, 100_000), "held");
    let change = |t: TileId| crate::protocol::Invalidation {
        tiles: vec![t],
        ..Default::default()
    };
    p.invalidate(&change(tile("14/2000/5000")), 100_001);
    assert!(!warms_dense(&mut p, 100_002), "held still");
    p.invalidate(&change(dense), 100_003);
    assert!(warms_dense(&mut p, 100_004), "warmed again");
}

/// A neighbour tile whose answer alone is over the body limit (an origin that does not
/// leave it out as `payload_too_large`): the shell cannot read such a warming answer, and
/// which tile made it too large is not known. Every tile of that warming used to be warmed
/// again whole on the retry delays, each time too large (seven in four minutes here), and
/// none of them was ever cached by warming. Now its tiles are warmed at once in halves,
/// then quarters, until the one too large is warmed alone and held for a tile TTL; the
/// others are cached on the way.
#[test]
fn a_warming_answer_too_large_to_read_is_split_until_the_tile_too_large_is_held() {
    let o = origin();
    let dense = tile("14/2625/5721");
    let centre = req(&["14/2624/5721"], &[], Access::Public);
    let mut p = Proxy::new(ProxyConfig::default()).unwrap();
    let mut with_dense = Vec::new();
    let mut warms = 0;
    for now in (0..240_000).step_by(10) {
        let (_, a, _) = run(&mut p, &o, centre.clone(), now);
        let Some(w) = a.warm else { continue };
        warms += 1;
        if w.tiles.contains(&dense) {
            with_dense.push(w.tiles.len());
            let over = OriginOutcome::TooLarge {
                status: 200,
                bytes: 9 << 20,
                retry_after_ms: None,
            };
            assert!(p.warmed(&w, over, now).is_err());
        } else {
            let body = o.answer(&w, Some(300)).to_json();
            p.warmed(&w, answered(&body), now).unwrap();
        }
    }
    assert_eq!(with_dense, [8, 4, 2, 1], "halved until alone, then held");
    assert_eq!(warms, 7, "the halves without it warmed once each");
    // Every other neighbour was cached by warming.
    let ring = ring_around(&[tile("14/2624/5721")], 1).unwrap();
    let (fwd, _, _) = run(&mut p, &o, tiles_req(&ring, Access::Public), 240_000);
    assert_eq!(fwd.map(|r| r.tiles), Some(vec![dense]));
}

/// A caller's request for one data tile whose answer is over the body limit: that tile is
/// too large. It used to stay due for warming (as a neighbour of the next request), each
/// warming of it too large again; now it is held from warming as after a warming of it
/// alone. A request for more tiles (or with ids) says nothing of any one tile.
#[test]
fn a_tile_whose_answer_alone_is_too_large_to_read_is_not_warmed() {
    let o = origin();
    let dense = tile("14/2625/5721");
    let over = OriginOutcome::TooLarge {
        status: 200,
        bytes: 9 << 20,
        retry_after_ms: None,
    };
    for (asked, held) in [
        (req(&["14/2625/5721"], &[], Access::Public), true),
        (
            req(&["14/2625/5721", "14/2630/5730"], &[], Access::Public),
            false,
        ),
        (req(&["14/2625/5721"], &["extra"], Access::Public), false),
    ] {
        let mut p = Proxy::new(ProxyConfig::default()).unwrap();
        let pending = p.begin(asked.clone(), 0).unwrap();
        assert_eq!(p.complete(pending, over, 0).status, 502);
        let (_, a, _) = run(&mut p, &o, req(&["14/2624/5721"], &[], Access::Public), 1);
        let w = a.warm.unwrap();
        assert_eq!(!w.tiles.contains(&dense), held, "{asked:?}");
    }
}

/// A tile held as too large stays held through a burst of other tiles' failing warmings
/// (more than [`MAX_WARM_TRIES`] of them): the hold used to share their room, was pushed
/// out, and the next hit warmed (paid for) the tile again at once.
#[test]
fn a_held_tile_stays_held_through_a_burst_of_other_warmings_failing() {
    let o = origin();
    let dense = tile("14/2625/5721");
    let centre = req(&["14/2624/5721"], &[], Access::Public);
    let mut p = held_from_warming(&o, &centre, dense);
    // Far away, eight neighbours per miss, every warming of them failing.
    for k in 0..(MAX_WARM_TRIES / 8 + 1) {
        let far = req(&[&format!("14/{}/1000", 4 * k)], &[], Access::Public);
        let (_, a, _) = run(&mut p, &o, far, 1);
        assert!(p
            .warmed(&a.warm.unwrap(), OriginOutcome::Timeout(""), 1)
            .is_err());
    }
    let (fwd, a, _) = run(&mut p, &o, centre, 10_000);
    assert!(fwd.is_none());
    assert_eq!(a.warm, None, "the dense tile is held still");
}

#[test]
fn expired_tiles_are_forwarded_again() {
    let o = origin();
    let mut p = Proxy::new(no_warm()).unwrap();
    // The centre tile holds an item with a 60 s ttl; this one only 300 s items.
    let r = req(&["14/2625/5721"], &[], Access::Public);
    run(&mut p, &o, r.clone(), 0);
    let (fwd, a, _) = run(&mut p, &o, r.clone(), 299_999);
    assert_eq!((fwd, a.verdict), (None, Verdict::Hit));
    let (fwd, a, _) = run(&mut p, &o, r.clone(), 300_000);
    assert_eq!((fwd.unwrap(), a.verdict), (r, Verdict::Miss));
}

#[test]
fn config_errors_name_the_field() {
    let e = Proxy::new(ProxyConfig {
        max_warm_tiles: 0,
        ..ProxyConfig::default()
    })
    .err()
    .unwrap();
    assert_eq!(
        e.to_string(),
        "proxy config max_warm_tiles must be in 1..=64, got 0"
    );
    assert!(Proxy::new(ProxyConfig {
        split_levels: 9,
        ..ProxyConfig::default()
    })
    .is_err());
    let mut bad = ProxyConfig::default();
    bad.cache.max_items = 0;
    assert!(matches!(Proxy::new(bad), Err(ProxyError::Cache(_))));
}

#[test]
fn a_request_past_max_data_tiles_is_refused_before_the_cache_or_the_origin() {
    let mut p = Proxy::new(ProxyConfig {
        max_data_tiles: 8,
        ..no_warm()
    })
    .unwrap();
    // Three z12 tiles: 48 data tiles, past 8.
    let r = req(
        &["12/656/1430", "12/657/1430", "12/658/1430"],
        &[],
        Access::Public,
    );
    let e = p.begin(r, 0).err().unwrap();
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert!(e.message.contains("at most 8 are allowed"), "{}", e.message);
    assert_eq!(p.stats(), ProxyStats::default());
    assert_eq!(p.cache_stats(Access::Public), CacheStats::default());
    // Two z13 tiles (8 data tiles) are at the cap and are answered.
    let o = origin();
    let (fwd, a, _) = run(
        &mut p,
        &o,
        req(&["13/1312/2860", "13/1313/2860"], &[], Access::Public),
        0,
    );
    assert_eq!((a.status, fwd.map(|f| f.tiles.len())), (200, Some(2)));
}

fn tile_near() -> impl Strategy<Value = TileId> {
    // Around the item block, at zooms 11..=16.
    (11u8..=16, -2i64..=2, -2i64..=2).prop_map(|(z, dx, dy)| {
        let base = tile("16/10497/22885").ancestor(z).unwrap();
        base.offset(dx, dy).unwrap()
    })
}

fn id_near() -> impl Strategy<Value = String> {
    prop::sample::select(
        items()
            .into_iter()
            .map(|i| i.id)
            .chain(["ghost".to_string()])
            .collect::<Vec<_>>(),
    )
}

proptest! {
    /// Random requests at mixed tiers: every answer equals the origin's direct answer at
    /// the caller's tier (so nothing above the tier, nothing lost), and the origin is
    /// only asked for what the cache did not answer.
    #[test]
    fn mixed_tiers_never_leak_and_always_match_the_origin(
        steps in prop::collection::vec(
            (prop::collection::vec(tile_near(), 0..6),
             prop::collection::vec(id_near(), 0..4),
             prop::sample::select(Access::ALL.to_vec()),
             0u64..2_000,
             any::<bool>()),
            1..25),
    ) {
        let o = origin();
        let mut p = Proxy::new(ProxyConfig::default()).unwrap();
        let mut now = 0u64;
        for (tiles, ids, access, dt, warm) in steps {
            now += dt * 100;
            let mut r = BatchRequest { tiles, ids, access };
            r.tiles.sort();
            r.tiles.dedup();
            r.ids.sort();
            r.ids.dedup();
            if r.is_empty() { continue; }
            let (fwd, a, body) = run(&mut p, &o, r.clone(), now);
            prop_assert!(body.items.iter().all(|i| access.can_see(i.access)));
            prop_assert_eq!(shape(&body), shape(&o.answer(&r, None)));
            if let Some(f) = &fwd {
                prop_assert_eq!(f.access, access);
                prop_assert!(f.tiles.len() <= r.tiles.len());
                prop_assert!(f.ids.iter().all(|id| r.ids.contains(id)));
                prop_assert!(a.verdict != Verdict::Hit);
            } else {
                prop_assert_eq!(a.verdict, Verdict::Hit);
            }
            if let (Some(w), true) = (&a.warm, warm) {
                let body = o.answer(w, Some(300)).to_json();
                p.warmed(w, answered(&body), now)
                    .unwrap();
            }
        }
    }
}

/// The shared cache (src/proxy/shared.rs): what one proxy writes, another takes.
mod shared {
    use super::*;

    /// A proxy that fetched `tiles` at `tier` from the origin, and the data tiles it names
    /// for the shared cache.
    fn filled(tiles: &[&str], tier: Access, now: u64) -> (Proxy, Vec<TileId>) {
        let mut p = Proxy::new(no_warm()).unwrap();
        let o = origin();
        let pending = p.begin(req(tiles, &[], tier), now).unwrap();
        let body = o
            .answer(pending.origin_request().unwrap(), Some(300))
            .to_json();
        let a = p.complete(pending, answered(&body), now);
        (p, a.shared_put)
    }

    #[test]
    fn an_entry_written_by_one_proxy_answers_another_without_the_origin() {
        let tiles = ["14/2623/5721", "14/2624/5721", "14/2625/5721"];
        let (mut a, put) = filled(&tiles, Access::Verified, 1_000);
        assert_eq!(put.len(), 3, "every data tile the origin brought is named");
        let mut b = Proxy::new(no_warm()).unwrap();
        let pending = b.begin(req(&tiles, &[], Access::Verified), 5_000).unwrap();
        let lookups = b.shared_lookups(&pending, 16, 5_000);
        assert_eq!(lookups, put);
        assert_eq!(b.shared_lookups(&pending, 2, 5_000).len(), 2, "at most max");
        for &t in &lookups {
            let e = a.shared_entry(Access::Verified, t, 1_000).unwrap();
            assert!(e.max_age_s >= 1 && e.max_age_s <= 300, "{}", e.max_age_s);
            assert!(b
                .shared_fill(Access::Verified, t, e.body.as_bytes(), 1_000, 5_000)
                .is_ok());
        }
        let pending = b.replan(pending, 5_000).unwrap();
        assert!(
            pending.origin_request().is_none(),
            "the entries answer it all"
        );
        let answer = b.complete(pending, OriginOutcome::Timeout(""), 5_000);
        assert_eq!(answer.verdict, Verdict::Hit);
        let got = decode_response(answer.body.as_bytes(), &Limits::default()).unwrap();
        let want = origin().answer(&req(&tiles, &[], Access::Verified), Some(300));
        assert_eq!(shape(&got), shape(&want));
        // Four seconds old: every ttl is four seconds shorter.
        for it in &got.items {
            let full = want.items.iter().find(|w| w.id == it.id).unwrap();
            assert!(it.ttl.unwrap() <= full.ttl.unwrap_or(300) - 4, "{}", it.id);
        }
        assert_eq!(b.stats().shared_fills, 3);
    }

    #[test]
    fn an_entry_lives_no_longer_than_the_change_look_back_after_its_origin_request() {
        // Items and list kept 300 s (not the centre tile: an item there has a ttl of 60 s), a look-back of 100 s: a new isolate replays only the
        // changes of the last 100 s, so an entry must be gone 100 s after its origin request.
        let config = ProxyConfig {
            changes_lookback_ms: 100_000,
            ..no_warm()
        };
        let t = tile("14/2625/5721");
        let o = origin();
        let mut a = Proxy::new(config.clone()).unwrap();
        run(
            &mut a,
            &o,
            req(&["14/2625/5721"], &[], Access::Public),
            1_000,
        );
        let e = a.shared_entry(Access::Public, t, 1_000).unwrap();
        assert_eq!(
            e.max_age_s, 100,
            "capped at the look-back, not the TTL of 300 s"
        );
        // Written later: what the look-back leaves after the origin request, rounded down.
        assert_eq!(
            a.shared_entry(Access::Public, t, 41_500).unwrap().max_age_s,
            59
        );
        assert_eq!(
            a.shared_entry(Access::Public, t, 99_999).unwrap().max_age_s,
            1
        );
        assert!(
            a.shared_entry(Access::Public, t, 100_001).is_none(),
            "less than a second left: not written"
        );
        // The default look-back (4 h) is longer than these TTLs: the shortest TTL rules.
        let mut d = Proxy::new(no_warm()).unwrap();
        run(
            &mut d,
            &o,
            req(&["14/2625/5721"], &[], Access::Public),
            1_000,
        );
        let long = d.shared_entry(Access::Public, t, 1_000).unwrap();
        assert!(
            long.max_age_s > 100 && long.max_age_s <= 300,
            "{}",
            long.max_age_s
        );
        // Read back older than the look-back (a writer that did not cap it): refused.
        let mut b = Proxy::new(config.clone()).unwrap();
        let err = b
            .shared_fill(Access::Public, t, long.body.as_bytes(), 1_000, 101_000)
            .unwrap_err();
        assert!(err.message.contains("look-back"), "{}", err.message);
        assert_eq!(b.cache_stats(Access::Public).entries, 0);
        // (Another proxy: this one's clock does not go back, `crate::clock`.)
        let mut c = Proxy::new(config).unwrap();
        assert!(c
            .shared_fill(Access::Public, t, long.body.as_bytes(), 1_000, 100_999)
            .is_ok());
    }

    #[test]
    fn an_entry_is_only_taken_for_its_own_tile_and_tier_and_while_fresh() {
        let t = tile("14/2624/5721");
        let (mut a, _) = filled(&["14/2624/5721"], Access::Agent, 0);
        let e = a.shared_entry(Access::Agent, t, 0).unwrap();
        assert!(e.body.contains(r#""access":"agent""#));
        let mut b = Proxy::new(no_warm()).unwrap();
        // Another tier (a key without the tier would hand it over): refused.
        let err = b
            .shared_fill(Access::Public, t, e.body.as_bytes(), 0, 0)
            .unwrap_err();
        assert!(err.message.contains("reports tier"), "{}", err.message);
        assert_eq!(b.cache_stats(Access::Public).entries, 0);
        // Another tile: refused.
        let other = tile("14/2625/5721");
        assert!(b
            .shared_fill(Access::Agent, other, e.body.as_bytes(), 0, 0)
            .is_err());
        // Older than its list's TTL: refused; garbage: refused.
        assert!(b
            .shared_fill(Access::Agent, t, e.body.as_bytes(), 0, 400_000)
            .is_err());
        assert!(b.shared_fill(Access::Agent, t, b"{", 0, 0).is_err());
        assert_eq!(b.stats().shared_refused, 4);
        assert_eq!(b.cache_stats(Access::Agent).entries, 0);
        // Not held fresh: no entry.
        assert!(a.shared_entry(Access::Public, t, 0).is_none());
        assert!(a.shared_entry(Access::Agent, t, 400_000).is_none());
    }

    /// An entry dated far after this clock's wall time is refused (not a time a clock in
    /// step gives); one a little ahead (another isolate's clock) is taken as fetched now, and
    /// dated so (its entry goes out dated now; a change applied after now covers it).
    #[test]
    fn an_entry_dated_ahead_of_the_clock_is_refused_or_dated_now() {
        use crate::proxy::shared::MAX_SHARED_DATE_AHEAD_MS;
        let t = tile("14/2624/5721");
        let (mut a, _) = filled(&["14/2624/5721"], Access::Agent, 0);
        let e = a.shared_entry(Access::Agent, t, 0).unwrap();
        let now = 10_000;
        for far in [
            u64::MAX,
            now + MAX_SHARED_DATE_AHEAD_MS + 1,
            now + 86_400_000,
        ] {
            let mut b = Proxy::new(no_warm()).unwrap();
            let err = b
                .shared_fill(Access::Agent, t, e.body.as_bytes(), far, now)
                .unwrap_err();
            assert!(err.message.contains("not a time"), "{}", err.message);
            assert_eq!(b.stats().shared_refused, 1);
            assert_eq!(b.cache_stats(Access::Agent).entries, 0);
        }
        let mut b = Proxy::new(no_warm()).unwrap();
        let ahead = now + MAX_SHARED_DATE_AHEAD_MS;
        assert!(b
            .shared_fill(Access::Agent, t, e.body.as_bytes(), ahead, now)
            .is_ok());
        let again = b.shared_entry(Access::Agent, t, now + 1_000).unwrap();
        assert_eq!(again.fetched_at_ms, now, "dated now, not ahead");
    }

    #[test]
    fn an_entry_that_holds_items_above_its_tier_gives_the_tier_none_of_them() {
        // A forged or corrupted entry: the public key holding agent items.
        let t = tile("14/2624/5721");
        let (mut a, _) = filled(&["14/2624/5721"], Access::Agent, 0);
        let body = a
            .shared_entry(Access::Agent, t, 0)
            .unwrap()
            .body
            .replace(r#""access":"agent"}"#, r#""access":"public"}"#);
        assert!(body.ends_with(r#""access":"public"}"#), "{body}");
        let mut b = Proxy::new(no_warm()).unwrap();
        b.shared_fill(Access::Public, t, body.as_bytes(), 0, 0)
            .unwrap();
        let (_, answer, got) = run(
            &mut b,
            &origin(),
            req(&["14/2624/5721"], &[], Access::Public),
            0,
        );
        assert_eq!(answer.verdict, Verdict::Hit);
        assert!(!got.items.is_empty());
        assert!(got.items.iter().all(|i| i.access == Access::Public));
        assert!(b.stats().dropped_above_tier > 0);
    }
}

proptest! {
    /// Whole hits written from serialised tiles (src/proxy/wire.rs) are the general path's
    /// answers byte for byte, over random sequences of data-tile requests at mixed tiers,
    /// id requests and warming answers (which change the cache) and time (which expires it).
    #[test]
    fn spliced_hits_are_the_general_paths_answers(
        steps in prop::collection::vec(
            (prop::collection::vec((-2i64..=2, -2i64..=2), 1..6),
             prop::collection::vec(id_near(), 0..2),
             prop::sample::select(Access::ALL.to_vec()),
             0u64..400,
             any::<bool>()),
            1..30),
    ) {
        let o = origin();
        let centre = tile("14/2624/5721");
        let mut fast = Proxy::new(ProxyConfig::default()).unwrap();
        let mut slow = Proxy::new(ProxyConfig { spliced_hits: false, ..ProxyConfig::default() }).unwrap();
        let mut now = 0u64;
        for (offsets, ids, access, dt, with_ids) in steps {
            now += dt * 1000;
            let mut tiles: Vec<TileId> =
                offsets.iter().map(|&(dx, dy)| centre.offset(dx, dy).unwrap()).collect();
            tiles.dedup();
            let mut seen = HashSet::new();
            tiles.retain(|t| seen.insert(*t));
            let mut r = BatchRequest { tiles, ids: if with_ids { ids } else { Vec::new() }, access };
            r.ids.sort();
            r.ids.dedup();
            let (_, a, _) = run(&mut fast, &o, r.clone(), now);
            let (_, b, _) = run(&mut slow, &o, r.clone(), now);
            prop_assert_eq!(&a.body, &b.body);
            prop_assert_eq!(a.verdict, b.verdict);
            prop_assert_eq!(&a.warm, &b.warm);
            for (p, w) in [(&mut fast, &a.warm), (&mut slow, &b.warm)] {
                if let Some(w) = w {
                    let body = o.answer(w, Some(300)).to_json();
                    p.warmed(w, answered(&body), now)
                        .unwrap();
                }
            }
        }
    }
}

#[test]
fn a_whole_hit_of_data_tiles_is_spliced_and_a_change_to_the_cache_is_seen() {
    let o = origin();
    let mut p = Proxy::new(no_warm()).unwrap();
    let tiles = ["14/2624/5721", "14/2625/5721"];
    run(&mut p, &o, req(&tiles, &[], Access::Agent), 0);
    let pending = p.begin(req(&tiles, &[], Access::Agent), 1_000).unwrap();
    assert!(pending.spliced.is_some(), "a whole hit is spliced");
    let (_, hit, body) = run(&mut p, &o, req(&tiles, &[], Access::Agent), 1_000);
    assert_eq!(hit.verdict, Verdict::Hit);
    assert_eq!(
        shape(&body),
        shape(&o.answer(&req(&tiles, &[], Access::Agent), None))
    );
    // A warming answer brings a changed item in: the next hit shows it.
    let warm = req(&["14/2624/5721"], &[], Access::Agent);
    let mut changed = o.answer(&warm, Some(300));
    let it = changed
        .items
        .iter_mut()
        .find(|i| i.id == "2624-5721-public")
        .unwrap();
    it.data = raw("{\"k\":99}");
    let json = changed.to_json();
    let outcome = answered(&json);
    // (As if the proxy had planned it: only planned warming answers are written.)
    p.changes.warm_planned(Access::Agent, &warm.tiles, 2_000);
    p.warmed(&warm, outcome, 2_000).unwrap();
    let (_, _, body) = run(&mut p, &o, req(&tiles, &[], Access::Agent), 3_000);
    let item = body
        .items
        .iter()
        .find(|i| i.id == "2624-5721-public")
        .unwrap();
    assert_eq!(item.data.get(), "{\"k\":99}");
    // Past the items' TTL: not spliced, forwarded.
    let pending = p
        .begin(req(&tiles, &[], Access::Agent), 10_000_000)
        .unwrap();
    assert!(pending.spliced.is_none());
    assert!(pending.origin_request().is_some());
}

/// Changes from the feed ([`change`]).
mod changes {
    use super::*;
    use crate::protocol::Invalidation;
    use crate::proxy::shared::SharedEntry;

    const CENTRE: &str = "14/2624/5721";

    /// The origin with item `id` holding `{"k":99}`.
    fn changed_origin(id: &str) -> Origin<RawData> {
        let mut all = items();
        all.iter_mut().find(|i| i.id == id).unwrap().data = raw("{\"k\":99}");
        Origin::new(all).unwrap()
    }

    fn data_of(r: &BatchResponse<RawData>, id: &str) -> String {
        r.items
            .iter()
            .find(|i| i.id == id)
            .unwrap()
            .data
            .get()
            .to_owned()
    }

    fn inv_ids(ids: &[&str]) -> Invalidation {
        Invalidation {
            ids: ids.iter().map(|s| s.to_string()).collect(),
            ..Invalidation::default()
        }
    }

    /// A proxy that warms (the default config) and the warming its first request, for the
    /// centre at 0, planned: `(old, p, centre, first, w, id)`: `first`, as origin `old`
    /// answers it, `w`, its first tile, and `id`, the first item of `w`'s list there.
    fn warming() -> (
        Origin<RawData>,
        Proxy,
        BatchRequest,
        BatchRequest,
        TileId,
        String,
    ) {
        let old = origin();
        let mut p = Proxy::new(ProxyConfig::default()).unwrap();
        let centre = req(&[CENTRE], &[], Access::Public);
        let first = run(&mut p, &old, centre.clone(), 0).1.warm.unwrap();
        let w = first.tiles[0];
        let id = old.answer(&first, Some(300)).tiles[0].ids[0].clone();
        (old, p, centre, first, w, id)
    }

    /// The public shared-cache entries of the centre `t` and of `other`, 14/2626/5721, as a
    /// proxy filled them from the origin at `at`: `(t, other, e, e_other)`.
    fn two_entries(at: u64) -> (TileId, TileId, SharedEntry, SharedEntry) {
        let t = tile(CENTRE);
        let other = tile("14/2626/5721");
        let mut a = Proxy::new(no_warm()).unwrap();
        run(
            &mut a,
            &origin(),
            req(&[CENTRE, "14/2626/5721"], &[], Access::Public),
            at,
        );
        let e = a.shared_entry(Access::Public, t, at).unwrap();
        let e_other = a.shared_entry(Access::Public, other, at).unwrap();
        (t, other, e, e_other)
    }

    /// The tiles of `warm` filled by a request of their own (at `fill`) and seen fresh by a
    /// hit on `centre` (at `hit`).
    fn fill_and_hit(
        p: &mut Proxy,
        o: &Origin<RawData>,
        warm: &BatchRequest,
        centre: &BatchRequest,
        (fill, hit): (u64, u64),
    ) {
        run(p, o, tiles_req(&warm.tiles, Access::Public), fill);
        assert_eq!(run(p, o, centre.clone(), hit).1.verdict, Verdict::Hit);
    }

    /// An answer for tile `w` was not written: no shared entry holds it at `now`, and a
    /// request for it is forwarded (`what` says which answer would have filled it) and
    /// gets `new`'s value of item `id`.
    fn assert_not_written(
        p: &mut Proxy,
        new: &Origin<RawData>,
        (w, id): (TileId, &str),
        now: u64,
        what: &str,
    ) {
        assert!(p.shared_entry(Access::Public, w, now).is_none());
        let (forwarded, _, r) = run(p, new, tiles_req(&[w], Access::Public), now);
        assert!(forwarded.is_some(), "{what}");
        assert_eq!(data_of(&r, id), "{\"k\":99}");
    }

    #[test]
    fn a_changed_item_is_refetched_at_every_tier_after_the_change() {
        let (old, new) = (origin(), changed_origin("2624-5721-public"));
        let mut p = Proxy::new(no_warm()).unwrap();
        for tier in [Access::Public, Access::Agent] {
            run(&mut p, &old, req(&[CENTRE], &[], tier), 0);
            let (fwd, a, _) = run(&mut p, &old, req(&[CENTRE], &[], tier), 1);
            assert_eq!((fwd, a.verdict), (None, Verdict::Hit));
        }
        assert!(p.invalidate(&inv_ids(&["2624-5721-public"]), 2) >= 2);
        assert_eq!(p.epoch(), 1);
        for tier in [Access::Public, Access::Agent] {
            let (fwd, _, body) = run(&mut p, &new, req(&[CENTRE], &[], tier), 3);
            assert_eq!(fwd.unwrap().tiles, vec![tile(CENTRE)], "{tier}");
            assert_eq!(data_of(&body, "2624-5721-public"), "{\"k\":99}");
        }
    }

    #[test]
    fn tiles_classes_and_everything_drop_what_they_cover() {
        let o = origin();
        let mut p = Proxy::new(no_warm()).unwrap();
        let two = ["14/2624/5721", "14/2625/5721"];
        let fill = |p: &mut Proxy| {
            run(p, &o, req(&two, &["extra"], Access::Public), 0);
        };
        let forwarded = |p: &mut Proxy| {
            p.begin(req(&two, &["extra"], Access::Public), 1)
                .unwrap()
                .origin_request()
                .cloned()
        };
        fill(&mut p);
        assert_eq!(forwarded(&mut p), None);
        // A coarse tile covers its data tiles.
        let coarse = Invalidation {
            tiles: vec![tile(CENTRE).ancestor(12).unwrap()],
            ..Invalidation::default()
        };
        p.invalidate(&coarse, 1);
        let f = forwarded(&mut p).unwrap();
        assert_eq!((f.tiles.len(), f.ids.len()), (2, 1), "{f:?}");
        fill(&mut p);
        // A class: the off-market item only; its tile's list is then incomplete.
        let class = Invalidation {
            classes: vec!["off_market".into()],
            ..Invalidation::default()
        };
        p.invalidate(&class, 1);
        let f = forwarded(&mut p).unwrap();
        assert_eq!(f.tiles, vec![tile(CENTRE)]);
        assert_eq!(f.ids, vec!["extra".to_string()]);
        fill(&mut p);
        p.invalidate(&Invalidation::everything(), 1);
        assert_eq!(p.cache_stats(Access::Public).entries, 0);
        assert_eq!(forwarded(&mut p).unwrap().tiles.len(), 2);
    }

    #[test]
    fn an_id_remembered_missing_is_asked_again_after_a_change_names_it() {
        let o = origin();
        let mut p = Proxy::new(no_warm()).unwrap();
        run(&mut p, &o, req(&[], &["new-home"], Access::Public), 0);
        let again = p.begin(req(&[], &["new-home"], Access::Public), 1).unwrap();
        assert!(again.origin_request().is_none(), "remembered missing");
        p.invalidate(&inv_ids(&["new-home"]), 1);
        let again = p.begin(req(&[], &["new-home"], Access::Public), 1).unwrap();
        assert!(again.origin_request().is_some());
    }

    #[test]
    fn an_origin_answer_in_flight_across_a_change_is_served_not_cached() {
        let old = origin();
        let mut p = Proxy::new(no_warm()).unwrap();
        let r = req(&[CENTRE], &[], Access::Public);
        let pending = p.begin(r.clone(), 0).unwrap();
        let body = old
            .answer(pending.origin_request().unwrap(), Some(300))
            .to_json();
        // The change reaches the proxy while the origin's (old) answer is on its way.
        p.invalidate(&inv_ids(&["2624-5721-public"]), 1);
        let a = p.complete(pending, answered(&body), 2);
        assert_eq!(a.status, 200, "the caller gets its answer");
        assert!(a.shared_put.is_empty(), "nothing for the shared cache");
        let next = p.begin(r, 3).unwrap();
        assert!(
            next.origin_request().is_some(),
            "the old answer was not written back"
        );
    }

    #[test]
    fn a_warming_answer_planned_before_a_change_is_not_written() {
        let o = origin();
        let mut p = Proxy::new(ProxyConfig::default()).unwrap();
        let (_, a, _) = run(&mut p, &o, req(&[CENTRE], &[], Access::Public), 0);
        let warm = a.warm.unwrap();
        let body = o.answer(&warm, Some(300)).to_json();
        p.invalidate(&inv_ids(&["2624-5721-public"]), 1);
        let outcome = answered(&body);
        let err = p.warmed(&warm, outcome, 2).unwrap_err();
        assert!(err.message.contains("before a change"), "{}", err.message);
        let n = p.begin(tiles_req(&warm.tiles, Access::Public), 3).unwrap();
        assert_eq!(n.origin_request().unwrap().tiles.len(), warm.tiles.len());
    }

    #[test]
    fn a_shared_entry_stored_before_a_covering_change_is_refused() {
        let (t, other, e, e_other) = two_entries(1_000);
        let (e, e_other) = (e.body, e_other.body);
        let mut b = Proxy::new(no_warm()).unwrap();
        b.invalidate(&inv_ids(&["2624-5721-public"]), 2_000);
        // Stored (1 000) before the change (2 000) that names one of its items: refused.
        let err = b
            .shared_fill(Access::Public, t, e.as_bytes(), 1_000, 3_000)
            .unwrap_err();
        assert!(err.message.contains("before a change"), "{}", err.message);
        assert_eq!(b.cache_stats(Access::Public).entries, 0);
        // Another tile's entry, or one stored after the change: taken.
        assert!(b
            .shared_fill(Access::Public, other, e_other.as_bytes(), 1_000, 3_000)
            .is_ok());
        assert!(b
            .shared_fill(Access::Public, t, e.as_bytes(), 2_500, 3_000)
            .is_ok());
        // A class of one of its items, and everything: refused when older.
        let mut c = Proxy::new(no_warm()).unwrap();
        let class = Invalidation {
            classes: vec!["off_market".into()],
            ..Invalidation::default()
        };
        c.invalidate(&class, 2_000);
        assert!(c
            .shared_fill(Access::Public, t, e.as_bytes(), 1_000, 3_000)
            .is_err());
        assert!(c
            .shared_fill(Access::Public, other, e_other.as_bytes(), 1_000, 3_000)
            .is_ok());
        c.invalidate(&Invalidation::everything(), 2_000);
        assert!(c
            .shared_fill(Access::Public, other, e_other.as_bytes(), 1_000, 3_000)
            .is_err());
        // Past the log's size, older changes become a floor for every entry.
        let mut d = Proxy::new(no_warm()).unwrap();
        for k in 0..=change::MAX_CHANGE_LOG as u64 {
            d.invalidate(&inv_ids(&[&format!("x{k}")]), 2_000 + k);
        }
        assert!(d
            .shared_fill(Access::Public, other, e_other.as_bytes(), 1_000, 3_000)
            .is_err());
        assert!(d
            .shared_fill(
                Access::Public,
                other,
                e_other.as_bytes(),
                2_000 + change::MAX_CHANGE_LOG as u64,
                3_000
            )
            .is_ok());
    }

    /// Isolate A's origin request leaves before change C; its (old) answer comes back after
    /// C reached the origin and after isolate B applied C, but before A's poll did, so A's
    /// epoch is unchanged and A writes the answer to the shared cache. The entry is dated
    /// by when A planned the request, before B applied C: B refuses it. Dated by when A
    /// stored it (after B applied C), B would take the old value.
    #[test]
    fn an_old_answer_stored_after_another_isolate_applied_the_change_is_refused_there() {
        let old = origin();
        let t = tile(CENTRE);
        let mut a = Proxy::new(no_warm()).unwrap();
        let mut b = Proxy::new(no_warm()).unwrap();
        let r = req(&[CENTRE], &[], Access::Public);
        let pending = a.begin(r.clone(), 1_000).unwrap();
        let body = old
            .answer(pending.origin_request().unwrap(), Some(300))
            .to_json();
        // C reaches the origin, then B (at 2 000); A has not polled yet.
        b.invalidate(&inv_ids(&["2624-5721-public"]), 2_000);
        let answer = a.complete(pending, answered(&body), 3_000);
        assert_eq!(
            answer.shared_put,
            vec![t],
            "A's epoch is unchanged: it writes"
        );
        let e = a.shared_entry(Access::Public, t, 3_000).unwrap();
        assert_eq!(e.fetched_at_ms, 1_000, "dated when A planned the request");
        let err = b
            .shared_fill(Access::Public, t, e.body.as_bytes(), e.fetched_at_ms, 3_500)
            .unwrap_err();
        assert!(err.message.contains("before a change"), "{}", err.message);
        assert!(b
            .begin(r.clone(), 3_500)
            .unwrap()
            .origin_request()
            .is_some());
        // An answer to a request planned after B applied C read the origin after C was
        // published: its entry is taken.
        let mut a2 = Proxy::new(no_warm()).unwrap();
        let (_, answer, _) = run(&mut a2, &changed_origin("2624-5721-public"), r, 2_500);
        assert_eq!(answer.shared_put, vec![t]);
        let e = a2.shared_entry(Access::Public, t, 3_000).unwrap();
        assert_eq!(e.fetched_at_ms, 2_500);
        assert!(b
            .shared_fill(Access::Public, t, e.body.as_bytes(), e.fetched_at_ms, 3_500)
            .is_ok());
    }

    /// A warming answer is dated by when the warming request was planned too, and a tile
    /// filled from a shared-cache entry keeps the entry's date.
    /// A warming answer names its request by tier and tiles only. Its tiles seen fresh
    /// while it is out (another request filled them) are warmed again as soon as they are
    /// not: after a change, the same tiles are warmed again, and the first answer, asked
    /// before the change and still within `warmTimeoutMs`, must not be written as if it
    /// were the second's (planned after the change).
    #[test]
    fn a_warming_answer_planned_before_a_change_is_not_written_when_the_same_tiles_are_warmed_again(
    ) {
        let (old, mut p, centre, first, w, id) = warming();
        let first_body = old.answer(&first, Some(300)).to_json();
        // Its tiles filled by a request of their own, and seen fresh by a hit on the centre.
        fill_and_hit(&mut p, &old, &first, &centre, (10, 20));
        // The change, then the centre again: the same tiles are warmed again.
        p.invalidate(&Invalidation::everything(), 30);
        let new = changed_origin(&id);
        let again = run(&mut p, &new, centre, 40).1.warm.unwrap();
        assert_eq!(again, first, "the same tiles warmed again after the change");
        // The first warming's answer (the old value) comes back now.
        let outcome = answered(&first_body);
        let err = p.warmed(&first, outcome, 50).unwrap_err();
        assert!(err.message.contains("before a change"), "{}", err.message);
        // Not written: no shared entry holds the old value, and the tile is asked again.
        assert_not_written(
            &mut p,
            &new,
            (w, &id),
            60,
            "the old warming answer filled the tile",
        );
    }

    /// Three warmings of the same tiles, each planned after a change the one before it
    /// missed: the first's answer uses up the planning that stood for the first two, and
    /// the second's answer (asked after the first change, before the second) must still
    /// not be judged by the third's planning, made after the second change. Fails when an
    /// answer pops whatever planning is there: the second's old value was written, dated
    /// after the second change.
    #[test]
    fn a_warming_answer_outstanding_across_two_changes_is_not_written_by_a_later_planning() {
        let (old, mut p, centre, first, w, id) = warming();
        let first_answer = old.answer(&first, Some(300));
        // Its tiles filled and seen fresh, a change, the same tiles warmed again.
        let warm_again = |p: &mut Proxy, o: &Origin<RawData>, at: u64| {
            fill_and_hit(p, o, &first, &centre, (at, at));
            p.invalidate(&Invalidation::everything(), at + 1);
            let again = run(p, o, centre.clone(), at + 2).1.warm.unwrap();
            assert_eq!(again, first, "the same tiles warmed again after the change");
        };
        let mut mid_items = items();
        mid_items.iter_mut().find(|i| i.id == id).unwrap().data = raw("{\"k\":98}");
        let mid = Origin::new(mid_items).unwrap();
        // The second warming, planned after the first change, reads the origin then.
        warm_again(&mut p, &mid, 10);
        let second_body = mid.answer(&first, Some(300)).to_json();
        // The first warming's answer: not written.
        let first_body = first_answer.to_json();
        assert!(p.warmed(&first, answered(&first_body), 20).is_err());
        // The second change, and a third warming planned after it.
        let new = changed_origin(&id);
        warm_again(&mut p, &new, 30);
        // The second warming's answer (before the second change) comes back: not written.
        let err = p.warmed(&first, answered(&second_body), 40).unwrap_err();
        assert!(err.message.contains("before a change"), "{}", err.message);
        assert_not_written(
            &mut p,
            &new,
            (w, &id),
            50,
            "the second warming's answer filled the tile",
        );
    }

    /// A warming whose outcome never comes back (its `waitUntil` was cut off) counts as out
    /// only until its deadline (`warm_timeout_ms`): the same tiles warmed again after a
    /// change, past it, are written from their own answer. It used to count until its entry
    /// was evicted, and every later warming of those tiles after a change was judged by its
    /// planning (before the change) and not written. An answer given back past its deadline
    /// is not written either.
    #[test]
    fn a_warming_that_never_comes_back_stops_counting_at_its_deadline() {
        let (old, mut p, centre, first, w, id) = warming();
        let t = p.config().warm_timeout_ms;
        // Its tiles filled by a request of their own and seen fresh; then a change.
        fill_and_hit(&mut p, &old, &first, &centre, (10, 20));
        p.invalidate(&Invalidation::everything(), 30);
        // Past the first warming's deadline, the same tiles warmed again: its answer is
        // written.
        let new = changed_origin(&id);
        let again = run(&mut p, &new, centre.clone(), t).1.warm.unwrap();
        assert_eq!(again, first, "the same tiles warmed again after the change");
        let body = new.answer(&again, Some(300)).to_json();
        let n = p.warmed(&again, answered(&body), t + 100);
        assert!(
            n.is_ok(),
            "judged by the warming that never came back: {:?}",
            n.err()
        );
        let (forwarded, _, r) = run(&mut p, &new, tiles_req(&[w], Access::Public), t + 200);
        assert!(forwarded.is_none(), "the warming answer was not written");
        assert_eq!(data_of(&r, &id), "{\"k\":99}");
        // An answer given back at its deadline or later is not written.
        p.invalidate(&Invalidation::everything(), t + 300);
        let late = run(&mut p, &new, centre, t + 400).1.warm.unwrap();
        let body = new.answer(&late, Some(300)).to_json();
        assert!(p.warmed(&late, answered(&body), 2 * t + 400).is_err());
        assert!(p
            .shared_entry(Access::Public, late.tiles[0], 2 * t + 400)
            .is_none());
    }

    #[test]
    fn warming_answers_and_shared_fills_keep_the_date_of_their_origin_request() {
        let o = origin();
        let mut a = Proxy::new(ProxyConfig::default()).unwrap();
        let (_, answer, _) = run(&mut a, &o, req(&[CENTRE], &[], Access::Public), 1_000);
        let warm = answer.warm.unwrap();
        let body = o.answer(&warm, Some(300)).to_json();
        let outcome = answered(&body);
        a.warmed(&warm, outcome, 4_000).unwrap();
        let w = warm.tiles[0];
        let e = a.shared_entry(Access::Public, w, 4_000).unwrap();
        assert_eq!(e.fetched_at_ms, 1_000, "planned with the answer at 1 000");
        let mut b = Proxy::new(no_warm()).unwrap();
        b.invalidate(&inv_ids(&["nothing-here"]), 2_000);
        b.shared_fill(Access::Public, w, e.body.as_bytes(), e.fetched_at_ms, 5_000)
            .unwrap();
        assert_eq!(
            b.shared_entry(Access::Public, w, 5_000)
                .unwrap()
                .fetched_at_ms,
            1_000
        );
    }

    /// A feed that cannot replay the changes before a time: everything held is dropped,
    /// shared-cache entries fetched before it are refused, later ones are still checked
    /// against the changes applied.
    #[test]
    fn everything_before_a_floor_is_refused_and_later_entries_are_checked() {
        let o = origin();
        let (t, other, e, e_other) = two_entries(5_000);
        let mut b = Proxy::new(no_warm()).unwrap();
        run(&mut b, &o, req(&[CENTRE], &[], Access::Public), 1_000);
        let epoch = b.epoch();
        assert!(
            b.invalidate_all_before(4_000) > 0,
            "what it held is dropped"
        );
        assert_eq!(b.epoch(), epoch + 1);
        assert_eq!(b.cache_stats(Access::Public).entries, 0);
        // The replay after the floor: a change naming one of the centre's items.
        b.invalidate(&inv_ids(&["2624-5721-public"]), 6_000);
        assert!(b
            .shared_fill(Access::Public, other, e_other.body.as_bytes(), 3_999, 6_500)
            .is_err());
        assert!(b
            .shared_fill(Access::Public, t, e.body.as_bytes(), e.fetched_at_ms, 6_500)
            .is_err());
        assert!(b
            .shared_fill(Access::Public, other, e_other.body.as_bytes(), 4_000, 6_500)
            .is_ok());
        // The floor never moves back, and the log it covers is folded into it.
        b.invalidate_all_before(1_000);
        assert!(b
            .shared_fill(Access::Public, other, e_other.body.as_bytes(), 3_999, 6_500)
            .is_err());
        b.invalidate_all_before(7_000);
        assert!(b
            .shared_fill(Access::Public, other, e_other.body.as_bytes(), 6_999, 7_500)
            .is_err());
        assert!(b
            .shared_fill(Access::Public, t, e.body.as_bytes(), 7_000, 7_500)
            .is_ok());
    }
}

/// Cached tiles that together hold more than one answer may (what clients read) are
/// answered as far as they fit, in request order, the rest left out as `response_full`
/// (asked again by the client), the spliced fast path included. Before, the whole answer
/// went out, over what every client reads.
#[test]
fn cached_tiles_over_what_one_answer_holds_answer_what_fits_and_leave_the_rest_out() {
    let o = origin();
    let mut p = Proxy::new(ProxyConfig {
        limits: Limits {
            max_items: 3,
            ..Limits::default()
        },
        ..no_warm()
    })
    .unwrap();
    // The centre holds two public items, the others one each.
    let tiles = [
        "14/2624/5721",
        "14/2625/5721",
        "14/2623/5721",
        "14/2624/5722",
    ];
    for t in tiles {
        let (_, a, _) = run(&mut p, &o, req(&[t], &[], Access::Public), 0);
        assert_eq!(a.status, 200);
    }
    let (forwarded, a, d) = run(&mut p, &o, req(&tiles, &[], Access::Public), 1);
    assert!(forwarded.is_none(), "every tile cached");
    assert_eq!(a.status, 200);
    let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(v["error"]["code"], "response_full", "{v}");
    assert_eq!(v["error"]["tiles"], serde_json::json!([tiles[2], tiles[3]]));
    let listed: Vec<String> = d.tiles.iter().map(|l| l.tile.to_string()).collect();
    assert_eq!(listed, [tiles[0], tiles[1]]);
    assert_eq!(
        (d.items.len(), d.left_out),
        (3, Some(ErrorCode::ResponseFull))
    );
    // The rest, asked again, fits.
    let (_, _, d) = run(&mut p, &o, req(&tiles[2..], &[], Access::Public), 2);
    assert_eq!((d.tiles.len(), d.left_out), (2, None));
}

/// An origin's partial answer that left tiles out for want of room (a tilewarm-server's
/// `response_full`) is passed on with its code, so the client asks them again at once.
/// Before, the edge called them an `upstream_error`, which a client backs off from.
#[test]
fn an_origins_response_full_is_passed_on_as_such() {
    let o = origin();
    let mut p = Proxy::new(no_warm()).unwrap();
    let pending = p
        .begin(
            req(&["14/2624/5721", "14/2625/5721"], &[], Access::Public),
            0,
        )
        .unwrap();
    let forwarded = pending.origin_request().cloned().unwrap();
    let mut first = forwarded.clone();
    first.tiles.truncate(1);
    let mut body = o.answer(&first, Some(300)).to_json();
    body.pop();
    body.push_str(
        r#","error":{"code":"response_full","message":"did not fit","tiles":["14/2625/5721"],"ids":[]}}"#,
    );
    let a = p.complete(
        pending,
        OriginOutcome::Answer {
            status: 200,
            body: body.as_bytes(),
            retry_after_ms: None,
        },
        0,
    );
    assert_eq!(a.status, 200);
    let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(v["error"]["code"], "response_full", "{v}");
    assert_eq!(v["error"]["tiles"], serde_json::json!(["14/2625/5721"]));
}

/// An id the proxy holds as missing (the origin said so) that a later answer's tile list
/// names (the item was made since) is answered with that item, not also as `missing`: a
/// client refuses an answer that says both, and the request's tiles with it. Found by a
/// random run against an origin whose items come and go.
#[test]
fn an_id_held_as_missing_that_a_fresh_list_names_is_answered() {
    let mut p = Proxy::new(no_warm()).unwrap();
    let t = tile("14/2624/5721");
    let pending = p.begin(req(&[], &["new"], Access::Public), 0).unwrap();
    let gone = r#"{"tiles":[],"items":[],"missing":["new"],"access":"public"}"#;
    let a = p.complete(pending, answered(gone), 0);
    assert_eq!(a.status, 200);
    // The item is made in the tile; the next request asks for both.
    let pending = p
        .begin(req(&["14/2624/5721"], &["new"], Access::Public), 10)
        .unwrap();
    let forwarded = pending.origin_request().cloned().unwrap();
    assert_eq!(forwarded.ids, Vec::<String>::new(), "held as missing");
    let b = t.bounds();
    let body = format!(
        r#"{{"tiles":[{{"tile":"{t}","ids":["new"]}}],"items":[{{"id":"new","lon":{},"lat":{},"class":"active","access":"public","data":1}}],"missing":[],"access":"public"}}"#,
        (b.west + b.east) / 2.0,
        (b.south + b.north) / 2.0
    );
    let a = p.complete(pending, answered(&body), 10);
    assert_eq!(a.status, 200);
    let d = decode_response(a.body.as_bytes(), &Limits::default())
        .unwrap_or_else(|e| panic!("{e}: {}", a.body));
    assert_eq!(d.items.len(), 1);
    assert!(d.missing.is_empty());
}

/// A TTL the cache keeps an entry longer than the protocol allows (an edge's `defaultTtl`
/// of a year; or a clock that stepped back since the entry was stored) is answered as the
/// protocol's longest, 30 days: a `ttl` above it makes clients refuse the whole answer.
#[test]
fn a_ttl_left_over_30_days_is_answered_as_30_days() {
    let o = origin();
    let year_ms = 365 * 24 * 3600 * 1000;
    let mut config = no_warm();
    config.cache.default_ttl_ms = year_ms;
    config.cache.class_ttl_ms.clear();
    let mut p = Proxy::new(config).unwrap();
    let r = req(&["14/2624/5721"], &["extra"], Access::Public);
    let now = 1_000_000_000;
    let (fwd, _, _) = run(&mut p, &o, r.clone(), now);
    assert!(fwd.is_some());
    // Served from the cache, a second later and a minute before (the clock stepped back).
    for at in [now + 1000, now - 60_000] {
        let (fwd, a, d) = run(&mut p, &o, r.clone(), at);
        assert_eq!((fwd, a.verdict), (None, Verdict::Hit));
        let max = Limits::default().max_ttl_s;
        assert!(d.items.iter().all(|it| it.ttl.is_some_and(|t| t <= max)));
        assert!(d.tiles.iter().all(|l| l.ttl.is_some_and(|t| t <= max)));
    }
}

/// An origin whose answers are legal but change under the proxy: items come and go, change
/// tier, class and place, lists name tiles not asked for, answers are partial, fail or are
/// too large. A tiny generator (xorshift) from each step's seed writes them.
mod changing_origin {
    use super::*;
    use crate::protocol::MAX_TTL_S;

    pub(super) struct Rng(pub u64);

    impl Rng {
        pub fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
        }
        fn f(&mut self) -> f64 {
            self.below(1 << 20) as f64 / (1 << 20) as f64
        }
        pub fn pick<T: Copy>(&mut self, v: &[T]) -> T {
            v[self.below(v.len() as u64) as usize]
        }
    }

    /// An item `id` somewhere in tile `t` (or, one time in five, near it), of any tier.
    fn item(r: &mut Rng, id: &str, t: TileId) -> serde_json::Value {
        let b = t.bounds();
        let (lon, lat) = match r.below(5) {
            0 => (-122.33 + r.f() * 0.1, 47.61 + r.f() * 0.1),
            _ => (
                b.west + (b.east - b.west) * r.f(),
                b.south + (b.north - b.south) * r.f(),
            ),
        };
        let mut it = serde_json::json!({
            "id": id, "lon": lon, "lat": lat,
            "class": r.pick(&["active", "sold"]),
            "access": r.pick(&Access::ALL).as_str(),
            "data": r.pick(&[1, 2]),
        });
        if let Some(ttl) = r.pick(&[None, Some(0), Some(1), Some(MAX_TTL_S)]) {
            it["ttl"] = ttl.into();
        }
        it
    }

    /// The origin's answer to `request` today.
    pub(super) fn answer(r: &mut Rng, request: &BatchRequest) -> String {
        let (mut lists, mut items, mut missing) = (Vec::new(), Vec::new(), Vec::new());
        let mut used = HashSet::new();
        let mut tiles = request.tiles.clone();
        if r.below(4) == 0 {
            tiles.pop(); // left out
        }
        if r.below(4) == 0 {
            tiles.push(tile("14/2625/5722")); // not asked for
        }
        let mut seen = HashSet::new();
        tiles.retain(|t| seen.insert(*t));
        for t in tiles {
            let mut ids = Vec::new();
            for _ in 0..r.below(4) {
                let id = format!("i{}", r.below(24));
                if used.insert(id.clone()) {
                    items.push(item(r, &id, t));
                    ids.push(id);
                }
            }
            let mut list = serde_json::json!({ "tile": t.to_string(), "ids": ids });
            if let Some(ttl) = r.pick(&[None, Some(0), Some(MAX_TTL_S)]) {
                list["ttl"] = ttl.into();
            }
            lists.push(list);
        }
        for id in &request.ids {
            match r.below(3) {
                _ if used.contains(id) => {}
                0 => {
                    items.push(item(r, id, tile("14/2624/5721")));
                    used.insert(id.clone());
                }
                1 => missing.push(id.clone()),
                _ => {} // left out
            }
        }
        let mut body = serde_json::json!({ "tiles": lists, "items": items, "missing": missing });
        match r.below(3) {
            0 => {}
            1 => body["access"] = request.access.as_str().into(),
            _ => body["access"] = r.pick(&Access::ALL).as_str().into(),
        }
        if r.below(4) == 0 {
            body["error"] = serde_json::json!({ "code": "response_full", "message": "full" });
        }
        body.to_string()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    /// Whatever such an origin answers, and with a clock that sometimes steps back, every
    /// answer the proxy gives is one clients accept (it decodes and validates), holds
    /// nothing above the caller's tier, and reports that tier; the origin is never asked
    /// above it. Found the id answered both as an item and as `missing`, and the cached
    /// ttl over 30 days (the tests above).
    #[test]
    fn every_answer_is_valid_whatever_a_changing_origin_says(
        steps in prop::collection::vec(
            (prop::collection::vec(tile_near(), 0..4),
             prop::collection::vec(prop::sample::select((0..24).map(|i| format!("i{i}")).collect::<Vec<_>>()), 0..3),
             prop::sample::select(Access::ALL.to_vec()),
             any::<u64>()),
            1..60),
        year_long_ttl in any::<bool>(),
    ) {
        use changing_origin::{answer, Rng};
        let mut config = ProxyConfig::default();
        if year_long_ttl {
            config.cache.default_ttl_ms = 365 * 24 * 3600 * 1000;
        }
        let mut p = Proxy::new(config).unwrap();
        let mut now = 1_000_000_000u64;
        for (tiles, ids, access, seed) in steps {
            let mut r = Rng(seed | 1);
            now = match r.below(8) {
                0 => now - r.below(100_000), // the clock stepped back
                _ => now + r.below(60_000),
            };
            let mut request = BatchRequest { tiles, ids, access };
            let mut seen = HashSet::new();
            request.tiles.retain(|t| seen.insert(*t));
            request.ids.sort();
            request.ids.dedup();
            if request.is_empty() {
                continue;
            }
            let Ok(mut pending) = p.begin(request, now) else { continue };
            let a = loop {
                let Some(asked) = pending.origin_request().cloned() else {
                    break p.complete(pending, OriginOutcome::Timeout(""), now);
                };
                prop_assert_eq!(asked.access, access);
                let body = answer(&mut r, &asked);
                let outcome = match r.below(8) {
                    0 => OriginOutcome::Timeout("slow"),
                    1 => OriginOutcome::TooLarge { status: 200, bytes: 1 << 30, retry_after_ms: None },
                    2 => OriginOutcome::Answer { status: 503, body: b"{}", retry_after_ms: Some(1000) },
                    _ => answered(&body),
                };
                if !p.ask_in_part(&mut pending, &outcome) {
                    break p.complete(pending, outcome, now);
                }
            };
            if a.status == 200 {
                let d = decode_response(a.body.as_bytes(), &Limits::default())
                    .map_err(|e| TestCaseError::fail(format!("{e}: {}", a.body)))?;
                prop_assert!(d.items.iter().all(|it| access.can_see(it.access)), "{}", a.body);
                prop_assert_eq!(d.access, Some(access));
            }
            if let Some(w) = &a.warm {
                let body = answer(&mut r, w);
                let _ = p.warmed(w, answered(&body), now);
            }
        }
    }
}

/// The worker's clock is a wall clock (`Date.now()`), which can step back: no wait of the
/// proxy lasts longer than its length, whatever the clock does, and nothing cached is
/// served past its TTL (`crate::clock`). Each test steps the clock back an hour in the
/// middle of a wait, and the proxy sees it at once (a wall clock cannot tell the time
/// between the last call before the step and the first after it: it counts as none).
mod clock_steps {
    use super::*;

    /// A wall time (2027) and an hour.
    const T: u64 = 1_800_000_000_000;
    const HOUR: u64 = 3_600_000;

    /// A call at `now` that changes nothing the tests look at: the first after the step.
    fn see(p: &mut Proxy, now: u64) {
        let _ = p.begin(req(&["14/2630/5730"], &[], Access::Public), now);
    }

    /// An isolate whose clock stepped back ages another's shared entries on the wall clock:
    /// on its own clock, ahead by the step, every entry looked older by it, and one longer
    /// than a tile TTL had it refuse every entry (and call the origin) for its whole life.
    #[test]
    fn an_isolate_whose_clock_stepped_back_takes_a_fresh_shared_entry() {
        let o = origin();
        let mut a = Proxy::new(no_warm()).unwrap();
        let t = tile("14/2625/5721");
        run(&mut a, &o, req(&["14/2625/5721"], &[], Access::Public), T);
        let e = a.shared_entry(Access::Public, t, T + 1_000).unwrap();
        // b's wall clock was two hours fast, then set right.
        let mut b = Proxy::new(no_warm()).unwrap();
        see(&mut b, T + 2 * HOUR);
        see(&mut b, T + 1_500);
        let fill = b.shared_fill(
            Access::Public,
            t,
            e.body.as_bytes(),
            e.fetched_at_ms,
            T + 2_000,
        );
        assert!(fill.is_ok(), "{:?}", fill.err().map(|e| e.message));
    }

    #[test]
    fn a_cached_tile_lives_its_ttl_and_no_more() {
        let o = origin();
        let mut p = Proxy::new(no_warm()).unwrap();
        let r = req(&["14/2625/5721"], &[], Access::Public);
        run(&mut p, &o, r.clone(), T);
        see(&mut p, T - HOUR);
        let (fwd, a, _) = run(&mut p, &o, r.clone(), T - HOUR + 299_999);
        assert_eq!((fwd, a.verdict), (None, Verdict::Hit));
        let (fwd, a, _) = run(&mut p, &o, r.clone(), T - HOUR + 300_000);
        assert_eq!(
            (fwd.unwrap(), a.verdict),
            (r, Verdict::Miss),
            "past its TTL"
        );
    }

    #[test]
    fn an_id_is_remembered_missing_for_a_ttl_and_no_more() {
        let o = origin();
        let mut p = Proxy::new(no_warm()).unwrap();
        let r = req(&[], &["new-home"], Access::Public);
        run(&mut p, &o, r.clone(), T);
        let ttl = p.config().cache.default_ttl_ms;
        see(&mut p, T - HOUR);
        let again = p.begin(r.clone(), T - HOUR + ttl - 1).unwrap();
        assert!(again.origin_request().is_none(), "remembered missing");
        let again = p.begin(r, T - HOUR + ttl).unwrap();
        assert!(again.origin_request().is_some(), "asked again");
    }

    #[test]
    fn a_failed_warming_is_tried_again_after_its_delay() {
        let o = origin();
        let mut p = Proxy::new(ProxyConfig::default()).unwrap();
        let centre = req(&["14/2624/5721"], &[], Access::Public);
        let (_, a, _) = run(&mut p, &o, centre.clone(), T);
        assert!(p
            .warmed(&a.warm.unwrap(), OriginOutcome::Timeout(""), T)
            .is_err());
        let from = T - HOUR;
        see(&mut p, from);
        let (_, a, _) = run(&mut p, &o, centre.clone(), from + WARM_RETRY_MS - 1);
        assert!(a.warm.is_none());
        let (_, a, _) = run(&mut p, &o, centre, from + WARM_RETRY_MS);
        assert_eq!(a.warm.map(|w| w.tiles.len()), Some(8));
    }

    #[test]
    fn warming_is_quiet_for_the_origins_retry_after_and_no_more() {
        let o = origin();
        let overloaded = br#"{"error":{"code":"overloaded","message":"at capacity"}}"#;
        let refused = OriginOutcome::Answer {
            status: 503,
            body: overloaded,
            retry_after_ms: Some(30_000),
        };
        let mut p = Proxy::new(ProxyConfig::default()).unwrap();
        let centre = req(&["14/2624/5721"], &[], Access::Public);
        let elsewhere = req(&["14/2630/5730"], &[], Access::Public);
        let (_, a, _) = run(&mut p, &o, centre, T);
        assert!(p.warmed(&a.warm.unwrap(), refused, T).is_err());
        let from = T - HOUR;
        see(&mut p, from);
        let (_, a, _) = run(&mut p, &o, elsewhere.clone(), from + 29_999);
        assert!(a.warm.is_none(), "quiet");
        let (_, a, _) = run(&mut p, &o, elsewhere, from + 30_000);
        assert!(a.warm.is_some(), "after its Retry-After");
    }

    /// A shared-cache entry is dated on the worker's clock as it reads now (the one other
    /// isolates read it by), so its age there is the time that passed: read back after
    /// its TTL, it is refused.
    #[test]
    fn a_shared_entry_is_dated_on_the_workers_clock() {
        let o = origin();
        let mut a = Proxy::new(no_warm()).unwrap();
        let t = tile("14/2625/5721");
        run(&mut a, &o, req(&["14/2625/5721"], &[], Access::Public), T);
        see(&mut a, T - HOUR);
        let now = T - HOUR + 1_000;
        let e = a.shared_entry(Access::Public, t, now).unwrap();
        assert_eq!(e.fetched_at_ms, now - 1_000, "planned a second ago");
        let mut b = Proxy::new(no_warm()).unwrap();
        let body = e.body.as_bytes();
        let err =
            (b.shared_fill(Access::Public, t, body, e.fetched_at_ms, now + 300_000)).unwrap_err();
        assert!(err.message.contains("expired"), "{}", err.message);
    }
}

/// An item raised above the caller's tier at the origin, with no change event for it: the
/// tile's list fetched again at that tier leaves it out, and the edge forgets its copy
/// then, so an id request for it goes to the origin (which has nothing for that tier)
/// instead of being answered from the old public copy until the item's TTL.
#[test]
fn an_item_the_origin_stops_listing_at_a_tier_is_not_served_by_id_from_its_old_copy() {
    let mut items = items();
    for it in &mut items {
        if it.id == "extra" {
            it.ttl = Some(3600);
        }
    }
    let before = Origin::new(items.clone()).unwrap();
    for it in &mut items {
        if it.id == "extra" {
            it.access = Access::Agent;
        }
    }
    let after = Origin::new(items).unwrap();
    let mut proxy = Proxy::new(ProxyConfig::default()).unwrap();
    let public = |tiles: Vec<TileId>, ids: Vec<String>| BatchRequest {
        tiles,
        ids,
        access: Access::Public,
    };
    let centre = tile("14/2624/5721");
    let (_, _, r) = run(&mut proxy, &before, public(vec![centre], vec![]), 0);
    assert!(r.items.iter().any(|i| i.id == "extra"));
    // Past the list's TTL (300 s), the origin has it at agent: the public list leaves it out.
    let (fwd, _, r) = run(&mut proxy, &after, public(vec![centre], vec![]), 301_000);
    assert!(fwd.is_some_and(|f| f.tiles == [centre]));
    assert!(!r.tiles[0].ids.iter().any(|id| id == "extra"));
    let (fwd, _, r) = run(
        &mut proxy,
        &after,
        public(vec![], vec!["extra".into()]),
        302_000,
    );
    assert_eq!(
        fwd.map(|f| f.ids),
        Some(vec!["extra".to_string()]),
        "asked of the origin"
    );
    assert!(r.items.is_empty(), "{:?}", r.items);
    assert_eq!(r.missing, ["extra"]);
}
