//! Pipelines: the sequential pattern.
//!
//! A pipeline is the lead of a team whose reports are its stage nodes. Each request
//! becomes a **run**: the output of one stage is the input of the next. A stage is an
//! agent, a plain async function, a router, or a supervised team ([`Stage`]); each has
//! its own timeout, [`Retry`] policy (exponential backoff, seeded jitter, which failures
//! retry), optional fallback stage and cost. A run has an optional deadline and budget
//! ([`crate::Budget`]), shared with every branch it fans out to.
//!
//! Many runs are in flight at once and stages work concurrently on different runs
//! (each stage node is one actor with its own mailbox).
//!
//! **Two paths.** When every stage is a single agent or a plain function with one
//! attempt, no timeout and no fallback ([`PipelineHandle::is_chained`]), a run is
//! *chained*: its task goes from each stage's mailbox straight to the next one's and
//! the stage where it ends answers (see `chain`). Otherwise a coordinator task drives
//! each run, sending every stage a branch and waiting for it (see `actor`): retries,
//! stage timeouts, fallbacks, router and team stages need it. Both give the same
//! outputs, failures and reports; a chained run is one task in the counters, a
//! coordinated one a task plus a branch per node stage.
//!
//! **Ordering:** each stage takes its inputs in the order they reach its mailbox.
//! Chained runs from one sender keep their order through agent stages; a function
//! stage, and the coordinator, let a fast run overtake a slow or retried one. A failure names the stage,
//! its index, the attempt and the reason ([`RunError`]); [`RunReport`] gives every
//! stage's attempts, time and spend.
//!
//! Layout: `stage` (stages, retry) · `actor` (the pipeline actor and the coordinated run
//! task) · `chain` (the chained fast path) · this file (config, builder, handle, report).

pub(crate) mod actor;
pub(crate) mod chain;
mod stage;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use stage::{Retry, RetryOn, Stage, StageError};
pub(crate) use stage::{StageFn, StageKind};

use crate::address::{AgentRef, SendError};
use crate::budget::{Budget, BudgetExceeded};
use crate::envelope::{Detail, Outcome};
use crate::hierarchy::{BuildError, Hierarchy, ShutdownReport, Tier};
use crate::Counters;

/// Everything a pipeline node needs, shared by every pipeline of a tier.
pub(crate) struct PipelineConfig<M> {
    pub(crate) stages: Vec<Stage<M>>,
    pub(crate) deadline: Option<Duration>,
    pub(crate) budget: Option<u64>,
    /// False: always coordinate ([`PipelineBuilder::coordinated`]).
    pub(crate) chain: bool,
}

impl<M: crate::Message> PipelineConfig<M> {
    /// Whether runs take the chained fast path: every stage is a single agent
    /// ([`Stage::agent`], or a team of one agent) or a plain function
    /// ([`Stage::function`]), with one attempt ([`Retry::none`], the default), no
    /// timeout and no fallback. Costs, the run budget and the run deadline are fine.
    /// Anything else (retries, stage timeouts, fallbacks, router and team stages)
    /// needs the coordinator.
    pub(crate) fn chainable(&self) -> bool {
        self.chain
            && !self.stages.is_empty()
            && self.stages.iter().all(|s| {
                let kind_ok = match &s.kind {
                    StageKind::Function(_) => true,
                    StageKind::Node(tiers) => tiers.len() == 1 && tiers[0].is_single_agent(),
                };
                kind_ok && s.retry.max_attempts <= 1 && s.timeout.is_none() && s.fallback.is_none()
            })
    }
}

impl<M> fmt::Debug for PipelineConfig<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipelineConfig")
            .field("stages", &self.stages)
            .field("deadline", &self.deadline)
            .field("budget", &self.budget)
            .finish()
    }
}

/// What became of one stage of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StageStatus {
    /// Not reached (an earlier stage ended the run).
    NotRun,
    /// Produced its output.
    Done,
    /// Its retries were exhausted and the fallback produced the output.
    Fallback {
        /// Why the primary stage gave up.
        reason: String,
    },
    /// Failed for good: the run ends here.
    Failed(String),
    /// Escalated: the run ends here and escalates.
    Escalated(String),
    /// The run's deadline passed, or the hierarchy stopped, during this stage.
    Interrupted,
}

/// One stage of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageReport {
    /// The stage's name.
    pub name: String,
    /// Attempts made (the fallback's not included).
    pub attempts: u32,
    /// Time spent in the stage, retries and backoff included.
    pub elapsed: Duration,
    /// Budget units spent while in this stage.
    pub spent: u64,
    /// What became of it.
    pub status: StageStatus,
}

