//! Running a scenario on the real runtime under virtual time.
//!
//! The scenario's hierarchy is spawned with the same supervisor, router and agent actors
//! a user would spawn, on a single-threaded tokio runtime whose clock is paused: time
//! only moves when every task is idle, and then jumps to the next timer. Work takes no
//! virtual time unless the model says so (service times, outages, backoff), so a
//! simulated day runs in seconds, and one thread plus seeded RNGs make a run repeatable.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::healthcare::{self, Decision, Diagnostic, Monitor, Ward};
use super::model::{lock, Recorder, TierSim};
use super::report::{
    Accounting, Bucket, Latency, Report, Supervision, TierReport, TopReport, TreeSummary,
};
use super::scenario::{HealthcareWorkload, Model, Scenario};
use crate::hierarchy::{BuildError, Hierarchy, HierarchyBuilder, TreeNode};
use crate::{Backoff, Intensity, Role, ShutdownReport, SpanOfControl, Strategy, Threshold, Tier};

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// The scenario's hierarchy could not be built (e.g. a strict span exceeded).
    #[error("the scenario's hierarchy cannot be built: {0}")]
    Build(#[from] BuildError),
    /// The runtime could not start.
    #[error("cannot start the simulation runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

/// Run `scenario` (with `seed` instead of the file's, if given). `progress` is called
/// with the fraction of simulated time done.
///
/// # Errors
/// [`SimError`] if the hierarchy cannot be built or the runtime cannot start.
pub fn simulate(
    scenario: &Scenario,
    seed: Option<u64>,
    progress: &mut dyn FnMut(f64),
) -> Result<Report, SimError> {
    let mut s = scenario.clone();
    if let Some(seed) = seed {
        s.seed = seed;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()?;
    let wall = std::time::Instant::now();
    let mut report = rt.block_on(async {
        match s.model {
            Model::Healthcare => run_healthcare(&s, progress).await,
            Model::Support => super::support::run(&s, progress).await,
        }
    })?;
    report.wall_ms = wall.elapsed().as_secs_f64() * 1000.0;
    Ok(report)
}

/// The builder every model starts from: name, seed, span, restarts, attempts.
pub(crate) fn builder<M: crate::Message>(s: &Scenario) -> HierarchyBuilder<M> {
    let h = &s.hierarchy;
    let strategy = match h.strategy.as_str() {
        "one_for_all" => Strategy::OneForAll,
        "rest_for_one" => Strategy::RestForOne,
        _ => Strategy::OneForOne,
    };
    let span = if h.auto_split {
        SpanOfControl::auto_split(h.span_of_control)
    } else {
        SpanOfControl::strict(h.span_of_control)
    };
    let mut b = Hierarchy::builder(s.name.clone())
        .seed(s.seed)
        .max_attempts(h.max_attempts)
        .span(span)
        .restart(strategy, Intensity::at_most(h.max_restarts).per(h.period.0));
    if let Some(initial) = h.backoff {
        let max = h.backoff_max.map_or(initial.0 * 64, |m| m.0);
        b = b.backoff(Backoff::exponential(initial.0, max));
    }
    b
}

/// A tier's threshold and suppression from the scenario.
pub(crate) fn threshold(t: &super::scenario::TierSpec) -> Threshold {
    let th = Threshold::severity(t.escalate_at);
    match t.suppress {
        Some(w) => th.suppress_repeats(w.0),
        None => th,
    }
}

async fn run_healthcare(s: &Scenario, progress: &mut dyn FnMut(f64)) -> Result<Report, SimError> {
    let Some(w) = &s.healthcare else {
        return Err(SimError::Build(BuildError::NoTiers {
            name: format!("{} (no [healthcare] table)", s.name),
        }));
    };
    let rec = Arc::new(Mutex::new(Recorder::new(s)));
    let sims = TierSim::for_tiers(s, &rec);
    let last = s.tiers.len() - 1;
    let mut b = builder::<Ward>(s);
    for (i, t) in s.tiers.iter().enumerate() {
        let sim = sims[i].clone();
        let tier = if i == last {
            Tier::new(t.name.clone(), t.count, move |_| Monitor {
                sim: sim.clone(),
            })
        } else if i == 0 {
            Tier::new(t.name.clone(), t.count, move |_| Decision {
                sim: sim.clone(),
            })
        } else {
            Tier::new(t.name.clone(), t.count, move |_| {
                Diagnostic::with_sim(sim.clone())
            })
        };
        b = b.tier_with(tier.escalate_at(threshold(t)));
    }
    let h = b.spawn().await?;
    let start = Instant::now();
    let mut sink = h.escalations();
    let alerts: Arc<Mutex<Vec<(u64, healthcare::Finding)>>> = Arc::default();
    let collector = {
        let alerts = alerts.clone();
        tokio::spawn(async move {
            while let Some(e) = sink.recv().await {
                if let Ward::Finding(f) = e.payload {
                    let at = start.elapsed().as_millis() as u64;
                    alerts
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((at, f));
                }
            }
        })
    };

    let monitors = h.tier(&s.tiers[last].name).unwrap_or_default();
    let patients = monitors.len() as u32;
    let episodes = healthcare::episodes(w, patients, s.duration.0, s.seed);
    let generated =
        generate_readings(s, w, &monitors, &episodes, start, true, &mut *progress).await;

    tokio::time::sleep_until(start + s.duration.0).await;
    progress(1.0);
    let (tree, shared) = (h.tree(), h.shared());
    let report = h
        .shutdown(s.duration.0.max(Duration::from_secs(3600)) * 10)
        .await;
    let _ = collector.await;
    let alerts = std::mem::take(&mut *alerts.lock().unwrap_or_else(|p| p.into_inner()));

    // score what left the top against the ground truth
    let mut top = TopReport::default();
    let mut first_alert: HashMap<u32, u64> = HashMap::new();
    let mut latencies = Vec::with_capacity(alerts.len());
    {
        let mut r = lock(&rec);
        for (at, f) in &alerts {
            r.alert(Duration::from_millis(*at));
            top.alerts += 1;
            latencies.push(at.saturating_sub(f.first_ms) as f64);
            match f.episode {
                Some(id) if first_alert.contains_key(&id) => top.duplicates += 1,
                Some(id) => {
                    first_alert.insert(id, *at);
                    match episodes.get(id as usize) {
                        Some(e) if e.critical => top.true_alerts += 1,
                        _ => top.false_alarms += 1,
                    }
                }
                None => top.false_alarms += 1,
            }
        }
    }
    let deadline = w.decision_deadline.0.as_millis() as u64;
    for (id, e) in episodes.iter().enumerate() {
        if e.critical {
            top.critical_events += 1;
            match first_alert.get(&(id as u32)) {
                Some(at) if *at <= e.start_ms + deadline => {}
                _ => top.missed_criticals += 1,
            }
        }
    }
    Ok(assemble(
        s,
        &h_summary(&report, tree, &shared),
        rec,
        top,
        latencies,
        generated,
    ))
}

/// Readings in time order: every patient every `reading_interval`, staggered.
/// Send the scenario's readings to the monitors: paced on the runtime clock (`paced`,
/// the simulator) or as fast as they are taken (a wall-clock run).
pub(crate) async fn generate_readings(
    s: &Scenario,
    w: &HealthcareWorkload,
    monitors: &[crate::AgentRef<Ward>],
    episodes: &[healthcare::Episode],
    start: Instant,
    paced: bool,
    mut progress: impl FnMut(f64),
) -> u64 {
    use rand::SeedableRng;
    let n = monitors.len() as u64;
    if n == 0 {
        return 0;
    }
    let mut by_patient: Vec<Vec<u32>> = vec![Vec::new(); n as usize];
    for (id, e) in episodes.iter().enumerate() {
        if let Some(v) = by_patient.get_mut(e.patient as usize) {
            v.push(id as u32);
        }
    }
    let mut cursor = vec![0usize; n as usize];
    let mut rng = rand::rngs::StdRng::seed_from_u64(s.seed ^ 0x5EAD_1265);
    let interval = w.reading_interval.0.as_millis() as u64;
    let total = s.duration.0.as_millis() as u64;
    let mut generated = 0u64;
    let mut slept_to = 0u64;
    let mut reported = 0.0;
    let slots = total / interval.max(1) + 1;
    for slot in 0..slots {
        for p in 0..n {
            let at = slot * interval + p * interval / n;
            if at >= total {
                break;
            }
            if paced && at >= slept_to + 1000 {
                tokio::time::sleep_until(start + Duration::from_millis(at)).await;
                slept_to = at;
                let done = at as f64 / total as f64;
                if done - reported >= 0.005 {
                    progress(done);
                    reported = done;
                }
            }
            // the patient's active episode, if any
            let list = &by_patient[p as usize];
            let c = &mut cursor[p as usize];
            while *c < list.len() && episodes[list[*c] as usize].end_ms <= at {
                *c += 1;
            }
            let active = list
                .get(*c)
                .map(|&id| (id, &episodes[id as usize]))
                .filter(|(_, e)| e.start_ms <= at);
            let r = healthcare::reading(p as u32, at, active, w.artifact_rate, &mut rng);
            if monitors[p as usize].send(Ward::Reading(r)).is_ok() {
                generated += 1;
            }
        }
    }
    generated
}

/// What the report needs from the finished hierarchy.
pub(crate) struct Finished {
    pub(crate) shutdown: ShutdownReport,
    pub(crate) tree: TreeNode,
    /// Per reports-tier: (absorbed, suppressed); per agent tier: restarts.
    pub(crate) absorbed: HashMap<String, (u64, u64)>,
    pub(crate) restarts: HashMap<String, u64>,
}

pub(crate) fn h_summary<M: crate::Message>(
    shutdown: &ShutdownReport,
    tree: TreeNode,
    shared: &crate::hierarchy::shared::Shared<M>,
) -> Finished {
    let mut absorbed: HashMap<String, (u64, u64)> = HashMap::new();
    let mut restarts: HashMap<String, u64> = HashMap::new();
    for (path, role, c) in shared.node_counters() {
        let segs: Vec<&str> = path.as_str().split('/').collect();
        // drop auto-split segments, then the last (tier, index) pair names the node
        let mut logical = Vec::new();
        let mut i = 0;
        while i < segs.len() {
            if segs[i] == "split" {
                i += 2;
                continue;
            }
            logical.push(segs[i]);
            i += 1;
        }
        let own_tier = if logical.len() >= 3 {
            Some(logical[logical.len() - 2].to_string())
        } else {
            None
        };
        match role {
            Role::Agent | Role::Router | Role::Pipeline => {
                if let Some(t) = own_tier {
                    *restarts.entry(t).or_default() += c.restarts;
                }
            }
            Role::Supervisor | Role::TeamLead | Role::Root => {
                // the supervisor of a team led by tier k judges tier k+1's escalations;
                // the root judges the top tier's: key by the team's own tier, or "" at
                // the root, and resolve when assembling
                let key = own_tier.unwrap_or_default();
                let e = absorbed.entry(key).or_default();
                e.0 += c.absorbed;
                e.1 += c.suppressed;
            }
        }
    }
    Finished {
        shutdown: shutdown.clone(),
        tree,
        absorbed,
        restarts,
    }
}

/// Put a report together from the recorder, the scoring and the hierarchy's counters.
pub(crate) fn assemble(
    s: &Scenario,
    f: &Finished,
    rec: Arc<Mutex<Recorder>>,
    top: TopReport,
    latencies: Vec<f64>,
    generated: u64,
) -> Report {
    let r = lock(&rec);
    let tiers: Vec<TierReport> = s
        .tiers
        .iter()
        .enumerate()
        .map(|(i, t)| {
            // escalations from tier i are judged by supervisors of teams led by tier
            // i-1 (or the root for the top tier)
            let judge = if i == 0 {
                String::new()
            } else {
                s.tiers[i - 1].name.clone()
            };
            let (absorbed, suppressed) = f.absorbed.get(&judge).copied().unwrap_or_default();
            TierReport {
                name: t.name.clone(),
                agents: t.count,
                escalations: r.escalations.iter().map(|b| b[i]).sum(),
                absorbed,
                suppressed,
                restarts: f.restarts.get(&t.name).copied().unwrap_or_default(),
            }
        })
        .collect();
    let buckets = r
        .escalations
        .iter()
        .zip(&r.alerts)
        .enumerate()
        .map(|(i, (e, a))| Bucket {
            start: super::scenario::Span(r.bucket * i as u32),
            escalations: e.clone(),
            alerts: *a,
        })
        .collect();
    let c = f.shutdown.counters;
    let lost = c.submitted as i64 - (c.completed + c.escalated + c.failed) as i64;
    let mut tree = TreeSummary::default();
    f.tree.walk(&mut |n, d| {
        tree.depth = tree.depth.max(d);
        match n.role {
            Role::Supervisor | Role::Root => tree.supervisors += 1,
            Role::TeamLead => tree.team_leads += 1,
            _ => tree.agents += 1,
        }
        if tree.outline.len() < 60 {
            tree.outline.push(format!(
                "{:indent$}{} ({:?})",
                "",
                n.path,
                n.role,
                indent = d * 2
            ));
        }
    });
    Report {
        scenario: s.name.clone(),
        model: s.model,
        seed: s.seed,
        simulated: s.duration,
        wall_ms: 0.0,
        events_generated: generated,
        events_processed: r.processed,
        tiers,
        buckets,
        top,
        latency: Latency::from_samples(latencies),
        supervision: Supervision {
            restarts: c.restarts,
            failure_escalations: c.failure_escalations,
            redelivered: c.redelivered,
            hierarchy_failure: f.shutdown.failure.clone(),
        },
        accounting: Accounting {
            submitted: c.submitted,
            completed: c.completed,
            escalated: c.escalated,
            failed: c.failed,
            lost,
            balanced: lost == 0 && c.is_balanced(),
        },
        tree,
        support: None,
    }
}
