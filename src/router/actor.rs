//! The router actor and the gather task that fans one request's branches back in.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::breaker::Health;
use super::gather::{decide, BranchReport, BranchStatus, GatherError, Gathered, Partial};
use super::strategy::{pick, PickError};
use super::RouterConfig;
use crate::accounting::bump;
use crate::address::{AgentRef, Slot};
use crate::agent::actor::{refuse, AgentArgs};
use crate::envelope::{
    AuditEntry, Decision, Detail, EscalationInfo, Outcome, Path, Task, TaskHead,
};
use crate::hierarchy::shared::Shared;
use crate::node::{Directive, NodeMsg};
use crate::supervisor::spec::{BoxFuture, SpawnAgent};

/// One worker as the router sees it.
pub(crate) struct Worker<M> {
    pub(crate) slot: Arc<Slot<M>>,
    pub(crate) health: Health,
}

/// Router state that outlives an incarnation of the router's actor.
pub(crate) struct RouterShared<M> {
    pub(crate) cfg: Arc<RouterConfig<M>>,
    pub(crate) workers: Vec<Worker<M>>,
    pub(crate) requests: AtomicU32,
}

pub(crate) struct RouterSpawner<M> {
    pub(crate) inner: Arc<RouterShared<M>>,
}

impl<M: crate::Message> SpawnAgent<M> for RouterSpawner<M> {
    fn spawn(
        &self,
        args: AgentArgs<M>,
        supervisor: ractor::ActorCell,
    ) -> BoxFuture<'_, Result<ActorRef<NodeMsg<M>>, String>> {
        let actor = RouterActor {
            inner: self.inner.clone(),
        };
        Box::pin(async move {
            match Actor::spawn_linked(None, actor, args, supervisor).await {
                Ok((r, _)) => Ok(r),
                Err(e) => Err(e.to_string()),
            }
        })
    }
}

pub(crate) struct RouterActor<M> {
    inner: Arc<RouterShared<M>>,
}

pub(crate) struct RouterState<M> {
    slot: Arc<Slot<M>>,
    shared: Arc<Shared<M>>,
    escalate_to: Arc<Slot<M>>,
    next: usize,
    rng: StdRng,
    stopping: Option<Arc<str>>,
}

impl<M: crate::Message> Actor for RouterActor<M> {
    type Msg = NodeMsg<M>;
    type State = RouterState<M>;
    type Arguments = AgentArgs<M>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: AgentArgs<M>,
    ) -> Result<Self::State, ActorProcessingErr> {
        let seed = args.shared.seed ^ (u64::from(args.slot.uid) << 24);
        Ok(RouterState {
            slot: args.slot,
            shared: args.shared,
            escalate_to: args.escalate_to,
            next: 0,
            rng: StdRng::seed_from_u64(seed),
            stopping: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            NodeMsg::Task(task) => {
                self.on_task(task, state);
                bump(&state.slot.stats.own.settled);
            }
            NodeMsg::Escalation(task) => {
                let reason = format!(
                    "{} is a router: it takes tasks, not escalations",
                    state.slot.path
                );
                state.shared.fail(&state.slot, task.head, &reason);
                bump(&state.slot.stats.own.settled);
            }
            NodeMsg::ChildExit { reply, .. } => {
                let _ = reply.send(Directive::Stop {
                    reason: Arc::from("a router's workers are supervised by its team"),
                });
            }
            NodeMsg::Reset => {
                state.next = 0;
                bump(&state.slot.stats.own.restarts);
            }
            NodeMsg::Stop { reason } => {
                if state.stopping.is_none() {
                    state.stopping = Some(reason.clone());
                    for m in state.slot.close(reason.clone()) {
                        refuse(&state.shared, &state.slot, m, &reason);
                    }
                    let _ = myself.drain();
                }
            }
        }
        Ok(())
    }
}

