//! Answering one batch request through the core's caching-proxy policy
//! ([`tilewarm::proxy::policy`], the one the edge runs too): plan the data tiles, read the
//! cache tier, make at most one origin call for every miss, write the misses back, filter
//! for the caller's verified tier, serialise. This module is the shell: the tier, the
//! origin and the metrics are its; what to read, ask, write and answer is the policy's.
//!
//! # How requested tiles map onto the cache tier
//! The tier keys tile lists by *data tile* (`--data-zoom`, default 14).
//! - A tile at the data zoom or finer is answered from its data-zoom ancestor; a finer
//!   tile keeps only the items positioned inside it.
//! - A tile up to `--split-levels` (default 3) coarser is split onto its `4^levels` data
//!   tiles, each read and cached on its own.
//! - A coarser tile is answered straight from the origin (in the same single origin call)
//!   and not cached: it may hold thousands of homes and would fan out onto too many keys.
//!   Before calling (after the tier read, which the request's slot covers as for any
//!   request), its size is bounded by the origin (`OriginService::count_up_to`: free in
//!   memory, one `LIMIT`ed query for PostGIS, unknown upstream); a request whose tiles hold
//!   more than `--max-response-items` items for the caller is refused with a 400 that names
//!   the count. The count is not trusted to hold until the fetch (the data set can grow in
//!   between): the fetch carries the same limit for the same tiles and tier
//!   ([`crate::origin::ItemBound`]: PostGIS reads them with `LIMIT max + 1`), and an answer
//!   over it is the same 400, with nothing of it cached.
//! - A request covering more than `--max-data-tiles` data tiles once split (default 1024) is
//!   refused with a 400 by the policy's plan, before the tier or the origin is touched.
//! - A data tile holding more than `--max-tile-items` at the origin is left out of the
//!   origin's answer ([`crate::origin::Answer`]) and not cached. The limit is the caller's:
//!   the tile is counted at `agent` (the tier asked, so one list serves every tier), and
//!   for a caller below it asked for again at the caller's tier, its list then served and
//!   cached as fetched at that tier ([`crate::tier::TileHit::fetched_at`]: a miss for a
//!   caller above it). Requests of one tier share that call (single flight by tile and
//!   tier). What is over the limit at the caller's tier is reported unanswered in a partial
//!   answer (`error`, `payload_too_large`, naming the tile, its count of the items the
//!   caller may see and the limit), the rest answered, and remembered at that tier for a
//!   tile TTL, or until an invalidation covers it ([`crate::warmup::OverLimit`]): the next
//!   request at that tier, and only at it, is told so with no origin call.
//! - An answer holds at most `--max-response-items` items and what clients read
//!   (`Limits::max_body_bytes`, 8 MiB, an upper bound counted before it is written): what
//!   fits is answered in request order and the rest left out of a partial answer
//!   (`response_full`: the client asks it again), a tile over it alone named
//!   (`payload_too_large`) (`policy::Assembled::fit`, as the edge does).
//! - When an upstream's partial answer to the call at `agent` names and leaves out ids (an
//!   item over its `--max-item-data-bytes`, or no room in its answer), every id it was
//!   asked is asked of it again at the tier of a caller below `agent` (one more origin
//!   call; all of them, as which it left out depends on the items above the caller's tier
//!   its answer held, and so would which of those the second answer has room for), and
//!   what it says there is told: an id above the caller's tier is `missing`, as one that
//!   does not exist, however full the answer at `agent` was. So are the data tiles it had
//!   no room for (`response_full`), with those over the limit (above: single flight by
//!   tile and tier): whether they fit at `agent` depends on the items above the caller's
//!   tier. That call asks every other data tile of the request's call at `agent` too, as
//!   padding (its lists there dropped): which tiles it has room for never depends on which
//!   were asked again; and what it has no room for is left out as it says, even if
//!   answered at `agent` (a tile too large alone there is skipped, and leaves the next
//!   room there that it takes at the caller's tier).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tilewarm::access::Access;
use tilewarm::cache::CacheConfig;
use tilewarm::protocol::{BatchRequest, BatchResponse, ErrorCode, RawData, TileList, Unanswered};
use tilewarm::proxy::policy::{
    error_bytes_at_most, quoted_bytes, reserved_bytes, CoarseMiss, IdSource, Plan, Room, Rules,
    TileSource, WriteBack, ANSWER_BYTES, LIST_BYTES,
};
use tilewarm::tile::TileId;

use crate::admission::{HeldSlot, OriginWait};
use crate::origin::{CallSource, ItemBound, OriginFailure};
use crate::single_flight::{Followed, Lead, LeftOut, TileAnswer};
use crate::tier::{now_ms, ttl_left_s, Fill, Generations, StoredItem, TierRead};
use crate::App;

/// A request the server refuses after decoding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
    /// The `Retry-After` of a 429 or 503, in seconds, when not `--retry-after-s` (an
    /// upstream's own, passed on: [`OriginFailure::retry_after_s`]).
    pub retry_after_s: Option<u64>,
    /// The origin refused the call in a way retrying will not change
    /// ([`OriginFailure::Misconfigured`], [`OriginFailure::Unservable`]): followers are
    /// told so too (`for_followers`).
    pub lasting: bool,
}

impl Refusal {
    /// A refusal with this code and message (and the server's `Retry-After`, if any).
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
            retry_after_s: None,
            lasting: false,
        }
    }
}

/// A data tile's items and the expiry of its list, from the origin.
type TileItems = (Vec<Arc<StoredItem>>, u64);

/// Turns an origin answer (asked at the top tier) into cache records: each item's expiry
/// from the class TTL policy, each tile list's from the tile TTL.
pub fn fill_from(
    response: BatchResponse<RawData>,
    cache: &CacheConfig,
    tile_ttl_ms: u64,
    now: u64,
) -> (Fill, HashMap<String, Arc<StoredItem>>) {
    let mut by_id = HashMap::with_capacity(response.items.len());
    let mut fill = Fill::default();
    for it in response.items {
        let ttl = cache.ttl_for(&it.class, it.ttl.map(|s| s as u64 * 1000));
        let stored = Arc::new(StoredItem::new(
            &it.id,
            it.lon,
            it.lat,
            &it.class,
            it.access,
            now.saturating_add(ttl),
            &it.data,
        ));
        by_id.insert(it.id, Arc::clone(&stored));
        fill.items.push(stored);
    }
    for list in response.tiles {
        let exp = now.saturating_add(tile_ttl_ms);
        fill.tiles.push((list.tile, list.ids, exp));
    }
    (fill, by_id)
}

/// The response JSON: the protocol's `BatchResponse`, byte for byte what serde_json writes
/// for it, with each item's stored wire text copied in (not re-serialised) and its `ttl`
/// (seconds left at `now`) spliced in.
pub fn write_response(
    access: Access,
    tiles: &[TileList<&str>],
    items: &[&StoredItem],
    missing: &[String],
    now: u64,
) -> Result<String, serde_json::Error> {
    let tiles = serde_json::to_string(tiles)?;
    let missing = serde_json::to_string(missing)?;
    let wire_len: usize = items.iter().map(|it| it.wire_len() + 11).sum();
    let mut out = String::with_capacity(64 + tiles.len() + wire_len + missing.len());
    out.push_str("{\"access\":\"");
    out.push_str(access.as_str());
    out.push_str("\",\"tiles\":");
    out.push_str(&tiles);
    out.push_str(",\"items\":[");
    for (i, it) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        it.write_wire(&mut out, ttl_left_s(it.exp(), now));
    }
    out.push_str("],\"missing\":");
    out.push_str(&missing);
    out.push('}');
    Ok(out)
}

