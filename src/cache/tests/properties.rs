use super::super::*;
use crate::access::Access;
use crate::tile::unproject;
use crate::util::{HashMap, HashSet};
use proptest::prelude::*;
use std::collections::VecDeque;

const Z: u8 = 4;
/// Eight data tiles inside the zoom-2 tile 2/1/1.
fn pos(i: u8) -> TileId {
    TileId::new(Z, 4 + u32::from(i % 4), 4 + u32::from((i / 4) % 2)).unwrap()
}
fn id(i: u8) -> String {
    format!("i{i}")
}
fn tier(i: u8) -> Access {
    Access::from_rank(i % 4).unwrap_or(Access::Agent)
}
fn meta(p: u8, size: usize, access: Access, class: &str, ttl: Option<u64>) -> ItemMeta {
    let (lon, lat) = unproject(pos(p).centre(), Z);
    ItemMeta {
        lon,
        lat,
        class: class.into(),
        access,
        ttl_ms: ttl,
        size_bytes: size,
    }
}

#[derive(Clone, Debug)]
enum Op {
    Insert {
        id: u8,
        pos: u8,
        size: usize,
        /// 0: visible, 1: loading, 2: prefetch.
        priority: u8,
        access: u8,
        class: u8,
        ttl: Option<u64>,
    },
    Get {
        id: u8,
        caller: u8,
    },
    Peek {
        id: u8,
        caller: u8,
    },
    ReadTile {
        pos: u8,
        caller: u8,
    },
    InsertTile {
        zoom_up: u8,
        pos: u8,
        ids: Vec<u8>,
        ttl: Option<u64>,
        fetched_at: u8,
    },
    SetVisible(Vec<u8>),
    SetLoading(Vec<u8>),
    InvalidateIds(Vec<u8>),
    InvalidateTile(u8),
    InvalidateClass(u8),
    InvalidateAll,
    Purge,
    DropAbove(u8),
    Advance(u64),
}

const CLASSES: [&str; 3] = ["active", "off_market", "other"];

const PRIORITIES: [Priority; 3] = [Priority::Visible, Priority::Loading, Priority::Prefetch];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u8..10, 0u8..8, 0usize..=25, 0u8..3, 0u8..4, 0u8..3,
              proptest::option::of(0u64..400))
            .prop_map(|(id, pos, size, priority, access, class, ttl)| Op::Insert {
                id, pos, size, priority, access, class, ttl
            }),
        3 => (0u8..10, 0u8..4).prop_map(|(id, caller)| Op::Get { id, caller }),
        1 => (0u8..10, 0u8..4).prop_map(|(id, caller)| Op::Peek { id, caller }),
        2 => (0u8..8, 0u8..4).prop_map(|(pos, caller)| Op::ReadTile { pos, caller }),
        3 => (0u8..3, 0u8..8, proptest::collection::vec(0u8..10, 0..6),
              proptest::option::of(0u64..400), 0u8..4)
            .prop_map(|(zoom_up, pos, ids, ttl, fetched_at)| Op::InsertTile {
                zoom_up, pos, ids, ttl, fetched_at
            }),
        2 => proptest::collection::vec(0u8..8, 0..4).prop_map(Op::SetVisible),
        2 => proptest::collection::vec(0u8..8, 0..4).prop_map(Op::SetLoading),
        1 => proptest::collection::vec(0u8..10, 0..3).prop_map(Op::InvalidateIds),
        1 => (0u8..8).prop_map(Op::InvalidateTile),
        1 => (0u8..3).prop_map(Op::InvalidateClass),
        1 => Just(Op::InvalidateAll),
        1 => Just(Op::Purge),
        1 => (0u8..4).prop_map(Op::DropAbove),
        3 => (0u64..150).prop_map(Op::Advance),
    ]
}

fn config(swr: u64) -> CacheConfig {
    CacheConfig {
        tile_zoom: Z,
        max_items: 6,
        max_bytes: 60,
        max_tiles: 10,
        default_ttl_ms: 200,
        class_ttl_ms: HashMap::from([("active".into(), 300), ("off_market".into(), 1_000)]),
        tile_ttl_ms: None,
        stale_while_revalidate_ms: swr,
        bounds: crate::cache::WORLD,
    }
}

