//! Counters per node and per hierarchy, and the no-loss invariant.
//!
//! Every task that enters a hierarchy is counted once as `submitted` at the node it
//! enters, and once as exactly one of `completed`, `escalated` (out of the top) or
//! `failed` at the node where it ends. After a drain,
//! `submitted == completed + escalated + failed` ([`Counters::is_balanced`]).
//!
//! Counters are atomics split by writer: the *sender side* (written by whoever sends
//! into the node's mailbox) and the *owner side* (written only by the node's own actor,
//! or by its supervisor after the actor is dead). The owner side's rarely moved
//! counters (restarts, escalations kept or passed, refusals, router branches) live in
//! a box made at the first bump, so an idle agent carries only the hot ones.

use std::ops::{Add, AddAssign};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// A snapshot of counters for one node or summed over a hierarchy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Tasks that entered the hierarchy at this node (from outside, or new tasks sent
    /// by an agent's handler).
    pub submitted: u64,
    /// Tasks that ended here as completed (handled, replied, absorbed below a
    /// threshold, or suppressed as a repeat).
    pub completed: u64,
    /// Tasks that ended here by leaving the top of the hierarchy (root only).
    pub escalated: u64,
    /// Tasks that ended here as failed.
    pub failed: u64,
    /// Times the node's agent was restarted (state rebuilt from its factory).
    pub restarts: u64,
    /// Handler attempts that were retries of a crashed attempt.
    pub redelivered: u64,
    /// Escalations this node passed upward (agents: escalated; supervisors: accepted).
    pub escalated_up: u64,
    /// Escalations a supervisor kept because they were below its threshold.
    pub absorbed: u64,
    /// Escalations a supervisor folded into an earlier one within its window.
    pub suppressed: u64,
    /// Times a supervisor exceeded its restart intensity and failed upward.
    pub failure_escalations: u64,
    /// Tasks lost in a dead actor's mailbox and counted as failed (a subset of `failed`).
    pub lost_in_mailbox: u64,
    /// Tasks refused: at a full mailbox (`SendError::Full`: never submitted, so not in
    /// `failed`), or by a router (admission limit, no eligible worker: submitted and
    /// counted in `failed`).
    pub rejected: u64,
    /// Router branches still running when their request was decided (a race won,
    /// fail-fast); their late answers are ignored.
    pub discarded: u64,
    /// Router branches unanswered at their request's deadline.
    pub timed_out: u64,
}

impl Counters {
    /// Tasks neither completed, escalated nor failed yet.
    pub fn in_flight(&self) -> u64 {
        self.submitted
            .saturating_sub(self.completed + self.escalated + self.failed)
    }

    /// True when every submitted task has exactly one outcome:
    /// `submitted == completed + escalated + failed`.
    pub fn is_balanced(&self) -> bool {
        self.submitted == self.completed + self.escalated + self.failed
    }
}

impl AddAssign for Counters {
    fn add_assign(&mut self, o: Self) {
        self.submitted += o.submitted;
        self.completed += o.completed;
        self.escalated += o.escalated;
        self.failed += o.failed;
        self.restarts += o.restarts;
        self.redelivered += o.redelivered;
        self.escalated_up += o.escalated_up;
        self.absorbed += o.absorbed;
        self.suppressed += o.suppressed;
        self.failure_escalations += o.failure_escalations;
        self.lost_in_mailbox += o.lost_in_mailbox;
        self.rejected += o.rejected;
        self.discarded += o.discarded;
        self.timed_out += o.timed_out;
    }
}

impl Add for Counters {
    type Output = Counters;
    fn add(mut self, o: Self) -> Counters {
        self += o;
        self
    }
}

impl std::iter::Sum for Counters {
    fn sum<I: Iterator<Item = Counters>>(iter: I) -> Counters {
        iter.fold(Counters::default(), Add::add)
    }
}

/// Written by senders into the node's mailbox.
#[derive(Debug, Default)]
pub(crate) struct SenderSide {
    /// Tasks offered here (external or handler-originated), withdrawn ones included.
    /// Never decremented, so it is also the source of task ids: the value before a
    /// task's increment is its sequence number, and two tasks never share one.
    pub(crate) offered: AtomicU64,
    /// Offered tasks withdrawn before they were enqueued (shutting down, closed).
    /// `submitted = offered − withdrawn`.
    pub(crate) withdrawn: AtomicU64,
    /// Every task successfully put in the mailbox (tasks, escalations, forwards; a
    /// batch counts its tasks).
    pub(crate) enqueued: AtomicU64,
}

