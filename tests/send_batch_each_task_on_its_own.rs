//! `AgentRef::send_batch`: many tasks in one mailbox message, each a task of its own.
//! Every task is counted, gets its own id, verdict and outcome, and is redelivered on
//! its own after a crash (the rest of the batch waits, then runs in order). Capacity
//! and backpressure count tasks, not messages. A kill mid-batch counts exactly the
//! unfinished tasks as lost.

mod support;

use std::sync::Arc;
use std::time::Duration;

use echelon::prelude::*;
use echelon::{SendError, TaskId};
use support::{idle, within};
use tokio::sync::{mpsc, Notify};

#[derive(Clone, Debug, PartialEq)]
enum Job {
    /// Handled: reported on the channel, then done.
    Ok(u32),
    /// Panics on its first attempt, then handled.
    CrashOnce(u32),
    /// Panics on every attempt.
    Poison(u32),
    /// Rejected: fails without a restart.
    Bad(u32),
    /// Escalates with this severity (the root's sink takes it out of the top).
    Alarm(u32, f64),
    /// Signals entry, then waits on the gate.
    Hold(u32),
}

/// (job number, attempt, incarnation, task id)
type Seen = (u32, u32, u64, TaskId);

struct Worker {
    seen: mpsc::UnboundedSender<Seen>,
    gate: Arc<Notify>,
}

impl Agent for Worker {
    type Msg = Job;
    async fn handle(&mut self, ctx: &mut Ctx<Job>, msg: Job) -> Result<Verdict<Job>, AgentError> {
        let see = |n| (n, ctx.attempt(), ctx.incarnation(), ctx.task_id());
        match msg {
            Job::Ok(n) => {
                let _ = self.seen.send(see(n));
                Ok(Verdict::Done)
            }
            Job::CrashOnce(n) => {
                if ctx.attempt() == 1 {
                    panic!("crash once on {n}");
                }
                let _ = self.seen.send(see(n));
                Ok(Verdict::Done)
            }
            Job::Poison(n) => panic!("poison {n}"),
            Job::Bad(n) => Err(AgentError::reject(format!("bad {n}"))),
            Job::Alarm(n, s) => {
                let _ = self.seen.send(see(n));
                Ok(Verdict::escalate(s, "alarm", Job::Alarm(n, s)))
            }
            Job::Hold(n) => {
                let _ = self.seen.send(see(n));
                self.gate.notified().await;
                Ok(Verdict::Done)
            }
        }
    }
}

async fn spawn(
    capacity: Option<u64>,
) -> (Hierarchy<Job>, mpsc::UnboundedReceiver<Seen>, Arc<Notify>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let gate = Arc::new(Notify::new());
    let g = gate.clone();
    let mut b = Hierarchy::builder("h").max_attempts(3);
    if let Some(c) = capacity {
        b = b.mailbox_capacity(c);
    }
    let h = b
        .tier("w", 1, move |_| Worker {
            seen: tx.clone(),
            gate: g.clone(),
        })
        .spawn()
        .await
        .expect("spawn");
    (h, rx, gate)
}

