//! How a request ends: [`Client::on_response`] in named steps, and [`Client::on_failure`].

use super::{
    Access, ChangedTiles, Client, Density, Event, Failure, FetchError, Kind, Received, RequestId,
    MAX_PREFETCH_MARKS,
};
use crate::batch::{FailureOutcome, Finished};
use crate::cache::{item_size_bytes, CacheError, ItemMeta, Priority, TileFreshness, MAX_CLASSES};
use crate::planner::Work;
use crate::protocol::{BatchResponse, ErrorCode, Item, TileList};
use crate::tile::{Bbox, TileId, TileSet};
use crate::util::sort_pairs;

/// What became of an answer ([`Client::on_response`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answered {
    /// Taken into the cache.
    Taken,
    /// Invalid ([`BatchResponse::validate`] refused it): nothing of it was cached, and it
    /// was handled as a [`Failure::Invalid`], retried per the batch config or given up with
    /// an [`Event::Error`]. What it was for (a `get` of an id in it) is not answered: it
    /// waits for the retry, or ends with that error.
    Invalid,
    /// Sent at a tier the client has left since: dropped, and its work asked again at the
    /// current tier, so what it was for (a `get` of an id in it) is answered by a later
    /// request, not by this one.
    AskedAgain,
    /// For a request no longer tracked (cancelled, answered, unknown): nothing changed.
    Ignored,
    /// Taken, a partial answer that left out what did not fit in it
    /// ([`ErrorCode::ResponseFull`]) after
    /// answering part of the request: the tiles and the ids asked for directly that it left
    /// out are asked again at once in a later request (no error, no backoff), so a `get` of
    /// such an id waits for that answer. Also a partial answer whose code is a failure that
    /// is retried (shed load: `overloaded`, `rate_limited`, `upstream_timeout`; the origin
    /// failed: `upstream_error`) whose left-out tiles and ids the batcher retries after a
    /// backoff, as that whole failure's (its tiles' error has `will_retry`).
    TakenInPart,
}

impl<P> Client<P> {
    /// A request answered. The response is validated; items and tile lists go into the
    /// cache. An invalid response is handled as [`Failure::Invalid`] (retried per the batch
    /// config) and reported like any failed request, as an [`Event::Error`]; the cache is
    /// unchanged then, and the result is [`Answered::Invalid`], so a shell does not end the
    /// `get`s it was for with nothing. A late answer (cancelled, or past its deadline) is
    /// ignored.
    ///
    /// The steps: validate; settle the request with the batcher (tiles the answer left out
    /// back off); drop an answer sent under another tier; note which visible tiles were
    /// showable; ingest items, missing ids and tile lists; report left-out tiles; read each
    /// visible tile's state once; back off visible tiles the cache could not keep; queue
    /// the foreground again from the same states; tell the page.
    ///
    /// The items' payloads arrive in any [`Received`] form of `P`: a `P` that knows its
    /// size ([`Payload`](super::Payload)) is its own; one that does not comes with its size
    /// beside it, which the cache charges and does not keep.
    pub fn on_response<D: Received<P>>(
        &mut self,
        id: RequestId,
        response: BatchResponse<D>,
        now_ms: u64,
    ) -> Answered {
        let now_ms = self.clock.read(now_ms);
        self.answer(id, response, None, now_ms)
    }

    /// [`on_response`](Self::on_response) for an answer whose headers declare the data's
    /// extent ([`BOUNDS_HEADER`](crate::protocol::BOUNDS_HEADER)): `declared` is the extent
    /// they declare, `None` when they declare none or one that does not read as an extent.
    /// Each accepted answer decides (valid, for a request still wanted, at the caller's
    /// tier; another one changes nothing): its extent is adopted as
    /// [`adopt_bounds`](Self::adopt_bounds) adopts it, and an answer declaring none gives
    /// every tile back to the backend, so a server restarted without `--bounds`, or one of
    /// several behind a balancer without it, never leaves tiles hidden.
    pub fn on_declared_response<D: Received<P>>(
        &mut self,
        id: RequestId,
        response: BatchResponse<D>,
        declared: Option<&Bbox>,
        now_ms: u64,
    ) -> Answered {
        let now_ms = self.clock.read(now_ms);
        self.answer(id, response, Some(declared), now_ms)
    }

