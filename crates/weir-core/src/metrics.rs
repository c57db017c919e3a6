//! A small metrics registry: named counters and gauges with labels, rendered in the Prometheus text
//! exposition format (version 0.0.4) and as JSON for the retained status topic.
//!
//! Handles are `Arc<AtomicU64>`: updating one on a hot path is one relaxed atomic add.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

type Key = (String, Vec<(String, String)>);

#[derive(Clone, Default, Debug)]
pub struct Metrics {
    inner: Arc<Mutex<Registry>>,
}

#[derive(Default, Debug)]
struct Registry {
    counters: BTreeMap<Key, Counter>,
    gauges: BTreeMap<Key, Gauge>,
}

/// A monotonically increasing count.
#[derive(Clone, Default, Debug)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn inc(&self) {
        self.add(1)
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Clone, Default, Debug)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed)
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

fn key(name: &str, labels: &[(&str, &str)]) -> Key {
    (
        name.to_string(),
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// The counter with this name and labels, created at zero the first time.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> Counter {
        let mut r = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        r.counters.entry(key(name, labels)).or_default().clone()
    }

    /// The gauge with this name and labels, created at zero the first time.
    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Gauge {
        let mut r = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        r.gauges.entry(key(name, labels)).or_default().clone()
    }

    /// Sum of a counter over all its label sets.
    pub fn counter_sum(&self, name: &str) -> u64 {
        let r = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        r.counters
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|(_, c)| c.get())
            .sum()
    }

    /// Prometheus text exposition format.
    pub fn render_prometheus(&self) -> String {
        let r = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        let mut last = "";
        for ((name, labels), c) in &r.counters {
            if name != last {
                let _ = writeln!(out, "# TYPE {name} counter");
            }
            last = name;
            let _ = writeln!(out, "{name}{} {}", render_labels(labels), c.get());
        }
        last = "";
        for ((name, labels), g) in &r.gauges {
            if name != last {
                let _ = writeln!(out, "# TYPE {name} gauge");
            }
            last = name;
            let _ = writeln!(out, "{name}{} {}", render_labels(labels), g.get());
        }
        out
    }

    /// Flat `name{labels} -> value` pairs, for the JSON status document.
    pub fn snapshot(&self) -> Vec<(String, i128)> {
        let r = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<(String, i128)> = r
            .counters
            .iter()
            .map(|((n, l), c)| (format!("{n}{}", render_labels(l)), c.get() as i128))
            .collect();
        v.extend(
            r.gauges
                .iter()
                .map(|((n, l), g)| (format!("{n}{}", render_labels(l)), g.get() as i128)),
        );
        v
    }
}

fn render_labels(labels: &[(String, String)]) -> String {
    let labels: Vec<_> = labels.iter().filter(|(_, v)| !v.is_empty()).collect();
    if labels.is_empty() {
        return String::new();
    }
    let mut s = String::from("{");
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let v = v
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        let _ = write!(s, "{k}=\"{v}\"");
    }
    s.push('}');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new();
        m.counter("weir_x_total", &[("source", "a\"b")]).add(3);
        m.gauge("weir_depth", &[]).set(-2);
        let t = m.render_prometheus();
        assert!(t.contains("# TYPE weir_x_total counter\n"));
        assert!(t.contains("weir_x_total{source=\"a\\\"b\"} 3\n"));
        assert!(t.contains("weir_depth -2\n"));
        assert_eq!(m.counter_sum("weir_x_total"), 3);
    }
}
