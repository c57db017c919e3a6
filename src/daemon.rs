//! Wiring: builds every part from a [`Loaded`] configuration, runs until shutdown, reloads on
//! SIGHUP, and shuts down in order.
//!
//! Shutdown order (SIGTERM/SIGINT): sources are cancelled first; once every source task has
//! returned, the bus has no senders left, so the pipeline drains what is on it and commits it to
//! the outbox; then the forwarder gets a moment to collect acknowledgements for messages in flight,
//! publishes the retained `offline` status and disconnects. Everything still in the outbox is
//! delivered by the next start.
//!
//! Reload (SIGHUP) re-reads the whole file. A file that fails `weir check` changes nothing (its
//! errors are logged). Otherwise, by section: `sources` — removed sources stop, added ones start,
//! changed ones restart, unchanged ones keep running; stages (`rules`) — reloaded in place between
//! two batches (unchanged rules keep their state); `mqtt` — the forwarder reconnects with the new
//! settings and new rows use the new topics; `store` — `max_bytes` and `min_free_bytes` apply at
//! once, the rest is named as needing a restart, like `gateway`, `bus` and `metrics`. Nothing
//! buffered is lost: the bus, the pipeline and the outbox are never replaced, a stopped source's
//! readings already on the bus are committed, and a reconnecting forwarder resends from the outbox.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use weir_config::GatewayConfig;
use weir_core::{
    bus, events, CancellationToken, CommandRouter, Metrics, Registry, StageContext, Transform,
};
use weir_mqtt::{Encoder, Forwarder, OutboxWriter};
use weir_store::{Limits, Outbox};

use crate::http;
use crate::load::{load, Loaded};
use crate::pipeline::{Pipeline, StageReload};
use crate::supervisor::Sources;

/// A point is stale after this many expected periods without a reading.
pub const STALE_AFTER_PERIODS: u32 = 3;

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

/// Run the gateway until `shutdown` is cancelled. `ready` is called once everything is started.
pub async fn run(
    loaded: Loaded,
    shutdown: CancellationToken,
    ready: impl FnOnce(),
) -> anyhow::Result<()> {
    run_with_reload(loaded, shutdown, Arc::new(Notify::new()), ready).await
}

/// The running forwarder and how to stop it.
struct RunningForwarder {
    token: CancellationToken,
    task: JoinHandle<()>,
}

struct Parts {
    metrics: Metrics,
    router: CommandRouter,
    outbox: Arc<Mutex<Outbox>>,
    wake: Arc<Notify>,
}

fn start_forwarder(cfg: &GatewayConfig, p: &Parts) -> anyhow::Result<RunningForwarder> {
    let fwd_cfg = weir_mqtt::forwarder_config(cfg)?;
    let token = CancellationToken::new();
    let forwarder = Forwarder::new(
        fwd_cfg,
        p.outbox.clone(),
        p.wake.clone(),
        p.router.clone(),
        p.metrics.clone(),
    );
    let task = tokio::spawn(forwarder.run(token.clone()));
    Ok(RunningForwarder { token, task })
}

impl RunningForwarder {
    /// A placeholder for a forwarder that is not running.
    fn stopped() -> RunningForwarder {
        RunningForwarder {
            token: CancellationToken::new(),
            task: tokio::spawn(async {}),
        }
    }

