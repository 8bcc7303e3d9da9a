// tilewarm/openlayers: an OpenLayers VectorSource whose features come from
// TileCache.loadTiles through a tile loading strategy, and `follow(map, source)`, which feeds
// the map's view to the cache (so tilewarm's prefetch runs; OpenLayers prefetches nothing for
// a vector source) and removes the features of tiles that left the view.
//
//   const source = createSource({ VectorSource, Feature, Point, tileStrategy, createXYZ }, cache);
//   map.addLayer(new VectorLayer({ source }));
//   const detach = follow(map, source);
//
// Each tile the strategy asks for is one `loadTiles` call (the calls of a tick go out
// together); a feature per item, its id the item's id, so an item in tiles of two zooms is
// one feature (held while any loaded tile has it). A tile that failed stays failed (empty)
// until it leaves the view, the source is refreshed or the tier changes: OpenLayers redraws
// on a failure and would ask for it again at once, every frame. A tile too coarse for the
// cache (more than maxVisibleTiles data tiles) is loaded empty, reported once per zoom.
// A loaded tile whose items changed in the cache (onTilesChanged) is filled again from the cache,
// once the view of a followed map shows it (with no follow(), once it is in what OpenLayers
// last asked the source to show: the view of the layer drawing it and its render buffer).
// When the cache's tier changes, the source is emptied and loads again.
// `source.dispose()` lets go of the cache: its listener, the loads out (aborted) and the
// follow()s of the source (detached); the cache's dispose() detaches the follow()s too (a
// tile asked of it after that fails with ERR_DISPOSED, once), and so does the map's (the
// source then lets go of its tiles unless another followed map shows it, as it does when its
// last layer on its followed maps is taken off, hidden, zoomed out of its range or given
// another source; a follow() feeds nothing while no visible layer of its map shows the
// source within its zoom range). Views in EPSG:3857
// (OpenLayers' default), with no user projection (useGeographic()).
// The adapter does not import OpenLayers: the page passes the classes in. Types:
// openlayers.d.ts.

import { wrapBox } from './box.js';
import { drawnWith, followUpdates } from './redraw.js';
import { report } from './report.js';

const OPTION_NAMES = ['onError'];
const OL_NAMES = ['VectorSource', 'Feature', 'Point', 'tileStrategy', 'createXYZ'];
/** Half the width of the EPSG:3857 world, in metres. */
const HALF = 20037508.342789244;
/** Metres per pixel at zoom 0 of 256-px tiles (156543.03…). */
const Z0_RESOLUTION = (2 * HALF) / 256;
/** The width of the EPSG:3857 world, in metres. */
const WORLD = 2 * HALF;

function fail(Class, code, message) {
  const e = new Class(message);
  e.code = code;
  return e;
}

/** EPSG:3857 metres of (lon, lat). */
export function toMercator(lon, lat) {
  const r = (Math.max(-85.0511287798, Math.min(85.0511287798, lat)) * Math.PI) / 180;
  return [(lon / 180) * HALF, (Math.log(Math.tan(Math.PI / 4 + r / 2)) * HALF) / Math.PI];
}

/** (lon, lat) of EPSG:3857 metres. */
export function toLonLat(x, y) {
  return [(x / HALF) * 180, (Math.atan(Math.exp((y / HALF) * Math.PI)) * 360) / Math.PI - 90];
}

/** Whether a tile's extent overlaps view extent `v` grown by `m` metres on each side. */
function near(v, m) {
  // The tiles are in the real world (OpenLayers wraps what it loads into it); the view
  // may be in another world's copy, or across the antimeridian: shifted so its centre is
  // in the real world, and compared with its twin a world to either side too.
  const shift = Math.floor(((v[0] + v[2]) / 2 + HALF) / WORLD) * WORLD;
  const e = [v[0] - m - shift, v[1] - m, v[2] + m - shift, v[3] + m];
  const wide = e[2] - e[0] >= WORLD;
  const apart = (x, dx) => x[2] <= e[0] + dx || x[0] >= e[2] + dx;
  return (x) => !(x[3] <= e[1] || x[1] >= e[3] || (!wide && apart(x, 0) && apart(x, -WORLD) && apart(x, WORLD)));
}

