//! Registry hygiene (docs/registry.md, "Which instances are ignored"): anyone who can write
//! the registry can point callers at an address, so a Redis instance is routed to only when
//! its service name, id and host pass these checks. Static entries of the config are the
//! operator's own and are never checked.
//!
//! The checks run on the control plane, when the routing table is built; the request path
//! only ever sees instances that passed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::schema::Instance;

/// Why a registry instance is ignored: the `reason` label of
/// `meshlet_registry_rejected_total`, a fixed set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The service name or instance id is outside `[A-Za-z0-9._-]{1,128}`.
    BadName,
    /// The host is neither an IP literal nor a DNS name (or is a number a resolver would
    /// read as an IPv4 address, such as `2130706433` or `127.1`).
    BadHost,
    /// `0.0.0.0/8` or `::` (a connect to them reaches this machine).
    Unspecified,
    /// `169.254.0.0/16` or `fe80::/10` (cloud metadata services live there).
    LinkLocal,
    /// A multicast address.
    Multicast,
    /// `127.0.0.0/8`, `::1` or `localhost`, while `registry.allow_loopback` is false.
    Loopback,
    /// One of this meshlet's own listeners (a request loop, or its local API).
    OwnListener,
}

impl Reason {
    /// Every reason, for docs and tests.
    pub const ALL: [Reason; 7] = [
        Reason::BadName,
        Reason::BadHost,
        Reason::Unspecified,
        Reason::LinkLocal,
        Reason::Multicast,
        Reason::Loopback,
        Reason::OwnListener,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::BadName => "bad_name",
            Reason::BadHost => "bad_host",
            Reason::Unspecified => "unspecified",
            Reason::LinkLocal => "link_local",
            Reason::Multicast => "multicast",
            Reason::Loopback => "loopback",
            Reason::OwnListener => "own_listener",
        }
    }
}

/// A service name or instance id as the registry contract spells them:
/// `[A-Za-z0-9._-]{1,128}`.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// This meshlet's own listeners, which it must never dial.
#[derive(Clone, Debug, Default)]
pub struct OwnListeners {
    /// The bound addresses (outbound, inbound, api, telemetry).
    pub bound: Vec<SocketAddr>,
    /// Addresses of this machine besides loopback on which a listener bound to `0.0.0.0`
    /// or `::` also answers: `POD_IP` and the `service.advertise` IP, when known.
    pub local_ips: Vec<IpAddr>,
    /// This meshlet's own registration (service, instance id): left out of its own table
    /// like any instance at its listeners, but expected, so neither logged nor counted.
    pub registration: Option<(String, String)>,
}

impl OwnListeners {
    /// Whether `ip:port` reaches one of the listeners.
    fn contains(&self, ip: IpAddr, port: u16) -> bool {
        self.bound.iter().any(|own| {
            own.port() == port
                && (own.ip() == ip
                    || (own.ip().is_unspecified()
                        && (ip.is_loopback() || self.local_ips.contains(&ip))))
        })
    }
}

/// What a table build checks Redis instances against.
#[derive(Clone, Debug, Default)]
pub struct Hygiene {
    /// `registry.allow_loopback`, resolved.
    pub allow_loopback: bool,
    /// This meshlet's listeners (none before they are bound).
    pub own: OwnListeners,
}

/// What a registry host is, after parsing.
enum Host {
    Ip(IpAddr),
    /// A DNS name that always means this machine (`localhost`, `*.localhost`).
    LoopbackName,
    /// Any other DNS name: resolved when dialled.
    Name,
}

impl Hygiene {
    /// Whether `instance` of `service` is this meshlet's own registration.
    pub fn is_own_registration(&self, service: &str, instance: &Instance) -> bool {
        self.own
            .registration
            .as_ref()
            .is_some_and(|(s, id)| s == service && *id == instance.id)
    }

    /// `Ok` when `instance` of `service` may be routed to, else why not.
    pub fn check(&self, service: &str, instance: &Instance) -> Result<(), Reason> {
        if !valid_name(service) || !valid_name(&instance.id) {
            return Err(Reason::BadName);
        }
        // The addresses a dial would reach, as far as the spelling tells (a DNS name is
        // resolved only when dialled).
        let ips: [Option<IpAddr>; 2] = match parse_host(&instance.host).ok_or(Reason::BadHost)? {
            Host::Ip(ip) => {
                check_ip(ip)?;
                [Some(canonical(ip)), None]
            }
            Host::LoopbackName => [
                Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            ],
            Host::Name => [None, None],
        };
        let ips = ips.iter().flatten();
        if ips.clone().any(|ip| self.own.contains(*ip, instance.port)) {
            return Err(Reason::OwnListener);
        }
        if !self.allow_loopback && ips.clone().any(IpAddr::is_loopback) {
            return Err(Reason::Loopback);
        }
        Ok(())
    }
}