/// Answers a decoded request with the response JSON, filtered for `tier`: the caller's
/// verified tier lowered by the request's `access` (HTTP decides it; `req.access` is not
/// read here). The response's `access` reports it.
///
/// `slot` is given back before the request waits for an origin whose call is a wait
/// (`OriginService::waits`; `crate::admission`).
pub async fn answer(
    app: &App,
    req: &BatchRequest,
    tier: Access,
    slot: &HeldSlot,
) -> Result<String, Refusal> {
    let dz = app.config.data_zoom;
    let caller = tier;

    // 1. Route every requested tile; collect the data tiles once each.
    let plan = Plan::new(
        &req.tiles,
        Rules {
            data_zoom: dz,
            split_levels: app.config.split_levels,
            coarse_miss: CoarseMiss::FetchDataTiles,
            max_data_tiles: app.config.max_data_tiles,
        },
    )
    .map_err(|e| Refusal::new(ErrorCode::BadRequest, e.to_string()))?;
    let data_tiles = plan.data_tiles().to_vec();
    let direct = plan.direct_tiles();
    let max = app.config.max_response_items;
    // Every wait for the origin below draws on one budget (`OriginDeadline`).
    let mut deadline = OriginDeadline::new(app.config.origin_timeout_ms);

    // 2. The cache tier; unavailable means everything is a miss and nothing is written.
    let mut degraded = !app.tier.available();
    let read_tier = !degraded;
    let read = if degraded {
        None
    } else {
        match app.tier.read(&data_tiles, &req.ids).await {
            Ok(r) => Some(r),
            Err(_) => {
                degraded = true;
                None
            }
        }
    };
    let mut read = read.unwrap_or_else(|| TierRead {
        tiles: (0..data_tiles.len()).map(|_| None).collect(),
        ids: (0..req.ids.len()).map(|_| None).collect(),
        ..TierRead::default()
    });
    // A list fetched below the caller's tier (a tile over --max-tile-items at `agent`,
    // step 3) may lack items the caller may see: a miss for it.
    for hit in &mut read.tiles {
        if hit.as_ref().is_some_and(|h| h.fetched_at < caller) {
            *hit = None;
        }
    }
    if degraded {
        app.metrics.degraded_requests.fetch_add(1, Relaxed);
    }
    if read_tier {
        // The adaptive limit learns from holds that did this work (`crate::adaptive`).
        slot.worked();
    }
    let m = &app.metrics.cache;
    let tile_hits = read.tiles.iter().filter(|t| t.is_some()).count() as u64;
    let id_hits = read.ids.iter().filter(|t| t.is_some()).count() as u64;
    m.tile_hits.fetch_add(tile_hits, Relaxed);
    m.tile_misses
        .fetch_add(data_tiles.len() as u64 - tile_hits, Relaxed);
    m.id_hits.fetch_add(id_hits, Relaxed);
    m.id_misses
        .fetch_add(req.ids.len() as u64 - id_hits, Relaxed);

    // The direct tiles are bounded before paying for them (free in memory; see `origin`'s
    // docs), after the tier read, which the slot covers as for any request. Counting asks
    // an origin out of process, and such a wait is not this server's work: the slot goes
    // back first, and the place taken among the requests waiting for the origin is the
    // one the fetch below waits in (one place per request).
    let mut origin_wait = None;
    if !direct.is_empty() {
        if app.origin.waits() {
            origin_wait = Some(wait_for_origin(app, slot)?);
        }
        let ms = deadline.left_ms(app)?;
        let count = app
            .origin
            .count_up_to(&direct, caller, max, ms)
            .await
            .map_err(|f| origin_refusal(app, &f))?;
        if let crate::origin::ItemCount::MoreThan(_) = count {
            return Err(over_max_items(max));
        }
        if let Some(n) = count.exceeds(max) {
            return Err(too_many_items(n, max));
        }
    }

    // 3. One origin call for every miss, written back. A data tile another request is
    //    fetching is not asked again: this one follows it (`single_flight`).
    let found: Vec<bool> = read.tiles.iter().map(Option::is_some).collect();
    let policy = plan.read(&found);
    let miss_ids: Vec<String> = req
        .ids
        .iter()
        .zip(&read.ids)
        .filter(|(_, hit)| hit.is_none())
        .map(|(id, _)| id.clone())
        .collect();
    let (data_misses, forwarded): (Vec<TileId>, Vec<TileId>) = policy
        .origin_tiles()
        .into_iter()
        .partition(|&t| policy.cacheable(t));
    // A data tile found over --max-tile-items at the caller's tier within the tile TTL,
    // and not invalidated since, is left out at once for the reason found then, with no
    // origin call (`warmup::OverLimit`: what was found at this tier only).
    let epoch = app.invalidation.guard.epoch();
    let now = crate::warmup::OverLimit::now();
    let mut remembered = Vec::new();
    let data_misses: Vec<TileId> = data_misses
        .into_iter()
        .filter(|&t| match app.warmup.over_limit.why(t, caller, now) {
            Some(why) => {
                remembered.push(why);
                false
            }
            None => true,
        })
        .collect();
    let (lead, follows) = app.single_flight.claim(&data_misses, Access::Agent);
    let mut ask = lead.tiles();
    ask.extend(forwarded);
    // Waiting for the origin (this request's call or another's) is not the server's work:
    // the slot goes back (unless the origin's call is this process's CPU work), and a
    // bounded number of requests may wait.
    let needs_origin = !(ask.is_empty() && miss_ids.is_empty() && follows.is_empty());
    if needs_origin && origin_wait.is_none() {
        origin_wait = Some(wait_for_origin(app, slot).inspect_err(|refusal| lead.fail(refusal))?);
    }
    let _origin_wait = origin_wait;
    let mut fetched = Fetched::default();
    // Asked again at the caller's tier below `agent` if the answer at `agent` leaves any out.
    let asked_ids = if caller < Access::Agent {
        miss_ids.clone()
    } else {
        Vec::new()
    };
    if !ask.is_empty() || !miss_ids.is_empty() {
        // The direct tiles, counted above, are fetched under the same limit.
        let bound = (!direct.is_empty()).then_some(ItemBound {
            tiles: &direct,
            access: caller,
            limit: max,
        });
        // A budget already spent refuses here, the lead unpublished: its followers have
        // budgets of their own and claim those tiles again (`Followed::Abandoned`).
        let ms = deadline.left_ms(app)?;
        let call = fetch(
            app,
            &policy,
            ask,
            miss_ids,
            degraded,
            bound,
            ms,
            &read.gens,
            (Access::Agent, caller),
            0,
        )
        .await;
        match call {
            Ok(f) => {
                lead.publish(|t| f.for_followers(t));
                fetched = f;
                fetched.write_back(app).await;
            }
            Err(refusal) => {
                share_failure(&lead, &refusal, ms != app.config.origin_timeout_ms);
                return Err(refusal);
            }
        }
    }
    // The led tiles are written: followers from now on read them from the tier.
    drop(lead);
    let mut follows = follows;
    while !follows.is_empty() {
        let mut abandoned = Vec::new();
        for f in follows {
            let tile = f.tile;
            let followed = match deadline.left(app)? {
                None => f.wait().await,
                Some(left) => tokio::time::timeout(left, f.wait())
                    .await
                    .map_err(|_| deadline.spent(app))?,
            };
            match followed {
                Followed::Answer(Some(list)) => {
                    fetched.tiles.insert(tile, list);
                }
                Followed::Answer(None) => {}
                // Reported as the leader reports it (`Fetched::for_followers`).
                Followed::LeftOut(why) => fetched.left_out(why),
                Followed::Failed(refusal) => return Err(refusal),
                Followed::Abandoned => abandoned.push(tile),
            }
        }
        // Their leader went away unanswered (its caller hung up): claimed again, the first
        // of its followers to do so asks for them, the others follow it.
        let (lead, more) = app.single_flight.claim(&abandoned, Access::Agent);
        let led = lead.tiles();
        if !led.is_empty() {
            let ms = deadline.left_ms(app)?;
            let gens = &read.gens;
            let at = (Access::Agent, caller);
            let call = fetch(
                app,
                &policy,
                led,
                Vec::new(),
                degraded,
                None,
                ms,
                gens,
                at,
                0,
            );
            match call.await {
                Ok(mut again) => {
                    lead.publish(|t| again.for_followers(t));
                    again.write_back(app).await;
                    fetched.add(again);
                }
                Err(refusal) => {
                    share_failure(&lead, &refusal, ms != app.config.origin_timeout_ms);
                    return Err(refusal);
                }
            }
        }
        follows = more;
    }
    // A data tile over --max-tile-items at `agent` (asked there so that one list serves
    // every tier) may hold at most that many items a caller below `agent` may see: it is
    // asked again at the caller's tier (PostGIS filters the tier before its `LIMIT`), and
    // that list is served, and cached as fetched at that tier (a miss for callers above
    // it). Only what is still over the limit at the caller's tier is left out, named with
    // its count at that tier.
    let too_large_at_top: Vec<TileId> = fetched
        .too_large_at_top()
        .into_iter()
        .filter(|&t| policy.cacheable(t))
        .collect();
    // Remembered for a tile TTL: warm-up (which asks at `agent`) skips them, and an agent
    // caller is told at once.
    // Each for its own reason: a tile another call left out for another reason (shed load,
    // no room) is merged under the first reason of the answer (`Fetched::told`), and is not
    // over the limit.
    let over: Vec<(TileId, LeftOut)> = too_large_at_top
        .iter()
        .filter_map(|&t| fetched.over_reason(t).map(|why| (t, why)))
        .collect();
    let until = crate::warmup::OverLimit::until(app.tile_ttl_ms);
    let guard = &app.invalidation.guard;
    let over_limit = &app.warmup.over_limit;
    over_limit.found_since(guard, epoch, Access::Agent, over, until);
    // So are, below `agent`, the data tiles an upstream's answer at `agent` had no room for
    // (`response_full`): whether they fit there depends on the items above the caller's
    // tier it held; left out, they told a caller padding its request how many there were.
    let mut again_at_caller = too_large_at_top;
    if caller < Access::Agent {
        again_at_caller.extend(fetched.no_room_at_top().filter(|&t| policy.cacheable(t)));
        again_at_caller.sort_unstable();
        again_at_caller.dedup();
    }
    // Below `agent`, the ids an upstream's partial answer at `agent` named are asked again
    // (below); forgotten now, so that its reason does not stand for the tiles asked again
    // at the caller's tier (the first reason stands, `Fetched::told`): which ids it left out
    // depends on the items above the caller's tier, and told `payload_too_large` for a tile
    // that answer had no room for, a client would not ask it again.
    let ids_named = caller < Access::Agent && !fetched.forget_ids().is_empty();
    if caller < Access::Agent && !again_at_caller.is_empty() {
        fetched.forget_tiles(&again_at_caller);
        // An upstream's answer has room for so many items: the call at the caller's tier
        // asks every data tile this request asked at `agent` (or followed there), those not
        // asked again only as padding, so that what it has room for never depends on which
        // were asked again (on the items above the caller's tier). Other backends leave
        // nothing out for room.
        let padding = match app.origin.kind() {
            "upstream" => data_misses.clone(),
            _ => Vec::new(),
        };
        let again = at_callers_tier(
            app,
            &policy,
            (&again_at_caller, &padding),
            degraded,
            &mut deadline,
            &read.gens,
            caller,
        )
        .await;
        fetched.add(again);
        // What the call at the caller's tier had no room for is told so, though the call at
        // `agent` answered it: which it answered there (its tiles too large alone there were
        // skipped) depends on the items above the caller's tier.
        for (t, why) in std::mem::take(&mut fetched.padding_left_out) {
            if !again_at_caller.contains(&t) && fetched.tiles.remove(&t).is_some() {
                fetched.left_out(why);
            }
        }
    }
    // The ids an upstream's partial answer named and left out (asked at `agent`: one over
    // its --max-item-data-bytes, or one its answer had no room for, `response_full`, which
    // folds the first in) are asked again at the caller's tier, below `agent`: what it then
    // says of them is what it says to the caller. Called `missing` here, public items that
    // did not fit upstream were lost; left out, an id above the caller's tier that is over
    // the upstream's limit could be told from one that does not exist (`missing` at once),
    // by a caller padding its request until the upstream's answer is full. Every id the
    // call at `agent` was asked is asked again, not only those left out: which those were
    // depends on the items above the caller's tier the answer held, and so would which of
    // them the answer at the caller's tier has room for.
    if ids_named {
        let again = ids_at_callers_tier(
            app,
            &policy,
            asked_ids,
            degraded,
            &mut deadline,
            &read.gens,
            caller,
        )
        .await;
        fetched.add(again);
    }
    // Those left out at once, as found before (neither asked again nor remembered anew).
    app.metrics
        .tiles_over_limit_remembered
        .fetch_add(remembered.len() as u64, Relaxed);
    for why in remembered {
        fetched.left_out(why);
    }
    let (fetched_tiles, fetched_items, origin_missing) =
        (&fetched.tiles, &fetched.items, &fetched.missing);

    // 4. Assemble for the caller.
    let now = now_ms();
    // Requested items the origin left out for their size, that the caller may see (one it
    // may not is `missing`, as any item above its tier).
    let too_large = |id: &String| fetched.too_large.iter().find(|o| o.id == *id);
    let ids = req.ids.iter().zip(&read.ids).map(|(id, hit)| {
        // A copy the tier held is not served when the origin's answer says the item is
        // too large now (the fresh answer wins; it was dropped from the tier above).
        match hit
            .as_ref()
            .filter(|_| too_large(id).is_none())
            .or_else(|| fetched_items.get(id))
            .map(|it| &**it)
        {
            Some(it) => IdSource::Found(it),
            None if origin_missing.contains(id) => IdSource::Missing,
            None if too_large(id).is_some_and(|o| !caller.can_see(o.access)) => IdSource::Missing,
            // The origin's answer says nothing of it (an upstream's partial answer, at the
            // caller's tier: one to a call at `agent` was asked again at it, step 3).
            None => IdSource::Unanswered,
        }
    });
    let mut assembled = policy.assemble(
        caller,
        |i| {
            read.tiles[i].as_ref().map(|hit| TileSource {
                items: hit.items.iter().collect(),
                ttl_s: Some(ttl_left_s(hit.exp, now)),
            })
        },
        |t| {
            fetched_tiles.get(&t).map(|(v, e)| TileSource {
                items: v.iter().map(|it| &**it).collect(),
                ttl_s: Some(ttl_left_s(*e, now)),
            })
        },
        &req.ids,
        ids,
    );
    // What clients read of an answer (`Limits::max_body_bytes`) and --max-response-items:
    // what fits is answered, in request order, and the rest left out to be asked again
    // (`response_full`); a tile that cannot fit alone is left out as too large. Counted
    // before it is written, with room kept for the `error` member whatever it leaves out.
    let max_bytes = tilewarm::protocol::Limits::default().max_body_bytes;
    let room = Room {
        items: max,
        bytes: max_bytes.saturating_sub(reserved_bytes(&req.tiles, &req.ids)),
    };
    let left = assembled.fit(room, &req.ids, |it| it.wire_len() + 11);
    let unanswered = assembled.is_partial().then(|| {
        let left_out = format!(
            "the origin's answer left out {} of the tiles and {} of the ids asked for",
            assembled.unanswered_tiles.len(),
            assembled.unanswered_ids.len()
        );
        // A tile over --max-tile-items or an item over --max-item-data-bytes is the data's
        // size, not a failing origin: the first is named, with its size and the limit. A
        // tile's count is of the items the caller may see: below `agent` it was asked
        // again at the caller's tier (step 3), so the count never includes items above it.
        let tile = fetched.over_limit.first().map(|over| {
            if over.at <= caller {
                over.to_string()
            } else {
                // Not reached (each such tile is asked again at the caller's tier above):
                // its count would include items above the caller's tier.
                format!(
                    "tile {} is left out (--max-tile-items), not cached",
                    over.tile
                )
            }
        });
        let item = assembled
            .unanswered_ids
            .iter()
            .find_map(too_large)
            .map(|o| format!("{o} (--max-item-data-bytes)"));
        // An upstream's own reason (it was asked at `agent`: its message may count items
        // above the caller's tier, so below `agent` only its code is told).
        let upstream = fetched.unanswered.as_ref().map(|u| match caller {
            Access::Agent => (
                u.code,
                format!("{left_out}: the origin says: {}", u.message),
            ),
            _ => (
                u.code,
                format!("{left_out}: the origin left them out ({})", u.code),
            ),
        });
        // One code for all: a call's failure (an upstream's partial answer, or the call at
        // the caller's tier: shed load, no room) wins over the size, as what it left out
        // is not too large: told `payload_too_large`, a client would not retry it as the
        // overload and an edge would not warm it for a tile TTL.
        let (code, message) = match (tile.or(item), upstream) {
            (Some(why), Some((code, told))) if code != ErrorCode::PayloadTooLarge => {
                (code, format!("{told}; {why}"))
            }
            (Some(why), _) => (ErrorCode::PayloadTooLarge, format!("{left_out}: {why}")),
            (None, Some(told)) => told,
            (None, None) => (ErrorCode::UpstreamError, left_out),
        };
        Unanswered {
            code,
            message,
            tiles: assembled.unanswered_tiles,
            ids: assembled.unanswered_ids,
        }
    });
    let unanswered = left.report(unanswered, max, max_bytes);
    let (lists, items, missing) = (assembled.tiles, assembled.items, assembled.missing);
    // `fit` kept it within both bounds; this only guards its accounting.
    let bytes = response_bytes_at_most(&lists, &items, &missing, unanswered.as_ref());
    if bytes > max_bytes || items.len() > max {
        return Err(Refusal::new(
            ErrorCode::Internal,
            format!(
                "response would be about {bytes} bytes and {} items, over what was fitted \
                 ({max_bytes} bytes, {max} items): a bug, please report it",
                items.len()
            ),
        ));
    }

    // 5. Warm the neighbours, off the request path.
    if !degraded {
        app.warmup.plan(&data_tiles);
    }

    let serialise = |e: serde_json::Error| {
        Refusal::new(
            ErrorCode::Internal,
            format!("could not serialise the response: {e}"),
        )
    };
    let mut json = write_response(caller, &lists, &items, &missing, now).map_err(serialise)?;
    if let Some(error) = unanswered {
        // A partial answer: the `error` member goes last, inside the object.
        json.pop();
        json.push_str(",\"error\":");
        json.push_str(&serde_json::to_string(&error).map_err(serialise)?);
        json.push('}');
    }
    Ok(json)
}

