//! Chaos and soak: many tasks through a hierarchy and a pipeline with a broadcast stage,
//! with handlers panicking at random (seeded) and one team failing past its restart
//! intensity; then the accounting. Used by the chaos test and `echelon soak`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::pipeline::{Pipeline, Retry, Stage};
use crate::router::{Gather, Route, Router};
use crate::{
    Agent, AgentError, Counters, Ctx, Hierarchy, Intensity, Outcome, SpanOfControl, Strategy,
    Threshold, Verdict,
};

/// What to run.
#[derive(Clone, Debug)]
pub struct SoakConfig {
    /// Tasks in all (70% into the hierarchy, 30% through the pipeline).
    pub tasks: u64,
    /// Probability that a handler call panics.
    pub panic_rate: f64,
    /// Seed for the panics and the workload.
    pub seed: u64,
    /// Calls in flight at once (the producer waits beyond that).
    pub concurrency: usize,
}

impl Default for SoakConfig {
    fn default() -> Self {
        SoakConfig {
            tasks: 100_000,
            panic_rate: 0.01,
            seed: 1,
            concurrency: 512,
        }
    }
}

/// What happened.
#[derive(Clone, Debug, Serialize)]
pub struct SoakReport {
    /// Tasks submitted by the producer.
    pub tasks: u64,
    /// Outcomes seen by the callers: completed, escalated, failed.
    pub outcomes: (u64, u64, u64),
    /// Failed outcomes whose reason was empty (must be 0).
    pub failures_without_reason: u64,
    /// Counters of the hierarchy after its drain.
    pub hierarchy: Counters,
    /// Counters of the pipeline after its drain.
    pub pipeline: Counters,
    /// Tasks the producer could not submit (refused at the door): must be 0, since the
    /// soak waits for room rather than shedding load.
    pub refused: u64,
    /// Why the hierarchy or the pipeline failed, if one did.
    pub failures: Vec<String>,
    /// Tasks unaccounted for (submitted − completed − escalated − failed), both: must be 0.
    pub lost: i64,
    /// Resident memory (kB) after the first half of the tasks (the steady state).
    pub rss_before_kb: u64,
    /// Resident memory (kB) after the drain.
    pub rss_after_kb: u64,
    /// Wall time.
    pub seconds: f64,
}

/// Resident set size of this process in kB, from /proc/self/status (0 elsewhere).
pub fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// A task of the soak.
#[derive(Clone, Debug)]
pub enum Job {
    /// Ordinary work: may escalate by its value.
    Work(u64),
    /// Work for the doomed team: always panics there.
    Doom(u64),
}

struct Chaos {
    panic_rate: f64,
    doomed: bool,
}

impl Agent for Chaos {
    type Msg = Job;
    async fn handle(&mut self, ctx: &mut Ctx<Job>, msg: Job) -> Result<Verdict<Job>, AgentError> {
        if self.panic_rate > 0.0 && ctx.rng().random_bool(self.panic_rate) {
            panic!("soak: injected panic in {}", ctx.path());
        }
        match msg {
            Job::Doom(_) if self.doomed => panic!("soak: the doomed team always fails"),
            Job::Work(n) | Job::Doom(n) if n % 10 == 0 => Ok(Verdict::escalate(
                (n % 100) as f64 / 100.0,
                "soak escalation",
                msg,
            )),
            other => Ok(Verdict::Reply(other)),
        }
    }
}

