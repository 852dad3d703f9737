//! The router actor and the gather task that fans one request's branches back in.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::rngs::StdRng;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::arrivals::{Arrivals, End};
use super::breaker::Health;
use super::gather::{decide, BranchReport, BranchStatus, Gather, GatherError, Gathered, Partial};
use super::strategy::{pick, PickError};
use super::{Route, RouterConfig};
use crate::accounting::bump;
use crate::address::Slot;
use crate::envelope::{BranchEscalation, Decision, Detail, FailureKind, Outcome, TaskHead};
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
    /// Where round-robin and random picks stand, shared by every sender (requests are
    /// taken on the senders' threads); reset with the router.
    pub(crate) cursor: Mutex<Option<Cursor>>,
}

/// Where a router's picks stand.
pub(crate) struct Cursor {
    next: usize,
    rng: StdRng,
}

impl<M: crate::Message> RouterShared<M> {
    fn cursor(&self) -> MutexGuard<'_, Option<Cursor>> {
        // held only for round-robin and random picks (no user code); a poisoned
        // cursor is still a valid one
        self.cursor.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<M: crate::Message> Lead<M> for RouterShared<M> {
    const KIND: &'static str = "router";
    fn runs(&self) -> &crate::lead::Runs {
        &self.runs
    }

    fn init(&self, node: &LeadNode<'_, M>) {
        *self.cursor() = Some(Cursor {
            next: 0,
            rng: node.rng(),
        });
    }

    fn request(this: &Arc<Self>, node: &LeadNode<'_, M>, mut head: TaskHead<M>, payload: M) {
        let cfg = &this.cfg;
        // the clock is read only for a deadline or a caller who wants the branches' times
        let wants_times = head.meta.as_ref().is_some_and(|m| m.detail.is_some());
        let started = (wants_times || cfg.deadline.is_some()).then(Instant::now);
        if let Some(limit) = cfg.admission {
            if this.requests.load(Ordering::Acquire) >= limit {
                bump(&node.slot.own.rare().rejected);
                let err = GatherError::AtCapacity { limit };
                finish_without_branches(node.shared, node.slot, head, err, started);
                return;
            }
        }
        // without a breaker every worker's breaker is closed: no clock to read
        let now = cfg
            .breaker
            .as_ref()
            .map_or(Duration::ZERO, |_| node.shared.now());
        let cap = cfg.max_in_flight;
        let n_workers = this.workers.len();
        let load_of = |i: usize| load(&this.workers[i]);
        let mut eligible = |i: usize| {
            let w = &this.workers[i];
            cap.is_none_or(|c| load(w) < c) && w.health.admit(cfg.breaker.as_ref(), now)
        };
        // user code (a key or classify function) on the sender's thread: a panic fails
        // this request, not the sender; and it runs outside the cursor's lock, which
        // only round-robin and random need
        let picked = crate::panic::catch(|| match &cfg.route {
            Route::RoundRobin | Route::Random => {
                let mut cursor = this.cursor();
                let cursor = cursor.get_or_insert_with(|| Cursor {
                    next: 0,
                    rng: node.rng(),
                });
                pick(
                    &cfg.route,
                    &payload,
                    n_workers,
                    &mut cursor.next,
                    &mut cursor.rng,
                    load_of,
                    &mut eligible,
                )
            }
            _ => pick(
                &cfg.route,
                &payload,
                n_workers,
                &mut 0,
                &mut super::strategy::NoRng,
                load_of,
                &mut eligible,
            ),
        });
        let chosen = match picked {
            Ok(Ok(c)) => c,
            Err(p) => {
                bump(&node.slot.own.rare().rejected);
                let err = GatherError::NoWorker(format!("the route function {p}"));
                finish_without_branches(node.shared, node.slot, head, err, started);
                return;
            }
            Ok(Err(e)) => {
                bump(&node.slot.own.rare().rejected);
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
                    node.shared,
                    node.slot,
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
            head.record(node.shared.entry(node.slot, Decision::Routed { to }));
        }
        let n = chosen.len();
        let gather = &cfg.gather;
        let reports = chosen
            .iter()
            .map(|&i| BranchReport {
                worker: i,
                path: this.workers[i].slot.path.clone(),
                status: BranchStatus::Discarded,
                elapsed: Duration::ZERO,
            })
            .collect();
        // counted before the gather exists: it releases the count however it ends
        this.requests.fetch_add(1, Ordering::AcqRel);
        let budget = head.budget().cloned();
        let arrivals = Arrivals::new(GatherJob {
            admitted: Admitted(this.clone()),
            shared: node.shared.clone(),
            slot: node.slot.clone(),
            escalate_to: node.escalate_to.clone(),
            head,
            reports,
            left: n,
            arrival: if ordered(&cfg.route, gather) {
                Vec::with_capacity(n)
            } else {
                Vec::new()
            },
            answers: 0,
            escalation: None,
            fail_fast: None,
            started,
            dispatching: true,
            running: None,
            timer: None,
        });
        let mut unsent: Vec<(usize, String)> = Vec::new();
        let mut spare = Some(payload);
        for (k, &i) in chosen.iter().enumerate() {
            let w = &this.workers[i];
            let msg = if k + 1 == n {
                spare.take()
            } else {
                // user code (Clone) on the sender's thread: a panic fails this branch
                match crate::panic::catch(|| spare.clone()) {
                    Ok(m) => m,
                    Err(p) => {
                        unsent.push((k, format!("cloning the request for it {p}")));
                        continue;
                    }
                }
            };
            let Some(msg) = msg else {
                unsent.push((k, "echelon lost the request's payload".to_string()));
                continue;
            };
            if w.slot
                .submit_branch(node.shared, msg, arrivals.port(k).into(), budget.clone())
                .is_err()
            {
                unsent.push((k, "the worker is closed".to_string()));
            }
        }
        // counted before it can be decided, so a stop never misses it
        let (running, aborted) = this.runs.start_open(arrivals.clone());
        let deadline = cfg.deadline.and_then(|d| started.map(|s| s + d));
        arrivals.dispatched(&unsent, running, deadline);
        if aborted {
            // a hard stop took its list of open requests before this one joined it
            arrivals.end(End::Aborted);
        }
    }
}

/// Only a race or a quorum decides on the order the answers arrived in.
fn ordered<M>(route: &Route<M>, gather: &Gather<M>) -> bool {
    route.is_broadcast() && matches!(gather, Gather::First | Gather::Quorum(..))
}

/// Holds one unit of a router's admission count; released when dropped.
struct Admitted<M>(Arc<RouterShared<M>>);

impl<M> Drop for Admitted<M> {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Ordering::AcqRel);
    }
}

