//! Routers: the parallel pattern.
//!
//! A router is the lead of a team whose reports are its **workers** (agents, or nested
//! routers). Each request it receives becomes one **branch** per chosen worker: a
//! sub-task whose outcome comes back to the router instead of going to the caller.
//! The router
//! - fans out by a [`Route`]: broadcast, round-robin, random (seeded), least-loaded (by
//!   the worker's mailbox depth), key-sticky, or classify;
//! - fans in by a [`Gather`] (broadcast only): all, first (racing), quorum, majority vote
//!   (ties reported as ties), reduce; single-worker routes mirror their branch;
//! - bounds each request by a deadline and returns partial results *as such*
//!   ([`Gathered`] lists each branch as answered, escalated, failed, timed out or
//!   discarded), failing fast or proceeding best-effort ([`Partial`]);
//! - skips workers whose [`Breaker`] is open or that are at their in-flight cap, and
//!   rejects requests past its admission limit, with an error that says so.
//!
//! Workers are supervised by the router's team supervisor like any agents: a worker that
//! panics is restarted in place and its branch redelivered; a branch that cannot
//! complete (attempts exhausted, worker killed) is a failed branch — never a hang.
//!
//! Layout: `strategy` (fan-out) · `gather` (fan-in) · `breaker` · `actor` · this file
//! (config, builder, handle).

pub(crate) mod actor;
pub(crate) mod arrivals;
mod breaker;
mod gather;
mod strategy;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

pub use breaker::{Breaker, BreakerState};
pub use gather::{BranchReport, BranchStatus, Gather, GatherError, Gathered, Partial};
pub use strategy::Route;

use crate::address::{AgentRef, SendError};
use crate::agent::Agent;
use crate::envelope::{Detail, Outcome};
use crate::hierarchy::{BuildError, Hierarchy, ShutdownReport, Tier};
use crate::Counters;

/// Everything a router node needs, shared by every router of a tier.
pub(crate) struct RouterConfig<M> {
    pub(crate) route: Route<M>,
    pub(crate) gather: Gather<M>,
    pub(crate) deadline: Option<Duration>,
    pub(crate) partial: Partial,
    pub(crate) breaker: Option<Breaker>,
    pub(crate) max_in_flight: Option<u32>,
    pub(crate) admission: Option<u32>,
    pub(crate) workers: Vec<Tier<M>>,
}

impl<M> fmt::Debug for RouterConfig<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouterConfig")
            .field("route", &self.route)
            .field("gather", &self.gather)
            .field("deadline", &self.deadline)
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

/// Entry point: `Router::builder("review")`.
#[derive(Debug)]
pub struct Router;

impl Router {
    /// Start declaring a router named `name`.
    pub fn builder<M: crate::Message>(name: impl Into<String>) -> RouterBuilder<M> {
        RouterBuilder {
            name: name.into(),
            cfg: RouterConfig {
                route: Route::RoundRobin,
                gather: Gather::First,
                deadline: None,
                partial: Partial::BestEffort,
                breaker: None,
                max_in_flight: None,
                admission: None,
                workers: Vec::new(),
            },
            seed: 0,
            max_attempts: 3,
            restart: None,
        }
    }
}

/// Declares a router: its workers, fan-out, fan-in and protections.
pub struct RouterBuilder<M> {
    name: String,
    cfg: RouterConfig<M>,
    seed: u64,
    max_attempts: u32,
    restart: Option<(crate::Strategy, crate::Intensity)>,
}

impl<M> fmt::Debug for RouterBuilder<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouterBuilder")
            .field("name", &self.name)
            .field("cfg", &self.cfg)
            .finish()
    }
}

impl<M: crate::Message> RouterBuilder<M> {
    /// Add `count` workers named `name/0…`, built by `factory(index)`. Workers are
    /// indexed across all worker groups in the order they were added.
    pub fn workers<A, F>(self, name: impl Into<String>, count: usize, factory: F) -> Self
    where
        A: Agent<Msg = M>,
        F: Fn(usize) -> A + Send + Sync + 'static,
    {
        self.worker_tier(Tier::new(name, count, factory))
    }

    /// Add a group of workers with its own policies, or nested routers
    /// (`Router::builder(..).into_tier(n)`).
    pub fn worker_tier(mut self, tier: Tier<M>) -> Self {
        self.cfg.workers.push(tier);
        self
    }

    /// Fan-out strategy (default round-robin).
    pub fn route(mut self, route: Route<M>) -> Self {
        self.cfg.route = route;
        self
    }

    /// Fan-in for broadcasts (default: first answer).
    pub fn gather(mut self, gather: Gather<M>) -> Self {
        self.cfg.gather = gather;
        self
    }

    /// Per-request deadline, from arrival at the router. Unanswered branches are
    /// reported as timed out.
    pub fn deadline(mut self, d: Duration) -> Self {
        self.cfg.deadline = Some(d);
        self
    }

    /// Fail the request at the first failed or timed-out branch.
    pub fn fail_fast(mut self) -> Self {
        self.cfg.partial = Partial::FailFast;
        self
    }

    /// Decide with whatever answered (default).
    pub fn best_effort(mut self) -> Self {
        self.cfg.partial = Partial::BestEffort;
        self
    }

