//! The network configuration the runtime passes on stdin, parsed and
//! validated field by field (pure: bytes in, `NetConf` or a named error out).
use std::path::PathBuf;

use ipnetwork::{Ipv4Network, Ipv6Network};
use serde::Deserialize;
use sluice_node::{paths, pod::device::PodDevice};

/// CNI versions this plugin speaks.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    /// The node's IPv4 pod CIDR (`"podCIDR"`); absent on an IPv6-only node
    /// (`--ip-family ipv6`), whose pods get no IPv4 address at all.
    pub pod_cidr: Option<Ipv4Network>,
    /// The node's IPv6 pod CIDR (`"podCIDR6"`), on a dual-stack node (each
    /// pod gets an address of each family) or an IPv6-only one.
    pub pod_cidr6: Option<Ipv6Network>,
    pub mtu: u32,
    /// The pod's device pair (`"device"`: `veth`, the default, or `netkit`).
    pub device: PodDevice,
    pub pin_dir: PathBuf,
    pub data_dir: PathBuf,
    /// The result of the plugins before this one in a chain (ADD, CHECK).
    pub prev_result: Option<serde_json::Value>,
    /// GC: the attachments the runtime still uses; every other one goes.
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// One entry of `cni.dev/valid-attachments`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("network config is not valid JSON: {0}")]
    Decode(String),
    #[error("network config field `{field}`: {problem}")]
    Field { field: &'static str, problem: String },
    #[error("cniVersion {0} is not supported (supported: {supported})", supported = SUPPORTED_VERSIONS.join(", "))]
    Version(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    cni_version: Option<String>,
    name: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(rename = "podCIDR")]
    pod_cidr: Option<serde_json::Value>,
    #[serde(rename = "podCIDR6")]
    pod_cidr6: Option<serde_json::Value>,
    mtu: Option<serde_json::Value>,
    device: Option<serde_json::Value>,
    pin_dir: Option<String>,
    data_dir: Option<String>,
    prev_result: Option<serde_json::Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<serde_json::Value>,
}

fn field(field: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Field { field, problem: problem.into() }
}

