// `scripts/bench.sh maplibre`: tilewarm/maplibre keeping a GeoJSON source in sync during a
// pan of one data tile per frame with ~5,000 items in view, by diffs (`updateData`) against `setData`, in the same
// headless Chromium (SwiftShader WebGL, no GPU) and the same run. Per mode: MapLibre source
// updates finished per second of pan, and the time per frame spent in tilewarm
// (`setViewport`) plus the adapter's source update call (building the diff or the whole
// collection and handing it to MapLibre). Modes alternate, ROUNDS rounds, medians.
// Needs the pages built (scripts/test-browser.sh does it; so does `scripts/bench.sh maplibre`).
//
// Usage: node maplibre-bench.mjs [--md FILE] [--rounds N] [--frames N]
import { writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { chromium } from 'playwright-core';
import { startBackend, tileCorner, SEATTLE } from '../support/backend.mjs';
import { browserPath, CHROMIUM_ARGS, startPageServer, until } from './support.mjs';

const arg = (name, def) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : def;
};
const ROUNDS = Number(arg('rounds', 3));
const FRAMES = Number(arg('frames', 120));
const md = arg('md');
const PER_TILE = 420; // items per z14 data tile: about 5,000 in the 1000 x 700 view
const [, SX, SY] = SEATTLE;
const TILE_LON = 360 / 2 ** 14; // one z14 data tile
const SPAN = 8; // tiles east before turning back

const median = (xs) => { const s = [...xs].sort((a, b) => a - b); return s.length ? s[Math.floor(s.length / 2)] : NaN; };
const p95 = (xs) => { const s = [...xs].sort((a, b) => a - b); return s[Math.min(s.length - 1, Math.floor(s.length * 0.95))]; };

const load = loadavg()[0];
const backend = await startBackend({ perTile: PER_TILE });
const pages = await startPageServer(backend);
const browser = await chromium.launch({ executablePath: browserPath, args: CHROMIUM_ARGS });
const results = { diff: [], setdata: [] };
try {
  const [lon, lat] = tileCorner(14, SX + 0.5, SY + 0.5);
  for (let round = 0; round < ROUNDS; round++) {
    for (const mode of round % 2 ? ['setdata', 'diff'] : ['diff', 'setdata']) {
      const page = await browser.newPage({ viewport: { width: 1000, height: 700 } });
      const errors = [];
      page.on('pageerror', (e) => errors.push(e.message));
      await page.goto(`${pages.url}bench/index.html?mode=${mode}&lon=${lon}&lat=${lat}&zoom=13`);
      await until(page, () => window.__tw !== undefined, null, 'the page', 60_000);
      await page.evaluate((d) => window.__tw.prefill(d), SPAN * TILE_LON);
      const r = await page.evaluate(([n, d, span]) => window.__tw.pan(n, d, span), [FRAMES, TILE_LON, SPAN]);
      await page.close();
      if (errors.length) throw new Error(`${mode}: ${errors.join('; ')}`);
      const ms = r.frames.map(([a, b]) => a + b);
      const items = r.frames.map(([, , n]) => n);
      const called = r.frames.filter(([, , , c]) => c > 0);
      results[mode].push({
        frameMs: median(ms), frameP95: p95(ms), items: median(items),
        viewportMs: median(r.frames.map(([a]) => a)),
        updateMs: median(called.map(([, b]) => b)),
        callsPerS: called.length / r.seconds, updatesPerS: r.updates / r.seconds,
        fps: FRAMES / r.seconds, frames: r.frames.length, framesWithCall: called.length,
      });
      console.error(`maplibre-bench: round ${round + 1} ${mode}: ${JSON.stringify(results[mode].at(-1))}`);
    }
  }
} finally {
  await browser.close();
  pages.close();
  backend.close();
}

const m = (mode, k) => median(results[mode].map((r) => r[k]));
const f1 = (x) => x.toFixed(1), f2 = (x) => x.toFixed(2);
const rows = [
  ['items in view (median)', (x) => String(Math.round(x)), 'items'],
  ['frames of the pan that changed the source', (x) => String(Math.round(x)), 'framesWithCall'],
  ['source updates sent per second of pan', f1, 'callsPerS'],
  ['source updates MapLibre finished per second of pan (its worker coalesces)', f1, 'updatesPerS'],
  ['map frames per second during the pan', f1, 'fps'],
  ['per frame: tilewarm `setViewport`, median (ms)', f2, 'viewportMs'],
  ['per frame that changed: adapter + MapLibre update call, median (ms)', f2, 'updateMs'],
  ['per frame: both, median (ms)', f2, 'frameMs'],
  ['per frame: both, 95th percentile (ms)', f2, 'frameP95'],
];
const lines = [
  '| pan with ~5,000 items in view | diffs (`updateData`) | `setData` | diffs / setData |',
  '| --- | ---: | ---: | ---: |',
  ...rows.map(([label, fmt, k]) => `| ${label} | ${fmt(m('diff', k))} | ${fmt(m('setdata', k))} | ${f2(m('diff', k) / m('setdata', k))}x |`),
  '',
  `Headless Chromium (WebGL on SwiftShader, no GPU), maplibre-gl as pinned in`,
  `js/test/browser/package.json, a 1000 x 700 page at MapLibre zoom 13 (about 4 x 3 z14 data`,
  `tiles in view) panning one data tile per animation frame, ${SPAN} east then back, for ${FRAMES}`,
  'frames, so every frame changes the tiles in view (a quarter of the items leave, as many',
  'come); every tile of the path cached first (no fetching during the pan); medians of',
  `${ROUNDS} rounds, modes alternating. "Per frame" is the`,
  'synchronous main-thread time of one `setViewport` plus the adapter building the diff (or',
  'the whole collection) and calling `updateData` (or `setData`); frames where nothing in',
  'view changed send nothing in either mode. MapLibre then applies the update in its worker',
  '(merging updates that queue up), and "updates finished" counts its `sourcedata` content',
  'events during the pan.',
  `Load average at the start: ${load.toFixed(1)} (a shared machine: read the ratios).`,
  'Reproduce: `scripts/bench.sh maplibre` (js/test/browser/maplibre-bench.mjs).',
];
const text = lines.join('\n') + '\n';
if (md) writeFileSync(md, text);
process.stdout.write(text);
