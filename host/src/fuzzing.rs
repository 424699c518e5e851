//! Entry points of the fuzz targets (`fuzz/`): every parser that takes untrusted input, called
//! the way the server calls it. Each returns normally on any input; a panic is a finding.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::Value;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::pipeline::payload::{self, EventKind, Limits};

const LIMITS: Limits = Limits {
    max_message_length: 5000,
    max_metadata_bytes: 4096,
    max_metadata_depth: 8,
};

/// A client payload (any bytes; JSON or not) through the validation of every event.
pub fn payload(bytes: &[u8]) {
    let Ok(value) = serde_json::from_slice::<Value>(bytes) else {
        return;
    };
    for kind in EventKind::ALL {
        let _ = payload::parse(kind, &value, LIMITS);
    }
}

/// A room name as a client sends it.
pub fn room_name(name: &str) {
    let _ = crate::rooms::validate_room_name(name);
}

fn authenticators() -> &'static (Authenticator, Authenticator) {
    static AUTH: OnceLock<(Authenticator, Authenticator)> = OnceLock::new();
    AUTH.get_or_init(|| {
        let make = |vars: &[(&str, &str)]| {
            let map: HashMap<String, String> = vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let config = Config::from_map(&map).unwrap_or_else(|e| panic!("config: {e}"));
            Authenticator::from_config(&config).unwrap_or_else(|e| panic!("auth: {e}"))
        };
        (
            make(&[("REALTIME_JWT_SECRET", "fuzz-secret")]),
            // Development mode decodes without verifying: the claims are attacker-controlled.
            make(&[("REALTIME_ALLOW_ANONYMOUS", "true")]),
        )
    })
}

/// A handshake token, verified (HS256) and decoded without verification (development mode).
pub fn token(token: &str) {
    let (verified, dev) = authenticators();
    let _ = verified.authenticate(Some(token));
    let _ = dev.authenticate(Some(token));
}

/// Claims a token carries (any JSON), signed with the server's secret: the identity is read
/// from whatever a token issuer put in it.
pub fn claims(bytes: &[u8]) {
    let Ok(claims) = serde_json::from_slice::<Value>(bytes) else {
        return;
    };
    let key = jsonwebtoken::EncodingKey::from_secret(b"fuzz-secret");
    if let Ok(token) = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key) {
        let _ = authenticators().0.authenticate(Some(&token));
    }
}

/// A policy module's verdict (`tag` picks allow, modify or reject) as the host checks it,
/// and a rewrite validated as the request it claims to be.
pub fn verdict(tag: u8, text: &str, message: &str) {
    use crate::policy::bindings::{Rejection, Verdict};
    let v = match tag % 6 {
        0 => Verdict::Allow,
        1 => Verdict::Modify(text.to_string()),
        3 | 4 => Verdict::Reject(Rejection {
            code: "MODULE_CODE".into(),
            message: message.to_string(),
            details_json: Some(text.to_string()),
        }),
        _ => Verdict::Reject(Rejection {
            code: text.to_string(),
            message: message.to_string(),
            details_json: None,
        }),
    };
    if let Ok(Some(rewritten)) = crate::policy::check_verdict_for_fuzzing(v, "fuzz", 1 << 20) {
        for kind in EventKind::ALL {
            let _ = payload::parse(kind, &rewritten, LIMITS);
        }
    }
}
