//! Answers in parts: what an origin's answer had no room for (`response_full`), and what
//! was too large to read, asked again so that every request makes progress.

use super::*;
use crate::origin::Origin;
use crate::protocol::Invalidation;
use serde_json::value::RawValue;

fn tile(s: &str) -> TileId {
    s.parse().unwrap()
}

const CENTRE: &str = "14/2624/5721";

/// One public item in each data tile of the 5×5 block around [`CENTRE`].
fn origin() -> Origin<RawData> {
    let centre = tile(CENTRE);
    let mut items = Vec::new();
    for dx in -2..=2i64 {
        for dy in -2..=2i64 {
            let t = centre.offset(dx, dy).unwrap();
            let b = t.bounds();
            items.push(Item {
                id: format!("{}-{}", t.x(), t.y()),
                lon: (b.west + b.east) / 2.0,
                lat: (b.south + b.north) / 2.0,
                class: "active".into(),
                access: Access::Public,
                ttl: None,
                data: RawValue::from_string("{\"k\":1}".into()).unwrap(),
            });
        }
    }
    Origin::new(items).unwrap()
}

fn tiles_req(tiles: &[TileId]) -> BatchRequest {
    BatchRequest {
        tiles: tiles.to_vec(),
        ids: vec![],
        access: Access::Public,
    }
}

fn answered(body: &str) -> OriginOutcome<'_> {
    OriginOutcome::Answer {
        status: 200,
        body: body.as_bytes(),
        retry_after_ms: None,
    }
}

/// The origin's answer to `request` with room for its first `room` tiles: the rest left out
/// as `response_full` (a tilewarm-server's answer that did not fit).
fn answer_with_room(o: &Origin<RawData>, request: &BatchRequest, room: usize) -> String {
    let mut first = request.clone();
    first.tiles.truncate(room);
    let json = o.answer(&first, Some(300)).to_json();
    let rest: Vec<String> = request.tiles[first.tiles.len()..]
        .iter()
        .map(|t| format!("\"{t}\""))
        .collect();
    if rest.is_empty() {
        return json;
    }
    format!(
        r#"{},"error":{{"code":"response_full","message":"did not fit","tiles":[{}],"ids":[]}}}}"#,
        &json[..json.len() - 1],
        rest.join(",")
    )
}

/// A request through the proxy, its origin call answered whole by `o`; the answer.
fn run(p: &mut Proxy, o: &Origin<RawData>, request: BatchRequest, now: u64) -> Answer {
    let pending = p.begin(request, now).unwrap();
    let body = (pending.origin_request())
        .map(|r| o.answer(r, Some(300)).to_json())
        .unwrap_or_default();
    p.complete(pending, answered(&body), now)
}

/// Warming tiles an origin's answer had no room for (`response_full`) waited the retry
/// delay ([`WARM_RETRY_MS`], 5 s) like tiles whose warming failed, though they only did not
/// fit in that answer. They are warmed again at once (with the next request's warming), as a
/// client asks again at once: here an origin with room for 3 tiles per answer has the ring
/// of 8 cached within the first delay, in 3 warmings. An answer with room for none makes no
/// progress and keeps the delay (no warming per request).
#[test]
fn warming_tiles_left_out_for_want_of_room_are_warmed_again_at_once() {
    let o = origin();
    let centre = tiles_req(&[tile(CENTRE)]);
    let ring = ring_around(&[tile(CENTRE)], 1).unwrap();
    for (room, want) in [(3, &[8, 5, 2][..]), (0, &[8][..])] {
        let mut p = Proxy::new(ProxyConfig::default()).unwrap();
        let mut warms = Vec::new();
        for now in (0..WARM_RETRY_MS).step_by(10) {
            let a = run(&mut p, &o, centre.clone(), now);
            if let Some(w) = a.warm {
                warms.push(w.tiles.len());
                let body = answer_with_room(&o, &w, room);
                p.warmed(&w, answered(&body), now).unwrap();
            }
        }
        assert_eq!(warms, want, "room for {room}");
        assert_eq!(p.stats().warm_requests, want.len() as u64);
        if room > 0 {
            let pending = p.begin(tiles_req(&ring), WARM_RETRY_MS).unwrap();
            assert!(pending.origin_request().is_none(), "the ring is cached");
        }
    }
}

