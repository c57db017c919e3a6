//! The running adapter: one task per line, serialising every transaction on it.
//!
//! # Scheduling
//!
//! Each line task owns its transport and keeps, per device, the next due time of every planned
//! request. It repeatedly takes the earliest due request, runs it (waiting at most the response
//! timeout), and reschedules it one interval later, keeping its phase (missed periods are skipped,
//! not caught up in a burst). Commands for the line's devices are taken between transactions:
//! the source's one command inbox is fanned out to one bounded queue per line
//! ([`weir_core::CommandFanout`]), so a full or stopped line answers `busy` / not served at once
//! and never holds up the commands of the other lines.
//!
//! # Fault isolation
//!
//! * A slave that does not answer is marked down: its points are reported once as
//!   `Bad("timeout")`, and it is probed with one request after a backoff that doubles (with
//!   jitter) from `backoff_min_ms` to `backoff_max_ms`. Healthy slaves are therefore delayed by at
//!   most one response timeout per probe. The first answer brings it back: all its requests fall
//!   due at once.
//! * A Modbus exception is an answer: the request's points become `Bad(<exception name>)`
//!   (e.g. `illegal_data_address`) and are polled again next period.
//! * A CRC error or a garbled frame is counted; the request's points become `Bad("crc_error")` /
//!   `Bad("garbled_response")`; the transport discards stray bytes before the next request.
//! * A port or connection that fails (a USB adapter unplugged, a vanished pty, a closed TCP
//!   connection) marks every point of the line `Bad("connection_lost: …")` and is reopened after a
//!   jittered, doubling backoff from `reconnect_min_ms` to `reconnect_max_ms`.
//!
//! Readings of a bad point carry no value (`NaN`, encoded as JSON `null`); a bad quality is
//! reported when it starts or its reason changes, not at every failed probe.
//!
//! # Registry and staleness
//!
//! Every device is declared with all its points ([`ModbusBuilder`]'s `device_specs`). A point's
//! expected period is its poll interval plus the line's response timeout (one probe of a silent
//! slave may delay it that long); `on_change` points have none. Since a bad quality is reported
//! once, a slave that stops answering sends one `Bad` reading and then nothing: its points go
//! stale three periods later and the device offline, while the other slaves of the line stay
//! online; a lost connection does the same for every device of the line.
//!
//! # Metrics (labels `source`, `line`, and `device` for the per-device ones)
//!
//! `weir_modbus_requests_total`, `weir_modbus_timeouts_total`, `weir_modbus_exceptions_total`,
//! `weir_modbus_crc_errors_total`, `weir_modbus_transaction_micros_total` (sum over answered
//! transactions) and `weir_modbus_transaction_mean_micros` (gauge), per device and, as
//! `weir_modbus_line_*`, per line; per line also `weir_modbus_line_garbage_bytes_total` and
//! `weir_modbus_line_reconnects_total`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// How long readings polled in one round are held at most while the line makes the requests due
/// with them: a fast line (Modbus TCP on a LAN) sends a whole round as one batch; a slow one (RTU
/// at 9600 baud, ~30 ms a transaction) sends each poll as it comes, so nothing is delayed by more
/// than about this.
const ROUND_HOLD: Duration = Duration::from_millis(10);
use weir_core::{
    BuildError, BusSender, CancellationToken, Command, CommandFanout, CommandOrigin, Counter,
    DeviceId, DeviceInfo, DeviceSpec, Gauge, Metrics, PointId, PointSpec, Quality, Reading, Source,
    SourceBuilder, SourceContext, SourceError, Timestamp, Value, ValueType,
};

use crate::config::{Device, Framing, Line, LineKind, Point, Resolved};
use crate::pdu::{Request, Response, Table};
use crate::transport::{RtuTransport, TcpTransport, TransactError, Transport};

/// A configured Modbus source: what the binary hands to its supervisor.
#[derive(Debug, Clone)]
pub struct ModbusBuilder {
    pub resolved: Arc<Resolved>,
}

impl ModbusBuilder {
    /// Per-line and per-device counters go to the registry `build` is given (the daemon's).
    pub fn new(resolved: Resolved) -> Self {
        ModbusBuilder {
            resolved: Arc::new(resolved),
        }
    }
}

