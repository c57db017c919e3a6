//! The rules pipeline stage.
//!
//! For every reading of a batch, each rule whose `match:` fits runs in configuration order; a rule
//! sees the reading as the previous rules left it, and once a rule drops it no further rule runs.
//! What a successful run emitted follows the reading in the batch (derived readings), so
//! per-device order is kept; alerts are typed events ([`weir_core::Event::Alert`]) handed to the
//! pipeline through [`Transform::take_events`] and committed with the batch; derived readings do not run rules again (no loops
//! within a stage) but do update the last-value cache. Timer rules (scripts that call `every`)
//! also run once per pipeline tick with `r` = `()`.
//!
//! A run that fails — a script error, or the operations limit stopping a runaway loop — is counted
//! in `weir_rule_errors_total{rule=…}`, logged at most once per [`LOG_INTERVAL`] per rule (with the
//! number suppressed), and its effects are discarded: the reading goes on as it was before that
//! rule, and the other rules still run.
//!
//! Alerts are edge-triggered per (device, name): `alert` publishes only when the alert becomes
//! active or its severity changes, `clear` only when it was active. Active alerts live in memory,
//! so a restart forgets them (a still-true condition raises again).
//!
//! Reload (SIGHUP): a [`Reload`] sent through the stage's [`ReloadHandle`] is applied before the
//! next batch or tick. Each rule is replaced by its new version; a rule whose new version does
//! not compile keeps running its previous version (and the log says so); a rule whose script and
//! `match:` are unchanged keeps its `state`, windows and helpers' memory; removed rules stop.
//!
//! `latest(device, point)` reads a last-value cache that the stage keeps only while some rule
//! calls `latest`; a reload that adds the first such rule starts it empty.
//!
//! Commands go through the [`CommandRouter`] (which enforces `writable`); a refusal is counted in
//! `weir_rule_commands_total{rule,result="refused"}` and logged, the adapter's answer arrives
//! later and is counted as `ok` / `failed` by a small task (when a tokio runtime is present).
//! Either way the outcome becomes a [`weir_core::Event::CommandResult`], published like the
//! answer to an MQTT `…/set` (a refusal at once with the batch, an answer through the stage's
//! [`EventSender`] when it arrives).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rhai::{Dynamic, Engine, Scope};
use weir_core::{
    Alert, Batch, BuildError, CommandOrigin, CommandResult, CommandRouter, Counter, DeviceId,
    EventSender, Metrics, PointId, Reading, StageBuilder, StageContext, Timestamp, Transform,
    Value,
};

use crate::config::{CompiledRule, Reload, RuleSet};
use crate::engine::{self, AlertOp, Ctx, ScriptReading, DERIVED_SOURCE_PREFIX, SCOPE_BASE};

/// A rule's errors are logged at most this often (the rest are counted).
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Active alerts remembered at most; further raises are refused as script errors.
pub const MAX_ACTIVE_ALERTS: usize = 10_000;
/// How long a command's answer is awaited before it counts as failed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// What a rule did, as recorded for `weir rules test` (the daemon records nothing).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The rule changed the reading's value, unit or quality; the reading as it now is.
    Changed {
        rule: Arc<str>,
        reading: Reading,
    },
    Dropped {
        rule: Arc<str>,
    },
    Emitted {
        rule: Arc<str>,
        reading: Reading,
    },
    /// An alert became active (`raised`) or was cleared; only edges are recorded.
    Alert {
        rule: Arc<str>,
        device: DeviceId,
        name: String,
        severity: String,
        message: String,
        raised: bool,
    },
    /// A command; `routed` is the router's verdict, `None` when offline.
    Command {
        rule: Arc<str>,
        device: DeviceId,
        point: PointId,
        value: Value,
        routed: Option<Result<(), String>>,
    },
    Error {
        rule: Arc<str>,
        message: String,
    },
}

