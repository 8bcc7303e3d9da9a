//! Single flight per data tile: concurrent requests missing the same data tile pay the
//! origin for it once (issue 15).
//!
//! A request that must ask the origin for data tiles first [`SingleFlight::claim`]s them.
//! Each tile nobody is fetching becomes the request's own (it *leads* it: asks the origin
//! for it in its one call); each tile another request is already fetching is *followed*:
//! the request waits for the leader's answer instead of asking again. So 16 identical
//! requests arriving together make one origin call for each missing tile, whether the cache
//! tier is up or not (when Redis is down every request misses: this is what keeps the
//! degraded mode from multiplying origin calls).
//!
//! The leader [`Lead::publish`]es what the origin said about its tiles (their lists, or the
//! refusal when the call failed) as soon as the call returns, and keeps its tiles claimed
//! until the [`Lead`] is dropped, after its write-back: a request that arrives meanwhile
//! follows the published answer instead of reading a tier that is not written yet. A
//! leader that goes away without publishing (its client hung up and the request was
//! dropped) leaves its followers [`Followed::Abandoned`]: each claims those tiles again
//! (`crate::batch`, once it has the word of every tile it followed, so that it never
//! leads a tile while it waits for another), so the first to do so leads them and the
//! others follow it: one origin call again, not one per follower.
//!
//! An invalidation [`SingleFlight::forget`]s the flights of the tiles it covers (all of
//! them for one naming ids or classes, whose tiles are not known there): their
//! answers may be older than the change, so a request arriving after it leads a fetch of
//! its own instead of following one (the write guard already keeps the old leader from
//! writing back; this keeps later requests from being served its answer).
//!
//! What is left: a request that read the tier just before a leader's write-back landed and
//! claims just after the leader let go asks the origin again. The window is one Redis round
//! trip; it costs a second call, never a wrong answer.
//!
//! A flight is of a tile *at a tier*: the request path asks the origin at `agent` (one list
//! for every tier), and asks a tile over `--max-tile-items` there again at the tier of a
//! caller below it (`crate::batch`); requests at that tier share that call too, and never
//! follow one made at another tier.
//!
//! The table holds only tiles in flight (at most the server's in-flight batches times
//! `--max-data-tiles`, twice); the lock is never held across an await.

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use tilewarm::access::Access;
use tilewarm::tile::TileId;
use tokio::sync::watch;

use crate::batch::Refusal;
use crate::tier::StoredItem;

/// A data tile's list from the origin: its items and the list's expiry (Unix ms); `None`
/// when the origin's answer had no list for it.
pub type TileAnswer = Option<(Vec<Arc<StoredItem>>, u64)>;

/// Why a leader's answer left a tile out (the answer was otherwise good): its followers
/// report the tile unanswered for the same reason, told as their own tier may hear it.
#[derive(Debug, Clone)]
pub enum LeftOut {
    /// It holds more than `--max-tile-items` at the origin.
    OverLimit(crate::origin::TileOverLimit),
    /// An upstream's partial answer named it, with this code and message (and this tile).
    Told(tilewarm::protocol::Unanswered),
}

impl LeftOut {
    /// What an upstream's partial answer `u` says of tile `t`, one of those it names: its
    /// code and message, not the other tiles or ids it names.
    pub fn told(u: &tilewarm::protocol::Unanswered, t: TileId) -> LeftOut {
        LeftOut::Told(tilewarm::protocol::Unanswered {
            code: u.code,
            message: u.message.clone(),
            tiles: vec![t],
            ids: Vec::new(),
        })
    }
}

/// What a leader published for one tile.
type Published = Option<Arc<Result<Result<TileAnswer, LeftOut>, Refusal>>>;

/// The tiles being fetched now, by the tier they are asked at.
#[derive(Default)]
pub struct SingleFlight {
    tiles: Mutex<Flights>,
}

#[derive(Default)]
struct Flights {
    by_tile: HashMap<(TileId, Access), Flight>,
    next: u64,
}

/// One tile's fetch at one tier: the number of the flight (so that a leader lets go of its
/// own flight only, not of a later one after [`SingleFlight::forget`]), the channel its
/// leader publishes on, and how many requests follow it now.
struct Flight {
    n: u64,
    rx: watch::Receiver<Published>,
    followers: Arc<AtomicUsize>,
}

/// The tiles a request leads: it asks the origin for them and publishes the answer.
/// Dropping it lets the tiles go (followers of tiles never published then fetch them).
pub struct Lead<'a> {
    flight: &'a SingleFlight,
    at: Access,
    senders: Vec<(TileId, u64, watch::Sender<Published>)>,
}

