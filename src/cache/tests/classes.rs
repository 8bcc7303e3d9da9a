//! The class table as the cache uses it: names let go and their indices reused, the limit's
//! error, and invalidation by class after indices were reused, against a model of which
//! class each held item was inserted with.

use super::*;
use crate::cache::classes::ClassIndex;
use crate::util::{HashMap, HashSet};
use proptest::prelude::*;

fn meta(t: TileId, class: &str, access: Access, ttl_ms: u64) -> ItemMeta {
    ItemMeta {
        class: class.into(),
        access,
        ttl_ms: Some(ttl_ms),
        ..meta_in(t, 1)
    }
}

fn class(n: u16) -> String {
    format!("c{n}")
}

#[derive(Clone, Debug)]
enum Op {
    Insert {
        id: u16,
        class: u16,
        tile: u8,
        access: u8,
        ttl: u64,
    },
    Get(u16),
    InvalidateClass(u16),
    InvalidateIds(Vec<u16>),
    InvalidateTile(u8),
    InvalidateAll,
    DropAbove(u8),
    Purge,
    Advance(u8),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    // More ids than the cache holds (evictions) and more classes than it may hold at once
    // (the limit), a few of them (0..8) common, as real classes are.
    let class = prop_oneof![1 => 0u16..8, 3 => 0u16..1500];
    // Most items outlive the run, some expire within it.
    let ttl = prop_oneof![3 => Just(1u64 << 40), 1 => 1u64..2_000];
    let op = prop_oneof![
        40 => (0u16..2000, class, 0u8..4, 0u8..4, ttl).prop_map(|(id, class, tile, access, ttl)| {
            Op::Insert { id, class, tile, access, ttl }
        }),
        3 => (0u16..2000).prop_map(Op::Get),
        3 => (0u16..1500).prop_map(Op::InvalidateClass),
        1 => proptest::collection::vec(0u16..2000, 0..40).prop_map(Op::InvalidateIds),
        2 => (0u8..=255).prop_map(Op::Advance),
    ];
    // Removals of many items at once, rarely: the table must fill between them.
    let many = prop_oneof![
        (0u8..4).prop_map(Op::InvalidateTile),
        (0u8..4).prop_map(Op::DropAbove),
        Just(Op::Purge),
        Just(Op::InvalidateAll),
    ];
    let op = prop_oneof![1000 => op, 1 => many];
    proptest::collection::vec(op, 1500..4000)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn each_item_keeps_its_class_as_indices_are_reused(ops in ops()) {
        let config = CacheConfig {
            max_items: 900,
            max_bytes: 1 << 20,
            ..CacheConfig::default()
        };
        let mut c: ItemCache<()> = ItemCache::new(config).unwrap();
        // The class each held item was inserted with.
        let mut model: HashMap<String, String> = HashMap::default();
        let mut now = 0u64;
        for (n, op) in ops.into_iter().enumerate() {
            match op {
                Op::Insert { id, class: k, tile: t, access, ttl } => {
                    let (id, name) = (format!("i{id}"), class(k));
                    // The classes of the other items: the item's own old version leaves its
                    // slot, and its class's index with it when it was the last of its class.
                    let (in_use, full) = {
                        let others: HashSet<&String> =
                            model.iter().filter(|(i, _)| **i != id).map(|(_, n)| n).collect();
                        (others.len(), others.len() >= MAX_CLASSES && !others.contains(&name))
                    };
                    let access = Access::from_rank(access).unwrap();
                    let m = meta(tile(u32::from(t), 0), &name, access, ttl);
                    match c.insert(&id, m, (), now, Priority::Visible) {
                        Ok(out) => {
                            prop_assert!(!full, "{} of {} taken beside {} classes", id, name, in_use);
                            prop_assert!(!out.rejected);
                            model.insert(id, name);
                        }
                        Err(e) => {
                            prop_assert!(full, "{}", e);
                            prop_assert_eq!(e, CacheError::TooManyClasses { id: id.clone(), class: name.clone() });
                        }
                    }
                }
                Op::Get(id) => {
                    if let Some(found) = c.get(&format!("i{id}"), Access::Agent, now) {
                        prop_assert_eq!(Some(found.class), model.get(&format!("i{id}")).map(String::as_str));
                    }
                }
                Op::InvalidateClass(k) => {
                    let name = class(k);
                    let of_class = model.values().filter(|n| **n == name).count();
                    prop_assert_eq!(c.invalidate(Invalidate::Class(&name)), of_class);
                }
                Op::InvalidateIds(ids) => {
                    let ids: Vec<String> = ids.iter().map(|i| format!("i{i}")).collect();
                    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                    c.invalidate(Invalidate::Ids(&ids));
                }
                Op::InvalidateTile(t) => {
                    c.invalidate(Invalidate::Tiles(&[tile(u32::from(t), 0)]));
                }
                Op::InvalidateAll => {
                    c.invalidate(Invalidate::All);
                }
                Op::DropAbove(t) => {
                    c.drop_above(Access::from_rank(t).unwrap());
                }
                Op::Purge => {
                    c.purge_expired(now);
                }
                Op::Advance(ms) => now += u64::from(ms),
            }
            // Items left by eviction, expiry and every removal: the model follows.
            model.retain(|id, _| c.contains(id));
            prop_assert_eq!(model.len(), c.len());
            if n % 8 != 0 {
                continue; // the whole check, every few calls (a run makes thousands)
            }
            let mut counts: HashMap<ClassIndex, u32> = HashMap::default();
            for (id, item) in c.items.iter() {
                prop_assert_eq!(Some(c.class_of(item)), model.get(&**id).map(String::as_str));
                *counts.entry(item.place.class()).or_default() += 1;
            }
            for (&index, &count) in &counts {
                prop_assert_eq!(c.classes.count(index), count, "{}", c.classes.name(index));
            }
        }
    }
}

