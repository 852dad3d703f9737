//! Hierarchies: the builder, addressing by path, the escalation sink, counters and
//! shutdown.
//!
//! ```no_run
//! # use echelon::prelude::*;
//! # #[derive(Clone)] struct R; struct A;
//! # impl Agent for A { type Msg = R;
//! #   async fn handle(&mut self, _: &mut Ctx<R>, _: R) -> Result<Verdict<R>, AgentError> { Ok(Verdict::Done) } }
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! let ward = Hierarchy::builder("ward")
//!     .span(SpanOfControl::auto_split(8))
//!     .escalation(Threshold::severity(0.8).suppress_repeats(std::time::Duration::from_secs(60)))
//!     .restart(Strategy::OneForOne, Intensity::at_most(5).per(std::time::Duration::from_secs(10)))
//!     .tier("decision", 1, |_| A)
//!     .tier("diagnostic", 12, |_| A)
//!     .tier("monitor", 1000, |_| A)
//!     .spawn()
//!     .await?;
//! ward.send("monitor/417", R)?;
//! let report = ward.shutdown(std::time::Duration::from_secs(5)).await;
//! assert!(report.counters.is_balanced());
//! # Ok(()) }
//! ```

mod builder;
pub(crate) mod shared;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ractor::ActorRef;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use builder::{HierarchyBuilder, Tier};

use crate::accounting::{add, Counters};
use crate::address::{AgentRef, SendError};
use crate::envelope::{EscalationReport, Outcome, Path, Role, TaskId};
use crate::node::NodeMsg;
use crate::supervisor::spec::{NodeKind, NodeSpec};
use shared::{Phase, Shared};

/// A running hierarchy of supervised agents.
///
/// Dropping it without [`Hierarchy::shutdown`] or [`Hierarchy::stop`] kills its actors.
pub struct Hierarchy<M: crate::Message> {
    shared: Arc<Shared<M>>,
    spec: Arc<NodeSpec<M>>,
    root: ActorRef<NodeMsg<M>>,
    join: Option<JoinHandle<()>>,
}

impl<M: crate::Message> fmt::Debug for Hierarchy<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hierarchy")
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

/// A bad hierarchy declaration or a failed spawn.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// No tiers were declared.
    #[error("hierarchy {name:?} has no tiers; add at least one with .tier(name, count, factory)")]
    NoTiers {
        /// The hierarchy.
        name: String,
    },
    /// A tier with zero agents.
    #[error("tier {tier:?} has 0 agents; give every tier at least one")]
    EmptyTier {
        /// The tier.
        tier: String,
    },
    /// Two tiers share a name.
    #[error("tier name {tier:?} is used twice; tier names must be unique")]
    DuplicateTier {
        /// The tier.
        tier: String,
    },
    /// A hierarchy or tier name that cannot be a path segment.
    #[error("name {name:?} cannot be used: use a non-empty name without '/' (and not \"split\")")]
    BadName {
        /// The name.
        name: String,
    },
    /// A supervisor would have more direct reports than the span of control allows.
    #[error(
        "span of control exceeded: {team} would have {reports} direct reports and the limit is {limit}; \
         raise the limit, add agents to the tier above, or use SpanOfControl::auto_split (auto_split = true in a scenario's [hierarchy])"
    )]
    SpanOfControl {
        /// The supervisor.
        team: String,
        /// How many reports it would have.
        reports: usize,
        /// The limit.
        limit: usize,
    },
    /// A router or pipeline tier followed by other tiers: they lead their own workers
    /// or stages.
    #[error("tier {tier:?} is a router or pipeline and must be the last tier; give it workers or stages instead of tiers below it")]
    RouterNotLast {
        /// The tier.
        tier: String,
    },
    /// An agent failed to start (factory or `on_start` panicked or failed).
    #[error("the hierarchy failed to start: {reason}")]
    Spawn {
        /// Which agent and why.
        reason: String,
    },
}

