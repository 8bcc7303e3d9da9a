//! End-to-end runs of the simulator on small traces: relations that must hold whatever
//! the numbers are.

use std::path::Path;

use tilewarm_sim::forecache::{self, Mapping};
use tilewarm_sim::sim::{self, Metrics, Policy, SimConfig};
use tilewarm_sim::synth::{self, SynthConfig};
use tilewarm_sim::trace;

fn synthetic_sessions() -> Vec<trace::Session> {
    let events = synth::generate(&SynthConfig {
        sessions: 2,
        events_per_session: 80,
        ..SynthConfig::default()
    });
    let mut buf = Vec::new();
    trace::write(&mut buf, &events).unwrap();
    trace::parse(buf.as_slice()).unwrap()
}

fn check_consistent(m: &Metrics) {
    let p = &m.policy;
    assert_eq!(m.errors, 0, "{p}: responses refused");
    assert!(m.hits <= m.viewports, "{p}");
    assert!(m.abandoned <= m.viewports - m.hits, "{p}");
    assert!(m.items_shown_at_once <= m.items_in_view, "{p}");
    assert!(m.foreground_requests <= m.requests, "{p}");
    assert!(m.prefetch_wasted <= m.prefetch_tiles, "{p}");
    assert!(m.ttc_p50_ms <= m.ttc_p90_ms, "{p}");
    assert_eq!(
        m.viewports_by_action.values().sum::<u64>(),
        m.viewports,
        "{p}"
    );
    assert_eq!(
        m.misses_by_action.values().sum::<u64>(),
        m.viewports - m.hits,
        "{p}"
    );
    assert!((0.0..=1.0).contains(&m.viewport_hit_rate), "{p}");
    assert!((0.0..=1.0).contains(&m.item_hit_rate), "{p}");
    if m.items_fetched > 0 {
        assert!(m.bytes > 0, "{p}");
    }
}

#[test]
fn policies_see_the_same_viewports_and_keep_the_guaranteed_relations() {
    let sessions = synthetic_sessions();
    let origin = sim::origin_from(tilewarm::dataset::synthetic_city(7, 3000));
    let cfg = SimConfig::default();
    let all: Vec<Policy> = Policy::ALL.into_iter().collect();
    let ms = sim::run_all(&all, &sessions, &origin, &cfg);
    let by = |n: &str| ms.iter().find(|m| m.policy == n).unwrap();
    for m in &ms {
        check_consistent(m);
        assert_eq!(m.viewports, by("none").viewports, "{}", m.policy);
        assert_eq!(
            m.viewports_empty,
            by("none").viewports_empty,
            "{}",
            m.policy
        );
        assert_eq!(m.items_in_view, by("none").items_in_view, "{}", m.policy);
    }
    assert!(by("none").viewports > 100);
    let none = by("none");
    assert_eq!(none.hits, 0, "no cache, no hits");
    assert_eq!(none.items_shown_at_once, 0);
    assert_eq!(none.prefetch_tiles, 0);
    assert_eq!(none.foreground_requests, none.requests);
    let lru = by("lru");
    assert_eq!(lru.prefetch_tiles, 0, "lru never prefetches");
    assert_eq!(lru.foreground_requests, lru.requests);
    assert!(none.items_fetched >= lru.items_fetched);
    assert!(none.requests >= lru.requests);
    // Deterministic: the same run again gives the same numbers.
    let again = sim::run_all(&all, &sessions, &origin, &cfg);
    assert_eq!(ms, again);
}

/// `--bounds data`: the clients know the data's extent, so tiles outside are never asked
/// for. No item is lost by it: the policy that fetches every visible tile every time
/// fetches the same items, and every policy sees the same views and items in them.
#[test]
fn the_datas_extent_loses_no_item() {
    let sessions = synthetic_sessions();
    let origin = sim::origin_from(tilewarm::dataset::synthetic_city(7, 3000));
    let extent = origin.extent().unwrap();
    assert!(origin
        .items()
        .iter()
        .all(|i| (extent.west..=extent.east).contains(&i.lon)
            && (extent.south..=extent.north).contains(&i.lat)));
    let open = SimConfig::default();
    let bounded = SimConfig {
        bounds: extent,
        ..SimConfig::default()
    };
    let all: Vec<Policy> = Policy::ALL.into_iter().collect();
    let (a, b) = (
        sim::run_all(&all, &sessions, &origin, &open),
        sim::run_all(&all, &sessions, &origin, &bounded),
    );
    for (a, b) in a.iter().zip(&b) {
        check_consistent(b);
        assert_eq!(
            (a.viewports, a.items_in_view),
            (b.viewports, b.items_in_view),
            "{}",
            a.policy
        );
    }
    let (a, b) = (&a[0], &b[0]);
    assert_eq!(a.policy, "none");
    assert_eq!(
        a.items_fetched, b.items_fetched,
        "the same items, from fewer tiles"
    );
    assert!(b.requests <= a.requests);
}

