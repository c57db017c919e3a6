//! Simulated greenhouse devices: the built-in demo and the load generator.
//!
//! Each greenhouse `gh<N>` has
//! * `gh<N>/climate` — `temperature` (°C), `humidity` (%), `light` (lx), following a day/night curve
//!   with noise;
//! * `gh<N>/bed<M>` — `moisture` (%), drying (faster in sunlight), raised while irrigation runs;
//! * `gh<N>/actuators` — `vent` (bool), `irrigation` (bool), `shade` (0–100 %), all writable: a
//!   command changes the simulated state (an open vent cools the air) and the new state is reported
//!   as a reading.
//!
//! The model, in simulated time (a day lasts `day_length_s` of real time; the clock starts at
//! `start_hour`, or follows the wall clock): `sun` = sin over the day, -1 at midnight, +1 at noon.
//! * temperature = night + (noon − night)·(sun + 1)/2, minus [`VENT_COOLING_C`] while the vent is
//!   open, minus [`SHADE_COOLING_C`]·shade/100, ± 0.2 noise;
//! * light = 55,000 lx · max(sun, 0) · (1 − [`SHADE_LIGHT_CUT`]·shade/100), ± 50 noise, in whole lux
//!   (the other points to hundredths);
//! * moisture falls by `drying_pct_per_h` per simulated hour at noon (half of it at night) and
//!   rises by `irrigation_pct_per_h` while irrigation runs, kept within 5–95 %, ± 0.3 noise.
//!
//! The effects are smaller than the greenhouse example's hysteresis bands (an open vent takes
//! 1.5 °C off, the 24–26 °C band is 2 °C wide; a 60 % shade takes 30 % off the light, the
//! 25,000–40,000 lx band is 37.5 % wide), so the rules do not chatter.
//!
//! Rate: every sensor point is reported once per `interval_ms`, or, when `readings_per_s` is set,
//! points are reported round-robin at that total rate (the load generator). Readings leave in one
//! batch per tick (`tick_ms`), at most `max_batch` readings each. The simulator is a polling
//! source: when the bus is full it waits, so it measures the pipeline rather than overrunning it.
//! With `total_readings` it stops producing after that many sensor readings (tests count them).

use std::f64::consts::PI;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use weir_core::{
    BuildError, Command, DeviceId, DeviceInfo, Metrics, PointId, Quality, Reading, Source,
    SourceBuilder, SourceContext, SourceError, Timestamp, Value,
};

/// `sources: - sim: {…}`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    /// Number of greenhouses (`gh1` … `ghN`).
    #[serde(default = "one")]
    pub greenhouses: u32,
    /// Soil-moisture beds per greenhouse.
    #[serde(default = "four")]
    pub beds: u32,
    /// Each sensor point reports once per interval.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// Total sensor readings per second across all points (overrides `interval_ms`).
    pub readings_per_s: Option<f64>,
    /// Scheduling granularity: one batch per tick.
    #[serde(default = "default_tick_ms")]
    pub tick_ms: u64,
    /// Readings per batch at most.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Stop producing after this many sensor readings.
    pub total_readings: Option<u64>,
    /// Length of the simulated day; shorter than 86400 speeds the day/night curve up for demos.
    #[serde(default = "default_day_length_s")]
    pub day_length_s: u64,
    /// Seed for the noise; default: from the clock.
    pub seed: Option<u64>,
    /// Greenhouse id prefix (`gh` → `gh1`, `gh2`, …); may have levels (`site/north/gh`).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Simulated time of day when the source starts, in hours (0 ≤ h < 24; `6.5` is 06:30).
    /// Absent: the simulated day follows the wall clock (aligned to the Unix epoch).
    pub start_hour: Option<f64>,
    /// Air temperature at midnight with the vent closed and no shade.
    #[serde(default = "default_night_temperature_c")]
    pub night_temperature_c: f64,
    /// Air temperature at noon with the vent closed and no shade.
    #[serde(default = "default_noon_temperature_c")]
    pub noon_temperature_c: f64,
    /// Soil moisture of every bed at start.
    #[serde(default = "default_start_moisture_pct")]
    pub start_moisture_pct: f64,
    /// Soil moisture lost per simulated hour at noon (half of it at night).
    #[serde(default = "default_drying_pct_per_h")]
    pub drying_pct_per_h: f64,
    /// Soil moisture gained per simulated hour while irrigation runs.
    #[serde(default = "default_irrigation_pct_per_h")]
    pub irrigation_pct_per_h: f64,
    /// Faults to inject (the anomaly detectors' tests, evaluation and demo). Default: none.
    #[serde(default)]
    pub faults: Vec<Fault>,
}

