//! The change stream: every invalidation made through `POST /v1/invalidate`, in order, for
//! the other server instances (which drop what it covers) and for clients (`GET
//! /v1/changes`, server-sent events).
//!
//! # Where it lives
//! - **With `--redis`**: a Redis Stream at `<prefix>changes` ([`changes_key`]). An entry is
//!   `XADD <key> MAXLEN ~ <--changes-retention> * inv <invalidation JSON>` (and
//!   `bumped <prefix>v4:g` when it names classes or `all`, [`BUMPED`]; `reach tiles` when
//!   its tiles hold every position its ids were at, [`REACH`]; `owner <tag>`, the
//!   deployment that made it, [`OWNER`]: a reader skips another deployment's); its id
//!   (`<ms>-<seq>`, [`StreamId`]) is the event id clients see. Each instance runs one
//!   reader ([`spawn_reader`]): `XREAD BLOCK` on a connection of its own (a blocking read
//!   would hold up every command queued behind it on the shared multiplexed connection),
//!   applies each entry made by another instance ([`crate::invalidate::apply_remote`]) and
//!   hands every entry to this instance's feed subscribers.
//! - **Without Redis**: an in-process ring of the last `--changes-retention` events, ids
//!   made the same way from the clock; the same API.
//!
//! # Why a stream and not pub/sub
//! Pub/sub forgets a message nobody was subscribed to when it was sent: an instance whose
//! reader was reconnecting, or a client whose connection dropped, would miss the change and
//! keep serving the old value for a whole TTL. A stream keeps the entries: a reader resumes
//! from the last id it saw (`XREAD` from it, `XRANGE` for a client's `Last-Event-ID`), and
//! when entries after that id are gone or it is unknown to the stream (newer than the last
//! id the stream made: the stream was deleted or this is another server), the event it gets
//! is `reset`: invalidate everything that cannot be proven fresh. Nothing is lost silently.
//!
//! Which entries are gone is read from `XINFO STREAM` (`Horizon`): Redis records
//! `max-deleted-entry-id` for `XDEL` only, while the trimming by `XADD MAXLEN ~` leaves it
//! as it was; a trim shows as `entries-added` above `length`, and then an id older than the
//! one just before the oldest entry kept (`recorded-first-entry-id`) is a gap, whose `from`
//! is that id (a reader exactly at the newest trimmed entry gets a reset it did not need:
//! which ids were trimmed is not recorded). The
//! reader checks this when it (re)connects and after every `XREAD` that answered entries (a
//! reader slower than the appends, one applying a very coarse tile's `SCAN` on a big tier, falls behind
//! by more than the retention, and `XREAD` answers what is left without a word); a
//! `Last-Event-ID` catch-up before and after its `XRANGE`s.
//!
//! # A stream ends with its credential
//! A client's feed is filtered by the tier its token verified to, and a token expires: the
//! stream ends when the token stops verifying (its `exp` plus the leeway,
//! [`crate::auth::Caller::expires_at`]) with a last event `expired` (data `{}`), so that a
//! feed is never followed on a credential the server would refuse now. The client connects
//! again with a fresh token and `Last-Event-ID`, losing nothing (`tilewarm/live` does so at
//! once).
//!
//! # Order of `POST /v1/invalidate`
//! The tier's delete and the local write guard, then `XADD`, then the delete again, then
//! the answer. The first delete is for this instance's followers: the reader hands them
//! the entry as soon as Redis has it, and one that asked again before a delete made only
//! after the `XADD` finished would read the old value back (about one change in twenty on
//! loopback). The second is the one the rest of this paragraph relies on. An
//! instance B whose origin fetch was in flight across the change either wrote before the
//! delete (deleted) or after the `XADD`; its reader then records the entry in B's write
//! guard and deletes again, so the old value cannot stay. It can be *served* between B's
//! write and B's reader seeing the entry (the stream's delivery delay, milliseconds on one
//! network), and only when B had an origin fetch of that item in flight across the
//! change; see docs/server.md. All of this holds while Redis keeps what it acknowledged: no
//! `WAIT` is sent, so a failover to a replica that had not received the deletes and the
//! entry loses them (docs/server.md, "What returned guarantees").

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::stream::{self, Stream, StreamExt};
use tilewarm::access::Access;
use tilewarm::protocol::{decode_invalidation, Invalidation, Limits, StreamId};
use tokio::sync::{broadcast, watch, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::invalidate::Reach;
use crate::redis_conn::{ConnOptions, RedisConn, RedisTarget};
use crate::tier::{now_ms, ReadHold};
use crate::App;

/// The stream entry's field holding the invalidation JSON.
pub const FIELD: &str = "inv";

/// The stream entry's field naming the class generations hash (`<prefix>v4:g`) its classes,
/// or `all`, were bumped in before it was appended (entries naming classes or `all` only).
/// A reader whose tier keeps its generations there applies the entry without bumping them
/// again (and an `all` without deleting every key again: what was stored before is a miss
/// already) ([`crate::invalidate::apply_remote`]); an entry without it (made by an
/// instance of an older storage format, which has no generations, or of an older version
/// that did not bump `all`, during a rolling upgrade) is bumped by every reader, or its
/// values of this format would be served until their TTL.
pub const BUMPED: &str = "bumped";

/// The stream entry's field saying what its invalidation may have changed beyond what it
/// names, when that is less than anywhere: `reach tiles` ([`Reach::Tiles`]: its tiles hold
/// every position its ids were at, as the PostGIS feed's do), so that the other instances
/// forget only those tiles' counts ([`crate::warmup::OverLimit`]). Written only on an
/// entry that is the whole invalidation (one split into parts pairs ids with tiles of other
/// parts); an entry without it (this version's others, an older version's) reaches
/// anywhere.
pub const REACH: &str = "reach";

/// An entry's field naming the deployment that made it (`owner <tag>`,
/// [`crate::owner::Fingerprint::stream_tag`]): a reader skips, neither applying nor handing
/// to its feed's clients, an entry of another deployment sharing the prefix (one whose
/// owner record it was refused, or that refused its). An entry without it (an older
/// version's) is read as before.
pub const OWNER: &str = "owner";

/// How long one `XREAD` blocks.
pub const READ_BLOCK: Duration = Duration::from_secs(2);

/// How long the server's start waits for the stream's end ([`ChangeStream::reader_start`]).
pub const START_WITHIN: Duration = Duration::from_secs(3);

/// How long the reader's `XREAD` blocks while failed invalidations wait to be applied
/// again.
const RETRY_BLOCK: Duration = Duration::from_millis(100);

/// How long the reader's connection must have been reading for its reconnect back-off
/// (100 ms doubling to 2 s) to start over at 100 ms when it drops. Without it a reader
/// that had once waited 2 s to reconnect waited 2 s at every later drop, however long
/// after; one whose connection drops as soon as it reads (a kill loop, a proxy cutting it)
/// keeps backing off.
pub const READER_STABLE_AFTER: Duration = Duration::from_secs(30);

/// Events a slow subscriber may fall behind by before its stream is ended (it then
/// reconnects and resumes from its last id).
pub const SUBSCRIBER_BUFFER: usize = 1024;

/// Most stored events a `Last-Event-ID` catch-up sends; a client further behind gets one
/// `reset` instead (so a resume costs at most this many entries of memory, not the whole
/// retention).
pub const MAX_BACKLOG: usize = 1000;

/// Most bytes of changes a `Last-Event-ID` catch-up holds (`backlog_bytes`); a client
/// further behind gets one `reset` instead, as past [`MAX_BACKLOG`] events. An entry may
/// name 1000 ids of 256 bytes, so the event bound alone would let one catch-up hold a few
/// hundred megabytes, per subscriber.
pub const MAX_BACKLOG_BYTES: usize = 4 << 20;

/// What an event's SSE text takes beyond its data, at most: `event: invalidate`, an `id:`
/// of up to 41 characters, `data: `, the blank line (72 bytes), with room for the `ready`
/// event a catch-up starts with.
const SSE_FRAME_BYTES: usize = 160;

/// The bytes a catch-up is charged for an event: the more of what it holds decoded (its
/// ids', classes' and tiles' sizes, and a little for the event) and of the SSE text a
/// follower reads (its data with the ids as JSON escapes them, and the frame). So a catch-up
/// within [`MAX_BACKLOG_BYTES`] is within it as read too: the edge worker takes a longer
/// one as a reset (`js/edge.js`, `MAX_FEED_BYTES`, the same 4 MiB).
fn backlog_bytes(e: &Event) -> usize {
    match e {
        Event::Invalidate(_, inv, _) => {
            let held = 64
                + inv.ids.iter().map(|i| i.len() + 8).sum::<usize>()
                + inv.classes.iter().map(|c| c.len() + 8).sum::<usize>()
                + inv.tiles.len() * 24;
            held.max(SSE_FRAME_BYTES + data_bytes(inv))
        }
        Event::Reset(..) => SSE_FRAME_BYTES,
    }
}

/// At least the length of an `invalidate` event's data ([`feed_data`]), counted without
/// writing it (a catch-up counts up to [`MAX_BACKLOG`] events of 1000 ids): the fields'
/// names and the reach (64 bytes), each id and class quoted with a comma and its `"` and
/// `\` escaped (neither may hold a control character), each tile at most 20 characters
/// (`24/16777215/16777215`) quoted with a comma.
fn data_bytes(inv: &Invalidation) -> usize {
    let quoted = |s: &String| s.len() + s.bytes().filter(|b| matches!(b, b'"' | b'\\')).count() + 3;
    64 + inv.ids.iter().map(quoted).sum::<usize>()
        + inv.classes.iter().map(quoted).sum::<usize>()
        + inv.tiles.len() * 23
}

/// Whether `events` are more than a catch-up may hold.
fn over_backlog(events: &[Event]) -> bool {
    events.len() > MAX_BACKLOG
        || events.iter().map(backlog_bytes).sum::<usize>() > MAX_BACKLOG_BYTES
}

/// The Redis key of the change stream for a key prefix. Not an item or tile key, so
/// invalidating everything keeps it (see [`crate::tier`]).
pub fn changes_key(prefix: &str) -> String {
    format!("{prefix}changes")
}

/// One event of the feed.
#[derive(Debug, Clone)]
pub enum Event {
    /// These entries changed; the [`Reach`] is what the change may have changed beyond
    /// what it names (said to followers as `"reach":"tiles"`, see `Event::to_sse`).
    Invalidate(StreamId, Arc<Invalidation>, Reach),
    /// Invalidate everything, for the reason given.
    Reset(StreamId, ResetReason),
}

/// Why a follower is told to invalidate everything: the `reason` in a `reset` event's data.
/// A follower applies every `reset` alike; the edge tells them apart in one place (a new
/// isolate's replay of a `gap` with `from`, see docs/edge.md "Changes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReason {
    /// The events after the follower's id cannot be sent: older than what the stream keeps,
    /// unknown to it, more than [`MAX_BACKLOG`], or trimmed before this instance's reader
    /// read them (it was disconnected, or fell more than the retention behind). `from`,
    /// when the stream can say so, is the oldest id it can replay from: it holds every
    /// change after it (with Redis, the `Horizon`'s `resumable_from`; for the in-process
    /// ring its newest dropped id, at first the server's start), so a follower that cannot
    /// trust what it holds from before `from` may replay the rest from there (data
    /// `"from"`).
    Gap { from: Option<StreamId> },
    /// A stream entry whose id or body cannot be read: a change nobody can name.
    Unreadable,
    /// An invalidation naming ids, sent to a follower below the top tier (see
    /// `Event::to_sse`).
    Ids,
}

