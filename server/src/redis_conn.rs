//! The connection behind the Redis tier: one Redis, or a Redis Cluster.
//!
//! [`RedisTarget::parse`] reads `--redis`: a `redis://` URL is one Redis (as before); a
//! `redis+cluster://host:port,host:port` URL, or a comma list of `redis://` or
//! `valkey://` URLs or `host:port` seeds, is a cluster (the seeds are where the client
//! learns the topology; one is enough, more survive one being down).
//!
//! [`RedisConn`] is what the tier sends commands on. It implements the crate's
//! [`ConnectionLike`], so commands are written the same for both:
//! - single-key commands go to the node that owns the key's slot;
//! - `MGET` and `UNLINK` of many keys go through [`RedisConn::mget`] and
//!   [`RedisConn::unlink`]: on a cluster they are split by slot, sent to their nodes
//!   concurrently and (for `MGET`) put back together in key order (see docs/server.md for
//!   why keys are not hash-tagged instead);
//! - a pipeline must stay in one slot on a cluster, so writes of many keys go through
//!   [`RedisConn::per_key`] (one pipeline on one Redis; concurrent commands on a cluster);
//! - `SCAN` walks every master on a cluster ([`Scan`]);
//! - degraded mode's probe ([`RedisConn::probe`]) on a cluster learns the slot map from
//!   any node and `PING`s the master of every slot range, on connections of its own.
//!
//! With `--redis-read-from-replicas`, reads on a cluster may be answered by replicas:
//! more read capacity, but a replica can lag its master by a few milliseconds (a write-back
//! not yet there is a miss; a key just deleted by an invalidation can still be read there).
//! Only the request path's reads go there ([`ReadFrom::Any`]): what an invalidation reads to
//! find the keys to delete (an item's value naming its tile, a tile's value naming its
//! items, the values a class is matched in) is read from the masters ([`ReadFrom::Master`],
//! [`RedisConn::mget_from`]), or a key written just before, not yet on the replica, would
//! be missed and outlive the invalidation.
//!
//! Which node a grouped read goes to comes from `CLUSTER SLOTS`, kept between reads. Redis
//! lists a replica there only once it is up and its replication offset (as gossiped) is
//! not 0, so a table read just after the cluster was made, while a replica was down or
//! restarting, or after a failover (the old master not back yet) names no replica for some
//! slots. With replica reads on, such a table is read again every
//! [`REPLICA_RECHECK`] until it lists a replica for every slot: otherwise the reads of
//! those slots would go to their master for as long as no read fails, and the setting would
//! be silently ignored there.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_read_routing::RandomReplicaStrategy;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr};
use redis::{Cmd, RedisFuture, RedisResult, Value};
use tokio::sync::OnceCell;

/// With replica reads on, how old a kept `CLUSTER SLOTS` table that lists no replica for
/// some slot range may be before it is read again (see the module doc). A cluster whose
/// ranges have no replica at all costs one `CLUSTER SLOTS` per interval.
pub const REPLICA_RECHECK: Duration = Duration::from_secs(2);

/// Where the Redis tier is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One Redis: its URL.
    Single(String),
    /// A Redis Cluster: seed node URLs (`redis://[user:password@]host:port`).
    Cluster(Vec<String>),
}

