//! Shared harness of the integration tests: one real control plane per test run (started
//! by `scripts/control-plane.sh`, or any cluster named by `KUBECONFIG`), CRDs installed
//! once, a fresh namespace per test, and polling helpers with deadlines.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tokio::sync::OnceCell;

/// Field manager the tests use for server-side apply.
pub const TEST_MANAGER: &str = "keypair-operator-tests";

static KUBECONFIG_PATH: OnceCell<PathBuf> = OnceCell::const_new();
static CRDS_INSTALLED: OnceCell<()> = OnceCell::const_new();

/// Path of a kubeconfig for the test cluster: `KUBECONFIG` when set, else the project's
/// local control plane, started on first use (idempotent across test binaries).
pub async fn kubeconfig_path() -> PathBuf {
    KUBECONFIG_PATH
        .get_or_init(|| async {
            if let Some(path) = std::env::var_os("KUBECONFIG") {
                return PathBuf::from(path);
            }
            let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/control-plane.sh");
            let out = tokio::process::Command::new("bash")
                .arg(script)
                .arg("up")
                .stderr(std::process::Stdio::inherit())
                .output()
                .await
                .expect("run scripts/control-plane.sh up");
            assert!(out.status.success(), "scripts/control-plane.sh up failed");
            let stdout = String::from_utf8_lossy(&out.stdout);
            PathBuf::from(stdout.lines().last().expect("kubeconfig path").trim())
        })
        .await
        .clone()
}

/// A client for the test cluster.
pub async fn client() -> Client {
    install_rustls_provider();
    let path = kubeconfig_path().await;
    let kubeconfig = Kubeconfig::read_from(&path).expect("read kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig is valid");
    Client::try_from(config).expect("build client")
}

/// reqwest is built without a default crypto provider; install ring once per process.
pub fn install_rustls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A client for a cluster where this operator's CRDs are installed and Established.
pub async fn client_with_crds() -> Client {
    let client = client().await;
    CRDS_INSTALLED
        .get_or_init(|| async {
            install_crds(&client).await;
        })
        .await;
    client
}

/// Installs every CRD by server-side apply and waits until each is Established.
pub async fn install_crds(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(TEST_MANAGER).force();
    for crd in keypair_operator::crd::all_crds() {
        let name = crd.metadata.name.clone().expect("crd name");
        crds.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .unwrap_or_else(|e| panic!("apply CRD {name}: {e}"));
        wait_for(
            &format!("CRD {name} Established"),
            Duration::from_secs(30),
            || {
                let crds = crds.clone();
                let name = name.clone();
                async move {
                    let crd = crds.get(&name).await.ok()?;
                    let established = crd
                        .status?
                        .conditions?
                        .into_iter()
                        .any(|c| c.type_ == "Established" && c.status == "True");
                    established.then_some(())
                }
            },
        )
        .await;
    }
}

/// Creates a fresh namespace named after the test (plus a random suffix).
pub async fn test_namespace(client: &Client, test: &str) -> String {
    let suffix: u32 = rand::random();
    let name = format!("{}-{:08x}", test.replace('_', "-"), suffix);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"keypairs.dev/test": "true"}}
    }))
    .expect("namespace object");
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
    name
}

/// Polls `probe` until it returns `Some`, failing the test with `what` at the deadline.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

