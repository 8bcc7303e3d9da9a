//! End-to-end behaviour of the sans-IO client engine against an in-memory origin: the
//! loop every shell (wasm, edge, simulator) runs, with time passed in by hand.

use std::collections::{BTreeSet, HashSet};

use tilewarm::access::Access;
use tilewarm::batch::{Failure, Kind};
use tilewarm::cache::Invalidate;
use tilewarm::client::{Client, ClientConfig, Event, Transmit};
use tilewarm::origin::{Origin, OriginItem};
use tilewarm::planner::Viewport;
use tilewarm::tile::{TileId, TilePoint};

const Z: u8 = 14;

/// A grid of items around Seattle: `per_tile` items in every data tile of a 12 x 12 block,
/// every third one `off_market`, every seventh `agent` only.
fn city(per_tile: u32) -> Origin<String> {
    let base = TileId::from_lon_lat(-122.3321, 47.6062, Z).unwrap();
    let mut items = Vec::new();
    for dy in -6i64..6 {
        for dx in -6i64..6 {
            let t = base.offset(dx, dy).unwrap();
            for k in 0..per_tile {
                let f = (k as f64 + 0.5) / per_tile as f64;
                let (lon, lat) = tilewarm::tile::unproject(
                    TilePoint {
                        x: t.x() as f64 + f,
                        y: t.y() as f64 + 1.0 - f,
                    },
                    Z,
                );
                let n = items.len();
                items.push(OriginItem {
                    id: format!("h{n}"),
                    lon,
                    lat,
                    class: if n % 3 == 0 {
                        "off_market".into()
                    } else {
                        "active".into()
                    },
                    access: if n % 7 == 0 {
                        Access::Agent
                    } else {
                        Access::Public
                    },
                    ttl: None,
                    data: format!("{{\"price\":{}}}", 100_000 + n),
                });
            }
        }
    }
    Origin::new(items).unwrap()
}

/// A viewport of `w` x `h` data tiles centred at (cx, cy) tile units from Seattle's tile.
fn view(cx: f64, cy: f64, w: f64, h: f64) -> Viewport {
    let base = TileId::from_lon_lat(-122.3321, 47.6062, Z).unwrap();
    let (x, y) = (base.x() as f64 + 0.5 + cx, base.y() as f64 + 0.5 + cy);
    let (west, north) = tilewarm::tile::unproject(
        TilePoint {
            x: x - w / 2.0,
            y: y - h / 2.0,
        },
        Z,
    );
    let (east, south) = tilewarm::tile::unproject(
        TilePoint {
            x: x + w / 2.0,
            y: y + h / 2.0,
        },
        Z,
    );
    Viewport::new(west, south, east, north, 14.5).unwrap()
}

struct Harness {
    client: Client<String>,
    origin: Origin<String>,
    now: u64,
    sent: Vec<Transmit>,
}

impl Harness {
    fn new(config: ClientConfig) -> Harness {
        Harness {
            client: Client::new(config).unwrap(),
            origin: city(5),
            now: 1_000_000,
            sent: Vec::new(),
        }
    }

    fn set(&mut self, vp: Viewport) -> (tilewarm::client::ViewOutcome, BTreeSet<String>) {
        let mut ids = BTreeSet::new();
        let out = self.client.set_viewport(vp, self.now, |item, _| {
            ids.insert(item.id().to_string());
        });
        (out, ids)
    }

    fn items_in_view(&mut self) -> BTreeSet<String> {
        let mut ids = BTreeSet::new();
        self.client.view_items(self.now, |item, _| {
            ids.insert(item.id().to_string());
        });
        ids
    }

    /// Takes the events; how many say that answered tiles could not be kept.
    fn kept_errors(&mut self) -> usize {
        self.events()
            .iter()
            .filter(|e| {
                matches!(e, Event::Error(f)
                if matches!(&f.failure, Failure::Invalid(m) if m.contains("could not be kept")))
            })
            .count()
    }

    /// Jumps the clock to the client's next wake-up and handles its timeouts; false when
    /// nothing is pending.
    fn wake(&mut self) -> bool {
        let Some(at) = self.client.next_wakeup(self.now) else {
            return false;
        };
        self.now = at;
        self.client.handle_timeout(at);
        true
    }

    /// Sends everything that may go out, answering each from the origin, until quiet.
    fn serve_all(&mut self) -> Vec<Transmit> {
        let mut all = Vec::new();
        while let Some(s) = self.client.poll_request(self.now) {
            all.push(s);
        }
        let mut i = 0;
        while i < all.len() {
            let s = all[i].clone();
            let resp = self.origin.answer(&s.request, None);
            self.client.on_response(s.id, resp, self.now);
            while let Some(s) = self.client.poll_request(self.now) {
                all.push(s);
            }
            i += 1;
        }
        self.sent.extend(all.iter().cloned());
        all
    }

