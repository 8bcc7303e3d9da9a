//! The PostGIS backend (`--origin postgres://…`): items from a table or view with an id, a
//! point geometry in SRID 4326 (checked: see below), a class, an access tier, a JSON
//! payload and an update time. Names are configurable ([`Layout`], a small TOML file given
//! by `--origin-config`); the ready table, its GiST index and the change trigger are
//! [`ddl`] (`tilewarm-server --postgis-print-ddl`, and `docs/postgis.md`).
//!
//! # Queries
//! - **Tiles**: one statement for all the tiles of a call. Each tile's envelope is computed
//!   from the core's own tile bounds, widened by [`MARGIN_DEG`] (and to the poles for the
//!   top and bottom rows, and to the antimeridian for the first column, where the core puts
//!   points at longitude 180), passed as four `float8[]` and joined to the table with `&&`,
//!   so each envelope is one GiST index scan. The rows' exact coordinates come back as
//!   `float8` and the core's tile maths assigns each item to the requested tiles (an item is
//!   in a tile when its zoom-24 tile descends from it), so the answer is the memory
//!   origin's exactly, points on tile edges included; the margin only adds candidates.
//!   (`ST_TileEnvelope` would compute the same envelope in 3857 and need a transform; the
//!   core's bounds are what the assignment uses, so one tile maths decides.)
//! - **Ids**: `WHERE id = ANY($1::text[])` (the id column should be `text`, so that its
//!   primary-key index is used).
//! - **Tier**: both statements keep only rows whose tier the request may see
//!   (`access = ANY($n::text[])`), and [`super::OriginService`]'s tier guard drops anything
//!   above the tier again after the query: defence in depth, an item above the asked tier
//!   never leaves the origin layer even if a view or the SQL were wrong.
//! - **Counts** ([`super::OriginService::count_up_to`]): the tiles statement without
//!   payloads, `LIMIT limit + 1`, counted.
//! - **Bounded tiles** (a fetch's [`ItemBound`]: the request path's direct tiles): their own
//!   tiles statement, at the bound's tier and `LIMIT limit + 1`, so rows added since the
//!   count cannot make the fetch read (and hold) more than `limit + 1` rows for them; more
//!   than `limit` rows is [`OriginFailure::TooManyItems`], before any row becomes an item.
//!   Like the count it reads envelope rows (an item within the margin of two tiles is two
//!   rows), so it can only refuse early.
//! - **The other tiles** (data tiles; [`OriginBackend::answer_limited`]'s per-tile limit,
//!   `--max-tile-items`): each envelope is its own index scan in a `CROSS JOIN LATERAL`
//!   with `LIMIT limit + 1`, its position returned with each row, so a dense tile (or a bad
//!   view) ships at most `limit + 1` rows per envelope. A tile whose envelope rows are more
//!   than `limit` is left out of the answer ([`Answer::over_limit`], "more than `limit`"):
//!   its rows are dropped and the answer is assembled without it, so no partial list of it
//!   is made. The tier filter is inside the lateral, before the `LIMIT`: asked at a
//!   caller's tier (the request path asks a tile over the limit at `agent` again so), the
//!   rows counted are those the caller may see. Envelope rows again: it can only refuse
//!   early.
//!
//! Rows that are not valid items (an id or class the protocol refuses, coordinates out of
//! range, a geometry that is not a point, an unknown tier, a NULL) are skipped and counted
//! in `tilewarm_origin_bad_rows_total`: an unknown tier in particular is never guessed.
//!
//! # Connections
//! A [deadpool-postgres] pool of `--origin-pool` [tokio-postgres] connections (chosen over
//! sqlx: the driver and pool are small, well kept and used without compile-time database
//! macros; sqlx's query macros need a database or an offline cache at build time, and its
//! runtime API would bring more than is used here). Statements are prepared once per
//! connection (`prepare_cached`); a connection is checked with `is_closed` when taken from
//! the pool, so connections the database dropped (a restart, `pg_terminate_backend`) are
//! replaced without restarting the server. A call that finds every connection busy waits
//! at most `--origin-pool-wait-ms` for one (deadpool's wait timeout), then is
//! [`OriginFailure::Overloaded`] (503 with `Retry-After`): overload of the database is
//! refused quickly, not queued until the request's timeout. Every connection has
//! `statement_timeout` set to `--origin-timeout-ms` (0 included, so that a role's or
//! database's own timeout does not apply), and a call dropped before its statements end
//! (given up by the request's budget, which its count may have spent in part, or its
//! client gone) cancels them in the database (`Running`), so a statement nobody waits
//! for does not hold a connection; a query stopped by either is a timeout (504), any other
//! failure a 502. The server starts while the database is down and recovers when it is up.
//!
//! # The geometry column's SRID
//! The tiles statements compare the column with envelopes in degrees, and PostGIS's `&&`
//! does not check SRIDs: a column in metres would answer every tile empty, with no error.
//! So the column's SRID is checked (`check_srid`): at start when the
//! database answers ([`PostgisOrigin::check_at_start`], which then refuses the start),
//! else at each call until it is found in degrees ([`OriginFailure::Unservable`], a 502
//! that names the table, the column, the SRID and what is allowed).
//!
//! TLS to PostgreSQL is not built in: connect over loopback or a private network, or
//! through a TLS-terminating proxy.
//!
//! [deadpool-postgres]: https://docs.rs/deadpool-postgres
//! [tokio-postgres]: https://docs.rs/tokio-postgres

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use serde::Deserialize;
use tilewarm::protocol::{
    check_item_data, validate_item_fields, BatchRequest, BatchResponse, DataTooLarge, Item, Limits,
    RawData,
};
use tilewarm::tile::tiles_per_axis;
use tilewarm::{Access, TileId};
use tokio_postgres::NoTls;

use super::changes::{quote_ident, ChangeFeed, ChangeStats};
use super::{
    assemble, redact_url, Answer, ItemBound, ItemCount, LoadError, OriginBackend, OriginFailure,
    OriginFuture, OriginStats, TileOverLimit,
};
use crate::config::Config;

/// Degrees added around each tile's envelope (about 1 cm): far more than the rounding of
/// the tile bounds, so no item of the tile is missed; the core's tile maths removes the
/// extra candidates.
pub const MARGIN_DEG: f64 = 1e-7;

/// What stopping a dropped call's statement may take beyond the statement timeout: the
/// cancel request's own connection (the pool's connect timeout).
const CANCEL_CONNECT_WAIT: Duration = CONNECT_TIMEOUT;

/// How long a dropped call's connection is given to answer after its cancel request before
/// the request is sent again ([`Running`]), doubling up to [`RECANCEL_MAX`].
const RECANCEL_FIRST: Duration = Duration::from_millis(100);

/// The longest between two cancel requests for a dropped call's statement.
const RECANCEL_MAX: Duration = Duration::from_secs(5);

/// The longest the pool takes to open a connection; past it the call fails (502).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest the start waits for the check of the geometry column's SRID; past it the
/// first call checks.
const START_CHECK_WAIT: Duration = Duration::from_secs(5);

