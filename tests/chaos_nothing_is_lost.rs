//! Chaos: 100,000 tasks through a three-level hierarchy and a pipeline with a broadcast
//! stage, 1% of handler calls panicking at random (seeded), one team failing past its
//! restart intensity again and again. Afterwards every task has exactly one outcome
//! (submitted = completed + escalated + failed), every failure says why, no caller waited
//! without bound, and resident memory after the drain is within 10% of the steady state.
//!
//! One test in this binary, so nothing else moves its memory.

use std::time::Duration;

use echelon::soak::{run, SoakConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_tasks_under_random_panics_lose_nothing() {
    let cfg = SoakConfig {
        tasks: 100_000,
        panic_rate: 0.01,
        seed: 7,
        concurrency: 512,
    };
    let report = tokio::time::timeout(Duration::from_secs(120), run(&cfg))
        .await
        .expect("the chaos run must finish: no unbounded wait")
        .expect("the chaos hierarchies spawn");
    let r = &report;
    assert_eq!(r.lost, 0, "nothing lost: {r:#?}");
    assert!(
        r.hierarchy.is_balanced() && r.pipeline.is_balanced(),
        "{r:#?}"
    );
    assert_eq!(
        r.refused, 0,
        "the producer waited for room instead of being refused: {r:#?}"
    );
    let (completed, escalated, failed) = r.outcomes;
    assert_eq!(
        completed + escalated + failed,
        r.tasks,
        "every caller got one outcome"
    );
    assert_eq!(
        r.failures_without_reason, 0,
        "every failure carries its reason"
    );
    assert!(
        r.failures.is_empty(),
        "neither hierarchy failed: {:?}",
        r.failures
    );
    assert!(
        r.hierarchy.restarts + r.pipeline.restarts > 500,
        "1% panics restart agents: {r:#?}"
    );
    assert!(
        r.hierarchy.failure_escalations > 0,
        "the doomed team failed past its intensity: {r:#?}"
    );
    assert!(
        failed > 0,
        "tasks that crashed on every attempt fail, with a reason"
    );
    assert!(
        r.rss_after_kb as f64 <= r.rss_before_kb as f64 * 1.10,
        "memory flat after the drain: {} kB before, {} kB after",
        r.rss_before_kb,
        r.rss_after_kb
    );
}