impl RedisTarget {
    /// Reads `--redis` (module docs). Errors say what was wrong and what is allowed.
    pub fn parse(spec: &str) -> Result<RedisTarget, String> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Err("empty; give redis://host:port/db, or a cluster as \
                        redis+cluster://host:port,host:port"
                .into());
        }
        // A URL's scheme is case-insensitive (RFC 3986 3.1), and the redis crate reads it
        // so (its URL parser lowers it): `REDIS://h:6379` opens. Lowered here once, so the
        // matches below and the URL handed on agree with it.
        let spec = &lower_schemes(spec);
        if let Some(rest) = spec.strip_prefix("redis+cluster://") {
            let (auth, hosts) = match rest.rfind('@') {
                Some(at) => (&rest[..=at], &rest[at + 1..]),
                None => ("", rest),
            };
            let hosts = hosts.trim_end_matches('/');
            if hosts.contains(['/', '?', '#']) {
                return Err(
                    "a cluster has no database number or options in its URL: give \
                     redis+cluster://[user:password@]host:port,host:port"
                        .into(),
                );
            }
            let seeds = hosts
                .split(',')
                .map(|h| seed(h.trim(), auth))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(RedisTarget::Cluster(seeds));
        }
        if spec.contains(',') {
            let seeds = spec
                .split(',')
                .map(|s| {
                    let s = s.trim();
                    // What the redis crate's cluster client opens without TLS: a TCP
                    // URL, `redis://` or `valkey://` (the same connection to it).
                    let rest = s.strip_prefix("redis://").or(s.strip_prefix("valkey://"));
                    match rest {
                        Some(rest) => {
                            let rest = rest.trim_end_matches('/');
                            let db_zero = rest.strip_suffix("/0").unwrap_or(rest);
                            if db_zero.contains(['/', '?', '#']) {
                                return Err(format!(
                                    "cluster seed {}: a cluster has only database 0 and no \
                                     options; give redis://host:port (or valkey://)",
                                    crate::origin::redact_url(s)
                                ));
                            }
                            let (auth, host) = match db_zero.rfind('@') {
                                Some(at) => (&db_zero[..=at], &db_zero[at + 1..]),
                                None => ("", db_zero),
                            };
                            seed(host, auth)
                        }
                        None if s.contains("://") => Err(format!(
                            "cluster seed {}: give redis://host:port, valkey://host:port or \
                             host:port (a cluster is reached over TCP, so no unix:// socket; \
                             TLS, rediss:// or valkeys://, is not built in)",
                            crate::origin::redact_url(s)
                        )),
                        None => seed(s, ""),
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(RedisTarget::Cluster(seeds));
        }
        // What the redis crate (without TLS) opens; anything else failed later with
        // "Redis URL did not parse - InvalidClientConfig", naming nothing allowed.
        if ![
            "redis://",
            "valkey://",
            "redis+unix://",
            "valkey+unix://",
            "unix://",
        ]
        .iter()
        .any(|scheme| spec.starts_with(scheme))
        {
            return Err(format!(
                "{} is not a Redis URL: give redis://[user:password@]host:port/db (or \
                 valkey://), unix:///path/to/redis.sock (or redis+unix://, valkey+unix://), \
                 or a cluster as redis+cluster://host:port,host:port; schemes in any case \
                 (TLS, rediss://, is not built in)",
                crate::origin::redact_url(spec)
            ));
        }
        Ok(RedisTarget::Single(spec.to_owned()))
    }

    /// For logs: the URL or the seeds, passwords masked.
    pub fn describe(&self) -> String {
        match self {
            RedisTarget::Single(url) => crate::origin::redact_url(url),
            RedisTarget::Cluster(seeds) => {
                let seeds: Vec<String> =
                    seeds.iter().map(|s| crate::origin::redact_url(s)).collect();
                format!("cluster of seeds {}", seeds.join(","))
            }
        }
    }
}

/// `spec` with the scheme of each URL in it (a comma list's too) in lower case: what comes
/// before a `://` that follows nothing but scheme characters (RFC 3986: letters, digits,
/// `+`, `-`, `.`). The rest (user, password, host, path) is left as it is.
fn lower_schemes(spec: &str) -> String {
    spec.split(',')
        .map(|part| {
            let lead = part.len() - part.trim_start().len();
            let (space, url) = part.split_at(lead);
            match url.split_once("://") {
                Some((scheme, rest))
                    if !scheme.is_empty()
                        && (scheme.chars())
                            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) =>
                {
                    format!("{space}{}://{rest}", scheme.to_ascii_lowercase())
                }
                _ => part.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `redis://<auth>host:port` from `host:port`, checked.
fn seed(host_port: &str, auth: &str) -> Result<String, String> {
    let ok = host_port
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
    if !ok {
        return Err(format!(
            "cluster seed {host_port:?}: give host:port (for example 127.0.0.1:7000)"
        ));
    }
    Ok(format!("redis://{auth}{host_port}"))
}

/// Which nodes of a cluster may answer a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// A replica when `--redis-read-from-replicas` is on (the request path: a lagging
    /// replica costs a miss at worst).
    Any,
    /// The slot's master, always (what an invalidation reads to find what to delete).
    Master,
}

/// How the tier talks to Redis.
#[derive(Debug, Clone, Copy)]
pub struct ConnOptions {
    /// Connect and response timeout of one command.
    pub timeout: Duration,
    /// Cluster only: reads (`MGET`, `EXISTS`, `GET`) may go to replicas.
    pub read_from_replicas: bool,
}

/// A connection to one Redis or to a cluster; cheap to clone (clones share the sockets).
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(LazyCluster),
}

/// A cluster connection made on first use, so that the server starts while the cluster is
/// down (the tier starts degraded and its probe connects later).
#[derive(Clone)]
pub struct LazyCluster(Arc<ClusterInner>);

struct ClusterInner {
    client: ClusterClient,
    conn: OnceCell<ClusterConnection>,
    /// The task making `conn`, while one is ([`LazyCluster::get`]).
    connecting: tokio::sync::Mutex<Option<tokio::task::JoinHandle<RedisResult<ClusterConnection>>>>,
    /// Which node serves which slots (`CLUSTER SLOTS`), for reads grouped by node; read
    /// when first needed, again after a grouped read failed, and set by a probe that
    /// succeeded ([`LazyCluster::probe`]).
    slots: std::sync::RwLock<Option<Arc<SlotTable>>>,
    read_from_replicas: bool,
    /// The seeds, as given: where the probe asks for the slot map first.
    seeds: Vec<redis::ConnectionInfo>,
    /// Every node of the last slot map a probe learned: where it asks too.
    known: std::sync::Mutex<Vec<NodeAddr>>,
}

impl LazyCluster {
    /// The node at `addr` as its own `CLUSTER NODES` line shows it (`None`: it is not a
    /// master serving slots now).
    async fn own_view(&self, addr: &(String, u16)) -> RedisResult<Option<Master>> {
        let mut conn = self.get().await?;
        let (host, port) = addr.clone();
        let to = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("NODES");
        let nodes: String = redis::from_redis_value(conn.route_command(cmd, to).await?)?;
        Ok(nodes
            .lines()
            .filter_map(Master::of_line)
            .find_map(|(m, myself)| myself.then_some(m)))
    }

    /// The cluster client's connection, made on first use. Making it waits for every seed
    /// (redis-rs connects to them all at once and waits for each), so with a seed that
    /// takes connections and never answers it takes the connect timeout, as long as the
    /// tier's own: it runs in a task of its own, which a caller that gives up (its
    /// timeout) leaves running, and the next caller waits for the same one. Else each
    /// request would start it anew and time out, and the instance would go down at every
    /// request and back at every probe.
    async fn get(&self) -> RedisResult<ClusterConnection> {
        let inner = &*self.0;
        if let Some(conn) = inner.conn.get() {
            return Ok(conn.clone());
        }
        let mut connecting = inner.connecting.lock().await;
        if let Some(conn) = inner.conn.get() {
            return Ok(conn.clone());
        }
        let task = connecting.get_or_insert_with(|| {
            let client = inner.client.clone();
            tokio::spawn(async move { client.get_async_connection().await })
        });
        let made = task.await;
        *connecting = None;
        let conn = made.map_err(|e| {
            redis::RedisError::from((
                redis::ErrorKind::Client,
                "connecting to the cluster failed",
                e.to_string(),
            ))
        })??;
        Ok(inner.conn.get_or_init(|| async { conn }).await.clone())
    }

    /// The kept table, read when there is none, or (for `replica` reads) when it lacks a
    /// replica for some range and is [`REPLICA_RECHECK`] old. A recheck is one read's
    /// extra: the reads meanwhile keep using the kept table (the first to see it due
    /// restamps it, so one `CLUSTER SLOTS` goes out per interval, not one per concurrent
    /// read), and one that fails is logged and the kept table used, not the read failed.
    async fn slot_table(
        &self,
        conn: &mut ClusterConnection,
        replica: bool,
    ) -> RedisResult<Arc<SlotTable>> {
        let kept = self
            .0
            .slots
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let kept = match kept {
            None => None,
            Some(t) if !(replica && t.recheck_for_replicas(std::time::Instant::now())) => {
                return Ok(t)
            }
            Some(_) => {
                // Claim the recheck: another read may have claimed it (or dropped the table)
                // since the read lock.
                let mut slots = self.0.slots.write().unwrap_or_else(|p| p.into_inner());
                match slots.clone() {
                    Some(t) if t.recheck_for_replicas(std::time::Instant::now()) => {
                        *slots = Some(Arc::new(SlotTable {
                            ranges: t.ranges.clone(),
                            read_at: std::time::Instant::now(),
                        }));
                        Some(t)
                    }
                    Some(t) => return Ok(t),
                    None => None,
                }
            }
        };
        let v: Value = match redis::cmd("CLUSTER").arg("SLOTS").query_async(conn).await {
            Ok(v) => v,
            Err(e) => match kept {
                Some(t) => {
                    tracing::warn!(error = %e, "reading CLUSTER SLOTS again for replicas failed; the kept table is used");
                    return Ok(t);
                }
                None => return Err(e),
            },
        };
        let t = Arc::new(SlotTable::parse(&v, std::time::Instant::now()));
        *self.0.slots.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&t));
        Ok(t)
    }

    /// The degraded-mode probe of a cluster ([`RedisConn::probe`]), on connections of its
    /// own, each opened for it and dropped after it, all within `timeout`:
    /// 1. the slot map (`CLUSTER INFO` and `CLUSTER SLOTS`, one round trip) from every seed
    ///    and every node of the last map a probe learned, all at once; the first node to
    ///    answer with `cluster_state:ok` and a map covering all 16384 slots gives it (a dead
    ///    or stopped node is not waited for while another answers);
    /// 2. `PING` to the master of every slot range of that map, all at once.
    ///
    /// Healthy only when every one of those masters answers. Not through the cluster
    /// client: it reaches only the masters it holds a connection to, and its own map goes
    /// stale when nothing it sends fails (a master killed, then its replica promoted). The
    /// nodes' `cluster_state:ok` alone is not enough either: they say it until they agree
    /// a master failed (`cluster-node-timeout` after it died), and the map names that
    /// master until its replica took over, so its `PING` is what fails meanwhile.
    ///
    /// On success the map is kept as the grouped reads' table (they go to the masters it
    /// names, the promoted replica after a failover) and its nodes are asked next time.
    async fn probe(&self, timeout: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let ms = timeout.as_millis();
        let table = self.probe_map(deadline, timeout).await?;
        let mut masters: Vec<(NodeAddr, Vec<String>)> = Vec::new();
        for (first, last, nodes) in &table.ranges {
            // The master first ([`SlotTable::parse`] keeps no range without a node).
            let Some(master) = nodes.first() else {
                continue;
            };
            let range = if first == last {
                first.to_string()
            } else {
                format!("{first}-{last}")
            };
            match masters.iter_mut().find(|(a, _)| a == master) {
                Some((_, ranges)) => ranges.push(range),
                None => masters.push((master.clone(), vec![range])),
            }
        }
        let pings = masters.iter().map(|(addr, ranges)| {
            let info = self.node_info(addr);
            async move {
                let ping = tokio::time::timeout_at(deadline, async {
                    let mut conn = probe_conn(info?, timeout).await?;
                    redis::cmd("PING").query_async::<String>(&mut conn).await
                });
                let why = match ping.await {
                    Ok(Ok(_)) => return None,
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!("no answer within {ms} ms"),
                };
                let (host, port) = addr;
                Some(format!(
                    "{host}:{port}, master of slots {}, does not answer PING ({why})",
                    ranges.join(" ")
                ))
            }
        });
        let failed: Vec<String> = futures_util::future::join_all(pings)
            .await
            .into_iter()
            .flatten()
            .collect();
        if !failed.is_empty() {
            return Err(failed.join("; "));
        }
        let mut nodes: Vec<NodeAddr> = Vec::new();
        for (_, _, n) in &table.ranges {
            for a in n {
                if !nodes.contains(a) {
                    nodes.push(a.clone());
                }
            }
        }
        *self.0.known.lock().unwrap_or_else(|p| p.into_inner()) = nodes;
        *self.0.slots.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(table));
        Ok(())
    }

    /// Step 1 of [`Self::probe`]: the first slot map a node gives that is whole.
    async fn probe_map(
        &self,
        deadline: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<SlotTable, String> {
        use futures_util::StreamExt;
        let ms = timeout.as_millis();
        let mut asked: futures_util::stream::FuturesUnordered<_> = self
            .probe_nodes()
            .into_iter()
            .map(|(addr, info)| async move {
                let answer = tokio::time::timeout_at(deadline, async {
                    let mut conn = probe_conn(info, timeout).await?;
                    redis::pipe()
                        .cmd("CLUSTER")
                        .arg("INFO")
                        .cmd("CLUSTER")
                        .arg("SLOTS")
                        .query_async::<(String, Value)>(&mut conn)
                        .await
                })
                .await;
                (addr, answer)
            })
            .collect();
        let mut why: Vec<String> = Vec::new();
        while let Some(((host, port), answer)) = asked.next().await {
            let (info, slots) = match answer {
                Ok(Ok(a)) => a,
                Ok(Err(e)) => {
                    why.push(format!("{host}:{port}: {e}"));
                    continue;
                }
                Err(_) => {
                    why.push(format!("{host}:{port}: no answer within {ms} ms"));
                    continue;
                }
            };
            if !info.lines().any(|l| l.trim() == "cluster_state:ok") {
                why.push(format!("{host}:{port}: cluster_state is not ok"));
                continue;
            }
            let table = SlotTable::parse(&slots, std::time::Instant::now()).answered_by(&host);
            match table.first_unserved() {
                None => return Ok(table),
                Some(slot) => why.push(format!(
                    "{host}:{port}: slot {slot} is served by no node (CLUSTER SLOTS)"
                )),
            }
        }
        Err(format!(
            "no node gave a slot map serving all 16384 slots ({})",
            why.join("; ")
        ))
    }

    /// Where the probe asks for the slot map: the seeds, then the nodes of the last map a
    /// probe learned and of the kept table that are not seeds (with the first seed's
    /// credentials).
    fn probe_nodes(&self) -> Vec<(NodeAddr, redis::ConnectionInfo)> {
        let mut out: Vec<(NodeAddr, redis::ConnectionInfo)> = Vec::new();
        for info in &self.0.seeds {
            if let redis::ConnectionAddr::Tcp(host, port) = info.addr() {
                out.push(((host.clone(), *port), info.clone()));
            }
        }
        let mut more = self
            .0
            .known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(t) = &*self.0.slots.read().unwrap_or_else(|p| p.into_inner()) {
            more.extend(t.ranges.iter().flat_map(|(_, _, n)| n.iter().cloned()));
        }
        for addr in more {
            if out.iter().all(|(a, _)| *a != addr) {
                if let Ok(info) = self.node_info(&addr) {
                    out.push((addr, info));
                }
            }
        }
        out
    }

    /// How to connect to the node at `addr`: as the first seed (its credentials), there.
    fn node_info(&self, addr: &NodeAddr) -> RedisResult<redis::ConnectionInfo> {
        let seed = self.0.seeds.first().ok_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::Client, "a cluster without seeds"))
        })?;
        let (host, port) = addr.clone();
        Ok(seed
            .clone()
            .set_addr(redis::ConnectionAddr::Tcp(host, port)))
    }

    fn forget_slot_table(&self) {
        *self.0.slots.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Runs commands, each within one slot (given), and gives their answers in order:
    /// grouped by the node that serves the slot (`CLUSTER SLOTS`, kept; with `replica`
    /// a replica of it), one pipeline per node, all nodes concurrently. When a node's
    /// pipeline fails (a slot moved, a failover) the table is dropped and that node's
    /// commands are sent one by one through the cluster client, which follows redirects
    /// and refreshes its own map (to the slot's master unless `replica`); commands of a
    /// slot the table lacks go that way too.
    async fn on_nodes(&self, cmds: Vec<(u16, Cmd)>, replica: bool) -> RedisResult<Vec<Value>> {
        let mut conn = self.get().await?;
        let table = self.slot_table(&mut conn, replica).await?;
        {
            let mut per_node: Vec<((String, u16), Vec<usize>)> = Vec::new();
            let mut unmapped: Vec<usize> = Vec::new();
            for (i, (slot, _)) in cmds.iter().enumerate() {
                match table.node(*slot, replica, i) {
                    Some(node) => match per_node.iter_mut().find(|(a, _)| a == node) {
                        Some((_, idx)) => idx.push(i),
                        None => per_node.push((node.clone(), vec![i])),
                    },
                    None => unmapped.push(i),
                }
            }
            let (slots, cmds): (Vec<u16>, Vec<Cmd>) = cmds.into_iter().unzip();
            let by_node = per_node.into_iter().map(|((host, port), idx)| {
                let mut conn = conn.clone();
                let mut pipe = redis::pipe();
                for &i in &idx {
                    pipe.add_command(cmds[i].clone());
                }
                async move {
                    let to = SingleNodeRoutingInfo::ByAddress { host, port };
                    let n = idx.len();
                    (idx, conn.route_pipeline(pipe, 0, n, to).await)
                }
            });
            let mut out: Vec<Option<Value>> = vec![None; cmds.len()];
            let mut retry = unmapped;
            for (idx, answer) in futures_util::future::join_all(by_node).await {
                match answer {
                    Ok(values)
                        if values.len() == idx.len()
                            && !values.iter().any(|v| matches!(v, Value::ServerError(_))) =>
                    {
                        for (&i, v) in idx.iter().zip(values) {
                            out[i] = Some(v);
                        }
                    }
                    _ => retry.extend(idx),
                }
            }
            if !retry.is_empty() {
                self.forget_slot_table();
                let answers = futures_util::future::try_join_all(retry.iter().map(|&i| {
                    let mut conn = conn.clone();
                    let cmd = cmds[i].clone();
                    let slot = slots[i];
                    async move {
                        if replica {
                            cmd.query_async::<Value>(&mut conn).await
                        } else {
                            // Not the client's read routing (replicas, when configured).
                            let to = SingleNodeRoutingInfo::SpecificNode(Route::new(
                                slot,
                                SlotAddr::Master,
                            ));
                            conn.route_command(cmd, RoutingInfo::SingleNode(to)).await
                        }
                    }
                }))
                .await?;
                for (&i, v) in retry.iter().zip(answers) {
                    out[i] = Some(v);
                }
            }
            Ok(out.into_iter().map(|v| v.unwrap_or(Value::Nil)).collect())
        }
    }
}

