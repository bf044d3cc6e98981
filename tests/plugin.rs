//! The `kubectl-keypair` plugin binary end to end, against the real control plane, the
//! operator binary and the sandbox providers: status (table, JSON, YAML), verify with a
//! wrong and a right code (creating the code reference and Secret), new-code, rotate,
//! inspect, and orphans after a crash (ThreatWinds: found and deleted after a
//! confirmation; Datonis: reported, never deleted). No output ever holds a secret value.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{Operator, Sandbox};
use keypair_operator::crd::ApiKeyPair;
use keypair_operator::sandbox::SandboxConfig;
use kube::Client;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

const SESSION_TOKEN: &str = "plugin-session-token-0123456789abcdef";

/// A namespace, a sandbox, provider `p` pointing at it, and an operator for the namespace.
struct Setup {
    client: Client,
    ns: String,
    sandbox: Sandbox,
    /// Runs for as long as the test holds the setup (killed on drop).
    #[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
    operator: Operator,
}

impl Setup {
    async fn threatwinds(test: &str, env: &[(&str, &str)]) -> Setup {
        let mut config = SandboxConfig::threatwinds();
        config.session_tokens = vec![SESSION_TOKEN.to_owned()];
        let setup = Self::start(test, config, env).await;
        common::put_secret(
            &setup.client,
            &setup.ns,
            "tw-session",
            &[("token", SESSION_TOKEN)],
        )
        .await;
        setup
            .provider(json!({"threatwinds": {"url": setup.sandbox.url(), "sessionSecretRef": {"name": "tw-session", "key": "token"}}}))
            .await;
        setup
    }

    #[cfg(feature = "failpoints")]
    async fn datonis(test: &str, env: &[(&str, &str)]) -> Setup {
        let setup = Self::start(test, SandboxConfig::datonis(), env).await;
        common::put_secret(
            &setup.client,
            &setup.ns,
            "dt-creds",
            &[
                ("email", keypair_operator::sandbox::DEFAULT_DATONIS_EMAIL),
                (
                    "password",
                    keypair_operator::sandbox::DEFAULT_DATONIS_PASSWORD,
                ),
            ],
        )
        .await;
        setup
            .provider(json!({"datonis": {"url": setup.sandbox.url(), "credentialsSecretRef": {"name": "dt-creds"}}}))
            .await;
        setup
    }

    async fn start(test: &str, config: SandboxConfig, env: &[(&str, &str)]) -> Setup {
        let client = common::client_with_crds().await;
        let ns = common::test_namespace(&client, test).await;
        let sandbox = Sandbox::start(config).await;
        let operator = Operator::start(&ns, &Operator::FAST, env).await;
        Setup {
            client,
            ns,
            sandbox,
            operator,
        }
    }

    async fn provider(&self, spec: Value) {
        let object = json!({"apiVersion": "keypairs.dev/v1alpha1", "kind": "KeyPairProvider", "metadata": {"name": "p"}, "spec": spec});
        common::apply_json::<keypair_operator::crd::KeyPairProvider>(
            &self.client,
            Some(&self.ns),
            object,
        )
        .await;
    }

    async fn akp(&self, name: &str, spec: Value) {
        let object = json!({"apiVersion": "keypairs.dev/v1alpha1", "kind": "ApiKeyPair", "metadata": {"name": name}, "spec": spec});
        common::apply_json::<ApiKeyPair>(&self.client, Some(&self.ns), object).await;
    }

    async fn wait(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&ApiKeyPair) -> bool,
    ) -> ApiKeyPair {
        common::wait_akp(&self.client, &self.ns, name, what, check).await
    }

    /// Runs the plugin in this namespace.
    async fn plugin(&self, args: &[&str], stdin: &str) -> Run {
        let mut all = vec!["-n", self.ns.as_str()];
        all.extend_from_slice(args);
        plugin(&all, stdin).await
    }

    /// The plugin's `status NAME -o json` row.
    async fn status_row(&self, name: &str) -> Value {
        let run = self.plugin(&["status", name, "-o", "json"], "").await;
        assert!(run.ok(), "status -o json: {run:?}");
        let parsed: Value = serde_json::from_str(&run.stdout).expect("status -o json parses");
        parsed["items"][0].clone()
    }

    /// Simulates an operator that died mid-create and an admin who then removed the
    /// finalizer and deleted the resource: the remote key is left behind.
    #[cfg(feature = "failpoints")]
    async fn crash_and_abandon(&mut self, name: &str, spec: Value) {
        self.akp(name, spec).await;
        let exit = self.operator.wait_exit(Duration::from_secs(60)).await;
        assert!(!exit.success(), "the operator aborted at the failpoint");
        assert_eq!(self.sandbox.keys().await.len(), 1, "the crash left a key");
        let api: kube::Api<ApiKeyPair> = kube::Api::namespaced(self.client.clone(), &self.ns);
        let patch = json!({"metadata": {"finalizers": null}});
        api.patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .expect("remove finalizer");
        api.delete(name, &Default::default()).await.ok();
        common::wait_for(
            "abandoned resource gone",
            Duration::from_secs(30),
            || async { api.get_opt(name).await.ok()?.is_none().then_some(()) },
        )
        .await;
        self.operator.restart_with(&[]).await;
    }
}

