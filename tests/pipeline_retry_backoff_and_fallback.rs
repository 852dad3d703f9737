//! Stage retries: exponential backoff with seeded jitter, which failures retry, per-stage
//! timeouts, fallbacks, and crashing stage agents.
//!
//! Time is paused: a stage function records `tokio::time::Instant::now()` on every
//! attempt, so the delays between attempts are the backoff the pipeline slept, to the
//! millisecond. A stage that never answers (an agent waiting on a gate, a function
//! that never returns) times out on its own: with every task idle, the paused clock
//! jumps to the stage's timeout.
//!
//! `Retry::attempts(n).backoff(base, max).jitter(j)` waits `min(max, base * 2^(k-1))`
//! before attempt `k + 1`, cut by a random fraction up to `j`, drawn from an RNG seeded
//! by the hierarchy seed and the run's task id: two pipelines with the same seed and
//! the same layout give their first runs the same task id, so they replay the same
//! delays.

mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use echelon::prelude::*;
use echelon::{PipelineBuilder, PipelineHandle, RetryOn, RunError, RunReport, StageStatus};
use support::{idle, within};
use tokio::sync::Semaphore;
use tokio::time::Instant;

#[derive(Clone, Debug, Default, PartialEq)]
struct Job(Vec<String>);

impl Job {
    fn with(mut self, step: &str) -> Self {
        self.0.push(step.to_string());
        self
    }
}

/// When each attempt of a stage started.
#[derive(Clone, Default)]
struct Probe(Arc<Mutex<Vec<Instant>>>);

impl Probe {
    /// Record an attempt; its number since the last `take`, from 1.
    fn hit(&self) -> usize {
        let mut a = self.0.lock().expect("probe lock");
        a.push(Instant::now());
        a.len()
    }

    fn count(&self) -> usize {
        self.0.lock().expect("probe lock").len()
    }

    /// The delays between consecutive attempts since the last call; starts over.
    fn delays(&self) -> Vec<Duration> {
        let at = std::mem::take(&mut *self.0.lock().expect("probe lock"));
        at.windows(2).map(|w| w[1] - w[0]).collect()
    }
}

/// A function stage whose first `fails` attempts (per run, between `delays` calls)
/// fail with `err`; then it appends its name.
fn flaky(
    name: &'static str,
    probe: &Probe,
    fails: usize,
    err: fn(String) -> StageError,
) -> Stage<Job> {
    let probe = probe.clone();
    Stage::function(name, move |job: Job| {
        let n = probe.hit();
        async move {
            if n <= fails {
                Err(err(format!("{name} failed attempt {n}")))
            } else {
                Ok(job.with(name))
            }
        }
    })
}

/// A function stage that never answers.
fn hangs(name: &'static str, probe: &Probe) -> Stage<Job> {
    let probe = probe.clone();
    Stage::function(name, move |_job: Job| {
        probe.hit();
        std::future::pending::<Result<Job, StageError>>()
    })
}

fn step(name: &'static str) -> Stage<Job> {
    Stage::function(name, move |job: Job| async move { Ok(job.with(name)) })
}

async fn spawn(b: PipelineBuilder<Job>) -> PipelineHandle<Job> {
    within(5, "spawn the pipeline", b.spawn())
        .await
        .expect("the pipeline spawns")
}

