//! `token`: mints a token for testing with the configured HMAC secret (the claims the server
//! reads: `userId`, `sessionId`, `roles`, `iat`, `exp`, and `iss`/`aud` when configured).
//! `check-token`: verifies a token exactly as the server's handshake does and says why not.

use serde_json::{Map, Value, json};

use super::print::{outln, print_json};
use crate::auth::Authenticator;
use crate::config::{Config, JwtAlgorithm};

/// `1h`, `30m`, `45s`, `2d`, or plain seconds.
pub fn parse_ttl(text: &str) -> Result<u64, String> {
    crate::util::parse_seconds(text).map_err(|e| format!("--ttl {e}"))
}

/// Mints a token.
pub fn mint(
    config: &Config,
    user: &str,
    roles: &[String],
    session: Option<&str>,
    ttl: &str,
    json: bool,
) -> anyhow::Result<()> {
    let algorithm = match config.jwt_algorithm {
        JwtAlgorithm::Hs256 => jsonwebtoken::Algorithm::HS256,
        JwtAlgorithm::Hs384 => jsonwebtoken::Algorithm::HS384,
        JwtAlgorithm::Hs512 => jsonwebtoken::Algorithm::HS512,
        JwtAlgorithm::Rs256 | JwtAlgorithm::Es256 => anyhow::bail!(
            "tokens are verified with a public key (REALTIME_JWT_ALGORITHM): mint them with the matching private key, not here"
        ),
    };
    let Some(secret) = config.jwt_secret.as_deref() else {
        anyhow::bail!("REALTIME_JWT_SECRET is not set: there is no key to sign with");
    };
    if user.is_empty() || user.chars().count() > crate::auth::MAX_ID_LEN {
        anyhow::bail!("--user must be 1-{} characters", crate::auth::MAX_ID_LEN);
    }
    let ttl = parse_ttl(ttl).map_err(anyhow::Error::msg)?;
    let now = chrono::Utc::now().timestamp();
    let session = session
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let mut claims = Map::new();
    claims.insert("userId".into(), json!(user));
    claims.insert("sessionId".into(), json!(session));
    if !roles.is_empty() {
        claims.insert("roles".into(), json!(roles));
    }
    claims.insert("iat".into(), json!(now));
    claims.insert("exp".into(), json!(now.saturating_add(ttl as i64)));
    if let Some(iss) = &config.jwt_issuer {
        claims.insert("iss".into(), json!(iss));
    }
    if let Some(aud) = &config.jwt_audience {
        claims.insert("aud".into(), json!(aud));
    }
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(algorithm),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?;
    if json {
        print_json(&json!({ "token": token, "claims": claims }));
    } else {
        outln!("{token}");
    }
    Ok(())
}

/// Checks a token as the server would: exit 0 and its identity, or exit 1 and why not.
pub fn check(config: &Config, token: &str, json: bool) -> anyhow::Result<()> {
    let auth = Authenticator::from_config(config)?;
    let identity = match auth.verify(token.trim()) {
        Ok(identity) => identity,
        Err(e) => anyhow::bail!("{e}: {}", auth.why_invalid(token.trim())),
    };
    let expires = identity
        .expires_at
        .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
        .map(|t| t.to_rfc3339());
    let report = json!({
        "valid": true,
        "verified": !auth.insecure(),
        "userId": identity.user_id,
        "sessionId": identity.session_id,
        "roles": identity.roles,
        "expiresAt": expires,
    });
    if json {
        print_json(&report);
    } else {
        let text = |v: &Value| v.as_str().map(str::to_owned).unwrap_or_else(|| "-".into());
        outln!("✓ Token accepted");
        outln!("  userId:     {}", text(&report["userId"]));
        outln!("  sessionId:  {}", text(&report["sessionId"]));
        outln!("  roles:      {}", identity.roles.join(", "));
        outln!("  expires:    {}", text(&report["expiresAt"]));
        if auth.insecure() {
            outln!("  (development mode: the signature was NOT verified; set REALTIME_JWT_SECRET)");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("3600"), Ok(3600));
        assert_eq!(parse_ttl("90s"), Ok(90));
        assert_eq!(parse_ttl("30m"), Ok(1800));
        assert_eq!(parse_ttl("1h"), Ok(3600));
        assert_eq!(parse_ttl("7d"), Ok(604_800));
        assert!(parse_ttl("0").is_err());
        assert!(parse_ttl("1w").is_err());
        assert!(parse_ttl("h").is_err());
    }
}
