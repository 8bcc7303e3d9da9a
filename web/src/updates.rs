//! The stream behind [`TileCache::updates`](crate::TileCache::updates): one bounded queue
//! per subscriber, so a subscriber that stops polling (a stream kept and never read) holds
//! at most the latest view, the latest tier, one `Complete`, the tiles changed since it
//! last read (merged into one) and [`MAX_QUEUED_UPDATES`] updates in all, instead of a copy of every view since.
//!
//! Host-compiled (no browser types), so its bound is tested by `cargo test`.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};

/// Most updates queued for one subscriber. A new view (or tier) replaces the one queued, a
/// `Complete` already queued is not queued again, changed tiles are merged into those
/// queued, and past the cap the oldest error is dropped.
pub const MAX_QUEUED_UPDATES: usize = 64;

/// How an update is queued for a subscriber that has not read the last ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Queued {
    /// A value as it is now (the view, the tier): replaces one of the same slot still
    /// queued.
    Latest(u8),
    /// A state reached (`Complete`): queued once.
    Once,
    /// Its own news (an error): kept, the oldest dropped past the cap.
    Each,
    /// News that adds up (the tiles that changed): merged into the one still queued
    /// ([`QueueRule::merge`]).
    Merge,
}

/// An update's [`Queued`] rule.
pub(crate) trait QueueRule {
    fn rule(&self) -> Queued;

    /// Adds `later` (of the same [`Queued::Merge`] rule) into this update, still queued.
    fn merge(&mut self, _later: &Self) {}
}

struct Queue<U> {
    items: VecDeque<U>,
    waker: Option<Waker>,
    closed: bool,
}

/// A stream of updates ([`futures_core::Stream`] in the browser). It ends when the cache is
/// dropped; dropping it unsubscribes.
pub struct Updates<U> {
    queue: Rc<RefCell<Queue<U>>>,
}

impl<U> Updates<U> {
    /// The next update if one is queued (`Ready(None)`: the cache is gone), else registers
    /// the task to wake.
    pub fn poll_update(&self, cx: &mut Context<'_>) -> Poll<Option<U>> {
        let mut q = self.queue.borrow_mut();
        if let Some(u) = q.items.pop_front() {
            return Poll::Ready(Some(u));
        }
        if q.closed {
            return Poll::Ready(None);
        }
        q.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Updates queued now.
    pub fn queued(&self) -> usize {
        self.queue.borrow().items.len()
    }
}

#[cfg(target_arch = "wasm32")]
impl<U> futures_core::Stream for Updates<U> {
    type Item = U;

    fn poll_next(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<U>> {
        self.poll_update(cx)
    }
}

/// The sending side: every subscriber's queue, held weakly (a dropped stream is forgotten
/// at the next send or subscribe). Dropping it ends every stream.
pub(crate) struct Subscribers<U> {
    queues: Vec<Weak<RefCell<Queue<U>>>>,
    /// [`Subscribers::close`] was called: new streams end at once.
    closed: bool,
}

impl<U> Default for Subscribers<U> {
    fn default() -> Self {
        Subscribers {
            queues: Vec::new(),
            closed: false,
        }
    }
}

impl<U> Subscribers<U> {
    /// Ends every stream (after what is queued), and every stream made from now on: the
    /// cache was disposed.
    pub(crate) fn close(&mut self) {
        self.closed = true;
        for queue in self.queues.drain(..).filter_map(|w| w.upgrade()) {
            let mut q = queue.borrow_mut();
            q.closed = true;
            if let Some(w) = q.waker.take() {
                w.wake();
            }
        }
    }
}

impl<U: Clone + QueueRule> Subscribers<U> {
    /// A new subscriber's stream, from now on. The streams dropped since the last send
    /// are forgotten here too: a page that subscribes again at every render of a map at
    /// rest (nothing sent) would otherwise hold an entry for each.
    pub(crate) fn subscribe(&mut self) -> Updates<U> {
        self.queues.retain(|weak| weak.strong_count() > 0);
        let queue = Rc::new(RefCell::new(Queue {
            items: VecDeque::new(),
            waker: None,
            closed: self.closed,
        }));
        if !self.closed {
            self.queues.push(Rc::downgrade(&queue));
        }
        Updates { queue }
    }

    /// Queues `update` for every subscriber, by its [`Queued`] rule. Returns the updates it
    /// took out of the queues (replaced, or past the cap), for the caller to drop when it is
    /// safe to (a view may hold the last `Rc` of an item whose `Drop` calls the cache).
    pub(crate) fn send(&mut self, update: &U) -> Vec<U> {
        let mut gone = Vec::new();
        self.queues.retain(|weak| {
            let Some(queue) = weak.upgrade() else {
                return false;
            };
            let mut q = queue.borrow_mut();
            let rule = update.rule();
            match rule {
                Queued::Latest(_) => {
                    if let Some(i) = q.items.iter().position(|u| u.rule() == rule) {
                        gone.extend(q.items.remove(i));
                    }
                }
                Queued::Once if q.items.iter().any(|u| u.rule() == Queued::Once) => return true,
                Queued::Merge => {
                    if let Some(queued) = q.items.iter_mut().find(|u| u.rule() == rule) {
                        queued.merge(update);
                        return true;
                    }
                }
                _ => {}
            }
            if q.items.len() >= MAX_QUEUED_UPDATES {
                // Latest values and states are at most one each: an error is the oldest
                // to go.
                if let Some(i) = q.items.iter().position(|u| u.rule() == Queued::Each) {
                    gone.extend(q.items.remove(i));
                }
            }
            q.items.push_back(update.clone());
            if let Some(w) = q.waker.take() {
                w.wake();
            }
            true
        });
        gone
    }
}

impl<U> Drop for Subscribers<U> {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, PartialEq)]
    enum U {
        View(u32),
        Access(u32),
        Complete,
        Error(u32),
        Changed(Vec<u32>),
    }

