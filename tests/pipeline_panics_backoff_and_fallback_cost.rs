//! Pipeline edge cases: a function stage that panics before returning its future, a huge backoff, and a fallback charged its cost; each run still gets exactly one outcome.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use echelon::prelude::*;
use echelon::RunError;

#[derive(Clone, Debug, PartialEq)]
struct Doc(Vec<u32>);

/// A function stage whose *synchronous* part panics (before it returns its future).
/// `CatchUnwind::new(f(input))` evaluates `f(input)` outside the catch, so the panic
/// unwinds the detached run task: no outcome for the run, counters never balance, and
/// the caller is told the run "was lost with the pipeline's actor".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_stage_that_panics_before_its_future_loses_the_run() {
    let p = Pipeline::builder("p")
        .stage(Stage::function("index", |d: Doc| {
            let first = d.0[3]; // out of bounds for a short doc: panics synchronously
            async move { Ok(Doc(vec![first])) }
        }))
        .spawn()
        .await
        .unwrap();
    let report = support::within(5, "run", p.call(Doc(vec![1])))
        .await
        .unwrap();
    eprintln!("{report:?}");
    let shut = p.shutdown(Duration::from_secs(1)).await;
    eprintln!("{shut:?}");
    assert!(
        matches!(report.result, Err(RunError::Stage { .. })),
        "a panicking stage should fail the stage (caught), got {:?}",
        report.result
    );
    assert!(shut.counters.is_balanced(), "{:?}", shut.counters);
}

/// `.cost(n)` on a fallback stage is never charged: `Run::stage` calls `attempt(fb, ..)`
/// without `charge(fb)`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_stage_is_charged_its_cost() {
    let p = Pipeline::builder("p")
        .stage(
            Stage::function("primary", |_d: Doc| async {
                Err(echelon::StageError::Permanent("down".into()))
            })
            .cost(1)
            .fallback(
                Stage::function("expensive-fallback", |d: Doc| async move { Ok(d) }).cost(50),
            ),
        )
        .budget(10)
        .spawn()
        .await
        .unwrap();
    let report = support::within(5, "run", p.call(Doc(vec![1])))
        .await
        .unwrap();
    eprintln!("{report:?}");
    let _ = p.shutdown(Duration::from_secs(1)).await;
    assert!(
        matches!(report.result, Err(RunError::Budget { .. })),
        "a 50-unit fallback ran on a 10-unit budget: spent {} , result {:?}",
        report.spent,
        report.result
    );
}

/// `Retry::backoff(Duration::MAX, Duration::MAX).jitter(0.0)` ("never retry soon") makes
/// `Retry::delay` call `Duration::from_secs_f64(1.8446744073709552e19)`, which panics
/// inside the detached run task: the run is lost like above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_backoff_panics_the_run_task() {
    let p = Pipeline::builder("p")
        .stage(
            Stage::function("flaky", |_d: Doc| async {
                Err(echelon::StageError::Retryable("busy".into()))
            })
            .retry(
                echelon::Retry::attempts(2)
                    .backoff(Duration::MAX, Duration::MAX)
                    .jitter(0.0),
            )
            .timeout(Duration::from_millis(50)),
        )
        .deadline(Duration::from_millis(200))
        .spawn()
        .await
        .unwrap();
    let report = support::within(5, "run", p.call(Doc(vec![1])))
        .await
        .unwrap();
    eprintln!("{report:?}");
    let shut = p.shutdown(Duration::from_millis(300)).await;
    assert!(
        matches!(report.result, Err(RunError::Deadline { .. })),
        "expected the run deadline, got {:?}",
        report.result
    );
    assert!(shut.counters.is_balanced(), "{:?}", shut.counters);
}
