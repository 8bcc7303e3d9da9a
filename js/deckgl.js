// tilewarm/deckgl: a deck.gl TileLayer whose tiles come from TileCache.loadTiles, and which
// feeds deck's view to the cache so tilewarm's prefetch runs (deck.gl prefetches nothing
// off the screen for a TileLayer).
//
//   import { TileLayer } from '@deck.gl/geo-layers';
//   const TilewarmTileLayer = extendTileLayer(TileLayer);
//   new TilewarmTileLayer({ id: 'homes', cache, renderSubLayers: (props) => new ScatterplotLayer(...) });
//
// `getTileData` is one `loadTiles` call per tile with the tile's abort signal (the calls of a
// tick go out together, so deck's N tiles need ceil(N / batch.maxTiles) requests); a tile's
// data is the array of its items. When the cache's tier changes, or the `cache` prop is
// another cache, every tile is emptied and loaded again (see tilewarmReload); a tile whose
// items changed in the cache (onTilesChanged) gets them from the cache (tilewarmRedraw), once it is
// visible (one in deck's tile cache off the screen, when deck shows it again). The adapter
// does not import deck.gl: the page passes its TileLayer class in. Types: deckgl.d.ts.

import { wrapBox } from './box.js';
import { drawnWith, followUpdates } from './redraw.js';
import { report } from './report.js';

function fail(Class, code, message) {
  const e = new Class(message);
  e.code = code;
  return e;
}

/** The box and zoom of a deck.gl WebMercatorViewport, in the cache's zoom units (deck's
 * zoom is for 512-px tiles: +1 unless the cache is `tileSize: 512`). */
export function viewportOf(viewport, cache) {
  const [west, south, east, north] = viewport.getBounds();
  const zoom = viewport.zoom + (cache.tileSize === 512 ? 0 : 1);
  return { ...wrapBox(west, south, east, north), zoom: Math.min(30, Math.max(0, zoom)) };
}

/**
 * A subclass of deck.gl's `TileLayer` (pass the class: `import { TileLayer } from
 * '@deck.gl/geo-layers'`) with three more props: `cache` (a TileCache, required),
 * `followView` (feed deck's view to `cache.setViewport` whenever it changes, default true)
 * and `onViewError` (errors of that call; default `reportError`). Tile errors (a request
 * that gave up) reach deck's `onTileError` and the cache's `onError` listeners; a tile that
 * covers more than `maxVisibleTiles` data tiles loads empty, and `onTileError` hears
 * `ERR_TOO_MANY_TILES` once per zoom the view comes to.
 * `maxRequests` defaults to 0 (no throttle): the cache batches the tiles itself.
 */
