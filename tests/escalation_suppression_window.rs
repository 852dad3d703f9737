//! Repeat suppression: an escalation with the same key as one that went up less than
//! the window ago is folded (completed by the supervisor, counted as suppressed, never
//! delivered); the first one after the window goes up again. The default key is the
//! origin agent and the reason; `Escalation::with_key` sets an explicit one.
//!
//! Time is tokio's paused clock, moved only by `tokio::time::advance`. Every step
//! awaits the outcome of a `call`, so nothing waits on a timer: the runtime never idles
//! with a timer pending, and auto-advance cannot move the clock. The windows are 60 s,
//! far longer than any `within` bound (5 s), so even a stray auto-advance would fail a
//! bound before it could carry a repeat past its window.

mod support;

use std::time::Duration;

use echelon::prelude::*;
use echelon::{Decision, Escalations, Hierarchy as H, Outcome as O};
use support::within;
use tokio::time::advance;

const WINDOW: Duration = Duration::from_secs(60);

/// An alarm: escalated by a monitor with this reason, severity and optional key. `n`
/// tells deliveries apart in the sink.
#[derive(Clone, Debug, PartialEq)]
struct Alarm {
    n: u32,
    reason: &'static str,
    severity: f64,
    key: Option<&'static str>,
}

fn alarm(n: u32, reason: &'static str) -> Alarm {
    Alarm {
        n,
        reason,
        severity: 1.0,
        key: None,
    }
}

fn keyed(n: u32, reason: &'static str, key: &'static str) -> Alarm {
    Alarm {
        key: Some(key),
        ..alarm(n, reason)
    }
}

/// Escalates every alarm; as a team lead, relays what it receives.
struct Monitor;

impl Agent for Monitor {
    type Msg = Alarm;

    async fn handle(
        &mut self,
        ctx: &mut Ctx<Alarm>,
        msg: Alarm,
    ) -> Result<Verdict<Alarm>, AgentError> {
        if ctx.escalation().is_some() {
            return Ok(Verdict::escalate(1.0, "lead relays", msg));
        }
        let mut esc = Escalation::new(msg.severity, msg.reason, msg.clone());
        if let Some(k) = msg.key {
            esc = esc.with_key(k);
        }
        Ok(esc.into())
    }
}

/// One tier of 3 monitors under the root: the root applies the monitors' threshold, so
/// what it accepts leaves the top into the sink.
async fn monitors(threshold: Threshold) -> H<Alarm> {
    within(
        5,
        "spawn",
        Hierarchy::builder("h")
            .escalation(threshold)
            .tier("mon", 3, |_| Monitor)
            .spawn(),
    )
    .await
    .expect("spawn")
}

async fn fire(h: &H<Alarm>, addr: &str, a: Alarm) -> O<Alarm> {
    within(5, "the alarm's outcome", h.call(addr, a))
        .await
        .expect("the hierarchy takes the alarm")
}

/// The alarm went up: the caller sees it leave the top and the sink's next report is
/// exactly this alarm, from `origin` (so nothing else was delivered in between).
#[track_caller]
fn assert_went_up(o: &O<Alarm>, sink: &mut Escalations<Alarm>, origin: &str, n: u32) {
    assert!(
        o.is_escalated(),
        "alarm {n} from {origin} should go up: {o:?}"
    );
    let report = sink
        .try_recv()
        .unwrap_or_else(|| panic!("alarm {n} left the top but is not in the sink"));
    assert_eq!(report.origin.as_str(), origin, "alarm {n}");
    assert_eq!(
        report.payload.n, n,
        "the sink's next report should be alarm {n}"
    );
}