    /// An answer; `declared`, when given, is the extent its headers declare.
    fn answer<D: Received<P>>(
        &mut self,
        id: RequestId,
        response: BatchResponse<D>,
        declared: Option<Option<&Bbox>>,
        now_ms: u64,
    ) -> Answered {
        self.changed();
        self.unkept.clear();
        if let Err(e) = response.validate(&self.limits) {
            return if self.fail(id, Failure::Invalid(e.to_string()), now_ms) {
                Answered::Invalid
            } else {
                Answered::Ignored // cancelled or unknown: nothing changed
            };
        }
        let tile_zoom = self.cache.config().tile_zoom;
        let sent = self.sent_with(id);
        let overtaken = sent.is_some_and(|s| {
            s.access == self.access
                && !s.again
                && self.overtaking.covers(s.at, &response, tile_zoom)
        });
        if overtaken || sent.is_some_and(|s| s.access != self.access) {
            // The tier changed while it was out (its lists are for another tier, and its
            // items may be above the current one), or an invalidation made since covers it
            // (cached, it would bring back what the change dropped: `overtaking.rs`; work is
            // asked again so once, then its answer is taken). Drop
            // it, and ask its work again (the visible tiles would be asked for anyway; the
            // ids of a `get` would not, and the get would end with nothing). Nothing is
            // counted: the backend did nothing wrong, and the work is the same.
            let Some(finished) = self.batcher.send_again(id) else {
                return Answered::Ignored;
            };
            if overtaken {
                self.overtaking.asked_again(&finished);
            }
            self.discarded += 1;
            self.refresh_foreground(now_ms);
            return Answered::AskedAgain;
        }
        // Data tiles the request was for that no tile list in the answer covers (the list
        // of the tile or of an ancestor) back off in the batcher and become an error below.
        let listed = TileSet::new(response.tiles.iter().map(|l| l.tile));
        let covered = |t: TileId| covers(&listed, t);
        // What did not fit in this answer (the server answered what did, in request order)
        // is asked again in a later request, when something of the request was answered.
        let answered = |i: &str| {
            response.items.iter().any(|it| it.id == i) || response.missing.iter().any(|m| m == i)
        };
        // Why it left them out decides how (the batcher: asked again at once, or failed).
        let left_out = (response.left_out).map(|c| (c, &answered as &dyn Fn(&str) -> bool));
        let Some((finished, unanswered, in_part)) =
            self.batcher.on_answer(id, covered, left_out, now_ms)
        else {
            return Answered::Ignored; // cancelled or unknown: its tiles were not wanted any more
        };
        // The tiles this answer was for: listed ones, and those refreshed by id (an id's
        // answer can evict another item of the same tile, which would be asked for at once).
        // A refresh that a `response_full` answer left ids of out is not answered yet (the
        // planner asks the rest again), nor one a failure code left ids of out (the batcher
        // backs it off, and retries it): not a tile the answer failed to keep (an error).
        let failed = (response.left_out).is_some_and(|c| c != ErrorCode::ResponseFull);
        let answered_tiles = TileSet::new(finished.works.iter().filter_map(|w| match w {
            Work::Tile(t) if covered(*t) => Some(*t),
            Work::Ids { tile, ids } if !(in_part || failed) || ids.iter().all(|i| answered(i)) => {
                Some(*tile)
            }
            _ => None,
        }));
        // The server reports the tier it filtered the answer for. Below the tier asked, it
        // lowered it (the caller's credential gives less): the cache follows at once (what
        // the reported tier may not see goes, as with `set_access`) and views as no more
        // from then on. A higher report changes nothing: the cache reads at its own tier.
        let lowered = response.access.is_some_and(|r| self.lower_to(r));
        // The extent it declares; one out of range counts as none.
        let extent_changed = declared.is_some_and(|declared| {
            let cache = &mut self.cache;
            cache
                .adopt_bounds(declared)
                .or_else(|_| cache.adopt_bounds(None))
                .unwrap_or(false)
        });
        if extent_changed {
            self.changed_tiles = ChangedTiles::All;
        }
        let was_complete = self.complete;
        let shown_before = self.showable_visible(now_ms);
        let loading_before = self.showable_loading(now_ms);
        let BatchResponse {
            mut tiles,
            items,
            missing,
            ..
        } = response;
        // One list per requested tile (or one covering it): a list of a tile nobody asked
        // for is not this answer's to give, and is not taken.
        tiles.retain(|l| {
            finished
                .works
                .iter()
                .any(|w| matches!(w, Work::Tile(t) if l.tile.contains(*t)))
        });
        self.density.observe(&tiles, self.cache.config().tile_zoom);
        let mut touched_visible =
            self.ingest_items(items, &finished, now_ms) | lowered | extent_changed;
        if !missing.is_empty() {
            for id in &missing {
                self.changed_tiles.add_item(&self.cache, id);
            }
            let ids: Vec<&str> = missing.iter().map(String::as_str).collect();
            self.cache.forget_ids(&ids);
        }
        touched_visible |= self.ingest_lists(&tiles, finished.kind, now_ms);
        // A view too wide to fetch shows the cached tiles in it: an answer that landed
        // there (a request sent for an earlier view) changes it.
        if let Some((_, range)) = self.too_wide {
            touched_visible |= tiles.iter().any(|t| range.contains(t.tile));
        }
        if !unanswered.is_empty() {
            let left_out = response.left_out;
            self.report_unanswered(id, finished.kind, unanswered, left_out, in_part, now_ms);
        }
        let states = self.visible_states(now_ms);
        let before = (&shown_before[..], &loading_before[..]);
        self.back_off_unkept(id, finished.kind, &states, before, &answered_tiles, now_ms);
        let now_complete = self.queue_foreground(states, now_ms);
        if touched_visible {
            self.queue_event(Event::Updated);
        }
        self.complete = now_complete;
        if now_complete && !was_complete {
            self.queue_event(Event::Complete);
        }
        if in_part {
            Answered::TakenInPart
        } else {
            Answered::Taken
        }
    }

