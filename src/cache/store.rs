//! The item store: the cached items in slots on pages of a fixed size, one least-recently-
//! used list through them by slot number, and a hash table of slot numbers that finds an
//! item by its id.
//!
//! It does what `lru::LruCache<ItemKey, CacheItem<P>>` did for the item cache (the tile
//! index still uses `lru`), in less memory, which is why it is written here rather than
//! taken from a crate: `lru` allocates a node per entry (the key beside the value, two
//! pointers, and the allocator's own bytes: 80 bytes on wasm32) and keys its table by the
//! key, so the id was held twice. Here an item is one slot (the item, which holds its id,
//! and two `u32` links: 44 bytes on wasm32 with the browser's payload, aligned to 4 bytes),
//! pages are allocated whole and never moved (a `Vec` of every slot would hold up to twice
//! the slots, and copy them all as it grows), and the table holds a `u32` per item. A tile
//! list names its held items by their slots (`super::list`), so a read finds each item
//! without hashing its id. No `unsafe` here: a broken link is a lookup that finds nothing,
//! never a panic. It is checked against `lru::LruCache` by a property test below.

use std::hash::{BuildHasher, Hasher};

use hashbrown::{DefaultHashBuilder, HashTable};

use super::items::CacheItem;
use super::key::ItemKey;

/// No slot: the end of the list.
const NIL: u32 = u32::MAX;

/// Slots per page (16 KiB a page on wasm32 for the browser's items).
const PAGE: usize = 256;

/// A held item and its neighbours in recency order.
struct Node<P> {
    item: CacheItem<P>,
    /// The slot used just after this one (`NIL`: this is the most recent).
    newer: u32,
    /// The slot used just before this one (`NIL`: this is the least recent).
    older: u32,
}

// A slot for a 4-byte payload (the browser's) is 44 bytes on wasm32: no field is aligned
// to 8 bytes, and an empty slot is told apart by the id's form (no tag of its own).
#[cfg(target_arch = "wasm32")]
const _: () = assert!(std::mem::size_of::<Option<Node<u32>>>() == 44);

/// The bytes a slot of a store of payloads `P` takes (the browser's build checks its own).
#[cfg(all(feature = "wasm", target_arch = "wasm32"))]
pub(crate) const fn slot_bytes<P>() -> usize {
    std::mem::size_of::<Option<Node<P>>>()
}

/// Items by id, in recency order (see the module docs).
pub(super) struct ItemStore<P> {
    pages: Vec<Vec<Option<Node<P>>>>,
    /// Empty slots on the pages, reused before a page is added.
    free: Vec<u32>,
    /// The held items' slots, by the hash of their ids.
    index: HashTable<u32>,
    hasher: DefaultHashBuilder,
    newest: u32,
    oldest: u32,
}

impl<P> Default for ItemStore<P> {
    fn default() -> Self {
        ItemStore {
            pages: Vec::new(),
            free: Vec::new(),
            index: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
            newest: NIL,
            oldest: NIL,
        }
    }
}

/// What the store finds an item by: an id's text, or its key (a tile list's, which
/// compares without reading the text when both are inline or share an allocation).
pub(super) trait Id {
    fn bytes(&self) -> &[u8];
    /// Whether `key` is this id.
    fn is(&self, key: &ItemKey) -> bool;
}

impl Id for str {
    fn bytes(&self) -> &[u8] {
        self.as_bytes()
    }
    fn is(&self, key: &ItemKey) -> bool {
        key.as_bytes() == self.as_bytes()
    }
}

impl Id for ItemKey {
    fn bytes(&self) -> &[u8] {
        self.as_bytes()
    }
    fn is(&self, key: &ItemKey) -> bool {
        key == self
    }
}

/// An id's hash: its bytes alone (the length prefix `Hash for [u8]` adds tells apart
/// nothing the bytes do not, for one key).
fn hash(hasher: &DefaultHashBuilder, id: &[u8]) -> u64 {
    let mut h = hasher.build_hasher();
    h.write(id);
    h.finish()
}

fn node<P>(pages: &[Vec<Option<Node<P>>>], slot: u32) -> Option<&Node<P>> {
    let slot = slot as usize;
    pages.get(slot / PAGE)?.get(slot % PAGE)?.as_ref()
}

/// The slot itself, held or empty (`None`: no such slot).
fn slot_mut<P>(pages: &mut [Vec<Option<Node<P>>>], slot: u32) -> Option<&mut Option<Node<P>>> {
    let slot = slot as usize;
    pages.get_mut(slot / PAGE)?.get_mut(slot % PAGE)
}

