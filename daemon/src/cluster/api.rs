//! The Kubernetes API as cluster mode uses it: watched collections kept in kube's
//! reflector stores, and failures classified, counted and logged so that an RBAC denial
//! reads as one, never crashes the daemon, and is retried with kube's backoff.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt as _;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Resource};
use prometheus::{IntCounterVec, Registry};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use crate::metrics::catalogue;

/// Bounded causes for `cniguard_cluster_api_errors_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiFailure {
    /// 401: the credentials are not accepted.
    Unauthorized,
    /// 403: RBAC denies the call.
    Forbidden,
    /// 404: the resource does not exist (a CRD not installed).
    NotFound,
    /// 410: a watch resumed from a version the server no longer has (kube lists again).
    Expired,
    /// 429: the API server asks clients to slow down.
    Throttled,
    /// 5xx.
    ServerError,
    /// No answer: connection refused, reset, TLS or timeout.
    Connection,
    Other,
}

impl ApiFailure {
    #[must_use]
    pub fn from_status(code: u16) -> Self {
        match code {
            401 => Self::Unauthorized,
            403 => Self::Forbidden,
            404 => Self::NotFound,
            410 => Self::Expired,
            429 => Self::Throttled,
            500..=599 => Self::ServerError,
            _ => Self::Other,
        }
    }

    #[must_use]
    pub fn from_client(err: &kube::Error) -> Self {
        match err {
            kube::Error::Api(response) => Self::from_status(response.code),
            kube::Error::HyperError(_) | kube::Error::Service(_) => Self::Connection,
            _ => Self::Other,
        }
    }

    #[must_use]
    pub fn from_watcher(err: &watcher::Error) -> Self {
        match err {
            watcher::Error::InitialListFailed(err)
            | watcher::Error::WatchStartFailed(err)
            | watcher::Error::WatchFailed(err) => Self::from_client(err),
            watcher::Error::WatchError(response) => Self::from_status(response.code),
            watcher::Error::NoResourceVersion => Self::Other,
        }
    }

    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::Expired => "expired",
            Self::Throttled => "throttled",
            Self::ServerError => "server_error",
            Self::Connection => "connection",
            Self::Other => "other",
        }
    }

    /// What an operator should do about it.
    fn hint(self) -> &'static str {
        match self {
            Self::Forbidden => {
                "RBAC denies it: bind the ServiceAccount to the roles in deploy/rbac.yaml (README: Install on a cluster, Permissions)"
            }
            Self::Unauthorized => {
                "the API server does not accept the credentials (service account token or kubeconfig)"
            }
            Self::NotFound => "the API server does not serve this resource",
            Self::Connection => "the API server did not answer; retrying",
            _ => "retrying with backoff",
        }
    }
}

/// cniguard's view of its own API use.
#[derive(Clone)]
pub struct ApiMetrics {
    /// `cniguard_cluster_api_errors_total{resource,reason}`.
    pub errors: IntCounterVec,
}

impl ApiMetrics {
    /// # Errors
    /// If the metrics are already registered.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let errors = catalogue::CLUSTER_API_ERRORS_TOTAL.int_counter_vec()?;
        registry.register(Box::new(errors.clone()))?;
        Ok(Self { errors })
    }

    /// Counts and logs a failed call on `resource` (`verb` for the log).
    pub fn failed(&self, resource: &str, verb: &str, failure: ApiFailure, err: &dyn std::fmt::Display) {
        self.errors.with_label_values(&[resource, failure.label()]).inc();
        match failure {
            ApiFailure::Forbidden | ApiFailure::Unauthorized => tracing::error!(
                resource,
                reason = failure.label(),
                "Kubernetes API refused to {verb} {resource}: {}: {err}",
                failure.hint()
            ),
            _ => tracing::warn!(
                resource,
                reason = failure.label(),
                "Kubernetes API call to {verb} {resource} failed: {}: {err}",
                failure.hint()
            ),
        }
    }
}

/// A collection watched into a reflector store.
pub struct Watched<K: Resource + 'static>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    pub store: Store<K>,
    /// Set while the API answers 404 for the collection (a CRD that is not installed); for
    /// optional resources that is a state, not an error.
    pub absent: Arc<AtomicBool>,
    /// Set once the first complete listing is in the store (or the resource is absent).
    pub synced: Arc<AtomicBool>,
}

impl<K: Resource + 'static> Watched<K>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    #[must_use]
    pub fn is_absent(&self) -> bool {
        self.absent.load(Ordering::Acquire)
    }

    /// Whether the store holds a complete listing, or the resource is known to be absent:
    /// only then do its contents (or their absence) mean anything.
    #[must_use]
    pub fn is_known(&self) -> bool {
        self.is_absent() || self.synced.load(Ordering::Acquire)
    }
}

/// Whether a 404 is an error (a core resource) or the resource is simply not installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    Required,
    Optional,
}

/// Watches `api` with `config` into a store, for as long as the daemon runs; each change
/// notifies `changed`. Failures are counted under `resource` and retried with kube's
/// default backoff.
pub fn watch<K>(
    api: Api<K>,
    dynamic: K::DynamicType,
    config: watcher::Config,
    resource: &'static str,
    presence: Presence,
    metrics: &ApiMetrics,
    changed: Arc<Notify>,
) -> Watched<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    let writer = reflector::store::Writer::new(dynamic);
    let store = writer.as_reader();
    let absent = Arc::new(AtomicBool::new(false));
    let synced = Arc::new(AtomicBool::new(false));
    let stream = reflector::reflector(writer, watcher(api, config).default_backoff());
    let (metrics, flag, done) = (metrics.clone(), absent.clone(), synced.clone());
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok(event) => {
                    if flag.swap(false, Ordering::AcqRel) {
                        tracing::info!(resource, "{resource} is served by the API now");
                    }
                    if matches!(event, watcher::Event::InitDone) {
                        done.store(true, Ordering::Release);
                    }
                    if matches!(
                        event,
                        watcher::Event::InitDone | watcher::Event::Apply(_) | watcher::Event::Delete(_)
                    ) {
                        changed.notify_one();
                    }
                }
                Err(err) => {
                    let failure = ApiFailure::from_watcher(&err);
                    if failure == ApiFailure::NotFound && presence == Presence::Optional {
                        if !flag.swap(true, Ordering::AcqRel) {
                            tracing::info!(
                                resource,
                                "{resource} is not served by this cluster (CRD not installed)"
                            );
                            changed.notify_one();
                        }
                    } else {
                        metrics.failed(resource, "list/watch", failure, &err);
                    }
                }
            }
        }
    });
    Watched { store, absent, synced }
}
