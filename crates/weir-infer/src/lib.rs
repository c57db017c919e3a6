//! Weir's anomaly inference stage: TF Lite models scoring resampled windows of readings.
//!
//! * [`config`] — the `inference:` section (detectors, YAML path+line errors through
//!   [`weir_config::Diagnostics`]) and [`parse_section`];
//! * [`model`] — a `.tflite` file in TF Lite 1.15's C++ interpreter (cargo feature `tflite`),
//!   checked against the detector: one float32 input of `inputs × window_samples` values, one
//!   float32 output (the same length for `reconstruction`, one value for `score`);
//! * [`stage`] — the [`weir_core::Transform`]: resampling, gaps, scores, alerts.
//!
//! Models come from scripts/train-anomaly (committed under models/ with their normalisation
//! sidecar and the reference interpreter's outputs).

pub mod config;
pub mod model;
pub mod replay;
pub mod stage;
mod verify;

pub use config::{Detector, DetectorConfig};
pub use model::{Model, ModelError};
pub use stage::{InferenceBuilder, InferenceStage};

use std::path::Path;

use weir_config::Diagnostics;

/// Parse the `inference:` section (a list of detectors at YAML path `path`), read each
/// normalisation file, and load each model to check its tensors and ops against the detector (what
/// `weir check` reports, with the detector's YAML path and line).
pub fn parse_section(
    value: serde_yaml::Value,
    path: &str,
    base_dir: &Path,
    d: &mut Diagnostics,
) -> Option<InferenceBuilder> {
    let items = match value {
        serde_yaml::Value::Null => return Some(InferenceBuilder::default()),
        serde_yaml::Value::Sequence(s) => s,
        _ => {
            d.error(path, "must be a list of detectors (`- name: …`)");
            return None;
        }
    };
    let before = d.len();
    let mut detectors = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (i, item) in items.into_iter().enumerate() {
        let p = format!("{path}[{i}]");
        let Some(c) = d.parse::<DetectorConfig>(item, &p) else {
            continue;
        };
        if !names.insert(c.name.clone()) {
            d.error(
                &format!("{p}.name"),
                format!("a second detector named `{}`", c.name),
            );
        }
        match config::resolve(c, base_dir) {
            Err(problems) => {
                for (k, m) in problems {
                    d.error(&format!("{p}.{k}"), m);
                }
            }
            Ok(det) => {
                if let Err(e) = Model::load(&det.model_path, det.input_len(), det.output_len()) {
                    d.error(&format!("{p}.model"), e.to_string());
                } else {
                    detectors.push(det);
                }
            }
        }
    }
    (d.len() == before).then_some(InferenceBuilder { detectors })
}
