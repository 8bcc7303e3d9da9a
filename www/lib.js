// Small helpers of the demo page with no DOM or map in them (the Node tests import this).

/** Bounds of tile z/x/y in degrees. */
export function tileBounds(z, x, y) {
  const n = 2 ** z;
  const lon = (v) => (v / n) * 360 - 180;
  const lat = (v) => (Math.atan(Math.sinh(Math.PI * (1 - (2 * v) / n))) * 180) / Math.PI;
  return { west: lon(x), east: lon(x + 1), north: lat(y), south: lat(y + 1) };
}

/** Fractional tile coordinates [x, y] of a point at zoom z. */
export function tileXY(lon, lat, z) {
  const n = 2 ** z;
  const φ = (Math.max(-85.0511, Math.min(85.0511, lat)) * Math.PI) / 180;
  return [((lon + 180) / 360) * n, ((1 - Math.log(Math.tan(φ) + 1 / Math.cos(φ)) / Math.PI) / 2) * n];
}

/** [x, y] of the tile at zoom z containing a point (clamped to the world). */
export function tileOf(lon, lat, z) {
  const n = 2 ** z;
  const [x, y] = tileXY(lon, lat, z).map(Math.floor);
  return [Math.min(n - 1, Math.max(0, x)), Math.min(n - 1, Math.max(0, y))];
}

/** The centre [lon, lat] of a viewport box, in Web Mercator (what a map centres on). */
export function mercatorCentre({ west, south, east, north }) {
  const y = (lat) => Math.log(Math.tan(Math.PI / 4 + (lat * Math.PI) / 360));
  const mid = (y(south) + y(north)) / 2;
  return [(west + east) / 2, (Math.atan(Math.sinh(mid)) * 180) / Math.PI];
}

/** An item's value: `price` when the data has one (King County sales), else `estimate`. */
export function itemValue(item) {
  let d = item.data;
  if (typeof d === 'string') {
    try { d = JSON.parse(d); } catch { return null; }
  }
  const v = d?.price ?? d?.estimate;
  return typeof v === 'number' && Number.isFinite(v) ? v : null;
}

export function formatPrice(v) {
  if (v == null) return '–';
  if (v >= 999_500) return `$${(v / 1e6).toFixed(v >= 9_995_000 ? 1 : 2)}M`;
  return `$${Math.round(v / 1000)}k`;
}

export function formatBytes(n) {
  if (!Number.isFinite(n)) return '–';
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(2)} MiB`;
}

/**
 * Per-tile states seen from the page: which data tiles a batch request is out for, which
 * arrived while in view (loaded) or ahead of it (prefetched), and which visible ones the
 * cache reported missing. Used when the package offers no tile-state method. It does not
 * see evictions or expiry; the cache's own `missingTiles` corrects visible tiles on every
 * viewport.
 */
export class TileTracker {
  constructor(tileZoom) {
    this.z = tileZoom;
    this.reset();
  }

  reset() {
    this.state = new Map();
    this.inflight = new Map(); // tile -> number of requests out for it
    this.visible = new Set();
  }

  /** The data-zoom tiles a requested tile stands for (its descendants or its ancestor). */
  expand(tile) {
    const [z, x, y] = String(tile).split('/').map(Number);
    if (![z, x, y].every(Number.isInteger)) return [];
    if (z === this.z) return [`${z}/${x}/${y}`];
    if (z > this.z) {
      const d = z - this.z;
      return [`${this.z}/${x >> d}/${y >> d}`];
    }
    const d = this.z - z;
    if (d > 4) return []; // too many to draw; the planner does not ask for those
    const out = [];
    const n = 1 << d;
    for (let j = 0; j < n; j++) for (let i = 0; i < n; i++) out.push(`${this.z}/${x * n + i}/${y * n + j}`);
    return out;
  }

  sent(tiles) {
    for (const t of tiles) this.inflight.set(t, (this.inflight.get(t) ?? 0) + 1);
  }

  #done(t) {
    const n = (this.inflight.get(t) ?? 1) - 1;
    if (n > 0) this.inflight.set(t, n);
    else this.inflight.delete(t);
  }

  arrived(tiles) {
    for (const t of tiles) {
      this.#done(t);
      if (this.visible.has(t)) this.state.set(t, 'loaded');
      else if (this.state.get(t) !== 'loaded') this.state.set(t, 'prefetched');
    }
  }

  failed(tiles) {
    for (const t of tiles) this.#done(t);
  }

  /** A new view: its tiles, and those the cache said it cannot show yet. */
  view(visible, missing) {
    this.visible = new Set(visible);
    for (const t of visible) {
      if (missing.has(t)) this.state.delete(t);
      else this.state.set(t, 'loaded');
    }
  }

  /** loaded | prefetched | inflight | missing (in view, not cached) | none (neither). */
  stateOf(t) {
    if (this.inflight.has(t)) return 'inflight';
    return this.state.get(t) ?? (this.visible.has(t) ? 'missing' : 'none');
  }
}
