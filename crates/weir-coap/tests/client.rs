//! Client-mode message exchanges, byte by byte, against a scripted device on a real UDP socket:
//! Observe registration (RFC 7641 §3.1), acknowledging CON notifications, RST for a notification
//! nobody observes (§3.6), reordered notifications (§3.4), and explicit deregistration on shutdown.
//! (The same behaviour against aiocoap is in the workspace's tests/coap.rs.)

use std::net::UdpSocket;
use std::time::Duration;

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use weir_coap::{CoapConfig, CoapSource};
use weir_core::{
    bus, CancellationToken, CommandRouter, Metrics, Source, SourceBuilder, SourceContext, Value,
};

fn observe_of(p: &Packet) -> Option<u32> {
    p.get_first_option(CoapOption::Observe)
        .map(|v| v.iter().fold(0u32, |a, b| (a << 8) | u32::from(*b)))
}

fn recv(dev: &UdpSocket) -> (Packet, std::net::SocketAddr) {
    let mut buf = [0u8; 1500];
    let (n, from) = dev
        .recv_from(&mut buf)
        .expect("a datagram from the gateway");
    (Packet::from_bytes(&buf[..n]).unwrap(), from)
}

fn notification(t: MessageType, mid: u16, token: &[u8], seq: u32, value: &str) -> Vec<u8> {
    let mut p = Packet::new();
    p.header.set_type(t);
    p.header.message_id = mid;
    p.header.code = MessageClass::Response(ResponseType::Content);
    p.set_token(token.to_vec());
    p.add_option(CoapOption::Observe, seq.to_be_bytes()[1..].to_vec());
    p.add_option(CoapOption::ContentFormat, vec![]);
    p.add_option(CoapOption::MaxAge, vec![30]);
    p.payload = value.as_bytes().to_vec();
    p.to_bytes().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_registration_notifications_and_deregistration() {
    let dev = UdpSocket::bind("127.0.0.1:0").unwrap();
    dev.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let port = dev.local_addr().unwrap().port();
    let cfg: CoapConfig = serde_yaml::from_str(&format!(
        "{{devices: [{{id: dev1, address: '127.0.0.1:{port}', resources: [{{path: s/temp, point: temp, read: observe}}]}}]}}"
    ))
    .unwrap();
    let metrics = Metrics::new();
    let (tx, mut rx) = bus(64, &metrics);
    let inbox = CommandRouter::new().register("c", &cfg.devices(), 4);
    let token = CancellationToken::new();
    let mut src = CoapSource::new(cfg, "c", &metrics);
    let stats = src.stats();
    let ctx = SourceContext::new(tx.for_source("c"), token.clone(), inbox);
    let task = tokio::spawn(async move { src.run(ctx).await });

    let dev = std::sync::Arc::new(dev);
    let d = dev.clone();
    let (reg, gw) = tokio::task::spawn_blocking(move || recv(&d)).await.unwrap();
    assert_eq!(reg.header.get_type(), MessageType::Confirmable);
    assert_eq!(reg.header.code, MessageClass::Request(RequestType::Get));
    assert_eq!(observe_of(&reg), Some(0), "registration carries Observe 0");
    let path: Vec<&[u8]> = reg
        .get_option(CoapOption::UriPath)
        .unwrap()
        .iter()
        .map(Vec::as_slice)
        .collect();
    assert_eq!(path, [b"s".as_slice(), b"temp".as_slice()]);
    let tok = reg.get_token().to_vec();
    assert!(!tok.is_empty());

    // Piggybacked 2.05 with Observe 10, then a CON notification 11, a stale 9, a NON 12.
    let mut ack = Packet::from_bytes(&notification(
        MessageType::Acknowledgement,
        reg.header.message_id,
        &tok,
        10,
        "20.0",
    ))
    .unwrap();
    ack.header.message_id = reg.header.message_id;
    dev.send_to(&ack.to_bytes().unwrap(), gw).unwrap();
    dev.send_to(
        &notification(MessageType::Confirmable, 0x7001, &tok, 11, "21.0"),
        gw,
    )
    .unwrap();
    let d = dev.clone();
    let (a, _) = tokio::task::spawn_blocking(move || recv(&d)).await.unwrap();
    assert_eq!(
        a.header.get_type(),
        MessageType::Acknowledgement,
        "a CON notification is acknowledged"
    );
    assert_eq!(a.header.message_id, 0x7001);
    assert_eq!(a.header.code, MessageClass::Empty);
    dev.send_to(
        &notification(MessageType::NonConfirmable, 0x7002, &tok, 9, "99.0"),
        gw,
    )
    .unwrap();
    dev.send_to(
        &notification(MessageType::NonConfirmable, 0x7003, &tok, 12, "22.0"),
        gw,
    )
    .unwrap();
    // A notification for a token nobody observes is rejected with a RST.
    dev.send_to(
        &notification(MessageType::Confirmable, 0x7004, b"zz", 1, "0"),
        gw,
    )
    .unwrap();
    let d = dev.clone();
    let (r, _) = tokio::task::spawn_blocking(move || recv(&d)).await.unwrap();
    assert_eq!(r.header.get_type(), MessageType::Reset);
    assert_eq!(r.header.message_id, 0x7004);

    let mut values = Vec::new();
    let end = tokio::time::Instant::now() + Duration::from_secs(5);
    while values.len() < 3 && tokio::time::Instant::now() < end {
        while let Some(b) = rx.try_recv() {
            values.extend(b.into_iter().map(|r| r.value));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        values,
        [Value::F64(20.0), Value::F64(21.0), Value::F64(22.0)],
        "the reordered notification (9 after 11) is dropped"
    );
    assert_eq!(stats.notifications.get(), 2);

    // Shutdown cancels the observation explicitly: GET, same token, Observe 1.
    token.cancel();
    task.await.unwrap().unwrap();
    let d = dev.clone();
    let (dereg, _) = tokio::task::spawn_blocking(move || recv(&d)).await.unwrap();
    assert_eq!(dereg.header.code, MessageClass::Request(RequestType::Get));
    assert_eq!(dereg.get_token(), tok.as_slice());
    assert_eq!(observe_of(&dereg), Some(1));
}
