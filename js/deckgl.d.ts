// Types of tilewarm/deckgl (deckgl.js). deck.gl is typed structurally, so the package does not
// depend on it; the class returned has TileLayer's props plus the ones below.
import type { Item, TileCache, Viewport } from './index.js';

/** The props the subclass adds to deck.gl's TileLayer props. */
export interface TilewarmTileLayerProps<Data = unknown> {
  /** Where the tiles come from (required). A tile's data is its items: `Item<Data>[]`. */
  cache: TileCache<Data>;
  /** Feed deck's view to `cache.setViewport` whenever it changes, so tilewarm's prefetch runs
   * (deck.gl prefetches nothing off the screen). Default true. */
  followView?: boolean;
  /** Errors of that `setViewport` call; default `reportError`. */
  onViewError?: (error: unknown) => void;
}

/** The tile data the layer's `renderSubLayers` gets (`props.data`). */
export type TileData<Data = unknown> = Item<Data>[];

/**
 * A subclass of deck.gl's `TileLayer` (pass the class in) whose `getTileData` is
 * `cache.loadTiles` with the tile's abort signal (one call per tile; a tick's calls go out
 * together) and which feeds deck's view to the cache. `maxRequests` defaults to 0: the cache
 * batches the tiles itself. A tile deck shows (`isVisible`) whose items changed
 * in the cache (`cache.onTilesChanged`: an `invalidate`, an answer that refetched, replaced
 * or deleted them, the view's items turned stale) gets them as its data
 * by the next animation frame, and its sublayers are rendered again (one in deck's tile
 * cache off the screen: once deck shows it again, read once); tiles whose items did
 * not change keep theirs. When the cache's tier changes (`cache.onAccess`: `setAccess`, or
 * a lower tier the server reported) or the `cache` prop is another cache, every tile is
 * emptied by the next frame and loaded again. One cache per map (the cache follows one
 * view); when the cache is disposed the layer stops feeding it the view. A tile that
 * covers more than `maxVisibleTiles` data tiles (below zoom 9 with the defaults) loads
 * empty, and deck's `onTileError` hears `ERR_TOO_MANY_TILES` once per zoom the view comes
 * to; other tile errors (a request that gave up) fail the tile and reach `onTileError`.
 * @example
 * import { TileLayer } from '@deck.gl/geo-layers';
 * import { ScatterplotLayer } from '@deck.gl/layers';
 * const TilewarmTileLayer = extendTileLayer(TileLayer);
 * new TilewarmTileLayer({
 *   id: 'homes', cache,
 *   renderSubLayers: (props) => new ScatterplotLayer({ ...props, getPosition: (d) => [d.lon, d.lat] }),
 * });
 */
export function extendTileLayer<T extends new (...args: any[]) => any, Data = unknown>(
  TileLayer: T,
): new (props: NonNullable<ConstructorParameters<T>[0]> & TilewarmTileLayerProps<Data>) => InstanceType<T>;

/** The view of a deck.gl `WebMercatorViewport` as `setViewport` takes it, in the cache's
 * zoom units (deck's zoom is for 512-px tiles). */
export function viewportOf(
  viewport: { getBounds(): number[]; zoom: number },
  cache: { readonly tileSize: 256 | 512 },
): Viewport;
