//! Who a mutual-TLS peer is: the first DNS name in the subject alternative names of its
//! verified client certificate (docs/identity.md, "Mutual TLS between meshlets"). Read once
//! per connection, right after the handshake, and handed to each request of the connection
//! as a request extension ([`PeerIdentity`]); cloning it per request copies no string.

use std::sync::Arc;

use http::HeaderValue;
use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::config::ServiceName;

/// The service a verified client certificate names: its first DNS subject alternative name.
#[derive(Clone, Debug)]
pub struct PeerIdentity {
    service: Arc<str>,
    /// The same name as an `x-mesh-caller` value, made once per connection.
    header: HeaderValue,
}

/// Why a client certificate names no service.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The peer presented no certificate (the mesh listener requires one: not reached).
    #[error("no client certificate")]
    NoCertificate,
    /// The leaf certificate is not valid DER X.509 (rustls verified it, so: not reached).
    #[error("client certificate unreadable: {0}")]
    Unreadable(String),
    /// The leaf has no DNS subject alternative name.
    #[error("client certificate has no DNS subject alternative name")]
    NoDnsName,
    /// Its first DNS name is not a service name (a wildcard, say).
    #[error("client certificate names `{0}`, not a service name")]
    NotAServiceName(String),
}

impl PeerIdentity {
    /// The identity of a TLS peer from its certificate chain as rustls verified it (leaf
    /// first), e.g. `ServerConnection::peer_certificates()`.
    pub fn from_certificates(chain: Option<&[CertificateDer<'_>]>) -> Result<Self, PeerError> {
        let leaf = chain
            .and_then(|c| c.first())
            .ok_or(PeerError::NoCertificate)?;
        PeerIdentity::from_der(leaf.as_ref())
    }

    /// The identity named by one DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, PeerError> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| PeerError::Unreadable(e.to_string()))?;
        let names = cert
            .subject_alternative_name()
            .map_err(|e| PeerError::Unreadable(e.to_string()))?
            .ok_or(PeerError::NoDnsName)?;
        let first = names
            .value
            .general_names
            .iter()
            .find_map(|n| match n {
                GeneralName::DNSName(name) => Some(*name),
                _ => None,
            })
            .ok_or(PeerError::NoDnsName)?;
        let service =
            ServiceName::parse(first).map_err(|_| PeerError::NotAServiceName(first.to_owned()))?;
        let header = HeaderValue::from_str(service.as_str())
            .map_err(|_| PeerError::NotAServiceName(first.to_owned()))?;
        Ok(PeerIdentity {
            service: Arc::from(service.as_str()),
            header,
        })
    }

    /// The service the certificate names.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The service as an `x-mesh-caller` value.
    pub(crate) fn header(&self) -> &HeaderValue {
        &self.header
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(sans: Vec<rcgen::SanType>) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = sans;
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn dns(name: &str) -> rcgen::SanType {
        rcgen::SanType::DnsName(name.try_into().unwrap())
    }

    #[test]
    fn the_first_dns_name_is_the_service() {
        let ip = rcgen::SanType::IpAddress("10.0.0.7".parse().unwrap());
        let der = cert(vec![ip, dns("orders"), dns("orders.prod.svc")]);
        let peer = PeerIdentity::from_der(&der).unwrap();
        assert_eq!(peer.service(), "orders");
        assert_eq!(peer.header(), "orders");
        let chain = [CertificateDer::from(der)];
        let peer = PeerIdentity::from_certificates(Some(&chain)).unwrap();
        assert_eq!(peer.service(), "orders");
    }

    #[test]
    fn a_certificate_without_a_usable_dns_name_names_nobody() {
        let ip = rcgen::SanType::IpAddress("10.0.0.7".parse().unwrap());
        assert!(matches!(
            PeerIdentity::from_der(&cert(vec![ip])),
            Err(PeerError::NoDnsName)
        ));
        assert!(matches!(
            PeerIdentity::from_der(&cert(vec![])),
            Err(PeerError::NoDnsName)
        ));
        assert!(matches!(
            PeerIdentity::from_der(&cert(vec![dns("*.prod.svc")])),
            Err(PeerError::NotAServiceName(_))
        ));
        assert!(matches!(
            PeerIdentity::from_der(b"not a certificate"),
            Err(PeerError::Unreadable(_))
        ));
        assert!(matches!(
            PeerIdentity::from_certificates(None),
            Err(PeerError::NoCertificate)
        ));
    }
}
