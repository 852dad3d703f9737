//! `cargo run --example hierarchy`
//!
//! A three-level hierarchy (decision → diagnostic → monitor) handling readings,
//! escalating the serious ones with an audit trail, and restarting a monitor that
//! panics — with the crashed reading redelivered to the fresh incarnation.

use std::time::Duration;

use echelon::prelude::*;

#[derive(Clone, Debug)]
enum Ward {
    /// An SpO2 reading for a patient.
    Reading { patient: usize, spo2: f64 },
    /// A reading the monitor's firmware chokes on (it panics the first time).
    Garbled { patient: usize },
    /// A diagnostic's finding, passed up to the decision tier.
    Finding { patient: usize, detail: String },
}

struct Monitor;

impl Agent for Monitor {
    type Msg = Ward;

    async fn handle(
        &mut self,
        ctx: &mut Ctx<Ward>,
        msg: Ward,
    ) -> Result<Verdict<Ward>, AgentError> {
        match msg {
            Ward::Reading { patient, spo2 } if spo2 < 0.92 => Ok(Verdict::escalate(
                (0.92 - spo2) * 10.0,
                format!("SpO2 {:.0}% for patient {patient}", spo2 * 100.0),
                msg,
            )),
            Ward::Reading { .. } => Ok(Verdict::Done),
            Ward::Garbled { patient } if ctx.attempt() == 1 => {
                panic!("monitor firmware could not parse a reading for patient {patient}")
            }
            Ward::Garbled { .. } => Ok(Verdict::Done),
            Ward::Finding { .. } => Err(AgentError::reject("monitors take readings only")),
        }
    }
}

struct Diagnostic;

impl Agent for Diagnostic {
    type Msg = Ward;

    async fn handle(
        &mut self,
        ctx: &mut Ctx<Ward>,
        msg: Ward,
    ) -> Result<Verdict<Ward>, AgentError> {
        let severity = ctx.escalation().map_or(0.0, |e| e.severity);
        match msg {
            Ward::Reading { patient, spo2 } if spo2 < 0.85 => Ok(Verdict::escalate(
                severity.max(0.9),
                "hypoxaemia: intervention needed",
                Ward::Finding {
                    patient,
                    detail: format!("SpO2 {:.0}%", spo2 * 100.0),
                },
            )),
            _ => Ok(Verdict::Done),
        }
    }
}

struct Decision;

impl Agent for Decision {
    type Msg = Ward;

    async fn handle(
        &mut self,
        _ctx: &mut Ctx<Ward>,
        msg: Ward,
    ) -> Result<Verdict<Ward>, AgentError> {
        match msg {
            Ward::Finding {
                ref patient,
                ref detail,
            } => {
                let reason = format!("page the rapid response team: patient {patient}, {detail}");
                Ok(Verdict::escalate(1.0, reason, msg))
            }
            _ => Ok(Verdict::Done),
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ward = Hierarchy::builder("ward")
        .span(SpanOfControl::auto_split(8))
        .escalation(Threshold::severity(0.3).suppress_repeats(Duration::from_secs(60)))
        .restart(
            Strategy::OneForOne,
            Intensity::at_most(5).per(Duration::from_secs(10)),
        )
        .max_attempts(3)
        .seed(7)
        .tier("decision", 1, |_| Decision)
        .tier("diagnostic", 4, |_| Diagnostic)
        .tier("monitor", 40, |_| Monitor)
        .spawn()
        .await?;

    println!("supervision tree (depth {}):", ward.tree().depth());
    let mut lines = 0;
    ward.tree().walk(&mut |n, d| {
        if d <= 4 && lines < 14 {
            println!("  {:indent$}{} ({:?})", "", n.path, n.role, indent = d * 2);
            lines += 1;
        }
    });
    println!("  …");

    let mut alerts = ward.escalations();
    let monitors = ward.tier("monitor")?;
    for (patient, m) in monitors.iter().enumerate() {
        for k in 0..50 {
            let spo2 = 0.97 - 0.001 * k as f64;
            m.send(Ward::Reading { patient, spo2 })?;
        }
    }
    // two patients deteriorate, one mildly (absorbed below threshold at diagnostic)
    monitors[3].send(Ward::Reading {
        patient: 3,
        spo2: 0.80,
    })?;
    monitors[3].send(Ward::Reading {
        patient: 3,
        spo2: 0.79,
    })?; // a repeat: folded
    monitors[17].send(Ward::Reading {
        patient: 17,
        spo2: 0.83,
    })?;
    monitors[25].send(Ward::Reading {
        patient: 25,
        spo2: 0.90,
    })?;
    // a reading that crashes its monitor once
    let outcome = monitors[9].call(Ward::Garbled { patient: 9 }).await?;
    let m9 = monitors[9].counters();
    println!(
        "\ngarbled reading for patient 9: monitor {} panicked, was restarted {} time(s) and the \
         reading redelivered {} time(s); outcome: {outcome:?}",
        monitors[9].path(),
        m9.restarts,
        m9.redelivered
    );

    let counters = ward
        .wait_idle(Duration::from_secs(5))
        .await
        .map_err(|c| format!("still in flight: {c:?}"))?;

    println!("\nescalations that left the top:");
    while let Some(e) = alerts.try_recv() {
        println!(
            "- {} (severity {:.2}) from {}: {:?}",
            e.reason, e.severity, e.origin, e.payload
        );
        for step in &e.trail {
            println!(
                "    {:>8.3?} L{} {:<40} {:?} {:?}",
                step.at,
                step.level,
                step.path.as_str(),
                step.role,
                step.decision
            );
        }
    }
    println!("\ncounters: {counters:#?}");
    let report = ward.shutdown(Duration::from_secs(5)).await;
    println!(
        "\nshutdown: drained={} balanced={} (submitted {} = completed {} + escalated {} + failed {})",
        report.drained,
        report.counters.is_balanced(),
        report.counters.submitted,
        report.counters.completed,
        report.counters.escalated,
        report.counters.failed
    );
    Ok(())
}
