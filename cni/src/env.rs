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
    /// The pod this container belongs to, from `CNI_ARGS` (Kubernetes
    /// runtimes pass `K8S_POD_NAMESPACE` and `K8S_POD_NAME`).
    pub pod: Option<PodRef>,
}

/// A Kubernetes pod, as the runtime names it in `CNI_ARGS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for PodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The pod named in `CNI_ARGS` (`K=V;K=V`, as containerd and CRI-O pass
/// `IgnoreUnknown=1;K8S_POD_NAMESPACE=..;K8S_POD_NAME=..;K8S_POD_INFRA_CONTAINER_ID=..;K8S_POD_UID=..`).
/// Every other key is accepted and ignored, and so is a malformed pair: the
/// arguments only label the lease, never decide whether a call succeeds.
/// A value with a character outside Kubernetes' names (DNS labels and
/// subdomains) or a newline, which would break the lease file, is ignored too.
pub fn parse_pod_args(args: &str) -> Option<PodRef> {
    let mut namespace = None;
    let mut name = None;
    for pair in args.split(';') {
        let Some((key, value)) = pair.split_once('=') else { continue };
        let valid = !value.is_empty()
            && value.len() <= 253
            && value.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        match key.trim() {
            "K8S_POD_NAMESPACE" if valid => namespace = Some(value.to_string()),
            "K8S_POD_NAME" if valid => name = Some(value.to_string()),
            _ => {}
        }
    }
    Some(PodRef { namespace: namespace?, name: name? })
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
            return Ok(Self { command, container_id: String::new(), netns: None, ifname: String::new(), pod: None });
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
        let pod = get("CNI_ARGS").as_deref().and_then(parse_pod_args);
        Ok(Self { command, container_id, netns, ifname, pod })
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

    #[test]
    fn pod_from_cni_args() {
        let add =
            [("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "abc"), ("CNI_NETNS", "/run/netns/x"), ("CNI_IFNAME", "eth0")];
        assert_eq!(env(&add).unwrap().pod, None);
        // What containerd 1.6's CRI plugin passes.
        let args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=1-2";
        let mut with_args = add.to_vec();
        with_args.push(("CNI_ARGS", args));
        let pod = env(&with_args).unwrap().pod.unwrap();
        assert_eq!((pod.namespace.as_str(), pod.name.as_str()), ("default", "web-0"));
        assert_eq!(pod.to_string(), "default/web-0");
        let cases = [
            ("K8S_POD_NAME=a", None),
            ("K8S_POD_NAMESPACE=ns;K8S_POD_NAME=a.b-c", Some("ns/a.b-c")),
            // Malformed pairs and unknown keys are skipped, not fatal.
            ("junk;;K8S_POD_NAMESPACE=ns;FOO=bar;K8S_POD_NAME=p", Some("ns/p")),
            ("", None),
            // Not a Kubernetes name: never written into the lease.
            ("K8S_POD_NAMESPACE=ns;K8S_POD_NAME=a\nb", None),
            ("K8S_POD_NAMESPACE=ns;K8S_POD_NAME=A/B", None),
            ("K8S_POD_NAMESPACE=;K8S_POD_NAME=p", None),
        ];
        for (args, want) in cases {
            assert_eq!(parse_pod_args(args).map(|p| p.to_string()).as_deref(), want, "{args:?}");
        }
    }
}
