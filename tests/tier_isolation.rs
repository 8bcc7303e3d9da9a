//! Access-tier isolation of the client engine as a property (issue 8): random sequences of
//! viewports, tier changes (down and up), invalidations, lookups by id and time passing
//! (TTL expiry), with answers that arrive late (after a tier change) and from a server
//! that ignores tiers, never let the client return an item above the caller's current
//! tier, nor hold one in its cache after a downgrade.

use std::collections::{BTreeSet, HashMap};

use proptest::prelude::*;
use tilewarm::access::Access;
use tilewarm::cache::{CacheConfig, Invalidate};
use tilewarm::client::{Client, ClientConfig, Transmit};
use tilewarm::origin::{Origin, OriginItem};
use tilewarm::planner::Viewport;
use tilewarm::protocol::BatchResponse;
use tilewarm::tile::{TileId, TilePoint};

const Z: u8 = 14;
const SIDE: i64 = 6;

fn base() -> TileId {
    TileId::from_lon_lat(-122.3321, 47.6062, Z).unwrap()
}

/// 4 items in every tile of a 6 x 6 block, tiers cycling public..agent, two classes with
/// different TTLs, some with a server TTL of their own.
fn origin() -> Origin<String> {
    let mut items = Vec::new();
    for dy in 0..SIDE {
        for dx in 0..SIDE {
            let t = base().offset(dx, dy).unwrap();
            for k in 0..4u32 {
                let f = (k as f64 + 0.5) / 4.0;
                let (lon, lat) = tilewarm::tile::unproject(
                    TilePoint {
                        x: t.x() as f64 + f,
                        y: t.y() as f64 + 1.0 - f,
                    },
                    Z,
                );
                let n = items.len();
                items.push(OriginItem {
                    id: format!("i{n}"),
                    lon,
                    lat,
                    class: if n % 3 == 0 { "slow" } else { "fast" }.to_string(),
                    access: Access::ALL[(n + n / 4) % 4],
                    ttl: (n % 5 == 0).then_some(20),
                    data: format!("{{\"n\":{n}}}"),
                });
            }
        }
    }
    Origin::new(items).unwrap()
}

/// A viewport of w x h data tiles with its north-west corner at tile (x, y) of the block.
fn view(x: i64, y: i64, w: i64, h: i64) -> Viewport {
    let b = base();
    let corner = |dx: f64, dy: f64| {
        tilewarm::tile::unproject(
            TilePoint {
                x: b.x() as f64 + dx,
                y: b.y() as f64 + dy,
            },
            Z,
        )
    };
    let (west, north) = corner(x as f64 + 0.1, y as f64 + 0.1);
    let (east, south) = corner((x + w) as f64 - 0.1, (y + h) as f64 - 0.1);
    Viewport::new(west, south, east, north, 14.5).unwrap()
}

#[derive(Clone, Debug)]
enum Op {
    View {
        x: i64,
        y: i64,
        w: i64,
        h: i64,
    },
    /// Answer the oldest `n` requests out (possibly after tier changes).
    Answer {
        n: usize,
        ignore_tiers: bool,
    },
    /// Fail the oldest request out.
    Fail,
    SetAccess(Access),
    InvalidateIds(Vec<usize>),
    InvalidateTile(i64, i64),
    InvalidateAll,
    Get(usize),
    Wait(u64),
}

fn tier() -> impl Strategy<Value = Access> {
    prop::sample::select(Access::ALL.to_vec())
}

fn op() -> impl Strategy<Value = Op> {
    let n = (SIDE * SIDE * 4) as usize;
    prop_oneof![
        4 => (0..SIDE, 0..SIDE, 1..3i64, 1..3i64).prop_map(|(x, y, w, h)| Op::View { x, y, w, h }),
        5 => (1..4usize, prop::bool::weighted(0.2)).prop_map(|(n, ignore_tiers)| Op::Answer { n, ignore_tiers }),
        1 => Just(Op::Fail),
        3 => tier().prop_map(Op::SetAccess),
        1 => prop::collection::vec(0..n, 1..4).prop_map(Op::InvalidateIds),
        1 => (0..SIDE, 0..SIDE).prop_map(|(x, y)| Op::InvalidateTile(x, y)),
        1 => Just(Op::InvalidateAll),
        2 => (0..n).prop_map(Op::Get),
        2 => prop_oneof![0..5_000u64, 15_000..40_000u64, 250_000..400_000u64].prop_map(Op::Wait),
    ]
}

struct World {
    client: Client<String>,
    origin: Origin<String>,
    tiers: HashMap<String, Access>,
    out: Vec<Transmit>,
    now: u64,
}

impl World {
    fn new(access: Access) -> World {
        let cache = CacheConfig {
            class_ttl_ms: [("fast".to_string(), 30_000), ("slow".to_string(), 300_000)]
                .into_iter()
                .collect(),
            max_items: 60, // evictions too
            ..CacheConfig::default()
        };
        let origin = origin();
        let tiers = origin_tiers(&origin);
        World {
            client: Client::new(ClientConfig {
                cache,
                access,
                ..ClientConfig::default()
            })
            .unwrap(),
            origin,
            tiers,
            out: Vec::new(),
            now: 1_000_000,
        }
    }

