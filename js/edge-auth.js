// The edge worker's caller authentication: `Authorization: Bearer <JWT>` verified with
// `jose` (WebCrypto; bundled into pkg/edge.js by scripts/build-pkg.sh, so the worker needs no
// dependency at run time and the browser page does not load it). The contract is the
// server's (docs/server.md, docs/edge.md): no token is `public`; a token must be signed by
// the configured key with an allowed algorithm, carry `exp`, pass `nbf`, `iss`, `aud` (when
// configured) within the leeway, and names its tier in a claim (`tilewarm_access` by
// default). Anything else is a 401 (`Bearer` with no token: a 400). The tier never comes
// from the request body.
import { jwtVerify, createLocalJWKSet, createRemoteJWKSet, jwksCache, customFetch, errors } from 'jose';
import { readBody } from './edge-body.js';

/** The tiers, lowest first (the core's `Access::ALL`). */
export const TIERS = ['public', 'registered', 'verified', 'agent'];

/** Longest `Authorization` header value looked at; longer ones are refused unread. */
export const MAX_TOKEN_BYTES = 8192;

/** Verified tokens remembered per isolate by default (`jwtCacheSize`; 0: every request verifies). */
export const TOKEN_CACHE_SIZE = 1000;

/** Longest token remembered; a longer one (rare: an ordinary JWT is under 1 KB) is verified on
 * every request. With TOKEN_CACHE_SIZE entries: at most about 2 MB of tokens held. */
export const MAX_CACHED_TOKEN_CHARS = 2048;

/** How long past `jwksCacheMaxAgeS` the last key set fetched from JWKS_URL still verifies
 * tokens while the key server fails (stale-if-error): an outage of the key server does not
 * turn every caller away at once. */
export const JWKS_STALE_IF_ERROR_MS = 3_600_000;

/** After a failed fetch of JWKS_URL, how long the last key set is used without asking the
 * key server again: a failing key server is not asked once per request. */
export const JWKS_RETRY_AFTER_FAILURE_MS = 30_000;

/** With no key set to fall back on (the key server never answered, or its last set is past
 * JWKS_STALE_IF_ERROR_MS), how long after a failed fetch of JWKS_URL requests with a token
 * are answered 502 at once instead of asking the key server again; doubled per failure in a
 * row (fetches in flight together failing count as one), up to JWKS_RETRY_AFTER_FAILURE_MS.
 * jose keeps no failure: without this a key server that is down was asked once per request. */
export const JWKS_FIRST_RETRY_MS = 250;

/** Default `jwksCooldownS`: a token whose `kid` the JWKS_URL set lacks makes the isolate
 * fetch the set again only if no fetch started in the last this many seconds. */
export const JWKS_COOLDOWN_S = 30;

/** Longest a fetch of JWKS_URL may take, its answer's body read too (jose's
 * `timeoutDuration`). */
export const JWKS_FETCH_TIMEOUT_MS = 5000;

/** Largest answer of JWKS_URL read (64 KiB: a key set of a few keys is 1 to 10 KB, one with
 * X.509 chains rarely over 30 KB). A larger one is refused as the key server's failure
 * (a 502, stale-if-error and the back-off as for any failed fetch), not buffered. */
export const MAX_JWKS_BYTES = 64 * 1024;

/** How long past JWKS_FETCH_TIMEOUT_MS a request waiting for another request's fetch of
 * JWKS_URL waits before it gives up (502): that request may have been cancelled, and then
 * never says how its fetch ended. A fetch older than both counts as over. */
export const JWKS_WAIT_MARGIN_MS = 1000;

/**
 * Tokens this isolate verified: the exact token text → its tier and `exp`. Only a token that
 * passed every check is remembered, with the tier read from its verified claims; the key is
 * the whole token, so a token that differs by one byte anywhere (its signature too) is not
 * found and is verified in full. An entry is used only while the token would still pass the
 * `exp` check (the same rule and leeway as jose's) and only for the key set it was verified
 * with: a change of keys (a JWKS_URL refetch) forgets every entry. At most `max` entries,
 * the least recently used dropped first (a Map keeps insertion order; a hit moves to the end).
 */
export class VerifiedTokens {
  constructor(max, leewayS) {
    this.max = max;
    this.leewayS = leewayS;
    this.entries = new Map();
    this.keys = undefined;
    this.stats = { hits: 0, verified: 0 };
  }

