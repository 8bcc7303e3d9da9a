//! The HTTP surface: routes, the protocol's JSON error bodies for every client mistake
//! (including the ones axum would answer in plain text), who is calling ([`crate::auth`]),
//! CORS, static files, metrics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Extension, Request, State};
use axum::handler::HandlerWithoutStateExt;
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::Router;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tilewarm::access::{effective_tier, AboveCredential, Access};
use tilewarm::protocol::{decode_request, BatchRequest, ErrorBody, ErrorCode, Limits};
use tower_http::classify::ServerErrorsFailureClass;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tower_http::services::ServeDir;
use tower_http::trace::TraceLayer;

use crate::admission::HeldSlot;
use crate::auth::Caller;
use crate::batch;
use crate::client_addr::ClientAddr;
use crate::App;

/// A protocol error body with its status.
pub fn error_response(code: ErrorCode, message: impl Into<String>) -> Response {
    let status =
        StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = ErrorBody {
        code,
        message: message.into(),
    };
    (
        status,
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body.to_json(),
    )
        .into_response()
}

/// The response header naming the tier an answer was filtered for, or on a 403 for a tier
/// above the credential, the tier the credential gives.
pub use tilewarm::protocol::ACCESS_HEADER;

/// The response header declaring the data's extent (`--bounds`), `west,south,east,north`.
pub use tilewarm::protocol::BOUNDS_HEADER;

/// The headers of an answer with data: the tier it was filtered for and, with `--bounds`,
/// the data's extent, which clients that declare none adopt
/// (`tilewarm::client::Client::on_declared_response`).
pub fn data_headers(app: &App, tier: Access, headers: &mut axum::http::HeaderMap) {
    headers.insert(ACCESS_HEADER, HeaderValue::from_static(tier.as_str()));
    if let Some(v) = &app.bounds_header {
        headers.insert(BOUNDS_HEADER, v.clone());
    }
}

/// 401 for a refused credential: the protocol's error body and
/// `WWW-Authenticate: Bearer error="invalid_token"`.
pub fn unauthorized(message: impl Into<String>) -> Response {
    let mut r = error_response(ErrorCode::Unauthorized, message);
    r.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer error=\"invalid_token\""),
    );
    r
}

/// The `WWW-Authenticate` challenge of a 401 for a request that sent no bearer token (none
/// at all, or an `Authorization` of another scheme): no error code (RFC 6750 section 3.1:
/// a request lacking authentication information, or using an unsupported authentication
/// method, gets none; `invalid_token` would tell the client its token is bad), and a
/// realm, as the `Bearer` scheme needs at least one parameter.
pub const NO_CREDENTIAL_CHALLENGE: &str = "Bearer realm=\"tilewarm\"";

/// The `WWW-Authenticate` challenge of a 400 for an `Authorization: Bearer` with no token:
/// RFC 6750 section 3.1's `invalid_request` (a malformed request, not a bad token).
pub const INVALID_REQUEST_CHALLENGE: &str = "Bearer error=\"invalid_request\"";

/// 400 `bad_request` for an `Authorization: Bearer` with no token
/// ([`crate::auth::CredentialError::NoToken`]), with `WWW-Authenticate:`
/// [`INVALID_REQUEST_CHALLENGE`]: a client that refreshes its token on a 401 would only
/// send the same request again.
pub fn no_token(message: impl Into<String>) -> Response {
    let mut r = error_response(ErrorCode::BadRequest, message);
    r.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static(INVALID_REQUEST_CHALLENGE),
    );
    r
}

/// The `WWW-Authenticate` challenge of a 403 for a verified bearer token that lacks the
/// tier or claim asked for (RFC 6750 section 3.1, `insufficient_scope`).
pub const INSUFFICIENT_SCOPE_CHALLENGE: &str = "Bearer error=\"insufficient_scope\"";

/// 401 for a request that needs a credential and sent no bearer token: the protocol's
/// error body and `WWW-Authenticate:` [`NO_CREDENTIAL_CHALLENGE`].
pub fn credential_required(message: impl Into<String>) -> Response {
    let mut r = error_response(ErrorCode::Unauthorized, message);
    r.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static(NO_CREDENTIAL_CHALLENGE),
    );
    r
}

/// 502 `upstream_error` with `Retry-After`: the caller's token needs a key that the
/// `--jwks` URL's key server could not provide ([`crate::jwks`]); the token may be fine.
pub fn keys_unavailable(e: crate::auth::KeysUnavailable) -> Response {
    let mut r = error_response(ErrorCode::UpstreamError, e.message);
    r.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        HeaderValue::from(e.retry_after_s.max(1)),
    );
    r
}

