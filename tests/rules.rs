//! End-to-end tests of the rule engine: the simulator's readings go through rules in the real
//! `weir` binary, and a real MQTT subscriber sees what the rules did — derived readings, alerts on
//! the alerts topic, and a command that reached the simulated actuator (whose new state comes
//! back as telemetry). Failing and runaway rules are contained.

mod common;

use std::time::Duration;

use common::*;

const RULES: &str = r#"      interval_ms: 200
      beds: 1
rules:
  - name: fahrenheit
    match: { device: "gh*/climate", point: temperature }
    script: |
      emit("temperature_f", r.value * 1.8 + 32.0, "°F");
  - name: broken
    match: { point: temperature }
    script: |
      emit("never", 1);
      r.value = r.value + "x" * 2;
  - name: runaway
    match: { point: humidity }
    script: |
      r.value = -1.0;
      loop { }
  - name: probe                # `$$` because gateway.yaml substitutes `${VAR}`
    match: { point: temperature }
    script: |
      alert("probe", "info", `first temperature $${r.value}`);
  - name: vent
    match: { device: "gh1/climate", point: temperature }
    script: |
      if changed("vent", true) { command("gh1/actuators", "vent", true); }
      command("gh1/actuators", "heater", true);
  - name: calibrate
    match: { point: temperature }
    script: |
      r.value = r.value + 100.0;
"#;

#[test]
fn rules_derive_alert_and_actuate_through_the_daemon() {
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port, "t/#");
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), &config(broker.port, RULES, "", ""));

    // The command reached the simulated actuator: its new state is telemetry.
    wait_until("the vent to report open", Duration::from_secs(30), || {
        sub.snapshot()
            .iter()
            .any(|m| m.topic == "t/gh1/actuators/vent" && m.json()["value"] == true)
    });
    // Keep running a while so the runaway rule has been hit many times.
    wait_until("20 humidity readings", Duration::from_secs(30), || {
        sub.count(|m| m.topic == "t/gh1/climate/humidity") >= 20
    });
    let msgs = sub.snapshot();

    // Derived readings: one per temperature reading, computed before `calibrate` ran.
    let temps: Vec<f64> = msgs
        .iter()
        .filter(|m| m.topic == "t/gh1/climate/temperature")
        .map(|m| m.json()["value"].as_f64().unwrap())
        .collect();
    let derived: Vec<f64> = msgs
        .iter()
        .filter(|m| m.topic == "t/gh1/climate/temperature_f")
        .map(|m| m.json()["value"].as_f64().unwrap())
        .collect();
    assert!(temps.len() >= 5, "{} temperatures", temps.len());
    assert!(derived.len() >= temps.len() - 1 && derived.len() <= temps.len() + 1);
    for (t, f) in temps.iter().zip(&derived) {
        assert!(
            ((t - 100.0) * 1.8 + 32.0 - f).abs() < 1e-6,
            "calibrated {t} vs derived {f}"
        );
    }
    let f = msgs
        .iter()
        .find(|m| m.topic == "t/gh1/climate/temperature_f")
        .unwrap()
        .json();
    assert_eq!(f["unit"], "°F");
    assert!(f["seq"].as_u64().is_some());

    // The broken rule's emits never happened; the runaway rule's change was discarded.
    assert_eq!(sub.count(|m| m.topic.ends_with("/never")), 0);
    let hums: Vec<f64> = msgs
        .iter()
        .filter(|m| m.topic == "t/gh1/climate/humidity")
        .map(|m| m.json()["value"].as_f64().unwrap())
        .collect();
    assert!(
        hums.iter().all(|h| *h > 0.0),
        "humidity forwarded unchanged"
    );

    // The alert: exactly once (edge-triggered), on the alerts topic, as JSON with a seq.
    let alerts: Vec<_> = msgs
        .iter()
        .filter(|m| m.topic == "t/alerts/gh1/climate/probe")
        .collect();
    assert_eq!(alerts.len(), 1, "raised once");
    let a = alerts[0].json();
    assert_eq!(a["alert"], "probe");
    assert_eq!(a["device"], "gh1/climate");
    assert_eq!(a["state"], "active");
    assert_eq!(a["severity"], "info");
    assert_eq!(a["rule"], "probe");
    assert_eq!(a["seq"], 1);
    assert!(a["message"]
        .as_str()
        .unwrap()
        .starts_with("first temperature "));

    // Errors are counted per rule in the status document; the heater command was refused.
    wait_until("rule metrics", Duration::from_secs(15), || {
        sub.snapshot().iter().rev().any(|m| {
            let j = m.json();
            let c = |k: &str| j["metrics"][k].as_i64().unwrap_or(0);
            m.topic == "t/status/metrics"
                && c("weir_rule_errors_total{rule=\"runaway\"}") >= 10
                && c("weir_rule_errors_total{rule=\"broken\"}") >= 5
                && c("weir_rule_errors_total{rule=\"fahrenheit\"}") == 0
                && c("weir_rule_commands_total{rule=\"vent\",result=\"ok\"}") == 1
                && c("weir_rule_commands_total{rule=\"vent\",result=\"refused\"}") >= 5
        })
    });
    // Every command a rule sent has its result published like an MQTT command's, through the
    // outbox: the vent's `ok`, the heater's refusal (no such point) with the rule named.
    wait_until("rule command results", Duration::from_secs(15), || {
        sub.count(|m| m.topic == "t/gh1/actuators/vent/set/result") >= 1
            && sub.count(|m| m.topic == "t/gh1/actuators/heater/set/result") >= 1
    });
    let vent = sub.last_json("t/gh1/actuators/vent/set/result").unwrap();
    assert_eq!(vent["ok"], true, "{vent}");
    assert_eq!(vent["origin"], "rule");
    assert_eq!(vent["rule"], "vent");
    assert_eq!(vent["value"], true);
    assert!(vent["seq"].as_u64().is_some());
    let heater = sub.last_json("t/gh1/actuators/heater/set/result").unwrap();
    assert_eq!(heater["ok"], false);
    assert_eq!(
        heater["error"],
        "device `gh1/actuators` has no point `heater` (writable: vent, irrigation, shade)"
    );
    let log = gw.log();
    assert!(
        log.contains("rule failed") && log.contains("runaway"),
        "errors are logged"
    );
    let runaway_logs = log
        .lines()
        .filter(|l| l.contains("rule failed") && l.contains("rule=runaway"))
        .count();
    assert!(runaway_logs <= 2, "rate-limited: {runaway_logs} log lines");
}

