//! Pipelines run each request through their stages in order: the output of one stage
//! is the input of the next.
//!
//! One pipeline uses all four kinds of stage — an agent, a plain async function, a
//! router (broadcast to three reviewers, folded with `Gather::reduce`) and a team whose
//! lead forwards the work to its report — and ends with an agent that answers
//! `Verdict::Done`, which passes its input through unchanged. Every stage appends its
//! name, so the output spells the order the stages ran in; the run's report lists every
//! stage, once, done on the first attempt.
//!
//! Many runs are in flight at once: 200 concurrent calls each get their own output, and
//! stages work concurrently on different runs (a gate in stage 2 holds run A while run B
//! goes through stage 1; with a function stage holding A, B overtakes A entirely).

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use echelon::prelude::*;
use echelon::{PipelineHandle, StageStatus};
use support::{idle, within};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

#[derive(Clone, Debug, PartialEq)]
struct Doc {
    id: u32,
    /// Hold this run at the gate of the gated pipelines.
    hold: bool,
    trail: Vec<String>,
}

impl Doc {
    fn new(id: u32) -> Self {
        Doc {
            id,
            hold: false,
            trail: Vec::new(),
        }
    }

    fn held(id: u32) -> Self {
        Doc {
            hold: true,
            ..Doc::new(id)
        }
    }

    fn with(mut self, step: impl Into<String>) -> Self {
        self.trail.push(step.into());
        self
    }
}

