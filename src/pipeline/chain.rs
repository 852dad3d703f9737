//! The chained fast path: a run travels from stage to stage as **one task**.
//!
//! The coordinator (`actor.rs`) drives a run from a task of its own and sends each
//! stage a branch it waits for: every hop is a round trip through the coordinator.
//! A pipeline whose stages need nothing from a coordinator (see
//! [`PipelineConfig::chainable`](super::PipelineConfig::chainable)) runs chained
//! instead: the lead hands the run to stage 1, and the run's own task goes from each
//! stage's mailbox to the next one's, carrying its continuation, a [`Link`], in the
//! task head's boxed metadata. Only where the run ends is the caller answered and the
//! outcome counted.
//!
//! The hops are not new code paths through the agents: a stage agent ends its task
//! with `Shared::complete` or `Shared::fail_as` as usual, and those two look for a
//! link first ([`TaskHead::in_chain`]): a completion becomes the hop to the next
//! stage, a failure ends the run naming the stage. (An agent's verdict on a chained
//! task with no escalation on it goes to [`stage_done`] directly, the same hop without
//! the detour.) A stage's escalation still goes to
//! the pipeline team's supervisor (threshold, suppression) and, accepted, to the
//! pipeline's lead, which ends the run as escalated ([`stage_escalated`]); absorbed or
//! suppressed, it completes the stage with its input unchanged, as in the coordinator.
//! A task lost with a killed stage actor is accounted by the supervisor as usual; the
//! link's `Drop` then answers the caller, naming the stage.
//!
//! Exactly one answer: the caller's ports (reply, detail report) sit in the link, or,
//! when the run has a deadline, behind a mutex shared with the run's deadline timer;
//! whoever takes them answers. Exactly one outcome in the counters: the run is one
//! task, submitted at the pipeline and counted there once when it ends (as failed when
//! the deadline answered the caller first), or, lost with a killed stage actor, counted
//! failed at that stage by its supervisor. Each stage counts the run as enqueued and
//! settled, as it does a forwarded task.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use super::actor::{Entry, PipelineShared};
use super::{RunError, RunReport, StageReport, StageStatus};
use crate::accounting::bump;
use crate::address::Slot;
use crate::budget::Budget;
use crate::envelope::{
    AuditEntry, BranchEscalation, Decision, Detail, Failure, FailureKind, Outcome, Reply, Task,
    TaskHead, TaskId,
};
use crate::hierarchy::shared::Shared;
use crate::lead::LeadNode;
use crate::node::NodeMsg;
use crate::panic::CatchUnwind;
use crate::pipeline::StageError;

/// Where a chained pipeline sits, known once its lead has started.
pub(crate) struct Home<M> {
    pub(crate) shared: Weak<Shared<M>>,
    pub(crate) slot: Arc<Slot<M>>,
    pub(crate) escalate_to: Arc<Slot<M>>,
}

/// A chained run's continuation, carried in its task's metadata from stage to stage.
///
/// `repr(C)`, what every hop reads first (the stage, the pipeline, the input, whether
/// the caller wants a per-stage report): see [`crate::envelope::TaskMeta`]'s layout.
#[repr(C)]
pub(crate) struct Link<M> {
    /// The stage that holds the task.
    stage: usize,
    p: Arc<PipelineShared<M>>,
    /// A copy of that stage's input: `Verdict::Done` and an absorbed escalation pass
    /// the input on unchanged.
    input: Option<M>,
    caller: Caller<M>,
    id: TaskId,
    /// The run's own `branch` flag (a run may be a branch of an outer router or
    /// pipeline), restored when the run escalates.
    was_branch: bool,
}

/// Where the run's caller waits (named apart from `envelope::Answer`, what a caller's
/// channel carries).
enum Caller<M> {
    /// `None` once answered.
    Direct(Option<Ports<M>>),
    /// The run has a deadline: its timer may answer first.
    Watched(Arc<Watch<M>>),
}

/// What the caller waits on.
#[repr(C)]
struct Ports<M> {
    /// The per-stage report, kept only when the caller asked for it (boxed: a hop
    /// looks at whether it is there, and most runs have none).
    tally: Option<Box<Tally>>,
    reply: Option<Reply<M>>,
    detail: Option<oneshot::Sender<Detail<M>>>,
}

struct Tally {
    started: Instant,
    stage_started: Instant,
    spent_before: u64,
    stages: Vec<StageReport>,
}

