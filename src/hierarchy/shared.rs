//! State shared by every actor of one hierarchy: the directory of slots, the phase,
//! the clock origin, the seed and the escalation sink.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::accounting::{bump, Counters};
use crate::address::Slot;
use crate::envelope::{
    AuditEntry, BranchEscalation, Decision, EscalationInfo, EscalationReport, Failure, FailureKind,
    Outcome, Role, Task, TaskHead,
};
use crate::node::NodeMsg;

/// Lifecycle phase of a hierarchy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Phase {
    Running = 0,
    /// Graceful shutdown: no new external work; in-flight work finishes.
    Draining = 1,
    /// Hard stop: queued work is failed, not handled.
    Aborting = 2,
    Stopped = 3,
}

pub(crate) struct Directory<M> {
    /// Agents, routers and pipelines sorted by path (filled once the tree is placed,
    /// by [`Directory::index_paths`]). A sorted list rather than a map: 8 bytes per
    /// agent instead of a map entry, and lookups by path are not on any hot path.
    pub(crate) by_path: Vec<Arc<Slot<M>>>,
    /// Agents by tier name, in the order they were placed (their global index in the
    /// tier, for a tier placed once). The key is shared by every agent spec of the tier.
    pub(crate) by_tier: HashMap<Arc<str>, Vec<Arc<Slot<M>>>>,
    /// Every slot, supervisors included, for counters.
    pub(crate) all: Vec<Arc<Slot<M>>>,
    /// Routers by slot uid, for their handles' inspection methods.
    pub(crate) routers: HashMap<u32, Arc<crate::router::actor::RouterShared<M>>>,
}

/// The roles a user can address by path.
pub(crate) fn addressable(role: Role) -> bool {
    matches!(role, Role::Agent | Role::Router | Role::Pipeline)
}

impl<M> Directory<M> {
    /// Sort the addressable slots by path for [`Directory::by_path`].
    pub(crate) fn index_paths(&mut self) {
        let mut v: Vec<Arc<Slot<M>>> = self
            .all
            .iter()
            .filter(|s| addressable(s.role))
            .cloned()
            .collect();
        v.sort_unstable_by(|a, b| a.path.as_str().cmp(b.path.as_str()));
        self.by_path = v;
    }

    /// The addressable slot at exactly `path`.
    fn at_path(&self, path: &str) -> Option<&Arc<Slot<M>>> {
        self.by_path
            .binary_search_by(|s| s.path.as_str().cmp(path))
            .ok()
            .and_then(|i| self.by_path.get(i))
    }

    /// `tier/index`: the first agent placed as index `index` of tier `tier` (a tier
    /// placed under several routers has an index 0 under each). Looked up in the tier's
    /// list rather than kept in a map of its own: two map entries and two strings per
    /// agent were a tenth of an idle agent's memory.
    fn by_alias(&self, addr: &str) -> Option<&Arc<Slot<M>>> {
        let (tier, index) = addr.rsplit_once('/')?;
        let i: usize = index.parse().ok()?;
        if i.to_string() != index {
            // "01" or "+1" is not how a path spells index 1
            return None;
        }
        let slots = self.by_tier.get(tier)?;
        let suffix = format!("/{tier}/{i}");
        let is = |s: &&Arc<Slot<M>>| s.path.as_str().ends_with(&suffix);
        slots.get(i).filter(is).or_else(|| slots.iter().find(is))
    }
}

pub(crate) struct Shared<M> {
    pub(crate) name: Arc<str>,
    pub(crate) seed: u64,
    pub(crate) started: Instant,
    pub(crate) max_attempts: u32,
    phase: AtomicU8,
    pub(crate) failure: Mutex<Option<String>>,
    pub(crate) sink: Mutex<Option<mpsc::UnboundedSender<EscalationReport<M>>>>,
    pub(crate) directory: Directory<M>,
    /// True once the hierarchy's actors are stopped (set by `Hierarchy`'s stop paths);
    /// also pinged without a change when the hierarchy fails.
    pub(crate) finished: watch::Sender<bool>,
    /// The runtime the hierarchy was spawned on: the tasks of requests taken on a
    /// sender's thread (deadline timers, pipeline runs) go there, whatever runtime, if
    /// any, the sender is on.
    runtime: Option<tokio::runtime::Handle>,
}

impl<M> Shared<M> {
    pub(crate) fn aborting(&self) -> bool {
        self.phase.load(Ordering::Relaxed) >= Phase::Aborting as u8
    }

    /// Spawn a task of the hierarchy's on its runtime. (A hierarchy is always built
    /// inside one: its actors are tokio tasks; the current runtime is the fallback.)
    pub(crate) fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match &self.runtime {
            Some(rt) => rt.spawn(task),
            None => tokio::spawn(task),
        }
    }
}

