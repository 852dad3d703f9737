//! # echelon
//!
//! A runtime for multi-agent systems on [`ractor`] actors. Every agent is a supervised
//! actor with its own mailbox; supervisors implement the hierarchical pattern with a
//! span of control, escalation thresholds and OTP-style restarts; nothing submitted is
//! lost silently: every task ends as completed, escalated out of the top, or failed
//! with a reason, and the counters prove it.
//!
//! Start with [`Agent`] (the user trait), [`Verdict`] (what became of a message) and
//! [`Hierarchy::builder`]. `ARCHITECTURE.md` explains the actors, the path of a task
//! and of an escalation, and what a restart keeps and loses.

pub mod accounting;
pub mod address;
pub mod agent;
#[cfg(feature = "sim")]
pub mod bench;
pub mod budget;
#[cfg(feature = "cluster")]
pub mod cluster;
pub mod codec;
pub mod envelope;
pub mod hierarchy;
pub(crate) mod lead;
pub(crate) mod node;
pub(crate) mod panic;
pub mod pipeline;
pub mod router;
#[cfg(feature = "sim")]
pub mod sim;
pub mod soak;
pub mod supervisor;

pub use accounting::Counters;
pub use address::{AgentRef, BatchIds, SendError};
pub use agent::{Agent, AgentError, Ctx, ErrorKind, Escalation, Message, StopReason, Verdict};
pub use budget::{Budget, BudgetExceeded};
pub use envelope::{
    AuditEntry, Decision, EscalationInfo, EscalationReport, Failure, FailureKind, Outcome, Path,
    Role, TaskId,
};
pub use hierarchy::{
    AddressError, BuildError, Escalations, Hierarchy, HierarchyBuilder, ShutdownReport, Tier,
    TreeNode,
};
pub use pipeline::{
    Pipeline, PipelineBuilder, PipelineHandle, Retry, RetryOn, RunError, RunReport, Stage,
    StageError, StageReport, StageStatus,
};
pub use router::{
    BranchReport, BranchStatus, Breaker, BreakerState, Gather, GatherError, Gathered, Partial,
    Route, Router, RouterBuilder, RouterHandle,
};
pub use supervisor::{
    Backoff, Intensity, RestartPolicy, SpanOfControl, SpanPolicy, Strategy, Threshold,
};

/// Everything needed to write agents and build hierarchies.
pub mod prelude {
    pub use crate::{
        Agent, AgentError, AgentRef, Backoff, Breaker, Budget, Ctx, Escalation, Gather, Hierarchy,
        Intensity, Outcome, Pipeline, RestartPolicy, Retry, Route, Router, SpanOfControl, Stage,
        StageError, Strategy, Threshold, Tier, Verdict,
    };
}

/// The README's examples, compiled (and run where they can) as doctests so they cannot
/// rot. One of them uses the `cluster` feature, so they are tested with it on
/// (`cargo test --all-features`, what CI runs).
#[doc = include_str!("../README.md")]
#[cfg(all(doctest, feature = "cluster"))]
pub struct ReadmeDoctests;
