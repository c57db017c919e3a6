//! The rhai engine and the functions scripts can call.
//!
//! A script runs with two variables in scope: `r`, the reading (or `()` when a timer rule runs on
//! the pipeline tick), and `state`, a map that persists across runs of the same rule. Everything
//! else it can do goes through the functions registered here, which record their effects in the
//! shared [`Ctx`]; the stage applies those effects only when the run succeeds, so a failing run
//! emits, alerts and commands nothing. (Changes a failing run made to `state`, windows and the
//! helpers' memory do persist.)
//!
//! Safety invariants: the engine has no module resolver (`no_module`: no `import`), `eval` is
//! disabled, and no function that touches files, the network or processes is registered; each run
//! is limited to [`MAX_OPERATIONS`] operations and [`MAX_CALL_LEVELS`] nested calls, strings,
//! arrays and maps are bounded in size, and every per-rule memory (windows, helpers, timers) holds
//! at most [`MAX_KEYS`] names.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use rhai::{Dynamic, Engine, EvalAltResult, ImmutableString, Map, Scope, AST, FLOAT, INT};
use weir_core::{DeviceId, PointId, Quality, Reading, Timestamp, Value};

use crate::window::{Span, Window};

/// Operations one run of a script may perform; an infinite loop stops here with an error.
pub const MAX_OPERATIONS: u64 = 100_000;
/// Nested function calls at most.
pub const MAX_CALL_LEVELS: usize = 16;
/// Names per rule in each helper's memory (windows, hysteresis, changed, deadband, timers).
pub const MAX_KEYS: usize = 10_000;
/// Derived readings one run may emit.
pub const MAX_EMITS_PER_RUN: usize = 1_000;
/// Commands one run may send.
pub const MAX_COMMANDS_PER_RUN: usize = 16;
/// Points the last-value cache remembers; readings of further points are not cached.
pub const MAX_CACHED_POINTS: usize = 100_000;
/// `source` prefix of readings emitted by a rule (`rules/<rule name>`).
pub const DERIVED_SOURCE_PREFIX: &str = "rules/";

type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

/// The maps scripts hit on every run (helpers' memory, last values, active alerts) are keyed by
/// short names and ids the configuration controls, so they use foldhash rather than SipHash: a
/// SipHash of a device id cost more than a third of an empty rule's run.
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The reading as a script sees it: `r.device`, `r.point`, `r.value`, `r.unit`, `r.ts`,
/// `r.quality`, `r.reason`, `r.source`. `value`, `unit` and `quality` can be assigned.
#[derive(Debug, Clone, Default)]
pub(crate) struct ScriptReading(pub Option<Reading>);

impl ScriptReading {
    fn get(&mut self) -> RhaiResult<&mut Reading> {
        self.0.as_mut().ok_or_else(|| "no reading".into())
    }
}

/// A window handle returned by `window(name, span)`; shares the rule's window of that name.
#[derive(Debug, Clone)]
pub(crate) struct WindowHandle(Arc<Mutex<Window>>);

impl WindowHandle {
    fn lock(&self) -> MutexGuard<'_, Window> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An alert operation recorded by a run.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum AlertOp {
    Raise {
        device: DeviceId,
        name: String,
        severity: String,
        message: String,
    },
    Clear {
        device: DeviceId,
        name: String,
    },
}

/// A rule's memory outside its `state` map.
#[derive(Debug, Default)]
pub struct RuleMem {
    windows: FastMap<String, WindowHandle>,
    hysteresis: FastMap<String, bool>,
    changed: FastMap<String, Value>,
    deadband: FastMap<String, f64>,
    /// spec → (period ns, last firing ns)
    timers: FastMap<String, (i64, i64)>,
}

/// The last value of every point seen (after rules), for `latest(device, point)`.
#[derive(Debug, Default)]
pub(crate) struct LastValues {
    map: FastMap<DeviceId, FastMap<PointId, Value>>,
    points: usize,
}

