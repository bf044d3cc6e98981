//! Counting the operator's own Kubernetes API requests by verb and resource (the
//! apiserver is the bottleneck at scale, so each request per object matters): a tower
//! layer on the kube client and the pure classification of a request it uses.

use std::sync::Arc;

use http::{Method, Request, Uri};

use super::Metrics;

/// A kube client whose every request is counted in `metrics`.
pub fn counting_client(
    config: kube::Config,
    metrics: Arc<Metrics>,
) -> Result<kube::Client, kube::Error> {
    let count = tower::util::MapRequestLayer::new(move |request: Request<kube::client::Body>| {
        let (verb, resource) = classify(request.method(), request.uri());
        tracing::trace!(verb, %resource, path = request.uri().path(), "kube request");
        metrics.kube_request(verb, &resource);
        request
    });
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&count)
        .build())
}

/// The verb (`get`, `list`, `watch`, `create`, `patch`, `update`, `delete`) and the
/// resource (`secrets`, `apikeypairs/status`, ...) of a request, as the apiserver's own
/// metrics name them.
pub fn classify(method: &Method, uri: &Uri) -> (&'static str, String) {
    let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    // /api/v1/... or /apis/group/version/...
    let rest = match segments.first() {
        Some(&"api") => segments.get(2..),
        Some(&"apis") => segments.get(3..),
        _ => None,
    }
    .unwrap_or_default();
    let rest = match rest {
        ["namespaces", _, tail @ ..] if !tail.is_empty() => tail,
        other => other,
    };
    let (resource, named) = match rest {
        [] => ("other".to_owned(), false),
        [resource] => ((*resource).to_owned(), false),
        [resource, _name] => ((*resource).to_owned(), true),
        [resource, _name, sub, ..] => (format!("{resource}/{sub}"), true),
    };
    let watching = uri
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
    let verb = match *method {
        Method::GET if watching => "watch",
        Method::GET if named => "get",
        Method::GET => "list",
        Method::POST => "create",
        Method::PATCH => "patch",
        Method::PUT => "update",
        Method::DELETE => "delete",
        _ => "other",
    };
    (verb, resource)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(method: Method, uri: &str) -> (&'static str, String) {
        classify(&method, &uri.parse().expect("uri"))
    }

    #[test]
    fn requests_are_named_like_the_apiservers_metrics() {
        assert_eq!(
            of(Method::GET, "/api/v1/namespaces/a/secrets/s"),
            ("get", "secrets".into())
        );
        assert_eq!(
            of(Method::GET, "/api/v1/namespaces/a/secrets?labelSelector=x"),
            ("list", "secrets".into())
        );
        assert_eq!(
            of(Method::GET, "/api/v1/secrets?watch=true&resourceVersion=1"),
            ("watch", "secrets".into())
        );
        assert_eq!(
            of(
                Method::PATCH,
                "/apis/keypairs.dev/v1alpha1/namespaces/a/apikeypairs/k/status"
            ),
            ("patch", "apikeypairs/status".into())
        );
        assert_eq!(
            of(
                Method::GET,
                "/apis/keypairs.dev/v1alpha1/clusterkeypairproviders/p"
            ),
            ("get", "clusterkeypairproviders".into())
        );
        assert_eq!(
            of(Method::GET, "/api/v1/namespaces/a"),
            ("get", "namespaces".into())
        );
        assert_eq!(
            of(Method::GET, "/api/v1/namespaces"),
            ("list", "namespaces".into())
        );
        assert_eq!(
            of(Method::POST, "/apis/events.k8s.io/v1/namespaces/a/events"),
            ("create", "events".into())
        );
        assert_eq!(of(Method::GET, "/version"), ("list", "other".into()));
    }
}
