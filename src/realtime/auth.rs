//! Client identity at connect: the HS256 JWT from `?token=` or `Authorization: Bearer`,
//! verified before the upgrade. `sub` is the user id; an optional `rooms` claim lists the
//! rooms the client may join (exact names, or a prefix ending in `*`).

use http::header::AUTHORIZATION;
use http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::RealtimeAuth;

/// Why a connect was refused with 401.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No token where one is required.
    #[error("a token is required: pass ?token=JWT or Authorization: Bearer JWT")]
    Missing,
    /// The token did not verify (signature, expiry, shape).
    #[error("invalid token: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    /// `realtime.auth.secret` is empty (an unset `${ENV}`): no token can verify.
    #[error("realtime.auth.secret is empty; no token can be verified")]
    NoSecret,
}

/// Who a client is, once its token verified (or anonymous when tokens are optional).
#[derive(Clone, Debug, Default)]
pub struct Identity {
    /// `sub` of the token; `None` for an anonymous client.
    pub user: Option<String>,
    /// Rooms the client may join; `None` = any room.
    pub rooms: Option<RoomGrant>,
}

/// The `rooms` claim: exact room names, or prefixes written `prefix*`.
#[derive(Clone, Debug, Default)]
pub struct RoomGrant {
    exact: Vec<String>,
    prefixes: Vec<String>,
}

impl RoomGrant {
    fn new(claim: Vec<String>) -> Self {
        let mut grant = RoomGrant::default();
        for room in claim {
            match room.strip_suffix('*') {
                Some(prefix) => grant.prefixes.push(prefix.to_owned()),
                None => grant.exact.push(room),
            }
        }
        grant
    }

    /// Whether `room` is granted.
    pub fn allows(&self, room: &str) -> bool {
        self.exact.iter().any(|r| r == room) || self.prefixes.iter().any(|p| room.starts_with(p))
    }
}

impl Identity {
    /// Whether this client may join `room`.
    pub fn may_join(&self, room: &str) -> bool {
        self.rooms.as_ref().is_none_or(|g| g.allows(room))
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    rooms: Option<Vec<String>>,
}

/// Verifies client tokens with the configured secret.
pub struct Verifier {
    /// `None`: no `realtime.auth`; `Some(None)`: configured with an empty secret.
    key: Option<Option<DecodingKey>>,
    require: bool,
    validation: Validation,
}

impl Verifier {
    /// A verifier for `realtime.auth`; without that section every client is anonymous.
    pub fn new(auth: Option<&RealtimeAuth>) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 5;
        // Tokens from an app's login often carry an audience of their own; the hub is not
        // one of them and does not judge it.
        validation.validate_aud = false;
        Verifier {
            key: auth.map(|a| {
                let key = DecodingKey::from_secret(a.secret.expose().as_bytes()).ok();
                if key.is_none() {
                    tracing::error!("realtime.auth.secret is empty: every token will be refused");
                }
                key
            }),
            require: auth.is_some_and(|a| a.require),
            validation,
        }
    }

    /// The identity of a connect request. A token that is present is always checked, even
    /// where tokens are optional: a bad token is an error, never a silent downgrade.
    pub fn verify(&self, query: Option<&str>, headers: &HeaderMap) -> Result<Identity, AuthError> {
        let token = token_from_query(query).or_else(|| token_from_header(headers));
        let (Some(key), Some(token)) = (&self.key, token) else {
            return if self.require {
                Err(AuthError::Missing)
            } else {
                Ok(Identity::default())
            };
        };
        let key = key.as_ref().ok_or(AuthError::NoSecret)?;
        let data = jsonwebtoken::decode::<Claims>(token.as_bytes(), key, &self.validation)?;
        Ok(Identity {
            user: Some(data.claims.sub),
            rooms: data.claims.rooms.map(RoomGrant::new),
        })
    }
}

fn token_from_query(query: Option<&str>) -> Option<String> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == "token")
        .map(|(_, v)| percent_decode(v))
        .filter(|v| !v.is_empty())
}

fn token_from_header(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
        .filter(|t| !t.is_empty())
}

/// JWTs are base64url and dots, so they rarely need decoding; a client that encodes the
/// query anyway still works.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_matches_exact_names_and_prefixes() {
        let g = RoomGrant::new(vec!["lobby".into(), "orders:*".into()]);
        assert!(g.allows("lobby"));
        assert!(g.allows("orders:42"));
        assert!(!g.allows("lobby2"));
        assert!(!g.allows("admin"));
    }

    #[test]
    fn verifies_sub_and_rooms_and_ignores_an_audience() {
        let auth = RealtimeAuth {
            secret: crate::config::Secret::from("k"),
            require: true,
        };
        let v = Verifier::new(Some(&auth));
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            + 60;
        let claims = serde_json::json!({"sub": "alice", "exp": exp, "aud": "web", "rooms": ["a"]});
        let key = jsonwebtoken::EncodingKey::from_secret(b"k").expect("non-empty key");
        let token = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key)
            .expect("token signs");
        let id = v
            .verify(Some(&format!("token={token}")), &HeaderMap::new())
            .expect("valid token");
        assert_eq!(id.user.as_deref(), Some("alice"));
        assert!(id.may_join("a") && !id.may_join("b"));
        assert!(matches!(
            v.verify(None, &HeaderMap::new()),
            Err(AuthError::Missing)
        ));
        assert!(Verifier::new(None)
            .verify(None, &HeaderMap::new())
            .is_ok_and(|i| i.user.is_none()));
    }

    #[test]
    fn token_is_read_from_query_or_bearer_header() {
        assert_eq!(
            token_from_query(Some("a=1&token=x.y.z")),
            Some("x.y.z".into())
        );
        assert_eq!(token_from_query(Some("token=a%2Eb")), Some("a.b".into()));
        assert_eq!(token_from_query(Some("token=")), None);
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, "Bearer abc".parse().expect("valid header"));
        assert_eq!(token_from_header(&h), Some("abc".into()));
    }
}
