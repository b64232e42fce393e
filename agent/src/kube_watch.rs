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
//!
//! `keep` is the loop the Service and policy watchers share: a paged
//! watcher whose objects are kept, converted, in a keyed store.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Debug,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{runtime::watcher, Api, Resource};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::sync::Notify;
use tracing::{info, warn};

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

/// One watcher's own condition, among the watchers sharing a store.
#[derive(Debug, Default)]
pub struct StreamState {
    /// A complete list has been received.
    pub listed: bool,
    /// The last thing on the stream was not an error.
    pub connected: bool,
    /// The latest error, until the stream recovers.
    pub error: Option<String>,
}

/// What a group of watchers keeps behind one lock (`S` below): the
/// counters every one of its watchers moves.
pub trait Store: Send + 'static {
    /// An event arrived (list items included).
    fn counted(&mut self);
    /// A complete list arrived; `recovered`: it ended an outage.
    fn relisted(&mut self, recovered: Option<Recovery>);
    /// Recompute the group's summary from its streams.
    fn summarize(&mut self);
}

/// A Kubernetes kind kept, converted, under its key in the store `S`.
pub trait KeyedKind<S>: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static {
    type Key: Ord + Clone + Send + 'static;
    /// What `convert` makes of an object.
    type Converted: Send + 'static;
    /// The kind's name in logs and errors.
    const NAME: &'static str;
    fn key(meta: &ObjectMeta) -> Option<Self::Key>;
    fn convert(&self) -> Self::Converted;
    /// Whether a converted object is kept (a list that shows it keeps its key).
    fn kept(converted: &Self::Converted) -> bool;
    /// This kind's stream in the store.
    fn stream(store: &mut S) -> &mut StreamState;
    /// An object a list shows: put it under `key` (or remove the key).
    /// Whether the store changed.
    fn listed(store: &mut S, key: Self::Key, converted: Self::Converted) -> bool;
    /// An object a watch event brings: as `listed`.
    fn applied(store: &mut S, key: Self::Key, converted: Self::Converted) -> bool;
    /// An object deleted. Whether the store changed.
    fn deleted(store: &mut S, key: &Self::Key) -> bool;
    /// A list ended: drop every key it did not show. How many went.
    fn retain(store: &mut S, keep: &BTreeSet<Self::Key>) -> usize;
    /// The store changed; the event that changed it arrived at `arrived`.
    fn changed(store: &mut S, arrived: Instant);
}

/// Put a model under its key, or remove the key when there is none.
/// Whether the entries changed: an object whose model is the one kept
/// already (only status, annotations or resourceVersion moved) is no change.
pub fn put<K: Ord, M: PartialEq>(entries: &mut BTreeMap<K, M>, key: K, model: Option<M>) -> bool {
    match model {
        Some(m) if entries.get(&key) == Some(&m) => false,
        Some(m) => {
            entries.insert(key, m);
            true
        }
        None => entries.remove(&key).is_some(),
    }
}

/// Watch kind `K` into `store` for ever: list in pages of `page_size`, then
/// watch; relist on 410 Gone and retry errors as `Retry` says. A relist
/// updates the store in place and remembers only the keys it has seen; at
/// its end every other key goes (deleted while the watch was cut). Its
/// changes are announced once, at its end; every other change notifies
/// `changed` (one permit) at once.
pub async fn keep<K: KeyedKind<S>, S: Store>(api: Api<K>, page_size: u32, store: Arc<Mutex<S>>, changed: Arc<Notify>) {
    let name = K::NAME;
    let config = watcher::Config::default().page_size(page_size);
    let mut stream = watcher(api, config).boxed();
    let (mut retry, mut outage) = (Retry::default(), OutageClock::default());
    // The keys a list in progress has shown.
    let mut listed: BTreeSet<K::Key> = BTreeSet::new();
    let mut list_changed = false;
    // Count an event and apply `change` under the lock; whether the store changed.
    let record = |arrived: Instant, change: &mut dyn FnMut(&mut S) -> bool| {
        let mut store = store.lock().expect("kube watch lock");
        let s = K::stream(&mut store);
        s.connected = true;
        s.error = None;
        store.counted();
        let changed = change(&mut store);
        if changed {
            K::changed(&mut store, arrived);
        }
        store.summarize();
        changed
    };
    let failed = |error: String| {
        let mut store = store.lock().expect("kube watch lock");
        let s = K::stream(&mut store);
        s.connected = false;
        s.error = Some(error);
        store.summarize();
    };
    loop {
        let next = stream.try_next().await;
        let arrived = Instant::now();
        match next {
            Ok(Some(event)) => {
                retry.reset();
                // Convert before taking the lock; the object is dropped here.
                let changed_now = match event {
                    watcher::Event::Init => {
                        listed.clear();
                        list_changed = false;
                        record(arrived, &mut |_| false)
                    }
                    watcher::Event::InitApply(obj) => {
                        let key = K::key(obj.meta());
                        let converted = obj.convert();
                        drop(obj);
                        let mut item = key.map(|key| (key, converted));
                        record(arrived, &mut |store| {
                            if let Some((key, converted)) = item.take() {
                                if K::kept(&converted) {
                                    listed.insert(key.clone());
                                }
                                list_changed |= K::listed(store, key, converted);
                            }
                            false // announced at InitDone
                        })
                    }
                    watcher::Event::InitDone => {
                        let keep = std::mem::take(&mut listed);
                        let mut recovered = outage.synced(arrived);
                        record(arrived, &mut |store| {
                            if let Some(r) = &recovered {
                                info!(
                                    kind = name,
                                    outage_ms = r.outage_ms,
                                    synced_after_return_ms = r.synced_after_return_ms,
                                    "Kubernetes {name} synced again"
                                );
                            }
                            let removed = K::retain(store, &keep);
                            let s = K::stream(store);
                            let first = !s.listed;
                            s.listed = true;
                            store.relisted(recovered.take());
                            info!(kind = name, objects = keep.len(), removed, "Kubernetes {name} listed");
                            first || list_changed || removed > 0
                        })
                    }
                    watcher::Event::Apply(obj) => {
                        let key = K::key(obj.meta());
                        let converted = obj.convert();
                        drop(obj);
                        let mut item = key.map(|key| (key, converted));
                        record(arrived, &mut |store| {
                            item.take().is_some_and(|(key, converted)| K::applied(store, key, converted))
                        })
                    }
                    watcher::Event::Delete(obj) => {
                        let key = K::key(obj.meta());
                        drop(obj);
                        record(arrived, &mut |store| key.as_ref().is_some_and(|key| K::deleted(store, key)))
                    }
                };
                if changed_now {
                    changed.notify_one();
                }
            }
            Ok(None) => {
                failed("watch stream ended".into());
                warn!(kind = name, "Kubernetes watch stream ended");
                return;
            }
            Err(e) => {
                // Keep the last view; the watcher retries when polled.
                let class = classify(&e);
                outage.failed(arrived, class);
                failed(e.to_string());
                warn!(kind = name, error = %e, ?class, "Kubernetes watch error; retrying");
                retry.wait(class).await;
            }
        }
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
