// The tilewarm demo page: a MapLibre map whose homes come through the tilewarm TileCache
// from tilewarm-server's batch endpoint, with the data-tile states, live statistics and
// controls that show what the cache and the prefetch planner do.
//
// URL parameters (all optional):
//   endpoint=URL        batch endpoint (default: /v1/batch on this page's origin)
//   basemap=URL         a MapLibre style JSON to draw under the data (default: a plain
//                       local style; no tile server is needed)
//   access=TIER         public | registered | verified | agent
//   ring=N              prefetch ring, 0..2 (default 1)
//   lookahead=0|1       motion-aware look-ahead (default 0, as the package's)
//   views=0|1           prefetch the 8 views around this one (default 1)
//   lon=, lat=, zoom=   where to start (MapLibre zoom)
import * as maplibregl from 'maplibre-gl';
import { TileCache, tilesForBbox } from 'tilewarm';
import { attach } from 'tilewarm/maplibre';
import { tileBounds, tileOf, tileXY, formatBytes, formatPrice, itemValue, mercatorCentre } from './lib.js';
import { Chart } from './chart.js';
import { TileMap } from './tilemap.js';

const params = new URLSearchParams(location.search);
const TILE_ZOOM = 14; // the data zoom: items are fetched and cached per zoom-14 tile
const MIN_ZOOM = 13; // no data below this (web-map) zoom: too many tiles in view
// MapLibre draws 512-pixel tiles, so its zoom is one less than the 256-pixel web-map zoom
// that the planner, the simulator and the recorded traces use.
const ZOOM_OFFSET = 1;
const LABEL_ZOOM = 15; // MapLibre zoom from which value labels are drawn
const MAX_LABELS = 200;
const CITY = [-122.3321, 47.6062];

const opts = {
  endpoint: params.get('endpoint') ?? new URL('/v1/batch', location.href).href,
  access: params.get('access') ?? 'public',
  ring: clampInt(params.get('ring'), 0, 2, 1),
  lookahead: params.get('lookahead') === '1',
  views: params.get('views') !== '0',
};

function clampInt(s, lo, hi, dflt) {
  const n = Number.parseInt(s ?? '', 10);
  return Number.isFinite(n) ? Math.min(hi, Math.max(lo, n)) : dflt;
}

const $ = (id) => document.getElementById(id);
let cache = null;
let detachMap = null; // tilewarm/maplibre's attach: keeps the 'items' source in sync
let items = [];
let lastView = null;
let readyResolve;
const ready = new Promise((r) => (readyResolve = r));

// ---------------------------------------------------------------- the map
const basemap = params.get('basemap');
const localStyle = {
  version: 8,
  sources: {},
  layers: [{ id: 'background', type: 'background', paint: { 'background-color': '#e8edf3' } }],
};
const map = new maplibregl.Map({
  container: 'map',
  style: basemap ?? localStyle,
  center: [Number(params.get('lon') ?? CITY[0]), Number(params.get('lat') ?? CITY[1])],
  zoom: Number(params.get('zoom') ?? 13.5),
  minZoom: 9,
  maxZoom: 19,
  maxPitch: 0,
  dragRotate: false,
  touchPitch: false,
  pitchWithRotate: false,
  attributionControl: { compact: true },
});
map.keyboard.disableRotation();
map.touchZoomRotate.disableRotation();
map.addControl(new maplibregl.NavigationControl({ showCompass: false }), 'top-left');
map.addControl(new maplibregl.ScaleControl({ unit: 'metric' }), 'bottom-left');

const STATE_COLOURS = ['match', ['get', 'state'],
  'loaded', '#22c55e', 'prefetched', '#3b82f6', 'inflight', '#f59e0b', 'missing', '#ef4444', '#94a3b8'];