/// Structural invariants that hold after every call.
fn check_invariants(c: &ItemCache<u32>, now: u64) -> Result<(), TestCaseError> {
    let cfg = c.config();
    prop_assert!(c.len() <= cfg.max_items);
    prop_assert!(c.bytes() <= cfg.max_bytes);
    let sum: usize = c.items.iter().map(|(_, it)| it.size_bytes).sum();
    prop_assert_eq!(sum, c.bytes());
    let s = c.stats();
    prop_assert_eq!(s.entries, c.len());
    prop_assert_eq!(s.bytes, c.bytes());
    prop_assert_eq!(s.tiles, c.tiles.len());
    prop_assert!(c.tiles.len() <= cfg.max_tiles);
    let mut load: HashMap<TileId, Load> = HashMap::new();
    for (k, it) in c.items.iter() {
        prop_assert_eq!(&**k, it.id());
        prop_assert_eq!(it.point_tile().z(), crate::tile::MAX_ZOOM);
        prop_assert_eq!(Ok(it.tile()), it.point_tile().ancestor(cfg.tile_zoom));
        let l = load.entry(it.tile()).or_default();
        l.items += 1;
        l.bytes += it.size_bytes;
    }
    prop_assert_eq!(&load, &c.load);
    let (mut protected, mut loading) = (Load::default(), Load::default());
    for (t, l) in &load {
        let sum = if c.visible.contains(t) {
            &mut protected
        } else if c.loading.contains(t) {
            &mut loading
        } else {
            continue;
        };
        sum.items += l.items;
        sum.bytes += l.bytes;
    }
    prop_assert_eq!(protected, c.protected);
    prop_assert_eq!(loading, c.loading_protected);
    // The lists name what they named as keys, by slots that hold their items.
    if let Err(e) = c.check_lists() {
        prop_assert!(false, "{}", e);
    }
    // What a tile state promises is true.
    let swr = cfg.stale_while_revalidate_ms;
    for (t, e) in c.tiles.iter() {
        for caller in Access::ALL {
            let state = c.tile_freshness(*t, caller, now);
            if !state.is_showable() {
                continue;
            }
            prop_assert!(e.fetched_at >= caller);
            prop_assert!(expiry(e.expires_at_ms, swr, now) != Expiry::Gone);
            let key_of = |s| c.items.item(s).map(|i| &i.id);
            for id in e.ids.keys(&key_of) {
                let Some(id) = id else { continue };
                let item = c.items.peek(id);
                prop_assert!(item.is_some(), "{} shown {:?} without {}", t, state, &**id);
                let Some(item) = item else { continue };
                // Not shown here: above the caller, or lying in another tile.
                if !caller.can_see(item.access()) || item.tile() != *t {
                    continue;
                }
                let f = expiry(item.expires_at_ms(), swr, now);
                match &state {
                    TileFreshness::Fresh => {
                        prop_assert_eq!(f, Expiry::Fresh);
                        prop_assert!(now < e.expires_at_ms);
                    }
                    _ => prop_assert!(f != Expiry::Gone),
                }
            }
        }
    }
    Ok(())
}

