//! On the chained path, a stage agent that panics is restarted in place and the run's
//! task redelivered to it (`max_attempts`); past the attempts the run fails naming the
//! stage and the last panic. A stage agent killed outright with a run inside fails that
//! run, naming the stage; the stage is respawned and later runs go through. Every run
//! gets exactly one answer and the counters balance (the killed task counted as lost
//! at the stage).

mod support;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use echelon::prelude::*;
use echelon::{PipelineHandle, RunError, StageStatus};
use support::{idle, within};
use tokio::sync::{mpsc, Semaphore};

#[derive(Clone, Debug, PartialEq)]
enum Job {
    /// A plain run.
    Plain(u32),
    /// The middle stage panics on the first attempt only.
    Flaky(u32),
    /// The middle stage panics on every attempt.
    Poison(u32),
    /// The middle stage waits on a gate that never opens (for the kill).
    Stuck(u32),
}

struct Middle {
    flaked: Arc<Mutex<HashSet<u32>>>,
    gate: Arc<Semaphore>,
    entered: mpsc::UnboundedSender<u32>,
}

impl Agent for Middle {
    type Msg = Job;
    async fn handle(&mut self, _ctx: &mut Ctx<Job>, j: Job) -> Result<Verdict<Job>, AgentError> {
        match &j {
            Job::Flaky(n) if self.flaked.lock().expect("lock").insert(*n) => {
                panic!("flaky on {n}")
            }
            Job::Poison(n) => panic!("poisoned by {n}"),
            Job::Stuck(n) => {
                let _ = self.entered.send(*n);
                let _p = self.gate.acquire().await;
                Ok(Verdict::Reply(j))
            }
            _ => Ok(Verdict::Reply(j)),
        }
    }
}

struct Pass;

impl Agent for Pass {
    type Msg = Job;
    async fn handle(&mut self, _ctx: &mut Ctx<Job>, j: Job) -> Result<Verdict<Job>, AgentError> {
        Ok(Verdict::Reply(j))
    }
}

async fn pipeline() -> (PipelineHandle<Job>, mpsc::UnboundedReceiver<u32>) {
    let flaked = Arc::new(Mutex::new(HashSet::new()));
    let gate = Arc::new(Semaphore::new(0));
    let (tx, rx) = mpsc::unbounded_channel();
    let p = Pipeline::builder("p")
        .max_attempts(3)
        .stage(Stage::agent("first", |_| Pass))
        .stage(Stage::agent("middle", move |_| Middle {
            flaked: flaked.clone(),
            gate: gate.clone(),
            entered: tx.clone(),
        }))
        .stage(Stage::agent("last", |_| Pass));
    assert!(p.is_chained());
    let p = within(5, "spawn", p.spawn()).await.expect("spawns");
    (p, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_middle_stage_is_redelivered_then_fails_the_run_naming_the_stage() {
    let (p, _entered) = pipeline().await;

    // panics once: restarted in place, redelivered, the run goes on
    let r = within(5, "flaky", p.call(Job::Flaky(1))).await.unwrap();
    assert_eq!(r.result, Ok(Job::Flaky(1)), "{r:#?}");
    assert!(
        r.stages.iter().all(|s| s.status == StageStatus::Done),
        "{r:#?}"
    );
    let middle = p.hierarchy().agent("middle/0").expect("middle");
    assert_eq!(middle.counters().restarts, 1);
    assert_eq!(middle.counters().redelivered, 1);

    // panics every time: the run fails after three attempts, naming the stage
    let r = within(5, "poison", p.call(Job::Poison(2))).await.unwrap();
    match &r.result {
        Err(RunError::Stage {
            stage,
            index,
            stages,
            attempt,
            reason,
        }) => {
            assert_eq!(
                (stage.as_str(), *index, *stages, *attempt),
                ("middle", 2, 3, 1)
            );
            assert!(
                reason.contains("gave up after 3 attempt(s)") && reason.contains("poisoned by 2"),
                "{reason}"
            );
        }
        other => panic!("expected the stage to fail the run, got {other:?}"),
    }
    assert!(
        matches!(r.stages[1].status, StageStatus::Failed(_)),
        "{r:#?}"
    );
    assert_eq!(r.stages[2].status, StageStatus::NotRun);
    assert_eq!(middle.counters().restarts, 4);

    // the stage still serves
    let r = within(5, "after", p.call(Job::Plain(3))).await.unwrap();
    assert_eq!(r.result, Ok(Job::Plain(3)));

    let c = idle(p.hierarchy(), 5).await;
    assert!(c.is_balanced(), "{c:?}");
    assert_eq!((c.submitted, c.completed, c.failed), (3, 2, 1), "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_actor_killed_with_a_run_inside_fails_that_run_naming_the_stage() {
    let (p, mut entered) = pipeline().await;
    let p = Arc::new(p);
    let middle = p.hierarchy().agent("middle/0").expect("middle");

    // a run with a report
    let pa = p.clone();
    let stuck = tokio::spawn(async move { pa.call(Job::Stuck(7)).await });
    assert_eq!(
        within(5, "run 7 in the middle stage", entered.recv()).await,
        Some(7)
    );
    assert!(middle.kill(), "the middle stage had a live actor");
    let r = within(5, "the killed run", stuck).await.unwrap().unwrap();
    match &r.result {
        Err(RunError::Stage {
            stage,
            index,
            reason,
            ..
        }) => {
            assert_eq!((stage.as_str(), *index), ("middle", 2));
            assert!(reason.contains("lost with its actor"), "{reason}");
        }
        other => panic!("expected the run to fail in the middle stage, got {other:?}"),
    }
    assert!(
        matches!(r.stages[1].status, StageStatus::Failed(_)),
        "{r:#?}"
    );
    assert_eq!(r.stages[0].status, StageStatus::Done, "{r:#?}");

    // respawned: a run for its outcome, killed the same way
    let pb = p.clone();
    let stuck = tokio::spawn(async move { pb.outcome(Job::Stuck(8)).await });
    assert_eq!(
        within(5, "run 8 in the middle stage", entered.recv()).await,
        Some(8)
    );
    assert!(middle.kill(), "the middle stage was respawned");
    match within(5, "the second killed run", stuck)
        .await
        .unwrap()
        .unwrap()
    {
        Outcome::Failed(f) => {
            assert!(f.reason.contains("\"middle\""), "{f:?}");
            assert_eq!(f.at.as_str(), "p/pipeline/0");
        }
        other => panic!("expected the run to fail, got {other:?}"),
    }

    // respawned again: later runs go through
    let r = within(5, "after the kills", p.call(Job::Plain(9)))
        .await
        .unwrap();
    assert_eq!(r.result, Ok(Job::Plain(9)), "{r:#?}");

    let c = idle(p.hierarchy(), 5).await;
    assert!(c.is_balanced(), "{c:?}");
    assert_eq!(c.submitted, 3, "{c:?}");
    assert_eq!(
        (c.completed, c.failed, c.lost_in_mailbox),
        (1, 2, 2),
        "{c:?}"
    );
}
