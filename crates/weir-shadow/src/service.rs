//! The shadow's MQTT side and reconciler loop (`mqtt.shadow`), one task under the daemon's
//! cancellation token.
//!
//! It keeps its own MQTT connection (client id `<client id>-shadow`, will `offline` on
//! `<prefix>/shadow/status`, so it never touches the gateway's status) and subscribes, for every
//! device with writable points, to `<prefix>/<device>/shadow/desired` and to the JSON telemetry
//! topic of each writable point: *reported* is what the gateway published (the latest `value` of
//! a reading whose quality is not bad). Desired values are written through the
//! [`CommandRouter`] (least privilege unchanged; origin MQTT, as the wish came over MQTT). Every
//! 250 ms the [`Shadow`] says which writes are due; outcomes come back through a bounded channel.
//! Desired state is kept in `<state_dir>/shadow/desired.json` (written atomically on each change)
//! as well as in the retained topic, so it survives a restart even without a broker.
//!
//! Documents are published retained (reported) and not retained (delta) when they change.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use weir_core::{
    Availability, Backoff, CancellationToken, CommandOrigin, CommandRouter, DeviceId, Value,
};
use weir_mqtt::conn::{ConnectOptions, Ev, Session};
use weir_mqtt::format::TopicTemplate;

use crate::{Actuator, RetryPolicy, Shadow, ShadowHandle, HANDLE};

/// How long a routed write may wait for its adapter's answer before it counts as no answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
const TICK: Duration = Duration::from_millis(250);

/// What the service needs from the gateway configuration.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// The gateway's connection settings (client id and will are replaced).
    pub connect: ConnectOptions,
    pub prefix: String,
    pub telemetry: TopicTemplate,
    pub retry: RetryPolicy,
    /// `<state_dir>/shadow/desired.json`.
    pub state_file: PathBuf,
}

impl ServiceConfig {
    /// The service `mqtt.shadow` asks for, if any (TLS files are read here, as the forwarder's).
    pub fn from_config(
        cfg: &weir_config::GatewayConfig,
    ) -> Result<Option<ServiceConfig>, weir_mqtt::tls::TlsError> {
        let Some(sh) = cfg.mqtt.shadow.as_ref().filter(|s| s.enabled) else {
            return Ok(None);
        };
        let prefix = cfg.topic_prefix();
        Ok(Some(ServiceConfig {
            connect: weir_mqtt::forwarder_config(cfg)?.connect,
            telemetry: TopicTemplate::new(&cfg.mqtt.telemetry_topic, &prefix),
            prefix,
            retry: RetryPolicy {
                min: Duration::from_millis(sh.retry_min_ms),
                max: Duration::from_millis(sh.retry_max_ms),
            },
            state_file: cfg.gateway.state_dir.join("shadow").join("desired.json"),
        }))
    }
}

type Outcome = (String, String, Value, Result<(), String>);

/// Writes through the router; outcomes go to the service's bounded channel.
struct RouterActuator<'a> {
    router: &'a CommandRouter,
    tx: &'a mpsc::Sender<Outcome>,
    /// Refusals and busy answers the router gives at once.
    immediate: Vec<Outcome>,
}

impl Actuator for RouterActuator<'_> {
    fn write(&mut self, device: &str, point: &str, value: &Value) {
        tracing::info!(device, point, value = %value, "shadow: applying desired value");
        match self.router.route(
            DeviceId::new(device),
            point.into(),
            value.clone(),
            CommandOrigin::Mqtt,
        ) {
            Err(e) => self.immediate.push((
                device.to_string(),
                point.to_string(),
                value.clone(),
                Err(e.to_string()),
            )),
            Ok(rx) => {
                let tx = self.tx.clone();
                let (d, p, v) = (device.to_string(), point.to_string(), value.clone());
                tokio::spawn(async move {
                    let outcome = match tokio::time::timeout(WRITE_TIMEOUT, rx).await {
                        Ok(Ok(o)) => o,
                        Ok(Err(_)) => Err("adapter dropped the command without answering".into()),
                        Err(_) => Err(format!("no answer within {WRITE_TIMEOUT:?}")),
                    };
                    let _ = tx.send((d, p, v, outcome)).await;
                });
            }
        }
    }
}

fn save(shadow: &Shadow, path: &PathBuf) {
    let res = (|| -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, shadow.save().to_string())?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        tracing::warn!(path = %path.display(), "shadow: could not save desired state: {e}");
    }
}

