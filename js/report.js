/**
 * Reports an error that a listener or callback threw, without ending what called it: with
 * the host's `reportError` (browsers, Deno, workerd, Node 22 and later), else
 * `console.error`. TileCache, tilewarm/live and the map adapters report this way.
 */
export function report(e) {
  if (typeof globalThis.reportError === 'function') globalThis.reportError(e);
  else console.error(e);
}
