//! Escalation thresholds: each supervisor compares a report's severity with the
//! threshold of the reports' tier. Below it, the escalation is absorbed (the task is
//! completed by that supervisor); at or above it, it is accepted and goes on to the
//! team's lead, or from the root out of the top. Checked at each level of a three-tier
//! hierarchy, with per-tier thresholds overriding the default, and NaN severities.

mod support;

use std::time::Duration;

use echelon::prelude::*;
use echelon::{Counters, Decision, Hierarchy as H};
use support::within;

/// Escalate with this severity (through `Verdict::escalate`).
#[derive(Clone, Debug)]
struct Raise(f64);

/// An agent that escalates every task it is given with the task's severity, and relays
/// every escalation it receives (as a team lead) with full severity, so that only the
/// supervisor under test can stop it.
struct Relay;

impl Agent for Relay {
    type Msg = Raise;

    async fn handle(
        &mut self,
        ctx: &mut Ctx<Raise>,
        msg: Raise,
    ) -> Result<Verdict<Raise>, AgentError> {
        if ctx.escalation().is_some() {
            return Ok(Verdict::escalate(
                1.0,
                format!("relayed by {}", ctx.path()),
                msg,
            ));
        }
        Ok(Verdict::escalate(msg.0, "raised", msg))
    }
}

/// top (1) → mid (2) → leaf (4), with per-tier thresholds.
async fn three_tiers(
    default: Threshold,
    top: Option<f64>,
    mid: Option<f64>,
    leaf: Option<f64>,
) -> H<Raise> {
    let tier = |name: &str, n: usize, t: Option<f64>| {
        let tier = Tier::new(name, n, |_| Relay);
        match t {
            Some(t) => tier.escalate_at(Threshold::severity(t)),
            None => tier,
        }
    };
    within(
        5,
        "spawn",
        Hierarchy::builder("h")
            .escalation(default)
            .tier_with(tier("top", 1, top))
            .tier_with(tier("mid", 2, mid))
            .tier_with(tier("leaf", 4, leaf))
            .spawn(),
    )
    .await
    .expect("spawn")
}

async fn raise(h: &H<Raise>, addr: &str, severity: f64) -> Outcome<Raise> {
    within(5, "the outcome of a call", h.call(addr, Raise(severity)))
        .await
        .expect("the hierarchy takes the task")
}

/// The counters that change with where an escalation ends.
fn delta(before: Counters, after: Counters) -> (u64, u64, u64, u64) {
    (
        after.completed - before.completed,
        after.absorbed - before.absorbed,
        after.escalated - before.escalated,
        after.suppressed - before.suppressed,
    )
}

#[track_caller]
fn assert_absorbed_by(o: &Outcome<Raise>, supervisor: &str, what: &str) {
    match o {
        Outcome::Completed {
            reply: None, by, ..
        } => {
            assert_eq!(
                by.as_str(),
                supervisor,
                "{what}: absorbed by the wrong node"
            )
        }
        other => panic!("{what}: expected to be absorbed by {supervisor}, got {other:?}"),
    }
}