/// One origin call's answer: tile lists and items by id, and what to write back (`None`
/// when the tier is not written: degraded), with the invalidation epoch it was asked at.
#[derive(Default)]
struct Fetched {
    tiles: HashMap<TileId, TileItems>,
    items: HashMap<String, Arc<StoredItem>>,
    /// The ids the origin said do not exist.
    missing: HashSet<String>,
    /// Tiles the origin left out: over `--max-tile-items`.
    over_limit: Vec<crate::origin::TileOverLimit>,
    /// Items the origin left out: their `data` over `--max-item-data-bytes`.
    too_large: Vec<tilewarm::protocol::DataTooLarge>,
    /// What an upstream's partial answer left out, and why.
    unanswered: Option<Unanswered>,
    /// What upstreams' partial answers left out as `payload_too_large`, each answer's own
    /// (`unanswered` holds every call's under the first reason): what is remembered over
    /// the limit ([`Fetched::over_reason`]).
    told_too_large: Vec<Unanswered>,
    fill: Option<Fill>,
    epoch: u64,
    /// Why a call at the caller's tier left out tiles it was asked as padding
    /// ([`at_callers_tier`]).
    padding_left_out: Vec<(TileId, LeftOut)>,
}

impl Fetched {
    /// Writes the call's answer back (when the tier is written). Nothing that changed while
    /// it was being fetched is written back; an item it left out for its size is dropped
    /// from the tier first (`invalidate::forget_too_large`: a copy cached while it was
    /// smaller is not served on). A failure marks the tier down; the answer is unaffected.
    async fn write_back(&mut self, app: &App) {
        if let Some(mut fill) = self.fill.take() {
            let _ = crate::invalidate::forget_too_large(app, &self.too_large).await;
            let _ = crate::invalidate::write_back(app, &mut fill, self.epoch).await;
        }
    }

