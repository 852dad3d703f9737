//! A message whose `Clone` panics (echelon clones a task's payload before the handler
//! runs, for a redelivery after a crash): that task fails with the reason, it is
//! settled, the agent is not restarted, and the next task runs as usual. Both on a
//! single send and inside a batch.
//!
//! Settled is checked through a mailbox capacity of 1: `call_wait` waits for room, and
//! there is room only once every earlier task is settled, so a task left unsettled
//! makes the bounded wait fail.

mod support;

use echelon::prelude::*;
use support::within;

/// `Clone` panics for `Poison`.
#[derive(Debug)]
enum Msg {
    Ok(u64),
    Poison,
}

impl Clone for Msg {
    fn clone(&self) -> Self {
        match self {
            Msg::Ok(v) => Msg::Ok(*v),
            Msg::Poison => panic!("this message cannot be copied"),
        }
    }
}

struct Echo;

impl Agent for Echo {
    type Msg = Msg;
    async fn handle(&mut self, _: &mut Ctx<Msg>, m: Msg) -> Result<Verdict<Msg>, AgentError> {
        Ok(Verdict::Reply(m))
    }
}

async fn hierarchy() -> Hierarchy<Msg> {
    Hierarchy::builder("clone")
        // more than one attempt: the payload is cloned for a possible redelivery
        .max_attempts(2)
        .mailbox_capacity(1)
        .tier("echo", 1, |_| Echo)
        .spawn()
        .await
        .expect("spawns")
}

fn assert_failed_on_clone(o: &Outcome<Msg>) {
    match o {
        Outcome::Failed(f) => assert!(
            f.reason
                .contains("cloning the message for a possible retry")
                && f.reason.contains("this message cannot be copied"),
            "unexpected reason: {}",
            f.reason
        ),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn a_panicking_clone_fails_its_task_and_the_agent_goes_on() {
    let h = hierarchy().await;
    let a = h.agent("echo/0").expect("agent");

    let o = within(10, "the poisoned call", a.call(Msg::Poison))
        .await
        .expect("submitted");
    assert_failed_on_clone(&o);

    let o = within(10, "room after the failed task", a.call_wait(Msg::Ok(7)))
        .await
        .expect("submitted");
    assert!(
        matches!(
            o,
            Outcome::Completed {
                reply: Some(Msg::Ok(7)),
                ..
            }
        ),
        "{o:?}"
    );
    let c = a.counters();
    assert_eq!((c.failed, c.completed, c.restarts), (1, 1, 0), "{c:?}");
    within(
        10,
        "shutdown",
        h.shutdown(std::time::Duration::from_secs(5)),
    )
    .await;
}

#[tokio::test]
async fn a_panicking_clone_inside_a_batch_fails_only_that_task() {
    let h = hierarchy().await;
    let a = h.agent("echo/0").expect("agent");

    a.send_batch([Msg::Ok(1), Msg::Poison, Msg::Ok(2)])
        .expect("batch accepted");
    // room for the next call only once every task of the batch is settled
    let o = within(10, "room after the batch", a.call_wait(Msg::Ok(3)))
        .await
        .expect("submitted");
    assert!(matches!(o, Outcome::Completed { .. }), "{o:?}");
    let c = a.counters();
    assert_eq!((c.failed, c.completed, c.restarts), (1, 3, 0), "{c:?}");
    within(
        10,
        "shutdown",
        h.shutdown(std::time::Duration::from_secs(5)),
    )
    .await;
}
