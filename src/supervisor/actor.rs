//! The supervisor actor: restarts, failure escalation, escalation filtering, orderly stop.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::spec::{spawn_node, NodeKind, NodeSpec};
use super::{RestartPolicy, RestartWindow, Suppressor, TeamPolicy};
use crate::accounting::{add, bump};
use crate::address::Slot;
use crate::agent::actor::refuse;
use crate::envelope::{Decision, Role, Task};
use crate::hierarchy::shared::{Phase, Shared};
use crate::node::{Directive, Exit, NodeMsg};
use crate::panic::CatchUnwind;

pub(crate) struct SupervisorActor<M>(std::marker::PhantomData<fn() -> M>);

impl<M> SupervisorActor<M> {
    pub(crate) fn new() -> Self {
        SupervisorActor(std::marker::PhantomData)
    }
}

pub(crate) struct SupervisorArgs<M> {
    pub(crate) spec: Arc<NodeSpec<M>>,
    pub(crate) shared: Arc<Shared<M>>,
    /// The parent's slot and our index among its children; `None` for the root.
    pub(crate) parent: Option<(Arc<Slot<M>>, usize)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChildState {
    Running,
    /// Dead, waiting out its backoff before a respawn.
    Restarting,
    Stopped,
}

/// How long to wait for a killed actor to finish dying before accounting for its
/// mailbox. A handler that holds its thread cannot be interrupted; past this bound its
/// task may be counted lost and then complete.
const DEATH_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

struct Child<M> {
    spec: Arc<NodeSpec<M>>,
    actor: Option<ActorId>,
    state: ChildState,
    /// Restarts of this child inside the current intensity period, for backoff.
    consecutive: u32,
    last_restart: Option<Instant>,
}

pub(crate) struct SupervisorState<M> {
    slot: Arc<Slot<M>>,
    shared: Arc<Shared<M>>,
    parent: Option<(Arc<Slot<M>>, usize)>,
    policy: TeamPolicy,
    lead: Option<usize>,
    escalate_to: Option<Arc<Slot<M>>>,
    children: Vec<Child<M>>,
    window: RestartWindow,
    suppressor: Suppressor,
    stopping: Option<Arc<str>>,
}

impl<M: crate::Message> Actor for SupervisorActor<M> {
    type Msg = NodeMsg<M>;
    type State = SupervisorState<M>;
    type Arguments = SupervisorArgs<M>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let NodeKind::Team(team) = &args.spec.kind else {
            return Err("a supervisor was given an agent spec".into());
        };
        let slot = team.slot.clone();
        // Children start concurrently: a big team spawns faster, and an `on_start` may
        // `call` a sibling, whose start goes on while it waits. ractor runs a child's
        // `pre_start` in the task that spawns it, so the agents' spawns are joined here,
        // in this task, and one team's agents start on one thread. A child team's start
        // places its whole subtree, so each team starts in a task of its own, and
        // subtrees are placed in parallel on the runtime's workers. (A task for every
        // child cost 3% more instructions per agent and a slower spawn; every child
        // joined here put the whole tree on one thread.) A panic in a spawn fails that
        // child like an error, so the children that did start are still stopped below.
        let started =
            futures_util::future::join_all(team.children.iter().enumerate().map(|(i, child)| {
                let spawn = spawn_node(
                    child.clone(),
                    args.shared.clone(),
                    slot.clone(),
                    i,
                    myself.get_cell(),
                );
                CatchUnwind::new(match child.kind {
                    NodeKind::Agent(_) => spawn,
                    NodeKind::Team(_) => {
                        let task = tokio::spawn(spawn);
                        Box::pin(async move {
                            task.await
                                .unwrap_or_else(|e| Err(format!("its spawn task failed: {e}")))
                        })
                    }
                })
            }))
            .await;
        let mut children: Vec<Child<M>> = Vec::with_capacity(team.children.len());
        let mut failure = None;
        for (child, result) in team.children.iter().zip(started) {
            match result.unwrap_or_else(|panic| Err(format!("its start {panic}"))) {
                Ok(r) => children.push(Child {
                    spec: child.clone(),
                    actor: Some(r.get_id()),
                    state: ChildState::Running,
                    consecutive: 0,
                    last_restart: None,
                }),
                Err(e) => {
                    failure.get_or_insert(format!("{}: {e}", child.slot().path));
                }
            }
        }
        if let Some(reason) = failure {
            // the children that did start hold work handed to them from their pending
            // queues: make sure they are dead before our parent accounts for their
            // mailboxes
            for c in &children {
                if let Some(a) = c.spec.slot().actor() {
                    a.kill();
                    let _ = a.get_cell().wait(Some(DEATH_WAIT)).await;
                }
            }
            return Err(reason.into());
        }
        Ok(SupervisorState {
            policy: team.policy,
            lead: team.lead,
            escalate_to: team.escalate_to.clone(),
            window: RestartWindow::new(team.policy.intensity),
            suppressor: Suppressor::default(),
            slot,
            shared: args.shared,
            parent: args.parent,
            children,
            stopping: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            NodeMsg::Escalation(task) => {
                state.on_escalation(task);
                state.slot.settle();
            }
            NodeMsg::Task(task) => {
                let reason = format!(
                    "{} is a supervisor; send tasks to its agents",
                    state.slot.path
                );
                state.shared.fail(&state.slot, task.head, &reason);
                state.slot.settle();
            }
            NodeMsg::Batch(batch) => {
                let reason = format!(
                    "{} is a supervisor; send tasks to its agents",
                    state.slot.path
                );
                for task in batch {
                    state.shared.fail(&state.slot, task.head, &reason);
                    state.slot.settle();
                }
            }
            NodeMsg::ChildExit {
                child,
                from,
                exit,
                reply,
            } => {
                let current = state.children.get(child).and_then(|c| c.actor);
                // boxed, like every rare path: ractor keeps room for this future in the
                // supervisor's task for its whole life
                let directive = if current == Some(from) {
                    Box::pin(state.on_child_exit(child, exit, &myself)).await
                } else {
                    Directive::Stop {
                        reason: Arc::from("a report from a buried incarnation"),
                    }
                };
                let _ = reply.send(directive);
            }
            NodeMsg::Respawn { child } => Box::pin(state.respawn(child, &myself)).await,
            NodeMsg::Reset => {
                if state.stopping.is_none() {
                    state.reset_all(None);
                }
            }
            NodeMsg::Stop { reason } => state.begin_stop(reason, &myself),
            // only agents queue tasks behind their mailbox
            NodeMsg::Drain => {}
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        evt: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason) = match evt {
            SupervisionEvent::ActorTerminated(cell, _, reason) => (
                cell,
                reason.unwrap_or_else(|| "the actor stopped".to_string()),
            ),
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            _ => return Ok(()),
        };
        let id = cell.get_id();
        let Some(i) = state.children.iter().position(|c| c.actor == Some(id)) else {
            return Ok(());
        };
        state.children[i].actor = None;
        // boxed: a child's death is rare, and ractor keeps room for this future in the
        // supervisor's task for its whole life
        Box::pin(state.on_child_gone(i, reason, &myself)).await;
        Ok(())
    }
}

/// Wait until every actor of a dead subtree has stopped (ractor kills children
/// asynchronously), then count what each mailbox still held as failed.
async fn account_dead_subtree<M: crate::Message>(spec: &NodeSpec<M>) {
    let mut actors = Vec::new();
    spec.for_each_slot(&mut |slot| actors.extend(slot.actor()));
    for a in actors {
        if a.get_cell().wait(Some(DEATH_WAIT)).await.is_err() {
            tracing::warn!(actor = ?a.get_id(), "an actor did not stop in time; its task may be counted lost and still finish");
        }
    }
    spec.for_each_slot(&mut |slot| {
        let lost = slot.detach();
        if lost > 0 {
            add(&slot.own.failed, lost);
            add(&slot.own.rare().lost_in_mailbox, lost);
            tracing::warn!(node = %slot.path, lost, "tasks lost with a dead actor's mailbox");
        }
    });
}

impl<M: crate::Message> SupervisorState<M> {
    /// Child `i`'s actor is gone: account what its subtree's mailboxes held, then
    /// record a clean stop or apply the restart policy.
    async fn on_child_gone(&mut self, i: usize, reason: String, myself: &ActorRef<NodeMsg<M>>) {
        // a clean stop (slot closed, mailbox drained) leaves nothing unsettled; anything
        // else, including a kill during a stop, is accounted here
        let spec = self.children[i].spec.clone();
        account_dead_subtree(&spec).await;
        if spec.slot().is_closed() {
            self.children[i].state = ChildState::Stopped;
        } else {
            self.on_child_died(i, reason, myself).await;
        }
        self.maybe_finish_stop(myself);
    }