/// A run with a deadline: its ports, shared with its timer.
struct Watch<M> {
    deadline: Instant,
    limit: Duration,
    answered: AtomicBool,
    /// The stage that holds the task, for the timer's report.
    stage: AtomicUsize,
    tallied: bool,
    /// The run's budget, for the timer's report.
    budget: Option<Arc<Budget>>,
    ports: Mutex<Option<Ports<M>>>,
    /// The run's task ended: the timer can go.
    done: Notify,
}

impl<M> Watch<M> {
    fn lock(&self) -> MutexGuard<'_, Option<Ports<M>>> {
        self.ports.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(&self) -> Option<Ports<M>> {
        let p = self.lock().take();
        if p.is_some() {
            self.answered.store(true, Ordering::Release);
        }
        p
    }
}

/// How a run ends.
enum End<M> {
    Output(M),
    Failed {
        err: RunError,
        kind: FailureKind,
        status: StageStatus,
    },
}

fn spent(budget: Option<&Arc<Budget>>) -> u64 {
    budget.map_or(0, |b| b.spent())
}

impl Tally {
    fn new<M>(p: &PipelineShared<M>, now: Instant) -> Self {
        Tally {
            started: now,
            stage_started: now,
            spent_before: 0,
            stages: p
                .stages
                .iter()
                .map(|s| StageReport {
                    name: s.name.clone(),
                    attempts: 0,
                    elapsed: Duration::ZERO,
                    spent: 0,
                    status: StageStatus::NotRun,
                })
                .collect(),
        }
    }

    fn open(&mut self, i: usize, spent: u64) {
        self.stage_started = Instant::now();
        self.spent_before = spent;
        if let Some(s) = self.stages.get_mut(i) {
            s.attempts = 1;
        }
    }

    fn close(&mut self, i: usize, spent: u64, status: StageStatus) {
        let elapsed = self.stage_started.elapsed();
        if let Some(s) = self.stages.get_mut(i) {
            s.elapsed = elapsed;
            s.spent = spent.saturating_sub(self.spent_before);
            s.status = status;
        }
    }
}

impl<M: crate::Message> Link<M> {
    fn name(&self, i: usize) -> String {
        self.p
            .stages
            .get(i)
            .map(|s| s.name.clone())
            .unwrap_or_default()
    }

    /// The caller's ports, to answer them; `None` if the deadline already did.
    fn take_ports(&mut self) -> Option<Ports<M>> {
        match &mut self.caller {
            Caller::Direct(p) => p.take(),
            Caller::Watched(w) => w.take(),
        }
    }

    /// No deadline and no per-stage report: a hop has nothing to record.
    #[inline]
    fn plain(&self) -> bool {
        matches!(
            &self.caller,
            Caller::Direct(Some(Ports { tally: None, .. }))
        )
    }

    fn answered(&self) -> bool {
        match &self.caller {
            Caller::Direct(p) => p.is_none(),
            Caller::Watched(w) => w.answered.load(Ordering::Acquire),
        }
    }

    #[inline]
    fn tally(&mut self, f: impl FnOnce(&mut Tally)) {
        match &mut self.caller {
            Caller::Direct(Some(Ports { tally: Some(t), .. })) => f(t),
            Caller::Direct(_) => {}
            Caller::Watched(w) => {
                if w.tallied {
                    if let Some(Ports { tally: Some(t), .. }) = w.lock().as_mut() {
                        f(t);
                    }
                }
            }
        }
    }

    fn open(&mut self, i: usize, budget: Option<&Arc<Budget>>) {
        self.stage = i;
        if let Caller::Watched(w) = &self.caller {
            w.stage.store(i, Ordering::Release);
        }
        self.tally(|t| t.open(i, spent(budget)));
    }
}

impl<M> std::fmt::Debug for Link<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("run", &self.id)
            .field("stage", &self.stage)
            .finish_non_exhaustive()
    }
}

