//! The event recorder: kube-runtime's [`kube::runtime::events::Recorder`] semantics with a
//! small cache.
//!
//! kube's recorder turns a repeat of an event (same type, action, reason, reporter, object
//! and related object) within six minutes into a series: it patches the first event's
//! `series` instead of creating another. To do so it caches every event it published, as
//! the whole `events.k8s.io/v1` object next to a key that clones the object references:
//! ~3.4 KB per event (heaptrack: 3.5 MB of a 15.6 MB heap at 1000 new keys, one event
//! each), in a map that never shrinks, so 10 000 keys created together keep ~35 MB. This
//! recorder publishes the same objects and patches, and caches per event only a 128-bit
//! digest of kube's key and what a repeat needs: when the event was first published (its
//! name is derived from that and the object's name), the series count and when it was last
//! seen (~70 bytes; a key string and the name took ~0.3 KB), and at most 4096 of them, as
//! client-go's event correlator.
//!
//! Two things differ from kube's recorder, both so that every event is accepted: an event
//! about a cluster-scoped object goes to `kube-system` (see [`CLUSTER_EVENTS_NAMESPACE`]),
//! and an event's name is cut to fit however long the object's name is.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as KubeEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

/// What an event says, and who reports it: kube-runtime's types.
pub use kube::runtime::events::{Event, EventType, Reporter};

/// How long a published event can still become a series (as in kube-runtime).
const CACHE_TTL: SignedDuration = SignedDuration::from_mins(6);

/// How many published events are remembered at most, as client-go's event correlator (an
/// LRU of 4096): a burst of 10k new keys would otherwise keep 10k entries for six minutes.
const CACHE_MAX: usize = 4096;

/// Where events about cluster-scoped objects (ClusterKeyPairProviders) go. Their
/// `regarding.namespace` is empty, and `events.k8s.io/v1` accepts that only in
/// `kube-system` before Kubernetes 1.23 (1.22.3, 1.21.6, 1.20.12), and in `kube-system` or
/// `default` since; kube's recorder uses `default`, which older servers refuse.
pub const CLUSTER_EVENTS_NAMESPACE: &str = "kube-system";

/// The longest object name an event name starts with: object names may have 253
/// characters, and the event name adds `.` and up to 16 hex digits.
const NAME_HEAD_MAX: usize = 253 - 17;

/// The namespace an event about `reference` is created in.
fn event_namespace(reference: &ObjectReference) -> &str {
    reference
        .namespace
        .as_deref()
        .filter(|ns| !ns.is_empty())
        .unwrap_or(CLUSTER_EVENTS_NAMESPACE)
}

/// An event's name: the object's name (cut to fit) and the time, as kube names events.
fn event_name(object: &str, now: Timestamp) -> String {
    let head: String = object.chars().take(NAME_HEAD_MAX).collect();
    let head = head.trim_end_matches(['-', '.']);
    format!("{head}.{:x}", now.as_nanosecond())
}

/// What a repeat of a cached event needs.
#[derive(Clone, Copy, Debug)]
struct Published {
    /// When it was first published: with the object's name, the event object's name.
    first: Timestamp,
    /// How often it was observed (1 until it became a series).
    count: i32,
    /// When it was last observed.
    last_observed: Timestamp,
}

/// Publishes Kubernetes events, turning repeats into series as kube's recorder does.
#[derive(Clone)]
pub struct Recorder {
    client: Client,
    reporter: Reporter,
    cache: Arc<Mutex<HashMap<EventKey, Published>>>,
}

