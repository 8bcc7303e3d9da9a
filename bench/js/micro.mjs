// Node micro-benchmarks: the tilewarm wasm package against the same jobs composed from the
// JS libraries a developer would otherwise reach for (@mapbox/tilebelt, @mapbox/tile-cover,
// lru-cache, dataloader), in one run so the ratios hold on a noisy machine.
//
//   node bench/js/micro.mjs [--json FILE] [--md FILE]
//   PKG=/path/to/other/pkg node bench/js/micro.mjs   (the same jobs against another build)
//
// Jobs:
//   tileForPoint    one point to its zoom-14 tile            vs tilebelt.pointToTile
//   tilesForBbox    the zoom-14 cover of a 1280x800 view      vs tileCover.tiles
//   setViewport     one viewport read with 10k items cached   vs tile-cover + lru-cache + a tile index
//   per-frame pan   a map's per-frame calls: a 4-tile pan at 60 fps and a zoom step, 10k
//                   cached; main-thread time per frame (the calls and the tasks they queue)
//   worst case      every call crosses into new tiles (a whole tile per frame)
//   5k in view      p99 of one call, a per-frame pan of a view with about 5,000 items
//   get             one cached item by id                     vs dataloader over lru-cache
// Sizes: the package's wasm + JS (gzipped) against the peers bundled and minified by esbuild.

