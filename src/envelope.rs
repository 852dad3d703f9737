//! A task in flight: its identity, attempt count, escalation context, audit trail
//! and the port its outcome is reported on.
//!
//! A task is created when work enters a hierarchy and is *consumed* exactly once,
//! by one of three resolutions: completed, escalated out of the top, or failed. The
//! resolution functions take the task by value, so the type system rules out a second
//! outcome; the only other way to end a task is to drop its actor's mailbox, which the
//! supervisor accounts for (see `accounting`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

/// Identifies one task for its whole life, across hops, redeliveries and escalations.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskId(pub u64);

impl TaskId {
    /// The id of the `seq`-th task submitted at the node with this `uid`. The node's
    /// part is 24 bits: the nodes from [`TaskId::SHARED_NODE`] up all use that one
    /// value (their ids are told apart by the sequence only).
    #[inline]
    pub(crate) fn at(uid: u32, seq: u64) -> TaskId {
        let node = u64::from(uid.min(Self::SHARED_NODE));
        TaskId((node << 40) | (seq & ((1 << 40) - 1)))
    }

    /// The node part shared by every node from this uid up.
    const SHARED_NODE: u32 = (1 << 24) - 1;

    /// Was this task submitted at the node with this `uid`? A task never leaves its
    /// hierarchy (a forward to another one is refused), so the node part names a node
    /// of the hierarchy it is in. Never assumed for the nodes that share
    /// [`TaskId::SHARED_NODE`].
    #[inline]
    pub(crate) fn submitted_at(self, uid: u32) -> bool {
        uid < Self::SHARED_NODE && self.0 >> 40 == u64::from(uid)
    }
}

impl fmt::Debug for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "task#{:x}", self.0)
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The address of a node in a hierarchy, such as `ward/decision/0/diagnostic/3/monitor/17`.
///
/// Cheap to clone (a shared string). Paths name *logical* positions: an agent keeps its
/// path across restarts and respawns.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Path(Arc<str>);

impl Path {
    pub(crate) fn new(s: impl Into<Arc<str>>) -> Self {
        Path(s.into())
    }

    /// `self/segment/index`. Written out by hand rather than with `format!`: the
    /// builder makes one path per agent, and `format!` took about 1,500 instructions
    /// per path where this takes about 700.
    pub(crate) fn child(&self, segment: &str, index: usize) -> Self {
        // the index's decimal digits, last first
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut rest = index;
        loop {
            at -= 1;
            digits[at] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        let digits = &digits[at..];
        let mut s = String::with_capacity(self.0.len() + segment.len() + digits.len() + 2);
        s.push_str(&self.0);
        s.push('/');
        s.push_str(segment);
        s.push('/');
        // ASCII digits only, so always valid UTF-8
        s.extend(digits.iter().map(|&d| char::from(d)));
        Path(s.into())
    }

    /// The path as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Path {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Path {
    fn from(s: &str) -> Self {
        Path::new(s)
    }
}

impl From<String> for Path {
    fn from(s: String) -> Self {
        Path::new(s)
    }
}

impl fmt::Debug for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Path {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Path {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Path::new)
    }
}

/// What a node in the hierarchy is, as recorded in an audit trail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// A user agent (a leaf, or the lead of a team).
    Agent,
    /// A team's supervisor: applies the escalation threshold and restarts reports.
    Supervisor,
    /// A team lead created by auto-split to keep the span of control.
    TeamLead,
    /// A router: fans requests out to its workers and gathers their results.
    Router,
    /// A pipeline: runs requests through its stages in order.
    Pipeline,
    /// The hierarchy's root supervisor.
    Root,
}