    async fn stop(self) {
        self.token.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

/// The file's top-level sections as written (before `${VAR}` expansion); `None` when the file
/// cannot be read or parsed.
fn sections(file: &Path) -> Option<serde_yaml::Mapping> {
    let text = std::fs::read_to_string(file).ok()?;
    match serde_yaml::from_str(&text).ok()? {
        serde_yaml::Value::Mapping(m) => Some(m),
        _ => None,
    }
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

/// [`run`], and each time `reload` is notified (SIGHUP) the whole file is re-read and applied as
/// the module docs say.
pub async fn run_with_reload(
    loaded: Loaded,
    shutdown: CancellationToken,
    reload: Arc<Notify>,
    ready: impl FnOnce(),
) -> anyhow::Result<()> {
    let Loaded {
        mut cfg,
        sources,
        stages,
    } = loaded;
    let metrics = Metrics::new();
    let registry = Registry::new(&metrics);
    let router = CommandRouter::with_registry(registry.clone());
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
    let parts = Parts {
        metrics: metrics.clone(),
        router: router.clone(),
        outbox: outbox.clone(),
        wake: Arc::new(Notify::new()),
    };
    let (bus_tx, bus_rx) = bus(cfg.bus.capacity_batches, &metrics);
    // Command answers arriving after their batch; producers wait while it is full.
    let (ev_tx, ev_rx) = events(1024);
    let stage_ctx = StageContext {
        metrics: metrics.clone(),
        router: router.clone(),
        registry: registry.clone(),
        events: ev_tx,
        config_dir: cfg
            .file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf(),
        state_dir: cfg.gateway.state_dir.join("stages"),
    };
    let mut built: Vec<Box<dyn Transform>> = Vec::new();
    for b in &stages {
        built.push(b.build(&stage_ctx)?);
    }
    let writer = OutboxWriter::new(
        outbox.clone(),
        Encoder::from_config(&cfg),
        parts.wake.clone(),
    );
    let (stage_reload_tx, stage_reload_rx) = mpsc::channel::<StageReload>(1);
    let pipeline_task = tokio::spawn(
        Pipeline {
            rx: bus_rx,
            events: ev_rx,
            stages: built,
            writer: writer.clone(),
            max_batch: cfg.store.max_batch_readings,
            commit_window: Duration::from_millis(cfg.store.commit_window_ms),
            metrics: metrics.clone(),
            registry: registry.clone(),
            stale_after_periods: STALE_AFTER_PERIODS,
            reloads: Some(stage_reload_rx),
            stage_ctx: Some(stage_ctx),
        }
        .run(),
    );

    let http_token = CancellationToken::new();
    if let Some(addr) = cfg.metrics.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("metrics.listen: cannot listen on {addr}"))?;
        tokio::spawn(http::serve(
            listener,
            metrics.clone(),
            registry.clone(),
            http_token.clone(),
        ));
        tracing::info!(%addr, "metrics endpoint at http://{addr}/metrics, devices at /devices");
    }

    let mut srcs = Sources::new(
        bus_tx,
        router.clone(),
        metrics.clone(),
        &cfg.gateway.state_dir,
        CancellationToken::new(),
    );
    for s in sources {
        srcs.start(s);
    }
    // After the sources claimed their devices: the forwarder subscribes their command topics
    // before it publishes `online`.
    let mut fwd = start_forwarder(&cfg, &parts)?;
    // The device shadow (`mqtt.shadow`): its own connection and task; started once, not
    // reconfigured by a reload.
    let shadow_token = CancellationToken::new();
    let shadow_task = weir_shadow::service::ServiceConfig::from_config(&cfg)?.map(|c| {
        tokio::spawn(weir_shadow::service::run(
            c,
            router.clone(),
            shadow_token.clone(),
        ))
    });
    ready();
    tracing::info!(gateway = %cfg.gateway.id, "weir running");

    let mut at_start = sections(&cfg.file);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = reload.notified() => {}
        }
        let file = cfg.file.clone();
        let new = match tokio::task::spawn_blocking(move || load(&file)).await {
            Ok(Ok(new)) => new,
            Ok(Err(e)) => {
                tracing::error!(
                    "reload: {} does not pass `weir check`; nothing changed:\n{}",
                    cfg.file.display(),
                    e.to_string().trim_end()
                );
                continue;
            }
            Err(e) => {
                tracing::error!("reload failed, nothing changed: {e}");
                continue;
            }
        };
        let now = sections(&cfg.file);
        let changed = match (&at_start, &now) {
            (Some(a), Some(b)) => changed_sections(a, b),
            _ => vec!["(unreadable)".to_string()],
        };
        let timeout = Duration::from_millis(cfg.gateway.shutdown_timeout_ms);
        // Stages always: a rule's `file:` script may have changed without the YAML changing.
        if stage_reload_tx.send(new.stages.clone()).await.is_err() {
            tracing::error!("reload: the pipeline is gone");
        }
        let mut later = Vec::new();
        for section in &changed {
            match section.as_str() {
                "sources" => {
                    let (started, stopped, restarted) =
                        srcs.reconcile(new.sources.clone(), timeout).await;
                    tracing::info!(
                        ?started,
                        ?stopped,
                        ?restarted,
                        "reload: sources applied; the others kept running"
                    );
                }
                "mqtt" => match weir_mqtt::forwarder_config(&new.cfg) {
                    Ok(_) => {
                        // The old session ends first: one client id, one session at a time (two
                        // would take each other's session over and publish the same rows).
                        let old = std::mem::replace(&mut fwd, RunningForwarder::stopped());
                        old.stop().await;
                        writer.set_encoder(Encoder::from_config(&new.cfg));
                        match start_forwarder(&new.cfg, &parts) {
                            Ok(f) => fwd = f,
                            Err(e) => {
                                tracing::error!("reload: cannot start the new MQTT connection: {e}")
                            }
                        }
                        tracing::info!("reload: mqtt changed; reconnected with the new settings");
                    }
                    Err(e) => {
                        tracing::error!("reload: mqtt changed but cannot apply ({e}); keeping the running connection");
                    }
                },
                "store" => {
                    let (a, b) = (&cfg.store, &new.cfg.store);
                    let applied = weir_mqtt::forwarder::lock(&outbox).update_limits(|l| {
                        l.max_bytes = b.max_bytes;
                        l.min_free_bytes = b.min_free_bytes;
                    });
                    let mut restart = Vec::new();
                    if a.path != b.path {
                        restart.push("store.path");
                    }
                    if a.synchronous != b.synchronous {
                        restart.push("store.synchronous");
                    }
                    if a.max_age_s != b.max_age_s {
                        restart.push("store.max_age_s");
                    }
                    if a.max_batch_readings != b.max_batch_readings {
                        restart.push("store.max_batch_readings");
                    }
                    if a.commit_window_ms != b.commit_window_ms {
                        restart.push("store.commit_window_ms");
                    }
                    tracing::info!(
                        applied,
                        max_bytes = b.max_bytes,
                        min_free_bytes = b.min_free_bytes,
                        "reload: store limits applied"
                    );
                    later.extend(restart.into_iter().map(str::to_string));
                }
                s if crate::load::STAGE_KINDS.contains(&s) => {}
                other => later.push(other.to_string()),
            }
        }
        if !later.is_empty() {
            tracing::warn!(
                "reload: {} changed in {}; these apply on restart (systemctl restart weir)",
                later.join(", "),
                cfg.file.display()
            );
        }
        tracing::info!(changed = ?changed, "reload done");
        // What applied is now the running configuration; what needs a restart is compared
        // against the file again at the next reload.
        let restart_only = |s: &str| {
            !matches!(s, "sources" | "mqtt" | "store") && !crate::load::STAGE_KINDS.contains(&s)
        };
        if let (Some(a), Some(b)) = (&mut at_start, &now) {
            for (k, v) in b.iter() {
                if !k.as_str().is_some_and(restart_only) {
                    a.insert(k.clone(), v.clone());
                }
            }
        }
        let keep_gateway = cfg.gateway.clone();
        let keep_bus = cfg.bus.clone();
        let keep_metrics = cfg.metrics.clone();
        let keep_store = (
            cfg.store.path.clone(),
            cfg.store.synchronous,
            cfg.store.max_age_s,
            cfg.store.max_batch_readings,
            cfg.store.commit_window_ms,
        );
        cfg = new.cfg;
        cfg.gateway = keep_gateway;
        cfg.bus = keep_bus;
        cfg.metrics = keep_metrics;
        (
            cfg.store.path,
            cfg.store.synchronous,
            cfg.store.max_age_s,
            cfg.store.max_batch_readings,
            cfg.store.commit_window_ms,
        ) = keep_store;
    }

    tracing::info!("shutting down: stopping sources");
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(cfg.gateway.shutdown_timeout_ms);
    srcs.stop_all(deadline).await;
    drop(srcs); // the last bus sender: the pipeline drains and ends
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
    fwd.stop().await;
    shadow_token.cancel();
    if let Some(t) = shadow_task {
        let _ = t.await;
    }
    http_token.cancel();
    let s = weir_mqtt::forwarder::lock(&outbox).stats()?;
    tracing::info!(
        rows = s.rows,
        "stopped; rows left in the outbox are sent on the next start"
    );
    Ok(())
}
