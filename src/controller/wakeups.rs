//! When each `ApiKeyPair` is looked at again (its next check slot, its next look for a
//! verification code, its renewal): one small entry per key pair, in place of
//! kube-runtime's scheduler.
//!
//! `Action::requeue` keeps each waiting object in kube-runtime's scheduler as two
//! `ObjectRef`s (name, namespace, resourceVersion and UID: eight strings) and a
//! `DelayQueue` slot, ~0.7 KB per key pair (heaptrack at 2000 keys), and every healthy key
//! pair always waits for its next check. Here a wake-up is a shared namespace, a name and a
//! time; those due go to the controller through `reconcile_on` as plain references, and
//! the controller's runner still runs one reconcile per object at a time. Error back-off
//! stays with kube-runtime's scheduler (`error_policy`): few objects fail at once.
//!
//! One task sweeps every entry when the earliest is due, at most every [`SWEEP_SPACING`]:
//! at 10 000 key pairs whose checks spread over an hour, about three sweeps a second of
//! 10 000 entries each, against a table a tenth of the size.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::Stream;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::CachedKeyPair;
use crate::memory::SharedStrings;

/// The shortest time between two sweeps: wake-ups due within it go out together.
pub const SWEEP_SPACING: Duration = Duration::from_millis(100);

/// The key pairs' next wake-ups (see the module header).
#[derive(Default)]
pub struct Wakeups {
    state: Mutex<State>,
    /// Told when a wake-up earlier than the one the sweeper waits for is set.
    earlier: Notify,
}

#[derive(Default)]
struct State {
    at: HashMap<Key, Instant>,
    /// One copy of each namespace's name, shared by its key pairs' entries.
    namespaces: SharedStrings,
    /// The earliest wake-up the sweeper knows of (None: it waits to be told).
    next: Option<Instant>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    namespace: Arc<str>,
    name: Box<str>,
}

impl Wakeups {
    /// Wakes the key pair `namespace`/`name` once, `after` from now, in place of any
    /// wake-up set before (the latest reconcile knows best when it is due next).
    pub fn wake_in(&self, namespace: &str, name: &str, after: Duration) {
        let at = Instant::now() + after;
        let mut state = self.lock();
        let namespace = state.namespaces.share(namespace);
        state.at.insert(
            Key {
                namespace,
                name: name.into(),
            },
            at,
        );
        if state.next.is_none_or(|next| at < next) {
            state.next = Some(at);
            drop(state);
            self.earlier.notify_one();
        }
    }

    /// Drops the wake-up of `namespace`/`name` (deleted, or waiting for a change only).
    pub fn forget(&self, namespace: &str, name: &str) {
        let mut state = self.lock();
        let Some(namespace) = state.namespaces.get(namespace) else {
            return;
        };
        state.at.remove(&Key {
            namespace,
            name: name.into(),
        });
    }

