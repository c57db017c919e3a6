//! Fan-out of one source's commands to the tasks that serve its devices.
//!
//! The router gives a source one [`CommandInbox`], but a source often runs several independent
//! tasks — a Modbus source's lines, a radio's coordinator and its sleepy-device queue — each
//! owning some of the devices and taking commands between its own transactions. A
//! [`CommandFanout`] routes each command, by device, to the bounded queue of the task that serves
//! it.
//!
//! Invariants:
//!
//! * every command is answered exactly once: by the task it was handed to, or here, at once, when
//!   it cannot be handed over — the source has no such device ([`FanoutError::UnknownDevice`]),
//!   the task's queue is full ([`FanoutError::Busy`]: never a wait, so one slow line cannot hold
//!   up the commands of the others), or the task has stopped ([`FanoutError::Gone`]);
//! * a device is served by at most one queue; routes can be added and removed while running (a
//!   device joining or leaving);
//! * nothing here blocks or allocates per command beyond the hand-over itself.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::command::{Command, CommandInbox};
use crate::reading::DeviceId;

/// Why a command was answered by the fan-out instead of a task.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FanoutError {
    #[error("source `{source_name}` has no device `{device}`")]
    UnknownDevice { source_name: String, device: String },
    #[error("busy: the command queue for device `{device}` is full")]
    Busy { device: String },
    #[error("device `{device}` is not being served (its task in source `{source_name}` stopped)")]
    Gone { source_name: String, device: String },
}

/// Device → the bounded queue of the task serving it.
#[derive(Debug)]
pub struct CommandFanout {
    source: Arc<str>,
    routes: HashMap<DeviceId, mpsc::Sender<Command>>,
}

impl CommandFanout {
    /// An empty fan-out for source `source` (named in answers).
    pub fn new(source: &str) -> Self {
        CommandFanout {
            source: Arc::from(source),
            routes: HashMap::new(),
        }
    }