    impl QueueRule for U {
        fn rule(&self) -> Queued {
            match self {
                U::View(_) => Queued::Latest(0),
                U::Access(_) => Queued::Latest(1),
                U::Complete => Queued::Once,
                U::Error(_) => Queued::Each,
                U::Changed(_) => Queued::Merge,
            }
        }

        fn merge(&mut self, later: &Self) {
            if let (U::Changed(a), U::Changed(b)) = (self, later) {
                a.extend(b);
            }
        }
    }

    /// Changes a subscriber has not read add up in one update, none lost; one that reads
    /// gets each.
    #[test]
    fn changes_not_read_are_merged_into_one() {
        let mut subs = Subscribers::default();
        let idle = subs.subscribe();
        let reader = subs.subscribe();
        let mut read = Vec::new();
        for i in 0..10 * MAX_QUEUED_UPDATES as u32 {
            subs.send(&U::Changed(vec![i]));
            subs.send(&U::Error(i));
            read.extend(drain(&reader));
        }
        assert_eq!(read.len(), 20 * MAX_QUEUED_UPDATES);
        let got = drain(&idle);
        assert_eq!(got.len(), MAX_QUEUED_UPDATES);
        let all: Vec<u32> = (0..10 * MAX_QUEUED_UPDATES as u32).collect();
        assert_eq!(got[0], U::Changed(all));
    }

    fn drain(s: &Updates<U>) -> Vec<U> {
        let mut cx = Context::from_waker(Waker::noop());
        std::iter::from_fn(|| match s.poll_update(&mut cx) {
            Poll::Ready(u) => u,
            Poll::Pending => None,
        })
        .collect()
    }

    #[test]
    fn a_subscriber_that_never_reads_holds_a_bounded_queue() {
        let mut subs = Subscribers::default();
        let idle = subs.subscribe();
        let reader = subs.subscribe();
        let mut read = Vec::new();
        for i in 0..10 * MAX_QUEUED_UPDATES as u32 {
            subs.send(&U::View(i));
            subs.send(&U::Access(i));
            subs.send(&U::Complete);
            subs.send(&U::Error(i));
            assert!(idle.queued() <= MAX_QUEUED_UPDATES, "{}", idle.queued());
            read.extend(drain(&reader));
        }
        // The one that read saw everything, in order.
        assert_eq!(read.len(), 40 * MAX_QUEUED_UPDATES);
        assert_eq!(
            &read[..4],
            [U::View(0), U::Access(0), U::Complete, U::Error(0)]
        );
        // The idle one: the latest view and tier, one Complete, the latest errors.
        let last = 10 * MAX_QUEUED_UPDATES as u32 - 1;
        let got = drain(&idle);
        assert_eq!(got.len(), MAX_QUEUED_UPDATES);
        assert_eq!(got.iter().filter(|u| **u == U::Complete).count(), 1);
        assert_eq!(got.last(), Some(&U::Error(last)));
        assert!(got.contains(&U::View(last)) && got.contains(&U::Access(last)));
        assert!(!got
            .iter()
            .any(|u| matches!(u, U::View(v) | U::Access(v) if *v != last)));
    }

    /// A page that subscribes and drops streams while nothing is sent (a component made
    /// again at each render of a map at rest) holds no more for them.
    #[test]
    fn streams_dropped_while_nothing_is_sent_are_forgotten() {
        let mut subs: Subscribers<U> = Subscribers::default();
        let kept = subs.subscribe();
        for _ in 0..1000 {
            drop(subs.subscribe());
        }
        assert!(subs.queues.len() <= 2, "{} queues kept", subs.queues.len());
        subs.send(&U::Complete);
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(kept.poll_update(&mut cx), Poll::Ready(Some(U::Complete)));
    }

    /// A disposed cache's streams end, those it had and those asked for after; what was
    /// queued before is still read.
    #[test]
    fn closing_ends_every_stream_and_every_later_one() {
        let mut subs = Subscribers::default();
        let kept = subs.subscribe();
        subs.send(&U::Complete);
        subs.close();
        let later = subs.subscribe();
        subs.send(&U::View(1));
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(kept.poll_update(&mut cx), Poll::Ready(Some(U::Complete)));
        assert_eq!(kept.poll_update(&mut cx), Poll::Ready(None));
        assert_eq!(later.poll_update(&mut cx), Poll::Ready(None));
    }

    #[test]
    fn a_dropped_stream_is_forgotten_and_dropping_the_sender_ends_the_rest() {
        let mut subs = Subscribers::default();
        let gone = subs.subscribe();
        let kept = subs.subscribe();
        drop(gone);
        subs.send(&U::Complete);
        assert_eq!(subs.queues.len(), 1);
        drop(subs);
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(kept.poll_update(&mut cx), Poll::Ready(Some(U::Complete)));
        assert_eq!(kept.poll_update(&mut cx), Poll::Ready(None));
    }
}
