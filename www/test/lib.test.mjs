// The demo page's DOM-free helpers and its recorded session, under Node.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { TileTracker, formatPrice, formatBytes, itemValue, mercatorCentre, tileBounds, tileOf, tileXY } from '../lib.js';

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

test('TileTracker: in flight, loaded for the view, prefetched ahead of it, missing', () => {
  const t = new TileTracker(14);
  t.view(['14/1/1', '14/2/1'], new Set(['14/1/1', '14/2/1']));
  assert.equal(t.stateOf('14/1/1'), 'missing');
  assert.equal(t.stateOf('14/9/9'), 'none');
  t.sent(['14/1/1', '14/2/1']);
  t.sent(['14/3/1']);
  assert.equal(t.stateOf('14/1/1'), 'inflight');
  t.arrived(['14/1/1', '14/2/1']);
  t.arrived(['14/3/1']);
  assert.equal(t.stateOf('14/1/1'), 'loaded');
  assert.equal(t.stateOf('14/3/1'), 'prefetched');
  t.view(['14/2/1', '14/3/1'], new Set());
  assert.equal(t.stateOf('14/3/1'), 'loaded', 'a prefetched tile shown becomes loaded');
  t.sent(['14/4/1']);
  t.failed(['14/4/1']);
  assert.equal(t.stateOf('14/4/1'), 'none');
  // A tile asked for twice stays in flight until both answers are in.
  t.sent(['14/5/1']);
  t.sent(['14/5/1']);
  t.arrived(['14/5/1']);
  assert.equal(t.stateOf('14/5/1'), 'inflight');
  t.reset();
  assert.equal(t.stateOf('14/2/1'), 'none');
});

test('TileTracker.expand maps requested tiles onto the data zoom', () => {
  const t = new TileTracker(14);
  assert.deepEqual(t.expand('14/2624/5721'), ['14/2624/5721']);
  assert.deepEqual(t.expand('15/5249/11443'), ['14/2624/5721']);
  assert.deepEqual(t.expand('13/1312/2860'), ['14/2624/5720', '14/2625/5720', '14/2624/5721', '14/2625/5721']);
  assert.equal(t.expand('12/656/1430').length, 16);
  assert.deepEqual(t.expand('bad'), []);
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