impl SourceBuilder for ModbusBuilder {
    fn kind(&self) -> &'static str {
        "modbus"
    }

    fn devices(&self) -> Vec<DeviceInfo> {
        self.resolved
            .lines
            .iter()
            .flat_map(|l| &l.devices)
            .map(|d| DeviceInfo {
                device: DeviceId::new(&d.id),
                writable_points: d
                    .points
                    .iter()
                    .filter(|p| p.writable)
                    .map(|p| PointId::new(&p.name))
                    .collect(),
            })
            .collect()
    }

    /// Every point, with its unit, value type, expected period (from its poll interval, see
    /// `point_spec`) and a class hint from its unit (a writable coil is a `switch`); the
    /// device's model is its profile's (see [`Device::model`]).
    fn device_specs(&self) -> Vec<DeviceSpec> {
        self.resolved
            .lines
            .iter()
            .flat_map(|l| l.devices.iter().map(move |d| (l, d)))
            .map(|(l, d)| {
                let mut spec = DeviceSpec::new(DeviceId::new(&d.id));
                spec.points = d
                    .points
                    .iter()
                    .map(|p| point_spec(p, l.response_timeout))
                    .collect();
                spec.meta.model = d.model.as_deref().map(str::to_string);
                spec
            })
            .collect()
    }

    fn build(&self, name: &str, metrics: &Metrics) -> Result<Box<dyn Source>, BuildError> {
        Ok(Box::new(ModbusSource {
            name: Arc::from(name),
            resolved: self.resolved.clone(),
            metrics: metrics.clone(),
        }))
    }
}

/// How the registry describes a point of a line whose response timeout is `line_timeout`.
///
/// The expected period is the poll interval plus the line's response timeout: a healthy slave's
/// poll may wait behind one probe of a slave that does not answer (see "Fault isolation"), so on
/// a 200 ms poll with a 500 ms timeout readings 700 ms apart are normal, and a period of the bare
/// interval would mark such points stale (and their device offline) at random sweeps. `on_change`
/// points have none: a value that holds still is not reported ([`should_report`]), so silence
/// there is no sign of trouble (the device's other points, or its `Bad` quality, tell).
fn point_spec(p: &Point, line_timeout: Duration) -> PointSpec {
    use crate::codec::DataType;
    let value_type = match p.codec.ty {
        DataType::Bool => ValueType::Bool,
        DataType::String => ValueType::Text,
        t if t.is_integer() && p.codec.scale == 1.0 && p.codec.offset == 0.0 => ValueType::Int,
        _ => ValueType::Float,
    };
    let class = match p.unit.as_deref() {
        _ if p.table == Table::Coil && p.writable => Some("switch"),
        Some("°C" | "°F" | "K") => Some("temperature"),
        Some("V" | "kV" | "mV") => Some("voltage"),
        Some("A" | "mA") => Some("current"),
        Some("W" | "kW" | "MW") => Some("power"),
        Some("Wh" | "kWh" | "MWh") => Some("energy"),
        Some("Hz") => Some("frequency"),
        Some("Pa" | "hPa" | "kPa" | "bar" | "mbar") => Some("pressure"),
        _ => None,
    };
    PointSpec::new(PointId::new(&p.name))
        .unit(p.unit.as_deref())
        .value_type(value_type)
        .writable(p.writable)
        .class(class)
        .period_ms((!p.on_change).then_some((p.interval + line_timeout).as_millis() as u64))
}

/// The running source.
#[derive(Debug)]
pub struct ModbusSource {
    name: Arc<str>,
    resolved: Arc<Resolved>,
    metrics: Metrics,
}

#[async_trait]
impl Source for ModbusSource {
    async fn run(&mut self, ctx: SourceContext) -> Result<(), SourceError> {
        let mut tasks = JoinSet::new();
        let mut fanout = CommandFanout::new(&self.name);
        let stop = ctx.shutdown.child_token();
        for line in &self.resolved.lines {
            let rx = fanout.add_queue(line.devices.iter().map(|d| DeviceId::new(&d.id)), 16);
            let task = LineTask::new(
                line.clone(),
                self.name.clone(),
                &self.resolved,
                ctx.bus.clone(),
                &self.metrics,
            );
            tasks.spawn(task.run(stop.clone(), rx));
        }
        tracing::info!(source = %self.name, lines = self.resolved.lines.len(), "modbus source started");
        let mut commands_open = true;
        let result = loop {
            tokio::select! {
                biased;
                _ = ctx.shutdown.cancelled() => break Ok(()),
                done = tasks.join_next() => match done {
                    None => break Ok(()),
                    Some(Ok(Ok(()))) => {
                        if ctx.shutdown.is_cancelled() { break Ok(()) }
                    }
                    Some(Ok(Err(e))) => break Err(e),
                    Some(Err(j)) => break Err(SourceError::Other(format!("a line task failed: {j}"))),
                },
                // A closed inbox (no router) would be ready forever: stop polling it.
                cmd = ctx.commands.recv(), if commands_open => {
                    let Some(cmd) = cmd else { commands_open = false; continue };
                    // Answered here when it cannot be handed to its line (unknown, busy, gone).
                    let _ = fanout.route(cmd);
                }
            }
        };
        stop.cancel();
        while tasks.join_next().await.is_some() {}
        result
    }
}