/// A node's (host, port).
type NodeAddr = (String, u16);

/// `CLUSTER SLOTS`: per slot range (first, last), the master's address then its replicas'.
#[derive(Debug)]
struct SlotTable {
    ranges: Vec<(u16, u16, Vec<NodeAddr>)>,
    /// When it was read.
    read_at: std::time::Instant,
}

impl SlotTable {
    /// The answer to `CLUSTER SLOTS`, read at `read_at`.
    fn parse(v: &Value, read_at: std::time::Instant) -> SlotTable {
        let mut ranges = Vec::new();
        let Value::Array(rows) = v else {
            return SlotTable { ranges, read_at };
        };
        for row in rows {
            let Value::Array(f) = row else { continue };
            let (Some(Value::Int(start)), Some(Value::Int(end))) = (f.first(), f.get(1)) else {
                continue;
            };
            let nodes: Vec<(String, u16)> = f[2..]
                .iter()
                .filter_map(|n| {
                    let Value::Array(n) = n else { return None };
                    let host = match n.first()? {
                        Value::BulkString(b) => String::from_utf8(b.clone()).ok()?,
                        Value::SimpleString(s) => s.clone(),
                        _ => return None,
                    };
                    let Value::Int(port) = n.get(1)? else {
                        return None;
                    };
                    Some((host, u16::try_from(*port).ok()?))
                })
                .collect();
            if let (Ok(s), Ok(e), false) =
                (u16::try_from(*start), u16::try_from(*end), nodes.is_empty())
            {
                ranges.push((s, e, nodes));
            }
        }
        SlotTable { ranges, read_at }
    }

