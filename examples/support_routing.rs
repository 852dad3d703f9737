//! `cargo run --release --example support_routing`
//!
//! A support desk on the runtime's virtual clock (a simulated working day in well
//! under a second):
//!
//! - a manager (a classify router) reads each ticket and routes it to the billing,
//!   technical or sales pool (each a least-loaded router over its specialists);
//! - specialists resolve, or escalate by confidence and customer priority;
//! - tier 2 resolves part of what reaches it and hands the rest to a human queue (the
//!   escalation leaves the top).
//!
//! 1,500 tickets; prints per-team load, escalation rates, the human queue and SLA
//! breaches.

use std::collections::BTreeMap;
use std::time::Duration;

use echelon::prelude::*;
use echelon::sim::support::{Specialist, Ticket, TierTwo};
use echelon::Role;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const POOLS: [(&str, usize); 3] = [("billing", 3), ("technical", 5), ("sales", 2)];
const TICKETS: u32 = 1_500;

/// The manager's keywords would pick the pool; here a ticket says which it is about,
/// and one in twenty lands in the wrong pool.
fn ticket(id: u32, at_ms: u64, rng: &mut StdRng) -> Ticket {
    let category = match rng.random_range(0..100) {
        0..40 => 0,
        40..85 => 1,
        _ => 2,
    };
    let routed_to = if rng.random_bool(0.05) {
        (category + 1) % POOLS.len()
    } else {
        category
    };
    let needs_human = rng.random_bool(0.08);
    Ticket {
        id,
        at_ms,
        routed_to,
        category,
        high: rng.random_bool(0.15),
        difficulty: if needs_human {
            rng.random_range(0.6..1.0)
        } else {
            rng.random_range(0.0..0.55)
        },
        needs_human,
    }
}

#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut desk = Router::builder("desk")
        .route(Route::classify(|t: &Ticket| t.routed_to))
        .gather(Gather::first());
    for (i, (name, n)) in POOLS.iter().enumerate() {
        let pool = Router::builder(*name)
            .route(Route::LeastLoaded)
            .worker_tier(
                Tier::new("specialist", *n, move |_| {
                    Specialist::new(i, *name, 0.6, Duration::from_secs(180))
                })
                .escalate_at(Threshold::severity(0.5)),
            )
            .into_tier(1);
        desk = desk.worker_tier(pool);
    }
    let support = Hierarchy::builder("support")
        .seed(5)
        .tier_with(
            Tier::new("tier2", 1, |_| TierTwo::new(0.6, Duration::from_secs(120)))
                .escalate_at(Threshold::severity(0.6)),
        )
        .tier_with(desk.into_tier(1))
        .spawn()
        .await?;
    let entry = support.agent("desk/0")?;
    let mut humans = support.escalations();

    // tickets arrive over 12 hours (about two a minute); each is a call, so we know when
    // and how it ended
    let mut rng = StdRng::seed_from_u64(8);
    let start = tokio::time::Instant::now();
    let mut calls = Vec::new();
    for id in 0..TICKETS {
        let at = Duration::from_millis(id as u64 * 12 * 3_600_000 / TICKETS as u64);
        tokio::time::sleep_until(start + at).await;
        let t = ticket(id, at.as_millis() as u64, &mut rng);
        let entry = entry.clone();
        calls.push(tokio::spawn(async move {
            let sla = if t.high {
                Duration::from_secs(3600)
            } else {
                Duration::from_secs(8 * 3600)
            };
            let outcome = entry.call(t.clone()).await;
            (t, start.elapsed(), sla, outcome)
        }));
    }

    let mut per_pool: BTreeMap<&str, (u32, u32)> = BTreeMap::new(); // (tickets, escalated)
    let (mut to_humans, mut breaches, mut missed, mut needless) = (0, 0, 0, 0);
    for c in calls {
        let (t, done, sla, outcome) = c.await?;
        let pool = POOLS[t.routed_to].0;
        let entry = per_pool.entry(pool).or_default();
        entry.0 += 1;
        if done - Duration::from_millis(t.at_ms) > sla {
            breaches += 1;
        }
        match outcome? {
            Outcome::Escalated { .. } => {
                to_humans += 1;
                entry.1 += 1;
                if !t.needs_human {
                    needless += 1;
                }
            }
            _ if t.needs_human => missed += 1,
            _ => {}
        }
    }
    println!("{TICKETS} tickets over 12 simulated hours\n");
    println!("{:<10} {:>8} {:>16}", "pool", "tickets", "reached a human");
    for (pool, (n, up)) in &per_pool {
        println!(
            "{pool:<10} {n:>8} {up:>9} ({:.1}%)",
            100.0 * *up as f64 / *n as f64
        );
    }
    let specialists: Vec<_> = support
        .node_counters()
        .into_iter()
        .filter(|(p, r, _)| *r == Role::Agent && p.as_str().contains("/specialist/"))
        .collect();
    let escalated_by_specialists: u64 = specialists.iter().map(|(_, _, c)| c.escalated_up).sum();
    println!(
        "\nspecialists ({}): {} tickets escalated to tier 2",
        specialists.len(),
        escalated_by_specialists
    );
    println!("human queue: {to_humans} tickets ({needless} did not need a human)");
    println!("tickets that needed a human but were resolved below: {missed}");
    println!("SLA breaches (1h high priority, 8h normal): {breaches}");
    if let Some(first) = humans.try_recv() {
        println!("\nthe first ticket handed to a human: {}", first.reason);
        for s in &first.trail {
            println!("  L{} {:<48} {:?}", s.level, s.path.as_str(), s.decision);
        }
    }
    let report = support.shutdown(Duration::from_secs(3600)).await;
    println!(
        "\naccounting: submitted {} (tickets and their branches) = completed {} + escalated {} + failed {} ({})",
        report.counters.submitted,
        report.counters.completed,
        report.counters.escalated,
        report.counters.failed,
        if report.counters.is_balanced() { "balanced" } else { "NOT BALANCED" }
    );
    Ok(())
}
