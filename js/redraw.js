// Shared by the tile adapters (tilewarm/leaflet, tilewarm/openlayers, tilewarm/deckgl), not
// an entry of its own: the host tiles a map shows are drawn again when the cache's items
// for them changed (an invalidate, say by tilewarm/live's change feed; items refetched,
// replaced or turned stale), instead of keeping the items of the moment they loaded until
// the map loads them again.

/** What a tile was drawn with: its items and their stale flags then (a read sets `stale`
 * on the shared item objects, so the flags are copied). */
export function drawnWith(items) {
  return { items, stale: items.map((it) => it.stale === true) };
}

function same(drawn, items) {
  return drawn.items.length === items.length &&
    items.every((it, i) => it === drawn.items[i] && (it.stale === true) === drawn.stale[i]);
}

/**
 * Follows `cache.onUpdate` for a host. After an update (several in a frame make one pass,
 * at the next animation frame), every tile `shown()` names, as `[name, tile, drawn]`
 * ("z/x/y", the host's tile, and the `drawnWith` record it was drawn with, undefined while
 * it is not drawn), is read again through `cache.loadTiles` (from the cache: what is missing
 * is fetched as for any load, and the tile keeps its drawing until it is answered), and
 * `redraw(tile, items, drawn)` is called for those whose items or stale flags differ from
 * `drawn` (the host checks the tile still shows `drawn`): a change elsewhere redraws
 * nothing. A tile is not read again while its last read is out (a pass after it reads it).
 * Returns stop (which aborts the reads out).
 */
export function followUpdates(cache, shown, redraw) {
  let frame = 0, again = false;
  const ctrl = new AbortController();
  const busy = new Set();
  const pass = () => {
    frame = 0;
    for (const [name, tile, drawn] of shown()) {
      if (!drawn) continue; // not drawn yet: its own load draws it
      if (busy.has(tile)) { again = true; continue; }
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
        if (again) { again = false; schedule(); }
      });
    }
  };
  const schedule = () => { if (!frame && !ctrl.signal.aborted) frame = requestAnimationFrame(pass); };
  const off = cache.onUpdate(schedule);
  return () => {
    off();
    ctrl.abort();
    if (frame) cancelAnimationFrame(frame);
    frame = 0;
  };
}
