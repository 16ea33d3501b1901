//! TLS between meshlets and toward upstreams, with rustls. Mutual TLS ([`MeshTls`]): each
//! meshlet proves its identity with its certificate and checks the peer's against the mesh
//! CA. Egress (`https://` destinations): verified against the webpki roots (plus a
//! `services.X.ca` bundle when one is configured), with SNI, speaking HTTP/1.1 over ALPN.

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

/// Mutual TLS between meshlets (`tls: {cert, key, ca}`): the inbound listener requires a
/// client certificate from the mesh CA, and calls to mesh destinations present this
/// meshlet's certificate and verify the peer's against the same CA, under the destination's
/// service name (each meshlet's certificate names its `service.name`).
pub struct MeshTls {
    client: Arc<ClientConfig>,
    /// Terminates TLS on the inbound listener.
    pub acceptor: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for MeshTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MeshTls")
    }
}

impl MeshTls {
    /// Loads the certificate, key and CA files.
    pub fn load(cert: &str, key: &str, ca: &str) -> Result<MeshTls, TlsError> {
        use rustls::pki_types::PrivateKeyDer;
        install_crypto_provider();
        let pem_error = |path: &str, e: &dyn std::fmt::Display| TlsError::Pem {
            path: path.to_owned(),
            message: e.to_string(),
        };
        let chain = read_certs(cert)?;
        let private_key = || PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error(key, &e));
        let mut roots = RootCertStore::empty();
        for c in read_certs(ca)? {
            roots.add(c).map_err(|e| pem_error(ca, &e))?;
        }
        let roots = Arc::new(roots);
        let verifier = rustls::server::WebPkiClientVerifier::builder(roots.clone())
            .build()
            .map_err(|e| pem_error(ca, &e))?;
        let server = rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), private_key()?)
            .map_err(|e| pem_error(cert, &e))?;
        let client = ClientConfig::builder()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, private_key()?)
            .map_err(|e| pem_error(cert, &e))?;
        Ok(MeshTls {
            client: Arc::new(client),
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        })
    }

    /// TLS toward an endpoint of mesh destination `service`.
    pub fn target(&self, service: &str) -> Result<TlsTarget, TlsError> {
        let server_name = ServerName::try_from(service.to_owned())
            .map_err(|_| TlsError::ServerName(service.to_owned()))?;
        Ok(TlsTarget {
            connector: TlsConnector::from(self.client.clone()),
            server_name,
        })
    }
}
