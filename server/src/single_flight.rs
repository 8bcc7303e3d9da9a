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
//! dropped) leaves its followers [`Followed::Abandoned`]: they fetch those tiles
//! themselves.
//!
//! What is left: a request that read the tier just before a leader's write-back landed and
//! claims just after the leader let go asks the origin again. The window is one Redis round
//! trip; it costs a second call, never a wrong answer.
//!
//! The table holds only tiles in flight (at most the server's in-flight batches times
//! `--max-data-tiles`); the lock is never held across an await.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tilewarm::tile::TileId;
use tokio::sync::watch;

use crate::batch::Refusal;
use crate::tier::StoredItem;

/// A data tile's list from the origin: its items and the list's expiry (Unix ms); `None`
/// when the origin's answer had no list for it.
pub type TileAnswer = Option<(Vec<Arc<StoredItem>>, u64)>;

/// What a leader published for one tile.
type Published = Option<Arc<Result<TileAnswer, Refusal>>>;

/// The tiles being fetched now, each with the channel its leader publishes on.
#[derive(Default)]
pub struct SingleFlight {
    tiles: Mutex<HashMap<TileId, watch::Receiver<Published>>>,
}

/// The tiles a request leads: it asks the origin for them and publishes the answer.
/// Dropping it lets the tiles go (followers of tiles never published then fetch them).
pub struct Lead<'a> {
    flight: &'a SingleFlight,
    senders: Vec<(TileId, watch::Sender<Published>)>,
}

/// A tile another request is fetching.
pub struct Follow {
    pub tile: TileId,
    rx: watch::Receiver<Published>,
}

/// What a followed tile's leader said.
pub enum Followed {
    /// The origin's answer for the tile.
    Answer(TileAnswer),
    /// The leader's origin call failed with this refusal.
    Failed(Refusal),
    /// The leader went away without an answer: fetch the tile yourself.
    Abandoned,
}

impl SingleFlight {
    /// Claims `tiles` (each once): those nobody is fetching are led, the others followed.
    pub fn claim(&self, tiles: &[TileId]) -> (Lead<'_>, Vec<Follow>) {
        let mut map = self.tiles.lock().unwrap_or_else(|p| p.into_inner());
        let mut lead = Lead {
            flight: self,
            senders: Vec::new(),
        };
        let mut follow = Vec::new();
        for &t in tiles {
            match map.get(&t) {
                Some(rx) => follow.push(Follow {
                    tile: t,
                    rx: rx.clone(),
                }),
                None => {
                    let (tx, rx) = watch::channel(None);
                    map.insert(t, rx);
                    lead.senders.push((t, tx));
                }
            }
        }
        (lead, follow)
    }

    /// Tiles in flight now.
    pub fn len(&self) -> usize {
        self.tiles.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether no tile is in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Lead<'_> {
    /// The tiles led (to ask the origin for).
    pub fn tiles(&self) -> Vec<TileId> {
        self.senders.iter().map(|(t, _)| *t).collect()
    }

    /// Hands followers the origin's answer: `answer(t)` per led tile.
    pub fn publish(&self, mut answer: impl FnMut(TileId) -> TileAnswer) {
        for (t, tx) in &self.senders {
            tx.send_replace(Some(Arc::new(Ok(answer(*t)))));
        }
    }

    /// Hands followers the refusal the origin call ended in.
    pub fn fail(&self, refusal: &Refusal) {
        for (_, tx) in &self.senders {
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
        for (t, _) in &self.senders {
            // Only this lead inserted the entry, and only it removes it.
            map.remove(t);
        }
    }
}

impl Follow {
    /// Waits for the leader (whose origin call is bounded by the origin timeout).
    pub async fn wait(mut self) -> Followed {
        match self.rx.wait_for(Option::is_some).await {
            Ok(v) => match v.as_deref() {
                Some(Ok(answer)) => Followed::Answer(answer.clone()),
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

    fn t(x: u32) -> TileId {
        TileId::new(14, x, 5721).unwrap()
    }

    #[tokio::test]
    async fn the_second_claim_follows_and_gets_the_leaders_answer() {
        let f = SingleFlight::default();
        let (lead, follow) = f.claim(&[t(1), t(2)]);
        assert_eq!((lead.tiles().len(), follow.len()), (2, 0));
        let (lead2, follow2) = f.claim(&[t(2), t(3)]);
        assert_eq!(lead2.tiles(), vec![t(3)]);
        assert_eq!(follow2.len(), 1);
        lead.publish(|tile| (tile == t(2)).then(|| (Vec::new(), 42)));
        let got = follow2.into_iter().next().unwrap().wait().await;
        assert!(matches!(got, Followed::Answer(Some((ref v, 42))) if v.is_empty()));
        // Still claimed until the lead is dropped (its write-back), then free again.
        assert_eq!(f.len(), 3);
        drop(lead);
        drop(lead2);
        assert!(f.is_empty());
        assert_eq!(f.claim(&[t(2)]).0.tiles(), vec![t(2)]);
    }

    #[tokio::test]
    async fn followers_hear_failures_and_abandonment() {
        let f = SingleFlight::default();
        let (lead, _) = f.claim(&[t(1)]);
        let (_, follow) = f.claim(&[t(1)]);
        lead.fail(&Refusal {
            code: ErrorCode::UpstreamTimeout,
            message: "slow".into(),
        });
        let got = follow.into_iter().next().unwrap().wait().await;
        assert!(matches!(got, Followed::Failed(r) if r.code == ErrorCode::UpstreamTimeout));
        drop(lead);
        let (lead, _) = f.claim(&[t(1)]);
        let (_, follow) = f.claim(&[t(1)]);
        drop(lead);
        let got = follow.into_iter().next().unwrap().wait().await;
        assert!(matches!(got, Followed::Abandoned));
    }
}