    /// The table with the nodes whose endpoint is unknown to the node that answered (`?`,
    /// or empty: Redis's `cluster-preferred-endpoint-type`) given its host, `host`, as
    /// redis-rs does.
    fn answered_by(mut self, host: &str) -> SlotTable {
        for (_, _, nodes) in &mut self.ranges {
            for (h, _) in nodes.iter_mut() {
                if h.is_empty() || h == "?" {
                    *h = host.to_owned();
                }
            }
        }
        self
    }

    /// The first of the 16384 slots no range of the table covers (`None`: each is served).
    fn first_unserved(&self) -> Option<u16> {
        let mut ranges: Vec<(u16, u16)> = self.ranges.iter().map(|(s, e, _)| (*s, *e)).collect();
        ranges.sort_unstable();
        let mut next = 0u32;
        for (first, last) in ranges {
            if u32::from(first) > next {
                break;
            }
            next = next.max(u32::from(last) + 1);
        }
        // Below 16384 here, so it fits.
        (next < SLOTS as u32).then_some(next as u16)
    }

    /// Whether a reader of replicas should read `CLUSTER SLOTS` again at `now`: some range
    /// (or every slot: an empty table) has no replica listed, and the table is
    /// [`REPLICA_RECHECK`] old.
    fn recheck_for_replicas(&self, now: std::time::Instant) -> bool {
        let lacks = self.ranges.is_empty() || self.ranges.iter().any(|(_, _, n)| n.len() < 2);
        lacks && now.saturating_duration_since(self.read_at) >= REPLICA_RECHECK
    }

    /// The node that serves `slot`: its master, or with `replica` one of its replicas
    /// (picked by `pick`) when it has any.
    fn node(&self, slot: u16, replica: bool, pick: usize) -> Option<&(String, u16)> {
        let (_, _, nodes) = self
            .ranges
            .iter()
            .find(|(s, e, _)| (*s..=*e).contains(&slot))?;
        if replica && nodes.len() > 1 {
            nodes.get(1 + pick % (nodes.len() - 1))
        } else {
            nodes.first()
        }
    }
}

/// A connection of the probe's own to one node, with the tier's timeout (dropped after
/// use: its driver task ends with it).
async fn probe_conn(
    info: redis::ConnectionInfo,
    timeout: Duration,
) -> RedisResult<redis::aio::MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    redis::Client::open(info)?
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// The hash slot of `key` (CRC16/XMODEM of the key, or of its `{tag}`, mod 16384), as
/// Redis Cluster and redis-rs compute it.
fn key_slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let close = key[open + 1..].iter().position(|&b| b == b'}')?;
            let tag = &key[open + 1..open + 1 + close];
            (!tag.is_empty()).then_some(tag)
        })
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(hashed) % 16384
}

