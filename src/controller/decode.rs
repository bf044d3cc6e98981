//! Decoding watched objects without their `metadata.managedFields`.
//!
//! Every object the API server sends carries `managedFields`: one entry per field manager
//! with a tree of the fields it owns, about half of an `ApiKeyPair`'s JSON. Decoded, each
//! tree is a `serde_json::Value` of nested maps (thousands of bytes in many small
//! allocations), which the caches then dropped at once. At 10k keys that was most of the
//! allocator's work on each watch event and each listed page, and memory the allocator
//! kept after a burst or a restart. [`WithoutManagedFields`] decodes an object with that
//! field skipped unread (as serde skips an unknown field): nothing of it is allocated.

use std::borrow::Cow;
use std::fmt;

use kube::Resource;
use kube::api::ObjectMeta;
use serde::Deserialize;
use serde::de::value::{BorrowedStrDeserializer, StringDeserializer};
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// `K` decoded without `metadata.managedFields` (always `None`); the same resource as `K`
/// for the API (a watch of `WithoutManagedFields<K>` is a watch of `K`).
#[derive(Clone, Debug)]
pub struct WithoutManagedFields<K>(pub K);

impl<'de, K: Deserialize<'de>> Deserialize<'de> for WithoutManagedFields<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        K::deserialize(Filtered {
            inner: deserializer,
            level: Level::Object,
        })
        .map(Self)
    }
}

impl<K: Resource> Resource for WithoutManagedFields<K> {
    type DynamicType = K::DynamicType;
    type Scope = K::Scope;

    fn kind(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::kind(dt)
    }
    fn group(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::group(dt)
    }
    fn version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::version(dt)
    }
    fn plural(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::plural(dt)
    }
    fn api_version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::api_version(dt)
    }
    fn url_path(dt: &Self::DynamicType, namespace: Option<&str>) -> String {
        K::url_path(dt, namespace)
    }
    /// A metadata-only `K` (`PartialObjectMeta`) is still requested as metadata only.
    fn metadata_api() -> bool {
        K::metadata_api()
    }
    fn meta(&self) -> &ObjectMeta {
        self.0.meta()
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        self.0.meta_mut()
    }
}

/// Where in the object a [`Filtered`] decoder is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    /// The object itself: its `metadata` is decoded filtered.
    Object,
    /// Its `metadata`: `managedFields` is skipped.
    Metadata,
}

/// A decoder that hands every value to `inner` unchanged, except the object's and its
/// metadata's maps, whose entries it filters (see [`FilteredMap`]).
struct Filtered<D> {
    inner: D,
    level: Level,
}

impl<D> Filtered<D> {
    /// `visitor`, given filtered maps at this level.
    fn filtering<V>(&self, visitor: V) -> FilteredVisitor<V> {
        FilteredVisitor {
            inner: visitor,
            level: self.level,
        }
    }
}