/// An address that names no agent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Nothing at that address.
    #[error("no agent at {addr:?} in hierarchy {hierarchy:?}; use a full path or tier/index, e.g. \"monitor/3\"")]
    NotFound {
        /// The address asked for.
        addr: String,
        /// The hierarchy.
        hierarchy: String,
    },
}

/// The escalations that leave the top of a hierarchy, in the order they left.
#[derive(Debug)]
pub struct Escalations<M> {
    rx: mpsc::UnboundedReceiver<EscalationReport<M>>,
}

impl<M> Escalations<M> {
    /// The next escalation; `None` once the hierarchy has stopped and all were read.
    pub async fn recv(&mut self) -> Option<EscalationReport<M>> {
        self.rx.recv().await
    }

    /// The next escalation if one is waiting.
    pub fn try_recv(&mut self) -> Option<EscalationReport<M>> {
        self.rx.try_recv().ok()
    }
}

/// What a shutdown found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Counters after the stop; balanced unless the runtime lost track of a task.
    pub counters: Counters,
    /// True if every task finished before the deadline (nothing was failed by the stop).
    pub drained: bool,
    /// Why the hierarchy failed, if it did (restart intensity exceeded at the root).
    pub failure: Option<String>,
}

/// A node of [`Hierarchy::tree`]: the supervision structure as spawned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeNode {
    /// Path of the node.
    pub path: Path,
    /// What it is.
    pub role: Role,
    /// Children in start order (a team's lead agent first).
    pub children: Vec<TreeNode>,
}

impl TreeNode {
    /// Depth of the deepest leaf below this node (0 for a leaf).
    pub fn depth(&self) -> usize {
        self.children
            .iter()
            .map(|c| c.depth() + 1)
            .max()
            .unwrap_or(0)
    }

    /// Visit every node with its depth.
    pub fn walk(&self, f: &mut dyn FnMut(&TreeNode, usize)) {
        fn go(n: &TreeNode, d: usize, f: &mut dyn FnMut(&TreeNode, usize)) {
            f(n, d);
            for c in &n.children {
                go(c, d + 1, f);
            }
        }
        go(self, 0, f);
    }
}

impl fmt::Display for TreeNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = Ok(());
        self.walk(&mut |n, d| {
            if out.is_ok() {
                out = writeln!(f, "{:indent$}{} ({:?})", "", n.path, n.role, indent = d * 2);
            }
        });
        out
    }
}

fn tree_of<M>(spec: &NodeSpec<M>) -> TreeNode {
    let slot = spec.slot();
    let children = match &spec.kind {
        NodeKind::Agent(_) => Vec::new(),
        NodeKind::Team(t) => t.children.iter().map(|c| tree_of(c)).collect(),
    };
    TreeNode {
        path: slot.path.clone(),
        role: slot.role,
        children,
    }
}

impl Hierarchy<()> {
    /// Start declaring a hierarchy named `name` (the first segment of every path).
    pub fn builder<M: crate::Message>(name: impl Into<String>) -> HierarchyBuilder<M> {
        HierarchyBuilder::new(name)
    }
}

impl<M: crate::Message> Hierarchy<M> {
    pub(crate) fn new(
        shared: Arc<Shared<M>>,
        spec: Arc<NodeSpec<M>>,
        root: ActorRef<NodeMsg<M>>,
        join: JoinHandle<()>,
    ) -> Self {
        Hierarchy {
            shared,
            spec,
            root,
            join: Some(join),
        }
    }

    /// The hierarchy's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// A handle to the agent at `addr`: a full path (`ward/decision/0/diagnostic/3`,
    /// with or without the hierarchy name) or `tier/index` (`diagnostic/3`).
    ///
    /// # Errors
    /// [`AddressError::NotFound`] if no agent has that address.
    pub fn agent(&self, addr: &str) -> Result<AgentRef<M>, AddressError> {
        Shared::agent_ref(&self.shared, addr)
    }

