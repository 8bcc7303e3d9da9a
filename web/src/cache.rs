//! [`TileCache`]: the browser shell over the sans-IO [`Client`], for Rust front-ends.
//!
//! It does what `js/cache.js` does for the npm package, in Rust: POSTs each [`Transmit`]
//! with gloo-net under a web-sys `AbortController` (aborted when the core names the request
//! in `poll_cancel`: a stale prefetch, or one past its deadline), answers the core's
//! wake-ups with a gloo-timers `Timeout`, and tells the page through a `futures::Stream` of
//! [`Update`]s, [`TileCache::when_complete`] and [`TileCache::get_many`]. What to fetch,
//! when to retry and what to keep is the core's; this file only moves bytes and time.
//!
//! Items are decoded once, when they arrive: the item JSON's `data` into the caller's `T`
//! (`serde_json::Value` by default), kept behind an `Rc` so a view hands out pointers, not
//! copies.

use std::any::Any;
use std::cell::{Cell, RefCell, RefMut};
use std::collections::{HashMap, HashSet};
use std::ops::{Deref, DerefMut};
use std::rc::Rc;

use futures_channel::oneshot;
use gloo_events::EventListener;
use gloo_net::http::Request;
use gloo_timers::callback::Timeout;
use serde::de::DeserializeOwned;
use wasm_bindgen::{JsCast, JsValue};
use web_sys::{AbortController, AbortSignal, RequestCredentials};

use tilewarm::batch::{Failure, Kind, RequestId, Transmit};
use tilewarm::cache::{parse_bounds, CacheItem, Invalidate};
use tilewarm::client::{
    Answered, ChangedTiles, Client, ClientStats, Event, Received, TileState, ViewTooLarge,
};
use tilewarm::planner::{PopularTiles, Viewport};
use tilewarm::protocol::{
    decode_response, BatchResponse, Item as WireItem, Limits, ACCESS_HEADER, BOUNDS_HEADER,
};
use tilewarm::tile::Bbox;
use tilewarm::{Access, TileId};

use crate::auth::{check_token, show, Auth};
use crate::error::{Error, ErrorCode};
use crate::options::{Credentials, Options};
use crate::retry_after::retry_after_ms;
use crate::updates::{Subscribers, Updates};
use crate::view::{Item, Shown, TileLoad, Update, View};

/// The core's payload: the decoded item.
struct Stored<T: 'static> {
    item: Rc<Item<T>>,
}

// A cached item with this payload is 56 bytes on wasm32 (a slot of 64 in the core's item
// store, with its two links): the size kept beside the `Rc` would make it 64 (a slot of 72).
#[cfg(target_arch = "wasm32")]
const _: () = assert!(std::mem::size_of::<CacheItem<Stored<()>>>() <= 56);

/// An answer's payload: the decoded item and the bytes its `data`'s JSON took, which the
/// core charges once, when it caches the item, and does not keep (4 bytes an item less on
/// wasm32).
struct Arrived<T: 'static> {
    stored: Stored<T>,
    size: usize,
}

impl<T> Received<Stored<T>> for Arrived<T> {
    fn size_bytes(&self) -> usize {
        self.size
    }
    fn into_payload(self) -> Stored<T> {
        self.stored
    }
}

/// The core drops what it evicts, invalidates or refuses inside the call: the item's last
/// `Rc` goes after the call (its `T`'s `Drop` may call the cache).
impl<T: 'static> Drop for Stored<T> {
    fn drop(&mut self) {
        if Rc::strong_count(&self.item) == 1 {
            drop_later(Rc::clone(&self.item));
        }
    }
}

thread_local! {
    /// Calls into a cache's state under way (its `RefCell` borrowed, [`Inner::lock`]).
    static LOCKED: Cell<u32> = const { Cell::new(0) };
    /// What the caches let go of meanwhile, dropped once no call is under way.
    static LATER: RefCell<Vec<Box<dyn Any>>> = const { RefCell::new(Vec::new()) };
}

/// Drops `v` once no call into a cache is under way: an item's `T` whose `Drop` calls the
/// cache (a framework's signal, a handle that unsubscribes) would otherwise find its state
/// borrowed, a panic that ends the page's cache.
fn drop_later<V: 'static>(v: V) {
    if LOCKED.with(Cell::get) == 0 {
        drop(v);
    } else {
        LATER.with(|l| l.borrow_mut().push(Box::new(v)));
    }
}

/// A cache's state, borrowed for one call ([`Inner::lock`]). Released, it drops what the
/// call let go of ([`drop_later`]) once it is the last call under way.
struct Locked<'a, T: 'static> {
    st: Option<RefMut<'a, State<T>>>,
}

impl<T: 'static> Deref for Locked<'_, T> {
    type Target = State<T>;
    fn deref(&self) -> &State<T> {
        self.st.as_ref().expect("held until dropped")
    }
}

impl<T: 'static> DerefMut for Locked<'_, T> {
    fn deref_mut(&mut self) -> &mut State<T> {
        self.st.as_mut().expect("held until dropped")
    }
}

impl<T: 'static> Drop for Locked<'_, T> {
    fn drop(&mut self) {
        self.st = None;
        let depth = LOCKED.with(|l| {
            l.set(l.get() - 1);
            l.get()
        });
        // Each drop may call a cache, and so let go of more: until there is none.
        while depth == 0 {
            let gone = LATER.with(|l| std::mem::take(&mut *l.borrow_mut()));
            if gone.is_empty() {
                break;
            }
            drop(gone);
        }
    }
}

/// A value sent to a future that may have been dropped: sent back, it is dropped later.
fn send_or_drop_later<V: 'static>(tx: oneshot::Sender<V>, v: V) {
    if let Err(v) = tx.send(v) {
        drop_later(v);
    }
}

type Found<T> = Result<Option<Rc<Item<T>>>, Error>;

type Loaded<T> = Result<Vec<TileLoad<T>>, Error>;

/// A [`TileCache::load_tiles`] call: its host tiles, the answers so far, and, per tile still
/// waited for, its data tiles.
struct Load<T> {
    id: u64,
    tiles: Vec<TileId>,
    results: Vec<Option<Result<Vec<Shown<T>>, Error>>>,
    waiting: HashMap<usize, Vec<TileId>>,
    /// Every data tile it waited for (released when it settles).
    data: Vec<TileId>,
    /// Not read yet: calls made in the same tick are read together, by one flush.
    queued: bool,
    tx: Option<oneshot::Sender<Loaded<T>>>,
}

/// What reading a host tile found: its items, the data tiles it waits for, or an error.
enum Read<T> {
    Items(Vec<Shown<T>>),
    Data(Vec<TileId>),
    Failed(Error),
}

/// A request that is out: its abort handle, its kind and the ids it asked for (for `get`).
struct InFlight {
    ctrl: AbortController,
    kind: Kind,
    ids: Vec<String>,
}

/// The request whose failure the core is handling (it has left `requests`): its ids, and
/// why its token never went out, if that is why it failed.
struct Ending {
    id: RequestId,
    ids: Vec<String>,
    token: Option<String>,
    /// The `error` member of the server's error body.
    why: Option<Why>,
}

struct State<T: 'static> {
    client: Client<Stored<T>>,
    requests: HashMap<u64, InFlight>,
    timer: Option<Timeout>,
    /// The `visibilitychange` listener of a wake-up put off while the page is hidden.
    on_shown: Option<EventListener>,
    complete: bool,
    /// The view is too wide to fetch (nothing is, so it never completes).
    too_wide: Option<ViewTooLarge>,
    waiters: Vec<oneshot::Sender<Result<(), Error>>>,
    /// The foreground 413 that refused each data tile the core holds as too large (for a
    /// tile TTL), until the tile is asked for again or another tier: `when_complete` fails
    /// with it at once while the view misses the tile and the core holds it
    /// (`Client::held_too_large`: a change covering it ends the hold, one elsewhere not).
    refused: HashMap<TileId, Error>,
    gets: HashMap<String, Vec<oneshot::Sender<Found<T>>>>,
    subscribers: Subscribers<Update<T>>,
    /// The tier last told to subscribers.
    access: Access,
    ending: Option<Ending>,
    /// `load_tiles` calls not settled yet.
    loads: Vec<Load<T>>,
    next_load: u64,
    /// A flush of the queued loads is scheduled (a microtask).
    flush_scheduled: bool,
    /// Data tiles of loads settled since the last release (see `release_settled`).
    settled: Vec<TileId>,
    /// [`TileCache::dispose`] was called.
    disposed: bool,
    /// The errors of ids partial answers left out (`Error::unanswered`): the shell tells the
    /// page of them, not the core, so [`TileCache::stats`] adds them to the core's count.
    id_errors: u64,
}

impl<T: 'static> Drop for State<T> {
    fn drop(&mut self) {
        for r in self.requests.values() {
            r.ctrl.abort();
        }
    }
}