    /// A request failed (timeout, network, HTTP error, undecodable answer, or aborted by the
    /// shell). Never fails: the error becomes an [`Event::Error`] and a counter (an abort
    /// is silent).
    pub fn on_failure(&mut self, id: RequestId, failure: Failure, now_ms: u64) {
        let now_ms = self.clock.read(now_ms);
        self.fail(id, failure, now_ms);
    }

    /// [`on_failure`](Self::on_failure); returns whether the request was tracked (`false`:
    /// cancelled, already ended or unknown, and nothing changed).
    pub(super) fn fail(&mut self, id: RequestId, failure: Failure, now_ms: u64) -> bool {
        self.changed();
        self.sent_with(id);
        let outcome = self.batcher.on_failure(id, &failure, now_ms);
        let (finished, will_retry) = match outcome {
            FailureOutcome::Unknown => return false,
            FailureOutcome::Retrying { request, .. } => (request, true),
            FailureOutcome::GaveUp(request) => (request, false),
        };
        if matches!(failure, Failure::Aborted) {
            return true;
        }
        self.errors += 1;
        let tiles: Vec<TileId> = finished.tiles().collect();
        if !will_retry {
            self.give_up_loading(&tiles);
        }
        let view_incomplete = self.leaves_view_incomplete(&tiles, now_ms);
        self.queue_event(Event::Error(FetchError {
            request: id,
            kind: finished.kind,
            tiles,
            failure,
            will_retry,
            view_incomplete,
        }));
        if !will_retry {
            self.refresh_foreground(now_ms);
        }
        true
    }

