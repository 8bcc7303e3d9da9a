//! A random hostile origin behind the whole batch path ([`super::answer`] over the
//! in-process tier, and in fewer runs over Redis), as `src/proxy/tests.rs` drives the edge
//! proxy: items come and go, move tile, change tier and class; answers list tiles nobody
//! asked for, misplace ids, leak items above the asked tier, name an id both found and
//! missing, report another tier, hold items no client can read, are
//! partial, fail, time out or hold items too large. Requests ask tiles at several zooms
//! (coarse ones split or answered directly), ids, at every tier, with invalidations by id,
//! tile, class and all between them. Every answer must:
//! - decode and validate with the client's decoder and default limits, report the caller's
//!   tier, hold nothing above it, answer each requested tile and id or name it unanswered,
//!   list only items inside their tile (or inside a tile another copy of the item lay
//!   in: see [`check`]);
//! - come from origin calls asked at `agent` or at the caller's tier only;
//! - after an invalidation, hold no copy of an item the invalidation covered that the
//!   origin gave before it (each item the origin gives carries a serial in its `data`;
//!   by tile, only an item the answer lists under a tile: see [`covers`]; by id on Redis
//!   too, an item that moved to another data tile included: see [`check`]).
//!
//! Some steps run a few requests at once (their data tiles then follow one another's
//! calls: `single_flight`), and one run in three has warm-up on (its origin then never
//! sheds load, which would keep warm-up quiet). The clock is the system's: the server reads
//! it itself (`tier::now_ms`), so it does not step back here.
//!
//! Seeded: a failure names its seed and step (timing can still vary: a call past
//! `--origin-timeout-ms`, warm-up's workers). `TW_FUZZ_SEEDS`, `TW_FUZZ_STEPS` and
//! `TW_FUZZ_FIRST_SEED` make the run longer by hand (`TW_FUZZ_SEEDS=1000 TW_FUZZ_STEPS=300
//! cargo test -p tilewarm-server --lib batch::fuzz`); `TW_FUZZ_TRACE` prints each origin
//! answer, `TW_FUZZ_STATS` (with `--nocapture`) what each run exercised.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use serde_json::value::RawValue;
use tilewarm::access::Access;
use tilewarm::protocol::{
    decode_response, BatchRequest, BatchResponse, ErrorBody, ErrorCode, Invalidation, Item, Limits,
    RawData, Unanswered, MAX_TTL_S,
};
use tilewarm::tile::TileId;

use crate::origin::{
    assemble, Answer, ItemBound, ItemCount, OriginBackend, OriginFailure, OriginFuture, OriginStats,
};
use crate::{App, Config};

/// xorshift, as the proxy's changing origin.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
    fn f(&mut self) -> f64 {
        self.below(1 << 20) as f64 / (1 << 20) as f64
    }
    fn pick<T: Clone>(&mut self, v: &[T]) -> T {
        v[self.below(v.len() as u64) as usize].clone()
    }
    fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
}

const CLASSES: [&str; 3] = ["active", "sold", "pending"];
const IDS: u64 = 40;

/// An item as the origin holds it now.
#[derive(Clone, Debug)]
struct Held {
    lon: f64,
    lat: f64,
    class: String,
    access: Access,
}

/// One copy of an item the origin gave: what it said, and how many invalidations had run.
#[derive(Clone, Debug)]
struct Given {
    id: String,
    lon: f64,
    lat: f64,
    class: String,
    access: Access,
    invalidations: usize,
}

struct World {
    rng: Rng,
    /// The zoom-11 tile everything is in.
    region: TileId,
    /// Data tiles where most items are, so some go over --max-tile-items.
    hot: Vec<TileId>,
    items: BTreeMap<String, Held>,
    given: HashMap<u64, Given>,
    next_serial: u64,
    invalidations: usize,
    /// The tiers the origin was asked at since the last request began.
    asked: Vec<Access>,
    /// Whether it answers as an upstream (partial answers; `kind() == "upstream"`).
    upstream: bool,
    /// Whether it never sheds load (429, 503): they keep warm-up quiet for their
    /// `Retry-After`, so a run with warm-up on has none.
    never_sheds: bool,
}