map.on('load', async () => {
  map.addSource('tiles', { type: 'geojson', data: emptyFc() });
  // promoteId: attach updates it by diffs (updateData) rather than setData per change.
  map.addSource('items', { type: 'geojson', data: emptyFc(), promoteId: 'id' });
  map.addLayer({
    id: 'tiles-fill', type: 'fill', source: 'tiles',
    paint: {
      'fill-color': STATE_COLOURS,
      'fill-opacity': ['match', ['get', 'state'], 'loaded', 0.04, 'prefetched', 0.2, 'inflight', 0.3, 'missing', 0.22, 0],
    },
  });
  map.addLayer({
    id: 'tiles-line', type: 'line', source: 'tiles',
    paint: {
      'line-color': STATE_COLOURS,
      'line-width': ['match', ['get', 'state'], 'none', 0.6, 1.2],
      'line-opacity': ['match', ['get', 'state'], 'none', 0.6, 0.8],
    },
  });
  map.addLayer({
    id: 'items', type: 'circle', source: 'items',
    paint: {
      'circle-radius': ['interpolate', ['linear'], ['zoom'], 12, 1.8, 14, 3.2, 16, 6, 18, 9],
      'circle-color': ['match', ['get', 'class'], 'active', '#ea580c', 'off_market', '#475569', '#7c3aed'],
      'circle-opacity': ['case', ['get', 'stale'], 0.4, 0.88],
      'circle-stroke-color': '#ffffff',
      'circle-stroke-width': ['interpolate', ['linear'], ['zoom'], 12, 0, 15, 1],
    },
  });
  map.getCanvas().setAttribute('tabindex', '0');
  map.getCanvas().focus();
  try {
    await makeCache();
  } catch (e) {
    showNotice(`tilewarm failed to start: ${e.message}`);
    throw e;
  }
  await cache.whenComplete();
  readyResolve();
});

map.on('render', placeLabels);

// ---------------------------------------------------------------- the cache
// Recreated when the prefetch options change: simple, and the counters start afresh.
async function makeCache() {
  const next = await TileCache.create({
    endpoint: opts.endpoint,
    tileZoom: TILE_ZOOM,
    tileSize: 512, // MapLibre's zoom, as it is
    minZoom: MIN_ZOOM - ZOOM_OFFSET,
    maxItems: 60_000,
    maxBytes: 48 * 1024 * 1024,
    ttl: { default: 300, byClass: { active: 300, off_market: 14_400 } },
    prefetch: {
      ring: opts.ring, // tiles around the visible ones
      viewRing: opts.views ? 1 : 0, // the 8 views around this one
      lookaheadMs: opts.lookahead ? 1500 : 0, // where the pan is heading
      maxTilesPerRound: 32,
    },
    batch: { maxTiles: 16, maxIds: 200, maxInFlight: 4, timeoutMs: 3000, retries: 2 },
    access: opts.access,
    fetch: signedFetch,
  });
  if (detachMap) detachMap();
  if (cache) cache.dispose();
  cache = next;
  chart.restart();
  cache.onError((err) => {
    $('replay-status').textContent = `cache error: ${err?.message ?? err}`;
    console.warn('tilewarm:', err);
  });
  // The server answered at a lower tier than asked (a 403 for a tier without a sign-in):
  // the cache follows it, and so does the selector.
  const own = cache;
  cache.onAccess((access) => {
    if (cache !== own || access === opts.access) return;
    $('access-status').textContent = `The server answered as ${access}, not ${opts.access}${signInHint()}.`;
    opts.access = access;
    $('c-access').value = access;
  });
  // An answer changed tiles' states (a prefetch's, out of view, too): redraw them.
  cache.onTilesChanged(scheduleOverlay);
  // Reads the map's view each frame it moves and keeps the 'items' source in sync.
  detachMap = attach(map, cache, { sourceId: 'items', onView: showView, onError: (e) => console.warn('tilewarm:', e) });
}

// ---------------------------------------------------------------- sign-in
// The tier selector signs in for real: `make demo` runs the server with --dev-tokens, whose
// loopback-only POST /dev/token issues a short-lived token per tier. Without that route
// (another server, `make demo-test`) no token is sent and the server answers `public`.
const auth = { tier: null, token: null, expires: 0, unavailable: false, signIns: 0 };
async function tokenFor(tier) {
  // `public` needs no sign-in; never hand this server's token to another origin.
  if (tier === 'public' || auth.unavailable) return null;
  if (new URL(opts.endpoint, location.href).origin !== location.origin) return null;
  if (auth.tier === tier && Date.now() < auth.expires - 60_000) return auth.token;
  try {
    const res = await fetch(new URL('/dev/token', location.href), {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ access: tier }),
    });
    if (res.status === 404) auth.unavailable = true; // a server without --dev-tokens
    if (!res.ok) return null;
    auth.signIns += 1;
    const { token, expires_in: ttl } = await res.json();
    Object.assign(auth, { tier, token, expires: Date.now() + ttl * 1000 });
    return token;
  } catch {
    return null;
  }
}