impl<M: crate::Message> RouterActor<M> {
    fn on_task(&self, task: Task<M>, st: &mut RouterState<M>) {
        let Task { mut head, payload } = task;
        if let Some(reason) = &st.stopping {
            let why = format!("{} stopped before routing the task: {reason}", st.slot.path);
            st.shared.fail(&st.slot, head, &why);
            return;
        }
        if st.shared.aborting() {
            st.shared.fail(
                &st.slot,
                head,
                "the hierarchy stopped before the task was routed",
            );
            return;
        }
        // a worker escalated one of our branches: that is the branch's result
        if head.branch && head.escalation().is_some() {
            st.shared.return_branch_escalation(&st.slot, head, payload);
            return;
        }
        let inner = &self.inner;
        let cfg = &inner.cfg;
        let started = Instant::now();
        if let Some(limit) = cfg.admission {
            if inner.requests.load(Ordering::Acquire) >= limit {
                bump(&st.slot.stats.own.rejected);
                let err = GatherError::AtCapacity { limit };
                finish_without_branches(&st.shared, &st.slot, head, err, started);
                return;
            }
        }
        let now = st.shared.now();
        let cap = cfg.max_in_flight;
        let picked = pick(
            &cfg.route,
            &payload,
            inner.workers.len(),
            &mut st.next,
            &mut st.rng,
            |i| load(&inner.workers[i]),
            |i| {
                let w = &inner.workers[i];
                cap.is_none_or(|c| load(w) < c) && w.health.admit(cfg.breaker.as_ref(), now)
            },
        );
        let chosen = match picked {
            Ok(c) => c,
            Err(e) => {
                bump(&st.slot.stats.own.rejected);
                let why = match e {
                    PickError::NoneEligible => {
                        "every worker is unavailable (breaker open or at its in-flight cap)".to_string()
                    }
                    PickError::ClassifiedOutOfRange { index, workers } => {
                        format!("the classifier chose worker {index} but there are {workers}")
                    }
                    PickError::ClassifiedIneligible { index } => format!(
                        "the classifier chose worker {index}, which is unavailable (breaker open or at its in-flight cap)"
                    ),
                };
                finish_without_branches(
                    &st.shared,
                    &st.slot,
                    head,
                    GatherError::NoWorker(why),
                    started,
                );
                return;
            }
        };
        if head.meta.is_some() {
            let to = chosen
                .iter()
                .map(|&i| inner.workers[i].slot.path.clone())
                .collect();
            head.record(st.shared.entry(&st.slot, Decision::Routed { to }));
        }
        let mut pending = Vec::with_capacity(chosen.len());
        let mut spare = Some(payload);
        for (k, &i) in chosen.iter().enumerate() {
            let w = &inner.workers[i];
            let msg = if k + 1 == chosen.len() {
                spare.take()
            } else {
                spare.clone()
            };
            let Some(msg) = msg else { break };
            let (tx, rx) = oneshot::channel();
            let wref = AgentRef {
                slot: w.slot.clone(),
                shared: st.shared.clone(),
            };
            let rx = match wref.submit_branch(msg, tx) {
                Ok(_) => Some(rx),
                Err(_) => None,
            };
            pending.push(Pending {
                worker: i,
                path: w.slot.path.clone(),
                rx,
            });
        }
        inner.requests.fetch_add(1, Ordering::AcqRel);
        let job = GatherJob {
            inner: inner.clone(),
            shared: st.shared.clone(),
            slot: st.slot.clone(),
            escalate_to: st.escalate_to.clone(),
            head,
            pending,
            started,
        };
        tokio::spawn(job.run());
    }
}

fn load<M>(w: &Worker<M>) -> u32 {
    u32::try_from(w.slot.stats.unsettled()).unwrap_or(u32::MAX)
}

/// A request that failed before any branch was sent.
fn finish_without_branches<M: crate::Message>(
    shared: &Shared<M>,
    slot: &Slot<M>,
    mut head: TaskHead<M>,
    err: GatherError,
    started: Instant,
) {
    send_detail(
        &mut head,
        Gathered {
            result: Err(err.clone()),
            branches: Vec::new(),
            elapsed: started.elapsed(),
        },
    );
    shared.fail(slot, head, &err.to_string());
}

fn send_detail<M>(head: &mut TaskHead<M>, g: Gathered<M>) {
    if let Some(tx) = head.meta.as_mut().and_then(|m| m.detail.take()) {
        let _ = tx.send(Detail::Gather(g));
    }
}

struct Pending<M> {
    worker: usize,
    path: Path,
    /// `None` if the branch could not even be sent (worker closed).
    rx: Option<oneshot::Receiver<Outcome<M>>>,
}

/// What a dispatched branch's escalation carries back, for the parent to mirror.
struct Escalated<M> {
    severity: f64,
    reason: String,
    origin: Path,
    payload: M,
    trail: Vec<AuditEntry>,
}