    /// What the origin says the view holds, for the client's tier.
    fn truth(&self) -> BTreeSet<String> {
        let mut ids = BTreeSet::new();
        for &t in self.client.visible_tiles() {
            for it in self.origin.tile_items(t, self.client.access()) {
                ids.insert(it.id.clone());
            }
        }
        ids
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.client.poll_event()).collect()
    }

    /// Answers the next request from the origin but its last tile, left out as `code`
    /// with its items: that tile.
    fn answer_leaving_the_last_out(&mut self, code: tilewarm::protocol::ErrorCode) -> TileId {
        let s = self.client.poll_request(self.now).unwrap();
        let mut partial = self.origin.answer(&s.request, None);
        let dropped = partial.tiles.pop().unwrap();
        partial.items.retain(|it| !dropped.ids.contains(&it.id));
        partial.left_out = Some(code);
        self.client.on_response(s.id, partial, self.now);
        dropped.tile
    }

    /// Serves all that goes out at once, none of which may ask for `t` (`context` said if
    /// one does), then moves to the next wake-up: the request asking for `t` then.
    fn asked_again_after_backoff(&mut self, t: TileId, context: &str) -> Transmit {
        let at_once = self.serve_all();
        assert!(
            at_once.iter().all(|s| !s.request.tiles.contains(&t)),
            "{context}: {at_once:?}"
        );
        self.now = self.client.next_wakeup(self.now).unwrap();
        std::iter::from_fn(|| self.client.poll_request(self.now))
            .find(|s| s.request.tiles.contains(&t))
            .unwrap_or_else(|| panic!("{context}: {t} is not asked for after its backoff"))
    }
}

#[test]
fn cold_view_fetches_once_then_shows_exactly_the_origin_items() {
    let mut h = Harness::new(ClientConfig::default());
    let (out, ids) = h.set(view(0.0, 0.0, 3.0, 2.0));
    assert!(!out.complete);
    assert!(ids.is_empty());
    assert_eq!(out.missing.len(), out.visible);
    let sent = h.serve_all();
    let fg: Vec<&Transmit> = sent.iter().filter(|s| s.kind == Kind::Foreground).collect();
    assert_eq!(fg.len(), 1, "all visible tiles in one foreground batch");
    // Every visible data tile is asked for, directly or through a coarser tile (complete
    // 2x2 or 4x4 groups are coalesced), and nothing else.
    let visible = h.client.visible_tiles().to_vec();
    for t in &visible {
        assert!(
            fg[0].request.tiles.iter().any(|r| r.contains(*t)),
            "{t} not requested"
        );
    }
    for r in &fg[0].request.tiles {
        assert!(visible.iter().any(|t| r.contains(*t)), "{r} is not visible");
    }
    assert!(fg[0].request.tiles.len() <= out.visible);
    assert!(sent[0].kind == Kind::Foreground, "foreground goes first");
    let ev = h.events();
    assert!(
        ev.contains(&Event::Updated) && ev.contains(&Event::Complete),
        "{ev:?}"
    );
    assert!(h.client.is_complete());
    let shown = h.items_in_view();
    assert_eq!(shown, h.truth());
    assert!(!shown.is_empty());
}

#[test]
fn zoomed_out_miss_is_fetched_as_coarse_tiles_and_shown_exactly() {
    let mut h = Harness::new(ClientConfig::default());
    // 8 x 8 data tiles aligned on a zoom-11 tile: by default (`coalesce_levels` 3) that one
    // coarse tile covers them.
    let base = TileId::from_lon_lat(-122.3321, 47.6062, Z)
        .unwrap()
        .ancestor(11)
        .unwrap();
    let nw = base.descendants(Z).unwrap()[0];
    let origin_x = TileId::from_lon_lat(-122.3321, 47.6062, Z).unwrap();
    let (cx, cy) = (
        nw.x() as f64 + 4.0 - origin_x.x() as f64 - 0.5,
        nw.y() as f64 + 4.0 - origin_x.y() as f64 - 0.5,
    );
    let (out, _) = h.set(view(cx, cy, 7.98, 7.98));
    assert_eq!(out.visible, 64);
    let first = h.client.poll_request(h.now).unwrap();
    assert_eq!(first.kind, Kind::Foreground);
    assert_eq!(first.request.tiles, vec![base]);
    let r = h.origin.answer(&first.request, None);
    h.client.on_response(first.id, r, h.now);
    assert!(h.client.is_complete());
    assert_eq!(h.items_in_view(), h.truth());
}

