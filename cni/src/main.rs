//! `sluice-cni`: the CNI plugin a container runtime runs for each pod.
//!
//! Protocol: the verb and pod in `CNI_*` environment variables, the network
//! configuration on stdin, the result (or the spec's error JSON, with a
//! non-zero exit) on stdout. See the README for the configuration fields and
//! error codes.
use std::{io::Read, process::ExitCode};

use serde_json::json;

mod add;
mod check;
mod config;
mod del;
mod env;
mod error;
mod gc;
mod node_cidr;
mod policy;
mod rollback;
mod status;

use config::{NetConf, SUPPORTED_VERSIONS};
use env::{CniEnv, Command};
use error::CniError;
use sluice_cni::fault;

fn main() -> ExitCode {
    // VERSION needs no configuration: answer without waiting on stdin (a
    // caller may leave it open).
    let mut stdin = Vec::new();
    if std::env::var("CNI_COMMAND").as_deref() != Ok("VERSION") {
        let _ = std::io::stdin().read_to_end(&mut stdin);
    }
    // The version to answer errors in: the config's, when it can be read.
    let version = serde_json::from_slice::<serde_json::Value>(&stdin)
        .ok()
        .and_then(|v| v["cniVersion"].as_str().map(str::to_string))
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| "1.1.0".to_string());
    let started = std::time::Instant::now();
    sluice_node::step_timer::start();
    let outcome = run(&stdin);
    sluice_node::step_timer::mark("finish");
    let steps = sluice_node::step_timer::take();
    if std::env::var_os("SLUICE_CNI_TIMINGS").is_some() {
        eprint!("{}", sluice_node::step_timer::render(&steps));
    }
    let steps: Vec<(&str, f64)> = steps.iter().map(|(s, d)| (*s, d.as_secs_f64())).collect();
    record_stats(&stdin, outcome.as_ref().err().map_or(0, CniError::code), started.elapsed().as_secs_f64(), &steps);
    match outcome {
        Ok(Some(out)) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            println!("{}", e.to_json(&version));
            ExitCode::FAILURE
        }
    }
}

/// Tell the agent's metrics about this call (`sluice_node::cni_stats`), in
/// the data directory the configuration names; a call whose configuration
/// cannot be read goes to the default one. Never fails the call.
fn record_stats(stdin: &[u8], code: u32, seconds: f64, steps: &[(&str, f64)]) {
    let Ok(verb) = std::env::var("CNI_COMMAND") else { return };
    if verb == "VERSION" {
        return;
    }
    let data_dir =
        NetConf::parse(stdin).map(|c| c.data_dir).unwrap_or_else(|_| sluice_node::paths::DEFAULT_DATA_DIR.into());
    let _ = sluice_node::cni_stats::record(&data_dir, &verb, code, seconds, steps);
}

fn run(stdin: &[u8]) -> Result<Option<serde_json::Value>, CniError> {
    let env = CniEnv::from_lookup(|k| std::env::var(k).ok())?;
    if env.command == Command::Version {
        return Ok(Some(json!({"cniVersion": "1.1.0", "supportedVersions": SUPPORTED_VERSIONS})));
    }
    let conf = NetConf::parse(stdin)?;
    let rt =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| CniError::Plugin(e.into()))?;
    sluice_node::step_timer::mark("setup");
    rt.block_on(async {
        match env.command {
            Command::Add => add::add(&conf, &env).await.map(Some),
            Command::Del => del::del(&conf, &env).await.map(|_| None),
            Command::Check => check::check(&conf, &env).await.map(|_| None),
            Command::Status => status::status(&conf).map(|_| None),
            Command::Gc => gc::gc(&conf).await.map(|_| None),
            Command::Version => unreachable!("answered above"),
        }
    })
}
