//! NetworkPolicy: a pod no policy isolates passes everything, on the fast
//! path's cheap branch (no connection remembered, no verdict counted),
//! whether it has no `POLICY_ENDPOINTS` entry or one with no isolation.
use sluice_common::{
    maps::programs::{FROM_POD, FROM_UPLINK, TO_POD},
    policy::EndpointPolicy,
};
use sluice_node::datapath::policy_maps::PolicyEndpoints;
use sluice_tests::prog_test::{
    ip,
    policy::{PolicyNode, A, B, B_RULES, REMOTE},
    Ipv4, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_UNSPEC,
};

#[test]
fn a_pod_no_policy_isolates_passes_and_leaves_no_connection() {
    let n = PolicyNode::new().unwrap();
    for entry in [None, Some(EndpointPolicy { rules_id: B_RULES, flags: 0 })] {
        if let Some(e) = entry {
            PolicyEndpoints::open(n.dp.pins()).unwrap().insert(ip(B), e).unwrap();
        }
        let run = |prog, ifindex, frame: Vec<u8>| n.dp.run(prog, ifindex, &frame).unwrap().action;
        let (a, b) = (&n.a, &n.b);
        assert_eq!(run(FROM_POD, a.host.ifindex, Ipv4::tcp_syn(A, B, 40000, 80).frame(a.sends())), TC_ACT_REDIRECT);
        assert_eq!(run(FROM_POD, b.host.ifindex, Ipv4::tcp_syn(B, A, 40000, 80).frame(b.sends())), TC_ACT_REDIRECT);
        assert_eq!(run(FROM_POD, b.host.ifindex, Ipv4::udp(B, REMOTE, 40000, 53).frame(b.sends())), TC_ACT_REDIRECT);
        assert_eq!(run(FROM_POD, b.host.ifindex, Ipv4::udp(B, "8.8.8.8", 40000, 53).frame(b.sends())), TC_ACT_OK);
        let uplink = n.dp.uplink.ifindex;
        assert_eq!(run(FROM_UPLINK, uplink, Ipv4::tcp_syn(REMOTE, B, 1, 80).frame(n.from_peer())), TC_ACT_REDIRECT);
        assert_eq!(run(TO_POD, b.host.ifindex, Ipv4::icmp("8.8.8.8", B).frame(n.from_stack(b))), TC_ACT_UNSPEC);
        assert_eq!(n.dp.connections().unwrap(), [], "{entry:?}: nothing to remember");
        assert_eq!(n.dp.verdicts().unwrap(), [], "{entry:?}: nothing judged");
        assert_eq!(n.drops().unwrap(), []);
    }
}
