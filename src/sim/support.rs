//! The support model: a manager routes tickets to billing / technical / sales specialist
//! pools; specialists resolve or escalate by confidence and customer priority to tier 2,
//! which resolves or passes them on to a human queue (out of the top).
//!
//! Built from the runtime's own pieces: the desk is a classify router whose workers are
//! pool routers (least-loaded over specialists), and the desk is the last tier below the
//! tier-2 agents. Ground truth per ticket: whether it truly needs a human.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use super::healthcare::burst_factor;
use super::model::{lock, Recorder, TierSim};
use super::report::{Report, SupportReport, TeamLoad, TopReport};
use super::run::{assemble, builder, h_summary, threshold, SimError};
use super::scenario::Scenario;
use crate::hierarchy::BuildError;
use crate::router::{Gather, Route, Router};
use crate::{Agent, AgentError, Ctx, Escalation, Outcome, Threshold, Tier, Verdict};

/// A support ticket.
#[derive(Clone, Debug)]
pub struct Ticket {
    /// Ticket number.
    pub id: u32,
    /// Arrival (ms since the start).
    pub at_ms: u64,
    /// The pool the manager sent it to.
    pub routed_to: usize,
    /// The pool it truly belongs to.
    pub category: usize,
    /// A high-priority customer.
    pub high: bool,
    /// How hard it is, 0..1.
    pub difficulty: f64,
    /// Ground truth (scoring only): it needs a human.
    pub needs_human: bool,
}

/// A specialist in one pool: resolves a ticket, or escalates it when its confidence is
/// low (hard ticket, wrong pool) and the customer's priority pushes the severity to
/// `decide_at`.
#[derive(Debug)]
pub struct Specialist {
    sim: Arc<TierSim>,
    pool: usize,
    pool_name: String,
}

impl Specialist {
    /// A specialist of pool `pool` (its index among the desk's pools) named `pool_name`.
    pub fn new(
        pool: usize,
        pool_name: impl Into<String>,
        decide_at: f64,
        service: Duration,
    ) -> Self {
        Specialist {
            sim: TierSim::standalone(decide_at, service),
            pool,
            pool_name: pool_name.into(),
        }
    }
}

impl Agent for Specialist {
    type Msg = Ticket;
    async fn handle(
        &mut self,
        ctx: &mut Ctx<Ticket>,
        t: Ticket,
    ) -> Result<Verdict<Ticket>, AgentError> {
        self.sim.work(ctx).await;
        let wrong_pool = t.category != self.pool;
        let noise: f64 = ctx.rng().random_range(-0.1..0.1);
        let mut confidence = 1.0 - t.difficulty + noise;
        if wrong_pool {
            confidence *= 0.5;
        }
        let severity = (1.0 - confidence + if t.high { 0.15 } else { 0.0 }).clamp(0.0, 1.0);
        let escalate = severity >= self.sim.decide_at;
        {
            let mut r = lock(&self.sim.rec);
            r.processed += 1;
            let load = r.teams.entry(self.pool_name.clone()).or_default();
            load.tickets += 1;
            if escalate {
                load.escalated += 1;
            } else {
                load.resolved += 1;
            }
        }
        if !escalate {
            return Ok(Verdict::Done);
        }
        self.sim.escalated(ctx.now());
        let reason = format!(
            "ticket {} ({}{}): confidence {confidence:.2}",
            t.id,
            self.pool_name,
            if t.high { ", high priority" } else { "" }
        );
        Ok(Escalation::new(severity, reason, t).into())
    }
}

/// Tier 2 (and any tier above the desk): more skill; resolves part of what reaches it
/// and hands the rest to a human (escalates out of the top).
#[derive(Debug)]
pub struct TierTwo {
    sim: Arc<TierSim>,
}

impl TierTwo {
    /// A tier-2 agent handing tickets to a human at severity `>= decide_at`.
    pub fn new(decide_at: f64, service: Duration) -> Self {
        TierTwo {
            sim: TierSim::standalone(decide_at, service),
        }
    }
}

impl Agent for TierTwo {
    type Msg = Ticket;
    async fn handle(
        &mut self,
        ctx: &mut Ctx<Ticket>,
        t: Ticket,
    ) -> Result<Verdict<Ticket>, AgentError> {
        self.sim.work(ctx).await;
        let incoming = ctx.escalation().map_or(0.0, |e| e.severity);
        let noise: f64 = ctx.rng().random_range(-0.05..0.05);
        // tier 2 knows more: its judgement leans on the ticket itself
        let severity = (incoming * 0.3 + t.difficulty * 0.7 + noise).clamp(0.0, 1.0);
        if severity < self.sim.decide_at {
            return Ok(Verdict::Done);
        }
        self.sim.escalated(ctx.now());
        let reason = format!("ticket {} needs a human (severity {severity:.2})", t.id);
        Ok(Escalation::new(severity, reason, t).into())
    }
}