/// What one node decided about a task, as recorded in the audit trail.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Decision {
    /// An agent escalated the task with this severity and reason.
    Escalated {
        /// Severity in `0.0..=1.0` as given by the agent.
        severity: f64,
        /// Why the agent escalated.
        reason: String,
    },
    /// A supervisor passed the escalation on: severity at or above its threshold.
    Accepted {
        /// The threshold the severity was compared against.
        threshold: f64,
    },
    /// A supervisor kept the escalation at its level: severity below its threshold.
    /// The task is complete.
    Absorbed {
        /// The threshold the severity was compared against.
        threshold: f64,
    },
    /// A supervisor folded a repeat into an earlier escalation within the window.
    /// The task is complete.
    Suppressed {
        /// The suppression window.
        window: Duration,
    },
    /// An agent handled the escalation here. The task is complete.
    Handled,
    /// An agent forwarded the task to another agent.
    Forwarded {
        /// Where the task went.
        to: Path,
    },
    /// The handler crashed (panic or crash error) on this attempt.
    Crashed {
        /// Attempt number that crashed, from 1.
        attempt: u32,
        /// The panic message or error.
        reason: String,
    },
    /// The task left the top of the hierarchy into the escalation sink.
    Delivered,
    /// A router sent the request to these workers.
    Routed {
        /// The workers that got a branch.
        to: Vec<Path>,
    },
    /// A router gathered its branches: how many answered, escalated, failed, timed
    /// out, or were discarded once the result was decided.
    Gathered {
        /// Branches that answered.
        answered: u32,
        /// Branches that escalated.
        escalated: u32,
        /// Branches that failed.
        failed: u32,
        /// Branches still unanswered at the deadline.
        timed_out: u32,
        /// Branches whose answers were discarded (a race was won, fail-fast fired).
        discarded: u32,
    },
    /// The task failed here.
    Failed {
        /// Why.
        reason: String,
    },
}

/// One line of an audit trail: who saw the task, at which level, when, and what it decided.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Time since the hierarchy started (runtime clock, so virtual under paused time).
    pub at: Duration,
    /// The node that saw the task.
    pub path: Path,
    /// Depth of that node: 0 is the root.
    pub level: u32,
    /// What kind of node it is.
    pub role: Role,
    /// What it decided.
    pub decision: Decision,
}

/// The escalation context a task carries while it travels up.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EscalationInfo {
    /// Current severity (the last agent to escalate sets it).
    pub severity: f64,
    /// Current reason.
    pub reason: String,
    /// The agent that first escalated the task.
    pub origin: Path,
    /// The agent that escalated it most recently.
    pub from: Path,
    /// Key used for repeat suppression: an explicit key, or origin and reason.
    pub key: Option<String>,
}

impl EscalationInfo {
    pub(crate) fn suppression_key(&self) -> String {
        match &self.key {
            Some(k) => k.clone(),
            None => format!("{}\u{1f}{}", self.origin, self.reason),
        }
    }
}

/// How a task ended, as seen by whoever submitted it with `call`.
#[derive(Debug)]
pub enum Outcome<M> {
    /// Handled inside the hierarchy; `reply` is the agent's reply, if it gave one.
    Completed {
        /// The reply value from [`crate::Verdict::Reply`], if any.
        reply: Option<M>,
        /// The node that completed it (an agent, or a supervisor that absorbed it).
        by: Path,
        /// The audit trail, if the task travelled as an escalation or crashed on the
        /// way (ends with `Handled`, `Absorbed` or `Suppressed`); empty otherwise.
        trail: Vec<AuditEntry>,
    },
    /// The task escalated out of the top of the hierarchy into the escalation sink
    /// (or, for a router's or pipeline's branch, back to the router).
    Escalated {
        /// Final severity.
        severity: f64,
        /// Final reason.
        reason: String,
        /// The agent that first escalated it.
        origin: Path,
        /// The payload given by the last agent to escalate (a copy of what the sink got).
        payload: M,
        /// Everyone who saw it on the way up.
        trail: Vec<AuditEntry>,
    },
    /// The task failed; `reason` says why and where.
    Failed(Failure),
}