/// Appends its name and replies with the result.
struct Append(&'static str);

impl Agent for Append {
    type Msg = Doc;
    async fn handle(&mut self, _ctx: &mut Ctx<Doc>, doc: Doc) -> Result<Verdict<Doc>, AgentError> {
        Ok(Verdict::Reply(doc.with(self.0)))
    }
}

/// A router worker: appends `reviewer/<index>`.
struct Reviewer;

impl Agent for Reviewer {
    type Msg = Doc;
    async fn handle(&mut self, ctx: &mut Ctx<Doc>, doc: Doc) -> Result<Verdict<Doc>, AgentError> {
        let me = format!("reviewer/{}", ctx.index());
        Ok(Verdict::Reply(doc.with(me)))
    }
}

/// The team stage's lead: appends its name and forwards the work to its report.
struct QaLead;

impl Agent for QaLead {
    type Msg = Doc;
    async fn handle(&mut self, ctx: &mut Ctx<Doc>, doc: Doc) -> Result<Verdict<Doc>, AgentError> {
        let to = ctx
            .agent("qa-check/0")
            .map_err(|e| AgentError::reject(e.to_string()))?;
        Ok(Verdict::Forward {
            to,
            msg: doc.with("qa-lead"),
        })
    }
}

/// Counts what it sees and answers `Done`: the run's output is its input.
struct Stamp {
    seen: Arc<AtomicUsize>,
}

impl Agent for Stamp {
    type Msg = Doc;
    async fn handle(&mut self, _ctx: &mut Ctx<Doc>, _doc: Doc) -> Result<Verdict<Doc>, AgentError> {
        self.seen.fetch_add(1, Ordering::SeqCst);
        Ok(Verdict::Done)
    }
}

const STAGES: [&str; 5] = ["draft", "lint", "review", "qa", "stamp"];

/// Agent → function → router (broadcast + reduce) → team (lead forwards) → agent (Done).
async fn four_kinds(seen: Arc<AtomicUsize>) -> PipelineHandle<Doc> {
    let review = Router::builder("review")
        .workers("reviewer", 3, |_| Reviewer)
        .route(Route::Broadcast)
        // in worker order: keep the first answer, add each other reviewer's step
        .gather(Gather::reduce(|mut a: Doc, b: Doc| {
            a.trail.extend(b.trail.last().cloned());
            a
        }));
    let p = Pipeline::builder("docs")
        .stage(Stage::agent("draft", |_| Append("draft")))
        .stage(Stage::function("lint", |doc: Doc| async move {
            Ok(doc.with("lint"))
        }))
        .stage(Stage::router(review))
        .stage(Stage::team(
            "qa",
            vec![
                Tier::new("qa-lead", 1, |_| QaLead),
                Tier::new("qa-check", 1, |_| Append("qa-check")),
            ],
        ))
        .stage(Stage::agent("stamp", move |_| Stamp { seen: seen.clone() }))
        .spawn();
    within(5, "spawn the pipeline", p)
        .await
        .expect("the pipeline spawns")
}

fn expected(id: u32) -> Doc {
    [
        "draft",
        "lint",
        "reviewer/0",
        "reviewer/1",
        "reviewer/2",
        "qa-lead",
        "qa-check",
    ]
    .into_iter()
    .fold(Doc::new(id), Doc::with)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_stage_takes_the_previous_stages_output() {
    let seen = Arc::new(AtomicUsize::new(0));
    let p = four_kinds(seen.clone()).await;

    let report = within(5, "one run", p.call(Doc::new(7))).await.unwrap();

    // the output spells the order the stages ran in; the last stage (Done) passed its
    // input through unchanged
    assert_eq!(report.result, Ok(expected(7)), "{report:#?}");
    assert_eq!(seen.load(Ordering::SeqCst), 1, "the Done stage ran once");
    let names: Vec<&str> = report.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, STAGES);
    for s in &report.stages {
        assert_eq!(s.attempts, 1, "{s:?}");
        assert_eq!(s.status, StageStatus::Done, "{s:?}");
        assert_eq!(s.spent, 0, "no budget, nothing spent: {s:?}");
        assert!(s.elapsed <= report.elapsed, "{s:?} within the run");
    }
    assert_eq!(report.spent, 0);

    // as a task: the run completes at the pipeline with the last stage's output
    match within(5, "the run as a task", p.outcome(Doc::new(8)))
        .await
        .unwrap()
    {
        Outcome::Completed { reply, by, .. } => {
            assert_eq!(reply, Some(expected(8)));
            assert_eq!(by.as_str(), "docs/pipeline/0");
        }
        other => panic!("expected the run to complete, got {other:?}"),
    }

    let c = idle(p.hierarchy(), 5).await;
    assert!(c.is_balanced(), "{c:?}");
    assert_eq!(c.failed + c.escalated, 0, "{c:?}");
    let report = within(5, "shutdown", p.shutdown(Duration::from_secs(5))).await;
    assert!(
        report.drained && report.counters.is_balanced(),
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_runs_in_flight_each_get_their_own_output() {
    const RUNS: u32 = 200;
    let seen = Arc::new(AtomicUsize::new(0));
    let p = Arc::new(four_kinds(seen.clone()).await);

    let mut calls = JoinSet::new();
    for id in 0..RUNS {
        let p = p.clone();
        calls.spawn(async move { (id, p.call(Doc::new(id)).await) });
    }
    let mut done = vec![false; RUNS as usize];
    while let Some(joined) = within(5, "the concurrent runs", calls.join_next()).await {
        let (id, report) = joined.expect("the caller task");
        let report = report.expect("the pipeline takes the run");
        assert_eq!(report.result, Ok(expected(id)), "run {id}: {report:#?}");
        assert!(
            report
                .stages
                .iter()
                .all(|s| s.attempts == 1 && s.status == StageStatus::Done),
            "run {id}: {report:#?}"
        );
        assert!(!done[id as usize], "run {id} reported twice");
        done[id as usize] = true;
    }
    assert!(done.iter().all(|d| *d), "every run reported");
    assert_eq!(seen.load(Ordering::SeqCst), RUNS as usize);

    let c = idle(p.hierarchy(), 5).await;
    assert!(c.is_balanced(), "{c:?}");
    assert_eq!(c.failed + c.escalated, 0, "{c:?}");
    // each run is a task, and so is each branch it sends to a stage node: draft, the
    // router request and its three reviewer branches, the team, and stamp (the function
    // stage runs inside the run and the lead's forward keeps its task)
    assert_eq!(c.submitted, u64::from(RUNS) * 8, "{c:?}");
    assert_eq!(c.completed, c.submitted, "{c:?}");
}

/// Events from inside the gated pipelines.
#[derive(Debug, PartialEq)]
enum Ev {
    /// Stage 1 finished with run `id`.
    First(u32),
    /// Run `id` waits at the gate.
    Held(u32),
    /// Stage 2 let run `id` through.
    Passed(u32),
}

/// Stage 1 reports each run it handles.
struct First {
    ev: mpsc::UnboundedSender<Ev>,
}

impl Agent for First {
    type Msg = Doc;
    async fn handle(&mut self, _ctx: &mut Ctx<Doc>, doc: Doc) -> Result<Verdict<Doc>, AgentError> {
        let _ = self.ev.send(Ev::First(doc.id));
        Ok(Verdict::Reply(doc.with("first")))
    }
}

/// Stage 2 holds a run marked `hold` until the gate opens.
struct Gate {
    gate: Arc<Semaphore>,
    ev: mpsc::UnboundedSender<Ev>,
}

impl Agent for Gate {
    type Msg = Doc;
    async fn handle(&mut self, _ctx: &mut Ctx<Doc>, doc: Doc) -> Result<Verdict<Doc>, AgentError> {
        if doc.hold {
            let _ = self.ev.send(Ev::Held(doc.id));
            self.gate
                .acquire()
                .await
                .map_err(|e| AgentError::reject(e.to_string()))?
                .forget();
        }
        let _ = self.ev.send(Ev::Passed(doc.id));
        Ok(Verdict::Reply(doc.with("gate")))
    }
}

async fn next(events: &mut mpsc::UnboundedReceiver<Ev>) -> Ev {
    within(5, "a stage event", events.recv())
        .await
        .expect("the event channel is open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stages_work_on_different_runs_at_the_same_time() {
    let gate = Arc::new(Semaphore::new(0));
    let (tx, mut events) = mpsc::unbounded_channel();
    let (tx1, tx2, g) = (tx.clone(), tx.clone(), gate.clone());
    let p = within(
        5,
        "spawn the pipeline",
        Pipeline::builder("gated")
            .stage(Stage::agent("first", move |_| First { ev: tx1.clone() }))
            .stage(Stage::agent("gate", move |_| Gate {
                gate: g.clone(),
                ev: tx2.clone(),
            }))
            .stage(Stage::function("last", |doc: Doc| async move {
                Ok(doc.with("last"))
            }))
            .spawn(),
    )
    .await
    .unwrap();
    let p = Arc::new(p);

    let pa = p.clone();
    let run_a = tokio::spawn(async move { pa.call(Doc::held(1)).await });
    assert_eq!(next(&mut events).await, Ev::First(1));
    assert_eq!(next(&mut events).await, Ev::Held(1));

    // run A is inside stage 2; run B goes through stage 1 meanwhile
    let pb = p.clone();
    let run_b = tokio::spawn(async move { pb.call(Doc::new(2)).await });
    assert_eq!(next(&mut events).await, Ev::First(2));
    assert!(!run_a.is_finished(), "run A is still held in stage 2");

    gate.add_permits(1);
    let a = within(5, "run A", run_a).await.unwrap().unwrap();
    let b = within(5, "run B", run_b).await.unwrap().unwrap();
    let want = |d: Doc| d.with("first").with("gate").with("last");
    assert_eq!(a.result, Ok(want(Doc::held(1))), "{a:#?}");
    assert_eq!(b.result, Ok(want(Doc::new(2))), "{b:#?}");
    // stage 2 is one agent: it took A, then B, in mailbox order
    assert_eq!(next(&mut events).await, Ev::Passed(1));
    assert_eq!(next(&mut events).await, Ev::Passed(2));

    let c = idle(p.hierarchy(), 5).await;
    assert!(c.is_balanced(), "{c:?}");
    assert_eq!(c.failed, 0, "{c:?}");
    drop(tx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_run_overtakes_a_run_held_in_a_function_stage() {
    let gate = Arc::new(Semaphore::new(0));
    let (tx, mut events) = mpsc::unbounded_channel();
    let (tx1, tx2, g) = (tx.clone(), tx.clone(), gate.clone());
    let p = within(
        5,
        "spawn the pipeline",
        Pipeline::builder("overtake")
            .stage(Stage::agent("first", move |_| First { ev: tx1.clone() }))
            .stage(Stage::function("wait", move |doc: Doc| {
                let (gate, ev) = (g.clone(), tx2.clone());
                async move {
                    if doc.hold {
                        let _ = ev.send(Ev::Held(doc.id));
                        gate.acquire()
                            .await
                            .map_err(|e| StageError::Permanent(e.to_string()))?
                            .forget();
                    }
                    Ok(doc.with("wait"))
                }
            }))
            .stage(Stage::agent("last", |_| Append("last")))
            .spawn(),
    )
    .await
    .unwrap();
    let p = Arc::new(p);

    let pa = p.clone();
    let run_a = tokio::spawn(async move { pa.call(Doc::held(1)).await });
    assert_eq!(next(&mut events).await, Ev::First(1));
    assert_eq!(next(&mut events).await, Ev::Held(1));

    // a function stage runs inside each run: B passes A and finishes first
    let b = within(5, "run B", p.call(Doc::new(2))).await.unwrap();
    assert_eq!(
        b.result,
        Ok(Doc::new(2).with("first").with("wait").with("last"))
    );
    assert!(!run_a.is_finished(), "run A is still held in stage 2");

    gate.add_permits(1);
    let a = within(5, "run A", run_a).await.unwrap().unwrap();
    assert_eq!(
        a.result,
        Ok(Doc::held(1).with("first").with("wait").with("last"))
    );
    let c = idle(p.hierarchy(), 5).await;
    assert!(c.is_balanced(), "{c:?}");
    drop(tx);
}
