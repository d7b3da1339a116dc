//! Which peers are proxies whose word on the client's address is trusted
//! (`PURSER_TRUSTED_PROXIES`): behind the gateway every connection comes
//! from nginx, so the per-address limit on failed authentication must key
//! on the address nginx reports, and only when nginx is the one reporting.

use std::net::IpAddr;
use std::str::FromStr;

/// An address or a CIDR block (`10.0.0.0/8`, `::1`, `fd00::/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyNet {
    network: IpAddr,
    prefix: u8,
}

impl ProxyNet {
    /// Whether `address` is in the block (an IPv4-mapped IPv6 address counts
    /// as its IPv4 address).
    pub fn contains(&self, address: IpAddr) -> bool {
        let address = canonical(address);
        match (self.network, address) {
            (IpAddr::V4(network), IpAddr::V4(address)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(network) & mask == u32::from(address) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(network) & mask == u128::from(address) & mask
            }
            _ => false,
        }
    }
}

fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    }
}

impl FromStr for ProxyNet {
    type Err = String;

    fn from_str(text: &str) -> Result<ProxyNet, String> {
        let text = text.trim();
        let invalid = || format!("{text:?} is not an IP address or a CIDR block (10.0.0.0/8)");
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network = canonical(address.parse::<IpAddr>().map_err(|_| invalid())?);
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix.parse::<u8>().map_err(|_| invalid())?,
            None => max,
        };
        if prefix > max {
            return Err(invalid());
        }
        Ok(ProxyNet { network, prefix })
    }
}

impl std::fmt::Display for ProxyNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The proxies in front of a service; empty (the default) trusts none, so
/// the client's address is the connection's peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<ProxyNet>);

impl TrustedProxies {
    pub fn new(nets: impl IntoIterator<Item = ProxyNet>) -> TrustedProxies {
        TrustedProxies(nets.into_iter().collect())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(address))
    }

    /// The client's address: the peer's own, unless the peer is a trusted
    /// proxy; then the rightmost `X-Forwarded-For` entry that is not a
    /// trusted proxy (entries further left were sent by the client and
    /// prove nothing), else `X-Real-IP`, else the peer.
    /// `forwarded_for` is every `X-Forwarded-For` header value in order.
    pub fn client_address<'a>(
        &self,
        peer: IpAddr,
        forwarded_for: impl IntoIterator<Item = &'a str>,
        real_ip: Option<&str>,
    ) -> IpAddr {
        if !self.contains(peer) {
            return peer;
        }
        // From the right: each trusted hop passes on what its own peer
        // was; the first one that is not a trusted proxy is the client.
        let mut client = None;
        let hops = forwarded_for
            .into_iter()
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .filter(|hop| !hop.is_empty())
            .collect::<Vec<_>>();
        for hop in hops.iter().rev() {
            match hop.parse::<IpAddr>() {
                Ok(address) => {
                    client = Some(canonical(address));
                    if !self.contains(address) {
                        break;
                    }
                }
                // Not an address: nothing to its left can be believed.
                Err(_) => break,
            }
        }
        if let Some(client) = client {
            return client;
        }
        if let Some(address) = real_ip.and_then(|ip| ip.trim().parse::<IpAddr>().ok()) {
            return canonical(address);
        }
        peer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn trusted(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(nets.iter().map(|n| n.parse::<ProxyNet>().unwrap()))
    }

    #[test]
    fn blocks_parse_and_contain() {
        let net: ProxyNet = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains(ip("10.1.200.3")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(net.contains(ip("::ffff:10.1.0.9")));
        let one: ProxyNet = "127.0.0.1".parse().unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let v6: ProxyNet = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        let all: ProxyNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")));
        for bad in [
            "",
            "nginx",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/x",
            "10.0.0/8",
        ] {
            assert!(bad.parse::<ProxyNet>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_client_is_the_peer_unless_a_trusted_proxy_says_otherwise() {
        let none = TrustedProxies::default();
        let gateway = trusted(&["127.0.0.1", "10.0.0.0/8"]);
        let peer = ip("127.0.0.1");
        // Nobody trusted: the headers are ignored.
        assert_eq!(
            none.client_address(peer, ["203.0.113.7"], Some("203.0.113.8")),
            peer
        );
        // An untrusted peer's headers are ignored too.
        let stranger = ip("198.51.100.4");
        assert_eq!(
            gateway.client_address(stranger, ["203.0.113.7"], None),
            stranger
        );
        // Behind the gateway: the address it appended.
        assert_eq!(
            gateway.client_address(peer, ["203.0.113.7"], None),
            ip("203.0.113.7")
        );
        // What the client put on the left proves nothing.
        assert_eq!(
            gateway.client_address(peer, ["1.2.3.4, 203.0.113.7"], None),
            ip("203.0.113.7")
        );
        // A client inside a trusted block: the leftmost hop.
        assert_eq!(
            gateway.client_address(peer, ["10.0.0.7"], None),
            ip("10.0.0.7")
        );
        // Through two trusted hops, over several headers.
        assert_eq!(
            gateway.client_address(peer, ["203.0.113.7", "10.0.0.5"], None),
            ip("203.0.113.7")
        );
        // Junk where the gateway's entry should be: the peer.
        assert_eq!(gateway.client_address(peer, ["1.2.3.4, junk"], None), peer);
        // No X-Forwarded-For: X-Real-IP, else the peer.
        assert_eq!(
            gateway.client_address(peer, [], Some("203.0.113.8")),
            ip("203.0.113.8")
        );
        assert_eq!(gateway.client_address(peer, [], Some("junk")), peer);
        assert_eq!(gateway.client_address(peer, [], None), peer);
    }
}