/// One injected fault: in greenhouse `greenhouse` (1-based), from `start_s` real seconds after the
/// source's first reading, for `duration_s` seconds.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    pub greenhouse: u32,
    pub kind: FaultKind,
    pub start_s: f64,
    pub duration_s: f64,
}

/// What goes wrong (scripts/train-anomaly/greenhouse.py simulates the same faults for training and
/// evaluation).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// The vent reports what it was told but does not move: no cooling, no drier air.
    StuckVent,
    /// The heater fails: nights fall up to 6 °C below normal (scaled by how dark it is).
    Heater,
    /// The temperature sensor drifts upwards by 1.5 °C per simulated hour.
    Drift,
    /// Every 7th temperature reading is 8 °C too high.
    Spikes,
}

/// Degrees an open vent takes off the air temperature.
pub const VENT_COOLING_C: f64 = 1.5;
/// Degrees a fully closed shade takes off the air temperature (proportional to the shade).
pub const SHADE_COOLING_C: f64 = 2.0;
/// Fraction of the light a fully closed shade cuts (proportional to the shade).
pub const SHADE_LIGHT_CUT: f64 = 0.5;

fn one() -> u32 {
    1
}
fn four() -> u32 {
    4
}
fn default_interval_ms() -> u64 {
    1000
}
fn default_tick_ms() -> u64 {
    10
}
fn default_max_batch() -> usize {
    1000
}
fn default_day_length_s() -> u64 {
    86_400
}
fn default_prefix() -> String {
    "gh".into()
}
fn default_night_temperature_c() -> f64 {
    11.0
}
fn default_noon_temperature_c() -> f64 {
    25.0
}
fn default_start_moisture_pct() -> f64 {
    45.0
}
fn default_drying_pct_per_h() -> f64 {
    1.0
}
fn default_irrigation_pct_per_h() -> f64 {
    20.0
}

impl SimConfig {
    /// Problems with the values (the caller adds the YAML path).
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut e = Vec::new();
        if self.greenhouses == 0 {
            e.push(("greenhouses", "must be at least 1".to_string()));
        }
        if self.interval_ms == 0 {
            e.push(("interval_ms", "must be at least 1".to_string()));
        }
        if let Some(r) = self.readings_per_s {
            if !(r > 0.0 && r.is_finite()) {
                e.push(("readings_per_s", format!("{r} must be a positive number")));
            }
        }
        if self.tick_ms == 0 {
            e.push(("tick_ms", "must be at least 1".to_string()));
        }
        if self.max_batch == 0 {
            e.push(("max_batch", "must be at least 1".to_string()));
        }
        if self.day_length_s == 0 {
            e.push(("day_length_s", "must be at least 1".to_string()));
        }
        // `site/north/gh` is fine: device ids may have any depth (`site/north/gh1/climate`).
        if weir_core::validate_device_id(&format!("{}1", self.prefix)).is_err()
            || self.prefix.ends_with('/')
        {
            e.push((
                "prefix",
                "must be non-empty, without `+`, `#` or an empty level (`a//b`, a leading or \
                 trailing `/`)"
                    .to_string(),
            ));
        }
        if let Some(h) = self.start_hour {
            if !(0.0..24.0).contains(&h) {
                e.push(("start_hour", format!("{h} must be 0 or more and below 24")));
            }
        }
        for (key, v) in [
            ("night_temperature_c", self.night_temperature_c),
            ("noon_temperature_c", self.noon_temperature_c),
        ] {
            if !(-50.0..=80.0).contains(&v) {
                e.push((key, format!("{v} must be -50 … 80")));
            }
        }
        if self.night_temperature_c > self.noon_temperature_c {
            e.push((
                "noon_temperature_c",
                "must not be below night_temperature_c".to_string(),
            ));
        }
        for f in &self.faults {
            if f.greenhouse == 0 || f.greenhouse > self.greenhouses {
                e.push((
                    "faults",
                    format!(
                        "greenhouse {} is not 1 … {}",
                        f.greenhouse, self.greenhouses
                    ),
                ));
            }
            if !(f.start_s >= 0.0 && f.duration_s > 0.0) {
                e.push((
                    "faults",
                    "start_s must be ≥ 0 and duration_s > 0".to_string(),
                ));
            }
        }
        if !(0.0..=100.0).contains(&self.start_moisture_pct) {
            e.push(("start_moisture_pct", "must be 0 … 100".to_string()));
        }
        for (key, v) in [
            ("drying_pct_per_h", self.drying_pct_per_h),
            ("irrigation_pct_per_h", self.irrigation_pct_per_h),
        ] {
            if !(0.0..=1000.0).contains(&v) {
                e.push((key, format!("{v} must be 0 … 1000")));
            }
        }
        e
    }

    fn gh(&self, g: u32) -> String {
        format!("{}{g}", self.prefix)
    }
}

