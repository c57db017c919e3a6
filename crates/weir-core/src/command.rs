//! Commands: the way back down to devices.
//!
//! Every command, whether it comes from an MQTT `…/set` topic or a rule's actuation, goes through the
//! one [`CommandRouter`]. The router checks that the point is declared writable (least privilege) and
//! hands the command to the adapter that owns the device through that adapter's bounded
//! [`CommandInbox`]. A full inbox is an error (`busy`), never a wait: the sender reports it as the
//! command's result. Each routed command carries a one-shot reply the adapter answers with its
//! [`CommandOutcome`].

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tokio::sync::{mpsc, oneshot, Mutex};

use crate::reading::{DeviceId, PointId, Value};
use crate::registry::{DeviceSpec, PointSpec, Registry, WriteRefusal};

/// Where a command came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandOrigin {
    Mqtt,
    Rule(Arc<str>),
    Cli,
}

/// A request to write `value` to `device`/`point`.
#[derive(Debug)]
pub struct Command {
    pub device: DeviceId,
    pub point: PointId,
    pub value: Value,
    pub origin: CommandOrigin,
    /// The adapter answers here; dropping it without an answer reports `adapter dropped the command`.
    pub reply: oneshot::Sender<CommandOutcome>,
}

/// The adapter's answer: `Ok` once the device acknowledged, or why not.
pub type CommandOutcome = Result<(), String>;

/// Why the router refused a command.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommandError {
    #[error("unknown device `{0}`")]
    UnknownDevice(String),
    #[error("point `{point}` of device `{device}` is read-only")]
    NotWritable { device: String, point: String },
    #[error("device `{device}` has no point `{point}`{}", writable_list(.writable))]
    UnknownPoint {
        device: String,
        point: String,
        writable: Vec<String>,
    },
    #[error("adapter `{0}` is busy (command queue full)")]
    Busy(String),
    #[error("adapter `{0}` is not running")]
    AdapterGone(String),
    #[error("adapter dropped the command without answering")]
    NoAnswer,
}

fn writable_list(w: &[String]) -> String {
    if w.is_empty() {
        " (it has no writable points)".to_string()
    } else {
        format!(" (writable: {})", w.join(", "))
    }
}

/// What a source declares about a device it owns.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    pub device: DeviceId,
    pub writable_points: Vec<PointId>,
}

/// The receiving end of an adapter's command queue. It outlives restarts of the adapter task, so a
/// supervisor can hand the same inbox to a rebuilt adapter.
#[derive(Clone, Debug)]
pub struct CommandInbox(Arc<Mutex<mpsc::Receiver<Command>>>);

impl CommandInbox {
    /// The next command; `None` when the router is gone.
    pub async fn recv(&self) -> Option<Command> {
        self.0.lock().await.recv().await
    }
}

/// Routes commands to the adapter that owns the device, as the [`Registry`] says; only points the
/// owner declared writable pass (least privilege). Devices added at run time are routable at once.
#[derive(Clone, Debug, Default)]
pub struct CommandRouter {
    registry: Registry,
    inboxes: Arc<RwLock<HashMap<Arc<str>, mpsc::Sender<Command>>>>,
}

impl CommandRouter {
    /// A router with a registry of its own (tests, tools).
    pub fn new() -> Self {
        Self::default()
    }

