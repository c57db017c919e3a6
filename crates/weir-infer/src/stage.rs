//! The `inference` stage: readings → resampled windows → model → score reading and alerts.
//!
//! Resampling: time is cut into periods of `period_s` (slot `k` covers
//! `[k·period, (k+1)·period)` of reading time). The last reading of each input in a slot is its
//! sample. A slot closes when a reading of a later slot arrives for the same detector instance,
//! or on `tick` once the wall clock is two periods past it, so an input that stops entirely turns
//! into gaps instead of freezing the detector. A slot missing an input, or holding a reading of
//! bad quality or a non-numeric value, is a gap; a window (the last `window_samples` slots) with a
//! gap is not scored: the `anomaly_score` reading is then `bad` quality, its reason says why, and
//! `weir_inference_unscored_total` counts it. Late readings (an older slot) are dropped and counted.
//!
//! Output per scored window: a reading `<device of the first input>/anomaly_score` (float) at the
//! window's end, and, through the alert path the rules use, an [`Alert`] named after the detector,
//! raised and cleared with hysteresis ([`crate::config::Threshold`]).
//!
//! A model that fails at run time disables its detector (logged, `weir_inference_disabled_total`),
//! never the pipeline. Restarts start cold (the window refills; logged once per instance).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use weir_core::{
    Alert, Batch, BuildError, Counter, DeviceId, Event, Metrics, PointId, Quality, Reading,
    StageBuilder, StageContext, Timestamp, Transform, Value,
};

use crate::config::{Detector, OutputKind};
use crate::model::{Model, ModelError};

const NS: i64 = 1_000_000_000;

/// Which (instance, input) each `(device, point)` feeds.
type Routes = HashMap<(DeviceId, PointId), Vec<(usize, usize)>>;

/// The stage's configuration: detectors with their files read.
#[derive(Debug, Clone, Default)]
pub struct InferenceBuilder {
    pub detectors: Vec<Detector>,
}

impl StageBuilder for InferenceBuilder {
    fn name(&self) -> &'static str {
        "inference"
    }
    fn build(&self, ctx: &StageContext) -> Result<Box<dyn Transform>, BuildError> {
        let stage = InferenceStage::new(&self.detectors, &ctx.metrics).map_err(|e| BuildError {
            source_name: "inference".into(),
            message: e.to_string(),
        })?;
        Ok(Box::new(stage))
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

struct Running {
    det: Detector,
    model: Option<Model>,
    input: Vec<f32>,
    output: Vec<f32>,
    scored: Counter,
    unscored: Counter,
    disabled: Counter,
    micros: Counter,
}

struct Instance {
    det: usize,
    score_device: DeviceId,
    labels: Vec<String>,
    slot: Option<i64>,
    current: Vec<Option<f64>>,
    why: Option<String>,
    window: VecDeque<Result<Vec<f64>, String>>,
    active: bool,
    pending_since: Option<Timestamp>,
    warm_logged: bool,
}

/// The running stage.
pub struct InferenceStage {
    running: Vec<Running>,
    instances: Vec<Instance>,
    by_point: Routes,
    events: Vec<Event>,
    late: Counter,
    source: Arc<str>,
}

impl std::fmt::Debug for InferenceStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InferenceStage")
            .field("detectors", &self.running.len())
            .field("instances", &self.instances.len())
            .finish()
    }
}