const ACTUATOR_POINTS: [&str; 3] = ["vent", "irrigation", "shade"];

impl SourceBuilder for SimConfig {
    fn kind(&self) -> &'static str {
        "sim"
    }

    fn devices(&self) -> Vec<DeviceInfo> {
        (1..=self.greenhouses)
            .map(|g| DeviceInfo {
                device: DeviceId::from(format!("{}/actuators", self.gh(g))),
                writable_points: ACTUATOR_POINTS.iter().map(|p| PointId::new(p)).collect(),
            })
            .collect()
    }

    /// Every simulated device with its points, units, class hints and the period each point
    /// reports at (so a stalled simulator shows as stale), actuators writable.
    fn device_specs(&self) -> Vec<weir_core::DeviceSpec> {
        use weir_core::{DeviceSpec, PointSpec, ValueType};
        let sensors = self.greenhouses as u64 * (3 + self.beds as u64);
        let period_ms = match self.readings_per_s {
            Some(r) if r > 0.0 => (sensors as f64 * 1000.0 / r).ceil().max(1.0) as u64,
            _ => self.interval_ms,
        };
        let sensor = |name: &str, unit: &str, class: &str| {
            PointSpec::new(name)
                .unit(Some(unit))
                .value_type(ValueType::Float)
                .class(Some(class))
                .period_ms(Some(period_ms))
        };
        let mut out = Vec::new();
        for g in 1..=self.greenhouses {
            out.push(
                DeviceSpec::new(format!("{}/climate", self.gh(g)))
                    .point(sensor("temperature", "°C", "temperature"))
                    .point(sensor("humidity", "%", "humidity"))
                    .point(sensor("light", "lx", "illuminance")),
            );
            for b in 1..=self.beds {
                out.push(
                    DeviceSpec::new(format!("{}/bed{b}", self.gh(g)))
                        .point(sensor("moisture", "%", "moisture")),
                );
            }
            let mut act = DeviceSpec::new(format!("{}/actuators", self.gh(g)));
            for p in ACTUATOR_POINTS {
                let (t, class) = if p == "shade" {
                    (ValueType::Float, "shade")
                } else {
                    (ValueType::Bool, "switch")
                };
                act = act.point(
                    PointSpec::new(p)
                        .writable(true)
                        .value_type(t)
                        .class(Some(class)),
                );
            }
            out.push(act);
        }
        for d in &mut out {
            d.meta.manufacturer = Some("Weir".into());
            d.meta.model = Some("greenhouse simulator".into());
        }
        out
    }

    fn build(&self, name: &str, _metrics: &Metrics) -> Result<Box<dyn Source>, BuildError> {
        if let Some((key, msg)) = self.validate().into_iter().next() {
            return Err(BuildError {
                source_name: name.to_string(),
                message: format!("{key}: {msg}"),
            });
        }
        Ok(Box::new(Greenhouse::new(self.clone(), name)))
    }
}

