//! Background warm-up: the production pipeline's forecaster, request filter, fetcher and
//! writer, in miniature.
//!
//! - **Forecaster** (on the request path, CPU only): the core's [`ring_around`] of the
//!   request's data tiles, cut to `--warmup-max-tiles`, is offered to a bounded queue with
//!   `try_send`. A full queue drops the job (counted in `tilewarm_warmup_dropped_total`): a
//!   request never waits for warm-up.
//! - **Quiet** (worker): a job planned while the origin asked for quiet (it answered a
//!   call, a request's or warm-up's, with 429 or 503: for its `Retry-After`, else
//!   `--retry-after-s`; or with a partial answer shedding load, `rate_limited` or
//!   `overloaded`: for `--retry-after-s`; [`crate::origin::OriginService::quiet_for_ms`])
//!   is skipped whole
//!   (`tilewarm_warmup_origin_quiet_skipped_total`).
//! - **Request filter** (worker): skips tiles found over `--max-tile-items` at `agent` (by
//!   a request or by warm-up) within the tile TTL and not invalidated since ([`OverLimit`]:
//!   warm-up asks at `agent`, so nothing of them could be cached, and each ask is a full
//!   origin read of a dense tile; `tilewarm_warmup_over_limit_skipped_total`), tiles being
//!   warmed by another job, tiles warmed lately that the tier did not hold since
//!   ([`WARM_RETRY_MS`](tilewarm::proxy::WARM_RETRY_MS): the origin failed them, or the
//!   tier did not keep them, e.g. empty lists past `--max-empty-tiles`), and tiles the
//!   cache tier already holds (a list fetched at a caller's tier below `agent` included:
//!   `crate::batch`).
//! - **Claim** (worker): before each origin call, claims its tiles in the shared tier
//!   ([`crate::tier::CacheTier::claim`], Redis `SET NX PX`) and drops those another
//!   instance claimed first (`tilewarm_warmup_claimed_elsewhere_total`): instances sharing
//!   Redis do not warm the same tile twice. A claim lasts the origin timeout (60 s when
//!   that is 0) and is not released; the written tile is what the others then see.
//! - **Fetcher** (worker): the rest in origin calls of at most `--warmup-batch-tiles` tiles,
//!   asked at the top tier like the request path, each given up after
//!   `--origin-timeout-ms` (the job ends there and releases its tiles).
//! - **Writer** (worker): the answers into the cache tier with the same TTL policy.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, Weak};

use tilewarm::access::Access;
use tilewarm::protocol::BatchRequest;
use tilewarm::proxy::WarmTries;
use tilewarm::tile::{ring_around, TileId};
use tokio::sync::mpsc;
use tracing::debug;

use crate::batch::fill_from;
use crate::invalidate::{Invalidation, Reach};
use crate::metrics::Metrics;
use crate::origin::{CallSource, OriginFailure};
use crate::single_flight::LeftOut;
use crate::tier::now_ms;
use crate::App;

/// Tiles warmed and not seen held since are not warmed again before their time: the core's
/// [`WarmTries`] (the edge proxy's rule), [`tilewarm::proxy::WARM_RETRY_MS`] doubling to
/// [`tilewarm::proxy::WARM_RETRY_MAX_MS`]. Its warming failed, or the tier did not keep it
/// (an empty list past `--max-empty-tiles`); without it every request queued the same ring
/// again, one warm-up origin call per request.
type Tries = WarmTries<TileId>;

/// Most entries [`OverLimit`] remembers per tier (past it, the tier's soonest to lapse go
/// first): one tier's dense tiles cannot push out another's (the `agent` entries
/// warm-up skips by).
pub const MAX_OVER_LIMIT_TILES: usize = 4096;

