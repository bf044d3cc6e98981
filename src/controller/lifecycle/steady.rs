//! A key in place: Secret repair, observation at the provider, Datonis updates,
//! rotation and renewal, the grace period, and restarting consumers.

use super::*;

impl Run<'_> {
    pub(super) async fn steady(
        &mut self,
        key: KeyRecord,
        replacement: Option<Replacement>,
        view: SecretView,
    ) -> Result<Duration, Error> {
        if self.status.update_refused_generation.is_some()
            && self.status.update_refused_generation != self.generation()
        {
            self.status.update_refused_generation = None;
        }
        self.retire_previous_if_due().await?;
        let view = match self.repair_secret(&key, replacement.as_ref(), view).await? {
            Repaired::Continue(view) => view,
            Repaired::StartedOver(requeue) => return Ok(requeue),
        };
        let replacement = replacement.filter(|_| self.status.pending_key.is_some());
        let edited = plan::secret_edited_since_check(self.timing.known_credentials, view.current());
        let due = self.timing.check_due || self.spec_changed || edited;
        if due && let Some(requeue) = self.observe(&key, replacement.as_ref(), &view).await? {
            return Ok(requeue);
        }
        self.record_renewal_time()?;
        // Before any rotation: the consumers must have been restarted for (or started with)
        // the key in use, so the next one is told apart from it.
        self.restart_consumers(&key).await?;
        let rotate = self
            .akp
            .annotations()
            .get(ROTATE_ANNOTATION)
            .map(String::as_str);
        let cause = plan::rotation_due(self.kind, self.akp, &self.status, rotate, self.timing.now);
        if let Some(cause) = cause.filter(|_| replacement.is_none()) {
            return self.rotate(cause, &key).await;
        }
        let was_verified = key.verification.usable();
        let waiting = match self.verification(replacement.as_ref(), &view).await {
            Err(
                Error::CredentialsLost { replacement: true } | Error::KeyGone { replacement: true },
            ) => {
                if let Some(replacement) = &replacement {
                    self.abandon_replacement(replacement).await?;
                }
                return Ok(SOON);
            }
            Err(Error::KeyGone { replacement: false }) => {
                let started = self.gone(&key, replacement.as_ref()).await?;
                return Ok(started.unwrap_or(SOON));
            }
            Err(Error::CredentialsLost { replacement: false }) => {
                let why = "the provider refuses the API secret in the Secret";
                let requeue =
                    self.start_over(CreatePurpose::SecretLost, &key, replacement.as_ref(), why);
                return requeue.await;
            }
            waiting => waiting?,
        };
        if !was_verified && self.status.verified == Some(true) {
            // Verified just now: check it with its own credentials, as every verified key.
            let verified = KeyRecord {
                verification: Verification::Verified,
                ..key.clone()
            };
            if let Some(requeue) = self.observe(&verified, None, &view).await? {
                return Ok(requeue);
            }
        }
        if self.status.pending_key.as_ref().map(|p| p.waiting_for)
            == Some(ReplacementStage::Promotion)
        {
            return Ok(SOON);
        }
        let was = conditions::find(&self.status.conditions, READY).map(|c| c.reason.clone());
        self.set_steady_conditions(waiting);
        self.warn_if_renewal_late(was.as_deref()).await;
        Ok(self.next_requeue())
    }

    /// A Warning event when a renewal becomes late (its code has not arrived halfway to
    /// the expiry); the condition and the metric say so too.
    pub(super) async fn warn_if_renewal_late(&self, was: Option<&str>) {
        let now = conditions::find(&self.status.conditions, READY)
            .map(|c| (c.reason.as_str(), c.message.clone()));
        if let Some((reason::RENEWAL_AWAITING_VERIFICATION, message)) = now
            && was != Some(reason::RENEWAL_AWAITING_VERIFICATION)
        {
            let why = reason::RENEWAL_AWAITING_VERIFICATION;
            self.event(EventType::Warning, why, "RotateKeyPair", message)
                .await;
        }
    }

    /// Records when the key in use is renewed (its expiry minus `renewBefore`).
    pub(super) fn record_renewal_time(&mut self) -> Result<(), Error> {
        let renew_before = plan::renew_before(self.akp).map_err(Error::InvalidSpec)?;
        let expire_at = self.status.expire_at.as_deref().and_then(parse_time);
        self.status.renewal_time = expire_at.map(|t| rfc3339(plan::renewal_time(t, renew_before)));
        Ok(())
    }

    /// Starts a rotation of the key in use (renewal, request or spec change).
    pub(super) async fn rotate(
        &mut self,
        cause: RotationCause,
        key: &KeyRecord,
    ) -> Result<Duration, Error> {
        // Two rotations within a grace period: the oldest key goes now.
        self.retire_previous_now().await?;
        let action = plan::rotation_action(self.kind, &cause, self.akp);
        if let RotationCause::Requested(value) = &cause {
            // Carried by the intent and recorded with the new key: once per distinct value.
            self.rotation_request = Some(value.clone());
        }
        let note = format!("rotating key pair {} ({cause:?}, {action:?})", key.key_id);
        self.event(EventType::Normal, "RotationStarted", "RotateKeyPair", note)
            .await;
        match action {
            RotationAction::Replace => self.create(CreatePurpose::Replace, Some(key)).await?,
            RotationAction::Rotate => self.create(CreatePurpose::Rotate, Some(key)).await?,
            RotationAction::Extend => self.extend(key).await?,
        }
        Ok(SOON)
    }

    /// Moves the expiry date of the key in use out by `validityDays` from today (Datonis).
    pub(super) async fn extend(&mut self, key: &KeyRecord) -> Result<(), Error> {
        let expire_at = self.status.expire_at.as_deref().and_then(parse_time);
        let expiry = plan::extended_expiry(self.timing.now, expire_at, self.akp.spec.validity_days);
        let update = UpdateKeyPair {
            expiry_date: Some(expiry),
            ..Default::default()
        };
        let updated = self.provider.update(&key.key_id, &update).await?;
        self.record_observation(&updated);
        self.record_renewal_time()?;
        self.write(false).await?;
        let note = format!(
            "extended key pair {} to {}",
            key.key_id,
            self.status.expire_at.as_deref().unwrap_or("?")
        );
        self.event(EventType::Normal, "Extended", "RotateKeyPair", note)
            .await;
        Ok(())
    }

    /// Keeps a replaced key valid for the grace period (recorded, so a restart still
    /// retires it exactly once).
    pub(super) fn retire_later(&mut self, key_id: &str) -> Result<(), Error> {
        let grace = plan::grace_period(self.akp).map_err(Error::InvalidSpec)?;
        self.status.previous_key = Some(Box::new(PreviousKey {
            key_id: key_id.to_owned(),
            delete_after: rfc3339(self.timing.now + grace),
        }));
        Ok(())
    }

    pub(super) async fn retire_previous_if_due(&mut self) -> Result<(), Error> {
        let due = self
            .status
            .previous_key
            .as_ref()
            .is_some_and(|p| plan::previous_due(p, self.timing.now));
        if due {
            self.retire_previous_now().await?;
        }
        Ok(())
    }

    /// Deletes the previous key (fenced; kept with `deletionPolicy: Orphan`) and forgets it.
    pub(super) async fn retire_previous_now(&mut self) -> Result<(), Error> {
        let Some(previous) = self.status.previous_key.clone() else {
            return Ok(());
        };
        let orphan = self.akp.spec.deletion_policy == DeletionPolicy::Orphan;
        if !orphan {
            self.write(true).await?;
            self.delete_remote(&previous.key_id).await?;
            failpoint!("previous-deleted");
        }
        self.status.previous_key = None;
        self.write(false).await?;
        let note = if orphan {
            format!(
                "the grace period of key pair {} is over; it is kept (deletionPolicy Orphan)",
                previous.key_id
            )
        } else {
            format!(
                "the grace period of key pair {} is over; it was deleted",
                previous.key_id
            )
        };
        self.event(
            EventType::Normal,
            "PreviousKeyRetired",
            "RotateKeyPair",
            note,
        )
        .await;
        Ok(())
    }

    /// Restarts the `rolloutRestartTargets` once the Secret serves a key they have not
    /// seen (not for the first key: nothing used another one before).
    pub(super) async fn restart_consumers(&mut self, key: &KeyRecord) -> Result<(), Error> {
        let serving = &key.key_id;
        let serving = self.status.key_id.as_ref().unwrap_or(serving).clone();
        match plan::restart_due(self.akp, &self.status, &serving) {
            RestartDue::No => return Ok(()),
            RestartDue::RecordOnly => {
                self.status.consumers_restarted_for_key_id = Some(serving);
                return Ok(());
            }
            RestartDue::Restart => {}
        }
        let at = rfc3339(self.timing.now);
        let mut failures = Vec::new();
        for target in &self.akp.spec.rollout_restart_targets {
            if let Err(e) = self.cluster.restart_workload(target, &at).await {
                failures.push(format!("{:?} {}: {e}", target.kind, target.name));
            }
        }
        if !failures.is_empty() {
            let message = format!("cannot restart {}", failures.join("; "));
            let desired = (status::FALSE, reason::RESTART_FAILED, message.clone());
            if conditions::find(&self.status.conditions, CONSUMERS_RESTARTED)
                .map(|c| c.reason.as_str())
                != Some(reason::RESTART_FAILED)
            {
                self.event(
                    EventType::Warning,
                    reason::RESTART_FAILED,
                    "RestartConsumers",
                    message,
                )
                .await;
            }
            self.set(CONSUMERS_RESTARTED, desired);
            return Ok(());
        }
        let message = format!("restarted for key pair {serving}");
        self.set(
            CONSUMERS_RESTARTED,
            (status::TRUE, reason::RESTARTED, message.clone()),
        );
        self.status.consumers_restarted_for_key_id = Some(serving);
        self.event(
            EventType::Normal,
            reason::RESTARTED,
            "RestartConsumers",
            message,
        )
        .await;
        Ok(())
    }

    pub(super) fn next_requeue(&self) -> Duration {
        let awaiting = KeyState::parse(&self.status, self.kind).is_ok_and(|state| match state {
            KeyState::Active { key, replacement } => {
                !key.verification.usable() || replacement.is_some()
            }
            _ => true,
        });
        if awaiting {
            return self.timing.verification_poll_interval;
        }
        // Sleep until the next thing is due: expiry, renewal, or the end of a grace period.
        let s = &self.status;
        let deadline = [
            s.expire_at.as_deref(),
            s.renewal_time.as_deref(),
            s.previous_key.as_ref().map(|p| p.delete_after.as_str()),
        ]
        .into_iter()
        .flatten()
        .filter_map(parse_time)
        .min();
        plan::next_check(self.timing.next_check_slot, self.timing.now, deadline)
    }

    /// Repairs the Secret of a key in place; returns the Secret as it now is.
    pub(super) async fn repair_secret(
        &mut self,
        key: &KeyRecord,
        replacement: Option<&Replacement>,
        view: SecretView,
    ) -> Result<Repaired, Error> {
        let mut view = view;
        if plan::secret_repair(self.kind, key, replacement, &view) != SecretRepair::Intact {
            // The cache may lag behind our own writes: decide on the API server's copy.
            view = self.secret_view(true).await?;
        }
        match plan::secret_repair(self.kind, key, replacement, &view) {
            SecretRepair::Intact => {
                self.backfill_layout();
                Ok(Repaired::Continue(view))
            }
            // The swap is in the Secret; the next reconcile finishes the promotion.
            SecretRepair::Promoted => Ok(Repaired::StartedOver(SOON)),
            SecretRepair::ReplacementLost => {
                if let Some(replacement) = replacement {
                    self.abandon_replacement(replacement).await?;
                }
                Ok(Repaired::Continue(view))
            }
            SecretRepair::RestoreFromProvider => self.restore_from_provider(key).await,
            SecretRepair::RestoreApiKey => {
                let secret = view.current().map(|c| c.api_secret.clone());
                let Some(api_secret) = secret else {
                    return Ok(Repaired::StartedOver(
                        self.start_over(CreatePurpose::SecretLost, key, replacement, "the Secret lost its API secret").await?,
                    ));
                };
                let current = Credentials {
                    api_key: key.api_key.clone(),
                    api_secret,
                };
                let pending = view.pending().cloned();
                let contents = SecretContents { current, pending };
                self.apply_secret(&contents).await?;
                // The restored pair is checked now, not at the next interval.
                self.timing.check_due = true;
                Ok(Repaired::Continue(owned_view(contents)))
            }
            SecretRepair::Lost => Ok(Repaired::StartedOver(
                self.start_over(CreatePurpose::SecretLost, key, replacement, "the Secret holding the API secret was deleted or emptied, and ThreatWinds shows a secret only once").await?,
            )),
        }
    }

    /// Statuses written before the provider and the Secret layout were recorded get them
    /// now, from a Secret that holds the key under the spec's layout: an edit of either is
    /// then handled (moved or refused) instead of taken for a lost or missing key.
    pub(super) fn backfill_layout(&mut self) {
        let s = &mut self.status;
        if s.provider_ref.is_none() {
            s.provider_ref = Some(self.akp.spec.provider_ref.clone());
        }
        if s.secret_name.is_none() || s.secret_keys.is_none() {
            s.secret_name = Some(secret::secret_name(self.akp));
            s.secret_keys = Some(secret::data_keys(self.akp));
        }
    }

    pub(super) async fn restore_from_provider(
        &mut self,
        key: &KeyRecord,
    ) -> Result<Repaired, Error> {
        let lookup = KeyLookup {
            key_id: key.key_id.clone(),
            api_key: key.api_key.clone(),
            api_secret: None,
        };
        let remote = match self.provider.get(&lookup).await {
            Ok(remote) => remote,
            Err(e @ ProviderError::NotFound { .. }) => {
                // One 404 is not proof: a complete list must agree.
                let listed = self.provider.list().await?;
                if !matches!(
                    plan::confirmation(&key.key_id, &listed, &e),
                    Confirmation::Missing
                ) {
                    return Err(e.into());
                }
                let why = "the key pair is gone at the provider";
                let requeue = self.start_over(CreatePurpose::RemoteKeyMissing, key, None, why);
                return Ok(Repaired::StartedOver(requeue.await?));
            }
            Err(e) => return Err(e.into()),
        };
        let Some(api_secret) = remote.api_secret.clone() else {
            let why = "the provider no longer returns the secret";
            let requeue = self.start_over(CreatePurpose::SecretLost, key, None, why);
            return Ok(Repaired::StartedOver(requeue.await?));
        };
        let contents = self.serve(&remote.api_key, api_secret).await?;
        let note = "restored the Secret from the provider".to_owned();
        self.event(EventType::Normal, "SecretRestored", "RestoreSecret", note)
            .await;
        Ok(Repaired::Continue(owned_view(contents)))
    }

    /// Puts the provider's copy of the serving credentials back into the Secret, keeping a
    /// pending replacement there.
    async fn restore_served(
        &mut self,
        remote: &RemoteKeyPair,
        view: &SecretView,
    ) -> Result<(), Error> {
        let Some(api_secret) = remote.api_secret.clone() else {
            return Ok(());
        };
        let current = Credentials {
            api_key: remote.api_key.clone(),
            api_secret,
        };
        let contents = SecretContents {
            current,
            pending: view.pending().cloned(),
        };
        self.apply_secret(&contents).await?;
        let note = "restored the Secret's credentials from the provider".to_owned();
        self.event(EventType::Normal, "SecretRestored", "RestoreSecret", note)
            .await;
        Ok(())
    }

    /// Observes the serving key at the provider; returns a requeue when that started over.
    pub(super) async fn observe(
        &mut self,
        key: &KeyRecord,
        replacement: Option<&Replacement>,
        view: &SecretView,
    ) -> Result<Option<Duration>, Error> {
        let lookup = plan::lookup_for(self.kind, key);
        let api_secret = match lookup {
            Lookup::WithOwnCredentials => view.current().map(|c| c.api_secret.clone()),
            _ => None,
        };
        let request = KeyLookup {
            key_id: key.key_id.clone(),
            api_key: key.api_key.clone(),
            api_secret,
        };
        let remote = match plan::observation(lookup, self.provider.get(&request).await) {
            Observation::Found(remote) => remote,
            Observation::Missing => return self.gone(key, replacement).await,
            Observation::Failed(e) => return Err(e.into()),
            Observation::Confirm(error) => {
                let listed = self.provider.list().await?;
                match plan::confirmation(&key.key_id, &listed, &error) {
                    Confirmation::Inconclusive => return Err(error.into()),
                    Confirmation::Unverified(remote) => *remote,
                    Confirmation::Missing => return self.gone(key, replacement).await,
                    Confirmation::SecretMismatch => match self.recheck_credentials(key).await? {
                        Some(remote) => remote,
                        None => {
                            let why = "the API secret in the Secret no longer matches the key pair";
                            let started =
                                self.start_over(CreatePurpose::SecretLost, key, replacement, why);
                            return Ok(Some(started.await?));
                        }
                    },
                }
            }
        };
        self.checked = true;
        if lookup == Lookup::WithOwnCredentials {
            // The provider accepted the Secret's secret itself.
            self.known_credentials = view.current().map(Credentials::fingerprint);
        }
        if plan::provider_secret_differs(&remote, view.current()) {
            self.restore_served(&remote, view).await?;
        }
        self.record_observation(&remote);
        self.update_datonis(key, &remote).await?;
        Ok(None)
    }

    /// A second check of a verified key whose credentials were refused once, with the
    /// Secret read fresh (the cache may have lagged): `None` if they are refused again.
    pub(super) async fn recheck_credentials(
        &self,
        key: &KeyRecord,
    ) -> Result<Option<RemoteKeyPair>, Error> {
        let view = self.secret_view(true).await?;
        let request = KeyLookup {
            key_id: key.key_id.clone(),
            api_key: key.api_key.clone(),
            api_secret: view.current().map(|c| c.api_secret.clone()),
        };
        match self.provider.get(&request).await {
            Ok(remote) => Ok(Some(remote)),
            Err(ProviderError::Unauthorized { .. }) if request.api_secret.is_some() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The key is gone at the provider: an expired key stays expired; any other is recreated.
    pub(super) async fn gone(
        &mut self,
        key: &KeyRecord,
        replacement: Option<&Replacement>,
    ) -> Result<Option<Duration>, Error> {
        let why = if self.is_expired() {
            // Providers may drop expired keys: a new one replaces it.
            format!("expired key pair {} is gone at the provider", key.key_id)
        } else {
            format!("key pair {} was deleted at the provider", key.key_id)
        };
        let started = self.start_over(CreatePurpose::RemoteKeyMissing, key, replacement, &why);
        Ok(Some(started.await?))
    }

    pub(super) fn record_observation(&mut self, remote: &RemoteKeyPair) {
        let s = &mut self.status;
        if remote.expire_at.is_some() {
            s.expire_at = remote.expire_at.map(rfc3339);
        }
        if remote.verified == Some(true) || s.verified != Some(true) {
            s.verified = remote.verified.or(s.verified);
        }
        if remote.enabled.is_some() {
            s.enabled = remote.enabled;
        }
        if remote.role_key.is_some() {
            s.role_key = remote.role_key.clone();
        }
        if !remote.roles.is_empty() || !remote.groups.is_empty() {
            s.roles = remote.roles.clone();
            s.groups = remote.groups.clone();
        }
        if remote.name.is_some() {
            s.key_name = remote.name.clone();
        }
    }

    /// Applies a Datonis update when the spec moved; a refusal is recorded for this
    /// generation and shown in `Ready` until the spec changes.
    pub(super) async fn update_datonis(
        &mut self,
        key: &KeyRecord,
        remote: &RemoteKeyPair,
    ) -> Result<(), Error> {
        let Some(update) = plan::datonis_update(self.akp, remote, &self.status) else {
            return Ok(());
        };
        match self.provider.update(&key.key_id, &update).await {
            Ok(updated) => {
                self.record_observation(&updated);
                self.status.validity_days = Some(self.akp.spec.validity_days);
                let note = format!("updated key pair {} to match the spec", key.key_id);
                self.event(EventType::Normal, "Updated", "UpdateKeyPair", note)
                    .await;
                Ok(())
            }
            // Only a definite refusal waits for the spec to change. After an unknown
            // outcome (an unreadable answer too) the check stays due: the retry reads the
            // key afresh and sends what is still missing.
            Err(e) if e.is_definite_refusal() => {
                self.status.update_refused_generation = self.generation();
                let message = format!("the provider refused the update; change the spec: {e}");
                let why = crate::controller::provider_reason(&e);
                self.set(READY, (status::FALSE, why, message.clone()));
                self.event(EventType::Warning, why, "UpdateKeyPair", message)
                    .await;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    pub(super) fn is_expired(&self) -> bool {
        let expire_at = self.status.expire_at.as_deref().and_then(parse_time);
        expire_at.is_some_and(|t| t <= self.timing.now)
    }

    pub(super) fn set_steady_conditions(&mut self, waiting: Option<&'static str>) {
        let Ok(KeyState::Active { key, replacement }) = KeyState::parse(&self.status, self.kind)
        else {
            return;
        };
        let secret_name = self.secret_name();
        let facts = SteadyFacts {
            kind: self.kind,
            key: &key,
            replacement: replacement.as_ref(),
            expired: self.is_expired(),
            disabled: self.status.enabled == Some(false),
            waiting,
            secret_name: &secret_name,
            expire_at: self.status.expire_at.as_deref(),
            renewal_overdue: plan::renewal_overdue(
                self.status.renewal_time.as_deref().and_then(parse_time),
                self.status.expire_at.as_deref().and_then(parse_time),
                self.timing.now,
            ),
        };
        let (ready, verified) = plan::steady_conditions(&facts);
        if let Some(verified) = verified {
            self.set(VERIFIED, verified);
        }
        let refused = self.status.update_refused_generation.is_some()
            && self.status.update_refused_generation == self.generation();
        if !refused {
            self.set(READY, ready);
        }
    }
}