    /// [`on_failure`](Self::on_failure) for a failure whose headers report the caller's
    /// verified tier ([`ACCESS_HEADER`](crate::protocol::ACCESS_HEADER)): `reported` is that
    /// tier, `None` when they report none or one that does not read as a tier.
    ///
    /// A 403 reporting a tier below the one the request was sent at is the server refusing
    /// a tier the credential no longer gives (a subscription ended, another user signed in).
    /// Sent at the current tier, the cache follows it as it follows an answer reporting a
    /// lower tier: what that tier may not see goes at once, the tier is lowered and
    /// [`verified`](Self::verified) set, [`Event::Updated`] is queued. Sent at a tier the
    /// cache has left for a lower one since (the other requests in flight when the first
    /// such 403 lowered it, or a `set_access` down), the refusal is explained by that
    /// change and lowers nothing: a newer choice is not overridden by an old request's
    /// answer. Either way the request's work goes out again at once, at the current tier,
    /// with no error reported and nothing counted towards the breaker, the backoff or the
    /// retries; each such 403 is for a request sent at a tier above the current one, which
    /// only goes down, so this cannot repeat without bound. Anything else (another status, a
    /// tier not below the one sent at, none, or a request sent at a tier below the current
    /// one) is the failure it is, as `on_failure` handles it.
    pub fn on_reported_failure(
        &mut self,
        id: RequestId,
        failure: Failure,
        reported: Option<Access>,
        now_ms: u64,
    ) {
        let now_ms = self.clock.read(now_ms);
        let forbidden = matches!(failure, Failure::Http { status: 403, .. });
        // (A tier taken by `sent_with` here is not needed by `on_failure`: it only forgets it.)
        let sent = match reported {
            Some(_) if forbidden => self.sent_with(id).map(|s| s.access),
            _ => None,
        };
        let (Some(reported), Some(sent)) = (reported, sent) else {
            self.fail(id, failure, now_ms);
            return;
        };
        if reported >= sent || sent < self.access {
            self.fail(id, failure, now_ms);
            return;
        }
        self.changed();
        if self.batcher.send_again(id).is_none() {
            return; // cancelled meanwhile: its late end changes nothing
        }
        let lowered = sent == self.access && self.lower_to(reported);
        self.complete = self.refresh_foreground(now_ms);
        if lowered {
            self.queue_event(Event::Updated);
        }
    }

    /// Lowers the caller to `reported`, a tier the server reported for its credential, when
    /// it is below the current one: what it may not see is dropped, and views go at no more
    /// from then on ([`Client::verified`]), and the density the answers showed (for the
    /// tier left) is forgotten, as `set_access` forgets it. Returns whether it lowered. A
    /// higher report changes nothing: the cache reads at its own tier.
    fn lower_to(&mut self, reported: Access) -> bool {
        if reported >= self.access {
            return false;
        }
        self.cache.drop_above(reported);
        self.batcher.release_held(None);
        self.density = Density::default();
        self.changed_tiles = ChangedTiles::All;
        self.access = reported;
        self.verified = Some(reported);
        true
    }

