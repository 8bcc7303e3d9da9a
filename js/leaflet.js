// tilewarm/leaflet: a Leaflet GridLayer whose tiles come from TileCache.loadTiles, drawn on
// canvases, and which feeds the map's view to the cache so tilewarm's prefetch runs
// (Leaflet prefetches nothing for a GridLayer).
//
//   const layer = createLayer(L, cache, { draw }).addTo(map);
//
// Each tile the grid asks for is one `loadTiles` call (the calls of a tick go out together,
// so a grid of N tiles needs ceil(N / batch.maxTiles) requests); a tile Leaflet unloads
// aborts its call. A drawn tile whose items changed in the cache (onTilesChanged) is drawn again
// from the cache, once it is on the screen; when the cache's tier changes, every tile is loaded again (see below).
// Maps in EPSG:3857 (Leaflet's default CRS; another CRS fails every tile). Types: leaflet.d.ts.

import { drawnWith, followUpdates } from './redraw.js';
import { report } from './report.js';

const OPTION_NAMES = ['draw', 'onError', 'followView', 'pane', 'zIndex', 'opacity', 'minZoom', 'maxZoom', 'bounds'];

function fail(Class, code, message) {
  const e = new Class(message);
  e.code = code;
  return e;
}

/** Pixel of (lon, lat) in the world at zoom `z` of 256-px tiles. */
function worldPx(lon, lat, z) {
  const n = 256 * 2 ** z;
  const r = (Math.max(-85.0511, Math.min(85.0511, lat)) * Math.PI) / 180;
  return [((lon + 180) / 360) * n, ((1 - Math.log(Math.tan(r) + 1 / Math.cos(r)) / Math.PI) / 2) * n];
}

/** Whether the map's CRS puts Web Mercator's 256-px tiles where Leaflet's tiles are (Leaflet's
 * default EPSG:3857 does; EPSG:4326, EPSG:3395 or a Proj4Leaflet CRS need not): the tiles
 * named z/x/y to the cache are those. Checked by two points of the zoom-0 and zoom-1 grids. */
function mercatorTiles(L, crs) {
  const at = (lat, lon, z) => crs?.latLngToPoint?.(L.latLng(lat, lon), z);
  const near = (p, x, y) => Math.abs(p?.x - x) < 1e-6 && Math.abs(p?.y - y) < 1e-6;
  try {
    return near(at(0, 0, 0), 128, 128) && near(at(85.0511287798066, 180, 1), 512, 0);
  } catch {
    return false;
  }
}

/** The default drawing: a dot per item, grey when stale. */
function dot(ctx, item, x, y) {
  ctx.beginPath();
  ctx.arc(x, y, 4, 0, 2 * Math.PI);
  ctx.fillStyle = item.stale ? '#94a3b8' : '#ea580c';
  ctx.fill();
  ctx.lineWidth = 1;
  ctx.strokeStyle = '#ffffff';
  ctx.stroke();
}

/**
 * A GridLayer over `cache`. `L` is the Leaflet namespace (the adapter does not import it).
 * `draw(ctx, item, x, y)` paints an item at its pixel in the tile (default: a dot).
 */
