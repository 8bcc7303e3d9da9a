//! Everything that crosses the JS/wasm boundary as a number or a name, written once: the
//! tags of the engine's record lists, the failure, request-kind, tile-state and tier codes,
//! the error codes and classes, the order of the `stats()` numbers, and the limits the JS
//! shell enforces itself. The `TileCache` options are in [`super::options`].
//!
//! `js/gen/boundary.js` (what `js/cache.js` imports) and `js/gen/boundary.d.ts` (what
//! `js/index.d.ts` re-exports) are generated from these tables by [`super::codegen`];
//! `cargo test --features wasm` fails when they are stale and `make gen` rewrites them. So a
//! new record tag, code or stats field is added here, in one place, and the JS cannot drift.
//!
//! Names and docs are only compiled into tests (the generator): the wasm carries the codes.

use crate::batch::Kind as RequestKind;
use crate::client::{ClientStats, TileState};

/// Defines an enum whose values cross the boundary as numbers: each variant with its code
/// (the discriminant), the JavaScript name and a doc for the generated declarations.
macro_rules! codes {
    (
        $(#[doc = $doc:literal])*
        $name:ident {
            $( $(#[doc = $vdoc:literal])* $variant:ident = $code:literal => $js:literal, )*
        }
    ) => {
        $(#[doc = $doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub(crate) enum $name {
            $( $(#[doc = $vdoc])* $variant = $code, )*
        }

        impl $name {
            /// Every variant, in code order.
            #[allow(dead_code)]
            pub(crate) const ALL: &'static [$name] = &[$($name::$variant),*];

            /// The code, as it crosses in a record list.
            pub(crate) fn num(self) -> f64 {
                self as u8 as f64
            }

            /// The variant with this code; `None` for any other number (a fraction, a
            /// negative, NaN), so nothing from JavaScript is truncated into a valid code.
            #[allow(dead_code)]
            pub(crate) fn from_num(n: f64) -> Option<$name> {
                Self::ALL.iter().copied().find(|v| v.num() == n)
            }

            /// The name JavaScript knows it by.
            #[cfg(test)]
            pub(crate) fn js(self) -> &'static str {
                match self {
                    $($name::$variant => $js,)*
                }
            }

            /// Its doc comment, for the generated declarations.
            #[cfg(test)]
            pub(crate) fn doc(self) -> &'static str {
                match self {
                    $($name::$variant => concat!($($vdoc),*),)*
                }
            }
        }
    };
}

codes! {
    /// The tag that starts each record of an engine output list (`Out` in
    /// [`super::engine`]); the JS name is the constant `js/cache.js` switches on.
    Tag {
        /// `id, kind, attempt, timeoutMs, tiles, ids, tiles... | access, ids...`: a request
        /// to send (a `Transmit` from `Client::poll_request`).
        Transmit = 1 => "TRANSMIT",
        /// `id`: abort this request; its answer is no longer wanted.
        Cancel = 2 => "CANCEL",
        /// Data for the view arrived: read the view again.
        Updated = 3 => "UPDATED",
        /// Every visible tile can be shown.
        Complete = 4 => "COMPLETE",
        /// `id, kind, willRetry, viewIncomplete, failure, status, retryAfterMs, tiles,
        /// tiles... | message`: a request failed (`retryAfterMs` -1 for none), for these data
        /// tiles (all of its tiles, or those an answer left out or that could not be kept);
        /// `viewIncomplete` 1 when one of the view's tiles cannot be shown for want of it
        /// (`FetchError::view_incomplete`).
        Error = 5 => "ERROR",
        /// `at`: the clock time at which to call `tick`.
        Wakeup = 6 => "WAKEUP",
        /// `count, slots...`: items that left the cache; `cache.js` clears their slots in its
        /// table of item objects, to reuse them for later answers (see `JsItem`).
        Freed = 7 => "FREED",
        /// `count, tiles...`: the tiles whose cached items changed (`Client::take_changed_tiles`);
        /// `count` -1 (no tiles): any tile may have.
        Changed = 8 => "CHANGED",
    }
}

codes! {
    /// Why a request failed, as `Engine.failure` takes it and ERROR records carry it; the JS
    /// name is the `code` of the error the page gets.
    FailureCode {
        /// No answer within `batch.timeoutMs`.
        Timeout = 0 => "ERR_TIMEOUT",
        /// The connection failed or the body could not be read.
        Network = 1 => "ERR_NETWORK",
        /// The server answered with an HTTP error status (see `status`).
        Http = 2 => "ERR_HTTP",
        /// The answer is not JSON, has the wrong shape or values, is larger than the body
        /// limit, or leaves out a requested tile.
        Invalid = 3 => "ERR_INVALID_RESPONSE",
        /// The server refused the credential (HTTP 401) even after `auth.token()` was asked
        /// for a fresh token once; retried with backoff.
        Unauthorized = 4 => "ERR_UNAUTHORIZED",
    }
}

codes! {
    /// What `Engine.tiles` does with its tiles (`z/x/y` strings): the per-tile calls share
    /// one entry point, which keeps the wasm and its glue smaller than one export each. Every
    /// call but `TILES_STATES` hands back the records of what it set in motion.
    TileOp {
        /// `tileStates`: per tile the code of its state (`TILE_STATES`); nothing else.
        States = 0 => "TILES_STATES",
        /// `loadTiles`: per tile `1, count, (flag, slot) per item` (the flag 1 when the item
        /// expired but is within stale-while-revalidate, else 0; the slot of its object, as
        /// `JsItem` keeps it), `0, count, data tiles...` (packed; queued as
        /// foreground work) or `2, count, max, minZ` (it covers more data tiles than
        /// `maxVisibleTiles`).
        Load = 1 => "TILES_LOAD",
        /// As `TILES_LOAD`, without making tiles loading: pending loads read again (their
        /// data tiles are loading since their `TILES_LOAD`).
        Read = 2 => "TILES_READ",
        /// `prefetch(tiles)`: header `queued`, or `-1, index, count, max, minZ` when tile
        /// `index` covers more than `maxVisibleTiles` data tiles (nothing queued).
        Prefetch = 3 => "TILES_PREFETCH",
        /// Settled or aborted loads: these data tiles are no longer loading (queued while
        /// they cannot be shown, kept from eviction) unless visible.
        Release = 4 => "TILES_RELEASE",
        /// `setPopularTiles(tiles)`: the planner's prefetch asks only for these tiles and the
        /// data tiles under them (`Client::set_popular_tiles`); nothing handed back.
        Popular = 5 => "TILES_POPULAR",
        /// `setPopularTiles(null)`: prefetch is not limited (the tiles are ignored).
        PopularOff = 6 => "TILES_POPULAR_OFF",
    }
}

codes! {
    /// The class of an error thrown for a bad argument or option.
    ErrorClass {
        /// The value has the wrong type (or a string is not a tile): `TypeError`.
        Type = 0 => "TypeError",
        /// The value has the right type but is out of range: `RangeError`.
        Range = 1 => "RangeError",
    }
}

codes! {
    /// The `code` of an error thrown for a bad argument, option or call: the wasm's
    /// argument errors cross as these numbers, and `js/cache.js` throws the JS-only ones.
    Code {
        /// An argument or option of the wrong JavaScript type (a string where a number
        /// belongs, `undefined`, ...). TypeError.
        InvalidArgType = 0 => "ERR_INVALID_ARG_TYPE",
        /// A number that is not an integer, not finite, or outside its range. RangeError.
        OutOfRange = 1 => "ERR_OUT_OF_RANGE",
        /// A string that is not a tile `z/x/y` (TypeError) or names no tile (RangeError).
        InvalidTile = 2 => "ERR_INVALID_TILE",
        /// More tiles than one call may cover: a bbox of more than {max_bbox_tiles} tiles (a
        /// viewport over `maxVisibleTiles` data tiles is not an error but `tooWide`).
        /// RangeError.
        TooManyTiles = 3 => "ERR_TOO_MANY_TILES",
        /// A value of the right type that is not one of the allowed ones (an access tier,
        /// an option name, an endpoint that is not an absolute URL). TypeError.
        InvalidArgValue = 4 => "ERR_INVALID_ARG_VALUE",
        /// A `TileCache` used after `dispose()`. Error.
        Disposed = 5 => "ERR_DISPOSED",
    }
}

/// A core value with the name JavaScript knows it by and a doc, both kept for the generator
/// only: [`named`] drops them outside tests, so the wasm carries the order alone.
pub(crate) struct Named<T> {
    pub value: T,
    #[cfg(test)]
    pub js: &'static str,
    #[cfg(test)]
    pub doc: &'static str,
}

pub(crate) const fn named<T>(value: T, _js: &'static str, _doc: &'static str) -> Named<T> {
    Named {
        value,
        #[cfg(test)]
        js: _js,
        #[cfg(test)]
        doc: _doc,
    }
}

/// Request kinds; the code is the index.
pub(crate) const REQUEST_KINDS: [Named<RequestKind>; 2] = [
    named(
        RequestKind::Foreground,
        "foreground",
        "Loads the visible tiles.",
    ),
    named(
        RequestKind::Prefetch,
        "prefetch",
        "Loads what may come into view next.",
    ),
];

/// The states `tileStates` reports ([`crate::Client::tile_state`]); the code is the index.
pub(crate) const TILE_STATES: [Named<TileState>; 4] = [
    named(
        TileState::Loaded,
        "loaded",
        "Showable, fetched for the view (or already shown).",
    ),
    named(
        TileState::Prefetched,
        "prefetched",
        "Showable, fetched ahead by prefetch and not shown yet.",
    ),
    named(TileState::InFlight, "inFlight", "A request for it is out."),
    named(
        TileState::Missing,
        "missing",
        "Not showable and not being fetched.",
    ),
];

/// A request kind's code.
pub(crate) fn request_kind_num(kind: RequestKind) -> f64 {
    code_of(&REQUEST_KINDS, kind)
}

/// A tile state's code.
pub(crate) fn tile_state_code(state: TileState) -> u8 {
    code_of(&TILE_STATES, state) as u8
}

fn code_of<T: PartialEq>(table: &[Named<T>], value: T) -> f64 {
    // Every variant is in its table (the tests check), so the fallback is never taken.
    table.iter().position(|n| n.value == value).unwrap_or(0) as f64
}

/// One `stats()` field: how to read it from the core's counters. A flag crosses as 0 or 1
/// and reaches the page as a boolean.
pub(crate) struct Stat {
    pub get: fn(&ClientStats) -> f64,
    #[cfg(test)]
    pub name: &'static str,
    #[cfg(test)]
    pub flag: bool,
    #[cfg(test)]
    pub doc: &'static str,
}

const fn stat(_name: &'static str, get: fn(&ClientStats) -> f64, _doc: &'static str) -> Stat {
    Stat {
        get,
        #[cfg(test)]
        name: _name,
        #[cfg(test)]
        flag: false,
        #[cfg(test)]
        doc: _doc,
    }
}

const fn flag(_name: &'static str, get: fn(&ClientStats) -> f64, _doc: &'static str) -> Stat {
    Stat {
        get,
        #[cfg(test)]
        name: _name,
        #[cfg(test)]
        flag: true,
        #[cfg(test)]
        doc: _doc,
    }
}

/// The fields of `stats()`, in the order `Engine.stats` hands their values over.
pub(crate) const STATS: [Stat; 15] = [
    stat(
        "hits",
        |s| s.cache.hits as f64,
        "Item lookups that found a fresh item.",
    ),
    stat(
        "misses",
        |s| s.cache.misses as f64,
        "Item lookups that found nothing showable.",
    ),
    stat(
        "staleHits",
        |s| s.cache.stale_hits as f64,
        "Item lookups that found a stale item (within `ttl.staleWhileRevalidate`).",
    ),
    stat(
        "hitRate",
        ClientStats::hit_rate,
        "(hits + staleHits) / lookups; 0 before any lookup.",
    ),
    stat(
        "requests",
        |s| s.batch.requests as f64,
        "Batch requests sent, retries included.",
    ),
    stat(
        "prefetchRequests",
        |s| s.batch.prefetch_requests as f64,
        "Those sent for prefetch.",
    ),
    stat(
        "itemsFetched",
        |s| s.items_fetched as f64,
        "Items received.",
    ),
    stat(
        "prefetchTilesUsed",
        |s| s.prefetch_tiles_used as f64,
        "Prefetched tiles later shown.",
    ),
    stat(
        "prefetchTilesWasted",
        |s| s.prefetch_tiles_wasted as f64,
        "Prefetched tiles that expired or were fetched again unseen.",
    ),
    stat(
        "evictions",
        |s| s.cache.evictions as f64,
        "Items evicted for capacity.",
    ),
    stat("entries", |s| s.cache.entries as f64, "Items held now."),
    stat(
        "bytes",
        |s| s.cache.bytes as f64,
        "Bytes held now (each item: its id, class and `data` as JSON, plus 96).",
    ),
    stat("inFlight", |s| s.in_flight as f64, "Requests out now."),
    stat(
        "errors",
        |s| s.errors as f64,
        "Errors `onError` heard: failed request attempts, and reports of ids a partial answer left out.",
    ),
    flag(
        "breakerOpen",
        |s| s.breaker_open as u8 as f64,
        "The prefetch circuit breaker is open: prefetch is paused, foreground still goes out.",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Access;

    #[test]
    fn codes_round_trip_and_refuse_anything_else() {
        for &t in Tag::ALL {
            assert_eq!(Tag::from_num(t.num()), Some(t));
        }
        for &f in FailureCode::ALL {
            assert_eq!(FailureCode::from_num(f.num()), Some(f));
        }
        for n in [-1.0, 0.5, 5.0, f64::NAN, f64::INFINITY, 256.0] {
            assert_eq!(FailureCode::from_num(n), None, "{n}");
        }
        assert_eq!(Tag::from_num(0.0), None);
    }

    #[test]
    fn every_core_variant_has_one_code() {
        let states = [
            TileState::Loaded,
            TileState::Prefetched,
            TileState::InFlight,
            TileState::Missing,
        ];
        // An exhaustive match: a new core state fails to compile here until it is listed.
        for s in states {
            match s {
                TileState::Loaded
                | TileState::Prefetched
                | TileState::InFlight
                | TileState::Missing => {}
            }
            assert_eq!(TILE_STATES[tile_state_code(s) as usize].value, s);
        }
        for k in [RequestKind::Foreground, RequestKind::Prefetch] {
            match k {
                RequestKind::Foreground | RequestKind::Prefetch => {}
            }
            assert_eq!(REQUEST_KINDS[request_kind_num(k) as usize].value, k);
        }
        // Tiers cross by rank, named by the core.
        for (i, a) in Access::ALL.iter().enumerate() {
            assert_eq!(a.rank() as usize, i);
        }
    }

    #[test]
    fn names_are_unique() {
        let lists: [Vec<&str>; 3] = [
            STATS.iter().map(|s| s.name).collect(),
            TILE_STATES.iter().map(|s| s.js).collect(),
            Code::ALL.iter().map(|c| c.js()).collect(),
        ];
        for mut names in lists {
            let n = names.len();
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), n, "{names:?}");
        }
    }
}