    fn pump(&mut self) {
        while let Some(s) = self.client.poll_request(self.now) {
            self.out.push(s);
        }
        while let Some(id) = self.client.poll_cancel() {
            self.out.retain(|s| s.id != id);
        }
        while self.client.poll_event().is_some() {}
    }

    /// Every item the client shows or hands out is at most the caller's tier, and the
    /// cache holds nothing above it.
    fn check(&mut self, shown: &[(String, Access)]) -> Result<(), TestCaseError> {
        let access = self.client.access();
        for (id, a) in shown {
            prop_assert!(*a <= access, "{id} ({a:?}) shown to {access:?}");
            prop_assert_eq!(Some(a), self.tiers.get(id), "{} has its origin tier", id);
        }
        let mut view = Vec::new();
        self.client.view_items(self.now, |item, _| {
            view.push((item.id().to_string(), item.access()))
        });
        for (id, a) in &view {
            prop_assert!(*a <= access, "{id} ({a:?}) in the view of {access:?}");
        }
        for (id, a) in &self.tiers {
            if *a > access {
                prop_assert!(
                    !self.client.cache().contains(id),
                    "{id} ({a:?}) held in the cache of {access:?}"
                );
                prop_assert!(self.client.cache().peek(id, access, self.now).is_none());
            }
        }
        // A complete view shows exactly what the origin has for the tier: no holes left by
        // a tier change, nothing from another tier's tile list.
        if self.client.is_complete() && !self.client.visible_tiles().is_empty() {
            let shown: BTreeSet<String> = view.iter().map(|(id, _)| id.clone()).collect();
            let truth: BTreeSet<String> = self
                .client
                .visible_tiles()
                .iter()
                .flat_map(|&t| self.origin.tile_items(t, access).map(|it| it.id.clone()))
                .collect();
            prop_assert_eq!(shown, truth, "complete view at {:?}", access);
        }
        Ok(())
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let mut shown = Vec::new();
        match op {
            Op::View { x, y, w, h } => {
                self.client
                    .set_viewport(view(*x, *y, *w, *h), self.now, |item, _| {
                        shown.push((item.id().to_string(), item.access()))
                    });
            }
            Op::Answer { n, ignore_tiers } => {
                for s in self
                    .out
                    .drain(..(*n).min(self.out.len()))
                    .collect::<Vec<_>>()
                {
                    let mut request = s.request.clone();
                    if *ignore_tiers {
                        // A broken or hostile server: everything, whatever the tier.
                        request.access = Access::Agent;
                    }
                    let r: BatchResponse<String> = self.origin.answer(&request, None);
                    self.client.on_response(s.id, r, self.now);
                }
            }
            Op::Fail => {
                if !self.out.is_empty() {
                    let s = self.out.remove(0);
                    self.client
                        .on_failure(s.id, tilewarm::batch::Failure::Timeout, self.now);
                }
            }
            Op::SetAccess(a) => self.client.set_access(*a, self.now),
            Op::InvalidateIds(ids) => {
                let ids: Vec<String> = ids.iter().map(|i| format!("i{i}")).collect();
                let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
                self.client.invalidate(Invalidate::Ids(&refs), self.now);
            }
            Op::InvalidateTile(x, y) => {
                let t = [base().offset(*x, *y).unwrap()];
                self.client.invalidate(Invalidate::Tiles(&t), self.now);
            }
            Op::InvalidateAll => {
                self.client.invalidate(Invalidate::All, self.now);
            }
            Op::Get(i) => {
                let id = format!("i{i}");
                if let Some(l) = self.client.get(&id, self.now) {
                    shown.push((l.item.id().to_string(), l.item.access()));
                }
            }
            Op::Wait(ms) => {
                self.now += ms;
                self.client.handle_timeout(self.now);
            }
        }
        self.pump();
        self.check(&shown)
    }
}

fn origin_tiers(o: &Origin<String>) -> HashMap<String, Access> {
    let b = base();
    let block = (0..SIDE).flat_map(|dy| (0..SIDE).map(move |dx| b.offset(dx, dy).unwrap()));
    block
        .flat_map(|t| o.tile_items(t, Access::Agent))
        .map(|it| (it.id.clone(), it.access))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn no_item_above_the_callers_tier_is_ever_returned_or_held(
        start in tier(),
        ops in prop::collection::vec(op(), 1..80),
    ) {
        let mut w = World::new(start);
        for op in &ops {
            w.apply(op)?;
        }
        // Settle: answer everything honestly; the view completes with exactly the tier's items.
        for _ in 0..20 {
            w.apply(&Op::Answer { n: 64, ignore_tiers: false })?;
            if w.out.is_empty() {
                w.apply(&Op::Wait(11_000))?;
            }
        }
    }
}

#[test]
fn the_block_has_items_at_every_tier() {
    let o = origin();
    let tiers = origin_tiers(&o);
    assert_eq!(tiers.len(), (SIDE * SIDE * 4) as usize);
    for a in Access::ALL {
        assert!(tiers.values().filter(|t| **t == a).count() >= 30, "{a:?}");
    }
}
