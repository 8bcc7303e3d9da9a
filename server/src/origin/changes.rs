//! Changes from the database: a trigger on the items table sends one `NOTIFY` per changed
//! row, and this module's listener turns each into an invalidation of the server's cache
//! tier ([`crate::invalidate`]): the row's id and the data tiles of its old and new
//! positions.
//!
//! # Why `LISTEN/NOTIFY` and not logical decoding
//! `NOTIFY` needs nothing but a trigger: no `wal_level = logical`, no replication slot (a
//! slot whose consumer is gone keeps WAL forever and can fill the database's disk), no
//! replication privilege, and it works on managed databases and through poolers in session
//! mode. Notifications are sent at commit, in commit order, only for committed
//! transactions. What it does not give is durability: a notification sent while nobody
//! listens is lost. The reconnect rule below covers that, at the price of a cold tier after
//! a disconnect, which is what a cache can afford and a replication consumer could not.
//!
//! # The payload
//! `{"op":"I"|"U"|"D","id":…,"old":[lon,lat],"new":[lon,lat]}` (`old` for updates and
//! deletes, `new` for inserts and updates), built with `json_build_object`, so about 100
//! bytes, far below `NOTIFY`'s 8000-byte limit. The positions are the rows' own
//! coordinates (in degrees: the trigger transforms a column of another SRID to 4326), so the server maps them onto data tiles with the core's tile maths (exactly
//! as the origin assigns items to tiles), not with SQL. A row with no point (a NULL, empty
//! or other geometry, which the origin skips) has `null` there (`[null, null]` from
//! triggers made before) and names no tile. A payload that would be longer than
//! 7900 bytes (an absurd id) is sent as `{"op":"all"}` instead of failing the writer's
//! transaction. A payload the server cannot read is counted and handled as `all`.
//!
//! # Freshness bound and the reconnect rule
//! While the listener is connected, a committed change is invalidated when its notification
//! arrives (a few milliseconds on one host: `make bench`, part `postgis`, measures the time
//! from `COMMIT` to the server serving the new value) and every request after that gets the
//! new value from the origin; a fetch that was in flight across the change does not write
//! its old answer back ([`crate::invalidate::WriteGuard`]).
//!
//! The connection is checked every [`PING_EVERY`] with a `SELECT 1`, one check at a time,
//! while notifications keep being applied (the check is an arm of the listener's loop, not a
//! wait inside one). **A slow check is not a dead connection**: a database in a checkpoint's
//! I/O stall, a loaded host or a network hiccup of a few seconds answers late, and replacing
//! the connection then would invalidate the whole tier (below) and send the stampede of
//! misses that follows onto that same struggling database. So a check unanswered after
//! [`CHECK_SLOW`] is logged (once) and counted (`tilewarm_changes_slow_checks_total`), and
//! the connection is kept; notifications that arrive meanwhile are applied as usual. The
//! connection is replaced only when it fails (an error or a close from the driver, the OS's
//! TCP keepalive or user timeout noticing a peer that is gone: [`tune_socket`]) or when a
//! check has had no answer for [`CHECK_DEADLINE`] (a connection silently dead). It is
//! replaced with back-off from 100 ms to 2 s (starting over at 100 ms only after a
//! connection that lasted [`STABLE_AFTER`]).
//! **Rule: on every (re)connect, after `LISTEN` is in place, the whole tier is
//! invalidated** — notifications sent while nobody listened are lost, and a delete leaves no
//! row whose update time could prove anything, so nothing cached before can be proven
//! fresh. The first connect at startup does the same (a shared Redis tier may hold entries
//! from before this instance). So with the database reachable, a change is served within
//! the notification delay once the database sends it (a slow database sends it late: a
//! change committed during a stall is served when its notification arrives), or, if the
//! listening connection was lost, within the reconnect time: the back-off (at most 2 s) after
//! a connection that fails, and at most [`PING_EVERY`] + [`CHECK_DEADLINE`] + 2 s (19 s) for
//! one that went silent without failing. The OS does not notice a gone peer sooner: Linux
//! sends keepalive probes only while nothing sent is unacknowledged, and a check goes out
//! [`PING_EVERY`] after the last answer, so once the peer is silent the check's data is
//! in flight and the TCP user timeout ends the connection [`CHECK_DEADLINE`] after it was
//! sent, the moment the deadline fires too ([`tune_socket`]). While the database is
//! unreachable nothing is invalidated and cached entries are served until their TTL (the
//! origin cannot answer either); they are dropped as soon as it is reachable again.
//!
//! An invalidation the tier cannot apply (Redis down, or refusing or timing out the
//! deletes) is retried as `all` until it is applied, after 100 ms, doubling to 2 s
//! ([`crate::invalidate::RETRY_FIRST`], [`crate::invalidate::RETRY_MAX`]). Meanwhile requests are held off the Redis tier
//! ([`crate::tier::CacheTier::hold_reads`]), not only while it is marked down: the tier's
//! probe brings it back as soon as it answers `PING`, and a Redis that kept its data (a
//! restart with persistence, a network partition, refused deletes) would otherwise serve
//! what the failed invalidation covers until the retry lands.
//!
//! # When the change stream does not take a change
//! Once applied to the tier, a change goes on the change stream ([`crate::stream`]) for the
//! other instances and the pages following `GET /v1/changes`. An `XADD` that fails (the
//! stream's Redis node down or refusing it, while the tier's deletes went through) is
//! retried, then owed to the followers as one invalidate-all ([`super::relay`], counted in
//! `tilewarm_changes_unpublished_total`), paid with the next change or on its own (also
//! between reconnects to the database). (Every instance listening to the database publishes
//! the change: followers see it once per instance, which costs a repeated invalidation, not
//! a wrong answer.)
//!
//! # The queue between the connection and the tier
//! Notifications arrive as fast as the database commits; they are applied as fast as the
//! tier can (and not at all while it is down, above). Between the two they wait in a
//! [`ChangeQueue`] of at most `--change-queue-max` payloads: everything waiting is applied
//! as one invalidation. When one more arrives with the queue full, the queue is collapsed
//! into one invalidate-all, which covers every change waiting and every change arriving
//! until it is applied (so nothing is lost, at the price of a cold tier), logged and
//! counted in `tilewarm_changes_queue_overflows_total`. Memory is bounded by
//! `--change-queue-max` times `NOTIFY`'s 8000-byte payload limit.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::Deserialize;
use tilewarm::TileId;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use super::relay::Relay;
use crate::backoff::Backoff;
use crate::invalidate::{Invalidation, Reach};
use crate::tier::ReadHold;
use crate::App;

