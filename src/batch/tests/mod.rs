//! The batcher's tests; the breaker's, the backoff's and coalescing's in sibling files.

mod backoff;
mod breaker;
mod coalesce;

use super::*;
use crate::access::Access;
use crate::planner::Work;
use crate::tile::TileId;

/// The tier every test request asks at.
const P: Access = Access::Public;

fn t(x: u32) -> TileId {
    TileId::new(14, x, 100).unwrap()
}
fn tiles(r: std::ops::Range<u32>) -> Vec<Work> {
    r.map(|x| Work::Tile(t(x))).collect()
}
fn all(_: &Work) -> bool {
    true
}

#[test]
fn groups_foreground_first_and_respects_sizes() {
    let mut b = Batcher::new(BatchConfig {
        max_tiles: 4,
        // Complete blocks only: these partial rows go out as their data tiles.
        coalesce_min_share: 100,
        ..BatchConfig::default()
    })
    .unwrap();
    b.set_prefetch(tiles(100..103));
    b.set_foreground(tiles(0..6));
    let r1 = b.poll(0, P, all).unwrap();
    assert_eq!((r1.kind, r1.request.tiles.len()), (Kind::Foreground, 4));
    let r2 = b.poll(0, P, all).unwrap();
    assert_eq!((r2.kind, r2.request.tiles.len()), (Kind::Foreground, 2));
    let r3 = b.poll(0, P, all).unwrap();
    assert_eq!((r3.kind, r3.request.tiles.len()), (Kind::Prefetch, 3));
    // 3 in flight of 4: the last slot is kept for foreground.
    b.set_prefetch(tiles(200..203));
    assert_eq!(b.poll(0, P, all), None);
    b.set_foreground(tiles(300..301));
    assert_eq!(b.poll(0, P, all).unwrap().kind, Kind::Foreground);
    assert_eq!(b.in_flight(), 4);
    assert_eq!(b.poll(0, P, all), None);
}

#[test]
fn never_requests_in_flight_twice() {
    let mut b = Batcher::new(BatchConfig::default()).unwrap();
    b.set_foreground(tiles(0..3));
    let r = b.poll(0, P, all).unwrap();
    b.set_foreground(tiles(0..5));
    b.set_prefetch(tiles(0..5));
    let r2 = b.poll(0, P, all).unwrap();
    assert_eq!(r2.request.tiles, vec![t(3), t(4)]);
    assert_eq!(b.poll(0, P, all), None);
    assert!(b.on_success(r.id).is_some());
    assert!(b.on_success(r.id).is_none());
}

#[test]
fn ids_respect_max_ids_and_dedup() {
    let mut b = Batcher::new(BatchConfig {
        max_ids: 3,
        ..BatchConfig::default()
    })
    .unwrap();
    b.request_ids(["a", "b", "c", "d", "a"]);
    let r = b.poll(0, P, all).unwrap();
    assert_eq!(r.request.ids, vec!["a", "b", "c"]);
    b.request_ids(["a", "d"]);
    let r2 = b.poll(0, P, all).unwrap();
    assert_eq!(r2.request.ids, vec!["d"]);
    assert!(b.is_id_in_flight("a"));
}

/// An id given twice in one call is queued once, as two calls queue it (the shells' `get_many`
/// hands every id of a `getMany` over in one call): queued twice, it rode its request twice
/// and a failure named it twice.
#[test]
fn an_id_given_twice_in_one_call_is_queued_once() {
    let mut b = Batcher::new(BatchConfig {
        retries: 0,
        ..BatchConfig::default()
    })
    .unwrap();
    b.request_ids(["a", "b", "a"]);
    let r = b.poll(0, P, all).unwrap();
    assert_eq!(r.request.ids, vec!["a", "b"]);
    let FailureOutcome::GaveUp(f) = b.on_failure(r.id, &Failure::Timeout, 0) else {
        panic!("should give up")
    };
    assert_eq!(f.loose_ids, vec!["a", "b"]);
}

#[test]
fn retries_with_backoff_then_gives_up() {
    let mut b = Batcher::new(BatchConfig {
        retries: 2,
        backoff_base_ms: 100,
        ..BatchConfig::default()
    })
    .unwrap();
    b.set_foreground(tiles(0..1));
    let r = b.poll(0, P, all).unwrap();
    let FailureOutcome::Retrying { at_ms, .. } = b.on_failure(r.id, &Failure::Timeout, 1000) else {
        panic!("should retry")
    };
    assert!((1050..=1100).contains(&at_ms), "{at_ms}");
    assert_eq!(b.poll(at_ms - 1, P, all), None, "not before the backoff");
    assert_eq!(b.next_wakeup(1000), Some(at_ms));
    let r = b.poll(at_ms, P, all).unwrap();
    assert_eq!(r.attempt, 1);
    let FailureOutcome::Retrying { at_ms: at2, .. } =
        b.on_failure(r.id, &Failure::Network("reset".into()), at_ms)
    else {
        panic!("should retry")
    };
    assert!((at_ms + 100..=at_ms + 200).contains(&at2), "{at2}");
    let r = b.poll(at2, P, all).unwrap();
    assert_eq!(r.attempt, 2);
    assert!(matches!(
        b.on_failure(r.id, &Failure::Timeout, at2),
        FailureOutcome::GaveUp(_)
    ));
    assert_eq!(b.stats().gave_up, 1);
}

