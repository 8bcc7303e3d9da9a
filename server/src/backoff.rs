//! The back-off of the server's background loops that reconnect or retry: the change
//! stream's reader ([`crate::stream`]), the PostGIS listener and its retried invalidation
//! ([`crate::origin::changes`]). Delays double from a first one to a cap; a loop whose
//! connection stayed up long enough starts over at the first delay
//! ([`Backoff::after_connection`]), so one brief drop hours after an outage is not waited
//! out at the cap, while a connection that drops as soon as it is up (a kill loop, a proxy
//! cutting it) is not retried ten times a second. [`jitter`] spreads a delay over its upper
//! half, for loops that many instances run against one peer at once (the upstream feed's
//! followers, [`crate::origin::upstream_changes`]), so that they do not reconnect in step.

use std::time::Duration;

/// Doubling delays from `first` to `max` (module docs).
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `first`; never waits longer than `max` (nor less than `first`).
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max: max.max(first),
            next: first,
        }
    }

    /// The delay to wait now; the one after it is twice as long, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(self.max);
        d
    }

    /// Starts over at the first delay.
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// The delay to wait after a connection ended. `up_for` is how long it had been
    /// working (`None`: it never did); one that worked for at least `stable_after` starts
    /// the back-off over first.
    pub fn after_connection(
        &mut self,
        up_for: Option<Duration>,
        stable_after: Duration,
    ) -> Duration {
        if up_for.is_some_and(|d| d >= stable_after) {
            self.reset();
        }
        self.next_delay()
    }
}

/// A delay between half of `d` and `d`, chosen at random ("equal jitter"): instances that
/// lost the same peer at the same moment spread their reconnects over the upper half of
/// the delay instead of all arriving together. The randomness is std's per-process hash
/// seed mixed with the clock: enough to spread reconnects, not meant for anything secret.
pub fn jitter(d: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |t| t.as_nanos()),
    );
    let half = d / 2;
    // A fraction of the half in 1/1024ths: uniform enough for spreading reconnects.
    half + half * (h.finish() % 1025) as u32 / 1024
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn delays_double_up_to_the_cap() {
        let mut b = Backoff::new(100 * MS, 2000 * MS);
        let got: Vec<u128> = (0..7).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 800, 1600, 2000, 2000]);
        b.reset();
        assert_eq!(b.next_delay(), 100 * MS);
    }

    #[test]
    fn a_connection_that_stayed_up_starts_the_back_off_over() {
        let stable = Duration::from_secs(30);
        let mut b = Backoff::new(100 * MS, 2000 * MS);
        // An outage: connections that never worked climb to the cap.
        for _ in 0..6 {
            b.after_connection(None, stable);
        }
        assert_eq!(b.after_connection(None, stable), 2000 * MS);
        // A connection that worked for a while, then one drop: the first delay again.
        assert_eq!(
            b.after_connection(Some(Duration::from_secs(3600)), stable),
            100 * MS
        );
        assert_eq!(b.after_connection(None, stable), 200 * MS);
        // One that dropped soon after it came up keeps climbing.
        assert_eq!(
            b.after_connection(Some(Duration::from_secs(5)), stable),
            400 * MS
        );
        assert_eq!(b.after_connection(Some(stable), stable), 100 * MS);
    }

    #[test]
    fn a_cap_below_the_first_delay_is_the_first_delay() {
        let mut b = Backoff::new(500 * MS, 100 * MS);
        assert_eq!(b.next_delay(), 500 * MS);
        assert_eq!(b.next_delay(), 500 * MS);
    }

    #[test]
    fn jitter_stays_in_the_upper_half_and_varies() {
        let d = 2000 * MS;
        let got: Vec<Duration> = (0..64).map(|_| jitter(d)).collect();
        assert!(got.iter().all(|j| *j >= d / 2 && *j <= d), "{got:?}");
        assert!(got.iter().any(|j| *j != got[0]), "never varies: {got:?}");
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    }
}
