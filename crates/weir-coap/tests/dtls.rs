//! CoAP over DTLS-PSK against libcoap's DTLS clients (`coap-client-gnutls`, `coap-client-openssl`,
//! Debian `libcoap3-bin`): the adapter runs in-process, the clients are real processes talking
//! `coaps://` to it over loopback. Needs the `dtls` feature:
//! `cargo test -p weir-coap --features dtls --test dtls` (Cargo.toml declares the test with
//! `required-features`, so without the feature it is not built rather than passing empty).

use std::process::Command;
use std::time::{Duration, Instant};

use weir_coap::{CoapConfig, CoapSource};
use weir_core::{
    bus, BusReceiver, CancellationToken, CommandRouter, Metrics, Source, SourceBuilder,
    SourceContext,
};

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Run `prog args` for at most `secs`; (exit success, stdout+stderr).
fn run(prog: &str, args: &[&str], secs: u64) -> (bool, String) {
    let out = Command::new("timeout")
        .arg(secs.to_string())
        .arg(prog)
        .args(args)
        .output()
        .expect("coreutils timeout and libcoap3-bin");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Whether a UDP socket is bound to `port` on this host (Linux `/proc/net/udp`).
fn udp_port_bound(port: u16) -> bool {
    let want = format!(":{port:04X} ");
    ["/proc/net/udp", "/proc/net/udp6"].iter().any(|f| {
        std::fs::read_to_string(f).is_ok_and(|t| {
            t.lines().skip(1).any(|l| {
                l.split_whitespace()
                    .nth(1)
                    .is_some_and(|a| format!("{a} ").ends_with(&want))
            })
        })
    })
}

fn drain(rx: &mut BusReceiver) -> Vec<weir_core::Reading> {
    let mut v = Vec::new();
    while let Some(b) = rx.try_recv() {
        v.extend(b);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libcoap_gnutls_and_openssl_clients_post_over_dtls_psk() {
    let port = free_udp_port();
    let cfg: CoapConfig = serde_yaml::from_str(&format!(
        "{{dtls: {{listen: '127.0.0.1:{port}', handshake_timeout_ms: 3000, identities: [\
           {{identity: th1, key: secretkey, devices: ['lab/th1']}},\
           {{identity: th2, key_hex: '00112233445566778899', devices: ['lab/th2*']}}]}}, stats_interval_s: 1, \
           devices: [{{id: lab/th1}}, {{id: lab/th2}}]}}"
    ))
    .unwrap();
    assert_eq!(cfg.validate(), Vec::<(String, String)>::new());
    let metrics = Metrics::new();
    let (tx, mut rx) = bus(64, &metrics);
    let router = CommandRouter::new();
    let inbox = router.register("c", &cfg.devices(), 4);
    let token = CancellationToken::new();
    let mut src = CoapSource::new(cfg, "c", &metrics);
    let stats = src.stats();
    let ctx = SourceContext::new(tx.for_source("c"), token.clone(), inbox);
    let task = tokio::spawn(async move { src.run(ctx).await });
    // The DTLS listener is up once the kernel lists its port (looked up, not probed by binding it).
    let end = Instant::now() + Duration::from_secs(10);
    while !udp_port_bound(port) {
        assert!(
            Instant::now() < end,
            "the DTLS listener did not bind {port}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let uri = move |p: &str| format!("coaps://127.0.0.1:{port}/{p}");

    let (ok, out) = tokio::task::spawn_blocking(move || {
        run(
            "coap-client-gnutls",
            &[
                "-m",
                "post",
                "-u",
                "th1",
                "-k",
                "secretkey",
                "-e",
                "21.5",
                &uri("lab/th1/temp"),
            ],
            10,
        )
    })
    .await
    .unwrap();
    assert!(ok, "gnutls client: {out}");
    let uri = move |p: &str| format!("coaps://127.0.0.1:{port}/{p}");
    // The OpenSSL build of libcoap, JSON object with PUT.
    let (ok, out) = tokio::task::spawn_blocking(move || {
        run(
            "coap-client-openssl",
            &[
                "-m",
                "put",
                "-u",
                "th1",
                "-k",
                "secretkey",
                "-t",
                "json",
                "-e",
                r#"{"hum":40}"#,
                &uri("lab/th1"),
            ],
            10,
        )
    })
    .await
    .unwrap();
    assert!(ok, "openssl client: {out}");

    let end = Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    while got.len() < 2 && Instant::now() < end {
        got.extend(drain(&mut rx));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].device.as_str(), "lab/th1");
    assert_eq!(got[0].point.as_str(), "temp");
    assert_eq!(got[0].value, weir_core::Value::F64(21.5));
    assert_eq!(got[1].point.as_str(), "hum");
    assert_eq!(stats.dtls_sessions.get(), 2);

    // th1 may not write lab/th2: 4.03 Forbidden, nothing on the bus.
    let uri = move |p: &str| format!("coaps://127.0.0.1:{port}/{p}");
    let (_, out) = tokio::task::spawn_blocking(move || {
        run(
            "coap-client-gnutls",
            &[
                "-m",
                "post",
                "-u",
                "th1",
                "-k",
                "secretkey",
                "-e",
                "1",
                &uri("lab/th2/x"),
            ],
            10,
        )
    })
    .await
    .unwrap();
    assert!(out.contains("4.03"), "{out}");
    // A wrong key: the handshake fails, counted; nothing on the bus.
    let uri = move |p: &str| format!("coaps://127.0.0.1:{port}/{p}");
    let _ = tokio::task::spawn_blocking(move || {
        run(
            "coap-client-gnutls",
            &[
                "-m",
                "post",
                "-u",
                "th1",
                "-k",
                "wrongkey",
                "-e",
                "2",
                &uri("lab/th1/temp"),
            ],
            5,
        )
    })
    .await
    .unwrap();
    let end = Instant::now() + Duration::from_secs(5);
    while stats.dtls_handshake_failures.get() == 0 && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(stats.dtls_handshake_failures.get() >= 1);
    // A fence: a good post after them; once it is on the bus, nothing else came before it.
    let uri = move |p: &str| format!("coaps://127.0.0.1:{port}/{p}");
    let (ok, out) = tokio::task::spawn_blocking(move || {
        run(
            "coap-client-gnutls",
            &[
                "-m",
                "post",
                "-u",
                "th1",
                "-k",
                "secretkey",
                "-e",
                "3",
                &uri("lab/th1/fence"),
            ],
            10,
        )
    })
    .await
    .unwrap();
    assert!(ok, "gnutls client: {out}");
    let end = Instant::now() + Duration::from_secs(5);
    let mut after = Vec::new();
    while after.is_empty() && Instant::now() < end {
        after.extend(drain(&mut rx));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let points: Vec<&str> = after.iter().map(|r| r.point.as_str()).collect();
    assert_eq!(
        points,
        ["fence"],
        "nothing from a forbidden or failed session"
    );

    token.cancel();
    task.await.unwrap().unwrap();
}