impl RedisConn {
    /// A lazy connection: nothing is contacted until the first command.
    pub fn open(target: &RedisTarget, opts: ConnOptions) -> RedisResult<RedisConn> {
        match target {
            RedisTarget::Single(url) => {
                let client = redis::Client::open(url.as_str())?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(opts.timeout))
                    .set_response_timeout(Some(opts.timeout))
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_millis(500));
                Ok(RedisConn::Single(ConnectionManager::new_lazy_with_config(
                    client, config,
                )?))
            }
            RedisTarget::Cluster(seeds) => {
                // Few, short retries: a MOVED redirect after a failover is one retry; the
                // tier's own timeout and degraded mode handle a cluster that is down.
                let mut builder = ClusterClientBuilder::new(seeds.clone())
                    .connection_timeout(opts.timeout)
                    .response_timeout(opts.timeout)
                    .retries(3)
                    .min_retry_wait(10)
                    .max_retry_wait(200)
                    .retry_wait_formula(10, 2);
                if opts.read_from_replicas {
                    builder = builder.read_routing_strategy(RandomReplicaStrategy);
                }
                let seeds = seeds
                    .iter()
                    .map(|s| redis::IntoConnectionInfo::into_connection_info(s.as_str()))
                    .collect::<RedisResult<Vec<_>>>()?;
                Ok(RedisConn::Cluster(LazyCluster(Arc::new(ClusterInner {
                    client: builder.build()?,
                    conn: OnceCell::new(),
                    connecting: tokio::sync::Mutex::new(None),
                    slots: std::sync::RwLock::new(None),
                    read_from_replicas: opts.read_from_replicas,
                    seeds,
                    known: std::sync::Mutex::new(Vec::new()),
                }))))
            }
        }
    }

    /// Whether this is a cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConn::Cluster(_))
    }

    /// Whether a read `from` goes to replicas: only [`ReadFrom::Any`] on a cluster with
    /// replica reads on.
    pub fn reads_replicas(&self, from: ReadFrom) -> bool {
        match self {
            RedisConn::Single(_) => false,
            RedisConn::Cluster(lazy) => lazy.0.read_from_replicas && from == ReadFrom::Any,
        }
    }

    /// Runs single-key commands, each given with its key, and gives their answers in
    /// order: one pipeline on one Redis; on a cluster (where a pipeline must stay within
    /// one slot) one pipeline per node, as [`Self::mget`] does.
    pub async fn per_key(&self, cmds: Vec<(String, Cmd)>) -> RedisResult<Vec<Value>> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            RedisConn::Single(conn) => {
                let mut pipe = redis::pipe();
                for (_, c) in cmds {
                    pipe.add_command(c);
                }
                let mut conn = conn.clone();
                pipe.query_async(&mut conn).await
            }
            RedisConn::Cluster(lazy) => {
                let cmds = cmds
                    .into_iter()
                    .map(|(k, c)| (key_slot(k.as_bytes()), c))
                    .collect();
                lazy.on_nodes(cmds, false).await
            }
        }
    }

    /// The degraded-mode probe, within `timeout`: `Ok` when the tier can be used again,
    /// else why not. One Redis: it answers `PING`. A cluster: a node gives a slot map
    /// serving every slot and the master of every slot range answers `PING`, on
    /// connections of the probe's own (`LazyCluster::probe`).
    pub async fn probe(&self, timeout: Duration) -> Result<(), String> {
        match self {
            RedisConn::Single(conn) => {
                let mut conn = conn.clone();
                let ping = redis::cmd("PING");
                match tokio::time::timeout(timeout, ping.query_async::<String>(&mut conn)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
                }
            }
            RedisConn::Cluster(lazy) => lazy.probe(timeout).await,
        }
    }

    /// `MGET` of `keys`, values in key order. On a cluster the keys are grouped by slot,
    /// one `MGET` per slot, and those by node (`LazyCluster::on_nodes`): one round trip
    /// per node. (The cluster client can split one `MGET` by itself, but sends one
    /// command per slot, about one per key here, 100 times slower than this (measured,
    /// docs/BENCHMARKS.md); and after a failover it drops the part meant for a node it has
    /// lost and fails with a count mismatch, without refreshing its map.)
    pub async fn mget(&self, keys: &[String]) -> RedisResult<Vec<Option<Vec<u8>>>> {
        self.mget_from(keys, ReadFrom::Any).await
    }

    /// [`Self::mget`] answered by the nodes `from` allows ([`ReadFrom`]).
    pub async fn mget_from(
        &self,
        keys: &[String],
        from: ReadFrom,
    ) -> RedisResult<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            RedisConn::Single(conn) => {
                let mut conn = conn.clone();
                redis::cmd("MGET").arg(keys).query_async(&mut conn).await
            }
            RedisConn::Cluster(lazy) => {
                let groups = by_slot(keys);
                let cmds = mget_per_slot(keys, &groups);
                let answers = lazy.on_nodes(cmds, self.reads_replicas(from)).await?;
                let mut out = vec![None; keys.len()];
                for (g, v) in groups.iter().zip(answers) {
                    place(&mut out, g, redis::from_redis_value(v)?)?;
                }
                Ok(out)
            }
        }
    }

    /// `MGET` of `keys`, `PTTL` of `ttl_keys` and one more single-key command `also` (given
    /// with its key) in the same round trip (one pipeline on one Redis; on a cluster the
    /// per-slot `MGET`s, the `PTTL`s and `also` grouped by node as [`Self::mget`] does, from
    /// the same nodes, replicas included with replica reads): the values in key order, per
    /// `ttl_keys` key its remaining life in milliseconds as Redis counts it (`-2`: no such
    /// key, `-1`: no expiry), and `also`'s answer.
    pub async fn mget_pttl_and(
        &self,
        keys: &[String],
        ttl_keys: &[String],
        also: (&str, Cmd),
    ) -> RedisResult<(Vec<Option<Vec<u8>>>, Vec<i64>, Value)> {
        let pttl = |k: &String| {
            let mut c = redis::cmd("PTTL");
            c.arg(k);
            c
        };
        let ttls_of = |answers: Vec<Value>| {
            answers
                .into_iter()
                .map(|v| Ok(redis::from_redis_value::<i64>(v)?))
                .collect::<RedisResult<Vec<i64>>>()
        };
        let (also_key, also) = also;
        match self {
            RedisConn::Single(conn) => {
                let mut pipe = redis::pipe();
                pipe.add_command(also);
                if !keys.is_empty() {
                    pipe.cmd("MGET").arg(keys);
                }
                for k in ttl_keys {
                    pipe.add_command(pttl(k));
                }
                let mut answers: Vec<Value> = pipe.query_async(&mut conn.clone()).await?;
                let expected = 1 + usize::from(!keys.is_empty()) + ttl_keys.len();
                if answers.len() != expected {
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::Client,
                        "a pipeline answered a different number of replies than commands",
                    )));
                }
                let ttl_answers = answers.split_off(expected - ttl_keys.len());
                let mut answers = answers.into_iter();
                let also = answers.next().unwrap_or(Value::Nil);
                let values = match answers.next() {
                    Some(v) => redis::from_redis_value(v)?,
                    None => Vec::new(),
                };
                Ok((values, ttls_of(ttl_answers)?, also))
            }
            RedisConn::Cluster(lazy) => {
                let groups = by_slot(keys);
                let mut cmds = mget_per_slot(keys, &groups);
                cmds.extend(ttl_keys.iter().map(|k| (key_slot(k.as_bytes()), pttl(k))));
                cmds.push((key_slot(also_key.as_bytes()), also));
                let replica = self.reads_replicas(ReadFrom::Any);
                let mut answers = lazy.on_nodes(cmds, replica).await?;
                let also = answers.pop().unwrap_or(Value::Nil);
                let ttl_answers = answers.split_off(groups.len());
                let mut values = vec![None; keys.len()];
                for (g, v) in groups.iter().zip(answers) {
                    place(&mut values, g, redis::from_redis_value(v)?)?;
                }
                Ok((values, ttls_of(ttl_answers)?, also))
            }
        }
    }

    /// `UNLINK` of `keys` (on a cluster, one per slot, concurrently; see [`Self::mget`]).
    pub async fn unlink(&self, keys: &[impl AsRef<str>]) -> RedisResult<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let keys: Vec<&str> = keys.iter().map(AsRef::as_ref).collect();
        match self {
            RedisConn::Single(conn) => {
                let mut conn = conn.clone();
                redis::cmd("UNLINK").arg(&keys).query_async(&mut conn).await
            }
            RedisConn::Cluster(_) => {
                let cmds = by_slot(&keys)
                    .into_iter()
                    .map(|idx| {
                        let mut cmd = redis::cmd("UNLINK");
                        for &i in &idx {
                            cmd.arg(keys[i]);
                        }
                        (keys[idx[0]].to_owned(), cmd)
                    })
                    .collect();
                self.per_key(cmds).await.map(drop)
            }
        }
    }

    /// `SCAN … MATCH pattern COUNT count` over every key: on a cluster, over every master.
    /// A cluster that moves slots while it runs (resharding, a failover) can make it miss
    /// keys: [`Scan::slots_moved`] says whether that may have happened.
    pub async fn scan(&self, pattern: &str, count: usize) -> RedisResult<Scan> {
        let (nodes, at_start) = match self {
            RedisConn::Single(_) => (vec![None], Vec::new()),
            RedisConn::Cluster(lazy) => {
                let mut conn = lazy.get().await?;
                let nodes: String = redis::cmd("CLUSTER")
                    .arg("NODES")
                    .query_async(&mut conn)
                    .await?;
                let seen = masters(&nodes).map_err(|e| {
                    redis::RedisError::from((
                        redis::ErrorKind::Server(redis::ServerErrorKind::ClusterDown),
                        "cannot scan every key",
                        e,
                    ))
                })?;
                // Each as it sees itself (a migration shows only there; another node's
                // view may lag): compared with the same at the end (`Scan::slots_moved`).
                let mut at_start = Vec::with_capacity(seen.len());
                for m in seen {
                    at_start.push(lazy.own_view(&m.addr).await?.unwrap_or(m));
                }
                let nodes = at_start.iter().map(|m| Some(m.addr.clone())).collect();
                (nodes, at_start)
            }
        };
        Ok(Scan {
            conn: self.clone(),
            pattern: pattern.to_owned(),
            count,
            nodes,
            cursor: 0,
            at_start,
        })
    }
}

