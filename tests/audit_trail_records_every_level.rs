//! The audit trail: every node an escalation passes records who it is (path, level,
//! role), what it decided and when. An escalation that leaves the top carries the whole
//! trail, in order, both to the caller (`Outcome::Escalated`) and to the sink
//! (`EscalationReport`, with the origin and the last payload). Failures carry the trail
//! up to the failure; crashes on the way are recorded too.

mod support;

use std::time::Duration;

use echelon::prelude::*;
use echelon::{AuditEntry, Decision, Hierarchy as H, Role};
use support::within;

/// What the mid-tier lead does with an escalation from a leaf.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mid {
    /// Escalate it on with severity 0.7.
    Relay,
    /// Handle it and reply.
    Reply,
    /// Reject it: the task fails at the mid lead.
    Reject,
    /// Panic on the first attempt, relay on the second.
    CrashOnce,
}

/// What one agent saw when it handled the note: its path and, if it was handling an
/// escalation, the escalation's origin, sender, severity and reason.
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    by: String,
    origin: Option<String>,
    from: Option<String>,
    severity: Option<f64>,
    reason: Option<String>,
}

/// The payload: travels up, each agent appends what it saw.
#[derive(Clone, Debug, PartialEq)]
struct Note {
    mid: Mid,
    /// Virtual work each agent does before answering (paused-clock test only).
    think: Duration,
    seen: Vec<Seen>,
}

fn note(mid: Mid) -> Note {
    Note {
        mid,
        think: Duration::ZERO,
        seen: Vec::new(),
    }
}

/// leaf: escalates 0.4 "leaf saw it"; mid lead: per `Note::mid`; top lead: escalates
/// 0.95 "top pages".
struct Node;

impl Agent for Node {
    type Msg = Note;

    async fn handle(
        &mut self,
        ctx: &mut Ctx<Note>,
        mut msg: Note,
    ) -> Result<Verdict<Note>, AgentError> {
        if !msg.think.is_zero() {
            // simulated work on the (paused) runtime clock
            tokio::time::sleep(msg.think).await;
        }
        let esc = ctx.escalation();
        msg.seen.push(Seen {
            by: ctx.path().to_string(),
            origin: esc.map(|e| e.origin.to_string()),
            from: esc.map(|e| e.from.to_string()),
            severity: esc.map(|e| e.severity),
            reason: esc.map(|e| e.reason.clone()),
        });
        match ctx.tier() {
            "leaf" => Ok(Verdict::escalate(0.4, "leaf saw it", msg)),
            "mid" => match msg.mid {
                Mid::Relay => Ok(Verdict::escalate(0.7, "mid confirms", msg)),
                Mid::Reply => Ok(Verdict::Reply(msg)),
                Mid::Reject => Err(AgentError::reject("mid cannot judge this")),
                Mid::CrashOnce if ctx.attempt() == 1 => panic!("mid choked on the note"),
                Mid::CrashOnce => Ok(Verdict::escalate(0.7, "mid confirms", msg)),
            },
            _ => Ok(Verdict::escalate(0.95, "top pages", msg)),
        }
    }
}

/// top (1) → mid (2) → leaf (4); thresholds leaf 0.3, mid 0.6, top 0.9.
async fn hierarchy() -> H<Note> {
    within(
        5,
        "spawn",
        Hierarchy::builder("h")
            .tier_with(Tier::new("top", 1, |_| Node).escalate_at(Threshold::severity(0.9)))
            .tier_with(Tier::new("mid", 2, |_| Node).escalate_at(Threshold::severity(0.6)))
            .tier_with(Tier::new("leaf", 4, |_| Node).escalate_at(Threshold::severity(0.3)))
            .spawn(),
    )
    .await
    .expect("spawn")
}

type Step = (String, u32, Role, Decision);

fn steps(trail: &[AuditEntry]) -> Vec<Step> {
    trail
        .iter()
        .map(|e| (e.path.to_string(), e.level, e.role, e.decision.clone()))
        .collect()
}

fn step(path: &str, level: u32, role: Role, decision: Decision) -> Step {
    (path.to_string(), level, role, decision)
}

