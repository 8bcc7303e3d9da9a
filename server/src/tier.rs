//! The cache tier in front of the origin: in-process (the core [`ItemCache`]) or Redis.
//!
//! Both hold the same two things, as fetched at the top tier (`agent`) so one copy serves
//! every caller (the request path filters per caller):
//! - **items**, each with the Unix time at which it stops being fresh (`exp`, from the
//!   class TTL policy: `active` 300 s, `off_market` 4 h, others 300 s by default);
//! - **tile lists**: the ids of every item in a data-zoom tile, with their own `exp`; or,
//!   for a tile holding more than `--max-tile-items` at `agent`, the list fetched at a
//!   caller's tier below it, recorded with that tier ([`TileHit::fetched_at`]): a hit for
//!   callers at that tier or below only (`crate::batch`).
//!
//! A tile is a hit only when its list is fresh *and* every listed item is held fresh;
//! anything less is a miss and the whole tile is refetched.
//!
//! Items are held as the JSON text they are served as ([`crate::stored`]: the storage format
//! and its Redis keys, in one place). Redis keys (see `docs/server.md`): `<prefix>v4:i:<id>`
//! → item, `SET … EX <class ttl>`; `<prefix>v4:t:<z>/<x>/<y>` → the tile's items themselves,
//! `SET … EX` until its list's expiry (not its items': they are of every tier); `<prefix>v4:e:<z>/<x>/<y>`
//! → an empty block standing for every data tile under it (`crate::empty_tiles`), valued
//! as a tile, read for each data tile whose own key is absent; `<prefix>v4:g` → the
//! class generations (a hash, no expiry); warm-up claims `<prefix>w:<z>/<x>/<y>` → owner,
//! `SET … NX PX`. A read is one `MGET` of the tile keys and the requested ids' item keys,
//! decoded without parsing JSON, with the tile keys' `PTTL`s and the class generations
//! (`HGETALL`) in the same pipeline (a hit's answered `ttl` never outlives its key; an item
//! whose class was invalidated since it was fetched is a miss); writes are one pipeline. On a
//! Redis Cluster ([`crate::redis_conn`]) the same `MGET` is split by slot and sent to the
//! masters concurrently, and writes are concurrent commands.
//!
//! Because a tile's value holds copies of its items, invalidating an item must find the
//! tiles holding it: by id, the item key's stored position names its data tile
//! (`RedisTier::invalidate`); a write that moves an item to another data tile reads the
//! value it replaced (`SET … GET`, same round trip) and unlinks the old tile's value, so
//! that tile is never one the item key does not name (`RedisTier::write`). A class is
//! invalidated without finding anything: its generation is bumped (`BUMP_SCRIPT`), one
//! command whatever the tier holds, and every value holding an item stamped with an older
//! generation reads as a miss from then on
//! ([`Generations`]); each item is stamped with the generation read *before* its origin
//! call ([`Fill::gens`]), so a write-back racing the bump is born stale. `all` has a
//! generation too (`ALL_BUMP_SCRIPT`), so a key its `SCAN` does not reach (a Redis Cluster
//! moving slots while it runs) is stale anyway.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU8};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tilewarm::access::Access;
use tilewarm::cache::{CacheConfig, ItemCache, ItemMeta, Priority, TileFreshness};
use tilewarm::clock::Clock;
use tilewarm::tile::TileId;
use tracing::{debug, info, warn};

use crate::empty_tiles::MAX_BLOCK_LEVELS;
use crate::metrics::Metrics;
use crate::owner::{Fingerprint, Owner};
use crate::redis_conn::{ConnOptions, ReadFrom, RedisConn, RedisTarget};
use crate::stored::{decode_tile, encode_tile, Keys, ALL_FIELD};
pub use crate::stored::{Generations, StoredItem};

/// `--data-zoom`'s default: the zoom of the data tiles the tier keys lists by.
pub const DEFAULT_DATA_ZOOM: u8 = 14;

/// Milliseconds since the Unix epoch (shared by instances, so Redis expiries agree).
pub fn now_ms() -> u64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    #[cfg(test)]
    let ms = ms.saturating_sub(test_wall::BACK_MS.with(std::cell::Cell::get));
    ms
}

/// Milliseconds on this process's monotonic clock (`Instant`, counted from its first
/// read): for the waits only this process keeps, which a host clock stepping back must not
/// lengthen (ARCHITECTURE.md "Time"): a data tile held as over `--max-tile-items`
/// ([`crate::warmup::OverLimit`]), warm-up's back-off ([`tilewarm::proxy::WarmTries`]), the
/// origin's quiet time after a 429 or 503
/// ([`crate::origin::OriginService::quiet_for_ms`]). `Instant` rather than a `Clock` over
/// the wall clock: only a duration within this process matters, `Instant` never goes back
/// (not even by the gap a `Clock` cannot see), and it may be read by many tasks at once (a
/// `Clock` is read by one owner at a time). Never on the wire nor shared between
/// instances: those times stay on [`now_ms`].
pub fn mono_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

/// Tests only: how far this thread's wall clock ([`now_ms`]) has stepped back, so a test
/// can show a wait is not lengthened by it.
#[cfg(test)]
pub mod test_wall {
    thread_local! {
        pub static BACK_MS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }
    /// Steps this thread's wall clock back by `ms` (in all).
    pub fn step_back(ms: u64) {
        BACK_MS.with(|b| b.set(b.get() + ms));
    }
}

/// Whole seconds left until an expiry, at least 1: the protocol's rule, shared with the
/// edge proxy.
pub use tilewarm::protocol::ttl_left_s;

/// A data tile found in the tier: its items (all of them, every tier its list was fetched
/// at) in list order. Held by value, not one `Arc` each: an item is cheap to clone (its text
/// is shared), and a Redis tile hit decodes about a hundred of them, so an allocation per
/// item would cost.
#[derive(Debug)]
pub struct TileHit {
    pub items: Vec<StoredItem>,
    /// Unix ms at which the list stops being fresh.
    pub exp: u64,
    /// The tier the list was fetched at: `agent` (every item), or a caller's tier below it
    /// when the tile holds more than `--max-tile-items` at `agent` (`crate::batch`). It is
    /// the whole tile for callers at this tier or below only.
    pub fetched_at: Access,
}

/// What a read found.
#[derive(Debug, Default)]
pub struct TierRead {
    /// Per requested data tile.
    pub tiles: Vec<Option<TileHit>>,
    /// Per requested id.
    pub ids: Vec<Option<Arc<StoredItem>>>,
    /// The class generations read with them (Redis; none in-process): what an origin call
    /// made after this read stamps the items it writes back with ([`Fill::gens`]).
    pub gens: Generations,
}

/// What to write: items, then the lists of data tiles (ids, exp).
#[derive(Debug)]
pub struct Fill {
    pub items: Vec<Arc<StoredItem>>,
    pub tiles: Vec<(TileId, Vec<String>, u64)>,
    /// Empty blocks (`crate::empty_tiles`): tiles coarser than the data zoom standing for
    /// every data tile under them, each of which the origin listed empty to `public`, with
    /// the ids those lists name (of items above `public`) and its expiry. Made from `tiles`
    /// by [`crate::empty_tiles::EmptyTiles::limit`] for the Redis tier only (one key each);
    /// the in-process tier does not store them.
    pub blocks: Vec<(TileId, Vec<String>, u64)>,
    /// The tier the lists were fetched at (default `agent`, the tier the server asks at):
    /// a list fetched below it is read back as such ([`TileHit::fetched_at`]), never as
    /// the whole tile for a caller above it.
    pub fetched_at: Access,
    /// The class generations read *before* the origin call that answered these items
    /// (a tier read's [`TierRead::gens`], or [`CacheTier::generations`]): the Redis tier
    /// stamps each item with its class's, so that an invalidation of the class made while
    /// the call was out leaves the write-back stale. Older generations than the current
    /// ones (none at all, the default, included) only make more of it stale: never wrong.
    pub gens: Generations,
}

impl Default for Fill {
    fn default() -> Fill {
        Fill {
            items: Vec::new(),
            tiles: Vec::new(),
            blocks: Vec::new(),
            fetched_at: Access::Agent,
            gens: Generations::default(),
        }
    }
}

/// [`PrefixOwner`]s as [`RedisTier`] holds them.
const OWNER_UNCHECKED: u8 = 0;
const OWNER_THIS: u8 = 1;
const OWNER_OTHER: u8 = 2;

/// The tier could not be used; the request is answered from the origin.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cache tier unavailable: {0}")]
pub struct TierError(pub String);

/// Who holds requests off the Redis tier ([`CacheTier::hold_reads`]); each holds on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ReadHold {
    /// The change stream's reader ([`crate::stream`]): another instance's invalidation.
    ChangeStream = 1,
    /// The PostGIS change feed ([`crate::origin::changes`]): a database change.
    DatabaseFeed = 2,
    /// `POST /v1/invalidate` ([`crate::http`]): a call whose delete failed (answered 503).
    Endpoint = 4,
    /// The upstream's change feed ([`crate::origin::upstream_changes`]): an invalidation
    /// made on the upstream tilewarm-server.
    UpstreamFeed = 8,
    /// A write-back ([`crate::invalidate::write_back`]) whose removal of what an
    /// invalidation recorded while its write was in flight failed: the old value it wrote
    /// may be in Redis.
    WriteBack = 16,
}

