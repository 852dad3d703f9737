//! What a simulation reports, and how it prints.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::scenario::{Model, Span};

/// Everything a run measured. Deterministic for a given scenario and seed, except
/// `wall_ms`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// The domain.
    pub model: Model,
    /// The seed used.
    pub seed: u64,
    /// Simulated time.
    pub simulated: Span,
    /// Real time the run took, in milliseconds (the only non-deterministic field).
    pub wall_ms: f64,
    /// Domain events generated (readings, tickets).
    pub events_generated: u64,
    /// Domain events handled by a frontline agent.
    pub events_processed: u64,
    /// Per tier, top first.
    pub tiers: Vec<TierReport>,
    /// Per time bucket.
    pub buckets: Vec<Bucket>,
    /// What left the top, scored against ground truth.
    pub top: TopReport,
    /// Event-to-decision latency of what left the top (virtual time).
    pub latency: Latency,
    /// Supervision: restarts and failure escalations.
    pub supervision: Supervision,
    /// The no-loss check.
    pub accounting: Accounting,
    /// Shape of the hierarchy.
    pub tree: TreeSummary,
    /// Support model extras.
    pub support: Option<SupportReport>,
}

/// One tier's escalation statistics.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TierReport {
    /// Tier name.
    pub name: String,
    /// Agents in the tier.
    pub agents: usize,
    /// Escalations the tier's agents made.
    pub escalations: u64,
    /// Of those, kept by the supervisor above (below its threshold).
    pub absorbed: u64,
    /// Of those, folded as repeats.
    pub suppressed: u64,
    /// Restarts of the tier's agents.
    pub restarts: u64,
}

/// One time bucket.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Bucket {
    /// Start of the bucket.
    pub start: Span,
    /// Escalations per tier, in tier order.
    pub escalations: Vec<u64>,
    /// What left the top.
    pub alerts: u64,
}

/// What left the top of the hierarchy.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TopReport {
    /// Everything that left the top (staff alerts, human-queue tickets).
    pub alerts: u64,
    /// Alerts for events that truly needed them (first alert per event).
    pub true_alerts: u64,
    /// Alerts for events that did not need them: alert fatigue.
    pub false_alarms: u64,
    /// Further alerts for an event already alerted.
    pub duplicates: u64,
    /// Events that truly needed the top (critical episodes, tickets needing a human).
    pub critical_events: u64,
    /// Of those, never alerted in time: under-escalation.
    pub missed_criticals: u64,
}

/// Latency percentiles, in milliseconds of virtual time.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
    /// A histogram: (upper bound in ms, samples), for charts.
    pub histogram: Vec<(f64, u64)>,
}

impl Latency {
    pub(crate) fn from_samples(mut ms: Vec<f64>) -> Latency {
        if ms.is_empty() {
            return Latency::default();
        }
        ms.sort_by(|a, b| a.total_cmp(b));
        let q = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
        let max = ms[ms.len() - 1];
        let mut histogram = Vec::new();
        let mut bound = 1.0;
        while bound < max * 2.0 && histogram.len() < 40 {
            let lo = bound / 2.0;
            let n = ms
                .iter()
                .filter(|&&v| v < bound && (v >= lo || histogram.is_empty()))
                .count() as u64;
            histogram.push((bound, n));
            bound *= 2.0;
        }
        Latency {
            count: ms.len() as u64,
            p50_ms: q(0.5),
            p95_ms: q(0.95),
            p99_ms: q(0.99),
            max_ms: max,
            histogram,
        }
    }
}

/// Restarts and failure escalations.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Supervision {
    /// Agent restarts (in place and respawns).
    pub restarts: u64,
    /// Supervisors that exceeded their restart intensity and failed upward.
    pub failure_escalations: u64,
    /// Handler attempts that were retries after a crash.
    pub redelivered: u64,
    /// Why the hierarchy failed, if it did.
    pub hierarchy_failure: Option<String>,
}

/// The no-loss invariant after the drain.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Accounting {
    /// Tasks submitted (events and their branches).
    pub submitted: u64,
    /// Completed.
    pub completed: u64,
    /// Escalated out of the top.
    pub escalated: u64,
    /// Failed with a reason.
    pub failed: u64,
    /// `submitted - completed - escalated - failed`: must be 0.
    pub lost: i64,
    /// True when nothing was lost.
    pub balanced: bool,
}

/// The hierarchy's shape.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TreeSummary {
    /// Depth below the root.
    pub depth: usize,
    /// Supervisors (teams and the root).
    pub supervisors: usize,
    /// Team leads inserted by auto-split.
    pub team_leads: usize,
    /// Agents (and routers).
    pub agents: usize,
    /// The tree, indented, cut after 60 lines.
    pub outline: Vec<String>,
}

