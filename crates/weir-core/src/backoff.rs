//! Jittered exponential backoff, the one formula every retry loop in Weir uses (MQTT reconnects,
//! source restarts, CoAP retries).
//!
//! Invariants, for any `base`, `max` and attempt number `n`:
//! * the ceiling is `cap(n) = min(max, base · 2^n)` (no overflow: the product saturates);
//! * a delay is drawn from `[cap(n) / 2, cap(n)]` ("equal jitter"), so it is **never above `max`**
//!   and never below half the ceiling: retries spread out without ever waiting longer than the
//!   configured maximum;
//! * `cap` never decreases as `n` grows, and [`Backoff::reset`] starts again at `n = 0`.
//!
//! The jitter comes from std's per-process random hash keys (no RNG dependency); it needs no
//! cryptographic quality, only that peers restarted together do not retry in lockstep.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// A retry counter with jittered exponential delays; see the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Delays start near `base` and double per attempt up to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            attempt: 0,
        }
    }

    /// The delay before the next retry; counts the attempt.
    pub fn next_delay(&mut self) -> Duration {
        let d = Self::delay(self.base, self.max, self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    /// Start again from `base` (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Attempts counted since the last [`reset`](Self::reset).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The ceiling for attempt `attempt`: `min(max, base · 2^attempt)`.
    pub fn ceiling(base: Duration, max: Duration, attempt: u32) -> Duration {
        // 2^31 saturates any base above 1 ns well past a century: enough.
        base.saturating_mul(1u32 << attempt.min(31)).min(max)
    }

    /// A jittered delay for attempt `attempt`, drawn from `[ceiling / 2, ceiling]`.
    pub fn delay(base: Duration, max: Duration, attempt: u32) -> Duration {
        Self::delay_at(base, max, attempt, random_unit())
    }

    /// The delay for a given jitter `unit` in `[0, 1]` (clamped): `ceiling · (1 + unit) / 2`.
    /// Deterministic; [`delay`](Self::delay) draws `unit` at random.
    pub fn delay_at(base: Duration, max: Duration, attempt: u32, unit: f64) -> Duration {
        let cap = Self::ceiling(base, max, attempt);
        let unit = if unit.is_nan() {
            0.0
        } else {
            unit.clamp(0.0, 1.0)
        };
        let half = cap / 2;
        // `mul_f64` of a value in [0, 1] never exceeds `cap - half`; `min` guards rounding.
        (half + (cap - half).mul_f64(unit)).min(cap)
    }
}

/// A uniform-ish number in `[0, 1)` from a freshly keyed std hasher.
fn random_unit() -> f64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x5745_4952);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn doubles_from_base_up_to_max() {
        let (b, m) = (Duration::from_millis(100), Duration::from_secs(5));
        assert_eq!(Backoff::ceiling(b, m, 0), b);
        assert_eq!(Backoff::ceiling(b, m, 3), Duration::from_millis(800));
        assert_eq!(Backoff::ceiling(b, m, 6), m);
        assert_eq!(Backoff::ceiling(b, m, u32::MAX), m);
        assert_eq!(Backoff::delay_at(b, m, 3, 0.0), Duration::from_millis(400));
        assert_eq!(Backoff::delay_at(b, m, 3, 1.0), Duration::from_millis(800));
        assert_eq!(Backoff::delay_at(b, m, 40, 1.0), m);
    }

    #[test]
    fn counts_attempts_and_resets() {
        let mut bo = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
        for want in 0..5u32 {
            assert_eq!(bo.attempt(), want);
            let d = bo.next_delay();
            let cap = Duration::from_millis(10) * (1 << want);
            assert!(d >= cap / 2 && d <= cap, "{want}: {d:?}");
        }
        bo.reset();
        assert_eq!(bo.attempt(), 0);
        assert!(bo.next_delay() <= Duration::from_millis(10));
    }

    #[test]
    fn jitter_spreads_delays() {
        let (b, m) = (Duration::from_secs(1), Duration::from_secs(1));
        let distinct: std::collections::HashSet<Duration> =
            (0..50).map(|_| Backoff::delay(b, m, 0)).collect();
        assert!(distinct.len() > 10, "{distinct:?}");
    }

    #[test]
    fn zero_and_inverted_bounds_stay_within_max() {
        assert_eq!(
            Backoff::delay(Duration::ZERO, Duration::ZERO, 7),
            Duration::ZERO
        );
        // max below base: max wins.
        let d = Backoff::delay(Duration::from_secs(10), Duration::from_millis(3), 0);
        assert!(d <= Duration::from_millis(3));
    }

    proptest! {
        #[test]
        fn delay_never_exceeds_max_nor_falls_below_half_the_ceiling(
            base_ns in 0u64..=u64::MAX / 4,
            max_ns in 0u64..=u64::MAX / 4,
            attempt in 0u32..=u32::MAX,
            unit in proptest::num::f64::ANY,
        ) {
            let (base, max) = (Duration::from_nanos(base_ns), Duration::from_nanos(max_ns));
            let cap = Backoff::ceiling(base, max, attempt);
            prop_assert!(cap <= max);
            let d = Backoff::delay_at(base, max, attempt, unit);
            prop_assert!(d <= max && d <= cap, "{d:?} > {max:?}");
            prop_assert!(d >= cap / 2);
            let r = Backoff::delay(base, max, attempt);
            prop_assert!(r <= max && r >= cap / 2);
            prop_assert!(Backoff::ceiling(base, max, attempt.saturating_add(1)) >= cap);
        }
    }
}