/** What the adapter keeps per source: loaded tiles and the features they hold. */
const states = new WeakMap();

/**
 * A VectorSource over `cache`. `ol` holds the OpenLayers pieces: `VectorSource`
 * (ol/source/Vector), `Feature` (ol/Feature), `Point` (ol/geom/Point), `tileStrategy`
 * (`tile` of ol/loadingstrategy) and `createXYZ` (ol/tilegrid). A feature's properties:
 * `class`, `access`, `stale` and `item` (the Item).
 */
export function createSource(ol, cache, options = {}) {
  if (!ol || typeof ol !== 'object') throw fail(TypeError, 'ERR_INVALID_ARG_TYPE', `ol must be an object {${OL_NAMES.join(', ')}}`);
  for (const k of OL_NAMES) {
    if (typeof ol[k] !== 'function') throw fail(TypeError, 'ERR_INVALID_ARG_TYPE', `ol.${k} must be OpenLayers' ${k}`);
  }
  if (!cache || ['loadTiles', 'onAccess', 'onDispose', 'onTilesChanged'].some((k) => typeof cache[k] !== 'function')) {
    throw fail(TypeError, 'ERR_INVALID_ARG_TYPE', 'cache must be a TileCache');
  }
  if (options === null || typeof options !== 'object') throw fail(TypeError, 'ERR_INVALID_ARG_TYPE', 'options must be an object');
  for (const k of Object.keys(options)) {
    if (!OPTION_NAMES.includes(k)) {
      throw fail(TypeError, 'ERR_INVALID_ARG_VALUE', `${k} is not an option; the options are ${OPTION_NAMES.join(', ')}`);
    }
  }
  if (options.onError !== undefined && typeof options.onError !== 'function') {
    throw fail(TypeError, 'ERR_INVALID_ARG_TYPE', 'onError must be a function');
  }
  const onError = options.onError ?? report;
  const grid = ol.createXYZ({ tileSize: 256, maxZoom: 24 });
  /** key "z/x/y" -> { key, extent, ids: Set, ctrl, drawn } of tiles loaded or loading
   * (`drawn`: the items it was last filled with, see redraw.js). */
  const tiles = new Map();
  /** id -> { feature, tiles: Set<key> } */
  const held = new Map();
  /** The detach() of each follow() of the source. */
  const followers = new Set();
  /** `disposed`: the source was; `gone`: the cache was (its follow()s detached). */
  let source, disposed = false, gone = false;
  /** The zoom whose tiles were last reported too coarse (once per zoom the view comes to). */
  let coarseZ;

  function featureOf(item) {
    const f = new ol.Feature({ geometry: new ol.Point(toMercator(item.lon, item.lat)) });
    f.setId(item.id);
    f.setProperties({ class: item.class, access: item.access, stale: item.stale, item }, true);
    return f;
  }

  /** The tile's items are `items` now: hold the new ones, update changed ones, let go of
   * the ones it no longer has. */
  function fill(key, items) {
    const t = tiles.get(key);
    const next = new Set();
    const added = [];
    for (const item of items) {
      next.add(item.id);
      const h = held.get(item.id);
      if (!h) {
        const feature = featureOf(item);
        held.set(item.id, { feature, tiles: new Set([key]) });
        added.push(feature);
        continue;
      }
      h.tiles.add(key);
      const f = h.feature;
      // Held but not in the source (taken out by the page): in it again.
      if (!source.hasFeature(f)) added.push(f);
      if (f.get('item') !== item || f.get('stale') !== item.stale) {
        f.getGeometry().setCoordinates(toMercator(item.lon, item.lat));
        f.setProperties({ class: item.class, access: item.access, stale: item.stale, item });
      }
    }
    for (const id of t.ids) if (!next.has(id)) release(id, key);
    t.ids = next;
    t.drawn = drawnWith(items);
    if (added.length) source.addFeatures(added);
    return added;
  }

  function release(id, key) {
    const h = held.get(id);
    if (!h) return;
    h.tiles.delete(key);
    if (h.tiles.size === 0) {
      held.delete(id);
      source.removeFeature(h.feature);
    }
  }

  /** Forgets a tile: aborts its load, lets go of its items, and marks its extent as not
   * loaded (so the strategy asks for it again when it comes back into view). */
  function drop(key) {
    const t = tiles.get(key);
    if (!t) return;
    tiles.delete(key);
    t.ctrl.abort();
    for (const id of t.ids) release(id, key);
    source.removeLoadedExtent(t.extent);
  }

  /** The tile has no items now (its load failed, or it is too coarse for the cache), and
   * stays so until it is dropped or the source cleared: its extent stays loaded, so
   * OpenLayers does not ask for it again on every redraw. */
  function empty(key, t) {
    for (const id of t.ids) release(id, key);
    t.ids = new Set();
    t.drawn = undefined;
  }

  function loader(extent, resolution, projection, success, failure) {
    if (disposed) return;
    if (projection.getCode() !== 'EPSG:3857') {
      // (OpenLayers hands the loader the user projection when one is set: useGeographic().)
      onError(fail(RangeError, 'ERR_OUT_OF_RANGE', `tilewarm/openlayers needs a view in EPSG:3857 and no user projection, got ${projection.getCode()}`));
      failure();
      return;
    }
    const z = grid.getZForResolution(resolution);
    const c = [(extent[0] + extent[2]) / 2, (extent[1] + extent[3]) / 2];
    const [, x, y] = grid.getTileCoordForCoordAndZ(c, z);
    if (x < 0 || y < 0 || x >= 2 ** z || y >= 2 ** z) { success([]); return; } // another world's copy
    if (z !== coarseZ) coarseZ = undefined; // the view is at another zoom: report again there
    const key = `${z}/${x}/${y}`;
    tiles.get(key)?.ctrl.abort();
    const ctrl = new AbortController();
    const t = { key, extent: extent.slice(), ids: tiles.get(key)?.ids ?? new Set(), ctrl };
    tiles.set(key, t);
    let loading;
    try {
      loading = cache.loadTiles([key], { signal: ctrl.signal });
    } catch (e) {
      empty(key, t);
      onError(e);
      failure();
      return;
    }
    // Every load ends for OpenLayers, which counts them in `source.loading` (`loadend` and
    // `rendercomplete` wait for none to be left): one aborted (its tile dropped or loaded
    // again) or superseded (its tile forgotten) succeeds with nothing.
    loading.then(([got]) => {
      if (disposed) return;
      if (tiles.get(key) !== t) { success([]); return; }
      if (got.error?.code === 'ERR_TOO_MANY_TILES') {
        // Not a failure: nothing can be shown at this zoom (as below the cache's minZoom).
        empty(key, t);
        if (coarseZ !== z) { coarseZ = z; onError(got.error); }
        success([]);
        return;
      }
      if (got.error) {
        // A request that gave up: the tile stays failed, as Leaflet and deck.gl keep theirs.
        empty(key, t);
        onError(got.error);
        failure();
        return;
      }
      // A page listener of the source's `addfeature` that throws does not leave the load
      // open (OpenLayers would wait for it for ever): the features are in, the error told,
      // and the source marked changed (addFeatures did not get that far), so it is drawn.
      let added = [];
      try { added = fill(key, got.items); } catch (e) { source.changed(); onError(e); }
      success(added);
    }, (e) => {
      if (disposed) return;
      if (ctrl.signal.aborted) { success([]); return; }
      empty(key, t);
      onError(e);
      failure();
    });
  }

  /** Forgets every tile (aborting its load; a load that resolved already finds its tile
   * gone and adds nothing) and every feature held: the source was cleared (`clear()`, or
   * `refresh()`, which then loads the view again). */
  function reset() {
    for (const t of tiles.values()) t.ctrl.abort();
    tiles.clear();
    held.clear();
  }

  /** `source.dispose()`: nothing of the cache's reaches the source any more, and nothing of
   * the source's keeps the cache busy. */
  function teardown() {
    disposed = true;
    offAccess();
    offDispose();
    offUpdates();
    for (const detach of [...followers]) detach();
    reset();
    states.delete(source);
  }

  class TilewarmSource extends ol.VectorSource {
    disposeInternal() {
      teardown();
      super.disposeInternal();
    }
  }
  // What OpenLayers last asked the source to show (its `loadFeatures`, through the
  // strategy: the view of a layer that draws it, with its render buffer, once per world
  // copy; the calls of one render are one burst), as tests of a tile's extent: the view of
  // a source no follow() follows. (OpenLayers gives a source no way to its layers or maps.)
  const tiled = ol.tileStrategy(grid);
  let asked = [], asking = false;
  function strategy(extent, resolution, projection) {
    if (!asking) {
      asking = true;
      asked = [];
      queueMicrotask(() => { asking = false; });
      updates.moved(); // a tile owed a read is read once such a view shows it
    }
    asked.push(near(extent, 0));
    return tiled(extent, resolution, projection);
  }
  source = new TilewarmSource({ strategy, loader });
  // Held features and loaded tiles that outlived a clear would be found on the next load
  // and never added again: an empty map.
  source.on('clear', reset);
  // A tier change (setAccess, or a lower tier the server reported) leaves features the new
  // tier may not see: the source is emptied at once (a clear: reset) and loads the view
  // again. Held until the source is disposed.
  const offAccess = cache.onAccess(() => source.refresh());
  // A disposed cache would answer every view follow() feeds it with ERR_DISPOSED, on every
  // frame of a move: the follow()s detach. (A tile asked of it fails, once, as a tile.)
  // A loaded tile whose items changed in the cache (an invalidate, say by tilewarm/live's
  // change feed; an answer that refetched, replaced or deleted them, in the cache's view or
  // not; items turned stale or expired) is filled again (see redraw.js), once it is in the
  // view of a map that follow() follows and that draws the source (any tile of any zoom:
  // the source draws the features of every loaded tile); with no follow(), once it is in
  // what OpenLayers last asked the source to show (`asked`).
  const updates = followUpdates(cache, () => {
    const views = followers.size ? [...followers].filter((f) => draws(f.map, source)).map((f) => f.inView()) : asked;
    return [...tiles].map(([key, t]) => [key, t, t.drawn, views.some((seen) => seen(t.extent))]);
  }, (t, items, drawn) => {
    if (tiles.get(t.key) !== t || t.drawn !== drawn) return;
    try { fill(t.key, items); } catch (e) { source.changed(); onError(e); }
  });
  const offUpdates = updates.stop;
  const offDispose = cache.onDispose(() => {
    gone = true;
    for (const detach of [...followers]) detach();
  });
  states.set(source, { cache, tiles, drop, onError, followers, moved: updates.moved, gone: () => gone });
  return source;
}