/// A cache holding items `i0`.. of every class `c0`.. it may hold, one each, in one tile
/// (which it returns), with room for a few more items.
fn full_table() -> (ItemCache<u32>, TileId) {
    let config = CacheConfig {
        max_items: MAX_CLASSES + 10,
        ..CacheConfig::default()
    };
    let mut c: ItemCache<u32> = ItemCache::new(config).unwrap();
    let t = tile(0, 0);
    for k in 0..MAX_CLASSES as u16 {
        let m = meta(t, &class(k), Access::Public, 60_000);
        c.insert(&format!("i{k}"), m, 0, 0, Priority::Visible)
            .unwrap();
    }
    (c, t)
}

#[test]
fn the_limit_is_an_error_for_that_item_and_a_name_let_go_makes_room() {
    let (mut c, t) = full_table();
    let m = meta(t, "one-more", Access::Public, 60_000);
    let e = c
        .insert("x", m.clone(), 1, 0, Priority::Visible)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "item \"x\" has class \"one-more\", and 512 other classes are cached: a cache holds \
         items of at most 512 distinct classes at once"
    );
    assert!(!c.contains("x") && c.len() == MAX_CLASSES);
    // A class in use still takes more items.
    c.insert(
        "y",
        meta(t, "c7", Access::Public, 60_000),
        2,
        0,
        Priority::Visible,
    )
    .unwrap();
    // Once c3's one item is gone, its index is free for the new name; an invalidation of
    // c3 then removes nothing of "one-more", and one of "one-more" nothing else.
    assert_eq!(c.invalidate(Invalidate::Ids(&["i3"])), 1);
    c.insert("x", m, 1, 0, Priority::Visible).unwrap();
    assert_eq!(c.peek("x", Access::Public, 0).unwrap().class, "one-more");
    assert_eq!(c.invalidate(Invalidate::Class("c3")), 0);
    assert!(c.contains("x"));
    assert_eq!(c.invalidate(Invalidate::Class("one-more")), 1);
    assert_eq!(c.len(), MAX_CLASSES);
    assert_eq!(c.invalidate(Invalidate::Class("c7")), 2);
}

/// With every index held, an item that is the last of its class may change class: its old
/// version's index goes to the new name. Invalidating the old name then removes nothing,
/// and the new one removes the item. Refused while another item has the old class.
#[test]
fn the_last_item_of_a_class_may_change_class_when_the_table_is_full() {
    let (mut c, t) = full_table();
    c.insert(
        "j7",
        meta(t, "c7", Access::Public, 60_000),
        0,
        0,
        Priority::Visible,
    )
    .unwrap();
    let moved = meta(t, "one-more", Access::Public, 60_000);
    let e = c
        .insert("i7", moved.clone(), 1, 0, Priority::Visible)
        .unwrap_err();
    assert!(matches!(e, CacheError::TooManyClasses { .. }), "{e}");
    assert_eq!(c.peek("i7", Access::Public, 0).unwrap().class, "c7");

    c.insert("i3", moved, 1, 0, Priority::Visible).unwrap();
    let found = c.peek("i3", Access::Public, 0).unwrap();
    assert_eq!((found.class, *found.item.payload()), ("one-more", 1));
    assert_eq!(c.len(), MAX_CLASSES + 1);
    assert_eq!(c.invalidate(Invalidate::Class("c3")), 0);
    assert_eq!(c.invalidate(Invalidate::Class("one-more")), 1);
    assert_eq!(c.invalidate(Invalidate::Class("c7")), 2);
}
