//! Supervisors: the hierarchical pattern.
//!
//! A supervisor owns a team: optionally a *lead* agent (the team's manager, e.g. a
//! diagnostic agent) and its *reports* (agents or sub-teams). It
//! - restarts failed children by [`Strategy`], [`RestartPolicy`], [`Intensity`] and
//!   [`Backoff`], and fails upward when its intensity is exceeded;
//! - filters escalations from its reports by the reports' tier [`Threshold`] and
//!   suppression window, and passes the rest to its lead (or, without a lead, up to its
//!   own supervisor; from the root, out to the escalation sink);
//! - keeps its [`SpanOfControl`], splitting into team leads when asked to.
//!
//! Layout: `restart` (strategies, intensity, backoff) · `escalation` (thresholds,
//! suppression) · `span` (limit, auto-split) · `spec` (what to spawn) · `actor`.

pub(crate) mod actor;
mod escalation;
mod restart;
mod span;
pub(crate) mod spec;

pub use escalation::Threshold;
pub use restart::{Backoff, Intensity, RestartPolicy, Strategy};
pub use span::{SpanOfControl, SpanPolicy};

pub(crate) use escalation::Suppressor;
pub(crate) use restart::RestartWindow;
pub(crate) use span::{split, Group};

/// The restart and escalation policy of one supervisor.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TeamPolicy {
    pub(crate) strategy: Strategy,
    pub(crate) intensity: Intensity,
    pub(crate) backoff: Option<Backoff>,
    /// The threshold of the tier this supervisor's reports belong to.
    pub(crate) threshold: Threshold,
}