/// A dead backend and a client that queues the visible tile again after every give-up
/// (as `Client::refresh_foreground` does): the gaps between rounds grow to
/// `backoff_max_ms` instead of staying at a second, and a success resets them.
#[test]
fn backoff_keeps_growing_across_give_ups_until_a_success() {
    let mut b = Batcher::new(BatchConfig {
        retries: 2,
        backoff_base_ms: 200,
        backoff_max_ms: 10_000,
        ..BatchConfig::default()
    })
    .unwrap();
    let dead = Failure::Http {
        status: 503,
        retry_after_ms: None,
    };
    let mut now = 0;
    let mut sent_at = Vec::new();
    let mut gave_up = 0;
    // Ten minutes against the dead backend.
    b.set_foreground(tiles(0..1));
    while now < 600_000 {
        if let Some(r) = b.poll(now, P, all) {
            sent_at.push(now);
            if matches!(b.on_failure(r.id, &dead, now), FailureOutcome::GaveUp(_)) {
                gave_up += 1;
                b.set_foreground(tiles(0..1));
            }
        }
        now = b.next_wakeup(now).expect("the queued tile's backoff");
    }
    // The first round is as before: 200 ms, then 400 ms (equal jitter: [d/2, d]).
    assert!(
        (100..=200).contains(&(sent_at[1] - sent_at[0])),
        "{sent_at:?}"
    );
    assert!(
        (200..=400).contains(&(sent_at[2] - sent_at[1])),
        "{sent_at:?}"
    );
    // Later gaps reach the cap's jitter window and never exceed it.
    let gaps: Vec<u64> = sent_at.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.iter().all(|&g| g <= 10_000), "{gaps:?}");
    assert!(gaps[10..].iter().all(|&g| g >= 5_000), "{gaps:?}");
    // At most one request per 5 s once grown: about 120 in 10 minutes, not ~1500.
    assert!(sent_at.len() < 130, "{} requests", sent_at.len());
    assert!(
        gave_up > 20,
        "rounds keep giving up and starting again: {gave_up}"
    );
    // The backend recovers: the next attempt succeeds and the streak resets.
    b.set_foreground(tiles(0..1));
    let at = b.next_wakeup(now).unwrap_or(now);
    let r = b.poll(at, P, all).unwrap();
    assert!(b.on_success(r.id).is_some());
    b.set_foreground(tiles(0..1));
    let r = b.poll(at, P, all).unwrap();
    let FailureOutcome::Retrying { at_ms, .. } = b.on_failure(r.id, &dead, at) else {
        panic!("should retry")
    };
    assert!(
        (at + 100..=at + 200).contains(&at_ms),
        "back to the base delay: {at_ms}"
    );
}

#[test]
fn client_errors_are_not_retried_and_retry_after_is_honoured() {
    let mut b = Batcher::new(BatchConfig::default()).unwrap();
    b.set_foreground(tiles(0..1));
    let r = b.poll(0, P, all).unwrap();
    let bad = Failure::Http {
        status: 400,
        retry_after_ms: None,
    };
    assert!(matches!(
        b.on_failure(r.id, &bad, 0),
        FailureOutcome::GaveUp(_)
    ));
    b.set_foreground(tiles(1..2));
    let r = b.poll(0, P, all).unwrap();
    let slow = Failure::Http {
        status: 429,
        retry_after_ms: Some(7000),
    };
    let FailureOutcome::Retrying { at_ms, .. } = b.on_failure(r.id, &slow, 0) else {
        panic!()
    };
    assert_eq!(at_ms, 7000);
}

#[test]
fn breaker_suspends_prefetch_not_foreground_and_probes() {
    let mut b = Batcher::new(BatchConfig {
        breaker_threshold: 2,
        breaker_cooldown_ms: 1000,
        retries: 0,
        ..BatchConfig::default()
    })
    .unwrap();
    for x in 0..2 {
        b.set_prefetch(tiles(x..x + 1));
        let r = b.poll(0, P, all).unwrap();
        b.on_failure(
            r.id,
            &Failure::Http {
                status: 503,
                retry_after_ms: None,
            },
            0,
        );
    }
    assert!(b.breaker_open());
    assert_eq!(b.stats().breaker_opened, 1);
    b.set_prefetch(tiles(10..12));
    assert_eq!(b.poll(500, P, all), None, "prefetch held while open");
    b.set_foreground(tiles(20..21));
    assert_eq!(
        b.poll(500, P, all).unwrap().kind,
        Kind::Foreground,
        "foreground never held"
    );
    // After the cool-down, one probe.
    let probe = b.poll(1000, P, all).unwrap();
    assert_eq!(probe.kind, Kind::Prefetch);
    assert_eq!(b.poll(1000, P, all), None, "only one probe at a time");
    // Probe fails: open again with a doubled cool-down.
    b.on_failure(probe.id, &Failure::Timeout, 1000);
    b.set_prefetch(tiles(30..31));
    assert_eq!(b.poll(2999, P, all), None);
    let probe = b.poll(3000, P, all).unwrap();
    b.on_success(probe.id);
    assert!(!b.breaker_open());
    b.set_prefetch(tiles(40..41));
    assert!(b.poll(3000, P, all).is_some());
}

