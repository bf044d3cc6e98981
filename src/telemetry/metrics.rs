//! Prometheus metrics (prometheus-client): reconciles and their duration, provider calls
//! and their latency, per-`ApiKeyPair` expiry, renewal, readiness and verification (labelled
//! with the provider resource they use), per-provider readiness and ThreatWinds session
//! expiry, and leadership. One [`Metrics`] per process.
//!
//! Per-object series belong to the leader: they are removed when the object is deleted and
//! all at once when this instance stops leading, so a standby never exports stale figures.
//! The five per-`ApiKeyPair` gauges are one table entry per key pair, encoded as series at
//! scrape time ([`KeyPairGauges`]).
//! The alerts (`charts/keypair-operator/templates/prometheusrule.yaml`) and the dashboard
//! (`charts/keypair-operator/files/dashboards/`) use only the names registered here; the
//! tests check that.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::memory::SharedStrings;

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

/// Labels of the provider request latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLatencyLabels {
    /// `threatwinds` or `datonis`.
    pub provider: &'static str,
    /// The trait operation (`create`, `get`, `list`, ...).
    pub operation: &'static str,
}

/// Labels of the per-`ApiKeyPair` gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyPairLabels {
    /// Namespace of the `ApiKeyPair`.
    pub namespace: String,
    /// Name of the `ApiKeyPair`.
    pub name: String,
    /// Kind of the provider resource it uses: `KeyPairProvider` or `ClusterKeyPairProvider`.
    pub provider_kind: String,
    /// Name of the provider resource it uses.
    pub provider_name: String,
}

/// The per-`ApiKeyPair` gauges, as one entry per key pair: its name, the labels it shares
/// with others (namespace and provider, one copy each) and its figures. Five `Family`s
/// kept a gauge cell and a map entry per key pair each, plus an index of the labels: about
/// 0.6 KB per key pair, against ~0.15 KB here.
#[derive(Debug, Default)]
struct KeyPairGauges(Mutex<KeyPairTable>);

#[derive(Debug, Default)]
struct KeyPairTable {
    series: HashMap<(Arc<str>, Box<str>), KeyPairSeries>,
    /// One copy of each namespace, provider kind and provider name.
    shared: SharedStrings,
}

#[derive(Debug)]
struct KeyPairSeries {
    provider_kind: Arc<str>,
    provider_name: Arc<str>,
    figures: KeyPairFigures,
}

/// Each per-`ApiKeyPair` gauge: name, help, and its value from the figures (none: no
/// series).
type KeyPairGauge = (
    &'static str,
    &'static str,
    fn(&KeyPairFigures) -> Option<i64>,
);

const KEY_PAIR_GAUGES: [KeyPairGauge; 5] = [
    (
        "expiration_timestamp_seconds",
        "When the key pair of each ApiKeyPair expires (unix seconds)",
        |f| f.expires_at,
    ),
    (
        "renewal_timestamp_seconds",
        "When the key pair of each ApiKeyPair is renewed (unix seconds)",
        |f| f.renews_at,
    ),
    (
        "renewal_awaiting_verification",
        "1 when the renewal time passed and the renewal key still waits for its emailed code (alert before the key in use expires)",
        |f| Some(i64::from(f.renewal_overdue)),
    ),
    (
        "awaiting_verification",
        "1 while the key pair of an ApiKeyPair waits for its emailed verification code",
        |f| Some(i64::from(f.awaiting_verification)),
    ),
    (
        "ready",
        "Whether each ApiKeyPair is Ready (1) or not (0)",
        |f| Some(i64::from(f.ready)),
    ),
];

impl KeyPairGauges {
    fn lock(&self) -> MutexGuard<'_, KeyPairTable> {
        // Nothing panics while holding it; a poisoned table is still consistent.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Collector for KeyPairGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let table = self.lock();
        for (name, help, value) in KEY_PAIR_GAUGES {
            // As a `Family` does, a gauge without any series is left out.
            if !table.series.values().any(|s| value(&s.figures).is_some()) {
                continue;
            }
            let mut metric = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for ((namespace, key_pair), series) in &table.series {
                let Some(value) = value(&series.figures) else {
                    continue;
                };
                let labels = [
                    ("namespace", &**namespace),
                    ("name", &**key_pair),
                    ("provider_kind", &*series.provider_kind),
                    ("provider_name", &*series.provider_name),
                ];
                metric.encode_family(&labels)?.encode_gauge(&value)?;
            }
        }
        Ok(())
    }
}