    // ---- escalations ----------------------------------------------------------------

    fn on_escalation(&mut self, task: Task<M>) {
        let Task { mut head, payload } = task;
        let shared = &self.shared;
        let slot = &self.slot;
        if let Some(reason) = &self.stopping {
            let why = format!(
                "{} stopped before passing the escalation on: {reason}",
                slot.path
            );
            shared.fail(slot, head, &why);
            return;
        }
        if shared.aborting() {
            shared.fail(
                slot,
                head,
                "the hierarchy stopped before the escalation was decided",
            );
            return;
        }
        let threshold = self.policy.threshold;
        // Team leads (auto-split) apply the threshold, which is idempotent, but not the
        // suppression window: folding is decided once, by the team (or the root), so a
        // split never changes what gets folded.
        let suppress = match slot.role {
            Role::TeamLead => None,
            _ => threshold.suppress,
        };
        let (severity, key) = match head.escalation() {
            Some(e) => (
                crate::agent::sanitize_severity(e.severity),
                suppress.map(|_| e.suppression_key()),
            ),
            None => (1.0, None),
        };
        if severity < threshold.severity {
            bump(&slot.own.rare().absorbed);
            head.record(shared.entry(
                slot,
                Decision::Absorbed {
                    threshold: threshold.severity,
                },
            ));
            shared.complete(slot, head, None);
            return;
        }
        if let (Some(window), Some(key)) = (suppress, key) {
            if !self.suppressor.admit(key, window, Instant::now()) {
                bump(&slot.own.rare().suppressed);
                head.record(shared.entry(slot, Decision::Suppressed { window }));
                shared.complete(slot, head, None);
                return;
            }
        }
        bump(&slot.own.rare().escalated_up);
        head.record(shared.entry(
            slot,
            Decision::Accepted {
                threshold: threshold.severity,
            },
        ));
        let task = Task { head, payload };
        let (target, msg) = match (self.lead, &self.escalate_to) {
            (Some(lead), _) => (self.children[lead].spec.slot().clone(), NodeMsg::Task(task)),
            (None, Some(up)) => (up.clone(), NodeMsg::Escalation(task)),
            (None, None) => {
                shared.escalate_out(slot, task.head, task.payload);
                return;
            }
        };
        if let Err((NodeMsg::Task(t) | NodeMsg::Escalation(t), why)) = target.deliver(msg) {
            let reason = format!(
                "could not pass the escalation from {} to {}: {why}",
                slot.path, target.path
            );
            shared.fail(slot, t.head, &reason);
        }
    }

