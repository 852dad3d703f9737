//! Router fan-in edge cases: a reply-less branch does not win a race, and a panicking gather function fails its request (with a reason) without leaking admission.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use echelon::prelude::*;
use echelon::{BranchStatus, GatherError, Outcome};

#[derive(Clone, Debug, PartialEq)]
enum Msg {
    Ask,
    Val(i64),
}

/// Worker 0 answers `Done` at once (no reply); worker 1 answers a value a bit later.
struct W(usize);
impl Agent for W {
    type Msg = Msg;
    async fn handle(&mut self, _ctx: &mut Ctx<Msg>, _m: Msg) -> Result<Verdict<Msg>, AgentError> {
        if self.0 == 0 {
            Ok(Verdict::Done)
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(Verdict::Reply(Msg::Val(7)))
        }
    }
}

/// `Gather::first()` counts a `Done` (reply-less) branch as an answer in
/// `decided_early`, stops gathering, then `decide` finds no `Answered(Some)` and fails
/// the request with NotEnough { answered: 0 } while worker 1 was about to answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_done_branch_wins_the_race_and_fails_the_request() {
    let r = Router::builder("r")
        .workers("w", 2, W)
        .route(Route::Broadcast)
        .gather(Gather::first())
        .spawn()
        .await
        .unwrap();
    let g = support::within(5, "gather", r.call(Msg::Ask))
        .await
        .unwrap();
    eprintln!("{g:?}");
    assert_eq!(
        g.answered(),
        2,
        "both branches answered; only one with a reply"
    );
    assert_eq!(
        g.result,
        Ok(Some(Msg::Val(7))),
        "the reply wins the race, not Done"
    );
    assert!(
        matches!(
            g.branches[1].status,
            BranchStatus::Answered(Some(Msg::Val(7)))
        ),
        "worker 1's answer should win the race (or at least be waited for); got {:?} / {:?}",
        g.result,
        g.branches[1].status
    );
    let _ = r.shutdown(Duration::from_secs(5)).await;
}

struct Echo;
impl Agent for Echo {
    type Msg = Msg;
    async fn handle(&mut self, _ctx: &mut Ctx<Msg>, _m: Msg) -> Result<Verdict<Msg>, AgentError> {
        Ok(Verdict::Reply(Msg::Val(1)))
    }
}

/// A user merge function that panics runs unguarded inside the detached gather task:
/// the task dies, the request gets no outcome (counters never balance), the admission
/// counter is never decremented (the router rejects everything from then on), and the
/// caller is told the request "was lost with the router's actor", which is false.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_merge_loses_the_request_and_leaks_admission() {
    let r = Router::builder("r")
        .workers("w", 2, |_| Echo)
        .route(Route::Broadcast)
        .gather(Gather::all(|_v: Vec<Msg>| -> Msg { panic!("merge bug") }))
        .admission(1)
        .spawn()
        .await
        .unwrap();
    let out = support::within(5, "outcome", r.outcome(Msg::Ask))
        .await
        .unwrap();
    eprintln!("first outcome: {out:?}");
    // the request is never resolved: in_flight stays 1
    let c = r.hierarchy().wait_idle(Duration::from_secs(2)).await;
    eprintln!("wait_idle: {c:?}");
    // admission leaked: a router with nothing in flight refuses the next request
    let g = support::within(5, "second", r.call(Msg::Ask))
        .await
        .unwrap();
    eprintln!("second: {:?}", g.result);
    let report = r.shutdown(Duration::from_secs(1)).await;
    eprintln!("shutdown: {report:?}");
    assert!(
        !matches!(g.result, Err(GatherError::AtCapacity { .. })),
        "admission slot leaked by the dead gather task"
    );
    assert!(
        report.counters.is_balanced(),
        "a request ended with no outcome: {:?}",
        report.counters
    );
    let _ = Outcome::<Msg>::Completed {
        reply: None,
        by: "x".into(),
        trail: vec![],
    };
}

/// A router picks its workers on the sender's thread: a classify function that panics
/// fails that request with the panic's message (counted `rejected`), the sender goes
/// on, and the counters balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_classifier_fails_its_request_not_the_sender() {
    let r = Router::builder("r")
        .workers("w", 2, |_| Echo)
        .route(Route::classify(|_m: &Msg| -> usize {
            panic!("classify bug")
        }))
        .spawn()
        .await
        .unwrap();
    for _ in 0..2 {
        let out = support::within(5, "outcome", r.outcome(Msg::Ask))
            .await
            .expect("the router takes the request");
        match out {
            Outcome::Failed(f) => {
                assert!(f.reason.contains("the route function"), "{}", f.reason);
                assert!(f.reason.contains("classify bug"), "{}", f.reason);
            }
            other => panic!("a panicking classifier fails the request, got {other:?}"),
        }
    }
    let c = support::idle(r.hierarchy(), 5).await;
    assert!(c.is_balanced(), "{c:?}");
    assert_eq!((c.submitted, c.failed, c.rejected), (2, 2, 2), "{c:?}");
    let _ = support::within(5, "shutdown", r.shutdown(Duration::from_secs(2))).await;
}