/// Run until `shutdown`.
pub async fn run(cfg: ServiceConfig, router: CommandRouter, shutdown: CancellationToken) {
    let mut shadow = Shadow::new(cfg.retry);
    match std::fs::read(&cfg.state_file) {
        Ok(bytes) => match serde_json::from_slice(&bytes)
            .map_err(|e| e.to_string())
            .and_then(|j| shadow.restore(&j).map_err(|e| e.to_string()))
        {
            Ok(()) => {
                tracing::info!(path = %cfg.state_file.display(), "shadow: desired state restored")
            }
            Err(e) => {
                tracing::warn!(path = %cfg.state_file.display(), "shadow: ignoring saved state: {e}")
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %cfg.state_file.display(), "shadow: cannot read saved state: {e}")
        }
    }
    // One shadow per process (the rules find it through `handle()`); a second service (not
    // something the daemon starts) works on its own copy.
    let h = ShadowHandle::new(shadow);
    let _ = HANDLE.set(h.clone());
    let (tx, mut rx) = mpsc::channel::<Outcome>(256);
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    let mut opts = cfg.connect.clone();
    opts.client_id = format!("{}-shadow", opts.client_id);
    opts.will = (format!("{}/shadow/status", cfg.prefix), b"offline".to_vec());
    loop {
        let mut s = Session::with_will_retain(&opts, true);
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            ev = s.poll() => ev,
        };
        if !matches!(first, Ok(Ev::Connected)) {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff.next_delay()) => continue,
            }
        }
        backoff.reset();
        let _ = s.publish(
            &format!("{}/shadow/status", cfg.prefix),
            1,
            true,
            b"online".to_vec(),
        );
        let mut subscribed: HashSet<DeviceId> = HashSet::new();
        // Telemetry topic → (device, point) of writable points.
        let mut telemetry: HashMap<String, (String, String)> = HashMap::new();
        let mut reg = router.registry().changes();
        reg.mark_unchanged();
        subscribe_new(&s, &cfg, &router, &mut subscribed, &mut telemetry);
        let mut availability: HashMap<DeviceId, Availability> = router
            .registry()
            .snapshot()
            .into_iter()
            .map(|d| (d.id, d.availability))
            .collect();
        let mut dirty: HashSet<String> = subscribed.iter().map(|d| d.to_string()).collect();
        let mut published: HashMap<String, (String, String)> = HashMap::new();
        let mut tick = tokio::time::interval(TICK);
        let desired_suffix = "/shadow/desired";
        let lost = loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = s.publish(&format!("{}/shadow/status", cfg.prefix), 1, true, b"offline".to_vec());
                    s.disconnect();
                    return;
                }
                ev = s.poll() => match ev {
                    Ok(Ev::Message { topic, payload }) => {
                        if let Some(device) = topic
                            .strip_prefix(&format!("{}/", cfg.prefix))
                            .and_then(|r| r.strip_suffix(desired_suffix))
                        {
                            if payload.is_empty() {
                                continue;
                            }
                            match h.with(|s| s.set_desired(device, &payload)) {
                                Ok(v) => {
                                    tracing::info!(device, version = v, "shadow: desired state");
                                    h.with(|s| save(s, &cfg.state_file));
                                    dirty.insert(device.to_string());
                                }
                                Err(e) => tracing::warn!(device, "shadow: desired document refused: {e}"),
                            }
                        } else if let Some((device, point)) = telemetry.get(&topic) {
                            let doc: serde_json::Value =
                                serde_json::from_slice(&payload).unwrap_or_default();
                            if doc["quality"] == "bad" {
                                continue;
                            }
                            let v = match &doc["value"] {
                                serde_json::Value::Bool(b) => Some(Value::Bool(*b)),
                                serde_json::Value::Number(n) => Some(
                                    n.as_i64()
                                        .map(Value::I64)
                                        .unwrap_or_else(|| Value::F64(n.as_f64().unwrap_or(f64::NAN))),
                                ),
                                serde_json::Value::String(t) => Some(Value::from(t.as_str())),
                                _ => None,
                            };
                            if let Some(v) = v {
                                h.with(|s| s.report(device, point, &v));
                                dirty.insert(device.clone());
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => break e,
                },
                Some((d, p, v, outcome)) = rx.recv() => {
                    let verdict = h.with(|s| s.outcome(&d, &p, &v, &outcome, Instant::now()));
                    tracing::info!(device = d, point = p, ?verdict, "shadow: write outcome");
                    dirty.insert(d);
                }
                Ok(()) = reg.changed() => {
                    subscribe_new(&s, &cfg, &router, &mut subscribed, &mut telemetry);
                    for d in router.registry().snapshot() {
                        let before = availability.insert(d.id.clone(), d.availability);
                        if d.availability == Availability::Online && before != Some(Availability::Online) {
                            h.with(|s| s.online(d.id.as_str()));
                        }
                    }
                }
                _ = h.wake.notified() => {
                    // A rule changed desired state.
                    // The retained desired topic stays the truth (a restart reads it back).
                    let changed = h.take_changed();
                    if !changed.is_empty() {
                        h.with(|s| save(s, &cfg.state_file));
                        for d in &changed {
                            let doc = h.with(|s| s.desired_doc(d).to_string());
                            let _ = s.publish(
                                &format!("{}/{d}/shadow/desired", cfg.prefix),
                                1,
                                true,
                                doc.into_bytes(),
                            );
                        }
                        dirty.extend(changed);
                    }
                }
                _ = tick.tick() => {
                    let now_av: HashMap<DeviceId, Availability> = router
                        .registry()
                        .snapshot()
                        .into_iter()
                        .map(|d| (d.id, d.availability))
                        .collect();
                    let offline = |d: &str| {
                        now_av
                            .get(d)
                            .is_none_or(|a| *a == Availability::Offline)
                    };
                    let mut act = RouterActuator { router: &router, tx: &tx, immediate: Vec::new() };
                    h.with(|s| s.due(Instant::now(), offline, &mut act));
                    for (d, p, v, outcome) in std::mem::take(&mut act.immediate) {
                        let verdict = h.with(|s| s.outcome(&d, &p, &v, &outcome, Instant::now()));
                        tracing::info!(device = d, point = p, ?verdict, "shadow: write outcome");
                        dirty.insert(d);
                    }
                    for d in dirty.drain() {
                        let (reported, delta) = h.with(|s| {
                            (s.reported_doc(&d).to_string(), s.delta_doc(&d).to_string())
                        });
                        if published.get(&d) == Some(&(reported.clone(), delta.clone())) {
                            continue;
                        }
                        let base = format!("{}/{}/shadow", cfg.prefix, d);
                        let ok = s.publish(&format!("{base}/reported"), 1, true, reported.clone().into_bytes()).is_ok()
                            && s.publish(&format!("{base}/delta"), 1, false, delta.clone().into_bytes()).is_ok();
                        if ok {
                            published.insert(d, (reported, delta));
                        }
                    }
                }
            }
        };
        tracing::warn!("shadow: mqtt connection lost ({lost}); connecting again");
    }
}

