//! Identity on both sides of a call (docs/identity.md): request ids, W3C trace context, service
//! identity tokens, static auth headers toward a destination, and the inbound checks
//! (token, audience, `allow_from`) before a request reaches the app.

pub mod token;
pub mod trace;

use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};

use crate::config::Config;
use crate::proxy::destination::Destination;
use crate::proxy::error::ProxyError;
use token::{Keys, TokenError};

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

    /// Outbound: names the caller, adds its token toward mesh destinations (never toward
    /// `url:` egress), and sets the destination's static auth header.
    pub fn stamp_outbound(&self, headers: &mut HeaderMap, dest: &Destination) {
        headers.remove(&X_MESH_TOKEN);
        if dest.egress.is_some() {
            headers.remove(&X_MESH_CALLER);
        } else {
            headers.insert(X_MESH_CALLER.clone(), self.caller_value.clone());
            if let Some(keys) = &self.keys {
                if let Some(token) = dest.token.get(keys, &self.service, &dest.name) {
                    headers.insert(X_MESH_TOKEN.clone(), token);
                }
            }
        }
        if let Some((name, value)) = &dest.static_auth {
            // A caller's own Authorization toward a mesh destination is theirs to send.
            let callers_own = dest.egress.is_none()
                && name == AUTHORIZATION
                && headers.contains_key(AUTHORIZATION);
            if !callers_own {
                headers.insert(name.clone(), value.clone());
            }
        }
    }

    /// Inbound: verifies the token (when keys are configured), enforces `require` and
    /// `allow_from`, strips the token, and keeps `x-mesh-caller` only when it verified.
    pub fn check_inbound(&self, headers: &mut HeaderMap) -> Result<Option<String>, ProxyError> {
        let token = headers.remove(&X_MESH_TOKEN);
        headers.remove(&X_MESH_CALLER);
        let Some(keys) = &self.keys else {
            return Ok(None);
        };
        let caller = match keys.verify(token.as_ref(), &self.service) {
            Ok(caller) => caller,
            Err(e) if self.require => return Err(ProxyError::Unauthenticated(e.to_string())),
            Err(TokenError::Missing) => return Ok(None),
            Err(e) => {
                tracing::debug!(error = %e, "inbound token refused; request passed without a caller");
                return Ok(None);
            }
        };
        if !self.allow_from.is_empty() && !self.allow_from.contains(&caller) {
            return Err(ProxyError::Forbidden(caller));
        }
        if let Ok(v) = HeaderValue::from_str(&caller) {
            headers.insert(X_MESH_CALLER.clone(), v);
        }
        Ok(Some(caller))
    }
}
