//! The datapath from user space: where it is pinned (`pins`), mounting
//! bpffs (`bpffs`), loading the object (`loader`), TCX links (`links`), and
//! typed access to the pinned maps (`pinned_maps`).
pub mod bpffs;
pub mod links;
pub mod loader;
pub mod pinned_maps;
pub mod pins;

pub use loader::{Datapath, OBJECT};
