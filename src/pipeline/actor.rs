//! The pipeline lead and the run task that drives one request through the stages.

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{PipelineConfig, RunError, RunReport, StageFn, StageReport, StageStatus};
use crate::address::{AgentRef, Slot};
use crate::budget::Budget;
use crate::envelope::{BranchEscalation, Detail, FailureKind, Outcome, TaskHead};
use crate::hierarchy::shared::Shared;
use crate::lead::{Lead, LeadNode};
use crate::panic::CatchUnwind;
use crate::pipeline::stage::Retry;
use crate::pipeline::StageError;

/// Where a stage's work goes.
pub(crate) enum Entry<M> {
    /// The entry slot of the stage's node (agent, router or team lead).
    Node(Arc<Slot<M>>),
    Function(StageFn<M>),
}

pub(crate) struct StageRuntime<M> {
    pub(crate) name: String,
    pub(crate) entry: Entry<M>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) retry: Retry,
    pub(crate) cost: u64,
    pub(crate) fallback: Option<Box<StageRuntime<M>>>,
}

/// Pipeline state that outlives an incarnation of its actor.
pub(crate) struct PipelineShared<M> {
    pub(crate) cfg: Arc<PipelineConfig<M>>,
    pub(crate) stages: Vec<StageRuntime<M>>,
    pub(crate) runs: crate::lead::Runs,
    /// Runs take the chained fast path (`PipelineConfig::chainable`).
    pub(crate) chained: bool,
    /// Where the pipeline sits, set when its lead first starts.
    pub(crate) home: std::sync::OnceLock<super::chain::Home<M>>,
}

impl<M: crate::Message> Lead<M> for PipelineShared<M> {
    const KIND: &'static str = "pipeline";
    fn runs(&self) -> &crate::lead::Runs {
        &self.runs
    }

    fn init(&self, node: &LeadNode<'_, M>) {
        crate::panic::install_quiet_hook();
        let _ = self.home.set(super::chain::Home {
            shared: Arc::downgrade(node.shared),
            slot: node.slot.clone(),
            escalate_to: node.escalate_to.clone(),
        });
    }

    fn request(this: &Arc<Self>, node: &LeadNode<'_, M>, mut head: TaskHead<M>, payload: M) {
        // a run that is already a chained run's stage (forwarded here) is coordinated,
        // so that its own chain resolves it
        if this.chained && !head.in_chain() {
            return super::chain::start(this, node, head, payload);
        }
        let budget = match head.budget() {
            Some(b) => Some(b.clone()),
            None => this.cfg.budget.map(|units| {
                let b = Arc::new(Budget::new(units));
                head.meta_mut().budget = Some(b.clone());
                b
            }),
        };
        let seed = node.shared.seed ^ head.id.0.rotate_left(17);
        let run = Run {
            p: this.clone(),
            shared: node.shared.clone(),
            slot: node.slot.clone(),
            escalate_to: node.escalate_to.clone(),
            budget,
            started: Instant::now(),
            rng: StdRng::seed_from_u64(seed),
        };
        // counted before the task exists, so a stop never misses it
        let running = this.runs.start();
        node.shared.spawn(run.run(head, payload, running));
    }
}

enum StageOut<M> {
    Output(M),
    Escalated(BranchEscalation<M>),
    Failed(RunError),
}

enum Attempt<M> {
    Output(Option<M>),
    Escalated(BranchEscalation<M>),
    Failed {
        reason: String,
        retryable: bool,
        timed_out: bool,
    },
}

struct Run<M> {
    p: Arc<PipelineShared<M>>,
    shared: Arc<Shared<M>>,
    slot: Arc<Slot<M>>,
    escalate_to: Arc<Slot<M>>,
    budget: Option<Arc<Budget>>,
    started: Instant,
    rng: StdRng,
}

