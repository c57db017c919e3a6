//! Unit tests of every capability, through the stage as the pipeline drives it.

use std::path::Path;
use std::sync::Arc;

use weir_config::{Diagnostics, PathIndex};
use weir_core::{
    Batch, CommandRouter, DeviceInfo, Metrics, Quality, Reading, Timestamp, Transform, Value,
};

use crate::{parse_section, Event, RuleSet, RulesStage};

const S: i64 = 1_000_000_000;
const T0: i64 = 1_750_000_000 * S;

fn rules_in(yaml: &str, dir: &Path) -> Result<RuleSet, String> {
    let text = format!("rules:\n{yaml}");
    let root: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let mut d = Diagnostics::new(Path::new("gateway.yaml"), PathIndex::build(&text));
    let set = parse_section(root["rules"].clone(), "rules", dir, &mut d);
    match d.finish() {
        Ok(()) => Ok(set.expect("no errors means a rule set")),
        Err(e) => Err(e.to_string()),
    }
}

fn rules(yaml: &str) -> RuleSet {
    rules_in(yaml, Path::new(".")).unwrap_or_else(|e| panic!("{e}"))
}

fn reading(device: &str, point: &str, value: Value, ts: i64) -> Reading {
    Reading {
        device: device.into(),
        point: point.into(),
        value,
        unit: Some(Arc::from("°C")),
        ts: Timestamp(ts),
        quality: Quality::Good,
        source: Arc::from("sim"),
    }
}

fn temp(v: f64, ts: i64) -> Reading {
    reading("gh1/climate", "temperature", Value::F64(v), ts)
}

fn run(stage: &mut RulesStage, batch: Vec<Reading>) -> Batch {
    let mut b = batch;
    stage.process(&mut b);
    b
}

/// Run a batch and return the alerts it raised or cleared (typed events).
fn run_alerts(stage: &mut RulesStage, batch: Vec<Reading>) -> Vec<weir_core::Alert> {
    let mut b = batch;
    stage.process(&mut b);
    let mut ev = Vec::new();
    stage.take_events(&mut ev);
    ev.into_iter()
        .map(|e| match e {
            weir_core::Event::Alert(a) => a,
            other => panic!("not an alert: {other:?}"),
        })
        .collect()
}

fn stage(yaml: &str) -> (RulesStage, Metrics) {
    let m = Metrics::new();
    (RulesStage::new(rules(yaml), CommandRouter::new(), &m), m)
}

#[test]
fn transform_changes_value_and_unit_and_drop_removes() {
    let (mut s, _) = stage(
        r#"
  - name: f
    match: { point: temperature }
    script: |
      r.value = r.value * 9.0 / 5.0 + 32.0;
      r.unit = "°F";
  - name: drop-bad
    match: { point: humidity }
    script: 'if r.value < 0.0 { drop(); }'
"#,
    );
    let out = run(
        &mut s,
        vec![
            temp(20.0, T0),
            reading("gh1/climate", "humidity", Value::F64(-1.0), T0),
            reading("gh1/climate", "humidity", Value::F64(50.0), T0),
        ],
    );
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].value, Value::F64(68.0));
    assert_eq!(out[0].unit.as_deref(), Some("°F"));
    assert_eq!(out[1].value, Value::F64(50.0));
}

#[test]
fn reading_fields_are_visible_and_quality_settable() {
    let (mut s, _) = stage(
        r#"
  - name: q
    script: |
      if r.device == "gh1/climate" && r.point == "temperature" && r.ts > 0 && r.quality == "good"
         && r.source == "sim" && r.unit == "°C" && r.reason == () {
        r.quality = "bad:out of range";
      }
"#,
    );
    let out = run(&mut s, vec![temp(99.0, T0)]);
    assert_eq!(out[0].quality, Quality::Bad(Arc::from("out of range")));
}

