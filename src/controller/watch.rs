//! One watch stream per resource kind, whatever the scope: with `--namespace` ×N the
//! per-namespace watches are merged into a single stream that a single reflector store
//! and a single controller consume, with the store semantics of one watch.
//!
//! A reflector store treats `Init … InitDone` as "replace everything": N interleaved
//! per-namespace relists would wipe each other's objects. [`Merge`] therefore holds the
//! first lists until every namespace has listed, emits them as one `Init … InitDone`, and
//! turns each later relist of one namespace into `Apply`s plus a `Delete` for every
//! object of that namespace the relist no longer shows.

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;

use futures::{StreamExt, stream};
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, ObjectMeta};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;

use super::Scope;
use super::decode::WithoutManagedFields;

/// A watch of `K` over `scope`: one cluster watch, one namespace watch, or merged
/// namespace watches. Each object is decoded without its `managedFields` (see
/// [`WithoutManagedFields`]) and turned into what the store keeps (`cached`, e.g.
/// [`slimmed`]) as it arrives, before namespaces are merged, so the full object is never
/// held longer than its event. `store` is the store the stream is reflected into (it
/// supplies the object of a `Delete` found by a relist).
pub fn scoped<K, T>(
    client: &Client,
    scope: &Scope,
    config: &watcher::Config,
    store: Store<T>,
    cached: fn(K) -> T,
) -> Events<T>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
    T: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    let (client, config) = (client.clone(), config.clone());
    scoped_with(scope, store, move |namespace| {
        let api = api::<WithoutManagedFields<K>>(&client, namespace);
        watcher::watcher(api, config.clone())
            .default_backoff()
            .map(move |event| event.map(|e| map_objects(e, |object| cached(object.0))))
            .boxed()
    })
}

/// `config` listing from the API server's watch cache (`resourceVersion=0`), as
/// client-go's informers list. A paged quorum list of a custom resource from etcd costs
/// the API server far more, and it sets how long a restart or a failover takes (10k
/// `ApiKeyPair`s: 6 to 7 s, against 1.5 s from the cache). The API server lists from its
/// cache only without a page limit (and kube sends no `resourceVersion=0` with one), so
/// the whole list arrives as one response, decoded at once (the memory this costs is in
/// the README). The cache may lag etcd a little; nothing is decided on it alone: status
/// writes are fenced by `resourceVersion`, and every provider delete follows such a write
/// or a fresh read (see `lifecycle`).
pub fn from_watch_cache(config: watcher::Config) -> watcher::Config {
    watcher::Config {
        page_size: None,
        ..config.any_semantic()
    }
}

/// `impl Resource` for `$cached`, what a store keeps of `$resource` (a struct with a
/// `metadata` field): the same kind, group, version and plural, so that owner references,
/// object references and the controller's triggers treat it as `$resource`.
macro_rules! cached_resource {
    ($cached:ty, $resource:ty) => {
        impl kube::Resource for $cached {
            type DynamicType = ();
            type Scope = k8s_openapi::NamespaceResourceScope;

            fn kind(dt: &()) -> std::borrow::Cow<'_, str> {
                <$resource as kube::Resource>::kind(dt)
            }
            fn group(dt: &()) -> std::borrow::Cow<'_, str> {
                <$resource as kube::Resource>::group(dt)
            }
            fn version(dt: &()) -> std::borrow::Cow<'_, str> {
                <$resource as kube::Resource>::version(dt)
            }
            fn plural(dt: &()) -> std::borrow::Cow<'_, str> {
                <$resource as kube::Resource>::plural(dt)
            }
            fn meta(&self) -> &kube::api::ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut kube::api::ObjectMeta {
                &mut self.metadata
            }
        }
    };
}
pub(super) use cached_resource;

/// Written by `kubectl apply` (client-side): a copy of the whole object as last applied.
pub const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The object as it is cached, without what nothing here reads and what at scale is a
/// large part of each cached object: `managedFields` (which [`scoped`] watches already
/// skip when they decode), and the `kubectl apply` copy of the
/// object (as large as the spec again). The operator's own Secrets are written by
/// server-side apply and never carry that annotation; an `ApiKeyPair`'s annotations are
/// read only for the operator's own `keypairs.dev/*` requests.
pub fn slimmed<K: Resource>(mut object: K) -> K {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    retain_annotations(meta, |key| key != LAST_APPLIED_ANNOTATION);
    object
}