// The cache's fetch: signs the request in as the chosen tier (`tokenFor`), and redraws the
// tile states, whose tiles are in flight now.
async function signedFetch(input, init) {
  scheduleOverlay();
  const token = await tokenFor(opts.access);
  if (token) {
    const headers = new Headers(init?.headers ?? (input instanceof Request ? input.headers : undefined));
    headers.set('authorization', `Bearer ${token}`);
    init = { ...init, headers };
  }
  return fetch(input, init);
}

function currentViewport() {
  const b = map.getBounds();
  return {
    west: Math.max(-180, b.getWest()), south: b.getSouth(),
    east: Math.min(180, b.getEast()), north: b.getNorth(),
    zoom: map.getZoom() + ZOOM_OFFSET,
  };
}

/** Every view attach() brought the source to (after a move, and when data arrived). */
function showView(view) {
  const v = currentViewport();
  lastView = { ...v, complete: view.complete, missing: new Set(view.missingTiles ?? []) };
  setItems(view.items);
  showNotice(v.zoom < MIN_ZOOM ? `Zoom in to load homes (data from zoom ${MIN_ZOOM - ZOOM_OFFSET} on this map)`
    : view.tooWide ? 'Zoom in to load homes (this view is too wide to fetch)' : null);
  scheduleOverlay();
}

function visibleTiles(v) {
  if (v.zoom < MIN_ZOOM) return [];
  try {
    return tilesForBbox(v.west, v.south, v.east, v.north, TILE_ZOOM);
  } catch {
    return [];
  }
}

// ---------------------------------------------------------------- items and labels
let itemsSig = '';
function setItems(next) {
  items = next ?? [];
  // attach() keeps the map's source in sync by diffs; the labels are redrawn only when the
  // items changed (a pan inside the same tiles changes nothing).
  let h = items.length;
  for (const it of items) {
    h = (Math.imul(h, 31) + it.id.length + it.id.charCodeAt(it.id.length - 1) + (it.stale ? 7 : 0)) | 0;
  }
  const sig = `${items.length}:${h}:${items[0]?.id}:${items.at(-1)?.id}`;
  const changed = sig !== itemsSig;
  itemsSig = sig;
  updateInViewCount();
  if (!changed) return;
  labelsDirty = true;
  map.triggerRepaint();
}

function updateInViewCount() {
  const v = lastView;
  let n = 0;
  if (v) for (const it of items) if (it.lon >= v.west && it.lon <= v.east && it.lat >= v.south && it.lat <= v.north) n++;
  $('s-view').textContent = (v ? n : items.length).toLocaleString('en');
}

const labelBox = $('labels');
const labelPool = [];
let labelsDirty = true;
let labelOrder = [];
// Label priority that does not change while panning (so labels do not flicker): homes for
// sale first, then a hash of the id.
function labelRank(it) {
  let h = 2166136261;
  for (let i = 0; i < it.id.length; i++) h = Math.imul(h ^ it.id.charCodeAt(i), 16777619);
  return (it.class === 'active' ? 0 : 2 ** 32) + (h >>> 0);
}
// A label's width: its text in the label's font, 5 px of padding each side and a 3 px border
// at the left (style.css, #labels span); measured once per text.
const labelMeasure = document.createElement('canvas').getContext('2d');
labelMeasure.font = '600 11px system-ui, sans-serif';
const labelWidths = new Map();
function labelWidth(text) {
  let w = labelWidths.get(text);
  if (w === undefined) {
    if (labelWidths.size > 10_000) labelWidths.clear();
    w = Math.ceil(labelMeasure.measureText(text).width) + 13;
    labelWidths.set(text, w);
  }
  return w;
}