/// The answer to a credential that was not accepted: 401 (400 for `Bearer` with no token),
/// or 502 when it could not be checked.
pub fn credential_refused(e: crate::auth::CredentialError) -> Response {
    match e {
        crate::auth::CredentialError::Unauthorized(e) => unauthorized(e.0),
        crate::auth::CredentialError::NotBearer(e) => credential_required(e.0),
        crate::auth::CredentialError::NoToken(m) => no_token(m),
        crate::auth::CredentialError::KeysUnavailable(e) => keys_unavailable(e),
    }
}

/// 403 for a request `access` above the caller's verified tier, naming both tiers (the
/// core's message, the edge's too), with the verified tier in [`ACCESS_HEADER`]: a client
/// that asked above it follows it down instead of keeping what the higher tier showed.
/// When the tier came from a verified bearer token (`bearer`), also
/// `WWW-Authenticate:` [`INSUFFICIENT_SCOPE_CHALLENGE`].
pub fn forbidden_tier(above: AboveCredential, bearer: bool) -> Response {
    let mut r = forbidden(above.to_string(), bearer);
    r.headers_mut().insert(
        ACCESS_HEADER,
        HeaderValue::from_static(above.verified.as_str()),
    );
    r
}

/// 403 `forbidden` with `message`; for a verified bearer token (`bearer`) that lacks what
/// is needed, with `WWW-Authenticate:` [`INSUFFICIENT_SCOPE_CHALLENGE`].
pub fn forbidden(message: impl Into<String>, bearer: bool) -> Response {
    let mut r = error_response(ErrorCode::Forbidden, message);
    if bearer {
        r.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(INSUFFICIENT_SCOPE_CHALLENGE),
        );
    }
    r
}

fn json_response(body: String) -> Response {
    (
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body,
    )
        .into_response()
}

/// `route` behind admission (crate::admission): the per-caller limit, then a server-wide
/// bound of its own; other methods are a 405 saying `allowed`.
fn admitted(
    app: &Arc<App>,
    route: MethodRouter<Arc<App>>,
    shed: &Arc<crate::admission::Shed>,
    allowed: &'static str,
) -> MethodRouter<Arc<App>> {
    // Outermost last: the per-caller limit, then the body, then a slot.
    crate::admission::shed(route, Arc::clone(shed))
        .layer(middleware::from_fn_with_state(Arc::clone(app), body_first))
        .layer(middleware::from_fn_with_state(
            Arc::clone(app),
            crate::admission::per_caller,
        ))
        .fallback(move || async move { error_response(ErrorCode::MethodNotAllowed, allowed) })
}

/// The router for `app`.
pub fn router(app: Arc<App>) -> Result<Router, String> {
    let mut router = Router::new()
        .route(
            "/v1/batch",
            admitted(
                &app,
                post(batch_handler),
                &app.sheds.batch,
                "/v1/batch accepts POST (and OPTIONS for CORS preflight)",
            ),
        )
        .route(
            "/v1/tiles/{z}/{x}/{y}",
            // Its own server-wide bound, of the batch's sizes (see crate::tiles).
            admitted(
                &app,
                get(crate::tiles::tiles_handler),
                &app.sheds.tiles,
                "/v1/tiles/{z}/{x}/{y} accepts GET (and OPTIONS for CORS preflight)",
            ),
        )
        .route(
            "/v1/invalidate",
            // Who is calling and the per-caller limit as for the batch (refused credentials
            // are limited per address there); the handler adds the admin check and the
            // server-wide --invalidate-rate.
            post(invalidate_handler)
                .layer(middleware::from_fn_with_state(
                    Arc::clone(&app),
                    crate::admission::per_caller,
                ))
                .fallback(|| async {
                    error_response(
                        ErrorCode::MethodNotAllowed,
                        "/v1/invalidate accepts POST (and OPTIONS for CORS preflight)",
                    )
                }),
        )
        .route(
            "/v1/changes",
            // The per-caller limit as for the batch (a reconnect loop is refused early);
            // open streams are capped per caller and server-wide in the handler.
            get(changes_handler)
                .layer(middleware::from_fn_with_state(
                    Arc::clone(&app),
                    crate::admission::per_caller,
                ))
                .fallback(|| async {
                    error_response(ErrorCode::MethodNotAllowed, "/v1/changes accepts GET")
                }),
        )
        .route(
            "/healthz",
            get(healthz).fallback(|| async {
                error_response(ErrorCode::MethodNotAllowed, "/healthz accepts GET")
            }),
        );
    if app.config.metrics_public {
        router = router.route(
            "/metrics",
            get(metrics).fallback(|| async {
                error_response(ErrorCode::MethodNotAllowed, "/metrics accepts GET")
            }),
        );
    }
    if app.config.dev_tokens {
        router = router.route(
            "/dev/token",
            post(dev_token).fallback(|| async {
                error_response(ErrorCode::MethodNotAllowed, "/dev/token accepts POST")
            }),
        );
    }
    router = match &app.config.www {
        Some(dir) => router.fallback_service(
            ServeDir::new(dir)
                .append_index_html_on_directories(true)
                .not_found_service(not_found.into_service()),
        ),
        None => router.fallback(not_found),
    };
    // The client's address first, for everything keyed by it (crate::client_addr).
    let mut router = router
        .layer(middleware::from_fn_with_state(Arc::clone(&app), count))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&app),
            crate::client_addr::layer,
        ))
        .with_state(Arc::clone(&app));
    if let Some(cors) = cors_layer(&app.config.cors)? {
        router = router.layer(cors);
    }
    // A 503 is a refusal (admission, degraded mode) the server chose and counts in
    // `tilewarm_http_requests_total`; logging each at ERROR would add a write per refusal exactly
    // when the server is past its capacity. Other server errors stay at ERROR.
    let on_failure = |class: ServerErrorsFailureClass, latency: Duration, _: &tracing::Span| {
        let ms = latency.as_millis();
        match class {
            ServerErrorsFailureClass::StatusCode(s) if s == StatusCode::SERVICE_UNAVAILABLE => {
                tracing::debug!(latency_ms = ms, "refused: 503")
            }
            class => tracing::error!(latency_ms = ms, %class, "response failed"),
        }
    };
    Ok(router.layer(TraceLayer::new_for_http().on_failure(on_failure)))
}