struct Inner<T: 'static> {
    state: RefCell<State<T>>,
    endpoint: String,
    headers: Vec<(String, String)>,
    credentials: RequestCredentials,
    limits: Limits,
    auth: Option<Auth>,
    /// The `tileSize` option, and the zoom levels it adds to a viewport's zoom.
    tile_size: u32,
    zoom_offset: f64,
}

/// Releases a `load_tiles` call's tiles when its future is dropped before it settled.
struct AbortLoad<T: DeserializeOwned + 'static> {
    inner: std::rc::Weak<Inner<T>>,
    id: u64,
}

impl<T: DeserializeOwned + 'static> Drop for AbortLoad<T> {
    fn drop(&mut self) {
        let (weak, id) = (self.inner.clone(), self.id);
        let Some(inner) = weak.upgrade() else { return };
        if inner.state.try_borrow_mut().is_ok() {
            Inner::abort_load(&inner, id);
        } else {
            // Dropped from inside a call on the cache: once it returned.
            wasm_bindgen_futures::spawn_local(async move {
                if let Some(inner) = weak.upgrade() {
                    Inner::abort_load(&inner, id);
                }
            });
        }
    }
}

/// The tile-aware cache for one batch endpoint, in the browser. Cheap to clone (one
/// shared cache); dropping the last clone aborts every request and stops the timer, and so
/// does [`TileCache::dispose`] while clones live (a component unmounting).
///
/// Neither `Send` nor `Sync`, and neither are the futures of its methods: it lives on the
/// page's thread (`Rc`, JS handles), so spawn them with `wasm_bindgen_futures::spawn_local`
/// (Leptos's `spawn_local` or `LocalResource`, Yew's `spawn_local`), and share it where a
/// framework asks for `Send + Sync` through its local-only storage. Clones compare equal
/// (`PartialEq`: the same cache), as Yew's and Dioxus's props and contexts need.
pub struct TileCache<T: 'static = serde_json::Value> {
    inner: Rc<Inner<T>>,
}

impl<T: 'static> Clone for TileCache<T> {
    fn clone(&self) -> Self {
        TileCache {
            inner: Rc::clone(&self.inner),
        }
    }
}

/// The same cache: a clone, not one made with the same options.
impl<T: 'static> PartialEq for TileCache<T> {
    fn eq(&self, other: &Self) -> bool {
        Rc::ptr_eq(&self.inner, &other.inner)
    }
}

impl<T: 'static> Eq for TileCache<T> {}

impl<T: 'static> std::fmt::Debug for TileCache<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TileCache")
            .field("endpoint", &self.inner.endpoint)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    js_sys::Date::now() as u64
}

/// The page's document while the page is hidden (`document.visibilityState` is `hidden`).
fn hidden_document() -> Option<web_sys::Document> {
    let doc = web_sys::window()?.document()?;
    (doc.visibility_state() == web_sys::VisibilityState::Hidden).then_some(doc)
}

