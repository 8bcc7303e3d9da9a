// tilewarm/maplibre: keeps a MapLibre GL JS GeoJSON source in sync with a TileCache.
//
//   const detach = attach(map, cache, { sourceId: 'homes' });
//
// It reads the map's bounds and zoom itself (MapLibre's zoom is for 512-px tiles: +1 unless
// the cache was made with `tileSize: 512`; wrapped worlds and pitched views are folded into
// one box, and a box too wide to fetch is the cache's `tooWide` state, not an error), calls
// `setViewport` at most once per animation frame, and updates the source by diffs
// (`updateData` on a source with `promoteId`: only added, removed and changed items),
// falling back to `setData` where `updateData` is missing; a frame that changed nothing
// updates nothing. Fetch errors go to the cache's `onError` listeners; errors of the map
// calls to `options.onError`. One cache per map: the cache has one view, so a second map
// attached to it would show the first one's items (refused; the same map may take several
// sources). A new style (setStyle), or a source the page removed and added again, gets all of
// the view's items (the source added at the style's 'style.load' when it has none). Detached
// when the map is removed or the cache disposed. Types: maplibre.d.ts.

import { wrapBox } from './box.js';
import { report } from './report.js';

/** What the page's options may hold, and their defaults. */
const OPTION_NAMES = ['sourceId', 'promoteId', 'properties', 'onView', 'onError', 'useUpdateData'];
/** cache -> { map, n }: the map a cache follows, and how many attach()es of it are live. */
const owners = new WeakMap();

function fail(Class, code, message) {
  const e = new Class(message);
  e.code = code;
  return e;
}

/** A map's bounds as one box in -180..180 (west > east across the antimeridian; the
 * whole world when more than one world is in view), latitudes clamped. Exported for the
 * tests. */
export function boxOf(bounds) {
  return wrapBox(bounds.getWest(), bounds.getSouth(), bounds.getEast(), bounds.getNorth());
}

/** The GeoJSON feature of an item: its id (the source's `promoteId`), class, tier, stale
 * flag, then what `properties(item)` adds, but for the id: the diffs name features by it (one
 * of `properties` in its place, say the item's data spread with its own `id`, would leave the
 * features of items that left the view on the map). */
function featureOf(item, promoteId, properties) {
  const props = { [promoteId]: item.id, class: item.class, access: item.access, stale: item.stale };
  if (properties) {
    Object.assign(props, properties(item));
    props[promoteId] = item.id;
  }
  return { type: 'Feature', geometry: { type: 'Point', coordinates: [item.lon, item.lat] }, properties: props };
}

/**
 * Keeps GeoJSON source `options.sourceId` of `map` in sync with `cache` (added when the
 * style has none); returns `detach()`, which stops following the map (the source keeps
 * its data).
 */
