//! The pipeline: bus → admission → stages → outbox, one task.
//!
//! Per batch taken off the bus (up to `store.max_batch_readings` readings, gathered from whatever
//! is waiting and, for `store.commit_window_ms` after the first arrives, whatever comes next:
//! group commit, one transaction for the polls of many devices): the registry admits it
//! (readings a source sends for a device another source owns are removed and counted, before any
//! stage sees them), each stage processes it in order, the
//! stages' events (alerts) are collected, and the readings and events are committed to the outbox
//! in one transaction. Events produced off the pipeline (a rule's command answered later) arrive
//! on the bounded event channel and are committed on their own.
//!
//! Once a second the pipeline ticks: each stage's time-driven output passes through the stages
//! after it, and the registry sweeps for points that went stale (logged once per change).
//!
//! A commit that fails (disk full, I/O error) is retried with backoff while the batch is held:
//! the bus then fills and sources slow down or count drops; nothing taken off the bus is lost.
//!
//! Stages run on this task and must stay within their per-reading budget. A reload replaces or
//! reconfigures stages between two batches (see [`StageReload`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use weir_core::{
    events, BusReceiver, Event, EventReceiver, Metrics, Registry, StageBuilder, StageContext,
    Transform,
};
use weir_mqtt::OutboxWriter;

/// New stage configurations, applied between two batches: a stage whose name matches reloads in
/// place when it can, else is rebuilt; the order of `builders` is the new order.
pub type StageReload = Vec<Arc<dyn StageBuilder>>;

/// Everything the pipeline task owns.
pub struct Pipeline {
    pub rx: BusReceiver,
    pub events: EventReceiver,
    pub stages: Vec<Box<dyn Transform>>,
    pub writer: OutboxWriter,
    pub max_batch: usize,
    /// How long the first readings of a batch wait for more before the batch is committed.
    pub commit_window: Duration,
    pub metrics: Metrics,
    pub registry: Registry,
    /// A point is stale after this many expected periods of silence.
    pub stale_after_periods: u32,
    pub reloads: Option<mpsc::Receiver<StageReload>>,
    /// What reloaded stages are built with.
    pub stage_ctx: Option<StageContext>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field(
                "stages",
                &self.stages.iter().map(|s| s.name()).collect::<Vec<_>>(),
            )
            .field("max_batch", &self.max_batch)
            .field("commit_window", &self.commit_window)
            .finish()
    }
}

/// The pipeline with a registry of its own, no event producers and the default commit window
/// (benchmarks, tests).
pub async fn pipeline(
    rx: BusReceiver,
    stages: Vec<Box<dyn Transform>>,
    writer: OutboxWriter,
    max_batch: usize,
    metrics: Metrics,
) {
    let (_tx, events) = events(1);
    Pipeline {
        rx,
        events,
        stages,
        writer,
        max_batch,
        commit_window: Duration::from_millis(weir_config::StoreSection::default().commit_window_ms),
        registry: Registry::new(&metrics),
        metrics,
        stale_after_periods: 3,
        reloads: None,
        stage_ctx: None,
    }
    .run()
    .await
}

