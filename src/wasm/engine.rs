//! `Engine`: the sans-IO [`Client`] for the JS `TileCache` (`js/cache.js`), which owns
//! fetch, timers and events. Not part of the public JS API (it is exported by the glue for
//! `cache.js`, and typed as internal).
//!
//! The boundary is shaped for size and for few crossings:
//! - Item payloads stay in JavaScript: `cache.js` keeps the item objects in a table and
//!   the cache stores an item's slot in it ([`JsItem`]), so no JSON is parsed or written in
//!   wasm, and items cross as numbers: a view of 5,000 items is 5,000 numbers read from one
//!   `Float64Array` and looked up in a JS array, not 5,000 object handles.
//! - Every call returns one flat record list (see [`Out`]): numbers in one `Float64Array`,
//!   strings and item objects beside it, decoded by `cache.js`. A call hands back
//!   everything it caused (requests to send, aborts, events, the next wake-up), so
//!   `setViewport` is one crossing.
//! - Bad options and viewports are thrown as error records ([`super::thrown`]); the JS
//!   glue writes the values into the message. Nothing here panics on input.

use std::cell::RefCell;

use js_sys::Float64Array;
use wasm_bindgen::prelude::*;

use super::args::{core_error, packed, ArgError, Value};
use super::boundary::{
    request_kind_num, tile_state_code, Code, ErrorClass, FailureCode, Tag, TileOp, STATS,
};
use super::config;
use super::{thrown, value};
use crate::access::Access;
use crate::batch::{Failure, RequestId};
use crate::cache::{CacheItem, Invalidate};
use crate::client::{Answered, ChangedTiles, Client, Event, Received, ViewOutcome};
use crate::clock::HostTime;
use crate::planner::PopularTiles;
use crate::protocol::{BatchResponse, ErrorCode, Item, TileList};
use crate::tile::{Bbox, TileId};

/// An item payload: the slot of the JS item object (`{ id, lon, lat, class, access, data,
/// stale }`) in `cache.js`'s table of item objects. Its size arrives beside it
/// ([`JsReceived`]) and is not kept: the cache reads it once, when it stores the item.
///
/// `cache.js` puts an answer's objects in free slots before it hands the answer over; a
/// slot is the cache's until its `JsItem` is dropped (the item was evicted, expired,
/// invalidated, replaced, or never stored), which gives the slot back through [`FREED`]
/// and a FREED record. Not `Clone`: one owner per slot.
pub(crate) struct JsItem {
    slot: u32,
}

// A cached item with this payload takes a slot of 44 bytes in the item store on wasm32
// (`src/cache/store.rs`): the item (its id inline, its position as a zoom-24 tile in one
// word with its tier and class index, `CacheItem`) and two links.
#[cfg(target_arch = "wasm32")]
const _: () = assert!(crate::cache::slot_bytes::<JsItem>() <= 44);

/// An answer's item payload: its [`JsItem`] and the length of its `data` as JSON (what the
/// cache charges it beside its id and class), until the cache stores it.
pub(crate) struct JsReceived {
    item: JsItem,
    size: u32,
}

impl Received<JsItem> for JsReceived {
    fn size_bytes(&self) -> usize {
        self.size as usize
    }
    fn into_payload(self) -> JsItem {
        self.item
    }
}

impl Drop for JsItem {
    fn drop(&mut self) {
        FREED.with(|f| f.borrow_mut().push(self.slot));
    }
}