import { readFileSync, writeFileSync, mkdirSync, readdirSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';

import * as tilebelt from '@mapbox/tilebelt';
import tileCover from '@mapbox/tile-cover';
import { LRUCache } from 'lru-cache';
import DataLoader from 'dataloader';
import esbuild from 'esbuild';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..', '..');
// PKG=dir: another build of the package (a before/after comparison in one sitting).
const pkgDir = process.env.PKG || join(root, 'pkg');
const { TileCache, tileForPoint, tilesForBbox } = await import(join(pkgDir, 'node.js'));

const Z = 14;
const CENTRE = [-122.3321, 47.6062];

// A 1280 x 800 px view at zoom 14.5 over Seattle (about 3.5 x 2.2 data tiles); `zoom` and
// the size in pixels change it.
function view(dxTiles = 0, dyTiles = 0, zoom = 14.5, px = [1280, 800]) {
  const n = 2 ** Z;
  const cx = ((CENTRE[0] + 180) / 360) * n + dxTiles;
  const lat = (CENTRE[1] * Math.PI) / 180;
  const cy = ((1 - Math.log(Math.tan(lat) + 1 / Math.cos(lat)) / Math.PI) / 2) * n + dyTiles;
  const scale = 2 ** (zoom - Z);
  const w = px[0] / 256 / scale, h = px[1] / 256 / scale;
  const lon = (x) => (x / n) * 360 - 180;
  const latOf = (y) => (Math.atan(Math.sinh(Math.PI * (1 - (2 * y) / n))) * 180) / Math.PI;
  return { west: lon(cx - w / 2), east: lon(cx + w / 2), north: latOf(cy - h / 2), south: latOf(cy + h / 2), zoom };
}

// What a map sends on every frame of a gesture, 60 fps: a pan of 4 tiles east (3 tiles/s),
// a zoom step from 14.5 to 15 over 20 frames, a pan of 1 tile south; 130 frames.
function panFrames() {
  const frames = [];
  for (let i = 0; i < 80; i++) frames.push(view(-2 + i * 0.05, 0));
  for (let i = 0; i <= 20; i++) frames.push(view(2, 0, 14.5 + i * 0.025));
  for (let i = 1; i < 30; i++) frames.push(view(2, i / 30, 15));
  return frames;
}

// The worst case: every frame a whole tile further, so every call sees new tiles.
function jumpFrames() {
  const frames = [];
  for (let i = 0; i < 60; i++) frames.push(view(-6 + (i % 12), Math.floor(i / 12) - 2));
  return frames;
}

/** Main-thread ms per frame of `frames` through `call`, 1000/60 ms of clock between
 * frames (the callback sets the clock), the tasks the calls queued drained after each
 * pass: the median of `rounds` passes. Also the per-call times of every pass. */
async function perFrame(frames, call, { rounds = 15, tick = () => {} } = {}) {
  const passes = [], calls = [];
  for (let r = 0; r < rounds + 2; r++) {
    const t0 = performance.now();
    for (let i = 0; i < frames.length; i++) {
      tick();
      const c0 = performance.now();
      call(frames[i]);
      if (r >= 2) calls.push(performance.now() - c0);
    }
    await new Promise((resolve) => setImmediate(resolve));
    if (r >= 2) passes.push((performance.now() - t0) / frames.length);
  }
  passes.sort((a, b) => a - b);
  calls.sort((a, b) => a - b);
  return { ms: passes[Math.floor(passes.length / 2)], p99: calls[Math.floor(calls.length * 0.99)] };
}

// 10k homes scattered over a 20 x 20 tile block around the centre, deterministic.
function homes(count) {
  const n = 2 ** Z;
  const cx = ((CENTRE[0] + 180) / 360) * n;
  const lat = (CENTRE[1] * Math.PI) / 180;
  const cy = ((1 - Math.log(Math.tan(lat) + 1 / Math.cos(lat)) / Math.PI) / 2) * n;
  const out = [];
  for (let i = 0; i < count; i++) {
    const x = cx + (((i * 7919) % 2000) / 100 - 10);
    const y = cy + (((i * 104729) % 2000) / 100 - 10);
    out.push({
      id: `home-${i}`,
      lon: (x / n) * 360 - 180,
      lat: (Math.atan(Math.sinh(Math.PI * (1 - (2 * y) / n))) * 180) / Math.PI,
      class: i % 3 === 0 ? 'active' : 'off_market',
      access: 'public',
      data: { estimate: 300000 + i },
    });
  }
  return out;
}

const HOMES = homes(10_000);
// Items by tile at the data zoom and the two zooms above it: the client asks for a coarser
// tile when all its data tiles are missing, and the protocol answers it with all its items.
const byTile = new Map();
for (const h of HOMES) {
  const [x, y] = tilebelt.pointToTile(h.lon, h.lat, Z);
  for (let d = 0; d <= 2; d++) {
    const key = `${Z - d}/${x >> d}/${y >> d}`;
    if (!byTile.has(key)) byTile.set(key, []);
    byTile.get(key).push(h);
  }
}
const byId = new Map(HOMES.map((h) => [h.id, h]));

// The protocol, answered in memory: tilewarm's injectable fetch.
function answer(body) {
  const req = JSON.parse(body);
  const items = new Map();
  const tiles = (req.tiles || []).map((t) => {
    const list = byTile.get(t) || [];
    for (const h of list) items.set(h.id, h);
    return { tile: t, ids: list.map((h) => h.id) };
  });
  const missing = [];
  for (const id of req.ids || []) {
    const h = byId.get(id);
    if (h) items.set(id, h);
    else missing.push(id);
  }
  return { tiles, items: [...items.values()], missing };
}
const fakeFetch = async (_url, init) =>
  new Response(JSON.stringify(answer(init.body)), { status: 200, headers: { 'content-type': 'application/json' } });

/** Runs fn repeatedly for ~durationMs after a warm-up; returns ops per second (median of 5). */
async function opsPerSec(fn, { durationMs = 300, isAsync = false } = {}) {
  const rounds = [];
  for (let r = 0; r < 6; r++) {
    let ops = 0;
    const t0 = performance.now();
    let t = t0;
    while (t - t0 < durationMs) {
      for (let i = 0; i < 50; i++) {
        if (isAsync) await fn(ops);
        else fn(ops);
        ops++;
      }
      t = performance.now();
    }
    if (r > 0) rounds.push(ops / ((t - t0) / 1000));
  }
  rounds.sort((a, b) => a - b);
  return rounds[Math.floor(rounds.length / 2)];
}

// ---- the peer composition: what a page would build from JS libraries -----------------
class PeerCache {
  constructor() {
    this.items = new LRUCache({ max: 50_000, ttl: 300_000 });
    this.tiles = new LRUCache({ max: 65_536, ttl: 300_000 });
    this.loader = new DataLoader(async (ids) => ids.map((id) => this.items.get(id) ?? null), {
      cacheMap: this.items,
    });
  }
  ingest(resp) {
    for (const it of resp.items) this.items.set(it.id, it);
    for (const t of resp.tiles) this.tiles.set(t.tile, t.ids);
  }
  setViewport(v) {
    const poly = {
      type: 'Polygon',
      coordinates: [[[v.west, v.south], [v.east, v.south], [v.east, v.north], [v.west, v.north], [v.west, v.south]]],
    };
    const tiles = tileCover.tiles(poly, { min_zoom: Z, max_zoom: Z });
    const items = [];
    const missingTiles = [];
    for (const [x, y, z] of tiles) {
      const ids = this.tiles.get(`${z}/${x}/${y}`);
      if (!ids) {
        missingTiles.push(`${z}/${x}/${y}`);
        continue;
      }
      for (const id of ids) {
        const it = this.items.get(id);
        if (it) items.push(it);
      }
    }
    return { items, complete: missingTiles.length === 0, missingTiles };
  }
}

async function main() {
  const args = process.argv.slice(2);
  const flag = (name) => {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : undefined;
  };
  const results = [];
  const v = view();

  // tileForPoint
  {
    const pts = HOMES.slice(0, 1000);
    const a = await opsPerSec((i) => tileForPoint(pts[i % 1000].lon, pts[i % 1000].lat, Z));
    const b = await opsPerSec((i) => tilebelt.pointToTile(pts[i % 1000].lon, pts[i % 1000].lat, Z));
    results.push({ job: 'tileForPoint', tilewarm: a, peer: b, peerName: '@mapbox/tilebelt pointToTile' });
  }
  // tilesForBbox
  {
    const poly = {
      type: 'Polygon',
      coordinates: [[[v.west, v.south], [v.east, v.south], [v.east, v.north], [v.west, v.north], [v.west, v.south]]],
    };
    const a = await opsPerSec(() => tilesForBbox(v.west, v.south, v.east, v.north, Z));
    const b = await opsPerSec(() => tileCover.tiles(poly, { min_zoom: Z, max_zoom: Z }));
    results.push({ job: 'tilesForBbox (z14, 1280x800 view)', tilewarm: a, peer: b, peerName: '@mapbox/tile-cover tiles' });
  }
  // setViewport with 10k cached items
  {
    let clock = 1_000_000;
    const cache = await TileCache.create({
      endpoint: 'http://bench.invalid/v1/batch',
      tileZoom: Z,
      minZoom: 12,
      fetch: fakeFetch,
      now: () => clock,
      prefetch: { ring: 1, lookaheadMs: 0, maxTilesPerRound: 64 },
    });
    // Warm: visit the whole 20 x 20 block so all 10k homes and their tile lists are cached.
    for (let dy = -9; dy <= 9; dy += 3) {
      for (let dx = -9; dx <= 9; dx += 3) {
        clock += 1000;
        cache.setViewport(view(dx, dy));
        await cache.whenComplete();
      }
    }
    for (let i = 0; i < 50 && cache.stats().inFlight > 0; i++) await new Promise((r) => setTimeout(r, 10));
    const peer = new PeerCache();
    for (const [tile, list] of byTile) {
      if (tile.startsWith(`${Z}/`)) peer.ingest({ tiles: [{ tile, ids: list.map((h) => h.id) }], items: list });
    }
    const views = [view(0, 0), view(0.25, 0), view(0.5, 0)];
    const check = cache.setViewport(views[0]);
    const checkPeer = peer.setViewport(views[0]);
    if (!check.complete || check.items.length !== checkPeer.items.length) {
      throw new Error(`setViewport disagrees: tilewarm ${check.items.length} items complete=${check.complete}, peer ${checkPeer.items.length}`);
    }
    const a = await opsPerSec((i) => cache.setViewport(views[i % 3]));
    const b = await opsPerSec((i) => peer.setViewport(views[i % 3]));
    results.push({
      job: `setViewport (10k cached, ${check.items.length} items in view)`,
      tilewarm: a,
      peer: b,
      peerName: 'tile-cover + lru-cache + tile index',
      entries: cache.stats().entries,
    });
    // A map's per-frame calls: a pan and a zoom step, every frame; then the worst case.
    const frame = () => { clock += 17; };
    const pan = panFrames();
    const panA = await perFrame(pan, (v) => cache.setViewport(v), { tick: frame });
    const panB = await perFrame(pan, (v) => peer.setViewport(v));
    const inView = cache.setViewport(pan[40]).items.length;
    results.push({
      job: `per-frame pan (60 fps, ${pan.length} frames, ${inView} items in view), µs per frame`,
      tilewarm: 1000 / panA.ms,
      peer: 1000 / panB.ms,
      peerName: 'tile-cover + lru-cache + tile index',
      perFrame: { tilewarmUs: panA.ms * 1000, peerUs: panB.ms * 1000 },
    });
    const jumps = jumpFrames();
    const jumpA = await perFrame(jumps, (v) => cache.setViewport(v), { tick: frame });
    const jumpB = await perFrame(jumps, (v) => peer.setViewport(v));
    results.push({
      job: 'worst case: every frame a tile further, µs per frame',
      tilewarm: 1000 / jumpA.ms,
      peer: 1000 / jumpB.ms,
      peerName: 'tile-cover + lru-cache + tile index',
      perFrame: { tilewarmUs: jumpA.ms * 1000, peerUs: jumpB.ms * 1000 },
    });
    // get by id
    const ids = HOMES.map((h) => h.id);
    const c = await opsPerSec((i) => cache.get(ids[(i * 7919) % 10_000]), { isAsync: true });
    const d = await opsPerSec((i) => peer.loader.load(ids[(i * 7919) % 10_000]), { isAsync: true });
    results.push({ job: 'get (cached id)', tilewarm: c, peer: d, peerName: 'dataloader over lru-cache' });
    cache.dispose();
  }
  // p99 of one call with about 5,000 items in view: a 2560 x 1600 px view at zoom 13.2
  // (about 17 x 11 data tiles of the 10k homes) panned half a tile per second, per frame.
  {
    let clock = 1_000_000;
    const big = (dx) => view(dx, 0, 13.2, [2560, 1600]);
    const cache = await TileCache.create({
      endpoint: 'http://bench.invalid/v1/batch',
      tileZoom: Z,
      minZoom: 12,
      fetch: fakeFetch,
      now: () => clock,
      prefetch: { ring: 1, lookaheadMs: 0, maxTilesPerRound: 64 },
    });
    for (const dx of [-1, 0, 1]) {
      clock += 1000;
      cache.setViewport(big(dx));
      await cache.whenComplete();
    }
    for (let i = 0; i < 50 && cache.stats().inFlight > 0; i++) await new Promise((r) => setTimeout(r, 10));
    const frames = [];
    for (let i = 0; i < 120; i++) frames.push(big(-0.5 + i / 120));
    const inView = cache.setViewport(frames[60]).items.length;
    const peer = new PeerCache();
    for (const [tile, list] of byTile) {
      if (tile.startsWith(`${Z}/`)) peer.ingest({ tiles: [{ tile, ids: list.map((h) => h.id) }], items: list });
    }
    const a = await perFrame(frames, (v) => cache.setViewport(v), { rounds: 5, tick: () => { clock += 17; } });
    const b = await perFrame(frames, (v) => peer.setViewport(v), { rounds: 5 });
    results.push({
      job: `per-frame pan, ${inView} items in view: p99 ms per call`,
      tilewarm: 1 / a.p99,
      peer: 1 / b.p99,
      peerName: 'tile-cover + lru-cache + tile index',
      p99: { tilewarmMs: a.p99, peerMs: b.p99 },
    });
    cache.dispose();
  }

  // Sizes, gzipped.
  const gz = (buf) => gzipSync(buf, { level: 9 }).length;
  // The page-side package only: the edge worker's wasm and glue (`tilewarm/edge`) are
  // uploaded to the edge, never loaded by a page, and have their own size table.
  const pkgFiles = readdirSync(pkgDir).filter(
    (f) => (f.endsWith('.wasm') || f.endsWith('.js')) && !f.includes('edge'),
  );
  const ours = pkgFiles.reduce((s, f) => s + gz(readFileSync(join(pkgDir, f))), 0);
  const bundle = (contents) =>
    esbuild.buildSync({ stdin: { contents, resolveDir: here }, bundle: true, minify: true, write: false, format: 'esm', platform: 'neutral', mainFields: ['module', 'main'] })
      .outputFiles[0].contents;
  const peerSrc = `import * as tilebelt from '@mapbox/tilebelt'; import cover from '@mapbox/tile-cover';
    import { LRUCache } from 'lru-cache'; import DataLoader from 'dataloader';
    export { tilebelt, cover, LRUCache, DataLoader };`;
  const sizes = [
    { what: 'tilewarm (wasm + JS, all entry files but the edge worker)', gz: ours },
    { what: 'peers together (tilebelt + tile-cover + lru-cache + dataloader, esbuild --minify)', gz: gz(bundle(peerSrc)) },
    { what: '  lru-cache alone', gz: gz(bundle(`export { LRUCache } from 'lru-cache'`)) },
    { what: '  dataloader alone', gz: gz(bundle(`export { default } from 'dataloader'`)) },
    { what: '  @mapbox/tile-cover alone', gz: gz(bundle(`export { default } from '@mapbox/tile-cover'`)) },
  ];

  const fmt = (x) => (x >= 1e6 ? `${(x / 1e6).toFixed(2)} M` : x >= 1e3 ? `${(x / 1e3).toFixed(1)} k` : x.toFixed(0));
  let md = `| job | tilewarm ops/s | peer | peer ops/s | tilewarm / peer |\n| --- | ---: | --- | ---: | ---: |\n`;
  for (const r of results) if (!r.perFrame && !r.p99) md += `| ${r.job} | ${fmt(r.tilewarm)} | ${r.peerName} | ${fmt(r.peer)} | ${(r.tilewarm / r.peer).toFixed(2)}x |\n`;
  md += `\nPer frame: main-thread time of a map's per-frame \`setViewport\` calls (the calls and the tasks they queue), the peer composition computing the same view every frame.\n\n`;
  md += `| sequence | tilewarm | peer | peer / tilewarm |\n| --- | ---: | ---: | ---: |\n`;
  for (const r of results) {
    if (r.perFrame) md += `| ${r.job} | ${r.perFrame.tilewarmUs.toFixed(1)} µs | ${r.perFrame.peerUs.toFixed(1)} µs | ${(r.perFrame.peerUs / r.perFrame.tilewarmUs).toFixed(2)}x |\n`;
    if (r.p99) md += `| ${r.job} | ${r.p99.tilewarmMs.toFixed(3)} ms | ${r.p99.peerMs.toFixed(3)} ms | ${(r.p99.peerMs / r.p99.tilewarmMs).toFixed(2)}x |\n`;
  }
  md += `\n| package | gzipped bytes |\n| --- | ---: |\n`;
  for (const s of sizes) md += `| ${s.what} | ${s.gz.toLocaleString('en-US')} |\n`;
  md += `\nNode ${process.version}, ${new Date().toISOString().slice(0, 10)}.\n`;
  process.stdout.write(md);
  if (flag('--md')) {
    mkdirSync(dirname(flag('--md')), { recursive: true });
    writeFileSync(flag('--md'), md);
  }
  if (flag('--json')) {
    mkdirSync(dirname(flag('--json')), { recursive: true });
    writeFileSync(flag('--json'), JSON.stringify({ results, sizes }, null, 2));
  }
}

await main();
