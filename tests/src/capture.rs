//! tcpdump in a namespace, numeric, line-buffered to a file, until stopped
//! (or dropped: a failing test never leaves a capture running).
use std::{
    path::PathBuf,
    process::{Child, Stdio},
    thread::sleep,
    time::Duration,
};

use anyhow::Result;

pub struct Capture {
    child: Option<Child>,
    out: PathBuf,
}

impl Capture {
    /// Capture on `iface` in `netns` what `filter` (a pcap filter) matches.
    pub fn start(netns: &str, iface: &str, filter: &[&str]) -> Result<Self> {
        let out = std::env::temp_dir().join(format!("sluice-cap-{}.txt", crate::unique("")));
        let file = std::fs::File::create(&out)?;
        let mut args = vec!["tcpdump", "-l", "-n", "-i", iface];
        args.extend_from_slice(filter);
        let child = crate::lab::ns_cmd(netns, &args).stdout(file).stderr(Stdio::null()).spawn()?;
        // tcpdump needs a moment before it sees packets.
        sleep(Duration::from_millis(800));
        Ok(Capture { child: Some(child), out })
    }

    /// Stop and return what was captured, one packet a line.
    pub fn stop(mut self) -> String {
        sleep(Duration::from_millis(300));
        self.kill();
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.out);
    }
}
