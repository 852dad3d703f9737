//! A crashed task is redelivered to the restarted agent, in place, up to the attempt
//! limit; then it fails with the panic message and a trail of every crash. Messages
//! queued behind the crash are kept and handled in order by the new incarnation, and a
//! rejection fails only its task, without a restart.

mod support;

use std::sync::Arc;
use std::time::Duration;

use echelon::prelude::*;
use echelon::{Decision, Failure};
use tokio::sync::{mpsc, Semaphore};

use support::{idle, within};

#[derive(Clone, Debug, PartialEq)]
enum Msg {
    /// Panics while `attempt <= crash_until`, then replies with what it saw.
    Flaky { seq: u32, crash_until: u32 },
    /// Like `Flaky`, but first waits for a permit from the test's gate (attempt 1 only).
    GatedFlaky { seq: u32 },
    /// Returns a crash error (not a panic) on attempt 1, then replies.
    CrashError { seq: u32 },
    /// Panics on every attempt with this text.
    Poison(String),
    /// Rejected: no retry can fix it.
    Bad(String),
    /// Replies with what it saw.
    Echo { seq: u32 },
    /// The reply: which message, on which attempt, by which incarnation, at which path.
    Saw {
        seq: u32,
        attempt: u32,
        incarnation: u64,
        path: String,
    },
}

/// What a successful handler observed, reported on a channel in handling order.
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    seq: u32,
    attempt: u32,
    incarnation: u64,
}

struct Worker {
    seen: mpsc::UnboundedSender<Seen>,
    gate: Arc<Semaphore>,
}

impl Worker {
    fn saw(&self, ctx: &Ctx<Msg>, seq: u32) -> Verdict<Msg> {
        let _ = self.seen.send(Seen {
            seq,
            attempt: ctx.attempt(),
            incarnation: ctx.incarnation(),
        });
        Verdict::Reply(Msg::Saw {
            seq,
            attempt: ctx.attempt(),
            incarnation: ctx.incarnation(),
            path: ctx.path().to_string(),
        })
    }
}

impl Agent for Worker {
    type Msg = Msg;

    async fn handle(&mut self, ctx: &mut Ctx<Msg>, msg: Msg) -> Result<Verdict<Msg>, AgentError> {
        match msg {
            Msg::Flaky { seq, crash_until } => {
                if ctx.attempt() <= crash_until {
                    panic!("flaky worker crashed on attempt {}", ctx.attempt());
                }
                Ok(self.saw(ctx, seq))
            }
            Msg::GatedFlaky { seq } => {
                if ctx.attempt() == 1 {
                    // hold the crash until the test has queued everything behind it
                    let permit = self.gate.acquire().await.expect("gate closed");
                    permit.forget();
                    panic!("gated worker crashed");
                }
                Ok(self.saw(ctx, seq))
            }
            Msg::CrashError { seq } => {
                if ctx.attempt() == 1 {
                    return Err(AgentError::crash("the downstream store timed out"));
                }
                Ok(self.saw(ctx, seq))
            }
            Msg::Poison(text) => panic!("{text}"),
            Msg::Bad(text) => Err(AgentError::reject(text)),
            Msg::Echo { seq } => Ok(self.saw(ctx, seq)),
            Msg::Saw { .. } => Err(AgentError::reject("workers do not take replies")),
        }
    }
}

struct Boss;

impl Agent for Boss {
    type Msg = Msg;

    async fn handle(&mut self, _ctx: &mut Ctx<Msg>, _msg: Msg) -> Result<Verdict<Msg>, AgentError> {
        Ok(Verdict::Done)
    }
}

struct Fixture {
    h: Hierarchy<Msg>,
    seen: mpsc::UnboundedReceiver<Seen>,
    gate: Arc<Semaphore>,
}

async fn spawn(max_attempts: u32) -> Fixture {
    let (tx, seen) = mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(0));
    let g = gate.clone();
    let h = Hierarchy::builder("plant")
        .restart(
            Strategy::OneForOne,
            Intensity::at_most(1_000).per(Duration::from_secs(60)),
        )
        .max_attempts(max_attempts)
        .tier("boss", 1, |_| Boss)
        .tier("worker", 2, move |_| Worker {
            seen: tx.clone(),
            gate: g.clone(),
        })
        .spawn()
        .await
        .expect("spawn");
    Fixture { h, seen, gate }
}

fn saw(outcome: Outcome<Msg>) -> (u32, u32, u64, String) {
    match outcome {
        Outcome::Completed {
            reply:
                Some(Msg::Saw {
                    seq,
                    attempt,
                    incarnation,
                    path,
                }),
            ..
        } => (seq, attempt, incarnation, path),
        other => panic!("expected a completed task with a reply, got {other:?}"),
    }
}

