//! A pipeline as the last tier of a hierarchy.
//!
//! The hierarchy `shop` has a `desk` agent above `orders`, a tier of pipelines
//! (`PipelineBuilder::into_tier`). A task sent to `orders/<i>` runs through that
//! pipeline's own stage agents and completes at the pipeline; the desk can forward work
//! to a pipeline, and a stage's escalation goes up to the desk like any report's. A
//! pipeline tier must be the last tier, and a bad pipeline declaration is a
//! `BuildError`. A router stage works inside such a hierarchy.

mod support;

use std::time::Duration;

use echelon::prelude::*;
use echelon::{BuildError, Decision, Role};
use support::{idle, within};

#[derive(Clone, Debug, PartialEq)]
struct Order {
    /// Have the `pick` stage escalate.
    alarm: bool,
    trail: Vec<String>,
}

impl Order {
    fn new() -> Self {
        Order {
            alarm: false,
            trail: Vec::new(),
        }
    }

    fn with(mut self, step: impl Into<String>) -> Self {
        self.trail.push(step.into());
        self
    }
}

/// Forwards orders to `orders/1`; handles the escalations of the pipelines below.
struct Desk;

impl Agent for Desk {
    type Msg = Order;
    async fn handle(
        &mut self,
        ctx: &mut Ctx<Order>,
        o: Order,
    ) -> Result<Verdict<Order>, AgentError> {
        if let Some(e) = ctx.escalation() {
            let note = format!("desk handled: {}", e.reason);
            return Ok(Verdict::Reply(o.with(note)));
        }
        let to = ctx
            .agent("orders/1")
            .map_err(|e| AgentError::reject(e.to_string()))?;
        Ok(Verdict::Forward {
            to,
            msg: o.with("desk"),
        })
    }
}

/// Appends its own path; escalates an order marked `alarm`.
struct Pick;

impl Agent for Pick {
    type Msg = Order;
    async fn handle(
        &mut self,
        ctx: &mut Ctx<Order>,
        o: Order,
    ) -> Result<Verdict<Order>, AgentError> {
        if o.alarm {
            return Ok(Verdict::escalate(1.0, "item out of stock", o));
        }
        Ok(Verdict::Reply(o.with(ctx.path().to_string())))
    }
}

fn orders() -> echelon::PipelineBuilder<Order> {
    Pipeline::builder("orders")
        .stage(Stage::agent("pick", |_| Pick))
        .stage(Stage::function("pack", |o: Order| async move {
            Ok(o.with("pack"))
        }))
}

async fn shop(pipelines: Tier<Order>) -> Hierarchy<Order> {
    within(
        5,
        "spawn the hierarchy",
        Hierarchy::builder("shop")
            .tier("desk", 1, |_| Desk)
            .tier_with(pipelines)
            .spawn(),
    )
    .await
    .expect("the hierarchy spawns")
}

