// The tile functions, imported through the package's own exports ("node" condition).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { tileForPoint, tilesForBbox, neighbourTiles, parentTile } from 'tilewarm';

test('tileForPoint reference values', () => {
  assert.equal(tileForPoint(-122.3321, 47.6062, 14), '14/2624/5721');
  assert.equal(tileForPoint(0, 0, 0), '0/0/0');
  // 180 and -180 are the same meridian; longitudes wrap.
  assert.equal(tileForPoint(180, 0, 3), tileForPoint(-180, 0, 3));
  assert.equal(tileForPoint(180, 0, 3), '3/0/4');
  assert.equal(tileForPoint(-122.3321 + 360, 47.6062, 14), '14/2624/5721');
  // Latitudes beyond the Mercator limit clamp to the first / last row.
  assert.equal(tileForPoint(0, 90, 5), '5/16/0');
  assert.equal(tileForPoint(0, -90, 5), '5/16/31');
});

test('tilesForBbox covers, splits at the antimeridian, and is bounded', () => {
  const seattle = tilesForBbox(-122.36, 47.59, -122.3, 47.62, 14);
  assert.ok(seattle.includes('14/2624/5721'));
  const split = tilesForBbox(170, -10, -170, 10, 4);
  assert.deepEqual(new Set(split.map((t) => t.split('/')[1])), new Set(['15', '0']));
  assert.deepEqual(split, ['4/15/7', '4/0/7', '4/15/8', '4/0/8']);
  assert.equal(tilesForBbox(-180, -85, 180, 85, 6).length, 4096);
  assert.throws(() => tilesForBbox(-180, -85, 180, 85, 7), {
    name: 'RangeError',
    code: 'ERR_TOO_MANY_TILES',
    message: /covers 16384 tiles at z 7, more than the maximum of 4096/,
  });
});

test('neighbourTiles counts', () => {
  assert.equal(neighbourTiles('14/2624/5721', 1).length, 8);
  assert.equal(neighbourTiles('14/2624/5721', 2).length, 24);
  assert.equal(neighbourTiles('14/2624/5721', 0).length, 0);
  // Top row: the row above the pole is left out.
  assert.equal(neighbourTiles('3/4/0', 1).length, 5);
  // Column 0's western neighbours are in the last column.
  assert.ok(neighbourTiles('3/0/4', 1).includes('3/7/4'));
  assert.ok(!neighbourTiles('14/2624/5721', 1).includes('14/2624/5721'));
});

test('tileForPoint: the numeric fast path agrees with the checked call', async () => {
  const raw = await import('tilewarm/raw');
  const name = (id) => `${Math.floor(id / 2 ** 48)}/${Math.floor(id / 2 ** 24) % 2 ** 24}/${id % 2 ** 24}`;
  let seed = 7;
  const rnd = () => ((seed = (seed * 48271) % 2147483647) / 2147483647);
  for (let i = 0; i < 2000; i++) {
    const lon = (rnd() - 0.5) * 720, lat = (rnd() - 0.5) * 180, z = Math.floor(rnd() * 25);
    assert.equal(tileForPoint(lon, lat, z), name(raw.tileIdForPoint(lon, lat, z)), `${lon} ${lat} ${z}`);
  }
  // Tile edges at zoom 24 and the poles.
  for (const [lon, lat, z] of [[0, 0, 24], [-180, 85.05112877980659, 24], [180, -85.0511287798066, 24], [0, 90, 24], [0, -90, 0]]) {
    assert.equal(tileForPoint(lon, lat, z), name(raw.tileIdForPoint(lon, lat, z)));
  }
  // Points on and next to tile edges, where JavaScript's sine and logarithm and the core's
  // can round to different tiles: tileForPoint names the core's tile (it leaves a point
  // within 1e-5 of a tile of an edge to the wasm).
  const lonOf = (x, n) => (x / n) * 360 - 180;
  const latOf = (y, n) => (Math.atan(Math.sinh(Math.PI * (1 - (2 * y) / n))) * 180) / Math.PI;
  const ulp = (v) => Math.max(Number.MIN_VALUE, Math.abs(v) * Number.EPSILON);
  for (let i = 0; i < 20_000; i++) {
    const z = 10 + Math.floor(rnd() * 15), n = 2 ** z;
    const tx = Math.floor(rnd() * n), ty = 1 + Math.floor(rnd() * (n - 2));
    const step = [0, 1, 2, 3, 1e3, 1e6][i % 6] * (rnd() < 0.5 ? -1 : 1);
    const lon = lonOf(tx + rnd(), n), lat = latOf(ty, n) + step * ulp(latOf(ty, n));
    assert.equal(tileForPoint(lon, lat, z), name(raw.tileIdForPoint(lon, lat, z)), `${lon} ${lat} ${z}`);
    const lon2 = lonOf(tx, n) + step * ulp(lonOf(tx, n)), lat2 = latOf(ty + rnd(), n);
    assert.equal(tileForPoint(lon2, lat2, z), name(raw.tileIdForPoint(lon2, lat2, z)), `${lon2} ${lat2} ${z}`);
  }
});

test('parentTile', () => {
  assert.equal(parentTile('14/2624/5721', 13), '13/1312/2860');
  assert.equal(parentTile('14/2624/5721', 12), '12/656/1430');
  assert.equal(parentTile('14/2624/5721', 14), '14/2624/5721');
  assert.equal(parentTile('14/2624/5721', 0), '0/0/0');
});