/// The alarm was folded: completed by the root, never delivered.
#[track_caller]
fn assert_folded(o: &O<Alarm>, sink: &mut Escalations<Alarm>, n: u32) {
    match o {
        O::Completed {
            reply: None,
            by,
            trail,
        } => {
            assert_eq!(by.as_str(), "h", "alarm {n}");
            assert!(
                matches!(
                    trail.last().map(|e| &e.decision),
                    Some(Decision::Suppressed { .. })
                ),
                "alarm {n}: a folded escalation's trail ends in Suppressed, got {trail:?}"
            );
        }
        other => panic!("alarm {n} should be folded by the root, got {other:?}"),
    }
    if let Some(r) = sink.try_recv() {
        panic!("alarm {n} was folded, yet the sink got {:?}", r.payload);
    }
}

#[tokio::test(start_paused = true)]
async fn repeats_inside_the_window_are_folded_and_the_first_after_it_goes_through() {
    let h = monitors(Threshold::severity(0.5).suppress_repeats(WINDOW)).await;
    let mut sink = h.escalations();
    let t0 = tokio::time::Instant::now();

    assert_went_up(
        &fire(&h, "mon/0", alarm(1, "low SpO2")).await,
        &mut sink,
        "h/mon/0",
        1,
    );

    advance(Duration::from_secs(30)).await;
    assert_folded(&fire(&h, "mon/0", alarm(2, "low SpO2")).await, &mut sink, 2);
    let c = h.counters();
    assert_eq!((c.suppressed, c.completed, c.escalated), (1, 1, 1), "{c:?}");

    // 59 s after the one that went up: still inside (a folded repeat does not move the
    // window)
    advance(Duration::from_secs(29)).await;
    assert_folded(&fire(&h, "mon/0", alarm(3, "low SpO2")).await, &mut sink, 3);

    // 61 s after it: through again, and a new window starts
    advance(Duration::from_secs(2)).await;
    assert_went_up(
        &fire(&h, "mon/0", alarm(4, "low SpO2")).await,
        &mut sink,
        "h/mon/0",
        4,
    );
    advance(Duration::from_secs(30)).await;
    assert_folded(&fire(&h, "mon/0", alarm(5, "low SpO2")).await, &mut sink, 5);
    // the clock moved only by the advances above: the offsets are exact
    assert_eq!(t0.elapsed(), Duration::from_secs(91));

    let report = within(5, "shutdown", h.shutdown(Duration::from_secs(2))).await;
    let c = report.counters;
    assert_eq!(
        (
            c.submitted,
            c.escalated,
            c.suppressed,
            c.completed,
            c.absorbed,
            c.failed
        ),
        (5, 2, 3, 3, 0, 0),
        "{c:?}"
    );
    assert!(c.is_balanced());
}

#[tokio::test(start_paused = true)]
async fn different_origins_or_reasons_are_not_folded() {
    let h = monitors(Threshold::severity(0.5).suppress_repeats(WINDOW)).await;
    let mut sink = h.escalations();

    assert_went_up(
        &fire(&h, "mon/0", alarm(1, "low SpO2")).await,
        &mut sink,
        "h/mon/0",
        1,
    );
    // same reason, another monitor (another patient)
    assert_went_up(
        &fire(&h, "mon/1", alarm(2, "low SpO2")).await,
        &mut sink,
        "h/mon/1",
        2,
    );
    // same monitor, another reason
    assert_went_up(
        &fire(&h, "mon/0", alarm(3, "tachycardia")).await,
        &mut sink,
        "h/mon/0",
        3,
    );
    // each of those is its own key: repeats of each are folded
    advance(Duration::from_secs(10)).await;
    assert_folded(&fire(&h, "mon/0", alarm(4, "low SpO2")).await, &mut sink, 4);
    assert_folded(&fire(&h, "mon/1", alarm(5, "low SpO2")).await, &mut sink, 5);
    assert_folded(
        &fire(&h, "mon/0", alarm(6, "tachycardia")).await,
        &mut sink,
        6,
    );
    // and a third monitor is still its own origin
    assert_went_up(
        &fire(&h, "mon/2", alarm(7, "low SpO2")).await,
        &mut sink,
        "h/mon/2",
        7,
    );

    let c = within(5, "shutdown", h.shutdown(Duration::from_secs(2)))
        .await
        .counters;
    assert_eq!((c.escalated, c.suppressed), (4, 3), "{c:?}");
}

