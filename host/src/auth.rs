//! Token -> [`Identity`]. Pure: no I/O, unit-tested here.
//!
//! With a secret or public key, tokens are verified with the one configured algorithm (no
//! `alg` from the token is trusted, so `none` and HMAC/RSA confusion are refused). Without
//! either, the original's development mode decodes tokens without verification; the server
//! warns loudly at start and `/health` says `"auth": "insecure-dev"`.

use std::collections::HashSet;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::config::{Config, JwtAlgorithm};

/// Who a connection is, as its token says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Identity {
    /// `userId` claim, else `sub`. None for anonymous connections.
    pub user_id: Option<String>,
    /// `sessionId` claim, else `sid`.
    pub session_id: Option<String>,
    /// `roles` claim (strings only).
    pub roles: Vec<String>,
    /// Every claim of the token (handed to policy modules).
    pub claims: Value,
    /// `exp` (seconds since the epoch), if the token has one.
    pub expires_at: Option<i64>,
}

impl Identity {
    /// An anonymous connection.
    pub fn anonymous() -> Identity {
        Identity {
            claims: Value::Object(Map::new()),
            ..Identity::default()
        }
    }

    /// Whether the connection carries a user id.
    pub fn is_authenticated(&self) -> bool {
        self.user_id.is_some()
    }
}

/// Why a token was refused. The `Display` text is what the client sees in `connect_error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token and anonymous access is off.
    #[error("Authentication required")]
    Required,
    /// Bad signature, malformed, expired, not yet valid, wrong issuer/audience.
    #[error("Invalid token")]
    Invalid,
}

/// Verifies tokens according to the configuration.
#[derive(Clone)]
pub struct Authenticator {
    mode: Mode,
    allow_anonymous: bool,
}

#[derive(Clone)]
enum Mode {
    Verify {
        key: DecodingKey,
        validation: Box<Validation>,
    },
    InsecureDev {
        leeway: u64,
    },
}

/// A configured key that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("REALTIME_JWT_PUBLIC_KEY: {0}")]
pub struct KeyError(String);

impl Authenticator {
    /// Builds the verifier; fails when the configured public key is not valid PEM.
    pub fn from_config(config: &Config) -> Result<Authenticator, KeyError> {
        let mode = if config.insecure_dev_auth() {
            Mode::InsecureDev {
                leeway: config.jwt_leeway_seconds,
            }
        } else {
            let (alg, key) = key_for(config)?;
            let mut validation = Validation::new(alg);
            validation.leeway = config.jwt_leeway_seconds;
            validation.validate_exp = true;
            validation.validate_nbf = true;
            validation.required_spec_claims = HashSet::new();
            match &config.jwt_audience {
                Some(aud) => validation.set_audience(&[aud]),
                None => validation.validate_aud = false,
            }
            if let Some(iss) = &config.jwt_issuer {
                validation.set_issuer(&[iss]);
                validation.required_spec_claims.insert("iss".into());
            }
            Mode::Verify {
                key,
                validation: Box::new(validation),
            }
        };
        Ok(Authenticator {
            mode,
            allow_anonymous: config.allow_anonymous,
        })
    }

    /// Whether tokens are accepted without verification.
    pub fn insecure(&self) -> bool {
        matches!(self.mode, Mode::InsecureDev { .. })
    }

    /// Checks a handshake token (None when the client sent none).
    pub fn authenticate(&self, token: Option<&str>) -> Result<Identity, AuthError> {
        match token.map(str::trim).filter(|t| !t.is_empty()) {
            None if self.allow_anonymous => Ok(Identity::anonymous()),
            None => Err(AuthError::Required),
            Some(token) => self.verify(token),
        }
    }

