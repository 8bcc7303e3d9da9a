//! Answers in parts: what an origin's answer had no room for (`response_full`), and what
//! was too large to read, asked again so that every request makes progress.

use super::*;
use crate::origin::Origin;
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