async fn run(p: &PipelineHandle<Job>) -> RunReport<Job> {
    within(60, "the run", p.call(Job::default()))
        .await
        .expect("the pipeline takes the run")
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[tokio::test(start_paused = true)]
async fn retryable_failures_back_off_exponentially_within_the_jitter() {
    let probe = Probe::default();
    let retry = Retry::attempts(3).backoff(ms(100), ms(10_000)).jitter(0.5);
    let p = spawn(
        Pipeline::builder("jittered")
            .seed(1)
            .stage(flaky("fetch", &probe, 2, StageError::Retryable).retry(retry)),
    )
    .await;

    let mut cut = false;
    for i in 0..10 {
        let r = run(&p).await;
        assert_eq!(
            r.result,
            Ok(Job::default().with("fetch")),
            "run {i}: {r:#?}"
        );
        assert_eq!(r.stages[0].attempts, 3, "run {i}: {r:#?}");
        assert_eq!(r.stages[0].status, StageStatus::Done);
        let delays = probe.delays();
        assert_eq!(delays.len(), 2, "run {i}: {delays:?}");
        for (d, full) in delays.iter().zip([ms(100), ms(200)]) {
            assert!(
                *d >= full / 2 && *d <= full,
                "run {i}: delay {d:?} not within [{:?}, {full:?}] (all: {delays:?})",
                full / 2
            );
            cut |= *d < full;
        }
        // the stage's time includes its backoff
        assert!(r.stages[0].elapsed >= delays[0] + delays[1], "{r:#?}");
    }
    assert!(
        cut,
        "a jitter of 0.5 shortened at least one delay in ten runs"
    );
    let c = idle(p.hierarchy(), 5).await;
    assert!(c.is_balanced(), "{c:?}");
}

#[tokio::test(start_paused = true)]
async fn without_jitter_the_delays_are_exact_and_capped() {
    let probe = Probe::default();
    let retry = Retry::attempts(4).backoff(ms(100), ms(150)).jitter(0.0);
    let p = spawn(
        Pipeline::builder("exact")
            .stage(flaky("fetch", &probe, 3, StageError::Retryable).retry(retry)),
    )
    .await;
    for _ in 0..2 {
        let r = run(&p).await;
        assert_eq!(r.result, Ok(Job::default().with("fetch")), "{r:#?}");
        assert_eq!(r.stages[0].attempts, 4);
        assert_eq!(probe.delays(), vec![ms(100), ms(150), ms(150)]);
        assert_eq!(r.stages[0].elapsed, ms(400), "{r:#?}");
    }
}

/// The delays of the first run of a fresh pipeline seeded with `seed`, and of its
/// second run.
async fn delays_with_seed(seed: u64) -> (Vec<Duration>, Vec<Duration>) {
    let probe = Probe::default();
    let retry = Retry::attempts(4).backoff(ms(100), ms(10_000)).jitter(1.0);
    let p = spawn(
        Pipeline::builder("seeded")
            .seed(seed)
            .stage(step("prepare"))
            .stage(flaky("fetch", &probe, 3, StageError::Retryable).retry(retry)),
    )
    .await;
    let first = run(&p).await;
    assert_eq!(first.stages[1].attempts, 4, "{first:#?}");
    let first = probe.delays();
    let second = run(&p).await;
    assert_eq!(second.stages[1].attempts, 4, "{second:#?}");
    let second = probe.delays();
    for ds in [&first, &second] {
        for (d, full) in ds.iter().zip([ms(100), ms(200), ms(400)]) {
            assert!(*d <= full, "{d:?} > {full:?}: {ds:?}");
        }
    }
    let report = within(5, "shutdown", p.shutdown(Duration::from_secs(5))).await;
    assert!(report.counters.is_balanced(), "{report:?}");
    (first, second)
}

#[tokio::test(start_paused = true)]
async fn the_same_seed_and_task_replay_the_same_delays() {
    let (a1, a2) = delays_with_seed(7).await;
    let (b1, b2) = delays_with_seed(7).await;
    // same seed, same layout: the n-th run of each pipeline has the same task id
    assert_eq!(a1, b1, "first runs replay");
    assert_eq!(a2, b2, "second runs replay");
    // another task draws other delays, and so does another seed
    assert_ne!(a1, a2, "runs of one pipeline are not in lock-step");
    let (c1, _) = delays_with_seed(8).await;
    assert_ne!(a1, c1, "another seed, other delays");
}

#[tokio::test(start_paused = true)]
async fn permanent_errors_are_not_retried() {
    let probe = Probe::default();
    let p = spawn(
        Pipeline::builder("permanent")
            .stage(
                flaky("fetch", &probe, usize::MAX, StageError::Permanent).retry(Retry::attempts(5)),
            )
            .stage(step("publish")),
    )
    .await;
    let r = run(&p).await;
    assert_eq!(
        r.result,
        Err(RunError::Stage {
            stage: "fetch".into(),
            index: 1,
            stages: 2,
            attempt: 1,
            reason: "fetch failed attempt 1".into(),
        })
    );
    assert_eq!(r.stages[0].attempts, 1);
    assert_eq!(
        r.stages[0].status,
        StageStatus::Failed("fetch failed attempt 1".into())
    );
    assert_eq!(r.stages[1].status, StageStatus::NotRun);
    assert_eq!(probe.count(), 1, "one attempt only");
}

/// How many attempts a stage that fails (or hangs) on every attempt gets.
async fn attempts_with(on: RetryOn, hang: bool) -> (u32, String) {
    let probe = Probe::default();
    let stage = if hang {
        hangs("fetch", &probe)
    } else {
        flaky("fetch", &probe, usize::MAX, StageError::Retryable)
    };
    let retry = Retry::attempts(3).backoff(ms(10), ms(10)).on(on);
    let p = spawn(Pipeline::builder("which").stage(stage.timeout(ms(50)).retry(retry))).await;
    let r = run(&p).await;
    assert_eq!(probe.count() as u32, r.stages[0].attempts, "{r:#?}");
    match r.result {
        Err(RunError::Stage {
            attempt, reason, ..
        }) => {
            assert_eq!(attempt, r.stages[0].attempts);
            (attempt, reason)
        }
        other => panic!("expected the stage to fail, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn retry_on_chooses_which_failures_are_retried() {
    let (n, why) = attempts_with(RetryOn::Timeouts, false).await;
    assert_eq!(
        (n, why.as_str()),
        (1, "fetch failed attempt 1"),
        "Timeouts: a failure is final"
    );
    let (n, why) = attempts_with(RetryOn::Timeouts, true).await;
    assert_eq!(
        (n, why.as_str()),
        (3, "no answer within 50ms"),
        "Timeouts: a timeout retries"
    );
    let (n, why) = attempts_with(RetryOn::Failures, true).await;
    assert_eq!(
        (n, why.as_str()),
        (1, "no answer within 50ms"),
        "Failures: a timeout is final"
    );
    let (n, why) = attempts_with(RetryOn::Failures, false).await;
    assert_eq!(
        (n, why.as_str()),
        (3, "fetch failed attempt 3"),
        "Failures: a failure retries"
    );
    let (n, _) = attempts_with(RetryOn::TimeoutsAndFailures, true).await;
    assert_eq!(n, 3, "default: both retry");
    let (n, _) = attempts_with(RetryOn::TimeoutsAndFailures, false).await;
    assert_eq!(n, 3, "default: both retry");
}

/// Appends its name.
struct Append(&'static str);

impl Agent for Append {
    type Msg = Job;
    async fn handle(&mut self, _ctx: &mut Ctx<Job>, job: Job) -> Result<Verdict<Job>, AgentError> {
        Ok(Verdict::Reply(job.with(self.0)))
    }
}

/// Takes a permit from the gate before answering; counts the tasks it starts.
struct Slow {
    gate: Arc<Semaphore>,
    started: Arc<AtomicU32>,
}

impl Agent for Slow {
    type Msg = Job;
    async fn handle(&mut self, _ctx: &mut Ctx<Job>, job: Job) -> Result<Verdict<Job>, AgentError> {
        self.started.fetch_add(1, Ordering::SeqCst);
        self.gate
            .acquire()
            .await
            .map_err(|e| AgentError::reject(e.to_string()))?
            .forget();
        Ok(Verdict::Reply(job.with("slow")))
    }
}

#[tokio::test(start_paused = true)]
async fn a_stage_timeout_is_retried_then_fails_naming_the_stage() {
    let gate = Arc::new(Semaphore::new(0));
    let started = Arc::new(AtomicU32::new(0));
    let (g, s) = (gate.clone(), started.clone());
    let p = spawn(
        Pipeline::builder("press")
            .stage(step("intake"))
            .stage(
                Stage::agent("slow", move |_| Slow {
                    gate: g.clone(),
                    started: s.clone(),
                })
                .timeout(ms(50))
                .retry(Retry::attempts(3).backoff(ms(10), ms(10)).jitter(0.0)),
            )
            .stage(step("publish")),
    )
    .await;

    let r = run(&p).await;
    let err = r.result.clone().expect_err("the slow stage never answers");
    assert_eq!(
        err,
        RunError::Stage {
            stage: "slow".into(),
            index: 2,
            stages: 3,
            attempt: 3,
            reason: "no answer within 50ms".into(),
        }
    );
    let text = err.to_string();
    assert!(
        text.contains("\"slow\" (2 of 3)")
            && text.contains("attempt 3")
            && text.contains("no answer within 50ms"),
        "{text}"
    );
    assert_eq!(r.stages[0].status, StageStatus::Done);
    assert_eq!(r.stages[1].attempts, 3);
    assert_eq!(
        r.stages[1].status,
        StageStatus::Failed("no answer within 50ms".into())
    );
    // three timeouts and two backoffs, on the paused clock
    assert_eq!(r.stages[1].elapsed, ms(3 * 50 + 2 * 10), "{r:#?}");
    assert_eq!(r.stages[2].status, StageStatus::NotRun);
    assert_eq!(r.stages[2].attempts, 0);
    // the agent is still on the first attempt; the retries wait in its mailbox
    assert_eq!(started.load(Ordering::SeqCst), 1);

    // open the gate: the late answers are ignored and every task is accounted for
    gate.add_permits(3);
    let c = idle(p.hierarchy(), 5).await;
    assert_eq!(started.load(Ordering::SeqCst), 3);
    assert!(c.is_balanced(), "{c:?}");
    assert_eq!(c.failed, 1, "only the run failed: {c:?}");
}

#[tokio::test(start_paused = true)]
async fn a_fallback_gives_the_output_once_the_retries_are_exhausted() {
    let probe = Probe::default();
    let p = spawn(
        Pipeline::builder("fallback")
            .stage(
                flaky("primary", &probe, usize::MAX, |_| {
                    StageError::Retryable("service down".into())
                })
                .retry(Retry::attempts(2).jitter(0.0))
                .fallback(Stage::agent("cache", |_| Append("cache"))),
            )
            .stage(step("publish")),
    )
    .await;
    let r = run(&p).await;
    assert_eq!(
        r.result,
        Ok(Job::default().with("cache").with("publish")),
        "{r:#?}"
    );
    assert_eq!(r.stages[0].name, "primary");
    assert_eq!(r.stages[0].attempts, 2, "the fallback is not an attempt");
    assert_eq!(
        r.stages[0].status,
        StageStatus::Fallback {
            reason: "service down".into()
        }
    );
    assert_eq!(r.stages[1].status, StageStatus::Done);
    assert_eq!(probe.count(), 2);
    let c = idle(p.hierarchy(), 5).await;
    assert!(c.is_balanced() && c.failed == 0, "{c:?}");
}

#[tokio::test(start_paused = true)]
async fn a_failing_fallback_fails_the_run_with_both_reasons() {
    let probe = Probe::default();
    let p = spawn(
        Pipeline::builder("fallback")
            .stage(
                flaky("primary", &probe, usize::MAX, |_| {
                    StageError::Retryable("service down".into())
                })
                .retry(Retry::attempts(2).jitter(0.0))
                .fallback(Stage::function("cache", |_job: Job| async {
                    Err(StageError::Permanent("cache empty".into()))
                })),
            )
            .stage(step("publish")),
    )
    .await;
    let r = run(&p).await;
    let reason = "service down; fallback \"cache\" failed too: cache empty".to_string();
    assert_eq!(
        r.result,
        Err(RunError::Stage {
            stage: "primary".into(),
            index: 1,
            stages: 2,
            attempt: 2,
            reason: reason.clone(),
        })
    );
    assert_eq!(r.stages[0].status, StageStatus::Failed(reason));
    assert_eq!(r.stages[1].status, StageStatus::NotRun);
}

/// Panics while the shared count of handled tasks is at most `crashes`; records the
/// `ctx.attempt()` of every task it handles.
struct Crashy {
    crashes: u32,
    handled: Arc<AtomicU32>,
    attempts: Arc<Mutex<Vec<u32>>>,
}

impl Agent for Crashy {
    type Msg = Job;
    async fn handle(&mut self, ctx: &mut Ctx<Job>, job: Job) -> Result<Verdict<Job>, AgentError> {
        self.attempts
            .lock()
            .expect("attempts lock")
            .push(ctx.attempt());
        if self.handled.fetch_add(1, Ordering::SeqCst) < self.crashes {
            panic!("boom on attempt {}", ctx.attempt());
        }
        Ok(Verdict::Reply(job.with("crashy")))
    }
}

struct CrashyRun {
    report: RunReport<Job>,
    seen: Vec<u32>,
    restarts: u64,
}

/// A run through a stage agent that crashes `crashes` times.
async fn crashy(crashes: u32, retry: Retry, max_attempts: u32) -> CrashyRun {
    let handled = Arc::new(AtomicU32::new(0));
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let (h, a) = (handled.clone(), attempts.clone());
    let p = spawn(
        Pipeline::builder("crashy")
            .max_attempts(max_attempts)
            .stage(
                Stage::agent("crashy", move |_| Crashy {
                    crashes,
                    handled: h.clone(),
                    attempts: a.clone(),
                })
                .retry(retry),
            ),
    )
    .await;
    let report = run(&p).await;
    let c = idle(p.hierarchy(), 5).await;
    assert!(c.is_balanced(), "{c:?}");
    let restarts = p
        .hierarchy()
        .agent("crashy/0")
        .expect("the stage agent")
        .counters()
        .restarts;
    let seen = attempts.lock().expect("attempts lock").clone();
    CrashyRun {
        report,
        seen,
        restarts,
    }
}

#[tokio::test(start_paused = true)]
async fn a_crashing_stage_agent_is_retried_per_the_stages_retry() {
    // each retry is a new task for the restarted agent (no in-place redelivery)
    let r = crashy(2, Retry::attempts(3).jitter(0.0), 1).await;
    assert_eq!(
        r.report.result,
        Ok(Job::default().with("crashy")),
        "{:#?}",
        r.report
    );
    assert_eq!(r.report.stages[0].attempts, 3);
    assert_eq!(r.report.stages[0].status, StageStatus::Done);
    assert_eq!(r.seen, vec![1, 1, 1]);
    assert_eq!(r.restarts, 2);

    // without a retry the first crash fails the run
    let r = crashy(2, Retry::none(), 1).await;
    match &r.report.result {
        Err(RunError::Stage {
            stage,
            attempt: 1,
            reason,
            ..
        }) if stage == "crashy" && reason.contains("boom on attempt 1") => {}
        other => panic!("expected the crash to fail the run, got {other:?}"),
    }
    assert_eq!(r.seen, vec![1]);

    // more retries than crashes allowed by the stage: it fails on its last attempt
    let r = crashy(3, Retry::attempts(2).jitter(0.0), 1).await;
    assert!(
        matches!(&r.report.result, Err(RunError::Stage { attempt: 2, .. })),
        "{:?}",
        r.report.result
    );
    assert_eq!(r.seen, vec![1, 1]);

    // with in-place redelivery the agent's own attempts absorb the crashes: one
    // stage attempt
    let r = crashy(2, Retry::none(), 3).await;
    assert_eq!(r.report.result, Ok(Job::default().with("crashy")));
    assert_eq!(r.report.stages[0].attempts, 1);
    assert_eq!(r.seen, vec![1, 2, 3]);
    assert_eq!(r.restarts, 2);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_function_stage_is_retried() {
    let calls = Arc::new(AtomicU32::new(0));
    let c2 = calls.clone();
    let p = spawn(
        Pipeline::builder("panicky").stage(
            Stage::function("parse", move |job: Job| {
                let n = c2.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n == 0 {
                        panic!("parser bug");
                    }
                    Ok(job.with("parse"))
                }
            })
            .retry(Retry::attempts(2)),
        ),
    )
    .await;
    let r = run(&p).await;
    assert_eq!(r.result, Ok(Job::default().with("parse")), "{r:#?}");
    assert_eq!(r.stages[0].attempts, 2);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}
