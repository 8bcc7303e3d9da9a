// What both cold-start pages share: the one map view they show (4 x 3 data tiles of zoom 14
// around Seattle, as js/test/support/backend.mjs generates them), drawing its items as dots
// on a canvas, and the mark a page sets once every item of the view is shown.
const corner = (z, x, y) => {
  const n = 2 ** z;
  return [(x / n) * 360 - 180, (Math.atan(Math.sinh(Math.PI * (1 - (2 * y) / n))) * 180) / Math.PI];
};
// Seattle's z14 tile is (2624, 5721); the view's north-west corner is 2 west, 1 north of it,
// kept a twentieth of a tile off the tile edges.
const [west, north] = corner(14, 2622.05, 5720.05);
const [east, south] = corner(14, 2625.95, 5722.95);
/** The view: a 1000 x 750 px map at zoom 14 (256 px tiles). */
export const view = { west, south, east, north, zoom: 14 };

let shown = false;
/** Draws the items inside the view as dots; returns how many it drew. */
export function draw(items) {
  const c = document.getElementById('map');
  const g = c.getContext('2d');
  g.clearRect(0, 0, c.width, c.height);
  g.fillStyle = '#ea580c';
  let n = 0;
  for (const it of items) {
    if (it.lon < west || it.lon > east || it.lat < south || it.lat > north) continue;
    g.fillRect(((it.lon - west) / (east - west)) * c.width - 2, ((north - it.lat) / (north - south)) * c.height - 2, 4, 4);
    n++;
  }
  return n;
}

/** Called when the page shows every item of the view: sets the mark `complete` once. */
export function done(n) {
  if (shown) return;
  shown = true;
  const m = performance.mark('complete');
  window.__done = { items: n, ms: m.startTime };
}