fn failure(outcome: Outcome<Msg>) -> Failure {
    match outcome {
        Outcome::Failed(f) => f,
        other => panic!("expected a failed task, got {other:?}"),
    }
}

async fn finish(h: Hierarchy<Msg>) {
    let report = within(10, "shutdown", h.shutdown(Duration::from_secs(5))).await;
    assert!(report.drained, "{report:?}");
    assert!(report.counters.is_balanced(), "{report:?}");
    assert_eq!(report.failure, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_crashes_once_is_redelivered_and_completes_with_its_reply() {
    let Fixture { h, .. } = spawn(3).await;
    // taken before the crash, used after it
    let worker = h.agent("worker/1").expect("worker/1");
    let path = worker.path().to_string();

    let out = within(
        5,
        "the flaky call",
        worker.call(Msg::Flaky {
            seq: 7,
            crash_until: 1,
        }),
    )
    .await
    .expect("accepted");
    let by = match &out {
        Outcome::Completed { by, .. } => by.to_string(),
        other => panic!("expected completed, got {other:?}"),
    };
    assert_eq!(by, path, "completed by the agent it was sent to");
    let (seq, attempt, incarnation, at) = saw(out);
    assert_eq!(seq, 7);
    assert_eq!(attempt, 2, "the reply comes from the second attempt");
    assert_eq!(
        incarnation, 1,
        "the second attempt ran on a fresh incarnation"
    );
    assert_eq!(at, path, "the restarted agent keeps its path");

    let c = worker.counters();
    assert_eq!(c.redelivered, 1, "{c:?}");
    assert_eq!(c.restarts, 1, "{c:?}");
    assert_eq!((c.submitted, c.completed, c.failed), (1, 1, 0), "{c:?}");

    // the handle obtained before the crash still reaches the (new) agent
    let (_, attempt, incarnation, _) =
        saw(
            within(5, "echo after the crash", worker.call(Msg::Echo { seq: 8 }))
                .await
                .expect("accepted"),
        );
    assert_eq!((attempt, incarnation), (1, 1));

    // a crash *error* is a crash too: restarted and redelivered
    let (_, attempt, incarnation, _) =
        saw(
            within(5, "crash error", worker.call(Msg::CrashError { seq: 9 }))
                .await
                .expect("accepted"),
        );
    assert_eq!((attempt, incarnation), (2, 2));

    let total = idle(&h, 5).await;
    assert_eq!(total.redelivered, 2, "{total:?}");
    assert_eq!(total.restarts, 2, "{total:?}");
    assert!(total.is_balanced(), "{total:?}");
    assert_eq!(
        h.agent("worker/0").expect("worker/0").counters().restarts,
        0,
        "one-for-one: the sibling was not restarted"
    );
    finish(h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_queued_behind_a_crash_are_handled_in_order_by_the_new_incarnation() {
    let Fixture {
        h, mut seen, gate, ..
    } = spawn(3).await;
    let worker = h.agent("worker/0").expect("worker/0");
    const BEHIND: u32 = 200;

    worker
        .send(Msg::GatedFlaky { seq: 0 })
        .expect("send the crashing task");
    // two senders queue behind it concurrently: one on its own task, one here
    let other = worker.clone();
    let second = tokio::spawn(async move {
        for seq in 1_001..=1_000 + BEHIND {
            other.send(Msg::Echo { seq }).expect("send");
            tokio::task::yield_now().await;
        }
    });
    for seq in 1..=BEHIND {
        worker.send(Msg::Echo { seq }).expect("send");
        tokio::task::yield_now().await;
    }
    within(5, "second sender", second)
        .await
        .expect("second sender");
    // everything is queued behind the crashing message: let it crash now
    gate.add_permits(1);

    let total = 1 + 2 * BEHIND as usize;
    let mut order = Vec::new();
    within(10, "all queued messages handled", async {
        while order.len() < total {
            order.push(seen.recv().await.expect("worker alive"));
        }
    })
    .await;

    assert_eq!(
        order[0],
        Seen {
            seq: 0,
            attempt: 2,
            incarnation: 1
        },
        "the crashed message is redelivered first, to the new incarnation"
    );
    for s in &order[1..] {
        assert_eq!(
            (s.attempt, s.incarnation),
            (1, 1),
            "queued messages are handled once, by the new incarnation: {s:?}"
        );
    }
    let from = |range: std::ops::RangeInclusive<u32>| -> Vec<u32> {
        order
            .iter()
            .map(|s| s.seq)
            .filter(|seq| range.contains(seq))
            .collect()
    };
    assert_eq!(
        from(1..=BEHIND),
        (1..=BEHIND).collect::<Vec<_>>(),
        "FIFO for the first sender"
    );
    assert_eq!(
        from(1_001..=1_000 + BEHIND),
        (1_001..=1_000 + BEHIND).collect::<Vec<_>>(),
        "FIFO for the second sender"
    );

    let c = idle(&h, 5).await;
    let w = worker.counters();
    assert_eq!(w.restarts, 1, "{w:?}");
    assert_eq!(w.redelivered, 1, "{w:?}");
    assert_eq!(w.completed, total as u64, "{w:?}");
    assert_eq!(w.failed, 0, "{w:?}");
    assert!(c.is_balanced(), "{c:?}");
    finish(h).await;
}

async fn always_crashing_task_fails_after(max_attempts: u32) {
    let Fixture { h, .. } = spawn(max_attempts).await;
    let worker = h.agent("worker/1").expect("worker/1");
    let path = worker.path().clone();

    let f = failure(
        within(
            5,
            "the poisoned call",
            worker.call(Msg::Poison("valve 7 pressure reading is NaN".into())),
        )
        .await
        .expect("accepted"),
    );
    assert_eq!(f.attempts, max_attempts, "{f:?}");
    assert_eq!(f.at, path, "{f:?}");
    assert!(
        f.reason.contains("valve 7 pressure reading is NaN"),
        "the reason carries the panic message: {f:?}"
    );

    let crashes: Vec<(u32, &str)> = f
        .trail
        .iter()
        .filter_map(|e| match &e.decision {
            Decision::Crashed { attempt, reason } => {
                assert_eq!(e.path, path, "crash recorded at the agent: {e:?}");
                Some((*attempt, reason.as_str()))
            }
            _ => None,
        })
        .collect();
    let attempts: Vec<u32> = crashes.iter().map(|(a, _)| *a).collect();
    assert_eq!(
        attempts,
        (1..=max_attempts).collect::<Vec<_>>(),
        "one Crashed entry per attempt, in order: {:?}",
        f.trail
    );
    for (_, reason) in &crashes {
        assert!(
            reason.contains("valve 7 pressure reading is NaN"),
            "{crashes:?}"
        );
    }
    assert!(
        matches!(
            f.trail.last().map(|e| &e.decision),
            Some(Decision::Failed { .. })
        ),
        "the trail ends with the failure: {:?}",
        f.trail
    );

    let c = worker.counters();
    assert_eq!(c.failed, 1, "{c:?}");
    assert_eq!(c.completed, 0, "{c:?}");
    assert_eq!(c.redelivered, u64::from(max_attempts - 1), "{c:?}");
    assert_eq!(
        c.restarts,
        u64::from(max_attempts),
        "one restart per crash: {c:?}"
    );

    // the agent is alive again and reachable through the same handle
    let (_, attempt, incarnation, _) = saw(within(
        5,
        "echo after the failure",
        worker.call(Msg::Echo { seq: 1 }),
    )
    .await
    .expect("accepted"));
    assert_eq!(attempt, 1);
    assert_eq!(incarnation, u64::from(max_attempts));

    let total = idle(&h, 5).await;
    assert!(total.is_balanced(), "{total:?}");
    assert_eq!((total.submitted, total.completed, total.failed), (2, 1, 1));
    finish(h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_always_crashes_fails_after_one_attempt_when_the_limit_is_one() {
    always_crashing_task_fails_after(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_always_crashes_fails_after_three_attempts_with_every_crash_in_its_trail() {
    always_crashing_task_fails_after(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejection_fails_only_its_task_once_without_restart() {
    let Fixture { h, mut seen, .. } = spawn(3).await;
    let worker = h.agent("worker/0").expect("worker/0");

    let bad = worker.call(Msg::Bad("order 12 has a negative quantity".into()));
    let f = failure(within(5, "the rejected call", bad).await.expect("accepted"));
    assert_eq!(f.attempts, 1, "a rejection is not retried: {f:?}");
    assert!(
        f.reason.contains("order 12 has a negative quantity"),
        "{f:?}"
    );
    assert!(
        !f.trail
            .iter()
            .any(|e| matches!(e.decision, Decision::Crashed { .. })),
        "a rejection is not a crash: {:?}",
        f.trail
    );

    // the next task is handled normally, by the same incarnation
    worker.send(Msg::Echo { seq: 1 }).expect("send");
    let s = within(5, "echo after the rejection", seen.recv())
        .await
        .expect("worker alive");
    assert_eq!(
        s,
        Seen {
            seq: 1,
            attempt: 1,
            incarnation: 0
        },
        "the same incarnation carries on"
    );

    let c = idle(&h, 5).await;
    assert_eq!(c.restarts, 0, "{c:?}");
    assert_eq!(c.redelivered, 0, "{c:?}");
    assert_eq!((c.submitted, c.completed, c.failed), (2, 1, 1), "{c:?}");
    finish(h).await;
}