impl<M: crate::Message> Run<M> {
    async fn run(mut self, mut head: TaskHead<M>, payload: M, _running: crate::lead::RunGuard) {
        let p = self.p.clone();
        let mut reports: Vec<StageReport> = p
            .stages
            .iter()
            .map(|s| StageReport {
                name: s.name.clone(),
                attempts: 0,
                elapsed: Duration::ZERO,
                spent: 0,
                status: StageStatus::NotRun,
            })
            .collect();
        let mut current = 0usize;
        let mut stage_started = self.started;
        let started = self.started;
        // Err(Some(d)): the deadline passed; Err(None): the hierarchy stopped
        let ended: Result<StageOut<M>, Option<Duration>> = {
            let drive = self.drive(payload, &mut reports, &mut current, &mut stage_started);
            let bounded = async {
                match p.cfg.deadline {
                    Some(d) => tokio::time::timeout_at(started + d, drive)
                        .await
                        .map_err(|_| Some(d)),
                    None => Ok(drive.await),
                }
            };
            tokio::select! {
                out = bounded => out,
                () = p.runs.aborted() => Err(None),
            }
        };
        let stage_name = p
            .stages
            .get(current)
            .map(|s| s.name.clone())
            .unwrap_or_default();
        let out = match ended {
            Ok(out) => out,
            Err(cut) => {
                if let Some(r) = reports.get_mut(current) {
                    r.status = StageStatus::Interrupted;
                    r.elapsed = stage_started.elapsed();
                }
                StageOut::Failed(match cut {
                    Some(deadline) => RunError::Deadline {
                        stage: stage_name,
                        deadline,
                    },
                    None => RunError::Stopped { stage: stage_name },
                })
            }
        };
        let spent = self.budget.as_ref().map_or(0, |b| b.spent());
        let elapsed = self.started.elapsed();
        let detail = crate::router::actor::take_detail(&mut head);
        let result = match &out {
            StageOut::Output(m) => Ok(m.clone()),
            StageOut::Escalated(e) => Err(RunError::Escalated {
                stage: p
                    .stages
                    .get(current)
                    .map(|s| s.name.clone())
                    .unwrap_or_default(),
                severity: e.severity,
                reason: e.reason.clone(),
            }),
            StageOut::Failed(e) => Err(e.clone()),
        };
        // resolve (and count) first, then tell the caller
        match out {
            StageOut::Output(m) => self.shared.complete(&self.slot, head, Some(m)),
            StageOut::Escalated(esc) => {
                self.shared
                    .escalate_from(&self.slot, &self.escalate_to, head, esc)
            }
            StageOut::Failed(e) => {
                let kind = match e {
                    RunError::Budget { .. } => FailureKind::Rejected,
                    RunError::Stopped { .. } => FailureKind::Stopped,
                    _ => FailureKind::Routing,
                };
                self.shared.fail_as(&self.slot, head, &e.to_string(), kind);
            }
        }
        if let Some(tx) = detail {
            let _ = tx.send(Detail::Run(RunReport {
                result,
                stages: reports,
                elapsed,
                spent,
            }));
        }
    }

    /// Run every stage in order; the output of one is the input of the next.
    async fn drive(
        &mut self,
        mut input: M,
        reports: &mut [StageReport],
        current: &mut usize,
        stage_started: &mut Instant,
    ) -> StageOut<M> {
        let p = self.p.clone();
        let n = p.stages.len();
        for (i, stage) in p.stages.iter().enumerate() {
            *current = i;
            *stage_started = Instant::now();
            // spend is attributed by difference, so a nested pipeline spending from the
            // same budget counts toward this stage
            let spent_before = self.budget.as_ref().map_or(0, |b| b.spent());
            let out = self.stage(stage, i, n, input, &mut reports[i]).await;
            reports[i].elapsed = stage_started.elapsed();
            reports[i].spent = self.budget.as_ref().map_or(0, |b| b.spent()) - spent_before;
            // a refused spend anywhere in the stage (a branch of a router, say) ends
            // the run, even if the stage salvaged a partial result
            if let Some(exceeded) = self.budget.as_ref().and_then(|b| b.refusal()) {
                reports[i].status = StageStatus::Failed(exceeded.to_string());
                return StageOut::Failed(RunError::Budget {
                    stage: stage.name.clone(),
                    exceeded,
                });
            }
            match out {
                StageOut::Output(m) => {
                    if reports[i].status == StageStatus::NotRun {
                        reports[i].status = StageStatus::Done;
                    }
                    input = m;
                }
                other => return other,
            }
        }
        StageOut::Output(input)
    }

