//! What the `ApiKeyPair` store keeps of each key pair: [`CachedKeyPair`], its metadata as
//! decoded (what kube-runtime and the change filter read), the name of its code Secret
//! (what the code-Secret index reads), and its spec and status as deflated JSON, decoded
//! again when a reconcile takes the key pair.
//!
//! Decoded, a key pair's spec and status take about 0.85 KB of mostly empty `Option`
//! fields plus a small allocation per string: ~1.9 KB for a ThreatWinds key awaiting its
//! code (~25 strings). Their JSON is ~1.1 KB, deflated ~0.55 KB (field names, condition
//! texts and ids repeat), in one allocation. `make bench` at 10k ThreatWinds keys: 69.9 MB
//! resident with decoded objects, 64.3 MB with JSON, 59.1 MB deflated (with the event
//! cache's limit), for a deflate per watch event and an inflate and a parse per reconcile
//! (tens of microseconds, beside the provider and API server calls each reconcile makes).

use kube::api::ObjectMeta;
use serde::{Deserialize, Serialize};

use super::watch;
use crate::crd::{ApiKeyPair, ApiKeyPairSpec, ApiKeyPairStatus};

/// Prefix of every annotation the operator reads on an `ApiKeyPair`.
const OPERATOR_ANNOTATION_PREFIX: &str = "keypairs.dev/";

/// The fastest level: what repeats here is whole names and ids, which every level finds
/// (zlib on a key awaiting its code: 540 bytes at level 1, 527 at its default).
const DEFLATE_LEVEL: u8 = 1;

/// Larger than any object the API server stores (etcd's default limit is 1.5 MiB).
const MAX_JSON: usize = 4 << 20;

/// Why a cached key pair does not decode (a bug: the cache encoded it).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The body does not inflate.
    #[error("inflate: {0}")]
    Inflate(String),
    /// The inflated body is not a key pair's spec and status.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// An `ApiKeyPair` as the store keeps it; the same resource as `ApiKeyPair` for the API
/// and kube-runtime (kind, owner references, object references).
#[derive(Clone, Debug)]
pub struct CachedKeyPair {
    /// [`watch::slimmed`], without labels (a shard selector is applied by the API server,
    /// and nothing here reads them) and with only the operator's own `keypairs.dev/*`
    /// annotations. Tools label and annotate every object they sync (Argo CD's tracking
    /// id, Helm's release, ...): cached, each map costs a B-tree node per key, and a change
    /// to them needs no reconcile.
    metadata: ObjectMeta,
    /// The name of the Secret its verification code is read from: the code-Secret index
    /// reads it on every watch event, which should not inflate and parse the body.
    code_secret: Option<Box<str>>,
    /// `{"spec": …, "status": …}`, deflated.
    body: Box<[u8]>,
}

/// The part of an `ApiKeyPair` kept as JSON, borrowed to encode it.
#[derive(Serialize)]
struct BodyRef<'a> {
    spec: &'a ApiKeyPairSpec,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: &'a Option<ApiKeyPairStatus>,
}

/// The part of an `ApiKeyPair` kept as JSON, decoded.
#[derive(Deserialize)]
struct Body {
    spec: ApiKeyPairSpec,
    #[serde(default)]
    status: Option<ApiKeyPairStatus>,
}

impl From<ApiKeyPair> for CachedKeyPair {
    fn from(akp: ApiKeyPair) -> Self {
        let ApiKeyPair {
            mut metadata,
            spec,
            status,
        } = watch::slimmed(akp);
        metadata.labels = None;
        watch::retain_annotations(&mut metadata, |key| {
            key.starts_with(OPERATOR_ANNOTATION_PREFIX)
        });
        let code_secret = spec.verification.as_ref();
        let code_secret = code_secret.map(|v| v.code_secret_ref.name.as_str().into());
        let body = BodyRef {
            spec: &spec,
            status: &status,
        };
        // Encoding types that came from JSON cannot fail; if it ever did, the reconcile
        // reports it (an empty body does not decode) instead of acting on a guess.
        let json = serde_json::to_vec(&body).unwrap_or_default();
        let body = miniz_oxide::deflate::compress_to_vec(&json, DEFLATE_LEVEL);
        CachedKeyPair {
            metadata,
            code_secret,
            body: body.into_boxed_slice(),
        }
    }
}

/// Decodes an `ApiKeyPair` into what the store keeps (what a watch of this type yields).
impl<'de> Deserialize<'de> for CachedKeyPair {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        ApiKeyPair::deserialize(deserializer).map(CachedKeyPair::from)
    }
}

impl CachedKeyPair {
    /// The name of the Secret (in its namespace) its verification code is read from.
    pub fn code_secret_name(&self) -> Option<&str> {
        self.code_secret.as_deref()
    }

    /// The key pair as cached (metadata slimmed as described on [`CachedKeyPair`]).
    pub fn decode(&self) -> Result<ApiKeyPair, DecodeError> {
        let json = miniz_oxide::inflate::decompress_to_vec_with_limit(&self.body, MAX_JSON)
            .map_err(|e| DecodeError::Inflate(e.to_string()))?;
        let Body { spec, status } = serde_json::from_slice(&json)?;
        Ok(ApiKeyPair {
            metadata: self.metadata.clone(),
            spec,
            status,
        })
    }
}

