//! Helpers every core module shares, private to the crate: the core's hash map and set,
//! and (from [`crate::size_tricks`], where the code written a harder way to keep the
//! browser's wasm small is gathered) the one sort of `(u64, u64)` keys and how numbers and
//! strings are written into error messages. Modules import them from here
//! (`crate::util`), never from the crate root.

/// The core's hash map (also in public fields such as [`CacheConfig::class_ttl_ms`](crate::cache::CacheConfig::class_ttl_ms)):
/// hashbrown with its default hasher (foldhash), the table and hasher the `lru` crate already
/// brings, so the wasm build carries one of each instead of adding std's SipHash. Iteration
/// order is unspecified, as with std's; wherever order matters the core sorts.
pub type HashMap<K, V> = hashbrown::HashMap<K, V>;

/// The core's hash set; see [`HashMap`].
pub type HashSet<T> = hashbrown::HashSet<T>;

pub(crate) use crate::size_tricks::{sort_pairs, Num, Quoted, QuotedChar};