#[test]
fn emit_adds_derived_readings_after_the_reading_without_rerunning_rules() {
    let (mut s, m) = stage(
        r#"
  - name: derive
    match: { device: "gh*/climate", point: temperature }
    script: |
      emit("temperature_f", r.value * 1.8 + 32.0, "°F");
      emit("gh1/summary", "hot", r.value > 25.0, ());
"#,
    );
    let out = run(&mut s, vec![temp(30.0, T0)]);
    assert_eq!(out.len(), 3);
    assert_eq!(out[1].point.as_str(), "temperature_f");
    assert_eq!(out[1].device.as_str(), "gh1/climate");
    assert_eq!(out[1].value, Value::F64(86.0));
    assert_eq!(out[1].ts, Timestamp(T0));
    assert_eq!(&*out[1].source, "rules/derive");
    assert_eq!(out[2].device.as_str(), "gh1/summary");
    assert_eq!(out[2].value, Value::Bool(true));
    assert_eq!(out[2].unit, None);
    assert_eq!(
        m.counter("weir_rule_emitted_total", &[("rule", "derive")])
            .get(),
        2
    );
}

#[test]
fn alerts_are_edge_triggered_readings_for_the_alerts_topic() {
    let (mut s, _) = stage(
        r#"
  - name: heat
    match: { point: temperature }
    script: |
      if r.value > 30.0 { alert("high_temperature", "warning", `temperature ${r.value}`); }
      else if r.value < 28.0 { clear("high_temperature"); }
"#,
    );
    let mut out = vec![temp(31.0, T0), temp(32.0, T0 + S)];
    s.process(&mut out);
    assert_eq!(out.len(), 2, "alerts are events, not readings in the batch");
    let mut ev = Vec::new();
    s.take_events(&mut ev);
    let alerts: Vec<_> = ev
        .into_iter()
        .map(|e| match e {
            weir_core::Event::Alert(a) => a,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(alerts.len(), 1, "raised once while active");
    assert_eq!(alerts[0].device.as_str(), "gh1/climate");
    assert_eq!(&*alerts[0].name, "high_temperature");
    assert!(alerts[0].active);
    assert_eq!(&*alerts[0].severity, "warning");
    assert_eq!(&*alerts[0].message, "temperature 31.0");
    assert_eq!(&*alerts[0].by, "heat");
    // in between: nothing; below: cleared once
    let cleared = run_alerts(
        &mut s,
        vec![
            temp(29.0, T0 + 2 * S),
            temp(27.0, T0 + 3 * S),
            temp(26.0, T0 + 4 * S),
        ],
    );
    assert_eq!(cleared.len(), 1);
    assert_eq!(cleared[0].ts, Timestamp(T0 + 3 * S));
    assert!(!cleared[0].active);
}

#[test]
fn bad_severity_is_a_script_error() {
    let (mut s, m) = stage("  - name: a\n    script: 'alert(\"x\", \"bad-level\", \"m\");'\n");
    run(&mut s, vec![temp(1.0, T0)]);
    assert_eq!(m.counter_sum("weir_rule_errors_total"), 1);
}

#[tokio::test]
async fn commands_go_through_the_router_and_refusals_are_counted() {
    let router = CommandRouter::new();
    let inbox = router.register(
        "sim",
        &[DeviceInfo {
            device: "gh1/actuators".into(),
            writable_points: vec!["vent".into()],
        }],
        8,
    );
    let m = Metrics::new();
    let mut s = RulesStage::new(
        rules(
            r#"
  - name: vent
    match: { point: temperature }
    script: |
      if changed("vent", r.value > 28.0) { command("gh1/actuators", "vent", r.value > 28.0); }
      command("gh1/actuators", "heater", true);
"#,
        ),
        router,
        &m,
    );
    run(&mut s, vec![temp(30.0, T0), temp(31.0, T0 + S)]);
    let cmd = inbox.recv().await.unwrap();
    assert_eq!(cmd.device.as_str(), "gh1/actuators");
    assert_eq!(cmd.point.as_str(), "vent");
    assert_eq!(cmd.value, Value::Bool(true));
    assert_eq!(
        cmd.origin,
        weir_core::CommandOrigin::Rule(Arc::from("vent"))
    );
    cmd.reply.send(Ok(())).unwrap();
    let c = |res: &str| {
        m.counter(
            "weir_rule_commands_total",
            &[("rule", "vent"), ("result", res)],
        )
        .get()
    };
    assert_eq!(c("sent"), 1, "changed() sends once");
    assert_eq!(c("refused"), 2, "heater is not writable");
    for _ in 0..100 {
        if c("ok") == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(c("ok"), 1, "the adapter's answer is counted");
}

#[test]
fn latest_reads_the_last_value_of_any_point() {
    let (mut s, _) = stage(
        r#"
  - name: dew
    match: { point: temperature }
    script: |
      let h = latest("gh1/climate", "humidity");
      if h != () { emit("humidity_seen", h); }
      if latest("nope", "x") == () { emit("missing_is_unit", true); }
"#,
    );
    let out = run(
        &mut s,
        vec![
            temp(20.0, T0),
            reading("gh1/climate", "humidity", Value::F64(61.0), T0),
            temp(21.0, T0 + S),
        ],
    );
    let seen: Vec<_> = out
        .iter()
        .filter(|r| r.point.as_str() == "humidity_seen")
        .collect();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].value, Value::F64(61.0));
    assert_eq!(
        out.iter()
            .filter(|r| r.point.as_str() == "missing_is_unit")
            .count(),
        2
    );
}

#[test]
fn state_persists_per_rule_and_lets_do_not_leak() {
    let (mut s, _) = stage(
        r#"
  - name: a
    script: |
      let x = 1;
      state.n = if state.n == () { 1 } else { state.n + x };
      r.value = state.n;
  - name: b
    script: |
      if state.n == () { state.n = 100; }
      state.n += 1;
      emit("b", state.n);
"#,
    );
    let out = run(&mut s, (0..3).map(|i| temp(0.0, T0 + i * S)).collect());
    let vals: Vec<_> = out.iter().map(|r| r.value.clone()).collect();
    assert_eq!(
        vals,
        vec![
            Value::I64(1),
            Value::I64(101),
            Value::I64(2),
            Value::I64(102),
            Value::I64(3),
            Value::I64(103)
        ]
    );
}

#[test]
fn windows_aggregate_over_time_and_count() {
    let (mut s, _) = stage(
        r#"
  - name: w
    match: { point: temperature }
    script: |
      let t = window("t", "10s");
      t.push(r.value);
      let c = window("c", 2);
      c.push(r.value);
      emit("mean10s", t.mean);
      emit("min10s", t.min);
      emit("max10s", t.max);
      emit("std10s", t.std);
      emit("count10s", t.count);
      emit("mean2", c.mean);
      if t.rate != () { emit("rate", t.rate); }
"#,
    );
    let out = run(
        &mut s,
        vec![
            temp(10.0, T0),
            temp(20.0, T0 + 5 * S),
            temp(30.0, T0 + 20 * S),
        ],
    );
    let get = |p: &str| -> Vec<Value> {
        out.iter()
            .filter(|r| r.point.as_str() == p)
            .map(|r| r.value.clone())
            .collect()
    };
    assert_eq!(
        get("mean10s"),
        vec![Value::F64(10.0), Value::F64(15.0), Value::F64(30.0)]
    );
    assert_eq!(
        get("count10s"),
        vec![Value::I64(1), Value::I64(2), Value::I64(1)]
    );
    assert_eq!(get("min10s")[1], Value::F64(10.0));
    assert_eq!(get("max10s")[1], Value::F64(20.0));
    assert_eq!(get("std10s")[1], Value::F64(5.0));
    assert_eq!(
        get("mean2"),
        vec![Value::F64(10.0), Value::F64(15.0), Value::F64(25.0)]
    );
    assert_eq!(get("rate"), vec![Value::F64(2.0)], "10 per 5 s");
}

#[test]
fn tumbling_summary_with_complete_and_reset() {
    let (mut s, _) = stage(
        r#"
  - name: summary
    script: |
      let w = window(r.device + "/" + r.point, "60s");
      w.push(r.value);
      if w.complete {
        emit(r.point + "/mean", w.mean, r.unit);
        emit(r.point + "/count", w.count);
        w.reset();
      }
      drop();
"#,
    );
    let readings: Vec<_> = (0..=130)
        .step_by(10)
        .map(|t| temp(t as f64, T0 + t * S))
        .collect();
    let out = run(&mut s, readings);
    let means: Vec<_> = out
        .iter()
        .filter(|r| r.point.as_str() == "temperature/mean")
        .map(|r| (r.ts.as_nanos() - T0) / S)
        .collect();
    // 0..=60 s completes at 60 (7 values), the next window starts at 70 and completes at 130
    assert_eq!(means, vec![60, 130]);
    let counts: Vec<_> = out
        .iter()
        .filter(|r| r.point.as_str() == "temperature/count")
        .map(|r| r.value.clone())
        .collect();
    assert_eq!(counts, vec![Value::I64(7), Value::I64(7)]);
    assert!(
        out.iter().all(|r| r.point.as_str() != "temperature"),
        "raw dropped"
    );
}

#[test]
fn deadband_changed_and_hysteresis_helpers() {
    let (mut s, _) = stage(
        r#"
  - name: h
    script: |
      if !deadband("t", r.value, 0.5) { drop(); }
      emit("vent", hysteresis("v", r.value, 26.0, 28.0));
      if changed("band", r.value > 27.0) { emit("crossed", r.value); }
"#,
    );
    let vals = [25.0, 25.2, 26.0, 28.1, 28.3, 27.0, 26.1, 25.5];
    let out = run(
        &mut s,
        vals.iter()
            .enumerate()
            .map(|(i, v)| temp(*v, T0 + i as i64 * S))
            .collect(),
    );
    let kept: Vec<_> = out
        .iter()
        .filter(|r| r.point.as_str() == "temperature")
        .map(|r| r.value.as_f64().unwrap())
        .collect();
    // 25.2 within 0.5 of 25.0, 28.3 within 0.5 of 28.1: dropped
    assert_eq!(kept, vec![25.0, 26.0, 28.1, 27.0, 26.1, 25.5]);
    let vent: Vec<_> = out
        .iter()
        .filter(|r| r.point.as_str() == "vent")
        .map(|r| r.value.clone())
        .collect();
    // drop() marks the reading and the script goes on, so the helpers see all eight values:
    // on at >= 28, stays on through 27 and 26.1, off at <= 26 (25.5)
    assert_eq!(
        vent,
        [false, false, false, true, true, true, true, false]
            .map(Value::Bool)
            .to_vec()
    );
    let crossed: Vec<_> = out
        .iter()
        .filter(|r| r.point.as_str() == "crossed")
        .map(|r| r.value.as_f64().unwrap())
        .collect();
    assert_eq!(crossed, vec![25.0, 28.1, 27.0]);
}

#[test]
fn timers_fire_on_ticks_aligned_to_their_period() {
    let (mut s, _) = stage(
        r#"
  - name: periodic
    script: |
      if every("10s") {
        emit("gh1/climate", "tick", now(), ());
        let t = latest("gh1/climate", "temperature");
        if t != () { emit("gh1/climate", "last_temperature", t, "°C"); }
      }
      if r != () { state.seen = true; }
"#,
    );
    let mut out = Vec::new();
    s.tick(Timestamp(T0 + 3 * S), &mut out);
    assert!(out.is_empty(), "the first tick only starts the timer");
    run(&mut s, vec![temp(22.5, T0 + 4 * S)]);
    s.tick(Timestamp(T0 + 9 * S), &mut out);
    assert!(out.is_empty());
    s.tick(Timestamp(T0 + 10 * S), &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].value, Value::I64(T0 + 10 * S));
    assert_eq!(out[1].value, Value::F64(22.5));
    out.clear();
    s.tick(Timestamp(T0 + 15 * S), &mut out);
    assert!(out.is_empty());
    s.tick(Timestamp(T0 + 41 * S), &mut out);
    assert_eq!(out.len(), 2, "a long gap fires once");
}

