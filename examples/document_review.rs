//! `cargo run --release --example document_review`
//!
//! A hybrid flow: a pipeline whose stages are an agent, routers and a supervised team.
//!
//! discovery (agent)
//!   → checks (router: broadcast to privilege, PII and relevance checkers, gather all)
//!   → privilege vote (router: three reviewers vote where the privilege check was unsure,
//!     majority wins)
//!   → redaction (a supervised team: a lead that hands each document to one of three
//!     redactors; one redactor crashes on a document once and is restarted, and the
//!     document is redelivered)
//!   → QA (a plain async function, retried with backoff)
//!
//! Prints one document's full run report, then timings per stage over the batch.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use echelon::prelude::*;
use echelon::{RunReport, StageStatus};
use rand::Rng;

#[derive(Clone, Debug, Default)]
struct Doc {
    id: u32,
    text: String,
    /// Privilege verdict and whether the checker was sure.
    privileged: Option<(bool, bool)>,
    pii: Vec<String>,
    relevant: Option<bool>,
    redacted: Option<String>,
    log: Vec<String>,
}

/// Some simulated work: a few hundred microseconds to a couple of milliseconds.
async fn work(ctx: &mut Ctx<Doc>, max_us: u64) {
    let us = ctx.rng().random_range(100..max_us);
    tokio::time::sleep(Duration::from_micros(us)).await;
}

struct Discovery;
impl Agent for Discovery {
    type Msg = Doc;
    async fn handle(&mut self, ctx: &mut Ctx<Doc>, mut d: Doc) -> Result<Verdict<Doc>, AgentError> {
        work(ctx, 800).await;
        d.text = format!(
            "doc {} from counsel@firm.example re: merger; call 555-01{:02}",
            d.id,
            d.id % 100
        );
        d.log.push("discovered".into());
        Ok(Verdict::Reply(d))
    }
}

/// One checker per concern; each fills in its own field.
struct Checker(usize);
impl Agent for Checker {
    type Msg = Doc;
    async fn handle(&mut self, ctx: &mut Ctx<Doc>, mut d: Doc) -> Result<Verdict<Doc>, AgentError> {
        work(ctx, 1500).await;
        match self.0 {
            0 => {
                let privileged = d.text.contains("counsel");
                let sure = d.id % 4 != 0; // every fourth document is ambiguous
                d.privileged = Some((privileged, sure));
                d.log
                    .push(format!("privilege: {privileged} (sure: {sure})"));
            }
            1 => {
                d.pii = d
                    .text
                    .split_whitespace()
                    .filter(|w| w.contains('@') || w.starts_with("555-"))
                    .map(str::to_string)
                    .collect();
                d.log.push(format!("pii: {} item(s)", d.pii.len()));
            }
            _ => {
                d.relevant = Some(d.text.contains("merger"));
                d.log.push("relevance checked".into());
            }
        }
        Ok(Verdict::Reply(d))
    }
}

/// Merge the three checkers' partial documents into one.
fn merge(parts: Vec<Doc>) -> Doc {
    let mut out = Doc::default();
    for p in parts {
        out.id = p.id;
        out.text = p.text;
        out.privileged = out.privileged.or(p.privileged);
        if !p.pii.is_empty() {
            out.pii = p.pii;
        }
        out.relevant = out.relevant.or(p.relevant);
        for l in p.log {
            if !out.log.contains(&l) {
                out.log.push(l);
            }
        }
    }
    out
}

/// A privilege reviewer: agrees with a sure checker, otherwise judges by itself.
struct Reviewer(usize);
impl Agent for Reviewer {
    type Msg = Doc;
    async fn handle(&mut self, ctx: &mut Ctx<Doc>, mut d: Doc) -> Result<Verdict<Doc>, AgentError> {
        let vote = match d.privileged {
            Some((p, true)) => p,
            _ => {
                work(ctx, 2000).await;
                // reviewers 0 and 1 lean privileged, reviewer 2 does not
                self.0 < 2 || ctx.rng().random_bool(0.2)
            }
        };
        d.privileged = Some((vote, true));
        d.log
            .push(format!("privilege vote by reviewer {}: {vote}", self.0));
        Ok(Verdict::Reply(d))
    }
}

/// The redaction team's lead: hands each document to one of its redactors.
struct RedactionLead;
impl Agent for RedactionLead {
    type Msg = Doc;
    async fn handle(&mut self, ctx: &mut Ctx<Doc>, d: Doc) -> Result<Verdict<Doc>, AgentError> {
        let to = ctx.agent(&format!("redactor/{}", d.id % 3))?;
        Ok(Verdict::Forward { to, msg: d })
    }
}

struct Redactor {
    crash_once: Arc<AtomicBool>,
}
impl Agent for Redactor {
    type Msg = Doc;
    async fn handle(&mut self, ctx: &mut Ctx<Doc>, mut d: Doc) -> Result<Verdict<Doc>, AgentError> {
        work(ctx, 1200).await;
        if d.id == 7 && self.crash_once.swap(false, Ordering::SeqCst) {
            panic!("redactor {} choked on document 7", ctx.index());
        }
        let mut text = d.text.clone();
        if d.privileged.is_some_and(|(p, _)| p) {
            text = format!("[PRIVILEGED — withheld] {}", text.len());
        }
        for item in &d.pii {
            text = text.replace(item, "[REDACTED]");
        }
        d.redacted = Some(text);
        d.log.push(format!(
            "redacted by {} (incarnation {})",
            ctx.path(),
            ctx.incarnation()
        ));
        Ok(Verdict::Reply(d))
    }
}