/// Labels of the per-provider gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    /// `KeyPairProvider` or `ClusterKeyPairProvider`.
    pub provider_kind: String,
    /// Namespace of a `KeyPairProvider`; empty for a `ClusterKeyPairProvider`.
    pub namespace: String,
    /// Name of the provider resource.
    pub provider_name: String,
    /// `threatwinds` or `datonis` (empty when the spec names neither).
    pub provider: &'static str,
}

type IntGauges<L> = Family<L, Gauge<i64, AtomicI64>>;

/// Every metric the operator exports.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ReconcileLabels, Counter>,
    reconcile_duration: Family<ControllerLabels, Histogram>,
    provider_requests: Family<ProviderCallLabels, Counter>,
    provider_request_duration: Family<ProviderLatencyLabels, Histogram>,
    key_pairs: Arc<KeyPairGauges>,
    provider_ready: IntGauges<ProviderLabels>,
    session_expiration: IntGauges<ProviderLabels>,
    leader: Gauge<i64, AtomicI64>,
    kube_requests: Family<KubeRequestLabels, Counter>,
    /// The length of the last exposition page.
    last_page_len: AtomicUsize,
    /// The labels each provider (kind, namespace, name) was last exported with.
    providers: Mutex<HashMap<(String, String, String), ProviderLabels>>,
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
    /// Whether its (first) key pair waits for its emailed verification code.
    pub awaiting_verification: bool,
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
        let provider_request_duration =
            Family::<ProviderLatencyLabels, Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.01, 2.0, 12))
            });
        registry.register(
            "provider_request_duration_seconds",
            "Duration of calls to remote key-pair APIs by provider and operation (retries and rate-limit waits included)",
            provider_request_duration.clone(),
        );
        let key_pairs = Arc::new(KeyPairGauges::default());
        registry.register_collector(Box::new(key_pairs.clone()));
        let provider_ready = IntGauges::<ProviderLabels>::default();
        registry.register(
            "provider_ready",
            "Whether each provider resource is Ready (1: its credentials work) or not (0)",
            provider_ready.clone(),
        );
        let session_expiration = IntGauges::<ProviderLabels>::default();
        registry.register(
            "provider_session_expiration_timestamp_seconds",
            "When the ThreatWinds session of each provider resource expires (unix seconds)",
            session_expiration.clone(),
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
            provider_request_duration,
            key_pairs,
            provider_ready,
            session_expiration,
            leader,
            last_page_len: AtomicUsize::new(0),
            providers: Mutex::default(),
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

    /// Records one provider call: its outcome and how long it took.
    pub fn provider_call(
        &self,
        provider: &'static str,
        operation: &'static str,
        status: &'static str,
        took: Duration,
    ) {
        self.provider_requests
            .get_or_create(&ProviderCallLabels {
                provider,
                operation,
                status,
            })
            .inc();
        self.provider_request_duration
            .get_or_create(&ProviderLatencyLabels {
                provider,
                operation,
            })
            .observe(took.as_secs_f64());
    }

    /// Sets the gauges of one `ApiKeyPair` (replacing its series if its labels changed).
    pub fn key_pair(&self, labels: KeyPairLabels, figures: KeyPairFigures) {
        let mut table = self.key_pairs.lock();
        let series = KeyPairSeries {
            provider_kind: table.shared.share(&labels.provider_kind),
            provider_name: table.shared.share(&labels.provider_name),
            figures,
        };
        let namespace = table.shared.share(&labels.namespace);
        table
            .series
            .insert((namespace, labels.name.into_boxed_str()), series);
    }

    /// Forgets a deleted `ApiKeyPair`.
    pub fn forget_key_pair(&self, namespace: &str, name: &str) {
        let mut table = self.key_pairs.lock();
        let Some(namespace) = table.shared.get(namespace) else {
            return;
        };
        table.series.remove(&(namespace, Box::from(name)));
    }

    /// Sets the gauges of one provider resource: whether it is Ready, and when its
    /// ThreatWinds session expires (none for Datonis, or when unknown).
    pub fn provider_status(
        &self,
        labels: ProviderLabels,
        ready: bool,
        session_expires_at: Option<i64>,
    ) {
        let id = (
            labels.provider_kind.clone(),
            labels.namespace.clone(),
            labels.provider_name.clone(),
        );
        if let Ok(mut known) = self.providers.lock()
            && let Some(previous) = known.insert(id, labels.clone())
            && previous != labels
        {
            self.provider_ready.remove(&previous);
            self.session_expiration.remove(&previous);
        }
        set(&self.provider_ready, &labels, Some(i64::from(ready)));
        set(&self.session_expiration, &labels, session_expires_at);
    }

    /// Forgets a deleted provider resource.
    pub fn forget_provider(&self, provider_kind: &str, namespace: &str, provider_name: &str) {
        let id = (
            provider_kind.to_owned(),
            namespace.to_owned(),
            provider_name.to_owned(),
        );
        let known = self.providers.lock().ok().and_then(|mut k| k.remove(&id));
        if let Some(labels) = known {
            self.provider_ready.remove(&labels);
            self.session_expiration.remove(&labels);
        }
    }

    /// Forgets every per-object series (key pairs and providers).
    pub fn clear_objects(&self) {
        *self.key_pairs.lock() = KeyPairTable::default();
        if let Ok(mut known) = self.providers.lock() {
            known.clear();
        }
        self.provider_ready.clear();
        self.session_expiration.clear();
    }

    /// Sets whether this instance leads. Losing the lead clears every per-object series:
    /// the new leader exports them, and a standby must not keep stale ones.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
        if !leader {
            self.clear_objects();
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        // Sized from the last one: at 10 000 key pairs the page is ~8 MB, and growing it
        // by doubling would hold the old and the new buffer at once, copying each time.
        let last = self.last_page_len.load(Ordering::Relaxed);
        let mut out = String::with_capacity(last + last / 8);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        self.last_page_len.store(out.len(), Ordering::Relaxed);
        out
    }
}