/** Whether OpenLayers disposed of `map` (`disposed`; `disposed_` in older versions). */
const wasDisposed = (map) => map.disposed || map.disposed_;

/** Whether `map` draws `source`: a layer of it shows the source and is visible, in groups
 * that are, and within its zoom and resolution range at the view's (the layer states
 * OpenLayers renders from, as its `inView` reads them: out of range, it neither draws nor
 * loads the layer). */
function draws(map, source) {
  if (wasDisposed(map)) return false;
  const view = map.getView(), r = view.getResolution(), z = view.getZoom();
  return map.getLayerGroup().getLayerStatesArray().some((s) => s.visible && s.layer.getSource?.() === source &&
    !(r < s.minResolution || r >= s.maxResolution || z <= s.minZoom || z > s.maxZoom));
}

/**
 * Follows `map` with a source from {@link createSource}: feeds the view to
 * `cache.setViewport` at most once per animation frame while it moves or turns (and a
 * visible layer of the map shows the source), so
 * tilewarm's prefetch runs (the view the map has: after `map.setView`, the new one), and
 * when a move ends, removes the features of tiles that left the view (and aborts their
 * loads; tiles within a quarter of the view's size stay). Returns `detach()`, which
 * disposing of the source also does.
 */
export function follow(map, source) {
  if (!map || typeof map.getView !== 'function' || typeof map.on !== 'function') {
    throw fail(TypeError, 'ERR_INVALID_ARG_TYPE', 'map must be an ol/Map');
  }
  const st = states.get(source);
  if (!st) throw fail(TypeError, 'ERR_INVALID_ARG_TYPE', 'source must come from createSource, not disposed');
  const { cache, tiles, drop, onError, followers, moved } = st;
  if (st.gone()) return () => {}; // the cache was disposed: nothing to feed
  const zoomOffset = cache.tileSize === 512 ? -1 : 0;
  let frame = 0, detached = false, userProjectionReported = false;

  function extent() {
    const size = map.getSize();
    const view = map.getView();
    const resolution = view.getResolution();
    // No centre yet (set later): no view (calculateExtent would throw); its change brings us back.
    if (!size || !size[0] || !size[1] || !(resolution > 0) || !view.getCenter()) return undefined;
    if (view.getProjection().getCode() !== 'EPSG:3857') return undefined;
    const e = view.calculateExtent(size);
    // In the view's metres, as wide as the resolution says, unless a user projection is set
    // (useGeographic(): degrees, which read as metres are a box at 0°, 0°): reported once,
    // nothing fed.
    const r = view.getRotation();
    const width = resolution * (size[0] * Math.abs(Math.cos(r)) + size[1] * Math.abs(Math.sin(r)));
    if (!(Math.abs(e[2] - e[0] - width) <= 1e-6 * width)) {
      if (!userProjectionReported) {
        userProjectionReported = true;
        onError(fail(RangeError, 'ERR_OUT_OF_RANGE',
          'tilewarm/openlayers needs coordinates in EPSG:3857, not a user projection: no useGeographic() or setUserProjection()'));
      }
      return undefined;
    }
    return e;
  }

  function push() {
    frame = 0;
    if (disposed()) return;
    moved(); // a tile owed a read (changed out of the view) is read once the view shows it
    // A zoom past the range of the layers showing the source hides it as hiding them does.
    if (!(shown = draws(map, source))) letGo();
    const e = extent();
    // The zoom of 256-px tiles, from the resolution: the view's own zoom counts its
    // `resolutions`, `zoomFactor` or `maxResolution` when it has them.
    const resolution = map.getView().getResolution();
    if (detached || !e || !(resolution > 0) || !shown) return;
    const zoom = Math.log2(Z0_RESOLUTION / resolution);
    const [west, south] = toLonLat(e[0], e[1]);
    const [east, north] = toLonLat(e[2], e[3]);
    try {
      cache.setViewport({ ...wrapBox(west, south, east, north), zoom: Math.min(30, Math.max(0, zoom + zoomOffset)) });
    } catch (err) {
      onError(err);
    }
  }

  function schedule() {
    if (!frame && !detached) frame = requestAnimationFrame(push);
  }

  /** Whether the map was disposed (`map.dispose()` clears the map's own listeners, not the
   * view's): then follow() detaches, and unless another followed map shows the source, it
   * lets go of its tiles, as of tiles that left the view (nothing draws them, and they
   * would be read and fetched again on every change or expiry in the cache; a map that
   * shows the source again loads them again). A source taken off a live map is the page's
   * to dispose of. */
  function disposed() {
    if (!wasDisposed(map)) return false;
    detach();
    letGo();
    return true;
  }

  /** Lets go of the source's tiles unless a map another follow() of it follows draws it
   * (those tiles are that map's too: dropped, they would leave it and be loaded again).
   * Dropping them changes the source, which OpenLayers passes up the layer group as a
   * `change`: that nested call does nothing. */
  let letting = false;
  function letGo() {
    if (letting || [...followers].some((f) => draws(f.map, source))) return;
    letting = true;
    try {
      for (const key of [...tiles.keys()]) drop(key);
    } finally {
      letting = false;
    }
  }

  // A layer taken off the map (`map.removeLayer`, in a group too, or `map.setLayers`),
  // hidden (`setVisible(false)`, its group's too, or a view zoomed out of its range: see
  // push) or given another source (`setSource`):
  // when no visible layer of a followed map shows the source any more, it lets go of its
  // tiles as above (a layer that shows it again loads them again), and follow() feeds that
  // map's view no more (the cache would fetch the tiles of a view nobody sees it in) until
  // one shows it again. (`map.setLayers(collection)` replaces the group's collection: a
  // change:layers, no removelayer. A layer's `change:visible` and `change:source` reach
  // the map's layer group as a `change`, as its source's changes do.)
  const GROUP_CHANGES = ['removelayer', 'change:layers', 'change', 'propertychange'];
  let group = map.getLayerGroup(), shown = draws(map, source);
  function onLayers() {
    letGo();
    const was = shown;
    shown = draws(map, source);
    if (shown && !was) schedule();
  }
  group.on(GROUP_CHANGES, onLayers);
  function onGroup() {
    group.un(GROUP_CHANGES, onLayers);
    group = map.getLayerGroup();
    group.on(GROUP_CHANGES, onLayers);
    onLayers();
  }

  function prune() {
    const v = extent();
    if (!v) return;
    // Tiles a quarter of the view beyond it stay: OpenLayers loads a render buffer
    // (100 px by default) around the view, which would be loaded again at once.
    const keep = near(v, Math.max(v[2] - v[0], v[3] - v[1]) / 4);
    for (const [key, t] of [...tiles]) if (!keep(t.extent)) drop(key);
    schedule();
  }

  // The view the map has now: the page may give the map another one (map.setView).
  // OpenLayers' on/un take a list of event types.
  const VIEW_CHANGES = ['change:center', 'change:resolution', 'change:rotation'];
  let view = map.getView();
  view.on(VIEW_CHANGES, schedule);
  function onView() {
    view.un(VIEW_CHANGES, schedule);
    view = map.getView();
    view.on(VIEW_CHANGES, schedule);
    schedule();
  }
  map.on('change:view', onView);
  map.on('change:size', schedule);
  map.on('change:target', disposed);
  map.on('change:layergroup', onGroup);
  map.on('moveend', prune);
  push();
  // Detached too when the source is disposed.
  detach.map = map;
  // Which tiles the map's view shows (any part of; all while it has no view yet).
  detach.inView = () => {
    const v = extent();
    return v ? near(v, 0) : () => true;
  };
  if (!detached) followers.add(detach);
  return detach;

  function detach() {
    if (detached) return;
    detached = true;
    followers.delete(detach);
    moved(); // its view no longer counts: a read owed for its sake is made (see redraw.js)
    if (frame) cancelAnimationFrame(frame);
    view.un(VIEW_CHANGES, schedule);
    map.un('change:view', onView);
    map.un('change:size', schedule);
    map.un('change:target', disposed);
    map.un('change:layergroup', onGroup);
    group.un(GROUP_CHANGES, onLayers);
    map.un('moveend', prune);
  }
}
