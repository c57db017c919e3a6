//! Windowed aggregates for scripts: mean, min, max, std, count, sum and rate of change over the last
//! N seconds (a time window) or the last N values (a count window).
//!
//! Invariants: a window holds at most [`MAX_SAMPLES`] values (older ones are evicted first, so a
//! time window over a very fast point degrades to "the last MAX_SAMPLES values" instead of growing);
//! time is the reading's timestamp, so a replay of recorded readings aggregates exactly as the live
//! run did. `complete()` is true once the window has covered its whole span since it was created or
//! last `reset()` — the tumbling-window test for "upload one summary per window".
//!
//! Rounding: binary floating point makes a plain mean of `24.8, 25.0, 24.9` print as
//! `24.899999999999995`. Derived values are therefore rounded to what the inputs can tell:
//! * the window knows the inputs' precision `d`: the most decimal places any value pushed since
//!   creation or the last `reset()` needs (the fewest places that give back the same `f64`, at
//!   most [`MAX_DECIMALS`]; a value that needs more, such as `0.1 + 0.2`, makes it unknown);
//! * `min`, `max`, `last` are inputs and are returned as pushed;
//! * `sum` is rounded to `d` decimals (a sum of decimals has no more places than its terms, so
//!   this only removes the binary error);
//! * `mean` and `std` are rounded to `d + 2` decimals (two more than the most precise input);
//! * `rate` is the change rounded to `d` decimals over the time between the values, rounded to
//!   [`RATE_SIGNIFICANT`] significant digits;
//! * when `d` is unknown, `sum`, `mean` and `std` are rounded to [`SIGNIFICANT`] significant
//!   digits — still far below what a sensor measures, far above the binary noise (~16 digits).
//!
//! So `24.8, 25.0, 24.9` → mean `24.9`; `1, 2, 2` → mean `1.67`.

use std::collections::VecDeque;

/// Most values a window keeps.
pub const MAX_SAMPLES: usize = 10_000;
/// Most decimal places an input's precision is tracked to; beyond it the precision is unknown.
pub const MAX_DECIMALS: u32 = 12;
/// Significant digits of `sum`, `mean` and `std` when the inputs' precision is unknown.
pub const SIGNIFICANT: u32 = 12;
/// Significant digits of `rate`.
pub const RATE_SIGNIFICANT: u32 = 6;

/// How long a window reaches back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    /// The last `n` nanoseconds (by reading time).
    Time(i64),
    /// The last `n` values.
    Count(usize),
}

#[derive(Debug, Clone)]
pub struct Window {
    span: Span,
    samples: VecDeque<(i64, f64)>,
    /// Time of the first value since creation / reset (time windows) …
    started: Option<i64>,
    /// … and values pushed since then (count windows).
    pushed: u64,
    /// Decimal places of the most precise value pushed since then; `None` once one needed more
    /// than [`MAX_DECIMALS`].
    decimals: Option<u32>,
}

impl Window {
    pub fn new(span: Span) -> Window {
        Window {
            span,
            samples: VecDeque::new(),
            started: None,
            pushed: 0,
            decimals: Some(0),
        }
    }

    pub fn span(&self) -> Span {
        self.span
    }

    /// Add a value observed at `ts` (ns) and evict what fell out of the span.
    pub fn push(&mut self, ts: i64, x: f64) {
        self.samples.push_back((ts, x));
        self.started.get_or_insert(ts);
        self.pushed += 1;
        if let Some(d) = self.decimals {
            if round_decimals(x, d) != x {
                self.decimals = decimals_of(x, d + 1);
            }
        }
        match self.span {
            Span::Time(ns) => {
                let cutoff = ts.saturating_sub(ns);
                while self.samples.front().is_some_and(|(t, _)| *t < cutoff) {
                    self.samples.pop_front();
                }
            }
            Span::Count(n) => {
                while self.samples.len() > n {
                    self.samples.pop_front();
                }
            }
        }
        while self.samples.len() > MAX_SAMPLES {
            self.samples.pop_front();
        }
    }

    /// Forget every value and restart the span.
    pub fn reset(&mut self) {
        self.samples.clear();
        self.started = None;
        self.pushed = 0;
        self.decimals = Some(0);
    }

    /// Decimal places of the most precise value pushed since creation or the last reset (`None`:
    /// more than [`MAX_DECIMALS`]).
    pub fn decimals(&self) -> Option<u32> {
        self.decimals
    }