impl ReadHold {
    /// Its name in `/metrics` and `/healthz`.
    pub fn name(self) -> &'static str {
        match self {
            ReadHold::ChangeStream => "change_stream",
            ReadHold::DatabaseFeed => "database_feed",
            ReadHold::Endpoint => "invalidate_endpoint",
            ReadHold::UpstreamFeed => "upstream_feed",
            ReadHold::WriteBack => "write_back",
        }
    }
}

/// The cache tier.
pub enum CacheTier {
    Local(Box<LocalTier>),
    Redis(Arc<RedisTier>),
}

impl CacheTier {
    /// `local` or `redis`, the metrics label.
    pub fn name(&self) -> &'static str {
        match self {
            CacheTier::Local(_) => "local",
            CacheTier::Redis(_) => "redis",
        }
    }

    /// False while Redis is marked down or its reads are held back ([`Self::hold_reads`]):
    /// requests then skip the tier.
    pub fn available(&self) -> bool {
        match self {
            CacheTier::Local(_) => true,
            CacheTier::Redis(r) => {
                !r.degraded.load(Relaxed) && r.held.load(Relaxed) == 0 && r.owned()
            }
        }
    }

    /// Holds requests off the tier (`true`) while invalidations that `by` failed to apply
    /// wait to be applied again, and lets them back (`false`) once they are: the probe
    /// brings a tier that was marked down back within its back-off (a Redis restarted with
    /// its data answers `PING` before the retried delete has run), and until those deletes
    /// land it could serve what they cover. Each [`ReadHold`] holds on its own: reads come
    /// back when no one holds them. The invalidations themselves still reach Redis. The
    /// in-process tier never fails one.
    pub fn hold_reads(&self, by: ReadHold, held: bool) {
        if let CacheTier::Redis(r) = self {
            let bit = by as u8;
            let before = if held {
                r.held.fetch_or(bit, Relaxed)
            } else {
                r.held.fetch_and(!bit, Relaxed)
            };
            if (before & bit != 0) != held {
                info!(
                    held,
                    by = ?by,
                    "redis reads held back while failed invalidations wait"
                );
            }
        }
    }

    /// Looks up data tiles and ids.
    pub async fn read(&self, tiles: &[TileId], ids: &[String]) -> Result<TierRead, TierError> {
        match self {
            CacheTier::Local(l) => Ok(l.read(tiles, ids, now_ms())),
            CacheTier::Redis(r) => r.guard(r.read(tiles, ids, now_ms())).await,
        }
    }

    /// Writes items and tile lists.
    pub async fn write(&self, fill: &Fill) -> Result<(), TierError> {
        if fill.items.is_empty() && fill.tiles.is_empty() && fill.blocks.is_empty() {
            return Ok(());
        }
        match self {
            CacheTier::Local(l) => {
                l.write(fill, now_ms());
                Ok(())
            }
            CacheTier::Redis(r) => r.guard(r.write(fill, now_ms())).await,
        }
    }

    /// The class generations now, to stamp what an origin call about to be made answers
    /// ([`Fill::gens`]): for a caller that did not read the tier just before (warm-up).
    /// None in-process.
    pub async fn generations(&self) -> Result<Generations, TierError> {
        match self {
            CacheTier::Local(_) => Ok(Generations::default()),
            CacheTier::Redis(r) => r.guard(r.generations()).await,
        }
    }

    /// Which of these data tiles the tier holds (fresh list, fetched at `agent` or at a
    /// caller's tier below it; for Redis, the list key exists, which it does until the list expires even when an item it holds expired
    /// sooner or its class was invalidated: a request refetches such a tile, warm-up does
    /// not). Used by warm-up to skip what is already there.
    pub async fn has_tiles(&self, tiles: &[TileId]) -> Result<Vec<bool>, TierError> {
        match self {
            CacheTier::Local(l) => Ok(l.has_tiles(tiles, now_ms())),
            CacheTier::Redis(r) => r.guard(r.has_tiles(tiles)).await,
        }
    }

    /// Claims data tiles for warm-up, so that several instances sharing the tier do not
    /// warm the same tile twice: per tile, whether this caller got it. In-process every
    /// claim succeeds (the instance's own workers already share a set of tiles in flight);
    /// in Redis a claim is `SET <prefix>w:<z/x/y> <owner> NX PX <ttl_ms>`, held until it
    /// expires (not released: once the tile is written, the tile key is what others see).
    pub async fn claim(
        &self,
        tiles: &[TileId],
        owner: &str,
        ttl_ms: u64,
    ) -> Result<Vec<bool>, TierError> {
        match self {
            CacheTier::Local(_) => Ok(vec![true; tiles.len()]),
            CacheTier::Redis(r) => r.guard(r.claim(tiles, owner, ttl_ms)).await,
        }
    }

    /// Removes what `inv` covers (see [`crate::invalidate`]). `data_zoom` maps tiles onto
    /// the data tiles the lists are keyed by.
    pub async fn invalidate(
        &self,
        inv: &crate::invalidate::Invalidation,
        data_zoom: u8,
    ) -> Result<(), TierError> {
        match self {
            CacheTier::Local(l) => {
                l.invalidate(inv);
                Ok(())
            }
            CacheTier::Redis(r) => {
                match r.prefix_owner() {
                    // Nothing under the prefix is this deployment's: nothing to remove, and
                    // the other deployment's keys are not this one's to delete.
                    PrefixOwner::Other => return Ok(()),
                    // Not known yet whose keys these are (Redis was down since the start):
                    // failed, so the caller holds reads and retries, as with Redis down.
                    PrefixOwner::Unchecked => {
                        return Err(TierError(
                            "the owner of the redis prefix is not checked yet".into(),
                        ))
                    }
                    PrefixOwner::This => {}
                }
                // Deleting many keys (or scanning for `all`) may take longer than one
                // read; it gets its own, longer, limit.
                let limit = r.timeout.max(Duration::from_secs(5));
                match tokio::time::timeout(limit, r.invalidate(inv, data_zoom)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(r.mark_down(e.to_string())),
                    Err(_) => Err(r.mark_down(format!(
                        "invalidation did not finish within {} ms",
                        limit.as_millis()
                    ))),
                }
            }
        }
    }

    /// Which of `ids` the tier holds an item for (fresh or not; in Redis, the item key
    /// exists), read from the masters.
    pub async fn held_items(&self, ids: &[String]) -> Result<Vec<String>, TierError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            CacheTier::Local(l) => {
                let cache = l.lock();
                Ok(ids
                    .iter()
                    .filter(|id| cache.tile_of(id).is_some())
                    .cloned()
                    .collect())
            }
            CacheTier::Redis(r) => {
                let keys: Vec<String> = ids.iter().map(|id| r.item_key(id)).collect();
                let values = r.guard(r.mget_masters(&keys)).await?;
                Ok(ids
                    .iter()
                    .zip(values)
                    .filter(|(_, v)| v.is_some())
                    .map(|(id, _)| id.clone())
                    .collect())
            }
        }
    }

    /// Drops items an origin's answer named as over `--max-item-data-bytes` (cached while
    /// smaller, they would be served until their TTL while the origin says they are too
    /// large). In-process, the items are removed and their ids taken out of every list (the
    /// lists stay fresh: the origin lists them no more); in Redis, the item keys are
    /// unlinked with the data tiles their stored positions name (whose values hold copies).
    pub async fn forget_items(&self, ids: &[String], data_zoom: u8) -> Result<(), TierError> {
        if ids.is_empty() {
            return Ok(());
        }
        match self {
            CacheTier::Local(l) => {
                let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                l.lock().forget_ids(&ids);
                Ok(())
            }
            CacheTier::Redis(r) => {
                let keys: Vec<String> = ids.iter().map(|id| r.item_key(id)).collect();
                r.guard(r.unlink_items_and_their_tiles(&keys, data_zoom))
                    .await
            }
        }
    }

    /// Items held by the in-process tier.
    pub fn local_len(&self) -> Option<usize> {
        match self {
            CacheTier::Local(l) => Some(l.cache.lock().map(|c| c.len()).unwrap_or(0)),
            CacheTier::Redis(_) => None,
        }
    }

    /// Who holds reads off Redis now ([`CacheTier::hold_reads`]; empty for the in-process
    /// tier or when none does).
    pub fn read_holds(&self) -> Vec<ReadHold> {
        match self {
            CacheTier::Local(_) => Vec::new(),
            CacheTier::Redis(r) => {
                let held = r.held.load(Relaxed);
                [
                    ReadHold::ChangeStream,
                    ReadHold::DatabaseFeed,
                    ReadHold::Endpoint,
                    ReadHold::UpstreamFeed,
                    ReadHold::WriteBack,
                ]
                .into_iter()
                .filter(|&h| held & h as u8 != 0)
                .collect()
            }
        }
    }

    /// Whether Redis is marked down (`None` for the in-process tier).
    pub fn redis_degraded(&self) -> Option<bool> {
        match self {
            CacheTier::Local(_) => None,
            CacheTier::Redis(r) => Some(r.degraded.load(Relaxed)),
        }
    }

    /// What differed the last time the Redis prefix's owner record was another
    /// deployment's (the logged error); `None` otherwise and in-process.
    pub fn owner_conflict(&self) -> Option<String> {
        match self {
            CacheTier::Local(_) => None,
            CacheTier::Redis(r) => r.owner_conflict(),
        }
    }

    /// Whose the Redis prefix is (`None` for the in-process tier): requests use Redis only
    /// when it is this deployment's ([`crate::owner`]).
    pub fn prefix_owner(&self) -> Option<PrefixOwner> {
        match self {
            CacheTier::Local(_) => None,
            CacheTier::Redis(r) => Some(r.prefix_owner()),
        }
    }
}

