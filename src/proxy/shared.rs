//! The shared second level of the edge's cache: one entry per (tier, data tile) in a cache
//! that every isolate of a data centre reads (the Workers Cache API), under a GET URL the
//! shell builds from the tile and the tier. Sans IO: this module says which tiles to look
//! up, turns an entry into cache contents, and an isolate's cached tile into an entry; the
//! worker (js/edge.js) does the `match`/`put`.
//!
//! An entry is the protocol's answer for that one data tile at that tier, the body
//! `GET /v1/tiles/{z}/{x}/{y}?access=<tier>` on the server answers: the tile's list and the
//! items the tier may see, each with its `ttl` in seconds as of when it was stored. The
//! shell keeps [`SharedEntry::fetched_at_ms`] beside it: when the origin request it came
//! from was planned, which dates it against the changes from the feed
//! ([`super::change`]) and ages its TTLs when it is read back (a little early, by the
//! origin's round trip: on the safe side). Its lifetime is [`SharedEntry::max_age_s`], the
//! shortest TTL it holds, so the shared cache never keeps an item beyond its class TTL,
//! and never past [`super::ProxyConfig::changes_lookback_ms`] after that date: a new
//! isolate replays the changes of that window only, so an entry older than it could hold
//! an item a change before the window altered, which that isolate would never see (an
//! entry read back older than the look-back is refused too).
//!
//! # Tiers never cross
//! The key holds the tier, an entry is written only from the isolate's cache of that tier
//! (itself filled only by answers made at that tier), and an entry read back is refused
//! unless it reports the tier and the tile it is read for; what it holds then goes through
//! the same filter as an origin answer (`Proxy::fill`: anything above the tier is
//! dropped).

use super::{OutResponse, Pending, Proxy};
use crate::access::Access;
use crate::cache::TileFreshness;
use crate::protocol::{decode_response, BatchRequest, ErrorBody, ErrorCode, TileList};
use crate::tile::TileId;

/// An entry for the shared cache: the JSON body and how long it may be kept.
#[derive(Clone, Debug, PartialEq)]
pub struct SharedEntry {
    /// The protocol's answer for the one data tile at the tier.
    pub body: String,
    /// Seconds it may be kept: the shortest `ttl` of the list and the items, at least 1;
    /// and no longer than the look-back ([`super::ProxyConfig::changes_lookback_ms`]) leaves
    /// after [`SharedEntry::fetched_at_ms`] (whole seconds, rounded down).
    pub max_age_s: u32,
    /// When the origin request whose answer it holds was planned (ms since the epoch, this
    /// isolate's clock as the `now_ms` of the call reads it, after any step back): the date
    /// to store beside it and give back to [`Proxy::shared_fill`] (see [`super::change`] for
    /// why not the time it is stored).
    pub fetched_at_ms: u64,
}

/// How far ahead of this isolate's clock a shared-cache entry's date may be and still be
/// taken (as dated now): the skew between isolates' clocks and the time between a writer's
/// planning and a reader's `now`. A date further ahead is not a time a clock in step gives
/// (a corrupted or forged entry, `Infinity` read as the end of time, a writer's clock far
/// off): the entry is refused, a miss refetched. Taken, it would count as fetched now for
/// ever (no TTL aged, no change ever after its date) and be written back with that date.
pub const MAX_SHARED_DATE_AHEAD_MS: u64 = 60_000;

fn refused(message: String) -> ErrorBody {
    ErrorBody {
        code: ErrorCode::UpstreamError,
        message,
    }
}

impl Proxy {
    /// The data tiles of `pending` worth looking up in the shared cache: those the request
    /// needs that this isolate's cache of the request's tier does not hold fresh, at most
    /// `max`, in the order first requested. Empty when nothing goes to the origin.
    pub fn shared_lookups(&self, pending: &Pending, max: usize, now_ms: u64) -> Vec<TileId> {
        let now_ms = self.clock.read(now_ms);
        if pending.origin.is_none() {
            return Vec::new();
        }
        let tier = pending.request.access;
        let cache = &self.caches[tier.rank() as usize];
        pending
            .read
            .plan()
            .data_tiles()
            .iter()
            .copied()
            .filter(|&d| cache.tile_freshness(d, tier, now_ms) != TileFreshness::Fresh)
            .take(max)
            .collect()
    }

