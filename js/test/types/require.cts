// Compiled with check.ts: a CommonJS TypeScript module (module nodenext) that requires the
// package gets the same types (node.cjs at run time on Nodes without require(esm)).
import tilewarm = require('tilewarm');

export const tile: tilewarm.TileString = tilewarm.tileForPoint(-122.3321, 47.6062, 14);
export const create: typeof tilewarm.TileCache.create = tilewarm.TileCache.create;
// @ts-expect-error z is a number
tilewarm.tileForPoint(0, 0, '3');
