//! `GET /v1/tiles/{z}/{x}/{y}[?access=<tier>]`: one tile's list and items, the same answer
//! as `POST /v1/batch` with `{"tiles":["z/x/y"],"access":"<tier>"}` (data tile, finer tile,
//! or a coarser one fanned out within `--split-levels` and `--max-response-items`), as a GET
//! URL that browser caches and CDNs can keep.
//!
//! # Who may keep an answer
//! The tier is part of what an answer *is*, so it must be part of any key it is kept under:
//! - `public` answers (the default; `?access=public`) are the same for every caller and
//!   carry `Cache-Control: public, max-age=<seconds>, s-maxage=<shared>`, where the age is
//!   the shortest TTL of what the answer holds (its list and every item), so no cache keeps
//!   an item longer than the TTL policy allows, and `<shared>` is that age but at most
//!   [`SHARED_MAX_AGE_S`]: `POST /v1/invalidate` cannot purge a CDN's copy, so a shared
//!   cache keeps an invalidated answer at most that long;
//! - an answer for a higher tier (`?access=registered|verified|agent`, with a token for it)
//!   carries `Cache-Control: private, max-age=<seconds>`, `Vary: Authorization`, and
//!   `CDN-Cache-Control: no-store` and `Surrogate-Control: no-store` (CDNs that read their
//!   own header instead of `Cache-Control`, RFC 9213): a browser may keep it for that user,
//!   a shared cache (CDN, proxy) must not, since its key (the URL) does not hold the
//!   credential that decided the tier;
//! - errors carry `Cache-Control: no-store`.
//!
//! The tier is decided as for the batch: the caller's verified tier, lowered by `access`
//! (asking above it is a 403 naming both tiers).

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, VARY};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tilewarm::access::Access;
use tilewarm::protocol::{BatchRequest, ErrorCode};
use tilewarm::tile::{TileError, TileId};

use crate::admission::HeldSlot;
use crate::auth::Caller;
use crate::http::{error_response, forbidden_tier, refusal_response};
use crate::App;

/// The longest a shared cache (CDN, proxy) may keep a `public` answer, in seconds
/// (`s-maxage`): `POST /v1/invalidate` does not reach its copies.
pub const SHARED_MAX_AGE_S: u32 = 60;

/// `Cache-Control` of an answer for `tier` holding things whose shortest TTL is `max_age_s`:
/// `public` (shared caches at most [`SHARED_MAX_AGE_S`]) only for the `public` tier,
/// `private` for every other (see the module docs).
pub fn cache_control(tier: Access, max_age_s: u32) -> String {
    if tier == Access::Public {
        let shared = max_age_s.min(SHARED_MAX_AGE_S);
        format!("public, max-age={max_age_s}, s-maxage={shared}")
    } else {
        format!("private, max-age={max_age_s}")
    }
}

/// The tier `query` asks for: `access=<tier>` or nothing (`public`). Any other parameter,
/// or a repeated or unknown tier, is refused with a message saying what is allowed.
fn asked_tier(query: Option<&str>) -> Result<Access, String> {
    let mut asked = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != "access" {
            return Err(format!(
                "unknown query parameter {:?}: the only one is access=<tier>",
                truncate(key)
            ));
        }
        if asked.is_some() {
            return Err("access is given twice: give it at most once".into());
        }
        asked = Some(value.parse::<Access>().map_err(|_| {
            format!(
                "access {:?} is not a tier: public, registered, verified or agent",
                truncate(value)
            )
        })?);
    }
    Ok(asked.unwrap_or(Access::Public))
}

fn truncate(s: &str) -> String {
    s.chars().take(32).collect()
}

/// The tile of the path, checked against the server's zoom limits. A path that is not a
/// tile is a 400; a well-formed `z/x/y` with x or y at or past 2^z names no tile: 404.
fn path_tile(
    app: &App,
    (z, x, y): &(String, String, String),
) -> Result<TileId, (ErrorCode, String)> {
    let text = format!("{z}/{x}/{y}");
    let tile: TileId = text.parse().map_err(|e| {
        let code = match e {
            TileError::CoordOutOfRange { .. } => ErrorCode::NotFound,
            _ => ErrorCode::BadRequest,
        };
        (code, format!("the path's tile is not valid: {e}"))
    })?;
    let min = app.limits.min_zoom;
    if tile.z() < min {
        return Err((
            ErrorCode::BadRequest,
            format!(
                "tile {text}: zoom {} is too coarse, zoom must be at least {min}",
                tile.z()
            ),
        ));
    }
    Ok(tile)
}

/// The shortest TTL in an answer: its lists' and items' `ttl` (the rest is skipped).
#[derive(Deserialize)]
struct Ttls {
    tiles: Vec<HasTtl>,
    items: Vec<HasTtl>,
}

/// Every other field (ids, data, ...) is skipped by serde without being kept.
#[derive(Deserialize)]
struct HasTtl {
    ttl: Option<u32>,
}