impl Recorder {
    /// A recorder that publishes as `reporter`.
    #[must_use]
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Recorder {
            client,
            reporter,
            cache: Arc::default(),
        }
    }

    /// Publishes `event` about `reference`: creates it, or, when the same event was
    /// published less than six minutes ago, counts it in that event's series.
    ///
    /// # Errors
    ///
    /// The API server's answer when it refuses the create or patch.
    pub async fn publish(
        &self,
        event: &Event,
        reference: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let key = event_key(&self.reporter, event, reference);
        let repeat = self.cache.lock().ok().and_then(|mut cache| {
            forget_expired(&mut cache, now);
            cache.get(&key).copied()
        });
        let events: Api<KubeEvent> =
            Api::namespaced(self.client.clone(), event_namespace(reference));
        let published = match repeat {
            Some(first) => {
                let count = first.count.saturating_add(1);
                let series = EventSeries {
                    count,
                    last_observed_time: MicroTime(now),
                };
                // kube patches the whole cached event; everything but the series is what
                // the server already has, so the series alone has the same effect.
                let patch = json!({ "series": series });
                let name = self.event_name(reference, first.first);
                events
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
                Published {
                    count,
                    last_observed: now,
                    ..first
                }
            }
            None => {
                let object = self.generate(event, reference, now);
                events.create(&PostParams::default(), &object).await?;
                Published {
                    first: now,
                    count: 1,
                    last_observed: now,
                }
            }
        };
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(key, published);
            forget_oldest(&mut cache);
        }
        Ok(())
    }

    /// The name of the event about `reference` first published at `first`.
    fn event_name(&self, reference: &ObjectReference, first: Timestamp) -> String {
        let object = reference.name.as_ref().unwrap_or(&self.reporter.controller);
        event_name(object, first)
    }

    /// The event object kube's recorder creates for a first occurrence.
    fn generate(&self, event: &Event, reference: &ObjectReference, now: Timestamp) -> KubeEvent {
        let controller = &self.reporter.controller;
        KubeEvent {
            action: Some(event.action.clone()),
            reason: Some(event.reason.clone()),
            event_time: Some(MicroTime(now)),
            regarding: Some(reference.clone()),
            note: event.note.clone(),
            metadata: ObjectMeta {
                namespace: Some(event_namespace(reference).to_owned()),
                name: Some(self.event_name(reference, now)),
                ..ObjectMeta::default()
            },
            reporting_controller: Some(controller.clone()),
            reporting_instance: Some(
                self.reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| controller.clone()),
            ),
            type_: Some(
                match event.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .to_owned(),
            ),
            related: event.secondary.clone(),
            ..KubeEvent::default()
        }
    }
}

/// Drops the events that can no longer become a series, and gives back the room of a map
/// a burst had grown (a `HashMap` keeps its capacity otherwise).
fn forget_expired(cache: &mut HashMap<EventKey, Published>, now: Timestamp) {
    cache.retain(|_, published| published.last_observed + CACHE_TTL > now);
    if cache.capacity() > 64 && cache.capacity() > 4 * cache.len() {
        cache.shrink_to(2 * cache.len());
    }
}

/// Drops the least recently observed quarter once more than [`CACHE_MAX`] events are
/// remembered: a repeat of a forgotten event is published as a new event, not a series.
fn forget_oldest(cache: &mut HashMap<EventKey, Published>) {
    if cache.len() <= CACHE_MAX {
        return;
    }
    let mut observed: Vec<Timestamp> = cache.values().map(|p| p.last_observed).collect();
    let forget = observed.len() - CACHE_MAX * 3 / 4;
    let (_, oldest_kept, _) = observed.select_nth_unstable(forget);
    let oldest_kept = *oldest_kept;
    cache.retain(|_, published| published.last_observed >= oldest_kept);
}

/// A digest of what tells two events apart (see [`event_key`] and
/// [`crate::memory::digest128`]).
type EventKey = u128;