#[test]
fn rules_without_timers_are_not_ticked() {
    let (mut s, m) = stage("  - name: plain\n    script: 'r.value = 1;'\n");
    let mut out = Vec::new();
    s.tick(Timestamp(T0), &mut out);
    assert!(out.is_empty());
    assert_eq!(m.counter_sum("weir_rule_errors_total"), 0);
}

#[test]
fn runaway_script_is_stopped_and_other_rules_still_run() {
    let (mut s, m) = stage(
        r#"
  - name: runaway
    script: |
      emit("never", 1);
      r.value = -1.0;
      loop { }
  - name: deep
    script: |
      fn f(n) { f(n + 1) }
      f(0);
  - name: typeerr
    script: 'r.value = r.value + "x" * 2;'
  - name: fine
    script: 'r.value = r.value + 1.0;'
"#,
    );
    let started = std::time::Instant::now();
    let out = run(&mut s, vec![temp(20.0, T0), temp(21.0, T0 + S)]);
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    assert_eq!(out.len(), 2, "nothing emitted by failing runs");
    assert_eq!(
        out[0].value,
        Value::F64(21.0),
        "failed rules left r as it was"
    );
    assert_eq!(out[1].value, Value::F64(22.0));
    let errs = |r: &str| m.counter("weir_rule_errors_total", &[("rule", r)]).get();
    assert_eq!(errs("runaway"), 2);
    assert_eq!(errs("deep"), 2);
    assert_eq!(errs("typeerr"), 2);
    assert_eq!(errs("fine"), 0);
}

