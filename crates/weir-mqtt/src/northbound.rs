//! What differs between northbound formats, behind one trait.
//!
//! The [forwarder](crate::forwarder) owns the connection, the outbox cursor, the in-flight tracker
//! (ordering, delete on PUBACK, dead letters, probing) and the command router; a
//! [`NorthboundFormat`] owns everything a format decides:
//!
//! * the last will, asked before every connect ([`NorthboundFormat::will`]);
//! * which topics carry commands: one filter per device the registry knows
//!   ([`NorthboundFormat::device_filter`]) and fixed ones ([`NorthboundFormat::fixed_filters`]),
//!   all subscribed before anything is published;
//! * what to publish on each connect, before any row (status, births), and on a clean goodbye;
//! * whether rows may be published now ([`NorthboundFormat::ready`]); rows keep being committed
//!   to the outbox while they may not;
//! * how a row becomes a message ([`NorthboundFormat::encode`]), told whether the row is
//!   *historical*: committed before the current publishing window opened (during a broker
//!   outage, a gateway restart, or while the format was not ready), i.e. the backlog;
//! * how an incoming message parses into router commands, or other actions, and how a command's
//!   outcome is answered.
//!
//! Messages a format asks for ([`Message`]) are not rows: they are published QoS as given and
//! not tracked for deletion (the in-flight tracker counts them as non-rows, as before).

use std::fmt;

use weir_core::{DeviceId, Registry, Value};
use weir_store::record::RecordError;
use weir_store::StoredMessage;

/// A message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
}

/// A write a format parsed from an incoming message, for the command router.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundCommand {
    pub device: String,
    pub point: String,
    /// The value, or why the payload could not be read (answered as the outcome).
    pub value: Result<Value, String>,
    /// Where the format answers (its own meaning; JSON: the result topic).
    pub reply_to: Option<String>,
}

/// What to do with an incoming message.
#[derive(Debug)]
pub enum Inbound {
    /// Not for this format.
    Ignore,
    /// Writes for the router; each outcome goes to [`NorthboundFormat::answer`].
    Commands(Vec<InboundCommand>),
    /// Publish these now (e.g. births asked for by a host).
    Publish(Vec<Message>),
    /// End the session and connect again (e.g. the primary host went offline).
    Reconnect(String),
}

/// Why a row could not be encoded; the forwarder sets such a row aside as a dead letter.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    #[error("row kind {0} is not known to this build")]
    UnknownKind(u8),
    #[error("row holds no reading")]
    Empty,
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("json encoding failed: {0}")]
    Json(String),
    #[error("{0}")]
    Other(String),
}

/// One northbound format. A forwarder run owns one value and calls it from its task only.
pub trait NorthboundFormat: Send + fmt::Debug {
    /// `json`, `sparkplug_b`, … for logs.
    fn name(&self) -> &'static str;

    /// The last will for the next connection (asked before every connect).
    fn will(&mut self) -> Message;

    /// The command filter to subscribe for `device`, if the format takes commands per device.
    fn device_filter(&self, device: &DeviceId) -> Option<String>;

    /// Filters subscribed on every connect, whatever devices exist and whatever `mqtt.commands`
    /// says (a format's control topics).
    fn fixed_filters(&self) -> Vec<String> {
        Vec::new()
    }

    /// Published right after the subscriptions, before any row.
    fn on_connected(&mut self, registry: &Registry) -> Vec<Message>;

    /// The registry changed (devices added, removed, availability): what to publish now.
    fn on_registry_change(&mut self, _registry: &Registry) -> Vec<Message> {
        Vec::new()
    }

    /// Whether rows may be published now.
    fn ready(&self) -> bool {
        true
    }

    /// Published before a clean disconnect (the will fires only on a lost connection).
    fn goodbye(&mut self) -> Vec<Message>;

    /// The message of an outbox row; `historical` marks the backlog.
    fn encode(&mut self, row: StoredMessage, historical: bool) -> Result<Message, EncodeError>;

    /// The topic `row` is published on, without side effects (for the dead-letter listing).
    fn topic_of(&self, _row: &StoredMessage) -> Option<String> {
        None
    }

    /// An incoming message on a subscribed topic.
    fn on_message(&mut self, topic: &str, payload: &[u8]) -> Inbound;

    /// The answer to a command once the router has its outcome, if the format answers.
    fn answer(&mut self, cmd: &InboundCommand, outcome: &Result<(), String>) -> Option<Message>;
}