fn snapshot(c: &ItemCache<u32>) -> Vec<(String, usize, u32)> {
    c.items
        .iter()
        .map(|(k, it)| (k.to_string(), it.size_bytes, it.payload))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn invariants_hold_after_every_op(
        swr in prop_oneof![Just(0u64), Just(50u64)],
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let mut c: ItemCache<u32> = ItemCache::new(config(swr)).unwrap();
        let mut now = 0u64;
        for (n, op) in ops.into_iter().enumerate() {
            let n = n as u32;
            match op {
                Op::Insert { id: i, pos: p, size, priority, access, class, ttl } => {
                    let key = id(i);
                    let priority = PRIORITIES[priority as usize % 3];
                    // What this insert may not evict: protected items for a prefetch,
                    // visible ones for a load.
                    let kept_before: Vec<String> = c.items.iter()
                        .filter(|(_, it)| match priority {
                            Priority::Visible => false,
                            Priority::Loading => c.visible.contains(&it.tile()),
                            Priority::Prefetch => {
                                c.visible.contains(&it.tile()) || c.loading.contains(&it.tile())
                            }
                        })
                        .map(|(k, _)| k.to_string())
                        .collect();
                    let before = snapshot(&c);
                    let stats = c.stats();
                    let m = meta(p, size, tier(access), CLASSES[class as usize % 3], ttl);
                    let out = c.insert(&key, m, n, now, priority).unwrap();
                    if out.rejected {
                        prop_assert!(priority != Priority::Visible);
                        prop_assert_eq!(snapshot(&c), before);
                        prop_assert_eq!(c.stats().rejected, stats.rejected + 1);
                    } else {
                        let got = c.peek(&key, Access::Agent, now).map(|l| *l.item.payload());
                        let expect_live = ttl != Some(0) || swr > 0;
                        prop_assert!(c.contains(&key));
                        if expect_live {
                            prop_assert_eq!(got, Some(n));
                        }
                    }
                    prop_assert_eq!(c.stats().evictions, stats.evictions + out.evicted as u64);
                    for k in kept_before.iter().filter(|k| **k != key) {
                        prop_assert!(c.contains(k), "a {:?} insert evicted {}", priority, k);
                    }
                }
                Op::Get { id: i, caller } => {
                    let s = c.stats();
                    let found = c.get(&id(i), tier(caller), now).is_some();
                    let t = c.stats();
                    prop_assert_eq!(
                        t.hits + t.stale_hits + t.misses,
                        s.hits + s.stale_hits + s.misses + 1
                    );
                    prop_assert_eq!(found, t.misses == s.misses);
                }
                Op::Peek { id: i, caller } => {
                    let s = c.stats();
                    let order = snapshot(&c);
                    let _ = c.peek(&id(i), tier(caller), now);
                    prop_assert_eq!(c.stats(), s);
                    prop_assert_eq!(snapshot(&c), order);
                }
                Op::ReadTile { pos: p, caller } => {
                    let expect = c.tile_freshness(pos(p), tier(caller), now);
                    let mut shown = 0;
                    let got = c.read_tile(pos(p), tier(caller), now, |it, _, _| {
                        assert!(tier(caller).can_see(it.access()));
                        shown += 1;
                    });
                    prop_assert_eq!(got, expect);
                    let _ = shown;
                }
                Op::InsertTile { zoom_up, pos: p, ids, ttl, fetched_at } => {
                    let t = pos(p).ancestor(Z - zoom_up).unwrap();
                    let names: Vec<String> = ids.iter().map(|&i| id(i)).collect();
                    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                    c.insert_tile(t, &refs, ttl, tier(fetched_at), now).unwrap();
                }
                Op::SetVisible(ps) => {
                    let tiles: Vec<TileId> = ps.iter().map(|&p| pos(p)).collect();
                    c.set_visible(&tiles);
                }
                Op::SetLoading(ps) => {
                    let tiles: Vec<TileId> = ps.iter().map(|&p| pos(p)).collect();
                    c.set_loading(&tiles);
                }
                Op::InvalidateIds(is) => {
                    let names: Vec<String> = is.iter().map(|&i| id(i)).collect();
                    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                    let len = c.len();
                    let n = c.invalidate(Invalidate::Ids(&refs));
                    prop_assert_eq!(c.len(), len - n);
                    for r in &refs {
                        prop_assert!(!c.contains(r));
                    }
                }
                Op::InvalidateTile(p) => {
                    let len = c.len();
                    let n = c.invalidate(Invalidate::Tiles(&[pos(p)]));
                    prop_assert_eq!(c.len(), len - n);
                    prop_assert_eq!(c.tile_freshness(pos(p), Access::Public, now), TileFreshness::Unknown);
                }
                Op::InvalidateClass(k) => {
                    let class = CLASSES[k as usize % 3];
                    c.invalidate(Invalidate::Class(class));
                    prop_assert!(c.items.iter().all(|(_, it)| c.class_of(it) != class));
                }
                Op::InvalidateAll => {
                    c.invalidate(Invalidate::All);
                    prop_assert!(c.is_empty());
                }
                Op::Purge => {
                    let len = c.len();
                    let n = c.purge_expired(now);
                    prop_assert_eq!(c.len(), len - n);
                    let all_live = c
                        .items
                        .iter()
                        .all(|(_, it)| expiry(it.expires_at_ms(), swr, now) != Expiry::Gone);
                    prop_assert!(all_live);
                }
                Op::DropAbove(t) => {
                    let tier = tier(t);
                    c.drop_above(tier);
                    prop_assert!(c.items.iter().all(|(_, it)| it.access() <= tier));
                    prop_assert!(c.tiles.iter().all(|(_, e)| e.fetched_at <= tier));
                }
                Op::Advance(dt) => now += dt,
            }
            check_invariants(&c, now)?;
        }
    }
}

