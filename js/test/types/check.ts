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
// @ts-expect-error not one of the codes
const bad: TilewarmErrorCode = 'ERR_SOMETHING';

export { ts, n, p, s, wrong, codeOf, c, bad };
