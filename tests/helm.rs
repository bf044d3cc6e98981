//! The Helm chart with the real `helm` binary: lint, render in both RBAC modes and with
//! every value, reject bad values, stay stable across renders, ship the generated CRDs,
//! install into the real control plane (with defaults and with non-default values); then
//! the operator runs with exactly the chart's ServiceAccount token and arguments and takes
//! a key pair through its whole lifecycle. The chart's alerts are run through
//! `promtool test rules` (Debian package `prometheus`; `scripts/test.sh` installs it), and
//! every metric the alerts and the dashboard use is one the operator exports.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use keypair_operator::sandbox::SandboxConfig;
use serde_json::{Value, json};
use tokio::sync::OnceCell;

static HELM: OnceCell<PathBuf> = OnceCell::const_new();

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chart() -> PathBuf {
    root().join("charts/keypair-operator")
}

/// The `helm` binary, installed by `scripts/tools.sh` on first use.
async fn helm() -> PathBuf {
    HELM.get_or_init(|| async {
        let out = Command::new("bash")
            .arg(root().join("scripts/tools.sh"))
            .output()
            .expect("run scripts/tools.sh");
        assert!(
            out.status.success(),
            "scripts/tools.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("helm")
    })
    .await
    .clone()
}

/// Runs a command and returns (success, stdout, stderr).
fn run(program: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn template(set: &[&str]) -> Result<Vec<Value>, String> {
    let mut args = Vec::new();
    for s in set {
        args.extend(["--set", s]);
    }
    render(&args).await
}

/// `helm template` with raw extra arguments (`--set`, `--set-json`, `--show-only`, ...).
async fn render(extra: &[&str]) -> Result<Vec<Value>, String> {
    let helm = helm().await;
    let chart = chart();
    let mut args = vec![
        "template",
        "kpo",
        chart.to_str().expect("path"),
        "--namespace",
        "ops",
    ];
    args.extend(extra);
    let (ok, stdout, stderr) = run(&helm, &args);
    if !ok {
        return Err(stderr);
    }
    Ok(serde_yaml::Deserializer::from_str(&stdout)
        .filter_map(|doc| Value::deserialize(doc).ok())
        .filter(|v| !v.is_null())
        .collect())
}

use serde::Deserialize;

const NAMESPACED: [&str; 2] = [
    "rbac.mode=namespaced",
    "rbac.watchNamespaces={team-a,team-b}",
];

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn rules(role: &Value) -> Vec<&Value> {
    role["rules"]
        .as_array()
        .map(|r| r.iter().collect())
        .unwrap_or_default()
}

fn grants(role: &Value, resource: &str) -> bool {
    rules(role).iter().any(|r| {
        r["resources"]
            .as_array()
            .is_some_and(|rs| rs.iter().any(|x| x == resource))
    })
}

#[tokio::test]
async fn chart_lints_in_both_rbac_modes() {
    let helm = helm().await;
    let chart = chart();
    let chart = chart.to_str().expect("path");
    let (ok, out, err) = run(&helm, &["lint", chart, "--strict"]);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = run(
        &helm,
        &[
            "lint",
            chart,
            "--strict",
            "--set",
            NAMESPACED[0],
            "--set",
            NAMESPACED[1],
        ],
    );
    assert!(ok, "{out}{err}");
}

#[tokio::test]
async fn chart_crds_are_the_generated_ones() {
    let dir = chart().join("files/crds");
    let files = keypair_operator::crd::crd_files().expect("render CRDs");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .expect("chart files/crds/")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut expected: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
    expected.sort();
    assert_eq!(on_disk, expected, "run `make crds`");
    for (name, yaml) in &files {
        assert!(
            std::fs::read_to_string(dir.join(name)).expect("read") == *yaml,
            "charts/keypair-operator/files/crds/{name} is out of date; run `make crds`"
        );
    }
    assert!(
        !chart().join("crds").exists(),
        "Helm installs a chart's crds/ untemplated and never upgrades it: the CRDs are templates"
    );

    // templates/crds.yaml renders exactly those CRDs, with the chart's labels and, by
    // default, Helm's keep policy.
    let objects = template(&["commonLabels.team=platform"])
        .await
        .expect("render");
    let crds = of_kind(&objects, "CustomResourceDefinition");
    assert_eq!(crds.len(), files.len());
    for (_, yaml) in &files {
        let generated: Value = serde_yaml::from_str(yaml).expect("CRD YAML");
        let name = &generated["metadata"]["name"];
        let rendered = crds
            .iter()
            .find(|c| &c["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{name} rendered"));
        let metadata = &rendered["metadata"];
        assert_eq!(
            metadata["annotations"]["helm.sh/resource-policy"], "keep",
            "{name}"
        );
        assert_eq!(metadata["labels"]["team"], "platform", "{name}");
        assert_eq!(metadata["labels"]["app.kubernetes.io/instance"], "kpo");
        let mut stripped = (*rendered).clone();
        let mut generated = generated.clone();
        for object in [&mut stripped, &mut generated] {
            numbers_as_floats(object);
            let meta = object["metadata"].as_object_mut().expect("metadata");
            meta.remove("labels");
            meta.remove("annotations");
        }
        assert_eq!(stripped, generated, "{name} renders as generated");
    }
    let objects = template(&["crds.keep=false"]).await.expect("render");
    assert!(
        of_kind(&objects, "CustomResourceDefinition")
            .iter()
            .all(|c| c["metadata"]["annotations"]["helm.sh/resource-policy"].is_null())
    );
    let objects = template(&["crds.enabled=false"]).await.expect("render");
    assert!(of_kind(&objects, "CustomResourceDefinition").is_empty());
}

/// Helm writes `0` where the generator writes `0.0`: the same number to the API server.
fn numbers_as_floats(value: &mut Value) {
    match value {
        Value::Number(n) => {
            if let Some(f) = n.as_f64().and_then(serde_json::Number::from_f64) {
                *n = f;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(numbers_as_floats),
        Value::Object(map) => map.values_mut().for_each(numbers_as_floats),
        _ => {}
    }
}

/// The rendered CRDs are accepted by the API server: a server-side apply dry run over the
/// installed ones (the shared test cluster's CRDs are not Helm's to own), rendered for that
/// server's version as `helm install` renders them.
#[tokio::test]
async fn chart_crds_apply_on_the_api_server() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Patch, PatchParams};
    let client = common::client_with_crds().await;
    let version = format!("1.{}.0", common::server_minor_version(&client).await);
    let api: kube::Api<CustomResourceDefinition> = kube::Api::all(client);
    let objects = render(&["--kube-version", &version]).await.expect("render");
    let crds = of_kind(&objects, "CustomResourceDefinition");
    assert_eq!(crds.len(), 3);
    let mut params = PatchParams::apply("keypair-operator-helm-test").force();
    params.dry_run = true;
    for crd in crds {
        let name = crd["metadata"]["name"].as_str().expect("name");
        let applied = api
            .patch(name, &params, &Patch::Apply(crd))
            .await
            .unwrap_or_else(|e| panic!("dry-run apply {name}: {e}"));
        assert_eq!(
            applied
                .metadata
                .annotations
                .unwrap_or_default()
                .get("helm.sh/resource-policy")
                .map(String::as_str),
            Some("keep")
        );
    }
}

/// The CEL rules are rendered for API servers that enforce them (1.25 on) and left out
/// before: 1.20 to 1.22 do not know the field, and Helm's validation refuses it there.
#[tokio::test]
async fn chart_crds_carry_cel_rules_from_1_25() {
    let rules = |objects: &[Value]| {
        of_kind(objects, "CustomResourceDefinition")
            .iter()
            .map(|crd| crd.to_string().matches("x-kubernetes-validations").count())
            .sum::<usize>()
    };
    let generated: usize = keypair_operator::crd::crd_files()
        .expect("render CRDs")
        .iter()
        .map(|(_, yaml)| yaml.matches("x-kubernetes-validations").count())
        .sum();
    assert!(generated > 0);
    for (version, expected) in [("1.20.2", 0), ("1.24.0", 0), ("1.25.0", generated)] {
        let objects = render(&["--kube-version", version]).await.expect("render");
        assert_eq!(rules(&objects), expected, "Kubernetes {version}");
    }
    let objects = render(&[]).await.expect("render");
    assert_eq!(rules(&objects), generated, "Helm's default version");
}

#[tokio::test]
async fn rbac_grants_only_what_the_operator_uses() {
    for (mode, set) in [("cluster", vec![]), ("namespaced", NAMESPACED.to_vec())] {
        let objects = template(&set).await.expect("render");
        for role in of_kind(&objects, "ClusterRole")
            .into_iter()
            .chain(of_kind(&objects, "Role"))
        {
            for rule in rules(role) {
                for field in ["apiGroups", "resources", "verbs"] {
                    assert!(
                        !rule[field]
                            .as_array()
                            .is_some_and(|v| v.iter().any(|x| x == "*")),
                        "{mode}: wildcard in {rule}"
                    );
                }
                assert!(
                    !rule["verbs"]
                        .as_array()
                        .is_some_and(|v| v.iter().any(|x| x == "delete")),
                    "{mode}: nothing is deleted by the operator: {rule}"
                );
            }
        }
        let cluster_role = of_kind(&objects, "ClusterRole")[0];
        assert!(grants(cluster_role, "clusterkeypairproviders"));
        assert!(
            !grants(cluster_role, "leases"),
            "{mode}: leases only in the operator's namespace"
        );
        let roles = of_kind(&objects, "Role");
        match mode {
            "cluster" => {
                assert!(grants(cluster_role, "secrets"));
                assert!(roles.is_empty(), "no leader election with one replica");
            }
            _ => {
                assert!(
                    !grants(cluster_role, "secrets"),
                    "namespaced: no Secret access cluster-wide"
                );
                let with_secrets: Vec<&str> = roles
                    .iter()
                    .filter(|r| grants(r, "secrets"))
                    .filter_map(|r| r["metadata"]["namespace"].as_str())
                    .collect();
                assert_eq!(with_secrets, ["team-a", "team-b"]);
                let args = &of_kind(&objects, "Deployment")[0]["spec"]["template"]["spec"]["containers"]
                    [0]["args"];
                assert!(
                    args.as_array()
                        .is_some_and(|a| a.iter().any(|x| x == "--namespace=team-a,team-b")),
                    "{args}"
                );
            }
        }
    }
    // More than one replica: leader election on, leases in the release namespace only.
    let objects = template(&["replicaCount=2"]).await.expect("render");
    let lease_roles: Vec<&Value> = of_kind(&objects, "Role")
        .into_iter()
        .filter(|r| grants(r, "leases"))
        .collect();
    assert_eq!(lease_roles.len(), 1);
    assert_eq!(lease_roles[0]["metadata"]["namespace"], "ops");
    let args =
        &of_kind(&objects, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"];
    assert!(
        args.as_array()
            .is_some_and(|a| a.iter().any(|x| x == "--leader-elect")),
        "{args}"
    );
}

#[tokio::test]
async fn pod_is_locked_down_and_probed() {
    let objects = template(&[]).await.expect("render");
    let pod = &of_kind(&objects, "Deployment")[0]["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let container = &pod["containers"][0];
    let sc = &container["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(container["resources"]["limits"]["memory"].is_string());
    // Optional objects appear only when asked for.
    assert!(
        of_kind(&objects, "ServiceMonitor").is_empty()
            && of_kind(&objects, "NetworkPolicy").is_empty()
    );
    let objects = template(&[
        "metrics.serviceMonitor.enabled=true",
        "networkPolicy.enabled=true",
    ])
    .await
    .expect("render");
    assert_eq!(of_kind(&objects, "ServiceMonitor").len(), 1);
    assert_eq!(of_kind(&objects, "NetworkPolicy").len(), 1);
}

#[tokio::test]
async fn renders_are_stable() {
    let a = template(&NAMESPACED).await.expect("render");
    let b = template(&NAMESPACED).await.expect("render");
    assert_eq!(a, b);
}

#[tokio::test]
async fn bad_values_are_rejected_by_the_schema() {
    for (set, words) in [
        (vec!["rbac.mode=bogus"], "rbac/mode"),
        (vec!["rbac.mode=namespaced"], "watchNamespaces"),
        (vec!["replicaCount=0"], "replicaCount"),
        (vec!["operator.checkInterval=soon"], "checkInterval"),
        (vec!["operator.logFormat=xml"], "logFormat"),
        (vec!["httpPort=80"], "httpPort"),
        (vec!["unknownKey=1"], "unknownKey"),
        (vec!["image.digest=latest"], "digest"),
        (vec!["operator.providerTimeout=15"], "providerTimeout"),
        (vec!["operator.maxBackoff=never"], "maxBackoff"),
        (vec!["extraArgs={-v}"], "extraArgs"),
        (vec!["serviceAccount.create=false"], "name"),
        (vec!["crds.keep=yes"], "keep"),
        (
            vec![
                "podDisruptionBudget.enabled=true",
                "podDisruptionBudget.minAvailable=1",
                "podDisruptionBudget.maxUnavailable=1",
            ],
            "not both",
        ),
        (
            vec!["prometheusRule.alerts.keyExpiringSoon.thresholdSeconds=soon"],
            "thresholdSeconds",
        ),
        (vec!["prometheusRule.alerts.keyNotReady.for=15"], "for"),
        (vec!["grafanaDashboard.label=a b"], "label"),
    ] {
        let error = template(&set)
            .await
            .expect_err(&format!("{set:?} must be rejected"));
        assert!(error.contains(words), "{set:?}: {error}");
    }
}

/// A kubeconfig for the same server as `admin`, authenticating with `token`.
fn token_kubeconfig(admin: &Path, token: &str, out: &Path) {
    let text = std::fs::read_to_string(admin).expect("admin kubeconfig");
    let mut config: Value = serde_yaml::from_str(&text).expect("kubeconfig YAML");
    config["users"] = json!([{"name": "chart-sa", "user": {"token": token}}]);
    config["contexts"][0]["context"]["user"] = json!("chart-sa");
    std::fs::write(out, serde_yaml::to_string(&config).expect("YAML")).expect("write kubeconfig");
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["--kubeconfig", kubeconfig.to_str().expect("path")];
    all.extend(args);
    run(Path::new("kubectl"), &all)
}

/// A release of the chart installed into the test cluster, and a kubeconfig that
/// authenticates as its ServiceAccount (a token minted with `kubectl create token`).
struct Release {
    name: String,
    namespace: String,
    admin: PathBuf,
    sa_config: PathBuf,
}

impl Release {
    async fn install(namespace: &str, prefix: &str, set: &[&str]) -> Release {
        let admin = common::kubeconfig_path().await;
        let name = format!("{prefix}-{}", &namespace[namespace.len() - 8..]);
        let chart = chart();
        let mut args = vec![
            "install",
            &name,
            chart.to_str().expect("path"),
            "--namespace",
            namespace,
            "--kubeconfig",
            admin.to_str().expect("path"),
            // The harness installed the CRDs cluster-wide; they are not this release's.
            "--set",
            "crds.enabled=false",
        ];
        for s in set {
            args.extend(["--set", s]);
        }
        let (ok, out, err) = run(&helm().await, &args);
        assert!(ok, "helm install: {out}{err}");
        let service_account = format!("{name}-keypair-operator");
        let (ok, token, err) = kubectl(
            &admin,
            &[
                "-n",
                namespace,
                "create",
                "token",
                &service_account,
                "--duration",
                "1h",
            ],
        );
        assert!(ok, "kubectl create token: {err}");
        let sa_config = tempdir(namespace).join("kubeconfig");
        token_kubeconfig(&admin, token.trim(), &sa_config);
        Release {
            name,
            namespace: namespace.to_owned(),
            admin,
            sa_config,
        }
    }

    /// `kubectl auth can-i` as the chart's ServiceAccount.
    fn can(&self, verb: &str, resource: &str, ns: &str) -> String {
        kubectl(
            &self.sa_config,
            &["auth", "can-i", verb, resource, "-n", ns],
        )
        .1
        .trim()
        .to_owned()
    }

    async fn uninstall(self) {
        let (ok, out, err) = run(
            &helm().await,
            &[
                "uninstall",
                &self.name,
                "--namespace",
                &self.namespace,
                "--kubeconfig",
                self.admin.to_str().expect("path"),
            ],
        );
        assert!(ok, "helm uninstall: {out}{err}");
    }
}

#[tokio::test]
async fn the_operator_runs_with_exactly_the_charts_rbac_and_arguments() {
    let client = common::client_with_crds().await;
    let app = common::test_namespace(&client, "helm-app").await;
    let other = common::test_namespace(&client, "helm-other").await;
    let ops = common::test_namespace(&client, "helm-ops").await;
    let watch = format!("rbac.watchNamespaces={{{app}}}");
    let release = Release::install(
        &ops,
        "kpo",
        &[
            "rbac.mode=namespaced",
            &watch,
            "operator.verificationPollInterval=1s",
            "operator.checkInterval=5s",
            "operator.logLevel=debug",
        ],
    )
    .await;
    assert_eq!(release.can("get", "secrets", &app), "yes");
    assert_eq!(
        release.can("get", "secrets", &other),
        "no",
        "no Secret access outside the watched namespaces"
    );
    assert_eq!(release.can("list", "secrets", &ops), "no");
    assert_eq!(release.can("delete", "secrets", &app), "no");
    assert_eq!(
        release.can("create", "leases.coordination.k8s.io", &app),
        "no"
    );

    // The chart's arguments, as the API server has the Deployment (only the listen
    // address made local).
    let deployments: kube::Api<Deployment> = kube::Api::namespaced(client.clone(), &ops);
    let deployment = deployments
        .get(&format!("{}-keypair-operator", release.name))
        .await
        .expect("Deployment installed");
    let pod = deployment.spec.template.spec.expect("pod spec");
    let args = pod.containers[0].args.clone().expect("args");
    let sandbox = common::Sandbox::start({
        let mut c = SandboxConfig::threatwinds();
        c.session_tokens = vec!["helm-test-session".to_owned()];
        c
    })
    .await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let logs = tempdir(&ops);
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_keypair-operator"));
    command
        .args(args.iter().map(|a| {
            if a.starts_with("--http-listen=") {
                format!("--http-listen=127.0.0.1:{port}")
            } else {
                a.clone()
            }
        }))
        .arg("--kubeconfig")
        .arg(&release.sa_config)
        .env("POD_NAMESPACE", &ops)
        .env("POD_NAME", "helm-test")
        .stdout(std::fs::File::create(logs.join("operator.log")).expect("log"))
        .stderr(std::fs::File::create(logs.join("operator.err")).expect("log"))
        .kill_on_drop(true);
    let mut operator = command.spawn().expect("start operator");

    common::put_secret(
        &client,
        &app,
        "tw-session",
        &[("token", "helm-test-session")],
    )
    .await;
    let provider = json!({"apiVersion": "keypairs.dev/v1alpha1", "kind": "KeyPairProvider", "metadata": {"name": "p"},
        "spec": {"threatwinds": {"url": sandbox.url(), "sessionSecretRef": {"name": "tw-session", "key": "token"}}}});
    common::apply_json::<keypair_operator::crd::KeyPairProvider>(&client, Some(&app), provider)
        .await;
    let akp = json!({"apiVersion": "keypairs.dev/v1alpha1", "kind": "ApiKeyPair", "metadata": {"name": "web"},
        "spec": {"providerRef": {"name": "p"}, "verification": {"codeSecretRef": {"name": "code", "key": "code"}}}});
    common::apply_json::<keypair_operator::crd::ApiKeyPair>(&client, Some(&app), akp).await;
    let created = common::wait_akp(&client, &app, "web", "created", |a| {
        common::ready_is(a, "False", "VerificationCodeMissing")
    })
    .await;
    let code_id = created
        .status
        .and_then(|s| s.verification_code_id)
        .expect("code id");
    let code = sandbox.code_for(&code_id).await;
    common::put_secret(&client, &app, "code", &[("code", &code)]).await;
    common::wait_akp(&client, &app, "web", "ready", |a| {
        common::ready_is(a, "True", "Ready")
    })
    .await;
    let data = common::secret_data(&client, &app, "web")
        .await
        .expect("Secret written with the chart's RBAC");
    assert_eq!(sandbox.keys().await[0].secret, data["apiSecret"]);
    let events = common::events_for(&client, &app, "web").await;
    assert!(
        events.iter().any(|e| e.0 == "Created") && events.iter().any(|e| e.0 == "Verified"),
        "{events:?}"
    );

    let api: kube::Api<keypair_operator::crd::ApiKeyPair> =
        kube::Api::namespaced(client.clone(), &app);
    api.delete("web", &Default::default())
        .await
        .expect("delete");
    common::wait_for("deleted", Duration::from_secs(60), || async {
        api.get_opt("web").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(sandbox.keys().await.is_empty());
    let _ = operator.start_kill();
    let _ = operator.wait().await;
    release.uninstall().await;
}

#[tokio::test]
async fn cluster_mode_installs_and_scopes_leases_to_the_release_namespace() {
    let client = common::client_with_crds().await;
    let ops = common::test_namespace(&client, "helm-cluster").await;
    let other = common::test_namespace(&client, "helm-elsewhere").await;
    let release = Release::install(&ops, "kpoc", &["replicaCount=2"]).await;
    assert_eq!(
        release.can("watch", "secrets", &other),
        "yes",
        "cluster mode watches every namespace"
    );
    assert_eq!(
        release.can("patch", "leases.coordination.k8s.io", &ops),
        "yes"
    );
    assert_eq!(
        release.can("patch", "leases.coordination.k8s.io", &other),
        "no"
    );
    assert_eq!(
        release.can("delete", "apikeypairs.keypairs.dev", &other),
        "no"
    );
    assert_eq!(
        release.can("patch", "deployments.apps", &other),
        "no",
        "restarting workloads is opt-in"
    );
    release.uninstall().await;
}

/// `rbac.rolloutRestart` grants exactly get and patch on the three workload kinds, in the
/// role that holds the Secrets (all namespaces, or each watched one).
#[tokio::test]
async fn rollout_restart_rbac_is_opt_in() {
    for (mode, base) in [("cluster", vec![]), ("namespaced", NAMESPACED.to_vec())] {
        let objects = template(&base).await.expect("render");
        let roles = || {
            of_kind(&objects, "ClusterRole")
                .into_iter()
                .chain(of_kind(&objects, "Role"))
        };
        assert!(
            !roles().any(|r| grants(r, "deployments")),
            "{mode}: off by default"
        );
        let mut set = base.clone();
        set.push("rbac.rolloutRestart=true");
        let objects = template(&set).await.expect("render");
        let roles: Vec<&Value> = of_kind(&objects, "ClusterRole")
            .into_iter()
            .chain(of_kind(&objects, "Role"))
            .collect();
        for kind in ["deployments", "statefulsets", "daemonsets"] {
            let granting: Vec<&&Value> = roles.iter().filter(|r| grants(r, kind)).collect();
            let with_secrets: Vec<&&Value> =
                roles.iter().filter(|r| grants(r, "secrets")).collect();
            assert_eq!(
                granting, with_secrets,
                "{mode}: {kind} where the Secrets are"
            );
        }
        let workload_rules: Vec<&Value> = roles
            .iter()
            .flat_map(|r| rules(r))
            .filter(|rule| {
                rule["resources"]
                    .as_array()
                    .is_some_and(|v| v.iter().any(|x| x == "deployments"))
            })
            .collect();
        assert!(!workload_rules.is_empty());
        for rule in workload_rules {
            assert_eq!(rule["verbs"], serde_json::json!(["get", "patch"]), "{mode}");
        }
    }
}

fn tempdir(name: &str) -> PathBuf {
    let dir = root().join("target/test-logs").join(name);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn deployment(objects: &[Value]) -> &Value {
    of_kind(objects, "Deployment")[0]
}

fn container(objects: &[Value]) -> &Value {
    &deployment(objects)["spec"]["template"]["spec"]["containers"][0]
}

fn args(objects: &[Value]) -> Vec<String> {
    container(objects)["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect()
}

/// Every value of the chart changes the rendered objects as documented.
#[tokio::test]
async fn every_value_renders() {
    type Check = fn(&[Value]);
    let table: Vec<(Vec<&str>, Check)> = vec![
        (vec!["--set", "nameOverride=keys"], |o| {
            assert_eq!(deployment(o)["metadata"]["name"], "kpo-keys");
            assert_eq!(
                deployment(o)["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
                "keys"
            );
        }),
        (vec!["--set", "fullnameOverride=keys"], |o| {
            for kind in ["Deployment", "ServiceAccount", "ClusterRole"] {
                assert_eq!(of_kind(o, kind)[0]["metadata"]["name"], "keys", "{kind}");
            }
            assert_eq!(of_kind(o, "Service")[0]["metadata"]["name"], "keys-metrics");
        }),
        (vec!["--set", "commonLabels.team=platform"], |o| {
            for object in o {
                assert_eq!(object["metadata"]["labels"]["team"], "platform", "{object}");
            }
            assert_eq!(
                deployment(o)["spec"]["template"]["metadata"]["labels"]["team"],
                "platform"
            );
            assert!(
                deployment(o)["spec"]["selector"]["matchLabels"]["team"].is_null(),
                "selectors are immutable: commonLabels stay out"
            );
        }),
        (
            vec![
                "--set",
                "image.repository=r.example/kpo",
                "--set",
                "image.tag=1.2.3",
            ],
            |o| {
                assert_eq!(container(o)["image"], "r.example/kpo:1.2.3");
            },
        ),
        (
            vec![
                "--set",
                "image.tag=1.2.3",
                "--set",
                "image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            ],
            |o| {
                assert_eq!(
                    container(o)["image"],
                    "keypair-operator@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
                );
            },
        ),
        (
            vec![
                "--set",
                "serviceAccount.create=false",
                "--set",
                "serviceAccount.name=existing",
            ],
            |o| {
                assert!(of_kind(o, "ServiceAccount").is_empty());
                assert_eq!(
                    deployment(o)["spec"]["template"]["spec"]["serviceAccountName"],
                    "existing"
                );
                assert_eq!(
                    of_kind(o, "ClusterRoleBinding")[0]["subjects"][0]["name"],
                    "existing"
                );
            },
        ),
        (
            vec![
                "--set",
                "serviceAccount.name=named",
                "--set",
                "serviceAccount.annotations.a=b",
            ],
            |o| {
                let sa = of_kind(o, "ServiceAccount")[0];
                assert_eq!(sa["metadata"]["name"], "named");
                assert_eq!(sa["metadata"]["annotations"]["a"], "b");
            },
        ),
        (
            vec![
                "--set",
                "operator.checkInterval=10m",
                "--set",
                "operator.verificationPollInterval=5s",
                "--set",
                "operator.sessionRefreshMargin=2h",
                "--set",
                "operator.providerTimeout=30s",
                "--set",
                "operator.maxBackoff=10m",
                "--set",
                "operator.concurrency=3",
                "--set",
                "operator.logFormat=text",
                "--set",
                "operator.logLevel=debug",
                "--set",
                "httpPort=9090",
            ],
            |o| {
                let args = args(o);
                for flag in [
                    "--check-interval=10m",
                    "--verification-poll-interval=5s",
                    "--session-refresh-margin=2h",
                    "--provider-timeout=30s",
                    "--max-backoff=10m",
                    "--concurrency=3",
                    "--log-format=text",
                    "--log-level=debug",
                    "--http-listen=0.0.0.0:9090",
                ] {
                    assert!(args.iter().any(|a| a == flag), "{flag} in {args:?}");
                }
                assert_eq!(container(o)["ports"][0]["containerPort"], 9090);
            },
        ),
        (
            vec![
                "--set",
                "leaderElection.enabled=true",
                "--set",
                "leaderElection.leaseDuration=30s",
            ],
            |o| {
                let args = args(o);
                assert!(args.iter().any(|a| a == "--leader-elect"));
                assert!(args.iter().any(|a| a == "--lease-duration=30s"));
                assert!(
                    args.iter()
                        .any(|a| a == "--lease-name=kpo-keypair-operator")
                );
            },
        ),
        (
            vec!["--set-json", r#"extraArgs=["--log-level=trace"]"#],
            |o| {
                assert_eq!(
                    args(o).last().map(String::as_str),
                    Some("--log-level=trace")
                );
            },
        ),
        (
            vec![
                "--set-json",
                r#"extraEnv=[{"name":"HTTPS_PROXY","value":"http://proxy:3128"}]"#,
                "--set-json",
                r#"volumes=[{"name":"ca","configMap":{"name":"corp-ca"}}]"#,
                "--set-json",
                r#"volumeMounts=[{"name":"ca","mountPath":"/etc/ssl/corp","readOnly":true}]"#,
            ],
            |o| {
                let env = container(o)["env"].as_array().expect("env");
                assert!(env.iter().any(|e| e["name"] == "POD_NAME"));
                assert!(
                    env.iter()
                        .any(|e| e["name"] == "HTTPS_PROXY" && e["value"] == "http://proxy:3128")
                );
                assert_eq!(
                    container(o)["volumeMounts"][0]["mountPath"],
                    "/etc/ssl/corp"
                );
                assert_eq!(
                    deployment(o)["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"],
                    "corp-ca"
                );
            },
        ),
        (vec!["--set", "priorityClassName=keys-critical"], |o| {
            assert_eq!(
                deployment(o)["spec"]["template"]["spec"]["priorityClassName"],
                "keys-critical"
            );
        }),
        (
            vec![
                "--set-json",
                r#"topologySpreadConstraints=[{"maxSkew":1,"topologyKey":"kubernetes.io/hostname","whenUnsatisfiable":"ScheduleAnyway","labelSelector":{"matchLabels":{"app.kubernetes.io/instance":"{{ .Release.Name }}"}}}]"#,
            ],
            |o| {
                let tsc =
                    &deployment(o)["spec"]["template"]["spec"]["topologySpreadConstraints"][0];
                assert_eq!(tsc["topologyKey"], "kubernetes.io/hostname");
                assert_eq!(
                    tsc["labelSelector"]["matchLabels"]["app.kubernetes.io/instance"], "kpo",
                    "templated"
                );
            },
        ),
        (
            vec![
                "--set",
                "securityContext.runAsUser=1000",
                "--set",
                "podSecurityContext.fsGroup=2000",
            ],
            |o| {
                let pod = &deployment(o)["spec"]["template"]["spec"];
                assert_eq!(pod["securityContext"]["fsGroup"], 2000);
                assert_eq!(
                    pod["securityContext"]["runAsNonRoot"], true,
                    "hardened defaults stay"
                );
                assert_eq!(
                    pod["securityContext"]["seccompProfile"]["type"],
                    "RuntimeDefault"
                );
                let sc = &container(o)["securityContext"];
                assert_eq!(sc["runAsUser"], 1000);
                assert_eq!(sc["readOnlyRootFilesystem"], true, "hardened defaults stay");
                assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
            },
        ),
        (vec!["--set", "podDisruptionBudget.enabled=true"], |o| {
            let pdb = of_kind(o, "PodDisruptionBudget")[0];
            assert_eq!(pdb["spec"]["minAvailable"], 1);
            assert_eq!(
                pdb["spec"]["selector"]["matchLabels"],
                deployment(o)["spec"]["selector"]["matchLabels"]
            );
        }),
        (
            vec![
                "--set",
                "podDisruptionBudget.enabled=true",
                "--set",
                "podDisruptionBudget.maxUnavailable=50%",
            ],
            |o| {
                let pdb = of_kind(o, "PodDisruptionBudget")[0];
                assert_eq!(pdb["spec"]["maxUnavailable"], "50%");
                assert!(pdb["spec"]["minAvailable"].is_null());
            },
        ),
        (
            vec![
                "--set",
                "podAnnotations.a=b",
                "--set",
                "podLabels.c=d",
                "--set",
                "nodeSelector.disk=ssd",
                "--set-json",
                r#"tolerations=[{"key":"k","operator":"Exists"}]"#,
                "--set-json",
                r#"affinity={"nodeAffinity":{}}"#,
                "--set-json",
                r#"imagePullSecrets=[{"name":"regcred"}]"#,
                "--set",
                "image.pullPolicy=Always",
                "--set",
                "resources.limits.memory=256Mi",
            ],
            |o| {
                let template = &deployment(o)["spec"]["template"];
                assert_eq!(template["metadata"]["annotations"]["a"], "b");
                assert_eq!(template["metadata"]["labels"]["c"], "d");
                let pod = &template["spec"];
                assert_eq!(pod["nodeSelector"]["disk"], "ssd");
                assert_eq!(pod["tolerations"][0]["key"], "k");
                assert!(pod["affinity"]["nodeAffinity"].is_object());
                assert_eq!(pod["imagePullSecrets"][0]["name"], "regcred");
                assert_eq!(container(o)["imagePullPolicy"], "Always");
                assert_eq!(container(o)["resources"]["limits"]["memory"], "256Mi");
            },
        ),
        (vec!["--set", "metrics.service.enabled=false"], |o| {
            assert!(of_kind(o, "Service").is_empty());
        }),
        (
            vec![
                "--set",
                "metrics.serviceMonitor.enabled=true",
                "--set",
                "metrics.serviceMonitor.namespace=monitoring",
                "--set",
                "metrics.serviceMonitor.interval=1m",
                "--set",
                "metrics.serviceMonitor.scrapeTimeout=10s",
                "--set",
                "metrics.serviceMonitor.honorLabels=false",
                "--set",
                "metrics.serviceMonitor.labels.release=prom",
                "--set-json",
                r#"metrics.serviceMonitor.relabelings=[{"targetLabel":"cluster","replacement":"prod"}]"#,
                "--set-json",
                r#"metrics.serviceMonitor.metricRelabelings=[{"sourceLabels":["__name__"],"regex":"go_.*","action":"drop"}]"#,
            ],
            |o| {
                let sm = of_kind(o, "ServiceMonitor")[0];
                assert_eq!(sm["metadata"]["namespace"], "monitoring");
                assert_eq!(sm["metadata"]["labels"]["release"], "prom");
                assert_eq!(
                    sm["spec"]["namespaceSelector"]["matchNames"],
                    json!(["ops"])
                );
                let endpoint = &sm["spec"]["endpoints"][0];
                assert_eq!(endpoint["interval"], "1m");
                assert_eq!(endpoint["scrapeTimeout"], "10s");
                assert_eq!(endpoint["honorLabels"], false);
                assert_eq!(endpoint["relabelings"][0]["targetLabel"], "cluster");
                assert_eq!(endpoint["metricRelabelings"][0]["action"], "drop");
            },
        ),
        (vec!["--set", "metrics.serviceMonitor.enabled=true"], |o| {
            let endpoint = &of_kind(o, "ServiceMonitor")[0]["spec"]["endpoints"][0];
            assert_eq!(
                endpoint["honorLabels"], true,
                "the key's namespace label is kept"
            );
            assert!(endpoint["relabelings"].is_null());
        }),
        (
            vec![
                "--set",
                "prometheusRule.enabled=true",
                "--set",
                "prometheusRule.namespace=monitoring",
                "--set",
                "prometheusRule.labels.release=prom",
                "--set",
                "prometheusRule.ruleLabels.team=platform",
                "--set",
                "prometheusRule.alerts.keyExpiringSoon.thresholdSeconds=86400",
                "--set",
                "prometheusRule.alerts.keyNotReady.for=30m",
                "--set",
                "prometheusRule.alerts.keyNotReady.severity=critical",
                "--set",
                "prometheusRule.alerts.reconcileErrors.ratio=0.25",
                "--set",
                "prometheusRule.alerts.noLeader.enabled=false",
            ],
            |o| {
                let rule = of_kind(o, "PrometheusRule")[0];
                assert_eq!(rule["metadata"]["namespace"], "monitoring");
                assert_eq!(rule["metadata"]["labels"]["release"], "prom");
                let rules = rule["spec"]["groups"][0]["rules"]
                    .as_array()
                    .expect("rules");
                let alert = |name: &str| rules.iter().find(|r| r["alert"] == name);
                assert!(alert("KeyPairOperatorNoLeader").is_none(), "disabled");
                assert_eq!(rules.len(), 7);
                for rule in rules {
                    assert_eq!(rule["labels"]["team"], "platform", "{rule}");
                }
                let expiring = alert("KeyPairExpiringSoon").expect("alert");
                assert!(
                    expiring["expr"]
                        .as_str()
                        .is_some_and(|e| e.ends_with("< 86400"))
                );
                let not_ready = alert("KeyPairNotReady").expect("alert");
                assert_eq!(not_ready["for"], "30m");
                assert_eq!(not_ready["labels"]["severity"], "critical");
                let errors = alert("KeyPairOperatorReconcileErrors").expect("alert");
                assert!(
                    errors["expr"]
                        .as_str()
                        .is_some_and(|e| e.trim_end().ends_with("> 0.25"))
                );
            },
        ),
        (
            vec![
                "--set",
                "grafanaDashboard.enabled=true",
                "--set",
                "grafanaDashboard.namespace=monitoring",
                "--set",
                "grafanaDashboard.label=dashboards",
                "--set",
                "grafanaDashboard.labelValue=keys",
                "--set",
                "grafanaDashboard.annotations.grafana_folder=Operators",
            ],
            |o| {
                let cm = of_kind(o, "ConfigMap")[0];
                assert_eq!(cm["metadata"]["namespace"], "monitoring");
                assert_eq!(cm["metadata"]["labels"]["dashboards"], "keys");
                assert!(cm["metadata"]["labels"]["grafana_dashboard"].is_null());
                assert_eq!(cm["metadata"]["annotations"]["grafana_folder"], "Operators");
            },
        ),
        (vec!["--set", "grafanaDashboard.enabled=true"], |o| {
            let cm = of_kind(o, "ConfigMap")[0];
            assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
            let shipped =
                std::fs::read_to_string(chart().join("files/dashboards/keypair-operator.json"))
                    .expect("dashboard");
            let data = cm["data"]["keypair-operator.json"].as_str().expect("data");
            assert_eq!(
                serde_json::from_str::<Value>(data).expect("JSON"),
                serde_json::from_str::<Value>(&shipped).expect("JSON")
            );
        }),
        (
            vec![
                "--set",
                "networkPolicy.enabled=true",
                "--set",
                "networkPolicy.metricsFrom.matchLabels.name=monitoring",
            ],
            |o| {
                let np = of_kind(o, "NetworkPolicy")[0];
                assert_eq!(
                    np["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]["name"],
                    "monitoring"
                );
            },
        ),
        (
            vec![
                "--set",
                "global.imageRegistry=r.example",
                "--set",
                "global.anything.else=1",
            ],
            |o| {
                assert_eq!(
                    of_kind(o, "Deployment").len(),
                    1,
                    "a parent chart's globals are accepted"
                );
            },
        ),
        (
            vec![
                "--set",
                "shards[0].name=team-a",
                "--set",
                "shards[0].selector=team=a",
                "--set",
                "shards[1].name=rest",
                "--set",
                "shards[1].selector=team!=a",
                "--set",
                "leaderElection.enabled=true",
            ],
            |o| {
                let deployments = of_kind(o, "Deployment");
                assert_eq!(deployments.len(), 2, "one Deployment per shard");
                let args_of = |d: &Value| -> Vec<String> {
                    d["spec"]["template"]["spec"]["containers"][0]["args"]
                        .as_array()
                        .expect("args")
                        .iter()
                        .filter_map(|a| a.as_str().map(str::to_owned))
                        .collect()
                };
                let (a, rest) = (args_of(deployments[0]), args_of(deployments[1]));
                assert!(a.contains(&"--shard-selector=team=a".to_owned()), "{a:?}");
                assert!(
                    a.contains(&"--lease-name=kpo-keypair-operator-team-a".to_owned()),
                    "{a:?}"
                );
                assert!(
                    !a.iter().any(|x| x.starts_with("--manage-providers")),
                    "the first shard keeps providers"
                );
                assert!(
                    rest.contains(&"--shard-selector=team!=a".to_owned()),
                    "{rest:?}"
                );
                assert!(
                    rest.contains(&"--manage-providers=false".to_owned()),
                    "{rest:?}"
                );
                assert_ne!(
                    deployments[0]["spec"]["selector"], deployments[1]["spec"]["selector"],
                    "the Deployments do not select each other's pods"
                );
            },
        ),
    ];
    for (args, check) in table {
        let objects = render(&args)
            .await
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        check(&objects);
    }
}

/// `helm lint --strict` with every optional object switched on.
#[tokio::test]
async fn chart_lints_with_everything_enabled() {
    let helm = helm().await;
    let chart = chart();
    let mut args = vec!["lint", chart.to_str().expect("path"), "--strict"];
    for set in EVERYTHING {
        args.extend(["--set", set]);
    }
    let (ok, out, err) = run(&helm, &args);
    assert!(ok, "{out}{err}");
}

/// Non-default values of every kind (the install test adds what needs the cluster).
const EVERYTHING: [&str; 15] = [
    "podDisruptionBudget.enabled=true",
    "podDisruptionBudget.maxUnavailable=1",
    "metrics.serviceMonitor.enabled=true",
    "prometheusRule.enabled=true",
    "prometheusRule.ruleLabels.team=platform",
    "grafanaDashboard.enabled=true",
    "networkPolicy.enabled=true",
    "commonLabels.team=platform",
    "fullnameOverride=keys-operator",
    "replicaCount=2",
    "operator.providerTimeout=20s",
    "operator.sessionRefreshMargin=2h",
    "operator.maxBackoff=2m",
    "securityContext.runAsUser=1001",
    "image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
];

/// Installs CRDs of the Prometheus Operator kinds the chart can create (schema-less
/// stand-ins; the test cluster has no Prometheus Operator), once per cluster.
async fn install_monitoring_crds(client: &kube::Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Patch, PatchParams};
    let api: kube::Api<CustomResourceDefinition> = kube::Api::all(client.clone());
    for (kind, plural) in [
        ("ServiceMonitor", "servicemonitors"),
        ("PrometheusRule", "prometheusrules"),
    ] {
        let name = format!("{plural}.monitoring.coreos.com");
        let crd: CustomResourceDefinition = serde_json::from_value(json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": name},
            "spec": {
                "group": "monitoring.coreos.com",
                "scope": "Namespaced",
                "names": {"kind": kind, "plural": plural, "singular": kind.to_lowercase(), "listKind": format!("{kind}List")},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]
            }
        }))
        .expect("CRD");
        api.patch(
            &name,
            &PatchParams::apply("keypair-operator-helm-test").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("apply {name}: {e}"));
        common::wait_for(
            &format!("{name} Established"),
            Duration::from_secs(30),
            || async {
                let crd = api.get(&name).await.ok()?;
                crd.status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
                    .then_some(())
            },
        )
        .await;
    }
}

/// The chart installs on the real API server with every kind of non-default value, and
/// what the API server stores is what the values asked for.
#[tokio::test]
async fn the_chart_installs_with_non_default_values() {
    let client = common::client_with_crds().await;
    install_monitoring_crds(&client).await;
    let ops = common::test_namespace(&client, "helm-values").await;
    // A PriorityClass and a ServiceAccount made outside the chart.
    let priority = format!("{ops}-critical");
    kube::Api::<k8s_openapi::api::scheduling::v1::PriorityClass>::all(client.clone())
        .create(
            &Default::default(),
            &serde_json::from_value(json!({"metadata": {"name": priority}, "value": 1000000}))
                .expect("PriorityClass"),
        )
        .await
        .expect("create PriorityClass");
    kube::Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), &ops)
        .create(
            &Default::default(),
            &serde_json::from_value(json!({"metadata": {"name": "existing-sa"}}))
                .expect("ServiceAccount"),
        )
        .await
        .expect("create ServiceAccount");
    let admin = common::kubeconfig_path().await;
    let name = format!("kpv-{}", &ops[ops.len() - 8..]);
    let fullname = format!("{name}-keys");
    let values = json!({
        "crds": {"enabled": false},
        "fullnameOverride": fullname,
        "commonLabels": {"team": "platform"},
        "replicaCount": 2,
        "image": {"repository": "r.example/kpo", "digest": "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"},
        "serviceAccount": {"create": false, "name": "existing-sa"},
        "operator": {"checkInterval": "10m", "verificationPollInterval": "5s", "sessionRefreshMargin": "2h",
                     "providerTimeout": "20s", "maxBackoff": "2m", "concurrency": 4, "logFormat": "text", "logLevel": "debug"},
        "extraArgs": ["--log-level=info"],
        "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy.example:3128"}],
        "volumes": [{"name": "ca", "configMap": {"name": "corp-ca", "optional": true}}],
        "volumeMounts": [{"name": "ca", "mountPath": "/etc/ssl/corp", "readOnly": true}],
        "priorityClassName": priority,
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": "{{ .Release.Name }}"}}}],
        "podSecurityContext": {"fsGroup": 65532},
        "securityContext": {"runAsUser": 65533},
        "podDisruptionBudget": {"enabled": true, "maxUnavailable": 1},
        "metrics": {"serviceMonitor": {"enabled": true, "honorLabels": false, "labels": {"release": "prom"},
            "relabelings": [{"targetLabel": "cluster", "replacement": "test"}],
            "metricRelabelings": [{"sourceLabels": ["__name__"], "regex": "go_.*", "action": "drop"}]}},
        "prometheusRule": {"enabled": true, "ruleLabels": {"team": "platform"},
            "alerts": {"keyExpiringSoon": {"enabled": true, "thresholdSeconds": 86400, "for": "2h", "severity": "critical"}}},
        "grafanaDashboard": {"enabled": true, "labelValue": "keys"},
        "networkPolicy": {"enabled": true, "metricsFrom": {"matchLabels": {"name": "monitoring"}}},
        "global": {"imageRegistry": "r.example"}
    });
    let values_file = tempdir(&ops).join("values.yaml");
    std::fs::write(&values_file, serde_yaml::to_string(&values).expect("YAML"))
        .expect("write values");
    let chart = chart();
    let (ok, out, err) = run(
        &helm().await,
        &[
            "install",
            &name,
            chart.to_str().expect("path"),
            "--namespace",
            &ops,
            "--kubeconfig",
            admin.to_str().expect("path"),
            "--values",
            values_file.to_str().expect("path"),
        ],
    );
    assert!(ok, "helm install: {out}{err}");

    // What the API server stores.
    let get = |kind: &str| {
        let (ok, out, err) = kubectl(
            &admin,
            &[
                "-n",
                &ops,
                "get",
                kind,
                "-l",
                &format!("app.kubernetes.io/instance={name}"),
                "-o",
                "json",
            ],
        );
        assert!(ok, "kubectl get {kind}: {err}");
        let list: Value = serde_json::from_str(&out).expect("JSON");
        list["items"].as_array().cloned().unwrap_or_default()
    };
    let deployments = get("deployments");
    assert_eq!(deployments.len(), 1);
    let d = &deployments[0];
    assert_eq!(d["metadata"]["name"], fullname.as_str());
    assert_eq!(d["metadata"]["labels"]["team"], "platform");
    assert_eq!(d["spec"]["replicas"], 2);
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "existing-sa");
    assert_eq!(pod["priorityClassName"], priority.as_str());
    assert_eq!(
        pod["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"]["app.kubernetes.io/instance"],
        name.as_str()
    );
    assert_eq!(pod["securityContext"]["fsGroup"], 65532);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["volumes"][0]["configMap"]["name"], "corp-ca");
    let c = &pod["containers"][0];
    assert_eq!(
        c["image"],
        "r.example/kpo@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    );
    assert_eq!(c["securityContext"]["runAsUser"], 65533);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["volumeMounts"][0]["mountPath"], "/etc/ssl/corp");
    assert!(
        c["env"]
            .as_array()
            .is_some_and(|e| e.iter().any(|v| v["name"] == "HTTPS_PROXY"))
    );
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for flag in [
        "--provider-timeout=20s",
        "--session-refresh-margin=2h",
        "--max-backoff=2m",
        "--concurrency=4",
        "--leader-elect",
        "--log-level=info",
    ] {
        assert!(args.contains(&flag), "{flag} in {args:?}");
    }
    assert!(
        get("serviceaccounts").is_empty(),
        "serviceAccount.create=false"
    );
    let pdbs = get("poddisruptionbudgets");
    assert_eq!(pdbs.len(), 1);
    assert_eq!(pdbs[0]["spec"]["maxUnavailable"], 1);
    let monitors = get("servicemonitors.monitoring.coreos.com");
    assert_eq!(monitors[0]["spec"]["endpoints"][0]["honorLabels"], false);
    assert_eq!(
        monitors[0]["spec"]["endpoints"][0]["relabelings"][0]["replacement"],
        "test"
    );
    let rules = get("prometheusrules.monitoring.coreos.com");
    let rendered = &rules[0]["spec"]["groups"][0]["rules"];
    assert!(
        rendered
            .as_array()
            .is_some_and(|r| r.len() == 8 && r.iter().all(|r| r["labels"]["team"] == "platform"))
    );
    let dashboards = get("configmaps");
    assert_eq!(dashboards.len(), 1);
    assert_eq!(
        dashboards[0]["metadata"]["labels"]["grafana_dashboard"],
        "keys"
    );
    assert_eq!(get("networkpolicies").len(), 1);
    assert_eq!(get("services").len(), 1);
    // The chart's RBAC binds the ServiceAccount it was given.
    let (ok, answer, _) = kubectl(
        &admin,
        &[
            "auth",
            "can-i",
            "watch",
            "apikeypairs.keypairs.dev",
            "--all-namespaces",
            "--as",
            &format!("system:serviceaccount:{ops}:existing-sa"),
        ],
    );
    assert!(ok && answer.trim() == "yes", "{answer}");

    let (ok, out, err) = run(
        &helm().await,
        &[
            "uninstall",
            &name,
            "--namespace",
            &ops,
            "--kubeconfig",
            admin.to_str().expect("path"),
        ],
    );
    assert!(ok, "helm uninstall: {out}{err}");
    let _ = kube::Api::<k8s_openapi::api::scheduling::v1::PriorityClass>::all(client)
        .delete(&priority, &Default::default())
        .await;
}

/// The rules the chart ships, as a Prometheus rule file (`groups:`).
async fn shipped_rules(set: &[&str]) -> Value {
    let mut args = vec!["--set", "prometheusRule.enabled=true"];
    for s in set {
        args.extend(["--set", s]);
    }
    let objects = render(&args).await.expect("render");
    let rule = of_kind(&objects, "PrometheusRule")[0];
    json!({"groups": rule["spec"]["groups"]})
}

/// `promtool test rules` over the shipped rules and tests/prometheus/alerts.test.yaml.
#[tokio::test]
async fn alerts_fire_on_synthetic_series_as_promtool_tests_say() {
    let dir = tempdir("promtool");
    let rules = shipped_rules(&[]).await;
    std::fs::write(
        dir.join("rules.yaml"),
        serde_yaml::to_string(&rules).expect("YAML"),
    )
    .expect("write rules");
    std::fs::copy(
        root().join("tests/prometheus/alerts.test.yaml"),
        dir.join("alerts.test.yaml"),
    )
    .expect("copy the promtool tests");
    let promtool = |args: &[&str]| match Command::new("promtool")
        .args(args)
        .current_dir(&dir)
        .output()
    {
        Ok(out) => (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`promtool` is not installed; install the Debian package `prometheus` \
             (apt-get install --no-install-recommends prometheus; scripts/test.sh does this)"
        ),
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    let (ok, out) = promtool(&["check", "rules", "rules.yaml"]);
    assert!(ok, "{out}");
    let (ok, out) = promtool(&["test", "rules", "alerts.test.yaml"]);
    assert!(ok, "{out}");
    // Every shipped alert has a test case.
    let tests = std::fs::read_to_string(dir.join("alerts.test.yaml")).expect("read");
    for rule in rules["groups"][0]["rules"].as_array().expect("rules") {
        let alert = rule["alert"].as_str().expect("alert name");
        assert!(
            tests.contains(&format!("alertname: {alert}\n")),
            "{alert} has no promtool test case"
        );
    }
}

/// Every `keypair_operator_*` name in `text`.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("keypair_operator_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// Every sample name the operator exports, with every family populated.
fn exported_names() -> std::collections::BTreeSet<String> {
    use keypair_operator::telemetry::{KeyPairFigures, KeyPairLabels, Metrics, ProviderLabels};
    let m = Metrics::new();
    m.reconciled("apikeypair", false, Duration::from_millis(3));
    m.provider_call("datonis", "list", "ok", Duration::from_millis(3));
    m.key_pair(
        KeyPairLabels {
            namespace: "a".into(),
            name: "b".into(),
            provider_kind: "KeyPairProvider".into(),
            provider_name: "p".into(),
        },
        KeyPairFigures {
            expires_at: Some(1),
            renews_at: Some(1),
            ready: true,
            renewal_overdue: false,
            awaiting_verification: false,
        },
    );
    m.provider_status(
        ProviderLabels {
            provider_kind: "KeyPairProvider".into(),
            namespace: "a".into(),
            provider_name: "p".into(),
            provider: "threatwinds",
        },
        true,
        Some(1),
    );
    m.set_leader(true);
    m.encode()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// The alerts and the dashboard use only metrics the operator exports.
#[tokio::test]
async fn alerts_and_dashboard_use_only_exported_metrics() {
    let exported = exported_names();
    assert!(exported.contains("keypair_operator_provider_request_duration_seconds_bucket"));
    let rules = serde_json::to_string(&shipped_rules(&[]).await).expect("JSON");
    let dashboard = std::fs::read_to_string(chart().join("files/dashboards/keypair-operator.json"))
        .expect("dashboard");
    let parsed: Value = serde_json::from_str(&dashboard).expect("the dashboard is valid JSON");
    assert_eq!(parsed["uid"], "keypair-operator");
    let panels = parsed["panels"].as_array().expect("panels");
    let mut exprs = 0;
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        assert!(
            panel["title"].is_string() && panel["gridPos"].is_object(),
            "{panel}"
        );
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            assert!(!metric_names(expr).is_empty(), "{expr}");
            exprs += 1;
        }
    }
    assert!(exprs >= 10, "{exprs} queries");
    for (what, text) in [("rules", &rules), ("dashboard", &dashboard)] {
        let used = metric_names(text);
        assert!(!used.is_empty(), "{what} use no metric");
        let unknown: Vec<&String> = used.iter().filter(|n| !exported.contains(*n)).collect();
        assert!(
            unknown.is_empty(),
            "{what} use metrics the operator does not export: {unknown:?} (exported: {exported:?})"
        );
    }
    // Every per-object gauge appears in the dashboard.
    for gauge in [
        "keypair_operator_ready",
        "keypair_operator_expiration_timestamp_seconds",
        "keypair_operator_awaiting_verification",
        "keypair_operator_provider_ready",
        "keypair_operator_provider_session_expiration_timestamp_seconds",
    ] {
        assert!(
            metric_names(&dashboard).contains(gauge),
            "{gauge} not on the dashboard"
        );
    }
}
