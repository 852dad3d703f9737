//! Restart policies: whether an agent comes back after a crash or a normal exit.
//!
//! - Permanent: restarted after a crash and after `ctx.stop()`.
//! - Transient: restarted after a crash; `ctx.stop()` ends it for good.
//! - Temporary: never restarted; a crash closes its slot and fails what it held.

mod support;

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use echelon::prelude::*;
use echelon::{RestartPolicy, SendError, StopReason};
use tokio::sync::{mpsc, Notify};

use support::{idle, within};

#[derive(Clone, Debug)]
enum Msg {
    /// Reply with the incarnation.
    Ping,
    /// Panic on the first attempt; the redelivered attempt replies like `Ping`.
    CrashOnce,
    /// Always panic.
    Crash,
    /// `ctx.stop()`: a normal exit after this message.
    Quit,
    /// `ctx.stop()` then panic on the first attempt; the redelivered attempt replies
    /// like `Ping` without asking to stop.
    QuitThenCrash,
    /// Signal that it is being handled, then wait for the gate.
    Hold,
    Incarnation(u64),
}

#[derive(Debug, PartialEq)]
enum Event {
    Started(u64),
    Stopped(u64, StopReason),
    Holding,
}

struct Worker {
    events: mpsc::UnboundedSender<Event>,
    gate: Arc<Notify>,
}

impl Agent for Worker {
    type Msg = Msg;

    async fn on_start(&mut self, ctx: &mut Ctx<Msg>) -> Result<(), AgentError> {
        let _ = self.events.send(Event::Started(ctx.incarnation()));
        Ok(())
    }

    async fn on_stop(&mut self, ctx: &mut Ctx<Msg>, reason: &StopReason) {
        let _ = self
            .events
            .send(Event::Stopped(ctx.incarnation(), reason.clone()));
    }

    async fn handle(&mut self, ctx: &mut Ctx<Msg>, msg: Msg) -> Result<Verdict<Msg>, AgentError> {
        let me = Verdict::Reply(Msg::Incarnation(ctx.incarnation()));
        match msg {
            Msg::Ping => Ok(me),
            Msg::CrashOnce if ctx.attempt() == 1 => panic!("worker choked on its input"),
            Msg::CrashOnce => Ok(me),
            Msg::Crash => panic!("worker choked on its input"),
            Msg::QuitThenCrash if ctx.attempt() == 1 => {
                ctx.stop();
                panic!("worker crashed while retiring")
            }
            Msg::QuitThenCrash => Ok(me),
            Msg::Quit => {
                ctx.stop();
                Ok(Verdict::Done)
            }
            Msg::Hold => {
                let _ = self.events.send(Event::Holding);
                self.gate.notified().await;
                Ok(Verdict::Done)
            }
            Msg::Incarnation(_) => Err(AgentError::reject("a reply is not a request")),
        }
    }
}

struct Fixture {
    h: Hierarchy<Msg>,
    worker: AgentRef<Msg>,
    built: Arc<AtomicUsize>,
    events: mpsc::UnboundedReceiver<Event>,
    gate: Arc<Notify>,
}

async fn spawn(policy: RestartPolicy) -> Fixture {
    let built = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Notify::new());
    let (tx, events) = mpsc::unbounded_channel();
    let tier = {
        let (built, gate) = (built.clone(), gate.clone());
        Tier::new("worker", 1, move |_| {
            built.fetch_add(1, Ordering::SeqCst);
            Worker {
                events: tx.clone(),
                gate: gate.clone(),
            }
        })
        .restart_policy(policy)
    };
    let h = Hierarchy::builder("shop")
        .tier_with(tier)
        .spawn()
        .await
        .expect("spawn");
    let worker = h.agent("worker/0").expect("worker/0");
    let mut f = Fixture {
        h,
        worker,
        built,
        events,
        gate,
    };
    f.expect(Event::Started(0)).await;
    f
}

impl Fixture {
    async fn expect(&mut self, e: Event) {
        let got = within(5, &format!("{e:?}"), self.events.recv())
            .await
            .expect("event channel open");
        assert_eq!(got, e);
    }

