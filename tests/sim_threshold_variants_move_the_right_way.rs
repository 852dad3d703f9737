//! The shipped scenario variants show the trade-offs they are named for, against the
//! healthcare baseline, with the same shrinking and the same seeds:
//!
//! - thresholds too low: more false alarms (alert fatigue), no more missed criticals;
//! - thresholds too high: fewer false alarms, more missed criticals (under-escalation);
//! - span too wide: a higher p95 event-to-decision latency, seed by seed;
//! - fault storm: more restarts, and supervisors that fail upward;
//!
//! and every run is balanced (nothing lost). Each variant runs 12 simulated hours
//! (including the morning burst) with 500 patients on four seeds; the threshold
//! comparisons use sums over the seeds, as a handful of critical episodes per run is
//! too few to compare one run with another.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use echelon::sim::scenario::Span;
use echelon::sim::{simulate, Report, Scenario};

const HOURS: u64 = 12;
const PATIENTS: usize = 500;
const SEEDS: [u64; 4] = [1, 2, 3, 4];

/// `scenarios/NAME.toml`, shrunk the same way for every variant.
fn shrunk(name: &str) -> Scenario {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("scenarios/{name}.toml"));
    let mut s = Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
    s.duration = Span(Duration::from_secs(HOURS * 3600));
    s.tiers.last_mut().expect("a scenario has tiers").count = PATIENTS;
    s
}

/// One report per seed, each checked for balance.
fn runs(name: &str) -> Vec<Report> {
    let s = shrunk(name);
    SEEDS
        .iter()
        .map(|&seed| {
            let r = simulate(&s, Some(seed), &mut |_| {})
                .unwrap_or_else(|e| panic!("{name} seed {seed}: {e}"));
            assert!(
                r.accounting.balanced && r.accounting.lost == 0,
                "{name} seed {seed}: not balanced: {:?}",
                r.accounting
            );
            assert!(r.events_processed <= r.events_generated);
            r
        })
        .collect()
}

/// The baseline, shared by the tests (computed once).
fn baseline() -> &'static [Report] {
    static BASELINE: OnceLock<Vec<Report>> = OnceLock::new();
    BASELINE.get_or_init(|| runs("healthcare"))
}

fn sum(rs: &[Report], f: impl Fn(&Report) -> u64) -> u64 {
    rs.iter().map(f).sum()
}

/// Same seeds and patients: the same ground truth, so the comparison is fair.
fn assert_same_ground_truth(base: &[Report], variant: &[Report], name: &str) {
    for (b, v) in base.iter().zip(variant) {
        assert_eq!(
            b.top.critical_events, v.top.critical_events,
            "{name} seed {}: a different number of critical episodes than the baseline",
            v.seed
        );
        assert_eq!(b.events_generated, v.events_generated);
    }
    assert!(
        sum(base, |r| r.top.critical_events) >= 20,
        "too few critical episodes to compare: {}",
        sum(base, |r| r.top.critical_events)
    );
}

fn summary(rs: &[Report]) -> String {
    rs.iter()
        .map(|r| {
            format!(
                "seed {}: false alarms {}, missed {}/{}, p95 {:.0} ms, restarts {}, failure escalations {}",
                r.seed,
                r.top.false_alarms,
                r.top.missed_criticals,
                r.top.critical_events,
                r.latency.p95_ms,
                r.supervision.restarts,
                r.supervision.failure_escalations
            )
        })
        .collect::<Vec<_>>()
        .join("\n  ")
}

