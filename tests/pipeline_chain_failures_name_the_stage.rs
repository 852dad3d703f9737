//! On the chained path, a run that ends early names where: a rejection fails the run
//! with `RunError::Stage` naming the stage, its position and attempt 1, and the stages
//! after it never run; a stage's escalation ends the run as escalated from the
//! pipeline, out of the top of the hierarchy, with the stage in the trail; an
//! escalation below the team's threshold is absorbed and the run goes on with the
//! stage's input. Every run gets one outcome and the counters balance.

mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use echelon::prelude::*;
use echelon::{Decision, FailureKind, PipelineHandle, Role, RunError, StageStatus, Threshold};
use support::{idle, within};

#[derive(Clone, Debug, PartialEq)]
struct Order {
    n: u32,
    trail: Vec<&'static str>,
}

impl Order {
    fn new(n: u32) -> Self {
        Order {
            n,
            trail: Vec::new(),
        }
    }

    fn with(mut self, step: &'static str) -> Self {
        self.trail.push(step);
        self
    }
}

/// Appends its name.
struct Step(&'static str);

impl Agent for Step {
    type Msg = Order;
    async fn handle(
        &mut self,
        _ctx: &mut Ctx<Order>,
        o: Order,
    ) -> Result<Verdict<Order>, AgentError> {
        Ok(Verdict::Reply(o.with(self.0)))
    }
}

/// Rejects orders `n % 3 == 1`.
struct Validate;

impl Agent for Validate {
    type Msg = Order;
    async fn handle(
        &mut self,
        _ctx: &mut Ctx<Order>,
        o: Order,
    ) -> Result<Verdict<Order>, AgentError> {
        if o.n % 3 == 1 {
            return Err(AgentError::reject(format!("order {} has no address", o.n)));
        }
        Ok(Verdict::Reply(o.with("validate")))
    }
}

/// Escalates orders `n % 3 == 2`: severity 0.9 (passes the team) for `n % 2 == 0`,
/// 0.1 (absorbed by the team) otherwise.
struct Triage;

impl Agent for Triage {
    type Msg = Order;
    async fn handle(
        &mut self,
        _ctx: &mut Ctx<Order>,
        o: Order,
    ) -> Result<Verdict<Order>, AgentError> {
        if o.n % 3 == 2 {
            let severity = if o.n % 2 == 0 { 0.9 } else { 0.1 };
            return Ok(Verdict::escalate(
                severity,
                format!("order {} needs a human", o.n),
                o.with("triage"),
            ));
        }
        Ok(Verdict::Reply(o.with("triage")))
    }
}

/// Counts the orders it ships.
struct Ship(Arc<AtomicU32>);

impl Agent for Ship {
    type Msg = Order;
    async fn handle(
        &mut self,
        _ctx: &mut Ctx<Order>,
        o: Order,
    ) -> Result<Verdict<Order>, AgentError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(Verdict::Reply(o.with("ship")))
    }
}

