//! The node's netfilter (the masquerade table and the forward-accept
//! chain, `reconcile::masquerade`) kept in step beside the membership pass
//! rather than inside it. Each check runs `nft` and `iptables` (~20 ms of
//! process starts), and a pass that waited for them held back the next
//! membership change: in the benchmark's burst of Node changes the map
//! write came 24–30 ms late, behind the previous change's `nft`.
//!
//! At start the first state is applied before anything else goes on (pods
//! must never reach the world unmasqueraded); after that the pass only
//! hands over what it wants, the worker applies the latest (a burst of
//! changes costs one run), re-checks every `RECHECK` so a flushed rule
//! heals, retries a failure after `RETRY`, and keeps its last error for
//! `status` and the masquerade rule's counter from its last check for
//! metrics (a scrape must not run `nft` on the agent's one thread).
use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use tokio::sync::watch;
use tracing::warn;

use crate::reconcile::masquerade::{self, Desired, HostFirewall, MasqueradeCounter};

const RECHECK: Duration = Duration::from_secs(10);
const RETRY: Duration = Duration::from_secs(1);

pub struct NetfilterWorker {
    want: watch::Sender<Desired>,
    last_error: Arc<Mutex<Option<String>>>,
    counter: SharedCounter,
}

/// The masquerade rule's counter as the worker last read it (`None`: no
/// table, masquerading off, or not read yet).
pub type SharedCounter = Arc<Mutex<Option<MasqueradeCounter>>>;

/// One run against the host's `nft` and `iptables`.
async fn apply_to_host(desired: Desired) -> Result<Option<MasqueradeCounter>> {
    masquerade::ensure_counted(&HostFirewall, &desired).await.map(|(_, counter)| counter)
}

impl NetfilterWorker {
    /// Apply `first` now (an error here stops the agent's start), then
    /// keep it in step in the background.
    pub async fn start(first: Desired) -> Result<Self> {
        let counter = apply_to_host(first.clone()).await.context("netfilter")?;
        let worker = Self::spawn(first, apply_to_host, RECHECK, RETRY);
        *worker.counter.lock().expect("netfilter counter lock") = counter;
        Ok(worker)
    }

    fn spawn<F, Fut>(first: Desired, apply: F, recheck: Duration, retry: Duration) -> Self
    where
        F: Fn(Desired) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<MasqueradeCounter>>> + Send + 'static,
    {
        let (want, rx) = watch::channel(first);
        let last_error = Arc::new(Mutex::new(None));
        let counter = SharedCounter::default();
        tokio::spawn(run(rx, last_error.clone(), counter.clone(), apply, recheck, retry));
        Self { want, last_error, counter }
    }

    /// The masquerade counter as of the last check (at most `RECHECK` old),
    /// shared: metrics read it.
    pub fn masquerade_counter(&self) -> SharedCounter {
        self.counter.clone()
    }

    /// The state the node's netfilter should hold from now on.
    pub fn want(&self, desired: Desired) {
        self.want.send_if_modified(|current| {
            let changed = *current != desired;
            if changed {
                *current = desired;
            }
            changed
        });
    }

    /// The last run's error, if it failed.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("netfilter error lock").clone()
    }
}

async fn run<F, Fut>(
    mut rx: watch::Receiver<Desired>,
    last_error: Arc<Mutex<Option<String>>>,
    counter: SharedCounter,
    apply: F,
    recheck: Duration,
    retry: Duration,
) where
    F: Fn(Desired) -> Fut,
    Fut: Future<Output = Result<Option<MasqueradeCounter>>>,
{
    let mut wait = recheck;
    loop {
        // A change, or time for the periodic check (or the retry).
        if let Ok(Err(_)) = tokio::time::timeout(wait, rx.changed()).await {
            return; // the agent is going away
        }
        let desired = rx.borrow_and_update().clone();
        let outcome = apply(desired).await;
        let mut slot = last_error.lock().expect("netfilter error lock");
        match outcome {
            Ok(now) => {
                *counter.lock().expect("netfilter counter lock") = now;
                *slot = None;
                wait = recheck;
            }
            Err(e) => {
                let msg = format!("netfilter: {e:#}");
                if slot.as_deref() != Some(&msg) {
                    warn!(error = %msg, "netfilter not applied; retrying");
                }
                *slot = Some(msg);
                wait = retry;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(n: u8) -> Desired {
        Desired::new(true, "10.244.0.0/16".parse().ok(), [std::net::Ipv4Addr::new(172, 30, 0, n)], &[])
    }

    /// Records every run; fails while `failing` is set.
    #[derive(Clone, Default)]
    struct Recorder {
        runs: Arc<Mutex<Vec<Desired>>>,
        failing: Arc<Mutex<bool>>,
    }

    impl Recorder {
        fn apply(&self) -> impl Fn(Desired) -> std::future::Ready<Result<Option<MasqueradeCounter>>> + Send + 'static {
            let me = self.clone();
            move |d| {
                let mut runs = me.runs.lock().unwrap();
                runs.push(d);
                let fail = *me.failing.lock().unwrap();
                // Each run "reads" a counter as large as the runs so far.
                let n = runs.len() as u64;
                let counter = MasqueradeCounter { packets: n, bytes: 60 * n };
                std::future::ready(if fail { Err(anyhow::anyhow!("nft: no such file")) } else { Ok(Some(counter)) })
            }
        }
        fn runs(&self) -> Vec<Desired> {
            self.runs.lock().unwrap().clone()
        }
    }

    async fn settle(ms: u64) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    #[tokio::test]
    async fn a_burst_of_changes_costs_one_run_with_the_latest() {
        let rec = Recorder::default();
        let w = NetfilterWorker::spawn(desired(1), rec.apply(), Duration::from_secs(60), Duration::from_secs(60));
        // Handed over without awaiting: the worker has not run yet.
        for n in 2..=5 {
            w.want(desired(n));
        }
        settle(50).await;
        assert_eq!(rec.runs(), vec![desired(5)]);
        // The run's counter is kept for metrics.
        let counter = *w.masquerade_counter().lock().unwrap();
        assert_eq!(counter, Some(MasqueradeCounter { packets: 1, bytes: 60 }));
        // Wanting what is already wanted wakes nothing.
        w.want(desired(5));
        settle(50).await;
        assert_eq!(rec.runs().len(), 1);
    }

    #[tokio::test]
    async fn a_failure_is_reported_and_retried_and_the_state_rechecked() {
        let rec = Recorder::default();
        *rec.failing.lock().unwrap() = true;
        let w = NetfilterWorker::spawn(desired(1), rec.apply(), Duration::from_millis(300), Duration::from_millis(40));
        w.want(desired(2));
        settle(20).await;
        assert!(w.last_error().is_some_and(|e| e.contains("nft: no such file")), "{:?}", w.last_error());
        *rec.failing.lock().unwrap() = false;
        settle(100).await;
        assert_eq!(w.last_error(), None, "retried after the failure");
        let after_retry = rec.runs().len();
        assert!(after_retry >= 2, "{after_retry}");
        // Nothing changes: the periodic check runs anyway (a flushed rule heals).
        settle(400).await;
        assert!(rec.runs().len() > after_retry, "rechecked");
        assert!(rec.runs().iter().all(|d| *d == desired(2)));
    }
}