#[test]
fn pan_one_tile_after_prefetch_needs_no_foreground_request() {
    let mut h = Harness::new(ClientConfig::default());
    h.set(view(0.0, 0.0, 3.0, 2.0));
    h.serve_all();
    h.now += 200;
    let (out, ids) = h.set(view(1.0, 0.0, 3.0, 2.0));
    assert!(
        out.complete,
        "the ring made the next view complete: {out:?}"
    );
    assert_eq!(ids, h.truth());
    let sent = h.serve_all();
    assert!(sent.iter().all(|s| s.kind == Kind::Prefetch), "{sent:?}");
    let st = h.client.stats();
    assert!(st.prefetch_tiles_used >= 2, "{st:?}");
    assert_eq!(st.viewports_complete, 1);
}

#[test]
fn in_flight_work_is_not_requested_twice() {
    let mut h = Harness::new(ClientConfig::default());
    h.set(view(0.0, 0.0, 3.0, 2.0));
    let first = h.client.poll_request(h.now).unwrap();
    h.set(view(0.0, 0.0, 3.0, 2.0));
    let mut later = Vec::new();
    while let Some(s) = h.client.poll_request(h.now) {
        later.push(s);
    }
    let first_tiles: HashSet<TileId> = first.request.tiles.iter().copied().collect();
    for s in &later {
        assert!(
            s.request.tiles.iter().all(|t| !first_tiles.contains(t)),
            "{s:?}"
        );
        assert_eq!(s.kind, Kind::Prefetch);
    }
}

#[test]
fn per_class_ttl_expiry_refetches_only_expired_ids() {
    let mut h = Harness::new(ClientConfig::default());
    h.set(view(0.0, 0.0, 1.0, 1.0));
    h.serve_all();
    // Just before 300 s everything is fresh.
    h.now += 299_999;
    let (out, _) = h.set(view(0.0, 0.0, 1.0, 1.0));
    assert!(out.complete);
    assert!(h.serve_all().iter().all(|s| s.kind == Kind::Prefetch));
    // At 300 s the active homes and the tile lists expire; off-market (4 h) stay.
    h.now += 1;
    let (out, ids) = h.set(view(0.0, 0.0, 1.0, 1.0));
    assert!(!out.complete, "expired items are not shown as fresh");
    let shown_off_market = ids
        .iter()
        .all(|id| h.origin.get(id).unwrap().class == "off_market");
    assert!(shown_off_market, "{ids:?}");
    let fg: Vec<Transmit> = h
        .serve_all()
        .into_iter()
        .filter(|s| s.kind == Kind::Foreground)
        .collect();
    assert_eq!(fg.len(), 1);
    assert!(!fg[0].request.tiles.is_empty() || !fg[0].request.ids.is_empty());
    assert!(h.client.is_complete());
    assert_eq!(h.items_in_view(), h.truth());
}

#[test]
fn access_downgrade_purges_and_upgrade_refetches() {
    let config = ClientConfig {
        access: Access::Agent,
        ..ClientConfig::default()
    };
    let mut h = Harness::new(config);
    h.set(view(0.0, 0.0, 2.0, 2.0));
    h.serve_all();
    let agent_view = h.items_in_view();
    assert!(agent_view
        .iter()
        .any(|id| h.origin.get(id).unwrap().access == Access::Agent));
    h.client.set_access(Access::Public, h.now);
    let public_view = h.items_in_view();
    assert!(public_view
        .iter()
        .all(|id| h.origin.get(id).unwrap().access == Access::Public));
    // Nothing above public is left in memory at all.
    for it in h.origin.items() {
        if it.access > Access::Public {
            assert!(!h.client.cache().contains(&it.id), "{} still cached", it.id);
        }
    }
    assert!(
        !h.client.is_complete(),
        "lists fetched as agent are not valid for public"
    );
    h.serve_all();
    assert_eq!(h.items_in_view(), h.truth());
    // Raising the tier makes public lists incomplete: they lack agent items.
    h.client.set_access(Access::Agent, h.now);
    assert!(!h.client.is_complete());
    h.serve_all();
    assert_eq!(h.items_in_view(), agent_view);
}