/// What the shell does with one request (`EdgeProxy`): the origin asked, in part again
/// while its answer is too large to read ([`Proxy::ask_in_part`]), then the answer. The
/// origin calls are counted in `calls`.
fn through(
    p: &mut Proxy,
    request: BatchRequest,
    now: u64,
    origin: &dyn Fn(&BatchRequest) -> Option<String>,
    calls: &mut Vec<usize>,
) -> Answer {
    let mut pending = p.begin(request, now).unwrap();
    loop {
        let Some(asked) = pending.origin_request().cloned() else {
            return p.complete(pending, OriginOutcome::Timeout(""), now);
        };
        calls.push(asked.tiles.len() + asked.ids.len());
        let body = origin(&asked);
        let outcome = match &body {
            Some(b) => answered(b),
            None => OriginOutcome::TooLarge {
                status: 200,
                bytes: 9 << 20,
                retry_after_ms: None,
            },
        };
        if !p.ask_in_part(&mut pending, &outcome) {
            return p.complete(pending, outcome, now);
        }
    }
}

/// A caller's request whose origin answer is over the body limit (an origin that is not a
/// tilewarm-server, which fits its answers to it) cannot be read, and which tile made it
/// so is not known: it was a `502` on every retry, the whole request never served. Now it
/// is asked in halves until a part is read, the rest left out as `response_full` (asked
/// again at once); one tile too large alone is held and left out as `payload_too_large`
/// without an origin call. Here an origin whose answers to more than two tiles and ids,
/// or to any holding `dense`, are too large: a client asking again for what is left out
/// has everything else within a few requests.
#[test]
fn an_origin_answer_too_large_to_read_is_asked_in_halves_until_every_part_is_served() {
    let o = origin();
    let centre = tile(CENTRE);
    let dense = centre.offset(1, 0).unwrap();
    let mut tiles: Vec<TileId> = ring_around(&[centre], 1).unwrap();
    tiles.retain(|&t| t != dense);
    tiles.insert(2, dense);
    let ids: Vec<String> = [(-2, -2), (2, 2)]
        .iter()
        .map(|&(dx, dy)| {
            let t = centre.offset(dx, dy).unwrap();
            format!("{}-{}", t.x(), t.y())
        })
        .collect();
    let too_large = |r: &BatchRequest| r.tiles.contains(&dense) || r.tiles.len() + r.ids.len() > 2;
    let answer = |r: &BatchRequest| (!too_large(r)).then(|| o.answer(r, Some(300)).to_json());
    let mut p = Proxy::new(ProxyConfig {
        warm_ring: 0,
        ..ProxyConfig::default()
    })
    .unwrap();
    let mut ask = BatchRequest {
        tiles: tiles.clone(),
        ids: ids.clone(),
        access: Access::Public,
    };
    let (mut served, mut found) = (Vec::new(), Vec::new());
    let (mut calls, mut statuses, mut codes) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..8u64 {
        let a = through(&mut p, ask.clone(), round, &answer, &mut calls);
        statuses.push(a.status);
        if a.status != 200 {
            continue; // asked again whole (after a back-off)
        }
        let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
        let d = decode_response(a.body.as_bytes(), &Limits::default()).unwrap();
        served.extend(d.tiles.iter().map(|l| l.tile));
        found.extend(d.items.iter().map(|i| i.id.clone()));
        let Some(code) = d.left_out else { break };
        codes.push(code);
        let again = |k: &str| {
            v["error"][k]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().unwrap().to_owned())
        };
        ask.tiles = again("tiles").map(|t| tile(&t)).collect();
        ask.ids = again("ids").collect();
        if code == ErrorCode::PayloadTooLarge {
            break;
        }
    }
    // 10 asked: 10, 5 too large, 2 read; 8 left (dense first): 8, 4, 2, then dense alone,
    // too large: held, a 502 (nothing read; asked again whole); then dense is not asked:
    // 7, 3, 1 read; 6, 3, 1; 5, 2; 3, 1; 2; and dense alone is left, `payload_too_large`.
    assert_eq!(
        statuses,
        [200, 502, 200, 200, 200, 200, 200],
        "calls {calls:?}"
    );
    let full = ErrorCode::ResponseFull;
    assert_eq!(
        codes,
        [full, full, full, full, full, ErrorCode::PayloadTooLarge]
    );
    assert_eq!(
        calls,
        [10, 5, 2, 8, 4, 2, 1, 7, 3, 1, 6, 3, 1, 5, 2, 3, 1, 2]
    );
    let mut want: Vec<TileId> = tiles.iter().copied().filter(|&t| t != dense).collect();
    want.sort();
    served.sort();
    assert_eq!(served, want, "every tile but the dense one served once");
    assert!(ids.iter().all(|id| found.contains(id)), "both ids found");
    assert_eq!((ask.tiles, ask.ids), (vec![dense], vec![]));
    // Held for a tile TTL at this tier: asked for, it is left out with no origin call.
    let n = calls.len();
    let a = through(&mut p, tiles_req(&[dense]), 10, &answer, &mut calls);
    assert_eq!((a.status, calls.len()), (200, n));
    assert!(a.body.contains("payload_too_large"), "{}", a.body);
}

