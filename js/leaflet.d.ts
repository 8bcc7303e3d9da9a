// Types of tilewarm/leaflet (leaflet.js). Leaflet is typed structurally, so the package does
// not depend on @types/leaflet; the Leaflet namespace and its GridLayer fit.
import type { FetchError, Item, TileCache, TilewarmError } from './index.js';

export interface LayerOptions<Data = unknown> {
  /** Paints an item at its pixel (x, y) in the tile's canvas; default: a dot, grey when stale. */
  draw?: (ctx: CanvasRenderingContext2D, item: Item<Data>, x: number, y: number) => void;
  /** Errors of tiles (a request that gave up, a tile asked of a disposed cache, a `draw`
   * that threw, each also the tile's Leaflet `tileerror`; a map not in EPSG:3857: once per
   * map), of `setViewport`, and `ERR_TOO_MANY_TILES` once per zoom the view comes to where
   * a tile covers more than `maxVisibleTiles` data tiles (such a tile loads empty, no
   * `tileerror`); default `reportError`. */
  onError?: (error: FetchError | TilewarmError | unknown) => void;
  /** Feed the map's view to `cache.setViewport` on every frame it moves, so tilewarm's
   * prefetch runs (Leaflet prefetches nothing for a GridLayer). Default true. */
  followView?: boolean;
  /** Passed to the GridLayer. */
  pane?: string;
  zIndex?: number;
  opacity?: number;
  /** Passed to the GridLayer: the zooms and the area (`L.LatLngBounds`) it shows tiles at.
   * A `minZoom` at which a tile covers at most `maxVisibleTiles` data tiles (9 or more with
   * the defaults) asks for no tile the cache cannot show (such tiles load empty). */
  minZoom?: number;
  maxZoom?: number;
  bounds?: unknown;
}

/**
 * A Leaflet `GridLayer` whose tiles come from `cache.loadTiles` (one call per tile; a tick's
 * calls go out together), drawn on canvases of the screen's device pixels (`draw` draws in
 * CSS pixels); an unloaded tile aborts its call. A drawn tile whose items changed in the
 * cache (`cache.onTilesChanged`: an `invalidate`, an answer that refetched, replaced or
 * deleted them, the view's items turned stale; in the cache's view or not) is drawn again
 * by the next animation frame if any of it is in the map's view (one of the `keepBuffer`
 * ring off the screen: once the map shows it again, read once); a tile whose items did
 * not change is not. When the
 * cache's tier changes (`cache.onAccess`: `setAccess`, or a lower tier the server reported)
 * while the layer is on a map, every tile is taken off at once and drawn again. One cache
 * per map (the cache follows one view); when the cache is disposed the layer stops feeding
 * it the view. Maps in EPSG:3857 (Leaflet's default CRS): on a map in another CRS every tile
 * fails (`ERR_OUT_OF_RANGE`, reported to `onError` once per map).
 * @param L the Leaflet namespace (`import * as L from 'leaflet'`)
 * @example
 * const cache = await TileCache.create({ endpoint });
 * createLayer(L, cache).addTo(map);
 */
export function createLayer<Data = unknown>(L: any, cache: TileCache<Data>, options?: LayerOptions<Data>): any;
