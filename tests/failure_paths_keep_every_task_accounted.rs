//! Failure paths found in review: each must still give every task exactly one outcome
//! and keep the counters balanced — waiting for a failure, hard stops, kills during an
//! exit or a stop, cross-hierarchy forwards, an on_start that calls a sibling,
//! thread-holding handlers, and dropping the hierarchy.
#![allow(dead_code)]

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use echelon::prelude::*;
use echelon::StopReason;
use support::within;
use tokio::sync::{mpsc, Notify};

#[derive(Clone, Debug)]
enum Job {
    Ping,
    Crash,
    /// ctx.stop() and complete.
    StopMe,
    /// Signal entry, then wait forever.
    Block,
    /// Forward to the AgentRef held by the agent.
    Fwd,
    /// Hold the worker thread (not an await point) for this many ms, then complete.
    Spin(u64),
}

#[derive(Default, Clone)]
struct Knobs {
    entered: Option<mpsc::UnboundedSender<()>>,
    fwd: Option<AgentRef<Job>>,
    slow_on_stop: Option<Duration>,
}

struct W(Knobs);

impl Agent for W {
    type Msg = Job;
    async fn handle(&mut self, ctx: &mut Ctx<Job>, msg: Job) -> Result<Verdict<Job>, AgentError> {
        match msg {
            Job::Ping => Ok(Verdict::Reply(Job::Ping)),
            Job::Crash => panic!("boom"),
            Job::StopMe => {
                ctx.stop();
                Ok(Verdict::Done)
            }
            Job::Block => {
                if let Some(e) = &self.0.entered {
                    let _ = e.send(());
                }
                std::future::pending::<()>().await;
                Ok(Verdict::Done)
            }
            Job::Fwd => Ok(Verdict::Forward {
                to: self.0.fwd.clone().expect("fwd target"),
                msg: Job::Ping,
            }),
            Job::Spin(ms) => {
                if let Some(e) = &self.0.entered {
                    let _ = e.send(());
                }
                std::thread::sleep(Duration::from_millis(ms));
                Ok(Verdict::Done)
            }
        }
    }
    async fn on_stop(&mut self, _ctx: &mut Ctx<Job>, _r: &StopReason) {
        if let Some(d) = self.0.slow_on_stop {
            tokio::time::sleep(d).await;
        }
    }
}

// ---------------------------------------------------------------------------------
// F1: finished() called before the failure never returns: set_failure does not notify
// the `finished` watch, and nothing else sends on it until stop_actors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_wakes_when_the_hierarchy_fails_later() {
    let h = Hierarchy::builder("h")
        .restart(Strategy::OneForOne, Intensity::at_most(0))
        .tier("w", 1, |_| W(Knobs::default()))
        .spawn()
        .await
        .unwrap();
    let w = h.agent("w/0").unwrap();
    let fin = tokio::spawn(h.finished());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let o = w.call(Job::Crash).await.unwrap();
    assert!(o.is_failed());
    // the hierarchy has failed (intensity 0 at the root)...
    let report = within(5, "finished() after the root failed", fin)
        .await
        .unwrap();
    assert!(report.failure.is_some());
}

// ---------------------------------------------------------------------------------
// F2: a supervisor sleeping out a backoff inside on_child_died blocks its Stop; the
// hard-kill fallback then detaches slots but never resolves their *pending* queues.
#[tokio::test(start_paused = true)]
async fn hard_stop_fails_tasks_waiting_between_incarnations() {
    let h = Hierarchy::builder("h")
        .backoff(Backoff::exponential(
            Duration::from_secs(60),
            Duration::from_secs(60),
        ))
        .tier("w", 1, |_| W(Knobs::default()))
        .spawn()
        .await
        .unwrap();
    let w = h.agent("w/0").unwrap();
    assert!(w.kill());
    // wait until the root has detached the dead actor (and is now sleeping 60 s)
    support::until(10, "the dead actor to be detached", || !w.kill()).await;
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let w = w.clone();
            tokio::spawn(async move { w.call(Job::Ping).await })
        })
        .collect();
    support::until(10, "the calls to be submitted", || {
        w.counters().submitted >= 3
    })
    .await;
    let report = h.stop().await; // orderly stop times out after 5 s -> hard kill
    assert!(
        report.counters.is_balanced(),
        "every submitted task has an outcome after stop(): {:?}",
        report.counters
    );
    for c in calls {
        within(10, "a call queued while the agent was dead", c)
            .await
            .unwrap()
            .unwrap();
    }
}

