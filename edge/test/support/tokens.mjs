// Bearer tokens for the tests, made with jose (the root devDependency the edge bundle uses):
// good ones, and each kind of bad one the edge and the server must refuse.
import { SignJWT, generateKeyPair, exportJWK, exportSPKI } from 'jose';

/** The HMAC secret the test servers and workers share (at least 32 characters). */
export const SECRET = 'tilewarm-test-secret-0123456789abcdef-0123456789';
export const ISSUER = 'https://auth.tilewarm.test';
export const AUDIENCE = 'tilewarm-edge';
export const TIERS = ['public', 'registered', 'verified', 'agent'];
export const RANK = { public: 0, registered: 1, verified: 2, agent: 3 };

const enc = new TextEncoder();
const now = () => Math.floor(Date.now() / 1000);
export const b64 = (v) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');

/**
 * An HS256 token. `claims` is the payload (the tier under `tilewarm_access`); `exp` seconds
 * from now (null: no exp), `secret`, `alg`, `header` extra protected-header fields.
 */
export async function hsToken(claims, { exp = 300, secret = SECRET, alg = 'HS256', header = {} } = {}) {
  const payload = { ...claims };
  if (exp !== null) payload.exp = now() + exp;
  return new SignJWT(payload).setProtectedHeader({ alg, typ: 'JWT', ...header }).setIssuedAt().sign(enc.encode(secret));
}

/** A caller token for a worker that checks `iss` and `aud`, at `tier`. */
export const callerToken = (tier, opts = {}) =>
  hsToken({ tilewarm_access: tier, iss: ISSUER, aud: AUDIENCE, sub: `user-${tier}`, ...opts.claims }, opts);

/** A service token (no iss/aud) at `tier`, as the edge's ORIGIN_TOKEN or a direct caller. */
export const serviceToken = (tier) => hsToken({ tilewarm_access: tier, sub: 'edge' }, { exp: 3600 });

/** An RSA key pair with `kid`, its public JWKS, and a signer. */
export async function rsaKeys(kid) {
  const { publicKey, privateKey } = await generateKeyPair('RS256', { extractable: true });
  const jwk = { ...(await exportJWK(publicKey)), kid, alg: 'RS256', use: 'sig' };
  return {
    kid,
    jwks: { keys: [jwk] },
    jwk,
    spki: await exportSPKI(publicKey),
    sign: (claims, { exp = 300, header = {} } = {}) =>
      new SignJWT({ ...claims, exp: now() + exp }).setProtectedHeader({ alg: 'RS256', kid, ...header }).sign(privateKey),
  };
}

/** An ES256 key pair with `kid`, its public JWK, one whose point is not on P-256
 * (`offCurve`: well-formed members the runtime refuses to import), and a signer. */
export async function ecKeys(kid) {
  const { publicKey, privateKey } = await generateKeyPair('ES256', { extractable: true });
  const jwk = { ...(await exportJWK(publicKey)), kid, alg: 'ES256', use: 'sig' };
  return {
    kid,
    jwk,
    offCurve: { ...jwk, y: jwk.x },
    sign: (claims, { exp = 300 } = {}) =>
      new SignJWT({ ...claims, exp: now() + exp }).setProtectedHeader({ alg: 'ES256', kid }).sign(privateKey),
  };
}

/** `alg: none`: no signature at all. */
export const unsigned = (claims) => `${b64({ alg: 'none', typ: 'JWT' })}.${b64({ ...claims, exp: now() + 300 })}.`;

/** A good token's signature over a payload raised to `tier`. */
export function tampered(token, tier) {
  const [h, p, s] = token.split('.');
  const payload = JSON.parse(Buffer.from(p, 'base64url').toString());
  return `${h}.${b64({ ...payload, tilewarm_access: tier })}.${s}`;
}

export const bearer = (token) => ({ 'content-type': 'application/json', authorization: `Bearer ${token}` });