  /** The tier of `token` if it was verified with `keys` and has not expired at `nowMs`. */
  get(token, keys, nowMs) {
    if (keys !== this.keys) {
      this.entries.clear();
      this.keys = keys;
      return undefined;
    }
    const e = this.entries.get(token);
    if (e === undefined) return undefined;
    // jose's rule: expired once exp <= now - leeway, in whole seconds.
    if (!(e.exp > Math.floor(nowMs / 1000) - this.leewayS)) {
      this.entries.delete(token);
      return undefined;
    }
    this.entries.delete(token);
    this.entries.set(token, e);
    this.stats.hits++;
    return e.tier;
  }

  /** Remembers `token`, verified with `keys`: its tier and `exp` from its verified claims. */
  set(token, keys, tier, exp) {
    if (this.max === 0 || token.length > MAX_CACHED_TOKEN_CHARS || keys !== this.keys) return;
    if (!this.entries.has(token) && this.entries.size >= this.max) {
      this.entries.delete(this.entries.keys().next().value);
    }
    this.entries.set(token, { tier, exp });
  }

  get size() {
    return this.entries.size;
  }
}

/** The claim that lets a verified token read `/edge/stats` (the server's claim for
 * `POST /v1/invalidate`): `"tilewarm_admin": true`, a boolean; any other value is no grant. */
export const ADMIN_CLAIM = 'tilewarm_admin';

/** HMAC algorithms for a shared secret; asymmetric ones for a JWKS. Pinned per key kind, so
 * `alg: none` and HS/RS confusion (an RSA public key used as an HMAC secret) cannot verify. */
const HMAC_ALGS = ['HS256', 'HS384', 'HS512'];
const PUBLIC_KEY_ALGS = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'EdDSA'];

/** The challenge of a 401 for a bearer token that is not good. */
export const INVALID_TOKEN_CHALLENGE = 'Bearer error="invalid_token"';

/** The challenge of a 401 without a bearer token (none, or an `Authorization` of another
 * scheme): no error code (RFC 6750 3.1: no token was sent, so none is invalid), a realm as
 * the scheme needs a parameter. The server's too. */
export const NO_TOKEN_CHALLENGE = 'Bearer realm="tilewarm"';

/** The challenge of a 403 for a verified token that lacks the tier or claim needed (RFC 6750
 * 3.1). The server's too. */
export const INSUFFICIENT_SCOPE_CHALLENGE = 'Bearer error="insufficient_scope"';

/** The challenge of a 400 for `Authorization: Bearer` with no token (RFC 6750 3.1
 * `invalid_request`: a malformed request, not a bad token). The server's too. */
export const INVALID_REQUEST_CHALLENGE = 'Bearer error="invalid_request"';

/** A credential the caller sent that is not good: a 401 with `message` (never the token)
 * and `WWW-Authenticate: challenge`; `status` and `code` are the answer's. */
export class Unauthorized extends Error {
  constructor(message, challenge = INVALID_TOKEN_CHALLENGE) {
    super(message);
    this.challenge = challenge;
    this.status = 401;
    this.code = 'unauthorized';
  }
}

/** `Authorization: Bearer` with no token: a 400 `bad_request` with the `invalid_request`
 * challenge, as the server answers it. A 401 would have the client fetch a fresh token for a
 * request that carried none. */
export class NoToken extends Unauthorized {
  constructor() {
    super('the Authorization header is "Bearer" with no token: send "Bearer <token>", or no Authorization header, to be public', INVALID_REQUEST_CHALLENGE);
    this.status = 400;
    this.code = 'bad_request';
  }
}

/** The key source could not be used (a JWKS URL that did not answer): a 502, whose
 * `Retry-After` is `retryAfterS`, the whole seconds (at least 1) until this isolate may
 * next fetch the keys for the request (see `remoteKeys`): asking sooner gets the same 502. */
export class KeysUnavailable extends Error {
  constructor(message, retryAfterS = 1) {
    super(message);
    this.retryAfterS = retryAfterS;
  }
}

/**
 * The worker's own key binding cannot verify tokens (a `JWKS` key the runtime cannot import:
 * bad key data, an RSA modulus under 2048 bits): the edge is misconfigured, a `500` naming
 * the binding, not a `401` telling the caller to get another token.
 */
export class Misconfigured extends Error {}

/** The members a private JWK has beyond its public part. */
const PRIVATE_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k'];
/** The public members each key type needs. */
const KEY_MEMBERS = { RSA: ['n', 'e'], EC: ['crv', 'x', 'y'], OKP: ['crv', 'x'] };
/** The curves of the allowed algorithms (ES256, ES384, EdDSA as workerd implements it). */
const CURVES = { EC: ['P-256', 'P-384'], OKP: ['Ed25519'] };

