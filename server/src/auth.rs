//! Who is calling: the caller's *verified* tier from an `Authorization: Bearer <JWT>`
//! header (or, only when explicitly configured, from a header an authenticating gateway
//! sets). Nothing below HTTP reads the request body's `access` as a claim: the handler
//! refuses a body asking for more than the verified tier (403) and passes the effective
//! tier to [`crate::batch::answer`].
//!
//! Tokens are verified with the `jsonwebtoken` crate (ring underneath, already in the
//! server's tree for TLS). Each key is pinned to one algorithm: the `--jwt-secret` key to
//! HS256, each JWKS key to the algorithm its JWK names (or its key type implies: RSA →
//! RS256, P-256 → ES256, P-384 → ES384, Ed25519 → EdDSA). A token whose header names
//! another algorithm is refused before any signature check, so `alg: none` (not even an
//! algorithm the crate knows) and HS/RS confusion (an HS256 token "signed" with a public
//! key) cannot verify. Symmetric keys in a JWKS are refused at startup for the same reason.
//!
//! Checked claims: `exp` (required), `nbf` (when present), `iss` and `aud` (when
//! configured), with `--jwt-leeway-s` of clock leeway. The tier is the claim named by
//! `--jwt-tier-claim` (default `tilewarm_access`): a tier name; a valid token without it
//! is `public`. `sub`, when present, identifies the caller. `tilewarm_admin: true`
//! ([`ADMIN_CLAIM`]) allows `POST /v1/invalidate`.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::http::header::AUTHORIZATION;
use axum::http::HeaderMap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{
    decode, decode_header, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation,
};
use serde_json::Value;
use tilewarm::access::Access;

use crate::jwks::RemoteKeys;
use crate::Config;

/// Longest `Authorization` header read, in bytes; a longer one is refused unparsed.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The environment variable holding the HS256 secret when `--jwt-secret` is not given.
pub const SECRET_ENV: &str = "TILEWARM_JWT_SECRET";

/// Shortest HS256 secret accepted, in bytes (RFC 7518 §3.2: at least the hash size).
pub const MIN_SECRET_BYTES: usize = 32;

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The highest tier this caller may see.
    pub tier: Access,
    /// The token's `sub`, when it had one (for per-caller limits).
    pub sub: Option<String>,
    /// The token carries [`ADMIN_CLAIM`]` = true`: may call `POST /v1/invalidate`.
    pub admin: bool,
    /// When the token stops verifying, in seconds since the Unix epoch (its `exp` plus the
    /// leeway); `None` without a token. A change feed stream ends then
    /// ([`crate::stream`]), so a stream lives no longer than the credential it was opened
    /// with.
    pub expires_at: Option<u64>,
}

impl Caller {
    /// No credential: `public`.
    pub fn anonymous() -> Caller {
        Caller {
            tier: Access::Public,
            sub: None,
            admin: false,
            expires_at: None,
        }
    }
}

/// The claim that lets a verified token call `POST /v1/invalidate`: `"tilewarm_admin":
/// true` (a boolean; any other value is no grant). Only a verified JWT can carry it: with
/// `--trust-tier-header` or no key, nobody may invalidate over HTTP.
pub const ADMIN_CLAIM: &str = "tilewarm_admin";

/// Why a credential was refused (answered with 401 and
/// `WWW-Authenticate: Bearer error="invalid_token"`). The message never quotes the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unauthorized(pub String);

/// Why a credential could not be checked: the `--jwks` URL's key server failed, and the
/// token needs a key from it (answered 502 `upstream_error` with `Retry-After`: the
/// caller's credential may be fine).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct KeysUnavailable {
    pub message: String,
    /// Whole seconds until asking again may get another answer.
    pub retry_after_s: u64,
}