/// Reference model: a plain list, least recently used first, evicting by the documented
/// rule (evict the least protected level present, skipping and promoting more protected
/// items; refuse a prefetch that only protected items could make room for, and a load that
/// only visible items could).
#[derive(Default)]
struct Model {
    order: VecDeque<(String, TileId, usize)>,
    visible: HashSet<TileId>,
    loading: HashSet<TileId>,
    /// The ids `pos(0)`'s tile list names, in list order. Replacing an item that moves
    /// out of that tile takes it off the list.
    listed0: Vec<String>,
}

impl Model {
    fn fits(cfg: &CacheConfig, items: usize, bytes: usize, size: usize) -> bool {
        items < cfg.max_items && bytes + size <= cfg.max_bytes
    }
    fn totals<'a>(it: impl Iterator<Item = &'a (String, TileId, usize)>) -> (usize, usize) {
        it.fold((0, 0), |(n, b), e| (n + 1, b + e.2))
    }
    /// 2 for an item of a visible tile, 1 of a loading one, else 0.
    fn level(&self, t: TileId) -> u8 {
        if self.visible.contains(&t) {
            2
        } else if self.loading.contains(&t) {
            1
        } else {
            0
        }
    }
    fn insert(
        &mut self,
        cfg: &CacheConfig,
        id: &str,
        t: TileId,
        size: usize,
        p: Priority,
    ) -> InsertOutcome {
        // The levels the insert may not evict start at `kept`.
        let kept = match p {
            Priority::Visible => 3,
            Priority::Loading => 2,
            Priority::Prefetch => 1,
        };
        let others = || self.order.iter().filter(|e| e.0 != id);
        let (n, b) = Self::totals(others());
        let (kn, kb) = Self::totals(others().filter(|e| self.level(e.1) >= kept));
        if !Self::fits(cfg, n, b, size) && !Self::fits(cfg, kn, kb, size) {
            return InsertOutcome {
                evicted: 0,
                rejected: true,
            };
        }
        if self.order.iter().any(|e| e.0 == id && e.1 == pos(0)) && t != pos(0) {
            self.listed0.retain(|k| k != id);
        }
        self.order.retain(|e| e.0 != id);
        let mut evicted = 0;
        loop {
            let (n, b) = Self::totals(self.order.iter());
            if Self::fits(cfg, n, b, size) {
                break;
            }
            let lowest = self.order.iter().map(|e| self.level(e.1)).min().unwrap();
            assert!(lowest < kept, "the check above leaves room");
            while self.order.front().is_some_and(|e| self.level(e.1) > lowest) {
                let e = self.order.pop_front().unwrap();
                self.order.push_back(e);
            }
            self.order.pop_front();
            evicted += 1;
        }
        self.order.push_back((id.to_string(), t, size));
        InsertOutcome {
            evicted,
            rejected: false,
        }
    }
    fn touch(&mut self, id: &str) {
        if let Some(i) = self.order.iter().position(|e| e.0 == id) {
            let e = self.order.remove(i).unwrap();
            self.order.push_back(e);
        }
    }
}

