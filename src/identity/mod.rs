//! Identity on both sides of a call (docs/identity.md): who this meshlet is and how it
//! proves it, and what it believes about a caller. Request ids ([`request_id`]), W3C trace
//! context ([`trace`]), service identity tokens ([`token`]), mutual and egress TLS
//! ([`tls`]) with the peer's certificate identity ([`PeerIdentity`]), and the inbound
//! checks (token, audience, lifetime, certificate name, `allow_from`) before a request
//! reaches the app. It knows nothing of destinations: a destination stamps its own headers
//! with [`Identity::stamp_mesh`].

mod peer;
pub(crate) mod request_id;
pub mod tls;
pub(crate) mod token;
pub(crate) mod trace;

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::config::Config;
pub use peer::{PeerError, PeerIdentity};
use token::{Keys, TokenCache, TokenError};

/// The message of every `401 unauthenticated`: it never says which check failed (the
/// reason is logged at debug instead).
pub const UNAUTHENTICATED_MESSAGE: &str = "missing or invalid service token";

/// Why an inbound request was refused before it reached the app.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    /// Identity missing or invalid. The message is what the caller is told: always
    /// [`UNAUTHENTICATED_MESSAGE`].
    #[error("{0}")]
    Unauthenticated(String),
    /// A verified caller that `auth.inbound.allow_from` does not list, or (under `tls`) a
    /// token whose `iss` is not the service the client certificate names. Holds the caller.
    #[error("caller `{0}` is not allowed")]
    Forbidden(String),
}

impl Rejection {
    fn unauthenticated() -> Rejection {
        Rejection::Unauthenticated(UNAUTHENTICATED_MESSAGE.to_owned())
    }
}

/// `x-mesh-caller`: the calling service (trusted only when its token verified).
pub static X_MESH_CALLER: HeaderName = HeaderName::from_static("x-mesh-caller");
/// `x-mesh-token`: the service identity token; never reaches an app.
pub static X_MESH_TOKEN: HeaderName = HeaderName::from_static("x-mesh-token");

/// The identity settings of the running config (rebuilt with the routing table).
#[derive(Debug)]
pub struct Identity {
    service: String,
    caller_value: HeaderValue,
    keys: Option<Keys>,
    /// `tls:` is set: the inbound caller is the client certificate's service.
    mtls: bool,
    require: bool,
    allow_from: Vec<String>,
}

impl Identity {
    /// Identity settings from `config`.
    /// `mutual_tls`: whether the inbound listener was started with `tls:` (a setting that
    /// applies only after a restart, so a reloaded config never switches the inbound check
    /// to or away from the certificate while the listener serves as it started).
    pub fn from_config(config: &Config, mutual_tls: bool) -> Identity {
        let auth = config.auth.as_ref();
        let keys = auth
            .and_then(|a| a.token.as_ref())
            .and_then(|t| Keys::new(&t.secret.0, t.ttl.get()));
        let service = config.service.name.to_string();
        Identity {
            // Service names are `[A-Za-z0-9._-]`: always a valid header value.
            caller_value: HeaderValue::from_str(&service)
                .unwrap_or(HeaderValue::from_static("unknown")),
            service,
            keys,
            mtls: mutual_tls,
            require: auth.is_some_and(|a| a.inbound.require),
            allow_from: auth
                .map(|a| a.inbound.allow_from.iter().map(|s| s.to_string()).collect())
                .unwrap_or_default(),
        }
    }

    /// Outbound toward a mesh destination `audience`: names this meshlet as the caller and
    /// adds its token (cached in `cache`) when keys are configured.
    pub fn stamp_mesh(&self, headers: &mut HeaderMap, cache: &TokenCache, audience: &str) {
        headers.insert(X_MESH_CALLER.clone(), self.caller_value.clone());
        if let Some(keys) = &self.keys {
            if let Some(token) = cache.get(keys, &self.service, audience) {
                headers.insert(X_MESH_TOKEN.clone(), token);
            }
        }
    }

    /// Whether `tls:` is set: the inbound check then wants the connection's
    /// [`PeerIdentity`].
    pub fn mutual_tls(&self) -> bool {
        self.mtls
    }

    /// Inbound: verifies the token (when keys are configured), enforces `require`, the
    /// certificate's name (under `tls`, `peer`: the connection's [`PeerIdentity`]) and
    /// `allow_from`, strips the token, and sets `x-mesh-caller` only to a verified caller.
    ///
    /// Under `tls` the caller is the service the client certificate names: a verified token
    /// must have it as `iss`, and without keys (or without `require`) the certificate alone
    /// names the caller. Without `tls` the caller is the verified token's `iss`.
    pub fn check_inbound(
        &self,
        headers: &mut HeaderMap,
        peer: Option<&PeerIdentity>,
    ) -> Result<(), Rejection> {
        let token = headers.remove(&X_MESH_TOKEN);
        headers.remove(&X_MESH_CALLER);
        if self.mtls {
            let Some(peer) = peer else {
                tracing::debug!(
                    "inbound request refused: no service named by a client certificate"
                );
                return Err(Rejection::unauthenticated());
            };
            if let Some(keys) = &self.keys {
                match keys.verify(token.as_ref(), &self.service) {
                    Ok(iss) if iss == peer.service() => {}
                    Ok(iss) => {
                        tracing::debug!(
                            iss = %iss,
                            certificate = %peer.service(),
                            "inbound token refused: its iss is not the client certificate's service"
                        );
                        return Err(Rejection::Forbidden(peer.service().to_owned()));
                    }
                    Err(e) => self.token_refused(&e)?,
                }
            }
            self.allowed(peer.service())?;
            headers.insert(X_MESH_CALLER.clone(), peer.header().clone());
            return Ok(());
        }
        let Some(keys) = &self.keys else {
            return Ok(());
        };
        let caller = match keys.verify(token.as_ref(), &self.service) {
            Ok(caller) => caller,
            Err(e) => return self.token_refused(&e),
        };
        self.allowed(&caller)?;
        if let Ok(v) = HeaderValue::from_str(&caller) {
            headers.insert(X_MESH_CALLER.clone(), v);
        }
        Ok(())
    }

