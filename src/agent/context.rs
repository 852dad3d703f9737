//! The context an agent sees while it runs: who it is, what it is handling, a seeded
//! RNG and a way to send new tasks.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::address::{AgentRef, SendError, Slot};
use crate::budget::{Budget, BudgetExceeded};
use crate::envelope::{EscalationInfo, Path, TaskId, TaskMeta};
use crate::hierarchy::shared::Shared;
use crate::hierarchy::AddressError;

/// An agent's view of itself and of the task it is handling.
///
/// Replying, escalating and forwarding are [`crate::Verdict`]s returned from
/// [`crate::Agent::handle`], so each task gets exactly one outcome.
pub struct Ctx<M> {
    pub(crate) slot: Arc<Slot<M>>,
    pub(crate) shared: Arc<Shared<M>>,
    /// The index in the tier (the tier's name is read from the path, which ends with
    /// `tier/index`: one string less in every agent).
    index: u32,
    pub(crate) incarnation: u64,
    /// Boxed: a `StdRng` is about 330 bytes, which every agent would otherwise carry
    /// in its actor's task whether it draws or not.
    rng: Option<Box<StdRng>>,
    pub(crate) task: TaskId,
    pub(crate) attempt: u32,
    pub(crate) meta: Option<Box<TaskMeta<M>>>,
    pub(crate) stop_requested: bool,
    /// The agent's actor is stopping (its slot is closed): no more handler runs. Kept
    /// here, where it costs no space, rather than in the actor's state.
    pub(crate) stopping: bool,
    /// The agent is taking a sequence of tasks (a batch, or the tasks queued behind
    /// its mailbox): a task it finishes does not start a drain of the queue (nor a
    /// wait on it) of its own; the sequence's end, or the outermost drain, does.
    pub(crate) draining: bool,
    /// The slot's incarnation when this actor started (`Slot::incarnation`, counted
    /// by `detach`; not `incarnation` above, which counts restarts): the agent's
    /// operations on the queue behind its mailbox name it, so that they do nothing
    /// once this actor has been detached.
    pub(crate) queue_incarnation: u16,
}

impl<M> fmt::Debug for Ctx<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ctx")
            .field("path", &self.slot.path)
            .field("incarnation", &self.incarnation)
            .field("task", &self.task)
            .finish_non_exhaustive()
    }
}

impl<M: crate::Message> Ctx<M> {
    pub(crate) fn new(slot: Arc<Slot<M>>, shared: Arc<Shared<M>>, index: usize) -> Self {
        // a respawned actor continues the count (restarts in place and respawns both
        // bump the slot's restart counter)
        let incarnation = slot.own.restarts();
        let queue_incarnation = slot.incarnation();
        Ctx {
            slot,
            shared,
            index: u32::try_from(index).unwrap_or(u32::MAX),
            incarnation,
            rng: None,
            task: TaskId(0),
            attempt: 0,
            meta: None,
            stop_requested: false,
            stopping: false,
            draining: false,
            queue_incarnation,
        }
    }

    /// This agent's path, e.g. `ward/decision/0/diagnostic/3/monitor/17`.
    pub fn path(&self) -> &Path {
        &self.slot.path
    }

    /// The name of this agent's tier.
    pub fn tier(&self) -> &str {
        // an agent's path is `.../tier/index`, and tier names have no '/'
        let p = self.slot.path.as_str();
        p.rsplit('/').nth(1).unwrap_or(p)
    }

    /// This agent's index within its tier (0-based, unique in the tier).
    pub fn index(&self) -> usize {
        self.index as usize
    }

    /// Depth in the hierarchy: the root supervisor is 0.
    pub fn level(&self) -> u32 {
        self.slot.level
    }

    /// How many times this agent has been restarted (0 for the first incarnation).
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The task being handled.
    pub fn task_id(&self) -> TaskId {
        self.task
    }

    /// Which attempt this is for the current task, from 1. Above 1 means an earlier
    /// attempt crashed and the task was redelivered.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// When handling an escalation from below: its severity, reason and origin.
    pub fn escalation(&self) -> Option<&EscalationInfo> {
        self.meta.as_ref().and_then(|m| m.escalation.as_deref())
    }

    /// A random number generator seeded from the hierarchy seed, this agent's position
    /// and its incarnation: the same seed replays the same draws.
    pub fn rng(&mut self) -> &mut StdRng {
        let seed = self
            .shared
            .seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add((self.slot.uid as u64) << 20)
            .wrapping_add(self.incarnation);
        self.rng
            .get_or_insert_with(|| Box::new(StdRng::seed_from_u64(seed)))
    }

    /// Time since the hierarchy started, on the runtime clock (virtual under a paused
    /// tokio clock).
    pub fn now(&self) -> Duration {
        self.shared.now()
    }

    /// Look up another agent of this hierarchy by path or `tier/index`.
    ///
    /// # Errors
    /// [`AddressError::NotFound`] if no agent has that address.
    pub fn agent(&self, addr: &str) -> Result<AgentRef<M>, AddressError> {
        Shared::agent_ref(&self.shared, addr)
    }

    /// Submit a *new* task to another agent (counted as submitted there). Works during
    /// a graceful shutdown, so work started before it can finish.
    ///
    /// # Errors
    /// [`SendError::Closed`] if the target has stopped for good.
    pub fn send(&self, to: &AgentRef<M>, msg: M) -> Result<TaskId, SendError<M>> {
        to.submit(msg, None, false)
    }

    /// Submit several *new* tasks to another agent in one mailbox message (see
    /// [`AgentRef::send_batch`]; like [`Ctx::send`], never refused for capacity and
    /// allowed during a graceful shutdown).
    ///
    /// # Errors
    /// [`SendError::Closed`] if the target has stopped for good; nothing is sent.
    pub fn send_batch(
        &self,
        to: &AgentRef<M>,
        msgs: impl IntoIterator<Item = M>,
    ) -> Result<crate::address::BatchIds, SendError<Vec<M>>> {
        to.submit_batch(msgs.into_iter().collect(), false)
    }

    /// Spend `units` of the current task's budget (a no-op if it has none).
    ///
    /// # Errors
    /// [`BudgetExceeded`] if that would pass the budget; return it from `handle` with
    /// `?` to fail the task without a retry.
    pub fn spend(&self, units: u64) -> Result<(), BudgetExceeded> {
        match self.meta.as_ref().and_then(|m| m.budget.as_ref()) {
            Some(b) => b.spend(units),
            None => Ok(()),
        }
    }

    /// The current task's budget, if it carries one.
    pub fn budget(&self) -> Option<&Budget> {
        self.meta.as_ref().and_then(|m| m.budget.as_deref())
    }

    /// Stop this agent after the current message (a normal exit: a permanent agent is
    /// restarted, a transient or temporary one is not).
    pub fn stop(&mut self) {
        self.stop_requested = true;
    }

    /// A fresh incarnation discards everything the previous one asked for, including a
    /// stop requested by an attempt that then crashed.
    pub(crate) fn reincarnate(&mut self) {
        self.incarnation += 1;
        self.rng = None;
        self.stop_requested = false;
    }
}
