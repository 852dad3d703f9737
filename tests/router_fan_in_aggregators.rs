//! Fan-in: how a broadcast's answers become one result.
//!
//! Each worker follows a script given at spawn: reply with a value, reply only once a
//! gate opens (a slow worker, made slow by a gate rather than a sleep), reject, or
//! escalate. `all` merges in worker order and `reduce` folds in worker order whatever
//! order the answers arrive in; `first` lets the fastest worker win and reports the
//! others as discarded (and counts them); `quorum` decides on the first k answers or
//! says how far it fell short; `majority` returns the largest group's first answer and
//! reports a tie as a tie.

mod support;

use std::sync::Arc;
use std::time::Duration;

use echelon::prelude::*;
use echelon::{BranchStatus, GatherError, Gathered, RouterHandle};
use support::{idle, within};
use tokio::sync::{mpsc, watch};

#[derive(Clone, Debug, PartialEq)]
enum Msg {
    Ask,
    Val(i64),
    Vote(&'static str),
    List(Vec<i64>),
}

fn val(m: &Msg) -> i64 {
    match m {
        Msg::Val(v) => *v,
        other => panic!("expected a value, got {other:?}"),
    }
}

/// Opens once and stays open.
#[derive(Clone)]
struct Gate(Arc<watch::Sender<bool>>);

impl Gate {
    fn new() -> Self {
        Gate(Arc::new(watch::channel(false).0))
    }
    fn open(&self) {
        self.0.send_replace(true);
    }
    async fn wait(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }
}

/// What worker `i` does with every request.
#[derive(Clone, Debug)]
enum Act {
    Reply(Msg),
    /// Reply only once the gate is open.
    Slow(Msg),
    Reject,
    Escalate,
}

struct Worker {
    index: usize,
    act: Act,
    gate: Gate,
    /// Told just before a worker returns its reply.
    answered: mpsc::UnboundedSender<usize>,
}

impl Agent for Worker {
    type Msg = Msg;

    async fn handle(&mut self, _ctx: &mut Ctx<Msg>, msg: Msg) -> Result<Verdict<Msg>, AgentError> {
        let reply = match self.act.clone() {
            Act::Reply(m) => m,
            Act::Slow(m) => {
                self.gate.wait().await;
                m
            }
            Act::Reject => return Err(AgentError::reject("this worker refuses everything")),
            Act::Escalate => return Ok(Verdict::escalate(0.9, "not mine to decide", msg)),
        };
        let _ = self.answered.send(self.index);
        Ok(Verdict::Reply(reply))
    }
}

struct Rig {
    router: Arc<RouterHandle<Msg>>,
    gate: Gate,
    answered: mpsc::UnboundedReceiver<usize>,
}

async fn broadcast(acts: Vec<Act>, gather: Gather<Msg>) -> Rig {
    let gate = Gate::new();
    let (tx, answered) = mpsc::unbounded_channel();
    let g = gate.clone();
    let acts = Arc::new(acts);
    let n = acts.len();
    let router = within(
        5,
        "spawn the router",
        Router::builder("r")
            .workers("w", n, move |index| Worker {
                index,
                act: acts[index].clone(),
                gate: g.clone(),
                answered: tx.clone(),
            })
            .route(Route::Broadcast)
            .gather(gather)
            .spawn(),
    )
    .await
    .expect("spawn the router");
    Rig {
        router: Arc::new(router),
        gate,
        answered,
    }
}

async fn call(router: &RouterHandle<Msg>) -> Gathered<Msg> {
    within(5, "the broadcast's result", router.call(Msg::Ask))
        .await
        .expect("the router takes the request")
}

impl Rig {
    /// Wait until each of `workers` has returned its answer.
    async fn answers_from(&mut self, workers: &[usize]) {
        let mut got = Vec::new();
        within(5, "the fast workers' answers", async {
            while got.len() < workers.len() {
                got.push(self.answered.recv().await.expect("answer channel"));
            }
        })
        .await;
        got.sort_unstable();
        assert_eq!(got, workers);
    }