/// Where the items are: table (or view) and column names, and the change channel. The
/// TOML file of `--origin-config`; every key is optional.
///
/// ```toml
/// table = "tilewarm_items"        # a table or view; "schema.table" allowed
/// channel = "tilewarm_changes"    # NOTIFY channel of the change trigger; "" = no listener
///
/// [columns]
/// id = "id"                       # text, unique
/// geom = "geom"                   # geometry(Point, 4326)
/// class = "class"                 # text: a-z 0-9 _ -
/// access = "access"               # text: public | registered | verified | agent
/// data = "data"                   # jsonb (or json)
/// updated_at = "updated_at"       # timestamptz, kept by the trigger
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Layout {
    pub table: String,
    pub channel: String,
    pub columns: Columns,
}

/// Column names of [`Layout`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Columns {
    pub id: String,
    pub geom: String,
    pub class: String,
    pub access: String,
    pub data: String,
    pub updated_at: String,
}

impl Default for Layout {
    fn default() -> Layout {
        Layout {
            table: "tilewarm_items".into(),
            channel: "tilewarm_changes".into(),
            columns: Columns::default(),
        }
    }
}

impl Default for Columns {
    fn default() -> Columns {
        Columns {
            id: "id".into(),
            geom: "geom".into(),
            class: "class".into(),
            access: "access".into(),
            data: "data".into(),
            updated_at: "updated_at".into(),
        }
    }
}

impl Layout {
    /// Reads `--origin-config` (TOML), or the defaults without one.
    pub fn load(path: Option<&Path>) -> Result<Layout, LoadError> {
        let Some(path) = path else {
            return Ok(Layout::default());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| LoadError::Postgis(format!("--origin-config {}: {e}", path.display())))?;
        let layout: Layout = toml::from_str(&text)
            .map_err(|e| LoadError::Postgis(format!("--origin-config {}: {e}", path.display())))?;
        layout.validate()?;
        Ok(layout)
    }

    fn validate(&self) -> Result<(), LoadError> {
        let c = &self.columns;
        for (key, v) in [
            ("table", &self.table),
            ("columns.id", &c.id),
            ("columns.geom", &c.geom),
            ("columns.class", &c.class),
            ("columns.access", &c.access),
            ("columns.data", &c.data),
            ("columns.updated_at", &c.updated_at),
        ] {
            if v.is_empty() || v.len() > 128 || v.contains('\0') {
                return Err(LoadError::Postgis(format!(
                    "--origin-config: {key} must be a name of 1 to 128 bytes, got {v:?}"
                )));
            }
        }
        if self.channel.len() > 63 {
            return Err(LoadError::Postgis(format!(
                "--origin-config: channel must be at most 63 bytes (PostgreSQL's identifier limit), got {:?}",
                self.channel
            )));
        }
        Ok(())
    }

    /// The quoted names.
    fn q(&self) -> Quoted {
        let c = &self.columns;
        Quoted {
            table: quote_ident(&self.table),
            id: quote_ident(&c.id),
            geom: quote_ident(&c.geom),
            class: quote_ident(&c.class),
            access: quote_ident(&c.access),
            data: quote_ident(&c.data),
            updated_at: quote_ident(&c.updated_at),
        }
    }

    /// The last part of the table name, for naming the index, function and triggers.
    fn base(&self) -> String {
        self.table
            .rsplit('.')
            .next()
            .unwrap_or(&self.table)
            .to_owned()
    }
}

struct Quoted {
    table: String,
    id: String,
    geom: String,
    class: String,
    access: String,
    data: String,
    updated_at: String,
}

/// The SQL statements, built once from the layout.
struct Statements {
    /// The tiles statement: every row of the envelopes (the base of `bounded`; tests).
    #[cfg(test)]
    tiles: String,
    /// The tiles statement read per envelope with `LIMIT $6` (each row ends with its
    /// envelope's position, from 1), for a call's tiles under the per-tile limit.
    limited: String,
    /// The tiles statement with `LIMIT $6`, for a fetch's bounded tiles.
    bounded: String,
    ids: String,
    count: String,
}

const ENVELOPES: &str =
    "unnest($1::float8[], $2::float8[], $3::float8[], $4::float8[]) AS b(w, s, e, n)";

/// [`ENVELOPES`] with each envelope's position (`i`, from 1, `bigint`).
const ENVELOPES_NUMBERED: &str = "unnest($1::float8[], $2::float8[], $3::float8[], $4::float8[]) \
     WITH ORDINALITY AS b(w, s, e, n, i)";

impl Statements {
    fn new(layout: &Layout, sql_tier_filter: bool) -> Statements {
        let q = layout.q();
        // ST_X and ST_Y fail the whole statement on a row that is not a point (a view over
        // a column of any geometry): such a row reads as no position, skipped and counted.
        // The payload only when at most `$n` bytes (`--max-item-data-bytes`), and its size:
        // an oversized payload is not shipped, and its row is named.
        let cols = |n: u8| {
            format!(
                "t.{id}::text, \
                 CASE WHEN ST_GeometryType(t.{geom}) = 'ST_Point' THEN ST_X(t.{geom}) END::float8, \
                 CASE WHEN ST_GeometryType(t.{geom}) = 'ST_Point' THEN ST_Y(t.{geom}) END::float8, \
                 t.{class}::text, t.{access}::text, \
                 CASE WHEN octet_length(t.{data}::text) <= ${n} THEN t.{data}::text END, \
                 octet_length(t.{data}::text)",
                id = q.id,
                geom = q.geom,
                class = q.class,
                access = q.access,
                data = q.data
            )
        };
        let join = format!(
            "JOIN {table} t ON t.{geom} && ST_MakeEnvelope(b.w, b.s, b.e, b.n, 4326)",
            table = q.table,
            geom = q.geom
        );
        let tier = |n: u8| {
            if sql_tier_filter {
                format!("t.{}::text = ANY(${n}::text[])", q.access)
            } else {
                // Tests only: shows that the guard after the SQL holds on its own.
                format!("(${n}::text[] IS NOT NULL)")
            }
        };
        let tiles = format!(
            "SELECT {} FROM {ENVELOPES} {join} WHERE {}",
            cols(7),
            tier(5)
        );
        // Each envelope is its own index scan, stopped at $6 rows (`SELECT *` keeps the
        // columns of a view as they are for the outer `cols`).
        let limited = format!(
            "SELECT {}, b.i FROM {ENVELOPES_NUMBERED} CROSS JOIN LATERAL \
             (SELECT * FROM {table} t WHERE t.{geom} && ST_MakeEnvelope(b.w, b.s, b.e, b.n, 4326) \
             AND {} LIMIT $6) t",
            cols(7),
            tier(5),
            table = q.table,
            geom = q.geom
        );
        Statements {
            limited,
            bounded: format!("{tiles} LIMIT $6"),
            #[cfg(test)]
            tiles,
            ids: format!(
                "SELECT {} FROM {table} t WHERE t.{id} = ANY($1::text[]) AND {}",
                cols(3),
                tier(2),
                table = q.table,
                id = q.id
            ),
            count: format!(
                "SELECT count(*) FROM (SELECT 1 FROM {ENVELOPES} {join} WHERE {} LIMIT $6) AS c",
                tier(5)
            ),
        }
    }
}

/// The pool and statements.
pub struct PostgisOrigin {
    pool: Pool,
    statements: Statements,
    pg_config: tokio_postgres::Config,
    layout: Layout,
    tile_ttl_s: u32,
    limits: Limits,
    stats: Arc<OriginStats>,
    changes: Arc<ChangeStats>,
    described: String,
    /// `--origin-timeout-ms` (0: none), each connection's `statement_timeout`.
    timeout_ms: u64,
    /// `--origin-pool-wait-ms`.
    pool_wait_ms: u64,
    /// The geometry column was found in degrees ([`PostgisOrigin::check_srid`]); until
    /// then every call checks it first.
    srid_ok: AtomicBool,
}