    /// Verifies a token (handshake or `auth:refresh`).
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let claims: Map<String, Value> = match &self.mode {
            Mode::Verify { key, validation } => {
                jsonwebtoken::decode::<Map<String, Value>>(token, key, validation)
                    .map_err(|_| AuthError::Invalid)?
                    .claims
            }
            Mode::InsecureDev { leeway } => {
                let claims = jsonwebtoken::dangerous::insecure_decode::<Map<String, Value>>(token)
                    .map_err(|_| AuthError::Invalid)?
                    .claims;
                check_times(&claims, *leeway)?;
                claims
            }
        };
        let identity = identity_from_claims(claims)?;
        // A verified token that names nobody is anonymous access in disguise.
        if identity.user_id.is_none() && !self.allow_anonymous {
            return Err(AuthError::Invalid);
        }
        Ok(identity)
    }

    /// Why [`Authenticator::verify`] refuses a token, for an operator (`check-token`); clients
    /// only ever see `Invalid token`.
    pub fn why_invalid(&self, token: &str) -> String {
        let claims = match &self.mode {
            Mode::Verify { key, validation } => {
                match jsonwebtoken::decode::<Map<String, Value>>(token, key, validation) {
                    Ok(data) => data.claims,
                    Err(e) => return format!("{e}"),
                }
            }
            Mode::InsecureDev { leeway } => {
                match jsonwebtoken::dangerous::insecure_decode::<Map<String, Value>>(token) {
                    Ok(data) if check_times(&data.claims, *leeway).is_ok() => data.claims,
                    Ok(_) => return "expired or not yet valid".into(),
                    Err(e) => return format!("{e}"),
                }
            }
        };
        match identity_from_claims(claims) {
            Err(_) => format!(
                "userId (or sub) / sessionId (or sid) must be a string of 1-{MAX_ID_LEN} characters without control characters, or an integer"
            ),
            Ok(identity) if identity.user_id.is_none() && !self.allow_anonymous => {
                "the token names no user (userId or sub)".into()
            }
            Ok(_) => "valid".into(),
        }
    }
}

fn key_for(config: &Config) -> Result<(Algorithm, DecodingKey), KeyError> {
    let pem = || {
        config
            .jwt_public_key
            .as_deref()
            .ok_or_else(|| KeyError("not set".into()))
            .map(str::as_bytes)
    };
    let secret = || config.jwt_secret.as_deref().unwrap_or_default().as_bytes();
    Ok(match config.jwt_algorithm {
        JwtAlgorithm::Hs256 => (Algorithm::HS256, DecodingKey::from_secret(secret())),
        JwtAlgorithm::Hs384 => (Algorithm::HS384, DecodingKey::from_secret(secret())),
        JwtAlgorithm::Hs512 => (Algorithm::HS512, DecodingKey::from_secret(secret())),
        JwtAlgorithm::Rs256 => (
            Algorithm::RS256,
            DecodingKey::from_rsa_pem(pem()?).map_err(|e| KeyError(e.to_string()))?,
        ),
        JwtAlgorithm::Es256 => (
            Algorithm::ES256,
            DecodingKey::from_ec_pem(pem()?).map_err(|e| KeyError(e.to_string()))?,
        ),
    })
}

/// `exp`/`nbf` checks for development mode, where the library does not validate.
fn check_times(claims: &Map<String, Value>, leeway: u64) -> Result<(), AuthError> {
    let now = chrono::Utc::now().timestamp();
    let leeway = i64::try_from(leeway).unwrap_or(i64::MAX);
    let num = |k: &str| -> Result<Option<i64>, AuthError> {
        match claims.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .or_else(|| n.as_f64().map(|f| f as i64))
                .map(Some)
                .ok_or(AuthError::Invalid),
            Some(_) => Err(AuthError::Invalid),
        }
    };
    if let Some(exp) = num("exp")?
        && exp.saturating_add(leeway) < now
    {
        return Err(AuthError::Invalid);
    }
    if let Some(nbf) = num("nbf")?
        && nbf.saturating_sub(leeway) > now
    {
        return Err(AuthError::Invalid);
    }
    Ok(())
}

/// Longest user or session id (the original's `VARCHAR(255)` columns).
pub const MAX_ID_LEN: usize = 255;

