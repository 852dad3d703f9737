//! The healthcare scenario across nodes, on the wall clock.
//!
//! The simulator runs one process under virtual time; a network hop cannot be paused.
//! This runs the same scenario's hierarchy and readings (same generator, same seed) on
//! the real clock with some tiers placed on other nodes, as fast as the hierarchy takes
//! them, with zero service times and no injected faults: it shows that the distributed
//! hierarchy decides what the local one decides and loses nothing, not modelled
//! latencies.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::healthcare::{self, Decision, Diagnostic, Monitor, Ward};
use super::run::{builder, generate_readings, threshold, SimError};
use super::scenario::Scenario;
use crate::cluster::{Hosted, Node, Placement, RemoteTeam};
use crate::hierarchy::BuildError;
use crate::Tier;

/// The healthcare team kinds, by tier role: `healthcare.monitor`, `healthcare.diagnostic`,
/// `healthcare.decision`. Their configuration is the tier's `decide_at`, 8 bytes
/// little-endian.
pub fn hosted() -> Hosted {
    fn decide_at(cfg: &[u8]) -> Result<f64, String> {
        let b: [u8; 8] = cfg
            .try_into()
            .map_err(|_| format!("expected 8 bytes of decide_at, got {}", cfg.len()))?;
        Ok(f64::from_le_bytes(b))
    }
    Hosted::new()
        .team("healthcare.monitor", |cfg: &[u8]| {
            let d = decide_at(cfg)?;
            Ok(move |_| Monitor::new(d))
        })
        .team("healthcare.diagnostic", |cfg: &[u8]| {
            let d = decide_at(cfg)?;
            Ok(move |_| Diagnostic::new(d, Duration::ZERO))
        })
        .team("healthcare.decision", |cfg: &[u8]| {
            let d = decide_at(cfg)?;
            Ok(move |_| Decision::new(d, Duration::ZERO))
        })
}

/// What a distributed run found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClusterReport {
    /// The scenario.
    pub scenario: String,
    /// Tier → nodes it was placed on.
    pub placed: Vec<(String, Vec<String>)>,
    /// Readings sent to the monitors.
    pub readings: u64,
    /// Alerts that left the top (escalations into the sink).
    pub alerts: u64,
    /// Alerts for a truly critical episode (first alert per episode).
    pub true_alerts: u64,
    /// Alerts for a non-critical episode or for no episode.
    pub false_alarms: u64,
    /// Truly critical episodes.
    pub critical_events: u64,
    /// Critical episodes never alerted.
    pub never_alerted: u64,
    /// Tasks submitted in the owning hierarchy (readings and the escalations they made).
    pub submitted: u64,
    /// Completed.
    pub completed: u64,
    /// Escalated out of the top.
    pub escalated: u64,
    /// Failed, each with a reason.
    pub failed: u64,
    /// submitted − completed − escalated − failed after the drain: 0 means nothing lost.
    pub lost: i64,
    /// Restarts in the owning hierarchy (a proxy whose node failed counts one).
    pub restarts: u64,
    /// Tasks answered by remote nodes.
    pub remote_tasks: u64,
    /// Tasks run by local fallbacks.
    pub local_tasks: u64,
    /// Node failures seen by the remote teams.
    pub node_failures: u64,
    /// Wall-clock time of the run, ms.
    pub wall_ms: f64,
}

impl std::fmt::Display for ClusterReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "scenario {} on the wall clock, across nodes",
            self.scenario
        )?;
        for (tier, nodes) in &self.placed {
            writeln!(f, "  tier {tier:<12} on {}", nodes.join(", "))?;
        }
        writeln!(f, "readings           {}", self.readings)?;
        writeln!(
            f,
            "alerts             {} ({} true, {} false alarms); critical episodes {}, never alerted {}",
            self.alerts, self.true_alerts, self.false_alarms, self.critical_events, self.never_alerted
        )?;
        writeln!(
            f,
            "remote tasks       {} answered by other nodes, {} run by local fallbacks, {} node failures",
            self.remote_tasks, self.local_tasks, self.node_failures
        )?;
        writeln!(f, "restarts           {}", self.restarts)?;
        writeln!(
            f,
            "accounting         submitted {} = completed {} + escalated {} + failed {}; lost {}",
            self.submitted, self.completed, self.escalated, self.failed, self.lost
        )?;
        write!(f, "wall clock         {:.0} ms", self.wall_ms)
    }
}

