//! Overload: a bounded mailbox refuses work with an explicit, counted error
//! (`SendError::Full`, the message given back), or slows the producer down
//! (`send_wait`); memory stays bounded and nothing is dropped silently. Internal traffic
//! (escalations) is never refused.

mod support;

use std::sync::Arc;
use std::time::Duration;

use echelon::prelude::*;
use echelon::SendError;
use support::{idle, within};
use tokio::sync::{mpsc, Notify};

#[derive(Clone, Debug)]
enum Job {
    Hold,
    Work(u32),
    Alarm,
}

struct Worker {
    gate: Arc<Notify>,
    entered: mpsc::UnboundedSender<()>,
}

impl Agent for Worker {
    type Msg = Job;
    async fn handle(&mut self, _ctx: &mut Ctx<Job>, msg: Job) -> Result<Verdict<Job>, AgentError> {
        match msg {
            Job::Hold => {
                let _ = self.entered.send(());
                self.gate.notified().await;
                Ok(Verdict::Done)
            }
            Job::Work(_) => {
                // the work: one virtual millisecond (the producer is ten times faster)
                tokio::time::sleep(Duration::from_millis(1)).await;
                Ok(Verdict::Done)
            }
            Job::Alarm => Ok(Verdict::escalate(0.9, "alarm", Job::Alarm)),
        }
    }
}

fn worker(
    gate: &Arc<Notify>,
    tx: &mpsc::UnboundedSender<()>,
) -> impl Fn(usize) -> Worker + Send + Sync + 'static {
    let (gate, tx) = (gate.clone(), tx.clone());
    move |_| Worker {
        gate: gate.clone(),
        entered: tx.clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_mailbox_refuses_with_the_message_back_and_counts_it() {
    let gate = Arc::new(Notify::new());
    let (tx, mut entered) = mpsc::unbounded_channel();
    let h = Hierarchy::builder("h")
        .mailbox_capacity(10)
        .tier("w", 1, worker(&gate, &tx))
        .spawn()
        .await
        .unwrap();
    let w = h.agent("w/0").unwrap();
    w.send(Job::Hold).unwrap();
    within(5, "the worker to hold", entered.recv()).await;
    for i in 0..9 {
        w.send(Job::Work(i)).unwrap();
    }
    assert_eq!(w.queued(), 10);
    match w.send(Job::Work(99)) {
        Err(SendError::Full {
            msg: Job::Work(99),
            capacity: 10,
            path,
        }) => {
            assert_eq!(path.as_str(), "h/w/0")
        }
        other => panic!("the eleventh task must be refused with its message: {other:?}"),
    }
    match w.call(Job::Work(100)).await {
        Err(e @ SendError::Full { .. }) => assert!(e.to_string().contains("send_wait"), "{e}"),
        other => panic!("call is refused too: {other:?}"),
    }
    assert_eq!(w.counters().rejected, 2);
    gate.notify_one();
    let c = idle(&h, 5).await;
    assert!(c.is_balanced(), "{c:?}");
    assert_eq!(c.submitted, 10, "refused tasks are not submitted: {c:?}");
    assert_eq!(c.completed, 10);
}

#[tokio::test(start_paused = true)]
async fn a_producer_ten_times_faster_is_held_to_the_agents_pace() {
    let gate = Arc::new(Notify::new());
    let (tx, _entered) = mpsc::unbounded_channel();
    let h = Hierarchy::builder("h")
        .tier_with(Tier::new("w", 1, worker(&gate, &tx)).mailbox(16))
        .spawn()
        .await
        .unwrap();
    let w = h.agent("w/0").unwrap();
    let started = tokio::time::Instant::now();
    let mut deepest = 0;
    for i in 0..1_000 {
        // the producer would send every 0.1 ms; the agent needs 1 ms per task
        tokio::time::sleep(Duration::from_micros(100)).await;
        within(5, "room in the mailbox", w.send_wait(Job::Work(i)))
            .await
            .unwrap();
        deepest = deepest.max(w.queued());
    }
    assert!(
        deepest <= 16,
        "the queue never grows past its capacity: {deepest}"
    );
    let c = idle(&h, 60).await;
    assert_eq!(
        (c.submitted, c.completed, c.rejected),
        (1_000, 1_000, 0),
        "{c:?}"
    );
    // held to the agent's pace: about 1 ms per task, not the producer's 0.1 ms
    assert!(
        started.elapsed() >= Duration::from_millis(980),
        "the producer was slowed down: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalations_into_a_full_lead_are_never_refused() {
    let gate = Arc::new(Notify::new());
    let (tx, mut entered) = mpsc::unbounded_channel();
    let h = Hierarchy::builder("h")
        .mailbox_capacity(1)
        .tier("lead", 1, worker(&gate, &tx))
        .tier("w", 8, worker(&gate, &tx))
        .spawn()
        .await
        .unwrap();
    let lead = h.agent("lead/0").unwrap();
    lead.send(Job::Hold).unwrap();
    within(5, "the lead to hold", entered.recv()).await;
    assert!(matches!(
        lead.send(Job::Work(1)),
        Err(SendError::Full { .. })
    ));
    // eight reports escalate into the busy lead: internal traffic is not bounded by it
    for i in 0..8 {
        h.send(&format!("w/{i}"), Job::Alarm).unwrap();
    }
    within(5, "the escalations to reach the lead", async {
        while lead.queued() < 9 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    gate.notify_one();
    let c = idle(&h, 5).await;
    assert!(c.is_balanced(), "{c:?}");
    assert_eq!(c.escalated, 8, "every escalation went up: {c:?}");
}