fn node_mut<P>(pages: &mut [Vec<Option<Node<P>>>], slot: u32) -> Option<&mut Node<P>> {
    slot_mut(pages, slot)?.as_mut()
}

/// Whether a slot of the index holds the item with this id (the index's equality).
fn holds<'a, P, I: Id + ?Sized>(
    pages: &'a [Vec<Option<Node<P>>>],
    id: &'a I,
) -> impl Fn(&u32) -> bool + 'a {
    move |&slot| node(pages, slot).is_some_and(|n| id.is(&n.item.id))
}

impl<P> ItemStore<P> {
    /// Items held.
    pub(super) fn len(&self) -> usize {
        self.index.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    fn hash(&self, id: &[u8]) -> u64 {
        hash(&self.hasher, id)
    }

    /// The slot of the item with this id.
    pub(super) fn find<I: Id + ?Sized>(&self, id: &I) -> Option<u32> {
        let held = holds(&self.pages, id);
        self.index.find(self.hash(id.bytes()), held).copied()
    }

    /// The item in `slot` (`None`: an empty slot, or no such slot), its recency untouched.
    pub(super) fn item(&self, slot: u32) -> Option<&CacheItem<P>> {
        node(&self.pages, slot).map(|n| &n.item)
    }

    /// Makes the item in `slot` the most recently used; returns it.
    pub(super) fn promote(&mut self, slot: u32) -> Option<&CacheItem<P>> {
        self.unlink(slot);
        self.push_newest(slot);
        self.item(slot)
    }

    pub(super) fn contains(&self, id: &str) -> bool {
        self.find(id).is_some()
    }

    /// The item with this id, its recency untouched.
    pub(super) fn peek<I: Id + ?Sized>(&self, id: &I) -> Option<&CacheItem<P>> {
        self.item(self.find(id)?)
    }

    /// The item with this id, made the most recently used.
    pub(super) fn get<I: Id + ?Sized>(&mut self, id: &I) -> Option<&CacheItem<P>> {
        let slot = self.find(id)?;
        self.promote(slot)
    }

    /// [`get`](Self::get), with the item's slot.
    pub(super) fn get_found<I: Id + ?Sized>(&mut self, id: &I) -> Option<(u32, &CacheItem<P>)> {
        let slot = self.find(id)?;
        Some((slot, self.promote(slot)?))
    }

    /// Stores `item` as the most recently used, returning the item it replaces (same id).
    pub(super) fn put(&mut self, item: CacheItem<P>) -> Option<CacheItem<P>> {
        if let Some(slot) = self.find(&item.id) {
            let old = node_mut(&mut self.pages, slot).map(|n| std::mem::replace(&mut n.item, item));
            self.promote(slot);
            return old;
        }
        let id_hash = self.hash(item.id.as_bytes());
        let filled = Some(Node {
            item,
            newer: NIL,
            older: NIL,
        });
        let slot = match self.free.pop() {
            Some(slot) => {
                if let Some(s) = slot_mut(&mut self.pages, slot) {
                    *s = filled;
                }
                slot
            }
            None => {
                if self.pages.last().is_none_or(|p| p.len() == PAGE) {
                    self.pages.push(Vec::with_capacity(PAGE));
                }
                let last = self.pages.len() - 1;
                let page = &mut self.pages[last];
                page.push(filled);
                (last * PAGE + page.len() - 1) as u32
            }
        };
        self.push_newest(slot);
        let Self {
            index,
            pages,
            hasher,
            ..
        } = self;
        let rehash = |&s: &u32| node(pages, s).map_or(0, |n| hash(hasher, n.item.id.as_bytes()));
        index.insert_unique(id_hash, slot, rehash);
        None
    }

    /// Removes the item with this id; returns it and the slot it leaves.
    pub(super) fn pop(&mut self, id: &str) -> Option<(u32, CacheItem<P>)> {
        let id_hash = self.hash(id.as_bytes());
        let held = holds(&self.pages, id);
        let (slot, _) = self.index.find_entry(id_hash, held).ok()?.remove();
        self.unlink(slot);
        let taken = slot_mut(&mut self.pages, slot).and_then(Option::take);
        self.free.push(slot);
        taken.map(|n| (slot, n.item))
    }

    /// The least recently used item.
    pub(super) fn peek_lru(&self) -> Option<&CacheItem<P>> {
        self.item(self.oldest)
    }

    /// Makes the least recently used item the most recent.
    pub(super) fn promote_lru(&mut self) {
        if self.oldest != NIL {
            self.promote(self.oldest);
        }
    }

    /// The items and their ids, from the most recently used to the least.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&ItemKey, &CacheItem<P>)> {
        let mut slot = self.newest;
        std::iter::from_fn(move || {
            let n = node(&self.pages, slot)?;
            slot = n.older;
            Some((&n.item.id, &n.item))
        })
    }

