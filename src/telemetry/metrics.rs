//! Prometheus metrics (prometheus-client): reconciles, their duration, provider calls,
//! per-`ApiKeyPair` expiry and readiness, and leadership. One [`Metrics`] per process.

use std::sync::atomic::AtomicI64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of `keypair_operator_reconciles_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    /// `apikeypair` or `provider`.
    pub controller: &'static str,
    /// `success` or `error`.
    pub result: &'static str,
}

/// Labels of `keypair_operator_reconcile_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// `apikeypair` or `provider`.
    pub controller: &'static str,
}

/// Labels of `keypair_operator_provider_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderCallLabels {
    /// `threatwinds` or `datonis`.
    pub provider: &'static str,
    /// The trait operation (`create`, `get`, `list`, ...).
    pub operation: &'static str,
    /// `ok`, or the error class (`not_found`, `server_error`, ...).
    pub status: &'static str,
}

/// Labels of `keypair_operator_kube_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KubeRequestLabels {
    /// `get`, `list`, `watch`, `create`, `patch`, `update` or `delete`.
    pub verb: &'static str,
    /// The resource, with its subresource (`apikeypairs/status`).
    pub resource: String,
}

/// Labels of the per-`ApiKeyPair` gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyPairLabels {
    /// Namespace of the `ApiKeyPair`.
    pub namespace: String,
    /// Name of the `ApiKeyPair`.
    pub name: String,
}

/// Every metric the operator exports.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ReconcileLabels, Counter>,
    reconcile_duration: Family<ControllerLabels, Histogram>,
    provider_requests: Family<ProviderCallLabels, Counter>,
    expiration: Family<KeyPairLabels, Gauge<i64, AtomicI64>>,
    renewal: Family<KeyPairLabels, Gauge<i64, AtomicI64>>,
    renewal_overdue: Family<KeyPairLabels, Gauge<i64, AtomicI64>>,
    ready: Family<KeyPairLabels, Gauge<i64, AtomicI64>>,
    leader: Gauge<i64, AtomicI64>,
    kube_requests: Family<KubeRequestLabels, Counter>,
}

