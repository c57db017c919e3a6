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
//!
//! Settings mean what they say: `keepalive` zero sends a CONNECT with keep alive 0 (no pings, the
//! broker never times the client out), and `connect_timeout` bounds TCP connect, TLS handshake and
//! CONNACK together at millisecond resolution (rumqttc counts whole seconds, so its own timeout is
//! only a backstop rounded up).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use rumqttc::{QoS, TlsConfiguration, Transport};

/// What the forwarder needs to know to open a session.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub v5: bool,
    /// Zero: no keep alive. Otherwise whole seconds, at least 5 for MQTT 5 (rumqttc's limit).
    pub keepalive: Duration,
    /// From the first [`Session::poll`] to the CONNACK.
    pub connect_timeout: Duration,
    pub credentials: Option<(String, String)>,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub max_inflight: u16,
    /// Last will: topic, payload (QoS 1; retained unless [`Session::with_will_retain`] says not).
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

/// One connection attempt and, once connected, the session over it.
pub struct Session {
    inner: Inner,
    /// Until the CONNACK: how long connecting may take, and the deadline once polling started.
    connecting: Option<(Duration, Option<Instant>)>,
}

enum Inner {
    V4(rumqttc::AsyncClient, Box<rumqttc::EventLoop>),
    V5(rumqttc::v5::AsyncClient, Box<rumqttc::v5::EventLoop>),
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.inner {
            Inner::V4(..) => "Session(3.1.1)",
            Inner::V5(..) => "Session(5)",
        })
    }
}

/// MQTT 5 keep alive "off": rumqttc 0.25's v5 client refuses durations under 5 s and writes the
/// CONNECT field as `secs as u16`, so a multiple of 65536 s goes on the wire as 0 (no keep alive)
/// while its ping timer waits 48 days (a PINGREQ then is harmless). A test reads the CONNECT.
const V5_KEEPALIVE_OFF: Duration = Duration::from_secs(1 << 22);

/// rumqttc's own connection timeout (whole seconds): the configured one rounded up, so that the
/// millisecond deadline in [`Session::poll`] is the one that fires.
fn rumqttc_timeout_s(o: &ConnectOptions) -> u64 {
    (o.connect_timeout.as_millis().div_ceil(1000) as u64).max(1)
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
    net.set_connection_timeout(rumqttc_timeout_s(o));
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
        Session::with_will_retain(o, true)
    }

    /// [`Session::new`] with the will retained or not (Sparkplug's NDEATH is not retained).
    pub fn with_will_retain(o: &ConnectOptions, will_retain: bool) -> Session {
        // Room for a full window of publishes plus status, results and subscriptions.
        let cap = o.max_inflight as usize + 64;
        let inner = if o.v5 {
            let mut m = rumqttc::v5::MqttOptions::new(o.client_id.clone(), o.host.clone(), o.port);
            m.set_keep_alive(if o.keepalive.is_zero() {
                V5_KEEPALIVE_OFF
            } else {
                o.keepalive.max(Duration::from_secs(5))
            })
            .set_clean_start(true)
            .set_transport(transport(o))
            .set_connection_timeout(rumqttc_timeout_s(o))
            .set_outgoing_inflight_upper_limit(o.max_inflight)
            .set_max_packet_size(Some(o.max_packet_bytes as u32))
            .set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
                o.will.0.clone(),
                o.will.1.clone(),
                qos5(1),
                will_retain,
                None,
            ));
            if let Some((u, p)) = &o.credentials {
                m.set_credentials(u.clone(), p.clone());
            }
            m.set_network_options(network_options(o));
            let (c, e) = rumqttc::v5::AsyncClient::new(m, cap);
            Inner::V5(c, Box::new(e))
        } else {
            let mut m = rumqttc::MqttOptions::new(o.client_id.clone(), o.host.clone(), o.port);
            // rumqttc's 3.1.1 client takes zero as "no keep alive".
            m.set_keep_alive(if o.keepalive.is_zero() {
                Duration::ZERO
            } else {
                o.keepalive.max(Duration::from_secs(1))
            })
            .set_clean_session(true)
            .set_transport(transport(o))
            .set_inflight(o.max_inflight)
            .set_max_packet_size(o.max_packet_bytes, o.max_packet_bytes)
            .set_last_will(rumqttc::LastWill::new(
                o.will.0.clone(),
                o.will.1.clone(),
                QoS::AtLeastOnce,
                will_retain,
            ));
            if let Some((u, p)) = &o.credentials {
                m.set_credentials(u.clone(), p.clone());
            }
            let (c, mut e) = rumqttc::AsyncClient::new(m, cap);
            e.set_network_options(network_options(o));
            Inner::V4(c, Box::new(e))
        };
        Session {
            inner,
            connecting: Some((o.connect_timeout, None)),
        }
    }

    /// The next event; an error means the session is over (then see [`Session::leftover`]).
    /// Until [`Ev::Connected`], the calls share one deadline: `connect_timeout` after the first.
    pub async fn poll(&mut self) -> Result<Ev, String> {
        let Some((timeout, deadline)) = &mut self.connecting else {
            return self.inner.poll().await;
        };
        let timeout = *timeout;
        let deadline = *deadline.get_or_insert_with(|| Instant::now() + timeout);
        let ev = tokio::time::timeout_at(deadline, self.inner.poll())
            .await
            .map_err(|_| format!("connect timed out after {} ms", timeout.as_millis()))??;
        if matches!(ev, Ev::Connected) {
            self.connecting = None;
        }
        Ok(ev)
    }

    /// Events rumqttc had already decoded when the connection failed. A broker may answer and
    /// close at once (mosquitto 2.0 sends PUBACK 135 for a denied publish, then disconnects):
    /// those acknowledgements are still valid and must not be lost with the session.
    pub fn leftover(&mut self) -> Vec<Ev> {
        match &mut self.inner {
            Inner::V4(_, e) => e.state.events.drain(..).map(map_v4).collect(),
            Inner::V5(_, e) => e
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
        let r = match &self.inner {
            Inner::V4(c, _) => c
                .try_publish(topic, qos(q), retain, payload)
                .map_err(|_| ()),
            Inner::V5(c, _) => c
                .try_publish(topic, qos5(q), retain, payload)
                .map_err(|_| ()),
        };
        r.map_err(|_| PublishError::Full)
    }

    pub fn subscribe(&self, filter: &str) -> Result<(), PublishError> {
        let r = match &self.inner {
            Inner::V4(c, _) => c.try_subscribe(filter, QoS::AtLeastOnce).map_err(|_| ()),
            Inner::V5(c, _) => c.try_subscribe(filter, qos5(1)).map_err(|_| ()),
        };
        r.map_err(|_| PublishError::Full)
    }

    /// One SUBSCRIBE packet for all of `filters` (QoS 1): one request in rumqttc's queue however
    /// many devices there are (one request per filter filled the queue with 500 devices).
    pub fn subscribe_many(&self, filters: &[String]) -> Result<(), PublishError> {
        let r = match &self.inner {
            Inner::V4(c, _) => c
                .try_subscribe_many(
                    filters
                        .iter()
                        .map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce)),
                )
                .map_err(|_| ()),
            Inner::V5(c, _) => c
                .try_subscribe_many(
                    filters
                        .iter()
                        .map(|f| rumqttc::v5::mqttbytes::v5::Filter::new(f.clone(), qos5(1))),
                )
                .map_err(|_| ()),
        };
        r.map_err(|_| PublishError::Full)
    }

    pub fn disconnect(&self) {
        let _ = match &self.inner {
            Inner::V4(c, _) => c.try_disconnect().map_err(|_| ()),
            Inner::V5(c, _) => c.try_disconnect().map_err(|_| ()),
        };
    }
}