/// Why a run produced no output.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// A stage failed after its attempts (and its fallback, if any).
    #[error("stage {stage:?} ({index} of {stages}) failed on attempt {attempt}: {reason}")]
    Stage {
        /// The stage.
        stage: String,
        /// Its position, from 1.
        index: usize,
        /// How many stages the pipeline has.
        stages: usize,
        /// The last attempt.
        attempt: u32,
        /// Why.
        reason: String,
    },
    /// The run's deadline passed.
    #[error("the run exceeded its deadline of {deadline:?} during stage {stage:?}")]
    Deadline {
        /// The stage running at the deadline.
        stage: String,
        /// The deadline.
        deadline: Duration,
    },
    /// The run's budget ran out.
    #[error("stage {stage:?}: {exceeded}")]
    Budget {
        /// The stage that asked.
        stage: String,
        /// The refused spend.
        exceeded: BudgetExceeded,
    },
    /// A stage escalated; the run escalated instead of finishing.
    #[error("stage {stage:?} escalated (severity {severity}): {reason}")]
    Escalated {
        /// The stage.
        stage: String,
        /// Its severity.
        severity: f64,
        /// Its reason.
        reason: String,
    },
    /// The hierarchy stopped (hard stop) while the run was in this stage.
    #[error("the hierarchy stopped during stage {stage:?}")]
    Stopped {
        /// The stage.
        stage: String,
    },
    /// The run could not be reported (the pipeline's actor died with it).
    #[error("the run was lost: {0}")]
    Lost(String),
}

/// The full account of one run.
#[derive(Clone, Debug, PartialEq)]
pub struct RunReport<M> {
    /// The last stage's output, or why there is none.
    pub result: Result<M, RunError>,
    /// Every stage, in order.
    pub stages: Vec<StageReport>,
    /// From the run's arrival at the pipeline to its end.
    pub elapsed: Duration,
    /// Budget units spent by the whole run (its branches included).
    pub spent: u64,
}

/// Entry point: `Pipeline::builder("review")`.
#[derive(Debug)]
pub struct Pipeline;

impl Pipeline {
    /// Start declaring a pipeline named `name`.
    pub fn builder<M: crate::Message>(name: impl Into<String>) -> PipelineBuilder<M> {
        PipelineBuilder {
            name: name.into(),
            cfg: PipelineConfig {
                stages: Vec::new(),
                deadline: None,
                budget: None,
                chain: true,
            },
            seed: 0,
            max_attempts: 1,
            restart: None,
        }
    }
}

/// Declares a pipeline.
pub struct PipelineBuilder<M> {
    name: String,
    cfg: PipelineConfig<M>,
    seed: u64,
    max_attempts: u32,
    restart: Option<(crate::Strategy, crate::Intensity)>,
}

impl<M> fmt::Debug for PipelineBuilder<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipelineBuilder")
            .field("name", &self.name)
            .field("cfg", &self.cfg)
            .finish()
    }
}

impl<M: crate::Message> PipelineBuilder<M> {
    /// Append a stage.
    pub fn stage(mut self, stage: Stage<M>) -> Self {
        self.cfg.stages.push(stage);
        self
    }

    /// A deadline for the whole run.
    pub fn deadline(mut self, d: Duration) -> Self {
        self.cfg.deadline = Some(d);
        self
    }

    /// A budget of `units` for every run that does not bring its own.
    pub fn budget(mut self, units: u64) -> Self {
        self.cfg.budget = Some(units);
        self
    }

    /// Seed for jitter and the stage agents' RNGs (standalone pipelines).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// In-place redeliveries of a stage's task on a crashing stage agent before the
    /// attempt counts as failed (standalone pipelines; default 1: the stage's
    /// [`Retry`] decides).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// Restart strategy and intensity for the stage nodes (standalone pipelines; in a
    /// hierarchy, the hierarchy's apply). Default: the hierarchy default.
    pub fn restart(mut self, strategy: crate::Strategy, intensity: crate::Intensity) -> Self {
        self.restart = Some((strategy, intensity));
        self
    }

    /// Coordinate every run, even when the stages could be chained: a run task sends
    /// each stage a branch and waits for it. Slower; the outcomes are the same, except
    /// that each stage's branch is a task of its own in the counters. For comparisons
    /// and tests.
    pub fn coordinated(mut self) -> Self {
        self.cfg.chain = false;
        self
    }

