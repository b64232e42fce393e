//! tcpdump in a namespace, numeric, line-buffered to a file, until stopped
//! (or dropped: a failing test never leaves a capture running).
use std::{
    path::PathBuf,
    process::Child,
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};

pub struct Capture {
    child: Option<Child>,
    out: PathBuf,
    err: PathBuf,
}

impl Capture {
    /// Capture on `iface` in `netns` what `filter` (a pcap filter) matches.
    /// Returns once tcpdump says it is listening: from then on every packet
    /// is seen.
    pub fn start(netns: &str, iface: &str, filter: &[&str]) -> Result<Self> {
        let name = crate::unique("");
        let out = std::env::temp_dir().join(format!("sluice-cap-{name}.txt"));
        let err = std::env::temp_dir().join(format!("sluice-cap-{name}.err"));
        // --immediate-mode: each packet is handed over as it arrives, not
        // when libpcap's buffer timeout fires, so stop() need not guess.
        let mut args = vec!["tcpdump", "--immediate-mode", "-l", "-n", "-i", iface];
        args.extend_from_slice(filter);
        let child = crate::lab::ns_cmd(netns, &args)
            .stdout(std::fs::File::create(&out)?)
            .stderr(std::fs::File::create(&err)?)
            .spawn()?;
        let mut cap = Capture { child: Some(child), out, err };
        cap.wait_listening()?;
        Ok(cap)
    }

    /// tcpdump prints "listening on IFACE" once its socket is bound.
    fn wait_listening(&mut self) -> Result<()> {
        let start = Instant::now();
        loop {
            let said = std::fs::read_to_string(&self.err).unwrap_or_default();
            if said.contains("listening on") {
                return Ok(());
            }
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || start.elapsed() > Duration::from_secs(10) {
                bail!("tcpdump did not start listening: {said}");
            }
            sleep(Duration::from_millis(20));
        }
    }

    /// Stop and return what was captured, one packet a line. Waits until the
    /// capture has stopped growing (nothing more in flight), at most 2 s.
    pub fn stop(mut self) -> String {
        let size = |p: &PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let start = Instant::now();
        let (mut last, mut still) = (size(&self.out), 0);
        while still < 3 && start.elapsed() < Duration::from_secs(2) {
            sleep(Duration::from_millis(50));
            let now = size(&self.out);
            still = if now == last { still + 1 } else { 0 };
            last = now;
        }
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
        let _ = std::fs::remove_file(&self.err);
    }
}