    /// Drops every item (least recently used first, as `lru`'s `clear` did: the order the
    /// browser's payloads give their slots in `cache.js`'s table back) and the pages.
    pub(super) fn clear(&mut self) {
        let mut slot = self.oldest;
        while let Some(n) = slot_mut(&mut self.pages, slot).and_then(Option::take) {
            slot = n.newer;
        }
        *self = ItemStore::default();
    }

    /// Takes `slot` out of the recency list (its own links are left as they were).
    fn unlink(&mut self, slot: u32) {
        let Some(&Node { newer, older, .. }) = node(&self.pages, slot) else {
            return;
        };
        match node_mut(&mut self.pages, newer) {
            Some(n) => n.older = older,
            None => self.newest = older,
        }
        match node_mut(&mut self.pages, older) {
            Some(n) => n.newer = newer,
            None => self.oldest = newer,
        }
    }

    /// Puts `slot` (out of the list) at its most recent end.
    fn push_newest(&mut self, slot: u32) {
        let first = self.newest;
        let Some(n) = node_mut(&mut self.pages, slot) else {
            return;
        };
        n.newer = NIL;
        n.older = first;
        match node_mut(&mut self.pages, first) {
            Some(f) => f.newer = slot,
            None => self.oldest = slot,
        }
        self.newest = slot;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Access;
    use crate::cache::classes::Classes;
    use crate::cache::items::{SplitU64, TileTier};
    use crate::tile::TileId;
    use proptest::prelude::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    fn item<P>(id: &str, payload: P, classes: &mut Classes) -> CacheItem<P> {
        let class = classes.index("active").unwrap();
        CacheItem {
            id: ItemKey::new(id),
            place: TileTier::new(TileId::new(24, 0, 0).unwrap(), 14, Access::Public, class),
            expires: SplitU64::new(0),
            size_bytes: 0,
            payload,
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Put(usize, u32),
        Get(usize),
        Peek(usize),
        Pop(usize),
        /// Note the slot of the item with this id, as a tile list would.
        List(usize),
        /// Read the noted slot (as a tile read does, refreshing it, or not).
        ReadListed(usize, bool),
        PromoteLru,
        Clear,
    }

    /// Short ids (inline) and long ones (shared) alike.
    fn id(n: usize) -> String {
        if n % 2 == 0 {
            format!("h{n}")
        } else {
            format!("{n}-0f8fad5b-d9cb-469f-a165-70867728950e")
        }
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        // Ids 0..600 over pages of 256: slots reused, pages added.
        let op = prop_oneof![
            8 => (0..600usize, any::<u32>()).prop_map(|(i, p)| Op::Put(i, p)),
            3 => (0..600usize).prop_map(Op::Get),
            2 => (0..600usize).prop_map(Op::Peek),
            4 => (0..600usize).prop_map(Op::Pop),
            2 => (0..600usize).prop_map(Op::List),
            3 => (0..600usize, any::<bool>()).prop_map(|(i, get)| Op::ReadListed(i, get)),
            2 => Just(Op::PromoteLru),
            1 => Just(Op::Clear),
        ];
        proptest::collection::vec(op, 0..1500)
    }

    proptest! {
        /// The store holds what `lru::LruCache` (what it replaced) holds, in the same order.
        #[test]
        fn behaves_as_the_lru_crate(ops in ops()) {
            let mut classes = Classes::default();
            let mut store = ItemStore::default();
            let mut model: lru::LruCache<String, u32> = lru::LruCache::unbounded();
            // Slots noted as a tile list notes them; they are left as they were as the store
            // changes (pops, slots reused, clears).
            let mut lists: crate::util::HashMap<usize, u32> = Default::default();
            for op in ops {
                match op {
                    Op::Put(i, p) => {
                        let old = store.put(item(&id(i), p, &mut classes)).map(|o| o.payload);
                        prop_assert_eq!(old, model.put(id(i), p));
                    }
                    Op::Get(i) => {
                        let got = store.get(id(i).as_str()).map(|o| o.payload);
                        prop_assert_eq!(got, model.get(&id(i)).copied());
                    }
                    Op::Peek(i) => {
                        let got = store.peek(id(i).as_str()).map(|o| o.payload);
                        prop_assert_eq!(got, model.peek(&id(i)).copied());
                        prop_assert_eq!(store.contains(&id(i)), model.contains(&id(i)));
                    }
                    Op::Pop(i) => {
                        let got = store.pop(&id(i)).map(|(_, o)| o.payload);
                        prop_assert_eq!(got, model.pop(&id(i)));
                    }
                    Op::List(i) => {
                        let slot = store.find(id(i).as_str());
                        prop_assert_eq!(slot.is_some(), model.contains(&id(i)));
                        lists.extend(slot.map(|s| (i, s)));
                    }
                    Op::ReadListed(i, get) => {
                        let Some(&slot) = lists.get(&i) else { continue };
                        // The item stored in the slot last, if it is still there: the one
                        // its id finds.
                        let held = store.item(slot).map(|o| (o.id.to_string(), o.payload));
                        if let Some((k, p)) = &held {
                            prop_assert_eq!(store.find(k.as_str()), Some(slot));
                            prop_assert_eq!(model.peek(k).copied(), Some(*p));
                        }
                        if get {
                            let got = store.promote(slot).map(|o| o.payload);
                            prop_assert_eq!(got, held.as_ref().map(|h| h.1));
                            if let Some((k, _)) = &held {
                                model.promote(k);
                            }
                        }
                    }
                    Op::PromoteLru => {
                        let lru = model.peek_lru().map(|(k, _)| k.clone());
                        prop_assert_eq!(store.peek_lru().map(|o| o.id.to_string()), lru.clone());
                        store.promote_lru();
                        if let Some(k) = lru {
                            model.promote(&k);
                        }
                    }
                    Op::Clear => {
                        store.clear();
                        model.clear();
                    }
                }
                prop_assert_eq!(store.len(), model.len());
                prop_assert_eq!(store.is_empty(), model.is_empty());
            }
            let held: Vec<(String, u32)> = store.iter().map(|(k, o)| (k.to_string(), o.payload)).collect();
            let want: Vec<(String, u32)> = model.iter().map(|(k, &v)| (k.clone(), v)).collect();
            prop_assert_eq!(held, want);
            prop_assert!(store.free.len() + store.len() == store.pages.iter().map(Vec::len).sum::<usize>());
        }
    }

    #[test]
    fn a_slot_holds_the_item_stored_in_it_last_or_nothing() {
        let mut classes = Classes::default();
        let mut store = ItemStore::default();
        store.put(item("a", 1, &mut classes));
        let slot = store.find("a").unwrap();
        assert_eq!(store.pop("a").map(|(s, i)| (s, i.payload)), Some((slot, 1)));
        assert!(store.item(slot).is_none() && store.promote(slot).is_none());
        store.put(item("b", 2, &mut classes));
        assert_eq!(store.find("b"), Some(slot), "b took a's slot");
        assert_eq!(store.item(slot).map(|i| i.payload), Some(2));
        assert!(store.item(slot + 1).is_none() && store.item(u32::MAX).is_none());
        assert!(store.promote(u32::MAX).is_none());
        assert_eq!(
            store.get_found("b").map(|(s, i)| (s, i.payload)),
            Some((slot, 2))
        );
    }

    /// A payload that notes when it is dropped.
    struct Noted(u32, Rc<RefCell<Vec<u32>>>);

    impl Drop for Noted {
        fn drop(&mut self) {
            self.1.borrow_mut().push(self.0);
        }
    }

    #[test]
    fn clear_drops_the_payloads_in_the_order_lru_did() {
        let mut classes = Classes::default();
        let (ours, theirs) = (Rc::default(), Rc::default());
        let mut store = ItemStore::default();
        let mut model = lru::LruCache::unbounded();
        for i in 0..5 {
            store.put(item(
                &id(i as usize),
                Noted(i, Rc::clone(&ours)),
                &mut classes,
            ));
            model.put(id(i as usize), Noted(i, Rc::clone(&theirs)));
        }
        store.get(id(1).as_str());
        model.get(&id(1));
        store.clear();
        model.clear();
        assert_eq!(*ours.borrow(), *theirs.borrow());
        assert_eq!(*ours.borrow(), [0, 2, 3, 4, 1]);
    }

    #[test]
    fn a_removed_slot_is_reused_before_a_page_is_added() {
        let mut classes = Classes::default();
        let mut store = ItemStore::default();
        for i in 0..PAGE {
            store.put(item(&id(i), 0, &mut classes));
        }
        assert_eq!(store.pages.len(), 1);
        store.pop(&id(7));
        store.put(item("new", 1, &mut classes));
        assert_eq!((store.pages.len(), store.len()), (1, PAGE));
        store.put(item("newer", 2, &mut classes));
        assert_eq!((store.pages.len(), store.len()), (2, PAGE + 1));
        assert!(
            store.pages.iter().all(|p| p.capacity() == PAGE),
            "pages never grow"
        );
        store.clear();
        assert!(
            store.pages.is_empty() && store.peek_lru().is_none() && store.iter().next().is_none()
        );
    }
}
