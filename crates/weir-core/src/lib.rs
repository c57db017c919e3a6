//! Weir's shared vocabulary.
//!
//! Everything that crosses a crate boundary inside the gateway is defined here and nowhere else:
//!
//! * [`Reading`] — one value of one point of one device at one instant, with its [`Quality`];
//! * [`Batch`] — readings move in batches so the per-reading cost stays low;
//! * [`bus`] — the bounded channel from sources to the pipeline, with its two full-bus policies;
//! * [`Source`] / [`SourceBuilder`] — what every southbound adapter implements;
//! * [`Transform`] — a pipeline stage between the bus and the outbox (rules, inference);
//! * [`Command`] and [`CommandRouter`] — the way back down to devices;
//! * [`Registry`] — every device, its one owning source, its points and availability;
//! * [`Event`] — alerts and command results, typed, travelling with the readings;
//! * [`StageBuilder`] — how a pipeline stage is built from its config section;
//! * [`clock`] — whether the wall clock is synchronised; readings taken while it is not are
//!   marked uncertain;
//! * [`Metrics`] — counters and gauges rendered for Prometheus and the status topic;
//! * shutdown is a [`CancellationToken`] handed to every task.
//!
//! Invariants: every channel here is bounded; a full channel either applies back-pressure (polling
//! sources, commands from MQTT) or drops the newest item and counts it (push sources). Nothing grows
//! without bound.

mod backoff;
mod bus;
pub mod clock;
mod command;
mod event;
mod fanout;
mod metrics;
mod reading;
mod registry;
mod source;

pub use backoff::Backoff;
pub use bus::{bus, BusReceiver, BusSender, SendError};
pub use command::{
    Command, CommandError, CommandInbox, CommandOrigin, CommandOutcome, CommandRouter, DeviceInfo,
};
pub use event::{events, Alert, CommandResult, Event, EventReceiver, EventSender};
pub use fanout::{CommandFanout, FanoutError};
pub use metrics::{Counter, Gauge, Metrics};
pub use reading::{Batch, DeviceId, PointId, Quality, Reading, Timestamp, Value};
pub use registry::{
    validate_device_id, Availability, AvailabilityChange, DeviceMeta, DeviceSpec, DeviceView,
    PointSpec, PointView, Registry, RegistryError, RegistryHandle, StaleChange, ValueType,
    WriteRefusal,
};
pub use source::{
    BuildError, Passthrough, Source, SourceBuilder, SourceContext, SourceError, StageBuilder,
    StageContext, Transform,
};
pub use tokio_util::sync::CancellationToken;
