//! A real pty pair from socat (`pty,raw` both ends, a null-modem cable): bytes written to one end
//! through [`SerialSettings::open`] arrive at the other, both ways. Natively the line settings
//! are applied; under qemu-user (no serial ioctls) the port is used as it is.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir_serial::{SerialSettings, SerialStream};

struct Socat(Child);

impl Drop for Socat {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn socat(a: &Path, b: &Path) -> Socat {
    let child = Command::new("socat")
        .arg(format!("pty,raw,echo=0,link={}", a.display()))
        .arg(format!("pty,raw,echo=0,link={}", b.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("socat must be installed (apt-get install socat)");
    let end = Instant::now() + Duration::from_secs(10);
    while !(a.exists() && b.exists()) {
        assert!(Instant::now() < end, "socat's ptys did not appear");
        std::thread::sleep(Duration::from_millis(20));
    }
    Socat(child)
}

#[tokio::test]
async fn bytes_cross_a_pty_pair_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("ttyA"), dir.path().join("ttyB"));
    let _socat = socat(&a, &b);
    let mut left = SerialSettings::new(&a, 115_200).open().unwrap();
    let mut right = SerialSettings::new(&b, 115_200).open().unwrap();
    eprintln!("line settings applied: {}", left.is_configured());
    cross(&mut left, &mut right, b"\x01\x03\x00\x10\x00\x02").await;
    cross(&mut right, &mut left, b"\x01\x03\x04\x12\x34\xab\xcd").await;
}

/// Write `msg` on `from`; it arrives whole on `to`.
async fn cross(from: &mut SerialStream, to: &mut SerialStream, msg: &[u8]) {
    from.write_all(msg).await.unwrap();
    from.flush().await.unwrap();
    let mut got = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(10), to.read_exact(&mut got))
        .await
        .expect("the bytes arrive")
        .unwrap();
    assert_eq!(got, msg);
}