impl<M> Outcome<M> {
    /// True for [`Outcome::Completed`].
    pub fn is_completed(&self) -> bool {
        matches!(self, Outcome::Completed { .. })
    }
    /// True for [`Outcome::Escalated`].
    pub fn is_escalated(&self) -> bool {
        matches!(self, Outcome::Escalated { .. })
    }
    /// True for [`Outcome::Failed`].
    pub fn is_failed(&self) -> bool {
        matches!(self, Outcome::Failed(_))
    }
}

/// The kind of a failure, for retry decisions (a pipeline retries crashes, losses and
/// timeouts, never rejections).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureKind {
    /// A handler rejected the task (`AgentError::reject`, budget exhausted): no retry
    /// can fix it.
    Rejected,
    /// The handler crashed on every attempt.
    Crashed,
    /// The agent, its team or the hierarchy stopped before the task finished.
    Stopped,
    /// The task was lost with a dead actor's mailbox.
    Lost,
    /// A router or pipeline could not place or finish it (no worker, capacity, a
    /// failed branch or stage, deadline), or an escalation could not be delivered.
    Routing,
}

/// Why a task failed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// The task.
    pub task: TaskId,
    /// What kind of failure.
    pub kind: FailureKind,
    /// The node where it failed.
    pub at: Path,
    /// How many times a handler was attempted.
    pub attempts: u32,
    /// Why: the last panic message or error, or the lifecycle event that ended it.
    pub reason: String,
    /// The audit trail up to the failure.
    pub trail: Vec<AuditEntry>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} failed at {} after {} attempt(s): {}",
            self.task, self.at, self.attempts, self.reason
        )
    }
}

/// An escalation that left the top of the hierarchy, as delivered to the escalation sink.
#[derive(Debug)]
pub struct EscalationReport<M> {
    /// The task.
    pub task: TaskId,
    /// Final severity.
    pub severity: f64,
    /// Final reason.
    pub reason: String,
    /// The agent that first escalated it.
    pub origin: Path,
    /// The payload given by the last agent to escalate.
    pub payload: M,
    /// Everyone who saw it, in order.
    pub trail: Vec<AuditEntry>,
}

/// What a branch's escalation brings back to its router or pipeline, for the request
/// to mirror.
#[derive(Debug)]
pub(crate) struct BranchEscalation<M> {
    pub(crate) severity: f64,
    pub(crate) reason: String,
    pub(crate) origin: Path,
    pub(crate) payload: M,
    pub(crate) trail: Vec<AuditEntry>,
}

/// Details a router or pipeline reports for one request, to a caller that asked.
#[derive(Debug)]
pub(crate) enum Detail<M> {
    Gather(crate::router::Gathered<M>),
    Run(crate::pipeline::RunReport<M>),
}

/// The rarely used parts of a task, boxed so a plain task stays small.
///
/// **Layout** (`repr(C, align(64))`, in this order): what a chained pipeline's hop reads first
/// (the budget, whether the task escalates, the run's link), then the rest. The box
/// moves with the task from stage to stage, and under load the next stage runs on the
/// other core: every line of it that a hop reads is a cache miss there. With the
/// escalation boxed (it is rare) a hop reads the box's first 64 bytes for a small
/// message (a unit test pins it), and the alignment makes those one cache line (152
/// bytes unaligned fell in jemalloc's 160-byte class, which starts every other box 32
/// bytes into a line); it used to read four of the box's five lines. The box is 192
/// bytes, was 288. Measured on W5's throughput, see BENCHMARKS.md.
#[derive(Debug)]
#[repr(C, align(64))]
pub(crate) struct TaskMeta<M> {
    /// The run's budget, shared by its stages and branches.
    pub(crate) budget: Option<std::sync::Arc<crate::budget::Budget>>,
    /// Set while the task travels as an escalation.
    pub(crate) escalation: Option<Box<EscalationInfo>>,
    /// A chained pipeline run's continuation (`pipeline::chain`).
    pub(crate) chain: Option<crate::pipeline::chain::Link<M>>,
    pub(crate) trail: Vec<AuditEntry>,
    /// Where a router or pipeline sends its per-request details, if the caller asked.
    pub(crate) detail: Option<oneshot::Sender<Detail<M>>>,
}