#[test]
fn limits_are_reported_in_the_error() {
    let mut s = RulesStage::offline(rules("  - name: runaway\n    script: 'loop {}'\n"));
    run(&mut s, vec![temp(20.0, T0)]);
    let ev = s.take_trace();
    assert!(
        matches!(&ev[..], [Event::Error { message, .. }] if message.contains("operations")),
        "{ev:?}"
    );
}

#[test]
fn match_globs_and_source_select_readings() {
    let (mut s, _) = stage(
        r#"
  - name: beds
    match: { device: "gh?/bed*", point: "*moist*", source: "si?" }
    script: 'r.value = 0.0;'
"#,
    );
    let mut other_src = reading("gh1/bed1", "moisture", Value::F64(40.0), T0);
    other_src.source = Arc::from("modbus1");
    let out = run(
        &mut s,
        vec![
            reading("gh1/bed1", "moisture", Value::F64(40.0), T0),
            reading("gh12/bed1", "moisture", Value::F64(40.0), T0),
            reading("gh1/climate", "moisture", Value::F64(40.0), T0),
            other_src,
        ],
    );
    let vals: Vec<_> = out.iter().map(|r| r.value.as_f64().unwrap()).collect();
    assert_eq!(vals, vec![0.0, 40.0, 40.0, 40.0]);
}

