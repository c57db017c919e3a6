//! `weir rules infer`: the detectors over recorded readings, offline, printing every score and
//! every alert, so thresholds can be tuned on a site's own data before deploying.
//!
//! Input is the JSON Lines of `weir rules test` (one reading per line; the caller passes its line
//! parser). Time is the readings' time: after each reading the stage is ticked at that reading's
//! time, so periods close as they would live. Output, one line each:
//!
//! ```text
//! 2026-06-01T12:08:00Z gh1/climate anomaly_score 0.0004
//! 2026-06-01T12:09:00Z gh1/climate anomaly_score not scored: no reading of gh1/climate/light in a period
//! 2026-06-01T12:31:00Z ALERT climate gh1/climate raised: climate unlike normal: …
//! ```

use std::io::{BufRead, Write};

use weir_core::{Batch, Event, Metrics, Reading, Timestamp, Transform, Value};

use crate::stage::{InferenceBuilder, InferenceStage};

/// Replay failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("line {line}: {message}")]
    Line { line: usize, message: String },
    #[error(transparent)]
    Model(#[from] crate::ModelError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

fn rfc3339(ts: Timestamp) -> String {
    humantime::format_rfc3339_seconds(ts.to_system_time()).to_string()
}

/// Run every detector of `b` over `input`; returns (scored windows, alerts raised).
pub fn replay(
    b: &InferenceBuilder,
    input: impl BufRead,
    parse: impl Fn(&str, Timestamp) -> Result<Reading, String>,
    out: &mut impl Write,
) -> Result<(u64, u64), ReplayError> {
    let mut stage = InferenceStage::new(&b.detectors, &Metrics::new())?;
    let mut prev = Timestamp::now();
    let (mut scored, mut raised) = (0u64, 0u64);
    let mut events = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let r = parse(t, prev).map_err(|message| ReplayError::Line {
            line: i + 1,
            message,
        })?;
        prev = r.ts;
        let mut batch: Batch = vec![r];
        stage.process(&mut batch);
        stage.tick(prev, &mut batch);
        stage.take_events(&mut events);
        for r in batch.iter().filter(|r| r.point.as_str() == "anomaly_score") {
            match &r.value {
                Value::F64(v) => {
                    scored += 1;
                    writeln!(out, "{} {} anomaly_score {v:.4}", rfc3339(r.ts), r.device)?
                }
                other => writeln!(out, "{} {} anomaly_score {other}", rfc3339(r.ts), r.device)?,
            }
        }
        for e in events.drain(..) {
            if let Event::Alert(a) = e {
                raised += u64::from(a.active);
                let what = if a.active { "raised" } else { "cleared" };
                writeln!(
                    out,
                    "{} ALERT {} {} {what}{}{}",
                    rfc3339(a.ts),
                    a.name,
                    a.device,
                    if a.message.is_empty() { "" } else { ": " },
                    a.message
                )?;
            }
        }
    }
    writeln!(out, "# {scored} windows scored, {raised} alerts raised")?;
    Ok((scored, raised))
}
