//! `weir check`, `weir --version` and the reference configuration.

mod common;

fn weir(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut c = common::weir_cmd();
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn reference_gateway_yaml_passes_check() {
    let dir = tempfile::tempdir().unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let (code, out, err) = weir(
        &["check", "-c", &format!("{root}/gateway.yaml")],
        &[("WEIR_STATE_DIR", dir.path().to_str().unwrap())],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("OK (1 source: greenhouse-demo (sim))"),
        "{out}"
    );
}

#[test]
fn every_example_config_passes_check() {
    let dir = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut n = 0;
    for e in std::fs::read_dir(root).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml") {
            n += 1;
            let (code, out, err) = weir(
                &["check", "-c", p.to_str().unwrap()],
                &[("WEIR_STATE_DIR", dir.path().to_str().unwrap())],
            );
            assert_eq!(code, 0, "{}: {out}{err}", p.display());
        }
    }
    assert!(n >= 1, "examples/ has configs");
}

#[test]
fn typos_and_garbage_are_reported_with_path_and_line_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.yaml");
    std::fs::write(
        &cfg,
        "gateway:\n  id: gh\nmqtt:\n  host: 127.0.0.1\n  prot: 1883\nsources:\n  - sim:\n      greenhouses: 0\n  - sim:\n      intervall_ms: 5\n  - blue_tooth:\n      port: /dev/ttyUSB0\n",
    )
    .unwrap();
    let (code, _, err) = weir(&["check", "-c", cfg.to_str().unwrap()], &[]);
    assert_eq!(code, 1);
    let f = cfg.display().to_string();
    assert!(
        err.contains(&format!("{f}:5: mqtt.prot: unknown field `prot`")),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{f}:8: sources[0].sim.greenhouses: must be at least 1"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{f}:10: sources[1].sim.intervall_ms: unknown field `intervall_ms`"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{f}:11: sources[2].blue_tooth: unknown source kind `blue_tooth`"
        )),
        "{err}"
    );
    assert!(err.contains("4 errors"), "{err}");

    std::fs::write(&cfg, "\u{0}\u{1}garbage: [\n").unwrap();
    let (code, _, err) = weir(&["check", "-c", cfg.to_str().unwrap()], &[]);
    assert_eq!(code, 1);
    assert!(err.contains(&f), "{err}");

    let (code, _, err) = weir(&["check", "-c", "/nonexistent/gateway.yaml"], &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("/nonexistent/gateway.yaml: cannot read"),
        "{err}"
    );
}

#[test]
fn run_refuses_a_bad_config_without_starting() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.yaml");
    std::fs::write(&cfg, "gateway:\n  id: gh\nmqtt:\n  qos: 7\n").unwrap();
    let (code, _, err) = weir(&["run", "-c", cfg.to_str().unwrap()], &[]);
    assert_eq!(code, 1);
    assert!(err.contains(":4: mqtt.qos: 7 is not supported"), "{err}");
}

#[test]
fn version_is_printed() {
    let (code, out, _) = weir(&["--version"], &[]);
    assert_eq!(code, 0);
    assert!(out.starts_with("weir "), "{out}");
}

/// `weir check` reports every mistake of a section, not serde's first: five mistakes in three
/// sections, five errors, each with file:line and YAML path.
#[test]
fn check_reports_every_mistake_of_a_section() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("five.yaml");
    std::fs::write(
        &cfg,
        "gateway:\n  id: gh\nmqtt:\n  port: \"1883x\"\n  keepalive_secs: 30\n  qos: 2\nstore:\n  synchronous: fast\nmetrics:\n  listen: nowhere\n",
    )
    .unwrap();
    let f = cfg.to_str().unwrap();
    let (code, out, err) = weir(&["check", "-c", f], &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!("{f}: 5 errors in the configuration")),
        "{err}"
    );
    for want in [
        ":4: mqtt.port: invalid type: string \"1883x\", expected u16",
        ":5: mqtt.keepalive_secs: unknown field `keepalive_secs`",
        ":6: mqtt.qos: 2 is not supported",
        ":8: store.synchronous: unknown variant `fast`",
        ":10: metrics.listen: invalid socket address syntax",
    ] {
        assert!(
            err.contains(&format!("{f}{want}")),
            "missing {want:?} in\n{err}"
        );
    }
}

