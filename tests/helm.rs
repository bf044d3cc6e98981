//! The Helm chart with the real `helm` binary: lint, render in both RBAC modes, reject bad
//! values, stay stable across renders, ship the generated CRDs, install into the real
//! control plane; then the operator runs with exactly the chart's ServiceAccount token
//! and arguments and takes a key pair through its whole lifecycle.

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
    let helm = helm().await;
    let chart = chart();
    let mut args = vec![
        "template",
        "kpo",
        chart.to_str().expect("path"),
        "--namespace",
        "ops",
    ];
    for s in set {
        args.extend(["--set", s]);
    }
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
    let dir = chart().join("crds");
    let files = keypair_operator::crd::crd_files().expect("render CRDs");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .expect("chart crds/")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut expected: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
    expected.sort();
    assert_eq!(on_disk, expected, "run `make crds`");
    for (name, yaml) in files {
        assert!(
            std::fs::read_to_string(dir.join(&name)).expect("read") == yaml,
            "charts/keypair-operator/crds/{name} is out of date; run `make crds`"
        );
    }
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
