//! Stable addresses: slots and the [`AgentRef`] handle users send through.
//!
//! ractor gives every actor incarnation a new `ActorRef`; a message sent to a dead
//! incarnation is refused. echelon addresses a **slot** instead: one per position in the
//! hierarchy, holding the current incarnation's actor ref behind a read-write lock.
//! Sends take the read lock (no contention among senders beyond one atomic); the
//! supervisor takes the write lock only to swap incarnations or close the slot. While a
//! slot is between incarnations, messages wait in its `pending` queue and are handed to
//! the next incarnation in order.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

use ractor::{ActorRef, MessagingErr};
use tokio::sync::{oneshot, Notify};

use crate::accounting::{bump, Counters, OwnerSide, SenderSide};
use crate::envelope::{Answer, Batch, Outcome, Path, Reply, Role, Task, TaskId};
use crate::hierarchy::shared::Shared;
use crate::node::NodeMsg;

/// One position in a hierarchy: an agent, a supervisor or a team lead.
///
/// **Layout** (`repr(C)`, in this order): what senders write on every send first (the
/// mailbox's lock word, the queue's word, the sender-side counters),
/// then what is read but rarely written, then what the node's own actor writes and
/// reads on every task (the owner-side counters, the epoch, the waiters). The middle
/// keeps the two hot ends at least 64 bytes apart, so they never share a cache line
/// whatever the allocation's alignment: when sender and agent run on two cores, a
/// write at one end does not take the other end's line away from the other core.
/// Measured on W5 (a pipeline: each stage sends to the next while it works on its own
/// queue), see BENCHMARKS.md.
#[repr(C)]
pub(crate) struct Slot<M> {
    // ---- written by senders on every send ----
    mailbox: RwLock<Mailbox<M>>,
    /// Agents only: the queue behind the mailbox ([`Side`]) in one word, written with
    /// SeqCst operations only (see [`QueueWord`]):
    /// - **who owns it** (bit 0, `BUSY`): the agent is working or waits on the queue
    ///   ([`PARKED`]), or a task or a [`NodeMsg::Drain`] is on its way to it, so a new
    ///   task waits in the queue instead of being a mailbox message of its own.
    ///   Whoever sets it owns the queue: the agent takes from the queue only while it
    ///   owns it, and a sender who sets it sends a mailbox message, whose handling
    ///   does;
    /// - **how many tasks wait there or are being pushed** (bits 1 to 45): counted by a
    ///   sender before its push and by the agent after its pops (in one go, see
    ///   [`Slot::took_queued`]), so never below what waits. A sender sends to the
    ///   mailbox only when it is 0: what that sender queued before has been taken;
    /// - **whether the owner waits on the queue** (bit 46, [`PARKED`]): an agent that has
    ///   taken everything waits there for its next task, inside ractor's handler
    ///   ([`Slot::park`]); a sender who queues a task then wakes it;
    /// - **whether a message waits in the mailbox** (bit 47, [`CALLED`]): set after a
    ///   mailbox send to an agent ([`Slot::call`]); the waiting agent wakes, gives the
    ///   queue up and goes back to ractor's loop ([`Slot::leave`]);
    /// - **the incarnation** (bits 48 to 63, [`Slot::incarnation`]): `detach` starts the
    ///   next one with the queue empty and unowned, and the agent's own operations
    ///   ([`Slot::release`], [`Slot::took_queued`], [`Slot::park`], [`Slot::leave`])
    ///   apply only to its own incarnation's word, so an actor detached while still
    ///   running (a kill outlived by a handler that blocks its thread) can neither give
    ///   up nor count down the next one's queue.
    queue: AtomicU64,
    pub(crate) tx: SenderSide,
    pub(crate) role: Role,
    pub(crate) uid: u32,
    // ---- read on every send or task, rarely written: the space between ----
    pub(crate) level: u32,
    pub(crate) path: Path,
    /// Mailbox capacity for external work (0: unbounded).
    pub(crate) capacity: AtomicU64,
    /// Messages in the pending queue (counted toward the capacity).
    pending_len: AtomicU64,
    /// What few slots need, allocated the first time one does (a slot is on every
    /// agent: its size is a good part of an idle agent's memory).
    extras: OnceLock<Box<Extras<M>>>,
    /// Keeps the owner's end 64 bytes from the senders' (see the layout above).
    _apart: [u64; 2],
    // ---- written and read by the node's own actor on every task ----
    pub(crate) own: OwnerSide,
    /// Restart epoch: a supervisor bumps it to restart the agent at its next message.
    pub(crate) epoch: AtomicU64,
    /// Senders waiting for room (`AgentRef::send_wait`).
    waiters: AtomicUsize,
}

/// The rarely used parts of a slot.
struct Extras<M> {
    /// Senders waiting for room wait here.
    room: Notify,
    /// For a router or pipeline: its requests in flight in detached tasks, which count
    /// toward its capacity although its mailbox has settled them.
    in_flight: OnceLock<Arc<AtomicU64>>,
    /// For a router or pipeline: new tasks are taken here, on the sender's thread, not
    /// through the mailbox.
    in_place: OnceLock<Box<dyn crate::lead::Intake<M>>>,
}

impl<M> Default for Extras<M> {
    fn default() -> Self {
        Extras {
            room: Notify::new(),
            in_flight: OnceLock::new(),
            in_place: OnceLock::new(),
        }
    }
}

struct Mailbox<M> {
    actor: Option<ActorRef<NodeMsg<M>>>,
    /// The incarnation's queue behind its mailbox, made by the first sender that finds
    /// the agent busy, or by the agent when it first waits on it; it goes with the
    /// incarnation (taken by `detach`).
    side: OnceLock<Arc<Side<M>>>,
    /// The close reason and the messages waiting for the next incarnation; `None`
    /// while the slot is open with nothing pending, as it is nearly always.
    idle: Option<Box<Idle<M>>>,
}

/// An agent incarnation's queue behind its ractor mailbox.
///
/// A task sent to an agent that owns no queue (it has not been sent a task, or was
/// called away by a message for its mailbox) is a mailbox message of its own, as in
/// ractor. A task sent while the agent owns its queue (see [`Slot::queue`]: it is
/// working, or a task is on its way to it, or it waits here) goes here, and the agent
/// takes everything waiting here after the task in hand, then waits here for the next
/// ([`Slot::park`]): many tasks cost one mailbox message (ractor's message loop costs
/// about six times a channel's push and pop per message). Only tasks and batches go
/// here ([`Queued`]).
pub(crate) struct Side<M> {
    tx: mpsc::Sender<Queued<M>>,
    /// Taken by the agent at its first look, and kept in its state: if the actor dies,
    /// what was queued goes with it, as a dead actor's mailbox does.
    rx: Mutex<Option<mpsc::Receiver<Queued<M>>>>,
    /// The agent's task while it waits here (see [`Slot::park`]): woken by a sender
    /// that queues a task ([`Slot::queue_behind`]), or by a message for its mailbox
    /// ([`Slot::call`]).
    waker: AtomicWaker,
}

/// The agent's end of the queue behind its mailbox: the receiver, and the queue
/// itself, whose waker it registers when it waits there ([`Slot::park`]).
pub(crate) struct SideEnd<M> {
    pub(crate) side: Arc<Side<M>>,
    rx: mpsc::Receiver<Queued<M>>,
}

impl<M> Drop for SideEnd<M> {
    /// The agent's actor is gone: its task's waker must not keep that task's memory
    /// alive in the slot.
    fn drop(&mut self) {
        drop(self.side.waker.take());
    }
}

impl<M> SideEnd<M> {
    /// The next queued task or batch, if any.
    #[inline]
    pub(crate) fn pop(&mut self) -> Option<Queued<M>> {
        self.rx.try_recv().ok()
    }
}