#[derive(Clone, Debug)]
enum LruOp {
    Insert {
        id: u8,
        pos: u8,
        size: usize,
        /// An index in `PRIORITIES`.
        priority: u8,
    },
    Get(u8),
    Peek(u8),
    ReadTile,
    SetVisible(Vec<u8>),
    SetLoading(Vec<u8>),
}

fn lru_op(with_visible: bool) -> impl Strategy<Value = LruOp> {
    let vis = if with_visible { 2 } else { 0 };
    prop_oneof![
        6 => (0u8..10, 0u8..8, 0usize..=20, 0u8..3)
            .prop_map(|(id, pos, size, priority)| LruOp::Insert { id, pos, size, priority }),
        3 => (0u8..10).prop_map(LruOp::Get),
        1 => (0u8..10).prop_map(LruOp::Peek),
        1 => Just(LruOp::ReadTile),
        vis => proptest::collection::vec(0u8..8, 0..4).prop_map(LruOp::SetVisible),
        vis => proptest::collection::vec(0u8..8, 0..4).prop_map(LruOp::SetLoading),
    ]
}

fn run_against_model(ops: Vec<LruOp>) -> Result<(), TestCaseError> {
    let cfg = CacheConfig {
        max_items: 5,
        max_bytes: 50,
        ..config(0)
    };
    let mut c: ItemCache<u32> = ItemCache::new(cfg.clone()).unwrap();
    let mut m = Model {
        listed0: (0..10).map(id).collect(),
        ..Model::default()
    };
    // Every id is listed in pos(0)'s tile, so reading it touches them in list order.
    let all: Vec<String> = (0..10).map(id).collect();
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    c.insert_tile(pos(0), &refs, None, Access::Agent, 0)
        .unwrap();
    for op in ops {
        match op {
            LruOp::Insert {
                id: i,
                pos: p,
                size,
                priority,
            } => {
                let pr = PRIORITIES[priority as usize % 3];
                let got = c
                    .insert(
                        &id(i),
                        meta(p, size, Access::Public, "active", None),
                        0,
                        0,
                        pr,
                    )
                    .unwrap();
                let want = m.insert(&cfg, &id(i), pos(p), size, pr);
                prop_assert_eq!(got, want);
            }
            LruOp::Get(i) => {
                c.get(&id(i), Access::Public, 0);
                m.touch(&id(i));
            }
            LruOp::Peek(i) => {
                c.peek(&id(i), Access::Public, 0);
            }
            LruOp::ReadTile => {
                c.read_tile(pos(0), Access::Public, 0, |_, _, _| {});
                for k in m.listed0.clone() {
                    m.touch(&k);
                }
            }
            LruOp::SetVisible(ps) => {
                let tiles: Vec<TileId> = ps.iter().map(|&p| pos(p)).collect();
                c.set_visible(&tiles);
                m.visible = tiles.into_iter().collect();
            }
            LruOp::SetLoading(ps) => {
                let tiles: Vec<TileId> = ps.iter().map(|&p| pos(p)).collect();
                c.set_loading(&tiles);
                m.loading = tiles.into_iter().collect();
            }
        }
        // The cache iterates most recent first.
        let mut got: Vec<String> = c.items.iter().map(|(k, _)| k.to_string()).collect();
        got.reverse();
        let want: Vec<String> = m.order.iter().map(|e| e.0.clone()).collect();
        prop_assert_eq!(got, want);
        if let Err(e) = c.check_lists() {
            prop_assert!(false, "{}", e);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// With no visible set, eviction is exactly least-recently-used.
    #[test]
    fn eviction_is_lru_without_visible_tiles(ops in proptest::collection::vec(lru_op(false), 1..60)) {
        run_against_model(ops)?;
    }

    /// With visible and loading tiles, eviction follows the documented skip-and-promote rule.
    #[test]
    fn eviction_matches_model_with_visible_tiles(ops in proptest::collection::vec(lru_op(true), 1..60)) {
        run_against_model(ops)?;
    }
}