impl Inner {
    async fn poll(&mut self) -> Result<Ev, String> {
        match self {
            Inner::V4(_, e) => e.poll().await.map(map_v4).map_err(describe_v4),
            Inner::V5(_, e) => map_v5(e.poll().await.map_err(|e| describe_v5(&e))?),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn options(port: u16, v5: bool, keepalive_s: u64, connect_timeout_ms: u64) -> ConnectOptions {
        ConnectOptions {
            host: "127.0.0.1".into(),
            port,
            client_id: "weir-test".into(),
            v5,
            keepalive: Duration::from_secs(keepalive_s),
            connect_timeout: Duration::from_millis(connect_timeout_ms),
            credentials: None,
            tls: None,
            max_inflight: 8,
            will: ("weir/test/status".into(), b"offline".to_vec()),
            max_packet_bytes: 1 << 20,
        }
    }

    /// A one-shot broker: reads the CONNECT, answers CONNACK, returns the keep alive field.
    async fn accept_connect(listener: TcpListener, v5: bool) -> u16 {
        let (mut s, _) = listener.accept().await.unwrap();
        assert_eq!(s.read_u8().await.unwrap(), 0x10, "CONNECT");
        let mut len = 0usize;
        for shift in (0..28).step_by(7) {
            let b = s.read_u8().await.unwrap();
            len |= usize::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0; len];
        s.read_exact(&mut body).await.unwrap();
        // protocol name "MQTT", level, flags, then the keep alive (both versions)
        assert_eq!(&body[..6], b"\x00\x04MQTT");
        assert_eq!(body[6], if v5 { 5 } else { 4 });
        let keepalive = u16::from_be_bytes([body[8], body[9]]);
        let connack: &[u8] = if v5 {
            &[0x20, 0x03, 0, 0, 0]
        } else {
            &[0x20, 0x02, 0, 0]
        };
        s.write_all(connack).await.unwrap();
        keepalive
    }

    async fn keepalive_on_the_wire(v5: bool, keepalive_s: u64) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let broker = tokio::spawn(accept_connect(listener, v5));
        let mut s = Session::new(&options(port, v5, keepalive_s, 5_000));
        assert!(matches!(s.poll().await, Ok(Ev::Connected)));
        broker.await.unwrap()
    }

    /// `keepalive_s: 0` means off: the CONNECT says 0 (it used to be forced to 5 s).
    #[tokio::test]
    async fn keepalive_zero_is_sent_as_zero() {
        for v5 in [false, true] {
            assert_eq!(keepalive_on_the_wire(v5, 0).await, 0, "v5={v5}");
            assert_eq!(keepalive_on_the_wire(v5, 30).await, 30, "v5={v5}");
        }
    }

    /// `connect_timeout_ms` is honoured in milliseconds (it used to be rounded down to whole
    /// seconds, at least 1): a broker that accepts TCP but never answers CONNECT.
    #[tokio::test]
    async fn connect_timeout_has_millisecond_resolution() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let _held = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            // hold the connection open without a CONNACK
            std::future::pending::<()>().await;
            drop(s);
        });
        for v5 in [false, true] {
            let mut s = Session::new(&options(port, v5, 30, 150));
            let start = Instant::now();
            let e = s.poll().await.unwrap_err();
            let took = start.elapsed();
            assert!(e.contains("connect timed out after 150 ms"), "{e}");
            assert!(took >= Duration::from_millis(150), "{took:?}");
            assert!(took < Duration::from_secs(1), "v5={v5}: {took:?}");
        }
    }
}