impl<M> Drop for Link<M> {
    fn drop(&mut self) {
        let ports = match &mut self.caller {
            Caller::Direct(p) => p.take(),
            Caller::Watched(w) => {
                let p = w.take();
                w.done.notify_one();
                p
            }
        };
        // still unanswered: the task was dropped with a dead actor's mailbox (its
        // supervisor counts it as failed there); tell the caller which stage it was in
        if let Some(ports) = ports {
            let i = self.stage;
            let n = self.p.stages.len();
            let stage = self
                .p
                .stages
                .get(i)
                .map(|s| s.name.clone())
                .unwrap_or_default();
            let home = self.p.home.get();
            let stopping = home
                .and_then(|h| h.shared.upgrade())
                .is_some_and(|s| s.aborting());
            let reason = "the stage's task was lost with its actor".to_string();
            let (err, kind, status) = if stopping {
                // a stop killed the stage's actor with the task in it
                let err = RunError::Stopped { stage };
                (err, FailureKind::Stopped, StageStatus::Interrupted)
            } else {
                let err = RunError::Stage {
                    stage,
                    index: i + 1,
                    stages: n,
                    attempt: 1,
                    reason: reason.clone(),
                };
                (err, FailureKind::Lost, StageStatus::Failed(reason))
            };
            let at = home.map(|h| h.slot.path.clone());
            send_failure(ports, self.id, at, 0, Vec::new(), err, kind, i, status, 0);
        }
        // the run no longer counts toward the pipeline's capacity: wake a sender
        // waiting for room there (through the slot the pipeline holds, not a weak
        // reference to upgrade on every run)
        self.p.runs.chained_done();
        match self.p.home.get() {
            Some(home) => home.slot.wake_if_waiting(),
            None => self.p.runs.wake_room(),
        }
    }
}

/// Answer a failed run: the caller's outcome, then its report.
#[allow(clippy::too_many_arguments)]
fn send_failure<M>(
    ports: Ports<M>,
    id: TaskId,
    at: Option<crate::Path>,
    attempts: u32,
    trail: Vec<AuditEntry>,
    err: RunError,
    kind: FailureKind,
    stage: usize,
    status: StageStatus,
    spent_now: u64,
) {
    let Ports {
        reply,
        detail,
        tally,
    } = ports;
    if let (Some(tx), Some(at)) = (reply, at) {
        tx.send(Outcome::Failed(Failure {
            task: id,
            kind,
            at,
            attempts,
            reason: err.to_string(),
            trail,
        }));
    }
    if let (Some(tx), Some(mut t)) = (detail, tally) {
        t.close(stage, spent_now, status);
        let _ = tx.send(Detail::Run(RunReport {
            result: Err(err),
            elapsed: t.started.elapsed(),
            stages: t.stages,
            spent: spent_now,
        }));
    }
}

/// The lead starts a chained run: its continuation goes into the task head, and the
/// task to stage 1.
pub(crate) fn start<M: crate::Message>(
    p: &Arc<PipelineShared<M>>,
    node: &LeadNode<'_, M>,
    mut head: TaskHead<M>,
    payload: M,
) {
    let reply = head.reply.take();
    let meta = head.meta_mut();
    if meta.budget.is_none() {
        if let Some(units) = p.cfg.budget {
            meta.budget = Some(Arc::new(Budget::new(units)));
        }
    }
    let detail = meta.detail.take();
    let tally = detail
        .as_ref()
        .map(|_| Box::new(Tally::new(p, Instant::now())));
    let ports = Ports {
        reply,
        detail,
        tally,
    };
    let caller = match p.cfg.deadline {
        None => Caller::Direct(Some(ports)),
        Some(limit) => {
            let now = Instant::now();
            let w = Arc::new(Watch {
                deadline: now + limit,
                limit,
                answered: AtomicBool::new(false),
                stage: AtomicUsize::new(0),
                tallied: ports.tally.is_some(),
                budget: head.budget().cloned(),
                ports: Mutex::new(Some(ports)),
                done: Notify::new(),
            });
            node.shared
                .spawn(deadline_timer(p.clone(), w.clone(), head.id));
            Caller::Watched(w)
        }
    };
    // counted before anything can end the run, so a stop never misses it, and only
    // now that nothing before the link can panic: the link's drop lowers the count
    p.runs.start_chained();
    let link = Link {
        p: p.clone(),
        id: head.id,
        stage: 0,
        input: None,
        was_branch: head.branch,
        caller,
    };
    // the run's escalations come back to this lead as its result
    head.branch = true;
    head.meta_mut().chain = Some(link);
    enter(node.shared, node.slot, head, 0, payload);
}

