//! The [`Agent`] trait: the one piece of user code echelon runs.
//!
//! An agent is a value that handles messages of one domain type, one at a time, and
//! says for each what became of it: a [`Verdict`]. Each agent lives inside its own
//! `ractor` actor with its own mailbox, supervised by its team's supervisor.
//!
//! # What an agent may assume
//! - `handle` is never called concurrently on the same agent: messages are processed
//!   one at a time, in the order they arrived in the mailbox (per sender FIFO).
//! - `on_start` has completed successfully before the first `handle` of an incarnation.
//! - The [`Ctx`] is the agent's own: its path, its seeded RNG, and the task being handled.
//!
//! # What an agent must promise
//! - Return a verdict for every message: it is the task's single outcome. A verdict
//!   is a value, so a task cannot be both replied to and escalated.
//! - Not block the thread: `handle` is async and runs on the tokio runtime.
//!
//! # Crashes and restarts
//! A panic in `handle` or `on_start`, or an `Err(AgentError::crash(..))`, is a crash of
//! this agent. The agent's actor catches it and asks its supervisor what to do; on a
//! restart, the old value is dropped (after [`Agent::on_stop`] with
//! [`StopReason::Restart`]) and a fresh one is built by the factory the hierarchy was
//! given, then `on_start` runs. **Nothing in the agent value survives a restart**; the
//! mailbox does, and the task that crashed is handed to the new incarnation again
//! until the attempt limit, after which it fails with the crash reason.
//! An `Err(AgentError::reject(..))` fails only that task: no restart, no retry.

use std::fmt;
use std::future::Future;

pub(crate) mod actor;
mod context;

pub use context::Ctx;

use crate::address::AgentRef;

/// The bound on a domain message type. Any `Clone + Send + 'static` type qualifies.
///
/// `Clone` is what makes redelivery possible: before a handler runs, the runtime keeps
/// a copy of the message so that a crashed attempt can be retried. With
/// `max_attempts(1)` no copy is taken. Keep large payloads behind an `Arc`.
pub trait Message: Clone + Send + 'static {}
impl<T: Clone + Send + 'static> Message for T {}

/// User logic for one agent. See the [module documentation](self) for the contract.
///
/// ```
/// use echelon::prelude::*;
///
/// #[derive(Clone, Debug)]
/// enum Ward { Reading { spo2: f64 } }
///
/// struct Monitor;
///
/// impl Agent for Monitor {
///     type Msg = Ward;
///     async fn handle(&mut self, _ctx: &mut Ctx<Ward>, msg: Ward) -> Result<Verdict<Ward>, AgentError> {
///         let Ward::Reading { spo2 } = msg;
///         if spo2 < 0.90 {
///             Ok(Verdict::escalate(1.0 - spo2, "low SpO2", msg))
///         } else {
///             Ok(Verdict::Done)
///         }
///     }
/// }
/// ```
pub trait Agent: Send + 'static {
    /// The domain message type shared by every agent of a hierarchy.
    type Msg: Message;

    /// Handle one message and say what became of it.
    ///
    /// # Errors
    /// `Err(AgentError::crash(..))` (also what `?` produces) crashes the agent: it is
    /// restarted per its supervisor's strategy and the message is redelivered.
    /// `Err(AgentError::reject(..))` fails just this task.
    fn handle(
        &mut self,
        ctx: &mut Ctx<Self::Msg>,
        msg: Self::Msg,
    ) -> impl Future<Output = Result<Verdict<Self::Msg>, AgentError>> + Send;

    /// Called when an incarnation starts, before its first message: at spawn and after
    /// every restart. An error or panic here is a crash (at spawn time it fails the
    /// spawn of the hierarchy with the agent's path and the reason).
    ///
    /// Sending to another agent without waiting is fine: a message to an agent not
    /// started yet waits for it. A `call` returns too, because agents start
    /// concurrently (one team's agents together, teams in parallel): the agent called
    /// goes on starting while this one waits. The exception is a cycle: if that agent's
    /// own `on_start` waits on this one, directly or through others, neither start ever
    /// ends.
    ///
    /// The starts of one team's agents share a thread (the supervisor's task), so this
    /// hook must not block its thread: wait with `.await`, not with a blocking call.
    fn on_start(
        &mut self,
        ctx: &mut Ctx<Self::Msg>,
    ) -> impl Future<Output = Result<(), AgentError>> + Send {
        let _ = ctx;
        async { Ok(()) }
    }

    /// Called when an incarnation ends: before a restart (the value is then dropped),
    /// or when the agent stops. Not called if the process aborts or the actor is
    /// killed. A panic here is recorded and ignored.
    fn on_stop(
        &mut self,
        ctx: &mut Ctx<Self::Msg>,
        reason: &StopReason,
    ) -> impl Future<Output = ()> + Send {
        let _ = (ctx, reason);
        async {}
    }
}

