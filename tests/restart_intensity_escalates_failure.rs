//! Restart intensity: one restart more than `Intensity::at_most(n).per(d)` allows and a
//! supervisor fails upward. Its own supervisor then restarts the whole team (every agent
//! of it restarts in place), or, at the root, the hierarchy fails with a reason that
//! every queued task carries.

mod support;

use std::collections::BTreeSet;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use echelon::prelude::*;
use echelon::{RestartPolicy, SendError, StopReason};
use tokio::sync::{mpsc, Notify};

use support::within;

#[derive(Clone, Debug)]
enum Msg {
    Ping,
    /// Always panics.
    Crash,
    /// Signals that it is being handled, then waits for the agent's gate.
    Hold,
}

struct Node {
    started: mpsc::UnboundedSender<(String, u64)>,
    stopped: mpsc::UnboundedSender<(String, StopReason)>,
    gate: Arc<Notify>,
    entered: mpsc::UnboundedSender<String>,
}

impl Agent for Node {
    type Msg = Msg;

    async fn on_start(&mut self, ctx: &mut Ctx<Msg>) -> Result<(), AgentError> {
        let _ = self.started.send((addr(ctx), ctx.incarnation()));
        Ok(())
    }

    async fn on_stop(&mut self, ctx: &mut Ctx<Msg>, reason: &StopReason) {
        let _ = self.stopped.send((addr(ctx), reason.clone()));
    }

    async fn handle(&mut self, ctx: &mut Ctx<Msg>, msg: Msg) -> Result<Verdict<Msg>, AgentError> {
        match msg {
            Msg::Ping => Ok(Verdict::Done),
            Msg::Crash => panic!("{} hit a poisoned input", addr(ctx)),
            Msg::Hold => {
                let _ = self.entered.send(addr(ctx));
                self.gate.notified().await;
                Ok(Verdict::Done)
            }
        }
    }
}

/// `tier/index`, the short address of the agent.
fn addr(ctx: &Ctx<Msg>) -> String {
    format!("{}/{}", ctx.tier(), ctx.index())
}

struct Fixture {
    h: Hierarchy<Msg>,
    started: mpsc::UnboundedReceiver<(String, u64)>,
    stopped: mpsc::UnboundedReceiver<(String, StopReason)>,
    entered: mpsc::UnboundedReceiver<String>,
    /// One gate per index; shared across tiers (each test uses distinct indices).
    gates: Vec<Arc<Notify>>,
}