/// Answers the caller at the run's deadline, unless the run ended first.
async fn deadline_timer<M: crate::Message>(
    p: Arc<PipelineShared<M>>,
    w: Arc<Watch<M>>,
    id: TaskId,
) {
    tokio::select! {
        () = tokio::time::sleep_until(w.deadline) => {}
        () = w.done.notified() => return,
    }
    let Some(ports) = w.take() else { return };
    let i = w.stage.load(Ordering::Acquire);
    let err = RunError::Deadline {
        stage: p.stages.get(i).map(|s| s.name.clone()).unwrap_or_default(),
        deadline: w.limit,
    };
    deadline_answer(&p, ports, id, i, err, w.budget.as_ref());
}

fn deadline_answer<M: crate::Message>(
    p: &PipelineShared<M>,
    ports: Ports<M>,
    id: TaskId,
    i: usize,
    err: RunError,
    budget: Option<&Arc<Budget>>,
) {
    let home = p.home.get();
    let shared = home.and_then(|h| h.shared.upgrade());
    let trail = match (home, &shared) {
        (Some(h), Some(s)) => vec![s.entry(
            &h.slot,
            Decision::Failed {
                reason: err.to_string(),
            },
        )],
        _ => Vec::new(),
    };
    let spent_now = spent(budget);
    send_failure(
        ports,
        id,
        home.map(|h| h.slot.path.clone()),
        0,
        trail,
        err,
        FailureKind::Routing,
        i,
        StageStatus::Interrupted,
        spent_now,
    );
}

fn take_link<M>(head: &mut TaskHead<M>) -> Option<Link<M>> {
    head.meta.as_mut().and_then(|m| m.chain.take())
}

/// The link of a chained task, in place.
fn link_mut<M>(head: &mut TaskHead<M>) -> Option<&mut Link<M>> {
    head.meta.as_deref_mut().and_then(|m| m.chain.as_mut())
}

/// End the run with `end` (the link comes out of the task).
fn end_with<M: crate::Message>(
    shared: &Shared<M>,
    at: &Slot<M>,
    mut head: TaskHead<M>,
    end: End<M>,
) {
    if let Some(link) = take_link(&mut head) {
        finish(shared, at, head, link, end);
    }
}

fn failed(err: RunError, kind: FailureKind, status: StageStatus) -> End<std::convert::Infallible> {
    End::Failed { err, kind, status }
}

impl End<std::convert::Infallible> {
    fn into<M>(self) -> End<M> {
        match self {
            End::Failed { err, kind, status } => End::Failed { err, kind, status },
            End::Output(never) => match never {},
        }
    }
}

/// `Shared::complete` of a chained task: the stage that held it is done; `reply` (or
/// its input, for `Verdict::Done` and an absorbed escalation) goes to the next stage.
/// The link stays in the task's metadata: a hop moves no more than the task.
pub(crate) fn stage_done<M: crate::Message>(
    shared: &Shared<M>,
    at: &Slot<M>,
    mut head: TaskHead<M>,
    reply: Option<M>,
) {
    let Some(meta) = head.meta.as_deref_mut() else {
        return;
    };
    // an escalation absorbed on the way ends with the stage
    if meta.escalation.is_some() {
        meta.escalation = None;
    }
    let Some(link) = meta.chain.as_mut() else {
        return;
    };
    let input = link.input.take();
    let Some(out) = reply.or(input) else {
        let i = link.stage;
        let reason = "echelon lost the stage's input".to_string();
        let err = stage_error(link, i, reason.clone());
        let end = failed(err, FailureKind::Lost, StageStatus::Failed(reason));
        return end_with(shared, at, head, end.into());
    };
    advance(shared, at, head, out);
}

fn stage_error<M: crate::Message>(link: &Link<M>, i: usize, reason: String) -> RunError {
    RunError::Stage {
        stage: link.name(i),
        index: i + 1,
        stages: link.p.stages.len(),
        attempt: 1,
        reason,
    }
}

/// The stage that holds the run produced `out`: on to the next stage, or the run's
/// end.
#[inline]
fn advance<M: crate::Message>(shared: &Shared<M>, at: &Slot<M>, mut head: TaskHead<M>, out: M) {
    let Some(meta) = head.meta.as_deref_mut() else {
        return;
    };
    let budget = meta.budget.as_ref();
    let Some(link) = meta.chain.as_mut() else {
        return;
    };
    let i = link.stage;
    // a refused spend anywhere in the stage ends the run
    if let Some(exceeded) = budget.and_then(|b| b.refusal()) {
        let status = StageStatus::Failed(exceeded.to_string());
        let err = RunError::Budget {
            stage: link.name(i),
            exceeded,
        };
        let end = failed(err, FailureKind::Rejected, status);
        return end_with(shared, at, head, end.into());
    }
    link.tally(|t| t.close(i, spent(budget), StageStatus::Done));
    if i + 1 >= link.p.stages.len() {
        end_with(shared, at, head, End::Output(out));
    } else {
        enter(shared, at, head, i + 1, out);
    }
}