/// Why a request's credential was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// The credential is refused (401).
    #[error(transparent)]
    Unauthorized(#[from] Unauthorized),
    /// The `Authorization` header uses another scheme than `Bearer` (`Basic`, say): 401
    /// with a challenge that names no error (RFC 6750 section 3.1: a request using an
    /// unsupported authentication method gets none; `invalid_token` would tell the client
    /// that a bearer token it never sent is bad).
    #[error(transparent)]
    NotBearer(Unauthorized),
    /// The `Authorization` header is `Bearer` with no token (`Bearer`, `Bearer  `): 400
    /// `bad_request` with `WWW-Authenticate: Bearer error="invalid_request"` (RFC 6750
    /// section 3.1: a malformed request, missing the token; `invalid_token` would have the
    /// client fetch a fresh token for a request that carried none). Not counted as a
    /// refused credential: there was nothing to check.
    #[error("{0}")]
    NoToken(String),
    /// It could not be checked now (502).
    #[error(transparent)]
    KeysUnavailable(#[from] KeysUnavailable),
}

/// One verification key, pinned to one algorithm.
pub struct Key {
    pub(crate) kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// The key a token's `kid` selects among the fixed keys and a `--jwks` URL's set.
enum Pick<'a> {
    Found(&'a Key),
    /// The token names a `kid` no key has.
    UnknownKid,
    Refused(Unauthorized),
}

fn pick<'a>(fixed: &'a [Key], remote: &'a [Key], kid: Option<&str>) -> Pick<'a> {
    let mut all = fixed.iter().chain(remote);
    match kid {
        Some(kid) => all
            .find(|k| k.kid.as_deref() == Some(kid))
            .map_or(Pick::UnknownKid, Pick::Found),
        // No kid: the secret if there is one, else the only key.
        None => match all.clone().find(|k| k.kid.is_none()) {
            Some(k) => Pick::Found(k),
            None if fixed.len() + remote.len() == 1 => {
                all.next().map_or(Pick::UnknownKid, Pick::Found)
            }
            None => Pick::Refused(Unauthorized(
                "token has no kid and several keys are configured".into(),
            )),
        },
    }
}

fn no_key() -> Unauthorized {
    Unauthorized("token's kid names no configured key".into())
}

/// Where tiers come from.
enum Mode {
    /// No key configured: every caller is `public` and a bearer token is refused (it
    /// cannot be checked, and silently ignoring it would hide a misconfiguration).
    Off,
    /// Bearer JWTs checked against these keys (the `--jwt-secret` and a `--jwks` file's),
    /// and a `--jwks` URL's set, fetched again as its key server rotates it.
    Jwt {
        keys: Vec<Key>,
        remote: Option<Arc<RemoteKeys>>,
    },
    /// The named header, set by an authenticating gateway in front (`--trust-tier-header`).
    TrustHeader(String),
}

/// The configured verifier.
pub struct Verifier {
    mode: Mode,
    /// The HS256 secret, kept only to sign `--dev-tokens`.
    dev_signer: Option<EncodingKey>,
    tier_claim: String,
    leeway_s: u64,
    issuer: Option<String>,
    audience: Option<String>,
}

impl Verifier {
    /// A verifier that trusts nothing: every caller is `public`.
    pub fn off() -> Verifier {
        Verifier {
            mode: Mode::Off,
            dev_signer: None,
            tier_claim: "tilewarm_access".into(),
            leeway_s: 30,
            issuer: None,
            audience: None,
        }
    }

    /// The verifier the flags describe. `jwks_text` is the JWKS document when `--jwks`
    /// was given (read by the caller: a file or a URL). The error names the flag.
    pub fn from_config(config: &Config, jwks_text: Option<&str>) -> Result<Verifier, String> {
        let mut v = Verifier {
            mode: Mode::Off,
            dev_signer: None,
            tier_claim: config.jwt_tier_claim.clone(),
            leeway_s: config.jwt_leeway_s,
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
        };
        if v.tier_claim.is_empty() {
            return Err("--jwt-tier-claim must not be empty".into());
        }
        let secret = config
            .jwt_secret
            .clone()
            .or_else(|| std::env::var(SECRET_ENV).ok().filter(|s| !s.is_empty()));
        if let Some(name) = &config.trust_tier_header {
            if secret.is_some() || config.jwks.is_some() {
                return Err(
                    "--trust-tier-header and --jwt-secret/--jwks exclude each other: either a gateway in front authenticates, or this server does".into(),
                );
            }
            axum::http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("--trust-tier-header: {name:?} is not a header name"))?;
            v.mode = Mode::TrustHeader(name.to_ascii_lowercase());
            return Ok(v);
        }
        let mut keys = Vec::new();
        if let Some(s) = secret {
            if s.len() < MIN_SECRET_BYTES {
                return Err(format!(
                    "--jwt-secret / {SECRET_ENV} is {} bytes, at least {MIN_SECRET_BYTES} are needed for HS256",
                    s.len()
                ));
            }
            keys.push(Key {
                kid: None,
                alg: Algorithm::HS256,
                key: DecodingKey::from_secret(s.as_bytes()),
            });
            if config.dev_tokens {
                v.dev_signer = Some(EncodingKey::from_secret(s.as_bytes()));
            }
        }
        if config.dev_tokens && v.dev_signer.is_none() {
            return Err(format!(
                "--dev-tokens signs with the HS256 secret: give --jwt-secret or {SECRET_ENV}"
            ));
        }
        let mut remote = None;
        if let Some(text) = jwks_text {
            let set = parse_jwks(text)?;
            match config.jwks.as_deref().filter(|spec| is_url(spec)) {
                Some(url) => {
                    remote = Some(Arc::new(RemoteKeys::new(
                        url.to_owned(),
                        set,
                        Duration::from_secs(config.jwks_max_age_s),
                        Duration::from_secs(config.jwks_cooldown_s),
                    )))
                }
                None => keys.extend(set),
            }
        }
        if !keys.is_empty() || remote.is_some() {
            v.mode = Mode::Jwt { keys, remote };
        }
        Ok(v)
    }

    /// What startup logs: how tiers are decided.
    pub fn describe(&self) -> String {
        match &self.mode {
            Mode::Off => "no key configured (--jwt-secret, --jwks): every caller is public".into(),
            Mode::Jwt { keys, remote } => format!(
                "bearer JWTs: {} key(s){}, tier claim {:?}, leeway {} s{}{}",
                keys.len(),
                if remote.is_some() {
                    " and the --jwks URL's set"
                } else {
                    ""
                },
                self.tier_claim,
                self.leeway_s,
                self.issuer
                    .as_deref()
                    .map(|i| format!(", iss {i:?}"))
                    .unwrap_or_default(),
                self.audience
                    .as_deref()
                    .map(|a| format!(", aud {a:?}"))
                    .unwrap_or_default(),
            ),
            Mode::TrustHeader(h) => format!(
                "tier taken from the {h:?} header, UNVERIFIED: only safe behind an authenticating gateway that sets it"
            ),
        }
    }

    /// Whether tokens can be checked (a key is configured).
    pub fn verifies_tokens(&self) -> bool {
        matches!(self.mode, Mode::Jwt { .. })
    }

    /// Whether a caller that [`Self::caller`] accepted from these headers was given its
    /// tier by a verified bearer token (not anonymous, not a gateway's header): its 403s
    /// carry `WWW-Authenticate: Bearer error="insufficient_scope"`.
    pub fn bearer_verified(&self, headers: &HeaderMap) -> bool {
        self.verifies_tokens() && headers.contains_key(AUTHORIZATION)
    }

    /// Whether these headers carry a credential that [`Self::caller`] would check (an
    /// `Authorization` header; with `--trust-tier-header`, that header). Without one the
    /// caller is `public` and nothing can be refused.
    pub fn credential_sent(&self, headers: &HeaderMap) -> bool {
        match &self.mode {
            Mode::TrustHeader(name) => headers.contains_key(name.as_str()),
            Mode::Off | Mode::Jwt { .. } => headers.contains_key(AUTHORIZATION),
        }
    }

    /// The `--jwks` URL's key set, when tokens are checked against one.
    pub fn remote_keys(&self) -> Option<&RemoteKeys> {
        match &self.mode {
            Mode::Jwt {
                remote: Some(r), ..
            } => Some(r),
            _ => None,
        }
    }

    /// The caller of a request with these headers. A token whose `kid` a `--jwks` URL's
    /// set lacks may wait for that set to be fetched again ([`crate::jwks`]).
    pub async fn caller(&self, headers: &HeaderMap) -> Result<Caller, CredentialError> {
        if let Mode::Off | Mode::Jwt { .. } = self.mode {
            if let Some(e) = headers.get(AUTHORIZATION).and_then(no_token) {
                return Err(e);
            }
        }
        let (keys, remote) = match &self.mode {
            Mode::TrustHeader(name) => return Ok(trusted_tier(name, headers)?),
            Mode::Off => {
                return match headers.get(AUTHORIZATION) {
                    None => Ok(Caller::anonymous()),
                    Some(v) => {
                        let e = Unauthorized(
                        "this server has no key to verify tokens with: send no Authorization header"
                            .into(),
                    );
                        Err(match is_bearer_scheme(v.as_bytes()) {
                            true => e.into(),
                            false => CredentialError::NotBearer(e),
                        })
                    }
                }
            }
            Mode::Jwt { keys, remote } => (keys, remote),
        };
        if let Some(e) = headers.get(AUTHORIZATION).and_then(not_bearer) {
            return Err(e);
        }
        let Some(token) = bearer_token(headers)? else {
            return Ok(Caller::anonymous());
        };
        let header = decode_header(token)
            .map_err(|e| Unauthorized(format!("token is not a JWT: {}", reason(&e))))?;
        let kid = header.kid.as_deref();
        let Some(remote) = remote else {
            return match pick(keys, &[], kid) {
                Pick::Found(key) => Ok(self.check(key, &header, token)?),
                Pick::UnknownKid => Err(no_key().into()),
                Pick::Refused(e) => Err(e.into()),
            };
        };
        let seen = remote.keys();
        if let Some(set) = &seen.keys {
            match pick(keys, set, kid) {
                Pick::Found(key) => return Ok(self.check(key, &header, token)?),
                Pick::Refused(e) => return Err(e.into()),
                Pick::UnknownKid => {}
            }
        } else if let Pick::Found(key) = pick(keys, &[], kid) {
            // The fixed keys verify whatever the key server does.
            return Ok(self.check(key, &header, token)?);
        }
        // The kid is unknown, or the URL's set is too old to use: fetch it again if the
        // schedule allows (joining a fetch in flight).
        let kid_unknown = seen.keys.is_some();
        let now = match remote.refetch(&seen, kid_unknown).await {
            Some(after) => after,
            None => seen,
        };
        let unavailable = |why: &str, kid_unknown: bool| {
            CredentialError::KeysUnavailable(KeysUnavailable {
                message: format!("the token's key could not be fetched: {why}"),
                retry_after_s: remote.retry_after_s(kid_unknown),
            })
        };
        let Some(set) = &now.keys else {
            let why = now
                .failure
                .as_deref()
                .unwrap_or("the key set is too old to use");
            return Err(unavailable(why, false));
        };
        match pick(keys, set, kid) {
            Pick::Found(key) => Ok(self.check(key, &header, token)?),
            Pick::Refused(e) => Err(e.into()),
            // The key may be in the set the key server failed to send.
            Pick::UnknownKid => match &now.failure {
                Some(why) => Err(unavailable(
                    &format!("no key of the last set fetched has the token's kid, and the key server failed since: {why}"),
                    true,
                )),
                None => Err(no_key().into()),
            },
        }
    }

    /// The caller `token` (with this `header`) names, checked with `key`.
    fn check(
        &self,
        key: &Key,
        header: &jsonwebtoken::Header,
        token: &str,
    ) -> Result<Caller, Unauthorized> {
        if header.alg != key.alg {
            return Err(Unauthorized(format!(
                "token is signed with {:?}, its key allows only {:?}",
                header.alg, key.alg
            )));
        }
        let mut validation = Validation::new(key.alg);
        validation.leeway = self.leeway_s;
        validation.validate_nbf = true;
        // Configured iss/aud are required, not only checked when present.
        let mut required = vec!["exp"];
        required.extend(self.issuer.as_ref().map(|_| "iss"));
        required.extend(self.audience.as_ref().map(|_| "aud"));
        validation.set_required_spec_claims(&required);
        match &self.issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match &self.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        let data = decode::<Value>(token, &key.key, &validation)
            .map_err(|e| Unauthorized(format!("token refused: {}", reason(&e))))?;
        let claims = data.claims;
        let tier = match claims.get(&self.tier_claim) {
            None | Some(Value::Null) => Access::Public,
            Some(Value::String(s)) => s.parse::<Access>().map_err(|_| {
                Unauthorized(format!(
                    "claim {} is not a tier: public, registered, verified or agent",
                    self.tier_claim
                ))
            })?,
            Some(_) => {
                return Err(Unauthorized(format!(
                    "claim {} must be a tier name (a string)",
                    self.tier_claim
                )))
            }
        };
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .map(|s| s.chars().take(256).collect());
        let admin = claims.get(ADMIN_CLAIM) == Some(&Value::Bool(true));
        let expires_at = exp_s(&claims).map(|exp| exp.saturating_add(self.leeway_s));
        Ok(Caller {
            tier,
            sub,
            admin,
            expires_at,
        })
    }
}

/// The token's `exp` in whole seconds, read as `jsonwebtoken` checked it (required, so
/// present in a token that verified): an integer, or a number with a fraction rounded to
/// the nearest second (RFC 7519's NumericDate may have one). Read as an integer only, a
/// fractional `exp` was no expiry at all, and a change feed stream outlived its token.
fn exp_s(claims: &Value) -> Option<u64> {
    let exp = claims.get("exp")?;
    exp.as_u64().or_else(|| {
        let f = exp.as_f64()?;
        (f.is_finite() && f >= 0.0 && f < u64::MAX as f64).then(|| f.round() as u64)
    })
}

/// How long a `--dev-tokens` token lives, in seconds.
pub const DEV_TOKEN_TTL_S: u64 = 900;

impl Verifier {
    /// A short-lived token for `tier` (with [`ADMIN_CLAIM`] when `admin`), signed with the
    /// HS256 secret (`--dev-tokens` only; the route serving it answers loopback callers
    /// only). `None` without `--dev-tokens`.
    pub fn dev_token(&self, tier: Access, admin: bool, now_s: u64) -> Option<String> {
        let signer = self.dev_signer.as_ref()?;
        let mut claims = serde_json::Map::new();
        claims.insert("sub".into(), Value::from(format!("dev-{tier}")));
        claims.insert("iat".into(), Value::from(now_s));
        claims.insert("exp".into(), Value::from(now_s + DEV_TOKEN_TTL_S));
        claims.insert(self.tier_claim.clone(), Value::from(tier.to_string()));
        if admin {
            claims.insert(ADMIN_CLAIM.into(), Value::Bool(true));
        }
        if let Some(iss) = &self.issuer {
            claims.insert("iss".into(), Value::from(iss.as_str()));
        }
        if let Some(aud) = &self.audience {
            claims.insert("aud".into(), Value::from(aud.as_str()));
        }
        encode(&Header::new(Algorithm::HS256), &claims, signer).ok()
    }
}

/// The tier a gateway set in header `name` (`--trust-tier-header`), unverified.
fn trusted_tier(name: &str, headers: &HeaderMap) -> Result<Caller, Unauthorized> {
    let Some(v) = headers.get(name) else {
        return Ok(Caller::anonymous());
    };
    let tier = v
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse::<Access>().ok())
        .ok_or_else(|| {
            Unauthorized(format!(
                "header {name} is not a tier: public, registered, verified or agent"
            ))
        })?;
    Ok(Caller {
        tier,
        sub: None,
        admin: false,
        expires_at: None,
    })
}

