//! Invalidation of the server's cache tier: the one entry point for whatever learns that
//! items changed — the PostGIS change feed ([`crate::origin::changes`]), an upstream
//! tilewarm-server's change feed ([`crate::origin::upstream_changes`]), the authenticated
//! `POST /v1/invalidate` ([`crate::stream`] then tells the other instances and the
//! clients), and another instance's invalidation read from the change stream
//! ([`apply_remote`]).
//!
//! [`invalidate`] takes an [`Invalidation`] (ids, tiles, classes, or everything) and removes
//! the matching entries from the tier, in-process or Redis:
//! - **ids**: the items; a data tile that lists one is then a miss, so it is refetched
//!   whole (in-process because a tile is a hit only when every listed item is held; in
//!   Redis, whose tile values hold copies of their items, because the tiles holding the
//!   item are dropped too, found by its stored position: [`crate::tier`]);
//! - **tiles** (any zoom): the data tiles they cover and their items;
//! - **classes**: every item of the class, and in Redis every tile holding one;
//! - **all**: everything the tier holds (in Redis: every key under `--redis-prefix`).
//!
//! # The write-back race, closed by [`WriteGuard`]
//! An origin call that started before a change committed can answer after the invalidation
//! ran, and its write-back would put the old value back for a whole TTL. So every
//! invalidation is logged with a sequence number ([`WriteGuard::record`]); a fetch notes the
//! number before it calls the origin ([`WriteGuard::epoch`]) and, before writing, drops from
//! its fill every item and tile list that an invalidation since then covers
//! ([`WriteGuard::filter`]). The answer itself is still served (it was true when read). The
//! log keeps the last [`LOG_LEN`] invalidations; a fetch older than that writes nothing.
//! [`write_back`] does this for the request path and warm-up, and also re-applies an
//! invalidation recorded while its write was in flight to what the write put in the tier
//! (holding reads and retrying `all` when that fails, as every failed invalidation does).

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tilewarm::TileId;

use crate::backoff::Backoff;
use crate::tier::{CacheTier, Fill, ReadHold, StoredItem, TierError};
use crate::App;

/// What to invalidate: the core's wire type, shared with the edge and the package.
pub use tilewarm::protocol::Invalidation;

/// What an invalidation may have changed beyond what it names, for what the server
/// remembers of a tile's item count ([`crate::warmup::OverLimit`]: a tile found over
/// `--max-tile-items` may have come under it; [`crate::warmup::may_shrink`]). The tier
/// itself drops what the invalidation names either way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Reach {
    /// Its ids may be anywhere: every tile's count may have changed. `POST
    /// /v1/invalidate` (an admin naming ids says what changed, not where it was), an
    /// upstream's feed event or another instance's entry that does not say
    /// [`Reach::Tiles`].
    #[default]
    Anywhere,
    /// Its tiles hold the data tile of every position its ids were at (and are at): the
    /// PostGIS feed, which names each changed row's old and new positions, and what an
    /// upstream's feed or another instance relays of it. Only those
    /// tiles' counts, and through the origin's envelope margin their neighbours', may
    /// have changed. Classes and `all` still reach everywhere.
    Tiles,
}

/// Invalidations kept for [`WriteGuard::filter`].
pub const LOG_LEN: usize = 4096;

/// The invalidation log that keeps in-flight fetches from writing back what changed
/// under them (module docs).
#[derive(Default)]
pub struct WriteGuard {
    /// The number of the last invalidation recorded.
    seq: AtomicU64,
    /// (number, invalidation, its reach), oldest first, at most [`LOG_LEN`].
    log: Mutex<VecDeque<(u64, Invalidation, Reach)>>,
}

impl WriteGuard {
    /// The current number: note it before calling the origin.
    pub fn epoch(&self) -> u64 {
        self.seq.load(Relaxed)
    }

    /// Records an invalidation (before it is applied to the tier, so a fetch that read the
    /// tier after it cannot write back under an older number).
    pub fn record(&self, inv: &Invalidation) {
        self.record_with(inv, Reach::Anywhere);
    }