/** The bytes of base64url text without padding (RFC 7518 6.3.1), or null. Its last
 * symbol's unused bits must be zero (the one encoding of those bytes), as the server's
 * decoder requires: atob ignores them, so `AQF` would read as `AQE`. */
function base64url(text) {
  if (!/^[A-Za-z0-9_-]*$/.test(text) || text.length % 4 === 1) return null;
  const b64 = text.replace(/-/g, '+').replace(/_/g, '/');
  const bin = atob(b64);
  if (btoa(bin).replace(/=+$/, '') !== b64) return null;
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
}

/**
 * What makes an RSA public key (`n`, `e` of a JWK) one no token can be verified with, or
 * null: the rules the server checks at start (server/src/auth.rs, `rsa_key_fault`: those
 * ring verifies by; jose refuses a modulus under 2048 bits when it verifies). Refused at
 * start, naming the key, as the server does: the set is the deployer's, and a broken key
 * in it a mistake (RFC 7517 lets a reader skip keys it does not understand).
 */
function rsaKeyFault(n64, e64) {
  const n = base64url(n64), e = base64url(e64);
  if (n === null || e === null) return 'n and e must be base64url without padding (RFC 7518 6.3.1)';
  if (n.length === 0 || n[0] === 0 || e.length === 0 || e[0] === 0) {
    return 'n and e must be unsigned big-endian integers in the fewest octets (no leading zero; RFC 7518 6.3.1)';
  }
  const bits = n.length * 8 - (Math.clz32(n[0]) - 24);
  if (n.length < 256 || bits > 8192) return `the modulus (n) is ${bits} bits: RSA keys of 2048 to 8192 bits are allowed`;
  if ((n[n.length - 1] & 1) === 0) return 'the modulus (n) is even: not an RSA modulus';
  if (e.length > 5) return `the exponent (e) is ${e.length} octets long: an odd number from 3 to 2^33 - 1 is allowed`;
  const v = e.reduce((acc, b) => acc * 256 + b, 0);
  if (v < 3 || v >= 2 ** 33 || v % 2 === 0) return `the exponent (e) is ${v}: an odd number from 3 to 2^33 - 1 is allowed`;
  return null;
}

/**
 * Checks the `JWKS` binding's set: at least one key, no private key, and at least one that
 * can verify tokens (a public key of a known type with its members, for signatures, of an
 * allowed algorithm and curve). A key of another type (an identity provider's "AKP" key,
 * say) or lacking a member is left aside, as RFC 7517 (section 5) asks and jose does: it is
 * never selected, and refusing the whole set for it would refuse the keys beside it. When
 * no key can verify, the first such key is named. An RSA key no token could be verified
 * with (`rsaKeyFault`) is refused, not left aside: the set is the deployer's. Throws an
 * Error naming the binding.
 */
function checkKeySet(jwks) {
  if (jwks.keys.length === 0) throw new Error('JWKS holds no keys: every token would be refused');
  const name = (k, i) => `JWKS key ${i}${typeof k?.kid === 'string' ? ` (kid ${JSON.stringify(k.kid.slice(0, 64))})` : ''}`;
  let usable = 0, unusable;
  jwks.keys.forEach((k, i) => {
    if (k === null || typeof k !== 'object' || Array.isArray(k)) throw new Error(`${name(k, i)} must be a JSON Web Key object`);
    const secret = PRIVATE_MEMBERS.find((m) => m in k);
    if (secret) throw new Error(`${name(k, i)} is a private key ("${secret}"): JWKS must hold public keys only`);
    const members = KEY_MEMBERS[k.kty];
    const missing = members?.find((m) => typeof k[m] !== 'string' || k[m] === '');
    if (!members) unusable ??= `${name(k, i)} has kty ${JSON.stringify(k.kty)}: it must be "RSA", "EC" or "OKP"`;
    else if (missing) unusable ??= `${name(k, i)} (${k.kty}) lacks "${missing}"`;
    if (!members || missing) return;
    const fault = k.kty === 'RSA' && rsaKeyFault(k.n, k.e);
    if (fault) throw new Error(`${name(k, i)} (RSA): ${fault}`);
    const forSignatures = k.use === undefined || k.use === 'sig';
    const alg = k.alg === undefined || PUBLIC_KEY_ALGS.includes(k.alg);
    const curve = !CURVES[k.kty] || CURVES[k.kty].includes(k.crv);
    if (forSignatures && alg && curve) usable++;
  });
  if (usable === 0) {
    if (unusable) throw new Error(unusable);
    throw new Error(`JWKS has no key that can verify tokens: each is for encryption ("use"), or of an algorithm or curve not allowed (${PUBLIC_KEY_ALGS.join(', ')}; curves P-256, P-384, Ed25519)`);
  }
}

