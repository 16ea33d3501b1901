//! Service identity tokens: HS256 JWTs with `iss` = calling service, `aud` = destination,
//! a short `exp` and a `jti`. Outbound, one token per destination is cached and re-signed
//! only near expiry (no signing per request). Inbound, a token is verified against every
//! configured secret (the first signs, all verify: key rotation) with a small leeway.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Clock skew tolerated when checking `exp` and `iat`.
const LEEWAY_SECS: u64 = 5;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    aud: String,
    #[serde(default)]
    iat: u64,
    exp: u64,
    // Optional on the way in: a token minted by another implementation need not carry one.
    #[serde(default)]
    jti: String,
}

/// Why an inbound token was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// No `x-mesh-token` header.
    #[error("no service token")]
    Missing,
    /// Bad signature, expired, wrong audience or malformed.
    #[error("invalid service token: {0}")]
    Invalid(String),
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Signs and verifies with the configured secrets.
pub struct Keys {
    signing: EncodingKey,
    verifying: Vec<DecodingKey>,
    ttl: Duration,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("secrets", &self.verifying.len())
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl Keys {
    /// Keys from the secrets (at least one: the config guarantees it).
    pub fn new(secrets: &[crate::config::Secret], ttl: Duration) -> Option<Keys> {
        let first = secrets.first()?;
        let verifying = secrets
            .iter()
            .map(|s| DecodingKey::from_secret(s.expose().as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .ok()?;
        Some(Keys {
            signing: EncodingKey::from_secret(first.expose().as_bytes()).ok()?,
            verifying,
            ttl,
        })
    }

    /// A fresh token from `caller` to `audience`.
    pub fn sign(&self, caller: &str, audience: &str) -> Option<(HeaderValue, u64)> {
        let iat = unix_now();
        let exp = iat + self.ttl.as_secs().max(1);
        let claims = Claims {
            iss: caller.to_owned(),
            aud: audience.to_owned(),
            iat,
            exp,
            jti: format!("{:016x}", fastrand::u64(..)),
        };
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.signing).ok()?;
        let mut value = HeaderValue::from_str(&token).ok()?;
        value.set_sensitive(true);
        Some((value, exp))
    }

    /// Verifies a token addressed to `audience`; returns the calling service.
    pub fn verify(
        &self,
        token: Option<&HeaderValue>,
        audience: &str,
    ) -> Result<String, TokenError> {
        let token = token
            .and_then(|v| v.to_str().ok())
            .ok_or(TokenError::Missing)?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "aud", "iss"]);
        let mut last = String::from("no key");
        for key in &self.verifying {
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) => return Ok(data.claims.iss),
                Err(e) => last = e.to_string(),
            }
        }
        Err(TokenError::Invalid(last))
    }
}

/// One destination's cached outbound token.
#[derive(Default)]
pub struct TokenCache {
    current: ArcSwapOption<(HeaderValue, u64)>,
}

impl TokenCache {
    /// The cached token, re-signed when less than a fifth of its lifetime is left.
    pub fn get(&self, keys: &Keys, caller: &str, audience: &str) -> Option<HeaderValue> {
        let refresh_margin = (keys.ttl.as_secs() / 5).max(1);
        if let Some(cached) = self.current.load().as_ref() {
            if cached.1 > unix_now() + refresh_margin {
                return Some(cached.0.clone());
            }
        }
        let fresh = keys.sign(caller, audience)?;
        let value = fresh.0.clone();
        self.current.store(Some(Arc::new(fresh)));
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn keys(secrets: &[&str]) -> Keys {
        let s: Vec<Secret> = secrets.iter().map(|s| Secret::from(*s)).collect();
        Keys::new(&s, Duration::from_secs(60)).unwrap()
    }

    #[test]
    fn a_signed_token_verifies_for_its_audience_only() {
        let k = keys(&["s3cret"]);
        let (token, _) = k.sign("orders", "inventory").unwrap();
        assert_eq!(k.verify(Some(&token), "inventory").unwrap(), "orders");
        assert!(matches!(
            k.verify(Some(&token), "payments"),
            Err(TokenError::Invalid(_))
        ));
        assert!(matches!(
            k.verify(None, "inventory"),
            Err(TokenError::Missing)
        ));
    }

    #[test]
    fn rotation_verifies_with_any_listed_secret() {
        let old = keys(&["old"]);
        let (token, _) = old.sign("orders", "inventory").unwrap();
        let rotated = keys(&["new", "old"]);
        assert_eq!(rotated.verify(Some(&token), "inventory").unwrap(), "orders");
        let forged = keys(&["attacker"]).sign("orders", "inventory").unwrap().0;
        assert!(rotated.verify(Some(&forged), "inventory").is_err());
    }

    #[test]
    fn the_cache_reuses_a_token_until_near_expiry() {
        let k = keys(&["s"]);
        let cache = TokenCache::default();
        let a = cache.get(&k, "orders", "inventory").unwrap();
        let b = cache.get(&k, "orders", "inventory").unwrap();
        assert_eq!(a, b);
        assert!(a.is_sensitive());
    }
}