/// Hand the run to stage `i` with `input`. `at` is where the task is now (the run ends
/// there if it cannot go on).
///
/// The common hop (no deadline, no per-stage report, no budget, an agent stage) is
/// inlined here; everything else goes through [`enter_general`].
#[inline(always)]
fn enter<M: crate::Message>(
    shared: &Shared<M>,
    at: &Slot<M>,
    mut head: TaskHead<M>,
    i: usize,
    input: M,
) {
    let Some(meta) = head.meta.as_deref_mut() else {
        return;
    };
    let unbudgeted = meta.budget.is_none();
    let Some(link) = meta.chain.as_mut() else {
        return;
    };
    if !(unbudgeted && link.plain()) {
        return enter_general(shared, at, head, i, input);
    }
    let Some(Entry::Node(slot)) = link.p.stages.get(i).map(|s| &s.entry) else {
        return enter_general(shared, at, head, i, input);
    };
    link.stage = i;
    let target = Target::of(shared, slot);
    to_node(shared, at, head, i, input, &target);
}

/// A stage's slot, borrowed from the hierarchy rather than from the run (the run
/// moves into the message), or cloned if it is not there.
enum Target<'a, M> {
    Listed(&'a Slot<M>),
    Own(Arc<Slot<M>>),
}

impl<'a, M> Target<'a, M> {
    #[inline]
    fn of(shared: &'a Shared<M>, slot: &Arc<Slot<M>>) -> Self {
        match shared.directory.all.get(slot.uid as usize) {
            Some(s) if std::ptr::eq::<Slot<M>>(&**s, &**slot) => Target::Listed(s),
            _ => Target::Own(slot.clone()),
        }
    }
}

impl<M> std::ops::Deref for Target<'_, M> {
    type Target = Slot<M>;

    fn deref(&self) -> &Slot<M> {
        match self {
            Target::Listed(s) => s,
            Target::Own(s) => s,
        }
    }
}

/// The run into agent stage `i`'s mailbox (`target`), keeping a copy of its input.
#[inline(always)]
fn to_node<M: crate::Message>(
    shared: &Shared<M>,
    at: &Slot<M>,
    mut head: TaskHead<M>,
    i: usize,
    input: M,
    target: &Slot<M>,
) {
    let Some(link) = link_mut(&mut head) else {
        return;
    };
    // user code: a panicking Clone fails the run rather than this actor
    match crate::panic::catch(|| input.clone()) {
        Ok(copy) => link.input = Some(copy),
        Err(p) => return clone_failed(shared, at, head, i, &p),
    }
    head.attempt = 0;
    let task = Task {
        head,
        payload: input,
    };
    if let Err((NodeMsg::Task(t), why)) = target.deliver(NodeMsg::Task(task)) {
        closed_stage(shared, at, t.head, i, target, &why);
    }
}

#[cold]
fn clone_failed<M: crate::Message>(
    shared: &Shared<M>,
    at: &Slot<M>,
    mut head: TaskHead<M>,
    i: usize,
    panic: &str,
) {
    if let Some(link) = link_mut(&mut head) {
        let reason = format!("cloning the stage's input {panic}");
        let err = stage_error(link, i, reason.clone());
        let end = failed(err, FailureKind::Crashed, StageStatus::Failed(reason));
        end_with(shared, at, head, end.into());
    }
}

#[cold]
fn closed_stage<M: crate::Message>(
    shared: &Shared<M>,
    at: &Slot<M>,
    mut head: TaskHead<M>,
    i: usize,
    target: &Slot<M>,
    why: &str,
) {
    if let Some(link) = link_mut(&mut head) {
        link.input = None;
        let reason = format!("stage {} is closed: {why}", target.path);
        let err = stage_error(link, i, reason.clone());
        let end = failed(err, FailureKind::Routing, StageStatus::Failed(reason));
        end_with(shared, at, head, end.into());
    }
}