/// The SRIDs the tiles statements can compare with their envelopes in degrees: 4326, and
/// 0 (none given), taken as degrees (PostGIS's `&&` does not check SRIDs).
const DEGREES: [i32; 2] = [4326, 0];

/// What the check of the geometry column's SRID found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SridCheck {
    /// Degrees: checked for good.
    Degrees,
    /// The column's type gives no SRID and it has no row with a geometry: nothing to
    /// check yet (an empty answer is right), checked again on the next call.
    Unknown,
}

/// The verdict on the geometry column from its type's SRID (`declared`: 0 for a bare
/// `geometry`, as a view's column over an expression without a cast is; `None` when the
/// catalog has no such column, which the tiles statement itself then refuses) and, when
/// that gives none, the SRID of one row with a geometry (`row`). `Err`: the message of
/// [`OriginFailure::Unservable`], naming the table, the column, the SRID and what is
/// allowed.
fn srid_verdict(
    layout: &Layout,
    declared: Option<i32>,
    row: Option<i32>,
) -> Result<SridCheck, String> {
    let (srid, whose) = match (declared, row) {
        (Some(d), _) if d != 0 => (d, "its type declares"),
        (_, Some(r)) => (r, "a row holds a geometry in"),
        (_, None) => return Ok(SridCheck::Unknown),
    };
    if DEGREES.contains(&srid) {
        return Ok(SridCheck::Degrees);
    }
    Err(format!(
        "the geometry column {column:?} of table {table:?} is not in degrees ({whose} SRID \
         {srid}), and the tiles are envelopes in degrees, so every tile would answer empty: \
         the column must be in SRID 4326 (or 0, taken as degrees); for a table in another \
         SRID, put a view in degrees in front of it (ST_Transform(column, 4326)::geometry(Point, \
         4326), with a GiST index on that expression) and name the view in --origin-config \
         (docs/postgis.md, \"A table of another shape\")",
        column = layout.columns.geom,
        table = layout.table,
    ))
}

/// The tiers a caller at `access` may see, as the access column holds them.
fn visible_tiers(access: Access) -> Vec<String> {
    [
        Access::Public,
        Access::Registered,
        Access::Verified,
        Access::Agent,
    ]
    .into_iter()
    .filter(|&t| access.can_see(t))
    .map(|t| t.to_string())
    .collect()
}

/// Each tile's search envelope (module docs), as four columns. A tile of the first column
/// gets a second envelope at the antimeridian.
fn envelopes(tiles: &[TileId]) -> [Vec<f64>; 4] {
    let mut out: [Vec<f64>; 4] = Default::default();
    let mut push = |w: f64, s: f64, e: f64, n: f64| {
        out[0].push(w);
        out[1].push(s);
        out[2].push(e);
        out[3].push(n);
    };
    for &t in tiles {
        let b = t.bounds();
        let last = tiles_per_axis(t.z()) - 1;
        let north = if t.y() == 0 {
            90.0
        } else {
            b.north + MARGIN_DEG
        };
        let south = if t.y() == last {
            -90.0
        } else {
            b.south - MARGIN_DEG
        };
        push(b.west - MARGIN_DEG, south, b.east + MARGIN_DEG, north);
        if t.x() == 0 {
            push(180.0 - MARGIN_DEG, south, 180.0, north);
        }
    }
    out
}

/// The tile of each envelope of [`envelopes`], in its order.
fn envelope_tiles(tiles: &[TileId]) -> Vec<TileId> {
    tiles
        .iter()
        .flat_map(|&t| std::iter::repeat_n(t, 1 + usize::from(t.x() == 0)))
        .collect()
}

/// The SRID one row of `sql` answers in its first column (a statement of the SRID check,
/// `check_srid`): None when it answers no row, or null.
async fn query_srid(
    client: &deadpool_postgres::ClientWrapper,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    timeout_ms: u64,
) -> Result<Option<i32>, OriginFailure> {
    let fail = |e| db_failure(e, timeout_ms);
    let row = client.query_opt(sql, params).await.map_err(fail)?;
    let srid = row.map(|row| row.try_get::<_, Option<i32>>(0)).transpose();
    Ok(srid.map_err(fail)?.flatten())
}

/// A database error as an origin failure: a statement stopped by `statement_timeout`
/// (SQLSTATE 57014, with `timeout_ms` > 0) is a timeout, a query the database refused as
/// [`query_refused`] says, anything else a failure (with
/// `--origin-timeout-ms 0` there is no statement timeout: a cancelled statement was
/// cancelled by someone else, and the message says so).
fn db_failure(e: tokio_postgres::Error, timeout_ms: u64) -> OriginFailure {
    if timeout_ms > 0 && e.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED) {
        return OriginFailure::Timeout { ms: timeout_ms };
    }
    let msg = match e.as_db_error() {
        Some(db) => return query_refused(db.code().code(), db.message()),
        None => {
            let mut m = format!("PostgreSQL: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(c) = src {
                m.push_str(&format!(": {c}"));
                src = c.source();
            }
            m
        }
    };
    OriginFailure::Failed(msg)
}

/// The database's refusal of a query (`sqlstate`, PostgreSQL's message) as an origin
/// failure: SQLSTATE class 42 (an undefined table or column, a type mismatch such as
/// `bigint = text`, a missing privilege) and class 22 (a value that does not fit its type)
/// will not pass by retrying, so they are [`OriginFailure::Misconfigured`], which says so;
/// any other a failure naming PostgreSQL's message.
fn query_refused(sqlstate: &str, message: &str) -> OriginFailure {
    if sqlstate.starts_with("42") || sqlstate.starts_with("22") {
        return OriginFailure::Misconfigured {
            sqlstate: sqlstate.to_owned(),
            detail: Some(format!("PostgreSQL: {message}")),
        };
    }
    OriginFailure::Failed(format!("PostgreSQL: {message} ({sqlstate})"))
}

/// A pooled connection while a call's statements run on it. A call dropped before they end
/// (its budget spent, its client gone) leaves them running in the database: dropped armed,
/// this cancels them there (a cancel request, as `pg_cancel_backend`), waits for the
/// connection to be idle (cancelling again while it is not: a cancel that arrives before
/// its statement is lost) and then closes it, in a task of its own. Meanwhile it still counts
/// against the pool, so the next call waits for a free connection (and is refused, 503,
/// after `--origin-pool-wait-ms`) instead of being queued on this one behind a statement
/// nobody waits for; and it never goes back to the pool, so a cancel that arrives late cannot stop another
/// call's statement. Given up after `wait` (`--origin-timeout-ms` + 5 s, by when the
/// statement timeout has ended the statement; with `--origin-timeout-ms 0`, 5 s): the
/// connection is then let go, and a statement still running there runs on (PostgreSQL
/// does not stop a statement whose client went away), no longer counted against the pool.
struct Running {
    client: Option<deadpool_postgres::Object>,
    wait: Duration,
}

impl Running {
    fn new(client: deadpool_postgres::Object, wait: Duration) -> Running {
        Running {
            client: Some(client),
            wait,
        }
    }

