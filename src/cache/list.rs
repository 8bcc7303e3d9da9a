//! A tile's list of ids: for each id whose item is held and lies in the tile, the item's slot
//! in the item store (4 bytes), and for the others their keys beside it (usually none).
//!
//! The ids must stay known while their items are not held: a tile lists the ids an answer
//! named, and when an item is evicted or expires while its tile stays, the tile is
//! incomplete and that id is fetched again. A slot alone does not say its id, so the cache
//! keeps this invariant (`ItemCache::remove_item`, `ItemCache::insert_checked`): **a slot
//! in a list always holds the item of that id, and that item lies in the list's tile.**
//! When an item leaves its slot (evicted, expired, invalidated, replaced, moved), the one
//! list that may name its slot, its data tile's, is given the id's key instead. An id can
//! be in many lists (a list names ids before their items arrive, wherever they then lie;
//! an item can move), but only its data tile's list can name its slot: a list takes a slot
//! only for an item that lies in its tile, and a tile's list names an id once.
//!
//! A slot that holds nothing is a lookup that finds nothing; no lookup by slot reads an
//! id, so the invariant is what keeps a list from naming another item (checked after every
//! call by the cache's property tests, against the list of keys it replaced).

use super::key::ItemKey;

/// Set on an entry that is the index of a key in `keys` rather than a slot. Slots have it
/// clear: a store of 2³¹ items would need 128 GiB for its slots alone (a slot with it set
/// is listed by its key).
const KEY: u32 = 1 << 31;

/// A tile's ids, in the order the backend listed them (see the module docs).
#[derive(Clone, Debug, Default)]
pub(super) struct TileList {
    /// Per id: its item's slot, or `KEY | i` for `keys[i]`.
    entries: Vec<u32>,
    /// The keys of the ids listed without a slot; each is named by one entry.
    keys: Vec<ItemKey>,
    /// Where the next search for a slot starts: just past the last one found. Items tend
    /// to leave a tile in its list's order (they arrive in it, and a read of the tile uses
    /// them in it), so an eviction mostly finds its slot at once.
    next: u32,
    /// The same list as keys, as it was held before slots (the property tests compare).
    #[cfg(test)]
    pub(super) shadow: Vec<ItemKey>,
}

/// How a list names one id.
#[derive(Clone, Copy, Debug)]
pub(super) enum Name<'a> {
    /// The slot of its item, which lies in the list's tile.
    Slot(u32),
    /// Its key: the item is not held, or lies in another tile.
    Key(&'a ItemKey),
}

/// An id to list: its item's slot (held, lying in the list's tile) or its key.
pub(super) enum Listing {
    Slot(u32),
    Key(ItemKey),
}

impl Listing {
    /// An id whose item is held in `slot` and lies in the list's tile.
    pub(super) fn held(slot: u32, key: &ItemKey) -> Listing {
        if slot & KEY == 0 {
            Listing::Slot(slot)
        } else {
            Listing::Key(key.clone())
        }
    }
}

/// The id of the item in a slot (`None`: an empty slot), for the few calls that read a
/// list's ids: taken as `&dyn`, so the lists have one copy of each whatever the payload.
pub(super) type KeyOf<'f, 'a> = &'f dyn Fn(u32) -> Option<&'a ItemKey>;

impl TileList {
    /// The ids in `listing`'s order (in tests, `key_of` gives the list as keys).
    pub(super) fn new(
        listing: impl ExactSizeIterator<Item = Listing>,
        key_of: KeyOf<'_, '_>,
    ) -> TileList {
        let mut list = TileList {
            entries: Vec::with_capacity(listing.len()),
            ..TileList::default()
        };
        for l in listing {
            match l {
                Listing::Slot(slot) => {
                    #[cfg(test)]
                    list.shadow.extend(key_of(slot).cloned());
                    list.entries.push(slot);
                }
                Listing::Key(key) => list.push(key),
            }
        }
        let _ = key_of;
        // Held as long as the list: without the slack of its pushes.
        list.keys.shrink_to_fit();
        list
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.entries.capacity()
    }

    /// Whether it may name an id by its key (its item not held, or lying in another tile).
    pub(super) fn has_keys(&self) -> bool {
        !self.keys.is_empty()
    }

