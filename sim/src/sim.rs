//! The discrete-event simulation: replays sessions against an in-memory origin with a
//! latency model, on a simulated clock, for each policy.
//!
//! - A request's answer arrives `base_ms + per_item_ms * items` after it is sent. At most
//!   the client's in-flight cap is out at once (the client enforces it).
//! - Between two viewports of a session, answers whose time has come are delivered in time
//!   order and new requests go out (prefetch keeps working during the user's think time);
//!   `next_wakeup`/`handle_timeout` drive retries and deadlines.
//! - A viewport with at least one visible data tile is a *hit* when it is complete when
//!   shown. Its *time to complete* is when every visible tile became showable minus when it
//!   was shown (0 for hits). A viewport left before it completed counts as *abandoned*;
//!   its time to complete is then how long it was on screen (a lower bound).
//! - After a session's last viewport the simulation runs on for 10 minutes, so the
//!   session's work still queued or in flight finishes and every policy's whole traffic is
//!   counted. A view at rest also wakes when its items expire and fetches them again
//!   (`Client::handle_timeout`); after the session, that is a page left open, whose
//!   traffic grows with how long the run goes on, not with the trace or the policy. From
//!   the last view's first such wake-up on, requests and what they bring are counted apart
//!   ([`Metrics::idle_requests`]). Within a session a view's wake-ups count as any
//!   request does: the user is looking at it.
//!
//! Everything is deterministic: the batcher's jitter is seeded, answers are ordered by
//! (time, send order).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};

use tilewarm::access::Access;
use tilewarm::batch::{BatchConfig, Batcher, Failure, Kind, RequestId};
use tilewarm::client::{Answered, Client, ClientConfig, Event, Payload};
use tilewarm::origin::{Origin, OriginItem};
use tilewarm::planner::{Planner, PlannerConfig, PopularTiles, ViewCounts, Viewport, Work};
use tilewarm::protocol::{BatchRequest, BatchResponse};
use tilewarm::tile::{Bbox, TileId};

use crate::trace::Session;

/// The payload the simulated client stores: just its size (the sim never reads item data).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size(pub u32);

impl Payload for Size {
    fn size_bytes(&self) -> usize {
        self.0 as usize
    }
}

/// Turns a loaded data set into the sim's origin (payloads replaced by their JSON size).
pub fn origin_from(items: Vec<OriginItem<tilewarm::protocol::RawData>>) -> Origin<Size> {
    let items = items
        .into_iter()
        .map(|it| it.map_data(|d| Size(d.get().len() as u32)))
        .collect();
    Origin::new(items).expect("data set items have valid coordinates")
}

/// The prefetch policies compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Policy {
    /// No cache: every visible tile is fetched every time.
    None,
    /// The core client as a TTL cache: no ring, no look-ahead, no prefetch.
    Lru,
    /// The core client with the neighbour ring only (the production scheme).
    Ring1,
    /// The core client with its default planner (or the `--tw-*` overrides).
    Tilewarm,
    /// The core cache and batcher, prefetching exactly the next viewport's tiles.
    Oracle,
}

impl Policy {
    pub const ALL: [Policy; 5] = [
        Policy::None,
        Policy::Lru,
        Policy::Ring1,
        Policy::Tilewarm,
        Policy::Oracle,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Policy::None => "none",
            Policy::Lru => "lru",
            Policy::Ring1 => "ring1",
            Policy::Tilewarm => "tilewarm",
            Policy::Oracle => "oracle",
        }
    }

    pub fn parse(s: &str) -> Option<Policy> {
        Policy::ALL.into_iter().find(|p| p.name() == s)
    }
}