/// Whose the Redis key prefix is, as this instance last read its owner record
/// ([`crate::owner`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefixOwner {
    /// Not read yet (Redis has not answered since the start): the tier is not used.
    Unchecked,
    /// This deployment's: the tier is used.
    This,
    /// Another deployment's: the tier is not used; requests go to the origin.
    Other,
}

impl PrefixOwner {
    /// Its name in `/healthz`.
    pub fn name(self) -> &'static str {
        match self {
            PrefixOwner::Unchecked => "unchecked",
            PrefixOwner::This => "this",
            PrefixOwner::Other => "other",
        }
    }
}

/// How often an instance using the tier reads the owner record again, so that one whose
/// prefix another deployment took over (`--redis-take-over`) steps off within about this.
pub const OWNER_RECHECK: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------
// In-process
// ---------------------------------------------------------------------------------------

/// The core cache behind a mutex; every call takes the lock once, briefly, and does no
/// I/O or JSON work under it.
///
/// Its times are the core's monotonic clock ([`Clock`], ARCHITECTURE.md "Time"), not the
/// wall clock: each call reads the wall time it is given (`now`, Unix ms) once through it,
/// so a host clock stepping back an hour does not keep an item or a list an hour past its
/// TTL. Times that cross the tier's edge are wall times, as in Redis: a [`Fill`]'s
/// expiries (turned into TTLs against the wall time of the write), a [`TileHit::exp`] and
/// a read item's [`StoredItem::exp`] (the cache's expiry back on the wall clock, so the
/// `ttl` answered is what the tier has left of it, never the step more).
pub struct LocalTier {
    cache: Mutex<ItemCache<Arc<StoredItem>>>,
    clock: Clock,
}

