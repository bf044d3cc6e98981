//! Deleting (or disabling) every remote key a resource owns.

use super::*;

impl Run<'_> {
    /// Deletes (or, with `disable`, disables) every remote key this resource owns (fenced,
    /// under the create lock so an attempt in flight elsewhere is never taken for this one's).
    pub async fn cleanup(mut self, disable: bool) -> Result<Outcome, Error> {
        match self.cleanup_steps(disable).await {
            Ok(()) => Ok(self.outcome(Duration::ZERO)),
            Err(error) => self.fail(error, "DeleteKeyPair").await,
        }
    }

    pub(super) async fn cleanup_steps(&mut self, disable: bool) -> Result<(), Error> {
        let state = KeyState::parse(&self.status, self.kind)?;
        let _serialized = match &state {
            KeyState::Creating { intent, .. } => {
                let fingerprint = create::attempt_fingerprint(self.akp, intent);
                self.provider.serialize_creates(&fingerprint).await
            }
            _ => None,
        };
        self.write(true).await?;
        let mut doomed: Vec<String> = owned_key_ids(&self.status)
            .into_iter()
            .map(str::to_owned)
            .collect();
        if let KeyState::Creating { intent, .. } = &state {
            let candidates = self.attempt_candidates(intent).await?;
            if self.kind == ProviderKind::Datonis && candidates.len() > 1 {
                // Indistinguishable keys: deleting any could take another resource's.
                return Err(Error::CreateAmbiguous(format!(
                    "{} key pairs match the interrupted create attempt {}; delete the right one at the provider, then set the {} annotation",
                    candidates.len(),
                    intent.attempt,
                    crate::controller::FORCE_ORPHAN_ANNOTATION
                )));
            }
            doomed.extend(candidates.into_iter().map(|k| k.key_id));
        }
        let disable = disable && self.kind == ProviderKind::Datonis;
        for key_id in &doomed {
            if disable {
                self.disable_remote(key_id).await?;
            } else {
                self.delete_remote(key_id).await?;
            }
        }
        if !disable {
            // Keys of earlier attempts that committed late (after the owned ones: those do
            // not depend on a list).
            self.sweep_strays().await?;
        }
        failpoint!("remote-deleted");
        if !doomed.is_empty() {
            let done = if disable { "disabled" } else { "deleted" };
            let note = format!(
                "{done} key pair(s) {} at {}",
                doomed.join(", "),
                self.provider.description()
            );
            self.event(EventType::Normal, "Deleted", "DeleteKeyPair", note)
                .await;
        }
        Ok(())
    }

    /// Disables a remote key (`deletionPolicy: Disable`); one that is gone counts as done.
    pub(super) async fn disable_remote(&self, key_id: &str) -> Result<(), Error> {
        let update = UpdateKeyPair {
            enabled: Some(false),
            ..Default::default()
        };
        match self.provider.update(key_id, &update).await {
            Ok(_) | Err(ProviderError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