#[test]
fn late_answer_from_before_a_tier_change_is_dropped() {
    let config = ClientConfig {
        access: Access::Agent,
        ..ClientConfig::default()
    };
    let mut h = Harness::new(config);
    h.set(view(0.0, 0.0, 1.0, 1.0));
    let s = h.client.poll_request(h.now).unwrap();
    h.client.set_access(Access::Public, h.now);
    let resp = h.origin.answer(&s.request, None);
    h.client.on_response(s.id, resp, h.now);
    assert_eq!(h.client.stats().discarded_responses, 1);
    for it in h.origin.items() {
        if it.access > Access::Public {
            assert!(!h.client.cache().contains(&it.id));
        }
    }
}

#[test]
fn invalidation_requeues_visible_tiles() {
    let mut h = Harness::new(ClientConfig::default());
    h.set(view(0.0, 0.0, 1.0, 1.0));
    h.serve_all();
    let shown: Vec<String> = h.items_in_view().into_iter().collect();
    let one = shown[0].as_str();
    assert_eq!(h.client.invalidate(Invalidate::Ids(&[one]), h.now), 1);
    assert!(!h.client.is_complete());
    let fg: Vec<Transmit> = h
        .serve_all()
        .into_iter()
        .filter(|s| s.kind == Kind::Foreground)
        .collect();
    assert_eq!(fg.len(), 1);
    assert_eq!(
        fg[0].request.ids,
        vec![one.to_string()],
        "only the invalidated id is refetched"
    );
    assert!(h.client.is_complete());
    h.client.invalidate(Invalidate::All, h.now);
    assert!(h.items_in_view().is_empty());
}

#[test]
fn failures_retry_keep_cached_data_and_never_block() {
    let mut h = Harness::new(ClientConfig::default());
    h.set(view(0.0, 0.0, 1.0, 1.0));
    h.serve_all();
    h.events();
    let cached = h.items_in_view();
    // Pan to new ground; the backend fails every request.
    h.now += 100;
    let (out, _) = h.set(view(4.0, 0.0, 1.0, 1.0));
    assert!(!out.complete);
    let s = h.client.poll_request(h.now).unwrap();
    assert_eq!(s.kind, Kind::Foreground);
    h.client.on_failure(
        s.id,
        Failure::Http {
            status: 500,
            retry_after_ms: None,
        },
        h.now,
    );
    let ev = h.events();
    assert!(
        matches!(&ev[..], [Event::Error(e)] if e.will_retry && e.kind == Kind::Foreground),
        "{ev:?}"
    );
    // Not resent before the backoff; the wakeup says when.
    assert!(h
        .client
        .poll_request(h.now)
        .is_none_or(|s| s.kind == Kind::Prefetch));
    let at = h.client.next_wakeup(h.now).unwrap();
    assert!(at > h.now && at <= h.now + 200, "{at}");
    // Going back shows the cached view at once.
    let (back, ids) = h.set(view(0.0, 0.0, 1.0, 1.0));
    assert!(back.complete);
    assert_eq!(ids, cached);
    assert!(h.client.stats().errors >= 1);
}

#[test]
fn breaker_opens_for_prefetch_while_foreground_goes_on() {
    let mut h = Harness::new(ClientConfig::default());
    h.set(view(0.0, 0.0, 1.0, 1.0));
    // Fail every request until the breaker opens.
    for _ in 0..10 {
        while let Some(s) = h.client.poll_request(h.now) {
            h.client.on_failure(s.id, Failure::Timeout, h.now);
        }
        if h.client.stats().breaker_open {
            break;
        }
        h.now += 20_000;
        h.client.handle_timeout(h.now);
    }
    assert!(h.client.stats().breaker_open);
    // A new view still sends foreground, and nothing else.
    h.now += 10;
    h.set(view(5.0, 5.0, 1.0, 1.0));
    let sent: Vec<Transmit> = std::iter::from_fn(|| h.client.poll_request(h.now)).collect();
    assert!(!sent.is_empty());
    assert!(sent.iter().all(|s| s.kind == Kind::Foreground), "{sent:?}");
    // Answer them: success closes the breaker.
    for s in sent {
        let r = h.origin.answer(&s.request, None);
        h.client.on_response(s.id, r, h.now);
    }
    assert!(!h.client.stats().breaker_open);
}