    /// A derived value rounded to `extra` more decimals than the inputs, or to [`SIGNIFICANT`]
    /// digits when their precision is unknown.
    fn derived(&self, x: f64, extra: u32) -> f64 {
        match self.decimals {
            Some(d) => round_decimals(x, d + extra),
            None => round_significant(x, SIGNIFICANT),
        }
    }

    pub fn count(&self) -> usize {
        self.samples.len()
    }

    /// Rounded to the inputs' decimals (see the module docs).
    pub fn sum(&self) -> f64 {
        self.derived(self.raw_sum(), 0)
    }

    fn raw_sum(&self) -> f64 {
        self.samples.iter().map(|(_, x)| x).sum()
    }

    fn raw_mean(&self) -> Option<f64> {
        (!self.samples.is_empty()).then(|| self.raw_sum() / self.samples.len() as f64)
    }

    /// Rounded to two more decimals than the inputs; `None` when empty.
    pub fn mean(&self) -> Option<f64> {
        Some(self.derived(self.raw_mean()?, 2))
    }

    pub fn min(&self) -> Option<f64> {
        self.samples.iter().map(|(_, x)| *x).reduce(f64::min)
    }

    pub fn max(&self) -> Option<f64> {
        self.samples.iter().map(|(_, x)| *x).reduce(f64::max)
    }

    pub fn last(&self) -> Option<f64> {
        self.samples.back().map(|(_, x)| *x)
    }

    /// Population standard deviation, rounded to two more decimals than the inputs; `None` when
    /// empty.
    pub fn std(&self) -> Option<f64> {
        let m = self.raw_mean()?;
        let n = self.samples.len() as f64;
        let var = self
            .samples
            .iter()
            .map(|(_, x)| (x - m) * (x - m))
            .sum::<f64>()
            / n;
        Some(self.derived(var.sqrt(), 2))
    }

    /// Change per second between the oldest and the newest value, to [`RATE_SIGNIFICANT`]
    /// significant digits; `None` with fewer than two values or no time between them.
    pub fn rate(&self) -> Option<f64> {
        let (t0, x0) = *self.samples.front()?;
        let (t1, x1) = *self.samples.back()?;
        let dt = (t1 - t0) as f64 / 1e9;
        (dt > 0.0).then(|| round_significant(self.derived(x1 - x0, 0) / dt, RATE_SIGNIFICANT))
    }

    /// Whether the window has covered its whole span since creation or the last reset, as of the
    /// newest value: `span` of reading time for a time window, `n` values for a count window.
    pub fn complete(&self) -> bool {
        match self.span {
            Span::Time(ns) => match (self.started, self.samples.back()) {
                (Some(s), Some((t, _))) => t.saturating_sub(s) >= ns,
                _ => false,
            },
            Span::Count(n) => self.pushed >= n as u64,
        }
    }
}

/// The fewest decimal places, from `from` to [`MAX_DECIMALS`], at which `x` rounds to itself.
fn decimals_of(x: f64, from: u32) -> Option<u32> {
    if !x.is_finite() {
        return None;
    }
    (from..=MAX_DECIMALS).find(|k| round_decimals(x, *k) == x)
}

/// `x` rounded to `k` decimal places (half away from zero), as the `f64` nearest that decimal, so
/// it prints as the short decimal. Returned unchanged when the scaled value is beyond exact
/// integers (it has no binary error left to remove at that scale).
pub fn round_decimals(x: f64, k: u32) -> f64 {
    if k > 22 {
        return x; // 10^k is no longer exact
    }
    let p = 10f64.powi(k as i32);
    let y = x * p;
    if !y.is_finite() || y.abs() >= (1u64 << 52) as f64 {
        return x;
    }
    y.round() / p
}