    /// The key pairs as their wake-ups fall due, for `Controller::reconcile_on`. Never
    /// ends; the controller's shutdown drops it.
    pub fn due(self: Arc<Self>) -> impl Stream<Item = ObjectRef<CachedKeyPair>> + Send + 'static {
        use futures::StreamExt;
        futures::stream::unfold(self, |wakeups| async move {
            let batch = wakeups.next_batch().await;
            Some((futures::stream::iter(batch), wakeups))
        })
        .flatten()
    }

    /// Waits for the next wake-ups to fall due and takes them.
    async fn next_batch(&self) -> Vec<ObjectRef<CachedKeyPair>> {
        tokio::time::sleep(SWEEP_SPACING).await;
        loop {
            let (due, next) = self.take_due(Instant::now());
            if !due.is_empty() {
                return due;
            }
            let earlier = self.earlier.notified();
            match next {
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = earlier => {}
                    }
                }
                None => earlier.await,
            }
        }
    }

    /// Takes the wake-ups due at `now`; returns them and the earliest left.
    fn take_due(&self, now: Instant) -> (Vec<ObjectRef<CachedKeyPair>>, Option<Instant>) {
        let mut state = self.lock();
        let mut due = Vec::new();
        let mut next: Option<Instant> = None;
        state.at.retain(|key, at| {
            if *at <= now {
                due.push(ObjectRef::new(&key.name).within(&key.namespace));
                false
            } else {
                next = Some(next.map_or(*at, |next| next.min(*at)));
                true
            }
        });
        state.next = next;
        (due, next)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing here can panic while holding the lock; a poisoned one still holds
        // consistent entries.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn key(namespace: &str, name: &str) -> ObjectRef<CachedKeyPair> {
        ObjectRef::new(name).within(namespace)
    }

    /// The wake-ups the stream gives out within `window` of (paused) time.
    async fn due_within(
        stream: &mut (impl Stream<Item = ObjectRef<CachedKeyPair>> + Unpin),
        window: Duration,
    ) -> Vec<ObjectRef<CachedKeyPair>> {
        let mut out = Vec::new();
        let deadline = Instant::now() + window;
        while let Ok(Some(object)) = tokio::time::timeout_at(deadline, stream.next()).await {
            out.push(object);
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_pair_wakes_once_at_its_time_and_not_before() {
        let wakeups = Arc::new(Wakeups::default());
        let mut due = Box::pin(wakeups.clone().due());
        wakeups.wake_in("ns", "a", Duration::from_secs(60));
        assert!(
            due_within(&mut due, Duration::from_secs(59))
                .await
                .is_empty()
        );
        assert_eq!(
            due_within(&mut due, Duration::from_secs(2)).await,
            [key("ns", "a")]
        );
        assert!(wakeups.lock().at.is_empty(), "a wake-up is used once");
        assert!(
            due_within(&mut due, Duration::from_secs(3600))
                .await
                .is_empty()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_latest_wake_up_replaces_the_one_before_whether_sooner_or_later() {
        let wakeups = Arc::new(Wakeups::default());
        let mut due = Box::pin(wakeups.clone().due());
        wakeups.wake_in("ns", "sooner", Duration::from_secs(600));
        wakeups.wake_in("ns", "later", Duration::from_secs(10));
        // The sweeper now waits for "later"'s first time; "sooner" moves ahead of it.
        assert!(
            due_within(&mut due, Duration::from_secs(1))
                .await
                .is_empty()
        );
        wakeups.wake_in("ns", "sooner", Duration::from_secs(5));
        wakeups.wake_in("ns", "later", Duration::from_secs(600));
        assert_eq!(
            due_within(&mut due, Duration::from_secs(6)).await,
            [key("ns", "sooner")]
        );
        assert!(
            due_within(&mut due, Duration::from_secs(60))
                .await
                .is_empty(),
            "later's first time was replaced"
        );
        assert_eq!(
            due_within(&mut due, Duration::from_secs(600)).await,
            [key("ns", "later")]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_forgotten_key_pair_does_not_wake() {
        let wakeups = Arc::new(Wakeups::default());
        let mut due = Box::pin(wakeups.clone().due());
        wakeups.wake_in("ns", "gone", Duration::from_secs(1));
        wakeups.wake_in("other", "kept", Duration::from_secs(1));
        wakeups.forget("ns", "gone");
        wakeups.forget("unknown", "gone");
        assert_eq!(
            due_within(&mut due, Duration::from_secs(5)).await,
            [key("other", "kept")]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn wake_ups_due_together_go_out_together_as_plain_references() {
        let wakeups = Arc::new(Wakeups::default());
        let mut due = Box::pin(wakeups.clone().due());
        for i in 0..1000 {
            wakeups.wake_in(&format!("ns-{}", i % 3), &format!("k-{i}"), Duration::ZERO);
        }
        assert_eq!(wakeups.lock().namespaces.len(), 3, "one copy per namespace");
        let out = due_within(&mut due, SWEEP_SPACING * 2).await;
        assert_eq!(out.len(), 1000);
        assert!(
            out.iter().all(|r| r.extra.uid.is_none()),
            "no resourceVersion or UID kept"
        );
    }
}