async fn build(name: &str, intensity: Intensity, tiers: &[(&'static str, usize)]) -> Fixture {
    build_with(name, intensity, tiers, |_| RestartPolicy::Permanent).await
}

/// As [`build`], with a restart policy per tier name.
async fn build_with(
    name: &str,
    intensity: Intensity,
    tiers: &[(&'static str, usize)],
    policy: fn(&str) -> RestartPolicy,
) -> Fixture {
    let (started_tx, started) = mpsc::unbounded_channel();
    let (entered_tx, entered) = mpsc::unbounded_channel();
    let (stopped_tx, stopped) = mpsc::unbounded_channel();
    let gates: Vec<Arc<Notify>> = (0..8).map(|_| Arc::new(Notify::new())).collect();
    let mut b = Hierarchy::builder(name)
        .restart(Strategy::OneForOne, intensity)
        .max_attempts(1);
    for &(tier, count) in tiers {
        let (started_tx, stopped_tx, entered_tx, gates) = (
            started_tx.clone(),
            stopped_tx.clone(),
            entered_tx.clone(),
            gates.clone(),
        );
        let t = Tier::new(tier, count, move |i| Node {
            started: started_tx.clone(),
            stopped: stopped_tx.clone(),
            gate: gates[i].clone(),
            entered: entered_tx.clone(),
        });
        b = b.tier_with(t.restart_policy(policy(tier)));
    }
    let h = b.spawn().await.expect("spawn");
    let mut f = Fixture {
        h,
        started,
        stopped,
        entered,
        gates,
    };
    let total = tiers.iter().map(|t| t.1).sum();
    let first = f.starts(total).await;
    assert!(first.iter().all(|(_, inc)| *inc == 0), "{first:?}");
    f
}

impl Fixture {
    /// The next `n` `on_start` notifications (bounded wait).
    async fn starts(&mut self, n: usize) -> BTreeSet<(String, u64)> {
        let mut got = BTreeSet::new();
        within(5, &format!("{n} on_start notifications"), async {
            while got.len() < n {
                let s = self.started.recv().await.expect("start channel open");
                assert!(got.insert(s.clone()), "{s:?} started twice");
            }
        })
        .await;
        got
    }

    async fn crash(&self, at: &str) -> String {
        match within(5, "a crashing call", self.h.call(at, Msg::Crash))
            .await
            .expect("send Crash")
        {
            Outcome::Failed(f) => f.reason,
            other => panic!("a Crash with max_attempts(1) must fail, got {other:?}"),
        }
    }

    async fn ping(&self, at: &str) {
        let out = within(5, "a Ping", self.h.call(at, Msg::Ping))
            .await
            .expect("send Ping");
        assert!(out.is_completed(), "Ping to {at}: {out:?}");
    }

    fn restarts(&self, at: &str) -> u64 {
        self.h.agent(at).expect("agent").counters().restarts
    }

    /// Ping every agent (so any pending restart has happened), then check each agent's
    /// restart count and that nobody else started.
    async fn expect_restarts(&mut self, expected: &[(&str, u64)]) {
        for (at, _) in expected {
            self.ping(at).await;
        }
        for (at, n) in expected {
            assert_eq!(self.restarts(at), *n, "restarts of {at}");
        }
        assert!(
            self.started.try_recv().is_err(),
            "an unexpected restart happened"
        );
    }
}

/// Three tiers: `top/0` leads `mid/0` and `mid/1`; `mid/0` leads `leaf/0`, `leaf/1`;
/// `mid/1` leads `leaf/2`, `leaf/3`.
const THREE_TIERS: &[(&str, usize)] = &[("top", 1), ("mid", 2), ("leaf", 4)];

fn set(items: &[(&str, u64)]) -> BTreeSet<(String, u64)> {
    items.iter().map(|(a, i)| (a.to_string(), *i)).collect()
}

#[tokio::test(start_paused = true)]
async fn a_team_over_its_intensity_is_restarted_whole_by_its_parent() {
    let mut f = build(
        "ward",
        Intensity::at_most(1).per(Duration::from_secs(10)),
        THREE_TIERS,
    )
    .await;

    // the first crash is within the intensity: only leaf/0 restarts
    f.crash("leaf/0").await;
    assert_eq!(f.starts(1).await, set(&[("leaf/0", 1)]));
    assert_eq!(f.h.counters().failure_escalations, 0);

    // the second within 10 s is one too many for mid/0's supervisor: it fails upward
    // and top/0's supervisor restarts the whole mid/0 team
    f.crash("leaf/0").await;
    assert_eq!(
        f.starts(3).await,
        set(&[("leaf/0", 2), ("mid/0", 1), ("leaf/1", 1)]),
        "every agent of the failing team restarts"
    );
    assert_eq!(f.h.counters().failure_escalations, 1);
    assert_eq!(f.h.failure(), None, "the parent absorbed the failure");

    f.expect_restarts(&[
        ("leaf/0", 2),
        ("mid/0", 1),
        ("leaf/1", 1),
        ("top/0", 0),
        ("mid/1", 0),
        ("leaf/2", 0),
        ("leaf/3", 0),
    ])
    .await;

    let report = within(1, "shutdown", f.h.shutdown(Duration::from_secs(5))).await;
    assert!(report.drained && report.failure.is_none(), "{report:?}");
    assert!(report.counters.is_balanced(), "{:?}", report.counters);
    assert_eq!(report.counters.failed, 2, "the two Crash tasks");
}

#[tokio::test(start_paused = true)]
async fn crashes_further_apart_than_the_period_do_not_fail_the_team() {
    let mut f = build(
        "ward",
        Intensity::at_most(1).per(Duration::from_secs(10)),
        THREE_TIERS,
    )
    .await;

    f.crash("leaf/0").await;
    assert_eq!(f.starts(1).await, set(&[("leaf/0", 1)]));
    tokio::time::advance(Duration::from_secs(11)).await;
    f.crash("leaf/0").await;
    assert_eq!(f.starts(1).await, set(&[("leaf/0", 2)]));

    assert_eq!(f.h.counters().failure_escalations, 0);
    f.expect_restarts(&[
        ("leaf/0", 2),
        ("mid/0", 0),
        ("leaf/1", 0),
        ("top/0", 0),
        ("mid/1", 0),
        ("leaf/2", 0),
        ("leaf/3", 0),
    ])
    .await;
    let report = within(1, "shutdown", f.h.shutdown(Duration::from_secs(5))).await;
    assert!(report.counters.is_balanced(), "{:?}", report.counters);
}

#[tokio::test(start_paused = true)]
async fn repeated_team_failures_escalate_one_more_level() {
    let mut f = build(
        "ward",
        Intensity::at_most(1).per(Duration::from_secs(10)),
        THREE_TIERS,
    )
    .await;

    // mid/0's team fails upward once; top/0's supervisor restarts it (its 1 restart)
    f.crash("leaf/0").await;
    f.crash("leaf/0").await;
    assert_eq!(f.starts(4).await.len(), 4);
    assert_eq!(f.h.counters().failure_escalations, 1);

    // the restarted team has a fresh intensity history: one crash is admitted again
    f.crash("leaf/0").await;
    assert_eq!(f.starts(1).await, set(&[("leaf/0", 3)]));
    assert_eq!(f.h.counters().failure_escalations, 1);

    // the next one fails mid/0's team upward again; that is a second restart for
    // top/0's supervisor within 10 s, so it fails upward too and the root restarts the
    // whole top/0 team: every agent below it
    f.crash("leaf/0").await;
    assert_eq!(
        f.starts(7).await,
        set(&[
            ("leaf/0", 4),
            ("mid/0", 2),
            ("leaf/1", 2),
            ("top/0", 1),
            ("mid/1", 1),
            ("leaf/2", 1),
            ("leaf/3", 1),
        ])
    );
    assert_eq!(
        f.h.counters().failure_escalations,
        3,
        "mid/0 twice, top/0 once"
    );
    assert_eq!(f.h.failure(), None, "the root's intensity was not exceeded");

    f.expect_restarts(&[
        ("leaf/0", 4),
        ("mid/0", 2),
        ("leaf/1", 2),
        ("top/0", 1),
        ("mid/1", 1),
        ("leaf/2", 1),
        ("leaf/3", 1),
    ])
    .await;
    let report = within(1, "shutdown", f.h.shutdown(Duration::from_secs(5))).await;
    assert!(report.drained && report.failure.is_none(), "{report:?}");
    assert!(report.counters.is_balanced(), "{:?}", report.counters);
}

#[tokio::test(start_paused = true)]
async fn a_failing_team_its_parent_will_not_restart_is_stopped() {
    // the mid tier is Temporary: its teams are not restarted when they fail upward
    let mut f = build_with(
        "ward",
        Intensity::at_most(1).per(Duration::from_secs(10)),
        THREE_TIERS,
        |tier| match tier {
            "mid" => RestartPolicy::Temporary,
            _ => RestartPolicy::Permanent,
        },
    )
    .await;

    f.crash("leaf/0").await;
    assert_eq!(f.starts(1).await, set(&[("leaf/0", 1)]));
    let reason = f.crash("leaf/0").await;
    assert!(
        reason.contains("ward/top/0/mid/0 is Temporary") && reason.contains("not restarted"),
        "the crashing task fails with the parent's decision: {reason}"
    );
    assert_eq!(f.h.counters().failure_escalations, 1);
    assert_eq!(
        f.h.failure(),
        None,
        "only the team stopped, not the hierarchy"
    );

    // the team stops each of its agents (by message): an agent closes its slot, then
    // runs on_stop
    let team: BTreeSet<String> = ["mid/0", "leaf/0", "leaf/1"].map(String::from).into();
    let mut ended = BTreeSet::new();
    within(5, "the team's agents to stop", async {
        while ended != team {
            let (at, why) = f.stopped.recv().await.expect("stop channel open");
            if why != StopReason::Restart {
                assert!(team.contains(&at), "{at} stopped ({why:?})");
                ended.insert(at);
            }
        }
    })
    .await;
    for at in &team {
        match f.h.agent(at).expect("agent").send(Msg::Ping) {
            Err(SendError::Closed { reason, .. }) => {
                assert!(reason.contains("mid/0 is Temporary"), "{at}: {reason}");
            }
            other => panic!("{at} should be closed for good, got {other:?}"),
        }
    }
    // the rest of the hierarchy works, and nothing restarted
    f.expect_restarts(&[("top/0", 0), ("mid/1", 0), ("leaf/2", 0), ("leaf/3", 0)])
        .await;
    let report = within(1, "shutdown", f.h.shutdown(Duration::from_secs(5))).await;
    assert!(report.failure.is_none(), "{report:?}");
    assert!(report.counters.is_balanced(), "{:?}", report.counters);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_root_over_its_intensity_fails_the_hierarchy() {
    // one tier: the workers are the root supervisor's own children
    let mut f = build(
        "plant",
        Intensity::at_most(1).per(Duration::from_secs(10)),
        &[("worker", 2)],
    )
    .await;
    let w0 = f.h.agent("worker/0").expect("worker/0");
    let w1 = f.h.agent("worker/1").expect("worker/1");

    // first crash: restarted
    f.crash("worker/0").await;
    assert_eq!(f.starts(1).await, set(&[("worker/0", 1)]));
    assert_eq!(f.h.failure(), None);

    // both workers busy, with tasks queued behind them
    w0.send(Msg::Hold).expect("send Hold");
    w1.send(Msg::Hold).expect("send Hold");
    let mut busy = BTreeSet::new();
    within(5, "both workers holding", async {
        while busy.len() < 2 {
            busy.insert(f.entered.recv().await.expect("entered channel open"));
        }
    })
    .await;
    let crash = queue(&w0, Msg::Crash).await;
    let mut behind_w0 = Vec::new();
    let mut behind_w1 = Vec::new();
    for _ in 0..2 {
        behind_w0.push(queue(&w0, Msg::Ping).await);
        behind_w1.push(queue(&w1, Msg::Ping).await);
    }

    // second crash within the period: the root gives up and the hierarchy fails
    f.gates[0].notify_one();
    let crashed = failed("the second crash", crash).await;
    let failure = f.h.failure().expect("the hierarchy failed");
    assert!(
        failure.contains("plant exceeded its restart intensity (1 restarts in 10s)"),
        "failure names the supervisor and the intensity: {failure}"
    );
    assert!(
        failure.contains("plant/worker/0") && failure.contains("hit a poisoned input"),
        "failure names the crashed child and its crash: {failure}"
    );
    assert!(
        crashed.contains(&failure),
        "the crashing task fails with the hierarchy's failure: {crashed}"
    );
    assert!(
        matches!(w1.send(Msg::Ping), Err(SendError::ShuttingDown { .. })),
        "a failed hierarchy takes no new work"
    );

    // what was queued fails with the reason: behind the crash, and at a sibling that
    // was still busy when the hierarchy failed
    f.gates[1].notify_one();
    for (i, t) in behind_w0.into_iter().enumerate() {
        let reason = failed(&format!("task {i} behind the crash"), t).await;
        assert!(reason.contains(&failure), "{reason}");
    }
    for (i, t) in behind_w1.into_iter().enumerate() {
        let reason = failed(&format!("task {i} queued at worker/1"), t).await;
        assert!(reason.contains(&failure), "{reason}");
    }

    let report = within(4, "finished()", f.h.finished()).await;
    assert_eq!(report.failure.as_deref(), Some(failure.as_str()));
    assert!(!report.drained, "{report:?}");
    assert_eq!(report.counters.failure_escalations, 1);
    assert!(report.counters.is_balanced(), "{:?}", report.counters);
    // 2 Holds completed; 2 Crashes and 4 queued Pings failed
    assert_eq!(report.counters.submitted, 8, "{:?}", report.counters);
    assert_eq!(report.counters.completed, 2, "{:?}", report.counters);
    assert_eq!(report.counters.failed, 6, "{:?}", report.counters);
}

#[tokio::test(start_paused = true)]
async fn a_zero_intensity_fails_every_level_up_to_the_root() {
    let mut f = build(
        "ward",
        Intensity::at_most(0).per(Duration::from_secs(10)),
        THREE_TIERS,
    )
    .await;
    let reason = f.crash("leaf/2").await;
    let failure = f.h.failure().expect("the hierarchy failed");
    assert!(
        failure.starts_with("ward exceeded its restart intensity (0 restarts in 10s)"),
        "{failure}"
    );
    for level in ["ward/top/0 exceeded", "ward/top/0/mid/1 exceeded", "leaf/2"] {
        assert!(
            failure.contains(level),
            "the reason shows the failure's path up ({level}): {failure}"
        );
    }
    assert!(reason.contains(&failure), "{reason}");
    assert!(f.started.try_recv().is_err(), "nothing restarted");

    // under paused time a hang would only show as virtual time: the orderly stop must
    // not need the 5 s kill fallback
    let report = within(1, "finished()", f.h.finished()).await;
    assert_eq!(report.failure, Some(failure));
    assert_eq!(
        report.counters.failure_escalations, 3,
        "mid/1, top/0 and the root"
    );
    assert!(report.counters.is_balanced(), "{:?}", report.counters);
}
