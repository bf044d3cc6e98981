//! Creating a key pair crash-safely (intent, create, Secret, status) and recovering an
//! interrupted attempt.

use super::*;

impl Run<'_> {
    /// Records the intent of a create attempt (fenced), then creates, writes the Secret,
    /// and records the key. `previous` is retired first when the purpose says so.
    pub(super) async fn create(
        &mut self,
        purpose: CreatePurpose,
        previous: Option<&KeyRecord>,
    ) -> Result<(), Error> {
        let fingerprint =
            plan::create_fingerprint(self.akp, None, None, self.timing.now.date_naive());
        let _serialized = self.provider.serialize_creates(&fingerprint).await;
        // A staged replacement needs the current credentials to keep serving.
        let serving = if purpose == CreatePurpose::Replace {
            let view = self.secret_view(true).await?;
            Some(view.current().cloned().ok_or(Error::Stale)?)
        } else {
            None
        };
        let intent = self.record_intent(purpose);
        self.write(true).await?;
        failpoint!("intent-written");
        if let Some(previous) = previous.filter(|_| retires_previous(purpose)) {
            self.delete_remote(&previous.key_id).await?;
            failpoint!("remote-deleted");
        }
        let request = CreateKeyPair {
            name: (intent.remote_name.clone()).unwrap_or_else(|| plan::base_key_name(self.akp)),
            validity_days: self.akp.spec.validity_days,
            role_key: self.akp.spec.datonis.as_ref().map(|d| d.role_key.clone()),
        };
        let created = match self.provider.create(&request).await {
            Ok(created) => created,
            Err(e) => {
                if plan::create_error_clears_intent(&e) {
                    self.forget_intent(purpose);
                }
                return Err(e.into());
            }
        };
        failpoint!("remote-created");
        self.commit_created(&created, serving, purpose, previous)
            .await
    }

    /// Secret first, then status: the new key is recorded only once its secret is safe.
    pub(super) async fn commit_created(
        &mut self,
        created: &CreatedKeyPair,
        serving: Option<Credentials>,
        purpose: CreatePurpose,
        previous: Option<&KeyRecord>,
    ) -> Result<(), Error> {
        let new = Credentials {
            api_key: created.key.api_key.clone(),
            api_secret: created.api_secret.clone(),
        };
        let staged = serving.is_some();
        let contents = match serving {
            Some(current) => SecretContents {
                current,
                pending: Some(new),
            },
            None => SecretContents {
                current: new,
                pending: None,
            },
        };
        if purpose == CreatePurpose::Initial {
            self.claim_secret(&contents, &created.key.key_id).await?;
        } else {
            self.apply_secret(&contents).await?;
        }
        failpoint!("secret-written");
        let code_id = created.verification_code_id.clone();
        if staged {
            self.record_replacement(&created.key, code_id);
        } else {
            self.record_key(&created.key, code_id);
        }
        if let Some(previous) = previous.filter(|_| purpose == CreatePurpose::Rotate) {
            self.retire_later(&previous.key_id)?;
        }
        self.complete_intent();
        // The conditions and the renewal time describe the new key in the same write.
        self.record_renewal_time()?;
        self.set_steady_conditions(None);
        self.write(false).await?;
        failpoint!("status-written");
        let name = created.key.name.as_deref().unwrap_or(&created.key.api_key);
        let note = format!(
            "created key pair {name} ({}) at {} ({purpose:?})",
            created.key.key_id,
            self.provider.description()
        );
        self.event(EventType::Normal, "Created", "CreateKeyPair", note)
            .await;
        Ok(())
    }

    pub(super) fn record_intent(&mut self, purpose: CreatePurpose) -> Intent {
        let attempt = self.status.create_attempts.unwrap_or(0).saturating_add(1);
        let remote_name = (self.kind == ProviderKind::Threatwinds).then(|| {
            let uid = self.akp.uid().unwrap_or_default();
            plan::remote_name(&plan::base_key_name(self.akp), &uid, attempt)
        });
        let started_at = self.timing.now;
        self.status.create_attempts = Some(attempt);
        self.status.pending_create = Some(Box::new(PendingCreate {
            attempt,
            remote_name: remote_name.clone(),
            started_at: rfc3339(started_at),
            purpose,
            rotation_request: self.rotation_request.take(),
            role_key: self.akp.spec.datonis.as_ref().map(|d| d.role_key.clone()),
            validity_days: Some(self.akp.spec.validity_days),
        }));
        self.status.provider_ref = Some(self.akp.spec.provider_ref.clone());
        if purpose != CreatePurpose::Replace {
            let message = format!("creating the key pair (attempt {attempt})");
            let why = match purpose {
                CreatePurpose::SecretLost => reason::SECRET_LOST,
                CreatePurpose::RemoteKeyMissing => reason::REMOTE_KEY_MISSING,
                _ => reason::PROGRESSING,
            };
            self.set(READY, (status::FALSE, why, message));
        }
        let pending = self.status.pending_create.as_ref();
        Intent {
            attempt,
            remote_name,
            started_at,
            purpose,
            role_key: pending.and_then(|p| p.role_key.clone()),
            validity_days: pending.and_then(|p| p.validity_days),
        }
    }

    pub(super) fn record_key(&mut self, key: &RemoteKeyPair, verification_code_id: Option<String>) {
        let s = &mut self.status;
        s.key_id = Some(key.key_id.clone());
        s.api_key = Some(key.api_key.clone());
        s.key_name = key.name.clone();
        s.expire_at = key.expire_at.map(rfc3339);
        s.verified = key.verified;
        s.enabled = key.enabled;
        s.role_key = key.role_key.clone();
        s.validity_days = Some(self.akp.spec.validity_days);
        s.secret_name = Some(secret::secret_name(self.akp));
        s.secret_keys = Some(secret::data_keys(self.akp));
        s.provider_ref = Some(self.akp.spec.provider_ref.clone());
        // A new key's code id, or none: an older key's id must never be submitted for it.
        s.verification_code_id = verification_code_id;
        s.submitted_code_hash = None;
        s.update_refused_generation = None;
    }

    pub(super) fn record_replacement(
        &mut self,
        key: &RemoteKeyPair,
        verification_code_id: Option<String>,
    ) {
        self.status.pending_key = Some(Box::new(PendingKey {
            key_id: key.key_id.clone(),
            api_key: Some(key.api_key.clone()),
            key_name: key.name.clone(),
            expire_at: key.expire_at.map(rfc3339),
            verification_code_id,
            waiting_for: ReplacementStage::VerificationCode,
        }));
        self.status.submitted_code_hash = None;
    }

    /// The remote keys an interrupted attempt may have created (a fresh list).
    pub(super) async fn attempt_candidates(
        &self,
        intent: &Intent,
    ) -> Result<Vec<RemoteKeyPair>, Error> {
        let remote = self.provider.list().await?;
        let mut referenced = self.cluster.keys_referenced_elsewhere().await?;
        // This resource's own keys (serving, replacement, previous) are not the attempt's.
        referenced.extend(owned_key_ids(&self.status).into_iter().map(str::to_owned));
        // What the attempt asked for (a spec edited since does not matter).
        let fingerprint = attempt_fingerprint(self.akp, intent);
        let is_referenced = |id: &str| referenced.contains(id);
        let found = plan::attempt_candidates(
            self.kind,
            intent,
            fingerprint.role.as_deref(),
            Some(fingerprint.expiry),
            &remote,
            &is_referenced,
        );
        Ok(found.into_iter().cloned().collect())
    }

    pub(super) async fn recover(
        &mut self,
        intent: Intent,
        previous: Option<KeyRecord>,
    ) -> Result<(), Error> {
        let _serialized = self
            .provider
            .serialize_creates(&attempt_fingerprint(self.akp, &intent))
            .await;
        self.write(true).await?;
        if let Some(previous) = previous
            .as_ref()
            .filter(|_| retires_previous(intent.purpose))
        {
            self.delete_remote(&previous.key_id).await?;
        }
        let candidates = self.attempt_candidates(&intent).await?;
        let view = self.secret_view(true).await?;
        let slot = if intent.staged() {
            view.pending()
        } else {
            view.current()
        };
        let refs: Vec<&RemoteKeyPair> = candidates.iter().collect();
        let decision = plan::recover(self.kind, &refs, slot.map(|c| c.api_key.as_str()));
        info!(
            attempt = intent.attempt,
            ?decision,
            "recovering an interrupted create"
        );
        match decision {
            Recovery::Adopt(key) => {
                // Keys of this attempt other than the adopted one never reached the Secret.
                if self.kind == ProviderKind::Threatwinds {
                    for extra in candidates.iter().filter(|k| k.key_id != key.key_id) {
                        self.delete_remote(&extra.key_id).await?;
                    }
                }
                self.adopt(&key, intent.staged());
            }
            Recovery::AdoptWithProviderSecret(key) => {
                self.adopt_with_provider_secret(&key).await?;
            }
            Recovery::DeleteAndRetry(ids) => {
                for id in &ids {
                    self.delete_remote(id).await?;
                }
                failpoint!("remote-deleted");
                let note = format!(
                    "deleted {} key pair(s) of interrupted attempt {} whose secret never reached the Secret; creating anew",
                    ids.len(),
                    intent.attempt
                );
                self.interrupted(note).await;
                return self.give_up_attempt(&intent).await;
            }
            Recovery::Retry => return self.give_up_attempt(&intent).await,
        }
        if let Some(previous) = previous.filter(|_| intent.purpose == CreatePurpose::Rotate) {
            self.retire_later(&previous.key_id)?;
        }
        self.write(true).await
    }

    /// An attempt left nothing usable: forget it and try again with growing back-off (the
    /// error keeps the reconcile from counting as progress).
    pub(super) async fn give_up_attempt(&mut self, intent: &Intent) -> Result<(), Error> {
        self.forget_intent(intent.purpose);
        self.write(true).await?;
        self.sweep_strays().await?;
        Err(Error::Retrying(format!(
            "create attempt {} left no usable key pair; trying again",
            intent.attempt
        )))
    }

    /// Deletes ThreatWinds keys of earlier attempts of this resource that committed after
    /// their recovery gave up on them (runs after a fenced write, from a fresh list).
    pub(super) async fn sweep_strays(&self) -> Result<(), Error> {
        if self.kind != ProviderKind::Threatwinds {
            return Ok(());
        }
        let listed = self.provider.list().await?;
        let uid = self.akp.uid().unwrap_or_default();
        let owned = owned_key_ids(&self.status);
        for stray in plan::stray_attempt_keys(&uid, &listed, &owned) {
            self.delete_remote(&stray.key_id).await?;
            let note = format!(
                "deleted key pair {} of an earlier interrupted attempt",
                stray.key_id
            );
            self.interrupted(note).await;
        }
        Ok(())
    }

    /// A Warning that keys of an interrupted create attempt were deleted.
    async fn interrupted(&self, note: String) {
        let action = "RecoverCreate";
        self.event(EventType::Warning, "CreateInterrupted", action, note)
            .await;
    }

    /// Clears the intent. An attempt that retired the previous key also forgets that key:
    /// it is deleted, so the next reconcile creates anew instead of serving it.
    pub(super) fn forget_intent(&mut self, purpose: CreatePurpose) {
        self.status.pending_create = None;
        if retires_previous(purpose) {
            let s = &mut self.status;
            s.key_id = None;
            s.api_key = None;
            s.verified = None;
            s.verification_code_id = None;
            s.submitted_code_hash = None;
        }
    }

    /// Adopts an attempt's key whose credentials reached the Secret. Its code id was in
    /// the lost status write: the verification protocol asks for a new code.
    pub(super) fn adopt(&mut self, key: &RemoteKeyPair, staged: bool) {
        if staged {
            self.record_replacement(key, None);
        } else {
            self.record_key(key, None);
        }
        self.complete_intent();
        self.set_steady_conditions(None);
    }

    /// Clears an intent whose key is recorded; a rotation it carried out counts as done
    /// only now (a rotation whose attempt is given up is started again).
    pub(super) fn complete_intent(&mut self) {
        if let Some(pending) = self.status.pending_create.take()
            && pending.rotation_request.is_some()
        {
            self.status.rotation_request = pending.rotation_request;
        }
    }

    pub(super) async fn adopt_with_provider_secret(
        &mut self,
        key: &RemoteKeyPair,
    ) -> Result<(), Error> {
        let Some(api_secret) = key.api_secret.clone() else {
            return Err(Error::CreateAmbiguous(format!(
                "key pair {} of an interrupted create has no readable secret; delete it at the provider or set the {} annotation",
                key.key_id,
                crate::controller::FORCE_ORPHAN_ANNOTATION
            )));
        };
        self.serve(&key.api_key, api_secret).await?;
        self.adopt(key, false);
        Ok(())
    }

    /// The Secret serves the verified replacement: retire the old key, record the new.
    pub(super) async fn finish_promotion(
        &mut self,
        old: KeyRecord,
        new: KeyRecord,
    ) -> Result<(), Error> {
        let Some(pending) = self.status.pending_key.clone() else {
            return Ok(());
        };
        let view = self.secret_view(true).await?;
        let holds =
            |c: Option<&Credentials>| c.map(|c| c.api_key.as_str()) == Some(new.api_key.as_str());
        if !holds(view.current()) {
            match (pending.waiting_for, view.pending().cloned()) {
                // Verified, but the swap did not reach the Secret (or was reverted): redo it.
                (ReplacementStage::Promotion, Some(creds)) if holds(Some(&creds)) => {
                    let contents = SecretContents {
                        current: creds,
                        pending: None,
                    };
                    self.apply_secret(&contents).await?;
                }
                // The cache lagged: the replacement is not in the Secret yet.
                (ReplacementStage::VerificationCode, _) => return Ok(()),
                // The replacement's credentials are gone: the old key keeps serving.
                _ => {
                    let replacement = Replacement {
                        key: new,
                        stage: pending.waiting_for,
                    };
                    return self.abandon_replacement(&replacement).await;
                }
            }
        }
        self.retire_later(&old.key_id)?;
        let s = &mut self.status;
        s.key_id = Some(pending.key_id.clone());
        s.api_key = pending.api_key.clone();
        s.key_name = pending.key_name.clone();
        s.expire_at = pending.expire_at.clone();
        s.verified = Some(true);
        s.verification_code_id = pending.verification_code_id.clone();
        s.validity_days = Some(self.akp.spec.validity_days);
        s.pending_key = None;
        s.submitted_code_hash = None;
        self.set_steady_conditions(None);
        self.write(false).await?;
        let note = format!(
            "key pair {} now serves; the previous key pair {} stays valid for the grace period",
            new.key_id, old.key_id
        );
        self.event(EventType::Normal, "Replaced", "ReplaceKeyPair", note)
            .await;
        Ok(())
    }

    /// Deletes a waiting replacement (fenced) and forgets it.
    pub(super) async fn abandon_replacement(
        &mut self,
        replacement: &Replacement,
    ) -> Result<(), Error> {
        self.write(true).await?;
        self.delete_remote(&replacement.key.key_id).await?;
        self.status.pending_key = None;
        self.write(false).await?;
        let note = format!(
            "deleted replacement key pair {}: its credentials are no longer in the Secret",
            replacement.key.key_id
        );
        self.event(
            EventType::Warning,
            "ReplacementAbandoned",
            "ReplaceKeyPair",
            note,
        )
        .await;
        Ok(())
    }

    /// The serving key cannot be used any more (`SecretLost`) or is gone
    /// (`RemoteKeyMissing`): drop a waiting replacement, retire the key, create anew.
    pub(super) async fn start_over(
        &mut self,
        purpose: CreatePurpose,
        key: &KeyRecord,
        replacement: Option<&Replacement>,
        why: &str,
    ) -> Result<Duration, Error> {
        let reason_ = match purpose {
            CreatePurpose::SecretLost => reason::SECRET_LOST,
            _ => reason::REMOTE_KEY_MISSING,
        };
        let note = format!("{why}; replacing key pair {}", key.key_id);
        self.event(EventType::Warning, reason_, "ReplaceKeyPair", note)
            .await;
        if let Some(replacement) = replacement {
            self.abandon_replacement(replacement).await?;
        }
        self.create(purpose, Some(key)).await?;
        Ok(SOON)
    }
}

/// The fingerprint an attempt asked for (a spec edited since does not matter).
pub(super) fn attempt_fingerprint(akp: &ApiKeyPair, intent: &Intent) -> plan::CreateFingerprint {
    let started = intent.started_at.date_naive();
    plan::create_fingerprint(
        akp,
        intent.role_key.as_deref(),
        intent.validity_days,
        started,
    )
}
