//! Senders waiting for room (send_wait) wake when room appears through a kill of the agent, and return when the hierarchy stops; they never wait forever.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use echelon::prelude::*;
use tokio::sync::{mpsc, Notify};

#[derive(Clone, Debug)]
enum Job {
    Hold,
    Work,
}

struct Worker {
    gate: Arc<Notify>,
    entered: mpsc::UnboundedSender<()>,
}

impl Agent for Worker {
    type Msg = Job;
    async fn handle(&mut self, _ctx: &mut Ctx<Job>, msg: Job) -> Result<Verdict<Job>, AgentError> {
        if let Job::Hold = msg {
            let _ = self.entered.send(());
            self.gate.notified().await;
        }
        Ok(Verdict::Done)
    }
}

async fn one_worker(cap: u64) -> (Hierarchy<Job>, AgentRef<Job>, mpsc::UnboundedReceiver<()>) {
    let gate = Arc::new(Notify::new());
    let (tx, rx) = mpsc::unbounded_channel();
    let h = Hierarchy::builder("h")
        .mailbox_capacity(cap)
        .tier("w", 1, move |_| Worker {
            gate: gate.clone(),
            entered: tx.clone(),
        })
        .spawn()
        .await
        .unwrap();
    let w = h.agent("w/0").unwrap();
    (h, w, rx)
}

/// The agent is killed while a producer waits for room. The supervisor accounts the dead
/// mailbox (`detach` adds to `settled`), the queue is now empty, but nobody notifies the
/// slot's `room`: the producer sleeps forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_wait_is_woken_when_the_full_agent_is_killed() {
    let (h, w, mut entered) = one_worker(1).await;
    w.send(Job::Hold).unwrap();
    support::within(5, "hold", entered.recv()).await;
    assert_eq!(w.queued(), 1);
    let producer = {
        let w = w.clone();
        tokio::spawn(async move { w.send_wait(Job::Work).await.is_ok() })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!producer.is_finished(), "the producer waits for room");
    assert!(w.kill());
    // the supervisor sees the death, counts the held task as lost and respawns
    for _ in 0..100 {
        if w.counters().lost_in_mailbox == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(w.counters().lost_in_mailbox, 1);
    assert_eq!(w.queued(), 0, "there is room now");
    let sent = tokio::time::timeout(Duration::from_secs(3), producer).await;
    assert!(
        sent.is_ok(),
        "send_wait is still parked although the mailbox is empty (lost wake-up in Slot::detach)"
    );
    let _ = h.stop().await;
}

/// A handler that never finishes holds the mailbox at capacity; the hierarchy is
/// stopped (the stuck actor is killed after the grace period, the slot is closed, the
/// phase is Stopped). The parked producer is never woken: `wait_for_room` is documented
/// to return "when the slot closes or the hierarchy stops".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_wait_returns_when_the_hierarchy_stops() {
    let (h, w, mut entered) = one_worker(1).await;
    w.send(Job::Hold).unwrap();
    support::within(5, "hold", entered.recv()).await;
    let producer = {
        let w = w.clone();
        tokio::spawn(async move { w.send_wait(Job::Work).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let report = h.stop().await; // ~5 s: the held handler is killed
    assert!(w.queued() == 0, "the dead mailbox was accounted");
    let _ = report;
    let r = tokio::time::timeout(Duration::from_secs(3), producer).await;
    assert!(
        r.is_ok(),
        "send_wait still parked after the hierarchy stopped and its slot closed"
    );
}