    /// [`record`](Self::record), with what it may have changed beyond what it names.
    pub fn record_with(&self, inv: &Invalidation, reach: Reach) {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let n = self.seq.fetch_add(1, Relaxed) + 1;
        log.push_back((n, inv.clone(), reach));
        while log.len() > LOG_LEN {
            log.pop_front();
        }
    }

    /// Whether an invalidation recorded after `epoch` may have changed the item count of
    /// data tile `t` ([`crate::warmup::may_shrink`]: it covers the tile or a neighbour,
    /// names classes, or ids of [`Reach::Anywhere`]), or the log no longer reaches back to
    /// `epoch`.
    pub fn may_cover_since(&self, epoch: u64, t: TileId) -> bool {
        if self.seq.load(Relaxed) == epoch {
            return false;
        }
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let oldest = log.front().map_or(u64::MAX, |(n, _, _)| *n);
        oldest > epoch + 1
            || log
                .iter()
                .filter(|(n, _, _)| *n > epoch)
                .any(|(_, i, reach)| crate::warmup::may_shrink(i, *reach, t))
    }

    /// Drops from `fill` what an invalidation recorded after `epoch` covers. Returns how
    /// many entries were dropped.
    pub fn filter(&self, fill: &mut Fill, epoch: u64) -> usize {
        if self.seq.load(Relaxed) == epoch {
            return 0;
        }
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let before = fill.items.len() + fill.tiles.len() + fill.blocks.len();
        let oldest = log.front().map_or(u64::MAX, |(n, _, _)| *n);
        if oldest > epoch + 1 {
            // Older than the log: cannot tell what changed since, write nothing.
            fill.items.clear();
            fill.tiles.clear();
            fill.blocks.clear();
            return before;
        }
        let since: Vec<&Invalidation> = log
            .iter()
            .filter(|(n, _, _)| *n > epoch)
            .map(|(_, i, _)| i)
            .collect();
        if since.iter().any(|i| i.all) {
            fill.items.clear();
            fill.tiles.clear();
            fill.blocks.clear();
            return before;
        }
        let ids: HashSet<&str> = since
            .iter()
            .flat_map(|i| i.ids.iter().map(String::as_str))
            .collect();
        let classes: HashSet<&str> = since
            .iter()
            .flat_map(|i| i.classes.iter().map(String::as_str))
            .collect();
        // Items named by an invalidation, of an invalidated class, positioned in a tile an
        // invalidation covers (fetched by id, with no list) or listed by such a tile: a
        // tile's invalidation drops its items, as the tiers do.
        let in_covered_tile = |it: &StoredItem| {
            TileId::from_lon_lat(it.lon(), it.lat(), tilewarm::tile::MAX_ZOOM)
                .is_ok_and(|p| since.iter().any(|i| i.covers_tile(p)))
        };
        let mut gone: HashSet<String> = fill
            .items
            .iter()
            .filter(|it| {
                ids.contains(it.id()) || classes.contains(it.class()) || in_covered_tile(it)
            })
            .map(|it| it.id().to_owned())
            .collect();
        // A block (a coarse tile standing for its data tiles) is covered as a tile is when
        // an invalidation covers any part of it.
        for (t, list, _) in fill.tiles.iter().chain(&fill.blocks) {
            if since.iter().any(|i| i.covers_tile(*t)) {
                gone.extend(list.iter().cloned());
            }
        }
        fill.items.retain(|it| !gone.contains(it.id()));
        let kept = |(t, list, _): &(TileId, Vec<String>, u64)| {
            !since.iter().any(|i| i.covers_tile(*t)) && !list.iter().any(|id| gone.contains(id))
        };
        fill.tiles.retain(kept);
        fill.blocks.retain(kept);
        before - fill.items.len() - fill.tiles.len() - fill.blocks.len()
    }
}