/// An edge in front of an overloaded origin (or a server shedding load) answers what it
/// holds and leaves the rest out of a `200` whose `error` is `overloaded` (or
/// `rate_limited`, `upstream_timeout`; `upstream_error` for an origin that failed): the
/// client slows down as for the whole refusal. The
/// breaker opens (prefetch pauses, foreground goes on), what was answered is cached, and
/// the tiles left out are not asked for again at once. Before, each such answer closed the
/// breaker, so a backend shedding load this way was prefetched from at full speed.
#[test]
fn partial_answers_that_shed_load_open_the_breaker_as_whole_refusals_do() {
    use tilewarm::protocol::ErrorCode;
    for code in [
        ErrorCode::Overloaded,
        ErrorCode::RateLimited,
        ErrorCode::UpstreamTimeout,
        ErrorCode::UpstreamError,
    ] {
        let mut h = Harness::new(ClientConfig::default());
        h.set(view(0.0, 0.0, 2.0, 2.0));
        for _ in 0..10 {
            // The tiles left out at this instant: none is asked for again at once.
            let mut left_out = Vec::new();
            while let Some(s) = h.client.poll_request(h.now) {
                let again = s.request.tiles.iter().find(|t| left_out.contains(*t));
                assert_eq!(again, None, "{code}: asked again at once");
                // The last tile of each request left out, with its items.
                let mut r = h.origin.answer(&s.request, None);
                if let Some(l) = r.tiles.pop() {
                    r.items.retain(|it| !l.ids.contains(&it.id));
                    left_out.push(l.tile);
                }
                r.left_out = Some(code);
                h.client.on_response(s.id, r, h.now);
            }
            if h.client.stats().breaker_open {
                break;
            }
            h.now += 20_000;
            h.client.handle_timeout(h.now);
        }
        assert!(h.client.stats().breaker_open, "{code}");
        assert!(
            !h.client.cache().is_empty(),
            "{code}: what was answered is cached"
        );
        // A new view still sends foreground, and nothing else.
        h.now += 10;
        h.set(view(5.0, 5.0, 1.0, 1.0));
        let sent: Vec<Transmit> = std::iter::from_fn(|| h.client.poll_request(h.now)).collect();
        assert!(!sent.is_empty(), "{code}");
        assert!(
            sent.iter().all(|s| s.kind == Kind::Foreground),
            "{code}: {sent:?}"
        );
    }
}

/// A tile a partial answer left out to shed load (`overloaded`, `rate_limited`,
/// `upstream_timeout`) or because its origin failed (`upstream_error`) is reported as the
/// failure it is (the HTTP status of that code, as the whole refusal's), not as an answer
/// breaking the protocol, and is retried as the whole refusal's tiles are: `will_retry`,
/// the next attempt after a backoff. Before, it was `Failure::Invalid` ("every requested
/// tile must be listed") with `will_retry` false (for `upstream_error`, until 2026-12-06).
#[test]
fn a_tile_a_partial_answer_shedding_load_left_out_is_an_overload_and_retried() {
    use tilewarm::protocol::ErrorCode;
    for code in [
        ErrorCode::Overloaded,
        ErrorCode::RateLimited,
        ErrorCode::UpstreamTimeout,
        ErrorCode::UpstreamError,
    ] {
        let mut h = Harness::new(ClientConfig::default());
        h.set(view(0.0, 0.0, 2.0, 1.0));
        let dropped = h.answer_leaving_the_last_out(code);
        let ev = h.events();
        let status = code.http_status();
        assert!(
            ev.iter().any(|e| matches!(e, Event::Error(f)
                if f.tiles == vec![dropped] && f.will_retry
                    && f.failure == Failure::Http { status, retry_after_ms: None })),
            "{code}: {ev:?}"
        );
        let s = h.asked_again_after_backoff(dropped, &code.to_string());
        assert_eq!(s.attempt, 1, "{code}");
    }
}

