//! Identity on both sides of a call (docs/identity.md): who this meshlet is and how it
//! proves it, and what it believes about a caller. Request ids ([`request_id`]), W3C trace
//! context ([`trace`]), service identity tokens ([`token`]), mutual and egress TLS
//! ([`tls`]), and the inbound checks (token, audience, `allow_from`) before a request
//! reaches the app. It knows nothing of destinations: a destination stamps its own headers
//! with [`Identity::stamp_mesh`].

pub(crate) mod request_id;
pub mod tls;
pub(crate) mod token;
pub(crate) mod trace;

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::config::Config;
use token::{Keys, TokenCache, TokenError};

/// Why an inbound request was refused before it reached the app.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    /// Identity missing or invalid (with `auth.inbound.require`).
    #[error("{0}")]
    Unauthenticated(String),
    /// A verified caller that `auth.inbound.allow_from` does not list.
    #[error("caller `{0}` is not allowed")]
    Forbidden(String),
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
    require: bool,
    allow_from: Vec<String>,
}

impl Identity {
    /// Identity settings from `config`.
    pub fn from_config(config: &Config) -> Identity {
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

    /// Inbound: verifies the token (when keys are configured), enforces `require` and
    /// `allow_from`, strips the token, and keeps `x-mesh-caller` only when it verified.
    pub fn check_inbound(&self, headers: &mut HeaderMap) -> Result<Option<String>, Rejection> {
        let token = headers.remove(&X_MESH_TOKEN);
        headers.remove(&X_MESH_CALLER);
        let Some(keys) = &self.keys else {
            return Ok(None);
        };
        let caller = match keys.verify(token.as_ref(), &self.service) {
            Ok(caller) => caller,
            Err(e) if self.require => return Err(Rejection::Unauthenticated(e.to_string())),
            Err(TokenError::Missing) => return Ok(None),
            Err(e) => {
                tracing::debug!(error = %e, "inbound token refused; request passed without a caller");
                return Ok(None);
            }
        };
        if !self.allow_from.is_empty() && !self.allow_from.contains(&caller) {
            return Err(Rejection::Forbidden(caller));
        }
        if let Ok(v) = HeaderValue::from_str(&caller) {
            headers.insert(X_MESH_CALLER.clone(), v);
        }
        Ok(Some(caller))
    }
}