/// Counters of invalidations (`/metrics`).
#[derive(Default)]
pub struct InvalidationStats {
    /// Invalidations applied.
    pub applied: AtomicU64,
    /// Of which covered everything.
    pub all: AtomicU64,
    /// Applications that failed on the tier (Redis down): the tier is then not used until
    /// it is back, and the change feed invalidates everything on the next (re)connect.
    pub errors: AtomicU64,
    /// Fill entries dropped by [`WriteGuard::filter`].
    pub writes_dropped: AtomicU64,
}

/// Applies `inv` to the app's cache tier: records it in the write guard, then removes the
/// covered entries. The entry point for the change feed and (issue 19) `POST
/// /v1/invalidate`.
pub async fn invalidate(app: &App, inv: &Invalidation) -> Result<(), TierError> {
    invalidate_with(app, inv, Reach::Anywhere).await
}

/// [`invalidate`] of a change whose source says what it may have changed beyond what it
/// names ([`Reach`]: the PostGIS feed's [`Reach::Tiles`]).
pub async fn invalidate_with(app: &App, inv: &Invalidation, reach: Reach) -> Result<(), TierError> {
    apply(app, inv, inv, reach).await
}

/// [`invalidate`], recording `inv` and applying `on_tier` (a part of it) to the tier.
async fn apply(
    app: &App,
    inv: &Invalidation,
    on_tier: &Invalidation,
    reach: Reach,
) -> Result<(), TierError> {
    if inv.is_empty() {
        return Ok(());
    }
    app.invalidation.guard.record_with(inv, reach);
    // A request arriving from now on must not be served a flight that may predate the
    // change: of a tile whose list or count it may have changed (the rule of the tiles
    // over --max-tile-items below, which a flight may tell of too). Ids whose tiles are
    // not known here, or classes, let go of every flight; the PostGIS feed's only of the
    // tiles it names and those around them.
    let zooms = std::iter::once(app.config.data_zoom).collect();
    let changed = crate::warmup::MayShrink::new(inv, reach, zooms);
    app.single_flight.forget(|t| changed.test(t));
    // Nor told that a tile is over --max-tile-items from before it (it may have shrunk),
    // nor warm-up kept from it (`crate::warmup::OverLimit`): what it may have changed
    // only ([`Reach`]).
    app.warmup.over_limit.forget_changed(inv, reach);
    let s = &app.invalidation.stats;
    s.applied.fetch_add(1, Relaxed);
    if inv.all {
        s.all.fetch_add(1, Relaxed);
    }
    if on_tier.is_empty() {
        return Ok(());
    }
    let r = app.tier.invalidate(on_tier, app.config.data_zoom).await;
    if r.is_err() {
        s.errors.fetch_add(1, Relaxed);
    }
    r
}

/// Applies another instance's invalidation, read from the change stream: recorded in this
/// instance's write guard (so a fetch of this instance that was in flight across the change
/// does not write the old value back) and deleted from the tier again (a write-back of
/// this instance that landed between the other instance's delete and now is removed), as
/// [`invalidate_again`] does when `bumped` (its entry says its classes were bumped in this
/// tier's generations: [`crate::stream::BUMPED`]). Otherwise its classes are bumped here
/// ([`invalidate`]): an instance of an older storage format (v3, during a rolling upgrade)
/// knows no generations and deleted only its own keys of the class, so without a bump the
/// values of this format cached before would be served until their TTL.
/// `reach`: what its entry says it may have changed beyond what it names ([`Reach`];
/// [`crate::stream::REACH`]).
pub async fn apply_remote(
    app: &App,
    inv: &Invalidation,
    bumped: bool,
    reach: Reach,
) -> Result<(), TierError> {
    if bumped {
        invalidate_again(app, inv, reach).await
    } else {
        invalidate_with(app, inv, reach).await
    }
}