impl ResetReason {
    /// A gap the stream cannot say more of.
    pub const GAP: ResetReason = ResetReason::Gap { from: None };

    fn data(self) -> String {
        match self {
            ResetReason::Gap { from: None } => r#"{"reason":"gap"}"#.into(),
            ResetReason::Gap { from: Some(id) } => format!(r#"{{"reason":"gap","from":"{id}"}}"#),
            ResetReason::Unreadable => r#"{"reason":"unreadable"}"#.into(),
            ResetReason::Ids => r#"{"reason":"ids"}"#.into(),
        }
    }
}

impl Event {
    pub fn id(&self) -> StreamId {
        match self {
            Event::Invalidate(id, ..) | Event::Reset(id, _) => *id,
        }
    }

    /// The event as a subscriber of verified tier `tier` receives it. Ids go only to the
    /// top tier: an id can name an item above the subscriber's tier, and such an item must
    /// not leave the server, not even by name (ids above a caller's tier are answered as
    /// `missing`, like ids that do not exist). A lower-tier subscriber gets an event with
    /// ids as a `reset` instead (invalidate everything not provable fresh): correct, and
    /// costly, so invalidate by tile or class where public pages follow the feed.
    ///
    /// An invalidation of [`Reach::Tiles`] says so in its data, `"reach":"tiles"` beside
    /// the invalidation's fields (followers that do not know the field skip it): a server
    /// following this one ([`crate::origin::upstream_changes`]) then forgets only those
    /// tiles' counts, as this server's own instances do.
    fn to_sse(&self, tier: Access) -> SseEvent {
        match self {
            Event::Invalidate(id, inv, _) if !inv.ids.is_empty() && tier < Access::Agent => {
                Event::Reset(*id, ResetReason::Ids).to_sse(tier)
            }
            Event::Invalidate(id, inv, reach) => SseEvent::default()
                .event("invalidate")
                .id(id.to_string())
                .data(feed_data(inv, *reach)),
            Event::Reset(id, why) => SseEvent::default()
                .event("reset")
                .id(id.to_string())
                .data(why.data()),
        }
    }
}

/// An `invalidate` event's data: the invalidation's wire form, with `"reach":"tiles"` when
/// its reach is [`Reach::Tiles`].
pub fn feed_data(inv: &Invalidation, reach: Reach) -> String {
    let json = inv.to_json();
    match (reach, json.strip_suffix('}')) {
        (Reach::Tiles, Some(open)) => format!(r#"{open},"{REACH}":"tiles"}}"#),
        _ => json,
    }
}

/// What an `invalidate` event's data says of its reach ([`feed_data`]): [`Reach::Tiles`]
/// when it says `"reach":"tiles"`, [`Reach::Anywhere`] otherwise (an older server's event,
/// or data that is not an object with a string there).
pub fn feed_reach(data: &str) -> Reach {
    #[derive(serde::Deserialize)]
    struct Said {
        reach: Option<String>,
    }
    match serde_json::from_str::<Said>(data) {
        Ok(Said { reach: Some(r) }) if r == "tiles" => Reach::Tiles,
        _ => Reach::Anywhere,
    }
}

/// Counters (`/metrics`, tests).
#[derive(Default)]
pub struct StreamStats {
    /// Entries this instance published.
    pub published: AtomicU64,
    /// Entries of other instances applied here: counted once their invalidation landed on
    /// the tier (one that failed counts in `apply_failures`, and here once applied again).
    pub applied_remote: AtomicU64,
    /// Times this instance's reader found entries lost and invalidated everything.
    pub resets: AtomicU64,
    /// Open `GET /v1/changes` streams.
    pub subscribers: AtomicU64,
    /// Stream entries whose id or body could not be read (each handled as a `reset`).
    pub bad_entries: AtomicU64,
    /// Invalidations read from the stream that this instance failed to apply to the tier
    /// (kept and applied again once the tier answers).
    pub apply_failures: AtomicU64,
    /// The reader's connection answers (with Redis): set by a successful `XREAD` (and at
    /// the start, when the stream answered where to start), cleared when reading fails. While it is not, no other instance's change reaches this one
    /// and its followers get no event (`/metrics`, `/healthz`).
    pub reading: AtomicBool,
}

/// Why a feed was not opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// `--changes-max-subscribers` streams are open.
    Server,
    /// This caller has `--changes-max-per-caller` streams open.
    Caller,
}

struct Ring {
    entries: VecDeque<(StreamId, Arc<Invalidation>, Reach)>,
    last: StreamId,
    /// The newest id dropped from the ring (at start: the start time, so an id from before
    /// this process is older than the ring).
    max_deleted: StreamId,
}

struct RedisStream {
    /// Where the reader opens its own connection.
    target: RedisTarget,
    conn: RedisConn,
    key: String,
    /// This format's class generations hash ([`BUMPED`]).
    gens: String,
    timeout: Duration,
    /// This deployment's [`OWNER`] tag ([`ChangeStream::with_owner_tag`]); `None`: entries
    /// are neither tagged nor filtered.
    owner: Option<String>,
}

enum Backend {
    Local(Mutex<Ring>),
    Redis(RedisStream),
}

/// The change stream of one instance.
pub struct ChangeStream {
    backend: Backend,
    retention: usize,
    tx: broadcast::Sender<Event>,
    stop: watch::Sender<bool>,
    subscribers: Arc<Semaphore>,
    /// Open feed streams per caller (`crate::admission::caller_key`), callers with none
    /// left out.
    per_caller: Mutex<HashMap<String, usize>>,
    /// Ids this instance published (the reader does not apply them again).
    own: Mutex<VecDeque<StreamId>>,
    pub stats: StreamStats,
}

/// Why the stream could not be used.
#[derive(Debug, Clone, thiserror::Error)]
#[error("change stream unavailable: {0}")]
pub struct StreamError(pub String);

fn redis_err(e: redis::RedisError) -> StreamError {
    StreamError(e.to_string())
}

impl ChangeStream {
    /// An in-process stream.
    pub fn local(retention: usize, max_subscribers: usize) -> ChangeStream {
        let start = StreamId {
            ms: now_ms(),
            seq: 0,
        };
        ChangeStream::with(
            Backend::Local(Mutex::new(Ring {
                entries: VecDeque::new(),
                last: start,
                max_deleted: start,
            })),
            retention,
            max_subscribers,
        )
    }

