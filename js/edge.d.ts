/// <reference lib="esnext.disposable" />
// The line above: EdgeProxy (wasm-bindgen's glue) has `[Symbol.dispose]`, so a project's
// `lib` need not name esnext for these types to check.
/**
 * tilewarm/edge: the caching batch proxy as a Cloudflare Workers / workerd module worker.
 * See docs/edge.md in the repository.
 */

/** Options, as JSON in the `TILEWARM_OPTIONS` binding or as `createWorker`'s defaults. */
export interface EdgeOptions {
  /** Zoom of the data tiles the cache keys tile lists by (0..24). Default 14. */
  tileZoom?: number;
  /** Most items held per access tier (at least 1). Default 20000. */
  maxItems?: number;
  /** Most bytes held per access tier (at least 1). Default 16 MiB. */
  maxBytes?: number;
  /** Requested tiles up to this many levels coarser than tileZoom are cached (0..8, at most tileZoom). Default 3. */
  splitLevels?: number;
  /** Ring of neighbour data tiles warmed after a request (0..4; 0: off). Default 1. */
  warmRing?: number;
  /** Most tiles in one warming request (1..64). Default 16. */
  maxWarmTiles?: number;
  /** Most data tiles one request may cover once coarse tiles are split (more: 400; at least 1). Default 1024. */
  maxDataTiles?: number;
  /** Item TTL in seconds when neither the origin nor the class gives one (1..2592000, 30 days). Default 300. */
  defaultTtl?: number;
  /** TTL in seconds per item class (each 1..2592000; the map replaces the default one). Default { active: 300, off_market: 14400 }. */
  classTtl?: Record<string, number>;
  /** Timeout of a caller's request's origin calls, in ms, their answers read: all of them
   * (asks in part of an answer too large to read included) within this from the first (1..600000). Default 3000. */
  originTimeoutMs?: number;
  /** Timeout of a warming request, in ms (1..600000). Default 5000. */
  warmTimeoutMs?: number;
  /** Required `iss` of callers' tokens (unchecked when absent). */
  jwtIssuer?: string;
  /** Required `aud` of callers' tokens (unchecked when absent). */
  jwtAudience?: string;
  /** Clock leeway for `exp` and `nbf`, in seconds (0..600, as the server's `--jwt-leeway-s`). Default 30. */
  jwtLeewayS?: number;
  /** The claim that names the caller's tier. Default `tilewarm_access`. */
  jwtTierClaim?: string;
  /** How long keys fetched from `JWKS_URL` are kept, in seconds (1..86400, as the server's `--jwks-max-age-s`). Default 600. */
  jwksCacheMaxAgeS?: number;
  /**
   * A token whose `kid` the `JWKS_URL` keys lack makes the isolate fetch them again only if
   * no fetch of them started in the last this many seconds (1..3600). Default 30. A `502`
   * because the keys could not be fetched says in `Retry-After` when they may be fetched
   * again (this cool-down and the failure back-off counted in).
   */
  jwksCooldownS?: number;
  /**
   * Most verified tokens an isolate remembers (0..100000; 0: every request verifies its
   * token). A remembered token skips the signature check until its `exp`; a change of keys
   * forgets them all. Default 1000.
   */
  jwtCacheSize?: number;
  /**
   * Most data tiles looked up in the shared cache (the Workers Cache API) per request, and
   * most written to it per answer (0..64; 0: the shared cache is off). Default 16.
   */
  sharedCacheTiles?: number;
  /**
   * Answer whole hits of data tiles from their serialised form (src/proxy/wire.rs).
   * Default true; the answers are the same either way (false is for measuring).
   */
  splicedHits?: boolean;
  /** How long a shared-cache call may take before it counts as a miss, in ms (1..600000). Default 250. */
  sharedCacheTimeoutMs?: number;
  /**
   * At most how often a request starts a poll of the origin's change feed
   * (`GET /v1/changes?follow=false`, inside `ctx.waitUntil`), in ms. Default 5000; 0 = off.
   * A failed poll puts the next one off longer: at least the answer's `Retry-After`, and
   * doubling for failures of one kind in a row, each at most 60 s (or this, if longer).
   * See docs/edge.md, "Changes".
   */
  changesPollMs?: number;
  /** How far back a new isolate replays the change feed, in ms. Default 14400000 (4 h). */
  changesLookbackMs?: number;
  /**
   * Let `ORIGIN` and `JWKS_URL` be plain `http://` URLs of any host. Default false: they
   * must be https, or http to a loopback host (127.0.0.0/8, ::1, localhost); anything else
   * makes every request a 500 naming the binding.
   */
  allowInsecureOrigin?: boolean;
  /**
   * Serve `GET /edge/stats` to anyone. Default false: the counters hold the cache sizes of
   * every tier, so only a caller whose verified token carries `"tilewarm_admin": true` reads
   * them (401 without a token, 403 with another; 403 for everyone on an edge with no key).
   */
  statsPublic?: boolean;
}

export interface EdgeEnv {
  /** The origin's batch URL, e.g. `https://api.example.com/v1/batch`. Required; https, or
   * http to a loopback host (see {@link EdgeOptions.allowInsecureOrigin}). */
  ORIGIN: string;
  /** JSON text of {@link EdgeOptions}. */
  TILEWARM_OPTIONS?: string;
  /** The edge's own bearer token for the origin; its tier is the highest the edge serves. */
  ORIGIN_TOKEN?: string;
  /** HMAC secret (at least 32 characters) callers' HS256/384/512 tokens are verified with. */
  JWT_SECRET?: string;
  /** A JSON Web Key Set (JSON text) of public keys for callers' tokens; `kid` selects. A set
   * with no key, a private key, or no key that can verify tokens makes every request a 500. */
  JWKS?: string;
  /** https URL of a JWKS (http only as for `ORIGIN`), fetched and cached; an answer over
   * 64 KiB, or not read within 5 s, is a failed fetch. At most one of JWT_SECRET, JWKS,
   * JWKS_URL. */
  JWKS_URL?: string;
}

export interface EdgeWorker {
  fetch(request: Request, env: EdgeEnv, ctx: { waitUntil(p: Promise<unknown>): void }): Promise<Response>;
}

/** A module worker with its own cache (one per isolate). */
export function createWorker(defaults?: EdgeOptions): EdgeWorker;

/** The worker with default options. */
declare const worker: EdgeWorker;
export default worker;

/** The wasm proxy itself, for shells other than createWorker. */
export { EdgeProxy } from './tilewarm_edge.js';