thread_local! {
    /// Slots of dropped [`JsItem`]s not yet told to `cache.js`: one list for the wasm
    /// instance, as `cache.js` has one table for it (every `Engine` shares both).
    static FREED: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// Takes the slots given back since the last call ([`FREED`]).
fn take_freed() -> Vec<u32> {
    FREED.with(|f| std::mem::take(&mut *f.borrow_mut()))
}

/// `takeFreed`: the slots given back outside a call that reports them (an engine freed).
#[wasm_bindgen(js_name = takeFreed, skip_typescript)]
pub fn take_freed_slots() -> Vec<u32> {
    take_freed()
}

/// The slot of a cached item, as it crosses.
fn slot(item: &CacheItem<JsItem>) -> f64 {
    f64::from(item.payload().slot)
}

/// What a call hands back: `[Float64Array of numbers, ...references]`, read with two
/// cursors. Tiles are packed ids ([`super::args::packed`]). A view call starts with the view
/// header, `complete, tooWide, missing, stale, items, unchanged, missing tiles... | items...`
/// (the stale items first, as slots: see [`JsItem`]; `tooWide` is 0 or the
/// `maxVisibleTiles` limit the view is over; `unchanged` 1 when the view reads exactly as
/// the last one did, and then no items follow: `cache.js` hands back its last view); then
/// come records, each a [`Tag`] and the
/// layout its doc gives. Request kinds,
/// failures and tiers are the codes of [`super::boundary`].
#[derive(Default)]
struct Out {
    nums: Vec<f64>,
    refs: Vec<JsValue>,
}

impl Out {
    /// The VIEW record's body: completeness, too wide or not, the missing tiles, then the
    /// stale items' slots and the fresh ones'.
    fn view(&mut self, outcome: &ViewOutcome, stale: Vec<f64>, fresh: Vec<f64>) {
        self.nums.extend([
            outcome.complete as u8 as f64,
            outcome.too_wide.map_or(0.0, |t| t.max as f64),
            outcome.missing.len() as f64,
            stale.len() as f64,
            outcome.items as f64,
            outcome.unchanged as u8 as f64,
        ]);
        for &t in &outcome.missing {
            self.nums.push(packed(t));
        }
        self.nums.extend(stale);
        self.nums.extend(fresh);
    }

    fn finish(self) -> Vec<JsValue> {
        let mut all = Vec::with_capacity(self.refs.len() + 1);
        all.push(Float64Array::from(&self.nums[..]).into());
        all.extend(self.refs);
        all
    }
}

/// The tier with this code (its rank); `None` for any other number, so nothing from
/// JavaScript (an unknown tier is -1) is truncated into a tier.
fn tier(code: f64) -> Option<Access> {
    Access::ALL.into_iter().find(|a| a.rank() as f64 == code)
}

#[wasm_bindgen(skip_typescript)]
pub struct Engine {
    client: Client<JsItem>,
    /// Zoom levels added to the caller's zooms (`tileSize` 512: 1).
    zoom_offset: f64,
    /// The last time from JS that a clock could give ([`Engine::ms`]).
    host_time: HostTime,
}

#[wasm_bindgen]
impl Engine {
    /// `values`: the numeric options in [`crate::client::options::numbers`] order (`undefined`
    /// for the default); `classes`/`class_ttls`: the `ttl.byClass` entries, used when
    /// `by_class`; `tile_size`: the `tileSize` option.
    #[wasm_bindgen(constructor)]
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        values: Vec<JsValue>,
        by_class: bool,
        classes: Vec<String>,
        class_ttls: Vec<JsValue>,
        access: &JsValue,
        tile_size: &JsValue,
        seed: f64,
    ) -> Result<Engine, JsValue> {
        let values: Vec<Value> = values.iter().map(value).collect();
        let classes: Vec<(String, Value)> = classes
            .into_iter()
            .zip(class_ttls.iter().map(value))
            .collect();
        let size = value(tile_size);
        let config = config::client_config_sized(
            &values,
            by_class.then_some(&classes[..]),
            &value(access),
            &size,
            seed as u64,
        )
        .map_err(thrown)?;
        let zoom_offset = config::tile_size(&size).map_err(thrown)?;
        // The options are checked above within the core's ranges (the tests of
        // `crate::client::options` check every bound), so the core's own checks pass.
        let client = Client::new(config).map_err(|_| {
            thrown(ArgError {
                kind: ErrorClass::Range,
                code: Code::OutOfRange,
                parts: vec!["the options are out of the core's ranges".into()],
            })
        })?;
        Ok(Engine {
            client,
            zoom_offset,
            host_time: HostTime::default(),
        })
    }

    /// `setViewport`: the view from the cache, then everything it set in motion.
    pub fn view(
        &mut self,
        west: &JsValue,
        south: &JsValue,
        east: &JsValue,
        north: &JsValue,
        zoom: &JsValue,
        now: f64,
    ) -> Result<Vec<JsValue>, JsValue> {
        let vp = self.viewport([west, south, east, north, zoom])?;
        let now = self.ms(now);
        let mut out = Out::default();
        let (mut stale, mut fresh) = (Vec::new(), Vec::new());
        let sink = |item: &CacheItem<JsItem>, is_stale: bool| {
            if is_stale { &mut stale } else { &mut fresh }.push(slot(item));
        };
        let outcome = self.client.update_viewport(vp, now, sink);
        out.view(&outcome, stale, fresh);
        self.pump(&mut out, now);
        Ok(out.finish())
    }

    /// The current view again (after an UPDATED record), then anything pending; `plan`
    /// as for [`Engine::invalidate`].
    pub fn items(&mut self, now: f64, plan: bool) -> Vec<JsValue> {
        let now = self.ms(now);
        let mut out = Out::default();
        let (mut stale, mut fresh) = (Vec::new(), Vec::new());
        let outcome = self.client.view_items(now, |item, is_stale| {
            if is_stale { &mut stale } else { &mut fresh }.push(slot(item));
        });
        out.view(&outcome, stale, fresh);
        self.pump_planned(&mut out, now, plan);
        out.finish()
    }

    /// A response: header `accepted, unkept, slots...` (`accepted` 0 when it is invalid:
    /// an ERROR record for the request follows; then the `unkept` slots of items asked for
    /// by id, at the caller's tier, that the cache could not keep:
    /// [`Client::take_unkept`]). `cache.js` flattens the parsed JSON into three lists:
    /// - `nums`: the tile count, the item count, the tier the server reports it
    ///   filtered for (0..=3; -1 when it does not say) and the data's extent it declares
    ///   (west, south, east, north from [`BOUNDS_HEADER`](crate::protocol::BOUNDS_HEADER);
    ///   four NaN when it declares none), for a partial answer the code of its `error`
    ///   (1: `response_full`; else the status the server answers the code with, 502
    ///   `upstream_error`, 413 `payload_too_large`, 503 `overloaded`, ...; 0 for none or an
    ///   unknown code); per tile its TTL in seconds (`-1`
    ///   for none) and how many ids it lists; per item its lon, lat, TTL (`-1` for none),
    ///   tier (0..=3; 255 for an unknown tier) and the length of its `data` as JSON (what
    ///   the cache charges it beside its id and class);
    /// - `strs`: per tile its `z/x/y` and its ids; per item its id and class; then the
    ///   missing ids;
    /// - `slots`: per item the slot `cache.js` put its object in. Each becomes the cache's
    ///   at once (a [`JsItem`]), so a slot the answer does not store (an invalid answer, an
    ///   item the cache refuses) comes back in a FREED record.
    pub fn response(
        &mut self,
        id: f64,
        now: f64,
        nums: Vec<f64>,
        strs: Vec<JsValue>,
        slots: Vec<u32>,
    ) -> Vec<JsValue> {
        let (rid, now) = (RequestId(id as u64), self.ms(now));
        let mut out = Out::default();
        let payloads = slots.into_iter().map(|slot| JsItem { slot }).collect();
        // The strings cross as handles, each read into the `String` the answer keeps as
        // `build_response` reaches it: a `Vec<String>` parameter would hold all of them in
        // a list of its own (12 bytes a string) beside the answer being built, when the
        // largest answer sets the wasm memory's high-water mark.
        let built = build_response(&nums, strs.into_iter().map(|s| s.as_string()), payloads);
        // The numbers are read: their room (8 bytes a number, 40 an item) is free for what
        // the cache allocates as it takes the answer, rather than grown for it.
        drop(nums);
        match built {
            // 1: taken (or for a request no longer tracked); 0: invalid, its ERROR record
            // follows (the get()s it was for wait for the retry, or end with the error);
            // 2: sent at a tier left since, so asked again: the get()s wait for that answer.
            // 3: taken, and what did not fit in it asked again: its get()s wait likewise.
            Ok((r, bounds)) => {
                let code = match self
                    .client
                    .on_declared_response(rid, r, bounds.as_ref(), now)
                {
                    Answered::Taken | Answered::Ignored => 1.0,
                    Answered::Invalid => 0.0,
                    Answered::AskedAgain => 2.0,
                    Answered::TakenInPart => 3.0,
                };
                out.nums.push(code);
            }
            // An invalid response is reported as a failure by the core itself.
            Err(reason) => {
                out.nums.push(0.0);
                self.client.on_failure(rid, Failure::Invalid(reason), now);
            }
        }
        // The slots of the items asked for by id that passed the tier check and that the
        // cache could not keep, for the get()s waiting for them; dropped here, they come
        // back in the FREED record below, which `cache.js` reads after the get()s.
        let unkept = self.client.take_unkept();
        out.nums.push(unkept.len() as f64);
        out.nums
            .extend(unkept.iter().map(|(_, item)| f64::from(item.slot)));
        drop(unkept);
        self.pump(&mut out, now);
        out.finish()
    }

    /// A request failed: `failure` is a [`FailureCode`] (HTTP with `status` and
    /// `retry_after_ms`, negative for none); any other number means the shell gave the
    /// request up (aborted). `access` is the tier code the answer's `x-tilewarm-access`
    /// header names (-1 for none or an unknown one): the core decides whether it lowers the
    /// cache ([`Client::on_reported_failure`]).
    #[allow(clippy::too_many_arguments)]
    pub fn failure(
        &mut self,
        id: f64,
        failure: f64,
        status: u16,
        retry_after_ms: f64,
        message: String,
        access: f64,
        now: f64,
    ) -> Vec<JsValue> {
        let f = match FailureCode::from_num(failure) {
            Some(FailureCode::Timeout) => Failure::Timeout,
            Some(FailureCode::Network) => Failure::Network(message),
            Some(FailureCode::Http) => Failure::Http {
                status,
                retry_after_ms: (retry_after_ms >= 0.0).then_some(retry_after_ms as u64),
            },
            Some(FailureCode::Invalid) => Failure::Invalid(message),
            Some(FailureCode::Unauthorized) => Failure::Http {
                status: 401,
                retry_after_ms: (retry_after_ms >= 0.0).then_some(retry_after_ms as u64),
            },
            None => Failure::Aborted,
        };
        let now = self.ms(now);
        self.client
            .on_reported_failure(RequestId(id as u64), f, tier(access), now);
        let mut out = Out::default();
        self.pump(&mut out, now);
        out.finish()
    }

    /// Time passed (the WAKEUP time came): timeouts, backoffs, breaker probes.
    pub fn tick(&mut self, now: f64) -> Vec<JsValue> {
        let now = self.ms(now);
        self.client.handle_timeout(now);
        let mut out = Out::default();
        self.pump(&mut out, now);
        out.finish()
    }

    /// `getMany`: header `count, per id its item's slot or -1`; misses are queued.
    pub fn get(&mut self, ids: Vec<String>, now: f64) -> Result<Vec<JsValue>, JsValue> {
        // An id no item can have is the caller's error, before anything is queued (sent,
        // it would fail the request it rides in, visible tiles and other ids with it).
        for (i, id) in ids.iter().enumerate() {
            if self.client.check_id(id).is_err() {
                return Err(thrown(ArgError::must(
                    ErrorClass::Range,
                    Code::OutOfRange,
                    &format!("ids[{i}]"),
                    &format!(
                        "a non-empty id of at most {} bytes without control characters",
                        self.client.limits().max_id_len
                    ),
                )));
            }
        }
        let now = self.ms(now);
        let mut out = Out::default();
        out.nums.push(ids.len() as f64);
        let nums = &mut out.nums;
        self.client
            .get_many(ids.iter().map(String::as_str), now, |l| {
                nums.push(l.map_or(-1.0, |l| slot(l.item)));
            });
        self.pump(&mut out, now);
        Ok(out.finish())
    }

    /// `get` of one id held in the cache: the item's slot (counted as a hit, as `get`
    /// counts it); -1 when it is not there, with nothing counted or queued (`cache.js` then
    /// takes the full path). One crossing with no output list: the hot path of `get`.
    #[wasm_bindgen(js_name = getCached)]
    pub fn get_cached(&mut self, id: &str, now: f64) -> f64 {
        self.client
            .get_cached(id, self.ms(now))
            .map_or(-1.0, |l| slot(l.item))
    }

    /// The slot of the cached item with this id (fresh or stale), without counting or
    /// fetching; -1 when there is none.
    pub fn peek(&self, id: &str, now: f64) -> f64 {
        (self.client.peek(id, self.ms(now))).map_or(-1.0, |l| slot(l.item))
    }

    /// `invalidate`: header `removed`. A bad tile string is a `tiles` field error. What
    /// went is gone at once; with `plan` false (a hidden page that awaits nothing: every
    /// event of a change feed would pay for refetches nobody sees) the refetches it queued
    /// are not sent: the WAKEUP record is then due now, and the wake-up `cache.js` puts off
    /// until the page is shown sends them.
    pub fn invalidate(
        &mut self,
        ids: Vec<String>,
        tiles: Vec<String>,
        classes: Vec<String>,
        all: bool,
        now: f64,
        plan: bool,
    ) -> Result<Vec<JsValue>, JsValue> {
        let now = self.ms(now);
        let parsed = parse_tiles(&tiles)?;
        let mut n = 0;
        if all {
            n += self.client.invalidate(Invalidate::All, now);
        } else {
            if !ids.is_empty() {
                let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                n += self.client.invalidate(Invalidate::Ids(&ids), now);
            }
            if !parsed.is_empty() {
                n += self.client.invalidate(Invalidate::Tiles(&parsed), now);
            }
            for class in &classes {
                n += self.client.invalidate(Invalidate::Class(class), now);
            }
        }
        let mut out = Out::default();
        out.nums.push(n as f64);
        self.pump_planned(&mut out, now, plan);
        Ok(out.finish())
    }

    /// The per-tile calls, one entry point: `op` is a [`TileOp`] code (its doc gives what
    /// each hands back), `tiles` the tiles `"z/x/y"`. A bad tile string is a `tiles` field
    /// error; an unknown `op` an `op` error.
    pub fn tiles(
        &mut self,
        op: f64,
        tiles: Vec<String>,
        now: f64,
    ) -> Result<Vec<JsValue>, JsValue> {
        let Some(op) = TileOp::from_num(op) else {
            return Err(thrown(ArgError::must(
                ErrorClass::Range,
                Code::InvalidArgValue,
                "op",
                "a TILES_* code",
            )));
        };
        let now = self.ms(now);
        let parsed = parse_tiles(&tiles)?;
        let mut out = Out::default();
        match op {
            TileOp::States => {
                for t in parsed {
                    let code = tile_state_code(self.client.tile_state(t, now));
                    out.nums.push(f64::from(code));
                }
                return Ok(out.finish());
            }
            TileOp::Load | TileOp::Read => {
                self.load_tiles(&mut out, parsed, op == TileOp::Load, now)
            }
            TileOp::Prefetch => {
                let mut data = Vec::new();
                for (i, t) in parsed.into_iter().enumerate() {
                    match self.client.data_tiles_of(t) {
                        Ok(d) => data.extend(d),
                        Err(e) => {
                            out.nums.extend([
                                -1.0,
                                i as f64,
                                e.count as f64,
                                e.max as f64,
                                f64::from(e.min_z),
                            ]);
                            return Ok(out.finish());
                        }
                    }
                }
                return Ok(self.prefetch(&data, now));
            }
            TileOp::Release => self.client.release_tiles(&parsed, now),
            TileOp::Popular | TileOp::PopularOff => {
                let popular = (op == TileOp::Popular).then(|| PopularTiles::new(parsed.clone()));
                if let Err(e) = self.client.set_popular_tiles(popular) {
                    // Named by the first tile too fine, as other tile errors are.
                    let i = parsed.iter().position(|t| t.z() > e.tile_zoom).unwrap_or(0);
                    let tile = parsed.get(i).map(|t| t.to_string()).unwrap_or_default();
                    let text = format!("tiles[{i}] \"{tile}\": {e}");
                    return Err(thrown(ArgError::text(
                        ErrorClass::Range,
                        Code::InvalidTile,
                        text,
                    )));
                }
                return Ok(out.finish());
            }
        }
        self.pump(&mut out, now);
        Ok(out.finish())
    }

    /// `prefetch(viewport)`: header `queued`, or `-2, maxVisibleTiles` for a viewport
    /// over that many data tiles (nothing queued); the viewport's data tiles, none below
    /// `minZoom`.
    #[wasm_bindgen(js_name = prefetchView)]
    pub fn prefetch_view(
        &mut self,
        west: &JsValue,
        south: &JsValue,
        east: &JsValue,
        north: &JsValue,
        zoom: &JsValue,
        now: f64,
    ) -> Result<Vec<JsValue>, JsValue> {
        let vp = self.viewport([west, south, east, north, zoom])?;
        let Ok(data) = self.client.planner().visible_tiles(&vp) else {
            let mut out = Out::default();
            let max = self.client.planner().config().max_visible_tiles;
            out.nums.extend([-2.0, max as f64]);
            return Ok(out.finish());
        };
        Ok(self.prefetch(&data, self.ms(now)))
    }

    /// `setAccess`; `new_credential` when the page says its credential changed (a sign-in:
    /// [`Client::new_credential`]), which lets it ask above the tier reported for the old one.
    #[wasm_bindgen(js_name = setAccess)]
    pub fn set_access(
        &mut self,
        access: &JsValue,
        new_credential: bool,
        now: f64,
    ) -> Result<Vec<JsValue>, JsValue> {
        let tier = config::access("access", &value(access)).map_err(thrown)?;
        if new_credential {
            self.client.new_credential();
        }
        if let Some(verified) = self.client.verified().filter(|&v| tier > v) {
            return Err(thrown(ArgError::must(
                ErrorClass::Range,
                Code::OutOfRange,
                "access",
                &format!(
                    "at most \"{verified}\", the tier the server reported for this \
                     credential (after a sign-in, any tier with {{ newCredential: true }})"
                ),
            )));
        }
        let now = self.ms(now);
        self.client.set_access(tier, now);
        let mut out = Out::default();
        self.pump(&mut out, now);
        Ok(out.finish())
    }

    /// The tier the cache views as now, as its rank ([`Access::rank`]): the `access` option,
    /// then `setAccess`'s, or a lower one an answer reported (`cache.js` tells `onAccess`
    /// listeners when it changes).
    pub fn access(&self) -> u8 {
        self.client.access().rank()
    }

    /// The counters, in the order of [`STATS`] (which names them for `cache.js`).
    pub fn stats(&self) -> Vec<f64> {
        let s = self.client.stats();
        STATS.iter().map(|stat| (stat.get)(&s)).collect()
    }
}

