//! End-to-end tests of the operator binary against the real control plane and the
//! project's sandbox providers: every lifecycle step, both providers, both ThreatWinds
//! dialects, bad inputs, outages, crash safety and secret hygiene.

#[path = "../common/mod.rs"]
mod common;

mod bad_inputs;
mod crash;
mod datonis;
mod failures;
mod leaks;
mod operations;
mod regressions;
mod rotation;
mod scale;
mod shards;
mod threatwinds;

use common::{Operator, Sandbox};
use keypair_operator::crd::ApiKeyPair;
use keypair_operator::sandbox::{
    DEFAULT_DATONIS_EMAIL, DEFAULT_DATONIS_PASSWORD, Dialect, SandboxConfig,
};
use kube::Client;
use serde_json::{Value, json};

/// A namespace with a sandbox, a provider named `p` pointing at it, and an operator.
pub struct Scenario {
    pub client: Client,
    pub ns: String,
    pub sandbox: Sandbox,
    pub operator: Operator,
}

/// The session token every ThreatWinds scenario uses.
pub const SESSION_TOKEN: &str = "scenario-session-token-0123456789";

impl Scenario {
    /// ThreatWinds in `dialect`, operator started with `args` and `env`.
    pub async fn threatwinds(
        test: &str,
        dialect: Dialect,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Scenario {
        let mut config = SandboxConfig::threatwinds();
        config.dialect = dialect;
        config.session_tokens = vec![SESSION_TOKEN.to_owned()];
        Self::with_sandbox(test, config, args, env).await
    }

    /// Datonis, operator started with `args` and `env`.
    pub async fn datonis(test: &str, args: &[&str], env: &[(&str, &str)]) -> Scenario {
        Self::with_sandbox(test, SandboxConfig::datonis(), args, env).await
    }

    /// Any sandbox configuration.
    pub async fn with_sandbox(
        test: &str,
        config: SandboxConfig,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Scenario {
        let client = common::client_with_crds().await;
        let ns = common::test_namespace(&client, test).await;
        let threatwinds =
            config.provider == keypair_operator::sandbox::SandboxProvider::Threatwinds;
        let sandbox = Sandbox::start(config).await;
        // The fast intervals, unless the test sets its own.
        let fast: &[&str] = if args.contains(&"--check-interval") {
            &[]
        } else {
            &Operator::FAST
        };
        let scenario_args: Vec<&str> = fast.iter().copied().chain(args.iter().copied()).collect();
        let operator = Operator::start(&ns, &scenario_args, env).await;
        let scenario = Scenario {
            client,
            ns,
            sandbox,
            operator,
        };
        if threatwinds {
            common::put_secret(
                &scenario.client,
                &scenario.ns,
                "tw-session",
                &[("token", SESSION_TOKEN)],
            )
            .await;
            scenario.provider("p", json!({"threatwinds": {"url": scenario.sandbox.url(), "sessionSecretRef": {"name": "tw-session", "key": "token"}}})).await;
        } else {
            common::put_secret(
                &scenario.client,
                &scenario.ns,
                "dt-creds",
                &[
                    ("email", DEFAULT_DATONIS_EMAIL),
                    ("password", DEFAULT_DATONIS_PASSWORD),
                ],
            )
            .await;
            scenario.provider("p", json!({"datonis": {"url": scenario.sandbox.url(), "credentialsSecretRef": {"name": "dt-creds"}}})).await;
        }
        scenario
    }

    /// Applies a `KeyPairProvider`.
    pub async fn provider(&self, name: &str, spec: Value) {
        let object = json!({"apiVersion": "keypairs.dev/v1alpha1", "kind": "KeyPairProvider", "metadata": {"name": name}, "spec": spec});
        common::apply_json::<keypair_operator::crd::KeyPairProvider>(
            &self.client,
            Some(&self.ns),
            object,
        )
        .await;
    }

    /// Waits (at most `within`) until the sandbox has answered `endpoint` at least `n` times.
    pub async fn wait_count(&self, endpoint: &str, n: u64, within: std::time::Duration) {
        common::wait_for(&format!("{n} × {endpoint}"), within, || async {
            (self.sandbox.count(endpoint).await >= n).then_some(())
        })
        .await;
    }

    /// Waits until provider `name` says `Ready=True` for its current spec (its generation).
    pub async fn wait_provider_ready(&self, name: &str) {
        let api: kube::Api<keypair_operator::crd::KeyPairProvider> =
            kube::Api::namespaced(self.client.clone(), &self.ns);
        let what = format!("provider {name} Ready");
        common::wait_for(&what, std::time::Duration::from_secs(30), || {
            let api = api.clone();
            async move {
                let provider = api.get_opt(name).await.ok().flatten()?;
                let status = provider.status?;
                let ready = keypair_operator::conditions::find(&status.conditions, "Ready")?;
                let current = status.observed_generation == provider.metadata.generation;
                (ready.status == "True" && current).then_some(())
            }
        })
        .await;
    }

    /// Applies an `ApiKeyPair`.
    pub async fn akp(&self, name: &str, spec: Value) -> ApiKeyPair {
        let object = json!({"apiVersion": "keypairs.dev/v1alpha1", "kind": "ApiKeyPair", "metadata": {"name": name}, "spec": spec});
        common::apply_json::<ApiKeyPair>(&self.client, Some(&self.ns), object).await
    }

    /// Waits for a condition on an `ApiKeyPair`.
    pub async fn wait(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&ApiKeyPair) -> bool,
    ) -> ApiKeyPair {
        common::wait_akp(&self.client, &self.ns, name, what, check).await
    }

    /// Waits until `Ready` has this status and reason.
    pub async fn wait_ready(&self, name: &str, status: &str, reason: &str) -> ApiKeyPair {
        self.wait(name, &format!("Ready={status} {reason}"), |a| {
            common::ready_is(a, status, reason)
        })
        .await
    }

    /// The Secret's data.
    pub async fn secret(&self, name: &str) -> Option<std::collections::BTreeMap<String, String>> {
        common::secret_data(&self.client, &self.ns, name).await
    }

    /// Puts the emailed code for the key's current verification code id into Secret `code`.
    pub async fn submit_code(&self, akp: &ApiKeyPair) {
        let status = akp.status.clone().unwrap_or_default();
        let code_id = status
            .pending_key
            .and_then(|p| p.verification_code_id)
            .or(status.verification_code_id)
            .expect("a verification code id in status");
        let code = self.sandbox.code_for(&code_id).await;
        common::put_secret(&self.client, &self.ns, "code", &[("code", &code)]).await;
    }

    /// Waits for a new ThreatWinds key's code request, submits the code, and waits until
    /// the key pair is Ready; returns it and its Secret's data.
    pub async fn verified(
        &self,
        name: &str,
    ) -> (ApiKeyPair, std::collections::BTreeMap<String, String>) {
        let akp = self
            .wait_ready(name, "False", "VerificationCodeMissing")
            .await;
        self.submit_code(&akp).await;
        let akp = self.wait_ready(name, "True", "Ready").await;
        let data = self.secret(name).await.expect("Secret");
        (akp, data)
    }

    /// Sets an annotation on an `ApiKeyPair`.
    pub async fn annotate(&self, name: &str, key: &str, value: &str) {
        let api: kube::Api<ApiKeyPair> = kube::Api::namespaced(self.client.clone(), &self.ns);
        let patch = json!({"metadata": {"annotations": {key: value}}});
        api.patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .expect("annotate");
    }

    /// Deletes an `ApiKeyPair` and waits until it is gone (finalizer released).
    pub async fn delete_and_wait_gone(&self, name: &str) {
        let api: kube::Api<ApiKeyPair> = kube::Api::namespaced(self.client.clone(), &self.ns);
        api.delete(name, &Default::default()).await.expect("delete");
        common::wait_for(
            &format!("{name} deleted"),
            std::time::Duration::from_secs(60),
            || {
                let api = api.clone();
                async move {
                    api.get_opt(name)
                        .await
                        .ok()
                        .and_then(|o| o.is_none().then_some(()))
                }
            },
        )
        .await;
    }

    /// Whether the sandbox's keys are exactly those the `ApiKeyPair`s' Secrets hold
    /// (no orphan), and each authenticates.
    pub async fn assert_no_orphans(&self, secrets: &[&str]) {
        let keys = self.sandbox.keys().await;
        let mut held = Vec::new();
        for name in secrets {
            if let Some(data) = self.secret(name).await {
                held.push((
                    data.get("apiKey").cloned().unwrap_or_default(),
                    data.get("apiSecret").cloned().unwrap_or_default(),
                ));
            }
        }
        for key in &keys {
            assert!(
                held.iter()
                    .any(|(k, s)| *k == key.api_key && *s == key.secret),
                "orphaned remote key {} ({:?}); Secrets hold {:?}",
                key.id,
                key.name,
                held.iter().map(|(k, _)| k).collect::<Vec<_>>()
            );
        }
        assert_eq!(keys.len(), held.len(), "one remote key per Secret");
    }
}
