//! The client's own surface: its error types, the one outgoing type, the one error
//! channel and the one way time passes. End-to-end behaviour is in `tests/integration.rs`.

use super::*;
use crate::batch::BatchConfig;
use crate::cache::CacheConfig;
use crate::origin::Origin;
use crate::planner::PlannerConfig;
use crate::protocol::{BatchResponse, Item};
use crate::tile::{unproject, TilePoint};

const Z: u8 = 14;

fn seattle() -> TileId {
    TileId::from_lon_lat(-122.3321, 47.6062, Z).unwrap()
}

/// Four items in each data tile of a 6 x 6 block around Seattle.
fn origin() -> Origin<String> {
    let base = seattle();
    let mut items = Vec::new();
    for dy in -3i64..3 {
        for dx in -3i64..3 {
            let t = base.offset(dx, dy).unwrap();
            for k in 0..4 {
                let f = (k as f64 + 0.5) / 4.0;
                let p = TilePoint {
                    x: t.x() as f64 + f,
                    y: t.y() as f64 + f,
                };
                let (lon, lat) = unproject(p, Z);
                items.push(Item {
                    id: format!("i{}", items.len()),
                    lon,
                    lat,
                    class: "active".into(),
                    access: Access::Public,
                    ttl: None,
                    data: "{}".to_string(),
                });
            }
        }
    }
    Origin::new(items).unwrap()
}

/// A viewport of `w` x `w` data tiles centred on Seattle's tile.
fn view(w: f64) -> Viewport {
    view_east(w, 0)
}

fn client(config: ClientConfig) -> Client<String> {
    Client::new(config).unwrap()
}

/// A planner that prefetches nothing: no ring, no neighbouring views, no look-ahead.
fn no_prefetch() -> PlannerConfig {
    PlannerConfig {
        ring: 0,
        view_ring: 0.0,
        lookahead_ms: 0,
        ..PlannerConfig::default()
    }
}

fn events(c: &mut Client<String>) -> Vec<Event> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

/// Answers every queued request from `o` at `now`.
fn answer_all(c: &mut Client<String>, o: &Origin<String>, now: u64) {
    while let Some(t) = c.poll_request(now) {
        let r = o.answer(&t.request, None);
        c.on_response(t.id, r, now);
    }
}

#[test]
fn a_viewport_too_wide_is_a_state_that_fetches_nothing_and_shows_the_cache() {
    let o = origin();
    let mut c = client(ClientConfig {
        planner: PlannerConfig {
            max_visible_tiles: 9,
            ..no_prefetch()
        },
        // Complete blocks only, so the view's partial blocks bring no tiles beyond it.
        batch: BatchConfig {
            coalesce_min_share: 100,
            ..BatchConfig::default()
        },
        ..ClientConfig::default()
    });
    // A 3 x 3 view within the limit loads its 9 tiles (36 items).
    let out = c.set_viewport(view(1.5), 0, |_, _| {});
    assert!(out.too_wide.is_none());
    answer_all(&mut c, &o, 0);
    assert!(c.is_complete());
    // A 5 x 5 view is too wide: no error, nothing queued, the cached items in it shown.
    let mut shown = 0;
    let out = c.set_viewport(view(5.0), 1, |_, _| shown += 1);
    let limit = ViewTooLarge {
        max: 9,
        tile_zoom: 14,
    };
    assert_eq!(out.too_wide, Some(limit));
    assert_eq!(
        limit.to_string(),
        "viewport covers more than max_visible_tiles (9) data tiles at zoom 14: zoom in, or \
         raise min_zoom so nothing is fetched at this zoom"
    );
    assert_eq!((shown, out.items), (36, 36), "the cached items in view");
    assert!(!out.complete && out.missing.is_empty() && out.visible == 0);
    assert!(c.poll_request(1).is_none(), "nothing queued");
    assert!(c.is_too_wide() && !c.is_complete());
    // Reading it again gives the same; invalidating refetches nothing.
    let mut again = 0;
    c.view_items(2, |_, _| again += 1);
    assert_eq!(again, 36);
    c.invalidate(Invalidate::All, 2);
    assert!(c.poll_request(2).is_none(), "still nothing queued");
    assert_eq!(c.stats().viewports, 2);
    // At rest, it wakes when the items it shows expire (none are left after the
    // invalidation, so reload some first); read again, they are gone, nothing is fetched.
    c.set_viewport(view(1.5), 3, |_, _| {});
    answer_all(&mut c, &o, 3);
    c.set_viewport(view(5.0), 4, |_, _| {});
    events(&mut c);
    assert_eq!(c.next_wakeup(4), Some(300_003), "the shown items' expiry");
    c.handle_timeout(300_003);
    assert_eq!(events(&mut c), [Event::Updated]);
    assert!(c.poll_request(300_003).is_none());
    assert_eq!(c.view_items(300_003, |_, _| {}).items, 0);
    assert_eq!(c.next_wakeup(300_003), None);
    // A view within the limit plans as usual again.
    let out = c.set_viewport(view(1.0), 300_004, |_, _| {});
    assert!(out.too_wide.is_none() && !c.is_too_wide());
    assert!(c.poll_request(300_004).is_some());
}

#[test]
fn a_viewport_that_turns_too_wide_cancels_prefetch_and_never_completes() {
    let o = origin();
    let mut c = client(ClientConfig {
        planner: PlannerConfig {
            max_visible_tiles: 4,
            ..PlannerConfig::default()
        },
        ..ClientConfig::default()
    });
    c.set_viewport(view(1.0), 0, |_, _| {});
    let fg = c.poll_request(0).unwrap();
    assert_eq!(fg.kind, Kind::Foreground);
    let pf = c.poll_request(0).unwrap();
    assert_eq!(pf.kind, Kind::Prefetch);
    c.set_viewport(view(3.0), 1, |_, _| {});
    let cancelled: Vec<_> = std::iter::from_fn(|| c.poll_cancel()).collect();
    assert!(cancelled.contains(&pf.id), "{cancelled:?}");
    assert!(
        !cancelled.contains(&fg.id),
        "foreground work already out is kept"
    );
    // The foreground answer lands in the cache and in the view, but completes nothing.
    let r = o.answer(&fg.request, None);
    c.on_response(fg.id, r, 2);
    assert_eq!(events(&mut c), [Event::Updated]);
    let mut n = 0;
    c.view_items(2, |_, _| n += 1);
    assert_eq!(n, 4);
    assert!(!c.is_complete());
}

/// A round that found every tile fresh vouches for them only at the cache generation it
/// saw: after an invalidation, a read classifies the tile again and finds it missing.
#[test]
fn tiles_known_fresh_are_forgotten_when_the_cache_changes() {
    let o = origin();
    let mut c = client(ClientConfig {
        planner: no_prefetch(),
        ..ClientConfig::default()
    });
    c.set_viewport(view(1.0), 0, |_, _| {});
    answer_all(&mut c, &o, 0);
    // Planned again after the answers: every tile it asks about is fresh.
    let out = c.set_viewport(view(0.9), 1, |_, _| {});
    assert!(out.complete && out.missing.is_empty());
    c.invalidate(Invalidate::Tiles(&[seattle()]), 2);
    let out = c.view_items(2, |_, _| {});
    assert_eq!(out.missing, [seattle()]);
    assert!(!out.complete);
}

#[test]
fn a_bad_configuration_names_what_disagrees() {
    let mut config = ClientConfig::default();
    config.planner.tile_zoom = 13;
    let e = Client::<String>::new(config).err().unwrap();
    assert_eq!(
        e,
        ClientConfigError::ZoomMismatch {
            cache: 14,
            planner: 13
        }
    );
}

