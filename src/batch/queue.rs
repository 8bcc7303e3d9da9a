//! The work waiting to go out: a foreground and a prefetch queue of tile work, and the ids
//! asked for directly.

use super::{Finished, Kind};
use crate::planner::Work;
use crate::tile::TileSet;
use crate::util::{sort_pairs, HashSet};

/// An id asked for directly (not through a tile), with its retry state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct LooseId {
    pub(super) id: String,
    /// Attempt number of its next request.
    pub(super) attempt: u32,
    /// It is not requested before this time.
    pub(super) not_before_ms: u64,
}

/// The queues, in priority order. No tile is in a queue twice.
#[derive(Clone, Debug, Default)]
pub(super) struct Queues {
    pub(super) foreground: Vec<Work>,
    pub(super) prefetch: Vec<Work>,
    /// Ids asked for directly, in order; they go out with foreground requests.
    pub(super) loose_ids: Vec<LooseId>,
}

impl Queues {
    /// The queue of tile work of `kind`.
    pub(super) fn of(&mut self, kind: Kind) -> &mut Vec<Work> {
        match kind {
            Kind::Foreground => &mut self.foreground,
            Kind::Prefetch => &mut self.prefetch,
        }
    }

    /// Whether foreground work (tiles or ids) is waiting.
    pub(super) fn has_foreground(&self) -> bool {
        !self.foreground.is_empty() || !self.loose_ids.is_empty()
    }

    /// Replaces the queue of `kind` with `works`, without repeated tiles.
    pub(super) fn set(&mut self, kind: Kind, works: Vec<Work>) {
        *self.of(kind) = dedup_by_tile(works);
    }

    /// Adds prefetch work behind what is queued (tiles already queued are skipped).
    pub(super) fn extend_prefetch(&mut self, works: Vec<Work>) {
        // The queue has no tile twice, so deduplicating it with the new work behind keeps
        // it whole and adds the new work's first of each tile not queued yet.
        self.prefetch.extend(works);
        self.prefetch = dedup_by_tile(std::mem::take(&mut self.prefetch));
    }

    /// Queues ids not queued yet and not `in_flight`, in order.
    pub(super) fn add_ids<'a>(
        &mut self,
        ids: impl IntoIterator<Item = &'a str>,
        mut in_flight: impl FnMut(&str) -> bool,
    ) {
        // A set of borrowed ids (the key type the protocol's checks use too), so the new
        // ones are collected before they are queued. The new ones join it: an id given twice
        // in one call (a `getMany` with a repeat) is queued once, as two calls queue it.
        let mut queued: HashSet<&str> = self.loose_ids.iter().map(|l| l.id.as_str()).collect();
        let mut new = Vec::new();
        for id in ids {
            if !queued.contains(id) && !in_flight(id) {
                queued.insert(id);
                new.push(LooseId {
                    id: id.to_owned(),
                    attempt: 0,
                    not_before_ms: 0,
                });
            }
        }
        drop(queued);
        self.loose_ids.append(&mut new);
    }

    /// Puts a failed request's work back at the front of its queues: its tiles (those not
    /// queued again meanwhile) and its ids, as attempt `attempt`, not before
    /// `not_before_ms`.
    pub(super) fn requeue(&mut self, f: &Finished, attempt: u32, not_before_ms: u64) {
        let queue = self.of(f.kind);
        let queued = TileSet::new(queue.iter().map(Work::tile));
        let mut again = Vec::new();
        for w in &f.works {
            if !queued.contains(w.tile()) {
                again.push(w.clone());
            }
        }
        again.append(queue);
        *queue = again;
        let mut loose = Vec::new();
        for id in &f.loose_ids {
            loose.push(LooseId {
                id: id.clone(),
                attempt,
                not_before_ms,
            });
        }
        loose.append(&mut self.loose_ids);
        self.loose_ids = loose;
    }
}

/// `works` without the later ones of a tile listed earlier, in their order. Sorted as
/// `(tile, position)` pairs rather than checked against a hash set: the first of each run
/// of a tile stays.
fn dedup_by_tile(mut works: Vec<Work>) -> Vec<Work> {
    let mut keys: Vec<(u64, u64)> = Vec::with_capacity(works.len());
    for (i, w) in works.iter().enumerate() {
        keys.push((w.tile().to_u64(), i as u64));
    }
    sort_pairs(&mut keys);
    let mut repeat = vec![false; works.len()];
    for p in keys.windows(2) {
        if p[0].0 == p[1].0 {
            repeat[p[1].1 as usize] = true;
        }
    }
    let mut i = 0;
    works.retain(|_| {
        i += 1;
        !repeat[i - 1]
    });
    works
}