    /// Plans `pending`'s request again (after [`Proxy::shared_fill`] added tiles): what the
    /// cache now answers, and an origin request for the rest only. (Its request passed
    /// [`Proxy::begin`] once, so it passes again.)
    pub fn replan(&mut self, pending: Pending, now_ms: u64) -> Result<Pending, ErrorBody> {
        let now_ms = self.clock.read(now_ms);
        self.plan_at(pending.request, now_ms)
    }

    /// Fills `tier`'s cache from a shared-cache entry for data tile `tile`, fetched at
    /// `fetched_at_ms` ([`SharedEntry::fetched_at_ms`]): every `ttl` in it is shortened by
    /// the time since, and what has run out is left out. Returns the number of items taken,
    /// or why the entry was refused (it is not an answer for `tile` at `tier`, it is not a
    /// valid answer, it is dated more than [`MAX_SHARED_DATE_AHEAD_MS`] after this clock's
    /// wall time, or it was fetched before a change that covers it, [`super::change`]). A
    /// date ahead by less counts as now: it is filled, and dated, as fetched now.
    pub fn shared_fill(
        &mut self,
        tier: Access,
        tile: TileId,
        body: &[u8],
        fetched_at_ms: u64,
        now_ms: u64,
    ) -> Result<usize, ErrorBody> {
        let now_ms = self.clock.read(now_ms);
        // Wall time against wall time: the entry's date is another isolate's wall clock (or
        // ours, `shared_entry`), and ours runs ahead of the wall once it stepped back.
        let wall_now = self.clock.wall(now_ms);
        let result = if fetched_at_ms > wall_now.saturating_add(MAX_SHARED_DATE_AHEAD_MS) {
            Err(refused(format!(
                "the shared cache's entry for {tile} is dated {fetched_at_ms}, more than {} s after this isolate's clock ({wall_now}): not a time",
                MAX_SHARED_DATE_AHEAD_MS / 1000
            )))
        } else {
            let fetched_at_ms = fetched_at_ms.min(wall_now);
            (self.shared_decode(tier, tile, body, fetched_at_ms, wall_now))
                .map(|response| (response, fetched_at_ms))
        };
        match result {
            Ok((response, fetched_at_ms)) => {
                let n = response.items.len();
                self.fill(tier, response, &[], now_ms, Some(fetched_at_ms));
                self.stats.shared_fills += 1;
                Ok(n)
            }
            Err(e) => {
                self.stats.shared_refused += 1;
                Err(e)
            }
        }
    }

    /// The warming `request` (an [`super::Answer::warm`]) after the shared cache's entries
    /// for its tiles were taken ([`Proxy::shared_fill`], at its tier): the tiles its tier's
    /// cache now holds fresh are not asked of the origin, which another isolate already
    /// paid for. Returns the warming to send for the rest, planned when the whole was (its
    /// answer is judged by that planning, [`super::change`]); `request` itself when no tile
    /// was filled; `None` when nothing is left to send: every tile was filled, or a change
    /// since its planning means its answer would not be written. It no longer counts as out
    /// then, as after its answer.
    pub fn warm_rest(&mut self, request: &BatchRequest, now_ms: u64) -> Option<BatchRequest> {
        let now_ms = self.clock.read(now_ms);
        let tier = request.access;
        let cache = &self.caches[tier.rank() as usize];
        let (filled, rest): (Vec<TileId>, Vec<TileId>) = (request.tiles.iter())
            .partition(|&&t| cache.tile_freshness(t, tier, now_ms) == TileFreshness::Fresh);
        if filled.is_empty() {
            return Some(request.clone());
        }
        for t in filled {
            self.warm_tries.forget(&(tier, t));
        }
        if rest.is_empty() {
            self.changes.warm_current(tier, &request.tiles, now_ms);
            return None;
        }
        self.changes
            .warm_narrowed(tier, &request.tiles, &rest, now_ms)
            .then(|| BatchRequest {
                tiles: rest,
                ids: request.ids.clone(),
                access: tier,
            })
    }