    fn client(&self) -> &deadpool_postgres::Object {
        self.client
            .as_ref()
            .expect("a running connection is held until done or dropped")
    }

    /// The statements ended (answered or failed): the connection goes back to the pool.
    fn done(mut self) {
        drop(self.client.take());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            drop(deadpool_postgres::Object::take(client));
            return;
        };
        let wait = self.wait;
        rt.spawn(async move {
            let token = client.cancel_token();
            let stop = async {
                let _ = token.cancel_query(NoTls).await;
                // Answered once the cancelled statement has ended.
                let idle = client.simple_query("SELECT 1");
                // A cancel that reaches the connection before its statement does (the
                // statement sent, not yet read) is ignored by PostgreSQL: sent again,
                // less often each time, until the connection answers.
                let again = async {
                    let mut after = RECANCEL_FIRST;
                    loop {
                        tokio::time::sleep(after).await;
                        let _ = token.cancel_query(NoTls).await;
                        after = (after * 2).min(RECANCEL_MAX);
                    }
                };
                tokio::select! {
                    _ = idle => {}
                    () = again => {}
                }
            };
            let _ = tokio::time::timeout(wait, stop).await;
            drop(deadpool_postgres::Object::take(client));
        });
    }
}

impl PostgisOrigin {
    /// A pool for `url` with the layout of `--origin-config`. Connects lazily: the server
    /// starts whether or not the database is up.
    pub fn open(
        url: &str,
        config: &Config,
        stats: Arc<OriginStats>,
    ) -> Result<PostgisOrigin, LoadError> {
        let layout = Layout::load(config.origin_config.as_deref())?;
        PostgisOrigin::with_layout(url, layout, config, stats, true)
    }