    /// A Redis stream at [`changes_key`]`(prefix)` (on a cluster: on the node owning its
    /// slot); connects lazily.
    pub fn redis(
        target: &RedisTarget,
        prefix: &str,
        timeout: Duration,
        retention: usize,
        max_subscribers: usize,
    ) -> Result<ChangeStream, StreamError> {
        let opts = ConnOptions {
            timeout,
            read_from_replicas: false,
        };
        let conn = RedisConn::open(target, opts).map_err(redis_err)?;
        Ok(ChangeStream::with(
            Backend::Redis(RedisStream {
                target: target.clone(),
                conn,
                key: changes_key(prefix),
                gens: crate::stored::Keys::new(prefix).gens().to_owned(),
                timeout,
                owner: None,
            }),
            retention,
            max_subscribers,
        ))
    }

    /// Tags this instance's entries with its deployment's `tag` ([`OWNER`]) and skips
    /// the entries of another tag. A no-op without Redis.
    pub fn with_owner_tag(mut self, tag: String) -> ChangeStream {
        if let Backend::Redis(s) = &mut self.backend {
            s.owner = Some(tag);
        }
        self
    }

    /// Whether an entry with these fields was made by another deployment ([`OWNER`]).
    fn foreign(&self, fields: &[Vec<u8>]) -> bool {
        let Backend::Redis(RedisStream {
            owner: Some(mine), ..
        }) = &self.backend
        else {
            return false;
        };
        fields
            .chunks(2)
            .any(|kv| matches!(kv, [k, v] if k == OWNER.as_bytes() && v != mine.as_bytes()))
    }

    fn with(backend: Backend, retention: usize, max_subscribers: usize) -> ChangeStream {
        let (tx, _) = broadcast::channel(SUBSCRIBER_BUFFER);
        ChangeStream {
            backend,
            retention: retention.max(1),
            tx,
            stop: watch::channel(false).0,
            subscribers: Arc::new(Semaphore::new(max_subscribers)),
            per_caller: Mutex::new(HashMap::new()),
            own: Mutex::new(VecDeque::new()),
            stats: StreamStats::default(),
        }
    }

    /// Whether it is shared through Redis.
    pub fn is_redis(&self) -> bool {
        matches!(self.backend, Backend::Redis(_))
    }

    /// Where this instance's reader starts ([`spawn_reader`]): the stream's end, read
    /// before the server answers its first request. Every entry made after it is applied
    /// here, however late the reader's task first runs: taken by the reader itself (as
    /// before), the start was wherever the stream was when that task got to it, and an
    /// entry another instance made in between (after this one had served, and cached, what
    /// it invalidates) was skipped. `None` (warned, with Redis's last error) when Redis does
    /// not answer, or refuses, within [`START_WITHIN`] (the reader then starts where the
    /// stream is when it first reads it, and the server starts anyway, its tier degraded
    /// until Redis answers).
    pub async fn reader_start(&self) -> Option<StreamId> {
        let Backend::Redis(s) = &self.backend else {
            return None;
        };
        let mut conn = s.conn.clone();
        // The last error, for the warning: Redis may answer, and refuse (an older Redis, an
        // ACL, the key of another type).
        let mut refused: Option<String> = None;
        let read = async {
            let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(500));
            loop {
                match stream_info(&mut conn, &s.key).await {
                    Ok(h) => return h.last,
                    Err(e) => {
                        debug!(error = %e, "change stream: reading where to start");
                        refused = Some(e.to_string());
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                }
            }
        };
        let read = tokio::time::timeout(START_WITHIN, read).await;
        match read {
            Ok(last) => Some(last),
            Err(_) => {
                let error = refused.unwrap_or_else(|| "no answer".to_owned());
                warn!(
                    key = %s.key,
                    %error,
                    "change stream: where the stream ends could not be read within {START_WITHIN:?} at start; \
                     the reader starts where the stream is when it first reads it"
                );
                None
            }
        }
    }

    /// Ends every open feed stream (server shutdown).
    pub fn close(&self) {
        let _ = self.stop.send(true);
    }

    /// Appends an invalidation already applied to this instance's tier (its classes bumped:
    /// the entry says so, [`BUMPED`]); returns its id (the last one's, when it is split). It goes
    /// on the stream in parts no longer than [`Limits::default`] allows
    /// ([`Invalidation::split`]): that is what the stream's readers (every instance, and
    /// the feed's followers) decode entries with, and an entry one cannot decode is a
    /// `reset` for it, which drops its whole tier. In-process, subscribers get it at once;
    /// with Redis, through the reader.
    pub async fn publish(&self, inv: &Invalidation) -> Result<StreamId, StreamError> {
        self.publish_with(inv, Reach::Anywhere).await
    }

    /// [`publish`](Self::publish), saying on the entry what the change may have changed
    /// beyond what it names ([`REACH`]; only when it goes out whole, in one entry).
    pub async fn publish_with(
        &self,
        inv: &Invalidation,
        reach: Reach,
    ) -> Result<StreamId, StreamError> {
        let parts = inv.split(&Limits::default());
        let reach = if parts.len() == 1 && !inv.all {
            reach
        } else {
            Reach::Anywhere
        };
        let mut last = None;
        for part in parts {
            last = Some(self.publish_one(&part, reach).await?);
        }
        last.ok_or_else(|| StreamError("nothing to publish".into()))
    }

    async fn publish_one(&self, inv: &Invalidation, reach: Reach) -> Result<StreamId, StreamError> {
        let id = match &self.backend {
            Backend::Local(ring) => {
                let inv = Arc::new(inv.clone());
                let mut r = ring.lock().unwrap_or_else(|p| p.into_inner());
                let now = StreamId {
                    ms: now_ms(),
                    seq: 0,
                };
                let id = now.max(r.last.next()).max(r.max_deleted.next());
                r.last = id;
                r.entries.push_back((id, Arc::clone(&inv), reach));
                while r.entries.len() > self.retention {
                    if let Some((gone, ..)) = r.entries.pop_front() {
                        r.max_deleted = gone;
                    }
                }
                let _ = self.tx.send(Event::Invalidate(id, inv, reach));
                id
            }
            Backend::Redis(s) => {
                let mut conn = s.conn.clone();
                let mut cmd = redis::cmd("XADD");
                cmd.arg(&s.key)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(self.retention)
                    .arg("*")
                    .arg(FIELD)
                    .arg(inv.to_json());
                if !inv.classes.is_empty() || inv.all {
                    cmd.arg(BUMPED).arg(&s.gens);
                }
                if reach == Reach::Tiles {
                    cmd.arg(REACH).arg("tiles");
                }
                if let Some(tag) = &s.owner {
                    cmd.arg(OWNER).arg(tag);
                }
                let add = cmd.query_async::<String>(&mut conn);
                let raw = match tokio::time::timeout(s.timeout, add).await {
                    Ok(r) => r.map_err(redis_err)?,
                    Err(_) => {
                        return Err(StreamError(format!(
                            "XADD did not answer within {} ms",
                            s.timeout.as_millis()
                        )))
                    }
                };
                let id = raw
                    .parse::<StreamId>()
                    .map_err(|e| StreamError(format!("XADD answered {e}")))?;
                let mut own = self.own.lock().unwrap_or_else(|p| p.into_inner());
                own.push_back(id);
                while own.len() > 256 {
                    own.pop_front();
                }
                id
            }
        };
        self.stats.published.fetch_add(1, Relaxed);
        Ok(id)
    }

    fn is_own(&self, id: StreamId) -> bool {
        let own = self.own.lock().unwrap_or_else(|p| p.into_inner());
        own.contains(&id)
    }