    /// A router over the daemon's registry.
    pub fn with_registry(registry: Registry) -> Self {
        CommandRouter {
            registry,
            inboxes: Default::default(),
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Register an adapter and claim the devices it owns; returns its inbox, holding at most
    /// `capacity` commands. A device another adapter owns is not taken (logged).
    pub fn register(&self, adapter: &str, devices: &[DeviceInfo], capacity: usize) -> CommandInbox {
        for d in devices {
            let spec = DeviceSpec {
                id: d.device.clone(),
                points: d
                    .writable_points
                    .iter()
                    .map(|p| PointSpec::new(p.clone()).writable(true))
                    .collect(),
                meta: Default::default(),
            };
            if let Err(e) = self.registry.claim(adapter, spec) {
                tracing::error!("{e}");
            }
        }
        self.inbox(adapter, capacity)
    }

    /// A new command inbox for `adapter` (replacing any earlier one), holding at most `capacity`.
    pub fn inbox(&self, adapter: &str, capacity: usize) -> CommandInbox {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        self.inboxes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(Arc::from(adapter), tx);
        CommandInbox(Arc::new(Mutex::new(rx)))
    }

    /// Forget `adapter`'s inbox (its source was removed): its commands answer `not running`.
    pub fn remove_inbox(&self, adapter: &str) {
        self.inboxes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(adapter);
    }

    /// Check and hand over a command; the receiver yields the adapter's outcome.
    pub fn route(
        &self,
        device: DeviceId,
        point: PointId,
        value: Value,
        origin: CommandOrigin,
    ) -> Result<oneshot::Receiver<CommandOutcome>, CommandError> {
        let owner = match self
            .registry
            .writable_owner(device.as_str(), point.as_str())
        {
            Ok(o) => o,
            Err(WriteRefusal::UnknownDevice) => {
                return Err(CommandError::UnknownDevice(device.to_string()))
            }
            Err(WriteRefusal::ReadOnly) => {
                return Err(CommandError::NotWritable {
                    device: device.to_string(),
                    point: point.to_string(),
                })
            }
            Err(WriteRefusal::UnknownPoint { writable }) => {
                return Err(CommandError::UnknownPoint {
                    device: device.to_string(),
                    point: point.to_string(),
                    writable,
                })
            }
        };
        let tx = self
            .inboxes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&owner)
            .cloned()
            .ok_or_else(|| CommandError::AdapterGone(owner.to_string()))?;
        let (reply, rx) = oneshot::channel();
        let cmd = Command {
            device,
            point,
            value,
            origin,
            reply,
        };
        match tx.try_send(cmd) {
            Ok(()) => Ok(rx),
            Err(mpsc::error::TrySendError::Full(_)) => Err(CommandError::Busy(owner.to_string())),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Err(CommandError::AdapterGone(owner.to_string()))
            }
        }
    }

    /// Route and wait for the adapter's answer.
    pub async fn execute(
        &self,
        device: DeviceId,
        point: PointId,
        value: Value,
        origin: CommandOrigin,
    ) -> CommandOutcome {
        match self.route(device, point, value, origin) {
            Err(e) => Err(e.to_string()),
            Ok(rx) => rx
                .await
                .unwrap_or_else(|_| Err(CommandError::NoAnswer.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn router_checks_device_and_writability_and_delivers() {
        let r = CommandRouter::new();
        let inbox = r.register(
            "sim",
            &[DeviceInfo {
                device: "gh1/vent".into(),
                writable_points: vec!["open".into()],
            }],
            1,
        );
        assert_eq!(
            r.route(
                "nope".into(),
                "x".into(),
                Value::Bool(true),
                CommandOrigin::Mqtt
            )
            .unwrap_err(),
            CommandError::UnknownDevice("nope".into())
        );
        let e = r
            .route(
                "gh1/vent".into(),
                "angle".into(),
                Value::I64(3),
                CommandOrigin::Mqtt,
            )
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "device `gh1/vent` has no point `angle` (writable: open)"
        );
        // A point the registry knows as read-only says so (not "unknown device").
        r.registry()
            .claim(
                "sim",
                DeviceSpec::new("gh1/vent")
                    .point(PointSpec::new("open").writable(true))
                    .point(PointSpec::new("angle")),
            )
            .unwrap();
        assert_eq!(
            r.route(
                "gh1/vent".into(),
                "angle".into(),
                Value::I64(3),
                CommandOrigin::Mqtt
            )
            .unwrap_err()
            .to_string(),
            "point `angle` of device `gh1/vent` is read-only"
        );
        let rx = r
            .route(
                "gh1/vent".into(),
                "open".into(),
                Value::Bool(true),
                CommandOrigin::Mqtt,
            )
            .unwrap();
        // the inbox holds one; a second is refused as busy rather than waiting
        assert_eq!(
            r.route(
                "gh1/vent".into(),
                "open".into(),
                Value::Bool(false),
                CommandOrigin::Mqtt
            )
            .unwrap_err(),
            CommandError::Busy("sim".into())
        );
        let cmd = inbox.recv().await.unwrap();
        assert_eq!(cmd.value, Value::Bool(true));
        cmd.reply.send(Err("device said no".into())).unwrap();
        assert_eq!(rx.await.unwrap(), Err("device said no".into()));
    }
}
