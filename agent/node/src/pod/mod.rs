//! A pod's attachment to the node: `plumbing` makes it (the steps of CNI
//! ADD, also used for the agent's health endpoint), `teardown` removes it
//! (CNI DEL and GC, the agent's sweep), `names` derives the interface names
//! both use from the container ID, so teardown needs no state; `device`
//! is the kind of pair (veth or netkit) and the programs each runs.
pub mod device;
pub mod names;
pub mod plumbing;
pub mod teardown;