#[track_caller]
fn assert_left_the_top(o: &Outcome<Raise>, first_severity: f64, what: &str) {
    match o {
        Outcome::Escalated { trail, .. } => {
            let first = trail.first().expect("a trail");
            assert!(
                matches!(&first.decision, Decision::Escalated { severity, .. } if *severity == first_severity),
                "{what}: first step {first:?}"
            );
            assert_eq!(trail.last().expect("a trail").decision, Decision::Delivered);
        }
        other => panic!("{what}: expected to leave the top, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_level_absorbs_below_and_passes_at_and_above_its_tiers_threshold() {
    // the default would let everything through: every tier overrides it
    let h = three_tiers(Threshold::pass_all(), Some(0.9), Some(0.6), Some(0.3)).await;
    // (who escalates, the supervisor that judges it, the threshold it applies)
    let levels = [
        ("top/0", "h", 0.9),
        ("mid/1", "h/top/0", 0.6),
        ("leaf/3", "h/top/0/mid/1", 0.3),
    ];
    for (from, judge, t) in levels {
        // the judge's own lead agent (none at the root) must not see what it absorbs
        let lead = (judge != "h").then(|| h.agent(judge).expect("the judge's lead agent"));
        let lead_seen = || lead.as_ref().map(|l| l.counters().escalated_up);
        let seen0 = lead_seen();

        let c0 = h.counters();
        let below = raise(&h, from, t - 0.05).await;
        let what = format!("{from} at {} under threshold {t}", t - 0.05);
        assert_absorbed_by(&below, judge, &what);
        assert_eq!(delta(c0, h.counters()), (1, 1, 0, 0), "{what}: counters");
        assert_eq!(
            lead_seen(),
            seen0,
            "{what}: the lead saw an absorbed escalation"
        );

        let c1 = h.counters();
        let at = raise(&h, from, t).await;
        let what = format!("{from} exactly at threshold {t}");
        assert_left_the_top(&at, t, &what);
        assert_eq!(delta(c1, h.counters()), (0, 0, 1, 0), "{what}: counters");

        let c2 = h.counters();
        let above = raise(&h, from, t + 0.05).await;
        let what = format!("{from} at {} over threshold {t}", t + 0.05);
        assert_left_the_top(&above, t + 0.05, &what);
        assert_eq!(delta(c2, h.counters()), (0, 0, 1, 0), "{what}: counters");

        if let (Some(before), Some(after)) = (seen0, lead_seen()) {
            assert_eq!(after - before, 2, "{from}: the lead relays what it accepts");
        }
    }
    let report = h.shutdown(Duration::from_secs(2)).await;
    assert!(report.drained, "{report:?}");
    let c = report.counters;
    assert_eq!(
        (c.submitted, c.completed, c.absorbed, c.escalated, c.failed),
        (9, 3, 3, 6, 0),
        "{c:?}"
    );
    assert!(c.is_balanced());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_supervisor_records_the_threshold_it_compared_against() {
    let h = three_tiers(Threshold::pass_all(), Some(0.9), Some(0.6), Some(0.3)).await;
    let o = raise(&h, "leaf/0", 0.3).await;
    let Outcome::Escalated { trail, .. } = o else {
        panic!("expected the escalation to leave the top, got {o:?}");
    };
    let accepted: Vec<(&str, f64)> = trail
        .iter()
        .filter_map(|e| match e.decision {
            Decision::Accepted { threshold } => Some((e.path.as_str(), threshold)),
            _ => None,
        })
        .collect();
    assert_eq!(
        accepted,
        [("h/top/0/mid/0", 0.3), ("h/top/0", 0.6), ("h", 0.9)],
        "each supervisor applies its reports' tier threshold"
    );
    drop(h.shutdown(Duration::from_secs(2)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tier_threshold_overrides_the_hierarchy_default() {
    // default 0.5; the leaf tier asks for 0.8; the mid tier keeps the default; the top
    // tier lets everything out
    let h = three_tiers(Threshold::severity(0.5), Some(0.0), None, Some(0.8)).await;

    // leaf escalations are judged by 0.8 (the default 0.5 would have passed 0.6)
    let c = h.counters();
    assert_absorbed_by(&raise(&h, "leaf/2", 0.6).await, "h/top/0/mid/1", "leaf 0.6");
    assert_eq!(delta(c, h.counters()), (1, 1, 0, 0));
    assert_left_the_top(&raise(&h, "leaf/2", 0.8).await, 0.8, "leaf 0.8");

    // mid escalations are judged by the default 0.5, not the leaf tier's 0.8
    let c = h.counters();
    assert_left_the_top(&raise(&h, "mid/0", 0.6).await, 0.6, "mid 0.6");
    assert_eq!(delta(c, h.counters()), (0, 0, 1, 0));
    assert_absorbed_by(&raise(&h, "mid/0", 0.4).await, "h/top/0", "mid 0.4");

    // the top tier's 0.0 lets even severity 0 out of the root
    assert_left_the_top(&raise(&h, "top/0", 0.0).await, 0.0, "top 0.0");

    let report = h.shutdown(Duration::from_secs(2)).await;
    let c = report.counters;
    assert_eq!((c.absorbed, c.escalated, c.completed), (2, 3, 2), "{c:?}");
    assert!(c.is_balanced());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_any_threshold_everything_goes_up() {
    let h = within(
        5,
        "spawn",
        Hierarchy::builder("h")
            .tier("top", 1, |_| Relay)
            .tier("leaf", 2, |_| Relay)
            .spawn(),
    )
    .await
    .expect("spawn");
    assert_eq!(Threshold::default().level(), 0.0);
    assert_left_the_top(&raise(&h, "leaf/1", 0.0).await, 0.0, "leaf 0.0");
    assert_left_the_top(&raise(&h, "top/0", 0.0).await, 0.0, "top 0.0");
    let c = h.shutdown(Duration::from_secs(2)).await.counters;
    assert_eq!((c.absorbed, c.escalated), (0, 2), "{c:?}");
}

/// Escalate with a severity set directly in the struct, bypassing `Escalation::new`.
#[derive(Clone, Debug)]
struct RaiseRaw(f64);

struct RawRelay;

impl Agent for RawRelay {
    type Msg = RaiseRaw;

    async fn handle(
        &mut self,
        _ctx: &mut Ctx<RaiseRaw>,
        msg: RaiseRaw,
    ) -> Result<Verdict<RaiseRaw>, AgentError> {
        Ok(Verdict::Escalate(Box::new(Escalation {
            severity: msg.0,
            reason: "raw".into(),
            payload: msg,
            key: None,
        })))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nan_severity_is_never_absorbed() {
    // the highest threshold there is, at every level
    let h = three_tiers(Threshold::severity(1.0), None, None, None).await;

    // just under 1.0 is absorbed at the first supervisor
    assert_absorbed_by(
        &raise(&h, "leaf/0", 0.99).await,
        "h/top/0/mid/0",
        "leaf 0.99",
    );
    assert_absorbed_by(&raise(&h, "top/0", 0.99).await, "h", "top 0.99");

    // NaN counts as 1.0: it passes a threshold of 1.0 at every level and leaves the top
    for from in ["leaf/0", "mid/1", "top/0"] {
        let o = raise(&h, from, f64::NAN).await;
        assert_left_the_top(&o, 1.0, &format!("NaN from {from}"));
        if let Outcome::Escalated { severity, .. } = &o {
            assert_eq!(*severity, 1.0, "NaN from {from}: reported severity");
        }
    }
    // out-of-range severities are clamped
    let o = raise(&h, "top/0", 7.0).await;
    assert_left_the_top(&o, 1.0, "7.0 from top/0");
    assert_absorbed_by(&raise(&h, "top/0", -3.0).await, "h", "-3.0 from top/0");
    let c = h.shutdown(Duration::from_secs(2)).await.counters;
    assert_eq!((c.absorbed, c.escalated, c.failed), (3, 4, 0), "{c:?}");

    // a NaN threshold counts as 0.0 (everything goes up), not as "nothing goes up"
    assert_eq!(Threshold::severity(f64::NAN).level(), 0.0);
    assert_eq!(Threshold::severity(2.0).level(), 1.0);
    let h = three_tiers(Threshold::severity(f64::NAN), None, None, None).await;
    assert_left_the_top(
        &raise(&h, "leaf/0", 0.0).await,
        0.0,
        "0.0 under a NaN threshold",
    );
    drop(h.shutdown(Duration::from_secs(2)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nan_severity_set_directly_in_the_struct_still_goes_up() {
    let h = within(
        5,
        "spawn",
        Hierarchy::builder("h")
            .escalation(Threshold::severity(1.0))
            .tier("top", 1, |_| RawRelay)
            .spawn(),
    )
    .await
    .expect("spawn");
    let o = within(5, "call", h.call("top/0", RaiseRaw(f64::NAN)))
        .await
        .expect("call");
    assert!(
        o.is_escalated(),
        "an unreadable severity is never silently absorbed: {o:?}"
    );
    let c = h.shutdown(Duration::from_secs(2)).await.counters;
    assert_eq!((c.absorbed, c.escalated), (0, 1), "{c:?}");
}
