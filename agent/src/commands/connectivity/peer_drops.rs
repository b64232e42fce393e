//! A peer node's drop counters, read from its agent's metrics endpoint
//! (`sluice_drops_total`), so a probe that dies on the other node is
//! reported as "dropped at n2: <reason>", not only as a failure.
//! `parse` and `delta` are pure.
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::Duration,
};

/// `reason → count` from the Prometheus text of an agent's `/metrics`.
pub fn parse(text: &str) -> Vec<(String, u64)> {
    parse_family(text, "sluice_drops_total{", "reason")
}

/// `path → count` of the peer's forwarded packets.
pub fn parse_forwards(text: &str) -> Vec<(String, u64)> {
    parse_family(text, "sluice_forwarded_packets_total{", "path")
}

/// `label → count`, rows that differ only in other labels (a reason's
/// `direction`s) added together, in the order each label first appears.
fn parse_family(text: &str, prefix: &str, label: &str) -> Vec<(String, u64)> {
    let needle = format!("{label}=\"");
    let mut out: Vec<(String, u64)> = Vec::new();
    for (name, value) in text.lines().filter_map(|l| {
        let rest = l.strip_prefix(prefix)?;
        let name = rest.split(needle.as_str()).nth(1)?.split('"').next()?;
        let value = l.rsplit(' ').next()?.parse::<f64>().ok()?;
        Some((name, value as u64))
    }) {
        match out.iter_mut().find(|(n, _)| n == name) {
            Some((_, total)) => *total += value,
            None => out.push((name.to_string(), value)),
        }
    }
    out
}

/// Reasons whose count grew from `before` to `after`, with by how much.
pub fn delta(before: &[(String, u64)], after: &[(String, u64)]) -> Vec<(String, u64)> {
    after
        .iter()
        .filter_map(|(reason, n)| {
            let was = before.iter().find(|(r, _)| r == reason).map_or(0, |(_, b)| *b);
            (*n > was).then(|| (reason.clone(), n - was))
        })
        .collect()
}

/// A peer's counters at one moment.
#[derive(Clone, Debug, Default)]
pub struct PeerCounters {
    pub drops: Vec<(String, u64)>,
    pub forwards: Vec<(String, u64)>,
}

/// The peer's counters, or `None` if its metrics cannot be read (no agent
/// there, metrics off, a firewall): then nothing is claimed.
pub fn fetch(node_ip: Ipv4Addr, port: u16) -> Option<PeerCounters> {
    let addr = SocketAddr::from((node_ip, port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(PeerCounters { drops: parse(&body), forwards: parse_forwards(&body) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_subtracts() {
        let text = "# HELP sluice_drops Packets...\n# TYPE sluice_drops counter\n\
                    sluice_drops_total{reason=\"source_spoofed\",direction=\"ingress\"} 4\n\
                    sluice_drops_total{reason=\"ttl_expired\",direction=\"ingress\"} 0\n\
                    sluice_forwarded_packets_total{path=\"to_stack\"} 9\n";
        let after = parse(text);
        assert_eq!(after, vec![("source_spoofed".to_string(), 4), ("ttl_expired".to_string(), 0)]);
        let before = vec![("source_spoofed".to_string(), 1)];
        assert_eq!(delta(&before, &after), vec![("source_spoofed".to_string(), 3)]);
        assert!(delta(&after, &after).is_empty());
        assert_eq!(parse_forwards(text), vec![("to_stack".to_string(), 9)]);
    }

    #[test]
    fn a_reasons_directions_count_together() {
        let at = |ingress: u64, egress: u64| {
            format!(
                "sluice_drops_total{{reason=\"tunnel_key\",direction=\"ingress\"}} {ingress}\n\
                 sluice_drops_total{{reason=\"tunnel_key\",direction=\"egress\"}} {egress}\n\
                 sluice_drop_bytes_total{{reason=\"tunnel_key\",direction=\"egress\"}} 999\n"
            )
        };
        let (before, after) = (parse(&at(5, 0)), parse(&at(5, 2)));
        assert_eq!(after, vec![("tunnel_key".to_string(), 7)]);
        assert_eq!(delta(&before, &after), vec![("tunnel_key".to_string(), 2)], "the egress drops, once");
    }
}
