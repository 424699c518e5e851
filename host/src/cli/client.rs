//! HTTP requests from the CLI to the running server (`status`, `healthcheck`, `plugins`): the
//! server's own address from `REALTIME_HOST`/`REALTIME_PORT`, loopback when it listens on
//! every address.

use std::time::Duration;

use serde_json::Value;

use crate::config::Config;

/// `http://host:port` of the server this configuration describes.
pub fn base_url(config: &Config) -> String {
    let host = match config.host {
        h if h.is_unspecified() && h.is_ipv6() => "[::1]".to_string(),
        h if h.is_unspecified() => "127.0.0.1".to_string(),
        std::net::IpAddr::V6(h) => format!("[{h}]"),
        std::net::IpAddr::V4(h) => h.to_string(),
    };
    format!("http://{host}:{}", config.port)
}

/// An answer of the server: status code and body (JSON when it parses, else a string).
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status code.
    pub status: u16,
    /// The body.
    pub body: Value,
}

impl Answer {
    /// 2xx.
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// GET `path` (JSON wanted); an error when nothing answers within `timeout`.
pub async fn get(config: &Config, path: &str, timeout: Duration) -> anyhow::Result<Answer> {
    let url = format!("{}{path}", base_url(config));
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .no_proxy()
        .build()?;
    let res = client
        .get(&url)
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("no answer from {url}: {}", root_cause(&e)))?;
    let status = res.status().as_u16();
    let text = res
        .text()
        .await
        .map_err(|e| anyhow::anyhow!("reading {url}: {}", root_cause(&e)))?;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok(Answer { status, body })
}

/// Calls the running server's API (`/api/...`) with `REALTIME_API_KEY`; the answer's `data`,
/// or an error that says what went wrong (no key, refused key, the server's error code).
pub async fn api(
    config: &Config,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<Value> {
    let Some(key) = &config.api_key else {
        anyhow::bail!(
            "this command asks the running server's API: set REALTIME_API_KEY (as the server has it)"
        );
    };
    let url = format!("{}{path}", base_url(config));
    let timeout = Duration::from_secs(5);
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .no_proxy()
        .build()?;
    let mut req = client.request(method, &url).bearer_auth(key);
    if let Some(b) = body {
        req = req.json(b);
    }
    let res = req
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("no answer from {url}: {}", root_cause(&e)))?;
    let status = res.status().as_u16();
    let text = res.text().await.unwrap_or_default();
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if body["success"] == true {
        return Ok(body["data"].clone());
    }
    match status {
        404 if body.is_null() => {
            anyhow::bail!("{url}: the server API is off (the server runs without REALTIME_API_KEY)")
        }
        401 => anyhow::bail!("{url}: the server refused REALTIME_API_KEY"),
        _ => anyhow::bail!(
            "{url}: HTTP {status}: {} {}",
            body["error"]["code"].as_str().unwrap_or(""),
            body["error"]["message"].as_str().unwrap_or(text.trim())
        ),
    }
}

/// The innermost error message (reqwest wraps the one that says what happened).
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(host: &str) -> Config {
        let map: HashMap<String, String> = [
            ("REALTIME_HOST".to_string(), host.to_string()),
            ("REALTIME_PORT".to_string(), "4000".to_string()),
        ]
        .into();
        Config::from_map(&map).unwrap()
    }

    #[test]
    fn wildcard_addresses_are_asked_on_loopback() {
        assert_eq!(base_url(&cfg("0.0.0.0")), "http://127.0.0.1:4000");
        assert_eq!(base_url(&cfg("::")), "http://[::1]:4000");
        assert_eq!(base_url(&cfg("10.1.2.3")), "http://10.1.2.3:4000");
        assert_eq!(base_url(&cfg("::1")), "http://[::1]:4000");
    }
}