    /// What the requests following data tile `t` are handed: its list, or why the
    /// origin's answer left it out (over `--max-tile-items`, or named by an upstream's
    /// partial answer: its code and message, not the ids it names), or neither.
    fn for_followers(&self, t: TileId) -> Result<TileAnswer, LeftOut> {
        if let Some(list) = self.tiles.get(&t) {
            return Ok(Some(list.clone()));
        }
        if let Some(over) = self.over_limit.iter().find(|o| o.tile == t) {
            return Err(LeftOut::OverLimit(*over));
        }
        match self.unanswered.as_ref().filter(|u| u.tiles.contains(&t)) {
            Some(u) => Err(LeftOut::told(u, t)),
            None => Ok(None),
        }
    }

    /// Why data tile `t` was left out as over `--max-tile-items` (this server's count, or
    /// an upstream's `payload_too_large` for it, not another reason merged with one).
    fn over_reason(&self, t: TileId) -> Option<LeftOut> {
        if let Some(over) = self.over_limit.iter().find(|o| o.tile == t) {
            return Some(LeftOut::OverLimit(*over));
        }
        let u = self.told_too_large.iter().find(|u| u.tiles.contains(&t))?;
        Some(LeftOut::told(u, t))
    }

    /// Adds a tile left out for `why` (by a leader's call, or found so before).
    fn left_out(&mut self, why: LeftOut) {
        match why {
            LeftOut::OverLimit(over) => self.over_limit.push(over),
            LeftOut::Told(told) => self.told(told),
        }
    }

