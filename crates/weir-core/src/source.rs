//! The traits every adapter and pipeline stage implements.
//!
//! A southbound adapter is built in two steps, as in Vector's `SourceConfig::build`: its config type
//! (deserialised from gateway.yaml by the adapter's own crate) implements [`SourceBuilder`], and
//! `build` returns a [`Source`] that the supervisor runs. If the source panics or returns an error,
//! the supervisor builds a fresh one from the same builder after a backoff, so a source never needs
//! to survive its own failure.
//!
//! A source gets a [`SourceContext`]: a bus sender labelled with its name, the shutdown token, its
//! command inbox, a handle on the device registry (as the devices' owner) and a private state
//! directory. It must return promptly once the token is cancelled; readings it has already handed
//! to the bus are then drained by the pipeline.
//!
//! Pipeline stages are built the same way: a stage's config section implements [`StageBuilder`],
//! whose `build` gets a [`StageContext`] and returns the [`Transform`] the pipeline runs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::bus::BusSender;
use crate::command::{CommandInbox, CommandRouter, DeviceInfo};
use crate::event::{Event, EventSender};
use crate::reading::Batch;
use crate::registry::{DeviceSpec, PointSpec, Registry, RegistryHandle};

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
    /// The registry, as this source: devices joining, leaving, going quiet.
    pub registry: RegistryHandle,
    /// A directory only this source writes (`<state_dir>/sources/<name>`): a Zigbee network's
    /// tables, BLE keys. Created before the source is built; kept across restarts and upgrades.
    pub state_dir: PathBuf,
}

impl SourceContext {
    /// A context with a registry of its own and the current directory as state directory (tests,
    /// tools); the daemon sets both with [`SourceContext::with_registry`] and
    /// [`SourceContext::with_state_dir`].
    pub fn new(bus: BusSender, shutdown: CancellationToken, commands: CommandInbox) -> Self {
        let owner = bus.source().to_string();
        SourceContext {
            bus,
            shutdown,
            commands,
            registry: RegistryHandle::new(Registry::default(), &owner),
            state_dir: PathBuf::from("."),
        }
    }
    pub fn with_registry(mut self, registry: &Registry) -> Self {
        self.registry = RegistryHandle::new(registry.clone(), self.bus.source());
        self
    }
    pub fn with_state_dir(mut self, dir: &Path) -> Self {
        self.state_dir = dir.to_path_buf();
        self
    }
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
    /// The devices this source declares, as the registry holds them (points with units, types,
    /// class hints and poll periods). The default lists the writable points of [`Self::devices`];
    /// adapters that know more say more.
    fn device_specs(&self) -> Vec<DeviceSpec> {
        self.devices()
            .into_iter()
            .map(|d| DeviceSpec {
                id: d.device,
                points: d
                    .writable_points
                    .into_iter()
                    .map(|p| PointSpec::new(p).writable(true))
                    .collect(),
                meta: Default::default(),
            })
            .collect()
    }
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
/// runs synchronously on the pipeline task and must stay within its per-reading budget: a stage
/// whose work is heavy (inference over long windows) queues the work to a task of its own from
/// `process`, returns at once, and hands the results back through [`StageContext::events`] or
/// derived readings on its next `process`/`tick` (see ARCHITECTURE.md).
pub trait Transform: Send {
    fn name(&self) -> &str;
    fn process(&mut self, batch: &mut Batch);
    /// Called about once a second by the pipeline, with an empty batch, for time-driven work
    /// (window ends, timers). Readings pushed onto `out` go through the later stages and into the
    /// outbox like any others.
    fn tick(&mut self, _now: crate::Timestamp, _out: &mut Batch) {}
    /// Events (alerts) produced by the last `process` or `tick`; the pipeline commits them with
    /// that batch. Called after each of them.
    fn take_events(&mut self, _out: &mut Vec<Event>) {}
    /// Apply a reloaded configuration in place, keeping what can be kept (a rule's state, a
    /// detector's window). `false`: this stage cannot, build a new one from `builder` instead.
    fn reload(&mut self, _builder: &dyn StageBuilder) -> bool {
        false
    }
}

/// What a stage is built with.
#[derive(Debug, Clone)]
pub struct StageContext {
    pub metrics: crate::Metrics,
    pub router: CommandRouter,
    pub registry: Registry,
    /// Events produced later, off the pipeline task (a command's answer).
    pub events: EventSender,
    /// The configuration file's directory: relative `file:` paths resolve against it.
    pub config_dir: PathBuf,
    /// A directory only this stage writes (`<state_dir>/stages/<name>`).
    pub state_dir: PathBuf,
}

/// A stage's configuration section, parsed by the stage's own crate: builds the running stage.
pub trait StageBuilder: Send + Sync + std::fmt::Debug {
    /// The section name in gateway.yaml, e.g. `rules`.
    fn name(&self) -> &'static str;
    fn build(&self, ctx: &StageContext) -> Result<Box<dyn Transform>, BuildError>;
    /// For [`Transform::reload`]: the running stage downcasts to its own builder type.
    fn as_any(&self) -> &dyn std::any::Any;
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
