//! The router actor and the gather task that fans one request's branches back in.

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use rand::rngs::StdRng;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::arrivals::{Arrival, Arrivals, CloseOnDrop};
use super::breaker::Health;
use super::gather::{decide, BranchReport, BranchStatus, GatherError, Gathered, Partial};
use super::strategy::{pick, PickError};
use super::RouterConfig;
use crate::accounting::bump;
use crate::address::{AgentRef, Slot};
use crate::envelope::{BranchEscalation, Decision, Detail, FailureKind, Outcome, Path, TaskHead};
use crate::hierarchy::shared::Shared;
use crate::lead::{Lead, LeadNode};

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
    pub(crate) runs: crate::lead::Runs,
}

/// The router's per-incarnation state.
pub(crate) struct Cursor {
    next: usize,
    rng: StdRng,
}

impl<M: crate::Message> Lead<M> for RouterShared<M> {
    type State = Cursor;
    const KIND: &'static str = "router";

    fn runs(&self) -> &crate::lead::Runs {
        &self.runs
    }

    fn init(&self, node: &LeadNode<M>) -> Cursor {
        Cursor {
            next: 0,
            rng: node.rng(),
        }
    }

    fn request(
        this: &Arc<Self>,
        st: &mut Cursor,
        node: &LeadNode<M>,
        mut head: TaskHead<M>,
        payload: M,
    ) {
        let cfg = &this.cfg;
        let started = Instant::now();
        if let Some(limit) = cfg.admission {
            if this.requests.load(Ordering::Acquire) >= limit {
                bump(&node.slot.stats.own.rare().rejected);
                let err = GatherError::AtCapacity { limit };
                finish_without_branches(&node.shared, &node.slot, head, err, started);
                return;
            }
        }
        let now = node.shared.now();
        let cap = cfg.max_in_flight;
        let picked = pick(
            &cfg.route,
            &payload,
            this.workers.len(),
            &mut st.next,
            &mut st.rng,
            |i| load(&this.workers[i]),
            |i| {
                let w = &this.workers[i];
                cap.is_none_or(|c| load(w) < c) && w.health.admit(cfg.breaker.as_ref(), now)
            },
        );
        let chosen = match picked {
            Ok(c) => c,
            Err(e) => {
                bump(&node.slot.stats.own.rare().rejected);
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
                    &node.shared,
                    &node.slot,
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
                .map(|&i| this.workers[i].slot.path.clone())
                .collect();
            head.record(node.shared.entry(&node.slot, Decision::Routed { to }));
        }
        let mut pending = Vec::with_capacity(chosen.len());
        let arrivals = Arrivals::new(chosen.len());
        let mut spare = Some(payload);
        for (k, &i) in chosen.iter().enumerate() {
            let w = &this.workers[i];
            let msg = if k + 1 == chosen.len() {
                spare.take()
            } else {
                spare.clone()
            };
            let Some(msg) = msg else { break };
            let wref = AgentRef {
                slot: w.slot.clone(),
                shared: node.shared.clone(),
            };
            let sent = wref
                .submit_branch(msg, arrivals.port(k), head.budget().cloned())
                .is_ok();
            pending.push(Pending {
                worker: i,
                path: w.slot.path.clone(),
                sent,
            });
        }
        this.requests.fetch_add(1, Ordering::AcqRel);
        let job = GatherJob {
            inner: this.clone(),
            shared: node.shared.clone(),
            slot: node.slot.clone(),
            escalate_to: node.escalate_to.clone(),
            head,
            pending,
            arrivals,
            started,
        };
        // counted before the task exists, so a stop never misses it
        let running = this.runs.start();
        tokio::spawn(job.run(running));
    }
}

/// Holds one unit of a router's admission count; released when dropped.
struct Admitted<'a>(&'a AtomicU32);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
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
    let detail = take_detail(&mut head);
    shared.fail_as(slot, head, &err.to_string(), FailureKind::Routing);
    send_detail(
        detail,
        Gathered {
            result: Err(err),
            branches: Vec::new(),
            elapsed: started.elapsed(),
        },
    );
}

/// The caller's detail port, taken out before the request is resolved: the request is
/// counted first, then the caller hears, so counters read after `call` returns are
/// exact.
pub(crate) fn take_detail<M>(head: &mut TaskHead<M>) -> Option<oneshot::Sender<Detail<M>>> {
    head.meta.as_mut().and_then(|m| m.detail.take())
}

fn send_detail<M>(tx: Option<oneshot::Sender<Detail<M>>>, g: Gathered<M>) {
    if let Some(tx) = tx {
        let _ = tx.send(Detail::Gather(g));
    }
}

struct Pending {
    worker: usize,
    path: Path,
    /// False if the branch could not even be sent (worker closed).
    sent: bool,
}

struct GatherJob<M> {
    inner: Arc<RouterShared<M>>,
    shared: Arc<Shared<M>>,
    slot: Arc<Slot<M>>,
    escalate_to: Arc<Slot<M>>,
    head: TaskHead<M>,
    pending: Vec<Pending>,
    /// Where the branches answer.
    arrivals: Arc<Arrivals<M>>,
    started: Instant,
}