    /// The events after `after` (none when `after` is `None`: start from now) and the id
    /// they bring a client to. A `Reset` when `after` is older than what is kept or unknown.
    pub async fn since(
        &self,
        after: Option<StreamId>,
    ) -> Result<(Vec<Event>, StreamId), StreamError> {
        match &self.backend {
            Backend::Local(ring) => {
                let r = ring.lock().unwrap_or_else(|p| p.into_inner());
                let Some(after) = after else {
                    return Ok((Vec::new(), r.last));
                };
                // The ring holds every change after `max_deleted` (at first this process's
                // start: nothing from before it is known).
                let gap = ResetReason::Gap {
                    from: Some(r.max_deleted),
                };
                if after > r.last || after < r.max_deleted {
                    return Ok((vec![Event::Reset(r.last, gap)], r.last));
                }
                let events: Vec<Event> = r
                    .entries
                    .iter()
                    .filter(|(id, ..)| *id > after)
                    .take(MAX_BACKLOG + 1)
                    .map(|(id, inv, reach)| Event::Invalidate(*id, Arc::clone(inv), *reach))
                    .collect();
                if over_backlog(&events) {
                    return Ok((vec![Event::Reset(r.last, gap)], r.last));
                }
                Ok((events, r.last))
            }
            Backend::Redis(s) => {
                let fut = async {
                    let mut conn = s.conn.clone();
                    let horizon = stream_info(&mut conn, &s.key).await?;
                    let last = horizon.last;
                    let Some(after) = after else {
                        return Ok((Vec::new(), last));
                    };
                    if horizon.lost_after(after) {
                        return Ok((vec![Event::Reset(last, horizon.gap(after))], last));
                    }
                    let mut events = Vec::new();
                    let mut from = after;
                    while from < last {
                        let batch: Vec<RawEntry> = redis::cmd("XRANGE")
                            .arg(&s.key)
                            .arg(format!("({from}"))
                            .arg(last.to_string())
                            .arg("COUNT")
                            .arg(100)
                            .query_async(&mut conn)
                            .await
                            .map_err(redis_err)?;
                        let Some((tail, _)) = batch.last() else { break };
                        for (id, f) in &batch {
                            if self.foreign(f) {
                                continue;
                            }
                            match entry(id, f) {
                                Some(e) => {
                                    if matches!(e, Event::Reset(..)) {
                                        self.stats.bad_entries.fetch_add(1, Relaxed);
                                    }
                                    events.push(e);
                                }
                                None => {
                                    // An id that cannot be read: what follows cannot be
                                    // resumed from it either; the client starts over.
                                    self.stats.bad_entries.fetch_add(1, Relaxed);
                                    return Ok((
                                        vec![Event::Reset(last, ResetReason::Unreadable)],
                                        last,
                                    ));
                                }
                            }
                        }
                        if over_backlog(&events) {
                            return Ok((vec![Event::Reset(last, horizon.gap(after))], last));
                        }
                        from = parse_id(tail)?;
                    }
                    // Entries after `after` trimmed while they were being read (between the
                    // XINFO and an XRANGE) would be missing without a word.
                    let now = stream_info(&mut conn, &s.key).await?;
                    if now.lost_after(after) {
                        return Ok((vec![Event::Reset(last, now.gap(after))], last));
                    }
                    Ok((events, last))
                };
                let limit = s.timeout.max(Duration::from_secs(5));
                tokio::time::timeout(limit, fut).await.map_err(|_| {
                    StreamError(format!(
                        "reading the stream took more than {} ms",
                        limit.as_millis()
                    ))
                })?
            }
        }
    }

    /// A feed for one client: the events after `after`, then (with `follow`) live ones;
    /// `Err(Full)` when `--changes-max-subscribers` streams are open, or `caller` (its
    /// key and its cap; `None`: not capped) has that many open. Without `follow` the
    /// stream ends after the stored events (a poll: the edge, a cron job). With `expires`
    /// (how long the subscriber's credential still verifies) a followed stream ends then,
    /// with an `expired` event (module docs).
    pub async fn subscribe(
        self: &Arc<Self>,
        after: Option<StreamId>,
        tier: Access,
        follow: bool,
        caller: Option<(String, usize)>,
        expires: Option<Duration>,
    ) -> Result<Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, Full>, StreamError>
    {
        let slot = match caller {
            None => None,
            Some((key, max)) => match CallerSlot::take(self, key, max) {
                Some(slot) => Some(slot),
                None => return Ok(Err(Full::Caller)),
            },
        };
        let Ok(permit) = Arc::clone(&self.subscribers).try_acquire_owned() else {
            return Ok(Err(Full::Server));
        };
        // Subscribe before reading the backlog, so nothing falls between the two; repeats
        // are skipped by id.
        let rx = self.tx.subscribe();
        let (backlog, position) = self.since(after).await?;
        let ready = SseEvent::default()
            .event("ready")
            .id(after.unwrap_or(position).to_string())
            .data("{}");
        let mut sent = after.unwrap_or(position);
        let mut first = vec![ready];
        for e in &backlog {
            first.push(e.to_sse(tier));
            sent = sent.max(e.id());
        }
        let live = Live {
            rx,
            stop: self.stop.subscribe(),
            sent,
            tier,
            until: expires.map(|left| tokio::time::Instant::now() + left),
            ended: false,
            _permit: Permit::new(permit, Arc::downgrade(self)),
            _slot: slot,
        };
        let live = stream::unfold((live, follow), |(mut l, follow)| async move {
            if !follow {
                return None;
            }
            l.next()
                .await
                .map(|e| (Ok::<_, Infallible>(e), (l, follow)))
        });
        let s = stream::iter(first.into_iter().map(Ok)).chain(live);
        Ok(Ok(Sse::new(s).keep_alive(
            KeepAlive::new().interval(Duration::from_secs(15)),
        )))
    }