impl RuleRt {
    fn new(rule: CompiledRule, metrics: &Metrics) -> RuleRt {
        let name: &str = &rule.name;
        let c = |n: &str| metrics.counter(n, &[("rule", name)]);
        let cmd = |res: &str| {
            metrics.counter(
                "weir_rule_commands_total",
                &[("rule", name), ("result", res)],
            )
        };
        RuleRt {
            scope: engine::new_scope(),
            caches: rhai::Caches::new(),
            source: Arc::from(format!("{DERIVED_SOURCE_PREFIX}{name}")),
            errors: c("weir_rule_errors_total"),
            emitted: c("weir_rule_emitted_total"),
            dropped: c("weir_rule_dropped_total"),
            alerts: c("weir_rule_alerts_total"),
            cmd_sent: cmd("sent"),
            cmd_refused: cmd("refused"),
            cmd_ok: cmd("ok"),
            cmd_failed: cmd("failed"),
            last_log: None,
            suppressed: 0,
            rule,
        }
    }
}

struct RuleRt {
    rule: CompiledRule,
    scope: Scope<'static>,
    /// rhai's function-resolution cache, kept across runs of this rule's (unchanging) AST.
    caches: rhai::Caches,
    source: Arc<str>,
    errors: Counter,
    emitted: Counter,
    dropped: Counter,
    alerts: Counter,
    cmd_sent: Counter,
    cmd_refused: Counter,
    cmd_ok: Counter,
    cmd_failed: Counter,
    last_log: Option<Instant>,
    suppressed: u64,
}

/// Sends re-read rules to a running stage (see the module docs). Cloneable; `send` never blocks.
#[derive(Debug, Clone)]
pub struct ReloadHandle(std::sync::mpsc::SyncSender<Reload>);

impl ReloadHandle {
    /// Queue `reload` for the stage; `false` when the stage is gone or a reload is already queued.
    pub fn send(&self, reload: Reload) -> bool {
        self.0.try_send(reload).is_ok()
    }
}

/// The rule engine as a [`Transform`].
pub struct RulesStage {
    engine: Engine,
    metrics: Metrics,
    reloads: Option<std::sync::mpsc::Receiver<Reload>>,
    /// What the gateway functions record into; lent to the thread during each run.
    ctx: Option<Box<Ctx>>,
    rules: Vec<RuleRt>,
    timer_rules: Vec<usize>,
    /// Some rule calls `latest`: keep the last value of every point.
    track_latest: bool,
    router: Option<CommandRouter>,
    active: engine::FastMap<(DeviceId, String), String>,
    trace: Option<Vec<Event>>,
    /// Alerts and refused commands of the current batch, for [`Transform::take_events`].
    events: Vec<weir_core::Event>,
    /// Where command answers that arrive later go (the pipeline's event channel).
    results: Option<EventSender>,
}

impl std::fmt::Debug for RulesStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RulesStage")
            .field(
                "rules",
                &self.rules.iter().map(|r| &r.rule.name).collect::<Vec<_>>(),
            )
            .field("active_alerts", &self.active.len())
            .finish()
    }
}

impl RulesStage {
    /// The daemon's stage: commands go to `router`, counters to `metrics`.
    pub fn new(set: RuleSet, router: CommandRouter, metrics: &Metrics) -> RulesStage {
        Self::build(set, Some(router), metrics, false)
    }

    /// For `weir rules test`: commands are recorded, not sent, and every effect is traced
    /// (see [`RulesStage::take_events`]).
    pub fn offline(set: RuleSet) -> RulesStage {
        Self::build(set, None, &Metrics::new(), true)
    }

    fn build(
        set: RuleSet,
        router: Option<CommandRouter>,
        metrics: &Metrics,
        trace: bool,
    ) -> RulesStage {
        let ctx = Some(Box::default());
        let engine = engine::runtime_engine();
        let timer_rules = (0..set.rules.len())
            .filter(|i| set.rules[*i].uses_timers)
            .collect();
        let track_latest = set.rules.iter().any(|r| r.uses_latest);
        let rules = set
            .rules
            .into_iter()
            .map(|rule| RuleRt::new(rule, metrics))
            .collect();
        RulesStage {
            engine,
            metrics: metrics.clone(),
            reloads: None,
            ctx,
            rules,
            timer_rules,
            track_latest,
            router,
            active: Default::default(),
            trace: trace.then(Vec::new),
            events: Vec::new(),
            results: None,
        }
    }