/// The bearer token of the `Authorization` header, `None` without one.
fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, Unauthorized> {
    let Some(v) = headers.get(AUTHORIZATION) else {
        return Ok(None);
    };
    let raw = v.as_bytes();
    if raw.len() > MAX_TOKEN_BYTES {
        return Err(Unauthorized(format!(
            "Authorization header is {} bytes, at most {MAX_TOKEN_BYTES} are allowed",
            raw.len()
        )));
    }
    let text = std::str::from_utf8(raw)
        .map_err(|_| Unauthorized("Authorization header is not text".into()))?;
    bearer(text)
        .map(Some)
        .ok_or_else(|| Unauthorized("Authorization must be \"Bearer <token>\" with a JWT".into()))
}

/// The refusal of an `Authorization` header with another scheme than `Bearer`, if it has one
/// ([`CredentialError::NotBearer`]).
fn not_bearer(value: &axum::http::HeaderValue) -> Option<CredentialError> {
    (!is_bearer_scheme(value.as_bytes())).then(|| {
        CredentialError::NotBearer(Unauthorized(
            "Authorization must be \"Bearer <token>\" with a JWT: no other scheme is accepted \
             (or send no Authorization header, to be public)"
                .into(),
        ))
    })
}

/// The refusal of an `Authorization` header that is `Bearer` with no token, if it is one
/// ([`CredentialError::NoToken`]).
fn no_token(value: &axum::http::HeaderValue) -> Option<CredentialError> {
    let value = value.as_bytes().trim_ascii();
    let empty = is_bearer_scheme(value) && value[b"bearer".len()..].trim_ascii().is_empty();
    empty.then(|| {
        CredentialError::NoToken(
            "Authorization is \"Bearer\" with no token: send \"Bearer <token>\" with a JWT, \
             or no Authorization header, to be public"
                .into(),
        )
    })
}