    fn shared_decode(
        &self,
        tier: Access,
        tile: TileId,
        body: &[u8],
        fetched_at_ms: u64,
        wall_now: u64,
    ) -> Result<crate::protocol::BatchResponse<crate::protocol::RawData>, ErrorBody> {
        let mut response = decode_response(body, &self.config.limits).map_err(|e| {
            refused(format!(
                "the shared cache's entry for {tile} is invalid: {e}"
            ))
        })?;
        if response.access != Some(tier) {
            return Err(refused(format!(
                "the shared cache's entry for {tile} at tier \"{tier}\" reports tier {:?}",
                response.access.map(Access::as_str)
            )));
        }
        if tile.z() != self.config.cache.tile_zoom
            || response.tiles.len() != 1
            || response.tiles[0].tile != tile
        {
            return Err(refused(format!(
                "the shared cache's entry for {tile} is not that data tile's answer"
            )));
        }
        // Whole seconds since it was fetched, rounded up (its date is at most now).
        let age_ms = wall_now.saturating_sub(fetched_at_ms);
        // Written with a max-age that ends within the look-back (`shared_entry`); one read
        // later (another writer's clock, or a writer that did not cap it) may predate a
        // change this isolate never replayed.
        if age_ms >= self.config.changes_lookback_ms {
            return Err(refused(format!(
                "the shared cache's entry for {tile} was fetched {} s ago, longer than the change look-back ({} s)",
                age_ms / 1000,
                self.config.changes_lookback_ms / 1000
            )));
        }
        let age_s = u32::try_from(age_ms.div_ceil(1000)).unwrap_or(u32::MAX);
        let list = &mut response.tiles[0];
        match list.ttl {
            Some(t) if t > age_s => list.ttl = Some(t - age_s),
            _ => {
                return Err(refused(format!(
                    "the shared cache's entry for {tile} has expired"
                )))
            }
        }
        response.items.retain_mut(|it| match it.ttl {
            Some(t) if t > age_s => {
                it.ttl = Some(t - age_s);
                true
            }
            _ => false,
        });
        response.missing.clear();
        if self.changes.covers_entry(tile, &response, fetched_at_ms) {
            return Err(refused(format!(
                "the shared cache's entry for {tile} was fetched before a change that covers it"
            )));
        }
        Ok(response)
    }

    /// The shared-cache entry for data tile `tile` at `tier`, when this isolate's cache of
    /// `tier` holds it fresh (and remembers when it was fetched, [`super::change`]) and it
    /// was fetched less than a second short of the look-back ago
    /// ([`super::ProxyConfig::changes_lookback_ms`]: nothing is left of its lifetime).
    pub fn shared_entry(&mut self, tier: Access, tile: TileId, now_ms: u64) -> Option<SharedEntry> {
        let now_ms = self.clock.read(now_ms);
        let cache = &self.caches[tier.rank() as usize];
        if cache.tile_freshness(tile, tier, now_ms) != TileFreshness::Fresh {
            return None;
        }
        let fetched_at_ms = self.changes.fetched_at(tier, tile)?;
        // What the look-back leaves of its lifetime, in whole seconds rounded down (the
        // Cache API's max-age counts from the write, which is after `fetched_at_ms`).
        let left_ms = self
            .config
            .changes_lookback_ms
            .saturating_sub(now_ms.saturating_sub(fetched_at_ms));
        let left_s = u32::try_from(left_ms / 1000).unwrap_or(u32::MAX);
        if left_s == 0 {
            return None;
        }
        let (items, exp) = self.read_data_tile(tile, tier, now_ms);
        let list_ttl = crate::protocol::ttl_left_s(exp, now_ms);
        let max_age_s = items
            .iter()
            .filter_map(|i| i.ttl)
            .chain([list_ttl])
            .min()
            .unwrap_or(list_ttl)
            .max(1)
            .min(left_s);
        let out = OutResponse {
            tiles: vec![TileList {
                tile,
                ids: items.iter().map(|i| i.id.as_str()).collect(),
                ttl: Some(list_ttl),
            }],
            items: items.iter().collect(),
            missing: Vec::new(),
            access: Some(tier),
        };
        let body = serde_json::to_string(&out).ok()?;
        Some(SharedEntry {
            body,
            max_age_s,
            // On the shell's clock, which the other isolates read it by.
            fetched_at_ms: self.clock.wall(fetched_at_ms),
        })
    }
}