watch::cached_resource!(CachedKeyPair, ApiKeyPair);

#[cfg(test)]
mod tests {
    use super::*;
    use kube::{Resource, ResourceExt};

    use crate::controller::ROTATE_ANNOTATION;

    fn key_pair() -> ApiKeyPair {
        let spec = serde_json::from_value(serde_json::json!({
            "providerRef": {"kind": "ClusterKeyPairProvider", "name": "tw"},
            "validityDays": 30,
            "secretName": "web-key",
            "verification": {"codeSecretRef": {"name": "codes", "key": "web"}},
            "renewBefore": "720h",
            "renewal": {"strategy": "Rotate"},
        }))
        .expect("spec");
        let mut akp = ApiKeyPair::new("web", spec);
        akp.metadata.namespace = Some("team".into());
        akp.metadata.uid = Some("7c9e6679-7425-40de-944b-e07fc1f90ae7".into());
        akp.metadata.generation = Some(3);
        akp.metadata.finalizers = Some(vec![crate::controller::FINALIZER.into()]);
        akp.status = Some(
            serde_json::from_value(serde_json::json!({
                "observedGeneration": 3,
                "conditions": [{
                    "type": "Ready", "status": "False", "reason": "AwaitingVerificationCode",
                    "message": "key pair k1 is not verified yet", "observedGeneration": 3,
                    "lastTransitionTime": "2026-12-03T07:06:09Z"
                }],
                "keyID": "k1", "apiKey": "public", "verified": false,
                "expireAt": "2027-03-03T07:06:09Z", "roles": ["admin"], "createAttempts": 2,
                "pendingKey": {"keyID": "k2", "apiKey": "public-2", "waitingFor": "VerificationCode"},
                "providerRef": {"kind": "ClusterKeyPairProvider", "name": "tw"},
                "secretKeys": {"apiKey": "key", "apiSecret": "secret"},
            }))
            .expect("status"),
        );
        akp
    }

    #[test]
    fn a_cached_key_pair_decodes_to_the_key_pair_it_was_made_from() {
        let json = |akp: &ApiKeyPair| serde_json::to_value(akp).expect("encodes");
        let round_trip = |akp: &ApiKeyPair| {
            let cached = CachedKeyPair::from(akp.clone());
            json(&cached.decode().expect("decodes"))
        };
        let akp = key_pair();
        assert!(akp.status.as_ref().is_some_and(|s| s.pending_key.is_some()));
        assert_eq!(round_trip(&akp), json(&akp));
        let cached = CachedKeyPair::from(akp.clone());
        assert_eq!(cached.code_secret_name(), Some("codes"));
        let mut new = akp;
        new.status = None;
        assert_eq!(round_trip(&new), json(&new));
        let decoded: CachedKeyPair = serde_json::from_value(json(&new)).expect("deserializes");
        assert_eq!(json(&decoded.decode().expect("decodes")), json(&new));
    }

    #[test]
    fn the_body_is_deflated_and_a_damaged_one_is_an_error() {
        let akp = key_pair();
        let json = serde_json::to_vec(&(&akp.spec, &akp.status)).expect("encodes");
        let mut cached = CachedKeyPair::from(akp);
        assert!(
            cached.body.len() * 3 < json.len() * 2,
            "{} bytes deflated, {} as JSON",
            cached.body.len(),
            json.len()
        );
        cached.body = cached.body[..cached.body.len() / 2].into();
        assert!(matches!(cached.decode(), Err(DecodeError::Inflate(_))));
        cached.body = miniz_oxide::deflate::compress_to_vec(b"{}", DEFLATE_LEVEL).into();
        assert!(matches!(cached.decode(), Err(DecodeError::Json(_))));
    }

    #[test]
    fn a_cached_key_pair_keeps_only_the_annotations_the_operator_reads() {
        let mut akp = key_pair();
        let rotate = (ROTATE_ANNOTATION.to_owned(), "1".to_owned());
        let tracking = ("argocd.argoproj.io/tracking-id".to_owned(), "x".to_owned());
        akp.metadata.annotations = Some([rotate.clone(), tracking].into());
        akp.metadata.labels = Some([("app".to_owned(), "web".to_owned())].into());
        let cached = CachedKeyPair::from(akp.clone()).decode().expect("decodes");
        assert_eq!(cached.metadata.annotations, Some([rotate].into()));
        assert_eq!(cached.metadata.labels, None);
        assert_eq!(cached.spec, akp.spec);

        akp.annotations_mut().remove(ROTATE_ANNOTATION);
        let cached = CachedKeyPair::from(akp);
        assert!(cached.meta().annotations.is_none());
    }

    #[test]
    fn a_cached_key_pair_is_the_same_resource_for_kube_runtime() {
        let cached = CachedKeyPair::from(key_pair());
        let reference = kube::runtime::reflector::ObjectRef::from_obj(&cached);
        assert_eq!(reference.name, "web");
        assert_eq!(reference.namespace.as_deref(), Some("team"));
        let owner = key_pair()
            .controller_owner_ref(&())
            .expect("owner reference");
        assert_eq!(cached.controller_owner_ref(&()), Some(owner));
    }
}
