//! Weir northbound: MQTT 3.1.1 / 5 over rumqttc, TLS and mTLS with rustls.
//!
//! * [`format`] turns readings into outbox messages (topics, JSON payloads, per-device seq);
//! * [`OutboxWriter`] commits encoded batches to the outbox (the pipeline's sink) and wakes
//!   the forwarder;
//! * [`forwarder`] publishes outbox rows in order and deletes them on PUBACK, keeps the retained
//!   status topics, and routes `…/set` commands;
//! * [`tls`] builds the rustls client configuration from `mqtt.tls`.

pub mod conn;
pub mod format;
pub mod forwarder;
pub mod home_assistant;
pub mod inflight;
pub mod northbound;
pub mod sparkplug;
pub mod tls;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use weir_config::GatewayConfig;
use weir_core::{Event, Reading};
use weir_store::{AppendReport, Outbox, StoreError};

pub use conn::ConnectOptions;
pub use format::Encoder;
pub use forwarder::{FormatConfig, Forwarder, ForwarderConfig};
pub use northbound::NorthboundFormat;

/// Commits readings to the outbox, encoded for MQTT, and wakes the forwarder.
#[derive(Debug, Clone)]
pub struct OutboxWriter {
    outbox: Arc<Mutex<Outbox>>,
    /// Swapped by a reload that changes topics or the publish mode (rows already stored keep
    /// the encoding they were committed with).
    encoder: Arc<std::sync::RwLock<Arc<Encoder>>>,
    wake: Arc<Notify>,
}

impl OutboxWriter {
    pub fn new(outbox: Arc<Mutex<Outbox>>, encoder: Encoder, wake: Arc<Notify>) -> Self {
        OutboxWriter {
            outbox,
            encoder: Arc::new(std::sync::RwLock::new(Arc::new(encoder))),
            wake,
        }
    }

    /// Encode the next commits with `encoder` (shared by every clone of this writer).
    pub fn set_encoder(&self, encoder: Encoder) {
        *self.encoder.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(encoder);
    }

    /// Encode and commit in one transaction (one fsync); the readings are durable when this
    /// returns `Ok`.
    pub fn commit(&self, readings: &[Reading]) -> Result<AppendReport, StoreError> {
        self.commit_with_events(readings, &[])
    }

    /// [`Self::commit`] with the batch's events (alerts, command results) after its readings, in
    /// the same transaction.
    pub fn commit_with_events(
        &self,
        readings: &[Reading],
        events: &[Event],
    ) -> Result<AppendReport, StoreError> {
        let encoder = self
            .encoder
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let report = forwarder::blocking(|| {
            forwarder::lock(&self.outbox).append_rows(|seqs| encoder.rows(readings, events, seqs))
        })?;
        self.wake.notify_one();
        Ok(report)
    }
}

/// The forwarder's settings from the gateway configuration (TLS files are read here).
pub fn forwarder_config(cfg: &GatewayConfig) -> Result<ForwarderConfig, tls::TlsError> {
    let tls = match &cfg.mqtt.tls {
        Some(t) => Some(tls::client_config(t)?),
        None => None,
    };
    let prefix = cfg.topic_prefix();
    Ok(ForwarderConfig {
        connect: ConnectOptions {
            host: cfg.mqtt.host.clone(),
            port: cfg.mqtt_port(),
            client_id: cfg.client_id(),
            v5: cfg.mqtt.protocol == weir_config::MqttProtocol::V5,
            keepalive: Duration::from_secs(cfg.mqtt.keepalive_s),
            connect_timeout: Duration::from_millis(cfg.mqtt.connect_timeout_ms),
            credentials: cfg.mqtt.username.as_ref().map(|u| {
                (
                    u.clone(),
                    cfg.mqtt_password
                        .as_ref()
                        .map(|p| p.expose().to_string())
                        .unwrap_or_default(),
                )
            }),
            tls,
            max_inflight: cfg.mqtt.max_inflight,
            will: (format!("{prefix}/status"), b"offline".to_vec()),
            max_packet_bytes: 1 << 20,
        },
        prefix,
        reconnect_min: Duration::from_millis(cfg.mqtt.reconnect_min_ms),
        reconnect_max: Duration::from_millis(cfg.mqtt.reconnect_max_ms),
        commands: cfg.mqtt.commands,
        status_interval: Duration::from_secs(cfg.mqtt.status_interval_s.max(1)),
        max_age: cfg.store_max_age(),
        exit_when_empty: false,
        format: format_config(cfg),
    })
}

/// The northbound format `mqtt.format` names, with its settings.
pub fn format_config(cfg: &GatewayConfig) -> FormatConfig {
    match (&cfg.mqtt.format, &cfg.mqtt.sparkplug) {
        (weir_config::NorthboundFormat::SparkplugB, Some(s)) => {
            FormatConfig::SparkplugB(sparkplug::SparkplugConfig {
                group_id: s.group_id.clone(),
                // `gateway.id` may hold characters a Sparkplug id may not: escaped as device ids are.
                edge_node_id: s
                    .edge_node_id
                    .clone()
                    .unwrap_or_else(|| sparkplug::device_id(&cfg.gateway.id)),
                primary_host_id: s.primary_host_id.clone(),
                bdseq_path: cfg.gateway.state_dir.join("sparkplug").join("bdseq"),
            })
        }
        // `weir check` refuses sparkplug_b without its section.
        _ => FormatConfig::Json(Encoder::from_config(cfg)),
    }
}