/// What the gauges of one `ApiKeyPair` show.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyPairFigures {
    /// When its key pair expires (unix seconds).
    pub expires_at: Option<i64>,
    /// When its key pair is renewed (unix seconds).
    pub renews_at: Option<i64>,
    /// Whether it is Ready.
    pub ready: bool,
    /// Whether the renewal time passed and the renewal key still waits for its code.
    pub renewal_overdue: bool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under the `keypair_operator` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("keypair_operator");
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciles by controller and result",
            reconciles.clone(),
        );
        let reconcile_duration =
            Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.005, 2.0, 12))
            });
        registry.register(
            "reconcile_duration_seconds",
            "Duration of reconciles",
            reconcile_duration.clone(),
        );
        let provider_requests = Family::<ProviderCallLabels, Counter>::default();
        registry.register(
            "provider_requests",
            "Calls to remote key-pair APIs by provider, operation and outcome",
            provider_requests.clone(),
        );
        let expiration = Family::<KeyPairLabels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "expiration_timestamp_seconds",
            "When the key pair of each ApiKeyPair expires (unix seconds)",
            expiration.clone(),
        );
        let renewal = Family::<KeyPairLabels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "renewal_timestamp_seconds",
            "When the key pair of each ApiKeyPair is renewed (unix seconds)",
            renewal.clone(),
        );
        let renewal_overdue = Family::<KeyPairLabels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "renewal_awaiting_verification",
            "1 when the renewal time passed and the renewal key still waits for its emailed code (alert before the key in use expires)",
            renewal_overdue.clone(),
        );
        let ready = Family::<KeyPairLabels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "ready",
            "Whether each ApiKeyPair is Ready (1) or not (0)",
            ready.clone(),
        );
        let leader = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "leader",
            "Whether this instance holds the leader lease (1) or not (0)",
            leader.clone(),
        );
        let kube_requests = Family::<KubeRequestLabels, Counter>::default();
        registry.register(
            "kube_requests",
            "Requests this operator made to the Kubernetes API, by verb and resource",
            kube_requests.clone(),
        );
        Self {
            kube_requests,
            registry,
            reconciles,
            reconcile_duration,
            provider_requests,
            expiration,
            renewal,
            renewal_overdue,
            ready,
            leader,
        }
    }

    /// Counts one request to the Kubernetes API.
    pub fn kube_request(&self, verb: &'static str, resource: &str) {
        let labels = KubeRequestLabels {
            verb,
            resource: resource.to_owned(),
        };
        self.kube_requests.get_or_create(&labels).inc();
    }

    /// Records one reconcile.
    pub fn reconciled(&self, controller: &'static str, success: bool, took: Duration) {
        let result = if success { "success" } else { "error" };
        self.reconciles
            .get_or_create(&ReconcileLabels { controller, result })
            .inc();
        self.reconcile_duration
            .get_or_create(&ControllerLabels { controller })
            .observe(took.as_secs_f64());
    }

    /// Records one provider call.
    pub fn provider_call(
        &self,
        provider: &'static str,
        operation: &'static str,
        status: &'static str,
    ) {
        self.provider_requests
            .get_or_create(&ProviderCallLabels {
                provider,
                operation,
                status,
            })
            .inc();
    }

    /// Sets the gauges of one `ApiKeyPair`.
    pub fn key_pair(&self, namespace: &str, name: &str, figures: KeyPairFigures) {
        let labels = KeyPairLabels {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        let set =
            |family: &Family<KeyPairLabels, Gauge<i64, AtomicI64>>, value: Option<i64>| match value
            {
                Some(v) => {
                    family.get_or_create(&labels).set(v);
                }
                None => {
                    family.remove(&labels);
                }
            };
        set(&self.expiration, figures.expires_at);
        set(&self.renewal, figures.renews_at);
        set(
            &self.renewal_overdue,
            Some(i64::from(figures.renewal_overdue)),
        );
        set(&self.ready, Some(i64::from(figures.ready)));
    }

    /// Forgets a deleted `ApiKeyPair`.
    pub fn forget_key_pair(&self, namespace: &str, name: &str) {
        let labels = KeyPairLabels {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        self.expiration.remove(&labels);
        self.renewal.remove(&labels);
        self.renewal_overdue.remove(&labels);
        self.ready.remove(&labels);
    }

    /// Sets whether this instance leads.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_encode_with_the_expected_names() {
        let m = Metrics::new();
        m.reconciled("apikeypair", true, Duration::from_millis(12));
        m.provider_call("threatwinds", "create", "ok");
        let figures = KeyPairFigures {
            expires_at: Some(1_900_000_000),
            renews_at: Some(1_800_000_000),
            ready: true,
            renewal_overdue: true,
        };
        m.key_pair("apps", "web", figures);
        m.set_leader(true);
        let text = m.encode();
        for needle in [
            "keypair_operator_reconciles_total{controller=\"apikeypair\",result=\"success\"} 1",
            "keypair_operator_reconcile_duration_seconds_count{controller=\"apikeypair\"} 1",
            "keypair_operator_provider_requests_total{provider=\"threatwinds\",operation=\"create\",status=\"ok\"} 1",
            "keypair_operator_expiration_timestamp_seconds{namespace=\"apps\",name=\"web\"} 1900000000",
            "keypair_operator_ready{namespace=\"apps\",name=\"web\"} 1",
            "keypair_operator_renewal_timestamp_seconds{namespace=\"apps\",name=\"web\"} 1800000000",
            "keypair_operator_renewal_awaiting_verification{namespace=\"apps\",name=\"web\"} 1",
            "keypair_operator_leader 1",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        m.forget_key_pair("apps", "web");
        assert!(!m.encode().contains("name=\"web\""));
    }
}