/// Keeps the annotations whose key `keep` accepts; no map at all when none is left.
pub fn retain_annotations(meta: &mut ObjectMeta, keep: impl Fn(&str) -> bool) {
    if let Some(annotations) = &mut meta.annotations {
        annotations.retain(|key, _| keep(key));
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

/// The same event with `f` applied to each object it carries (what the store keeps of it).
pub(super) fn map_objects<K, T>(event: Event<K>, f: impl Fn(K) -> T) -> Event<T> {
    match event {
        Event::Apply(o) => Event::Apply(f(o)),
        Event::InitApply(o) => Event::InitApply(f(o)),
        Event::Delete(o) => Event::Delete(f(o)),
        Event::Init => Event::Init,
        Event::InitDone => Event::InitDone,
    }
}

/// A stream of watch events.
pub type Events<K> = stream::BoxStream<'static, Result<Event<K>, watcher::Error>>;

fn api<K: Resource<DynamicType = (), Scope = NamespaceResourceScope>>(
    client: &Client,
    namespace: Option<&str>,
) -> Api<K> {
    match namespace {
        None => Api::all(client.clone()),
        Some(namespace) => Api::namespaced(client.clone(), namespace),
    }
}

fn scoped_with<K>(
    scope: &Scope,
    store: Store<K>,
    watch: impl Fn(Option<&str>) -> Events<K>,
) -> Events<K>
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    match scope {
        Scope::All => watch(None),
        Scope::Namespaces(namespaces) if namespaces.len() == 1 => watch(Some(&namespaces[0])),
        Scope::Namespaces(namespaces) => {
            let streams = namespaces
                .iter()
                .enumerate()
                .map(|(index, namespace)| watch(Some(namespace)).map(move |event| (index, event)));
            let mut merge = Merge::new(namespaces.len(), store);
            stream::select_all(streams)
                .flat_map(move |(index, event)| stream::iter(merge.push(index, event)))
                .boxed()
        }
    }
}

/// Which streams have listed once, and what they listed.
type FirstLists<K> = (Vec<bool>, HashMap<ObjectRef<K>, K>);

/// The state that merges N watch streams into one with single-watch store semantics.
pub struct Merge<K: Resource<DynamicType = ()> + 'static> {
    /// Objects each stream has put in the store.
    known: Vec<HashSet<ObjectRef<K>>>,
    /// Objects a stream's current relist has shown so far.
    relisting: Vec<Option<HashSet<ObjectRef<K>>>>,
    /// Until every stream has listed once: which have, and what they listed.
    first_lists: Option<FirstLists<K>>,
    store: Store<K>,
}