    /// One stage: attempts with retry and backoff, then the fallback.
    async fn stage(
        &mut self,
        stage: &StageRuntime<M>,
        i: usize,
        n: usize,
        input: M,
        report: &mut StageReport,
    ) -> StageOut<M> {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            report.attempts = attempt;
            if let Err(out) = self.charge(stage) {
                report.status = StageStatus::Failed(out.to_string());
                return StageOut::Failed(out);
            }
            let (reason, retryable, timed_out) = match self.attempt(stage, input.clone()).await {
                Attempt::Output(Some(m)) => return StageOut::Output(m),
                Attempt::Output(None) => return StageOut::Output(input),
                Attempt::Escalated(e) => {
                    report.status = StageStatus::Escalated(e.reason.clone());
                    return StageOut::Escalated(e);
                }
                Attempt::Failed {
                    reason,
                    retryable,
                    timed_out,
                } => (reason, retryable, timed_out),
            };
            if let Some(exceeded) = self.budget.as_ref().and_then(|b| b.refusal()) {
                report.status = StageStatus::Failed(reason);
                return StageOut::Failed(RunError::Budget {
                    stage: stage.name.clone(),
                    exceeded,
                });
            }
            if retryable && stage.retry.retries(timed_out) && attempt < stage.retry.max_attempts {
                let delay = stage.retry.delay(attempt, &mut self.rng);
                tokio::time::sleep(delay).await;
                continue;
            }
            if let Some(fb) = &stage.fallback {
                if let Err(out) = self.charge(fb) {
                    report.status = StageStatus::Failed(out.to_string());
                    return StageOut::Failed(out);
                }
                match self.attempt(fb, input.clone()).await {
                    Attempt::Output(out) => {
                        report.status = StageStatus::Fallback { reason };
                        return StageOut::Output(out.unwrap_or(input));
                    }
                    Attempt::Escalated(e) => {
                        report.status = StageStatus::Escalated(e.reason.clone());
                        return StageOut::Escalated(e);
                    }
                    Attempt::Failed {
                        reason: fb_reason, ..
                    } => {
                        let reason =
                            format!("{reason}; fallback {:?} failed too: {fb_reason}", fb.name);
                        report.status = StageStatus::Failed(reason.clone());
                        return StageOut::Failed(RunError::Stage {
                            stage: stage.name.clone(),
                            index: i + 1,
                            stages: n,
                            attempt,
                            reason,
                        });
                    }
                }
            }
            report.status = StageStatus::Failed(reason.clone());
            return StageOut::Failed(RunError::Stage {
                stage: stage.name.clone(),
                index: i + 1,
                stages: n,
                attempt,
                reason,
            });
        }
    }

    fn charge(&self, stage: &StageRuntime<M>) -> Result<(), RunError> {
        match (&self.budget, stage.cost) {
            (Some(b), cost) if cost > 0 => b.spend(cost).map_err(|exceeded| RunError::Budget {
                stage: stage.name.clone(),
                exceeded,
            }),
            _ => Ok(()),
        }
    }

    /// One attempt of a stage, bounded by its timeout.
    async fn attempt(&self, stage: &StageRuntime<M>, input: M) -> Attempt<M> {
        let timeout = stage.timeout;
        let late = |d: Duration| Attempt::Failed {
            reason: format!("no answer within {d:?}"),
            retryable: true,
            timed_out: true,
        };
        match &stage.entry {
            Entry::Node(slot) => {
                let (tx, rx) = oneshot::channel();
                let target = AgentRef {
                    slot: slot.clone(),
                    shared: self.shared.clone(),
                };
                if let Err(e) = target.submit_branch(input, tx, self.budget.clone()) {
                    return Attempt::Failed {
                        reason: e.to_string(),
                        retryable: false,
                        timed_out: false,
                    };
                }
                let got = match timeout {
                    Some(d) => match tokio::time::timeout(d, rx).await {
                        Ok(v) => v,
                        Err(_) => return late(d),
                    },
                    None => rx.await,
                };
                match got.map(|a| a.outcome(&slot.path)) {
                    Ok(Outcome::Completed { reply, .. }) => Attempt::Output(reply),
                    Ok(Outcome::Escalated {
                        severity,
                        reason,
                        origin,
                        payload,
                        trail,
                    }) => Attempt::Escalated(BranchEscalation {
                        severity,
                        reason,
                        origin,
                        payload,
                        trail,
                    }),
                    Ok(Outcome::Failed(f)) => Attempt::Failed {
                        retryable: f.kind != FailureKind::Rejected,
                        reason: f.reason,
                        timed_out: false,
                    },
                    Err(_) => Attempt::Failed {
                        reason: "the stage's task was lost with its actor".to_string(),
                        retryable: true,
                        timed_out: false,
                    },
                }
            }
            Entry::Function(f) => {
                // the function itself runs user code before it returns its future
                let fut = match crate::panic::catch(|| f(input)) {
                    Ok(fut) => CatchUnwind::new(fut),
                    Err(panic) => {
                        return Attempt::Failed {
                            reason: panic,
                            retryable: true,
                            timed_out: false,
                        }
                    }
                };
                let got = match timeout {
                    Some(d) => match tokio::time::timeout(d, fut).await {
                        Ok(v) => v,
                        Err(_) => return late(d),
                    },
                    None => fut.await,
                };
                match got {
                    Ok(Ok(m)) => Attempt::Output(Some(m)),
                    Ok(Err(StageError::Retryable(reason))) => Attempt::Failed {
                        reason,
                        retryable: true,
                        timed_out: false,
                    },
                    Ok(Err(StageError::Permanent(reason))) => Attempt::Failed {
                        reason,
                        retryable: false,
                        timed_out: false,
                    },
                    Err(panic) => Attempt::Failed {
                        reason: panic,
                        retryable: true,
                        timed_out: false,
                    },
                }
            }
        }
    }
}
