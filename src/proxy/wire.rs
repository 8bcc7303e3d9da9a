//! The edge's hit path, spliced from bytes (issue 22): each data tile's items at a tier are
//! serialised once, with a gap where each item's `ttl` goes, and a request that the cache
//! answers whole is written by copying those bytes and the remaining seconds, instead of
//! reading every item out of the cache, copying it and serialising it again.
//!
//! It applies to the common hit: only tiles, every one at the data zoom and fresh. Anything
//! else (ids, finer or coarser tiles, a partial hit) takes the general path
//! ([`super::policy`]), and so does a request whose tiles' serialised form is out of date:
//! each [`WireTile`] records the *generation* of its tier's cache when it was made, and
//! every change to that cache ([`Proxy::fill`]: origin answers, warming, shared-cache
//! entries) starts a new generation. An item that has expired, or an id listed twice,
//! also sends the request down the general path, which handles them.
//!
//! The answer is the same JSON text the general path writes, byte for byte (a property
//! test compares the two over random sequences of requests, answers and time).
//!
//! What it does not do: it does not refresh the cache's LRU order of the items it serves
//! (the tile's own recency neither); under memory pressure a tile served only this way is
//! evicted before one read through the general path, and its next request then takes the
//! general path once.

use std::fmt::Write as _;
use std::num::NonZeroUsize;

use lru::LruCache;

use super::Proxy;
use crate::access::Access;
use crate::protocol::{ttl_left_s, Item};
use crate::tile::TileId;
use crate::util::HashSet;

/// Most data tiles kept serialised per tier (least recently used dropped first). At about
/// 10 KB for a dense tile, 4 tiers × 256 tiles stay near 10 MB.
pub const MAX_WIRE_TILES: usize = 256;

/// The placeholder written for an item's `ttl` while serialising it, then cut out.
const TTL_MARK: &str = "\"ttl\":4294967295";

/// One data tile's items at one tier, serialised.
pub(super) struct WireTile {
    /// The generation of the tier's cache it was made at.
    generation: u64,
    /// When the tile's list stops being fresh.
    list_exp: u64,
    /// The list's ids as JSON strings, comma separated.
    ids: String,
    /// Every item's JSON text, one after another, each without its `ttl` value.
    buf: String,
    items: Vec<WireItem>,
}

struct WireItem {
    id: Box<str>,
    exp: u64,
    /// Offsets in `buf`: start, where `"ttl":<n>` goes (after `"ttl":`), end.
    start: u32,
    ttl_at: u32,
    end: u32,
}

/// The per-tier stores of serialised tiles.
pub(super) struct Wire {
    tiles: [LruCache<TileId, WireTile>; 4],
    generation: [u64; 4],
}

impl Wire {
    pub(super) fn new() -> Wire {
        let cap = NonZeroUsize::new(MAX_WIRE_TILES).unwrap_or(NonZeroUsize::MIN);
        Wire {
            tiles: std::array::from_fn(|_| LruCache::new(cap)),
            generation: [0; 4],
        }
    }

    /// A change to `tier`'s cache: every tile serialised before it is out of date.
    pub(super) fn changed(&mut self, tier: Access) {
        let i = tier.rank() as usize;
        self.generation[i] = self.generation[i].wrapping_add(1);
        self.tiles[i].clear();
    }
}

