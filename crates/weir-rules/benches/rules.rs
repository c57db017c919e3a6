//! Rule engine cost, printed as figures (asserts nothing about speed).
//!
//! `cargo bench -p weir-rules --bench rules`
//!
//! Per-reading figures are wall-clock time over [`SAMPLES`] samples of 10,000 readings each,
//! printed as the best sample and the median. Anything else running (in this machine or, on a
//! virtual machine, on its host) only adds time, and a host may also lower the clock: on the
//! 2-core development VM every figure moved together by about 1.7× from one minute to the next
//! (ten-line rule 3.2 ↔ 5.9 µs, one-line rule 0.54 ↔ 0.91 µs) with nothing else running in the
//! guest, so compare figures from one run. Short samples and the best of many keep preemption out
//! of the best figure; the median shows how much there was. (Thread CPU time from schedstat does
//! not help: the guest counts stolen time as its own, and it ticks in 4 ms steps.) Instruction
//! counts do not move with the host: `RULE_SCRIPT=my.rhai RULE_ONCE=1 valgrind --tool=callgrind
//! target/release/deps/rules-…` runs one pass of 20,000 readings.
//!
//! `RULE_SCRIPT=path/to/rule.rhai cargo bench -p weir-rules --bench rules` measures your own rule
//! (matching every reading) instead. `benches/state/` holds the ten-line rule as a file and with
//! 1,000 extra keys in `state`, assigned with `state.n = …` and with `state["n"] = …`: rhai walks
//! the whole `state` map after a property assignment (its data-size limits), not after an index
//! assignment (callgrind, instructions per reading: 25,200 / 90,500 / 34,900).
//!
//! 1. A ten-line rule (unit conversion, hysteresis + report-on-change command, alert edge,
//!    deadband, state, `latest`, conditional emit), per reading, through `RulesStage::process`
//!    on batches of 1,000 readings — the whole stage cost, matching and last-value cache included.
//! 2. A windowed aggregate (60 s window per point, summary emitted on completion), per reading.
//! 3. Pipeline throughput — rules stage → MQTT encoding → durable SQLite outbox commit
//!    (synchronous=FULL, one transaction per 1,000-reading batch) — with 10 rules against none,
//!    as a ratio; once with each reading matching one of the 10 rules, once with all 10 matching.

use std::hint::black_box;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weir_config::{Diagnostics, PathIndex, PublishMode};
use weir_core::{
    CommandRouter, Metrics, Passthrough, Quality, Reading, Timestamp, Transform, Value,
};
use weir_mqtt::{Encoder, OutboxWriter};
use weir_rules::{RuleSet, RulesStage};
use weir_store::{Limits, Outbox};

const TEN_LINES: &str = r#"
let t = r.value;
if r.unit == "°F" { t = (t - 32.0) * 5.0 / 9.0; r.value = t; r.unit = "°C"; }
let open = hysteresis("vent", t, 24.0, 26.0);
if changed("vent", open) { command("gh1/actuators", "vent", open); }
if t > 35.0 { alert("hot", "warning", "too hot"); } else if t < 33.0 { clear("hot"); }
if !deadband("t", t, 0.01) { drop(); }
state.n = if state.n == () { 1 } else { state.n + 1 };
let h = latest("gh1/climate", "humidity");
if h != () && h > 99.0 { emit("condensation_risk", true); }
state.last = t;
"#;

const WINDOW: &str = r#"
let w = window(r.device + "/" + r.point, "60s");
w.push(r.value);
if w.complete {
    emit(r.point + "/mean", w.mean, r.unit);
    emit(r.point + "/max", w.max, r.unit);
    w.reset();
}
"#;

fn rule_set(rules: &[(String, String, &str)]) -> RuleSet {
    let mut yaml = String::from("rules:\n");
    for (name, point, script) in rules {
        yaml.push_str(&format!(
            "  - name: {name}\n    match: {{ point: \"{point}\" }}\n    script: |\n"
        ));
        for l in script.lines() {
            yaml.push_str(&format!("      {l}\n"));
        }
    }
    let root: serde_yaml::Value = serde_yaml::from_str(&yaml).expect("yaml");
    let mut d = Diagnostics::new(Path::new("bench.yaml"), PathIndex::build(&yaml));
    let set = weir_rules::parse_section(root["rules"].clone(), "rules", Path::new("."), &mut d);
    if let Err(e) = d.finish() {
        panic!("{e}");
    }
    set.expect("rules")
}

/// `n` readings of `points` points round-robin, one per second of reading time per point.
fn readings(n: usize, points: usize, start: usize) -> Vec<Reading> {
    let device: weir_core::DeviceId = "gh1/climate".into();
    let source: Arc<str> = Arc::from("sim");
    let unit: Arc<str> = Arc::from("°C");
    let names: Vec<weir_core::PointId> = (0..points).map(|p| format!("p{p}").into()).collect();
    (start..start + n)
        .map(|i| Reading {
            device: device.clone(),
            point: names[i % points].clone(),
            value: Value::F64(20.0 + (i % 97) as f64 * 0.1),
            unit: Some(unit.clone()),
            ts: Timestamp(1_750_000_000_000_000_000 + (i / points) as i64 * 1_000_000_000),
            quality: Quality::Good,
            source: source.clone(),
        })
        .collect()
}

