//! Relaying an origin's changes: what the server learns from a source of changes other than
//! `POST /v1/invalidate` — the PostGIS listener ([`super::changes`]) or an upstream
//! tilewarm-server's feed ([`super::upstream_changes`]) — is applied to this server's cache
//! tier and write guard ([`crate::invalidate::invalidate`]), then put on this server's
//! change stream ([`crate::stream`]), so that its other instances and its own followers
//! (pages through `tilewarm/live`, edges, servers chained below it) hear of it as of an
//! invalidation made here.
//!
//! Two failures are handled here, once for every source:
//! - **the tier does not take it** (Redis down, or refusing or timing out the deletes):
//!   requests are held off the Redis tier and `all` is retried until it lands
//!   ([`crate::invalidate::everything_until_applied`], the source's [`ReadHold`]), then
//!   `all` is published;
//! - **the change stream does not take it**: it is tried [`PUBLISH_TRIES`] times, 100 ms
//!   then 200 ms apart; if it still fails, no follower can ever learn of that change from
//!   the stream (no entry was written, so no gap shows either), so the relay owes them an
//!   invalidate-all: logged (warn), counted (the source's `unpublished` counter), and the
//!   next change it publishes goes out as `all`, which covers the missed one and
//!   everything between. Without waiting for a next change, the source's loop pays it on
//!   its own ([`Relay::pay`]) every 100 ms doubling to 2 s until the stream takes it.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::invalidate::{everything_until_applied, invalidate_with, Invalidation, Reach};
use crate::tier::ReadHold;
use crate::App;

/// Tries of a change on the change stream before it is owed as an invalidate-all (module
/// docs).
pub const PUBLISH_TRIES: u32 = 3;

/// One source's way onto the tier and the change stream, and what it owes the stream's
/// followers (module docs). One per source, kept across its reconnects.
pub struct Relay {
    /// The source, as its log lines start (`change feed`, `upstream feed`).
    source: &'static str,
    /// What holds reads off the tier while an invalidation of this source failed there.
    hold: ReadHold,
    /// Changes applied to the tier that the stream did not take ([`PUBLISH_TRIES`] each).
    unpublished: Arc<AtomicU64>,
    /// A change applied to the tier is not on the stream.
    owed: bool,
    /// Between tries to pay it on its own: 100 ms doubling to 2 s.
    backoff: Backoff,
    next_try: tokio::time::Instant,
}

impl Relay {
    /// A relay for `source` (log lines), holding reads by `hold`, counting what the stream
    /// did not take in `unpublished`.
    pub fn new(source: &'static str, hold: ReadHold, unpublished: Arc<AtomicU64>) -> Relay {
        Relay {
            source,
            hold,
            unpublished,
            owed: false,
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(2)),
            next_try: tokio::time::Instant::now(),
        }
    }

    /// Whether an invalidate-all is owed to the stream's followers.
    pub fn owed(&self) -> bool {
        self.owed
    }

    /// When [`Self::pay`] should try next (meaningful while [`Self::owed`]).
    pub fn next_try(&self) -> tokio::time::Instant {
        self.next_try
    }

    /// Applies `inv` to the tier, then publishes it (module docs); `reach`: what the
    /// source says it may have changed beyond what it names ([`Reach`]). False when the
    /// app is gone.
    pub async fn apply(&mut self, app: &Weak<App>, inv: Invalidation, reach: Reach) -> bool {
        {
            let Some(a) = app.upgrade() else {
                return false;
            };
            if invalidate_with(&a, &inv, reach).await.is_ok() {
                self.publish(&a, &inv, reach).await;
                return true;
            }
        }
        if !everything_until_applied(app, self.hold).await {
            return false;
        }
        let Some(a) = app.upgrade() else {
            return false;
        };
        info!(
            "{}: the cache tier is back and was invalidated",
            self.source
        );
        self.publish(&a, &Invalidation::everything(), Reach::Anywhere)
            .await;
        true
    }

    /// Puts `inv`, applied to the tier, on the stream ([`PUBLISH_TRIES`] tries); as `all`
    /// while something is owed. If the stream does not take it, it is owed.
    async fn publish(&mut self, app: &App, inv: &Invalidation, reach: Reach) {
        let everything = Invalidation::everything();
        let mut delay = Duration::from_millis(100);
        for attempt in 1..=PUBLISH_TRIES {
            // Read at each try: a change owed by now is covered only by `all`.
            let sent = if self.owed { &everything } else { inv };
            match app.changes.publish_with(sent, reach).await {
                Ok(id) => {
                    self.paid(id);
                    return;
                }
                Err(e) if attempt < PUBLISH_TRIES => {
                    debug!(error = %e, attempt, "{}: the change stream did not take a change; trying again", self.source);
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) => {
                    self.unpublished.fetch_add(1, Relaxed);
                    if !self.owed {
                        warn!(error = %e, tries = PUBLISH_TRIES, "{}: a change applied to the cache tier is not on the change stream; its followers get an invalidate-all once it takes one", self.source);
                        self.owed = true;
                        self.backoff.reset();
                    }
                    self.next_try = tokio::time::Instant::now() + self.backoff.next_delay();
                }
            }
        }
    }

    /// One try to pay what is owed on its own; the next is scheduled if it fails.
    pub async fn pay(&mut self, app: &App) {
        if !self.owed {
            return;
        }
        match app.changes.publish(&Invalidation::everything()).await {
            Ok(id) => self.paid(id),
            Err(e) => {
                debug!(error = %e, "{}: the change stream still does not take the owed invalidate-all", self.source);
                self.next_try = tokio::time::Instant::now() + self.backoff.next_delay();
            }
        }
    }

    fn paid(&mut self, id: tilewarm::protocol::StreamId) {
        if std::mem::take(&mut self.owed) {
            info!(id = %id, "{}: the change stream takes changes again; the ones it missed went out as an invalidate-all", self.source);
        }
    }
}