/// What one plugin run printed and how it exited.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(&self) -> bool {
        self.code == Some(0)
    }
    fn text(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// Runs the built `kubectl-keypair` with the test cluster's kubeconfig and `stdin`.
async fn plugin(args: &[&str], stdin: &str) -> Run {
    let kubeconfig: PathBuf = common::kubeconfig_path().await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-keypair"))
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start kubectl-keypair");
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.as_bytes()).await.expect("stdin");
    }
    let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("kubectl-keypair {args:?} did not finish"))
        .expect("kubectl-keypair output");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Asserts that no output holds any of `secrets`.
fn assert_no_secret(runs: &[Run], secrets: &[String]) {
    for run in runs {
        let text = run.text();
        for secret in secrets.iter().filter(|s| !s.is_empty()) {
            assert!(
                !text.contains(secret.as_str()),
                "a secret value appears in plugin output: {run:?}"
            );
        }
    }
}

fn code_id(akp: &ApiKeyPair, replacement: bool) -> String {
    let status = akp.status.clone().unwrap_or_default();
    if replacement {
        status.pending_key.and_then(|p| p.verification_code_id)
    } else {
        status.verification_code_id
    }
    .expect("a verification code id")
}

#[tokio::test]
async fn status_verify_new_code_rotate_and_inspect() {
    let s = Setup::threatwinds("plugin-verify", &[]).await;
    s.akp(
        "web",
        json!({"providerRef": {"name": "p"}, "validityDays": 30}),
    )
    .await;
    let mut runs = Vec::new();
    // No code reference yet: the key waits for a code source.
    let akp = s
        .wait("web", "a verification code id", |a| {
            a.status
                .as_ref()
                .is_some_and(|st| st.verification_code_id.is_some() && st.key_id.is_some())
        })
        .await;
    let first_code_id = code_id(&akp, false);

    let row = s.status_row("web").await;
    assert_eq!(row["name"], "web");
    assert_eq!(row["provider"], "p");
    assert_eq!(row["verified"], false);
    assert_ne!(row["state"], "Ready");
    let table = s.plugin(&["status"], "").await;
    assert!(table.ok() && table.stdout.starts_with("NAME"), "{table:?}");
    assert!(table.stdout.contains("web"), "{table:?}");
    runs.push(table);

    // A wrong code: the reference and Secret are created, the provider rejects it.
    let wrong = s
        .plugin(
            &["verify", "web", "--code", "000000", "--timeout", "60s"],
            "",
        )
        .await;
    assert_eq!(wrong.code, Some(1), "{wrong:?}");
    assert!(wrong.stdout.contains("code rejected"), "{wrong:?}");
    let akp = s.wait("web", "rejected", |_| true).await;
    let reference = akp.spec.verification.clone().expect("a code reference");
    assert_eq!(
        (
            reference.code_secret_ref.name.as_str(),
            reference.code_secret_ref.key.as_str()
        ),
        ("web-code", "code")
    );
    assert!(
        common::secret_data(&s.client, &s.ns, "web-code")
            .await
            .is_some_and(|d| d.get("code").map(String::as_str) == Some("000000"))
    );
    runs.push(wrong);

    // A new code, then the right one.
    let new_code = s.plugin(&["new-code", "web"], "").await;
    assert!(new_code.ok(), "{new_code:?}");
    runs.push(new_code);
    let akp = s
        .wait("web", "a new verification code id", |a| {
            a.status
                .as_ref()
                .and_then(|st| st.verification_code_id.as_deref())
                .is_some_and(|id| id != first_code_id)
        })
        .await;
    let code = s.sandbox.code_for(&code_id(&akp, false)).await;
    let right = s
        .plugin(&["verify", "web", "--code", &code, "--timeout", "60s"], "")
        .await;
    assert!(right.ok(), "{right:?}");
    assert!(right.stdout.contains("verified"), "{right:?}");
    runs.push(right);
    let akp = s
        .wait("web", "Ready", |a| common::ready_is(a, "True", "Ready"))
        .await;
    let yaml = s.plugin(&["status", "web", "-o", "yaml"], "").await;
    let parsed: Value = serde_yaml::from_str(&yaml.stdout).expect("status -o yaml parses");
    assert_eq!(parsed["items"][0]["state"], "Ready", "{yaml:?}");
    assert_eq!(parsed["items"][0]["verified"], true);
    runs.push(yaml);
    let mut secrets = vec![SESSION_TOKEN.to_owned(), code.clone()];
    let data = s.wait_secret("web").await;
    secrets.push(data["apiSecret"].clone());

    // Rotate: the replacement waits for its own code; verify finds and settles it.
    let old_key = akp.status.clone().unwrap_or_default().key_id.expect("key");
    let rotate = s.plugin(&["rotate", "web"], "").await;
    assert!(rotate.ok(), "{rotate:?}");
    runs.push(rotate);
    let akp = s
        .wait("web", "a replacement waiting for its code", |a| {
            a.status
                .as_ref()
                .and_then(|st| st.pending_key.as_ref())
                .is_some_and(|p| p.verification_code_id.is_some())
        })
        .await;
    let rotation_code = s.sandbox.code_for(&code_id(&akp, true)).await;
    let verify_rotation = s
        .plugin(
            &[
                "verify",
                "web",
                "--code",
                &rotation_code,
                "--timeout",
                "60s",
            ],
            "",
        )
        .await;
    assert!(verify_rotation.ok(), "{verify_rotation:?}");
    runs.push(verify_rotation);
    s.wait("web", "the new key serving", |a| {
        a.status.as_ref().is_some_and(|st| {
            st.key_id.as_deref().is_some_and(|k| k != old_key) && st.verified == Some(true)
        })
    })
    .await;
    secrets.push(rotation_code);
    secrets.push(s.wait_secret("web").await["apiSecret"].clone());

    // Inspect: conditions, events, status fields.
    let inspect = s.plugin(&["inspect", "web"], "").await;
    assert!(inspect.ok(), "{inspect:?}");
    for part in [
        "Conditions:",
        "Provider's last answer:",
        "Status:",
        "Events:",
        "keyID:",
        "KeyPairProvider p",
        "Verified",
    ] {
        assert!(
            inspect.stdout.contains(part),
            "inspect lacks {part}: {}",
            inspect.stdout
        );
    }
    assert!(
        inspect.stdout.contains("VerificationCodeRejected") || inspect.stdout.contains("Verified"),
        "events are shown: {}",
        inspect.stdout
    );
    assert!(!inspect.stdout.contains("submittedCodeHash"));
    runs.push(inspect);
    let all = plugin(&["status", "-A", "-o", "json"], "").await;
    let parsed: Value = serde_json::from_str(&all.stdout).expect("status -A -o json parses");
    assert!(
        parsed["items"]
            .as_array()
            .is_some_and(|items| items.iter().any(|i| i["namespace"] == s.ns.as_str())),
        "{all:?}"
    );
    runs.push(all);
    // Keys of sandbox keys (all secrets ever issued) never show.
    secrets.extend(s.sandbox.keys().await.into_iter().map(|k| k.secret));
    assert_no_secret(&runs, &secrets);

    let missing = s.plugin(&["inspect", "nope"], "").await;
    assert_eq!(missing.code, Some(1));
    assert!(missing.stderr.contains("not found"), "{missing:?}");
}