/// An id a caller asks for while it is out in a prefetch's refresh by id joins that request;
/// when the request is cancelled (its tile no longer wanted), the id is asked for again.
#[test]
fn an_id_joined_to_a_cancelled_prefetch_is_asked_again() {
    let mut b = Batcher::new(BatchConfig::default()).unwrap();
    b.set_prefetch(vec![Work::Ids {
        tile: t(1),
        ids: vec!["x".into(), "y".into()],
    }]);
    let r = b.poll(0, P, all).unwrap();
    assert_eq!(r.kind, Kind::Prefetch);
    assert_eq!(r.request.ids, ["x", "y"]);
    b.request_ids(["x"]);
    assert_eq!(b.poll(0, P, all), None, "joined, not asked twice");
    assert_eq!(b.cancel_unwanted(|_| false), [r.id]);
    let again = b.poll(0, P, all).expect("asked again");
    assert_eq!(again.kind, Kind::Foreground);
    assert_eq!(again.request.ids, ["x"]);
}

#[test]
fn cancel_unwanted_prefetch_only() {
    let mut b = Batcher::new(BatchConfig {
        max_tiles: 2,
        // Complete blocks only: these partial rows go out as their data tiles.
        coalesce_min_share: 100,
        ..BatchConfig::default()
    })
    .unwrap();
    b.set_foreground(tiles(0..2));
    let fg = b.poll(0, P, all).unwrap();
    b.set_prefetch(tiles(10..14));
    let p1 = b.poll(0, P, all).unwrap();
    let p2 = b.poll(0, P, all).unwrap();
    let cancelled = b.cancel_unwanted(|tile| tile == t(12));
    assert_eq!(cancelled, vec![p1.id]);
    assert!(!b.is_tile_in_flight(t(10)));
    assert!(b.is_tile_in_flight(t(13)), "{p2:?} keeps a wanted tile");
    assert!(b.is_tile_in_flight(t(0)), "foreground is never cancelled");
    assert_eq!(
        b.on_failure(p1.id, &Failure::Aborted, 0),
        FailureOutcome::Unknown
    );
    assert!(b.on_success(fg.id).is_some());
}

#[test]
fn overdue_and_needed_filter() {
    let mut b = Batcher::new(BatchConfig {
        timeout_ms: 100,
        ..BatchConfig::default()
    })
    .unwrap();
    b.set_foreground(tiles(0..3));
    let r = b.poll(0, P, |w| w.tile() != t(1)).unwrap();
    assert_eq!(r.request.tiles, vec![t(0), t(2)]);
    assert!(b.overdue(99).is_empty());
    assert_eq!(b.overdue(100), vec![r.id]);
    assert_eq!(b.next_wakeup(0), Some(100));
}

#[test]
fn a_zoomed_out_miss_goes_out_as_few_coarse_tiles() {
    // Two levels up at most (the default, 3, would take two of these zoom-12 tiles as
    // their zoom-11 parent; the test after this one covers that).
    let mut b = Batcher::new(BatchConfig {
        max_tiles: 2,
        coalesce_levels: 2,
        ..BatchConfig::default()
    })
    .unwrap();
    let parents = [
        TileId::new(12, 100, 100).unwrap(),
        TileId::new(12, 101, 100).unwrap(),
        TileId::new(12, 102, 100).unwrap(),
    ];
    let works: Vec<Work> = parents
        .iter()
        .flat_map(|p| p.descendants(14).unwrap())
        .map(Work::Tile)
        .collect();
    b.set_foreground(works);
    let r = b.poll(0, P, all).unwrap();
    assert_eq!(
        r.request.tiles,
        parents[..2].to_vec(),
        "two coarse tiles fill the request"
    );
    let r2 = b.poll(0, P, all).unwrap();
    assert_eq!(r2.request.tiles, vec![parents[2]]);
    // Every data tile is tracked as in flight, and an answer frees all of them.
    assert!(parents[0]
        .descendants(14)
        .unwrap()
        .iter()
        .all(|t| b.is_tile_in_flight(*t)));
    let f = b.on_success(r.id).unwrap();
    assert_eq!(f.works.len(), 32);
    assert!(!b.is_tile_in_flight(parents[0].descendants(14).unwrap()[0]));
}

#[test]
fn config_errors_name_the_field() {
    let e = Batcher::new(BatchConfig {
        max_in_flight: 0,
        ..BatchConfig::default()
    })
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "batch config max_in_flight must be in 1..=64, got 0"
    );
}

#[test]
fn by_default_a_zoomed_out_miss_goes_out_as_zoom_11_tiles() {
    // The defaults coalesce 3 levels up: a zoom-11 tile for its 64 data tiles, and a
    // request of 16 such tiles (1024 data tiles, the server's default `--max-data-tiles`).
    let mut b = Batcher::new(BatchConfig::default()).unwrap();
    let parent = TileId::new(11, 328, 715).unwrap();
    b.set_foreground(
        parent
            .descendants(14)
            .unwrap()
            .into_iter()
            .map(Work::Tile)
            .collect(),
    );
    let r = b.poll(0, P, all).unwrap();
    assert_eq!(r.request.tiles, vec![parent]);
    let wide: Vec<Work> = (0..17)
        .flat_map(|x| {
            TileId::new(11, 320 + x, 715)
                .unwrap()
                .descendants(14)
                .unwrap()
        })
        .map(Work::Tile)
        .collect();
    let mut b = Batcher::new(BatchConfig::default()).unwrap();
    b.set_foreground(wide);
    let r = b.poll(0, P, all).unwrap();
    assert_eq!(r.request.tiles.len(), 16);
    assert!(r.request.tiles.iter().all(|t| t.z() == 11));
}

