//! Restart strategies pick which siblings restart with a crashed agent.
//!
//! A team is a lead agent plus four reports (`lead/0` leads `report/0..=3`); in the
//! team's supervisor the lead is child 0 and report k is child k + 1. One agent crashes
//! once; the test then checks exactly which agents' factories ran again, whose
//! incarnation moved, and that the agents left alone kept their in-memory state.

mod support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use echelon::prelude::*;
use tokio::sync::{mpsc, Notify};

use support::within;

#[derive(Clone, Debug)]
enum Msg {
    /// Add one to the agent's in-memory counter.
    Bump,
    /// Reply with the agent's state.
    Get,
    /// Panic on the first attempt; the redelivered attempt replies with the state.
    CrashOnce,
    /// Signal that it is being handled, wait for the gate, then reply with the state.
    Hold,
    /// A reply.
    State { count: u64, incarnation: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Who {
    Lead,
    Report(usize),
}

impl Who {
    fn addr(self) -> String {
        match self {
            Who::Lead => "lead/0".to_string(),
            Who::Report(k) => format!("report/{k}"),
        }
    }
}

const REPORTS: usize = 4;

fn everyone() -> Vec<Who> {
    let mut all = vec![Who::Lead];
    all.extend((0..REPORTS).map(Who::Report));
    all
}

struct Worker {
    who: Who,
    count: u64,
    started: mpsc::UnboundedSender<(Who, u64)>,
    entered: mpsc::UnboundedSender<Who>,
    gate: Arc<Notify>,
}

impl Agent for Worker {
    type Msg = Msg;

    async fn on_start(&mut self, ctx: &mut Ctx<Msg>) -> Result<(), AgentError> {
        let _ = self.started.send((self.who, ctx.incarnation()));
        Ok(())
    }

    async fn handle(&mut self, ctx: &mut Ctx<Msg>, msg: Msg) -> Result<Verdict<Msg>, AgentError> {
        let state = |count| Msg::State {
            count,
            incarnation: ctx.incarnation(),
        };
        match msg {
            Msg::Bump => {
                self.count += 1;
                Ok(Verdict::Done)
            }
            Msg::Get => Ok(Verdict::Reply(state(self.count))),
            Msg::CrashOnce if ctx.attempt() == 1 => {
                panic!("{:?} crashed on purpose", self.who)
            }
            Msg::CrashOnce => Ok(Verdict::Reply(state(self.count))),
            Msg::Hold => {
                let _ = self.entered.send(self.who);
                self.gate.notified().await;
                Ok(Verdict::Reply(state(self.count)))
            }
            Msg::State { .. } => Err(AgentError::reject("a reply is not a request")),
        }
    }
}

struct Team {
    h: Hierarchy<Msg>,
    /// Every factory call, in order.
    built: Arc<Mutex<Vec<Who>>>,
    /// Every `on_start`: who and which incarnation.
    started: mpsc::UnboundedReceiver<(Who, u64)>,
    /// Agents that entered a `Hold` handler.
    entered: mpsc::UnboundedReceiver<Who>,
    /// Opens every `Hold` (one permit per call).
    gate: Arc<Notify>,
}

async fn team(strategy: Strategy) -> Team {
    let built = Arc::new(Mutex::new(Vec::new()));
    let (tx, started) = mpsc::unbounded_channel();
    let (entered_tx, entered) = mpsc::unbounded_channel();
    let gate = Arc::new(Notify::new());
    let factory = |make: fn(usize) -> Who| {
        let built = built.clone();
        let tx = tx.clone();
        let entered_tx = entered_tx.clone();
        let gate = gate.clone();
        move |i: usize| {
            let who = make(i);
            built.lock().expect("factory log").push(who);
            Worker {
                who,
                count: 0,
                started: tx.clone(),
                entered: entered_tx.clone(),
                gate: gate.clone(),
            }
        }
    };
    let h = Hierarchy::builder("team")
        .restart(
            strategy,
            Intensity::at_most(10).per(Duration::from_secs(10)),
        )
        .tier("lead", 1, factory(|_| Who::Lead))
        .tier("report", REPORTS, factory(Who::Report))
        .spawn()
        .await
        .expect("spawn the team");
    let mut t = Team {
        h,
        built,
        started,
        entered,
        gate,
    };
    // every agent starts once, as incarnation 0
    let first = t.next_starts(REPORTS + 1).await;
    assert_eq!(
        first,
        everyone()
            .into_iter()
            .map(|w| (w, 0))
            .collect::<BTreeSet<_>>()
    );
    t
}

impl Team {
    async fn next_starts(&mut self, n: usize) -> BTreeSet<(Who, u64)> {
        let mut got = BTreeSet::new();
        within(5, &format!("{n} on_start notifications"), async {
            while got.len() < n {
                let s = self.started.recv().await.expect("start channel open");
                assert!(got.insert(s), "{s:?} started twice");
            }
        })
        .await;
        got
    }

    fn factory_calls(&self, who: Who) -> usize {
        let built = self.built.lock().expect("factory log");
        built.iter().filter(|&&w| w == who).count()
    }

    async fn state(&self, who: Who) -> (u64, u64) {
        let out = within(5, "a Get reply", self.h.call(&who.addr(), Msg::Get))
            .await
            .expect("send Get");
        match out {
            Outcome::Completed {
                reply: Some(Msg::State { count, incarnation }),
                ..
            } => (count, incarnation),
            other => panic!("expected a state from {who:?}, got {other:?}"),
        }
    }
}

/// Give every agent distinct in-memory state, crash `crasher` once, and check that
/// exactly `restarted` were rebuilt and everyone else kept their state.
async fn crash_and_check(strategy: Strategy, crasher: Who, restarted: &[Who]) {
    let mut t = team(strategy).await;
    // lead: 1 bump, report k: k + 2 bumps
    let bumps = |w: Who| match w {
        Who::Lead => 1,
        Who::Report(k) => k as u64 + 2,
    };
    for w in everyone() {
        for _ in 0..bumps(w) {
            t.h.send(&w.addr(), Msg::Bump).expect("send Bump");
        }
    }
    for w in everyone() {
        assert_eq!(t.state(w).await, (bumps(w), 0), "{w:?} before the crash");
    }

    // the crash: the task is redelivered to the crasher's fresh incarnation
    let out = within(
        5,
        "the crashing call",
        t.h.call(&crasher.addr(), Msg::CrashOnce),
    )
    .await
    .expect("send CrashOnce");
    match out {
        Outcome::Completed {
            reply: Some(Msg::State { count, incarnation }),
            ..
        } => assert_eq!(
            (count, incarnation),
            (0, 1),
            "the crashed task runs again on a fresh value from the factory"
        ),
        other => panic!("expected the redelivered CrashOnce to reply, got {other:?}"),
    }

    // idle siblings restart on their Reset message, without being sent anything
    let expected: BTreeSet<(Who, u64)> = restarted.iter().map(|&w| (w, 1)).collect();
    let got = t.next_starts(restarted.len()).await;
    assert_eq!(got, expected, "{strategy:?}: who restarted");

    // every agent now reports its state; a pending restart would happen before its Get
    for w in everyone() {
        let again = restarted.contains(&w);
        let (count, incarnation) = t.state(w).await;
        if again {
            assert_eq!((count, incarnation), (0, 1), "{w:?} was restarted");
        } else {
            assert_eq!(
                (count, incarnation),
                (bumps(w), 0),
                "{w:?} was not restarted and keeps its state"
            );
        }
        assert_eq!(
            t.factory_calls(w),
            1 + usize::from(again),
            "factory calls for {w:?}"
        );
        let agent = t.h.agent(&w.addr()).expect("agent");
        assert_eq!(
            agent.counters().restarts,
            u64::from(again),
            "{w:?} restarts"
        );
    }
    assert!(
        t.started.try_recv().is_err(),
        "no restart beyond the strategy's"
    );
    assert_eq!(t.h.counters().restarts, restarted.len() as u64);
    assert_eq!(t.h.counters().failure_escalations, 0);

    let report = within(4, "shutdown", t.h.shutdown(Duration::from_secs(5))).await;
    assert!(report.drained, "{report:?}");
    assert!(report.counters.is_balanced(), "{:?}", report.counters);
    assert_eq!(report.counters.failed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_for_one_restarts_only_the_crashed_report() {
    crash_and_check(Strategy::OneForOne, Who::Report(1), &[Who::Report(1)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_for_all_restarts_the_lead_and_every_report() {
    crash_and_check(Strategy::OneForAll, Who::Report(1), &everyone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_for_one_restarts_the_crashed_report_and_those_after_it() {
    crash_and_check(
        Strategy::RestForOne,
        Who::Report(1),
        &[Who::Report(1), Who::Report(2), Who::Report(3)],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_for_one_from_the_lead_restarts_the_whole_team() {
    // the lead starts first, so every report was started after it
    crash_and_check(Strategy::RestForOne, Who::Lead, &everyone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_for_one_from_the_last_report_restarts_only_it() {
    crash_and_check(
        Strategy::RestForOne,
        Who::Report(REPORTS - 1),
        &[Who::Report(REPORTS - 1)],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_sibling_finishes_its_message_with_its_old_state_then_restarts() {
    let mut t = team(Strategy::OneForAll).await;
    let busy = Who::Report(3);
    for _ in 0..3 {
        t.h.send(&busy.addr(), Msg::Bump).expect("send Bump");
    }
    assert_eq!(t.state(busy).await, (3, 0));
    let agent = t.h.agent(&busy.addr()).expect("agent");
    let hold = tokio::spawn(async move { agent.call(Msg::Hold).await });
    let entered = within(5, "the Hold handler", t.entered.recv()).await;
    assert_eq!(entered, Some(busy));

    let out = within(5, "the crashing call", t.h.call("report/1", Msg::CrashOnce))
        .await
        .expect("send CrashOnce");
    assert!(out.is_completed(), "{out:?}");
    // the idle team members restart now; the busy one is still in its handler
    let idle: BTreeSet<(Who, u64)> = [Who::Lead, Who::Report(0), Who::Report(1), Who::Report(2)]
        .into_iter()
        .map(|w| (w, 1))
        .collect();
    assert_eq!(t.next_starts(4).await, idle);
    assert!(
        t.started.try_recv().is_err(),
        "a handler is never cut short"
    );

    // the handler finishes on the old value, then the agent restarts
    t.gate.notify_one();
    let out = within(5, "the Hold reply", hold)
        .await
        .expect("join")
        .expect("send Hold");
    match out {
        Outcome::Completed {
            reply: Some(Msg::State { count, incarnation }),
            ..
        } => assert_eq!((count, incarnation), (3, 0), "the old incarnation replied"),
        other => panic!("expected the Hold reply, got {other:?}"),
    }
    assert_eq!(t.next_starts(1).await, [(busy, 1)].into());
    assert_eq!(t.state(busy).await, (0, 1));
    assert_eq!(t.factory_calls(busy), 2);

    let report = within(4, "shutdown", t.h.shutdown(Duration::from_secs(5))).await;
    assert!(report.counters.is_balanced(), "{:?}", report.counters);
}