/// Run the soak on the current tokio runtime.
///
/// # Errors
/// A build error if a hierarchy cannot be spawned.
pub async fn run(cfg: &SoakConfig) -> Result<SoakReport, crate::BuildError> {
    let p = cfg.panic_rate;
    // leaves under mid/0 are doomed: a Doom task crashes them every attempt, so their
    // team exceeds its intensity and fails upward
    let h = Hierarchy::builder("soak")
        .seed(cfg.seed)
        .span(SpanOfControl::auto_split(8))
        .mailbox_capacity(256)
        .escalation(Threshold::severity(0.5))
        .restart(
            Strategy::OneForOne,
            // generous enough for 1% random panics; the doomed team's steady crashes
            // still exceed it, so that team fails upward again and again
            Intensity::at_most(200).per(Duration::from_secs(1)),
        )
        .tier("lead", 2, move |_| Chaos {
            panic_rate: p,
            doomed: false,
        })
        .tier("mid", 8, move |_| Chaos {
            panic_rate: p,
            doomed: false,
        })
        .tier("leaf", 64, move |i| Chaos {
            panic_rate: p,
            doomed: i < 8,
        })
        .spawn()
        .await?;
    let pipe = Pipeline::builder("soak-pipeline")
        .seed(cfg.seed)
        .restart(
            Strategy::OneForOne,
            Intensity::at_most(200).per(Duration::from_secs(1)),
        )
        .max_attempts(3)
        .stage(Stage::agent("first", move |_| Chaos {
            panic_rate: p,
            doomed: false,
        }))
        .stage(Stage::router(
            Router::builder("fan")
                .workers("checker", 3, move |_| Chaos {
                    panic_rate: p,
                    doomed: false,
                })
                .route(Route::Broadcast)
                .gather(Gather::first()),
        ))
        .stage(
            Stage::agent("last", move |_| Chaos {
                panic_rate: p,
                doomed: false,
            })
            .retry(Retry::attempts(2).backoff(Duration::from_millis(1), Duration::from_millis(5))),
        )
        .spawn()
        .await?;
    let mut rss_before_kb = rss_kb();
    // the first half warms up: the allocator's working set for this load is in place
    // when "before" is taken, so growth over the second, equal half would be a leak
    let warm_up = cfg.tasks / 2;
    let started = Instant::now();
    let leaves = h.tier("leaf").unwrap_or_default();
    let limit = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let outcomes = Arc::new([
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
    ]);
    let mut rng = rand::rngs::StdRng::seed_from_u64_compat(cfg.seed);
    let mut tasks = 0u64;
    for n in 0..cfg.tasks {
        if n == warm_up && n > 0 {
            // "before" is the steady state after a warm-up: the allocator's working set
            // for this load is in place, so growth from here would be a leak
            let _ = limit.acquire_many(cfg.concurrency.max(1) as u32).await;
            rss_before_kb = rss_kb();
        }
        let Ok(permit) = limit.clone().acquire_owned().await else {
            break;
        };
        let outcomes = outcomes.clone();
        let to_pipeline = rng.random_bool(0.3);
        let fut: std::pin::Pin<Box<dyn std::future::Future<Output = Option<Outcome<Job>>> + Send>> =
            if to_pipeline {
                let entry = pipe.entry().clone();
                Box::pin(async move { entry.call_wait(Job::Work(n)).await.ok() })
            } else if leaves.is_empty() {
                Box::pin(async { None })
            } else {
                // every hundredth task is aimed at the doomed team (leaves 0..8)
                let (leaf, job) = if n % 100 == 7 {
                    (
                        leaves[(n / 100 % 8) as usize % leaves.len()].clone(),
                        Job::Doom(n),
                    )
                } else {
                    (
                        leaves[rng.random_range(0..leaves.len())].clone(),
                        Job::Work(n),
                    )
                };
                Box::pin(async move { leaf.call_wait(job).await.ok() })
            };
        tasks += 1;
        tokio::spawn(async move {
            let slot = match fut.await {
                Some(Outcome::Completed { .. }) => 0,
                Some(Outcome::Escalated { .. }) => 1,
                Some(Outcome::Failed(f)) => {
                    if f.reason.trim().is_empty() {
                        outcomes[3].fetch_add(1, Ordering::Relaxed);
                    }
                    2
                }
                // refused at the door (full, closed): never submitted
                None => 3,
            };
            if slot < 3 {
                outcomes[slot].fetch_add(1, Ordering::Relaxed);
            }
            drop(permit);
        });
    }
    // every caller has its outcome once all permits are back
    let _ = limit.acquire_many(cfg.concurrency.max(1) as u32).await;
    let hr = h.shutdown(Duration::from_secs(60)).await;
    let pr = pipe.shutdown(Duration::from_secs(60)).await;
    let failures: Vec<String> = [hr.failure, pr.failure].into_iter().flatten().collect();
    let (hc, pc) = (hr.counters, pr.counters);
    let lost = (hc.submitted + pc.submitted) as i64
        - (hc.completed + hc.escalated + hc.failed + pc.completed + pc.escalated + pc.failed)
            as i64;
    Ok(SoakReport {
        tasks,
        outcomes: (
            outcomes[0].load(Ordering::Relaxed),
            outcomes[1].load(Ordering::Relaxed),
            outcomes[2].load(Ordering::Relaxed),
        ),
        failures_without_reason: outcomes[3].load(Ordering::Relaxed),
        refused: tasks
            - outcomes[0].load(Ordering::Relaxed)
            - outcomes[1].load(Ordering::Relaxed)
            - outcomes[2].load(Ordering::Relaxed),
        failures,
        hierarchy: hc,
        pipeline: pc,
        lost,
        rss_before_kb,
        rss_after_kb: rss_kb(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

trait SeedCompat {
    fn seed_from_u64_compat(seed: u64) -> Self;
}

impl SeedCompat for rand::rngs::StdRng {
    fn seed_from_u64_compat(seed: u64) -> Self {
        <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed)
    }
}