/// A server that refuses coarse tiles with a `400` (a tilewarm server before 2026-12-06
/// allows 256 data tiles a request, the package's default request of 16 zoom-11 tiles
/// covers 1024) is asked again at once, one zoom finer each time, down to data tiles; a
/// `400` then is the failure it is. Each step is no retry, and the level stays lowered
/// for a tile TTL from the last such `400`.
#[test]
fn a_400_for_coarse_tiles_asks_again_at_once_one_zoom_finer() {
    let mut b = Batcher::new(BatchConfig::default()).unwrap();
    let parent = TileId::new(11, 328, 715).unwrap();
    let block = || -> Vec<Work> {
        let below = parent.descendants(14).unwrap();
        below.into_iter().map(Work::Tile).collect()
    };
    b.set_foreground(block());
    let bad = Failure::Http {
        status: 400,
        retry_after_ms: None,
    };
    let mut zooms = Vec::new();
    for now in 0..3 {
        let r = b.poll(now, P, all).unwrap();
        zooms.push((r.request.tiles[0].z(), r.request.tiles.len(), r.attempt));
        let FailureOutcome::Retrying { at_ms, .. } = b.on_failure(r.id, &bad, now) else {
            panic!("a 400 for coarse tiles gave up: {zooms:?}")
        };
        assert_eq!(at_ms, now);
    }
    let r = b.poll(3, P, all).unwrap();
    zooms.push((r.request.tiles[0].z(), r.request.tiles.len(), r.attempt));
    assert_eq!(zooms, [(11, 1, 0), (12, 4, 0), (13, 16, 0), (14, 16, 0)]);
    assert!(matches!(
        b.on_failure(r.id, &bad, 3),
        FailureOutcome::GaveUp(_)
    ));
    // Lowered for a tile TTL from the last 400: a later miss within it goes out as data
    // tiles at once; one after it coalesced again.
    let hold = crate::batch::DEFAULT_TOO_LARGE_HOLD_MS;
    let mut b2 = b.clone();
    b2.set_foreground(block());
    let r = b2.poll(1 + hold, P, all).unwrap();
    assert!(r.request.tiles.iter().all(|t| t.z() == 14));
    let mut b2 = b.clone();
    b2.set_foreground(block());
    let r = b2.poll(2 + hold, P, all).unwrap();
    assert_eq!(r.request.tiles, [parent], "the configured level again");
    // An answered request lowers nothing: a 400 at 12 stops at 13.
    let mut b = Batcher::new(BatchConfig::default()).unwrap();
    b.set_foreground(block());
    let r = b.poll(0, P, all).unwrap();
    b.on_failure(r.id, &bad, 0);
    let r = b.poll(0, P, all).unwrap();
    assert_eq!(r.request.tiles[0].z(), 12);
    b.on_success(r.id);
    b.set_foreground(block());
    let r = b.poll(0, P, all).unwrap();
    assert_eq!((r.request.tiles[0].z(), r.request.tiles.len()), (12, 4));
    // A 400 for coarse tiles with ids asked for too lowers nothing: the ids may be why.
    let mut b = Batcher::new(BatchConfig::default()).unwrap();
    b.set_foreground(block());
    b.request_ids(["a"]);
    let r = b.poll(0, P, all).unwrap();
    assert_eq!((r.request.tiles[0].z(), r.request.ids.len()), (11, 1));
    assert!(matches!(
        b.on_failure(r.id, &bad, 0),
        FailureOutcome::GaveUp(_)
    ));
    b.set_foreground(block());
    let r = b.poll(1_000_000, P, all).unwrap();
    assert_eq!(r.request.tiles, [parent]);
}

#[test]
fn a_partly_queued_block_goes_out_as_its_coarse_tile_when_nothing_of_it_is_held() {
    let parent = TileId::new(12, 100, 100).unwrap();
    let block = parent.descendants(14).unwrap(); // 16 tiles
    let half = BatchConfig {
        coalesce_min_share: 50,
        ..BatchConfig::default()
    };
    let mut b = Batcher::new(half.clone()).unwrap();
    // 8 of 16 queued, the other 8 neither held nor in flight: one coarse tile.
    b.set_prefetch(block[..8].iter().copied().map(Work::Tile).collect());
    let r = b.poll(0, P, all).unwrap();
    assert_eq!(r.request.tiles, vec![parent]);
    // The whole block is in flight (its answer brings all 16), so nothing asks for the
    // rest meanwhile; the request is for the 8 queued ones.
    assert!(block.iter().all(|&t| b.is_tile_in_flight(t)));
    b.set_foreground(block[8..].iter().copied().map(Work::Tile).collect());
    assert_eq!(b.poll(0, P, all), None, "the rest is coming");
    let f = b.on_success(r.id).unwrap();
    assert_eq!(f.works.len(), 8);
    assert!(!b.is_tile_in_flight(block[15]));

    // 7 of 16 (below half): the z13 quarters with at least 2 of their 4 queued go out
    // coarse, and a lone tile as itself.
    let mut b = Batcher::new(half).unwrap();
    let quarters = parent.descendants(13).unwrap();
    let mut queued = quarters[0].descendants(14).unwrap(); // 4 of a quarter
    queued.extend(&quarters[1].descendants(14).unwrap()[..2]); // 2 of a quarter
    queued.push(quarters[2].descendants(14).unwrap()[0]); // 1 of a quarter
    b.set_prefetch(queued.iter().copied().map(Work::Tile).collect());
    let r = b.poll(0, P, all).unwrap();
    assert_eq!(r.request.tiles, vec![quarters[0], quarters[1], queued[6]]);
}

