//! Every failure the plugin reports, and the one place spec codes are chosen.
use serde_json::json;

use crate::{config::ConfigError, env::EnvError};

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error(transparent)]
    Env(#[from] EnvError),
    #[error(transparent)]
    Config(ConfigError),
    #[error("incompatible CNI version: {0}")]
    Version(String),
    #[error("{0}")]
    PoolExhausted(String),
    #[error("datapath not ready: {0:#}")]
    DatapathNotReady(anyhow::Error),
    #[error("{0}")]
    NotAvailable(String),
    #[error("{0:#}")]
    Ipam(anyhow::Error),
    /// The conflist's `podCIDR` is not this node's (a stale conflist).
    #[error(transparent)]
    StalePodCidr(crate::node_cidr::CidrMismatch),
    /// The node's `ENDPOINTS` map has no room for another pod.
    #[error("{0:#}")]
    EndpointsFull(anyhow::Error),
    /// A NetworkPolicy map (`POLICY_IDENTITIES`, `POLICY_ENDPOINTS`) has no
    /// room for the pod's entries: the pod is not made (fail closed).
    #[error("{0:#}")]
    PolicyMapFull(anyhow::Error),
    #[error("{0:#}")]
    Plugin(anyhow::Error),
}

impl From<ConfigError> for CniError {
    fn from(e: ConfigError) -> Self {
        match e {
            ConfigError::Version(v) => CniError::Version(v),
            other => CniError::Config(other),
        }
    }
}

impl CniError {
    /// The CNI spec's error codes; plugin-specific ones start at 100.
    pub fn code(&self) -> u32 {
        match self {
            CniError::Version(_) => 1,
            CniError::Env(_) => 4,
            CniError::Config(ConfigError::Decode(_)) => 6,
            CniError::Config(_) => 7,
            // The spec's "invalid network config": this node's is another.
            CniError::StalePodCidr(_) => 7,
            // The agent may still be starting: the runtime should retry.
            CniError::DatapathNotReady(_) => 11,
            CniError::NotAvailable(_) => 50,
            CniError::PoolExhausted(_) => 100,
            CniError::Ipam(_) => 101,
            CniError::EndpointsFull(_) => 103,
            CniError::PolicyMapFull(_) => 104,
            CniError::Plugin(_) => 102,
        }
    }

    fn short(&self) -> &'static str {
        match self {
            CniError::Version(_) => "incompatible CNI version",
            CniError::Env(_) => "invalid environment variables",
            CniError::Config(ConfigError::Decode(_)) => "failed to decode network configuration",
            CniError::Config(_) => "invalid network configuration",
            CniError::StalePodCidr(_) => "invalid network configuration: podCIDR is not this node's",
            CniError::PoolExhausted(_) => "no free pod addresses",
            CniError::DatapathNotReady(_) => "sluice datapath not ready on this node; try again later",
            CniError::NotAvailable(_) => "plugin not available",
            CniError::Ipam(_) => "IPAM failure",
            CniError::EndpointsFull(_) => "this node's endpoint map is full",
            CniError::PolicyMapFull(_) => "this node's NetworkPolicy maps are full; the pod is not made (fail closed)",
            CniError::Plugin(_) => "sluice failed",
        }
    }

    /// The error JSON the spec asks for on stdout.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        json!({
            "cniVersion": cni_version,
            "code": self.code(),
            "msg": self.short(),
            "details": self.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        assert_eq!(CniError::from(ConfigError::Version("9".into())).code(), 1);
        assert_eq!(CniError::from(ConfigError::Decode("x".into())).code(), 6);
        assert_eq!(CniError::from(ConfigError::Field { field: "mtu", problem: "bad".into() }).code(), 7);
        assert_eq!(CniError::Env(EnvError::Missing("CNI_IFNAME")).code(), 4);
        let j = CniError::PoolExhausted("10.0.0.0/30 full".into()).to_json("1.0.0");
        assert_eq!(j["code"], 100);
        assert_eq!(j["details"], "10.0.0.0/30 full");
    }
}
