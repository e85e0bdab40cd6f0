//! The group-commit pacer: how long the committer waits, after the previous group's sync
//! began, before it syncs the next group.
//!
//! Owns: one number, the current gap, and the rule that moves it. Syncs of small groups
//! (fewer than [`SMALL_GROUP_TRANSACTIONS`]) that take longer than [`SLOW_SYNC`], several
//! ([`SLOW_SYNCS_TO_WIDEN`]) within [`SLOW_SYNC_WINDOW`], are the device (or, on a virtual
//! machine, the host) saying it is saturated by many small requests: the gap widens by
//! [`GAP_STEP`] (at most to the configured maximum), so that more commits share each sync
//! and the device gets fewer requests. Large groups already share their syncs (pacing them
//! only delays them), and a lone stall says nothing about the load. While
//! syncs are fast the gap halves every [`GAP_HALF_LIFE`] of wall time, back towards zero,
//! where a group is synced as soon as it is ready (a lone client never waits on a device
//! that keeps up).
//!
//! Measured on this project's 2-core VM (`tessera up`, one transfer per HTTP request at
//! 2,500/s): about 3,600 syncs/s made one sync in a thousand stall 8–10 ms, always ending on
//! the same 100 ms boundary (the host throttling the VM). With this rule, at 3,600/s, the
//! gap held syncs to a quarter or less (about 700/s) and the slow ones went from 7–9 ms at
//! the 99.9th percentile to about 2.3 ms. See BENCHMARKS.md (bench http, round 9).
//!
//! Must never: make a commit wait longer than the configured maximum (at most
//! [`GAP_MAX_LIMIT`]) for pacing; hold any lock; wait when pacing is off (maximum zero).

use std::time::{Duration, Instant};

/// A sync slower than this counts as slow.
pub const SLOW_SYNC: Duration = Duration::from_millis(2);
/// Groups of fewer transactions count as small.
pub const SMALL_GROUP_TRANSACTIONS: usize = 16;
/// Slow syncs of small groups within [`SLOW_SYNC_WINDOW`] that widen the gap.
pub const SLOW_SYNCS_TO_WIDEN: usize = 3;
/// The window in which slow syncs are counted.
pub const SLOW_SYNC_WINDOW: Duration = Duration::from_secs(1);
/// What each widening adds to the gap.
pub const GAP_STEP: Duration = Duration::from_micros(250);
/// A decaying gap below this is zero.
pub const GAP_FLOOR: Duration = Duration::from_micros(50);
/// While syncs are fast, the gap halves in this much time.
pub const GAP_HALF_LIFE: Duration = Duration::from_secs(2);
/// Largest gap a store accepts as its maximum (bounds the latency pacing may add).
pub const GAP_MAX_LIMIT: Duration = Duration::from_millis(10);

/// The pacer of one committer (owned by its thread).
#[derive(Debug)]
pub(crate) struct Pacer {
    max: Duration,
    gap: Duration,
    /// When the last sync began.
    last_start: Option<Instant>,
    /// When the gap was last decayed.
    decayed_at: Option<Instant>,
    /// Starts of the latest slow syncs of small groups, oldest first.
    slow: std::collections::VecDeque<Instant>,
}

impl Pacer {
    /// A pacer whose gap never exceeds `max` (zero: never waits).
    pub(crate) fn new(max: Duration) -> Pacer {
        assert!(max <= GAP_MAX_LIMIT, "pacing gap over its limit");
        Pacer {
            max,
            gap: Duration::ZERO,
            last_start: None,
            decayed_at: None,
            slow: std::collections::VecDeque::with_capacity(SLOW_SYNCS_TO_WIDEN),
        }
    }

    /// The current gap.
    #[cfg(test)]
    pub(crate) fn gap(&self) -> Duration {
        self.gap
    }

    /// How long to wait at `now` before the next sync may begin (zero: sync now).
    pub(crate) fn wait(&mut self, now: Instant) -> Duration {
        self.decay(now);
        match self.last_start {
            Some(start) => (start + self.gap).saturating_duration_since(now),
            None => Duration::ZERO,
        }
    }

    /// Records a sync of `transactions` that began at `start` and took `took`.
    pub(crate) fn synced(&mut self, start: Instant, took: Duration, transactions: usize) {
        self.last_start = Some(start);
        if self.max.is_zero() || took <= SLOW_SYNC {
            return;
        }
        metrics::counter!("tessera_store_slow_syncs_total").increment(1);
        if transactions >= SMALL_GROUP_TRANSACTIONS {
            return;
        }
        while self
            .slow
            .front()
            .is_some_and(|at| start.saturating_duration_since(*at) > SLOW_SYNC_WINDOW)
        {
            self.slow.pop_front();
        }
        if self.slow.len() == SLOW_SYNCS_TO_WIDEN {
            self.slow.pop_front();
        }
        self.slow.push_back(start);
        if self.slow.len() < SLOW_SYNCS_TO_WIDEN {
            return;
        }
        let wider = (self.gap + GAP_STEP).min(self.max);
        if wider > self.gap {
            tracing::debug!(
                took_us = took.as_micros() as u64,
                gap_us = wider.as_micros() as u64,
                "slow sync: widening the group-commit gap"
            );
        }
        self.gap = wider;
        self.decayed_at = Some(start + took);
        metrics::gauge!("tessera_store_sync_gap_seconds").set(self.gap.as_secs_f64());
    }