async fn qa(mut d: Doc) -> Result<Doc, StageError> {
    let Some(text) = &d.redacted else {
        return Err(StageError::Permanent("nothing was redacted".into()));
    };
    if d.pii.iter().any(|p| text.contains(p.as_str())) {
        return Err(StageError::Permanent(format!(
            "PII left in document {}",
            d.id
        )));
    }
    d.log.push("QA passed".into());
    Ok(d)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let crash_once = Arc::new(AtomicBool::new(true));
    let redaction_team = vec![
        Tier::new("redaction-lead", 1, |_| RedactionLead),
        Tier::new("redactor", 3, move |_| Redactor {
            crash_once: crash_once.clone(),
        }),
    ];
    let review =
        Pipeline::builder("review")
            .seed(11)
            .max_attempts(2) // a crashing stage agent gets its document redelivered once
            .deadline(Duration::from_secs(5))
            .stage(Stage::agent("discovery", |_| Discovery).timeout(Duration::from_secs(1)))
            .stage(Stage::router(
                Router::builder("checks")
                    .workers("checker", 3, Checker)
                    .route(Route::Broadcast)
                    .gather(Gather::all(merge))
                    .deadline(Duration::from_secs(1)),
            ))
            .stage(Stage::router(
                Router::builder("privilege-vote")
                    .workers("reviewer", 3, Reviewer)
                    .route(Route::Broadcast)
                    .gather(Gather::majority(|d: &Doc| {
                        format!("{:?}", d.privileged.map(|(p, _)| p))
                    })),
            ))
            .stage(Stage::team("redaction", redaction_team).timeout(Duration::from_secs(1)))
            .stage(Stage::function("qa", qa).retry(
                Retry::attempts(3).backoff(Duration::from_millis(1), Duration::from_millis(10)),
            ))
            .spawn()
            .await?;

    println!("supervision tree:\n{}", review.hierarchy().tree());

    // one document in detail
    let report = review
        .call(Doc {
            id: 4,
            ..Doc::default()
        })
        .await?;
    print_report(&report);

    // a batch, concurrently
    let review = Arc::new(review);
    let started = std::time::Instant::now();
    let runs: Vec<_> = (0..200u32)
        .map(|id| {
            let review = review.clone();
            tokio::spawn(async move {
                review
                    .call(Doc {
                        id,
                        ..Doc::default()
                    })
                    .await
            })
        })
        .collect();
    let mut per_stage: BTreeMap<usize, (String, Vec<Duration>, u32)> = BTreeMap::new();
    let mut ok = 0;
    let mut failed = Vec::new();
    let mut doc7 = None;
    for (id, run) in runs.into_iter().enumerate() {
        let report = run.await??;
        match &report.result {
            Ok(d) => {
                ok += 1;
                if id == 7 {
                    doc7 = Some(d.log.clone());
                }
            }
            Err(e) => failed.push(format!("doc {id}: {e}")),
        }
        for (i, s) in report.stages.iter().enumerate() {
            let e = per_stage
                .entry(i)
                .or_insert_with(|| (s.name.clone(), Vec::new(), 0));
            e.1.push(s.elapsed);
            e.2 = e.2.max(s.attempts);
        }
    }
    let wall = started.elapsed();
    println!(
        "\n200 documents in {wall:.2?}: {ok} reviewed, {} failed",
        failed.len()
    );
    for f in &failed {
        println!("  {f}");
    }
    println!(
        "\n{:<16} {:>10} {:>10} {:>10} {:>12}",
        "stage", "p50", "p95", "max", "max attempts"
    );
    for (_, (name, mut times, attempts)) in per_stage {
        times.sort();
        let q = |p: f64| times[((times.len() - 1) as f64 * p) as usize];
        println!(
            "{:<16} {:>10.2?} {:>10.2?} {:>10.2?} {:>12}",
            name,
            q(0.5),
            q(0.95),
            times[times.len() - 1],
            attempts
        );
    }
    if let Some(log) = doc7 {
        println!("\ndocument 7 (its redactor crashed once and was restarted):");
        for l in log {
            println!("  {l}");
        }
    }
    let Ok(review) = Arc::try_unwrap(review) else {
        return Err("a run still holds the pipeline".into());
    };
    let report = review.shutdown(Duration::from_secs(5)).await;
    let c = report.counters;
    println!(
        "\ncounters: {} tasks submitted (runs and their branches) = {} completed + {} escalated + {} failed; restarts {}, redelivered {}; balanced: {}",
        c.submitted,
        c.completed,
        c.escalated,
        c.failed,
        c.restarts,
        c.redelivered,
        c.is_balanced()
    );
    Ok(())
}

fn print_report(r: &RunReport<Doc>) {
    println!("document 4, end to end in {:.2?}:", r.elapsed);
    for s in &r.stages {
        let status = match &s.status {
            StageStatus::Done => "done".to_string(),
            other => format!("{other:?}"),
        };
        println!(
            "  {:<16} {:>10.2?}  attempts {}  {}",
            s.name, s.elapsed, s.attempts, status
        );
    }
    match &r.result {
        Ok(d) => {
            println!("  output: {:?}", d.redacted);
            for l in &d.log {
                println!("    · {l}");
            }
        }
        Err(e) => println!("  failed: {e}"),
    }
}