struct GatherJob<M> {
    inner: Arc<RouterShared<M>>,
    shared: Arc<Shared<M>>,
    slot: Arc<Slot<M>>,
    escalate_to: Arc<Slot<M>>,
    head: TaskHead<M>,
    pending: Vec<Pending<M>>,
    started: Instant,
}

impl<M: crate::Message> GatherJob<M> {
    async fn run(mut self) {
        let cfg = self.inner.cfg.clone();
        let n = self.pending.len();
        let broadcast = cfg.route.is_broadcast();
        let mut reports: Vec<BranchReport<M>> = self
            .pending
            .iter()
            .map(|p| BranchReport {
                worker: p.worker,
                path: p.path.clone(),
                status: BranchStatus::Discarded,
                elapsed: Duration::ZERO,
            })
            .collect();
        let mut done = vec![false; n];
        let mut arrival = Vec::new();
        let mut answers = 0usize;
        let mut escalation: Option<Escalated<M>> = None;
        let mut fail_fast: Option<GatherError> = None;
        let mut rxs: Vec<Option<oneshot::Receiver<Outcome<M>>>> =
            self.pending.iter_mut().map(|p| p.rx.take()).collect();
        // branches that could not be sent failed at once
        for k in 0..n {
            if rxs[k].is_none() {
                done[k] = true;
                reports[k].status = BranchStatus::Failed("the worker is closed".to_string());
                self.health(k, false);
                if cfg.partial == Partial::FailFast {
                    fail_fast.get_or_insert(GatherError::BranchFailed {
                        worker: reports[k].path.clone(),
                        reason: "the worker is closed".to_string(),
                    });
                }
            }
        }
        let deadline = cfg.deadline.map(|d| self.started + d);
        let mut timed_out = false;
        while fail_fast.is_none()
            && done.iter().any(|d| !d)
            && !(broadcast && cfg.gather.decided_early(answers))
        {
            let next = poll_fn(|cx| {
                for (k, rx) in rxs.iter_mut().enumerate() {
                    if let Some(r) = rx {
                        if let Poll::Ready(v) = Pin::new(r).poll(cx) {
                            return Poll::Ready((k, v));
                        }
                    }
                }
                Poll::Pending
            });
            let (k, outcome) = match deadline {
                Some(d) => match tokio::time::timeout_at(d, next).await {
                    Ok(v) => v,
                    Err(_) => {
                        timed_out = true;
                        break;
                    }
                },
                None => next.await,
            };
            rxs[k] = None;
            done[k] = true;
            reports[k].elapsed = self.started.elapsed();
            let status = match outcome {
                Ok(Outcome::Completed { reply, .. }) => {
                    answers += 1;
                    arrival.push(k);
                    BranchStatus::Answered(reply)
                }
                Ok(Outcome::Escalated {
                    severity,
                    reason,
                    origin,
                    payload,
                    trail,
                }) => {
                    escalation.get_or_insert(Escalated {
                        severity,
                        reason: reason.clone(),
                        origin,
                        payload,
                        trail,
                    });
                    BranchStatus::Escalated { severity, reason }
                }
                Ok(Outcome::Failed(f)) => BranchStatus::Failed(f.reason),
                Err(_) => {
                    BranchStatus::Failed("the branch was lost with its worker's actor".to_string())
                }
            };
            let ok = !matches!(status, BranchStatus::Failed(_));
            self.health(k, ok);
            if let (false, Partial::FailFast) = (ok, cfg.partial) {
                if let BranchStatus::Failed(reason) = &status {
                    fail_fast = Some(GatherError::BranchFailed {
                        worker: reports[k].path.clone(),
                        reason: reason.clone(),
                    });
                }
            }
            reports[k].status = status;
        }
        // whatever is still running is timed out or discarded
        let elapsed = self.started.elapsed();
        let mut late = 0u32;
        for k in 0..n {
            if !done[k] {
                late += 1;
                reports[k].elapsed = elapsed;
                if timed_out {
                    reports[k].status = BranchStatus::TimedOut;
                    self.health(k, false);
                    if cfg.partial == Partial::FailFast && fail_fast.is_none() {
                        fail_fast = Some(GatherError::BranchFailed {
                            worker: reports[k].path.clone(),
                            reason: format!(
                                "no answer within {:?}",
                                cfg.deadline.unwrap_or_default()
                            ),
                        });
                    }
                } else {
                    self.health_discard(k);
                }
            }
        }
        drop(rxs);
        let stats = &self.slot.stats.own;
        if timed_out {
            crate::accounting::add(&stats.timed_out, u64::from(late));
        } else {
            crate::accounting::add(&stats.discarded, u64::from(late));
        }
        let result: Result<Option<M>, GatherError> = if let Some(e) = fail_fast {
            Err(e)
        } else if broadcast {
            decide(&cfg.gather, &reports, &arrival)
        } else {
            match reports.first().map(|r| &r.status) {
                Some(BranchStatus::Answered(r)) => Ok(r.clone()),
                Some(BranchStatus::Failed(reason)) => Err(GatherError::BranchFailed {
                    worker: reports[0].path.clone(),
                    reason: reason.clone(),
                }),
                Some(BranchStatus::TimedOut) => Err(GatherError::BranchFailed {
                    worker: reports[0].path.clone(),
                    reason: format!("no answer within {:?}", cfg.deadline.unwrap_or_default()),
                }),
                // escalated: mirrored below
                _ => Ok(None),
            }
        };
        let mut head = self.head;
        if head.meta.is_some() {
            let count = |f: fn(&BranchStatus<M>) -> bool| {
                reports.iter().filter(|r| f(&r.status)).count() as u32
            };
            let entry = self.shared.entry(
                &self.slot,
                Decision::Gathered {
                    answered: count(|s| matches!(s, BranchStatus::Answered(_))),
                    escalated: count(|s| matches!(s, BranchStatus::Escalated { .. })),
                    failed: count(|s| matches!(s, BranchStatus::Failed(_))),
                    timed_out: count(|s| matches!(s, BranchStatus::TimedOut)),
                    discarded: count(|s| matches!(s, BranchStatus::Discarded)),
                },
            );
            head.record(entry);
        }
        send_detail(
            &mut head,
            Gathered {
                result: result.clone(),
                branches: reports,
                elapsed,
            },
        );
        self.inner.requests.fetch_sub(1, Ordering::AcqRel);
        let shared = &self.shared;
        let slot = &self.slot;
        match (result, escalation, broadcast) {
            (Ok(_), Some(esc), false) => {
                mirror_escalation(shared, slot, &self.escalate_to, head, esc)
            }
            (Ok(reply), _, _) => shared.complete(slot, head, reply),
            (Err(e), _, _) => shared.fail(slot, head, &e.to_string()),
        }
    }