    /// As [`open`](Self::open) with a given layout. `sql_tier_filter: false` leaves the
    /// tier filter out of the SQL, for the test that shows the guard after it holds alone.
    #[doc(hidden)]
    pub fn with_layout(
        url: &str,
        layout: Layout,
        config: &Config,
        stats: Arc<OriginStats>,
        sql_tier_filter: bool,
    ) -> Result<PostgisOrigin, LoadError> {
        layout.validate()?;
        let mut pg: tokio_postgres::Config = url
            .parse()
            .map_err(|e| LoadError::Postgis(format!("{}: {e}", redact_url(url))))?;
        // Without a host every connection fails with "invalid configuration": said at
        // start, not as a 502 for every miss.
        if pg.get_hosts().is_empty() && pg.get_hostaddrs().is_empty() {
            return Err(LoadError::Postgis(format!(
                "{} names no host: give postgres://[user[:password]@]host[:port]/database",
                redact_url(url)
            )));
        }
        // Always set: with 0 (PostgreSQL's "no timeout" too) a `statement_timeout` of the
        // role or database would otherwise stop statements the server waits for.
        let mut options = pg.get_options().unwrap_or("").to_owned();
        options.push_str(&format!(
            " -c statement_timeout={}",
            config.origin_timeout_ms
        ));
        pg.options(options.trim());
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(Duration::from_secs(5));
        }
        if pg.get_application_name().is_none() {
            pg.application_name("tilewarm-server");
        }
        pg.keepalives(true);
        let manager = Manager::from_config(
            pg.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        // A call waits a short while for a free connection, then is refused as
        // overloaded (`client`); the request's own budget bounds it as well.
        let pool = Pool::builder(manager)
            .max_size(config.origin_pool)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_millis(config.origin_pool_wait_ms)))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| LoadError::Postgis(format!("connection pool: {e}")))?;
        let described = format!(
            "postgis: {} table {} (pool {})",
            redact_url(url),
            layout.table,
            config.origin_pool
        );
        Ok(PostgisOrigin {
            pool,
            statements: Statements::new(&layout, sql_tier_filter),
            pg_config: pg,
            layout,
            tile_ttl_s: config.tile_ttl_s.min(u32::MAX as u64) as u32,
            limits: config.limits(),
            stats,
            changes: Arc::default(),
            described,
            timeout_ms: config.origin_timeout_ms,
            pool_wait_ms: config.origin_pool_wait_ms,
            srid_ok: AtomicBool::new(false),
        })
    }

    /// The SRID check (`check_srid`) when the server starts: a geometry column not in
    /// degrees refuses the start, naming it. A database that cannot answer now (down, the
    /// table not made yet, a timeout) does not: the first call checks. The start waits
    /// for it at most `START_CHECK_WAIT` (its statement is then cancelled).
    pub async fn check_at_start(&self) -> Result<(), LoadError> {
        let check = async {
            let running = self.running().await?;
            let verdict = self.check_srid(running.client()).await;
            running.done();
            verdict
        };
        let later = |why: String| {
            tracing::info!(
                error = %why,
                "postgis: the geometry column's SRID will be checked at the first call"
            );
            Ok(())
        };
        match tokio::time::timeout(START_CHECK_WAIT, check).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(OriginFailure::Unservable { message })) => Err(LoadError::Postgis(message)),
            Ok(Err(e)) => later(e.to_string()),
            Err(_) => later(format!("no answer within {} s", START_CHECK_WAIT.as_secs())),
        }
    }

    /// Checks, until it is found in degrees, that the geometry column's SRID is one the
    /// tiles statements can compare with their envelopes in degrees ([`DEGREES`]): the SRID
    /// its type declares (`geometry(Point, 3857)`; a view's column gives its expression's,
    /// 0 without a cast), or when that is 0, the SRID of one row with a geometry. A column
    /// in metres would otherwise answer every tile empty, with no error, cached for the
    /// TTL. Not in degrees is [`OriginFailure::Unservable`] (a 502 for the call), and is
    /// checked again at the next call (the table may be altered meanwhile); so is a column
    /// of no declared SRID with no geometry yet.
    async fn check_srid(
        &self,
        client: &deadpool_postgres::ClientWrapper,
    ) -> Result<SridCheck, OriginFailure> {
        if self.srid_ok.load(Relaxed) {
            return Ok(SridCheck::Degrees);
        }
        let q = self.layout.q();
        // The catalog first: it costs nothing, and a view over a slow expression is not
        // read when the type tells.
        let declared = query_srid(
            client,
            "SELECT postgis_typmod_srid(a.atttypmod) FROM pg_attribute a \
             WHERE a.attrelid = $1::text::regclass AND a.attname::text = $2 \
             AND NOT a.attisdropped",
            &[&q.table, &self.layout.columns.geom],
            self.timeout_ms,
        )
        .await?;
        let mut verdict = srid_verdict(&self.layout, declared, None);
        if verdict == Ok(SridCheck::Unknown) && declared.is_some() {
            let row = query_srid(
                client,
                &format!(
                    "SELECT ST_SRID(t.{geom}) FROM {table} t WHERE t.{geom} IS NOT NULL LIMIT 1",
                    geom = q.geom,
                    table = q.table
                ),
                &[],
                self.timeout_ms,
            )
            .await?;
            verdict = srid_verdict(&self.layout, declared, row);
        }
        match verdict {
            Ok(SridCheck::Degrees) => {
                self.srid_ok.store(true, Relaxed);
                Ok(SridCheck::Degrees)
            }
            Ok(SridCheck::Unknown) => Ok(SridCheck::Unknown),
            Err(message) => {
                tracing::error!(table = %self.layout.table, column = %self.layout.columns.geom, "postgis: {message}");
                Err(OriginFailure::Unservable { message })
            }
        }
    }

    /// The layout in use.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// A pooled connection. None free within `--origin-pool-wait-ms` is
    /// [`OriginFailure::Overloaded`] (a 503: the database is at the pool's capacity);
    /// failing to connect is a 502.
    async fn client(&self) -> Result<deadpool_postgres::Object, OriginFailure> {
        use deadpool_postgres::{PoolError, TimeoutType};
        self.pool.get().await.map_err(|e| match e {
            PoolError::Timeout(TimeoutType::Wait) => OriginFailure::Overloaded {
                message: format!(
                    "all {size} PostgreSQL connections (--origin-pool) stayed busy for {wait} ms \
                     (--origin-pool-wait-ms)",
                    size = self.pool.status().max_size,
                    wait = self.pool_wait_ms,
                ),
                retry_after_s: None,
            },
            PoolError::Timeout(_) => OriginFailure::Failed(format!(
                "PostgreSQL: no connection could be made within {} s",
                CONNECT_TIMEOUT.as_secs()
            )),
            PoolError::Backend(e) => db_failure(e, self.timeout_ms),
            other => OriginFailure::Failed(format!("PostgreSQL connection pool: {other}")),
        })
    }

    /// A pooled connection whose statements are cancelled if the call is dropped
    /// ([`Running`]).
    async fn running(&self) -> Result<Running, OriginFailure> {
        let wait = Duration::from_millis(self.timeout_ms) + CANCEL_CONNECT_WAIT;
        Ok(Running::new(self.client().await?, wait))
    }

    /// Rows as items, and the rows whose payload is over `--max-item-data-bytes` (not
    /// read); unusable rows are skipped and counted.
    fn items(&self, rows: Vec<tokio_postgres::Row>) -> (Vec<Item<RawData>>, Vec<DataTooLarge>) {
        let mut out = Vec::with_capacity(rows.len());
        let mut too_large = Vec::new();
        let mut bad = 0u64;
        let mut first_bad = None;
        for row in rows {
            match self.item(&row) {
                Ok(Ok(it)) => out.push(it),
                Ok(Err(over)) => too_large.push(over),
                Err(why) => {
                    bad += 1;
                    first_bad.get_or_insert(why);
                }
            }
        }
        if bad > 0 {
            self.stats.bad_rows.fetch_add(bad, Relaxed);
            tracing::warn!(
                rows = bad,
                first = %first_bad.unwrap_or_default(),
                table = %self.layout.table,
                "postgis: rows that are not valid items were skipped"
            );
        }
        (out, too_large)
    }

    /// A row as an item, or as the item whose payload is too large (the statement sent
    /// its size, not the payload); `Err` for a row that is no valid item.
    fn item(
        &self,
        row: &tokio_postgres::Row,
    ) -> Result<Result<Item<RawData>, DataTooLarge>, String> {
        let get = |i: usize| -> Result<Option<String>, String> {
            row.try_get::<_, Option<String>>(i)
                .map_err(|e| e.to_string())
        };
        let id = get(0)?.ok_or("NULL id")?;
        let lon: Option<f64> = row.try_get(1).map_err(|e| e.to_string())?;
        let lat: Option<f64> = row.try_get(2).map_err(|e| e.to_string())?;
        let (Some(lon), Some(lat)) = (lon, lat) else {
            return Err(format!("item {id:?}: NULL, empty or not a point geometry"));
        };
        let class = get(3)?.ok_or_else(|| format!("item {id:?}: NULL class"))?;
        let access = get(4)?
            .ok_or_else(|| format!("item {id:?}: NULL tier"))?
            .parse::<Access>()
            .map_err(|e| format!("item {id:?}: {e}"))?;
        validate_item_fields(&id, lon, lat, &class, None, &self.limits)
            .map_err(|e| e.to_string())?;
        let size: Option<i32> = row.try_get(6).map_err(|e| e.to_string())?;
        let size = size.map_or(0, |n| usize::try_from(n).unwrap_or(0));
        if let Err(over) = check_item_data(&id, access, size, &self.limits) {
            return Ok(Err(over));
        }
        let data = match get(5)? {
            Some(text) => serde_json::value::RawValue::from_string(text)
                .map_err(|e| format!("item {id:?}: data is not JSON: {e}"))?,
            None => serde_json::value::RawValue::NULL.to_owned(),
        };
        Ok(Ok(Item {
            id,
            lon,
            lat,
            class,
            access,
            ttl: None,
            data,
        }))
    }

    async fn answer_inner(
        &self,
        request: &BatchRequest,
        bound: Option<ItemBound<'_>>,
        tile_limit: usize,
    ) -> Result<Answer, OriginFailure> {
        let running = self.running().await?;
        if let Err(e) = self.check_srid(running.client()).await {
            running.done();
            return Err(e);
        }
        let rows = self
            .answer_rows(running.client(), request, bound, tile_limit)
            .await;
        running.done();
        let (tile_rows, id_rows, over_limit) = rows?;
        // Assembled without the tiles over the limit: no partial list of theirs (from the
        // rows of a neighbour's envelope or the ids) is made.
        let rest;
        let asked = if over_limit.is_empty() {
            request
        } else {
            rest = BatchRequest {
                tiles: request
                    .tiles
                    .iter()
                    .copied()
                    .filter(|t| !over_limit.iter().any(|o| o.tile == *t))
                    .collect(),
                ids: request.ids.clone(),
                access: request.access,
            };
            &rest
        };
        let (tile_items, mut too_large) = self.items(tile_rows);
        let (id_items, too_large_ids) = self.items(id_rows);
        too_large.extend(too_large_ids);
        let mut response = assemble(asked, tile_items, id_items, Some(self.tile_ttl_s));
        // A requested item left out for its size exists: it is not `missing`.
        if !too_large.is_empty() {
            response
                .missing
                .retain(|id| !too_large.iter().any(|o| o.id == *id));
        }
        Ok(Answer {
            response,
            over_limit,
            too_large,
            unanswered: None,
        })
    }

    /// The rows of `request`'s tiles and ids, read on `client`, and the tiles outside
    /// `bound` whose envelopes hold more than `tile_limit` rows (their rows dropped; each
    /// envelope is read no further than `tile_limit + 1` rows).
    async fn answer_rows(
        &self,
        client: &deadpool_postgres::ClientWrapper,
        request: &BatchRequest,
        bound: Option<ItemBound<'_>>,
        tile_limit: usize,
    ) -> Result<
        (
            Vec<tokio_postgres::Row>,
            Vec<tokio_postgres::Row>,
            Vec<TileOverLimit>,
        ),
        OriginFailure,
    > {
        let timeout_ms = self.timeout_ms;
        let fail = |e| db_failure(e, timeout_ms);
        let tiers = visible_tiers(request.access);
        let data_cap = self.limits.max_data_bytes.min(i32::MAX as usize) as i32;
        let (bounded, free): (Vec<TileId>, Vec<TileId>) = request
            .tiles
            .iter()
            .partition(|&&t| bound.is_some_and(|b| b.covers(t)));
        let mut tile_rows = Vec::new();
        if let (Some(b), false) = (bound, bounded.is_empty()) {
            let st = client
                .prepare_cached(&self.statements.bounded)
                .await
                .map_err(fail)?;
            let [w, s, e, n] = envelopes(&bounded);
            // What the caller may see (never more than the request's tier).
            let seen = visible_tiers(b.access.min(request.access));
            let cap = b.limit.saturating_add(1).min(i64::MAX as usize) as i64;
            tile_rows = client
                .query(&st, &[&w, &s, &e, &n, &seen, &cap, &data_cap])
                .await
                .map_err(fail)?;
            if tile_rows.len() > b.limit {
                return Err(OriginFailure::TooManyItems { limit: b.limit });
            }
        }
        let mut over_limit = Vec::new();
        if !free.is_empty() {
            let st = client
                .prepare_cached(&self.statements.limited)
                .await
                .map_err(fail)?;
            let [w, s, e, n] = envelopes(&free);
            let cap = tile_limit.saturating_add(1).min(i64::MAX as usize) as i64;
            let mut rows = client
                .query(&st, &[&w, &s, &e, &n, &tiers, &cap, &data_cap])
                .await
                .map_err(fail)?;
            // Rows per tile (the envelope's position is the last column), summed over its
            // envelopes: envelope rows, as the count reads them, so it can only refuse early.
            let owner = envelope_tiles(&free);
            let tile_of = |row: &tokio_postgres::Row| -> Result<TileId, OriginFailure> {
                let i: i64 = row.try_get(7).map_err(fail)?;
                usize::try_from(i - 1)
                    .ok()
                    .and_then(|i| owner.get(i).copied())
                    .ok_or_else(|| {
                        OriginFailure::Failed(format!("PostgreSQL: envelope {i} out of range"))
                    })
            };
            let mut per_tile: std::collections::HashMap<TileId, usize> = Default::default();
            for row in &rows {
                *per_tile.entry(tile_of(row)?).or_default() += 1;
            }
            for &t in &free {
                if per_tile.get(&t).is_some_and(|&n| n > tile_limit) {
                    over_limit.push(TileOverLimit {
                        tile: t,
                        items: ItemCount::MoreThan(tile_limit),
                        limit: tile_limit,
                        at: request.access,
                    });
                }
            }
            if !over_limit.is_empty() {
                rows.retain(|row| {
                    tile_of(row).is_ok_and(|t| !over_limit.iter().any(|o| o.tile == t))
                });
            }
            tile_rows.extend(rows);
        }
        let mut id_rows = Vec::new();
        if !request.ids.is_empty() {
            let st = client
                .prepare_cached(&self.statements.ids)
                .await
                .map_err(fail)?;
            id_rows = client
                .query(&st, &[&request.ids, &tiers, &data_cap])
                .await
                .map_err(fail)?;
        }
        Ok((tile_rows, id_rows, over_limit))
    }

    async fn count_inner(
        &self,
        tiles: &[TileId],
        access: Access,
        limit: usize,
    ) -> Result<ItemCount, OriginFailure> {
        self.stats.count_queries.fetch_add(1, Relaxed);
        let running = self.running().await?;
        if let Err(e) = self.check_srid(running.client()).await {
            running.done();
            return Err(e);
        }
        let count = self
            .count_rows(running.client(), tiles, access, limit)
            .await;
        running.done();
        let count = count?;
        Ok(if count > limit {
            ItemCount::MoreThan(limit)
        } else {
            ItemCount::Exact(count)
        })
    }

    /// The envelope rows of `tiles` visible at `access`, counted up to `limit + 1`.
    async fn count_rows(
        &self,
        client: &deadpool_postgres::ClientWrapper,
        tiles: &[TileId],
        access: Access,
        limit: usize,
    ) -> Result<usize, OriginFailure> {
        let timeout_ms = self.timeout_ms;
        let st = client
            .prepare_cached(&self.statements.count)
            .await
            .map_err(|e| db_failure(e, timeout_ms))?;
        let [w, s, e, n] = envelopes(tiles);
        let cap = limit.saturating_add(1).min(i64::MAX as usize) as i64;
        let row = client
            .query_one(&st, &[&w, &s, &e, &n, &visible_tiers(access), &cap])
            .await
            .map_err(|e| db_failure(e, timeout_ms))?;
        let count: i64 = row.try_get(0).map_err(|e| db_failure(e, timeout_ms))?;
        Ok(count.max(0) as usize)
    }
}

