//! IP address management from the node's pod CIDR.
//! `allocator` decides which address (pure); `store` keeps the leases on
//! disk, one file per address, under an exclusive lock.
pub mod allocator;
pub mod store;