    fn health(&self, k: usize, ok: bool) {
        let w = self.pending[k].worker;
        if let Some(worker) = self.inner.workers.get(w) {
            worker
                .health
                .finish(self.inner.cfg.breaker.as_ref(), self.shared.now(), ok);
        }
    }

    /// A discarded branch neither proves nor disproves the worker's health; release a
    /// half-open trial it may hold by treating it as a success only if it was one.
    fn health_discard(&self, k: usize) {
        let w = self.pending[k].worker;
        if let Some(worker) = self.inner.workers.get(w) {
            worker.health.release_trial();
        }
    }
}

/// A single-worker route's branch escalated: the request escalates from the router,
/// with the branch's severity, reason, origin and payload, and its trail appended.
fn mirror_escalation<M: crate::Message>(
    shared: &Shared<M>,
    slot: &Slot<M>,
    up: &Arc<Slot<M>>,
    mut head: TaskHead<M>,
    esc: Escalated<M>,
) {
    bump(&slot.stats.own.escalated_up);
    let meta = head.meta_mut();
    meta.trail.extend(esc.trail);
    meta.escalation = Some(EscalationInfo {
        severity: esc.severity,
        reason: esc.reason.clone(),
        origin: esc.origin,
        from: slot.path.clone(),
        key: None,
    });
    head.record(shared.entry(
        slot,
        Decision::Escalated {
            severity: esc.severity,
            reason: esc.reason,
        },
    ));
    head.attempt = 0;
    let task = Task {
        head,
        payload: esc.payload,
    };
    if let Err((NodeMsg::Escalation(t), why)) = up.deliver(NodeMsg::Escalation(task)) {
        let reason = format!(
            "could not escalate from {} to {}: {why}",
            slot.path, up.path
        );
        shared.fail(slot, t.head, &reason);
    }
}