    /// Adds what an upstream's partial answer left out (another call's, or a leader's for
    /// a followed tile): its tiles and ids; the first reason stands, but shed load or a
    /// failure wins over `payload_too_large` ([`Fetched::merge_told`]).
    fn told(&mut self, told: Unanswered) {
        if told.code == ErrorCode::PayloadTooLarge {
            self.told_too_large.push(told.clone());
        }
        self.merge_told(told);
    }

    /// [`Fetched::told`] of what is recorded in `told_too_large` already.
    fn merge_told(&mut self, told: Unanswered) {
        match &mut self.unanswered {
            Some(u) => {
                // As in the answer's one code (step 4): what shed load or a failure left
                // out is not too large, and told `payload_too_large` it would not be asked
                // again (a client gives it up, an edge holds it for a tile TTL). Not
                // `response_full`: below `agent` the ids a `payload_too_large` names are
                // `missing`, and under `response_full` they would be named unanswered.
                let size = ErrorCode::PayloadTooLarge;
                if u.code == size
                    && !matches!(
                        told.code,
                        ErrorCode::PayloadTooLarge | ErrorCode::ResponseFull
                    )
                {
                    u.code = told.code;
                    // The size's reason stays in the message (once: the code is no longer
                    // `payload_too_large` after).
                    u.message = format!("{}; {}", told.message, u.message);
                }
                u.tiles.extend(told.tiles);
                u.ids.extend(told.ids);
            }
            None => self.unanswered = Some(told),
        }
    }

    /// Adds another call's answer (an abandoned leader's, or tiles or ids asked again at the
    /// caller's tier).
    fn add(&mut self, again: Fetched) {
        self.tiles.extend(again.tiles);
        self.items.extend(again.items);
        self.missing.extend(again.missing);
        self.over_limit.extend(again.over_limit);
        self.too_large.extend(again.too_large);
        self.told_too_large.extend(again.told_too_large);
        if let Some(told) = again.unanswered {
            self.merge_told(told);
        }
        self.padding_left_out.extend(again.padding_left_out);
    }

    /// The tiles left out for holding more than `--max-tile-items` items at the top tier:
    /// over it by this server's count at `agent`, or named by an upstream's partial answer
    /// as `payload_too_large` (the upstream was asked at `agent` too).
    fn too_large_at_top(&self) -> Vec<TileId> {
        let mut tiles: Vec<TileId> = self
            .over_limit
            .iter()
            .filter(|o| o.at == Access::Agent)
            .map(|o| o.tile)
            .collect();
        // Each answer's own (`unanswered` may say another reason for all).
        for u in &self.told_too_large {
            tiles.extend(&u.tiles);
        }
        tiles.sort_unstable();
        tiles.dedup();
        tiles
    }

    /// The ids an upstream's partial answer named, forgotten there (they are asked again).
    fn forget_ids(&mut self) -> Vec<String> {
        let Some(u) = &mut self.unanswered else {
            return Vec::new();
        };
        let ids = std::mem::take(&mut u.ids);
        if u.tiles.is_empty() {
            self.unanswered = None;
        }
        ids
    }

    /// The tiles an upstream's partial answer left out for want of room in it
    /// (`response_full`; it was asked at `agent`).
    fn no_room_at_top(&self) -> impl Iterator<Item = TileId> + '_ {
        (self.unanswered.iter())
            .filter(|u| u.code == ErrorCode::ResponseFull)
            .flat_map(|u| u.tiles.iter().copied())
    }

    /// Keeps what the call said of `tiles` only (the others were asked as padding: their
    /// lists neither served from it nor written back; why it left one out is kept).
    fn keep_tiles(&mut self, tiles: &[TileId], padding: &[TileId]) {
        self.padding_left_out = (padding.iter())
            .filter(|t| !tiles.contains(t))
            .filter_map(|&t| self.for_followers(t).err().map(|why| (t, why)))
            .collect();
        self.tiles.retain(|t, _| tiles.contains(t));
        self.over_limit.retain(|o| tiles.contains(&o.tile));
        if let Some(fill) = &mut self.fill {
            fill.tiles.retain(|(t, _, _)| tiles.contains(t));
        }
        if let Some(u) = &mut self.unanswered {
            u.tiles.retain(|t| tiles.contains(t));
            if u.tiles.is_empty() && u.ids.is_empty() {
                self.unanswered = None;
            }
        }
    }

    /// Forgets why `tiles` were left out (they are asked again).
    fn forget_tiles(&mut self, tiles: &[TileId]) {
        self.over_limit.retain(|o| !tiles.contains(&o.tile));
        for u in &mut self.told_too_large {
            u.tiles.retain(|t| !tiles.contains(t));
        }
        if let Some(u) = &mut self.unanswered {
            u.tiles.retain(|t| !tiles.contains(t));
            if u.tiles.is_empty() && u.ids.is_empty() {
                self.unanswered = None;
            }
        }
    }
}

/// Asks the origin for `tiles` and `ids`: the request's one call (and its call again for
/// tiles over `--max-tile-items` at the top tier, [`at_callers_tier`]). While
/// the tier is degraded, at most `--degraded-origin-calls` such calls run at once; past it
/// the request is refused with 503 `overloaded` (the origin is not made to absorb every
/// request the tier used to answer). What is written back is the policy's rule; nothing is
/// when the call fails, `bound` exceeded included. Given up after `timeout_ms` (0: never),
/// what is left of the request's [`OriginDeadline`]. `gens` are the class generations the
/// request's tier read (before this call) found: the write-back is stamped with them.
/// `(at, caller)`: the tier the origin is asked at (`agent`, so that one list serves every
/// tier; the caller's for a tile over `--max-tile-items` at `agent`), the lists written back
/// as fetched at it, and the request's tier, as which a refusal is told
/// ([`OriginFailure::for_caller`]). `asked_again`: how many of `tiles` are asked again at
/// the caller's tier, counted in `tilewarm_origin_tiles_asked_at_caller_tier_total` once
/// the call is made (not when the degraded bound refuses it).
#[allow(clippy::too_many_arguments)]
async fn fetch(
    app: &App,
    policy: &tilewarm::proxy::policy::Read,
    tiles: Vec<TileId>,
    ids: Vec<String>,
    degraded: bool,
    bound: Option<ItemBound<'_>>,
    timeout_ms: u64,
    gens: &Generations,
    (at, caller): (Access, Access),
    asked_again: usize,
) -> Result<Fetched, Refusal> {
    let _permit = if degraded {
        match app.degraded_calls.try_acquire() {
            Ok(p) => Some(p),
            Err(_) => {
                app.metrics.degraded_refusals.fetch_add(1, Relaxed);
                return Err(Refusal::new(
                    ErrorCode::Overloaded,
                    format!(
                        "the cache tier is down and {n} origin calls are in flight, at most \
                         {n} are allowed until it is back: retry later",
                        n = app.config.degraded_origin_calls
                    ),
                ));
            }
        }
    } else {
        None
    };
    app.metrics
        .tiles_asked_at_caller_tier
        .fetch_add(asked_again as u64, Relaxed);
    let origin_req = BatchRequest {
        tiles,
        ids,
        access: at,
    };
    let epoch = app.invalidation.guard.epoch();
    let crate::origin::Answer {
        response,
        over_limit,
        too_large,
        unanswered,
    } = app
        .origin
        .fetch_within(&origin_req, CallSource::Request, timeout_ms, bound)
        .await
        .map_err(|f| origin_refusal(app, &f.for_caller(caller)))?;
    let missing = response.missing.iter().cloned().collect();
    let (mut fill, by_id) = fill_from(response, &app.cache_config, app.tile_ttl_ms, now_ms());
    let mut tiles = HashMap::with_capacity(fill.tiles.len());
    for (tile, ids, exp) in &fill.tiles {
        let items = ids.iter().filter_map(|id| by_id.get(id).cloned()).collect();
        tiles.insert(*tile, (items, *exp));
    }
    // What is written back is the policy's rule (direct tiles and the items only they
    // list are answered but not cached).
    let keep = policy.write_back(
        fill.tiles.iter().map(|(t, ids, _)| (*t, &ids[..])),
        &origin_req.ids,
    );
    if let WriteBack::Only(keep) = &keep {
        fill.items.retain(|it| keep.contains(it.id()));
    }
    drop(keep);
    fill.tiles.retain(|(t, _, _)| policy.cacheable(*t));
    fill.gens = gens.clone();
    fill.fetched_at = at;
    let told_too_large = unanswered
        .iter()
        .filter(|u| u.code == ErrorCode::PayloadTooLarge)
        .cloned()
        .collect();
    Ok(Fetched {
        tiles,
        items: by_id,
        missing,
        over_limit,
        too_large,
        unanswered,
        told_too_large,
        fill: (!degraded).then_some(fill),
        epoch,
        padding_left_out: Vec::new(),
    })
}

