//! On the chained path the run's budget is shared by its stages: agents spend with
//! `ctx.spend(n)?`, stages charge `.cost(n)`, and the report attributes the spending
//! to each stage, adding up to the run's. A refused spend ends the run with
//! `RunError::Budget` naming the stage that asked (the stages after it never run), and
//! fails the request as a rejection.

mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use echelon::prelude::*;
use echelon::{BudgetExceeded, FailureKind, RunError, StageStatus};
use support::{idle, within};

#[derive(Clone, Debug, Default, PartialEq)]
struct Bill {
    trail: Vec<&'static str>,
    limits: Vec<Option<u64>>,
}

struct Spender {
    name: &'static str,
    units: u64,
    paid: Arc<AtomicU32>,
}

impl Agent for Spender {
    type Msg = Bill;
    async fn handle(
        &mut self,
        ctx: &mut Ctx<Bill>,
        mut b: Bill,
    ) -> Result<Verdict<Bill>, AgentError> {
        ctx.spend(self.units)?;
        self.paid.fetch_add(1, Ordering::SeqCst);
        b.limits.push(ctx.budget().map(|b| b.limit()));
        b.trail.push(self.name);
        Ok(Verdict::Reply(b))
    }
}

fn spender(name: &'static str, units: u64, paid: &Arc<AtomicU32>) -> Stage<Bill> {
    let paid = paid.clone();
    Stage::agent(name, move |_| Spender {
        name,
        units,
        paid: paid.clone(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_stage_reports_its_own_spend_and_they_add_up() {
    let paid = Arc::new(AtomicU32::new(0));
    let p = Pipeline::builder("costs")
        .budget(100)
        .stage(spender("a", 3, &paid))
        .stage(
            Stage::function("f", |mut b: Bill| async move {
                b.trail.push("f");
                Ok(b)
            })
            .cost(2),
        )
        .stage(spender("b", 1, &paid).cost(4))
        .stage(spender("c", 0, &paid));
    assert!(p.is_chained());
    let p = within(5, "spawn", p.spawn()).await.expect("spawns");

    let r = within(5, "a run", p.call(Bill::default())).await.unwrap();
    let out = r.result.clone().expect("fits the budget");
    assert_eq!(out.trail, ["a", "f", "b", "c"]);
    assert_eq!(
        out.limits,
        vec![Some(100); 3],
        "every agent saw the run's budget"
    );
    let spent: Vec<u64> = r.stages.iter().map(|s| s.spent).collect();
    assert_eq!(spent, [3, 2, 5, 0], "{r:#?}");
    assert_eq!(r.spent, 10);

    // a budget of the caller's own
    let r = within(5, "a run", p.call_with_budget(Bill::default(), 50))
        .await
        .unwrap();
    assert_eq!(r.result.map(|b| b.limits), Ok(vec![Some(50); 3]));
    assert_eq!(r.spent, 10);

    let c = idle(p.hierarchy(), 5).await;
    assert!(c.is_balanced() && c.failed == 0, "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_spend_ends_the_run_at_the_stage_that_asked() {
    let paid = Arc::new(AtomicU32::new(0));
    let p = Pipeline::builder("bills")
        .budget(10)
        .stage(spender("a", 4, &paid))
        .stage(spender("b", 5, &paid))
        .stage(spender("c", 3, &paid))
        .stage(spender("d", 0, &paid));
    assert!(p.is_chained());
    let p = within(5, "spawn", p.spawn()).await.expect("spawns");

    let r = within(5, "a run", p.call(Bill::default())).await.unwrap();
    let exceeded = BudgetExceeded {
        limit: 10,
        spent: 9,
        asked: 3,
    };
    assert_eq!(
        r.result,
        Err(RunError::Budget {
            stage: "c".into(),
            exceeded,
        })
    );
    let status: Vec<&StageStatus> = r.stages.iter().map(|s| &s.status).collect();
    assert_eq!(
        status,
        [
            &StageStatus::Done,
            &StageStatus::Done,
            &StageStatus::Failed(exceeded.to_string()),
            &StageStatus::NotRun,
        ]
    );
    let spent: Vec<u64> = r.stages.iter().map(|s| s.spent).collect();
    assert_eq!(spent, [4, 5, 0, 0]);
    assert_eq!(r.spent, 9);
    assert_eq!(
        paid.load(Ordering::SeqCst),
        2,
        "a and b paid; c was refused; d never ran"
    );

    // a smaller budget of the caller's own runs out at an earlier stage
    let r = within(5, "a run", p.call_with_budget(Bill::default(), 6))
        .await
        .unwrap();
    assert_eq!(
        r.result,
        Err(RunError::Budget {
            stage: "b".into(),
            exceeded: BudgetExceeded {
                limit: 6,
                spent: 4,
                asked: 5,
            },
        })
    );

    match within(5, "as a task", p.outcome(Bill::default()))
        .await
        .unwrap()
    {
        Outcome::Failed(f) => {
            assert_eq!(f.kind, FailureKind::Rejected, "{f:?}");
            assert!(
                f.reason.contains("\"c\"") && f.reason.contains("budget exhausted"),
                "{f:?}"
            );
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    let c = idle(p.hierarchy(), 5).await;
    assert!(c.is_balanced(), "{c:?}");
    assert_eq!((c.submitted, c.failed), (3, 3), "{c:?}");
}