/// A warming went to the origin for every tile, even one whose answer another isolate had
/// already put in the shared cache (the caller's path reads it first; warming did not).
/// Taken from the entries ([`Proxy::shared_fill`]), only the rest is asked
/// ([`Proxy::warm_rest`]), planned when the whole was: its answer is written (not refused
/// as a warming this proxy did not plan), and one planned before a change is not sent.
#[test]
fn a_warming_asks_the_origin_only_for_what_the_shared_cache_does_not_hold() {
    let o = origin();
    let centre = tiles_req(&[tile(CENTRE)]);
    // Isolate `a` warmed the ring: its entries are in the shared cache.
    let mut a = Proxy::new(ProxyConfig::default()).unwrap();
    let w = run(&mut a, &o, centre.clone(), 0).warm.unwrap();
    a.warmed(&w, answered(&o.answer(&w, Some(300)).to_json()), 0)
        .unwrap();
    let entries: Vec<_> = (w.tiles.iter())
        .map(|&t| (t, a.shared_entry(Access::Public, t, 0).unwrap()))
        .collect();
    for (kept, sent) in [(8, None), (5, Some(3))] {
        let mut b = Proxy::new(ProxyConfig::default()).unwrap();
        let warm = run(&mut b, &o, centre.clone(), 1_000).warm.unwrap();
        assert_eq!(warm.tiles, w.tiles);
        for (t, e) in &entries[..kept] {
            b.shared_fill(
                Access::Public,
                *t,
                e.body.as_bytes(),
                e.fetched_at_ms,
                1_000,
            )
            .unwrap();
        }
        let rest = b.warm_rest(&warm, 1_000);
        assert_eq!(rest.as_ref().map(|r| r.tiles.len()), sent, "{kept} kept");
        if let Some(rest) = rest {
            assert_eq!(rest.tiles, w.tiles[kept..]);
            let body = o.answer(&rest, Some(300)).to_json();
            assert_eq!(b.warmed(&rest, answered(&body), 1_000), Ok(3));
        }
        // The whole ring is cached, the centre's next warming plans nothing.
        let pending = b.begin(tiles_req(&w.tiles), 1_001).unwrap();
        assert!(pending.origin_request().is_none(), "{kept} kept");
        assert!(run(&mut b, &o, centre.clone(), 1_001).warm.is_none());
    }
    // A change between the warming's planning and its rest: not sent (it would not be
    // written), and no longer counted as out.
    let mut b = Proxy::new(ProxyConfig::default()).unwrap();
    let warm = run(&mut b, &o, centre.clone(), 1_000).warm.unwrap();
    let (t, e) = &entries[0];
    b.shared_fill(
        Access::Public,
        *t,
        e.body.as_bytes(),
        e.fetched_at_ms,
        1_000,
    )
    .unwrap();
    b.invalidate(
        &crate::protocol::Invalidation {
            ids: vec!["nothing".into()],
            ..Default::default()
        },
        1_000,
    );
    assert_eq!(b.warm_rest(&warm, 1_000), None);
}