/// [`invalidate`] for an invalidation already applied to the shared tier (by another
/// instance, or by this one before publishing it): recorded and deleted again, but its
/// classes are not bumped again in Redis, and `all` (whose generation was bumped too) is
/// only recorded. The first bump covers every instance (the generations are shared), and
/// a write-back made across it was stamped with the generation read before its origin
/// call, so it is stale already ([`crate::tier::Fill::gens`]); bumping again would only
/// make what was fetched after the first bump a miss, once more per instance, and deleting
/// every key again would walk the whole keyspace once more per instance for keys that are
/// misses anyway.
pub async fn invalidate_again(
    app: &App,
    inv: &Invalidation,
    reach: Reach,
) -> Result<(), TierError> {
    match &app.tier {
        CacheTier::Redis(_) if inv.all => apply(app, inv, &Invalidation::default(), reach).await,
        CacheTier::Redis(_) if !inv.classes.is_empty() => {
            let on_tier = Invalidation {
                classes: Vec::new(),
                ..inv.clone()
            };
            apply(app, inv, &on_tier, reach).await
        }
        _ => invalidate_with(app, inv, reach).await,
    }
}

/// Drops from the tier the items an origin's answer left out for their size (`too_large`,
/// over `--max-item-data-bytes`): a copy cached while an item was smaller would otherwise
/// be served by id until its TTL while the origin says it is too large now, two answers
/// disagreeing ([`CacheTier::forget_items`]). Only the items the tier holds: an item that
/// is always too large is named by every answer holding it, and costs one lookup then,
/// not a removal (in-process, a walk of every list) nor an entry in the write guard's log.
/// Those held are recorded in the write guard first, so that a fetch that read the item
/// while it was smaller, still in flight, does not write it back. Call it before writing
/// back the answer that named them (in Redis the data tile holding the item is unlinked
/// too, and the answer's list of it is then written again).
pub async fn forget_too_large(
    app: &App,
    too_large: &[tilewarm::protocol::DataTooLarge],
) -> Result<(), TierError> {
    if too_large.is_empty() {
        return Ok(());
    }
    let ids: Vec<String> = too_large.iter().map(|o| o.id.clone()).collect();
    let ids = app.tier.held_items(&ids).await?;
    if ids.is_empty() {
        return Ok(());
    }
    // An item grown past the size limit is still in its tiles: no tile's count changed.
    app.invalidation.guard.record_with(
        &Invalidation {
            ids: ids.clone(),
            ..Invalidation::default()
        },
        Reach::Tiles,
    );
    app.tier.forget_items(&ids, app.config.data_zoom).await
}

/// Writes `fill`, fetched from the origin after `epoch`, into the tier: whatever an
/// invalidation recorded since `epoch` covers is dropped first ([`WriteGuard::filter`]), and
/// whatever an invalidation recorded *while the write was in flight* covers is removed
/// from the tier again after it, so the old value cannot land after its invalidation. If
/// that removal fails, reads are held off the tier and `all` is retried until it lands
/// ([`spawn_everything_until_applied`], [`ReadHold::WriteBack`]).
pub async fn write_back(app: &App, fill: &mut Fill, epoch: u64) -> Result<(), TierError> {
    // Noted before the filter: an invalidation recorded between the filter and the write
    // is then re-applied after it (re-applying one the filter already saw is harmless).
    let before = app.invalidation.guard.epoch();
    app.invalidation.filter(fill, epoch);
    // Empty lists: a short TTL and a cap (issue 15).
    // Empty to `public` in a whole coarse tile: one key (Redis only).
    app.empty_tiles.limit(fill, crate::tier::now_ms());
    if fill.items.is_empty() && fill.tiles.is_empty() && fill.blocks.is_empty() {
        return Ok(());
    }
    let written = app.tier.write(fill).await;
    if app.invalidation.guard.epoch() != before {
        let mut kept = Fill {
            items: fill.items.clone(),
            tiles: fill.tiles.clone(),
            blocks: fill.blocks.clone(),
            fetched_at: fill.fetched_at,
            gens: fill.gens.clone(),
        };
        app.invalidation.guard.filter(&mut kept, before);
        let kept_ids: HashSet<&str> = kept.items.iter().map(|i| i.id()).collect();
        let kept_tiles: HashSet<TileId> = (kept.tiles.iter().chain(&kept.blocks))
            .map(|(t, _, _)| *t)
            .collect();
        let again = Invalidation {
            ids: fill
                .items
                .iter()
                .filter(|i| !kept_ids.contains(i.id()))
                .map(|i| i.id().to_owned())
                .collect(),
            // A block's tile: its invalidation drops the block with the data tiles'.
            tiles: (fill.tiles.iter().chain(&fill.blocks))
                .map(|(t, _, _)| *t)
                .filter(|t| !kept_tiles.contains(t))
                .collect(),
            ..Invalidation::default()
        };
        if !again.is_empty() {
            app.invalidation
                .stats
                .writes_dropped
                .fetch_add((again.ids.len() + again.tiles.len()) as u64, Relaxed);
            if app
                .tier
                .invalidate(&again, app.config.data_zoom)
                .await
                .is_err()
            {
                // The old value may stay in Redis, and the probe brings the tier back on
                // `PING`: reads are held until an `all` lands, as for any failed one.
                app.invalidation.stats.errors.fetch_add(1, Relaxed);
                if let Some(app) = app.this.upgrade() {
                    spawn_everything_until_applied(&app, ReadHold::WriteBack);
                }
            }
        }
    }
    written
}

