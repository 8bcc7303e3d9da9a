//! Changes from the origin's feed applied to the edge's caches (issue 19): an
//! [`Invalidation`] drops what it covers from every tier's cache and the serialised tiles
//! ([`super::wire`]), and three guards keep an old value from coming back:
//!
//! - **Epoch.** Every change starts a new epoch. A [`Pending`] request and a warming
//!   request remember the epoch they were planned in; an origin answer that arrives in a
//!   later epoch is still given to its caller (it was asked before the change reached this
//!   isolate) but is not written into the cache, so it cannot outlive the change here.
//! - **Missing ids.** Ids remembered as missing that the change names are forgotten (an
//!   item invalidated may exist again).
//! - **Shared-cache entries** ([`super::shared`]) cannot be listed or purged by id. So the
//!   proxy keeps a log of recent changes with the time this isolate applied each
//!   ([`MAX_CHANGE_LOG`]), and [`Proxy::shared_fill`] refuses an entry stored before a
//!   change that covers it: `all`, a tile covering the entry's data tile, an id or a class
//!   of one of its items. Past the log's size the oldest changes are folded into a time
//!   floor: every entry stored before it is refused. Times are this isolate's clock when it
//!   applied the change, which is later than the change itself, so an entry another isolate
//!   stored in between is refused too (safe, one extra origin call); skew between isolates'
//!   clocks larger than the feed's poll interval could let an old entry through.

use std::collections::VecDeque;
use std::num::NonZeroUsize;

use lru::LruCache;

use super::{Pending, Proxy};
use crate::access::Access;
use crate::cache::Invalidate;
use crate::protocol::{BatchResponse, Invalidation, RawData};
use crate::tile::TileId;

/// Most changes remembered for checking shared-cache entries; older ones become a time
/// floor (see the module docs).
pub const MAX_CHANGE_LOG: usize = 64;

/// Most warming requests whose epoch is remembered; a warming answer whose request is not
/// remembered is not written (it only loses warming).
pub const MAX_WARM_EPOCHS: usize = 256;

/// The proxy's record of applied changes.
pub(super) struct Changes {
    /// Starts at 0; +1 per change.
    pub(super) epoch: u64,
    /// Recent changes, oldest first, with the time they were applied.
    log: VecDeque<(u64, Invalidation)>,
    /// Shared-cache entries stored before this are refused.
    floor_ms: u64,
    /// Outstanding warming requests (tier, tiles) and the epoch they were planned in.
    warm: LruCache<(Access, Vec<TileId>), u64>,
}

impl Changes {
    pub(super) fn new() -> Changes {
        let cap = NonZeroUsize::new(MAX_WARM_EPOCHS).unwrap_or(NonZeroUsize::MIN);
        Changes {
            epoch: 0,
            log: VecDeque::new(),
            floor_ms: 0,
            warm: LruCache::new(cap),
        }
    }

    /// Remembers that a warming request for `tiles` at `tier` was planned now.
    pub(super) fn warm_planned(&mut self, tier: Access, tiles: &[TileId]) {
        self.warm.put((tier, tiles.to_vec()), self.epoch);
    }

    /// Whether the answer to that warming request may be written (planned in this epoch).
    pub(super) fn warm_current(&mut self, tier: Access, tiles: &[TileId]) -> bool {
        self.warm.pop(&(tier, tiles.to_vec())) == Some(self.epoch)
    }

    /// Whether a shared-cache entry for `tile`, stored at `stored_at_ms`, holding `entry`,
    /// is older than a change that covers it.
    pub(super) fn covers_entry(
        &self,
        tile: TileId,
        entry: &BatchResponse<RawData>,
        stored_at_ms: u64,
    ) -> bool {
        if stored_at_ms < self.floor_ms {
            return true;
        }
        self.log
            .iter()
            .filter(|(at, _)| stored_at_ms < *at)
            .any(|(_, inv)| {
                inv.covers_tile(tile)
                    || entry
                        .items
                        .iter()
                        .any(|it| inv.ids.contains(&it.id) || inv.classes.contains(&it.class))
            })
    }
}

impl Proxy {
    /// Applies a change from the feed at `now_ms`: drops what `inv` covers from every
    /// tier's cache and serialised tiles, forgets the missing ids it names, starts a new
    /// epoch (origin answers in flight are not written back) and logs it for the shared
    /// cache's entries (module docs). Returns the items dropped.
    pub fn invalidate(&mut self, inv: &Invalidation, now_ms: u64) -> usize {
        let ids: Vec<&str> = inv.ids.iter().map(String::as_str).collect();
        let mut dropped = 0;
        for tier in Access::ALL {
            let t = tier.rank() as usize;
            let cache = &mut self.caches[t];
            if inv.all {
                dropped += cache.invalidate(Invalidate::All);
                self.missing[t].clear();
            } else {
                dropped += cache.invalidate(Invalidate::Ids(&ids));
                dropped += cache.invalidate(Invalidate::Tiles(&inv.tiles));
                for class in &inv.classes {
                    dropped += cache.invalidate(Invalidate::Class(class));
                }
                for id in &inv.ids {
                    self.missing[t].pop(id);
                }
            }
            self.wire.changed(tier);
        }
        let c = &mut self.changes;
        c.epoch = c.epoch.wrapping_add(1);
        if inv.all {
            c.log.clear();
            c.floor_ms = c.floor_ms.max(now_ms);
        } else {
            c.log.push_back((now_ms, inv.clone()));
            while c.log.len() > MAX_CHANGE_LOG {
                if let Some((at, _)) = c.log.pop_front() {
                    c.floor_ms = c.floor_ms.max(at);
                }
            }
        }
        dropped
    }

    /// The current epoch: +1 per [`Proxy::invalidate`].
    pub fn epoch(&self) -> u64 {
        self.changes.epoch
    }

    /// Whether `pending` was planned in the current epoch (its origin answer may be
    /// written back).
    pub(super) fn current(&self, pending_epoch: u64) -> bool {
        pending_epoch == self.changes.epoch
    }
}

impl Pending {
    /// The epoch it was planned in.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
}
