//! The actor shared by routers and pipelines: a team lead without user code that turns
//! each request into branches and resolves the request once they are in.
//!
//! The node protocol (refusing work while stopping, returning a branch's escalation as
//! that branch's result, reset, orderly stop) is here once; what a request *does* is the
//! [`Lead`] implementation's.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{watch, Notify};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::accounting::bump;
use crate::address::Slot;
use crate::agent::actor::{refuse, AgentArgs};
use crate::envelope::{Task, TaskHead};
use crate::hierarchy::shared::Shared;
use crate::node::{Directive, NodeMsg};
use crate::supervisor::spec::{BoxFuture, SpawnAgent};

/// The requests a lead is working on in detached tasks (gathers, runs), so that a stop
/// can abort them and wait for them before the lead exits, and the lead's mailbox
/// capacity counts them.
#[derive(Debug, Clone)]
pub(crate) struct Runs {
    inner: Arc<RunsInner>,
}

struct RunsInner {
    /// Requests in flight, chained pipeline runs included (the lead slot's capacity).
    active: Arc<std::sync::atomic::AtomicU64>,
    /// Requests in flight in this lead's own detached tasks (a stop waits for them).
    owned: std::sync::atomic::AtomicU64,
    idle: Notify,
    abort: watch::Sender<bool>,
    /// Called when a request finishes: wakes senders waiting for room at the lead.
    on_done: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for RunsInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunsInner")
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

impl Default for Runs {
    fn default() -> Self {
        Runs {
            inner: Arc::new(RunsInner {
                active: Arc::default(),
                owned: Default::default(),
                idle: Notify::new(),
                abort: watch::channel(false).0,
                on_done: std::sync::OnceLock::new(),
            }),
        }
    }
}

/// Held by a running request (taken before its task is spawned); dropping it marks the
/// request done.
pub(crate) struct RunGuard {
    runs: Arc<RunsInner>,
    /// In one of the lead's own tasks (not a chained run carried by its stages).
    owned: bool,
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        self.runs.active.fetch_sub(1, Ordering::AcqRel);
        if self.owned && self.runs.owned.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.runs.idle.notify_waiters();
        }
        if let Some(wake) = self.runs.on_done.get() {
            wake();
        }
    }
}

impl Runs {
    /// A request worked on in one of the lead's own tasks: a stop waits for it.
    pub(crate) fn start(&self) -> RunGuard {
        self.inner.active.fetch_add(1, Ordering::AcqRel);
        self.inner.owned.fetch_add(1, Ordering::AcqRel);
        RunGuard {
            runs: self.inner.clone(),
            owned: true,
        }
    }

    /// A chained pipeline run, carried from stage to stage by its own task: it counts
    /// toward the lead's capacity, but a stop does not wait for it (the stage that
    /// holds it resolves it, or its supervisor accounts for it).
    pub(crate) fn start_chained(&self) -> RunGuard {
        self.inner.active.fetch_add(1, Ordering::AcqRel);
        RunGuard {
            runs: self.inner.clone(),
            owned: false,
        }
    }

    /// What to call when a request finishes (wake the lead slot's waiting senders).
    pub(crate) fn on_done(&self, f: impl Fn() + Send + Sync + 'static) {
        let _ = self.inner.on_done.set(Box::new(f));
    }

    /// The count of requests in flight, shared with the lead's slot for its capacity.
    pub(crate) fn active(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.inner.active.clone()
    }

    /// Resolves when the lead is stopping while the hierarchy aborts.
    pub(crate) async fn aborted(&self) {
        let mut rx = self.inner.abort.subscribe();
        let _ = rx.wait_for(|a| *a).await;
    }