    /// How the list names its `i`th id (`None`: past the end, or a broken key index).
    pub(super) fn name(&self, i: usize) -> Option<Name<'_>> {
        let e = *self.entries.get(i)?;
        if e & KEY == 0 {
            Some(Name::Slot(e))
        } else {
            self.keys.get((e & !KEY) as usize).map(Name::Key)
        }
    }

    /// The `i`th id (`None`: an empty slot, which a list never names while the cache keeps
    /// its invariant).
    pub(super) fn key<'a>(&'a self, i: usize, key_of: KeyOf<'_, 'a>) -> Option<&'a ItemKey> {
        match self.name(i)? {
            Name::Slot(s) => key_of(s),
            Name::Key(k) => Some(k),
        }
    }

    /// The listed ids in order, as [`key`](Self::key) gives them.
    pub(super) fn keys<'f, 'a: 'f>(
        &'a self,
        key_of: KeyOf<'f, 'a>,
    ) -> impl Iterator<Item = Option<&'a ItemKey>> + 'f {
        (0..self.len()).map(move |i| self.key(i, key_of))
    }

    /// Whether the list names `id`.
    pub(super) fn names<'a>(&'a self, key_of: KeyOf<'_, 'a>, id: &ItemKey) -> bool {
        (0..self.len()).any(|i| self.key(i, key_of) == Some(id))
    }

    /// Adds `key` at the end, by its key.
    pub(super) fn push(&mut self, key: ItemKey) {
        #[cfg(test)]
        self.shadow.push(key.clone());
        self.entries.push(KEY | self.keys.len() as u32);
        self.keys.push(key);
    }

    /// Where the list names `slot` (once at most: a list names an id once), searched
    /// from `next` on, then from the start.
    fn find(&mut self, slot: u32) -> Option<&mut u32> {
        if slot & KEY != 0 {
            return None;
        }
        let start = (self.next as usize).min(self.entries.len());
        let (before, after) = self.entries.split_at(start);
        let i = match after.iter().position(|&e| e == slot) {
            Some(i) => start + i,
            None => before.iter().position(|&e| e == slot)?,
        };
        self.next = i as u32 + 1;
        self.entries.get_mut(i)
    }

    /// The item of `key` left `slot`: the list names it by its key from now on.
    pub(super) fn unhold(&mut self, slot: u32, key: &ItemKey) {
        let k = KEY | self.keys.len() as u32;
        if let Some(e) = self.find(slot) {
            *e = k;
            self.keys.push(key.clone());
        }
    }

    /// The item of `key` moved from slot `from` to slot `to` (it lies in the list's tile).
    pub(super) fn rehold(&mut self, from: u32, to: u32, key: &ItemKey) {
        if to & KEY != 0 {
            return self.unhold(from, key);
        }
        if let Some(e) = self.find(from) {
            *e = to;
        }
    }

    /// The `i`th id, named by its key, is held in `slot` (its item lies in the list's
    /// tile): the list names it by its slot from now on. Its key stays in `keys` until
    /// [`compact`](Self::compact).
    pub(super) fn hold(&mut self, i: usize, slot: u32) {
        if slot & KEY != 0 {
            return;
        }
        if let Some(e) = self.entries.get_mut(i) {
            *e = slot;
        }
    }

    /// Keeps the ids `keep` keeps (an empty slot is dropped).
    pub(super) fn retain(&mut self, key_of: KeyOf<'_, '_>, keep: &mut dyn FnMut(&ItemKey) -> bool) {
        let mut kept = 0;
        for i in 0..self.entries.len() {
            let e = self.entries[i];
            let key = if e & KEY == 0 {
                key_of(e)
            } else {
                self.keys.get((e & !KEY) as usize)
            };
            if key.is_some_and(&mut *keep) {
                self.entries[kept] = e;
                kept += 1;
            }
        }
        self.entries.truncate(kept);
        #[cfg(test)]
        self.shadow.retain(|k| keep(k));
        self.compact();
    }

    /// Drops the keys no entry names any more (all of them when every id is named by its
    /// slot, freeing their allocation).
    pub(super) fn compact(&mut self) {
        let named = self.entries.iter().filter(|&&e| e & KEY != 0).count();
        if named == self.keys.len() {
            return;
        }
        if named == 0 {
            self.keys = Vec::new();
            return;
        }
        let mut keys = Vec::with_capacity(named);
        for e in &mut self.entries {
            if *e & KEY != 0 {
                *e = match self.keys.get((*e & !KEY) as usize) {
                    Some(k) => {
                        keys.push(k.clone());
                        KEY | (keys.len() - 1) as u32
                    }
                    // A broken index stays one (a lookup that finds nothing).
                    None => u32::MAX,
                };
            }
        }
        self.keys = keys;
    }
}

#[cfg(test)]
impl TileList {
    /// How many ids the list names by their keys, and the keys' allocation.
    pub(super) fn by_key(&self) -> (usize, usize) {
        (self.keys.len(), self.keys.capacity())
    }

    /// What the cache promises of the list of `tile` (see the module docs): it names the
    /// ids its keys named (`shadow`, kept by the same calls as the list was before slots),
    /// each of its slots holds the item of its id, lying in `tile`, and no key is held that
    /// no entry names.
    pub(super) fn check<P>(
        &self,
        tile: crate::tile::TileId,
        items: &super::store::ItemStore<P>,
    ) -> Result<(), String> {
        let key_of = |s| items.item(s).map(|i| &i.id);
        let keys: Vec<Option<&ItemKey>> = self.keys(&key_of).collect();
        let shadow: Vec<Option<&ItemKey>> = self.shadow.iter().map(Some).collect();
        if keys != shadow {
            return Err(format!("{tile} lists {keys:?}, as keys {shadow:?}"));
        }
        for i in 0..self.len() {
            if let Some(Name::Slot(slot)) = self.name(i) {
                let item = items.item(slot);
                if !item.is_some_and(|item| item.place.lies_in(tile)) {
                    return Err(format!(
                        "{tile} names slot {slot}, holding {:?}",
                        item.map(|i| &i.id)
                    ));
                }
            }
        }
        let named = self.entries.iter().filter(|&&e| e & KEY != 0).count();
        if named != self.keys.len() {
            return Err(format!(
                "{tile} holds {} keys for {named} ids",
                self.keys.len()
            ));
        }
        Ok(())
    }
}