#[tokio::test(start_paused = true)]
async fn an_explicit_key_folds_across_origins_and_reasons() {
    let h = monitors(Threshold::severity(0.5).suppress_repeats(WINDOW)).await;
    let mut sink = h.escalations();

    assert_went_up(
        &fire(&h, "mon/0", keyed(1, "low SpO2", "patient-7")).await,
        &mut sink,
        "h/mon/0",
        1,
    );
    // another monitor, another reason, same key: folded
    advance(Duration::from_secs(5)).await;
    assert_folded(
        &fire(&h, "mon/1", keyed(2, "tachycardia", "patient-7")).await,
        &mut sink,
        2,
    );
    // another key goes up
    assert_went_up(
        &fire(&h, "mon/2", keyed(3, "low SpO2", "patient-8")).await,
        &mut sink,
        "h/mon/2",
        3,
    );
    // no key: the default key (origin and reason) is not the explicit one
    assert_went_up(
        &fire(&h, "mon/0", alarm(4, "low SpO2")).await,
        &mut sink,
        "h/mon/0",
        4,
    );
    // after the window the key goes up again, from anyone
    advance(WINDOW).await;
    assert_went_up(
        &fire(&h, "mon/1", keyed(5, "tachycardia", "patient-7")).await,
        &mut sink,
        "h/mon/1",
        5,
    );

    let c = within(5, "shutdown", h.shutdown(Duration::from_secs(2)))
        .await
        .counters;
    assert_eq!((c.escalated, c.suppressed), (4, 1), "{c:?}");
}

#[tokio::test(start_paused = true)]
async fn an_absorbed_escalation_does_not_open_a_window() {
    let h = monitors(Threshold::severity(0.5).suppress_repeats(WINDOW)).await;
    let mut sink = h.escalations();

    let minor = Alarm {
        severity: 0.2,
        ..alarm(1, "low SpO2")
    };
    match fire(&h, "mon/0", minor).await {
        O::Completed { by, .. } => assert_eq!(by.as_str(), "h"),
        other => panic!("a minor alarm should be absorbed, got {other:?}"),
    }
    // the serious one right after, same key, is not folded into the absorbed one
    assert_went_up(
        &fire(&h, "mon/0", alarm(2, "low SpO2")).await,
        &mut sink,
        "h/mon/0",
        2,
    );
    let c = within(5, "shutdown", h.shutdown(Duration::from_secs(2)))
        .await
        .counters;
    assert_eq!((c.absorbed, c.suppressed, c.escalated), (1, 0, 1), "{c:?}");
}