/// The invalidation state an [`App`] holds.
#[derive(Default)]
pub struct Invalidations {
    pub guard: WriteGuard,
    pub stats: InvalidationStats,
    /// Failed invalidations waiting for an `all` to land, per [`ReadHold`].
    pending: Mutex<Pending>,
}

/// Per [`ReadHold`] (by its bit's index): the failures noted, and whether a retry
/// ([`everything_until_applied`]) is running. One lock over both and the hold itself, so
/// that a retry finishing cannot let reads back over a failure noted while its `all` was
/// out, nor leave them held with no retry running.
#[derive(Default)]
struct Pending {
    failures: [u64; 8],
    running: u8,
}

impl Invalidations {
    /// Notes a failed invalidation for `by` and holds reads off the tier for it. Returns
    /// whether a retry for `by` is running already (its next `all` covers this one).
    fn note_failure(&self, tier: &CacheTier, by: ReadHold) -> bool {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let (bit, i) = (by as u8, (by as u8).trailing_zeros() as usize);
        // Compared for equality only ([`Self::landed`]), so wrapping is harmless.
        p.failures[i] = p.failures[i].wrapping_add(1);
        tier.hold_reads(by, true);
        let running = p.running & bit != 0;
        p.running |= bit;
        running
    }

    /// The failures noted for `by` so far.
    fn failures(&self, by: ReadHold) -> u64 {
        let p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.failures[(by as u8).trailing_zeros() as usize]
    }

    /// An `all` begun when `seen` failures were noted for `by` landed: lets reads back and
    /// ends the retry, unless a failure was noted since (then false: another `all` is due).
    fn landed(&self, tier: &CacheTier, by: ReadHold, seen: u64) -> bool {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if p.failures[(by as u8).trailing_zeros() as usize] != seen {
            return false;
        }
        tier.hold_reads(by, false);
        p.running &= !(by as u8);
        true
    }

    /// Drops from `fill` what changed since `epoch` (counted).
    pub fn filter(&self, fill: &mut Fill, epoch: u64) {
        let n = self.guard.filter(fill, epoch);
        if n > 0 {
            self.stats.writes_dropped.fetch_add(n as u64, Relaxed);
        }
    }
}

/// The first wait before an invalidation the tier could not apply is tried again (as
/// `all`); each further failure doubles it, up to [`RETRY_MAX`]. Requests skip the tier
/// meanwhile, so the wait costs origin load, not stale answers; backing off keeps a Redis
/// that answers `PING` but refuses or times out the deletes from being sent a `SCAN` of
/// every key ten times a second, and its log from flipping between down and back as often.
pub const RETRY_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between two tries of a failed invalidation: the tier's own probe backs
/// off to the same 2 s, so a Redis that comes back is used again about as soon as without.
pub const RETRY_MAX: Duration = Duration::from_secs(2);

