//! `cargo run --release --example healthcare_monitoring`
//!
//! Healthcare monitoring in three tiers, on the runtime's virtual clock (six simulated
//! hours in well under a second):
//!
//! - tier 3, vitals monitors, one per patient: heart rate, SpO2, blood pressure,
//!   temperature and the medication schedule, turned into a severity per reading;
//! - tier 2, diagnostic agents: correlate each patient's findings over 30 minutes
//!   (falling SpO2 with a rising heart rate; a missed dose followed by a pressure spike);
//! - tier 1, decision agents: alert staff (the escalation leaves the top) or log it.
//!
//! 300 patients, a reading every 5 minutes, three of them deteriorating. Prints every
//! staff alert with why it was raised and its audit trail, then the counters.

use std::time::Duration;

use echelon::prelude::*;
use echelon::sim::healthcare::{Decision, Diagnostic, Monitor, Reading, Ward};
use echelon::sim::scenario::Span;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const PATIENTS: u32 = 300;
const HOURS: u64 = 6;
const EVERY: Duration = Duration::from_secs(300);

/// Vitals for `patient` at minute `m`: steady, except for three deteriorating patients.
fn vitals(patient: u32, m: u64, rng: &mut StdRng) -> Reading {
    let mut r = Reading {
        patient,
        at_ms: m * 60_000,
        hr: 74.0 + rng.random_range(-6.0..6.0),
        spo2: 97.0 + rng.random_range(-1.0..1.5),
        sbp: 121.0 + rng.random_range(-9.0..9.0),
        temp: 36.8 + rng.random_range(-0.3..0.3),
        missed_dose: false,
        episode: None,
    };
    let since = |start: u64| m.saturating_sub(start) as f32 / 60.0; // hours into it
    match patient {
        // hypoxia from 1h: SpO2 falls, heart rate climbs
        17 if m >= 60 => {
            let x = since(60).min(1.0);
            r.spo2 -= 14.0 * x;
            r.hr += 55.0 * x;
        }
        // missed dose at 2h, then a blood-pressure spike
        142 if m >= 120 => {
            r.missed_dose = m < 135;
            r.sbp += 80.0 * since(120).min(1.0);
        }
        // a mild fever that never becomes critical
        233 if m >= 180 => r.temp += 0.9 * since(180).min(1.0),
        _ => {}
    }
    r
}

#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ward = Hierarchy::builder("ward")
        .span(SpanOfControl::auto_split(8))
        .restart(
            Strategy::OneForOne,
            Intensity::at_most(10).per(Duration::from_secs(60)),
        )
        .seed(3)
        .tier_with(
            Tier::new("decision", 1, |_| {
                Decision::new(0.7, Duration::from_secs(20))
            })
            .escalate_at(Threshold::severity(0.7).suppress_repeats(Duration::from_secs(3600))),
        )
        .tier_with(
            Tier::new("diagnostic", 6, |_| {
                Diagnostic::new(0.55, Duration::from_secs(60))
            })
            .escalate_at(Threshold::severity(0.55).suppress_repeats(Duration::from_secs(1800))),
        )
        .tier_with(
            Tier::new("monitor", PATIENTS as usize, |_| Monitor::new(0.15))
                .escalate_at(Threshold::severity(0.3)),
        )
        .spawn()
        .await?;
    let tree = ward.tree();
    println!(
        "ward: {} patients, hierarchy depth {} ({} nodes)",
        PATIENTS,
        tree.depth(),
        {
            let mut n = 0;
            tree.walk(&mut |_, _| n += 1);
            n
        }
    );

    let mut alerts = ward.escalations();
    let monitors = ward.tier("monitor")?;
    let mut rng = StdRng::seed_from_u64(11);
    let start = tokio::time::Instant::now();
    let mut readings = 0;
    for step in 0..(HOURS * 3600 / EVERY.as_secs()) {
        let minute = step * EVERY.as_secs() / 60;
        tokio::time::sleep_until(start + Duration::from_secs(minute * 60)).await;
        for p in 0..PATIENTS {
            monitors[p as usize].send(Ward::Reading(vitals(p, minute, &mut rng)))?;
            readings += 1;
        }
    }
    let report = ward.shutdown(Duration::from_secs(3600)).await;

    println!("{readings} readings over {HOURS} simulated hours\n");
    let mut n = 0;
    while let Some(alert) = alerts.recv().await {
        n += 1;
        println!(
            "ALERT {n}: {} (severity {:.2})",
            alert.reason, alert.severity
        );
        println!("  first seen by {}", alert.origin);
        for step in &alert.trail {
            println!(
                "  {:>8} L{} {:<44} {:<10} {:?}",
                Span(step.at).to_string(),
                step.level,
                step.path.as_str(),
                format!("{:?}", step.role),
                step.decision
            );
        }
        println!();
    }
    let c = report.counters;
    println!(
        "{} staff alerts; {} escalation steps, {} kept below thresholds, {} folded as repeats",
        c.escalated, c.escalated_up, c.absorbed, c.suppressed
    );
    println!(
        "accounting: submitted {} = completed {} + escalated {} + failed {} ({})",
        c.submitted,
        c.completed,
        c.escalated,
        c.failed,
        if c.is_balanced() {
            "balanced"
        } else {
            "NOT BALANCED"
        }
    );
    Ok(())
}
