// The demo page's DOM-free helpers, its recorded session, and what it uses of the package,
// under Node.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { formatPrice, formatBytes, itemValue, mercatorCentre, tileBounds, tileOf, tileXY } from '../lib.js';

test('tile math agrees with the known Seattle tile', () => {
  assert.deepEqual(tileOf(-122.3321, 47.6062, 14), [2624, 5721]);
  const b = tileBounds(14, 2624, 5721);
  assert.ok(b.west <= -122.3321 && -122.3321 < b.east && b.south < 47.6062 && 47.6062 <= b.north);
  const [x, y] = tileXY(b.west, b.north, 14);
  assert.ok(Math.abs(x - 2624) < 1e-9 && Math.abs(y - 5721) < 1e-9);
});

test('mercatorCentre is the middle in Web Mercator, not in degrees', () => {
  const [lon, lat] = mercatorCentre({ west: -10, south: 0, east: 10, north: 80 });
  assert.equal(lon, 0);
  assert.ok(lat > 40 + 10, `${lat}`);
  const [, flat] = mercatorCentre({ west: 0, south: -20, east: 1, north: 20 });
  assert.ok(Math.abs(flat) < 1e-12);
});

test('values and sizes are formatted for labels', () => {
  assert.equal(formatPrice(712000), '$712k');
  assert.equal(formatPrice(1_250_000), '$1.25M');
  assert.equal(formatPrice(12_300_000), '$12.3M');
  assert.equal(formatPrice(null), '–');
  assert.equal(itemValue({ data: { estimate: 712000, beds: 3 } }), 712000);
  assert.equal(itemValue({ data: { price: 221900, estimate: 1 } }), 221900);
  assert.equal(itemValue({ data: '{"estimate":5}' }), 5);
  assert.equal(itemValue({ data: 'not json' }), null);
  assert.equal(formatBytes(512), '512 B');
  assert.equal(formatBytes(1536), '1.5 KiB');
});

test('the recorded session is a valid trace in the simulator format', () => {
  const lines = readFileSync(new URL('../session.jsonl', import.meta.url), 'utf8').split('\n').filter(Boolean);
  assert.ok(lines.length > 100);
  let prev = -1;
  for (const [i, line] of lines.entries()) {
    const e = JSON.parse(line);
    for (const k of ['t', 'west', 'south', 'east', 'north', 'zoom']) assert.equal(typeof e[k], 'number', `line ${i + 1}: ${k}`);
    assert.equal(typeof e.session, 'string');
    assert.ok(Number.isInteger(e.t) && e.t >= prev, `line ${i + 1}: t goes back`);
    assert.ok(e.west < e.east && e.south < e.north && e.south >= -90 && e.north <= 90, `line ${i + 1}: bad box`);
    assert.ok(e.zoom >= 13 && e.zoom <= 18, `line ${i + 1}: zoom ${e.zoom} outside the demo's data zooms`);
    prev = e.t;
  }
});

test('the recorded session is what www/tools/make-session.mjs writes', async () => {
  const { execFileSync } = await import('node:child_process');
  const made = execFileSync(process.execPath, [new URL('../tools/make-session.mjs', import.meta.url).pathname], { encoding: 'utf8' });
  assert.equal(made, readFileSync(new URL('../session.jsonl', import.meta.url), 'utf8'));
});

test('the page and its README use only TileCache methods and stats the package declares', () => {
  // js/index.d.ts is the package's TileCache (pkg/ is built from js/); a method the page
  // tests for and the package lacks is dead code, and a README naming it is not true.
  const read = (path) => readFileSync(new URL(path, import.meta.url), 'utf8');
  const dts = read('../../js/index.d.ts');
  const body = dts.slice(dts.indexOf('export class TileCache'));
  const members = new Set([...body.slice(0, body.indexOf('\n}')).matchAll(/^ {2}(?:static |readonly |get )*(\w+)\s*[(<:]/gm)].map((m) => m[1]));
  assert.ok(members.has('tileStates') && members.has('setViewport'), `TileCache members not found in js/index.d.ts: ${[...members]}`);
  const types = read('../../js/gen/types.d.ts');
  const statsBody = types.slice(types.indexOf('export interface TileCacheStats'));
  const stats = new Set([...statsBody.slice(0, statsBody.indexOf('\n}')).matchAll(/^ {2}(\w+):/gm)].map((m) => m[1]));
  assert.ok(stats.has('prefetchTilesUsed'), `TileCacheStats not found in js/gen/types.d.ts: ${[...stats]}`);
  const used = (text, re) => new Set([...text.matchAll(re)].map((m) => m[1]));
  const app = read('../app.js');
  const readme = read('../README.md');
  const methods = new Set([...used(app, /\bcache\??\.(\w+)/g), ...used(readme, /\bcache\.(\w+)\(/g)]);
  assert.deepEqual([...methods].filter((m) => !members.has(m)), [], 'TileCache methods the package does not have');
  const statNames = used(app, /\bs\.(\w+)\b/g);
  assert.deepEqual([...statNames].filter((k) => !stats.has(k)), [], 'stats() fields the package does not have');
});