impl NetConf {
    pub fn parse(bytes: &[u8]) -> Result<Self, ConfigError> {
        let raw: Raw = serde_json::from_slice(bytes).map_err(|e| ConfigError::Decode(e.to_string()))?;
        let cni_version = raw.cni_version.ok_or_else(|| field("cniVersion", "missing"))?;
        if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(ConfigError::Version(cni_version));
        }
        let name = raw.name.ok_or_else(|| field("name", "missing"))?;
        if name.is_empty() {
            return Err(field("name", "empty"));
        }
        match raw.kind.as_deref() {
            Some(paths::PLUGIN_TYPE) => {}
            Some(other) => return Err(field("type", format!("is {other:?}, expected \"sluice\""))),
            None => return Err(field("type", "missing")),
        }
        let pod_cidr = match raw.pod_cidr {
            Some(serde_json::Value::String(s)) => Some(
                s.parse::<Ipv4Network>().map_err(|e| field("podCIDR", format!("{s:?} is not an IPv4 CIDR: {e}")))?,
            ),
            None | Some(serde_json::Value::Null) => None,
            Some(other) => {
                return Err(field("podCIDR", format!("must be a string like \"10.244.1.0/24\", got {other}")))
            }
        };
        if let Some(pod_cidr) = pod_cidr {
            if pod_cidr.network() != pod_cidr.ip() {
                return Err(field("podCIDR", format!("{pod_cidr} has host bits set")));
            }
            if pod_cidr.prefix() > 30 {
                return Err(field("podCIDR", format!("{pod_cidr} is too small (needs /30 or larger)")));
            }
        }
        let pod_cidr6 = match raw.pod_cidr6 {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(
                s.parse::<Ipv6Network>().map_err(|e| field("podCIDR6", format!("{s:?} is not an IPv6 CIDR: {e}")))?,
            ),
            Some(other) => {
                return Err(field("podCIDR6", format!("must be a string like \"fd00:244:1::/64\", got {other}")))
            }
        };
        if let Some(c) = pod_cidr6 {
            if c.network() != c.ip() {
                return Err(field("podCIDR6", format!("{c} has host bits set")));
            }
            if c.prefix() > 126 {
                return Err(field("podCIDR6", format!("{c} is too small (needs /126 or larger)")));
            }
        }
        if pod_cidr.is_none() && pod_cidr6.is_none() {
            // Without either a pod gets no address: "missing" names the
            // IPv4 one, which every node but an IPv6-only one has.
            return Err(field("podCIDR", "missing (an IPv6-only node's config has podCIDR6 instead)"));
        }
        let mtu = match raw.mtu {
            None => 1500,
            Some(v) => match v.as_u64() {
                Some(m) if (576..=65535).contains(&m) => m as u32,
                _ => return Err(field("mtu", format!("must be an integer from 576 to 65535, got {v}"))),
            },
        };
        let device = match raw.device {
            None => PodDevice::Veth,
            Some(serde_json::Value::String(s)) if PodDevice::parse(&s).is_some() => PodDevice::parse(&s).unwrap(),
            Some(v) => return Err(field("device", format!("must be \"veth\" or \"netkit\", got {v}"))),
        };
        let pin_dir = PathBuf::from(raw.pin_dir.unwrap_or_else(|| paths::DEFAULT_PIN_DIR.into()));
        let data_dir = PathBuf::from(raw.data_dir.unwrap_or_else(|| paths::DEFAULT_DATA_DIR.into()));
        for (name, p) in [("pinDir", &pin_dir), ("dataDir", &data_dir)] {
            if !p.is_absolute() {
                return Err(field(name, format!("{} is not an absolute path", p.display())));
            }
        }
        let prev_result = match raw.prev_result {
            None | Some(serde_json::Value::Null) => None,
            Some(v @ serde_json::Value::Object(_)) => {
                for key in ["interfaces", "ips", "routes"] {
                    if !(v[key].is_null() || v[key].is_array()) {
                        return Err(field("prevResult", format!("`{key}` must be a list")));
                    }
                }
                Some(v)
            }
            Some(other) => return Err(field("prevResult", format!("must be an object, got {other}"))),
        };
        let valid_attachments = match raw.valid_attachments {
            None => None,
            Some(v) => Some(serde_json::from_value::<Vec<Attachment>>(v).map_err(|e| {
                field("cni.dev/valid-attachments", format!("must be a list of {{containerID, ifname}}: {e}"))
            })?),
        };
        Ok(Self {
            cni_version,
            name,
            pod_cidr,
            pod_cidr6,
            mtu,
            device,
            pin_dir,
            data_dir,
            prev_result,
            valid_attachments,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"cniVersion":"1.0.0","name":"sluice","type":"sluice","podCIDR":"10.244.1.0/24",
        "mtu":1400,"pinDir":"/sys/fs/bpf/x","dataDir":"/var/lib/x"}"#;

    #[test]
    fn good() {
        let c = NetConf::parse(GOOD.as_bytes()).unwrap();
        assert_eq!(c.mtu, 1400);
        assert_eq!(c.pod_cidr, Some("10.244.1.0/24".parse().unwrap()));
        assert_eq!(c.pin_dir, PathBuf::from("/sys/fs/bpf/x"));
        assert_eq!(c.device, PodDevice::Veth, "veth unless asked");
        assert_eq!(c.pod_cidr6, None, "IPv4 only unless asked");
        let c = NetConf::parse(&with("podCIDR6", serde_json::json!("fd00:244:1::/64"))).unwrap();
        assert_eq!(c.pod_cidr6, Some("fd00:244:1::/64".parse().unwrap()));
        // IPv6-only: podCIDR6 alone.
        let mut v6only: serde_json::Value =
            serde_json::from_slice(&with("podCIDR6", serde_json::json!("fd00:244:1::/64"))).unwrap();
        v6only.as_object_mut().unwrap().remove("podCIDR");
        let c = NetConf::parse(&serde_json::to_vec(&v6only).unwrap()).unwrap();
        assert_eq!((c.pod_cidr, c.pod_cidr6), (None, Some("fd00:244:1::/64".parse().unwrap())));
        let c = NetConf::parse(&with("device", serde_json::json!("netkit"))).unwrap();
        assert_eq!(c.device, PodDevice::Netkit);
    }

    fn with(key: &str, value: serde_json::Value) -> Vec<u8> {
        let mut v: serde_json::Value = serde_json::from_str(GOOD).unwrap();
        if value.is_null() {
            v.as_object_mut().unwrap().remove(key);
        } else {
            v[key] = value;
        }
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn each_bad_field_is_named() {
        use serde_json::json;
        let cases = [
            ("cniVersion", json!(null), "cniVersion"),
            ("name", json!(""), "name"),
            ("type", json!("bridge"), "type"),
            ("podCIDR", json!("10.244.1.1/24"), "podCIDR"),
            ("podCIDR", json!("nonsense"), "podCIDR"),
            ("podCIDR", json!(5), "podCIDR"),
            // Neither family's CIDR: no address to give.
            ("podCIDR", json!(null), "podCIDR"),
            ("podCIDR", json!("10.0.0.0/31"), "podCIDR"),
            ("podCIDR6", json!("fd00:244:1::1/64"), "podCIDR6"),
            ("podCIDR6", json!("10.244.1.0/24"), "podCIDR6"),
            ("podCIDR6", json!("fd00::/127"), "podCIDR6"),
            ("podCIDR6", json!(6), "podCIDR6"),
            ("mtu", json!(10), "mtu"),
            ("mtu", json!("1500"), "mtu"),
            ("device", json!("tap"), "device"),
            ("device", json!(1), "device"),
            ("pinDir", json!("relative/dir"), "pinDir"),
            ("prevResult", json!("x"), "prevResult"),
            ("prevResult", json!({"ips": 5}), "prevResult"),
            ("cni.dev/valid-attachments", json!([{"containerID": 1}]), "cni.dev/valid-attachments"),
        ];
        for (key, value, want) in cases {
            match NetConf::parse(&with(key, value.clone())) {
                Err(ConfigError::Field { field, .. }) => assert_eq!(field, want, "{key}={value}"),
                other => panic!("{key}={value}: expected a field error, got {other:?}"),
            }
        }
    }

    #[test]
    fn gc_and_chaining_fields() {
        let c = NetConf::parse(&with(
            "cni.dev/valid-attachments",
            serde_json::json!([{"containerID": "a", "ifname": "eth0"}]),
        ))
        .unwrap();
        assert_eq!(c.valid_attachments.unwrap()[0].container_id, "a");
        let c = NetConf::parse(&with("prevResult", serde_json::json!({"interfaces": [], "ips": []}))).unwrap();
        assert!(c.prev_result.is_some());
    }

    #[test]
    fn version_and_decode() {
        assert!(matches!(
            NetConf::parse(&with("cniVersion", serde_json::json!("9.9.9"))),
            Err(ConfigError::Version(_))
        ));
        assert!(matches!(NetConf::parse(b"{not json"), Err(ConfigError::Decode(_))));
    }
}