/// Whether an `Authorization` header's scheme (what is before its first space, or all of
/// it) is `Bearer`, case-insensitive.
fn is_bearer_scheme(value: &[u8]) -> bool {
    let value = value.trim_ascii_start();
    let scheme = value.split(|&b| b == b' ').next().unwrap_or_default();
    scheme.eq_ignore_ascii_case(b"bearer")
}

/// The token of `Bearer <token>` (scheme case-insensitive).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// A verification failure in words (the crate's own, which never quote the token).
fn reason(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => "expired (exp is past)".into(),
        K::ImmatureSignature => "not valid yet (nbf is in the future)".into(),
        K::InvalidSignature => "signature does not verify".into(),
        K::InvalidIssuer => "wrong issuer (iss)".into(),
        K::InvalidAudience => "wrong audience (aud)".into(),
        K::InvalidAlgorithm | K::InvalidAlgorithmName => "algorithm not allowed".into(),
        K::MissingRequiredClaim(c) => format!("claim {c} is required"),
        K::InvalidToken => "malformed".into(),
        K::Base64(_) => "not base64url".into(),
        K::Json(_) => "header or claims are not the expected JSON".into(),
        K::Utf8(_) => "not UTF-8".into(),
        _ => "invalid".into(),
    }
}

/// The keys of a JWKS document, each pinned to one asymmetric algorithm.
pub(crate) fn parse_jwks(text: &str) -> Result<Vec<Key>, String> {
    let set: JwkSet =
        serde_json::from_str(text).map_err(|e| format!("--jwks: not a JWKS document: {e}"))?;
    if set.keys.is_empty() {
        return Err("--jwks: the key set has no keys".into());
    }
    let mut kids = HashSet::new();
    let mut keys = Vec::with_capacity(set.keys.len());
    for (i, jwk) in set.keys.iter().enumerate() {
        let alg = jwk_algorithm(jwk).map_err(|e| format!("--jwks: keys[{i}]: {e}"))?;
        if let AlgorithmParameters::RSA(rsa) = &jwk.algorithm {
            rsa_key_fault(&rsa.n, &rsa.e).map_or(Ok(()), |fault| {
                let kid = jwk.common.key_id.as_deref().unwrap_or("none");
                Err(format!("--jwks: keys[{i}] (kid {kid:?}): {fault}"))
            })?;
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("--jwks: keys[{i}]: {e}"))?;
        let kid = jwk.common.key_id.clone();
        if let Some(k) = &kid {
            if !kids.insert(k.clone()) {
                return Err(format!("--jwks: keys[{i}]: kid {k:?} is used twice"));
            }
        } else if set.keys.len() > 1 {
            return Err(format!(
                "--jwks: keys[{i}] has no kid; with several keys each needs one"
            ));
        }
        keys.push(Key { kid, alg, key });
    }
    Ok(keys)
}