/// How often the listening connection is checked.
pub const PING_EVERY: Duration = Duration::from_secs(2);
/// How long a check may take before it is logged and counted as slow
/// (`tilewarm_changes_slow_checks_total`). A slow check does not end the connection.
pub const CHECK_SLOW: Duration = Duration::from_secs(2);
/// How long a check may go unanswered, on a connection that has not failed, before the
/// connection is taken for silently dead and replaced (module docs).
pub const CHECK_DEADLINE: Duration = Duration::from_secs(15);
/// TCP keepalive of the listening connection ([`tune_socket`]): the first probe after this
/// much silence, ...
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(5);
/// ... then one every this often, ...
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
/// ... and the connection fails after this many unanswered.
pub const KEEPALIVE_RETRIES: u32 = 3;
/// How long a listening connection must have lasted for the back-off to start over at
/// 100 ms when it drops. One dropped sooner (a pooler or proxy cutting it, a kill loop) keeps
/// backing off to 2 s: each reconnect invalidates the whole tier and publishes that to every
/// follower of the change feed, and starting over whenever the connection had come up at all
/// made that ten times a second.
pub const STABLE_AFTER: Duration = Duration::from_secs(30);

/// What the listener needs: where to connect and which channel to listen on.
#[derive(Clone)]
pub struct ChangeFeed {
    pub config: tokio_postgres::Config,
    pub channel: String,
    pub stats: Arc<ChangeStats>,
}