/// The router of `--metrics-listen`: `GET /metrics` only.
pub fn metrics_router(app: Arc<App>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .fallback(|| async {
            error_response(ErrorCode::NotFound, "this address serves GET /metrics only")
        })
        .with_state(app)
}

/// `any`, `none`, or a comma-separated origin list. `Authorization` is an allowed request
/// header (a bearer token is not a cookie: no `Access-Control-Allow-Credentials` is needed,
/// and a page can only send a token it holds) and the tier header is exposed.
fn cors_layer(spec: &str) -> Result<Option<CorsLayer>, String> {
    let base = || {
        CorsLayer::new()
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers([
                CONTENT_TYPE,
                AUTHORIZATION,
                axum::http::HeaderName::from_static("last-event-id"),
            ])
            // A cross-origin page reads only what is exposed: the tier and extent, and the
            // `Retry-After` of a 429/503 (else its client backs off blind) and the
            // `WWW-Authenticate` of a 401, as the edge worker exposes them.
            .expose_headers([
                axum::http::HeaderName::from_static(ACCESS_HEADER),
                axum::http::HeaderName::from_static(BOUNDS_HEADER),
                axum::http::header::RETRY_AFTER,
                WWW_AUTHENTICATE,
            ])
            .max_age(Duration::from_secs(600))
    };
    match spec.trim() {
        "none" => Ok(None),
        "any" | "*" => Ok(Some(base().allow_origin(Any))),
        list => {
            let origins = list
                .split(',')
                .map(|o| o.trim())
                .filter(|o| !o.is_empty())
                .map(|o| {
                    check_origin(o)?;
                    HeaderValue::from_str(o)
                        .map_err(|_| format!("--cors: {o:?} is not a valid origin"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if origins.is_empty() {
                return Err("--cors: give any, none, or a comma-separated list of origins".into());
            }
            Ok(Some(base().allow_origin(AllowOrigin::list(origins))))
        }
    }
}

/// One `--cors` origin as a browser writes it in `Origin` (`scheme://host[:port]`,
/// lowercase, no path): CORS compares the bytes, so `a.example`, `https://a.example/` or
/// `https://A.example` would start a server whose page is refused by every browser.
fn check_origin(o: &str) -> Result<(), String> {
    let why = if o == "any" || o == "none" || o == "*" {
        Some("`any` and `none` stand alone, not in a list")
    } else if let Some((scheme, rest)) = o.split_once("://") {
        let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_lowercase())
            && scheme
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
        if !scheme_ok {
            Some("the scheme must be lowercase letters, digits, +, - or .")
        } else if rest.is_empty() {
            Some("it has no host")
        } else if rest.contains(['/', '?', '#', '@']) {
            Some("an origin has no path, query, fragment or user (drop what follows the host and port)")
        } else if rest.chars().any(|c| c.is_ascii_uppercase()) {
            Some("browsers send the host in lowercase")
        } else if (scheme == "https" && rest.ends_with(":443"))
            || (scheme == "http" && rest.ends_with(":80"))
        {
            Some("browsers leave out the scheme's default port")
        } else {
            None
        }
    } else {
        Some("it has no scheme")
    };
    match why {
        None => Ok(()),
        Some(why) => Err(format!(
            "--cors: {o:?} is not an origin ({why}): give any, none, or a comma-separated list \
             of origins as browsers send them, scheme://host[:port] (https://a.example, \
             http://localhost:3000)"
        )),
    }
}

/// Counts every response by route and status.
async fn count(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let route = match req.uri().path() {
        "/v1/batch" => "/v1/batch",
        "/v1/invalidate" => "/v1/invalidate",
        "/v1/changes" => "/v1/changes",
        p if p.starts_with("/v1/tiles/") => "/v1/tiles",
        "/healthz" => "/healthz",
        "/metrics" => "/metrics",
        _ => "other",
    };
    let response = next.run(req).await;
    app.metrics.count_request(route, response.status().as_u16());
    response
}

async fn not_found() -> Response {
    error_response(
        ErrorCode::NotFound,
        "no such route: the API is POST /v1/batch, GET /v1/tiles/{z}/{x}/{y}, POST /v1/invalidate, GET /v1/changes and GET /healthz (GET /metrics with --metrics-public, or on --metrics-listen)",
    )
}

fn is_json(ct: &HeaderValue) -> bool {
    let Ok(ct) = ct.to_str() else { return false };
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    // text/plain lets a browser skip the CORS preflight; the body is still JSON.
    mime == "application/json"
        || mime == "text/plain"
        || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// A request's body, whole: at most `max_body_bytes` (a larger declared length is refused
/// before anything is read) and within `--body-timeout-ms`; else the error answer.
async fn read_body(app: &App, headers: &HeaderMap, body: Body) -> Result<Bytes, Response> {
    let max = app.limits.max_body_bytes;
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared.filter(|&l| l > max as u64) {
        return Err(error_response(
            ErrorCode::PayloadTooLarge,
            format!("body is {len} bytes, at most {max} are allowed"),
        ));
    }
    let read = tokio::time::timeout(
        app.admission.body_timeout,
        Limited::new(body, max).collect(),
    );
    let Ok(read) = read.await else {
        return Err(error_response(
            ErrorCode::RequestTimeout,
            format!(
                "the body did not arrive within {} ms",
                app.admission.body_timeout.as_millis()
            ),
        ));
    };
    match read {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(error_response(
            ErrorCode::PayloadTooLarge,
            format!("body is more than {max} bytes, at most {max} are allowed"),
        )),
        Err(e) => Err(error_response(
            ErrorCode::BadRequest,
            format!("could not read the body: {e}"),
        )),
    }
}

/// Middleware reading the body before the request waits for a batch slot: a slot is for
/// the server's own work, so a client sending its body slowly holds a connection (bounded
/// by `--max-connections`), not a slot.
async fn body_first(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    match read_body(&app, &parts.headers, body).await {
        Ok(bytes) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Err(refused) => refused,
    }
}

async fn batch_handler(
    State(app): State<Arc<App>>,
    caller: Option<Extension<Caller>>,
    slot: Option<Extension<HeldSlot>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let start = Instant::now();
    let slot = slot.map(|s| s.0).unwrap_or_default();
    let response = batch_inner(&app, caller.map(|c| c.0), &slot, &headers, body).await;
    app.metrics.batch_latency.observe(start.elapsed());
    response
}

async fn batch_inner(
    app: &App,
    caller: Option<Caller>,
    slot: &HeldSlot,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    // Who is calling, before anything is read: a refused credential costs no body.
    // (Admission verified it already; verified here only when called without it.)
    let caller = match caller {
        Some(c) => c,
        None => match app.auth.caller(headers).await {
            Ok(c) => c,
            Err(e) => return credential_refused(e),
        },
    };
    let content_type = headers.get(CONTENT_TYPE).map(HeaderValue::as_bytes);
    if let Err(e) = check_content_type(content_type) {
        return error_response(e.code, e.message);
    }
    let bytes = match read_body(app, headers, body).await {
        Ok(b) => b,
        Err(refused) => return refused,
    };
    let request = match parse_batch(content_type, &bytes, &app.limits) {
        Ok(r) => r,
        Err(e) => return error_response(e.code, e.message),
    };
    // The body may only lower the tier (the core's rule, the edge's too).
    let tier = match effective_tier(caller.tier, request.access) {
        Ok(tier) => tier,
        Err(above) => return forbidden_tier(above, app.auth.bearer_verified(headers)),
    };
    match batch::answer(app, &request, tier, slot).await {
        Ok(json) => {
            let mut r = json_response(json);
            data_headers(app, tier, r.headers_mut());
            r
        }
        Err(refusal) => refusal_response(app, refusal),
    }
}

/// A request the batch path refused, as its response: an `overloaded` (503) or
/// `rate_limited` (429, an upstream's passed on) one with `Retry-After` (the upstream's, else
/// `--retry-after-s`), any other as the JSON error.
pub fn refusal_response(app: &App, refusal: batch::Refusal) -> Response {
    let retry_after_s = refusal.retry_after_s.unwrap_or(app.config.retry_after_s);
    match refusal.code {
        ErrorCode::Overloaded => {
            crate::admission::overloaded_because(refusal.message, retry_after_s)
        }
        ErrorCode::RateLimited => crate::admission::rate_limited_because(
            refusal.message,
            std::time::Duration::from_secs(retry_after_s),
        ),
        code => error_response(code, refusal.message),
    }
}

/// `POST /v1/invalidate`: a caller whose verified token has [`crate::auth::ADMIN_CLAIM`]
/// drops what the body names from every tier: the change goes on the stream (`XADD`), is
/// deleted from this instance's tier and write guard, and the answer is
/// `{"id":"<stream id>"}`. No token: 401; a token without the claim: 403; past
/// `--invalidate-rate` (server-wide, checked after the claim so that nobody else can use
/// it up): 429 with `Retry-After`. The other instances and the feed's clients apply it
/// from the stream ([`crate::stream`]).
async fn invalidate_handler(
    State(app): State<Arc<App>>,
    caller: Option<Extension<Caller>>,
    client: Option<Extension<ClientAddr>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let caller = match caller {
        Some(c) => c.0,
        None => {
            match crate::admission::authenticate(&app, &headers, client.map(|c| c.0 .0)).await {
                Ok(c) => c,
                Err(refused) => return refused.into_response(),
            }
        }
    };
    if headers.get(AUTHORIZATION).is_none() {
        return credential_required(format!(
            "POST /v1/invalidate needs a bearer token with the {} claim",
            crate::auth::ADMIN_CLAIM
        ));
    }
    if !caller.admin {
        return forbidden(
            format!(
                "this token may not invalidate: POST /v1/invalidate needs \"{}\": true in a verified token",
                crate::auth::ADMIN_CLAIM
            ),
            app.auth.bearer_verified(&headers),
        );
    }
    if let Err(wait) = app.admission.invalidation() {
        return crate::admission::rate_limited_because(
            format!(
                "too many invalidations: at most {} a second with bursts of {} (--invalidate-rate, --invalidate-burst); retry in {} ms",
                app.config.invalidate_rate,
                app.config.invalidate_burst,
                wait.as_millis().max(1)
            ),
            wait,
        );
    }
    let content_type = headers.get(CONTENT_TYPE).map(HeaderValue::as_bytes);
    if let Err(e) = check_content_type(content_type) {
        return error_response(e.code, e.message);
    }
    let max = app
        .limits
        .max_request_bytes()
        .min(app.limits.max_body_bytes);
    let read = tokio::time::timeout(
        app.admission.body_timeout,
        Limited::new(body, max).collect(),
    );
    let bytes = match read.await {
        Ok(Ok(c)) => c.to_bytes(),
        Ok(Err(_)) => {
            return error_response(
                ErrorCode::PayloadTooLarge,
                format!("body is more than {max} bytes, at most {max} are allowed"),
            )
        }
        Err(_) => {
            return error_response(ErrorCode::RequestTimeout, "the body did not arrive in time")
        }
    };
    let inv = match tilewarm::protocol::decode_invalidation(&bytes, &app.limits) {
        Ok(i) => i,
        Err(e) => return error_response(e.code(), e.to_string()),
    };
    // This instance's tier first: the stream's reader hands the entry to this instance's
    // followers as soon as Redis has it, and a follower must not read the old value back
    // from here. Then the stream, then the tier again: an instance whose write-back lands
    // after that delete finds the entry on the stream (crate::stream).
    if let Err(e) = crate::invalidate::invalidate(&app, &inv).await {
        // Until the caller retries, a Redis that comes back with its data would serve
        // what this call covers: reads skip it until an `all` lands.
        crate::invalidate::spawn_everything_until_applied(&app, crate::tier::ReadHold::Endpoint);
        return crate::admission::overloaded_because(
            format!("this instance's {e}: nothing was published, retry"),
            app.config.retry_after_s,
        );
    }
    let id = match app.changes.publish(&inv).await {
        Ok(id) => id,
        Err(e) => {
            return crate::admission::overloaded_because(
                format!(
                    "{e}: this instance's tier dropped it but no other instance was told, retry"
                ),
                app.config.retry_after_s,
            )
        }
    };
    if let Err(e) =
        crate::invalidate::invalidate_again(&app, &inv, crate::invalidate::Reach::Anywhere).await
    {
        // A write-back that landed between the two deletes is still in Redis, and this
        // instance's reader skips its own entries: held as after the first.
        crate::invalidate::spawn_everything_until_applied(&app, crate::tier::ReadHold::Endpoint);
        return crate::admission::overloaded_because(
            format!("the change is on the stream as {id} but this instance's {e}; retry"),
            app.config.retry_after_s,
        );
    }
    json_response(serde_json::json!({ "id": id }).to_string())
}

/// How long `caller`'s credential still verifies (`None`: it has none that expires).
fn expires_in(caller: &Caller) -> Option<std::time::Duration> {
    let at = caller.expires_at?;
    let now = std::time::Duration::from_millis(crate::tier::now_ms());
    Some(std::time::Duration::from_secs(at).saturating_sub(now))
}

/// `GET /v1/changes`: the change feed as server-sent events (`ready`, then `invalidate`
/// events with the invalidation as data, or `reset`), each with `id:` = its stream id;
/// `Last-Event-ID` resumes after that id. Same authentication as `/v1/batch` (a sent token
/// must verify; none is `public`): events carry ids, tiles and classes, never item data,
/// and ids only to the top tier (a lower tier gets an event with ids as `reset`,
/// [`crate::stream`]).
///
/// `?follow=false` ends the stream after the events stored after `Last-Event-ID` (a poll).
/// At most `--changes-max-per-caller` open streams per caller (verified `sub`, else
/// address; `--unlimited-sub` callers are not capped), then 429. A followed stream ends
/// with an `expired` event when the caller's token stops verifying ([`crate::stream`]).
async fn changes_handler(
    State(app): State<Arc<App>>,
    caller: Option<Extension<Caller>>,
    client: Option<Extension<ClientAddr>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    let caller = match caller {
        Some(c) => c.0,
        None => match app.auth.caller(&headers).await {
            Ok(c) => c,
            Err(e) => return credential_refused(e),
        },
    };
    let unlimited = caller
        .sub
        .as_ref()
        .is_some_and(|sub| app.config.unlimited_subs.iter().any(|u| u == sub));
    let slot = (!unlimited).then(|| {
        (
            crate::admission::caller_key(&caller, client.map(|c| c.0 .0)),
            app.config.changes_max_per_caller,
        )
    });
    let mut follow = true;
    for pair in uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        match pair {
            "follow=true" => follow = true,
            "follow=false" => follow = false,
            other => {
                let shown: String = other.chars().take(64).collect();
                return error_response(
                    ErrorCode::BadRequest,
                    format!("query {shown:?}: the only parameter is follow=true or follow=false"),
                );
            }
        }
    }
    let after = match headers.get("last-event-id") {
        None => None,
        Some(v) => match v
            .to_str()
            .ok()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .map(str::parse::<tilewarm::protocol::StreamId>)
        {
            None => None,
            Some(Ok(id)) => Some(id),
            Some(Err(e)) => {
                return error_response(ErrorCode::BadRequest, format!("Last-Event-ID: {e}"))
            }
        },
    };
    match app
        .changes
        .subscribe(after, caller.tier, follow, slot, expires_in(&caller))
        .await
    {
        Ok(Ok(sse)) => sse.into_response(),
        Ok(Err(crate::stream::Full::Server)) => crate::admission::overloaded_because(
            format!(
                "{} change feed streams are open (--changes-max-subscribers); retry later",
                app.config.changes_max_subscribers
            ),
            app.config.retry_after_s,
        ),
        Ok(Err(crate::stream::Full::Caller)) => crate::admission::rate_limited_because(
            format!(
                "this caller has {} change feed streams open (--changes-max-per-caller); close one or retry later",
                app.config.changes_max_per_caller
            ),
            std::time::Duration::from_secs(app.admission.retry_after_s),
        ),
        Err(e) => crate::admission::overloaded_because(e.to_string(), app.config.retry_after_s),
    }
}

/// `POST /dev/token {"access":"<tier>", "admin": true?}` (`--dev-tokens` only): a
/// short-lived token for that tier (allowed to invalidate with `admin`), to loopback
/// callers only: the client's address ([`crate::client_addr`]), so that behind a trusted
/// proxy on the same host a remote caller is refused.
async fn dev_token(State(app): State<Arc<App>>, req: Request) -> Response {
    if !ClientAddr::of(&req).is_some_and(|ip| ip.is_loopback()) {
        return error_response(
            ErrorCode::Forbidden,
            "/dev/token answers loopback callers only",
        );
    }
    if req
        .extensions()
        .get::<crate::client_addr::ClientForwarded>()
        .is_some()
    {
        return error_response(
            ErrorCode::Forbidden,
            "/dev/token answers loopback callers that reach the server directly: this \
             request came through a trusted proxy (--trusted-proxy), whose forwarded address \
             a client can write itself; call /dev/token on the server's own address",
        );
    }
    let bytes = match Limited::new(req.into_body(), 1024).collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => {
            return error_response(ErrorCode::PayloadTooLarge, "body is more than 1024 bytes");
        }
    };
    let body = serde_json::from_slice::<serde_json::Value>(&bytes).ok();
    let asked = body
        .as_ref()
        .and_then(|v| v.get("access").and_then(|a| a.as_str()).map(str::to_owned));
    let admin = body.as_ref().and_then(|v| v.get("admin")) == Some(&serde_json::Value::Bool(true));
    let Some(tier) = asked.and_then(|a| a.parse::<Access>().ok()) else {
        return error_response(
            ErrorCode::BadRequest,
            "send {\"access\":\"<tier>\"} with a tier: public, registered, verified or agent",
        );
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    match app.auth.dev_token(tier, admin, now) {
        Some(token) => json_response(
            serde_json::json!({
                "token": token,
                "access": tier,
                "expires_in": crate::auth::DEV_TOKEN_TTL_S,
            })
            .to_string(),
        ),
        None => error_response(ErrorCode::Internal, "no dev signing key"),
    }
}

/// A `Content-Type` the batch endpoint accepts, or the 415 body naming what was sent.
/// No header is accepted (the body must still be JSON).
fn check_content_type(content_type: Option<&[u8]>) -> Result<(), ErrorBody> {
    let Some(ct) = content_type else {
        return Ok(());
    };
    if HeaderValue::from_bytes(ct).is_ok_and(|v| is_json(&v)) {
        return Ok(());
    }
    let got = String::from_utf8_lossy(ct)
        .chars()
        .take(64)
        .collect::<String>();
    Err(ErrorBody {
        code: ErrorCode::UnsupportedMediaType,
        message: format!(
            "content-type {got:?} is not accepted: send application/json (or text/plain)"
        ),
    })
}

/// Everything `POST /v1/batch` checks about a request before answering it, as a pure
/// function of the `Content-Type` header's bytes, the body and the limits: the media type,
/// the size, then the core's bounded [`decode_request`] (syntax, counts, zooms, ids, tier).
/// The handler reads the body (refusing one longer than `max_body_bytes` while reading)
/// and calls this; the fuzz target `server_request` calls it directly.
pub fn parse_batch(
    content_type: Option<&[u8]>,
    body: &[u8],
    limits: &Limits,
) -> Result<BatchRequest, ErrorBody> {
    check_content_type(content_type)?;
    let max = limits.max_body_bytes;
    if body.len() > max {
        return Err(ErrorBody {
            code: ErrorCode::PayloadTooLarge,
            message: format!("body is {} bytes, at most {max} are allowed", body.len()),
        });
    }
    decode_request(body, limits).map_err(|e| ErrorBody::from(&e))
}

async fn healthz(State(app): State<Arc<App>>) -> Response {
    let holds: Vec<&str> = app
        .tier
        .read_holds()
        .into_iter()
        .map(|h| h.name())
        .collect();
    let jwks = app.auth.remote_keys().map(|k| k.health().state);
    let stream_reading = app.changes.is_redis().then(|| {
        app.changes
            .stats
            .reading
            .load(std::sync::atomic::Ordering::Relaxed)
    });
    // Not reading the change stream, this instance misses other instances' changes.
    let owner = app.tier.prefix_owner();
    let degraded = app.tier.redis_degraded().unwrap_or(false)
        || owner.is_some_and(|o| o != crate::tier::PrefixOwner::This)
        || !holds.is_empty()
        || stream_reading == Some(false)
        || jwks.is_some_and(|s| s.degraded());
    let body = serde_json::json!({
        "status": if degraded { "degraded" } else { "ok" },
        "tier": app.tier.name(),
        "redis_degraded": app.tier.redis_degraded(),
        "redis_reads_held_by": holds,
        // Whose the --redis-prefix is (its owner record): `this` deployment's, `other`
        // (the tier is not used: the log says what differs), or `unchecked` (Redis has
        // not answered yet); null without Redis.
        "redis_prefix_owner": owner.map(|o| o.name()),
        "origin": app.origin.kind(),
        // No count of the data set: this answers anyone, and the total would count items
        // above `public` (the operator's is `tilewarm_origin_dataset_items` on /metrics).
        "changes_connected": app.origin.change_feed().map(|f| f.stats.connected.load(std::sync::atomic::Ordering::Relaxed))
            .or_else(|| app.origin.upstream_feed().map(|f| f.stats.state() == crate::origin::upstream_changes::FeedState::Connected)),
        // The upstream's change feed (an upstream origin): `connected`, `connecting`, or why
        // it is not followed (`not_found`, `refused`, `redirected`, `not_a_feed`); null when
        // none is.
        "upstream_changes": app.origin.upstream_feed().map(|f| f.stats.state().name()),
        // With Redis, whether this instance's reader of the change stream reads it (null
        // without Redis): while it does not, other instances' changes do not reach it.
        "change_stream_reading": stream_reading,
        "data_zoom": app.config.data_zoom,
        // The `--jwks` URL's key set: `fresh`, `stale` (past its max age, fetched again
        // by the next request), `failing` (past its max age and the last fetch failed;
        // the last set verifies for up to an hour past its max age; a set within its max
        // age whose fetch for an unknown `kid` failed stays `fresh`) or `unavailable` (tokens are answered 502);
        // null without one.
        "jwks": jwks.map(|s| s.name()),
    });
    json_response(body.to_string())
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(
            CONTENT_TYPE,
            HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
        )],
        crate::metrics::render(&app),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types() {
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "text/plain;charset=UTF-8",
            "application/vnd.x+json",
        ] {
            assert!(is_json(&HeaderValue::from_static(ok)), "{ok}");
        }
        for bad in [
            "application/x-www-form-urlencoded",
            "text/xml",
            "multipart/form-data",
        ] {
            assert!(!is_json(&HeaderValue::from_static(bad)), "{bad}");
        }
    }

    #[test]
    fn parse_batch_checks_media_type_size_then_body() {
        let l = Limits {
            max_body_bytes: 64,
            ..Limits::default()
        };
        let body = br#"{"tiles":["14/2624/5721"]}"#;
        for ct in [None, Some(&b"application/json"[..]), Some(b"text/plain")] {
            let r = parse_batch(ct, body, &l).unwrap();
            assert_eq!(r.tiles.len(), 1, "{ct:?}");
        }
        let e = parse_batch(Some(b"text/xml"), body, &l).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnsupportedMediaType);
        assert!(e.message.contains("\"text/xml\""), "{}", e.message);
        // Not a valid header value at all: still a 415 that quotes it, not a panic.
        let e = parse_batch(Some(b"\x00\xff"), body, &l).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnsupportedMediaType);
        let big = vec![b' '; 65];
        let e = parse_batch(None, &big, &l).unwrap_err();
        assert_eq!(e.code, ErrorCode::PayloadTooLarge);
        assert_eq!(e.message, "body is 65 bytes, at most 64 are allowed");
        let e = parse_batch(None, b"{}", &l).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
    }

    #[test]
    fn cors_specs() {
        assert!(cors_layer("none").unwrap().is_none());
        assert!(cors_layer("any").unwrap().is_some());
        assert!(cors_layer("https://a.example, https://b.example")
            .unwrap()
            .is_some());
        assert!(cors_layer(" , ").is_err());
        assert!(cors_layer("bad\norigin").is_err());
        assert!(
            cors_layer("http://localhost:3000,tauri://localhost,https://a.example:8443")
                .unwrap()
                .is_some()
        );
        // Origins no browser sends, which would refuse every cross-origin page.
        for bad in [
            "a.example",
            "bogus",
            "https://a.example/",
            "https://a.example/app",
            "https://A.example",
            "HTTPS://a.example",
            "https://",
            "https://a.example,any",
            "https://a.example:443",
            "http://localhost:80",
        ] {
            let e = cors_layer(bad).expect_err(bad);
            assert!(
                e.contains("--cors") && e.contains("scheme://host"),
                "{bad}: {e}"
            );
        }
    }
}
