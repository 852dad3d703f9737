//! The ractor actor that runs one agent: catches its crashes, asks its supervisor what
//! to do, restarts it in place and redelivers the task that crashed.

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_util::future::{ready, Either, Ready};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::oneshot;

use super::{Agent, AgentError, Ctx, ErrorKind, StopReason, Verdict};
use crate::accounting::bump;
use crate::address::{Queued, Side, SideEnd, Slot, Woke};
use crate::envelope::{Batch, Decision, EscalationInfo, FailureKind, Task, TaskHead};
use crate::hierarchy::shared::Shared;
use crate::node::{Directive, Exit, NodeMsg};
use crate::panic::{catch, CatchUnwind};

/// What [`AgentActor::handle`] returns: a task's first attempt on the fast path
/// ([`AgentState::first_attempt`], whose future holds the state's address, the user's
/// handler future and the catch wrapper's pointer to it, nothing else), the boxed
/// future of a rare path, or nothing left to do (a message handled on the spot).
///
/// ractor keeps this future's space in the actor's message-loop box for the actor's
/// whole life, and moves its own `handle_message` future, sized to hold this one, twice
/// per message (into its signal `select!`): small, it moves in a few register stores
/// instead of a `memcpy` call.
type Handling<'a, F> = Either<F, Either<Rare<'a>, Ready<Result<(), ActorProcessingErr>>>>;

/// Tasks an agent takes from the queue behind its mailbox without giving its worker
/// thread up (by a yield or a real wait on the empty queue) before it yields (tokio's
/// own budget per task poll is 128).
const DRAIN_BEFORE_YIELD: u32 = 128;

/// The future of a rare path in [`AgentActor::handle`], sized by that path.
type Rare<'a> = Pin<Box<dyn Future<Output = Result<(), ActorProcessingErr>> + Send + 'a>>;

/// [`Handling`] for a message handled on the spot.
fn handled<'a, F>() -> Handling<'a, F> {
    Either::Right(Either::Right(ready(Ok(()))))
}

/// [`Handling`] for a rare path.
fn rare<'a, F>(fut: impl Future<Output = ()> + Send + 'a) -> Handling<'a, F> {
    Either::Right(Either::Left(Box::pin(async move {
        fut.await;
        Ok(())
    })))
}

/// A task in hand on the fast path: its head, and a copy of its payload for a
/// redelivery (only when one may happen).
type Current<M> = (TaskHead<M>, Option<M>);

/// What the fast path keeps out of its future, in a box made at the agent's first task
/// and reused ([`AgentState::hand`]).
struct InHand<M> {
    /// The task whose handler runs.
    current: Option<Current<M>>,
    /// The first attempt's payload, from [`AgentState::begin`] until the handler takes it.
    payload: Option<M>,
    /// This actor's own ref, for the rare paths after a handler (a redelivery, a stop).
    myself: ActorRef<NodeMsg<M>>,
    /// The agent's end of the queue behind this incarnation's mailbox
    /// (`Slot::queue_behind`), taken from the slot at the first look (or made, when the
    /// agent first waits there) and kept: it goes with the incarnation, and so does
    /// what it holds.
    side: Option<SideEnd<M>>,
}

/// The agent's end of the queue behind its mailbox (incarnation `me`'s), kept in the
/// box in hand and taken from the slot at the first look; `make`: make the queue if no
/// sender has. `None` if there is none, or the incarnation was detached.
#[inline(always)]
fn side_end<'a, M: Send + 'static>(
    hand: &'a mut Option<Box<InHand<M>>>,
    slot: &Slot<M>,
    me: u16,
    myself: &ActorRef<NodeMsg<M>>,
    make: bool,
) -> Option<&'a mut SideEnd<M>> {
    let b = in_hand(hand, myself);
    if b.side.is_none() {
        b.side = slot.take_side(me, make);
    }
    b.side.as_mut()
}

/// The box in hand (`AgentState::hand`), made at the first task (or the first look
/// at the queue behind the mailbox) and reused for the actor's whole life.
#[inline(always)]
fn in_hand<'a, M>(
    hand: &'a mut Option<Box<InHand<M>>>,
    myself: &ActorRef<NodeMsg<M>>,
) -> &'a mut InHand<M> {
    hand.get_or_insert_with(|| {
        Box::new(InHand {
            current: None,
            payload: None,
            myself: myself.clone(),
            side: None,
        })
    })
}

/// Builds agent values: once per incarnation. A thin pointer (to a boxed closure):
/// the agent's state, which holds it, lives in the actor's task for its whole life.
pub(crate) type Factory<A> = Arc<Box<dyn Fn(usize) -> A + Send + Sync>>;

/// The agent's actor. It holds nothing: everything is in [`AgentState`], and ractor
/// keeps a copy of the actor value in the actor's task next to it.
pub(crate) struct AgentActor<A: Agent>(std::marker::PhantomData<fn() -> A>);

impl<A: Agent> AgentActor<A> {
    pub(crate) fn new() -> Self {
        AgentActor(std::marker::PhantomData)
    }
}