async fn rma(shipped: &Arc<AtomicU32>) -> PipelineHandle<Order> {
    let s = shipped.clone();
    // the pipeline team's escalation threshold is its first stage tier's: 0.5, so that
    // triage's 0.1 escalations are absorbed (a one-agent team is still chained)
    let parse = Tier::new("parse", 1, |_| Step("parse")).escalate_at(Threshold::severity(0.5));
    let p = Pipeline::builder("rma")
        .stage(Stage::team("parse", vec![parse]))
        .stage(Stage::agent("validate", |_| Validate))
        .stage(Stage::agent("triage", |_| Triage))
        .stage(Stage::agent("ship", move |_| Ship(s.clone())));
    assert!(p.is_chained());
    within(5, "spawn", p.spawn()).await.expect("spawns")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejection_fails_the_run_naming_the_stage_and_later_stages_never_run() {
    let shipped = Arc::new(AtomicU32::new(0));
    let p = rma(&shipped).await;

    let r = within(5, "run 1", p.call(Order::new(1))).await.unwrap();
    assert_eq!(
        r.result,
        Err(RunError::Stage {
            stage: "validate".into(),
            index: 2,
            stages: 4,
            attempt: 1,
            reason: "rejected by rma/pipeline/0/validate/0: order 1 has no address".into(),
        }),
        "{r:#?}"
    );
    let status: Vec<&StageStatus> = r.stages.iter().map(|s| &s.status).collect();
    assert_eq!(status[0], &StageStatus::Done);
    assert!(matches!(status[1], StageStatus::Failed(why) if why.contains("no address")));
    assert_eq!(status[2..], [&StageStatus::NotRun, &StageStatus::NotRun]);
    assert_eq!(r.stages[1].attempts, 1);
    assert_eq!(r.stages[2].attempts, 0);
    let text = r.result.unwrap_err().to_string();
    assert!(
        text.starts_with("stage \"validate\" (2 of 4) failed on attempt 1: "),
        "{text}"
    );

    match within(5, "run 4 as a task", p.outcome(Order::new(4)))
        .await
        .unwrap()
    {
        Outcome::Failed(f) => {
            assert_eq!(f.at.as_str(), "rma/pipeline/0");
            assert_eq!(f.kind, FailureKind::Routing);
            assert!(f.reason.starts_with("stage \"validate\" (2 of 4)"), "{f:?}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    assert_eq!(
        shipped.load(Ordering::SeqCst),
        0,
        "no rejected order shipped"
    );

    let ok = within(5, "run 3", p.call(Order::new(3))).await.unwrap();
    assert_eq!(
        ok.result,
        Ok(Order::new(3)
            .with("parse")
            .with("validate")
            .with("triage")
            .with("ship"))
    );
    let c = idle(p.hierarchy(), 5).await;
    assert!(c.is_balanced(), "{c:?}");
    assert_eq!((c.submitted, c.failed, c.completed), (3, 2, 1), "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_escalation_ends_the_run_and_escalates_it_from_the_pipeline() {
    let shipped = Arc::new(AtomicU32::new(0));
    let p = rma(&shipped).await;
    let mut sink = p.hierarchy().escalations();

    // 2: severity 0.9, out of the top
    let r = within(5, "run 2", p.call(Order::new(2))).await.unwrap();
    assert_eq!(
        r.result,
        Err(RunError::Escalated {
            stage: "triage".into(),
            severity: 0.9,
            reason: "order 2 needs a human".into(),
        }),
        "{r:#?}"
    );
    assert_eq!(
        r.stages[2].status,
        StageStatus::Escalated("order 2 needs a human".into())
    );
    assert_eq!(r.stages[3].status, StageStatus::NotRun);
    let e = within(5, "the sink", sink.recv())
        .await
        .expect("an escalation");
    assert_eq!(
        e.payload,
        Order::new(2).with("parse").with("validate").with("triage")
    );
    assert_eq!(e.origin.as_str(), "rma/pipeline/0/triage/0");

    match within(5, "run 8 as a task", p.outcome(Order::new(8)))
        .await
        .unwrap()
    {
        Outcome::Escalated {
            severity,
            reason,
            trail,
            ..
        } => {
            assert_eq!(severity, 0.9);
            assert_eq!(reason, "order 8 needs a human");
            assert!(
                trail.iter().any(|t| t.role == Role::Pipeline
                    && matches!(t.decision, Decision::Escalated { .. })),
                "the pipeline escalated the run: {trail:#?}"
            );
            assert!(
                trail
                    .iter()
                    .any(|t| t.path.as_str() == "rma/pipeline/0/triage/0"),
                "the stage is in the trail: {trail:#?}"
            );
        }
        other => panic!("expected an escalation, got {other:?}"),
    }
    let _ = within(5, "the sink", sink.recv())
        .await
        .expect("an escalation");

    // 5: severity 0.1, absorbed by the pipeline's team: the run goes on with triage's
    // input, as if triage had answered Done
    let r = within(5, "run 5", p.call(Order::new(5))).await.unwrap();
    assert_eq!(
        r.result,
        Ok(Order::new(5).with("parse").with("validate").with("ship")),
        "{r:#?}"
    );
    assert!(
        r.stages.iter().all(|s| s.status == StageStatus::Done),
        "{r:#?}"
    );

    let c = idle(p.hierarchy(), 5).await;
    assert!(c.is_balanced(), "{c:?}");
    assert_eq!(c.escalated, 2, "{c:?}");
    assert_eq!(c.submitted, 3, "{c:?}");
    assert_eq!(shipped.load(Ordering::SeqCst), 1);
}
