//! `POST /v1/invalidate` and `GET /v1/changes`: who may invalidate, that no instance serves
//! an invalidated entry once the call returned (two instances on one real Redis), and the
//! feed: events with stream ids, resuming with `Last-Event-ID`, `reset` past retention.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use tilewarm::access::Access;
use tilewarm::protocol::StreamId;
use tilewarm_server::stream::{Event, ResetReason};
use tilewarm_server::Server;

use crate::common::{
    config, eventually, now_s, redis_available, server, sign_hs256, Config, Http, RedisServer,
};
use crate::feed::Feed;
use crate::redis::eventually_async;
use crate::{densest, origin, request};

pub(crate) fn admin_token() -> String {
    sign_hs256(&serde_json::json!({
        "sub": "ops",
        "exp": now_s() + 3600,
        "tilewarm_access": "agent",
        "tilewarm_admin": true,
    }))
}

/// The top tier, which the feed sends ids to.
fn agent_token() -> String {
    sign_hs256(&serde_json::json!({
        "sub": "page",
        "exp": now_s() + 3600,
        "tilewarm_access": "agent",
    }))
}

pub(crate) async fn post_invalidate(http: &Http, s: &Server, body: &str) -> crate::common::Reply {
    http.send(
        "POST",
        &format!("{}/v1/invalidate", s.url()),
        &[("content-type", "application/json")],
        body.to_string(),
    )
    .await
}