    /// Puts an answer's items into the cache (those the caller may see); returns whether
    /// any is in a visible tile. Items of visible tiles are inserted as
    /// [`Priority::Visible`]; those of tiles a host loads, from a foreground request, as
    /// [`Priority::Loading`] (they never push out the view's items: refused instead, they
    /// leave their tiles unshowable and the loads fail in `back_off_unkept`); the rest (a
    /// `get`'s answer, a prefetch) as [`Priority::Prefetch`], so they never push out the
    /// items of the view or of the tiles a host loads. An item asked for directly (a
    /// `get`) that the cache refuses, or that a later item of the answer pushes out, is kept
    /// aside for the shell ([`Client::take_unkept`]).
    fn ingest_items<D: Received<P>>(
        &mut self,
        items: Vec<Item<D>>,
        finished: &Finished,
        now_ms: u64,
    ) -> bool {
        let tile_zoom = self.cache.config().tile_zoom;
        let (mut touched_visible, mut kept, mut kept_bytes) = (false, 0, 0);
        self.items_fetched += items.len() as u64;
        let loading = match finished.kind {
            Kind::Foreground => TileSet::new(self.loading.iter().copied()),
            _ => TileSet::default(),
        };
        // The ids asked for directly that this answer stored so far.
        let mut asked_kept: Vec<String> = Vec::new();
        for item in items {
            if !self.access.can_see(item.access) {
                continue; // a server that ignores tiers must not put them in our cache
            }
            let data_tile = TileId::from_lon_lat(item.lon, item.lat, tile_zoom).ok();
            let visible = data_tile.is_some_and(|t| self.visible_set.contains(t));
            touched_visible |= visible;
            let priority = if visible {
                Priority::Visible
            } else if data_tile.is_some_and(|t| loading.contains(t)) {
                Priority::Loading
            } else {
                Priority::Prefetch
            };
            let size_bytes = item_size_bytes(&item.id, &item.class, item.data.size_bytes());
            let data = item.data.into_payload();
            let meta = ItemMeta {
                lon: item.lon,
                lat: item.lat,
                class: item.class,
                access: item.access,
                ttl_ms: item.ttl.map(|s| s as u64 * 1000),
                size_bytes,
            };
            // Validated above; an item the cache still refuses is skipped, not fatal (but
            // handed to a get that asked for it, when refused for want of room, for its size,
            // or for its class beyond the `MAX_CLASSES` held). One asked
            // for and kept that a later item of this answer pushes out is handed out too.
            let mut evicted = Vec::new();
            // Replaced or moved, the item leaves the tile it was in (read before the insert).
            let was = self.cache.tile_of(&item.id);
            let inserted =
                (self.cache).insert_or_return(&item.id, meta, data, now_ms, priority, &mut evicted);
            if let Ok((_, None)) = inserted {
                self.changed_tiles.extend(was.into_iter().chain(data_tile));
            }
            for (id, data) in evicted {
                if let Some(at) = asked_kept.iter().position(|k| **k == *id) {
                    self.unkept.push((asked_kept.swap_remove(at), data));
                }
            }
            if finished.loose_ids.contains(&item.id) {
                match inserted {
                    Ok((_, None)) => asked_kept.push(item.id),
                    Ok((_, Some(data)))
                    | Err((CacheError::ItemTooLarge { .. }, data))
                    | Err((CacheError::TooManyClasses { .. }, data)) => {
                        self.unkept.push((item.id, data))
                    }
                    Err(_) => {}
                }
            }
            (kept, kept_bytes) = (kept + 1, kept_bytes + size_bytes);
        }
        self.density.observe_items(kept, kept_bytes);
        touched_visible
    }

    /// Items the last answer ([`on_response`](Self::on_response)) gave for ids asked for
    /// directly ([`Client::get`], [`Client::request_ids`]) that the cache could not keep:
    /// making room would have pushed out the items of the view or of the tiles a host loads
    /// (which an answer for ids never does), the item is larger than `max_bytes` or of one
    /// class more than the [`MAX_CLASSES`] the cache holds, or a
    /// later item of the same answer pushed it out again (ids asked for together, with room
    /// for fewer of them beside the view's items). Each
    /// passed the same tier check as the cached ones (an item above the caller's tier, or
    /// above the tier the server reported for its credential, is never among them), so a
    /// shell hands it to the `get` that waits for it instead of answering "does not
    /// exist". Drained by this call; the next answer drops what was not taken.
    pub fn take_unkept(&mut self) -> Vec<(String, P)> {
        std::mem::take(&mut self.unkept)
    }