    /// Abort every running request and wait (bounded) until they have resolved.
    async fn abort_and_wait(&self, bound: std::time::Duration) {
        self.inner.abort.send_replace(true);
        let wait = async {
            loop {
                let notified = self.inner.idle.notified();
                if self.inner.owned.load(Ordering::Acquire) == 0 {
                    break;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(bound, wait).await;
    }
}

/// What a router or pipeline does with a request.
pub(crate) trait Lead<M>: Send + Sync + 'static {
    /// Per-incarnation state (e.g. a round-robin cursor).
    type State: Send + 'static;
    /// "router" or "pipeline", for messages.
    const KIND: &'static str;

    fn init(&self, node: &LeadNode<M>) -> Self::State;

    /// The requests it is working on.
    fn runs(&self) -> &Runs;

    /// Start a request; its head must be resolved exactly once, now or later.
    fn request(
        this: &Arc<Self>,
        state: &mut Self::State,
        node: &LeadNode<M>,
        head: TaskHead<M>,
        payload: M,
    );
}

/// Who the lead is: its slot, its hierarchy, where its escalations go.
pub(crate) struct LeadNode<M> {
    pub(crate) slot: Arc<Slot<M>>,
    pub(crate) shared: Arc<Shared<M>>,
    pub(crate) escalate_to: Arc<Slot<M>>,
}

impl<M> LeadNode<M> {
    /// An RNG seeded from the hierarchy seed and this node's position.
    pub(crate) fn rng(&self) -> StdRng {
        StdRng::seed_from_u64(self.shared.seed ^ (u64::from(self.slot.uid) << 24))
    }
}

pub(crate) struct LeadSpawner<L> {
    pub(crate) lead: Arc<L>,
}

impl<M: crate::Message, L: Lead<M>> SpawnAgent<M> for LeadSpawner<L> {
    fn spawn(
        &self,
        args: AgentArgs<M>,
        supervisor: ractor::ActorCell,
    ) -> BoxFuture<'static, Result<ActorRef<NodeMsg<M>>, String>> {
        let actor = LeadActor {
            lead: self.lead.clone(),
            _m: std::marker::PhantomData,
        };
        Box::pin(async move {
            let slot = args.slot.clone();
            match Actor::spawn_linked(None, actor, args, supervisor).await {
                Ok((r, _)) => crate::supervisor::spec::attach_spawned(&slot, r),
                Err(e) => Err(e.to_string()),
            }
        })
    }
}

pub(crate) struct LeadActor<M, L> {
    lead: Arc<L>,
    _m: std::marker::PhantomData<fn() -> M>,
}

pub(crate) struct LeadState<M, S> {
    node: LeadNode<M>,
    state: S,
    stopping: Option<Arc<str>>,
}

impl<M: crate::Message, L: Lead<M>> Actor for LeadActor<M, L> {
    type Msg = NodeMsg<M>;
    type State = LeadState<M, L::State>;
    type Arguments = AgentArgs<M>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: AgentArgs<M>,
    ) -> Result<Self::State, ActorProcessingErr> {
        let node = LeadNode {
            slot: args.slot,
            shared: args.shared,
            escalate_to: args.escalate_to,
        };
        let state = self.lead.init(&node);
        Ok(LeadState {
            node,
            state,
            stopping: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            NodeMsg::Task(task) => {
                self.on_task(task, st);
                st.node.slot.settle();
            }
            NodeMsg::Batch(batch) => {
                for task in batch {
                    self.on_task(task, st);
                    st.node.slot.settle();
                }
            }
            NodeMsg::Escalation(task) => {
                let reason = format!(
                    "{} is a {}: it takes tasks, not escalations",
                    st.node.slot.path,
                    L::KIND
                );
                st.node.shared.fail(&st.node.slot, task.head, &reason);
                st.node.slot.settle();
            }
            NodeMsg::ChildExit { reply, .. } => {
                let _ = reply.send(Directive::Stop {
                    reason: Arc::from("its children are supervised by its team"),
                });
            }
            NodeMsg::Respawn { .. } => {}
            NodeMsg::Reset => {
                st.state = self.lead.init(&st.node);
                bump(&st.node.slot.stats.own.rare().restarts);
            }
            NodeMsg::Stop { reason } => {
                if st.stopping.is_none() {
                    st.stopping = Some(reason.clone());
                    for m in st.node.slot.close(reason.clone()) {
                        refuse(&st.node.shared, &st.node.slot, m, &reason);
                    }
                    // requests in detached tasks: on a hard stop, abort them; either
                    // way they resolve before this lead exits
                    if st.node.shared.aborting() {
                        self.lead
                            .runs()
                            .abort_and_wait(std::time::Duration::from_secs(5))
                            .await;
                    }
                    let _ = myself.drain();
                }
            }
        }
        Ok(())
    }
}

impl<M: crate::Message, L: Lead<M>> LeadActor<M, L> {
    fn on_task(&self, task: Task<M>, st: &mut LeadState<M, L::State>) {
        let Task { head, payload } = task;
        let node = &st.node;
        if let Some(reason) = &st.stopping {
            let why = format!(
                "{} stopped before taking the task: {reason}",
                node.slot.path
            );
            node.shared.fail(&node.slot, head, &why);
            return;
        }
        if node.shared.aborting() {
            node.shared.fail(
                &node.slot,
                head,
                "the hierarchy stopped before the task was taken",
            );
            return;
        }
        // a chained pipeline run's stage escalated past the team's threshold: the run
        // ends and escalates from its pipeline
        if head.branch && head.escalation().is_some() && head.in_chain() {
            crate::pipeline::chain::stage_escalated(&node.shared, &node.slot, head, payload);
            return;
        }
        // one of our branches escalated: that is the branch's result
        if head.branch && head.escalation().is_some() {
            node.shared
                .return_branch_escalation(&node.slot, head, payload);
            return;
        }
        L::request(&self.lead, &mut st.state, &st.node, head, payload);
    }
}
