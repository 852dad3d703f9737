//! A router as the last tier of a hierarchy, and the no-loss invariant for routers.
//!
//! The hierarchy is `desk` (one lead agent) above `triage` (a router with three
//! workers). Tasks sent to `triage/0` are routed to the workers; a worker's escalation
//! on a single-worker route travels up through the router and the desk to the top, and
//! its audit trail names every level. A router can only be the last tier. Under
//! concurrent load, every request gets exactly one outcome and, once idle, the counters
//! balance with one task per request plus one per branch.

mod support;

use std::sync::Arc;
use std::time::Duration;

use echelon::prelude::*;
use echelon::{BuildError, Decision, Gathered, Role};
use support::{idle, within};
use tokio::task::JoinSet;

#[derive(Clone, Debug, PartialEq)]
enum Msg {
    /// Answer with the handling worker's path.
    Ask(u32),
    /// Escalate (a worker), or relay an escalation up (the desk).
    Alarm(u32),
    /// A mixed-load request: what each of the three workers does is derived from `n`.
    Load(u32),
    By(String),
    Count(usize),
}

struct Desk;

impl Agent for Desk {
    type Msg = Msg;
    async fn handle(&mut self, ctx: &mut Ctx<Msg>, msg: Msg) -> Result<Verdict<Msg>, AgentError> {
        if ctx.escalation().is_some() {
            return Ok(Verdict::escalate(1.0, "the desk cannot decide this", msg));
        }
        Ok(Verdict::Reply(Msg::By(ctx.path().to_string())))
    }
}

struct Worker;

impl Agent for Worker {
    type Msg = Msg;
    async fn handle(&mut self, ctx: &mut Ctx<Msg>, msg: Msg) -> Result<Verdict<Msg>, AgentError> {
        let i = ctx.index() as u32;
        match msg {
            Msg::Ask(_) => Ok(Verdict::Reply(Msg::By(ctx.path().to_string()))),
            Msg::Alarm(_) => Ok(Verdict::escalate(0.9, "patient deteriorating", msg)),
            Msg::Load(n) => {
                if n % 30 == i && ctx.attempt() == 1 {
                    panic!("worker {i} crashed on request {n}");
                }
                if n % 7 == 3 && i == 2 {
                    return Err(AgentError::reject("worker 2 refuses this one"));
                }
                if n % 11 == 5 && i == 1 {
                    return Ok(Verdict::escalate(0.5, "worker 1 is unsure", msg));
                }
                if n % 4 == 0 {
                    tokio::task::yield_now().await;
                }
                Ok(Verdict::Reply(Msg::Count(1)))
            }
            other => Err(AgentError::reject(format!("not a request: {other:?}"))),
        }
    }
}

fn triage() -> echelon::RouterBuilder<Msg> {
    Router::builder("triage").workers("w", 3, |_| Worker)
}

