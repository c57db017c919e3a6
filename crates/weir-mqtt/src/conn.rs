//! One MQTT session over rumqttc, for MQTT 3.1.1 or 5, behind one small interface.
//!
//! A [`Session`] is created per connection attempt and dropped when the connection fails: the
//! outbox, not rumqttc's in-memory queue, is what gets replayed after a reconnect (rumqttc would
//! otherwise re-send its own pending copies as well, and the order matching of packet ids to outbox
//! rows would break).
//!
//! rumqttc does not return a packet id from `publish`; it reports `Outgoing::Publish(pkid)` in the
//! order requests were handed to it and `Incoming::PubAck(pkid)` later. [`Ev`] carries both, and
//! the forwarder matches them to rows in request order.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{QoS, TlsConfiguration, Transport};

/// What the forwarder needs to know to open a session.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub v5: bool,
    pub keepalive: Duration,
    pub connect_timeout: Duration,
    pub credentials: Option<(String, String)>,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub max_inflight: u16,
    /// Last will: topic, payload (retained, QoS 1).
    pub will: (String, Vec<u8>),
    pub max_packet_bytes: usize,
}

/// A normalised event of either protocol version.
#[derive(Debug)]
pub enum Ev {
    Connected,
    /// A PUBLISH was written; 0 for QoS 0.
    Sent(u16),
    /// The broker acknowledged a QoS 1 publish; `Err(reason)` when an MQTT 5 broker refused it.
    Acked(u16, Result<(), String>),
    /// An incoming message (commands).
    Message {
        topic: String,
        payload: Vec<u8>,
    },
    /// Anything else (pings, subscribe acks, …).
    Other,
}

/// Why a publish was not queued.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("invalid topic `{0}`")]
    InvalidTopic(String),
    #[error("client queue full")]
    Full,
}

pub enum Session {
    V4(rumqttc::AsyncClient, Box<rumqttc::EventLoop>),
    V5(rumqttc::v5::AsyncClient, Box<rumqttc::v5::EventLoop>),
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Session::V4(..) => "Session(3.1.1)",
            Session::V5(..) => "Session(5)",
        })
    }
}

fn qos(q: u8) -> QoS {
    if q == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

/// TCP_NODELAY: a PUBLISH goes on the wire at once. With Nagle's algorithm a small publish written
/// while the previous one is unacknowledged at TCP level waits for the peer's delayed ACK (40 ms on
/// Linux), which is what a latency budget of a few milliseconds cannot afford.
fn network_options(o: &ConnectOptions) -> rumqttc::NetworkOptions {
    let mut net = rumqttc::NetworkOptions::new();
    net.set_connection_timeout(o.connect_timeout.as_secs().max(1));
    net.set_tcp_nodelay(true);
    net
}

fn qos5(q: u8) -> rumqttc::v5::mqttbytes::QoS {
    if q == 0 {
        rumqttc::v5::mqttbytes::QoS::AtMostOnce
    } else {
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce
    }
}

fn transport(o: &ConnectOptions) -> Transport {
    match &o.tls {
        Some(cfg) => Transport::tls_with_config(TlsConfiguration::Rustls(cfg.clone())),
        None => Transport::tcp(),
    }
}

impl Session {
    /// Prepare a session; nothing is sent until [`Session::poll`].
    pub fn new(o: &ConnectOptions) -> Session {
        // Room for a full window of publishes plus status, results and subscriptions.
        let cap = o.max_inflight as usize + 64;
        if o.v5 {
            let mut m = rumqttc::v5::MqttOptions::new(o.client_id.clone(), o.host.clone(), o.port);
            m.set_keep_alive(o.keepalive.max(Duration::from_secs(5)))
                .set_clean_start(true)
                .set_transport(transport(o))
                .set_connection_timeout(o.connect_timeout.as_secs().max(1))
                .set_outgoing_inflight_upper_limit(o.max_inflight)
                .set_max_packet_size(Some(o.max_packet_bytes as u32))
                .set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
                    o.will.0.clone(),
                    o.will.1.clone(),
                    qos5(1),
                    true,
                    None,
                ));
            if let Some((u, p)) = &o.credentials {
                m.set_credentials(u.clone(), p.clone());
            }
            m.set_network_options(network_options(o));
            let (c, e) = rumqttc::v5::AsyncClient::new(m, cap);
            Session::V5(c, Box::new(e))
        } else {
            let mut m = rumqttc::MqttOptions::new(o.client_id.clone(), o.host.clone(), o.port);
            m.set_keep_alive(o.keepalive.max(Duration::from_secs(5)))
                .set_clean_session(true)
                .set_transport(transport(o))
                .set_inflight(o.max_inflight)
                .set_max_packet_size(o.max_packet_bytes, o.max_packet_bytes)
                .set_last_will(rumqttc::LastWill::new(
                    o.will.0.clone(),
                    o.will.1.clone(),
                    QoS::AtLeastOnce,
                    true,
                ));
            if let Some((u, p)) = &o.credentials {
                m.set_credentials(u.clone(), p.clone());
            }
            let (c, mut e) = rumqttc::AsyncClient::new(m, cap);
            e.set_network_options(network_options(o));
            Session::V4(c, Box::new(e))
        }
    }

    /// The next event; an error means the session is over (then see [`Session::leftover`]).
    pub async fn poll(&mut self) -> Result<Ev, String> {
        match self {
            Session::V4(_, e) => e.poll().await.map(map_v4).map_err(describe_v4),
            Session::V5(_, e) => map_v5(e.poll().await.map_err(|e| describe_v5(&e))?),
        }
    }

    /// Events rumqttc had already decoded when the connection failed. A broker may answer and
    /// close at once (mosquitto 2.0 sends PUBACK 135 for a denied publish, then disconnects):
    /// those acknowledgements are still valid and must not be lost with the session.
    pub fn leftover(&mut self) -> Vec<Ev> {
        match self {
            Session::V4(_, e) => e.state.events.drain(..).map(map_v4).collect(),
            Session::V5(_, e) => e
                .state
                .events
                .drain(..)
                .filter_map(|ev| map_v5(ev).ok())
                .collect(),
        }
    }

    /// Queue a publish without waiting.
    pub fn publish(
        &self,
        topic: &str,
        q: u8,
        retain: bool,
        payload: Vec<u8>,
    ) -> Result<(), PublishError> {
        if topic.is_empty() || topic.contains(['+', '#', '\0']) {
            return Err(PublishError::InvalidTopic(topic.to_string()));
        }
        let r = match self {
            Session::V4(c, _) => c
                .try_publish(topic, qos(q), retain, payload)
                .map_err(|_| ()),
            Session::V5(c, _) => c
                .try_publish(topic, qos5(q), retain, payload)
                .map_err(|_| ()),
        };
        r.map_err(|_| PublishError::Full)
    }

    pub fn subscribe(&self, filter: &str) -> Result<(), PublishError> {
        let r = match self {
            Session::V4(c, _) => c.try_subscribe(filter, QoS::AtLeastOnce).map_err(|_| ()),
            Session::V5(c, _) => c.try_subscribe(filter, qos5(1)).map_err(|_| ()),
        };
        r.map_err(|_| PublishError::Full)
    }

    pub fn disconnect(&self) {
        let _ = match self {
            Session::V4(c, _) => c.try_disconnect().map_err(|_| ()),
            Session::V5(c, _) => c.try_disconnect().map_err(|_| ()),
        };
    }
}

