//! One ICMP echo, on a raw socket (root), in whatever network namespace the
//! calling thread is in: ICMP for IPv4, ICMPv6 for IPv6 (`ping_any` picks).
//! Used by `connectivity-test`; no `ping` binary.
use std::{
    mem::size_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

/// One echo to `dst`, ICMP or ICMPv6 by its family.
pub fn ping_any(dst: IpAddr, timeout: Duration, seq: u16) -> Result<Duration, String> {
    match dst {
        IpAddr::V4(ip) => ping(ip, timeout, seq),
        IpAddr::V6(ip) => ping6(ip, timeout, seq),
    }
}

const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;

/// An ICMPv6 echo request. Its checksum stays zero: on a raw ICMPv6 socket
/// the kernel always fills it in (RFC 3542 3.1), pseudo-header included.
pub fn echo_request6(id: u16, seq: u16) -> Vec<u8> {
    let mut p = vec![ICMPV6_ECHO_REQUEST, 0, 0, 0];
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(b"sluice-probe-0123");
    p
}

/// Is `icmp6` (an ICMPv6 message: a raw ICMPv6 socket delivers no IPv6
/// header), received from `src`, the echo reply to our request to `dst`?
pub fn is_reply6(icmp6: &[u8], src: Ipv6Addr, dst: Ipv6Addr, id: u16, seq: u16) -> bool {
    icmp6.len() >= 8
        && src == dst
        && icmp6[0] == ICMPV6_ECHO_REPLY
        && icmp6[4..6] == id.to_be_bytes()
        && icmp6[6..8] == seq.to_be_bytes()
}

/// `ping`'s IPv6 twin.
pub fn ping6(dst: Ipv6Addr, timeout: Duration, seq: u16) -> Result<Duration, String> {
    let id = (std::process::id() & 0xffff) as u16;
    let socket = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::RAW, Some(socket2::Protocol::ICMPV6))
        .map_err(|e| format!("raw ICMPv6 socket: {e}"))?;
    socket.set_read_timeout(Some(Duration::from_millis(50))).map_err(|e| e.to_string())?;
    let to = std::net::SocketAddr::from((dst, 0));
    let start = Instant::now();
    socket.send_to(&echo_request6(id, seq), &to.into()).map_err(|e| format!("send: {e}"))?;
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1500];
    while start.elapsed() < timeout {
        let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
        // SAFETY: recv_from initialised the first `n` bytes.
        let got: Vec<u8> = buf[..n].iter().map(|b| unsafe { b.assume_init() }).collect();
        let src = from.as_socket_ipv6().map(|a| *a.ip());
        if src.is_some_and(|src| is_reply6(&got, src, dst, id, seq)) {
            return Ok(start.elapsed());
        }
    }
    Err("no reply".to_string())
}

/// Internet checksum (RFC 1071) over `data`.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for pair in data.chunks(2) {
        let word =
            if pair.len() == 2 { u16::from_be_bytes([pair[0], pair[1]]) } else { u16::from_be_bytes([pair[0], 0]) };
        sum += word as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An echo request with identifier `id` and sequence `seq`.
pub fn echo_request(id: u16, seq: u16) -> Vec<u8> {
    let mut p = vec![8, 0, 0, 0];
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(b"sluice-probe-0123");
    let c = checksum(&p);
    p[2..4].copy_from_slice(&c.to_be_bytes());
    p
}

/// Is `packet` (IPv4 header included, as a raw socket delivers it) the echo
/// reply to our request from `from`?
pub fn is_reply(packet: &[u8], from: Ipv4Addr, id: u16, seq: u16) -> bool {
    if packet.len() < 20 {
        return false;
    }
    let ihl = (packet[0] & 0x0f) as usize * 4;
    if packet.len() < ihl + 8 || packet[12..16] != from.octets() {
        return false;
    }
    let icmp = &packet[ihl..];
    icmp[0] == 0 && icmp[4..6] == id.to_be_bytes() && icmp[6..8] == seq.to_be_bytes()
}

/// Send one echo request to `dst` and wait up to `timeout` for the reply.
/// Returns the round-trip time or why not.
pub fn ping(dst: Ipv4Addr, timeout: Duration, seq: u16) -> Result<Duration, String> {
    let id = (std::process::id() & 0xffff) as u16;
    // SAFETY: plain socket syscalls on an fd we own and close below.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_ICMP);
        if fd < 0 {
            return Err(format!("raw ICMP socket: {}", std::io::Error::last_os_error()));
        }
        let result = (|| {
            let tv = libc::timeval { tv_sec: 0, tv_usec: 50_000 };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                size_of::<libc::timeval>() as u32,
            );
            let addr = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: 0,
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(dst.octets()) },
                sin_zero: [0; 8],
            };
            let req = echo_request(id, seq);
            let start = Instant::now();
            let sent = libc::sendto(
                fd,
                req.as_ptr() as *const libc::c_void,
                req.len(),
                0,
                &addr as *const _ as *const libc::sockaddr,
                size_of::<libc::sockaddr_in>() as u32,
            );
            if sent < 0 {
                return Err(format!("send: {}", std::io::Error::last_os_error()));
            }
            let mut buf = [0u8; 1500];
            while start.elapsed() < timeout {
                let n = libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0);
                if n > 0 && is_reply(&buf[..n as usize], dst, id, seq) {
                    return Ok(start.elapsed());
                }
            }
            Err("no reply".to_string())
        })();
        libc::close(fd);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_checksums_to_zero() {
        let p = echo_request(0x1234, 7);
        assert_eq!(checksum(&p), 0, "a packet with its checksum in place sums to zero");
        assert_eq!(p[0], 8);
    }

    #[test]
    fn reply_matching() {
        let mut pkt = vec![0x45, 0, 0, 36, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1];
        pkt.extend_from_slice(&[0, 0, 0, 0, 0x12, 0x34, 0, 7]);
        let from: Ipv4Addr = "10.0.0.2".parse().unwrap();
        assert!(is_reply(&pkt, from, 0x1234, 7));
        assert!(!is_reply(&pkt, from, 0x1234, 8));
        assert!(!is_reply(&pkt, "10.0.0.3".parse().unwrap(), 0x1234, 7));
        pkt[20] = 8; // a request, not a reply
        assert!(!is_reply(&pkt, from, 0x1234, 7));
    }

    #[test]
    fn reply_matching6() {
        let dst: Ipv6Addr = "fd00:244:0:2::1".parse().unwrap();
        let req = echo_request6(0x1234, 7);
        assert_eq!(req[0], 128);
        let mut reply = req.clone();
        reply[0] = 129;
        assert!(is_reply6(&reply, dst, dst, 0x1234, 7));
        assert!(!is_reply6(&reply, "fd00::9".parse().unwrap(), dst, 0x1234, 7), "from another address");
        assert!(!is_reply6(&reply, dst, dst, 0x1234, 8), "another sequence");
        assert!(!is_reply6(&req, dst, dst, 0x1234, 7), "a request, not a reply");
        assert!(!is_reply6(&reply[..6], dst, dst, 0x1234, 7), "truncated");
    }
}
