//! Fragments of a UDP datagram through the uplink's translation
//! (`lb4_frag`, `LB4_FRAGS`): the first fragment is translated as any
//! datagram and remembered, the later ones (no UDP header) get the same
//! addresses and go the same way; the answer's fragments come back the
//! same. Expected bytes: the translated whole datagram, built by
//! etherparse, cut into the same fragments — so the first fragment's UDP
//! checksum, updated incrementally, must be the whole datagram's.
use sluice_common::{
    maps::programs::{FROM_POD, FROM_UPLINK},
    nat::{Nat4Counter, LB4_ENABLED},
};
use sluice_tests::prog_test::{
    lb4::{self, from_world, nat4_counter, WORLD},
    packet::{be16, edit_ipv4, hex},
    Ipv4, TestDatapath, L2, NODE_IP, TC_ACT_OK, TC_ACT_REDIRECT,
};

const NODE_PORT: u16 = 30053;
const UDP: u8 = 17;
/// Bytes of IP payload per fragment but the last (a 1500-byte MTU).
const CHUNK: usize = 1480;

/// A node translating UDP NodePort `NODE_PORT` to `backend:5353`.
fn node_with_node_port(backend: &str) -> TestDatapath {
    lb4::node_with_node_port(LB4_ENABLED, NODE_PORT, &[UDP], backend, 5353)
}

/// A 3,000-byte payload, every byte telling its place.
fn big() -> Vec<u8> {
    (0..3000u32).map(|i| (i % 251) as u8).collect()
}

/// `whole` (an Ethernet frame of one IPv4 datagram without options) cut
/// into fragments of `CHUNK` bytes of IP payload, as a sender's kernel
/// does: one IP id, DF clear, MF on all but the last.
fn fragments(whole: &[u8]) -> Vec<Vec<u8>> {
    let (head, payload) = whole.split_at(14 + 20);
    let chunks: Vec<&[u8]> = payload.chunks(CHUNK).collect();
    let last = chunks.len() - 1;
    chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            let mut f = head.to_vec();
            f.extend_from_slice(chunk);
            let tot_len = (20 + chunk.len()) as u16;
            let frag = if i < last { 0x2000 } else { 0 } | (i * CHUNK / 8) as u16;
            edit_ipv4(&mut f, 14, 20, |h| {
                h[2..4].copy_from_slice(&tot_len.to_be_bytes());
                h[6..8].copy_from_slice(&frag.to_be_bytes());
            });
            f
        })
        .collect()
}

fn l3(frame: &[u8]) -> String {
    hex(&frame[14..])
}

/// Run each of `sent` through `prog` on `ifindex`; each must be redirected
/// and leave as the matching fragment of `want`.
fn train(dp: &TestDatapath, prog: &str, ifindex: u32, sent: &[Vec<u8>], want: &[Vec<u8>]) {
    assert_eq!(sent.len(), want.len());
    for (i, (s, w)) in sent.iter().zip(want).enumerate() {
        let run = dp.run(prog, ifindex, s).unwrap();
        assert_eq!(run.action, TC_ACT_REDIRECT, "{prog}: fragment {i}, drops {:?}", dp.drops().unwrap());
        assert_eq!(l3(&run.packet), l3(w), "{prog}: fragment {i} as the translated datagram's");
    }
}

#[test]
fn every_fragment_reaches_the_local_backend_and_every_fragment_of_its_answer_comes_back() {
    let dp = node_with_node_port("10.244.1.3");
    let b = dp.add_pod("10.244.1.3").unwrap();
    let request = Ipv4::udp(WORLD, NODE_IP, 40000, NODE_PORT).payload(&big());
    let sent = fragments(&request.frame(from_world(&dp)));
    assert_eq!(sent.len(), 3);
    let dnated = Ipv4::udp(WORLD, "10.244.1.3", 40000, 5353).payload(&big()).ttl(63);
    train(&dp, FROM_UPLINK, dp.uplink.ifindex, &sent, &fragments(&dnated.frame(b.receives())));

    let answer = Ipv4::udp("10.244.1.3", WORLD, 5353, 40000).payload(&big());
    let reversed = Ipv4::udp(NODE_IP, WORLD, NODE_PORT, 40000).payload(&big()).ttl(63);
    train(&dp, FROM_POD, b.host.ifindex, &fragments(&answer.frame(b.sends())), &fragments(&reversed.frame(b.sends())));
    assert_eq!(nat4_counter(&dp, Nat4Counter::FragmentFirst), 2);
    assert_eq!(nat4_counter(&dp, Nat4Counter::FragmentForwarded), 4);
    assert_eq!(nat4_counter(&dp, Nat4Counter::FragmentPassed), 0);
    assert_eq!(dp.drops().unwrap(), []);
}

#[test]
fn every_fragment_reaches_a_remote_backend_snated_and_its_answer_comes_back() {
    // 10.244.2.0/24 is the native peer's (172.30.0.2).
    let dp = node_with_node_port("10.244.2.9");
    let request = Ipv4::udp(WORLD, NODE_IP, 40000, NODE_PORT).payload(&big());
    let sent = fragments(&request.frame(from_world(&dp)));
    let first = dp.run(FROM_UPLINK, dp.uplink.ifindex, &sent[0]).unwrap();
    assert_eq!(first.action, TC_ACT_REDIRECT);
    let snat_port = be16(&first.packet, 14 + 20);
    let snated = Ipv4::udp(NODE_IP, "10.244.2.9", snat_port, 5353).payload(&big()).ttl(63);
    let want = fragments(&snated.frame(from_world(&dp)));
    assert_eq!(l3(&first.packet), l3(&want[0]), "DNAT and SNAT of the first fragment");
    train(&dp, FROM_UPLINK, dp.uplink.ifindex, &sent[1..], &want[1..]);

    // The backend's answer, fragmented, from its node.
    let peer = L2::new([2, 0, 0, 0, 0, 2], dp.uplink.mac);
    let answer = Ipv4::udp("10.244.2.9", NODE_IP, 5353, snat_port).payload(&big());
    let reversed = Ipv4::udp(NODE_IP, WORLD, NODE_PORT, 40000).payload(&big()).ttl(63);
    train(&dp, FROM_UPLINK, dp.uplink.ifindex, &fragments(&answer.frame(peer)), &fragments(&reversed.frame(peer)));
    assert_eq!(nat4_counter(&dp, Nat4Counter::FragmentFirst), 2);
    assert_eq!(nat4_counter(&dp, Nat4Counter::FragmentForwarded), 4);
    assert_eq!(dp.drops().unwrap(), []);
}

#[test]
fn a_later_fragment_without_its_first_goes_to_the_stack_untouched() {
    let dp = node_with_node_port("10.244.2.9");
    let request = Ipv4::udp(WORLD, NODE_IP, 40000, NODE_PORT).payload(&big());
    let sent = fragments(&request.frame(from_world(&dp)));
    // Arrived before its first (or not a Service's: a host socket's).
    for f in &sent[1..] {
        let run = dp.run(FROM_UPLINK, dp.uplink.ifindex, f).unwrap();
        assert_eq!(run.action, TC_ACT_OK);
        assert_eq!(hex(&run.packet), hex(f), "untouched");
    }
    assert_eq!(nat4_counter(&dp, Nat4Counter::FragmentPassed), 2);
    assert_eq!(nat4_counter(&dp, Nat4Counter::FragmentForwarded), 0);
    assert_eq!(dp.drops().unwrap(), []);
}
