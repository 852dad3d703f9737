//! The no-loss invariant under random crashes: 20,000 seeded tasks over a three-tier
//! hierarchy with an auto-split span, where handlers panic on ~2% of attempts (plus a
//! few "poison" messages that panic on every attempt) and some tasks escalate. Whether
//! an attempt panics is a pure function of (task, stage, attempt), so the expected
//! outcome of every task can be computed independently and compared with the counters.

mod support;

use std::time::Duration;

use echelon::prelude::*;
use echelon::{Counters, ShutdownReport};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use support::{idle, within};

const TASKS: usize = 20_000;
const LEAVES: usize = 64;
const MAX_ATTEMPTS: u32 = 3;
const THRESHOLD: f64 = 0.3;
/// Stage of the top tier: an escalation from there leaves the hierarchy.
const TOP: u8 = 2;

/// A task: its id and how far up it has travelled (0 = leaf, 1 = mid, 2 = top).
#[derive(Clone, Debug)]
struct Job {
    id: u64,
    stage: u8,
}

fn mix(mut x: u64) -> u64 {
    // splitmix64 finaliser
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn h3(id: u64, stage: u8, salt: u64) -> u64 {
    mix(mix(id ^ (u64::from(stage) << 56)) ^ salt.wrapping_mul(0xD6E8_FEB8_6659_FD93))
}

/// Poison: this (task, stage) panics on every attempt (~0.3%).
fn poisoned(id: u64, stage: u8) -> bool {
    h3(id, stage, 0xDEAD) % 10_000 < 30
}

/// Does this attempt panic? ~2% of attempts at random, and every attempt of a poison.
fn panics(id: u64, stage: u8, attempt: u32) -> bool {
    poisoned(id, stage) || h3(id, stage, u64::from(attempt)) % 10_000 < 200
}

/// Does the handler at `stage` escalate, and with which severity? (~30%)
fn escalation(id: u64, stage: u8) -> Option<f64> {
    let h = h3(id, stage, 0xE5CA);
    (h % 100 < 30).then(|| ((h >> 32) % 1_000) as f64 / 1_000.0)
}

struct Worker;

impl Agent for Worker {
    type Msg = Job;

    async fn handle(&mut self, ctx: &mut Ctx<Job>, job: Job) -> Result<Verdict<Job>, AgentError> {
        if panics(job.id, job.stage, ctx.attempt()) {
            panic!(
                "job {} crashed at stage {} on attempt {}",
                job.id,
                job.stage,
                ctx.attempt()
            );
        }
        Ok(match escalation(job.id, job.stage) {
            Some(severity) => Verdict::escalate(
                severity,
                "needs a decision from above",
                Job {
                    id: job.id,
                    stage: job.stage + 1,
                },
            ),
            None => Verdict::Done,
        })
    }
}

/// The counters the deterministic rules predict.
#[derive(Debug, Default, PartialEq, Eq)]
struct Expected {
    completed: u64,
    escalated: u64,
    failed: u64,
    restarts: u64,
    redelivered: u64,
    absorbed: u64,
    /// Ids of the tasks that leave the top, sorted.
    escalated_ids: Vec<u64>,
}

fn expected(ids: &[u64]) -> Expected {
    let mut e = Expected::default();
    for &id in ids {
        let mut stage = 0u8;
        loop {
            let Some(ok) = (1..=MAX_ATTEMPTS).find(|&a| !panics(id, stage, a)) else {
                // every attempt panicked: one restart per crash, then it fails
                e.restarts += u64::from(MAX_ATTEMPTS);
                e.redelivered += u64::from(MAX_ATTEMPTS - 1);
                e.failed += 1;
                break;
            };
            e.restarts += u64::from(ok - 1);
            e.redelivered += u64::from(ok - 1);
            match escalation(id, stage) {
                None => {
                    e.completed += 1;
                    break;
                }
                Some(s) if s < THRESHOLD => {
                    e.absorbed += 1;
                    e.completed += 1;
                    break;
                }
                Some(_) if stage == TOP => {
                    e.escalated += 1;
                    e.escalated_ids.push(id);
                    break;
                }
                Some(_) => stage += 1,
            }
        }
    }
    e.escalated_ids.sort_unstable();
    e
}

struct Run {
    idle: Counters,
    /// Ids of the tasks that reached the escalation sink.
    out_of_top: Vec<u64>,
    report: ShutdownReport,
    ids: Vec<u64>,
    depth: usize,
}

async fn run(seed: u64) -> Run {
    let h = Hierarchy::builder("mesh")
        // 16 leaves per mid agent under a span of 4: team leads are inserted
        .span(SpanOfControl::auto_split(4))
        .escalation(Threshold::severity(THRESHOLD))
        .restart(
            Strategy::OneForOne,
            Intensity::at_most(100_000).per(Duration::from_secs(60)),
        )
        .max_attempts(MAX_ATTEMPTS)
        .seed(seed)
        .tier("top", 1, |_| Worker)
        .tier("mid", 4, |_| Worker)
        .tier("leaf", LEAVES, |_| Worker)
        .spawn()
        .await
        .expect("spawn");
    let depth = h.tree().depth();
    let leaves = h.tier("leaf").expect("leaf tier");
    let mut sink = h.escalations();

    let mut rng = StdRng::seed_from_u64(seed);
    let mut ids = Vec::with_capacity(TASKS);
    for _ in 0..TASKS {
        let id: u64 = rng.random();
        let to = rng.random_range(0..LEAVES);
        leaves[to].send(Job { id, stage: 0 }).expect("accepted");
        ids.push(id);
    }

    let idle = idle(&h, 30).await;
    let report = within(30, "shutdown", h.shutdown(Duration::from_secs(10))).await;
    // the sink closes with the hierarchy, so this ends
    let mut out_of_top = Vec::new();
    within(10, "the escalation sink", async {
        while let Some(e) = sink.recv().await {
            assert_eq!(e.payload.stage, TOP + 1, "{e:?}");
            assert!(e.origin.as_str().contains("/leaf/"), "{e:?}");
            out_of_top.push(e.payload.id);
        }
    })
    .await;
    Run {
        idle,
        out_of_top,
        report,
        ids,
        depth,
    }
}

fn check(run: &Run) {
    let c = run.idle;
    let want = expected(&run.ids);
    assert!(
        want.failed > 0 && want.escalated > 0 && want.absorbed > 0 && want.redelivered > 0,
        "the workload should exercise failures, escalations, absorption and retries: {want:?}"
    );
    assert!(c.is_balanced(), "unbalanced after idle: {c:?}");
    assert_eq!(c.submitted, TASKS as u64, "{c:?}");
    assert_eq!(
        c.failed, want.failed,
        "failed must equal the tasks whose every attempt panicked: {c:?} vs {want:?}"
    );
    assert_eq!(c.completed, want.completed, "{c:?} vs {want:?}");
    assert_eq!(c.escalated, want.escalated, "{c:?} vs {want:?}");
    assert_eq!(c.redelivered, want.redelivered, "{c:?} vs {want:?}");
    assert_eq!(
        c.restarts, want.restarts,
        "one restart per crash: {c:?} vs {want:?}"
    );
    assert_eq!(c.absorbed, want.absorbed, "{c:?} vs {want:?}");
    let mut out_of_top = run.out_of_top.clone();
    out_of_top.sort_unstable();
    assert_eq!(
        out_of_top, want.escalated_ids,
        "exactly the predicted tasks reach the escalation sink, once each"
    );
    assert_eq!(c.failure_escalations, 0, "{c:?}");
    assert_eq!(c.lost_in_mailbox, 0, "{c:?}");

    let r = &run.report;
    assert!(r.drained, "{r:?}");
    assert_eq!(r.failure, None, "{r:?}");
    assert!(r.counters.is_balanced(), "{r:?}");
    assert_eq!(r.counters, c, "nothing changed between idle and shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_task_has_one_outcome_under_random_panics_and_runs_replay() {
    let seed = 0x5EED_2024;
    let first = within(60, "first run", run(seed)).await;
    // root → top team → mid teams → team leads → leaves
    assert!(
        first.depth >= 4,
        "auto-split should add a level: depth {}",
        first.depth
    );
    check(&first);

    let second = within(60, "second run", run(seed)).await;
    assert_eq!(first.ids, second.ids, "same seed, same workload");
    check(&second);
    let outcome = |c: &Counters| (c.submitted, c.completed, c.escalated, c.failed);
    assert_eq!(
        outcome(&first.idle),
        outcome(&second.idle),
        "same seed, same outcomes"
    );
    assert_eq!(
        (first.idle.redelivered, first.idle.restarts),
        (second.idle.redelivered, second.idle.restarts)
    );
}
