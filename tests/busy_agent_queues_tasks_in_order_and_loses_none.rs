//! Tasks sent to an agent that is busy wait in a queue behind its mailbox and are taken
//! after the task in hand (ARCHITECTURE, "Busy agents: the queue behind the mailbox").
//! What a user relies on does not change: one sender's tasks are handled in the order
//! sent, whether they went singly or in batches; a kill in the middle of that queue
//! fails every task it held to its caller and counts it; a graceful shutdown handles
//! everything queued.

mod support;

use std::sync::Arc;
use std::time::Duration;

use echelon::prelude::*;
use support::within;
use tokio::sync::{mpsc, Notify};

#[derive(Clone, Debug)]
enum Job {
    /// From sender `.0`, its `.1`-th task.
    Seq(u32, u32),
    /// Signal entry, then wait for the gate (or a kill).
    Block,
    Ping(u32),
}

/// Records what it handles; yields now and then so that senders outrun it.
struct Recorder {
    seen: mpsc::UnboundedSender<(u32, u32)>,
    entered: mpsc::UnboundedSender<()>,
    gate: Arc<Notify>,
    n: u64,
}

impl Agent for Recorder {
    type Msg = Job;
    async fn handle(&mut self, _ctx: &mut Ctx<Job>, msg: Job) -> Result<Verdict<Job>, AgentError> {
        match msg {
            Job::Seq(s, i) => {
                self.n += 1;
                if self.n % 1000 == 0 {
                    tokio::task::yield_now().await;
                }
                let _ = self.seen.send((s, i));
                Ok(Verdict::Done)
            }
            Job::Block => {
                let _ = self.entered.send(());
                self.gate.notified().await;
                Ok(Verdict::Done)
            }
            Job::Ping(n) => Ok(Verdict::Reply(Job::Ping(n))),
        }
    }
}

struct Rig {
    h: Hierarchy<Job>,
    seen: mpsc::UnboundedReceiver<(u32, u32)>,
    entered: mpsc::UnboundedReceiver<()>,
    gate: Arc<Notify>,
}

async fn rig() -> Rig {
    rig_with(Duration::ZERO).await
}