/// Where an agent sits: its own slot, its supervisor and where its escalations go.
pub(crate) struct AgentArgs<M> {
    pub(crate) slot: Arc<Slot<M>>,
    pub(crate) shared: Arc<Shared<M>>,
    pub(crate) parent: Arc<Slot<M>>,
    pub(crate) child_index: usize,
    pub(crate) escalate_to: Arc<Slot<M>>,
    pub(crate) index: usize,
}

/// The agent's state in its actor. It lives in the actor's task for the actor's whole
/// life, so every byte is a byte per agent, and tokio rounds the task up to a multiple
/// of 128 bytes: with a small agent and message this state fits the task in 768 bytes,
/// as raw ractor's does, instead of 896. What an idle agent does not need is elsewhere:
/// the tier's name is read from the path, the stop reason is the slot's close reason,
/// and the task in hand is boxed once, at the first task.
pub(crate) struct AgentState<A: Agent> {
    agent: Option<A>,
    factory: Factory<A>,
    ctx: Ctx<A::Msg>,
    parent: Arc<Slot<A::Msg>>,
    escalate_to: Arc<Slot<A::Msg>>,
    /// The slot's restart epoch as of this incarnation (its low 32 bits: only equality
    /// is asked, and 2^32 restarts between two messages do not happen).
    epoch: u32,
    child_index: u32,
    /// The fast path's task while its handler runs, in a box made at the first task
    /// and reused: kept out of the per-message future, and out of an idle agent.
    hand: Option<Box<InHand<A::Msg>>>,
}

impl<A: Agent> Actor for AgentActor<A> {
    type Msg = NodeMsg<A::Msg>;
    type State = AgentState<A>;
    type Arguments = (AgentArgs<A::Msg>, Factory<A>);

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        (args, factory): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        crate::panic::install_quiet_hook();
        let epoch = epoch_of(&args.slot);
        let mut state = AgentState {
            agent: None,
            factory,
            ctx: Ctx::new(args.slot, args.shared, args.index),
            parent: args.parent,
            child_index: u32::try_from(args.child_index).unwrap_or(u32::MAX),
            escalate_to: args.escalate_to,
            epoch,
            hand: None,
        };
        // boxed: the start future stays in the actor's task for its whole life
        Box::pin(state.incarnate())
            .await
            .map_err(|reason| format!("agent {} failed to start: {reason}", state.ctx.path()))?;
        Ok(state)
    }

    fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> impl Future<Output = Result<(), ActorProcessingErr>> + Send {
        // Decided before the future is built, so that the fast path's future holds the
        // state's address and the user's handler future, and not the message, the
        // task's head or `myself` (all kept in the state's box): ractor keeps this
        // future's space in the actor's task for the actor's whole life. Everything else
        // is `AgentState::other_message`, out of line, so that this stays small enough
        // for ractor's loop to inline.
        match msg {
            NodeMsg::Task(task) if state.ready() => {
                if state.begin(task, &myself) {
                    Either::Left(state.first_attempt())
                } else {
                    state.after_mailbox_task(myself)
                }
            }
            other => state.other_message(other, myself),
        }
    }
}

impl<A: Agent> AgentState<A> {
    /// Every message but a task on the fast path ([`AgentActor::handle`]). Every rare
    /// path (a restart asked by a sibling strategy, a stop, a batch, a task while no
    /// incarnation is ready) is one boxed future of its own, sized by that path;
    /// messages that need no waiting are handled here.
    #[inline(never)]
    fn other_message<F>(
        &mut self,
        msg: NodeMsg<A::Msg>,
        myself: ActorRef<NodeMsg<A::Msg>>,
    ) -> Handling<'_, F> {
        let state = self;
        match msg {
            NodeMsg::Task(task) => rare(async move {
                state.take_slow(task, &myself).await;
                state.drain_side(myself).await;
            }),
            // each task of a batch is a task of its own: checked, counted, settled,
            // crashed and redelivered one at a time, in order
            NodeMsg::Batch(batch) => rare(async move {
                state.take_batch(batch, &myself).await;
                state.drain_side(myself).await;
            }),
            // a sender queued a task and found this agent idle, or this agent was
            // called away from waiting tasks by a mailbox message (`Slot::leave`): look
            NodeMsg::Drain => state.after_mailbox_task(myself),
            NodeMsg::Escalation(task) => {
                let reason = format!(
                    "{} is an agent, not a supervisor: it takes no escalations",
                    state.ctx.path()
                );
                state.fail(task.head, &reason);
                state.ctx.slot.settle();
                handled()
            }
            NodeMsg::ChildExit { reply, .. } => {
                let _ = reply.send(Directive::Stop {
                    reason: Arc::from("an agent has no children"),
                });
                handled()
            }
            NodeMsg::Respawn { .. } => handled(),
            NodeMsg::Reset if !state.ctx.stopping => rare(async move {
                state.check_epoch(&myself).await;
            }),
            NodeMsg::Reset => handled(),
            NodeMsg::Stop { reason } => rare(async move {
                state
                    .begin_stop(reason, &myself, StopReason::Shutdown)
                    .await
            }),
        }
    }
}

