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
