//! How the agent's Kubernetes watches (Nodes, Services, EndpointSlices)
//! retry after an error, and how long they took to be synced again after
//! the API server went away.
//!
//! kube-rs' `default_backoff` is client-go's: 0.8 s doubling to 30 s,
//! jittered up to twice that, and reset only after two minutes without an
//! error. Against a Kubernetes 1.28 API server stopped for ~100 s the
//! agents relisted 63–96 s after it was back: the backoff had grown during
//! the outage, and the first answer afterwards (410 Expired, for the
//! watch's old resourceVersion) was an error too, backed off once more
//! before the relist. Here errors are told apart:
//! - the server did not answer (connection refused or cut): retry after
//!   0.1 s doubling to 0.5 s, jittered up to twice that. A refused connect
//!   costs the server nothing, and the first attempt after it is back comes
//!   within a second;
//! - 410 Gone: relist at once (the watcher has already dropped its
//!   resourceVersion; waiting gains nothing);
//! - any other answer (403, 429, 5xx): client-go's backoff, kind to a
//!   server that is up but struggling.
//!
//! Any event resets both.
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use kube::runtime::watcher;
use serde::{Deserialize, Serialize};

use sluice_node::clock::now_unix;

/// What an error says about the API server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// No answer: the connection was refused, cut or never made.
    Unreachable,
    /// 410 Gone: history expired; the watcher relists.
    Gone,
    /// The server answered with another error.
    Answered,
}

fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

fn unreachable(e: &kube::Error) -> bool {
    matches!(e, kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_))
}

pub fn classify(e: &watcher::Error) -> ErrorClass {
    let client = match e {
        watcher::Error::WatchError(status) => {
            return if status.code == 410 { ErrorClass::Gone } else { ErrorClass::Answered }
        }
        watcher::Error::InitialListFailed(e) | watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => {
            e
        }
        watcher::Error::NoResourceVersion => return ErrorClass::Answered,
    };
    match api_code(client) {
        Some(410) => ErrorClass::Gone,
        Some(_) => ErrorClass::Answered,
        None if unreachable(client) => ErrorClass::Unreachable,
        None => ErrorClass::Answered,
    }
}

fn unreachable_builder() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_millis(500))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
}

/// client-go's reflector backoff (kube-rs' `DefaultBackoff` without its
/// two-minute reset timer).
fn answered_builder() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(800))
        .with_max_delay(Duration::from_secs(30))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
}

/// The retry policy of one watch.
pub struct Retry {
    unreachable: ExponentialBackoff,
    answered: ExponentialBackoff,
}

impl Default for Retry {
    fn default() -> Self {
        Self { unreachable: unreachable_builder().build(), answered: answered_builder().build() }
    }
}

impl Retry {
    /// How long to wait before the next attempt after an error of `class`.
    pub fn delay(&mut self, class: ErrorClass) -> Duration {
        match class {
            ErrorClass::Gone => {
                // The server answers again: whatever grew while it did
                // not is forgotten.
                self.reset();
                Some(Duration::ZERO)
            }
            ErrorClass::Unreachable => self.unreachable.next(),
            ErrorClass::Answered => self.answered.next(),
        }
        .unwrap_or(Duration::from_secs(30))
    }

    /// An event arrived: start both backoffs over.
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// Wait as `delay` says after an error of `class`.
    pub async fn wait(&mut self, class: ErrorClass) {
        let delay = self.delay(class);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
}

/// The last outage of a watch, as `status` and the metrics show it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Recovery {
    /// From the first error to a complete list again: how long the view
    /// may have been stale.
    pub outage_ms: u64,
    /// From the last attempt that found the API server unreachable to a
    /// complete list again. The server came back after that attempt, so
    /// this is at most how long the watch took to be synced after the
    /// server's return. When every error was an answer (a 410 alone),
    /// from the first error.
    pub synced_after_return_ms: u64,
    /// When it was synced again.
    pub synced_unix: u64,
}

/// Times one watch's outages (pure: the caller passes the clock).
#[derive(Debug, Default)]
pub struct OutageClock {
    started: Option<Instant>,
    last_unreachable: Option<Instant>,
}