// Labels are placed on a grid of CELL-pixel cells: a cell holds at most one label.
const CELL = 16;
// The label grid's cells under the map's controls (zoom buttons, scale bar, attribution),
// where a label could not be read; worked out again when the map is resized.
let controlCells = null;
map.on('resize', () => { controlCells = null; });
function cellsUnderControls() {
  if (controlCells) return controlCells;
  controlCells = [];
  const box = labelBox.getBoundingClientRect();
  for (const c of map.getContainer().querySelectorAll('.maplibregl-ctrl')) {
    const r = c.getBoundingClientRect();
    if (r.width === 0 || r.height === 0) continue;
    for (let cy = Math.floor((r.top - box.top) / CELL); cy <= Math.floor((r.bottom - box.top) / CELL); cy++) {
      for (let cx = Math.floor((r.left - box.left) / CELL); cx <= Math.floor((r.right - box.left) / CELL); cx++) {
        controlCells.push(cx * 4096 + cy);
      }
    }
  }
  return controlCells;
}

function placeLabels() {
  if (map.getZoom() < LABEL_ZOOM || items.length === 0) {
    for (const el of labelPool) el.hidden = true;
    return;
  }
  if (labelsDirty) {
    labelOrder = items.map((it) => [labelRank(it), it]).sort((a, b) => a[0] - b[0]).map(([, it]) => it);
    labelsDirty = false;
  }
  // Greedy placement in priority order; a label that would overlap a placed one is left out.
  const { clientWidth: w, clientHeight: h } = labelBox;
  const taken = new Set(cellsUnderControls());
  let i = 0;
  for (const it of labelOrder) {
    if (i >= MAX_LABELS) break;
    const p = map.project([it.lon, it.lat]);
    if (p.x < 0 || p.y < 24 || p.x > w || p.y > h + 6) continue;
    const text = formatPrice(itemValue(it));
    const half = labelWidth(text) / 2;
    // Only a label that fits in the map whole: one cut at the edge reads as another value
    // (a price cut to "16k").
    if (p.x - half < 0 || p.x + half > w) continue;
    const cx0 = Math.floor((p.x - half) / CELL), cx1 = Math.floor((p.x + half) / CELL);
    const cy0 = Math.floor((p.y - 24) / CELL), cy1 = Math.floor((p.y - 6) / CELL);
    let free = true;
    for (let cy = cy0; cy <= cy1 && free; cy++) for (let cx = cx0; cx <= cx1; cx++) if (taken.has(cx * 4096 + cy)) { free = false; break; }
    if (!free) continue;
    for (let cy = cy0; cy <= cy1; cy++) for (let cx = cx0; cx <= cx1; cx++) taken.add(cx * 4096 + cy);
    let el = labelPool[i];
    if (!el) {
      el = document.createElement('span');
      labelPool.push(el);
      labelBox.append(el);
    }
    if (el.textContent !== text) el.textContent = text;
    const cls = `${it.class}${it.stale ? ' stale' : ''}`;
    if (el.className !== cls) el.className = cls;
    el.style.left = `${p.x}px`;
    el.style.top = `${p.y}px`;
    el.hidden = false;
    i++;
  }
  for (; i < labelPool.length; i++) labelPool[i].hidden = true;
}

// ---------------------------------------------------------------- the data-tile overlay
let overlayPending = false;
let overlaySig = '';
function scheduleOverlay() {
  if (overlayPending) return;
  overlayPending = true;
  requestAnimationFrame(() => { overlayPending = false; drawOverlay(); });
}

// The states of the data tiles in and around the view, as the package's
// `cache.tileStates(tiles)` gives them (the core's `Client::tile_state`), under the names the
// overlay and the inset colour: loaded, prefetched, inflight, missing, or none.
const STATE_NAMES = { loaded: 'loaded', prefetched: 'prefetched', inFlight: 'inflight', missing: 'missing' };

function statesOf(tiles, visible) {
  // Outside the view "missing" only means "not cached": draw it as a plain grid cell.
  return cache.tileStates(tiles).map((s, i) => {
    const st = STATE_NAMES[s] ?? 'none';
    return st === 'missing' && !visible.has(tiles[i]) ? 'none' : st;
  });
}

/** The data tiles of view `v` plus a margin of (ring + 1), so prefetched tiles show; none
 * below the data zoom. */