impl<A: Agent> AgentState<A> {
    fn slot(&self) -> &Slot<A::Msg> {
        &self.ctx.slot
    }

    /// Why this agent is stopping: its slot was closed with the reason when the stop
    /// began.
    fn stop_reason(&self) -> Arc<str> {
        self.ctx
            .slot
            .close_reason()
            .unwrap_or_else(|| Arc::from("it is stopping"))
    }

    fn fail(&self, head: TaskHead<A::Msg>, reason: &str) {
        self.ctx.shared.fail(&self.ctx.slot, head, reason);
    }

    /// The tasks of a batch, one at a time, each exactly like a task sent alone.
    async fn take_batch(&mut self, batch: Batch<A::Msg>, myself: &ActorRef<NodeMsg<A::Msg>>) {
        // no nested drain or wait on the queue inside the batch: a task queued behind
        // the mailbox meanwhile comes after the whole batch
        let outer = std::mem::replace(&mut self.ctx.draining, true);
        for task in batch {
            self.take_one(task, myself).await;
        }
        self.ctx.draining = outer;
    }

    /// One task of a sequence (a batch, or the queue behind the mailbox), exactly like a
    /// task sent alone: the fast path when ready, else [`Self::take_slow`].
    async fn take_one(&mut self, task: Task<A::Msg>, myself: &ActorRef<NodeMsg<A::Msg>>) {
        if self.ready() {
            if self.begin(task, myself) {
                // always Ok: the fast path gives every task its outcome itself
                let _ = self.first_attempt().await;
            }
        } else {
            self.take_slow(task, myself).await;
        }
    }

    /// A task when not [`Self::ready`]: a restart asked by a sibling strategy, a stop, or
    /// no live incarnation.
    async fn take_slow(&mut self, task: Task<A::Msg>, myself: &ActorRef<NodeMsg<A::Msg>>) {
        let exit = self.on_task(task, myself).await;
        // settled as soon as the task has its outcome: a kill during the exit below must
        // not count it lost
        self.ctx.slot.settle();
        if exit {
            self.exit_normally(myself).await;
        }
    }

    /// Nothing stands between the next task and the handler.
    #[inline]
    fn ready(&self) -> bool {
        !self.ctx.stopping
            && self.agent.is_some()
            && !self.ctx.shared.aborting()
            && epoch_of(self.slot()) == self.epoch
    }

    /// The fast path's first attempt, before the handler: the context set to the task,
    /// and its head, its payload and a copy of the payload for a redelivery (only when
    /// one may happen) put in [`Self::hand`]. False if the task already has its
    /// outcome (its `Clone` panicked): it is then failed and settled here.
    #[inline(always)]
    fn begin(&mut self, task: Task<A::Msg>, myself: &ActorRef<NodeMsg<A::Msg>>) -> bool {
        let Task { mut head, payload } = task;
        let spare = if self.ctx.shared.max_attempts > 1 {
            // user code: a panicking Clone fails the task rather than the actor
            match catch(|| payload.clone()) {
                Ok(copy) => Some(copy),
                Err(p) => {
                    let why = format!("cloning the message for a possible retry {p}");
                    let (shared, slot) = (&self.ctx.shared, &self.ctx.slot);
                    shared.fail_as(slot, head, &why, FailureKind::Crashed);
                    slot.settle();
                    return false;
                }
            }
        } else {
            None
        };
        head.attempt = 1;
        self.ctx.task = head.id;
        self.ctx.attempt = 1;
        // ctx.meta is None between tasks: swapping moves without a drop
        std::mem::swap(&mut self.ctx.meta, &mut head.meta);
        let b = in_hand(&mut self.hand, myself);
        b.current = Some((head, spare));
        b.payload = Some(payload);
        true
    }