/// A tile held as too large to read alone ([`Proxy::ask_in_part`]) was held for a tile TTL
/// whatever changed: a change from the feed that covers it (it may have shrunk) left callers
/// told `payload_too_large` with no origin call, while the server forgets such a tile and
/// the package ends its own hold on the same change (and, told so again by the edge, held
/// the tile for another TTL). A change covering it ends the hold; one elsewhere does not;
/// a class or `all` ends every hold.
#[test]
fn a_change_covering_a_tile_held_as_too_large_asks_the_origin_again() {
    let o = origin();
    let centre = tile(CENTRE);
    let dense = centre.offset(1, 0).unwrap();
    let far = centre.offset(-2, -2).unwrap();
    let shrunk = std::cell::Cell::new(false);
    let answer = |r: &BatchRequest| {
        (shrunk.get() || !r.tiles.contains(&dense)).then(|| o.answer(r, Some(300)).to_json())
    };
    let mut p = Proxy::new(ProxyConfig {
        warm_ring: 0,
        ..ProxyConfig::default()
    })
    .unwrap();
    let mut calls = Vec::new();
    // Asked with another tile: too large, then dense alone too large: held.
    let a = through(&mut p, tiles_req(&[dense, centre]), 0, &answer, &mut calls);
    assert_eq!((a.status, &calls[..]), (502, &[2, 1][..]));
    let held = |p: &mut Proxy, now: u64, calls: &mut Vec<usize>| {
        let n = calls.len();
        let a = through(p, tiles_req(&[dense]), now, &answer, calls);
        let asked = calls.len() > n;
        (asked, a.status, a.body.contains("payload_too_large"))
    };
    assert_eq!(held(&mut p, 1, &mut calls), (false, 200, true), "held");
    // A change elsewhere leaves the hold.
    let elsewhere = Invalidation {
        tiles: vec![far],
        ..Invalidation::default()
    };
    p.invalidate(&elsewhere, 2);
    assert_eq!(
        held(&mut p, 3, &mut calls),
        (false, 200, true),
        "held still"
    );
    // A change covering it (here its zoom-12 ancestor) ends it: the origin is asked again,
    // and the tile, smaller now, is served.
    shrunk.set(true);
    let covering = Invalidation {
        tiles: vec![dense.ancestor(12).unwrap()],
        ..Invalidation::default()
    };
    p.invalidate(&covering, 4);
    assert_eq!(
        held(&mut p, 5, &mut calls),
        (true, 200, false),
        "asked again"
    );
    // A class ends every hold.
    shrunk.set(false);
    p.invalidate(&covering, 6);
    let a = through(&mut p, tiles_req(&[dense, centre]), 7, &answer, &mut calls);
    assert_eq!(a.status, 502);
    assert_eq!(
        held(&mut p, 8, &mut calls),
        (false, 200, true),
        "held again"
    );
    shrunk.set(true);
    let class = Invalidation {
        classes: vec!["active".into()],
        ..Invalidation::default()
    };
    p.invalidate(&class, 9);
    assert_eq!(
        held(&mut p, 10, &mut calls),
        (true, 200, false),
        "asked again"
    );
}

/// A request asked in part whose last part timed out (the edge worker's asks share one
/// `originTimeoutMs`, js/edge.js) was answered `response_full` when part of it was cached:
/// its client asked for the rest again at once, of an origin too slow to answer. Now the
/// timeout is its code (the client backs off first), the cached part still served, with
/// what was not asked and what timed out listed, and the shell's account in the message;
/// with nothing cached the answer is the `504` itself.
#[test]
fn a_timeout_after_asking_in_part_is_answered_as_a_timeout() {
    let (mut p, centre, ring, too_large) = centre_cached();
    let why = "what was left of originTimeoutMs (3000 ms) ran out";
    for (cached, want) in [(true, 200), (false, 504)] {
        let mut asked = ring.clone();
        if cached {
            asked.insert(0, centre);
        }
        let mut pending = p.begin(tiles_req(&asked), 1).unwrap();
        assert!(p.ask_in_part(&mut pending, &too_large));
        assert_eq!(pending.origin_request().unwrap().tiles, ring[..4]);
        let a = p.complete(pending, OriginOutcome::Timeout(why), 2);
        assert_eq!(a.status, want, "{}", a.body);
        let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(v["error"]["code"], "upstream_timeout", "{}", a.body);
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(why), "{message}");
        if cached {
            let d = decode_response(a.body.as_bytes(), &Limits::default()).unwrap();
            let served: Vec<TileId> = d.tiles.iter().map(|l| l.tile).collect();
            assert_eq!(served, [centre]);
            assert_eq!(
                v["error"]["tiles"].as_array().unwrap().len(),
                8,
                "{}",
                a.body
            );
            assert!(message.contains("asked for in part"), "{message}");
            assert_eq!(
                a.origin_error.map(|e| e.code),
                Some(ErrorCode::UpstreamTimeout)
            );
        }
    }
}

