//! The client's address: the TCP peer's, or, when the peer is a reverse proxy the operator
//! trusts (`--trusted-proxy`), the address that proxy says it forwarded for in
//! `X-Forwarded-For` (or `Forwarded`, `--trusted-proxy-header`). Computed once per request ([`layer`]) and used by everything keyed by
//! the client's address: refused credentials ([`crate::admission::AuthFailures`]), the
//! per-caller rate of anonymous callers and the change feed's per-caller cap
//! ([`crate::admission::caller_key`]); not `/dev/token`'s loopback check, which refuses
//! forwarded requests ([`ClientForwarded`]).
//!
//! The walk (as nginx's `set_real_ip_from` with `real_ip_recursive on`):
//! - A peer outside every trusted range is the client; its headers are not read.
//! - Otherwise the header is read from the right (several header lines are one list, in
//!   order): each proxy appends the address it received the request from, so the
//!   entries on the right were written by trusted hops and those on the left by whoever
//!   sent the request, possibly the client itself. A trusted entry is skipped; the first
//!   one that is not trusted is the client.
//! - An entry the walk reaches that is not an address (garbage, `unknown`, an obfuscated
//!   `_name`, an empty element, a `Forwarded` element without exactly one `for=`, a line
//!   that is not UTF-8) ends it: the client is the last trusted hop, the proxy that wrote
//!   it. Nothing left of such an entry is believed.
//! - No header, or every entry trusted: the client is the last trusted hop (the left-most
//!   entry, or the peer itself).
//!
//! A forwarded request is marked ([`ClientForwarded`]): its address is what a header says,
//! which a proxy that does not append to it passes on as the client wrote it, so
//! `/dev/token` (loopback callers only) refuses every forwarded request.
//!
//! An entry may be an IPv4 or IPv6 address, an IPv6 address in brackets, or either with a
//! port (`192.0.2.1:4711`, `[2001:db8::1]:4711`); the port is dropped. In `Forwarded`
//! (RFC 7239) an entry is the `for=` parameter of an element, quoted or not
//! (`for=192.0.2.1;proto=https`, `for="[2001:db8::1]:4711"`); its other parameters are not
//! read. IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`, what a dual-stack listener
//! reports) count as their IPv4 address, in ranges, peers and entries alike.
//!
//! One header is read, the one `--trusted-proxy-header` names (`X-Forwarded-For` by
//! default, or `Forwarded`); never both, nor `X-Real-IP` or a vendor's header. A proxy that
//! writes one of them passes the others on as the client sent them, so reading a second
//! header would let a client choose its address.
//!
//! Not `axum-client-ip`: it takes the right-most `X-Forwarded-For` entry from every peer
//! (a client that reaches the server directly chooses its address) and skips no trusted
//! hops, so it fits neither a server that may be reached both directly and through a
//! proxy nor a chain of proxies. `ipnet` parses and matches the ranges.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use ipnet::{IpNet, Ipv4Net};

use crate::App;

/// The header read from trusted proxies by default.
pub const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// The standard header (RFC 7239) that may be read instead.
pub const FORWARDED: &str = "forwarded";

/// Which header trusted proxies write (`--trusted-proxy-header`): the one read, the other
/// ignored.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2`.
    #[default]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1;proto=https` (RFC 7239).
    Forwarded,
}

impl ForwardedHeader {
    /// The header's name.
    pub fn name(self) -> &'static str {
        match self {
            ForwardedHeader::XForwardedFor => X_FORWARDED_FOR,
            ForwardedHeader::Forwarded => FORWARDED,
        }
    }

    /// The address of one comma-separated element; `None` when it holds none.
    fn entry(self, element: &str) -> Option<IpAddr> {
        match self {
            ForwardedHeader::XForwardedFor => parse_entry(element),
            ForwardedHeader::Forwarded => parse_forwarded_element(element),
        }
    }
}

/// A range of proxies whose `X-Forwarded-For` is believed: one `--trusted-proxy` value, a
/// CIDR range (`10.0.0.0/8`, `2001:db8::/32`) or a bare address (a /32 or /128).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrustedProxy(IpNet);

/// A `--trusted-proxy` value that is not an address or a range; the message says what is
/// allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{given:?} {why}: give an IPv4 or IPv6 address (192.0.2.10, 2001:db8::10) or a CIDR range (10.0.0.0/8, 2001:db8::/32)")]
pub struct BadProxyRange {
    given: String,
    why: String,
}