impl InferenceStage {
    /// Load every detector's model (an error names the first that does not load).
    pub fn new(detectors: &[Detector], metrics: &Metrics) -> Result<Self, ModelError> {
        let mut running = Vec::new();
        let mut instances = Vec::new();
        let mut by_point = Routes::new();
        for (di, det) in detectors.iter().enumerate() {
            let model = Model::load(&det.model_path, det.input_len(), det.output_len())?;
            let l = [("detector", det.cfg.name.as_str())];
            running.push(Running {
                input: vec![0.0; det.input_len()],
                output: vec![0.0; det.output_len()],
                model: Some(model),
                scored: metrics.counter("weir_inference_windows_total", &l),
                unscored: metrics.counter("weir_inference_unscored_total", &l),
                disabled: metrics.counter("weir_inference_disabled_total", &l),
                micros: metrics.counter("weir_inference_micros_total", &l),
                det: det.clone(),
            });
            let groups: Vec<Option<&str>> = if det.cfg.groups.is_empty() {
                vec![None]
            } else {
                det.cfg.groups.iter().map(|g| Some(g.as_str())).collect()
            };
            for g in groups {
                let inputs = det.inputs_for(g);
                let ii = instances.len();
                for (k, (d, p)) in inputs.iter().enumerate() {
                    by_point
                        .entry((DeviceId::new(d), PointId::new(p)))
                        .or_default()
                        .push((ii, k));
                }
                instances.push(Instance {
                    det: di,
                    score_device: DeviceId::new(&inputs[0].0),
                    labels: inputs.iter().map(|(d, p)| format!("{d}/{p}")).collect(),
                    slot: None,
                    current: vec![None; inputs.len()],
                    why: None,
                    window: VecDeque::with_capacity(det.cfg.window_samples + 1),
                    active: false,
                    pending_since: None,
                    warm_logged: false,
                });
            }
        }
        Ok(InferenceStage {
            running,
            instances,
            by_point,
            events: Vec::new(),
            late: metrics.counter("weir_inference_late_total", &[]),
            source: Arc::from("inference"),
        })
    }

    fn period_ns(&self, ii: usize) -> i64 {
        self.running[self.instances[ii].det].det.cfg.period_s as i64 * NS
    }

    /// Close slots until `target` is the open one.
    fn advance(&mut self, ii: usize, target: i64, out: &mut Batch) {
        let n = self.running[self.instances[ii].det].det.cfg.window_samples as i64;
        let Some(mut slot) = self.instances[ii].slot else {
            self.instances[ii].slot = Some(target);
            return;
        };
        if target - slot > n + 1 {
            // A long silence: every slot in between is a gap; the window is all gaps.
            let inst = &mut self.instances[ii];
            inst.window.clear();
            inst.current.iter_mut().for_each(|c| *c = None);
            inst.why = None;
            slot = target - n - 1;
            inst.slot = Some(slot);
        }
        while slot < target {
            self.close(ii, slot, out);
            slot += 1;
            self.instances[ii].slot = Some(slot);
        }
    }