/// An IPv4 address written as IPv6 (`::ffff:a.b.c.d`, the old `::a.b.c.d`, or the NAT64
/// prefix `64:ff9b::a.b.c.d`) as IPv4, since it reaches that IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) if v6.is_loopback() || v6.is_unspecified() => ip,
        IpAddr::V6(v6) if v6.segments()[..6] == [0x64, 0xff9b, 0, 0, 0, 0] => {
            let [.., a, b, c, d] = v6.octets();
            IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d))
        }
        IpAddr::V6(v6) => match v6.to_ipv4() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        IpAddr::V4(_) => ip,
    }
}

/// Cloud metadata services outside the link-local ranges (Alibaba's 100.100.100.200, AWS's
/// IPv6 `fd00:ec2::254`): counted as link-local, since they answer the same questions.
fn is_metadata_service(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.octets() == [100, 100, 100, 200],
        IpAddr::V6(v6) => v6.segments() == [0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254],
    }
}

/// The address classes never dialled, loopback aside (that depends on the config).
fn check_ip(ip: IpAddr) -> Result<(), Reason> {
    if is_metadata_service(canonical(ip)) {
        return Err(Reason::LinkLocal);
    }
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            if a == 0 {
                Err(Reason::Unspecified)
            } else if a == 169 && b == 254 {
                Err(Reason::LinkLocal)
            } else if v4.is_multicast() {
                Err(Reason::Multicast)
            } else {
                Ok(())
            }
        }
        IpAddr::V6(v6) => {
            if v6.is_unspecified() {
                Err(Reason::Unspecified)
            } else if v6.segments()[0] & 0xffc0 == 0xfe80 {
                Err(Reason::LinkLocal)
            } else if v6.is_multicast() {
                Err(Reason::Multicast)
            } else {
                Ok(())
            }
        }
    }
}