impl OutageClock {
    /// An error of `class` at `at`.
    pub fn failed(&mut self, at: Instant, class: ErrorClass) {
        self.started.get_or_insert(at);
        if class == ErrorClass::Unreachable {
            self.last_unreachable = Some(at);
        }
    }

    /// A complete list arrived at `at`: the outage, if there was one, is
    /// over.
    pub fn synced(&mut self, at: Instant) -> Option<Recovery> {
        let started = self.started.take()?;
        let returned = self.last_unreachable.take().unwrap_or(started);
        let ms = |since: Instant| at.saturating_duration_since(since).as_millis() as u64;
        Some(Recovery { outage_ms: ms(started), synced_after_return_ms: ms(returned), synced_unix: now_unix() })
    }

    /// Whether an error has come since the last complete list.
    pub fn in_outage(&self) -> bool {
        self.started.is_some()
    }
}

#[cfg(test)]
mod tests {
    use kube::core::Status;

    use super::*;

    fn status(code: u16) -> Box<Status> {
        Box::new(Status { code, ..Status::failure("x", "y") })
    }

    fn refused() -> kube::Error {
        kube::Error::ReadEvents(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
    }

    #[test]
    fn errors_are_told_apart() {
        use ErrorClass::*;
        let cases: Vec<(watcher::Error, ErrorClass)> = vec![
            (watcher::Error::WatchError(status(410)), Gone),
            (watcher::Error::WatchError(status(500)), Answered),
            (watcher::Error::InitialListFailed(kube::Error::Api(status(410))), Gone),
            (watcher::Error::InitialListFailed(kube::Error::Api(status(403))), Answered),
            (watcher::Error::WatchStartFailed(kube::Error::Api(status(429))), Answered),
            (watcher::Error::InitialListFailed(refused()), Unreachable),
            (watcher::Error::WatchStartFailed(refused()), Unreachable),
            (watcher::Error::WatchFailed(refused()), Unreachable),
            (watcher::Error::NoResourceVersion, Answered),
        ];
        for (e, want) in cases {
            assert_eq!(classify(&e), want, "{e}");
        }
    }

    #[test]
    fn an_unreachable_server_is_retried_within_a_second_however_long_it_is_gone() {
        let mut r = Retry::default();
        // Two minutes of refused connections: the delay never grows past
        // 2 × 0.5 s (the jitter adds up to the delay itself).
        let mut waited = Duration::ZERO;
        while waited < Duration::from_secs(120) {
            let d = r.delay(ErrorClass::Unreachable);
            assert!(d <= Duration::from_secs(1), "{d:?} after {waited:?}");
            waited += d.max(Duration::from_millis(1));
        }
    }

    #[test]
    fn gone_relists_at_once_and_resets_the_backoff() {
        let mut r = Retry::default();
        for _ in 0..10 {
            r.delay(ErrorClass::Answered);
        }
        assert!(r.delay(ErrorClass::Answered) >= Duration::from_secs(30), "client-go's backoff grows to 30 s");
        assert_eq!(r.delay(ErrorClass::Gone), Duration::ZERO);
        assert!(r.delay(ErrorClass::Answered) < Duration::from_secs(2), "reset by the server's answer");
        for _ in 0..10 {
            r.delay(ErrorClass::Answered);
        }
        r.reset();
        assert!(r.delay(ErrorClass::Answered) < Duration::from_secs(2), "reset by an event");
    }

    #[test]
    fn outage_clock() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut c = OutageClock::default();
        // A list with no outage before it (the first, or a resync): nothing.
        assert_eq!(c.synced(at(0)), None);
        c.failed(at(1000), ErrorClass::Unreachable);
        assert!(c.in_outage());
        c.failed(at(5000), ErrorClass::Unreachable);
        c.failed(at(9000), ErrorClass::Unreachable);
        c.failed(at(9600), ErrorClass::Gone); // back: the old resourceVersion expired
        let r = c.synced(at(9800)).unwrap();
        assert_eq!((r.outage_ms, r.synced_after_return_ms), (8800, 800));
        assert!(!c.in_outage());
        assert_eq!(c.synced(at(9900)), None, "one outage, one recovery");
        // History expired with the server up: from the 410 on.
        c.failed(at(20_000), ErrorClass::Gone);
        let r = c.synced(at(20_050)).unwrap();
        assert_eq!((r.outage_ms, r.synced_after_return_ms), (50, 50));
    }
}