impl World {
    fn place(&mut self) -> (f64, f64) {
        let t = if self.rng.below(10) < 7 {
            let i = self.rng.below(self.hot.len() as u64) as usize;
            self.hot[i]
        } else {
            self.region
        };
        let b = t.bounds();
        let lon = b.west + (b.east - b.west) * (0.001 + 0.998 * self.rng.f());
        let lat = b.south + (b.north - b.south) * (0.001 + 0.998 * self.rng.f());
        (lon, lat)
    }

    fn held(&mut self) -> Held {
        let (lon, lat) = self.place();
        Held {
            lon,
            lat,
            class: self.rng.pick(&CLASSES).to_string(),
            access: self.rng.pick(&Access::ALL),
        }
    }

    /// Items come and go, move, change tier and class.
    fn churn(&mut self) {
        for _ in 0..self.rng.below(4) {
            let id = format!("i{}", self.rng.below(IDS));
            match self.rng.below(5) {
                0 => {
                    self.items.remove(&id);
                }
                _ => {
                    let h = self.held();
                    self.items.insert(id, h);
                }
            }
        }
    }

    /// A copy of `id` to give now, with a fresh serial.
    fn give(&mut self, id: &str, h: &Held, too_large: bool) -> Item<RawData> {
        let s = self.next_serial;
        self.next_serial += 1;
        self.given.insert(
            s,
            Given {
                id: id.to_owned(),
                lon: h.lon,
                lat: h.lat,
                class: h.class.clone(),
                access: h.access,
                invalidations: self.invalidations,
            },
        );
        let data = if too_large {
            format!("{{\"s\":{s},\"pad\":\"{}\"}}", "x".repeat(200))
        } else {
            format!("{{\"s\":{s}}}")
        };
        let ttl = self.rng.pick(&[
            None,
            None,
            None,
            Some(0),
            Some(60),
            Some(MAX_TTL_S),
            Some(u32::MAX),
        ]);
        Item {
            id: id.to_owned(),
            lon: h.lon,
            lat: h.lat,
            class: h.class.clone(),
            access: h.access,
            ttl,
            data: RawValue::from_string(data).unwrap(),
        }
    }