impl OriginBackend for PostgisOrigin {
    fn kind(&self) -> &'static str {
        "postgis"
    }

    fn answer<'a>(
        &'a self,
        request: &'a BatchRequest,
        bound: Option<ItemBound<'a>>,
    ) -> OriginFuture<'a, Result<BatchResponse<RawData>, OriginFailure>> {
        // No per-tile limit: every envelope read whole. An item left out for its size is
        // `missing` here (it cannot be served); `answer_limited` names it instead.
        Box::pin(async move {
            let a = self.answer_inner(request, bound, usize::MAX).await?;
            let mut r = a.response;
            for o in a.too_large {
                if request.ids.contains(&o.id) && !r.missing.contains(&o.id) {
                    r.missing.push(o.id);
                }
            }
            Ok(r)
        })
    }

    fn answer_limited<'a>(
        &'a self,
        request: &'a BatchRequest,
        bound: Option<ItemBound<'a>>,
        tile_limit: usize,
    ) -> OriginFuture<'a, Result<Answer, OriginFailure>> {
        Box::pin(self.answer_inner(request, bound, tile_limit))
    }

    fn count_up_to<'a>(
        &'a self,
        tiles: &'a [TileId],
        access: Access,
        limit: usize,
    ) -> OriginFuture<'a, Result<ItemCount, OriginFailure>> {
        Box::pin(self.count_inner(tiles, access, limit))
    }

    fn describe(&self) -> String {
        self.described.clone()
    }

    fn change_feed(&self) -> Option<ChangeFeed> {
        if self.layout.channel.is_empty() {
            return None;
        }
        let mut config = self.pg_config.clone();
        // The listener's own checks are short; no statement timeout needed beyond them.
        config.options("");
        super::changes::tune_socket(&mut config);
        Some(ChangeFeed {
            config,
            channel: self.layout.channel.clone(),
            stats: Arc::clone(&self.changes),
        })
    }
}

