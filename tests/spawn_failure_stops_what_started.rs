//! A spawn that fails part-way: the error names the agent that failed, and every agent
//! that did start is stopped before `spawn()` returns, agents and whole child teams
//! alike, whether the failure is an error or a panic in `on_start`.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use echelon::prelude::*;
use echelon::BuildError;
use support::within;
use tokio::sync::Notify;

#[derive(Clone, Debug)]
struct Job;

/// How the failing agent fails its start.
#[derive(Clone, Copy)]
enum Fail {
    Error,
    Panic,
}

/// Live agent values: one more at each start, one fewer at each drop.
#[derive(Default)]
struct Live {
    started: AtomicUsize,
    dropped: AtomicUsize,
    changed: Notify,
}

struct A {
    live: Arc<Live>,
    /// `Some` for the one agent whose start fails.
    fail: Option<Fail>,
    started: bool,
}

impl Agent for A {
    type Msg = Job;
    async fn handle(&mut self, _c: &mut Ctx<Job>, m: Job) -> Result<Verdict<Job>, AgentError> {
        Ok(Verdict::Reply(m))
    }
    async fn on_start(&mut self, _c: &mut Ctx<Job>) -> Result<(), AgentError> {
        match self.fail {
            Some(Fail::Error) => return Err(AgentError::crash("the test's start failure")),
            Some(Fail::Panic) => panic!("the test's start panic"),
            None => {}
        }
        self.started = true;
        self.live.started.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

impl Drop for A {
    fn drop(&mut self) {
        if self.started {
            self.live.dropped.fetch_add(1, Ordering::SeqCst);
            self.live.changed.notify_waiters();
        }
    }
}

/// `top` (1) leads two `mid` teams, each leading two `leaf` agents: the top team's
/// children are an agent and two child teams. `leaf/3`, in the second mid team, fails.
async fn spawn_with(fail: Fail) -> (Result<Hierarchy<Job>, BuildError>, Arc<Live>) {
    let live = Arc::new(Live::default());
    let agent = |live: &Arc<Live>, fail: Option<Fail>| A {
        live: live.clone(),
        fail,
        started: false,
    };
    let (l1, l2, l3) = (live.clone(), live.clone(), live.clone());
    let r = Hierarchy::builder("h")
        .tier("top", 1, move |_| agent(&l1, None))
        .tier("mid", 2, move |_| agent(&l2, None))
        .tier("leaf", 4, move |i| agent(&l3, (i == 3).then_some(fail)))
        .spawn()
        .await;
    (r, live)
}

async fn check(fail: Fail, what: &str) {
    let (r, live) = within(10, "spawn() to fail", spawn_with(fail)).await;
    let Err(BuildError::Spawn { reason }) = r else {
        panic!("expected BuildError::Spawn, got {:?}", r.err());
    };
    assert!(
        reason.contains("leaf/3"),
        "reason names the agent: {reason}"
    );
    assert!(reason.contains(what), "reason says why: {reason}");
    // Six agents start (top, both mids, leaf/0..2): the failing one never counts.
    // They are all dropped once their actors are dead.
    within(5, "every started agent to be dropped", async {
        loop {
            let notified = live.changed.notified();
            let (s, d) = (
                live.started.load(Ordering::SeqCst),
                live.dropped.load(Ordering::SeqCst),
            );
            if s == 6 && d == s {
                return;
            }
            notified.await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_on_start_error_fails_the_spawn_and_stops_every_agent_that_started() {
    check(Fail::Error, "the test's start failure").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_on_start_panic_fails_the_spawn_and_stops_every_agent_that_started() {
    check(Fail::Panic, "the test's start panic").await;
}
