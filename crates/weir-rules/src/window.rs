//! Windowed aggregates for scripts: mean, min, max, std, count, sum and rate of change over the last
//! N seconds (a time window) or the last N values (a count window).
//!
//! Invariants: a window holds at most [`MAX_SAMPLES`] values (older ones are evicted first, so a
//! time window over a very fast point degrades to "the last MAX_SAMPLES values" instead of growing);
//! time is the reading's timestamp, so a replay of recorded readings aggregates exactly as the live
//! run did. `complete()` is true once the window has covered its whole span since it was created or
//! last `reset()` — the tumbling-window test for "upload one summary per window".

use std::collections::VecDeque;

/// Most values a window keeps.
pub const MAX_SAMPLES: usize = 10_000;

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
}

impl Window {
    pub fn new(span: Span) -> Window {
        Window {
            span,
            samples: VecDeque::new(),
            started: None,
            pushed: 0,
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
    }

    pub fn count(&self) -> usize {
        self.samples.len()
    }

    pub fn sum(&self) -> f64 {
        self.samples.iter().map(|(_, x)| x).sum()
    }

    /// `None` when empty.
    pub fn mean(&self) -> Option<f64> {
        (!self.samples.is_empty()).then(|| self.sum() / self.samples.len() as f64)
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

    /// Population standard deviation; `None` when empty.
    pub fn std(&self) -> Option<f64> {
        let m = self.mean()?;
        let n = self.samples.len() as f64;
        let var = self
            .samples
            .iter()
            .map(|(_, x)| (x - m) * (x - m))
            .sum::<f64>()
            / n;
        Some(var.sqrt())
    }

    /// Change per second between the oldest and the newest value; `None` with fewer than two
    /// values or no time between them.
    pub fn rate(&self) -> Option<f64> {
        let (t0, x0) = *self.samples.front()?;
        let (t1, x1) = *self.samples.back()?;
        let dt = (t1 - t0) as f64 / 1e9;
        (dt > 0.0).then(|| (x1 - x0) / dt)
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
        assert!((w.std().unwrap() - (2.0f64 / 3.0).sqrt()).abs() < 1e-12);
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