/// What makes an RSA public key (`n`, `e` as a JWK gives them) one no token can be verified
/// with, or `None`: the rules `ring` (under `jsonwebtoken`) applies when it verifies, checked
/// at start. `jsonwebtoken` only decodes the two at start, so a key with a short modulus
/// was taken and every token signed with it refused as "signature does not verify".
/// Refused rather than skipped: RFC 7517 section 5 lets a reader ignore keys it does not
/// understand, but a key set given to this server is its operator's, and a broken key in
/// it is a mistake to report at once (the edge refuses the same keys, js/edge-auth.js).
fn rsa_key_fault(n: &str, e: &str) -> Option<String> {
    use base64::engine::{general_purpose::URL_SAFE_NO_PAD, Engine};
    let (Ok(n), Ok(e)) = (URL_SAFE_NO_PAD.decode(n), URL_SAFE_NO_PAD.decode(e)) else {
        return Some("n and e must be base64url without padding (RFC 7518 6.3.1)".into());
    };
    if n.first().is_none_or(|&b| b == 0) || e.first().is_none_or(|&b| b == 0) {
        return Some(
            "n and e must be unsigned big-endian integers in the fewest octets (no leading zero; RFC 7518 6.3.1)".into(),
        );
    }
    // `ring`'s RSA verification: a modulus of at least 256 octets (2048 bits, rounded up
    // to whole octets) and at most 8192 bits, odd; an odd exponent from 3 to 2^33 - 1.
    let bits = n.len() * 8 - n[0].leading_zeros() as usize;
    if n.len() < 256 || bits > 8192 {
        return Some(format!(
            "the modulus (n) is {bits} bits: RSA keys of 2048 to 8192 bits are allowed"
        ));
    }
    if n[n.len() - 1] & 1 == 0 {
        return Some("the modulus (n) is even: not an RSA modulus".into());
    }
    let value = (e.len() <= 5).then(|| e.iter().fold(0u64, |v, &b| v << 8 | u64::from(b)));
    match value {
        Some(v) if (3..1 << 33).contains(&v) && v & 1 == 1 => None,
        Some(v) => Some(format!(
            "the exponent (e) is {v}: an odd number from 3 to 2^33 - 1 is allowed"
        )),
        None => Some(format!(
            "the exponent (e) is {} octets long: an odd number from 3 to 2^33 - 1 is allowed",
            e.len()
        )),
    }
}

