// Types of tilewarm/openlayers (openlayers.js). OpenLayers is typed structurally, so the
// package does not depend on it; the classes and functions named below fit.
import type { FetchError, TileCache, TilewarmError } from './index.js';

/** The OpenLayers pieces the adapter builds with (it does not import OpenLayers). */
export interface OpenLayers {
  /** `ol/source/Vector` */
  VectorSource: new (options: any) => any;
  /** `ol/Feature` */
  Feature: new (properties?: any) => any;
  /** `ol/geom/Point` */
  Point: new (coordinates: number[]) => any;
  /** `tile` of `ol/loadingstrategy` */
  tileStrategy: (tileGrid: any) => any;
  /** `createXYZ` of `ol/tilegrid` */
  createXYZ: (options?: any) => any;
}

export interface SourceOptions {
  /** Errors of tiles (a request that gave up, a view not in EPSG:3857 or a user projection
   * set, a tile asked of a disposed cache: each once, the tile then stays failed until it
   * leaves the view, the source is refreshed or the tier changes; follow() with a user
   * projection set: once; tiles over maxVisibleTiles data tiles, loaded
   * empty: `ERR_TOO_MANY_TILES` once per zoom the view comes to) and of `setViewport`;
   * default `reportError`. */
  onError?: (error: FetchError | TilewarmError | unknown) => void;
}

/**
 * An OpenLayers `VectorSource` whose features come from `cache.loadTiles` through a tile
 * loading strategy (256-px XYZ tiles; one call per tile, a tick's calls go out together).
 * One feature per item (its id is the item's id), with properties `class`, `access`,
 * `stale` and `item`. A loaded tile whose items changed in the cache
 * (`cache.onTilesChanged`: an `invalidate`, an answer that refetched, replaced or deleted
 * them, the view's items turned stale; in the cache's view or not) is filled again by the next animation
 * frame if any of it is in the view of a map that `follow()` follows (with no `follow()`, in
 * what OpenLayers last asked the source to show: the view of the layer drawing it and its
 * render buffer; one beside the view: once the view shows it, read once): features of items it no longer has leave (unless another tile holds them), changed
 * ones are updated; tiles whose items did not change are not touched. When the cache's tier changes (`cache.onAccess`: `setAccess`, or a
 * lower tier the server reported), the source is emptied at once and loads the view again.
 * `source.refresh()` and `source.clear()` work as for any vector source (the adapter forgets
 * what it held). `source.dispose()` lets go of the cache: the source's `onAccess` and
 * `onTilesChanged` listeners are removed, its loads out are aborted and its `follow()`s detached, so nothing of the
 * cache reaches a disposed source. One cache per map (the cache follows one view).
 * A tile covering more than `maxVisibleTiles` data tiles (below zoom 9 with the defaults)
 * is loaded empty: give the layer a `minZoom` (`new VectorLayer({ source, minZoom: 9 })`).
 * Views in EPSG:3857, with no user projection (`useGeographic()`): with one, tiles fail and
 * `follow` feeds nothing, said to `onError`.
 * @example
 * import VectorSource from 'ol/source/Vector.js';
 * import Feature from 'ol/Feature.js';
 * import Point from 'ol/geom/Point.js';
 * import { tile as tileStrategy } from 'ol/loadingstrategy.js';
 * import { createXYZ } from 'ol/tilegrid.js';
 * const source = createSource({ VectorSource, Feature, Point, tileStrategy, createXYZ }, cache);
 * map.addLayer(new VectorLayer({ source }));
 * const detach = follow(map, source);
 */
export function createSource(ol: OpenLayers, cache: TileCache<any>, options?: SourceOptions): any;

/**
 * Feeds `map`'s view to the source's cache once per animation frame while it moves or
 * turns (so tilewarm's prefetch runs; the view the map has, also after `map.setView`) and,
 * when a move ends, removes the features of tiles that left the view (the view in any copy
 * of the world). A view with no centre yet is fed from when it has one. Returns `detach()`;
 * disposing of the source, of its cache or of the map (`map.dispose()`) detaches it too; the
 * map's dispose also empties the source of its tiles unless another followed map shows it, and
 * so does taking the last layer that shows it off its followed maps, hiding it (its own
 * `setVisible(false)` or its group's), a view zoomed out of its range (`minZoom`, `maxZoom`,
 * `minResolution`, `maxResolution`: OpenLayers draws it no more) or giving it another source
 * (`setSource`); shown again, it loads them again. While no visible layer of `map` shows the
 * source within its range, its view is not fed (the cache would fetch the tiles of a view
 * nobody sees them in).
 */
export function follow(
  map: { getView(): any; getSize(): number[] | undefined; getLayerGroup(): any; getAllLayers(): any[]; on(type: string, f: (...a: any[]) => void): unknown; un(type: string, f: (...a: any[]) => void): unknown },
  source: unknown,
): () => void;

/** EPSG:3857 metres of (lon, lat). */
export function toMercator(lon: number, lat: number): [number, number];
/** (lon, lat) of EPSG:3857 metres. */
export function toLonLat(x: number, y: number): [number, number];