impl LastValues {
    pub(crate) fn update(&mut self, r: &Reading) {
        if let Some(points) = self.map.get_mut(r.device.as_str()) {
            if let Some(v) = points.get_mut(r.point.as_str()) {
                *v = r.value.clone();
                return;
            }
            if self.points < MAX_CACHED_POINTS {
                points.insert(r.point.clone(), r.value.clone());
                self.points += 1;
            }
        } else if self.points < MAX_CACHED_POINTS {
            let mut points = FastMap::default();
            points.insert(r.point.clone(), r.value.clone());
            self.map.insert(r.device.clone(), points);
            self.points += 1;
        }
    }

    pub(crate) fn get(&self, device: &str, point: &str) -> Option<&Value> {
        self.map.get(device)?.get(point)
    }
}

/// What native functions see and record during one run.
#[derive(Debug, Default)]
pub(crate) struct Ctx {
    pub rule: usize,
    pub rule_source: Option<Arc<str>>,
    /// Running on the tick (timers) rather than for a reading.
    pub tick: bool,
    /// Reading time (reading runs) or tick time, ns.
    pub now: i64,
    pub device: Option<DeviceId>,
    pub dropped: bool,
    pub emits: Vec<Reading>,
    pub alerts: Vec<AlertOp>,
    pub commands: Vec<(DeviceId, PointId, Value)>,
    pub mem: Vec<RuleMem>,
    pub cache: LastValues,
    /// Active alerts (device → name → severity), kept by the stage as it applies alert edges;
    /// `alert` / `clear` read it to skip calls that would change nothing.
    pub active: FastMap<DeviceId, FastMap<String, String>>,
}

impl Ctx {
    /// The alert's severity as of the ops recorded so far in this run, else as applied.
    fn active_severity(&self, device: &str, name: &str) -> Option<&str> {
        for op in self.alerts.iter().rev() {
            match op {
                AlertOp::Raise {
                    device: d,
                    name: n,
                    severity,
                    ..
                } if d.as_str() == device && n == name => return Some(severity),
                AlertOp::Clear { device: d, name: n } if d.as_str() == device && n == name => {
                    return None
                }
                _ => {}
            }
        }
        self.active.get(device)?.get(name).map(String::as_str)
    }
}

impl Ctx {
    /// Prepare for a run of `rule`.
    pub(crate) fn begin(
        &mut self,
        rule: usize,
        source: &Arc<str>,
        tick: bool,
        now: i64,
        device: Option<DeviceId>,
    ) {
        self.rule = rule;
        self.rule_source = Some(source.clone());
        self.tick = tick;
        self.now = now;
        self.device = device;
        self.dropped = false;
        self.emits.clear();
        self.alerts.clear();
        self.commands.clear();
    }

    fn mem(&mut self) -> &mut RuleMem {
        let i = self.rule;
        if self.mem.len() <= i {
            self.mem.resize_with(i + 1, RuleMem::default);
        }
        &mut self.mem[i]
    }

    fn current_device(&self, what: &str) -> RhaiResult<DeviceId> {
        self.device.clone().ok_or_else(|| {
            format!("{what} without a device needs a reading; in a timer give the device first")
                .into()
        })
    }
}

thread_local! {
    /// The context of the run in progress on this thread; see [`run_with_ctx`].
    static CURRENT: RefCell<Option<Box<Ctx>>> = const { RefCell::new(None) };
}

/// Lend `ctx` to the gateway functions for the duration of `run` (one script run), then take it
/// back. Functions find it in a thread-local slot instead of behind a mutex: a run never leaves
/// its thread, and a lock round trip per function call was a measurable share of a short rule.
/// If `run` panics the context stays in the slot and `ctx` is left empty (a fresh one next time).
pub(crate) fn run_with_ctx<R>(ctx: &mut Option<Box<Ctx>>, run: impl FnOnce() -> R) -> R {
    let lent = ctx.take().unwrap_or_default();
    CURRENT.with(|c| *c.borrow_mut() = Some(lent));
    let result = run();
    *ctx = CURRENT.with(|c| c.borrow_mut().take());
    result
}

