//! Which pipelines take the chained fast path, and that their runs really take it.
//!
//! The rule: every stage is a single agent (`Stage::agent`, or a team of one agent) or a
//! plain function, with one attempt, no timeout and no fallback. Costs, budgets and the
//! run deadline do not matter. `PipelineBuilder::coordinated` turns the chain off.
//!
//! Observable: a chained run is one task (submitted and completed at the pipeline, and
//! nothing at the stage nodes), where a coordinated run is a task plus a branch task per
//! agent stage. Both give the same outputs and reports.

mod support;

use std::time::Duration;

use echelon::prelude::*;
use echelon::{PipelineBuilder, Role, StageStatus};
use support::{idle, within};

#[derive(Clone, Debug, PartialEq)]
struct N(u64);

struct Inc;

impl Agent for Inc {
    type Msg = N;
    async fn handle(&mut self, _ctx: &mut Ctx<N>, n: N) -> Result<Verdict<N>, AgentError> {
        Ok(Verdict::Reply(N(n.0 + 1)))
    }
}

fn double() -> Stage<N> {
    Stage::function("double", |n: N| async move { Ok(N(n.0 * 2)) })
}

fn base() -> PipelineBuilder<N> {
    Pipeline::builder("p")
        .stage(Stage::agent("a", |_| Inc))
        .stage(double())
        .stage(Stage::agent("b", |_| Inc))
}

#[test]
fn agents_and_functions_chain_and_anything_needing_a_coordinator_does_not() {
    assert!(base().is_chained());
    assert!(base()
        .stage(Stage::agent("c", |_| Inc).cost(3))
        .budget(100)
        .deadline(Duration::from_secs(1))
        .is_chained());
    assert!(base()
        .stage(Stage::team("one", vec![Tier::new("solo", 1, |_| Inc)]))
        .is_chained());
    assert!(base().stage(double().retry(Retry::none())).is_chained());

    assert!(!base().coordinated().is_chained());
    assert!(!base()
        .stage(Stage::agent("c", |_| Inc).retry(Retry::attempts(2)))
        .is_chained());
    assert!(!base()
        .stage(Stage::agent("c", |_| Inc).timeout(Duration::from_secs(1)))
        .is_chained());
    assert!(!base()
        .stage(Stage::agent("c", |_| Inc).fallback(double()))
        .is_chained());
    assert!(!base()
        .stage(Stage::router(Router::builder("r").workers("w", 2, |_| Inc)))
        .is_chained());
    assert!(!base()
        .stage(Stage::team(
            "two",
            vec![Tier::new("lead", 1, |_| Inc), Tier::new("r", 2, |_| Inc)]
        ))
        .is_chained());
}

type Nodes = Vec<(String, Role, echelon::Counters)>;

async fn ten_runs(b: PipelineBuilder<N>) -> (bool, echelon::Counters, Nodes) {
    let p = within(5, "spawn", b.spawn()).await.expect("spawns");
    for i in 0..10u64 {
        let r = within(5, "a run", p.call(N(i))).await.expect("taken");
        assert_eq!(r.result, Ok(N((i + 1) * 2 + 1)), "{r:#?}");
        assert!(
            r.stages
                .iter()
                .all(|s| s.attempts == 1 && s.status == StageStatus::Done),
            "{r:#?}"
        );
    }
    let c = idle(p.hierarchy(), 5).await;
    let nodes = p
        .hierarchy()
        .node_counters()
        .into_iter()
        .map(|(path, role, c)| (path.as_str().to_string(), role, c))
        .collect();
    let chained = p.is_chained();
    let _ = within(5, "shutdown", p.shutdown(Duration::from_secs(5))).await;
    (chained, c, nodes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chained_run_is_one_task_a_coordinated_run_a_task_per_agent_stage() {
    let (chained, c, nodes) = ten_runs(base()).await;
    assert!(chained);
    assert!(c.is_balanced(), "{c:?}");
    assert_eq!((c.submitted, c.completed, c.failed), (10, 10, 0), "{c:?}");
    for (path, role, n) in &nodes {
        if path.ends_with("/a/0") || path.ends_with("/b/0") {
            assert_eq!(
                (n.submitted, n.completed),
                (0, 0),
                "a stage agent only passes the run on: {path} {n:?}"
            );
        }
        if *role == Role::Pipeline {
            assert_eq!((n.submitted, n.completed), (10, 10), "{path} {n:?}");
        }
    }

    let (chained, c, _) = ten_runs(base().coordinated()).await;
    assert!(!chained);
    assert!(c.is_balanced(), "{c:?}");
    // the run, and a branch to each of the two agent stages
    assert_eq!((c.submitted, c.completed), (30, 30), "{c:?}");
}