#[test]
fn a_partly_queued_block_is_not_asked_for_whole_when_part_of_it_is_held_or_coming() {
    let parent = TileId::new(12, 100, 100).unwrap();
    let block = parent.descendants(14).unwrap();
    let queued: Vec<Work> = block[..12].iter().copied().map(Work::Tile).collect();
    // One of the other 4 is cached fresh (`needed` says no): its items would come twice.
    let fresh = block[15];
    let half = BatchConfig {
        coalesce_min_share: 50,
        ..BatchConfig::default()
    };
    let mut b = Batcher::new(half.clone()).unwrap();
    b.set_prefetch(queued.clone());
    let r = b.poll(0, P, |w: &Work| w.tile() != fresh).unwrap();
    assert!(!r.request.tiles.contains(&parent), "{:?}", r.request.tiles);
    assert!(!b.is_tile_in_flight(fresh));
    // Three of its z13 quarters are complete or half queued and hold nothing else: those
    // go out coarse; the fourth holds the fresh tile.
    assert_eq!(r.request.tiles.iter().filter(|t| t.z() == 13).count(), 3);
    // One of the other 4 is in flight already.
    let mut b = Batcher::new(half.clone()).unwrap();
    b.set_foreground(vec![Work::Tile(block[15])]);
    let fg = b.poll(0, P, all).unwrap();
    assert_eq!(fg.request.tiles, vec![block[15]]);
    b.set_prefetch(queued.clone());
    let r = b.poll(0, P, all).unwrap();
    assert!(!r.request.tiles.contains(&parent), "{:?}", r.request.tiles);
    // One of the other 4 is backing off (an answer for it could not be kept): the block
    // would ask for it before its delay is over.
    let mut b = Batcher::new(half).unwrap();
    b.back_off(&[block[15]], 0, 0);
    b.set_prefetch(queued);
    let r = b.poll(0, P, all).unwrap();
    assert!(!r.request.tiles.contains(&parent), "{:?}", r.request.tiles);
    assert!(!b.is_tile_in_flight(block[15]));
    // At 100 (complete blocks only) the 12 never go out as the block.
    let mut b = Batcher::new(BatchConfig {
        coalesce_min_share: 100,
        ..BatchConfig::default()
    })
    .unwrap();
    b.set_prefetch(block[..12].iter().copied().map(Work::Tile).collect());
    let r = b.poll(0, P, all).unwrap();
    assert!(!r.request.tiles.contains(&parent));
    assert!(!b.is_tile_in_flight(block[15]));
}

#[test]
fn coalesce_min_share_is_checked() {
    for bad in [0, 101] {
        let e = Batcher::new(BatchConfig {
            coalesce_min_share: bad,
            ..BatchConfig::default()
        })
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("batch config coalesce_min_share must be in 1..=100, got {bad}")
        );
    }
}

/// A partial answer that sheds load (`overloaded`, `rate_limited`, `upstream_timeout`: the
/// server, or the edge for its origin, answered only part of the request) or whose origin
/// failed (`upstream_error`) is, for what it left out, the failure a whole answer with that
/// code is: it counts towards the breaker
/// (it used to close it and reset the streak), the tiles it left out back off, and the ones
/// it answered do not. Whatever it left out (tiles, ids asked for directly, ids of a
/// refresh), three such answers in a row open the breaker. A `response_full` one is an
/// answer: it closes the breaker and ends the streak of failures. Fails before they counted
/// (the breaker stayed closed; for `upstream_error`, until 2026-12-06).
#[test]
fn a_partial_answer_shedding_load_counts_towards_the_breaker_and_backs_off_what_it_left_out() {
    use crate::protocol::ErrorCode;
    let config = BatchConfig {
        coalesce_min_share: 100,
        ..BatchConfig::default()
    };
    let just = |id: &'static str| move |i: &str| i == id;
    let (a, p) = (just("a"), just("p"));
    for code in [
        ErrorCode::Overloaded,
        ErrorCode::RateLimited,
        ErrorCode::UpstreamTimeout,
        ErrorCode::UpstreamError,
    ] {
        let mut b = Batcher::new(config.clone()).unwrap();
        // 1. Tile 1 left out, tile 0 answered.
        b.set_foreground(tiles(0..2));
        let r = b.poll(0, P, all).unwrap();
        let (_, unanswered, again) = b
            .on_answer(r.id, |tile| tile == t(0), Some((code, &a)), 0)
            .unwrap();
        assert_eq!((unanswered, again), (vec![t(1)], true), "{code}: retried");
        assert!(!b.breaker_open(), "{code}: one of three");
        // 2. An id asked for directly left out ("a" answered).
        b.set_foreground(Vec::new());
        b.request_ids(["a", "b"]);
        let r = b.poll(0, P, all).unwrap();
        assert_eq!(r.request.ids, ["a", "b"]);
        b.on_answer(r.id, |_| true, Some((code, &a)), 0).unwrap();
        assert!(!b.breaker_open(), "{code}: two of three");
        // 3. A refresh by id of tile 50 that left out "q".
        b.set_foreground(vec![Work::Ids {
            tile: t(50),
            ids: vec!["p".into(), "q".into()],
        }]);
        let r = b.poll(0, P, all).unwrap();
        b.on_answer(r.id, |_| true, Some((code, &p)), 0).unwrap();
        assert!(b.breaker_open(), "{code}: three in a row open the breaker");
        assert_eq!(b.stats().breaker_opened, 1, "{code}");
        b.set_prefetch(tiles(100..101));
        assert_eq!(b.poll(0, P, all), None, "{code}: prefetch held");
        // The tile left out backs off; the one answered does not.
        b.set_prefetch(Vec::new());
        b.set_foreground(tiles(0..2));
        let r = b.poll(0, P, all).unwrap();
        assert_eq!(r.request.tiles, [t(0)], "{code}");
        assert_eq!(b.poll(0, P, all), None, "{code}: tile 1 backs off");
    }
    // A `response_full` answer between failures ends their streak.
    let mut b = Batcher::new(config).unwrap();
    for x in [0, 10] {
        for y in [x, x + 1] {
            b.set_foreground(tiles(y..y + 1));
            let r = b.poll(0, P, all).unwrap();
            let http = Failure::Http {
                status: 503,
                retry_after_ms: None,
            };
            b.on_failure(r.id, &http, 0);
        }
        b.set_foreground(tiles(x + 2..x + 4));
        let r = b.poll(0, P, all).unwrap();
        let full = Some((ErrorCode::ResponseFull, &a as &dyn Fn(&str) -> bool));
        b.on_answer(r.id, |tile| tile != t(x + 3), full, 0).unwrap();
        assert!(!b.breaker_open());
    }
    assert_eq!(b.stats().breaker_opened, 0, "the streak ended each time");
}

