//! Inference cost: one 32-value window through the committed autoencoder (µs per window), and
//! the stage's cost per reading against a pass-through of the same batches, measured in one run.
//!
//! `cargo bench -p weir-infer --features tflite`

use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use weir_core::{Batch, Metrics, PointId, Quality, Reading, Timestamp, Transform, Value};
use weir_infer::config::{DetectorConfig, Normalisation, OutputKind, Threshold};
use weir_infer::{InferenceStage, Model};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let model = root.join("models/greenhouse-ae.tflite");
    let mut m = Model::load(&model, 32, 32).unwrap();
    let input: Vec<f32> = (0..32).map(|i| (i as f32 * 0.37).sin()).collect();
    let mut out = vec![0.0f32; 32];
    for _ in 0..10_000 {
        m.run(&input, &mut out).unwrap();
    }
    let n = 200_000;
    let t = Instant::now();
    for _ in 0..n {
        m.run(black_box(&input), &mut out).unwrap();
        black_box(&out);
    }
    let per_window = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    println!("inference, 32-value autoencoder: {per_window:.2} µs per window (budget 100 µs)");

    // The pipeline stage: 10 greenhouses, one detector each, 4 inputs, one reading per input
    // per 60 s period: every 4th reading closes a window and runs the model.
    let groups: Vec<String> = (1..=10).map(|g| format!("gh{g}")).collect();
    let cfg = DetectorConfig {
        name: "climate".into(),
        model: model.clone(),
        normalisation: Normalisation::File(root.join("models/greenhouse-ae.norm.json")),
        groups: groups.clone(),
        inputs: [
            "climate/temperature",
            "climate/humidity",
            "climate/light",
            "actuators/vent",
        ]
        .iter()
        .map(|i| format!("{{group}}/{i}"))
        .collect(),
        window_samples: 8,
        period_s: 60,
        output: OutputKind::Reconstruction,
        threshold: Threshold {
            raise: 1.0,
            clear: 0.3,
            min_duration_s: 120,
        },
    };
    let det = weir_infer::config::resolve(cfg, Path::new("/")).unwrap();
    let minutes = 20_000i64;
    let batches: Vec<Batch> = (0..minutes)
        .map(|m| {
            groups
                .iter()
                .flat_map(|g| {
                    [
                        ("climate", "temperature", 24.0),
                        ("climate", "humidity", 60.0),
                        ("climate", "light", 40000.0),
                        ("actuators", "vent", 0.0),
                    ]
                    .map(|(d, p, v)| Reading {
                        device: format!("{g}/{d}").as_str().into(),
                        point: PointId::new(p),
                        value: Value::F64(v + (m % 7) as f64 * 0.1),
                        unit: None,
                        ts: Timestamp(m * 60_000_000_000),
                        quality: Quality::Good,
                        source: "sim".into(),
                    })
                })
                .collect()
        })
        .collect();
    let readings = (minutes as usize * groups.len() * 4) as f64;
    let base = {
        let mut p = weir_core::Passthrough("inference");
        let t = Instant::now();
        for b in &batches {
            let mut b = b.clone();
            p.process(&mut b);
            black_box(&b);
        }
        t.elapsed().as_secs_f64()
    };
    let with = {
        let mut s = InferenceStage::new(&[det], &Metrics::new()).unwrap();
        let t = Instant::now();
        for b in &batches {
            let mut b = b.clone();
            s.process(&mut b);
            black_box(&b);
        }
        t.elapsed().as_secs_f64()
    };
    println!(
        "pipeline stage, 10 greenhouses × 1 detector: {:.3} µs per reading with inference vs {:.3} µs pass-through (clone + stage): ratio {:.2}",
        with * 1e6 / readings,
        base * 1e6 / readings,
        with / base
    );
}
