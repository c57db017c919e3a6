//! `weir check` on the `inference:` section: the committed model passes; a truncated file, a
//! file that is not TF Lite, a model whose tensors do not fit the detector and one asking for an
//! op version TF Lite 1.15 lacks are each named, with the detector's YAML path and line.

mod common;

use std::path::Path;

fn check(cfg: &Path) -> (i32, String) {
    let out = common::weir_cmd()
        .args(["check", "-c", cfg.to_str().unwrap()])
        .env("WEIR_STATE_DIR", cfg.parent().unwrap().join("state"))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn detector(name: &str, model: &Path, inputs: &[&str]) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    format!(
        "  - name: {name}\n    model: {}\n    normalisation: {{mean: [{}], std: [{}]}}\n    groups: [gh1]\n    inputs: [{}]\n    window_samples: 8\n    period_s: 60\n    threshold: {{raise: 0.4, clear: 0.2, min_duration_s: 120}}\n",
        model.display(),
        vec!["0"; inputs.len()].join(", "),
        vec!["1"; inputs.len()].join(", "),
        inputs
            .iter()
            .map(|i| format!("\"{{group}}/{i}\""))
            .collect::<Vec<_>>()
            .join(", ")
    )
    .replace("$ROOT", root)
}

const INPUTS: [&str; 4] = [
    "climate/temperature",
    "climate/humidity",
    "climate/light",
    "actuators/vent",
];

fn config(dir: &Path, detectors: &str) -> std::path::PathBuf {
    let cfg = dir.join("gateway.yaml");
    std::fs::write(
        &cfg,
        format!(
            "gateway:\n  id: gh\nmqtt:\n  host: 127.0.0.1\n  port: 1883\nsources:\n  - sim:\n      name: sim\n      greenhouses: 1\ninference:\n{detectors}"
        ),
    )
    .unwrap();
    cfg
}

#[test]
fn the_committed_model_passes_check() {
    let dir = tempfile::tempdir().unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/greenhouse-ae.tflite");
    let cfg = config(dir.path(), &detector("climate", &model, &INPUTS));
    let (code, out) = check(&cfg);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn bad_models_are_named_with_the_detectors_yaml_path_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let good = std::fs::read(root.join("models/greenhouse-ae.tflite")).unwrap();
    let cut = dir.path().join("cut.tflite");
    std::fs::write(&cut, &good[..good.len() * 2 / 3]).unwrap();
    let json = dir.path().join("model.tflite");
    std::fs::write(&json, b"{\"not\": \"a model\"}").unwrap();
    let dets = [
        detector("truncated", &cut, &INPUTS),
        detector("foreign", &json, &INPUTS),
        // Three inputs × 8 samples = 24 values; the model takes 32.
        detector(
            "shape",
            &root.join("models/greenhouse-ae.tflite"),
            &INPUTS[..3],
        ),
        detector("op", &root.join("tests/data/fc-v12.tflite"), &INPUTS),
    ]
    .concat();
    let cfg = config(dir.path(), &dets);
    let (code, out) = check(&cfg);
    assert_eq!(code, 1, "{out}");
    let f = cfg.to_str().unwrap();
    // Each detector is 8 lines; the first starts on line 11 (`- name:`), its model on line 12.
    for (i, want) in [
        "is truncated or corrupt",
        "is not a TF Lite model",
        "has shape [1, 32]; the detector config needs [1, 24]",
        "FULLY_CONNECTED v12",
    ]
    .iter()
    .enumerate()
    {
        let at = format!("{f}:{}: inference[{i}].model: ", 12 + 8 * i);
        let line = out
            .lines()
            .find(|l| l.contains(&at))
            .unwrap_or_else(|| panic!("no {at:?} in\n{out}"));
        assert!(line.contains(want), "{line}");
    }
    assert!(out.contains("TF Lite 1.15"), "no converter hint in\n{out}");
}

/// `weir rules infer` replays recorded readings through the detector: scores for every window,
/// the alert raised after an injected fault starts and cleared after it ends, nothing before.
#[test]
fn rules_infer_replays_recorded_readings_with_scores_and_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/greenhouse-ae.tflite");
    let det = detector("climate", &model, &INPUTS)
        .replace(
            "normalisation: {mean: [0, 0, 0, 0], std: [1, 1, 1, 1]}",
            &format!(
                "normalisation: {}",
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("models/greenhouse-ae.norm.json")
                    .display()
            ),
        )
        .replace("raise: 0.4, clear: 0.2", "raise: 0.1, clear: 0.06");
    let cfg = config(dir.path(), &det);
    // An hour at 13:00, one reading per input per minute; from minute 20 to 35 the temperature
    // reads 9 °C low.
    let mut lines = String::new();
    for m in 0..60 {
        let ts = format!("2026-06-01T13:{m:02}:30Z");
        let dt = if (20..35).contains(&m) { -9.0 } else { 0.0 };
        for (dev, p, v) in [
            ("climate", "temperature", 27.5 + dt),
            ("climate", "humidity", 59.0),
            ("climate", "light", 47600.0),
            ("actuators", "vent", 1.0),
        ] {
            lines += &format!(
                "{{\"device\":\"gh1/{dev}\",\"point\":\"{p}\",\"value\":{v},\"ts\":\"{ts}\"}}\n"
            );
        }
    }
    let input = dir.path().join("readings.jsonl");
    std::fs::write(&input, lines).unwrap();
    let out = common::weir_cmd()
        .args(["rules", "infer", "-c", cfg.to_str().unwrap(), "--input"])
        .arg(&input)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let scores = text
        .lines()
        .filter(|l| l.contains(" anomaly_score "))
        .count();
    assert!(scores >= 45, "{scores} scores in\n{text}");
    let alerts: Vec<&str> = text.lines().filter(|l| l.contains(" ALERT ")).collect();
    assert_eq!(alerts.len(), 2, "{text}");
    let minute = |l: &str| l[14..16].parse::<u32>().unwrap();
    assert!(alerts[0].contains("gh1/climate raised"), "{text}");
    assert!((21..=30).contains(&minute(alerts[0])), "{text}");
    assert!(alerts[1].contains("gh1/climate cleared"), "{text}");
    assert!((36..=48).contains(&minute(alerts[1])), "{text}");
}