    /// Handles to every agent of a tier, by index.
    ///
    /// # Errors
    /// [`AddressError::NotFound`] if there is no such tier.
    pub fn tier(&self, name: &str) -> Result<Vec<AgentRef<M>>, AddressError> {
        match self.shared.directory.by_tier.get(name) {
            Some(slots) => Ok(slots
                .iter()
                .map(|s| AgentRef {
                    slot: s.clone(),
                    shared: self.shared.clone(),
                })
                .collect()),
            None => Err(AddressError::NotFound {
                addr: name.to_string(),
                hierarchy: self.shared.name.to_string(),
            }),
        }
    }

    /// Submit a task to the agent at `addr` (see [`Hierarchy::agent`]). For many sends to
    /// one agent, keep its [`AgentRef`] instead.
    ///
    /// # Errors
    /// [`SendError::NoSuchAgent`] for an unknown address, otherwise as
    /// [`AgentRef::send`]; the message is given back.
    pub fn send(&self, addr: &str, msg: M) -> Result<TaskId, SendError<M>> {
        match self.agent(addr) {
            Ok(a) => a.send(msg),
            Err(_) => Err(SendError::NoSuchAgent {
                msg,
                addr: addr.to_string(),
            }),
        }
    }

    /// Submit a task to the agent at `addr` and wait for its outcome.
    ///
    /// # Errors
    /// As [`Hierarchy::send`].
    pub async fn call(&self, addr: &str, msg: M) -> Result<Outcome<M>, SendError<M>> {
        match self.agent(addr) {
            Ok(a) => a.call(msg).await,
            Err(_) => Err(SendError::NoSuchAgent {
                msg,
                addr: addr.to_string(),
            }),
        }
    }

    /// Subscribe to the escalations that leave the top, with their audit trails.
    /// One subscriber at a time; subscribing again replaces the previous one. Before
    /// anyone subscribes, escalations out of the top are only counted (and reported to
    /// the callers that used `call`).
    pub fn escalations(&self) -> Escalations<M> {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.shared.sink.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        Escalations { rx }
    }

    pub(crate) fn router_shared(
        &self,
        entry: &AgentRef<M>,
    ) -> Option<&Arc<crate::router::actor::RouterShared<M>>> {
        self.shared.directory.routers.get(&entry.slot.uid)
    }

    /// Every node's counters with its path and role (supervisors and team leads
    /// included), in build order.
    pub fn node_counters(&self) -> Vec<(Path, Role, Counters)> {
        self.shared.node_counters()
    }

    /// The shared state, to read counters after a shutdown consumed the handle.
    #[cfg(feature = "sim")]
    pub(crate) fn shared(&self) -> Arc<Shared<M>> {
        self.shared.clone()
    }

    /// Counters summed over every node.
    pub fn counters(&self) -> Counters {
        self.shared.counters()
    }

    /// The supervision tree as spawned: supervisors, team leads and agents.
    pub fn tree(&self) -> TreeNode {
        tree_of(&self.spec)
    }

    /// Why the hierarchy failed (restart intensity exceeded at the root), if it did.
    pub fn failure(&self) -> Option<String> {
        self.shared.failure()
    }

    /// True once the root supervisor has exited (after a shutdown, stop or failure).
    pub fn is_finished(&self) -> bool {
        *self.shared.finished.borrow() || self.join.as_ref().is_none_or(|j| j.is_finished())
    }

