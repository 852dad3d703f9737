//! The healthcare model: vitals monitors → diagnostic agents → decision agents → staff.
//!
//! Each patient has deterioration *episodes* (a Poisson process, denser in bursts) of
//! one kind — hypoxia (falling SpO2, rising heart rate), a hypertensive crisis after a
//! missed dose, or fever — that are truly critical or not (ground truth the agents never
//! see). Monitors turn each reading into a severity; diagnostic agents correlate a
//! patient's findings over a window; decision agents alert staff. What leaves the top is
//! scored against the ground truth: true alerts, false alarms, missed criticals.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::model::TierSim;
use super::scenario::{Burst, HealthcareWorkload};
use crate::{Agent, AgentError, Ctx, Escalation, Verdict};

/// A vital-signs condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Condition {
    /// Falling SpO2 with a rising heart rate.
    Hypoxia,
    /// Blood pressure spike, often after a missed dose.
    Hypertension,
    /// Raised temperature.
    Fever,
}

impl Condition {
    fn name(self) -> &'static str {
        match self {
            Condition::Hypoxia => "hypoxia",
            Condition::Hypertension => "hypertensive crisis",
            Condition::Fever => "fever",
        }
    }
}

/// The ward's messages.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum Ward {
    /// A reading from one patient's monitor.
    Reading(Reading),
    /// An abnormality, passed up the tiers.
    Finding(Finding),
}

/// One set of vital signs.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct Reading {
    /// The patient.
    pub patient: u32,
    /// When it was taken (ms since the start).
    pub at_ms: u64,
    /// Heart rate, bpm.
    pub hr: f32,
    /// Oxygen saturation, %.
    pub spo2: f32,
    /// Systolic blood pressure, mmHg.
    pub sbp: f32,
    /// Temperature, °C.
    pub temp: f32,
    /// A scheduled dose was missed.
    pub missed_dose: bool,
    /// Ground truth (scoring only; agents do not read it).
    pub episode: Option<u32>,
}

/// An abnormality and how bad it looks.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Finding {
    /// The patient.
    pub patient: u32,
    /// What it looks like.
    pub condition: Condition,
    /// How bad, 0..1.
    pub severity: f64,
    /// The reading that started it (ms since the start).
    pub first_ms: u64,
    /// Ground truth (scoring only).
    pub episode: Option<u32>,
}

/// A deterioration episode: ground truth.
#[derive(Clone, Debug)]
pub(crate) struct Episode {
    pub(crate) patient: u32,
    pub(crate) start_ms: u64,
    pub(crate) end_ms: u64,
    pub(crate) critical: bool,
    pub(crate) condition: Condition,
    pub(crate) peak: f32,
}

fn clamp01(x: f64) -> f64 {
    x.clamp(0.0, 1.0)
}

/// Severity of a reading per condition, and the worst.
pub(crate) fn assess(r: &Reading) -> (Condition, f64) {
    let hypoxia =
        clamp01((96.0 - r.spo2 as f64) / 14.0).max(0.7 * clamp01((r.hr as f64 - 95.0) / 60.0));
    let hyper = clamp01((r.sbp as f64 - 135.0) / 70.0) + if r.missed_dose { 0.15 } else { 0.0 };
    let fever = clamp01((r.temp as f64 - 37.5) / 3.0);
    let mut best = (Condition::Hypoxia, hypoxia);
    for c in [
        (Condition::Hypertension, clamp01(hyper)),
        (Condition::Fever, fever),
    ] {
        if c.1 > best.1 {
            best = c;
        }
    }
    best
}

/// The frontline: one per patient. Turns a reading into a severity and escalates a
/// finding when it reaches its rule (`decide_at`).
#[derive(Debug)]
pub struct Monitor {
    pub(crate) sim: Arc<TierSim>,
}

impl Monitor {
    /// A monitor that escalates findings with severity `>= decide_at`.
    pub fn new(decide_at: f64) -> Self {
        Monitor {
            sim: TierSim::standalone(decide_at, Duration::ZERO),
        }
    }
}