/// Written by the node's own actor (or its supervisor once the actor is dead).
#[derive(Debug, Default)]
pub(crate) struct OwnerSide {
    pub(crate) settled: AtomicU64,
    pub(crate) completed: AtomicU64,
    pub(crate) escalated: AtomicU64,
    pub(crate) failed: AtomicU64,
    /// The counters most nodes never move, allocated at the first that does: 80 bytes
    /// fewer in every idle agent.
    rare: OnceLock<Box<RareCounters>>,
}

/// Owner-side counters of restarts, escalations kept or passed, refusals and router
/// branches: see [`Counters`] for each.
#[derive(Debug, Default)]
pub(crate) struct RareCounters {
    pub(crate) restarts: AtomicU64,
    pub(crate) redelivered: AtomicU64,
    pub(crate) escalated_up: AtomicU64,
    pub(crate) absorbed: AtomicU64,
    pub(crate) suppressed: AtomicU64,
    pub(crate) failure_escalations: AtomicU64,
    pub(crate) lost_in_mailbox: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) discarded: AtomicU64,
    pub(crate) timed_out: AtomicU64,
}

impl OwnerSide {
    /// The rare counters, to bump one.
    pub(crate) fn rare(&self) -> &RareCounters {
        self.rare.get_or_init(Box::default)
    }

    /// Restarts so far (reading does not make the rare counters).
    pub(crate) fn restarts(&self) -> u64 {
        self.rare
            .get()
            .map_or(0, |c| c.restarts.load(Ordering::Acquire))
    }
}

/// Increment a counter. Release ordering (free for a read-modify-write on x86) makes
/// everything that happened before an outcome visible to a reader that sees the
/// outcome, which is what makes the drain check conservative: it reads all outcomes
/// first, then all submissions.
#[inline]
pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Release);
}

/// Add `n` to a counter (see [`bump`]).
#[inline]
pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Release);
}

/// A node's counters as [`Counters`], from its sender side and its owner side (kept
/// apart in the slot: see `Slot`'s layout).
pub(crate) fn snapshot(tx: &SenderSide, o: &OwnerSide) -> Counters {
    let r = |a: &AtomicU64| a.load(Ordering::Acquire);
    let rare = o.rare.get();
    let rr = |f: fn(&RareCounters) -> &AtomicU64| rare.map_or(0, |c| r(f(c)));
    Counters {
        completed: r(&o.completed),
        escalated: r(&o.escalated),
        failed: r(&o.failed),
        restarts: rr(|c| &c.restarts),
        redelivered: rr(|c| &c.redelivered),
        escalated_up: rr(|c| &c.escalated_up),
        absorbed: rr(|c| &c.absorbed),
        suppressed: rr(|c| &c.suppressed),
        failure_escalations: rr(|c| &c.failure_escalations),
        lost_in_mailbox: rr(|c| &c.lost_in_mailbox),
        rejected: rr(|c| &c.rejected),
        discarded: rr(|c| &c.discarded),
        timed_out: rr(|c| &c.timed_out),
        // read last: a task's submission happens before its outcome, so reading
        // outcomes first can only over-estimate in-flight work, never hide it.
        submitted: tx.submitted(),
    }
}

impl SenderSide {
    /// Tasks submitted here: offered minus withdrawn. Withdrawals are read first, so a
    /// concurrent withdrawal can only make the figure too high (more in flight), never
    /// too low. SeqCst, like the phase change a shutdown's drain check waits on.
    pub(crate) fn submitted(&self) -> u64 {
        let withdrawn = self.withdrawn.load(Ordering::SeqCst);
        self.offered
            .load(Ordering::SeqCst)
            .saturating_sub(withdrawn)
    }
}

/// A node's messages in the mailbox or being processed: enqueued but not settled.
pub(crate) fn unsettled(tx: &SenderSide, own: &OwnerSide) -> u64 {
    let settled = own.settled.load(Ordering::Acquire);
    tx.enqueued.load(Ordering::Acquire).saturating_sub(settled)
}
