//! A bounded slot between incarnations (its actor killed, respawn pending) counts its pending queue toward its capacity: sends are refused instead of piling up.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use echelon::prelude::*;

#[derive(Clone, Debug)]
struct J;
struct A;
impl Agent for A {
    type Msg = J;
    async fn handle(&mut self, _ctx: &mut Ctx<J>, _m: J) -> Result<Verdict<J>, AgentError> {
        Ok(Verdict::Done)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_holds_while_the_agent_waits_to_be_respawned() {
    let h = Hierarchy::builder("h")
        .mailbox_capacity(10)
        .backoff(Backoff::exponential(
            Duration::from_secs(2),
            Duration::from_secs(2),
        ))
        .tier("w", 1, |_| A)
        .spawn()
        .await
        .unwrap();
    let w = h.agent("w/0").unwrap();
    assert!(w.kill());
    tokio::time::sleep(Duration::from_millis(200)).await; // dead, respawn pending
    let mut accepted = 0;
    for _ in 0..100_000 {
        match w.send(J) {
            Ok(_) => accepted += 1,
            Err(_) => break,
        }
    }
    eprintln!("accepted {accepted} sends into a capacity-10 slot with no actor");
    let _ = h.shutdown(Duration::from_secs(10)).await;
    assert!(accepted <= 10, "accepted {accepted}");
}