    // ---- restarts -------------------------------------------------------------------

    /// A child crashed in place (or asked to exit) and waits for our directive.
    async fn on_child_exit(
        &mut self,
        i: usize,
        exit: Exit,
        myself: &ActorRef<NodeMsg<M>>,
    ) -> Directive {
        if i >= self.children.len() {
            return Directive::Stop {
                reason: Arc::from("unknown child"),
            };
        }
        if let Some(reason) = &self.stopping {
            return Directive::Stop {
                reason: reason.clone(),
            };
        }
        let policy = self.children[i].spec.restart;
        let why = match &exit {
            Exit::Crashed(r) => r.clone(),
            Exit::Normal => "exited normally".to_string(),
        };
        let restart = !matches!(
            (policy, &exit),
            (RestartPolicy::Temporary, _) | (RestartPolicy::Transient, Exit::Normal)
        );
        if !restart {
            let reason: Arc<str> = Arc::from(format!(
                "{} is {policy:?} and {why}; it is not restarted",
                self.children[i].spec.slot().path
            ));
            return Directive::Stop { reason };
        }
        self.decide_restart(i, &why, myself).await
    }

    /// Count a restart of child `i`, restart its siblings per the strategy, and return
    /// the directive for child `i`; or fail upward if the intensity is exceeded.
    async fn decide_restart(
        &mut self,
        i: usize,
        why: &str,
        myself: &ActorRef<NodeMsg<M>>,
    ) -> Directive {
        let now = Instant::now();
        if !self.window.admit(now) {
            bump(&self.slot.own.rare().failure_escalations);
            let intensity = self.window.intensity();
            let reason = format!(
                "{} exceeded its restart intensity ({} restarts in {:?}); last failure: {}: {why}",
                self.slot.path,
                intensity.max(),
                intensity.period(),
                self.children[i].spec.slot().path,
            );
            tracing::warn!(supervisor = %self.slot.path, %reason, "failing upward");
            return match self.fail_upward(reason, myself.get_id()).await {
                Directive::Restart { delay } => {
                    self.reset_all(Some(i));
                    Directive::Restart { delay }
                }
                Directive::Stop { reason } => {
                    self.begin_stop(reason.clone(), myself);
                    Directive::Stop { reason }
                }
            };
        }
        let n = self.children.len();
        for j in self.policy.strategy.affected(i, n) {
            if j != i {
                self.reset_child(j);
            }
        }
        let child = &mut self.children[i];
        let period = self.window.intensity().period();
        child.consecutive = match child.last_restart {
            Some(t) if now.saturating_duration_since(t) < period => child.consecutive + 1,
            _ => 1,
        };
        child.last_restart = Some(now);
        let delay = self
            .policy
            .backoff
            .map_or(std::time::Duration::ZERO, |b| b.delay(child.consecutive));
        Directive::Restart { delay }
    }