/// Why an agent waiting on its queue ([`Slot::park`]) woke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Woke {
    /// Tasks are counted in the queue: take them.
    Tasks,
    /// A message waits in the mailbox (or the incarnation was detached): leave the
    /// queue ([`Slot::leave`]) for the message loop.
    Called,
}

/// What waits in the queue behind an agent's mailbox: work only.
pub(crate) enum Queued<M> {
    /// A task, as [`NodeMsg::Task`].
    Task(Task<M>),
    /// A batch, as [`NodeMsg::Batch`].
    Batch(Batch<M>),
}

impl<M> From<Queued<M>> for NodeMsg<M> {
    fn from(q: Queued<M>) -> Self {
        match q {
            Queued::Task(t) => NodeMsg::Task(t),
            Queued::Batch(b) => NodeMsg::Batch(b),
        }
    }
}

impl<M> Side<M> {
    fn new() -> Self {
        let (tx, rx) = mpsc::channel();
        Side {
            tx,
            rx: Mutex::new(Some(rx)),
            waker: AtomicWaker::new(),
        }
    }
}

/// The owner bit of [`Slot::queue`].
const BUSY: u64 = 1;
/// One task in the count of [`Slot::queue`].
const QUEUED_ONE: u64 = 2;
/// The count's bits in [`Slot::queue`] (1 to 45).
const COUNT: u64 = ((1 << 46) - 1) & !BUSY;
/// The owner waits on the queue ([`Slot::park`]): a sender who queues wakes it. Set
/// only with [`BUSY`].
const PARKED: u64 = 1 << 46;
/// A message went to the agent's mailbox ([`Slot::call`]): an owner waiting on the
/// queue leaves it for its message loop ([`Slot::leave`]).
const CALLED: u64 = 1 << 47;
/// Where the incarnation starts in [`Slot::queue`].
const INCARNATION_SHIFT: u32 = 48;

/// A value of [`Slot::queue`], taken apart.
#[derive(Clone, Copy)]
struct QueueWord(u64);

impl QueueWord {
    /// Nothing queued and no owner: a sender may take the mailbox path.
    #[inline(always)]
    fn idle(self) -> bool {
        self.0 & (BUSY | COUNT) == 0
    }

    fn queued(self) -> u64 {
        (self.0 & COUNT) >> 1
    }

    fn incarnation(self) -> u16 {
        // the top 16 bits
        (self.0 >> INCARNATION_SHIFT) as u16
    }
}

struct Idle<M> {
    closed: Option<Arc<str>>,
    /// Messages waiting for the next incarnation, in order. Only touched under the
    /// mailbox's write lock, so ordered with attach, detach and close; the mutex (never
    /// contended) is what lets a message that is `Send` but not `Sync` sit in the
    /// read-write lock.
    pending: Mutex<VecDeque<NodeMsg<M>>>,
}

impl<M> Idle<M> {
    fn pending(&mut self) -> &mut VecDeque<NodeMsg<M>> {
        self.pending.get_mut().unwrap_or_else(|e| e.into_inner())
    }
}

impl<M> Mailbox<M> {
    fn closed(&self) -> Option<&Arc<str>> {
        self.idle.as_ref().and_then(|i| i.closed.as_ref())
    }

    fn idle(&mut self) -> &mut Idle<M> {
        self.idle.get_or_insert_with(|| {
            Box::new(Idle {
                closed: None,
                pending: Mutex::new(VecDeque::new()),
            })
        })
    }
}

impl<M> fmt::Debug for Slot<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot")
            .field("path", &self.path)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl<M> Slot<M> {
    /// Wake the senders waiting for room here, if any. The caller made room with a
    /// SeqCst read-modify-write just before (see `Runs::chained_done`), paired with
    /// `wait_for_room`'s fence.
    #[inline]
    pub(crate) fn wake_if_waiting(&self) {
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.wake_waiters();
        }
    }

    /// Wake every sender waiting for room, to re-check (room freed, slot closed,
    /// hierarchy stopping). Nobody waits if the extras were never made.
    pub(crate) fn wake_waiters(&self) {
        // the caller changed what a waiter checks (settled, detached, the phase) and a
        // waiter makes the extras, then checks: a SeqCst fence on each side means that
        // either the waiter sees the change or this sees its extras (a cold path)
        std::sync::atomic::fence(Ordering::SeqCst);
        if let Some(e) = self.extras.get() {
            e.room.notify_waiters();
        }
    }
}