/** Whether `hostname` (as `URL` writes it: IPv4 in dotted decimal, IPv6 in brackets) is a
 * loopback host: 127.0.0.0/8, ::1 or localhost. */
export function isLoopback(hostname) {
  return hostname === 'localhost' || hostname === '[::1]' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(hostname);
}

/**
 * The URL in binding `name` (ORIGIN, JWKS_URL) when the worker may use it: https, or plain
 * http to a loopback host (a local origin or key server), or plain http to any host when
 * `allowInsecure` (the option `allowInsecureOrigin`). Over plain http to another host the
 * edge's ORIGIN_TOKEN, the answers of every tier, or the keys tokens are checked with could
 * be read or changed on the way. Throws an Error naming the binding and what is allowed.
 */
export function checkedUrl(name, value, allowInsecure = false) {
  const allowed = 'an https URL (plain http only to a loopback host: 127.0.0.0/8, ::1, localhost; or to any host with the option allowInsecureOrigin: true)';
  if (value === undefined || value === null || value === '') throw new Error(`${name} is not set: it must be ${allowed}`);
  let url;
  try {
    url = new URL(value);
  } catch {
    throw new Error(`${name} must be ${allowed}, got ${JSON.stringify(String(value).slice(0, 100))}, which is not an absolute URL`);
  }
  if (url.protocol === 'https:') return url;
  if (url.protocol !== 'http:') throw new Error(`${name} must be ${allowed}, got a ${url.protocol} URL`);
  if (allowInsecure || isLoopback(url.hostname)) return url;
  throw new Error(`${name} must be ${allowed}, got http://${url.host}`);
}

function optionString(options, name) {
  const v = options[name];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string' || v === '') throw new Error(`${name} must be a non-empty string, got ${JSON.stringify(v)}`);
  return v;
}

/**
 * The verifier from the worker's bindings and options. Bindings (at most one key source):
 * `JWT_SECRET` (HMAC secret, HS256/384/512), `JWKS` (a JWKS as JSON text), `JWKS_URL` (a
 * JWKS fetched over https (see `checkedUrl`) and kept `jwksCacheMaxAgeS`, default 600 s;
 * fetched again for an unknown `kid` at most every `jwksCooldownS`, default 30 s; see
 * `remoteKeys`). Options
 * (TILEWARM_OPTIONS): `jwtIssuer`, `jwtAudience`, `jwtLeewayS` (default 30), `jwtTierClaim`
 * (default `tilewarm_access`). Throws an Error naming the binding or option when misconfigured.
 * With no key source every caller is `public` and any token is refused (401).
 */