/// What woke a gather.
enum Woke {
    /// One or more branches answered.
    Answers,
    /// The hierarchy is stopping.
    Aborted,
    /// The router's deadline passed.
    Expired,
}

impl<M: crate::Message> GatherJob<M> {
    async fn run(self, _running: crate::lead::RunGuard) {
        let inner = self.inner.clone();
        // the admission count is released however this task ends
        let admitted = Admitted(&inner.requests);
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
        let mut arrival = Vec::with_capacity(n);
        let mut answers = 0usize;
        let mut escalation: Option<BranchEscalation<M>> = None;
        let mut fail_fast: Option<GatherError> = None;
        // branches that could not be sent failed at once (their ports' drops arrive as
        // well, and are ignored: the branch is done)
        for k in 0..n {
            if !self.pending[k].sent {
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
        // made once for the whole gather, not once per answer: a stop of the hierarchy
        // and the deadline
        let mut aborted = pin!(inner.runs.aborted());
        let mut expired = pin!(async move {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        });
        // answers that arrived together, all taken at once, oldest first
        let mut got: Vec<Arrival<M>> = Vec::with_capacity(n);
        // when the answers in `got` were taken (one clock read for all of them)
        let mut taken = Duration::ZERO;
        // answers after the gather is over are dropped, not kept in the inbox
        let close = CloseOnDrop(self.arrivals.clone());
        let arrivals = &close.0;
        while fail_fast.is_none()
            && done.iter().any(|d| !d)
            && !(broadcast && cfg.gather.decided_early(answers))
        {
            if got.is_empty() {
                let woke = poll_fn(|cx| {
                    if arrivals.poll_take(cx, &mut got).is_ready() {
                        return Poll::Ready(Woke::Answers);
                    }
                    if aborted.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Woke::Aborted);
                    }
                    if expired.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Woke::Expired);
                    }
                    Poll::Pending
                })
                .await;
                match woke {
                    Woke::Answers => {
                        got.reverse();
                        taken = self.started.elapsed();
                    }
                    Woke::Aborted => {
                        fail_fast.get_or_insert(GatherError::NoWorker(
                            "the hierarchy stopped before every branch answered".to_string(),
                        ));
                        break;
                    }
                    Woke::Expired => {
                        timed_out = true;
                        break;
                    }
                }
            }
            let Some((k, outcome)) = got.pop() else {
                continue;
            };
            if k >= n || done[k] {
                continue;
            }
            done[k] = true;
            reports[k].elapsed = taken;
            let status = match outcome {
                Some(Outcome::Completed { reply, .. }) => {
                    // a reply-less completion (Done, an absorbed escalation) is not an
                    // answer a race or a quorum can be decided on
                    if reply.is_some() {
                        answers += 1;
                    }
                    arrival.push(k);
                    BranchStatus::Answered(reply)
                }
                Some(Outcome::Escalated {
                    severity,
                    reason,
                    origin,
                    payload,
                    trail,
                }) => {
                    escalation.get_or_insert(BranchEscalation {
                        severity,
                        reason: reason.clone(),
                        origin,
                        payload,
                        trail,
                    });
                    BranchStatus::Escalated { severity, reason }
                }
                Some(Outcome::Failed(f)) => BranchStatus::Failed(f.reason),
                None => {
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
        if late > 0 {
            let stats = self.slot.stats.own.rare();
            let counter = if timed_out {
                &stats.timed_out
            } else {
                &stats.discarded
            };
            crate::accounting::add(counter, u64::from(late));
        }
        let result: Result<Option<M>, GatherError> = if let Some(e) = fail_fast {
            Err(e)
        } else if broadcast {
            // user code (merge, fold, vote key): a panic fails this request, not the task
            crate::panic::catch(|| decide(&cfg.gather, &reports, &arrival))
                .unwrap_or_else(|p| Err(GatherError::NoWorker(format!("the gather function {p}"))))
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
        // admission first, then the outcome, then the caller: a caller holding its
        // result never sees its own request still counted
        drop(admitted);
        let detail = take_detail(&mut head);
        let shared = &self.shared;
        let slot = &self.slot;
        match (result.clone(), escalation, broadcast) {
            (Ok(_), Some(esc), false) => shared.escalate_from(slot, &self.escalate_to, head, esc),
            (Ok(reply), _, _) => shared.complete(slot, head, reply),
            (Err(e), _, _) => shared.fail_as(slot, head, &e.to_string(), FailureKind::Routing),
        }
        send_detail(
            detail,
            Gathered {
                result,
                branches: reports,
                elapsed,
            },
        );
    }

    fn health(&self, k: usize, ok: bool) {
        // without a breaker there is nothing to record (and no clock to read)
        let Some(breaker) = self.inner.cfg.breaker.as_ref() else {
            return;
        };
        let w = self.pending[k].worker;
        if let Some(worker) = self.inner.workers.get(w) {
            worker.health.finish(Some(breaker), self.shared.now(), ok);
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
