//! The items' class names, held once per distinct name.
//!
//! Thousands of items share a handful of classes (`active`, `off_market`), so each item
//! keeps a [`Class`] pointing to the one copy instead of a `String` of its own: on wasm32
//! that is one allocation (about 16 bytes) less per cached item.

use std::sync::Arc;

/// A shared class name: a thin pointer (4 bytes on wasm32, where an `Arc<str>` is 8), for
/// the cached items' layout ([`CacheItem`](super::CacheItem)). Reads as its text.
pub(super) type Class = Arc<Box<str>>;

/// Distinct names shared at most. A backend with more classes than this in use at once
/// still works: an item of a class beyond them keeps a copy of its own (two allocations:
/// the name and its count).
const MAX_SHARED: usize = 32;

/// The class names shared by the items held: a short list, searched in order (a set's
/// code would cost the browser page more than the list's scans cost a handful of names).
#[derive(Debug, Default)]
pub(super) struct Classes {
    names: Vec<Class>,
}

impl Classes {
    /// The shared copy of `class`, made if it is new and there is room for it.
    pub(super) fn intern(&mut self, class: String) -> Class {
        if let Some(name) = self.names.iter().find(|name| ****name == *class) {
            return name.clone();
        }
        if self.names.len() == MAX_SHARED {
            // Names no item uses any more go first.
            self.names.retain(|name| Arc::strong_count(name) > 1);
        }
        let name: Class = Arc::new(class.into_boxed_str());
        if self.names.len() < MAX_SHARED {
            self.names.push(name.clone());
        }
        name
    }

    /// Names shared (those in use and those not yet let go).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.names.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_copy_per_name() {
        let mut classes = Classes::default();
        let a = classes.intern("active".to_string());
        let b = classes.intern("active".to_string());
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(&**classes.intern("off_market".to_string()), "off_market");
        assert_eq!(classes.len(), 2);
    }

    #[test]
    fn names_no_item_uses_make_room() {
        let mut classes = Classes::default();
        let kept = classes.intern("active".to_string());
        for i in 0..10_000 {
            // Each dropped at once, as an item evicted right after it came.
            classes.intern(format!("class-{i}"));
        }
        assert!(classes.len() <= MAX_SHARED, "{} names held", classes.len());
        assert!(Arc::ptr_eq(&kept, &classes.intern("active".to_string())));
        let now = classes.intern("late".to_string());
        assert!(Arc::ptr_eq(&now, &classes.intern("late".to_string())));
    }

    #[test]
    fn more_classes_in_use_than_shared_still_work() {
        let mut classes = Classes::default();
        let held: Vec<Class> = (0..MAX_SHARED + 5)
            .map(|i| classes.intern(format!("c{i}")))
            .collect();
        assert_eq!(classes.len(), MAX_SHARED);
        for (i, name) in held.iter().enumerate() {
            assert_eq!(&***name, format!("c{i}"));
        }
        let extra = classes.intern(format!("c{}", MAX_SHARED + 1));
        assert_eq!(&**extra, format!("c{}", MAX_SHARED + 1));
    }
}