export function createAuth(env, options = {}) {
  // An unset binding is undefined (wrangler) or null (workerd's fromEnvironment of an unset variable).
  const sources = ['JWT_SECRET', 'JWKS', 'JWKS_URL'].filter((b) => env[b] != null && env[b] !== '');
  if (sources.length > 1) throw new Error(`set at most one of JWT_SECRET, JWKS, JWKS_URL (got ${sources.join(', ')})`);
  const issuer = optionString(options, 'jwtIssuer');
  const audience = optionString(options, 'jwtAudience');
  const claim = optionString(options, 'jwtTierClaim') ?? 'tilewarm_access';
  const leeway = options.jwtLeewayS ?? 30;
  // The server's --jwt-leeway-s bound, so one setting fits both.
  if (!Number.isInteger(leeway) || leeway < 0 || leeway > 600) {
    throw new Error(`jwtLeewayS must be an integer from 0 to 600 seconds, got ${JSON.stringify(leeway)}`);
  }
  const cacheSize = options.jwtCacheSize ?? TOKEN_CACHE_SIZE;
  if (!Number.isInteger(cacheSize) || cacheSize < 0 || cacheSize > 100_000) {
    throw new Error(`jwtCacheSize must be an integer from 0 to 100000 tokens, got ${JSON.stringify(cacheSize)}`);
  }
  let key = null;
  let algorithms = PUBLIC_KEY_ALGS;
  // For JWKS_URL: the seconds until the keys may next be fetched (see remoteKeys).
  let retryAfterS = () => 1;
  // The key set tokens are verified with now, for the verified-token cache: one for a secret
  // or a JWKS binding; for JWKS_URL, the document fetched last (a new object at every
  // refetch), and none while it is stale or not fetched yet (it is fetched then, and no
  // token is answered from the cache).
  const fixedKeys = {};
  let keysNow = () => fixedKeys;
  const source = sources[0];
  if (source === 'JWT_SECRET') {
    if (typeof env.JWT_SECRET !== 'string' || env.JWT_SECRET.length < 32) {
      throw new Error('JWT_SECRET must be a string of at least 32 characters');
    }
    key = new TextEncoder().encode(env.JWT_SECRET);
    algorithms = HMAC_ALGS;
  } else if (source === 'JWKS') {
    let jwks;
    try {
      jwks = typeof env.JWKS === 'string' ? JSON.parse(env.JWKS) : env.JWKS;
    } catch (e) {
      throw new Error(`JWKS is not JSON: ${e.message}`);
    }
    if (!Array.isArray(jwks?.keys)) throw new Error('JWKS must be a JSON Web Key Set: {"keys": [...]}');
    if (jwks.keys.some((k) => k?.kty === 'oct')) throw new Error('JWKS must hold public keys only (no "oct" keys): use JWT_SECRET for a shared secret');
    checkKeySet(jwks);
    key = createLocalJWKSet(jwks);
  } else if (source === 'JWKS_URL') {
    const url = checkedUrl('JWKS_URL', env.JWKS_URL, options.allowInsecureOrigin === true);
    const maxAge = options.jwksCacheMaxAgeS ?? 600;
    // The server's --jwks-max-age-s range.
    if (!Number.isInteger(maxAge) || maxAge < 1 || maxAge > 86400) {
      throw new Error(`jwksCacheMaxAgeS must be an integer from 1 to 86400 seconds, got ${JSON.stringify(maxAge)}`);
    }
    const cooldown = options.jwksCooldownS ?? JWKS_COOLDOWN_S;
    if (!Number.isInteger(cooldown) || cooldown < 1 || cooldown > 3600) {
      throw new Error(`jwksCooldownS must be an integer from 1 to 3600 seconds, got ${JSON.stringify(cooldown)}`);
    }
    ({ key, keysNow, retryAfterS } = remoteKeys(url, maxAge * 1000, cooldown * 1000));
  }
  const verified = new VerifiedTokens(cacheSize, leeway);
  /** The bearer token of `request`, checked for form; null without an Authorization header.
   * Throws `Unauthorized` (`NoToken` for `Bearer` alone). */
  function bearerOf(request) {
    const header = request.headers.get('authorization');
    if (header === null) return null;
    // Another scheme (Basic, say) is an unsupported method, not a bad bearer token.
    if (!/^\s*bearer(\s|$)/i.test(header)) {
      throw new Unauthorized('the Authorization header must be "Bearer <token>": no other scheme is accepted (or send none, to be public)', NO_TOKEN_CHALLENGE);
    }
    if (/^\s*bearer\s*$/i.test(header)) throw new NoToken();
    if (header.length > MAX_TOKEN_BYTES + 7) {
      throw new Unauthorized(`the bearer token is longer than ${MAX_TOKEN_BYTES} bytes`);
    }
    const m = /^Bearer +([A-Za-z0-9_.~+/=-]+) *$/i.exec(header);
    if (!m) throw new Unauthorized('the Authorization header must be "Bearer <token>"');
    if (key === null) {
      throw new Unauthorized('this edge verifies no tokens (no JWT_SECRET, JWKS or JWKS_URL binding): every caller is public; send no Authorization header');
    }
    return m[1];
  }
  /** The verified claims of `token`. Throws `Unauthorized` or `KeysUnavailable`. */
  async function verify(token) {
    try {
      const { payload } = await jwtVerify(token, key, {
        algorithms,
        issuer,
        audience,
        clockTolerance: leeway,
        requiredClaims: ['exp'],
      });
      return payload;
    } catch (e) {
      // With JWKS_URL, anything that is not about the token is about the key source: jose
      // raises a plain JOSEError for an answer that is not 200 (a redirect too: it fetches
      // with redirect: 'manual') or not JSON, JWKSInvalid for a malformed set, JWKSTimeout,
      // and the runtime's own errors for a failed fetch. That is the edge's problem (502),
      // not the caller's: a 401 would tell it to get another token. remoteKeys's own
      // failures carry when the keys may be fetched next; any other (a key of the set that
      // cannot be used) waits for the next fetch allowed at all.
      const prefix = 'the keys at JWKS_URL could not be fetched or used';
      if (e instanceof KeysUnavailable) throw new KeysUnavailable(`${prefix}: ${e.message}`, e.retryAfterS);
      if (source === 'JWKS_URL' && !aboutTheToken(e)) {
        throw new KeysUnavailable(`${prefix}: ${e?.message ?? e}`, retryAfterS(Date.now(), false));
      }
      // A key of the JWKS binding that the runtime cannot import: every token it selects
      // would be refused, and the caller told to get another (the message names no part
      // of the token).
      if (source === 'JWKS' && !aboutTheToken(e)) {
        throw new Misconfigured(`a key of the JWKS binding cannot verify tokens: ${String(e?.message ?? e).slice(0, 200)}`);
      }
      throw new Unauthorized(`the bearer token is not valid: ${describe(e)}`);
    }
  }

  return {
    /** Whether a key source is configured. */
    configured: key !== null,
    /** The verified-token cache's counters: { size, hits, verified } (for /edge/stats). */
    stats: () => ({ size: verified.size, max: cacheSize, ...verified.stats }),
    /**
     * The caller's verified tier from the request's `Authorization` header: `public` without
     * one. Throws `Unauthorized` (401) or `KeysUnavailable` (502).
     */
    async tier(request) {
      const token = bearerOf(request);
      if (token === null) return 'public';
      const keys = keysNow();
      if (keys !== undefined) {
        const known = verified.get(token, keys, Date.now());
        if (known !== undefined) return known;
      }
      const payload = await verify(token);
      const tier = payload[claim];
      // No claim, or null, is public (as the server reads it).
      if (tier != null && (typeof tier !== 'string' || !TIERS.includes(tier))) {
        throw new Unauthorized(`the token's "${claim}" claim must be one of ${TIERS.join(', ')}`);
      }
      const result = tier ?? 'public';
      verified.stats.verified++;
      // Remembered only when the key set did not change while it was verified (a JWKS_URL
      // refetch, by this request or another): it is then the set the token passed with.
      if (keys !== undefined && keysNow() === keys) verified.set(token, keys, result, payload.exp);
      return result;
    },
    /**
     * Whether the request's bearer token verifies and carries `ADMIN_CLAIM: true` (verified
     * in full on every call: the token cache holds tiers only); false without a token.
     * Throws `Unauthorized` (401) or `KeysUnavailable` (502).
     */
    async admin(request) {
      const token = bearerOf(request);
      if (token === null) return false;
      return (await verify(token))[ADMIN_CLAIM] === true;
    },
  };
}