    /// A circuit breaker per worker.
    pub fn breaker(mut self, breaker: Breaker) -> Self {
        self.cfg.breaker = Some(breaker);
        self
    }

    /// Skip a worker whose mailbox already holds `n` unfinished tasks.
    pub fn max_in_flight(mut self, n: u32) -> Self {
        self.cfg.max_in_flight = Some(n.max(1));
        self
    }

    /// Reject requests (with [`GatherError::AtCapacity`], counted as `rejected`) while
    /// `n` requests are already being gathered.
    pub fn admission(mut self, n: u32) -> Self {
        self.cfg.admission = Some(n.max(1));
        self
    }

    /// Seed for random routing and the workers' RNGs (standalone routers).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Attempts per branch on a crashing worker (standalone routers; default 3).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// Restart strategy and intensity for the workers (standalone routers; in a
    /// hierarchy, the hierarchy's apply). Default: the hierarchy default.
    pub fn restart(mut self, strategy: crate::Strategy, intensity: crate::Intensity) -> Self {
        self.restart = Some((strategy, intensity));
        self
    }

    /// Use this router as a tier of a hierarchy: `count` routers, each with its own
    /// workers, named after the router.
    pub fn into_tier(self, count: usize) -> Tier<M> {
        Tier::router(self.name, count, Arc::new(self.cfg))
    }

    /// Spawn a standalone router (a one-team hierarchy named after it).
    ///
    /// # Errors
    /// As [`crate::HierarchyBuilder::spawn`]; a router without workers is
    /// [`BuildError::EmptyTier`].
    pub async fn spawn(self) -> Result<RouterHandle<M>, BuildError> {
        let name = self.name.clone();
        let mut b = Hierarchy::builder(name.clone())
            .seed(self.seed)
            .max_attempts(self.max_attempts)
            .span(crate::SpanOfControl::auto_split(64));
        if let Some((strategy, intensity)) = self.restart {
            b = b.restart(strategy, intensity);
        }
        let hierarchy = b
            .tier_with(Tier::router("router", 1, Arc::new(self.cfg)))
            .spawn()
            .await?;
        let entry = hierarchy.agent("router/0").map_err(|e| BuildError::Spawn {
            reason: e.to_string(),
        })?;
        Ok(RouterHandle { hierarchy, entry })
    }
}

/// A running standalone router.
#[derive(Debug)]
pub struct RouterHandle<M: crate::Message> {
    hierarchy: Hierarchy<M>,
    entry: AgentRef<M>,
}

impl<M: crate::Message> RouterHandle<M> {
    /// Route a request and wait for the full account: the result and every branch.
    ///
    /// # Errors
    /// [`SendError`] if the router no longer takes work; the message is given back.
    pub async fn call(&self, msg: M) -> Result<Gathered<M>, SendError<M>> {
        let (outcome, detail) = self.entry.submit_with_detail(msg, None)?;
        match detail.await {
            Ok(Detail::Gather(g)) => Ok(g),
            _ => {
                let reason = match outcome.await.map(|a| a.outcome(self.entry.path())) {
                    Ok(Outcome::Failed(f)) => f.reason,
                    Ok(_) => "the router gave no detail".to_string(),
                    Err(_) => "the request was lost with the router's actor".to_string(),
                };
                Ok(Gathered {
                    result: Err(GatherError::NoWorker(reason)),
                    branches: Vec::new(),
                    elapsed: Duration::ZERO,
                })
            }
        }
    }

    /// Route a request and wait for its outcome as a task (reply, escalation, failure).
    ///
    /// # Errors
    /// As [`RouterHandle::call`].
    pub async fn outcome(&self, msg: M) -> Result<Outcome<M>, SendError<M>> {
        self.entry.call(msg).await
    }

    /// The router's entry handle.
    pub fn entry(&self) -> &AgentRef<M> {
        &self.entry
    }

    /// A worker by index (for inspection or fault injection).
    pub fn worker(&self, index: usize) -> Option<AgentRef<M>> {
        let inner = self.hierarchy.router_shared(&self.entry)?;
        let w = inner.workers.get(index)?;
        Some(AgentRef {
            slot: w.slot.clone(),
            shared: self.entry.shared.clone(),
        })
    }

    /// Breaker state of every worker, in worker order.
    pub fn breakers(&self) -> Vec<BreakerState> {
        let Some(inner) = self.hierarchy.router_shared(&self.entry) else {
            return Vec::new();
        };
        let now = self.entry.shared.now();
        inner
            .workers
            .iter()
            .map(|w| w.health.state(inner.cfg.breaker.as_ref(), now))
            .collect()
    }

    /// Counters of the whole router (requests and branches are both tasks).
    pub fn counters(&self) -> Counters {
        self.hierarchy.counters()
    }

    /// The underlying hierarchy.
    pub fn hierarchy(&self) -> &Hierarchy<M> {
        &self.hierarchy
    }

    /// Graceful shutdown (see [`Hierarchy::shutdown`]).
    pub async fn shutdown(self, deadline: Duration) -> ShutdownReport {
        self.hierarchy.shutdown(deadline).await
    }
}

pub(crate) type DetailRx<M> = oneshot::Receiver<Detail<M>>;