impl Agent for Monitor {
    type Msg = Ward;
    async fn handle(
        &mut self,
        ctx: &mut Ctx<Ward>,
        msg: Ward,
    ) -> Result<Verdict<Ward>, AgentError> {
        self.sim.work(ctx).await;
        let Ward::Reading(r) = msg else {
            return Err(AgentError::reject("a monitor takes readings"));
        };
        super::model::lock(&self.sim.rec).processed += 1;
        let (condition, severity) = assess(&r);
        if severity < self.sim.decide_at {
            return Ok(Verdict::Done);
        }
        self.sim.escalated(ctx.now());
        let finding = Finding {
            patient: r.patient,
            condition,
            severity,
            first_ms: r.at_ms,
            episode: r.episode,
        };
        let reason = format!("{} for patient {}", condition.name(), r.patient);
        Ok(Verdict::from(
            Escalation::new(severity, reason, Ward::Finding(finding))
                .with_key(format!("{}/{:?}", r.patient, condition)),
        ))
    }
}

/// Middle tiers: correlate each patient's findings over a 30-minute window of event
/// time; repeated findings and related conditions (falling SpO2 with a rising heart
/// rate, a missed dose then a pressure spike) raise the severity.
#[derive(Debug)]
pub struct Diagnostic {
    pub(crate) sim: Arc<TierSim>,
    pub(crate) window: Duration,
    recent: HashMap<u32, VecDeque<(u64, Condition, f64)>>,
}

impl Diagnostic {
    /// A diagnostic agent that escalates a correlated severity `>= decide_at`, taking
    /// `service` (runtime clock) per finding.
    pub fn new(decide_at: f64, service: Duration) -> Self {
        Diagnostic::with_sim(TierSim::standalone(decide_at, service))
    }

    pub(crate) fn with_sim(sim: Arc<TierSim>) -> Self {
        Diagnostic {
            sim,
            window: Duration::from_secs(30 * 60),
            recent: HashMap::new(),
        }
    }
}

impl Agent for Diagnostic {
    type Msg = Ward;
    async fn handle(
        &mut self,
        ctx: &mut Ctx<Ward>,
        msg: Ward,
    ) -> Result<Verdict<Ward>, AgentError> {
        self.sim.work(ctx).await;
        let Ward::Finding(mut f) = msg else {
            return Ok(Verdict::Done);
        };
        // event time: when the reading was taken, not when it is handled
        let now = f.first_ms;
        let w = self.window.as_millis() as u64;
        let q = self.recent.entry(f.patient).or_default();
        while q
            .front()
            .is_some_and(|(t, _, _)| now.saturating_sub(*t) > w)
        {
            q.pop_front();
        }
        q.push_back((now, f.condition, f.severity));
        // corroboration: repeated findings and related conditions raise the severity
        let same = q.iter().filter(|(_, c, _)| *c == f.condition).count();
        let kinds = {
            let mut k: Vec<Condition> = q.iter().map(|(_, c, _)| *c).collect();
            k.sort_by_key(|c| *c as u8);
            k.dedup();
            k.len()
        };
        let max = q.iter().map(|(_, _, s)| *s).fold(0.0, f64::max);
        let combined =
            clamp01(max + 0.02 * (same.min(5) as f64 - 1.0) + 0.1 * (kinds as f64 - 1.0));
        if combined < self.sim.decide_at {
            return Ok(Verdict::Done);
        }
        f.severity = combined;
        self.sim.escalated(ctx.now());
        let reason = format!("{} pattern for patient {}", f.condition.name(), f.patient);
        let key = format!("{}/{:?}", f.patient, f.condition);
        Ok(Verdict::from(
            Escalation::new(combined, reason, Ward::Finding(f)).with_key(key),
        ))
    }
}

/// The top tier: alerts staff (escalates out of the top) for a severity `>= decide_at`,
/// logs the rest.
#[derive(Debug)]
pub struct Decision {
    pub(crate) sim: Arc<TierSim>,
}

impl Decision {
    /// A decision agent alerting at `decide_at`, taking `service` per finding.
    pub fn new(decide_at: f64, service: Duration) -> Self {
        Decision {
            sim: TierSim::standalone(decide_at, service),
        }
    }
}

impl Agent for Decision {
    type Msg = Ward;
    async fn handle(
        &mut self,
        ctx: &mut Ctx<Ward>,
        msg: Ward,
    ) -> Result<Verdict<Ward>, AgentError> {
        self.sim.work(ctx).await;
        let Ward::Finding(f) = msg else {
            return Ok(Verdict::Done);
        };
        if f.severity < self.sim.decide_at {
            return Ok(Verdict::Done);
        }
        self.sim.escalated(ctx.now());
        let reason = format!(
            "alert staff: {} for patient {}",
            f.condition.name(),
            f.patient
        );
        let key = format!("{}/{:?}", f.patient, f.condition);
        Ok(Verdict::from(
            Escalation::new(f.severity, reason, Ward::Finding(f)).with_key(key),
        ))
    }
}