/// The one algorithm a JWK may verify.
fn jwk_algorithm(jwk: &Jwk) -> Result<Algorithm, String> {
    let implied = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            _ => return Err("EC keys must be on P-256 or P-384".into()),
        },
        AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
        AlgorithmParameters::OctetKey(_) => {
            return Err(
                "symmetric (oct) keys are not accepted in a JWKS: give an HMAC secret with --jwt-secret".into(),
            )
        }
    };
    let Some(named) = jwk.common.key_algorithm else {
        return Ok(implied);
    };
    let alg = match named {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        other => {
            return Err(format!(
                "alg {other:?} is not an asymmetric signature algorithm"
            ))
        }
    };
    let family_ok = matches!(
        (&jwk.algorithm, alg),
        (
            AlgorithmParameters::RSA(_),
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        ) | (
            AlgorithmParameters::EllipticCurve(_),
            Algorithm::ES256 | Algorithm::ES384
        ) | (AlgorithmParameters::OctetKeyPair(_), Algorithm::EdDSA)
    );
    if !family_ok
        || (alg != implied && matches!(jwk.algorithm, AlgorithmParameters::EllipticCurve(_)))
    {
        return Err(format!("alg {alg:?} does not fit the key's type"));
    }
    Ok(alg)
}

/// `--jwks` names a URL (its set is fetched again as it rotates), not a file.
pub(crate) fn is_url(spec: &str) -> bool {
    spec.starts_with("http://") || spec.starts_with("https://")
}

