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
    /// Requests resolved in place rather than by a task of their own (a router's
    /// gathers): a hard stop ends them through here.
    open: std::sync::Mutex<Registry>,
}

/// Something in flight that a hard stop must end.
pub(crate) trait Abort: Send + Sync {
    /// End it now, as aborted by the stop.
    fn abort(&self);
}

/// The open requests of a lead, by index; freed indices are reused.
#[derive(Default)]
struct Registry {
    open: Vec<Option<Arc<dyn Abort>>>,
    free: Vec<usize>,
}

impl RunsInner {
    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        // only pushes and takes under the lock: a poisoned one is still consistent
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
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
                open: std::sync::Mutex::default(),
            }),
        }
    }
}

/// Held by a request in one of the lead's own tasks or resolved in place (taken before its
/// task is spawned; a chained run is counted by its link instead); dropping it marks the
/// request done.
pub(crate) struct RunGuard {
    runs: Arc<RunsInner>,
    /// Its place in the registry of requests resolved in place.
    registered: Option<usize>,
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        if let Some(i) = self.registered {
            let gone = {
                let mut r = self.runs.registry();
                let gone = r.open.get_mut(i).and_then(Option::take);
                r.free.push(i);
                gone
            };
            // the request's own state may go with it: outside the lock
            drop(gone);
        }
        // SeqCst, paired with `wait_for_room`'s fence through the waker below
        self.runs.active.fetch_sub(1, Ordering::SeqCst);
        if self.runs.owned.fetch_sub(1, Ordering::AcqRel) == 1 {
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
            registered: None,
        }
    }

    /// A request resolved in place, not by a task (a router's gather): as
    /// [`Runs::start`], and a hard stop ends it with [`Abort::abort`]. True with it if
    /// a hard stop began before it joined the list (the caller ends it: the stop's
    /// list no longer will).
    pub(crate) fn start_open(&self, request: Arc<dyn Abort>) -> (RunGuard, bool) {
        let (i, aborted) = {
            let mut r = self.inner.registry();
            let i = match r.free.pop() {
                Some(i) => {
                    r.open[i] = Some(request);
                    i
                }
                None => {
                    r.open.push(Some(request));
                    r.open.len() - 1
                }
            };
            // read under the lock: a stop raises the flag before it takes the list
            // under this lock, so either it lists this request or this sees the flag
            (i, *self.inner.abort.borrow())
        };
        let mut guard = self.start();
        guard.registered = Some(i);
        (guard, aborted)
    }

    /// A chained pipeline run, carried from stage to stage by its own task: it counts
    /// toward the lead's capacity until [`Runs::chained_done`], but a stop does not wait
    /// for it (the stage that holds it resolves it, or its supervisor accounts for it).
    /// No guard: the run's link holds the pipeline, and with it these runs, so it calls
    /// `chained_done` itself, exactly once, when it is dropped (a guard of its own was
    /// a second reference count moved on every run, between the entry's thread and the
    /// last stage's).
    pub(crate) fn start_chained(&self) {
        self.inner.active.fetch_add(1, Ordering::AcqRel);
    }

    /// A chained run ended ([`Runs::start_chained`]). SeqCst, paired with
    /// `wait_for_room`'s fence: the caller then reads the lead slot's waiters, and
    /// either that read sees a sender waiting or the sender's re-check sees the run
    /// gone.
    pub(crate) fn chained_done(&self) {
        self.inner.active.fetch_sub(1, Ordering::SeqCst);
    }

    /// Wake the lead's senders waiting for room (the [`Runs::on_done`] callback).
    pub(crate) fn wake_room(&self) {
        if let Some(wake) = self.inner.on_done.get() {
            wake();
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
        // the requests resolved in place end now (each removes itself as it does)
        let open: Vec<Arc<dyn Abort>> = self
            .inner
            .registry()
            .open
            .iter()
            .flatten()
            .cloned()
            .collect();
        for request in open {
            request.abort();
        }
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
    /// "router" or "pipeline", for messages.
    const KIND: &'static str;

    /// A new incarnation starts (and at a reset): set up what the requests need.
    fn init(&self, node: &LeadNode<'_, M>);

    /// The requests it is working on.
    fn runs(&self) -> &Runs;

    /// Start a request; its head must be resolved exactly once, now or later.
    fn request(this: &Arc<Self>, node: &LeadNode<'_, M>, head: TaskHead<M>, payload: M);
}

/// Who the lead is: its slot, its hierarchy, where its escalations go.
pub(crate) struct LeadNode<'a, M> {
    pub(crate) slot: &'a Arc<Slot<M>>,
    pub(crate) shared: &'a Arc<Shared<M>>,
    pub(crate) escalate_to: &'a Arc<Slot<M>>,
}

impl<M> LeadNode<'_, M> {
    /// An RNG seeded from the hierarchy seed and this node's position.
    pub(crate) fn rng(&self) -> StdRng {
        StdRng::seed_from_u64(self.shared.seed ^ (u64::from(self.slot.uid) << 24))
    }
}

/// A lead's node, owned by its actor.
struct OwnedNode<M> {
    slot: Arc<Slot<M>>,
    shared: Arc<Shared<M>>,
    escalate_to: Arc<Slot<M>>,
}

impl<M> OwnedNode<M> {
    fn node(&self) -> LeadNode<'_, M> {
        LeadNode {
            slot: &self.slot,
            shared: &self.shared,
            escalate_to: &self.escalate_to,
        }
    }
}