#[tokio::test(start_paused = true)]
async fn without_a_window_every_repeat_goes_up() {
    for threshold in [
        Threshold::severity(0.5),
        Threshold::severity(0.5).suppress_repeats(Duration::ZERO),
    ] {
        assert_eq!(threshold.window(), None);
        let h = monitors(threshold).await;
        let mut sink = h.escalations();
        for n in 1..=3 {
            assert_went_up(
                &fire(&h, "mon/0", alarm(n, "low SpO2")).await,
                &mut sink,
                "h/mon/0",
                n,
            );
        }
        let c = within(5, "shutdown", h.shutdown(Duration::from_secs(2)))
            .await
            .counters;
        assert_eq!((c.escalated, c.suppressed), (3, 0), "{c:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_repeat_is_folded_by_the_first_supervisor_and_never_reaches_the_lead() {
    // the monitors' team folds repeats; the lead tier lets everything through
    let h = within(
        5,
        "spawn",
        Hierarchy::builder("h")
            .escalation(Threshold::severity(0.5).suppress_repeats(WINDOW))
            .tier_with(Tier::new("lead", 1, |_| Monitor).escalate_at(Threshold::pass_all()))
            .tier("mon", 2, |_| Monitor)
            .spawn(),
    )
    .await
    .expect("spawn");
    let mut sink = h.escalations();
    let lead = h.agent("lead/0").expect("the lead");

    assert_went_up(
        &fire(&h, "mon/1", alarm(1, "low SpO2")).await,
        &mut sink,
        "h/lead/0/mon/1",
        1,
    );
    assert_eq!(
        lead.counters().escalated_up,
        1,
        "the lead relayed the first"
    );

    advance(Duration::from_secs(20)).await;
    let o = fire(&h, "mon/1", alarm(2, "low SpO2")).await;
    match &o {
        // the team supervisor shares its lead's path
        O::Completed {
            reply: None, by, ..
        } => assert_eq!(by.as_str(), "h/lead/0"),
        other => panic!("the repeat should be folded by the team, got {other:?}"),
    }
    assert!(
        sink.try_recv().is_none(),
        "a folded repeat is not delivered"
    );
    let l = lead.counters();
    assert_eq!(
        (l.escalated_up, l.completed),
        (1, 0),
        "the lead never saw the folded repeat: {l:?}"
    );
    let c = within(5, "shutdown", h.shutdown(Duration::from_secs(2)))
        .await
        .counters;
    assert_eq!((c.escalated, c.suppressed, c.completed), (1, 1, 1), "{c:?}");
}

/// Team leads inserted by auto-split are an implementation detail of the span of
/// control: the same team must fold the same alarms whether or not it was split. With
/// an explicit key shared by monitors under different team leads, a repeat folded at
/// the team must not open a window at the team lead it passed, or that team lead later
/// hides an alarm although nothing with its key went up for longer than the window.
#[tokio::test(start_paused = true)]
async fn auto_split_team_leads_do_not_change_what_an_explicit_key_folds() {
    for span in [SpanOfControl::strict(8), SpanOfControl::auto_split(2)] {
        let h = within(
            5,
            "spawn",
            Hierarchy::builder("h")
                .span(span)
                .escalation(Threshold::severity(0.5).suppress_repeats(WINDOW))
                .tier_with(Tier::new("lead", 1, |_| Monitor).escalate_at(Threshold::pass_all()))
                .tier("mon", 4, |_| Monitor)
                .spawn(),
        )
        .await
        .expect("spawn");
        let mut sink = h.escalations();
        let t0 = tokio::time::Instant::now();
        // under auto_split(2), mon/0 and mon/2 sit under different team leads
        let what = format!("{:?}", span.policy());

        // t = 0: patient 7's first alarm goes up
        let o = fire(&h, "mon/0", keyed(1, "low SpO2", "patient-7")).await;
        assert_went_up(&o, &mut sink, "h/lead/0/mon/0", 1);
        // t = 5 s: another monitor, same key: folded by the team
        advance(Duration::from_secs(5)).await;
        let o = fire(&h, "mon/2", keyed(2, "low SpO2", "patient-7")).await;
        assert!(o.is_completed(), "{what}: alarm 2 should be folded: {o:?}");
        assert!(sink.try_recv().is_none(), "{what}: alarm 2 was delivered");
        // t = 62 s: nothing with this key went up for 62 s > 60 s: it goes up
        advance(Duration::from_secs(57)).await;
        assert_eq!(t0.elapsed(), Duration::from_secs(62));
        let o = fire(&h, "mon/2", keyed(3, "low SpO2", "patient-7")).await;
        assert!(
            o.is_escalated(),
            "{what}: alarm 3 comes 62 s after the last alarm with its key went up, \
             so it must go up; got {o:?}"
        );
        assert_went_up(&o, &mut sink, "h/lead/0/mon/2", 3);
        drop(within(5, "shutdown", h.shutdown(Duration::from_secs(2))).await);
    }
}
