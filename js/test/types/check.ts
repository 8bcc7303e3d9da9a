// Compiled with `tsc --noEmit` by package.test.mjs: the shipped index.d.ts must accept
// correct calls, reject wrong ones, and give precise result types.
import {
  tileForPoint,
  tilesForBbox,
  neighbourTiles,
  parentTile,
  type TileString,
  type TilewarmError,
  type TilewarmErrorCode,
} from 'tilewarm';

const t: TileString = tileForPoint(-122.3321, 47.6062, 14);
const ts: TileString[] = tilesForBbox(-1, -1, 1, 1, 3);
const n: TileString[] = neighbourTiles(t, 1);
const p: `${number}/${number}/${number}` = parentTile('14/2624/5721', 12);
const s: string = t;

// @ts-expect-error z is a number
tileForPoint(0, 0, '3');
// @ts-expect-error tilesForBbox takes five arguments
tilesForBbox(0, 0, 1, 1);
// @ts-expect-error the tile is a string
neighbourTiles(3, 1);
// @ts-expect-error the result is a string, not a number
const wrong: number = parentTile('1/0/0', 0);

function codeOf(e: unknown): TilewarmErrorCode | undefined {
  return (e as TilewarmError).code;
}
const c: TilewarmErrorCode = 'ERR_TOO_MANY_TILES';
// Every code the package throws is in the type (generated from the Rust).
const thrownByTheCache: TilewarmErrorCode[] = ['ERR_INVALID_ARG_VALUE', 'ERR_DISPOSED'];
// @ts-expect-error not one of the codes
const bad: TilewarmErrorCode = 'ERR_SOMETHING';

export { ts, n, p, s, wrong, codeOf, c, thrownByTheCache, bad };

// The cache.
import {
  TileCache,
  type Item,
  type View,
  type FetchError,
  type FetchErrorCode,
  type RequestKind,
  type TileCacheOptions,
  type TileCacheStats,
  type TileState,
  type Access,
} from 'tilewarm';

interface Home { price: number }
async function cacheUse() {
  const cache = await TileCache.create<Home>({
    endpoint: 'https://api.example.com/v1/batch',
    tileZoom: 14,
    minZoom: 12,
    ttl: { default: 300, byClass: { active: 300, off_market: 14400 } },
    prefetch: { ring: 1, lookaheadMs: 1500, maxTilesPerRound: 32 },
    batch: { maxTiles: 16, maxIds: 200, maxInFlight: 4, timeoutMs: 3000, retries: 2 },
    access: 'public',
    headers: { Authorization: 'Bearer x' },
    fetch: globalThis.fetch,
    now: () => Date.now(),
  });
  const view: View<Home> = cache.setViewport({ west: -122.4, south: 47.5, east: -122.3, north: 47.7, zoom: 14 });
  const price: number = view.items[0].data.price;
  const tiles: TileString[] = view.missingTiles;
  await cache.whenComplete();
  const off: () => void = cache.onUpdate((items: Item<Home>[]) => items.length);
  const offAccess: () => void = cache.onAccess((access: Access) => access === cache.access);
  const offDispose: () => void = cache.onDispose(() => undefined);
  cache.onError((e: FetchError) => [e.code, e.status, e.kind, e.willRetry]);
  cache.onError((e: FetchError) => {
    const code: FetchErrorCode = e.code;
    const kind: 'foreground' | 'prefetch' = e.kind;
    // @ts-expect-error a thrown-argument code is not a request error's
    const wrongCode: FetchErrorCode = 'ERR_OUT_OF_RANGE';
    return [code, kind, wrongCode];
  });
  const one: Item<Home> | undefined = await cache.get('a');
  const many = await cache.getMany(['a', 'b']);
  const n: number = cache.invalidate({ ids: ['a'], tiles: ['14/2624/5721'], all: false });
  const states: TileState[] = cache.tileStates(tiles);
  const first: 'loaded' | 'prefetched' | 'inFlight' | 'missing' = states[0];
  // @ts-expect-error one tile is not a list
  cache.tileStates('14/2624/5721');
  cache.setAccess('registered');
  const st: TileCacheStats = cache.stats();
  const open: boolean = st.breakerOpen;
  const hits: number = st.hits;
  // @ts-expect-error not a counter
  st.hitz;
  cache.dispose();
  // @ts-expect-error not a tier
  cache.setAccess('admin');
  // @ts-expect-error endpoint is required
  await TileCache.create({ tileZoom: 14 });
  const options: TileCacheOptions = {
    endpoint: 'https://api.example.com/v1/batch',
    ttl: { staleWhileRevalidate: 60 },
    prefetch: { viewRing: 0.5, budgetPerVisible: 4 },
    batch: { coalesceLevels: 0 },
  };
  // @ts-expect-error not a batch option
  const typo: TileCacheOptions = { endpoint: 'x', batch: { maxTile: 1 } };
  const tier: Access = 'verified';
  const kinds: RequestKind[] = ['foreground', 'prefetch'];
  // @ts-expect-error the constructor is private: use create
  new TileCache();
  // @ts-expect-error the viewport needs a zoom
  cache.setViewport({ west: 0, south: 0, east: 1, north: 1 });
  return [price, tiles, off, one, many, n, open, hits, options, typo, tier, kinds];
}
export { cacheUse };
