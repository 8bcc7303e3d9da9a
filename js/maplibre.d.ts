// Types of tilewarm/maplibre (maplibre.js). The map and source are typed structurally, so
// the package does not depend on maplibre-gl's types; a maplibregl.Map fits.
import type { Item, TileCache, View } from './index.js';

/** What `attach` uses of a `maplibregl.Map`. */
export interface MapLike {
  getBounds(): { getWest(): number; getSouth(): number; getEast(): number; getNorth(): number };
  getZoom(): number;
  getSource(id: string): unknown;
  addSource(id: string, source: object): unknown;
  on(type: string, listener: (...args: any[]) => void): unknown;
  once(type: string, listener: (...args: any[]) => void): unknown;
  off(type: string, listener: (...args: any[]) => void): unknown;
}

export interface AttachOptions<Data = unknown> {
  /** The GeoJSON source to keep in sync; added (with `promoteId`) when the style has none. */
  sourceId: string;
  /** The feature property that holds the item's id, and the source's `promoteId`. Default `'id'`. */
  promoteId?: string;
  /** Extra feature properties per item (besides the id, `class`, `access` and `stale`); one
   * named as `promoteId` is not taken: that property holds the item's id, by which the diffs
   * find features. */
  properties?: (item: Item<Data>) => Record<string, unknown>;
  /** Called with every view the source was brought to (after `setViewport` and on updates):
   * `complete`, `tooWide`, `missingTiles`. */
  onView?: (view: View<Data>) => void;
  /** Errors of the map calls (`setData`, `updateData`); default `reportError`. Fetch errors
   * go to the cache's `onError` listeners. */
  onError?: (error: unknown) => void;
  /** Update the source by diffs (`updateData`) when it can take them; default true. */
  useUpdateData?: boolean;
}

/**
 * Keeps GeoJSON source `options.sourceId` of `map` in sync with `cache`: reads the map's
 * bounds and zoom itself (512-px tiles, wrapped worlds, pitch), calls `setViewport` at most
 * once per animation frame, and updates the source by diffs (`updateData`), falling back to
 * `setData`. Features carry the item's id, `class`, `access` and `stale`. A new style
 * (`map.setStyle`) gets the source again with all of the view's items (added back by its
 * `style.load` when the style has none).
 *
 * One cache per map: a cache follows one view, so a second map attached to it would show
 * the first one's items. Attaching a cache that another map is attached to throws; the same
 * map may be attached several times (a source each).
 * @returns `detach()`: stops following the map (the source keeps its data); done by itself
 * when the map is removed (`map.remove()`) or the cache disposed (`cache.dispose()`)
 * @throws {TypeError} `ERR_INVALID_ARG_VALUE` when another map is attached to `cache` (not
 * detached yet); `ERR_INVALID_ARG_TYPE`/`ERR_INVALID_ARG_VALUE` for bad arguments or options.
 * An attach that throws (a map method that threw too) leaves no listener behind.
 * @example
 * const cache = await TileCache.create({ endpoint, tileSize: 512 });
 * const detach = attach(map, cache, { sourceId: 'homes' });
 * map.addLayer({ id: 'homes', type: 'circle', source: 'homes' });
 */
export function attach<Data = unknown>(map: MapLike, cache: TileCache<Data>, options: AttachOptions<Data>): () => void;

/** A map's bounds as one box in -180..180 (`west > east` across the antimeridian). */
export function boxOf(bounds: { getWest(): number; getSouth(): number; getEast(): number; getNorth(): number }): {
  west: number; south: number; east: number; north: number;
};