#[test]
fn a_flaky_backend_costs_retries_and_hits_and_stays_deterministic() {
    let sessions = synthetic_sessions();
    let origin = sim::origin_from(tilewarm::dataset::synthetic_city(7, 3000));
    let calm = SimConfig::default();
    let flaky = SimConfig {
        fail_share: 0.3,
        slow_share: 0.1,
        ..SimConfig::default()
    };
    for p in [Policy::None, Policy::Ring1, Policy::Tilewarm] {
        let ok = sim::run_policy(p, &sessions, &origin, &calm);
        let bad = sim::run_policy(p, &sessions, &origin, &flaky);
        check_consistent(&bad);
        assert_eq!((ok.failed_requests, ok.slow_requests), (0, 0), "{p:?}");
        assert!(
            bad.failed_requests > 0 && bad.slow_requests > 0,
            "{p:?}: {bad:?}"
        );
        // Some views wait for failed work (retried after a backoff, or asked for again).
        if p != Policy::None {
            assert!(bad.hits < ok.hits, "{p:?}: {} vs {}", bad.hits, ok.hits);
        }
        assert_eq!(bad, sim::run_policy(p, &sessions, &origin, &flaky), "{p:?}");
    }
}

#[test]
fn latency_model_shows_in_time_to_complete() {
    let sessions = synthetic_sessions();
    let origin = sim::origin_from(tilewarm::dataset::synthetic_city(7, 3000));
    let cfg = SimConfig {
        base_ms: 500.0,
        per_item_ms: 0.0,
        ..SimConfig::default()
    };
    let m = sim::run_policy(Policy::None, &sessions, &origin, &cfg);
    check_consistent(&m);
    // A miss that completes takes at least one request; abandoned ones are on screen < 500 ms.
    assert!(m.ttc_p90_ms >= 100, "{m:?}");
    assert!(
        m.abandoned > 0,
        "fast gestures leave slow views before they complete"
    );
}

#[test]
fn real_user_study_logs_replay_if_present() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/forecache-ndsi2d");
    let file = dir.join("U_1.csv");
    if !file.exists() {
        eprintln!(
            "skipping: {} is absent (the shared data folder is not part of a fresh clone)",
            file.display()
        );
        return;
    }
    let (events, stats) = forecache::convert(
        std::fs::File::open(&file).unwrap(),
        "U_1",
        &Mapping::default(),
    )
    .unwrap();
    assert_eq!(stats.rows, events.len());
    assert!(events.len() >= 45);
    let mut buf = Vec::new();
    trace::write(&mut buf, &events).unwrap();
    let sessions = trace::parse(buf.as_slice()).unwrap();
    let origin = sim::origin_from(tilewarm::dataset::synthetic_city(7, 3000));
    let cfg = SimConfig {
        min_zoom: 11.0,
        ..SimConfig::default()
    };
    for m in sim::run_all(&Policy::ALL, &sessions, &origin, &cfg) {
        check_consistent(&m);
        assert!(m.viewports > 0);
    }
}

/// A view at rest fetches its items again as they expire (the client wakes at their
/// expiry). Within a session that is traffic like any other: the user is looking at it.
/// After the session's last viewport it is the page left open, for as long as the run
/// goes on, and is counted apart (`idle_*`), so the rest of the run does not add to a
/// policy's requests and items.
#[test]
fn a_view_at_rest_refreshes_and_after_the_session_that_is_counted_apart() {
    let line = |t: u64| {
        format!(
            r#"{{"session":"a","t":{t},"west":-122.36,"south":47.59,"east":-122.31,"north":47.62,"zoom":14.5}}"#
        )
    };
    let origin = sim::origin_from(tilewarm::dataset::synthetic_city(7, 3000));
    let cfg = SimConfig::default();
    let run = |lines: &[String]| {
        let sessions = trace::parse(lines.join("\n").as_bytes()).unwrap();
        let m = sim::run_policy(Policy::Lru, &sessions, &origin, &cfg);
        check_consistent(&m);
        m
    };

    // One view: one request fetches it; the 10 minutes after it hold its items' expiry.
    let once = run(&[line(0)]);
    assert_eq!(
        (once.requests, once.foreground_requests),
        (1, 1),
        "{once:?}"
    );
    assert!(once.items_fetched > 0, "{once:?}");
    assert!(
        once.idle_requests >= 1 && once.idle_foreground_requests == once.idle_requests,
        "{once:?}"
    );
    assert_eq!(once.idle_items_fetched, once.items_fetched, "{once:?}");

    // The same view shown again 400 s later, the items having expired at rest in between:
    // the refresh at 300 s is the session's, and the view is ready when shown again.
    let twice = run(&[line(0), line(400_000)]);
    assert_eq!(twice.requests, 2, "{twice:?}");
    assert_eq!(twice.items_fetched, 2 * once.items_fetched, "{twice:?}");
    assert_eq!(twice.hits, 1, "{twice:?}");
    assert!(twice.idle_requests >= 1, "{twice:?}");
}