    /// Publish the answers to the commands rules send through `events` (the daemon's pipeline).
    pub fn with_results(mut self, events: EventSender) -> RulesStage {
        self.results = Some(events);
        self
    }

    /// A handle to send reloads to this stage (one queued at a time).
    pub fn reload_handle(&mut self) -> ReloadHandle {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.reloads = Some(rx);
        ReloadHandle(tx)
    }

    fn take_reloads(&mut self) {
        let pending: Vec<Reload> = match &self.reloads {
            Some(rx) => rx.try_iter().collect(),
            None => return,
        };
        for r in pending {
            self.apply_reload(r);
        }
    }

    /// Replace the rules with `reload`'s (see the module docs); returns the names of the rules
    /// that kept their previous version because the new one failed.
    pub fn apply_reload(&mut self, reload: Reload) -> Vec<String> {
        let mut old_mem = std::mem::take(&mut ctx(&mut self.ctx).mem);
        old_mem.resize_with(self.rules.len(), Default::default);
        let mut old: HashMap<Arc<str>, (RuleRt, engine::RuleMem)> = self
            .rules
            .drain(..)
            .zip(old_mem)
            .map(|(rt, mem)| (rt.rule.name.clone(), (rt, mem)))
            .collect();
        let mut rules = Vec::new();
        let mut mem = Vec::new();
        let mut kept_old = Vec::new();
        for (name, result) in reload.rules {
            let previous = old.remove(name.as_str());
            match (result, previous) {
                (Ok(rule), Some((rt, m)))
                    if rt.rule.text == rule.text && rt.rule.match_key == rule.match_key =>
                {
                    rules.push(RuleRt { rule, ..rt });
                    mem.push(m);
                }
                (Ok(rule), previous) => {
                    tracing::info!(
                        rule = %name,
                        "rule {}",
                        if previous.is_some() { "replaced" } else { "added" }
                    );
                    rules.push(RuleRt::new(rule, &self.metrics));
                    mem.push(engine::RuleMem::default());
                }
                (Err(e), Some((rt, m))) => {
                    tracing::error!(
                        rule = %name,
                        "reload: the new version does not compile, keeping the previous one: {e}"
                    );
                    kept_old.push(name);
                    rules.push(rt);
                    mem.push(m);
                }
                (Err(e), None) => {
                    tracing::error!(rule = %name, "reload: not loaded: {e}");
                }
            }
        }
        for name in old.keys() {
            tracing::info!(rule = %name, "rule removed");
        }
        self.timer_rules = (0..rules.len())
            .filter(|i| rules[*i].rule.uses_timers)
            .collect();
        self.track_latest = rules.iter().any(|r| r.rule.uses_latest);
        self.rules = rules;
        let c = ctx(&mut self.ctx);
        c.mem = mem;
        if !self.track_latest {
            c.cache = Default::default();
        }
        kept_old
    }

    /// Events recorded since the last call (offline stages only).
    /// What the rules did since the last call (offline stages only: `weir rules test`).
    pub fn take_trace(&mut self) -> Vec<Event> {
        self.trace.as_mut().map(std::mem::take).unwrap_or_default()
    }

    pub fn rule_names(&self) -> Vec<&str> {
        self.rules.iter().map(|r| &*r.rule.name).collect()
    }