/// `POST /v1/invalidate` on `s` with `body` by an admin, checked to be a 200: the reply.
pub(crate) async fn admin_invalidates(s: &Server, body: &str) -> crate::common::Reply {
    let r = post_invalidate(&Http::with_token(Some(admin_token())), s, body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r
}

#[tokio::test]
async fn only_an_admin_token_may_invalidate() {
    let s = server(config()).await;
    let body = r#"{"ids":["s2a-7"]}"#;
    // No token: 401 (removing the token check in invalidate_handler makes this a 403),
    // with a challenge naming no error (RFC 6750 3.1: it sent no token, none is invalid).
    let r = post_invalidate(&Http::anonymous(), &s, body).await;
    let msg = r.error(401, "unauthorized");
    assert!(msg.contains("tilewarm_admin"), "{msg}");
    assert_eq!(r.headers["www-authenticate"], "Bearer realm=\"tilewarm\"");
    // A valid agent token without the claim: 403 (removing the admin check: 200), with
    // RFC 6750's challenge for a token that lacks what is needed (it had none).
    let r = post_invalidate(&Http::new(), &s, body).await;
    let msg = r.error(403, "forbidden");
    assert!(msg.contains("\"tilewarm_admin\": true"), "{msg}");
    assert_eq!(
        r.headers["www-authenticate"],
        "Bearer error=\"insufficient_scope\""
    );
    // The claim must be the boolean true.
    let stringly = sign_hs256(&serde_json::json!({
        "exp": now_s() + 3600, "tilewarm_admin": "true",
    }));
    post_invalidate(&Http::with_token(Some(stringly)), &s, body)
        .await
        .error(403, "forbidden");
    // A bad token: 401, as everywhere, and this one is invalid.
    let r = post_invalidate(&Http::with_token(Some("x.y.z".into())), &s, body).await;
    r.error(401, "unauthorized");
    assert_eq!(
        r.headers["www-authenticate"],
        "Bearer error=\"invalid_token\""
    );
    let admin = Http::with_token(Some(admin_token()));
    let r = post_invalidate(&admin, &s, body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["id"].as_str().unwrap().contains('-'));
    // Bad bodies: the core decoder's messages.
    let msg = post_invalidate(&admin, &s, r#"{"all":false}"#)
        .await
        .error(400, "bad_request");
    assert!(msg.contains("covers nothing"), "{msg}");
    let msg = post_invalidate(&admin, &s, r#"{"tiles":["99/0/0"]}"#)
        .await
        .error(400, "bad_request");
    assert!(msg.starts_with("tiles[0]"), "{msg}");
    let r = admin
        .send(
            "GET",
            &format!("{}/v1/invalidate", s.url()),
            &[],
            Bytes::new(),
        )
        .await;
    r.error(405, "method_not_allowed");
    s.shutdown().await;
}

/// A request arriving after an invalidation of a tile that another request is fetching
/// leads a fetch of its own: following that flight would serve it an answer that may be
/// older than the change (removing `forget` from `invalidate` makes it one origin call).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_after_an_invalidation_does_not_follow_an_older_fetch() {
    let o = origin(42, 5_000);
    let tile = densest(&o);
    let s = server(Config {
        origin_latency_ms: 1_500,
        warmup_ring: 0,
        ..config()
    })
    .await;
    let calls = || s.app.metrics.origin_calls_request.load(Relaxed);
    let (url, body) = (
        format!("{}/v1/batch", s.url()),
        request(&[tile], &[], Access::Public),
    );
    let json = [("content-type", "application/json")];
    let (u, b) = (url.clone(), body.clone());
    let first = tokio::spawn(async move { Http::new().send("POST", &u, &json, b).await });
    assert!(eventually(Duration::from_secs(5), || calls() == 1).await);
    let admin = Http::with_token(Some(admin_token()));
    let inv = format!(r#"{{"tiles":["{tile}"]}}"#);
    assert_eq!(post_invalidate(&admin, &s, &inv).await.status, 200);
    let second = Http::new().send("POST", &url, &json, body).await;
    assert_eq!(second.status, 200, "{}", second.text());
    assert_eq!(calls(), 2, "the second request asked the origin itself");
    assert_eq!(first.await.unwrap().status, 200);
    s.shutdown().await;
}

/// A feed lives no longer than the token it was opened with: when the token stops
/// verifying (its `exp`, leeway 0 here) the stream sends `expired` and ends, so a page
/// that lost its tier (or never refreshed its token) is not sent the top tier's ids for
/// ever. Fails without the stream's deadline (no event within 10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_ends_with_expired_when_its_token_does() {
    let s = server(Config {
        jwt_leeway_s: 0,
        ..config()
    })
    .await;
    let short = sign_hs256(&serde_json::json!({
        "sub": "page",
        "exp": now_s() + 2,
        "tilewarm_access": "agent",
    }));
    let mut feed = Feed::open(&s, Some(&short), None).await;
    let ready = feed.next().await;
    assert_eq!(ready.event, "ready");
    let started = std::time::Instant::now();
    let last = feed.next().await;
    assert_eq!(last.event, "expired", "{last:?}");
    assert!(started.elapsed() <= Duration::from_secs(4));
    // And then the stream ends: no more frames.
    let end = tokio::time::timeout(Duration::from_secs(5), feed.body.frame())
        .await
        .expect("the stream ends after expired");
    assert!(end.is_none(), "{end:?}");
    // A fresh token resumes after the last event, as before.
    let mut again = Feed::open(&s, Some(&agent_token()), Some(&ready.id)).await;
    assert_eq!(again.next().await.event, "ready");
    s.shutdown().await;
}

/// One anonymous client cannot take every feed slot: past `--changes-max-per-caller` open
/// streams it is refused (429) while another caller still gets one; a closed stream gives
/// its slot back; and `/v1/changes` has the per-caller rate limit of `/v1/batch`. Fails
/// without the per-caller cap (the fifth stream opens) and without the admission layer.
#[tokio::test]
async fn one_caller_cannot_hold_every_feed_slot() {
    let s = server(Config {
        changes_max_subscribers: 8,
        changes_max_per_caller: 2,
        ..config()
    })
    .await;
    let a = Feed::open(&s, None, None).await;
    let _b = Feed::open(&s, None, None).await;
    // (A poll, so that without the cap the answer ends and the test fails, not hangs.)
    let r = Http::anonymous()
        .get(&format!("{}/v1/changes?follow=false", s.url()))
        .await;
    let msg = r.error(429, "rate_limited");
    assert!(msg.contains("--changes-max-per-caller"), "{msg}");
    assert_eq!(s.app.changes.stats.subscribers.load(Relaxed), 2);
    // Another caller (a verified subject) still gets a stream.
    let other = sign_hs256(&serde_json::json!({
        "sub": "someone", "exp": now_s() + 3600, "tilewarm_access": "public",
    }));
    let _c = Feed::open(&s, Some(&other), None).await;
    // A closed stream gives its slot back.
    drop(a);
    assert!(
        eventually(Duration::from_secs(20), || s
            .app
            .changes
            .open_for("ip:127.0.0.1")
            < 2)
        .await,
        "the closed stream's slot was not given back"
    );
    s.shutdown().await;

    // The per-caller rate limit applies to the feed too.
    let s = server(Config {
        caller_rate: 1,
        caller_burst: 2,
        ..config()
    })
    .await;
    let poll = format!("{}/v1/changes?follow=false", s.url());
    Http::anonymous().get(&poll).await;
    Http::anonymous().get(&poll).await;
    Http::anonymous()
        .get(&poll)
        .await
        .error(429, "rate_limited");
    s.shutdown().await;
}

/// Past `--changes-max-subscribers` open streams the next is a 503 `overloaded` with
/// `Retry-After` (`--retry-after-s`), as every 503. Fails without the header.
#[tokio::test]
async fn a_full_change_feed_is_a_503_with_retry_after() {
    let s = server(Config {
        changes_max_subscribers: 1,
        retry_after_s: 3,
        ..config()
    })
    .await;
    let _a = Feed::open(&s, None, None).await;
    let r = Http::anonymous()
        .get(&format!("{}/v1/changes?follow=false", s.url()))
        .await;
    let msg = r.error(503, "overloaded");
    assert!(msg.contains("--changes-max-subscribers"), "{msg}");
    assert_eq!(r.headers.get("retry-after").unwrap(), "3");
    s.shutdown().await;
}

/// An instance on `r`. Redis commands time out after 2 s: these tests count what reached
/// Redis, and one command slower than a shorter limit on a busy machine would mark it down
/// (the tests of a Redis that is down or slow set their own).
pub(crate) fn redis_config(r: &RedisServer) -> Config {
    Config {
        redis: Some(r.url()),
        redis_timeout_ms: 2_000,
        warmup_ring: 0,
        ..config()
    }
}

/// A follower told of a change finds the old value gone from the tier of the instance
/// that made it: the stream's reader hands that instance's own entries to its followers as
/// soon as Redis has them, so the delete must not wait until after the `XADD`. A hundred
/// changes, each read from the tier the moment its event is handed out; with the delete
/// only after the `XADD`, about one in twenty found the item still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_told_of_a_change_does_not_read_the_old_value_back() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let o = origin(42, 5_000);
    let tile = densest(&o);
    let s = server(Config {
        warmup_ring: 0,
        invalidate_rate: 0,
        ..redis_config(&redis)
    })
    .await;
    let http = Http::new();
    let admin = Http::with_token(Some(admin_token()));
    let mut events = s.app.changes.events();
    let mut stale = Vec::new();
    for round in 0..100 {
        // Warm the tile (and its items) in the tier again.
        let r = http.ok(&s, &request(&[tile], &[], Access::Agent)).await;
        let id = r.tiles[0].ids[round % r.tiles[0].ids.len()].clone();
        let held = || async {
            s.app
                .tier
                .read(&[], std::slice::from_ref(&id))
                .await
                .unwrap()
                .ids[0]
                .is_some()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !held().await {
            assert!(
                std::time::Instant::now() < deadline,
                "{id} never written back"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let body = format!(r#"{{"ids":["{id}"]}}"#);
        let told = async {
            loop {
                match events.recv().await {
                    Ok(Event::Invalidate(_, inv, _)) if inv.ids == std::slice::from_ref(&id) => {
                        break
                    }
                    Ok(_) => continue,
                    Err(e) => panic!("{e}"),
                }
            }
            if held().await {
                stale.push(id.clone());
            }
        };
        let told = tokio::time::timeout(Duration::from_secs(10), told);
        let (posted, told) = tokio::join!(post_invalidate(&admin, &s, &body), told);
        assert_eq!(posted.status, 200, "{}", posted.text());
        assert!(told.is_ok(), "no event for {id} within 10 s");
    }
    assert!(stale.is_empty(), "read back after their events: {stale:?}");
    s.shutdown().await;
}

/// With Redis, a gap says from where the stream can replay (`from`: just before the oldest
/// entry kept), as the edge's replay uses (docs/edge.md, "Changes"), and resuming there
/// misses nothing; an id newer than the stream ever made (a deleted stream: what it held is
/// unknown) gets no `from`. Trimmed exactly (`XTRIM`, not `~`), so which entry is first kept
/// is known.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_gap_says_from_where_the_stream_can_replay() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let s = server(redis_config(&redis)).await;
    let admin = Http::with_token(Some(admin_token()));
    let changes = &s.app.changes;
    let (_, start) = changes.since(None).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        let r = post_invalidate(&admin, &s, &format!(r#"{{"ids":["x{i}"]}}"#)).await;
        ids.push(
            r.json()["id"]
                .as_str()
                .unwrap()
                .parse::<StreamId>()
                .unwrap(),
        );
    }
    let out = std::process::Command::new("redis-cli")
        .args(["-u", &redis.url(), "XTRIM", "tw:changes", "MAXLEN", "2"])
        .output()
        .expect("redis-cli runs");
    assert!(out.status.success());
    let first = ids[1];
    let from = match first.seq {
        0 => StreamId {
            ms: first.ms - 1,
            seq: u64::MAX,
        },
        seq => StreamId {
            ms: first.ms,
            seq: seq - 1,
        },
    };
    let (ev, pos) = changes.since(Some(start)).await.unwrap();
    assert_eq!(pos, ids[2]);
    assert!(
        matches!(ev[..], [Event::Reset(id, ResetReason::Gap { from: Some(f) })] if id == ids[2] && f == from),
        "{ev:?}"
    );
    let (ev, _) = changes.since(Some(from)).await.unwrap();
    assert_eq!(ev.iter().map(Event::id).collect::<Vec<_>>(), ids[1..]);
    let future = StreamId {
        ms: ids[2].ms + 1_000_000,
        seq: 0,
    };
    let (ev, _) = changes.since(Some(future)).await.unwrap();
    assert!(
        matches!(ev[..], [Event::Reset(_, ResetReason::Gap { from: None })]),
        "{ev:?}"
    );
    s.shutdown().await;
}

/// A stream entry that is not an invalidation (written by something else, or damaged) is
/// a `reset` for followers and an `all` on every instance, counted; never skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_stream_entry_resets_followers_and_is_counted() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let s = server(redis_config(&redis)).await;
    let mut feed = Feed::open(&s, None, None).await;
    assert_eq!(feed.next().await.event, "ready");
    let out = std::process::Command::new("redis-cli")
        .args([
            "-u",
            &redis.url(),
            "XADD",
            "tw:changes",
            "*",
            "inv",
            "not json",
        ])
        .output()
        .expect("redis-cli runs");
    assert!(out.status.success());
    let ev = feed.next().await;
    assert_eq!(ev.event, "reset", "{ev:?}");
    assert_eq!(ev.data, serde_json::json!({ "reason": "unreadable" }));
    let stats = &s.app.changes.stats;
    assert!(
        eventually(Duration::from_secs(10), || stats.bad_entries.load(Relaxed)
            >= 1)
        .await
    );
    assert_eq!(
        s.app.invalidation.stats.all.load(Relaxed),
        1,
        "applied as all"
    );
    // A client resuming from before it gets the reset too.
    let poll = Http::anonymous()
        .send(
            "GET",
            &format!("{}/v1/changes?follow=false", s.url()),
            &[("last-event-id", "1-0")],
            Bytes::new(),
        )
        .await;
    assert!(poll.text().contains("event: reset"), "{}", poll.text());
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_invalidate_returns_no_instance_serves_the_entry() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let o = origin(42, 5_000);
    let t = densest(&o);
    let u = o
        .occupied_tiles(14)
        .into_iter()
        .map(|(u, _)| u)
        .find(|u| *u != t)
        .unwrap();
    let id = o.tile_items(t, Access::Agent).next().unwrap().id.clone();
    let other = o.tile_items(u, Access::Agent).next().unwrap().id.clone();
    let http = Http::new();
    let a = server(redis_config(&redis)).await;
    let b = server(redis_config(&redis)).await;
    // B follows the feed from now.
    let mut feed = Feed::open(&b, Some(&agent_token()), None).await;
    let ready = feed.next().await;
    assert_eq!(ready.event, "ready");
    // A fills the shared tier; B answers from it without the origin.
    let body = request(&[t, u], &[], Access::Agent);
    http.ok(&a, &body).await;
    http.ok(&b, &body).await;
    http.ok(&a, &body).await;
    assert_eq!(b.app.metrics.origin_calls(), 0);
    let a_calls = a.app.metrics.origin_calls();

    let r = admin_invalidates(&a, &format!(r#"{{"ids":["{id}","{other}"]}}"#)).await;
    let stream_id = r.json()["id"].as_str().unwrap().to_owned();
    // Returned: neither instance answers a tile listing an invalidated id from the tier
    // (each refetch writes the new value back, so each instance asks for its own tile).
    http.ok(&b, &request(&[u], &[], Access::Agent)).await;
    assert_eq!(
        b.app.metrics.origin_calls(),
        1,
        "B served a tile listing an invalidated id from Redis"
    );
    http.ok(&a, &request(&[t], &[], Access::Agent)).await;
    assert_eq!(
        a.app.metrics.origin_calls(),
        a_calls + 1,
        "A served a tile listing an invalidated id from Redis"
    );
    // B's feed carries the change with its stream id; B applied it to its write guard.
    let ev = feed.next().await;
    assert_eq!(ev.event, "invalidate");
    assert_eq!(ev.id, stream_id);
    assert_eq!(ev.data["ids"][0], id.as_str());
    assert!(
        eventually(Duration::from_secs(5), || b
            .app
            .changes
            .stats
            .applied_remote
            .load(Relaxed)
            >= 1)
        .await
    );

    // `all` keeps the stream: a client resuming from the last id still gets what follows.
    let r = admin_invalidates(&a, r#"{"all":true}"#).await;
    let all_id = r.json()["id"].as_str().unwrap().to_owned();
    let r = admin_invalidates(&b, r#"{"classes":["sold"]}"#).await;
    let class_id = r.json()["id"].as_str().unwrap().to_owned();
    drop(feed);
    // A client that was away since the first event catches up on both, in order, from
    // either instance.
    for s in [&a, &b] {
        let mut again = Feed::open(s, None, Some(&stream_id)).await;
        let ready = again.next().await;
        assert_eq!(
            (ready.event.as_str(), ready.id.as_str()),
            ("ready", &*stream_id)
        );
        let e1 = again.next().await;
        let e2 = again.next().await;
        assert_eq!(
            (e1.id.as_str(), e1.data["all"].as_bool()),
            (&*all_id, Some(true))
        );
        assert_eq!(
            (e2.id.as_str(), &e2.data["classes"][0]),
            (&*class_id, &serde_json::json!("sold"))
        );
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn the_feed_resumes_and_resets_past_retention() {
    let s = server(Config {
        changes_retention: 2,
        ..config()
    })
    .await;
    let admin = Http::with_token(Some(admin_token()));
    // The same authentication as /v1/batch: anonymous is public and may follow; a bad token
    // is refused. Ids go to the top tier only: the anonymous feed gets each ids event as
    // `reset` (an id may name an item above its tier).
    let agent = agent_token();
    let mut feed = Feed::open(&s, Some(&agent), None).await;
    let start = feed.next().await;
    assert_eq!(start.event, "ready");
    let mut anon = Feed::open(&s, None, None).await;
    assert_eq!(anon.next().await.event, "ready");
    let r = Http::with_token(Some("x.y.z".into()))
        .get(&format!("{}/v1/changes", s.url()))
        .await;
    r.error(401, "unauthorized");
    let r = Http::anonymous()
        .send(
            "GET",
            &format!("{}/v1/changes", s.url()),
            &[("last-event-id", "yesterday")],
            Bytes::new(),
        )
        .await;
    let msg = r.error(400, "bad_request");
    assert!(
        msg.starts_with("Last-Event-ID: stream id \"yesterday\""),
        "{msg}"
    );

    let mut ids = Vec::new();
    for i in 0..3 {
        let r = post_invalidate(&admin, &s, &format!(r#"{{"ids":["x{i}"]}}"#)).await;
        ids.push(r.json()["id"].as_str().unwrap().to_owned());
        let ev = feed.next().await;
        assert_eq!(
            (ev.event.as_str(), ev.id.as_str()),
            ("invalidate", &*ids[i])
        );
        assert_eq!(ev.data["ids"], serde_json::json!([format!("x{i}")]));
        let ev = anon.next().await;
        assert_eq!((ev.event.as_str(), ev.id.as_str()), ("reset", &*ids[i]));
        assert_eq!(ev.data, serde_json::json!({ "reason": "ids" }));
        assert!(
            !ev.data.to_string().contains(&format!("x{i}")),
            "{:?}",
            ev.data
        );
    }
    // A tiles-only change reaches every tier as it is.
    let r = post_invalidate(&admin, &s, r#"{"tiles":["14/2624/5721"]}"#).await;
    let tile_id = r.json()["id"].as_str().unwrap().to_owned();
    let ev = anon.next().await;
    assert_eq!(
        (ev.event.as_str(), ev.id.as_str()),
        ("invalidate", &*tile_id)
    );
    assert_eq!(ev.data["tiles"], serde_json::json!(["14/2624/5721"]));
    assert_eq!(feed.next().await.id, tile_id);
    drop(anon);
    let ids: Vec<String> = ids.into_iter().chain([tile_id]).collect();
    // Resuming after the second: the two kept ones (retention 2).
    let mut f = Feed::open(&s, Some(&agent), Some(&ids[1])).await;
    f.next().await;
    assert_eq!(f.next().await.id, ids[2]);
    assert_eq!(f.next().await.id, ids[3]);
    // Resuming from before the first: it was trimmed (retention 2), so `reset`, with the
    // id to resume from after it, and `from`: the newest trimmed id, after which the feed
    // holds every change (a replay may start there).
    let mut f = Feed::open(&s, Some(&agent), Some(&start.id)).await;
    f.next().await;
    let reset = f.next().await;
    assert_eq!(
        (reset.event.as_str(), reset.id.as_str()),
        ("reset", &*ids[3])
    );
    assert_eq!(
        reset.data,
        serde_json::json!({ "reason": "gap", "from": ids[1] })
    );
    let mut f = Feed::open(&s, Some(&agent), Some(&ids[1])).await;
    f.next().await;
    assert_eq!(f.next().await.id, ids[2]);
    // A poll (`follow=false`): the stored events after the id, then the stream ends.
    let poll = Http::anonymous()
        .send(
            "GET",
            &format!("{}/v1/changes?follow=false", s.url()),
            &[("last-event-id", &ids[1])],
            Bytes::new(),
        )
        .await;
    assert_eq!(poll.status, 200);
    let text = poll.text();
    let got: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .collect();
    assert_eq!(got, [&*ids[1], &*ids[2], &*ids[3]], "{text}");
    let r = Http::anonymous()
        .get(&format!("{}/v1/changes?follow=maybe", s.url()))
        .await;
    r.error(400, "bad_request");
    // An id this server never made (a restarted in-process server): `reset` too.
    let mut f = Feed::open(&s, None, Some("1-0")).await;
    f.next().await;
    let reset = f.next().await;
    assert_eq!(
        (reset.event.as_str(), &reset.data),
        (
            "reset",
            &serde_json::json!({ "reason": "gap", "from": ids[1] })
        )
    );
    // Shutdown ends open feeds (without it they would stay open, sending keep-alives).
    s.shutdown().await;
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), f.body.frame())
            .await
            .expect("the feed ends at shutdown");
        match frame {
            None | Some(Err(_)) => break,
            Some(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_calling_instance_deletes_before_answering() {
    if !redis_available() {
        return;
    }
    // One instance: no other reader deletes for it.
    let redis = RedisServer::start();
    let o = origin(42, 5_000);
    let t = densest(&o);
    let id = o.tile_items(t, Access::Agent).next().unwrap().id.clone();
    let http = Http::new();
    let a = server(redis_config(&redis)).await;
    let body = request(&[t], &[], Access::Agent);
    http.ok(&a, &body).await;
    http.ok(&a, &body).await;
    assert_eq!(a.app.metrics.origin_calls(), 1);
    admin_invalidates(&a, &format!(r#"{{"tiles":["{t}"]}}"#)).await;
    http.ok(&a, &body).await;
    assert_eq!(
        a.app.metrics.origin_calls(),
        2,
        "served {id}'s tile from Redis"
    );
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_in_flight_on_another_instance_does_not_write_the_old_value_back() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let o = origin(42, 5_000);
    let t = densest(&o);
    let id = o.tile_items(t, Access::Agent).next().unwrap().id.clone();
    let http = Http::new();
    let a = server(redis_config(&redis)).await;
    // B's origin is slow: its fetch of t is in flight across A's invalidation.
    let b = server(Config {
        origin_latency_ms: 1_000,
        ..redis_config(&redis)
    })
    .await;
    let body = request(&[t], &[], Access::Agent);
    let b_url = b.url();
    let in_flight = tokio::spawn({
        let body = body.clone();
        async move {
            Http::new()
                .send(
                    "POST",
                    &format!("{b_url}/v1/batch"),
                    &[("content-type", "application/json")],
                    body,
                )
                .await
                .status
        }
    });
    let m = &b.app.metrics;
    assert!(
        eventually(Duration::from_secs(5), || m
            .origin_calls_request
            .load(Relaxed)
            >= 1)
        .await
    );
    admin_invalidates(&a, &format!(r#"{{"ids":["{id}"]}}"#)).await;
    assert_eq!(in_flight.await.unwrap(), 200);
    // B's write-back was dropped (its reader put A's entry in B's write guard), so A does
    // not find t's list with the old item in Redis.
    http.ok(&a, &body).await;
    assert_eq!(
        a.app.metrics.origin_calls(),
        1,
        "A served B's old write-back"
    );
    assert!(b.app.invalidation.stats.writes_dropped.load(Relaxed) >= 1);
    a.shutdown().await;
    b.shutdown().await;
}

/// Invalidating a tile drops the items its list names too (the contract of
/// `protocol::Invalidation`), in Redis as in-process: a request by id for an item of the
/// tile goes to the origin afterwards instead of being answered with the old item.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tile_invalidation_drops_the_items_of_the_tile_in_redis() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let o = origin(42, 5_000);
    let t = densest(&o);
    let id = o.tile_items(t, Access::Agent).next().unwrap().id.clone();
    let http = Http::new();
    let s = server(redis_config(&redis)).await;
    http.ok(&s, &request(&[t], &[], Access::Agent)).await;
    http.ok(&s, &request(&[], &[&*id], Access::Agent)).await;
    assert_eq!(
        s.app.metrics.origin_calls(),
        1,
        "the id was answered from the tier"
    );

    admin_invalidates(&s, &format!(r#"{{"tiles":["{t}"]}}"#)).await;
    http.ok(&s, &request(&[], &[&*id], Access::Agent)).await;
    assert_eq!(
        s.app.metrics.origin_calls(),
        2,
        "an item of an invalidated tile was answered by id from Redis"
    );
    s.shutdown().await;
}

/// A tile's value in Redis holds copies of its items (storage format v3), so invalidating
/// an id must drop the tile values holding it, not only its item key: afterwards the tile
/// is refetched, not answered with the old copy. The same for a class.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidating_an_id_or_a_class_makes_the_tiles_holding_it_misses_in_redis() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let o = origin(42, 5_000);
    let t = densest(&o);
    let item = o.tile_items(t, Access::Agent).next().unwrap();
    let (id, class) = (item.id.clone(), item.class.clone());
    let http = Http::new();
    let s = server(redis_config(&redis)).await;
    let body = request(&[t], &[], Access::Agent);
    for (what, change) in [
        ("id", format!(r#"{{"ids":["{id}"]}}"#)),
        ("class", format!(r#"{{"classes":["{class}"]}}"#)),
    ] {
        http.ok(&s, &body).await;
        let calls = s.app.metrics.origin_calls();
        http.ok(&s, &body).await;
        assert_eq!(s.app.metrics.origin_calls(), calls, "the tile is a hit");
        admin_invalidates(&s, &change).await;
        http.ok(&s, &body).await;
        assert_eq!(
            s.app.metrics.origin_calls(),
            calls + 1,
            "a tile holding an invalidated {what} was answered from Redis"
        );
    }
    s.shutdown().await;
}

/// A `POST /v1/invalidate` whose delete fails (Redis down) is answered 503, and until an
/// `all` lands requests skip Redis: here Redis comes back from a snapshot that still holds
/// the invalidated tile, answering `PING` but refusing deletes, and is not read though its
/// probe says it is back. Once deletes are allowed the retry lands, the tile is gone from
/// Redis and reads come back. Fails without the hold: the tile is served from Redis as
/// soon as the probe brings it back, until the caller retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_invalidate_call_holds_reads_until_everything_is_invalidated() {
    if !redis_available() {
        return;
    }
    let mut redis = RedisServer::start_persistent();
    let o = origin(42, 5_000);
    let t = densest(&o);
    let http = Http::new();
    let s = server(Config {
        redis_timeout_ms: 200,
        retry_after_s: 2,
        ..redis_config(&redis)
    })
    .await;
    let body = request(&[t], &[], Access::Agent);
    http.ok(&s, &body).await;
    let tier = &s.app.tier;
    let in_redis = || async {
        tier.read(&[t], &[])
            .await
            .is_ok_and(|r| r.tiles[0].is_some())
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !in_redis().await {
        assert!(
            std::time::Instant::now() < deadline,
            "{t} was not written to Redis"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    redis.save_and_kill().await;

    let admin = Http::with_token(Some(admin_token()));
    let r = post_invalidate(&admin, &s, &format!(r#"{{"tiles":["{t}"]}}"#)).await;
    r.error(503, "overloaded");
    // Like every 503 (fails without it: no header).
    assert_eq!(r.headers.get("retry-after").unwrap(), "2");
    // Back with the snapshot (the tile still in it), answering PING, refusing deletes.
    redis.restart_refusing_deletes();
    let hits = s.app.metrics.cache.tile_hits.load(Relaxed);
    let (mut probed_back, start) = (0, std::time::Instant::now());
    while probed_back < 50 && start.elapsed() < Duration::from_secs(15) {
        if tier.redis_degraded() == Some(false) {
            probed_back += 1;
            assert!(
                !tier.available(),
                "reads let back before the invalidation landed"
            );
        }
        http.ok(&s, &body).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        probed_back > 0,
        "the probe never brought Redis back: the test did not test"
    );
    assert_eq!(
        s.app.metrics.cache.tile_hits.load(Relaxed),
        hits,
        "the invalidated tile was served from Redis"
    );
    // The hold shows, though Redis answers.
    let h = http.get(&format!("{}/healthz", s.url())).await.json();
    assert_eq!(h["status"], "degraded", "{h}");
    assert_eq!(h["redis_degraded"], false, "{h}");
    assert_eq!(
        h["redis_reads_held_by"],
        serde_json::json!(["invalidate_endpoint"]),
        "{h}"
    );

    // Deletes allowed again: the retry lands, reads come back, the tile is gone.
    redis.allow_deletes().await;
    assert!(
        eventually(Duration::from_secs(10), || tier.available()).await,
        "reads were not let back once the invalidation landed"
    );
    assert!(!in_redis().await, "{t} is still in Redis");
    let h = http.get(&format!("{}/healthz", s.url())).await.json();
    assert_eq!(h["redis_reads_held_by"], serde_json::json!([]), "{h}");
    // `ok` once the change stream's reader reads the restarted Redis too (its back-off is
    // at most 2 s; its first read of a connection answers at once): until then it is
    // `degraded` for that, not for the hold.
    let health = || async { http.get(&format!("{}/healthz", s.url())).await.json() };
    assert!(
        eventually_async(Duration::from_secs(10), || async {
            health().await["status"] == "ok"
        })
        .await,
        "not ok after the invalidation landed: {}",
        health().await
    );
    let text = http.metrics(&s.url()).await;
    assert!(text.contains("tilewarm_redis_reads_held 0"), "{text}");
    s.shutdown().await;
}

/// A write-back whose removal of what an invalidation recorded while its write was out
/// fails (Redis refuses deletes) holds reads off Redis until an `all` lands: the old value
/// it wrote is not served once the probe brings Redis back. The write is held in Redis by
/// `CLIENT PAUSE … WRITE` while the invalidation is recorded (as this instance's reader
/// records one another instance already deleted). Fails without the hold: reads come back
/// with the probe and the old tile is served from Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_back_whose_re_invalidation_fails_holds_reads_until_everything_is_invalidated() {
    use std::sync::Arc;
    use tilewarm_server::invalidate::{invalidate, write_back, Invalidation};
    use tilewarm_server::tier::{Fill, ReadHold};

    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let o = origin(42, 5_000);
    let t = densest(&o);
    let http = Http::new();
    let s = server(redis_config(&redis)).await;
    let tier = &s.app.tier;
    let body = request(&[t], &[], Access::Agent);
    // t's fill, as an origin call answers it: fetched once, read back, then wiped.
    http.ok(&s, &body).await;
    // Asked of Redis itself: the tier refuses reads while marked down.
    let key = tilewarm_server::stored::Keys::new(&s.app.config.redis_prefix).tile(t);
    let in_redis = || async { redis_do(&redis, &["EXISTS", &key]).await == redis::Value::Int(1) };
    assert!(
        eventually_async(Duration::from_secs(10), in_redis).await,
        "{t} was not written to Redis"
    );
    let hit = tier.read(&[t], &[]).await.unwrap().tiles.remove(0).unwrap();
    invalidate(&s.app, &Invalidation::everything())
        .await
        .unwrap();
    assert!(!in_redis().await);
    let ids: Vec<String> = hit.items.iter().map(|i| i.id().to_owned()).collect();
    let mut fill = Fill {
        items: hit.items.into_iter().map(Arc::new).collect(),
        tiles: vec![(t, ids.clone(), hit.exp)],
        gens: tier.generations().await.unwrap(),
        ..Fill::default()
    };
    let epoch = s.app.invalidation.guard.epoch();

    redis_do(&redis, &["ACL", "SETUSER", "default", "-unlink", "-del"]).await;
    // Paused until the invalidation is recorded (5 s at the most; the write times out
    // after 2 s): a pause of its own length would end before a slow test recorded it.
    redis_do(&redis, &["CLIENT", "PAUSE", "5000", "WRITE"]).await;
    let app = Arc::clone(&s.app);
    let writing = tokio::spawn(async move { write_back(&app, &mut fill, epoch).await });
    // The write is out (its `SET`s wait in Redis) when the invalidation is recorded.
    assert!(
        eventually_async(Duration::from_secs(5), || async {
            let info = redis_do(&redis, &["INFO", "clients"]).await;
            let info: String = redis::from_redis_value(info).unwrap();
            !info.contains("blocked_clients:0")
        })
        .await,
        "the write never reached Redis"
    );
    s.app.invalidation.guard.record(&Invalidation {
        ids: vec![ids[0].clone()],
        ..Invalidation::default()
    });
    redis_do(&redis, &["CLIENT", "UNPAUSE"]).await;
    assert!(writing.await.unwrap().is_ok(), "the write itself failed");
    // The old tile landed and could not be removed again.
    assert!(
        in_redis().await,
        "the test did not test: {t} is not in Redis"
    );
    assert_eq!(tier.read_holds(), [ReadHold::WriteBack]);

    // The probe brings Redis back (it answers PING); reads stay held, t is not served.
    let hits = s.app.metrics.cache.tile_hits.load(Relaxed);
    let (mut probed_back, start) = (0, std::time::Instant::now());
    while probed_back < 20 && start.elapsed() < Duration::from_secs(15) {
        if tier.redis_degraded() == Some(false) {
            probed_back += 1;
            assert!(
                !tier.available(),
                "reads let back with the old tile in Redis"
            );
        }
        http.ok(&s, &body).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(probed_back > 0, "the probe never brought Redis back");
    assert_eq!(
        s.app.metrics.cache.tile_hits.load(Relaxed),
        hits,
        "the old tile was served from Redis"
    );
    let h = http.get(&format!("{}/healthz", s.url())).await.json();
    assert_eq!(
        h["redis_reads_held_by"],
        serde_json::json!(["write_back"]),
        "{h}"
    );

    // Deletes allowed again: the retry's `all` lands, reads come back without the old tile.
    redis.allow_deletes().await;
    assert!(
        eventually(Duration::from_secs(10), || tier.available()).await,
        "reads were not let back once the invalidation landed"
    );
    assert!(!in_redis().await, "the old {t} is still in Redis");
    s.shutdown().await;
}

/// One command to the test's Redis (as the default user), its answer.
pub(crate) async fn redis_do(r: &RedisServer, args: &[&str]) -> redis::Value {
    let mut conn = redis::Client::open(r.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

async fn xlen(r: &RedisServer) -> u64 {
    redis::from_redis_value(redis_do(r, &["XLEN", "tw:changes"]).await).unwrap()
}

fn ids_inv(id: &str) -> tilewarm::protocol::Invalidation {
    tilewarm::protocol::Invalidation {
        ids: vec![id.into()],
        ..Default::default()
    }
}

/// A zoom-1 tile: more than 4 levels above the data zoom, applied in Redis by a `SCAN` of
/// every tile key.
fn wide_tile_inv() -> tilewarm::protocol::Invalidation {
    tilewarm::protocol::Invalidation {
        tiles: vec![tilewarm::tile::TileId::new(1, 0, 0).unwrap()],
        ..Default::default()
    }
}

/// The events `rx` hands out until one at or past `until` (at most `within`).
async fn events_until(
    rx: &mut tokio::sync::broadcast::Receiver<Event>,
    until: tilewarm::protocol::StreamId,
    within: Duration,
) -> Vec<Event> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(e)) => {
                let done = e.id() >= until;
                got.push(e);
                if done {
                    return got;
                }
            }
            Ok(Err(e)) => panic!("{e}"),
            Err(_) => return got,
        }
    }
}

/// Publishes `inv` from `a` until `b`'s reader hands one out; the id it handed out.
async fn until_read(
    a: &Server,
    rx: &mut tokio::sync::broadcast::Receiver<Event>,
    inv: &tilewarm::protocol::Invalidation,
) -> tilewarm::protocol::StreamId {
    for _ in 0..50 {
        let id = a.app.changes.publish(inv).await.unwrap();
        let got = events_until(rx, id, Duration::from_millis(200)).await;
        if got.last().map(Event::id) == Some(id) {
            return id;
        }
    }
    panic!("the reader never handed out an entry");
}

fn is_gap(e: &Event) -> bool {
    matches!(
        e,
        Event::Reset(_, tilewarm_server::stream::ResetReason::Gap { .. })
    )
}

/// Redis records an entry removed by `XADD MAXLEN ~` or `XTRIM` nowhere in
/// `max-deleted-entry-id` (that is `XDEL`'s): a follower resuming from before what was
/// trimmed must get `reset`, not what is left. Retention 100 (Redis trims whole nodes of
/// 100 entries with `~`), 300 changes. Fails when the gap is read from
/// `max-deleted-entry-id` alone: the first event is an invalidation some 100 changes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_resuming_from_before_what_redis_trimmed_gets_a_reset() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let s = server(Config {
        changes_retention: 100,
        ..redis_config(&redis)
    })
    .await;
    let changes = &s.app.changes;
    let first = changes.publish(&ids_inv("x0")).await.unwrap();
    for i in 1..300 {
        changes.publish(&ids_inv(&format!("x{i}"))).await.unwrap();
    }
    let kept = xlen(&redis).await;
    assert!(
        (100..300).contains(&kept),
        "XLEN {kept}: nothing was trimmed"
    );
    let mut f = Feed::open(&s, Some(&agent_token()), Some(&first.to_string())).await;
    assert_eq!(f.next().await.event, "ready");
    let ev = f.next().await;
    // From the oldest entry kept, nothing is missing: the rest, as before.
    let oldest: Vec<(String, Vec<Vec<u8>>)> = redis::from_redis_value(
        redis_do(&redis, &["XRANGE", "tw:changes", "-", "+", "COUNT", "1"]).await,
    )
    .unwrap();
    let oldest: StreamId = oldest[0].0.parse().unwrap();
    // The gap says to replay from just before it (`from`).
    let from = match oldest.seq {
        0 => format!("{}-{}", oldest.ms - 1, u64::MAX),
        seq => format!("{}-{}", oldest.ms, seq - 1),
    };
    assert_eq!(
        (ev.event.as_str(), &ev.data),
        (
            "reset",
            &serde_json::json!({ "reason": "gap", "from": from })
        ),
        "{ev:?}"
    );
    let (events, _) = changes.since(Some(oldest)).await.unwrap();
    assert_eq!(events.len() as u64, kept - 1);
    assert!(events.iter().all(|e| matches!(e, Event::Invalidate(..))));
    s.shutdown().await;
}

/// An instance whose reader cannot read while more than the retention is appended finds,
/// when it reconnects, that entries it never read were trimmed: it invalidates everything
/// (its tier and its write guard) and sends its subscribers `reset`. Here B's reader may
/// connect but not `XREAD` (an ACL), so it reconnects over and over; the reset must come
/// from the reconnect's check, before it may read again. Fails when the check reads
/// `max-deleted-entry-id` alone (which a trim leaves at `0-0`): no reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_cut_off_while_its_entries_were_trimmed_resets_its_instance() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    redis_do(
        &redis,
        &["ACL", "SETUSER", "b", "on", ">pw", "~*", "&*", "+@all"],
    )
    .await;
    let a = server(Config {
        changes_retention: 100,
        ..redis_config(&redis)
    })
    .await;
    let b = server(Config {
        changes_retention: 100,
        redis: Some(format!("redis://b:pw@127.0.0.1:{}/0", redis.port)),
        ..redis_config(&redis)
    })
    .await;
    let mut events = b.app.changes.events();
    // B's reader is reading: it hands out A's entry.
    let seen = until_read(&a, &mut events, &ids_inv("w")).await;
    redis_do(&redis, &["ACL", "SETUSER", "b", "-xread"]).await;
    let all_before = b.app.invalidation.stats.all.load(Relaxed);
    let mut last = seen;
    for i in 0..300 {
        last = a
            .app
            .changes
            .publish(&ids_inv(&format!("x{i}")))
            .await
            .unwrap();
    }
    assert!(xlen(&redis).await < 300, "nothing was trimmed");
    let stats = &b.app.changes.stats;
    assert!(
        eventually(Duration::from_secs(15), || stats.resets.load(Relaxed) >= 1).await,
        "B's reader reconnected past trimmed entries without a reset"
    );
    assert!(b.app.invalidation.stats.all.load(Relaxed) > all_before);
    // What B handed out while cut off: perhaps the first few entries, then the reset, and
    // nothing skipped silently.
    let got = events_until(&mut events, last, Duration::from_secs(5)).await;
    assert!(got.iter().any(is_gap), "{got:?}");
    // Allowed to read again: it goes on from the stream's end. If its reader was last set
    // back while A was still publishing (a loaded machine), what it knew was trimmed again:
    // it hands out a second reset, at or past `y`, which covers `y`; then it reads on.
    redis_do(&redis, &["ACL", "SETUSER", "b", "+xread"]).await;
    let mut next = a.app.changes.publish(&ids_inv("y")).await.unwrap();
    let mut got = events_until(&mut events, next, Duration::from_secs(10)).await;
    if got.last().is_some_and(|e| is_gap(e) && e.id() >= next) {
        next = a.app.changes.publish(&ids_inv("z")).await.unwrap();
        got = events_until(&mut events, next, Duration::from_secs(10)).await;
    }
    assert!(
        matches!(got.last(), Some(Event::Invalidate(id, ..)) if *id == next),
        "{got:?}"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// A connected reader that falls more than the retention behind (here B applies the
/// invalidation of a very coarse tile, which walks every tile key, 50 000 of them, while A
/// makes 300 more changes)
/// is answered by its next `XREAD` with the entries still kept and nothing about the
/// trimmed ones: it must see the gap, invalidate everything and send `reset`. Checks that
/// between two events B hands out, no entry A made is skipped without a `reset`. Fails
/// without the check after each `XREAD` (B hands out an entry some 100 changes on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connected_reader_that_falls_behind_the_retention_resets_its_instance() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    {
        let mut conn = redis::Client::open(redis.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        for chunk in (0..50_000).collect::<Vec<u32>>().chunks(1000) {
            let mut p = redis::pipe();
            for n in chunk {
                p.cmd("SET")
                    .arg(format!("tw:v4:t:junk{n}"))
                    .arg("x")
                    .ignore();
            }
            let () = p.query_async(&mut conn).await.unwrap();
        }
    }
    let a = server(Config {
        changes_retention: 100,
        ..redis_config(&redis)
    })
    .await;
    let b = server(Config {
        changes_retention: 100,
        ..redis_config(&redis)
    })
    .await;
    let mut events = b.app.changes.events();
    let first = until_read(&a, &mut events, &ids_inv("w")).await;
    let all_before = b.app.invalidation.stats.all.load(Relaxed);
    // B's next XREAD answers this one alone (it was waiting); B takes a while to apply it.
    let mut made = vec![
        first,
        a.app.changes.publish(&wide_tile_inv()).await.unwrap(),
    ];
    // All at once (pipelined on A's connection), so that they are made while B applies.
    let invs: Vec<_> = (0..300).map(|i| ids_inv(&format!("x{i}"))).collect();
    let publish = invs.iter().map(|inv| a.app.changes.publish(inv));
    for id in futures_util::future::join_all(publish).await {
        made.push(id.unwrap());
    }
    made.sort();
    assert!(
        b.app.changes.stats.applied_remote.load(Relaxed) < 10,
        "B kept up with A: the test did not test"
    );
    assert!(xlen(&redis).await < 300, "nothing was trimmed");
    let last = *made.last().unwrap();
    let got = events_until(&mut events, last, Duration::from_secs(30)).await;
    // Every entry B handed out follows the one before it in what A made, unless a reset
    // came between.
    let mut at = 0;
    let mut reset = false;
    for e in &got {
        match e {
            Event::Invalidate(id, ..) => {
                let i = made.iter().position(|m| m == id).expect("one of A's");
                assert!(
                    i == at + 1 || reset,
                    "B handed out A's entry {i} after entry {at}, without a reset"
                );
                (at, reset) = (i, false);
            }
            Event::Reset(..) => reset = true,
        }
    }
    assert_eq!(got.last().map(Event::id), Some(last), "B did not catch up");
    assert!(
        got.iter().any(is_gap),
        "B never fell behind: the test did not test"
    );
    assert!(b.app.invalidation.stats.all.load(Relaxed) > all_before);
    a.shutdown().await;
    b.shutdown().await;
}

/// A change another instance makes just after this one started is applied here, however
/// late this instance's reader task first runs: where the reader starts (the stream's end)
/// is read while the server starts, before it answers anything
/// (`ChangeStream::reader_start`). The reader task used to read it itself, so on a loaded
/// machine an entry made before that task ran was skipped, and what the instance had
/// cached meanwhile outlived the change (`invalidation_reaches_both_instances_on_a_cluster`
/// failed so in a CI run on 2 busy cores). Here a current-thread runtime and a blocking
/// `redis-cli XADD` right after `start` returns keep B's reader from running until the
/// entry is there. Fails when the reader takes its start itself (B never applies it).
#[tokio::test(flavor = "current_thread")]
async fn a_change_made_just_after_an_instance_started_is_applied_there() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let a = server(redis_config(&redis)).await;
    let before = a.app.changes.publish(&ids_inv("before")).await.unwrap();
    let b = server(redis_config(&redis)).await;
    let mut events = b.app.changes.events();
    let key = tilewarm_server::stream::changes_key(&b.app.config.redis_prefix);
    let out = std::process::Command::new("redis-cli")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &redis.port.to_string(),
            "XADD",
            &key,
            "*",
        ])
        .args([tilewarm_server::stream::FIELD, &ids_inv("after").to_json()])
        .output()
        .expect("redis-cli runs");
    assert!(out.status.success(), "XADD: {out:?}");
    let after: StreamId = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("XADD answered {out:?}: {e}"));
    assert!(after > before);
    // B hands out that entry, and only it (its start is after the one made before it).
    let got = events_until(&mut events, after, Duration::from_secs(20)).await;
    assert_eq!(
        got.iter().map(Event::id).collect::<Vec<_>>(),
        [after],
        "B's reader skipped the entry made just after B started (or read one from before)"
    );
    assert!(
        eventually(Duration::from_secs(10), || b
            .app
            .changes
            .stats
            .applied_remote
            .load(Relaxed)
            == 1)
        .await,
        "B did not apply the entry"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// An entry of another instance whose apply fails (Redis refuses deletes) is counted in
/// `apply_failures`, not in `applied_remote`, and there once applied again. It used to be
/// counted as applied before it was applied, failed or not. Fails when `applied_remote`
/// counts an entry whose apply failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_entry_whose_apply_fails_is_not_counted_as_applied_until_it_lands() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let a = server(redis_config(&redis)).await;
    let b = server(redis_config(&redis)).await;
    let stats = &b.app.changes.stats;
    redis_do(&redis, &["ACL", "SETUSER", "default", "-unlink", "-del"]).await;
    // A's entry only (its XADD), as its POST /v1/invalidate appends it after its deletes.
    a.app.changes.publish(&ids_inv("refused")).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || stats
            .apply_failures
            .load(Relaxed)
            >= 1)
        .await,
        "B's reader did not fail to apply A's entry: the test did not test"
    );
    assert_eq!(
        stats.applied_remote.load(Relaxed),
        0,
        "an entry whose apply failed was counted as applied"
    );
    redis.allow_deletes().await;
    assert!(
        eventually(Duration::from_secs(10), || stats
            .applied_remote
            .load(Relaxed)
            == 1)
        .await,
        "the entry applied again was not counted"
    );
    assert!(
        eventually(Duration::from_secs(10), || b
            .app
            .tier
            .read_holds()
            .is_empty())
        .await,
        "reads still held after the entry landed"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// A Redis that answers, with an error, the reads of where the reader starts (here the
/// stream's key holds a string: WRONGTYPE; the same with a Redis older than 7, or an ACL
/// without XINFO) holds the start for `START_WITHIN` as one that does not answer, and the
/// warning says what Redis answered. It used to say that Redis did not answer, the error
/// itself logged only at debug. Current-thread runtime: the scoped subscriber sees it.
#[tokio::test]
async fn a_reader_start_that_redis_refuses_is_warned_with_its_error() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let config = redis_config(&redis);
    let key = tilewarm_server::stream::changes_key(&config.redis_prefix);
    let out = std::process::Command::new("redis-cli")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &redis.port.to_string(),
            "SET",
            &key,
            "x",
        ])
        .output()
        .expect("redis-cli runs");
    assert!(out.status.success(), "SET: {out:?}");
    let (log, guard) = crate::logs::captured_on_this_thread(tracing::Level::WARN);
    let s = server(config).await;
    s.shutdown().await;
    drop(guard);
    let text = String::from_utf8_lossy(&log.0.lock().unwrap()).into_owned();
    let warned: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("change stream") && l.contains("at start"))
        .collect();
    assert_eq!(warned.len(), 1, "log: {text}");
    assert!(warned[0].contains("WRONGTYPE"), "{}", warned[0]);
}

/// A burst of database changes is applied as one invalidation (their ids, and the data
/// tiles of their old and new positions), put on the stream in parts each reader decodes
/// (`Invalidation::split`: at most 64 tiles a part). A follower below the top tier gets a
/// part naming ids as a `reset`: the ids and the tiles of those rows' positions may be of
/// items above its tier. A part holding only the burst's last tiles went out to it as an
/// `invalidate` naming them: where items it may not see changed. Here 40 rows moved, 80
/// tiles: fails without the fix (the anonymous feed's second event is an `invalidate` of
/// 16 tiles).
#[tokio::test]
async fn a_burst_of_changes_split_in_parts_shows_a_lower_tier_no_tile_of_them() {
    use tilewarm_server::origin::changes::{batch_invalidation, ChangeStats, Taken};
    let s = server(config()).await;
    let mut anon = Feed::open(&s, None, None).await;
    assert_eq!(anon.next().await.event, "ready");
    let mut agent = Feed::open(&s, Some(&agent_token()), None).await;
    assert_eq!(agent.next().await.event, "ready");
    let payloads: Vec<String> = (0..40)
        .map(|i| {
            let (lon, lat) = (-122.0 + 0.05 * i as f64, 47.0);
            format!(
                r#"{{"op":"U","id":"row{i}","old":[{lon},{lat}],"new":[{lon},{}]}}"#,
                lat + 0.05
            )
        })
        .collect();
    let inv = batch_invalidation(
        &Taken::Changes(payloads),
        s.app.config.data_zoom,
        &ChangeStats::default(),
    );
    assert_eq!((inv.ids.len(), inv.tiles.len()), (40, 80));
    let last = s.app.changes.publish(&inv).await.unwrap().to_string();
    // The top tier gets every id and tile.
    let (mut ids, mut tiles) = (0, 0);
    loop {
        let e = agent.next().await;
        assert_eq!(e.event, "invalidate");
        ids += e.data["ids"].as_array().unwrap().len();
        tiles += e.data["tiles"].as_array().unwrap().len();
        if e.id == last {
            break;
        }
    }
    assert!(ids >= 40 && tiles == 80, "{ids} ids, {tiles} tiles");
    // Below it: resets only.
    loop {
        let e = anon.next().await;
        assert_eq!(
            (e.event.as_str(), &e.data),
            ("reset", &serde_json::json!({ "reason": "ids" })),
            "{e:?}"
        );
        if e.id == last {
            break;
        }
    }
    s.shutdown().await;
}

/// An instance whose reader cannot read the change stream (here an ACL takes `XREAD` away;
/// the same with a connection that keeps failing) gets no other instance's change, and its
/// followers no event: `/metrics` (`tilewarm_change_stream_reading 0`) and `/healthz`
/// (`change_stream_reading: false`, status `degraded`) say so while it lasts, and 1 /
/// true (`ok`) once it reads again. It used to show nowhere: the reader's errors were logged at debug only, and the
/// stream's counters were not exported. Fails without the gauge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_cannot_read_the_stream_shows_in_metrics_and_healthz() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let s = server(redis_config(&redis)).await;
    let http = Http::new();
    let reading = async |want: bool| {
        let http = &http;
        let s = &s;
        eventually_async(Duration::from_secs(20), || async move {
            let m = http.metrics(&s.url()).await;
            let h = http.get(&format!("{}/healthz", s.url())).await.json();
            m.contains(&format!(
                "tilewarm_change_stream_reading {}",
                u8::from(want)
            )) && h["change_stream_reading"] == want
                && h["status"] == if want { "ok" } else { "degraded" }
        })
        .await
    };
    assert!(reading(true).await, "the reader does not read");
    redis_do(&redis, &["ACL", "SETUSER", "default", "-xread"]).await;
    assert!(
        reading(false).await,
        "a reader refused XREAD shows as reading"
    );
    redis_do(&redis, &["ACL", "SETUSER", "default", "+xread"]).await;
    assert!(reading(true).await, "the reader did not come back");
    let m = http.metrics(&s.url()).await;
    for name in [
        "tilewarm_change_stream_published_total",
        "tilewarm_change_stream_applied_remote_total",
        "tilewarm_change_stream_resets_total",
        "tilewarm_change_stream_bad_entries_total",
        "tilewarm_change_stream_apply_failures_total",
        "tilewarm_change_stream_subscribers",
    ] {
        assert!(m.contains(&format!("{name} ")), "{name} missing: {m}");
    }
    s.shutdown().await;
}

/// A new instance whose Redis answered at its start (the reader's start was read from the
/// stream before the server answered anything) is `ok` at once, not `degraded` until its
/// reader's first `XREAD` returns: that blocks up to `READ_BLOCK` (2 s) on a quiet stream,
/// so every start (and a readiness check polling `/healthz`) saw a false `degraded`. Fails
/// when the reader counts as not reading until its first read returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_instance_whose_stream_answered_at_its_start_is_ok_at_once() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let s = server(redis_config(&redis)).await;
    let h = Http::new()
        .get(&format!("{}/healthz", s.url()))
        .await
        .json();
    assert_eq!(h["change_stream_reading"], true, "{h}");
    assert_eq!(h["status"], "ok", "{h}");
    s.shutdown().await;
}

/// The `XREAD` connections Redis has now, as (client id, blocked): the reader's.
async fn xread_clients(redis: &RedisServer) -> Vec<(String, bool)> {
    let list: String = redis::from_redis_value(redis_do(redis, &["CLIENT", "LIST"]).await).unwrap();
    list.lines()
        .filter(|l| l.split(' ').any(|f| f == "cmd=xread"))
        .map(|l| {
            let field = |name: &str| {
                l.split(' ')
                    .find_map(|f| f.strip_prefix(name))
                    .unwrap_or("")
                    .to_owned()
            };
            (field("id="), field("flags=").contains('b'))
        })
        .collect()
}

/// A reader whose connection dropped counts as reading again (`/healthz` `ok`) as soon as
/// the stream answers its new connection, not once its first `XREAD BLOCK` returns (up to
/// `READ_BLOCK`, 2 s, on a quiet stream): here it is `reading` by the time Redis shows its
/// new connection blocked in `XREAD`. Fails when the first read of a connection blocks
/// (the reader is seen blocked while still not reading).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnected_reader_is_reading_as_soon_as_the_stream_answers() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    let s = server(redis_config(&redis)).await;
    let stats = &s.app.changes.stats;
    let blocked = || async {
        xread_clients(&redis)
            .await
            .into_iter()
            .find_map(|(id, blocked)| blocked.then_some(id))
    };
    assert!(
        eventually_async(Duration::from_secs(10), || async {
            blocked().await.is_some()
        })
        .await,
        "the reader never blocked in XREAD"
    );
    let id = blocked().await.expect("the reader blocks in XREAD");
    redis_do(&redis, &["CLIENT", "KILL", "ID", &id]).await;
    assert!(
        eventually(Duration::from_secs(10), || !stats.reading.load(Relaxed)).await,
        "the reader did not notice its connection was cut"
    );
    // Its new connection, blocked in XREAD: the stream answered it before.
    let mut blocked_again = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if blocked().await.is_some_and(|i| i != id) {
            blocked_again = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(blocked_again, "the reader did not come back");
    assert!(
        stats.reading.load(Relaxed),
        "the reader blocks in XREAD on its new connection and does not count as reading"
    );
    let h = Http::new()
        .get(&format!("{}/healthz", s.url()))
        .await
        .json();
    assert_eq!(h["status"], "ok", "{h}");
    s.shutdown().await;
}
