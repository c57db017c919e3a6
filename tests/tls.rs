//! mTLS against a mosquitto TLS listener with `require_certificate true`, using a CA and
//! certificates made here with openssl.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

fn openssl(dir: &Path, args: &[&str]) {
    let st = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&st.stderr)
    );
}

/// CA `name`-ca.pem/key and a certificate `leaf` signed by it (SAN IP:127.0.0.1).
fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name} test CA"),
            "-keyout",
            &format!("{name}-ca.key"),
            "-out",
            &format!("{name}-ca.pem"),
        ],
    );
}

fn make_leaf(dir: &Path, ca: &str, leaf: &str, cn: &str) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            &format!("{leaf}.key"),
            "-out",
            &format!("{leaf}.csr"),
        ],
    );
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{leaf}.csr"),
            "-CA",
            &format!("{ca}-ca.pem"),
            "-CAkey",
            &format!("{ca}-ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            &format!("{leaf}.pem"),
        ],
    );
}

#[test]
fn mtls_delivers_and_a_wrong_ca_is_a_clear_error() {
    let pki = tempfile::tempdir().unwrap();
    let p = pki.path();
    make_ca(p, "good");
    make_ca(p, "other");
    make_leaf(p, "good", "server", "127.0.0.1");
    make_leaf(p, "good", "client", "weir-test");
    make_leaf(p, "other", "rogue", "rogue");
    let tls_port = free_port();
    let extra = format!(
        "per_listener_settings true\nlistener {tls_port} 127.0.0.1\nallow_anonymous true\n\
cafile {0}/good-ca.pem\ncertfile {0}/server.pem\nkeyfile {0}/server.key\n\
require_certificate true\nuse_identity_as_username true\n",
        p.display()
    );
    let broker = Mosquitto::start_with(&extra, false);
    let sub = Subscriber::connect(broker.port, "t/#");

    let dir = tempfile::tempdir().unwrap();
    let tls = format!(
        "  tls:\n    ca_file: {0}/good-ca.pem\n    cert_file: {0}/client.pem\n    key_file: {0}/client.key\n",
        p.display()
    );
    let cfg = config(
        tls_port,
        "      readings_per_s: 500\n      total_readings: 200\n",
        &tls,
        "",
    );
    let _gw = Gateway::start(dir.path(), &cfg);
    wait_until("200 readings over mTLS", Duration::from_secs(30), || {
        seqs_by_device(&sub.snapshot(), "t")
            .values()
            .map(Vec::len)
            .sum::<usize>()
            >= 200
    });

    // A CA that did not sign the broker's certificate: a clear error, and the daemon keeps trying.
    let dir2 = tempfile::tempdir().unwrap();
    let wrong = tls.replace("good-ca.pem", "other-ca.pem");
    let mut gw2 = Gateway::start(
        dir2.path(),
        &config(tls_port, "", &wrong, "").replace("id: test", "id: test2"),
    );
    wait_until("the TLS error in the log", Duration::from_secs(20), || {
        gw2.log().contains("UnknownIssuer")
    });
    let log = gw2.log();
    assert!(log.contains("TLS") && log.contains("127.0.0.1"), "{log}");
    assert!(gw2.is_running());

    // A client certificate the broker does not trust is refused by the broker.
    let dir3 = tempfile::tempdir().unwrap();
    let rogue = tls
        .replace("client.pem", "rogue.pem")
        .replace("client.key", "rogue.key");
    let rogue_sub = Subscriber::connect(broker.port, "rogue/#");
    let mut gw3 = Gateway::start(
        dir3.path(),
        &config(
            tls_port,
            "      readings_per_s: 100
",
            &rogue,
            "",
        )
        .replace("id: test", "id: test3")
        .replace("topic_prefix: t", "topic_prefix: rogue"),
    );
    wait_until(
        "a refused connection in the log",
        Duration::from_secs(20),
        || gw3.log().contains("mqtt:"),
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(gw3.is_running());
    assert_eq!(
        rogue_sub.count(|_| true),
        0,
        "nothing from a client the broker does not trust"
    );
    assert!(gw3.cli(&["buffer", "stats"]).1.contains("\"rows\""));
}

#[test]
fn garbage_tls_files_fail_check_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "not a certificate").unwrap();
    let cfg = dir.path().join("gw.yaml");
    std::fs::write(
        &cfg,
        format!(
            "gateway:\n  id: g\n  state_dir: {}\nmqtt:\n  tls:\n    ca_file: {}\n",
            dir.path().display(),
            ca.display()
        ),
    )
    .unwrap();
    let out = weir_cmd().args(["check", "-c"]).arg(&cfg).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains(":5: mqtt.tls: mqtt.tls.ca_file") && err.contains("ca.pem"),
        "{err}"
    );
}
