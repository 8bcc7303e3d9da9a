//! Changes from the origin's feed applied to the edge's caches (issue 19): an
//! [`Invalidation`] drops what it covers from every tier's cache and the serialised tiles
//! (`wire`), and three guards keep an old value from coming back:
//!
//! - **Epoch.** Every change starts a new epoch. A [`Pending`] request and a warming
//!   request remember the epoch they were planned in; an origin answer that arrives in a
//!   later epoch is still given to its caller (it was asked before the change reached this
//!   isolate) but is not written into the cache, so it cannot outlive the change here.
//!   A warming answer is known by its tier and tiles only: the same tiles warmed again
//!   while an answer is out count as planned when the first still out was, until every
//!   one of them is answered or past its deadline (`Changes::warm_planned`), so an answer
//!   asked before a change is never written as one asked after it.
//! - **Missing ids.** Ids remembered as missing that the change names are forgotten (an
//!   item invalidated may exist again), and so are the holds of tiles and ids too large to
//!   read alone that it covers (`Proxy::ask_in_part`: they may have shrunk).
//! - **Shared-cache entries** ([`super::shared`]) cannot be listed or purged by id. So the
//!   proxy keeps a log of recent changes with the time this isolate applied each
//!   ([`MAX_CHANGE_LOG`]), and [`Proxy::shared_fill`] refuses an entry fetched before a
//!   change that covers it: `all`, a tile covering the entry's data tile, an id or a class
//!   of one of its items. Past the log's size the oldest changes are folded into a time
//!   floor: every entry fetched before it is refused ([`Proxy::invalidate_all_before`]
//!   raises the floor to a time the shell names, for a feed that lost the changes before
//!   it).
//!
//! # An entry is dated by when its origin request was planned
//! The time an entry is compared by ([`super::shared::SharedEntry::fetched_at_ms`]) is
//! when the origin request whose answer it holds was planned ([`Proxy::begin`], or the
//! warming request's planning), which is before that request left; not when it was
//! stored. Stored-at would be wrong: isolate A's origin request leaves before change C,
//! its answer (the old value) comes back after C reached the origin but before A's poll
//! applied C, so A's epoch is unchanged and A writes the old value to the shared cache
//! at S; isolate B applied C at Tb < S, and an entry dated S would pass B's check
//! (`S < Tb` is false) and be served until its `max-age`. Dated by its planning, the
//! entry is older than Tb and refused. The other way round holds too: an entry whose
//! request was planned after Tb (B's apply time, which is after the origin published C)
//! read the origin after C was published, so it holds the new value (up to the origin's
//! own window for an answer in flight across a change, docs/server.md), and taking it is
//! right. The time of a tile's last fill is kept per (tier, data tile) ([`MAX_FETCHED`]):
//! an origin answer's planning time, or a shared-cache entry's own date when it filled the
//! tile.
//!
//! Times are this isolate's clock (the proxy's, `crate::clock`, which a step back of the
//! worker's `Date.now()` does not move back; an entry's date goes out on the worker's clock
//! and comes back as it is, so after a step back an entry looks older, never newer): B
//! compares A's planning time with the time B applied
//! the change, which is later than the change itself, so an entry planned in between is
//! refused too (safe, one extra origin call); skew between isolates' clocks larger than
//! the feed's poll interval could let an old entry through.

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

/// Most (tier, data tile) pairs whose last fill's time is remembered (module docs); a tile
/// whose time is forgotten gives no shared-cache entry (a write lost, never a wrong date).
/// Far more than one answer names with the default [`super::ProxyConfig::max_data_tiles`]
/// (1024), and the shell asks for the entries right after the answer.
pub const MAX_FETCHED: usize = 4096;

/// The proxy's record of applied changes.
pub(super) struct Changes {
    /// Starts at 0; +1 per change.
    pub(super) epoch: u64,
    /// Recent changes, oldest first, with the time they were applied.
    log: VecDeque<(u64, Invalidation)>,
    /// Shared-cache entries fetched before this are refused.
    floor_ms: u64,
    /// Outstanding warming requests (tier, tiles): the epoch and the time the earliest of
    /// them was planned in, how many are out, and when the latest was planned.
    warm: LruCache<(Access, Vec<TileId>), Warming>,
    /// [`super::ProxyConfig::warm_timeout_ms`].
    warm_timeout_ms: u64,
    /// Per (tier, data tile): when the origin request of the answer that last filled it was
    /// planned (module docs).
    fetched: LruCache<(Access, TileId), u64>,
}