/// A claim that names someone: a string of 1-255 characters without control characters, or an
/// integer (written as a string). `Ok(None)` when neither claim is present; `Err` when the
/// first present one is not a usable id (it is never silently skipped for the other).
fn id_claim(
    claims: &Map<String, Value>,
    primary: &str,
    fallback: &str,
) -> Result<Option<String>, AuthError> {
    let Some(v) = [primary, fallback]
        .iter()
        .find_map(|k| claims.get(*k).filter(|v| !v.is_null()))
    else {
        return Ok(None);
    };
    match v {
        Value::String(s)
            if !s.is_empty()
                && s.chars().count() <= MAX_ID_LEN
                && !s.chars().any(char::is_control) =>
        {
            Ok(Some(s.clone()))
        }
        Value::Number(n) if n.is_i64() || n.is_u64() => Ok(Some(n.to_string())),
        _ => Err(AuthError::Invalid),
    }
}

fn identity_from_claims(claims: Map<String, Value>) -> Result<Identity, AuthError> {
    let roles = match claims.get("roles") {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|r| r.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    let expires_at = match claims.get("exp") {
        Some(Value::Number(n)) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        _ => None,
    };
    Ok(Identity {
        user_id: id_claim(&claims, "userId", "sub")?,
        session_id: id_claim(&claims, "sessionId", "sid")?,
        roles,
        expires_at,
        claims: Value::Object(claims),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    use super::*;

    const SECRET: &str = "test-secret";

    fn auth(vars: &[(&str, &str)]) -> Authenticator {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Authenticator::from_config(&Config::from_map(&map).unwrap()).unwrap()
    }

    fn hs(alg: Algorithm, claims: Value, secret: &str) -> String {
        encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    #[test]
    fn verified_tokens_table() {
        let a = auth(&[
            ("REALTIME_JWT_SECRET", SECRET),
            ("REALTIME_JWT_LEEWAY_SECONDS", "0"),
        ]);
        let ok = |c: Value| a.verify(&hs(Algorithm::HS256, c, SECRET));
        // (claims, expected user or error)
        let cases: Vec<(Value, Result<Option<&str>, AuthError>)> = vec![
            (json!({"userId": "u1", "exp": now() + 60}), Ok(Some("u1"))),
            (json!({"sub": "u2", "exp": now() + 60}), Ok(Some("u2"))),
            (json!({"userId": "u3"}), Ok(Some("u3"))), // no exp: accepted, as the original
            (
                json!({"userId": "u4", "exp": now() - 10}),
                Err(AuthError::Invalid),
            ),
            (
                json!({"userId": "u5", "exp": "9999999999"}),
                Err(AuthError::Invalid),
            ),
            (
                json!({"userId": "u6", "nbf": now() + 600}),
                Err(AuthError::Invalid),
            ),
            (json!({"userId": 42}), Ok(Some("42"))),
            // Tokens that name nobody usable are refused (anonymous access is off).
            (json!({"sessionId": "x"}), Err(AuthError::Invalid)),
            (json!({"userId": "u".repeat(256)}), Err(AuthError::Invalid)),
            (
                json!({"userId": "u".repeat(300), "sub": "ok"}),
                Err(AuthError::Invalid),
            ),
            (json!({"userId": {}}), Err(AuthError::Invalid)),
            (json!({"userId": ["u"]}), Err(AuthError::Invalid)),
            (json!({"userId": ""}), Err(AuthError::Invalid)),
            (json!({"userId": "a\nb"}), Err(AuthError::Invalid)),
            (json!({"userId": 1.5}), Err(AuthError::Invalid)),
            (json!({"userId": null, "sub": "u7"}), Ok(Some("u7"))),
        ];
        for (claims, want) in cases {
            let got = ok(claims.clone()).map(|i| i.user_id);
            assert_eq!(got, want.map(|u| u.map(String::from)), "claims {claims}");
        }
    }

    #[test]
    fn wrong_key_wrong_alg_and_none_are_refused() {
        let a = auth(&[("REALTIME_JWT_SECRET", SECRET)]);
        let claims = json!({"userId": "u", "exp": now() + 60});
        assert_eq!(
            a.verify(&hs(Algorithm::HS256, claims.clone(), "other")),
            Err(AuthError::Invalid)
        );
        // HS512 signed with the right secret: the algorithm is pinned to HS256.
        assert_eq!(
            a.verify(&hs(Algorithm::HS512, claims.clone(), SECRET)),
            Err(AuthError::Invalid)
        );
        // alg=none: header {"alg":"none"} with an empty signature.
        let none = format!(
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
            base64url(&claims.to_string())
        );
        assert_eq!(a.verify(&none), Err(AuthError::Invalid));
        assert_eq!(a.verify("garbage"), Err(AuthError::Invalid));
        assert_eq!(a.verify("a.b.c"), Err(AuthError::Invalid));
    }

    #[test]
    fn missing_token_depends_on_anonymous_mode() {
        let strict = auth(&[("REALTIME_JWT_SECRET", SECRET)]);
        assert_eq!(strict.authenticate(None), Err(AuthError::Required));
        assert_eq!(strict.authenticate(Some("  ")), Err(AuthError::Required));
        let open = auth(&[
            ("REALTIME_JWT_SECRET", SECRET),
            ("REALTIME_ALLOW_ANONYMOUS", "true"),
        ]);
        assert_eq!(open.authenticate(None).unwrap().user_id, None);
        // A bad token is still refused when anonymous access is on.
        assert_eq!(open.authenticate(Some("x.y.z")), Err(AuthError::Invalid));
        // A valid token without a user id is anonymous only where anonymous access is on;
        // a malformed user id is refused either way.
        let no_user = hs(Algorithm::HS256, json!({"sessionId": "s"}), SECRET);
        assert_eq!(strict.authenticate(Some(&no_user)), Err(AuthError::Invalid));
        assert_eq!(open.authenticate(Some(&no_user)).unwrap().user_id, None);
        let bad_user = hs(Algorithm::HS256, json!({"userId": {}}), SECRET);
        assert_eq!(open.authenticate(Some(&bad_user)), Err(AuthError::Invalid));
    }

    #[test]
    fn claims_roles_and_session() {
        let a = auth(&[("REALTIME_JWT_SECRET", SECRET)]);
        let id = a
            .verify(&hs(
                Algorithm::HS256,
                json!({"userId": "u", "sid": "s1", "roles": ["admin", 3, "mod"], "team": "x"}),
                SECRET,
            ))
            .unwrap();
        assert_eq!(id.session_id.as_deref(), Some("s1"));
        assert_eq!(id.roles, vec!["admin", "mod"]);
        assert_eq!(id.claims["team"], "x");
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let a = auth(&[
            ("REALTIME_JWT_SECRET", SECRET),
            ("REALTIME_JWT_ISSUER", "iss1"),
            ("REALTIME_JWT_AUDIENCE", "aud1"),
        ]);
        let t = |c| hs(Algorithm::HS256, c, SECRET);
        assert!(
            a.verify(&t(json!({"userId": "u", "iss": "iss1", "aud": "aud1"})))
                .is_ok()
        );
        assert!(
            a.verify(&t(json!({"userId": "u", "iss": "other", "aud": "aud1"})))
                .is_err()
        );
        assert!(
            a.verify(&t(json!({"userId": "u", "iss": "iss1", "aud": "other"})))
                .is_err()
        );
        assert!(a.verify(&t(json!({"userId": "u", "aud": "aud1"}))).is_err());
    }

    #[test]
    fn dev_mode_decodes_without_verifying_but_checks_expiry() {
        let a = auth(&[]);
        assert!(a.insecure());
        let id = a
            .verify(&hs(Algorithm::HS256, json!({"userId": "dev"}), "any"))
            .unwrap();
        assert_eq!(id.user_id.as_deref(), Some("dev"));
        assert_eq!(
            a.verify(&hs(
                Algorithm::HS256,
                json!({"userId": "dev", "exp": now() - 3600}),
                "any"
            )),
            Err(AuthError::Invalid)
        );
        assert_eq!(a.verify("not-a-jwt"), Err(AuthError::Invalid));
    }

    fn base64url(s: &str) -> String {
        const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let b = s.as_bytes();
        let mut out = String::new();
        for chunk in b.chunks(3) {
            let n =
                chunk.iter().fold(0u32, |acc, &x| (acc << 8) | x as u32) << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }
}