/// `f` on the context of the run in progress; an error outside a run (a function called from a
/// script some other code evaluates) or from inside another gateway function.
fn with_ctx<R>(f: impl FnOnce(&mut Ctx) -> RhaiResult<R>) -> RhaiResult<R> {
    CURRENT.with(|c| match c.try_borrow_mut() {
        Ok(mut slot) => match slot.as_deref_mut() {
            Some(ctx) => f(ctx),
            None => Err("gateway functions work only while a rule runs".into()),
        },
        Err(_) => Err("gateway function called from inside another".into()),
    })
}

/// A reading value as a script value.
pub fn to_dynamic(v: &Value) -> Dynamic {
    match v {
        Value::F64(x) => Dynamic::from_float(*x),
        Value::I64(x) => Dynamic::from_int(*x),
        Value::Bool(b) => Dynamic::from_bool(*b),
        Value::Str(s) => Dynamic::from(ImmutableString::from(&**s)),
    }
}

/// A script value as a reading value: numbers, booleans and strings only.
pub fn from_dynamic(d: &Dynamic) -> Result<Value, String> {
    if let Ok(x) = d.as_float() {
        Ok(Value::F64(x))
    } else if let Ok(x) = d.as_int() {
        Ok(Value::I64(x))
    } else if let Ok(b) = d.as_bool() {
        Ok(Value::Bool(b))
    } else if d.is_string() {
        let s = d.clone().into_immutable_string().unwrap_or_default();
        Ok(Value::Str(Arc::from(s.as_str())))
    } else {
        Err(format!(
            "a reading value must be a number, bool or string, not {}",
            d.type_name()
        ))
    }
}

fn number(d: &Dynamic, what: &str) -> RhaiResult<f64> {
    if let Ok(x) = d.as_float() {
        Ok(x)
    } else if let Ok(x) = d.as_int() {
        Ok(x as f64)
    } else {
        Err(format!("{what} must be a number, not {}", d.type_name()).into())
    }
}

fn opt_unit(d: &Dynamic) -> RhaiResult<Option<Arc<str>>> {
    if d.is_unit() {
        Ok(None)
    } else if d.is_string() {
        let s = d.clone().into_immutable_string().unwrap_or_default();
        Ok(Some(Arc::from(s.as_str())))
    } else {
        Err(format!("a unit must be a string or (), not {}", d.type_name()).into())
    }
}

/// Parse `"5m"`, `"90s"`, `"1h 30m"` to nanoseconds.
pub fn parse_duration_ns(s: &str) -> Result<i64, String> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| format!("duration `{s}`: {e}"))?;
    i64::try_from(d.as_nanos())
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("duration `{s}` must be above zero and below 292 years"))
}

fn keyed<'a, V>(m: &'a mut FastMap<String, V>, name: &str, init: V) -> RhaiResult<&'a mut V> {
    if !m.contains_key(name) {
        if m.len() >= MAX_KEYS {
            return Err(format!("too many names (more than {MAX_KEYS}) for this helper").into());
        }
        m.insert(name.to_string(), init);
    }
    m.get_mut(name).ok_or_else(|| "unreachable".into())
}

const SEVERITIES: &[&str] = &["info", "warning", "error", "critical"];

/// An engine with the limits and without the gateway functions: enough to compile.
pub(crate) fn base_engine() -> Engine {
    let mut e = Engine::new();
    e.set_max_operations(MAX_OPERATIONS)
        .set_max_call_levels(MAX_CALL_LEVELS)
        .set_max_expr_depths(64, 32)
        .set_max_string_size(64 * 1024)
        .set_max_array_size(10_000)
        .set_max_map_size(10_000)
        .set_strict_variables(true);
    e.disable_symbol("eval");
    e.on_print(|s| tracing::info!(target: "weir::rules", "script: {s}"));
    e.on_debug(|s, _, pos| tracing::debug!(target: "weir::rules", "script {pos}: {s}"));
    e
}