impl Setup {
    async fn wait_secret(&self, name: &str) -> std::collections::BTreeMap<String, String> {
        common::wait_for("the Secret", Duration::from_secs(30), || async {
            common::secret_data(&self.client, &self.ns, name).await
        })
        .await
    }
}

#[tokio::test]
async fn verify_times_out_with_its_own_exit_status() {
    let s = Setup::threatwinds("plugin-timeout", &[]).await;
    // The provider resource does not exist: the key is never created.
    s.akp("web", json!({"providerRef": {"name": "absent"}}))
        .await;
    let run = s
        .plugin(
            &["verify", "web", "--code", "123456", "--timeout", "2s"],
            "",
        )
        .await;
    assert_eq!(run.code, Some(3), "{run:?}");
    assert!(run.stderr.contains("not settled"), "{run:?}");
    assert!(!run.text().contains("123456"));
}

#[cfg(feature = "failpoints")]
#[tokio::test]
async fn a_threatwinds_key_left_by_a_crash_is_found_and_deleted_after_confirmation() {
    use keypair_operator::provider::{CreateKeyPair, HttpOptions, KeyPairApi, ThreatWindsClient};

    let mut s =
        Setup::threatwinds("plugin-tw-orphans", &[("KPO_FAILPOINT", "remote-created")]).await;
    s.crash_and_abandon("crashy", json!({"providerRef": {"name": "p"}}))
        .await;
    let orphan = s.sandbox.keys().await.remove(0);
    assert!(
        orphan
            .name
            .as_deref()
            .is_some_and(|n| n.contains("/crashy ["))
    );

    // A live resource's key and a key made by hand are not orphans of the operator.
    s.akp("web", json!({"providerRef": {"name": "p"}})).await;
    s.wait("web", "a key", |a| {
        a.status
            .as_ref()
            .is_some_and(|st| st.key_id.is_some() && st.pending_create.is_none())
    })
    .await;
    let by_hand = ThreatWindsClient::new(
        &s.sandbox.url(),
        secrecy::SecretString::from(SESSION_TOKEN.to_owned()),
        HttpOptions::default(),
    )
    .expect("client")
    .create(&CreateKeyPair {
        name: "made by hand".into(),
        validity_days: 10,
        role_key: None,
    })
    .await
    .expect("create by hand");
    assert_eq!(s.sandbox.keys().await.len(), 3);

    let mut runs = Vec::new();
    let list = s.plugin(&["orphans", "p"], "").await;
    assert!(list.ok(), "{list:?}");
    assert!(list.stdout.contains(&orphan.id), "{list:?}");
    assert!(list.stdout.contains("no longer exists"), "{list:?}");
    assert!(!list.stdout.contains(&by_hand.key.key_id), "{list:?}");
    assert!(
        list.stderr
            .contains("1 unowned key(s) without the operator's naming"),
        "{list:?}"
    );
    runs.push(list);

    // Declined: nothing deleted.
    let declined = s.plugin(&["orphans", "p", "--delete"], "n\n").await;
    assert!(declined.ok(), "{declined:?}");
    assert!(
        declined.stderr.contains("[y/N]") && declined.stderr.contains("Nothing deleted"),
        "{declined:?}"
    );
    assert_eq!(s.sandbox.keys().await.len(), 3);
    runs.push(declined);

    // Confirmed: only the crash's key goes.
    let confirmed = s
        .plugin(&["orphans", "p", "--delete", "-o", "json"], "y\n")
        .await;
    assert!(confirmed.ok(), "{confirmed:?}");
    let report: Value = serde_json::from_str(&confirmed.stdout).expect("orphans -o json parses");
    assert_eq!(report["deleted"], json!([orphan.id]));
    runs.push(confirmed);
    let left: Vec<String> = s.sandbox.keys().await.into_iter().map(|k| k.id).collect();
    assert_eq!(left.len(), 2);
    assert!(!left.contains(&orphan.id) && left.contains(&by_hand.key.key_id));

    let after = s.plugin(&["orphans", "p", "-o", "json"], "").await;
    let report: Value = serde_json::from_str(&after.stdout).expect("orphans -o json parses");
    assert_eq!(report["orphans"], json!([]), "{after:?}");
    runs.push(after);

    // The same account through a ClusterKeyPairProvider.
    let cluster_provider = format!("plugin-{}", s.ns);
    common::apply_json::<keypair_operator::crd::ClusterKeyPairProvider>(
        &s.client,
        None,
        json!({"apiVersion": "keypairs.dev/v1alpha1", "kind": "ClusterKeyPairProvider",
            "metadata": {"name": cluster_provider},
            "spec": {"credentialsNamespace": s.ns, "threatwinds": {"url": s.sandbox.url(),
                "sessionSecretRef": {"name": "tw-session", "key": "token"}}}}),
    )
    .await;
    let cluster = plugin(
        &[
            "orphans",
            &cluster_provider,
            "--kind",
            "ClusterKeyPairProvider",
            "-o",
            "json",
        ],
        "",
    )
    .await;
    let report: Value = serde_json::from_str(&cluster.stdout).expect("orphans -o json parses");
    assert_eq!(
        (report["listed"].clone(), report["orphans"].clone()),
        (json!(2), json!([])),
        "{cluster:?}"
    );
    assert_eq!(
        report["provider"],
        format!("ClusterKeyPairProvider {cluster_provider}")
    );
    runs.push(cluster);
    common::delete_cluster_provider(&s.client, &cluster_provider).await;

    let mut secrets = vec![SESSION_TOKEN.to_owned(), orphan.secret.clone()];
    secrets.extend(s.sandbox.keys().await.into_iter().map(|k| k.secret));
    assert_no_secret(&runs, &secrets);
}