impl<T: DeserializeOwned + 'static> TileCache<T> {
    /// A cache with these options (checked; see [`Options::check`]; the endpoint also as
    /// the browser reads a URL).
    pub fn new(options: &Options) -> Result<TileCache<T>, Error> {
        TileCache::with_auth(options, None)
    }

    /// A cache whose requests carry a bearer token from `auth`.
    pub fn with_auth(options: &Options, auth: Option<Auth>) -> Result<TileCache<T>, Error> {
        let checked = options.check()?;
        // The browser's own reading of it, as the npm package's `new URL(endpoint)`: one it
        // cannot read would fail every request instead.
        if web_sys::Url::new(&checked.endpoint).is_err() {
            return Err(Error::new(
                ErrorCode::InvalidArgValue,
                format!(
                    "endpoint must be an absolute http(s) URL the browser can read, got {:?}",
                    checked.endpoint
                ),
            ));
        }
        let limits = checked.config.limits;
        let client = Client::new(checked.config)
            .map_err(|e| Error::new(ErrorCode::OutOfRange, e.to_string()))?;
        let access = client.access();
        Ok(TileCache {
            inner: Rc::new(Inner {
                state: RefCell::new(State {
                    client,
                    requests: HashMap::new(),
                    timer: None,
                    on_shown: None,
                    complete: true,
                    too_wide: None,
                    waiters: Vec::new(),
                    refused: HashMap::new(),
                    gets: HashMap::new(),
                    subscribers: Subscribers::default(),
                    access,
                    ending: None,
                    loads: Vec::new(),
                    next_load: 0,
                    flush_scheduled: false,
                    settled: Vec::new(),
                    disposed: false,
                    id_errors: 0,
                }),
                endpoint: checked.endpoint,
                headers: checked.headers,
                credentials: match checked.credentials {
                    Credentials::Omit => RequestCredentials::Omit,
                    Credentials::SameOrigin => RequestCredentials::SameOrigin,
                    Credentials::Include => RequestCredentials::Include,
                },
                limits,
                auth,
                tile_size: checked.tile_size,
                zoom_offset: checked.zoom_offset,
            }),
        })
    }

    /// A cache from a JS options object of the npm package's shape, read as the npm package
    /// reads it: a misspelt key is an error naming it, a key left `undefined` takes the
    /// default, `null`, `NaN` and an infinity are errors naming the option, and `headers`
    /// may be a plain object, a `Headers` or a `Map`. `auth.token`, if given, is a JS function
    /// returning a token or a promise of one.
    pub fn from_js(options: &JsValue) -> Result<TileCache<T>, Error> {
        if !options.is_object() {
            return Err(Error::new(
                ErrorCode::InvalidArgType,
                format!("options must be an object, got {}", show(options)),
            ));
        }
        let key = JsValue::from_str("auth");
        let auth = js_sys::Reflect::get(options, &key).unwrap_or(JsValue::UNDEFINED);
        let auth = if auth.is_undefined() {
            None
        } else {
            let token = js_sys::Reflect::get(&auth, &JsValue::from_str("token"))
                .ok()
                .and_then(|t| t.dyn_into::<js_sys::Function>().ok())
                .ok_or_else(|| {
                    Error::new(
                        ErrorCode::InvalidArgType,
                        "auth must be an object { token: () => string | Promise<string> }",
                    )
                })?;
            Some(Auth::from_js(token))
        };
        // The rest through serde: a copy without `auth` (functions are not data).
        let rest = js_sys::Object::assign(&js_sys::Object::new(), options.unchecked_ref());
        let _ = js_sys::Reflect::delete_property(&rest, &key);
        // Through a JSON value read as the npm package reads its options (`options_json`),
        // checked as it checks them (`Options::from_json`: a value of the wrong type or out
        // of range is its message naming the option), then serde with
        // `deny_unknown_fields`: a misspelt option is an error, not silently the default.
        let opts = Options::from_json(options_json(&rest, "")?)?;
        TileCache::with_auth(&opts, auth)
    }

    /// The map moved: what the cache has for the view now. Fetches it needs start at once;
    /// [`TileCache::updates`] and [`TileCache::when_complete`] say when they arrive.
    ///
    /// `zoom` is in the units of the `tileSize` option, as `minZoom` is: 256 (the default:
    /// Leaflet's and OpenLayers' zoom) or 512 (MapLibre's, Mapbox GL's and deck.gl's zoom
    /// as is). Fails with `Disposed` after [`TileCache::dispose`].
    pub fn set_viewport(
        &self,
        west: f64,
        south: f64,
        east: f64,
        north: f64,
        zoom: f64,
    ) -> Result<View<T>, Error> {
        let vp = self.viewport(west, south, east, north, zoom)?;
        let now = now_ms();
        let mut st = self.inner.lock();
        st.alive()?;
        let mut items = Vec::new();
        let outcome = st
            .client
            .set_viewport(vp, now, |ci: &CacheItem<Stored<T>>, stale| {
                items.push(Shown {
                    item: Rc::clone(&ci.payload().item),
                    stale,
                })
            });
        st.set_complete(outcome.complete);
        // A view too wide to fetch is a state of the view (nothing fetched for it, what was
        // in flight for the last view cancelled, its cached items shown): `when_complete`
        // fails with it until the map moves.
        st.set_too_wide(outcome.too_wide);
        let sends = Inner::pump(&self.inner, &mut st, now);
        drop(st);
        Inner::start(&self.inner, sends);
        Ok(View {
            items,
            complete: outcome.complete,
            missing_tiles: outcome.missing,
            too_wide: outcome.too_wide,
        })
    }

    /// A viewport checked, its zoom in the core's 256-px units (`tileSize` 512: one more),
    /// at most its limit.
    fn viewport(
        &self,
        west: f64,
        south: f64,
        east: f64,
        north: f64,
        zoom: f64,
    ) -> Result<Viewport, Error> {
        let vp = Viewport::new(west, south, east, north, zoom)
            .map_err(|e| Error::new(ErrorCode::InvalidArgValue, e.to_string()))?;
        Ok(Viewport {
            zoom: tilewarm::client::options::core_zoom(vp.zoom, self.inner.zoom_offset),
            ..vp
        })
    }

    /// The current view again, without planning. What reading it finds due (tiles turned
    /// stale) is sent, except while the page is hidden and awaits nothing: then when it is
    /// shown again.
    pub fn view(&self) -> View<T> {
        let now = now_ms();
        let mut st = self.inner.lock();
        let view = st.read_view(now);
        if st.disposed {
            return view;
        }
        let plan = st.plans_now();
        let sends = Inner::pump_planned(&self.inner, &mut st, now, plan);
        drop(st);
        Inner::start(&self.inner, sends);
        view
    }

    /// Resolves when every visible tile can be shown; fails with the error of a
    /// foreground request that gave up on one of the view's data tiles (one that cannot be
    /// shown for want of it: [`FetchError::view_incomplete`]; a `get`'s failure does not
    /// end the wait), and with `TooManyTiles` while the view is too wide to fetch (it
    /// never completes). While the view misses a data tile refused as too large (a `413`:
    /// the core holds it for a tile TTL, nothing is asked for it meanwhile; an
    /// invalidation covering it or another tier ends the hold, one elsewhere does not), it
    /// fails at once with that error.
    ///
    /// [`FetchError::view_incomplete`]: tilewarm::client::FetchError::view_incomplete
    pub async fn when_complete(&self) -> Result<(), Error> {
        // A wake-up put off while the page is hidden is due now that the page asks.
        if self.inner.state.borrow().on_shown.is_some() {
            Inner::wake(&self.inner);
        }
        let rx = {
            let mut st = self.inner.lock();
            st.alive()?;
            if let Some(e) = &st.too_wide {
                return Err(too_wide_error(e));
            }
            if st.complete {
                return Ok(());
            }
            // A visible tile held as too large: nothing is asked for it before a tile TTL.
            let now = now_ms();
            let held = (st.client.visible_tiles().iter())
                .filter(|&&t| st.client.tile_state(t, now) == TileState::Missing)
                .filter(|&&t| st.client.held_too_large(t, now))
                .find_map(|t| st.refused.get(t));
            if let Some(e) = held {
                return Err(e.clone());
            }
            let (tx, rx) = oneshot::channel();
            // Waiters whose futures were dropped (a page racing this against a timeout,
            // call after call) are let go here, not kept until the view completes.
            st.waiters.retain(|w| !w.is_canceled());
            st.waiters.push(tx);
            rx
        };
        rx.await.unwrap_or_else(|_| Err(Error::disposed()))
    }

    /// A stream of [`Update`]s from now on, for UI frameworks to subscribe to. Dropping
    /// the stream unsubscribes. A subscriber that falls behind holds at most
    /// [`MAX_QUEUED_UPDATES`](crate::MAX_QUEUED_UPDATES) updates: the latest view and the
    /// latest tier (a new one replaces the one not read yet), one `Complete`, the tiles
    /// changed since it last read ([`Update::TilesChanged`], merged into one), and the
    /// latest errors.
    pub fn updates(&self) -> Updates<Update<T>> {
        self.inner.lock().subscribers.subscribe()
    }

    /// One item by id: from the cache, else fetched; `None` when it does not exist or the
    /// tier may not see it. An answer never pushes out the items of the view or of the tiles
    /// a host loads: one the cache cannot keep beside them is handed out all the same
    /// ([`Client::take_unkept`]). Fails with the error of the request that carried the id when
    /// that request gave up (foreground or prefetch), and when an answer left the id out of
    /// both its items and `missing` (a partial answer: the edge's origin failed; the error
    /// goes to [`TileCache::updates`] too). An id no item can have (empty, longer than 256
    /// bytes, or holding a control character) is an [`ErrorCode::OutOfRange`] error, with
    /// nothing sent.
    pub async fn get(&self, id: &str) -> Found<T> {
        let mut all = self.get_many(&[id]).await?;
        Ok(all.pop().flatten())
    }

    /// Items by id, in order; the ones not cached are fetched in as few requests as the
    /// batch limits allow.
    pub async fn get_many(&self, ids: &[&str]) -> Result<Vec<Option<Rc<Item<T>>>>, Error> {
        if ids.iter().any(|id| id.is_empty()) {
            return Err(Error::new(
                ErrorCode::OutOfRange,
                "ids must not contain an empty string",
            ));
        }
        let now = now_ms();
        let mut pending = Vec::with_capacity(ids.len());
        {
            let mut st = self.inner.lock();
            st.alive()?;
            // An id no item can have, before anything is queued (sent, it would fail the
            // request it rides in, visible tiles and other ids with it).
            for (i, id) in ids.iter().enumerate() {
                if let Err(why) = st.client.check_id(id) {
                    return Err(Error::new(
                        ErrorCode::OutOfRange,
                        format!("ids[{i}]: {why}"),
                    ));
                }
            }
            // One lookup each, the misses queued in one go (Client::get_many: a get per id
            // is quadratic in the ids).
            let mut lookups = Vec::with_capacity(ids.len());
            st.client.get_many(ids.iter().copied(), now, |l| {
                lookups.push(l.map(|l| Rc::clone(&l.item.payload().item)));
            });
            for (&id, found) in ids.iter().zip(lookups) {
                pending.push(match found {
                    Some(item) => Ok(Some(item)),
                    None => {
                        let (tx, rx) = oneshot::channel();
                        let waiting = st.gets.entry(id.to_string()).or_default();
                        waiting.retain(|w| !w.is_canceled());
                        waiting.push(tx);
                        Err(rx)
                    }
                });
            }
            let sends = Inner::pump(&self.inner, &mut st, now);
            drop(st);
            Inner::start(&self.inner, sends);
        }
        let mut out = Vec::with_capacity(pending.len());
        for p in pending {
            out.push(match p {
                Ok(found) => found,
                Err(rx) => rx.await.unwrap_or_else(|_| Err(Error::disposed()))?,
            });
        }
        // Security: an item found (cached, or answered) before the tier was lowered while
        // the call waited for the rest is one the tier may no longer see.
        let tier = self.access();
        for found in &mut out {
            if found.as_ref().is_some_and(|i| i.access > tier) {
                *found = None;
            }
        }
        Ok(out)
    }

    /// Drops cached items, tiles or everything; returns how many entries went. Visible
    /// tiles that emptied are fetched again, and the view goes to [`TileCache::updates`] at
    /// once. A hidden page that awaits nothing fetches them when it is shown again (a change
    /// feed's every event would pay for refetches nobody sees): the wake-up is then due
    /// now, and put off as a hidden page's are.
    pub fn invalidate(&self, what: Invalidate<'_>) -> usize {
        let now = now_ms();
        let mut st = self.inner.lock();
        if st.disposed {
            return 0;
        }
        // A tile held as too large that it covers may have changed: the core ends its hold,
        // and the next `when_complete` waits for it (`refused` is read with the hold).
        let n = st.client.invalidate(what, now);
        st.tell_view(now);
        let plan = st.plans_now();
        let sends = Inner::pump_planned(&self.inner, &mut st, now, plan);
        drop(st);
        Inner::start(&self.inner, sends);
        n
    }

    /// Changes the caller's tier; lowering it drops what the new tier may not see at once.
    /// Once the server has reported a lower tier for the credential (an answer, or a `403`
    /// naming it), a tier above that one is an `OutOfRange` error, as in the npm package:
    /// a host that set its old tier again at every update would otherwise send a request,
    /// be refused and be lowered, round trip after round trip. After a sign-in, use
    /// [`TileCache::set_access_new_credential`].
    pub fn set_access(&self, access: Access) -> Result<(), Error> {
        self.change_access(access, false)
    }

    /// [`TileCache::set_access`] after the credential changed (a sign-in, an upgraded
    /// subscription: what the [`Auth`] callback or the cookies carry): the tier the server
    /// reported for the old credential is forgotten and the cache asks at `access`, keeping
    /// what it holds (a lower tier's items and lists are still right). If the new credential
    /// gives less, its first answer lowers the cache again ([`Update::Access`]). The npm
    /// package's `setAccess(access, { newCredential: true })`.
    pub fn set_access_new_credential(&self, access: Access) -> Result<(), Error> {
        self.change_access(access, true)
    }

    fn change_access(&self, access: Access, new_credential: bool) -> Result<(), Error> {
        let now = now_ms();
        let mut st = self.inner.lock();
        st.alive()?;
        if new_credential {
            st.client.new_credential();
        }
        if let Some(verified) = st.client.verified().filter(|&v| access > v) {
            return Err(Error::new(
                ErrorCode::OutOfRange,
                format!(
                    "access must be at most \"{verified}\", the tier the server reported for \
                     this credential (after a sign-in, any tier by set_access_new_credential), \
                     got \"{access}\""
                ),
            ));
        }
        st.client.set_access(access, now);
        st.tell_view(now);
        let sends = Inner::pump(&self.inner, &mut st, now);
        drop(st);
        Inner::start(&self.inner, sends);
        Ok(())
    }

    /// The tier the cache asks and views at: the `access` option, or what
    /// [`TileCache::set_access`] set since, or a lower tier the server reported for the
    /// credential ([`Update::Access`] tells when it changes).
    pub fn access(&self) -> Access {
        self.inner.state.borrow().client.access()
    }

    /// Each data tile's display state.
    pub fn tile_states(&self, tiles: &[TileId]) -> Vec<TileState> {
        let now = now_ms();
        let st = self.inner.state.borrow();
        tiles
            .iter()
            .map(|&t| st.client.tile_state(t, now))
            .collect()
    }

    /// Items per host tile, for a map layer that tiles itself (the npm package's
    /// `loadTiles`). Tiles are the host's `z/x/y` at any zoom: one finer than `tileZoom`
    /// gets the items inside it, a coarser one those of its data tiles (at most
    /// `maxVisibleTiles`). Tiles whose data tiles can be shown are answered without a
    /// request; calls made in the same tick are read together, so N one-tile calls need
    /// `ceil(N / batch.maxTiles)` requests. What is waited for stays queued across
    /// `set_viewport` until the call settles, and the data tiles it waits for are kept in
    /// the cache meanwhile as the view's are (one dropped before the call read it, by
    /// `invalidate` or expiry, is asked for again).
    ///
    /// One [`TileLoad`] per tile, in order: a tile whose request gave up has an error, the
    /// others still load; so has a tile whose data tiles do not fit in the cache with the
    /// view and the other tiles waited for (`maxItems`, `maxBytes`), and one that covers
    /// more than `maxVisibleTiles` data tiles (`TooManyTiles`). Dropping the future is the
    /// npm package's abort signal: the tiles no other call waits for are no longer queued
    /// or kept. Fails with `Disposed` once the cache is disposed, and when every clone of it
    /// was dropped before the future read its answer (there is no tier left to check the
    /// items against).
    ///
    /// The call is made when `load_tiles` is called, as the npm package's promise is: the
    /// future borrows neither the cache nor `tiles` (`'static`, for `spawn_local`). A tile
    /// holds the items of the moment it loaded; [`Update::TilesChanged`] names the tiles
    /// whose items changed since, to load again.
    pub fn load_tiles(&self, tiles: &[TileId]) -> impl std::future::Future<Output = Loaded<T>> {
        let queued = self.queue_load(tiles);
        async move {
            // Dropped before it settles (the caller gave up on it): `abort` releases its
            // tiles.
            let (rx, abort) = queued?;
            let mut loads = rx.await.unwrap_or_else(|_| Err(Error::disposed()))?;
            // Security: the tier may have been lowered since a tile was read (while the call
            // waited for others, or before this future was polled: `set_access`, or a lower
            // tier an answer or a `403` reported): what is handed out is what the tier sees
            // now, as the view's. Every clone of the cache dropped meanwhile, there is no
            // tier to check against: nothing is handed out, as a load pending then gets.
            let Some(inner) = abort.inner.upgrade() else {
                return Err(Error::disposed());
            };
            let tier = inner.state.borrow().client.access();
            for l in &mut loads {
                if let Ok(items) = &mut l.items {
                    items.retain(|s| s.item.access <= tier);
                }
            }
            Ok(loads)
        }
    }

    /// Queues a `load_tiles` call for this tick's flush.
    #[allow(clippy::type_complexity)]
    fn queue_load(
        &self,
        tiles: &[TileId],
    ) -> Result<(oneshot::Receiver<Loaded<T>>, AbortLoad<T>), Error> {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut st = self.inner.lock();
            st.alive()?;
            st.next_load += 1;
            let id = st.next_load;
            st.loads.push(Load {
                id,
                tiles: tiles.to_vec(),
                results: tiles.iter().map(|_| None).collect(),
                waiting: HashMap::new(),
                data: Vec::new(),
                queued: true,
                tx: Some(tx),
            });
            if !st.flush_scheduled {
                st.flush_scheduled = true;
                let weak = Rc::downgrade(&self.inner);
                // After the calls of this tick (a microtask).
                wasm_bindgen_futures::spawn_local(async move {
                    if let Some(inner) = weak.upgrade() {
                        Inner::flush_loads(&inner);
                    }
                });
            }
            id
        };
        let abort = AbortLoad {
            inner: Rc::downgrade(&self.inner),
            id,
        };
        Ok((rx, abort))
    }

    /// Fetches a known destination ahead (a `fly_to`, a route, a search result), as the npm
    /// package's `prefetch(tiles)`: host tiles `z/x/y` at any zoom (a coarser one stands for
    /// its data tiles, at most `maxVisibleTiles`: more is a `TooManyTiles` error naming it,
    /// and nothing is queued). Queued behind the planner's prefetch and kept across
    /// viewports until fetched. Returns how many data tiles are not fresh (queued now or
    /// already), each counted once.
    pub fn prefetch(&self, tiles: &[TileId]) -> Result<usize, Error> {
        let now = now_ms();
        let mut st = self.inner.lock();
        st.alive()?;
        let mut data = Vec::new();
        for &t in tiles {
            let d = (st.client.data_tiles_of(t))
                .map_err(|e| Error::new(ErrorCode::TooManyTiles, e.to_string()))?;
            data.extend(d);
        }
        let n = st.client.prefetch(&data, now);
        let sends = Inner::pump(&self.inner, &mut st, now);
        drop(st);
        Inner::start(&self.inner, sends);
        Ok(n)
    }

    /// Limits the planner's prefetch to where earlier sessions looked, as the npm package's
    /// `setPopularTiles`: only these tiles (data tiles, or coarser ones standing for every
    /// data tile under them) are fetched ahead (a coarse tile asked for because half its
    /// block is queued still brings the rest; [`TileCache::prefetch`] and
    /// [`TileCache::load_tiles`] are not limited); the view is fetched wherever it is. `None`
    /// lifts the limit (the default). The next [`TileCache::set_viewport`] plans with it. A
    /// tile finer than `tileZoom` is an `InvalidTile` error, with the limit unchanged. See
    /// [`ViewCounts`](tilewarm::planner::ViewCounts) for making the list.
    pub fn set_popular_tiles(&self, tiles: Option<&[TileId]>) -> Result<(), Error> {
        let mut st = self.inner.lock();
        st.alive()?;
        let popular = tiles.map(|t| PopularTiles::new(t.iter().copied()));
        st.client
            .set_popular_tiles(popular)
            .map_err(|e| Error::new(ErrorCode::InvalidTile, e.to_string()))
    }

    /// [`TileCache::prefetch`] of a viewport, as [`TileCache::set_viewport`] takes it (the
    /// npm package's `prefetch(viewport)`): its data tiles, none below `minZoom`; one
    /// covering more than `maxVisibleTiles` is a `TooManyTiles` error, nothing queued.
    pub fn prefetch_viewport(
        &self,
        west: f64,
        south: f64,
        east: f64,
        north: f64,
        zoom: f64,
    ) -> Result<usize, Error> {
        let vp = self.viewport(west, south, east, north, zoom)?;
        let tiles = {
            let st = self.inner.state.borrow();
            st.alive()?;
            st.client.planner().visible_tiles(&vp).map_err(|_| {
                let max = st.client.planner().config().max_visible_tiles;
                Error::new(
                    ErrorCode::TooManyTiles,
                    format!(
                        "the viewport covers more than maxVisibleTiles ({max}) data tiles: \
                         prefetch a smaller one, or its tiles"
                    ),
                )
            })?
        };
        self.prefetch(&tiles)
    }

    /// The `tileSize` option, 256 or 512: the units of [`TileCache::set_viewport`]'s zoom
    /// and of `minZoom` (adapters read it).
    pub fn tile_size(&self) -> u32 {
        self.inner.tile_size
    }

    /// Stops the cache, as the npm package's `dispose()`, for a component that unmounts
    /// while clones of the handle live: aborts every request, stops the timer and the
    /// `visibilitychange` listener, fails what is pending (`when_complete`, `get`,
    /// `get_many`, `load_tiles`) with `Disposed`, ends every [`Updates`] stream and drops
    /// the cached items. Afterwards the calls that return a `Result` (and the futures)
    /// fail with `Disposed`; `view()` is an empty view, `invalidate` drops nothing,
    /// `updates()` an ended stream. Calling it again does nothing.
    pub fn dispose(&self) {
        let mut st = self.inner.lock();
        if st.disposed {
            return;
        }
        st.disposed = true;
        for (_, r) in st.requests.drain() {
            r.ctrl.abort();
        }
        st.timer = None;
        st.on_shown = None;
        let err = Error::disposed();
        for w in st.waiters.drain(..) {
            let _ = w.send(Err(err.clone()));
        }
        for (_, ws) in st.gets.drain() {
            for w in ws {
                let _ = w.send(Err(err.clone()));
            }
        }
        for mut l in st.loads.drain(..) {
            if let Some(tx) = l.tx.take() {
                let _ = tx.send(Err(err.clone()));
            }
            drop_later(l);
        }
        st.settled.clear();
        st.subscribers.close();
        st.client.invalidate(Invalidate::All, now_ms());
        // Nothing it set in motion is sent: the core's queue is left behind.
        while st.client.poll_event().is_some() {}
    }

    /// Whether [`TileCache::dispose`] was called.
    pub fn is_disposed(&self) -> bool {
        self.inner.state.borrow().disposed
    }

    /// The core's counters; `errors` counts each error the page hears
    /// ([`Update::Error`]), those of ids a partial answer left out (which the shell
    /// reports) included, as the npm package's `stats().errors` does.
    pub fn stats(&self) -> ClientStats {
        let st = self.inner.state.borrow();
        let mut stats = st.client.stats();
        stats.errors += st.id_errors;
        stats
    }
}