/// What a partial answer that sheds load, or whose origin failed, left out (tiles, ids
/// asked for directly) is retried as the whole refusal's work would be: held back, then
/// asked again as the next attempt, until the retries are spent. Before, the ids were
/// dropped (their `get` failed at once) and the tiles waited for the planner (for
/// `upstream_error`, until 2026-12-06).
#[test]
fn what_a_partial_answer_shedding_load_left_out_is_retried_as_a_failed_attempt() {
    use crate::protocol::ErrorCode;
    for code in [ErrorCode::Overloaded, ErrorCode::UpstreamError] {
        retried_as_a_failed_attempt(code);
    }
}

fn retried_as_a_failed_attempt(code: crate::protocol::ErrorCode) {
    let config = BatchConfig {
        coalesce_min_share: 100,
        retries: 1,
        ..BatchConfig::default()
    };
    let a = |i: &str| i == "a";
    let mut b = Batcher::new(config).unwrap();
    b.set_foreground(tiles(0..2));
    b.request_ids(["a", "b"]);
    let r = b.poll(0, P, all).unwrap();
    assert_eq!(r.request.ids, ["a", "b"]);
    let shed = Some((code, &a as &dyn Fn(&str) -> bool));
    let (_, unanswered, retrying) = b.on_answer(r.id, |tile| tile == t(0), shed, 0).unwrap();
    assert_eq!((unanswered, retrying), (vec![t(1)], true), "{code}");
    assert_eq!(b.poll(0, P, all), None, "{code}: held back first");
    let later = b.next_wakeup(0).expect("a retry is due");
    let r = b.poll(later, P, all).expect("retried");
    assert_eq!(
        (&r.request.tiles[..], &r.request.ids[..]),
        (&[t(1)][..], &["b".to_string()][..]),
        "{code}"
    );
    // Shed again: the retries are spent, nothing goes out again.
    let none = |_: &str| false;
    let shed = Some((code, &none as &dyn Fn(&str) -> bool));
    let (_, unanswered, retrying) = b.on_answer(r.id, |_| false, shed, later).unwrap();
    assert_eq!((unanswered, retrying), (vec![t(1)], false), "{code}");
    assert_eq!(b.poll(later + 3_600_000, P, all), None, "{code}: given up");
}

/// A refresh by id that a partial answer sheds after answering some of its ids is retried
/// with only the ids it left out: those it answered are in the cache. Before, the retry
/// asked for the whole refresh again.
#[test]
fn a_shed_refresh_by_id_is_retried_with_only_the_ids_left_out() {
    let config = BatchConfig {
        retries: 1,
        ..BatchConfig::default()
    };
    let mut b = Batcher::new(config).unwrap();
    b.set_foreground(vec![Work::Ids {
        tile: t(50),
        ids: vec!["p".into(), "q".into()],
    }]);
    let r = b.poll(0, P, all).unwrap();
    assert_eq!(r.request.ids, ["p", "q"]);
    let p = |i: &str| i == "p";
    let shed = Some((
        crate::protocol::ErrorCode::Overloaded,
        &p as &dyn Fn(&str) -> bool,
    ));
    let (_, _, retrying) = b.on_answer(r.id, |_| true, shed, 0).unwrap();
    assert!(retrying);
    let later = b.next_wakeup(0).expect("a retry is due");
    let r = b.poll(later, P, all).expect("retried");
    assert_eq!(r.request.ids, ["q"]);
}

