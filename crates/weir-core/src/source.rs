//! The traits every adapter and pipeline stage implements.
//!
//! A southbound adapter is built in two steps, as in Vector's `SourceConfig::build`: its config type
//! (deserialised from gateway.yaml by the adapter's own crate) implements [`SourceBuilder`], and
//! `build` returns a [`Source`] that the supervisor runs. If the source panics or returns an error,
//! the supervisor builds a fresh one from the same builder after a backoff, so a source never needs
//! to survive its own failure.
//!
//! A source gets a [`SourceContext`]: a bus sender labelled with its name, the shutdown token, and
//! its command inbox. It must return promptly once the token is cancelled; readings it has already
//! handed to the bus are then drained by the pipeline.

use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::bus::BusSender;
use crate::command::{CommandInbox, DeviceInfo};
use crate::reading::Batch;

/// A source could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
#[error("source `{source_name}`: {message}")]
pub struct BuildError {
    pub source_name: String,
    pub message: String,
}

/// A running source failed; the supervisor logs it and rebuilds the source after a backoff.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the bus is closed")]
    BusClosed(#[from] crate::bus::SendError),
    #[error("{0}")]
    Other(String),
}

/// What a running source is given.
#[derive(Debug, Clone)]
pub struct SourceContext {
    pub bus: BusSender,
    pub shutdown: CancellationToken,
    pub commands: CommandInbox,
}

/// A southbound adapter instance: one task per physical line or listener.
#[async_trait]
pub trait Source: Send {
    /// Run until `ctx.shutdown` is cancelled (return `Ok`) or a failure the source cannot handle
    /// itself (return `Err`; the supervisor restarts it). Per-device failures (timeouts, exceptions)
    /// are not errors of the source: they become reading quality.
    async fn run(&mut self, ctx: SourceContext) -> Result<(), SourceError>;
}

/// A source's configuration: knows its devices up front (for the command router) and builds the
/// running source.
pub trait SourceBuilder: Send + Sync + std::fmt::Debug {
    /// The adapter kind, e.g. `sim`, `modbus`.
    fn kind(&self) -> &'static str;
    /// Devices and writable points this source will own.
    fn devices(&self) -> Vec<DeviceInfo>;
    /// Build a fresh source. Called at start and after every failure. `metrics` is the daemon's
    /// registry: counters made from it appear on `/metrics` and in the status document.
    fn build(&self, name: &str, metrics: &crate::Metrics) -> Result<Box<dyn Source>, BuildError>;
    /// The first restart delay after a failure (doubled up to a minute, with jitter).
    fn restart_backoff(&self) -> Duration {
        Duration::from_millis(500)
    }
}

/// A pipeline stage between the bus and the outbox: the rule engine and anomaly inference.
///
/// A stage may change readings in place, remove them, or push derived readings onto the batch. It
/// runs synchronously on the pipeline task and must stay within its per-reading budget.
pub trait Transform: Send {
    fn name(&self) -> &str;
    fn process(&mut self, batch: &mut Batch);
    /// Called about once a second by the pipeline, with an empty batch, for time-driven work
    /// (window ends, timers). Readings pushed onto `out` go through the later stages and into the
    /// outbox like any others.
    fn tick(&mut self, _now: crate::Timestamp, _out: &mut Batch) {}
}

/// A stage that passes every reading through unchanged: the slot a later stage fills.
#[derive(Debug)]
pub struct Passthrough(pub &'static str);

impl Transform for Passthrough {
    fn name(&self) -> &str {
        self.0
    }
    fn process(&mut self, _batch: &mut Batch) {}
}