/// `x` rounded to `sig` significant digits.
pub fn round_significant(x: f64, sig: u32) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let k = sig as i32 - 1 - x.abs().log10().floor() as i32;
    if k >= 0 {
        round_decimals(x, k as u32)
    } else {
        let p = 10f64.powi(-k);
        (x / p).round() * p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn time_window_evicts_by_reading_time_and_aggregates() {
        let mut w = Window::new(Span::Time(10 * S));
        assert_eq!(w.mean(), None);
        for (i, x) in [1.0, 2.0, 3.0, 4.0].iter().enumerate() {
            w.push(i as i64 * 5 * S, *x);
        }
        // at t=15 s the window reaches back to 5 s: values 2, 3, 4
        assert_eq!(w.count(), 3);
        assert_eq!(w.mean(), Some(3.0));
        assert_eq!(w.min(), Some(2.0));
        assert_eq!(w.max(), Some(4.0));
        assert_eq!(w.sum(), 9.0);
        assert_eq!(
            w.std(),
            Some(0.82),
            "sqrt(2/3) to two more decimals than the integers"
        );
        assert_eq!(w.rate(), Some(0.2)); // 2 per 10 s
        assert!(w.complete(), "15 s of a 10 s span covered");
        w.reset();
        assert_eq!(w.count(), 0);
        assert!(!w.complete());
        w.push(100 * S, 1.0);
        assert_eq!(w.rate(), None);
    }

    #[test]
    fn count_window_keeps_the_last_n_and_completes_after_n() {
        let mut w = Window::new(Span::Count(3));
        for i in 0..2 {
            w.push(i, i as f64);
        }
        assert!(!w.complete());
        for i in 2..5 {
            w.push(i, i as f64);
        }
        assert!(w.complete());
        assert_eq!(w.count(), 3);
        assert_eq!(w.mean(), Some(3.0));
        assert_eq!(w.last(), Some(4.0));
    }

    #[test]
    fn window_is_bounded() {
        let mut w = Window::new(Span::Time(i64::MAX));
        for i in 0..(MAX_SAMPLES as i64 + 5) {
            w.push(i, 1.0);
        }
        assert_eq!(w.count(), MAX_SAMPLES);
    }
}

#[cfg(test)]
mod rounding {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn filled(xs: &[f64]) -> Window {
        let mut w = Window::new(Span::Count(100));
        for (i, x) in xs.iter().enumerate() {
            w.push(i as i64 * S, *x);
        }
        w
    }

    /// The example: a plain mean prints `24.899999999999995`.
    #[test]
    fn means_print_as_short_decimals() {
        let xs = [24.8, 25.0, 24.9];
        let plain = xs.iter().sum::<f64>() / 3.0;
        assert_eq!(
            plain.to_string(),
            "24.899999999999995",
            "the float noise this removes"
        );
        let w = filled(&xs);
        assert_eq!(w.decimals(), Some(1));
        assert_eq!(w.mean().unwrap().to_string(), "24.9");
        assert_eq!(w.sum().to_string(), "74.7");
        assert_eq!(w.std().unwrap().to_string(), "0.082");
        assert_eq!(filled(&[1.0, 2.0, 2.0]).mean(), Some(1.67));
        assert_eq!(filled(&[21.55, 21.6]).mean().unwrap().to_string(), "21.575");
        // 0.1 + 0.2 per step: the change is 0.3 per second, not 0.30000000000000004.
        let w = filled(&[0.1, 0.4, 0.7]);
        assert_eq!(w.rate().unwrap().to_string(), "0.3");
        assert_eq!(w.sum().to_string(), "1.2");
    }

    #[test]
    fn precision_follows_the_inputs_and_resets() {
        let mut w = filled(&[20.0, 21.0]);
        assert_eq!(w.decimals(), Some(0));
        w.push(10 * S, 20.25);
        assert_eq!(w.decimals(), Some(2));
        assert_eq!(w.mean().unwrap().to_string(), "20.4167");
        w.reset();
        assert_eq!(w.decimals(), Some(0));
        // More places than tracked: unknown precision, twelve significant digits.
        let w = filled(&[0.1 + 0.2, 1.0 / 3.0]);
        assert_eq!(w.decimals(), None);
        assert_eq!(w.mean().unwrap().to_string(), "0.316666666667");
        // Large values keep every digit they have.
        let w = filled(&[123_456_789.5, 123_456_790.5]);
        assert_eq!(w.mean(), Some(123_456_790.0));
        assert_eq!(w.sum(), 246_913_580.0);
    }

    #[test]
    fn rounding_helpers() {
        assert_eq!(round_decimals(2.6749, 2), 2.67);
        assert_eq!(round_decimals(-1.25, 1), -1.3);
        assert_eq!(round_decimals(1e300, 5), 1e300);
        assert_eq!(round_significant(0.000123456789, 3), 0.000123);
        assert_eq!(round_significant(987_654_321.0, 3), 988_000_000.0);
        assert_eq!(round_significant(0.0, 3), 0.0);
        assert_eq!(decimals_of(0.1, 0), Some(1));
        assert_eq!(decimals_of(1.005, 0), Some(3));
        assert_eq!(decimals_of(0.1 + 0.2, 0), None);
        assert_eq!(decimals_of(f64::NAN, 0), None);
    }
}