/// The engine scripts are compiled with: the limits without the gateway functions, at rhai's
/// default (simple) optimization level. Not `Full`: it calls functions with constant arguments at
/// compile time, so `print("…")` would print once while compiling, and a call like `clear("hot")`
/// would be folded through the standard library's string `clear` of the same signature.
pub(crate) fn compile_engine() -> Engine {
    base_engine()
}

/// A scope with the variables every script sees; compiling against it lets strict-variables mode
/// reject typos.
pub(crate) fn new_scope() -> Scope<'static> {
    let mut s = Scope::new();
    s.push("state", Map::new());
    s.push("r", ScriptReading::default());
    s
}

/// Number of variables in [`new_scope`]; a run's own variables are rewound past this.
pub(crate) const SCOPE_BASE: usize = 2;

pub(crate) fn compile(engine: &Engine, text: &str) -> Result<AST, rhai::ParseError> {
    engine.compile_with_scope(&new_scope(), text)
}

/// Whether the script calls a function named `name` anywhere (timer rules call `every`).
pub(crate) fn calls_function(ast: &AST, name: &str) -> bool {
    let mut found = false;
    ast.walk(&mut |path: &[rhai::ASTNode]| {
        if let Some(node) = path.last() {
            let hit = match node {
                rhai::ASTNode::Expr(rhai::Expr::FnCall(f, _)) => f.name == name,
                rhai::ASTNode::Stmt(rhai::Stmt::FnCall(f, _)) => f.name == name,
                _ => false,
            };
            if hit {
                found = true;
                return false;
            }
        }
        true
    });
    found
}

/// The engine a stage runs scripts with: limits plus every gateway function, recording into the
/// [`Ctx`] that [`run_with_ctx`] lends to the thread for the run.
pub(crate) fn runtime_engine() -> Engine {
    let mut e = base_engine();
    register_reading(&mut e);
    register_effects(&mut e);
    register_helpers(&mut e);
    register_windows(&mut e);
    e
}

fn register_reading(e: &mut Engine) {
    e.register_type_with_name::<ScriptReading>("Reading");
    e.register_get(
        "device",
        |r: &mut ScriptReading| -> RhaiResult<ImmutableString> {
            Ok(r.get()?.device.as_str().into())
        },
    );
    e.register_get(
        "point",
        |r: &mut ScriptReading| -> RhaiResult<ImmutableString> {
            Ok(r.get()?.point.as_str().into())
        },
    );
    e.register_get(
        "source",
        |r: &mut ScriptReading| -> RhaiResult<ImmutableString> { Ok((&*r.get()?.source).into()) },
    );
    e.register_get("ts", |r: &mut ScriptReading| -> RhaiResult<INT> {
        Ok(r.get()?.ts.as_nanos())
    });
    e.register_get("reason", |r: &mut ScriptReading| -> RhaiResult<Dynamic> {
        Ok(match r.get()?.quality.reason() {
            Some(s) => Dynamic::from(ImmutableString::from(s)),
            None => Dynamic::UNIT,
        })
    });
    e.register_get_set(
        "value",
        |r: &mut ScriptReading| -> RhaiResult<Dynamic> { Ok(to_dynamic(&r.get()?.value)) },
        |r: &mut ScriptReading, v: Dynamic| -> RhaiResult<()> {
            r.get()?.value = from_dynamic(&v)?;
            Ok(())
        },
    );
    e.register_get_set(
        "unit",
        |r: &mut ScriptReading| -> RhaiResult<Dynamic> {
            Ok(match &r.get()?.unit {
                Some(u) => Dynamic::from(ImmutableString::from(&**u)),
                None => Dynamic::UNIT,
            })
        },
        |r: &mut ScriptReading, v: Dynamic| -> RhaiResult<()> {
            r.get()?.unit = opt_unit(&v)?;
            Ok(())
        },
    );
    e.register_get_set(
        "quality",
        |r: &mut ScriptReading| -> RhaiResult<ImmutableString> {
            Ok(r.get()?.quality.as_str().into())
        },
        |r: &mut ScriptReading, q: ImmutableString| -> RhaiResult<()> {
            let q = match q.as_str() {
                "good" => Quality::Good,
                "uncertain" => Quality::Uncertain(Arc::from("set by rule")),
                "bad" => Quality::Bad(Arc::from("rejected by rule")),
                s => match s.strip_prefix("bad:") {
                    Some(reason) => Quality::Bad(Arc::from(reason.trim())),
                    None => {
                        return Err(format!(
                            "quality `{s}`: use good, uncertain, bad or bad:<reason>"
                        )
                        .into())
                    }
                },
            };
            r.get()?.quality = q;
            Ok(())
        },
    );
}