impl<M> Default for TaskMeta<M> {
    fn default() -> Self {
        TaskMeta {
            escalation: None,
            trail: Vec::new(),
            detail: None,
            budget: None,
            chain: None,
        }
    }
}

/// Everything about a task except its payload.
pub(crate) struct TaskHead<M> {
    pub(crate) id: TaskId,
    /// Handler attempts made so far on the current node.
    pub(crate) attempt: u32,
    /// A router's or pipeline's sub-task: an escalation of it returns to the router as
    /// the branch's result instead of going up the hierarchy.
    pub(crate) branch: bool,
    pub(crate) meta: Option<Box<TaskMeta<M>>>,
    pub(crate) reply: Option<Reply<M>>,
}

/// Where a task's outcome goes.
pub(crate) enum Reply<M> {
    /// A caller waiting on its own channel (`call`, a pipeline run, a remote node),
    /// who knows the node it submitted to ([`Answer::outcome`]).
    Caller(oneshot::Sender<Answer<M>>),
    /// One branch of a router's gather, into the gather's shared inbox.
    Branch(crate::router::arrivals::BranchReply<M>),
}

impl<M> Reply<M> {
    /// Deliver the outcome (to nobody, if the caller stopped waiting).
    pub(crate) fn send(self, outcome: Outcome<M>) {
        match self {
            Reply::Caller(tx) => {
                let _ = tx.send(Answer::Outcome(outcome));
            }
            Reply::Branch(b) => b.send(outcome),
        }
    }

    /// Task `id` completed at the node `by`. A caller whose task was submitted there
    /// ([`TaskId::submitted_at`]) gets [`Answer::Here`] and names the node itself, from
    /// the path it holds: the path's shared count is raised and lowered on the caller's
    /// thread alone, not raised here (on the agent's) and lowered there, which moved
    /// its cache line between the two cores on every answer.
    #[inline]
    pub(crate) fn completed(
        self,
        id: TaskId,
        by: &crate::address::Slot<M>,
        reply: Option<M>,
        trail: Vec<AuditEntry>,
    ) {
        match self {
            Reply::Caller(tx) if id.submitted_at(by.uid) => {
                let _ = tx.send(Answer::Here { reply, trail });
            }
            to => to.send(Outcome::Completed {
                reply,
                by: by.path.clone(),
                trail,
            }),
        }
    }
}

/// What a caller's channel carries ([`Reply::Caller`]).
pub(crate) enum Answer<M> {
    /// Completed at the node the task was submitted to, which the caller names
    /// ([`Answer::outcome`]; see [`Reply::completed`]).
    Here {
        /// The agent's reply, if any.
        reply: Option<M>,
        /// The audit trail, as in [`Outcome::Completed`].
        trail: Vec<AuditEntry>,
    },
    /// Any other outcome, whole.
    Outcome(Outcome<M>),
}

impl<M> Answer<M> {
    /// The outcome, for a caller that submitted to the node at `path`.
    #[inline]
    pub(crate) fn outcome(self, path: &Path) -> Outcome<M> {
        match self {
            Answer::Here { reply, trail } => Outcome::Completed {
                reply,
                by: path.clone(),
                trail,
            },
            Answer::Outcome(o) => o,
        }
    }
}

impl<M> From<crate::router::arrivals::BranchReply<M>> for Reply<M> {
    fn from(b: crate::router::arrivals::BranchReply<M>) -> Self {
        Reply::Branch(b)
    }
}

impl<M> From<oneshot::Sender<Answer<M>>> for Reply<M> {
    fn from(tx: oneshot::Sender<Answer<M>>) -> Self {
        Reply::Caller(tx)
    }
}