/// One sensor point's identity.
struct Point {
    device: DeviceId,
    point: PointId,
    unit: Arc<str>,
    gh: usize,
    kind: Kind,
}

#[derive(Clone, Copy)]
enum Kind {
    Temperature,
    Humidity,
    Light,
    Moisture(usize),
}

#[derive(Default, Clone)]
struct GhState {
    vent: bool,
    irrigation: bool,
    shade: f64,
    moisture: Vec<f64>,
    /// When each bed's moisture was last advanced (ns).
    moisture_at: Vec<Option<i64>>,
}

/// The running simulator.
pub struct Greenhouse {
    cfg: SimConfig,
    source: Arc<str>,
    points: Vec<Point>,
    state: Vec<GhState>,
    actuator_ids: Vec<DeviceId>,
    rng: SmallRng,
    cursor: usize,
    produced: u64,
    /// Time of the first sample (ns): the simulated clock's `start_hour`.
    started_at: Option<i64>,
    /// Time of the first sample (ns), for the faults' start times.
    first_sample: Option<i64>,
    /// Temperature readings so far (the `spikes` fault hits every 7th).
    temperature_count: u64,
}

impl std::fmt::Debug for Greenhouse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Greenhouse")
            .field("source", &self.source)
            .field("points", &self.points.len())
            .field("produced", &self.produced)
            .finish()
    }
}

impl Greenhouse {
    pub fn new(cfg: SimConfig, name: &str) -> Self {
        let mut points = Vec::new();
        let mut state = Vec::new();
        let mut actuator_ids = Vec::new();
        for g in 1..=cfg.greenhouses {
            let gh = (g - 1) as usize;
            let climate = DeviceId::from(format!("{}/climate", cfg.gh(g)));
            for (p, unit, kind) in [
                ("temperature", "°C", Kind::Temperature),
                ("humidity", "%", Kind::Humidity),
                ("light", "lx", Kind::Light),
            ] {
                points.push(Point {
                    device: climate.clone(),
                    point: PointId::new(p),
                    unit: Arc::from(unit),
                    gh,
                    kind,
                });
            }
            for b in 1..=cfg.beds {
                points.push(Point {
                    device: DeviceId::from(format!("{}/bed{b}", cfg.gh(g))),
                    point: PointId::new("moisture"),
                    unit: Arc::from("%"),
                    gh,
                    kind: Kind::Moisture((b - 1) as usize),
                });
            }
            state.push(GhState {
                moisture: vec![cfg.start_moisture_pct; cfg.beds as usize],
                moisture_at: vec![None; cfg.beds as usize],
                ..Default::default()
            });
            actuator_ids.push(DeviceId::from(format!("{}/actuators", cfg.gh(g))));
        }
        let seed = cfg
            .seed
            .unwrap_or_else(|| Timestamp::now().as_nanos() as u64);
        Greenhouse {
            source: Arc::from(name),
            points,
            state,
            actuator_ids,
            rng: SmallRng::seed_from_u64(seed),
            cursor: 0,
            produced: 0,
            started_at: None,
            first_sample: None,
            temperature_count: 0,
            cfg,
        }
    }

    /// Fraction of the simulated day at `ts` (0 = midnight).
    fn phase(&mut self, ts: i64) -> f64 {
        let day = self.cfg.day_length_s as f64 * 1e9;
        match self.cfg.start_hour {
            None => (ts as f64 % day) / day,
            Some(h) => {
                let t0 = *self.started_at.get_or_insert(ts);
                (h / 24.0 + (ts - t0) as f64 / day).rem_euclid(1.0)
            }
        }
    }

    /// Sensor readings per second this configuration produces.
    pub fn rate(&self) -> f64 {
        self.cfg
            .readings_per_s
            .unwrap_or(self.points.len() as f64 * 1000.0 / self.cfg.interval_ms as f64)
    }

