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

/// The API server's minor version (`20` for 1.20), as `kubectl version` reports it.
pub async fn server_minor_version(client: &Client) -> u32 {
    let info = client
        .apiserver_version()
        .await
        .expect("API server version");
    let digits: String = info
        .minor
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|e| panic!("minor version {:?}: {e}", info.minor))
}

/// Installs every CRD by server-side apply and waits until each is Established. Before
/// 1.25 the CRDs go without their CEL rules, which those servers do not enforce (and 1.20
/// to 1.22 refuse in a server-side apply), as the chart and the README do.
pub async fn install_crds(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(TEST_MANAGER).force();
    let all = if server_minor_version(client).await < 25 {
        keypair_operator::crd::all_crds_without_cel()
    } else {
        keypair_operator::crd::all_crds()
    };
    for crd in all {
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

// ---- sandbox, operator and object helpers (controller tests) ----------------------------

use k8s_openapi::api::core::v1::Secret;
use keypair_operator::crd::ApiKeyPair;
use keypair_operator::sandbox::{self, OutboxEmail, SandboxConfig, SandboxHandle, SandboxKey};

/// A sandbox provider started in this process, with typed access to its control endpoints.
pub struct Sandbox {
    pub handle: SandboxHandle,
    http: reqwest::Client,
}

impl Sandbox {
    /// Starts a sandbox on a free loopback port.
    pub async fn start(config: SandboxConfig) -> Sandbox {
        install_rustls_provider();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind sandbox");
        let handle = sandbox::spawn(config, listener)
            .await
            .expect("start sandbox");
        Sandbox {
            handle,
            http: reqwest::Client::new(),
        }
    }

    /// Base URL for a provider's `url`.
    pub fn url(&self) -> String {
        self.handle.base_url()
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        self.http
            .get(format!("{}{path}", self.url()))
            .send()
            .await
            .expect("sandbox answers")
            .json()
            .await
            .expect("sandbox JSON")
    }

    /// Every key pair the sandbox holds.
    pub async fn keys(&self) -> Vec<SandboxKey> {
        self.get_json("/_sandbox/keys").await
    }

    /// Every "email" sent.
    pub async fn outbox(&self) -> Vec<OutboxEmail> {
        self.get_json("/_sandbox/outbox").await
    }

    /// Request counts per endpoint and status.
    pub async fn stats(&self) -> serde_json::Value {
        self.get_json("/_sandbox/stats").await
    }

    /// Requests seen for one endpoint (all statuses).
    pub async fn count(&self, endpoint: &str) -> u64 {
        let stats = self.stats().await;
        stats[endpoint]
            .as_object()
            .map_or(0, |m| m.values().filter_map(|v| v.as_u64()).sum())
    }

    /// Every secret and code the sandbox handed out (`GET /_sandbox/issued`).
    pub async fn issued(&self) -> keypair_operator::sandbox::Issued {
        self.get_json("/_sandbox/issued").await
    }

    /// Removes a key pair behind the operator's back; whether it existed.
    pub async fn remove_key(&self, id: &str) -> bool {
        self.control(reqwest::Method::DELETE, &format!("/_sandbox/keys/{id}"))
            .await
            .is_success()
    }

    /// Ends every ThreatWinds session / Datonis auth token now.
    pub async fn expire_sessions(&self) {
        let status = self
            .control(reqwest::Method::POST, "/_sandbox/sessions/expire")
            .await;
        assert!(status.is_success(), "expire sessions: {status}");
    }

    /// ThreatWinds: a new verified session with this bearer token.
    pub async fn add_session(&self, token: &str) {
        let status = self
            .control(reqwest::Method::PUT, &format!("/_sandbox/sessions/{token}"))
            .await;
        assert!(status.is_success(), "add session: {status}");
    }

    async fn control(&self, method: reqwest::Method, path: &str) -> reqwest::StatusCode {
        self.http
            .request(method, format!("{}{path}", self.url()))
            .send()
            .await
            .expect("sandbox answers")
            .status()
    }

    /// Sets injected faults (see `PUT /_sandbox/faults`).
    pub async fn faults(&self, faults: serde_json::Value) {
        let response = self
            .http
            .put(format!("{}/_sandbox/faults", self.url()))
            .json(&faults)
            .send()
            .await
            .expect("sandbox answers");
        assert!(
            response.status().is_success(),
            "set faults: {}",
            response.status()
        );
    }

    /// The code emailed for a ThreatWinds verification code id.
    pub async fn code_for(&self, verification_code_id: &str) -> String {
        self.outbox()
            .await
            .into_iter()
            .find(|m| m.verification_code_id == verification_code_id)
            .map(|m| m.code)
            .unwrap_or_else(|| panic!("no email for code {verification_code_id}"))
    }
}

static OPERATORS_STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The operator binary running against the test cluster, watching one namespace; killed
/// when dropped. Its log goes to `target/test-logs/<name>.log`.
pub struct Operator {
    child: Option<tokio::process::Child>,
    pub log: PathBuf,
    /// Base URL of the operator's HTTP endpoint (`/metrics`, `/healthz`, `/readyz`).
    pub http: String,
    namespace: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// Kubeconfig other than the test cluster's (e.g. one through a fault proxy).
    kubeconfig: Option<PathBuf>,
}

impl Operator {
    /// Fast intervals so tests see checks and verification quickly.
    pub const FAST: [&'static str; 4] = [
        "--check-interval",
        "3s",
        "--verification-poll-interval",
        "1s",
    ];

    /// Starts the operator for `namespace` with extra `args` and environment.
    pub async fn start(namespace: &str, args: &[&str], env: &[(&str, &str)]) -> Operator {
        Self::start_via(None, namespace, args, env).await
    }

    /// [`Operator::start`] reaching the apiserver through `kubeconfig` when given.
    pub async fn start_via(
        kubeconfig: Option<PathBuf>,
        namespace: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Operator {
        let log_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-logs");
        std::fs::create_dir_all(&log_dir).expect("log dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut operator = Operator {
            child: None,
            http: format!("http://127.0.0.1:{port}"),
            log: log_dir.join(format!(
                "{namespace}-{}.log",
                OPERATORS_STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            )),
            namespace: namespace.to_owned(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            kubeconfig,
        };
        operator.spawn().await;
        operator
    }

    async fn spawn(&mut self) {
        let kubeconfig = match &self.kubeconfig {
            Some(path) => path.clone(),
            None => kubeconfig_path().await,
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log");
        let binary = env!("CARGO_BIN_EXE_keypair-operator");
        // `KPO_WRAP="benches/heaptrack-exec /tmp/hp"`: a command (split at whitespace)
        // that runs the operator binary and the arguments after it, e.g. a profiler. It
        // should `exec` the binary, so that `pid()` (RSS in the bench, kill -9) is the
        // operator's.
        let wrap = std::env::var("KPO_WRAP").unwrap_or_default();
        let mut wrap = wrap.split_whitespace();
        let mut command = match wrap.next() {
            Some(wrapper) => {
                let mut command = tokio::process::Command::new(wrapper);
                command.args(wrap).arg(binary);
                command
            }
            None => tokio::process::Command::new(binary),
        };
        command
            .arg("run")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--namespace")
            .arg(&self.namespace)
            .arg("--http-listen")
            .arg(self.http.trim_start_matches("http://"))
            .args(&self.args)
            .env_remove("KPO_FAILPOINT")
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .kill_on_drop(true);
        self.child = Some(command.spawn().expect("start operator"));
    }

    /// Restarts the operator with different environment (e.g. without a failpoint).
    pub async fn restart_with(&mut self, env: &[(&str, &str)]) {
        self.stop().await;
        self.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.spawn().await;
    }

    /// Stops the operator (SIGKILL) and waits for it.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// Sends SIGTERM (a graceful stop, as Kubernetes does).
    pub fn terminate(&self) {
        if let Some(pid) = self.child.as_ref().and_then(|c| c.id()) {
            let status = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
            assert!(status.is_ok_and(|s| s.success()), "send SIGTERM");
        }
    }

    /// Waits until the operator process exits by itself (a failpoint abort, SIGTERM).
    pub async fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("operator running");
        let status = tokio::time::timeout(timeout, child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "operator did not exit within {timeout:?}; log: {}",
                    self.log.display()
                )
            })
            .expect("wait operator");
        self.child = None;
        status
    }

    /// Whether the process runs (it was started and has not exited).
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// The operator's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// The operator's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// When a test fails, says whether the operator had died and shows its log's last lines.
impl Drop for Operator {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let state = match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(status))) => format!("the operator had exited ({status})"),
            Some(Ok(None)) => "the operator was still running".to_owned(),
            Some(Err(e)) => format!("the operator's state is unknown ({e})"),
            None => "the operator had been stopped by the test".to_owned(),
        };
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        eprintln!("{state}; last lines of {}:\n{tail}", self.log.display());
    }
}