export function createLayer(L, cache, options = {}) {
  if (!L || typeof L.GridLayer?.extend !== 'function') throw fail(TypeError, 'ERR_INVALID_ARG_TYPE', 'L must be the Leaflet namespace');
  if (!cache || ['loadTiles', 'onAccess', 'onDispose', 'onTilesChanged', 'setViewport'].some((k) => typeof cache[k] !== 'function')) {
    throw fail(TypeError, 'ERR_INVALID_ARG_TYPE', 'cache must be a TileCache');
  }
  if (options === null || typeof options !== 'object') throw fail(TypeError, 'ERR_INVALID_ARG_TYPE', 'options must be an object');
  for (const k of Object.keys(options)) {
    if (!OPTION_NAMES.includes(k)) {
      throw fail(TypeError, 'ERR_INVALID_ARG_VALUE', `${k} is not an option; the options are ${OPTION_NAMES.join(', ')}`);
    }
  }
  for (const name of ['draw', 'onError']) {
    if (options[name] !== undefined && typeof options[name] !== 'function') throw fail(TypeError, 'ERR_INVALID_ARG_TYPE', `${name} must be a function`);
  }
  if (options.followView !== undefined && typeof options.followView !== 'boolean') {
    throw fail(TypeError, 'ERR_INVALID_ARG_TYPE', 'followView must be a boolean');
  }
  const { draw = dot, followView = true, ...gridOptions } = options;
  const onError = options.onError ?? report;
  delete gridOptions.onError;
  const zoomOffset = cache.tileSize === 512 ? -1 : 0;
  /** The maps whose CRS was found not to be Web Mercator (each reported once). */
  const wrongCrs = new WeakSet();
  /** The zoom whose tiles were found too coarse for the cache (ERR_TOO_MANY_TILES), reported
   * once; forgotten when a tile of another zoom is asked for. */
  let coarseZ;
  const Layer = L.GridLayer.extend({
    createTile(coords, done) {
      const tile = L.DomUtil.create('canvas', 'tilewarm-tile');
      const crs = this._map?.options.crs;
      if (!mercatorTiles(L, crs)) {
        // Its tiles' z/x/y are not the cache's tiles: they would show other places' items.
        const e = fail(RangeError, 'ERR_OUT_OF_RANGE',
          `tilewarm/leaflet needs a map in EPSG:3857 (Leaflet's default CRS, L.CRS.EPSG3857), got ${crs?.code ?? 'a CRS without a code'}`);
        if (!wrongCrs.has(this._map)) { wrongCrs.add(this._map); onError(e); }
        queueMicrotask(() => done(e, tile));
        return tile;
      }
      const size = this.getTileSize();
      // Device pixels (sharp on a high-density screen); Leaflet sizes the tile in CSS pixels,
      // and `draw` draws in them.
      const ratio = globalThis.devicePixelRatio > 0 ? globalThis.devicePixelRatio : 1;
      tile.width = Math.round(size.x * ratio);
      tile.height = Math.round(size.y * ratio);
      const ctrl = new AbortController();
      tile._tilewarmAbort = ctrl;
      tile._tilewarmAt = [coords, size];
      const name = `${coords.z}/${coords.x}/${coords.y}`;
      // Nothing throws into Leaflet: a tile that cannot load (the cache disposed, a tile
      // past zoom 24) or draw fails as a tile, through onError and done. (Leaflet takes
      // `done` only after createTile returned, hence the microtask.)
      let loading;
      try {
        loading = cache.loadTiles([name], { signal: ctrl.signal });
      } catch (e) {
        onError(e);
        queueMicrotask(() => done(e, tile));
        return tile;
      }
      if (coords.z !== coarseZ) coarseZ = undefined; // the view is at another zoom: report again there
      loading.then(([got]) => {
        // Unloaded since (a tier change redraws every tile): the items may be above the
        // tier now, and the canvas is no longer the grid's.
        if (ctrl.signal.aborted) return;
        if (got.error?.code === 'ERR_TOO_MANY_TILES') {
          // Not a failure: nothing can be shown at this zoom (as below the cache's
          // minZoom). The tile loads empty and is not read again (not drawn, so a change in
          // the cache skips it); the error is reported once per zoom the view comes to,
          // as tilewarm/openlayers does, not once per tile.
          if (coarseZ !== coords.z) { coarseZ = coords.z; onError(got.error); }
          done(null, tile);
          return;
        }
        if (got.error) throw got.error;
        paint(tile, got.items);
        done(null, tile);
      }).catch((e) => {
        if (ctrl.signal.aborted) return;
        onError(e);
        done(e, tile);
      });
      return tile;
    },
  });
  /** Draws `items` on a tile's canvas (cleared first: a tile is drawn again when its items
   * changed, see followUpdates). */
  const paint = (tile, items) => {
    const [coords, size] = tile._tilewarmAt;
    const ctx = tile.getContext('2d');
    ctx.setTransform(tile.width / size.x, 0, 0, tile.height / size.y, 0, 0);
    ctx.clearRect(0, 0, size.x, size.y);
    const k = size.x / 256;
    tile.dataset.items = String(items.length);
    tile.tilewarmDrawn = drawnWith(items);
    for (const item of items) {
      const [px, py] = worldPx(item.lon, item.lat, coords.z);
      draw(ctx, item, (px - coords.x * 256) * k, (py - coords.y * 256) * k);
    }
  };
  const layer = new Layer(gridOptions);
  layer.on('tileunload', (e) => e.tile?._tilewarmAbort?.abort());
  // A tier change (setAccess, or a lower tier the server reported) leaves the drawn tiles
  // with items the new tier may not see: redraw unloads every tile at once (aborting its
  // load, so one that resolved before the change draws nothing) and loads the grid again.
  // A disposed cache would answer every view fed to it with ERR_DISPOSED, on every frame
  // of a move: the layer stops following the map (a tile asked of it after that fails, once,
  // as a tile). Both listeners are held while the layer is on a map.
  // The items of a drawn tile that changed in the cache (an invalidate, say by tilewarm/live's
  // change feed; an answer that refetched, replaced or deleted them, in the cache's view or
  // not; items turned stale or expired) draw it again (see redraw.js), once it is on the
  // screen.
  let offAccess, offDispose, updates, gone = false, frame = 0;
  // Named by the coordinates the tile was loaded with: Leaflet keys a tile of a copy of the
  // world (longitudes past 180) by its column there, past 2^z, and hands createTile the
  // wrapped one. On the screen when any of it is in the map's pixel bounds (by the column
  // of its copy, as the bounds are), at whichever zoom it is (Leaflet shows a tile of
  // another zoom while the current one's load): a tile off the screen (the keepBuffer's) is
  // read again only when it is on it (see redraw.js).
  const shown = () => {
    const map = layer._map;
    const b = map.getPixelBounds(), z = map.getZoom(), size = layer.getTileSize();
    return Object.values(layer._tiles).map(({ el, coords }) => {
      const c = el._tilewarmAt?.[0] ?? coords;
      const k = map.getZoomScale(z, coords.z);
      const x = coords.x * size.x * k, y = coords.y * size.y * k;
      const seen = x < b.max.x && x + size.x * k > b.min.x && y < b.max.y && y + size.y * k > b.min.y;
      return [`${c.z}/${c.x}/${c.y}`, el, el.tilewarmDrawn, seen];
    });
  };
  const redraw = (tile, items, drawn) => {
    if (tile.tilewarmDrawn !== drawn || tile._tilewarmAbort.signal.aborted) return; // drawn since, or unloaded
    try {
      paint(tile, items);
    } catch (e) {
      onError(e);
    }
  };
  const push = () => {
    frame = 0;
    const map = layer._map;
    if (!map || gone) return;
    const b = map.getBounds();
    try {
      cache.setViewport({
        west: b.getWest(), south: Math.max(-90, b.getSouth()), east: b.getEast(), north: Math.min(90, b.getNorth()),
        zoom: Math.min(30, Math.max(0, map.getZoom() + zoomOffset)),
      });
    } catch (e) {
      onError(e);
    }
  };
  const schedule = () => { if (!frame && !gone) frame = requestAnimationFrame(push); };
  const unfollow = (map) => {
    map?.off('move moveend', schedule);
    if (frame) cancelAnimationFrame(frame);
    frame = 0;
  };
  layer.on('add', () => {
    offAccess = cache.onAccess(() => layer.redraw());
    updates = followUpdates(cache, shown, redraw);
    // A tile owed a read (changed off the screen) is read once the view shows it.
    layer._map.on('move', updates.moved);
    // At once when the cache was disposed already.
    offDispose = cache.onDispose(() => { gone = true; unfollow(layer._map); });
    if (followView && !gone) { layer._map.on('move moveend', schedule); push(); }
  });
  layer.on('remove', (e) => {
    offAccess?.();
    offDispose?.();
    updates?.stop();
    e.target._map?.off('move', updates?.moved);
    offAccess = offDispose = updates = undefined;
    unfollow(e.target._map);
  });
  if (followView) layer._tilewarmSchedule = schedule;
  return layer;
}