/// A JS options value (`path`: its name, `ttl.default`) as JSON, read as the npm package
/// reads its options: a key whose value is `undefined` is left out (its default), a group
/// included; `null` and a number that is not finite (`NaN`, an infinity) are errors naming
/// the option, never the default; `headers` may be a `Headers` or a `Map`.
/// (serde-wasm-bindgen's JSON value would make `undefined`, `null` and `NaN` all `null`: the
/// default for a number, an error for a group; and a `Headers` or a `Map` nothing, their
/// entries not being own keys.)
fn options_json(v: &JsValue, path: &str) -> Result<serde_json::Value, Error> {
    use serde_json::Value;
    if let Some(s) = v.as_string() {
        return Ok(Value::String(s));
    }
    if let Some(b) = v.as_bool() {
        return Ok(Value::Bool(b));
    }
    if let Some(n) = v.as_f64() {
        if !n.is_finite() {
            let got = if n.is_nan() {
                "NaN"
            } else if n > 0.0 {
                "Infinity"
            } else {
                "-Infinity"
            };
            return Err(Error::new(
                ErrorCode::OutOfRange,
                format!("options: {path} must be a finite number, got {got}"),
            ));
        }
        // Its range and type (a fraction for an integer option) are checked by
        // `Options::from_json`, with the npm package's messages.
        return Ok(Value::from(n));
    }
    let mut map = serde_json::Map::new();
    // `headers` as a `Headers` or a `Map` (what the npm package hands to `new Headers`):
    // their entries are not own keys.
    let iterable = path == "headers" && v.is_object() && !js_sys::Array::is_array(v);
    if let Some(entries) = iterable
        .then(|| js_sys::try_iter(v).ok().flatten())
        .flatten()
    {
        let bad = |what: String| {
            Error::new(
                ErrorCode::InvalidArgType,
                format!("options: headers must map names to strings, {what}"),
            )
        };
        for entry in entries {
            let pair: js_sys::Array = entry.map_err(|e| bad(show(&e)))?.unchecked_into();
            let (k, val) = (pair.get(0), pair.get(1));
            match (k.as_string(), val.as_string()) {
                (Some(k), Some(val)) => map.insert(k, Value::String(val)),
                _ => return Err(bad(format!("got {}: {}", show(&k), show(&val)))),
            };
        }
        return Ok(Value::Object(map));
    }
    if v.is_object() && !v.is_function() && !js_sys::Array::is_array(v) {
        for key in js_sys::Object::keys(v.unchecked_ref::<js_sys::Object>()).iter() {
            let Some(k) = key.as_string() else { continue };
            let val = js_sys::Reflect::get(v, &key).unwrap_or(JsValue::UNDEFINED);
            if !val.is_undefined() {
                let inner = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                map.insert(k, options_json(&val, &inner)?);
            }
        }
        return Ok(Value::Object(map));
    }
    let message = if v.is_null() {
        format!("options: {path} must not be null (an option left out takes its default)")
    } else {
        let got = show(v);
        format!("options: {path} must be a number, a string, a boolean or an object, got {got}")
    };
    Err(Error::new(ErrorCode::InvalidArgType, message))
}

