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
        "gateway:\n  id: gh\nmqtt:\n  host: 127.0.0.1\n  prot: 1883\nsources:\n  - sim:\n      greenhouses: 0\n  - sim:\n      intervall_ms: 5\n  - zigbee:\n      port: /dev/ttyUSB0\n",
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
            "{f}:11: sources[2].zigbee: unknown source kind `zigbee`"
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
