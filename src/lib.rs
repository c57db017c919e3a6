//! The `weir` daemon: loads gateway.yaml, wires sources → bus → pipeline stages → outbox →
//! forwarder, and shuts down in order.
//!
//! Shutdown order (SIGTERM/SIGINT): sources are cancelled first; once every source task has
//! returned, the bus has no senders left, so the pipeline drains what is on it and commits it to
//! the outbox; then the forwarder gets a moment to collect acknowledgements for messages in flight,
//! publishes the retained `offline` status and disconnects. Everything still in the outbox is
//! delivered by the next start.
//!
//! Adapter kinds are wired by the explicit, feature-gated match in [`source_builder`]: a build
//! without a feature does not contain the adapter, and a config naming it is rejected by
//! `weir check`.

pub mod http;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::Notify;
use weir_config::{ConfigErrors, Diagnostics, GatewayConfig, SourceEntry};
use weir_core::{
    bus, BusReceiver, BusSender, CancellationToken, CommandInbox, CommandRouter, Metrics,
    Passthrough, SourceBuilder, SourceContext, Transform,
};
use weir_mqtt::{Encoder, Forwarder, OutboxWriter};
use weir_store::{Limits, Outbox};

/// Source kinds compiled into this build.
pub const SOURCE_KINDS: &[&str] = &[
    #[cfg(feature = "sim")]
    "sim",
    #[cfg(feature = "coap")]
    "coap",
    #[cfg(feature = "modbus")]
    "modbus",
];

/// A configuration with every source section parsed.
#[derive(Debug)]
pub struct Loaded {
    pub cfg: GatewayConfig,
    pub sources: Vec<(String, Box<dyn SourceBuilder>)>,
    /// The `rules:` section, compiled; `None` when the configuration has none.
    #[cfg(feature = "rules")]
    pub rules: Option<weir_rules::RuleSet>,
}

/// Parse and compile a `rules:` section (the file's directory resolves `file:` scripts).
#[cfg(feature = "rules")]
pub fn rules_section(
    cfg: &GatewayConfig,
    d: &mut Diagnostics,
) -> Option<Option<weir_rules::RuleSet>> {
    let Some((path, value)) = cfg.stages.iter().find(|(k, _)| k == "rules") else {
        return Some(None);
    };
    let dir = cfg
        .file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    weir_rules::parse_section(value.clone(), path, dir, d).map(Some)
}

/// Report an adapter's own validation problems (`key` relative to the source's YAML path `at`,
/// empty for the source itself); true when there were none.
#[cfg(any(feature = "sim", feature = "modbus", feature = "coap"))]
fn report<K: AsRef<str>>(
    d: &mut Diagnostics,
    at: &str,
    problems: impl IntoIterator<Item = (K, String)>,
) -> bool {
    let mut ok = true;
    for (key, msg) in problems {
        let key = key.as_ref();
        d.error(
            &if key.is_empty() {
                at.to_string()
            } else {
                format!("{at}.{key}")
            },
            msg,
        );
        ok = false;
    }
    ok
}

/// Parse one `sources[i]` entry with the adapter crate that owns its kind.
pub fn source_builder(e: &SourceEntry, d: &mut Diagnostics) -> Option<Box<dyn SourceBuilder>> {
    match e.kind.as_str() {
        #[cfg(feature = "sim")]
        "sim" => {
            let c: weir_sim::SimConfig = d.parse(e.body.clone(), &e.path)?;
            let problems = c.validate();
            report(d, &e.path, problems).then(|| Box::new(c) as Box<dyn SourceBuilder>)
        }
        #[cfg(feature = "modbus")]
        "modbus" => {
            let c: weir_modbus::ModbusConfig = d.parse(e.body.clone(), &e.path)?;
            // Profile files are relative to the configuration file.
            let dir = d
                .file()
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf();
            match c.resolve(&dir) {
                Ok(r) => {
                    Some(Box::new(weir_modbus::ModbusBuilder::new(r)) as Box<dyn SourceBuilder>)
                }
                Err(problems) => {
                    report(d, &e.path, problems);
                    None
                }
            }
        }
        #[cfg(feature = "coap")]
        "coap" => {
            let c: weir_coap::CoapConfig = d.parse(e.body.clone(), &e.path)?;
            let problems = c.validate();
            report(d, &e.path, problems).then(|| Box::new(c) as Box<dyn SourceBuilder>)
        }
        other => {
            d.error(
                &e.path,
                format!(
                    "unknown source kind `{other}`; this build has: {}",
                    SOURCE_KINDS.join(", ")
                ),
            );
            None
        }
    }
}