    /// Ask our own supervisor what to do about our failure. At the root, the hierarchy
    /// fails.
    async fn fail_upward(&mut self, reason: String, me: ractor::ActorId) -> Directive {
        match &self.parent {
            Some((parent, idx)) => {
                let (tx, rx) = oneshot::channel();
                let msg = NodeMsg::ChildExit {
                    child: *idx,
                    from: me,
                    exit: Exit::Crashed(reason),
                    reply: tx,
                };
                if parent.deliver(msg).is_err() {
                    return Directive::Stop {
                        reason: Arc::from("the supervisor's own supervisor has stopped"),
                    };
                }
                rx.await.unwrap_or_else(|_| Directive::Stop {
                    reason: Arc::from("the supervisor's own supervisor stopped before deciding"),
                })
            }
            None => {
                tracing::error!(hierarchy = %self.shared.name, %reason, "hierarchy failed");
                self.shared.set_failure(reason.clone());
                self.shared.advance(Phase::Aborting);
                Directive::Stop {
                    reason: Arc::from(format!("the hierarchy failed: {reason}")),
                }
            }
        }
    }

    /// Restart child `j` in place: agents at their next message, teams recursively.
    fn reset_child(&mut self, j: usize) {
        let child = &self.children[j];
        if child.state != ChildState::Running {
            return;
        }
        let slot = child.spec.slot();
        if let NodeKind::Agent(_) = child.spec.kind {
            slot.epoch.fetch_add(1, Ordering::AcqRel);
        }
        let _ = slot.deliver(NodeMsg::Reset);
    }

    /// Restart every child (a team restart), except `skip`, which restarts itself.
    fn reset_all(&mut self, skip: Option<usize>) {
        self.window.clear();
        self.suppressor.clear();
        for c in &mut self.children {
            c.consecutive = 0;
            c.last_restart = None;
        }
        for j in 0..self.children.len() {
            if Some(j) != skip {
                self.reset_child(j);
            }
        }
    }