/// Simulation settings.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Fixed cost of a batch request, ms (default 60).
    pub base_ms: f64,
    /// Cost per item in the answer, ms (default 0.05).
    pub per_item_ms: f64,
    /// Data tile zoom (default 14).
    pub tile_zoom: u8,
    /// Map zoom below which nothing is fetched (default 12).
    pub min_zoom: f64,
    /// Batch settings shared by every policy (default: the core's).
    pub batch: BatchConfig,
    /// The `tilewarm` policy's planner (tile_zoom and min_zoom are set from above).
    pub tilewarm: PlannerConfig,
    /// Membership TTL the origin reports for tile lists, seconds (default: none, the
    /// client's own).
    pub tile_ttl_s: Option<u32>,
    /// The caller's tier.
    pub access: Access,
    /// Share of requests the backend answers with a 503 (default 0), drawn per request
    /// from a seeded generator.
    pub fail_share: f64,
    /// Share of requests answered `slow_ms` late (default 0).
    pub slow_share: f64,
    /// How late a slow answer is, ms (default 5000, past the batcher's 3000 ms timeout).
    pub slow_ms: u64,
    /// The data's extent every policy's client is given (`CacheConfig::bounds`; default
    /// the whole world: none).
    pub bounds: Bbox,
    /// The data's extent the backend declares with every answer (a server's `--bounds`, its
    /// `x-tilewarm-bounds` header): each client adopts it with its first answer
    /// (`Client::on_declared_response`). Default none.
    pub declared_bounds: Option<Bbox>,
    /// Most items every policy's client holds (`CacheConfig::max_items`; default the
    /// core's, 50,000).
    pub max_items: usize,
    /// The tiles the tilewarm policy's prefetch is limited to (`Client::set_popular_tiles`;
    /// default none: no limit).
    pub popular: Option<PopularTiles>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            base_ms: 60.0,
            per_item_ms: 0.05,
            tile_zoom: 14,
            min_zoom: 12.0,
            batch: BatchConfig::default(),
            tilewarm: PlannerConfig::default(),
            tile_ttl_s: None,
            fail_share: 0.0,
            slow_share: 0.0,
            slow_ms: 5000,
            access: Access::Public,
            bounds: tilewarm::cache::WORLD,
            declared_bounds: None,
            max_items: tilewarm::cache::CacheConfig::default().max_items,
            popular: None,
        }
    }
}

impl SimConfig {
    /// The planner config of a policy built on the core client.
    pub fn planner_for(&self, policy: Policy) -> PlannerConfig {
        let base = PlannerConfig {
            tile_zoom: self.tile_zoom,
            min_zoom: self.min_zoom,
            ..PlannerConfig::default()
        };
        match policy {
            Policy::Tilewarm => PlannerConfig {
                tile_zoom: self.tile_zoom,
                min_zoom: self.min_zoom,
                ..self.tilewarm.clone()
            },
            // The production scheme: the whole tile ring around the view, nothing else.
            Policy::Ring1 => PlannerConfig {
                ring: 1,
                lookahead_ms: 0,
                view_ring: 0.0,
                max_tiles_per_round: 4096,
                budget_per_visible: 0.0,
                warm_below_min_zoom: 0.0,
                ..base
            },
            Policy::Lru | Policy::None | Policy::Oracle => PlannerConfig {
                ring: 0,
                lookahead_ms: 0,
                view_ring: 0.0,
                max_tiles_per_round: 0,
                budget_per_visible: 0.0,
                warm_below_min_zoom: 0.0,
                ..base
            },
        }
    }

    /// The batch config of a policy: the shared one, except that the oracle never asks for
    /// a coarse tile over a partly queued block (`coalesce_min_share` 100): it fetches
    /// exactly the next view's tiles, the items every policy is measured against.
    pub fn batch_for(&self, policy: Policy) -> BatchConfig {
        let mut batch = self.batch.clone();
        if policy == Policy::Oracle {
            batch.coalesce_min_share = 100;
        }
        batch
    }