/// Counters of one line or one device.
#[derive(Debug, Clone)]
struct Stats {
    requests: Counter,
    timeouts: Counter,
    exceptions: Counter,
    crc: Counter,
    tx_micros: Counter,
    tx_count: Counter,
    mean: Gauge,
}

impl Stats {
    fn new(m: &Metrics, prefix: &str, labels: &[(&str, &str)]) -> Stats {
        let c = |n: &str| m.counter(&format!("{prefix}_{n}"), labels);
        Stats {
            requests: c("requests_total"),
            timeouts: c("timeouts_total"),
            exceptions: c("exceptions_total"),
            crc: c("crc_errors_total"),
            tx_micros: c("transaction_micros_total"),
            tx_count: c("answered_total"),
            mean: m.gauge(&format!("{prefix}_transaction_mean_micros"), labels),
        }
    }
    fn answered(&self, d: Duration) {
        self.tx_micros.add(d.as_micros() as u64);
        self.tx_count.inc();
        self.mean
            .set((self.tx_micros.get() / self.tx_count.get().max(1)) as i64);
    }
}

/// Last reported state of a point.
#[derive(Debug, Clone)]
struct Last {
    value: Value,
    quality: Quality,
}

#[derive(Debug)]
struct DevState {
    dev: Device,
    id: DeviceId,
    pids: Vec<PointId>,
    next_due: Vec<Instant>,
    last: Vec<Option<Last>>,
    /// Down: (probe time, current backoff).
    down: Option<(Instant, Duration)>,
    stats: Stats,
}

struct LineTask {
    line: Line,
    source: Arc<str>,
    bus: BusSender,
    devs: Vec<DevState>,
    backoff: (Duration, Duration),
    reconnect: (Duration, Duration),
    stats: Stats,
    garbage: Counter,
    reconnects: Counter,
}

/// `base × 2^attempt`, capped at `max`, times a jitter factor in [0.75, 1.25).
pub fn jittered(base: Duration, max: Duration, attempt: u32) -> Duration {
    let d = base.saturating_mul(1u32 << attempt.min(20)).min(max);
    d.mul_f64(rand::rng().random_range(0.75..1.25))
}

fn bad(reason: &str) -> Quality {
    Quality::Bad(Arc::from(reason))
}

impl LineTask {
    fn new(line: Line, source: Arc<str>, r: &Resolved, bus: BusSender, m: &Metrics) -> Self {
        let now = Instant::now();
        let label = line.label.clone();
        let devs = line
            .devices
            .iter()
            .map(|d| DevState {
                id: DeviceId::new(&d.id),
                pids: d.points.iter().map(|p| PointId::new(&p.name)).collect(),
                next_due: vec![now; d.blocks.len()],
                last: vec![None; d.points.len()],
                down: None,
                stats: Stats::new(
                    m,
                    "weir_modbus",
                    &[("source", &source), ("line", &label), ("device", &d.id)],
                ),
                dev: d.clone(),
            })
            .collect();
        let ll = [("source", &*source), ("line", label.as_str())];
        LineTask {
            stats: Stats::new(m, "weir_modbus_line", &ll),
            garbage: m.counter("weir_modbus_line_garbage_bytes_total", &ll),
            reconnects: m.counter("weir_modbus_line_reconnects_total", &ll),
            line,
            source,
            bus,
            devs,
            backoff: r.backoff,
            reconnect: r.reconnect,
        }
    }

    /// Open the line; the error names the port or the host and port.
    async fn open(&self) -> std::io::Result<Box<dyn Transport>> {
        match &self.line.kind {
            LineKind::Rtu {
                serial,
                inter_frame,
            } => Ok(crate::transport::open_serial(serial, *inter_frame)?),
            LineKind::Tcp {
                host,
                port,
                framing,
                connect_timeout,
            } => Self::connect(host, *port, *framing, *connect_timeout)
                .await
                .map_err(|e| {
                    std::io::Error::new(e.kind(), format!("cannot connect to {host}:{port}: {e}"))
                }),
        }
    }