/// What became of a message: its single outcome at this agent.
#[derive(Debug)]
pub enum Verdict<M> {
    /// Handled here; the task is complete.
    Done,
    /// Handled here with a reply for the caller of `call` (ignored for `send`).
    Reply(M),
    /// Not for this level: goes to the supervisor, which keeps it (below threshold),
    /// folds it (repeat in window) or passes it up to the next level. Build it with
    /// [`Verdict::escalate`] or from an [`Escalation`] (`escalation.into()`).
    ///
    /// Boxed: every handler returns a verdict, and the escalation (a reason, a key and
    /// a payload) would otherwise make every verdict that size, moved several times
    /// per message; escalations are rare and allocate their reason anyway.
    Escalate(Box<Escalation<M>>),
    /// Hand the same task, with a new payload, to another agent.
    Forward {
        /// The agent that takes over the task.
        to: AgentRef<M>,
        /// The payload it receives.
        msg: M,
    },
}

impl<M> Verdict<M> {
    /// Escalate with a severity in `0.0..=1.0` (NaN counts as 1.0: an unreadable
    /// severity is never silently absorbed), a reason and a payload for the level above.
    pub fn escalate(severity: f64, reason: impl Into<String>, payload: M) -> Self {
        Verdict::Escalate(Box::new(Escalation::new(severity, reason, payload)))
    }
}

impl<M> From<Escalation<M>> for Verdict<M> {
    /// [`Verdict::Escalate`] with this escalation.
    fn from(escalation: Escalation<M>) -> Self {
        Verdict::Escalate(Box::new(escalation))
    }
}

/// An escalation request from an agent.
#[derive(Debug)]
pub struct Escalation<M> {
    /// Severity in `0.0..=1.0`; compared with each supervisor's threshold.
    pub severity: f64,
    /// Why, in words a person on call can act on.
    pub reason: String,
    /// What the level above receives.
    pub payload: M,
    /// Key for repeat suppression; by default the originating agent and the reason.
    pub key: Option<String>,
}

impl<M> Escalation<M> {
    /// An escalation with the default suppression key (originating agent and reason).
    /// Severity is clamped to `0.0..=1.0`; NaN becomes 1.0.
    pub fn new(severity: f64, reason: impl Into<String>, payload: M) -> Self {
        Escalation {
            severity: sanitize_severity(severity),
            reason: reason.into(),
            payload,
            key: None,
        }
    }

    /// Use an explicit key for repeat suppression (e.g. a patient id and a condition).
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }
}

/// Clamp a severity to `0.0..=1.0`; NaN becomes 1.0 (an unreadable severity is never
/// silently absorbed). Applied when an escalation is made and again where it is judged,
/// since [`Escalation`]'s fields are public.
pub(crate) fn sanitize_severity(severity: f64) -> f64 {
    if severity.is_nan() {
        1.0
    } else {
        severity.clamp(0.0, 1.0)
    }
}

/// Why an agent incarnation is stopping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The agent is being restarted: after its own crash, a sibling's (one-for-all,
    /// rest-for-one), its team's restart, or a normal exit of a permanent agent. The
    /// value is dropped after this call.
    Restart,
    /// The agent stops for good: the hierarchy is shutting down, its team is stopping,
    /// or it crashed and its policy (temporary) or its supervisor does not restart it.
    Shutdown,
    /// The agent asked to stop ([`Ctx::stop`]).
    Normal,
}

/// Whether an [`AgentError`] crashes the agent or only fails the task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The agent crashed: restart it and redeliver the task.
    Crash,
    /// The task cannot be handled: fail it, keep the agent.
    Reject,
}

/// The error a handler returns. A boxed error at the user-code boundary.
///
/// `?` on any `std::error::Error` gives a crash; use [`AgentError::reject`] for input
/// that no retry can fix.
pub struct AgentError {
    kind: ErrorKind,
    source: Box<dyn std::error::Error + Send + Sync + 'static>,
}

impl AgentError {
    /// A crash: the agent is restarted and the task redelivered.
    pub fn crash(reason: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        AgentError {
            kind: ErrorKind::Crash,
            source: reason.into(),
        }
    }

    /// A rejection: this task fails with `reason`; the agent carries on.
    pub fn reject(reason: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        AgentError {
            kind: ErrorKind::Reject,
            source: reason.into(),
        }
    }

    /// Crash or reject.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for AgentError {
    fn from(e: E) -> Self {
        AgentError::crash(e)
    }
}

impl fmt::Debug for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentError")
            .field("kind", &self.kind)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.source, f)
    }
}