    /// Checks the settings for `policies`: every value the run reads, and the client (or,
    /// for `none`, planner and batcher) config each policy is built from. The error names
    /// the setting, the value and what is allowed.
    pub fn validate(&self, policies: &[Policy]) -> Result<(), String> {
        // An hour at most: the clock is u64 ms, and an answer due past its end came
        // back at once (the sum wrapped) or panicked.
        const HOUR_MS: u64 = 3_600_000;
        for (name, v) in [
            ("base_ms (--base-ms)", self.base_ms),
            ("per_item_ms (--per-item-ms)", self.per_item_ms),
        ] {
            if !(0.0..=HOUR_MS as f64).contains(&v) {
                return Err(format!(
                    "{name} must be a number of ms in 0..={HOUR_MS} (an hour), got {v}"
                ));
            }
        }
        if self.slow_ms > HOUR_MS {
            return Err(format!(
                "slow_ms (--slow-ms) must be in 0..={HOUR_MS} ms (an hour), got {}",
                self.slow_ms
            ));
        }
        for (name, v) in [
            ("fail_share (--fail-share)", self.fail_share),
            ("slow_share (--slow-share)", self.slow_share),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{name} must be a share in 0..=1, got {v}"));
            }
        }
        // One draw per request decides both (a failure wins), so together they are at most
        // every request; above that the slow share would silently come out smaller.
        if self.fail_share + self.slow_share > 1.0 {
            return Err(format!(
                "--fail-share + --slow-share must be at most 1 (each request fails, is slow or \
                 neither), got {} + {}",
                self.fail_share, self.slow_share
            ));
        }
        for &p in policies {
            let checked = match p {
                Policy::None => Planner::new(self.planner_for(p))
                    .map(drop)
                    .map_err(|e| e.to_string())
                    .and_then(|()| {
                        Batcher::new(self.batch_for(p))
                            .map(drop)
                            .map_err(|e| e.to_string())
                    }),
                _ => Client::<Size>::new(self.client_config(p))
                    .map(drop)
                    .map_err(|e| e.to_string()),
            };
            checked.map_err(|e| format!("policy {}: {e}", p.name()))?;
        }
        Ok(())
    }

    fn client_config(&self, policy: Policy) -> ClientConfig {
        let mut c = ClientConfig {
            planner: self.planner_for(policy),
            batch: self.batch_for(policy),
            access: self.access,
            ..ClientConfig::default()
        }
        .with_tile_zoom(self.tile_zoom);
        c.cache.bounds = self.bounds;
        c.cache.max_items = self.max_items;
        c
    }

    fn latency(&self, items: usize) -> u64 {
        (self.base_ms + self.per_item_ms * items as f64)
            .round()
            .max(1.0) as u64
    }
}

/// What a policy shows when a viewport is set.
struct Shown {
    visible: Vec<TileId>,
    complete: bool,
    items: usize,
}

/// A request the policy wants sent.
struct Req {
    id: RequestId,
    kind: Kind,
    request: BatchRequest,
}

/// The sans-IO surface every policy offers the simulator.
trait Shell {
    /// The viewport after this one (only the oracle looks).
    fn hint_next(&mut self, _next: Option<&Viewport>) {}
    fn show(&mut self, vp: Viewport, now: u64) -> Result<Shown, String>;
    fn poll_request(&mut self, now: u64) -> Option<Req>;
    fn poll_cancel(&mut self) -> Option<RequestId>;
    fn on_response(
        &mut self,
        id: RequestId,
        resp: BatchResponse<Size>,
        now: u64,
    ) -> Result<(), String>;
    fn is_complete(&self, now: u64) -> bool;
    fn next_wakeup(&self, now: u64) -> Option<u64>;
    /// Time passed; returns whether the view woke (its items or tile lists read
    /// differently from now on) and was refreshed.
    fn handle_timeout(&mut self, now: u64) -> bool;
    /// The backend answered `id` with an error status.
    fn on_failure(&mut self, id: RequestId, failure: Failure, now: u64);
}

/// `lru`, `ring1`, `tilewarm`: the core client, unchanged. `oracle`: the same client with
/// the planner's prefetch off, told the *next* viewport: after each view it warms the next
/// view's tiles (`Client::warm`), so they are fetched during the think time. It knows one
/// step ahead only, and pays the same latency and in-flight cap as everyone else.
struct ClientShell {
    client: Client<Size>,
    oracle: bool,
    next: Option<Viewport>,
    /// The extent the backend declares with its answers ([`SimConfig::declared_bounds`]).
    declared_bounds: Option<Bbox>,
}

