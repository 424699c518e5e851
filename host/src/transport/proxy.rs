//! `REALTIME_TRUSTED_PROXIES`: behind a reverse proxy every connection comes from the proxy, so
//! per-IP limits and logs would see one address. For a connection from a trusted proxy the
//! client's address is taken from `X-Forwarded-For`, read from the right (the hop the proxy
//! added) past every trusted address; a header from anyone else is ignored, so a client cannot
//! pick its own address by sending one.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use ipnet::IpNet;

/// Parses a comma-separated list of CIDR blocks or single addresses.
pub fn parse_list(value: &str) -> Result<Vec<IpNet>, String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("{s:?} is not an address or a CIDR block"))
        })
        .collect()
}

fn trusted_ip(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    trusted.iter().any(|net| net.contains(&ip))
}

/// One `X-Forwarded-For` entry: an address, or an address with a port.
fn hop(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

/// The client's address for a connection from `peer`.
pub fn client_addr(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpNet]) -> SocketAddr {
    if trusted.is_empty() || !trusted_ip(peer.ip(), trusted) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    let mut client = peer.ip();
    for entry in hops.iter().rev() {
        // An entry that is not an address ends the walk: what lies left of it is unverifiable.
        let Some(ip) = hop(entry) else { break };
        client = ip;
        if !trusted_ip(ip, trusted) {
            break;
        }
    }
    SocketAddr::new(client, peer.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().expect("header value"));
        }
        h
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    #[test]
    fn only_trusted_peers_may_name_the_client() {
        let trusted = parse_list("10.0.0.0/8, 127.0.0.1").expect("list");
        // Untrusted peer: its header is ignored.
        let a = client_addr(addr("203.0.113.9:5000"), &headers(&["1.2.3.4"]), &trusted);
        assert_eq!(a.ip().to_string(), "203.0.113.9");
        // Trusted proxy: the rightmost untrusted hop is the client; a spoofed left part is not.
        let a = client_addr(
            addr("10.1.2.3:5000"),
            &headers(&["6.6.6.6, 198.51.100.7, 10.9.9.9"]),
            &trusted,
        );
        assert_eq!(a.ip().to_string(), "198.51.100.7");
        // Several header lines count as one list.
        let a = client_addr(
            addr("127.0.0.1:5000"),
            &headers(&["6.6.6.6", "198.51.100.8"]),
            &trusted,
        );
        assert_eq!(a.ip().to_string(), "198.51.100.8");
        // No header, or garbage: the proxy itself.
        let a = client_addr(addr("10.1.2.3:5000"), &headers(&[]), &trusted);
        assert_eq!(a.ip().to_string(), "10.1.2.3");
        let a = client_addr(addr("10.1.2.3:5000"), &headers(&["nonsense"]), &trusted);
        assert_eq!(a.ip().to_string(), "10.1.2.3");
        // IPv4-mapped IPv6 peers match IPv4 blocks.
        let a = client_addr(
            addr("[::ffff:10.0.0.1]:5000"),
            &headers(&["2001:db8::1"]),
            &trusted,
        );
        assert_eq!(a.ip().to_string(), "2001:db8::1");
        // Nothing trusted: always the peer.
        let a = client_addr(addr("10.1.2.3:5000"), &headers(&["1.2.3.4"]), &[]);
        assert_eq!(a.ip().to_string(), "10.1.2.3");
    }

    #[test]
    fn lists_are_checked() {
        assert_eq!(parse_list("").expect("empty").len(), 0);
        assert_eq!(parse_list("::1, 192.168.0.0/16").expect("ok").len(), 2);
        assert!(parse_list("10.0.0.0/33").is_err());
        assert!(parse_list("proxy.local").is_err());
    }
}