/// Data tiles found over `--max-tile-items`, by the tier they were counted at, each with
/// why it was left out ([`LeftOut`]: the count and limit, or an upstream's
/// `payload_too_large`) until its list would have expired (found + the tile TTL), or until
/// an invalidation may have brought it under the limit ([`OverLimit::forget_changed`],
/// [`may_shrink`]; a change elsewhere leaves it). At most
/// [`MAX_OVER_LIMIT_TILES`] per tier, each insert O(log n). Filled by the request path
/// (its call at `agent`, and its call again at a lower caller's tier) and by warm-up's own
/// answers (at `agent`).
/// - Warm-up skips the tiles over the limit at `agent`: it asks there, so nothing of them
///   could be cached, and the back-off of [`WarmTries`] (at most a minute) would ask
///   again many times within a TTL, each a full origin read of a dense tile.
/// - The request path leaves a tile out at once, with no origin call, for a caller at the
///   tier it was found over the limit at (`crate::batch`;
///   `tilewarm_tiles_over_limit_remembered_total`). Only at that tier: a tile over
///   the limit for a `verified` caller may be within it for a `public` one, and saying it
///   is over to the public caller would tell of items above its tier.
#[derive(Default)]
pub struct OverLimit {
    tiers: Mutex<HashMap<Access, Remembered>>,
}

/// One tier's entries: by tile, and by when they lapse (the order they are pushed out in).
#[derive(Default)]
struct Remembered {
    by_tile: HashMap<TileId, (u64, LeftOut)>,
    by_until: BTreeSet<(u64, TileId)>,
}

impl Remembered {
    fn insert(&mut self, t: TileId, until: u64, why: LeftOut) {
        if let Some((old, _)) = self.by_tile.get(&t) {
            self.by_until.remove(&(*old, t));
        } else if self.by_tile.len() >= MAX_OVER_LIMIT_TILES {
            // The soonest to lapse (any lapsed already first).
            if let Some((_, gone)) = self.by_until.pop_first() {
                self.by_tile.remove(&gone);
            }
        }
        self.by_tile.insert(t, (until, why));
        self.by_until.insert((until, t));
    }

    fn retain(&mut self, keep: impl Fn(TileId) -> bool) {
        self.by_tile.retain(|&t, _| keep(t));
        self.by_until.retain(|&(_, t)| keep(t));
    }
}

impl OverLimit {
    /// Now on the clock the holds are kept on: this process's monotonic clock
    /// ([`crate::tier::mono_ms`]), so a host clock stepping back lengthens no hold. The
    /// times are this process's own: never shared, never sent.
    pub fn now() -> u64 {
        crate::tier::mono_ms()
    }