/// The listener's counters and state (`/metrics`).
#[derive(Default)]
pub struct ChangeStats {
    pub connected: AtomicBool,
    pub connects: AtomicU64,
    pub notifications: AtomicU64,
    pub bad_payloads: AtomicU64,
    /// Checks of the connection that took longer than [`CHECK_SLOW`] (the connection is
    /// kept until [`CHECK_DEADLINE`]).
    pub slow_checks: AtomicU64,
    /// Times the queue of waiting changes overflowed and was collapsed into one
    /// invalidate-all ([`ChangeQueue`]).
    pub queue_overflows: AtomicU64,
    /// Changes applied to the tier that the change stream did not take after
    /// [`super::relay::PUBLISH_TRIES`] tries (owed to its followers as one invalidate-all,
    /// [`Relay`]).
    pub unpublished: Arc<AtomicU64>,
}

/// Change payloads received and not yet applied, at most `max` of them (module docs).
/// The connection's task pushes, the listener takes everything at once.
pub struct ChangeQueue {
    pending: Mutex<Pending>,
    ready: Notify,
    max: usize,
}

#[derive(Debug, Default)]
struct Pending {
    payloads: Vec<String>,
    /// The queue overflowed: what is waiting is "everything".
    everything: bool,
    /// The connection ended: why.
    closed: Option<String>,
}

/// What the listener takes from a [`ChangeQueue`].
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    /// These payloads, in arrival order.
    Changes(Vec<String>),
    /// More than the queue holds arrived: invalidate everything.
    Everything,
    /// Nothing is waiting and the connection ended, for this reason.
    Closed(String),
}