/// [`enter`] for a run with a deadline, a per-stage report or a budget, or into a
/// function stage.
#[inline(never)]
fn enter_general<M: crate::Message>(
    shared: &Shared<M>,
    at: &Slot<M>,
    mut head: TaskHead<M>,
    i: usize,
    input: M,
) {
    let Some(meta) = head.meta.as_deref_mut() else {
        return;
    };
    let budget = meta.budget.as_ref();
    let Some(link) = meta.chain.as_mut() else {
        return;
    };
    if let Caller::Watched(w) = &link.caller {
        if link.answered() {
            // the deadline answered the caller; the task ends here, as a failure
            if let Some(link) = take_link(&mut head) {
                finish_quietly(at, link);
            }
            return;
        }
        if Instant::now() >= w.deadline {
            let err = RunError::Deadline {
                stage: link.name(link.stage),
                deadline: w.limit,
            };
            let end = failed(err, FailureKind::Routing, StageStatus::Interrupted);
            return end_with(shared, at, head, end.into());
        }
    }
    link.open(i, budget);
    let Some(stage) = link.p.stages.get(i) else {
        let reason = format!("the pipeline has no stage {}", i + 1);
        let err = stage_error(link, i, reason.clone());
        let end = failed(err, FailureKind::Routing, StageStatus::Failed(reason));
        return end_with(shared, at, head, end.into());
    };
    if stage.cost > 0 {
        if let Some(Err(exceeded)) = budget.map(|b| b.spend(stage.cost)) {
            let status = StageStatus::Failed(exceeded.to_string());
            let err = RunError::Budget {
                stage: link.name(i),
                exceeded,
            };
            let end = failed(err, FailureKind::Rejected, status);
            return end_with(shared, at, head, end.into());
        }
    }
    match &stage.entry {
        Entry::Node(slot) => {
            let target = Target::of(shared, slot);
            to_node(shared, at, head, i, input, &target);
        }
        Entry::Function(f) => {
            let f = f.clone();
            let home = link.p.home.get();
            match home.and_then(|h| h.shared.upgrade().map(|s| (s, h.slot.clone()))) {
                Some((shared, slot)) => {
                    let run = run_function(shared.clone(), slot, head, f, input);
                    shared.spawn(run);
                }
                None => {
                    let err = RunError::Stopped {
                        stage: link.name(i),
                    };
                    let end = failed(err, FailureKind::Stopped, StageStatus::Interrupted);
                    end_with(shared, at, head, end.into());
                }
            }
        }
    }
}

/// A function stage of a chained run, in a task of its own (so that a slow function
/// holds only its run), then on to the next stage from the pipeline's node.
async fn run_function<M: crate::Message>(
    shared: Arc<Shared<M>>,
    home: Arc<Slot<M>>,
    mut head: TaskHead<M>,
    f: super::StageFn<M>,
    input: M,
) {
    let Some(link) = link_mut(&mut head) else {
        return;
    };
    let i = link.stage;
    let runs = link.p.runs.clone();
    let deadline = match &link.caller {
        Caller::Watched(w) => Some((w.deadline, w.limit)),
        Caller::Direct(_) => None,
    };
    let attempt = async {
        // the function itself runs user code before it returns its future
        match crate::panic::catch(|| f(input)) {
            Ok(fut) => match CatchUnwind::new(fut).await {
                Ok(Ok(m)) => Ok(m),
                Ok(Err(StageError::Retryable(r) | StageError::Permanent(r))) => Err(r),
                Err(panic) => Err(panic),
            },
            Err(panic) => Err(panic),
        }
    };
    let bounded = async {
        match deadline {
            Some((at, limit)) => tokio::time::timeout_at(at, attempt)
                .await
                .map_err(|_| Some(limit)),
            None => Ok(attempt.await),
        }
    };
    let got = tokio::select! {
        got = bounded => got,
        () = runs.aborted() => Err(None),
    };
    let Some(link) = link_mut(&mut head) else {
        return;
    };
    let end = match got {
        Ok(Ok(m)) => return advance(&shared, &home, head, m),
        Ok(Err(reason)) => failed(
            stage_error(link, i, reason.clone()),
            FailureKind::Routing,
            StageStatus::Failed(reason),
        ),
        Err(Some(limit)) => failed(
            RunError::Deadline {
                stage: link.name(i),
                deadline: limit,
            },
            FailureKind::Routing,
            StageStatus::Interrupted,
        ),
        Err(None) => failed(
            RunError::Stopped {
                stage: link.name(i),
            },
            FailureKind::Stopped,
            StageStatus::Interrupted,
        ),
    };
    end_with(&shared, &home, head, end.into());
}