    /// When a hold of `ttl_ms` from now lapses, on [`OverLimit::now`]'s clock.
    pub fn until(ttl_ms: u64) -> u64 {
        Self::now().saturating_add(ttl_ms)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Access, Remembered>> {
        self.tiers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tiles were found over the limit at tier `at`, each for its reason: remembered
    /// until `until_ms`.
    pub fn found(
        &self,
        at: Access,
        over: impl IntoIterator<Item = (TileId, LeftOut)>,
        until_ms: u64,
    ) {
        let mut over = over.into_iter().peekable();
        if over.peek().is_none() {
            return;
        }
        let mut tiers = self.lock();
        let tier = tiers.entry(at).or_default();
        for (t, why) in over {
            tier.insert(t, until_ms, why);
        }
    }

    /// [`found`](Self::found) for an answer to a call made when the invalidation log was at
    /// `epoch`: what an invalidation recorded since may cover is forgotten again (it may
    /// have shrunk before the answer was read; remembered after it was applied, the
    /// invalidation's [`forget`](Self::forget) would have missed it).
    pub fn found_since(
        &self,
        guard: &crate::invalidate::WriteGuard,
        epoch: u64,
        at: Access,
        over: Vec<(TileId, LeftOut)>,
        until_ms: u64,
    ) {
        let tiles: Vec<TileId> = over.iter().map(|(t, _)| *t).collect();
        self.found(at, over, until_ms);
        let stale: Vec<TileId> = tiles
            .into_iter()
            .filter(|&t| guard.may_cover_since(epoch, t))
            .collect();
        if !stale.is_empty() {
            self.forget(|t| stale.contains(&t));
        }
    }

    /// Why `t` was left out at tier `at`, if it was found over the limit there and its
    /// time is not over at `now_ms`.
    pub fn why(&self, t: TileId, at: Access, now_ms: u64) -> Option<LeftOut> {
        let tiers = self.lock();
        tiers
            .get(&at)?
            .by_tile
            .get(&t)
            .filter(|(until, _)| *until > now_ms)
            .map(|(_, why)| why.clone())
    }

    /// Whether `t` was found over the limit at tier `at` and its time is not over at
    /// `now_ms`.
    pub fn holds(&self, t: TileId, at: Access, now_ms: u64) -> bool {
        let tiers = self.lock();
        tiers
            .get(&at)
            .and_then(|r| r.by_tile.get(&t))
            .is_some_and(|(until, _)| *until > now_ms)
    }

    /// Forgets the tiles (at every tier) `covered` says an invalidation covers: they may
    /// have shrunk, so they are asked again.
    pub fn forget(&self, covered: impl Fn(TileId) -> bool) {
        let mut tiers = self.lock();
        for r in tiers.values_mut() {
            r.retain(|t| !covered(t));
        }
    }

    /// Forgets the tiles (at every tier) whose count `inv` may have changed
    /// ([`may_shrink`]), and only those: a change elsewhere leaves a dense tile told at once.
    pub fn forget_changed(&self, inv: &Invalidation, reach: Reach) {
        if anywhere(inv, reach) {
            self.forget(|_| true);
            return;
        }
        if inv.tiles.is_empty() {
            return;
        }
        let mut tiers = self.lock();
        let zooms: BTreeSet<u8> = tiers
            .values()
            .flat_map(|r| r.by_tile.keys().map(|t| t.z()))
            .collect();
        let shrunk = MayShrink::new(inv, reach, zooms);
        for r in tiers.values_mut() {
            r.retain(|t| !shrunk.test(t));
        }
    }

    /// Entries remembered at tier `at` (lapsed ones included until pushed out or forgotten).
    pub fn len(&self, at: Access) -> usize {
        self.lock().get(&at).map_or(0, |r| r.by_tile.len())
    }
}

/// Whether `inv` ([`Reach`]) may have changed every tile's count: it is `all`, names
/// classes (their items may be anywhere), or names ids whose places it does not give.
fn anywhere(inv: &Invalidation, reach: Reach) -> bool {
    inv.all || !inv.classes.is_empty() || (reach == Reach::Anywhere && !inv.ids.is_empty())
}

/// Whether `inv` ([`Reach`]) may have changed the item count of data tile `t` at some
/// tier, so that a tile found over `--max-tile-items` may have come under it: `inv` may
/// have changed every tile's ([`Reach::Anywhere`] with ids; classes; `all`), or covers
/// `t` or one of the 8 around it. The neighbours because PostGIS counts a tile's envelope
/// rows, which take in the items of its neighbours within a centimetre of its edge
/// (`crate::origin::postgis`, `MARGIN_DEG`): one of those gone may bring it under.
/// A change that moved an item only adds to the tiles at its new place: whatever count
/// shrank was at a place it was at, which [`Reach::Tiles`] names.
pub fn may_shrink(inv: &Invalidation, reach: Reach, t: TileId) -> bool {
    anywhere(inv, reach) || around(t).any(|n| inv.covers_tile(n))
}

/// `t` and the tiles around it (columns wrapping at the antimeridian, no rows past a pole).
fn around(t: TileId) -> impl Iterator<Item = TileId> {
    (-1..=1).flat_map(move |dy| (-1..=1).filter_map(move |dx| t.offset(dx, dy)))
}

/// [`may_shrink`] for many tiles at once: built once from the invalidation (its named
/// tiles at each zoom tested, those finer taken to their ancestor there, and the coarser
/// ones by zoom), each test a few set lookups.
pub struct MayShrink<'a> {
    inv: &'a Invalidation,
    anywhere: bool,
    /// Per zoom given: the named tiles at that zoom or finer, at that zoom.
    at: HashMap<u8, HashSet<TileId>>,
    /// The named tiles, and their zooms (for those coarser than a tile tested).
    named: HashSet<TileId>,
    zooms: BTreeSet<u8>,
}

impl<'a> MayShrink<'a> {
    /// For tiles at `zooms` (a tile at another is tested as [`may_shrink`] does).
    pub fn new(inv: &'a Invalidation, reach: Reach, zooms: BTreeSet<u8>) -> MayShrink<'a> {
        let anywhere = anywhere(inv, reach);
        let tiles: &[TileId] = if anywhere { &[] } else { &inv.tiles };
        let at = zooms
            .iter()
            .map(|&z| {
                let set = tiles
                    .iter()
                    .filter_map(|u| u.ancestor(z).ok())
                    .collect::<HashSet<TileId>>();
                (z, set)
            })
            .collect();
        MayShrink {
            inv,
            anywhere,
            at,
            named: tiles.iter().copied().collect(),
            zooms: tiles.iter().map(|u| u.z()).collect(),
        }
    }

    /// [`may_shrink`] of `t`.
    pub fn test(&self, t: TileId) -> bool {
        self.anywhere || around(t).any(|n| self.covers(n))
    }

    /// Whether a named tile covers `n` (contains it, or lies in it).
    fn covers(&self, n: TileId) -> bool {
        let Some(at) = self.at.get(&n.z()) else {
            return self.inv.covers_tile(n);
        };
        at.contains(&n)
            || self
                .zooms
                .range(..n.z())
                .any(|&z| n.ancestor(z).is_ok_and(|a| self.named.contains(&a)))
    }
}

/// One job: data tiles to warm.
#[derive(Debug)]
pub struct WarmJob {
    pub tiles: Vec<TileId>,
}

/// The request path's end of the queue.
pub struct Warmup {
    tx: Option<mpsc::Sender<WarmJob>>,
    ring: u32,
    max_tiles: usize,
    metrics: Arc<Metrics>,
    /// Tiles found over `--max-tile-items` at `agent`, which warm-up skips.
    pub over_limit: OverLimit,
}

impl Warmup {
    /// The queue and its receiving end (for [`run_workers`]); `ring == 0` turns warm-up off.
    pub fn new(
        ring: u32,
        capacity: usize,
        max_tiles: usize,
        metrics: Arc<Metrics>,
    ) -> (Warmup, Option<mpsc::Receiver<WarmJob>>) {
        if ring == 0 {
            let w = Warmup {
                tx: None,
                ring,
                max_tiles,
                metrics,
                over_limit: OverLimit::default(),
            };
            return (w, None);
        }
        let (tx, rx) = mpsc::channel(capacity);
        let w = Warmup {
            tx: Some(tx),
            ring,
            max_tiles,
            metrics,
            over_limit: OverLimit::default(),
        };
        (w, Some(rx))
    }

