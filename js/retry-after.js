// The one reading of an HTTP `Retry-After` for every shell: the page's TileCache
// (cache.js), `tilewarm/live` (live.js) and the edge worker (edge.js). Each bundles or
// imports it; what a caller does with the wait (caps, defaults) stays with the caller.

/**
 * The wait a `Retry-After` value asks for, in ms from `now`: delay seconds or an HTTP
 * date (one in the past: 0); null when absent, empty or neither. Every HTTP date form
 * (RFC 9110 5.6.7) starts with a day name, which keeps out what `Date.parse` would also
 * read as a date (`-5`, `1.5`). Seconds too many to count
 * come out as Number.MAX_SAFE_INTEGER, for the caller's cap to bound.
 */
export function retryAfterMs(value, now) {
  const v = value?.trim();
  if (!v) return null;
  if (/^\d+$/.test(v)) return Math.min(Number(v) * 1000, Number.MAX_SAFE_INTEGER);
  const at = /^[A-Za-z]{3}/.test(v) ? Date.parse(v) : NaN;
  return Number.isNaN(at) ? null : Math.max(0, at - now);
}