impl TrustedProxy {
    /// The range.
    pub fn net(&self) -> IpNet {
        self.0
    }

    /// Whether this range trusts every address (`0.0.0.0/0`, `::/0`): then any client can
    /// choose its address.
    pub fn is_everything(&self) -> bool {
        self.0.prefix_len() == 0
    }

    fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip)
    }
}

impl FromStr for TrustedProxy {
    type Err = BadProxyRange;

    fn from_str(s: &str) -> Result<TrustedProxy, BadProxyRange> {
        let bad = |why: &str| BadProxyRange {
            given: s.to_owned(),
            why: why.to_owned(),
        };
        let t = s.trim();
        let net = if t.contains('/') {
            let net: IpNet = t
                .parse()
                .map_err(|_| bad("is not a CIDR range of a valid address and prefix length"))?;
            if net.trunc() != net {
                return Err(bad(&format!(
                    "has bits set past its prefix length (did you mean {}?)",
                    net.trunc()
                )));
            }
            net
        } else {
            let ip: IpAddr = t.parse().map_err(|_| bad("is not an address"))?;
            IpNet::from(ip)
        };
        Ok(TrustedProxy(canonical_net(net)))
    }
}

impl fmt::Display for TrustedProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An IPv4-mapped IPv6 range (`::ffff:10.0.0.0/104`) as its IPv4 range, since addresses
/// are compared in their canonical form.
fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(n) if n.prefix_len() >= 96 => match n.network().to_ipv4_mapped() {
            Some(v4) => Ipv4Net::new(v4, n.prefix_len() - 96).map_or(net, IpNet::V4),
            None => net,
        },
        _ => net,
    }
}

/// The client address of a request from `peer` with these headers, given the trusted
/// proxies and the header they write (see the module doc for the walk). Without trusted
/// proxies: `peer`.
pub fn client_addr(
    trusted: &[TrustedProxy],
    header: ForwardedHeader,
    peer: IpAddr,
    headers: &HeaderMap,
) -> IpAddr {
    let mut hop = peer.to_canonical();
    if !is_trusted(trusted, hop) {
        return hop;
    }
    for line in headers.get_all(header.name()).iter().rev() {
        let Ok(line) = std::str::from_utf8(line.as_bytes()) else {
            return hop;
        };
        for entry in line.rsplit(',') {
            let Some(addr) = header.entry(entry) else {
                return hop;
            };
            if !is_trusted(trusted, addr) {
                return addr;
            }
            hop = addr;
        }
    }
    hop
}

/// Whether `ip` is in a trusted range: a hop of the walk, or a peer whose requests are
/// forwarded (their [`ClientAddr`] comes from a header, or is the proxy's own).
pub fn is_trusted(trusted: &[TrustedProxy], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    trusted.iter().any(|t| t.contains(ip))
}

/// One entry (an `X-Forwarded-For` element, a `Forwarded` `for=` value): an address, a
/// bracketed IPv6 address, or either with a port; `None` for anything else.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let e = entry.trim_matches([' ', '\t']);
    let ip = e
        .parse::<IpAddr>()
        .ok()
        .or_else(|| e.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            e.strip_prefix('[')?
                .strip_suffix(']')?
                .parse::<Ipv6Addr>()
                .ok()
                .map(IpAddr::V6)
        })?;
    Some(ip.to_canonical())
}

/// One `Forwarded` element's `for=` address (`for=192.0.2.1;proto=https`,
/// `For="[2001:db8::1]:4711"`); `None` without exactly one `for=` or when it is not an
/// address.
fn parse_forwarded_element(element: &str) -> Option<IpAddr> {
    let mut value = None;
    for pair in element.split(';') {
        let (name, v) = pair.split_once('=')?;
        if name.trim_matches([' ', '\t']).eq_ignore_ascii_case("for") {
            if value.is_some() {
                return None;
            }
            value = Some(v.trim_matches([' ', '\t']));
        }
    }
    let v = value?;
    let v = match v.strip_prefix('"') {
        Some(quoted) => quoted.strip_suffix('"')?,
        None => v,
    };
    parse_entry(v)
}

/// The client's address of a request, in its extensions (set by [`layer`]; absent when the
/// router is served without the peer's address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