function tilesAround(v) {
  if (v.zoom < MIN_ZOOM) return [];
  const [x0, y0] = tileOf(v.west, v.north, TILE_ZOOM);
  const [x1, y1] = tileOf(v.east, v.south, TILE_ZOOM);
  // The inset in the panel is wider than tall: add columns to fill it.
  const m = opts.ring + 1;
  const rows = y1 - y0 + 1 + 2 * m;
  const mx = Math.max(m, Math.floor((Math.round(rows * tileMap.aspect()) - (x1 - x0 + 1)) / 2));
  const nw = tileBounds(TILE_ZOOM, x0 - mx, y0 - m);
  const se = tileBounds(TILE_ZOOM, x1 + mx, y1 + m);
  try {
    return tilesForBbox(nw.west, se.south + 1e-9, se.east - 1e-9, nw.north, TILE_ZOOM);
  } catch {
    return [];
  }
}

function drawOverlay() {
  const src = map.getSource('tiles');
  // The viewport last handed to the cache (not the camera, which may be a frame ahead), so
  // that "in view" agrees with the states.
  const v = lastView;
  if (!src || !cache || !v) return;
  const tiles = tilesAround(v);
  const visible = new Set(visibleTiles(v));
  const states = statesOf(tiles, visible);
  const [vx0, vy0] = tileXY(v.west, v.north, TILE_ZOOM);
  const [vx1, vy1] = tileXY(v.east, v.south, TILE_ZOOM);
  tileMap.draw({
    tiles: tiles.map((t, i) => {
      const [, x, y] = t.split('/').map(Number);
      return { x, y, state: states[i] };
    }),
    view: tiles.length ? { x0: vx0, y0: vy0, x1: vx1, y1: vy1 } : null,
  });
  const sig = tiles.map((t, i) => t + states[i]).join();
  if (sig === overlaySig) return;
  overlaySig = sig;
  const features = tiles.map((t, i) => {
    const [z, x, y] = t.split('/').map(Number);
    const b = tileBounds(z, x, y);
    return {
      type: 'Feature',
      properties: { tile: t, state: states[i] },
      geometry: {
        type: 'Polygon',
        coordinates: [[[b.west, b.south], [b.east, b.south], [b.east, b.north], [b.west, b.north], [b.west, b.south]]],
      },
    };
  });
  src.setData({ type: 'FeatureCollection', features });
}

function emptyFc() {
  return { type: 'FeatureCollection', features: [] };
}

function showNotice(text) {
  const el = $('notice');
  el.hidden = !text;
  if (text) el.textContent = text;
}

// ---------------------------------------------------------------- stats and chart
const chart = new Chart($('chart'));
const tileMap = new TileMap($('tilemap'));
function foregroundRequests(s) {
  return s.requests - s.prefetchRequests;
}

function updatePanel() {
  if (!cache) return;
  const s = cache.stats();
  $('s-hitRate').textContent = s.hits + s.misses > 0 ? `${(100 * s.hitRate).toFixed(1)}%` : '–';
  $('s-foreground').textContent = foregroundRequests(s).toLocaleString('en');
  $('s-prefetchRequests').textContent = s.prefetchRequests.toLocaleString('en');
  $('s-inFlight').textContent = String(s.inFlight);
  $('s-itemsFetched').textContent = s.itemsFetched.toLocaleString('en');
  $('s-entries').textContent = s.entries.toLocaleString('en');
  $('s-bytes').textContent = formatBytes(s.bytes);
  $('s-prefetchUse').textContent = `${s.prefetchTilesUsed} / ${s.prefetchTilesWasted}`;
  const br = $('s-breaker');
  br.textContent = s.breakerOpen ? 'open' : 'closed';
  br.classList.toggle('open', !!s.breakerOpen);
  $('s-errors').textContent = String(s.errors);
  chart.sample(s);
  scheduleOverlay();
}
setInterval(updatePanel, 500);

// ---------------------------------------------------------------- controls
$('c-access').value = opts.access;
$('c-ring').value = String(opts.ring);
$('c-lookahead').checked = opts.lookahead;
$('tile-zoom').textContent = String(TILE_ZOOM);

$('c-access').addEventListener('change', (e) => {
  opts.access = e.target.value; // before setAccess: its onAccess is then no news
  // Choosing a tier signs in as it (`tokenFor`): a new credential, so the cache may ask
  // above a tier the server reported for the old one. If this one gives less too, the
  // server says so and `onAccess` above puts the selector back.
  cache.setAccess(opts.access, { newCredential: true });
  $('access-status').textContent = '';
});