/// A task in flight: head and payload.
pub(crate) struct Task<M> {
    pub(crate) head: TaskHead<M>,
    pub(crate) payload: M,
}

impl<M> fmt::Debug for Task<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Task")
            .field("id", &self.head.id)
            .field("attempt", &self.head.attempt)
            .finish_non_exhaustive()
    }
}

impl<M> Task<M> {
    pub(crate) fn new(id: TaskId, payload: M, reply: Option<Reply<M>>) -> Self {
        Task {
            head: TaskHead {
                id,
                attempt: 0,
                branch: false,
                meta: None,
                reply,
            },
            payload,
        }
    }
}

/// Several tasks in one mailbox message (`AgentRef::send_batch`). Each is a task of
/// its own, with its own id (consecutive from `first`), attempts and outcome; none has
/// a reply port. Iterating yields them in order.
pub(crate) struct Batch<M> {
    uid: u32,
    next: u64,
    payloads: std::vec::IntoIter<M>,
}

impl<M> Batch<M> {
    /// The batch of `payloads` whose first task is the `first`-th submitted at `uid`.
    pub(crate) fn new(uid: u32, first: u64, payloads: Vec<M>) -> Self {
        Batch {
            uid,
            next: first,
            payloads: payloads.into_iter(),
        }
    }

    /// Tasks not yet taken out.
    pub(crate) fn len(&self) -> usize {
        self.payloads.len()
    }

    /// The payloads not yet taken out (to give them back on a refused send).
    pub(crate) fn into_payloads(self) -> Vec<M> {
        self.payloads.collect()
    }
}

impl<M> Iterator for Batch<M> {
    type Item = Task<M>;

    #[inline]
    fn next(&mut self) -> Option<Task<M>> {
        let payload = self.payloads.next()?;
        let id = TaskId::at(self.uid, self.next);
        self.next += 1;
        Some(Task::new(id, payload, None))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.payloads.size_hint()
    }
}

impl<M> fmt::Debug for Batch<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("next", &TaskId::at(self.uid, self.next))
            .field("len", &self.payloads.len())
            .finish()
    }
}

impl<M> TaskHead<M> {
    pub(crate) fn meta_mut(&mut self) -> &mut TaskMeta<M> {
        self.meta.get_or_insert_with(Default::default)
    }

    /// Part of a chained pipeline run: its resolutions are the chain's hops.
    #[inline]
    pub(crate) fn in_chain(&self) -> bool {
        self.meta.as_ref().is_some_and(|m| m.chain.is_some())
    }

    pub(crate) fn escalation(&self) -> Option<&EscalationInfo> {
        self.meta.as_ref().and_then(|m| m.escalation.as_deref())
    }

    pub(crate) fn record(&mut self, entry: AuditEntry) {
        self.meta_mut().trail.push(entry);
    }

    pub(crate) fn budget(&self) -> Option<&std::sync::Arc<crate::budget::Budget>> {
        self.meta.as_ref().and_then(|m| m.budget.as_ref())
    }

    pub(crate) fn take_trail(&mut self) -> Vec<AuditEntry> {
        self.meta
            .as_mut()
            .map(|m| std::mem::take(&mut m.trail))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::Path;

    #[test]
    fn a_child_path_is_the_parent_the_segment_and_the_index_in_decimal() {
        let root = Path::new("ward");
        for (index, want) in [
            (0, "ward/monitor/0"),
            (7, "ward/monitor/7"),
            (10, "ward/monitor/10"),
            (4093, "ward/monitor/4093"),
            (4_000_000_007, "ward/monitor/4000000007"),
        ] {
            assert_eq!(root.child("monitor", index).as_str(), want);
        }
        assert_eq!(
            root.child("monitor", usize::MAX).as_str(),
            format!("ward/monitor/{}", usize::MAX)
        );
        assert_eq!(
            root.child("décision", 3).child("split", 12).as_str(),
            "ward/décision/3/split/12"
        );
    }
}
