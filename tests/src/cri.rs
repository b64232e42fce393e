//! A CRI client: the calls the kubelet makes to run a pod, over a container
//! runtime's socket (Kubernetes' CRI v1, `runtime.v1.RuntimeService`).
//!
//! The messages are declared by hand with `prost`, only the ones sent and
//! the fields used: field numbers as in Kubernetes'
//! `staging/src/k8s.io/cri-api/pkg/apis/runtime/v1/api.proto` (proto3 skips
//! fields it does not know, so a newer or older runtime reads these).
//! Generated bindings (the `k8s-cri` crate) need `protoc` on every machine
//! that builds the workspace; these need nothing but `prost` and `tonic`.
//!
//! Blocking: each client owns a current-thread runtime, as the tests are
//! plain threads.
use std::{collections::HashMap, path::Path, time::Duration};

use anyhow::{Context, Result};
use tonic::transport::{Channel, Endpoint, Uri};

/// CRI v1 messages (a subset), with the proto's field numbers.
pub mod api {
    use std::collections::HashMap;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct VersionRequest {
        #[prost(string, tag = "1")]
        pub version: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct VersionResponse {
        #[prost(string, tag = "1")]
        pub version: String,
        #[prost(string, tag = "2")]
        pub runtime_name: String,
        #[prost(string, tag = "3")]
        pub runtime_version: String,
        #[prost(string, tag = "4")]
        pub runtime_api_version: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StatusRequest {
        #[prost(bool, tag = "1")]
        pub verbose: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RuntimeCondition {
        #[prost(string, tag = "1")]
        pub r#type: String,
        #[prost(bool, tag = "2")]
        pub status: bool,
        #[prost(string, tag = "3")]
        pub reason: String,
        #[prost(string, tag = "4")]
        pub message: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RuntimeStatus {
        #[prost(message, repeated, tag = "1")]
        pub conditions: Vec<RuntimeCondition>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StatusResponse {
        #[prost(message, optional, tag = "1")]
        pub status: Option<RuntimeStatus>,
    }

    /// `Protocol` values.
    pub const TCP: i32 = 0;
    pub const UDP: i32 = 1;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PortMapping {
        #[prost(int32, tag = "1")]
        pub protocol: i32,
        #[prost(int32, tag = "2")]
        pub container_port: i32,
        #[prost(int32, tag = "3")]
        pub host_port: i32,
        #[prost(string, tag = "4")]
        pub host_ip: String,
    }

    /// `NamespaceMode` values.
    pub const NS_POD: i32 = 0;
    pub const NS_CONTAINER: i32 = 1;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NamespaceOption {
        #[prost(int32, tag = "1")]
        pub network: i32,
        #[prost(int32, tag = "2")]
        pub pid: i32,
        #[prost(int32, tag = "3")]
        pub ipc: i32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LinuxSandboxSecurityContext {
        #[prost(message, optional, tag = "1")]
        pub namespace_options: Option<NamespaceOption>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LinuxPodSandboxConfig {
        #[prost(string, tag = "1")]
        pub cgroup_parent: String,
        #[prost(message, optional, tag = "2")]
        pub security_context: Option<LinuxSandboxSecurityContext>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandboxMetadata {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub uid: String,
        #[prost(string, tag = "3")]
        pub namespace: String,
        #[prost(uint32, tag = "4")]
        pub attempt: u32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandboxConfig {
        #[prost(message, optional, tag = "1")]
        pub metadata: Option<PodSandboxMetadata>,
        #[prost(string, tag = "2")]
        pub hostname: String,
        #[prost(string, tag = "3")]
        pub log_directory: String,
        #[prost(message, repeated, tag = "5")]
        pub port_mappings: Vec<PortMapping>,
        #[prost(map = "string, string", tag = "6")]
        pub labels: HashMap<String, String>,
        #[prost(map = "string, string", tag = "7")]
        pub annotations: HashMap<String, String>,
        #[prost(message, optional, tag = "8")]
        pub linux: Option<LinuxPodSandboxConfig>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RunPodSandboxRequest {
        #[prost(message, optional, tag = "1")]
        pub config: Option<PodSandboxConfig>,
        #[prost(string, tag = "2")]
        pub runtime_handler: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RunPodSandboxResponse {
        #[prost(string, tag = "1")]
        pub pod_sandbox_id: String,
    }

    /// Stop and Remove take the same request shape.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandboxIdRequest {
        #[prost(string, tag = "1")]
        pub pod_sandbox_id: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Empty {}

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandboxStatusRequest {
        #[prost(string, tag = "1")]
        pub pod_sandbox_id: String,
        #[prost(bool, tag = "2")]
        pub verbose: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodIp {
        #[prost(string, tag = "1")]
        pub ip: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandboxNetworkStatus {
        #[prost(string, tag = "1")]
        pub ip: String,
        #[prost(message, repeated, tag = "2")]
        pub additional_ips: Vec<PodIp>,
    }

    /// `PodSandboxState` values.
    pub const SANDBOX_READY: i32 = 0;
    pub const SANDBOX_NOTREADY: i32 = 1;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandboxStatus {
        #[prost(string, tag = "1")]
        pub id: String,
        #[prost(message, optional, tag = "2")]
        pub metadata: Option<PodSandboxMetadata>,
        #[prost(int32, tag = "3")]
        pub state: i32,
        #[prost(message, optional, tag = "5")]
        pub network: Option<PodSandboxNetworkStatus>,
        #[prost(map = "string, string", tag = "7")]
        pub labels: HashMap<String, String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandboxStatusResponse {
        #[prost(message, optional, tag = "1")]
        pub status: Option<PodSandboxStatus>,
        /// With `verbose`: containerd's own view as JSON (`info`: pid, netns path, CNI result).
        #[prost(map = "string, string", tag = "2")]
        pub info: HashMap<String, String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListPodSandboxRequest {}

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandbox {
        #[prost(string, tag = "1")]
        pub id: String,
        #[prost(message, optional, tag = "2")]
        pub metadata: Option<PodSandboxMetadata>,
        #[prost(int32, tag = "3")]
        pub state: i32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListPodSandboxResponse {
        #[prost(message, repeated, tag = "1")]
        pub items: Vec<PodSandbox>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ImageSpec {
        #[prost(string, tag = "1")]
        pub image: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ContainerMetadata {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(uint32, tag = "2")]
        pub attempt: u32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ContainerConfig {
        #[prost(message, optional, tag = "1")]
        pub metadata: Option<ContainerMetadata>,
        #[prost(message, optional, tag = "2")]
        pub image: Option<ImageSpec>,
        #[prost(string, repeated, tag = "3")]
        pub command: Vec<String>,
        #[prost(string, repeated, tag = "4")]
        pub args: Vec<String>,
        #[prost(map = "string, string", tag = "9")]
        pub labels: HashMap<String, String>,
        #[prost(string, tag = "11")]
        pub log_path: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CreateContainerRequest {
        #[prost(string, tag = "1")]
        pub pod_sandbox_id: String,
        #[prost(message, optional, tag = "2")]
        pub config: Option<ContainerConfig>,
        #[prost(message, optional, tag = "3")]
        pub sandbox_config: Option<PodSandboxConfig>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CreateContainerResponse {
        #[prost(string, tag = "1")]
        pub container_id: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StartContainerRequest {
        #[prost(string, tag = "1")]
        pub container_id: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExecSyncRequest {
        #[prost(string, tag = "1")]
        pub container_id: String,
        #[prost(string, repeated, tag = "2")]
        pub cmd: Vec<String>,
        /// Seconds; 0 for none.
        #[prost(int64, tag = "3")]
        pub timeout: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExecSyncResponse {
        #[prost(bytes = "vec", tag = "1")]
        pub stdout: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub stderr: Vec<u8>,
        #[prost(int32, tag = "3")]
        pub exit_code: i32,
    }
}

use api::*;

/// The output of a command run in a container (CRI ExecSync).
#[derive(Debug)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// What a pod asks for, as the kubelet turns a Pod into a sandbox config.
#[derive(Clone, Debug)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub hostname: String,
    pub labels: HashMap<String, String>,
    /// (container port, host port), TCP.
    pub host_ports: Vec<(u16, u16)>,
    pub cgroup_parent: String,
    pub log_directory: String,
}

impl PodSpec {
    /// The sandbox config the kubelet sends for this pod: its own network
    /// namespace, a pid namespace per container (the kubelet's default).
    pub fn sandbox_config(&self) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: self.name.clone(),
                uid: self.uid.clone(),
                namespace: self.namespace.clone(),
                attempt: 0,
            }),
            hostname: self.hostname.clone(),
            log_directory: self.log_directory.clone(),
            port_mappings: self
                .host_ports
                .iter()
                .map(|(c, h)| PortMapping {
                    protocol: TCP,
                    container_port: i32::from(*c),
                    host_port: i32::from(*h),
                    host_ip: String::new(),
                })
                .collect(),
            labels: self.labels.clone(),
            annotations: HashMap::new(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent.clone(),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption { network: NS_POD, pid: NS_CONTAINER, ipc: NS_POD }),
                }),
            }),
        }
    }
}

pub struct CriClient {
    rt: tokio::runtime::Runtime,
    channel: Channel,
}

const RUNTIME: &str = "/runtime.v1.RuntimeService/";

impl CriClient {
    /// Connect to the runtime's CRI socket (a unix socket path).
    pub fn connect(socket: &Path) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let path = socket.to_path_buf();
        let channel = rt
            .block_on(async move {
                // The URI is required and ignored: the connector dials the socket.
                Endpoint::from_static("http://cri.invalid")
                    .connect_timeout(Duration::from_secs(5))
                    .timeout(Duration::from_secs(120))
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            let stream = tokio::net::UnixStream::connect(path).await?;
                            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                        }
                    }))
                    .await
            })
            .with_context(|| format!("connect to CRI socket {}", socket.display()))?;
        Ok(Self { rt, channel })
    }

    /// One unary call; the runtime's status (code and message) on failure.
    fn call<Req, Resp>(&self, method: &'static str, req: Req) -> Result<Resp, tonic::Status>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        let path = format!("{RUNTIME}{method}");
        self.rt.block_on(async move {
            grpc.ready().await.map_err(|e| tonic::Status::unavailable(format!("CRI channel not ready: {e}")))?;
            let path = path.parse().map_err(|_| tonic::Status::internal("bad method path"))?;
            let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
            grpc.unary(tonic::Request::new(req), path, codec).await.map(tonic::Response::into_inner)
        })
    }

    pub fn version(&self) -> Result<VersionResponse, tonic::Status> {
        self.call("Version", VersionRequest { version: "v1".into() })
    }

    /// The runtime's conditions: `RuntimeReady`, `NetworkReady` (false
    /// until containerd has loaded a CNI config), by type.
    pub fn conditions(&self) -> Result<HashMap<String, RuntimeCondition>, tonic::Status> {
        let r: StatusResponse = self.call("Status", StatusRequest { verbose: false })?;
        Ok(r.status.unwrap_or_default().conditions.into_iter().map(|c| (c.r#type.clone(), c)).collect())
    }

    /// RunPodSandbox: the sandbox id. containerd runs CNI ADD inside it.
    pub fn run_pod_sandbox(&self, config: PodSandboxConfig) -> Result<String, tonic::Status> {
        let r: RunPodSandboxResponse =
            self.call("RunPodSandbox", RunPodSandboxRequest { config: Some(config), runtime_handler: String::new() })?;
        Ok(r.pod_sandbox_id)
    }

    pub fn pod_sandbox_status(&self, id: &str) -> Result<PodSandboxStatusResponse, tonic::Status> {
        self.call("PodSandboxStatus", PodSandboxStatusRequest { pod_sandbox_id: id.into(), verbose: true })
    }

    /// StopPodSandbox: containerd runs CNI DEL.
    pub fn stop_pod_sandbox(&self, id: &str) -> Result<(), tonic::Status> {
        self.call::<_, Empty>("StopPodSandbox", PodSandboxIdRequest { pod_sandbox_id: id.into() }).map(|_| ())
    }

    pub fn remove_pod_sandbox(&self, id: &str) -> Result<(), tonic::Status> {
        self.call::<_, Empty>("RemovePodSandbox", PodSandboxIdRequest { pod_sandbox_id: id.into() }).map(|_| ())
    }

    pub fn list_pod_sandbox(&self) -> Result<Vec<PodSandbox>, tonic::Status> {
        let r: ListPodSandboxResponse = self.call("ListPodSandbox", ListPodSandboxRequest {})?;
        Ok(r.items)
    }

    /// CreateContainer + StartContainer in the sandbox; the container id.
    pub fn start_container(
        &self,
        sandbox_id: &str,
        sandbox: &PodSandboxConfig,
        name: &str,
        image: &str,
        command: &[&str],
    ) -> Result<String, tonic::Status> {
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata { name: name.into(), attempt: 0 }),
            image: Some(ImageSpec { image: image.into() }),
            command: command.iter().map(|s| s.to_string()).collect(),
            args: Vec::new(),
            labels: HashMap::new(),
            log_path: format!("{name}/0.log"),
        };
        let r: CreateContainerResponse = self.call(
            "CreateContainer",
            CreateContainerRequest {
                pod_sandbox_id: sandbox_id.into(),
                config: Some(config),
                sandbox_config: Some(sandbox.clone()),
            },
        )?;
        self.call::<_, Empty>("StartContainer", StartContainerRequest { container_id: r.container_id.clone() })?;
        Ok(r.container_id)
    }

    /// ExecSync: run `cmd` in a container (as `kubectl exec` without a terminal).
    pub fn exec(&self, container_id: &str, cmd: &[&str], timeout_s: i64) -> Result<ExecOutput, tonic::Status> {
        let r: ExecSyncResponse = self.call(
            "ExecSync",
            ExecSyncRequest {
                container_id: container_id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: timeout_s,
            },
        )?;
        Ok(ExecOutput {
            exit_code: r.exit_code,
            stdout: String::from_utf8_lossy(&r.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&r.stderr).into_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::api::*;
    use prost::Message;

    /// Field numbers on the wire, checked against bytes worked out by hand
    /// from api.proto: a wrong tag here would be silently ignored by the runtime.
    #[test]
    fn wire_tags() {
        let m = PodSandboxMetadata { name: "a".into(), uid: "u".into(), namespace: "n".into(), attempt: 1 };
        // tag 1 "a", tag 2 "u", tag 3 "n", tag 4 varint 1
        assert_eq!(m.encode_to_vec(), [0x0a, 1, b'a', 0x12, 1, b'u', 0x1a, 1, b'n', 0x20, 1]);
        let p = PortMapping { protocol: UDP, container_port: 80, host_port: 8080, host_ip: String::new() };
        assert_eq!(p.encode_to_vec(), [0x08, 1, 0x10, 80, 0x18, 0x90, 0x3f]);
        let c = PodSandboxConfig { hostname: "h".into(), ..Default::default() };
        assert_eq!(c.encode_to_vec(), [0x12, 1, b'h']);
        let e = ExecSyncRequest { container_id: "c".into(), cmd: vec!["x".into()], timeout: 2 };
        assert_eq!(e.encode_to_vec(), [0x0a, 1, b'c', 0x12, 1, b'x', 0x18, 2]);
    }
}