impl<M: Send + 'static> Slot<M> {
    pub(crate) fn new(path: Path, uid: u32, level: u32, role: Role) -> Self {
        Slot {
            path,
            uid,
            level,
            role,
            mailbox: RwLock::new(Mailbox {
                actor: None,
                side: OnceLock::new(),
                idle: None,
            }),
            tx: SenderSide::default(),
            own: OwnerSide::default(),
            _apart: [0; 2],
            epoch: AtomicU64::new(0),
            capacity: AtomicU64::new(0),
            waiters: AtomicUsize::new(0),
            pending_len: AtomicU64::new(0),
            queue: AtomicU64::new(0),
            extras: OnceLock::new(),
        }
    }

    /// This node's counters.
    pub(crate) fn snapshot(&self) -> Counters {
        crate::accounting::snapshot(&self.tx, &self.own)
    }

    /// Messages in the mailbox or being processed: enqueued but not settled.
    pub(crate) fn unsettled(&self) -> u64 {
        crate::accounting::unsettled(&self.tx, &self.own)
    }

    fn extras(&self) -> &Extras<M> {
        self.extras.get_or_init(Box::default)
    }

    /// From now on, new tasks for this slot are taken by `intake` on their senders'
    /// threads (set once; later calls keep the first).
    pub(crate) fn take_in_place(&self, intake: Box<dyn crate::lead::Intake<M>>) {
        let _ = self.extras().in_place.set(intake);
    }

    /// Where new tasks are taken in place, if they are.
    #[inline]
    fn in_place(&self) -> Option<&dyn crate::lead::Intake<M>> {
        self.extras.get()?.in_place.get().map(|b| &**b)
    }

    /// Hand new work to this slot: to its lead's intake on this thread if it takes
    /// work in place ([`crate::lead::Intake`]), in order, else to its mailbox
    /// ([`Slot::deliver`]). Refused, with the work given back, if the slot is closed.
    ///
    /// Work taken in place is not counted in the mailbox's `enqueued` and `settled`: it
    /// never is in the mailbox, and a kill's count of what the mailbox lost
    /// ([`Slot::detach`]) must not include a request its sender is still starting.
    #[inline(always)]
    pub(crate) fn hand(
        self: &Arc<Self>,
        shared: &Arc<Shared<M>>,
        msg: NodeMsg<M>,
    ) -> Result<(), (NodeMsg<M>, Arc<str>)>
    where
        M: crate::Message,
    {
        match self.in_place() {
            None => self.deliver(msg),
            Some(intake) => self.hand_in_place(intake, shared, msg),
        }
    }

    /// [`Slot::hand`] to a lead that takes work in place.
    #[inline(never)]
    fn hand_in_place(
        self: &Arc<Self>,
        intake: &dyn crate::lead::Intake<M>,
        shared: &Arc<Shared<M>>,
        msg: NodeMsg<M>,
    ) -> Result<(), (NodeMsg<M>, Arc<str>)>
    where
        M: crate::Message,
    {
        if let Some(reason) = self.read().closed() {
            return Err((msg, reason.clone()));
        }
        match msg {
            NodeMsg::Task(task) => match intake.take(self, shared, task) {
                Ok(()) => Ok(()),
                Err(task) => self.deliver(NodeMsg::Task(task)),
            },
            NodeMsg::Batch(batch) => {
                // one by one, in order: a batch keeps its place among the sender's
                // other sends
                for task in batch {
                    if let Err(task) = intake.take(self, shared, task) {
                        if let Err((m, why)) = self.deliver(NodeMsg::Task(task)) {
                            crate::agent::actor::refuse(shared, self, m, &why);
                        }
                    }
                }
                Ok(())
            }
            other => self.deliver(other),
        }
    }

    /// Count a router's or pipeline's requests in flight in detached tasks toward its
    /// capacity (set once, when it is built).
    pub(crate) fn count_in_flight(&self, active: Arc<AtomicU64>) {
        let _ = self.extras().in_flight.set(active);
    }

    /// Where senders waiting for room wait.
    fn room(&self) -> &Notify {
        &self.extras().room
    }

    /// What a router's or pipeline's finished request calls
    /// ([`crate::lead::Runs::on_done`]): wake the senders waiting for room at this lead
    /// slot, if there are any. The lead's in-flight count was lowered just before, by a
    /// SeqCst read-modify-write; it and the fence a waiter makes after registering
    /// (`wait_for_room`) mean that either the waiter sees the lower count or this sees
    /// the waiter. Most requests finish with nobody waiting, and then no lock is taken
    /// (tokio's `notify_waiters` takes its waiters' mutex even with none). The slot is
    /// held weakly: its intake holds the lead, which holds this.
    pub(crate) fn room_waker(self: &Arc<Self>) -> impl Fn() + Send + Sync + 'static {
        let slot = Arc::downgrade(self);
        move || {
            // called right after a SeqCst read-modify-write of the lead's count of
            // requests in flight (`RunGuard`'s drop), so no fence here
            if let Some(s) = slot.upgrade() {
                s.wake_if_waiting();
            }
        }
    }

    /// The node is done with one task: count it, and wake a sender waiting for room.
    #[inline]
    pub(crate) fn settle(&self) {
        // SeqCst, paired with `wait_for_room`: a settle and a sender registering as a
        // waiter each write then read the other's variable, so at least one of them
        // sees the other (the sender re-checks the room, or the settle wakes it)
        self.own.settled.fetch_add(1, Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) > 0 {
            // a waiter made the extras before it registered (`wait_for_room`)
            self.wake_waiters();
        }
    }

    /// The work waiting or being done here: the mailbox's depth, and for a router or
    /// pipeline its requests in flight (taken in place, never in the mailbox).
    pub(crate) fn load(&self) -> u64 {
        let extra = self
            .extras
            .get()
            .and_then(|e| e.in_flight.get())
            .map_or(0, |a| a.load(Ordering::Acquire));
        self.unsettled() + extra
    }

    /// Is there no room for `n` more tasks of external work? Gives the capacity if so.
    ///
    /// The capacity counts tasks, not mailbox messages: `n` tasks need `n` free places.
    /// An empty mailbox takes any batch, so a batch larger than the capacity is not
    /// refused forever (it overshoots the capacity by that one batch).
    #[inline]
    fn full(&self, n: u64) -> Option<u64> {
        match self.capacity.load(Ordering::Relaxed) {
            0 => None,
            cap => {
                let load = self.load() + self.pending_len.load(Ordering::Acquire);
                (load > 0 && load.saturating_add(n) > cap).then_some(cap)
            }
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Mailbox<M>> {
        // a poisoned lock only means a panic elsewhere while holding it; the data is a
        // plain option and queue, still consistent
        self.mailbox.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Mailbox<M>> {
        self.mailbox.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Put a message in this slot's mailbox, or in its pending queue between
    /// incarnations. Gives the message back with the reason if the slot is closed.
    #[inline(always)]
    pub(crate) fn deliver(&self, msg: NodeMsg<M>) -> Result<(), (NodeMsg<M>, Arc<str>)> {
        let counted = msg.tasks();
        let msg = {
            let mb = self.read();
            if let Some(reason) = mb.closed() {
                return Err((msg, reason.clone()));
            }
            match &mb.actor {
                Some(actor) => {
                    // `send_to` written out: the message is moved once, not through
                    // another layer (72 bytes for a small message type)
                    let sent = if self.to_mailbox(&msg) {
                        self.try_send_called(&mb, actor, msg, counted)
                    } else {
                        self.queue_behind(&mb, actor, msg, counted)
                    };
                    match sent {
                        Ok(()) => return Ok(()),
                        Err(m) => m,
                    }
                }
                None => msg,
            }
        };
        self.deliver_slow(msg, counted)
    }

    /// Send to the live incarnation `actor`: to the mailbox, or for a busy agent into
    /// the queue behind it ([`Slot::to_mailbox`]; every task or batch an agent finds in
    /// its mailbox was sent by the sender that made it the queue's owner: the agent
    /// handles it, takes what waits in the queue, then waits there until a message for
    /// its mailbox calls it away). On refusal (dead actor) the message comes back.
    #[inline(always)]
    fn send_to(
        &self,
        mb: &Mailbox<M>,
        actor: &ActorRef<NodeMsg<M>>,
        msg: NodeMsg<M>,
        counted: u64,
    ) -> Result<(), NodeMsg<M>> {
        if self.to_mailbox(&msg) {
            self.try_send_called(mb, actor, msg, counted)
        } else {
            self.queue_behind(mb, actor, msg, counted)
        }
    }

    /// [`Slot::try_send`] to the mailbox, then, for an agent, the mark that calls it
    /// away from its queue if it waits there ([`Slot::park`]): a message for an agent
    /// that waits on its queue would otherwise wait for its next task.
    #[inline(always)]
    fn try_send_called(
        &self,
        mb: &Mailbox<M>,
        actor: &ActorRef<NodeMsg<M>>,
        msg: NodeMsg<M>,
        counted: u64,
    ) -> Result<(), NodeMsg<M>> {
        // (work goes to an agent's mailbox only when the agent is idle: not parked)
        let call = self.role == Role::Agent && !matches!(msg, NodeMsg::Task(_) | NodeMsg::Batch(_));
        self.try_send(actor, msg, counted)?;
        if call {
            self.call(mb);
        }
        Ok(())
    }

    /// A message went to an agent's mailbox: mark the queue's word [`CALLED`], after
    /// the send, and wake the agent if it waits on its queue. SeqCst on the word, with
    /// [`Slot::park`]'s: either the agent parks after this and sees the mark, or this
    /// sees it parked (its waker registered before) and wakes it.
    #[inline(never)]
    fn call(&self, mb: &Mailbox<M>) {
        let was = self.queue.fetch_or(CALLED, Ordering::SeqCst);
        if was & PARKED != 0 {
            if let Some(side) = mb.side.get() {
                side.waker.wake();
            }
        }
    }

    /// Does `msg` go to the mailbox (else into the queue behind it)? Anything but work
    /// for an agent does; work for an agent does when nothing is queued and this
    /// sender takes the agent's queue (see [`Slot::queue`]): one compare-and-swap from
    /// "nothing queued, no owner" to "owned"; if anything changed in between, the task
    /// is queued instead, which keeps every order.
    ///
    /// One sender's tasks keep their order: a sender's task goes to the mailbox only
    /// when nothing is queued (so what it queued before has been taken by the agent,
    /// which finishes it before its next mailbox message) and it becomes the queue's
    /// owner, so the agent takes nothing queued after it until it has handled it.
    #[inline(always)]
    fn to_mailbox(&self, msg: &NodeMsg<M>) -> bool {
        !(self.role == Role::Agent && matches!(msg, NodeMsg::Task(_) | NodeMsg::Batch(_))) || {
            let w = self.queue.load(Ordering::SeqCst);
            QueueWord(w).idle()
                && self
                    .queue
                    .compare_exchange(w, w | BUSY, Ordering::SeqCst, Ordering::Relaxed)
                    .is_ok()
        }
    }

    /// Work for a busy agent ([`Slot::to_mailbox`] said no): into the queue behind its
    /// mailbox ([`Side`]). On refusal (dead actor) the message comes back.
    #[inline(never)]
    fn queue_behind(
        &self,
        mb: &Mailbox<M>,
        actor: &ActorRef<NodeMsg<M>>,
        msg: NodeMsg<M>,
        counted: u64,
    ) -> Result<(), NodeMsg<M>> {
        // A dying actor's mailbox refuses, and its queue must too: the task then waits
        // in the slot for the next incarnation, as a mailbox send would.
        if actor.get_status() >= ractor::ActorStatus::Stopping {
            return Err(msg);
        }
        let item = match msg {
            NodeMsg::Task(t) => Queued::Task(t),
            NodeMsg::Batch(b) => Queued::Batch(b),
            // `to_mailbox` queues only work, so this is not reached; were it, the
            // message goes to the mailbox and calls the agent as any other does
            other => {
                debug_assert!(false, "queue_behind given a mailbox message");
                return self.try_send_called(mb, actor, other, counted);
            }
        };
        let side = mb.side.get_or_init(|| Arc::new(Side::new()));
        crate::accounting::add(&self.tx.enqueued, counted);
        // Counted before the push, so the count is never below what waits (a sender
        // uses the mailbox only at 0), and paired with the agent's `release` and
        // `leave` (each gives the queue up only if the count is 0, in one
        // compare-and-swap) and `park` (it waits only if the count is 0), all SeqCst on
        // one word: either the agent sees this count and keeps the queue or stays
        // awake (and waits for the push if it has not landed), or this sees, after the
        // push, the queue unowned and gives it an owner (a `Drain` for the agent), or
        // its owner waiting and wakes it. (The write lock held by `detach` excludes
        // this, so the incarnation cannot change in between.)
        self.queue.fetch_add(QUEUED_ONE, Ordering::SeqCst);
        if let Err(mpsc::SendError(item)) = side.tx.send(item) {
            // the receiver went with a dead actor
            self.queue.fetch_sub(QUEUED_ONE, Ordering::SeqCst);
            self.tx.enqueued.fetch_sub(counted, Ordering::AcqRel);
            return Err(item.into());
        }
        let w = self.queue.load(Ordering::SeqCst);
        if w & BUSY == 0 {
            if self.queue.fetch_or(BUSY, Ordering::SeqCst) & BUSY == 0 {
                // refused only by a dead actor, whose queue goes with it (`detach`)
                let _ = actor.send_message(NodeMsg::Drain);
            }
        } else if w & PARKED != 0 {
            // the owner waits on the queue: its waker was registered before it parked,
            // and it parked before this count (else it would have seen the count)
            side.waker.wake();
        }
        Ok(())
    }

    /// The agent of incarnation `me` ([`Slot::incarnation`], read when it started)
    /// gives up the queue behind its mailbox (see [`Slot::queue`]), which it owns. False
    /// if it gave it up; true if tasks wait there, in which case it keeps it and must
    /// take them. Paired with [`Slot::queue_behind`]'s count and look at the owner (see
    /// there). Does nothing (false) for a detached incarnation.
    #[inline]
    pub(crate) fn release(&self, me: u16) -> bool {
        self.change_own_queue(me, |w| {
            debug_assert!(w.0 & BUSY != 0, "an agent gives up a queue it does not own");
            (w.queued() == 0).then_some(w.0 & !BUSY)
        })
        .is_some_and(|was| was.queued() > 0)
    }

    /// The agent of incarnation `me`, owner of its queue, waits on it for the next task
    /// instead of going back to its message loop: a task sent now is queued (the queue
    /// is owned) and its sender wakes the agent ([`Slot::queue_behind`]), so the task
    /// costs a channel's push and pop, not a pass through ractor's message loop. A
    /// message for the mailbox marks the word [`CALLED`] and wakes it too
    /// ([`Slot::call`]).
    ///
    /// Registers the waker, then, in one compare-and-swap ([`Slot::change_own_queue`]):
    /// if tasks are counted, clears
    /// [`PARKED`] and gives [`Woke::Tasks`]; if called, clears it and gives
    /// [`Woke::Called`]; else sets it and waits. SeqCst on the word, with the sender's
    /// count and the caller's mark: whichever comes first, the other sees it. A
    /// detached incarnation gives `Woke::Called` (it leaves, and changes nothing).
    pub(crate) fn park(&self, me: u16, side: &Side<M>, cx: &mut Context<'_>) -> Poll<Woke> {
        side.waker.register(cx.waker());
        let was = self.change_own_queue(me, |w| {
            debug_assert!(w.0 & BUSY != 0, "an agent waits on a queue it does not own");
            let new = if w.queued() > 0 || w.0 & CALLED != 0 {
                w.0 & !PARKED
            } else {
                w.0 | PARKED
            };
            (new != w.0).then_some(new)
        });
        // decided on the word the change was made to
        match was {
            None => Poll::Ready(Woke::Called),
            Some(w) if w.queued() > 0 => Poll::Ready(Woke::Tasks),
            Some(w) if w.0 & CALLED != 0 => Poll::Ready(Woke::Called),
            Some(_) => Poll::Pending,
        }
    }

    /// The agent of incarnation `me` was called away from its queue ([`Woke::Called`]):
    /// clears the mark and gives the queue up, in one compare-and-swap, unless tasks
    /// wait (true: it keeps the queue, and must send itself a [`NodeMsg::Drain`],
    /// which its mailbox takes after the message it was called for).
    pub(crate) fn leave(&self, me: u16) -> bool {
        self.change_own_queue(me, |w| {
            let n = w.0 & !(PARKED | CALLED);
            Some(if w.queued() == 0 { n & !BUSY } else { n })
        })
        .is_some_and(|was| was.queued() > 0)
    }

    /// The agent of incarnation `me` took `n` tasks off the queue behind its mailbox.
    /// Counted after the pops, in one go before the agent yields, waits on the queue
    /// (which [`Slot::park`] needs: a count above what waits would wake it at once) or
    /// gives the queue up: until then the count is above what waits, which only sends
    /// more senders to the queue. Does nothing for a detached incarnation.
    #[inline]
    pub(crate) fn took_queued(&self, me: u16, n: u32) {
        if n > 0 {
            self.change_own_queue(me, |w| {
                // every task popped was counted before its push: never more than the
                // count (the `min` keeps a bug from reaching the incarnation's bits)
                debug_assert!(u64::from(n) <= w.queued(), "more taken than counted");
                Some(w.0 - QUEUED_ONE * u64::from(n).min(w.queued()))
            });
        }
    }

    /// The agent's own change to the queue's word, in one compare-and-swap: `change`
    /// gives the new word for the current one, or `None` to leave it. Nothing is changed
    /// if the word is no longer incarnation `me`'s (the agent was detached). Gives the
    /// word as it was, or `None` for a detached incarnation.
    #[inline]
    fn change_own_queue(
        &self,
        me: u16,
        change: impl Fn(QueueWord) -> Option<u64>,
    ) -> Option<QueueWord> {
        let mut w = self.queue.load(Ordering::SeqCst);
        loop {
            let word = QueueWord(w);
            if word.incarnation() != me {
                return None;
            }
            let Some(new) = change(word) else {
                return Some(word);
            };
            match self
                .queue
                .compare_exchange(w, new, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return Some(word),
                Err(now) => w = now,
            }
        }
    }

    /// This slot's incarnation, for an agent starting in it to keep (see
    /// [`Slot::queue`]): it changes only when a dead incarnation is detached.
    pub(crate) fn incarnation(&self) -> u16 {
        QueueWord(self.queue.load(Ordering::SeqCst)).incarnation()
    }

    /// The receiving end of the queue behind the agent's mailbox, for the agent of
    /// incarnation `me` to keep for the rest of its incarnation; `None` if there is no
    /// queue yet (or the agent already took it), or if `me` has been detached: the
    /// queue there now is the next incarnation's. Read under the mailbox's lock, which
    /// `detach` takes to start the next incarnation, so the check and the take agree.
    ///
    /// `make`: make the queue if no sender has yet (for the agent to wait on it,
    /// [`Slot::park`]).
    pub(crate) fn take_side(&self, me: u16, make: bool) -> Option<SideEnd<M>> {
        let mb = self.read();
        if self.incarnation() != me {
            return None;
        }
        let side = if make {
            mb.side.get_or_init(|| Arc::new(Side::new()))
        } else {
            mb.side.get()?
        };
        let rx = side.rx.lock().unwrap_or_else(|e| e.into_inner()).take()?;
        Some(SideEnd {
            side: side.clone(),
            rx,
        })
    }

    /// [`Slot::deliver`] when the incarnation is dead or not yet attached.
    #[inline(never)]
    fn deliver_slow(&self, msg: NodeMsg<M>, counted: u64) -> Result<(), (NodeMsg<M>, Arc<str>)> {
        let mut mb = self.write();
        if let Some(reason) = mb.closed() {
            return Err((msg, reason.clone()));
        }
        let msg = match &mb.actor {
            Some(actor) => match self.send_to(&mb, actor, msg, counted) {
                Ok(()) => return Ok(()),
                Err(m) => m,
            },
            None => msg,
        };
        mb.idle().pending().push_back(msg);
        self.pending_len.fetch_add(counted.max(1), Ordering::AcqRel);
        Ok(())
    }

    /// Send to one incarnation; on refusal (dead actor) the message comes back.
    /// `counted`: the tasks it carries ([`NodeMsg::tasks`]), added to `enqueued`
    /// before the send so the agent can never settle a task not yet counted.
    #[inline(always)]
    fn try_send(
        &self,
        actor: &ActorRef<NodeMsg<M>>,
        msg: NodeMsg<M>,
        counted: u64,
    ) -> Result<(), NodeMsg<M>> {
        if counted > 0 {
            crate::accounting::add(&self.tx.enqueued, counted);
        }
        match actor.send_message(msg) {
            Ok(()) => Ok(()),
            Err(e) => {
                if counted > 0 {
                    self.tx.enqueued.fetch_sub(counted, Ordering::AcqRel);
                }
                match e {
                    MessagingErr::SendErr(m) => Err(m),
                    // ractor only fails a local, typed send with SendErr; if that ever
                    // changes, the message is gone: count it as lost, loudly
                    MessagingErr::ChannelClosed | MessagingErr::InvalidActorType => {
                        debug_assert!(false, "ractor refused a send without returning it");
                        if counted > 0 {
                            crate::accounting::add(&self.own.failed, counted);
                            crate::accounting::add(&self.own.rare().lost_in_mailbox, counted);
                        }
                        tracing::error!(node = %self.path, "ractor refused a message without returning it; counted as lost");
                        Ok(())
                    }
                }
            }
        }
    }

    /// Attach a new incarnation and hand it the pending messages, in order. Refused
    /// (false) if the slot was closed meanwhile; the caller must stop that actor.
    pub(crate) fn attach(&self, actor: ActorRef<NodeMsg<M>>) -> bool {
        let mut mb = self.write();
        if mb.closed().is_some() {
            return false;
        }
        // in order, through `send_to`: the first task goes to the new mailbox and owns
        // the agent's queue, the tasks after it queue behind it
        let mut pending = match mb.idle.as_mut() {
            Some(idle) => std::mem::take(idle.pending()),
            None => VecDeque::new(),
        };
        while let Some(m) = pending.pop_front() {
            let counted = m.tasks();
            if let Err(m) = self.send_to(&mb, &actor, m, counted) {
                pending.push_front(m);
                break;
            }
            self.pending_len.fetch_sub(counted.max(1), Ordering::AcqRel);
        }
        if let Some(idle) = mb.idle.as_mut() {
            if pending.is_empty() {
                // open and nothing pending: give the memory back
                mb.idle = None;
            } else {
                *idle.pending() = pending;
            }
        }
        mb.actor = Some(actor);
        true
    }

    /// Detach a dead incarnation. Returns how many messages died with its mailbox
    /// (enqueued but never settled); the caller accounts for them. Exact, because the
    /// write lock excludes any sender mid-send and the actor no longer settles.
    pub(crate) fn detach(&self) -> u64 {
        let mut mb = self.write();
        mb.actor = None;
        // the queue behind the mailbox goes with the incarnation, as the mailbox does
        let side = mb.side.take();
        // the next incarnation starts with the queue empty and unowned; the detached
        // one's own operations no longer apply (see `Slot::queue`)
        let next = QueueWord(self.queue.load(Ordering::SeqCst))
            .incarnation()
            .wrapping_add(1);
        self.queue
            .store(u64::from(next) << INCARNATION_SHIFT, Ordering::SeqCst);
        let lost = self.unsettled();
        // the lost messages are now settled (by their loss)
        crate::accounting::add(&self.own.settled, lost);
        drop(mb);
        // the queued tasks' drops answer their callers: outside the lock
        drop(side);
        self.wake_waiters();
        lost
    }

    /// Close the slot: later deliveries are refused with `reason`. Returns the pending
    /// messages, which the caller must resolve.
    pub(crate) fn close(&self, reason: Arc<str>) -> Vec<NodeMsg<M>> {
        let mut mb = self.write();
        let idle = mb.idle();
        if idle.closed.is_none() {
            idle.closed = Some(reason);
        }
        let drained: Vec<NodeMsg<M>> = idle.pending().drain(..).collect();
        self.pending_len.store(0, Ordering::Release);
        drop(mb);
        self.wake_waiters();
        drained
    }

    pub(crate) fn actor(&self) -> Option<ActorRef<NodeMsg<M>>> {
        self.read().actor.clone()
    }

    /// The reason the slot was closed with, if it is closed.
    pub(crate) fn close_reason(&self) -> Option<Arc<str>> {
        self.read().closed().cloned()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.read().closed().is_some()
    }
}

/// The outcome and detail ports of a request submitted with `submit_with_detail`.
pub(crate) type WithDetail<M> = (oneshot::Receiver<Answer<M>>, crate::router::DetailRx<M>);

/// A handle to one agent: send it tasks, call it and wait for the outcome.
///
/// The handle addresses the agent's *position*, not one actor incarnation: it stays
/// valid across restarts and respawns. Cloning is cheap.
pub struct AgentRef<M> {
    pub(crate) slot: Arc<Slot<M>>,
    pub(crate) shared: Arc<Shared<M>>,
}

impl<M> Clone for AgentRef<M> {
    fn clone(&self) -> Self {
        AgentRef {
            slot: self.slot.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<M> fmt::Debug for AgentRef<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AgentRef").field(&self.slot.path).finish()
    }
}

impl<M: crate::Message> AgentRef<M> {
    /// The agent's path in its hierarchy.
    pub fn path(&self) -> &Path {
        &self.slot.path
    }

    /// Tasks in this agent's mailbox or being handled right now (not counting those
    /// waiting for an incarnation between a crash and a respawn).
    pub fn queued(&self) -> u64 {
        self.slot.unsettled()
    }

    /// This agent's counters.
    pub fn counters(&self) -> Counters {
        self.slot.snapshot()
    }

    /// Submit a task without waiting. The task's outcome shows in the counters (and in
    /// the escalation sink if it leaves the top).
    ///
    /// # Errors
    /// [`SendError::ShuttingDown`] once the hierarchy stopped taking work and
    /// [`SendError::Closed`] if this agent has stopped for good; both give the message
    /// back. A refused message is not counted as submitted.
    pub fn send(&self, msg: M) -> Result<TaskId, SendError<M>> {
        if let Some(capacity) = self.slot.full(1) {
            return Err(self.refuse_full(msg, capacity));
        }
        self.submit(msg, None, true)
    }

    /// Submit a task, waiting while the agent's mailbox is at its capacity
    /// (backpressure): the producer slows to the agent's pace instead of growing its
    /// queue. Without a capacity this is [`AgentRef::send`].
    ///
    /// # Errors
    /// As [`AgentRef::send`], except that it never returns [`SendError::Full`].
    ///
    /// # Cancel safety
    /// Dropping the future before it resolves sends nothing.
    pub async fn send_wait(&self, msg: M) -> Result<TaskId, SendError<M>> {
        self.wait_for_room(1).await;
        self.submit(msg, None, true)
    }

    /// [`AgentRef::call`] with backpressure: wait while the mailbox is at its capacity,
    /// then submit and wait for the outcome.
    ///
    /// # Errors
    /// As [`AgentRef::call`], except that it never returns [`SendError::Full`].
    pub async fn call_wait(&self, msg: M) -> Result<Outcome<M>, SendError<M>> {
        self.wait_for_room(1).await;
        let (tx, rx) = oneshot::channel();
        let id = self.submit(msg, Some(tx.into()), true)?;
        Ok(self.answered(id, rx.await))
    }

    /// Submit several tasks in **one mailbox message**: one lock, one set of counter
    /// updates and one mailbox push for the whole batch, instead of one per task.
    ///
    /// Each message is a task of its own, exactly as if sent with [`AgentRef::send`]
    /// one after the other: it has its own [`TaskId`] (the batch's ids are returned, in
    /// order), is counted as submitted, has its own verdict, escalation and outcome, and
    /// is redelivered on its own if its handler crashes (the tasks after it wait, then
    /// run in order). A panic on one task affects only that task. The agent settles the
    /// tasks one by one, so `queued()` and backpressure see the batch drain task by task,
    /// and a kill mid-batch counts only the tasks not yet finished as lost.
    ///
    /// **Capacity counts tasks**, not messages: a batch of *n* needs *n* free places,
    /// else the whole batch is refused with [`SendError::Full`] (its *n* tasks counted
    /// as `rejected`). An empty mailbox takes any batch, so a batch larger than the
    /// capacity is not refused forever; it overshoots the capacity by that batch.
    ///
    /// An empty batch sends nothing. Tasks of a batch have no reply port (use
    /// [`AgentRef::call`] for a reply).
    ///
    /// # Errors
    /// As [`AgentRef::send`], for the whole batch: nothing of a refused batch is sent,
    /// and the messages are given back in order.
    pub fn send_batch(
        &self,
        msgs: impl IntoIterator<Item = M>,
    ) -> Result<BatchIds, SendError<Vec<M>>> {
        let msgs: Vec<M> = msgs.into_iter().collect();
        if msgs.is_empty() {
            return Ok(BatchIds::empty(self.slot.uid));
        }
        if let Some(capacity) = self.slot.full(msgs.len() as u64) {
            crate::accounting::add(&self.slot.own.rare().rejected, msgs.len() as u64);
            return Err(SendError::Full {
                msg: msgs,
                path: self.slot.path.clone(),
                capacity,
            });
        }
        self.submit_batch(msgs, true)
    }

    /// [`AgentRef::send_batch`] with backpressure: wait until the mailbox has room for
    /// the whole batch (an empty mailbox, for a batch larger than the capacity), then
    /// submit it.
    ///
    /// # Errors
    /// As [`AgentRef::send_batch`], except that it never returns [`SendError::Full`].
    ///
    /// # Cancel safety
    /// Dropping the future before it resolves sends nothing.
    pub async fn send_batch_wait(
        &self,
        msgs: impl IntoIterator<Item = M>,
    ) -> Result<BatchIds, SendError<Vec<M>>> {
        let msgs: Vec<M> = msgs.into_iter().collect();
        if msgs.is_empty() {
            return Ok(BatchIds::empty(self.slot.uid));
        }
        self.wait_for_room(msgs.len() as u64).await;
        self.submit_batch(msgs, true)
    }

    /// Submit a batch from inside the hierarchy or from outside (`external`).
    pub(crate) fn submit_batch(
        &self,
        msgs: Vec<M>,
        external: bool,
    ) -> Result<BatchIds, SendError<Vec<M>>> {
        let n = msgs.len() as u64;
        if n == 0 {
            return Ok(BatchIds::empty(self.slot.uid));
        }
        let tx = &self.slot.tx;
        // counted first, then the phase checked: see `submit_with`
        let first = tx.offered.fetch_add(n, Ordering::SeqCst);
        if external && !self.shared.accepting() {
            tx.withdrawn.fetch_add(n, Ordering::SeqCst);
            return Err(SendError::ShuttingDown { msg: msgs });
        }
        let batch = Batch::new(self.slot.uid, first, msgs);
        match self.slot.hand(&self.shared, NodeMsg::Batch(batch)) {
            Ok(()) => Ok(BatchIds {
                uid: self.slot.uid,
                first,
                len: n,
            }),
            Err((back, reason)) => {
                tx.withdrawn.fetch_add(n, Ordering::SeqCst);
                match back {
                    NodeMsg::Batch(b) => Err(SendError::Closed {
                        msg: b.into_payloads(),
                        path: self.slot.path.clone(),
                        reason: reason.to_string(),
                    }),
                    _ => unreachable_refusal(),
                }
            }
        }
    }

    /// Wait until the mailbox has room for `n` tasks (or the slot closes or the
    /// hierarchy stops).
    async fn wait_for_room(&self, n: u64) {
        while self.slot.full(n).is_some() && self.shared.accepting() && !self.slot.is_closed() {
            let notified = self.slot.room().notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            self.slot.waiters.fetch_add(1, Ordering::SeqCst);
            std::sync::atomic::fence(Ordering::SeqCst);
            // re-check after registering, so a settle in between is not missed
            if self.slot.full(n).is_some() && self.shared.accepting() && !self.slot.is_closed() {
                notified.await;
            }
            self.slot.waiters.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// The outcome of task `id`, submitted here, from what its channel gave.
    #[inline]
    fn answered(
        &self,
        id: TaskId,
        got: Result<Answer<M>, oneshot::error::RecvError>,
    ) -> Outcome<M> {
        match got {
            Ok(answer) => answer.outcome(&self.slot.path),
            Err(_) => self.lost(id),
        }
    }

    fn lost(&self, id: TaskId) -> Outcome<M> {
        Outcome::Failed(crate::envelope::Failure {
            task: id,
            kind: crate::envelope::FailureKind::Lost,
            at: self.slot.path.clone(),
            attempts: 0,
            reason: "the task was lost with its agent's actor; it is counted as failed".to_string(),
            trail: Vec::new(),
        })
    }

    fn refuse_full(&self, msg: M, capacity: u64) -> SendError<M> {
        bump(&self.slot.own.rare().rejected);
        SendError::Full {
            msg,
            path: self.slot.path.clone(),
            capacity,
        }
    }

    /// Submit a task and wait for its outcome: completed (with the agent's reply, if
    /// any), escalated out of the top, or failed with a reason.
    ///
    /// # Errors
    /// As [`AgentRef::send`].
    ///
    /// # Cancel safety
    /// Dropping the future does not withdraw the task; it still runs and is counted.
    pub async fn call(&self, msg: M) -> Result<Outcome<M>, SendError<M>> {
        if let Some(capacity) = self.slot.full(1) {
            return Err(self.refuse_full(msg, capacity));
        }
        let (tx, rx) = oneshot::channel();
        let id = self.submit(msg, Some(tx.into()), true)?;
        Ok(self.answered(id, rx.await))
    }

    /// Fault injection: kill this agent's current actor outright, as if its process
    /// thread died — no handler finishes, nothing is caught in place.
    ///
    /// The supervisor sees the actor die, counts what its mailbox held (the task in
    /// flight and everything queued) as failed (`Counters::lost_in_mailbox`; callers
    /// waiting on those tasks get `Outcome::Failed`), then applies its restart policy
    /// and intensity and respawns a new actor into the same address. Tasks sent while
    /// no actor is attached wait for the new one. Returns false if the agent has no
    /// live actor.
    pub fn kill(&self) -> bool {
        match self.slot.actor() {
            Some(actor) => {
                actor.kill();
                true
            }
            None => false,
        }
    }

    /// Submit a router's or pipeline's branch: a sub-task whose outcome (escalation
    /// included) comes back on `reply`.
    pub(crate) fn submit_branch(
        &self,
        msg: M,
        reply: impl Into<Reply<M>>,
        budget: Option<Arc<crate::budget::Budget>>,
    ) -> Result<TaskId, SendError<M>> {
        self.slot
            .submit_branch(&self.shared, msg, reply.into(), budget)
    }

    /// Submit from outside and ask for the router's or pipeline's detailed report.
    pub(crate) fn submit_with_detail(
        &self,
        msg: M,
        budget: Option<Arc<crate::budget::Budget>>,
    ) -> Result<WithDetail<M>, SendError<M>> {
        let (tx, rx) = oneshot::channel();
        let (dtx, drx) = oneshot::channel();
        self.submit_with(msg, Some(tx.into()), true, |h| {
            let meta = h.meta_mut();
            meta.detail = Some(dtx);
            meta.budget = budget;
        })?;
        Ok((rx, drx))
    }

    /// Submit from inside the hierarchy (a handler's new task) or from outside
    /// (`external`: refused once the hierarchy stops taking work).
    #[inline(always)]
    pub(crate) fn submit(
        &self,
        msg: M,
        reply: Option<Reply<M>>,
        external: bool,
    ) -> Result<TaskId, SendError<M>> {
        self.submit_with(msg, reply, external, |_| {})
    }

    #[inline(always)]
    pub(crate) fn submit_with(
        &self,
        msg: M,
        reply: Option<Reply<M>>,
        external: bool,
        prepare: impl FnOnce(&mut crate::envelope::TaskHead<M>),
    ) -> Result<TaskId, SendError<M>> {
        self.slot
            .submit(&self.shared, msg, reply, external, prepare)
    }
}

impl<M: crate::Message> Slot<M> {
    /// [`AgentRef::submit_branch`] without an `AgentRef`: a router fanning out borrows
    /// its workers' slots rather than cloning two `Arc`s per branch.
    pub(crate) fn submit_branch(
        self: &Arc<Self>,
        shared: &Arc<Shared<M>>,
        msg: M,
        reply: Reply<M>,
        budget: Option<Arc<crate::budget::Budget>>,
    ) -> Result<TaskId, SendError<M>> {
        self.submit(shared, msg, Some(reply), false, |h| {
            h.branch = true;
            if budget.is_some() {
                h.meta_mut().budget = budget;
            }
        })
    }

    /// A new task for this slot ([`AgentRef::submit_with`]).
    #[inline(always)]
    fn submit(
        self: &Arc<Self>,
        shared: &Arc<Shared<M>>,
        msg: M,
        reply: Option<Reply<M>>,
        external: bool,
        prepare: impl FnOnce(&mut crate::envelope::TaskHead<M>),
    ) -> Result<TaskId, SendError<M>> {
        // Count first, then check the phase (both SeqCst, like `Shared::advance` and the
        // drain check's read of `submitted`): a shutdown either sees this submission and
        // waits for it, or this sender sees the shutdown and withdraws. The count before
        // the increment is the task's sequence number (`offered` never goes down).
        let tx = &self.tx;
        let seq = tx.offered.fetch_add(1, Ordering::SeqCst);
        if external && !shared.accepting() {
            tx.withdrawn.fetch_add(1, Ordering::SeqCst);
            return Err(SendError::ShuttingDown { msg });
        }
        let id = TaskId::at(self.uid, seq);
        let mut task = Task::new(id, msg, reply);
        prepare(&mut task.head);
        match self.hand(shared, NodeMsg::Task(task)) {
            Ok(()) => Ok(id),
            Err((back, reason)) => {
                tx.withdrawn.fetch_add(1, Ordering::SeqCst);
                match back {
                    NodeMsg::Task(t) => Err(SendError::Closed {
                        msg: t.payload,
                        path: self.path.clone(),
                        reason: reason.to_string(),
                    }),
                    _ => unreachable_refusal(),
                }
            }
        }
    }
}

#[cold]
fn unreachable_refusal<T>() -> T {
    // `deliver` returns the message it was given; a Task in gives a Task back.
    panic!("echelon bug: a refused task came back as a different message kind")
}

/// The ids of a batch's tasks ([`AgentRef::send_batch`]), in order.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct BatchIds {
    uid: u32,
    first: u64,
    len: u64,
}

impl BatchIds {
    fn empty(uid: u32) -> Self {
        BatchIds {
            uid,
            first: 0,
            len: 0,
        }
    }

    /// How many tasks the batch had.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// True for an empty batch (nothing was sent).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first task's id, if any.
    pub fn first(&self) -> Option<TaskId> {
        (self.len > 0).then(|| TaskId::at(self.uid, self.first))
    }

    /// The tasks' ids, in the batch's order.
    pub fn iter(&self) -> impl Iterator<Item = TaskId> + '_ {
        (self.first..self.first + self.len).map(|seq| TaskId::at(self.uid, seq))
    }
}

impl fmt::Debug for BatchIds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchIds")
            .field("first", &self.first())
            .field("len", &self.len)
            .finish()
    }
}

/// A task the hierarchy would not take. The message is given back.
#[derive(thiserror::Error)]
pub enum SendError<M> {
    /// The hierarchy is shutting down or stopped; no new work is taken.
    #[error("the hierarchy is shutting down and takes no new tasks; resubmit elsewhere")]
    ShuttingDown {
        /// The message, given back.
        msg: M,
    },
    /// The agent's mailbox is at its capacity; retry later or use
    /// [`AgentRef::send_wait`] to wait for room. Counted as `rejected`.
    #[error("agent {path} is at its mailbox capacity of {capacity}; retry later or use send_wait for backpressure")]
    Full {
        /// The message, given back.
        msg: M,
        /// The agent.
        path: Path,
        /// Its capacity.
        capacity: u64,
    },
    /// No agent has that address.
    #[error("no agent at {addr:?}; use a full path or tier/index, e.g. \"monitor/3\"")]
    NoSuchAgent {
        /// The message, given back.
        msg: M,
        /// The address asked for.
        addr: String,
    },
    /// The agent stopped for good (temporary agent after a crash, or a stopped team).
    #[error("agent {path} is closed ({reason}); send to another agent")]
    Closed {
        /// The message, given back.
        msg: M,
        /// The agent.
        path: Path,
        /// Why it closed.
        reason: String,
    },
}

impl<M> SendError<M> {
    /// The message that was not sent.
    pub fn into_inner(self) -> M {
        match self {
            SendError::ShuttingDown { msg }
            | SendError::Closed { msg, .. }
            | SendError::Full { msg, .. }
            | SendError::NoSuchAgent { msg, .. } => msg,
        }
    }
}

impl<M> fmt::Debug for SendError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::ShuttingDown { .. } => f.write_str("ShuttingDown { .. }"),
            SendError::Full { path, capacity, .. } => f
                .debug_struct("Full")
                .field("path", path)
                .field("capacity", capacity)
                .finish_non_exhaustive(),
            SendError::NoSuchAgent { addr, .. } => f
                .debug_struct("NoSuchAgent")
                .field("addr", addr)
                .finish_non_exhaustive(),
            SendError::Closed { path, reason, .. } => f
                .debug_struct("Closed")
                .field("path", path)
                .field("reason", reason)
                .finish_non_exhaustive(),
        }
    }
}