test('errors name the argument, the value and what is allowed', () => {
  const cases = [
    [() => tileForPoint(0, 0, 31), 'RangeError', 'ERR_OUT_OF_RANGE', 'z must be an integer in 0..=24, got 31'],
    [() => tileForPoint(0, 0, 2.5), 'RangeError', 'ERR_OUT_OF_RANGE', 'z must be an integer in 0..=24, got 2.5'],
    [() => tileForPoint(0, 0, -1), 'RangeError', 'ERR_OUT_OF_RANGE', 'z must be an integer in 0..=24, got -1'],
    [() => tileForPoint(0, 91, 3), 'RangeError', 'ERR_OUT_OF_RANGE', 'lat must be a latitude in -90..=90, got 91'],
    [() => tileForPoint(NaN, 0, 3), 'RangeError', 'ERR_OUT_OF_RANGE', 'lon must be a finite number (a longitude; any value wraps), got NaN'],
    [() => tileForPoint('1', 0, 3), 'TypeError', 'ERR_INVALID_ARG_TYPE', 'lon must be a number, got "1"'],
    [() => tileForPoint(0, 0), 'TypeError', 'ERR_INVALID_ARG_TYPE', 'z must be a number, got undefined'],
    [() => tileForPoint(0, null, 3), 'TypeError', 'ERR_INVALID_ARG_TYPE', 'lat must be a number, got null'],
    [() => tileForPoint(0, '1', 3), 'TypeError', 'ERR_INVALID_ARG_TYPE', 'lat must be a number, got "1"'],
    [() => tileForPoint(0, 1, '3'), 'TypeError', 'ERR_INVALID_ARG_TYPE', 'z must be a number, got "3"'],
    [() => tileForPoint(0, 0, 3n), 'TypeError', 'ERR_INVALID_ARG_TYPE', 'z must be a number, got a bigint'],
    [() => tilesForBbox(0, 10, 1, -10, 3), 'RangeError', 'ERR_OUT_OF_RANGE', 'south must not be greater than north, got south 10 and north -10'],
    [() => tilesForBbox(0, 0, Infinity, 1, 3), 'RangeError', 'ERR_OUT_OF_RANGE', 'east must be a finite number (a longitude; any value wraps), got Infinity'],
    [() => neighbourTiles('14/2624/5721', 1000), 'RangeError', 'ERR_OUT_OF_RANGE', 'ring must be an integer in 0..=31, got 1000'],
    [() => neighbourTiles(42, 1), 'TypeError', 'ERR_INVALID_ARG_TYPE', 'tile must be a tile string "z/x/y", got 42'],
    [() => neighbourTiles({}, 1), 'TypeError', 'ERR_INVALID_ARG_TYPE', 'tile must be a tile string "z/x/y", got an object'],
    [() => neighbourTiles('1/2', 1), 'TypeError', 'ERR_INVALID_TILE', `tile: invalid tile "1/2": expected z/x/y, three integers separated by '/'`],
    [() => parentTile('3/8/0', 1), 'RangeError', 'ERR_INVALID_TILE', 'tile: tile 3/8/0 does not exist: x and y must be below 2^3 = 8'],
    [() => parentTile('31/0/0', 1), 'RangeError', 'ERR_INVALID_TILE', 'tile: zoom must be an integer in 0..=24, got 31'],
    [() => parentTile('14/2624/5721', 15), 'RangeError', 'ERR_OUT_OF_RANGE', 'z must be an integer in 0..=14 (at most the zoom of tile 14/2624/5721), got 15'],
  ];
  for (const [call, name, code, message] of cases) {
    assert.throws(call, (e) => {
      assert.ok(e instanceof Error, 'an Error');
      assert.equal(e.name, name, message);
      assert.equal(e.code, code, message);
      assert.equal(e.message, message);
      return true;
    });
  }
});

test('no input panics the instance', () => {
  const odd = [
    NaN, Infinity, -Infinity, -0, 1e308, -1e308, 2 ** 32, 2 ** 53 + 2, Number.MIN_VALUE,
    '', 'x', '14/2624/5721/1', '99999999999/1/1', '9'.repeat(100_000), '\u0000', '🗺',
    undefined, null, true, 1n, Symbol('s'), {}, [], () => 1, new Date(0),
  ];
  let thrown = 0;
  for (const a of odd) {
    for (const b of odd) {
      for (const call of [
        () => tileForPoint(a, b, 3),
        () => tileForPoint(0, 0, a),
        () => tilesForBbox(a, -1, 1, b, 3),
        () => tilesForBbox(0, 0, 1, 1, a),
        () => neighbourTiles(a, 1),
        () => neighbourTiles('3/3/3', b),
        () => parentTile(a, b),
      ]) {
        try {
          call();
        } catch (e) {
          // A wasm trap would be a WebAssembly.RuntimeError ("unreachable").
          assert.ok(e instanceof TypeError || e instanceof RangeError, `${e?.name}: ${e?.message}`);
          assert.match(e.code, /^ERR_/);
          thrown++;
        }
      }
    }
  }
  assert.ok(thrown > 1000);
  // The instance still works afterwards.
  assert.equal(tileForPoint(-122.3321, 47.6062, 14), '14/2624/5721');
  assert.equal(neighbourTiles('14/2624/5721', 1).length, 8);
});