/// The rig with a restart backoff: a killed agent is respawned after `backoff`.
async fn rig_with(backoff: Duration) -> Rig {
    let (seen_tx, seen) = mpsc::unbounded_channel();
    let (entered_tx, entered) = mpsc::unbounded_channel();
    let gate = Arc::new(Notify::new());
    let g = gate.clone();
    let mut b = Hierarchy::builder("busy");
    if !backoff.is_zero() {
        b = b.backoff(Backoff::exponential(backoff, backoff));
    }
    let h = b
        .tier("w", 1, move |_| Recorder {
            seen: seen_tx.clone(),
            entered: entered_tx.clone(),
            gate: g.clone(),
            n: 0,
        })
        .spawn()
        .await
        .expect("spawn");
    Rig {
        h,
        seen,
        entered,
        gate,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_senders_tasks_are_handled_in_the_order_sent() {
    const SENDERS: u32 = 3;
    const PER: u32 = 30_000;
    let mut r = rig().await;
    let w = r.h.agent("w/0").expect("w/0");
    let mut senders = Vec::new();
    for s in 0..SENDERS {
        let w = w.clone();
        senders.push(tokio::spawn(async move {
            let mut i = 0;
            while i < PER {
                // every few tasks a batch, so batches and single tasks interleave
                if i % 50 == 10 && i + 5 <= PER {
                    w.send_batch((i..i + 5).map(|k| Job::Seq(s, k)))
                        .expect("batch");
                    i += 5;
                } else {
                    w.send(Job::Seq(s, i)).expect("send");
                    i += 1;
                }
                if i % 4096 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    for s in senders {
        within(30, "a sender", s).await.expect("sender task");
    }
    let mut next = vec![0u32; SENDERS as usize];
    within(30, "every task to be handled", async {
        for _ in 0..SENDERS * PER {
            let (s, i) = r.seen.recv().await.expect("the agent records every task");
            assert_eq!(
                i, next[s as usize],
                "sender {s}'s task {i} came when {} was due",
                next[s as usize]
            );
            next[s as usize] += 1;
        }
    })
    .await;
    let c = support::idle(&r.h, 30).await;
    assert_eq!(c.completed, u64::from(SENDERS * PER), "{c:?}");
    let report = r.h.shutdown(Duration::from_secs(10)).await;
    assert!(report.counters.is_balanced(), "{:?}", report.counters);
}

/// Submit `call(job)` in its own task and wait until the agent has counted it, so that
/// the calls are queued in a known order.
async fn call_in_order(
    w: &AgentRef<Job>,
    job: Job,
    submitted: u64,
) -> tokio::task::JoinHandle<Result<Outcome<Job>, echelon::SendError<Job>>> {
    let handle = {
        let w = w.clone();
        tokio::spawn(async move { w.call(job).await })
    };
    support::until(5, "the call to be submitted", || {
        w.counters().submitted >= submitted
    })
    .await;
    handle
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_in_the_middle_of_the_queue_fails_every_task_it_held() {
    let mut r = rig().await;
    let w = r.h.agent("w/0").expect("w/0");
    // the agent is busy with the first block: everything after it queues
    let first = call_in_order(&w, Job::Block, 1).await;
    within(5, "the first block to start", r.entered.recv()).await;
    let mut done_before = Vec::new();
    for n in 0..3 {
        done_before.push(call_in_order(&w, Job::Ping(n), 2 + u64::from(n)).await);
    }
    let second = call_in_order(&w, Job::Block, 5).await;
    let mut lost = Vec::new();
    for n in 0..3 {
        lost.push(call_in_order(&w, Job::Ping(10 + n), 6 + u64::from(n)).await);
    }
    // release the first block: the agent takes the queue and stops in the second block
    r.gate.notify_one();
    within(5, "the second block to start", r.entered.recv()).await;
    assert!(w.kill(), "the agent had a live actor");

    let o = within(5, "the first block", first).await.unwrap().unwrap();
    assert!(matches!(o, Outcome::Completed { .. }), "{o:?}");
    for (n, h) in done_before.into_iter().enumerate() {
        match within(5, "a ping before the second block", h)
            .await
            .unwrap()
            .unwrap()
        {
            Outcome::Completed {
                reply: Some(Job::Ping(m)),
                ..
            } => assert_eq!(m, n as u32),
            other => panic!("a task before the kill must complete, got {other:?}"),
        }
    }
    let o = within(5, "the second block", second)
        .await
        .unwrap()
        .unwrap();
    assert!(o.is_failed(), "the task in hand dies with the actor: {o:?}");
    for h in lost {
        let o = within(5, "a queued ping", h).await.unwrap().unwrap();
        assert!(o.is_failed(), "queued tasks die with the actor: {o:?}");
    }
    // the respawned agent takes new work at the same address
    let o = within(5, "a call after the respawn", w.call(Job::Ping(99)))
        .await
        .unwrap();
    assert!(
        matches!(
            o,
            Outcome::Completed {
                reply: Some(Job::Ping(99)),
                ..
            }
        ),
        "{o:?}"
    );
    let c = w.counters();
    assert_eq!(c.lost_in_mailbox, 4, "{c:?}");
    assert_eq!(c.failed, 4, "{c:?}");
    assert_eq!(c.completed, 5, "{c:?}");
    let report = r.h.shutdown(Duration::from_secs(5)).await;
    assert!(report.counters.is_balanced(), "{:?}", report.counters);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_handles_everything_queued() {
    const N: u32 = 20_000;
    let mut r = rig().await;
    let w = r.h.agent("w/0").expect("w/0");
    for i in 0..N {
        w.send(Job::Seq(0, i)).expect("send");
    }
    let report = within(30, "the shutdown", r.h.shutdown(Duration::from_secs(20))).await;
    assert!(report.drained, "{report:?}");
    assert_eq!(
        report.counters.completed,
        u64::from(N),
        "{:?}",
        report.counters
    );
    assert!(report.counters.is_balanced(), "{:?}", report.counters);
    let mut handled = 0;
    while r.seen.try_recv().is_ok() {
        handled += 1;
    }
    assert_eq!(handled, N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_holds_across_a_respawn_with_tasks_waiting_for_it() {
    const N: u32 = 20_000;
    let mut r = rig_with(Duration::from_millis(20)).await;
    let w = r.h.agent("w/0").expect("w/0");
    for i in 0..N {
        if i == N / 4 {
            // the tasks sent from here wait in the slot while no actor is attached,
            // then go to the new incarnation while this keeps sending
            assert!(w.kill(), "the agent had a live actor");
        }
        w.send(Job::Seq(0, i)).expect("send");
        if i % 256 == 0 {
            tokio::task::yield_now().await;
        }
    }
    // the respawn may come after every task has its outcome (all of them can be
    // lost with the killed actor when it dies before it takes any): wait for it
    support::until(10, "the respawn", || w.counters().restarts >= 1).await;
    let c = support::idle(&r.h, 30).await;
    assert_eq!(c.restarts, 1, "{c:?}");
    assert_eq!(c.completed + c.failed, u64::from(N), "{c:?}");
    let mut last = None;
    let mut handled = 0u64;
    while let Ok((_, i)) = r.seen.try_recv() {
        if let Some(l) = last {
            assert!(i > l, "task {i} was handled after task {l}");
        }
        last = Some(i);
        handled += 1;
    }
    assert_eq!(handled, c.completed, "{c:?}");
    let report = r.h.shutdown(Duration::from_secs(10)).await;
    assert!(report.counters.is_balanced(), "{:?}", report.counters);
}