/// What tells two events apart, as kube's recorder keys them: type, action, reason,
/// reporter, and the regarding and related objects by API version, kind, name, namespace
/// and uid; joined into one string (fields cannot contain a NUL) and digested.
fn event_key(reporter: &Reporter, event: &Event, reference: &ObjectReference) -> EventKey {
    let object = |r: Option<&ObjectReference>| -> [Option<String>; 5] {
        match r {
            None => Default::default(),
            Some(r) => [
                r.api_version.clone(),
                r.kind.clone(),
                r.name.clone(),
                r.namespace.clone(),
                r.uid.clone(),
            ],
        }
    };
    let type_ = match event.type_ {
        EventType::Normal => "N",
        EventType::Warning => "W",
    };
    let mut key = format!(
        "{type_}\0{}\0{}\0{}\0",
        event.action, event.reason, reporter.controller
    );
    let fields = std::iter::once(reporter.instance.clone())
        .chain(object(Some(reference)))
        .chain(object(event.secondary.as_ref()));
    for field in fields {
        // `None` and `Some("")` differ in kube's key too.
        match field {
            None => key.push('\u{1}'),
            Some(value) => key.push_str(&value),
        }
        key.push('\0');
    }
    crate::memory::digest128(key.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(name: &str, uid: &str) -> ObjectReference {
        ObjectReference {
            api_version: Some("keypairs.dev/v1alpha1".into()),
            kind: Some("ApiKeyPair".into()),
            name: Some(name.into()),
            namespace: Some("team".into()),
            uid: Some(uid.into()),
            resource_version: Some("1".into()),
            ..ObjectReference::default()
        }
    }

    fn event(reason: &str, note: &str) -> Event {
        Event {
            type_: EventType::Normal,
            reason: reason.into(),
            note: Some(note.into()),
            action: "Create".into(),
            secondary: None,
        }
    }

    fn reporter() -> Reporter {
        Reporter {
            controller: "keypair-operator".into(),
            instance: None,
        }
    }

    #[test]
    fn the_key_is_kubes_the_note_and_resource_version_do_not_count() {
        let a = event_key(&reporter(), &event("Created", "one"), &reference("k", "u1"));
        let mut moved = reference("k", "u1");
        moved.resource_version = Some("2".into());
        let b = event_key(&reporter(), &event("Created", "two"), &moved);
        assert_eq!(a, b, "same event, other note and version: one series");
        let other_uid = event_key(&reporter(), &event("Created", "one"), &reference("k", "u2"));
        let other_reason = event_key(&reporter(), &event("Ready", "one"), &reference("k", "u1"));
        let mut related = event("Created", "one");
        related.secondary = Some(reference("s", "u3"));
        let with_related = event_key(&reporter(), &related, &reference("k", "u1"));
        let mut warning = event("Created", "one");
        warning.type_ = EventType::Warning;
        let as_warning = event_key(&reporter(), &warning, &reference("k", "u1"));
        for other in [other_uid, other_reason, with_related, as_warning] {
            assert_ne!(a, other);
        }
        let mut empty_instance = reporter();
        empty_instance.instance = Some(String::new());
        let c = event_key(
            &empty_instance,
            &event("Created", "one"),
            &reference("k", "u1"),
        );
        assert_ne!(
            a, c,
            "no instance and an empty one differ, as in kube's key"
        );
    }

    #[test]
    fn events_about_cluster_scoped_objects_go_to_kube_system_and_long_names_are_cut() {
        let mut cluster_scoped = reference("shared", "u1");
        cluster_scoped.namespace = None;
        assert_eq!(event_namespace(&cluster_scoped), "kube-system");
        cluster_scoped.namespace = Some(String::new());
        assert_eq!(event_namespace(&cluster_scoped), "kube-system");
        assert_eq!(event_namespace(&reference("k", "u1")), "team");

        let now = Timestamp::now();
        let long = format!("{}-x", "a".repeat(NAME_HEAD_MAX - 1));
        let name = event_name(&long, now);
        assert!(name.len() <= 253, "{}", name.len());
        assert!(name.starts_with(&"a".repeat(NAME_HEAD_MAX - 1)));
        assert!(
            !name.contains("-."),
            "no dangling dash before the dot: {name}"
        );
        assert_eq!(event_name("k", now), format!("k.{:x}", now.as_nanosecond()));
    }

    #[test]
    fn expired_events_are_forgotten_and_the_map_shrinks_after_a_burst() {
        let now = Timestamp::now();
        let mut cache = HashMap::new();
        for i in 0..1000 {
            let at = if i < 10 {
                now
            } else {
                now - SignedDuration::from_mins(7)
            };
            let key = event_key(
                &reporter(),
                &event("Created", ""),
                &reference("k", &i.to_string()),
            );
            cache.insert(
                key,
                Published {
                    first: at,
                    count: 1,
                    last_observed: at,
                },
            );
        }
        forget_expired(&mut cache, now);
        assert_eq!(cache.len(), 10, "only the recent ones stay");
        assert!(cache.capacity() < 100, "capacity {}", cache.capacity());
    }

    #[test]
    fn past_the_limit_the_least_recently_observed_are_forgotten() {
        let start = Timestamp::now();
        let at = |i: i64| start + SignedDuration::from_millis(i);
        let key = |i: i64| {
            let reference = reference("k", &i.to_string());
            event_key(&reporter(), &event("Created", ""), &reference)
        };
        let mut cache = HashMap::new();
        for i in 0..=CACHE_MAX as i64 {
            let published = Published {
                first: at(i),
                count: 1,
                last_observed: at(i),
            };
            cache.insert(key(i), published);
            forget_oldest(&mut cache);
        }
        assert_eq!(cache.len(), CACHE_MAX * 3 / 4);
        let forgotten = (CACHE_MAX / 4 + 1) as i64;
        assert!(!cache.contains_key(&key(forgotten - 1)));
        assert!(cache.contains_key(&key(forgotten)));
        assert!(
            cache.contains_key(&key(CACHE_MAX as i64)),
            "the newest stays"
        );
    }
}