/// Subscribe the desired topic and the writable points' telemetry of devices not subscribed yet.
fn subscribe_new(
    s: &Session,
    cfg: &ServiceConfig,
    router: &CommandRouter,
    subscribed: &mut HashSet<DeviceId>,
    telemetry: &mut HashMap<String, (String, String)>,
) {
    let mut filters = Vec::new();
    let mut added = Vec::new();
    for d in router.registry().snapshot() {
        if subscribed.contains(&d.id) {
            continue;
        }
        let writable: Vec<&str> = d
            .points
            .iter()
            .filter(|p| p.spec.writable)
            .map(|p| p.spec.name.as_str())
            .collect();
        if writable.is_empty() {
            continue;
        }
        filters.push(format!("{}/{}/shadow/desired", cfg.prefix, d.id));
        for p in writable {
            let t = cfg.telemetry.render(d.id.as_str(), p);
            telemetry.insert(t.clone(), (d.id.to_string(), p.to_string()));
            filters.push(t);
        }
        added.push(d.id.clone());
    }
    if filters.is_empty() {
        return;
    }
    // A few SUBSCRIBE packets, not one per filter (rumqttc's request queue is bounded).
    for chunk in filters.chunks(100) {
        if let Err(e) = s.subscribe_many(chunk) {
            tracing::warn!("shadow: could not subscribe ({} filters): {e}", chunk.len());
            return;
        }
    }
    subscribed.extend(added);
}
