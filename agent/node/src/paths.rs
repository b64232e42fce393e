//! Default locations, one definition each: the agent's flags, the CNI
//! plugin's configuration defaults and the cleanup command all use these.

/// bpffs directory for this node's maps, programs and links.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/sluice";
/// Where bpffs is (or gets) mounted.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";
/// IPAM leases and the agent's state file.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/sluice";
/// The runtime's CNI plugin directory.
pub const DEFAULT_CNI_BIN_DIR: &str = "/opt/cni/bin";
/// The health endpoint's network namespace (under /run/netns).
pub const DEFAULT_HEALTH_NETNS: &str = "sluice-health";
/// The plugin's file name in the CNI bin directory: its `type`.
pub const PLUGIN_TYPE: &str = "sluice";