/// Load and validate everything `run` needs: the file, every source section, TLS files.
pub fn load(path: &Path) -> Result<Loaded, ConfigErrors> {
    let (cfg, mut d) = weir_config::load_file(path);
    let mut sources = Vec::new();
    #[cfg(feature = "rules")]
    let mut rules = None;
    if let Some(cfg) = &cfg {
        for e in &cfg.sources {
            if let Some(b) = source_builder(e, &mut d) {
                sources.push((e.name.clone(), b));
            }
        }
        #[cfg(feature = "rules")]
        {
            rules = rules_section(cfg, &mut d).flatten();
        }
        for (stage, _) in &cfg.stages {
            #[cfg(feature = "rules")]
            if stage == "rules" {
                continue;
            }
            d.error(
                stage,
                format!("the `{stage}` stage is not part of this build of weir"),
            );
        }
        if let Some(t) = &cfg.mqtt.tls {
            if !d.has_errors() {
                if let Err(e) = weir_mqtt::tls::client_config(t) {
                    d.error("mqtt.tls", e.to_string());
                }
            }
        }
        let sd = &cfg.gateway.state_dir;
        if sd.exists() && !sd.is_dir() {
            d.error(
                "gateway.state_dir",
                format!("{} is not a directory", sd.display()),
            );
        }
    }
    d.finish()?;
    Ok(Loaded {
        cfg: cfg.expect("no errors means a config"),
        sources,
        #[cfg(feature = "rules")]
        rules,
    })
}

/// Open (or create) the outbox named by the configuration.
pub fn open_outbox(cfg: &GatewayConfig) -> anyhow::Result<Outbox> {
    let path = cfg.store_path();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create state directory {}", dir.display()))?;
    }
    let limits = Limits {
        max_bytes: cfg.store.max_bytes,
        max_age: cfg.store_max_age(),
        synchronous_full: cfg.store.synchronous == weir_config::Synchronous::Full,
        min_free_bytes: cfg.store.min_free_bytes,
    };
    Ok(Outbox::open(&path, limits)?)
}

