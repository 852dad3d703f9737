//! What every simulated agent shares: service time, slow agents, outages, injected
//! panics, and the recorder of what happened when.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::Rng;

use super::scenario::Scenario;
use crate::Ctx;

/// Counts per time bucket, filled by the agents as they decide.
#[derive(Debug)]
pub(crate) struct Recorder {
    pub(crate) bucket: Duration,
    /// Escalations per bucket per tier.
    pub(crate) escalations: Vec<Vec<u64>>,
    /// Alerts (out of the top) per bucket.
    pub(crate) alerts: Vec<u64>,
    pub(crate) processed: u64,
    /// Support model: load per pool.
    pub(crate) teams: std::collections::BTreeMap<String, super::report::TeamLoad>,
    tiers: usize,
}

impl Recorder {
    /// A recorder nobody reads, for agents used outside a simulation.
    pub(crate) fn unused() -> Self {
        Recorder {
            bucket: Duration::from_secs(3600),
            escalations: vec![vec![0; 1]; 1],
            alerts: vec![0],
            processed: 0,
            teams: Default::default(),
            tiers: 1,
        }
    }

    pub(crate) fn new(s: &Scenario) -> Self {
        let n = (s.duration.0.as_secs_f64() / s.bucket.0.as_secs_f64())
            .ceil()
            .max(1.0) as usize;
        Recorder {
            bucket: s.bucket.0,
            escalations: vec![vec![0; s.tiers.len()]; n],
            alerts: vec![0; n],
            processed: 0,
            teams: Default::default(),
            tiers: s.tiers.len(),
        }
    }

    fn slot(&self, at: Duration) -> usize {
        let i = (at.as_secs_f64() / self.bucket.as_secs_f64()) as usize;
        i.min(self.alerts.len().saturating_sub(1))
    }

    pub(crate) fn escalation(&mut self, tier: usize, at: Duration) {
        let b = self.slot(at);
        if tier < self.tiers {
            self.escalations[b][tier] += 1;
        }
    }

    pub(crate) fn alert(&mut self, at: Duration) {
        let b = self.slot(at);
        self.alerts[b] += 1;
    }
}

pub(crate) type Rec = Arc<Mutex<Recorder>>;

pub(crate) fn lock(rec: &Rec) -> MutexGuard<'_, Recorder> {
    rec.lock().unwrap_or_else(|e| e.into_inner())
}

/// Per-tier behaviour every model agent applies before its own logic.
#[derive(Debug)]
pub(crate) struct TierSim {
    pub(crate) index: usize,
    pub(crate) service: Duration,
    pub(crate) decide_at: f64,
    /// Agents with index below this get `slow_extra`.
    pub(crate) slow_below: usize,
    pub(crate) slow_extra: Duration,
    /// Outage windows (from, to) in time since the start.
    pub(crate) outages: Vec<(Duration, Duration)>,
    pub(crate) panic_probability: f64,
    pub(crate) rec: Rec,
}

impl TierSim {
    /// No faults, the given service time and decision rule: for agents used outside a
    /// simulation (the examples).
    pub(crate) fn standalone(decide_at: f64, service: Duration) -> Arc<TierSim> {
        Arc::new(TierSim {
            index: 0,
            service,
            decide_at,
            slow_below: 0,
            slow_extra: Duration::ZERO,
            outages: Vec::new(),
            panic_probability: 0.0,
            rec: Arc::new(Mutex::new(Recorder::unused())),
        })
    }

    pub(crate) fn for_tiers(s: &Scenario, rec: &Rec) -> Vec<Arc<TierSim>> {
        s.tiers
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let slow = s.faults.slow.iter().find(|f| f.tier == t.name);
                Arc::new(TierSim {
                    index: i,
                    service: t.service_time.0,
                    decide_at: t.decide_at,
                    slow_below: slow.map_or(0, |f| (f.fraction * t.count as f64).round() as usize),
                    slow_extra: slow.map_or(Duration::ZERO, |f| f.extra.0),
                    outages: s
                        .faults
                        .outages
                        .iter()
                        .filter(|o| o.tier == t.name)
                        .map(|o| (o.at.0, o.at.0 + o.duration.0))
                        .collect(),
                    panic_probability: s.faults.panic_probability,
                    rec: rec.clone(),
                })
            })
            .collect()
    }

    /// Wait out an outage, take the service time, maybe panic (injected fault).
    pub(crate) async fn work<M: crate::Message>(&self, ctx: &mut Ctx<M>) {
        let now = ctx.now();
        if let Some(&(_, to)) = self
            .outages
            .iter()
            .find(|(from, to)| now >= *from && now < *to)
        {
            tokio::time::sleep(to - now).await;
        }
        let mut t = self.service;
        if ctx.index() < self.slow_below {
            t += self.slow_extra;
        }
        if !t.is_zero() {
            tokio::time::sleep(t).await;
        }
        if self.panic_probability > 0.0 && ctx.rng().random_bool(self.panic_probability) {
            panic!("injected fault in {}", ctx.path());
        }
    }

    pub(crate) fn escalated(&self, at: Duration) {
        lock(&self.rec).escalation(self.index, at);
    }
}
