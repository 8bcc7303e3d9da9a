//! An item's id as the cache keys it.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

/// An item's id, shared (`Arc`) by the LRU's key, the item and every tile list that names it.
///
/// Two keys are equal when they share one allocation, without reading the text, else when
/// their texts are equal. A tile list names the item's own `Arc` (items are stored before
/// the lists of an answer), so reading a tile's items finds each one without comparing ids
/// (in the size-built wasm a comparison of texts is a call to a byte loop). It hashes and
/// borrows as its text, so lookups by `&str` work as with `Arc<str>`.
#[derive(Clone, Debug)]
pub(crate) struct ItemKey(Arc<str>);

impl ItemKey {
    pub(crate) fn new(id: &str) -> ItemKey {
        ItemKey(Arc::from(id))
    }
}

impl PartialEq for ItemKey {
    fn eq(&self, other: &ItemKey) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || *self.0 == *other.0
    }
}

impl Eq for ItemKey {}

impl Hash for ItemKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (*self.0).hash(state);
    }
}

impl Borrow<str> for ItemKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl Deref for ItemKey {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::HashSet;

    #[test]
    fn equal_by_allocation_or_text_and_found_by_text() {
        let a = ItemKey::new("home-1");
        let (same, copy, other) = (a.clone(), ItemKey::new("home-1"), ItemKey::new("home-2"));
        assert!(a == same && a == copy && a != other);
        let set: HashSet<ItemKey> = [a, other].into_iter().collect();
        assert!(set.contains("home-1") && set.contains(&copy) && !set.contains("home-3"));
    }
}