/// `Shared::fail_as` of a chained task: the run ends at the stage that held it.
pub(crate) fn stage_failed<M: crate::Message>(
    shared: &Shared<M>,
    at: &Slot<M>,
    mut head: TaskHead<M>,
    reason: &str,
    kind: FailureKind,
) {
    let Some(mut link) = take_link(&mut head) else {
        return;
    };
    link.input = None;
    let i = link.stage;
    let end = if let Some(exceeded) = head.budget().and_then(|b| b.refusal()) {
        End::Failed {
            status: StageStatus::Failed(exceeded.to_string()),
            err: RunError::Budget {
                stage: link.name(i),
                exceeded,
            },
            kind: FailureKind::Rejected,
        }
    } else if kind == FailureKind::Stopped && shared.aborting() {
        End::Failed {
            err: RunError::Stopped {
                stage: link.name(i),
            },
            kind: FailureKind::Stopped,
            status: StageStatus::Interrupted,
        }
    } else {
        End::Failed {
            err: stage_error(&link, i, reason.to_string()),
            kind: FailureKind::Routing,
            status: StageStatus::Failed(reason.to_string()),
        }
    };
    finish(shared, at, head, link, end);
}

/// A stage's escalation passed the team's threshold and reached the pipeline's lead
/// (`at`): the run ends here and escalates from the pipeline, as in the coordinator.
pub(crate) fn stage_escalated<M: crate::Message>(
    shared: &Shared<M>,
    at: &Slot<M>,
    mut head: TaskHead<M>,
    payload: M,
) {
    let Some(mut link) = take_link(&mut head) else {
        return;
    };
    link.input = None;
    let Some(ports) = link.take_ports() else {
        return finish_quietly(at, link);
    };
    let p = link.p.clone();
    let Some(home) = p.home.get() else {
        // unreachable: the lead that received it set its home
        return;
    };
    let i = link.stage;
    let info = head.meta.as_mut().and_then(|m| m.escalation.take());
    let (severity, reason, origin) = match info {
        Some(e) => (e.severity, e.reason, e.origin),
        None => (1.0, String::new(), at.path.clone()),
    };
    let Ports {
        reply,
        detail,
        tally,
    } = ports;
    head.reply = reply;
    head.branch = link.was_branch;
    let err = RunError::Escalated {
        stage: link.name(i),
        severity,
        reason: reason.clone(),
    };
    let status = StageStatus::Escalated(reason.clone());
    let esc = BranchEscalation {
        severity,
        reason,
        origin,
        payload,
        trail: head.take_trail(),
    };
    let report = tally.map(|mut t| {
        let spent_now = spent(head.budget());
        t.close(i, spent_now, status);
        RunReport {
            result: Err(err),
            elapsed: t.started.elapsed(),
            stages: t.stages,
            spent: spent_now,
        }
    });
    drop(link);
    shared.escalate_from(&home.slot, &home.escalate_to, head, esc);
    if let (Some(tx), Some(r)) = (detail, report) {
        let _ = tx.send(Detail::Run(r));
    }
}

/// A chained task's escalation reached the top of the hierarchy or a router without
/// passing its pipeline's lead (a stage forwarded it out of the pipeline): the run
/// ends as escalated there; the caller's reply port goes back on the head, which
/// carries on as an ordinary escalation.
pub(crate) fn release<M: crate::Message>(head: &mut TaskHead<M>) {
    let Some(mut link) = take_link(head) else {
        return;
    };
    link.input = None;
    let Some(ports) = link.take_ports() else {
        return;
    };
    let i = link.stage;
    let (severity, reason) = head
        .escalation()
        .map_or((1.0, String::new()), |e| (e.severity, e.reason.clone()));
    head.reply = ports.reply;
    head.branch = link.was_branch;
    if let (Some(tx), Some(mut t)) = (ports.detail, ports.tally) {
        let spent_now = spent(head.budget());
        t.close(i, spent_now, StageStatus::Escalated(reason.clone()));
        let _ = tx.send(Detail::Run(RunReport {
            result: Err(RunError::Escalated {
                stage: link.name(i),
                severity,
                reason,
            }),
            elapsed: t.started.elapsed(),
            stages: t.stages,
            spent: spent_now,
        }));
    }
}

