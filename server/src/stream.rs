//! The change stream: every invalidation made through `POST /v1/invalidate`, in order, for
//! the other server instances (which drop what it covers) and for clients (`GET
//! /v1/changes`, server-sent events).
//!
//! # Where it lives
//! - **With `--redis`**: a Redis Stream at `<prefix>changes` ([`changes_key`]). An entry is
//!   `XADD <key> MAXLEN ~ <--changes-retention> * inv <invalidation JSON>`; its id
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
//! when that id is older than what the stream still holds (Redis's `max-deleted-entry-id`
//! is past it) or unknown to it (newer than the last id the stream made: the stream was
//! deleted or this is another server), the event it gets is `reset`: invalidate everything
//! that cannot be proven fresh. Nothing is lost silently.
//!
//! # Order of `POST /v1/invalidate`
//! `XADD` first, then the tier's delete and the local write guard, then the answer. An
//! instance B whose origin fetch was in flight across the change either wrote before the
//! delete (deleted) or after the `XADD`; its reader then records the entry in B's write
//! guard and deletes again, so the old value cannot stay. It can be *served* between B's
//! write and B's reader seeing the entry (the stream's delivery delay, milliseconds on one
//! network), and only when B had an origin fetch of that item in flight across the
//! change; see docs/server.md.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::stream::{self, Stream, StreamExt};
use tilewarm::access::Access;
use tilewarm::protocol::{decode_invalidation, Invalidation, Limits, StreamId};
use tokio::sync::{broadcast, watch, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

use crate::redis_conn::{ConnOptions, RedisConn, RedisTarget};
use crate::tier::now_ms;
use crate::App;

/// The stream entry's field holding the invalidation JSON.
pub const FIELD: &str = "inv";

/// How long one `XREAD` blocks.
pub const READ_BLOCK: Duration = Duration::from_secs(2);

/// Events a slow subscriber may fall behind by before its stream is ended (it then
/// reconnects and resumes from its last id).
pub const SUBSCRIBER_BUFFER: usize = 1024;

/// The Redis key of the change stream for a key prefix. Not an item or tile key, so
/// invalidating everything keeps it (see [`crate::tier`]).
pub fn changes_key(prefix: &str) -> String {
    format!("{prefix}changes")
}

/// One event of the feed.
#[derive(Debug, Clone)]
pub enum Event {
    /// These entries changed.
    Invalidate(StreamId, Arc<Invalidation>),
    /// Events were lost (past retention, or an unknown id): invalidate everything.
    Reset(StreamId),
}

impl Event {
    pub fn id(&self) -> StreamId {
        match self {
            Event::Invalidate(id, _) | Event::Reset(id) => *id,
        }
    }

    /// The event as a subscriber of verified tier `tier` receives it. Ids go only to the
    /// top tier: an id can name an item above the subscriber's tier, and such an item must
    /// not leave the server, not even by name (ids above a caller's tier are answered as
    /// `missing`, like ids that do not exist). A lower-tier subscriber gets an event with
    /// ids as a `reset` instead (invalidate everything not provable fresh): correct, and
    /// costly, so invalidate by tile or class where public pages follow the feed.
    fn to_sse(&self, tier: Access) -> SseEvent {
        match self {
            Event::Invalidate(id, inv) if !inv.ids.is_empty() && tier < Access::Agent => {
                Event::Reset(*id).to_sse(tier)
            }
            Event::Invalidate(id, inv) => SseEvent::default()
                .event("invalidate")
                .id(id.to_string())
                .data(inv.to_json()),
            Event::Reset(id) => SseEvent::default()
                .event("reset")
                .id(id.to_string())
                .data("{}"),
        }
    }
}

/// Counters (`/metrics`, tests).
#[derive(Default)]
pub struct StreamStats {
    /// Entries this instance published.
    pub published: AtomicU64,
    /// Entries of other instances applied here.
    pub applied_remote: AtomicU64,
    /// Times this instance's reader found entries lost and invalidated everything.
    pub resets: AtomicU64,
    /// Open `GET /v1/changes` streams.
    pub subscribers: AtomicU64,
}

struct Ring {
    entries: VecDeque<(StreamId, Arc<Invalidation>)>,
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
    timeout: Duration,
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
                timeout,
            }),
            retention,
            max_subscribers,
        ))
    }

    fn with(backend: Backend, retention: usize, max_subscribers: usize) -> ChangeStream {
        let (tx, _) = broadcast::channel(SUBSCRIBER_BUFFER);
        ChangeStream {
            backend,
            retention: retention.max(1),
            tx,
            stop: watch::channel(false).0,
            subscribers: Arc::new(Semaphore::new(max_subscribers)),
            own: Mutex::new(VecDeque::new()),
            stats: StreamStats::default(),
        }
    }

    /// Whether it is shared through Redis.
    pub fn is_redis(&self) -> bool {
        matches!(self.backend, Backend::Redis(_))
    }

    /// Ends every open feed stream (server shutdown).
    pub fn close(&self) {
        let _ = self.stop.send(true);
    }

    /// Appends an invalidation; returns its id. In-process, subscribers get it at once;
    /// with Redis, through the reader.
    pub async fn publish(&self, inv: &Invalidation) -> Result<StreamId, StreamError> {
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
                r.entries.push_back((id, Arc::clone(&inv)));
                while r.entries.len() > self.retention {
                    if let Some((gone, _)) = r.entries.pop_front() {
                        r.max_deleted = gone;
                    }
                }
                let _ = self.tx.send(Event::Invalidate(id, inv));
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
                if after > r.last || after < r.max_deleted {
                    return Ok((vec![Event::Reset(r.last)], r.last));
                }
                let events = r
                    .entries
                    .iter()
                    .filter(|(id, _)| *id > after)
                    .map(|(id, inv)| Event::Invalidate(*id, Arc::clone(inv)))
                    .collect();
                Ok((events, r.last))
            }
            Backend::Redis(s) => {
                let fut = async {
                    let mut conn = s.conn.clone();
                    let (last, max_deleted) = stream_info(&mut conn, &s.key).await?;
                    let Some(after) = after else {
                        return Ok((Vec::new(), last));
                    };
                    if after > last || after < max_deleted {
                        return Ok((vec![Event::Reset(last)], last));
                    }
                    let mut events = Vec::new();
                    let mut from = after;
                    while from < last {
                        let batch: Vec<RawEntry> = redis::cmd("XRANGE")
                            .arg(&s.key)
                            .arg(format!("({from}"))
                            .arg(last.to_string())
                            .arg("COUNT")
                            .arg(1000)
                            .query_async(&mut conn)
                            .await
                            .map_err(redis_err)?;
                        let Some((tail, _)) = batch.last() else { break };
                        from = parse_id(tail)?;
                        events.extend(batch.iter().filter_map(|(id, f)| entry(id, f)));
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
    /// `None` when `--changes-max-subscribers` streams are open. Without `follow` the
    /// stream ends after the stored events (a poll: the edge, a cron job).
    pub async fn subscribe(
        self: &Arc<Self>,
        after: Option<StreamId>,
        tier: Access,
        follow: bool,
    ) -> Result<Option<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>>, StreamError> {
        let Ok(permit) = Arc::clone(&self.subscribers).try_acquire_owned() else {
            return Ok(None);
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
            _permit: Permit::new(permit, Arc::downgrade(self)),
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
        Ok(Some(Sse::new(s).keep_alive(
            KeepAlive::new().interval(Duration::from_secs(15)),
        )))
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
    _permit: Permit,
}

impl Live {
    /// The next live event newer than what was sent; `None` ends the stream (shutdown, or
    /// the subscriber fell more than [`SUBSCRIBER_BUFFER`] events behind: it resumes).
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if *self.stop.borrow() {
                return None;
            }
            let got = tokio::select! {
                r = self.rx.recv() => r,
                _ = self.stop.changed() => return None,
            };
            match got {
                Ok(e) if e.id() > self.sent || matches!(e, Event::Reset(_)) => {
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
            Some(inv) => Event::Invalidate(id, Arc::new(inv)),
            None => Event::Reset(id),
        },
    )
}

/// The stream's last made id and the newest id trimmed away (`XINFO STREAM`, Redis 7);
/// both `0-0` when the stream does not exist yet.
async fn stream_info(conn: &mut RedisConn, key: &str) -> Result<(StreamId, StreamId), StreamError> {
    let exists: bool = redis::cmd("EXISTS")
        .arg(key)
        .query_async(conn)
        .await
        .map_err(redis_err)?;
    if !exists {
        return Ok((StreamId::ZERO, StreamId::ZERO));
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
    let field = |name: &str| -> Result<StreamId, StreamError> {
        let v = pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
            .ok_or_else(|| {
                StreamError(format!(
                    "XINFO STREAM has no {name} (the change stream needs Redis 7 or later)"
                ))
            })?;
        let s: String = redis::from_redis_value_ref(v)
            .map_err(|e| StreamError(format!("XINFO STREAM {name}: {e}")))?;
        parse_id(&s)
    };
    Ok((field("last-generated-id")?, field("max-deleted-entry-id")?))
}

/// Runs this instance's reader until the app is dropped (module docs). Starts at the
/// stream's end; after a lost connection it resumes from the last entry read, and if
/// entries it had not read were trimmed meanwhile, it invalidates everything here and
/// sends `reset` to its subscribers.
pub fn spawn_reader(app: Weak<App>) {
    tokio::spawn(async move {
        let mut last: Option<StreamId> = None;
        let mut backoff = Duration::from_millis(100);
        loop {
            match read_once(&app, &mut last).await {
                Ok(()) => return, // the app is gone
                Err(e) => {
                    debug!(error = %e, "change stream reader: reconnecting");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    });
}

async fn read_once(app: &Weak<App>, last: &mut Option<StreamId>) -> Result<(), StreamError> {
    let (target, key, mut info_conn, timeout) = {
        let Some(a) = app.upgrade() else {
            return Ok(());
        };
        let Backend::Redis(s) = &a.changes.backend else {
            return Ok(());
        };
        (s.target.clone(), s.key.clone(), s.conn.clone(), s.timeout)
    };
    // Its own connection (own sockets), whose answers may take the whole block.
    let opts = ConnOptions {
        timeout: READ_BLOCK + timeout.max(Duration::from_secs(1)),
        read_from_replicas: false,
    };
    let mut conn = RedisConn::open(&target, opts).map_err(redis_err)?;
    let (end, max_deleted) = stream_info(&mut info_conn, &key).await?;
    match *last {
        None => {
            *last = Some(end);
            info!(key = %key, from = %end, "change stream reader started");
        }
        Some(l) if l > end || l < max_deleted => {
            // Entries this instance never read are gone: nothing held can be proven fresh.
            let Some(a) = app.upgrade() else {
                return Ok(());
            };
            warn!(from = %l, "change stream: entries were lost while disconnected; invalidating everything");
            a.changes.stats.resets.fetch_add(1, Relaxed);
            let _ = crate::invalidate::apply_remote(&a, &Invalidation::everything()).await;
            let _ = a.changes.tx.send(Event::Reset(end));
            *last = Some(end);
        }
        Some(_) => {}
    }
    loop {
        let from = last.unwrap_or(StreamId::ZERO);
        let reply: Option<Vec<(String, Vec<RawEntry>)>> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(256)
            .arg("BLOCK")
            .arg(READ_BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&key)
            .arg(from.to_string())
            .query_async(&mut conn)
            .await
            .map_err(redis_err)?;
        let Some(a) = app.upgrade() else {
            return Ok(());
        };
        for (_, entries) in reply.unwrap_or_default() {
            for (id, fields) in entries {
                let Some(event) = entry(&id, &fields) else {
                    continue;
                };
                *last = Some(event.id());
                if !a.changes.is_own(event.id()) {
                    let inv = match &event {
                        Event::Invalidate(_, inv) => (**inv).clone(),
                        Event::Reset(_) => Invalidation::everything(),
                    };
                    a.changes.stats.applied_remote.fetch_add(1, Relaxed);
                    // A tier failure marks Redis down; the tier is not read until it is back.
                    let _ = crate::invalidate::apply_remote(&a, &inv).await;
                }
                let _ = a.changes.tx.send(event);
            }
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
        assert!(matches!(ev[..], [Event::Reset(id)] if id == c), "{ev:?}");
        assert_eq!(pos, c);
        // `a` itself is still a good resume point (nothing after it was trimmed).
        let (ev, _) = s.since(Some(a)).await.unwrap();
        assert_eq!(ev.len(), 2);
        // An id this stream never made.
        let future = StreamId {
            ms: c.ms + 1_000_000,
            seq: 0,
        };
        let (ev, _) = s.since(Some(future)).await.unwrap();
        assert!(matches!(ev[..], [Event::Reset(_)]));
    }

    #[test]
    fn an_entry_that_is_not_an_invalidation_resets() {
        let ok = entry("5-1", &[b"inv".to_vec(), br#"{"ids":["a"]}"#.to_vec()]);
        assert!(matches!(ok, Some(Event::Invalidate(..))));
        let bad = entry("5-2", &[b"inv".to_vec(), b"{}".to_vec()]);
        assert!(matches!(bad, Some(Event::Reset(_))));
        assert!(entry("x", &[]).is_none());
    }
}