/// Asks the origin again, at the tier of `caller` (below `agent`), for `tiles`: data tiles
/// over `--max-tile-items` at `agent`, or an upstream's answer there had no room for. One
/// call per tile and tier at a time: a request at that tier asking for a tile another's
/// call is asking for follows that call (`single_flight`), as at `agent`. Each call asks
/// `padding` too (empty, or every data tile the request asked at `agent`: an upstream's),
/// whose lists are dropped: what an upstream's answer has room for then never depends on
/// which tiles were led here. The lists are written back as fetched at that tier;
/// what is over the limit there is remembered for a tile TTL (`warmup::OverLimit`). A
/// failure (of this request's call or of the one it follows), or the request's budget
/// spent, leaves out only these tiles, with the failure's code.
async fn at_callers_tier(
    app: &App,
    policy: &tilewarm::proxy::policy::Read,
    (tiles, padding): (&[TileId], &[TileId]),
    degraded: bool,
    deadline: &mut OriginDeadline,
    gens: &Generations,
    caller: Access,
) -> Fetched {
    let mut out = Fetched::default();
    // Out of time, the rest is left out with the one 504 (counted once).
    let mut spent: Option<Refusal> = None;
    // Tiles whose leader went away unanswered are claimed again, in another round: the
    // first of its followers to do so asks for them, the others follow it.
    let mut tiles = tiles.to_vec();
    while !tiles.is_empty() {
        let (lead, follows) = app.single_flight.claim(&tiles, caller);
        let led = lead.tiles();
        let call = match &spent {
            _ if led.is_empty() => None,
            // Out of time in an earlier round: not asked (its followers claim it again).
            Some(refusal) => Some(Err((refusal.clone(), true))),
            None => {
                let led = (&led[..], padding);
                Some(ask_at_callers_tier(app, policy, led, degraded, deadline, gens, caller).await)
            }
        };
        match call {
            None => {}
            Some(Ok(mut again)) => {
                lead.publish(|t| again.for_followers(t));
                again.write_back(app).await;
                out.add(again);
            }
            Some(Err((failed, cut_short))) => {
                share_failure(&lead, &failed, cut_short);
                out.told(left_out_by(failed, led));
            }
        }
        drop(lead);
        tiles = Vec::new();
        for f in follows {
            let tile = f.tile;
            let left = match &spent {
                Some(refusal) => Err(refusal.clone()),
                None => deadline.left(app),
            };
            let followed = match left {
                Err(refusal) => Followed::Failed(spent.insert(refusal).clone()),
                Ok(None) => f.wait().await,
                Ok(Some(left)) => match tokio::time::timeout(left, f.wait()).await {
                    Ok(followed) => followed,
                    Err(_) => Followed::Failed(spent.insert(deadline.spent(app)).clone()),
                },
            };
            match followed {
                Followed::Answer(Some(list)) => {
                    out.tiles.insert(tile, list);
                }
                Followed::Answer(None) => {}
                Followed::LeftOut(why) => out.left_out(why),
                Followed::Failed(failed) => out.told(left_out_by(failed, vec![tile])),
                Followed::Abandoned => tiles.push(tile),
            }
        }
    }
    out
}

/// Hands the requests following `lead`'s data tiles the refusal its origin call ended in,
/// when it says the backend cannot answer now (asking again would only add load). One about
/// the leader's own call (its direct tiles over the limit, an upstream's 4xx about its ids)
/// is no answer for them, and its message may name what the leader asked: the lead goes
/// unpublished and they claim those tiles again (`Followed::Abandoned`). So does a timeout
/// of a call `cut_short` (given less than `--origin-timeout-ms`, what was left of the
/// leader's budget): that says little of the origin, and the followers' budgets are their
/// own.
fn share_failure(lead: &Lead<'_>, refusal: &Refusal, cut_short: bool) {
    let timed_out = refusal.code == ErrorCode::UpstreamTimeout;
    if backend_unavailable(refusal.code) && !(timed_out && cut_short) {
        lead.fail(&for_followers(refusal));
    }
}

/// The call of [`at_callers_tier`] (`tiles` with `padding`; what it says of `tiles` only):
/// its answer, or its refusal and whether the call had less than `--origin-timeout-ms`
/// (what was left of the request's budget). What it finds over the limit at the caller's
/// tier is remembered.
async fn ask_at_callers_tier(
    app: &App,
    policy: &tilewarm::proxy::policy::Read,
    (tiles, padding): (&[TileId], &[TileId]),
    degraded: bool,
    deadline: &mut OriginDeadline,
    gens: &Generations,
    caller: Access,
) -> Result<Fetched, (Refusal, bool)> {
    let ms = deadline.left_ms(app).map_err(|spent| (spent, true))?;
    let cut_short = ms != app.config.origin_timeout_ms;
    // The padding first, in its order (the request's), then any led tile it lacks.
    let mut asked = padding.to_vec();
    asked.extend(tiles.iter().filter(|t| !padding.contains(t)));
    let mut again = fetch(
        app,
        policy,
        asked,
        Vec::new(),
        degraded,
        None,
        ms,
        gens,
        (caller, caller),
        tiles.len(),
    )
    .await
    .map_err(|failed| (failed, cut_short))?;
    again.keep_tiles(tiles, padding);
    let over: Vec<(TileId, LeftOut)> = tiles
        .iter()
        .filter_map(|&t| {
            let why = again.for_followers(t).err()?;
            let over = match &why {
                LeftOut::OverLimit(_) => true,
                LeftOut::Told(u) => u.code == ErrorCode::PayloadTooLarge,
            };
            over.then_some((t, why))
        })
        .collect();
    let until = crate::warmup::OverLimit::until(app.tile_ttl_ms);
    let guard = &app.invalidation.guard;
    let over_limit = &app.warmup.over_limit;
    over_limit.found_since(guard, again.epoch, caller, over, until);
    Ok(again)
}