/// The shortest TTL of what `json` (a batch answer) holds, in seconds; 0 (do not keep)
/// when it cannot be read or holds no TTL at all.
pub fn min_ttl_s(json: &str) -> u32 {
    let Ok(t) = serde_json::from_str::<Ttls>(json) else {
        return 0;
    };
    t.tiles
        .iter()
        .chain(&t.items)
        .map(|h| h.ttl.unwrap_or(0))
        .min()
        .unwrap_or(0)
}

fn no_store(mut r: Response) -> Response {
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `GET /v1/tiles/{z}/{x}/{y}`.
pub async fn tiles_handler(
    State(app): State<Arc<App>>,
    caller: Option<Extension<Caller>>,
    slot: Option<Extension<HeldSlot>>,
    headers: HeaderMap,
    path: Result<Path<(String, String, String)>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Response {
    let slot = slot.map(|s| s.0).unwrap_or_default();
    let Ok(Path(path)) = path else {
        return no_store(error_response(
            ErrorCode::BadRequest,
            "the path must be /v1/tiles/{z}/{x}/{y} with decimal z, x and y",
        ));
    };
    no_cache_on_error(
        answer(
            &app,
            caller.map(|c| c.0),
            &slot,
            &headers,
            &path,
            query.as_deref(),
        )
        .await,
    )
}

fn no_cache_on_error(r: Response) -> Response {
    if r.status().is_success() {
        r
    } else {
        no_store(r)
    }
}

async fn answer(
    app: &App,
    caller: Option<Caller>,
    slot: &HeldSlot,
    headers: &HeaderMap,
    path: &(String, String, String),
    query: Option<&str>,
) -> Response {
    let caller = match caller {
        Some(c) => c,
        None => match app.auth.caller(headers).await {
            Ok(c) => c,
            Err(e) => return crate::http::credential_refused(e),
        },
    };
    let tile = match path_tile(app, path) {
        Ok(t) => t,
        Err((code, m)) => return error_response(code, m),
    };
    let asked = match asked_tier(query) {
        Ok(a) => a,
        Err(m) => return error_response(ErrorCode::BadRequest, m),
    };
    let tier = match tilewarm::access::effective_tier(caller.tier, asked) {
        Ok(tier) => tier,
        Err(above) => return forbidden_tier(above, app.auth.bearer_verified(headers)),
    };
    let request = BatchRequest {
        tiles: vec![tile],
        ids: Vec::new(),
        access: tier,
    };
    let json = match crate::batch::answer(app, &request, tier, slot).await {
        Ok(json) => json,
        Err(refusal) => return refusal_response(app, refusal),
    };
    let max_age = min_ttl_s(&json);
    let mut r = (
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        json,
    )
        .into_response();
    let h = r.headers_mut();
    crate::http::data_headers(app, tier, h);
    if let Ok(v) = HeaderValue::from_str(&cache_control(tier, max_age)) {
        h.insert(CACHE_CONTROL, v);
    }
    if tier != Access::Public {
        h.insert(VARY, HeaderValue::from_static("authorization"));
        // CDNs that obey their own header over `Cache-Control` (RFC 9213) must not keep it
        // either.
        h.insert("cdn-cache-control", HeaderValue::from_static("no-store"));
        h.insert("surrogate-control", HeaderValue::from_static("no-store"));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_public_tier_may_be_kept_by_shared_caches() {
        assert_eq!(
            cache_control(Access::Public, 30),
            "public, max-age=30, s-maxage=30"
        );
        // A CDN's copy is not purged by /v1/invalidate: it keeps it at most a minute.
        assert_eq!(
            cache_control(Access::Public, 3600),
            format!("public, max-age=3600, s-maxage={SHARED_MAX_AGE_S}")
        );
        for t in [Access::Registered, Access::Verified, Access::Agent] {
            let cc = cache_control(t, 30);
            assert!(cc.starts_with("private,") && !cc.contains("public"), "{cc}");
        }
    }

    #[test]
    fn the_query_names_one_tier_or_none() {
        assert_eq!(asked_tier(None), Ok(Access::Public));
        assert_eq!(asked_tier(Some("")), Ok(Access::Public));
        assert_eq!(asked_tier(Some("access=agent")), Ok(Access::Agent));
        let e = asked_tier(Some("access=admin")).unwrap_err();
        assert!(
            e.contains("\"admin\"") && e.contains("public, registered"),
            "{e}"
        );
        let e = asked_tier(Some("tier=agent")).unwrap_err();
        assert!(e.contains("\"tier\"") && e.contains("access=<tier>"), "{e}");
        assert!(asked_tier(Some("access=public&access=agent")).is_err());
    }

    #[test]
    fn the_max_age_is_the_shortest_ttl_held() {
        let j = r#"{"access":"public","tiles":[{"tile":"14/1/2","ids":["a","b"],"ttl":300}],
            "items":[{"id":"a","ttl":40,"data":{"ttl":1}},{"id":"b","ttl":90,"data":null}],"missing":[]}"#;
        assert_eq!(min_ttl_s(j), 40, "the payload's own ttl is not read");
        let empty = r#"{"tiles":[{"tile":"14/1/2","ids":[],"ttl":120}],"items":[],"missing":[]}"#;
        assert_eq!(min_ttl_s(empty), 120);
        assert_eq!(min_ttl_s("not json"), 0);
    }
}
