//! An agent that has handled a task waits on the queue behind its mailbox for the next
//! one, inside its actor's message handler, instead of going back to ractor's message
//! loop. It must still hear everything else: a stop, a sibling's restart, a kill. Each
//! case here starts from agents that have handled a task and are waiting, and would
//! hang (or end only by the shutdown's kill, which skips `on_stop`) if the waiting
//! agent did not leave its queue for its mailbox.

mod support;

use std::time::Duration;

use echelon::prelude::*;
use echelon::StopReason;
use tokio::sync::mpsc;

use support::within;

#[derive(Clone, Debug)]
enum Msg {
    /// Reply with the incarnation.
    Get,
    /// Panic: with one-for-all, every sibling restarts.
    Crash,
    /// A reply.
    Incarnation(u64),
}

/// What the agents report: (index, incarnation, from 0) at each start, index at each
/// stop.
#[derive(Debug)]
enum Event {
    Started(usize, u64),
    Stopped(usize),
}

struct Worker {
    events: mpsc::UnboundedSender<Event>,
}

impl Agent for Worker {
    type Msg = Msg;

    async fn on_start(&mut self, ctx: &mut Ctx<Msg>) -> Result<(), AgentError> {
        let _ = self
            .events
            .send(Event::Started(ctx.index(), ctx.incarnation()));
        Ok(())
    }

    async fn on_stop(&mut self, ctx: &mut Ctx<Msg>, _: &StopReason) {
        let _ = self.events.send(Event::Stopped(ctx.index()));
    }

    async fn handle(&mut self, ctx: &mut Ctx<Msg>, msg: Msg) -> Result<Verdict<Msg>, AgentError> {
        match msg {
            Msg::Get => Ok(Verdict::Reply(Msg::Incarnation(ctx.incarnation()))),
            Msg::Crash => panic!("asked to crash"),
            Msg::Incarnation(_) => Ok(Verdict::Done),
        }
    }
}

const AGENTS: usize = 3;

async fn spawn(strategy: Strategy) -> (Hierarchy<Msg>, mpsc::UnboundedReceiver<Event>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let h = Hierarchy::builder("waiting")
        .restart(
            strategy,
            Intensity::at_most(10).per(Duration::from_secs(10)),
        )
        .max_attempts(1)
        .tier("w", AGENTS, move |_| Worker { events: tx.clone() })
        .spawn()
        .await
        .expect("spawn");
    assert_eq!(starts(&mut rx, 0, "the first starts").await, all());
    (h, rx)
}

/// Every agent's index, in order.
fn all() -> Vec<usize> {
    (0..AGENTS).collect()
}

/// Wait for `AGENTS` starts of incarnation `n` (stops in between are skipped); the
/// indices that started, sorted.
async fn starts(rx: &mut mpsc::UnboundedReceiver<Event>, n: u64, what: &str) -> Vec<usize> {
    let mut started = Vec::new();
    while started.len() < AGENTS {
        match within(5, what, rx.recv()).await {
            Some(Event::Started(i, k)) if k == n => started.push(i),
            Some(Event::Started(i, k)) => panic!("{what}: w/{i} started as incarnation {k}"),
            Some(Event::Stopped(_)) => {}
            None => panic!("the agents' event channel closed"),
        }
    }
    started.sort_unstable();
    started
}

/// Shut down; nothing was in flight, so every task is accounted and none lost.
async fn shut_down_balanced(h: Hierarchy<Msg>) {
    let report = within(10, "the shutdown", h.shutdown(Duration::from_secs(5))).await;
    assert!(report.counters.is_balanced(), "{report:?}");
    assert_eq!(
        report.counters.lost_in_mailbox, 0,
        "nothing was waiting: {report:?}"
    );
}

/// Call every agent once: each then waits on its queue.
async fn call_all(h: &Hierarchy<Msg>) -> Vec<u64> {
    let mut incarnations = Vec::new();
    for i in 0..AGENTS {
        let a = h.agent(&format!("w/{i}")).expect("address");
        match within(5, "a call", a.call(Msg::Get)).await {
            Ok(Outcome::Completed {
                reply: Some(Msg::Incarnation(n)),
                ..
            }) => incarnations.push(n),
            other => panic!("w/{i}: expected its incarnation, got {other:?}"),
        }
    }
    incarnations
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_reaches_agents_waiting_on_their_queues() {
    let (h, mut rx) = spawn(Strategy::OneForOne).await;
    assert_eq!(call_all(&h).await, vec![0; AGENTS]);
    // the shutdown kills what has not stopped after 5 s: this must end well before,
    // and each agent's `on_stop` (never run for a killed actor) must have run
    let report = within(4, "a graceful shutdown", h.shutdown(Duration::from_secs(2))).await;
    assert!(report.drained, "nothing was in flight: {report:?}");
    let mut stopped = Vec::new();
    while let Ok(e) = rx.try_recv() {
        if let Event::Stopped(i) = e {
            stopped.push(i);
        }
    }
    stopped.sort_unstable();
    assert_eq!(stopped, all(), "every waiting agent ran on_stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sibling_restart_reaches_agents_waiting_on_their_queues() {
    let (h, mut rx) = spawn(Strategy::OneForAll).await;
    assert_eq!(call_all(&h).await, vec![0; AGENTS]);
    // w/0 crashes; its siblings wait on their queues and must restart with it
    let a = h.agent("w/0").expect("address");
    let _ = within(5, "the crashing call", a.call(Msg::Crash)).await;
    assert_eq!(starts(&mut rx, 1, "every sibling's restart").await, all());
    assert_eq!(
        call_all(&h).await,
        vec![1; AGENTS],
        "every agent answers from its new incarnation"
    );
    shut_down_balanced(h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_waiting_agent_is_respawned_and_serves() {
    let (h, mut rx) = spawn(Strategy::OneForOne).await;
    assert_eq!(call_all(&h).await, vec![0; AGENTS]);
    let a = h.agent("w/1").expect("address");
    assert!(a.kill(), "w/1 has a live actor");
    match within(5, "the respawn", rx.recv()).await {
        Some(Event::Started(1, _)) => {}
        other => panic!("expected w/1 to start again, got {other:?}"),
    }
    match within(5, "a call after the respawn", a.call(Msg::Get)).await {
        Ok(Outcome::Completed {
            reply: Some(Msg::Incarnation(_)),
            ..
        }) => {}
        other => panic!("expected an answer from the new actor, got {other:?}"),
    }
    shut_down_balanced(h).await;
}