/// Asks the origin again, at the tier of `caller` (below `agent`), for `ids`: every id of
/// the call at `agent`, whose upstream's partial answer named some and left them out; the
/// items are written back (those the first answer held are still served from it).
/// A failure, or the request's budget spent, leaves out only these ids, with the failure's
/// code (as told to the caller).
async fn ids_at_callers_tier(
    app: &App,
    policy: &tilewarm::proxy::policy::Read,
    ids: Vec<String>,
    degraded: bool,
    deadline: &mut OriginDeadline,
    gens: &Generations,
    caller: Access,
) -> Fetched {
    let ms = match deadline.left_ms(app) {
        Ok(ms) => ms,
        Err(spent) => return left_out_ids(spent, ids),
    };
    let call = fetch(
        app,
        policy,
        Vec::new(),
        ids.clone(),
        degraded,
        None,
        ms,
        gens,
        (caller, caller),
        0,
    )
    .await;
    match call {
        Ok(mut again) => {
            again.write_back(app).await;
            again
        }
        Err(failed) => left_out_ids(failed, ids),
    }
}

/// `ids` left out because the call for them failed with `failed`: its code and message.
fn left_out_ids(failed: Refusal, ids: Vec<String>) -> Fetched {
    let mut out = Fetched::default();
    out.told(Unanswered {
        code: failed.code,
        message: failed.message,
        tiles: Vec::new(),
        ids,
    });
    out
}

/// `tiles` left out because the call for them failed with `failed`: its code and message.
fn left_out_by(failed: Refusal, tiles: Vec<TileId>) -> Unanswered {
    Unanswered {
        code: failed.code,
        message: failed.message,
        tiles,
        ids: Vec::new(),
    }
}

/// One request's budget for waiting on the origin: `--origin-timeout-ms` in all, from its
/// first wait (0: no limit). Counting its coarse tiles, its own call, following another
/// request's call for a tile (`single_flight`) and fetching again what an abandoned leader
/// left each take what is left, so the request gets its 504 `upstream_timeout` at the
/// timeout, not at two or three times it.
struct OriginDeadline {
    total_ms: u64,
    /// Set by the first wait.
    at: Option<tokio::time::Instant>,
}

impl OriginDeadline {
    fn new(total_ms: u64) -> OriginDeadline {
        OriginDeadline { total_ms, at: None }
    }

    /// What is left (`None`: no limit), starting the clock on the first call; spent: the
    /// 504.
    fn left(&mut self, app: &App) -> Result<Option<std::time::Duration>, Refusal> {
        if self.total_ms == 0 {
            return Ok(None);
        }
        // One reading of the clock: the first call gets the whole budget, exactly.
        let now = tokio::time::Instant::now();
        let total = std::time::Duration::from_millis(self.total_ms);
        let at = *self.at.get_or_insert(now + total);
        let left = at.saturating_duration_since(now);
        if left.is_zero() {
            return Err(self.spent(app));
        }
        Ok(Some(left))
    }

    /// [`left`](Self::left) as an origin call's timeout in ms (0: no limit), rounded up:
    /// the whole budget on the first call.
    fn left_ms(&mut self, app: &App) -> Result<u64, Refusal> {
        Ok(self.left(app)?.map_or(0, |d| {
            let ms = d.as_micros().div_ceil(1000);
            u64::try_from(ms)
                .unwrap_or(u64::MAX)
                .clamp(1, self.total_ms)
        }))
    }

    /// The 504 of a spent budget (counted as an origin timeout).
    fn spent(&self, app: &App) -> Refusal {
        origin_refusal(app, &OriginFailure::Timeout { ms: self.total_ms })
    }
}

/// 503 for a request past `--max-origin-waits`.
/// A place among the requests waiting for the origin (`--max-origin-waits`; past it, 503
/// `overloaded`), the slot given back first when the origin is out of process: that wait is
/// not this server's work.
fn wait_for_origin<'a>(app: &'a App, slot: &HeldSlot) -> Result<OriginWait<'a>, Refusal> {
    if app.origin.waits() {
        slot.release();
    }
    app.origin_waits
        .enter()
        .ok_or_else(|| origin_waits_full(app.config.max_origin_waits))
}

fn origin_waits_full(max: usize) -> Refusal {
    Refusal::new(
        ErrorCode::Overloaded,
        format!(
            "the server is at capacity: {max} requests are waiting for the origin, at most \
             {max} may at once (--max-origin-waits); retry later"
        ),
    )
}

/// The refusal a lead whose origin call failed hands the requests following its data tiles
/// (`single_flight`): its code and `Retry-After`, and its message unless that may be about
/// what the lead asked. A 502's is the origin's (the shape guard names the first id the
/// answer left out, an upstream's 5xx says what it likes), and the lead's ids may be items
/// above a follower's tier: a follower gets a message of its own.
fn for_followers(refusal: &Refusal) -> Refusal {
    match refusal.code {
        ErrorCode::UpstreamError if refusal.lasting => Refusal {
            message: "the origin's database refused the call fetching this request's data \
                      tiles, or its table cannot be served as configured (another request's \
                      call, whose message says what that one asked and is not passed on); \
                      this will not pass by retrying: check --origin-config against the \
                      database (docs/postgis.md)"
                .into(),
            ..refusal.clone()
        },
        ErrorCode::UpstreamError => Refusal {
            message: "the origin failed on the call fetching this request's data tiles (another \
                      request's, whose message says what that one asked and is not passed on); \
                      retry later"
                .into(),
            ..refusal.clone()
        },
        _ => refusal.clone(),
    }
}

/// Whether a refused origin call says the backend cannot answer now (it failed, timed out,
/// or asks callers to slow down), rather than what one request asked being refused.
fn backend_unavailable(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::UpstreamError
            | ErrorCode::UpstreamTimeout
            | ErrorCode::RateLimited
            | ErrorCode::Overloaded
            | ErrorCode::Internal
    )
}

/// A failed origin call as the request's answer: 504 on a timeout (counted in
/// `tilewarm_origin_timeouts_total`), 503 when the origin is at capacity (counted in
/// `tilewarm_origin_overloaded_total`; an upstream's `Retry-After` kept), 502 on a failure,
/// the upstream's own 4xx passed on (a 429 with its `Retry-After`), 400 for direct tiles
/// over the fetch's bound.
fn origin_refusal(app: &App, failure: &OriginFailure) -> Refusal {
    if let OriginFailure::Overloaded { .. } = failure {
        app.metrics.origin_overloaded.fetch_add(1, Relaxed);
    }
    let e = if let OriginFailure::Timeout { .. } = failure {
        app.metrics.origin_timeouts.fetch_add(1, Relaxed);
        // A call given what was left of the request's budget names the budget.
        OriginFailure::Timeout {
            ms: app.config.origin_timeout_ms,
        }
        .to_error()
    } else {
        failure.to_error()
    };
    Refusal {
        message: e.message,
        ..refusal_of(failure)
    }
}

/// `failure` as a refusal, its message as [`OriginFailure::to_error`] gives it.
fn refusal_of(failure: &OriginFailure) -> Refusal {
    let e = failure.to_error();
    Refusal {
        retry_after_s: failure.retry_after_s(),
        lasting: matches!(
            failure,
            OriginFailure::Misconfigured { .. } | OriginFailure::Unservable { .. }
        ),
        ..Refusal::new(e.code, e.message)
    }
}

