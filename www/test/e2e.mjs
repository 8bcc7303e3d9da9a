// End-to-end test of the demo page in headless Chromium (Debian's chromium, driven by
// playwright-core): tilewarm-server serves the assembled page (--www) and the batch
// endpoint; the test loads the page, waits for homes, lets prefetch settle, pans exactly one
// data tile and checks from stats() that no foreground request was needed (and that with
// prefetch off the same pan needs one), checks that the panel's statistics are not cut,
// keyboard panning (and that the prefetched tiles it brings into view are counted), value
// labels and the replay button, saves screenshots under target/, and fails on any console
// error or page error.
//
//   scripts/demo-test.sh          (what `make demo-test` runs: builds, then this)
//
// Environment:
//   TILEWARM_SERVER   the tilewarm-server binary (default target/debug/tilewarm-server)
//   TILEWARM_WWW      the assembled page (default target/www, see scripts/demo-build.sh)
//   TILEWARM_E2E_URL  use a server that is already running at this URL instead
//   CHROMIUM          the browser (default /usr/bin/chromium)
//   SCREENSHOT_DIR    where screenshots go (default target/)
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const serverBin = resolve(root, process.env.TILEWARM_SERVER ?? 'target/debug/tilewarm-server');
const www = resolve(root, process.env.TILEWARM_WWW ?? 'target/www');
const shots = resolve(root, process.env.SCREENSHOT_DIR ?? 'target');
const browserPath = process.env.CHROMIUM ?? '/usr/bin/chromium';
mkdirSync(shots, { recursive: true });

// Headless Chromium without a GPU: WebGL (which MapLibre needs) through ANGLE on SwiftShader.
const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic',
  '--use-gl=angle', '--use-angle=swiftshader', '--enable-unsafe-swiftshader',
];

function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.on('error', fail);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

