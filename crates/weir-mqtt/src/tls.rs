//! TLS and mTLS client configuration (rustls with the ring provider).
//!
//! The broker's certificate is verified against the CA file only (no system roots: a gateway talks
//! to one known broker). With `cert_file` and `key_file`, the client authenticates with its
//! certificate (mTLS). Every error names the file and what is wrong with it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use weir_config::TlsSection;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("mqtt.tls.{key} {}: {message}", path.display())]
    File {
        key: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("mqtt.tls: {0}")]
    Config(String),
}

fn certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |message: String| TlsError::File {
        key,
        path: path.to_path_buf(),
        message,
    };
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| err(e.to_string()))?;
    let certs: Vec<_> = iter
        .collect::<Result<_, _>>()
        .map_err(|e| err(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

/// Install ring as the process-wide rustls provider (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Build the rustls client configuration for `tls`.
pub fn client_config(tls: &TlsSection) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for c in certs("ca_file", &tls.ca_file)? {
        roots.add(c).map_err(|e| TlsError::File {
            key: "ca_file",
            path: tls.ca_file.clone(),
            message: format!("unusable CA certificate: {e}"),
        })?;
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let chain = certs("cert_file", cert)?;
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::File {
                key: "key_file",
                path: key.clone(),
                message: format!("no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
            })?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| TlsError::Config(format!("client certificate and key: {e}")))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(TlsError::Config(
                "mTLS needs both `cert_file` and `key_file`".into(),
            ))
        }
    };
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_ca_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "hello").unwrap();
        let e = client_config(&TlsSection {
            ca_file: ca.clone(),
            cert_file: None,
            key_file: None,
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("mqtt.tls.ca_file") && e.contains("ca.pem"),
            "{e}"
        );
        let e = client_config(&TlsSection {
            ca_file: dir.path().join("missing.pem"),
            cert_file: None,
            key_file: None,
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("missing.pem"), "{e}");
    }
}