    fn close(&mut self, ii: usize, slot: i64, out: &mut Batch) {
        let period = self.period_ns(ii);
        let inst = &mut self.instances[ii];
        let r = &mut self.running[inst.det];
        let n = r.det.cfg.window_samples;
        let sample = match (
            inst.why.take(),
            inst.current.iter().position(|c| c.is_none()),
        ) {
            (Some(why), _) => Err(why),
            (None, Some(k)) => Err(format!("no reading of {} in a period", inst.labels[k])),
            (None, None) => Ok(inst.current.iter().map(|c| c.unwrap_or(0.0)).collect()),
        };
        inst.current.iter_mut().for_each(|c| *c = None);
        inst.window.push_back(sample);
        if inst.window.len() > n {
            inst.window.pop_front();
        }
        if inst.window.len() < n {
            return;
        }
        let ts = Timestamp((slot + 1) * period);
        let Some(model) = r.model.as_mut() else {
            return;
        };
        if let Some(why) = inst.window.iter().find_map(|s| s.as_ref().err()) {
            r.unscored.inc();
            let why: Arc<str> = Arc::from(format!("not scored: {why}"));
            out.push(Reading {
                device: inst.score_device.clone(),
                point: PointId::new("anomaly_score"),
                value: Value::Str(why.clone()),
                unit: None,
                ts,
                quality: Quality::Bad(why),
                source: self.source.clone(),
            });
            return;
        }
        if !inst.warm_logged {
            inst.warm_logged = true;
            tracing::info!(detector = %r.det.cfg.name, device = %inst.score_device,
                "first full window: scoring starts (cold start, no saved window)");
        }
        let k = inst.labels.len();
        for (s, sample) in inst.window.iter().enumerate() {
            let v = sample.as_ref().expect("no gaps");
            for (i, x) in v.iter().enumerate() {
                r.input[s * k + i] = ((x - r.det.norm.mean[i]) / r.det.norm.std[i]) as f32;
            }
        }
        let t0 = Instant::now();
        if let Err(e) = model.run(&r.input, &mut r.output) {
            tracing::error!(detector = %r.det.cfg.name, error = %e, "model failed: detector disabled");
            r.disabled.inc();
            r.model = None;
            return;
        }
        r.micros.add(t0.elapsed().as_micros() as u64);
        r.scored.inc();
        let score = match r.det.cfg.output {
            OutputKind::Reconstruction => {
                r.input
                    .iter()
                    .zip(&r.output)
                    .map(|(a, b)| ((a - b) as f64).powi(2))
                    .sum::<f64>()
                    / r.input.len() as f64
            }
            OutputKind::Score => r.output[0] as f64,
        };
        out.push(Reading {
            device: inst.score_device.clone(),
            point: PointId::new("anomaly_score"),
            value: Value::F64(score),
            unit: None,
            ts,
            quality: Quality::Good,
            source: self.source.clone(),
        });
        let t = r.det.cfg.threshold;
        let crossing = if inst.active {
            score < t.clear
        } else {
            score >= t.raise
        };
        if !crossing {
            inst.pending_since = None;
            return;
        }
        let since = *inst.pending_since.get_or_insert(ts);
        if ts.0 - since.0 < t.min_duration_s as i64 * NS {
            return;
        }
        inst.pending_since = None;
        inst.active = !inst.active;
        let name: Arc<str> = Arc::from(r.det.cfg.name.as_str());
        self.events.push(Event::Alert(Alert {
            device: inst.score_device.clone(),
            name: name.clone(),
            active: inst.active,
            severity: Arc::from("warning"),
            message: Arc::from(if inst.active {
                format!(
                    "climate unlike normal: anomaly score {score:.3} ≥ {} for {} s",
                    t.raise, t.min_duration_s
                )
            } else {
                String::new()
            }),
            by: name,
            ts,
        }));
    }
}

impl Transform for InferenceStage {
    fn name(&self) -> &str {
        "inference"
    }

    fn process(&mut self, batch: &mut Batch) {
        if self.instances.is_empty() {
            return;
        }
        let mut out = Batch::new();
        for r in batch.iter() {
            let key = (r.device.clone(), r.point.clone());
            let Some(targets) = self.by_point.get(&key).cloned() else {
                continue;
            };
            let (ts, value, quality) = (r.ts, r.value.as_f64(), r.quality.clone());
            for (ii, k) in targets {
                let slot = ts.0.div_euclid(self.period_ns(ii));
                match self.instances[ii].slot {
                    Some(open) if slot < open => {
                        self.late.inc();
                        continue;
                    }
                    _ => self.advance(ii, slot, &mut out),
                }
                let inst = &mut self.instances[ii];
                match (&quality, value) {
                    (Quality::Bad(why), _) => {
                        inst.why = Some(format!("bad reading of {}: {why}", inst.labels[k]));
                    }
                    (_, None) => {
                        inst.why = Some(format!("{} is not numeric", inst.labels[k]));
                    }
                    (_, Some(v)) => inst.current[k] = Some(v),
                }
            }
        }
        batch.extend(out);
    }

    fn tick(&mut self, now: Timestamp, out: &mut Batch) {
        for ii in 0..self.instances.len() {
            let Some(open) = self.instances[ii].slot else {
                continue;
            };
            let now_slot = now.0.div_euclid(self.period_ns(ii));
            if now_slot - 1 > open {
                self.advance(ii, now_slot - 1, out);
            }
        }
    }

    fn take_events(&mut self, out: &mut Vec<Event>) {
        out.append(&mut self.events);
    }
}
