//! Shutdown under load: 10,000 tasks in flight. A graceful shutdown finishes every one
//! within its deadline, or fails what is unfinished at the deadline with a reason; a
//! hard stop fails the unfinished ones. Every caller gets exactly one outcome and the
//! counters balance.

mod support;

use std::time::Duration;

use echelon::prelude::*;
use support::within;

#[derive(Clone, Debug)]
struct Job;

/// Each task takes 10 ms of (virtual) work.
struct Worker;

impl Agent for Worker {
    type Msg = Job;
    async fn handle(&mut self, _ctx: &mut Ctx<Job>, _msg: Job) -> Result<Verdict<Job>, AgentError> {
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok(Verdict::Done)
    }
}

/// 64 agents, 10,000 calls in flight (about 156 per agent: 1.6 s of work each).
async fn loaded() -> (Hierarchy<Job>, Vec<tokio::task::JoinHandle<Outcome<Job>>>) {
    let h = Hierarchy::builder("h")
        .span(SpanOfControl::auto_split(8))
        .tier("w", 64, |_| Worker)
        .spawn()
        .await
        .expect("spawn");
    let agents = h.tier("w").expect("the tier");
    let calls = (0..10_000)
        .map(|i| {
            let a = agents[i % agents.len()].clone();
            tokio::spawn(async move { a.call(Job).await.expect("taken before the shutdown") })
        })
        .collect();
    // let every call reach its mailbox
    support::until(30, "every call to be submitted", || {
        h.counters().submitted >= 10_000
    })
    .await;
    (h, calls)
}

async fn outcomes(calls: Vec<tokio::task::JoinHandle<Outcome<Job>>>) -> (u64, u64) {
    let (mut done, mut failed) = (0, 0);
    for c in calls {
        match within(60, "every caller's outcome", c)
            .await
            .expect("the caller task")
        {
            Outcome::Completed { .. } => done += 1,
            Outcome::Failed(f) => {
                assert!(!f.reason.is_empty());
                failed += 1;
            }
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    (done, failed)
}

#[tokio::test(start_paused = true)]
async fn a_long_enough_deadline_finishes_all_ten_thousand() {
    let (h, calls) = loaded().await;
    let started = tokio::time::Instant::now();
    let report = within(60, "the shutdown", h.shutdown(Duration::from_secs(10))).await;
    assert!(report.drained, "{report:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(outcomes(calls).await, (10_000, 0));
    assert!(report.counters.is_balanced());
}

#[tokio::test(start_paused = true)]
async fn a_short_deadline_fails_what_is_unfinished_with_a_reason() {
    let (h, calls) = loaded().await;
    let started = tokio::time::Instant::now();
    let report = within(60, "the shutdown", h.shutdown(Duration::from_millis(500))).await;
    // the deadline, plus at most the handlers running at it (10 ms each)
    assert!(
        started.elapsed() <= Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
    assert!(!report.drained);
    let (done, failed) = outcomes(calls).await;
    assert_eq!(done + failed, 10_000, "every caller answered once");
    assert!(done > 0 && failed > 0, "{done} done, {failed} failed");
    let c = report.counters;
    assert!(c.is_balanced(), "{c:?}");
    assert_eq!((c.completed, c.failed), (done, failed));
}

#[tokio::test(start_paused = true)]
async fn a_hard_stop_fails_the_unfinished_ones() {
    let (h, calls) = loaded().await;
    let report = within(60, "the stop", h.stop()).await;
    let (done, failed) = outcomes(calls).await;
    assert_eq!(done + failed, 10_000);
    assert!(
        failed >= 10_000 - 64,
        "queued tasks are failed, not handled: {failed}"
    );
    assert!(report.counters.is_balanced(), "{:?}", report.counters);
}