async function waitForHttp(url, child, ms = 60_000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (child && child.exitCode !== null) throw new Error(`tilewarm-server exited with ${child.exitCode}`);
    try {
      const r = await fetch(url);
      if (r.ok) return;
    } catch { /* not up yet */ }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${url} did not answer within ${ms} ms`);
}

/** Lets prefetch settle: nothing in flight for 700 ms. */
async function waitIdle(page) {
  await page.evaluate(() => { window.tilewarmDemo.idleSince = undefined; });
  await page.waitForFunction(() => {
    const d = window.tilewarmDemo;
    const idle = d.cache.stats().inFlight === 0;
    d.idleSince = idle ? (d.idleSince ?? performance.now()) : undefined;
    return idle && performance.now() - d.idleSince > 700;
  }, null, { timeout: 30_000, polling: 100 });
}

describe('demo page in headless Chromium', { timeout: 180_000 }, () => {
  let server, serverLog = '', context, page, userDir, baseUrl;
  const problems = []; // console errors and page errors
  const wasmFetches = []; // requests for the package's .wasm (index.html preloads it)

  before(async () => {
    if (process.env.TILEWARM_E2E_URL) {
      baseUrl = process.env.TILEWARM_E2E_URL;
    } else {
      const port = await freePort();
      baseUrl = `http://127.0.0.1:${port}/`;
      // A throwaway secret and --dev-tokens, as `make demo`: the tier control signs in.
      const secret = randomBytes(32).toString('hex');
      server = spawn(serverBin, ['--listen', `127.0.0.1:${port}`, '--www', www, '--origin-latency-ms', '20',
        '--log-level', 'warn', '--dev-tokens'],
      { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, TILEWARM_JWT_SECRET: secret } });
      server.stdout.on('data', (d) => (serverLog += d));
      server.stderr.on('data', (d) => (serverLog += d));
      server.on('error', (e) => (serverLog += `spawn failed: ${e.message}\n`));
      await waitForHttp(baseUrl, server);
    }
    userDir = mkdtempSync(join(tmpdir(), 'tilewarm-chromium-'));
    context = await chromium.launchPersistentContext(userDir, {
      executablePath: browserPath, args: CHROMIUM_ARGS, headless: true,
      viewport: { width: 1280, height: 800 },
    });
    page = context.pages()[0] ?? (await context.newPage());
    page.on('console', (m) => {
      if (m.type() === 'error') problems.push(`console.error: ${m.text()} (${m.location().url}:${m.location().lineNumber})`);
    });
    page.on('pageerror', (e) => problems.push(`page error: ${e.stack ?? e.message}`));
    page.on('request', (r) => { if (r.url().endsWith('/tilewarm_bg.wasm')) wasmFetches.push(r.url()); });
  });

  after(async () => {
    await context?.close();
    if (userDir) rmSync(userDir, { recursive: true, force: true });
    if (server && server.exitCode === null) {
      server.kill('SIGTERM');
      await new Promise((r) => server.once('exit', r));
    }
    if (problems.length || process.exitCode) process.stderr.write(serverLog.slice(-4000));
  });

  it('loads the page and shows homes from the server', async () => {
    await page.goto(baseUrl);
    await page.waitForFunction(() => window.tilewarmDemo?.cache, null, { timeout: 30_000 });
    await page.evaluate(() => window.tilewarmDemo.ready);
    await page.waitForFunction(() => window.tilewarmDemo.items.length > 0, null, { timeout: 30_000 });
    const { items, webgl } = await page.evaluate(() => ({
      items: window.tilewarmDemo.items.length,
      webgl: !!window.tilewarmDemo.map.painter?.context?.gl,
    }));
    assert.ok(items > 50, `only ${items} items in view`);
    assert.ok(webgl, 'MapLibre has no WebGL context');
    // The preload in index.html is the one download: the loader's fetch() reuses it.
    if (!process.env.TILEWARM_E2E_URL) assert.deepEqual(wasmFetches, [`${baseUrl}pkg/tilewarm_bg.wasm`]);
  });

  it('shows every statistic whole, its name and its value, at 1280x800 and at 1024x768', async () => {
    // The panel is a fixed width, so the cells are as narrow at both sizes; a name that
    // does not fit wraps rather than ending in "…" ("prefetch used/wasted" did).
    for (const size of [{ width: 1024, height: 768 }, { width: 1280, height: 800 }]) {
      await page.setViewportSize(size);
      const cut = await page.evaluate(() => [...document.querySelectorAll('#stats .k, #stats .v')]
        .filter((el) => el.scrollWidth > el.clientWidth || el.scrollHeight > el.clientHeight)
        .map((el) => `${el.textContent} (${el.scrollWidth}x${el.scrollHeight} in ${el.clientWidth}x${el.clientHeight})`));
      assert.deepEqual(cut, [], `cut at ${size.width}x${size.height}`);
    }
  });

  it('pans one data tile after prefetch without a foreground request', async () => {
    await waitIdle(page);
    await page.waitForTimeout(300); // let the overlay catch up for the screenshot
    await page.screenshot({ path: join(shots, 'demo-screenshot-before-pan.png') });
    const before = await page.evaluate(() => {
      const d = window.tilewarmDemo;
      return { s: d.cache.stats(), fg: d.foregroundRequests(), px: d.dataTilePx(), states: d.tileStates() };
    });
    assert.ok(before.s.prefetchRequests > 0, `no prefetch happened: ${JSON.stringify(before.s)}`);
    const after = await page.evaluate(async (px) => {
      const d = window.tilewarmDemo;
      const west0 = d.map.getBounds().getWest();
      d.map.panBy([px, 0], { animate: false });
      // The page hands the viewport to the cache on the next animation frame.
      await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
      const view = d.lastView();
      const s = d.cache.stats();
      return {
        fg: d.foregroundRequests(), s, complete: view.complete, missing: [...view.missing],
        movedDeg: d.map.getBounds().getWest() - west0, items: d.items.length,
      };
    }, before.px);
    const tileDeg = 360 / 2 ** 14;
    assert.ok(Math.abs(after.movedDeg - tileDeg) < tileDeg * 0.01, `panned ${after.movedDeg}° instead of one tile (${tileDeg}°)`);
    assert.deepEqual(after.missing, [], 'tiles missing right after the pan');
    assert.equal(after.complete, true, 'the view was not complete right after the pan');
    assert.equal(after.fg, before.fg, `foreground requests went from ${before.fg} to ${after.fg}`);
    assert.ok(after.s.prefetchTilesUsed > before.s.prefetchTilesUsed || after.s.hits > before.s.hits,
      'the pan was not served from the cache');
    assert.ok(after.items > 50);
    // And it stays that way once the planner has had a moment.
    await page.waitForTimeout(500);
    assert.equal(await page.evaluate(() => window.tilewarmDemo.foregroundRequests()), before.fg);
    await page.waitForTimeout(300);
    await page.screenshot({ path: join(shots, 'demo-screenshot.png') });
  });

  it('needs a foreground request for a pan with prefetch off (ring 0, no look-ahead, no views around)', async () => {
    const r = await page.evaluate(async () => {
      const d = window.tilewarmDemo;
      await d.setPrefetch({ ring: 0, lookahead: false, views: false });
      await d.cache.whenComplete();
      const settle = () => new Promise((ok) => {
        const poll = () => (d.cache.stats().inFlight === 0 ? ok() : setTimeout(poll, 50));
        poll();
      });
      await settle();
      const fg0 = d.foregroundRequests();
      // Eight data tiles: past the coarse tiles (a block of up to 8 x 8 data tiles) the
      // view's requests may have asked for instead of its data tiles
      // (batch.coalesceMinShare).
      // Whether the view the pan gave the cache was complete, read from the adapter's
      // own setViewport call (two frames later an answer may have landed already).
      let complete;
      d.cache.setViewport = function (v) {
        const out = Object.getPrototypeOf(this).setViewport.call(this, v);
        complete ??= out.complete;
        return out;
      };
      d.map.panBy([8 * d.dataTilePx(), 0], { animate: false });
      while (complete === undefined) await new Promise((ok) => requestAnimationFrame(ok));
      delete d.cache.setViewport;
      await d.cache.whenComplete();
      const fg1 = d.foregroundRequests();
      await d.setPrefetch({ ring: 1, lookahead: false, views: true });
      await d.cache.whenComplete();
      return { fg0, fg1, complete };
    });
    assert.equal(r.complete, false, 'with prefetch off the new columns cannot have been cached');
    assert.ok(r.fg1 > r.fg0, `foreground requests ${r.fg0} -> ${r.fg1}`);
    assert.equal(await page.locator('#c-ring').inputValue(), '1');
  });

  it('pans with the arrow keys when the map has focus', async () => {
    const lng0 = await page.evaluate(() => window.tilewarmDemo.map.getCenter().lng);
    await page.locator('#map canvas').click({ position: { x: 400, y: 400 } });
    await page.keyboard.press('ArrowRight');
    await page.keyboard.press('ArrowRight');
    await page.waitForFunction((l) => window.tilewarmDemo.map.getCenter().lng > l + 1e-6 && !window.tilewarmDemo.map.isMoving(),
      lng0, { timeout: 5_000 });
  });

  it('counts the prefetched tiles arrow-key pans bring into view on the panel', async () => {
    // A short pan shows tiles the view's own request brought (it asks for a coarse tile
    // around the view): "loaded", not prefetched, so "prefetch used" stays put. Pan on with
    // the keys until a tile that was prefetched is in view: then it counts, on the panel too.
    await waitIdle(page);
    const before = await page.evaluate(() => {
      const d = window.tilewarmDemo;
      const around = d.tilesAround();
      const states = d.cache.tileStates(around);
      return { prefetched: around.filter((t, i) => states[i] === 'prefetched'), used: d.cache.stats().prefetchTilesUsed };
    });
    assert.ok(before.prefetched.length > 0, 'nothing prefetched around the view');
    let reached = false;
    for (let i = 0; i < 30 && !reached; i++) {
      await page.keyboard.press('ArrowRight');
      await page.waitForFunction(() => !window.tilewarmDemo.map.isMoving(), null, { timeout: 5_000 });
      reached = await page.evaluate((pre) => {
        const d = window.tilewarmDemo;
        return d.visibleTiles().some((t) => pre.includes(t));
      }, before.prefetched);
    }
    assert.ok(reached, '30 arrow-key pans brought no prefetched tile into view');
    const used = await page.evaluate(() => window.tilewarmDemo.cache.stats().prefetchTilesUsed);
    assert.ok(used > before.used, `prefetch used stayed at ${used}`);
    await page.waitForFunction(() => {
      const s = window.tilewarmDemo.cache.stats();
      return document.getElementById('s-prefetchUse').textContent === `${s.prefetchTilesUsed} / ${s.prefetchTilesWasted}`;
    }, null, { timeout: 5_000 });
    await page.screenshot({ path: join(shots, 'demo-screenshot-keys.png') });
  });

  it('shows value labels when zoomed in', async () => {
    await page.evaluate(async () => {
      const d = window.tilewarmDemo;
      d.map.jumpTo({ center: [-122.3321, 47.6062], zoom: 15.6 });
      await d.cache.whenComplete();
    });
    await page.waitForFunction(() => document.querySelectorAll('#labels span:not([hidden])').length > 5, null, { timeout: 10_000 });
    const label = await page.locator('#labels span:not([hidden])').first().textContent();
    assert.match(label, /^\$\d+(\.\d+)?[kM]$/);
    // Each label shown is whole: one cut at the map's edge reads as another value.
    const cut = await page.evaluate(() => {
      const box = document.getElementById('labels').getBoundingClientRect();
      return [...document.querySelectorAll('#labels span:not([hidden])')].filter((el) => {
        const r = el.getBoundingClientRect();
        return r.left < box.left - 0.5 || r.right > box.right + 0.5 || r.top < box.top - 0.5 || r.bottom > box.bottom + 0.5;
      }).map((el) => el.textContent);
    });
    assert.deepEqual(cut, [], 'labels cut at the edge of the map');
    // Nor is one under the map's controls (zoom buttons, scale bar, attribution).
    const hidden = await page.evaluate(() => {
      const controls = [...document.querySelectorAll('.maplibregl-ctrl')].map((c) => c.getBoundingClientRect())
        .filter((r) => r.width > 0 && r.height > 0);
      return [...document.querySelectorAll('#labels span:not([hidden])')].filter((el) => {
        const r = el.getBoundingClientRect();
        return controls.some((c) => r.left < c.right && r.right > c.left && r.top < c.bottom && r.bottom > c.top);
      }).map((el) => el.textContent);
    });
    assert.deepEqual(hidden, [], 'labels under the map controls');
    await page.waitForTimeout(300);
    await page.screenshot({ path: join(shots, 'demo-screenshot-zoomed.png') });
  });

  it('replays the recorded session from the button', async () => {
    const c0 = await page.evaluate(() => window.tilewarmDemo.map.getCenter().toArray());
    await page.click('#c-replay');
    await page.waitForFunction(() => /replaying/.test(document.getElementById('replay-status').textContent), null, { timeout: 5_000 });
    await page.waitForTimeout(2_500);
    const c1 = await page.evaluate(() => window.tilewarmDemo.map.getCenter().toArray());
    assert.notDeepEqual(c1, c0, 'the map did not move during the replay');
    await page.click('#c-replay'); // stop
    await page.waitForFunction(() => /stopped/.test(document.getElementById('replay-status').textContent));
  });

  it('signs in for the tier chosen: agent-only homes appear through a real token', async () => {
    const agentItems = () => window.tilewarmDemo.items.filter((i) => i.access === 'agent').length;
    assert.equal(await page.evaluate(agentItems), 0, 'public view shows agent-only homes');
    await page.selectOption('#c-access', 'agent');
    await page.waitForFunction(agentItems, null, { timeout: 30_000 });
    const signIn = await page.evaluate(() => window.tilewarmDemo.signIn());
    assert.equal(signIn.tier, 'agent');
    assert.ok(signIn.signIns >= 1);
    await page.selectOption('#c-access', 'public');
    await page.waitForFunction(() => !window.tilewarmDemo.items.some((i) => i.access !== 'public'), null, { timeout: 30_000 });
  });

  it('without a sign-in the tier selector follows the tier the server allows, and says why', async () => {
    // A server that issues no tokens (no --dev-tokens): /dev/token answers 404.
    const p = await context.newPage();
    // Chromium logs the 404 of /dev/token and the batch endpoint's 403 as console errors.
    p.on('console', (m) => {
      if (m.type() === 'error' && !/status of 40[34]/.test(m.text())) problems.push(`console.error (no sign-in): ${m.text()}`);
    });
    p.on('pageerror', (e) => problems.push(`page error (no sign-in): ${e.stack ?? e.message}`));
    try {
      await p.route('**/dev/token', (r) => r.fulfill({ status: 404, body: '' }));
      await p.goto(baseUrl);
      await p.waitForFunction(() => window.tilewarmDemo?.cache, null, { timeout: 30_000 });
      await p.evaluate(() => window.tilewarmDemo.ready);
      // Registered without a token: refused (403 naming public), the cache lowers to public,
      // and the selector with it.
      await p.selectOption('#c-access', 'registered');
      await p.waitForFunction(() => window.tilewarmDemo.cache.access === 'public' && document.getElementById('c-access').value === 'public',
        null, { timeout: 30_000 });
      assert.match(await p.textContent('#access-status'), /answered as public, not registered.*--dev-tokens/);
      // Choosing a higher tier is a new sign-in: asked again, refused again (no token), and
      // the selector follows the server back to public, saying why.
      await p.evaluate(() => { document.getElementById('access-status').textContent = ''; });
      await p.selectOption('#c-access', 'agent');
      await p.waitForFunction(() => window.tilewarmDemo.cache.access === 'public' && document.getElementById('c-access').value === 'public'
        && /not agent/.test(document.getElementById('access-status').textContent), null, { timeout: 30_000 });
      assert.match(await p.textContent('#access-status'), /answered as public, not agent.*--dev-tokens/);
      assert.equal(await p.evaluate(() => window.tilewarmDemo.options.access), 'public');
    } finally {
      await p.close();
    }
  });

  it('logged no console errors and no page errors', () => {
    assert.deepEqual(problems, []);
  });
});