impl Engine {
    /// A time from JS (the `now` option) in ms: [`HostTime::ms`].
    fn ms(&self, now: f64) -> u64 {
        self.host_time.ms(now)
    }

    /// The viewport of `setViewport` and `prefetch(viewport)`: `west, south, east, north,
    /// zoom` as JS passed them, checked ([`config::viewport`]), in the core's zoom units.
    fn viewport(&self, v: [&JsValue; 5]) -> Result<crate::planner::Viewport, JsValue> {
        config::viewport(&v.map(value), self.zoom_offset).map_err(thrown)
    }

    /// `TILES_LOAD` and `TILES_READ` (see [`TileOp`]): per tile its state and what goes with
    /// it; its missing data tiles queued as foreground work when `queue`.
    fn load_tiles(&mut self, out: &mut Out, tiles: Vec<TileId>, queue: bool, now: u64) {
        // What follows a change of the loading tiles, once for the call (not per tile).
        let mut queued = false;
        for t in tiles {
            let at = out.nums.len();
            out.nums.extend([1.0, 0.0]);
            let nums = &mut out.nums;
            match self
                .client
                .load_tile_deferred(t, queue, now, &mut queued, |item, stale| {
                    nums.extend([f64::from(u8::from(stale)), slot(item)]);
                }) {
                Ok(true) => {
                    out.nums[at + 1] = ((out.nums.len() - at - 2) / 2) as f64;
                }
                Ok(false) => {
                    out.nums.truncate(at);
                    let data = self.client.data_tiles_of(t).unwrap_or_default();
                    out.nums.extend([0.0, data.len() as f64]);
                    out.nums.extend(data.into_iter().map(packed));
                }
                Err(e) => {
                    out.nums.truncate(at);
                    out.nums
                        .extend([2.0, e.count as f64, e.max as f64, e.min_z as f64]);
                }
            }
        }
        if queued {
            self.client.loading_changed(now);
        }
    }