    fn sample(&mut self, i: usize, ts: Timestamp) -> Reading {
        let phase = self.phase(ts.as_nanos()); // 0 = midnight
        let sun = (2.0 * PI * (phase - 0.25)).sin(); // -1 at midnight, +1 at noon
                                                     // Simulated hours per real nanosecond.
        let sim_h_per_ns = 24.0 / (self.cfg.day_length_s as f64 * 1e9);
        let (night, noon) = (self.cfg.night_temperature_c, self.cfg.noon_temperature_c);
        let (drying, irrigation) = (self.cfg.drying_pct_per_h, self.cfg.irrigation_pct_per_h);
        let t0 = *self.first_sample.get_or_insert(ts.as_nanos());
        let since_s = (ts.as_nanos() - t0) as f64 / 1e9;
        let p = &self.points[i];
        // The fault active in this greenhouse now, and seconds since it started.
        let fault = self.cfg.faults.iter().find_map(|f| {
            let on = f.greenhouse as usize == p.gh + 1
                && (f.start_s..f.start_s + f.duration_s).contains(&since_s);
            on.then_some((f.kind, since_s - f.start_s))
        });
        let st = &mut self.state[p.gh];
        let noise: f64 = self.rng.random_range(-1.0..1.0);
        let vent_works = st.vent && !matches!(fault, Some((FaultKind::StuckVent, _)));
        let value = match p.kind {
            Kind::Temperature => {
                let vent = if vent_works { VENT_COOLING_C } else { 0.0 };
                let shade = SHADE_COOLING_C * st.shade / 100.0;
                let mut t = night + (noon - night) * (sun + 1.0) / 2.0 - vent - shade + 0.2 * noise;
                self.temperature_count += 1;
                match fault {
                    Some((FaultKind::Heater, _)) if sun < 0.0 => t -= 6.0 * -sun,
                    Some((FaultKind::Drift, s)) => t += 1.5 * s * 1e9 * sim_h_per_ns,
                    Some((FaultKind::Spikes, _)) if self.temperature_count.is_multiple_of(7) => {
                        t += 8.0
                    }
                    _ => {}
                }
                t
            }
            Kind::Humidity => 70.0 - 12.0 * sun + if vent_works { -5.0 } else { 0.0 } + 0.5 * noise,
            Kind::Light => (sun.max(0.0) * 55_000.0 * (1.0 - SHADE_LIGHT_CUT * st.shade / 100.0)
                + 50.0 * noise)
                .max(0.0),
            Kind::Moisture(b) => {
                let now = ts.as_nanos();
                let hours =
                    st.moisture_at[b].map_or(0.0, |t| (now - t).max(0) as f64 * sim_h_per_ns);
                st.moisture_at[b] = Some(now);
                let m = &mut st.moisture[b];
                *m -= drying * (0.5 + 0.5 * sun.max(0.0)) * hours;
                if st.irrigation {
                    *m += irrigation * hours;
                }
                *m = m.clamp(5.0, 95.0);
                *m + 0.3 * noise
            }
        };
        // As a sensor reports them: light in whole lux, the rest to hundredths.
        let value = match p.kind {
            Kind::Light => value.round(),
            _ => (value * 100.0).round() / 100.0,
        };
        Reading {
            device: p.device.clone(),
            point: p.point.clone(),
            value: Value::F64(value),
            unit: Some(p.unit.clone()),
            ts,
            quality: Quality::Good,
            source: self.source.clone(),
        }
    }