/// A password from the environment stays text whatever it looks like, and a value from the
/// environment never appears in `weir check`'s output, even where it does not fit.
#[test]
fn check_keeps_substituted_secrets_text_and_never_prints_them() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().to_str().unwrap();
    let ok = dir.path().join("ok.yaml");
    std::fs::write(
        &ok,
        "gateway:\n  id: gh\n  state_dir: ${WEIR_STATE_DIR}\nmqtt:\n  port: ${WEIR_MQTT_PORT:-}\n  username: u\n  password: ${WEIR_MQTT_PASSWORD}\nsources:\n  - sim: {}\n",
    )
    .unwrap();
    for pw in ["123456", "true", "0042"] {
        let (code, out, err) = weir(
            &["check", "-c", ok.to_str().unwrap()],
            &[("WEIR_MQTT_PASSWORD", pw), ("WEIR_STATE_DIR", state)],
        );
        assert_eq!(code, 0, "password {pw}: {out}{err}");
    }
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "gateway:\n  id: gh\nmqtt:\n  port: ${WEIR_MQTT_PASSWORD}\n  username: u\n  password: 987654321\n",
    )
    .unwrap();
    let (code, out, err) = weir(
        &["check", "-c", bad.to_str().unwrap()],
        &[("WEIR_MQTT_PASSWORD", "0042424242")],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(":4: mqtt.port: the value of `${WEIR_MQTT_PASSWORD}` does not fit here"),
        "{err}"
    );
    assert!(
        err.contains(":6: mqtt.password: a secret must be a string"),
        "{err}"
    );
    for secret in ["42424242", "987654321"] {
        assert!(!out.contains(secret) && !err.contains(secret), "{out}{err}");
    }
}