/// After an invalidation failed on the tier (Redis down, or refusing or timing out the
/// deletes): holds requests off the Redis tier for `by` ([`crate::tier::CacheTier::hold_reads`])
/// and tries `all` until one that began after the last failure noted for `by` lands, after
/// [`RETRY_FIRST`] doubling to [`RETRY_MAX`], then lets reads back. What a failed one covers
/// may still be in Redis, or be there again (a Redis restarted with its data), and the
/// tier's probe brings it back as soon as it answers `PING`, before a retry has run. False
/// when the app went away first.
pub async fn everything_until_applied(app: &Weak<App>, by: ReadHold) -> bool {
    match app.upgrade() {
        Some(a) => a.invalidation.note_failure(&a.tier, by),
        None => return false,
    };
    retry_everything(app, by).await
}

/// [`everything_until_applied`] in a task of its own, unless one for `by` is running
/// already (it goes on until an `all` begun after this failure lands). For a caller that
/// answers at once, as `POST /v1/invalidate` does with a 503.
pub fn spawn_everything_until_applied(app: &Arc<App>, by: ReadHold) {
    if app.invalidation.note_failure(&app.tier, by) {
        return;
    }
    let weak = Arc::downgrade(app);
    tokio::spawn(async move {
        if retry_everything(&weak, by).await {
            tracing::info!(by = ?by, "the cache tier is back and was invalidated");
        }
    });
}