/// A tile another request is fetching.
pub struct Follow {
    pub tile: TileId,
    rx: watch::Receiver<Published>,
    /// The flight's count of its followers.
    followers: Arc<AtomicUsize>,
}

/// What a followed tile's leader said.
pub enum Followed {
    /// The origin's answer for the tile.
    Answer(TileAnswer),
    /// The origin's answer left the tile out, for this reason.
    LeftOut(LeftOut),
    /// The leader's origin call failed with this refusal.
    Failed(Refusal),
    /// The leader went away without an answer: claim the tile again.
    Abandoned,
}

impl SingleFlight {
    /// Claims `tiles` (each once) to be asked at tier `at`: those nobody is fetching at
    /// `at` are led, the others followed.
    pub fn claim(&self, tiles: &[TileId], at: Access) -> (Lead<'_>, Vec<Follow>) {
        let mut map = self.tiles.lock().unwrap_or_else(|p| p.into_inner());
        let mut lead = Lead {
            flight: self,
            at,
            senders: Vec::new(),
        };
        let mut follow = Vec::new();
        for &t in tiles {
            match map.by_tile.get(&(t, at)) {
                Some(flight) => {
                    flight.followers.fetch_add(1, Relaxed);
                    follow.push(Follow {
                        tile: t,
                        rx: flight.rx.clone(),
                        followers: Arc::clone(&flight.followers),
                    });
                }
                None => {
                    let (tx, rx) = watch::channel(None);
                    map.next += 1;
                    let n = map.next;
                    let followers = Arc::default();
                    map.by_tile.insert((t, at), Flight { n, rx, followers });
                    lead.senders.push((t, n, tx));
                }
            }
        }
        (lead, follow)
    }

    /// Lets go of the flights (at every tier) of the data tiles `covered` says an
    /// invalidation covers: a later claim of one leads a fetch of its own. Their leaders
    /// and followers go on.
    pub fn forget(&self, covered: impl Fn(TileId) -> bool) {
        let mut map = self.tiles.lock().unwrap_or_else(|p| p.into_inner());
        map.by_tile.retain(|&(t, _), _| !covered(t));
    }

    /// Followed tiles whose leader's call (at tier `at`) is still awaited: each request's
    /// each such tile once, until it has the leader's word. Only flights in the table count:
    /// not the followers of a leader that went away, nor of a flight forgotten.
    pub fn following(&self, at: Access) -> usize {
        let map = self.tiles.lock().unwrap_or_else(|p| p.into_inner());
        (map.by_tile.iter())
            .filter(|((_, a), _)| *a == at)
            .map(|(_, f)| f.followers.load(Relaxed))
            .sum()
    }

    /// Tiles in flight now.
    pub fn len(&self) -> usize {
        self.tiles.lock().map(|m| m.by_tile.len()).unwrap_or(0)
    }

    /// Whether no tile is in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Lead<'_> {
    /// The tiles led (to ask the origin for).
    pub fn tiles(&self) -> Vec<TileId> {
        self.senders.iter().map(|(t, _, _)| *t).collect()
    }

    /// Hands followers the origin's answer: `answer(t)` per led tile (`Err`: left out).
    pub fn publish(&self, mut answer: impl FnMut(TileId) -> Result<TileAnswer, LeftOut>) {
        for (t, _, tx) in &self.senders {
            tx.send_replace(Some(Arc::new(Ok(answer(*t)))));
        }
    }

    /// Hands followers the refusal the origin call ended in.
    pub fn fail(&self, refusal: &Refusal) {
        for (_, _, tx) in &self.senders {
            tx.send_replace(Some(Arc::new(Err(refusal.clone()))));
        }
    }
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        if self.senders.is_empty() {
            return;
        }
        let mut map = self.flight.tiles.lock().unwrap_or_else(|p| p.into_inner());
        for &(t, n, _) in &self.senders {
            // Its own flight only: after `forget` the tile may be another lead's.
            let key = (t, self.at);
            if map.by_tile.get(&key).is_some_and(|f| f.n == n) {
                map.by_tile.remove(&key);
            }
        }
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        self.followers.fetch_sub(1, Relaxed);
    }
}

