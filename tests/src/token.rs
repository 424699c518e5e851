//! JWT helpers for tests: valid, expired, not-yet-valid, `alg=none` and other-algorithm tokens.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::time::now_secs;

/// The secret every [`crate::TestHost`] uses unless a test sets `REALTIME_JWT_SECRET` itself.
pub const TEST_SECRET: &str = "nself-realtime-test-secret-0123456789";

/// Signs `claims` with HS256 and `secret`.
pub fn token(claims: Value, secret: &str) -> String {
    token_with_alg(claims, secret, Algorithm::HS256)
}

/// Signs `claims` with an HMAC algorithm (HS256/HS384/HS512) and `secret`.
pub fn token_with_alg(claims: Value, secret: &str, alg: Algorithm) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("signing a test token")
}

/// The usual claims for a user: `userId`, `sessionId` (`sess-<user>`), `exp` in one hour.
pub fn user_claims(user_id: &str) -> Value {
    json!({
        "userId": user_id,
        "sessionId": format!("sess-{user_id}"),
        "iat": now_secs(),
        "exp": now_secs() + 3600,
    })
}

/// A valid token for `user_id`, signed with [`TEST_SECRET`].
pub fn user_token(user_id: &str) -> String {
    token(user_claims(user_id), TEST_SECRET)
}

/// A token for `user_id` whose `exp` is `secs` seconds from now (negative: already expired).
pub fn token_expiring_in(user_id: &str, secs: i64) -> String {
    let mut claims = user_claims(user_id);
    claims["exp"] = json!(now_secs() + secs);
    token(claims, TEST_SECRET)
}

/// A token for `user_id` that expired an hour ago (far outside any leeway).
pub fn expired_token(user_id: &str) -> String {
    let mut claims = user_claims(user_id);
    claims["iat"] = json!(now_secs() - 7200);
    claims["exp"] = json!(now_secs() - 3600);
    token(claims, TEST_SECRET)
}

/// A token for `user_id` that only becomes valid in an hour (`nbf`).
pub fn not_yet_valid_token(user_id: &str) -> String {
    let mut claims = user_claims(user_id);
    claims["nbf"] = json!(now_secs() + 3600);
    token(claims, TEST_SECRET)
}

/// An unsigned token (`{"alg":"none"}` header, empty signature) carrying `claims`.
pub fn unsigned_token(claims: &Value) -> String {
    let header = b64url(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = b64url(claims.to_string().as_bytes());
    format!("{header}.{payload}.")
}

/// Base64url without padding (JWT segment encoding).
pub fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (16 - 8 * i)));
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b64url_matches_known_vectors() {
        assert_eq!(b64url(b""), "");
        assert_eq!(b64url(b"f"), "Zg");
        assert_eq!(b64url(b"fo"), "Zm8");
        assert_eq!(b64url(b"foo"), "Zm9v");
        assert_eq!(b64url(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn hs256_tokens_verify() {
        let t = user_token("u1");
        let mut v = jsonwebtoken::Validation::new(Algorithm::HS256);
        v.validate_exp = true;
        let data = jsonwebtoken::decode::<Value>(
            &t,
            &jsonwebtoken::DecodingKey::from_secret(TEST_SECRET.as_bytes()),
            &v,
        )
        .expect("valid");
        assert_eq!(data.claims["userId"], "u1");
    }
}