/// Rate multiplier at `t` from the bursts.
pub(crate) fn burst_factor(bursts: &[Burst], t: Duration) -> f64 {
    bursts
        .iter()
        .filter(|b| t >= b.at.0 && t < b.at.0 + b.duration.0)
        .map(|b| b.multiplier)
        .fold(1.0, |acc, m| acc * m)
}

/// Ground-truth episodes for every patient, in id order.
pub(crate) fn episodes(
    w: &HealthcareWorkload,
    patients: u32,
    duration: Duration,
    seed: u64,
) -> Vec<Episode> {
    let mut out = Vec::new();
    let day = 86_400.0;
    let peak_rate = w.episodes_per_patient_day / day
        * w.bursts.iter().map(|b| b.multiplier).fold(1.0, f64::max);
    if peak_rate <= 0.0 {
        return out;
    }
    let len = w.episode_length.0.as_millis() as u64;
    for p in 0..patients {
        let mut rng = StdRng::seed_from_u64(seed ^ 0xE915_0DE5 ^ (u64::from(p) << 20));
        let mut t = 0.0f64;
        loop {
            let u: f64 = rng.random::<f64>().max(1e-12);
            t += -u.ln() / peak_rate;
            if t >= duration.as_secs_f64() {
                break;
            }
            let base = w.episodes_per_patient_day / day;
            let accept = base * burst_factor(&w.bursts, Duration::from_secs_f64(t)) / peak_rate;
            if rng.random::<f64>() >= accept {
                continue;
            }
            let critical = rng.random_bool(w.critical_fraction);
            let condition = match rng.random_range(0..3) {
                0 => Condition::Hypoxia,
                1 => Condition::Hypertension,
                _ => Condition::Fever,
            };
            let peak = if critical {
                rng.random_range(0.65..1.0)
            } else {
                rng.random_range(0.1..0.55)
            };
            let start_ms = (t * 1000.0) as u64;
            out.push(Episode {
                patient: p,
                start_ms,
                end_ms: start_ms + len,
                critical,
                condition,
                peak,
            });
        }
    }
    out.sort_by_key(|e| (e.start_ms, e.patient));
    out
}

/// A reading of `patient` at `at_ms`, given its current episode (if any).
pub(crate) fn reading(
    patient: u32,
    at_ms: u64,
    episode: Option<(u32, &Episode)>,
    artifact_rate: f64,
    rng: &mut StdRng,
) -> Reading {
    let mut r = Reading {
        patient,
        at_ms,
        hr: 75.0 + rng.random_range(-6.0..6.0),
        spo2: 97.0 + rng.random_range(-1.0..1.5),
        sbp: 120.0 + rng.random_range(-10.0..10.0),
        temp: 36.8 + rng.random_range(-0.3..0.3),
        missed_dose: false,
        episode: None,
    };
    let apply = |condition: Condition, intensity: f32, r: &mut Reading| match condition {
        Condition::Hypoxia => {
            r.spo2 -= 15.0 * intensity;
            r.hr += 60.0 * intensity;
        }
        Condition::Hypertension => {
            r.sbp += 75.0 * intensity;
            r.missed_dose = intensity > 0.3;
        }
        Condition::Fever => {
            r.temp += 3.2 * intensity;
            r.hr += 25.0 * intensity;
        }
    };
    if let Some((id, e)) = episode {
        let x = (at_ms - e.start_ms) as f32 / (e.end_ms - e.start_ms).max(1) as f32;
        // deteriorates to its peak within the first quarter of the episode
        let ramp = (4.0 * x).min(1.0);
        let noise = rng.random_range(0.85..1.1);
        apply(e.condition, e.peak * ramp * noise, &mut r);
        r.episode = Some(id);
    } else if artifact_rate > 0.0 && rng.random_bool(artifact_rate) {
        let condition = match rng.random_range(0..3) {
            0 => Condition::Hypoxia,
            1 => Condition::Hypertension,
            _ => Condition::Fever,
        };
        apply(condition, rng.random_range(0.3..0.9), &mut r);
    }
    r
}