// ---------------------------------------------------------------------------------
// F3: a task is resolved (completed) but `settled` is only bumped after
// exit_normally() returns; a kill during the directive wait / backoff sleep counts the
// completed task again as lost -> two outcomes.
#[tokio::test(start_paused = true)]
async fn a_kill_during_a_normal_exit_does_not_count_a_completed_task_twice() {
    let h = Hierarchy::builder("h")
        .backoff(Backoff::exponential(
            Duration::from_secs(10),
            Duration::from_secs(10),
        ))
        .tier("w", 1, |_| W(Knobs::default()))
        .spawn()
        .await
        .unwrap();
    let w = h.agent("w/0").unwrap();
    let o = w.call(Job::StopMe).await.unwrap();
    assert!(o.is_completed());
    // the agent is now sleeping its 10 s backoff before restarting in place
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert!(w.kill());
    // let the root process the death and respawn (no backoff on the first respawn? it
    // is the 2nd restart in the period, so 20 s at most)
    tokio::time::sleep(Duration::from_secs(30)).await;
    let c = h.counters();
    assert!(c.is_balanced(), "one task, one outcome: {c:?}");
}

// ---------------------------------------------------------------------------------
// F4: a death after the slot was closed is taken as "stopped by protocol": no detach,
// so tasks still in the dying mailbox get no outcome in the counters.
#[tokio::test(start_paused = true)]
async fn a_kill_while_stopping_accounts_the_queued_tasks() {
    let h = Hierarchy::builder("h")
        .tier_with(
            Tier::new("w", 1, |_| {
                W(Knobs {
                    slow_on_stop: Some(Duration::from_secs(1)),
                    ..Knobs::default()
                })
            })
            .restart_policy(RestartPolicy::Temporary),
        )
        .spawn()
        .await
        .unwrap();
    let w = h.agent("w/0").unwrap();
    w.send(Job::Crash).unwrap(); // temporary: Stop directive -> close, slow on_stop, drain
    for _ in 0..3 {
        w.send(Job::Ping).unwrap();
    }
    // let the crash happen and on_stop start
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(w.kill(), "still alive inside on_stop");
    tokio::time::sleep(Duration::from_millis(10)).await;
    let c = h.counters();
    assert!(
        c.is_balanced(),
        "the 3 queued tasks must be counted failed: {c:?}"
    );
}

// ---------------------------------------------------------------------------------
// F5: `wait_idle` / `shutdown` panic on a large timeout (Instant + Duration overflow).
#[tokio::test]
async fn shutdown_with_an_unbounded_deadline_does_not_panic() {
    let h = Hierarchy::builder("h")
        .tier("w", 1, |_| W(Knobs::default()))
        .spawn()
        .await
        .unwrap();
    let r = h.shutdown(Duration::MAX).await;
    assert!(r.drained);
}

// ---------------------------------------------------------------------------------
// F6: Verdict::Forward to an AgentRef of *another* hierarchy moves the task's outcome
// out of the hierarchy that counted its submission: h1 never balances, h2 shows an
// outcome without a submission (which can hide real in-flight work from wait_idle).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_into_another_hierarchy_fails_with_a_reason() {
    let h2 = Hierarchy::builder("h2")
        .tier("w", 1, |_| W(Knobs::default()))
        .spawn()
        .await
        .unwrap();
    let target = h2.agent("w/0").unwrap();
    let h1 = Hierarchy::builder("h1")
        .tier("w", 1, move |_| {
            W(Knobs {
                fwd: Some(target.clone()),
                ..Knobs::default()
            })
        })
        .spawn()
        .await
        .unwrap();
    let o = h1.call("w/0", Job::Fwd).await.unwrap();
    match &o {
        Outcome::Failed(f) => assert!(f.reason.contains("another hierarchy"), "{f}"),
        other => panic!("a forward across hierarchies fails with a reason: {other:?}"),
    }
    let c1 = h1.counters();
    let c2 = h2.counters();
    assert!(c1.is_balanced() && c2.is_balanced(), "h1 {c1:?}\nh2 {c2:?}");
}