/// Where a run's outcome is counted: at its pipeline, where it was submitted (as in
/// the coordinator), so that each stage's counters stay its own.
fn counted_at<'a, M>(link: &'a Link<M>, at: &'a Slot<M>) -> &'a Slot<M> {
    link.p.home.get().map_or(at, |h| &h.slot)
}

/// The caller was answered at the deadline; the task ends here as a failure.
fn finish_quietly<M>(at: &Slot<M>, link: Link<M>) {
    bump(&counted_at(&link, at).own.failed);
    drop(link);
}

/// The run ends at `at` (a stage, a supervisor, the lead): count its outcome at the
/// pipeline, then answer the caller.
fn finish<M: crate::Message>(
    shared: &Shared<M>,
    at: &Slot<M>,
    mut head: TaskHead<M>,
    mut link: Link<M>,
    end: End<M>,
) {
    link.input = None;
    let Some(ports) = link.take_ports() else {
        return finish_quietly(at, link);
    };
    let i = link.stage;
    let spent_now = spent(head.budget());
    // the pipeline answers as its lead (where the caller sent the run)
    let home = link.p.home.get().map(|h| &*h.slot);
    match end {
        End::Output(m) => {
            bump(&counted_at(&link, at).own.completed);
            let Ports {
                reply,
                detail,
                tally,
            } = ports;
            let report = match (&detail, tally) {
                (Some(_), Some(t)) => Some((t, m.clone())),
                _ => None,
            };
            if let Some(tx) = reply {
                tx.completed(head.id, home.unwrap_or(at), Some(m), head.take_trail());
            }
            if let (Some(tx), Some((t, m))) = (detail, report) {
                let _ = tx.send(Detail::Run(RunReport {
                    result: Ok(m),
                    elapsed: t.started.elapsed(),
                    stages: t.stages,
                    spent: spent_now,
                }));
            }
        }
        End::Failed { err, kind, status } => {
            bump(&counted_at(&link, at).own.failed);
            tracing::debug!(task = %head.id, at = %at.path, reason = %err, "chained run failed");
            let mut trail = Vec::new();
            if ports.reply.is_some() {
                trail = head.take_trail();
                let where_ = link.p.home.get().map_or(at, |h| &h.slot);
                trail.push(shared.entry(
                    where_,
                    Decision::Failed {
                        reason: err.to_string(),
                    },
                ));
            }
            send_failure(
                ports,
                head.id,
                home.map(|s| s.path.clone()),
                head.attempt,
                trail,
                err,
                kind,
                i,
                status,
                spent_now,
            );
        }
    }
    drop(link);
}

#[cfg(test)]
mod layout {
    use std::mem::{offset_of, size_of};

    use super::Link;
    use crate::envelope::TaskMeta;

    /// A hop of a chained run reads the task's metadata box: the budget, the
    /// escalation, and the link's stage, pipeline, input and caller. For a small
    /// message they all start in the box's first cache line (see `TaskMeta`'s layout).
    #[test]
    fn a_hop_reads_the_first_cache_line_of_the_metadata() {
        type M = u64;
        let chain = offset_of!(TaskMeta<M>, chain);
        let hot = [
            offset_of!(TaskMeta<M>, budget) + size_of::<usize>(),
            offset_of!(TaskMeta<M>, escalation) + size_of::<usize>(),
            chain + offset_of!(Link<M>, stage) + size_of::<usize>(),
            chain + offset_of!(Link<M>, p) + size_of::<usize>(),
            chain + offset_of!(Link<M>, input) + size_of::<Option<M>>(),
        ];
        for end in hot {
            assert!(
                end <= 64,
                "a hop's field ends at byte {end} of the metadata"
            );
        }
        // the link sits at the start of its option (the option's tag is a niche)
        assert_eq!(size_of::<Option<Link<M>>>(), size_of::<Link<M>>());
        // the caller (whether a per-stage report is kept) starts there too
        assert!(chain + offset_of!(Link<M>, caller) < 64);
        // in one cache line: the box starts at one
        assert_eq!(std::mem::align_of::<TaskMeta<M>>(), 64);
        // and it shrank from 288 bytes when the escalation and the report were kept in
        // place
        assert!(
            size_of::<TaskMeta<M>>() <= 192,
            "{}",
            size_of::<TaskMeta<M>>()
        );
    }
}