#[cfg(feature = "failpoints")]
#[tokio::test]
async fn a_datonis_key_left_by_a_crash_is_reported_and_never_deleted() {
    let spec = json!({"providerRef": {"name": "p"}, "datonis": {"roleKey": "1946c4ce5c"}});
    let mut s = Setup::datonis("plugin-dt-orphans", &[("KPO_FAILPOINT", "remote-created")]).await;
    s.crash_and_abandon("crashy", spec.clone()).await;
    let orphan = s.sandbox.keys().await.remove(0);
    s.akp("web", spec).await;
    s.wait("web", "a key", |a| {
        a.status
            .as_ref()
            .is_some_and(|st| st.key_id.is_some() && st.pending_create.is_none())
    })
    .await;

    let run = s
        .plugin(&["orphans", "p", "--delete", "--yes", "-o", "json"], "")
        .await;
    assert!(run.ok(), "{run:?}");
    let report: Value = serde_json::from_str(&run.stdout).expect("orphans -o json parses");
    let orphans = report["orphans"].as_array().expect("orphans");
    assert_eq!(orphans.len(), 1, "{run:?}");
    assert_eq!(orphans[0]["keyID"], orphan.id.as_str());
    assert_eq!(orphans[0]["createdByOperator"], false);
    assert!(report.get("deleted").is_none(), "{run:?}");
    assert!(run.stderr.contains("cannot prove"), "{run:?}");
    assert_eq!(s.sandbox.keys().await.len(), 2, "nothing deleted");

    let table = s.plugin(&["orphans", "p"], "").await;
    assert!(table.ok() && table.stdout.contains(&orphan.id), "{table:?}");
    let verify = s.plugin(&["verify", "web", "--code", "123456"], "").await;
    assert_eq!(verify.code, Some(1), "{verify:?}");
    assert!(verify.stderr.contains("need no verification"), "{verify:?}");
    let mut secrets = vec![keypair_operator::sandbox::DEFAULT_DATONIS_PASSWORD.to_owned()];
    secrets.extend(s.sandbox.keys().await.into_iter().map(|k| k.secret));
    assert_no_secret(&[run, table], &secrets);
}