fn emit_into(
    c: &mut Ctx,
    device: Option<&str>,
    point: &str,
    value: &Dynamic,
    unit: &Dynamic,
) -> RhaiResult<()> {
    if c.emits.len() >= MAX_EMITS_PER_RUN {
        return Err(format!("more than {MAX_EMITS_PER_RUN} emits in one run").into());
    }
    if point.is_empty() {
        return Err("emit: the point must not be empty".into());
    }
    let device = match device {
        Some(d) if !d.is_empty() => DeviceId::from(d),
        Some(_) => return Err("emit: the device must not be empty".into()),
        None => c.current_device("emit(point, value)")?,
    };
    let reading = Reading {
        device,
        point: PointId::from(point),
        value: from_dynamic(value)?,
        unit: opt_unit(unit)?,
        ts: Timestamp(c.now),
        quality: Quality::Good,
        source: c.rule_source.clone().unwrap_or_else(|| Arc::from("rules")),
    };
    c.emits.push(reading);
    Ok(())
}

fn alert_into(
    c: &mut Ctx,
    device: Option<&str>,
    name: &str,
    severity: &str,
    message: &str,
) -> RhaiResult<()> {
    if name.is_empty() || name.contains(['+', '#']) {
        return Err(format!("alert name `{name}` must be non-empty, without `+`/`#`").into());
    }
    if !SEVERITIES.contains(&severity) {
        return Err(format!(
            "alert severity `{severity}`: use one of {}",
            SEVERITIES.join(", ")
        )
        .into());
    }
    let device = match device {
        Some(d) => DeviceId::from(d),
        None => c.current_device("alert(name, …)")?,
    };
    if c.active_severity(device.as_str(), name) == Some(severity) {
        return Ok(()); // already active at this severity: nothing to publish
    }
    c.alerts.push(AlertOp::Raise {
        device,
        name: name.to_string(),
        severity: severity.to_string(),
        message: message.to_string(),
    });
    Ok(())
}