pub(crate) async fn run(s: &Scenario, progress: &mut dyn FnMut(f64)) -> Result<Report, SimError> {
    let Some(w) = &s.support else {
        return Err(SimError::Build(BuildError::NoTiers {
            name: format!("{} (no [support] table)", s.name),
        }));
    };
    let rec = Arc::new(Mutex::new(Recorder::new(s)));
    let sims = TierSim::for_tiers(s, &rec);
    let last = s.tiers.len() - 1;
    let pools: Vec<(String, usize)> = w.pools.iter().map(|(k, v)| (k.clone(), *v)).collect();
    let mut b = builder::<Ticket>(s);
    for (i, t) in s.tiers.iter().enumerate().take(last) {
        let sim = sims[i].clone();
        b = b.tier_with(
            Tier::new(t.name.clone(), t.count, move |_| TierTwo {
                sim: sim.clone(),
            })
            .escalate_at(threshold(t)),
        );
    }
    // the desk: a classify router over pool routers over specialists
    let desk_spec = &s.tiers[last];
    let mut desk = Router::builder(desk_spec.name.clone())
        .route(Route::classify(|t: &Ticket| t.routed_to))
        .gather(Gather::first());
    for (p, (name, n)) in pools.iter().enumerate() {
        let sim = sims[last].clone();
        let pool_name = name.clone();
        let specialists = Tier::new("specialist", *n, move |_| Specialist {
            sim: sim.clone(),
            pool: p,
            pool_name: pool_name.clone(),
        })
        .escalate_at(threshold(desk_spec));
        let pool = Router::builder(name.clone())
            .route(Route::LeastLoaded)
            .worker_tier(specialists)
            .into_tier(1)
            .escalate_at(Threshold::pass_all());
        desk = desk.worker_tier(pool);
    }
    let b = b.tier_with(
        desk.into_tier(desk_spec.count)
            .escalate_at(Threshold::pass_all()),
    );
    let h = b.spawn().await?;
    let entry = h.agent(&format!("{}/0", desk_spec.name)).map_err(|e| {
        SimError::Build(BuildError::Spawn {
            reason: e.to_string(),
        })
    })?;
    let start = Instant::now();

    // tickets: Poisson arrivals (denser in bursts), each a `call` so its outcome and
    // resolution time are known
    let mix_total: f64 = pools
        .iter()
        .map(|(n, _)| w.mix.get(n).copied().unwrap_or(0.0))
        .sum();
    let mut rng = StdRng::seed_from_u64(s.seed ^ 0x071C_4E75);
    let peak =
        w.tickets_per_hour / 3600.0 * w.bursts.iter().map(|b| b.multiplier).fold(1.0, f64::max);
    let total = s.duration.0.as_secs_f64();
    let mut t = 0.0f64;
    let mut id = 0u32;
    let mut calls = Vec::new();
    let mut misrouted = 0u64;
    let mut reported = 0.0;
    loop {
        let u: f64 = rng.random::<f64>().max(1e-12);
        t += -u.ln() / peak;
        if t >= total {
            break;
        }
        let accept = w.tickets_per_hour / 3600.0
            * burst_factor(&w.bursts, Duration::from_secs_f64(t))
            / peak;
        if rng.random::<f64>() >= accept {
            continue;
        }
        let mut pick = rng.random::<f64>() * mix_total;
        let mut category = 0;
        for (i, (n, _)) in pools.iter().enumerate() {
            let share = w.mix.get(n).copied().unwrap_or(0.0);
            if pick < share {
                category = i;
                break;
            }
            pick -= share;
        }
        let routed_to = if pools.len() > 1 && rng.random_bool(w.misroute_probability) {
            misrouted += 1;
            (category + 1 + rng.random_range(0..pools.len() - 1)) % pools.len()
        } else {
            category
        };
        let needs_human = rng.random_bool(w.needs_human_fraction);
        let difficulty = if needs_human {
            rng.random_range(0.6..1.0)
        } else {
            rng.random_range(0.0..0.55)
        };
        let ticket = Ticket {
            id,
            at_ms: (t * 1000.0) as u64,
            routed_to,
            category,
            high: rng.random_bool(w.high_priority_fraction),
            difficulty,
            needs_human,
        };
        id += 1;
        tokio::time::sleep_until(start + Duration::from_secs_f64(t)).await;
        if t / total - reported >= 0.005 {
            reported = t / total;
            progress(reported);
        }
        let entry = entry.clone();
        let sla = if ticket.high { w.sla_high.0 } else { w.sla.0 };
        calls.push(tokio::spawn(async move {
            let outcome = entry.call(ticket.clone()).await;
            (ticket, start.elapsed(), sla, outcome.ok())
        }));
    }
    let generated = u64::from(id);
    tokio::time::sleep_until(start + s.duration.0).await;
    progress(1.0);
    let mut top = TopReport::default();
    let mut latencies = Vec::new();
    let mut sla_breaches = 0u64;
    for c in calls {
        let Ok((ticket, done_at, sla, outcome)) = c.await else {
            continue;
        };
        if ticket.needs_human {
            top.critical_events += 1;
        }
        let took = done_at.saturating_sub(Duration::from_millis(ticket.at_ms));
        latencies.push(took.as_secs_f64() * 1000.0);
        if took > sla {
            sla_breaches += 1;
        }
        match outcome {
            Some(Outcome::Escalated { .. }) => {
                top.alerts += 1;
                lock(&rec).alert(done_at);
                if ticket.needs_human {
                    top.true_alerts += 1;
                } else {
                    top.false_alarms += 1;
                }
            }
            _ if ticket.needs_human => top.missed_criticals += 1,
            _ => {}
        }
    }
    let (tree, shared) = (h.tree(), h.shared());
    let report = h.shutdown(Duration::from_secs(24 * 3600)).await;
    let teams: BTreeMap<String, TeamLoad> = {
        let r = lock(&rec);
        pools
            .iter()
            .map(|(n, _)| (n.clone(), r.teams.get(n).cloned().unwrap_or_default()))
            .collect()
    };
    let finished = h_summary(&report, tree, &shared);
    let mut out = assemble(s, &finished, rec, top, latencies, generated);
    out.support = Some(SupportReport {
        teams,
        sla_breaches,
        misrouted,
    });
    Ok(out)
}