/// Creates (or replaces) an Opaque Secret with string data.
pub async fn put_secret(client: &Client, ns: &str, name: &str, data: &[(&str, &str)]) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name},
        "stringData": data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<std::collections::BTreeMap<_, _>>(),
    }))
    .expect("secret object");
    secrets
        .patch(
            name,
            &PatchParams::apply(TEST_MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await
        .unwrap_or_else(|e| panic!("apply secret {name}: {e}"));
}

/// Deletes a ClusterKeyPairProvider a test made. Cluster-scoped objects outlive the test's
/// namespace, and one whose sandbox is gone would be retried (and counted) by every later
/// operator run against the shared control plane, the soak and the benchmark included.
pub async fn delete_cluster_provider(client: &Client, name: &str) {
    let api: Api<keypair_operator::crd::ClusterKeyPairProvider> = Api::all(client.clone());
    api.delete(name, &Default::default())
        .await
        .expect("delete the ClusterKeyPairProvider");
}

/// Applies any object given as JSON by server-side apply (namespaced when `ns` is given).
pub async fn apply_json<K>(client: &Client, ns: Option<&str>, object: serde_json::Value) -> K
where
    K: kube::Resource<DynamicType = ()> + serde::de::DeserializeOwned,
{
    let name = object["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_owned();
    let resource = kube::core::ApiResource::erase::<K>(&());
    let api: Api<kube::core::DynamicObject> = match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    let applied = api
        .patch(
            &name,
            &PatchParams::apply(TEST_MANAGER).force(),
            &Patch::Apply(&object),
        )
        .await
        .unwrap_or_else(|e| panic!("apply {name}: {e}"));
    serde_json::from_value(serde_json::to_value(applied).expect("object JSON"))
        .expect("typed object")
}

/// Waits until the `ApiKeyPair` satisfies `check`, returning it.
pub async fn wait_akp(
    client: &Client,
    ns: &str,
    name: &str,
    what: &str,
    check: impl Fn(&ApiKeyPair) -> bool,
) -> ApiKeyPair {
    let api: Api<ApiKeyPair> = Api::namespaced(client.clone(), ns);
    let mut last = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(akp)) = api.get_opt(name).await {
            if check(&akp) {
                return akp;
            }
            last = Some(akp);
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "timed out waiting for {ns}/{name}: {what}; last status: {}",
                serde_json::to_string_pretty(&last.and_then(|a| a.status)).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The condition of `type_` on an `ApiKeyPair`, as (status, reason).
pub fn condition(akp: &ApiKeyPair, type_: &str) -> Option<(String, String)> {
    akp.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// Whether the `ApiKeyPair`'s `Ready` condition has this status and reason.
pub fn ready_is(akp: &ApiKeyPair, status: &str, reason: &str) -> bool {
    condition(akp, "Ready") == Some((status.to_owned(), reason.to_owned()))
}

/// The data of a Secret as strings, if it exists.
pub async fn secret_data(
    client: &Client,
    ns: &str,
    name: &str,
) -> Option<std::collections::BTreeMap<String, String>> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret = secrets.get_opt(name).await.ok()??;
    Some(
        secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
            .collect(),
    )
}

/// Events about one object in a namespace, as (reason, note), oldest first.
pub async fn events_for(client: &Client, ns: &str, name: &str) -> Vec<(String, String)> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
    let mut events: Vec<_> = api
        .list(&Default::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .collect();
    events.sort_by(|a, b| {
        a.metadata
            .creation_timestamp
            .cmp(&b.metadata.creation_timestamp)
    });
    events
        .into_iter()
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}

/// Every event in a namespace (events.k8s.io/v1).
pub async fn all_events(client: &Client, ns: &str) -> Vec<k8s_openapi::api::events::v1::Event> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
    api.list(&Default::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

/// The operator's `/metrics` page as series (`name{labels}`) to value, or `None` while it
/// does not answer (a process just started).
pub async fn try_metrics(operator_http: &str) -> Option<std::collections::BTreeMap<String, f64>> {
    let response = reqwest::get(format!("{operator_http}/metrics"))
        .await
        .ok()?;
    let text = response.error_for_status().ok()?.text().await.ok()?;
    let series = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect();
    Some(series)
}

/// [`try_metrics`] of an operator that must answer.
pub async fn metrics(operator_http: &str) -> std::collections::BTreeMap<String, f64> {
    try_metrics(operator_http)
        .await
        .unwrap_or_else(|| panic!("{operator_http}/metrics does not answer"))
}

/// The sum of every series of `metric` whose labels contain all of `with`
/// (e.g. `verb="get"`).
pub fn metric_total(
    metrics: &std::collections::BTreeMap<String, f64>,
    metric: &str,
    with: &[&str],
) -> f64 {
    metrics
        .iter()
        .filter(|(series, _)| {
            series.split('{').next() == Some(metric) && with.iter().all(|w| series.contains(w))
        })
        .map(|(_, v)| v)
        .sum()
}

/// The operator's Kubernetes request counter.
pub const KUBE_REQUESTS: &str = "keypair_operator_kube_requests_total";

/// The operator's Kubernetes requests by `verb resource`.
pub fn kube_requests(
    metrics: &std::collections::BTreeMap<String, f64>,
) -> std::collections::BTreeMap<String, f64> {
    by_labels(metrics, KUBE_REQUESTS, &["verb", "resource"])
}

/// The series of the counter `metric`, summed by the values of `labels` (joined by spaces).
pub fn by_labels(
    metrics: &std::collections::BTreeMap<String, f64>,
    metric: &str,
    labels: &[&str],
) -> std::collections::BTreeMap<String, f64> {
    let label = |series: &str, name: &str| {
        series
            .split(&format!("{name}=\""))
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or("?")
            .to_owned()
    };
    let mut grouped = std::collections::BTreeMap::new();
    for (series, value) in metrics {
        if series.split('{').next() == Some(metric) {
            let key: Vec<String> = labels.iter().map(|l| label(series, l)).collect();
            *grouped.entry(key.join(" ")).or_insert(0.0) += value;
        }
    }
    grouped
}

/// The operator's Kubernetes writes (create, patch, update, delete).
pub fn kube_writes(metrics: &std::collections::BTreeMap<String, f64>) -> f64 {
    ["create", "patch", "update", "delete"]
        .iter()
        .map(|verb| metric_total(metrics, KUBE_REQUESTS, &[&format!("verb=\"{verb}\"")]))
        .sum()
}

/// What grew between two readings of counters.
pub fn grown(
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
) -> std::collections::BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d > 0.0)
        .collect()
}