fn register_effects(e: &mut Engine) {
    e.register_fn("drop", || {
        with_ctx(|c| {
            c.dropped = true;
            Ok(())
        })
    });

    e.register_fn("emit", |p: &str, v: Dynamic| {
        with_ctx(|c| emit_into(c, None, p, &v, &Dynamic::UNIT))
    });
    e.register_fn("emit", |p: &str, v: Dynamic, u: Dynamic| {
        with_ctx(|c| emit_into(c, None, p, &v, &u))
    });
    e.register_fn("emit", |d: &str, p: &str, v: Dynamic, u: Dynamic| {
        with_ctx(|c| emit_into(c, Some(d), p, &v, &u))
    });

    e.register_fn("alert", |n: &str, s: &str, m: &str| {
        with_ctx(|c| alert_into(c, None, n, s, m))
    });
    e.register_fn("alert", |d: &str, n: &str, s: &str, m: &str| {
        with_ctx(|c| alert_into(c, Some(d), n, s, m))
    });
    e.register_fn("clear", |n: &str| {
        with_ctx(|c| {
            let device = c.current_device("clear(name)")?;
            if c.active_severity(device.as_str(), n).is_none() {
                return Ok(()); // not active: nothing to clear
            }
            c.alerts.push(AlertOp::Clear {
                device,
                name: n.to_string(),
            });
            Ok(())
        })
    });
    e.register_fn("clear", |d: &str, n: &str| {
        with_ctx(|c| {
            if c.active_severity(d, n).is_some() {
                c.alerts.push(AlertOp::Clear {
                    device: DeviceId::from(d),
                    name: n.to_string(),
                });
            }
            Ok(())
        })
    });

    e.register_fn("command", |d: &str, p: &str, v: Dynamic| {
        with_ctx(|c| {
            if c.commands.len() >= MAX_COMMANDS_PER_RUN {
                return Err(format!("more than {MAX_COMMANDS_PER_RUN} commands in one run").into());
            }
            let v = from_dynamic(&v)?;
            c.commands.push((DeviceId::from(d), PointId::from(p), v));
            Ok(())
        })
    });

    // The device shadow (`mqtt.shadow`, crate weir-shadow): `()` when the shadow is not running
    // or knows nothing of the point; `set_desired` is an error without the shadow.
    e.register_fn("shadow_desired", |d: &str, p: &str| -> Dynamic {
        weir_shadow::handle()
            .and_then(|h| h.desired(d, p))
            .map_or(Dynamic::UNIT, |v| to_dynamic(&v))
    });
    e.register_fn("shadow_reported", |d: &str, p: &str| -> Dynamic {
        weir_shadow::handle()
            .and_then(|h| h.reported(d, p))
            .map_or(Dynamic::UNIT, |v| to_dynamic(&v))
    });
    e.register_fn(
        "set_desired",
        |d: &str, p: &str, v: Dynamic| -> RhaiResult<INT> {
            let v = from_dynamic(&v)?;
            let h = weir_shadow::handle()
                .ok_or("set_desired: the device shadow is not enabled (mqtt.shadow)")?;
            h.set_desired(d, p, &v)
                .map(|version| version as INT)
                .map_err(|e| e.to_string().into())
        },
    );

    e.register_fn("latest", |d: &str, p: &str| {
        with_ctx(|c| {
            Ok(match c.cache.get(d, p) {
                Some(v) => to_dynamic(v),
                None => Dynamic::UNIT,
            })
        })
    });
}

fn register_helpers(e: &mut Engine) {
    e.register_fn("now", || with_ctx(|c| Ok(c.now as INT)));
    e.register_fn("duration", |s: &str| -> RhaiResult<INT> {
        Ok(parse_duration_ns(s)?)
    });

    // every("5m"): true on the tick when a new period (aligned to the Unix epoch, so "24h" fires
    // at midnight UTC) has begun since the last time it fired; false when run for a reading and on
    // the first tick.
    e.register_fn("every", |spec: &str| {
        with_ctx(|c| {
            if !c.tick {
                return Ok(false);
            }
            let now = c.now;
            let timers = &mut c.mem().timers;
            if let Some((period, last)) = timers.get_mut(spec) {
                if now.div_euclid(*period) > last.div_euclid(*period) {
                    *last = now;
                    return Ok(true);
                }
                return Ok(false);
            }
            let period = parse_duration_ns(spec)?;
            keyed(timers, spec, (period, now))?;
            Ok(false)
        })
    });

    // hysteresis(name, x, low, high): true once x reaches `high`, false once it falls to `low`,
    // unchanged in between (starts false).
    e.register_fn(
        "hysteresis",
        |name: &str, x: Dynamic, low: Dynamic, high: Dynamic| {
            let (x, low, high) = (
                number(&x, "hysteresis: x")?,
                number(&low, "hysteresis: low")?,
                number(&high, "hysteresis: high")?,
            );
            if low > high {
                return Err(format!("hysteresis: low {low} is above high {high}").into());
            }
            with_ctx(|c| {
                let on = keyed(&mut c.mem().hysteresis, name, false)?;
                if x >= high {
                    *on = true;
                } else if x <= low {
                    *on = false;
                }
                Ok(*on)
            })
        },
    );

    // changed(name, v): true when v differs from the value seen last time under `name` (and the
    // first time) — report-on-change.
    e.register_fn("changed", |name: &str, v: Dynamic| {
        let v = from_dynamic(&v)?;
        with_ctx(|c| {
            let m = &mut c.mem().changed;
            match m.get_mut(name) {
                Some(old) if *old == v => Ok(false),
                Some(old) => {
                    *old = v;
                    Ok(true)
                }
                None => {
                    keyed(m, name, v)?;
                    Ok(true)
                }
            }
        })
    });

    // deadband(name, x, band): true when x is at least `band` away from the value last reported
    // under `name` (and the first time); that value then becomes x.
    e.register_fn("deadband", |name: &str, x: Dynamic, band: Dynamic| {
        let (x, band) = (number(&x, "deadband: x")?, number(&band, "deadband: band")?);
        with_ctx(|c| {
            let m = &mut c.mem().deadband;
            match m.get_mut(name) {
                Some(last) if (x - *last).abs() < band => Ok(false),
                Some(last) => {
                    *last = x;
                    Ok(true)
                }
                None => {
                    keyed(m, name, x)?;
                    Ok(true)
                }
            }
        })
    });
}

