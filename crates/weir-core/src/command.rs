//! Commands: the way back down to devices.
//!
//! Every command, whether it comes from an MQTT `…/set` topic or a rule's actuation, goes through the
//! one [`CommandRouter`]. The router checks that the point is declared writable (least privilege) and
//! hands the command to the adapter that owns the device through that adapter's bounded
//! [`CommandInbox`]. A full inbox is an error (`busy`), never a wait: the sender reports it as the
//! command's result. Each routed command carries a one-shot reply the adapter answers with its
//! [`CommandOutcome`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use tokio::sync::{mpsc, oneshot, Mutex};

use crate::reading::{DeviceId, PointId, Value};

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
    #[error("point `{point}` of device `{device}` is not declared writable")]
    NotWritable { device: String, point: String },
    #[error("adapter `{0}` is busy (command queue full)")]
    Busy(String),
    #[error("adapter `{0}` is not running")]
    AdapterGone(String),
    #[error("adapter dropped the command without answering")]
    NoAnswer,
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

#[derive(Debug)]
struct Owner {
    adapter: Arc<str>,
    tx: mpsc::Sender<Command>,
    writable: HashSet<PointId>,
}

/// Routes commands to the adapter that owns the device.
#[derive(Clone, Debug, Default)]
pub struct CommandRouter {
    owners: Arc<RwLock<HashMap<DeviceId, Owner>>>,
}

impl CommandRouter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Register an adapter and the devices it owns; returns its inbox, holding at most `capacity`
    /// commands.
    pub fn register(&self, adapter: &str, devices: &[DeviceInfo], capacity: usize) -> CommandInbox {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let mut owners = self.owners.write().unwrap_or_else(|e| e.into_inner());
        for d in devices {
            owners.insert(
                d.device.clone(),
                Owner {
                    adapter: Arc::from(adapter),
                    tx: tx.clone(),
                    writable: d.writable_points.iter().cloned().collect(),
                },
            );
        }
        CommandInbox(Arc::new(Mutex::new(rx)))
    }

    /// Check and hand over a command; the receiver yields the adapter's outcome.
    pub fn route(
        &self,
        device: DeviceId,
        point: PointId,
        value: Value,
        origin: CommandOrigin,
    ) -> Result<oneshot::Receiver<CommandOutcome>, CommandError> {
        let owners = self.owners.read().unwrap_or_else(|e| e.into_inner());
        let owner = owners
            .get(device.as_str())
            .ok_or_else(|| CommandError::UnknownDevice(device.to_string()))?;
        if !owner.writable.contains(point.as_str()) {
            return Err(CommandError::NotWritable {
                device: device.to_string(),
                point: point.to_string(),
            });
        }
        let (reply, rx) = oneshot::channel();
        let cmd = Command {
            device,
            point,
            value,
            origin,
            reply,
        };
        match owner.tx.try_send(cmd) {
            Ok(()) => Ok(rx),
            Err(mpsc::error::TrySendError::Full(_)) => {
                Err(CommandError::Busy(owner.adapter.to_string()))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Err(CommandError::AdapterGone(owner.adapter.to_string()))
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
        assert!(matches!(
            r.route(
                "gh1/vent".into(),
                "angle".into(),
                Value::I64(3),
                CommandOrigin::Mqtt
            ),
            Err(CommandError::NotWritable { .. })
        ));
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
