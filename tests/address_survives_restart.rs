//! An agent's address is its position, not an actor incarnation: an `AgentRef` taken
//! before any crash and addresses looked up by path keep reaching the agent across many
//! crash/restart cycles, while `Ctx::path()` stays put and `Ctx::incarnation()` grows.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use echelon::prelude::*;
use echelon::SendError;

use support::{idle, within};

#[derive(Clone, Debug)]
enum Msg {
    /// Panics on every attempt.
    Crash(u32),
    /// Replies with the agent's view of itself.
    Probe,
    /// Handled quietly.
    Tick,
    /// A reply to `Probe`.
    Report {
        path: String,
        tier: String,
        index: usize,
        incarnation: u64,
    },
}

struct Courier {
    starts: Arc<AtomicU64>,
}

impl Agent for Courier {
    type Msg = Msg;

    async fn on_start(&mut self, _ctx: &mut Ctx<Msg>) -> Result<(), AgentError> {
        self.starts.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn handle(&mut self, ctx: &mut Ctx<Msg>, msg: Msg) -> Result<Verdict<Msg>, AgentError> {
        match msg {
            Msg::Crash(n) => panic!("courier crash #{n}"),
            Msg::Probe => Ok(Verdict::Reply(Msg::Report {
                path: ctx.path().to_string(),
                tier: ctx.tier().to_string(),
                index: ctx.index(),
                incarnation: ctx.incarnation(),
            })),
            Msg::Tick => Ok(Verdict::Done),
            Msg::Report { .. } => Err(AgentError::reject("couriers take no reports")),
        }
    }
}

struct Hub;

impl Agent for Hub {
    type Msg = Msg;