    /// A token that did not verify: `401` with `require` (the reason logged, never
    /// answered), else the request goes on as if it carried none.
    fn token_refused(&self, e: &TokenError) -> Result<(), Rejection> {
        if self.require {
            tracing::debug!(error = %e, "inbound request refused");
            return Err(Rejection::unauthenticated());
        }
        if !matches!(e, TokenError::Missing) {
            tracing::debug!(error = %e, "inbound token refused; request passed without it");
        }
        Ok(())
    }

    /// `allow_from` (empty: every caller).
    fn allowed(&self, caller: &str) -> Result<(), Rejection> {
        if self.allow_from.is_empty() || self.allow_from.iter().any(|a| a == caller) {
            Ok(())
        } else {
            Err(Rejection::Forbidden(caller.to_owned()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LoadedConfig;

    const SECRET: &str = "identity-unit-test-secret-0123456789abcdef";

    fn identity(yaml: &str) -> Identity {
        let text = format!("service: {{name: inventory}}\n{yaml}");
        let loaded = LoadedConfig::from_text(&text, "test.yaml").unwrap();
        let tls = loaded.config.tls.is_some();
        Identity::from_config(&loaded.config, tls)
    }

    fn peer(service: &str) -> PeerIdentity {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![service.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        PeerIdentity::from_der(cert.der()).unwrap()
    }

    fn headers(token: Option<&HeaderValue>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(&X_MESH_CALLER, HeaderValue::from_static("spoofed"));
        if let Some(t) = token {
            h.insert(&X_MESH_TOKEN, t.clone());
        }
        h
    }

    fn signed_by(iss: &str) -> HeaderValue {
        let s = [crate::config::Secret::from(SECRET)];
        let keys = Keys::new(&s, std::time::Duration::from_secs(60)).unwrap();
        keys.sign(iss, "inventory").unwrap().0
    }

    const TLS: &str = "tls: {cert: c.pem, key: k.pem, ca: ca.pem}\n";

    #[test]
    fn under_tls_the_certificate_names_the_caller_and_the_token_must_agree() {
        let auth = format!(
            "auth:\n  token: {{secret: [\"{SECRET}\"]}}\n  inbound: {{require: true, allow_from: [orders]}}\n"
        );
        let id = identity(&format!("{TLS}{auth}"));
        let (orders, game) = (peer("orders"), peer("game"));

        let mut h = headers(Some(&signed_by("orders")));
        id.check_inbound(&mut h, Some(&orders)).unwrap();
        assert_eq!(h[&X_MESH_CALLER], "orders");
        assert!(h.get(&X_MESH_TOKEN).is_none());

        let mut h = headers(Some(&signed_by("orders")));
        let refused = id.check_inbound(&mut h, Some(&game));
        assert!(matches!(refused, Err(Rejection::Forbidden(c)) if c == "game"));

        let refused = id.check_inbound(&mut headers(None), Some(&orders));
        assert!(
            matches!(&refused, Err(Rejection::Unauthenticated(m)) if m == UNAUTHENTICATED_MESSAGE)
        );
        let refused = id.check_inbound(&mut headers(Some(&signed_by("orders"))), None);
        assert!(matches!(refused, Err(Rejection::Unauthenticated(_))));
    }

    #[test]
    fn under_tls_without_keys_the_certificate_alone_is_the_caller() {
        let id = identity(&format!(
            "{TLS}auth:\n  inbound: {{allow_from: [orders]}}\n"
        ));
        let mut h = headers(None);
        id.check_inbound(&mut h, Some(&peer("orders"))).unwrap();
        assert_eq!(h[&X_MESH_CALLER], "orders");
        let refused = id.check_inbound(&mut headers(None), Some(&peer("game")));
        assert!(matches!(refused, Err(Rejection::Forbidden(c)) if c == "game"));
    }

    #[test]
    fn without_tls_the_token_names_the_caller_and_a_401_never_says_why() {
        let id = identity(&format!(
            "auth:\n  token: {{secret: [\"{SECRET}\"]}}\n  inbound: {{require: true}}\n"
        ));
        let mut h = headers(Some(&signed_by("orders")));
        id.check_inbound(&mut h, None).unwrap();
        assert_eq!(h[&X_MESH_CALLER], "orders");
        let forged = HeaderValue::from_static("a.b.c");
        for token in [None, Some(&forged)] {
            let refused = id.check_inbound(&mut headers(token), None);
            assert!(
                matches!(&refused, Err(Rejection::Unauthenticated(m)) if m == UNAUTHENTICATED_MESSAGE),
                "{refused:?}"
            );
        }
        let open = identity("");
        let mut h = headers(Some(&forged));
        open.check_inbound(&mut h, None).unwrap();
        assert!(h.get(&X_MESH_CALLER).is_none() && h.get(&X_MESH_TOKEN).is_none());
    }
}
