//! Bring `NODE_ROUTES` to the desired state.
use anyhow::Result;
use tracing::info;

use super::diff::{diff_routes, RouteDiff, Routes};
use crate::maps::NodeRoutes;

/// Read the map, diff against `desired`, apply. Returns what changed.
pub fn reconcile(map: &mut NodeRoutes, desired: &Routes) -> Result<RouteDiff> {
    let actual = map.all()?;
    let diff = diff_routes(desired, &actual);
    // Upserts first: a CIDR that moves between nodes is never absent.
    for (cidr, node_ip) in &diff.upsert {
        map.upsert(*cidr, *node_ip)?;
    }
    for cidr in &diff.remove {
        map.remove(*cidr)?;
    }
    if !diff.is_empty() {
        info!(
            upserted = diff.upsert.len(),
            removed = diff.remove.len(),
            total = desired.len(),
            "node routes reconciled"
        );
    }
    Ok(diff)
}