impl Shell for ClientShell {
    fn hint_next(&mut self, next: Option<&Viewport>) {
        self.next = next.copied();
    }
    fn show(&mut self, vp: Viewport, now: u64) -> Result<Shown, String> {
        let out = self.client.set_viewport(vp, now, |_, _| {});
        if let Some(e) = out.too_wide {
            return Err(e.to_string());
        }
        if let (true, Some(next)) = (self.oracle, self.next.as_ref()) {
            let tiles = self
                .client
                .planner()
                .visible_tiles(next)
                .unwrap_or_default();
            self.client.warm(&tiles, now);
        }
        Ok(Shown {
            visible: self.client.visible_tiles().to_vec(),
            complete: out.complete,
            items: out.items,
        })
    }
    fn poll_request(&mut self, now: u64) -> Option<Req> {
        self.client.poll_request(now).map(|s| Req {
            id: s.id,
            kind: s.kind,
            request: s.request,
        })
    }
    fn poll_cancel(&mut self) -> Option<RequestId> {
        self.client.poll_cancel()
    }
    fn on_response(
        &mut self,
        id: RequestId,
        resp: BatchResponse<Size>,
        now: u64,
    ) -> Result<(), String> {
        // The client refuses a bad answer whole (and reports it as an error event).
        let answered = match self.declared_bounds {
            Some(b) => self.client.on_declared_response(id, resp, Some(&b), now),
            None => self.client.on_response(id, resp, now),
        };
        match answered {
            Answered::Invalid => Err(format!("request {}: the client refused its answer", id.0)),
            _ => Ok(()),
        }
    }
    fn is_complete(&self, _now: u64) -> bool {
        self.client.is_complete()
    }
    fn next_wakeup(&self, now: u64) -> Option<u64> {
        self.client.next_wakeup(now)
    }
    fn handle_timeout(&mut self, now: u64) -> bool {
        // The sim reads no events but this one: a timeout that refreshes the view queues
        // `Updated` (one that fails an overdue request queues an `Error` only).
        while self.client.poll_event().is_some() {}
        self.client.handle_timeout(now);
        let mut woke = false;
        while let Some(e) = self.client.poll_event() {
            woke |= matches!(e, Event::Updated);
        }
        woke
    }
    fn on_failure(&mut self, id: RequestId, failure: Failure, now: u64) {
        self.client.on_failure(id, failure, now)
    }
}

/// `none`: the core batcher without a cache. Every viewport asks for all its tiles; it is
/// complete when each has been answered since it was shown (a request already out for a
/// tile counts).
struct NoneShell {
    planner: Planner,
    batcher: Batcher,
    pending: HashSet<TileId>,
    access: Access,
}

impl Shell for NoneShell {
    fn show(&mut self, vp: Viewport, _now: u64) -> Result<Shown, String> {
        let visible = self.planner.visible_tiles(&vp).map_err(|e| e.to_string())?;
        self.pending = visible.iter().copied().collect();
        self.batcher
            .set_foreground(visible.iter().map(|&t| Work::Tile(t)).collect());
        Ok(Shown {
            complete: visible.is_empty(),
            visible,
            items: 0,
        })
    }
    fn poll_request(&mut self, now: u64) -> Option<Req> {
        let pending = &self.pending;
        let out = self
            .batcher
            .poll(now, self.access, |w| pending.contains(&w.tile()))?;
        Some(Req {
            id: out.id,
            kind: out.kind,
            request: out.request,
        })
    }
    fn poll_cancel(&mut self) -> Option<RequestId> {
        None
    }
    fn on_response(
        &mut self,
        id: RequestId,
        resp: BatchResponse<Size>,
        _now: u64,
    ) -> Result<(), String> {
        if self.batcher.on_success(id).is_some() {
            // The answer lists the tiles asked for, which may be coarse (the batcher
            // coalesces): each answers every data tile inside it.
            self.pending
                .retain(|&d| !resp.tiles.iter().any(|l| l.tile.contains(d)));
        }
        Ok(())
    }
    fn is_complete(&self, _now: u64) -> bool {
        self.pending.is_empty()
    }
    fn next_wakeup(&self, now: u64) -> Option<u64> {
        self.batcher.next_wakeup(now)
    }
    fn handle_timeout(&mut self, _now: u64) -> bool {
        false
    }
    fn on_failure(&mut self, id: RequestId, failure: Failure, now: u64) {
        self.batcher.on_failure(id, &failure, now);
    }
}