#[test]
fn every_request_goes_out_as_a_transmit_at_the_callers_tier() {
    let mut c = client(ClientConfig::default().with_tile_zoom(Z));
    c.set_access(Access::Verified, 0);
    c.set_viewport(view(1.0), 0, |_, _| {});
    let t: Transmit = c.poll_request(0).unwrap();
    assert_eq!(t.kind, Kind::Foreground);
    assert_eq!(t.request.access, Access::Verified);
    assert_eq!(t.request.tiles, vec![seattle()]);
    assert_eq!((t.attempt, t.timeout_ms), (0, 3000));
    assert!(t.request.to_json().contains(r#""access":"verified""#));
}

#[test]
fn an_invalid_answer_is_one_error_event_and_is_retried() {
    let o = origin();
    let mut c = client(ClientConfig::default());
    c.set_viewport(view(1.0), 0, |_, _| {});
    let t = c.poll_request(0).unwrap();
    let mut bad = o.answer(&t.request, None);
    bad.items[0].lon = 500.0;
    c.on_response(t.id, bad, 10);
    let ev = events(&mut c);
    assert_eq!(ev.len(), 1, "{ev:?}");
    let Event::Error(e) = &ev[0] else {
        panic!("{ev:?}")
    };
    assert!(e.will_retry && e.request == t.id, "{e:?}");
    assert!(
        matches!(&e.failure, Failure::Invalid(m) if m.contains("lon must be in -180..=180")),
        "{e:?}"
    );
    assert!(c.cache().is_empty(), "nothing from it is cached");
    assert_eq!(c.stats().errors, 1);
    // The retry, answered well, completes the view.
    let at = c.next_wakeup(10).unwrap();
    c.handle_timeout(at);
    let t = c.poll_request(at).unwrap();
    assert_eq!(t.attempt, 1);
    let good = o.answer(&t.request, None);
    c.on_response(t.id, good, at);
    assert_eq!(events(&mut c), [Event::Updated, Event::Complete]);
    assert!(c.is_complete());
}

#[test]
fn handle_timeout_fails_overdue_requests_and_names_them_for_abort() {
    let o = origin();
    let mut config = ClientConfig::default();
    config.batch.timeout_ms = 100;
    let mut c = client(config);
    c.set_viewport(view(1.0), 0, |_, _| {});
    let t = c.poll_request(0).unwrap();
    assert_eq!(c.next_wakeup(0), Some(100));
    c.handle_timeout(99);
    assert!(c.poll_cancel().is_none() && events(&mut c).is_empty());
    c.handle_timeout(100);
    assert_eq!(c.poll_cancel(), Some(t.id));
    let ev = events(&mut c);
    assert!(
        matches!(&ev[..], [Event::Error(e)] if e.failure == Failure::Timeout && e.will_retry),
        "{ev:?}"
    );
    // Its late answer is ignored.
    c.on_response(t.id, o.answer(&t.request, None), 150);
    assert!(c.cache().is_empty() && events(&mut c).is_empty());
}

/// An answer's lists are for the tiles asked for: a list of another tile (a server that
/// answers more than it was asked, or a hostile one) is left out; the rest is taken.
#[test]
fn lists_of_tiles_nobody_asked_for_are_not_taken() {
    let o = origin();
    let mut c = client(ClientConfig {
        planner: no_prefetch(),
        ..ClientConfig::default().with_tile_zoom(Z)
    });
    c.set_viewport(view(0.5), 0, |_, _| {});
    let t = c.poll_request(0).unwrap();
    let here = seattle();
    assert_eq!(t.request.tiles, [here]);
    let far = here.offset(2, 2).unwrap();
    let mut answer = o.answer(&t.request, None);
    let extra = o.answer(
        &crate::protocol::BatchRequest {
            tiles: vec![far],
            ..t.request.clone()
        },
        None,
    );
    answer.tiles.extend(extra.tiles);
    answer.items.extend(extra.items);
    c.on_response(t.id, answer, 10);
    assert_eq!(c.tile_state(here, 10), TileState::Loaded);
    assert_eq!(c.tile_state(far, 10), TileState::Missing);
}

/// A tile a host waits for ([`Client::load_tile`]) that is in an in-flight prefetch stays
/// in flight when the view moves away: the request is not cancelled under it (it was not
/// queued again, being in flight), so the wait is not left without a request.
#[test]
fn a_tile_a_host_waits_for_keeps_its_prefetch_request_when_the_view_moves() {
    let o = origin();
    let mut c = client(ClientConfig::default().with_tile_zoom(Z));
    c.set_viewport(view(1.0), 0, |_, _| {});
    let mut prefetch = Vec::new();
    while let Some(t) = c.poll_request(0) {
        if t.kind == Kind::Foreground {
            let r = o.answer(&t.request, None);
            c.on_response(t.id, r, 10);
        } else {
            prefetch.push(t);
        }
    }
    let here = seattle();
    let waited = prefetch
        .iter()
        .flat_map(|t| t.request.tiles.iter())
        .flat_map(|t| t.descendants(Z).unwrap_or_default())
        .find(|&t| t != here && c.tile_state(t, 10) == TileState::InFlight)
        .expect("a data tile in a prefetch request");
    assert_eq!(c.load_tile(waited, true, 10, |_, _| {}), Ok(false));
    // Far away: the new view's plan wants none of the old neighbourhood.
    let far = {
        let b = view(1.0).bbox;
        Viewport::new(b.west + 1.0, b.south, b.east + 1.0, b.north, 14.5).unwrap()
    };
    c.set_viewport(far, 20, |_, _| {});
    assert_eq!(c.tile_state(waited, 20), TileState::InFlight);
}

#[test]
fn tile_state_says_loaded_prefetched_in_flight_or_missing() {
    let o = origin();
    let mut c = client(ClientConfig::default());
    c.set_viewport(view(1.0), 0, |_, _| {});
    let here = seattle();
    assert_eq!(c.tile_state(here, 0), TileState::Missing);
    let mut sent = Vec::new();
    while let Some(t) = c.poll_request(0) {
        sent.push(t);
    }
    assert_eq!(c.tile_state(here, 0), TileState::InFlight);
    for t in sent {
        let r = o.answer(&t.request, None);
        c.on_response(t.id, r, 10);
    }
    assert_eq!(c.tile_state(here, 10), TileState::Loaded);
    let ahead = here.offset(1, 0).unwrap();
    assert_eq!(c.tile_state(ahead, 10), TileState::Prefetched);
}

#[test]
fn the_cache_follows_a_lower_tier_the_server_reports_and_no_higher_one() {
    let o = origin();
    let mut c = client(ClientConfig::default().with_tile_zoom(Z));
    c.set_access(Access::Agent, 0);
    // What agent answers showed of the items per tile is not what a lower tier sees.
    c.density.observe_items(10, 100_000);
    c.set_viewport(view(1.0), 0, |_, _| {});
    let t = c.poll_request(0).unwrap();
    assert_eq!(t.request.access, Access::Agent);
    // The server filtered for `registered`: the credential gives no more.
    let mut answer = o.answer(&t.request, None);
    answer.access = Some(Access::Registered);
    assert!(!answer.items.is_empty());
    c.on_response(t.id, answer, 10);
    assert_eq!(
        (c.access(), c.verified()),
        (Access::Registered, Some(Access::Registered))
    );
    // The answer's items are a few hundred bytes each; the agent ones' 10,000 are forgotten.
    assert!(c.density.per_item() < 1000.0, "{}", c.density.per_item());
    assert!(events(&mut c).contains(&Event::Updated));
    // An answer reporting more than was asked changes nothing.
    c.set_access(Access::Public, 20);
    c.set_viewport(view(3.0), 20, |_, _| {});
    let t = c.poll_request(20).unwrap();
    let mut answer = o.answer(&t.request, None);
    answer.access = Some(Access::Agent);
    c.on_response(t.id, answer, 30);
    assert_eq!(
        (c.access(), c.verified()),
        (Access::Public, Some(Access::Registered))
    );
}

#[test]
fn a_new_credential_forgets_the_reported_tier_and_keeps_what_is_cached() {
    let o = origin();
    let mut c = client(ClientConfig::default().with_tile_zoom(Z));
    c.set_access(Access::Agent, 0);
    c.set_viewport(view(1.0), 0, |_, _| {});
    let t = c.poll_request(0).unwrap();
    let public = crate::protocol::BatchRequest {
        access: Access::Public,
        ..t.request.clone()
    };
    let mut answer = o.answer(&public, None);
    answer.access = Some(Access::Public);
    let public_items: Vec<String> = answer.items.iter().map(|i| i.id.clone()).collect();
    assert!(!public_items.is_empty());
    c.on_response(t.id, answer, 10);
    assert_eq!(c.verified(), Some(Access::Public));
    // A sign-in: the reported tier was the old credential's.
    c.new_credential();
    assert_eq!((c.access(), c.verified()), (Access::Public, None));
    c.set_access(Access::Agent, 20);
    for id in &public_items {
        let kept = c.cache().peek(id, Access::Public, 20);
        assert!(kept.is_some(), "{id} was dropped");
    }
    // The lists fetched at public are asked again at agent.
    let t = c
        .poll_request(20)
        .expect("the view's tiles are asked again");
    assert_eq!(t.request.access, Access::Agent);
    let mut answer = o.answer(&t.request, None);
    answer.access = Some(Access::Agent);
    c.on_response(t.id, answer, 30);
    assert_eq!((c.access(), c.verified()), (Access::Agent, None));
    // A new credential that gives less is followed down by its first answer, as before.
    c.new_credential();
    c.invalidate(Invalidate::All, 40);
    let t = c.poll_request(40).unwrap();
    let registered = crate::protocol::BatchRequest {
        access: Access::Registered,
        ..t.request.clone()
    };
    let mut answer = o.answer(&registered, None);
    answer.access = Some(Access::Registered);
    c.on_response(t.id, answer, 50);
    assert_eq!(
        (c.access(), c.verified()),
        (Access::Registered, Some(Access::Registered))
    );
}

#[test]
fn a_refused_credential_is_retried_with_backoff_and_does_not_trip_the_breaker() {
    let mut c = client(ClientConfig::default().with_tile_zoom(Z));
    c.set_viewport(view(1.0), 0, |_, _| {});
    let t = c.poll_request(0).unwrap();
    let unauthorized = Failure::Http {
        status: 401,
        retry_after_ms: None,
    };
    assert!(unauthorized.is_retryable());
    c.on_failure(t.id, unauthorized.clone(), 10);
    let ev = events(&mut c);
    assert!(
        matches!(&ev[..], [Event::Error(e)] if e.failure == unauthorized && e.will_retry),
        "{ev:?}"
    );
    assert!(!c.stats().breaker_open);
}

fn forbidden() -> Failure {
    Failure::Http {
        status: 403,
        retry_after_ms: None,
    }
}

/// Whether the cache holds an item of [`fast_path::origin`] for registered callers.
fn holds_registered(c: &Client<String>) -> bool {
    (0..36 * 4)
        .step_by(5)
        .any(|n| c.cache().contains(&format!("i{n}")))
}

/// The tiers of the items a view shows now.
fn shown_tiers(c: &mut Client<String>, now: u64) -> Vec<Access> {
    let mut tiers = Vec::new();
    c.view_items(now, |item, _| tiers.push(item.access()));
    tiers
}

#[test]
fn a_403_reporting_a_lower_tier_lowers_the_cache_and_asks_again_at_once() {
    // Every fifth item is for registered callers: the cache holds some after a first view.
    let o = fast_path::origin();
    let mut c = client(ClientConfig::default().with_tile_zoom(Z));
    c.set_access(Access::Registered, 0);
    c.set_viewport(view(1.0), 0, |_, _| {});
    answer_all(&mut c, &o, 0);
    c.set_viewport(view(3.0), 10, |_, _| {});
    assert!(shown_tiers(&mut c, 10).contains(&Access::Registered));
    events(&mut c);
    let before = c.stats();
    // The token dropped to public: the server refuses the tier asked, naming public.
    let t = c.poll_request(10).unwrap();
    assert_eq!(t.request.access, Access::Registered);
    let tiles = t.request.tiles.clone();
    c.on_reported_failure(t.id, forbidden(), Some(Access::Public), 20);
    assert_eq!(
        (c.access(), c.verified()),
        (Access::Public, Some(Access::Public))
    );
    assert!(!c.is_complete());
    assert_eq!(events(&mut c), vec![Event::Updated]);
    assert!(
        shown_tiers(&mut c, 20).iter().all(|&a| a == Access::Public),
        "nothing above the verified tier stays in the view"
    );
    assert!(!holds_registered(&c));
    // Not a backend failure: no error, no breaker, no backoff, no retry counted.
    let after = c.stats();
    assert_eq!(after.errors, before.errors);
    assert_eq!(after.batch.failures, before.batch.failures);
    assert_eq!(after.batch.retries, before.batch.retries);
    assert!(!after.breaker_open);
    // The refused work goes out again at once, at the lower tier, and the view completes.
    let again: Vec<Transmit> = std::iter::from_fn(|| c.poll_request(20)).collect();
    assert!(again
        .iter()
        .all(|t| t.request.access == Access::Public && t.attempt == 0));
    assert!(tiles.iter().all(|&t| again.iter().any(|a| a
        .request
        .tiles
        .iter()
        .any(|r| r.contains(t)))));
    for t in again {
        c.on_response(t.id, o.answer(&t.request, None), 30);
    }
    answer_all(&mut c, &o, 30);
    assert!(c.is_complete());
    assert!(events(&mut c).contains(&Event::Complete));
}

/// Every request in flight when the token dropped is refused alike: the first 403 lowers
/// the tier, the others were sent at the tier just left, and each is asked again at the
/// lower one, with no error, failure or given-up load for any of them.
#[test]
fn the_other_requests_refused_with_the_first_403_are_asked_again_without_errors() {
    let o = fast_path::origin();
    let mut c = client(ClientConfig {
        batch: BatchConfig {
            max_tiles: 2,
            ..BatchConfig::default()
        },
        ..ClientConfig::default().with_tile_zoom(Z)
    });
    c.set_access(Access::Registered, 0);
    c.set_viewport(view(1.0), 0, |_, _| {});
    let sent: Vec<Transmit> = std::iter::from_fn(|| c.poll_request(0)).collect();
    assert!(sent.len() >= 2, "{} requests", sent.len());
    for t in &sent {
        assert_eq!(t.request.access, Access::Registered);
        c.on_reported_failure(t.id, forbidden(), Some(Access::Public), 10);
    }
    assert_eq!(
        (c.access(), c.verified()),
        (Access::Public, Some(Access::Public))
    );
    let s = c.stats();
    assert_eq!((s.errors, s.batch.failures, s.batch.retries), (0, 0, 0));
    assert!(events(&mut c).iter().all(|e| !matches!(e, Event::Error(_))));
    // Every refused tile is asked again at public, and the view completes.
    let again: Vec<Transmit> = std::iter::from_fn(|| c.poll_request(10)).collect();
    assert!(again.iter().all(|t| t.request.access == Access::Public));
    for t in sent.iter().flat_map(|t| t.request.tiles.iter()) {
        assert!(
            again.iter().any(|a| a.request.tiles.contains(t)),
            "{t} not asked again"
        );
    }
    for t in again {
        c.on_response(t.id, o.answer(&t.request, None), 20);
    }
    answer_all(&mut c, &o, 20);
    assert!(c.is_complete());
}

/// An answer to a `get` sent before a tier change is dropped (its items may be above the
/// new tier) and its ids are asked again at the new tier: said so to the shell
/// ([`Answered::AskedAgain`]), which then leaves the get waiting for that answer instead of
/// ending it with nothing. A public item the page asked for is found.
#[test]
fn a_get_answered_at_a_tier_left_since_is_asked_again_at_the_new_one() {
    let o = fast_path::origin();
    let mut c = client(ClientConfig::default().with_tile_zoom(Z));
    c.set_access(Access::Registered, 0);
    // i1 is public (every fifth item, i0 among them, is for registered callers).
    assert!(c.get("i1", 0).is_none());
    let t = c.poll_request(0).unwrap();
    assert_eq!(
        (t.request.ids.clone(), t.request.access),
        (vec!["i1".to_string()], Access::Registered)
    );
    c.set_access(Access::Public, 5);
    let answer = o.answer(&t.request, None);
    assert_eq!(c.on_response(t.id, answer, 10), Answered::AskedAgain);
    assert!(c.cache().peek("i1", Access::Public, 10).is_none());
    assert_eq!(c.stats().discarded_responses, 1);
    let again = c.poll_request(10).unwrap();
    assert_eq!(
        (again.request.ids.clone(), again.request.access),
        (vec!["i1".to_string()], Access::Public)
    );
    assert_eq!(
        c.on_response(again.id, o.answer(&again.request, None), 20),
        Answered::Taken
    );
    assert!(c.cache().peek("i1", Access::Public, 20).is_some());
    // A second answer to the first request changes nothing.
    assert_eq!(
        c.on_response(t.id, o.answer(&t.request, None), 30),
        Answered::Ignored
    );
}

/// An answer sent before an invalidation that reached the page while it was out (a change
/// from `tilewarm/live`) may hold what the change dropped: cached, it would be served for a
/// full TTL and fill the tile the change emptied. It is dropped and its work asked again;
/// an invalidation of something else lets it in.
#[test]
fn an_answer_sent_before_an_invalidation_that_covers_it_is_asked_again() {
    let o = origin();
    for (covering, expected) in [(true, Answered::AskedAgain), (false, Answered::Taken)] {
        let mut c = client(ClientConfig::default().with_tile_zoom(Z));
        c.set_viewport(view(1.0), 0, |_, _| {});
        let t = c.poll_request(0).unwrap();
        let tile = t.request.tiles[0];
        let answer = o.answer(&t.request, None); // read before the change
        let changed = if covering {
            tile
        } else {
            tile.offset(500, 0).unwrap()
        };
        c.invalidate(Invalidate::Tiles(&[changed]), 5);
        assert_eq!(c.on_response(t.id, answer, 10), expected, "{changed}");
        if !covering {
            assert_eq!(c.tile_state(tile, 10), TileState::Loaded);
            continue;
        }
        assert_ne!(c.tile_state(tile, 10), TileState::Loaded);
        let again = c.poll_request(10).expect("the tile is asked again");
        assert!(again.request.tiles.contains(&tile));
        assert_eq!(
            c.on_response(again.id, o.answer(&again.request, None), 20),
            Answered::Taken
        );
        answer_all(&mut c, &o, 20);
        assert!(c.is_complete());
        assert_eq!(c.stats().errors, 0);
    }
}

/// Changes that keep coming faster than a round trip (a feed flooding unrelated ids past
/// what is kept, or invalidating the view's class every time) do not drop every answer for
/// ever: work is asked again once, and the answer to that is taken.
#[test]
fn invalidations_faster_than_a_round_trip_ask_an_answer_again_once_only() {
    let o = origin();
    for flood in [
        "unrelated ids past what is kept",
        "the view's class each time",
    ] {
        let mut c = client(ClientConfig::default().with_tile_zoom(Z));
        c.set_viewport(view(1.0), 0, |_, _| {});
        let mut outcomes = Vec::new();
        for round in 0..6u64 {
            let Some(t) = c.poll_request(round * 10) else {
                break;
            };
            let answer = o.answer(&t.request, None);
            let class = answer.items[0].class.clone();
            if flood.starts_with("unrelated") {
                for i in 0..=MAX_OVERTAKING {
                    c.invalidate(
                        Invalidate::Ids(&[format!("far-{round}-{i}").as_str()]),
                        round * 10 + 5,
                    );
                }
            } else {
                c.invalidate(Invalidate::Class(&class), round * 10 + 5);
            }
            outcomes.push(c.on_response(t.id, answer, round * 10 + 9));
        }
        assert_eq!(
            outcomes[..2],
            [Answered::AskedAgain, Answered::Taken],
            "{flood}: {outcomes:?}"
        );
    }
}

/// An id no item can have (too long, a control character) is never queued: sent, the
/// server would refuse the whole request, with the view's tiles that went in it.
#[test]
fn an_id_the_protocol_refuses_is_never_asked_for() {
    let mut c = client(ClientConfig::default().with_tile_zoom(Z));
    let long = "x".repeat(c.limits().max_id_len + 1);
    for bad in [long.as_str(), "a\u{7}b", ""] {
        assert!(c.check_id(bad).is_err(), "{bad:?}");
        assert!(c.get(bad, 0).is_none());
    }
    c.request_ids([long.as_str(), "ok"], 0);
    assert!(c.check_id("h1").is_ok());
    c.set_viewport(view(1.0), 0, |_, _| {});
    let sent: Vec<Transmit> = std::iter::from_fn(|| c.poll_request(0)).collect();
    assert!(!sent.is_empty());
    let ids: Vec<&String> = sent.iter().flat_map(|t| &t.request.ids).collect();
    assert_eq!(ids, ["ok"], "only the valid id goes out");
    for t in &sent {
        crate::protocol::decode_request(t.request.to_json().as_bytes(), c.limits())
            .expect("the server would take the request");
    }
}

/// A map at rest (no viewport calls) hears of time passing over its view: the client wakes
/// up when the shown items turn stale and when they expire past the stale-while-revalidate
/// window, not in between; each time the view is refreshed (`Updated`, a refresh while it
/// is shown stale, a foreground request and an incomplete view once it cannot be shown).
/// Before, nothing woke it: the items stayed drawn, flagged fresh, for ever.
/// A change of the view that falls due while an answer is on its way is acted on by the
/// answer (the timer then no longer sees it): the stale tile is refreshed and the page told.
#[test]
fn a_view_change_due_when_an_answer_lands_is_not_lost() {
    let ttl = 300_000;
    let o = origin();
    let mut c = client(ClientConfig {
        planner: no_prefetch(),
        ..ClientConfig::default()
    });
    c.set_viewport(view(0.8), 0, |_, _| {});
    answer_all(&mut c, &o, 0);
    events(&mut c);
    assert_eq!(c.next_wakeup(10), Some(ttl));
    // Before the timer runs, a get() of an id elsewhere is answered.
    c.request_ids(["far"], ttl - 10);
    let t = c.poll_request(ttl - 10).expect("the get's request");
    let r = o.answer(&t.request, None);
    c.on_response(t.id, r, ttl + 1);
    c.handle_timeout(ttl + 2);
    assert!(
        events(&mut c).contains(&Event::Updated),
        "the page hears of the stale view"
    );
    let refresh = c
        .poll_request(ttl + 2)
        .expect("a refresh of the stale tile");
    assert_eq!(refresh.request.tiles, [seattle()]);
}

#[test]
fn a_view_at_rest_wakes_when_its_items_turn_stale_and_expire() {
    let (ttl, swr) = (300_000, 60_000);
    let o = origin();
    let mut c = client(ClientConfig {
        planner: no_prefetch(),
        cache: CacheConfig {
            stale_while_revalidate_ms: swr,
            ..CacheConfig::default()
        },
        ..ClientConfig::default()
    });
    c.set_viewport(view(0.8), 0, |_, _| {});
    answer_all(&mut c, &o, 0);
    events(&mut c);
    assert!(c.is_complete());
    assert_eq!(c.next_wakeup(10), Some(ttl), "when the items turn stale");
    c.handle_timeout(ttl - 1);
    assert!(events(&mut c).is_empty() && c.poll_request(ttl - 1).is_none());
    // A call after the change is due and before the timer ran: still due, not dropped.
    let due = ttl + 5;
    assert_eq!(c.next_wakeup(due), Some(due));
    // Stale: shown, flagged stale, refreshed in the background.
    c.handle_timeout(due);
    assert_eq!(events(&mut c), [Event::Updated]);
    assert!(c.is_complete());
    let refresh = c.poll_request(due).expect("a refresh of the stale tile");
    assert_eq!(refresh.kind, Kind::Prefetch);
    assert_eq!(refresh.request.tiles, [seattle()]);
    let mut stale = 0;
    c.view_items(due, |_, s| stale += s as usize);
    assert_eq!(stale, 4, "the page reads the items flagged stale");
    // The refresh does not come: past the window the tile cannot be shown.
    assert_eq!(
        c.next_wakeup(due),
        Some(refresh.timeout_ms + due),
        "its deadline"
    );
    c.handle_timeout(due + refresh.timeout_ms);
    events(&mut c);
    while let Some(id) = c.poll_cancel() {
        assert_eq!(id, refresh.id);
    }
    let (mut wakeups, mut sent) = (Vec::new(), Vec::new());
    let mut now = due + refresh.timeout_ms;
    while let Some(at) = c.next_wakeup(now).filter(|&at| at <= ttl + swr) {
        // Retries of the refresh, which keep timing out, then the end of the window.
        now = at;
        wakeups.push(at);
        c.handle_timeout(now);
        sent.extend(std::iter::from_fn(|| c.poll_request(now)));
        while c.poll_cancel().is_some() {}
    }
    assert_eq!(wakeups.last(), Some(&(ttl + swr)), "{wakeups:?}");
    assert!(wakeups.len() < 20, "{wakeups:?}");
    assert!(events(&mut c).contains(&Event::Updated));
    assert!(!c.is_complete());
    let out = c.view_items(now, |_, _| {});
    assert_eq!(out.missing, [seattle()]);
    // The foreground asks for it; answered, the view completes and the next wake-up is its
    // items' next expiry.
    let t = sent.pop().expect("a request at the end of the window");
    assert_eq!(
        (t.kind, &t.request.tiles[..]),
        (Kind::Foreground, &[seattle()][..])
    );
    assert!(sent.iter().all(|t| t.request.tiles == [seattle()]));
    assert_eq!(c.tile_state(seattle(), now), TileState::InFlight);
    c.on_response(t.id, o.answer(&t.request, None), now);
    assert!(events(&mut c).contains(&Event::Complete));
    assert_eq!(c.next_wakeup(now), Some(now + ttl));
}

/// An idle view whose refreshes are answered wakes once per expiry of its items: in an
/// hour of 300 s items, twelve wake-ups, each with one refresh.
#[test]
fn an_idle_view_wakes_once_per_expiry_of_its_items() {
    let o = origin();
    let mut c = client(ClientConfig {
        planner: no_prefetch(),
        cache: CacheConfig {
            stale_while_revalidate_ms: 60_000,
            ..CacheConfig::default()
        },
        ..ClientConfig::default()
    });
    c.set_viewport(view(0.8), 0, |_, _| {});
    answer_all(&mut c, &o, 0);
    let (mut now, mut wakeups, mut requests) = (0, 0, 0);
    while let Some(at) = c.next_wakeup(now).filter(|&at| at <= 3_600_000) {
        now = at;
        wakeups += 1;
        c.handle_timeout(now);
        while let Some(t) = c.poll_request(now) {
            requests += 1;
            c.on_response(t.id, o.answer(&t.request, None), now);
        }
        if events(&mut c).contains(&Event::Updated) {
            c.view_items(now, |_, _| {});
        }
        assert!(c.is_complete());
    }
    assert_eq!((wakeups, requests), (12, 12));
}

/// A view of `w` x `w` data tiles centred `dx` data tiles east of Seattle's tile.
fn view_east(w: f64, dx: i64) -> Viewport {
    fast_path::moved(dx as f64, 0.0, w, 14.5)
}

/// A `get` of an id out in a visible tile's refresh by id (its item was invalidated) is
/// not queued on its own: it waits for that request. When the request is retried (a 503)
/// or asked again (an overtaken answer), the id stays asked for directly, so a pan, which
/// replaces the tile's work, does not leave the get waiting for ever; and it goes out once
/// per request, not once for the tile and once for the get.
#[test]
fn a_get_of_an_id_in_a_tiles_retried_refresh_is_asked_again_after_a_pan() {
    let o = origin();
    // i84 is the first item of Seattle's tile.
    for (how, pan) in [
        ("retried", true),
        ("retried", false),
        ("asked again", true),
        ("asked again", false),
    ] {
        let mut c = client(ClientConfig {
            planner: no_prefetch(),
            ..ClientConfig::default()
        });
        c.set_viewport(view(0.8), 0, |_, _| {});
        answer_all(&mut c, &o, 0);
        assert!(c.is_complete());
        c.invalidate(Invalidate::Ids(&["i84"]), 10);
        let t = c.poll_request(10).expect("the tile's refresh by id");
        assert_eq!(t.request.ids, ["i84"], "{how}");
        assert!(t.request.tiles.is_empty(), "{how}");
        assert!(c.get("i84", 11).is_none(), "{how}: a miss");
        assert!(
            c.poll_request(11).is_none(),
            "{how}: in flight, not asked twice"
        );
        if how == "retried" {
            let unavailable = Failure::Http {
                status: 503,
                retry_after_ms: None,
            };
            events(&mut c);
            c.on_failure(t.id, unavailable, 20);
            assert!(
                matches!(&events(&mut c)[..], [Event::Error(e)] if e.will_retry),
                "{how}"
            );
        } else {
            // An invalidation of i84 made while the request was out covers its answer.
            c.invalidate(Invalidate::Ids(&["i84"]), 15);
            let answer = o.answer(&t.request, None);
            assert_eq!(c.on_response(t.id, answer, 20), Answered::AskedAgain);
        }
        if pan {
            c.set_viewport(view_east(0.8, 40), 30, |_, _| {});
        }
        let mut asked = Vec::new();
        let mut now = 30;
        while now < 60_000 && c.cache().peek("i84", Access::Public, now).is_none() {
            while let Some(t) = c.poll_request(now) {
                asked.push(t.request.ids.iter().filter(|i| *i == "i84").count());
                c.on_response(t.id, o.answer(&t.request, None), now);
            }
            c.handle_timeout(now);
            now += 100;
        }
        assert!(
            c.cache().peek("i84", Access::Public, now).is_some(),
            "{how}, pan {pan}: the get of i84 is answered"
        );
        assert!(
            asked.iter().all(|&n| n <= 1),
            "{how}, pan {pan}: once per request: {asked:?}"
        );
    }
}

#[test]
fn a_get_refused_by_a_403_reporting_a_lower_tier_is_asked_again() {
    let o = fast_path::origin();
    let mut c = client(ClientConfig::default().with_tile_zoom(Z));
    c.set_access(Access::Registered, 0);
    assert!(c.get("i0", 0).is_none());
    let t = c.poll_request(0).unwrap();
    assert_eq!(t.request.ids, vec!["i0".to_string()]);
    c.on_reported_failure(t.id, forbidden(), Some(Access::Public), 10);
    let again = c.poll_request(10).unwrap();
    assert_eq!(
        (again.request.access, &again.request.ids),
        (Access::Public, &vec!["i0".to_string()])
    );
    // i0 is for registered callers: at public, it is missing, and nothing keeps it.
    c.on_response(again.id, o.answer(&again.request, None), 20);
    assert!(c.get_cached("i0", 20).is_none());
}

#[test]
fn a_403_lowers_the_tier_only_when_it_reports_a_lower_one_for_the_current_tier() {
    let other = |status| Failure::Http {
        status,
        retry_after_ms: None,
    };
    // (failure, reported tier): each stays the failure it is, at the tier asked.
    let cases = [
        (forbidden(), None),
        (forbidden(), Some(Access::Registered)),
        (forbidden(), Some(Access::Agent)),
        (other(401), Some(Access::Public)),
        (other(500), Some(Access::Public)),
        (Failure::Timeout, Some(Access::Public)),
    ];
    for (failure, reported) in cases {
        let mut c = client(ClientConfig::default().with_tile_zoom(Z));
        c.set_access(Access::Registered, 0);
        c.set_viewport(view(1.0), 0, |_, _| {});
        let t = c.poll_request(0).unwrap();
        c.on_reported_failure(t.id, failure.clone(), reported, 10);
        assert_eq!(
            (c.access(), c.verified()),
            (Access::Registered, None),
            "{failure:?} {reported:?}"
        );
        let ev = events(&mut c);
        assert!(
            matches!(&ev[..], [Event::Error(e)] if e.failure == failure),
            "{failure:?} {reported:?}: {ev:?}"
        );
        assert_eq!(c.stats().batch.failures, 1);
    }
    // A request sent before a tier change down: its 403 says nothing of the newer choice
    // (the work is asked again at it, with no error).
    let mut c = client(ClientConfig::default().with_tile_zoom(Z));
    c.set_access(Access::Agent, 0);
    c.set_viewport(view(1.0), 0, |_, _| {});
    let t = c.poll_request(0).unwrap();
    c.set_access(Access::Registered, 5);
    c.on_reported_failure(t.id, forbidden(), Some(Access::Public), 10);
    assert_eq!((c.access(), c.verified()), (Access::Registered, None));
    assert_eq!(c.stats().errors, 0);
    assert_eq!(
        c.poll_request(10).unwrap().request.access,
        Access::Registered
    );
    // A request no longer tracked (cancelled, answered): nothing.
    let mut c = client(ClientConfig::default().with_tile_zoom(Z));
    c.set_access(Access::Registered, 0);
    c.set_viewport(view(1.0), 0, |_, _| {});
    let t = c.poll_request(0).unwrap();
    c.on_failure(t.id, Failure::Aborted, 5);
    c.on_reported_failure(t.id, forbidden(), Some(Access::Public), 10);
    assert_eq!((c.access(), c.verified()), (Access::Registered, None));
}

/// Over random tiers sent, changed to and reported, and statuses: a failure lowers the
/// tier exactly when it is a 403 reporting a tier below the current one for a request sent
/// at it, and the cache never holds an item above the tier after it.
mod reported_failure {
    use super::*;
    use proptest::prelude::*;

    fn tier() -> impl Strategy<Value = Access> {
        prop::sample::select(Access::ALL.to_vec())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn lowers_exactly_when_a_403_reports_less_than_the_tier_it_was_sent_at(
            sent in tier(),
            now_at in prop::option::of(tier()),
            reported in prop::option::of(tier()),
            status in prop::sample::select(vec![401u16, 403, 404, 500]),
        ) {
            let o = fast_path::origin();
            let mut c = client(ClientConfig::default().with_tile_zoom(Z));
            c.set_access(sent, 0);
            c.set_viewport(view(1.0), 0, |_, _| {});
            answer_all(&mut c, &o, 0);
            c.set_viewport(view(3.0), 10, |_, _| {});
            let t = c.poll_request(10).unwrap();
            if let Some(a) = now_at {
                c.set_access(a, 15);
            }
            let current = c.access();
            let failure = Failure::Http { status, retry_after_ms: None };
            c.on_reported_failure(t.id, failure, reported, 20);
            // A 403 below the tier sent at, for a request sent at the current tier or one
            // left since for a lower one, is asked again at the current tier; only one sent
            // at the current tier lowers it.
            let again = status == 403 && reported.is_some_and(|r| r < sent) && sent >= current;
            let lowers = again && sent == current;
            let expected = if lowers { reported.unwrap() } else { current };
            prop_assert_eq!(c.access(), expected);
            prop_assert_eq!(c.verified(), lowers.then_some(expected));
            prop_assert!(expected >= Access::Registered || !holds_registered(&c));
            prop_assert_eq!(c.stats().batch.failures, u64::from(!again));
            prop_assert_eq!(c.stats().errors, u64::from(!again));
            if again {
                let again = c.poll_request(20).unwrap();
                prop_assert_eq!(again.request.access, expected);
            }
        }
    }
}

/// The fast path of [`Client::update_viewport`] against a full read: two clients are
/// driven alike, one through `update_viewport` (keeping the last view it was given, as
/// `cache.js` does), the other through `set_viewport`, which reads the view in full every
/// time, classifying every tile again (`full_reads`). Over random sequences of small moves, zooms, too-wide views, answers, time passing
/// (items of several TTLs turning stale and expiring), invalidations and tier changes,
/// both must show the same items in the same order with the same stale flags, the same
/// completeness and missing tiles, send the same requests and count the same stats.
mod fast_path {
    use super::*;
    use proptest::prelude::*;

    /// Four items in each tile of a 6 x 6 block; TTLs from 20 s to 320 s, every fifth
    /// item for registered callers only.
    pub(super) fn origin() -> Origin<String> {
        let base = seattle();
        let mut items = Vec::new();
        for dy in -3i64..3 {
            for dx in -3i64..3 {
                let t = base.offset(dx, dy).unwrap();
                for k in 0..4 {
                    let f = (k as f64 + 0.5) / 4.0;
                    let (lon, lat) = unproject(
                        TilePoint {
                            x: t.x() as f64 + f,
                            y: t.y() as f64 + f,
                        },
                        Z,
                    );
                    let n = items.len();
                    items.push(Item {
                        id: format!("i{n}"),
                        lon,
                        lat,
                        class: "active".into(),
                        access: if n % 5 == 0 {
                            Access::Registered
                        } else {
                            Access::Public
                        },
                        ttl: Some(20 + (n as u32 * 37) % 300),
                        data: "{}".to_string(),
                    });
                }
            }
        }
        Origin::new(items).unwrap()
    }

    /// A `w` x `w` view offset by (`dx`, `dy`) data tiles from Seattle's tile.
    pub(super) fn moved(dx: f64, dy: f64, w: f64, zoom: f64) -> Viewport {
        let base = seattle();
        let (x, y) = (base.x() as f64 + 0.5 + dx, base.y() as f64 + 0.5 + dy);
        let (west, north) = unproject(
            TilePoint {
                x: x - w / 2.0,
                y: y - w / 2.0,
            },
            Z,
        );
        let (east, south) = unproject(
            TilePoint {
                x: x + w / 2.0,
                y: y + w / 2.0,
            },
            Z,
        );
        Viewport::new(west, south, east, north, zoom).unwrap()
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// Move by eighths of a tile (x, y), a size (index), a zoom (index), ms later.
        View(i8, i8, u8, u8, u16),
        /// Answer at most this many queued requests.
        Answer(u8),
        Advance(u32),
        InvalidateIds(Vec<u8>),
        InvalidateTile(i8, i8),
        SetAccess(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (-4i8..=4, -4i8..=4, 0u8..4, 0u8..3, 0u16..40)
                .prop_map(|(x, y, w, z, dt)| Op::View(x, y, w, z, dt)),
            3 => (0u8..4).prop_map(Op::Answer),
            2 => (0u32..200_000).prop_map(Op::Advance),
            1 => proptest::collection::vec(0u8..144, 0..4).prop_map(Op::InvalidateIds),
            1 => (-3i8..3, -3i8..3).prop_map(|(x, y)| Op::InvalidateTile(x, y)),
            1 => (0u8..2).prop_map(Op::SetAccess),
        ]
    }

    type Shown = Vec<(String, bool)>;

    fn config() -> ClientConfig {
        ClientConfig {
            planner: PlannerConfig {
                max_visible_tiles: 16,
                ..PlannerConfig::default()
            },
            cache: CacheConfig {
                stale_while_revalidate_ms: 60_000,
                ..CacheConfig::default()
            },
            ..ClientConfig::default()
        }
    }

    fn same_requests(
        a: &mut Client<String>,
        b: &mut Client<String>,
        now: u64,
        limit: usize,
    ) -> Vec<Transmit> {
        let mut out = Vec::new();
        while out.len() < limit {
            match (a.poll_request(now), b.poll_request(now)) {
                (Some(x), Some(y)) => {
                    assert_eq!(x.request, y.request);
                    out.push(x);
                }
                (None, None) => break,
                (x, y) => panic!("one client sends more: {x:?} / {y:?}"),
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]
        #[test]
        fn the_fast_path_reads_what_a_full_read_reads(ops in proptest::collection::vec(op(), 1..80)) {
            let o = origin();
            let (mut a, mut b) = (client(config()), client(config()));
            b.full_reads = true;
            let mut now = 1_000u64;
            let (mut x, mut y) = (0.0f64, 0.0f64);
            let mut last: Shown = Vec::new();
            let mut reused = 0;
            for op in ops {
                match op {
                    Op::View(dx, dy, w, z, dt) => {
                        now += u64::from(dt);
                        x = (x + f64::from(dx) / 8.0).clamp(-2.0, 2.0);
                        y = (y + f64::from(dy) / 8.0).clamp(-2.0, 2.0);
                        let w = [1.0, 1.9, 2.6, 5.0][w as usize];
                        let vp = moved(x, y, w, [14.5, 14.9, 11.0][z as usize]);
                        let mut got: Shown = Vec::new();
                        let oa = a.update_viewport(vp, now, |it, s| got.push((it.id().to_string(), s)));
                        let mut want: Shown = Vec::new();
                        let ob = b.set_viewport(vp, now, |it, s| want.push((it.id().to_string(), s)));
                        prop_assert!(!ob.unchanged);
                        if oa.unchanged {
                            reused += 1;
                            prop_assert!(got.is_empty(), "the sink is not called");
                            got = last.clone();
                        }
                        prop_assert_eq!(&got, &want);
                        prop_assert_eq!(ViewOutcome { unchanged: false, ..oa }, ob);
                        last = got;
                    }
                    Op::Answer(n) => {
                        for t in same_requests(&mut a, &mut b, now, n as usize) {
                            let r = o.answer(&t.request, None);
                            a.on_response(t.id, r.clone(), now);
                            b.on_response(t.id, r, now);
                        }
                    }
                    Op::Advance(ms) => {
                        now += u64::from(ms);
                        a.handle_timeout(now);
                        b.handle_timeout(now);
                    }
                    Op::InvalidateIds(ids) => {
                        let ids: Vec<String> = ids.iter().map(|i| format!("i{i}")).collect();
                        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                        a.invalidate(Invalidate::Ids(&ids), now);
                        b.invalidate(Invalidate::Ids(&ids), now);
                    }
                    Op::InvalidateTile(dx, dy) => {
                        let t = [seattle().offset(dx.into(), dy.into()).unwrap()];
                        a.invalidate(Invalidate::Tiles(&t), now);
                        b.invalidate(Invalidate::Tiles(&t), now);
                    }
                    Op::SetAccess(t) => {
                        let t = [Access::Public, Access::Registered][t as usize];
                        a.set_access(t, now);
                        b.set_access(t, now);
                    }
                }
                prop_assert_eq!(a.stats(), b.stats());
                prop_assert_eq!(a.is_complete(), b.is_complete());
                prop_assert_eq!(a.cache.check_lists(), Ok(()));
                let (ea, eb) = (events(&mut a), events(&mut b));
                prop_assert_eq!(ea, eb);
            }
            let _ = reused;
        }
    }

    /// A pan within the same tiles is served by the fast path, and time passing an item's
    /// TTL ends it: the next view reads the item as stale.
    #[test]
    fn small_moves_reuse_the_view_until_an_item_turns_stale() {
        let o = origin();
        let mut c = client(config());
        let mut now = 1_000;
        c.update_viewport(moved(0.0, 0.0, 1.9, 14.5), now, |_, _| {});
        answer_all(&mut c, &o, now);
        let mut n = 0;
        let first = c.update_viewport(moved(0.01, 0.0, 1.9, 14.5), now + 16, |_, _| n += 1);
        assert!(
            !first.unchanged && first.complete && n > 0,
            "answers changed the cache"
        );
        let mut reused = 0;
        for i in 2..10 {
            now = 1_000 + 16 * i;
            let out = c.update_viewport(moved(0.01 * i as f64, 0.0, 1.9, 14.5), now, |_, _| n += 1);
            reused += out.unchanged as u32;
            assert_eq!(out.items, first.items);
        }
        assert_eq!(reused, 8, "nothing changed: every frame is the last view");
        // Past the TTLs (20 s to 320 s) and the 60 s window of some: a new read.
        now += 330_000;
        let out = c.update_viewport(moved(0.1, 0.0, 1.9, 14.5), now, |_, _| {});
        assert!(!out.unchanged && (out.stale || out.items != first.items));
        // `set_viewport` always calls the sink.
        let mut m = 0;
        let out = c.set_viewport(moved(0.1, 0.0, 1.9, 14.5), now + 1, |_, _| m += 1);
        assert!(!out.unchanged && m == out.items);
    }
}

/// `CacheConfig::bounds` set to the west part of the origin's block: only the data tiles
/// touching it are asked for, a view's tiles outside it are complete and empty, and a
/// coarse request tile over the extent's edge still goes out (its outside tiles count
/// towards its share). The origin has items outside too (bounds set too tight), so
/// asking for an outside tile, or showing one, would show here.
#[test]
fn tiles_outside_the_data_bounds_are_never_asked_for_and_complete_empty() {
    let o = origin();
    let base = seattle();
    // East edge in the middle of the column west of Seattle's tile.
    let (east, _) = unproject(
        TilePoint {
            x: base.x() as f64 - 0.5,
            y: 0.0,
        },
        Z,
    );
    let bounds = crate::tile::Bbox::new(-123.0, 47.0, east, 48.0).unwrap();
    let config = |levels: u8| {
        let mut c = ClientConfig {
            planner: no_prefetch(),
            batch: BatchConfig {
                coalesce_levels: levels,
                coalesce_min_share: 100,
                ..BatchConfig::default()
            },
            ..ClientConfig::default()
        };
        c.cache.bounds = bounds;
        c
    };
    let mut c = client(config(0));
    // A 3 x 3 view: columns -1, 0 and 1 around Seattle's; only column -1 is inside.
    let out = c.set_viewport(view(2.0), 0, |_, _| {});
    assert_eq!(out.visible, 9);
    let inside: Vec<TileId> = (-1..=1).map(|dy| base.offset(-1, dy).unwrap()).collect();
    let mut missing = out.missing.clone();
    missing.sort();
    assert_eq!(
        missing, inside,
        "only the tiles touching the bounds are missing"
    );
    let t = c.poll_request(0).expect("a request for the inside tiles");
    let mut asked = t.request.tiles.clone();
    asked.sort();
    assert_eq!(asked, inside);
    assert!(c.poll_request(0).is_none(), "nothing else asked for");
    c.on_response(t.id, o.answer(&t.request, None), 0);
    let mut shown = 0;
    let out = c.set_viewport(view(2.0), 1, |_, _| shown += 1);
    assert!(out.complete && out.missing.is_empty());
    assert_eq!(shown, 12, "the inside column's items, none from outside");
    let outside = base.offset(1, 0).unwrap();
    assert_eq!(c.tile_state(outside, 1), TileState::Loaded);

    // A view entirely outside is complete at once, with nothing to ask for.
    let mut c = client(config(0));
    let east_view = view(1.0).bbox;
    let shift = |lon: f64| lon + 2.0 * (east_view.east - east_view.west);
    let vp = Viewport::new(
        shift(east_view.west),
        east_view.south,
        shift(east_view.east),
        east_view.north,
        14.5,
    )
    .unwrap();
    let out = c.set_viewport(vp, 0, |_, _| {});
    assert!(out.complete && out.visible > 0 && out.items == 0);
    assert!(c.poll_request(0).is_none());

    // Coarse request tiles (2 zooms up, whole blocks only), the bounds' south-east corner
    // in Seattle's tile: of Seattle's zoom-12 block only the view's three tiles in
    // Seattle's column touch the bounds, so the block is asked for as one tile, since its
    // other tiles hold nothing. The column to the west is in a block whose other tiles are
    // inside: those go out as data tiles.
    let (east, south) = unproject(
        TilePoint {
            x: base.x() as f64 + 0.5,
            y: base.y() as f64 + 1.5,
        },
        Z,
    );
    let mut cfg = config(2);
    cfg.cache.bounds = crate::tile::Bbox::new(-123.0, south, east, 48.0).unwrap();
    let mut c = client(cfg);
    c.set_viewport(view(2.0), 0, |_, _| {});
    let t = c.poll_request(0).expect("a request");
    let block = base.ancestor(Z - 2).unwrap();
    assert_eq!(
        block
            .descendants(Z)
            .unwrap()
            .iter()
            .filter(|&&d| !c.cache.outside_bounds(d))
            .count(),
        3
    );
    let mut asked = t.request.tiles.clone();
    asked.sort();
    let mut want: Vec<TileId> = (-1..=1).map(|dy| base.offset(-1, dy).unwrap()).collect();
    want.push(block);
    want.sort();
    assert_eq!(asked, want);
}

/// `CacheConfig::bounds` at the data's own extent changes what is asked for, never what is
/// shown: over random views in and around the data, a client given the extent shows the
/// same items as one without it, is complete whenever that one is once both have their
/// answers, and never asks for a tile outside the extent.
mod bounds {
    use super::fast_path::{moved, origin};
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_adopted_extent_drops_queued_work_outside_and_completes_views_there() {
        let o = origin();
        let mut c = client(ClientConfig::default());
        // A view 20 tiles east of the block: nothing there, but nothing says so yet.
        let far = moved(20.0, 0.0, 2.0, 14.0);
        assert!(!c.set_viewport(far, 0, |_, _| {}).complete);
        c.adopt_bounds(Some(&o.extent().unwrap()), 1).unwrap();
        assert!(
            c.poll_request(1).is_none(),
            "the queued tiles lie outside: none is sent"
        );
        assert!(c.set_viewport(far, 2, |_, _| {}).complete);
        // A view across the block's edge asks only for the tiles that touch the extent.
        let edge = moved(2.5, 0.0, 3.0, 14.0);
        assert!(!c.set_viewport(edge, 3, |_, _| {}).complete);
        let mut sent = 0;
        while let Some(t) = c.poll_request(3) {
            for asked in &t.request.tiles {
                let below = asked.descendants(Z).unwrap();
                assert!(
                    below.iter().any(|&d| !c.cache.outside_bounds(d)),
                    "{asked} outside"
                );
            }
            sent += 1;
            let r = o.answer(&t.request, None);
            c.on_response(t.id, r, 3);
        }
        assert!(sent > 0);
        assert!(c.set_viewport(edge, 4, |_, _| {}).complete);
    }

    /// Each accepted answer decides the declared extent (none given back the world), and an
    /// answer the client does not take (cancelled, or for another tier) decides nothing.
    #[test]
    fn each_accepted_answer_declares_the_extent() {
        let o = origin();
        let ext = o.extent().unwrap();
        let mut config = ClientConfig {
            planner: no_prefetch(),
            ..ClientConfig::default()
        };
        config.batch.coalesce_levels = 0;
        let mut c = client(config);
        let far = moved(20.0, 0.0, 2.0, 14.0);
        // Each step: a view inside the block, its request answered declaring `declared`.
        let step = |c: &mut Client<String>, k: f64, declared: Option<&crate::tile::Bbox>| {
            let now = (k * 100.0) as u64;
            c.set_viewport(moved(k - 2.0, 0.0, 0.5, 14.0), now, |_, _| {});
            let t = c.poll_request(now).expect("a request for the view");
            let r = o.answer(&t.request, None);
            c.on_declared_response(t.id, r, declared, now);
            c.set_viewport(far, now + 1, |_, _| {}).complete
        };
        assert!(step(&mut c, 0.0, Some(&ext)), "declared: outside is empty");
        assert!(!step(&mut c, 1.0, None), "declared none: the world again");
        assert!(step(&mut c, 2.0, Some(&ext)));
        let upside_down = crate::tile::Bbox {
            south: 10.0,
            north: 0.0,
            ..crate::cache::WORLD
        };
        assert!(
            !step(&mut c, 3.0, Some(&upside_down)),
            "not an extent: none"
        );
        // A cancelled request's late answer decides nothing.
        assert!(step(&mut c, 4.0, Some(&ext)));
        c.set_viewport(moved(-3.0, 0.0, 0.5, 14.0), 500, |_, _| {});
        let t = c.poll_request(500).unwrap();
        c.set_viewport(far, 501, |_, _| {});
        while c.poll_cancel().is_some() {}
        c.handle_timeout(60_000);
        while c.poll_cancel().is_some() {}
        let r = o.answer(&t.request, None);
        c.on_declared_response(t.id, r, None, 60_001);
        assert!(
            c.set_viewport(far, 60_002, |_, _| {}).complete,
            "still the extent"
        );
    }

    #[test]
    fn the_pages_own_extent_wins_and_a_bad_one_is_refused() {
        let o = origin();
        let mut config = ClientConfig::default();
        config.cache.bounds = o.extent().unwrap();
        let mut c = client(config);
        let far = moved(20.0, 0.0, 2.0, 14.0);
        // The page's extent leaves the far view outside; the backend's world does not widen it.
        c.adopt_bounds(Some(&crate::cache::WORLD), 0).unwrap();
        assert!(c.set_viewport(far, 1, |_, _| {}).complete);
        let mut open = client(ClientConfig::default());
        let upside_down = crate::tile::Bbox {
            south: 10.0,
            north: 0.0,
            ..crate::cache::WORLD
        };
        assert!(open.adopt_bounds(Some(&upside_down), 0).is_err());
        assert!(
            !open.set_viewport(far, 1, |_, _| {}).complete,
            "nothing adopted"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn the_datas_extent_changes_requests_not_views(
            views in proptest::collection::vec((-40i16..=40, -40i16..=40, 2u8..40, 0u8..3), 1..12),
            levels in 0u8..3,
        ) {
            let o = origin();
            let bounds = o.extent().unwrap();
            // Coarse request tiles or not: a coarse answer lists tiles the view never asked
            // for, which would hide a wrong extent.
            let mut without = ClientConfig::default();
            without.batch.coalesce_levels = levels;
            without.planner.align_levels = levels;
            let mut with = without.clone();
            with.cache.bounds = bounds;
            let (mut open, mut bounded) = (client(without), client(with));
            for (k, &(dx, dy, w, z)) in views.iter().enumerate() {
                let now = k as u64 * 50;
                // Views up to 5 tiles past the block's edge, 0.25 to 5 tiles wide.
                let vp = moved(dx as f64 / 8.0, dy as f64 / 8.0, w as f64 / 8.0, 14.0 + z as f64 / 2.0);
                // What each shows at once depends on what its prefetch brought, which the
                // extent changes (no budget spent on empty tiles): checked against the view
                // once answered, below.
                let (mut at_once_a, mut at_once_b) = (Vec::new(), Vec::new());
                open.set_viewport(vp, now, |it, _| at_once_a.push(it.id().to_string()));
                bounded.set_viewport(vp, now, |it, _| at_once_b.push(it.id().to_string()));
                while let Some(t) = open.poll_request(now) {
                    let r = o.answer(&t.request, None);
                    open.on_response(t.id, r, now);
                }
                while let Some(t) = bounded.poll_request(now) {
                    for asked in &t.request.tiles {
                        let below = asked.descendants(Z).unwrap();
                        prop_assert!(
                            below.iter().any(|&d| !bounded.cache.outside_bounds(d)),
                            "{} lies outside the extent", asked
                        );
                    }
                    let r = o.answer(&t.request, None);
                    bounded.on_response(t.id, r, now);
                }
                let (mut a, mut b) = (Vec::new(), Vec::new());
                let oa = open.set_viewport(vp, now + 1, |it, _| a.push(it.id().to_string()));
                let ob = bounded.set_viewport(vp, now + 1, |it, _| b.push(it.id().to_string()));
                a.sort();
                b.sort();
                prop_assert_eq!(&a, &b, "shown once answered");
                prop_assert!(oa.complete && ob.complete);
                for id in at_once_a.iter().chain(&at_once_b) {
                    prop_assert!(a.binary_search(id).is_ok(), "{} shown but not in view", id);
                }
            }
        }
    }
}

/// A client holding at most `max_items` items, sending data tiles as they are (no
/// coarse tiles).
fn small_cache_client(max_items: usize) -> Client<String> {
    client(ClientConfig {
        cache: CacheConfig {
            max_items,
            ..CacheConfig::default()
        },
        batch: BatchConfig {
            coalesce_levels: 0,
            ..BatchConfig::default()
        },
        ..ClientConfig::default()
    })
}

/// Answers every queued request from `o`; the tiles they asked for.
fn answer_all_asked(c: &mut Client<String>, o: &Origin<String>, now: u64) -> Vec<TileId> {
    let mut asked = Vec::new();
    while let Some(t) = c.poll_request(now) {
        asked.extend(t.request.tiles.iter().copied());
        let r = o.answer(&t.request, None);
        c.on_response(t.id, r, now);
    }
    asked
}

/// The tiles of `tiles` not fresh in `c`'s cache for the public tier.
fn not_fresh(c: &Client<String>, tiles: &[TileId], now: u64) -> Vec<TileId> {
    let fresh =
        |t: &TileId| c.cache().tile_freshness(*t, Access::Public, now) == TileFreshness::Fresh;
    tiles.iter().copied().filter(|t| !fresh(t)).collect()
}

#[test]
fn prefetch_stays_within_what_the_cache_can_hold() {
    // 60 items hold 15 of the origin's tiles (4 items each); the view's ring and
    // neighbouring views reach all 36.
    let o = origin();
    let mut c = small_cache_client(60);
    // The first round has nothing to go by (no tile held yet).
    c.set_viewport(view(1.0), 0, |_, _| {});
    answer_all(&mut c, &o, 0);
    assert_eq!(c.cache().tiles_that_fit(4.0, c.density.per_item()), 15);
    // The next view's round asks for no more tiles than fit, so each one it fetched is
    // still held when its answers are in: none pushed out by its own later answers.
    let moved = {
        let base = seattle().offset(1, 1).unwrap();
        let (x, y) = (base.x() as f64 + 0.5, base.y() as f64 + 0.5);
        let (west, north) = unproject(
            TilePoint {
                x: x - 0.5,
                y: y - 0.5,
            },
            Z,
        );
        let (east, south) = unproject(
            TilePoint {
                x: x + 0.5,
                y: y + 0.5,
            },
            Z,
        );
        Viewport::new(west, south, east, north, 14.5).unwrap()
    };
    let now = REPLAN_MS + 1;
    c.set_viewport(moved, now, |_, _| {});
    let asked = answer_all_asked(&mut c, &o, now);
    assert!(
        !asked.is_empty() && asked.len() <= 15,
        "{} tiles asked for",
        asked.len()
    );
    let gone = not_fresh(&c, &asked, now);
    assert!(
        gone.is_empty(),
        "fetched, then pushed out by the round's own answers: {gone:?}"
    );
    assert!(c.is_complete());
}

#[test]
fn tiles_outside_the_extent_take_no_room_from_prefetch() {
    // 60 items hold 15 of the origin's tiles; a view on the block's corner tile has most
    // of its neighbourhood outside the data's extent: fresh and empty, they hold nothing.
    let o = origin();
    let mut c = small_cache_client(60);
    c.adopt_bounds(Some(&o.extent().unwrap()), 0).unwrap();
    // The centre first, for the answers' density (4 items a tile).
    c.set_viewport(fast_path::moved(0.0, 0.0, 0.8, 14.5), 0, |_, _| {});
    answer_all(&mut c, &o, 0);
    let now = REPLAN_MS + 1;
    c.set_viewport(fast_path::moved(2.0, 2.0, 0.8, 14.5), now, |_, _| {});
    let asked = answer_all_asked(&mut c, &o, now);
    // The corner tile and some of its neighbours inside the block, all still held.
    assert!(asked.len() > 1, "{asked:?}: no prefetch beside the view");
    assert!(asked.len() <= 15, "{} tiles asked for", asked.len());
    let gone = not_fresh(&c, &asked, now);
    assert!(gone.is_empty(), "pushed out: {gone:?}");
    assert!(c.is_complete());
}

/// Whatever the views, the cache's size and the backend's answers, the client never asks
/// again and again at one instant: work that an answer could not complete waits for a
/// backoff (or a new view), so a page cannot flood its backend from the event loop.
mod no_request_loop {
    use super::fast_path::{moved, origin};
    use super::*;
    use crate::protocol::{BatchRequest, BatchResponse};
    use proptest::prelude::*;

    /// Requests one instant may send: a round's foreground and prefetch work (16 tiles a
    /// request) and what its answers queue again; a loop sends thousands.
    const MAX_AT_ONE_INSTANT: usize = 64;

    #[derive(Clone, Debug)]
    enum Op {
        /// Move to (x, y) eighths of a tile, a size (index), a zoom (index).
        View(i8, i8, u8, u8),
        /// Time passes; the client's timeouts run when due.
        Advance(u32),
        /// Until its next wake-up.
        Wake,
        InvalidateIds(Vec<u8>),
        /// The page sets the caller's tier (index into `Access::ALL`).
        SetAccess(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (-24i8..=24, -24i8..=24, 0u8..4, 0u8..3).prop_map(|(x, y, w, z)| Op::View(x, y, w, z)),
            3 => (0u32..30_000).prop_map(Op::Advance),
            3 => Just(Op::Wake),
            1 => proptest::collection::vec(0u8..144, 0..4).prop_map(Op::InvalidateIds),
            1 => (0u8..4).prop_map(Op::SetAccess),
        ]
    }

    /// How the backend answers: as it should, or leaving out some of what was asked.
    #[derive(Clone, Copy, Debug)]
    enum Backend {
        Honest,
        /// Lists every tile but sends only the items with an even number.
        HalfTheItems,
        /// Leaves the first requested tile's list out.
        OmitsATile,
        /// Says every requested id is gone.
        IdsMissing,
        /// Answers at the public tier whatever the caller asked for (its credential gives
        /// no more).
        PublicOnly,
    }

    fn answer(
        o: &Origin<String>,
        backend: Backend,
        request: &BatchRequest,
    ) -> BatchResponse<String> {
        let mut r = o.answer(request, None);
        match backend {
            Backend::Honest => {}
            Backend::HalfTheItems => r
                .items
                .retain(|i| i.id[1..].parse::<u32>().is_ok_and(|n| n % 2 == 0)),
            Backend::OmitsATile => {
                if let Some(&first) = request.tiles.first() {
                    r.tiles.retain(|l| l.tile != first);
                }
            }
            Backend::IdsMissing => {
                r.items.retain(|i| !request.ids.contains(&i.id));
                r.missing = request.ids.clone();
            }
            Backend::PublicOnly => {
                r = o.answer(
                    &BatchRequest {
                        access: Access::Public,
                        ..request.clone()
                    },
                    None,
                );
                r.access = Some(Access::Public);
            }
        }
        r
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]
        #[test]
        fn no_instant_sends_without_bound(
            max_items in 1usize..60,
            levels in 0u8..3,
            backend in prop_oneof![
                Just(Backend::Honest),
                Just(Backend::HalfTheItems),
                Just(Backend::OmitsATile),
                Just(Backend::IdsMissing),
                Just(Backend::PublicOnly),
            ],
            ops in proptest::collection::vec(op(), 1..40),
        ) {
            let o = origin();
            let mut config = ClientConfig::default();
            config.cache.max_items = max_items;
            config.batch.coalesce_levels = levels;
            config.planner.align_levels = levels;
            let mut c = client(config);
            let mut now = 1_000u64;
            for op in ops {
                match op {
                    Op::View(x, y, w, z) => {
                        let w = [0.4, 1.0, 2.6, 5.0][w as usize];
                        let vp = moved(f64::from(x) / 8.0, f64::from(y) / 8.0, w, [14.5, 15.0, 13.0][z as usize]);
                        c.set_viewport(vp, now, |_, _| {});
                    }
                    Op::Advance(ms) => {
                        now += u64::from(ms);
                        c.handle_timeout(now);
                    }
                    Op::Wake => {
                        if let Some(at) = c.next_wakeup(now) {
                            now = now.max(at);
                            c.handle_timeout(now);
                        }
                    }
                    Op::InvalidateIds(ns) => {
                        let ids: Vec<String> = ns.iter().map(|n| format!("i{n}")).collect();
                        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                        c.invalidate(Invalidate::Ids(&ids), now);
                    }
                    Op::SetAccess(k) => c.set_access(Access::ALL[usize::from(k)], now),
                }
                let mut sent = 0;
                while let Some(t) = c.poll_request(now) {
                    sent += 1;
                    prop_assert!(
                        sent <= MAX_AT_ONE_INSTANT,
                        "{} requests at one instant (the last {:?})", sent, t.request
                    );
                    let r = answer(&o, backend, &t.request);
                    c.on_response(t.id, r, now);
                }
                events(&mut c);
            }
        }
    }
}

/// A shell that never polls events or cancels (the simulator polls no events) keeps at
/// most `MAX_QUEUED_EVENTS` of each, however long the session: one `Updated` and one
/// `Complete` for any number of answers, the latest errors, the latest aborts.
#[test]
fn a_shell_that_never_polls_events_or_cancels_holds_a_bounded_queue() {
    let o = origin();
    let mut config = ClientConfig {
        planner: no_prefetch(),
        ..ClientConfig::default()
    };
    config.batch.timeout_ms = 100;
    let mut c = client(config);
    let mut now = 0;
    c.set_viewport(view(1.0), now, |_, _| {});
    let rounds = 4 * MAX_QUEUED_EVENTS as u64;
    for round in 0..rounds {
        // Past any backoff: the view's tile goes out again.
        now += 3_600_000;
        c.handle_timeout(now);
        let t = c.poll_request(now).expect("the visible tile is asked for");
        match round % 4 {
            0 => c.on_failure(
                t.id,
                Failure::Http {
                    status: 503,
                    retry_after_ms: None,
                },
                now,
            ),
            // Overdue: an abort for poll_cancel and a timeout error.
            1 | 2 => c.handle_timeout(now + t.timeout_ms),
            _ => {
                c.on_response(t.id, o.answer(&t.request, None), now);
                c.invalidate(crate::cache::Invalidate::All, now);
            }
        }
    }
    let ev = events(&mut c);
    assert_eq!(ev.len(), MAX_QUEUED_EVENTS, "the queue is full, not larger");
    let count = |want: &Event| ev.iter().filter(|e| *e == want).count();
    assert_eq!((count(&Event::Updated), count(&Event::Complete)), (1, 1));
    assert!(
        c.stats().errors >= 3 * rounds / 4,
        "every error is still counted"
    );
    // The latest error is the last round's timeout, kept.
    let last = ev.iter().rev().find_map(|e| match e {
        Event::Error(e) => Some(e),
        _ => None,
    });
    assert!(
        last.is_some_and(|e| e.failure == Failure::Timeout),
        "{last:?}"
    );
    let cancels = std::iter::from_fn(|| c.poll_cancel()).count();
    assert_eq!(cancels, MAX_QUEUED_EVENTS);
}

/// A full event queue makes room by dropping the oldest error, never the one `Updated` or
/// `Complete`: a page that polls late, after one answer and more failures than the queue
/// holds, still hears that data arrived (before, the oldest event went whatever its kind).
#[test]
fn a_full_event_queue_drops_the_oldest_error_not_updated_or_complete() {
    let o = origin();
    let config = ClientConfig {
        planner: no_prefetch(),
        ..ClientConfig::default()
    };
    let mut c = client(config);
    let mut now = 0;
    c.set_viewport(view(1.0), now, |_, _| {});
    let t = c.poll_request(now).expect("the visible tile is asked for");
    c.on_response(t.id, o.answer(&t.request, None), now);
    c.invalidate(crate::cache::Invalidate::All, now);
    let not_errors = |ev: &[Event]| -> Vec<Event> {
        ev.iter()
            .filter(|e| !matches!(e, Event::Error(_)))
            .cloned()
            .collect()
    };
    let heard: Vec<Event> = c.events.iter().cloned().collect();
    assert!(heard.contains(&Event::Updated), "{heard:?}");
    let mut last = None;
    for _ in 0..=MAX_QUEUED_EVENTS {
        // Past any backoff: the view's tile goes out again, and fails.
        now += 3_600_000;
        c.handle_timeout(now);
        let t = c.poll_request(now).expect("the visible tile is asked for");
        c.on_failure(
            t.id,
            Failure::Http {
                status: 503,
                retry_after_ms: None,
            },
            now,
        );
        last = Some(t.id);
    }
    let ev = events(&mut c);
    assert_eq!(ev.len(), MAX_QUEUED_EVENTS, "the queue is full, not larger");
    assert_eq!(not_errors(&ev), not_errors(&heard), "kept, in order");
    // The errors kept are the latest.
    match ev.last() {
        Some(Event::Error(e)) => assert_eq!(Some(e.request), last),
        other => panic!("the last event is the last failure, got {other:?}"),
    }
}

/// The ways an answer fails validation that a shell cannot see before the core checks it.
fn spoiled(
    mut r: crate::protocol::BatchResponse<String>,
    how: &str,
) -> crate::protocol::BatchResponse<String> {
    let first = r.items[0].clone();
    match how {
        "a latitude out of range" => r.items[0].lat = 95.0,
        "an item listed twice" => r.items.push(first),
        "an id in both items and missing" => r.missing.push(first.id),
        "a bad class" => r.items[0].class = "Sold!".into(),
        other => unreachable!("{other}"),
    }
    r
}

/// An answer that fails validation is refused ([`Answered::Invalid`], not `Taken`), so a
/// shell does not end the `get`s it was for with nothing: nothing is cached, the failure
/// is reported as retrying, and the id goes out again and is then found. Out of retries,
/// the error says so (`will_retry` false), for the shell to end the `get`s with it. An
/// invalid answer to a request no longer tracked changes nothing ([`Answered::Ignored`]).
#[test]
fn an_invalid_answer_is_refused_and_its_get_waits_for_the_retry() {
    let o = origin();
    for how in [
        "a latitude out of range",
        "an item listed twice",
        "an id in both items and missing",
        "a bad class",
    ] {
        let mut c = client(ClientConfig::default());
        assert!(c.get("i5", 0).is_none());
        let t = c.poll_request(0).expect("the get's id goes out");
        assert_eq!(t.request.ids, ["i5"]);
        let bad = spoiled(o.answer(&t.request, None), how);
        assert!(bad.validate(c.limits()).is_err(), "{how}");
        assert_eq!(c.on_response(t.id, bad, 10), Answered::Invalid, "{how}");
        assert!(c.cache().peek("i5", Access::Public, 10).is_none(), "{how}");
        let errs: Vec<FetchError> = events(&mut c)
            .into_iter()
            .filter_map(|e| match e {
                Event::Error(e) => Some(e),
                _ => None,
            })
            .collect();
        assert_eq!(errs.len(), 1, "{how}");
        assert!(errs[0].will_retry, "{how}");
        assert!(matches!(errs[0].failure, Failure::Invalid(_)), "{how}");
        // The retry asks for i5 again; its valid answer is taken.
        let at = c.next_wakeup(10).expect("a retry is scheduled");
        c.handle_timeout(at);
        let again = c.poll_request(at).expect("the id is asked again");
        assert_eq!(again.request.ids, ["i5"], "{how}");
        let good = o.answer(&again.request, None);
        assert_eq!(c.on_response(again.id, good, at), Answered::Taken);
        assert!(c.cache().peek("i5", Access::Public, at).is_some(), "{how}");
        // A late invalid answer to the first request changes nothing.
        let late = spoiled(o.answer(&t.request, None), how);
        assert_eq!(c.on_response(t.id, late, at), Answered::Ignored, "{how}");
        assert!(events(&mut c).is_empty(), "{how}");
    }
    // No retries left: the error says the work is dropped.
    let mut c = client(ClientConfig {
        batch: BatchConfig {
            retries: 0,
            ..BatchConfig::default()
        },
        ..ClientConfig::default()
    });
    assert!(c.get("i5", 0).is_none());
    let t = c.poll_request(0).unwrap();
    let bad = spoiled(o.answer(&t.request, None), "a latitude out of range");
    assert_eq!(c.on_response(t.id, bad, 10), Answered::Invalid);
    match events(&mut c).as_slice() {
        [Event::Error(e)] => assert!(!e.will_retry && e.request == t.id, "{e:?}"),
        other => panic!("one error, got {other:?}"),
    }
    assert!(c.poll_request(10).is_none());
}

/// A host tile whose data tiles hold more items than the cache may keep (a map library
/// tiling its own layer at a low zoom over dense data): each answer evicts what the one
/// before brought. The tiles are not asked for again in a loop: the load fails with an
/// error that names the limit, the tiles leave the loading tiles and back off, so a host
/// that asks again at once waits for the backoff.
#[test]
fn a_load_the_cache_cannot_keep_fails_instead_of_asking_again_in_a_loop() {
    let o = origin();
    let mut c = client(ClientConfig {
        planner: no_prefetch(),
        cache: CacheConfig {
            max_items: 10,
            ..CacheConfig::default()
        },
        ..ClientConfig::default()
    });
    // 16 data tiles, 4 items each (the origin's 6 x 6 block holds this z12 tile's 4 x 4).
    let host = seattle().ancestor(12).unwrap();
    assert_eq!(c.load_tile(host, true, 0, |_, _| {}), Ok(false));
    assert_eq!(c.loading_tiles().len(), 16);
    let mut sent = 0;
    while let Some(t) = c.poll_request(0) {
        sent += 1;
        assert!(sent <= 16, "a request loop");
        c.on_response(t.id, o.answer(&t.request, None), 0);
    }
    let errs: Vec<FetchError> = events(&mut c)
        .into_iter()
        .filter_map(|e| match e {
            Event::Error(e) => Some(e),
            _ => None,
        })
        .collect();
    assert!(!errs.is_empty(), "the load fails with an error");
    for e in &errs {
        assert!(!e.will_retry);
        let Failure::Invalid(why) = &e.failure else {
            panic!("{e:?}");
        };
        assert!(
            why.contains("a host loads") && why.contains("max_items 10"),
            "{why}"
        );
    }
    // Every data tile that cannot be shown is named by an error (a shell fails the loads
    // waiting for it) and is no longer loading.
    let data = c.data_tiles_of(host).unwrap();
    for t in &data {
        if c.tile_state(*t, 0) != TileState::Loaded {
            assert!(errs.iter().any(|e| e.tiles.contains(t)), "{t} not reported");
        }
    }
    assert!(c.loading_tiles().is_empty(), "{:?}", c.loading_tiles());
    // Nothing asks for them again, now or later.
    for now in (0..600_000).step_by(1000) {
        c.handle_timeout(now);
        assert!(c.poll_request(now).is_none(), "asked again at {now}");
    }
    // A host asking again at once waits for a backoff.
    let mut c2 = client(ClientConfig {
        planner: no_prefetch(),
        cache: CacheConfig {
            max_items: 10,
            ..CacheConfig::default()
        },
        ..ClientConfig::default()
    });
    let mut requests = 0;
    for _ in 0..50 {
        let _ = c2.load_tile(host, true, 5, |_, _| {});
        while let Some(t) = c2.poll_request(5) {
            requests += 1;
            c2.on_response(t.id, o.answer(&t.request, None), 5);
        }
    }
    assert!(requests <= 16, "{requests} requests at one instant");
}

/// A tile a host waits for that an answer leaves out fails the load (reported once) and
/// leaves the loading tiles: it is not asked for again every few seconds for as long as
/// the page stays open, a list growing with each such load.
#[test]
fn a_loading_tile_an_answer_leaves_out_is_not_asked_for_again() {
    let mut c = client(ClientConfig {
        planner: no_prefetch(),
        ..ClientConfig::default()
    });
    assert_eq!(c.load_tile(seattle(), true, 0, |_, _| {}), Ok(false));
    let (mut sent, mut errors) = (0, Vec::new());
    for now in (0..600_000).step_by(1000) {
        while let Some(t) = c.poll_request(now) {
            sent += 1;
            let empty = crate::protocol::BatchResponse::<String>::default();
            assert_eq!(c.on_response(t.id, empty, now), Answered::Taken);
        }
        errors.extend(events(&mut c).into_iter().filter_map(|e| match e {
            Event::Error(e) => Some(e),
            _ => None,
        }));
        c.handle_timeout(now);
    }
    assert_eq!(sent, 1, "asked for again");
    assert_eq!(errors.len(), 1);
    assert_eq!(
        (errors[0].tiles.as_slice(), errors[0].will_retry),
        ([seattle()].as_slice(), false)
    );
    assert!(c.loading_tiles().is_empty());
}

/// The errors among `events`.
fn errors_of(events: Vec<Event>) -> Vec<FetchError> {
    events
        .into_iter()
        .filter_map(|e| match e {
            Event::Error(e) => Some(e),
            _ => None,
        })
        .collect()
}

/// A client that loads one data tile per request and prefetches nothing, holding at most
/// `max_items` items.
fn one_tile_per_request(max_items: usize) -> Client<String> {
    client(ClientConfig {
        planner: no_prefetch(),
        cache: CacheConfig {
            max_items,
            ..CacheConfig::default()
        },
        // Data tiles only: no coarse tile for the host's whole block.
        batch: BatchConfig {
            max_tiles: 1,
            coalesce_levels: 0,
            ..BatchConfig::default()
        },
        ..ClientConfig::default()
    })
}

/// The z13 tile over Seattle's data tile (4 data tiles of 4 items each).
fn host13() -> TileId {
    seattle().ancestor(13).unwrap()
}

/// A host tile answered in several requests, whose data tiles need more items than the
/// cache holds: a later answer evicts a data tile an earlier one brought. That tile had left
/// the loading tiles when it could be shown, so nothing asked for it again and no error
/// named it: a shell re-reading the host tile waited for ever. Every data tile that cannot
/// be shown at the end is named by an error (the load fails), and nothing loops.
#[test]
fn a_load_answered_in_several_requests_that_the_cache_cannot_keep_fails_its_evicted_tiles() {
    let o = origin();
    let mut c = one_tile_per_request(10);
    let host = host13();
    assert_eq!(c.load_tile(host, true, 0, |_, _| {}), Ok(false));
    let mut out = Vec::new();
    while let Some(t) = c.poll_request(0) {
        out.push(t);
    }
    assert_eq!(out.len(), 4, "one request per data tile");
    let mut errs = Vec::new();
    let mut sent = out.len();
    for now in (0..600_000).step_by(1000) {
        c.handle_timeout(now);
        loop {
            while let Some(t) = c.poll_request(now) {
                out.push(t);
                sent += 1;
            }
            assert!(sent <= 8, "a request loop: {sent} requests");
            // One answer at a time, oldest first.
            if out.is_empty() {
                break;
            }
            let t = out.remove(0);
            c.on_response(t.id, o.answer(&t.request, None), now);
        }
        errs.extend(errors_of(events(&mut c)));
        if now == 0 {
            // Once answered, every data tile that cannot be shown is named by an error
            // (which fails the loads waiting for it).
            for t in c.data_tiles_of(host).unwrap() {
                if c.tile_state(t, now) == TileState::Missing {
                    assert!(errs.iter().any(|e| e.tiles.contains(&t)), "{t} never named");
                }
            }
        }
    }
    assert!(out.is_empty());
    assert_eq!(sent, 4, "nothing is asked for again");
    assert!(!errs.is_empty(), "the load cannot be kept: it fails");
    for e in &errs {
        let Failure::Invalid(why) = &e.failure else {
            panic!("{e:?}");
        };
        assert!(why.contains("max_items 10") && !e.will_retry, "{why}");
    }
}

/// A host tile that fits in the cache, answered in several requests, with other answers
/// (a get()'s) in between: without protection, the last answer pushed out the first data
/// tile (the least recently used), which had left the loading tiles, and the host tile
/// never read. The load's data tiles are kept until the host releases them.
#[test]
fn a_load_that_fits_keeps_its_first_tile_while_other_answers_come() {
    let o = origin();
    let mut c = one_tile_per_request(16);
    let host = host13();
    assert_eq!(c.load_tile(host, true, 0, |_, _| {}), Ok(false));
    let mut out: Vec<Transmit> = std::iter::from_fn(|| c.poll_request(0)).collect();
    assert_eq!(out.len(), 4);
    let first = out.remove(0);
    c.on_response(first.id, o.answer(&first.request, None), 1);
    // A host waiting for the other three reads nothing yet.
    assert_eq!(c.load_tile(host, false, 1, |_, _| {}), Ok(false));
    // Four items of a tile outside the host tile, fetched by id after the first answer.
    let far = seattle().offset(-3, -3).unwrap();
    assert!(!host.contains(far));
    for id in ["i0", "i1", "i2", "i3"] {
        assert!(c.get(id, 2).is_none());
    }
    let t = c.poll_request(2).expect("the ids go out");
    c.on_response(t.id, o.answer(&t.request, None), 2);
    assert!(c.get_cached("i0", 2).is_some());
    for t in out {
        c.on_response(t.id, o.answer(&t.request, None), 3);
    }
    assert!(errors_of(events(&mut c)).is_empty());
    let mut n = 0;
    assert_eq!(c.load_tile(host, false, 3, |_, _| n += 1), Ok(true));
    assert_eq!(n, 16, "every item of the host tile");
    // Released once read, its tiles are no longer loading.
    c.release_tiles(&c.data_tiles_of(host).unwrap(), 3);
    assert!(c.loading_tiles().is_empty());
}

/// A view at rest, then a load bigger than what the cache has left beside it: the view's
/// items are older than the load's, and both were protected alike, so the load's answers
/// pushed out the view's (least recently used first): the view went incomplete with a
/// "could not be kept" error and was asked for again after a backoff. The view's items are
/// protected above a load's now: the view stays complete and the load fails instead.
#[test]
fn a_load_bigger_than_what_the_view_leaves_fails_and_the_view_stays_complete() {
    let o = origin();
    // The view's one data tile (4 items) and the host tile (16 items) need 20; 17 fit.
    let mut c = one_tile_per_request(17);
    let out = c.set_viewport(view_east(0.5, -2), 0, |_, _| {});
    assert_eq!(out.visible, 1);
    let seen = c.visible_tiles()[0];
    let host = host13();
    assert!(!host.contains(seen));
    answer_all(&mut c, &o, 0);
    assert!(c.is_complete());
    assert!(errors_of(events(&mut c)).is_empty());
    // At rest: the load's answers come later, so the view's items are the oldest.
    assert_eq!(c.load_tile(host, true, 1_000, |_, _| {}), Ok(false));
    let mut errs = Vec::new();
    let mut sent = 0;
    for now in (1_000..120_000).step_by(1000) {
        c.handle_timeout(now);
        while let Some(t) = c.poll_request(now) {
            sent += 1;
            assert!(
                sent <= 4,
                "one request per data tile of the host, nothing again"
            );
            assert!(
                !t.request.tiles.contains(&seen),
                "the view is asked for again"
            );
            c.on_response(t.id, o.answer(&t.request, None), now);
        }
        errs.extend(errors_of(events(&mut c)));
        assert!(c.is_complete(), "the view went incomplete at {now}");
    }
    assert_eq!(c.tile_state(seen, 120_000), TileState::Loaded);
    assert!(
        !errs.is_empty(),
        "the load cannot be kept beside the view: it fails"
    );
    for e in &errs {
        let Failure::Invalid(why) = &e.failure else {
            panic!("{e:?}");
        };
        assert!(
            why.contains("could not be kept") && why.contains("max_items 17"),
            "{why}"
        );
        assert!(!e.view_incomplete && !e.will_retry, "{e:?}");
        assert!(e.tiles.iter().all(|t| host.contains(*t)), "{e:?}");
    }
    // The tiles that failed are no longer waited for.
    let failed: Vec<TileId> = errs.iter().flat_map(|e| e.tiles.clone()).collect();
    assert!(c.loading_tiles().iter().all(|t| !failed.contains(t)));
}

/// A data tile a host waits for, invalidated after it could be shown and before the host
/// read it (its other data tiles still out): it is asked for again, and the host tile reads.
#[test]
fn a_loading_tile_dropped_before_the_host_read_it_is_asked_for_again() {
    let o = origin();
    let mut c = one_tile_per_request(10_000);
    let host = host13();
    assert_eq!(c.load_tile(host, true, 0, |_, _| {}), Ok(false));
    let mut out: Vec<Transmit> = std::iter::from_fn(|| c.poll_request(0)).collect();
    let first = out.remove(0);
    let tile = first.request.tiles[0];
    c.on_response(first.id, o.answer(&first.request, None), 1);
    c.invalidate(Invalidate::Tiles(&[tile]), 2);
    let again = c.poll_request(2).expect("asked for again");
    assert_eq!(again.request.tiles, [tile]);
    out.push(again);
    for t in out {
        c.on_response(t.id, o.answer(&t.request, None), 3);
    }
    assert_eq!(c.load_tile(host, false, 3, |_, _| {}), Ok(true));
}

/// Whether an error leaves the view incomplete: a foreground request that carried one of
/// the view's missing data tiles does; a get()'s (ids only) does not, though it is
/// foreground too: a shell fails a wait for the view only with the first.
#[test]
fn an_error_says_whether_it_leaves_the_view_incomplete() {
    let mut c = client(ClientConfig {
        planner: no_prefetch(),
        batch: BatchConfig {
            retries: 0,
            ..BatchConfig::default()
        },
        ..ClientConfig::default()
    });
    c.set_viewport(view(1.0), 0, |_, _| {});
    let tile = c.poll_request(0).expect("the view's tile");
    assert!(c.get("i0", 0).is_none());
    let ids = c.poll_request(0).expect("the id");
    assert!(ids.request.tiles.is_empty() && ids.kind == Kind::Foreground);
    let status = Failure::Http {
        status: 500,
        retry_after_ms: None,
    };
    c.on_failure(ids.id, status.clone(), 1);
    match errors_of(events(&mut c)).as_slice() {
        [e] => assert!(!e.view_incomplete && !e.will_retry, "{e:?}"),
        other => panic!("one error, got {other:?}"),
    }
    c.on_failure(tile.id, status, 2);
    match errors_of(events(&mut c)).as_slice() {
        [e] => assert!(e.view_incomplete && !e.will_retry, "{e:?}"),
        other => panic!("one error, got {other:?}"),
    }
}

/// A view at rest whose items fill the cache, then a `get` of an id outside it: its answer
/// was inserted as if for the view and pushed out one of the view's items (the view went
/// incomplete and was asked for again). It may push out only unprotected items now; when
/// there are none, the cache refuses it and the shell is handed the item
/// ([`Client::take_unkept`]), so the get still gets it. With room, it is kept as before.
#[test]
fn a_gets_answer_never_pushes_out_the_views_items_and_is_handed_out_when_not_kept() {
    let o = origin();
    for (max_items, kept) in [(4, false), (5, true)] {
        let mut c = one_tile_per_request(max_items);
        let out = c.set_viewport(view_east(0.5, -2), 0, |_, _| {});
        assert_eq!(out.visible, 1);
        let seen = c.visible_tiles()[0];
        answer_all(&mut c, &o, 0);
        assert!(c.is_complete());
        assert_eq!(c.cache().len(), 4, "the view's four items");
        events(&mut c);
        assert!(c.get("i0", 1_000).is_none());
        let t = c.poll_request(1_000).expect("the id is asked for");
        assert!(t.request.tiles.is_empty() && t.request.ids == ["i0"]);
        let r = o.answer(&t.request, None);
        assert_eq!(r.items.len(), 1);
        assert!(!seen.contains(TileId::from_lon_lat(r.items[0].lon, r.items[0].lat, Z).unwrap()));
        assert_eq!(c.on_response(t.id, r, 1_000), Answered::Taken);
        // The view stays complete: nothing of it went, nothing is asked for again.
        assert!(c.is_complete(), "max_items {max_items}");
        assert_eq!(c.tile_state(seen, 1_000), TileState::Loaded);
        assert!(c.poll_request(1_000).is_none(), "max_items {max_items}");
        assert!(errors_of(events(&mut c)).is_empty());
        let held = c.cache().peek("i0", Access::Public, 1_000).is_some();
        let unkept = c.take_unkept();
        if kept {
            assert!(held && unkept.is_empty(), "{unkept:?}");
        } else {
            assert!(!held, "the view's items leave no room for it");
            let ids: Vec<&str> = unkept.iter().map(|(id, _)| id.as_str()).collect();
            assert_eq!(ids, ["i0"], "the get's item, for the shell to hand out");
            assert!(c.take_unkept().is_empty(), "taken once");
        }
    }
}

/// Security: an item the cache could not keep is handed out only when it passed the tier
/// check. One above the caller's tier, or above a lower tier the server reports for the
/// credential in the same answer (the verified tier), is neither cached nor handed out.
#[test]
fn an_unkept_item_above_the_verified_tier_is_never_handed_out() {
    let o = origin();
    for (item_tier, reported) in [
        (Access::Verified, None),
        (Access::Registered, Some(Access::Public)),
    ] {
        let mut c = one_tile_per_request(4);
        c.set_access(Access::Registered, 0);
        c.set_viewport(view_east(0.5, -2), 0, |_, _| {});
        answer_all(&mut c, &o, 0);
        assert!(c.is_complete());
        assert!(c.get("i0", 1_000).is_none());
        let t = c.poll_request(1_000).expect("the id is asked for");
        let mut r = o.answer(&t.request, None);
        r.items[0].access = item_tier;
        r.access = reported;
        assert_eq!(c.on_response(t.id, r, 1_000), Answered::Taken);
        assert_eq!(c.verified(), reported);
        let unkept = c.take_unkept();
        assert!(unkept.is_empty(), "{item_tier:?} handed out: {unkept:?}");
        assert!(c.cache().peek("i0", Access::Agent, 1_000).is_none());
    }
}

/// An item of one class more than the cache holds at once ([`MAX_CLASSES`]) is not cached:
/// the rest of its answer is, the view stays complete, and a `get` waiting for it is handed
/// the item ([`Client::take_unkept`]), as one larger than the cache is.
#[test]
fn an_item_of_a_class_beyond_the_limit_is_handed_to_its_get_and_the_rest_kept() {
    use crate::cache::{ItemMeta, Priority, MAX_CLASSES};
    let o = origin();
    let mut c = one_tile_per_request(MAX_CLASSES + 20);
    c.set_viewport(view_east(0.5, -2), 0, |_, _| {});
    answer_all(&mut c, &o, 0);
    assert!(c.is_complete());
    // Items far away fill the class table.
    let mut k = 0;
    loop {
        let meta = ItemMeta {
            lon: -120.0,
            lat: -40.0,
            class: format!("far-{k}"),
            access: Access::Public,
            ttl_ms: None,
            size_bytes: 10,
        };
        let far = c.cache.insert(
            &format!("far{k}"),
            meta,
            String::new(),
            0,
            Priority::Visible,
        );
        if far.is_err() {
            break;
        }
        k += 1;
        assert!(k <= MAX_CLASSES);
    }
    let asked = ["i0", "i1"];
    for id in asked {
        assert!(c.get(id, 1_000).is_none());
    }
    let t = c.poll_request(1_000).expect("the ids are asked for");
    assert_eq!(t.request.ids, asked);
    let mut r = o.answer(&t.request, None);
    assert_eq!(r.items.len(), 2);
    // A class the view's items have.
    let mut class_held = String::new();
    let seen = c.visible_tiles()[0];
    c.cache
        .read_tile(seen, Access::Public, 1_000, |_, class, _| {
            class_held = class.into()
        });
    assert!(!class_held.is_empty());
    r.items[0].class = "one-more".into();
    r.items[1].class = class_held;
    assert_eq!(c.on_response(t.id, r, 1_000), Answered::Taken);
    assert!(c.is_complete(), "the view keeps its items");
    assert!(c.cache().peek("i0", Access::Public, 1_000).is_none());
    assert!(
        c.cache().peek("i1", Access::Public, 1_000).is_some(),
        "the rest kept"
    );
    let unkept: Vec<String> = c.take_unkept().into_iter().map(|(id, _)| id).collect();
    assert_eq!(unkept, ["i0"], "the get's item, for the shell to hand out");
    assert!(errors_of(events(&mut c)).is_empty());
}

/// Several ids asked for together (a `getMany`) with room for fewer of them beside the view's
/// items: each is either kept or handed out ([`Client::take_unkept`]), never neither. (Each
/// was inserted as prefetch: the next one of the same answer pushed out the one kept just
/// before it, which was then neither in the cache nor handed out, and its get ended with
/// "does not exist".)
#[test]
fn each_id_of_a_gets_answer_is_kept_or_handed_out() {
    let o = origin();
    for max_items in [5, 6] {
        let mut c = one_tile_per_request(max_items);
        c.set_viewport(view_east(0.5, -2), 0, |_, _| {});
        answer_all(&mut c, &o, 0);
        assert!(c.is_complete());
        let asked = ["i0", "i1", "i2"];
        for id in asked {
            assert!(c.get(id, 1_000).is_none());
        }
        let t = c.poll_request(1_000).expect("the ids are asked for");
        assert_eq!(t.request.ids, asked);
        let r = o.answer(&t.request, None);
        assert_eq!(r.items.len(), 3);
        assert_eq!(c.on_response(t.id, r, 1_000), Answered::Taken);
        assert!(c.is_complete(), "the view keeps its items");
        let unkept: Vec<String> = c.take_unkept().into_iter().map(|(id, _)| id).collect();
        for id in asked {
            let held = c.cache().peek(id, Access::Public, 1_000).is_some();
            assert!(
                held || unkept.iter().any(|u| u == id),
                "max_items {max_items}: {id} neither kept nor handed out (unkept {unkept:?})"
            );
        }
    }
}

/// The tiles whose items changed (`take_changed_tiles`), for hosts that draw tiles outside
/// the view: what an answer (a host's load, a refresh by id that moves an item, one that
/// finds an item gone), an invalidation, a tier change, the view turning stale or a tile a
/// host read expiring changed, and nothing for an answer that changed nothing held (an item
/// refused) or a read.
#[test]
fn the_tiles_whose_items_changed_are_reported_outside_the_view_too() {
    let o = origin();
    let mut c = client(ClientConfig {
        planner: no_prefetch(),
        ..ClientConfig::default()
    });
    let tiles = |c: &mut Client<String>| match c.take_changed_tiles() {
        ChangedTiles::Tiles(mut t) => {
            t.sort_by_key(|t| t.to_u64());
            Some(t)
        }
        ChangedTiles::All => None,
    };
    // No view: a host loads a tile far from any (the cache's view is not the map's).
    let (t, u) = (
        seattle().offset(2, 2).unwrap(),
        seattle().offset(-2, 2).unwrap(),
    );
    assert_eq!(c.load_tile(t, true, 0, |_, _| {}), Ok(false));
    assert_eq!(tiles(&mut c), Some(vec![]), "asking changes nothing");
    answer_all(&mut c, &o, 0);
    assert_eq!(tiles(&mut c), Some(vec![t]), "the tile answered");
    assert!(events(&mut c).is_empty(), "no view: no Updated");
    let mut ids = Vec::new();
    assert_eq!(
        c.load_tile(t, false, 1, |it, _| ids.push(it.id().to_string())),
        Ok(true)
    );
    c.release_tiles(&[t], 1);
    assert_eq!(tiles(&mut c), Some(vec![]), "reads change nothing");
    // Invalidated by id, then answered in another tile: the item's tile, then the new one.
    let moved = ids[0].clone();
    c.invalidate(Invalidate::Ids(&[moved.as_str()]), 2);
    assert_eq!(
        tiles(&mut c),
        Some(vec![t]),
        "an invalidation by id: the item's tile"
    );
    c.request_ids([moved.as_str()], 2);
    let req = c.poll_request(2).expect("the id asked");
    let (lon, lat) = unproject(
        TilePoint {
            x: u.x() as f64 + 0.5,
            y: u.y() as f64 + 0.5,
        },
        Z,
    );
    let item = |id: &str| Item {
        id: id.to_string(),
        lon,
        lat,
        class: "active".into(),
        access: Access::Public,
        ttl: None,
        data: "{}".to_string(),
    };
    let answer = BatchResponse {
        items: vec![item(&moved)],
        ..BatchResponse::default()
    };
    c.on_response(req.id, answer, 3);
    assert_eq!(
        tiles(&mut c),
        Some(vec![u]),
        "gone from the cache, it lands in its new tile"
    );
    // Expired (a refresh is due), one is answered in the other tile: both tiles.
    let later = 400_000;
    c.request_ids([ids[1].as_str()], later);
    let req = c.poll_request(later).expect("the id asked");
    let answer = BatchResponse {
        items: vec![item(&ids[1])],
        ..BatchResponse::default()
    };
    c.on_response(req.id, answer, later);
    let mut both = vec![t, u];
    both.sort_by_key(|t| t.to_u64());
    assert_eq!(
        tiles(&mut c),
        Some(both),
        "moved from one tile to the other"
    );
    // Found gone: its tile.
    c.request_ids([ids[2].as_str(), "nothing-such"], later);
    let req = c.poll_request(later).expect("the ids asked");
    let answer: BatchResponse<String> = BatchResponse {
        missing: vec![ids[2].clone(), "nothing-such".into()],
        ..BatchResponse::default()
    };
    c.on_response(req.id, answer, later);
    assert_eq!(
        tiles(&mut c),
        Some(vec![t]),
        "its tile; an id never held changes none"
    );
    // An invalidation of a tile names it; by class, everything; a tier change too.
    c.invalidate(Invalidate::Tiles(&[u.parent().unwrap()]), later);
    assert_eq!(tiles(&mut c), Some(vec![u.parent().unwrap()]));
    let finer = u.children().unwrap()[3];
    c.invalidate(Invalidate::Tiles(&[finer]), later);
    assert_eq!(
        tiles(&mut c),
        Some(vec![u]),
        "a finer tile stands for its data tile"
    );
    c.invalidate(Invalidate::Class("active"), later);
    assert_eq!(tiles(&mut c), None);
    c.set_access(Access::Agent, later);
    assert_eq!(tiles(&mut c), None);
    c.set_access(Access::Agent, later);
    assert_eq!(tiles(&mut c), Some(vec![]), "the same tier changes nothing");
    // The view turning stale with time: its tiles.
    let now = later + 10;
    c.set_viewport(view(0.8), now, |_, _| {});
    answer_all(&mut c, &o, now);
    assert_eq!(tiles(&mut c), Some(vec![seattle()]));
    events(&mut c);
    // The tile the host read at 1 expired at 300 s: its wake-up is due.
    assert_eq!(c.next_wakeup(now), Some(now));
    c.handle_timeout(now);
    assert_eq!(
        tiles(&mut c),
        Some(vec![t]),
        "the tile the host read, expired"
    );
    let at = c.next_wakeup(now + 1).expect("the view's expiry");
    c.handle_timeout(at);
    assert_eq!(events(&mut c), [Event::Updated]);
    assert_eq!(
        tiles(&mut c),
        Some(vec![seattle()]),
        "the view's tile, stale now"
    );
    // Past MAX_CHANGED_TILES tiles, any tile.
    let many: Vec<TileId> = (0..=MAX_CHANGED_TILES as i64)
        .map(|i| seattle().offset(i, 0).unwrap())
        .collect();
    c.invalidate(Invalidate::Tiles(&many), at);
    assert_eq!(tiles(&mut c), None);
}

/// A tile a host read outside the view (a map's buffer tile, one deck.gl keeps off the
/// screen) reads differently once its items turn stale or expire: the client wakes up then
/// and reports it changed, once, so the host draws it again; one it does not read again is
/// not reported again.
#[test]
fn a_tile_a_host_read_is_reported_changed_when_its_items_turn_stale_or_expire() {
    let o = origin();
    let mut c = client(ClientConfig {
        planner: no_prefetch(),
        cache: CacheConfig {
            stale_while_revalidate_ms: 60_000,
            ..CacheConfig::default()
        },
        ..ClientConfig::default()
    });
    let changed = |c: &mut Client<String>| c.take_changed_tiles();
    // The view on Seattle's tile; the host reads a tile two tiles off it.
    c.set_viewport(view(0.8), 0, |_, _| {});
    answer_all(&mut c, &o, 0);
    let t = seattle().offset(2, 2).unwrap();
    assert_eq!(c.load_tile(t, true, 0, |_, _| {}), Ok(false));
    answer_all(&mut c, &o, 0);
    let read = |c: &mut Client<String>, now| {
        let mut stale = Vec::new();
        assert_eq!(c.load_tile(t, false, now, |_, s| stale.push(s)), Ok(true));
        c.release_tiles(&[t], now);
        stale
    };
    assert_eq!(read(&mut c, 1), [false; 4]);
    changed(&mut c);
    // Its items and the view's were fetched at 0 ("active": 300 s); both turn stale at 300 s.
    let stale_at = 300_000;
    assert_eq!(c.next_wakeup(2), Some(stale_at));
    c.handle_timeout(stale_at);
    let ChangedTiles::Tiles(mut tiles) = changed(&mut c) else {
        panic!("tiles expected")
    };
    tiles.sort_by_key(|t| t.to_u64());
    let mut both = vec![seattle(), t];
    both.sort_by_key(|t| t.to_u64());
    assert_eq!(tiles, both, "the view's tile and the host's");
    // The host reads it again: stale now, and it wakes the client when it expires.
    assert_eq!(read(&mut c, stale_at), [true; 4]);
    let gone_at = stale_at + 60_000;
    // Once the view is not read again, its wake-up is the host tile's.
    c.set_viewport(view_east(0.8, 40), stale_at, |_, _| {});
    answer_all(&mut c, &o, stale_at);
    changed(&mut c);
    assert_eq!(c.next_wakeup(stale_at + 1), Some(gone_at));
    c.handle_timeout(gone_at);
    assert_eq!(
        changed(&mut c),
        ChangedTiles::Tiles(vec![t]),
        "expired: the host's tile"
    );
    // Not read since: not reported again, and no wake-up for it.
    let next = c.next_wakeup(gone_at + 1);
    assert!(next.is_none_or(|n| n >= stale_at + 300_000), "{next:?}");
    c.handle_timeout(stale_at + 300_000 - 1);
    assert_eq!(changed(&mut c), ChangedTiles::Tiles(vec![]));
}

/// A tile a host read outside the view is not protected once released: another host's load
/// can push its items out. That is no change (the host draws what the server sent; reporting
/// it would have a host that draws more than the cache holds fetch its tiles in turn for
/// ever), but an invalidation of one of its items by id names it (its list still names the
/// item, though the cache no longer places it), and so does the expiry of what was read; read
/// again then, it is fetched again.
#[test]
fn a_tile_a_host_read_then_evicted_is_reported_when_its_items_are_invalidated_or_expire() {
    let o = origin();
    let mut c = client(ClientConfig {
        planner: no_prefetch(),
        cache: CacheConfig {
            max_items: 8,
            ..CacheConfig::default()
        },
        ..ClientConfig::default()
    });
    let changed = |c: &mut Client<String>| c.take_changed_tiles();
    let load = |c: &mut Client<String>, t: TileId, now: u64| {
        assert_eq!(c.load_tile(t, true, now, |_, _| {}), Ok(false));
        answer_all(c, &o, now);
        let mut ids = Vec::new();
        assert_eq!(
            c.load_tile(t, false, now, |it, _| ids.push(it.id().to_string())),
            Ok(true)
        );
        c.release_tiles(&[t], now);
        ids
    };
    // The view on Seattle's tile (4 items); the host draws t, then u, each of 4 items.
    c.set_viewport(view(0.8), 0, |_, _| {});
    answer_all(&mut c, &o, 0);
    let (t, u) = (
        seattle().offset(2, 2).unwrap(),
        seattle().offset(-2, 2).unwrap(),
    );
    let drawn = load(&mut c, t, 0);
    assert_eq!(drawn.len(), 4);
    changed(&mut c);
    assert_eq!(load(&mut c, u, 1_000).len(), 4);
    assert!(
        !c.cache()
            .tile_freshness(t, Access::Public, 1_000)
            .is_showable(),
        "u's answer pushed t's items out"
    );
    assert_eq!(
        changed(&mut c),
        ChangedTiles::Tiles(vec![u]),
        "the eviction is no change"
    );
    // One of t's items changed on the server, invalidated by id (a change feed): t.
    let id = drawn[0].as_str();
    assert!(c.cache().tile_of(id).is_none(), "pushed out");
    c.invalidate(Invalidate::Ids(&[id, "never-held"]), 1_000);
    assert_eq!(changed(&mut c), ChangedTiles::Tiles(vec![t]));
    // t's items, fetched at 0, expire at 300 s: the client wakes for it all the same.
    c.set_viewport(view_east(0.8, 40), 1_000, |_, _| {});
    answer_all(&mut c, &o, 1_000);
    changed(&mut c);
    assert_eq!(c.next_wakeup(1_001), Some(300_000));
    c.handle_timeout(300_000);
    assert_eq!(changed(&mut c), ChangedTiles::Tiles(vec![t]));
    assert_eq!(
        load(&mut c, t, 300_000).len(),
        4,
        "read again: fetched again"
    );
}

/// A tile a host reads while its items are stale (within the stale-while-revalidate window)
/// is refetched meanwhile, as the view's stale tiles are, outside the view too.
#[test]
fn a_tile_a_host_reads_stale_is_refetched_meanwhile() {
    let o = origin();
    let mut c = client(ClientConfig {
        planner: no_prefetch(),
        cache: CacheConfig {
            stale_while_revalidate_ms: 60_000,
            ..CacheConfig::default()
        },
        ..ClientConfig::default()
    });
    let t = seattle().offset(2, 2).unwrap();
    assert_eq!(c.load_tile(t, true, 0, |_, _| {}), Ok(false));
    answer_all(&mut c, &o, 0);
    c.release_tiles(&[t], 0);
    let read = |c: &mut Client<String>, now| {
        let mut stale = Vec::new();
        assert_eq!(c.load_tile(t, false, now, |_, s| stale.push(s)), Ok(true));
        stale
    };
    assert_eq!(read(&mut c, 1), [false; 4]);
    assert!(c.poll_request(1).is_none(), "fresh: nothing to fetch");
    // Stale from 300 s: read, and refetched.
    assert_eq!(read(&mut c, 300_000), [true; 4]);
    let req = c.poll_request(300_000).expect("the stale tile refetched");
    assert!(req.request.tiles.contains(&t) || !req.request.ids.is_empty());
    let answer = o.answer(&req.request, None);
    c.on_response(req.id, answer, 300_000);
    assert_eq!(read(&mut c, 300_001), [false; 4], "fresh again");
    assert!(c.poll_request(300_001).is_none());
}

/// A tile a host reads stale is refetched once, and not again on each read before its read
/// changes with time: an answer stale on arrival (items with a ttl of 0, which the protocol
/// allows) would otherwise have a host that reads the tile again after each change (the map
/// adapters, redraw.js) fetch it in a loop, at rest.
#[test]
fn a_tile_answered_stale_is_not_refetched_on_each_read() {
    let o = origin();
    let mut c = client(ClientConfig {
        planner: no_prefetch(),
        cache: CacheConfig {
            stale_while_revalidate_ms: 60_000,
            ..CacheConfig::default()
        },
        ..ClientConfig::default()
    });
    let t = seattle().offset(2, 2).unwrap();
    // Every answer's items with a ttl of 0: stale as they arrive.
    let answer = |c: &mut Client<String>, now| {
        let mut n = 0;
        while let Some(s) = c.poll_request(now) {
            let mut r = o.answer(&s.request, None);
            r.items.iter_mut().for_each(|it| it.ttl = Some(0));
            c.on_response(s.id, r, now);
            n += 1;
        }
        n
    };
    assert_eq!(c.load_tile(t, true, 0, |_, _| {}), Ok(false));
    assert_eq!(answer(&mut c, 0), 1);
    c.release_tiles(&[t], 0);
    let mut fetched = 0;
    for now in 1..20 {
        let mut stale = Vec::new();
        assert_eq!(c.load_tile(t, false, now, |_, s| stale.push(s)), Ok(true));
        assert_eq!(stale, [true; 4]);
        fetched += answer(&mut c, now);
    }
    assert_eq!(fetched, 1, "refetched once, not on every read");
    // Once its read changes with time (expired past the window), it is reported and loaded
    // again.
    let at = c.next_wakeup(20).expect("the tile's wake-up");
    assert!(at <= 19 + 60_000, "{at}");
    c.handle_timeout(at);
    assert_eq!(c.take_changed_tiles(), ChangedTiles::Tiles(vec![t]));
}

/// `o`'s answer to `request` as a server whose answers hold at most `fits` tiles: the
/// first `fits` requested tiles (their lists and items), nothing for the ids asked for, the
/// rest left out as not fitting (`response_full`).
fn answer_in_part(
    o: &Origin<String>,
    request: &crate::protocol::BatchRequest,
    fits: usize,
) -> BatchResponse<String> {
    let mut r = o.answer(request, None);
    let kept: Vec<TileId> = request.tiles.iter().copied().take(fits).collect();
    r.tiles.retain(|l| kept.contains(&l.tile));
    let listed: Vec<&String> = r.tiles.iter().flat_map(|l| &l.ids).collect();
    let items = std::mem::take(&mut r.items);
    r.items = items
        .into_iter()
        .filter(|it| listed.contains(&&it.id))
        .collect();
    r.missing.clear();
    if r.tiles.len() < request.tiles.len() || !request.ids.is_empty() {
        r.left_out = Some(crate::protocol::ErrorCode::ResponseFull);
    }
    r
}

/// An answer that left out what did not fit in it (`response_full`, the server's answer
/// bound) after answering part of the request: the tiles it left out are asked again at
/// once in a later request, with no error and no backoff, and the view completes at the
/// same instant. Before, they backed off as failed tiles with an error each time (and a
/// server that always filled its answer kept the view from completing for longer and
/// longer).
#[test]
fn tiles_an_answer_had_no_room_for_are_asked_again_at_once_and_the_view_completes() {
    let o = origin();
    let mut c = client(ClientConfig {
        planner: no_prefetch(),
        batch: BatchConfig {
            coalesce_levels: 0,
            ..BatchConfig::default()
        },
        ..ClientConfig::default()
    });
    c.set_viewport(view(2.5), 0, |_, _| {});
    let visible = c.visible_tiles().len();
    assert!(visible >= 9, "{visible} tiles");
    let mut requests = 0;
    while let Some(t) = c.poll_request(0) {
        requests += 1;
        assert!(requests <= visible, "asked again in a loop");
        let r = answer_in_part(&o, &t.request, 2);
        let whole = r.tiles.len() == t.request.tiles.len();
        let taken = c.on_response(t.id, r, 0);
        assert_eq!(taken == Answered::Taken, whole, "{taken:?}");
    }
    assert!(c.is_complete(), "the view completes at once");
    let evs = events(&mut c);
    assert!(evs.iter().any(|e| matches!(e, Event::Complete)));
    assert!(errors_of(evs).is_empty(), "no error");
    assert_eq!(c.stats().errors, 0);
    assert_eq!(requests, visible.div_ceil(2));
}

/// An id a `response_full` answer left out is asked again in a later request; one that
/// answered nothing of its request is not taken as room for another try (that would loop
/// at once for ever): its tiles back off as any answer leaving tiles out.
#[test]
fn ids_no_room_was_left_for_are_asked_again_and_an_answer_of_nothing_backs_off() {
    let o = origin();
    let mut c = client(ClientConfig {
        planner: no_prefetch(),
        ..ClientConfig::default()
    });
    c.set_viewport(view(0.5), 0, |_, _| {});
    c.request_ids(["i0", "i5"], 0);
    let t = c.poll_request(0).unwrap();
    assert!(!t.request.tiles.is_empty() && t.request.ids.len() == 2);
    let r = answer_in_part(&o, &t.request, t.request.tiles.len());
    assert_eq!(c.on_response(t.id, r, 0), Answered::TakenInPart);
    let again = c.poll_request(0).expect("the ids asked again at once");
    assert_eq!(again.request.ids, ["i0", "i5"]);
    assert!(again.request.tiles.is_empty());
    let r = o.answer(&again.request, None);
    assert_eq!(c.on_response(again.id, r, 0), Answered::Taken);
    assert!(c.get("i5", 0).is_some());
    assert!(errors_of(events(&mut c)).is_empty());

    // Nothing answered: the tiles back off and are an error, the breaker is not opened.
    c.set_viewport(view_east(0.5, 4), 1, |_, _| {});
    let t = c.poll_request(1).unwrap();
    let r = answer_in_part(&o, &t.request, 0);
    assert_eq!(c.on_response(t.id, r, 1), Answered::Taken);
    assert!(c.poll_request(1).is_none(), "not asked again at once");
    assert_eq!(errors_of(events(&mut c)).len(), 1);
}

/// A tile's refresh by id (`Work::Ids`) that a `response_full` answer left part of out is
/// asked again at once for the rest, with no error, as a tile the answer had no room for
/// is. Before, the tile, still not showable, was taken as one the answer did not keep: an
/// error (fails without the fix: "no error").
#[test]
fn a_refresh_by_id_an_answer_had_no_room_for_is_asked_again_at_once() {
    let o = origin();
    let mut c = client(ClientConfig {
        planner: no_prefetch(),
        ..ClientConfig::default()
    });
    c.set_viewport(view(0.8), 0, |_, _| {});
    answer_all(&mut c, &o, 0);
    assert!(c.is_complete());
    assert_eq!(c.cache().tile_of("i84"), c.cache().tile_of("i85"));
    events(&mut c);
    c.invalidate(Invalidate::Ids(&["i84", "i85"]), 10);
    let t = c.poll_request(10).expect("the tile's refresh by id");
    assert!(t.request.tiles.is_empty());
    assert_eq!(t.request.ids.len(), 2, "{:?}", t.request.ids);
    // Room for the first id only.
    let mut r = o.answer(&t.request, None);
    let first = t.request.ids[0].clone();
    r.items.retain(|it| it.id == first);
    r.left_out = Some(crate::protocol::ErrorCode::ResponseFull);
    assert_eq!(c.on_response(t.id, r, 20), Answered::TakenInPart);
    assert!(errors_of(events(&mut c)).is_empty(), "no error");
    let again = c.poll_request(20).expect("the rest asked again at once");
    assert_eq!(again.request.ids, [t.request.ids[1].clone()]);
    let r = o.answer(&again.request, None);
    assert_eq!(c.on_response(again.id, r, 20), Answered::Taken);
    assert!(c.is_complete());
    assert!(errors_of(events(&mut c)).is_empty());
}

/// `o`'s answer to `request`, refusing `refused` as a server refuses a data tile over its
/// `--max-tile-items`: a partial answer leaving out the list covering it (and that list's
/// items) as `payload_too_large`, the rest answered.
fn refusing(
    o: &Origin<String>,
    request: &crate::protocol::BatchRequest,
    refused: TileId,
) -> BatchResponse<String> {
    let mut r = o.answer(request, None);
    if request.tiles.iter().any(|t| t.contains(refused)) {
        r.tiles.retain(|l| !l.tile.contains(refused));
        let kept: HashSet<String> = r.tiles.iter().flat_map(|l| l.ids.clone()).collect();
        r.items
            .retain(|it| kept.contains(&it.id) || request.ids.contains(&it.id));
        r.left_out = Some(crate::protocol::ErrorCode::PayloadTooLarge);
    }
    r
}

/// Drives `c` from `from` to before `to` as a shell at rest does (requests answered by
/// `answer` at once, each wake-up taken): the requests carrying `tile`, and the errors
/// naming it.
fn run_refusing(
    c: &mut Client<String>,
    o: &Origin<String>,
    tile: TileId,
    (from, to): (u64, u64),
) -> (usize, usize) {
    let (mut asked, mut told, mut now) = (0, 0, from);
    loop {
        c.handle_timeout(now);
        while let Some(t) = c.poll_request(now) {
            asked += usize::from(t.request.tiles.iter().any(|r| r.contains(tile)));
            let r = refusing(o, &t.request, tile);
            c.on_response(t.id, r, now);
        }
        told += errors_of(events(c))
            .iter()
            .filter(|e| e.tiles.iter().any(|r| r.contains(tile)))
            .count();
        match c.next_wakeup(now) {
            Some(at) if at < to => now = at.max(now + 1),
            _ => return (asked, told),
        }
    }
}

/// A visible data tile the server refuses as too large on its own (`payload_too_large`:
/// over its `--max-tile-items`) is held for a tile TTL, as the server and the edge hold it:
/// asked for once within a coarse tile, once on its own, then not again until the TTL has
/// passed or something could have changed it (an invalidation covering it, another tier).
/// The view stays incomplete with it missing, and the refusal is reported once. Before, it
/// was asked for again after each backoff (every 5 to 10 s) for as long as it was in view,
/// each time a request, an origin read of a dense tile and another error.
#[test]
fn a_data_tile_too_large_on_its_own_is_held_for_a_tile_ttl() {
    let o = origin();
    let mut c = client(ClientConfig {
        planner: no_prefetch(),
        ..ClientConfig::default()
    });
    let dense = seattle();
    c.set_viewport(view(2.0), 0, |_, _| {});
    // Item and tile TTL 300 s: what is shown expires then, which asks for everything again.
    let (asked, told) = run_refusing(&mut c, &o, dense, (0, 299_000));
    assert_eq!(
        (asked, told),
        (2, 1),
        "within a coarse tile, on its own, then held"
    );
    let out = c.set_viewport(view(2.0), 299_000, |_, _| {});
    assert!(!out.complete && out.missing == [dense], "{:?}", out.missing);
    assert!(!c.is_complete());
    // The TTL over, it is asked for again: once, refused, held again.
    let (asked, told) = run_refusing(&mut c, &o, dense, (299_000, 310_000));
    assert_eq!((asked, told), (1, 1));
    // An invalidation that covers it (it may have shrunk) asks again (after its backoff),
    // and so does another tier; one that does not cover it does not.
    let elsewhere = dense.offset(5, 5).unwrap();
    c.invalidate(Invalidate::Tiles(&[elsewhere]), 310_000);
    assert_eq!(run_refusing(&mut c, &o, dense, (310_000, 330_000)), (0, 0));
    c.invalidate(Invalidate::Tiles(&[dense.parent().unwrap()]), 330_000);
    assert_eq!(run_refusing(&mut c, &o, dense, (330_000, 350_000)), (1, 1));
    c.set_access(Access::Registered, 350_000);
    assert_eq!(run_refusing(&mut c, &o, dense, (350_000, 370_000)), (1, 1));
    c.invalidate(Invalidate::All, 370_000);
    assert_eq!(run_refusing(&mut c, &o, dense, (370_000, 390_000)), (1, 1));
}

/// With one request at a time (`batch.maxInFlight: 1`), a visible data tile held as too
/// large does not keep prefetch waiting: the ring around the view is fetched while the
/// tile is held. Before, the held tile in the foreground queue counted as foreground work
/// waiting for the slot, so nothing was prefetched for the whole hold (a tile TTL, 300 s).
#[test]
fn with_one_request_at_a_time_a_tile_held_as_too_large_does_not_stop_prefetch() {
    let o = origin();
    let mut c = client(ClientConfig {
        batch: BatchConfig {
            max_in_flight: 1,
            ..BatchConfig::default()
        },
        ..ClientConfig::default()
    });
    let dense = seattle();
    c.set_viewport(view(2.0), 0, |_, _| {});
    let (mut prefetched, mut now) = (0, 0);
    loop {
        c.handle_timeout(now);
        while let Some(t) = c.poll_request(now) {
            prefetched += usize::from(t.kind == Kind::Prefetch);
            let r = refusing(&o, &t.request, dense);
            c.on_response(t.id, r, now);
        }
        match c.next_wakeup(now) {
            Some(at) if at < 60_000 => now = at.max(now + 1),
            _ => break,
        }
    }
    assert!(c.held_too_large(dense, now));
    assert!(prefetched > 0, "nothing prefetched while the tile is held");
}

/// A whole `413` for a request that asked for one data tile alone says that tile is too
/// large to serve: held for a tile TTL as above, not asked for again every 5 to 10 s.
#[test]
fn a_data_tile_refused_whole_with_a_413_on_its_own_is_held_for_a_tile_ttl() {
    let mut c = client(ClientConfig {
        planner: no_prefetch(),
        ..ClientConfig::default()
    });
    c.set_viewport(view(0.4), 0, |_, _| {});
    assert_eq!(c.visible_tiles(), [seattle()]);
    let (mut asked, mut now) = (0, 0);
    while now < 299_000 {
        c.handle_timeout(now);
        while let Some(t) = c.poll_request(now) {
            asked += 1;
            let too_large = Failure::Http {
                status: 413,
                retry_after_ms: None,
            };
            c.on_failure(t.id, too_large, now);
        }
        match c.next_wakeup(now) {
            Some(at) => now = at.max(now + 1),
            None => break,
        }
    }
    assert_eq!(asked, 1);
    assert_eq!(errors_of(events(&mut c)).len(), 1);
    assert!(!c.set_viewport(view(0.4), now, |_, _| {}).complete);
}

/// A visible tile's refresh by id (its item invalidated, so the tile cannot be shown) that a
/// partial answer sheds (`overloaded`: the ids left out) failed as the tile would have: it
/// is retried after a backoff, within the retries, then asked again by the next rounds
/// after a growing backoff. Before, the batcher took it as answered and the client queued
/// it again at once: a request per round trip, at the same instant, for as long as the
/// server shed load, each an error saying it would retry.
#[test]
fn a_refresh_by_id_a_partial_answer_sheds_backs_off_as_a_tile_it_sheds_would() {
    let o = origin();
    let mut c = client(ClientConfig {
        planner: no_prefetch(),
        ..ClientConfig::default()
    });
    c.set_viewport(view(0.4), 0, |_, _| {});
    answer_all(&mut c, &o, 0);
    assert!(c.is_complete());
    let id = "i84"; // the first item of Seattle's tile
    c.invalidate(Invalidate::Ids(&[id]), 1);
    let (mut asked, mut now) = (Vec::new(), 1);
    while now < 60_000 && asked.len() < 100 {
        c.handle_timeout(now);
        while let Some(t) = c.poll_request(now).filter(|_| asked.len() < 100) {
            assert_eq!(t.request.ids, [id]);
            asked.push((now, t.attempt));
            let mut r = o.answer(&t.request, None);
            r.items.retain(|it| it.id != id);
            r.left_out = Some(crate::protocol::ErrorCode::Overloaded);
            c.on_response(t.id, r, now);
        }
        match c.next_wakeup(now) {
            Some(at) => now = at.max(now + 1),
            None => break,
        }
    }
    // Once, two retries, then one round every 5 to 10 s at most.
    assert_eq!(
        asked[..3].iter().map(|a| a.1).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    assert!(asked.windows(2).all(|w| w[1].0 > w[0].0), "{asked:?}");
    assert!(
        asked.len() < 20,
        "{} requests in a minute: {asked:?}",
        asked.len()
    );
    // Answered, the view is complete.
    c.handle_timeout(now + 10_000);
    answer_all(&mut c, &o, now + 10_000);
    assert!(c.is_complete());
}

/// A server that allows fewer data tiles a request than the package's default request
/// covers (started with `--max-data-tiles 256`, the default before 2026-12-06: the core's
/// own rule, `Plan::new`, refuses more with a 400) still completes a zoomed-out view: the
/// client asks one zoom finer at once after each refusal, and no coarser for a tile TTL
/// (the second view, a second later, is not refused again).
#[test]
fn a_view_completes_against_a_server_that_refuses_the_default_coarse_tiles() {
    use crate::proxy::policy::{CoarseMiss, Plan, Rules};
    let o = origin();
    let rules = Rules {
        data_zoom: Z,
        split_levels: 3,
        coarse_miss: CoarseMiss::FetchDataTiles,
        max_data_tiles: 256,
    };
    let mut c = client(ClientConfig {
        planner: no_prefetch(),
        ..ClientConfig::default()
    });
    let mut refused = Vec::new();
    for (i, w) in [24.0, 25.5].into_iter().enumerate() {
        let now = i as u64 * 1000;
        let out = c.set_viewport(fast_path::moved(0.0, 0.0, w, 12.5), now, |_, _| {});
        assert!(
            out.too_wide.is_none() && c.visible_tiles().len() > 256,
            "{:?} {}",
            out.too_wide,
            c.visible_tiles().len()
        );
        for _ in 0..1000 {
            let Some(t) = c.poll_request(now) else { break };
            if Plan::new(&t.request.tiles, rules).is_ok() {
                c.on_response(t.id, o.answer(&t.request, None), now);
            } else {
                refused.push(t.request.tiles.iter().map(|t| t.z()).min());
                let bad = Failure::Http {
                    status: 400,
                    retry_after_ms: None,
                };
                c.on_failure(t.id, bad, now);
            }
        }
        assert!(c.is_complete(), "view {i} incomplete after {refused:?}");
    }
    // Refused once at zoom 11 (16 tiles of 64 data tiles), then asked at 12 (16 of 16).
    assert_eq!(refused, [Some(Z - 3)]);
}

#[test]
fn prefetch_counts_each_data_tile_once_and_keeps_the_last_destinations() {
    let mut c = client(ClientConfig::default());
    let t = seattle();
    // A tile given twice, as overlapping coarse tiles give their data tiles, is one tile not
    // fresh, queued once.
    assert_eq!(c.prefetch(&[t, t, t.offset(1, 0).unwrap(), t], 0), 2);
    assert_eq!(c.destinations, vec![t, t.offset(1, 0).unwrap()]);
    // Asked again: still not fresh, and not queued twice.
    assert_eq!(c.prefetch(&[t], 0), 1);
    assert_eq!(c.destinations.len(), 2);
    // A list longer than MAX_DESTINATIONS keeps its last ones, in order; every one counts.
    let route: Vec<TileId> = (0..5000u32)
        .map(|i| TileId::new(Z, i, 100).unwrap())
        .collect();
    assert_eq!(c.prefetch(&route, 0), 5000);
    assert_eq!(c.destinations.len(), MAX_DESTINATIONS);
    assert_eq!(c.destinations[..], route[5000 - MAX_DESTINATIONS..]);
}

#[test]
fn get_many_is_get_of_each_id_with_the_misses_asked_for_once() {
    let mut c = client(ClientConfig::default().with_tile_zoom(Z));
    let mut found = Vec::new();
    c.get_many(["a", "b", "a", "", "c"], 0, |l| found.push(l.is_some()));
    assert_eq!(found, [false; 5]);
    // Each lookup counted as `get` counts it; an id given twice is asked for once, and one
    // the protocol refuses never.
    assert_eq!(c.stats().cache.misses, 5);
    let sent: Vec<Transmit> = std::iter::from_fn(|| c.poll_request(0)).collect();
    let ids: Vec<&String> = sent.iter().flat_map(|t| &t.request.ids).collect();
    assert_eq!(ids, ["a", "b", "c"]);
    // Asked again while they are out: nothing more is queued.
    c.get_many(["c", "a"], 0, |_| {});
    assert!(c.poll_request(0).is_none());
}

/// The shell's clock is a wall clock (`Date.now()`), which can step back (NTP, a user
/// fixing their clock): no wait may last longer than the delay it was given, whatever the
/// clock does, and no cached item may be served past its TTL (`crate::clock`). Each test
/// steps the clock back an hour in the middle of a wait.
mod clock_steps {
    use super::*;
    use proptest::prelude::*;

    /// A wall time (2027) and an hour.
    const T: u64 = 1_800_000_000_000;
    const HOUR: u64 = 3_600_000;

    fn network() -> Failure {
        Failure::Network("connection reset".into())
    }

    /// Drives `c` at rest from wall time `from` until `to`, as a shell does: each wake-up
    /// taken, each request answered by `o` at once, or failed (`fail`). The wall times the
    /// requests went out at, with their kinds.
    fn drive(
        c: &mut Client<String>,
        o: &Origin<String>,
        (from, to): (u64, u64),
        fail: bool,
    ) -> Vec<(u64, Kind)> {
        let (mut sent, mut now) = (Vec::new(), from);
        loop {
            c.handle_timeout(now);
            while let Some(t) = c.poll_request(now) {
                sent.push((now, t.kind));
                if fail {
                    c.on_failure(t.id, network(), now);
                } else {
                    c.on_response(t.id, o.answer(&t.request, None), now);
                }
            }
            match c.next_wakeup(now) {
                Some(at) if at < to => now = at.max(now + 1),
                _ => return sent,
            }
        }
    }

    #[test]
    fn a_retry_waits_its_backoff_and_no_more() {
        let o = origin();
        let mut c = client(ClientConfig {
            planner: no_prefetch(),
            ..ClientConfig::default()
        });
        c.set_viewport(view(1.0), T, |_, _| {});
        let t = c.poll_request(T).unwrap();
        c.on_failure(t.id, network(), T);
        let delay = c.next_wakeup(T).unwrap() - T;
        assert!((1..=200).contains(&delay), "a first backoff: {delay} ms");
        // The wall clock steps back an hour: the retry is still `delay` away.
        let now = T - HOUR;
        assert_eq!(c.next_wakeup(now), Some(now + delay));
        assert!(
            c.poll_request(now + delay - 1).is_none(),
            "not before its backoff"
        );
        c.handle_timeout(now + delay);
        let again = c
            .poll_request(now + delay)
            .expect("the retry, after its backoff");
        assert_eq!(again.attempt, 1);
        c.on_response(again.id, o.answer(&again.request, None), now + delay);
        assert!(c.is_complete());
    }

    #[test]
    fn a_request_times_out_at_its_deadline() {
        let mut c = client(ClientConfig {
            planner: no_prefetch(),
            ..ClientConfig::default()
        });
        c.set_viewport(view(1.0), T, |_, _| {});
        let t = c.poll_request(T).unwrap();
        let timeout = BatchConfig::default().timeout_ms;
        let now = T - HOUR;
        assert_eq!(c.next_wakeup(now), Some(now + timeout));
        c.handle_timeout(now + timeout);
        assert_eq!(c.poll_cancel(), Some(t.id), "overdue");
    }

    /// The breaker holds prefetch back for its cool-down, not an hour more.
    #[test]
    fn the_breaker_lets_a_probe_through_after_its_cooldown() {
        let o = origin();
        let mut c = client(ClientConfig::default());
        c.set_viewport(view(1.0), T, |_, _| {});
        // Everything fails for a second: the breaker opens.
        let sent = drive(&mut c, &o, (T, T + 1_000), true);
        assert!(c.stats().breaker_open, "{sent:?}");
        let opened = sent.last().unwrap().0;
        // Back an hour; the backend still fails. A prefetch goes out as a probe within the
        // longest cool-down (60 s).
        let from = opened - HOUR;
        let sent = drive(&mut c, &o, (from, from + 61_000), true);
        assert!(
            sent.iter().any(|&(_, k)| k == Kind::Prefetch),
            "no probe within the cool-down: {sent:?}"
        );
    }

    /// A data tile refused as too large is held for a tile TTL, not an hour more.
    #[test]
    fn a_tile_too_large_is_held_for_a_tile_ttl_and_no_more() {
        let o = origin();
        let mut c = client(ClientConfig {
            planner: no_prefetch(),
            ..ClientConfig::default()
        });
        let dense = seattle();
        c.set_viewport(view(2.0), T, |_, _| {});
        assert_eq!(run_refusing(&mut c, &o, dense, (T, T + 1_000)), (2, 1));
        assert!(c.held_too_large(dense, T + 1_000));
        // Back an hour: held until the TTL (300 s) is over, then asked for again.
        let from = T + 1_000 - HOUR;
        assert!(c.held_too_large(dense, from), "held");
        assert_eq!(
            run_refusing(&mut c, &o, dense, (from, from + 298_000)),
            (0, 0)
        );
        assert!(!c.held_too_large(dense, from + 300_000), "the hold is over");
        assert_eq!(
            run_refusing(&mut c, &o, dense, (from + 298_000, from + 310_000)),
            (1, 1)
        );
    }

    /// A cached item lives its TTL in wall time that passed: a step back adds nothing to it
    /// (and a step forward counts).
    #[test]
    fn a_cached_item_lives_its_ttl_and_no_more() {
        let o = origin();
        let mut c = client(ClientConfig {
            planner: no_prefetch(),
            ..ClientConfig::default()
        });
        c.set_viewport(view(1.0), T, |_, _| {});
        answer_all(&mut c, &o, T);
        assert!(c.is_complete());
        events(&mut c);
        let mut id = String::new();
        c.view_items(T, |item, _| id = item.id().to_string());
        let ttl = CacheConfig::default().default_ttl_ms;
        let now = T - HOUR;
        assert!(c.get_cached(&id, now).is_some_and(|l| !l.stale), "fresh");
        // The view wakes when its items expire, and they are gone then.
        assert_eq!(c.next_wakeup(now), Some(T + ttl - HOUR));
        assert!(c.peek(&id, T + ttl - HOUR - 1).is_some());
        assert!(c.peek(&id, T + ttl - HOUR).is_none(), "served past its TTL");
        c.handle_timeout(T + ttl - HOUR);
        assert_eq!(events(&mut c), [Event::Updated]);
        assert!(c.get_cached(&id, T + ttl - HOUR).is_none());
        assert_eq!(c.tile_state(seattle(), T + ttl - HOUR), TileState::Missing);
        // Fetched again, then the clock steps forward a day: expired.
        answer_all(&mut c, &o, T + ttl - HOUR);
        assert!(c.get_cached(&id, T + ttl - HOUR).is_some());
        assert!(c.get_cached(&id, T + ttl - HOUR + 24 * HOUR).is_none());
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// The wall clock moves on this far.
        Wait(u64),
        /// It steps back this far.
        Back(u64),
        /// It steps forward this far.
        Forward(u64),
        /// The map pans this many tiles east.
        Pan(i64),
        /// The requests that may go out fail (`true`) or are answered.
        Send(bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u64..30_000).prop_map(Op::Wait),
            1 => (1u64..2 * HOUR).prop_map(Op::Back),
            1 => (1u64..2 * HOUR).prop_map(Op::Forward),
            1 => (-2i64..=2).prop_map(Op::Pan),
            3 => any::<bool>().prop_map(Op::Send),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        /// Whatever the wall clock does, no wake-up is further off than the longest wait
        /// the configuration gives (a breaker's longest cool-down here), and no item is
        /// served after its TTL has passed in wall time moved on (steps back not counted).
        #[test]
        fn no_wait_outlasts_its_length_and_no_item_its_ttl(
            ops in proptest::collection::vec(op(), 1..60),
        ) {
            let o = origin();
            let ttl = 20_000;
            let mut config = ClientConfig::default();
            config.cache.default_ttl_ms = ttl;
            config.cache.class_ttl_ms.clear();
            let longest = config.batch.breaker_max_cooldown_ms;
            let mut c = client(config);
            // Wall time, time moved on (steps back not counted), and the latter when each
            // item was last answered.
            let (mut now, mut moved, mut dx) = (T, 0u64, 0i64);
            let mut fetched: HashMap<String, u64> = HashMap::new();
            c.set_viewport(view_east(1.5, dx), now, |_, _| {});
            for op in ops {
                match op {
                    Op::Wait(ms) | Op::Forward(ms) => {
                        now += ms;
                        moved += ms;
                    }
                    Op::Back(ms) => now -= ms,
                    Op::Pan(d) => {
                        dx += d;
                        c.set_viewport(view_east(1.5, dx), now, |_, _| {});
                    }
                    Op::Send(fail) => {
                        while let Some(t) = c.poll_request(now) {
                            if fail {
                                c.on_failure(t.id, network(), now);
                            } else {
                                let r = o.answer(&t.request, None);
                                for item in &r.items {
                                    fetched.insert(item.id.clone(), moved);
                                }
                                c.on_response(t.id, r, now);
                            }
                        }
                    }
                }
                c.handle_timeout(now);
                if let Some(at) = c.next_wakeup(now) {
                    prop_assert!(at <= now + longest, "wakes {} ms on", at - now);
                }
                for (id, &at) in &fetched {
                    if moved >= at + ttl {
                        prop_assert!(c.peek(id, now).is_none(), "{} served past its TTL", id);
                    }
                }
            }
        }
    }
}

/// A payload the cache holds without its size (as the browser's slot of a JS object): the
/// size arrives beside it in the answer ([`Received`]), and is charged as a payload that
/// knows its own size is.
#[test]
fn a_payload_received_beside_its_size_is_charged_that_size() {
    struct Slot(u32);
    struct WithSize(u32, usize);
    impl Received<Slot> for WithSize {
        fn size_bytes(&self) -> usize {
            self.1
        }
        fn into_payload(self) -> Slot {
            Slot(self.0)
        }
    }
    let o = origin();
    let mut by_size: Client<Slot> = Client::new(ClientConfig::default()).unwrap();
    let mut own = client(ClientConfig::default());
    own.set_viewport(view(3.0), 0, |_, _| {});
    by_size.set_viewport(view(3.0), 0, |_, _| {});
    answer_all(&mut own, &o, 0);
    let mut received = std::collections::HashMap::new();
    while let Some(t) = by_size.poll_request(0) {
        let mut r = o.answer(&t.request, None);
        // Longer payloads than the origin's own, so a size not read from the answer shows.
        let items = std::mem::take(&mut r.items).into_iter().map(|it| {
            let slot = received.len() as u32 + 1;
            received.insert(it.id.clone(), slot);
            it.map_data(|d| WithSize(slot, d.len() + 100))
        });
        let r = BatchResponse {
            items: items.collect(),
            tiles: r.tiles,
            missing: r.missing,
            access: r.access,
            left_out: r.left_out,
        };
        assert_eq!(by_size.on_response(t.id, r, 0), Answered::Taken);
    }
    let n = by_size.cache().len();
    assert!(n > 0 && n == own.cache().len() && n == received.len());
    assert_eq!(by_size.cache().bytes(), own.cache().bytes() + 100 * n);
    for (id, slot) in received {
        let held = by_size.cache().peek(&id, Access::Agent, 0).unwrap().item;
        let theirs = own.cache().peek(&id, Access::Agent, 0).unwrap().item;
        assert_eq!(
            held.payload().0,
            slot,
            "the payload stored is the one received"
        );
        assert_eq!(held.size_bytes(), theirs.size_bytes() + 100);
    }
}

/// A client whose requests name data tiles (a coarse tile only when every data tile under
/// it is queued), with its prefetch limited to `popular`.
fn data_tile_client(popular: Option<crate::planner::PopularTiles>) -> Client<String> {
    let mut c = client(ClientConfig {
        batch: BatchConfig {
            coalesce_min_share: 100,
            ..BatchConfig::default()
        },
        ..ClientConfig::default()
    });
    c.set_popular_tiles(popular).unwrap();
    c
}

/// With popular tiles set, prefetch asks for those alone; the view is asked for wherever
/// it is; `None` lifts the limit; a list finer than the data tiles is refused.
#[test]
fn popular_tiles_limit_prefetch_and_never_the_view() {
    use crate::planner::PopularTiles;
    let o = origin();
    let east = seattle().offset(1, 0).unwrap();
    // The view is a tile away from the popular corner: its own tiles are not popular.
    let corner = seattle().offset(-3, -3).unwrap();
    let popular = PopularTiles::new([east, corner]);
    let mut c = data_tile_client(Some(popular.clone()));
    c.set_viewport(view(1.0), 0, |_, _| {});
    let visible = c.visible_tiles().to_vec();
    assert!(!visible.is_empty() && visible.iter().all(|t| !popular.contains(*t)));
    let asked = answer_all_asked(&mut c, &o, 0);
    assert!(c.is_complete(), "the view is asked for, popular or not");
    let prefetched: Vec<TileId> = asked.into_iter().filter(|t| !visible.contains(t)).collect();
    assert_eq!(prefetched, [east], "only the popular tile in reach");

    // Without the list the same view prefetches its whole neighbourhood.
    let mut free = data_tile_client(None);
    free.set_viewport(view(1.0), 0, |_, _| {});
    let asked = answer_all_asked(&mut free, &o, 0);
    assert!(asked.len() > visible.len() + 1, "{asked:?}");

    // A tile finer than the data tiles: refused, the list kept.
    let fine = TileId::new(16, 1, 1).unwrap();
    let e = c
        .set_popular_tiles(Some(PopularTiles::new([east, fine])))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "popular tiles must be data tiles (zoom 14) or coarser ones, got one at zoom 16"
    );
    assert_eq!(c.planner().popular(), Some(&popular));

    // Lifted: the next view prefetches what the list left out.
    c.set_popular_tiles(None).unwrap();
    c.set_viewport(view_east(1.0, 1), 1, |_, _| {});
    let asked = answer_all_asked(&mut c, &o, 1);
    assert!(asked
        .iter()
        .any(|t| !popular.contains(*t) && !c.visible_tiles().contains(t)));
}

/// A round that found every tile it asked about fresh stands for the tiles it wanted
/// (`FreshTiles`): with popular tiles set, the tiles outside them were never asked about,
/// so a view that pans onto one is not taken as fresh and is fetched. Setting or lifting
/// the list replans the same view at once.
#[test]
fn a_tile_left_out_by_popular_tiles_is_not_taken_as_fresh() {
    use crate::planner::PopularTiles;
    let o = origin();
    let mut c = data_tile_client(Some(PopularTiles::new([seattle()])));
    c.set_viewport(view(0.9), 0, |_, _| {});
    answer_all(&mut c, &o, 0);
    // Every tile this round asks about (the view's, all popular) is fresh.
    c.set_viewport(view(0.8), 1, |_, _| {});
    assert!(c.poll_request(1).is_none());
    let east = seattle().offset(1, 0).unwrap();
    let out = c.set_viewport(view_east(0.9, 1), 2, |_, _| {});
    assert_eq!(c.visible_tiles(), [east]);
    assert!(!out.complete, "the tile east was never fetched");
    let asked = answer_all_asked(&mut c, &o, 2);
    assert_eq!(asked, [east]);
    assert!(c.is_complete());

    // The same view again within REPLAN_MS: with the list lifted it is planned anew, and
    // its neighbourhood prefetched.
    let mut c = data_tile_client(Some(PopularTiles::new([seattle()])));
    c.set_viewport(view(0.9), 0, |_, _| {});
    answer_all(&mut c, &o, 0);
    c.set_viewport(view(0.9), 1, |_, _| {});
    assert!(c.poll_request(1).is_none());
    c.set_popular_tiles(None).unwrap();
    c.set_viewport(view(0.9), 2, |_, _| {});
    let asked = answer_all_asked(&mut c, &o, 2);
    assert!(
        !asked.is_empty() && !asked.contains(&seattle()),
        "{asked:?}"
    );
    // And set again: nothing more.
    c.set_popular_tiles(Some(PopularTiles::new([seattle()])))
        .unwrap();
    c.set_viewport(view(0.9), 3, |_, _| {});
    assert!(c.poll_request(3).is_none());
}

/// An empty list of popular tiles stops the planner's prefetch; the view is still fetched.
#[test]
fn an_empty_list_of_popular_tiles_stops_prefetch_not_the_view() {
    use crate::planner::PopularTiles;
    let o = origin();
    let mut c = client(ClientConfig::default());
    c.set_popular_tiles(Some(PopularTiles::default())).unwrap();
    c.set_viewport(view(1.0), 0, |_, _| {});
    let visible = c.visible_tiles().to_vec();
    let asked = answer_all_asked(&mut c, &o, 0);
    assert!(c.is_complete());
    assert!(
        asked.iter().all(|t| visible.iter().any(|v| t.contains(*v))),
        "{asked:?}"
    );
}

/// A neighbour's list names x by key (x pushed out, then fetched again by id lying in t);
/// t's list names it, then t's next list leaves it out (x moved on): x is forgotten, and
/// out of u's list too, so the visible u stays complete (it was reported as a tile that
/// could not be kept, its loads ended, whenComplete rejected).
#[test]
fn a_list_that_forgets_an_item_a_neighbours_list_names_leaves_the_neighbour_complete() {
    let u = seattle();
    let t = u.offset(1, 0).unwrap();
    let at = |tile: TileId, f: f64| {
        unproject(
            TilePoint {
                x: tile.x() as f64 + f,
                y: tile.y() as f64 + f,
            },
            Z,
        )
    };
    let item = |id: &str, tile: TileId, f: f64| {
        let (lon, lat) = at(tile, f);
        Item {
            id: id.into(),
            lon,
            lat,
            class: "active".into(),
            access: Access::Public,
            ttl: Some(3600),
            data: "{}".to_string(),
        }
    };
    // a and b in u, c in t, and x in `x_in`.
    let origin = |x_in: TileId| {
        let items = vec![
            item("a", u, 0.2),
            item("b", u, 0.4),
            item("x", x_in, 0.6),
            item("c", t, 0.3),
        ];
        Origin::new(items).unwrap()
    };
    let (o1, o2) = (origin(u), origin(t));
    // x moved on, west of u (a tile not visible).
    let o3 = origin(u.offset(-5, 0).unwrap());
    let mut c = client(ClientConfig {
        planner: no_prefetch(),
        batch: BatchConfig {
            coalesce_levels: 0,
            ..BatchConfig::default()
        },
        ..ClientConfig::default()
    });
    // t's list lives 10 s, the others an hour.
    let answer = |c: &mut Client<String>, o: &Origin<String>, now: u64| -> Vec<TileId> {
        let mut asked = Vec::new();
        c.handle_timeout(now);
        while let Some(r) = c.poll_request(now) {
            asked.extend(r.request.tiles.iter().copied());
            let mut resp = o.answer(&r.request, Some(3600));
            for l in &mut resp.tiles {
                if l.tile == t {
                    l.ttl = Some(10);
                }
            }
            c.on_response(r.id, resp, now);
        }
        asked
    };
    c.set_viewport(view(1.5), 0, |_, _| {});
    answer(&mut c, &o1, 0);
    assert!(c.is_complete());
    events(&mut c);
    // x pushed out (here: an invalidation of its id); asked for by id, it lies in t now.
    c.invalidate(Invalidate::Ids(&["x"]), 1);
    answer(&mut c, &o2, 1);
    assert!(c.is_complete(), "u does not wait for x, which lies in t");
    // t's list expires: fetched again, it names x.
    let asked = answer(&mut c, &o2, 11_000);
    assert_eq!(asked, [t]);
    assert!(c.is_complete());
    events(&mut c);
    // t's list expires again: x moved on, the list leaves it out.
    let asked = answer(&mut c, &o3, 22_000);
    assert_eq!(asked, [t]);
    let errs = errors_of(events(&mut c));
    assert!(errs.is_empty(), "{errs:?}");
}
