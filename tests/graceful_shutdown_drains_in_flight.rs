//! Graceful shutdown stops intake and lets in-flight work finish, including escalations
//! and tasks that handlers create during the drain; a deadline too short fails what is
//! left with a reason; a hard stop fails queued tasks instead of handling them. In
//! every case the counters balance.

mod support;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use echelon::prelude::*;
use echelon::{SendError, ShutdownReport};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use support::within;

#[derive(Clone, Debug)]
enum Msg {
    /// Work for `ms` milliseconds, then done.
    Work { ms: u64 },
    /// Wait for the gate, then submit `n` new `Work` tasks to other workers.
    Fan { n: usize, ms: u64 },
    /// Work, then escalate to the lead, which works on it too.
    Esc { ms: u64 },
    /// Work, then panic on the first attempt; done on the next.
    Flaky { ms: u64 },
}

struct Slow {
    calls: Arc<AtomicU64>,
    gate: watch::Receiver<bool>,
    workers: usize,
}

impl Agent for Slow {
    type Msg = Msg;

    async fn handle(&mut self, ctx: &mut Ctx<Msg>, msg: Msg) -> Result<Verdict<Msg>, AgentError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match msg {
            Msg::Work { ms } => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(Verdict::Done)
            }
            Msg::Fan { n, ms } => {
                // only fan out once the test has begun the shutdown
                self.gate
                    .wait_for(|open| *open)
                    .await
                    .map_err(|e| AgentError::reject(e.to_string()))?;
                for k in 0..n {
                    let to = format!("worker/{}", (ctx.index() + 1 + k) % self.workers);
                    let to = ctx
                        .agent(&to)
                        .map_err(|e| AgentError::reject(e.to_string()))?;
                    ctx.send(&to, Msg::Work { ms })
                        .map_err(|e| AgentError::reject(e.to_string()))?;
                }
                Ok(Verdict::Done)
            }
            Msg::Esc { ms } => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(Verdict::escalate(
                    1.0,
                    "the lead must see this",
                    Msg::Work { ms },
                ))
            }
            Msg::Flaky { ms } => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                if ctx.attempt() == 1 {
                    panic!("crashed during the drain");
                }
                Ok(Verdict::Done)
            }
        }
    }
}

struct Fixture {
    h: Hierarchy<Msg>,
    /// Handler invocations by workers and by the lead.
    worker_calls: Arc<AtomicU64>,
    lead_calls: Arc<AtomicU64>,
    gate: watch::Sender<bool>,
}

async fn spawn(workers: usize) -> Fixture {
    let worker_calls = Arc::new(AtomicU64::new(0));
    let lead_calls = Arc::new(AtomicU64::new(0));
    let (gate, rx) = watch::channel(false);
    let (wc, lc, wrx, lrx) = (worker_calls.clone(), lead_calls.clone(), rx.clone(), rx);
    let h = Hierarchy::builder("line")
        .span(SpanOfControl::auto_split(8))
        .restart(
            Strategy::OneForOne,
            Intensity::at_most(1_000).per(Duration::from_secs(60)),
        )
        .max_attempts(2)
        .tier("lead", 1, move |_| Slow {
            calls: lc.clone(),
            gate: lrx.clone(),
            workers,
        })
        .tier("worker", workers, move |_| Slow {
            calls: wc.clone(),
            gate: wrx.clone(),
            workers,
        })
        .spawn()
        .await
        .expect("spawn");
    Fixture {
        h,
        worker_calls,
        lead_calls,
        gate,
    }
}

type Shutdown = Pin<Box<dyn Future<Output = ShutdownReport> + Send>>;

/// Poll a future once, so that everything it does before its first await has happened,
/// and hand it back to be awaited later.
async fn begin<F: Future + Unpin>(fut: &mut F) {
    tokio::select! {
        biased;
        _ = fut => panic!("finished on its first poll"),
        _ = std::future::ready(()) => {}
    }
}

/// Start `fut` now (poll it once, e.g. so a `call` has submitted its task) and run the
/// rest on a task.
async fn start<T: Send + 'static>(fut: impl Future<Output = T> + Send + 'static) -> JoinHandle<T> {
    let mut fut = Box::pin(fut);
    begin(&mut fut).await;
    tokio::spawn(fut)
}