fn make_shell(policy: Policy, cfg: &SimConfig) -> Box<dyn Shell> {
    let planner_cfg = cfg.planner_for(policy);
    match policy {
        Policy::None => Box::new(NoneShell {
            planner: Planner::new(planner_cfg).expect("valid planner config"),
            batcher: Batcher::new(cfg.batch.clone()).expect("valid batch config"),
            pending: HashSet::new(),
            access: cfg.access,
        }),
        _ => Box::new(ClientShell {
            client: {
                let mut c = Client::new(cfg.client_config(policy)).expect("valid client config");
                if policy == Policy::Tilewarm {
                    c.set_popular_tiles(cfg.popular.clone())
                        .expect("popular tiles counted at the data zoom");
                }
                c
            },
            oracle: policy == Policy::Oracle,
            next: None,
            declared_bounds: cfg.declared_bounds,
        }),
    }
}

/// Counters for one policy over a whole trace.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Metrics {
    pub policy: String,
    /// Viewports with at least one visible data tile (the ones scored).
    pub viewports: u64,
    /// Viewports with no data tile in view (below `min_zoom`); not scored.
    pub viewports_empty: u64,
    /// Viewports covering more data tiles than the planner's `max_visible_tiles` (1024):
    /// the client fetches nothing for them (`ViewOutcome::too_wide`), as below `min_zoom`;
    /// not scored.
    pub viewports_too_wide: u64,
    /// Scored viewports complete when shown.
    pub hits: u64,
    /// Scored viewports left before they completed.
    pub abandoned: u64,
    /// Items in view (per the origin) summed over scored viewports, and those shown at once.
    pub items_in_view: u64,
    pub items_shown_at_once: u64,
    /// Time to complete per scored viewport, ms (sorted at the end).
    #[serde(skip)]
    pub ttc_ms: Vec<u64>,
    pub ttc_p50_ms: u64,
    pub ttc_p90_ms: u64,
    pub ttc_mean_ms: f64,
    pub foreground_requests: u64,
    pub requests: u64,
    /// Requests the policy aborted (their answers are ignored; not counted below).
    pub cancelled: u64,
    /// Items and bytes in delivered answers.
    pub items_fetched: u64,
    pub bytes: u64,
    /// Data tiles delivered by prefetch requests (a coarse request tile counts as the data
    /// tiles inside it), and those never in view afterwards in the session (or delivered
    /// again before they were).
    pub prefetch_tiles: u64,
    pub prefetch_wasted: u64,
    /// Scored viewports, and misses, per trace action (`pan`, `zoom`, ...).
    pub viewports_by_action: BTreeMap<String, u64>,
    pub misses_by_action: BTreeMap<String, u64>,
    /// Answers the client refused as invalid (`Answered::Invalid`; should be 0).
    pub errors: u64,
    /// Requests the simulated backend failed (503) or answered late (`--fail-share`,
    /// `--slow-share`).
    pub failed_requests: u64,
    pub slow_requests: u64,
    /// After a session's last viewport, from the view's first wake-up at its items' expiry
    /// on (the page left open, for the rest of the run's 10 minutes): the requests sent,
    /// those in the foreground, and the items their answers brought. Counted in no other
    /// field (requests, items, bytes, failures, prefetch tiles).
    pub idle_requests: u64,
    pub idle_foreground_requests: u64,
    pub idle_items_fetched: u64,
    pub viewport_hit_rate: f64,
    pub item_hit_rate: f64,
}