impl Proxy {
    /// Serialises data tile `d` at `tier` from the cache (which holds it fresh).
    fn wire_tile(&mut self, d: TileId, tier: Access, now_ms: u64) -> Option<WireTile> {
        let cache = &mut self.caches[tier.rank() as usize];
        let list_exp = cache.tile_expires_at_ms(d)?;
        let mut items = Vec::new();
        cache.read_tile(d, tier, now_ms, |item, class, _stale| {
            items.push((
                Item {
                    id: item.id().to_owned(),
                    lon: item.payload().lon,
                    lat: item.payload().lat,
                    class: class.to_owned(),
                    access: item.access(),
                    ttl: Some(u32::MAX),
                    data: item.payload().data.clone(),
                },
                item.expires_at_ms(),
            ));
        });
        let mut ids = String::new();
        let mut buf = String::new();
        let mut out = Vec::with_capacity(items.len());
        for (it, exp) in items {
            if !ids.is_empty() {
                ids.push(',');
            }
            ids.push_str(&serde_json::to_string(&it.id).ok()?);
            let start = buf.len();
            buf.push_str(&serde_json::to_string(&it).ok()?);
            let mark = buf[start..].find(TTL_MARK)? + start;
            let ttl_at = mark + TTL_MARK.len() - "4294967295".len();
            buf.replace_range(ttl_at..mark + TTL_MARK.len(), "");
            out.push(WireItem {
                id: it.id.into_boxed_str(),
                exp,
                start: u32::try_from(start).ok()?,
                ttl_at: u32::try_from(ttl_at).ok()?,
                end: u32::try_from(buf.len()).ok()?,
            });
        }
        Some(WireTile {
            generation: self.wire.generation[tier.rank() as usize],
            list_exp,
            ids,
            buf,
            items: out,
        })
    }

    /// The answer to a request for `tiles` (each a data tile the cache of `tier` holds
    /// fresh, no ids) written from the serialised tiles, or `None` when the general path
    /// must answer it (see the module docs).
    pub(super) fn spliced_answer(
        &mut self,
        tiles: &[TileId],
        tier: Access,
        now_ms: u64,
    ) -> Option<String> {
        let t = tier.rank() as usize;
        let generation = self.wire.generation[t];
        for &d in tiles {
            let current = self.wire.tiles[t]
                .get(&d)
                .is_some_and(|w| w.generation == generation);
            if !current {
                let w = self.wire_tile(d, tier, now_ms)?;
                self.wire.tiles[t].put(d, w);
            }
        }
        let store = &self.wire.tiles[t];
        let mut size = 64;
        let mut count = 0;
        for d in tiles {
            let w = store.peek(d)?;
            if w.list_exp <= now_ms || w.items.iter().any(|i| i.exp <= now_ms) {
                return None;
            }
            size += w.buf.len() + w.ids.len() + 48 + 12 * w.items.len();
            count += w.items.len();
        }
        // An answer over what clients read (the estimate counts 48 bytes a list for up to
        // 58) goes the general way, which answers what fits and leaves the rest out.
        let limits = &self.config.limits;
        if size + 16 * tiles.len() > limits.max_body_bytes || count > limits.max_items {
            return None;
        }
        // Sized once: grown item by item it was rehashed about ten times for 16 tiles.
        let mut seen: HashSet<&str> = HashSet::with_capacity(count);
        let mut out = String::with_capacity(size);
        out.push_str("{\"tiles\":[");
        for (k, d) in tiles.iter().enumerate() {
            let w = store.peek(d)?;
            if k > 0 {
                out.push(',');
            }
            let _ = write!(
                out,
                "{{\"tile\":\"{d}\",\"ids\":[{}],\"ttl\":{}}}",
                w.ids,
                ttl_left_s(w.list_exp, now_ms)
            );
        }
        out.push_str("],\"items\":[");
        let mut first = true;
        for d in tiles {
            let w = store.peek(d)?;
            for i in &w.items {
                if !seen.insert(&i.id) {
                    return None;
                }
                if !first {
                    out.push(',');
                }
                first = false;
                let (s, m, e) = (i.start as usize, i.ttl_at as usize, i.end as usize);
                out.push_str(&w.buf[s..m]);
                out.push_str(itoa::Buffer::new().format(ttl_left_s(i.exp, now_ms)));
                out.push_str(&w.buf[m..e]);
            }
        }
        let _ = write!(out, "],\"missing\":[],\"access\":\"{}\"}}", tier.as_str());
        Some(out)
    }
}
