//! Where a gather's branches answer, and where the gather is decided: in place, by the
//! branch whose answer decides it.
//!
//! A broadcast to eight workers used to make eight oneshot channels and a gather task
//! that polled them, woken once per answer. Now every branch's reply port is a
//! [`BranchReply`] into one [`Arrivals`], which holds the gather itself (a
//! [`GatherJob`]) behind a mutex: a branch's outcome is applied when it arrives, on the
//! thread that delivers it, and the arrival that decides the request resolves it there
//! and then. No task per request, no wake-ups, no second hop before the caller hears.
//!
//! A branch that ends without an answer (its task dropped with a killed actor, or never
//! delivered) says so from its port's `Drop`, so a gather never waits on a branch that
//! can no longer answer. A deadline is a timer task, made only for routers that have
//! one and cancelled when the request is decided first; a hard stop of the hierarchy
//! ends the gathers still open through the lead's registry ([`crate::lead::Runs`]).

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::time::Instant;

use super::actor::GatherJob;
use crate::envelope::Outcome;
use crate::lead::{Abort, RunGuard};

/// Why a gather ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// Its branches decided it (all in, decided early, or failed fast).
    Decided,
    /// The router's deadline passed first.
    Expired,
    /// The hierarchy stopped hard first.
    Aborted,
}

/// Applies branch `k`'s end (its outcome, or `None`: it ended without one).
type Arrive<M> = fn(&Arrivals<M>, u32, Option<Outcome<M>>);

/// The shared state of one gather: the gather itself until it is decided, `None` after.
pub(crate) struct Arrivals<M> {
    /// [`Arrivals::arrive`], kept here so that a branch's port can call it without
    /// knowing `M` is a message, through a thin pointer (the port is in every task
    /// head: a trait object would make it, and every head, 8 bytes larger).
    arrive: Arrive<M>,
    job: Mutex<Option<GatherJob<M>>>,
}

impl<M: crate::Message> Arrivals<M> {
    /// A gather in the making: it cannot be decided before [`Arrivals::dispatched`].
    pub(crate) fn new(job: GatherJob<M>) -> Arc<Self> {
        Arc::new(Arrivals {
            arrive: Self::arrive,
            job: Mutex::new(Some(job)),
        })
    }

    /// The reply port of branch `k`.
    pub(crate) fn port(self: &Arc<Self>, k: usize) -> BranchReply<M> {
        BranchReply {
            to: Some(self.clone()),
            k: u32::try_from(k).unwrap_or(u32::MAX),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<GatherJob<M>>> {
        // a panic cannot happen while the lock is held: no user code runs under it
        self.job.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The router has sent every branch it could; `unsent` lists those it could not, with
    /// why.
    /// From now on the gather can be decided: now, if its branches already did, or at
    /// a later arrival, the deadline (a timer is started for it) or a hard stop.
    pub(crate) fn dispatched(
        self: &Arc<Self>,
        unsent: &[(usize, String)],
        running: RunGuard,
        deadline: Option<Instant>,
    ) {
        let over = {
            let mut cell = self.lock();
            let Some(job) = cell.as_mut() else {
                // ended already (only by a hard stop: nothing else ends a gather still
                // dispatching); `running` goes with this call
                return;
            };
            job.dispatched(unsent, running);
            if job.over() {
                cell.take()
            } else {
                if let Some(d) = deadline {
                    let me = self.clone();
                    let timer = job.shared().spawn(async move {
                        tokio::time::sleep_until(d).await;
                        me.end(End::Expired);
                    });
                    job.timer = Some(timer.abort_handle());
                }
                None
            }
        };
        if let Some(job) = over {
            job.finish(End::Decided);
        }
    }

    /// End the gather now, if it is still open.
    pub(crate) fn end(&self, why: End) {
        let job = self.lock().take();
        if let Some(job) = job {
            job.finish(why);
        }
    }

    /// Branch `k` ended: with its outcome, or (`None`) without one.
    fn arrive(&self, k: u32, outcome: Option<Outcome<M>>) {
        let (over, ignored) = {
            let mut cell = self.lock();
            match cell.as_mut() {
                // decided already: a late answer is dropped
                None => (None, outcome),
                Some(job) => {
                    let ignored = job.accept(k as usize, outcome);
                    (if job.over() { cell.take() } else { None }, ignored)
                }
            }
        };
        // user values are dropped, and the request resolved, outside the lock
        drop(ignored);
        if let Some(job) = over {
            job.finish(End::Decided);
        }
    }
}

impl<M: crate::Message> Abort for Arrivals<M> {
    fn abort(&self) {
        self.end(End::Aborted);
    }
}

/// A branch's reply port: answers once, or says from its `Drop` that the branch ended
/// without an answer.
pub(crate) struct BranchReply<M> {
    to: Option<Arc<Arrivals<M>>>,
    k: u32,
}

impl<M> BranchReply<M> {
    /// The branch's outcome.
    pub(crate) fn send(mut self, outcome: Outcome<M>) {
        if let Some(to) = self.to.take() {
            (to.arrive)(&to, self.k, Some(outcome));
        }
    }
}

impl<M> Drop for BranchReply<M> {
    fn drop(&mut self) {
        if let Some(to) = self.to.take() {
            (to.arrive)(&to, self.k, None);
        }
    }
}