/// Run the healthcare scenario `s` with each tier named in `place` on those nodes (in
/// order of preference), the rest on `node`. With `fallback`, a placed tier runs here
/// when none of its nodes is reachable.
///
/// # Errors
/// [`SimError`] if the scenario is not a healthcare one or its hierarchy cannot be built.
pub async fn run_healthcare(
    node: &Node,
    s: &Scenario,
    place: &[(String, Vec<String>)],
    fallback: bool,
) -> Result<ClusterReport, SimError> {
    let Some(w) = &s.healthcare else {
        return Err(SimError::Build(BuildError::NoTiers {
            name: format!("{} (no [healthcare] table)", s.name),
        }));
    };
    for (tier, _) in place {
        if !s.tiers.iter().any(|t| &t.name == tier) {
            return Err(SimError::Build(BuildError::NoTiers {
                name: format!("{} has no tier {tier:?} to place", s.name),
            }));
        }
    }
    let wall = std::time::Instant::now();
    let last = s.tiers.len() - 1;
    let mut b = builder::<Ward>(s);
    let mut stats: Vec<Box<dyn Fn() -> crate::cluster::TeamStats + Send>> = Vec::new();
    for (i, t) in s.tiers.iter().enumerate() {
        let d = t.decide_at;
        let role = if i == last {
            "monitor"
        } else if i == 0 {
            "decision"
        } else {
            "diagnostic"
        };
        let placed = place.iter().find(|(n, _)| *n == t.name);
        let tier = match (placed, role) {
            (Some((_, nodes)), role) => {
                let mut p = Placement::on(nodes.clone());
                if fallback {
                    p = p.or_local();
                }
                let kind = format!("healthcare.{role}");
                let cfg = d.to_le_bytes().to_vec();
                match role {
                    "monitor" => {
                        let team =
                            RemoteTeam::new(node, kind, t.name.clone(), t.count, p, move |_| {
                                Monitor::new(d)
                            })
                            .with_config(cfg);
                        let st = team.clone();
                        stats.push(Box::new(move || st.stats()));
                        team.tier()
                    }
                    "decision" => {
                        let team =
                            RemoteTeam::new(node, kind, t.name.clone(), t.count, p, move |_| {
                                Decision::new(d, Duration::ZERO)
                            })
                            .with_config(cfg);
                        let st = team.clone();
                        stats.push(Box::new(move || st.stats()));
                        team.tier()
                    }
                    _ => {
                        let team =
                            RemoteTeam::new(node, kind, t.name.clone(), t.count, p, move |_| {
                                Diagnostic::new(d, Duration::ZERO)
                            })
                            .with_config(cfg);
                        let st = team.clone();
                        stats.push(Box::new(move || st.stats()));
                        team.tier()
                    }
                }
            }
            (None, "monitor") => Tier::new(t.name.clone(), t.count, move |_| Monitor::new(d)),
            (None, "decision") => Tier::new(t.name.clone(), t.count, move |_| {
                Decision::new(d, Duration::ZERO)
            }),
            (None, _) => Tier::new(t.name.clone(), t.count, move |_| {
                Diagnostic::new(d, Duration::ZERO)
            }),
        };
        b = b.tier_with(tier.escalate_at(threshold(t)));
    }
    let h = b.spawn().await?;
    let mut sink = h.escalations();
    let alerts: Arc<Mutex<Vec<healthcare::Finding>>> = Arc::default();
    let collector = {
        let alerts = alerts.clone();
        tokio::spawn(async move {
            while let Some(e) = sink.recv().await {
                if let Ward::Finding(f) = e.payload {
                    alerts.lock().unwrap_or_else(|p| p.into_inner()).push(f);
                }
            }
        })
    };
    let monitors = h.tier(&s.tiers[last].name).unwrap_or_default();
    let episodes = healthcare::episodes(w, monitors.len() as u32, s.duration.0, s.seed);
    let readings =
        generate_readings(s, w, &monitors, &episodes, Instant::now(), false, |_| {}).await;
    // bounded: a drain that does not finish still ends, and the accounting says so
    let _ = h.wait_idle(Duration::from_secs(600)).await;
    let report = h.shutdown(Duration::from_secs(30)).await;
    let _ = collector.await;
    let alerts = std::mem::take(&mut *alerts.lock().unwrap_or_else(|p| p.into_inner()));

    let mut r = ClusterReport {
        scenario: s.name.clone(),
        placed: place.to_vec(),
        readings,
        alerts: alerts.len() as u64,
        ..ClusterReport::default()
    };
    let mut seen = HashSet::new();
    for f in &alerts {
        match f.episode {
            Some(id) if !seen.insert(id) => {}
            Some(id) if episodes.get(id as usize).is_some_and(|e| e.critical) => r.true_alerts += 1,
            _ => r.false_alarms += 1,
        }
    }
    for (id, e) in episodes.iter().enumerate() {
        if e.critical {
            r.critical_events += 1;
            if !seen.contains(&(id as u32)) {
                r.never_alerted += 1;
            }
        }
    }
    let c = report.counters;
    r.submitted = c.submitted;
    r.completed = c.completed;
    r.escalated = c.escalated;
    r.failed = c.failed;
    r.lost = c.submitted as i64 - (c.completed + c.escalated + c.failed) as i64;
    r.restarts = c.restarts;
    for st in &stats {
        let t = st();
        r.remote_tasks += t.remote;
        r.local_tasks += t.local;
        r.node_failures += t.node_failures;
    }
    r.wall_ms = wall.elapsed().as_secs_f64() * 1000.0;
    Ok(r)
}