/// 400 for direct tiles holding more than `max` items for the caller: what the count before
/// the fetch found, or the fetch's own bound ([`OriginFailure::TooManyItems`]).
fn over_max_items(max: usize) -> Refusal {
    let e = OriginFailure::TooManyItems { limit: max }.to_error();
    Refusal::new(e.code, e.message)
}

/// An upper bound of [`write_response`]'s length: each item's wire text with the longest
/// `ttl` and a comma, each list's tile, ids (quoted, escapes counted as the id's own length
/// again) and keys, each missing id likewise, the partial answer's `error` member, and the
/// object's own keys.
fn response_bytes_at_most(
    lists: &[TileList<&str>],
    items: &[&StoredItem],
    missing: &[String],
    unanswered: Option<&Unanswered>,
) -> usize {
    let items: usize = items.iter().map(|it| it.wire_len() + 11).sum();
    let lists: usize = lists
        .iter()
        .map(|l| LIST_BYTES + l.ids.iter().map(|id| quoted_bytes(id)).sum::<usize>())
        .sum();
    let missing: usize = missing.iter().map(|id| quoted_bytes(id)).sum();
    let error = unanswered.map_or(0, |u| {
        error_bytes_at_most(u.message.len(), &u.tiles, &u.ids)
    });
    ANSWER_BYTES + items + lists + missing + error
}

fn too_many_items(count: usize, max: usize) -> Refusal {
    Refusal::new(
        ErrorCode::BadRequest,
        format!(
            "response would hold {count} items, at most {max} are allowed: request finer tiles"
        ),
    )
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Serialize;
    use serde_json::value::RawValue;

    /// A request following another's call for its data tiles is told what the lead's 502
    /// means without its message: a query the database refused for its configuration will
    /// not pass by retrying (the follower was told "retry later"), any other failure may.
    #[test]
    fn followers_of_a_misconfigured_call_are_told_retrying_will_not_help() {
        let lead = refusal_of(&OriginFailure::Misconfigured {
            sqlstate: "42703".into(),
            detail: Some("PostgreSQL: column \"price\" does not exist".into()),
        });
        let f = for_followers(&lead);
        assert_eq!(f.code, ErrorCode::UpstreamError);
        assert!(
            f.message.contains("will not pass by retrying"),
            "{}",
            f.message
        );
        assert!(f.message.contains("--origin-config"), "{}", f.message);
        assert!(!f.message.contains("retry later"), "{}", f.message);
        assert!(!f.message.contains("price"), "{}", f.message);
        let f = for_followers(&refusal_of(&OriginFailure::Unservable {
            message: "the geometry column \"geom\" is in SRID 3857".into(),
        }));
        assert!(
            f.message.contains("will not pass by retrying"),
            "{}",
            f.message
        );
        assert!(!f.message.contains("retry later"), "{}", f.message);
        let f = for_followers(&refusal_of(&OriginFailure::Failed("id 7 left out".into())));
        assert!(f.message.ends_with("retry later"), "{}", f.message);
        assert!(!f.message.contains("id 7"), "{}", f.message);
    }

    /// The response as the server wrote it before items were stored as text: serde_json
    /// over the protocol's fields (the old path, kept here as the reference).
    #[derive(Serialize)]
    struct WireItem<'a> {
        id: &'a str,
        lon: f64,
        lat: f64,
        class: &'a str,
        access: Access,
        ttl: u32,
        data: &'a RawValue,
    }

    #[derive(Serialize)]
    struct WireResponse<'a> {
        access: Access,
        tiles: &'a [TileList<&'a str>],
        items: Vec<WireItem<'a>>,
        missing: &'a [String],
    }

    /// The bound counts the `error` member as written: an upstream's message relayed to an
    /// `agent` caller may be 1,024 control characters, each written `\u00XX` (6 bytes).
    /// It was counted as 2 bytes a byte: about 4 KB under.
    #[test]
    fn the_bound_counts_an_error_message_of_control_characters() {
        let u = Unanswered {
            code: ErrorCode::UpstreamError,
            message: "\u{1}".repeat(1024),
            tiles: vec![TileId::new(24, 16_777_215, 16_777_215).unwrap()],
            ids: vec!["\"".repeat(256)],
        };
        let mut json = write_response(Access::Agent, &[], &[], &[], 0).unwrap();
        json.pop();
        json.push_str(",\"error\":");
        json.push_str(&serde_json::to_string(&u).unwrap());
        json.push('}');
        let bound = response_bytes_at_most(&[], &[], &[], Some(&u));
        assert!(bound >= json.len(), "{bound} < {}", json.len());
    }

    fn access() -> impl Strategy<Value = Access> {
        prop::sample::select(Access::ALL.to_vec())
    }

    proptest! {
        /// Over random mixed-tier items, tile lists, callers and clocks, the spliced
        /// response is byte for byte the serde_json response of the old path, after the
        /// items went through the Redis format.
        #[test]
        fn the_spliced_response_is_the_serialised_one(
            caller in access(),
            items in prop::collection::vec(
                ("\\PC{1,8}", -180.0f64..180.0, -85.0f64..85.0, "[a-z_]{0,8}", access(),
                 0u64..2_000_000, prop_oneof![Just("null".to_string()), "\\PC{0,8}".prop_map(|s| serde_json::to_string(&s).unwrap())]),
                0..12,
            ),
            ttls in prop::collection::vec((any::<bool>(), 1u32..100_000), 0..4),
            missing in prop::collection::vec("\\PC{1,8}", 0..3),
            now in 0u64..2_000_000,
        ) {
            let items: Vec<Arc<StoredItem>> = items
                .iter()
                .map(|(id, lon, lat, class, a, exp, data)| {
                    let data = RawValue::from_string(data.clone()).unwrap();
                    let it = StoredItem::new(id, *lon, *lat, class, *a, *exp, &data);
                    Arc::new(StoredItem::decode(it.encode()).unwrap())
                })
                .collect();
            // What the caller may see, as assemble hands it over.
            let seen: Vec<&StoredItem> = items.iter().map(|it| &**it).filter(|it| caller.can_see(it.access())).collect();
            let tiles: Vec<TileList<&str>> = ttls
                .iter()
                .enumerate()
                .map(|(i, (some, ttl))| TileList {
                    tile: TileId::new(14, i as u32, 7).unwrap(),
                    ids: seen.iter().map(|it| it.id()).collect(),
                    ttl: some.then_some(*ttl),
                })
                .collect();
            let datas: Vec<Box<RawValue>> = seen
                .iter()
                .map(|it| RawValue::from_string(it.data().to_owned()).unwrap())
                .collect();
            let old = serde_json::to_string(&WireResponse {
                access: caller,
                tiles: &tiles,
                items: seen
                    .iter()
                    .zip(&datas)
                    .map(|(it, data)| WireItem {
                        id: it.id(),
                        lon: it.lon(),
                        lat: it.lat(),
                        class: it.class(),
                        access: it.access(),
                        ttl: ttl_left_s(it.exp(), now),
                        data,
                    })
                    .collect(),
                missing: &missing,
            })
            .unwrap();
            let new = write_response(caller, &tiles, &seen, &missing, now).unwrap();
            // The bound the request path refuses by is never below the real length.
            prop_assert!(response_bytes_at_most(&tiles, &seen, &missing, None) >= new.len());
            prop_assert_eq!(new, old);
        }
    }
}
