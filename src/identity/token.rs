//! Service identity tokens: HS256 JWTs with `iss` = calling service, `aud` = destination,
//! a short `exp` and a `jti`. Outbound, one token per destination is cached and re-signed
//! only near expiry (no signing per request). Inbound, a token is verified against every
//! configured secret (the first signs, all verify: key rotation) with a small leeway, and
//! must carry `iss`, `aud`, `iat` and `exp`: issued no later than the leeway from now, and
//! living no longer than this meshlet's `auth.token.ttl` plus the leeway (a holder of the
//! secret cannot mint a token that outlives a rotation).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use jsonwebtoken::errors::{Error as JwtError, ErrorKind};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Clock skew tolerated when checking `exp` and `iat`, and a token's lifetime over the ttl.
const LEEWAY_SECS: u64 = 5;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    aud: String,
    // Required: without it a token's lifetime cannot be bounded.
    iat: u64,
    exp: u64,
    // Optional on the way in: a token minted by another implementation need not carry one.
    #[serde(default)]
    jti: String,
}

/// Why an inbound token was refused. Logged (at debug), never answered: the 401 body
/// does not tell a forger which check failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// No `x-mesh-token` header.
    #[error("no service token")]
    Missing,
    /// Bad signature, expired, wrong audience, a required claim missing, or malformed.
    #[error("invalid service token: {0}")]
    Invalid(#[source] JwtError),
    /// `iat` more than the leeway ahead of this meshlet's clock.
    #[error("service token issued {ahead} s in the future")]
    IssuedInTheFuture {
        /// Seconds between now and `iat`.
        ahead: u64,
    },
    /// `exp` before `iat`, or `exp - iat` over `auth.token.ttl` plus the leeway.
    #[error("service token lifetime (exp - iat) of {lifetime} s is over the ttl of {ttl} s + {LEEWAY_SECS} s")]
    LifetimeTooLong {
        /// `exp - iat`, seconds (negative: `exp` before `iat`).
        lifetime: i128,
        /// This meshlet's `auth.token.ttl`, seconds.
        ttl: u64,
    },
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

    /// The lifetime of a signed token (`exp - iat`), seconds.
    fn ttl_secs(&self) -> u64 {
        self.ttl.as_secs().max(1)
    }

    /// A fresh token from `caller` to `audience`.
    pub fn sign(&self, caller: &str, audience: &str) -> Option<(HeaderValue, u64)> {
        let iat = unix_now();
        let exp = iat + self.ttl_secs();
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

    /// Verifies a token addressed to `audience`; returns the calling service (`iss`).
    pub fn verify(
        &self,
        token: Option<&HeaderValue>,
        audience: &str,
    ) -> Result<String, TokenError> {
        let token = token.ok_or(TokenError::Missing)?;
        let token = token
            .to_str()
            .map_err(|_| TokenError::Invalid(ErrorKind::InvalidToken.into()))?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.set_audience(&[audience]);
        // `iat` is required too: `Claims` has no default for it.
        validation.set_required_spec_claims(&["exp", "aud", "iss"]);
        let mut last = JwtError::from(ErrorKind::InvalidSignature);
        for key in &self.verifying {
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) => {
                    // The signature is good: no other key can change the verdict.
                    self.check_times(&data.claims, unix_now())?;
                    return Ok(data.claims.iss);
                }
                Err(e) => last = e,
            }
        }
        Err(TokenError::Invalid(last))
    }

    /// The checks jsonwebtoken does not make: `iat` not ahead of `now` by more than the
    /// leeway, and a lifetime (`exp - iat`) within this meshlet's ttl plus the leeway.
    fn check_times(&self, claims: &Claims, now: u64) -> Result<(), TokenError> {
        if claims.iat > now.saturating_add(LEEWAY_SECS) {
            return Err(TokenError::IssuedInTheFuture {
                ahead: claims.iat - now,
            });
        }
        let ttl = self.ttl_secs();
        let lifetime = i128::from(claims.exp) - i128::from(claims.iat);
        if lifetime < 0 || lifetime > i128::from(ttl) + i128::from(LEEWAY_SECS) {
            return Err(TokenError::LifetimeTooLong { lifetime, ttl });
        }
        Ok(())
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

    /// A token signed with `secret` carrying exactly `claims`.
    fn minted(secret: &str, claims: serde_json::Value) -> HeaderValue {
        let key = EncodingKey::from_secret(secret.as_bytes()).unwrap();
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap();
        HeaderValue::from_str(&token).unwrap()
    }

    #[test]
    fn iat_is_required_and_bounds_the_token() {
        let k = keys(&["s3cret"]);
        let now = unix_now();
        let with = |iat: Option<u64>, exp: u64| {
            let mut c = serde_json::json!({"iss": "orders", "aud": "inventory", "exp": exp});
            if let Some(iat) = iat {
                c["iat"] = iat.into();
            }
            k.verify(Some(&minted("s3cret", c)), "inventory")
        };
        assert_eq!(with(Some(now), now + 60).unwrap(), "orders");
        assert_eq!(with(Some(now + 5), now + 65).unwrap(), "orders", "skew");
        assert_eq!(
            with(Some(now - 2), now + 63).unwrap(),
            "orders",
            "ttl + 5 s"
        );
        assert!(matches!(with(None, now + 60), Err(TokenError::Invalid(_))));
        assert!(matches!(
            with(Some(now + 3600), now + 3660),
            Err(TokenError::IssuedInTheFuture { .. })
        ));
        let ten_years = 10 * 365 * 24 * 3600;
        assert!(matches!(
            with(Some(now), now + ten_years),
            Err(TokenError::LifetimeTooLong { ttl: 60, .. })
        ));
        assert!(matches!(
            with(Some(now - 10), now + 56),
            Err(TokenError::LifetimeTooLong { lifetime: 66, .. })
        ));
        assert!(matches!(
            with(Some(now + 2), now + 1),
            Err(TokenError::LifetimeTooLong { lifetime: -1, .. })
        ));
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