    async fn connect(
        host: &str,
        port: u16,
        framing: Framing,
        timeout: Duration,
    ) -> std::io::Result<Box<dyn Transport>> {
        use std::io::{Error, ErrorKind};
        let addr = tokio::time::timeout(timeout, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| Error::new(ErrorKind::TimedOut, "name resolution timed out"))??
            .next()
            .ok_or_else(|| Error::new(ErrorKind::NotFound, "the name has no address"))?;
        match framing {
            Framing::Mbap => Ok(Box::new(TcpTransport::connect(addr, timeout).await?)),
            Framing::Rtu => {
                let s = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
                    .await
                    .map_err(|_| Error::new(ErrorKind::TimedOut, "connect timeout"))??;
                s.set_nodelay(true)?;
                Ok(Box::new(RtuTransport::new(s, Duration::ZERO)))
            }
        }
    }

    async fn send(&self, batch: Vec<Reading>, stop: &CancellationToken) -> Result<(), SourceError> {
        if batch.is_empty() {
            return Ok(());
        }
        tokio::select! {
            biased;
            _ = stop.cancelled() => Ok(()),
            r = self.bus.send(batch) => Ok(r?),
        }
    }

    /// Readings for points `which` of device `d` becoming bad with `reason` (only those whose
    /// quality changes).
    fn mark_bad(&mut self, d: usize, which: &[usize], reason: &str, out: &mut Vec<Reading>) {
        let q = bad(reason);
        let ts = Timestamp::now();
        let ds = &mut self.devs[d];
        for &i in which {
            if ds.last[i].as_ref().is_some_and(|l| l.quality == q) {
                continue;
            }
            let p = &ds.dev.points[i];
            ds.last[i] = Some(Last {
                value: Value::F64(f64::NAN),
                quality: q.clone(),
            });
            out.push(Reading {
                device: ds.id.clone(),
                point: ds.pids[i].clone(),
                value: Value::F64(f64::NAN),
                unit: p.unit.clone(),
                ts,
                quality: q.clone(),
                source: self.source.clone(),
            });
        }
    }

    fn mark_line_bad(&mut self, reason: &str, out: &mut Vec<Reading>) {
        for d in 0..self.devs.len() {
            let all: Vec<usize> = (0..self.devs[d].dev.points.len()).collect();
            self.mark_bad(d, &all, reason, out);
        }
    }