impl ClientAddr {
    /// The client address [`layer`] put in `req`'s extensions.
    pub fn of(req: &Request) -> Option<IpAddr> {
        req.extensions().get::<ClientAddr>().map(|c| c.0)
    }
}

/// In a request's extensions (set by [`layer`]) when a trusted proxy forwarded it: its
/// [`ClientAddr`] is then what the proxies' header says, good enough to key limits by, but
/// not proof of where the request came from. A proxy configured to append the address it
/// received the request from writes the truth; one that does not (nginx without
/// `proxy_set_header X-Forwarded-For`) passes on whatever the client wrote, a loopback
/// address included, or nothing. The two cannot be told apart here, so a check that the
/// caller is local (`/dev/token`) refuses every forwarded request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientForwarded;

/// Middleware on every route: puts the request's [`ClientAddr`] in its extensions, from the
/// peer's address (`ConnectInfo`, set by the accept loop) and `--trusted-proxy`.
pub async fn layer(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    if let Some(peer) = peer {
        let c = &app.config;
        let addr = client_addr(
            &c.trusted_proxies,
            c.trusted_proxy_header,
            peer,
            req.headers(),
        );
        req.extensions_mut().insert(ClientAddr(addr));
        if is_trusted(&c.trusted_proxies, peer) {
            req.extensions_mut().insert(ClientForwarded);
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ranges(list: &[&str]) -> Vec<TrustedProxy> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn lines_of(name: &'static str, lines: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for l in lines {
            h.append(name, HeaderValue::from_bytes(l).unwrap());
        }
        h
    }

    fn xff(lines: &[&[u8]]) -> HeaderMap {
        lines_of(X_FORWARDED_FOR, lines)
    }

    /// The client of a request from `peer` with these `X-Forwarded-For` lines.
    fn walk(trusted: &[&str], peer: &str, lines: &[&str]) -> IpAddr {
        let lines: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
        let xff = ForwardedHeader::XForwardedFor;
        client_addr(&ranges(trusted), xff, ip(peer), &self::xff(&lines))
    }

    /// The client of a request from `peer` with these `Forwarded` lines, read as `header`.
    fn walk_forwarded(
        header: ForwardedHeader,
        trusted: &[&str],
        peer: &str,
        lines: &[&str],
    ) -> IpAddr {
        let lines: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
        client_addr(
            &ranges(trusted),
            header,
            ip(peer),
            &lines_of(FORWARDED, &lines),
        )
    }

    #[test]
    fn ranges_and_bare_addresses_parse() {
        let p = |s: &str| s.parse::<TrustedProxy>().unwrap().to_string();
        assert_eq!(p("10.0.0.0/8"), "10.0.0.0/8");
        assert_eq!(p("192.0.2.7"), "192.0.2.7/32");
        assert_eq!(p(" 127.0.0.1 "), "127.0.0.1/32");
        assert_eq!(p("2001:db8::/32"), "2001:db8::/32");
        assert_eq!(p("2001:db8::7"), "2001:db8::7/128");
        assert_eq!(p("::1"), "::1/128");
        // IPv4-mapped IPv6 ranges are their IPv4 ranges (addresses are compared so).
        assert_eq!(p("::ffff:10.0.0.0/104"), "10.0.0.0/8");
        assert_eq!(p("::ffff:192.0.2.7"), "192.0.2.7/32");
        assert!("0.0.0.0/0".parse::<TrustedProxy>().unwrap().is_everything());
        assert!(!"10.0.0.0/8"
            .parse::<TrustedProxy>()
            .unwrap()
            .is_everything());
    }

    #[test]
    fn bad_values_are_refused_saying_what_is_allowed() {
        for bad in [
            "",
            "proxy.example",
            "10.0.0.0/33",
            "2001:db8::/129",
            "10.0.0/8",
            "10.0.0.0/",
            "/8",
            "10.0.0.0/8/8",
            "192.0.2.7:80",
            "[::1]",
            "fe80::1%eth0",
            "10.0.0.0/-1",
        ] {
            let e = bad.parse::<TrustedProxy>().unwrap_err().to_string();
            assert!(
                e.contains(&format!("{bad:?}")) && e.contains("CIDR range (10.0.0.0/8"),
                "{bad}: {e}"
            );
        }
        let e = "10.1.2.3/8"
            .parse::<TrustedProxy>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("did you mean 10.0.0.0/8?"), "{e}");
    }

    #[test]
    fn without_trusted_proxies_or_from_an_untrusted_peer_the_header_is_ignored() {
        assert_eq!(walk(&[], "192.0.2.1", &["198.51.100.1"]), ip("192.0.2.1"));
        assert_eq!(
            walk(&["10.0.0.0/8"], "192.0.2.1", &["198.51.100.1"]),
            ip("192.0.2.1")
        );
        // A mapped peer is its IPv4 address, trusted or not.
        assert_eq!(walk(&[], "::ffff:192.0.2.1", &[]), ip("192.0.2.1"));
        assert_eq!(
            walk(&["127.0.0.1"], "::ffff:127.0.0.1", &["198.51.100.1"]),
            ip("198.51.100.1")
        );
    }

    #[test]
    fn the_right_most_untrusted_entry_is_the_client_and_spoofed_left_entries_are_ignored() {
        let t = ["127.0.0.1", "10.0.0.0/8"];
        assert_eq!(walk(&t, "127.0.0.1", &["198.51.100.1"]), ip("198.51.100.1"));
        // The client wrote the left entries itself.
        assert_eq!(
            walk(&t, "127.0.0.1", &["1.1.1.1, 10.0.0.9, 198.51.100.1"]),
            ip("198.51.100.1")
        );
        // Trusted hops on the right are skipped.
        assert_eq!(
            walk(
                &t,
                "127.0.0.1",
                &["6.6.6.6, 198.51.100.1, 10.0.0.2,10.0.0.3"]
            ),
            ip("198.51.100.1")
        );
        // Several lines are one list, in order: the last line is the right end.
        assert_eq!(
            walk(&t, "127.0.0.1", &["6.6.6.6, 198.51.100.1", "10.0.0.2"]),
            ip("198.51.100.1")
        );
        assert_eq!(
            walk(&t, "127.0.0.1", &["198.51.100.1", "203.0.113.5, 10.0.0.2"]),
            ip("203.0.113.5")
        );
    }

    #[test]
    fn no_header_or_only_trusted_entries_give_the_last_trusted_hop() {
        let t = ["127.0.0.1", "10.0.0.0/8"];
        assert_eq!(walk(&t, "127.0.0.1", &[]), ip("127.0.0.1"));
        assert_eq!(
            walk(&t, "127.0.0.1", &["10.0.0.4, 10.0.0.2"]),
            ip("10.0.0.4")
        );
    }

    #[test]
    fn ipv6_brackets_and_ports() {
        let t = ["::1", "2001:db8:ffff::/48", "127.0.0.1"];
        assert_eq!(
            walk(&t, "::1", &["2001:db8::7, 2001:db8:ffff::2"]),
            ip("2001:db8::7")
        );
        assert_eq!(walk(&t, "::1", &["[2001:db8::7]"]), ip("2001:db8::7"));
        assert_eq!(walk(&t, "::1", &["[2001:db8::7]:4711"]), ip("2001:db8::7"));
        assert_eq!(
            walk(&t, "127.0.0.1", &["198.51.100.1:50123"]),
            ip("198.51.100.1")
        );
        // A mapped entry is its IPv4 address (so a mapped trusted hop is skipped too).
        assert_eq!(
            walk(&t, "::1", &["::ffff:198.51.100.1, ::ffff:127.0.0.1"]),
            ip("198.51.100.1")
        );
        // An IPv6 client is returned whole (the refused-credentials table keys it by /64).
        assert_eq!(
            walk(&t, "127.0.0.1", &["\t2001:db8:1:2:3:4:5:6 "]),
            ip("2001:db8:1:2:3:4:5:6")
        );
    }

    #[test]
    fn an_entry_that_is_not_an_address_ends_the_walk_at_the_last_trusted_hop() {
        let t = ["127.0.0.1", "10.0.0.0/8"];
        for garbage in [
            "unknown",
            "",
            " ",
            "_hidden",
            "198.51.100.300",
            "[198.51.100.1]",
            "[2001:db8::1",
            "fe80::1%eth0",
            "198.51.100.1:99999",
            "for=198.51.100.1",
            "\"198.51.100.1\"",
        ] {
            // Right after the proxy: the proxy is the client.
            assert_eq!(
                walk(&t, "127.0.0.1", &[&format!("6.6.6.6, {garbage}")]),
                ip("127.0.0.1"),
                "{garbage:?}"
            );
            // After a trusted hop: that hop, never the entry left of the garbage.
            assert_eq!(
                walk(&t, "127.0.0.1", &[&format!("6.6.6.6,{garbage},10.0.0.2")]),
                ip("10.0.0.2"),
                "{garbage:?}"
            );
            // Left of the client: never reached.
            assert_eq!(
                walk(&t, "127.0.0.1", &[&format!("{garbage}, 198.51.100.1")]),
                ip("198.51.100.1"),
                "{garbage:?}"
            );
        }
        // A trailing comma is an empty element where the walk starts.
        assert_eq!(walk(&t, "127.0.0.1", &["198.51.100.1,"]), ip("127.0.0.1"));
        // An empty line and a line that is not UTF-8.
        assert_eq!(walk(&t, "127.0.0.1", &[""]), ip("127.0.0.1"));
        let h = xff(&[b"6.6.6.6", b"10.0.0.2, \xff\xfe", b"10.0.0.3"]);
        let xff = ForwardedHeader::XForwardedFor;
        assert_eq!(
            client_addr(&ranges(&t), xff, ip("127.0.0.1"), &h),
            ip("10.0.0.3")
        );
        // A long run of garbage does not panic and is not believed.
        let long = format!("{}, 198.51.100.1", ",".repeat(10_000));
        assert_eq!(walk(&t, "127.0.0.1", &[&long]), ip("198.51.100.1"));
        let long = format!("198.51.100.1{}", ", 10.0.0.1".repeat(10_000));
        assert_eq!(walk(&t, "127.0.0.1", &[&long]), ip("198.51.100.1"));
    }

    #[test]
    fn forwarded_is_read_only_when_named_and_its_for_parameter_is_the_entry() {
        use ForwardedHeader::{Forwarded, XForwardedFor};
        let t = ["127.0.0.1", "10.0.0.0/8", "2001:db8:ffff::/48"];
        let p = "127.0.0.1";
        // Not named: ignored, whatever it says.
        assert_eq!(
            walk_forwarded(XForwardedFor, &t, p, &["for=198.51.100.1"]),
            ip(p)
        );
        // Named: the right-most untrusted `for=`, other parameters not read.
        let f = |lines: &[&str]| walk_forwarded(Forwarded, &t, p, lines);
        assert_eq!(f(&["for=198.51.100.1"]), ip("198.51.100.1"));
        assert_eq!(
            f(&["for=6.6.6.6, For=198.51.100.1;proto=https;by=10.0.0.1, for=10.0.0.2"]),
            ip("198.51.100.1")
        );
        assert_eq!(
            f(&["proto=http; for=\"198.51.100.1:4711\" ;host=a.example"]),
            ip("198.51.100.1")
        );
        assert_eq!(
            f(&["for=\"[2001:db8::7]:4711\", for=\"[2001:db8:ffff::1]\""]),
            ip("2001:db8::7")
        );
        assert_eq!(
            f(&["for=6.6.6.6, for=198.51.100.1", "for=10.0.0.2"]),
            ip("198.51.100.1")
        );
        // No header: the proxy.
        assert_eq!(f(&[]), ip(p));
        // An element the walk reaches without exactly one usable `for=`: the last trusted
        // hop, never the element left of it.
        for bad in [
            "for=unknown",
            "for=_hidden",
            "for=\"198.51.100.1",
            "for=",
            "proto=https",
            "by=10.0.0.1",
            "for=198.51.100.1;for=198.51.100.2",
            "for=198.51.100.1;proto",
            "198.51.100.1",
            "",
            "for=\"198.51.100.1\"x",
        ] {
            assert_eq!(f(&[&format!("for=6.6.6.6, {bad}")]), ip(p), "{bad:?}");
            assert_eq!(
                f(&[&format!("for=6.6.6.6,{bad},for=10.0.0.2")]),
                ip("10.0.0.2"),
                "{bad:?}"
            );
        }
        // X-Forwarded-For is not read when Forwarded is named.
        let h = xff(&[b"198.51.100.1"]);
        assert_eq!(client_addr(&ranges(&t), Forwarded, ip(p), &h), ip(p));
    }
}