fn escalated(severity: f64, reason: &str) -> Decision {
    Decision::Escalated {
        severity,
        reason: reason.to_string(),
    }
}

fn accepted(threshold: f64) -> Decision {
    Decision::Accepted { threshold }
}

/// The trail of a note escalated by leaf/3 (team mid/1) and relayed by every lead.
fn full_trail() -> Vec<Step> {
    vec![
        step(
            "h/top/0/mid/1/leaf/3",
            3,
            Role::Agent,
            escalated(0.4, "leaf saw it"),
        ),
        step("h/top/0/mid/1", 2, Role::Supervisor, accepted(0.3)),
        step(
            "h/top/0/mid/1",
            2,
            Role::Agent,
            escalated(0.7, "mid confirms"),
        ),
        step("h/top/0", 1, Role::Supervisor, accepted(0.6)),
        step("h/top/0", 1, Role::Agent, escalated(0.95, "top pages")),
        step("h", 0, Role::Root, accepted(0.9)),
        step("h", 0, Role::Root, Decision::Delivered),
    ]
}

#[track_caller]
fn assert_times_non_decreasing(trail: &[AuditEntry]) {
    for w in trail.windows(2) {
        assert!(
            w[0].at <= w[1].at,
            "audit times go backwards: {:?} at {:?}, then {:?} at {:?}",
            w[0].path,
            w[0].at,
            w[1].path,
            w[1].at
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_escalation_out_of_the_top_lists_every_node_in_order() {
    let h = hierarchy().await;
    let mut sink = h.escalations();

    let o = within(5, "call", h.call("leaf/3", note(Mid::Relay)))
        .await
        .expect("call");
    let Outcome::Escalated {
        severity,
        reason,
        origin,
        trail,
        ..
    } = o
    else {
        panic!("expected the note to leave the top, got {o:?}");
    };
    assert_eq!((severity, reason.as_str()), (0.95, "top pages"));
    assert_eq!(
        origin.as_str(),
        "h/top/0/mid/1/leaf/3",
        "the caller learns the origin too"
    );
    assert_eq!(steps(&trail), full_trail());
    assert_times_non_decreasing(&trail);

    // the sink gets the same escalation: same trail, the origin, the last payload
    let r = within(5, "the sink's report", sink.recv())
        .await
        .expect("a report in the sink");
    assert_eq!(r.trail, trail, "the caller and the sink see one trail");
    assert_eq!((r.severity, r.reason.as_str()), (0.95, "top pages"));
    assert_eq!(r.origin.as_str(), "h/top/0/mid/1/leaf/3");
    let seen = |by: &str, from: Option<&str>, sev: Option<f64>, why: Option<&str>| Seen {
        by: by.into(),
        origin: from.map(|_| "h/top/0/mid/1/leaf/3".into()),
        from: from.map(Into::into),
        severity: sev,
        reason: why.map(Into::into),
    };
    assert_eq!(
        r.payload.seen,
        [
            seen("h/top/0/mid/1/leaf/3", None, None, None),
            seen(
                "h/top/0/mid/1",
                Some("h/top/0/mid/1/leaf/3"),
                Some(0.4),
                Some("leaf saw it")
            ),
            seen(
                "h/top/0",
                Some("h/top/0/mid/1"),
                Some(0.7),
                Some("mid confirms")
            ),
        ],
        "the payload is the last escalating agent's, and each lead saw the origin and sender"
    );

    // a task sent without a caller: its report names the task
    let id = h.send("leaf/3", note(Mid::Relay)).expect("send");
    let r = within(5, "the sink's report", sink.recv())
        .await
        .expect("a report in the sink");
    assert_eq!(r.task, id);
    assert_eq!(steps(&r.trail), full_trail());

    let c = h.shutdown(Duration::from_secs(2)).await.counters;
    assert_eq!(
        (c.submitted, c.escalated, c.completed, c.failed),
        (2, 2, 0, 0),
        "{c:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_escalations_keep_their_own_trails() {
    let h = hierarchy().await;
    let mut sink = h.escalations();
    let mut ids = Vec::new();
    for round in 0..5 {
        for leaf in 0..4 {
            let id = h
                .send(&format!("leaf/{leaf}"), note(Mid::Relay))
                .expect("send");
            ids.push((id, leaf, round));
        }
    }
    let mut reports = Vec::new();
    for _ in 0..ids.len() {
        reports.push(
            within(5, "a report", sink.recv())
                .await
                .expect("a report in the sink"),
        );
    }
    for (id, leaf, _) in &ids {
        let r = reports
            .iter()
            .find(|r| r.task == *id)
            .unwrap_or_else(|| panic!("no report for {id:?}"));
        let team = if *leaf < 2 {
            "h/top/0/mid/0"
        } else {
            "h/top/0/mid/1"
        };
        let origin = format!("{team}/leaf/{leaf}");
        assert_eq!(r.origin.as_str(), origin);
        let paths: Vec<&str> = r.trail.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [origin.as_str(), team, team, "h/top/0", "h/top/0", "h", "h"],
            "{id:?}"
        );
        assert_times_non_decreasing(&r.trail);
        assert_eq!(r.payload.seen.len(), 3, "{id:?}: {:?}", r.payload.seen);
        assert_eq!(r.payload.seen[0].by, origin);
    }
    assert!(sink.try_recv().is_none(), "one report per escalation");
    let c = h.shutdown(Duration::from_secs(2)).await.counters;
    assert_eq!((c.escalated, c.failed), (20, 0), "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absorbed_escalation_is_completed_by_the_supervisor_that_kept_it() {
    // the leaf tier's threshold (0.5) is above the leaf's 0.4: the mid team keeps it
    let h = within(
        5,
        "spawn",
        Hierarchy::builder("h")
            .escalation(Threshold::severity(0.5))
            .tier("top", 1, |_| Node)
            .tier("mid", 2, |_| Node)
            .tier("leaf", 4, |_| Node)
            .spawn(),
    )
    .await
    .expect("spawn");
    let mut sink = h.escalations();
    let mid = h.agent("mid/1").expect("mid/1");

    let o = within(5, "call", h.call("leaf/3", note(Mid::Relay)))
        .await
        .expect("call");
    match &o {
        Outcome::Completed {
            reply: None,
            by,
            trail,
        } => {
            assert_eq!(by.as_str(), "h/top/0/mid/1");
            let last = trail.last().expect("an absorbed escalation has a trail");
            assert_eq!(
                last.role,
                Role::Supervisor,
                "absorbed by the team's supervisor"
            );
            assert!(
                matches!(last.decision, Decision::Absorbed { .. }),
                "trail ends in Absorbed: {trail:?}"
            );
        }
        other => panic!("expected the team of mid/1 to absorb it, got {other:?}"),
    }
    let c = mid.counters();
    assert_eq!(
        (c.completed, c.escalated_up),
        (0, 0),
        "the lead never saw it: {c:?}"
    );
    assert!(
        sink.try_recv().is_none(),
        "an absorbed escalation is not delivered"
    );
    let c = h.shutdown(Duration::from_secs(2)).await.counters;
    assert_eq!((c.absorbed, c.completed, c.escalated), (1, 1, 0), "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lead_that_handles_an_escalation_replies_with_what_it_saw() {
    let h = hierarchy().await;
    let o = within(5, "call", h.call("leaf/0", note(Mid::Reply)))
        .await
        .expect("call");
    let Outcome::Completed {
        reply: Some(reply),
        by,
        trail,
    } = o
    else {
        panic!("expected the mid lead to complete it with a reply, got {o:?}");
    };
    assert_eq!(by.as_str(), "h/top/0/mid/0");
    let handled = trail.last().expect("a handled escalation has a trail");
    assert_eq!(
        (handled.path.as_str(), handled.role, &handled.decision),
        ("h/top/0/mid/0", Role::Agent, &Decision::Handled),
        "the trail ends with the lead handling it: {trail:?}"
    );
    let last = reply.seen.last().expect("the lead's line");
    assert_eq!(last.by, "h/top/0/mid/0");
    assert_eq!(last.origin.as_deref(), Some("h/top/0/mid/0/leaf/0"));
    assert_eq!(last.severity, Some(0.4));
    let mid = h.agent("mid/0").expect("mid/0").counters();
    assert_eq!((mid.completed, mid.escalated_up), (1, 0), "{mid:?}");
    let c = h.shutdown(Duration::from_secs(2)).await.counters;
    assert_eq!((c.completed, c.escalated, c.absorbed), (1, 0, 0), "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lead_that_rejects_an_escalation_fails_it_with_the_trail_so_far() {
    let h = hierarchy().await;
    let o = within(5, "call", h.call("leaf/3", note(Mid::Reject)))
        .await
        .expect("call");
    let Outcome::Failed(f) = o else {
        panic!("expected the rejection to fail the task, got {o:?}");
    };
    assert_eq!(f.at.as_str(), "h/top/0/mid/1");
    assert_eq!(f.attempts, 1);
    assert!(f.reason.contains("mid cannot judge this"), "{}", f.reason);
    let expected = vec![
        step(
            "h/top/0/mid/1/leaf/3",
            3,
            Role::Agent,
            escalated(0.4, "leaf saw it"),
        ),
        step("h/top/0/mid/1", 2, Role::Supervisor, accepted(0.3)),
        step(
            "h/top/0/mid/1",
            2,
            Role::Agent,
            Decision::Failed {
                reason: f.reason.clone(),
            },
        ),
    ];
    assert_eq!(steps(&f.trail), expected);
    assert_times_non_decreasing(&f.trail);
    let c = h.shutdown(Duration::from_secs(2)).await.counters;
    assert_eq!((c.failed, c.escalated, c.completed), (1, 0, 0), "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_on_the_way_up_is_recorded_before_the_retry() {
    let h = hierarchy().await;
    let o = within(5, "call", h.call("leaf/3", note(Mid::CrashOnce)))
        .await
        .expect("call");
    let Outcome::Escalated { trail, .. } = o else {
        panic!("expected the retried escalation to leave the top, got {o:?}");
    };
    let mut expected = full_trail();
    let crash = match &trail.get(2).map(|e| &e.decision) {
        Some(Decision::Crashed { attempt, reason }) => {
            assert_eq!(*attempt, 1);
            assert!(reason.contains("mid choked on the note"), "{reason}");
            reason.clone()
        }
        other => panic!("expected the mid lead's crash third, got {other:?}: {trail:#?}"),
    };
    expected.insert(
        2,
        step(
            "h/top/0/mid/1",
            2,
            Role::Agent,
            Decision::Crashed {
                attempt: 1,
                reason: crash,
            },
        ),
    );
    assert_eq!(steps(&trail), expected);
    assert_times_non_decreasing(&trail);
    let c = h.shutdown(Duration::from_secs(2)).await.counters;
    assert_eq!((c.escalated, c.restarts, c.redelivered), (1, 1, 1), "{c:?}");
}

#[tokio::test(start_paused = true)]
async fn audit_times_are_on_the_runtime_clock() {
    let h = hierarchy().await;
    let think = Duration::from_millis(250);
    let o = within(
        5,
        "call",
        h.call(
            "leaf/3",
            Note {
                think,
                ..note(Mid::Relay)
            },
        ),
    )
    .await
    .expect("call");
    let Outcome::Escalated { trail, .. } = o else {
        panic!("expected the note to leave the top, got {o:?}");
    };
    assert_eq!(steps(&trail), full_trail());
    // each agent thinks 250 ms (virtual) before deciding; supervisors decide at once
    let t0 = trail[0].at;
    assert!(t0 >= think, "the leaf decided after thinking: {t0:?}");
    let offsets: Vec<Duration> = trail.iter().map(|e| e.at - t0).collect();
    let ms = Duration::from_millis;
    assert_eq!(
        offsets,
        [ms(0), ms(0), ms(250), ms(250), ms(500), ms(500), ms(500)],
        "{trail:#?}"
    );
    drop(within(5, "shutdown", h.shutdown(Duration::from_secs(2))).await);
}
