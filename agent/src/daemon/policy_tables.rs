//! The policy reconciler's tables on the pinned maps (`PolicyTables` over
//! `sluice_node::datapath::policy_maps`): a full map (`MapFull`, E2BIG) is
//! `TableError::Full`, naming it, so the reconciler fails closed.
use std::net::Ipv4Addr;

use anyhow::Result;
use ipnetwork::Ipv4Network;
use sluice_common::{
    maps::names,
    policy::{EndpointPolicy, PodPolicy, PolicyValue},
};
use sluice_node::datapath::{
    pinned_maps::MapFull,
    pins::PinDir,
    policy_maps::{PolicyEndpoints, PolicyIdentities, PolicyPods, PolicyRules, PolicyState},
};

use crate::{
    policy::entries::RuleKey,
    reconcile::policy_maps::{Actual, PodEntry, PolicyTables, TableError},
};

pub struct PinnedPolicyTables {
    identities: PolicyIdentities,
    endpoints: PolicyEndpoints,
    rules: PolicyRules,
    pods: PolicyPods,
    state: PolicyState,
}

impl PinnedPolicyTables {
    pub fn open(pins: &PinDir) -> Result<Self> {
        Ok(Self {
            identities: PolicyIdentities::open(pins)?,
            endpoints: PolicyEndpoints::open(pins)?,
            rules: PolicyRules::open(pins)?,
            pods: PolicyPods::open(pins)?,
            state: PolicyState::open(pins)?,
        })
    }
}

/// `MapFull` anywhere in the chain is a full `map`.
fn table_error(map: &'static str, e: anyhow::Error) -> TableError {
    if e.chain().any(|c| c.is::<MapFull>()) {
        TableError::Full(map)
    } else {
        TableError::Other(e)
    }
}

fn split(name: &str) -> Result<(&str, &str), TableError> {
    name.split_once('/').ok_or_else(|| TableError::Other(anyhow::anyhow!("pod name {name:?} is not namespace/name")))
}

impl PolicyTables for PinnedPolicyTables {
    fn read(&mut self) -> Result<Actual> {
        Ok(Actual {
            identities: self.identities.all()?,
            endpoints: self.endpoints.all()?,
            rules: self.rules.all()?.into_iter().map(|((prefix, key), v)| ((key, prefix), v)).collect(),
            pods: self
                .pods
                .all()?
                .into_iter()
                .map(|(k, v)| (k, PodEntry { endpoint: v.endpoint, identity: v.identity }))
                .collect(),
        })
    }
    fn put_identity(&mut self, prefix: Ipv4Network, identity: u32) -> Result<(), TableError> {
        self.identities.insert(prefix, identity).map_err(|e| table_error(names::POLICY_IDENTITIES, e))
    }
    fn del_identity(&mut self, prefix: Ipv4Network) -> Result<(), TableError> {
        self.identities.remove(prefix).map_err(TableError::Other)
    }
    fn put_rule(&mut self, (key, prefix): RuleKey, value: PolicyValue) -> Result<(), TableError> {
        self.rules.insert(prefix, key, value).map_err(|e| table_error(names::POLICY_RULES, e))
    }
    fn del_rule(&mut self, (key, prefix): RuleKey) -> Result<(), TableError> {
        self.rules.remove(prefix, key).map_err(TableError::Other)
    }
    fn put_endpoint(&mut self, ip: Ipv4Addr, entry: EndpointPolicy) -> Result<(), TableError> {
        self.endpoints.insert(ip, entry).map_err(|e| table_error(names::POLICY_ENDPOINTS, e))
    }
    fn del_endpoint(&mut self, ip: Ipv4Addr) -> Result<(), TableError> {
        self.endpoints.remove(ip).map_err(TableError::Other)
    }
    fn put_pod(&mut self, name: &str, entry: PodEntry) -> Result<(), TableError> {
        let (ns, n) = split(name)?;
        let value = PodPolicy { endpoint: entry.endpoint, identity: entry.identity, _pad: 0 };
        self.pods.insert(ns, n, value).map_err(|e| table_error(names::POLICY_PODS, e))
    }
    fn del_pod(&mut self, name: &str) -> Result<(), TableError> {
        let (ns, n) = split(name)?;
        self.pods.remove(ns, n).map_err(TableError::Other)
    }
    fn bump_epoch(&mut self) -> Result<(), TableError> {
        self.state.bump_epoch().map(drop).map_err(TableError::Other)
    }
}
