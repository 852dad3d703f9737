//! The internal protocol between the actors of a hierarchy.
//!
//! Agents, supervisors (and later routers and pipelines) all accept [`NodeMsg`], so any
//! of them can be the child of a supervisor or the target of an escalation. Children
//! talk to their supervisor upward only (escalations, exit reports that wait for a
//! [`Directive`]); supervisors talk downward only with messages they never wait on
//! (reset, stop). Waits therefore only ever point up the tree, which cannot deadlock.

use std::sync::Arc;
use std::time::Duration;

use ractor::ActorId;
use tokio::sync::oneshot;

use crate::envelope::{Batch, Task};

/// A message between hierarchy actors.
#[derive(Debug)]
pub(crate) enum NodeMsg<M> {
    /// Work for this node.
    Task(Task<M>),
    /// Several tasks for this node in one message (`AgentRef::send_batch`), each
    /// handled, counted and settled as a task of its own.
    Batch(Batch<M>),
    /// An escalation from a report (supervisors only).
    Escalation(Task<M>),
    /// A child crashed or exited and waits for its supervisor's directive. `from` is
    /// the child's actor: a report from an incarnation the supervisor already buried
    /// is stale and ignored.
    ChildExit {
        child: usize,
        from: ActorId,
        exit: Exit,
        reply: oneshot::Sender<Directive>,
    },
    /// A supervisor's own timer: respawn child `child` now that its backoff is over.
    Respawn { child: usize },
    /// Restart in place now (the supervisor has already bumped the restart epoch).
    Reset,
    /// Stop: no new work; fail what is queued if the hierarchy is aborting, then exit.
    Stop { reason: Arc<str> },
    /// Agents only: tasks wait in the agent's queue behind its mailbox
    /// (`Slot::queue_behind`), and nobody is taking them: take them now, in order.
    /// Sent by a sender that queued a task and found the agent idle, or by the agent
    /// itself when a message for its mailbox called it away from waiting tasks.
    Drain,
}

// With ractor's `cluster` feature (echelon's `cluster`), ractor no longer implements
// `Message` for every type: hierarchy messages stay local, so the default (not
// serializable) implementation is the right one.
#[cfg(feature = "cluster")]
impl<M: Send + 'static> ractor::Message for NodeMsg<M> {}

impl<M> NodeMsg<M> {
    /// How many tasks this message carries: what it adds to the node's `enqueued`
    /// count, and what the node settles for it.
    #[inline]
    pub(crate) fn tasks(&self) -> u64 {
        match self {
            NodeMsg::Task(_) | NodeMsg::Escalation(_) => 1,
            NodeMsg::Batch(b) => b.len() as u64,
            _ => 0,
        }
    }
}

/// How a child ended an incarnation.
#[derive(Debug, Clone)]
pub(crate) enum Exit {
    /// Panic or crash error, with its message.
    Crashed(String),
    /// The agent asked to stop.
    Normal,
}

/// A supervisor's answer to [`NodeMsg::ChildExit`].
#[derive(Debug, Clone)]
pub(crate) enum Directive {
    /// Rebuild your state and go on, after `delay` (backoff).
    Restart { delay: Duration },
    /// Stop for good; fail what you hold with this reason.
    Stop { reason: Arc<str> },
}