/// A lead that takes new tasks in place, on their senders' threads, instead of through
/// its mailbox (one hop less); kept in its slot.
pub(crate) trait Intake<M>: Send + Sync {
    /// Take `task`, sent to `slot` (open when the sender looked), on the sender's
    /// thread: the task is resolved exactly once, now or later. Gives it back if it
    /// cannot be taken here (it then goes through the mailbox).
    fn take(
        &self,
        slot: &Arc<Slot<M>>,
        shared: &Arc<Shared<M>>,
        task: Task<M>,
    ) -> Result<(), Task<M>>;
}

struct LeadIntake<M, L> {
    /// Weak: the lead may hold its own slot (a pipeline's `home`), and the intake is
    /// kept in that slot. Gone only when the hierarchy is.
    lead: std::sync::Weak<L>,
    escalate_to: Arc<Slot<M>>,
}

impl<M: crate::Message, L: Lead<M>> Intake<M> for LeadIntake<M, L> {
    fn take(
        &self,
        slot: &Arc<Slot<M>>,
        shared: &Arc<Shared<M>>,
        task: Task<M>,
    ) -> Result<(), Task<M>> {
        let Some(lead) = self.lead.upgrade() else {
            return Err(task);
        };
        let node = LeadNode {
            slot,
            shared,
            escalate_to: &self.escalate_to,
        };
        take_task(&lead, &node, None, task);
        Ok(())
    }
}