#[test]
fn compile_errors_name_the_yaml_path_and_script_line() {
    let e = rules_in(
        r#"
  - name: ok
    script: 'r.value = 1;'
  - name: broken
    script: |
      let a = 1;
      let b = ;
"#,
        Path::new("."),
    )
    .unwrap_err();
    assert!(e.contains("gateway.yaml:6: rules[1].script"), "{e}");
    assert!(e.contains("rule `broken`: inline script:2:"), "{e}");
}

#[test]
fn undeclared_variables_are_compile_errors() {
    let e = rules_in(
        "  - name: typo\n    script: 'r.value = rr.value;'\n",
        Path::new("."),
    )
    .unwrap_err();
    assert!(e.contains("rules[0].script") && e.contains("rr"), "{e}");
}

#[test]
fn config_shape_errors() {
    let e = rules_in(
        r#"
  - name: a
    scirpt: 'x'
  - name: b
  - name: b
    script: '1'
    file: x.rhai
  - name: "bad name"
    script: '1'
  - name: c
    file: missing.rhai
"#,
        Path::new("/nonexistent"),
    )
    .unwrap_err();
    assert!(
        e.contains("rules[0].scirpt") && e.contains("unknown field"),
        "{e}"
    );
    assert!(e.contains("rules[1]: rule `b` needs exactly one of"), "{e}");
    assert!(e.contains("rules[2].name: duplicate rule name `b`"), "{e}");
    assert!(e.contains("rules[3].name"), "{e}");
    assert!(
        e.contains("rules[4].file") && e.contains("missing.rhai"),
        "{e}"
    );
}

#[test]
fn scripts_load_from_files_relative_to_the_config_and_report_their_lines() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    std::fs::write(dir.path().join("rules/ok.rhai"), "r.value = 7;\n").unwrap();
    std::fs::write(
        dir.path().join("rules/bad.rhai"),
        "// fine\n\nr.value = (1 + ;\n",
    )
    .unwrap();
    let set = rules_in("  - name: ok\n    file: rules/ok.rhai\n", dir.path()).unwrap();
    let mut s = RulesStage::offline(set);
    assert_eq!(run(&mut s, vec![temp(1.0, T0)])[0].value, Value::I64(7));
    let e = rules_in("  - name: bad\n    file: rules/bad.rhai\n", dir.path()).unwrap_err();
    assert!(e.contains("rules[0].file"), "{e}");
    assert!(e.contains("bad.rhai:3:"), "{e}");
}