    /// A child's actor died (not a crash caught in place: a kill, or a failure of our
    /// own machinery); its mailbox is already accounted. Restart it (after its backoff,
    /// without blocking this supervisor) or stop it.
    async fn on_child_died(&mut self, i: usize, reason: String, myself: &ActorRef<NodeMsg<M>>) {
        let spec = self.children[i].spec.clone();
        tracing::warn!(child = %spec.slot().path, %reason, "child actor died");
        let directive = if let Some(reason) = self.stopping.clone() {
            Directive::Stop { reason }
        } else if spec.restart == RestartPolicy::Temporary {
            Directive::Stop {
                reason: Arc::from(format!(
                    "{} is Temporary and died: {reason}",
                    spec.slot().path
                )),
            }
        } else {
            self.decide_restart(i, &reason, myself).await
        };
        match directive {
            Directive::Restart { delay } if delay.is_zero() => self.respawn(i, myself).await,
            Directive::Restart { delay } => {
                self.children[i].state = ChildState::Restarting;
                myself.send_after(delay, move || NodeMsg::Respawn { child: i });
            }
            Directive::Stop { reason } => {
                self.close_subtree(&spec, &reason);
                self.children[i].state = ChildState::Stopped;
            }
        }
    }

    /// Spawn a dead child's subtree again into its slots.
    async fn respawn(&mut self, i: usize, myself: &ActorRef<NodeMsg<M>>) {
        let Some(child) = self.children.get(i) else {
            return;
        };
        if child.actor.is_some() {
            return;
        }
        let spec = child.spec.clone();
        if let Some(reason) = self.stopping.clone() {
            self.close_subtree(&spec, &reason);
            self.children[i].state = ChildState::Stopped;
            return;
        }
        match spawn_node(
            spec.clone(),
            self.shared.clone(),
            self.slot.clone(),
            i,
            myself.get_cell(),
        )
        .await
        {
            Ok(actor) => {
                spec.for_each_slot(&mut |s| bump(&s.own.rare().restarts));
                self.children[i].actor = Some(actor.get_id());
                self.children[i].state = ChildState::Running;
            }
            Err(e) => {
                // whatever the half-built subtree was handed is accounted, the rest
                // refused
                account_dead_subtree(&spec).await;
                let reason: Arc<str> = Arc::from(format!("respawn failed: {e}"));
                self.close_subtree(&spec, &reason);
                self.children[i].state = ChildState::Stopped;
            }
        }
        self.maybe_finish_stop(myself);
    }

    /// Close every slot of a dead subtree and fail what waited in their pending queues.
    fn close_subtree(&self, spec: &NodeSpec<M>, reason: &Arc<str>) {
        spec.for_each_slot(&mut |slot| {
            for msg in slot.close(reason.clone()) {
                refuse(&self.shared, slot, msg, reason);
            }
        });
    }

    // ---- orderly stop -----------------------------------------------------------------

    /// Stop: refuse new work, tell every child to stop, and exit once they all have.
    fn begin_stop(&mut self, reason: Arc<str>, myself: &ActorRef<NodeMsg<M>>) {
        if self.stopping.is_some() {
            return;
        }
        self.stopping = Some(reason.clone());
        for msg in self.slot.close(reason.clone()) {
            refuse(&self.shared, &self.slot, msg, &reason);
        }
        for c in &mut self.children {
            match c.state {
                ChildState::Running => {
                    let _ = c.spec.slot().deliver(NodeMsg::Stop {
                        reason: reason.clone(),
                    });
                }
                ChildState::Restarting => {
                    // no actor to stop: close its slots and fail what waits there
                    let spec = c.spec.clone();
                    c.state = ChildState::Stopped;
                    spec.for_each_slot(&mut |slot| {
                        for msg in slot.close(reason.clone()) {
                            refuse(&self.shared, slot, msg, &reason);
                        }
                    });
                }
                ChildState::Stopped => {}
            }
        }
        self.maybe_finish_stop(myself);
    }

    fn maybe_finish_stop(&mut self, myself: &ActorRef<NodeMsg<M>>) {
        if self.stopping.is_none() {
            return;
        }
        if self.children.iter().all(|c| c.actor.is_none()) {
            // drain: escalations already queued are processed (failed) before we exit
            let _ = myself.drain();
        }
    }
}