#[cfg(test)]
mod layout {
    use std::mem::offset_of;

    /// The senders' end and the owner's end of a slot are at least 64 bytes apart
    /// (see [`super::Slot`]'s layout), so they never share a cache line.
    #[test]
    fn senders_and_owner_write_64_bytes_apart() {
        type S = super::Slot<u64>;
        // every field a sender writes or reads on a send, and where it ends
        let senders_end = [
            offset_of!(S, mailbox) + std::mem::size_of::<std::sync::RwLock<super::Mailbox<u64>>>(),
            offset_of!(S, queue) + 8,
            offset_of!(S, tx) + std::mem::size_of::<crate::accounting::SenderSide>(),
            offset_of!(S, role) + 1,
            offset_of!(S, uid) + 4,
        ]
        .into_iter()
        .max()
        .unwrap_or(0);
        // every field the node's actor writes or reads on every task
        let owner_start = [
            offset_of!(S, own),
            offset_of!(S, epoch),
            offset_of!(S, waiters),
        ]
        .into_iter()
        .min()
        .unwrap_or(0);
        assert!(
            owner_start >= senders_end + 64,
            "senders' end {senders_end}, owner's start {owner_start}"
        );
    }
}

#[cfg(test)]
mod queue_word {
    use super::{Path, Role, SideEnd, Slot, Woke, BUSY, CALLED, PARKED, QUEUED_ONE};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};

    /// A waker that counts its wakes.
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn waker() -> (Arc<Wakes>, Waker) {
        let w = Arc::new(Wakes(AtomicUsize::new(0)));
        (w.clone(), Waker::from(w))
    }

    /// An agent's slot, its incarnation and its end of the queue (made, as the agent
    /// makes it to wait on it).
    fn with_queue() -> (Slot<u64>, u16, SideEnd<u64>) {
        let s = slot();
        let me = s.incarnation();
        let end = s.take_side(me, true).expect("the agent's end of its queue");
        (s, me, end)
    }

    /// An owner with nothing queued waits; a message for its mailbox wakes it and calls
    /// it away, and it leaves with the queue given up and the mark cleared.
    #[test]
    fn a_call_wakes_a_parked_owner_and_it_leaves() {
        let (s, me, end) = with_queue();
        let (wakes, w) = waker();
        let mut cx = Context::from_waker(&w);
        s.queue.fetch_or(BUSY, Ordering::SeqCst);
        assert_eq!(s.park(me, &end.side, &mut cx), Poll::Pending);
        assert_ne!(s.queue.load(Ordering::SeqCst) & PARKED, 0);
        s.call(&s.read());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "the call woke it");
        assert_eq!(s.park(me, &end.side, &mut cx), Poll::Ready(Woke::Called));
        assert!(!s.leave(me), "nothing queued: the queue is given up");
        assert_eq!(
            s.queue.load(Ordering::SeqCst) & (BUSY | PARKED | CALLED),
            0,
            "idle, not parked, the mark cleared"
        );
    }

    /// A call that lands before the owner parks is seen when it tries: it never waits.
    #[test]
    fn a_call_before_the_park_is_not_missed() {
        let (s, me, end) = with_queue();
        let (wakes, w) = waker();
        let mut cx = Context::from_waker(&w);
        s.queue.fetch_or(BUSY, Ordering::SeqCst);
        s.call(&s.read());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0, "not parked: no wake");
        assert_eq!(s.park(me, &end.side, &mut cx), Poll::Ready(Woke::Called));
        assert_eq!(s.queue.load(Ordering::SeqCst) & PARKED, 0);
    }

    /// Tasks counted in the queue come before a call; leaving with tasks counted keeps
    /// the queue (the agent then sends itself a drain).
    #[test]
    fn counted_tasks_come_first_and_keep_the_queue() {
        let (s, me, end) = with_queue();
        let (_, w) = waker();
        let mut cx = Context::from_waker(&w);
        s.queue
            .fetch_or(BUSY | CALLED | QUEUED_ONE, Ordering::SeqCst);
        assert_eq!(s.park(me, &end.side, &mut cx), Poll::Ready(Woke::Tasks));
        assert!(s.leave(me), "a task waits: the agent keeps its queue");
        assert_eq!(s.queue.load(Ordering::SeqCst) & (BUSY | CALLED), BUSY);
    }

    /// A detached incarnation does not wait on the next one's queue.
    #[test]
    fn a_detached_incarnation_does_not_park() {
        let (s, old, end) = with_queue();
        let _ = s.detach();
        let (_, w) = waker();
        let mut cx = Context::from_waker(&w);
        assert_eq!(s.park(old, &end.side, &mut cx), Poll::Ready(Woke::Called));
        assert_eq!(s.queue.load(Ordering::SeqCst) & PARKED, 0);
        assert!(!s.leave(old));
    }

    fn slot() -> Slot<u64> {
        Slot::new(Path::new("team/a"), 1, 1, Role::Agent)
    }

    /// The agent gives the queue up only when nothing waits in it; else it keeps it.
    #[test]
    fn release_keeps_the_queue_while_tasks_wait() {
        let s = slot();
        let me = s.incarnation();
        s.queue.store(BUSY + 2 * QUEUED_ONE, Ordering::SeqCst);
        assert!(
            s.release(me),
            "two tasks wait: the agent must keep the queue"
        );
        assert_eq!(s.queue.load(Ordering::SeqCst) & BUSY, BUSY);
        s.took_queued(me, 2);
        assert!(!s.release(me), "nothing waits: the queue is given up");
        assert_eq!(s.queue.load(Ordering::SeqCst), 0);
    }

    /// An incarnation detached while still running (a kill its handler outlived)
    /// cannot give up or count down the next incarnation's queue.
    #[test]
    fn a_detached_incarnation_leaves_the_next_ones_queue_alone() {
        let s = slot();
        let old = s.incarnation();
        s.queue.store(BUSY + 5 * QUEUED_ONE, Ordering::SeqCst);
        let _ = s.detach();
        let new = s.incarnation();
        assert_ne!(old, new);
        assert_eq!(
            s.queue.load(Ordering::SeqCst) & ((1 << super::INCARNATION_SHIFT) - 1),
            0,
            "the next incarnation starts with the queue empty and unowned"
        );
        // the new incarnation's first sender owns the queue and one task waits
        s.queue.fetch_or(BUSY, Ordering::SeqCst);
        s.queue.fetch_add(QUEUED_ONE, Ordering::SeqCst);
        let before = s.queue.load(Ordering::SeqCst);
        assert!(!s.release(old));
        s.took_queued(old, 100);
        assert_eq!(
            s.queue.load(Ordering::SeqCst),
            before,
            "the old actor changed nothing"
        );
        assert!(
            s.release(new),
            "the new incarnation still has its task to take"
        );
        // the new incarnation's queue: only its own agent may take the receiving end
        let _ = s.read().side.get_or_init(|| Arc::new(super::Side::new()));
        assert!(
            s.take_side(old, false).is_none(),
            "the old actor took the new queue"
        );
        assert!(s.take_side(new, false).is_some());
    }
}
