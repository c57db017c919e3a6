//! Typed events: what happens on the bus besides readings.
//!
//! Alerts and command results travel as [`Event`]s, not as readings with a naming convention: a
//! stage returns them from [`crate::Transform::take_events`], an asynchronous producer (a command's
//! answer arriving later) sends them through an [`EventSender`], and the pipeline commits them to
//! the outbox in the same transaction as the readings of the batch they came with. Northbound
//! formats decide how each kind is published (JSON: `alerts_topic` and `…/set/result`).
//!
//! The event channel is bounded like every other: [`EventSender::send`] waits while it is full
//! (its producers are tasks that can wait: nothing accepted is dropped).

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::command::CommandOrigin;
use crate::reading::{DeviceId, PointId, Timestamp, Value};

/// An alert raised or cleared (edges only: the rule engine publishes changes, not levels).
#[derive(Clone, Debug, PartialEq)]
pub struct Alert {
    pub device: DeviceId,
    /// The alert's name, e.g. `high_temperature`.
    pub name: Arc<str>,
    /// True when raised (or its severity changed), false when cleared.
    pub active: bool,
    pub severity: Arc<str>,
    /// Empty when cleared.
    pub message: Arc<str>,
    /// What raised it: a rule's name, or a detector's.
    pub by: Arc<str>,
    pub ts: Timestamp,
}

/// The outcome of a command, whoever sent it (MQTT, a rule, the CLI).
#[derive(Clone, Debug, PartialEq)]
pub struct CommandResult {
    pub device: DeviceId,
    pub point: PointId,
    pub value: Value,
    pub origin: CommandOrigin,
    /// `Ok` once the device acknowledged; the reason otherwise.
    pub outcome: Result<(), String>,
    pub ts: Timestamp,
}

/// Something that happened, bound northbound with the readings.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Alert(Alert),
    CommandResult(CommandResult),
}

impl Event {
    pub fn device(&self) -> &DeviceId {
        match self {
            Event::Alert(a) => &a.device,
            Event::CommandResult(c) => &c.device,
        }
    }
}

/// Events produced off the pipeline task (e.g. a rule's command answered later).
#[derive(Clone, Debug)]
pub struct EventSender(mpsc::Sender<Event>);

/// The pipeline's end of the event channel.
#[derive(Debug)]
pub struct EventReceiver(mpsc::Receiver<Event>);

/// A bounded event channel holding at most `capacity` events.
pub fn events(capacity: usize) -> (EventSender, EventReceiver) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (EventSender(tx), EventReceiver(rx))
}

impl EventSender {
    /// Send, waiting while the channel is full; false once the pipeline is gone (shutdown).
    pub async fn send(&self, e: Event) -> bool {
        self.0.send(e).await.is_ok()
    }
}

impl EventReceiver {
    pub async fn recv(&mut self) -> Option<Event> {
        self.0.recv().await
    }
    pub fn try_recv(&mut self) -> Option<Event> {
        self.0.try_recv().ok()
    }
}