/**
 * jose's fetch of JWKS_URL (its `customFetch`): a 200 answer's body is read here, at most
 * MAX_JWKS_BYTES (`TooLarge` past it, unread when its `content-length` says so: a failed
 * fetch for `remoteKeys`), and given to jose whole. The read is bounded in time by the
 * fetch's signal (jose's `timeoutDuration`: workerd errors the body of a fetch whose signal
 * fires). Other answers are jose's to refuse, unread.
 */
export async function fetchKeys(url, init) {
  const res = await fetch(url, init);
  if (res.status !== 200) return res;
  return new Response(await readBody(res, MAX_JWKS_BYTES, 'its answer'), { status: 200 });
}

/**
 * The key source for `JWKS_URL`: `key` for jwtVerify, `keysNow()`, the set tokens are
 * verified with now (for the verified-token cache: a new object per fetch; undefined while
 * the set is older than `maxAgeMs` or not fetched yet), and `retryAfterS(now, kidUnknown)`,
 * the whole seconds (at least 1) until a fetch may be tried for a request that failed (see
 * *Retry-After* below). `key` throws `KeysUnavailable` (with that wait) when the key source
 * failed the request, and jose's errors when the token is at fault.
 *
 * jose's `createRemoteJWKSet` fetches (its checks and errors), but this decides when, so that
 * an isolate has at most one fetch of the keys in flight. jose does not share one between
 * requests on workerd (it drops its pending fetch there), so a burst of requests that each
 * needed the keys (a new isolate's first, the first after `maxAgeMs`, or tokens with unknown
 * `kid`s past the cool-down) each asked the key server, and each new set emptied the
 * verified-token cache again.
 *
 * Sharing on workerd: a request may not await a promise another request's I/O made (the
 * runtime ties it to that request: when that one ends or is cancelled first, the waiter is
 * never resumed, "the script will never generate a response"). So the request that fetches
 * (the leader) keeps its fetch to itself; every other request that needs the keys meanwhile
 * waits on a promise it made itself, which the leader resolves with the outcome (plain
 * data) when its fetch is done. workerd runs a continuation of a promise resolved from
 * another request in the request that made the promise (`handle_cross_request_promise_resolution`,
 * on from compatibility date 2024-10-14; edge/config.capnp and wrangler.toml use 2025-09-01),
 * and drops it only if that request is gone. A leader that is cancelled mid-fetch never
 * resolves anything: each waiter also waits on its own timer, up to the fetch's timeout
 * (JWKS_FETCH_TIMEOUT_MS) past the start plus JWKS_WAIT_MARGIN_MS, and then answers 502
 * (not 503-and-retry: a waiter that can wait gets its answer in the same request); the
 * next request after that starts a fetch of its own.
 *
 * When: a fetch starts (or is joined) when the set is missing or older than `maxAgeMs`, or
 * when a token's `kid` is not in it and no fetch started in the last `cooldownMs` (the time
 * of the last attempt, recorded when it starts, not the last success: jose's cool-down
 * counted from the last success, so while a fetch was in flight, or after one failed, every
 * unknown `kid` asked again). After a failure the key server is not asked again for
 * JWKS_RETRY_AFTER_FAILURE_MS while the last set is within JWKS_STALE_IF_ERROR_MS past its
 * max age (it verifies meanwhile), else for JWKS_FIRST_RETRY_MS doubled per failure in a row.
 * A token whose `kid` the set lacks is a 401 when that set is the key server's latest answer,
 * and a 502 when the last fetch failed: the key may be in the set it could not fetch.
 *
 * Retry-After: a 502 tells the caller when asking again can get another answer: when the
 * failure back-off above is over (counted from the last failure) and, for a token whose
 * `kid` the fresh set lacks, when the cool-down is over (counted from the last attempt);
 * at least 1 s (a fetch in flight, or one that another request gave up waiting for, may be
 * tried at once).
 */