    fn prefetch(&mut self, data: &[TileId], now: u64) -> Vec<JsValue> {
        let n = self.client.prefetch(data, now);
        let mut out = Out::default();
        out.nums.push(n as f64);
        self.pump(&mut out, now);
        out.finish()
    }

    /// Appends every request, abort and event the last call caused, the next wake-up, and
    /// the slots given back since the last report.
    fn pump(&mut self, out: &mut Out, now: u64) {
        self.pump_planned(out, now, true);
    }

    /// [`Engine::pump`], sending the requests due only when `plan`; without, the WAKEUP
    /// record is due now, for the shell's wake-up to send them.
    fn pump_planned(&mut self, out: &mut Out, now: u64, plan: bool) {
        while let Some(s) = plan.then(|| self.client.poll_request(now)).flatten() {
            let r = &s.request;
            out.nums.extend([
                Tag::Transmit.num(),
                s.id.0 as f64,
                request_kind_num(s.kind),
                s.attempt as f64,
                s.timeout_ms as f64,
                r.tiles.len() as f64,
                r.ids.len() as f64,
            ]);
            out.refs.push(JsValue::from_str(r.access.as_str()));
            for &t in &r.tiles {
                out.nums.push(packed(t));
            }
            for id in &r.ids {
                out.refs.push(JsValue::from_str(id));
            }
        }
        while let Some(id) = self.client.poll_cancel() {
            out.nums.extend([Tag::Cancel.num(), id.0 as f64]);
        }
        while let Some(e) = self.client.poll_event() {
            match e {
                Event::Updated => out.nums.push(Tag::Updated.num()),
                Event::Complete => out.nums.push(Tag::Complete.num()),
                Event::Error(e) => {
                    let (code, status, retry_after, message) = match e.failure {
                        Failure::Timeout => (FailureCode::Timeout, 0, None, String::new()),
                        Failure::Network(m) => (FailureCode::Network, 0, None, m),
                        Failure::Http {
                            status: 401,
                            retry_after_ms,
                        } => (
                            FailureCode::Unauthorized,
                            401,
                            retry_after_ms,
                            String::new(),
                        ),
                        Failure::Http {
                            status,
                            retry_after_ms,
                        } => (FailureCode::Http, status, retry_after_ms, String::new()),
                        Failure::Invalid(m) => (FailureCode::Invalid, 0, None, m),
                        // The shell gave it up itself; the core reports no error for it.
                        Failure::Aborted => continue,
                    };
                    out.nums.extend([
                        Tag::Error.num(),
                        e.request.0 as f64,
                        request_kind_num(e.kind),
                        e.will_retry as u8 as f64,
                        e.view_incomplete as u8 as f64,
                        code.num(),
                        status as f64,
                        retry_after.map_or(-1.0, |ms| ms as f64),
                        e.tiles.len() as f64,
                    ]);
                    out.nums.extend(e.tiles.iter().map(|&t| packed(t)));
                    out.refs.push(JsValue::from_str(&message));
                }
            }
        }
        let wakeup = if plan {
            self.client.next_wakeup(now)
        } else {
            Some(now)
        };
        if let Some(at) = wakeup {
            out.nums.extend([Tag::Wakeup.num(), at as f64]);
        }
        match self.client.take_changed_tiles() {
            ChangedTiles::Tiles(t) if t.is_empty() => {}
            ChangedTiles::Tiles(t) => {
                out.nums.extend([Tag::Changed.num(), t.len() as f64]);
                out.nums.extend(t.into_iter().map(packed));
            }
            ChangedTiles::All => out.nums.extend([Tag::Changed.num(), -1.0]),
        }
        let freed = take_freed();
        if !freed.is_empty() {
            out.nums.extend([Tag::Freed.num(), freed.len() as f64]);
            out.nums.extend(freed.into_iter().map(f64::from));
        }
    }
}