    async fn call(&self, msg: Msg) -> Outcome<Msg> {
        within(5, "a call", self.worker.call(msg))
            .await
            .expect("the worker takes the task")
    }

    async fn incarnation(&self, msg: Msg) -> u64 {
        match self.call(msg).await {
            Outcome::Completed {
                reply: Some(Msg::Incarnation(i)),
                ..
            } => i,
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn built(&self) -> usize {
        self.built.load(Ordering::SeqCst)
    }

    /// Block the worker in a `Hold` handler, so tasks can be queued behind it.
    async fn hold(&mut self) {
        self.worker.send(Msg::Hold).expect("send Hold");
        self.expect(Event::Holding).await;
    }

    async fn finish(self) {
        let report = within(4, "shutdown", self.h.shutdown(Duration::from_secs(5))).await;
        assert!(report.drained, "{report:?}");
        assert!(report.counters.is_balanced(), "{:?}", report.counters);
    }
}

type Pending = Pin<Box<dyn Future<Output = Result<Outcome<Msg>, SendError<Msg>>> + Send>>;

/// Start a `call` and poll it once, so its task is in the agent's mailbox when this
/// returns (in submission order); the returned future yields the outcome.
async fn queue(agent: &AgentRef<Msg>, msg: Msg) -> Pending {
    let agent = agent.clone();
    let mut fut: Pending = Box::pin(async move { agent.call(msg).await });
    let mut early = None;
    poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            early = Some(v);
        }
        Poll::Ready(())
    })
    .await;
    match early {
        Some(v) => Box::pin(std::future::ready(v)),
        None => fut,
    }
}

async fn failed(what: &str, fut: Pending) -> String {
    match within(5, what, fut).await.expect("the task was accepted") {
        Outcome::Failed(f) => f.reason,
        other => panic!("{what}: expected a failure, got {other:?}"),
    }
}

fn closed_reason(r: Result<echelon::TaskId, SendError<Msg>>) -> String {
    match r {
        Err(SendError::Closed { reason, .. }) => reason,
        other => panic!("expected SendError::Closed, got {other:?}"),
    }
}

// ---- Permanent -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_agent_is_restarted_after_a_crash() {
    let mut f = spawn(RestartPolicy::Permanent).await;
    assert_eq!(
        f.incarnation(Msg::CrashOnce).await,
        1,
        "the crashed task is redelivered to the new incarnation"
    );
    f.expect(Event::Stopped(0, StopReason::Restart)).await;
    f.expect(Event::Started(1)).await;
    assert_eq!(f.built(), 2);
    assert_eq!(f.worker.counters().restarts, 1);
    assert_eq!(f.worker.counters().redelivered, 1);
    assert_eq!(f.incarnation(Msg::Ping).await, 1);
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_agent_is_restarted_after_a_normal_exit() {
    let mut f = spawn(RestartPolicy::Permanent).await;
    assert!(f.call(Msg::Quit).await.is_completed());
    // the old value is stopped (the reason is not pinned here) and a new one starts
    let stopped = within(5, "on_stop", f.events.recv()).await;
    assert!(matches!(stopped, Some(Event::Stopped(0, _))), "{stopped:?}");
    f.expect(Event::Started(1)).await;
    assert_eq!(f.built(), 2);
    assert_eq!(f.worker.counters().restarts, 1);
    assert_eq!(f.incarnation(Msg::Ping).await, 1, "still takes work");
    f.finish().await;
}

