//! The CNI_* environment a runtime sets (pure: from any key → value lookup).
use std::path::PathBuf;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    /// Verbs about the network as a whole, not one container: they need no
    /// CNI_CONTAINERID, CNI_NETNS or CNI_IFNAME.
    pub fn is_network_wide(&self) -> bool {
        matches!(self, Command::Version | Command::Status | Command::Gc)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniEnv {
    pub command: Command,
    pub container_id: String,
    pub netns: Option<PathBuf>,
    pub ifname: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvError {
    #[error("environment variable {0} is missing")]
    Missing(&'static str),
    #[error("environment variable {name}: {problem}")]
    Invalid { name: &'static str, problem: String },
}

impl CniEnv {
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, EnvError> {
        let command = match get("CNI_COMMAND").as_deref() {
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("VERSION") => Command::Version,
            Some("STATUS") => Command::Status,
            Some("GC") => Command::Gc,
            Some(other) => {
                return Err(EnvError::Invalid { name: "CNI_COMMAND", problem: format!("unknown command {other:?}") })
            }
            None => return Err(EnvError::Missing("CNI_COMMAND")),
        };
        if command.is_network_wide() {
            return Ok(Self { command, container_id: String::new(), netns: None, ifname: String::new() });
        }
        let container_id =
            get("CNI_CONTAINERID").filter(|s| !s.is_empty()).ok_or(EnvError::Missing("CNI_CONTAINERID"))?;
        if !container_id.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
            return Err(EnvError::Invalid {
                name: "CNI_CONTAINERID",
                problem: "may contain only letters, digits, '_', '.' and '-'".into(),
            });
        }
        let ifname = get("CNI_IFNAME").filter(|s| !s.is_empty()).ok_or(EnvError::Missing("CNI_IFNAME"))?;
        if ifname.len() > 15 || ifname.contains('/') || ifname.contains(char::is_whitespace) || ifname == "." {
            return Err(EnvError::Invalid {
                name: "CNI_IFNAME",
                problem: format!("{ifname:?} is not a valid interface name"),
            });
        }
        // DEL may come with no namespace (it is gone, or the runtime forgot it).
        let netns = get("CNI_NETNS").filter(|s| !s.is_empty()).map(PathBuf::from);
        if netns.is_none() && command != Command::Del {
            return Err(EnvError::Missing("CNI_NETNS"));
        }
        Ok(Self { command, container_id, netns, ifname })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<CniEnv, EnvError> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        CniEnv::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn table() {
        let add =
            [("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "abc"), ("CNI_NETNS", "/run/netns/x"), ("CNI_IFNAME", "eth0")];
        assert_eq!(env(&add).unwrap().command, Command::Add);
        assert_eq!(env(&[("CNI_COMMAND", "VERSION")]).unwrap().command, Command::Version);
        assert_eq!(env(&[("CNI_COMMAND", "STATUS")]).unwrap().command, Command::Status);
        assert_eq!(env(&[("CNI_COMMAND", "GC")]).unwrap().command, Command::Gc);
        assert_eq!(env(&[]), Err(EnvError::Missing("CNI_COMMAND")));
        assert_eq!(env(&add[..3]), Err(EnvError::Missing("CNI_IFNAME")));
        assert_eq!(env(&[add[0], add[1], add[3]]), Err(EnvError::Missing("CNI_NETNS")));
        // DEL without a namespace is fine.
        assert!(env(&[("CNI_COMMAND", "DEL"), add[1], add[3]]).unwrap().netns.is_none());
        assert!(matches!(env(&[("CNI_COMMAND", "FROB")]), Err(EnvError::Invalid { .. })));
        assert!(matches!(
            env(&[add[0], ("CNI_CONTAINERID", "a b"), add[2], add[3]]),
            Err(EnvError::Invalid { name: "CNI_CONTAINERID", .. })
        ));
    }
}