    async fn handle(&mut self, _ctx: &mut Ctx<Msg>, _msg: Msg) -> Result<Verdict<Msg>, AgentError> {
        Ok(Verdict::Done)
    }
}

const TARGET: &str = "depot/hub/1/courier/13";
const CYCLES: u32 = 50;

/// `starts[i]` counts `on_start` runs of courier `i`.
async fn spawn() -> (Hierarchy<Msg>, Vec<Arc<AtomicU64>>) {
    let starts: Vec<Arc<AtomicU64>> = (0..20).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let s = starts.clone();
    let h = Hierarchy::builder("depot")
        // 10 couriers per hub under a span of 4: team leads are inserted between them
        .span(SpanOfControl::auto_split(4))
        .restart(
            Strategy::OneForOne,
            Intensity::at_most(1_000).per(Duration::from_secs(60)),
        )
        .max_attempts(1)
        .tier("hub", 2, |_| Hub)
        .tier("courier", 20, move |i| Courier {
            starts: s[i].clone(),
        })
        .spawn()
        .await
        .expect("spawn");
    (h, starts)
}

async fn probe(agent: &AgentRef<Msg>) -> (String, String, usize, u64) {
    match within(5, "probe", agent.call(Msg::Probe))
        .await
        .expect("probe accepted")
    {
        Outcome::Completed {
            reply:
                Some(Msg::Report {
                    path,
                    tier,
                    index,
                    incarnation,
                }),
            ..
        } => (path, tier, index, incarnation),
        other => panic!("probe did not complete with a report: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handles_and_paths_keep_reaching_the_agent_across_fifty_restarts() {
    let (h, starts) = spawn().await;
    let original = h.agent("courier/13").expect("courier/13");
    assert_eq!(original.path().as_str(), TARGET);
    let (path0, tier0, index0, inc0) = probe(&original).await;
    assert_eq!(
        (path0.as_str(), tier0.as_str(), index0, inc0),
        (TARGET, "courier", 13, 0)
    );

    // meanwhile another task keeps sending through its own clone of the original handle
    let ticker = original.clone();
    let ticks = tokio::spawn(async move {
        let mut sent = 0u64;
        for _ in 0..1_000 {
            ticker
                .send(Msg::Tick)
                .expect("tick accepted across restarts");
            sent += 1;
            tokio::task::yield_now().await;
        }
        sent
    });

    for i in 1..=CYCLES {
        // crash it through a different kind of address each time
        let crash = match i % 4 {
            0 => original.call(Msg::Crash(i)).await,
            1 => h.call("courier/13", Msg::Crash(i)).await,
            2 => h.call(TARGET, Msg::Crash(i)).await,
            _ => {
                let fresh = h.agent(TARGET).expect("full path");
                fresh.call(Msg::Crash(i)).await
            }
        };
        match crash.expect("crash task accepted") {
            Outcome::Failed(f) => {
                assert_eq!(f.at.as_str(), TARGET, "{f:?}");
                assert!(f.reason.contains(&format!("courier crash #{i}")), "{f:?}");
            }
            other => panic!("cycle {i}: the crashing task should fail, got {other:?}"),
        }

        // the handle taken before the first crash reaches the new incarnation
        let (path, tier, index, incarnation) = probe(&original).await;
        assert_eq!(path, TARGET, "cycle {i}: Ctx::path() moved");
        assert_eq!((tier.as_str(), index), ("courier", 13), "cycle {i}");
        assert_eq!(
            incarnation,
            u64::from(i),
            "cycle {i}: one incarnation per crash"
        );

        // and so does a path looked up now
        let by_path = h.agent(TARGET).expect("full path");
        assert_eq!(by_path.path().as_str(), TARGET);
        let (_, _, _, incarnation) = probe(&by_path).await;
        assert_eq!(incarnation, u64::from(i), "cycle {i}");
    }

    let sent = within(10, "ticker", ticks).await.expect("ticker task");
    let c = idle(&h, 10).await;
    assert!(c.is_balanced(), "{c:?}");

    let courier = original.counters();
    assert_eq!(courier.restarts, u64::from(CYCLES), "{courier:?}");
    assert_eq!(
        courier.failed,
        u64::from(CYCLES),
        "only the crashing tasks failed: {courier:?}"
    );
    // 1 initial probe + 2 per cycle + every tick
    let expected_completed = 1 + 2 * u64::from(CYCLES) + sent;
    assert_eq!(courier.completed, expected_completed, "{courier:?}");
    assert_eq!(
        starts[13].load(Ordering::SeqCst),
        1 + u64::from(CYCLES),
        "on_start ran once per incarnation"
    );
    assert_eq!(
        starts[12].load(Ordering::SeqCst),
        1,
        "the neighbour never restarted"
    );

    let report = within(10, "shutdown", h.shutdown(Duration::from_secs(5))).await;
    assert!(
        report.drained && report.counters.is_balanced(),
        "{report:?}"
    );

    // after the hierarchy is gone the handle refuses politely instead of hanging
    match original.send(Msg::Tick) {
        Err(SendError::ShuttingDown { .. }) => {}
        other => panic!("expected ShuttingDown after shutdown, got {other:?}"),
    }
}

/// `Hierarchy::agent` documents "a full path (`ward/decision/0/diagnostic/3`, with or
/// without the hierarchy name)". Both spellings must name the same agent, before and
/// after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_path_without_the_hierarchy_name_names_the_same_agent() {
    let (h, _) = spawn().await;
    let with_name = h.agent(TARGET).expect("full path with the hierarchy name");
    let without = h
        .agent("hub/1/courier/13")
        .expect("full path without the hierarchy name (documented on Hierarchy::agent)");
    assert_eq!(with_name.path(), without.path());

    let crash = within(5, "crash", without.call(Msg::Crash(1)))
        .await
        .expect("accepted");
    assert!(crash.is_failed(), "{crash:?}");
    let (path, _, _, incarnation) = probe(&without).await;
    assert_eq!((path.as_str(), incarnation), (TARGET, 1));

    let report = within(10, "shutdown", h.shutdown(Duration::from_secs(5))).await;
    assert!(
        report.drained && report.counters.is_balanced(),
        "{report:?}"
    );
}