function remoteKeys(url, maxAgeMs, cooldownMs) {
  // The last good set: the document, jose's key lookup over it, and when it was fetched.
  let set = null;
  // When the last fetch started; the fetch in flight (its start and the resolvers of the
  // requests waiting for it), if any.
  let attemptAt = -Infinity;
  let flight = null;
  // The key server's failures in a row (one per fetch: at most one is in flight), the last
  // one's time and message.
  let failures = 0, failedAt = -Infinity, failure = null;

  const fresh = (now) => set !== null && now - set.at < maxAgeMs;
  const usable = (now) => set !== null && now - set.at < maxAgeMs + JWKS_STALE_IF_ERROR_MS;
  const live = (now) => flight !== null && now - flight.startedAt < JWKS_FETCH_TIMEOUT_MS + JWKS_WAIT_MARGIN_MS;
  /** How long after the last failure the key server is not asked again. */
  const failureWait = (now) => (usable(now) ? JWKS_RETRY_AFTER_FAILURE_MS : Math.min(JWKS_RETRY_AFTER_FAILURE_MS, JWKS_FIRST_RETRY_MS * 2 ** Math.min(20, failures - 1)));

  /** Fetches the set: `{ ok: true }` or `{ ok: false, error }`, never throws. */
  async function lead(now) {
    const f = { startedAt: now, waiters: [] };
    flight = f;
    attemptAt = now;
    let outcome;
    try {
      // jose's remote set, for its fetch (checks and errors) only, one per fetch: one that
      // never ended (its request cancelled) is not awaited again (jose shares its pending
      // fetch outside workerd). `fetched` receives the document and its time.
      const fetched = {};
      await createRemoteJWKSet(url, {
        timeoutDuration: JWKS_FETCH_TIMEOUT_MS, [jwksCache]: fetched, [customFetch]: fetchKeys,
      }).reload();
      set = { jwks: fetched.jwks, local: createLocalJWKSet(fetched.jwks), at: fetched.uat };
      failures = 0;
      outcome = { ok: true };
    } catch (e) {
      failures++;
      failedAt = Date.now();
      failure = e?.message ?? String(e);
      outcome = { ok: false, error: e };
    } finally {
      if (flight === f) flight = null;
    }
    // Plain data to promises each waiting request made itself (see above).
    for (const resolve of f.waiters) resolve(outcome);
    return outcome;
  }

  /** Waits for the fetch in flight (another request's) on a promise of this request's own. */
  async function follow(now) {
    const f = flight;
    let timer;
    const waitMs = f.startedAt + JWKS_FETCH_TIMEOUT_MS + JWKS_WAIT_MARGIN_MS - now;
    const gaveUp = new Promise((resolve) => {
      timer = setTimeout(() => resolve({
        ok: false,
        error: new Error(`the fetch of the keys another request started did not finish within ${JWKS_FETCH_TIMEOUT_MS + JWKS_WAIT_MARGIN_MS} ms`),
      }), Math.max(0, waitMs));
    });
    const done = new Promise((resolve) => f.waiters.push(resolve));
    try {
      return await Promise.race([done, gaveUp]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** The outcome of the fetch this request joins or starts, or of the failure that keeps it
   * from asking the key server (backing off). */
  function refresh(now) {
    if (live(now)) return follow(now);
    if (failures > 0) {
      const since = now - failedAt;
      const wait = failureWait(now);
      if (since < wait) {
        return { ok: false, error: new Error(`${failure} (${failures} failure${failures > 1 ? 's' : ''} in a row; asked again in ${Math.ceil(wait - since)} ms)`) };
      }
    }
    return lead(now);
  }

  /** The whole seconds (at least 1) from `now` until a fetch of the keys may be tried for a
   * request that failed: after the failure back-off, and for a token whose `kid` the set
   * lacks (`kidUnknown`) while that set is fresh, after the cool-down too. */
  const retryAfterS = (now, kidUnknown) => {
    let at = now;
    if (failures > 0) at = Math.max(at, failedAt + failureWait(now));
    if (kidUnknown && fresh(now)) at = Math.max(at, attemptAt + cooldownMs);
    return Math.max(1, Math.ceil((at - now) / 1000));
  };

  /** The key source's failure `e` (502), with when to ask again. */
  const unavailable = (e, kidUnknown) => new KeysUnavailable(e?.message ?? String(e), retryAfterS(Date.now(), kidUnknown));

  /** The error for a token whose `kid` the last good set lacks: the caller's (401) when that
   * set is the key server's latest answer, the key source's (502) when the last fetch failed
   * (`why`; or the fetch this request waited for did not finish). */
  const noKey = (e, why = failures > 0 ? failure : null) => (e instanceof errors.JWKSNoMatchingKey && why !== null
    ? unavailable(new Error(`no key of the last key set fetched matches the token's "kid", and the key server failed since: ${why}`), true)
    : e);

  const key = async (header, token) => {
    const now = Date.now();
    if (fresh(now)) {
      try {
        return await set.local(header, token);
      } catch (e) {
        if (!(e instanceof errors.JWKSNoMatchingKey)) throw e;
        // An unknown kid: the keys are asked for again at most once per cool-down (a
        // fetch in flight is joined: the key it brings may be this token's).
        if (!live(now) && now - attemptAt < cooldownMs) throw noKey(e);
      }
    }
    const outcome = await refresh(now);
    if (outcome.ok) return set.local(header, token);
    // The key server failed: the last good set verifies while it may (else 502).
    if (!usable(Date.now())) throw unavailable(outcome.error, false);
    try {
      return await set.local(header, token);
    } catch (e) {
      throw noKey(e, outcome.error?.message ?? String(outcome.error));
    }
  };
  return { key, keysNow: () => (fresh(Date.now()) ? set.jwks : undefined), retryAfterS };
}

/** jose's errors that say what is wrong with the token itself (its form, signature, claims,
 * algorithm or `kid`), as opposed to the keys it is checked against. */
const TOKEN_ERRORS = [
  errors.JWTExpired, errors.JWTClaimValidationFailed, errors.JWTInvalid, errors.JWSInvalid,
  errors.JOSEAlgNotAllowed, errors.JOSENotSupported, errors.JWSSignatureVerificationFailed,
  errors.JWKSNoMatchingKey, errors.JWKSMultipleMatchingKeys,
];

function aboutTheToken(e) {
  return TOKEN_ERRORS.some((kind) => e instanceof kind);
}

/** jose's reason, without any part of the token. */
function describe(e) {
  if (e instanceof errors.JWTExpired) return 'it has expired';
  if (e instanceof errors.JWTClaimValidationFailed) return `${e.claim} claim: ${e.reason === 'check_failed' ? 'check failed' : e.reason}`;
  if (e instanceof errors.JOSEAlgNotAllowed) return 'its algorithm is not allowed for the configured key';
  if (e instanceof errors.JWSSignatureVerificationFailed) return 'the signature does not match';
  if (e instanceof errors.JWKSNoMatchingKey) return 'no key matches its "kid" and algorithm';
  if (e instanceof errors.JWSInvalid || e instanceof errors.JWTInvalid) return 'it is malformed';
  if (e instanceof errors.JOSEError) return e.code;
  return 'it could not be verified';
}