/// Keeps one source running: builds it, runs it, and after a failure or a panic builds a fresh
/// one after a jittered exponential backoff. Returns when `shutdown` is cancelled.
async fn supervise(
    name: String,
    builder: Arc<dyn SourceBuilder>,
    bus: BusSender,
    inbox: CommandInbox,
    shutdown: CancellationToken,
    metrics: Metrics,
) {
    let restarts = metrics.counter("weir_source_restarts_total", &[("source", &name)]);
    let base = builder.restart_backoff();
    let mut attempt = 0u32;
    loop {
        let result: Result<(), String> = match builder.build(&name, &metrics) {
            Ok(mut src) => {
                let ctx = SourceContext {
                    bus: bus.clone(),
                    shutdown: shutdown.clone(),
                    commands: inbox.clone(),
                };
                let started = tokio::time::Instant::now();
                let r = tokio::spawn(async move { src.run(ctx).await }).await;
                if started.elapsed() > Duration::from_secs(60) {
                    attempt = 0;
                }
                match r {
                    Ok(Ok(())) if shutdown.is_cancelled() => return,
                    Ok(Ok(())) => Err("returned before shutdown".to_string()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(j) if j.is_panic() => Err("panicked".to_string()),
                    Err(j) => Err(j.to_string()),
                }
            }
            Err(e) => Err(e.to_string()),
        };
        if shutdown.is_cancelled() {
            return;
        }
        let delay = weir_mqtt::forwarder::backoff(base, Duration::from_secs(60), attempt);
        attempt = attempt.saturating_add(1);
        restarts.inc();
        if let Err(e) = result {
            tracing::error!(source = %name, "source failed: {e}; restarting in {delay:?}");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// The pipeline: bus → stages → outbox. Returns when the bus is closed and drained.
///
/// A commit that fails (disk full, I/O error) is retried with backoff while the batch is held:
/// the bus then fills and sources slow down or count drops; nothing taken off the bus is lost.
pub async fn pipeline(
    mut rx: BusReceiver,
    mut stages: Vec<Box<dyn Transform>>,
    writer: OutboxWriter,
    max_batch: usize,
    metrics: Metrics,
) {
    let mut committer = Committer {
        writer,
        committed: metrics.counter("weir_readings_committed_total", &[]),
        commit_errors: metrics.counter("weir_outbox_commit_errors_total", &[]),
        held: metrics.gauge("weir_pipeline_held_readings", &[]),
        unreported_drops: 0,
        last_drop_log: None,
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut batch = tokio::select! {
            b = rx.recv() => match b {
                Some(b) => b,
                None => break,
            },
            _ = tick.tick() => {
                // Time-driven output of each stage passes through the stages after it.
                let now = weir_core::Timestamp::now();
                let mut batch = Vec::new();
                for i in 0..stages.len() {
                    let mut out = Vec::new();
                    stages[i].tick(now, &mut out);
                    if !out.is_empty() {
                        for s in stages.iter_mut().skip(i + 1) {
                            s.process(&mut out);
                        }
                        batch.extend(out);
                    }
                }
                committer.note_drops(0); // a quiet spell still reports the last drops
                if batch.is_empty() {
                    continue;
                }
                committer.commit(&batch).await;
                continue;
            }
        };
        while batch.len() < max_batch {
            match rx.try_recv() {
                Some(b) => batch.extend(b),
                None => break,
            }
        }
        for s in stages.iter_mut() {
            s.process(&mut batch);
        }
        if batch.is_empty() {
            continue;
        }
        committer.commit(&batch).await;
    }
    committer.flush_drop_log();
}

/// How often, at most, the pipeline logs that a full outbox dropped rows. A full outbox drops on
/// every commit (up to 100 a second); the count goes to the log once per interval instead, and
/// exactly to `weir buffer stats` and the status document.
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// How often, at most, a commit that keeps failing is logged again.
const COMMIT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Writes batches to the outbox for the pipeline: the counters and the rate-limited drop warning.
struct Committer {
    writer: OutboxWriter,
    committed: weir_core::Counter,
    commit_errors: weir_core::Counter,
    /// Readings taken off the bus and held while their commit fails (`weir_pipeline_held_readings`).
    held: weir_core::Gauge,
    /// Rows dropped for space since the last warning, and when that warning was logged.
    unreported_drops: u64,
    last_drop_log: Option<tokio::time::Instant>,
}

impl Committer {
    /// Commit one batch, retrying with backoff until it is durable. While it fails (a full disk, an
    /// I/O error) the batch is held here and the bus fills behind it; the error is logged at the
    /// first failure and then once per [`COMMIT_ERROR_LOG_INTERVAL`], and recovery is logged too.
    async fn commit(&mut self, batch: &[weir_core::Reading]) {
        let mut delay = Duration::from_millis(100);
        let mut failures = 0u64;
        let mut first_failure = None;
        let mut last_log: Option<tokio::time::Instant> = None;
        loop {
            match self.writer.commit(batch) {
                Ok(r) => {
                    self.committed.add(batch.len() as u64);
                    self.held.set(0);
                    if let Some(t) = first_failure {
                        tracing::info!(
                            "outbox writable again: the {} held readings are stored after {failures} failed attempts over {:.0?}",
                            batch.len(),
                            tokio::time::Instant::now().duration_since(t)
                        );
                    }
                    self.note_drops(r.dropped_for_space);
                    return;
                }
                Err(e) => {
                    self.commit_errors.inc();
                    self.held.set(batch.len() as i64);
                    failures += 1;
                    let now = tokio::time::Instant::now();
                    first_failure.get_or_insert(now);
                    if last_log.is_none_or(|t| now.duration_since(t) >= COMMIT_ERROR_LOG_INTERVAL) {
                        tracing::error!(
                            "outbox commit failed: {e}; holding {} readings and retrying \
                             (attempt {failures}, next in {delay:?}; logged at most every {:?} while it lasts)",
                            batch.len(),
                            COMMIT_ERROR_LOG_INTERVAL
                        );
                        last_log = Some(now);
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Count rows a commit dropped for space; log the count when the last warning is
    /// [`DROP_LOG_INTERVAL`] old (or there was none).
    fn note_drops(&mut self, dropped: u64) {
        self.unreported_drops += dropped;
        let now = tokio::time::Instant::now();
        if self
            .last_drop_log
            .is_none_or(|t| now.duration_since(t) >= DROP_LOG_INTERVAL)
        {
            self.flush_drop_log();
        }
    }

    /// Log the drops not reported yet, whenever the last warning was (at shutdown).
    fn flush_drop_log(&mut self) {
        if self.unreported_drops == 0 {
            return;
        }
        let now = tokio::time::Instant::now();
        let since = match self.last_drop_log {
            Some(t) => format!("in the last {:.0?}", now.duration_since(t)),
            None => "so far".to_string(),
        };
        tracing::warn!(
            dropped = self.unreported_drops,
            "outbox full (store.max_bytes): dropped the oldest rows {since} \
             (logged at most every {DROP_LOG_INTERVAL:?}; total in `weir buffer stats`)"
        );
        self.unreported_drops = 0;
        self.last_drop_log = Some(now);
    }
}

/// Run the gateway until `shutdown` is cancelled. `ready` is called once everything is started.
pub async fn run(
    loaded: Loaded,
    shutdown: CancellationToken,
    ready: impl FnOnce(),
) -> anyhow::Result<()> {
    run_with_reload(loaded, shutdown, Arc::new(Notify::new()), ready).await
}

/// Re-read the configuration file's `rules:` section for a live reload (SIGHUP), every rule
/// compiled on its own; `Err` when the file cannot be read or parsed at all.
#[cfg(feature = "rules")]
pub fn reload_rules(file: &Path) -> Result<weir_rules::Reload, String> {
    let (cfg, d) = weir_config::load_file(file);
    let Some(cfg) = cfg else {
        return Err(d.finish().err().map(|e| e.to_string()).unwrap_or_default());
    };
    let value = cfg
        .stages
        .iter()
        .find(|(k, _)| k == "rules")
        .map(|(_, v)| v.clone());
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok(weir_rules::reload_section(value, dir))
}

/// The file's top-level sections other than `rules:`, as written (before `${VAR}` expansion);
/// `None` when the file cannot be read or parsed.
#[cfg(feature = "rules")]
fn sections_needing_restart(file: &Path) -> Option<serde_yaml::Mapping> {
    let text = std::fs::read_to_string(file).ok()?;
    let serde_yaml::Value::Mapping(mut m) = serde_yaml::from_str(&text).ok()? else {
        return None;
    };
    m.remove("rules");
    Some(m)
}

/// Names of the top-level sections that differ between `before` and `after` (added, removed or
/// changed), sorted.
pub fn changed_sections(before: &serde_yaml::Mapping, after: &serde_yaml::Mapping) -> Vec<String> {
    let mut names: Vec<String> = before
        .keys()
        .chain(after.keys())
        .filter(|k| before.get(*k) != after.get(*k))
        .map(|k| k.as_str().map_or_else(|| format!("{k:?}"), str::to_string))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// What a reload tells about the rest of the file: sections changed since the start, which apply
/// only on restart, and errors outside `rules:` that would stop the next start (rule errors are
/// reported by the rules reload itself).
#[cfg(feature = "rules")]
fn reload_report(file: &Path, at_start: Option<&serde_yaml::Mapping>) {
    if let (Some(before), Some(now)) = (at_start, sections_needing_restart(file)) {
        let changed = changed_sections(before, &now);
        if !changed.is_empty() {
            tracing::warn!(
                "reload: {} changed in {} since the start; only rules are reloaded, these \
                 apply on restart (systemctl restart weir)",
                changed.join(", "),
                file.display()
            );
        }
    }
    if let Err(mut e) = load(file) {
        e.errors.retain(|d| !d.path.starts_with("rules"));
        if !e.errors.is_empty() {
            tracing::error!(
                "reload: the running gateway is unaffected, but the next start would refuse this \
                 file: {}",
                e.to_string().trim_end()
            );
        }
    }
}

/// [`run`], and each time `reload` is notified (SIGHUP) the rules are re-read from the
/// configuration file and swapped in: a rule whose new version does not compile keeps running its
/// previous version. Other sections are not reloaded (that needs a restart); a reload says which
/// of them changed since the start and whether the file would still pass `weir check`.
pub async fn run_with_reload(
    loaded: Loaded,
    shutdown: CancellationToken,
    reload: Arc<Notify>,
    ready: impl FnOnce(),
) -> anyhow::Result<()> {
    #[cfg(feature = "rules")]
    let Loaded {
        cfg,
        sources,
        rules,
    } = loaded;
    #[cfg(not(feature = "rules"))]
    let Loaded { cfg, sources } = loaded;
    let metrics = Metrics::new();
    let router = CommandRouter::new();
    let outbox = Arc::new(Mutex::new(open_outbox(&cfg)?));
    {
        let s = weir_mqtt::forwarder::lock(&outbox).stats()?;
        tracing::info!(
            path = %cfg.store_path().display(),
            rows = s.rows,
            bytes = s.bytes,
            "outbox open"
        );
    }
    let wake = Arc::new(Notify::new());
    let (bus_tx, bus_rx) = bus(cfg.bus.capacity_batches, &metrics);

    // Pipeline: the rule engine (when `rules:` is configured), then the inference slot, which is
    // pass-through until that stage exists.
    // The rules stage exists (empty) even without a `rules:` section, so that a reload can add rules.
    let rules_stage: Box<dyn Transform> = {
        #[cfg(feature = "rules")]
        {
            let set = rules.unwrap_or_default();
            if !set.is_empty() {
                tracing::info!(rules = ?set.names(), "rules loaded");
            }
            let mut stage = weir_rules::RulesStage::new(set, router.clone(), &metrics);
            let handle = stage.reload_handle();
            let file = cfg.file.clone();
            let at_start = sections_needing_restart(&file);
            let token = shutdown.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = token.cancelled() => return,
                        _ = reload.notified() => {}
                    }
                    let (f, start) = (file.clone(), at_start.clone());
                    let read = tokio::task::spawn_blocking(move || {
                        reload_report(&f, start.as_ref());
                        reload_rules(&f)
                    });
                    match read.await {
                        Ok(Ok(r)) => {
                            let n = r.rules.len();
                            if handle.send(r) {
                                tracing::info!(
                                    rules = n,
                                    "reload: rules re-read; they apply from the next batch"
                                );
                            } else {
                                tracing::warn!("reload: a reload is already pending; try again");
                            }
                        }
                        Ok(Err(e)) => {
                            tracing::error!("reload failed, keeping the running rules: {e}")
                        }
                        Err(e) => tracing::error!("reload failed, keeping the running rules: {e}"),
                    }
                }
            });
            Box::new(stage)
        }
        #[cfg(not(feature = "rules"))]
        {
            let _ = &reload;
            Box::new(Passthrough("rules"))
        }
    };
    let stages: Vec<Box<dyn Transform>> = vec![rules_stage, Box::new(Passthrough("inference"))];
    let writer = OutboxWriter::new(outbox.clone(), Encoder::from_config(&cfg), wake.clone());
    let pipeline_task = tokio::spawn(pipeline(
        bus_rx,
        stages,
        writer,
        cfg.store.max_batch_readings,
        metrics.clone(),
    ));

    let fwd_cfg = weir_mqtt::forwarder_config(&cfg)?;
    let fwd_token = CancellationToken::new();
    let forwarder = Forwarder::new(
        fwd_cfg,
        outbox.clone(),
        wake,
        router.clone(),
        metrics.clone(),
    );
    let fwd_task = tokio::spawn(forwarder.run(fwd_token.clone()));

    let http_token = CancellationToken::new();
    if let Some(addr) = cfg.metrics.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("metrics.listen: cannot listen on {addr}"))?;
        tokio::spawn(http::serve(listener, metrics.clone(), http_token.clone()));
        tracing::info!(%addr, "metrics endpoint at http://{addr}/metrics");
    }

    let sources_token = CancellationToken::new();
    let mut supervisors = Vec::new();
    for (name, builder) in sources {
        let builder: Arc<dyn SourceBuilder> = Arc::from(builder);
        let inbox = router.register(&name, &builder.devices(), 64);
        tracing::info!(source = %name, kind = builder.kind(), "starting source");
        supervisors.push(tokio::spawn(supervise(
            name.clone(),
            builder,
            bus_tx.for_source(&name),
            inbox,
            sources_token.child_token(),
            metrics.clone(),
        )));
    }
    drop(bus_tx);
    ready();
    tracing::info!(gateway = %cfg.gateway.id, "weir running");

    shutdown.cancelled().await;
    tracing::info!("shutting down: stopping sources");
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(cfg.gateway.shutdown_timeout_ms);
    sources_token.cancel();
    for s in supervisors {
        if tokio::time::timeout_at(deadline, s).await.is_err() {
            tracing::warn!("a source did not stop in time");
        }
    }
    tracing::info!("draining the bus into the outbox");
    if tokio::time::timeout_at(deadline, pipeline_task)
        .await
        .is_err()
    {
        let held = metrics.gauge("weir_pipeline_held_readings", &[]).get();
        tracing::error!(
            held_readings = held,
            "the pipeline did not drain before gateway.shutdown_timeout_ms: the readings it held \
             (its outbox commits were failing) and those still on the bus are lost"
        );
    }
    fwd_token.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), fwd_task).await;
    http_token.cancel();
    let s = weir_mqtt::forwarder::lock(&outbox).stats()?;
    tracing::info!(
        rows = s.rows,
        "stopped; rows left in the outbox are sent on the next start"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use weir_core::{DeviceInfo, Quality, Reading, Source, SourceError, Timestamp, Value};

    /// Panics on its first run, fails on its second, and reports on the third.
    #[derive(Debug, Default)]
    struct Flaky(Arc<AtomicUsize>);

    struct FlakySource(usize);

    #[async_trait::async_trait]
    impl Source for FlakySource {
        async fn run(&mut self, ctx: SourceContext) -> Result<(), SourceError> {
            match self.0 {
                0 => panic!("adapter bug"),
                1 => Err(SourceError::Other("port vanished".into())),
                _ => {
                    let r = Reading {
                        device: "d".into(),
                        point: "p".into(),
                        value: Value::I64(self.0 as i64),
                        unit: None,
                        ts: Timestamp::now(),
                        quality: Quality::Good,
                        source: Arc::from("flaky"),
                    };
                    ctx.bus.send(vec![r]).await?;
                    ctx.shutdown.cancelled().await;
                    Ok(())
                }
            }
        }
    }

    impl SourceBuilder for Flaky {
        fn kind(&self) -> &'static str {
            "flaky"
        }
        fn devices(&self) -> Vec<DeviceInfo> {
            vec![]
        }
        fn build(
            &self,
            _name: &str,
            _metrics: &Metrics,
        ) -> Result<Box<dyn Source>, weir_core::BuildError> {
            Ok(Box::new(FlakySource(self.0.fetch_add(1, Ordering::SeqCst))))
        }
        fn restart_backoff(&self) -> Duration {
            Duration::from_millis(10)
        }
    }

    #[tokio::test]
    async fn supervisor_restarts_a_panicking_or_failing_source() {
        let metrics = Metrics::new();
        let (tx, mut rx) = bus(4, &metrics);
        let router = CommandRouter::new();
        let inbox = router.register("flaky", &[], 1);
        let token = CancellationToken::new();
        let builds = Arc::new(AtomicUsize::new(0));
        let sup = tokio::spawn(supervise(
            "flaky".into(),
            Arc::new(Flaky(builds.clone())),
            tx.for_source("flaky"),
            inbox,
            token.clone(),
            metrics.clone(),
        ));
        drop(tx);
        let batch = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(batch[0].value, Value::I64(2), "third build reports");
        assert_eq!(builds.load(Ordering::SeqCst), 3);
        assert_eq!(
            metrics
                .counter("weir_source_restarts_total", &[("source", "flaky")])
                .get(),
            2
        );
        token.cancel();
        sup.await.unwrap();
        assert!(
            rx.recv().await.is_none(),
            "bus closes once the supervisor is gone"
        );
    }
}