/// A tile a partial answer left out as too large to serve (`payload_too_large`: a
/// tile over the server's `--max-tile-items`) is asked for once more at once, on its own
/// (the first time it may have been too large as part of a coarse tile), and refused again
/// it fails as a whole 413 does: reported with that status, not retried (the same request
/// gets the same answer), asked for again only after a tile TTL (it is held, as the server
/// holds it); the tiles it answered are taken. Before, it was `Failure::Invalid` ("every requested tile must be listed"),
/// although the answer was valid.
#[test]
fn a_tile_a_partial_answer_left_out_as_too_large_fails_as_a_413_and_is_not_retried() {
    use tilewarm::protocol::ErrorCode;
    let mut config = ClientConfig::default();
    config.batch.coalesce_levels = 0; // data tiles only: the one left out is a data tile
    let mut h = Harness::new(config);
    h.set(view(0.0, 0.0, 2.0, 1.0));
    let dropped = h.answer_leaving_the_last_out(ErrorCode::PayloadTooLarge);
    let ev = h.events();
    assert!(!ev.iter().any(|e| matches!(e, Event::Error(_))), "{ev:?}");
    assert!(!h.client.cache().is_empty(), "what was answered is cached");
    let s = h.client.poll_request(h.now).expect("asked again at once");
    assert_eq!(s.request.tiles, [dropped]);
    let mut partial = h.origin.answer(&s.request, None);
    partial.tiles.clear();
    partial.items.clear();
    partial.left_out = Some(ErrorCode::PayloadTooLarge);
    h.client.on_response(s.id, partial, h.now);
    let ev = h.events();
    let too_large = Failure::Http {
        status: 413,
        retry_after_ms: None,
    };
    assert!(
        ev.iter().any(|e| matches!(e, Event::Error(f)
            if f.tiles == vec![dropped] && !f.will_retry && f.failure == too_large)),
        "{ev:?}"
    );
    let refused_at = h.now;
    let at_once = h.serve_all();
    assert!(
        at_once.iter().all(|s| !s.request.tiles.contains(&dropped)),
        "{at_once:?}"
    );
    let s = loop {
        h.now = h
            .client
            .next_wakeup(h.now)
            .expect("the visible tile is asked for again");
        h.client.handle_timeout(h.now);
        let asked = std::iter::from_fn(|| h.client.poll_request(h.now))
            .find(|s| s.request.tiles.contains(&dropped));
        if let Some(s) = asked {
            break s;
        }
    };
    assert!(h.now >= refused_at + 300_000, "held for the tile TTL");
    assert_eq!(s.attempt, 0, "a new round, not a retry");
}

#[test]
fn invalid_or_incomplete_answers_are_errors_not_corruption() {
    let mut h = Harness::new(ClientConfig::default());
    h.set(view(0.0, 0.0, 2.0, 1.0));
    let s = h.client.poll_request(h.now).unwrap();
    let mut bad = h.origin.answer(&s.request, None);
    bad.items[0].lat = 123.0;
    h.client.on_response(s.id, bad, h.now);
    assert_eq!(
        h.client.cache().len(),
        0,
        "nothing from an invalid answer is cached"
    );
    // Reported once, as an error event (the one channel for backend trouble).
    let errors: Vec<Event> = h
        .events()
        .into_iter()
        .filter(|e| matches!(e, Event::Error(_)))
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        matches!(&errors[0], Event::Error(f) if f.will_retry
            && matches!(&f.failure, Failure::Invalid(m) if m.contains("lat must be in -90..=90"))),
        "{errors:?}"
    );
    // The retry arrives without one of the requested tiles: an error for that tile, which
    // stays missing and is asked for again after a backoff (not at once).
    h.now = h.client.next_wakeup(h.now).unwrap();
    let s = h.client.poll_request(h.now).unwrap();
    assert!(s.attempt >= 1);
    let mut partial = h.origin.answer(&s.request, None);
    let dropped = partial.tiles.pop().unwrap().tile;
    h.client.on_response(s.id, partial, h.now);
    assert!(!h.client.is_complete());
    let ev = h.events();
    assert!(
        ev.iter().any(|e| matches!(e, Event::Error(f)
            if f.tiles == vec![dropped] && matches!(&f.failure, Failure::Invalid(m) if m.contains("the answer leaves out 1 of the requested tiles")))),
        "{ev:?}"
    );
    let at_once = h.serve_all();
    assert!(
        at_once.iter().all(|s| !s.request.tiles.contains(&dropped)),
        "{at_once:?}"
    );
    for _ in 0..10 {
        if h.client.is_complete() {
            break;
        }
        assert!(h.wake(), "nothing pending");
        h.serve_all();
    }
    assert!(h.sent.iter().any(|s| s.request.tiles.contains(&dropped)));
    assert!(h.client.is_complete());
}

/// A backend that answers every request but always leaves one visible tile out: the tile is
/// asked for again with a growing backoff, not in a tight loop.
#[test]
fn a_tile_the_backend_never_lists_is_asked_for_with_a_growing_backoff() {
    let mut h = Harness::new(ClientConfig::default());
    h.set(view(0.0, 0.0, 2.0, 1.0));
    let omitted = h.client.visible_tiles()[0];
    let start = h.now;
    let (mut asked, mut errors) = (Vec::new(), 0);
    while h.now < start + 600_000 {
        while let Some(s) = h.client.poll_request(h.now) {
            if s.request.tiles.contains(&omitted) {
                asked.push(h.now);
            }
            let mut r = h.origin.answer(&s.request, None);
            r.tiles.retain(|l| l.tile != omitted);
            h.client.on_response(s.id, r, h.now);
        }
        errors += h
            .events()
            .iter()
            .filter(|e| matches!(e, Event::Error(_)))
            .count();
        if !h.wake() {
            break;
        }
    }
    assert!(!h.client.is_complete());
    // Backoff 200 ms doubling to the 10 s cap (jittered to [5, 10] s): about 60-120 asks
    // in ten minutes, not one per event-loop turn.
    assert!((40..=130).contains(&asked.len()), "{} asks", asked.len());
    assert_eq!(errors, asked.len(), "each omission is reported");
    let last_gaps: Vec<u64> = asked
        .windows(2)
        .rev()
        .take(10)
        .map(|w| w[1] - w[0])
        .collect();
    assert!(
        last_gaps.iter().all(|g| (5_000..=10_000).contains(g)),
        "{last_gaps:?}"
    );
}