    /// Wait until no task is in flight, or `timeout` passes.
    ///
    /// # Errors
    /// The counters at the deadline, if work was still in flight.
    pub async fn wait_idle(&self, timeout: Duration) -> Result<Counters, Counters> {
        let now = tokio::time::Instant::now();
        // a "forever" timeout must not overflow the clock
        let deadline = now
            .checked_add(timeout)
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600));
        let mut pause = Duration::from_micros(50);
        loop {
            let c = self.counters();
            if c.in_flight() == 0 {
                return Ok(c);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(c);
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }

    /// Graceful shutdown: stop taking new tasks, let in-flight work (including
    /// escalations and new tasks it creates) finish for up to `deadline`, then stop
    /// every actor.
    ///
    /// At the deadline, tasks still *queued* are failed with a reason (their callers see
    /// it) and `drained` is false. A handler already *running* at the deadline is not
    /// interrupted: it finishes and its task gets its normal outcome, unless it is
    /// still running 5 seconds later, when its actor is killed and the task is counted
    /// as failed (`lost_in_mailbox`). So this returns within `deadline` plus the
    /// longest running handler, at most `deadline` + 5 s.
    pub async fn shutdown(mut self, deadline: Duration) -> ShutdownReport {
        self.shared.advance(Phase::Draining);
        let drained = self.wait_idle(deadline).await.is_ok();
        if !drained {
            self.shared.advance(Phase::Aborting);
        }
        self.stop_actors("the hierarchy is shutting down").await;
        self.report(drained)
    }

    /// Hard stop: queued tasks are failed, not handled; a handler still running after
    /// a grace period is cancelled and its task counted as failed.
    pub async fn stop(mut self) -> ShutdownReport {
        self.shared.advance(Phase::Aborting);
        let idle = self.counters().in_flight() == 0;
        self.stop_actors("the hierarchy was stopped").await;
        self.report(idle)
    }

    /// Wait until the hierarchy stops by itself (it fails when the root's restart
    /// intensity is exceeded), then stop what remains and report.
    pub async fn finished(mut self) -> ShutdownReport {
        let mut rx = self.shared.finished.subscribe();
        let failed = async {
            loop {
                if self.shared.failure().is_some() || *rx.borrow() {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        failed.await;
        self.stop_actors("the hierarchy failed").await;
        self.report(false)
    }

    fn report(&self, drained: bool) -> ShutdownReport {
        ShutdownReport {
            counters: self.counters(),
            drained: drained && self.shared.failure().is_none(),
            failure: self.shared.failure(),
        }
    }

    async fn stop_actors(&mut self, reason: &str) {
        let _ = self.root.send_message(NodeMsg::Stop {
            reason: Arc::from(reason),
        });
        let Some(mut join) = self.join.take() else {
            return;
        };
        // an orderly stop finishes quickly; a handler stuck in user code does not
        if tokio::time::timeout(Duration::from_secs(5), &mut join)
            .await
            .is_err()
        {
            tracing::warn!(hierarchy = %self.shared.name, "orderly stop timed out; killing the actors");
            self.root.kill();
            let _ = tokio::time::timeout(Duration::from_secs(5), join).await;
            // ractor kills descendants asynchronously: wait for each before counting
            // what its mailbox held as failed
            for slot in &self.shared.directory.all {
                if let Some(a) = slot.actor() {
                    let _ = a.get_cell().wait(Some(Duration::from_secs(5))).await;
                }
            }
            for slot in &self.shared.directory.all {
                let lost = slot.detach();
                if lost > 0 {
                    add(&slot.own.failed, lost);
                    add(&slot.own.rare().lost_in_mailbox, lost);
                }
            }
        }
        // nothing may wait in a pending queue for an incarnation that will never come
        self.shared.close_all(reason);
        self.shared.advance(Phase::Stopped);
        self.shared.finished.send_replace(true);
        *self.shared.sink.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

impl<M: crate::Message> Drop for Hierarchy<M> {
    /// Dropped without a shutdown: kill the actors, fail what waits in pending queues
    /// and end the escalation stream. Tasks in the killed mailboxes are not counted
    /// (nobody can read the counters any more) but their callers see a failure.
    fn drop(&mut self) {
        if self.join.is_some() {
            self.shared.advance(Phase::Stopped);
            self.root.kill();
            self.shared
                .close_all("the hierarchy was dropped without a shutdown");
            *self.shared.sink.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }
}