    /// Run rule `i` for `reading` (or on the tick when `None`); effects go to `out`. Returns
    /// whether the reading was dropped.
    fn run(&mut self, i: usize, reading: Option<&mut Reading>, now: i64, out: &mut Batch) -> bool {
        let rt = &mut self.rules[i];
        ctx(&mut self.ctx).begin(
            i,
            &rt.source,
            reading.is_none(),
            reading.as_ref().map_or(now, |r| r.ts.as_nanos()),
            reading.as_ref().map(|r| r.device.clone()),
        );
        rt.scope.rewind(SCOPE_BASE);
        let input = reading.as_ref().map(|r| (*r).clone());
        match (input, rt.scope.get_value_mut::<ScriptReading>("r")) {
            (Some(r), Some(slot)) => slot.0 = Some(r),
            (Some(r), None) => {
                rt.scope.set_value("r", ScriptReading(Some(r)));
            }
            (None, _) => {
                rt.scope.set_value("r", Dynamic::UNIT);
            }
        }
        let result = engine::run_with_ctx(&mut self.ctx, || {
            eval(&self.engine, &mut rt.caches, &mut rt.scope, &rt.rule.ast)
        });
        rt.scope.rewind(SCOPE_BASE);
        let after = match reading.is_some() {
            true => rt
                .scope
                .get_value_mut::<ScriptReading>("r")
                .and_then(|s| s.0.take()),
            false => None,
        };
        let (dropped, emits, alerts, commands) = {
            let c = ctx(&mut self.ctx);
            (
                c.dropped,
                std::mem::take(&mut c.emits),
                std::mem::take(&mut c.alerts),
                std::mem::take(&mut c.commands),
            )
        };
        let failure = match (result, reading.is_some(), &after) {
            (Err(e), ..) => Some(e.to_string()),
            (Ok(()), true, None) => {
                Some("`r` was replaced by something that is not a reading".into())
            }
            _ => None,
        };
        if let Some(message) = failure {
            self.fail(i, message);
            return false;
        }
        let rt = &self.rules[i];
        let name = rt.rule.name.clone();
        if let (Some(reading), Some(after)) = (reading, after) {
            if let Some(t) = &mut self.trace {
                if after.value != reading.value
                    || after.unit != reading.unit
                    || after.quality != reading.quality
                {
                    t.push(Event::Changed {
                        rule: name.clone(),
                        reading: after.clone(),
                    });
                }
            }
            *reading = after;
        }
        if dropped {
            rt.dropped.inc();
            if let Some(t) = &mut self.trace {
                t.push(Event::Dropped { rule: name.clone() });
            }
        }
        rt.emitted.add(emits.len() as u64);
        if let Some(t) = &mut self.trace {
            t.extend(emits.iter().map(|r| Event::Emitted {
                rule: name.clone(),
                reading: r.clone(),
            }));
        }
        let ts = {
            let c = ctx(&mut self.ctx);
            if self.track_latest {
                for r in &emits {
                    c.cache.update(r);
                }
            }
            c.now
        };
        out.extend(emits);
        for a in alerts {
            self.apply_alert(i, a, ts);
        }
        for (device, point, value) in commands {
            self.send_command(i, device, point, value);
        }
        dropped
    }

    fn fail(&mut self, i: usize, message: String) {
        let rt = &mut self.rules[i];
        rt.errors.inc();
        if let Some(t) = &mut self.trace {
            t.push(Event::Error {
                rule: rt.rule.name.clone(),
                message: message.clone(),
            });
            return;
        }
        let now = Instant::now();
        if rt
            .last_log
            .is_some_and(|t| now.duration_since(t) < LOG_INTERVAL)
        {
            rt.suppressed += 1;
            return;
        }
        tracing::warn!(
            rule = %rt.rule.name,
            script = %rt.rule.origin,
            suppressed = rt.suppressed,
            "rule failed, skipped for this reading: {message}"
        );
        rt.last_log = Some(now);
        rt.suppressed = 0;
    }

    fn apply_alert(&mut self, i: usize, op: AlertOp, ts: i64) {
        let rt = &self.rules[i];
        let alert = match op {
            AlertOp::Raise {
                device,
                name,
                severity,
                message,
            } => {
                let key = (device.clone(), name.clone());
                if self.active.get(&key) == Some(&severity) {
                    return;
                }
                if !self.active.contains_key(&key) && self.active.len() >= MAX_ACTIVE_ALERTS {
                    self.fail(i, format!("more than {MAX_ACTIVE_ALERTS} active alerts"));
                    return;
                }
                self.active.insert(key, severity.clone());
                ctx(&mut self.ctx)
                    .active
                    .entry(device.clone())
                    .or_default()
                    .insert(name.clone(), severity.clone());
                if let Some(t) = &mut self.trace {
                    t.push(Event::Alert {
                        rule: rt.rule.name.clone(),
                        device: device.clone(),
                        name: name.clone(),
                        severity: severity.clone(),
                        message: message.clone(),
                        raised: true,
                    });
                }
                Alert {
                    device,
                    name: Arc::from(name),
                    active: true,
                    severity: Arc::from(severity),
                    message: Arc::from(message),
                    by: rt.rule.name.clone(),
                    ts: Timestamp(ts),
                }
            }
            AlertOp::Clear { device, name } => {
                let Some(severity) = self.active.remove(&(device.clone(), name.clone())) else {
                    return;
                };
                {
                    let c = ctx(&mut self.ctx);
                    if let Some(m) = c.active.get_mut(device.as_str()) {
                        m.remove(&name);
                        if m.is_empty() {
                            c.active.remove(device.as_str());
                        }
                    }
                }
                if let Some(t) = &mut self.trace {
                    t.push(Event::Alert {
                        rule: rt.rule.name.clone(),
                        device: device.clone(),
                        name: name.clone(),
                        severity: severity.clone(),
                        message: String::new(),
                        raised: false,
                    });
                }
                Alert {
                    device,
                    name: Arc::from(name),
                    active: false,
                    severity: Arc::from(severity),
                    message: Arc::from(""),
                    by: rt.rule.name.clone(),
                    ts: Timestamp(ts),
                }
            }
        };
        rt.alerts.inc();
        self.events.push(weir_core::Event::Alert(alert));
    }

