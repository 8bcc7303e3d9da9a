//! The items' class names: a table the item cache owns, each name held once, and each held
//! item keeping its class as an index into it.
//!
//! Thousands of items share a handful of classes (`active`, `off_market`). An item keeps
//! its class as a 9-bit index in the word that holds its position (`TileTier`), so a slot
//! of the item store has no field for it (on wasm32 the slot is 44 bytes; a pointer to a
//! shared name took 4 bytes more, and an 8-byte alignment). So at most [`MAX_CLASSES`]
//! distinct classes can be held at once: an insert of an item of one more class is an error
//! value for that item ([`CacheError::TooManyClasses`](super::CacheError::TooManyClasses)).
//!
//! The cache counts the items of each index as they enter and leave the item store (there
//! is one place each happens, and a clear resets the counts). A name no item has any more
//! stays in the table until its index is needed for a new name: an index is given to a new
//! name only when no held item has it, so the name an item's index reads is always the
//! name it was inserted with, and an invalidation by class finds exactly the items of that
//! name.

/// Distinct item classes a cache holds at once, at most (what a class's index in an item,
/// 9 bits, can tell apart). An insert of an item of one more class fails
/// ([`CacheError::TooManyClasses`](super::CacheError::TooManyClasses)); a name no held item
/// has any more makes room for another.
pub const MAX_CLASSES: usize = 512;

/// A class's index in [`Classes`] (less than [`MAX_CLASSES`]).
pub(super) type ClassIndex = u16;

/// The class names by index, each with how many held items have it (see the module docs).
/// A short list, searched in order (a map's code would cost the browser page more than the
/// scans of a handful of names cost).
#[derive(Debug, Default)]
pub(super) struct Classes {
    names: Vec<(Box<str>, u32)>,
}

impl Classes {
    /// The index of `name`: the one it has, or one no held item has, given to it; `None`
    /// when all [`MAX_CLASSES`] indices are held by items of other names. Counts nothing:
    /// [`hold`](Self::hold) does, once the item is stored.
    pub(super) fn index(&mut self, name: &str) -> Option<ClassIndex> {
        if let Some(i) = self.find(name) {
            return Some(i);
        }
        let i = match self.names.iter().position(|&(_, count)| count == 0) {
            Some(i) => i,
            None if self.names.len() < MAX_CLASSES => {
                self.names.push(Default::default());
                self.names.len() - 1
            }
            None => return None,
        };
        self.names[i] = (name.into(), 0);
        Some(i as ClassIndex)
    }

    /// The index `name` has, if it has one.
    pub(super) fn find(&self, name: &str) -> Option<ClassIndex> {
        let i = self.names.iter().position(|(n, _)| **n == *name)?;
        Some(i as ClassIndex)
    }

    /// The name of index `i` (`""`: none).
    pub(super) fn name(&self, i: ClassIndex) -> &str {
        self.names.get(usize::from(i)).map_or("", |(name, _)| name)
    }

    /// An item of class `i` entered the item store.
    pub(super) fn hold(&mut self, i: ClassIndex) {
        if let Some((_, count)) = self.names.get_mut(usize::from(i)) {
            *count += 1;
        }
    }

    /// An item of class `i` left the item store.
    pub(super) fn release(&mut self, i: ClassIndex) {
        if let Some((_, count)) = self.names.get_mut(usize::from(i)) {
            *count = count.saturating_sub(1);
        }
    }

    /// Index `i`, which no held item has, given to `name` (an insert whose old version was
    /// the last item of its class, taken from its slot, when every other index is held).
    /// Nothing when an item still has it.
    pub(super) fn rename(&mut self, i: ClassIndex, name: &str) {
        if let Some(entry) = self.names.get_mut(usize::from(i)) {
            if entry.1 == 0 {
                *entry = (name.into(), 0);
            }
        }
    }

    /// Held items of class `i`.
    pub(super) fn count(&self, i: ClassIndex) -> u32 {
        self.names
            .get(usize::from(i))
            .map_or(0, |&(_, count)| count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_index_per_name_and_free_indices_reused() {
        let mut classes = Classes::default();
        let a = classes.index("active").unwrap();
        assert_eq!(classes.index("active"), Some(a));
        classes.hold(a);
        let b = classes.index("off_market").unwrap();
        assert_ne!(a, b);
        assert_eq!((classes.name(a), classes.name(b)), ("active", "off_market"));
        // `b` has no item: a new name takes its index, and the old name is gone.
        let c = classes.index("sold").unwrap();
        assert_eq!(c, b);
        assert_eq!(
            (classes.find("off_market"), classes.name(c)),
            (None, "sold")
        );
        classes.hold(c);
        classes.release(a);
        assert_eq!(classes.index("late"), Some(a), "a's last item left");
        assert_eq!(classes.name(MAX_CLASSES as ClassIndex), "");
    }

    #[test]
    fn at_most_max_classes_in_use() {
        let mut classes = Classes::default();
        for i in 0..MAX_CLASSES {
            let at = classes.index(&format!("c{i}")).unwrap();
            assert_eq!(usize::from(at), i);
            classes.hold(at);
        }
        assert_eq!(classes.index("one-more"), None);
        assert_eq!(classes.index("c7"), Some(7), "names in use are still found");
        classes.release(7);
        assert_eq!(classes.index("one-more"), Some(7));
        assert_eq!(classes.names.len(), MAX_CLASSES);
    }
}