impl ChangeQueue {
    /// A queue of at most `max` payloads (at least 1).
    pub fn new(max: usize) -> ChangeQueue {
        ChangeQueue {
            pending: Mutex::new(Pending::default()),
            ready: Notify::new(),
            max: max.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a payload. Returns true when this one overflowed the queue, which then
    /// stands for "everything" until taken (payloads arriving meanwhile are covered by it
    /// and not kept).
    pub fn push(&self, payload: String) -> bool {
        let overflowed = {
            let mut p = self.lock();
            if p.everything {
                false
            } else if p.payloads.len() >= self.max {
                p.payloads = Vec::new();
                p.everything = true;
                true
            } else {
                p.payloads.push(payload);
                false
            }
        };
        self.ready.notify_one();
        overflowed
    }

    /// Marks the connection ended: once what is waiting is taken, [`Self::take`] says so.
    pub fn close(&self, why: String) {
        self.lock().closed.get_or_insert(why);
        self.ready.notify_one();
    }

    /// Everything waiting, once something is.
    pub async fn take(&self) -> Taken {
        loop {
            {
                let mut p = self.lock();
                if p.everything {
                    p.everything = false;
                    p.payloads.clear();
                    return Taken::Everything;
                }
                if !p.payloads.is_empty() {
                    return Taken::Changes(std::mem::take(&mut p.payloads));
                }
                if let Some(why) = &p.closed {
                    return Taken::Closed(why.clone());
                }
            }
            // A push or close between the check and here leaves a permit: no lost wake-up.
            self.ready.notified().await;
        }
    }

    /// What is waiting now, without waiting: `None` when nothing is (a close is not
    /// taken).
    pub fn take_now(&self) -> Option<Taken> {
        let mut p = self.lock();
        if p.everything {
            p.everything = false;
            p.payloads.clear();
            return Some(Taken::Everything);
        }
        if !p.payloads.is_empty() {
            return Some(Taken::Changes(std::mem::take(&mut p.payloads)));
        }
        None
    }

    /// Payloads waiting now.
    pub fn len(&self) -> usize {
        self.lock().payloads.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a [`Taken`] batch invalidates: the payloads' ids and tiles merged (an unreadable
/// one, or an overflowed queue: everything). Counts unreadable payloads in `stats`.
pub fn batch_invalidation(taken: &Taken, zoom: u8, stats: &ChangeStats) -> Invalidation {
    batch_change(taken, zoom, stats).0
}

/// [`batch_invalidation`] and its [`Reach`]: [`Reach::Tiles`] when every payload gives
/// the old position of a row it updated or deleted (the trigger of [`super::postgis`]'s
/// DDL always does), so that its tiles hold the data tile of every position its ids were
/// at (a position the core cannot place, out of range, is in no tile's envelope either);
/// else [`Reach::Anywhere`].
pub fn batch_change(taken: &Taken, zoom: u8, stats: &ChangeStats) -> (Invalidation, Reach) {
    let payloads = match taken {
        Taken::Changes(p) => p,
        Taken::Everything | Taken::Closed(_) => {
            return (Invalidation::everything(), Reach::Anywhere)
        }
    };
    let mut inv = Invalidation::default();
    let mut reach = Reach::Tiles;
    for p in payloads {
        match parse(p, zoom) {
            Some((i, placed)) => {
                inv.merge(i);
                if !placed {
                    reach = Reach::Anywhere;
                }
            }
            None => {
                stats.bad_payloads.fetch_add(1, Relaxed);
                warn!(payload = %p.chars().take(200).collect::<String>(), "change feed: unreadable notification; invalidating everything");
                inv.merge(Invalidation::everything());
            }
        }
    }
    inv.dedup();
    (inv, reach)
}

#[derive(Deserialize)]
struct Payload {
    op: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    old: Option<Position>,
    #[serde(default)]
    new: Option<Position>,
}

/// A position as a trigger sends it: `[lon, lat]`, or `[null, null]` for a row with no
/// point (a NULL or empty geometry: `ST_X` is NULL). Such a row was never served from a
/// tile (the origin skips it), so it names no tile; it is not an unreadable payload,
/// which would invalidate everything at each write of the row.
type Position = [Option<f64>; 2];

/// The point of a [`Position`]: `Ok(None)` for `[null, null]`; `Err` for half of one.
fn point(p: Option<Position>) -> Result<Option<(f64, f64)>, ()> {
    match p {
        None | Some([None, None]) => Ok(None),
        Some([Some(lon), Some(lat)]) => Ok(Some((lon, lat))),
        Some(_) => Err(()),
    }
}

/// Turns one notification payload into what it invalidates: the id and the data tiles
/// (at `data_zoom`) of the old and new positions. Unreadable: `None`.
pub fn parse_payload(payload: &str, data_zoom: u8) -> Option<Invalidation> {
    parse(payload, data_zoom).map(|(inv, _)| inv)
}

/// [`parse_payload`], and whether it gives where its row was (an insert, or an update or
/// delete with its `old` position).
fn parse(payload: &str, data_zoom: u8) -> Option<(Invalidation, bool)> {
    let p: Payload = serde_json::from_str(payload).ok()?;
    if p.op == "all" {
        return Some((Invalidation::everything(), true));
    }
    if !matches!(p.op.as_str(), "I" | "U" | "D") {
        return None;
    }
    let (old, new) = (point(p.old).ok()?, point(p.new).ok()?);
    // An `old` of `null` (or `[null, null]`) is not taken as "in no tile": the trigger
    // sends it for a polygon or a line too, which the origin never serves but whose box
    // still counts in the envelope rows of every tile it overlaps (the tile limit's
    // count), so its tiles are unknown here.
    let placed = p.op == "I" || old.is_some();
    let mut inv = Invalidation {
        ids: vec![p.id?],
        ..Invalidation::default()
    };
    for (lon, lat) in [old, new].into_iter().flatten() {
        // A position the core cannot place was never served from a tile.
        if let Ok(t) = TileId::from_lon_lat(lon, lat, data_zoom) {
            inv.tiles.push(t);
        }
    }
    Some((inv, placed))
}

/// Runs the listener for `app` until the app is dropped: connect, `LISTEN`, invalidate all,
/// then turn notifications into invalidations; reconnect on any failure (module docs).
pub fn spawn(app: Weak<App>, feed: ChangeFeed) {
    tokio::spawn(async move {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        // The first failure to connect is a warning (a database down at start, a wrong
        // password or database name: the operator must see it), the rest debug until it
        // connects, as the upstream feed does.
        let mut warned = false;
        let mut outbox = Relay::new(
            "change feed",
            ReadHold::DatabaseFeed,
            Arc::clone(&feed.stats.unpublished),
        );
        loop {
            let Some(strong) = app.upgrade() else { return };
            let zoom = strong.config.data_zoom;
            let queue_max = strong.config.change_queue_max;
            // While the database is unreachable too: the followers need not wait for it.
            outbox.pay(&strong).await;
            drop(strong);
            let began = tokio::time::Instant::now();
            let result = listen_once(&app, &feed, &mut outbox, zoom, queue_max).await;
            let Err(e) = result else { return }; // the app is gone
            if app.strong_count() == 0 {
                return; // gone while the connection was ending: nothing was lost for it
            }
            let up_for = if feed.stats.connected.swap(false, Relaxed) {
                warn!(error = %e, "change feed: LISTEN connection lost; reconnecting (the tier will be invalidated)");
                warned = false;
                Some(began.elapsed())
            } else if !warned {
                warn!(error = %e, "change feed: cannot connect to the database; retrying (until it connects, nothing invalidates the tier, and further failures are logged at debug)");
                warned = true;
                None
            } else {
                debug!(error = %e, "change feed: cannot connect yet");
                None
            };
            tokio::time::sleep(backoff.after_connection(up_for, STABLE_AFTER)).await;
        }
    });
}

/// A driver error with its causes: tokio-postgres' own text is only the kind ("error
/// connecting to server", "db error"), the why (refused, a password refused) is its source.
fn with_causes(e: &tokio_postgres::Error) -> String {
    let mut m = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        m.push_str(&format!(": {c}"));
        src = c.source();
    }
    m
}

/// One connection's life. `Ok` when the app is gone; `Err` with why the connection ended.
async fn listen_once(
    app: &Weak<App>,
    feed: &ChangeFeed,
    outbox: &mut Relay,
    zoom: u8,
    queue_max: usize,
) -> Result<(), String> {
    let (client, mut connection) = tokio::time::timeout(
        Duration::from_secs(5),
        feed.config.connect(tokio_postgres::NoTls),
    )
    .await
    .map_err(|_| "connect timed out".to_string())?
    .map_err(|e| with_causes(&e))?;
    // Drive the connection; queue notifications (bounded, module docs). Ends when the
    // connection does.
    let queue = Arc::new(ChangeQueue::new(queue_max));
    let tx = Arc::clone(&queue);
    let stats = Arc::clone(&feed.stats);
    let driver = tokio::spawn(async move {
        let why = loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                    stats.notifications.fetch_add(1, Relaxed);
                    if tx.push(n.payload().to_owned()) {
                        stats.queue_overflows.fetch_add(1, Relaxed);
                        warn!(
                            max = tx.max,
                            "change feed: more changes waiting than --change-queue-max; collapsed into one invalidate-all"
                        );
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break with_causes(&e),
                None => break "connection closed".to_string(),
            }
        };
        tx.close(why);
    });
    let _abort = AbortOnDrop(driver.abort_handle());
    let listen = format!("LISTEN {}", quote_ident(&feed.channel));
    client
        .batch_execute(&listen)
        .await
        .map_err(|e| with_causes(&e))?;
    // Nothing cached before this point can be proven fresh.
    if !outbox
        .apply(app, Invalidation::everything(), Reach::Anywhere)
        .await
    {
        return Ok(());
    }
    feed.stats.connects.fetch_add(1, Relaxed);
    if !feed.stats.connected.swap(true, Relaxed) {
        info!(channel = %feed.channel, "change feed: listening; cache tier invalidated");
    }
    // One check at a time, started PING_EVERY after the last one was answered. It runs as
    // an arm of the loop, so notifications keep being applied while it is outstanding.
    let mut next_check = tokio::time::Instant::now() + PING_EVERY;
    let mut check: Option<Check<'_>> = None;
    // While a check is outstanding, whether the app is still there is looked at every
    // PING_EVERY too (not only when the check ends, up to CHECK_DEADLINE later).
    let mut next_alive = next_check;
    loop {
        let pending = check.as_ref().map(|c| (c.started, c.warned));
        tokio::select! {
            taken = queue.take() => {
                if let Taken::Closed(why) = taken {
                    return Err(why);
                }
                // Everything already queued goes out as one invalidation.
                let (inv, reach) = batch_change(&taken, zoom, &feed.stats);
                if !outbox.apply(app, inv, reach).await {
                    return Ok(());
                }
            }
            _ = tokio::time::sleep_until(outbox.next_try()), if outbox.owed() => {
                let Some(a) = app.upgrade() else {
                    return Ok(());
                };
                outbox.pay(&a).await;
            }
            _ = tokio::time::sleep_until(next_check), if pending.is_none() => {
                if app.upgrade().is_none() {
                    return Ok(());
                }
                check = Some(Check {
                    answer: Box::pin(client.simple_query("SELECT 1")),
                    started: tokio::time::Instant::now(),
                    warned: false,
                });
                next_alive = tokio::time::Instant::now() + PING_EVERY;
            }
            _ = tokio::time::sleep_until(next_alive), if pending.is_some() => {
                if app.upgrade().is_none() {
                    return Ok(());
                }
                next_alive = tokio::time::Instant::now() + PING_EVERY;
            }
            answer = async {
                match check.as_mut() {
                    Some(c) => c.answer.as_mut().await,
                    None => std::future::pending().await,
                }
            }, if pending.is_some() => {
                check = None;
                if let Err(e) = answer {
                    drain(&queue, app, outbox, zoom, &feed.stats).await;
                    return Err(e.to_string());
                }
                if let Some((started, true)) = pending {
                    info!(after_ms = started.elapsed().as_millis() as u64, "change feed: the slow check was answered; connection kept");
                }
                next_check = tokio::time::Instant::now() + PING_EVERY;
            }
            _ = tokio::time::sleep_until(pending.map_or(next_check, |(t, _)| t + CHECK_SLOW)), if matches!(pending, Some((_, false))) => {
                if let Some(c) = check.as_mut() {
                    c.warned = true;
                }
                feed.stats.slow_checks.fetch_add(1, Relaxed);
                warn!(
                    slow_ms = CHECK_SLOW.as_millis() as u64,
                    deadline_ms = CHECK_DEADLINE.as_millis() as u64,
                    "change feed: a check of the LISTEN connection is slow (database busy or network stalled); keeping the connection until the deadline"
                );
            }
            _ = tokio::time::sleep_until(pending.map_or(next_check, |(t, _)| t + CHECK_DEADLINE)), if pending.is_some() => {
                drain(&queue, app, outbox, zoom, &feed.stats).await;
                return Err(format!(
                    "no answer to a check within {} s",
                    CHECK_DEADLINE.as_secs()
                ));
            }
        }
    }
}

/// Applies what the connection's task queued and the loop has not taken yet, before the
/// listener gives the connection up: a notification that arrived with the connection's
/// end (the check's error and the queue are ready in the same turn, and `select!` picks at
/// random) is a change received, to be applied now, not only once a reconnect succeeds
/// (the database may stay unreachable).
async fn drain(
    queue: &ChangeQueue,
    app: &Weak<App>,
    outbox: &mut Relay,
    zoom: u8,
    stats: &ChangeStats,
) {
    if let Some(taken) = queue.take_now() {
        let (inv, reach) = batch_change(&taken, zoom, stats);
        outbox.apply(app, inv, reach).await;
    }
}

/// The check outstanding on the listening connection.
struct Check<'a> {
    answer: Pin<
        Box<
            dyn Future<
                    Output = Result<Vec<tokio_postgres::SimpleQueryMessage>, tokio_postgres::Error>,
                > + Send
                + 'a,
        >,
    >,
    started: tokio::time::Instant,
    /// Counted and logged as slow.
    warned: bool,
}

/// Sets the listening connection's TCP keepalive ([`KEEPALIVE_IDLE`],
/// [`KEEPALIVE_INTERVAL`], [`KEEPALIVE_RETRIES`]) and user timeout ([`CHECK_DEADLINE`]), so
/// the OS ends a connection to a peer that is gone (host down, network cut): keepalive
/// while nothing is in flight, the user timeout while something sent is not acknowledged.
/// With checks every [`PING_EVERY`] something is in flight soon after the peer goes
/// silent, so it is the user timeout that acts, [`CHECK_DEADLINE`] after the check was
/// sent: no sooner than the check's own deadline (keepalive covers a loop held up
/// longer than [`KEEPALIVE_IDLE`] without sending a check). A database that is slow but
/// up acknowledges both at the TCP level, so neither ends the connection then.
pub fn tune_socket(config: &mut tokio_postgres::Config) {
    config
        .keepalives(true)
        .keepalives_idle(KEEPALIVE_IDLE)
        .keepalives_interval(KEEPALIVE_INTERVAL)
        .keepalives_retries(KEEPALIVE_RETRIES)
        .tcp_user_timeout(CHECK_DEADLINE);
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An SQL identifier, double-quoted (`"` doubled); a dotted name is quoted part by part.
pub fn quote_ident(name: &str) -> String {
    name.split('.')
        .map(|part| format!("\"{}\"", part.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_become_ids_and_old_and_new_data_tiles() {
        let inv = parse_payload(
            r#"{"op":"U","id":"h1","old":[-122.33,47.6],"new":[-122.2,47.7]}"#,
            14,
        )
        .unwrap();
        assert_eq!(inv.ids, ["h1"]);
        assert_eq!(
            inv.tiles,
            [
                TileId::from_lon_lat(-122.33, 47.6, 14).unwrap(),
                TileId::from_lon_lat(-122.2, 47.7, 14).unwrap()
            ]
        );
        let inv = parse_payload(r#"{"op":"D","id":"h1","old":[0,0]}"#, 12).unwrap();
        assert_eq!(inv.tiles.len(), 1);
        assert!(parse_payload(r#"{"op":"all"}"#, 14).unwrap().all);
        assert!(parse_payload("garbage", 14).is_none());
        assert!(parse_payload(r#"{"op":"X","id":"a"}"#, 14).is_none());
        assert!(parse_payload(r#"{"op":"I"}"#, 14).is_none());
        // A row with no point (a NULL or empty geometry), as a trigger sends it: its id,
        // no tile; not unreadable (which would invalidate everything).
        for p in [
            r#"{"op":"U","id":"n","old":[null,null],"new":[null,null]}"#,
            r#"{"op":"U","id":"n","old":null,"new":null}"#,
        ] {
            let inv = parse_payload(p, 14).unwrap();
            assert_eq!(
                (inv.ids, inv.tiles, inv.all),
                (vec!["n".into()], vec![], false)
            );
        }
        let inv = parse_payload(
            r#"{"op":"U","id":"m","old":[-122.33,47.6],"new":[null,null]}"#,
            14,
        )
        .unwrap();
        assert_eq!(
            inv.tiles,
            [TileId::from_lon_lat(-122.33, 47.6, 14).unwrap()]
        );
        assert!(parse_payload(r#"{"op":"U","id":"h","old":[1.0,null]}"#, 14).is_none());
    }

    fn payload(id: &str) -> String {
        format!(r#"{{"op":"U","id":"{id}","old":[-122.33,47.6],"new":[-122.2,47.7]}}"#)
    }

    #[tokio::test]
    async fn waiting_changes_are_taken_together_up_to_the_queues_bound() {
        let q = ChangeQueue::new(3);
        let stats = ChangeStats::default();
        assert!(!q.push(payload("a")));
        assert!(!q.push(payload("b")));
        let taken = q.take().await;
        assert_eq!(taken, Taken::Changes(vec![payload("a"), payload("b")]));
        let inv = batch_invalidation(&taken, 14, &stats);
        assert_eq!(inv.ids, ["a", "b"]);
        assert!(!inv.all);
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn an_overflowing_queue_collapses_into_one_invalidate_all() {
        let q = ChangeQueue::new(3);
        let stats = ChangeStats::default();
        for id in ["a", "b", "c"] {
            assert!(!q.push(payload(id)));
        }
        // The fourth does not fit: the queue now stands for everything, holds nothing,
        // and what arrives until it is taken is covered by it, not kept.
        assert!(q.push(payload("d")));
        assert!(q.is_empty());
        for i in 0..1000 {
            assert!(!q.push(payload(&format!("x{i}"))), "overflow counted once");
            assert!(q.is_empty());
        }
        let taken = q.take().await;
        assert_eq!(taken, Taken::Everything);
        assert!(batch_invalidation(&taken, 14, &stats).all);
        // Taken: the queue works as before.
        assert!(!q.push(payload("e")));
        assert_eq!(q.take().await, Taken::Changes(vec![payload("e")]));
        // A closed connection: what waits is taken first, then the reason.
        assert!(!q.push(payload("f")));
        q.close("gone".into());
        assert_eq!(q.take().await, Taken::Changes(vec![payload("f")]));
        assert_eq!(q.take().await, Taken::Closed("gone".into()));
    }

    #[tokio::test]
    async fn a_waiting_listener_wakes_for_a_push() {
        let q = Arc::new(ChangeQueue::new(4));
        let waiter = tokio::spawn({
            let q = Arc::clone(&q);
            async move { q.take().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        q.push(payload("a"));
        let taken = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(taken, Taken::Changes(vec![payload("a")]));
    }

    /// A batch reaches only its tiles when every update and delete in it gives where its
    /// row was; one that does not (a hand-written trigger) reaches anywhere.
    #[test]
    fn a_batch_reaches_its_tiles_only_when_every_row_says_where_it_was() {
        let stats = ChangeStats::default();
        let reach = |payloads: &[&str]| {
            let taken = Taken::Changes(payloads.iter().map(|p| p.to_string()).collect());
            batch_change(&taken, 14, &stats).1
        };
        let insert = r#"{"op":"I","id":"n","new":[-122.2,47.7]}"#;
        let delete = r#"{"op":"D","id":"d","old":[-122.2,47.7]}"#;
        assert_eq!(reach(&[&payload("a"), insert, delete]), Reach::Tiles);
        assert_eq!(
            reach(&[&payload("a"), r#"{"op":"U","id":"b","new":[-122.2,47.7]}"#]),
            Reach::Anywhere
        );
        assert_eq!(reach(&[r#"{"op":"D","id":"b"}"#]), Reach::Anywhere);
        assert_eq!(
            batch_change(&Taken::Everything, 14, &stats),
            (Invalidation::everything(), Reach::Anywhere)
        );
    }

    #[test]
    fn an_unreadable_payload_in_a_batch_is_everything() {
        let stats = ChangeStats::default();
        let inv = batch_invalidation(
            &Taken::Changes(vec![payload("a"), "garbage".into()]),
            14,
            &stats,
        );
        assert!(inv.all);
        assert_eq!(stats.bad_payloads.load(Relaxed), 1);
    }

    #[test]
    fn the_listeners_socket_notices_a_peer_that_is_gone() {
        let mut c: tokio_postgres::Config = "postgres://u@127.0.0.1:5432/db".parse().unwrap();
        tune_socket(&mut c);
        assert!(c.get_keepalives());
        assert_eq!(c.get_keepalives_idle(), KEEPALIVE_IDLE);
        assert_eq!(c.get_keepalives_interval(), Some(KEEPALIVE_INTERVAL));
        assert_eq!(c.get_keepalives_retries(), Some(KEEPALIVE_RETRIES));
        assert_eq!(c.get_tcp_user_timeout(), Some(&CHECK_DEADLINE));
        // Keepalive gives up on a peer silent while nothing is in flight before the
        // check's deadline would.
        assert!(KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_RETRIES < CHECK_DEADLINE);
        assert!(CHECK_SLOW < CHECK_DEADLINE);
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("items"), "\"items\"");
        assert_eq!(quote_ident("geo.items"), "\"geo\".\"items\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