/// What a partial answer left out as too large to serve (`payload_too_large`: a tile over
/// the server's `--max-tile-items`, asked for on its own, an item over
/// `--max-item-data-bytes`), or refused (`bad_request`), fails as a whole 413 or 400 does:
/// not retried (the same request would get the same answer), the tiles backing off as a
/// given-up request's, the ids dropped, the breaker closed (the backend answered). The
/// tiles it answered back off no more.
#[test]
fn what_a_partial_answer_left_out_as_too_large_is_given_up_at_once() {
    use crate::protocol::ErrorCode;
    for code in [ErrorCode::PayloadTooLarge, ErrorCode::BadRequest] {
        let config = BatchConfig {
            coalesce_min_share: 100,
            retries: 2,
            ..BatchConfig::default()
        };
        let mut b = Batcher::new(config).unwrap();
        let a = |i: &str| i == "a";
        let left = Some((code, &a as &dyn Fn(&str) -> bool));
        if code == ErrorCode::PayloadTooLarge {
            // Refused the first time, a tile may have been too large as part of a coarse
            // tile: asked for again, on its own (the test below). Not given up yet.
            b.set_foreground(tiles(1..2));
            let r = b.poll(0, P, all).unwrap();
            let (_, unanswered, retrying) = b.on_answer(r.id, |_| false, left, 0).unwrap();
            assert_eq!((unanswered, retrying), (Vec::new(), false));
        }
        b.set_foreground(tiles(0..2));
        b.request_ids(["a", "b"]);
        let r = b.poll(0, P, all).unwrap();
        let (_, unanswered, retrying) = b.on_answer(r.id, |tile| tile == t(0), left, 0).unwrap();
        assert_eq!((unanswered, retrying), (vec![t(1)], false), "{code}");
        assert!(!b.breaker_open(), "{code}");
        // Nothing is queued again: neither the tile nor the id "b".
        assert_eq!(b.poll(3_600_000, P, all), None, "{code}: not retried");
        // Asked for again by the planner, the tile waits for its backoff; tile 0 does not.
        b.set_foreground(tiles(0..2));
        let r = b.poll(0, P, all).unwrap();
        assert_eq!(r.request.tiles, [t(0)], "{code}: tile 1 backs off");
        let later = b.next_wakeup(0).expect("its backoff ends");
        assert!(later > 0, "{code}");
    }
}

/// A coarse request tile the server refuses as too large to serve (`payload_too_large`:
/// its items are over what one answer may hold; "request finer tiles") stands for data
/// tiles that each fit: asked for again, they go out at once, each on its own (from then
/// on), not as the same coarse tile after a backoff, and nothing is reported (the
/// coalescing was the client's choice). A data tile refused on its own is the failure it
/// is. Before, the data tiles backed off and were coalesced into the same coarse tile
/// again, refused again, for ever: the view never completed.
#[test]
fn data_tiles_of_a_coarse_tile_too_large_to_serve_go_out_again_at_once_on_their_own() {
    use crate::protocol::ErrorCode;
    let config = BatchConfig {
        coalesce_min_share: 100,
        coalesce_levels: 2,
        max_tiles: 16,
        ..BatchConfig::default()
    };
    let mut b = Batcher::new(config).unwrap();
    // The 16 data tiles of one z12 block.
    let block = TileId::new(12, 256, 25).unwrap();
    let data = block.descendants(14).unwrap();
    b.set_foreground(data.iter().map(|&d| Work::Tile(d)).collect());
    let r = b.poll(0, P, all).unwrap();
    assert_eq!(r.request.tiles, [block]);
    let none = |_: &str| false;
    let too_large = Some((ErrorCode::PayloadTooLarge, &none as &dyn Fn(&str) -> bool));
    let (_, unanswered, retrying) = b.on_answer(r.id, |_| false, too_large, 0).unwrap();
    assert_eq!(
        (unanswered, retrying),
        (Vec::new(), false),
        "nothing reported"
    );
    assert!(!b.breaker_open());
    // Asked for again (as the client queues what it still needs): at once, as data tiles.
    b.set_foreground(data.iter().map(|&d| Work::Tile(d)).collect());
    let r = b.poll(0, P, all).expect("not held back");
    let mut sent = r.request.tiles.clone();
    sent.sort_by_key(|t| t.to_u64());
    let mut want = data.clone();
    want.sort_by_key(|t| t.to_u64());
    assert_eq!(sent, want, "each data tile on its own");
    // One of them too large alone: the 413 it is, not split further.
    let (_, unanswered, retrying) = b.on_answer(r.id, |t| t != data[0], too_large, 0).unwrap();
    assert_eq!((unanswered, retrying), (vec![data[0]], false));
    // Queued again later, they still go out on their own.
    b.set_foreground(data[1..].iter().map(|&d| Work::Tile(d)).collect());
    let r = b.poll(0, P, all).unwrap();
    assert_eq!(r.request.tiles.len(), 15, "{:?}", r.request.tiles);
}

/// The data tiles each request tile stands for, sorted; a tile twice would be a repeat.
fn data_tiles_of(request: &[TileId]) -> Vec<TileId> {
    let mut data: Vec<TileId> = request
        .iter()
        .flat_map(|r| r.descendants(14).unwrap())
        .collect();
    data.sort_by_key(|t| t.to_u64());
    data
}