#[test]
fn low_thresholds_raise_false_alarms_and_miss_no_more_criticals() {
    let base = baseline();
    let low = runs("healthcare_threshold_low");
    assert_same_ground_truth(base, &low, "threshold_low");
    let why = format!("baseline:\n  {}\nlow:\n  {}", summary(base), summary(&low));
    let (fa_base, fa_low) = (
        sum(base, |r| r.top.false_alarms),
        sum(&low, |r| r.top.false_alarms),
    );
    assert!(
        fa_base > 0,
        "the baseline has false alarms to compare\n{why}"
    );
    // alert fatigue: clearly more, not just a few
    assert!(
        fa_low >= 2 * fa_base,
        "low thresholds: {fa_low} false alarms vs {fa_base} at baseline\n{why}"
    );
    let (miss_base, miss_low) = (
        sum(base, |r| r.top.missed_criticals),
        sum(&low, |r| r.top.missed_criticals),
    );
    assert!(
        miss_low <= miss_base,
        "low thresholds: {miss_low} missed criticals vs {miss_base} at baseline\n{why}"
    );
    assert!(
        sum(&low, |r| r.top.alerts) > sum(base, |r| r.top.alerts),
        "{why}"
    );
}

#[test]
fn high_thresholds_miss_more_criticals_and_raise_fewer_false_alarms() {
    let base = baseline();
    let high = runs("healthcare_threshold_high");
    assert_same_ground_truth(base, &high, "threshold_high");
    let why = format!(
        "baseline:\n  {}\nhigh:\n  {}",
        summary(base),
        summary(&high)
    );
    let (miss_base, miss_high) = (
        sum(base, |r| r.top.missed_criticals),
        sum(&high, |r| r.top.missed_criticals),
    );
    // under-escalation: clearly more, not one or two
    assert!(
        miss_high >= miss_base + 5,
        "high thresholds: {miss_high} missed criticals vs {miss_base} at baseline\n{why}"
    );
    let (fa_base, fa_high) = (
        sum(base, |r| r.top.false_alarms),
        sum(&high, |r| r.top.false_alarms),
    );
    assert!(
        fa_high < fa_base,
        "high thresholds: {fa_high} false alarms vs {fa_base} at baseline\n{why}"
    );
    assert!(
        sum(&high, |r| r.top.alerts) < sum(base, |r| r.top.alerts),
        "{why}"
    );
}

#[test]
fn a_span_too_wide_delays_decisions() {
    let base = baseline();
    let wide = runs("healthcare_span_wide");
    assert_same_ground_truth(base, &wide, "span_wide");
    let why = format!(
        "baseline:\n  {}\nspan_wide:\n  {}",
        summary(base),
        summary(&wide)
    );
    for (b, w) in base.iter().zip(&wide) {
        assert!(
            b.latency.count > 0 && w.latency.count > 0,
            "seed {}: decisions were made\n{why}",
            b.seed
        );
        assert!(
            w.latency.p95_ms > b.latency.p95_ms,
            "seed {}: p95 {} ms with a wide span vs {} ms at baseline\n{why}",
            b.seed,
            w.latency.p95_ms,
            b.latency.p95_ms
        );
    }
    // the shape really is different: fewer diagnostic agents, no team leads inserted
    assert!(wide[0].tree.agents < base[0].tree.agents, "{why}");
}

#[test]
fn a_fault_storm_restarts_agents_and_escalates_failures() {
    let base = baseline();
    let storm = runs("healthcare_fault_storm");
    assert_same_ground_truth(base, &storm, "fault_storm");
    let why = format!(
        "baseline:\n  {}\nfault_storm:\n  {}",
        summary(base),
        summary(&storm)
    );
    for (b, f) in base.iter().zip(&storm) {
        assert!(
            f.supervision.restarts > b.supervision.restarts,
            "seed {}: {} restarts in the storm vs {} at baseline\n{why}",
            b.seed,
            f.supervision.restarts,
            b.supervision.restarts
        );
        assert!(
            f.supervision.failure_escalations > 0,
            "seed {}: no supervisor failed upward in the storm\n{why}",
            b.seed
        );
        assert!(
            f.supervision.failure_escalations >= b.supervision.failure_escalations,
            "{why}"
        );
    }
    // the restarts are reported per tier too, and add up to at most the total
    for f in &storm {
        let per_tier: u64 = f.tiers.iter().map(|t| t.restarts).sum();
        assert!(per_tier > 0 && per_tier <= f.supervision.restarts, "{why}");
    }
}
