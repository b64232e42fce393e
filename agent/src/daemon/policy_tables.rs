//! The policy reconciler's tables on the pinned maps (`PolicyTables` over
//! `sluice_node::datapath::policy_maps`): a full map (`MapFull`, E2BIG) is
//! `TableError::Full`, naming it, so the reconciler fails closed.
//!
//! The reconciler's keys are of either family: an IPv4 one goes to
//! `POLICY_IDENTITIES` / `POLICY_ENDPOINTS`, an IPv6 one to their twins
//! `POLICY_IDENTITIES6` / `POLICY_ENDPOINTS6` (`read` joins both).
use std::net::IpAddr;

use anyhow::Result;
use ipnetwork::IpNetwork;
use sluice_common::{
    maps::names,
    policy::{EndpointPolicy, PodPolicy, PolicyValue},
};
use sluice_node::datapath::{
    pinned_maps::MapFull,
    pins::PinDir,
    policy_maps::{
        PolicyEndpoints, PolicyEndpoints6, PolicyIdentities, PolicyIdentities6, PolicyPods, PolicyRules, PolicyState,
    },
};

use crate::{
    policy::entries::RuleKey,
    reconcile::policy_maps::{Actual, PodEntry, PolicyTables, TableError},
};

pub struct PinnedPolicyTables {
    identities: PolicyIdentities,
    identities6: PolicyIdentities6,
    endpoints: PolicyEndpoints,
    endpoints6: PolicyEndpoints6,
    rules: PolicyRules,
    pods: PolicyPods,
    state: PolicyState,
}

impl PinnedPolicyTables {
    pub fn open(pins: &PinDir) -> Result<Self> {
        Ok(Self {
            identities: PolicyIdentities::open(pins)?,
            identities6: PolicyIdentities6::open(pins)?,
            endpoints: PolicyEndpoints::open(pins)?,
            endpoints6: PolicyEndpoints6::open(pins)?,
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
            identities: (self.identities.all()?.into_iter().map(|(p, id)| (IpNetwork::V4(p), id)))
                .chain(self.identities6.all()?.into_iter().map(|(p, id)| (IpNetwork::V6(p), id)))
                .collect(),
            endpoints: (self.endpoints.all()?.into_iter().map(|(ip, e)| (IpAddr::V4(ip), e)))
                .chain(self.endpoints6.all()?.into_iter().map(|(ip, e)| (IpAddr::V6(ip), e)))
                .collect(),
            rules: self.rules.all()?.into_iter().map(|((prefix, key), v)| ((key, prefix), v)).collect(),
            pods: self
                .pods
                .all()?
                .into_iter()
                .map(|(k, v)| {
                    (k, PodEntry { endpoint: v.endpoint, identity: v.identity, identity6: v.identity_for_ipv6() })
                })
                .collect(),
        })
    }
    fn put_identity(&mut self, prefix: IpNetwork, identity: u32) -> Result<(), TableError> {
        match prefix {
            IpNetwork::V4(p) => {
                self.identities.insert(p, identity).map_err(|e| table_error(names::POLICY_IDENTITIES, e))
            }
            IpNetwork::V6(p) => {
                self.identities6.insert(p, identity).map_err(|e| table_error(names::POLICY_IDENTITIES6, e))
            }
        }
    }
    fn del_identity(&mut self, prefix: IpNetwork) -> Result<(), TableError> {
        match prefix {
            IpNetwork::V4(p) => self.identities.remove(p),
            IpNetwork::V6(p) => self.identities6.remove(p),
        }
        .map_err(TableError::Other)
    }
    fn put_rule(&mut self, (key, prefix): RuleKey, value: PolicyValue) -> Result<(), TableError> {
        self.rules.insert(prefix, key, value).map_err(|e| table_error(names::POLICY_RULES, e))
    }
    fn del_rule(&mut self, (key, prefix): RuleKey) -> Result<(), TableError> {
        self.rules.remove(prefix, key).map_err(TableError::Other)
    }
    fn put_endpoint(&mut self, ip: IpAddr, entry: EndpointPolicy) -> Result<(), TableError> {
        match ip {
            IpAddr::V4(ip) => self.endpoints.insert(ip, entry).map_err(|e| table_error(names::POLICY_ENDPOINTS, e)),
            IpAddr::V6(ip) => self.endpoints6.insert(ip, entry).map_err(|e| table_error(names::POLICY_ENDPOINTS6, e)),
        }
    }
    fn del_endpoint(&mut self, ip: IpAddr) -> Result<(), TableError> {
        match ip {
            IpAddr::V4(ip) => self.endpoints.remove(ip),
            IpAddr::V6(ip) => self.endpoints6.remove(ip),
        }
        .map_err(TableError::Other)
    }
    fn put_pod(&mut self, name: &str, entry: PodEntry) -> Result<(), TableError> {
        let (ns, n) = split(name)?;
        let value = PodPolicy { endpoint: entry.endpoint, identity: entry.identity, identity6: entry.identity6 };
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