/// Puts one slot's `MGET` answer `values` at the key positions `idx`.
fn place(
    out: &mut [Option<Vec<u8>>],
    idx: &[usize],
    values: Vec<Option<Vec<u8>>>,
) -> RedisResult<()> {
    if values.len() != idx.len() {
        return Err(redis::RedisError::from((
            redis::ErrorKind::Client,
            "MGET answered a different number of values than keys",
        )));
    }
    for (&i, v) in idx.iter().zip(values) {
        out[i] = v;
    }
    Ok(())
}

/// One `MGET` per slot group of [`by_slot`], with the slot it goes to.
fn mget_per_slot(keys: &[String], groups: &[Vec<usize>]) -> Vec<(u16, Cmd)> {
    groups
        .iter()
        .map(|g| {
            let mut cmd = redis::cmd("MGET");
            for &i in g {
                cmd.arg(&keys[i]);
            }
            (key_slot(keys[g[0]].as_bytes()), cmd)
        })
        .collect()
}

/// Indices of `keys` grouped by hash slot, in first-seen order.
fn by_slot(keys: &[impl AsRef<str>]) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut slot_group: std::collections::HashMap<Slot, usize> = Default::default();
    for (i, k) in keys.iter().enumerate() {
        let g = *slot_group
            .entry(Slot::for_key(k.as_ref()))
            .or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
        groups[g].push(i);
    }
    groups
}

/// The hash slots of a Redis Cluster.
const SLOTS: usize = 16384;

/// A master as a `CLUSTER NODES` line shows it: where it is, and what says which slots it
/// serves (its id, config epoch and slot ranges, a migration's `[…]` among them).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Master {
    addr: (String, u16),
    id: String,
    epoch: String,
    slots: Vec<String>,
}

impl Master {
    /// The master of one `CLUSTER NODES` line (`None`: not a master serving slots, flagged
    /// `fail`, or unreadable), and whether it is the answering node itself.
    fn of_line(line: &str) -> Option<(Master, bool)> {
        let f: Vec<&str> = line.split_whitespace().collect();
        let flags = f.get(2)?;
        let serving = flags.split(',').any(|x| x == "master")
            && !flags.split(',').any(|x| x.starts_with("fail"))
            && f.len() > 8;
        if !serving {
            return None;
        }
        let addr = f
            .get(1)
            .and_then(|a| a.split(['@', ',']).next())
            .and_then(|a| a.rsplit_once(':'))
            .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))?;
        let master = Master {
            addr,
            id: f[0].to_owned(),
            epoch: f[6].to_owned(),
            slots: f[8..].iter().map(|r| (*r).to_owned()).collect(),
        };
        Some((master, flags.split(',').any(|x| x == "myself")))
    }

    /// A slot of this master is migrating to or importing from another (shown only in the
    /// line of the node itself).
    fn migrating(&self) -> bool {
        self.slots.iter().any(|r| r.starts_with('['))
    }
}

/// The masters serving slots in `CLUSTER NODES` output, when together they serve every
/// one of the 16384 slots. A master flagged `fail` (or `fail?`), or a line that cannot be
/// read, is left out, and then its slots are not covered: a `SCAN` over the others would
/// miss its keys and an invalidation would report success with that shard untouched, so
/// this is an error naming the first slot nobody serves.
fn masters(nodes: &str) -> Result<Vec<Master>, String> {
    let mut covered = vec![false; SLOTS];
    let mut out = Vec::new();
    for line in nodes.lines() {
        let Some((master, _)) = Master::of_line(line) else {
            continue;
        };
        // Slots: `first-last` or `slot`; `[slot->-id]`/`[slot-<-id]` (a migration in
        // progress) are not served by this node alone and are skipped.
        for range in master.slots.iter().filter(|r| !r.starts_with('[')) {
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                for slot in covered
                    .iter_mut()
                    .take(b.saturating_add(1).min(SLOTS))
                    .skip(a)
                {
                    *slot = true;
                }
            }
        }
        out.push(master);
    }
    match covered.iter().position(|c| !c) {
        None => Ok(out),
        Some(slot) => Err(format!(
            "slot {slot} is served by no reachable master (CLUSTER NODES: a master is flagged fail or the slot is unassigned); a SCAN would miss its keys"
        )),
    }
}

/// A `SCAN` in progress (see [`RedisConn::scan`]).
pub struct Scan {
    conn: RedisConn,
    pattern: String,
    count: usize,
    /// Nodes still to walk, the current one last (`None`: the single Redis).
    nodes: Vec<Option<(String, u16)>>,
    cursor: u64,
    /// On a cluster, the masters as `CLUSTER NODES` showed them when the scan started.
    at_start: Vec<Master>,
}

impl Scan {
    /// The next batch of keys (possibly empty), or `None` when every node is walked.
    pub async fn next_batch(&mut self) -> RedisResult<Option<Vec<String>>> {
        let Some(node) = self.nodes.last().cloned() else {
            return Ok(None);
        };
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(self.cursor)
            .arg("MATCH")
            .arg(&self.pattern)
            .arg("COUNT")
            .arg(self.count);
        let value = match (&self.conn, node) {
            (RedisConn::Single(conn), _) => cmd.query_async::<Value>(&mut conn.clone()).await?,
            (RedisConn::Cluster(lazy), Some((host, port))) => {
                let mut conn = lazy.get().await?;
                let to = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
                conn.route_command(cmd, to).await?
            }
            (RedisConn::Cluster(_), None) => return Ok(None),
        };
        let (next, keys): (u64, Vec<String>) = redis::from_redis_value(value)?;
        self.cursor = next;
        if next == 0 {
            self.nodes.pop();
        }
        Ok(Some(keys))
    }