/// Reads `--jwks` at startup: a file path, or an `http(s)://` URL (fetched again later by
/// [`crate::jwks::RemoteKeys`]).
pub async fn read_jwks(spec: &str) -> Result<String, String> {
    if is_url(spec) {
        return fetch_jwks(spec).await;
    }
    std::fs::read_to_string(Path::new(spec)).map_err(|e| format!("--jwks {spec}: {e}"))
}

pub(crate) async fn fetch_jwks(url: &str) -> Result<String, String> {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty, Limited};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let uri: hyper::Uri = url.parse().map_err(|e| format!("--jwks {url}: {e}"))?;
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .build();
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let req = hyper::Request::get(uri)
        .header("accept", "application/json")
        .body(Empty::new())
        .map_err(|e| format!("--jwks {url}: {e}"))?;
    let resp = tokio::time::timeout(std::time::Duration::from_secs(10), client.request(req))
        .await
        .map_err(|_| format!("--jwks {url}: no answer within 10 s"))?
        .map_err(|e| format!("--jwks {url}: {e}"))?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), 1024 * 1024)
        .collect()
        .await
        .map_err(|e| format!("--jwks {url}: reading the key set failed: {e}"))?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("--jwks {url}: HTTP {status}"));
    }
    String::from_utf8(body.to_vec()).map_err(|_| format!("--jwks {url}: not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// An RSA key no token could be verified with (the rules `ring` verifies by) is refused
    /// at start, naming its kid and what is wrong; a good one beside it changes nothing.
    /// It was taken, and every token signed with it refused as "signature does not verify".
    #[test]
    fn a_broken_rsa_key_in_a_jwks_is_refused_naming_its_kid() {
        use base64::engine::{general_purpose::URL_SAFE_NO_PAD, Engine};
        let text = include_str!("../tests/it/auth_keys/jwks.json");
        assert_eq!(parse_jwks(text).unwrap().len(), 2);
        let set: serde_json::Value = serde_json::from_str(text).unwrap();
        let good = set["keys"][0].clone();
        let n = URL_SAFE_NO_PAD.decode(good["n"].as_str().unwrap()).unwrap();
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        let mut even = n.clone();
        *even.last_mut().unwrap() &= 0xfe;
        let mut leading_zero = vec![0];
        leading_zero.extend(&n);
        for (member, value, says) in [
            (
                "n",
                b64(&n[..128]),
                "is 1024 bits: RSA keys of 2048 to 8192",
            ),
            ("n", b64(&[0xff; 1025]), "is 8200 bits"),
            ("n", "not*base64".into(), "base64url"),
            (
                "n",
                format!("{}=", good["n"].as_str().unwrap()),
                "base64url",
            ),
            ("n", b64(&leading_zero), "no leading zero"),
            ("n", String::new(), "no leading zero"),
            ("n", b64(&even), "is even"),
            ("e", b64(&[1]), "(e) is 1: an odd number from 3"),
            ("e", b64(&[1, 0, 0]), "(e) is 65536"),
            ("e", b64(&[2, 0, 0, 0, 1]), "is 8589934593"),
            ("e", b64(&[1; 6]), "is 6 octets long"),
        ] {
            let mut bad = good.clone();
            bad["kid"] = "broken-1".into();
            bad[member] = value.into();
            let text = serde_json::json!({"keys": [good.clone(), bad]}).to_string();
            let e = parse_jwks(&text)
                .err()
                .unwrap_or_else(|| panic!("{member}: {says}"));
            assert!(
                e.contains(r#"keys[1] (kid "broken-1"): "#) && e.contains(says),
                "{member}: {e}"
            );
        }
        // The largest modulus and the largest exponent allowed are taken.
        let mut big = good.clone();
        big["n"] = b64(&[0xff; 1024]).into();
        big["e"] = b64(&[1, 0xff, 0xff, 0xff, 0xff]).into();
        assert!(parse_jwks(&serde_json::json!({"keys": [big]}).to_string()).is_ok());
    }

    /// A fractional `exp` (RFC 7519 allows one; `jsonwebtoken` verifies it, rounded) is
    /// the token's expiry, not none: a change feed stream ends with it.
    #[test]
    fn a_fractional_exp_is_an_expiry() {
        let exp = |v: Value| exp_s(&serde_json::json!({ "exp": v }));
        assert_eq!(exp(1_765_000_000u64.into()), Some(1_765_000_000));
        assert_eq!(exp(1_765_000_000.4.into()), Some(1_765_000_000));
        assert_eq!(exp(1_765_000_000.5.into()), Some(1_765_000_001));
        assert_eq!(exp((-1.0).into()), None);
        assert_eq!(exp("soon".into()), None);
        assert_eq!(exp_s(&serde_json::json!({})), None);
    }

    #[test]
    fn a_verified_token_with_a_fractional_exp_expires() {
        let config = Config {
            jwt_secret: Some("a-test-secret-of-at-least-32-bytes!!".into()),
            ..Config::parse_from(["tilewarm-server"])
        };
        let v = Verifier::from_config(&config, None).unwrap();
        let exp = crate::tier::now_ms() as f64 / 1000.0 + 600.25;
        let claims = serde_json::json!({ "exp": exp, "tilewarm_access": "verified" });
        let key = EncodingKey::from_secret(b"a-test-secret-of-at-least-32-bytes!!");
        let token = encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap();
        let mut headers = HeaderMap::new();
        let bearer = format!("Bearer {token}");
        headers.insert(AUTHORIZATION, bearer.parse().unwrap());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let caller = rt.block_on(v.caller(&headers)).ok().unwrap();
        assert_eq!(caller.tier, Access::Verified);
        let leeway = config.jwt_leeway_s;
        assert_eq!(caller.expires_at, Some(exp.round() as u64 + leeway));
    }

    #[test]
    fn bearer_scheme() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Bearer"), None);
        for bearer in ["Bearer abc", " bearer", "BEARER  x", "Bearer"] {
            assert!(is_bearer_scheme(bearer.as_bytes()), "{bearer}");
        }
        for other in ["Basic YTpi", "Bearerx abc", "", "Digest username=\"a\""] {
            assert!(!is_bearer_scheme(other.as_bytes()), "{other}");
        }
    }
}
