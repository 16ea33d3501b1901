//! TLS toward upstreams with rustls: `https://` egress destinations are verified against
//! the webpki roots (plus the `tls.ca` bundle when one is configured), with SNI, speaking
//! HTTP/1.1 over ALPN.

use std::sync::{Arc, OnceLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Installs the process-wide crypto provider (ring) once; rustls and the Redis client's
/// `rediss://` both need one.
pub fn install_crypto_provider() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        // Fails only when another provider is installed already: then that one is used.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Where and how to open TLS toward one endpoint.
#[derive(Clone)]
pub struct TlsTarget {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for TlsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTarget")
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// Why TLS settings could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The host is not a valid SNI name or IP.
    #[error("`{0}` is not a valid TLS server name")]
    ServerName(String),
    /// A PEM file could not be read.
    #[error("{path}: {message}")]
    Pem {
        /// File.
        path: String,
        /// What went wrong.
        message: String,
    },
}

impl TlsTarget {
    /// TLS toward `host`, trusting the webpki roots and the certificates in `extra_ca`.
    pub fn egress(host: &str, extra_ca: Option<&str>) -> Result<TlsTarget, TlsError> {
        install_crypto_provider();
        let server_name = ServerName::try_from(host.to_owned())
            .map_err(|_| TlsError::ServerName(host.to_owned()))?;
        let config = match extra_ca {
            None => default_egress_config(),
            Some(path) => Arc::new(egress_config(path)?),
        };
        Ok(TlsTarget {
            connector: TlsConnector::from(config),
            server_name,
        })
    }

    /// Runs the TLS handshake over `stream`.
    pub async fn connect(&self, stream: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        self.connector
            .connect(self.server_name.clone(), stream)
            .await
    }
}

/// The webpki roots alone: built once per process.
fn default_egress_config() -> Arc<ClientConfig> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| Arc::new(client_config(webpki_store())))
        .clone()
}

fn webpki_store() -> RootCertStore {
    RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}

fn egress_config(extra_ca: &str) -> Result<ClientConfig, TlsError> {
    let mut roots = webpki_store();
    for cert in read_certs(extra_ca)? {
        roots.add(cert).map_err(|e| TlsError::Pem {
            path: extra_ca.to_owned(),
            message: e.to_string(),
        })?;
    }
    Ok(client_config(roots))
}

fn client_config(roots: RootCertStore) -> ClientConfig {
    let mut config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// Every certificate of a PEM file.
pub fn read_certs(path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            message: "no certificate found".to_owned(),
        });
    }
    Ok(certs)
}
