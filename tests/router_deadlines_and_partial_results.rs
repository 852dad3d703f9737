//! Deadlines and partial results.
//!
//! A worker held by a gate never answers within the request's deadline. Time is
//! tokio's paused clock: while everything else waits, the runtime jumps straight to
//! the next timer, which is the router's deadline (every `within` bound is longer), so
//! the deadline fires exactly on time without any real waiting. Best-effort decides
//! with what answered and says which branches timed out; fail-fast fails the request
//! at the first failed or timed-out branch and discards the rest. A late answer after
//! the decision never gives the request a second outcome.

mod support;

use std::sync::Arc;
use std::time::Duration;

use echelon::prelude::*;
use echelon::{BranchStatus, GatherError, Gathered, RouterHandle};
use support::{idle, within};
use tokio::sync::watch;
use tokio::time::Instant;

const DEADLINE: Duration = Duration::from_secs(2);

#[derive(Clone, Debug, PartialEq)]
enum Msg {
    Ask,
    Val(i64),
    List(Vec<i64>),
}

fn val(m: &Msg) -> i64 {
    match m {
        Msg::Val(v) => *v,
        other => panic!("expected a value, got {other:?}"),
    }
}

/// Opens once and stays open; counts the handlers that reached it.
#[derive(Clone)]
struct Gate(Arc<watch::Sender<bool>>, Arc<watch::Sender<usize>>);

impl Gate {
    fn new() -> Self {
        Gate(
            Arc::new(watch::channel(false).0),
            Arc::new(watch::channel(0).0),
        )
    }
    fn open(&self) {
        self.0.send_replace(true);
    }
    async fn wait(&self) {
        let mut rx = self.0.subscribe();
        self.1.send_modify(|n| *n += 1);
        let _ = rx.wait_for(|open| *open).await;
    }
    /// Until `n` handlers are held at the gate.
    async fn reached(&self, n: usize) {
        let mut rx = self.1.subscribe();
        let _ = within(5, "the handlers at the gate", rx.wait_for(|k| *k >= n)).await;
    }
}

#[derive(Clone, Copy, Debug)]
enum Act {
    /// Reply with `10 * (index + 1)` at once.
    Answer,
    /// Reply only once the gate opens (after the deadline).
    Stall,
    /// Reject the task.
    Reject,
}

struct Worker {
    index: usize,
    act: Act,
    gate: Gate,
}

impl Agent for Worker {
    type Msg = Msg;

    async fn handle(&mut self, _ctx: &mut Ctx<Msg>, _msg: Msg) -> Result<Verdict<Msg>, AgentError> {
        match self.act {
            Act::Answer => {}
            Act::Stall => self.gate.wait().await,
            Act::Reject => return Err(AgentError::reject("cannot do this one")),
        }
        Ok(Verdict::Reply(Msg::Val(10 * (self.index as i64 + 1))))
    }
}

struct Rig {
    router: RouterHandle<Msg>,
    gate: Gate,
}

async fn rig(
    acts: &[Act],
    configure: impl FnOnce(echelon::RouterBuilder<Msg>) -> echelon::RouterBuilder<Msg>,
) -> Rig {
    let gate = Gate::new();
    let g = gate.clone();
    let acts: Arc<Vec<Act>> = Arc::new(acts.to_vec());
    let n = acts.len();
    let builder = Router::builder("r").workers("w", n, move |index| Worker {
        index,
        act: acts[index],
        gate: g.clone(),
    });
    let router = within(5, "spawn the router", configure(builder).spawn())
        .await
        .expect("spawn the router");
    Rig { router, gate }
}

fn merge_all() -> Gather<Msg> {
    Gather::all(|answers| Msg::List(answers.iter().map(val).collect()))
}

async fn call(router: &RouterHandle<Msg>) -> Gathered<Msg> {
    within(5, "the router's decision", router.call(Msg::Ask))
        .await
        .expect("the router takes the request")
}

impl Rig {
    /// Let the stalled workers finish, wait for quiet and check that the late answers
    /// did not give any task a second outcome.
    async fn finish(self) -> echelon::Counters {
        self.gate.open();
        let c = idle(self.router.hierarchy(), 5).await;
        assert!(c.is_balanced(), "{c:?}");
        drop(within(5, "shutdown", self.router.shutdown(Duration::from_secs(2))).await);
        c
    }
}