// ---------------------------------------------------------------------------------
// F7: an on_start that calls a sibling spawned after it must not deadlock `spawn()`:
// the call waits in the sibling's pending queue while the sibling's start, joined
// with this one in the supervisor's task, goes on and attaches it.
struct Caller;
impl Agent for Caller {
    type Msg = Job;
    async fn handle(&mut self, _c: &mut Ctx<Job>, _m: Job) -> Result<Verdict<Job>, AgentError> {
        Ok(Verdict::Reply(Job::Ping))
    }
    async fn on_start(&mut self, ctx: &mut Ctx<Job>) -> Result<(), AgentError> {
        if ctx.index() == 0 {
            let peer = ctx.agent("w/1").map_err(AgentError::crash)?;
            let _ = peer.call(Job::Ping).await;
        }
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn on_start_may_call_a_sibling_started_after_it() {
    let r = tokio::time::timeout(
        Duration::from_secs(30),
        Hierarchy::builder("h").tier("w", 2, |_| Caller).spawn(),
    )
    .await;
    assert!(r.is_ok(), "spawn() hung");
}

// ---------------------------------------------------------------------------------
// F8: the hard-kill fallback cannot stop a handler that holds its thread; the handler
// later completes the task that detach() already counted as lost -> two outcomes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hard_kill_of_a_thread_holding_handler_stays_balanced() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let h = Hierarchy::builder("h")
        .tier("w", 1, move |_| {
            W(Knobs {
                entered: Some(tx.clone()),
                ..Knobs::default()
            })
        })
        .spawn()
        .await
        .unwrap();
    let w = h.agent("w/0").unwrap();
    let call = {
        let w = w.clone();
        tokio::spawn(async move { w.call(Job::Spin(6_500)).await })
    };
    rx.recv().await;
    let report = h.stop().await; // 5 s grace, then kill + detach
    let outcome = call.await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let c = w.counters();
    assert!(
        c.is_balanced(),
        "report {:?}\nafter the handler returned {c:?}\ncaller saw {outcome:?}",
        report.counters
    );
}

#[allow(dead_code)]
fn _unused(_: AtomicBool, _: AtomicUsize, _: Arc<Notify>, _: Ordering) {}

// F2b: same set-up as F2; the callers of those pending tasks never get an outcome.
#[tokio::test(start_paused = true)]
async fn calls_waiting_in_a_pending_queue_resolve_after_stop() {
    let h = Hierarchy::builder("h")
        .backoff(Backoff::exponential(
            Duration::from_secs(60),
            Duration::from_secs(60),
        ))
        .tier("w", 1, |_| W(Knobs::default()))
        .spawn()
        .await
        .unwrap();
    let w = h.agent("w/0").unwrap();
    assert!(w.kill());
    support::until(10, "the dead actor to be detached", || !w.kill()).await;
    let call = {
        let w = w.clone();
        tokio::spawn(async move { w.call(Job::Ping).await })
    };
    support::until(10, "the calls to be submitted", || {
        w.counters().submitted >= 1
    })
    .await;
    let _ = h.stop().await;
    within(
        3600,
        "a call queued while the agent was dead, after stop()",
        call,
    )
    .await
    .unwrap()
    .unwrap();
}

// F10: Drop of the Hierarchy (no stop) while a task waits in a pending queue: its
// caller hangs forever (the AgentRef the call borrows keeps the slot and the reply
// sender alive); the Escalations stream never ends either.
#[tokio::test(start_paused = true)]
async fn dropping_the_hierarchy_resolves_pending_callers_and_ends_the_escalation_stream() {
    let h = Hierarchy::builder("h")
        .backoff(Backoff::exponential(
            Duration::from_secs(60),
            Duration::from_secs(60),
        ))
        .tier("w", 1, |_| W(Knobs::default()))
        .spawn()
        .await
        .unwrap();
    let mut esc = h.escalations();
    let w = h.agent("w/0").unwrap();
    assert!(w.kill());
    support::until(10, "the dead actor to be detached", || !w.kill()).await;
    let call = {
        let w = w.clone();
        tokio::spawn(async move { w.call(Job::Ping).await })
    };
    support::until(10, "the calls to be submitted", || {
        w.counters().submitted >= 1
    })
    .await;
    drop(h);
    let r = tokio::time::timeout(Duration::from_secs(3600), call).await;
    let e = tokio::time::timeout(Duration::from_secs(3600), esc.recv()).await;
    assert!(
        r.is_ok() && e.is_ok(),
        "call resolved: {}, escalation stream ended: {}",
        r.is_ok(),
        e.is_ok()
    );
}