    /// Once every node is walked: on a cluster, whether slots may have moved since the
    /// scan started, and how (`None`: they did not, every key that existed throughout was
    /// returned). A key moved from a master not walked yet to one walked before is
    /// returned by neither, so a scan that must reach every key cannot be trusted then.
    /// Each master is asked for its own line (a migration in progress shows only there),
    /// as at the start, and must be the master it was then, same id, config epoch and
    /// slots, with no slot migrating then or now: a slot that moved, even away and back, raised the config epoch
    /// of the master that took it (`CLUSTER SETSLOT … NODE` on an importing node), and a
    /// failover put another node in its place. One case is not seen: a master already
    /// holding the cluster's greatest epoch, unique, takes a slot without raising it and
    /// the slot goes back to its first master, also without, all within the scan.
    pub async fn slots_moved(&self) -> RedisResult<Option<String>> {
        let RedisConn::Cluster(lazy) = &self.conn else {
            return Ok(None);
        };
        for was in &self.at_start {
            if was.migrating() {
                return Ok(Some(format!(
                    "a slot of {}:{} was migrating when the scan started",
                    was.addr.0, was.addr.1
                )));
            }
            let now = lazy.own_view(&was.addr).await?;
            let (host, port) = &was.addr;
            match now {
                None => return Ok(Some(format!("{host}:{port} is no longer a master"))),
                Some(m) if m.migrating() => {
                    return Ok(Some(format!("a slot of {host}:{port} is migrating")))
                }
                Some(m) if m != *was => {
                    return Ok(Some(format!(
                    "{host}:{port} was {} epoch {} with slots {}, now {} epoch {} with slots {}",
                    was.id,
                    was.epoch,
                    was.slots.join(" "),
                    m.id,
                    m.epoch,
                    m.slots.join(" ")
                )))
                }
                Some(_) => {}
            }
        }
        Ok(None)
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(lazy) => Box::pin(async move {
                let mut conn = lazy.get().await?;
                conn.req_packed_command(cmd).await
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(lazy) => Box::pin(async move {
                let mut conn = lazy.get().await?;
                conn.req_packed_commands(pipeline, offset, count).await
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_slots_are_redis_cluster_slots() {
        // `CLUSTER KEYSLOT foo` is 12182; a {tag} hashes only the tag; `{}` is no tag.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{foo}bar"), 12182);
        assert_eq!(key_slot(b"x{foo}"), 12182);
        assert_ne!(key_slot(b"{}foo"), key_slot(b"foo"));
        for k in ["tw:i:s2a-1", "tw:t:14/2/3", "{a}b", "{}x", "a{b", "a}{b}"] {
            let same = |o: &str| Slot::for_key(k) == Slot::for_key(o);
            // Equal to redis-rs's own slot (compared through keys of a known slot).
            let probe = (0..100_000)
                .map(|i| format!("probe{i}"))
                .find(|p| key_slot(p.as_bytes()) == key_slot(k.as_bytes()))
                .unwrap();
            assert!(same(&probe), "{k}");
        }
    }

    #[tokio::test]
    async fn only_request_reads_go_to_replicas() {
        let opts = |read_from_replicas| ConnOptions {
            timeout: Duration::from_millis(100),
            read_from_replicas,
        };
        // Nothing is contacted: the connections are lazy.
        let cluster = RedisTarget::Cluster(vec!["redis://127.0.0.1:1".into()]);
        let replicas = RedisConn::open(&cluster, opts(true)).unwrap();
        assert!(replicas.reads_replicas(ReadFrom::Any));
        assert!(!replicas.reads_replicas(ReadFrom::Master));
        let masters = RedisConn::open(&cluster, opts(false)).unwrap();
        assert!(!masters.reads_replicas(ReadFrom::Any));
        let single = RedisTarget::Single("redis://127.0.0.1:1".into());
        let single = RedisConn::open(&single, opts(false)).unwrap();
        assert!(!single.reads_replicas(ReadFrom::Any));
    }

    #[test]
    fn slot_table_reads_cluster_slots() {
        let node = |h: &str, p: i64| {
            Value::Array(vec![
                Value::BulkString(h.as_bytes().to_vec()),
                Value::Int(p),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let v = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("a", 1),
                node("a2", 11),
            ]),
            Value::Array(vec![Value::Int(5461), Value::Int(16383), node("b", 2)]),
        ]);
        let at = std::time::Instant::now();
        let t = SlotTable::parse(&v, at);
        assert_eq!(t.node(0, false, 0), Some(&("a".to_owned(), 1)));
        assert_eq!(t.node(5460, true, 7), Some(&("a2".to_owned(), 11)));
        assert_eq!(t.node(5461, true, 0), Some(&("b".to_owned(), 2)));
        let empty = SlotTable::parse(&Value::Nil, at);
        assert_eq!(empty.node(3, false, 0), None);
        // A range without a replica: read again once REPLICA_RECHECK old, not before.
        assert!(!t.recheck_for_replicas(at));
        assert!(!t.recheck_for_replicas(at + REPLICA_RECHECK / 2));
        assert!(t.recheck_for_replicas(at + REPLICA_RECHECK));
        assert!(empty.recheck_for_replicas(at + REPLICA_RECHECK));
        // Every range with a replica: kept.
        let full = Value::Array(vec![Value::Array(vec![
            Value::Int(0),
            Value::Int(16383),
            node("a", 1),
            node("a2", 11),
        ])]);
        let full = SlotTable::parse(&full, at);
        assert!(!full.recheck_for_replicas(at + REPLICA_RECHECK * 100));
    }

    #[test]
    fn the_probe_needs_a_map_serving_every_slot() {
        let node = |h: &str, p: i64| {
            Value::Array(vec![
                Value::BulkString(h.as_bytes().to_vec()),
                Value::Int(p),
            ])
        };
        let range =
            |a: i64, b: i64, h: &str| Value::Array(vec![Value::Int(a), Value::Int(b), node(h, 1)]);
        let map =
            |ranges: Vec<Value>| SlotTable::parse(&Value::Array(ranges), std::time::Instant::now());
        // Out of order, one slot alone, overlapping: every slot.
        let whole = map(vec![
            range(5461, 16383, "b"),
            range(0, 5459, "a"),
            range(5460, 5460, "c"),
            range(100, 200, "a"),
        ]);
        assert_eq!(whole.first_unserved(), None);
        assert_eq!(
            map(vec![range(0, 99, "a"), range(101, 16383, "b")]).first_unserved(),
            Some(100)
        );
        assert_eq!(map(vec![range(1, 16383, "a")]).first_unserved(), Some(0));
        assert_eq!(
            map(vec![range(0, 16382, "a")]).first_unserved(),
            Some(16383)
        );
        // No ranges (a node not yet in a cluster answers an empty list), or no answer read.
        assert_eq!(map(Vec::new()).first_unserved(), Some(0));
        assert_eq!(
            SlotTable::parse(&Value::Nil, std::time::Instant::now()).first_unserved(),
            Some(0)
        );
        // A node whose endpoint the answering node does not know is at the answerer's host.
        let t = map(vec![range(0, 8000, "?"), range(8001, 16383, "")]).answered_by("10.0.0.7");
        assert_eq!(t.node(0, false, 0), Some(&("10.0.0.7".to_owned(), 1)));
        assert_eq!(t.node(9000, false, 0), Some(&("10.0.0.7".to_owned(), 1)));
        let t = map(vec![range(0, 16383, "10.0.0.1")]).answered_by("10.0.0.7");
        assert_eq!(t.node(0, false, 0), Some(&("10.0.0.1".to_owned(), 1)));
    }

    #[test]
    fn keys_are_grouped_by_slot_in_order() {
        // {a} hash tags put the first two in one slot.
        let keys = ["{a}1", "x", "{a}2", "y"];
        let groups = by_slot(&keys);
        assert_eq!(groups.iter().map(Vec::len).sum::<usize>(), 4);
        assert_eq!(groups[0], [0, 2]);
        assert!(groups.iter().all(|g| g
            .iter()
            .all(|&i| Slot::for_key(keys[i]) == Slot::for_key(keys[g[0]]))));
    }

    #[test]
    fn one_url_is_one_redis_and_a_cluster_url_or_list_is_a_cluster() {
        assert_eq!(
            RedisTarget::parse("redis://127.0.0.1:6379/2").unwrap(),
            RedisTarget::Single("redis://127.0.0.1:6379/2".into())
        );
        let want = RedisTarget::Cluster(vec![
            "redis://127.0.0.1:7000".into(),
            "redis://127.0.0.1:7001".into(),
        ]);
        for spec in [
            "redis+cluster://127.0.0.1:7000,127.0.0.1:7001",
            "redis+cluster://127.0.0.1:7000,127.0.0.1:7001/",
            "127.0.0.1:7000, 127.0.0.1:7001",
            "redis://127.0.0.1:7000,redis://127.0.0.1:7001/0",
            "valkey://127.0.0.1:7000,valkey://127.0.0.1:7001/0",
            "redis://127.0.0.1:7000, Valkey://127.0.0.1:7001",
        ] {
            assert_eq!(RedisTarget::parse(spec).unwrap(), want, "{spec}");
        }
        assert_eq!(
            RedisTarget::parse("redis+cluster://u:pw@h1:1,h2:2").unwrap(),
            RedisTarget::Cluster(vec!["redis://u:pw@h1:1".into(), "redis://u:pw@h2:2".into()])
        );
        for spec in [
            "valkey://h:6379/1",
            "unix:///run/redis.sock",
            "redis+unix:///r.sock",
        ] {
            assert_eq!(
                RedisTarget::parse(spec).unwrap(),
                RedisTarget::Single(spec.into())
            );
        }
        // A single seed is still a cluster when the scheme says so.
        assert!(matches!(
            RedisTarget::parse("redis+cluster://h:7000"),
            Ok(RedisTarget::Cluster(s)) if s.len() == 1
        ));
    }

    /// A scheme is case-insensitive, as the redis crate reads it: `REDIS://` opens there,
    /// so it is not refused here. Only the scheme is lowered (a password keeps its case).
    #[test]
    fn schemes_are_read_in_any_case() {
        for (spec, url) in [
            ("REDIS://U:PW@H:6379/2", "redis://U:PW@H:6379/2"),
            ("Valkey://h:6379", "valkey://h:6379"),
            ("UNIX:///run/redis.sock", "unix:///run/redis.sock"),
            ("Redis+Unix:///r.sock", "redis+unix:///r.sock"),
        ] {
            assert_eq!(
                RedisTarget::parse(spec).unwrap(),
                RedisTarget::Single(url.into()),
                "{spec}"
            );
            // The redis crate opens what is handed on (and would open the spec as given).
            assert!(redis::parse_redis_url(url).is_some(), "{url}");
            assert!(redis::parse_redis_url(spec).is_some(), "{spec}");
        }
        let want = RedisTarget::Cluster(vec!["redis://h:7000".into(), "redis://h:7001".into()]);
        for spec in [
            "REDIS+CLUSTER://h:7000,h:7001",
            "Redis://h:7000, REDIS://h:7001/0",
        ] {
            assert_eq!(RedisTarget::parse(spec).unwrap(), want, "{spec}");
        }
        let e = RedisTarget::parse("REDISS://h:6379").unwrap_err();
        assert!(e.contains("TLS"), "{e}");
        let e = RedisTarget::parse("http://h:6379").unwrap_err();
        for scheme in [
            "redis://",
            "valkey://",
            "unix://",
            "redis+unix://",
            "valkey+unix://",
        ] {
            assert!(e.contains(scheme), "{scheme}: {e}");
        }
    }

    /// What the redis crate's cluster client takes as a seed (`valkey://` as well as
    /// `redis://`) is taken in a comma list too, and handed on as it opens.
    #[test]
    fn valkey_seeds_in_a_list_are_a_cluster() {
        let t = RedisTarget::parse("valkey://u:pw@h1:7000, valkey://u:pw@h2:7001/0").unwrap();
        let RedisTarget::Cluster(seeds) = &t else {
            panic!("{t:?}")
        };
        assert_eq!(seeds, &["redis://u:pw@h1:7000", "redis://u:pw@h2:7001"]);
        // The crate's cluster client takes both schemes (and so what is handed on).
        for nodes in [
            vec!["valkey://h1:7000", "valkey://h2:7001"],
            seeds.iter().map(String::as_str).collect(),
        ] {
            assert!(
                ClusterClientBuilder::new(nodes.clone()).build().is_ok(),
                "{nodes:?}"
            );
        }
    }

    #[test]
    fn bad_cluster_specs_say_what_is_allowed() {
        for (spec, says) in [
            ("", "redis+cluster://"),
            ("redis+cluster://h:7000/3", "no database number"),
            ("redis+cluster://h:7000,h", "host:port"),
            ("redis+cluster://h:7000,:7001", "host:port"),
            ("h:1,h:99999", "host:port"),
            ("redis://h:1/2,redis://h:2", "only database 0"),
            ("rediss://u:secret@h:1,h:2", "TLS"),
            ("valkeys://u:secret@h:1,h:2", "TLS"),
            // The cluster client refuses sockets: the cluster names nodes by IP and port.
            ("unix:///r.sock,h:2", "unix://"),
            ("http://u:secret@h:1,h:2", "valkey://"),
            // One Redis: a URL the redis crate opens, else said at start.
            ("http://u:secret@h:6379", "redis://"),
            ("h:6379", "redis://"),
            ("rediss://u:secret@h:6379/0", "TLS"),
        ] {
            let e = RedisTarget::parse(spec).unwrap_err();
            assert!(e.contains(says), "{spec}: {e}");
            assert!(!e.contains("secret"), "{spec}: {e}");
        }
    }

    #[test]
    fn describe_masks_passwords() {
        let t = RedisTarget::parse("redis+cluster://u:pw@h1:1,h2:2").unwrap();
        let d = t.describe();
        assert!(
            !d.contains("pw") && d.contains("h1:1") && d.contains("h2:2"),
            "{d}"
        );
    }

    #[test]
    fn masters_are_read_from_cluster_nodes() {
        let nodes = "\
f4ec 127.0.0.1:51659@61659 slave 9632 0 1 1 connected
8fc3 127.0.0.1:37065@47065 master - 0 1 3 connected 10923-16383
99d7 127.0.0.1:48975@58975,host.example myself,master - 0 1 2 connected 5461-10922
9632 127.0.0.1:41538@51538 master - 0 1 1 connected 0-5459 5460 [5460->-8fc3]
";
        let m = masters(nodes).unwrap();
        assert_eq!(
            m.iter().map(|m| m.addr.clone()).collect::<Vec<_>>(),
            [
                ("127.0.0.1".to_owned(), 37065),
                ("127.0.0.1".to_owned(), 48975),
                ("127.0.0.1".to_owned(), 41538)
            ]
        );
        assert_eq!((m[0].id.as_str(), m[0].epoch.as_str()), ("8fc3", "3"));
        assert!(!m[0].migrating() && m[2].migrating());
        let myself = nodes.lines().filter_map(Master::of_line);
        let myself: Vec<_> = myself.filter(|(_, me)| *me).map(|(m, _)| m.id).collect();
        assert_eq!(myself, ["99d7"]);
    }

    #[test]
    fn a_scan_refuses_masters_that_do_not_cover_every_slot() {
        // The master of 0-5460 is flagged fail and its replica has not taken over: a SCAN
        // of the two others would miss a third of the keys.
        let failed = "\
8fc3 127.0.0.1:37065@47065 master - 0 1 3 connected 10923-16383
99d7 127.0.0.1:48975@58975 myself,master - 0 1 2 connected 5461-10922
dead 127.0.0.1:41537@51537 master,fail - 0 1 1 disconnected 0-5460
";
        let e = masters(failed).unwrap_err();
        assert!(e.contains("slot 0 "), "{e}");
        // Suspected failing (`fail?`) is left out the same way.
        let suspect = failed.replace("master,fail", "master,fail?");
        assert!(masters(&suspect).is_err());
        // A line that cannot be read (no port) leaves its slots uncovered too.
        let unparsed = failed.replace(
            "127.0.0.1:41537@51537 master,fail - 0 1 1 disconnected",
            "127.0.0.1@51537 master - 0 1 1 connected",
        );
        assert!(masters(&unparsed).unwrap_err().contains("slot 0 "));
        // A slot nobody was given.
        let gap = "8fc3 127.0.0.1:37065@47065 master - 0 1 3 connected 0-100 102-16383\n";
        assert!(masters(gap).unwrap_err().contains("slot 101 "));
        assert!(masters("").is_err());
    }
}
