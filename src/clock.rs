//! The core's clock: the shell's wall time made monotonic, without stopping.
//!
//! Shells pass time as `now_ms`, which in the browser and at the edge is `Date.now()`: a
//! wall clock, which can step back (NTP, a user fixing their clock). Every wait in the core
//! is a time to reach: a tile backed off for 2 s at wall time T waits until T+2000, the
//! breaker until its cool-down ends, a data tile refused as too large for a tile TTL, a
//! request until its deadline, a cached item until it expires. Were the wall clock to step
//! back an hour, each of those would last an hour more.
//!
//! So a [`Clock`] keeps how far the wall clock has stepped back in all (its offset) and adds
//! it to every time it reads: time on it never goes back, and goes on at the wall clock's
//! pace from where it was. A step back counts as no time at all, so a wait lasts at most the
//! delay it was given; a step forward counts as the time it says, so a wait may end early
//! and a cached item expire early (both safe: a retry or a refetch sooner). A cached item
//! lives its TTL in wall-clock time that passed, not counting a step back.
//!
//! Simply keeping the latest time seen (`max(now, last)`) would not do: after a step back
//! of an hour, time would stand still for that hour and every wait with it.
//!
//! What a wall clock cannot tell is how much time passed between the last read before a
//! step back and the first read after it (a step back of exactly the time that passed reads
//! as no time passing): it counts as none. So a wait can last longer by that much, and an
//! item be served longer by as much: a shell at rest calls at each wake-up it was given, so
//! at most one wait's length more (twice the delay, in the worst case), and a busy shell
//! calls far more often. A step forward is no such trouble: it counts in full.
//!
//! The clock's times are the core's own: a shell's times are read into it once, where they
//! come in ([`Clock::read`]), and a time the core hands back for the shell to wait until
//! goes out on the shell's clock again ([`Clock::wall`]).
//!
//! It is public for the native server's in-process tier, which holds an `ItemCache` on it
//! (`server/src/tier.rs`, `LocalTier`): the same rule for the same cache, on the host's
//! `SystemTime`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Wall time read as monotonic time (see the module's doc). Reading takes `&self`, so a
/// call that changes nothing else (a wake-up time, a peek) still notes a step back when it
/// is the first to see it: the time before it is not counted twice. (Atomics, not `Cell`s,
/// so the client and the proxy stay `Sync`; relaxed loads and stores: each owner is used by
/// one thread at a time (the server's tier reads it under its cache's lock), and on wasm32
/// they are plain ones.)
#[derive(Debug, Default)]
pub struct Clock {
    /// How far the wall clock has stepped back in all: added to each time read.
    offset: AtomicU64,
    /// The latest time read, on this clock.
    last: AtomicU64,
}

impl Clone for Clock {
    fn clone(&self) -> Clock {
        Clock {
            offset: AtomicU64::new(self.offset.load(Relaxed)),
            last: AtomicU64::new(self.last.load(Relaxed)),
        }
    }
}

impl Clock {
    /// The time on this clock at wall time `wall_ms`: never before the last time read, and
    /// as far past it as the wall clock moved on.
    // Not inlined: one copy for the twenty-odd calls. Inlined, the browser page was 0.54 KB
    // larger gzipped (100,297 against 99,754 bytes; 99,565 without the clock; 2026-12-07).
    #[inline(never)]
    pub fn read(&self, wall_ms: u64) -> u64 {
        let offset =
            (self.offset.load(Relaxed)).max(self.last.load(Relaxed).saturating_sub(wall_ms));
        self.offset.store(offset, Relaxed);
        let now = wall_ms.saturating_add(offset);
        self.last.store(now, Relaxed);
        now
    }

    /// Time `at` on this clock as wall time, for the shell to wait until: as much before it
    /// as the wall clock stepped back (at the last read).
    pub fn wall(&self, at: u64) -> u64 {
        at.saturating_sub(self.offset.load(Relaxed))
    }
}

/// Times a host hands over as JavaScript numbers (`Date.now()`, or a page's own `now`
/// option), in ms. A number no clock gives (not a number, negative, past `Date`'s range of
/// 8.64e15 ms) is taken as the last good one: a [`Clock`] never goes back, so one such
/// number taken as given (saturated: `Infinity` as `u64::MAX`) would hold it at the end of
/// time, every cached item expired on arrival and every wait over from then on.
#[cfg(any(feature = "wasm", feature = "edge"))]
#[derive(Debug, Default)]
pub(crate) struct HostTime(AtomicU64);

#[cfg(any(feature = "wasm", feature = "edge"))]
impl HostTime {
    /// `now` in whole ms, or the last good time when no clock gives `now` (0 before any).
    pub(crate) fn ms(&self, now: f64) -> u64 {
        if (0.0..=8.64e15).contains(&now) {
            self.0.store(now as u64, Relaxed);
        }
        self.0.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::Clock;

    #[test]
    fn a_step_back_counts_as_no_time_and_a_step_forward_as_its_size() {
        const T: u64 = 1_800_000_000_000; // a wall time in 2027
        const HOUR: u64 = 3_600_000;
        let c = Clock::default();
        assert_eq!(c.read(T), T);
        assert_eq!(c.read(T + 500), T + 500);
        // Back an hour: time stands where it was, then goes on at the wall clock's pace.
        assert_eq!(c.read(T + 500 - HOUR), T + 500);
        assert_eq!(c.read(T + 1_000 - HOUR), T + 1_000);
        assert_eq!(c.wall(T + 2_000), T + 2_000 - HOUR);
        // A smaller step back.
        assert_eq!(c.read(T - HOUR), T + 1_000);
        assert_eq!(c.wall(T + 2_000), T + 1_000 - HOUR);
        assert_eq!(c.read(T + 100 - HOUR), T + 1_100);
        // Forward a day: as far.
        let day = 24 * HOUR;
        assert_eq!(c.read(T + 100 - HOUR + day), T + 1_100 + day);
        // Times at the ends of the range saturate.
        assert_eq!(c.read(u64::MAX), u64::MAX);
        assert_eq!(c.read(0), u64::MAX);
        assert_eq!(c.wall(5), 0);
    }
}