    /// A new task queue holding at most `capacity` commands (at least one), serving `devices`;
    /// the receiver goes to the task.
    pub fn add_queue(
        &mut self,
        devices: impl IntoIterator<Item = DeviceId>,
        capacity: usize,
    ) -> mpsc::Receiver<Command> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        for d in devices {
            self.add(d, &tx);
        }
        rx
    }

    /// Serve `device` from the queue `tx` (replacing its earlier route, which is returned).
    pub fn add(
        &mut self,
        device: DeviceId,
        tx: &mpsc::Sender<Command>,
    ) -> Option<mpsc::Sender<Command>> {
        self.routes.insert(device, tx.clone())
    }

    /// Stop serving `device`: its commands are answered as unknown. True when it was served.
    pub fn remove(&mut self, device: &str) -> bool {
        self.routes.remove(device).is_some()
    }

    /// The devices served.
    pub fn devices(&self) -> impl Iterator<Item = &DeviceId> {
        self.routes.keys()
    }

    /// Hand `cmd` to the queue of its device's task, or answer it here (the error says how it
    /// was answered).
    pub fn route(&self, cmd: Command) -> Result<(), FanoutError> {
        let Some(tx) = self.routes.get(cmd.device.as_str()) else {
            let e = FanoutError::UnknownDevice {
                source_name: self.source.to_string(),
                device: cmd.device.to_string(),
            };
            let _ = cmd.reply.send(Err(e.to_string()));
            return Err(e);
        };
        match tx.try_send(cmd) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(cmd)) => {
                let e = FanoutError::Busy {
                    device: cmd.device.to_string(),
                };
                let _ = cmd.reply.send(Err(e.to_string()));
                Err(e)
            }
            Err(mpsc::error::TrySendError::Closed(cmd)) => {
                let e = FanoutError::Gone {
                    source_name: self.source.to_string(),
                    device: cmd.device.to_string(),
                };
                let _ = cmd.reply.send(Err(e.to_string()));
                Err(e)
            }
        }
    }

    /// Route every command of `inbox` until the router is gone (the inbox closes). Sources that
    /// also watch other things call [`CommandFanout::route`] from their own `select!` instead.
    pub async fn forward(&self, inbox: &CommandInbox) {
        while let Some(cmd) = inbox.recv().await {
            if let Err(e) = self.route(cmd) {
                tracing::debug!(source = %self.source, "command answered by the fan-out: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{CommandOrigin, CommandOutcome, CommandRouter};
    use crate::reading::Value;
    use tokio::sync::oneshot;

    fn cmd(device: &str) -> (Command, oneshot::Receiver<CommandOutcome>) {
        let (reply, rx) = oneshot::channel();
        (
            Command {
                device: device.into(),
                point: "p".into(),
                value: Value::I64(1),
                origin: CommandOrigin::Cli,
                reply,
            },
            rx,
        )
    }

    #[test]
    fn commands_reach_the_queue_of_their_device() {
        let mut f = CommandFanout::new("plant");
        let mut line1 = f.add_queue(["a/m1".into(), "a/m2".into()], 4);
        let mut line2 = f.add_queue(["b/m3".into()], 4);
        for d in ["a/m2", "b/m3", "a/m1"] {
            f.route(cmd(d).0).unwrap();
        }
        let got = |rx: &mut mpsc::Receiver<Command>| {
            std::iter::from_fn(|| rx.try_recv().ok())
                .map(|c| c.device.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(got(&mut line1), ["a/m2", "a/m1"]);
        assert_eq!(got(&mut line2), ["b/m3"]);
        let mut served: Vec<&str> = f.devices().map(|d| d.as_str()).collect();
        served.sort();
        assert_eq!(served, ["a/m1", "a/m2", "b/m3"]);
    }

    #[test]
    fn unknown_busy_and_gone_are_answered_at_once() {
        let mut f = CommandFanout::new("plant");
        let _line1 = f.add_queue(["a/m1".into()], 1);
        let line2 = f.add_queue(["b/m3".into()], 1);

        let (c, mut rx) = cmd("nope");
        assert!(matches!(f.route(c), Err(FanoutError::UnknownDevice { .. })));
        assert_eq!(
            rx.try_recv().unwrap(),
            Err("source `plant` has no device `nope`".to_string())
        );

        // The queue holds one: the second is refused, not waited for; the first is untouched.
        let (c, mut first) = cmd("a/m1");
        f.route(c).unwrap();
        let (c, mut rx) = cmd("a/m1");
        assert_eq!(
            f.route(c),
            Err(FanoutError::Busy {
                device: "a/m1".into()
            })
        );
        assert_eq!(
            rx.try_recv().unwrap(),
            Err("busy: the command queue for device `a/m1` is full".to_string())
        );
        assert!(first.try_recv().is_err(), "still waiting for its line");

        // Line 2's task stopped.
        drop(line2);
        let (c, mut rx) = cmd("b/m3");
        assert!(matches!(f.route(c), Err(FanoutError::Gone { .. })));
        assert_eq!(
            rx.try_recv().unwrap(),
            Err(
                "device `b/m3` is not being served (its task in source `plant` stopped)"
                    .to_string()
            )
        );
    }

    #[test]
    fn devices_join_and_leave_while_running() {
        let mut f = CommandFanout::new("zb");
        let (c, mut rx) = cmd("zb/lamp");
        assert!(f.route(c).is_err());
        assert!(rx.try_recv().unwrap().is_err());
        let (sleepy_tx, mut sleepy) = mpsc::channel(2);
        let (coordinator_tx, mut coordinator) = mpsc::channel(2);
        assert!(f.add("zb/lamp".into(), &sleepy_tx).is_none());
        f.route(cmd("zb/lamp").0).unwrap();
        assert_eq!(sleepy.try_recv().unwrap().device.as_str(), "zb/lamp");
        // Moved to another queue: only that one gets it.
        assert!(f.add("zb/lamp".into(), &coordinator_tx).is_some());
        f.route(cmd("zb/lamp").0).unwrap();
        assert!(sleepy.try_recv().is_err());
        assert_eq!(coordinator.try_recv().unwrap().device.as_str(), "zb/lamp");
        assert!(f.remove("zb/lamp"));
        assert!(!f.remove("zb/lamp"));
        assert!(matches!(
            f.route(cmd("zb/lamp").0),
            Err(FanoutError::UnknownDevice { .. })
        ));
    }

    #[tokio::test]
    async fn forward_routes_the_inbox_until_the_router_is_gone() {
        let router = CommandRouter::new();
        let inbox = router.register(
            "plant",
            &[crate::command::DeviceInfo {
                device: "a/m1".into(),
                writable_points: vec!["p".into()],
            }],
            4,
        );
        let mut f = CommandFanout::new("plant");
        let mut line = f.add_queue(["a/m1".into()], 4);
        let task = tokio::spawn(async move { f.forward(&inbox).await });
        let answer = router
            .route("a/m1".into(), "p".into(), Value::I64(1), CommandOrigin::Cli)
            .unwrap();
        let c = line.recv().await.unwrap();
        c.reply.send(Ok(())).unwrap();
        assert_eq!(answer.await.unwrap(), Ok(()));
        router.remove_inbox("plant");
        drop(router);
        tokio::time::timeout(std::time::Duration::from_secs(5), task)
            .await
            .expect("forward ends when the inbox closes")
            .unwrap();
    }
}