    /// The origin's answer today (or its failure), each tile outside `bound` held to
    /// `tile_limit` items (the bound itself is left to the service's check after the
    /// guards).
    fn answer(
        &mut self,
        request: &BatchRequest,
        bound: Option<ItemBound<'_>>,
        tile_limit: usize,
    ) -> Result<Answer, OriginFailure> {
        self.asked.push(request.access);
        if self.rng.one_in(6) {
            self.churn();
        }
        let r = &mut self.rng;
        match r.below(30) {
            0 => return Err(OriginFailure::Timeout { ms: 40 }),
            1 => return Err(OriginFailure::Failed("it broke".into())),
            2 | 3 if self.never_sheds => return Err(OriginFailure::Failed("it broke".into())),
            2 => {
                return Err(OriginFailure::Overloaded {
                    message: "busy".into(),
                    retry_after_s: r.pick(&[None, Some(0), Some(u64::MAX)]),
                })
            }
            3 => {
                return Err(OriginFailure::RateLimited {
                    message: "slow down".into(),
                    retry_after_s: Some(3),
                })
            }
            4 => {
                return Err(OriginFailure::Refused {
                    error: ErrorBody {
                        code: r.pick(&[ErrorCode::BadRequest, ErrorCode::PayloadTooLarge]),
                        message: "the answer would hold 99 items".into(),
                    },
                    asked: request.access,
                })
            }
            _ => {}
        }
        // What it gives: each item as held, or (one in six) a copy that moved or changed
        // tier or class since.
        let snapshot: Vec<(String, Held)> = self
            .items
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut items = Vec::new();
        for (id, mut h) in snapshot {
            if self.rng.one_in(6) {
                let other = self.held();
                match self.rng.below(3) {
                    0 => (h.lon, h.lat) = (other.lon, other.lat),
                    1 => h.access = other.access,
                    _ => h.class = other.class,
                }
            }
            // A backend filters by the asked tier; a leaky one does not, sometimes.
            if !request.access.can_see(h.access) && !self.rng.one_in(8) {
                continue;
            }
            let big = self.rng.one_in(25);
            items.push(self.give(&id, &h, big));
        }
        let ttl = self.rng.pick(&[None, Some(0), Some(60), Some(MAX_TTL_S)]);
        let mut resp = assemble(request, items.clone(), items.clone(), ttl);
        // (`assemble` lists every item given, and says `missing` a requested id above the
        // asked tier.)
        let r = &mut self.rng;
        let other = r.pick(&Access::ALL);
        resp.access = r.pick(&[None, None, None, Some(request.access), Some(other)]);
        if r.one_in(12) && !resp.tiles.is_empty() {
            let i = r.below(resp.tiles.len() as u64) as usize;
            resp.tiles.remove(i); // a requested tile left out
        }
        if r.one_in(8) {
            // A list nobody asked for.
            let t = self.hot[0];
            let ids = resp.items.iter().take(3).map(|it| it.id.clone()).collect();
            let r = &mut self.rng;
            resp.tiles.push(tilewarm::protocol::TileList {
                tile: if r.one_in(2) { t } else { self.region },
                ids,
                ttl: None,
            });
        }
        let r = &mut self.rng;
        if r.one_in(8) && !resp.tiles.is_empty() && !resp.items.is_empty() {
            // An id listed under a tile it does not lie in.
            let i = r.below(resp.tiles.len() as u64) as usize;
            let j = r.below(resp.items.len() as u64) as usize;
            let id = resp.items[j].id.clone();
            if !resp.tiles[i].ids.contains(&id) {
                resp.tiles[i].ids.push(id);
            }
        }
        if r.one_in(10) && !resp.items.is_empty() {
            // An id both found and missing.
            let j = r.below(resp.items.len() as u64) as usize;
            resp.missing.push(resp.items[j].id.clone());
        }
        if r.one_in(10) && !request.ids.is_empty() {
            // A requested id left out, or said missing though it exists.
            let id = r.pick(&request.ids);
            match r.below(2) {
                0 => resp.items.retain(|it| it.id != id),
                _ => {
                    if !resp.missing.contains(&id) {
                        resp.missing.push(id)
                    }
                }
            }
        }
        if r.one_in(12) {
            // A second copy of an item, somewhere else.
            if let Some(first) = resp.items.first().map(|it| it.id.clone()) {
                let h = self.held();
                let copy = self.give(&first, &h, false);
                resp.items.push(copy);
            }
        }
        if self.rng.one_in(15) && !resp.items.is_empty() {
            // An item no client may read: a bad id, class or position.
            let r = &mut self.rng;
            let j = r.below(resp.items.len() as u64) as usize;
            let it = &mut resp.items[j];
            match r.below(5) {
                0 => it.class = String::new(),
                1 => it.class = "c".repeat(300),
                2 => it.lat = f64::NAN,
                3 => it.lon = 200.0,
                _ => {
                    let id = if r.one_in(2) {
                        String::new()
                    } else {
                        "x".repeat(300)
                    };
                    for l in &mut resp.tiles {
                        for x in &mut l.ids {
                            if *x == it.id {
                                x.clone_from(&id);
                            }
                        }
                    }
                    it.id = id;
                }
            }
        }
        if self.rng.one_in(15) {
            // Missing ids nobody asked for.
            resp.missing.push(format!("i{}", self.rng.below(IDS)));
        }
        if std::env::var_os("TW_FUZZ_TRACE").is_some() {
            eprintln!("origin asked {request:?}");
            for l in &resp.tiles {
                eprintln!("  list {} {:?}", l.tile, l.ids);
            }
            for it in &resp.items {
                let t = TileId::from_lon_lat(it.lon, it.lat, 14)
                    .map_or("off the map".into(), |t| t.to_string());
                eprintln!("  item {} {} at {t} {}", it.id, it.data.get(), it.access);
            }
        }
        let mut a = Answer::limit_lists(resp, tile_limit, bound, request.access);
        if self.upstream && self.rng.one_in(4) {
            // A partial answer: some tiles and ids left out, for a reason.
            let r = &mut self.rng;
            let code = r.pick(&[
                ErrorCode::PayloadTooLarge,
                ErrorCode::ResponseFull,
                ErrorCode::RateLimited,
                ErrorCode::Overloaded,
                ErrorCode::UpstreamTimeout,
                ErrorCode::UpstreamError,
            ]);
            let code = match code {
                ErrorCode::RateLimited | ErrorCode::Overloaded if self.never_sheds => {
                    ErrorCode::UpstreamError
                }
                c => c,
            };
            let tiles: Vec<TileId> = request
                .tiles
                .iter()
                .copied()
                .filter(|_| r.one_in(2))
                .collect();
            let ids: Vec<String> = request
                .ids
                .iter()
                .filter(|_| r.one_in(2))
                .cloned()
                .collect();
            if r.one_in(2) {
                a.response.tiles.retain(|l| !tiles.contains(&l.tile));
                a.response.items.retain(|it| !ids.contains(&it.id));
                a.response.missing.retain(|id| !ids.contains(id));
            }
            if !tiles.is_empty() || !ids.is_empty() {
                a.unanswered = Some(Unanswered {
                    code,
                    message: "left out upstream".into(),
                    tiles,
                    ids,
                });
            }
        }
        Ok(a)
    }
}