// ---- Transient -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_agent_is_restarted_after_a_crash() {
    let mut f = spawn(RestartPolicy::Transient).await;
    assert_eq!(f.incarnation(Msg::CrashOnce).await, 1);
    f.expect(Event::Stopped(0, StopReason::Restart)).await;
    f.expect(Event::Started(1)).await;
    assert_eq!(f.built(), 2);
    assert_eq!(f.worker.counters().restarts, 1);
    assert_eq!(f.incarnation(Msg::Ping).await, 1);
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_agent_stops_for_good_after_a_normal_exit() {
    let mut f = spawn(RestartPolicy::Transient).await;
    f.hold().await;
    let quit = queue(&f.worker, Msg::Quit).await;
    let behind = [
        queue(&f.worker, Msg::Ping).await,
        queue(&f.worker, Msg::Ping).await,
    ];
    f.gate.notify_one();

    let quit = within(5, "the Quit task", quit).await.expect("accepted");
    assert!(
        quit.is_completed(),
        "the exiting task itself completes: {quit:?}"
    );
    f.expect(Event::Stopped(0, StopReason::Normal)).await;
    for (i, t) in behind.into_iter().enumerate() {
        let reason = failed(&format!("task {i} queued behind the exit"), t).await;
        assert!(
            reason.contains("shop/worker/0 stopped before handling the task")
                && reason.contains("Transient"),
            "{reason}"
        );
    }
    let reason = closed_reason(f.worker.send(Msg::Ping));
    assert!(
        reason.contains("Transient") && reason.contains("not restarted"),
        "{reason}"
    );
    assert_eq!(f.built(), 1, "no new incarnation");
    assert_eq!(f.worker.counters().restarts, 0);
    let c = idle(&f.h, 5).await;
    assert!(c.is_balanced(), "{c:?}");
    assert_eq!(c.failed, 2, "{c:?}");
    assert!(f.events.try_recv().is_err(), "nothing started again");
    f.finish().await;
}

/// A stop request made by an attempt that then crashed belongs to the crashed
/// incarnation: the restart discards the agent value and redelivers the task, and the
/// fresh incarnation, which handled it without asking to stop, must keep running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_stop_request_from_a_crashed_attempt_does_not_outlive_the_restart() {
    let mut f = spawn(RestartPolicy::Transient).await;
    assert_eq!(f.incarnation(Msg::QuitThenCrash).await, 1);
    f.expect(Event::Stopped(0, StopReason::Restart)).await;
    f.expect(Event::Started(1)).await;
    match within(5, "a Ping", f.worker.call(Msg::Ping)).await {
        Ok(Outcome::Completed {
            reply: Some(Msg::Incarnation(1)),
            ..
        }) => {}
        other => panic!(
            "incarnation 1 never asked to stop, yet the agent ended: the crashed attempt's \
             ctx.stop() survived the restart ({other:?})"
        ),
    }
    assert_eq!(f.built(), 2);
    assert_eq!(f.worker.counters().restarts, 1);
    f.finish().await;
}

// ---- Temporary -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_agent_is_not_restarted_after_a_crash() {
    let mut f = spawn(RestartPolicy::Temporary).await;
    f.hold().await;
    let crash = queue(&f.worker, Msg::Crash).await;
    let behind = [
        queue(&f.worker, Msg::Ping).await,
        queue(&f.worker, Msg::Ping).await,
        queue(&f.worker, Msg::Ping).await,
    ];
    f.gate.notify_one();

    let reason = failed("the crashing task", crash).await;
    assert!(
        reason.contains("worker choked on its input")
            && reason.contains("Temporary")
            && reason.contains("not restarted"),
        "the crash reason says the worker crashed and is not restarted: {reason}"
    );
    for (i, t) in behind.into_iter().enumerate() {
        let why = failed(&format!("task {i} queued behind the crash"), t).await;
        assert!(
            why.contains("shop/worker/0 stopped before handling the task")
                && why.contains("Temporary"),
            "{why}"
        );
    }
    let closed = closed_reason(f.worker.send(Msg::Ping));
    assert!(closed.contains("Temporary"), "{closed}");
    assert!(matches!(
        f.h.send("worker/0", Msg::Ping),
        Err(SendError::Closed { .. })
    ));

    assert_eq!(f.built(), 1, "the factory is not called again");
    assert_eq!(f.worker.counters().restarts, 0);
    let c = idle(&f.h, 5).await;
    assert!(c.is_balanced(), "{c:?}");
    // Hold completed; Crash and the three tasks behind it failed
    assert_eq!((c.submitted, c.completed, c.failed), (5, 1, 4), "{c:?}");
    let mut starts = 0;
    while let Ok(e) = f.events.try_recv() {
        starts += usize::from(matches!(e, Event::Started(_)));
    }
    assert_eq!(starts, 0, "no new incarnation started");
    f.finish().await;
}
