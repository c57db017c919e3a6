//! The `inference:` section of gateway.yaml: a list of detectors.
//!
//! ```yaml
//! inference:
//!   - name: climate                       # alert name and `by`
//!     model: models/greenhouse-ae.tflite  # relative to gateway.yaml
//!     normalisation: models/greenhouse-ae.norm.json   # or {mean: [...], std: [...]}
//!     groups: [gh1, gh2]                  # one detector instance per group
//!     inputs: ["{group}/climate/temperature", "{group}/climate/humidity",
//!              "{group}/climate/light", "{group}/actuators/vent"]
//!     window_samples: 8
//!     period_s: 60                        # resampling period: one sample per input per period
//!     output: reconstruction              # or `score`
//!     threshold: {raise: 1.0, clear: 0.5, min_duration_s: 120}
//! ```
//!
//! An input is `device/point` with `{group}` replaced by each group; the point is the part after
//! the last `/`. The model's input is sample-major: `[s0.in0, s0.in1, …, s1.in0, …]`, each value
//! normalised as `(v − mean[i]) / std[i]`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// One detector as written.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DetectorConfig {
    /// The detector's name: the alert's name and `by`.
    pub name: String,
    /// The `.tflite` file, relative to the configuration file's directory.
    pub model: PathBuf,
    /// Per-input mean and std: a sidecar JSON file written by training, or inline.
    pub normalisation: Normalisation,
    /// Values substituted for `{group}` in `inputs`: one detector instance each. Default: one
    /// instance, inputs used as written.
    #[serde(default)]
    pub groups: Vec<String>,
    /// `device/point` per model input, in the model's order.
    pub inputs: Vec<String>,
    /// Samples per input in a window.
    pub window_samples: usize,
    /// Resampling period in seconds: the last reading of each input in a period is its sample.
    pub period_s: u64,
    /// How to read the model's output.
    #[serde(default)]
    pub output: OutputKind,
    pub threshold: Threshold,
}

/// Normalisation: a sidecar file or the values inline.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Normalisation {
    File(PathBuf),
    Inline(NormValues),
}

/// Per-input mean and standard deviation (extra keys of a training sidecar are ignored).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct NormValues {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

/// How the output becomes a score.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OutputKind {
    /// Autoencoder: the mean squared error between the (normalised) input and the output.
    #[default]
    Reconstruction,
    /// The model outputs one value, the score.
    Score,
}

/// Alert thresholds with hysteresis: raised after the score stays at or above `raise` for
/// `min_duration_s`, cleared after it stays below `clear` as long.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    pub raise: f64,
    pub clear: f64,
    #[serde(default)]
    pub min_duration_s: u64,
}

/// A detector whose files have been read: what the stage runs.
#[derive(Debug, Clone)]
pub struct Detector {
    pub cfg: DetectorConfig,
    pub model_path: PathBuf,
    pub norm: NormValues,
}

impl Detector {
    pub fn input_len(&self) -> usize {
        self.cfg.inputs.len() * self.cfg.window_samples
    }
    pub fn output_len(&self) -> usize {
        match self.cfg.output {
            OutputKind::Reconstruction => self.input_len(),
            OutputKind::Score => 1,
        }
    }
    /// The `(device, point)` inputs of one group.
    pub fn inputs_for(&self, group: Option<&str>) -> Vec<(String, String)> {
        self.cfg
            .inputs
            .iter()
            .map(|i| {
                let s = match group {
                    Some(g) => i.replace("{group}", g),
                    None => i.clone(),
                };
                let (d, p) = s.rsplit_once('/').unwrap_or(("", &s));
                (d.to_string(), p.to_string())
            })
            .collect()
    }
}

/// Validate one detector and read its normalisation: problems as `(key, message)`, the key
/// relative to the detector's YAML path.
pub fn resolve(cfg: DetectorConfig, base: &Path) -> Result<Detector, Vec<(&'static str, String)>> {
    let mut e = Vec::new();
    if cfg.name.is_empty() {
        e.push(("name", "must not be empty".to_string()));
    }
    if cfg.inputs.is_empty() {
        e.push(("inputs", "needs at least one `device/point`".to_string()));
    }
    for i in &cfg.inputs {
        if !i.contains('/') {
            e.push(("inputs", format!("`{i}` is not `device/point`")));
        }
        if i.contains("{group}") && cfg.groups.is_empty() {
            e.push((
                "groups",
                format!("`{i}` uses {{group}} but no groups are listed"),
            ));
        }
    }
    if cfg.window_samples == 0 {
        e.push(("window_samples", "must be at least 1".to_string()));
    }
    if cfg.period_s == 0 {
        e.push(("period_s", "must be at least 1".to_string()));
    }
    let t = cfg.threshold;
    if !(t.raise.is_finite() && t.clear.is_finite()) || t.clear > t.raise {
        e.push(("threshold", "needs finite `clear` ≤ `raise`".to_string()));
    }
    let norm = match &cfg.normalisation {
        Normalisation::Inline(v) => Some(v.clone()),
        Normalisation::File(f) => {
            let p = base.join(f);
            match std::fs::read_to_string(&p) {
                Err(err) => {
                    e.push((
                        "normalisation",
                        format!("cannot read `{}`: {err}", p.display()),
                    ));
                    None
                }
                Ok(s) => match serde_json::from_str::<NormValues>(&s) {
                    Ok(v) => Some(v),
                    Err(err) => {
                        e.push(("normalisation", format!("`{}`: {err}", p.display())));
                        None
                    }
                },
            }
        }
    };
    if let Some(n) = &norm {
        let k = cfg.inputs.len();
        if n.mean.len() != k || n.std.len() != k {
            e.push((
                "normalisation",
                format!(
                    "has {} means and {} stds for {k} inputs",
                    n.mean.len(),
                    n.std.len()
                ),
            ));
        } else if n.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            e.push(("normalisation", "every std must be positive".to_string()));
        }
    }
    if !e.is_empty() {
        return Err(e);
    }
    Ok(Detector {
        model_path: base.join(&cfg.model),
        norm: norm.expect("checked above"),
        cfg,
    })
}