#[test]
fn alerts_use_the_configured_topic_and_survive_per_device_mode() {
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port, "#");
    let dir = tempfile::tempdir().unwrap();
    let rules = "      interval_ms: 200\n      beds: 1\nrules:\n  - name: hot\n    match: { point: temperature }\n    script: 'alert(\"hot\", \"critical\", \"x\");'\n";
    let _gw = Gateway::start(
        dir.path(),
        &config(
            broker.port,
            rules,
            "  mode: per_device\n  alerts_topic: site/{prefix}/alarm/{device}/{name}\n",
            "",
        ),
    );
    wait_until("the alert", Duration::from_secs(30), || {
        sub.count(|m| m.topic == "site/t/alarm/gh1/climate/hot") == 1
            && sub.count(|m| m.topic == "t/gh1/climate") >= 3
    });
    let a = sub
        .snapshot()
        .into_iter()
        .find(|m| m.topic == "site/t/alarm/gh1/climate/hot")
        .unwrap()
        .json();
    assert_eq!(a["severity"], "critical");
    // batches carry telemetry only
    assert!(sub
        .snapshot()
        .iter()
        .filter(|m| m.topic == "t/gh1/climate")
        .all(|m| m.json()["readings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["point"] != "hot")));
}

#[test]
fn check_reports_rule_compile_errors_with_path_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.yaml");
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    std::fs::write(dir.path().join("rules/bad.rhai"), "let a = 1;\nlet b = ;\n").unwrap();
    std::fs::write(
        &cfg,
        "gateway:\n  id: gh\n  state_dir: /tmp/weir-rules-check\nsources:\n  - sim: {}\nrules:\n  - name: a\n    file: rules/bad.rhai\n  - name: b\n    script: 'x = 1;'\n  - name: c\n    scirpt: 'r.value = 1;'\n",
    )
    .unwrap();
    let out = weir_cmd().args(["check", "-c"]).arg(&cfg).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let f = cfg.display().to_string();
    assert!(
        err.contains(&format!("{f}:8: rules[0].file: rule `a`: ")),
        "{err}"
    );
    assert!(err.contains("bad.rhai:2:"), "{err}");
    assert!(err.contains(&format!("{f}:10: rules[1].script:")), "{err}");
    assert!(
        err.contains(&format!("{f}:12: rules[2].scirpt: unknown field")),
        "{err}"
    );
}

#[test]
fn greenhouse_example_checks_and_its_rules_test_shows_the_automation() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/greenhouse");
    let state = tempfile::tempdir().unwrap();
    let cfg = root.join("gateway.yaml");
    let run = |args: &[&str]| {
        weir_cmd()
            .args(args)
            .env("WEIR_STATE_DIR", state.path())
            .output()
            .unwrap()
    };
    let out = run(&["check", "-c", cfg.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let input = root.join("readings.jsonl");
    let out = run(&[
        "rules",
        "test",
        "-c",
        cfg.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "[vent] command gh1/actuators vent <- true",
        "[vent] command gh1/actuators vent <- false",
        "[vent] alert   gh1/climate high_temperature (warning)",
        "[vent] clear   gh1/climate high_temperature",
        "[shade] command gh1/actuators shade <- 60",
        "[irrigation] command gh1/actuators irrigation <- true",
        "[irrigation] command gh1/actuators irrigation <- false",
        "[irrigation] alert   gh1/actuators irrigation_max_run (warning)",
        "[summary] emit    gh1/climate temperature/max = 26.4 °C",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }
    assert!(text.contains(" 0 errors"), "{text}");
}

/// The pid of the `weir run` started for `config` (its path is unique to the test's temp dir).
fn weir_pid(config: &std::path::Path) -> u32 {
    let want = config.to_str().unwrap();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        if args.contains(&&b"run"[..]) && args.contains(&want.as_bytes()) {
            return pid;
        }
    }
    panic!("no weir run process for {want}");
}

#[test]
fn sighup_with_a_file_that_fails_check_changes_nothing_then_a_good_one_applies() {
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port, "t/#");
    let dir = tempfile::tempdir().unwrap();
    let rules = |tag: &str, extra: &str| {
        format!(
            "      interval_ms: 200\n      beds: 1\nrules:\n  - name: tag\n    match: {{ point: temperature }}\n    script: '{tag}'\n{extra}"
        )
    };
    let mut gw = Gateway::start(
        dir.path(),
        &config(broker.port, &rules("emit(\"v\", 1);", ""), "", ""),
    );
    let value_of = |m: &Msg| m.json()["value"].as_i64();
    wait_until("v = 1", Duration::from_secs(30), || {
        sub.count(|m| m.topic == "t/gh1/climate/v" && value_of(m) == Some(1)) > 0
    });
    let pid = weir_pid(&gw.config);
    let rewrite = |text: String| {
        let state = dir.path().join("state");
        std::fs::write(
            &gw.config,
            text.replace("{state}", &state.display().to_string()),
        )
        .unwrap();
    };
    let hup = || {
        std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap();
    };

    // A broken new version of `tag`, a new rule and a store value `weir check` refuses: the file
    // fails `weir check`, so nothing changes: `tag` keeps its version, `added` never starts.
    rewrite(config(
        broker.port,
        &rules(
            "emit(\"v\", 2",
            "  - name: added\n    match: { point: temperature }\n    script: 'emit(\"added\", true);'\n",
        ),
        "",
        "  max_bytes: 100\n",
    ));
    hup();
    wait_until("the reload is refused", Duration::from_secs(30), || {
        gw.log()
            .contains("does not pass `weir check`; nothing changed")
    });
    let log = gw.log();
    assert!(
        log.contains("store.max_bytes: must be at least 65536 bytes"),
        "the refusal names every error: {log}"
    );
    let before = sub.count(|m| m.topic == "t/gh1/climate/v" && value_of(m) == Some(1));
    wait_until(
        "tag still at its old version",
        Duration::from_secs(30),
        || sub.count(|m| m.topic == "t/gh1/climate/v" && value_of(m) == Some(1)) >= before + 3,
    );
    assert_eq!(sub.count(|m| m.topic == "t/gh1/climate/added"), 0);

    // A valid file with the new rule and a changed store bound that applies live.
    rewrite(config(
        broker.port,
        &rules(
            "emit(\"v\", 1);",
            "  - name: added\n    match: { point: temperature }\n    script: 'emit(\"added\", true);'\n",
        ),
        "",
        "  max_bytes: 1000000\n",
    ));
    hup();
    wait_until("the added rule", Duration::from_secs(30), || {
        sub.count(|m| m.topic == "t/gh1/climate/added") >= 3
    });
    wait_until("store limits applied", Duration::from_secs(30), || {
        gw.log().contains("reload: store limits applied")
    });

    // The fixed version replaces it; the daemon never stopped.
    rewrite(config(broker.port, &rules("emit(\"v\", 2);", ""), "", ""));
    std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    wait_until("v = 2", Duration::from_secs(30), || {
        sub.count(|m| m.topic == "t/gh1/climate/v" && value_of(m) == Some(2)) >= 3
    });
    assert!(gw.is_running());
    assert_eq!(weir_pid(&gw.config), pid);
}