/// The DDL of a ready table for `layout`: PostGIS, the table, its GiST index, the trigger
/// that keeps the update time, and the change trigger that notifies the server (see
/// [`super::changes`]). Idempotent (`IF NOT EXISTS`, `CREATE OR REPLACE`).
pub fn ddl(layout: &Layout) -> String {
    let q = layout.q();
    let base = layout.base();
    let index = quote_ident(&format!("{base}_geom_gist"));
    let touch = quote_ident(&format!("{base}_touch"));
    let notify = quote_ident(&format!("{base}_notify"));
    let notify_all = quote_ident(&format!("{base}_notify_truncate"));
    // The functions in the table's schema, as its index and triggers are: unqualified
    // they went to the first schema of the search path, where the DDL of a table of the
    // same name in another schema (another channel, other columns) replaced them.
    let function = |name: &str| match layout.table.rsplit_once('.') {
        Some((schema, _)) => quote_ident(&format!("{schema}.{base}_{name}")),
        None => quote_ident(&format!("{base}_{name}")),
    };
    let (touch_fn, notify_fn) = (function("touch"), function("notify"));
    let channel = layout.channel.replace('\'', "''");
    // A row's position, or NULL when it has no point: ST_X fails on any other shape,
    // which would fail the writer's transaction on a table whose geometry column takes
    // any (the origin skips such rows, so they are in no tile). In degrees (SRID 4326)
    // whatever the column's SRID: the trigger may be put on a table in another SRID under
    // a view that transforms it, and its own coordinates (metres in 3857) would name no
    // tile. SRID 0 (none given) is taken as degrees, as the origin takes it.
    let pos = |rec: &str| {
        let g = format!("{rec}.{}", q.geom);
        let p = format!(
            "(CASE WHEN ST_SRID({g}) IN (0, 4326) THEN {g} ELSE ST_Transform({g}, 4326) END)"
        );
        format!(
            "CASE WHEN ST_GeometryType({g}) = 'ST_Point' \
             THEN json_build_array(ST_X({p}), ST_Y({p})) END"
        )
    };
    format!(
        r#"CREATE EXTENSION IF NOT EXISTS postgis;

CREATE TABLE IF NOT EXISTS {table} (
    {id} text PRIMARY KEY,
    {geom} geometry(Point, 4326) NOT NULL,
    {class} text NOT NULL,
    {access} text NOT NULL CHECK ({access} IN ('public', 'registered', 'verified', 'agent')),
    {data} jsonb NOT NULL DEFAULT '{{}}',
    {updated_at} timestamptz NOT NULL DEFAULT now()
);

-- One GiST index scan per requested tile envelope.
CREATE INDEX IF NOT EXISTS {index} ON {table} USING gist ({geom});

-- The update time, kept by the database.
CREATE OR REPLACE FUNCTION {touch_fn}() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    NEW.{updated_at} := now();
    RETURN NEW;
END
$fn$;
DROP TRIGGER IF EXISTS {touch} ON {table};
CREATE TRIGGER {touch} BEFORE INSERT OR UPDATE ON {table}
    FOR EACH ROW EXECUTE FUNCTION {touch_fn}();

-- Changes: one NOTIFY per changed row on channel '{channel}' (tilewarm-server listens and
-- invalidates the id and the data tiles of the old and new positions).
CREATE OR REPLACE FUNCTION {notify_fn}() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
    payload text;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        payload := '{{"op":"all"}}';
    ELSIF TG_OP = 'INSERT' THEN
        payload := json_build_object('op', 'I', 'id', NEW.{id}::text, 'new', {new})::text;
    ELSIF TG_OP = 'UPDATE' THEN
        IF OLD.{id} IS DISTINCT FROM NEW.{id} THEN
            PERFORM pg_notify('{channel}',
                json_build_object('op', 'D', 'id', OLD.{id}::text, 'old', {old})::text);
        END IF;
        payload := json_build_object('op', 'U', 'id', NEW.{id}::text, 'old', {old}, 'new', {new})::text;
    ELSE
        payload := json_build_object('op', 'D', 'id', OLD.{id}::text, 'old', {old})::text;
    END IF;
    -- NOTIFY payloads must stay under 8000 bytes: never fail the writer's transaction.
    IF octet_length(payload) > 7900 THEN
        payload := '{{"op":"all"}}';
    END IF;
    PERFORM pg_notify('{channel}', payload);
    RETURN NULL;
END
$fn$;
DROP TRIGGER IF EXISTS {notify} ON {table};
CREATE TRIGGER {notify} AFTER INSERT OR UPDATE OR DELETE ON {table}
    FOR EACH ROW EXECUTE FUNCTION {notify_fn}();
DROP TRIGGER IF EXISTS {notify_all} ON {table};
CREATE TRIGGER {notify_all} AFTER TRUNCATE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION {notify_fn}();
"#,
        table = q.table,
        id = q.id,
        geom = q.geom,
        class = q.class,
        access = q.access,
        data = q.data,
        updated_at = q.updated_at,
        new = pos("NEW"),
        old = pos("OLD"),
    )
}

/// Creates the table, index and triggers of [`ddl`] if missing, then upserts `items` (in
/// batches of 5 000, coordinates sent as binary `float8`, so they are stored exactly).
/// Returns the rows written. `tilewarm-server --postgis-load`, the tests and the benchmark
/// use it.
pub async fn load_items(
    client: &tokio_postgres::Client,
    layout: &Layout,
    items: &[Item<RawData>],
) -> Result<u64, tokio_postgres::Error> {
    client.batch_execute(&ddl(layout)).await?;
    let q = layout.q();
    let sql = format!(
        "INSERT INTO {table} ({id}, {geom}, {class}, {access}, {data}) \
         SELECT u.id, ST_SetSRID(ST_MakePoint(u.lon, u.lat), 4326), u.class, u.access, u.data::jsonb \
         FROM unnest($1::text[], $2::float8[], $3::float8[], $4::text[], $5::text[], $6::text[]) \
              AS u(id, lon, lat, class, access, data) \
         ON CONFLICT ({id}) DO UPDATE SET {geom} = EXCLUDED.{geom}, {class} = EXCLUDED.{class}, \
              {access} = EXCLUDED.{access}, {data} = EXCLUDED.{data}",
        table = q.table,
        id = q.id,
        geom = q.geom,
        class = q.class,
        access = q.access,
        data = q.data,
    );
    let st = client.prepare(&sql).await?;
    let mut written = 0;
    for chunk in items.chunks(5_000) {
        let ids: Vec<&str> = chunk.iter().map(|i| i.id.as_str()).collect();
        let lons: Vec<f64> = chunk.iter().map(|i| i.lon).collect();
        let lats: Vec<f64> = chunk.iter().map(|i| i.lat).collect();
        let classes: Vec<&str> = chunk.iter().map(|i| i.class.as_str()).collect();
        let tiers: Vec<String> = chunk.iter().map(|i| i.access.to_string()).collect();
        let data: Vec<&str> = chunk.iter().map(|i| i.data.get()).collect();
        written += client
            .execute(&st, &[&ids, &lons, &lats, &classes, &tiers, &data])
            .await?;
    }
    client
        .batch_execute(&format!("ANALYZE {}", q.table))
        .await?;
    Ok(written)
}