/// Passes each method to the inner decoder as it is.
macro_rules! unchanged {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, D::Error> {
                self.inner.$method($($arg,)* visitor)
            }
        )*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Filtered<D> {
    type Error = D::Error;

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        let visitor = self.filtering(visitor);
        self.inner.deserialize_struct(name, fields, visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        let visitor = self.filtering(visitor);
        self.inner.deserialize_map(visitor)
    }

    // k8s-openapi's types read their metadata as an `Option<ObjectMeta>`.
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        let visitor = self.filtering(visitor);
        self.inner.deserialize_option(visitor)
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }

    unchanged! {
        deserialize_any(); deserialize_bool(); deserialize_i8(); deserialize_i16();
        deserialize_i32(); deserialize_i64(); deserialize_i128(); deserialize_u8();
        deserialize_u16(); deserialize_u32(); deserialize_u64(); deserialize_u128();
        deserialize_f32(); deserialize_f64(); deserialize_char(); deserialize_str();
        deserialize_string(); deserialize_bytes(); deserialize_byte_buf();
        deserialize_unit(); deserialize_seq();
        deserialize_identifier(); deserialize_ignored_any();
        deserialize_unit_struct(name: &'static str);
        deserialize_newtype_struct(name: &'static str);
        deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
    }
}

/// The inner visitor, given a [`FilteredMap`] in place of the map (and a [`Filtered`]
/// decoder for the value of an option).
struct FilteredVisitor<V> {
    inner: V,
    level: Level,
}

impl<'de, V: Visitor<'de>> Visitor<'de> for FilteredVisitor<V> {
    type Value = V::Value;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(formatter)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.inner.visit_map(FilteredMap {
            inner: map,
            level: self.level,
            metadata_next: false,
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.inner.visit_seq(seq)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<V::Value, D::Error> {
        self.inner.visit_some(Filtered {
            inner: deserializer,
            level: self.level,
        })
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_none()
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_unit()
    }
}

/// A map whose `managedFields` entry (in metadata) is skipped, and whose `metadata`
/// value (in the object) is decoded filtered.
struct FilteredMap<A> {
    inner: A,
    level: Level,
    /// The key just read was the object's `metadata`.
    metadata_next: bool,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for FilteredMap<A> {
    type Error = A::Error;

    fn next_key_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, A::Error> {
        while let Some(Key(key)) = self.inner.next_key::<Key<'de>>()? {
            if self.level == Level::Metadata && key == "managedFields" {
                self.inner.next_value::<IgnoredAny>()?;
                continue;
            }
            self.metadata_next = self.level == Level::Object && key == "metadata";
            let key = match key {
                Cow::Borrowed(key) => seed.deserialize(BorrowedStrDeserializer::new(key)),
                Cow::Owned(key) => seed.deserialize(StringDeserializer::new(key)),
            };
            return key.map(Some);
        }
        Ok(None)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        if std::mem::take(&mut self.metadata_next) {
            self.inner.next_value_seed(MetadataSeed(seed))
        } else {
            self.inner.next_value_seed(seed)
        }
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

/// Decodes the object's metadata filtered.
struct MetadataSeed<S>(S);

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for MetadataSeed<S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<S::Value, D::Error> {
        self.0.deserialize(Filtered {
            inner: deserializer,
            level: Level::Metadata,
        })
    }
}

/// A map key, borrowed from the input when it can be (JSON keys without escapes).
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a field name")
    }

    fn visit_borrowed_str<E: serde::de::Error>(self, key: &'de str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Borrowed(key)))
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(key.to_owned())))
    }

    fn visit_string<E: serde::de::Error>(self, key: String) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(key)))
    }

    fn visit_bytes<E: serde::de::Error>(self, key: &[u8]) -> Result<Key<'de>, E> {
        std::str::from_utf8(key)
            .map(|key| Key(Cow::Owned(key.to_owned())))
            .map_err(|_| E::custom("a field name that is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ApiKeyPair;
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::PartialObjectMeta;
    use kube::core::WatchEvent;
    use serde::Serialize;
    use serde::de::DeserializeOwned;
    use serde_json::{Value, json};

    const MANAGED_FIELDS: &str = r#"[
        {"apiVersion": "keypairs.dev/v1alpha1", "fieldsType": "FieldsV1",
         "fieldsV1": {"f:status": {"f:keyID": {}, "f:conditions": {"k:{\"type\":\"Ready\"}": {".": {}}}}},
         "manager": "keypair-operator", "operation": "Apply", "time": "2026-12-02T14:57:24Z"},
        {"apiVersion": "keypairs.dev/v1alpha1", "fieldsType": "FieldsV1",
         "fieldsV1": {"f:metadata": {"f:finalizers": {".": {}}}},
         "manager": "kubectl", "operation": "Update", "time": "2026-12-02T14:57:23Z"}
    ]"#;

    /// An `ApiKeyPair` as the API server sends it, with `metadata` written `metadata_key`
    /// (JSON may escape any character of a key).
    fn key_pair_json(metadata_key: &str) -> String {
        format!(
            r#"{{"apiVersion": "keypairs.dev/v1alpha1", "kind": "ApiKeyPair",
              "{metadata_key}": {{"name": "k-1", "namespace": "team", "uid": "u-1",
                "resourceVersion": "42", "generation": 3,
                "creationTimestamp": "2026-12-02T14:56:09Z",
                "finalizers": ["keypairs.dev/remote-key"],
                "annotations": {{"managedFields": "an annotation, kept", "keypairs.dev/rotate": "now"}},
                "managedFields": {MANAGED_FIELDS},
                "labels": {{"team": "a"}}}},
              "spec": {{"providerRef": {{"kind": "KeyPairProvider", "name": "p"}},
                "validityDays": 90, "deletionPolicy": "Delete"}},
              "status": {{"keyID": "k", "observedGeneration": 3,
                "conditions": [{{"type": "Ready", "status": "True", "reason": "Ready",
                  "message": "ok", "lastTransitionTime": "2026-12-02T14:57:24Z"}}]}}}}"#
        )
    }

    /// The object decoded plainly, then without its managed fields: what the filter must give.
    fn expected<K: DeserializeOwned + Resource + Serialize>(json: &str) -> Value {
        let mut plain: K = serde_json::from_str(json).expect("plain decode");
        assert!(
            plain.meta().managed_fields.is_some(),
            "the sample has managed fields"
        );
        plain.meta_mut().managed_fields = None;
        serde_json::to_value(plain).expect("encode")
    }

    fn filtered<K: DeserializeOwned + Resource + Serialize>(json: &str) -> Value {
        let decoded: WithoutManagedFields<K> = serde_json::from_str(json).expect("filtered decode");
        assert_eq!(decoded.0.meta().managed_fields, None);
        serde_json::to_value(decoded.0).expect("encode")
    }

    #[test]
    fn an_object_decodes_whole_but_for_its_managed_fields() {
        let json = key_pair_json("metadata");
        let decoded = filtered::<ApiKeyPair>(&json);
        assert_eq!(decoded, expected::<ApiKeyPair>(&json));
        // Only metadata's own `managedFields` goes: an annotation of that name stays.
        assert_eq!(
            decoded["metadata"]["annotations"]["managedFields"],
            "an annotation, kept"
        );
        assert_eq!(decoded["status"]["conditions"][0]["reason"], "Ready");
    }

    #[test]
    fn an_escaped_key_is_read_as_the_same_key() {
        let json = key_pair_json(r"\u006detadata");
        assert_eq!(filtered::<ApiKeyPair>(&json), expected::<ApiKeyPair>(&json));
    }

    #[test]
    fn secrets_and_metadata_only_objects_decode_without_managed_fields() {
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": "s", "namespace": "team", "resourceVersion": "7",
                "managedFields": serde_json::from_str::<Value>(MANAGED_FIELDS).expect("sample"),
                "ownerReferences": [{"apiVersion": "keypairs.dev/v1alpha1", "kind": "ApiKeyPair",
                    "name": "k-1", "uid": "u-1", "controller": true}]},
            "data": {"apiKey": "YWs=", "apiSecret": "c2VjcmV0"}
        })
        .to_string();
        assert_eq!(filtered::<Secret>(&secret), expected::<Secret>(&secret));
        let meta = filtered::<PartialObjectMeta<Secret>>(&secret);
        assert_eq!(meta, expected::<PartialObjectMeta<Secret>>(&secret));
        assert_eq!(meta["metadata"]["resourceVersion"], "7");
    }

    #[test]
    fn a_watch_event_decodes_whichever_comes_first_type_or_object() {
        let object = key_pair_json("metadata");
        let want = expected::<ApiKeyPair>(&object);
        for event in [
            format!(r#"{{"type": "MODIFIED", "object": {object}}}"#),
            format!(r#"{{"object": {object}, "type": "MODIFIED"}}"#),
        ] {
            let decoded: WatchEvent<WithoutManagedFields<ApiKeyPair>> =
                serde_json::from_str(&event).expect("watch event");
            let WatchEvent::Modified(decoded) = decoded else {
                panic!("a MODIFIED event")
            };
            assert_eq!(decoded.0.metadata.managed_fields, None);
            assert_eq!(serde_json::to_value(decoded.0).expect("encode"), want);
        }
    }

    #[test]
    fn the_api_requests_the_same_resource_as_for_the_type_itself() {
        type Meta = PartialObjectMeta<Secret>;
        assert!(WithoutManagedFields::<Meta>::metadata_api());
        assert!(!WithoutManagedFields::<Secret>::metadata_api());
        assert_eq!(
            WithoutManagedFields::<ApiKeyPair>::url_path(&(), Some("team")),
            ApiKeyPair::url_path(&(), Some("team"))
        );
        assert_eq!(
            WithoutManagedFields::<ApiKeyPair>::api_version(&()),
            ApiKeyPair::api_version(&())
        );
        assert_eq!(WithoutManagedFields::<Meta>::kind(&()), Secret::kind(&()));
    }

    #[test]
    fn a_malformed_object_is_still_an_error() {
        let truncated = &key_pair_json("metadata")[..200];
        assert!(serde_json::from_str::<WithoutManagedFields<ApiKeyPair>>(truncated).is_err());
        let wrong = r#"{"metadata": {"name": 5}, "spec": {}}"#;
        assert!(serde_json::from_str::<WithoutManagedFields<ApiKeyPair>>(wrong).is_err());
    }
}
