//! The local endpoint: `GET /metrics` in the Prometheus text exposition format, and `GET /devices`,
//! the device registry as JSON (what `weir devices` prints).
//!
//! A deliberately tiny HTTP/1.1 responder (one request per connection, `Connection: close`) for a
//! scrape endpoint on loopback; it reads at most 8 KiB of request head and answers 404 for anything
//! else.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use weir_core::{CancellationToken, Metrics, Registry};

pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    registry: Registry,
    shutdown: CancellationToken,
) {
    loop {
        let (mut sock, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("metrics endpoint: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        let registry = registry.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let mut n = 0;
            let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                while n < buf.len() {
                    let k = sock.read(&mut buf[n..]).await?;
                    if k == 0 {
                        break;
                    }
                    n += k;
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
            if !matches!(read, Ok(Ok(()))) {
                return;
            }
            let head = String::from_utf8_lossy(&buf[..n]);
            let (status, ctype, body) = if head.starts_with("GET /metrics ") {
                (
                    "200 OK",
                    "text/plain; version=0.0.4",
                    metrics.render_prometheus(),
                )
            } else if head.starts_with("GET /devices ") {
                let doc = serde_json::json!({ "devices": registry.snapshot() });
                ("200 OK", "application/json", format!("{doc}\n"))
            } else {
                (
                    "404 Not Found",
                    "text/plain",
                    "only GET /metrics and GET /devices are served here\n".to_string(),
                )
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}
