//! Where a gather's branches answer: one shared inbox per request instead of a oneshot
//! per branch.
//!
//! A broadcast to eight workers used to make eight oneshot channels and, on every
//! wake-up of the gather, poll each branch still pending: quadratic in the branches
//! and most of the gather's cost. Now every branch's reply port is a [`BranchReply`]
//! into one [`Arrivals`]: a branch's outcome is pushed in arrival order, and the gather
//! takes all that has arrived in one lock. A branch that ends without an answer (its
//! task dropped with a killed actor, or never delivered) says so from its `Drop`, so a
//! gather never waits on a branch that can no longer answer.

use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use crate::envelope::Outcome;

/// One branch's answer: its index, and its outcome (`None`: it ended without one).
pub(crate) type Arrival<M> = (usize, Option<Outcome<M>>);

/// The shared inbox of one gather.
pub(crate) struct Arrivals<M> {
    inner: Mutex<Inbox<M>>,
}

struct Inbox<M> {
    got: Vec<Arrival<M>>,
    waker: Option<Waker>,
    /// The gather is over: later answers are dropped on arrival, as a oneshot's send
    /// to a dropped receiver would, rather than kept until the last port goes.
    closed: bool,
}

impl<M> Arrivals<M> {
    /// An inbox for `branches` answers.
    pub(crate) fn new(branches: usize) -> Arc<Self> {
        Arc::new(Arrivals {
            inner: Mutex::new(Inbox {
                got: Vec::with_capacity(branches),
                waker: None,
                closed: false,
            }),
        })
    }

    /// The reply port of branch `k`.
    pub(crate) fn port(self: &Arc<Self>, k: usize) -> BranchReply<M> {
        BranchReply {
            to: Some(self.clone()),
            k,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inbox<M>> {
        // a panic cannot happen while the lock is held (push and append only)
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, a: Arrival<M>) {
        let waker = {
            let mut inbox = self.lock();
            if inbox.closed {
                // dropped outside the lock: an outcome holds user values
                drop(inbox);
                drop(a);
                return;
            }
            inbox.got.push(a);
            inbox.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Moves everything that has arrived into `into`, oldest first; `Pending` (and the
    /// task woken at the next arrival) if nothing has.
    pub(crate) fn poll_take(&self, cx: &mut Context<'_>, into: &mut Vec<Arrival<M>>) -> Poll<()> {
        let mut inbox = self.lock();
        if inbox.got.is_empty() {
            match &inbox.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => inbox.waker = Some(cx.waker().clone()),
            }
            return Poll::Pending;
        }
        into.append(&mut inbox.got);
        Poll::Ready(())
    }
}

/// Closes an inbox when dropped: the gather is over, however it ended.
pub(crate) struct CloseOnDrop<M>(pub(crate) Arc<Arrivals<M>>);

impl<M> Drop for CloseOnDrop<M> {
    fn drop(&mut self) {
        let (got, waker) = {
            let mut inbox = self.0.lock();
            inbox.closed = true;
            (std::mem::take(&mut inbox.got), inbox.waker.take())
        };
        drop((got, waker));
    }
}

/// A branch's reply port: answers once, or says from its `Drop` that the branch ended
/// without an answer.
pub(crate) struct BranchReply<M> {
    to: Option<Arc<Arrivals<M>>>,
    k: usize,
}

impl<M> BranchReply<M> {
    /// The branch's outcome.
    pub(crate) fn send(mut self, outcome: Outcome<M>) {
        if let Some(to) = self.to.take() {
            to.push((self.k, Some(outcome)));
        }
    }
}

impl<M> Drop for BranchReply<M> {
    fn drop(&mut self) {
        if let Some(to) = self.to.take() {
            to.push((self.k, None));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::time::Duration;

    fn done(v: u32) -> Outcome<u32> {
        Outcome::Completed {
            reply: Some(v),
            by: crate::envelope::Path::new("t"),
            trail: Vec::new(),
        }
    }

    /// Answers come out in arrival order, all that arrived in one take; a port dropped
    /// unanswered arrives as `None`, and the gather is woken by a late answer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answers_in_arrival_order_and_dropped_ports_say_so() {
        let a = Arrivals::<u32>::new(3);
        let (p0, p1, p2) = (a.port(0), a.port(1), a.port(2));
        p2.send(done(2));
        drop(p0);
        let mut got = Vec::new();
        tokio::time::timeout(
            Duration::from_secs(5),
            poll_fn(|cx| a.poll_take(cx, &mut got)),
        )
        .await
        .expect("the answers already there are taken at once");
        let ks: Vec<(usize, bool)> = got.iter().map(|(k, o)| (*k, o.is_some())).collect();
        assert_eq!(ks, vec![(2, true), (0, false)]);
        let late = tokio::spawn(async move { p1.send(done(1)) });
        got.clear();
        tokio::time::timeout(
            Duration::from_secs(5),
            poll_fn(|cx| a.poll_take(cx, &mut got)),
        )
        .await
        .expect("the late answer wakes the gather");
        assert!(matches!(
            got.as_slice(),
            [(1, Some(Outcome::Completed { reply: Some(1), .. }))]
        ));
        tokio::time::timeout(Duration::from_secs(5), late)
            .await
            .expect("the late sender ends")
            .expect("join");
    }

    /// Once the gather is over, a late answer is dropped when it arrives (its values
    /// freed at once), not kept until the last port goes.
    #[test]
    fn a_closed_inbox_drops_late_answers() {
        let a = Arrivals::<std::sync::Arc<u32>>::new(2);
        let (p0, p1) = (a.port(0), a.port(1));
        drop(CloseOnDrop(a.clone()));
        let payload = std::sync::Arc::new(7);
        p0.send(Outcome::Completed {
            reply: Some(payload.clone()),
            by: crate::envelope::Path::new("t"),
            trail: Vec::new(),
        });
        assert_eq!(
            std::sync::Arc::strong_count(&payload),
            1,
            "the late reply was kept"
        );
        drop(p1);
        assert!(a.lock().got.is_empty());
    }
}
