//! TF Lite 1.15 (the `tflite` crate) against the reference interpreter (ai-edge-litert), on the
//! committed model and the windows scripts/train-anomaly recorded; the stage over readings;
//! models that must not load.

use std::path::{Path, PathBuf};

use weir_core::{Batch, Event, Metrics, PointId, Quality, Reading, Timestamp, Transform, Value};
use weir_infer::config::{Detector, DetectorConfig, Normalisation, OutputKind, Threshold};
use weir_infer::{InferenceStage, Model, ModelError};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn model_path() -> PathBuf {
    root().join("models/greenhouse-ae.tflite")
}

#[test]
fn outputs_equal_the_reference_interpreter() {
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("models/greenhouse-ae.vectors.json")).unwrap(),
    )
    .unwrap();
    let mut m = Model::load(&model_path(), 32, 32).unwrap();
    let windows = v["windows"].as_array().unwrap();
    assert!(windows.len() >= 20);
    let mut out = vec![0.0f32; 32];
    let mut worst = 0.0f32;
    for w in windows {
        let input: Vec<f32> = serde_json::from_value(w["input"].clone()).unwrap();
        let want: Vec<f32> = serde_json::from_value(w["output"].clone()).unwrap();
        m.run(&input, &mut out).unwrap();
        for (a, b) in out.iter().zip(&want) {
            let tol = 1e-5 + 1e-5 * b.abs();
            worst = worst.max((a - b).abs());
            assert!((a - b).abs() <= tol, "{a} vs reference {b}");
        }
    }
    eprintln!("largest difference from the reference: {worst:e}");
}

#[test]
fn a_truncated_or_foreign_file_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(model_path()).unwrap();
    let cut = dir.path().join("cut.tflite");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = Model::load(&cut, 32, 32).unwrap_err();
    assert!(matches!(e, ModelError::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("truncated or corrupt"), "{e}");
    let json = dir.path().join("not.tflite");
    std::fs::write(&json, b"{\"this is\": \"json\"}").unwrap();
    let e = Model::load(&json, 32, 32).unwrap_err();
    assert!(matches!(e, ModelError::NotTflite { .. }), "{e}");
    assert!(e.to_string().contains("not a TF Lite model"), "{e}");
}

#[test]
fn wrong_shapes_and_unsupported_op_versions_are_named() {
    let e = Model::load(&model_path(), 24, 24).unwrap_err();
    assert!(matches!(e, ModelError::Shape { .. }), "{e}");
    assert!(
        e.to_string().contains("[1, 32]") && e.to_string().contains("[1, 24]"),
        "{e}"
    );
    let e = Model::load(&root().join("tests/data/fc-v12.tflite"), 32, 32).unwrap_err();
    let s = e.to_string();
    assert!(matches!(e, ModelError::UnsupportedOp { .. }), "{s}");
    assert!(
        s.contains("BuiltinOperator_FULLY_CONNECTED v12") || s.contains("FULLY_CONNECTED v12"),
        "{s}"
    );
    assert!(s.contains("TF Lite 1.15"), "{s}");
}

fn detector(min_duration_s: u64) -> Detector {
    let norm: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("models/greenhouse-ae.norm.json")).unwrap(),
    )
    .unwrap();
    let cfg = DetectorConfig {
        name: "climate".into(),
        model: model_path(),
        normalisation: Normalisation::File(root().join("models/greenhouse-ae.norm.json")),
        groups: vec!["gh1".into()],
        inputs: vec![
            "{group}/climate/temperature".into(),
            "{group}/climate/humidity".into(),
            "{group}/climate/light".into(),
            "{group}/actuators/vent".into(),
        ],
        window_samples: 8,
        period_s: 60,
        output: OutputKind::Reconstruction,
        threshold: Threshold {
            raise: 0.4,
            clear: 0.2,
            min_duration_s,
        },
    };
    assert_eq!(norm["inputs"].as_array().unwrap().len(), 4);
    weir_infer::config::resolve(cfg, Path::new("/")).unwrap()
}