    /// The fast path's first attempt of the task [`Self::begin`] put in hand: the
    /// handler runs inline, a crash goes to the boxed [`Self::redeliver`], then the task
    /// is settled and a stop asked by the handler is carried out. The future holds
    /// `self` and the handler's future alone (see [`Handling`]). Always `Ok`: the
    /// result type is the one ractor's `handle` returns.
    // not an async fn: see the first comment inside
    #[allow(clippy::manual_async_fn)]
    fn first_attempt(
        &mut self,
    ) -> impl Future<Output = Result<(), ActorProcessingErr>> + Send + '_ {
        // an async block rather than an async fn (which copies its `self` into the
        // future), and let-else rather than a match (whose scrutinee would be kept
        // across the await): each keeps 8 to 24 bytes out of the future
        async move {
            let result = 'run: {
                let Some(payload) = self.hand.as_mut().and_then(|b| b.payload.take()) else {
                    // `begin` always leaves the payload here
                    break 'run Ok(Err(AgentError::crash(
                        "echelon bug: the task's payload was not in hand",
                    )));
                };
                let Some(agent) = self.agent.as_mut() else {
                    break 'run Ok(Err(AgentError::crash(
                        "the agent has no live incarnation (its factory or on_start failed)",
                    )));
                };
                let fut = pin!(agent.handle(&mut self.ctx, payload));
                CatchUnwind::new(fut).await
            };
            // the crash moves into the boxed redelivery before the await: held across
            // it, its 88 bytes would be in this future, and so in every agent's task
            if let Some(redeliver) = self
                .finish(result)
                .map(|crash| Box::pin(self.redeliver_in_hand(crash)))
            {
                redeliver.await;
            }
            // settled as soon as the task has its outcome: a kill during the exit below
            // must not count it lost
            self.ctx.slot.settle();
            if self.take_stop_request() {
                Box::pin(self.exit_in_hand()).await;
            }
            // A task from the mailbox (not one taken in a drain, which goes on with the
            // next) keeps the queue behind the mailbox, which its sender took: the agent
            // takes what waits there, then waits there for the next task
            // (`drain_side`), and a caller answered above and sending again at once
            // finds its task queued, not a mailbox message. (Read from the context: a
            // flag held across the awaits above would grow every agent's future.)
            if !self.ctx.draining {
                if let Some(myself) = self.myself() {
                    self.drain_side(myself).await;
                }
            }
            Ok(())
        }
    }

    /// After a task from the mailbox handled on the spot, or a [`NodeMsg::Drain`]: take
    /// what waits behind the mailbox, then wait there ([`Self::drain_side`]).
    fn after_mailbox_task<F>(&mut self, myself: ActorRef<NodeMsg<A::Msg>>) -> Handling<'_, F> {
        rare(self.drain_side(myself))
    }

    /// The next message queued behind the mailbox, if any.
    fn next_queued(&mut self, myself: &ActorRef<NodeMsg<A::Msg>>) -> Option<Queued<A::Msg>> {
        let me = self.ctx.queue_incarnation;
        side_end(&mut self.hand, &self.ctx.slot, me, myself, false)?.pop()
    }

    /// Wait on the queue behind the mailbox (`Slot::park`) until a task is queued or a
    /// message for the mailbox calls the agent away. The queue is made if no sender
    /// has made it yet. Also says whether the agent really waited (gave its worker
    /// thread up), rather than finding tasks or a call at once.
    async fn park(&mut self, myself: &ActorRef<NodeMsg<A::Msg>>) -> (Woke, bool) {
        let me = self.ctx.queue_incarnation;
        let slot = &self.ctx.slot;
        let Some(end) = side_end(&mut self.hand, slot, me, myself, true) else {
            // detached: this incarnation's queue is gone
            return (Woke::Called, false);
        };
        let side: &Side<A::Msg> = &end.side;
        let mut waited = false;
        let woke = std::future::poll_fn(|cx| {
            let poll = slot.park(me, side, cx);
            waited |= poll.is_pending();
            poll
        })
        .await;
        (woke, waited)
    }

    /// Take the tasks queued behind the mailbox (`Slot::queue_behind`), in order, each
    /// exactly like a task from the mailbox, while this agent owns the queue (see
    /// `Slot::queue`); when it is empty, wait there for the next task
    /// (`Slot::park`), still inside ractor's handler, until a message for the mailbox
    /// calls the agent away (then give the queue up and return to ractor's loop). An
    /// agent that cannot take tasks on the fast path (stopping, a restart pending)
    /// gives the queue up instead of waiting. Boxed: a task taken here is a first
    /// attempt, whose future may come back here (it does not, while `draining` is set,
    /// but the types nest); and it lives as long as the agent waits, so it holds only
    /// the first attempt's future or a box (see [`Self::take_queued`]).
    fn drain_side(
        &mut self,
        myself: ActorRef<NodeMsg<A::Msg>>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let outer = std::mem::replace(&mut self.ctx.draining, true);
            // the outermost drain waits on the queue when it is empty, rather than
            // going back to the message loop (`Slot::park`)
            let resident = !outer;
            let me = self.ctx.queue_incarnation;
            // tasks taken since the worker thread was last given up (by a yield or a
            // real wait), and tasks taken but not yet counted off the queue's word
            let (mut since_yield, mut uncounted) = (0u32, 0u32);
            loop {
                let mut took = false;
                while let Some(msg) = self.next_queued(&myself) {
                    took = true;
                    let fast = match self.take_queued(msg, &myself) {
                        Ok(fast) => fast,
                        Err(rare) => {
                            rare.await;
                            false
                        }
                    };
                    if fast {
                        // always Ok: the fast path gives every task its outcome itself
                        let _ = self.first_attempt().await;
                    }
                    since_yield += 1;
                    uncounted += 1;
                    if since_yield >= DRAIN_BEFORE_YIELD {
                        // the worker thread is shared: let other actors run; this
                        // actor's next mailbox message still waits for the drain
                        self.ctx.slot.took_queued(me, uncounted);
                        (since_yield, uncounted) = (0, 0);
                        tokio::task::yield_now().await;
                    }
                }
                self.ctx.slot.took_queued(me, uncounted);
                uncounted = 0;
                // the outermost drain, able to take tasks, waits on the empty queue;
                // any other gives it up
                let waits = resident && self.ready();
                if waits {
                    let (woke, waited) = self.park(&myself).await;
                    if woke == Woke::Called {
                        if self.ctx.slot.leave(me) {
                            // tasks wait: this actor keeps the queue and takes them
                            // after the message it was called for (a `Drain` it sends
                            // itself)
                            let _ = myself.send_message(NodeMsg::Drain);
                        }
                        break;
                    }
                    if waited {
                        // woken by a push: take it (the worker was given up)
                        since_yield = 0;
                        continue;
                    }
                }
                if !took {
                    // counted but not yet pushed (its sender was interrupted between
                    // the two): let it finish
                    tokio::task::yield_now().await;
                    since_yield = 0;
                }
                // (a steady stream, found at once, still yields every
                // DRAIN_BEFORE_YIELD tasks above)
                if waits {
                    continue;
                }
                // empty: give the queue up, unless a sender got a task in before it
                // saw that (it then relies on this look)
                if !self.ctx.slot.release(me) {
                    break;
                }
            }
            self.ctx.draining = outer;
        })
    }

    /// One item from the queue behind the mailbox: a task or a batch. `Ok(true)`: a
    /// task on the fast path, put in hand for [`Self::first_attempt`]; `Ok(false)`: it
    /// already has its outcome; `Err`: the boxed future of a rare path (a batch, a task
    /// while not [`Self::ready`]). Not an async fn: the drain's future, which lives as
    /// long as the agent waits on its queue, then holds the first attempt's future or
    /// a box, not the item and the rare paths (1,280 bytes for a small agent).
    fn take_queued<'a>(
        &'a mut self,
        item: Queued<A::Msg>,
        myself: &'a ActorRef<NodeMsg<A::Msg>>,
    ) -> Result<bool, Pin<Box<dyn Future<Output = ()> + Send + 'a>>> {
        match item {
            Queued::Task(task) if self.ready() => Ok(self.begin(task, myself)),
            Queued::Task(task) => Err(Box::pin(self.take_slow(task, myself))),
            Queued::Batch(batch) => Err(Box::pin(self.take_batch(batch, myself))),
        }
    }

    /// This actor's own ref, kept in hand since its first task.
    fn myself(&self) -> Option<ActorRef<NodeMsg<A::Msg>>> {
        self.hand.as_ref().map(|b| b.myself.clone())
    }

    /// [`Self::redeliver`] from the fast path, with the ref kept in hand.
    async fn redeliver_in_hand(&mut self, crash: (Current<A::Msg>, String)) {
        match self.myself() {
            Some(myself) => self.redeliver(crash, &myself).await,
            // the box holds the crashed task, so it exists
            None => {
                let ((head, _), _) = crash;
                let (shared, slot) = (&self.ctx.shared, &self.ctx.slot);
                shared.fail_as(slot, head, "echelon bug: no ref in hand", FailureKind::Lost);
            }
        }
    }

    /// [`Self::exit_normally`] from the fast path, with the ref kept in hand.
    async fn exit_in_hand(&mut self) {
        if let Some(myself) = self.myself() {
            self.exit_normally(&myself).await;
        } else {
            tracing::error!(node = %self.ctx.path(), "echelon bug: a stop asked with no ref in hand");
        }
    }

    /// The fast path's first attempt, after the handler: the verdict applied, or the
    /// task failed on a rejection. A crash gives the head and the reason back, for
    /// [`Self::redeliver`].
    #[inline]
    fn finish(
        &mut self,
        result: Result<Result<Verdict<A::Msg>, AgentError>, String>,
    ) -> Option<(Current<A::Msg>, String)> {
        let Some((mut head, spare)) = self.hand.as_mut().and_then(|b| b.current.take()) else {
            // `begin` always leaves the task here before the handler runs
            tracing::error!(node = %self.ctx.path(), "echelon bug: a handler finished with no task in hand");
            return None;
        };
        std::mem::swap(&mut self.ctx.meta, &mut head.meta);
        match result {
            Ok(Ok(verdict)) => {
                self.apply(head, verdict);
                None
            }
            Ok(Err(e)) if e.kind() == ErrorKind::Reject => {
                let reason = format!("rejected by {}: {e}", self.ctx.path());
                let (shared, slot) = (&self.ctx.shared, &self.ctx.slot);
                shared.fail_as(slot, head, &reason, FailureKind::Rejected);
                None
            }
            Ok(Err(e)) => Some(((head, spare), format!("crash error: {e}"))),
            Err(panic) => Some(((head, spare), panic)),
        }
    }

    /// After a crash on the fast path: recover, then go on like [`Self::run`].
    async fn redeliver(
        &mut self,
        ((head, spare), reason): (Current<A::Msg>, String),
        myself: &ActorRef<NodeMsg<A::Msg>>,
    ) {
        let Some(head) = self.crashed(head, reason, myself).await else {
            return;
        };
        match spare {
            Some(payload) => self.run(head, payload, myself).await,
            None => self.ctx.shared.fail_as(
                &self.ctx.slot,
                head,
                "echelon lost the task payload between attempts",
                FailureKind::Lost,
            ),
        }
    }

    /// The agent asked to stop during this task (and no stop is under way).
    fn take_stop_request(&mut self) -> bool {
        if self.ctx.stop_requested && !self.ctx.stopping {
            self.ctx.stop_requested = false;
            return true;
        }
        false
    }

    /// Give the task its outcome. True if the agent asked to stop afterwards.
    async fn on_task(&mut self, task: Task<A::Msg>, myself: &ActorRef<NodeMsg<A::Msg>>) -> bool {
        let Task { head, payload } = task;
        if self.ctx.stopping {
            let reason = self.stop_reason();
            let reason = format!(
                "{} stopped before handling the task: {reason}",
                self.ctx.path()
            );
            self.fail(head, &reason);
            return false;
        }
        if self.ctx.shared.aborting() {
            let reason = self.ctx.shared.failure().map_or_else(
                || "the hierarchy was stopped before the task was handled".to_string(),
                |f| format!("the hierarchy failed before the task was handled: {f}"),
            );
            self.fail(head, &reason);
            return false;
        }
        if !self.check_epoch(myself).await {
            let reason = format!("{} stopped before handling the task", self.ctx.path());
            self.fail(head, &reason);
            return false;
        }
        self.run(head, payload, myself).await;
        self.take_stop_request()
    }

    /// Run the handler until the task has an outcome: redeliver after crashes while
    /// attempts remain and the supervisor restarts us.
    async fn run(
        &mut self,
        mut head: TaskHead<A::Msg>,
        payload: A::Msg,
        myself: &ActorRef<NodeMsg<A::Msg>>,
    ) {
        let max = self.ctx.shared.max_attempts.max(1);
        let mut spare = Some(payload);
        loop {
            let Some(payload) = spare.take() else {
                self.ctx.shared.fail_as(
                    &self.ctx.slot,
                    head,
                    "echelon lost the task payload between attempts",
                    FailureKind::Lost,
                );
                return;
            };
            head.attempt += 1;
            if head.attempt > 1 {
                bump(&self.slot().own.rare().redelivered);
            }
            let msg = if head.attempt < max {
                // user code: a panicking Clone fails the task rather than the actor
                match catch(|| payload.clone()) {
                    Ok(copy) => {
                        spare = Some(payload);
                        copy
                    }
                    Err(p) => {
                        let why = format!("cloning the message for a possible retry {p}");
                        let (shared, slot) = (&self.ctx.shared, &self.ctx.slot);
                        shared.fail_as(slot, head, &why, FailureKind::Crashed);
                        return;
                    }
                }
            } else {
                payload
            };
            self.ctx.task = head.id;
            self.ctx.attempt = head.attempt;
            self.ctx.meta = head.meta.take();
            let result = match self.agent.as_mut() {
                Some(agent) => {
                    let fut = pin!(agent.handle(&mut self.ctx, msg));
                    CatchUnwind::new(fut).await
                }
                None => Ok(Err(AgentError::crash(
                    "the agent has no live incarnation (its factory or on_start failed)",
                ))),
            };
            head.meta = self.ctx.meta.take();
            let reason = match result {
                Ok(Ok(verdict)) => {
                    self.apply(head, verdict);
                    return;
                }
                Ok(Err(e)) if e.kind() == ErrorKind::Reject => {
                    let reason = format!("rejected by {}: {e}", self.ctx.path());
                    let (shared, slot) = (&self.ctx.shared, &self.ctx.slot);
                    shared.fail_as(slot, head, &reason, FailureKind::Rejected);
                    return;
                }
                Ok(Err(e)) => format!("crash error: {e}"),
                Err(panic) => panic,
            };
            match self.crashed(head, reason, myself).await {
                Some(h) => head = h,
                None => return,
            }
        }
    }

    /// A handler attempt crashed: record it, ask the supervisor and restart. Gives the
    /// head back if the task is to be attempted again, else fails it.
    async fn crashed(
        &mut self,
        mut head: TaskHead<A::Msg>,
        reason: String,
        myself: &ActorRef<NodeMsg<A::Msg>>,
    ) -> Option<TaskHead<A::Msg>> {
        let max = self.ctx.shared.max_attempts.max(1);
        tracing::debug!(agent = %self.ctx.path(), task = %head.id, attempt = head.attempt, %reason, "handler crashed");
        let entry = self.ctx.shared.entry(
            self.slot(),
            Decision::Crashed {
                attempt: head.attempt,
                reason: reason.clone(),
            },
        );
        head.record(entry);
        match self.recover(reason.clone(), myself).await {
            Ok(()) if head.attempt < max => Some(head),
            Ok(()) => {
                let why = format!(
                    "gave up after {} attempt(s); last crash: {reason}",
                    head.attempt
                );
                let (shared, slot) = (&self.ctx.shared, &self.ctx.slot);
                shared.fail_as(slot, head, &why, FailureKind::Crashed);
                None
            }
            Err(stop) => {
                let why = format!(
                    "{} stopped after a crash ({reason}): {stop}",
                    self.ctx.path()
                );
                self.fail(head, &why);
                None
            }
        }
    }

    /// Turn a verdict into the task's next step.
    #[inline]
    fn apply(&mut self, head: TaskHead<A::Msg>, verdict: Verdict<A::Msg>) {
        // the common case: done or answered, with no escalation to record as handled
        // (`Shared::complete` makes a chained task's hop)
        // (every arm moves its variant's fields, none binds the whole verdict: then the
        // verdict needs no drop call afterwards)
        let (shared, slot) = (&self.ctx.shared, &self.ctx.slot);
        match verdict {
            Verdict::Done if head.escalation().is_none() => shared.complete(slot, head, None),
            Verdict::Reply(m) if head.escalation().is_none() => {
                shared.complete(slot, head, Some(m))
            }
            Verdict::Done => self.apply_general(head, Verdict::Done),
            Verdict::Reply(m) => self.apply_general(head, Verdict::Reply(m)),
            Verdict::Escalate(e) => self.apply_general(head, Verdict::Escalate(e)),
            Verdict::Forward { to, msg } => self.apply_general(head, Verdict::Forward { to, msg }),
        }
    }

    fn apply_general(&mut self, mut head: TaskHead<A::Msg>, verdict: Verdict<A::Msg>) {
        let shared = &self.ctx.shared;
        let slot = &self.ctx.slot;
        match verdict {
            Verdict::Done | Verdict::Reply(_) => {
                if head.escalation().is_some() {
                    head.record(shared.entry(slot, Decision::Handled));
                }
                let reply = match verdict {
                    Verdict::Reply(m) => Some(m),
                    _ => None,
                };
                shared.complete(slot, head, reply);
            }
            Verdict::Escalate(mut esc) => {
                esc.severity = super::sanitize_severity(esc.severity);
                bump(&slot.own.rare().escalated_up);
                let origin = head
                    .escalation()
                    .map_or_else(|| slot.path.clone(), |e| e.origin.clone());
                head.record(shared.entry(
                    slot,
                    Decision::Escalated {
                        severity: esc.severity,
                        reason: esc.reason.clone(),
                    },
                ));
                head.meta_mut().escalation = Some(Box::new(EscalationInfo {
                    severity: esc.severity,
                    reason: esc.reason,
                    origin,
                    from: slot.path.clone(),
                    key: esc.key,
                }));
                head.attempt = 0;
                let task = Task {
                    head,
                    payload: esc.payload,
                };
                if let Err((NodeMsg::Escalation(t), why)) =
                    self.escalate_to.deliver(NodeMsg::Escalation(task))
                {
                    let reason = format!(
                        "could not escalate from {} to {}: {why}",
                        slot.path, self.escalate_to.path
                    );
                    shared.fail_as(slot, t.head, &reason, FailureKind::Routing);
                }
            }
            Verdict::Forward { to, msg } if !Arc::ptr_eq(&to.shared, shared) => {
                drop(msg);
                let reason = format!(
                    "{} forwarded the task to {}, which belongs to another hierarchy; \
                     use ctx.send for a new task there",
                    slot.path, to.slot.path
                );
                shared.fail_as(slot, head, &reason, FailureKind::Routing);
            }
            Verdict::Forward { to, msg } => {
                if head.meta.is_some() {
                    head.record(shared.entry(
                        slot,
                        Decision::Forwarded {
                            to: to.slot.path.clone(),
                        },
                    ));
                }
                head.attempt = 0;
                let task = Task { head, payload: msg };
                if let Err((NodeMsg::Task(t), why)) = to.slot.hand(&to.shared, NodeMsg::Task(task))
                {
                    let reason = format!(
                        "could not forward from {} to {}: {why}",
                        slot.path, to.slot.path
                    );
                    shared.fail_as(slot, t.head, &reason, FailureKind::Routing);
                }
            }
        }
    }

    /// After a crash: ask the supervisor, then restart (possibly after a backoff) or stop.
    /// Returns `Err(reason)` if the agent is stopping for good.
    async fn recover(
        &mut self,
        mut reason: String,
        myself: &ActorRef<NodeMsg<A::Msg>>,
    ) -> Result<(), Arc<str>> {
        loop {
            match self.ask_parent(Exit::Crashed(reason), myself).await {
                Directive::Restart { delay } => {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    match self.restart().await {
                        Ok(()) => return Ok(()),
                        Err(r) => reason = r,
                    }
                }
                Directive::Stop { reason } => {
                    self.begin_stop(reason.clone(), myself, StopReason::Shutdown)
                        .await;
                    return Err(reason);
                }
            }
        }
    }

    async fn ask_parent(&mut self, exit: Exit, myself: &ActorRef<NodeMsg<A::Msg>>) -> Directive {
        let (tx, rx) = oneshot::channel();
        let msg = NodeMsg::ChildExit {
            child: self.child_index as usize,
            from: myself.get_id(),
            exit,
            reply: tx,
        };
        if self.parent.deliver(msg).is_err() {
            return Directive::Stop {
                reason: Arc::from("its supervisor has stopped"),
            };
        }
        rx.await.unwrap_or_else(|_| Directive::Stop {
            reason: Arc::from("its supervisor stopped before deciding"),
        })
    }

    /// A supervisor may have restarted us by bumping the epoch (one-for-all,
    /// rest-for-one, a team restart). Returns false if we ended up stopping.
    async fn check_epoch(&mut self, myself: &ActorRef<NodeMsg<A::Msg>>) -> bool {
        if epoch_of(self.slot()) == self.epoch {
            return true;
        }
        if let Err(reason) = self.restart().await {
            return self.recover(reason, myself).await.is_ok();
        }
        true
    }

    /// Build the first incarnation.
    async fn incarnate(&mut self) -> Result<(), String> {
        let index = self.ctx.index();
        let factory = self.factory.clone();
        let agent = catch(|| (*factory)(index)).map_err(|p| format!("its factory {p}"))?;
        let agent = self.agent.insert(agent);
        let fut = pin!(agent.on_start(&mut self.ctx));
        match CatchUnwind::new(fut).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("on_start failed: {e}")),
            Err(p) => Err(format!("on_start {p}")),
        }
    }

    /// Drop the current incarnation and build a fresh one.
    async fn restart(&mut self) -> Result<(), String> {
        self.end_incarnation(StopReason::Restart).await;
        self.ctx.reincarnate();
        self.epoch = epoch_of(self.slot());
        bump(&self.slot().own.rare().restarts);
        tracing::debug!(agent = %self.ctx.path(), incarnation = self.ctx.incarnation(), "agent restarted");
        let r = self.incarnate().await;
        if r.is_err() {
            self.agent = None;
        }
        r
    }

    async fn end_incarnation(&mut self, why: StopReason) {
        if let Some(mut old) = self.agent.take() {
            let r = {
                let fut = pin!(old.on_stop(&mut self.ctx, &why));
                CatchUnwind::new(fut).await
            };
            if let Err(p) = r {
                tracing::warn!(agent = %self.ctx.path(), "on_stop {p}");
            }
            if let Err(p) = catch(move || drop(old)) {
                tracing::warn!(agent = %self.ctx.path(), "dropping the agent {p}");
            }
        }
    }

    /// The agent asked to stop: permanent agents are restarted, others end.
    async fn exit_normally(&mut self, myself: &ActorRef<NodeMsg<A::Msg>>) {
        match self.ask_parent(Exit::Normal, myself).await {
            Directive::Restart { delay } => {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                if let Err(reason) = self.restart().await {
                    let _ = self.recover(reason, myself).await;
                }
            }
            Directive::Stop { reason } => self.begin_stop(reason, myself, StopReason::Normal).await,
        }
    }

    /// Stop for good: close the slot so nothing new arrives, fail whatever waited in the
    /// pending queue, and drain the mailbox (each remaining task fails with `reason`).
    async fn begin_stop(
        &mut self,
        reason: Arc<str>,
        myself: &ActorRef<NodeMsg<A::Msg>>,
        why: StopReason,
    ) {
        if self.ctx.stopping {
            return;
        }
        self.ctx.stopping = true;
        for msg in self.ctx.slot.close(reason.clone()) {
            refuse(&self.ctx.shared, &self.ctx.slot, msg, &reason);
        }
        self.end_incarnation(why).await;
        let _ = myself.drain();
    }
}

/// The low 32 bits of a slot's restart epoch (see [`AgentState::epoch`]).
fn epoch_of<M>(slot: &Slot<M>) -> u32 {
    slot.epoch.load(Ordering::Acquire) as u32
}

/// Resolve a message a closed node will never process.
pub(crate) fn refuse<M: crate::Message>(
    shared: &Shared<M>,
    slot: &Slot<M>,
    msg: NodeMsg<M>,
    reason: &str,
) {
    match msg {
        NodeMsg::Task(t) | NodeMsg::Escalation(t) => {
            let why = format!("{} stopped before handling the task: {reason}", slot.path);
            shared.fail(slot, t.head, &why);
        }
        NodeMsg::Batch(batch) => {
            let why = format!("{} stopped before handling the task: {reason}", slot.path);
            for t in batch {
                shared.fail(slot, t.head, &why);
            }
        }
        NodeMsg::ChildExit { reply, .. } => {
            let _ = reply.send(Directive::Stop {
                reason: Arc::from(reason),
            });
        }
        NodeMsg::Reset | NodeMsg::Stop { .. } | NodeMsg::Respawn { .. } | NodeMsg::Drain => {}
    }
}
