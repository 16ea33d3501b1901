//! A mesh certificate authority for tests of mutual TLS: a CA and certificates naming one
//! service each, written to a temp dir, as `tls:` YAML.

/// A mesh CA and certificates for service names, written to a temp dir.
pub struct MeshCerts {
    dir: tempfile::TempDir,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl MeshCerts {
    pub fn new() -> MeshCerts {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        std::fs::write(dir.path().join("ca.crt"), ca.pem()).unwrap();
        MeshCerts {
            dir,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// `tls:` YAML for a meshlet whose certificate names `service`.
    pub fn tls_yaml(&self, service: &str) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![service.to_owned()])
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        let (crt, pem) = (
            self.dir.path().join(format!("{service}.crt")),
            self.dir.path().join(format!("{service}.key")),
        );
        std::fs::write(&crt, cert.pem()).unwrap();
        std::fs::write(&pem, key.serialize_pem()).unwrap();
        format!(
            "tls: {{cert: \"{}\", key: \"{}\", ca: \"{}\"}}\n",
            crt.display(),
            pem.display(),
            self.dir.path().join("ca.crt").display()
        )
    }
}