impl Pipeline {
    /// Run until the bus is closed and drained.
    pub async fn run(mut self) {
        let mut committer = Committer {
            writer: self.writer.clone(),
            committed: self.metrics.counter("weir_readings_committed_total", &[]),
            commit_errors: self.metrics.counter("weir_outbox_commit_errors_total", &[]),
            held: self.metrics.gauge("weir_pipeline_held_readings", &[]),
            unreported_drops: 0,
            last_drop_log: None,
        };
        let stale_points = self.metrics.gauge("weir_points_stale", &[]);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reloads = self.reloads.take();
        let mut events_open = true;
        let mut ev: Vec<Event> = Vec::new();
        loop {
            let mut batch = tokio::select! {
                b = self.rx.recv() => match b {
                    Some(b) => b,
                    None => break,
                },
                e = self.events.recv(), if events_open => {
                    match e {
                        Some(e) => {
                            ev.push(e);
                            while let Some(e) = self.events.try_recv() {
                                ev.push(e);
                            }
                            committer.commit(&[], &ev).await;
                            ev.clear();
                        }
                        None => events_open = false,
                    }
                    continue;
                }
                r = recv_reload(&mut reloads) => {
                    match r {
                        Some(builders) => self.apply_reload(builders),
                        None => reloads = None,
                    }
                    continue;
                }
                _ = tick.tick() => {
                    // Time-driven output of each stage passes through the stages after it.
                    let now = weir_core::Timestamp::now();
                    let mut batch = Vec::new();
                    for i in 0..self.stages.len() {
                        let mut out = Vec::new();
                        self.stages[i].tick(now, &mut out);
                        self.stages[i].take_events(&mut ev);
                        if !out.is_empty() {
                            for s in self.stages.iter_mut().skip(i + 1) {
                                s.process(&mut out);
                                s.take_events(&mut ev);
                            }
                            batch.extend(out);
                        }
                    }
                    self.sweep(now, &stale_points);
                    committer.note_drops(0); // a quiet spell still reports the last drops
                    if batch.is_empty() && ev.is_empty() {
                        continue;
                    }
                    committer.commit(&batch, &ev).await;
                    ev.clear();
                    continue;
                }
            };
            self.gather(&mut batch).await;
            for d in self.registry.admit(&mut batch) {
                tracing::info!(device = %d.device, "heard again: device back online");
            }
            weir_core::clock::mark_unsynchronised(&mut batch);
            for s in self.stages.iter_mut() {
                s.process(&mut batch);
                s.take_events(&mut ev);
            }
            if batch.is_empty() && ev.is_empty() {
                continue;
            }
            committer.commit(&batch, &ev).await;
            ev.clear();
        }
        // Answers still on their way are committed as far as they have arrived.
        while let Some(e) = self.events.try_recv() {
            ev.push(e);
        }
        if !ev.is_empty() {
            committer.commit(&[], &ev).await;
        }
        committer.flush_drop_log();
    }

    /// Group commit: add to `batch` what is waiting on the bus and what arrives within the commit
    /// window after the first readings, up to `max_batch`. A closed bus ends the wait (the next
    /// `recv` then ends the loop after this batch is committed).
    async fn gather(&mut self, batch: &mut Vec<weir_core::Reading>) {
        let deadline = tokio::time::Instant::now() + self.commit_window;
        while batch.len() < self.max_batch {
            if let Some(b) = self.rx.try_recv() {
                batch.extend(b);
                continue;
            }
            if self.commit_window.is_zero() {
                return;
            }
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(b)) => batch.extend(b),
                Ok(None) | Err(_) => return,
            }
        }
    }

    fn sweep(&self, now: weir_core::Timestamp, stale_points: &weir_core::Gauge) {
        let (stale, avail) = self.registry.sweep(now, self.stale_after_periods);
        for s in &stale {
            tracing::warn!(
                device = %s.device,
                point = %s.point,
                "no reading for {:.0?}, more than {} expected periods: marked stale",
                Duration::from_nanos(s.silent_ns.max(0) as u64),
                self.stale_after_periods
            );
        }
        for a in &avail {
            tracing::warn!(device = %a.device, "every timed point is stale: device offline");
        }
        stale_points.set(self.registry.stale_points() as i64);
    }

    fn apply_reload(&mut self, builders: StageReload) {
        let Some(ctx) = &self.stage_ctx else {
            return;
        };
        let mut old: Vec<Option<Box<dyn Transform>>> = std::mem::take(&mut self.stages)
            .into_iter()
            .map(Some)
            .collect();
        for b in builders {
            let existing = old
                .iter_mut()
                .find(|s| s.as_ref().is_some_and(|s| s.name() == b.name()))
                .and_then(Option::take);
            let existing = match existing {
                Some(mut s) => {
                    if s.reload(b.as_ref()) {
                        self.stages.push(s);
                        continue;
                    }
                    Some(s)
                }
                None => None,
            };
            let stage = match b.build(ctx) {
                Ok(s) => s,
                Err(e) => {
                    // `weir check` built it before the reload was accepted; keep the old one.
                    tracing::error!("reload: stage `{}` could not be built: {e}", b.name());
                    match existing {
                        Some(s) => s,
                        None => continue,
                    }
                }
            };
            self.stages.push(stage);
        }
        for s in old.into_iter().flatten() {
            tracing::info!(stage = s.name(), "reload: stage removed");
        }
    }
}