    /// Whether this pipeline's runs will take the chained fast path (see
    /// [`PipelineHandle::is_chained`]).
    pub fn is_chained(&self) -> bool {
        self.cfg.chainable()
    }

    /// Use this pipeline as a tier of a hierarchy: `count` pipelines named after it.
    pub fn into_tier(self, count: usize) -> Tier<M> {
        Tier::pipeline(self.name, count, Arc::new(self.cfg))
    }

    /// Spawn a standalone pipeline (a one-team hierarchy named after it).
    ///
    /// # Errors
    /// As [`crate::HierarchyBuilder::spawn`]; a pipeline without stages is
    /// [`BuildError::EmptyTier`].
    pub async fn spawn(self) -> Result<PipelineHandle<M>, BuildError> {
        let name = self.name.clone();
        let chained = self.cfg.chainable();
        let mut b = Hierarchy::builder(name)
            .seed(self.seed)
            .max_attempts(self.max_attempts)
            .span(crate::SpanOfControl::auto_split(64));
        if let Some((strategy, intensity)) = self.restart {
            b = b.restart(strategy, intensity);
        }
        let hierarchy = b
            .tier_with(Tier::pipeline("pipeline", 1, Arc::new(self.cfg)))
            .spawn()
            .await?;
        let entry = hierarchy
            .agent("pipeline/0")
            .map_err(|e| BuildError::Spawn {
                reason: e.to_string(),
            })?;
        Ok(PipelineHandle {
            hierarchy,
            entry,
            chained,
        })
    }
}

/// A running standalone pipeline.
#[derive(Debug)]
pub struct PipelineHandle<M: crate::Message> {
    hierarchy: Hierarchy<M>,
    entry: AgentRef<M>,
    chained: bool,
}

impl<M: crate::Message> PipelineHandle<M> {
    /// Run `msg` through every stage and wait for the report.
    ///
    /// # Errors
    /// [`SendError`] if the pipeline no longer takes work; the message is given back.
    pub async fn call(&self, msg: M) -> Result<RunReport<M>, SendError<M>> {
        self.run(msg, None).await
    }

    /// As [`PipelineHandle::call`], with a budget of `units` for this run.
    ///
    /// # Errors
    /// As [`PipelineHandle::call`].
    pub async fn call_with_budget(&self, msg: M, units: u64) -> Result<RunReport<M>, SendError<M>> {
        self.run(msg, Some(Arc::new(Budget::new(units)))).await
    }

    async fn run(&self, msg: M, budget: Option<Arc<Budget>>) -> Result<RunReport<M>, SendError<M>> {
        let (outcome, detail) = self.entry.submit_with_detail(msg, budget)?;
        match detail.await {
            Ok(Detail::Run(r)) => Ok(r),
            _ => {
                let reason = match outcome.await.map(|a| a.outcome(self.entry.path())) {
                    Ok(Outcome::Failed(f)) => f.reason,
                    Ok(_) => "the pipeline gave no report".to_string(),
                    Err(_) => "the run was lost with the pipeline's actor".to_string(),
                };
                Ok(RunReport {
                    result: Err(RunError::Lost(reason)),
                    stages: Vec::new(),
                    elapsed: Duration::ZERO,
                    spent: 0,
                })
            }
        }
    }

    /// Run `msg` and wait for its outcome as a task (output, escalation, failure).
    ///
    /// # Errors
    /// As [`PipelineHandle::call`].
    pub async fn outcome(&self, msg: M) -> Result<Outcome<M>, SendError<M>> {
        self.entry.call(msg).await
    }

    /// Whether runs take the chained fast path: the run's task goes from each stage's
    /// mailbox straight to the next one's, and only the stage where it ends answers,
    /// instead of a coordinator sending each stage a branch and waiting for it. True
    /// when every stage is a single agent or a plain function, with one attempt, no
    /// timeout and no fallback (costs, budgets and the run deadline are fine).
    pub fn is_chained(&self) -> bool {
        self.chained
    }

    /// The pipeline's entry handle.
    pub fn entry(&self) -> &AgentRef<M> {
        &self.entry
    }

    /// Counters of the whole pipeline (runs and stage branches are both tasks).
    pub fn counters(&self) -> Counters {
        self.hierarchy.counters()
    }

    /// The underlying hierarchy (stage agents are addressable in it).
    pub fn hierarchy(&self) -> &Hierarchy<M> {
        &self.hierarchy
    }

    /// Graceful shutdown (see [`Hierarchy::shutdown`]).
    pub async fn shutdown(self, deadline: Duration) -> ShutdownReport {
        self.hierarchy.shutdown(deadline).await
    }
}