    /// Up to `n` readings, round-robin over the sensor points.
    fn produce(&mut self, n: usize) -> Vec<Reading> {
        let ts = Timestamp::now();
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let i = self.cursor;
            self.cursor = (self.cursor + 1) % self.points.len();
            out.push(self.sample(i, ts));
        }
        self.produced += n as u64;
        out
    }

    /// Apply a command to the simulated actuators; the new state as a reading, or why not.
    fn apply(&mut self, cmd: &Command) -> Result<Reading, String> {
        let gh = self
            .actuator_ids
            .iter()
            .position(|d| d == &cmd.device)
            .ok_or_else(|| format!("no simulated device `{}`", cmd.device))?;
        let st = &mut self.state[gh];
        let value = match (cmd.point.as_str(), &cmd.value) {
            ("vent", Value::Bool(b)) => {
                st.vent = *b;
                Value::Bool(*b)
            }
            ("irrigation", Value::Bool(b)) => {
                st.irrigation = *b;
                Value::Bool(*b)
            }
            ("shade", v) => match v.as_f64() {
                Some(x) if (0.0..=100.0).contains(&x) && !matches!(v, Value::Bool(_)) => {
                    st.shade = x;
                    Value::F64(x)
                }
                _ => return Err(format!("shade takes a number 0–100, got {v:?}")),
            },
            ("vent" | "irrigation", v) => {
                return Err(format!("{} takes true/false, got {v:?}", cmd.point))
            }
            (p, _) => return Err(format!("no simulated actuator `{p}`")),
        };
        Ok(Reading {
            device: cmd.device.clone(),
            point: cmd.point.clone(),
            unit: (cmd.point.as_str() == "shade").then(|| Arc::from("%")),
            value,
            ts: Timestamp::now(),
            quality: Quality::Good,
            source: self.source.clone(),
        })
    }
}

