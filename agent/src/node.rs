//! This node's configuration and its validation (pure).
use std::path::PathBuf;

use ipnetwork::Ipv4Network;

/// What the agent needs to know about its node.
#[derive(Clone, Debug, clap::Args)]
pub struct NodeConfig {
    /// This node's name (Kubernetes gives it as NODE_NAME).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// The interface that carries traffic to other nodes.
    #[arg(long, env = "SLUICE_UPLINK")]
    pub uplink: String,
    /// Pod CIDR of this node: pods get addresses from it.
    #[arg(long, env = "SLUICE_POD_CIDR")]
    pub pod_cidr: Ipv4Network,
    /// The cluster's whole pod range; every node's pod CIDR lies inside it.
    #[arg(long, env = "SLUICE_CLUSTER_CIDR")]
    pub cluster_cidr: Ipv4Network,
    /// bpffs directory for this node's maps, programs and links.
    #[arg(long, env = "SLUICE_PIN_DIR", default_value = crate::pins::DEFAULT_ROOT)]
    pub pin_dir: PathBuf,
    /// Where the CNI plugin keeps IPAM state (written into the conflist).
    #[arg(long, env = "SLUICE_DATA_DIR", default_value = "/var/lib/sluice")]
    pub data_dir: PathBuf,
    /// Directory to write `10-sluice.conflist` into, once the datapath is up.
    #[arg(long, env = "SLUICE_CNI_CONF_DIR")]
    pub cni_conf_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NodeConfigError {
    #[error("pod CIDR {0} has host bits set: use {1}")]
    PodCidrNotNetwork(Ipv4Network, Ipv4Network),
    #[error("pod CIDR {pod} is not inside the cluster CIDR {cluster}")]
    PodCidrOutsideCluster { pod: Ipv4Network, cluster: Ipv4Network },
    #[error("pod CIDR {0} is too small: it needs room for at least one pod (/30 or larger)")]
    PodCidrTooSmall(Ipv4Network),
    #[error("node name is empty")]
    EmptyNodeName,
}

impl NodeConfig {
    pub fn validate(&self) -> Result<(), NodeConfigError> {
        if self.node_name.is_empty() {
            return Err(NodeConfigError::EmptyNodeName);
        }
        let network = Ipv4Network::new(self.pod_cidr.network(), self.pod_cidr.prefix())
            .expect("prefix came from a valid network");
        if network.ip() != self.pod_cidr.ip() {
            return Err(NodeConfigError::PodCidrNotNetwork(self.pod_cidr, network));
        }
        if self.pod_cidr.prefix() > 30 {
            return Err(NodeConfigError::PodCidrTooSmall(self.pod_cidr));
        }
        if !(self.cluster_cidr.contains(self.pod_cidr.network())
            && self.cluster_cidr.prefix() <= self.pod_cidr.prefix())
        {
            return Err(NodeConfigError::PodCidrOutsideCluster { pod: self.pod_cidr, cluster: self.cluster_cidr });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pod: &str, cluster: &str) -> NodeConfig {
        NodeConfig {
            node_name: "n1".into(),
            uplink: "eth0".into(),
            pod_cidr: pod.parse().unwrap(),
            cluster_cidr: cluster.parse().unwrap(),
            pin_dir: "/sys/fs/bpf/x".into(),
            data_dir: "/tmp".into(),
            cni_conf_dir: None,
        }
    }

    #[test]
    fn validation() {
        assert_eq!(cfg("10.244.1.0/24", "10.244.0.0/16").validate(), Ok(()));
        assert!(matches!(
            cfg("10.244.1.7/24", "10.244.0.0/16").validate(),
            Err(NodeConfigError::PodCidrNotNetwork(..))
        ));
        assert!(matches!(
            cfg("10.245.1.0/24", "10.244.0.0/16").validate(),
            Err(NodeConfigError::PodCidrOutsideCluster { .. })
        ));
        assert!(matches!(
            cfg("10.0.0.0/8", "10.244.0.0/16").validate(),
            Err(NodeConfigError::PodCidrOutsideCluster { .. })
        ));
        assert!(matches!(cfg("10.244.1.0/31", "10.244.0.0/16").validate(), Err(NodeConfigError::PodCidrTooSmall(_))));
    }
}