export function attach(map, cache, options) {
  if (!map || ['getBounds', 'getZoom', 'getSource', 'addSource', 'on', 'off', 'once'].some((k) => typeof map[k] !== 'function')) {
    throw fail(TypeError, 'ERR_INVALID_ARG_TYPE', 'map must be a maplibregl.Map');
  }
  if (!cache || ['setViewport', 'onUpdate', 'onDispose'].some((k) => typeof cache[k] !== 'function')) {
    throw fail(TypeError, 'ERR_INVALID_ARG_TYPE', 'cache must be a TileCache');
  }
  if (options === null || typeof options !== 'object') {
    throw fail(TypeError, 'ERR_INVALID_ARG_TYPE', 'options must be an object {sourceId, ...}');
  }
  for (const k of Object.keys(options)) {
    if (!OPTION_NAMES.includes(k)) {
      throw fail(TypeError, 'ERR_INVALID_ARG_VALUE', `${k} is not an option; the options are ${OPTION_NAMES.join(', ')}`);
    }
  }
  const { sourceId, promoteId = 'id', properties, onView, useUpdateData = true } = options;
  const onError = options.onError ?? report;
  if (typeof sourceId !== 'string' || sourceId === '') {
    throw fail(TypeError, 'ERR_INVALID_ARG_TYPE', 'sourceId must be a non-empty string');
  }
  for (const [name, f] of [['properties', properties], ['onView', onView], ['onError', options.onError]]) {
    if (f !== undefined && typeof f !== 'function') throw fail(TypeError, 'ERR_INVALID_ARG_TYPE', `${name} must be a function`);
  }
  if (typeof promoteId !== 'string' || promoteId === '') throw fail(TypeError, 'ERR_INVALID_ARG_TYPE', 'promoteId must be a non-empty string');
  if (typeof useUpdateData !== 'boolean') throw fail(TypeError, 'ERR_INVALID_ARG_TYPE', 'useUpdateData must be a boolean');
  const owner = owners.get(cache);
  if (owner && owner.map !== map) {
    throw fail(TypeError, 'ERR_INVALID_ARG_VALUE',
      'cache is attached to another map: a TileCache follows one view, so each map needs its own (TileCache.create one for this map, or detach() the other first)');
  }
  const zoomOffset = cache.tileSize === 512 ? 0 : 1;

  /** id -> { item, stale } of what the source holds. */
  let shown = new Map();
  /** The items array `shown` was built from, and the source object that holds them. */
  let shownItems, shownSource;
  let frame = 0, detached = false, synced = false;

  /** The source, added when the style has none; undefined while the style is loading
   * (MapLibre refuses addSource then; 'styledata' brings us back). */
  function source() {
    let src = map.getSource(sourceId);
    if (!src) {
      synced = false;
      try {
        map.addSource(sourceId, { type: 'geojson', data: { type: 'FeatureCollection', features: [] }, promoteId });
      } catch {
        return undefined;
      }
      src = map.getSource(sourceId);
    }
    return src;
  }

  /** Brings the source to `items`: a diff when the source can take one, else all of it;
   * nothing when nothing changed. */
  function show(items) {
    const src = source();
    if (!src) return;
    // Another source object than the one filled (the page removed and added it): empty.
    if (src !== shownSource) synced = false;
    // setViewport hands back the same list while the view is unchanged (most frames).
    if (items === shownItems && synced) return;
    shownItems = items;
    const next = new Map();
    for (const it of items) next.set(it.id, { item: it, stale: it.stale });
    const diffable = useUpdateData && typeof src.updateData === 'function' && src.promoteId === promoteId;
    const remove = [], add = [], update = [];
    if (synced) {
      for (const id of shown.keys()) if (!next.has(id)) remove.push(id);
      for (const [id, now] of next) {
        const was = shown.get(id);
        if (!was) add.push(diffable ? featureOf(now.item, promoteId, properties) : null);
        else if (was.item !== now.item || was.stale !== now.stale) update.push(id);
      }
    }
    const changed = remove.length || add.length || update.length;
    if (!synced || (changed && !diffable)) {
      src.setData({ type: 'FeatureCollection', features: items.map((it) => featureOf(it, promoteId, properties)) });
    } else if (changed) {
      src.updateData({
        remove, add,
        update: update.map((id) => {
          const f = featureOf(next.get(id).item, promoteId, properties);
          // The keys the feature loses, named: MapLibre 6.17's worker applies
          // `removeAllProperties` and drops `addOrUpdateProperties` with it (the drawn
          // feature is left with none, not even its id), though its getData() has them.
          const old = featureOf(shown.get(id).item, promoteId, properties).properties;
          return {
            id,
            newGeometry: f.geometry,
            removeProperties: Object.keys(old).filter((k) => !(k in f.properties)),
            addOrUpdateProperties: Object.entries(f.properties).map(([key, value]) => ({ key, value })),
          };
        }),
      });
    }
    shown = next;
    shownSource = src;
    synced = true;
  }

  function viewport() {
    return { ...boxOf(map.getBounds()), zoom: Math.min(30, Math.max(0, map.getZoom() + zoomOffset)) };
  }

  function push() {
    frame = 0;
    if (detached) return;
    try {
      const view = cache.setViewport(viewport());
      show(view.items);
      onView?.(view);
    } catch (e) {
      onError(e);
    }
  }

  function schedule() {
    if (frame || detached) return;
    frame = requestAnimationFrame(push);
  }

  function onStyle() {
    // The style loaded, or the source is gone or another one (dropped by a new style, or
    // removed and added by the page): add it again, and fill it with everything. The source
    // is added at once, so layers added in a 'load' listener find it.
    if (!synced || map.getSource(sourceId) !== shownSource) { source(); synced = false; schedule(); }
  }

  function onStyleLoad() {
    // A new style (setStyle): MapLibre diffs it into the map, and no 'styledata' comes
    // before its 'style.load' listeners run; it dropped the source (added again here, so the
    // page's layers added on 'style.load' find it), or, when it declares the source, set the
    // style's data into it. Either way the source holds none of the view: all of it again.
    synced = false;
    source();
    schedule();
  }

  let offUpdate, offDispose;
  owners.set(cache, { map, n: (owner?.n ?? 0) + 1 });
  try {
    offUpdate = cache.onUpdate((items, view) => {
      if (detached) return;
      try {
        show(items);
        onView?.({ items, ...view });
      } catch (e) {
        onError(e);
      }
    });
    map.on('move', schedule);
    map.on('moveend', schedule);
    map.on('styledata', onStyle);
    map.on('style.load', onStyleLoad);
    // A removed map is detached from: the cache's listener would keep it alive and read
    // sources of a map that has none.
    map.once('remove', detach);
  } catch (e) {
    // Nothing of a failed attach stays behind (the listeners added before the throw).
    try { detach(); } catch { /* the first error is the one to report */ }
    throw e;
  }
  // At once: the cache starts on the view even before the style is ready.
  push();
  // A disposed cache would answer every frame's view with ERR_DISPOSED. (At once when it
  // was disposed already, after push() reported that once.)
  offDispose = cache.onDispose(detach);
  return detach;

  function detach() {
    if (detached) return;
    detached = true;
    const o = owners.get(cache);
    if (o && o.map === map && --o.n === 0) owners.delete(cache);
    if (frame) cancelAnimationFrame(frame);
    offUpdate?.();
    offDispose?.();
    map.off('move', schedule);
    map.off('moveend', schedule);
    map.off('styledata', onStyle);
    map.off('style.load', onStyleLoad);
    map.off('remove', detach);
  }
}
