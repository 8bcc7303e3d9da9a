//! Access-tier isolation of the server as a property (issue 8): random sequences of batch
//! requests at mixed tiers, some of them concurrent, over the shared cache tier (the
//! in-process one, and Redis), with tile lists and items expiring (1 s TTLs) and the
//! background warm-up filling the tier at the top tier, never answer a caller with an item
//! above its tier, and always answer exactly what the origin holds for that tier.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config as PropConfig, TestRunner};
use tilewarm::access::Access;
use tilewarm::protocol::{decode_response, BatchRequest};
use tilewarm::tile::TileId;
use tilewarm_server::{batch::answer, build, App};

use crate::common::{config, redis_available, Config, RedisServer};

/// A tile of the block: zoom 13 + dz, (dx, dy) on that zoom's grid of the block.
type BlockTile = (u8, u32, u32);

/// A request: tiles of the block, ids by index into the block's ids, the caller's tier.
type Req = (Vec<BlockTile>, Vec<usize>, Access);

#[derive(Clone, Debug)]
enum Op {
    /// These requests at once.
    Batch(Vec<Req>),
    /// Let TTLs run out (real time: the server reads the clock itself).
    Sleep(u64),
}

fn tier() -> impl Strategy<Value = Access> {
    prop::sample::select(Access::ALL.to_vec())
}

fn op() -> impl Strategy<Value = Op> {
    // Tiles at zoom 13..=16 inside a 2 x 2 block of zoom-13 tiles: coarser tiles are split
    // onto data tiles, finer ones filtered from their data tile.
    let tile = (0u8..4, 0u32..16, 0u32..16);
    let request = (
        prop::collection::vec(tile, 0..5),
        prop::collection::vec(0usize..400, 0..4),
        tier(),
    );
    prop_oneof![
        12 => prop::collection::vec(request, 1..4).prop_map(Op::Batch),
        1 => (200u64..1300).prop_map(Op::Sleep),
    ]
}

struct World {
    app: Arc<App>,
    /// The zoom-13 tile at the block's north-west corner.
    corner: TileId,
    ids: Vec<String>,
}

