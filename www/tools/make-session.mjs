// Writes www/session.jsonl, the recorded navigation session the demo's Replay button plays:
// one viewport every 100 ms in the simulator's trace format (sim/README.md)
//   {"session","t","west","south","east","north","zoom","action"}
// with `zoom` the 256-pixel web-map zoom. Deterministic: a scripted user on a 940 x 800
// pixel map (the demo's map area at a 1280 x 800 window) who pans from downtown to the
// densest neighbourhood, zooms in to read prices, pans, zooms out, sweeps north, jumps back
// downtown and pans west.
//
//   node www/tools/make-session.mjs > www/session.jsonl
const W = 940, H = 800, STEP = 100;
const yOf = (lat) => Math.log(Math.tan(Math.PI / 4 + (lat * Math.PI) / 360));
const latOf = (y) => (Math.atan(Math.sinh(y)) * 180) / Math.PI;

let lon = -122.3321, lat = 47.6062, zoom = 14.5, t = 0;
const out = [];
function emit(action) {
  const world = 256 * 2 ** zoom; // pixels around the world
  const dLon = (W / world) * 360;
  const yc = yOf(lat), dy = (H / world) * 2 * Math.PI;
  const r = (v) => Math.round(v * 1e6) / 1e6;
  out.push({ session: 'demo', t, west: r(lon - dLon / 2), south: r(latOf(yc - dy / 2)), east: r(lon + dLon / 2),
    north: r(latOf(yc + dy / 2)), zoom: Math.round(zoom * 1000) / 1000, action });
}
// Moves by (dx, dy) pixels per second (east, north) while zooming by dz per second.
function move(ms, action, { dx = 0, dy = 0, dz = 0 } = {}) {
  for (let i = 0; i < ms / STEP; i++) {
    t += STEP;
    const world = 256 * 2 ** zoom;
    lon += ((dx * STEP) / 1000 / world) * 360;
    lat = latOf(yOf(lat) + ((dy * STEP) / 1000 / world) * 2 * Math.PI);
    zoom += (dz * STEP) / 1000;
    emit(action);
  }
}
emit('start');
move(1000, 'hold');
move(6000, 'pan', { dx: 300, dy: -300 }); // south-east to the densest neighbourhood
move(1000, 'hold');
move(2000, 'zoom', { dz: 0.9 }); // close enough to read prices
move(3000, 'pan', { dx: 160 });
move(1500, 'hold');
move(2000, 'zoom', { dz: -0.9 });
move(8000, 'pan', { dy: 450 }); // a long sweep north
t += STEP;
lon = -122.3321; lat = 47.6062; zoom = 15;
emit('jump'); // back downtown
move(1500, 'hold');
move(3000, 'pan', { dx: -300 });
move(1000, 'hold');
process.stdout.write(out.map((e) => JSON.stringify(e)).join('\n') + '\n');
