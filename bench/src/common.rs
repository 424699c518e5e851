//! What every scenario shares: the client options, tokens, the clock, connecting a client.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::Context;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

use crate::sys;
use crate::ws::{Conn, Target};

/// Options of the clients, common to every scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientOpts {
    /// Server URL (`http://IP:PORT`); repeat it to spread the clients over several instances
    /// (client i connects to URL i mod n, so every room spans the instances).
    #[arg(long = "url", default_value = "http://127.0.0.1:3101")]
    pub urls: Vec<String>,
    /// HS256 secret the clients sign their tokens with (the server's `REALTIME_JWT_SECRET`).
    #[arg(long, env = "REALTIME_JWT_SECRET", default_value = "bench-secret")]
    pub secret: String,
    /// Pid of the server whose CPU and RSS are reported; by default the process listening on
    /// the first URL's port.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Loopback source addresses to spread the clients over (127.0.0.1 .. 127.0.0.N), to pass
    /// the limit of ephemeral ports per source address.
    #[arg(long, default_value_t = 1)]
    pub source_ips: u8,
    /// Connects in flight at once.
    #[arg(long, default_value_t = 128)]
    pub connect_concurrency: usize,
    /// Seconds one connect (upgrade, open, namespace connect) may take.
    #[arg(long, default_value_t = 10)]
    pub connect_timeout: u64,
    /// Prefix of the user ids (`<prefix><client index>`).
    #[arg(long, default_value = "bench-u")]
    pub user_prefix: String,
}

impl ClientOpts {
    /// Options for `url` with the defaults (for tests and library callers).
    pub fn new(url: &str, secret: &str) -> ClientOpts {
        ClientOpts {
            urls: vec![url.to_string()],
            secret: secret.to_string(),
            server_pid: None,
            source_ips: 1,
            connect_concurrency: 128,
            connect_timeout: 10,
            user_prefix: "bench-u".into(),
        }
    }

    /// The parsed URLs.
    pub fn targets(&self) -> anyhow::Result<Vec<Target>> {
        anyhow::ensure!(!self.urls.is_empty(), "at least one --url");
        self.urls.iter().map(|u| Target::parse(u)).collect()
    }

    /// `--server-pid`, or the listener of the first URL's port.
    pub fn server_pid(&self) -> Option<u32> {
        self.server_pid.or_else(|| {
            let t = Target::parse(self.urls.first()?).ok()?;
            sys::pid_listening_on(t.addr.port())
        })
    }
}

/// Keeps the first error of many clients (later ones are dropped; the counters say how many).
pub fn keep_first(slot: &std::sync::Mutex<Option<String>>, error: impl FnOnce() -> String) {
    let mut first = slot.lock().unwrap_or_else(|e| e.into_inner());
    if first.is_none() {
        *first = Some(error());
    }
}

/// Microseconds since the first call in this process (the clock of every timestamp).
pub fn now_us() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// An HS256 token for `user` valid for a day.
pub fn token(secret: &str, user: &str) -> anyhow::Result<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let claims = json!({
        "sub": user,
        "userId": user,
        "sessionId": format!("s-{user}"),
        "iat": now,
        "exp": now + 86_400,
    });
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .context("signing a token")
}

/// Connects client `i`: target `i mod n`, source address `127.0.0.(1 + i mod source_ips)`,
/// user `<prefix><i>` with a signed token (also sent as `auth.userId`, which the Node.js
/// reference reads).
pub async fn connect(opts: &ClientOpts, targets: &[Target], i: usize) -> anyhow::Result<Conn> {
    let target = &targets[i % targets.len()];
    let source = if opts.source_ips > 1 && target.addr.ip().is_loopback() && target.addr.is_ipv4() {
        Some(IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            0,
            1 + (i % opts.source_ips as usize) as u8,
        )))
    } else {
        None
    };
    let user = format!("{}{i}", opts.user_prefix);
    let token = token(&opts.secret, &user)?;
    let auth = format!(r#"{{"token":"{token}","userId":"{user}"}}"#);
    let (conn, _sid) = Conn::open(
        target,
        source,
        &auth,
        Duration::from_secs(opts.connect_timeout),
    )
    .await?;
    Ok(conn)
}

/// Sends `42<id>[event, payload]` and waits (at most `timeout`) for the ack `43<id>[...]`;
/// returns its text. Other frames are dropped; pings are answered.
pub async fn emit_ack(
    conn: &mut Conn,
    id: u64,
    event: &str,
    payload: &str,
    timeout: Duration,
) -> anyhow::Result<String> {
    conn.send_text(format!("42{id}[\"{event}\",{payload}]").as_bytes())
        .await?;
    let prefix = format!("43{id}[");
    let wait = async {
        loop {
            let mut got = None;
            conn.process(|t| {
                if got.is_none() && t.starts_with(prefix.as_bytes()) {
                    got = Some(String::from_utf8_lossy(t).into_owned());
                }
            });
            conn.flush().await?;
            if let Some(g) = got {
                return Ok(g);
            }
            if !conn.fill().await? {
                anyhow::bail!("connection closed while waiting for the {event} ack");
            }
        }
    };
    tokio::time::timeout(timeout, wait)
        .await
        .with_context(|| format!("no {event} ack within {timeout:?}"))?
}

/// Parses the decimal digits at the start of `b`.
pub fn parse_digits(b: &[u8]) -> Option<(u64, usize)> {
    let n = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if n == 0 || n > 19 {
        return None;
    }
    let mut v = 0u64;
    for &c in &b[..n] {
        v = v * 10 + (c - b'0') as u64;
    }
    Some((v, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits() {
        assert_eq!(parse_digits(b"123[x]"), Some((123, 3)));
        assert_eq!(parse_digits(b"[x]"), None);
    }

    #[test]
    fn tokens_carry_the_user() {
        let t = token("s", "u1").unwrap();
        assert_eq!(t.split('.').count(), 3);
    }
}