struct Hostile(Arc<Mutex<World>>);

impl OriginBackend for Hostile {
    fn kind(&self) -> &'static str {
        if self.0.lock().unwrap().upstream {
            "upstream"
        } else {
            "memory"
        }
    }

    fn answer<'a>(
        &'a self,
        request: &'a BatchRequest,
        bound: Option<ItemBound<'a>>,
    ) -> OriginFuture<'a, Result<BatchResponse<RawData>, OriginFailure>> {
        Box::pin(async move {
            let a = self.0.lock().unwrap().answer(request, bound, usize::MAX)?;
            Ok(a.response)
        })
    }

    fn answer_limited<'a>(
        &'a self,
        request: &'a BatchRequest,
        bound: Option<ItemBound<'a>>,
        tile_limit: usize,
    ) -> OriginFuture<'a, Result<Answer, OriginFailure>> {
        Box::pin(async move {
            // Other requests' calls run meanwhile (their tiles then follow this one's:
            // `single_flight`).
            let yields = self.0.lock().unwrap().rng.below(4);
            for _ in 0..yields {
                tokio::task::yield_now().await;
            }
            let (a, sleep) = {
                let mut w = self.0.lock().unwrap();
                let sleep = w.rng.one_in(60);
                (w.answer(request, bound, tile_limit), sleep)
            };
            if sleep {
                // Past --origin-timeout-ms.
                tokio::time::sleep(std::time::Duration::from_millis(60)).await;
            }
            a
        })
    }

    fn count_up_to<'a>(
        &'a self,
        tiles: &'a [TileId],
        access: Access,
        _limit: usize,
    ) -> OriginFuture<'a, Result<ItemCount, OriginFailure>> {
        Box::pin(async move {
            let mut w = self.0.lock().unwrap();
            let n = w
                .items
                .values()
                .filter(|h| access.can_see(h.access))
                .filter(|h| tiles.iter().any(|t| t.contains_point(h.lon, h.lat)))
                .count();
            // Counts lie too (the data changes between the count and the fetch).
            Ok(match w.rng.below(6) {
                0 => ItemCount::Unknown,
                1 => ItemCount::Exact(n / 2),
                _ => ItemCount::Exact(n),
            })
        })
    }

    fn describe(&self) -> String {
        "a hostile test origin".into()
    }
}

