//! Keeping `NODE_ROUTES` equal to cluster membership: `diff` decides (pure),
//! `apply` changes the map.
pub mod apply;
pub mod diff;