fn assert_refused(agent: &AgentRef<Msg>) {
    match agent.send(Msg::Work { ms: 0 }) {
        Err(SendError::ShuttingDown { .. }) => {}
        other => panic!("a send after shutdown began must be refused, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_thousand_queued_slow_tasks_finish_and_refuses_new_ones() {
    let Fixture {
        h, worker_calls, ..
    } = spawn(16).await;
    let workers = h.tier("worker").expect("workers");
    let keep = workers[0].clone();
    for i in 0..1_000 {
        workers[i % workers.len()]
            .send(Msg::Work { ms: 2 })
            .expect("accepted while running");
    }
    assert!(
        h.counters().in_flight() > 0,
        "the test needs work in flight when the shutdown begins"
    );

    let mut shutdown: Shutdown = Box::pin(h.shutdown(Duration::from_secs(8)));
    begin(&mut shutdown).await;
    // intake is closed from the moment the shutdown began
    assert_refused(&keep);
    match within(1, "refused call", keep.call(Msg::Work { ms: 0 })).await {
        Err(SendError::ShuttingDown { .. }) => {}
        other => panic!("a call after shutdown began must be refused, got {other:?}"),
    }

    let report = within(20, "shutdown", shutdown).await;
    assert!(report.drained, "{report:?}");
    assert_eq!(report.failure, None);
    let c = report.counters;
    assert!(c.is_balanced(), "{c:?}");
    assert_eq!(
        (c.submitted, c.completed, c.escalated, c.failed),
        (1_000, 1_000, 0, 0),
        "every accepted task completed; the refused ones were not counted: {c:?}"
    );
    assert_eq!(worker_calls.load(Ordering::SeqCst), 1_000);
    assert_refused(&keep);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_created_and_escalated_during_the_drain_still_complete() {
    const WORKERS: usize = 8;
    const FANS: u64 = 40;
    const FAN_OUT: usize = 10;
    const ESCS: u64 = 40;
    let Fixture {
        h,
        worker_calls,
        lead_calls,
        gate,
    } = spawn(WORKERS).await;
    let workers = h.tier("worker").expect("workers");
    let lead = h.agent("lead/0").expect("lead");
    for i in 0..FANS as usize {
        workers[i % WORKERS]
            .send(Msg::Fan { n: FAN_OUT, ms: 1 })
            .expect("accepted");
    }
    for i in 0..ESCS as usize {
        workers[i % WORKERS]
            .send(Msg::Esc { ms: 1 })
            .expect("accepted");
    }
    // one caller waits for an escalated task across the shutdown
    let escalated = start({
        let w = workers[3].clone();
        async move { w.call(Msg::Esc { ms: 1 }).await }
    })
    .await;

    let mut shutdown: Shutdown = Box::pin(h.shutdown(Duration::from_secs(8)));
    begin(&mut shutdown).await;
    assert_refused(&workers[1]);
    // the fan-outs happen now, during the drain
    gate.send_replace(true);

    let report = within(20, "shutdown", shutdown).await;
    let c = report.counters;
    assert!(report.drained, "{report:?}");
    assert!(c.is_balanced(), "{c:?}");
    let handler_created = FANS * FAN_OUT as u64;
    let external = FANS + ESCS + 1;
    assert_eq!(
        c.submitted,
        external + handler_created,
        "tasks created by handlers during the drain were accepted: {c:?}"
    );
    assert_eq!(c.completed, c.submitted, "{c:?}");
    assert_eq!((c.escalated, c.failed), (0, 0), "{c:?}");
    assert_eq!(
        lead.counters().completed,
        ESCS + 1,
        "every escalation reached the lead and completed there"
    );
    assert_eq!(lead_calls.load(Ordering::SeqCst), ESCS + 1);
    assert_eq!(
        worker_calls.load(Ordering::SeqCst),
        external + handler_created
    );

    let out = within(5, "the escalated call", escalated)
        .await
        .expect("caller task")
        .expect("accepted before the shutdown");
    match out {
        Outcome::Completed { by, .. } => assert_eq!(by, *lead.path()),
        other => panic!("the escalated task should complete at the lead, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_too_short_fails_the_unfinished_tasks_with_a_reason() {
    const WORKERS: usize = 4;
    const QUEUED: usize = 5;
    let Fixture {
        h, worker_calls, ..
    } = spawn(WORKERS).await;
    let workers = h.tier("worker").expect("workers");
    for w in &workers {
        for _ in 0..QUEUED {
            w.send(Msg::Work { ms: 300 }).expect("accepted");
        }
    }
    // a caller per worker, queued behind the slow tasks
    let mut callers = Vec::new();
    for w in &workers {
        let w = w.clone();
        callers.push(start(async move { w.call(Msg::Work { ms: 300 }).await }).await);
    }
    let submitted = (WORKERS * (QUEUED + 1)) as u64;
    assert_eq!(h.counters().submitted, submitted);

    let report = within(20, "shutdown", h.shutdown(Duration::from_millis(50))).await;
    assert!(!report.drained, "{report:?}");
    assert_eq!(report.failure, None);
    let c = report.counters;
    assert!(c.is_balanced(), "{c:?}");
    assert_eq!(c.submitted, submitted, "{c:?}");
    // at most the two tasks per worker that can have started by the deadline ran
    assert!(
        c.completed <= 2 * WORKERS as u64,
        "queued tasks must not be handled after the deadline: {c:?}"
    );
    assert_eq!(c.failed, submitted - c.completed, "{c:?}");
    assert_eq!(
        worker_calls.load(Ordering::SeqCst),
        c.completed,
        "every handler that ran completed its task; no failed task was handled"
    );

    for caller in callers {
        let out = within(5, "caller", caller)
            .await
            .expect("caller task")
            .expect("accepted before the shutdown");
        match out {
            Outcome::Failed(f) => {
                assert!(!f.reason.is_empty(), "{f:?}");
                assert!(f.reason.contains("stopped"), "the reason says why: {f:?}");
                assert_eq!(f.attempts, 0, "it was never handled: {f:?}");
            }
            other => panic!("a task queued past the deadline must fail, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_fails_queued_tasks_instead_of_handling_them() {
    const WORKERS: usize = 4;
    const TASKS: u64 = 1_000;
    let Fixture {
        h, worker_calls, ..
    } = spawn(WORKERS).await;
    let workers = h.tier("worker").expect("workers");
    let keep = workers[0].clone();
    for i in 0..TASKS as usize {
        workers[i % WORKERS]
            .send(Msg::Work { ms: 20 })
            .expect("accepted");
    }
    let queued_caller = start({
        let w = workers[1].clone();
        async move { w.call(Msg::Work { ms: 20 }).await }
    })
    .await;
    let before = worker_calls.load(Ordering::SeqCst);

    let report = within(20, "stop", h.stop()).await;
    let calls = worker_calls.load(Ordering::SeqCst);
    let c = report.counters;
    assert!(c.is_balanced(), "{c:?}");
    assert_eq!(c.submitted, TASKS + 1, "{c:?}");
    assert!(!report.drained, "{report:?}");
    // once the stop began, no handler starts: at most the ones already running finish
    assert!(
        calls <= before + WORKERS as u64,
        "handlers ran after the stop: {before} before, {calls} after"
    );
    assert!(
        calls < TASKS / 2,
        "a hard stop handles far fewer than submitted: {calls}"
    );
    assert_eq!(c.completed, calls, "{c:?}");
    assert_eq!(c.failed, TASKS + 1 - calls, "the rest were failed: {c:?}");
    match within(5, "queued caller", queued_caller)
        .await
        .expect("caller task")
        .expect("accepted before the stop")
    {
        Outcome::Failed(f) => {
            assert!(f.reason.contains("stopped"), "the reason says why: {f:?}");
            assert_eq!(f.attempts, 0, "it was never handled: {f:?}");
        }
        other => panic!("a task queued behind a stop must fail, got {other:?}"),
    }
    assert_refused(&keep);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_the_drain_is_redelivered_and_the_task_completes() {
    const WORKERS: usize = 4;
    let Fixture { h, .. } = spawn(WORKERS).await;
    let workers = h.tier("worker").expect("workers");
    let mut flaky = 0u64;
    for i in 0..200 {
        let msg = if i % 10 == 9 {
            flaky += 1;
            Msg::Flaky { ms: 2 }
        } else {
            Msg::Work { ms: 2 }
        };
        workers[i % WORKERS].send(msg).expect("accepted");
    }
    let last = start({
        let w = workers[2].clone();
        async move { w.call(Msg::Flaky { ms: 2 }).await }
    })
    .await;
    flaky += 1;

    let report = within(20, "shutdown", h.shutdown(Duration::from_secs(8))).await;
    let c = report.counters;
    assert!(report.drained, "{report:?}");
    assert!(c.is_balanced(), "{c:?}");
    assert_eq!((c.submitted, c.completed, c.failed), (201, 201, 0), "{c:?}");
    assert_eq!(c.restarts, flaky, "{c:?}");
    assert_eq!(c.redelivered, flaky, "{c:?}");
    let out = within(5, "caller", last)
        .await
        .expect("caller task")
        .expect("accepted before the shutdown");
    assert!(out.is_completed(), "{out:?}");
}