/// Wall-clock ns per reading of `stage.process` over `total` readings in batches of 1,000.
fn per_reading(stage: &mut dyn Transform, points: usize, total: usize) -> f64 {
    let batches: Vec<Vec<Reading>> = (0..total / 1000)
        .map(|b| readings(1000, points, b * 1000))
        .collect();
    let started = Instant::now();
    for mut b in batches {
        stage.process(&mut b);
        black_box(&b);
    }
    started.elapsed().as_nanos() as f64 / total as f64
}

/// Samples per figure; each is 10,000 readings (ten batches of 1,000).
const SAMPLES: usize = 30;

/// Best and median ns per reading (see the module docs).
#[derive(Clone, Copy)]
struct Cost {
    best: f64,
    median: f64,
}

impl std::fmt::Display for Cost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:6.0} ns/reading best, {:6.0} median",
            self.best, self.median
        )
    }
}

fn cost_of(stage: &mut dyn Transform) -> Cost {
    per_reading(stage, 10, 20_000); // warm-up: windows fill, caches resolve
    let mut samples: Vec<f64> = (0..SAMPLES)
        .map(|_| per_reading(stage, 10, 10_000))
        .collect();
    samples.sort_by(f64::total_cmp);
    Cost {
        best: samples[0],
        median: samples[SAMPLES / 2],
    }
}

fn ns_per_reading(name: &str, script: &str) -> Cost {
    let set = rule_set(&[(name.to_string(), "*".to_string(), script)]);
    let mut stage = RulesStage::new(set, CommandRouter::new(), &Metrics::new());
    cost_of(&mut stage)
}

/// Readings/s through stage → encoder → durable outbox.
fn pipeline_rate(stage: &mut dyn Transform, points: usize, total: usize) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let outbox = Outbox::open(
        &dir.path().join("outbox.db"),
        Limits {
            max_bytes: 1 << 34,
            max_age: Duration::from_secs(86_400),
            synchronous_full: true,
            min_free_bytes: 0,
        },
    )
    .expect("outbox");
    let encoder = Encoder::new(
        "weir/bench",
        "{prefix}/{device}/{point}",
        "{prefix}/{device}",
        PublishMode::PerReading,
        1,
    );
    let writer = OutboxWriter::new(
        Arc::new(Mutex::new(outbox)),
        encoder,
        Arc::new(tokio::sync::Notify::new()),
    );
    let batches: Vec<Vec<Reading>> = (0..total / 1000)
        .map(|b| readings(1000, points, b * 1000))
        .collect();
    let started = Instant::now();
    let mut committed = 0usize;
    for mut b in batches {
        stage.process(&mut b);
        writer.commit(&b).expect("commit");
        committed += b.len();
    }
    black_box(committed);
    total as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    println!("weir-rules benchmark (release build; best and median of {SAMPLES} samples)");
    if let Ok(path) = std::env::var("RULE_SCRIPT") {
        let text = std::fs::read_to_string(&path).expect("script");
        if std::env::var_os("RULE_ONCE").is_some() {
            let set = rule_set(&[("custom".to_string(), "*".to_string(), &text)]);
            let mut stage = RulesStage::new(set, CommandRouter::new(), &Metrics::new());
            let ns = per_reading(&mut stage, 10, 20_000);
            println!("{path}: {ns:8.0} ns/reading (one pass of 20,000)");
            return;
        }
        println!("{path}: {}", ns_per_reading("custom", &text));
        return;
    }
    let mut empty = RulesStage::new(RuleSet::default(), CommandRouter::new(), &Metrics::new());
    let none = cost_of(&mut empty);
    println!("no rules (empty stage):  {none}");
    let one = ns_per_reading("one_line", "r.value = r.value + 1.0;");
    println!("one-line rule:           {one}");
    let ten = ns_per_reading("ten_lines", TEN_LINES);
    println!(
        "ten-line rule:           {ten}  (budget 5,000; {:.1} × the one-line rule)",
        ten.best / one.best
    );
    let win = ns_per_reading("window", WINDOW);
    println!("windowed aggregate:      {win}  (60 s window per point, 10 points)");

    // Pipeline: 10 rules; readings of 10 points, so each point matches exactly one rule …
    let total = 200_000;
    let mut pass = Passthrough("rules");
    pipeline_rate(&mut pass, 10, 20_000);
    let base = pipeline_rate(&mut pass, 10, total);
    let one_each: Vec<(String, String, &str)> = (0..10)
        .map(|i| (format!("r{i}"), format!("p{i}"), TEN_LINES))
        .collect();
    let mut stage = RulesStage::new(rule_set(&one_each), CommandRouter::new(), &Metrics::new());
    let with = pipeline_rate(&mut stage, 10, total);
    // … and 10 rules that all match every reading.
    let all: Vec<(String, String, &str)> = (0..10)
        .map(|i| (format!("r{i}"), "*".to_string(), TEN_LINES))
        .collect();
    let mut stage = RulesStage::new(rule_set(&all), CommandRouter::new(), &Metrics::new());
    let with_all = pipeline_rate(&mut stage, 10, total);
    println!(
        "pipeline (stage → encode → outbox, synchronous=FULL, 1,000/txn): no rules {base:.0} readings/s"
    );
    println!(
        "  10 ten-line rules, 1 matching per reading:  {with:.0} readings/s = {:.2} × no rules",
        with / base
    );
    println!(
        "  10 ten-line rules, all matching every reading: {with_all:.0} readings/s = {:.2} × no rules",
        with_all / base
    );
}
