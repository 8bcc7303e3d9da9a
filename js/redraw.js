// Shared by the tile adapters (tilewarm/leaflet, tilewarm/openlayers, tilewarm/deckgl), not
// an entry of its own: the host tiles a map holds are drawn again when the cache's items
// for them changed (an invalidate, say by tilewarm/live's change feed; an answer that
// refetched, replaced, moved or deleted items; items turned stale or expired), instead of
// keeping the items of the moment they loaded until the map loads them again. A tile the
// host holds off the screen is read again only once it is on the screen: a read of a stale
// or expired tile fetches it, and the host's tile cache (Leaflet's keepBuffer, deck.gl's
// maxCacheSize, an OpenLayers source's tiles) would otherwise be fetched whole, every ttl,
// for tiles nobody sees.

/** What a tile was drawn with: its items and their stale flags then (a read sets `stale`
 * on the shared item objects, so the flags are copied). */
export function drawnWith(items) {
  return { items, stale: items.map((it) => it.stale === true) };
}

function same(drawn, items) {
  return drawn.items.length === items.length &&
    items.every((it, i) => it === drawn.items[i] && (it.stale === true) === drawn.stale[i]);
}

/** [z, x, y] of "z/x/y". */
const zxy = (name) => name.split('/').map(Number);

/** Whether tile `a` holds `b` or `b` holds `a` (both [z, x, y]). */
function overlap(a, b) {
  const [hi, lo] = a[0] <= b[0] ? [a, b] : [b, a];
  const k = 2 ** (lo[0] - hi[0]);
  return Math.floor(lo[1] / k) === hi[1] && Math.floor(lo[2] / k) === hi[2];
}

/**
 * Follows `cache.onTilesChanged` for a host. After a change (several in a frame make one
 * pass, at the next animation frame), every tile `shown()` names, as `[name, tile, drawn,
 * seen]` ("z/x/y", the host's tile, the `drawnWith` record it was drawn with, undefined
 * while it is not drawn, and whether any of it is on the screen, true when omitted), that
 * overlaps a changed tile is read again through `cache.loadTiles` (from the cache: what is
 * missing, stale or expired is fetched as for any load, and the tile keeps its drawing
 * until it is answered), and `redraw(tile, items, drawn)` is called for those whose items
 * or stale flags differ from `drawn` (the host checks the tile still shows `drawn`): a
 * change elsewhere reads and redraws nothing. A tile off the screen is not read: it is
 * owed a read, once however often it changes, made by the first pass that finds it on the
 * screen (the host calls `moved()` when its view moved, which asks for a pass while a read
 * is owed) and dropped when the tile is drawn otherwise (loaded again) or no longer held.
 * A tile is not read again while its last read is out (a pass after it reads it, if it is
 * on the screen then). Returns `{ stop, moved }`; stop aborts the reads out.
 */
export function followUpdates(cache, shown, redraw) {
  let frame = 0, all = false;
  /** Changed tiles ([z, x, y]) since the last pass; host tiles changed while read. */
  let changed = [];
  const again = new WeakSet();
  /** Host tiles off the screen owed a read, with what they were drawn with then. */
  let owed = new Map();
  const ctrl = new AbortController();
  const busy = new Set();
  const pass = () => {
    frame = 0;
    const [every, tiles, was] = [all, changed, owed];
    all = false;
    changed = [];
    owed = new Map();
    for (const [name, tile, drawn, seen = true] of shown()) {
      if (!drawn) continue; // not drawn yet: its own load draws it
      if (!every && !again.has(tile) && was.get(tile) !== drawn) {
        const at = zxy(name);
        if (!tiles.some((t) => overlap(t, at))) continue;
      }
      if (busy.has(tile)) { again.add(tile); continue; }
      again.delete(tile);
      if (!seen) { owed.set(tile, drawn); continue; }
      let loading;
      try {
        loading = cache.loadTiles([name], { signal: ctrl.signal });
      } catch {
        return; // the cache was disposed (after this pass was asked for): nothing to draw
      }
      busy.add(tile);
      loading.then(([got]) => {
        // An error (a request that gave up) leaves the drawing as it is; the cache's
        // onError listeners heard of it.
        if (!got.error && !same(drawn, got.items)) redraw(tile, got.items, drawn);
      }, () => {}).finally(() => {
        busy.delete(tile);
        if (again.has(tile)) schedule();
      });
    }
  };
  const schedule = () => { if (!frame && !ctrl.signal.aborted) frame = requestAnimationFrame(pass); };
  const off = cache.onTilesChanged((tiles) => {
    // Past as many tiles as the cache names at once (a hidden page's passes wait): all.
    if (tiles && changed.length < 1024) changed.push(...tiles.map(zxy)); else all = true;
    schedule();
  });
  const stop = () => {
    off();
    ctrl.abort();
    owed.clear();
    if (frame) cancelAnimationFrame(frame);
    frame = 0;
  };
  return { stop, moved: () => { if (owed.size) schedule(); } };
}