async fn desk_over(router: echelon::RouterBuilder<Msg>) -> Hierarchy<Msg> {
    within(
        5,
        "spawn the hierarchy",
        Hierarchy::builder("h")
            .tier("desk", 1, |_| Desk)
            .tier_with(router.into_tier(1))
            .spawn(),
    )
    .await
    .expect("spawn the hierarchy")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_sent_to_the_router_tier_are_routed_to_its_workers() {
    let h = desk_over(triage().route(Route::RoundRobin)).await;
    let router = h.agent("triage/0").expect("the router is addressable");
    assert_eq!(router.path().as_str(), "h/desk/0/triage/0");
    let mut tree_roles = Vec::new();
    h.tree().walk(&mut |n, _| {
        if n.path.as_str() == "h/desk/0/triage/0" {
            tree_roles.push(n.role);
        }
    });
    assert!(tree_roles.contains(&Role::Router), "{tree_roles:?}");

    let mut by = Vec::new();
    for n in 0..4 {
        match within(5, "a routed task", h.call("triage/0", Msg::Ask(n)))
            .await
            .expect("the router takes the task")
        {
            Outcome::Completed {
                reply: Some(Msg::By(path)),
                by: at,
                ..
            } => {
                assert_eq!(
                    at.as_str(),
                    "h/desk/0/triage/0",
                    "the request completes at the router"
                );
                by.push(path);
            }
            other => panic!("expected a worker's answer, got {other:?}"),
        }
    }
    assert_eq!(
        by,
        vec![
            "h/desk/0/triage/0/w/0",
            "h/desk/0/triage/0/w/1",
            "h/desk/0/triage/0/w/2",
            "h/desk/0/triage/0/w/0",
        ]
    );
    // the workers are agents of the hierarchy too
    let w1 = h.agent("h/desk/0/triage/0/w/1").expect("worker 1");
    assert_eq!(w1.counters().completed, 1);
    // the desk above still takes its own tasks
    let out = within(5, "the desk", h.call("desk/0", Msg::Ask(9)))
        .await
        .expect("the desk takes the task");
    assert!(out.is_completed(), "{out:?}");

    let c = idle(&h, 5).await;
    assert_eq!((c.submitted, c.completed, c.failed), (9, 9, 0), "{c:?}");
    let report = within(5, "shutdown", h.shutdown(Duration::from_secs(2))).await;
    assert!(
        report.drained && report.counters.is_balanced(),
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workers_escalation_travels_up_through_the_router_to_the_top() {
    let h = desk_over(triage().route(Route::classify(|_| 2))).await;
    let mut sink = h.escalations();
    let out = within(5, "the escalated task", h.call("triage/0", Msg::Alarm(7)))
        .await
        .expect("the router takes the task");
    let worker = "h/desk/0/triage/0/w/2";
    let router = "h/desk/0/triage/0";
    let Outcome::Escalated {
        origin,
        trail,
        payload,
        ..
    } = out
    else {
        panic!("the alarm should leave the top, got {out:?}");
    };
    assert_eq!(origin.as_str(), worker, "the worker that first escalated");
    assert_eq!(payload, Msg::Alarm(7));

    let at = |path: &str, role: Role| {
        trail
            .iter()
            .position(|e| e.path.as_str() == path && e.role == role)
            .unwrap_or_else(|| panic!("no {role:?} entry for {path} in {trail:#?}"))
    };
    let w = at(worker, Role::Agent);
    let r = at(router, Role::Router);
    let d = at("h/desk/0", Role::Agent);
    let root = at("h", Role::Root);
    assert!(w < r && r < d && d < root, "bottom to top: {trail:#?}");
    assert!(matches!(
        &trail[w].decision,
        Decision::Escalated { reason, .. } if reason == "patient deteriorating"
    ));
    assert!(
        matches!(&trail[r].decision, Decision::Escalated { .. }),
        "{:?}",
        trail[r]
    );
    assert_eq!(
        trail.last().map(|e| &e.decision),
        Some(&Decision::Delivered)
    );
    // levels grow downward: the worker is deepest, the root is 0
    assert!(trail[w].level > trail[r].level && trail[root].level == 0);

    let report = within(5, "the sink", sink.recv()).await.expect("a report");
    assert_eq!(report.origin.as_str(), worker);
    assert_eq!(report.payload, Msg::Alarm(7));

    let c = idle(&h, 5).await;
    // the request left the top; its branch ended at the router (as an escalation
    // handed back to it)
    assert_eq!(
        (c.submitted, c.escalated, c.completed, c.failed),
        (2, 1, 1, 0),
        "{c:?}"
    );
    drop(within(5, "shutdown", h.shutdown(Duration::from_secs(2))).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_tier_must_be_the_last_tier() {
    let err = Hierarchy::builder("h")
        .tier_with(triage().into_tier(1))
        .tier("after", 2, |_| Desk)
        .spawn()
        .await
        .expect_err("a router with a tier below it");
    match &err {
        BuildError::RouterNotLast { tier } => assert_eq!(tier, "triage"),
        other => panic!("expected RouterNotLast, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("triage") && msg.contains("last tier"), "{msg}");

    // the same router as the last tier is fine
    let h = desk_over(triage()).await;
    drop(within(5, "shutdown", h.shutdown(Duration::from_secs(2))).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_answered_exactly_once_and_the_counters_balance() {
    const N: u32 = 60;
    let router = within(
        5,
        "spawn the router",
        triage()
            .route(Route::Broadcast)
            .gather(Gather::all(|answers| Msg::Count(answers.len())))
            .spawn(),
    )
    .await
    .expect("spawn the router");
    let router = Arc::new(router);
    let mut calls = JoinSet::new();
    for n in 0..N {
        let r = router.clone();
        calls.spawn(async move { (n, r.call(Msg::Load(n)).await) });
    }
    let mut answered = vec![0u32; N as usize];
    within(5, "every call", async {
        while let Some(joined) = calls.join_next().await {
            let (n, g) = joined.expect("join");
            let g: Gathered<Msg> = g.expect("the router takes the request");
            answered[n as usize] += 1;
            assert_eq!(g.branches.len(), 3, "request {n}: {g:?}");
            assert_eq!(
                g.answered() + g.failed() + g.escalated(),
                3,
                "request {n}: every branch ended: {g:?}"
            );
            assert_eq!(g.result, Ok(Some(Msg::Count(g.answered()))), "request {n}");
        }
    })
    .await;
    assert!(answered.iter().all(|&k| k == 1), "{answered:?}");

    let c = idle(router.hierarchy(), 5).await;
    assert!(c.is_balanced(), "{c:?}");
    assert_eq!(c.submitted, u64::from(N) + 3 * u64::from(N), "{c:?}");
    assert_eq!(
        c.escalated, 0,
        "broadcast escalations stay inside the router: {c:?}"
    );
    assert!(
        c.restarts > 0 && c.failed > 0,
        "the load exercised crashes and failures: {c:?}"
    );

    // the same load through a hierarchy, on a single-worker route
    let h = desk_over(triage().route(Route::RoundRobin)).await;
    let entry = h.agent("triage/0").expect("the router");
    let mut calls = JoinSet::new();
    for n in 0..N {
        let e = entry.clone();
        calls.spawn(async move { e.call(Msg::Load(n)).await });
    }
    let mut outcomes = 0;
    within(5, "every call", async {
        while let Some(joined) = calls.join_next().await {
            joined.expect("join").expect("the router takes the request");
            outcomes += 1;
        }
    })
    .await;
    assert_eq!(outcomes, N);
    let c = idle(&h, 5).await;
    assert!(c.is_balanced(), "{c:?}");
    assert_eq!(c.submitted, 2 * u64::from(N), "{c:?}");
    let report = within(5, "shutdown", h.shutdown(Duration::from_secs(2))).await;
    assert!(report.counters.is_balanced(), "{report:?}");
    let router = Arc::try_unwrap(router).expect("no call holds the router");
    drop(within(5, "shutdown", router.shutdown(Duration::from_secs(2))).await);
}
