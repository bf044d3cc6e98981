//! The verification protocol (ThreatWinds): new codes, submitting each code once,
//! and promoting a verified replacement.

use super::*;

impl Run<'_> {
    /// Runs the verification protocol for whichever key waits for its code (the
    /// replacement first). Returns the reason the serving key waits with, if it does.
    pub(super) async fn verification(
        &mut self,
        replacement: Option<&Replacement>,
        view: &SecretView,
    ) -> Result<Option<&'static str>, Error> {
        let for_replacement = replacement.is_some_and(|r| !r.key.verification.usable());
        let serving_waits =
            self.status.verified != Some(true) && self.kind == ProviderKind::Threatwinds;
        if !for_replacement && !serving_waits {
            return Ok(None);
        }
        let creds = if for_replacement {
            view.pending()
        } else {
            view.current()
        };
        let Some(creds) = creds.cloned() else {
            return Ok(Some(reason::AWAITING_VERIFICATION_CODE));
        };
        let mut step = self.verification_step(for_replacement).await?;
        if let VerificationStep::RequestNewCode { requested } = step.0 {
            self.request_new_code(requested, for_replacement, &creds)
                .await?;
            // The code may be there already: look with the new code id right away.
            step = self.verification_step(for_replacement).await?;
        }
        let waiting = self
            .run_verification_step(step, for_replacement, &creds, view)
            .await?;
        Ok(waiting.filter(|_| !for_replacement))
    }

    /// The key that waits for its code: the replacement's, or the serving one.
    fn waiting_key_id(&self, for_replacement: bool) -> Option<String> {
        if for_replacement {
            self.status.pending_key.as_ref().map(|p| p.key_id.clone())
        } else {
            self.status.key_id.clone()
        }
    }

    pub(super) fn code_id(&self, for_replacement: bool) -> Option<String> {
        if for_replacement {
            self.status
                .pending_key
                .as_ref()?
                .verification_code_id
                .clone()
        } else {
            self.status.verification_code_id.clone()
        }
    }

    /// The next verification step, with the code when there is one to submit.
    pub(super) async fn verification_step(
        &self,
        for_replacement: bool,
    ) -> Result<(VerificationStep, Option<SecretString>), Error> {
        let annotation = self.akp.annotations().get(REQUEST_NEW_CODE_ANNOTATION);
        let reference = self
            .akp
            .spec
            .verification
            .as_ref()
            .map(|v| &v.code_secret_ref);
        let code_id = self.code_id(for_replacement);
        let start = plan::verification_start(
            code_id.as_deref(),
            annotation.map(String::as_str),
            self.status.new_code_request.as_deref(),
            reference.is_some(),
        );
        let (code_id, reference) = match (start, reference) {
            (Err(step), _) => return Ok((step, None)),
            (Ok(code_id), Some(reference)) => (code_id, reference),
            (Ok(_), None) => return Ok((VerificationStep::NoCodeSource, None)),
        };
        let code = self.cluster.read_code(reference).await?;
        let step = plan::verification_submit(
            code_id,
            code.as_ref().map(|c| c.expose_secret()),
            self.status.submitted_code_hash.as_deref(),
        );
        Ok((step, code))
    }

    pub(super) async fn run_verification_step(
        &mut self,
        (step, code): (VerificationStep, Option<SecretString>),
        for_replacement: bool,
        creds: &Credentials,
        view: &SecretView,
    ) -> Result<Option<&'static str>, Error> {
        match (step, code) {
            (VerificationStep::RequestNewCode { requested }, _) => {
                self.request_new_code(requested, for_replacement, creds)
                    .await?;
                Ok(Some(reason::AWAITING_VERIFICATION_CODE))
            }
            (
                VerificationStep::Submit {
                    code_id,
                    fingerprint,
                },
                Some(code),
            ) => {
                let result = self.provider.verify(&code_id, &code).await;
                self.submitted(
                    plan::verify_outcome(result),
                    fingerprint,
                    for_replacement,
                    view,
                )
                .await
            }
            (VerificationStep::AlreadyRejected, _) => Ok(Some(reason::VERIFICATION_CODE_REJECTED)),
            (VerificationStep::CodeMissing | VerificationStep::Submit { .. }, _) => {
                Ok(Some(reason::VERIFICATION_CODE_MISSING))
            }
            (VerificationStep::NoCodeSource, _) => Ok(Some(reason::AWAITING_VERIFICATION_CODE)),
        }
    }

    pub(super) async fn request_new_code(
        &mut self,
        requested: bool,
        for_replacement: bool,
        creds: &Credentials,
    ) -> Result<(), Error> {
        // A new code voids the last one at the provider: a reconcile working from a stale
        // object (which has not seen the last request recorded) must not ask again, or the
        // code id in the status dies. The fence refuses it before anything is sent.
        self.write(true).await?;
        let new_id = match self
            .provider
            .request_new_code(&creds.api_key, &creds.api_secret)
            .await
        {
            Ok(id) => id,
            Err(error) => return Err(self.new_code_failed(error, for_replacement, creds).await),
        };
        if requested {
            let annotation = self.akp.annotations().get(REQUEST_NEW_CODE_ANNOTATION);
            self.status.new_code_request = annotation.cloned();
        }
        match (for_replacement, self.status.pending_key.as_mut()) {
            (true, Some(p)) => p.verification_code_id = Some(new_id),
            _ => self.status.verification_code_id = Some(new_id),
        }
        self.status.submitted_code_hash = None;
        let note = if requested {
            "asked the provider to email a new verification code"
        } else {
            "the verification code id was lost in an interrupted create; asked the provider to email a new code"
        };
        let note = note.to_owned();
        self.event(
            EventType::Normal,
            "NewCodeRequested",
            "RequestNewCode",
            note,
        )
        .await;
        Ok(())
    }

    /// A new-code request failed. A 401 for a key the session still lists, with the same
    /// credentials in a fresh read of the Secret, means someone overwrote the secret:
    /// [`Error::CredentialsLost`], which replaces the key (ThreatWinds shows a secret only
    /// once). Anything else is the error itself.
    async fn new_code_failed(
        &self,
        error: ProviderError,
        for_replacement: bool,
        creds: &Credentials,
    ) -> Error {
        let key_id = self.waiting_key_id(for_replacement);
        let (Some(key_id), ProviderError::Unauthorized { .. }) = (key_id, &error) else {
            return error.into();
        };
        let listed = match self.provider.list().await {
            Ok(listed) => listed,
            Err(e) => return e.into(),
        };
        if !plan::new_code_refused_credentials(&key_id, &listed, &error) {
            return error.into();
        }
        let fresh = match self.secret_view(true).await {
            Ok(view) => view,
            Err(e) => return e,
        };
        let held = if for_replacement {
            fresh.pending()
        } else {
            fresh.current()
        };
        if held != Some(creds) {
            // The cache lagged behind the Secret: try again with what it holds now.
            return Error::Stale;
        }
        Error::CredentialsLost {
            replacement: for_replacement,
        }
    }

    pub(super) async fn submitted(
        &mut self,
        outcome: VerifyOutcome,
        fingerprint: String,
        for_replacement: bool,
        view: &SecretView,
    ) -> Result<Option<&'static str>, Error> {
        // An earlier submission may have verified the key and lost its answer (the code is
        // then used up and refused), or the key may be gone: the session's list tells.
        let outcome = match outcome {
            VerifyOutcome::Verified => VerifyOutcome::Verified,
            other => match self.listed_after_refusal(for_replacement).await {
                Some(AfterRefusedCode::Verified) => {
                    debug!(?other, "the key was verified by an earlier submission");
                    VerifyOutcome::Verified
                }
                Some(AfterRefusedCode::Missing) if matches!(other, VerifyOutcome::Rejected(_)) => {
                    return Err(Error::KeyGone {
                        replacement: for_replacement,
                    });
                }
                _ => other,
            },
        };
        match outcome {
            VerifyOutcome::Verified => {
                let note = "the key pair was verified with the emailed code".to_owned();
                self.event(EventType::Normal, reason::VERIFIED, "VerifyKeyPair", note)
                    .await;
                if for_replacement {
                    self.promote(view).await?;
                } else {
                    self.status.verified = Some(true);
                }
                Ok(None)
            }
            VerifyOutcome::Rejected(e) => {
                self.status.submitted_code_hash = Some(fingerprint);
                let message = format!("the provider rejected the verification code: {e}");
                let why = reason::VERIFICATION_CODE_REJECTED;
                self.set(VERIFIED, (status::FALSE, why, message.clone()));
                self.event(EventType::Warning, why, "VerifyKeyPair", message)
                    .await;
                Ok(Some(why))
            }
            VerifyOutcome::NotDelivered(e) => Err(e.into()),
        }
    }

    /// What a complete list of the session's keys says of the key whose code was refused
    /// (`None` when the list cannot be read).
    async fn listed_after_refusal(&self, for_replacement: bool) -> Option<AfterRefusedCode> {
        let key_id = self.waiting_key_id(for_replacement)?;
        let listed = self.provider.list().await.ok()?;
        Some(plan::after_refused_code(&key_id, &listed))
    }

    /// Swaps the verified replacement into the Secret's current slot (one apply), then
    /// records that promotion is under way; [`Step::FinishPromotion`] retires the old key.
    pub(super) async fn promote(&mut self, view: &SecretView) -> Result<(), Error> {
        let Some(new) = view.pending().cloned() else {
            return Err(Error::Stale);
        };
        self.apply_secret(&SecretContents {
            current: new,
            pending: None,
        })
        .await?;
        failpoint!("secret-written");
        if let Some(p) = self.status.pending_key.as_mut() {
            p.waiting_for = ReplacementStage::Promotion;
        }
        self.write(false).await
    }
}