/// A random request: tiles of the region at zooms 10..=16, ids, a tier.
fn request(w: &mut World) -> (BatchRequest, Access) {
    let r = &mut w.rng;
    let mut tiles = Vec::new();
    for _ in 0..r.below(4) {
        let z = r.pick(&[10u8, 11, 12, 13, 14, 14, 14, 15, 16]);
        let t = if z <= 11 {
            w.region.ancestor(z).unwrap()
        } else {
            let (lon, lat) = if r.one_in(2) {
                let i = r.below(w.hot.len() as u64) as usize;
                let b = w.hot[i].bounds();
                (
                    b.west + (b.east - b.west) * r.f(),
                    b.south + (b.north - b.south) * r.f(),
                )
            } else {
                let b = w.region.bounds();
                (
                    b.west + (b.east - b.west) * r.f(),
                    b.south + (b.north - b.south) * r.f(),
                )
            };
            TileId::from_lon_lat(lon, lat, z).unwrap()
        };
        if !tiles.contains(&t) {
            tiles.push(t);
        }
    }
    let mut ids: Vec<String> = Vec::new();
    for _ in 0..r.below(4) {
        let id = format!("i{}", r.below(IDS + 5));
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    let caller = r.pick(&Access::ALL);
    let claimed = r.pick(&Access::ALL);
    (
        BatchRequest {
            tiles,
            ids,
            access: claimed,
        },
        caller,
    )
}

/// A random invalidation: ids, tiles at several zooms, classes, or all.
fn invalidation(w: &mut World) -> Invalidation {
    let r = &mut w.rng;
    let mut inv = Invalidation::default();
    match r.below(7) {
        0 | 1 => {
            for _ in 0..1 + r.below(3) {
                inv.ids.push(format!("i{}", r.below(IDS)));
            }
        }
        2 | 3 => {
            let z = r.pick(&[11u8, 12, 13, 14, 15]);
            let t = if r.one_in(2) {
                let i = r.below(w.hot.len() as u64) as usize;
                w.hot[i]
            } else {
                w.region
            };
            let b = t.bounds();
            let (lon, lat) = (
                b.west + (b.east - b.west) * r.f(),
                b.south + (b.north - b.south) * r.f(),
            );
            inv.tiles.push(TileId::from_lon_lat(lon, lat, z).unwrap());
        }
        4 | 5 => inv.classes.push(r.pick(&CLASSES).to_string()),
        _ => inv.all = true,
    }
    inv
}

/// Whether `inv` covers the copy `g` by tile, class or all. By tile only when the answer
/// lists it under a tile: a tile invalidation drops the tile lists it covers and the items
/// they list (the protocol's `Invalidation::tiles`), not an item the tier holds from a
/// request by id only.
fn covers(inv: &Invalidation, g: &Given, in_a_list: bool) -> bool {
    inv.all
        || inv.classes.contains(&g.class)
        || (in_a_list && inv.tiles.iter().any(|t| t.contains_point(g.lon, g.lat)))
}

/// Checks one answer; `Err` says what is wrong.
fn check(
    w: &World,
    invs: &[Invalidation],
    req: &BatchRequest,
    caller: Access,
    body: &str,
) -> Result<(), String> {
    let d = decode_response(body.as_bytes(), &Limits::default()).map_err(|e| e.to_string())?;
    if d.access != Some(caller) {
        return Err(format!("reports {:?}, caller {caller}", d.access));
    }
    let v: serde_json::Value = serde_json::from_str(body).map_err(|e| e.to_string())?;
    let err_tiles: Vec<TileId> = v["error"]["tiles"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|t| t.as_str().unwrap().parse().unwrap())
                .collect()
        })
        .unwrap_or_default();
    let err_ids: Vec<String> = v["error"]["ids"]
        .as_array()
        .map(|a| a.iter().map(|t| t.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default();
    for l in &d.tiles {
        if !req.tiles.contains(&l.tile) {
            return Err(format!("tile {} not asked for", l.tile));
        }
        if err_tiles.contains(&l.tile) {
            return Err(format!("tile {} both answered and unanswered", l.tile));
        }
    }
    for t in &req.tiles {
        if !d.tiles.iter().any(|l| l.tile == *t) && !err_tiles.contains(t) {
            return Err(format!("tile {t} neither answered nor named unanswered"));
        }
    }
    for t in &err_tiles {
        if !req.tiles.contains(t) {
            return Err(format!("unanswered tile {t} not asked for"));
        }
    }
    for id in &req.ids {
        let found = d.items.iter().any(|it| it.id == *id) || d.missing.contains(id);
        if found == err_ids.contains(id) {
            return Err(format!(
                "id {id}: answered {found}, named unanswered {}",
                !found
            ));
        }
    }
    for id in &d.missing {
        if !req.ids.contains(id) {
            return Err(format!("missing {id} not asked for"));
        }
    }
    let by_id: HashMap<&str, &Item<RawData>> =
        d.items.iter().map(|it| (it.id.as_str(), it)).collect();
    for l in &d.tiles {
        for id in &l.ids {
            let it = by_id[id.as_str()];
            // One answer may mix a tile list read from the tier with one fetched now, each
            // holding its own copy of an item that moved in between: the answer holds one
            // copy (`policy::Read::assemble`: the first), so an item may be listed under a
            // tile another copy of it lay in (clients drop such an entry: `ItemCache::
            // insert_tile`). Never under a tile no copy of it lay in.
            let some_copy_there = || {
                w.given
                    .values()
                    .any(|g| g.id == *id && l.tile.contains_point(g.lon, g.lat))
            };
            if !l.tile.contains_point(it.lon, it.lat) && !some_copy_there() {
                return Err(format!("{id} listed under {} it does not lie in", l.tile));
            }
        }
    }
    let listed: HashSet<&str> = d
        .tiles
        .iter()
        .flat_map(|l| l.ids.iter().map(String::as_str))
        .chain(req.ids.iter().map(String::as_str))
        .collect();
    for it in &d.items {
        if !caller.can_see(it.access) {
            return Err(format!(
                "{} is {} above the caller's {caller}",
                it.id, it.access
            ));
        }
        if !listed.contains(it.id.as_str()) {
            return Err(format!("{} neither listed nor asked for", it.id));
        }
        let data: serde_json::Value = serde_json::from_str(it.data.get()).unwrap();
        let s = data["s"].as_u64().ok_or("no serial")?;
        let g = &w.given[&s];
        if (g.id.as_str(), g.lon, g.lat, g.class.as_str(), g.access)
            != (it.id.as_str(), it.lon, it.lat, it.class.as_str(), it.access)
        {
            return Err(format!(
                "{} is not the copy {s} the origin gave: {g:?}",
                it.id
            ));
        }
        let in_a_list = d.tiles.iter().any(|l| l.ids.contains(&it.id));
        // By id, on Redis too: a tile value holding a copy is found by the position the
        // item key holds, and a write that moves an item to another data tile unlinks the
        // old tile's value (docs/server.md, *Invalidation and the copies in tile values*).
        let by_id = |i: usize| invs[i].ids.contains(&g.id);
        if let Some(i) =
            (g.invalidations..invs.len()).find(|&i| covers(&invs[i], g, in_a_list) || by_id(i))
        {
            return Err(format!(
                "{} copy {s} given before invalidation #{i} {:?} that covers it",
                it.id, invs[i]
            ));
        }
    }
    Ok(())
}

fn config() -> Config {
    Config {
        data_zoom: 14,
        split_levels: 2,
        max_tile_items: 5,
        max_response_items: 25,
        max_item_data_bytes: 64,
        origin_timeout_ms: 40,
        warmup_ring: 0,
        ..Config::default()
    }
}

/// One seeded run of `steps` requests and invalidations.
async fn run(seed: u64, steps: usize, redis: Option<u16>) -> Result<(), String> {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let region = TileId::from_lon_lat(-122.33, 47.61, 11).unwrap();
    let hot = (0..4)
        .map(|_| {
            let b = region.bounds();
            let (lon, lat) = (
                b.west + (b.east - b.west) * rng.f(),
                b.south + (b.north - b.south) * rng.f(),
            );
            TileId::from_lon_lat(lon, lat, 14).unwrap()
        })
        .collect();
    let upstream = rng.one_in(2);
    let warmup = rng.one_in(3);
    let world = Arc::new(Mutex::new(World {
        rng,
        region,
        hot,
        items: BTreeMap::new(),
        given: HashMap::new(),
        next_serial: 0,
        invalidations: 0,
        asked: Vec::new(),
        upstream,
        never_sheds: warmup,
    }));
    {
        let mut w = world.lock().unwrap();
        for _ in 0..30 {
            w.churn();
        }
    }
    let config = Config {
        warmup_ring: u32::from(warmup),
        redis: redis.map(|port| format!("redis://127.0.0.1:{port}")),
        // Each run its own keys (no prefix another's starts with).
        redis_prefix: format!("fuzz{seed:06}:"),
        ..config()
    };
    let app: Arc<App> = crate::build_with_origin(
        config,
        Box::new(Hostile(Arc::clone(&world))),
        Arc::new(OriginStats::default()),
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut invs: Vec<Invalidation> = Vec::new();
    for step in 0..steps {
        let at = |e: String| {
            format!("seed {seed} step {step} (upstream {upstream}, warm-up {warmup}): {e}")
        };
        let (reqs, inv) = {
            let mut w = world.lock().unwrap();
            if w.rng.one_in(5) {
                let inv = invalidation(&mut w);
                w.invalidations += 1;
                (Vec::new(), Some(inv))
            } else {
                if w.rng.one_in(4) {
                    w.churn();
                }
                w.asked.clear();
                // Mostly one request, sometimes a few at once.
                let n = if w.rng.one_in(4) {
                    2 + w.rng.below(2)
                } else {
                    1
                };
                let reqs: Vec<(BatchRequest, Access)> = (0..n)
                    .map(|_| request(&mut w))
                    .filter(|(r, _)| r.validate(&Limits::default()).is_ok() && !r.is_empty())
                    .collect();
                (reqs, None)
            }
        };
        // Warm-up's workers run between steps (on this one thread).
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        let trace = std::env::var_os("TW_FUZZ_TRACE").is_some();
        if trace {
            eprintln!("step {step}: {reqs:?} {inv:?}");
        }
        if let Some(inv) = inv {
            crate::invalidate::invalidate(&app, &inv)
                .await
                .map_err(|e| at(e.to_string()))?;
            invs.push(inv);
            continue;
        }
        let slots: Vec<crate::admission::HeldSlot> =
            reqs.iter().map(|_| Default::default()).collect();
        let answers = futures_util::future::join_all(
            reqs.iter()
                .zip(&slots)
                .map(|((req, caller), slot)| super::answer(&app, req, *caller, slot)),
        )
        .await;
        let w = world.lock().unwrap();
        // Warm-up asks at `agent`; a request at `agent` or at its caller's tier.
        for &asked in &w.asked {
            if asked != Access::Agent && !reqs.iter().any(|(_, c)| *c == asked) {
                return Err(at(format!("origin asked at {asked} for {reqs:?}")));
            }
        }
        for ((req, caller), got) in reqs.iter().zip(answers) {
            let caller = *caller;
            match got {
                Ok(body) => check(&w, &invs, req, caller, &body)
                    .map_err(|e| at(format!("{e}\nrequest {req:?} as {caller}\n{body}")))?,
                Err(refusal) if refusal.code == ErrorCode::Internal => {
                    return Err(at(format!("{refusal:?} for {req:?} as {caller}")))
                }
                Err(_) => {}
            }
        }
    }
    if std::env::var_os("TW_FUZZ_STATS").is_some() {
        let m = &app.metrics;
        let o = &app.origin.stats;
        use std::sync::atomic::Ordering::Relaxed;
        eprintln!(
            "seed {seed} ({}): degraded {} tile hits {} id hits {} calls {} warm-up {} enqueued {} quiet {} at caller tier {} remembered {} leaked {} bad {} misplaced {} incomplete {} over limit {} too large {}",
            app.tier.name(),
            m.degraded_requests.load(Relaxed),
            m.cache.tile_hits.load(Relaxed),
            m.cache.id_hits.load(Relaxed),
            m.origin_calls_request.load(Relaxed),
            m.origin_calls_warmup.load(Relaxed),
            m.warmup_enqueued.load(Relaxed),
            m.warmup_origin_quiet_skipped.load(Relaxed),
            m.tiles_asked_at_caller_tier.load(Relaxed),
            m.tiles_over_limit_remembered.load(Relaxed),
            o.leaked_items.load(Relaxed),
            o.bad_rows.load(Relaxed),
            o.misplaced_items.load(Relaxed),
            o.incomplete_answers.load(Relaxed),
            o.tiles_over_limit.load(Relaxed),
            o.items_too_large.load(Relaxed),
        );
    }
    Ok(())
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `seeds` runs (or `TW_FUZZ_SEEDS`) of `steps` steps (or `TW_FUZZ_STEPS`).
fn runs(seeds: u64, steps: u64, redis: Option<u16>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let seeds = env("TW_FUZZ_SEEDS", seeds);
    let steps = env("TW_FUZZ_STEPS", steps) as usize;
    let first = env("TW_FUZZ_FIRST_SEED", 0);
    for seed in first..first + seeds {
        if let Err(e) = rt.block_on(run(seed, steps, redis)) {
            panic!("{e}");
        }
    }
}

/// The committed run over the in-process tier: a few seconds. The longer one is by hand
/// (module docs).
#[test]
fn every_answer_is_valid_whatever_a_hostile_origin_says() {
    runs(40, 100, None);
}

/// A scratch `redis-server`, killed on drop.
struct ScratchRedis(std::process::Child);

impl Drop for ScratchRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The same over the Redis tier (its stored values, tile values holding copies of their
/// items, empty blocks, class generations), fewer runs. Passes with a note when
/// `redis-server` cannot be run (`server/tests/setup.sh` installs it).
#[test]
fn every_answer_is_valid_whatever_a_hostile_origin_says_over_redis() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let Ok(child) = crate::tier::loopback_redis_command(port).spawn() else {
        eprintln!("SKIP: redis-server cannot be run");
        return;
    };
    let _redis = ScratchRedis(child);
    let up = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(up, "redis-server did not listen on {port}");
    runs(10, 100, Some(port));
}