/// The error of a view too wide to fetch.
fn too_wide_error(e: &ViewTooLarge) -> Error {
    Error::new(
        ErrorCode::TooManyTiles,
        format!("{e} (nothing is fetched for it, so it never completes)"),
    )
}

impl<T: 'static> State<T> {
    /// `Disposed` once [`TileCache::dispose`] was called.
    fn alive(&self) -> Result<(), Error> {
        match self.disposed {
            true => Err(Error::new(
                ErrorCode::Disposed,
                "this TileCache was disposed",
            )),
            false => Ok(()),
        }
    }

    /// Reads host tiles for `load_tiles` ([`Client::load_tile_deferred`]); with `queue`, the
    /// data tiles of those that cannot be shown become loading (queued, kept from
    /// eviction), once for the call ([`Client::loading_changed`]), not once per tile.
    fn read_tiles(&mut self, tiles: &[TileId], queue: bool, now: u64) -> HashMap<TileId, Read<T>> {
        let mut out = HashMap::new();
        let mut queued = false;
        for &t in tiles {
            if out.contains_key(&t) {
                continue;
            }
            let mut items = Vec::new();
            let read = self
                .client
                .load_tile_deferred(t, queue, now, &mut queued, |ci, stale| {
                    items.push(Shown {
                        item: Rc::clone(&ci.payload().item),
                        stale,
                    })
                });
            let read = match read {
                Ok(true) => Read::Items(items),
                Ok(false) => Read::Data(self.client.data_tiles_of(t).unwrap_or_default()),
                Err(e) => Read::Failed(Error::new(ErrorCode::TooManyTiles, e.to_string())),
            };
            out.insert(t, read);
        }
        if queued {
            self.client.loading_changed(now);
        }
        out
    }

    /// Fills the loads read (not `queued`) from `read`, and settles those that wait for
    /// nothing more.
    fn fill_loads(&mut self, read: &HashMap<TileId, Read<T>>) {
        for l in self.loads.iter_mut().filter(|l| !l.queued) {
            for (i, tile) in l.tiles.iter().enumerate() {
                if l.results[i].is_some() {
                    continue;
                }
                match read.get(tile) {
                    None => {}
                    Some(Read::Data(d)) => {
                        if l.waiting.insert(i, d.clone()).is_none() {
                            l.data.extend(d.iter().copied());
                        }
                    }
                    Some(Read::Items(items)) => {
                        l.waiting.remove(&i);
                        l.results[i] = Some(Ok(items.clone()));
                    }
                    Some(Read::Failed(e)) => {
                        l.waiting.remove(&i);
                        l.results[i] = Some(Err(e.clone()));
                    }
                }
            }
        }
        self.settle_loads();
    }

    /// A request gave up on `tiles` (or an answer left them out, or could not keep them):
    /// the loads waiting for one of their data tiles get `e` for that host tile.
    fn fail_loads(&mut self, tiles: &[TileId], e: &Error) {
        for l in self.loads.iter_mut().filter(|l| !l.queued) {
            let failed: Vec<usize> = (l.waiting.iter())
                .filter(|(_, data)| {
                    data.iter()
                        .any(|&d| tiles.iter().any(|&r| r.contains(d) || d.contains(r)))
                })
                .map(|(&i, _)| i)
                .collect();
            for i in failed {
                l.waiting.remove(&i);
                l.results[i] = Some(Err(e.clone()));
            }
        }
        self.settle_loads();
    }

    /// Resolves the read loads that wait for nothing more; their data tiles are released
    /// by the next pump.
    /// (A tile read before the tier was lowered may hold items the tier no longer sees: the
    /// future of `load_tiles` drops them when it hands the answers out.)
    fn settle_loads(&mut self) {
        let mut i = 0;
        while i < self.loads.len() {
            let l = &self.loads[i];
            if l.queued || !l.waiting.is_empty() {
                i += 1;
                continue;
            }
            let mut l = self.loads.remove(i);
            self.settled.append(&mut l.data);
            let results = (l.tiles.iter().zip(l.results))
                .map(|(&tile, r)| TileLoad {
                    tile,
                    items: r.unwrap_or_else(|| Err(Error::disposed())),
                })
                .collect();
            if let Some(tx) = l.tx.take() {
                send_or_drop_later(tx, Ok(results));
            }
        }
    }

    /// Releases the data tiles of the loads settled since the last call that no load still
    /// waits for: the core no longer asks for them or keeps them from eviction.
    fn release_settled(&mut self, now: u64) {
        if self.settled.is_empty() {
            return;
        }
        let still: HashSet<TileId> = (self.loads.iter())
            .flat_map(|l| l.waiting.values().flatten().copied())
            .collect();
        let mut drop: Vec<TileId> = std::mem::take(&mut self.settled);
        drop.retain(|t| !still.contains(t));
        drop.sort_unstable();
        drop.dedup();
        if !drop.is_empty() {
            self.client.release_tiles(&drop, now);
        }
    }

    fn set_too_wide(&mut self, too_wide: Option<ViewTooLarge>) {
        self.too_wide = too_wide;
        if let Some(e) = too_wide {
            let err = too_wide_error(&e);
            for w in self.waiters.drain(..) {
                let _ = w.send(Err(err.clone()));
            }
        }
    }

    fn set_complete(&mut self, complete: bool) {
        self.complete = complete;
        if complete {
            for w in self.waiters.drain(..) {
                let _ = w.send(Ok(()));
            }
        }
    }

    fn read_view(&mut self, now: u64) -> View<T> {
        let mut items = Vec::new();
        let outcome = self.client.view_items(now, |ci, stale| {
            items.push(Shown {
                item: Rc::clone(&ci.payload().item),
                stale,
            })
        });
        self.set_complete(outcome.complete);
        self.set_too_wide(outcome.too_wide);
        View {
            items,
            complete: outcome.complete,
            missing_tiles: outcome.missing,
            too_wide: outcome.too_wide,
        }
    }

    fn broadcast(&mut self, update: Update<T>) {
        // A view replaced in a queue not read may hold the last `Rc` of items gone since.
        drop_later(self.subscribers.send(&update));
    }

    /// Whether a request is out or a caller waits (`get`, `when_complete`, `load_tiles`). A
    /// `get` or `when_complete` whose future was dropped waits for nothing: its entry stays
    /// until its work ends, but does not keep a hidden page sending.
    fn awaited(&self) -> bool {
        !self.requests.is_empty()
            || !self.loads.is_empty()
            || self.waiters.iter().any(|w| !w.is_canceled())
            || self.gets.values().flatten().any(|w| !w.is_canceled())
    }

    /// Whether what is due is sent now: not while the page is hidden and awaits nothing
    /// (see [`Inner::tick`]).
    fn plans_now(&self) -> bool {
        self.awaited() || hidden_document().is_none()
    }

    /// Tells subscribers the tier, when it is not the one they last heard.
    fn tell_access(&mut self) {
        let access = self.client.access();
        if access != self.access {
            self.access = access;
            self.refused.clear(); // held tiles are asked for again at the new tier
            self.broadcast(Update::Access(access));
        }
    }

    /// After a call that changed the view at once (`invalidate`, `set_access`): tells
    /// subscribers the tier if it changed, `Complete` if the view became complete, and the
    /// view.
    fn tell_view(&mut self, now: u64) {
        let was_complete = self.complete;
        self.tell_access();
        let view = self.read_view(now);
        if view.complete && !was_complete {
            self.broadcast(Update::Complete);
        }
        self.broadcast(Update::View(view));
    }

    /// A request gave up: the `get`s of the ids it carried fail, whatever its kind (an id a
    /// `get` waits for may have gone out in a prefetch request, and nothing asks again);
    /// `when_complete` fails too when it was a foreground request that leaves the view
    /// incomplete (`view_incomplete`: it carried one of the view's missing data tiles).
    fn reject(&mut self, e: &Error, ids: &[String], view_incomplete: bool) {
        if view_incomplete && e.kind == Some(Kind::Foreground) {
            for w in self.waiters.drain(..) {
                let _ = w.send(Err(e.clone()));
            }
        }
        self.reject_gets(e, ids);
    }

    fn reject_gets(&mut self, e: &Error, ids: &[String]) {
        for id in ids {
            for w in self.gets.remove(id).unwrap_or_default() {
                let _ = w.send(Err(e.clone()));
            }
        }
    }

    /// `get`s of `ids` whose request went away without answering them (cancelled, or an
    /// answer the core did not take): answered from the cache, or queued again, or nothing
    /// would ever answer them.
    fn ask_again(&mut self, ids: &[String], now: u64) {
        for gid in ids {
            if !self.gets.contains_key(gid) {
                continue;
            }
            let found = self
                .client
                .get(gid, now)
                .map(|l| Rc::clone(&l.item.payload().item));
            if let Some(item) = found {
                for w in self.gets.remove(gid).unwrap_or_default() {
                    send_or_drop_later(w, Ok(Some(Rc::clone(&item))));
                }
            }
        }
    }
}