impl Metrics {
    fn finish(&mut self) {
        self.ttc_ms.sort_unstable();
        let pct = |v: &[u64], p: f64| -> u64 {
            if v.is_empty() {
                0
            } else {
                let i = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
                v[i]
            }
        };
        self.ttc_p50_ms = pct(&self.ttc_ms, 0.5);
        self.ttc_p90_ms = pct(&self.ttc_ms, 0.9);
        self.ttc_mean_ms = if self.ttc_ms.is_empty() {
            0.0
        } else {
            self.ttc_ms.iter().sum::<u64>() as f64 / self.ttc_ms.len() as f64
        };
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        self.viewport_hit_rate = ratio(self.hits, self.viewports);
        self.item_hit_rate = ratio(self.items_shown_at_once, self.items_in_view);
    }
}

/// A number in `[0, 1)` from `(seed, n)` (splitmix64), for the failure draws.
fn unit(seed: u64, n: u64) -> f64 {
    let mut z = seed.wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Wire size estimate of an answer: per item its id, class, payload and ~70 bytes of
/// keys and numbers; per tile list its ids and ~40 bytes.
fn answer_bytes(resp: &BatchResponse<Size>) -> u64 {
    let items: usize = resp
        .items
        .iter()
        .map(|i| 70 + i.id.len() + i.class.len() + i.data.0 as usize)
        .sum();
    let lists: usize = resp
        .tiles
        .iter()
        .map(|l| 40 + l.ids.iter().map(|s| s.len() + 3).sum::<usize>())
        .sum();
    (items + lists) as u64
}

/// How many of `sessions` had each data tile in view, by `planner`'s visible tiles (a
/// viewport too wide to fetch counts none).
pub fn view_counts(planner: &Planner, sessions: &[Session]) -> ViewCounts {
    let mut counts = ViewCounts::new();
    for s in sessions {
        counts.add_session(
            s.events
                .iter()
                .flat_map(|(_, vp)| planner.visible_tiles(vp).unwrap_or_default()),
        );
    }
    counts
}

/// Runs one policy over every session.
pub fn run_policy(
    policy: Policy,
    sessions: &[Session],
    origin: &Origin<Size>,
    cfg: &SimConfig,
) -> Metrics {
    let mut m = Metrics {
        policy: policy.name().to_string(),
        ..Metrics::default()
    };
    for s in sessions {
        run_session(policy, s, origin, cfg, &mut m);
    }
    m.finish();
    m
}

/// Runs every listed policy.
pub fn run_all(
    policies: &[Policy],
    sessions: &[Session],
    origin: &Origin<Size>,
    cfg: &SimConfig,
) -> Vec<Metrics> {
    policies
        .iter()
        .map(|&p| run_policy(p, sessions, origin, cfg))
        .collect()
}

struct Flight {
    kind: Kind,
    tiles: Vec<TileId>,
    response: BatchResponse<Size>,
    /// The backend answers this one with a 503.
    fails: bool,
    /// Sent by the page left open after the session ([`Metrics::idle_requests`]).
    idle: bool,
}

struct SessionRun<'a> {
    shell: Box<dyn Shell>,
    origin: &'a Origin<Size>,
    cfg: &'a SimConfig,
    now: u64,
    /// (done at, send order, id)
    heap: BinaryHeap<Reverse<(u64, u64, u64)>>,
    flights: HashMap<u64, Flight>,
    seq: u64,
    /// The shown viewport still waiting to complete: when it was shown.
    waiting: Option<u64>,
    /// Prefetched tiles not yet seen in view.
    prefetched: HashMap<TileId, u32>,
    woke_at: Option<u64>,
    /// After the session's last viewport: whether its view has woken at an expiry, so what
    /// is sent from now on is the page left open's ([`Metrics::idle_requests`]).
    draining: bool,
    idle: bool,
}

