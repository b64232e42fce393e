//! Which interface is the uplink when no `--uplink` is given (pure): the
//! one holding the IPv4 default route, as before; on a node without one
//! (an IPv6-only node), the one holding the IPv6 default route.
use std::fmt;

/// Where the chosen uplink came from (logged at start).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UplinkFrom {
    Ipv4DefaultRoute,
    Ipv6DefaultRoute,
}

impl fmt::Display for UplinkFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UplinkFrom::Ipv4DefaultRoute => "the IPv4 default route",
            UplinkFrom::Ipv6DefaultRoute => "the IPv6 default route",
        })
    }
}

/// Neither family has a default route to take the uplink from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no --uplink given and neither an IPv4 nor an IPv6 default route to pick one from: name it with --uplink")]
pub struct NoDefaultRoute;

/// The uplink from the default routes' interfaces (`None`: no such route).
/// IPv4's wins when both exist, so a node that has one keeps the uplink it
/// always had, even if IPv6's default leaves by another interface.
pub fn choose<L>(ipv4_default: Option<L>, ipv6_default: Option<L>) -> Result<(L, UplinkFrom), NoDefaultRoute> {
    match (ipv4_default, ipv6_default) {
        (Some(l), _) => Ok((l, UplinkFrom::Ipv4DefaultRoute)),
        (None, Some(l)) => Ok((l, UplinkFrom::Ipv6DefaultRoute)),
        (None, None) => Err(NoDefaultRoute),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_default_first_then_ipv6_default_else_a_named_error() {
        let cases = [
            (Some("eth0"), Some("eth1"), Ok(("eth0", UplinkFrom::Ipv4DefaultRoute))),
            (Some("eth0"), None, Ok(("eth0", UplinkFrom::Ipv4DefaultRoute))),
            // An IPv6-only node: its only default route is IPv6's.
            (None, Some("ens5"), Ok(("ens5", UplinkFrom::Ipv6DefaultRoute))),
            (None, None, Err(NoDefaultRoute)),
        ];
        for (v4, v6, want) in cases {
            assert_eq!(choose(v4, v6), want, "IPv4 default {v4:?}, IPv6 default {v6:?}");
        }
        let err = choose::<&str>(None, None).unwrap_err().to_string();
        assert!(err.contains("--uplink") && err.contains("IPv6 default route"), "{err}");
        assert_eq!(UplinkFrom::Ipv6DefaultRoute.to_string(), "the IPv6 default route");
    }
}