/// The production file on a laptop: `weir rules test` and `weir buffer stats` load only the
/// sections they use, so an unset password variable, a password file, TLS files and a Modbus
/// profile that are not on this machine stop neither; `weir check` still names every one.
#[cfg(all(feature = "modbus", feature = "rules"))]
#[test]
fn rules_test_and_buffer_stats_work_with_a_production_file_on_a_laptop() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let state = dir.path().join("state");
    let production = |secret: &str| {
        format!(
            "gateway:
  id: plant
  state_dir: {state}
mqtt:
  host: broker.example
  username: gw
  {secret}
  tls:
    ca_file: {d}/etc/ca.pem
    cert_file: {d}/etc/client.pem
    key_file: {d}/etc/client.key
sources:
  - modbus:
      name: plant
      profiles:
        meter: {{ file: {d}/etc/profiles/meter.yaml }}
      tcp:
        - host: 127.0.0.1
          port: 1502
          devices:
            - {{ id: plant/meter, unit: 1, profile: meter }}
rules:
  - name: hot
    match: {{ point: temperature }}
    script: 'if r.value > ${{WEIR_TEST_RULES_LIMIT}} {{ emit(\"hot\", 1); }}'
",
            state = state.display()
        )
    };
    let input = dir.path().join("readings.jsonl");
    std::fs::write(
        &input,
        "{\"device\":\"plant/boiler\",\"point\":\"temperature\",\"value\":20.5,\"ts\":\"2026-06-01T12:00:00Z\"}\n\
         {\"device\":\"plant/boiler\",\"point\":\"temperature\",\"value\":31.5,\"ts\":\"2026-06-01T12:00:01Z\"}\n",
    )
    .unwrap();
    let env = [("WEIR_TEST_RULES_LIMIT", "25")];
    for (name, secret, secret_error) in [
        (
            "by-variable.yaml",
            "password: ${WEIR_TEST_UNSET_VAR_XYZ}",
            ":7: mqtt.password: environment variable `WEIR_TEST_UNSET_VAR_XYZ` is not set"
                .to_string(),
        ),
        (
            "by-file.yaml",
            "password_file: /nonexistent/weir/mqtt-password",
            ":7: mqtt.password_file: cannot read secret file /nonexistent/weir/mqtt-password"
                .to_string(),
        ),
    ] {
        let cfg = dir.path().join(name);
        std::fs::write(&cfg, production(secret)).unwrap();
        let f = cfg.to_str().unwrap();

        let (code, out, err) = weir(
            &["rules", "test", "-c", f, "--input", input.to_str().unwrap()],
            &env,
        );
        assert_eq!(code, 0, "{name}: {out}{err}");
        // the rules ran, with their own variable expanded: one reading above 25, one emit
        assert_eq!(out.matches("[hot] emit").count(), 1, "{name}: {out}");
        assert!(out.contains("plant/boiler hot = 1"), "{name}: {out}");

        // No outbox yet: a clear message naming it, not a configuration error.
        let (code, out, err) = weir(&["buffer", "stats", "-c", f], &[]);
        assert_eq!(code, 2, "{name}: {out}{err}");
        assert!(!err.contains("in the configuration"), "{name}: {err}");
        assert!(
            err.contains(&format!(
                "no outbox yet at {}/outbox.db: `weir run` creates it",
                state.display()
            )),
            "{name}: {err}"
        );

        // `weir check` (what `run` loads) still names every problem.
        let (code, out, err) = weir(&["check", "-c", f], &env);
        assert_eq!(code, 1, "{name}: {out}{err}");
        for want in [
            secret_error,
            ":9: mqtt.tls.ca_file: cannot read".to_string(),
            ":10: mqtt.tls.cert_file: cannot read".to_string(),
            ":11: mqtt.tls.key_file: cannot read".to_string(),
            ":16: sources[0].modbus.profiles.meter.file: cannot read".to_string(),
        ] {
            assert!(err.contains(&want), "{name}: missing {want:?} in\n{err}");
        }
    }

    // With an outbox (`buffer requeue` creates it, as `run` would), `buffer stats` prints its
    // JSON document.
    let f = dir.path().join("by-variable.yaml");
    let f = f.to_str().unwrap();
    let (code, out, err) = weir(&["buffer", "requeue", "-c", f], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = weir(&["buffer", "stats", "-c", f], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["rows"], 0, "{out}");
    assert_eq!(
        doc["path"],
        format!("{}/outbox.db", state.display()).as_str(),
        "{out}"
    );
}

/// Loading less never means checking less of the file's shape: a misspelt section and a broken
/// file fail `weir rules test` and `weir buffer stats` with the file's position.
#[cfg(feature = "rules")]
#[test]
fn rules_test_and_buffer_stats_still_refuse_a_broken_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gw.yaml");
    let f = cfg.to_str().unwrap();
    for (text, want) in [
        (
            "gateway:\n  id: gh\nmqt:\n  host: x\n",
            format!("{f}:3: mqt: unknown section `mqt`"),
        ),
        ("gateway:\n  id: gh\nsources: [\n", format!("{f}:")),
        ("\u{0}\u{1}garbage: [\n", f.to_string()),
    ] {
        std::fs::write(&cfg, text).unwrap();
        for args in [
            &["rules", "test", "-c", f, "--input", "-"][..],
            &["buffer", "stats", "-c", f][..],
        ] {
            let (code, out, err) = weir(args, &[]);
            assert_eq!(code, 1, "{args:?} {text:?}: {out}{err}");
            assert!(
                err.contains("in the configuration") && err.contains(&want),
                "{args:?} {text:?}: missing {want:?} in\n{err}"
            );
        }
    }
}