/// The warming requests out for one (tier, tiles).
#[derive(Clone, Copy)]
struct Warming {
    /// The epoch and time of the earliest planning still counted.
    epoch: u64,
    planned_ms: u64,
    /// How many are out.
    out: u32,
    /// When the latest was planned: past it plus the warm timeout, none can be answered.
    latest_ms: u64,
}

impl Changes {
    pub(super) fn new(warm_timeout_ms: u64) -> Changes {
        let cap = |n| NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN);
        Changes {
            epoch: 0,
            log: VecDeque::new(),
            floor_ms: 0,
            warm: LruCache::new(cap(MAX_WARM_EPOCHS)),
            warm_timeout_ms,
            fetched: LruCache::new(cap(MAX_FETCHED)),
        }
    }

    /// Whether every warming `w` counts was planned at least the warm timeout before
    /// `now_ms`: none of their outcomes can still be given back (the shell gives an answer
    /// later than that back as a failure), and one never given back (its `waitUntil` cut
    /// off) stops counting.
    fn past_deadline(&self, w: &Warming, now_ms: u64) -> bool {
        now_ms.saturating_sub(w.latest_ms) >= self.warm_timeout_ms
    }

    /// Remembers that a warming request for `tiles` at `tier` was planned at `now_ms`.
    /// While one for the same tiles is still out (its answer, or its failure, not given
    /// back), the earliest planning stands, until every one of them is given back: an
    /// answer names its request by tier and tiles only, so any of them may come back
    /// first, and one asked before a change must never be judged by a planning after it
    /// (written and dated after the change). So every answer is judged as the earliest
    /// still out: with a change between two plannings, none of theirs is written (lost
    /// warming, never an old value). Before, the first answer back used the planning up and
    /// a third planning, made after a second change while the second was still out, judged
    /// the second's answer, asked before that change, as current. Warmings all planned at
    /// least the warm timeout ago are out no longer (their outcomes cannot come back): one
    /// whose outcome never came (a `waitUntil` cut off) used to count until the entry was
    /// evicted, and every later warming of the same tiles after a change was judged by its
    /// planning and not written.
    pub(super) fn warm_planned(&mut self, tier: Access, tiles: &[TileId], now_ms: u64) {
        let key = (tier, tiles.to_vec());
        let fresh = Warming {
            epoch: self.epoch,
            planned_ms: now_ms,
            out: 1,
            latest_ms: now_ms,
        };
        let w = match self.warm.peek(&key) {
            Some(w) if !self.past_deadline(w, now_ms) => Warming {
                out: w.out.saturating_add(1),
                latest_ms: w.latest_ms.max(now_ms),
                ..*w
            },
            _ => fresh,
        };
        self.warm.put(key, w);
    }

    /// One of those warming requests was given back at `now_ms` (answered or failed): when
    /// the earliest still out was planned, if its answer may be written (that was in this
    /// epoch, and the answer is not past its deadline).
    pub(super) fn warm_current(
        &mut self,
        tier: Access,
        tiles: &[TileId],
        now_ms: u64,
    ) -> Option<u64> {
        let key = (tier, tiles.to_vec());
        let w = *self.warm.peek(&key)?;
        if self.past_deadline(&w, now_ms) {
            self.warm.pop(&key);
            return None;
        }
        if w.out > 1 {
            self.warm.put(
                key,
                Warming {
                    out: w.out - 1,
                    ..w
                },
            );
        } else {
            self.warm.pop(&key);
        }
        (w.epoch == self.epoch).then_some(w.planned_ms)
    }

    /// One warming request for `from` at `tier` is sent as one for `to` instead (a part of
    /// its tiles, the rest taken from the shared cache): it stays planned when it was, in
    /// its epoch (merged with any warming of `to` still out: the earliest planning stands,
    /// as in [`Changes::warm_planned`]). False, and nothing planned for `to`, when the
    /// warming of `from` no longer counts (past its deadline, forgotten) or was planned
    /// before a change: its answer would not be written, so it is not worth sending.
    pub(super) fn warm_narrowed(
        &mut self,
        tier: Access,
        from: &[TileId],
        to: &[TileId],
        now_ms: u64,
    ) -> bool {
        let Some(w) = self.warm.peek(&(tier, from.to_vec())).copied() else {
            return false;
        };
        // Given back: one of those out is no longer.
        if self.warm_current(tier, from, now_ms).is_none() {
            return false;
        }
        let key = (tier, to.to_vec());
        let moved = match self.warm.peek(&key) {
            Some(o) if !self.past_deadline(o, now_ms) => Warming {
                epoch: if o.planned_ms <= w.planned_ms {
                    o.epoch
                } else {
                    w.epoch
                },
                planned_ms: o.planned_ms.min(w.planned_ms),
                out: o.out.saturating_add(1),
                latest_ms: o.latest_ms.max(w.latest_ms),
            },
            _ => Warming { out: 1, ..w },
        };
        self.warm.put(key, moved);
        true
    }

    /// Remembers that data tile `tile` of `tier` was filled from an answer whose origin
    /// request was planned at `planned_ms`.
    pub(super) fn fetched(&mut self, tier: Access, tile: TileId, planned_ms: u64) {
        self.fetched.put((tier, tile), planned_ms);
    }

    /// When the origin request of the answer that last filled `tile` of `tier` was planned.
    pub(super) fn fetched_at(&self, tier: Access, tile: TileId) -> Option<u64> {
        self.fetched.peek(&(tier, tile)).copied()
    }

    /// Whether a shared-cache entry for `tile`, fetched at `fetched_at_ms` (its origin
    /// request planned then), holding `entry`, is older than a change that covers it.
    pub(super) fn covers_entry(
        &self,
        tile: TileId,
        entry: &BatchResponse<RawData>,
        fetched_at_ms: u64,
    ) -> bool {
        if fetched_at_ms < self.floor_ms {
            return true;
        }
        self.log
            .iter()
            .filter(|(at, _)| fetched_at_ms < *at)
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
        let now_ms = self.clock.read(now_ms);
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
        self.release_held(inv);
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

    /// Everything changed at `floor_ms`, and what is unknown: every tier's cache is dropped
    /// (as [`Proxy::invalidate`] of everything), and shared-cache entries fetched before
    /// `floor_ms` are refused, those fetched since are still checked against the changes
    /// applied. For a feed that cannot replay the changes before `floor_ms` (it starts
    /// later), which the shell then replays from there (docs/edge.md, "Changes"). The
    /// floor never moves back. Returns the items dropped.
    pub fn invalidate_all_before(&mut self, floor_ms: u64) -> usize {
        let mut dropped = 0;
        for tier in Access::ALL {
            let t = tier.rank() as usize;
            dropped += self.caches[t].invalidate(Invalidate::All);
            self.missing[t].clear();
            self.wire.changed(tier);
        }
        self.held_too_large.clear();
        self.warm_tries.release(|_| true);
        let c = &mut self.changes;
        c.epoch = c.epoch.wrapping_add(1);
        c.floor_ms = c.floor_ms.max(floor_ms);
        let floor = c.floor_ms;
        c.log.retain(|(at, _)| *at > floor);
        dropped
    }

    /// Ends the holds of tiles and ids too large to read alone ([`Proxy::ask_in_part`]) that
    /// `inv` may have made smaller: a tile it covers (or lies in), an id it names, every
    /// one for a class or `all` (as the package ends its holds, and the server forgets a
    /// tile over its limit). Asked of the origin again at the next request for them. The
    /// same for warming's holds ([`super::WarmTries::held_until`]): a tile the origin left out of
    /// a warming as too large is warmed again at the next request's ring.
    fn release_held(&mut self, inv: &Invalidation) {
        let everywhere = inv.all || !inv.classes.is_empty();
        self.warm_tries
            .release(|(_, t)| everywhere || inv.covers_tile(*t));
        if self.held_too_large.is_empty() {
            return;
        }
        if inv.all || !inv.classes.is_empty() {
            self.held_too_large.clear();
            return;
        }
        let gone: Vec<(Access, super::Unit)> = (self.held_too_large.iter())
            .filter(|((_, unit), _)| match unit {
                super::Unit::Tile(t) => inv.covers_tile(*t),
                super::Unit::Id(id) => inv.ids.contains(id),
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in gone {
            self.held_too_large.pop(&key);
        }
    }

    /// The current epoch: +1 per [`Proxy::invalidate`] or [`Proxy::invalidate_all_before`].
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