#[test]
fn no_imports_no_eval() {
    let e = rules_in(
        "  - name: i\n    script: 'import \"x\" as y;'\n",
        Path::new("."),
    )
    .unwrap_err();
    assert!(e.contains("rules[0].script"), "{e}");
    let e = rules_in("  - name: e\n    script: 'eval(\"1\")'\n", Path::new(".")).unwrap_err();
    assert!(e.contains("rules[0].script"), "{e}");
}

#[test]
fn empty_section_is_an_empty_rule_set() {
    let root: serde_yaml::Value = serde_yaml::from_str("rules:").unwrap();
    let mut d = Diagnostics::new(Path::new("g.yaml"), PathIndex::default());
    let set = parse_section(root["rules"].clone(), "rules", Path::new("."), &mut d).unwrap();
    assert!(set.is_empty());
    let mut s = RulesStage::offline(set);
    assert_eq!(run(&mut s, vec![temp(1.0, T0)]).len(), 1);
}

#[test]
fn replay_prints_what_rules_would_do() {
    let set = rules(
        r#"
  - name: vent
    match: { point: temperature }
    script: |
      let open = hysteresis("vent", r.value, 26.0, 28.0);
      if changed("vent", open) { command("gh1/actuators", "vent", open); }
      if r.value > 35.0 { alert("too_hot", "critical", "way too hot"); }
  - name: clock
    script: 'if every("1m") { emit("gh1/clock", "minute", now() / 60000000000, ()); }'
"#,
    );
    let input = r#"
# a comment
{"device":"gh1/climate","point":"temperature","value":25.0,"unit":"°C","ts":"2026-06-01T12:00:30Z"}
{"device":"gh1/climate","point":"temperature","value":29.0,"ts":"2026-06-01T12:01:05Z"}
{"device":"gh1/climate","point":"temperature","value":36,"ts":1780315300000000000}
"#;
    let mut out = Vec::new();
    let sum = crate::replay::replay(set, input.as_bytes(), &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("[vent] command gh1/actuators vent <- false"),
        "{text}"
    );
    assert!(
        text.contains("[vent] command gh1/actuators vent <- true"),
        "{text}"
    );
    assert!(
        text.contains("[vent] alert   gh1/climate too_hot (critical): way too hot"),
        "{text}"
    );
    let tick = humantime::parse_rfc3339("2026-06-01T12:01:05Z")
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let minute = format!(
        "timers\n  [clock] emit    gh1/clock minute = {}",
        tick / 60 / S
    );
    assert!(text.contains(&minute), "{text}");
    assert_eq!(sum.readings, 3);
    assert_eq!(sum.commands, 2);
    assert_eq!(sum.alerts, 1);
    assert_eq!(sum.emitted, 1);
    let bad = crate::replay::replay(
        rules("  - name: x\n    script: '1'\n"),
        "{\"device\":1}".as_bytes(),
        &mut Vec::new(),
    );
    assert!(matches!(
        bad,
        Err(crate::replay::ReplayError::Input { line: 1, .. })
    ));
}

#[test]
fn last_values_are_kept_only_while_a_rule_reads_them() {
    // No rule calls `latest`: the humidity reading is not remembered …
    let (mut s, _) = stage("  - name: plain\n    script: 'r.value = r.value;'\n");
    run(
        &mut s,
        vec![reading("gh1/climate", "humidity", Value::F64(61.0), T0)],
    );
    let with_latest = |yaml: &str| {
        crate::reload_section(Some(serde_yaml::from_str(yaml).unwrap()), Path::new("."))
    };
    let dew = "- name: dew\n  match: { point: temperature }\n  script: 'let h = latest(\"gh1/climate\", \"humidity\"); if h != () { emit(\"h\", h); }'\n";
    assert!(s.apply_reload(with_latest(dew)).is_empty());
    // … so right after the reload that adds the first reader it reads `()` …
    let out = run(&mut s, vec![temp(20.0, T0 + S)]);
    assert!(out.iter().all(|r| r.point.as_str() != "h"));
    // … and from the next humidity reading on, the value.
    let out = run(
        &mut s,
        vec![
            reading("gh1/climate", "humidity", Value::F64(64.0), T0 + 2 * S),
            temp(20.5, T0 + 3 * S),
        ],
    );
    let h: Vec<_> = out.iter().filter(|r| r.point.as_str() == "h").collect();
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].value, Value::F64(64.0));
    // A reload that removes the last reader forgets them again.
    assert!(s
        .apply_reload(with_latest(
            "- name: plain\n  script: 'r.value = r.value;'\n"
        ))
        .is_empty());
    assert!(s.apply_reload(with_latest(dew)).is_empty());
    let out = run(&mut s, vec![temp(21.0, T0 + 4 * S)]);
    assert!(out.iter().all(|r| r.point.as_str() != "h"));
}

