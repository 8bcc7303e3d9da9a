// Compiled with check.ts (tsconfig.json: strict, lib es2022 + DOM, no esnext): every entry
// point of the package type-checks on its own in a plain project.
import { TileCache } from 'tilewarm';
import { TileCache as InlineTileCache, tileForPoint as inlineTile } from 'tilewarm/inline';
import init, { initSync, tileForPoint } from 'tilewarm/raw';
import worker, { createWorker, EdgeProxy } from 'tilewarm/edge';
import { attach } from 'tilewarm/maplibre';
import { createLayer } from 'tilewarm/leaflet';
import { extendTileLayer, viewportOf } from 'tilewarm/deckgl';
import { createSource, follow, toMercator } from 'tilewarm/openlayers';
import { follow as followChanges, type FeedEvent } from 'tilewarm/live';

export async function entries(cache: TileCache<{ price: number }>, wasm: ArrayBuffer) {
  // tilewarm/raw: the init functions take the .wasm.
  await init({ module_or_path: new URL('https://example.com/tilewarm_bg.wasm') });
  initSync({ module: wasm });
  // @ts-expect-error init needs the .wasm
  await init();
  const t: string = tileForPoint(0, 0, 3);
  const same: typeof TileCache = InlineTileCache;
  const t2: string = inlineTile(0, 0, 3);
  // tilewarm/edge (its glue's EdgeProxy has [Symbol.dispose]).
  const w = createWorker({ tileZoom: 14 });
  const res: Promise<Response> = worker.fetch(new Request('https://x/v1/batch'), { ORIGIN: 'https://o' }, { waitUntil() {} });
  const proxyClass: typeof EdgeProxy = EdgeProxy;
  // The adapters.
  const map = {
    getBounds: () => ({ getWest: () => 0, getSouth: () => 0, getEast: () => 1, getNorth: () => 1 }),
    getZoom: () => 14, getSource: () => undefined, addSource: () => undefined, on: () => undefined, off: () => undefined,
    once: () => undefined,
  };
  const detach: () => void = attach(map, cache, { sourceId: 'homes' });
  const { once: _once, ...noOnce } = map;
  // @ts-expect-error attach calls map.once: a map without it is not a MapLike
  attach(noOnce, cache, { sourceId: 'homes' });
  const layer = createLayer({}, cache, { draw: (ctx, item, x, y) => ctx.fillRect(x, y, item.data.price > 0 ? 2 : 1, 2) });
  class FakeTileLayer { constructor(public props: { id: string; minZoom?: number }) {} }
  const Layer = extendTileLayer(FakeTileLayer);
  const l: FakeTileLayer = new Layer({ id: 'homes', minZoom: 12, cache });
  // @ts-expect-error the cache prop is required
  new Layer({ id: 'homes' });
  const v = viewportOf({ getBounds: () => [0, 0, 1, 1], zoom: 14 }, cache);
  const source = createSource({ VectorSource: class {}, Feature: class {}, Point: class {}, tileStrategy: () => 0, createXYZ: () => 0 }, cache);
  const off: () => void = follow({ getView: () => ({}), getSize: () => [1, 1], getLayerGroup: () => ({}), getAllLayers: () => [], on: () => 0, un: () => 0 }, source);
  const [mx, my]: [number, number] = toMercator(0, 0);
  // tilewarm/live.
  const seen: FeedEvent[] = [];
  const following = followChanges(cache, 'https://x/v1/changes', { onEvent: (e) => seen.push(e), signal: new AbortController().signal });
  const last: string | undefined = following.lastEventId;
  // @ts-expect-error a URL is required
  followChanges(cache);
  return [t, same, t2, w, res, proxyClass, detach, layer, l, v.zoom, off, mx, my, last, following.done, seen];
}
