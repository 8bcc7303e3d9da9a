//! An item's id as the cache keys it.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

/// The longest id held inline: as many bytes as the shared form's pointer and length, and
/// two more (10 on wasm32, where a key takes 12 bytes; 18 on 64-bit targets, 24 bytes).
const INLINE: usize = 2 * std::mem::size_of::<usize>() + 2;

/// An item's id, as the item store, an eviction and a tile list that names the item while
/// it is not held (one that holds it names its slot) hold it.
///
/// An id of up to [`INLINE`] bytes (`home-12345`, a ten-digit parcel number) is held in the
/// key itself: copying it copies 12 bytes on wasm32, and no allocation is made per item
/// (an `Arc<str>` took 32 bytes of wasm memory an item, more than a fifth of what the cache
/// held per item). A longer one (a UUID) is shared: one allocation for the store and every
/// list. Keys are equal when their texts are; two shared keys of one allocation are equal
/// without reading the text. It hashes and borrows as its text, so lookups by `&str` work
/// as with `Arc<str>`. Its form is private to this module, so [`ItemKey::new`] is the only
/// way to make one: an id is inline exactly when it is short enough.
#[derive(Clone)]
pub(crate) struct ItemKey(Form);

#[derive(Clone)]
enum Form {
    Inline(Inline),
    Shared(Arc<str>),
}

/// A short id's bytes: `len` of `bytes`, copied whole from a `&str` by [`ItemKey::new`], so
/// always UTF-8; the bytes past `len` are 0, so two are equal when all their fields are.
#[derive(Clone, PartialEq)]
struct Inline {
    len: u8,
    bytes: [u8; INLINE],
}

#[cfg(target_arch = "wasm32")]
const _: () = assert!(std::mem::size_of::<ItemKey>() == 12);

impl ItemKey {
    pub(crate) fn new(id: &str) -> ItemKey {
        match id.len() {
            len @ ..=INLINE => {
                let mut bytes = [0; INLINE];
                bytes[..len].copy_from_slice(id.as_bytes());
                ItemKey(Form::Inline(Inline {
                    len: len as u8,
                    bytes,
                }))
            }
            _ => ItemKey(Form::Shared(Arc::from(id))),
        }
    }

    /// The id's UTF-8 bytes (what the item store hashes and compares, with no check).
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Form::Inline(i) => i.bytes.get(..usize::from(i.len)).unwrap_or_default(),
            Form::Shared(s) => s.as_bytes(),
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        match &self.0 {
            // SAFETY: an `Inline`'s bytes were copied whole from a `&str` ([`ItemKey::new`],
            // its only maker), so they are UTF-8. (Checking them again cost the browser's
            // page 466 bytes gzipped, a copy of `str::from_utf8`, on a path every read of
            // a tile's items takes.) The core's one `unsafe`.
            Form::Inline(_) => unsafe { std::str::from_utf8_unchecked(self.as_bytes()) },
            Form::Shared(s) => s,
        }
    }
}

impl PartialEq for ItemKey {
    fn eq(&self, other: &ItemKey) -> bool {
        match (&self.0, &other.0) {
            (Form::Inline(a), Form::Inline(b)) => a == b,
            (Form::Shared(a), Form::Shared(b)) => Arc::ptr_eq(a, b) || a == b,
            // An id is inline exactly when it is short enough: two forms, two lengths.
            _ => false,
        }
    }
}

impl Eq for ItemKey {}

impl Hash for ItemKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl Borrow<str> for ItemKey {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl Deref for ItemKey {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for ItemKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::HashSet;

    #[test]
    fn equal_by_text_and_found_by_text() {
        let long = "0f8fad5b-d9cb-469f-a165-70867728950e";
        let a = ItemKey::new("home-1");
        let (same, copy, other) = (a.clone(), ItemKey::new("home-1"), ItemKey::new("home-2"));
        assert!(a == same && a == copy && a != other);
        let (l, l2) = (ItemKey::new(long), ItemKey::new(long));
        assert!(l == l.clone() && l == l2 && l != a);
        let set: HashSet<ItemKey> = [a, other, l].into_iter().collect();
        assert!(set.contains("home-1") && set.contains(&copy) && !set.contains("home-3"));
        assert!(set.contains(long) && set.contains(&l2));
    }

    #[test]
    fn short_ids_inline_longer_ones_shared_each_as_given() {
        let at_limit = "é".repeat(INLINE / 2);
        assert_eq!(at_limit.len(), INLINE);
        let over = format!("{at_limit}x");
        for (id, inline) in [
            ("", true),
            ("home-12345", true),
            (&at_limit, true),
            (&over, false),
        ] {
            let key = ItemKey::new(id);
            assert_eq!(matches!(key.0, Form::Inline(_)), inline, "{id}");
            assert_eq!((&*key, key.as_bytes()), (id, id.as_bytes()));
            assert_eq!(format!("{key:?}"), format!("{id:?}"));
        }
    }
}