    /// Records an answer's tile lists at the caller's tier; returns whether any covers a
    /// visible tile. A prefetch's lists mark their data tiles as prefetched.
    fn ingest_lists(&mut self, lists: &[TileList], kind: Kind, now_ms: u64) -> bool {
        let tile_zoom = self.cache.config().tile_zoom;
        let mut touched_visible = false;
        for list in lists {
            let ids: Vec<&str> = list.ids.iter().map(String::as_str).collect();
            let ttl = list.ttl.map(|s| s as u64 * 1000);
            if self
                .cache
                .insert_tile(list.tile, &ids, ttl, self.access, now_ms)
                .is_err()
            {
                continue;
            }
            self.changed_tiles.add(list.tile);
            // The list's tile itself at the data zoom; none for a finer tile.
            for t in list.tile.descendants(tile_zoom).unwrap_or_default() {
                if self.visible_set.contains(t) {
                    touched_visible = true;
                } else if kind == Kind::Prefetch {
                    self.mark_prefetched(t, now_ms);
                }
            }
        }
        touched_visible
    }

    /// Tiles the answer left out are an error, or a visible one would be asked for again
    /// at once, for ever. (The batcher already holds them back.) A host's load of them
    /// ([`Client::load_tile`]) fails with the error: they leave the loading tiles, or they
    /// would be asked for again after each backoff for as long as the page stays open.
    /// Left out with a code (`left_out`, the answer's `error`), the error is the failure a
    /// whole answer with that code is (`Failure::Http` with its status: the overload, the
    /// origin's failure, a tile too large to serve), and while the batcher retries them
    /// (`will_retry`) the loads wait; left out with none, the answer broke the protocol
    /// (`Invalid`).
    fn report_unanswered(
        &mut self,
        id: RequestId,
        kind: Kind,
        unanswered: Vec<TileId>,
        left_out: Option<ErrorCode>,
        will_retry: bool,
        now_ms: u64,
    ) {
        if !will_retry {
            self.give_up_loading(&unanswered);
        }
        self.errors += 1;
        let view_incomplete = self.leaves_view_incomplete(&unanswered, now_ms);
        let failure = match left_out {
            Some(code) => Failure::Http {
                status: code.http_status(),
                retry_after_ms: None,
            },
            None => Failure::Invalid(format!(
                "the answer leaves out {} of the requested tiles (first {}); every requested tile must be listed, empty or not",
                unanswered.len(),
                unanswered[0]
            )),
        };
        self.queue_event(Event::Error(FetchError {
            request: id,
            kind,
            failure,
            tiles: unanswered,
            will_retry,
            view_incomplete,
        }));
    }