/// The retry loop of [`everything_until_applied`], once the failure is noted.
async fn retry_everything(app: &Weak<App>, by: ReadHold) -> bool {
    let all = Invalidation::everything();
    let mut backoff = Backoff::new(RETRY_FIRST, RETRY_MAX);
    loop {
        tokio::time::sleep(backoff.next_delay()).await;
        let Some(a) = app.upgrade() else {
            return false;
        };
        let seen = a.invalidation.failures(by);
        if invalidate(&a, &all).await.is_ok() && a.invalidation.landed(&a.tier, by, seen) {
            return true;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn item(id: &str) -> Arc<StoredItem> {
        Arc::new(StoredItem::new(
            id,
            -122.33,
            47.6,
            if id == "c" { "sold" } else { "active" },
            tilewarm::Access::Public,
            1,
            &serde_json::value::to_raw_value(&1).unwrap(),
        ))
    }

    fn fill(t: TileId, u: TileId) -> Fill {
        Fill {
            items: vec![item("a"), item("b"), item("c")],
            tiles: vec![
                (t, vec!["a".into()], 1),
                (u, vec!["b".into(), "c".into()], 1),
            ],
            ..Fill::default()
        }
    }

    /// What a call that started at an epoch may have missed, for the memory of tiles over
    /// the tile limit: an invalidation since of the tile (or coarser) or one next to it, of
    /// ids whose places are not given or classes (their tiles unknown), or a log that no
    /// longer reaches back; not one of another tile, nor ids given with their tiles.
    #[test]
    fn may_cover_since_is_conservative_about_ids_classes_and_a_short_log() {
        let t: TileId = "14/2624/5721".parse().unwrap();
        let u: TileId = "14/1/1".parse().unwrap();
        let g = WriteGuard::default();
        let e = g.epoch();
        assert!(!g.may_cover_since(e, t));
        g.record(&Invalidation {
            tiles: vec![u],
            ..Invalidation::default()
        });
        assert!(!g.may_cover_since(e, t));
        assert!(g.may_cover_since(e, u));
        g.record(&Invalidation {
            tiles: vec![t.ancestor(10).unwrap()],
            ..Invalidation::default()
        });
        assert!(g.may_cover_since(e, t));
        let e = g.epoch();
        g.record(&Invalidation {
            ids: vec!["a".into()],
            ..Invalidation::default()
        });
        assert!(g.may_cover_since(e, t));
        // Ids with the tiles they were at (the PostGIS feed): those tiles and their
        // neighbours only.
        let e = g.epoch();
        let feed = |tiles: Vec<TileId>| Invalidation {
            ids: vec!["a".into()],
            tiles,
            ..Invalidation::default()
        };
        g.record_with(&feed(vec![u]), Reach::Tiles);
        assert!(!g.may_cover_since(e, t));
        g.record_with(&feed(vec![t.offset(1, -1).unwrap()]), Reach::Tiles);
        assert!(g.may_cover_since(e, t), "a neighbour's envelope margin");
        let e = g.epoch();
        for _ in 0..=LOG_LEN {
            g.record(&Invalidation {
                tiles: vec![u],
                ..Invalidation::default()
            });
        }
        assert!(g.may_cover_since(e, t), "older than the log");
    }

    /// A Redis tier that never connects (nothing is read), for the holds.
    fn lazy_redis() -> CacheTier {
        let target = crate::redis_conn::RedisTarget::parse("redis://127.0.0.1:9/0").unwrap();
        let r = crate::tier::RedisTier::new(
            &target,
            "t:".into(),
            std::time::Duration::from_millis(100),
            false,
            Arc::default(),
        )
        .unwrap();
        CacheTier::Redis(Arc::new(r))
    }

    #[tokio::test]
    async fn a_failure_noted_while_an_all_was_out_keeps_reads_held_and_the_retry_running() {
        let (inv, tier, by) = (Invalidations::default(), lazy_redis(), ReadHold::Endpoint);
        assert!(
            !inv.note_failure(&tier, by),
            "the first failure starts a retry"
        );
        assert!(!tier.available());
        let seen = inv.failures(by);
        // Another call fails while the retry's `all` is out: that `all` may have begun
        // before its delete was recorded.
        assert!(inv.note_failure(&tier, by), "a retry is running already");
        assert!(
            !inv.landed(&tier, by, seen),
            "reads let back over the later failure"
        );
        assert!(!tier.available());
        // The next `all` began after it: reads come back, the retry ends.
        assert!(inv.landed(&tier, by, inv.failures(by)));
        assert!(tier.available());
        // A failure after that starts a retry of its own (none is left running).
        assert!(
            !inv.note_failure(&tier, by),
            "a failure after the end found a retry running"
        );
        assert!(!tier.available());
        // The holds are per source: another's landing lets none of this one's reads back.
        assert!(!inv.note_failure(&tier, ReadHold::DatabaseFeed));
        assert!(inv.landed(
            &tier,
            ReadHold::DatabaseFeed,
            inv.failures(ReadHold::DatabaseFeed)
        ));
        assert!(!tier.available());
    }

    #[test]
    fn a_fetch_writes_back_nothing_that_changed_under_it() {
        let t = TileId::from_lon_lat(-122.33, 47.6, 14).unwrap();
        // Far enough apart that they have no zoom-10 ancestor in common.
        let u = t.offset(32, 0).unwrap();
        let g = WriteGuard::default();
        let e = g.epoch();
        let mut f = fill(t, u);
        assert_eq!(g.filter(&mut f, e), 0, "nothing changed");
        g.record(&Invalidation {
            ids: vec!["a".into()],
            ..Invalidation::default()
        });
        let mut f = fill(t, u);
        assert_eq!(g.filter(&mut f, e), 2, "item a and the list of t");
        assert_eq!(f.tiles.len(), 1);
        // A fetch that started after the invalidation writes everything.
        let mut f = fill(t, u);
        assert_eq!(g.filter(&mut f, g.epoch()), 0);
        // A class covers its items and the lists that name them.
        let e = g.epoch();
        g.record(&Invalidation {
            classes: vec!["sold".into()],
            ..Invalidation::default()
        });
        let mut f = fill(t, u);
        g.filter(&mut f, e);
        let ids: Vec<_> = f.items.iter().map(|i| i.id().to_owned()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(f.tiles.len(), 1);
        assert_eq!(f.tiles[0].0, t);
        // A coarse tile covers its data tiles and the items they list.
        let e = g.epoch();
        g.record(&Invalidation {
            tiles: vec![u.ancestor(10).unwrap()],
            ..Invalidation::default()
        });
        let mut f = fill(t, u);
        g.filter(&mut f, e);
        let ids: Vec<_> = f.items.iter().map(|i| i.id().to_owned()).collect();
        assert_eq!(ids, ["a"]);
        assert_eq!(f.tiles.len(), 1);
        assert_eq!(f.tiles[0].0, t);
        // Everything.
        g.record(&Invalidation::everything());
        let mut f = fill(t, u);
        g.filter(&mut f, e);
        assert!(f.items.is_empty() && f.tiles.is_empty());
    }

    #[test]
    fn an_item_fetched_by_id_in_an_invalidated_tile_is_not_written_back() {
        let t = TileId::from_lon_lat(-122.33, 47.6, 14).unwrap();
        let g = WriteGuard::default();
        let e = g.epoch();
        g.record(&Invalidation {
            tiles: vec![t],
            ..Invalidation::default()
        });
        // Asked for by id: no list names it, its position is in t.
        let mut f = Fill {
            items: vec![item("a")],
            ..Fill::default()
        };
        assert_eq!(g.filter(&mut f, e), 1);
        assert!(f.items.is_empty());
        // Elsewhere, it stays.
        let e = g.epoch();
        g.record(&Invalidation {
            tiles: vec![t.offset(1, 0).unwrap()],
            ..Invalidation::default()
        });
        let mut f = Fill {
            items: vec![item("a")],
            ..Fill::default()
        };
        assert_eq!(g.filter(&mut f, e), 0);
    }

    /// An empty block (a coarse tile standing for its data tiles) is dropped from a
    /// write-back by an invalidation of any tile inside it or over it, or of an id it
    /// holds; one elsewhere leaves it.
    #[test]
    fn an_invalidation_inside_an_empty_block_drops_it_from_the_write_back() {
        let d = TileId::from_lon_lat(-122.33, 47.6, 14).unwrap();
        let block = d.ancestor(12).unwrap();
        let block_fill = || Fill {
            items: vec![item("a")],
            blocks: vec![(block, vec!["a".into()], 1)],
            ..Fill::default()
        };
        let covering = [
            Invalidation {
                tiles: vec![d],
                ..Invalidation::default()
            },
            Invalidation {
                tiles: vec![block.ancestor(8).unwrap()],
                ..Invalidation::default()
            },
            Invalidation {
                ids: vec!["a".into()],
                ..Invalidation::default()
            },
        ];
        for inv in covering {
            let g = WriteGuard::default();
            let e = g.epoch();
            g.record(&inv);
            let mut f = block_fill();
            assert_eq!(g.filter(&mut f, e), 2, "{inv:?}");
            assert!(f.blocks.is_empty() && f.items.is_empty(), "{inv:?}");
        }
        let g = WriteGuard::default();
        let e = g.epoch();
        g.record(&Invalidation {
            tiles: vec![block.offset(1, 0).unwrap()],
            ..Invalidation::default()
        });
        let mut f = block_fill();
        assert_eq!(g.filter(&mut f, e), 0);
        assert_eq!(f.blocks.len(), 1);
    }

    #[test]
    fn a_fetch_older_than_the_log_writes_nothing() {
        let t = TileId::from_lon_lat(-122.33, 47.6, 14).unwrap();
        let g = WriteGuard::default();
        let e = g.epoch();
        for i in 0..LOG_LEN + 1 {
            g.record(&Invalidation {
                ids: vec![format!("x{i}")],
                ..Invalidation::default()
            });
        }
        let mut f = fill(t, t.offset(0, 1).unwrap());
        g.filter(&mut f, e);
        assert!(f.items.is_empty() && f.tiles.is_empty());
    }
}