impl SessionRun<'_> {
    fn pump(&mut self, m: &mut Metrics) {
        while let Some(id) = self.shell.poll_cancel() {
            if self.flights.remove(&id.0).is_some_and(|f| !f.idle) {
                m.cancelled += 1;
            }
        }
        while let Some(req) = self.shell.poll_request(self.now) {
            let response = self.origin.answer(&req.request, self.cfg.tile_ttl_s);
            // Failure draws: one seeded number per request, in send order.
            let (fails, slow) = {
                let u = unit(self.cfg.batch.seed ^ 0xfa11, self.seq);
                let cfg = self.cfg;
                (u < cfg.fail_share, u >= 1.0 - cfg.slow_share)
            };
            let mut done = self
                .now
                .saturating_add(self.cfg.latency(response.items.len()));
            let idle = self.idle;
            if fails {
                m.failed_requests += u64::from(!idle);
                done = self.now.saturating_add(self.cfg.latency(0));
            } else if slow {
                m.slow_requests += u64::from(!idle);
                done = done.saturating_add(self.cfg.slow_ms);
            }
            let foreground = u64::from(req.kind == Kind::Foreground);
            if idle {
                m.idle_requests += 1;
                m.idle_foreground_requests += foreground;
            } else {
                m.requests += 1;
                m.foreground_requests += foreground;
            }
            self.seq += 1;
            self.heap.push(Reverse((done, self.seq, req.id.0)));
            self.flights.insert(
                req.id.0,
                Flight {
                    kind: req.kind,
                    tiles: req.request.tiles.clone(),
                    response,
                    fails,
                    idle,
                },
            );
        }
    }

    fn check_complete(&mut self, m: &mut Metrics) {
        if let Some(shown) = self.waiting {
            if self.shell.is_complete(self.now) {
                m.ttc_ms.push(self.now - shown);
                self.waiting = None;
            }
        }
    }

    /// Delivers answers and wakeups due up to `until` (inclusive), in time order.
    fn advance(&mut self, until: u64, m: &mut Metrics) {
        loop {
            let answer = self.heap.peek().map(|r| r.0 .0);
            let wake = self
                .shell
                .next_wakeup(self.now)
                .filter(|&w| !(w <= self.now && self.woke_at == Some(self.now)));
            let next = match (answer, wake) {
                (None, None) => break,
                (a, w) => a.unwrap_or(u64::MAX).min(w.unwrap_or(u64::MAX)),
            };
            if next > until {
                break;
            }
            self.now = self.now.max(next);
            if answer == Some(next) {
                let Reverse((_, _, id)) = self.heap.pop().expect("peeked");
                if let Some(f) = self.flights.remove(&id).filter(|f| {
                    !f.fails || {
                        let failure = Failure::Http {
                            status: 503,
                            retry_after_ms: None,
                        };
                        self.shell.on_failure(RequestId(id), failure, self.now);
                        false
                    }
                }) {
                    if f.idle {
                        m.idle_items_fetched += f.response.items.len() as u64;
                    } else {
                        m.items_fetched += f.response.items.len() as u64;
                        m.bytes += answer_bytes(&f.response);
                    }
                    if f.kind == Kind::Prefetch && !f.idle {
                        // Counted in data tiles, the tiles a view shows: a coarse request
                        // tile (coalesced) delivers every data tile inside it.
                        for t in &f.tiles {
                            let data = t
                                .descendants(self.cfg.tile_zoom)
                                .unwrap_or_else(|_| vec![*t]);
                            for d in data {
                                m.prefetch_tiles += 1;
                                *self.prefetched.entry(d).or_default() += 1;
                            }
                        }
                    }
                    if self
                        .shell
                        .on_response(RequestId(id), f.response, self.now)
                        .is_err()
                    {
                        m.errors += 1;
                    }
                }
            } else {
                self.woke_at = Some(self.now);
                if self.shell.handle_timeout(self.now) && self.draining {
                    self.idle = true;
                }
            }
            self.pump(m);
            self.check_complete(m);
        }
    }
}