    /// Visible tiles, and tiles a host waits for ([`Client::load_tile`]), that this answer
    /// covered or that were showable before it, and that cannot be shown now: the view or
    /// the host's tiles need more items or bytes than the cache may hold (inserting one
    /// tile evicted another, protected as they all are), the lists name items above the
    /// tier, or a list is coarser than the cache can split. Asking for them again at once
    /// would loop for ever, tile after tile, so they back off and are reported: visible
    /// tiles are asked for again after the backoff; the loads fail (the tiles leave the
    /// loading tiles), since the same answers would not be kept the next time either.
    /// `before` is which visible tiles (in [`Client::visible_tiles`] order) and which
    /// loading tiles were showable before the answer.
    fn back_off_unkept(
        &mut self,
        id: RequestId,
        kind: Kind,
        states: &[TileFreshness],
        before: (&[bool], &[TileId]),
        answered: &TileSet,
        now_ms: u64,
    ) {
        let (shown_before, loading_before) = before;
        let (mut unkept, mut touched) = (Vec::new(), false);
        for ((&t, state), &before) in self.visible.iter().zip(states).zip(shown_before) {
            if before || answered.contains(t) {
                touched = true;
                if !state.is_showable() {
                    unkept.push(t);
                }
            }
        }
        // Tiles a host waits for that the answer covered, or that it pushed out, and that
        // cannot be shown. (One pushed out before the host read it would otherwise be asked
        // for again, pushing out another, for ever.)
        let (cache, access) = (&self.cache, self.access);
        let lost: Vec<TileId> = (self.loading.iter().copied())
            .filter(|&t| answered.contains(t) || loading_before.contains(&t))
            .filter(|t| !unkept.contains(t))
            .filter(|&t| !cache.tile_freshness(t, access, now_ms).is_showable())
            .collect();
        unkept.extend(lost);
        if unkept.is_empty() {
            // An answer for none of the visible tiles (ids, prefetch) leaves the streak
            // as it is: only one that kept them all ends it.
            if touched {
                self.unkept_rounds = 0;
            }
            return;
        }
        // The tiles take turns evicting each other, and each one's success resets its own
        // backoff: the streak that grows the delay is the view's, not the tile's.
        self.unkept_rounds = self.unkept_rounds.saturating_add(1);
        self.batcher.back_off(&unkept, self.unkept_rounds, now_ms);
        // A load waiting for a visible tile fails with this error too (a shell fails the
        // loads waiting for any tile an error names): it is no longer loading either.
        self.give_up_loading(&unkept);
        let view_incomplete = self.leaves_view_incomplete(&unkept, now_ms);
        let config = self.cache.config();
        self.errors += 1;
        self.queue_event(Event::Error(FetchError {
            request: id,
            kind,
            failure: Failure::Invalid(format!(
                "{} answered tiles could not be kept (first {}): the view, or the tiles a host \
                 loads, need more than the cache holds (max_items {}, max_bytes {}, items of \
                 {MAX_CLASSES} classes), or the answer's lists name items above the caller's \
                 tier; visible tiles are asked for again after a backoff, loads fail",
                unkept.len(),
                unkept[0],
                config.max_items,
                config.max_bytes
            )),
            tiles: unkept,
            will_retry: false,
            view_incomplete,
        }));
    }

    /// Whether one of the visible tiles that cannot be shown is one of `tiles` or inside one
    /// ([`FetchError::view_incomplete`]).
    fn leaves_view_incomplete(&self, tiles: &[TileId], now_ms: u64) -> bool {
        (self.visible.iter()).any(|&v| {
            tiles.iter().any(|r| r.contains(v))
                && !(self.cache)
                    .tile_freshness(v, self.access, now_ms)
                    .is_showable()
        })
    }

    fn mark_prefetched(&mut self, t: TileId, now_ms: u64) {
        self.prefetch_tiles_fetched += 1;
        if self.prefetched.len() >= MAX_PREFETCH_MARKS {
            // Forget the oldest half: they were fetched and never shown.
            let mut ages: Vec<(u64, u64)> = self.prefetched.values().map(|&at| (at, 0)).collect();
            sort_pairs(&mut ages);
            let cutoff = ages[ages.len() / 2].0;
            let before = self.prefetched.len();
            self.prefetched.retain(|_, at| *at > cutoff);
            self.prefetch_tiles_wasted += (before - self.prefetched.len()) as u64;
        }
        if self.prefetched.insert(t, now_ms).is_some() {
            // Fetched again before being shown: the first fetch was wasted.
            self.prefetch_tiles_wasted += 1;
        }
    }
}

/// Whether `listed` holds `t` or one of its ancestors: a tile list covers its tile's
/// descendants.
fn covers(listed: &TileSet, t: TileId) -> bool {
    let mut a = Some(t);
    while let Some(tile) = a {
        if listed.contains(tile) {
            return true;
        }
        a = tile.parent();
    }
    false
}
