//! The circuit breaker that holds prefetch back while the backend keeps failing.

use super::RequestId;

/// Suspends prefetch after `threshold` consecutive failures; after a cool-down it lets one
/// prefetch through as a probe. A failed probe opens it again for twice as long (up to
/// `max_cooldown_ms`); any answer closes it and resets the cool-down. It never holds
/// foreground requests: the [`Batcher`](super::Batcher) only asks it about prefetch.
#[derive(Clone, Debug)]
pub(super) struct Breaker {
    state: State,
    /// Failures in a row that said something about the backend's health.
    failures: u32,
    /// The cool-down the next opening lasts.
    cooldown_ms: u64,
    threshold: u32,
    base_cooldown_ms: u64,
    max_cooldown_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Closed,
    Open {
        until_ms: u64,
    },
    /// The cool-down is over: one probe may go out (`None` until it does).
    HalfOpen {
        probe: Option<RequestId>,
    },
}

impl Breaker {
    /// A closed breaker.
    pub(super) fn new(threshold: u32, cooldown_ms: u64, max_cooldown_ms: u64) -> Breaker {
        Breaker {
            state: State::Closed,
            failures: 0,
            cooldown_ms,
            threshold,
            base_cooldown_ms: cooldown_ms,
            max_cooldown_ms,
        }
    }

    /// Whether it holds prefetch back: open, or half-open (at most its probe goes out).
    pub(super) fn is_open(&self) -> bool {
        self.state != State::Closed
    }

    /// Whether a prefetch request may go out at `now_ms`: closed, or half-open with no
    /// probe out. An open breaker whose cool-down has ended turns half-open here.
    pub(super) fn allows_prefetch(&mut self, now_ms: u64) -> bool {
        match self.state {
            State::Closed => true,
            State::Open { until_ms } if now_ms >= until_ms => {
                self.state = State::HalfOpen { probe: None };
                true
            }
            State::Open { .. } => false,
            State::HalfOpen { probe } => probe.is_none(),
        }
    }

    /// Prefetch request `id` went out; when half-open, it is the probe.
    pub(super) fn sent_prefetch(&mut self, id: RequestId) {
        if let State::HalfOpen { probe } = &mut self.state {
            *probe = Some(id);
        }
    }

    /// Request `id` stopped being tracked (answered, failed or cancelled): if it was the
    /// probe, another may go out unless [`on_failure`](Self::on_failure) opens the breaker.
    pub(super) fn ended(&mut self, id: RequestId) {
        if self.state == (State::HalfOpen { probe: Some(id) }) {
            self.state = State::HalfOpen { probe: None };
        }
    }

    /// An answer came back: the backend is up. Closes the breaker and resets the streak and
    /// the cool-down.
    pub(super) fn on_success(&mut self) {
        self.failures = 0;
        self.state = State::Closed;
        self.cooldown_ms = self.base_cooldown_ms;
    }

    /// A request failed in a way that says the backend is in trouble. Opens the breaker
    /// after `threshold` failures in a row, or again (for twice as long) when it is
    /// half-open. Returns whether a closed breaker opened.
    pub(super) fn on_failure(&mut self, now_ms: u64) -> bool {
        self.failures = self.failures.saturating_add(1);
        let (open, opened) = match self.state {
            // The probe (or a request sent before it) failed: open again, for longer.
            State::HalfOpen { .. } => {
                self.cooldown_ms = self.cooldown_ms.saturating_mul(2).min(self.max_cooldown_ms);
                (true, false)
            }
            State::Closed if self.failures >= self.threshold => (true, true),
            _ => (false, false),
        };
        if open {
            self.state = State::Open {
                until_ms: now_ms.saturating_add(self.cooldown_ms),
            };
        }
        opened
    }

    /// When an open breaker lets a probe through, if it is open.
    pub(super) fn reopens_at_ms(&self) -> Option<u64> {
        match self.state {
            State::Open { until_ms } => Some(until_ms),
            _ => None,
        }
    }
}
