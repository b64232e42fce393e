//! The names behind the numbers the datapath reports: `policy_ref` →
//! NetworkPolicy namespace/name, pod IPv4 → namespace/name. The policy loop
//! writes it (`<data dir>/policy-names.json`, atomically) after each pass
//! that changed it; `monitor --type policy` and `status --policy` read it,
//! and the loop reads it back at start so a policy keeps its `policy_ref`
//! (and the maps their entries) across restarts.
use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::model::{PodKey, PolicyModel, PolicyName};

pub const FILE_NAME: &str = "policy-names.json";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamesTable {
    /// `policy_ref` → "namespace/name".
    pub policies: BTreeMap<u32, String>,
    /// Every known pod's address (all nodes) → "namespace/name".
    pub pods: BTreeMap<IpAddr, String>,
}

impl NamesTable {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(FILE_NAME)
    }

    pub fn new(policies: BTreeMap<u32, PolicyName>, pods: BTreeMap<IpAddr, PodKey>) -> Self {
        Self {
            policies: policies.into_iter().map(|(r, n)| (r, n.to_string())).collect(),
            pods: pods.into_iter().map(|(ip, k)| (ip, k.to_string())).collect(),
        }
    }

    /// Every pod's addresses (host-network pods are their node, not a pod).
    pub fn pods_of(model: &PolicyModel) -> BTreeMap<IpAddr, PodKey> {
        model
            .pods
            .values()
            .filter(|p| !p.host_network)
            .flat_map(|p| p.ips.iter().map(move |&ip| (ip, p.key.clone())))
            .collect()
    }

    /// `policy_ref` → name, as `PolicyRefs::from_table` takes it.
    pub fn policy_table(&self) -> BTreeMap<u32, PolicyName> {
        self.policies
            .iter()
            .filter_map(|(&r, n)| n.split_once('/').map(|(ns, name)| (r, PolicyName::new(ns, name))))
            .collect()
    }

    pub fn policy(&self, policy_ref: u32) -> Option<&str> {
        self.policies.get(&policy_ref).map(String::as_str)
    }

    /// The pod at `ip` (either family).
    pub fn pod(&self, ip: impl Into<IpAddr>) -> Option<&str> {
        self.pods.get(&ip.into()).map(String::as_str)
    }

    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("parse {}", path.display()))
    }

    /// Write atomically (temp file, rename): a reader sees the old table or
    /// the new one.
    pub fn write(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(self)?).with_context(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn the_table_survives_a_round_trip_through_its_file() {
        let dir = std::env::temp_dir().join(format!("sluice-names-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let t = NamesTable::new(
            [(0, PolicyName::new("x", "allow-80")), (7, PolicyName::new("y", "deny"))].into(),
            [
                (Ipv4Addr::new(10, 244, 1, 5).into(), PodKey::new("x", "a")),
                ("fd00:244:1::5".parse().unwrap(), PodKey::new("x", "a")),
            ]
            .into(),
        );
        let path = NamesTable::path(&dir);
        t.write(&path).unwrap();
        let back = NamesTable::read(&path).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.policy(7), Some("y/deny"));
        assert_eq!(back.pod(Ipv4Addr::new(10, 244, 1, 5)), Some("x/a"));
        assert_eq!(back.pod("fd00:244:1::5".parse::<IpAddr>().unwrap()), Some("x/a"), "IPv6 addresses name pods too");
        assert_eq!(back.policy_table()[&0], PolicyName::new("x", "allow-80"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
