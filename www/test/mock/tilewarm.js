// Development stand-in for the npm package's TileCache (issue 3), used only by
// `scripts/demo-build.sh --mock` before the real class lands; never shipped and never used
// by `make test`. Same surface as the spec; a crude planner: foreground = visible tiles not
// cached, prefetch = ring + look-ahead tiles, batched by maxTiles. Tile functions are real.
export * from './pkg/index.js';
import { tilesForBbox, neighbourTiles } from './pkg/index.js';

export class TileCache {
  static async create(opts) { return new TileCache(opts); }

  constructor(o) {
    this.o = { tileZoom: 14, minZoom: 12, access: 'public', ...o,
      prefetch: { ring: 1, lookaheadMs: 1500, maxTilesPerRound: 32, ...(o.prefetch ?? {}) },
      batch: { maxTiles: 16, maxInFlight: 4, ...(o.batch ?? {}) } };
    this.fetch = o.fetch ?? globalThis.fetch.bind(globalThis);
    this.now = o.now ?? (() => performance.now());
    this.tiles = new Map(); // tile -> ids
    this.items = new Map();
    this.inflight = new Set();
    this.updates = new Set();
    this.errors = new Set();
    this.waiters = [];
    this.view = null; this.visible = [];
    this.s = { hits: 0, misses: 0, staleHits: 0, requests: 0, prefetchRequests: 0, itemsFetched: 0,
      prefetchTilesUsed: 0, prefetchTilesWasted: 0, evictions: 0, errors: 0 };
    this.prefetched = new Set();
    this.openRequests = 0;
  }

  setViewport(v) {
    const t = this.now();
    if (this.view) {
      const dt = Math.max(1, t - this.lastT);
      this.vel = { x: ((v.west + v.east) / 2 - (this.view.west + this.view.east) / 2) / dt,
        y: ((v.south + v.north) / 2 - (this.view.south + this.view.north) / 2) / dt };
    }
    this.view = v; this.lastT = t;
    this.visible = v.zoom >= this.o.minZoom ? tilesForBbox(v.west, v.south, v.east, v.north, this.o.tileZoom) : [];
    const missing = [];
    for (const tile of this.visible) {
      if (this.tiles.has(tile)) {
        this.s.hits++;
        if (this.prefetched.delete(tile)) this.s.prefetchTilesUsed++;
      } else { this.s.misses++; missing.push(tile); }
    }
    this.send(missing.filter((x) => !this.inflight.has(x)), false);
    this.planPrefetch();
    return { items: this.viewItems(), complete: missing.length === 0, missingTiles: missing };
  }

  planPrefetch() {
    const { ring, lookaheadMs, maxTilesPerRound } = this.o.prefetch;
    const want = new Set();
    for (const t of this.visible) for (const n of ring > 0 ? neighbourTiles(t, ring) : []) want.add(n);
    if (lookaheadMs > 0 && this.vel && this.view) {
      const dx = this.vel.x * lookaheadMs, dy = this.vel.y * lookaheadMs, v = this.view;
      try { for (const n of tilesForBbox(v.west + dx, v.south + dy, v.east + dx, v.north + dy, this.o.tileZoom)) want.add(n); } catch {}
    }
    const todo = [...want].filter((x) => !this.tiles.has(x) && !this.inflight.has(x)).slice(0, maxTilesPerRound);
    this.send(todo, true);
  }

  send(tiles, prefetch) {
    for (let i = 0; i < tiles.length; i += this.o.batch.maxTiles) {
      const chunk = tiles.slice(i, i + this.o.batch.maxTiles);
      for (const x of chunk) this.inflight.add(x);
      this.s.requests++; if (prefetch) this.s.prefetchRequests++;
      this.openRequests++;
      const access = this.o.access;
      this.fetch(this.o.endpoint, { method: 'POST', headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ tiles: chunk, ids: [], access }) })
        .then(async (r) => {
          if (!r.ok) throw new Error(`HTTP ${r.status}`);
          const body = await r.json();
          if (this.disposed || access !== this.o.access) return;
          for (const it of body.items) this.items.set(it.id, { ...it, stale: false });
          for (const tl of body.tiles) { this.tiles.set(tl.tile, tl.ids); if (prefetch && !this.visible.includes(tl.tile)) this.prefetched.add(tl.tile); }
          this.s.itemsFetched += body.items.length;
        })
        .catch((e) => { this.s.errors++; for (const f of this.errors) f(e); })
        .finally(() => {
          this.openRequests--;
          for (const x of chunk) this.inflight.delete(x);
          if (this.disposed) return;
          const items = this.viewItems();
          for (const f of this.updates) f(items);
          if (this.isComplete()) { const w = this.waiters; this.waiters = []; w.forEach((f) => f()); }
        });
    }
  }

  isComplete() { return this.visible.every((t) => this.tiles.has(t)); }
  viewItems() {
    const v = this.view, out = [];
    if (!v) return out;
    for (const t of this.visible) for (const id of this.tiles.get(t) ?? []) {
      const it = this.items.get(id);
      if (it && it.lon >= v.west && it.lon <= v.east && it.lat >= v.south && it.lat <= v.north) out.push(it);
    }
    return out;
  }
  whenComplete() { return this.isComplete() ? Promise.resolve() : new Promise((r) => this.waiters.push(r)); }
  onUpdate(f) { this.updates.add(f); return () => this.updates.delete(f); }
  onError(f) { this.errors.add(f); return () => this.errors.delete(f); }
  invalidate({ all } = {}) { if (all) { this.tiles.clear(); this.items.clear(); } }
  setAccess(a) { this.o.access = a; this.tiles.clear(); this.items.clear(); if (this.view) this.setViewport(this.view); }
  stats() {
    const lookups = this.s.hits + this.s.misses;
    let bytes = 0; for (const it of this.items.values()) bytes += 120;
    return { ...this.s, hitRate: lookups ? this.s.hits / lookups : 0, entries: this.items.size, bytes,
      inFlight: this.openRequests, breakerOpen: false };
  }
  dispose() { this.disposed = true; this.updates.clear(); this.errors.clear(); }
}