    fn send_command(&mut self, i: usize, device: DeviceId, point: PointId, value: Value) {
        let rt = &mut self.rules[i];
        let name = rt.rule.name.clone();
        let Some(router) = &self.router else {
            if let Some(t) = &mut self.trace {
                t.push(Event::Command {
                    rule: name,
                    device,
                    point,
                    value,
                    routed: None,
                });
            }
            return;
        };
        let what = format!("{device}/{point} <- {value}");
        let (cmd_device, cmd_point, cmd_value) = (device.clone(), point.clone(), value.clone());
        let routed = router.route(
            device.clone(),
            point.clone(),
            value.clone(),
            CommandOrigin::Rule(name.clone()),
        );
        if let Some(t) = &mut self.trace {
            t.push(Event::Command {
                rule: name.clone(),
                device,
                point,
                value,
                routed: Some(routed.as_ref().map(|_| ()).map_err(|e| e.to_string())),
            });
        }
        match routed {
            Err(e) => {
                rt.cmd_refused.inc();
                let message = format!("command {what} refused: {e}");
                if self.results.is_some() {
                    self.events
                        .push(weir_core::Event::CommandResult(CommandResult {
                            device: cmd_device,
                            point: cmd_point,
                            value: cmd_value,
                            origin: CommandOrigin::Rule(name.clone()),
                            outcome: Err(e.to_string()),
                            ts: Timestamp::now(),
                        }));
                }
                self.fail_soft(i, message);
            }
            Ok(rx) => {
                rt.cmd_sent.inc();
                tracing::info!(rule = %name, "command {what} sent");
                let (ok, failed) = (rt.cmd_ok.clone(), rt.cmd_failed.clone());
                let results = self.results.clone();
                if let Ok(h) = tokio::runtime::Handle::try_current() {
                    h.spawn(async move {
                        let outcome = match tokio::time::timeout(COMMAND_TIMEOUT, rx).await {
                            Ok(Ok(Ok(()))) => {
                                ok.inc();
                                tracing::debug!(rule = %name, "command {what}: ok");
                                Ok(())
                            }
                            Ok(Ok(Err(e))) => {
                                failed.inc();
                                tracing::warn!(rule = %name, "command {what} failed: {e}");
                                Err(e)
                            }
                            Ok(Err(_)) => {
                                failed.inc();
                                tracing::warn!(rule = %name, "command {what}: adapter dropped it");
                                Err("the adapter dropped the command without answering".into())
                            }
                            Err(_) => {
                                failed.inc();
                                tracing::warn!(rule = %name, "command {what}: no answer in {COMMAND_TIMEOUT:?}");
                                Err(format!(
                                    "no answer from the adapter within {}s",
                                    COMMAND_TIMEOUT.as_secs()
                                ))
                            }
                        };
                        if let Some(events) = results {
                            events
                                .send(weir_core::Event::CommandResult(CommandResult {
                                    device: cmd_device,
                                    point: cmd_point,
                                    value: cmd_value,
                                    origin: CommandOrigin::Rule(name),
                                    outcome,
                                    ts: Timestamp::now(),
                                }))
                                .await;
                        }
                    });
                }
            }
        }
    }

