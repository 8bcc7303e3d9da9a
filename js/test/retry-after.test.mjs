// retryAfterMs (js/retry-after.js), the one Retry-After reading the page's TileCache,
// tilewarm/live and the edge worker share. Its callers' caps and defaults are tested with
// them (cache.test.mjs, hostile.test.mjs, live.test.mjs, edge/test).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { retryAfterMs } from '../retry-after.js';

const NOW = Date.parse('Fri, 04 Dec 2026 22:00:00 GMT');

test('delay seconds are read as milliseconds, with surrounding whitespace', () => {
  assert.equal(retryAfterMs('0', NOW), 0);
  assert.equal(retryAfterMs('120', NOW), 120_000);
  assert.equal(retryAfterMs('  7 ', NOW), 7000);
});

test('an HTTP date is measured from now; one in the past waits 0', () => {
  assert.equal(retryAfterMs('Fri, 04 Dec 2026 22:00:30 GMT', NOW), 30_000);
  assert.equal(retryAfterMs('Fri, 04 Dec 2026 21:00:00 GMT', NOW), 0);
  // The obsolete RFC 850 form, which RFC 9110 still asks recipients to read.
  assert.equal(retryAfterMs('Friday, 04-Dec-26 22:01:00 GMT', NOW), 60_000);
});

test('absent, empty or unreadable values are null, not a wait', () => {
  for (const v of [null, undefined, '', '   ', 'soon', '-5', '1.5', '12 s']) {
    assert.equal(retryAfterMs(v, NOW), null, JSON.stringify(v));
  }
});

test('seconds too many to count stay a finite number for the caller to cap', () => {
  const ms = retryAfterMs('9'.repeat(400), NOW);
  assert.equal(ms, Number.MAX_SAFE_INTEGER);
});