/// How a request ended, as the shell saw it.
enum Outcome<T: 'static> {
    /// The answer, the data's extent the server declared with it (`BOUNDS_HEADER`), and,
    /// when it left requested ids out, its `error` member.
    Answer(BatchResponse<Arrived<T>>, Option<Bbox>, Option<Why>),
    /// The auth token callback failed or gave no bearer token: why (nothing was sent).
    TokenRefused(String),
    /// The failure, the tier the failed answer's `ACCESS_HEADER` names (a 403 names the
    /// tier the credential gives; the core decides whether the cache follows it down), and
    /// the `error` member of its body, when it sent one.
    Failed(Failure, Option<Access>, Option<Why>),
}

impl<T: 'static> Inner<T> {
    /// The state, for one call; what the call lets go of is dropped after it ([`Locked`]).
    fn lock(&self) -> Locked<'_, T> {
        let st = self.state.borrow_mut();
        LOCKED.with(|l| l.set(l.get() + 1));
        Locked { st: Some(st) }
    }
}

impl<T: DeserializeOwned + 'static> Inner<T> {
    /// Acts on everything the last call into the core caused: aborts, events, the next
    /// wake-up. Returns the requests to send (sent by [`Inner::start`] once the state is
    /// no longer borrowed).
    fn pump(this: &Rc<Self>, st: &mut State<T>, now: u64) -> Vec<Transmit> {
        Inner::pump_planned(this, st, now, true)
    }

    /// [`Inner::pump`], taking the requests due only when `plan`; without, the wake-up is
    /// due now, for [`Inner::tick`] to send them (or put them off while the page is hidden).
    fn pump_planned(this: &Rc<Self>, st: &mut State<T>, now: u64, plan: bool) -> Vec<Transmit> {
        let mut sends = Vec::new();
        let mut updated = false;
        loop {
            st.release_settled(now);
            while let Some(t) = plan.then(|| st.client.poll_request(now)).flatten() {
                for tile in &t.request.tiles {
                    st.refused.remove(tile);
                }
                sends.push(t);
            }
            while let Some(e) = st.client.poll_event() {
                match e {
                    Event::Updated => updated = true,
                    Event::Complete => {
                        st.set_complete(true);
                        st.broadcast(Update::Complete);
                    }
                    Event::Error(fe) => {
                        let ending = st.ending.as_ref().filter(|e| e.id == fe.request);
                        let ids = match (ending, st.requests.get(&fe.request.0)) {
                            (Some(e), _) => e.ids.clone(),
                            (_, Some(r)) => r.ids.clone(),
                            _ => Vec::new(),
                        };
                        let err = match ending.and_then(|e| e.token.as_deref()) {
                            Some(why) => {
                                let mut err = Error::from_token_failure(&fe, why);
                                err.ids = ids;
                                err
                            }
                            None => {
                                let why = ending.and_then(|e| e.why.as_ref());
                                let detail = why.map(|w| (w.code.as_str(), w.message.as_str()));
                                Error::from_failed_request(&fe, detail, ids)
                            }
                        };
                        if !fe.will_retry {
                            st.reject(&err, &err.ids, fe.view_incomplete);
                            st.fail_loads(&fe.tiles, &err);
                            if matches!(fe.failure, Failure::Http { status: 413, .. }) {
                                if st.refused.len() > 4096 {
                                    st.refused.clear();
                                }
                                for &t in &fe.tiles {
                                    st.refused.insert(t, err.clone());
                                }
                            }
                        }
                        st.broadcast(Update::Error(err));
                    }
                }
            }
            // After the errors: a get() they ended is not asked again.
            let mut again = Vec::new();
            while let Some(id) = st.client.poll_cancel() {
                if let Some(r) = st.requests.remove(&id.0) {
                    r.ctrl.abort();
                    // A get() of an id this request carried was not queued on its own (the
                    // id was in flight): it is asked for again.
                    again.extend(r.ids.into_iter().filter(|g| st.gets.contains_key(g)));
                }
            }
            if again.is_empty() && st.settled.is_empty() {
                break;
            }
            st.ask_again(&again, now);
        }
        st.tell_access();
        // The tiles whose items changed, in the view or not: a map layer that draws tiles
        // itself loads those again (the npm package's `onTilesChanged`).
        match st.client.take_changed_tiles() {
            ChangedTiles::Tiles(t) if t.is_empty() => {}
            changed => st.broadcast(Update::TilesChanged(changed)),
        }
        if updated {
            let view = st.read_view(now);
            st.broadcast(Update::View(view));
        }
        let wakeup = if plan {
            st.client.next_wakeup(now)
        } else {
            Some(now)
        };
        st.timer = wakeup.map(|at| {
            let delay = at.saturating_sub(now).min(i32::MAX as u64) as u32;
            let weak = Rc::downgrade(this);
            Timeout::new(delay, move || {
                if let Some(inner) = weak.upgrade() {
                    Inner::tick(&inner);
                }
            })
        });
        sends
    }

    /// The core's wake-up. A hidden page (another tab in front, a minimised window) that
    /// waits for nothing puts it off until it is shown: the refreshes of a view at rest, the
    /// prefetch and the retries due meanwhile would be paid for and seen by nobody.
    fn tick(this: &Rc<Self>) {
        let mut st = this.lock();
        st.timer = None;
        if let Some(doc) = hidden_document().filter(|_| !st.awaited()) {
            if st.on_shown.is_none() {
                let weak = Rc::downgrade(this);
                st.on_shown = Some(EventListener::new(&doc, "visibilitychange", move |_| {
                    if hidden_document().is_none() {
                        let weak = weak.clone();
                        // Not from inside the listener, which waking drops.
                        wasm_bindgen_futures::spawn_local(async move {
                            if let Some(inner) = weak.upgrade() {
                                Inner::wake(&inner);
                            }
                        });
                    }
                }));
            }
            return;
        }
        drop(st);
        Inner::wake(this);
    }

    fn wake(this: &Rc<Self>) {
        let now = now_ms();
        let mut st = this.lock();
        st.timer = None;
        st.on_shown = None;
        // A wake-up queued before `dispose` (the page shown meanwhile) sends nothing.
        if st.disposed {
            return;
        }
        st.client.handle_timeout(now);
        let sends = Inner::pump(this, &mut st, now);
        drop(st);
        Inner::start(this, sends);
    }

    /// Sends each request under its own `AbortController`. Nothing once the cache is
    /// disposed: the drops of the call that planned them (an item's `Drop`, run when it
    /// released the state) may have disposed it.
    fn start(this: &Rc<Self>, sends: Vec<Transmit>) {
        for t in sends {
            if this.state.borrow().disposed {
                return;
            }
            let ctrl = match AbortController::new() {
                Ok(c) => c,
                Err(e) => {
                    let f = Failure::Network(format!("no AbortController: {}", show(&e)));
                    Inner::finish(this, t.id, Outcome::Failed(f, None, None));
                    continue;
                }
            };
            let signal = ctrl.signal();
            let body = t.request.to_json();
            let ids = t.request.ids.clone();
            let asked = ids.clone();
            this.lock().requests.insert(
                t.id.0,
                InFlight {
                    ctrl,
                    kind: t.kind,
                    ids,
                },
            );
            let weak = Rc::downgrade(this);
            wasm_bindgen_futures::spawn_local(async move {
                let Some((to, auth, limits)) = weak.upgrade().map(|i| {
                    let to = Target {
                        endpoint: i.endpoint.clone(),
                        headers: i.headers.clone(),
                        credentials: i.credentials,
                    };
                    (to, i.auth.clone(), i.limits)
                }) else {
                    return;
                };
                let outcome = exchange::<T>(&to, auth, &limits, body, &asked, signal).await;
                if let Some(inner) = weak.upgrade() {
                    Inner::finish(&inner, t.id, outcome);
                }
            });
        }
    }

    /// A request ended: the core hears of it (unless it was aborted, which the core asked
    /// for), `get`s it answered resolve, and whatever that set in motion starts.
    fn finish(this: &Rc<Self>, id: RequestId, outcome: Outcome<T>) {
        let now = now_ms();
        let mut st = this.lock();
        let Some(flight) = st.requests.remove(&id.0) else {
            return; // aborted (cancelled or past its deadline): the core already knows
        };
        match outcome {
            Outcome::Answer(r, bounds, why) => {
                let left_out = r.left_out;
                let missing: HashSet<String> = r.missing.iter().cloned().collect();
                let mut known: HashSet<String> = r.items.iter().map(|i| i.id.clone()).collect();
                known.extend(missing.iter().cloned());
                match st.client.on_declared_response(id, r, bounds.as_ref(), now) {
                    // Sent at a tier left since: its work is asked again, and that answer
                    // ends the gets it was for.
                    Answered::AskedAgain => {}
                    // Not taken (the core no longer tracked it): nothing of it is cached,
                    // and nothing asks for its ids again but this.
                    Answered::Ignored => st.ask_again(&flight.ids, now),
                    // Invalid: nothing of it is cached, and its error (below, in `pump`)
                    // ends the gets it was for, or they wait for the retry.
                    Answered::Invalid => {
                        st.ending = Some(Ending {
                            id,
                            ids: flight.ids,
                            token: None,
                            why: None,
                        });
                    }
                    answered @ (Answered::Taken | Answered::TakenInPart) => {
                        // Items asked for that the cache could not keep (room for them
                        // would have pushed out the view's items) go to their gets all the
                        // same: the core names those that passed its tier check.
                        let unkept: HashMap<String, Rc<Item<T>>> = (st.client.take_unkept())
                            .into_iter()
                            .map(|(id, stored)| (id, Rc::clone(&stored.item)))
                            .collect();
                        for gid in &known {
                            if !st.gets.contains_key(gid) {
                                continue;
                            }
                            let c = &st.client;
                            let found = unkept.get(gid).cloned().or_else(|| {
                                c.peek(gid, now).map(|l| Rc::clone(&l.item.payload().item))
                            });
                            if found.is_none()
                                && !missing.contains(gid)
                                && !flight.ids.contains(gid)
                            {
                                continue;
                            }
                            for w in st.gets.remove(gid).unwrap_or_default() {
                                send_or_drop_later(w, Ok(found.clone()));
                            }
                        }
                        // An unkept item whose get was dropped: its last `Rc`.
                        drop_later(unkept);
                        // Ids asked for and left out of both items and missing (a partial
                        // answer: its `error` says why) are not known not to exist.
                        let left: Vec<String> = (flight.ids.iter())
                            .filter(|g| !known.contains(*g))
                            .cloned()
                            .collect();
                        // What did not fit in the answer is asked again: its gets wait, and
                        // no error. What an answer with a retried failure's code left out
                        // (shed load, a failed origin) is retried too (the core queued it,
                        // after the backoff, as that whole failure's work): its gets wait, and
                        // the page hears of it as the npm package's `onError` does.
                        let retried = answered == Answered::TakenInPart
                            && left_out
                                .is_some_and(|c| c != tilewarm::protocol::ErrorCode::ResponseFull);
                        let detail = why.as_ref().map(|w| (w.code.as_str(), w.message.as_str()));
                        if !left.is_empty() && (answered == Answered::Taken || retried) {
                            let e = Error::unanswered(flight.kind, &left, detail, retried);
                            st.id_errors += 1;
                            if !retried {
                                st.reject_gets(&e, &left);
                            }
                            st.broadcast(Update::Error(e));
                        }
                        // The tiles it left out: their error (the core's, in `pump`) carries
                        // the server's code, as a refusal's does. No ids: those it left out
                        // were told above, and a get waiting for the retry of one must not
                        // end with the error of a tile (one the cache could not keep, say).
                        st.ending = Some(Ending {
                            id,
                            ids: Vec::new(),
                            token: None,
                            why,
                        });
                    }
                }
            }
            Outcome::Failed(f, reported, why) => {
                st.ending = Some(Ending {
                    id,
                    ids: flight.ids,
                    token: None,
                    why,
                });
                st.client.on_reported_failure(id, f, reported, now);
            }
            Outcome::TokenRefused(why) => {
                // Nothing was sent: a 401 to the core (retried like one, not the backend's
                // trouble), with the reason for the page.
                st.ending = Some(Ending {
                    id,
                    ids: flight.ids,
                    token: Some(why),
                    why: None,
                });
                let f = Failure::Http {
                    status: 401,
                    retry_after_ms: None,
                };
                st.client.on_reported_failure(id, f, None, now);
            }
        }
        // The loads waiting for what this answered (or failed) read their tiles again.
        Inner::check_loads(&mut st, now);
        let sends = Inner::pump(this, &mut st, now);
        st.ending = None;
        drop(st);
        Inner::start(this, sends);
    }

    /// Reads the `load_tiles` calls of this tick with one pass over their tiles (queuing
    /// what is missing), then sends what that asks for.
    fn flush_loads(this: &Rc<Self>) {
        let now = now_ms();
        let mut st = this.lock();
        st.flush_scheduled = false;
        if st.disposed {
            return;
        }
        let tiles: Vec<TileId> = (st.loads.iter())
            .filter(|l| l.queued)
            .flat_map(|l| l.tiles.iter().copied())
            .collect();
        let read = st.read_tiles(&tiles, true, now);
        for l in st.loads.iter_mut() {
            l.queued = false;
        }
        st.fill_loads(&read);
        let sends = Inner::pump(this, &mut st, now);
        drop(st);
        Inner::start(this, sends);
    }

    /// Re-reads the tiles pending loads wait for (after an answer or a failure).
    fn check_loads(st: &mut State<T>, now: u64) {
        let tiles: Vec<TileId> = (st.loads.iter())
            .filter(|l| !l.queued)
            .flat_map(|l| l.waiting.keys().map(|&i| l.tiles[i]))
            .collect();
        if tiles.is_empty() {
            return;
        }
        let read = st.read_tiles(&tiles, false, now);
        st.fill_loads(&read);
    }

    /// A `load_tiles` future dropped before it settled: its data tiles no other load waits
    /// for are released.
    fn abort_load(this: &Rc<Self>, id: u64) {
        let now = now_ms();
        let mut st = this.lock();
        let Some(at) = st.loads.iter().position(|l| l.id == id) else {
            return; // settled
        };
        let mut l = st.loads.remove(at);
        st.settled.append(&mut l.data);
        // Its tiles' items read so far may be the last `Rc`s of items gone since.
        drop_later(l);
        if st.disposed {
            return;
        }
        let sends = Inner::pump(this, &mut st, now);
        drop(st);
        Inner::start(this, sends);
    }
}