#[test]
fn a_view_too_wide_to_fetch_is_counted_and_not_scored() {
    // The second view covers about 5 x 4 degrees at zoom 14.5: far more than the 1,024
    // data tiles a client fetches for. It was counted as an error and left out of every
    // count the table shows.
    let text = r#"{"session":"a","t":0,"west":-122.36,"south":47.59,"east":-122.31,"north":47.62,"zoom":14.5}
{"session":"a","t":1000,"west":-125,"south":45,"east":-120,"north":49,"zoom":14.5}
{"session":"a","t":2000,"west":-122.36,"south":47.59,"east":-122.31,"north":47.62,"zoom":14.5}
"#;
    let sessions = trace::parse(text.as_bytes()).unwrap();
    let origin = sim::origin_from(tilewarm::dataset::synthetic_city(7, 3000));
    let all: Vec<Policy> = Policy::ALL.into_iter().collect();
    for m in sim::run_all(&all, &sessions, &origin, &SimConfig::default()) {
        check_consistent(&m);
        assert_eq!(m.viewports_too_wide, 1, "{}", m.policy);
        assert_eq!(m.viewports, 2, "{}", m.policy);
        assert_eq!(m.viewports_empty, 0, "{}", m.policy);
    }
}

/// One view, then the view one width east 10 s later: time for everything to arrive.
fn pan_east_after_a_pause() -> Vec<trace::Session> {
    let text = r#"{"session":"a","t":0,"west":-122.36,"south":47.59,"east":-122.31,"north":47.62,"zoom":14.5}
{"session":"a","t":10000,"west":-122.31,"south":47.59,"east":-122.26,"north":47.62,"zoom":14.5}
"#;
    trace::parse(text.as_bytes()).unwrap()
}

#[test]
fn none_completes_a_view_answered_in_coarse_tiles() {
    // The batcher coalesces a view's data tiles into coarser request tiles, and the answer
    // lists those: `none` waited for each data tile by name, so with coalescing (the
    // default) its views never completed and each was counted abandoned, its time to
    // complete the whole time on screen.
    let sessions = pan_east_after_a_pause();
    let origin = sim::origin_from(tilewarm::dataset::synthetic_city(7, 3000));
    for levels in [0, 3] {
        let mut cfg = SimConfig::default();
        cfg.batch.coalesce_levels = levels;
        let m = sim::run_policy(Policy::None, &sessions, &origin, &cfg);
        check_consistent(&m);
        assert_eq!(m.viewports, 2, "coalesce {levels}");
        assert_eq!(m.abandoned, 0, "coalesce {levels}: {m:?}");
        assert!(m.ttc_p90_ms < 10_000, "coalesce {levels}: {m:?}");
    }
}

#[test]
fn prefetched_tiles_are_counted_in_data_tiles() {
    // The second view is the first one's neighbour, inside the view ring: tiles prefetched
    // around the first are then in view. Counted by request tile, a coarse one (never in
    // view itself) was all waste: 18 of 18 here.
    let sessions = pan_east_after_a_pause();
    let origin = sim::origin_from(tilewarm::dataset::synthetic_city(7, 3000));
    let cfg = SimConfig::default();
    let m = sim::run_policy(Policy::Tilewarm, &sessions, &origin, &cfg);
    check_consistent(&m);
    assert_eq!(
        m.hits, 1,
        "{m:?}: the first view misses, the second is ready"
    );
    assert!(m.prefetch_tiles > 0, "{m:?}");
    assert!(m.prefetch_wasted < m.prefetch_tiles, "{m:?}");
    // Coalesced or not, about the same data tiles come: within 4x4 blocks of each other.
    let mut fine = cfg.clone();
    fine.batch.coalesce_levels = 0;
    let f = sim::run_policy(Policy::Tilewarm, &sessions, &origin, &fine);
    assert!(m.prefetch_tiles >= f.prefetch_tiles / 2, "{m:?} {f:?}");
}