/// `--postgis-load`: the data set of `--data` (or the synthetic city) into the table of
/// `--origin-config`, through one connection to `url`.
pub async fn load_from_config(url: &str, config: &Config) -> Result<u64, LoadError> {
    let layout = Layout::load(config.origin_config.as_deref())?;
    let c = config.clone();
    let items = tokio::task::spawn_blocking(move || match &c.data {
        Some(path) => tilewarm::dataset::load_path(path),
        None => Ok(tilewarm::dataset::synthetic_city(c.seed, c.synthetic_homes)),
    })
    .await
    .map_err(|e| LoadError::Postgis(format!("loading the data set panicked: {e}")))??;
    let pg: tokio_postgres::Config = url
        .parse()
        .map_err(|e| LoadError::Postgis(format!("{}: {e}", redact_url(url))))?;
    let (client, connection) = pg
        .connect(NoTls)
        .await
        .map_err(|e| LoadError::Postgis(format!("--postgis-load: cannot connect: {e}")))?;
    let driver = tokio::spawn(connection);
    let n = load_items(&client, &layout, &items)
        .await
        .map_err(|e| LoadError::Postgis(format!("--postgis-load: {}", db_failure(e, 0))))?;
    drop(client);
    let _ = driver.await;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SRID a column's type declares decides; a bare `geometry` (0) is judged by a
    /// row's SRID, and with no row is not judged yet. 0 and 4326 are degrees.
    #[test]
    fn a_geometry_column_not_in_degrees_is_named_with_what_is_allowed() {
        let l = Layout::default();
        let ok = Ok(SridCheck::Degrees);
        assert_eq!(srid_verdict(&l, Some(4326), None), ok);
        assert_eq!(srid_verdict(&l, Some(4326), Some(3857)), ok);
        assert_eq!(srid_verdict(&l, Some(0), Some(4326)), ok);
        assert_eq!(srid_verdict(&l, Some(0), Some(0)), ok);
        assert_eq!(srid_verdict(&l, Some(0), None), Ok(SridCheck::Unknown));
        assert_eq!(srid_verdict(&l, None, None), Ok(SridCheck::Unknown));
        for (declared, row, whose) in [
            (Some(3857), None, "its type declares SRID 3857"),
            (Some(0), Some(3857), "a row holds a geometry in SRID 3857"),
        ] {
            let m = srid_verdict(&l, declared, row).unwrap_err();
            for part in [
                whose,
                "\"geom\"",
                "\"tilewarm_items\"",
                "SRID 4326",
                "docs/postgis.md",
            ] {
                assert!(m.contains(part), "{part:?} not in {m}");
            }
        }
    }

    /// A query the database refuses for its configuration (SQLSTATE class 42) or a value
    /// (class 22) says it will not pass by retrying and where to look; it said "retry
    /// later". A class 22 message (it may quote a row, and calls ask at the top tier) reaches
    /// only an agent; a class 42 one (names and types) every caller, as before.
    #[test]
    fn configuration_errors_say_retrying_will_not_help() {
        let msg = |f: &OriginFailure| f.to_error().message;
        for (code, pg) in [
            ("42883", "operator does not exist: bigint = text"),
            ("42703", "column \"price\" does not exist"),
            ("42P01", "relation \"geo.homes\" does not exist"),
            (
                "22P02",
                "invalid input syntax for type integer: \"secret-value\"",
            ),
        ] {
            let f = query_refused(code, pg);
            assert_eq!(
                f.to_error().code,
                tilewarm::protocol::ErrorCode::UpstreamError,
                "{code}"
            );
            for caller in [Access::Public, Access::Verified, Access::Agent] {
                let m = msg(&f.clone().for_caller(caller));
                assert!(!m.contains("retry later"), "{code} {caller}: {m}");
                assert!(
                    m.contains("will not pass by retrying"),
                    "{code} {caller}: {m}"
                );
                assert!(m.contains("--origin-config"), "{code} {caller}: {m}");
                assert!(m.contains("docs/postgis.md"), "{code} {caller}: {m}");
                assert!(m.contains(code), "{code} {caller}: {m}");
                let shown = code.starts_with("42") || caller == Access::Agent;
                assert_eq!(m.contains(pg), shown, "{code} {caller}: {m}");
            }
        }
        // Anything else may pass: the database down, a serialization failure.
        for code in ["57P01", "40001", "53300"] {
            let m = msg(&query_refused(code, "gone"));
            assert!(m.ends_with("retry later"), "{code}: {m}");
            assert!(m.contains("PostgreSQL: gone"), "{code}: {m}");
        }
    }

    #[test]
    fn layouts_read_from_toml_with_defaults_and_refuse_unknown_keys() {
        let l: Layout =
            toml::from_str("table = \"geo.homes\"\n[columns]\nid = \"home_id\"").unwrap();
        assert_eq!(l.table, "geo.homes");
        assert_eq!(l.columns.id, "home_id");
        assert_eq!(l.columns.geom, "geom");
        assert_eq!(l.channel, "tilewarm_changes");
        assert!(toml::from_str::<Layout>("tabel = \"x\"").is_err());
        let bad = Layout {
            channel: "x".repeat(64),
            ..Layout::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("channel"));
    }

    #[test]
    fn envelopes_cover_the_tile_with_a_margin_and_the_edges_of_the_world() {
        let t = TileId::from_lon_lat(-122.33, 47.6, 14).unwrap();
        let [w, s, e, n] = envelopes(&[t]);
        let b = t.bounds();
        assert_eq!(w.len(), 1);
        assert!(w[0] < b.west && e[0] > b.east && s[0] < b.south && n[0] > b.north);
        assert!(e[0] - b.east < 1e-6);
        // The first column also searches at the antimeridian; the top row reaches the pole.
        let corner = TileId::new(3, 0, 0).unwrap();
        let [w, s, e, n] = envelopes(&[corner]);
        assert_eq!(w.len(), 2);
        assert_eq!(n[0], 90.0);
        assert_eq!(e[1], 180.0);
        assert!(s[1] > -90.0);
        let bottom = TileId::new(3, 4, 7).unwrap();
        assert_eq!(envelopes(&[bottom])[1][0], -90.0);
    }

    #[test]
    fn statements_filter_tiers_in_sql_unless_told_not_to() {
        let s = Statements::new(&Layout::default(), true);
        assert!(
            s.tiles.contains("t.\"access\"::text = ANY($5::text[])"),
            "{}",
            s.tiles
        );
        assert!(s.ids.contains("t.\"id\" = ANY($1::text[])"), "{}", s.ids);
        assert!(s.count.contains("LIMIT $6"), "{}", s.count);
        let s = Statements::new(&Layout::default(), false);
        assert!(!s.tiles.contains("ANY($5::text[])"));
        assert_eq!(visible_tiers(Access::Registered), ["public", "registered"]);
    }

    #[test]
    fn a_fetch_reads_its_bounded_tiles_with_a_limit() {
        for sql_filter in [true, false] {
            let s = Statements::new(&Layout::default(), sql_filter);
            // The tiles statement (payloads, tier filter), capped at $6 = limit + 1 rows.
            assert_eq!(s.bounded, format!("{} LIMIT $6", s.tiles));
            assert!(!s.tiles.contains("LIMIT"), "{}", s.tiles);
        }
    }

    #[test]
    fn a_fetch_reads_each_envelope_of_its_other_tiles_with_a_limit() {
        let s = Statements::new(&Layout::default(), true);
        // One index scan per envelope inside the lateral subquery, stopped at $6 rows,
        // the tier filtered there, and the envelope's position as the last column.
        assert!(
            s.limited.contains("WITH ORDINALITY AS b(w, s, e, n, i)")
                && s.limited.contains("CROSS JOIN LATERAL")
                && s.limited.contains("ANY($5::text[]) LIMIT $6) t")
                && s.limited.contains(", b.i FROM"),
            "{}",
            s.limited
        );
        let t = TileId::new(3, 0, 2).unwrap();
        let u = TileId::new(3, 1, 2).unwrap();
        // The first column has two envelopes: each is its tile's.
        assert_eq!(envelope_tiles(&[t, u]), [t, t, u]);
        assert_eq!(envelopes(&[t, u])[0].len(), 3);
    }

    #[test]
    fn ddl_quotes_names_and_notifies_on_the_channel() {
        let l = Layout {
            table: "geo.Homes".into(),
            ..Layout::default()
        };
        let d = ddl(&l);
        assert!(
            d.contains("CREATE TABLE IF NOT EXISTS \"geo\".\"Homes\""),
            "{d}"
        );
        assert!(d.contains("USING gist (\"geom\")"));
        assert!(d.contains("pg_notify('tilewarm_changes', payload)"));
        assert!(d.contains("\"Homes_notify\""));
    }
}