fn drain(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Vec<Seen> {
    let mut v = Vec::new();
    while let Ok(s) = rx.try_recv() {
        v.push(s);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_task_of_a_batch_is_counted_once_with_its_own_id_in_order() {
    let (h, mut seen, _gate) = spawn(None).await;
    let w = h.agent("w/0").unwrap();
    let jobs: Vec<Job> = (0..1_000u32)
        .map(|n| match n % 10 {
            3 => Job::Bad(n),
            7 => Job::Alarm(n, 0.9),
            _ => Job::Ok(n),
        })
        .collect();
    let ids = w.send_batch(jobs).expect("the batch is taken");
    assert_eq!(ids.len(), 1_000);
    let ids: Vec<TaskId> = ids.iter().collect();
    let c = idle(&h, 10).await;
    assert!(c.is_balanced(), "{c:?}");
    assert_eq!(c.submitted, 1_000, "each task counted as submitted: {c:?}");
    assert_eq!(c.failed, 100, "the rejected ones, and only them: {c:?}");
    assert_eq!(c.escalated, 100, "the alarms left the top: {c:?}");
    assert_eq!(c.completed, 800, "{c:?}");
    assert_eq!(c.restarts, 0, "a rejection restarts nothing: {c:?}");
    let seen = drain(&mut seen);
    let order: Vec<u32> = seen.iter().map(|s| s.0).collect();
    let expected: Vec<u32> = (0..1_000).filter(|n| n % 10 != 3).collect();
    assert_eq!(order, expected, "handled in the batch's order");
    for (n, _, _, id) in &seen {
        assert_eq!(*id, ids[*n as usize], "task {n} runs with its own id");
    }
    let mut distinct = ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 1_000, "ids are distinct");
    // a batch and a single send get different ids too
    let single = w.send(Job::Ok(5_000)).unwrap();
    assert!(!ids.contains(&single));
    let report = h.shutdown(Duration::from_secs(5)).await;
    assert!(report.counters.is_balanced(), "{:?}", report.counters);
    assert_eq!(report.counters.submitted, 1_001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_batch_affects_only_that_task_and_the_rest_runs_in_order() {
    let (h, mut seen, _gate) = spawn(None).await;
    let w = h.agent("w/0").unwrap();
    let batch = vec![
        Job::Ok(0),
        Job::CrashOnce(1),
        Job::Ok(2),
        Job::Poison(3),
        Job::Ok(4),
    ];
    w.send_batch(batch).unwrap();
    let c = idle(&h, 10).await;
    assert!(c.is_balanced(), "{c:?}");
    assert_eq!(c.submitted, 5);
    assert_eq!(c.completed, 4, "{c:?}");
    assert_eq!(c.failed, 1, "only the poison fails: {c:?}");
    // one restart for the crash-once, three for the poison (max_attempts 3)
    assert_eq!(c.restarts, 4, "{c:?}");
    assert_eq!(c.redelivered, 1 + 2, "{c:?}");
    let seen = drain(&mut seen);
    let got: Vec<(u32, u32, u64)> = seen.iter().map(|s| (s.0, s.1, s.2)).collect();
    assert_eq!(
        got,
        vec![(0, 1, 0), (1, 2, 1), (2, 1, 1), (4, 1, 4)],
        "the crashed task is redelivered before the rest of the batch, which then runs \
         in order on the new incarnation"
    );
    let report = h.shutdown(Duration::from_secs(5)).await;
    assert!(report.counters.is_balanced(), "{:?}", report.counters);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_and_backpressure_count_tasks_not_messages() {
    let (h, mut seen, gate) = spawn(Some(10)).await;
    let w = h.agent("w/0").unwrap();
    w.send(Job::Hold(0)).unwrap();
    within(5, "the worker to hold", seen.recv()).await;
    assert_eq!(w.queued(), 1);
    // 1 + 10 > 10: the whole batch is refused and given back, each task counted
    match w.send_batch((1..=10).map(Job::Ok)) {
        Err(SendError::Full { msg, capacity, .. }) => {
            assert_eq!(capacity, 10);
            assert_eq!(msg, (1..=10).map(Job::Ok).collect::<Vec<_>>());
        }
        other => panic!("a batch without room must be refused whole: {other:?}"),
    }
    assert_eq!(w.counters().rejected, 10);
    assert_eq!(w.counters().submitted, 1, "nothing of it was submitted");
    // 1 + 9 = 10 fits exactly
    w.send_batch((1..=9).map(Job::Ok)).unwrap();
    assert_eq!(w.queued(), 10, "the queue counts the batch's tasks");
    assert!(matches!(w.send(Job::Ok(99)), Err(SendError::Full { .. })));
    // a producer waiting for room for 5 tasks is let in once they have drained
    let waiting = {
        let w = w.clone();
        tokio::spawn(async move { w.send_batch_wait((20..25).map(Job::Ok)).await })
    };
    tokio::task::yield_now().await;
    assert_eq!(w.counters().submitted, 10, "still waiting for room");
    gate.notify_one();
    within(5, "the waiting batch", waiting)
        .await
        .unwrap()
        .unwrap();
    let c = idle(&h, 5).await;
    assert!(c.is_balanced(), "{c:?}");
    assert_eq!(
        (c.submitted, c.completed, c.rejected),
        (15, 15, 11),
        "{c:?}"
    );
    // an empty mailbox takes a batch larger than the capacity (never refused forever)
    let big = w.send_batch((100..130).map(Job::Ok)).unwrap();
    assert_eq!(big.len(), 30);
    let c = idle(&h, 5).await;
    assert_eq!(c.completed, 45, "{c:?}");
    // an empty batch sends nothing
    assert!(w.send_batch(Vec::new()).unwrap().is_empty());
    h.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_mid_batch_counts_exactly_the_unfinished_tasks_as_lost() {
    let (h, mut seen, _gate) = spawn(None).await;
    let w = h.agent("w/0").unwrap();
    let mut batch: Vec<Job> = vec![Job::Ok(0), Job::Ok(1), Job::Hold(2)];
    batch.extend((3..10).map(Job::Ok));
    w.send_batch(batch).unwrap();
    within(5, "the worker to hold task 2", async {
        while seen.recv().await.map(|s| s.0) != Some(2) {}
    })
    .await;
    assert_eq!(w.queued(), 8, "tasks 2..10 are unsettled");
    assert!(w.kill());
    within(5, "the respawn", async {
        while w.counters().restarts < 1 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    let c = w.counters();
    assert_eq!(
        c.lost_in_mailbox, 8,
        "the held task and the 7 behind it: {c:?}"
    );
    assert_eq!(c.failed, 8, "{c:?}");
    assert_eq!(c.completed, 2, "{c:?}");
    // the respawned agent takes batches again
    w.send_batch([Job::Ok(50), Job::Ok(51)]).unwrap();
    let c = idle(&h, 5).await;
    assert!(c.is_balanced(), "{c:?}");
    assert_eq!((c.submitted, c.completed, c.failed), (12, 4, 8), "{c:?}");
    h.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_after_shutdown_is_refused_with_its_messages() {
    let (h, _seen, _gate) = spawn(None).await;
    let w = h.agent("w/0").unwrap();
    w.send_batch([Job::Ok(1), Job::Ok(2)]).unwrap();
    let report = h.shutdown(Duration::from_secs(5)).await;
    assert!(report.counters.is_balanced(), "{:?}", report.counters);
    assert_eq!(report.counters.completed, 2);
    match w.send_batch([Job::Ok(3), Job::Ok(4)]) {
        Err(SendError::ShuttingDown { msg }) => assert_eq!(msg, vec![Job::Ok(3), Job::Ok(4)]),
        other => panic!("refused once the hierarchy stopped: {other:?}"),
    }
    assert_eq!(
        w.counters().submitted,
        2,
        "a refused batch is not submitted"
    );
}