    /// Open the gate, wait for everything to finish and check that every task
    /// (request and branch) had exactly one outcome.
    async fn finish(self) -> echelon::Counters {
        self.gate.open();
        let c = idle(self.router.hierarchy(), 5).await;
        assert!(c.is_balanced(), "{c:?}");
        let router = Arc::try_unwrap(self.router).expect("no call holds the router");
        drop(within(5, "shutdown", router.shutdown(Duration::from_secs(2))).await);
        c
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_waits_for_every_answer_and_merges_in_worker_order() {
    // worker 0 answers last, after 1 and 2 have answered
    let mut rig = broadcast(
        vec![
            Act::Slow(Msg::Val(10)),
            Act::Reply(Msg::Val(20)),
            Act::Reply(Msg::Val(30)),
        ],
        Gather::all(|answers| Msg::List(answers.iter().map(val).collect())),
    )
    .await;
    let r = rig.router.clone();
    let pending = tokio::spawn(async move { call(&r).await });
    rig.answers_from(&[1, 2]).await;
    assert!(!pending.is_finished(), "`all` must wait for worker 0");
    rig.gate.open();
    let g = within(5, "the call", pending).await.expect("join");
    assert_eq!(g.result, Ok(Some(Msg::List(vec![10, 20, 30]))));
    assert_eq!(g.answered(), 3);
    assert!(!g.is_partial());
    let c = rig.finish().await;
    assert_eq!((c.submitted, c.completed, c.discarded), (4, 4, 0), "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_lets_the_fast_worker_win_and_discards_the_slow_branches() {
    let rig = broadcast(
        vec![
            Act::Slow(Msg::Val(1)),
            Act::Reply(Msg::Val(2)),
            Act::Slow(Msg::Val(3)),
        ],
        Gather::first(),
    )
    .await;
    // the slow workers are held by the gate until after the result: the race is decided
    let g = call(&rig.router).await;
    assert_eq!(g.result, Ok(Some(Msg::Val(2))), "the fast worker wins");
    let statuses: Vec<_> = g.branches.iter().map(|b| b.status.clone()).collect();
    assert_eq!(
        statuses,
        vec![
            BranchStatus::Discarded,
            BranchStatus::Answered(Some(Msg::Val(2))),
            BranchStatus::Discarded,
        ]
    );
    assert_eq!((g.answered(), g.discarded(), g.timed_out()), (1, 2, 0));
    assert!(g.is_partial());
    assert_eq!(
        rig.router.counters().discarded,
        2,
        "the discarded branches are counted by the time the caller has the result"
    );

    // the late answers still end their own branches, once, and change nothing
    let slow = rig.router.worker(0).expect("worker 0");
    let c = rig.finish().await;
    assert_eq!((c.submitted, c.completed, c.failed), (4, 4, 0), "{c:?}");
    assert_eq!(c.discarded, 2);
    assert_eq!(
        slow.counters().completed,
        1,
        "the slow branch finished at its worker"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_decides_on_the_first_k_answers() {
    let rig = broadcast(
        vec![
            Act::Slow(Msg::Val(10)),
            Act::Reply(Msg::Val(20)),
            Act::Reply(Msg::Val(30)),
        ],
        Gather::quorum(2, |answers| {
            let mut v: Vec<i64> = answers.iter().map(val).collect();
            v.sort_unstable();
            Msg::List(v)
        }),
    )
    .await;
    let g = call(&rig.router).await;
    assert_eq!(g.result, Ok(Some(Msg::List(vec![20, 30]))));
    assert_eq!(g.branches[0].status, BranchStatus::Discarded);
    assert_eq!((g.answered(), g.discarded()), (2, 1));
    let c = rig.finish().await;
    assert_eq!(c.discarded, 1, "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_not_met_says_how_many_answered_failed_and_escalated() {
    let rig = broadcast(
        vec![Act::Reply(Msg::Val(10)), Act::Reject, Act::Escalate],
        Gather::quorum(2, |answers| Msg::List(answers.iter().map(val).collect())),
    )
    .await;
    let g = call(&rig.router).await;
    let expected = GatherError::NotEnough {
        needed: 2,
        answered: 1,
        failed: 1,
        timed_out: 0,
        escalated: 1,
    };
    assert_eq!(g.result, Err(expected.clone()));
    assert_eq!(
        expected.to_string(),
        "not enough answers: 1 of 2 needed (1 failed, 0 timed out, 1 escalated)"
    );
    match &g.branches[1].status {
        BranchStatus::Failed(why) => assert!(why.contains("refuses everything"), "{why}"),
        other => panic!("branch 1 should have failed, got {other:?}"),
    }
    assert!(
        matches!(&g.branches[2].status, BranchStatus::Escalated { reason, .. } if reason == "not mine to decide"),
        "{:?}",
        g.branches[2]
    );

    // as a task, the request failed with that reason; a broadcast branch's escalation
    // came back to the router and never left the top
    let out = within(5, "the outcome", rig.router.outcome(Msg::Ask))
        .await
        .expect("the router takes the request");
    match out {
        Outcome::Failed(f) => assert!(f.reason.contains("not enough answers"), "{}", f.reason),
        other => panic!("expected a failure, got {other:?}"),
    }
    let c = rig.finish().await;
    assert_eq!((c.submitted, c.failed, c.escalated), (8, 4, 0), "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn majority_returns_the_largest_groups_first_answer() {
    // grouped by parity: {1, 3} beats {2}
    let rig = broadcast(
        vec![
            Act::Reply(Msg::Val(1)),
            Act::Reply(Msg::Val(2)),
            Act::Reply(Msg::Val(3)),
        ],
        Gather::majority(|m: &Msg| (val(m) % 2).to_string()),
    )
    .await;
    let g = call(&rig.router).await;
    assert_eq!(g.result, Ok(Some(Msg::Val(1))));
    rig.finish().await;

    let rig = broadcast(
        vec![
            Act::Reply(Msg::Vote("approve")),
            Act::Reply(Msg::Vote("reject")),
            Act::Reply(Msg::Vote("approve")),
        ],
        Gather::majority(|m: &Msg| format!("{m:?}")),
    )
    .await;
    assert_eq!(
        call(&rig.router).await.result,
        Ok(Some(Msg::Vote("approve")))
    );
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tied_vote_is_reported_as_a_tie_with_the_votes() {
    let rig = broadcast(
        vec![
            Act::Reply(Msg::Vote("approve")),
            Act::Reply(Msg::Vote("reject")),
            Act::Reply(Msg::Vote("reject")),
            Act::Reply(Msg::Vote("approve")),
        ],
        Gather::majority(|m: &Msg| match m {
            Msg::Vote(v) => v.to_string(),
            other => panic!("not a vote: {other:?}"),
        }),
    )
    .await;
    let g = call(&rig.router).await;
    let Err(GatherError::Tie { votes }) = &g.result else {
        panic!("a 2-2 vote is a tie, got {:?}", g.result);
    };
    let mut votes = votes.clone();
    votes.sort();
    assert_eq!(
        votes,
        vec![("approve".to_string(), 2), ("reject".to_string(), 2)]
    );
    assert_eq!(
        g.answered(),
        4,
        "every branch answered; the vote itself is tied"
    );
    let msg = g.result.clone().unwrap_err().to_string();
    assert!(
        msg.contains("tied") && msg.contains("approve") && msg.contains("reject"),
        "{msg}"
    );

    let out = within(5, "the outcome", rig.router.outcome(Msg::Ask))
        .await
        .expect("the router takes the request");
    assert!(out.is_failed(), "a tie is no decision: {out:?}");
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reduce_folds_the_answers_in_worker_order() {
    // worker 0 answers last; the fold a * 10 + b only gives 1234 in worker order
    let mut rig = broadcast(
        vec![
            Act::Slow(Msg::Val(1)),
            Act::Reply(Msg::Val(2)),
            Act::Reply(Msg::Val(3)),
            Act::Reply(Msg::Val(4)),
        ],
        Gather::reduce(|a, b| Msg::Val(val(&a) * 10 + val(&b))),
    )
    .await;
    let entry = rig.router.entry().clone();
    let pending = tokio::spawn(async move {
        within(5, "the reduce", entry.call(Msg::Ask))
            .await
            .expect("the router takes the request")
    });
    rig.answers_from(&[1, 2, 3]).await;
    rig.gate.open();
    match within(5, "the call", pending).await.expect("join") {
        Outcome::Completed { reply, .. } => assert_eq!(reply, Some(Msg::Val(1234))),
        other => panic!("expected the folded value, got {other:?}"),
    }
    let c = rig.finish().await;
    assert_eq!((c.submitted, c.completed), (5, 5), "{c:?}");
}