/// An IP literal (IPv6 without brackets, as the hash spells it) or a DNS name: labels of
/// 1–63 of `A-Z a-z 0-9 - _`, 253 bytes at most, one trailing dot allowed, the last label
/// starting with a letter (so no resolver reads it as a number: `127.1`, `0x7f.1`).
fn parse_host(host: &str) -> Option<Host> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(Host::Ip(ip));
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() || name.len() > 253 {
        return None;
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
    };
    if !name.split('.').all(label_ok) {
        return None;
    }
    let last = name.rsplit('.').next().unwrap_or("");
    if !last.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    let lower = name.to_ascii_lowercase();
    let loopback = matches!(
        lower.as_str(),
        "localhost" | "localhost.localdomain" | "ip6-localhost" | "ip6-loopback"
    ) || lower.ends_with(".localhost");
    Some(if loopback {
        Host::LoopbackName
    } else {
        Host::Name
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Protocol;
    use crate::registry::Status;

    fn inst(id: &str, host: &str, port: u16) -> Instance {
        Instance {
            id: id.to_owned(),
            host: host.to_owned(),
            port,
            version: String::new(),
            status: Status::Up,
            protocol: Protocol::Http1,
            metadata: serde_json::json!({}),
            registered_at: 0,
            last_heartbeat: 0,
            expires_at: Some(1),
        }
    }

    fn verdict(h: &Hygiene, host: &str, port: u16) -> Result<(), Reason> {
        h.check("inventory", &inst("inv-1", host, port))
    }

    #[test]
    fn address_classes_that_are_never_dialled() {
        let h = Hygiene {
            allow_loopback: true,
            own: OwnListeners::default(),
        };
        for (host, reason) in [
            ("0.0.0.0", Reason::Unspecified),
            ("0.1.2.3", Reason::Unspecified),
            ("::", Reason::Unspecified),
            ("::ffff:0.0.0.0", Reason::Unspecified),
            ("169.254.169.254", Reason::LinkLocal),
            ("::ffff:169.254.169.254", Reason::LinkLocal),
            ("::ffff:a9fe:a9fe", Reason::LinkLocal),
            ("fe80::1", Reason::LinkLocal),
            ("febf::1", Reason::LinkLocal),
            ("100.100.100.200", Reason::LinkLocal),
            ("fd00:ec2::254", Reason::LinkLocal),
            ("64:ff9b::a9fe:a9fe", Reason::LinkLocal),
            ("64:ff9b::e000:1", Reason::Multicast),
            ("224.0.0.1", Reason::Multicast),
            ("239.255.255.250", Reason::Multicast),
            ("ff02::1", Reason::Multicast),
            ("", Reason::BadHost),
            ("fe80::1%eth0", Reason::BadHost),
            ("2130706433", Reason::BadHost),
            ("127.1", Reason::BadHost),
            ("0x7f.1", Reason::BadHost),
            ("0x7f000001", Reason::BadHost),
            ("a..b", Reason::BadHost),
            ("-a.example", Reason::BadHost),
            ("evil.example/x", Reason::BadHost),
            ("evil.example:80", Reason::BadHost),
            ("user@evil.example", Reason::BadHost),
            ("a b", Reason::BadHost),
            ("[::1]", Reason::BadHost),
        ] {
            assert_eq!(verdict(&h, host, 80), Err(reason), "{host:?}");
        }
        let long = format!("{}.example", "a".repeat(64));
        assert_eq!(verdict(&h, &long, 80), Err(Reason::BadHost));
        for host in [
            "10.0.0.7",
            "192.168.1.2",
            "2001:db8::7",
            "fec0::1",
            "127.0.0.1",
            "::1",
            "localhost",
            "inventory",
            "inventory.ns.svc.cluster.local",
            "inventory.ns.svc.cluster.local.",
            "10-0-0-7.ns.pod.cluster.local",
            "my_project_web_1",
        ] {
            assert_eq!(verdict(&h, host, 80), Ok(()), "{host:?}");
        }
    }

    #[test]
    fn loopback_follows_allow_loopback() {
        let h = Hygiene {
            allow_loopback: false,
            own: OwnListeners::default(),
        };
        for host in [
            "127.0.0.1",
            "127.9.9.9",
            "::1",
            "::ffff:127.0.0.1",
            "localhost",
            "LocalHost.",
            "x.localhost",
            "ip6-localhost",
        ] {
            assert_eq!(verdict(&h, host, 80), Err(Reason::Loopback), "{host:?}");
        }
        assert_eq!(verdict(&h, "10.0.0.7", 80), Ok(()));
    }

    #[test]
    fn names_outside_the_alphabet() {
        let h = Hygiene::default();
        let ok = inst("inv-1", "10.0.0.7", 80);
        assert_eq!(h.check("inventory", &ok), Ok(()));
        for service in ["", "a/b", "a:b", "a b", "ä", &"a".repeat(129)] {
            assert_eq!(h.check(service, &ok), Err(Reason::BadName), "{service:?}");
        }
        for id in ["", "x:y", "x\ny", &"a".repeat(129)] {
            let bad = inst(id, "10.0.0.7", 80);
            assert_eq!(h.check("inventory", &bad), Err(Reason::BadName), "{id:?}");
        }
        assert_eq!(
            h.check("inventory", &inst(&"a".repeat(128), "10.0.0.7", 80)),
            Ok(())
        );
    }

    #[test]
    fn own_listeners_are_never_dialled() {
        let h = Hygiene {
            allow_loopback: true,
            own: OwnListeners {
                bound: vec![
                    "127.0.0.1:15001".parse().unwrap(),
                    "127.0.0.1:15000".parse().unwrap(),
                    "0.0.0.0:15020".parse().unwrap(),
                    "[::]:15006".parse().unwrap(),
                ],
                local_ips: vec!["10.0.0.7".parse().unwrap()],
                registration: None,
            },
        };
        for (host, port) in [
            ("127.0.0.1", 15001),
            ("::ffff:127.0.0.1", 15001),
            ("localhost", 15001),
            ("127.0.0.1", 15000),
            ("127.0.0.1", 15020),
            ("127.0.0.2", 15020),
            ("::1", 15020),
            ("localhost", 15020),
            ("10.0.0.7", 15020),
            ("10.0.0.7", 15006),
            ("127.0.0.1", 15006),
        ] {
            assert_eq!(
                verdict(&h, host, port),
                Err(Reason::OwnListener),
                "{host}:{port}"
            );
        }
        for (host, port) in [
            ("127.0.0.2", 15001),
            ("127.0.0.1", 15002),
            ("10.0.0.8", 15020),
            ("10.0.0.7", 15001),
            ("inventory", 15001),
        ] {
            assert_eq!(verdict(&h, host, port), Ok(()), "{host}:{port}");
        }
    }

    #[test]
    fn allow_loopback_defaults_to_whether_the_registry_redis_is_on_this_machine() {
        use crate::config::{RedisUrl, RegistryConfig, Secret};
        let with = |url: &str, explicit: Option<bool>| RegistryConfig {
            redis: Some(RedisUrl(Secret::from(url))),
            allow_loopback: explicit,
            ..RegistryConfig::default()
        };
        for url in [
            "redis://127.0.0.1:6379/0",
            "redis://127.0.0.2",
            "redis://localhost:6379",
            "redis://LOCALHOST.",
            "redis://user:p@ss:w@127.0.0.1:6379/0",
            "redis://[::1]:6379/0",
            "rediss://127.0.0.1",
            "unix:///var/run/redis.sock",
        ] {
            assert!(with(url, None).allow_loopback(), "{url}");
            assert!(!with(url, Some(false)).allow_loopback(), "{url}");
        }
        for url in [
            "redis://10.255.255.1:6379/0",
            "redis://redis.mesh:6379/0",
            "redis://127.0.0.1@redis.mesh:6379",
            "redis://localhost.evil.example",
            "redis://[::2]:6379",
            "redis://",
        ] {
            assert!(!with(url, None).allow_loopback(), "{url}");
            assert!(with(url, Some(true)).allow_loopback(), "{url}");
        }
        assert!(!RegistryConfig::default().allow_loopback());
    }

    #[test]
    fn every_reason_has_its_own_label() {
        let mut labels: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), Reason::ALL.len());
    }
}