/// Every `kubectl keypair ...` the README shows parses as the plugin's own command line:
/// the concrete commands of its code blocks, and the inline ones without placeholders
/// for optional parts (`[...]`, `a|b`).
#[test]
fn readme_plugin_commands_parse() {
    use clap::{CommandFactory, Parser};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let mut commands: Vec<String> = readme
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("kubectl keypair "))
        .map(|l| l.split(" #").next().unwrap_or(l).trim().to_owned())
        .collect();
    let code_block_commands = commands.len();
    for piece in readme.split('`').skip(1).step_by(2) {
        let piece = piece.trim();
        if piece.starts_with("kubectl keypair ") && !piece.contains(['[', '|']) {
            commands.push(piece.to_owned());
        }
    }
    assert!(code_block_commands >= 7, "the walkthrough's commands");
    let cli = keypair_operator::plugin::Cli::command();
    for command in &commands {
        let args: Vec<&str> = command.split_whitespace().skip(1).collect();
        // Prose names a subcommand alone ("`kubectl keypair inspect` shows the events").
        if let [_, subcommand] = args.as_slice() {
            assert!(
                cli.find_subcommand(subcommand).is_some(),
                "README: `{command}`: no such subcommand"
            );
            continue;
        }
        if let Err(e) = keypair_operator::plugin::Cli::try_parse_from(args) {
            panic!("README: `{command}` does not parse:\n{e}");
        }
    }
}