async fn recv_reload(r: &mut Option<mpsc::Receiver<StageReload>>) -> Option<StageReload> {
    match r {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
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
    async fn commit(&mut self, batch: &[weir_core::Reading], events: &[Event]) {
        let mut delay = Duration::from_millis(100);
        let mut failures = 0u64;
        let mut first_failure = None;
        let mut last_log: Option<tokio::time::Instant> = None;
        loop {
            match self.writer.commit_with_events(batch, events) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use weir_core::{bus, Quality, Reading, Timestamp, Value};
    use weir_mqtt::Encoder;
    use weir_store::{Limits, Outbox};

    fn reading(n: i64) -> Reading {
        Reading {
            device: "gh1/climate".into(),
            point: "temperature".into(),
            value: Value::F64(20.0 + n as f64),
            unit: None,
            ts: Timestamp(1_700_000_000_000_000_000 + n),
            quality: Quality::Good,
            source: "test".into(),
        }
    }

    /// Two polls 5 ms apart, one device, per-device messages (one outbox row per device per
    /// commit): within a 50 ms window they share one transaction (one row holding both readings);
    /// with no window each is committed alone.
    async fn rows_after_two_polls(window: Duration) -> u64 {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_bytes: 1 << 30,
            max_age: Duration::from_secs(3600),
            synchronous_full: false,
            min_free_bytes: 0,
        };
        let outbox = Arc::new(Mutex::new(
            Outbox::open(&dir.path().join("outbox.db"), limits).unwrap(),
        ));
        let encoder = Encoder::new(
            "weir/t",
            "{prefix}/{device}/{point}",
            "{prefix}/{device}",
            weir_config::PublishMode::PerDevice,
            1,
        );
        let wake = Arc::new(tokio::sync::Notify::new());
        let writer = OutboxWriter::new(outbox.clone(), encoder, wake);
        let metrics = Metrics::new();
        let (tx, rx) = bus(16, &metrics);
        let (_ev_tx, events) = events(1);
        let task = tokio::spawn(
            Pipeline {
                rx,
                events,
                stages: Vec::new(),
                writer,
                max_batch: 5000,
                commit_window: window,
                registry: Registry::new(&metrics),
                metrics,
                stale_after_periods: 3,
                reloads: None,
                stage_ctx: None,
            }
            .run(),
        );
        let src = tx.for_source("test");
        drop(tx);
        src.send(vec![reading(1)]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        src.send(vec![reading(2)]).await.unwrap();
        drop(src); // the bus closes: the pipeline commits what it holds and ends
        task.await.unwrap();
        let rows = outbox.lock().unwrap().stats().unwrap().rows;
        rows
    }

    // Paused time: the runtime advances the clock only when every task waits, so "5 ms later"
    // and "the window ends" happen in that order every run, on any machine.
    #[tokio::test(start_paused = true)]
    async fn readings_arriving_within_the_commit_window_share_one_transaction() {
        assert_eq!(rows_after_two_polls(Duration::from_millis(50)).await, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_window_each_poll_is_its_own_transaction() {
        assert_eq!(rows_after_two_polls(Duration::ZERO).await, 2);
    }
}