#[async_trait]
impl Source for Greenhouse {
    async fn run(&mut self, ctx: SourceContext) -> Result<(), SourceError> {
        let rate = self.rate();
        let tick = Duration::from_millis(self.cfg.tick_ms);
        let mut timer = tokio::time::interval(tick);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let start = tokio::time::Instant::now();
        let produced_at_start = self.produced;
        let limit = self.cfg.total_readings.unwrap_or(u64::MAX);
        tracing::info!(source = %self.source, points = self.points.len(), rate, "simulator started");
        let mut commands_open = true;
        loop {
            tokio::select! {
                biased;
                _ = ctx.shutdown.cancelled() => return Ok(()),
                cmd = ctx.commands.recv(), if commands_open => {
                    // The router is gone: no more commands, keep producing.
                    let Some(cmd) = cmd else { commands_open = false; continue };
                    match self.apply(&cmd) {
                        Ok(r) => {
                            let _ = cmd.reply.send(Ok(()));
                            ctx.bus.send(vec![r]).await?;
                        }
                        Err(e) => { let _ = cmd.reply.send(Err(e)); }
                    }
                }
                _ = timer.tick() => {
                    let due = (start.elapsed().as_secs_f64() * rate) as u64;
                    let mut owed = due.saturating_sub(self.produced - produced_at_start)
                        .min(limit.saturating_sub(self.produced));
                    while owed > 0 {
                        let n = owed.min(self.cfg.max_batch as u64) as usize;
                        let batch = self.produce(n);
                        owed -= n as u64;
                        tokio::select! {
                            biased;
                            _ = ctx.shutdown.cancelled() => return Ok(()),
                            r = ctx.bus.send(batch) => r?,
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_core::{bus, CancellationToken, CommandOrigin, CommandRouter, Metrics};

    fn cfg(yaml: &str) -> SimConfig {
        serde_yaml::from_str(yaml).unwrap()
    }

    type Running = (
        CommandRouter,
        weir_core::BusReceiver,
        CancellationToken,
        tokio::task::JoinHandle<Result<(), SourceError>>,
    );

    /// Build and run the simulator with a bus and a router of its own.
    fn start(c: &SimConfig) -> Running {
        let m = Metrics::new();
        let (tx, rx) = bus(64, &m);
        let router = CommandRouter::new();
        let inbox = router.register("sim", &c.devices(), 4);
        let token = CancellationToken::new();
        let mut src = c.build("sim", &m).unwrap();
        let ctx = SourceContext::new(tx.for_source("sim"), token.clone(), inbox);
        let task = tokio::spawn(async move { src.run(ctx).await });
        (router, rx, token, task)
    }

    #[tokio::test]
    async fn produces_exactly_total_readings_round_robin() {
        let c =
            cfg("{greenhouses: 2, beds: 2, readings_per_s: 5000, total_readings: 1003, seed: 1}");
        let (_router, mut rx, token, task) = start(&c);
        let mut got = Vec::new();
        while got.len() < 1003 {
            got.extend(rx.recv().await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(rx.try_recv().is_none(), "no readings past total_readings");
        token.cancel();
        task.await.unwrap().unwrap();
        assert_eq!(got.len(), 1003);
        // 2 greenhouses x (3 climate + 2 beds) = 10 points, round robin
        assert_eq!(got[0].device.as_str(), "gh1/climate");
        assert_eq!(got[0].point.as_str(), "temperature");
        assert_eq!(got[10].point.as_str(), "temperature");
        assert_eq!(got[4].device.as_str(), "gh1/bed2");
        assert!(got.iter().all(|r| r.value.as_f64().unwrap().is_finite()));
    }

    #[tokio::test]
    async fn actuator_commands_change_state_and_report() {
        let c = cfg("{interval_ms: 100000, seed: 2}");
        let (router, mut rx, token, task) = start(&c);
        let ok = router
            .execute(
                "gh1/actuators".into(),
                "vent".into(),
                Value::Bool(true),
                CommandOrigin::Mqtt,
            )
            .await;
        assert_eq!(ok, Ok(()));
        let r = rx.recv().await.unwrap();
        assert_eq!(r[0].point.as_str(), "vent");
        assert_eq!(r[0].value, Value::Bool(true));
        let bad = router
            .execute(
                "gh1/actuators".into(),
                "shade".into(),
                Value::F64(150.0),
                CommandOrigin::Mqtt,
            )
            .await;
        assert!(bad.unwrap_err().contains("0–100"));
        token.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn keeps_producing_after_the_router_is_gone() {
        let c = cfg("{readings_per_s: 5000, total_readings: 100, seed: 3}");
        let (router, mut rx, token, task) = start(&c);
        drop(router); // the command inbox closes
        let mut got = 0;
        while got < 100 {
            let b = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("readings keep coming")
                .unwrap();
            got += b.len();
        }
        token.cancel();
        task.await.unwrap().unwrap();
    }

    /// The model the demo relies on: the day starts at `start_hour`, the temperature follows the
    /// configured night/noon curve, an open vent cools by [`VENT_COOLING_C`], moisture dries and
    /// irrigates per simulated hour.
    #[test]
    fn injected_faults_change_the_climate_while_they_last() {
        // Two greenhouses, same seed: gh2 has the fault, gh1 is the control. A 240 s day: one
        // simulated hour per 10 s. Faults from 100 s to 200 s.
        let yaml = |kind: &str| {
            cfg(&format!("{{greenhouses: 2, beds: 1, day_length_s: 240, start_hour: 12, seed: 4, faults: [{{greenhouse: 2, kind: {kind}, start_s: 100, duration_s: 100}}]}}"))
        };
        let t0 = 1_000_000_000_000_000_000i64;
        let s = 1_000_000_000i64;
        // points per greenhouse: temperature, humidity, light, bed1 → gh2's temperature is 4.
        let temps = |kind: &str, at_s: i64| {
            let mut g = Greenhouse::new(yaml(kind), "sim");
            g.sample(0, Timestamp(t0)); // the first reading starts the fault clock
            g.state[1].vent = true;
            let mut t = |i| {
                g.sample(i, Timestamp(t0 + at_s * s))
                    .value
                    .as_f64()
                    .unwrap()
            };
            (t(0), t(4))
        };
        // Drift: +1.5 °C per simulated hour; 50 s into the fault = 5 h = +7.5 °C.
        let (gh1, gh2) = temps("drift", 150);
        assert!((gh2 - gh1 - (7.5 - 1.5)).abs() < 1.0, "{gh1} {gh2}");
        // Before and after the fault: no effect (beyond the vent).
        let (gh1, gh2) = temps("drift", 50);
        assert!((gh2 - gh1 + 1.5).abs() < 1.0, "{gh1} {gh2}");
        let (gh1, gh2) = temps("drift", 210);
        assert!((gh2 - gh1 + 1.5).abs() < 1.0, "{gh1} {gh2}");
        // Stuck vent: it reports open but does not cool.
        let (gh1, gh2) = temps("stuck_vent", 150);
        assert!((gh2 - gh1).abs() < 1.0, "{gh1} {gh2}");
        assert!(yaml("stuck_vent").validate().is_empty());
        let bad = cfg(
            "{greenhouses: 1, faults: [{greenhouse: 3, kind: heater, start_s: 0, duration_s: 1}]}",
        );
        assert_eq!(bad.validate()[0].0, "faults");
    }

    #[test]
    fn climate_follows_the_configured_day() {
        let c = cfg("{beds: 1, day_length_s: 240, start_hour: 12, night_temperature_c: 10, noon_temperature_c: 30, start_moisture_pct: 40, drying_pct_per_h: 6, irrigation_pct_per_h: 16, seed: 4}");
        let mut g = Greenhouse::new(c, "sim");
        let t0 = 1_000_000_000_000_000_000i64; // any wall time: the clock starts at noon
        let v = |g: &mut Greenhouse, i: usize, t: i64| {
            g.sample(i, Timestamp(t)).value.as_f64().unwrap()
        };
        // points: 0 temperature, 1 humidity, 2 light, 3 bed1 moisture
        let noon = v(&mut g, 0, t0);
        assert!((noon - 30.0).abs() <= 0.2, "{noon}");
        let light = v(&mut g, 2, t0);
        assert!(
            light > 50_000.0 && light.fract() == 0.0,
            "whole lux: {light}"
        );
        let m0 = v(&mut g, 3, t0);
        assert!((m0 - 40.0).abs() <= 0.3, "{m0}");
        // One simulated hour later (10 s of a 240 s day): 13:00, 6 %/h of drying near noon.
        let h = 10 * 1_000_000_000;
        let m1 = v(&mut g, 3, t0 + h);
        assert!(
            (m1 - (40.0 - 6.0 * (0.5 + 0.5 * (PI / 12.0).cos()))).abs() <= 0.6,
            "{m1}"
        );
        // Vent open: 1.5 °C cooler; irrigation: +16 %/h.
        g.state[0].vent = true;
        g.state[0].irrigation = true;
        let cooled = v(&mut g, 0, t0 + h);
        let expect =
            10.0 + 20.0 * ((2.0 * PI * (13.0 / 24.0 - 0.25)).sin() + 1.0) / 2.0 - VENT_COOLING_C;
        assert!((cooled - expect).abs() <= 0.2, "{cooled} vs {expect}");
        let m2 = v(&mut g, 3, t0 + 2 * h);
        assert!(m2 > m1 + 8.0, "{m1} -> {m2}");
        // Midnight, 12 simulated hours after the start: night temperature, no light.
        let night = v(&mut g, 0, t0 + 12 * h);
        assert!((night - (10.0 - VENT_COOLING_C)).abs() <= 0.2, "{night}");
        assert!(v(&mut g, 2, t0 + 12 * h) <= 50.0, "dark but for the noise");
    }

    #[test]
    fn validation_names_keys() {
        let c = cfg("{greenhouses: 0, readings_per_s: -1}");
        let e = c.validate();
        assert_eq!(e[0].0, "greenhouses");
        assert_eq!(e[1].0, "readings_per_s");
        assert!(c.build("x", &Metrics::new()).is_err());
        let e = cfg("{start_hour: 24, night_temperature_c: 30, noon_temperature_c: 20, start_moisture_pct: 101, drying_pct_per_h: -1}").validate();
        let keys: Vec<&str> = e.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            keys,
            [
                "start_hour",
                "noon_temperature_c",
                "start_moisture_pct",
                "drying_pct_per_h"
            ],
            "{e:?}"
        );
        assert!(cfg("{start_hour: 6.5}").validate().is_empty());
    }
}
