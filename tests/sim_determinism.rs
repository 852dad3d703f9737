//! A simulation is repeatable: the same scenario and seed give the same report, field
//! for field, except `wall_ms` (real time); the file's own seed is the default; and a
//! different seed gives different counts. Checked for both models (healthcare and
//! support), and for the fault storm, where injected panics, restarts and backoff give
//! non-determinism the most room. Scenarios are shrunk (hours, not a day) so each run is
//! fast.

use std::path::Path;
use std::time::Duration;

use echelon::sim::scenario::Span;
use echelon::sim::{simulate, Report, Scenario};
use serde_json::Value;

/// `scenarios/NAME.toml`, shortened to `hours` and (healthcare) `monitors` patients.
fn shrunk(name: &str, hours: u64, monitors: usize) -> Scenario {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("scenarios/{name}.toml"));
    let mut s = Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
    s.duration = Span(Duration::from_secs(hours * 3600));
    if s.healthcare.is_some() {
        s.tiers.last_mut().expect("a scenario has tiers").count = monitors;
    }
    s
}

fn run(s: &Scenario, seed: Option<u64>) -> Report {
    let mut progress = Vec::new();
    let r =
        simulate(s, seed, &mut |p| progress.push(p)).unwrap_or_else(|e| panic!("{}: {e}", s.name));
    assert!(
        progress.windows(2).all(|w| w[0] <= w[1]),
        "progress goes forward"
    );
    assert_eq!(progress.last().copied(), Some(1.0), "progress ends at 1");
    r
}

/// The report as JSON, without the one non-deterministic field.
fn json_without_wall(r: &Report) -> Value {
    let mut v = serde_json::to_value(r).expect("a report serialises");
    let obj = v.as_object_mut().expect("a report is a JSON object");
    assert!(obj.remove("wall_ms").is_some(), "the report has wall_ms");
    v
}

/// Paths where two JSON values differ (at most `limit`), for a readable failure.
fn differences(a: &Value, b: &Value, path: &str, out: &mut Vec<String>, limit: usize) {
    if out.len() >= limit || a == b {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, va) in x {
                let p = format!("{path}.{k}");
                match y.get(k) {
                    Some(vb) => differences(va, vb, &p, out, limit),
                    None => out.push(format!("{p}: only in the first")),
                }
            }
            for k in y.keys().filter(|k| !x.contains_key(*k)) {
                out.push(format!("{path}.{k}: only in the second"));
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                differences(va, vb, &format!("{path}[{i}]"), out, limit);
            }
        }
        _ => out.push(format!("{path}: {a} vs {b}")),
    }
}

fn assert_same_except_wall(a: &Report, b: &Report, what: &str) {
    let (ja, jb) = (json_without_wall(a), json_without_wall(b));
    let mut diff = Vec::new();
    differences(&ja, &jb, "report", &mut diff, 20);
    assert!(
        diff.is_empty(),
        "{what}: two runs differ:\n  {}",
        diff.join("\n  ")
    );
    // and as structs, with wall_ms zeroed: nothing the JSON leaves out differs either
    let (mut a, mut b) = (a.clone(), b.clone());
    a.wall_ms = 0.0;
    b.wall_ms = 0.0;
    assert_eq!(a, b, "{what}: the reports differ");
}

/// The counts a different seed should move.
fn counts(r: &Report) -> (u64, u64, Vec<u64>, String, String) {
    (
        r.events_generated,
        r.events_processed,
        r.tiers.iter().map(|t| t.escalations).collect(),
        format!("{:?}", r.top),
        format!("{:?}", r.latency),
    )
}

fn check_model(s: &Scenario) {
    let a = run(s, Some(1234));
    let b = run(s, Some(1234));
    assert_same_except_wall(&a, &b, &s.name);
    assert_eq!(a.seed, 1234, "the report records the seed used");
    // something happened: a run that does nothing is trivially repeatable
    assert!(a.events_processed > 0, "{}: no events", s.name);
    assert!(a.top.alerts > 0, "{}: nothing left the top", s.name);
    assert!(
        a.accounting.balanced && a.accounting.lost == 0,
        "{}: {:?}",
        s.name,
        a.accounting
    );

    // no seed: the file's
    let file_seed = run(s, None);
    assert_eq!(file_seed.seed, s.seed);
    assert_same_except_wall(&file_seed, &run(s, Some(s.seed)), &s.name);

    // other seeds: other counts, and each pair differs
    let others = [run(s, Some(1235)), run(s, Some(99_999))];
    let all = [&a, &others[0], &others[1]];
    for i in 0..all.len() {
        for j in i + 1..all.len() {
            assert_ne!(
                counts(all[i]),
                counts(all[j]),
                "{}: seeds {} and {} give the same counts",
                s.name,
                all[i].seed,
                all[j].seed
            );
        }
    }
}

#[test]
fn healthcare_same_seed_same_report_other_seed_other_counts() {
    check_model(&shrunk("healthcare", 6, 200));
}

#[test]
fn support_same_seed_same_report_other_seed_other_counts() {
    let s = shrunk("support", 6, 0);
    check_model(&s);
    let a = run(&s, Some(5));
    let b = run(&s, Some(6));
    assert_ne!(
        a.events_generated, b.events_generated,
        "ticket arrivals depend on the seed"
    );
    assert!(a.support.is_some(), "a support run reports its teams");
}

#[test]
fn fault_storm_is_repeatable_with_panics_restarts_and_backoff() {
    let s = shrunk("healthcare_fault_storm", 4, 200);
    let a = run(&s, Some(77));
    assert!(
        a.supervision.restarts > 0 && a.supervision.redelivered > 0,
        "the storm injects faults: {:?}",
        a.supervision
    );
    let b = run(&s, Some(77));
    assert_same_except_wall(&a, &b, &s.name);
    let c = run(&s, Some(78));
    assert_ne!(
        (counts(&a), a.supervision.restarts),
        (counts(&c), c.supervision.restarts)
    );
}

#[test]
fn runs_on_parallel_threads_agree() {
    // each run has its own runtime: concurrent runs in one process do not interfere
    let s = shrunk("healthcare", 3, 150);
    let reports: Vec<Report> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..3).map(|_| scope.spawn(|| run(&s, Some(8)))).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a run does not panic"))
            .collect()
    });
    assert_same_except_wall(&reports[0], &reports[1], "thread 0 vs 1");
    assert_same_except_wall(&reports[0], &reports[2], "thread 0 vs 2");
}