/// After the server refuses a coarse tile as too large, only its data tiles go out on
/// their own, and only for a hold (a tile TTL): the rest of what is queued with them still
/// coalesces (into no coarse tile that holds them, so no data tile is asked twice), and
/// once the notes lapse the server is asked for the coarse tile again. Before, a request
/// holding any such tile was not coalesced at all, and the notes never lapsed: after one
/// refusal near a dense area, that area's requests went out as data tiles, 16 to a
/// request, for the page's life.
#[test]
fn only_the_data_tiles_of_a_coarse_tile_too_large_go_out_on_their_own_and_for_a_hold() {
    use crate::protocol::ErrorCode;
    let mut b = Batcher::new(BatchConfig {
        coalesce_levels: 2,
        max_tiles: 16,
        ..BatchConfig::default() // coalesce_min_share 50
    })
    .unwrap();
    b.hold_too_large_for(1000);
    let block = TileId::new(12, 256, 24).unwrap();
    let next = TileId::new(12, 257, 24).unwrap();
    let quarters = block.descendants(13).unwrap();
    let refused = quarters[0].descendants(14).unwrap();
    let works = |t: &[TileId]| t.iter().map(|&d| Work::Tile(d)).collect::<Vec<_>>();
    b.set_foreground(works(&refused));
    let r = b.poll(0, P, all).unwrap();
    assert_eq!(r.request.tiles, [quarters[0]]);
    let none = |_: &str| false;
    let too_large = Some((ErrorCode::PayloadTooLarge, &none as &dyn Fn(&str) -> bool));
    let (_, unanswered, _) = b.on_answer(r.id, |_| false, too_large, 0).unwrap();
    assert!(unanswered.is_empty());
    // Both blocks asked for: the other block and the refused tile's three sibling
    // quarters coarse (not `block`, which holds it), its four data tiles on their own
    // (after them); no data tile twice.
    let mut both = next.descendants(14).unwrap();
    both.extend(block.descendants(14).unwrap());
    b.set_foreground(works(&both));
    let r = b.poll(1, P, all).unwrap();
    let mut want = vec![next, quarters[1], quarters[2], quarters[3]];
    want.extend(&refused);
    assert_eq!(
        r.request.tiles, want,
        "only the refused tile's data tiles on their own"
    );
    assert_eq!(b.poll(1, P, all), None, "all in one request");
    both.sort_by_key(|t| t.to_u64());
    assert_eq!(data_tiles_of(&r.request.tiles), both, "each data tile once");
    b.on_success(r.id).unwrap();
    // The notes lapse with the hold: the coarse tile is asked for again.
    b.set_foreground(works(&refused));
    let r = b.poll(999, P, all).unwrap();
    assert_eq!(r.request.tiles, refused, "on their own for the hold");
    b.on_success(r.id).unwrap();
    b.set_foreground(works(&refused));
    let r = b.poll(1000, P, all).unwrap();
    assert_eq!(r.request.tiles, [quarters[0]], "asked for coarse again");
}

/// A data tile refused on its own while noted is held for a hold, and stays noted a hold
/// past it: then asked for on its own first, not within the coarse tile that holds it
/// (which would be refused too), and its siblings coalesce without it.
#[test]
fn a_held_data_tile_is_asked_for_on_its_own_first_when_its_hold_ends() {
    use crate::protocol::ErrorCode;
    let mut b = Batcher::new(BatchConfig {
        coalesce_levels: 2,
        ..BatchConfig::default()
    })
    .unwrap();
    b.hold_too_large_for(1000);
    let quarter = TileId::new(13, 512, 48).unwrap();
    let data = quarter.descendants(14).unwrap();
    let works = |t: &[TileId]| t.iter().map(|&d| Work::Tile(d)).collect::<Vec<_>>();
    let none = |_: &str| false;
    let too_large = Some((ErrorCode::PayloadTooLarge, &none as &dyn Fn(&str) -> bool));
    b.set_foreground(works(&data));
    let r = b.poll(0, P, all).unwrap();
    assert_eq!(r.request.tiles, [quarter]);
    b.on_answer(r.id, |_| false, too_large, 0).unwrap();
    b.set_foreground(works(&data));
    let r = b.poll(0, P, all).unwrap();
    assert_eq!(r.request.tiles, data);
    let (_, unanswered, _) = b.on_answer(r.id, |t| t != data[0], too_large, 0).unwrap();
    assert_eq!(unanswered, [data[0]]);
    assert!(b.held(data[0], 999) && !b.held(data[0], 1000));
    // At 1000 the hold and the siblings' notes end: the tile alone, the siblings as
    // themselves (the quarter would hold it).
    b.set_foreground(works(&data));
    let r = b.poll(1000, P, all).unwrap();
    assert_eq!(r.request.tiles, [data[1], data[2], data[3], data[0]]);
    b.on_answer(r.id, |t| t != data[0], too_large, 1000)
        .unwrap();
    assert!(b.held(data[0], 1999));
}

/// With a single slot, prefetch waits while foreground work is queued, but not for a
/// visible tile held as too large (a tile TTL): before, it waited for the whole hold.
#[test]
fn with_one_slot_prefetch_does_not_wait_for_a_tile_held_as_too_large() {
    let mut b = Batcher::new(BatchConfig {
        max_in_flight: 1,
        ..BatchConfig::default()
    })
    .unwrap();
    b.set_foreground(tiles(0..1));
    let r = b.poll(0, P, all).unwrap();
    let too_large = Failure::Http {
        status: 413,
        retry_after_ms: None,
    };
    b.on_failure(r.id, &too_large, 0);
    assert!(b.held(t(0), 1));
    b.set_foreground(tiles(0..1));
    b.set_prefetch(tiles(10..12));
    let r = b.poll(1, P, all).expect("prefetch goes out");
    assert_eq!(r.kind, Kind::Prefetch);
    b.on_success(r.id).unwrap();
    // Foreground work that may go out soon (an id) still keeps the slot free.
    b.request_ids(["a"]);
    b.set_prefetch(tiles(20..21));
    let r = b.poll(1, P, all).unwrap();
    assert_eq!(r.kind, Kind::Foreground);
}