fn load<M: Send + 'static>(w: &Worker<M>) -> u32 {
    u32::try_from(w.slot.load()).unwrap_or(u32::MAX)
}

/// A request that failed before any branch was sent.
fn finish_without_branches<M: crate::Message>(
    shared: &Shared<M>,
    slot: &Slot<M>,
    mut head: TaskHead<M>,
    err: GatherError,
    started: Option<Instant>,
) {
    let detail = take_detail(&mut head);
    shared.fail_as(slot, head, &err.to_string(), FailureKind::Routing);
    send_detail(
        detail,
        Gathered {
            result: Err(err),
            branches: Vec::new(),
            elapsed: since(started),
        },
    );
}

/// Time since `started`, if it was taken.
fn since(started: Option<Instant>) -> Duration {
    started.map_or(Duration::ZERO, |s| s.elapsed())
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

/// One request's gather: the branches' reports so far and what the request needs to be
/// resolved. Lives in its [`Arrivals`]; each arrival is applied with
/// [`GatherJob::accept`] and the one that decides it calls [`GatherJob::finish`].
pub(crate) struct GatherJob<M> {
    /// The admission count (and the router).
    admitted: Admitted<M>,
    shared: Arc<Shared<M>>,
    slot: Arc<Slot<M>>,
    escalate_to: Arc<Slot<M>>,
    head: TaskHead<M>,
    /// Every branch, in worker order; `Discarded` while it has not ended.
    reports: Vec<BranchReport<M>>,
    /// Branches not ended yet.
    left: usize,
    /// Answered branches in the order they answered, kept only if a race or a quorum
    /// decides on it ([`GatherJob::ordered`]).
    arrival: Vec<usize>,
    answers: usize,
    escalation: Option<BranchEscalation<M>>,
    fail_fast: Option<GatherError>,
    /// Taken when the request arrived, for a deadline or a caller who wants times.
    started: Option<Instant>,
    /// The router is still sending branches: not decided before it is done.
    dispatching: bool,
    /// The lead's count of open requests (and its registry entry).
    running: Option<crate::lead::RunGuard>,
    /// The deadline's timer, cancelled when decided first.
    pub(super) timer: Option<tokio::task::AbortHandle>,
}

impl<M: crate::Message> GatherJob<M> {
    /// The request's hierarchy.
    pub(super) fn shared(&self) -> &Arc<Shared<M>> {
        &self.shared
    }

    /// Is the order of arrival kept?
    fn ordered(&self) -> bool {
        let cfg = &self.admitted.0.cfg;
        ordered(&cfg.route, &cfg.gather)
    }

    /// Enough is in to decide (the router may still be sending branches).
    fn decided(&self) -> bool {
        let cfg = &self.admitted.0.cfg;
        self.fail_fast.is_some()
            || self.left == 0
            || (cfg.route.is_broadcast() && cfg.gather.decided_early(self.answers))
    }

    /// Ready to be resolved.
    pub(super) fn over(&self) -> bool {
        !self.dispatching && self.decided()
    }

    /// Branch `k` ended, with its outcome or (`None`) without one. Gives back the
    /// outcome if it was not taken (the branch already ended, or the gather is decided).
    pub(super) fn accept(&mut self, k: usize, outcome: Option<Outcome<M>>) -> Option<Outcome<M>> {
        if self.decided() {
            return outcome;
        }
        let Some(report) = self.reports.get(k) else {
            return outcome;
        };
        if !matches!(report.status, BranchStatus::Discarded) {
            return outcome;
        }
        self.left -= 1;
        let status = match outcome {
            Some(Outcome::Completed { reply, .. }) => {
                // a reply-less completion (Done, an absorbed escalation) is not an
                // answer a race or a quorum can be decided on
                if reply.is_some() {
                    self.answers += 1;
                    if self.ordered() {
                        self.arrival.push(k);
                    }
                }
                BranchStatus::Answered(reply)
            }
            Some(Outcome::Escalated {
                severity,
                reason,
                origin,
                payload,
                trail,
            }) => {
                // the first escalation is the one mirrored; a later one's payload is
                // given back, to be dropped outside the lock (user code)
                if self.escalation.is_none() {
                    self.escalation = Some(BranchEscalation {
                        severity,
                        reason: reason.clone(),
                        origin,
                        payload,
                        trail,
                    });
                } else {
                    self.ended(k, BranchStatus::Escalated { severity, reason });
                    return Some(Outcome::Escalated {
                        severity,
                        reason: String::new(),
                        origin,
                        payload,
                        trail,
                    });
                }
                BranchStatus::Escalated { severity, reason }
            }
            Some(Outcome::Failed(f)) => BranchStatus::Failed(f.reason),
            None => BranchStatus::Failed("the branch was lost with its worker's actor".to_string()),
        };
        self.ended(k, status);
        None
    }

    /// Record branch `k`'s status, its time and its worker's health.
    fn ended(&mut self, k: usize, status: BranchStatus<M>) {
        let ok = !matches!(status, BranchStatus::Failed(_));
        self.health(k, ok);
        let report = &mut self.reports[k];
        report.elapsed = since(self.started);
        if let BranchStatus::Failed(reason) = &status {
            if self.admitted.0.cfg.partial == Partial::FailFast {
                self.fail_fast.get_or_insert(GatherError::BranchFailed {
                    worker: report.path.clone(),
                    reason: reason.clone(),
                });
            }
        }
        report.status = status;
    }

    /// The router is done sending: the branches in `unsent` could not be sent, each
    /// for its reason.
    pub(super) fn dispatched(
        &mut self,
        unsent: &[(usize, String)],
        running: crate::lead::RunGuard,
    ) {
        for (k, why) in unsent {
            let k = *k;
            let Some(report) = self.reports.get(k) else {
                continue;
            };
            if matches!(report.status, BranchStatus::Discarded) {
                // no port reached the worker, and none said so yet
                self.left -= 1;
                self.ended(k, BranchStatus::Failed(why.clone()));
            } else {
                // its port said "lost" from its drop when the send failed: it was
                // never sent at all
                let path = report.path.clone();
                self.reports[k].status = BranchStatus::Failed(why.clone());
                if let Some(GatherError::BranchFailed { worker, reason }) = &mut self.fail_fast {
                    if *worker == path {
                        reason.clone_from(why);
                    }
                }
            }
        }
        self.running = Some(running);
        self.dispatching = false;
    }

    /// Resolve the request: the result from the branches, the outcome to its caller,
    /// the detail to a caller who asked for it.
    pub(super) fn finish(mut self, end: End) {
        if let Some(timer) = self.timer.take() {
            timer.abort();
        }
        let cfg = self.admitted.0.cfg.clone();
        let broadcast = cfg.route.is_broadcast();
        let timed_out = end == End::Expired;
        if end == End::Aborted {
            self.fail_fast.get_or_insert(GatherError::NoWorker(
                "the hierarchy stopped before every branch answered".to_string(),
            ));
        }
        // whatever is still running is timed out or discarded
        let elapsed = since(self.started);
        let mut late = 0u32;
        for k in 0..self.reports.len() {
            if !matches!(self.reports[k].status, BranchStatus::Discarded) {
                continue;
            }
            late += 1;
            self.reports[k].elapsed = elapsed;
            if timed_out {
                self.reports[k].status = BranchStatus::TimedOut;
                self.health(k, false);
                if cfg.partial == Partial::FailFast && self.fail_fast.is_none() {
                    self.fail_fast = Some(GatherError::BranchFailed {
                        worker: self.reports[k].path.clone(),
                        reason: format!("no answer within {:?}", cfg.deadline.unwrap_or_default()),
                    });
                }
            } else {
                self.health_discard(k);
            }
        }
        if late > 0 {
            let stats = self.slot.own.rare();
            let counter = if timed_out {
                &stats.timed_out
            } else {
                &stats.discarded
            };
            crate::accounting::add(counter, u64::from(late));
        }
        let reports = std::mem::take(&mut self.reports);
        let result: Result<Option<M>, GatherError> = if let Some(e) = self.fail_fast.take() {
            Err(e)
        } else if broadcast {
            // user code (merge, fold, vote key): a panic fails this request, not the
            // thread that delivered the deciding answer
            crate::panic::catch(|| decide(&cfg.gather, &reports, &self.arrival))
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
        let GatherJob {
            admitted,
            shared,
            slot,
            escalate_to,
            mut head,
            escalation,
            running,
            ..
        } = self;
        if head.meta.is_some() {
            let count = |f: fn(&BranchStatus<M>) -> bool| {
                reports.iter().filter(|r| f(&r.status)).count() as u32
            };
            let entry = shared.entry(
                &slot,
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
        let gathered = detail.is_some().then(|| result.clone());
        match (result, escalation, broadcast) {
            (Ok(_), Some(esc), false) => shared.escalate_from(&slot, &escalate_to, head, esc),
            (Ok(reply), _, _) => shared.complete(&slot, head, reply),
            (Err(e), _, _) => shared.fail_as(&slot, head, &e.to_string(), FailureKind::Routing),
        }
        if let Some(result) = gathered {
            send_detail(
                detail,
                Gathered {
                    result,
                    branches: reports,
                    elapsed,
                },
            );
        }
        // the request is done last: a stop waiting for it finds it resolved
        drop(running);
    }

    fn health(&self, k: usize, ok: bool) {
        // without a breaker there is nothing to record (and no clock to read)
        let Some(breaker) = self.admitted.0.cfg.breaker.as_ref() else {
            return;
        };
        let w = self.reports[k].worker;
        if let Some(worker) = self.admitted.0.workers.get(w) {
            worker.health.finish(Some(breaker), self.shared.now(), ok);
        }
    }

    /// A discarded branch neither proves nor disproves the worker's health; release a
    /// half-open trial it may hold by treating it as a success only if it was one.
    fn health_discard(&self, k: usize) {
        let w = self.reports[k].worker;
        if let Some(worker) = self.admitted.0.workers.get(w) {
            worker.health.release_trial();
        }
    }
}