/// Tile strings from JS; a bad one is an error that names it by its index and says why
/// (`tiles[1]: tile 1/5/5 does not exist: ...`): a TypeError for a string that is not
/// `z/x/y`, a RangeError for one that names no tile, as the tile functions throw.
fn parse_tiles(tiles: &[String]) -> Result<Vec<TileId>, JsValue> {
    tiles
        .iter()
        .enumerate()
        .map(|(i, t)| {
            t.parse::<TileId>()
                .map_err(|e| thrown(core_error(&format!("tiles[{i}]"), e)))
        })
        .collect()
}

/// [`build_response`]'s error for lists whose lengths do not fit together (or a string
/// that is not one).
fn disagree() -> String {
    "response arrays disagree in length".to_string()
}

/// The next of [`build_response`]'s strings; an error when there is none or it is not a
/// string.
fn next_str(strs: &mut impl Iterator<Item = Option<String>>) -> Result<String, String> {
    strs.next().flatten().ok_or_else(disagree)
}

/// Builds the core's response from the lists [`Engine::response`] takes; an inconsistent
/// shape (which `cache.js` never produces) is an invalid response, not a panic. `strs`
/// are the strings in order, `None` for one that is not a string (which `cache.js` never
/// passes). Each list is allocated at the size it ends with (a list grown by doubling can
/// hold twice the room it needs while the largest answer is decoded).
fn build_response(
    nums: &[f64],
    strs: impl IntoIterator<Item = impl Into<Option<String>>>,
    payloads: Vec<JsItem>,
) -> Result<(BatchResponse<JsReceived>, Option<Bbox>), String> {
    let [tiles, items, reported, west, south, east, north, left_out, rest @ ..] = nums else {
        return Err(disagree());
    };
    let bounds = (!west.is_nan()).then_some(Bbox {
        west: *west,
        south: *south,
        east: *east,
        north: *north,
    });
    // The tier the server reports it filtered for: -1 when it does not say.
    let access = match *reported {
        r if r < 0.0 => None,
        r => Some(tier(r).ok_or_else(|| {
            "access must be one of \"public\", \"registered\", \"verified\", \"agent\"".to_string()
        })?),
    };
    // Counts from JS: `as usize` saturates (NaN is 0); the lengths checked here bound them.
    let (n_tiles, n_items) = (*tiles as usize, *items as usize);
    let want = n_items
        .checked_mul(5)
        .and_then(|n| n.checked_add(n_tiles.checked_mul(2)?));
    if want != Some(rest.len()) || payloads.len() != n_items {
        return Err(disagree());
    }
    let (tile_nums, item_nums) = rest.split_at(2 * n_tiles);
    let ttl = |t: f64| (t >= 0.0).then_some(t.min(u32::MAX as f64) as u32);
    let mut strs = strs.into_iter().map(Into::into);
    // The items' list (64 bytes an item on wasm32, the largest block an answer takes) is
    // taken first, before the tile lists' strings fill the free room it could take.
    let mut items = Vec::with_capacity(n_items);
    let mut lists = Vec::with_capacity(n_tiles);
    for (i, t) in tile_nums.chunks_exact(2).enumerate() {
        let s = next_str(&mut strs)?;
        let Ok(tile) = s.parse::<TileId>() else {
            return Err(format!(
                "tiles[{i}].tile {} is not a tile z/x/y",
                crate::util::Quoted(&s)
            ));
        };
        let len = t[1] as usize;
        // `len` is a number from JS: the strings left bound it.
        let mut ids = Vec::with_capacity(len.min(strs.size_hint().0));
        for _ in 0..len {
            ids.push(next_str(&mut strs)?);
        }
        lists.push(TileList {
            tile,
            ids,
            ttl: ttl(t[0]),
        });
    }
    for (j, (it, item)) in item_nums.chunks_exact(5).zip(payloads).enumerate() {
        let (id, class) = (next_str(&mut strs)?, next_str(&mut strs)?);
        let Some(access) = tier(it[3]) else {
            return Err(format!(
                "items[{j}].access must be one of \"public\", \"registered\", \"verified\", \"agent\""
            ));
        };
        items.push(Item {
            id,
            lon: it[0],
            lat: it[1],
            class,
            access,
            ttl: ttl(it[2]),
            data: JsReceived {
                item,
                // `as u32` saturates: NaN and negatives are 0.
                size: it[4].min(1e9) as u32,
            },
        });
    }
    let response = BatchResponse {
        access,
        tiles: lists,
        items,
        missing: strs
            .map(|s| s.ok_or_else(disagree))
            .collect::<Result<_, _>>()?,
        // A partial answer's `error` code (`Batcher::on_answer`): 1 `response_full`, else
        // the code its status names (413 `payload_too_large`); 0, none.
        left_out: match *left_out as u16 {
            0 => None,
            1 => Some(ErrorCode::ResponseFull),
            n => (ErrorCode::ALL.into_iter())
                .find(|c| *c != ErrorCode::ResponseFull && c.http_status() == n),
        },
    };
    Ok((response, bounds))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One tile listing one item of tier code `tier`, as `cache.js` flattens it.
    fn one_item(tier: f64) -> Result<BatchResponse<JsReceived>, String> {
        reported(tier, -1.0)
    }

    /// [`one_item`] in an answer that reports tier code `access`.
    fn reported(tier: f64, access: f64) -> Result<BatchResponse<JsReceived>, String> {
        let strs = ["14/2624/5721", "a", "a", "active"]
            .map(String::from)
            .to_vec();
        build_response(&one_item_nums(tier, access), strs, vec![JsItem { slot: 0 }]).map(|(r, _)| r)
    }

    /// The numbers of [`reported`]'s answer: one tile listing one item, of tier code
    /// `tier`, in an answer reporting tier code `access`.
    fn one_item_nums(tier: f64, access: f64) -> Vec<f64> {
        vec![
            1.0,
            1.0,
            access,
            f64::NAN,
            f64::NAN,
            f64::NAN,
            f64::NAN,
            0.0,
            -1.0,
            1.0,
            -122.33,
            47.61,
            -1.0,
            tier,
            100.0,
        ]
    }

    /// Security: an item whose tier is not one of the four must make the whole answer
    /// invalid; truncating its code (-1 for an unknown name, or a fraction) into a tier
    /// would let it pass as public.
    #[test]
    fn an_unknown_tier_is_an_invalid_response() {
        for (code, access) in Access::ALL.iter().enumerate() {
            let r = one_item(code as f64).unwrap();
            assert_eq!(r.items[0].access, *access);
        }
        for bad in [-1.0, 0.5, 4.0, 255.0, f64::NAN, f64::NEG_INFINITY] {
            let e = one_item(bad).map(|_| ()).unwrap_err();
            assert!(e.contains("items[0].access must be one of"), "{bad}: {e}");
        }
    }

    /// Every slot handed over comes back once its item is gone: all of them when the
    /// answer is refused (the items after the bad one too), and a stored answer's when it
    /// is dropped; none while it is held.
    #[test]
    fn the_slots_of_an_answer_come_back_when_its_items_go() {
        let nums = |second_tier: f64| {
            vec![
                0.0,
                3.0,
                -1.0,
                f64::NAN,
                f64::NAN,
                f64::NAN,
                f64::NAN,
                0.0,
                -122.33,
                47.61,
                -1.0,
                0.0,
                10.0,
                -122.33,
                47.61,
                -1.0,
                second_tier,
                10.0,
                -122.33,
                47.61,
                -1.0,
                0.0,
                10.0,
            ]
        };
        let strs = || {
            ["a", "active", "b", "active", "c", "active"]
                .map(String::from)
                .to_vec()
        };
        let slots = |from: u32| (from..from + 3).map(|slot| JsItem { slot }).collect();
        take_freed();
        assert!(build_response(&nums(-1.0), strs(), slots(0)).is_err());
        let mut freed = take_freed();
        freed.sort_unstable();
        assert_eq!(freed, [0, 1, 2]);
        let kept = build_response(&nums(0.0), strs(), slots(3)).unwrap();
        assert!(take_freed().is_empty());
        drop(kept);
        let mut freed = take_freed();
        freed.sort_unstable();
        assert_eq!(freed, [3, 4, 5]);
    }

    /// The strings cross as JS values, each read as it is reached: one that is not a
    /// string (`cache.js` never passes one), wherever it is (a tile, a listed id, an
    /// item's id or class, a missing id), makes the answer invalid, not a panic.
    #[test]
    fn a_string_that_is_not_one_is_an_invalid_response() {
        let nums = one_item_nums(0.0, -1.0);
        let strs = ["14/2624/5721", "a", "a", "active", "gone"];
        let all = || strs.map(|s| Some(s.to_string()));
        let r = build_response(&nums, all(), vec![JsItem { slot: 0 }])
            .unwrap()
            .0;
        assert_eq!(
            (r.tiles[0].ids.len(), r.items[0].class.as_str()),
            (1, "active")
        );
        assert_eq!(r.missing, ["gone"]);
        for at in 0..strs.len() {
            let mut some = all();
            some[at] = None;
            let err = build_response(&nums, some, vec![JsItem { slot: 0 }]).err();
            let want = "response arrays disagree in length";
            assert_eq!(err.as_deref(), Some(want), "at {at}");
        }
    }

    /// The extent the server declares crosses as four numbers; NaN is none.
    #[test]
    fn the_declared_extent_crosses() {
        let strs = || ["14/2624/5721"].map(String::from).to_vec();
        let mut nums = vec![1.0, 0.0, -1.0, -123.0, 47.0, -121.0, 48.0, 0.0, -1.0, 0.0];
        let (_, b) = build_response(&nums, strs(), Vec::new()).unwrap();
        assert_eq!(
            b,
            Some(Bbox {
                west: -123.0,
                south: 47.0,
                east: -121.0,
                north: 48.0
            })
        );
        nums[3..7].fill(f64::NAN);
        assert_eq!(build_response(&nums, strs(), Vec::new()).unwrap().1, None);
    }

    /// A partial answer's code crosses as a number (`cache.js`): 1 `response_full`, else
    /// the status the server answers the code with; 0 or a status of no code is none.
    #[test]
    fn the_left_out_code_crosses() {
        let strs = || ["14/2624/5721"].map(String::from).to_vec();
        for (n, code) in [
            (1.0, Some(ErrorCode::ResponseFull)),
            (503.0, Some(ErrorCode::Overloaded)),
            (429.0, Some(ErrorCode::RateLimited)),
            (504.0, Some(ErrorCode::UpstreamTimeout)),
            (502.0, Some(ErrorCode::UpstreamError)),
            (413.0, Some(ErrorCode::PayloadTooLarge)),
            (400.0, Some(ErrorCode::BadRequest)),
            (0.0, None),
            (f64::NAN, None),
            (299.0, None),
        ] {
            let nums = [
                1.0,
                0.0,
                -1.0,
                f64::NAN,
                f64::NAN,
                f64::NAN,
                f64::NAN,
                n,
                -1.0,
                0.0,
            ];
            let (r, _) = build_response(&nums, strs(), Vec::new()).unwrap();
            assert_eq!(r.left_out, code, "{n}");
        }
    }

    /// The tier the server reports: absent is `None`, an unknown one makes the answer invalid.
    #[test]
    fn the_reported_tier_crosses_and_an_unknown_one_is_invalid() {
        assert_eq!(reported(0.0, -1.0).unwrap().access, None);
        for (code, access) in Access::ALL.iter().enumerate() {
            assert_eq!(reported(0.0, code as f64).unwrap().access, Some(*access));
        }
        for bad in [0.5, 4.0, 255.0, f64::NAN] {
            let e = reported(0.0, bad).map(|_| ()).unwrap_err();
            assert!(e.starts_with("access must be one of"), "{bad}: {e}");
        }
    }
}
