//! An agent that takes a long run of tasks from the queue behind its mailbox (and then
//! waits there, inside its actor's handler) must not hold its worker thread for the
//! whole run: other tasks on the same runtime (other agents, the caller, timers) get a
//! turn every 128 tasks. On a one-thread runtime this is deterministic: the test sends
//! the whole flood before the agent runs at all, then yields once; it must get the
//! thread back while most of the flood is still queued.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use echelon::prelude::*;

use support::{idle, until, within};

struct Counter {
    handled: Arc<AtomicU64>,
    /// The value each task carries must be the next one: per-sender order.
    next: u64,
}

impl Agent for Counter {
    type Msg = u64;

    async fn handle(&mut self, _: &mut Ctx<u64>, msg: u64) -> Result<Verdict<u64>, AgentError> {
        if msg != self.next {
            return Err(AgentError::reject(format!(
                "out of order: {msg} after {}",
                self.next
            )));
        }
        self.next += 1;
        self.handled.fetch_add(1, Ordering::Relaxed);
        Ok(Verdict::Done)
    }
}

const FLOOD: u64 = 20_000;

#[tokio::test(flavor = "current_thread")]
async fn a_flooded_agent_gives_its_thread_back_while_tasks_wait() {
    let handled = Arc::new(AtomicU64::new(0));
    let counter = handled.clone();
    let h = Hierarchy::builder("flood")
        .max_attempts(1)
        .tier("w", 1, move |_| Counter {
            handled: counter.clone(),
            next: 0,
        })
        .spawn()
        .await
        .expect("spawn");
    let a = h.agent("w/0").expect("address");

    // The agent has handled a task and waits on its queue, as in steady use.
    a.send(0).expect("the first send");
    until(5, "the first task handled", || {
        handled.load(Ordering::Relaxed) == 1
    })
    .await;

    // One thread: nothing else runs while this loop sends, so the whole flood is
    // queued behind the waiting agent before it takes any of it.
    for n in 1..=FLOOD {
        a.send(n).expect("a send to a live agent");
    }
    assert_eq!(handled.load(Ordering::Relaxed), 1);

    // Give the thread away until the agent has started on the flood; it must give the
    // thread back long before the flood is through: it yields every 128 tasks it takes
    // without waiting (the first task, then one run of 128; allow a second run).
    until(5, "the agent takes its first queued task", || {
        handled.load(Ordering::Relaxed) > 1
    })
    .await;
    let seen = handled.load(Ordering::Relaxed);
    assert!(
        seen <= 1 + 2 * 128,
        "the agent held the only worker thread for {seen} of {} tasks",
        FLOOD + 1
    );

    // And it still takes every task, in order, none failed.
    let c = idle(&h, 10).await;
    assert_eq!(handled.load(Ordering::Relaxed), FLOOD + 1);
    assert_eq!(c.failed, 0, "{c:?}");
    let report = within(10, "the shutdown", h.shutdown(Duration::from_secs(5))).await;
    assert!(report.drained, "{report:?}");
}
