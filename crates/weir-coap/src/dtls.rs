//! CoAP over DTLS 1.2 with pre-shared keys (`coaps://`, RFC 7252 §9.1.3.1 PreSharedKey mode).
//!
//! DTLS is webrtc-dtls, the backend of the `coap` crate's `dtls` feature. One UDP listener demuxes
//! datagrams by peer address (webrtc-util's connection listener; a new peer is only accepted with
//! a DTLS handshake record, RFC 6347 §4.1: content type 22, 13-byte record header); each session
//! then runs its own task:
//!
//! * the handshake runs in that task with `handshake_timeout_ms`, so a slow or hostile peer never
//!   holds up the others; a failed handshake (unknown identity, wrong key) is counted;
//! * the identity the client presented (`psk_identity` of the ClientKeyExchange, RFC 4279 §2) is
//!   read from the finished session and travels with every datagram to the server, which lets it
//!   write only the devices that identity lists (else 4.03 Forbidden);
//! * decrypted datagrams go to the server task through a bounded channel; its answers come back
//!   through a per-session channel and are encrypted by the session task;
//! * sessions idle for `SESSION_IDLE` end, and at most `MAX_SESSIONS` run at once.
//!
//! Cipher suites offered: TLS_PSK_WITH_AES_128_CCM_8 (mandatory for CoAP, RFC 7252 §9.1.3.1),
//! TLS_PSK_WITH_AES_128_GCM_SHA256 and TLS_PSK_WITH_AES_128_CCM. Keys are never logged.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use webrtc_dtls::cipher_suite::CipherSuiteId;
use webrtc_dtls::config::{Config, ExtendedMasterSecretType};
use webrtc_dtls::conn::DTLSConn;
use webrtc_util::conn::conn_udp_listener::ListenConfig;
use webrtc_util::conn::{Conn, Listener};
use weir_core::{CancellationToken, SourceError};

use crate::config::DtlsConfig;
use crate::server::{Inbound, Peer};
use crate::Stats;

/// A session with no datagram for this long is closed.
pub const SESSION_IDLE: Duration = Duration::from_secs(600);
/// Sessions (including handshakes in progress) at most; a new peer beyond this is dropped.
pub const MAX_SESSIONS: usize = 1024;

/// DTLS record content type `handshake` (RFC 6347 §4.1, RFC 5246 §6.2.1).
const CONTENT_TYPE_HANDSHAKE: u8 = 22;
const RECORD_HEADER_LEN: usize = 13;

/// The DTLS configuration for `cfg`'s identities.
fn dtls_config(cfg: &DtlsConfig) -> Result<Config, String> {
    let mut keys: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    for id in &cfg.identities {
        keys.insert(id.identity.as_bytes().to_vec(), id.key_bytes()?);
    }
    Ok(Config {
        psk: Some(Arc::new(move |identity: &[u8]| {
            keys.get(identity)
                .cloned()
                .ok_or_else(|| webrtc_dtls::Error::Other("unknown PSK identity".into()))
        })),
        psk_identity_hint: Some(b"weir".to_vec()),
        cipher_suites: vec![
            CipherSuiteId::Tls_Psk_With_Aes_128_Ccm_8,
            CipherSuiteId::Tls_Psk_With_Aes_128_Gcm_Sha256,
            CipherSuiteId::Tls_Psk_With_Aes_128_Ccm,
        ],
        extended_master_secret: ExtendedMasterSecretType::Request,
        ..Default::default()
    })
}