/// Support desk extras.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SupportReport {
    /// Tickets per pool: (routed there, resolved there, escalated from there).
    pub teams: BTreeMap<String, TeamLoad>,
    /// Tickets resolved or escalated after their SLA.
    pub sla_breaches: u64,
    /// Tickets routed to the wrong pool.
    pub misrouted: u64,
}

/// One pool's load.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TeamLoad {
    /// Tickets that reached the pool.
    pub tickets: u64,
    /// Resolved by a specialist.
    pub resolved: u64,
    /// Escalated toward tier 2.
    pub escalated: u64,
}

impl Report {
    /// The report as text for a terminal.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "scenario {:?} ({:?}), seed {}: {} simulated in {:.0} ms",
            self.scenario, self.model, self.seed, self.simulated, self.wall_ms
        );
        let _ = writeln!(
            s,
            "hierarchy: {} agents, {} supervisors, {} team leads, depth {}",
            self.tree.agents, self.tree.supervisors, self.tree.team_leads, self.tree.depth
        );
        let _ = writeln!(
            s,
            "events: {} generated, {} processed",
            self.events_generated, self.events_processed
        );
        let _ = writeln!(s, "\nescalations per tier:");
        let _ = writeln!(
            s,
            "  {:<14} {:>7} {:>12} {:>10} {:>11} {:>9}",
            "tier", "agents", "escalations", "absorbed", "suppressed", "restarts"
        );
        for t in &self.tiers {
            let _ = writeln!(
                s,
                "  {:<14} {:>7} {:>12} {:>10} {:>11} {:>9}",
                t.name, t.agents, t.escalations, t.absorbed, t.suppressed, t.restarts
            );
        }
        let hours = self.buckets.len().max(1) as f64;
        let per_hour: Vec<String> = self
            .tiers
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let total: u64 = self
                    .buckets
                    .iter()
                    .map(|b| b.escalations.get(i).copied().unwrap_or(0))
                    .sum();
                format!("{} {:.1}", t.name, total as f64 / hours)
            })
            .collect();
        let _ = writeln!(
            s,
            "  per bucket ({} buckets): {}",
            self.buckets.len(),
            per_hour.join(", ")
        );
        let t = &self.top;
        let _ = writeln!(s, "\nleft the top: {} alerts", t.alerts);
        let _ = writeln!(
            s,
            "  true alerts {} · false alarms {} (alert fatigue) · duplicates {}",
            t.true_alerts, t.false_alarms, t.duplicates
        );
        let _ = writeln!(
            s,
            "  critical events {} · missed criticals {} (under-escalation)",
            t.critical_events, t.missed_criticals
        );
        let l = &self.latency;
        let _ = writeln!(
            s,
            "\nevent-to-decision latency ({} decisions): p50 {} · p95 {} · p99 {} · max {}",
            l.count,
            ms(l.p50_ms),
            ms(l.p95_ms),
            ms(l.p99_ms),
            ms(l.max_ms)
        );
        if let Some(sup) = &self.support {
            let _ = writeln!(s, "\nsupport teams:");
            for (name, load) in &sup.teams {
                let rate = if load.tickets > 0 {
                    100.0 * load.escalated as f64 / load.tickets as f64
                } else {
                    0.0
                };
                let _ = writeln!(
                    s,
                    "  {:<12} {:>7} tickets {:>7} resolved {:>6} escalated ({rate:.1}%)",
                    name, load.tickets, load.resolved, load.escalated
                );
            }
            let _ = writeln!(
                s,
                "  SLA breaches {} · misrouted {}",
                sup.sla_breaches, sup.misrouted
            );
        }
        let v = &self.supervision;
        let _ = writeln!(
            s,
            "\nsupervision: {} restarts, {} redeliveries, {} failure escalations{}",
            v.restarts,
            v.redelivered,
            v.failure_escalations,
            v.hierarchy_failure
                .as_ref()
                .map(|f| format!("; the hierarchy FAILED: {f}"))
                .unwrap_or_default()
        );
        let a = &self.accounting;
        let _ = writeln!(
            s,
            "accounting: submitted {} = completed {} + escalated {} + failed {}; lost {} {}",
            a.submitted,
            a.completed,
            a.escalated,
            a.failed,
            a.lost,
            if a.balanced {
                "✓"
            } else {
                "✗ NOT BALANCED"
            }
        );
        s
    }
}

fn ms(v: f64) -> String {
    if v >= 60_000.0 {
        format!("{:.1}min", v / 60_000.0)
    } else if v >= 1000.0 {
        format!("{:.1}s", v / 1000.0)
    } else {
        format!("{v:.0}ms")
    }
}