function signInHint() {
  return auth.unavailable ? ' (this server issues no tokens: `make demo` runs it with --dev-tokens)' : '';
}
$('c-ring').addEventListener('change', (e) => {
  opts.ring = Number(e.target.value);
  void makeCache();
});
$('c-views').checked = opts.views;
$('c-views').addEventListener('change', (e) => {
  opts.views = e.target.checked;
  void makeCache();
});
$('c-lookahead').addEventListener('change', (e) => {
  opts.lookahead = e.target.checked;
  void makeCache();
});
$('c-reset').addEventListener('click', () => void makeCache());
$('c-replay').addEventListener('click', () => (replaying ? stopReplay() : void replay()));

// ---------------------------------------------------------------- replay
// A recorded navigation session (the simulator's trace format, one JSON object a line:
// {"t","west","south","east","north","zoom"}), played back with its real timing.
let replaying = null;
async function loadSession(url = './session.jsonl') {
  const res = await fetch(url);
  if (!res.ok) throw new Error(`${url}: HTTP ${res.status}`);
  return (await res.text())
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l));
}

async function replay(url) {
  const events = await loadSession(url);
  if (events.length === 0) return;
  const run = { timers: [], done: null };
  replaying = run;
  const button = $('c-replay');
  button.textContent = '■ Stop replay';
  button.classList.add('playing');
  const t0 = events[0].t;
  const total = events.at(-1).t - t0;
  run.done = new Promise((resolve) => {
    run.finish = resolve;
    events.forEach((ev, i) => {
      const next = events[i + 1];
      run.timers.push(setTimeout(() => {
        const [lng, lat] = mercatorCentre(ev);
        const duration = next ? Math.min(1000, next.t - ev.t) : 0;
        const target = { center: [lng, lat], zoom: ev.zoom - ZOOM_OFFSET };
        if (duration > 0 && ev.action !== 'jump') map.easeTo({ ...target, duration, easing: (x) => x, essential: true });
        else map.jumpTo(target);
        $('replay-status').textContent = `replaying ${((ev.t - t0) / 1000).toFixed(1)} s of ${(total / 1000).toFixed(1)} s${ev.action ? ` · ${ev.action}` : ''}`;
        if (!next) run.timers.push(setTimeout(() => stopReplay('replay finished'), 200));
      }, ev.t - t0));
    });
  });
  return run.done;
}

function stopReplay(message = 'replay stopped') {
  const run = replaying;
  if (!run) return;
  replaying = null;
  run.timers.forEach(clearTimeout);
  map.stop();
  const button = $('c-replay');
  button.textContent = '▶ Replay session';
  button.classList.remove('playing');
  $('replay-status').textContent = message;
  run.finish?.();
}

// ---------------------------------------------------------------- for tests and the console
window.tilewarmDemo = {
  map,
  ready,
  options: opts,
  TILE_ZOOM,
  ZOOM_OFFSET,
  get cache() { return cache; },
  get items() { return items; },
  signIn: () => ({ tier: auth.tier, signIns: auth.signIns }), // not the token itself
  stats: () => cache.stats(),
  foregroundRequests: () => foregroundRequests(cache.stats()),
  // Pixel width of one data tile at the current zoom (MapLibre's 512-pixel world tiles).
  dataTilePx: () => 512 * 2 ** (map.getZoom() - TILE_ZOOM),
  lastView: () => lastView,
  // The data tiles of the view last handed to the cache, and those the inset draws.
  visibleTiles: () => (lastView ? visibleTiles(lastView) : []),
  tilesAround: () => (lastView ? tilesAround(lastView) : []),
  tileStates: () => {
    const v = currentViewport();
    const tiles = visibleTiles(v);
    const st = statesOf(tiles, new Set(tiles));
    return Object.fromEntries(tiles.map((t, i) => [t, st[i]]));
  },
  replay,
  stopReplay,
  setPrefetch: async ({ ring = opts.ring, lookahead = opts.lookahead, views = opts.views } = {}) => {
    opts.ring = ring;
    opts.lookahead = lookahead;
    opts.views = views;
    $('c-ring').value = String(ring);
    $('c-lookahead').checked = lookahead;
    $('c-views').checked = views;
    await makeCache();
  },
};