/// A view with more items than the cache may hold: each answer evicts another visible
/// tile's items. The view cannot complete; the tiles that could not be kept are an error
/// and asked for again after a growing backoff, not in a tight loop (found by the npm
/// package's long-session test, where it starved the event loop).
#[test]
fn a_view_larger_than_the_cache_is_an_error_not_a_request_loop() {
    let mut config = ClientConfig::default();
    config.cache.max_items = 12; // the 2 x 2 view holds 20
    let mut h = Harness::new(config);
    h.set(view(0.0, 0.0, 2.0, 2.0));
    let start = h.now;
    let mut requests = 0;
    let mut kept_errors = 0;
    while h.now < start + 60_000 {
        let sent = h.serve_all();
        requests += sent.len();
        assert!(
            requests < 200,
            "a request loop: {requests} requests by {}",
            h.now - start
        );
        kept_errors += h.kept_errors();
        if !h.wake() {
            break;
        }
    }
    assert!(!h.client.is_complete());
    assert!(kept_errors >= 1);
    assert!(h.client.cache().len() <= 12);
    // Backoff 200 ms doubling to 10 s: a few dozen requests a minute at most.
    assert!(requests <= 60, "{requests} requests in a minute");
}

/// A backend that is down for ten minutes while the page stays on one view: the visible
/// tiles are retried with a backoff that grows past the per-request retries (no request
/// every second for ever), and the view completes soon after the backend comes back.
#[test]
fn a_dead_backend_is_asked_less_and_less_often_and_recovery_is_picked_up() {
    let mut h = Harness::new(ClientConfig::default());
    h.set(view(0.0, 0.0, 1.0, 1.0));
    let start = h.now;
    let mut foreground = Vec::new();
    while h.now < start + 600_000 {
        while let Some(s) = h.client.poll_request(h.now) {
            if s.kind == Kind::Foreground {
                foreground.push(h.now);
            }
            h.client.on_failure(
                s.id,
                Failure::Http {
                    status: 503,
                    retry_after_ms: None,
                },
                h.now,
            );
        }
        h.events();
        assert!(h.wake(), "the visible tile is queued");
    }
    // Before: 3 attempts per ~1.2 s round, ~1500 in ten minutes.
    assert!(
        foreground.len() < 150,
        "{} foreground requests",
        foreground.len()
    );
    let last_gap = foreground[foreground.len() - 1] - foreground[foreground.len() - 2];
    assert!((5_000..=10_000).contains(&last_gap), "{last_gap}");
    assert!(h.client.stats().breaker_open, "prefetch held");
    // The backend recovers: the view completes by the next retry, at most 10 s later.
    let back = h.now;
    for _ in 0..5 {
        h.serve_all();
        if h.client.is_complete() {
            break;
        }
        assert!(h.wake(), "nothing pending");
    }
    assert!(h.client.is_complete());
    assert!(h.now - back <= 10_000, "{} ms", h.now - back);
    assert!(
        !h.client.stats().breaker_open,
        "a success closes the breaker"
    );
}

#[test]
fn far_pan_cancels_unwanted_prefetch() {
    let mut h = Harness::new(ClientConfig::default());
    h.set(view(0.0, 0.0, 1.0, 1.0));
    let mut prefetch = Vec::new();
    while let Some(s) = h.client.poll_request(h.now) {
        if s.kind == Kind::Prefetch {
            prefetch.push(s.id);
        }
    }
    assert!(!prefetch.is_empty());
    h.now += 50;
    h.set(view(40.0, 40.0, 1.0, 1.0));
    let cancelled: Vec<_> = std::iter::from_fn(|| h.client.poll_cancel()).collect();
    assert_eq!(cancelled, prefetch);
    assert!(h.client.stats().batch.cancelled >= 1);
}

