//! What the kernel says a device's `clsact` hooks run: the `cls_bpf`
//! filters, read back over rtnetlink (`tc filter show dev X ingress`), so
//! CHECK and `status` judge a legacy tc attachment by the kernel's word
//! rather than by its marker pin alone.
use anyhow::{Context, Result};
use futures::TryStreamExt;
use netlink_packet_route::tc::{TcAttribute, TcFilterBpfOption, TcOption};

use super::netlink::Netlink;

/// One `cls_bpf` filter on a hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BpfFilter {
    pub priority: u16,
    pub handle: u32,
    /// The program it runs (the kernel names it from 4.13 on).
    pub prog_id: Option<u32>,
    pub prog_name: Option<String>,
}

impl Netlink {
    /// The `cls_bpf` filters on `ifindex`'s ingress (`ingress`) or egress
    /// `clsact` hook. A device without the qdisc has none.
    pub async fn bpf_filters(&self, ifindex: u32, ingress: bool) -> Result<Vec<BpfFilter>> {
        let request = self.handle.traffic_filter(ifindex as i32).get();
        let request = if ingress { request.ingress() } else { request.egress() };
        let mut stream = request.execute();
        let mut out = Vec::new();
        loop {
            let msg = match stream.try_next().await {
                Ok(Some(msg)) => msg,
                Ok(None) => break,
                // No clsact qdisc: nothing to list.
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == libc::EINVAL => break,
                Err(e) => return Err(e).with_context(|| format!("list tc filters of ifindex {ifindex}")),
            };
            let is_bpf = msg.attributes.iter().any(|a| matches!(a, TcAttribute::Kind(k) if k == "bpf"));
            if !is_bpf {
                continue;
            }
            let mut filter = BpfFilter {
                priority: (msg.header.info >> 16) as u16,
                handle: (u32::from(msg.header.handle.major) << 16) | u32::from(msg.header.handle.minor),
                prog_id: None,
                prog_name: None,
            };
            for attr in &msg.attributes {
                if let TcAttribute::Options(options) = attr {
                    for option in options {
                        match option {
                            TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => filter.prog_id = Some(*id),
                            TcOption::Bpf(TcFilterBpfOption::ProgName(name)) => filter.prog_name = Some(name.clone()),
                            _ => {}
                        }
                    }
                }
            }
            out.push(filter);
        }
        Ok(out)
    }
}
