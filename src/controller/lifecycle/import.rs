//! Adopting a key pair made by hand (`spec.import`).

use super::*;

impl Run<'_> {
    /// Adopts a key pair made by hand: the Secret must hold its credentials and the
    /// provider must confirm them; then the key is recorded and the Secret taken over.
    pub(super) async fn import(&mut self, key_id: &str) -> Result<(), Error> {
        let name = self.secret_name();
        let found = self.cluster.read_secret(&name, true).await?;
        let keys = secret::data_keys(self.akp);
        let held = found
            .as_ref()
            .and_then(|s| secret::credentials_in(s, &keys));
        let Some(credentials) = held else {
            return Err(Error::ImportRejected(format!(
                "Secret {name} does not hold the credentials of key pair {key_id} under {} and {}",
                keys.api_key, keys.api_secret
            )));
        };
        let remote = self.confirm_import(key_id, &credentials).await?;
        plan::import_matches(key_id, &credentials, &remote).map_err(Error::ImportRejected)?;
        self.apply_secret(&SecretContents {
            current: credentials,
            pending: None,
        })
        .await?;
        self.record_key(&remote, None);
        self.write(true).await?;
        let note = format!("adopted key pair {key_id} and Secret {name}");
        self.event(EventType::Normal, "Imported", "ImportKeyPair", note)
            .await;
        Ok(())
    }

    /// The provider's view of an imported key: ThreatWinds checks the credentials (a
    /// verified key) or finds the key in the session's list (one awaiting its code);
    /// Datonis reads it by id, secret included.
    pub(super) async fn confirm_import(
        &self,
        key_id: &str,
        credentials: &Credentials,
    ) -> Result<RemoteKeyPair, Error> {
        let lookup = |api_secret| KeyLookup {
            key_id: key_id.to_owned(),
            api_key: credentials.api_key.clone(),
            api_secret,
        };
        let rejected = |e: ProviderError| {
            Error::ImportRejected(format!(
                "the provider does not confirm key pair {key_id}: {e}"
            ))
        };
        if self.kind == ProviderKind::Datonis {
            return self.provider.get(&lookup(None)).await.map_err(rejected);
        }
        let listed = self.provider.get(&lookup(None)).await.map_err(rejected)?;
        if listed.verified != Some(true) {
            return Ok(listed);
        }
        let secret = Some(credentials.api_secret.clone());
        self.provider.get(&lookup(secret)).await.map_err(rejected)
    }
}
