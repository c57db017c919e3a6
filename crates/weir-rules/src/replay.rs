//! `weir rules test`: run the configured rules over recorded readings, offline, and print what they
//! would do — changes, drops, derived readings, alerts, commands and script errors.
//!
//! Input is JSON Lines, one reading per line (blank lines and lines starting with `#` are skipped):
//!
//! ```json
//! {"device":"gh1/climate","point":"temperature","value":29.5,"unit":"°C","ts":"2026-06-01T12:00:00Z"}
//! ```
//!
//! `ts` is RFC 3339 or integer nanoseconds; without it a reading takes the previous reading's time
//! (the first: now). `quality` (`good`, `uncertain`, `bad`), `reason` and `source` (default `replay`)
//! are optional. Time is the readings' time: timer rules are ticked once for every new second of
//! reading time, so `every("1m")` fires as it would have live.
//!
//! Invariants: nothing is sent anywhere (commands are only printed); the output is a pure function
//! of the rules and the input.

use std::io::{BufRead, Write};
use std::sync::Arc;

use weir_core::{Quality, Reading, Timestamp, Transform, Value};

use crate::config::RuleSet;
use crate::stage::{Event, RulesStage};

/// Why a replay stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("input line {line}: {message}")]
    Input { line: usize, message: String },
}

/// Totals of a replay.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub readings: usize,
    pub passed: usize,
    pub changed: usize,
    pub dropped: usize,
    pub emitted: usize,
    pub alerts: usize,
    pub commands: usize,
    pub errors: usize,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct InputReading {
    device: String,
    point: String,
    value: serde_json::Value,
    unit: Option<String>,
    ts: Option<serde_json::Value>,
    quality: Option<String>,
    reason: Option<String>,
    source: Option<String>,
}

/// Parse one input line; `prev_ts` stands in for a missing `ts`.
pub fn parse_line(line: &str, prev_ts: Timestamp) -> Result<Reading, String> {
    let r: InputReading = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let value = match &r.value {
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::String(s) => Value::Str(Arc::from(s.as_str())),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) if !n.is_f64() => Value::I64(i),
            _ => Value::F64(n.as_f64().ok_or("value: not a finite number")?),
        },
        other => {
            return Err(format!(
                "value must be a number, bool or string, not {other}"
            ))
        }
    };
    let ts = match &r.ts {
        None => prev_ts,
        Some(serde_json::Value::Number(n)) => {
            Timestamp(n.as_i64().ok_or("ts: integer nanoseconds expected")?)
        }
        Some(serde_json::Value::String(s)) => {
            let t = humantime::parse_rfc3339_weak(s).map_err(|e| format!("ts `{s}`: {e}"))?;
            let d = t
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(|_| format!("ts `{s}` is before 1970"))?;
            Timestamp(d.as_nanos() as i64)
        }
        Some(other) => return Err(format!("ts must be RFC 3339 or nanoseconds, not {other}")),
    };
    let quality = match r.quality.as_deref().unwrap_or("good") {
        "good" => Quality::Good,
        "uncertain" => Quality::Uncertain(Arc::from(r.reason.as_deref().unwrap_or(""))),
        "bad" => Quality::Bad(Arc::from(r.reason.as_deref().unwrap_or(""))),
        q => return Err(format!("quality `{q}`: use good, uncertain or bad")),
    };
    Ok(Reading {
        device: r.device.as_str().into(),
        point: r.point.as_str().into(),
        value,
        unit: r.unit.map(|u| Arc::from(u.as_str())),
        ts,
        quality,
        source: Arc::from(r.source.as_deref().unwrap_or("replay")),
    })
}

fn fmt_value(v: &Value) -> String {
    match v {
        Value::F64(x) => format!("{x}"),
        Value::I64(x) => format!("{x}"),
        Value::Bool(b) => format!("{b}"),
        Value::Str(s) => format!("{s:?}"),
    }
}

fn fmt_reading(r: &Reading) -> String {
    let mut s = format!("{} {} = {}", r.device, r.point, fmt_value(&r.value));
    if let Some(u) = &r.unit {
        s.push(' ');
        s.push_str(u);
    }
    if r.quality != Quality::Good {
        s.push_str(&format!(" ({})", r.quality.as_str()));
    }
    s
}

fn ts_str(ts: Timestamp) -> String {
    humantime::format_rfc3339_millis(ts.to_system_time()).to_string()
}

fn print_events(
    out: &mut impl Write,
    events: Vec<Event>,
    sum: &mut Summary,
) -> std::io::Result<()> {
    for e in events {
        match e {
            Event::Changed { rule, reading } => {
                sum.changed += 1;
                writeln!(out, "  [{rule}] change  {}", fmt_reading(&reading))?;
            }
            Event::Dropped { rule } => {
                sum.dropped += 1;
                writeln!(out, "  [{rule}] drop")?;
            }
            Event::Emitted { rule, reading } => {
                sum.emitted += 1;
                writeln!(out, "  [{rule}] emit    {}", fmt_reading(&reading))?;
            }
            Event::Alert {
                rule,
                device,
                name,
                severity,
                message,
                raised,
            } => {
                sum.alerts += 1;
                if raised {
                    writeln!(
                        out,
                        "  [{rule}] alert   {device} {name} ({severity}): {message}"
                    )?;
                } else {
                    writeln!(out, "  [{rule}] clear   {device} {name}")?;
                }
            }
            Event::Command {
                rule,
                device,
                point,
                value,
                ..
            } => {
                sum.commands += 1;
                writeln!(
                    out,
                    "  [{rule}] command {device} {point} <- {}",
                    fmt_value(&value)
                )?;
            }
            Event::Error { rule, message } => {
                sum.errors += 1;
                writeln!(out, "  [{rule}] ERROR   {message}")?;
            }
        }
    }
    Ok(())
}

/// Run `set` over the readings in `input`, printing each reading and what the rules did with it.
pub fn replay(
    set: RuleSet,
    input: impl BufRead,
    out: &mut impl Write,
) -> Result<Summary, ReplayError> {
    let mut stage = RulesStage::offline(set);
    let mut sum = Summary::default();
    let mut prev = Timestamp::now();
    let mut last_tick_s: Option<i64> = None;
    for (n, line) in input.lines().enumerate() {
        let line = line?;
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let reading = parse_line(t, prev).map_err(|message| ReplayError::Input {
            line: n + 1,
            message,
        })?;
        prev = reading.ts;
        let second = reading.ts.as_nanos().div_euclid(1_000_000_000);
        if last_tick_s.is_none_or(|s| second > s) {
            last_tick_s = Some(second);
            let mut ticked = Vec::new();
            stage.tick(reading.ts, &mut ticked);
            let events = stage.take_trace();
            if !events.is_empty() {
                writeln!(out, "{} timers", ts_str(reading.ts))?;
                print_events(out, events, &mut sum)?;
            }
        }
        writeln!(out, "{} {}", ts_str(reading.ts), fmt_reading(&reading))?;
        sum.readings += 1;
        let mut batch = vec![reading];
        stage.process(&mut batch);
        sum.passed += batch
            .iter()
            .filter(|r| !r.source.starts_with(crate::DERIVED_SOURCE_PREFIX))
            .count();
        print_events(out, stage.take_trace(), &mut sum)?;
    }
    writeln!(
        out,
        "{} readings: {} passed, {} changed, {} dropped; {} emitted, {} alert edges, {} commands, {} errors",
        sum.readings, sum.passed, sum.changed, sum.dropped, sum.emitted, sum.alerts, sum.commands, sum.errors
    )?;
    Ok(sum)
}