/// A task for a lead, from its mailbox or in place: refused while stopping, a branch's
/// escalation returned as its result, anything else a new request.
fn take_task<M: crate::Message, L: Lead<M>>(
    lead: &Arc<L>,
    node: &LeadNode<'_, M>,
    stopping: Option<&Arc<str>>,
    task: Task<M>,
) {
    let Task { head, payload } = task;
    if let Some(reason) = stopping {
        let why = format!(
            "{} stopped before taking the task: {reason}",
            node.slot.path
        );
        node.shared.fail(node.slot, head, &why);
        return;
    }
    if node.shared.aborting() {
        node.shared.fail(
            node.slot,
            head,
            "the hierarchy stopped before the task was taken",
        );
        return;
    }
    // a chained pipeline run's stage escalated past the team's threshold: the run
    // ends and escalates from its pipeline
    if head.branch && head.escalation().is_some() && head.in_chain() {
        crate::pipeline::chain::stage_escalated(node.shared, node.slot, head, payload);
        return;
    }
    // one of our branches escalated: that is the branch's result
    if head.branch && head.escalation().is_some() {
        node.shared
            .return_branch_escalation(node.slot, head, payload);
        return;
    }
    L::request(lead, node, head, payload);
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

pub(crate) struct LeadState<M> {
    node: OwnedNode<M>,
    stopping: Option<Arc<str>>,
}

impl<M: crate::Message, L: Lead<M>> Actor for LeadActor<M, L> {
    type Msg = NodeMsg<M>;
    type State = LeadState<M>;
    type Arguments = AgentArgs<M>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: AgentArgs<M>,
    ) -> Result<Self::State, ActorProcessingErr> {
        let node = OwnedNode {
            slot: args.slot,
            shared: args.shared,
            escalate_to: args.escalate_to,
        };
        self.lead.init(&node.node());
        // from now on new tasks are taken on their senders' threads (set once: a later
        // incarnation finds it there)
        node.slot.take_in_place(Box::new(LeadIntake {
            lead: Arc::downgrade(&self.lead),
            escalate_to: node.escalate_to.clone(),
        }));
        Ok(LeadState {
            node,
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
            // only agents queue tasks behind their mailbox
            NodeMsg::Respawn { .. } | NodeMsg::Drain => {}
            NodeMsg::Reset => {
                self.lead.init(&st.node.node());
                bump(&st.node.slot.own.rare().restarts);
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
    fn on_task(&self, task: Task<M>, st: &mut LeadState<M>) {
        take_task(&self.lead, &st.node.node(), st.stopping.as_ref(), task);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;
    use std::time::Duration;

    /// An open request as a gather is one: a hard stop's `abort` ends it, and ending
    /// drops its guard.
    #[derive(Default)]
    struct Open {
        aborted: AtomicUsize,
        guard: Mutex<Option<RunGuard>>,
    }

    impl Abort for Open {
        fn abort(&self) {
            self.aborted.fetch_add(1, Ordering::SeqCst);
            let guard = self.guard.lock().unwrap_or_else(|e| e.into_inner()).take();
            drop(guard);
        }
    }

    fn open(runs: &Runs) -> (Arc<Open>, bool) {
        let request = Arc::new(Open::default());
        let (guard, aborted) = runs.start_open(request.clone());
        *request.guard.lock().unwrap_or_else(|e| e.into_inner()) = Some(guard);
        (request, aborted)
    }

    /// The stop's own bound is an hour: only the requests ending lets it return in time.
    async fn hard_stop(runs: &Runs) {
        tokio::time::timeout(
            Duration::from_secs(5),
            runs.abort_and_wait(Duration::from_secs(3600)),
        )
        .await
        .expect("the stop did not return once its open requests had ended");
    }

    #[tokio::test]
    async fn a_hard_stop_ends_every_open_request_and_returns_when_they_have() {
        let runs = Runs::default();
        let (a, late_a) = open(&runs);
        let (b, late_b) = open(&runs);
        assert!(!late_a && !late_b, "no stop had begun");
        assert_eq!(runs.active().load(Ordering::SeqCst), 2);
        hard_stop(&runs).await;
        assert_eq!(a.aborted.load(Ordering::SeqCst), 1);
        assert_eq!(b.aborted.load(Ordering::SeqCst), 1);
        assert_eq!(runs.active().load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_request_registering_after_the_stop_took_its_list_is_told_to_end_itself() {
        let runs = Runs::default();
        hard_stop(&runs).await;
        let (late, aborted) = open(&runs);
        assert!(
            aborted,
            "the stop's flag must be seen by a request it did not list"
        );
        assert_eq!(
            late.aborted.load(Ordering::SeqCst),
            0,
            "the stop cannot have ended a request that was not yet listed"
        );
    }

    #[tokio::test]
    async fn an_ended_request_leaves_the_registry_and_its_place_is_reused() {
        let runs = Runs::default();
        let (first, _) = open(&runs);
        let guard = first.guard.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(guard);
        // the registry let go of the request: only this test holds it now
        assert_eq!(Arc::strong_count(&first), 1);
        let (_second, _) = open(&runs);
        assert_eq!(
            runs.inner.registry().open.len(),
            1,
            "the freed place is reused"
        );
        // a stop does not reach the ended request
        hard_stop(&runs).await;
        assert_eq!(first.aborted.load(Ordering::SeqCst), 0);
    }
}