    /// Halves the gap per [`GAP_HALF_LIFE`] since the last decay; below [`GAP_FLOOR`] it is
    /// zero.
    fn decay(&mut self, now: Instant) {
        if self.gap.is_zero() {
            return;
        }
        let Some(at) = self.decayed_at else {
            self.decayed_at = Some(now);
            return;
        };
        let elapsed = now.saturating_duration_since(at);
        if elapsed.is_zero() {
            return;
        }
        let factor = (-(elapsed.as_secs_f64() / GAP_HALF_LIFE.as_secs_f64())).exp2();
        let gap = self.gap.mul_f64(factor);
        self.gap = if gap < GAP_FLOOR { Duration::ZERO } else { gap };
        self.decayed_at = Some(now);
        metrics::gauge!("tessera_store_sync_gap_seconds").set(self.gap.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: Duration = Duration::from_micros(150);
    const SLOW: Duration = Duration::from_millis(9);

    #[test]
    fn fast_syncs_never_wait() {
        let mut pacer = Pacer::new(Duration::from_millis(2));
        let mut now = Instant::now();
        for _ in 0..1_000 {
            assert_eq!(pacer.wait(now), Duration::ZERO);
            pacer.synced(now, FAST, 1);
            now += FAST;
        }
        assert_eq!(pacer.gap(), Duration::ZERO);
    }

    #[test]
    fn slow_syncs_widen_the_gap_up_to_the_maximum() {
        let max = Duration::from_millis(2);
        let mut pacer = Pacer::new(max);
        let mut now = Instant::now();
        let mut gaps = Vec::new();
        for _ in 0..12 {
            now += pacer.wait(now);
            pacer.synced(now, SLOW, 1);
            now += SLOW;
            gaps.push(pacer.gap());
        }
        // Two slow syncs are not yet a pattern; the third widens the gap, and each after.
        assert_eq!(gaps[..2], [Duration::ZERO, Duration::ZERO]);
        assert_eq!(gaps[2], GAP_STEP);
        assert!(gaps[3] > GAP_STEP && gaps[3] <= GAP_STEP * 2, "{gaps:?}");
        assert!(gaps.windows(2).all(|w| w[0] <= w[1]), "{gaps:?}");
        assert_eq!(*gaps.last().unwrap(), max);
        // The next sync waits out the gap from the last sync's start.
        let start = now;
        pacer.synced(start, FAST, 1);
        let later = start + Duration::from_micros(300);
        let wait = pacer.wait(later);
        assert!(wait > Duration::ZERO && wait <= max - Duration::from_micros(300));
    }

    #[test]
    fn a_widened_gap_holds_for_a_while() {
        let mut pacer = Pacer::new(Duration::from_millis(2));
        let start = Instant::now();
        for _ in 0..SLOW_SYNCS_TO_WIDEN {
            pacer.synced(start, SLOW, 1);
        }
        let next = start + SLOW;
        assert_eq!(
            pacer.wait(next),
            Duration::ZERO,
            "the slow sync outlasted the gap"
        );
        pacer.synced(next, FAST, 1);
        let soon = next + FAST;
        let wait = pacer.wait(soon);
        assert!(wait > Duration::from_micros(50), "{wait:?}");
        assert!(pacer.gap() > GAP_STEP.mul_f64(0.99), "{:?}", pacer.gap());
    }

    #[test]
    fn lone_stalls_and_large_groups_do_not_widen_the_gap() {
        let mut pacer = Pacer::new(Duration::from_millis(2));
        let mut now = Instant::now();
        // A slow sync of a small group now and then (further apart than the window).
        for _ in 0..10 {
            pacer.synced(now, SLOW, 1);
            now += SLOW_SYNC_WINDOW / 2 + Duration::from_millis(1);
            assert_eq!(pacer.gap(), Duration::ZERO);
            assert_eq!(pacer.wait(now), Duration::ZERO);
        }
        // Slow syncs of large groups, back to back.
        for _ in 0..100 {
            pacer.synced(now, SLOW, SMALL_GROUP_TRANSACTIONS);
            now += SLOW;
        }
        assert_eq!(pacer.gap(), Duration::ZERO);
        assert_eq!(pacer.wait(now), Duration::ZERO);
    }

    #[test]
    fn the_gap_decays_while_syncs_are_fast() {
        let mut pacer = Pacer::new(Duration::from_millis(2));
        let start = Instant::now();
        for _ in 0..16 {
            pacer.synced(start, SLOW, 1);
        }
        let widened = pacer.gap();
        assert_eq!(widened, Duration::from_millis(2));
        let at = start + SLOW + GAP_HALF_LIFE;
        pacer.wait(at);
        let halved = pacer.gap();
        assert!(
            halved > widened.mul_f64(0.49) && halved < widened.mul_f64(0.51),
            "{halved:?}"
        );
        pacer.wait(at + GAP_HALF_LIFE * 10);
        assert_eq!(pacer.gap(), Duration::ZERO);
        assert_eq!(pacer.wait(at + GAP_HALF_LIFE * 10), Duration::ZERO);
    }

    #[test]
    fn a_zero_maximum_turns_pacing_off() {
        let mut pacer = Pacer::new(Duration::ZERO);
        let now = Instant::now();
        for _ in 0..10 {
            pacer.synced(now, SLOW, 1);
        }
        assert_eq!(pacer.gap(), Duration::ZERO);
        assert_eq!(pacer.wait(now), Duration::ZERO);
    }

    #[test]
    #[should_panic(expected = "pacing gap over its limit")]
    fn a_maximum_over_the_limit_is_a_bug() {
        Pacer::new(GAP_MAX_LIMIT + Duration::from_micros(1));
    }
}
