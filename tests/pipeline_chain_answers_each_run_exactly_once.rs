//! A chained pipeline answers every run exactly once, with its own output, while
//! thousands of runs are in flight through the same stages at once (calls with a
//! report, calls for the outcome, and fire-and-forget sends), and its counters balance
//! with one task per run.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use echelon::prelude::*;
use echelon::StageStatus;
use support::{idle, within};
use tokio::task::JoinSet;

#[derive(Clone, Debug, PartialEq)]
struct Job {
    id: u32,
    acc: u64,
}

/// Adds `k`.
struct Add(u64);

impl Agent for Add {
    type Msg = Job;
    async fn handle(&mut self, _ctx: &mut Ctx<Job>, j: Job) -> Result<Verdict<Job>, AgentError> {
        Ok(Verdict::Reply(Job {
            acc: j.acc + self.0,
            ..j
        }))
    }
}

/// Passes its input on unchanged (`Verdict::Done`); counts what it sees.
struct Pass(Arc<AtomicU64>);

impl Agent for Pass {
    type Msg = Job;
    async fn handle(&mut self, _ctx: &mut Ctx<Job>, _j: Job) -> Result<Verdict<Job>, AgentError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(Verdict::Done)
    }
}

fn expected(id: u32) -> u64 {
    (u64::from(id) + 1) * 3 + 10
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_runs_in_flight_each_get_one_answer_with_their_own_output() {
    const CALLS: u32 = 2_000;
    const OUTCOMES: u32 = 1_000;
    const SENDS: u32 = 1_000;
    let seen = Arc::new(AtomicU64::new(0));
    let s = seen.clone();
    let p = within(
        5,
        "spawn",
        Pipeline::builder("many")
            .stage(Stage::agent("add1", |_| Add(1)))
            .stage(Stage::function("triple", |j: Job| async move {
                Ok(Job {
                    acc: j.acc * 3,
                    ..j
                })
            }))
            .stage(Stage::agent("pass", move |_| Pass(s.clone())))
            .stage(Stage::agent("add10", |_| Add(10)))
            .spawn(),
    )
    .await
    .expect("spawns");
    assert!(p.is_chained());
    let p = Arc::new(p);

    let mut calls = JoinSet::new();
    for id in 0..CALLS {
        let p = p.clone();
        calls.spawn(async move {
            let r = p
                .call(Job {
                    id,
                    acc: u64::from(id),
                })
                .await;
            (id, r)
        });
    }
    let mut outcomes = JoinSet::new();
    for id in CALLS..CALLS + OUTCOMES {
        let p = p.clone();
        outcomes.spawn(async move {
            let o = p
                .outcome(Job {
                    id,
                    acc: u64::from(id),
                })
                .await;
            (id, o)
        });
    }
    for id in CALLS + OUTCOMES..CALLS + OUTCOMES + SENDS {
        p.entry()
            .send(Job {
                id,
                acc: u64::from(id),
            })
            .expect("taken");
    }

    let mut answered = vec![0u32; (CALLS + OUTCOMES) as usize];
    while let Some(joined) = within(20, "the calls", calls.join_next()).await {
        let (id, r) = joined.expect("caller task");
        let r = r.expect("taken");
        let out = r.result.clone().expect("the run completes");
        assert_eq!(
            out,
            Job {
                id,
                acc: expected(id)
            },
            "{r:#?}"
        );
        assert_eq!(r.stages.len(), 4);
        assert!(
            r.stages
                .iter()
                .all(|s| s.attempts == 1 && s.status == StageStatus::Done),
            "{r:#?}"
        );
        answered[id as usize] += 1;
    }
    while let Some(joined) = within(20, "the outcomes", outcomes.join_next()).await {
        let (id, o) = joined.expect("caller task");
        match o.expect("taken") {
            Outcome::Completed { reply, by, .. } => {
                assert_eq!(
                    reply,
                    Some(Job {
                        id,
                        acc: expected(id)
                    })
                );
                assert_eq!(by.as_str(), "many/pipeline/0");
            }
            other => panic!("run {id}: expected a completion, got {other:?}"),
        }
        answered[id as usize] += 1;
    }
    assert!(answered.iter().all(|&a| a == 1), "every run answered once");

    let c = idle(p.hierarchy(), 20).await;
    let runs = u64::from(CALLS + OUTCOMES + SENDS);
    assert!(c.is_balanced(), "{c:?}");
    assert_eq!(c.submitted, runs, "one task per run: {c:?}");
    assert_eq!(c.completed, runs, "{c:?}");
    assert_eq!(c.failed + c.escalated + c.lost_in_mailbox, 0, "{c:?}");
    assert_eq!(
        seen.load(Ordering::Relaxed),
        runs,
        "the Done stage saw every run once"
    );
}
