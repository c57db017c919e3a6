//! Sources and their supervisors.
//!
//! Each source runs under a supervisor task that builds it, runs it, and after a failure or a
//! panic builds a fresh one after a jittered exponential backoff ([`weir_core::Backoff`]). A
//! [`Sources`] set owns every supervisor: at start it registers each source's declared devices in
//! the registry and opens its command inbox; on reload it stops, starts or restarts sources one
//! by one while the others keep running.
//!
//! Invariants: a source's devices are claimed before it starts and released after it stopped; a
//! source stops by its own cancellation token (a child of the sources' token), so the shutdown
//! order "sources first" holds for sources added by a reload too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use weir_core::{
    Backoff, BusSender, CancellationToken, CommandInbox, CommandRouter, Metrics, Registry,
    SourceBuilder, SourceContext,
};

use crate::load::SourceDecl;

/// Capacity of each source's command inbox; a full inbox answers `busy`.
const COMMAND_INBOX: usize = 64;

/// Keeps one source running: builds it, runs it, and after a failure or a panic builds a fresh
/// one after a jittered exponential backoff. Returns when `shutdown` is cancelled.
pub async fn supervise(
    name: String,
    builder: Arc<dyn SourceBuilder>,
    ctx: SourceContext,
    metrics: Metrics,
) {
    let restarts = metrics.counter("weir_source_restarts_total", &[("source", &name)]);
    let shutdown = ctx.shutdown.clone();
    let mut backoff = Backoff::new(builder.restart_backoff(), Duration::from_secs(60));
    loop {
        let result: Result<(), String> = match builder.build(&name, &metrics) {
            Ok(mut src) => {
                let ctx = ctx.clone();
                let started = tokio::time::Instant::now();
                let r = tokio::spawn(async move { src.run(ctx).await }).await;
                if started.elapsed() > Duration::from_secs(60) {
                    backoff.reset();
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
        let delay = backoff.next_delay();
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

struct Running {
    decl: SourceDecl,
    token: CancellationToken,
    task: JoinHandle<()>,
}

/// Every running source, by name.
pub struct Sources {
    running: BTreeMap<String, Running>,
    bus: BusSender,
    router: CommandRouter,
    registry: Registry,
    metrics: Metrics,
    state_dir: PathBuf,
    token: CancellationToken,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources")
            .field("running", &self.running.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A source's private state directory under the gateway's `state_dir`.
pub fn source_state_dir(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join("sources").join(name)
}

impl Sources {
    pub fn new(
        bus: BusSender,
        router: CommandRouter,
        metrics: Metrics,
        state_dir: &Path,
        token: CancellationToken,
    ) -> Sources {
        Sources {
            running: BTreeMap::new(),
            bus,
            registry: router.registry().clone(),
            router,
            metrics,
            state_dir: state_dir.to_path_buf(),
            token,
        }
    }

    /// Claim the source's devices, open its inbox and state directory, start its supervisor.
    pub fn start(&mut self, decl: SourceDecl) {
        let name = decl.name.clone();
        for spec in decl.builder.device_specs() {
            if let Err(e) = self.registry.claim(&name, spec) {
                // `weir check` refuses duplicate declarations; this is a device a running source
                // learned at run time before this one declared it.
                tracing::error!(source = %name, "{e}");
            }
        }
        let inbox: CommandInbox = self.router.inbox(&name, COMMAND_INBOX);
        let dir = source_state_dir(&self.state_dir, &name);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            tracing::warn!(source = %name, "cannot create its state directory {}: {e}", dir.display());
        }
        let token = self.token.child_token();
        let ctx = SourceContext::new(self.bus.for_source(&name), token.clone(), inbox)
            .with_registry(&self.registry)
            .with_state_dir(&dir);
        tracing::info!(source = %name, kind = decl.builder.kind(), "starting source");
        let task = tokio::spawn(supervise(
            name.clone(),
            decl.builder.clone(),
            ctx,
            self.metrics.clone(),
        ));
        self.running.insert(name, Running { decl, token, task });
    }

    /// Stop one source and wait for it (its readings already on the bus stay there), then release
    /// its devices and inbox.
    pub async fn stop(&mut self, name: &str, timeout: Duration) {
        let Some(r) = self.running.remove(name) else {
            return;
        };
        r.token.cancel();
        if tokio::time::timeout(timeout, r.task).await.is_err() {
            tracing::warn!(source = %name, "did not stop within {timeout:?}");
        }
        self.router.remove_inbox(name);
        let n = self.registry.remove_owner(name);
        tracing::info!(source = %name, devices = n, "source stopped");
    }

    /// Stop every source (shutdown), waiting at most until `deadline`.
    pub async fn stop_all(&mut self, deadline: tokio::time::Instant) {
        self.token.cancel();
        for (name, r) in std::mem::take(&mut self.running) {
            if tokio::time::timeout_at(deadline, r.task).await.is_err() {
                tracing::warn!(source = %name, "a source did not stop in time");
            }
        }
    }

    /// Bring the running set in line with `wanted`: sources whose entry in gateway.yaml is
    /// unchanged keep running; removed ones stop, changed ones restart, new ones start. Returns
    /// (started, stopped, restarted) names.
    pub async fn reconcile(
        &mut self,
        wanted: Vec<SourceDecl>,
        timeout: Duration,
    ) -> (Vec<String>, Vec<String>, Vec<String>) {
        let mut wanted: BTreeMap<String, SourceDecl> =
            wanted.into_iter().map(|d| (d.name.clone(), d)).collect();
        let (mut started, mut stopped, mut restarted) = (Vec::new(), Vec::new(), Vec::new());
        let names: Vec<String> = self.running.keys().cloned().collect();
        for name in names {
            match wanted.get(&name) {
                None => {
                    self.stop(&name, timeout).await;
                    stopped.push(name);
                }
                Some(w)
                    if w.kind != self.running[&name].decl.kind
                        || w.body != self.running[&name].decl.body =>
                {
                    self.stop(&name, timeout).await;
                    let w = wanted.remove(&name).expect("present");
                    self.start(w);
                    restarted.push(name);
                }
                Some(_) => {
                    wanted.remove(&name);
                }
            }
        }
        for (name, w) in wanted {
            self.start(w);
            started.push(name);
        }
        (started, stopped, restarted)
    }

    pub fn names(&self) -> Vec<String> {
        self.running.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use weir_core::{bus, DeviceInfo, Quality, Reading, Source, SourceError, Timestamp, Value};

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
            SourceContext::new(tx.for_source("flaky"), token.clone(), inbox),
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
