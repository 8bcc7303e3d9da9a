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