/// As a timeout (above), a later part the origin fails otherwise (unreachable: 502
/// `upstream_error`; at capacity: 503 `overloaded`) is the code of what the answer leaves
/// out when part of the request was cached, not `response_full`, which its client would
/// ask for again at once.
#[test]
fn a_failed_part_after_asking_in_part_is_answered_with_the_failures_code() {
    let (mut p, centre, ring, too_large) = centre_cached();
    let busy = br#"{"code":"overloaded","message":"busy"}"#;
    let cases = [
        (
            OriginOutcome::Unreachable("connection reset"),
            "upstream_error",
        ),
        (
            OriginOutcome::Answer {
                status: 503,
                body: busy,
                retry_after_ms: None,
            },
            "overloaded",
        ),
    ];
    for (outcome, code) in cases {
        let mut asked = ring.clone();
        asked.insert(0, centre);
        let mut pending = p.begin(tiles_req(&asked), 1).unwrap();
        assert!(p.ask_in_part(&mut pending, &too_large));
        let a = p.complete(pending, outcome, 2);
        assert_centre_served_rest_left_out(&a, centre, code);
    }
}

/// `a` is a `200` serving the cached centre tile alone, the 8 around it left out as `code`.
fn assert_centre_served_rest_left_out(a: &Answer, centre: TileId, code: &str) {
    assert_eq!(a.status, 200, "{}", a.body);
    let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(v["error"]["code"], code, "{}", a.body);
    assert_eq!(
        v["error"]["tiles"].as_array().unwrap().len(),
        8,
        "{}",
        a.body
    );
    let d = decode_response(a.body.as_bytes(), &Limits::default()).unwrap();
    let served: Vec<TileId> = d.tiles.iter().map(|l| l.tile).collect();
    assert_eq!(served, [centre]);
}

/// A proxy (no warming) with the centre tile cached, the 8 tiles around it, and an origin
/// outcome too large to read (asked in part).
fn centre_cached() -> (Proxy, TileId, Vec<TileId>, OriginOutcome<'static>) {
    let centre = tile(CENTRE);
    let mut p = Proxy::new(ProxyConfig {
        warm_ring: 0,
        ..ProxyConfig::default()
    })
    .unwrap();
    run(&mut p, &origin(), tiles_req(&[centre]), 0);
    let too_large = OriginOutcome::TooLarge {
        status: 200,
        bytes: 9 << 20,
        retry_after_ms: None,
    };
    (p, centre, ring_around(&[centre], 1).unwrap(), too_large)
}

/// A request asked in part down to one tile whose answer is still too large to read, with
/// part of the request cached: that tile is held (too large alone), and what was not asked
/// is left out as `response_full` (the origin did not fail: the rest is served when asked
/// again, and the held tile is then left out as `payload_too_large` with no origin call),
/// not as the `upstream_error` the unread answer decodes to, which its client would back
/// off for.
#[test]
fn a_part_too_large_alone_after_asking_in_part_leaves_the_rest_out_as_response_full() {
    let (mut p, centre, ring, too_large) = centre_cached();
    let mut asked = ring.clone();
    asked.insert(0, centre);
    let mut pending = p.begin(tiles_req(&asked), 1).unwrap();
    let mut halvings = 0;
    while p.ask_in_part(&mut pending, &too_large) {
        halvings += 1;
    }
    assert_eq!(pending.origin_request().unwrap().tiles, ring[..1]);
    assert_eq!(halvings, 3, "8, 4, 2, then 1 alone");
    let a = p.complete(pending, too_large, 2);
    assert_centre_served_rest_left_out(&a, centre, "response_full");
}