    /// Log (rate-limited like errors) without counting a script error.
    fn fail_soft(&mut self, i: usize, message: String) {
        let rt = &mut self.rules[i];
        let now = Instant::now();
        if rt
            .last_log
            .is_some_and(|t| now.duration_since(t) < LOG_INTERVAL)
        {
            rt.suppressed += 1;
            return;
        }
        tracing::warn!(rule = %rt.rule.name, suppressed = rt.suppressed, "{message}");
        rt.last_log = Some(now);
        rt.suppressed = 0;
    }
}

/// The stage's context, a fresh one if a panicking run left none.
fn ctx(c: &mut Option<Box<Ctx>>) -> &mut Ctx {
    c.get_or_insert_with(Box::default)
}

/// `Engine::run_ast_with_scope`, except that rhai's function-resolution cache survives between
/// runs: a fresh cache per run cost about a fifth of a short rule's time in name look-ups. The
/// cache belongs to one rule, whose AST never changes, so what it holds stays valid.
#[allow(deprecated)]
fn eval(
    engine: &Engine,
    caches: &mut rhai::Caches,
    scope: &mut Scope<'static>,
    ast: &rhai::AST,
) -> Result<(), Box<rhai::EvalAltResult>> {
    let mut global = engine.new_global_runtime_state();
    global.lib.push(ast.shared_lib().clone());
    engine
        .eval_statements_raw(&mut global, caches, scope, ast.statements())
        .map(|_| ())
}

impl Transform for RulesStage {
    fn name(&self) -> &str {
        "rules"
    }

    fn process(&mut self, batch: &mut Batch) {
        self.take_reloads();
        if self.rules.is_empty() {
            return;
        }
        let input = std::mem::take(batch);
        batch.reserve(input.len());
        let mut extra: Batch = Vec::new();
        for mut reading in input {
            let mut keep = true;
            for i in 0..self.rules.len() {
                let r = &self.rules[i].rule;
                if !r.matches(
                    reading.device.as_str(),
                    reading.point.as_str(),
                    &reading.source,
                ) {
                    continue;
                }
                if self.run(i, Some(&mut reading), 0, &mut extra) {
                    keep = false;
                    break;
                }
            }
            if self.track_latest {
                ctx(&mut self.ctx).cache.update(&reading);
            }
            if keep {
                batch.push(reading);
            }
            batch.append(&mut extra);
        }
    }

    fn take_events(&mut self, out: &mut Vec<weir_core::Event>) {
        out.append(&mut self.events);
    }

    /// Swap in the reloaded rules: unchanged rules keep their state, windows and alerts.
    fn reload(&mut self, builder: &dyn StageBuilder) -> bool {
        let Some(b) = builder.as_any().downcast_ref::<RulesBuilder>() else {
            return false;
        };
        let n = b.set.len();
        self.apply_reload(Reload {
            rules: b
                .set
                .rules
                .iter()
                .map(|r| (r.name.to_string(), Ok(r.clone())))
                .collect(),
        });
        tracing::info!(rules = n, "reload: rules applied");
        true
    }

    fn tick(&mut self, now: Timestamp, out: &mut Batch) {
        self.take_reloads();
        for k in 0..self.timer_rules.len() {
            let i = self.timer_rules[k];
            self.run(i, None, now.as_nanos(), out);
        }
    }
}

/// The `rules:` section as a [`StageBuilder`]: builds the daemon's [`RulesStage`] (commands through
/// the router, their answers as events) and reloads a running one in place.
#[derive(Debug, Clone, Default)]
pub struct RulesBuilder {
    pub set: RuleSet,
}

impl StageBuilder for RulesBuilder {
    fn name(&self) -> &'static str {
        "rules"
    }

    fn build(&self, ctx: &StageContext) -> Result<Box<dyn Transform>, BuildError> {
        if !self.set.is_empty() {
            tracing::info!(rules = ?self.set.names(), "rules loaded");
        }
        Ok(Box::new(
            RulesStage::new(self.set.clone(), ctx.router.clone(), &ctx.metrics)
                .with_results(ctx.events.clone()),
        ))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