impl Follow {
    /// Waits for the leader (whose origin call is bounded by the origin timeout).
    pub async fn wait(mut self) -> Followed {
        match self.rx.wait_for(Option::is_some).await {
            Ok(v) => match v.as_deref() {
                Some(Ok(Ok(answer))) => Followed::Answer(answer.clone()),
                Some(Ok(Err(why))) => Followed::LeftOut(why.clone()),
                Some(Err(refusal)) => Followed::Failed(refusal.clone()),
                None => Followed::Abandoned,
            },
            Err(_) => Followed::Abandoned,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tilewarm::protocol::ErrorCode;

    const A: Access = Access::Agent;

    fn t(x: u32) -> TileId {
        TileId::new(14, x, 5721).unwrap()
    }

    #[tokio::test]
    async fn the_second_claim_follows_and_gets_the_leaders_answer() {
        let f = SingleFlight::default();
        let (lead, follow) = f.claim(&[t(1), t(2)], A);
        assert_eq!((lead.tiles().len(), follow.len()), (2, 0));
        let (lead2, follow2) = f.claim(&[t(2), t(3)], A);
        assert_eq!(lead2.tiles(), vec![t(3)]);
        assert_eq!(follow2.len(), 1);
        lead.publish(|tile| Ok((tile == t(2)).then(|| (Vec::new(), 42))));
        let got = follow2.into_iter().next().unwrap().wait().await;
        assert!(matches!(got, Followed::Answer(Some((ref v, 42))) if v.is_empty()));
        // Still claimed until the lead is dropped (its write-back), then free again.
        assert_eq!(f.len(), 3);
        drop(lead);
        drop(lead2);
        assert!(f.is_empty());
        assert_eq!(f.claim(&[t(2)], A).0.tiles(), vec![t(2)]);
    }

    #[tokio::test]
    async fn after_an_invalidation_a_claim_leads_its_own_fetch() {
        let f = SingleFlight::default();
        let (old, _) = f.claim(&[t(1), t(2)], A);
        f.forget(|tile| tile == t(1));
        // Arriving after the change: t(1) is fetched anew, t(2) still followed.
        let (new, follow) = f.claim(&[t(1), t(2)], A);
        assert_eq!(new.tiles(), vec![t(1)]);
        assert_eq!(follow.iter().map(|x| x.tile).collect::<Vec<_>>(), [t(2)]);
        // The old leader letting go does not free the new one's flight.
        drop(old);
        let (_, follow) = f.claim(&[t(1)], A);
        assert_eq!(follow.len(), 1);
        drop(new);
        assert!(f.is_empty());
    }

    #[tokio::test]
    async fn followers_hear_failures_and_abandonment() {
        let f = SingleFlight::default();
        let (lead, _) = f.claim(&[t(1)], A);
        let (_, follow) = f.claim(&[t(1)], A);
        lead.fail(&Refusal::new(ErrorCode::UpstreamTimeout, "slow"));
        let got = follow.into_iter().next().unwrap().wait().await;
        assert!(matches!(got, Followed::Failed(r) if r.code == ErrorCode::UpstreamTimeout));
        drop(lead);
        let (lead, _) = f.claim(&[t(1)], A);
        let (_, follow) = f.claim(&[t(1)], A);
        let (_, follow2) = f.claim(&[t(1)], A);
        assert_eq!(f.following(A), 2);
        drop(lead);
        assert_eq!(
            f.following(A),
            0,
            "the followers of a leader gone are counted"
        );
        let got = follow.into_iter().next().unwrap().wait().await;
        assert!(matches!(got, Followed::Abandoned));
        // Claimed again: the first follower to do so leads, the next follows it.
        let (again, none) = f.claim(&[t(1)], A);
        assert_eq!((again.tiles(), none.len()), (vec![t(1)], 0));
        let got = follow2.into_iter().next().unwrap().wait().await;
        assert!(matches!(got, Followed::Abandoned));
        let (none, follow) = f.claim(&[t(1)], A);
        assert_eq!((none.tiles().len(), follow.len()), (0, 1));
        assert_eq!(f.following(A), 1);
    }

    /// A tile is followed only at the tier it is asked at (a call at `agent` is no answer
    /// for one at `public`, nor the other way), and each follower is counted at its tier
    /// until it has its answer.
    #[tokio::test]
    async fn flights_are_per_tier_and_their_followers_counted() {
        let f = SingleFlight::default();
        let (top, _) = f.claim(&[t(1)], A);
        let (low, follow) = f.claim(&[t(1)], Access::Public);
        assert_eq!((low.tiles(), follow.len()), (vec![t(1)], 0));
        let (_, follow) = f.claim(&[t(1)], Access::Public);
        assert_eq!(f.following(Access::Public), 1);
        assert_eq!(f.following(A), 0);
        low.publish(|_| Ok(None));
        let got = follow.into_iter().next().unwrap().wait().await;
        assert!(matches!(got, Followed::Answer(None)));
        assert_eq!(f.following(Access::Public), 0);
        drop(low);
        // The one at `agent` is still in flight; invalidating the tile lets go of both.
        assert_eq!(f.claim(&[t(1)], A).1.len(), 1);
        assert_eq!(f.following(A), 0, "a follow given up is not counted");
        f.forget(|tile| tile == t(1));
        assert!(f.is_empty());
        drop(top);
    }
}
