//! Which address a request comes from: the TCP peer, or, when the peer is
//! a proxy the operator trusts (`--trusted-proxies`), the address that
//! proxy put in `X-Forwarded-For`. Auth limits logins per address, so an
//! address a client can choose would defeat the limit: the header is
//! ignored unless the peer is trusted.

use crate::Gateway;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};

/// The client's address, when the server knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub Option<IpAddr>);

impl FromRequestParts<Gateway> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, gw: &Gateway) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        Ok(ClientAddr(peer.map(|p| {
            client_ip(p, &parts.headers, &gw.inner.cfg.trusted_proxies)
        })))
    }
}

/// The client behind `peer`: `peer` itself unless it is a trusted proxy;
/// then the last address in `X-Forwarded-For` that is not a trusted proxy
/// (each proxy appends the address it saw: what stands left of the last
/// untrusted one was written by the client and proves nothing).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse().ok())
        .collect();
    forwarded
        .iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .or(forwarded.first())
        .copied()
        .unwrap_or(peer)
}

/// Parses `--trusted-proxies` entries: addresses or CIDR blocks.
pub fn parse_trusted(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is not an IP address or CIDR block"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xff(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", v.parse().unwrap());
        h
    }

    #[test]
    fn the_forwarded_address_counts_only_behind_a_trusted_proxy() {
        let proxy: IpAddr = "10.0.0.5".parse().unwrap();
        let trusted = vec![parse_trusted("10.0.0.0/8").unwrap()];
        // An untrusted peer: its header is ignored.
        let stranger: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(
            client_ip(stranger, &xff("198.51.100.1"), &trusted),
            stranger
        );
        // Behind the proxy: the address it appended.
        assert_eq!(
            client_ip(proxy, &xff("198.51.100.1"), &trusted),
            "198.51.100.1".parse::<IpAddr>().unwrap()
        );
        // A client that forges the header gets its own address, which the
        // proxy appended last, not the forged one.
        assert_eq!(
            client_ip(proxy, &xff("1.2.3.4, 198.51.100.1"), &trusted),
            "198.51.100.1".parse::<IpAddr>().unwrap()
        );
        // Two trusted hops.
        assert_eq!(
            client_ip(proxy, &xff("198.51.100.1, 10.0.0.7"), &trusted),
            "198.51.100.1".parse::<IpAddr>().unwrap()
        );
        // No header: the proxy itself.
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &trusted), proxy);
        // Nothing trusted: always the peer.
        assert_eq!(client_ip(proxy, &xff("198.51.100.1"), &[]), proxy);
        assert!(parse_trusted("not an address").is_err());
        assert!(parse_trusted("127.0.0.1").is_ok());
    }
}