#[test]
fn warm_queues_known_next_tiles_as_prefetch() {
    let config = ClientConfig {
        planner: tilewarm::planner::PlannerConfig {
            ring: 0,
            view_ring: 0.0,
            lookahead_ms: 0,
            ..Default::default()
        },
        ..ClientConfig::default()
    };
    let mut h = Harness::new(config);
    h.set(view(0.0, 0.0, 1.0, 1.0));
    h.serve_all();
    // Nothing is prefetched by the planner; the caller knows the user goes 3 tiles east.
    let next = view(3.0, 0.0, 1.0, 1.0);
    let next_tiles = h.client.planner().visible_tiles(&next).unwrap();
    assert_eq!(h.client.warm(&next_tiles, h.now), next_tiles.len());
    assert_eq!(
        h.client.warm(&next_tiles, h.now),
        next_tiles.len(),
        "queued twice, once in the queue"
    );
    let sent = h.serve_all();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].kind, Kind::Prefetch);
    assert_eq!(
        h.client.warm(&next_tiles, h.now),
        0,
        "fresh tiles are skipped"
    );
    let (out, _) = h.set(next);
    assert!(out.complete);
}

#[test]
fn missing_ids_are_forgotten_not_requested_forever() {
    let mut h = Harness::new(ClientConfig::default());
    h.client.request_ids(["nope", "h1"], h.now);
    let s = h.client.poll_request(h.now).unwrap();
    assert_eq!(s.request.ids, vec!["nope", "h1"]);
    let r = h.origin.answer(&s.request, None);
    assert_eq!(r.missing, vec!["nope"]);
    h.client.on_response(s.id, r, h.now);
    assert!(h.client.get("h1", h.now).is_some());
    assert!(h.client.poll_request(h.now).is_none());
}

/// Real homes (King County, ../shared/data): the view of downtown Seattle shows exactly the
/// homes the origin holds there. Needs the `data` feature (`make test` enables it).
#[cfg(feature = "data")]
#[test]
fn real_homes_view_matches_the_data_set() {
    let path = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/data/kc_house_data.csv"
    ));
    if !path.exists() {
        eprintln!(
            "skipping real_homes_view_matches_the_data_set: {} not found (a fresh clone has no ../shared)",
            path.display()
        );
        return;
    }
    let homes: Vec<OriginItem<String>> = tilewarm::dataset::load_path(path)
        .unwrap()
        .into_iter()
        .map(|it| it.map_data(|d| d.get().to_string()))
        .collect();
    let origin = Origin::new(homes).unwrap();
    assert_eq!(
        origin.len(),
        21_436,
        "distinct homes in the King County data"
    );
    let mut h = Harness::new(ClientConfig::default());
    h.origin = origin;
    let vp = Viewport::new(-122.36, 47.59, -122.29, 47.63, 14.0).unwrap();
    h.set(vp);
    h.serve_all();
    assert!(h.client.is_complete());
    let shown = h.items_in_view();
    assert!(shown.len() > 100, "{}", shown.len());
    assert_eq!(shown, h.truth());
}

/// A one-tile view with more items than the cache holds, whose list is known: the tile
/// misses a few items, so it is refreshed by id, and each id's answer evicts another of
/// its items. The answer was for that tile; it is backed off and reported, not asked for
/// again at once (the npm package's long sessions sent thousands of one-id requests a
/// second this way when idle on such a view).
#[test]
fn a_tile_refreshed_by_ids_that_cannot_be_kept_backs_off() {
    let mut config = ClientConfig::default();
    config.cache.max_items = 3; // the one-tile view holds 5
    let mut h = Harness::new(config);
    h.set(view(0.0, 0.0, 0.5, 0.5));
    assert_eq!(h.client.visible_tiles().len(), 1);
    let start = h.now;
    let (mut requests, mut by_id, mut kept_errors) = (0, 0, 0);
    while h.now < start + 60_000 {
        while let Some(s) = h.client.poll_request(h.now) {
            requests += 1;
            by_id += usize::from(!s.request.ids.is_empty());
            assert!(
                requests <= 200,
                "a request loop: {requests} requests by {} ms",
                h.now - start
            );
            let resp = h.origin.answer(&s.request, None);
            h.client.on_response(s.id, resp, h.now);
        }
        kept_errors += h.kept_errors();
        if !h.wake() {
            break;
        }
    }
    assert!(by_id >= 1, "the tile was refreshed by id");
    assert!(kept_errors >= 2, "{kept_errors} errors");
    assert!(!h.client.is_complete());
    // Backoff 200 ms doubling to 10 s: a few dozen requests a minute at most.
    assert!(requests <= 60, "{requests} requests in a minute");
}