/// The largest error body read for its `error` member.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// The `error` member of a partial answer (the core's `Unanswered`), or of an error body:
/// why it left some of the requested tiles and ids out, or why it failed.
#[derive(serde::Deserialize)]
struct Why {
    code: String,
    #[serde(default)]
    message: String,
}

#[derive(serde::Deserialize)]
struct Partial {
    error: Option<Why>,
}

/// Where and how a request goes: the endpoint, the extra headers and the credentials mode.
struct Target {
    endpoint: String,
    headers: Vec<(String, String)>,
    credentials: RequestCredentials,
}

/// One POST (two if a 401 made it ask `auth` again), decoded. `asked`: the ids the request
/// asked for.
async fn exchange<T: DeserializeOwned + 'static>(
    to: &Target,
    auth: Option<Auth>,
    limits: &Limits,
    body: String,
    asked: &[String],
    signal: AbortSignal,
) -> Outcome<T> {
    let mut asked_again = false;
    // What a request given up on (cancelled, past its deadline, the cache disposed or
    // dropped: its signal aborted) ends with. The shell no longer tracks it, so nothing
    // reads it (`Inner::finish` returns at once).
    let given_up = || Outcome::Failed(Failure::Network("aborted".into()), None, None);
    let res = loop {
        if signal.aborted() {
            return given_up();
        }
        let token = match &auth {
            // Raced against the abort: a callback that is slow or never resolves does not
            // keep the request's task and body alive once the request is given up on.
            Some(a) => match until_aborted(&signal, a.token()).await {
                None => return given_up(),
                Some(Ok(t)) => match check_token(&t) {
                    Ok(()) => Some(t),
                    Err(why) => return Outcome::TokenRefused(why),
                },
                Some(Err(m)) => {
                    return Outcome::TokenRefused(format!("the auth token callback failed: {m}"))
                }
            },
            None => None,
        };
        // Given up on while the token was awaited: no fetch is made for it.
        if signal.aborted() {
            return given_up();
        }
        let mut rb = Request::post(&to.endpoint)
            .abort_signal(Some(&signal))
            .credentials(to.credentials);
        for (k, v) in &to.headers {
            rb = rb.header(k, v);
        }
        if let Some(t) = &token {
            rb = rb.header("authorization", &format!("Bearer {t}"));
        }
        let sent = match rb.body(body.clone()) {
            Ok(req) => req.send().await,
            Err(e) => Err(e),
        };
        let res = match sent {
            Ok(r) => r,
            Err(e) => return Outcome::Failed(Failure::Network(e.to_string()), None, None),
        };
        if res.status() == 401 && auth.is_some() && !asked_again {
            asked_again = true;
            // Its body is not read: cancelled, so the browser stops receiving it and can
            // reuse the connection for the retry (a body left unread holds it until the
            // response is collected), as the npm package does.
            if let Some(stream) = res.body() {
                wasm_bindgen_futures::spawn_local(async move {
                    // A stream that already failed rejects: nothing to do.
                    let _ = wasm_bindgen_futures::JsFuture::from(stream.cancel()).await;
                });
            }
            continue;
        }
        break res;
    };
    if !res.ok() {
        let reported = res
            .headers()
            .get(ACCESS_HEADER)
            .and_then(|h| h.parse().ok());
        let failure = Failure::Http {
            status: res.status(),
            retry_after_ms: res
                .headers()
                .get("retry-after")
                .and_then(|v| retry_after_ms(&v, js_sys::Date::now(), |d| js_sys::Date::parse(d))),
        };
        // The body's `error` member says why (read within the limit; a body that is not
        // one says nothing).
        let why = crate::body::read_body(&res, MAX_ERROR_BODY_BYTES)
            .await
            .ok()
            .and_then(|b| serde_json::from_slice::<Partial>(&b).ok())
            .and_then(|p| p.error);
        return Outcome::Failed(failure, reported, why);
    }
    // The data's extent the server declares; a header that does not read as one declares none.
    let bounds = res
        .headers()
        .get(BOUNDS_HEADER)
        .and_then(|h| parse_bounds(&h).ok());
    let bytes = match crate::body::read_body(&res, limits.max_body_bytes).await {
        Ok(b) => b,
        Err(failure) => return Outcome::Failed(failure, None, None),
    };
    match decode::<T>(&bytes, limits) {
        Ok(r) => {
            // Read only when it left something out (an asked id, or tiles under a code the
            // core read): the body's `error` says why.
            let known: HashSet<&str> = (r.items.iter().map(|i| i.id.as_str()))
                .chain(r.missing.iter().map(String::as_str))
                .collect();
            let why = if r.left_out.is_none() && asked.iter().all(|id| known.contains(id.as_str()))
            {
                None
            } else {
                serde_json::from_slice::<Partial>(&bytes)
                    .ok()
                    .and_then(|p| p.error)
            };
            Outcome::Answer(r, bounds, why)
        }
        Err(m) => Outcome::Failed(Failure::Invalid(m), None, None),
    }
}