async fn call(h: &Hierarchy<Order>, addr: &str, o: Order) -> Outcome<Order> {
    within(5, "the call", h.call(addr, o))
        .await
        .expect("the hierarchy takes the task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_sent_to_a_pipeline_tier_run_through_its_stages() {
    let h = shop(orders().into_tier(2)).await;

    // each pipeline of the tier runs the task through its own stage agents
    for i in 0..2 {
        match call(&h, &format!("orders/{i}"), Order::new()).await {
            Outcome::Completed { reply, by, .. } => {
                let want = Order::new()
                    .with(format!("shop/desk/0/orders/{i}/pick/0"))
                    .with("pack");
                assert_eq!(reply, Some(want));
                assert_eq!(by.as_str(), format!("shop/desk/0/orders/{i}"));
            }
            other => panic!("orders/{i}: expected a completion, got {other:?}"),
        }
    }
    assert_eq!(
        h.agent("orders/1").expect("the pipeline").path().as_str(),
        "shop/desk/0/orders/1"
    );

    // the desk forwards to a pipeline; the pipeline completes the task
    match call(&h, "desk/0", Order::new()).await {
        Outcome::Completed { reply, by, .. } => {
            let want = Order::new()
                .with("desk")
                .with("shop/desk/0/orders/1/pick/0")
                .with("pack");
            assert_eq!(reply, Some(want));
            assert_eq!(by.as_str(), "shop/desk/0/orders/1");
        }
        other => panic!("expected a completion, got {other:?}"),
    }

    // a stage's escalation goes up to the tier above, which handles it
    let alarm = Order {
        alarm: true,
        ..Order::new()
    };
    match call(&h, "orders/0", alarm.clone()).await {
        Outcome::Completed { reply, by, trail } => {
            assert_eq!(reply, Some(alarm.with("desk handled: item out of stock")));
            assert_eq!(by.as_str(), "shop/desk/0");
            assert!(
                trail.iter().any(|e| e.role == Role::Pipeline
                    && e.path.as_str() == "shop/desk/0/orders/0"
                    && matches!(e.decision, Decision::Escalated { .. })),
                "{trail:#?}"
            );
            assert_eq!(trail.last().map(|e| &e.decision), Some(&Decision::Handled));
        }
        other => panic!("expected the desk to handle the escalation, got {other:?}"),
    }

    let c = idle(&h, 5).await;
    assert!(c.is_balanced(), "{c:?}");
    assert_eq!(c.failed + c.escalated, 0, "{c:?}");
    let report = within(5, "shutdown", h.shutdown(Duration::from_secs(5))).await;
    assert!(
        report.drained && report.counters.is_balanced(),
        "{report:?}"
    );
}

async fn build_error(b: echelon::HierarchyBuilder<Order>) -> BuildError {
    match within(5, "spawn", b.spawn()).await {
        Ok(_) => panic!("the declaration should be refused"),
        Err(e) => e,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pipeline_declarations_are_build_errors() {
    // a pipeline leads its stages, not a tier below it
    let e = build_error(
        Hierarchy::builder("shop")
            .tier_with(orders().into_tier(1))
            .tier("below", 1, |_| Desk),
    )
    .await;
    assert!(
        matches!(&e, BuildError::RouterNotLast { tier } if tier == "orders"),
        "{e:?}"
    );
    assert!(e.to_string().contains("must be the last tier"), "{e}");

    // a pipeline without stages
    let e = build_error(
        Hierarchy::builder("shop")
            .tier("desk", 1, |_| Desk)
            .tier_with(Pipeline::builder::<Order>("orders").into_tier(1)),
    )
    .await;
    assert!(
        matches!(&e, BuildError::EmptyTier { tier } if tier.contains("without stages")),
        "{e:?}"
    );
    let standalone = within(5, "spawn", Pipeline::builder::<Order>("empty").spawn()).await;
    assert!(
        matches!(standalone, Err(BuildError::EmptyTier { .. })),
        "{standalone:?}"
    );

    // two stage nodes with one name
    let e = build_error(
        Hierarchy::builder("shop").tier_with(
            Pipeline::builder("orders")
                .stage(Stage::agent("pick", |_| Pick))
                .stage(Stage::agent("pick", |_| Pick))
                .into_tier(1),
        ),
    )
    .await;
    assert!(
        matches!(&e, BuildError::DuplicateTier { tier } if tier == "pick"),
        "{e:?}"
    );

    // a team stage is led by exactly one agent
    let e = build_error(
        Hierarchy::builder("shop").tier_with(
            Pipeline::builder("orders")
                .stage(Stage::team(
                    "crew",
                    vec![Tier::new("crew-lead", 2, |_| Pick)],
                ))
                .into_tier(1),
        ),
    )
    .await;
    assert!(
        matches!(&e, BuildError::EmptyTier { tier } if tier.contains("exactly one agent")),
        "{e:?}"
    );
}

/// A router worker: appends its path.
struct Checker;

impl Agent for Checker {
    type Msg = Order;
    async fn handle(
        &mut self,
        ctx: &mut Ctx<Order>,
        o: Order,
    ) -> Result<Verdict<Order>, AgentError> {
        Ok(Verdict::Reply(
            Order::new()
                .with(ctx.path().to_string())
                .with(o.trail.len().to_string()),
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_stage_works_inside_the_hierarchy() {
    let checks = Router::builder("checks")
        .workers("checker", 3, |_| Checker)
        .route(Route::Broadcast)
        .gather(Gather::all(|answers: Vec<Order>| {
            answers.into_iter().fold(Order::new(), |acc, a| Order {
                trail: [acc.trail, a.trail].concat(),
                ..acc
            })
        }));
    let h = shop(
        Pipeline::builder("orders")
            .stage(Stage::function("intake", |o: Order| async move {
                Ok(o.with("intake"))
            }))
            .stage(Stage::router(checks))
            .stage(Stage::agent("pick", |_| Pick))
            .into_tier(1),
    )
    .await;

    for _ in 0..3 {
        match call(&h, "orders/0", Order::new()).await {
            Outcome::Completed { reply, by, .. } => {
                assert_eq!(by.as_str(), "shop/desk/0/orders/0");
                // each checker got the intake's output (one step long); the answers
                // merged in worker order; then the next stage ran on the merge
                let mut want = Order::new();
                for i in 0..3 {
                    want = want
                        .with(format!("shop/desk/0/orders/0/checks/0/checker/{i}"))
                        .with("1");
                }
                assert_eq!(reply, Some(want.with("shop/desk/0/orders/0/pick/0")));
            }
            other => panic!("expected a completion, got {other:?}"),
        }
    }
    let c = idle(&h, 5).await;
    assert!(c.is_balanced(), "{c:?}");
    assert_eq!(c.failed + c.escalated, 0, "{c:?}");
    // per call: the task at the pipeline, the router's branch and its three checker
    // branches, and the pick branch
    assert_eq!(c.submitted, 3 * 6, "{c:?}");
}