export function extendTileLayer(TileLayer) {
  if (typeof TileLayer !== 'function' || typeof TileLayer.prototype?.getTileData !== 'function') {
    throw fail(TypeError, 'ERR_INVALID_ARG_TYPE', "TileLayer must be deck.gl's TileLayer class (@deck.gl/geo-layers)");
  }
  class TilewarmTileLayer extends TileLayer {
    updateState(params) {
      const { cache } = this.props;
      if (!cache || ['loadTiles', 'onAccess', 'onDispose', 'onTilesChanged', 'setViewport'].some((k) => typeof cache[k] !== 'function')) {
        throw fail(TypeError, 'ERR_INVALID_ARG_TYPE', `${this.id}: the cache prop must be a TileCache`);
      }
      const { followView, onViewError } = this.props;
      if (followView !== undefined && typeof followView !== 'boolean') throw fail(TypeError, 'ERR_INVALID_ARG_TYPE', `${this.id}: the followView prop must be a boolean`);
      if (onViewError != null && typeof onViewError !== 'function') throw fail(TypeError, 'ERR_INVALID_ARG_TYPE', `${this.id}: the onViewError prop must be a function`);
      const st = this.state;
      if (cache !== st.tilewarmCache) {
        // The first cache, or another one: deck sees a changed prop, not changed data, and
        // would keep the tiles of the old cache (which may be of a higher tier).
        st.tilewarmOff?.();
        st.tilewarmOffDispose?.();
        st.tilewarmUpdates?.stop();
        st.tilewarmGeneration ??= 0;
        st.tilewarmContents ??= new WeakMap();
        if (st.tilewarmCache) this.tilewarmReload();
        st.tilewarmCache = cache;
        st.tilewarmViewport = undefined; // the new cache has not seen the view
        // `this` may be an older instance of the layer by then: deck moves the state to
        // each new one, and this one still reaches it.
        st.tilewarmOff = cache.onAccess(() => this.tilewarmReload());
        // A loaded tile whose items changed in the cache (an invalidate, say by tilewarm/live's
        // change feed; an answer that refetched, replaced or deleted them, on the screen or
        // off it; items turned stale or expired) gets them (see redraw.js), once deck shows it.
        st.tilewarmUpdates = followUpdates(cache, () => this.tilewarmShown(), (tile, items, drawn) => this.tilewarmRedraw(tile, items, drawn));
        // A disposed cache would answer every view fed to it with ERR_DISPOSED, on every
        // frame of a move: the layer stops following (a tile asked of it after that fails,
        // once, as a tile). At once when it was disposed already.
        st.tilewarmGone = false;
        st.tilewarmOffDispose = cache.onDispose(() => { st.tilewarmGone = true; });
      }
      super.updateState(params);
      // deck calls this on a frame where the view (or a prop) changed: at most once a frame.
      // Deck has marked the tiles it shows now: a tile owed a read (changed while deck did
      // not show it) is read if it is one. (Kept in the state: followUpdates calls the
      // instance that made it, whose props may be old.)
      st.tilewarmHidden = this.props.visible === false;
      st.tilewarmUpdates.moved();
      const viewport = this.context.viewport;
      if (this.props.followView && !st.tilewarmGone && viewport && viewport !== this.state.tilewarmViewport) {
        this.state.tilewarmViewport = viewport;
        try {
          cache.setViewport(viewportOf(viewport, cache));
        } catch (e) {
          (this.props.onViewError ?? report)(e);
        }
      }
    }

    finalizeState(context) {
      this.state?.tilewarmOff?.();
      this.state?.tilewarmOffDispose?.();
      this.state?.tilewarmUpdates?.stop();
      super.finalizeState(context);
    }

    /** After a tier change (setAccess, or a lower tier the server reported) or with another
     * cache, the tiles' items may be above the tier now: every tile is emptied (at the next
     * render, see renderLayers) and loaded again; deck's own reload would show the old
     * items until the new ones arrive. */
    tilewarmReload() {
      this.state.tilewarmGeneration++;
      this.state.tileset?.reloadAll();
      this.setNeedsUpdate();
    }

    /** The tiles deck holds with items of this cache's current tier, what they hold, and
     * whether deck shows them (`isVisible`: in the view, or a placeholder for a tile of
     * another zoom still loading; not one kept in its tile cache off the screen, nor any of
     * a hidden layer). */
    tilewarmShown() {
      const { tileset, tilewarmGeneration, tilewarmContents, tilewarmHidden } = this.state;
      const out = [];
      for (const tile of tileset?.tiles ?? []) {
        const loaded = tile.content ? tilewarmContents.get(tile.content) : undefined;
        if (loaded?.at === tilewarmGeneration) {
          const { x, y, z } = tile.index;
          out.push([`${z}/${x}/${y}`, tile, loaded.drawn, !tilewarmHidden && tile.isVisible]);
        }
      }
      return out;
    }

    /** A tile still holding what it was drawn with (`drawn`) holds `items` now, drawn by the
     * next render. */
    tilewarmRedraw(tile, items, drawn) {
      const { tilewarmGeneration, tilewarmContents } = this.state;
      if (!tile.content || tilewarmContents.get(tile.content)?.drawn !== drawn) return;
      tilewarmContents.set(items, { at: tilewarmGeneration, drawn: drawnWith(items) });
      tile.content = items;
      tile.layers = null;
      this.setNeedsUpdate();
    }

    renderLayers() {
      // Items loaded before the last reload show nothing, whenever deck set them on the
      // tile: a load that resolved just before a tier change lands after it.
      const { tileset, tilewarmGeneration, tilewarmContents } = this.state;
      for (const tile of tileset?.tiles ?? []) {
        const loadedAt = tile.content ? tilewarmContents.get(tile.content)?.at : undefined;
        if (loadedAt !== undefined && loadedAt !== tilewarmGeneration) {
          tile.content = [];
          tile.layers = null;
        }
      }
      return super.renderLayers();
    }

    getTileData(tile) {
      if (this.props.getTileData) return super.getTileData(tile);
      const { x, y, z } = tile.index;
      const st = this.state;
      const { tilewarmGeneration, tilewarmContents } = st;
      if (z !== st.tilewarmCoarseZ) st.tilewarmCoarseZ = undefined; // the view is at another zoom: report again there
      return this.props.cache.loadTiles([`${z}/${x}/${y}`], { signal: tile.signal }).then(([got]) => {
        if (got.error?.code === 'ERR_TOO_MANY_TILES') {
          // Not a failure: nothing can be shown at this zoom (as below the cache's minZoom).
          // The tile loads empty and is not read again (nothing drawn, so a change in the
          // cache skips it); deck's onTileError hears it once per zoom the view comes to, as
          // tilewarm/openlayers and tilewarm/leaflet report it, not once per tile.
          if (st.tilewarmCoarseZ !== z) { st.tilewarmCoarseZ = z; this.props.onTileError?.(got.error); }
          const none = [];
          tilewarmContents.set(none, { at: tilewarmGeneration, drawn: undefined });
          return none;
        }
        if (got.error) throw got.error;
        tilewarmContents.set(got.items, { at: tilewarmGeneration, drawn: drawnWith(got.items) });
        return got.items;
      });
    }
  }
  TilewarmTileLayer.layerName = 'TilewarmTileLayer';
  TilewarmTileLayer.defaultProps = {
    cache: { type: 'object', value: null, compare: false },
    followView: true,
    onViewError: { type: 'function', optional: true, value: null },
    maxRequests: 0,
  };
  return TilewarmTileLayer;
}