impl LocalTier {
    pub fn new(config: CacheConfig) -> Result<LocalTier, tilewarm::cache::CacheError> {
        Ok(LocalTier {
            cache: Mutex::new(ItemCache::new(config)?),
            clock: Clock::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ItemCache<Arc<StoredItem>>> {
        // A panic while holding the lock cannot leave the cache inconsistent in a way that
        // matters more than losing it; keep serving.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self, tiles: &[TileId], ids: &[String], wall_now: u64) -> TierRead {
        let mut cache = self.lock();
        let now = self.clock.read(wall_now);
        // An item as held, with its expiry on the wall clock: the cache's, which is never
        // later than the one it came with (a step back since only makes it sooner).
        let on_wall = |item: &tilewarm::cache::CacheItem<Arc<StoredItem>>| {
            let p = item.payload();
            let exp = self.clock.wall(item.expires_at_ms()).min(p.exp());
            (exp != p.exp()).then(|| p.with_exp(exp))
        };
        let mut out = TierRead {
            tiles: Vec::with_capacity(tiles.len()),
            ids: Vec::with_capacity(ids.len()),
            gens: Generations::default(),
        };
        for &t in tiles {
            // The tier the list was fetched at (`agent`, or a caller's below it): a hit when
            // the list and every item it holds are fresh, as in Redis.
            let at = cache.tile_fetched_at(t).unwrap_or(Access::Agent);
            if cache.tile_freshness(t, at, now) != TileFreshness::Fresh {
                out.tiles.push(None);
                continue;
            }
            let exp = self.clock.wall(cache.tile_expires_at_ms(t).unwrap_or(now));
            let mut items = Vec::new();
            cache.read_tile(t, at, now, |item, _, _| {
                items.push(on_wall(item).unwrap_or_else(|| StoredItem::clone(item.payload())))
            });
            out.tiles.push(Some(TileHit {
                items,
                exp,
                fetched_at: at,
            }));
        }
        for id in ids {
            let hit = cache
                .get(id, Access::Agent, now)
                .filter(|l| !l.stale)
                .map(|l| on_wall(l.item).map_or_else(|| Arc::clone(l.item.payload()), Arc::new));
            out.ids.push(hit);
        }
        out
    }

    fn write(&self, fill: &Fill, wall_now: u64) {
        let mut cache = self.lock();
        // TTLs are what the fill's wall-clock expiries leave at the wall time of the write.
        let now = self.clock.read(wall_now);
        for item in &fill.items {
            let meta = ItemMeta {
                lon: item.lon(),
                lat: item.lat(),
                class: item.class().to_owned(),
                access: item.access(),
                ttl_ms: Some(item.exp().saturating_sub(wall_now).max(1)),
                size_bytes: item.size_bytes(),
            };
            // Only invalid ids, oversized items and items of a class beyond the
            // `MAX_CLASSES` held fail; those are simply not cached.
            let _ = cache.insert(item.id(), meta, Arc::clone(item), now, Priority::Visible);
        }
        for (tile, ids, exp) in &fill.tiles {
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            let ttl = exp.saturating_sub(wall_now).max(1);
            let _ = cache.insert_tile(*tile, &ids, Some(ttl), fill.fetched_at, now);
        }
    }

    fn invalidate(&self, inv: &crate::invalidate::Invalidation) {
        use tilewarm::cache::Invalidate;
        let mut cache = self.lock();
        if inv.all {
            cache.invalidate(Invalidate::All);
            return;
        }
        let ids: Vec<&str> = inv.ids.iter().map(String::as_str).collect();
        cache.invalidate(Invalidate::Ids(&ids));
        cache.invalidate(Invalidate::Tiles(&inv.tiles));
        for class in &inv.classes {
            cache.invalidate(Invalidate::Class(class));
        }
    }

    /// A list fetched at a caller's tier below `agent` (the tile is over `--max-tile-items`
    /// at `agent`) is held too, as in Redis: warming it at `agent` would cache nothing.
    fn has_tiles(&self, tiles: &[TileId], wall_now: u64) -> Vec<bool> {
        let cache = self.lock();
        let now = self.clock.read(wall_now);
        tiles
            .iter()
            .map(|&t| {
                let at = cache.tile_fetched_at(t).unwrap_or(Access::Agent);
                cache.tile_freshness(t, at, now) == TileFreshness::Fresh
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------------

/// Redis as a shared tier, with degraded mode: the first failed or slow command marks it
/// down; requests then skip it (origin only, no writes) until a background probe's `PING`
/// succeeds, and while invalidations it failed to apply wait to be applied again
/// ([`CacheTier::hold_reads`]).
pub struct RedisTier {
    conn: RedisConn,
    prefix: String,
    keys: Keys,
    timeout: Duration,
    degraded: AtomicBool,
    /// Invalidations failed here and wait to be applied again (one bit per [`ReadHold`]):
    /// what they cover may still be in Redis, so requests skip it as when it is down.
    held: AtomicU8,
    metrics: Arc<Metrics>,
    /// How many levels above the data zoom the empty blocks read span
    /// ([`RedisTier::with_block_levels`]).
    block_levels: u8,
    /// The data zoom (`--data-zoom`, [`RedisTier::with_data_zoom`]): a write finds the data
    /// tile an item's replaced copy was filed under by it.
    data_zoom: u8,
    /// This deployment's owner record ([`RedisTier::with_owner`]); `None`: no check, the
    /// prefix is taken as this deployment's (embedders, tests).
    fingerprint: Option<Fingerprint>,
    /// [`PrefixOwner`] as a number (its index: unchecked, this, other).
    owner: AtomicU8,
    /// `--redis-take-over`, until the first reading of the record (it acts then only).
    take_over: AtomicBool,
    /// Another deployment's record was read here: when this instance later finds the
    /// prefix its own deployment's (it wrote the record, the record gone, or another
    /// instance of it did), it invalidates `all` before it uses the tier, since the other's
    /// values may still be there (only the record deleted).
    seen_other: AtomicBool,
    /// What differed the last time the record was another deployment's.
    conflict: Mutex<Option<String>>,
}

impl RedisTier {
    /// A lazy connection: the server starts whether or not Redis is up (it starts degraded
    /// if the first probe fails) and reconnects on its own.
    pub fn new(
        target: &RedisTarget,
        prefix: String,
        timeout: Duration,
        read_from_replicas: bool,
        metrics: Arc<Metrics>,
    ) -> Result<RedisTier, redis::RedisError> {
        let opts = ConnOptions {
            timeout,
            read_from_replicas,
        };
        let conn = RedisConn::open(target, opts)?;
        Ok(RedisTier {
            conn,
            keys: Keys::new(&prefix),
            prefix,
            timeout,
            degraded: AtomicBool::new(false),
            held: AtomicU8::new(0),
            metrics,
            block_levels: 0,
            data_zoom: DEFAULT_DATA_ZOOM,
            fingerprint: None,
            owner: AtomicU8::new(OWNER_THIS),
            take_over: AtomicBool::new(false),
            seen_other: AtomicBool::new(false),
            conflict: Mutex::new(None),
        })
    }

    /// Checks the owner record (`<prefix>v4:owner`, [`crate::owner`]) before using the
    /// tier: until the probe has read it and found it this `fingerprint`'s (or written it,
    /// absent), requests go to the origin. With `take_over` (`--redis-take-over`), a record
    /// of another deployment found at the first reading is replaced
    /// ([`RedisTier::probe`]).
    pub fn with_owner(mut self, fingerprint: Fingerprint, take_over: bool) -> RedisTier {
        self.fingerprint = Some(fingerprint);
        self.owner = AtomicU8::new(OWNER_UNCHECKED);
        self.take_over = AtomicBool::new(take_over);
        self
    }

    /// Whose the prefix is, as last read.
    pub fn prefix_owner(&self) -> PrefixOwner {
        match self.owner.load(Relaxed) {
            OWNER_THIS => PrefixOwner::This,
            OWNER_OTHER => PrefixOwner::Other,
            _ => PrefixOwner::Unchecked,
        }
    }

    /// What differed the last time the record was another deployment's (the logged error).
    pub fn owner_conflict(&self) -> Option<String> {
        self.conflict.lock().ok().and_then(|c| c.clone())
    }

    fn owned(&self) -> bool {
        self.owner.load(Relaxed) == OWNER_THIS
    }

    /// Reads the owner record, writing this deployment's when it is absent (`SET … NX`:
    /// of two instances starting at once, one writes it and the other reads it). A
    /// record that vanished between the two (a flush) is an error: the next probe reads
    /// again.
    async fn read_owner(&self) -> redis::RedisResult<Owner> {
        let Some(fp) = &self.fingerprint else {
            return Ok(Owner::This);
        };
        let key = self.keys.owner();
        let get = || {
            let mut c = redis::cmd("GET");
            c.arg(key);
            (key.to_owned(), c)
        };
        let first = self.conn.per_key(vec![get()]).await?;
        let stored: Option<Vec<u8>> = match first.into_iter().next() {
            Some(v) => redis::from_redis_value(v)?,
            None => None,
        };
        if let Some(stored) = stored {
            return Ok(fp.compare(&stored));
        }
        let mine = fp.encode();
        let mut set = redis::cmd("SET");
        set.arg(key).arg(&mine).arg("NX");
        let answers = self
            .conn
            .per_key(vec![(key.to_owned(), set), get()])
            .await?;
        if matches!(answers.first(), Some(redis::Value::Okay)) {
            info!(prefix = %self.prefix, key, "wrote this deployment's owner record for the redis prefix");
            return Ok(Owner::This);
        }
        match answers.into_iter().nth(1) {
            Some(v) => match redis::from_redis_value::<Option<Vec<u8>>>(v)? {
                Some(stored) => Ok(fp.compare(&stored)),
                None => Err((
                    redis::ErrorKind::Client,
                    "the owner record was deleted while it was being read",
                )
                    .into()),
            },
            None => Err((redis::ErrorKind::Client, "no answer for the owner record").into()),
        }
    }

    /// Reads the owner record (within the timeout) and acts on it: this deployment's → the
    /// tier may be used; another's → not (logged once, with what differs and what to
    /// do), unless `--redis-take-over` still holds, which writes this deployment's record
    /// over it, waits [`OWNER_RECHECK`] and two timeouts so that the other's instances
    /// have read it and stepped off (their writes in flight landed), then invalidates
    /// `all`: nothing they stored is served. `Err` when Redis did not answer.
    async fn settle_owner(&self) -> Result<PrefixOwner, String> {
        let read = match tokio::time::timeout(self.timeout, self.read_owner()).await {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => return Err(format!("reading the owner record: {e}")),
            Err(_) => {
                return Err(format!(
                    "the owner record: no answer within {} ms",
                    self.timeout.as_millis()
                ))
            }
        };
        let take_over = self.fingerprint.is_some() && self.take_over.swap(false, Relaxed);
        match read {
            Owner::This if self.seen_other.load(Relaxed) => {
                // This instance read another deployment's record here before, and the
                // prefix is this deployment's now without a take-over of its own: only the
                // record may have been deleted, not the other's values. They must not be
                // served: `all` first (its generation makes every value before it a miss).
                // Until that has landed the tier stays unused and the next probe tries again.
                warn!(prefix = %self.prefix, "the redis prefix is this deployment's again after another's record was seen there: invalidating everything under it before using it");
                let limit = self.timeout.max(Duration::from_secs(5));
                match tokio::time::timeout(limit, self.invalidate_all()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(format!("invalidating the other's keys: {e}")),
                    Err(_) => return Err("invalidating the other's keys took too long".into()),
                }
                self.seen_other.store(false, Relaxed);
                self.owner.store(OWNER_THIS, Relaxed);
                if let Ok(mut c) = self.conflict.lock() {
                    *c = None;
                }
                Ok(PrefixOwner::This)
            }
            Owner::This => {
                self.owner.store(OWNER_THIS, Relaxed);
                if let Ok(mut c) = self.conflict.lock() {
                    *c = None;
                }
                Ok(PrefixOwner::This)
            }
            Owner::Other(diffs) if take_over => {
                warn!(prefix = %self.prefix, differs = %diffs, "--redis-take-over: writing this deployment's owner record over another's, then invalidating everything under the prefix");
                self.owner.store(OWNER_UNCHECKED, Relaxed);
                let mine = self.fingerprint.as_ref().map(Fingerprint::encode);
                let mut set = redis::cmd("SET");
                set.arg(self.keys.owner()).arg(mine);
                let limit = self.timeout.max(Duration::from_secs(5));
                let done = async {
                    self.conn
                        .per_key(vec![(self.keys.owner().to_owned(), set)])
                        .await?;
                    tokio::time::sleep(OWNER_RECHECK + 2 * self.timeout).await;
                    self.invalidate_all().await
                };
                match tokio::time::timeout(limit + OWNER_RECHECK + 2 * self.timeout, done).await {
                    Ok(Ok(())) => {
                        self.seen_other.store(false, Relaxed);
                        self.owner.store(OWNER_THIS, Relaxed);
                        self.metrics.redis_take_overs.fetch_add(1, Relaxed);
                        info!(prefix = %self.prefix, "took the redis prefix over");
                        Ok(PrefixOwner::This)
                    }
                    Ok(Err(e)) => {
                        self.take_over.store(true, Relaxed);
                        Err(format!("taking the prefix over: {e}"))
                    }
                    Err(_) => {
                        self.take_over.store(true, Relaxed);
                        Err("taking the prefix over did not finish in time".into())
                    }
                }
            }
            Owner::Other(diffs) => {
                self.seen_other.store(true, Relaxed);
                let before = self.owner.swap(OWNER_OTHER, Relaxed);
                let message =
                    crate::owner::conflict_message(&self.prefix, self.keys.owner(), &diffs);
                if before != OWNER_OTHER {
                    tracing::error!("{message}");
                }
                if let Ok(mut c) = self.conflict.lock() {
                    *c = Some(message);
                }
                Ok(PrefixOwner::Other)
            }
        }
    }

    /// The data zoom the tile keys are at (`--data-zoom`; [`DEFAULT_DATA_ZOOM`] unless
    /// set): a write that replaces an item's copy filed under another data tile unlinks
    /// that tile's value (`RedisTier::write`), found by it.
    pub fn with_data_zoom(mut self, data_zoom: u8) -> RedisTier {
        self.data_zoom = data_zoom;
        self
    }

    /// Reads (and counts as held, for warm-up) the empty blocks up to `levels` above the
    /// data zoom (`--split-levels`, at most [`MAX_BLOCK_LEVELS`]): those this instance
    /// writes ([`crate::empty_tiles`]). None by default. Invalidations delete the blocks
    /// over what they cover at every level up to [`MAX_BLOCK_LEVELS`] whatever this is.
    pub fn with_block_levels(mut self, levels: u8) -> RedisTier {
        self.block_levels = levels.min(MAX_BLOCK_LEVELS);
        self
    }

    /// The blocks a reader of data tile `t` looks in, finest first.
    fn blocks_over(&self, t: TileId) -> impl Iterator<Item = TileId> {
        (1..=self.block_levels.min(t.z())).filter_map(move |k| t.ancestor(t.z() - k).ok())
    }

    /// The keys of every empty block that may hold part of `t` (a tile of any zoom), when
    /// data tiles are at `data_zoom`: the blocks over it and, for a tile coarser than the
    /// data zoom, those inside it, at each of the [`MAX_BLOCK_LEVELS`] levels; `None` when
    /// those inside are too many to name (more than 4^[`MAX_BLOCK_LEVELS`] levels below
    /// it: the caller scans for them).
    fn block_keys_covering(&self, t: TileId, data_zoom: u8) -> Option<Vec<String>> {
        let mut keys = Vec::new();
        for k in 1..=MAX_BLOCK_LEVELS.min(data_zoom) {
            let bz = data_zoom - k;
            if t.z() >= bz {
                keys.extend(t.ancestor(bz).ok().map(|b| self.keys.block(b)));
            } else if bz - t.z() <= MAX_BLOCK_LEVELS {
                let inside = t.descendants(bz).ok()?;
                keys.extend(inside.into_iter().map(|b| self.keys.block(b)));
            } else {
                return None;
            }
        }
        Some(keys)
    }

    fn item_key(&self, id: &str) -> String {
        self.keys.item(id)
    }

    fn tile_key(&self, t: TileId) -> String {
        self.keys.tile(t)
    }

    /// Runs a command with the timeout; a failure marks Redis down.
    async fn guard<T>(
        &self,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, TierError> {
        if self.degraded.load(Relaxed) {
            return Err(TierError("redis is marked down".into()));
        }
        if !self.owned() {
            return Err(TierError(format!(
                "the redis prefix is not this deployment's ({})",
                self.prefix_owner().name()
            )));
        }
        let result = match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {} ms", self.timeout.as_millis()),
        };
        Err(self.mark_down(result))
    }

    /// Marks Redis down after a failed or slow command.
    fn mark_down(&self, why: String) -> TierError {
        self.metrics.redis_errors.fetch_add(1, Relaxed);
        if !self.degraded.swap(true, Relaxed) {
            warn!(error = %why, "redis unavailable: answering from the origin until it is back");
        }
        TierError(why)
    }

    /// Deletes what `inv` covers. A tile's value holds copies of its items, so whatever
    /// drops an item drops every tile value holding it too:
    /// - **ids**: the item keys are read first; each stored item's position names the data
    ///   tile holding it, whose key is unlinked with the item keys;
    /// - **tiles**: the keys of the data tiles they cover and the item keys of the items
    ///   inside (a tile more than 4 levels coarser than the data zoom by one `SCAN` of the
    ///   tile keys; by `all` instead on a cluster whose slots moved while it ran, when it
    ///   may have missed keys: [`crate::redis_conn::Scan::slots_moved`]);
    /// - **classes**: nothing is deleted: each class's generation is bumped ([`BUMP_SCRIPT`]
    ///   on its field in `<prefix>v4:g`), which makes every item and tile value holding an item
    ///   of it stamped before a miss ([`Generations::current`]); they are overwritten by the
    ///   refetch or expire;
    /// - **all**: its generation is bumped ([`ALL_BUMP_SCRIPT`]: every value stored before
    ///   is a miss, wherever it is), then every key under the prefix, of any storage format
    ///   version, is deleted (`SCAN` + `UNLINK`), but the change stream and the class
    ///   generations (deleting those would set every class back to 0, and a write-back
    ///   stamped before a class's bump, landing after this, would read as current), this
    ///   deployment's and those of deployments under a longer prefix the pattern also
    ///   matches ([`Keys::is_other_kept`]), and the owner records ([`crate::owner`]).
    ///
    /// What an id cannot reach: a tile holding the item when its item key is gone (evicted
    /// by `maxmemory` before the tile). An item that moved and was written again since (by
    /// id or in its new tile's list) has its key name the new tile, but that write unlinked
    /// the old one ([`RedisTier::write`]; the races left are in `docs/server.md`).
    async fn invalidate(
        &self,
        inv: &crate::invalidate::Invalidation,
        data_zoom: u8,
    ) -> redis::RedisResult<()> {
        if inv.all {
            return self.invalidate_all().await;
        }
        let item_keys: Vec<String> = inv.ids.iter().map(|id| self.item_key(id)).collect();
        for chunk in item_keys.chunks(1000) {
            self.unlink_items_and_their_tiles(chunk, data_zoom).await?;
        }
        let mut tile_keys: Vec<String> = Vec::new();
        let mut wide: Vec<TileId> = Vec::new();
        for &t in &inv.tiles {
            // The empty blocks over it or inside it ([`crate::empty_tiles`]): a block
            // stands for each of its data tiles.
            let blocks = self.block_keys_covering(t, data_zoom);
            if t.z() >= data_zoom {
                if let Ok(a) = t.ancestor(data_zoom) {
                    tile_keys.push(self.tile_key(a));
                }
            } else if data_zoom - t.z() <= 4 {
                if let Ok(ds) = t.descendants(data_zoom) {
                    tile_keys.extend(ds.into_iter().map(|d| self.tile_key(d)));
                }
            } else {
                wide.push(t);
                continue;
            }
            tile_keys.extend(blocks.unwrap_or_default());
        }
        self.unlink_tiles_and_items(&tile_keys).await?;
        if !wide.is_empty() {
            // Tile lists, then empty blocks: a key of either whose tile is inside a wide
            // one, or (a block) holds part of it.
            for prefix in [self.keys.tiles_prefix(), self.keys.blocks_prefix()] {
                let mut scan = self
                    .conn
                    .scan(&format!("{}*", glob_escape(prefix)), 1000)
                    .await?;
                while let Some(batch) = scan.next_batch().await? {
                    let doomed: Vec<String> = batch
                        .into_iter()
                        .filter(|key| {
                            key.strip_prefix(prefix)
                                .and_then(|t| t.parse::<TileId>().ok())
                                .is_some_and(|d| {
                                    wide.iter().any(|w| w.contains(d) || d.contains(*w))
                                })
                        })
                        .collect();
                    self.unlink_tiles_and_items(&doomed).await?;
                }
                if let Some(moved) = scan.slots_moved().await? {
                    // A key that moved from a master not walked yet to one walked before
                    // was not seen: nothing says which, so everything is invalidated (which
                    // covers the rest of `inv` too).
                    warn!(why = %moved, "a SCAN for a tile invalidation may have missed keys: invalidating everything instead");
                    return self.invalidate_all().await;
                }
            }
        }
        if !inv.classes.is_empty() {
            let key = self.keys.gens();
            let now = now_ms().to_string();
            let cmds = inv
                .classes
                .iter()
                .map(|class| {
                    let mut c = redis::cmd("EVAL");
                    c.arg(BUMP_SCRIPT)
                        .arg(1)
                        .arg(key)
                        .arg(class)
                        .arg(&now)
                        .arg(ALL_FIELD);
                    (key.to_owned(), c)
                })
                .collect();
            for answer in self.conn.per_key(cmds).await? {
                // A failed bump (the field is not a number) must not pass for one that
                // took: the class's values would go on being served.
                redis::from_redis_value::<i64>(answer)?;
            }
        }
        Ok(())
    }

    /// `UNLINK`s item keys and the keys of the data tiles holding their items: each item's
    /// stored position names its data tile (an item is cached only under the tile its
    /// position falls in: the origin's shape guard drops it from any other list), so
    /// invalidating an id also makes every tile value holding a copy of it a miss.
    async fn unlink_items_and_their_tiles(
        &self,
        item_keys: &[String],
        data_zoom: u8,
    ) -> redis::RedisResult<()> {
        let values = self.mget_masters(item_keys).await?;
        let mut tiles: Vec<TileId> = values
            .into_iter()
            .flatten()
            .filter_map(|v| data_tile_of(&StoredItem::decode(v)?, data_zoom))
            .collect();
        tiles.sort_unstable();
        tiles.dedup();
        let mut doomed = item_keys.to_vec();
        for t in tiles {
            doomed.push(self.tile_key(t));
            // The empty blocks over it: one may hold the item (above `public`).
            doomed.extend(self.block_keys_covering(t, data_zoom).unwrap_or_default());
        }
        self.conn.unlink(&doomed).await
    }

    /// `UNLINK`s tile keys and the item keys of the items their values hold: invalidating a
    /// tile drops its items too (the wire contract, `protocol::Invalidation`), so a request
    /// by id cannot be answered with an item of an invalidated tile.
    async fn unlink_tiles_and_items(&self, tile_keys: &[String]) -> redis::RedisResult<()> {
        for chunk in tile_keys.chunks(TILE_VALUES_PER_MGET) {
            let values = self.mget_masters(chunk).await?;
            let mut doomed: Vec<String> = chunk.to_vec();
            for v in values.into_iter().flatten() {
                if let Some((_, _, items)) = decode_tile(v) {
                    doomed.extend(items.iter().map(|it| self.item_key(it.id())));
                }
            }
            self.conn.unlink(&doomed).await?;
        }
        Ok(())
    }

    /// `all`: bumps its generation ([`ALL_BUMP_SCRIPT`]), which makes every value stored
    /// before a miss wherever it is, then deletes every key under the prefix but the change
    /// stream, which records this very invalidation, and the class generations: this
    /// deployment's, and those of a deployment whose prefix starts with this one's (`tw:x:`
    /// under `tw:`), whose keys the pattern matches too (`Keys::is_other_kept`), and the owner records. The
    /// deletes free the memory (and drop the keys of other storage formats); a key their
    /// `SCAN` misses (a Redis Cluster moving slots meanwhile) is stale by its generation.
    async fn invalidate_all(&self) -> redis::RedisResult<()> {
        let gens = self.keys.gens();
        let mut bump = redis::cmd("EVAL");
        bump.arg(ALL_BUMP_SCRIPT)
            .arg(1)
            .arg(gens)
            .arg(now_ms().to_string())
            .arg(ALL_FIELD);
        for answer in self.conn.per_key(vec![(gens.to_owned(), bump)]).await? {
            redis::from_redis_value::<i64>(answer)?;
        }
        let stream = crate::stream::changes_key(&self.prefix);
        let owner = self.keys.owner();
        self.unlink_scan(&format!("{}*", glob_escape(&self.prefix)), |k| {
            k != stream && k != gens && k != owner && !self.keys.is_other_kept(k)
        })
        .await
    }

    /// `SCAN MATCH pattern` and `UNLINK` the keys `pick` picks.
    async fn unlink_scan(
        &self,
        pattern: &str,
        pick: impl Fn(&str) -> bool,
    ) -> redis::RedisResult<()> {
        let mut scan = self.conn.scan(pattern, 1000).await?;
        while let Some(batch) = scan.next_batch().await? {
            let doomed: Vec<&String> = batch.iter().filter(|k| pick(k)).collect();
            self.conn.unlink(&doomed).await?;
        }
        Ok(())
    }

    /// One probe ([`RedisConn::probe`]: `PING`; on a cluster, a slot map serving every
    /// slot and a `PING` to the master of each slot range), within the timeout, then a
    /// reading of the owner record (`RedisTier::settle_owner`). Clears degraded mode when
    /// Redis answers; true when the tier may be used (the prefix is this deployment's).
    pub async fn probe(&self) -> bool {
        let mut why = self.conn.probe(self.timeout).await.err();
        let mut owner = None;
        if why.is_none() {
            match self.settle_owner().await {
                Ok(o) => owner = Some(o),
                Err(e) => why = Some(e),
            }
        }
        let ok = why.is_none();
        if ok && self.degraded.swap(false, Relaxed) {
            self.metrics.redis_recoveries.fetch_add(1, Relaxed);
            info!("redis is back: using the shared cache tier again");
        }
        if !ok && !self.degraded.swap(true, Relaxed) {
            self.metrics.redis_errors.fetch_add(1, Relaxed);
            warn!(
                "the redis probe failed ({}): answering from the origin until it is back",
                why.as_deref().unwrap_or_default()
            );
        } else if let Some(why) = &why {
            debug!("the redis probe failed again: {why}");
        }
        ok && owner == Some(PrefixOwner::This)
    }

    /// Reads the owner record again while the tier is used ([`OWNER_RECHECK`]): another
    /// deployment's record there now (one that took the prefix over) takes the tier out of
    /// use; Redis not answering marks it down.
    async fn recheck_owner(&self) {
        if self.fingerprint.is_none() || self.degraded.load(Relaxed) {
            return;
        }
        if let Err(e) = self.settle_owner().await {
            self.mark_down(e);
        }
    }

    /// Probes while degraded or while the prefix is not this deployment's, backing off from
    /// 100 ms to 2 s; otherwise reads the owner record again every [`OWNER_RECHECK`]. Ends
    /// when the tier is dropped.
    pub async fn watch(tier: std::sync::Weak<RedisTier>) {
        let mut backoff = Duration::from_millis(100);
        let mut last_check = std::time::Instant::now();
        loop {
            let Some(this) = tier.upgrade() else { return };
            if this.degraded.load(Relaxed) || !this.owned() {
                drop(this);
                tokio::time::sleep(backoff).await;
                let Some(this) = tier.upgrade() else { return };
                if this.probe().await {
                    backoff = Duration::from_millis(100);
                } else {
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            } else {
                if last_check.elapsed() >= OWNER_RECHECK {
                    this.recheck_owner().await;
                    last_check = std::time::Instant::now();
                }
                drop(this);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }

    /// `MGET` for an invalidation: from the masters, never a replica (`--redis-read-from-
    /// replicas`), whose lag would hide a key just written and let it outlive the
    /// invalidation ([`crate::redis_conn::ReadFrom`]).
    async fn mget_masters(&self, keys: &[String]) -> redis::RedisResult<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.conn.mget_from(keys, ReadFrom::Master).await
    }

    /// One `MGET` of the tile keys and the requested ids' item keys, with the tile keys'
    /// `PTTL`s in the same round trip. A tile value holds its items, so a fresh tile is a
    /// hit when each of its items is fresh too (its stored `exp` is its list's, `stored`):
    /// "a tile is a hit only when its list and every listed item are fresh" holds here too.
    ///
    /// A hit's `exp` (what its answered `ttl` counts down to) is the sooner of the stored
    /// one and the key's own remaining life in Redis ([`list_exp`]): the stored `exp` is
    /// the writing instance's clock, and a client must not keep a list longer than the
    /// shared tier does (an instance whose clock runs ahead, a key whose expiry was changed
    /// in Redis).
    ///
    /// A data tile whose own key is absent is answered from the finest fresh empty block
    /// over it ([`crate::empty_tiles`]), read in the same `MGET` with its `PTTL`: the
    /// block's items positioned in the tile (usually none), as fresh as they are.
    async fn read(
        &self,
        tiles: &[TileId],
        ids: &[String],
        now: u64,
    ) -> redis::RedisResult<TierRead> {
        // The tiles' keys, then each distinct empty block over them (`crate::empty_tiles`),
        // read with their `PTTL`s too; then the ids' keys.
        let mut tile_keys: Vec<String> = tiles.iter().map(|&t| self.tile_key(t)).collect();
        let mut block_at: HashMap<TileId, usize> = HashMap::new();
        for &t in tiles {
            for b in self.blocks_over(t) {
                block_at.entry(b).or_insert_with(|| {
                    tile_keys.push(self.keys.block(b));
                    tile_keys.len() - 1
                });
            }
        }
        let mut keys = tile_keys.clone();
        keys.extend(ids.iter().map(|id| self.item_key(id)));
        let (mut values, mut pttls, gens) = self
            .conn
            .mget_pttl_and(&keys, &tile_keys, (self.keys.gens(), self.gens_cmd()))
            .await?;
        let gens = parse_gens(gens)?;
        values.resize(keys.len(), None);
        pttls.resize(tile_keys.len(), -2);
        let id_values = values.split_off(tile_keys.len());
        let block_values = values.split_off(tiles.len());
        let block_pttls = pttls.split_off(tiles.len());
        let fresh_in = |items: &[StoredItem], exp: u64| {
            exp > now && items.iter().all(|it| it.exp() > now && gens.current(it))
        };
        // Each block read: its expiry, tier and items with the data tile each lies in.
        let dz = tiles.first().map_or(0, |t| t.z());
        let block_reads: Vec<Option<BlockRead>> = block_values
            .into_iter()
            .zip(block_pttls)
            .map(|(v, pttl)| {
                let (stored, fetched_at, items) = decode_tile(v?)?;
                let exp = list_exp(stored, pttl, now)?;
                let placed = (items.into_iter())
                    .map(|it| (data_tile_of(&it, dz), it))
                    .collect();
                Some((exp, fetched_at, placed))
            })
            .collect();
        let tiles = values
            .into_iter()
            .zip(pttls)
            .zip(tiles)
            .map(|((v, pttl), &t)| {
                // A tile's own list wins over a block (even stale: it is then a miss).
                let Some(v) = v else {
                    return self.blocks_over(t).find_map(|b| {
                        let (exp, fetched_at, placed) =
                            block_reads[block_at[&b] - tiles.len()].as_ref()?;
                        let items: Vec<StoredItem> = (placed.iter())
                            .filter(|(at, _)| *at == Some(t))
                            .map(|(_, it)| it.clone())
                            .collect();
                        fresh_in(&items, *exp).then_some(TileHit {
                            items,
                            exp: *exp,
                            fetched_at: *fetched_at,
                        })
                    });
                };
                let (stored, fetched_at, items) = decode_tile(v)?;
                let exp = list_exp(stored, pttl, now)?;
                fresh_in(&items, exp).then_some(TileHit {
                    items,
                    exp,
                    fetched_at,
                })
            })
            .collect();
        let ids = id_values
            .into_iter()
            .map(|v| {
                let item = StoredItem::decode(v?)?;
                (item.exp() > now && gens.current(&item)).then(|| Arc::new(item))
            })
            .collect();
        Ok(TierRead { tiles, ids, gens })
    }

    /// `HGETALL` of the class generations.
    fn gens_cmd(&self) -> redis::Cmd {
        let mut c = redis::cmd("HGETALL");
        c.arg(self.keys.gens());
        c
    }

    /// The class generations now ([`CacheTier::generations`]).
    async fn generations(&self) -> redis::RedisResult<Generations> {
        let key = self.keys.gens().to_owned();
        let mut answers = self.conn.per_key(vec![(key, self.gens_cmd())]).await?;
        parse_gens(answers.pop().unwrap_or(redis::Value::Nil))
    }

    /// One pipeline of `SET EX`s: each tile's items under the tile's key (until the list's
    /// expiry: a tile holds items of every tier, and a hit's `ttl` must not follow one
    /// above the caller's; the read finds an expired item stale), then each item under its
    /// key, every item stamped with its class's generation in [`Fill::gens`].
    ///
    /// An item's `SET` carries `GET`: it answers the value it replaced, in the same round
    /// trip. When that copy's position names another data tile than the new one (the item
    /// moved), the old tile's value (and the empty blocks over it) may still hold the old
    /// copy, and an invalidation of the id, which finds tiles by the position the item key
    /// holds, would no longer reach it: those keys are unlinked before the write returns
    /// (one more command, only when an item moved), unless this fill wrote them itself.
    /// Tiles go before items so that a writer whose item `SET` replaces another's copy
    /// finds that copy's tile already written, and its unlink comes after it (on one Redis;
    /// a cluster's nodes are written concurrently: `docs/server.md`).
    async fn write(&self, fill: &Fill, now: u64) -> redis::RedisResult<()> {
        let mut cmds = Vec::with_capacity(fill.items.len() + fill.tiles.len());
        let stamped: Vec<StoredItem> = fill
            .items
            .iter()
            .map(|it| it.with_gen(fill.gens.of(it.class())))
            .collect();
        let by_id: std::collections::HashMap<&str, &StoredItem> =
            stamped.iter().map(|it| (it.id(), it)).collect();
        // Tile lists, then empty blocks (`crate::empty_tiles`: valued as a tile, with the
        // items of all their data tiles), by the same rules.
        let lists = (fill.tiles.iter()).map(|(t, ids, exp)| (self.tile_key(*t), ids, exp));
        let blocks = (fill.blocks.iter()).map(|(b, ids, exp)| (self.keys.block(*b), ids, exp));
        for (key, ids, exp) in lists.chain(blocks) {
            // A list naming an item the fill does not hold (the write guard dropped it, or
            // the origin left it out) is not cached: the tile stays a miss, as it would be
            // with the item absent. So is a tile the format cannot hold.
            let Some(items) = ids
                .iter()
                .map(|id| by_id.get(id.as_str()).copied())
                .collect::<Option<Vec<&StoredItem>>>()
            else {
                continue;
            };
            let Some(value) = encode_tile(&items, *exp, fill.fetched_at) else {
                continue;
            };
            let ttl = ttl_left_s(*exp, now) as u64;
            cmds.push((key.clone(), redis::Cmd::set_ex(key, value, ttl)));
        }
        let written = cmds.len();
        for item in &stamped {
            let ttl = ttl_left_s(item.exp(), now) as u64;
            let key = self.item_key(item.id());
            let mut set = redis::cmd("SET");
            set.arg(&key)
                .arg(item.encode())
                .arg("EX")
                .arg(ttl)
                .arg("GET");
            cmds.push((key, set));
        }
        let fresh: std::collections::HashSet<String> =
            cmds[..written].iter().map(|(k, _)| k.clone()).collect();
        let answers = self.conn.per_key(cmds).await?;
        let dz = self.data_zoom;
        let mut moved_from: Vec<TileId> = (answers.into_iter().skip(written))
            .zip(&stamped)
            .filter_map(|(old, item)| {
                let old: Option<Vec<u8>> = redis::from_redis_value(old).ok()?;
                let (lon, lat) = StoredItem::position_in(&old?)?;
                let was = TileId::from_lon_lat(lon, lat, tilewarm::tile::MAX_ZOOM)
                    .ok()?
                    .ancestor(dz)
                    .ok()?;
                (Some(was) != data_tile_of(item, dz)).then_some(was)
            })
            .collect();
        if moved_from.is_empty() {
            return Ok(());
        }
        (self.metrics.redis_moved_items).fetch_add(moved_from.len() as u64, Relaxed);
        moved_from.sort_unstable();
        moved_from.dedup();
        let mut doomed: Vec<String> = Vec::new();
        for t in moved_from {
            doomed.push(self.tile_key(t));
            // The empty blocks over it: one may hold the old copy (above `public`).
            doomed.extend(self.block_keys_covering(t, dz).unwrap_or_default());
        }
        doomed.retain(|k| !fresh.contains(k));
        doomed.sort_unstable();
        doomed.dedup();
        self.conn.unlink(&doomed).await
    }

    async fn claim(
        &self,
        tiles: &[TileId],
        owner: &str,
        ttl_ms: u64,
    ) -> redis::RedisResult<Vec<bool>> {
        let cmds = tiles
            .iter()
            .map(|&t| {
                let key = format!("{}w:{t}", self.prefix);
                let mut c = redis::cmd("SET");
                c.arg(&key)
                    .arg(owner)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_ms.max(1));
                (key, c)
            })
            .collect();
        let answers = self.conn.per_key(cmds).await?;
        Ok(answers
            .into_iter()
            .map(|v| matches!(v, redis::Value::Okay))
            .collect())
    }

    async fn has_tiles(&self, tiles: &[TileId]) -> redis::RedisResult<Vec<bool>> {
        if tiles.is_empty() {
            return Ok(Vec::new());
        }
        // Each tile's key, then each distinct empty block over them (`crate::empty_tiles`):
        // a tile under a block is held too.
        let mut keys: Vec<String> = tiles.iter().map(|&t| self.tile_key(t)).collect();
        let mut block_at: HashMap<TileId, usize> = HashMap::new();
        for &t in tiles {
            for b in self.blocks_over(t) {
                block_at.entry(b).or_insert_with(|| {
                    keys.push(self.keys.block(b));
                    keys.len() - 1
                });
            }
        }
        let cmds = keys
            .iter()
            .map(|key| (key.clone(), redis::Cmd::exists(key)))
            .collect();
        let answers = self.conn.per_key(cmds).await?;
        let held = answers
            .into_iter()
            .map(|v| Ok(redis::from_redis_value(v)?))
            .collect::<redis::RedisResult<Vec<bool>>>()?;
        Ok(tiles
            .iter()
            .enumerate()
            .map(|(i, &t)| held[i] || self.blocks_over(t).any(|b| held[block_at[&b]]))
            .collect())
    }
}

/// An empty block read from Redis: its expiry (as [`list_exp`] gives it), the tier its
/// lists were fetched at, and its items, each with the data tile it lies in.
type BlockRead = (u64, Access, Vec<(Option<TileId>, StoredItem)>);

/// A class's bump (`EVAL`, `KEYS[1]` the generations hash, `ARGV` the class, this
/// instance's clock in Unix ms and [`ALL_FIELD`]): its generation becomes the largest of one more than it
/// was, one more than that of `all` ([`ALL_FIELD`]: a value is stamped with the larger of
/// the two, [`Generations::of`]) and the time, atomically, and is returned. One more keeps
/// generations growing whatever the clocks say; the time makes a bump pass every stamp
/// made before it even when the hash lost its value meanwhile (evicted, a failover whose
/// new master missed a bump, deleted by hand): counting on from what is left (`HINCRBY`)
/// would land on a generation already stamped, and the values fetched before this change
/// would read as current (`a_bump_after_the_generations_were_lost_still_passes_every_stamp`).
/// Generations are below 2^53, where Lua's numbers are exact; a value that is not such a
/// number is an error, never read as 0.
const BUMP_SCRIPT: &str = r"
local n = math.max(1, tonumber(ARGV[2]))
for _, f in ipairs({ARGV[1], ARGV[3]}) do
  local v = redis.call('HGET', KEYS[1], f)
  if v then
    local g = tonumber(v)
    if g == nil or g < 0 or g >= 9007199254740991 or g ~= math.floor(g) then
      return redis.error_reply('ERR the generation of class ' .. f .. ' is not a number below 2^53: ' .. v)
    end
    n = math.max(n, g + 1)
  end
end
redis.call('HSET', KEYS[1], ARGV[1], string.format('%.0f', n))
return n
";

/// The bump of `all` (`EVAL`, `KEYS[1]` the generations hash, `ARGV` this instance's
/// clock in Unix ms and [`ALL_FIELD`]): the generation of `all` ([`ALL_FIELD`]) becomes the largest of one
/// more than every generation in the hash and the time, atomically, and is returned. Every
/// value was stamped with at most the largest generation (its class's or that of `all`), so
/// from then on every value stamped before is a miss, wherever it is: a key the `SCAN`
/// that follows does not reach (a Redis Cluster moving slots while it runs) is stale
/// anyway. Checked as [`BUMP_SCRIPT`] checks.
const ALL_BUMP_SCRIPT: &str = r"
local n = math.max(1, tonumber(ARGV[1]))
local kv = redis.call('HGETALL', KEYS[1])
for i = 1, #kv, 2 do
  local g = tonumber(kv[i + 1])
  if g == nil or g < 0 or g >= 9007199254740991 or g ~= math.floor(g) then
    return redis.error_reply('ERR the generation of class ' .. kv[i] .. ' is not a number below 2^53: ' .. kv[i + 1])
  end
  n = math.max(n, g + 1)
end
redis.call('HSET', KEYS[1], ARGV[2], string.format('%.0f', n))
return n
";

/// The class generations from an `HGETALL` answer (none: no class was invalidated yet).
fn parse_gens(v: redis::Value) -> redis::RedisResult<Generations> {
    let fields: Vec<(String, String)> = match v {
        redis::Value::Nil => Vec::new(),
        v => redis::from_redis_value(v)?,
    };
    Generations::from_fields(fields)
        .map_err(|e| redis::RedisError::from((redis::ErrorKind::Parse, "class generations", e)))
}

/// When a tile list read from Redis stops being fresh, for the reader at `now`: the sooner of
/// its stored expiry and the end of its key's remaining life, `PTTL` ms from now. `None`
/// when the key was gone by the time `PTTL` ran (`-2`: deleted, by an invalidation, just
/// after it was read): a miss. A key without an expiry (`-1`, never written so) keeps the
/// stored one.
fn list_exp(stored: u64, pttl_ms: i64, now: u64) -> Option<u64> {
    match pttl_ms {
        -2 => None,
        ms if ms >= 0 => Some(stored.min(now.saturating_add(ms as u64))),
        _ => Some(stored),
    }
}

/// Tile values read per `MGET` when invalidating: a tile value holds its items (tens of KB
/// for a dense tile), so a reply stays a few MB.
const TILE_VALUES_PER_MGET: usize = 64;

/// The data tile an item is filed under: the one its position falls in, as the origin
/// assigns it (its zoom-24 tile's ancestor): the one tile at `data_zoom` whose
/// [`TileId::contains_point`] holds for it, the rule the origin's shape guard keeps lists
/// to. `None` for a position off the map.
fn data_tile_of(item: &StoredItem, data_zoom: u8) -> Option<TileId> {
    TileId::from_lon_lat(item.lon(), item.lat(), tilewarm::tile::MAX_ZOOM)
        .ok()?
        .ancestor(data_zoom)
        .ok()
}

/// `s` with Redis glob characters escaped, for `SCAN MATCH`.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A scratch `redis-server` on `127.0.0.1:port` without persistence, as the tests and the
/// load benchmark start it (spawn it yourself; its stdout is discarded).
pub fn loopback_redis_command(port: u16) -> std::process::Command {
    let mut cmd = std::process::Command::new("redis-server");
    cmd.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ])
    .stdout(std::process::Stdio::null());
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The change stream's reader and the database feed hold reads each on its own: one
    /// letting go while the other still waits must not let requests back onto the tier.
    #[tokio::test]
    async fn reads_come_back_only_when_no_one_holds_them() {
        // Lazy: nothing connects to this address.
        let target = RedisTarget::parse("redis://127.0.0.1:9/0").unwrap();
        let r = RedisTier::new(
            &target,
            "t:".into(),
            Duration::from_millis(100),
            false,
            Arc::default(),
        )
        .unwrap();
        let tier = CacheTier::Redis(Arc::new(r));
        assert!(tier.available());
        tier.hold_reads(ReadHold::ChangeStream, true);
        tier.hold_reads(ReadHold::DatabaseFeed, true);
        tier.hold_reads(ReadHold::ChangeStream, false);
        assert!(!tier.available(), "the database feed still holds them");
        tier.hold_reads(ReadHold::ChangeStream, false);
        assert!(!tier.available());
        tier.hold_reads(ReadHold::DatabaseFeed, false);
        assert!(tier.available());
    }

    /// Warm-up's check of what the in-process tier holds counts a list fetched at a
    /// caller's tier below `agent` (a tile over `--max-tile-items` at `agent`), as Redis's
    /// does: it was read at `agent` only, a miss, so warm-up asked the origin for the tile
    /// at `agent` (over the limit again, nothing written) every time it was planned.
    #[test]
    fn the_in_process_tier_holds_a_list_fetched_below_agent() {
        let tier = LocalTier::new(CacheConfig::default()).unwrap();
        let data = serde_json::value::RawValue::from_string("1".into()).unwrap();
        let t: TileId = "14/2624/5721".parse().unwrap();
        let (lon, lat) = t.bounds().centre();
        let it = StoredItem::new("a", lon, lat, "active", Access::Public, 60_000, &data);
        let fill = Fill {
            items: vec![Arc::new(it)],
            tiles: vec![(t, vec!["a".into()], 60_000)],
            fetched_at: Access::Public,
            ..Fill::default()
        };
        tier.write(&fill, 0);
        let other: TileId = "14/2624/5722".parse().unwrap();
        assert_eq!(tier.has_tiles(&[t, other], 1), [true, false]);
    }

    /// Invalidation by id finds an item's tile by the rule the origin's shape guard files it
    /// by: the two must agree, on tile edges too, or a cached copy outlives invalidation.
    #[test]
    fn the_data_tile_of_an_item_is_the_one_the_origin_guard_lets_it_be_listed_under() {
        let data = serde_json::value::RawValue::from_string("null".into()).unwrap();
        let t: TileId = "14/2624/5721".parse().unwrap();
        let b = t.bounds();
        let (cx, cy) = b.centre();
        let points = [
            (b.west, b.north),
            (b.east, b.south),
            (b.west, b.south),
            (b.east, b.north),
            (cx, cy),
            (b.west, cy),
            (cx, b.south),
            (180.0, 0.0),
            (-180.0, 85.1),
        ];
        for (lon, lat) in points {
            let it = StoredItem::new("a", lon, lat, "active", Access::Public, 0, &data);
            let d = data_tile_of(&it, 14).unwrap();
            assert!(d.contains_point(lon, lat), "({lon}, {lat}) in {d}");
            for n in d.neighbours(1).unwrap() {
                assert!(
                    n == d || !n.contains_point(lon, lat),
                    "({lon}, {lat}) in {n} too"
                );
            }
        }
    }

    #[test]
    fn ttl_left_rounds_up_and_is_at_least_one() {
        assert_eq!(ttl_left_s(10_000, 0), 10);
        assert_eq!(ttl_left_s(10_001, 0), 11);
        assert_eq!(ttl_left_s(5, 10), 1);
    }

    #[test]
    fn a_lists_expiry_is_the_sooner_of_the_stored_one_and_the_keys_pttl() {
        // The writer's clock ran 60 s ahead: the stored expiry is later than Redis's.
        assert_eq!(list_exp(400_000, 300_000, 40_000), Some(340_000));
        // The key outlives the stored expiry (EX rounds up to whole seconds).
        assert_eq!(list_exp(300_000, 300_900, 0), Some(300_000));
        assert_eq!(list_exp(300_000, 0, 5), Some(5));
        // Deleted between MGET and PTTL: a miss. No expiry: the stored one.
        assert_eq!(list_exp(300_000, -2, 0), None);
        assert_eq!(list_exp(300_000, -1, 0), Some(300_000));
    }

    #[test]
    fn local_tier_serves_a_tile_only_when_list_and_items_are_fresh() {
        let tier = LocalTier::new(CacheConfig::default()).unwrap();
        let t = TileId::from_lon_lat(2.35, 48.85, 14).unwrap();
        let one = serde_json::value::to_raw_value(&1).unwrap();
        let item = |id: &str, exp| {
            Arc::new(StoredItem::new(
                id,
                2.35,
                48.85,
                "active",
                Access::Verified,
                exp,
                &one,
            ))
        };
        let fill = Fill {
            items: vec![item("a", 1_000), item("b", 500)],
            tiles: vec![(t, vec!["a".into(), "b".into()], 2_000)],
            ..Fill::default()
        };
        tier.write(&fill, 0);
        let r = tier.read(&[t], &["a".into(), "zz".into()], 100);
        let hit = r.tiles[0].as_ref().unwrap();
        assert_eq!((hit.items.len(), hit.exp), (2, 2_000));
        assert!(r.ids[0].is_some() && r.ids[1].is_none());
        // "b" expired: the tile is a miss (refetched whole), "a" still a hit by id.
        let r = tier.read(&[t], &["a".into()], 600);
        assert!(r.tiles[0].is_none() && r.ids[0].is_some());
        assert_eq!(tier.has_tiles(&[t], 600), [false]);
    }

    /// The in-process tier's times are monotonic (`tilewarm::clock::Clock`): the host's
    /// clock stepping back an hour keeps no item or list past its TTL, and the TTL answered
    /// for a hit is what is left of it, not the step more. Wall times are injected as each
    /// call's `now`, which the tier reads through its clock.
    #[test]
    fn local_tier_keeps_nothing_past_its_ttl_when_the_wall_clock_steps_back() {
        const T: u64 = 1_800_000_000_000; // a wall time in 2027
        const HOUR: u64 = 3_600_000;
        let tier = LocalTier::new(CacheConfig::default()).unwrap();
        let t = TileId::from_lon_lat(2.35, 48.85, 14).unwrap();
        let one = serde_json::value::to_raw_value(&1).unwrap();
        let it = StoredItem::new(
            "a",
            2.35,
            48.85,
            "active",
            Access::Public,
            T + 300_000,
            &one,
        );
        let fill = Fill {
            items: vec![Arc::new(it)],
            tiles: vec![(t, vec!["a".into()], T + 300_000)],
            ..Fill::default()
        };
        tier.write(&fill, T);
        assert_eq!(tier.has_tiles(&[t], T + 100_000), [true]);
        // Then the wall clock steps back an hour: 200 s are left, as the wall clock would
        // have said with no step (the step counts as no time).
        let back = T + 100_000 - HOUR;
        let r = tier.read(&[t], &["a".into()], back);
        let hit = r.tiles[0].as_ref().expect("fresh 100 s in");
        assert_eq!(ttl_left_s(hit.exp, back), 200);
        assert_eq!(ttl_left_s(hit.items[0].exp(), back), 200);
        assert_eq!(ttl_left_s(r.ids[0].as_ref().unwrap().exp(), back), 200);
        // 301 s after the write in time that passed: expired, though the wall clock reads
        // more than 50 minutes before the fill's expiry.
        let after = back + 201_000;
        let r = tier.read(&[t], &["a".into()], after);
        assert!(r.tiles[0].is_none() && r.ids[0].is_none());
        assert_eq!(tier.has_tiles(&[t], after), [false]);
        // A write after the step takes its TTLs against the wall time it is given: the
        // fill says it expires at T + 300 s on the wall clock, an hour less 2 s from then.
        tier.write(&fill, after);
        let r = tier.read(&[t], &[], after + 1_000);
        assert_eq!(
            ttl_left_s(r.tiles[0].as_ref().unwrap().exp, after + 1_000),
            3_598
        );
    }

    #[test]
    fn local_tier_reads_a_list_fetched_below_agent_with_its_tier() {
        let tier = LocalTier::new(CacheConfig::default()).unwrap();
        let t = TileId::from_lon_lat(2.35, 48.85, 14).unwrap();
        let one = serde_json::value::to_raw_value(&1).unwrap();
        let item = |id: &str, access| {
            Arc::new(StoredItem::new(
                id, 2.35, 48.85, "active", access, 1_000, &one,
            ))
        };
        let fill = Fill {
            items: vec![item("a", Access::Public), item("b", Access::Registered)],
            tiles: vec![(t, vec!["a".into(), "b".into()], 2_000)],
            fetched_at: Access::Registered,
            ..Fill::default()
        };
        tier.write(&fill, 0);
        let r = tier.read(&[t], &[], 100);
        let hit = r.tiles[0].as_ref().unwrap();
        assert_eq!((hit.items.len(), hit.fetched_at), (2, Access::Registered));
        // An agent's list replaces it.
        tier.write(
            &Fill {
                tiles: vec![(t, vec!["a".into()], 2_000)],
                ..Fill::default()
            },
            0,
        );
        let r = tier.read(&[t], &[], 100);
        assert_eq!(r.tiles[0].as_ref().unwrap().fetched_at, Access::Agent);
    }
}