/// `f`'s output, or `None` once `signal` is aborted (at once if it already is); `f` is
/// dropped then, not polled again.
async fn until_aborted<F: std::future::Future + Unpin>(
    signal: &AbortSignal,
    mut f: F,
) -> Option<F::Output> {
    use std::task::Poll;
    if signal.aborted() {
        return None;
    }
    let (tx, mut rx) = oneshot::channel::<()>();
    let _on_abort = EventListener::once(signal, "abort", move |_| {
        let _ = tx.send(());
    });
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = std::future::Future::poll(std::pin::Pin::new(&mut f), cx) {
            return Poll::Ready(Some(v));
        }
        match std::future::Future::poll(std::pin::Pin::new(&mut rx), cx) {
            Poll::Ready(_) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// A response body into the core's response, each item's `data` into `T`. Any error is
/// the message of an invalid response.
fn decode<T: DeserializeOwned + 'static>(
    body: &[u8],
    limits: &Limits,
) -> Result<BatchResponse<Arrived<T>>, String> {
    let r = decode_response(body, limits).map_err(|e| e.to_string())?;
    let mut items = Vec::with_capacity(r.items.len());
    for (i, it) in r.items.into_iter().enumerate() {
        let raw = it.data.get();
        let data: T = serde_json::from_str(raw)
            .map_err(|e| format!("items[{i}].data does not fit the item type: {e}"))?;
        // `data`'s JSON only, as the npm package's items carry it: the core charges the id,
        // the class and its overhead on top (`item_size_bytes`), once.
        let size = raw.len();
        let item = Rc::new(Item {
            id: it.id.clone(),
            lon: it.lon,
            lat: it.lat,
            class: it.class.clone(),
            access: it.access,
            data,
        });
        items.push(WireItem {
            id: it.id,
            lon: it.lon,
            lat: it.lat,
            class: it.class,
            access: it.access,
            ttl: it.ttl,
            data: Arrived {
                stored: Stored { item },
                size,
            },
        });
    }
    Ok(BatchResponse {
        access: r.access,
        tiles: r.tiles,
        items,
        missing: r.missing,
        left_out: r.left_out,
    })
}