#[tokio::test(start_paused = true)]
async fn best_effort_decides_with_the_answers_and_lists_the_timed_out_branch() {
    let rig = rig(&[Act::Answer, Act::Answer, Act::Stall], |b| {
        b.route(Route::Broadcast)
            .gather(merge_all())
            .deadline(DEADLINE)
            .best_effort()
    })
    .await;
    let t0 = Instant::now();
    let g = call(&rig.router).await;
    assert_eq!(t0.elapsed(), DEADLINE, "decided exactly at the deadline");
    assert_eq!(g.result, Ok(Some(Msg::List(vec![10, 20]))));
    assert_eq!(g.branches[2].status, BranchStatus::TimedOut);
    assert_eq!((g.answered(), g.timed_out(), g.failed()), (2, 1, 0));
    assert!(g.is_partial(), "a result without every branch is partial");
    assert_eq!(g.elapsed, DEADLINE);
    assert_eq!(g.branches[2].elapsed, DEADLINE);
    assert!(g.branches[0].elapsed < DEADLINE);
    assert_eq!(rig.router.counters().timed_out, 1);

    let c = rig.finish().await;
    // request + 3 branches, each completed once; the late answer changed nothing
    assert_eq!(
        (c.submitted, c.completed, c.failed, c.timed_out),
        (4, 4, 0, 1),
        "{c:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn best_effort_with_nothing_answered_is_not_enough() {
    let rig = rig(&[Act::Stall, Act::Stall, Act::Reject], |b| {
        b.route(Route::Broadcast)
            .gather(merge_all())
            .deadline(DEADLINE)
    })
    .await;
    let g = call(&rig.router).await;
    assert_eq!(
        g.result,
        Err(GatherError::NotEnough {
            needed: 3,
            answered: 0,
            failed: 1,
            timed_out: 2,
            escalated: 0,
        })
    );
    assert_eq!(g.timed_out(), 2);
    let c = rig.finish().await;
    assert_eq!(c.timed_out, 2, "{c:?}");
}

#[tokio::test(start_paused = true)]
async fn fail_fast_fails_at_the_first_failed_branch_and_discards_the_rest() {
    // the deadline is far away: the failure, not the clock, decides
    let rig = rig(&[Act::Stall, Act::Reject, Act::Stall], |b| {
        b.route(Route::Broadcast)
            .gather(merge_all())
            .deadline(Duration::from_secs(60))
            .fail_fast()
    })
    .await;
    let t0 = Instant::now();
    let g = call(&rig.router).await;
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "fail-fast must not wait for the deadline"
    );
    match &g.result {
        Err(GatherError::BranchFailed { worker, reason }) => {
            assert_eq!(worker.as_str(), "r/router/0/w/1");
            assert!(reason.contains("cannot do this one"), "{reason}");
        }
        other => panic!("expected BranchFailed from worker 1, got {other:?}"),
    }
    let statuses: Vec<_> = g.branches.iter().map(|b| b.status.clone()).collect();
    assert!(
        matches!(statuses[1], BranchStatus::Failed(_)),
        "{statuses:?}"
    );
    assert_eq!(statuses[0], BranchStatus::Discarded);
    assert_eq!(statuses[2], BranchStatus::Discarded);
    let c = rig.router.counters();
    assert_eq!((c.discarded, c.timed_out), (2, 0), "{c:?}");

    let c = rig.finish().await;
    // the request and worker 1's branch failed; the discarded ones finished later
    assert_eq!((c.submitted, c.failed, c.completed), (4, 2, 2), "{c:?}");
}

#[tokio::test(start_paused = true)]
async fn fail_fast_treats_a_timed_out_branch_as_a_failure() {
    let rig = rig(&[Act::Answer, Act::Stall, Act::Answer], |b| {
        b.route(Route::Broadcast)
            .gather(merge_all())
            .deadline(DEADLINE)
            .fail_fast()
    })
    .await;
    let g = call(&rig.router).await;
    match &g.result {
        Err(GatherError::BranchFailed { worker, reason }) => {
            assert_eq!(worker.as_str(), "r/router/0/w/1");
            assert!(reason.contains("no answer within 2s"), "{reason}");
        }
        other => panic!("expected BranchFailed from the stalled worker, got {other:?}"),
    }
    assert_eq!(g.branches[1].status, BranchStatus::TimedOut);
    assert_eq!(g.answered(), 2);
    let c = rig.finish().await;
    assert_eq!((c.timed_out, c.failed), (1, 1), "{c:?}");
}

#[tokio::test(start_paused = true)]
async fn a_single_worker_route_that_times_out_fails_the_request() {
    let rig = rig(&[Act::Stall], |b| {
        b.route(Route::RoundRobin).deadline(DEADLINE)
    })
    .await;
    let t0 = Instant::now();
    let out = within(5, "the outcome", rig.router.outcome(Msg::Ask))
        .await
        .expect("the router takes the request");
    assert_eq!(t0.elapsed(), DEADLINE);
    match out {
        Outcome::Failed(f) => {
            assert!(f.reason.contains("r/router/0/w/0"), "{}", f.reason);
            assert!(f.reason.contains("no answer within 2s"), "{}", f.reason);
        }
        other => panic!("a timed-out single branch fails the request, got {other:?}"),
    }
    let c = rig.finish().await;
    assert_eq!(
        (c.submitted, c.failed, c.completed, c.timed_out),
        (2, 1, 1, 1),
        "{c:?}"
    );
}

/// A hard stop (here a shutdown whose drain deadline passes) does not wait on the
/// branches of an open gather: the request fails at once, saying why, and the caller
/// hears before the stalled handlers are released.
#[tokio::test(start_paused = true)]
async fn a_hard_stop_ends_an_open_gather_at_once() {
    let rig = rig(&[Act::Stall, Act::Stall], |b| {
        b.route(Route::Broadcast).gather(merge_all())
    })
    .await;
    let entry = rig.router.entry().clone();
    let caller = tokio::spawn(async move { entry.call(Msg::Ask).await });
    rig.gate.reached(2).await;
    let gate = rig.gate.clone();
    let stop = tokio::spawn(rig.router.shutdown(Duration::from_millis(10)));
    let out = within(5, "the caller's outcome", caller)
        .await
        .expect("the caller's task")
        .expect("the router took the request");
    match out {
        Outcome::Failed(f) => assert!(
            f.reason
                .contains("the hierarchy stopped before every branch answered"),
            "{}",
            f.reason
        ),
        other => panic!("an aborted gather fails its request, got {other:?}"),
    }
    gate.open();
    let report = within(30, "the shutdown", stop)
        .await
        .expect("the shutdown's task");
    assert!(
        !report.drained,
        "the drain deadline passed with the request open"
    );
}