fn map_v4(ev: rumqttc::Event) -> Ev {
    use rumqttc::{Event, Incoming, Outgoing};
    match ev {
        Event::Incoming(Incoming::ConnAck(_)) => Ev::Connected,
        Event::Incoming(Incoming::PubAck(a)) => Ev::Acked(a.pkid, Ok(())),
        Event::Incoming(Incoming::Publish(p)) => Ev::Message {
            topic: p.topic,
            payload: p.payload.to_vec(),
        },
        Event::Outgoing(Outgoing::Publish(pkid)) => Ev::Sent(pkid),
        _ => Ev::Other,
    }
}

fn map_v5(ev: rumqttc::v5::Event) -> Result<Ev, String> {
    use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet, PubAckReason};
    use rumqttc::v5::Event as E5;
    use rumqttc::Outgoing;
    match ev {
        E5::Incoming(Packet::ConnAck(c)) => {
            if c.code == ConnectReturnCode::Success {
                Ok(Ev::Connected)
            } else {
                Err(format!("broker refused the connection: {:?}", c.code))
            }
        }
        E5::Incoming(Packet::PubAck(a)) => {
            let r = match a.reason {
                PubAckReason::Success | PubAckReason::NoMatchingSubscribers => Ok(()),
                other => Err(format!("{other:?}")),
            };
            Ok(Ev::Acked(a.pkid, r))
        }
        E5::Incoming(Packet::Publish(p)) => Ok(Ev::Message {
            topic: String::from_utf8_lossy(&p.topic).into_owned(),
            payload: p.payload.to_vec(),
        }),
        E5::Outgoing(Outgoing::Publish(pkid)) => Ok(Ev::Sent(pkid)),
        _ => Ok(Ev::Other),
    }
}

fn describe_v4(e: rumqttc::ConnectionError) -> String {
    use rumqttc::ConnectionError as C;
    match e {
        C::ConnectionRefused(code) => format!("broker refused the connection: {code:?}"),
        C::Io(e) => format!("network: {e}"),
        C::Tls(e) => format!("TLS: {e}"),
        C::NetworkTimeout => "connect timed out".into(),
        C::FlushTimeout => "write timed out".into(),
        other => other.to_string(),
    }
}

fn describe_v5(e: &rumqttc::v5::ConnectionError) -> String {
    format!("{e}")
}
