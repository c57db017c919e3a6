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
//! * [`Metrics`] — counters and gauges rendered for Prometheus and the status topic;
//! * shutdown is a [`CancellationToken`] handed to every task.
//!
//! Invariants: every channel here is bounded; a full channel either applies back-pressure (polling
//! sources, commands from MQTT) or drops the newest item and counts it (push sources). Nothing grows
//! without bound.

mod bus;
mod command;
mod metrics;
mod reading;
mod source;

pub use bus::{bus, BusReceiver, BusSender, SendError};
pub use command::{
    Command, CommandError, CommandInbox, CommandOrigin, CommandOutcome, CommandRouter, DeviceInfo,
};
pub use metrics::{Counter, Gauge, Metrics};
pub use reading::{Batch, DeviceId, PointId, Quality, Reading, Timestamp, Value};
pub use source::{
    BuildError, Passthrough, Source, SourceBuilder, SourceContext, SourceError, Transform,
};
pub use tokio_util::sync::CancellationToken;