/// Listen on `cfg.listen` until `shutdown`; decrypted datagrams go to `tx`.
pub async fn serve(
    cfg: DtlsConfig,
    source: Arc<str>,
    stats: Arc<Stats>,
    tx: mpsc::Sender<Inbound>,
    shutdown: CancellationToken,
) -> Result<(), SourceError> {
    let config = dtls_config(&cfg).map_err(SourceError::Other)?;
    let mut lc = ListenConfig {
        accept_filter: Some(Box::new(|packet: &[u8]| {
            let ok = packet.len() >= RECORD_HEADER_LEN && packet[0] == CONTENT_TYPE_HANDSHAKE;
            Box::pin(async move { ok })
        })),
        ..Default::default()
    };
    let listener = lc.listen(cfg.listen).await.map_err(|e| {
        SourceError::Other(format!(
            "coap: cannot listen for DTLS on udp {}: {e}",
            cfg.listen
        ))
    })?;
    tracing::info!(source = %source, addr = %cfg.listen, identities = cfg.identities.len(), "CoAP DTLS-PSK server listening");
    let sessions = Arc::new(AtomicUsize::new(0));
    let timeout = Duration::from_millis(cfg.handshake_timeout_ms);
    loop {
        let (conn, addr) = tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = listener.close().await;
                return Ok(());
            }
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    let _ = listener.close().await;
                    return Err(SourceError::Other(format!("coap: DTLS listener failed: {e}")));
                }
            },
        };
        if sessions.load(Ordering::Relaxed) >= MAX_SESSIONS {
            stats.dtls_handshake_failures.inc();
            let _ = conn.close().await;
            continue;
        }
        sessions.fetch_add(1, Ordering::Relaxed);
        let task = Session {
            conn,
            addr,
            config: config.clone(),
            timeout,
            source: source.clone(),
            stats: stats.clone(),
            tx: tx.clone(),
            shutdown: shutdown.clone(),
        };
        let count = sessions.clone();
        tokio::spawn(async move {
            task.run().await;
            count.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

struct Session {
    conn: Arc<dyn Conn + Send + Sync>,
    addr: SocketAddr,
    config: Config,
    timeout: Duration,
    source: Arc<str>,
    stats: Arc<Stats>,
    tx: mpsc::Sender<Inbound>,
    shutdown: CancellationToken,
}

impl Session {
    async fn run(self) {
        let Session {
            conn,
            addr,
            config,
            timeout,
            source,
            stats,
            tx,
            shutdown,
        } = self;
        let handshake =
            tokio::time::timeout(timeout, DTLSConn::new(conn.clone(), config, false, None));
        let dtls = tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = conn.close().await;
                return;
            }
            r = handshake => match r {
                Ok(Ok(d)) => d,
                Ok(Err(e)) => {
                    stats.dtls_handshake_failures.inc();
                    tracing::warn!(source = %source, peer = %addr, "DTLS handshake failed: {e}");
                    let _ = conn.close().await;
                    return;
                }
                Err(_) => {
                    stats.dtls_handshake_failures.inc();
                    tracing::warn!(source = %source, peer = %addr, "DTLS handshake timed out");
                    let _ = conn.close().await;
                    return;
                }
            },
        };
        let identity =
            String::from_utf8_lossy(&dtls.connection_state().await.identity_hint).into_owned();
        stats.dtls_sessions.inc();
        tracing::debug!(source = %source, peer = %addr, %identity, "DTLS session established");
        let peer = Peer {
            addr,
            identity: Some(Arc::from(identity.as_str())),
        };
        let (reply_tx, mut reply_rx) = mpsc::channel::<Vec<u8>>(32);
        let mut buf = vec![0u8; 65_535];
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(SESSION_IDLE) => break,
                r = dtls.read(&mut buf, None) => match r {
                    Ok(n) => {
                        let m = Inbound { data: buf[..n].to_vec(), peer: peer.clone(), reply: reply_tx.clone() };
                        if tx.send(m).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(source = %source, peer = %addr, "DTLS session ended: {e}");
                        break;
                    }
                },
                Some(b) = reply_rx.recv() => {
                    if let Err(e) = dtls.write(&b, None).await {
                        tracing::debug!(source = %source, peer = %addr, "DTLS write failed: {e}");
                        break;
                    }
                }
            }
        }
        let _ = dtls.close().await;
    }
}