    async fn run(
        mut self,
        stop: CancellationToken,
        mut cmds: mpsc::Receiver<Command>,
    ) -> Result<(), SourceError> {
        let mut transport: Option<Box<dyn Transport>> = None;
        let mut attempt = 0u32;
        loop {
            if stop.is_cancelled() {
                return Ok(());
            }
            if transport.is_none() {
                match self.open().await {
                    Ok(t) => {
                        if attempt > 0 {
                            tracing::info!(line = %self.line.label, "line open again");
                        }
                        attempt = 0;
                        transport = Some(t);
                        let now = Instant::now();
                        for d in &mut self.devs {
                            d.next_due.iter_mut().for_each(|t| *t = now);
                            d.down = None;
                        }
                    }
                    Err(e) => {
                        let reason = format!("connection_lost: {e}");
                        if attempt == 0 {
                            tracing::warn!(line = %self.line.label, "cannot open: {e}");
                        }
                        let mut out = Vec::new();
                        self.mark_line_bad(&reason, &mut out);
                        self.send(out, &stop).await?;
                        let delay = jittered(self.reconnect.0, self.reconnect.1, attempt);
                        attempt = attempt.saturating_add(1);
                        self.reconnects.inc();
                        let until = Instant::now() + delay;
                        loop {
                            tokio::select! {
                                biased;
                                _ = stop.cancelled() => return Ok(()),
                                c = cmds.recv() => match c {
                                    Some(c) => { let _ = c.reply.send(Err(format!("line unavailable: {e}"))); }
                                    None => return Ok(()),
                                },
                                _ = tokio::time::sleep_until(until) => break,
                            }
                        }
                        continue;
                    }
                }
            }
            let Some(t) = transport.as_mut() else {
                continue;
            };
            let (when, d, b) = self.next();
            let fatal = tokio::select! {
                biased;
                _ = stop.cancelled() => return Ok(()),
                c = cmds.recv() => match c {
                    Some(c) => self.write(t.as_mut(), c).await,
                    None => return Ok(()),
                },
                _ = tokio::time::sleep_until(when) => {
                    let mut out = Vec::new();
                    let round = Instant::now();
                    let mut fatal = self.poll(t.as_mut(), d, b, &mut out).await;
                    // A poll round: requests already due (devices on one line keep the phase
                    // they were opened with, so their polls fall due together) are made back to
                    // back and their readings sent as one batch — one wake-up of the pipeline,
                    // one commit — while the round is younger than ROUND_HOLD. A silent device's
                    // probe (a whole response timeout) is never waited for in a round.
                    while fatal.is_none() && round.elapsed() < ROUND_HOLD {
                        let (when, d, b) = self.next();
                        if b == usize::MAX || when > Instant::now() || self.devs[d].down.is_some() {
                            break;
                        }
                        fatal = self.poll(t.as_mut(), d, b, &mut out).await;
                    }
                    self.send(out, &stop).await?;
                    fatal
                }
            };
            if let Some(e) = fatal {
                let reason = e.reason();
                tracing::warn!(line = %self.line.label, "{reason}; reopening");
                transport = None;
                let mut out = Vec::new();
                self.mark_line_bad(&reason, &mut out);
                self.send(out, &stop).await?;
                // Reopen after a first backoff step so a flapping port is not hammered.
                let delay = jittered(self.reconnect.0, self.reconnect.1, 0);
                self.reconnects.inc();
                attempt = 1;
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }

    /// The earliest due request: (time, device, block). A device that is down offers its probe.
    fn next(&self) -> (Instant, usize, usize) {
        let mut best = (Instant::now() + Duration::from_secs(3600), 0, usize::MAX);
        for (di, d) in self.devs.iter().enumerate() {
            let Some((bi, due)) = d
                .next_due
                .iter()
                .enumerate()
                .min_by_key(|(_, t)| **t)
                .map(|(i, t)| (i, *t))
            else {
                continue;
            };
            let when = match d.down {
                Some((probe, _)) => probe,
                None => due,
            };
            if when < best.0 {
                best = (when, di, bi);
            }
        }
        best
    }

    /// Count one transaction's outcome on the line and the device.
    fn account(&mut self, d: usize, r: &Result<Response, TransactError>, took: Duration) {
        for s in [&self.stats, &self.devs[d].stats] {
            s.requests.inc();
            match r {
                Ok(_) => s.answered(took),
                Err(TransactError::Exception(_)) => {
                    s.exceptions.inc();
                    s.answered(took);
                }
                Err(TransactError::Timeout) => s.timeouts.inc(),
                Err(TransactError::Crc) => s.crc.inc(),
                Err(_) => {}
            }
        }
    }

    async fn transact(
        &mut self,
        t: &mut dyn Transport,
        d: usize,
        req: &Request,
    ) -> Result<Response, TransactError> {
        let unit = self.devs[d].dev.unit;
        let t0 = Instant::now();
        let r = t.transact(unit, req, self.line.response_timeout).await;
        self.account(d, &r, t0.elapsed());
        self.garbage.add(t.take_garbage_bytes());
        r
    }

    /// Poll block `b` of device `d`; returns the error when the connection must be reopened.
    async fn poll(
        &mut self,
        t: &mut dyn Transport,
        d: usize,
        b: usize,
        out: &mut Vec<Reading>,
    ) -> Option<TransactError> {
        if b == usize::MAX {
            return None; // nothing to poll on this line
        }
        let block = self.devs[d].dev.blocks[b].clone();
        let req = Request::Read {
            table: block.table,
            address: block.address,
            count: block.count,
        };
        let r = self.transact(t, d, &req).await;
        let now = Instant::now();
        let ds = &mut self.devs[d];
        let answered = matches!(r, Ok(_) | Err(TransactError::Exception(_)));
        if answered {
            if ds.down.take().is_some() {
                tracing::info!(device = %ds.id, "answering again");
                ds.next_due.iter_mut().for_each(|t| *t = now);
            }
            let due = &mut ds.next_due[b];
            *due += block.interval;
            while *due <= now {
                *due += block.interval;
            }
        }
        let which: Vec<usize> = block.points.iter().map(|(p, _)| *p).collect();
        match r {
            Ok(resp) => {
                self.emit(d, &block, &resp, out);
                None
            }
            Err(TransactError::Exception(e)) => {
                self.mark_bad(d, &which, e.name(), out);
                None
            }
            Err(TransactError::Timeout) => {
                let ds = &mut self.devs[d];
                let backoff = match ds.down {
                    Some((_, b)) => (b * 2).min(self.backoff.1),
                    None => {
                        tracing::warn!(device = %ds.id, unit = ds.dev.unit, "not answering; backing off");
                        self.backoff.0
                    }
                };
                ds.down = Some((now + jittered(backoff, backoff, 0), backoff));
                let all: Vec<usize> = (0..ds.dev.points.len()).collect();
                self.mark_bad(d, &all, "timeout", out);
                None
            }
            Err(e) if e.is_fatal() => Some(e),
            Err(e) => {
                // CRC error, garbled or invalid: try again next period.
                let due = &mut self.devs[d].next_due[b];
                *due += block.interval;
                while *due <= now {
                    *due += block.interval;
                }
                self.mark_bad(d, &which, &e.reason(), out);
                None
            }
        }
    }

    /// Decode a block's response into readings (report-on-change applied).
    fn emit(
        &mut self,
        d: usize,
        block: &crate::plan::Block,
        resp: &Response,
        out: &mut Vec<Reading>,
    ) {
        let ts = Timestamp::now();
        for &(pi, off) in &block.points {
            let ds = &self.devs[d];
            let p = &ds.dev.points[pi];
            let off = off as usize;
            let decoded = match resp {
                Response::Bits(bits) => bits.get(off).map(|b| Ok(p.codec.decode_bit(*b))),
                Response::Registers(regs) => regs
                    .get(off..off + p.count() as usize)
                    .map(|r| p.codec.decode_registers(r)),
                Response::Written => None,
            };
            let (value, quality) = match decoded {
                Some(Ok(v)) => (v, Quality::Good),
                Some(Err(e)) => (Value::F64(f64::NAN), bad(&format!("decode: {e}"))),
                None => (Value::F64(f64::NAN), bad("short response")),
            };
            if !should_report(p, ds.last[pi].as_ref(), &value, &quality) {
                continue;
            }
            out.push(Reading {
                device: ds.id.clone(),
                point: ds.pids[pi].clone(),
                value: value.clone(),
                unit: p.unit.clone(),
                ts,
                quality: quality.clone(),
                source: self.source.clone(),
            });
            self.devs[d].last[pi] = Some(Last { value, quality });
        }
    }

    /// Execute a write command and answer it; returns the error when the connection must be
    /// reopened.
    async fn write(&mut self, t: &mut dyn Transport, cmd: Command) -> Option<TransactError> {
        let Some(d) = self.devs.iter().position(|d| d.id == cmd.device) else {
            let _ = cmd
                .reply
                .send(Err(format!("no modbus device `{}`", cmd.device)));
            return None;
        };
        let Some(pi) = self.devs[d].pids.iter().position(|p| *p == cmd.point) else {
            let _ = cmd.reply.send(Err(format!(
                "device `{}` has no point `{}`",
                cmd.device, cmd.point
            )));
            return None;
        };
        let p = self.devs[d].dev.points[pi].clone();
        if !p.writable {
            let _ = cmd
                .reply
                .send(Err(format!("point `{}` is not writable", cmd.point)));
            return None;
        }
        let req = match self.write_request(t, d, &p, &cmd.value).await {
            Ok(r) => r,
            Err(e) => {
                let fatal = matches!(&e, WriteError::Transact(te) if te.is_fatal());
                let _ = cmd.reply.send(Err(e.to_string()));
                return match e {
                    WriteError::Transact(te) if fatal => Some(te),
                    _ => None,
                };
            }
        };
        let r = self.transact(t, d, &req).await;
        match r {
            Ok(_) => {
                let origin = match &cmd.origin {
                    CommandOrigin::Mqtt => "mqtt".to_string(),
                    CommandOrigin::Rule(r) => format!("rule {r}"),
                    CommandOrigin::Cli => "cli".to_string(),
                };
                tracing::info!(device = %cmd.device, point = %cmd.point, value = %cmd.value, %origin, "written");
                let _ = cmd.reply.send(Ok(()));
                // Read the point back at once so the new value is reported.
                let now = Instant::now();
                let ds = &mut self.devs[d];
                for (bi, b) in ds.dev.blocks.iter().enumerate() {
                    if b.points.iter().any(|(i, _)| *i == pi) {
                        ds.next_due[bi] = now;
                    }
                }
                None
            }
            Err(e) => {
                let _ = cmd.reply.send(Err(e.reason()));
                e.is_fatal().then_some(e)
            }
        }
    }

    async fn write_request(
        &mut self,
        t: &mut dyn Transport,
        d: usize,
        p: &Point,
        v: &Value,
    ) -> Result<Request, WriteError> {
        encode_write(p, v, async {
            let r = self
                .transact(
                    t,
                    d,
                    &Request::Read {
                        table: Table::Holding,
                        address: p.address,
                        count: 1,
                    },
                )
                .await;
            match r {
                Ok(Response::Registers(r)) if r.len() == 1 => Ok(r[0]),
                Ok(_) => Err(WriteError::Transact(TransactError::Garbage(
                    "short read".into(),
                ))),
                Err(e) => Err(WriteError::Transact(e)),
            }
        })
        .await
    }
}

/// Why a write could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Codec(#[from] crate::codec::CodecError),
    #[error("{}", .0.reason())]
    Transact(TransactError),
}

/// The request that writes `v` to point `p`. A bool held in a bit of a holding register needs the
/// register's current value: `current` reads it (read-modify-write).
pub async fn encode_write(
    p: &Point,
    v: &Value,
    current: impl std::future::Future<Output = Result<u16, WriteError>>,
) -> Result<Request, WriteError> {
    match p.table {
        Table::Coil => {
            let b = match v {
                Value::Bool(b) => *b,
                Value::I64(0) => false,
                Value::I64(1) => true,
                Value::F64(f) if *f == 0.0 || *f == 1.0 => *f == 1.0,
                other => {
                    return Err(WriteError::Codec(crate::codec::CodecError::WrongType {
                        ty: crate::codec::DataType::Bool,
                        expected: "true/false",
                        got: other.clone(),
                    }))
                }
            };
            Ok(Request::WriteCoil {
                address: p.address,
                value: b,
            })
        }
        _ => {
            let cur = if p.codec.bit.is_some() {
                // Check the value before reading, so a bad value costs no transaction.
                p.codec.encode_registers(v, Some(0))?;
                Some(current.await?)
            } else {
                None
            };
            let regs = p.codec.encode_registers(v, cur)?;
            Ok(if regs.len() == 1 {
                Request::WriteRegister {
                    address: p.address,
                    value: regs[0],
                }
            } else {
                Request::WriteRegisters {
                    address: p.address,
                    values: regs,
                }
            })
        }
    }
}

/// Report-on-change: a good value is reported when the point is not `on_change`, when it had no
/// good value before, or when it moved by more than the deadband (any change for non-numbers or a
/// zero deadband). A bad quality is reported when it starts or its reason changes.
fn should_report(p: &Point, last: Option<&Last>, value: &Value, quality: &Quality) -> bool {
    let Some(last) = last else { return true };
    if last.quality != *quality {
        return true;
    }
    if *quality != Quality::Good {
        return false;
    }
    if !p.on_change {
        return true;
    }
    match (last.value.as_f64(), value.as_f64()) {
        (Some(a), Some(b)) if !matches!(value, Value::Bool(_)) => {
            if p.deadband > 0.0 {
                (a - b).abs() > p.deadband
            } else {
                a != b
            }
        }
        _ => last.value != *value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Codec, DataType, Order};

    fn point(on_change: bool, deadband: f64) -> Point {
        Point {
            name: Arc::from("p"),
            table: Table::Holding,
            address: 0,
            codec: Codec::new(DataType::U16, Order::ABCD),
            unit: None,
            interval: Duration::from_secs(1),
            on_change,
            deadband,
            writable: true,
        }
    }

    #[test]
    fn report_on_change_with_deadband() {
        let p = point(true, 0.5);
        let last = Last {
            value: Value::F64(10.0),
            quality: Quality::Good,
        };
        assert!(!should_report(
            &p,
            Some(&last),
            &Value::F64(10.4),
            &Quality::Good
        ));
        assert!(should_report(
            &p,
            Some(&last),
            &Value::F64(10.6),
            &Quality::Good
        ));
        assert!(should_report(
            &p,
            Some(&last),
            &Value::F64(10.0),
            &bad("timeout")
        ));
        assert!(should_report(&p, None, &Value::F64(10.0), &Quality::Good));
        let always = point(false, 0.0);
        assert!(should_report(
            &always,
            Some(&last),
            &Value::F64(10.0),
            &Quality::Good
        ));
        let bad_last = Last {
            value: Value::F64(f64::NAN),
            quality: bad("timeout"),
        };
        assert!(!should_report(
            &always,
            Some(&bad_last),
            &Value::F64(f64::NAN),
            &bad("timeout")
        ));
    }

    #[test]
    fn every_point_is_declared_with_type_unit_period_and_class() {
        let c: crate::ModbusConfig = serde_yaml::from_str(
            r#"
tcp:
  - host: h
    response_timeout_ms: 100
    devices:
      - id: d
        poll_ms: 250
        points:
          - { name: t, table: input, address: 0, type: i16, scale: 0.1, unit: °C }
          - { name: n, table: input, address: 1, type: u32 }
          - { name: relay, table: coil, address: 0, writable: true }
          - { name: label, table: holding, address: 4, type: string, length: 2 }
"#,
        )
        .unwrap();
        let b = ModbusBuilder::new(c.resolve(std::path::Path::new(".")).unwrap());
        let specs = b.device_specs();
        assert_eq!(specs.len(), 1);
        // Expected period: the poll interval plus one response timeout (a probe of a silent
        // slave may delay a poll that long).
        let p = &specs[0].points;
        let row = |i: usize| {
            (
                p[i].name.as_str(),
                p[i].value_type,
                p[i].unit.as_deref(),
                p[i].writable,
                p[i].class.as_deref(),
                p[i].expected_period_ms,
            )
        };
        assert_eq!(
            row(0),
            (
                "t",
                ValueType::Float,
                Some("°C"),
                false,
                Some("temperature"),
                Some(350)
            )
        );
        assert_eq!(row(1), ("n", ValueType::Int, None, false, None, Some(350)));
        assert_eq!(
            row(2),
            (
                "relay",
                ValueType::Bool,
                None,
                true,
                Some("switch"),
                Some(350)
            )
        );
        assert_eq!(row(3).1, ValueType::Text);
        assert_eq!(specs[0].meta.model, None, "no profile, no model");
        // The writable points are the same as the router's older view.
        assert_eq!(b.devices()[0].writable_points, vec![PointId::new("relay")]);
    }

    /// A point reported only on change is silent while its value holds: it must not be given an
    /// expected period, or a steady meter would be marked stale (and, if every point is
    /// `on_change`, offline). A device's model comes from its profile.
    #[test]
    fn on_change_points_have_no_period_and_the_profile_names_the_model() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("sdm.yaml"),
            "description: Eastron SDM120\npoints:\n  - { name: v, table: input, address: 0, type: f32, unit: V }\n",
        )
        .unwrap();
        let c: crate::ModbusConfig = serde_yaml::from_str(
            r#"
poll_ms: 500
profiles:
  sdm: { file: sdm.yaml }
  pump: { points: [ { name: run, table: discrete_input, address: 0 } ] }
tcp:
  - host: h
    response_timeout_ms: 250
    devices:
      - id: m
        profile: sdm
        points:
          - { name: e, table: input, address: 8, type: f32, unit: kWh, on_change: true }
          - { name: st, table: holding, address: 9, type: bool, bit: 3 }
      - { id: p, unit: 2, profile: pump }
"#,
        )
        .unwrap();
        let specs = ModbusBuilder::new(c.resolve(dir.path()).unwrap()).device_specs();
        let m = &specs[0];
        assert_eq!(m.meta.model.as_deref(), Some("Eastron SDM120"));
        let period = |n: &str| {
            let p = m.points.iter().find(|p| p.name.as_str() == n).unwrap();
            (p.expected_period_ms, p.value_type, p.class.as_deref())
        };
        assert_eq!(period("v"), (Some(750), ValueType::Float, Some("voltage")));
        assert_eq!(period("e"), (None, ValueType::Float, Some("energy")));
        assert_eq!(period("st"), (Some(750), ValueType::Bool, None));
        let p = &specs[1];
        assert_eq!(
            p.meta.model.as_deref(),
            Some("pump"),
            "an inline profile's name"
        );
        assert_eq!(p.points[0].value_type, ValueType::Bool);
    }

    #[tokio::test]
    async fn writes_pick_the_function_and_read_modify_write_bits() {
        let p = point(false, 0.0);
        let no_read = async { Err(WriteError::Transact(TransactError::Timeout)) };
        assert_eq!(
            encode_write(&p, &Value::I64(7), no_read).await.unwrap(),
            Request::WriteRegister {
                address: 0,
                value: 7
            }
        );
        let mut f = point(false, 0.0);
        f.codec = Codec::new(DataType::F32, Order::CDAB);
        let r = encode_write(&f, &Value::F64(1.0), async { Ok(0) })
            .await
            .unwrap();
        assert_eq!(
            r,
            Request::WriteRegisters {
                address: 0,
                values: vec![0x0000, 0x3F80]
            }
        );
        let mut b = point(false, 0.0);
        b.codec = Codec::new(DataType::Bool, Order::ABCD);
        b.codec.bit = Some(4);
        let r = encode_write(&b, &Value::Bool(true), async { Ok(0b1) })
            .await
            .unwrap();
        assert_eq!(
            r,
            Request::WriteRegister {
                address: 0,
                value: 0b1_0001
            }
        );
        assert!(matches!(
            encode_write(&p, &Value::from("x"), async { Ok(0) }).await,
            Err(WriteError::Codec(_))
        ));
    }
}