#[test]
fn reload_replaces_rules_keeps_state_of_unchanged_ones_and_old_version_of_broken_ones() {
    let (mut s, m) = stage(
        r#"
  - name: counter
    script: |
      state.n = if state.n == () { 1 } else { state.n + 1 };
      emit("n", state.n);
  - name: tag
    script: 'emit("v", 1);'
  - name: gone
    script: 'emit("gone", true);'
"#,
    );
    let handle = s.reload_handle();
    run(&mut s, vec![temp(1.0, T0), temp(1.0, T0 + S)]);
    let reload = crate::reload_section(
        Some(
            serde_yaml::from_str(
                r#"
- name: counter
  script: |
    state.n = if state.n == () { 1 } else { state.n + 1 };
    emit("n", state.n);
- name: tag
  script: 'emit("v", 2'
- name: added
  script: 'emit("added", true);'
"#,
            )
            .unwrap(),
        ),
        Path::new("."),
    );
    assert!(reload.rules[1].1.is_err(), "the new `tag` does not compile");
    assert!(handle.send(reload));
    let out = run(&mut s, vec![temp(1.0, T0 + 2 * S)]);
    let points: Vec<(&str, Value)> = out
        .iter()
        .skip(1)
        .map(|r| (r.point.as_str(), r.value.clone()))
        .collect();
    assert_eq!(
        points,
        vec![
            ("n", Value::I64(3)),
            ("v", Value::I64(1)),
            ("added", Value::Bool(true))
        ],
        "counter kept its state, tag kept its old version, gone is gone, added runs"
    );
    assert_eq!(s.rule_names(), vec!["counter", "tag", "added"]);
    // A fixed `tag` replaces the old one; a changed script starts with fresh memory.
    let fixed = crate::reload_section(
        Some(
            serde_yaml::from_str(
                "- name: tag\n  script: 'emit(\"v\", 2);'\n- name: counter\n  script: 'state.n = if state.n == () { 1 } else { state.n + 10 }; emit(\"n\", state.n);'\n",
            )
            .unwrap(),
        ),
        Path::new("."),
    );
    assert!(s.apply_reload(fixed).is_empty());
    let out = run(&mut s, vec![temp(1.0, T0 + 3 * S)]);
    assert_eq!(out[1].value, Value::I64(2));
    assert_eq!(out[2].value, Value::I64(1));
    assert_eq!(m.counter_sum("weir_rule_errors_total"), 0);
}

#[test]
fn alert_and_clear_in_one_run_follow_the_last_call() {
    let (mut s, _) = stage(
        r#"
  - name: flip
    script: |
      if r.value > 0.0 { alert("a", "info", "up"); clear("a"); alert("a", "info", "up again"); }
      else { alert("a", "warning", "x"); clear("a"); }
"#,
    );
    let alerts = |a: Vec<weir_core::Alert>| -> Vec<&'static str> {
        a.iter()
            .map(|a| if a.active { "active" } else { "cleared" })
            .collect()
    };
    // raise, clear, raise again: three edges, active at the end
    assert_eq!(
        alerts(run_alerts(&mut s, vec![temp(1.0, T0)])),
        ["active", "cleared", "active"]
    );
    // already active at this severity: the same sequence only clears and re-raises
    assert_eq!(
        alerts(run_alerts(&mut s, vec![temp(1.0, T0 + S)])),
        ["cleared", "active"]
    );
    // warning then clear: severity change, then cleared
    assert_eq!(
        alerts(run_alerts(&mut s, vec![temp(-1.0, T0 + 2 * S)])),
        ["active", "cleared"]
    );
    // nothing active: clear alone publishes nothing, the raise-then-clear does
    assert_eq!(
        alerts(run_alerts(&mut s, vec![temp(-1.0, T0 + 3 * S)])),
        ["active", "cleared"]
    );
}