    /// The events this instance hands its followers, as they are handed (an in-process
    /// follower; tests).
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    /// Open feed streams of the caller with this key.
    pub fn open_for(&self, key: &str) -> usize {
        let m = self.per_caller.lock().unwrap_or_else(|p| p.into_inner());
        m.get(key).copied().unwrap_or(0)
    }
}

/// One of a caller's `--changes-max-per-caller` feed streams; given back when dropped.
struct CallerSlot {
    key: String,
    stream: Weak<ChangeStream>,
}

impl CallerSlot {
    fn take(stream: &Arc<ChangeStream>, key: String, max: usize) -> Option<CallerSlot> {
        let mut m = stream.per_caller.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(key.clone()).or_insert(0);
        if *n >= max {
            if *n == 0 {
                m.remove(&key);
            }
            return None;
        }
        *n += 1;
        Some(CallerSlot {
            key,
            stream: Arc::downgrade(stream),
        })
    }
}

impl Drop for CallerSlot {
    fn drop(&mut self) {
        let Some(s) = self.stream.upgrade() else {
            return;
        };
        let mut m = s.per_caller.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

/// A subscriber's slot, counted in [`StreamStats::subscribers`].
struct Permit {
    _permit: OwnedSemaphorePermit,
    stream: Weak<ChangeStream>,
}

impl Permit {
    fn new(permit: OwnedSemaphorePermit, stream: Weak<ChangeStream>) -> Permit {
        if let Some(s) = stream.upgrade() {
            s.stats.subscribers.fetch_add(1, Relaxed);
        }
        Permit {
            _permit: permit,
            stream,
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(s) = self.stream.upgrade() {
            s.stats.subscribers.fetch_sub(1, Relaxed);
        }
    }
}

struct Live {
    rx: broadcast::Receiver<Event>,
    stop: watch::Receiver<bool>,
    sent: StreamId,
    /// The subscriber's verified tier ([`Event::to_sse`]).
    tier: Access,
    /// When the subscriber's credential stops verifying; taken when the `expired` event
    /// is sent.
    until: Option<tokio::time::Instant>,
    /// The `expired` event was sent: the stream ends.
    ended: bool,
    _permit: Permit,
    _slot: Option<CallerSlot>,
}

impl Live {
    /// The next live event newer than what was sent; `None` ends the stream (shutdown, the
    /// subscriber fell more than [`SUBSCRIBER_BUFFER`] events behind: it resumes, or after
    /// the `expired` event).
    async fn next(&mut self) -> Option<SseEvent> {
        let expired = SseEvent::default().event("expired").data("{}");
        loop {
            if *self.stop.borrow() || self.ended {
                return None;
            }
            let until = self.until;
            let got = tokio::select! {
                r = self.rx.recv() => r,
                _ = self.stop.changed() => return None,
                // `None` (no credential, or `expired` sent): never.
                Some(()) = async move {
                    tokio::time::sleep_until(until?).await;
                    Some(())
                } => {
                    // Sent once; the next call ends the stream.
                    self.until = None;
                    self.ended = true;
                    return Some(expired);
                }
            };
            match got {
                Ok(e) if e.id() > self.sent || matches!(e, Event::Reset(..)) => {
                    self.sent = self.sent.max(e.id());
                    return Some(e.to_sse(self.tier));
                }
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }
}

/// A stream entry as Redis answers it: the id and the fields, name then value.
type RawEntry = (String, Vec<Vec<u8>>);

fn parse_id(s: &str) -> Result<StreamId, StreamError> {
    s.parse()
        .map_err(|e| StreamError(format!("the stream holds a bad id: {e}")))
}

/// One stream entry as an event; an entry that is not an invalidation is a `Reset` (it
/// cannot be proven harmless).
fn entry(id: &str, fields: &[Vec<u8>]) -> Option<Event> {
    let id = id.parse::<StreamId>().ok()?;
    let body = fields
        .chunks(2)
        .find(|kv| kv.len() == 2 && kv[0] == FIELD.as_bytes())
        .map(|kv| kv[1].as_slice());
    Some(
        match body.and_then(|b| decode_invalidation(b, &Limits::default()).ok()) {
            Some(inv) => Event::Invalidate(id, Arc::new(inv), reach_of(fields)),
            None => Event::Reset(id, ResetReason::Unreadable),
        },
    )
}

/// What an entry's fields say of its reach ([`REACH`]): [`Reach::Anywhere`] unless it says
/// `tiles`.
fn reach_of(fields: &[Vec<u8>]) -> Reach {
    let tiles = fields
        .chunks(2)
        .any(|kv| matches!(kv, [k, v] if k == REACH.as_bytes() && v == b"tiles"));
    if tiles {
        Reach::Tiles
    } else {
        Reach::Anywhere
    }
}

/// What `XINFO STREAM` says about resuming from an id: the last id the stream made, and the
/// oldest id a reader can resume from without missing an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Horizon {
    last: StreamId,
    /// Resuming from an older id may miss entries that were removed (trimmed by `XADD
    /// MAXLEN`, `XTRIM`, or deleted by `XDEL`).
    resumable_from: StreamId,
}

impl Horizon {
    /// A stream that does not exist (yet).
    const NONE: Horizon = Horizon {
        last: StreamId::ZERO,
        resumable_from: StreamId::ZERO,
    };

    /// From `XINFO STREAM`'s fields. `max-deleted-entry-id` is set by `XDEL` only: a trim
    /// (`XADD MAXLEN`, `XTRIM`) leaves it as it was, so a trim is seen from `entries-added`
    /// being more than `length` (something was removed), and then every entry older than
    /// the oldest kept one (`recorded-first-entry-id`; with none kept, the last id made) may
    /// have been removed: a reader resumes without a loss from the id just before the
    /// oldest kept one (no entry lies between), which is the `from` its gap names. A reader
    /// exactly at the newest trimmed entry is reset though it missed nothing (which ids
    /// were trimmed is not recorded): a spurious reset at the boundary, never a silent
    /// loss.
    fn from_info(
        last: StreamId,
        max_deleted: StreamId,
        length: u64,
        entries_added: u64,
        first: StreamId,
    ) -> Horizon {
        let trimmed = if entries_added > length {
            if length == 0 {
                last
            } else {
                just_before(first)
            }
        } else {
            StreamId::ZERO
        };
        Horizon {
            last,
            resumable_from: max_deleted.max(trimmed),
        }
    }

    /// Whether a reader that saw everything up to `after` cannot resume from it: entries
    /// after it are gone, or the stream never made it (newer than its last id: the stream
    /// was deleted, or this is another server).
    fn lost_after(&self, after: StreamId) -> bool {
        after > self.last || after < self.resumable_from
    }

    /// The `gap` for a reader at `after` that [`Horizon::lost_after`]: `from`
    /// `resumable_from`, except for an id the stream never made (it was deleted: what it
    /// held before is unknown).
    fn gap(&self, after: StreamId) -> ResetReason {
        if after > self.last {
            ResetReason::GAP
        } else {
            ResetReason::Gap {
                from: Some(self.resumable_from),
            }
        }
    }
}

/// The id just before `id` (`0-0` for `0-0`).
fn just_before(id: StreamId) -> StreamId {
    match (id.seq.checked_sub(1), id.ms.checked_sub(1)) {
        (Some(seq), _) => StreamId { ms: id.ms, seq },
        (None, Some(ms)) => StreamId { ms, seq: u64::MAX },
        (None, None) => StreamId::ZERO,
    }
}

/// The stream's [`Horizon`] (`XINFO STREAM`, Redis 7); [`Horizon::NONE`] when the stream
/// does not exist yet.
async fn stream_info(conn: &mut RedisConn, key: &str) -> Result<Horizon, StreamError> {
    let exists: bool = redis::cmd("EXISTS")
        .arg(key)
        .query_async(conn)
        .await
        .map_err(redis_err)?;
    if !exists {
        return Ok(Horizon::NONE);
    }
    let info: redis::Value = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(key)
        .query_async(conn)
        .await
        .map_err(redis_err)?;
    let pairs: Vec<(String, redis::Value)> = match info {
        redis::Value::Map(m) => m
            .into_iter()
            .filter_map(|(k, v)| redis::from_redis_value::<String>(k).ok().map(|k| (k, v)))
            .collect(),
        redis::Value::Array(a) => a
            .chunks(2)
            .filter_map(|kv| match kv {
                [k, v] => redis::from_redis_value_ref::<String>(k)
                    .ok()
                    .map(|k| (k, v.clone())),
                _ => None,
            })
            .collect(),
        other => return Err(StreamError(format!("XINFO STREAM answered {other:?}"))),
    };
    let value = |name: &str| -> Result<&redis::Value, StreamError> {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
            .ok_or_else(|| {
                StreamError(format!(
                    "XINFO STREAM has no {name} (the change stream needs Redis 7 or later)"
                ))
            })
    };
    let id = |name: &str| -> Result<StreamId, StreamError> {
        let s: String = redis::from_redis_value_ref(value(name)?)
            .map_err(|e| StreamError(format!("XINFO STREAM {name}: {e}")))?;
        parse_id(&s)
    };
    let count = |name: &str| -> Result<u64, StreamError> {
        redis::from_redis_value_ref(value(name)?)
            .map_err(|e| StreamError(format!("XINFO STREAM {name}: {e}")))
    };
    Ok(Horizon::from_info(
        id("last-generated-id")?,
        id("max-deleted-entry-id")?,
        count("length")?,
        count("entries-added")?,
        id("recorded-first-entry-id")?,
    ))
}

/// Runs this instance's reader until the app is dropped (module docs). Starts after
/// `from` ([`ChangeStream::reader_start`], read before the server answered anything), or
/// without one at the stream's end when it first connects; after a lost connection it
/// resumes from the last entry read, and if entries it had not read were trimmed
/// meanwhile, it invalidates everything here and sends `reset` to its subscribers.
pub fn spawn_reader(app: Weak<App>, from: Option<StreamId>) {
    // The stream answered just now (its end was read): reading until a read fails, not
    // only once the first `XREAD` returns (up to READ_BLOCK later on a quiet stream).
    if let (Some(_), Some(a)) = (from, app.upgrade()) {
        a.changes.stats.reading.store(true, Relaxed);
    }
    tokio::spawn(async move {
        let mut last: Option<StreamId> = from;
        if let Some(from) = from {
            info!(from = %from, "change stream reader started");
        }
        let mut failed = Vec::new();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        // Warned since the reader last read: one warning per outage, the retries at debug.
        let mut warned = false;
        loop {
            let mut reading_since = None;
            let result = read_once(&app, &mut last, &mut failed, &mut reading_since).await;
            let Some(a) = app.upgrade() else { return };
            a.changes.stats.reading.store(false, Relaxed);
            drop(a);
            match result {
                Ok(()) => return, // the app is gone
                Err(e) => {
                    warned &= reading_since.is_none();
                    if !std::mem::replace(&mut warned, true) {
                        warn!(error = %e, "change stream reader: reading the stream failed; until it reads again, other instances' changes do not reach this one, nor its followers (retrying)");
                    } else {
                        debug!(error = %e, "change stream reader: reconnecting");
                    }
                    let up_for = reading_since.map(|t: tokio::time::Instant| t.elapsed());
                    tokio::time::sleep(backoff.after_connection(up_for, READER_STABLE_AFTER)).await;
                }
            }
        }
    });
}

/// Most failed invalidations kept to apply again; past it they become one `all`.
const MAX_FAILED: usize = 64;

/// An invalidation the reader failed to apply: whether its classes were bumped already
/// ([`BUMPED`]), and how many entries of other instances it stands for (0 for this
/// instance's own `reset`; several once failures were merged into one `all`), counted in
/// `applied_remote` when it lands.
struct Pending {
    inv: Invalidation,
    bumped: bool,
    /// What its entry says it may have changed beyond what it names ([`REACH`]).
    reach: Reach,
    remote: u64,
}

/// Invalidations the reader failed to apply, oldest first.
type Failed = Vec<Pending>;

/// Applies `inv` to this instance's tier (`bumped`: [`crate::invalidate::apply_remote`]),
/// counting the `remote` entries of other instances it stands for in `applied_remote` once
/// it landed; a failure (the tier is marked down) is counted in `apply_failures` and kept
/// in `failed` to be applied again by [`retry_failed`], so a change read while the tier was
/// failing is not forgotten, and requests are held off the tier until it is
/// ([`crate::tier::CacheTier::hold_reads`]).
async fn apply(
    app: &App,
    inv: Invalidation,
    (bumped, reach): (bool, Reach),
    remote: u64,
    failed: &mut Failed,
) {
    if crate::invalidate::apply_remote(app, &inv, bumped, reach)
        .await
        .is_ok()
    {
        app.changes.stats.applied_remote.fetch_add(remote, Relaxed);
        return;
    }
    app.tier.hold_reads(ReadHold::ChangeStream, true);
    app.changes.stats.apply_failures.fetch_add(1, Relaxed);
    if inv.all || failed.len() >= MAX_FAILED {
        let remote = remote + failed.iter().map(|p| p.remote).sum::<u64>();
        // Standing for invalidations that did not land: bumped here (`false`), as the
        // reader's own reset is.
        *failed = vec![Pending {
            inv: Invalidation::everything(),
            bumped: false,
            reach: Reach::Anywhere,
            remote,
        }];
    } else if let Some(all) = failed.first_mut().filter(|p| p.inv.all) {
        // Covered by the `all` waiting already.
        all.remote += remote;
    } else {
        failed.push(Pending {
            inv,
            bumped,
            reach,
            remote,
        });
    }
}

/// What the reader could not read is gone or cannot be named: nothing this instance holds
/// can be proven fresh. Invalidates everything here (recorded in the write guard, so a
/// fetch in flight does not write back either) and sends the subscribers a `reset` to `to`.
async fn reset_everything(a: &App, failed: &mut Failed, to: StreamId, why: ResetReason) {
    a.changes.stats.resets.fetch_add(1, Relaxed);
    // Not bumped by anyone yet: `false`, so that it bumps `all`'s generation.
    let all = Invalidation::everything();
    apply(a, all, (false, Reach::Anywhere), 0, failed).await;
    let _ = a.changes.tx.send(Event::Reset(to, why));
}

/// Applies again what failed before, oldest first, until one fails again.
async fn retry_failed(app: &App, failed: &mut Failed) {
    while let Some(p) = failed.first() {
        if crate::invalidate::apply_remote(app, &p.inv, p.bumped, p.reach)
            .await
            .is_err()
        {
            return;
        }
        let p = failed.remove(0);
        app.changes
            .stats
            .applied_remote
            .fetch_add(p.remote, Relaxed);
    }
}

/// One connection's life: `Ok` when the app is gone, else why it ended. `reading_since`
/// is set at its first successful `XREAD` (for the reconnect back-off).
async fn read_once(
    app: &Weak<App>,
    last: &mut Option<StreamId>,
    failed: &mut Failed,
    reading_since: &mut Option<tokio::time::Instant>,
) -> Result<(), StreamError> {
    let (target, key, gens, mut info_conn, timeout) = {
        let Some(a) = app.upgrade() else {
            return Ok(());
        };
        let Backend::Redis(s) = &a.changes.backend else {
            return Ok(());
        };
        (
            s.target.clone(),
            s.key.clone(),
            s.gens.clone(),
            s.conn.clone(),
            s.timeout,
        )
    };
    // Its own connection (own sockets), whose answers may take the whole block.
    let opts = ConnOptions {
        timeout: READ_BLOCK + timeout.max(Duration::from_secs(1)),
        read_from_replicas: false,
    };
    let mut conn = RedisConn::open(&target, opts).map_err(redis_err)?;
    let horizon = stream_info(&mut info_conn, &key).await?;
    let end = horizon.last;
    match *last {
        None => {
            *last = Some(end);
            info!(key = %key, from = %end, "change stream reader started");
        }
        Some(l) if horizon.lost_after(l) => {
            let Some(a) = app.upgrade() else {
                return Ok(());
            };
            warn!(from = %l, to = %end, "change stream: entries were lost while disconnected; invalidating everything");
            reset_everything(&a, failed, end, ResetReason::GAP).await;
            *last = Some(end);
        }
        Some(_) => {}
    }
    // The first XREAD of a connection does not block: it answers at once, so the reader
    // counts as reading (`/healthz`) as soon as the stream answers it, not up to
    // READ_BLOCK later on a quiet stream.
    let mut first = true;
    loop {
        if !failed.is_empty() {
            let Some(a) = app.upgrade() else {
                return Ok(());
            };
            retry_failed(&a, failed).await;
            a.tier
                .hold_reads(ReadHold::ChangeStream, !failed.is_empty());
        }
        // While invalidations wait to be applied again (and requests are held off the
        // tier), they are retried every RETRY_BLOCK, not after a whole READ_BLOCK.
        let block = if failed.is_empty() {
            READ_BLOCK
        } else {
            RETRY_BLOCK
        };
        let from = last.unwrap_or(StreamId::ZERO);
        let mut xread = redis::cmd("XREAD");
        xread.arg("COUNT").arg(256);
        if !std::mem::take(&mut first) {
            xread.arg("BLOCK").arg(block.as_millis() as u64);
        }
        let reply: Option<Vec<(String, Vec<RawEntry>)>> = xread
            .arg("STREAMS")
            .arg(&key)
            .arg(from.to_string())
            .query_async(&mut conn)
            .await
            .map_err(redis_err)?;
        reading_since.get_or_insert_with(tokio::time::Instant::now);
        let Some(a) = app.upgrade() else {
            return Ok(());
        };
        if !a.changes.stats.reading.swap(true, Relaxed) {
            info!(key = %key, "change stream reader: reading");
        }
        let reply = reply.unwrap_or_default();
        if reply.iter().any(|(_, entries)| !entries.is_empty()) {
            // A reader that fell more than the retention behind (a slow apply: a class's
            // SCAN on a big tier) is answered the entries still kept, without a word about
            // the ones trimmed after `from`. The stream's horizon, read after the XREAD,
            // tells: trimming only moves it forward, so entries the XREAD skipped put it
            // past `from` now.
            let horizon = stream_info(&mut info_conn, &key).await?;
            if horizon.lost_after(from) {
                let end = horizon.last;
                warn!(from = %from, to = %end, "change stream: the reader fell behind past the retention and entries were trimmed before it read them; invalidating everything");
                // Covers what this XREAD answered too: its entries are not before `end`.
                reset_everything(&a, failed, end, ResetReason::GAP).await;
                *last = Some(end);
                continue;
            }
        }
        let mut bad_id = false;
        for (_, entries) in reply {
            for (id, fields) in entries {
                let Some(event) = entry(&id, &fields) else {
                    // An id that cannot be read: handled below as a reset.
                    a.changes.stats.bad_entries.fetch_add(1, Relaxed);
                    bad_id = true;
                    continue;
                };
                *last = Some(event.id());
                if a.changes.foreign(&fields) {
                    // Another deployment's: not this one's tier nor its clients' concern.
                    continue;
                }
                if let Event::Reset(..) = event {
                    // A body that is not an invalidation: it cannot be proven harmless.
                    a.changes.stats.bad_entries.fetch_add(1, Relaxed);
                }
                if !a.changes.is_own(event.id()) {
                    let inv = match &event {
                        Event::Invalidate(_, inv, _) => (**inv).clone(),
                        Event::Reset(..) => Invalidation::everything(),
                    };
                    let bumped = fields.chunks(2).any(
                        |kv| matches!(kv, [k, v] if k == BUMPED.as_bytes() && v == gens.as_bytes()),
                    );
                    // A tier failure marks Redis down (the tier is not read until it is
                    // back) and is applied again then.
                    apply(&a, inv, (bumped, reach_of(&fields)), 1, failed).await;
                }
                let _ = a.changes.tx.send(event);
            }
        }
        if bad_id {
            // The stream's end is read before invalidating everything, so every entry up to
            // it is covered; reading resumes after it.
            let end = stream_info(&mut info_conn, &key).await?.last;
            warn!(to = %end, "change stream: an entry id could not be read; invalidating everything");
            reset_everything(&a, failed, end, ResetReason::Unreadable).await;
            *last = Some(end.max(last.unwrap_or(StreamId::ZERO)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv(id: &str) -> Invalidation {
        Invalidation {
            ids: vec![id.into()],
            ..Invalidation::default()
        }
    }

    #[tokio::test]
    async fn the_local_ring_resumes_or_resets() {
        let s = ChangeStream::local(2, 4);
        let (none, start) = s.since(None).await.unwrap();
        assert!(none.is_empty());
        let a = s.publish(&inv("a")).await.unwrap();
        let b = s.publish(&inv("b")).await.unwrap();
        assert!(start < a && a < b);
        let (ev, pos) = s.since(Some(start)).await.unwrap();
        assert_eq!(ev.iter().map(Event::id).collect::<Vec<_>>(), [a, b]);
        assert_eq!(pos, b);
        let (ev, _) = s.since(Some(a)).await.unwrap();
        assert_eq!(ev.len(), 1);
        // Past retention: `a` is trimmed, so a client at `start` cannot be caught up.
        let c = s.publish(&inv("c")).await.unwrap();
        let (ev, pos) = s.since(Some(start)).await.unwrap();
        // It holds every change after `a`, the newest it trimmed: a replay may start there.
        assert!(
            matches!(ev[..], [Event::Reset(id, ResetReason::Gap { from: Some(f) })] if id == c && f == a),
            "{ev:?}"
        );
        assert_eq!(pos, c);
        assert_eq!(
            ResetReason::Gap { from: Some(a) }.data(),
            format!(r#"{{"reason":"gap","from":"{a}"}}"#)
        );
        assert_eq!(ResetReason::GAP.data(), r#"{"reason":"gap"}"#);
        // `a` itself is still a good resume point (nothing after it was trimmed).
        let (ev, _) = s.since(Some(a)).await.unwrap();
        assert_eq!(ev.len(), 2);
        // An id this stream never made.
        let future = StreamId {
            ms: c.ms + 1_000_000,
            seq: 0,
        };
        let (ev, _) = s.since(Some(future)).await.unwrap();
        assert!(matches!(ev[..], [Event::Reset(_, ResetReason::Gap { from: Some(f) })] if f == a));
    }

    #[tokio::test]
    async fn a_restarted_ring_says_it_holds_the_changes_since_its_start() {
        // An in-process stream knows nothing from before it started: a follower's id from
        // before then (a client of the last process) gets a gap from the start.
        let s = ChangeStream::local(16, 4);
        let (_, start) = s.since(None).await.unwrap();
        let a = s.publish(&inv("a")).await.unwrap();
        let old = StreamId {
            ms: start.ms - 1,
            seq: 0,
        };
        let (ev, pos) = s.since(Some(old)).await.unwrap();
        assert!(
            matches!(ev[..], [Event::Reset(id, ResetReason::Gap { from: Some(f) })] if id == a && f == start),
            "{ev:?}"
        );
        assert_eq!(pos, a);
        // From there, the changes since.
        let (ev, _) = s.since(Some(start)).await.unwrap();
        assert_eq!(ev.iter().map(Event::id).collect::<Vec<_>>(), [a]);
    }

    #[tokio::test]
    async fn a_change_longer_than_a_reader_decodes_goes_out_in_parts_it_decodes() {
        let s = ChangeStream::local(16, 4);
        let (_, start) = s.since(None).await.unwrap();
        let max = Limits::default().max_ids;
        let big = Invalidation {
            ids: (0..2 * max + 1).map(|i| format!("x{i}")).collect(),
            ..Invalidation::default()
        };
        let last = s.publish(&big).await.unwrap();
        let (ev, pos) = s.since(Some(start)).await.unwrap();
        assert_eq!(pos, last);
        let mut ids = Vec::new();
        for e in &ev {
            let Event::Invalidate(_, inv, _) = e else {
                panic!("{e:?}")
            };
            // What a reader of the stream or a follower of the feed decodes it with.
            let read = decode_invalidation(inv.to_json().as_bytes(), &Limits::default());
            ids.extend(read.unwrap().ids);
        }
        assert_eq!(ev.len(), 3);
        assert_eq!(ids, big.ids);
    }

    #[tokio::test]
    async fn a_catch_up_longer_than_the_backlog_bound_is_a_reset() {
        let s = ChangeStream::local(MAX_BACKLOG + 10, 4);
        let (_, start) = s.since(None).await.unwrap();
        let mut ids = Vec::new();
        for i in 0..=MAX_BACKLOG {
            ids.push(s.publish(&inv(&format!("x{i}"))).await.unwrap());
        }
        // All are kept (retention), but one more than the bound: a single reset.
        let (ev, pos) = s.since(Some(start)).await.unwrap();
        // Everything is kept (nothing trimmed since the start): `from` says so, and is no
        // later than the id asked from.
        assert!(
            matches!(ev[..], [Event::Reset(id, ResetReason::Gap { from: Some(f) })] if id == pos && f == start),
            "{}",
            ev.len()
        );
        // Exactly the bound: the events.
        let (ev, _) = s.since(Some(ids[0])).await.unwrap();
        assert_eq!(ev.len(), MAX_BACKLOG);
    }

    #[tokio::test]
    async fn a_catch_up_larger_than_the_byte_bound_is_a_reset() {
        let s = ChangeStream::local(100, 4);
        let (_, start) = s.since(None).await.unwrap();
        // 1000 ids of 200 bytes an entry: about 200 KB each, so about 20 entries fill the
        // bound, far fewer than MAX_BACKLOG.
        let big = |n: usize| Invalidation {
            ids: (0..1000).map(|i| format!("{n:03}{i:0>197}")).collect(),
            ..Invalidation::default()
        };
        let mut ids = Vec::new();
        for n in 0..40 {
            ids.push(s.publish(&big(n)).await.unwrap());
        }
        let (ev, pos) = s.since(Some(start)).await.unwrap();
        assert!(
            matches!(ev[..], [Event::Reset(id, ResetReason::Gap { from: Some(f) })] if id == pos && f == start),
            "{} events",
            ev.len()
        );
        // A few entries behind: the events.
        let (ev, _) = s.since(Some(ids[35])).await.unwrap();
        assert_eq!(ev.len(), 4);
    }

    /// The byte bound holds for the text a follower reads too: ids that JSON escapes (a
    /// `"` is written `\"`) take about twice their size there. Eleven entries of 1000 ids of
    /// 200 quotes are about 2.3 MB held but 4.4 MB written, over the edge's 4 MiB: a reset.
    #[tokio::test]
    async fn a_catch_up_over_the_byte_bound_as_written_is_a_reset() {
        let s = ChangeStream::local(100, 4);
        let (_, start) = s.since(None).await.unwrap();
        let quoted = |n: usize| Invalidation {
            ids: (0..1000)
                .map(|i| format!("{n:03}{i:03}{}", "\"".repeat(194)))
                .collect(),
            ..Invalidation::default()
        };
        let mut ids = Vec::new();
        for n in 0..11 {
            ids.push(s.publish(&quoted(n)).await.unwrap());
        }
        let (ev, _) = s.since(Some(start)).await.unwrap();
        assert!(
            matches!(ev[..], [Event::Reset(..)]),
            "{} events, {} bytes written",
            ev.len(),
            ev.iter()
                .map(|e| match e {
                    Event::Invalidate(_, inv, r) => feed_data(inv, *r).len(),
                    Event::Reset(..) => 0,
                })
                .sum::<usize>()
        );
        // Ten of them, about 4.0 MB written: sent.
        let (ev, _) = s.since(Some(ids[0])).await.unwrap();
        assert_eq!(ev.len(), 10);
    }

    #[tokio::test]
    async fn each_caller_has_at_most_its_cap_of_feeds() {
        let s = Arc::new(ChangeStream::local(4, 8));
        let a1 = s
            .subscribe(None, Access::Agent, true, Some(("ip:a".into(), 2)), None)
            .await
            .unwrap();
        let a2 = s
            .subscribe(None, Access::Agent, true, Some(("ip:a".into(), 2)), None)
            .await
            .unwrap();
        assert!(a1.is_ok() && a2.is_ok());
        let a3 = s
            .subscribe(None, Access::Agent, true, Some(("ip:a".into(), 2)), None)
            .await
            .unwrap();
        assert_eq!(a3.err(), Some(Full::Caller));
        assert!(s
            .subscribe(None, Access::Agent, true, Some(("ip:b".into(), 2)), None)
            .await
            .unwrap()
            .is_ok());
        assert!(
            s.subscribe(None, Access::Agent, true, None, None)
                .await
                .unwrap()
                .is_ok(),
            "uncapped"
        );
        drop(a1);
        assert_eq!(s.open_for("ip:a"), 1);
        assert!(s
            .subscribe(None, Access::Agent, true, Some(("ip:a".into(), 2)), None)
            .await
            .unwrap()
            .is_ok());
        drop(a2);
    }

    fn sid(ms: u64) -> StreamId {
        StreamId { ms, seq: 0 }
    }

    /// `max-deleted-entry-id` moves on `XDEL` only (Redis 7.0.15: `XADD MAXLEN ~` and
    /// `XTRIM` leave it `0-0`), so a trim must be read from `entries-added` and the first
    /// entry kept.
    #[test]
    fn a_trim_is_a_gap_though_redis_records_no_deleted_id() {
        // 300 added, 100 kept from 201 on, nothing deleted by XDEL.
        let h = Horizon::from_info(sid(300), StreamId::ZERO, 100, 300, sid(201));
        assert!(h.lost_after(sid(1)), "entries 2 to 200 were trimmed");
        assert!(h.lost_after(StreamId::ZERO));
        // (200 itself may have been the last trimmed: a spurious reset, not a loss.)
        assert!(h.lost_after(sid(200)));
        assert!(!h.lost_after(sid(201)));
        assert!(!h.lost_after(sid(300)));
        assert!(h.lost_after(sid(301)), "never made");
        // Just before 201 nothing can be missed: that is where a gap says to replay from
        // (201 itself is then replayed), and resuming there is no gap.
        let from = StreamId {
            ms: 200,
            seq: u64::MAX,
        };
        assert_eq!(h.gap(sid(1)), ResetReason::Gap { from: Some(from) });
        assert!(!h.lost_after(from));
        assert_eq!(h.gap(sid(301)), ResetReason::GAP, "unknown: no `from`");
        assert_eq!(just_before(sid(201)), from);
        assert_eq!(
            just_before(from),
            StreamId {
                ms: 200,
                seq: u64::MAX - 1
            }
        );
        assert_eq!(just_before(StreamId::ZERO), StreamId::ZERO);
        // Nothing removed: the stream holds everything it made, from any id.
        let h = Horizon::from_info(sid(300), StreamId::ZERO, 300, 300, sid(1));
        assert!(!h.lost_after(StreamId::ZERO));
        // Everything trimmed (`XTRIM MAXLEN 0`; Redis then records `0-0` as the first).
        let h = Horizon::from_info(sid(300), StreamId::ZERO, 0, 300, StreamId::ZERO);
        assert!(h.lost_after(sid(299)));
        assert!(!h.lost_after(sid(300)));
        // An entry in the middle deleted with XDEL.
        let h = Horizon::from_info(sid(300), sid(150), 299, 300, sid(1));
        assert!(h.lost_after(sid(149)));
        assert!(!h.lost_after(sid(150)));
        assert!(!Horizon::NONE.lost_after(StreamId::ZERO));
        assert!(Horizon::NONE.lost_after(sid(1)));
    }

    #[test]
    fn an_entry_that_is_not_an_invalidation_resets() {
        let ok = entry("5-1", &[b"inv".to_vec(), br#"{"ids":["a"]}"#.to_vec()]);
        assert!(matches!(ok, Some(Event::Invalidate(..))));
        let bad = entry("5-2", &[b"inv".to_vec(), b"{}".to_vec()]);
        assert!(matches!(
            bad,
            Some(Event::Reset(_, ResetReason::Unreadable))
        ));
        assert!(entry("x", &[]).is_none());
    }

    /// An entry reaches only its tiles when it says so, anywhere otherwise (an older
    /// version's entry, or one of this version's that is not a PostGIS change whole).
    #[test]
    fn an_entry_reaches_its_tiles_only_when_it_says_so() {
        let f = |kv: &[&[u8]]| kv.iter().map(|b| b.to_vec()).collect::<Vec<_>>();
        let inv: &[u8] = br#"{"ids":["a"],"tiles":["14/1/1"]}"#;
        assert_eq!(
            reach_of(&f(&[b"inv", inv, b"reach", b"tiles"])),
            Reach::Tiles
        );
        assert_eq!(reach_of(&f(&[b"inv", inv])), Reach::Anywhere);
        assert_eq!(
            reach_of(&f(&[b"inv", inv, b"reach", b"x"])),
            Reach::Anywhere
        );
        assert_eq!(reach_of(&f(&[b"reach"])), Reach::Anywhere);
        // The event made of the entry carries it to followers.
        let reach = |fields: &[&[u8]]| match entry("1-0", &f(fields)) {
            Some(Event::Invalidate(_, _, r)) => r,
            e => panic!("{e:?}"),
        };
        assert_eq!(reach(&[b"inv", inv, b"reach", b"tiles"]), Reach::Tiles);
        assert_eq!(reach(&[b"inv", inv]), Reach::Anywhere);
    }

    /// What a catch-up counts of an event's data is never less than the data written.
    #[test]
    fn an_events_data_is_counted_at_least_as_written() {
        let tile = |t: &str| t.parse::<tilewarm::TileId>().unwrap();
        let cases = [
            Invalidation {
                ids: vec!["a".into()],
                ..Invalidation::default()
            },
            Invalidation {
                ids: vec!["\"q\\b\"".into(), "é€😀".into(), "x".repeat(256)],
                tiles: vec![tile("24/16777215/16777215"), tile("0/0/0")],
                classes: vec!["for_sale".into(), "a-b".into()],
                all: false,
            },
            Invalidation::everything(),
        ];
        for inv in &cases {
            for reach in [Reach::Tiles, Reach::Anywhere] {
                let written = feed_data(inv, reach).len();
                assert!(
                    data_bytes(inv) >= written,
                    "{inv:?}: {} < {written}",
                    data_bytes(inv)
                );
            }
        }
    }

    /// A feed event's data says `"reach":"tiles"` only for such a change; a follower that
    /// does not know the field (the core's decoder: the package, the edge, an older server)
    /// reads the same invalidation from it.
    #[test]
    fn a_feed_event_says_its_reach_beside_the_invalidation() {
        let inv = Invalidation {
            ids: vec!["a".into()],
            tiles: vec!["14/1/1".parse().unwrap()],
            ..Invalidation::default()
        };
        let tiles = feed_data(&inv, Reach::Tiles);
        assert_eq!(
            tiles,
            r#"{"ids":["a"],"tiles":["14/1/1"],"classes":[],"all":false,"reach":"tiles"}"#
        );
        assert_eq!(feed_data(&inv, Reach::Anywhere), inv.to_json());
        let read = decode_invalidation(tiles.as_bytes(), &Limits::default()).unwrap();
        assert_eq!(read, inv);
        assert_eq!(feed_reach(&tiles), Reach::Tiles);
        for other in [
            inv.to_json(),
            r#"{"ids":["a"],"reach":"anywhere"}"#.into(),
            r#"{"ids":["a"],"reach":5}"#.into(),
            "not json".into(),
        ] {
            assert_eq!(feed_reach(&other), Reach::Anywhere, "{other}");
        }
    }

    /// The in-process ring keeps a change's reach for a follower that catches up
    /// (`Last-Event-ID`), as for one that is live, and says `tiles` only of a change that
    /// goes out whole: not of `all`, nor of the parts of one split (each pairs ids with
    /// tiles of other parts).
    #[tokio::test]
    async fn the_ring_keeps_the_reach_of_a_change_that_goes_out_whole() {
        let s = ChangeStream::local(16, 4);
        let (_, start) = s.since(None).await.unwrap();
        let t: tilewarm::tile::TileId = "14/1/1".parse().unwrap();
        let whole = Invalidation {
            ids: vec!["a".into()],
            tiles: vec![t],
            ..Invalidation::default()
        };
        let split = Invalidation {
            ids: (0..=Limits::default().max_ids)
                .map(|i| format!("x{i}"))
                .collect(),
            tiles: vec![t],
            ..Invalidation::default()
        };
        let mut live = s.tx.subscribe();
        for inv in [&whole, &split, &Invalidation::everything()] {
            s.publish_with(inv, Reach::Tiles).await.unwrap();
        }
        let reach = |e: &Event| match e {
            Event::Invalidate(_, _, r) => *r,
            e => panic!("{e:?}"),
        };
        let (caught_up, _) = s.since(Some(start)).await.unwrap();
        let caught_up: Vec<Reach> = caught_up.iter().map(reach).collect();
        let mut heard = Vec::new();
        while let Ok(e) = live.try_recv() {
            heard.push(reach(&e));
        }
        use Reach::{Anywhere, Tiles};
        assert_eq!(caught_up, [Tiles, Anywhere, Anywhere, Anywhere]);
        assert_eq!(heard, caught_up);
    }
}
