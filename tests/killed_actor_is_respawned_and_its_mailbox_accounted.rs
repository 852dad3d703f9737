//! An agent's actor that dies outright (not a panic caught in place) is respawned into
//! the same address by its supervisor, and every task its mailbox held is counted as
//! failed and reported to its caller — nothing vanishes.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use echelon::prelude::*;
use support::within;
use tokio::sync::{mpsc, Notify};

#[derive(Clone, Debug)]
enum Job {
    /// Signal entry, then wait on the gate forever (until killed).
    Block,
    Ping(u32),
}

struct Worker {
    entered: mpsc::UnboundedSender<()>,
    gate: Arc<Notify>,
}

impl Agent for Worker {
    type Msg = Job;
    async fn handle(&mut self, _ctx: &mut Ctx<Job>, msg: Job) -> Result<Verdict<Job>, AgentError> {
        match msg {
            Job::Block => {
                let _ = self.entered.send(());
                self.gate.notified().await;
                Ok(Verdict::Done)
            }
            Job::Ping(n) => Ok(Verdict::Reply(Job::Ping(n))),
        }
    }
}

async fn setup(
    policy: RestartPolicy,
) -> (
    Hierarchy<Job>,
    mpsc::UnboundedReceiver<()>,
    Arc<AtomicUsize>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let gate = Arc::new(Notify::new());
    let built = Arc::new(AtomicUsize::new(0));
    let b = built.clone();
    let h = Hierarchy::builder("h")
        .tier_with(
            Tier::new("w", 2, move |_| {
                b.fetch_add(1, Ordering::SeqCst);
                Worker {
                    entered: tx.clone(),
                    gate: gate.clone(),
                }
            })
            .restart_policy(policy),
        )
        .spawn()
        .await
        .expect("spawn");
    (h, rx, built)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_agent_fails_what_it_held_and_comes_back_at_the_same_address() {
    let (h, mut entered, built) = setup(RestartPolicy::Permanent).await;
    assert_eq!(built.load(Ordering::SeqCst), 2);
    let w = h.agent("w/0").unwrap();
    let blocked = {
        let w = w.clone();
        tokio::spawn(async move { w.call(Job::Block).await })
    };
    within(5, "the worker to enter its handler", entered.recv()).await;
    // queue three tasks behind the blocked one
    let queued: Vec<_> = (0..3)
        .map(|n| {
            let w = w.clone();
            tokio::spawn(async move { w.call(Job::Ping(n)).await })
        })
        .collect();
    // wait until they are in the mailbox: submitted counts them
    support::until(5, "the queued tasks to be submitted", || {
        w.counters().submitted >= 4
    })
    .await;

    assert!(w.kill(), "the agent had a live actor");

    // the blocked task and the three queued ones are reported failed to their callers
    let o = within(5, "the blocked call", blocked)
        .await
        .unwrap()
        .unwrap();
    match o {
        Outcome::Failed(f) => assert!(f.reason.contains("lost"), "{f}"),
        other => panic!("the in-flight task must fail, got {other:?}"),
    }
    for q in queued {
        let o = within(5, "a queued call", q).await.unwrap().unwrap();
        assert!(o.is_failed(), "queued tasks die with the mailbox: {o:?}");
    }

    // the same handle reaches the respawned agent
    let o = within(5, "a call to the respawned agent", w.call(Job::Ping(9)))
        .await
        .unwrap();
    match o {
        Outcome::Completed {
            reply: Some(Job::Ping(9)),
            ..
        } => {}
        other => panic!("the respawned agent must answer, got {other:?}"),
    }
    assert_eq!(
        built.load(Ordering::SeqCst),
        3,
        "one new agent value for the respawn"
    );
    let c = w.counters();
    assert_eq!(c.lost_in_mailbox, 4, "{c:?}");
    assert_eq!(c.failed, 4, "{c:?}");
    assert_eq!(c.restarts, 1, "{c:?}");
    let report = h.shutdown(Duration::from_secs(5)).await;
    assert!(report.counters.is_balanced(), "{:?}", report.counters);
    assert_eq!(report.counters.submitted, 5);
    assert_eq!(report.counters.completed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_temporary_agent_is_not_respawned_and_refuses_new_work() {
    let (h, _entered, built) = setup(RestartPolicy::Temporary).await;
    let w = h.agent("w/1").unwrap();
    assert!(matches!(
        within(5, "a first call", w.call(Job::Ping(1)))
            .await
            .unwrap(),
        Outcome::Completed { .. }
    ));
    assert!(w.kill());
    within(5, "the slot to close", async {
        loop {
            match w.send(Job::Ping(2)) {
                Err(SendErrorKind::Closed { reason, .. }) => {
                    assert!(reason.contains("Temporary"), "{reason}");
                    break;
                }
                // accepted while the death is being processed: it waits in the slot and
                // is failed when the slot closes, so it is accounted either way
                Ok(_) => tokio::task::yield_now().await,
                Err(e) => panic!("unexpected refusal: {e}"),
            }
        }
    })
    .await;
    assert_eq!(
        built.load(Ordering::SeqCst),
        2,
        "no respawn for a temporary agent"
    );
    let report = h.shutdown(Duration::from_secs(5)).await;
    assert!(report.counters.is_balanced(), "{:?}", report.counters);
}

use echelon::SendError as SendErrorKind;