impl<M: crate::Message> Shared<M> {
    pub(crate) fn new(
        name: Arc<str>,
        seed: u64,
        max_attempts: u32,
        directory: Directory<M>,
    ) -> Self {
        Shared {
            name,
            seed,
            started: Instant::now(),
            max_attempts,
            phase: AtomicU8::new(Phase::Running as u8),
            failure: Mutex::new(None),
            sink: Mutex::new(None),
            directory,
            finished: watch::channel(false).0,
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }

    /// Move forward to `to` (phases only advance).
    ///
    /// SeqCst pairs with [`Shared::accepting`] and the submission count (see
    /// `AgentRef::submit`): either a sender sees the new phase and withdraws its task,
    /// or the drain check sees the task's submission.
    pub(crate) fn advance(&self, to: Phase) {
        let before = self.phase.fetch_max(to as u8, Ordering::SeqCst);
        if before < to as u8 {
            // senders waiting for room must see that no more work is taken
            for s in &self.directory.all {
                s.wake_waiters();
            }
        }
    }

    pub(crate) fn accepting(&self) -> bool {
        self.phase.load(Ordering::SeqCst) == Phase::Running as u8
    }

    /// Time since the hierarchy started, on the runtime clock.
    pub(crate) fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.started)
    }

    pub(crate) fn entry(&self, slot: &Slot<M>, decision: Decision) -> AuditEntry {
        AuditEntry {
            at: self.now(),
            path: slot.path.clone(),
            level: slot.level,
            role: slot.role,
            decision,
        }
    }

    /// Record the hierarchy's failure (first reason wins).
    pub(crate) fn set_failure(&self, reason: String) {
        {
            let mut f = self.failure.lock().unwrap_or_else(|e| e.into_inner());
            if f.is_none() {
                *f = Some(reason);
            }
        }
        // wake `Hierarchy::finished` waiters
        self.finished.send_modify(|_| {});
    }

    /// Close every slot and fail what waits in their pending queues (hard stop, drop).
    pub(crate) fn close_all(&self, reason: &str) {
        let reason: Arc<str> = Arc::from(reason);
        for slot in &self.directory.all {
            for msg in slot.close(reason.clone()) {
                crate::agent::actor::refuse(self, slot, msg, &reason);
            }
        }
    }

    pub(crate) fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every node's counters with its path and role.
    pub(crate) fn node_counters(&self) -> Vec<(crate::Path, crate::Role, Counters)> {
        self.directory
            .all
            .iter()
            .map(|s| (s.path.clone(), s.role, s.snapshot()))
            .collect()
    }

    /// Counters summed over every node. Outcomes are read before submissions, so a
    /// concurrent run can only show more in flight than there is, never less.
    pub(crate) fn counters(&self) -> Counters {
        let mut outcomes = Counters::default();
        for s in &self.directory.all {
            let mut c = s.snapshot();
            c.submitted = 0;
            outcomes += c;
        }
        let submitted: u64 = self.directory.all.iter().map(|s| s.tx.submitted()).sum();
        outcomes.submitted = submitted;
        outcomes
    }

    // ---- resolutions: the three ways a task ends --------------------------------

    /// The task is complete at `at`.
    #[inline]
    pub(crate) fn complete(&self, at: &Slot<M>, head: TaskHead<M>, reply: Option<M>) {
        if head.in_chain() {
            // a chained pipeline's stage is done: the hop to the next stage
            return crate::pipeline::chain::stage_done(self, at, head, reply);
        }
        bump(&at.own.completed);
        // taken apart and matched by value, so that a `None` needs no drop call (the
        // drop of a whole head calls one per field)
        let TaskHead {
            id,
            reply: to,
            meta,
            ..
        } = head;
        let trail = match meta {
            Some(meta) => meta.trail,
            None => Vec::new(),
        };
        if let Some(to) = to {
            to.completed(id, at, reply, trail);
        }
    }

    /// The task failed at `at` for `reason`, because something stopped.
    pub(crate) fn fail(&self, at: &Slot<M>, head: TaskHead<M>, reason: &str) {
        self.fail_as(at, head, reason, FailureKind::Stopped);
    }

    /// The task failed at `at` for `reason`.
    pub(crate) fn fail_as(
        &self,
        at: &Slot<M>,
        mut head: TaskHead<M>,
        reason: &str,
        kind: FailureKind,
    ) {
        if head.in_chain() {
            // a chained pipeline's run ends at this stage
            return crate::pipeline::chain::stage_failed(self, at, head, reason, kind);
        }
        bump(&at.own.failed);
        tracing::debug!(task = %head.id, at = %at.path, reason, "task failed");
        if let Some(tx) = head.reply.take() {
            head.record(self.entry(
                at,
                Decision::Failed {
                    reason: reason.to_string(),
                },
            ));
            tx.send(Outcome::Failed(Failure {
                task: head.id,
                kind,
                at: at.path.clone(),
                attempts: head.attempt,
                reason: reason.to_string(),
                trail: head.take_trail(),
            }));
        }
    }

    /// The task leaves the top of the hierarchy at the root `at`.
    pub(crate) fn escalate_out(&self, at: &Slot<M>, mut head: TaskHead<M>, payload: M) {
        crate::pipeline::chain::release(&mut head);
        bump(&at.own.escalated);
        head.record(self.entry(at, Decision::Delivered));
        let (severity, reason, origin) = escalation_summary(&head, at);
        let trail = head.take_trail();
        if let Some(tx) = head.reply.take() {
            tx.send(Outcome::Escalated {
                severity,
                reason: reason.clone(),
                origin: origin.clone(),
                payload: payload.clone(),
                trail: trail.clone(),
            });
        }
        let sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sink) = sink.as_ref() {
            let report = EscalationReport {
                task: head.id,
                severity,
                reason,
                origin,
                payload,
                trail,
            };
            if sink.send(report).is_err() {
                tracing::warn!(
                    hierarchy = %self.name,
                    "escalation left the top but the subscriber dropped its receiver"
                );
            }
        }
    }

    /// A branch (a router's or pipeline's sub-task) escalated back to its router `at`:
    /// the branch ends here, completed, and its escalation becomes the branch result.
    pub(crate) fn return_branch_escalation(&self, at: &Slot<M>, mut head: TaskHead<M>, payload: M) {
        crate::pipeline::chain::release(&mut head);
        bump(&at.own.completed);
        let (severity, reason, origin) = escalation_summary(&head, at);
        if let Some(tx) = head.reply.take() {
            tx.send(Outcome::Escalated {
                severity,
                reason,
                origin,
                payload,
                trail: head.take_trail(),
            });
        }
    }

    /// A handle to the agent at `addr` (see [`Shared::lookup`]).
    pub(crate) fn agent_ref(
        this: &Arc<Self>,
        addr: &str,
    ) -> Result<crate::AgentRef<M>, crate::AddressError> {
        match this.lookup(addr) {
            Some(slot) => Ok(crate::AgentRef {
                slot: slot.clone(),
                shared: this.clone(),
            }),
            None => Err(crate::AddressError::NotFound {
                addr: addr.to_string(),
                hierarchy: this.name.to_string(),
            }),
        }
    }

    /// Resolve a full path (with or without the hierarchy name) or `tier/index`.
    /// A request's only branch (router dispatch, pipeline stage) escalated: the request
    /// escalates from `at` to `up` with the branch's severity, reason, origin and
    /// payload, and the branch's trail appended to its own.
    pub(crate) fn escalate_from(
        &self,
        at: &Slot<M>,
        up: &Arc<Slot<M>>,
        mut head: TaskHead<M>,
        esc: BranchEscalation<M>,
    ) {
        bump(&at.own.rare().escalated_up);
        let meta = head.meta_mut();
        meta.trail.extend(esc.trail);
        meta.escalation = Some(Box::new(EscalationInfo {
            severity: esc.severity,
            reason: esc.reason.clone(),
            origin: esc.origin,
            from: at.path.clone(),
            key: None,
        }));
        head.record(self.entry(
            at,
            Decision::Escalated {
                severity: esc.severity,
                reason: esc.reason,
            },
        ));
        head.attempt = 0;
        let task = Task {
            head,
            payload: esc.payload,
        };
        if let Err((NodeMsg::Escalation(t), why)) = up.deliver(NodeMsg::Escalation(task)) {
            let reason = format!("could not escalate from {} to {}: {why}", at.path, up.path);
            self.fail_as(at, t.head, &reason, FailureKind::Routing);
        }
    }

    /// An agent by full path, by path below the hierarchy's name, or by `tier/index`.
    pub(crate) fn lookup(&self, addr: &str) -> Option<&Arc<Slot<M>>> {
        let addr = addr.trim_matches('/');
        let d = &self.directory;
        d.at_path(addr)
            .or_else(|| d.at_path(&format!("{}/{addr}", self.name)))
            .or_else(|| d.by_alias(addr))
    }
}

fn escalation_summary<M>(head: &TaskHead<M>, at: &Slot<M>) -> (f64, String, crate::Path) {
    match head.escalation() {
        Some(e) => (e.severity, e.reason.clone(), e.origin.clone()),
        None => (1.0, String::new(), at.path.clone()),
    }
}

impl<M> std::fmt::Debug for Shared<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}