/// Sets `labels`'s gauge in `family` to `value`, or removes it when there is none.
fn set<L>(family: &IntGauges<L>, labels: &L, value: Option<i64>)
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    match value {
        Some(v) => {
            family.get_or_create(labels).set(v);
        }
        None => {
            family.remove(labels);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web(provider_name: &str) -> KeyPairLabels {
        KeyPairLabels {
            namespace: "apps".into(),
            name: "web".into(),
            provider_kind: "KeyPairProvider".into(),
            provider_name: provider_name.into(),
        }
    }

    fn tw() -> ProviderLabels {
        ProviderLabels {
            provider_kind: "ClusterKeyPairProvider".into(),
            namespace: String::new(),
            provider_name: "tw".into(),
            provider: "threatwinds",
        }
    }

    const FIGURES: KeyPairFigures = KeyPairFigures {
        expires_at: Some(1_900_000_000),
        renews_at: Some(1_800_000_000),
        ready: true,
        renewal_overdue: true,
        awaiting_verification: false,
    };

    #[test]
    fn metrics_encode_with_the_expected_names_and_labels() {
        let m = Metrics::new();
        m.reconciled("apikeypair", true, Duration::from_millis(12));
        m.provider_call("threatwinds", "create", "ok", Duration::from_millis(30));
        m.key_pair(web("p"), FIGURES);
        m.provider_status(tw(), true, Some(1_700_000_000));
        m.set_leader(true);
        let text = m.encode();
        let key =
            r#"namespace="apps",name="web",provider_kind="KeyPairProvider",provider_name="p""#;
        let provider = r#"provider_kind="ClusterKeyPairProvider",namespace="",provider_name="tw",provider="threatwinds""#;
        for needle in [
            "keypair_operator_reconciles_total{controller=\"apikeypair\",result=\"success\"} 1".to_owned(),
            "keypair_operator_reconcile_duration_seconds_count{controller=\"apikeypair\"} 1".to_owned(),
            "keypair_operator_provider_requests_total{provider=\"threatwinds\",operation=\"create\",status=\"ok\"} 1".to_owned(),
            "keypair_operator_provider_request_duration_seconds_count{provider=\"threatwinds\",operation=\"create\"} 1".to_owned(),
            "keypair_operator_provider_request_duration_seconds_bucket{le=\"0.04\",provider=\"threatwinds\",operation=\"create\"} 1".to_owned(),
            "keypair_operator_provider_request_duration_seconds_bucket{le=\"0.02\",provider=\"threatwinds\",operation=\"create\"} 0".to_owned(),
            format!("keypair_operator_expiration_timestamp_seconds{{{key}}} 1900000000"),
            format!("keypair_operator_ready{{{key}}} 1"),
            format!("keypair_operator_renewal_timestamp_seconds{{{key}}} 1800000000"),
            format!("keypair_operator_renewal_awaiting_verification{{{key}}} 1"),
            format!("keypair_operator_awaiting_verification{{{key}}} 0"),
            format!("keypair_operator_provider_ready{{{provider}}} 1"),
            format!("keypair_operator_provider_session_expiration_timestamp_seconds{{{provider}}} 1700000000"),
            "keypair_operator_leader 1".to_owned(),
        ] {
            assert!(text.contains(&needle), "missing {needle} in\n{text}");
        }
        m.forget_key_pair("apps", "web");
        m.forget_provider("ClusterKeyPairProvider", "", "tw");
        let text = m.encode();
        assert!(!text.contains("name=\"web\""), "{text}");
        assert!(!text.contains("provider_name=\"tw\""), "{text}");
    }

    #[test]
    fn key_pairs_share_one_copy_of_their_namespace_and_provider() {
        let m = Metrics::new();
        m.key_pair(web("p"), FIGURES);
        let mut api = web("p");
        api.name = "api".into();
        m.key_pair(api, FIGURES);
        m.key_pair(web("p"), FIGURES);
        let table = m.key_pairs.lock();
        assert_eq!(table.series.len(), 2);
        // "apps", "KeyPairProvider" and "p", once each.
        assert_eq!(table.shared.len(), 3);
        let mut series = table.series.iter();
        let (((a_ns, _), a), ((b_ns, _), b)) =
            (series.next().expect("one"), series.next().expect("two"));
        assert!(Arc::ptr_eq(a_ns, b_ns));
        assert!(Arc::ptr_eq(&a.provider_name, &b.provider_name));
    }

    #[test]
    fn a_gauge_without_a_value_has_no_series() {
        let m = Metrics::new();
        let unknown = KeyPairFigures {
            expires_at: None,
            renews_at: None,
            ..FIGURES
        };
        m.key_pair(web("p"), unknown);
        let text = m.encode();
        assert!(text.contains("keypair_operator_ready{"), "{text}");
        assert!(
            !text.contains("keypair_operator_expiration_timestamp_seconds{"),
            "{text}"
        );
        assert!(
            !text.contains("keypair_operator_renewal_timestamp_seconds{"),
            "{text}"
        );
    }

    #[test]
    fn a_key_pair_whose_labels_change_keeps_one_series() {
        let m = Metrics::new();
        m.key_pair(web("old"), FIGURES);
        m.key_pair(web("new"), FIGURES);
        let text = m.encode();
        assert!(!text.contains("provider_name=\"old\""), "{text}");
        assert_eq!(text.matches("keypair_operator_ready{").count(), 1, "{text}");
    }

    #[test]
    fn a_session_expiry_that_becomes_unknown_is_removed() {
        let m = Metrics::new();
        m.provider_status(tw(), true, Some(1_700_000_000));
        m.provider_status(tw(), false, None);
        let text = m.encode();
        assert!(text.contains("keypair_operator_provider_ready{"), "{text}");
        assert!(
            !text.contains("keypair_operator_provider_session_expiration_timestamp_seconds{"),
            "{text}"
        );
    }

    #[test]
    fn losing_the_lead_clears_every_per_object_series() {
        let m = Metrics::new();
        m.set_leader(true);
        m.reconciled("provider", false, Duration::from_millis(5));
        m.key_pair(web("p"), FIGURES);
        m.provider_status(tw(), false, None);
        m.set_leader(false);
        let text = m.encode();
        for gone in ["name=\"web\"", "provider_name=\"tw\""] {
            assert!(!text.contains(gone), "{gone} still exported:\n{text}");
        }
        assert!(text.contains("keypair_operator_leader 0"), "{text}");
        assert!(
            text.contains(
                "keypair_operator_reconciles_total{controller=\"provider\",result=\"error\"} 1"
            ),
            "process-wide counters stay: {text}"
        );
        // Leading again exports them afresh.
        m.set_leader(true);
        m.key_pair(web("p"), FIGURES);
        assert!(m.encode().contains("keypair_operator_ready{"));
    }
}
