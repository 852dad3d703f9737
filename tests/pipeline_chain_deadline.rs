//! On the chained path the run's deadline still covers the whole run: the caller is
//! answered at the deadline with `RunError::Deadline` naming the stage that held the
//! run (its status `Interrupted`, later stages `NotRun`), even while a stage agent or a
//! function stage is still working on it. The stage's late result is dropped, and the
//! run's task is counted failed once the stage lets go of it.

mod support;

use std::sync::Arc;
use std::time::Duration;

use echelon::prelude::*;
use echelon::{RunError, StageStatus};
use support::{idle, within};
use tokio::sync::Semaphore;

#[derive(Clone, Debug, Default, PartialEq)]
struct Bill {
    /// Held by the agent stage's gate.
    hold: bool,
    /// Never returned from by the function stage.
    hang: bool,
    trail: Vec<&'static str>,
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

struct Gated(Arc<Semaphore>);

impl Agent for Gated {
    type Msg = Bill;
    async fn handle(
        &mut self,
        _ctx: &mut Ctx<Bill>,
        mut b: Bill,
    ) -> Result<Verdict<Bill>, AgentError> {
        if b.hold {
            self.0
                .acquire()
                .await
                .map_err(|e| AgentError::reject(e.to_string()))?
                .forget();
        }
        b.trail.push("slow");
        Ok(Verdict::Reply(b))
    }
}

#[tokio::test(start_paused = true)]
async fn the_deadline_answers_the_caller_while_a_stage_still_holds_the_run() {
    let gate = Arc::new(Semaphore::new(0));
    let g = gate.clone();
    let p = Pipeline::builder("deadline")
        .deadline(ms(200))
        .stage(Stage::function("fast", |mut b: Bill| async move {
            b.trail.push("fast");
            Ok(b)
        }))
        .stage(Stage::agent("slow", move |_| Gated(g.clone())))
        .stage(Stage::function("after", |mut b: Bill| async move {
            if b.hang {
                std::future::pending::<()>().await;
            }
            b.trail.push("after");
            Ok(b)
        }));
    assert!(p.is_chained());
    let p = within(5, "spawn", p.spawn()).await.expect("spawns");

    // in time: not affected
    let r = within(5, "a quick run", p.call(Bill::default()))
        .await
        .unwrap();
    assert_eq!(r.result.map(|b| b.trail), Ok(vec!["fast", "slow", "after"]));

    // held in the agent stage
    let held = Bill {
        hold: true,
        ..Bill::default()
    };
    let r = within(5, "the held run", p.call(held.clone()))
        .await
        .unwrap();
    assert_eq!(
        r.result,
        Err(RunError::Deadline {
            stage: "slow".into(),
            deadline: ms(200),
        })
    );
    assert_eq!(
        r.elapsed,
        ms(200),
        "answered exactly at the deadline: {r:#?}"
    );
    assert_eq!(r.stages[0].status, StageStatus::Done);
    assert_eq!(r.stages[1].status, StageStatus::Interrupted);
    assert_eq!(r.stages[1].attempts, 1);
    assert_eq!(r.stages[2].status, StageStatus::NotRun);
    assert_eq!(r.stages[2].attempts, 0);

    // as a task: failed at the pipeline, naming the deadline and the stage
    match within(5, "the held run as a task", p.outcome(held))
        .await
        .unwrap()
    {
        Outcome::Failed(f) => {
            assert!(
                f.reason.contains("deadline") && f.reason.contains("\"slow\""),
                "{f:?}"
            );
            assert_eq!(f.at.as_str(), "deadline/pipeline/0");
        }
        other => panic!("expected the run to fail, got {other:?}"),
    }

    // the held runs leave the agent stage later: no second answer
    gate.add_permits(2);

    // hanging in a function stage
    let hung = Bill {
        hang: true,
        ..Bill::default()
    };
    let r = within(5, "the hung run", p.call(hung)).await.unwrap();
    assert_eq!(
        r.result,
        Err(RunError::Deadline {
            stage: "after".into(),
            deadline: ms(200),
        })
    );
    assert_eq!(r.stages[1].status, StageStatus::Done);
    assert_eq!(r.stages[2].status, StageStatus::Interrupted);

    // one outcome each: the interrupted runs counted failed once their stage let go
    let c = idle(p.hierarchy(), 5).await;
    assert!(c.is_balanced(), "{c:?}");
    assert_eq!((c.submitted, c.completed, c.failed), (4, 1, 3), "{c:?}");
}