fn run_session(
    policy: Policy,
    session: &Session,
    origin: &Origin<Size>,
    cfg: &SimConfig,
    m: &mut Metrics,
) {
    // Start the clock well above 0 so TTL arithmetic never underflows.
    const EPOCH: u64 = 1_000_000_000;
    let Some(&(t_first, _)) = session.events.first() else {
        return;
    };
    let mut run = SessionRun {
        shell: make_shell(policy, cfg),
        origin,
        cfg,
        now: EPOCH,
        heap: BinaryHeap::new(),
        flights: HashMap::new(),
        seq: 0,
        waiting: None,
        prefetched: HashMap::new(),
        woke_at: None,
        draining: false,
        idle: false,
    };
    for (i, &(t, vp)) in session.events.iter().enumerate() {
        let at = EPOCH + (t - t_first);
        run.advance(at, m);
        run.now = at;
        if let Some(shown) = run.waiting.take() {
            m.abandoned += 1;
            m.ttc_ms.push(at - shown);
        }
        run.shell
            .hint_next(session.events.get(i + 1).map(|(_, v)| v));
        let shown = match run.shell.show(vp, at) {
            Ok(s) => s,
            Err(_) => {
                // Too wide to fetch (the trace's boxes were checked when it was read).
                m.viewports_too_wide += 1;
                continue;
            }
        };
        for t in &shown.visible {
            if let Some(n) = run.prefetched.remove(t) {
                // The first prefetch of it was used; any repeat was not.
                m.prefetch_wasted += u64::from(n - 1);
            }
        }
        if shown.visible.is_empty() {
            m.viewports_empty += 1;
        } else {
            m.viewports += 1;
            let action = session.actions.get(i).cloned().unwrap_or_default();
            *m.viewports_by_action.entry(action.clone()).or_default() += 1;
            if !shown.complete {
                *m.misses_by_action.entry(action).or_default() += 1;
            }
            let truth: usize = shown
                .visible
                .iter()
                .map(|&t| origin.count_in(t, cfg.access))
                .sum();
            m.items_in_view += truth as u64;
            m.items_shown_at_once += shown.items.min(truth) as u64;
            if shown.complete {
                m.hits += 1;
                m.ttc_ms.push(0);
            } else {
                run.waiting = Some(at);
            }
        }
        run.pump(m);
        run.check_complete(m);
    }
    // Let the last viewport complete and every request finish (bounded: 10 minutes); the
    // view's refreshes at rest from its first expiry on are the idle page's, counted apart.
    let end = run.now + 600_000;
    run.draining = true;
    run.advance(end, m);
    if let Some(shown) = run.waiting.take() {
        m.abandoned += 1;
        m.ttc_ms.push(run.now - shown);
    }
    m.prefetch_wasted += run.prefetched.values().map(|&n| u64::from(n)).sum::<u64>();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tilewarm::protocol::Item;

    /// `Metrics::errors` counts the answers the client refuses: the shell says so.
    #[test]
    fn an_answer_the_client_refuses_is_an_error() {
        let cfg = SimConfig::default();
        let mut shell = ClientShell {
            client: Client::new(cfg.client_config(Policy::Tilewarm)).unwrap(),
            oracle: false,
            next: None,
            declared_bounds: None,
        };
        let vp = Viewport::new(-122.34, 47.60, -122.33, 47.61, 15.0).unwrap();
        shell.show(vp, 0).unwrap();
        let req = shell.poll_request(0).expect("a request for the view");
        let answer = |lon: f64| BatchResponse {
            access: Some(Access::Public),
            items: vec![Item {
                id: "a".into(),
                lon,
                lat: 47.605,
                class: "active".into(),
                access: Access::Public,
                ttl: None,
                data: Size(10),
            }],
            ..BatchResponse::default()
        };
        assert!(shell.on_response(req.id, answer(500.0), 1).is_err());
        let again = shell.poll_request(60_000).expect("asked again");
        assert_eq!(
            shell.on_response(again.id, answer(-122.335), 60_001),
            Ok(())
        );
    }
}