impl World {
    async fn new(config: Config) -> World {
        let app = build(config).await.expect("server builds");
        let o = app.origin.index().expect("the memory origin");
        let dense = o
            .occupied_tiles(13)
            .into_iter()
            .max_by_key(|&(_, n)| n)
            .unwrap()
            .0;
        let corner = TileId::new(13, dense.x() & !1, dense.y() & !1).unwrap();
        let mut ids: Vec<String> = (0..2)
            .flat_map(|dy| (0..2).map(move |dx| (dx, dy)))
            .flat_map(|(dx, dy)| {
                let t = TileId::new(13, corner.x() + dx, corner.y() + dy).unwrap();
                o.tile_items(t, Access::Agent)
                    .map(|it| it.id.clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        ids.sort();
        assert!(ids.len() > 50, "a dense block: {} items", ids.len());
        for a in Access::ALL {
            let n = ids
                .iter()
                .filter(|id| {
                    o.tile_items(corner.ancestor(11).unwrap(), Access::Agent)
                        .any(|it| &it.id == *id && it.access == a)
                })
                .count();
            assert!(n > 0, "items at {a:?} in the block");
        }
        World { app, corner, ids }
    }

    fn tile(&self, (dz, dx, dy): BlockTile) -> TileId {
        // dz 0: zoom 13; 1: 14; 2: 15; 3: 16. (dx, dy) in 0..16 scaled to the zoom's grid.
        let z = 13 + dz;
        let n = 2u32 << dz; // the block is 2 x 2 zoom-13 tiles
        TileId::new(
            z,
            (self.corner.x() << dz) + dx % n,
            (self.corner.y() << dz) + dy % n,
        )
        .unwrap()
    }

    fn request(&self, (tiles, ids, access): &Req) -> BatchRequest {
        let mut t: Vec<TileId> = tiles.iter().map(|&x| self.tile(x)).collect();
        t.sort();
        t.dedup();
        let mut i: Vec<String> = ids
            .iter()
            .map(|&k| self.ids[k % self.ids.len()].clone())
            .collect();
        i.sort();
        i.dedup();
        BatchRequest {
            tiles: t,
            ids: i,
            access: *access,
        }
    }

    /// Checks one answer against the origin at the caller's tier.
    fn check(&self, req: &BatchRequest, body: &str) -> Result<(), TestCaseError> {
        // A response may be longer than the largest request (the server's `max_body_bytes`):
        // read it as a client does, up to the protocol's default.
        let limits = tilewarm::protocol::Limits {
            max_body_bytes: tilewarm::protocol::Limits::default().max_body_bytes,
            ..self.app.limits
        };
        let r = decode_response(body.as_bytes(), &limits)
            .map_err(|e| TestCaseError::fail(format!("invalid answer: {e}")))?;
        let o = self.app.origin.index().expect("the memory origin");
        for it in &r.items {
            prop_assert!(
                it.access <= req.access,
                "{} ({:?}) sent to a {:?} caller",
                it.id,
                it.access,
                req.access
            );
        }
        prop_assert_eq!(r.tiles.len(), req.tiles.len());
        for list in &r.tiles {
            let got: BTreeSet<&str> = list.ids.iter().map(String::as_str).collect();
            let truth: BTreeSet<&str> = o
                .tile_items(list.tile, req.access)
                .map(|it| it.id.as_str())
                .collect();
            prop_assert_eq!(got, truth, "tile {} at {:?}", list.tile, req.access);
        }
        for id in &req.ids {
            let visible = o
                .tile_items(self.corner.ancestor(0).unwrap(), req.access)
                .any(|it| &it.id == id);
            let sent = r.items.iter().any(|it| &it.id == id);
            prop_assert_eq!(visible, sent, "id {} at {:?}", id, req.access);
            prop_assert_eq!(
                !visible,
                r.missing.contains(id),
                "id {} missing at {:?}",
                id,
                req.access
            );
        }
        Ok(())
    }

    async fn apply(&self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Sleep(ms) => tokio::time::sleep(Duration::from_millis(*ms)).await,
            Op::Batch(reqs) => {
                let mut set = tokio::task::JoinSet::new();
                for r in reqs {
                    let req = self.request(r);
                    let app = Arc::clone(&self.app);
                    set.spawn(async move {
                        let out = answer(&app, &req, req.access, &Default::default()).await;
                        (req, out)
                    });
                }
                while let Some(done) = set.join_next().await {
                    let (req, out) = done.expect("request task");
                    let body = out.map_err(|e| {
                        TestCaseError::fail(format!("refused {}: {}", req.to_json(), e.message))
                    })?;
                    self.check(&req, &body)?;
                }
            }
        }
        Ok(())
    }
}

/// Short TTLs, so sequences see lists and items expire and get refilled at other tiers.
fn tier_config() -> Config {
    Config {
        ttl_active_s: 1,
        ttl_default_s: 1,
        ttl_off_market_s: 2,
        tile_ttl_s: 1,
        warmup_ring: 1,
        ..config()
    }
}

/// The runtime each test here runs its servers on.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The test configuration with the in-process tier, and with a scratch Redis under
/// `prefix` when one can be started (kept alive by the guard returned with them).
fn in_process_and_redis(prefix: &str) -> (Option<RedisServer>, Vec<Config>) {
    let redis = redis_available().then(RedisServer::start);
    let mut configs = vec![config()];
    if let Some(r) = &redis {
        configs.push(Config {
            redis: Some(r.url()),
            redis_prefix: prefix.into(),
            redis_timeout_ms: 500,
            ..config()
        });
    }
    (redis, configs)
}

fn run_property(config: Config, cases: u32) {
    let rt = runtime();
    // One server for the whole run: its cache tier is shared across cases (as across
    // callers), so every case starts from whatever the earlier ones left in it.
    let world = rt.block_on(World::new(config));
    let mut runner = TestRunner::new(PropConfig {
        cases,
        failure_persistence: None,
        ..PropConfig::default()
    });
    let result = runner.run(&prop::collection::vec(op(), 1..25), |ops| {
        rt.block_on(async {
            for op in &ops {
                world.apply(op).await?;
            }
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn the_in_process_tier_never_answers_above_the_callers_tier() {
    run_property(tier_config(), 48);
}

#[test]
fn the_redis_tier_never_answers_above_the_callers_tier() {
    if !redis_available() {
        return;
    }
    let redis = RedisServer::start();
    run_property(
        Config {
            redis: Some(redis.url()),
            redis_timeout_ms: 500,
            ..tier_config()
        },
        24,
    );
}

/// `batch::answer` filters by the tier it is given (the caller's verified tier), not by the
/// `access` field the request carries: a request that claims `agent`, answered for a
/// `public` caller, holds exactly what the origin holds for `public`, whether the tier is
/// cold or was warmed by an agent first.
#[test]
fn the_verified_tier_bounds_the_answer_not_the_claimed_access() {
    let rt = runtime();
    rt.block_on(async {
        let world = World::new(config()).await;
        let claimed = world.request(&(
            vec![(0, 0, 0), (1, 1, 1), (3, 5, 7)],
            (0..12).collect(),
            Access::Agent,
        ));
        let as_public = BatchRequest {
            access: Access::Public,
            ..claimed.clone()
        };
        for round in ["cold", "warm"] {
            let body = answer(&world.app, &claimed, Access::Public, &Default::default())
                .await
                .expect("answered");
            if let Err(e) = world.check(&as_public, &body) {
                panic!("{round}: {e}");
            }
            // Warm the shared tier at the top tier for the next round.
            answer(&world.app, &claimed, Access::Agent, &Default::default())
                .await
                .expect("answered");
        }
    });
}

/// Coarse tiles from a low-tier caller: a coalesced one (zoom 12, two levels above the data
/// zoom: split onto its 16 data tiles, read and written through the shared tier) and direct
/// ones (zooms 11 and 10: answered straight from the origin, never cached), asked by
/// `public`, `registered` and `verified` callers whose requests claim `agent`
/// (`batch::answer` is given the verified tier, as HTTP does after refusing a claim above
/// it), cold and then warm. Every answer holds exactly the origin's items for the caller's
/// tier, and what the low-tier request wrote to the tier is each data tile's whole list
/// with every item under its own tier (the one key per data tile that every caller reads
/// and that is filtered per caller), never relabelled to the caller's tier. The origin call
/// is made at the top tier on purpose (see `batch::fetch`): the tier is shared, so a list
/// fetched for a `public` caller must also serve an `agent`. Fails when the caller filter
/// in `proxy::policy::Read::assemble` is removed.
#[test]
fn coarse_and_direct_tiles_never_answer_or_cache_above_the_callers_tier() {
    let rt = runtime();
    let (_redis, configs) = in_process_and_redis("coarse:");
    for cfg in configs {
        let on_redis = cfg.redis.is_some();
        rt.block_on(async {
            for caller in [Access::Public, Access::Registered, Access::Verified] {
                let world = World::new(Config {
                    warmup_ring: 0,
                    ..cfg.clone()
                })
                .await;
                // Each world starts from an empty tier (a Redis one is emptied).
                world
                    .app
                    .tier
                    .invalidate(
                        &tilewarm_server::invalidate::Invalidation::everything(),
                        world.app.config.data_zoom,
                    )
                    .await
                    .unwrap();
                let coalesced = world.corner.parent().unwrap();
                let direct = [
                    world.corner.ancestor(10).unwrap(),
                    world.corner.ancestor(9).unwrap(),
                ];
                let claimed = BatchRequest {
                    tiles: vec![coalesced, direct[0], direct[1]],
                    ids: Vec::new(),
                    access: Access::Agent,
                };
                let as_caller = BatchRequest {
                    access: caller,
                    ..claimed.clone()
                };
                for round in ["cold", "warm"] {
                    let body = answer(&world.app, &claimed, caller, &Default::default())
                        .await
                        .expect("answered");
                    if let Err(e) = world.check(&as_caller, &body) {
                        panic!("redis {on_redis}, {caller:?}, {round}: {e}");
                    }
                }
                // What the caller's requests wrote: every data tile of the coalesced tile,
                // whole, each item under the tier the origin gives it.
                let o = world.app.origin.index().expect("the memory origin");
                let data_tiles = coalesced.descendants(14).unwrap();
                let read = world.app.tier.read(&data_tiles, &[]).await.unwrap();
                for (t, hit) in data_tiles.iter().zip(&read.tiles) {
                    let hit = hit.as_ref().unwrap_or_else(|| panic!("{t} not cached"));
                    let mut cached: Vec<(String, Access)> = hit
                        .items
                        .iter()
                        .map(|it| (it.id().to_owned(), it.access()))
                        .collect();
                    let mut truth: Vec<(String, Access)> = o
                        .tile_items(*t, Access::Agent)
                        .map(|it| (it.id.clone(), it.access))
                        .collect();
                    cached.sort();
                    truth.sort();
                    assert_eq!(cached, truth, "redis {on_redis}, {caller:?}: tile {t}");
                }
                // The direct tiles were not cached.
                let direct_read = world.app.tier.read(&direct, &[]).await.unwrap();
                assert!(direct_read.tiles.iter().all(Option::is_none));
            }
        });
    }
}

/// The `ttl` of a tile list tells a caller how long the list stays in the shared tier, and
/// empty lists live shorter there (`--empty-tile-ttl-s`, issue 15). A data tile whose items
/// are all above `public` must look to a `public` caller exactly as a tile with no items at
/// all: were only lists empty at the top tier shortened, such a tile would answer `public`
/// with the full tile TTL and an empty tile with the short one, and the `ttl` (or the
/// `Cache-Control` of `GET /v1/tiles`) would tell that items it may not see are there.
/// Both tiles are filled by an `agent` first (the shared tier holds the top tier's lists),
/// then read by `public`: both lists are empty and both carry the short TTL. Fails when
/// `EmptyTiles::limit` shortens only the lists with no ids at all.
#[test]
fn a_tile_of_hidden_items_has_the_ttl_of_an_empty_tile() {
    let rt = runtime();
    let (_redis, configs) = in_process_and_redis("hidden:");
    for cfg in configs {
        let on_redis = cfg.redis.is_some();
        rt.block_on(async {
            let app = build(Config {
                tile_ttl_s: 3600,
                empty_tile_ttl_s: 30,
                warmup_ring: 0,
                ..cfg
            })
            .await
            .expect("server builds");
            let o = app.origin.index().expect("the memory origin");
            let dz = app.config.data_zoom;
            let hidden = o
                .occupied_tiles(dz)
                .into_iter()
                .map(|(t, _)| t)
                .find(|&t| o.tile_items(t, Access::Public).next().is_none())
                .expect("a data tile holding only items above public");
            // Far out in the ocean: nothing at any tier.
            let empty = TileId::new(dz, 0, 100).unwrap();
            assert!(o.tile_items(empty, Access::Agent).next().is_none());
            let ask = |access| BatchRequest {
                tiles: vec![hidden, empty],
                ids: Vec::new(),
                access,
            };
            let limits = tilewarm::protocol::Limits::default();
            let lists = |body: &str| decode_response(body.as_bytes(), &limits).unwrap().tiles;
            let agent = answer(
                &app,
                &ask(Access::Agent),
                Access::Agent,
                &Default::default(),
            )
            .await
            .expect("answered");
            assert!(!lists(&agent)[0].ids.is_empty(), "agent sees the items");
            for round in ["first", "second"] {
                let public = answer(
                    &app,
                    &ask(Access::Public),
                    Access::Public,
                    &Default::default(),
                )
                .await
                .expect("answered");
                let got = lists(&public);
                assert!(got.iter().all(|l| l.ids.is_empty()), "{public}");
                let ttls: Vec<Option<u32>> = got.iter().map(|l| l.ttl).collect();
                assert!(
                    ttls.iter().all(|t| t.is_some_and(|s| s <= 30)),
                    "redis {on_redis}, {round} public read: ttls {ttls:?} (hidden tile, empty \
                     tile): a tile of hidden items must carry the empty-tile TTL"
                );
            }
        });
    }
}