fn window_for(name: &str, span: Span) -> RhaiResult<WindowHandle> {
    with_ctx(|c| {
        let windows = &mut c.mem().windows;
        if let Some(w) = windows.get(name) {
            if w.lock().span() != span {
                return Err(format!("window `{name}` already exists with another span").into());
            }
            return Ok(w.clone());
        }
        let w = keyed(
            windows,
            name,
            WindowHandle(Arc::new(Mutex::new(Window::new(span)))),
        )?;
        Ok(w.clone())
    })
}

fn opt_float(v: Option<f64>) -> Dynamic {
    v.map(Dynamic::from_float).unwrap_or(Dynamic::UNIT)
}

fn register_windows(e: &mut Engine) {
    e.register_type_with_name::<WindowHandle>("Window");
    e.register_fn(
        "window",
        |name: &str, span: &str| -> RhaiResult<WindowHandle> {
            window_for(name, Span::Time(parse_duration_ns(span)?))
        },
    );
    e.register_fn("window", |name: &str, n: INT| -> RhaiResult<WindowHandle> {
        if !(1..=crate::window::MAX_SAMPLES as INT).contains(&n) {
            return Err(format!(
                "window `{name}`: {n} values must be 1 to {}",
                crate::window::MAX_SAMPLES
            )
            .into());
        }
        window_for(name, Span::Count(n as usize))
    });
    e.register_fn(
        "push",
        |w: &mut WindowHandle, x: Dynamic| -> RhaiResult<()> {
            let x = number(&x, "window push")?;
            let now = with_ctx(|c| Ok(c.now))?;
            w.lock().push(now, x);
            Ok(())
        },
    );
    e.register_fn("reset", |w: &mut WindowHandle| w.lock().reset());
    e.register_get("mean", |w: &mut WindowHandle| opt_float(w.lock().mean()));
    e.register_get("min", |w: &mut WindowHandle| opt_float(w.lock().min()));
    e.register_get("max", |w: &mut WindowHandle| opt_float(w.lock().max()));
    e.register_get("std", |w: &mut WindowHandle| opt_float(w.lock().std()));
    e.register_get("rate", |w: &mut WindowHandle| opt_float(w.lock().rate()));
    e.register_get("last", |w: &mut WindowHandle| opt_float(w.lock().last()));
    e.register_get("sum", |w: &mut WindowHandle| -> FLOAT { w.lock().sum() });
    e.register_get("count", |w: &mut WindowHandle| -> INT {
        w.lock().count() as INT
    });
    e.register_get("complete", |w: &mut WindowHandle| w.lock().complete());
}