fn reading(device: &str, point: &str, v: Value, minute: i64) -> Reading {
    Reading {
        device: device.into(),
        point: PointId::new(point),
        value: v,
        unit: None,
        ts: Timestamp(minute * 60_000_000_000 + 1_000_000_000),
        quality: Quality::Good,
        source: "sim".into(),
    }
}

/// One minute of the greenhouse at 13:00 (the training data's shape), temperature offset by
/// `dt` °C.
fn minute(m: i64, dt: f64, with_light: bool) -> Batch {
    let mut b = vec![
        reading("gh1/climate", "temperature", Value::F64(27.5 + dt), m),
        reading("gh1/climate", "humidity", Value::F64(59.0), m),
        reading("gh1/actuators", "vent", Value::Bool(true), m),
    ];
    if with_light {
        b.push(reading("gh1/climate", "light", Value::F64(47600.0), m));
    }
    b
}

fn scores(batch: &Batch) -> Vec<&Reading> {
    batch
        .iter()
        .filter(|r| r.point.as_str() == "anomaly_score")
        .collect()
}

#[test]
fn a_fault_raises_the_alert_and_its_end_clears_it() {
    let mut s = InferenceStage::new(&[detector(120)], &Metrics::new()).unwrap();
    let (mut normal, mut faulty, mut events) = (vec![], vec![], Vec::<Event>::new());
    let mut alerts = vec![];
    for m in 0..60 {
        let fault = (25..40).contains(&m);
        let mut b = minute(m, if fault { -9.0 } else { 0.0 }, true);
        s.process(&mut b);
        s.take_events(&mut events);
        for r in scores(&b) {
            assert_eq!(r.quality, Quality::Good);
            let v = r.value.as_f64().unwrap();
            if fault && m >= 33 {
                faulty.push(v)
            } else if m < 25 {
                normal.push(v)
            }
        }
        for e in events.drain(..) {
            if let Event::Alert(a) = e {
                alerts.push((m, a.active, a.device.to_string()));
            }
        }
    }
    assert!(normal.len() > 10 && faulty.len() > 5);
    assert!(normal.iter().all(|v| *v < 0.2), "normal scores {normal:?}");
    assert!(faulty.iter().all(|v| *v > 0.4), "fault scores {faulty:?}");
    assert_eq!(alerts.len(), 2, "{alerts:?}");
    let (raised, cleared) = (&alerts[0], &alerts[1]);
    // Within the window (8 periods) plus the minimum duration (2 periods) of the fault starting.
    assert!(
        raised.1 && raised.0 > 25 && raised.0 <= 25 + 8 + 2,
        "{alerts:?}"
    );
    assert_eq!(raised.2, "gh1/climate");
    assert!(
        !cleared.1 && cleared.0 > 40 && cleared.0 <= 40 + 8 + 2,
        "{alerts:?}"
    );
}

#[test]
fn a_window_with_a_gap_is_not_scored_and_a_silent_point_does_not_freeze_it() {
    let mut s = InferenceStage::new(&[detector(0)], &Metrics::new()).unwrap();
    let mut seen = vec![];
    for m in 0..20 {
        // light stops at minute 10
        let mut b = minute(m, 0.0, m < 10);
        s.process(&mut b);
        seen.extend(scores(&b).into_iter().map(|r| (r.ts, r.quality.clone())));
    }
    let good = seen.iter().filter(|(_, q)| *q == Quality::Good).count();
    let bad: Vec<_> = seen
        .iter()
        .filter_map(|(_, q)| match q {
            Quality::Bad(why) => Some(why.to_string()),
            _ => None,
        })
        .collect();
    assert!(good >= 2, "{seen:?}");
    assert!(
        !bad.is_empty() && bad[0].contains("gh1/climate/light"),
        "{bad:?}"
    );
    // Everything stops: the wall clock keeps closing periods.
    let mut out = Batch::new();
    let before = seen.last().unwrap().0;
    s.tick(Timestamp(before.0 + 5 * 60_000_000_000), &mut out);
    assert!(!scores(&out).is_empty(), "tick closed no period");
    assert!(scores(&out)
        .iter()
        .all(|r| matches!(r.quality, Quality::Bad(_))));
}