impl<K> Merge<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    /// A merge of `streams` streams reflected into `store`.
    pub fn new(streams: usize, store: Store<K>) -> Self {
        Merge {
            known: vec![HashSet::new(); streams],
            relisting: vec![None; streams],
            first_lists: Some((vec![false; streams], HashMap::new())),
            store,
        }
    }

    /// The events to pass on for `event` from stream `index`.
    pub fn push(
        &mut self,
        index: usize,
        event: Result<Event<K>, watcher::Error>,
    ) -> Vec<Result<Event<K>, watcher::Error>> {
        match event {
            Err(error) => vec![Err(error)],
            Ok(event) => self.apply(index, event).into_iter().map(Ok).collect(),
        }
    }

    fn apply(&mut self, index: usize, event: Event<K>) -> Vec<Event<K>> {
        match event {
            Event::Init => {
                self.relisting[index] = Some(HashSet::new());
                vec![]
            }
            Event::InitApply(object) | Event::Apply(object) => {
                let key = ObjectRef::from_obj(&object);
                if let Some(seen) = &mut self.relisting[index] {
                    seen.insert(key.clone());
                }
                self.known[index].insert(key.clone());
                match &mut self.first_lists {
                    Some((_, listed)) => {
                        listed.insert(key, object);
                        vec![]
                    }
                    None => vec![Event::Apply(object)],
                }
            }
            Event::Delete(object) => {
                let key = ObjectRef::from_obj(&object);
                self.known[index].remove(&key);
                match &mut self.first_lists {
                    Some((_, listed)) => {
                        listed.remove(&key);
                        vec![]
                    }
                    None => vec![Event::Delete(object)],
                }
            }
            Event::InitDone => self.relisted(index),
        }
    }

    fn relisted(&mut self, index: usize) -> Vec<Event<K>> {
        let seen = self.relisting[index].take().unwrap_or_default();
        let gone: Vec<ObjectRef<K>> = self.known[index].difference(&seen).cloned().collect();
        self.known[index] = seen;
        if let Some((done, listed)) = &mut self.first_lists {
            for key in &gone {
                listed.remove(key);
            }
            done[index] = true;
            if !done.iter().all(|d| *d) {
                return vec![];
            }
            let listed = std::mem::take(listed);
            self.first_lists = None;
            let mut events = vec![Event::Init];
            events.extend(listed.into_values().map(Event::InitApply));
            events.push(Event::InitDone);
            return events;
        }
        gone.iter()
            .filter_map(|key| self.store.get(key))
            .map(|object| Event::Delete(object.as_ref().clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::reflector;

    fn config_map(namespace: &str, name: &str) -> ConfigMap {
        let mut object = ConfigMap::default();
        object.metadata.namespace = Some(namespace.to_owned());
        object.metadata.name = Some(name.to_owned());
        object
    }

    fn names(store: &Store<ConfigMap>) -> Vec<String> {
        let mut names: Vec<String> = store
            .state()
            .iter()
            .map(|o| {
                format!(
                    "{}/{}",
                    o.metadata.namespace.clone().unwrap_or_default(),
                    o.metadata.name.clone().unwrap_or_default()
                )
            })
            .collect();
        names.sort();
        names
    }

    /// Feeds `events` through a merge of two streams into a real reflector store.
    struct Harness {
        merge: Merge<ConfigMap>,
        writer: reflector::store::Writer<ConfigMap>,
        store: Store<ConfigMap>,
    }

    impl Harness {
        fn new() -> Self {
            let (store, writer) = reflector::store();
            Harness {
                merge: Merge::new(2, store.clone()),
                writer,
                store,
            }
        }

        fn push(&mut self, index: usize, event: Event<ConfigMap>) -> usize {
            let out = self.merge.push(index, Ok(event));
            for event in out.iter().flatten() {
                self.writer.apply_watcher_event(event);
            }
            out.len()
        }

        fn list(&mut self, index: usize, objects: &[ConfigMap]) {
            self.push(index, Event::Init);
            for object in objects {
                self.push(index, Event::InitApply(object.clone()));
            }
            self.push(index, Event::InitDone);
        }
    }

    /// kube sends `resourceVersion=0` only when no page limit is set, and without it the
    /// API server lists from etcd: a page size here would quietly undo the cache list.
    #[test]
    fn a_watch_cache_list_has_no_page_limit_and_keeps_its_selector() {
        let config = from_watch_cache(watcher::Config::default().labels("shard=a"));
        assert_eq!(config.list_semantic, watcher::ListSemantic::Any);
        assert_eq!(config.page_size, None);
        assert_eq!(config.label_selector.as_deref(), Some("shard=a"));
    }

    #[test]
    fn the_store_is_ready_only_when_every_namespace_has_listed() {
        let mut h = Harness::new();
        h.list(0, &[config_map("a", "one")]);
        assert!(h.store.state().is_empty(), "nothing until b has listed");
        assert!(futures::FutureExt::now_or_never(h.store.wait_until_ready()).is_none());
        h.push(0, Event::Apply(config_map("a", "two")));
        h.list(1, &[config_map("b", "three")]);
        assert_eq!(names(&h.store), ["a/one", "a/two", "b/three"]);
        assert!(futures::FutureExt::now_or_never(h.store.wait_until_ready()).is_some());
    }

    #[test]
    fn a_relist_of_one_namespace_keeps_the_others_and_drops_what_it_no_longer_shows() {
        let mut h = Harness::new();
        h.list(0, &[config_map("a", "one"), config_map("a", "two")]);
        h.list(1, &[config_map("b", "three")]);
        h.list(0, &[config_map("a", "two"), config_map("a", "four")]);
        assert_eq!(names(&h.store), ["a/four", "a/two", "b/three"]);
        h.push(1, Event::Delete(config_map("b", "three")));
        assert_eq!(names(&h.store), ["a/four", "a/two"]);
    }

    #[test]
    fn cached_objects_keep_their_annotations_but_not_the_kubectl_copy_or_managed_fields() {
        let mut object = config_map("a", "one");
        object.metadata.managed_fields = Some(vec![Default::default()]);
        object.metadata.annotations = Some(
            [
                (LAST_APPLIED_ANNOTATION.to_owned(), "{}".repeat(500)),
                ("keypairs.dev/rotate".to_owned(), "1".to_owned()),
            ]
            .into(),
        );
        let slim = slimmed(object);
        assert!(slim.metadata.managed_fields.is_none());
        let annotations = slim.metadata.annotations.unwrap_or_default();
        assert_eq!(
            annotations.keys().collect::<Vec<_>>(),
            ["keypairs.dev/rotate"]
        );
        let mut only_kubectl = config_map("a", "two");
        only_kubectl.metadata.annotations =
            Some([(LAST_APPLIED_ANNOTATION.to_owned(), "{}".to_owned())].into());
        assert!(slimmed(only_kubectl).metadata.annotations.is_none());
    }

    #[test]
    fn deletes_during_the_first_lists_are_not_lost() {
        let mut h = Harness::new();
        h.list(0, &[config_map("a", "one")]);
        h.push(0, Event::Delete(config_map("a", "one")));
        h.list(1, &[]);
        assert!(h.store.state().is_empty());
    }
}