    /// Plans the neighbour ring of `data_tiles` and offers it to the queue; never waits.
    pub fn plan(&self, data_tiles: &[TileId]) {
        let Some(tx) = &self.tx else { return };
        if data_tiles.is_empty() {
            return;
        }
        let Ok(mut tiles) = ring_around(data_tiles, self.ring) else {
            return;
        };
        if tiles.is_empty() {
            return;
        }
        tiles.truncate(self.max_tiles);
        match tx.try_send(WarmJob { tiles }) {
            Ok(()) => {
                self.metrics.warmup_enqueued.fetch_add(1, Relaxed);
            }
            Err(_) => {
                self.metrics.warmup_dropped.fetch_add(1, Relaxed);
            }
        }
    }

    /// Jobs waiting.
    pub fn depth(&self) -> usize {
        self.tx
            .as_ref()
            .map(|tx| tx.max_capacity() - tx.capacity())
            .unwrap_or(0)
    }

    /// Queue capacity (0 when warm-up is off).
    pub fn capacity(&self) -> usize {
        self.tx.as_ref().map(|tx| tx.max_capacity()).unwrap_or(0)
    }
}

/// Spawns `n` workers draining `rx`. They hold the app weakly and stop when it is gone or
/// the queue closes.
pub fn run_workers(app: Weak<App>, rx: mpsc::Receiver<WarmJob>, n: usize) {
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let in_flight: Arc<Mutex<HashSet<TileId>>> = Arc::default();
    let tries: Arc<Mutex<Tries>> = Arc::default();
    // Who holds a claim (informational: a claim is never compared, only held or not).
    let owner: Arc<str> = format!("pid{}@{}", std::process::id(), now_ms()).into();
    for _ in 0..n {
        let rx = Arc::clone(&rx);
        let app = app.clone();
        let in_flight = Arc::clone(&in_flight);
        let tries = Arc::clone(&tries);
        let owner = Arc::clone(&owner);
        tokio::spawn(async move {
            loop {
                let job = { rx.lock().await.recv().await };
                let Some(job) = job else { return };
                let Some(app) = app.upgrade() else { return };
                warm(&app, job, &in_flight, &tries, &owner).await;
            }
        });
    }
}

async fn warm(
    app: &App,
    job: WarmJob,
    in_flight: &Mutex<HashSet<TileId>>,
    tries: &Mutex<Tries>,
    owner: &str,
) {
    let m = &app.metrics;
    if !app.tier.available() {
        m.warmup_errors.fetch_add(1, Relaxed);
        return;
    }
    // Not while the origin asked for quiet (a 429 or 503 with its Retry-After).
    // In-process waits, on the monotonic clock (`tier::mono_ms`): the over-limit holds,
    // the back-off of `WarmTries`.
    let now = OverLimit::now();
    if app.origin.quiet_for_ms() > 0 {
        m.warmup_origin_quiet_skipped
            .fetch_add(job.tiles.len() as u64, Relaxed);
        return;
    }
    // Filter: not over the tile limit, not being warmed by another job, not warmed lately,
    // not already cached.
    let over = &app.warmup.over_limit;
    let (over_limit, job): (Vec<TileId>, Vec<TileId>) = job
        .tiles
        .into_iter()
        .partition(|&t| over.holds(t, Access::Agent, now));
    m.warmup_over_limit_skipped
        .fetch_add(over_limit.len() as u64, Relaxed);
    let claimed: Vec<TileId> = {
        let tries = tries.lock().unwrap_or_else(|p| p.into_inner());
        let mut set = in_flight.lock().unwrap_or_else(|p| p.into_inner());
        job.into_iter()
            .filter(|t| tries.due(t, now) && set.insert(*t))
            .collect()
    };
    let release = |tiles: &[TileId]| {
        let mut set = in_flight.lock().unwrap_or_else(|p| p.into_inner());
        for t in tiles {
            set.remove(t);
        }
    };
    let held = match app.tier.has_tiles(&claimed).await {
        Ok(h) => h,
        Err(_) => {
            m.warmup_errors.fetch_add(1, Relaxed);
            release(&claimed);
            return;
        }
    };
    let todo: Vec<TileId> = claimed
        .iter()
        .zip(&held)
        .filter(|(_, &h)| !h)
        .map(|(&t, _)| t)
        .collect();
    m.warmup_skipped_tiles
        .fetch_add((claimed.len() - todo.len()) as u64, Relaxed);
    {
        let mut tries = tries.lock().unwrap_or_else(|p| p.into_inner());
        for (&t, &h) in claimed.iter().zip(&held) {
            if h {
                tries.forget(&t);
            } else {
                tries.tried(t, now);
            }
        }
    }
    // Claim, fetch and write.
    let claim_ms = match app.config.origin_timeout_ms {
        0 => 60_000,
        ms => ms,
    };
    for chunk in todo.chunks(app.config.warmup_batch_tiles) {
        let won = match app.tier.claim(chunk, owner, claim_ms).await {
            Ok(w) => w,
            Err(_) => {
                m.warmup_errors.fetch_add(1, Relaxed);
                break;
            }
        };
        let chunk: Vec<TileId> = chunk
            .iter()
            .zip(&won)
            .filter(|(_, &w)| w)
            .map(|(&t, _)| t)
            .collect();
        m.warmup_claimed_elsewhere
            .fetch_add((won.len() - chunk.len()) as u64, Relaxed);
        if chunk.is_empty() {
            continue;
        }
        let request = BatchRequest {
            tiles: chunk.clone(),
            ids: Vec::new(),
            access: Access::Agent,
        };
        let timeout_ms = app.config.origin_timeout_ms;
        // Read before the origin call: what it answers is stamped with them, so an
        // invalidation of a class made while it is out leaves the write-back stale.
        let gens = match app.tier.generations().await {
            Ok(g) => g,
            Err(_) => {
                m.warmup_errors.fetch_add(1, Relaxed);
                break;
            }
        };
        let epoch = app.invalidation.guard.epoch();
        // Tiles over --max-tile-items, and those an upstream's partial answer left out, are
        // not in the answer (logged and counted by the origin): not written, so not counted
        // in `warmup_tiles`.
        let (response, left_out, too_large) = match app
            .origin
            .fetch_within(&request, CallSource::Warmup, timeout_ms, None)
            .await
        {
            Ok(a) => {
                let told = a.unanswered.as_ref().map_or(0, |u| u.tiles.len());
                // Over the limit at `agent` (this call's tier; an upstream's partial answer
                // says so with `payload_too_large`): skipped for a tile TTL.
                let mut over: Vec<(TileId, LeftOut)> = a
                    .over_limit
                    .iter()
                    .map(|o| (o.tile, LeftOut::OverLimit(*o)))
                    .collect();
                if let Some(u) = a.unanswered.as_ref() {
                    if u.code == tilewarm::protocol::ErrorCode::PayloadTooLarge {
                        over.extend(u.tiles.iter().map(|&t| (t, LeftOut::told(u, t))));
                    }
                }
                let until = OverLimit::until(app.tile_ttl_ms);
                let guard = &app.invalidation.guard;
                let over_limit = &app.warmup.over_limit;
                over_limit.found_since(guard, epoch, Access::Agent, over, until);
                (a.response, a.over_limit.len() + told, a.too_large)
            }
            Err(OriginFailure::Timeout { .. }) => {
                // A stalled origin must not hold this worker, nor the claimed tiles (which
                // later jobs would skip), for as long as it stalls.
                m.warmup_timeouts.fetch_add(1, Relaxed);
                break;
            }
            Err(_) => {
                // A failing origin: nothing to write; the job ends and frees its tiles.
                m.warmup_errors.fetch_add(1, Relaxed);
                break;
            }
        };
        let (mut fill, _) = fill_from(response, &app.cache_config, app.tile_ttl_ms, now_ms());
        fill.gens = gens;
        // An item left out for its size is not served on from a copy cached while smaller.
        let _ = crate::invalidate::forget_too_large(app, &too_large).await;
        match crate::invalidate::write_back(app, &mut fill, epoch).await {
            Ok(()) => {
                // What the tier was given (past the write guard and the empty-tile cap)
                // is held: its tries start over, so a later failure waits the first delay.
                let mut tries = tries.lock().unwrap_or_else(|p| p.into_inner());
                for (t, _, _) in &fill.tiles {
                    tries.forget(t);
                }
                drop(tries);
                let written = chunk.len().saturating_sub(left_out);
                m.warmup_tiles.fetch_add(written as u64, Relaxed);
                debug!(tiles = chunk.len(), items = fill.items.len(), "warmed");
            }
            Err(_) => {
                m.warmup_errors.fetch_add(1, Relaxed);
                break;
            }
        }
    }
    release(&claimed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::origin::{ItemCount, TileOverLimit};

    const A: Access = Access::Agent;

    fn why(tile: TileId) -> LeftOut {
        LeftOut::OverLimit(TileOverLimit {
            tile,
            items: ItemCount::Exact(11),
            limit: 10,
            at: A,
        })
    }

    /// A hold lasts its TTL in time that passed, whatever the host's wall clock does: the
    /// request path and warm-up hold tiles from [`OverLimit::until`] and read them at
    /// [`OverLimit::now`], on the process's monotonic clock. On the wall clock, a step back
    /// of an hour made each hold (a tile TTL) last an hour more.
    #[test]
    fn over_limit_holds_are_not_lengthened_by_the_wall_clock_stepping_back() {
        let over = OverLimit::default();
        let t: TileId = "14/2624/5721".parse().unwrap();
        over.found(A, [(t, why(t))], OverLimit::until(20));
        crate::tier::test_wall::step_back(3_600_000);
        // Sleeping past the hold's end (at least 30 ms pass): it has lapsed.
        std::thread::sleep(std::time::Duration::from_millis(30));
        assert!(!over.holds(t, A, OverLimit::now()));
        assert!(over.why(t, A, OverLimit::now()).is_none());
    }

    /// A tile found over the limit is skipped until its time, then no more; the memory
    /// stays bounded, dropping the soonest to lapse first.
    #[test]
    fn over_limit_tiles_lapse_and_stay_bounded() {
        let far = now_ms() + 3_600_000;
        let over = OverLimit::default();
        let t: TileId = "14/2624/5721".parse().unwrap();
        over.found(A, [(t, why(t))], far);
        assert!(over.holds(t, A, far - 1));
        assert!(!over.holds(t, A, far));
        let many: Vec<TileId> = (0..MAX_OVER_LIMIT_TILES as u32 + 10)
            .map(|x| TileId::new(14, x, 7).unwrap())
            .collect();
        over.found(A, many.iter().map(|&t| (t, why(t))), far + 1);
        assert_eq!(over.len(A), MAX_OVER_LIMIT_TILES);
        assert!(
            !over.holds(t, A, far - 1),
            "the soonest to lapse went first"
        );
        assert!(over.holds(*many.last().unwrap(), A, far));
    }

    /// Each tier has its own bound: public tiles found over the limit by the thousand do
    /// not push out the `agent` entries warm-up skips by; within a tier the soonest to
    /// lapse goes first, a lapsed one before any.
    #[test]
    fn each_tier_is_bounded_on_its_own() {
        let far = now_ms() + 3_600_000;
        let over = OverLimit::default();
        let warm: Vec<TileId> = (0..10).map(|x| TileId::new(14, x, 1).unwrap()).collect();
        over.found(A, warm.iter().map(|&t| (t, why(t))), far);
        let public: Vec<TileId> = (0..2 * MAX_OVER_LIMIT_TILES as u32)
            .map(|x| TileId::new(14, x, 2).unwrap())
            .collect();
        // Lapsing later than the agent entries: a bound shared by the tiers would push
        // the agent entries out first.
        for &t in &public {
            over.found(Access::Public, [(t, why(t))], far + 1);
        }
        assert_eq!(over.len(Access::Public), MAX_OVER_LIMIT_TILES);
        assert!(
            warm.iter().all(|&t| over.holds(t, A, far - 1)),
            "agent kept"
        );
        assert!(over.holds(*public.last().unwrap(), Access::Public, far));
        // Lapsed entries go before live ones, whatever their tile.
        let lapsed = TileId::new(14, 0, 3).unwrap();
        let full = OverLimit::default();
        full.found(A, [(lapsed, why(lapsed))], 1);
        let live: Vec<TileId> = (0..MAX_OVER_LIMIT_TILES as u32 - 1)
            .map(|x| TileId::new(14, x, 4).unwrap())
            .collect();
        full.found(A, live.iter().map(|&t| (t, why(t))), far);
        let t = TileId::new(14, 9, 9).unwrap();
        full.found(A, [(t, why(t))], far);
        assert_eq!(full.len(A), MAX_OVER_LIMIT_TILES);
        assert!(live.iter().all(|&t| full.holds(t, A, far - 1)));
        assert!(full.holds(t, A, far - 1));
        // Found again: its time is renewed, not counted twice.
        full.found(A, [(t, why(t))], far + 5);
        assert_eq!(full.len(A), MAX_OVER_LIMIT_TILES);
        assert!(full.holds(t, A, far + 4));
    }

    /// A change whose tiles say where its ids were (the PostGIS feed's, [`Reach::Tiles`])
    /// forgets the tiles it names and those around them, at every tier, and nothing else;
    /// one whose ids may be anywhere (an admin's, an upstream's), or naming classes, or
    /// `all`, forgets everything. The bulk test agrees with [`may_shrink`] tile by tile.
    #[test]
    fn only_what_a_change_may_have_shrunk_is_forgotten() {
        let far = now_ms() + 3_600_000;
        let t: TileId = "14/2624/5721".parse().unwrap();
        let edge = TileId::new(14, 0, 5721).unwrap();
        let tiles: Vec<TileId> = [
            t,
            t.offset(1, 1).unwrap(),
            t.offset(2, 0).unwrap(),
            t.offset(-5, 7).unwrap(),
            edge,
            edge.offset(-1, 0).unwrap(),
            edge.offset(-2, 0).unwrap(),
        ]
        .to_vec();
        let fill = || {
            let over = OverLimit::default();
            for at in [A, Access::Public] {
                over.found(at, tiles.iter().map(|&t| (t, why(t))), far);
            }
            over
        };
        let kept = |over: &OverLimit| -> Vec<TileId> {
            tiles
                .iter()
                .copied()
                .filter(|&t| over.holds(t, A, 0))
                .collect()
        };
        let at = |tiles: Vec<TileId>, ids: &[&str]| Invalidation {
            ids: ids.iter().map(|i| i.to_string()).collect(),
            tiles,
            ..Invalidation::default()
        };
        let cases = [
            // The feed: an item of t changed; t and the tiles around it.
            (at(vec![t], &["a"]), Reach::Tiles),
            // A finer tile stands for its data tile; the last column is next to the first.
            (
                at(
                    vec![edge.offset(-1, 0).unwrap().descendants(16).unwrap()[3]],
                    &["a"],
                ),
                Reach::Tiles,
            ),
            // A coarse tile: every data tile in it and around its edge.
            (at(vec![t.ancestor(12).unwrap()], &[]), Reach::Anywhere),
            // Tiles alone, from anyone.
            (at(vec![t.offset(-5, 7).unwrap()], &[]), Reach::Anywhere),
            // Ids whose places are not given: everything.
            (at(vec![t], &["a"]), Reach::Anywhere),
            (at(vec![], &["a"]), Reach::Anywhere),
            // The items too large, recorded with no tile: nothing.
            (at(vec![], &["a"]), Reach::Tiles),
            (
                Invalidation {
                    classes: vec!["sold".into()],
                    ..Invalidation::default()
                },
                Reach::Tiles,
            ),
            (Invalidation::everything(), Reach::Tiles),
        ];
        for (inv, reach) in &cases {
            let over = fill();
            over.forget_changed(inv, *reach);
            let expected: Vec<TileId> = tiles
                .iter()
                .copied()
                .filter(|&t| !may_shrink(inv, *reach, t))
                .collect();
            assert_eq!(kept(&over), expected, "{inv:?} {reach:?}");
            let public: Vec<TileId> = tiles
                .iter()
                .copied()
                .filter(|&t| over.holds(t, Access::Public, 0))
                .collect();
            assert_eq!(public, expected, "every tier");
        }
        let kept_after = |i: usize| {
            let over = fill();
            over.forget_changed(&cases[i].0, cases[i].1);
            kept(&over)
        };
        assert_eq!(
            kept_after(0),
            [
                t.offset(2, 0).unwrap(),
                t.offset(-5, 7).unwrap(),
                edge,
                edge.offset(-1, 0).unwrap(),
                edge.offset(-2, 0).unwrap()
            ]
        );
        assert_eq!(
            kept_after(1),
            [
                t,
                t.offset(1, 1).unwrap(),
                t.offset(2, 0).unwrap(),
                t.offset(-5, 7).unwrap()
            ],
            "wrapped"
        );
        assert_eq!(
            kept_after(2),
            [
                t.offset(-5, 7).unwrap(),
                edge,
                edge.offset(-1, 0).unwrap(),
                edge.offset(-2, 0).unwrap()
            ]
        );
        assert_eq!(kept_after(3).len(), tiles.len() - 1);
        assert!(kept_after(4).is_empty() && kept_after(5).is_empty());
        assert_eq!(kept_after(6), tiles);
        assert!(kept_after(7).is_empty() && kept_after(8).is_empty());
    }

    /// What is remembered for one tier says nothing of another's (a tile over the limit
    /// for `verified` may be within it for `public`), and an invalidation covering a tile
    /// forgets it at every tier.
    #[test]
    fn over_limit_tiles_are_per_tier_and_forgotten_when_invalidated() {
        let far = now_ms() + 3_600_000;
        let over = OverLimit::default();
        let (t, u): (TileId, TileId) = ("14/2624/5721".parse().unwrap(), "14/1/1".parse().unwrap());
        over.found(Access::Verified, [(t, why(t)), (u, why(u))], far);
        assert!(over.why(t, Access::Verified, 0).is_some());
        for other in [Access::Public, Access::Registered, A] {
            assert!(over.why(t, other, 0).is_none(), "{other}");
        }
        over.found(A, [(t, why(t))], far);
        over.forget(|x| x == t);
        assert!(!over.holds(t, A, 0) && !over.holds(t, Access::Verified, 0));
        assert!(over.holds(u, Access::Verified, 0));
    }
}
