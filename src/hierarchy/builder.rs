//! Building a hierarchy: tiers, policies, the tree of specs, and spawning it.

use std::collections::HashMap;
use std::sync::Arc;

use ractor::Actor;

use super::shared::{addressable, Directory, Shared};
use super::{BuildError, Hierarchy};
use crate::address::Slot;
use crate::agent::Agent;
use crate::envelope::{Path, Role};
use crate::lead::LeadSpawner;
use crate::pipeline::actor::{Entry, PipelineShared, StageRuntime};
use crate::pipeline::{PipelineConfig, Stage, StageKind};
use crate::router::actor::{RouterShared, Worker};
use crate::router::RouterConfig;
use crate::supervisor::actor::{SupervisorActor, SupervisorArgs};
use crate::supervisor::spec::{AgentSpec, FactorySpawner, NodeKind, NodeSpec, Spawner, TeamSpec};
use crate::supervisor::{
    split, Backoff, Group, Intensity, RestartPolicy, SpanOfControl, SpanPolicy, Strategy,
    TeamPolicy, Threshold,
};

/// One tier of a hierarchy: a name, how many nodes, what each node is (an agent built
/// by a factory, or a router with its workers), and the tier's own policies.
pub struct Tier<M> {
    name: String,
    count: usize,
    kind: TierKind<M>,
    threshold: Option<Threshold>,
    restart: RestartPolicy,
    mailbox: Option<u64>,
}

pub(crate) enum TierKind<M> {
    Agents(Spawner<M>),
    Router(Arc<RouterConfig<M>>),
    Pipeline(Arc<PipelineConfig<M>>),
}

impl<M> std::fmt::Debug for Tier<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tier")
            .field("name", &self.name)
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

impl<M: crate::Message> Tier<M> {
    /// `count` agents named `name/0`, `name/1`, …, each built by `factory(index)`
    /// (again on every restart).
    pub fn new<A, F>(name: impl Into<String>, count: usize, factory: F) -> Self
    where
        A: Agent<Msg = M>,
        F: Fn(usize) -> A + Send + Sync + 'static,
    {
        Tier {
            name: name.into(),
            count,
            kind: TierKind::Agents(Arc::new(Box::new(FactorySpawner {
                factory: Arc::new(Box::new(factory)),
            }))),
            threshold: None,
            restart: RestartPolicy::Permanent,
            mailbox: None,
        }
    }

    pub(crate) fn pipeline(
        name: impl Into<String>,
        count: usize,
        cfg: Arc<PipelineConfig<M>>,
    ) -> Self {
        Tier {
            name: name.into(),
            count,
            kind: TierKind::Pipeline(cfg),
            threshold: None,
            restart: RestartPolicy::Permanent,
            mailbox: None,
        }
    }

    /// The tier's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// One plain agent (not a router or a pipeline): a pipeline stage that can be
    /// chained.
    pub(crate) fn is_single_agent(&self) -> bool {
        self.count == 1 && matches!(self.kind, TierKind::Agents(_))
    }

    pub(crate) fn router(name: impl Into<String>, count: usize, cfg: Arc<RouterConfig<M>>) -> Self {
        Tier {
            name: name.into(),
            count,
            kind: TierKind::Router(cfg),
            threshold: None,
            restart: RestartPolicy::Permanent,
            mailbox: None,
        }
    }

    /// The threshold this tier's escalations must reach to go up a level (overrides
    /// the hierarchy's default).
    pub fn escalate_at(mut self, threshold: Threshold) -> Self {
        self.threshold = Some(threshold);
        self
    }

    /// Mailbox capacity of this tier's agents for external work (overrides the
    /// hierarchy's [`HierarchyBuilder::mailbox_capacity`]).
    pub fn mailbox(mut self, capacity: u64) -> Self {
        self.mailbox = Some(capacity.max(1));
        self
    }

    /// Restart policy of this tier's agents (default: permanent).
    pub fn restart_policy(mut self, policy: RestartPolicy) -> Self {
        self.restart = policy;
        self
    }
}

/// Declares a hierarchy; see [`Hierarchy::builder`].
pub struct HierarchyBuilder<M> {
    name: String,
    span: SpanOfControl,
    threshold: Threshold,
    strategy: Strategy,
    intensity: Intensity,
    backoff: Option<Backoff>,
    max_attempts: u32,
    seed: u64,
    mailbox: Option<u64>,
    tiers: Vec<Tier<M>>,
}

impl<M> std::fmt::Debug for HierarchyBuilder<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HierarchyBuilder")
            .field("name", &self.name)
            .field("tiers", &self.tiers)
            .finish_non_exhaustive()
    }
}

impl<M: crate::Message> HierarchyBuilder<M> {
    pub(crate) fn new(name: impl Into<String>) -> Self {
        HierarchyBuilder {
            name: name.into(),
            span: SpanOfControl::default(),
            threshold: Threshold::default(),
            strategy: Strategy::default(),
            intensity: Intensity::default(),
            backoff: None,
            max_attempts: 3,
            seed: 0,
            mailbox: None,
            tiers: Vec::new(),
        }
    }

    /// A hard span of control: no supervisor may have more than `limit` direct
    /// reports; [`HierarchyBuilder::spawn`] returns [`BuildError::SpanOfControl`]
    /// otherwise. Default 8.
    pub fn span_of_control(mut self, limit: usize) -> Self {
        self.span = SpanOfControl::strict(limit);
        self
    }

    /// A span of control given as a policy, e.g. [`SpanOfControl::auto_split`].
    pub fn span(mut self, span: SpanOfControl) -> Self {
        self.span = span;
        self
    }

    /// Default escalation threshold for every tier.
    pub fn escalation(mut self, threshold: Threshold) -> Self {
        self.threshold = threshold;
        self
    }

    /// Restart strategy and intensity of every supervisor.
    pub fn restart(mut self, strategy: Strategy, intensity: Intensity) -> Self {
        self.strategy = strategy;
        self.intensity = intensity;
        self
    }

    /// Backoff between restarts of a child that keeps crashing.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = Some(backoff);
        self
    }

    /// How many times a task is attempted on an agent that crashes on it before it
    /// fails (default 3; at least 1). With 1, no copy of the message is kept.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Bound every agent's mailbox for external work: once `capacity` tasks are queued
    /// or running, [`crate::AgentRef::send`] and `call` return `SendError::Full` (counted
    /// as `rejected`) and [`crate::AgentRef::send_wait`] waits for room. Internal traffic
    /// (escalations, forwards, router and pipeline branches) is never refused, so a
    /// supervisor can never block on a full child. Default: unbounded.
    pub fn mailbox_capacity(mut self, capacity: u64) -> Self {
        self.mailbox = Some(capacity.max(1));
        self
    }

    /// Seed for every agent's RNG ([`crate::Ctx::rng`]). Default 0.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Add a tier below the previous ones: `count` agents built by `factory(index)`.
    pub fn tier<A, F>(self, name: impl Into<String>, count: usize, factory: F) -> Self
    where
        A: Agent<Msg = M>,
        F: Fn(usize) -> A + Send + Sync + 'static,
    {
        self.tier_with(Tier::new(name, count, factory))
    }

    /// Add a tier with its own policies.
    pub fn tier_with(mut self, tier: Tier<M>) -> Self {
        self.tiers.push(tier);
        self
    }

    fn validate(&self) -> Result<(), BuildError> {
        if self.name.is_empty() || self.name.contains('/') {
            return Err(BuildError::BadName {
                name: self.name.clone(),
            });
        }
        if self.tiers.is_empty() {
            return Err(BuildError::NoTiers {
                name: self.name.clone(),
            });
        }
        validate_tiers(&self.tiers, true)
    }

    /// Build the tree and spawn every actor.
    ///
    /// # Errors
    /// A [`BuildError`] for a bad declaration (no tiers, an empty or duplicate tier, a
    /// span of control exceeded under a strict span) or an agent that failed to start.
    pub async fn spawn(self) -> Result<Hierarchy<M>, BuildError> {
        self.validate()?;
        let mut plan = Plan {
            b: &self,
            uid: 0,
            dir: Directory {
                by_path: Vec::new(),
                by_tier: HashMap::new(),
                all: Vec::new(),
                routers: HashMap::new(),
            },
        };
        let root_slot = plan.slot(Path::new(self.name.as_str()), 0, Role::Root);
        let tiers: &[Tier<M>] = &self.tiers;
        let members: Vec<Member<'_, M>> = (0..tiers[0].count)
            .map(|index| Member {
                tier: &tiers[0],
                index,
                rest: &tiers[1..],
            })
            .collect();
        let children = plan.reports(&members, &root_slot, &root_slot.path.clone(), 1)?;
        let root = Arc::new(NodeSpec {
            kind: NodeKind::Team(Box::new(TeamSpec {
                slot: root_slot.clone(),
                policy: plan.policy(&tiers[0]),
                lead: None,
                children,
                escalate_to: None,
            })),
            restart: RestartPolicy::Permanent,
        });
        for slots in plan.dir.by_tier.values_mut() {
            slots.sort_by_key(|s| s.uid);
        }
        plan.dir.index_paths();
        let dir = plan.dir;
        let shared = Arc::new(Shared::new(
            Arc::from(self.name.as_str()),
            self.seed,
            self.max_attempts,
            dir,
        ));
        let args = SupervisorArgs {
            spec: root.clone(),
            shared: shared.clone(),
            parent: None,
        };
        let (actor, join) = Actor::spawn(None, SupervisorActor::new(), args)
            .await
            .map_err(|e| BuildError::Spawn {
                reason: e.to_string(),
            })?;
        if !root_slot.attach(actor.clone()) {
            actor.kill();
            return Err(BuildError::Spawn {
                reason: "the root was closed while it started".to_string(),
            });
        }
        Ok(Hierarchy::new(shared, root, actor, join))
    }
}

/// Names unique and usable, counts non-zero, routers only as the last tier; the same for
/// every router's worker groups.
fn validate_tiers<M>(tiers: &[Tier<M>], hierarchy: bool) -> Result<(), BuildError> {
    let mut seen = std::collections::HashSet::new();
    for (i, t) in tiers.iter().enumerate() {
        if t.name.is_empty() || t.name.contains('/') || t.name == "split" {
            return Err(BuildError::BadName {
                name: t.name.clone(),
            });
        }
        if !seen.insert(t.name.as_str()) {
            return Err(BuildError::DuplicateTier {
                tier: t.name.clone(),
            });
        }
        if t.count == 0 {
            return Err(BuildError::EmptyTier {
                tier: t.name.clone(),
            });
        }
        if let TierKind::Router(cfg) = &t.kind {
            if hierarchy && i + 1 < tiers.len() {
                return Err(BuildError::RouterNotLast {
                    tier: t.name.clone(),
                });
            }
            if cfg.workers.is_empty() {
                return Err(BuildError::EmptyTier {
                    tier: format!("{} (a router without workers)", t.name),
                });
            }
            validate_tiers(&cfg.workers, false)?;
        }
        if let TierKind::Pipeline(cfg) = &t.kind {
            if hierarchy && i + 1 < tiers.len() {
                return Err(BuildError::RouterNotLast {
                    tier: t.name.clone(),
                });
            }
            if cfg.stages.is_empty() {
                return Err(BuildError::EmptyTier {
                    tier: format!("{} (a pipeline without stages)", t.name),
                });
            }
            let mut nodes: Vec<&Tier<M>> = Vec::new();
            for s in stage_chain(&cfg.stages) {
                if let StageKind::Node(tiers) = &s.kind {
                    match tiers.first() {
                        Some(first) if first.count == 1 => {}
                        _ => {
                            return Err(BuildError::EmptyTier {
                                tier: format!(
                                    "{} (stage {:?} needs a first tier of exactly one agent)",
                                    t.name, s.name
                                ),
                            })
                        }
                    }
                    validate_tiers(tiers, true)?;
                    nodes.extend(tiers.first());
                }
            }
            let mut names = std::collections::HashSet::new();
            for n in nodes {
                if !names.insert(n.name.as_str()) {
                    return Err(BuildError::DuplicateTier {
                        tier: n.name.clone(),
                    });
                }
            }
        }
    }
    Ok(())
}

/// Every stage and fallback, in order.
fn stage_chain<M>(stages: &[Stage<M>]) -> Vec<&Stage<M>> {
    let mut out = Vec::new();
    for s in stages {
        let mut cur = Some(s);
        while let Some(st) = cur {
            out.push(st);
            cur = st.fallback.as_deref();
        }
    }
    out
}

/// One node to place: agent (or router) `index` of `tier`, with the hierarchy tiers
/// below it (`rest`) whose agents will report to it.
struct Member<'a, M> {
    tier: &'a Tier<M>,
    index: usize,
    rest: &'a [Tier<M>],
}

impl<M> Clone for Member<'_, M> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<M> Copy for Member<'_, M> {}

struct Plan<'a, M> {
    b: &'a HierarchyBuilder<M>,
    uid: u32,
    dir: Directory<M>,
}

impl<M: crate::Message> Plan<'_, M> {
    fn slot(&mut self, path: Path, level: u32, role: Role) -> Arc<Slot<M>> {
        let s = Arc::new(Slot::new(path, self.uid, level, role));
        self.uid += 1;
        self.dir.all.push(s.clone());
        s
    }

    /// Policy of a supervisor whose reports are in tier `reports`.
    fn policy(&self, reports: &Tier<M>) -> TeamPolicy {
        TeamPolicy {
            strategy: self.b.strategy,
            intensity: self.b.intensity,
            backoff: self.b.backoff,
            threshold: reports.threshold.unwrap_or(self.b.threshold),
        }
    }

    /// Specs for `members` reporting to supervisor `sup`, splitting into team leads if
    /// the span requires it.
    fn reports(
        &mut self,
        members: &[Member<'_, M>],
        sup: &Arc<Slot<M>>,
        prefix: &Path,
        level: u32,
    ) -> Result<Vec<Arc<NodeSpec<M>>>, BuildError> {
        let limit = self.b.span.limit;
        if members.len() > limit && self.b.span.policy == SpanPolicy::Strict {
            return Err(BuildError::SpanOfControl {
                team: sup.path.to_string(),
                reports: members.len(),
                limit,
            });
        }
        let group = split(0..members.len(), limit);
        self.group(members, group, sup, prefix, level, &mut 0)
    }

    fn group(
        &mut self,
        members: &[Member<'_, M>],
        group: Group,
        sup: &Arc<Slot<M>>,
        prefix: &Path,
        level: u32,
        next_lead: &mut usize,
    ) -> Result<Vec<Arc<NodeSpec<M>>>, BuildError> {
        match group {
            Group::Reports(r) => members[r]
                .iter()
                .map(|m| self.member(*m, sup, prefix, level))
                .collect(),
            Group::Leads(groups) => {
                let mut out = Vec::with_capacity(groups.len());
                for g in groups {
                    let lead_path = sup.path.child("split", *next_lead);
                    *next_lead += 1;
                    let slot = self.slot(lead_path, level, Role::TeamLead);
                    let children = self.group(members, g, &slot, prefix, level + 1, next_lead)?;
                    let policy = match members.first() {
                        Some(m) => self.policy(m.tier),
                        None => self.policy(&self.b.tiers[0]),
                    };
                    out.push(Arc::new(NodeSpec {
                        kind: NodeKind::Team(Box::new(TeamSpec {
                            slot,
                            policy,
                            lead: None,
                            children,
                            escalate_to: Some(sup.clone()),
                        })),
                        restart: RestartPolicy::Permanent,
                    }));
                }
                Ok(out)
            }
        }
    }

    /// Register an addressable node (agent or router) in the directory. The short form
    /// `tier/index` goes to the first node that claims it (a second router's workers
    /// of the same name are reachable by full path only).
    fn addressable(&mut self, path: &Path, tier: &str, level: u32, role: Role) -> Arc<Slot<M>> {
        let slot = self.slot(path.clone(), level, role);
        // no string for the key unless the tier is new (this runs once per agent)
        match self.dir.by_tier.get_mut(tier) {
            Some(slots) => slots.push(slot.clone()),
            None => {
                self.dir.by_tier.insert(Arc::from(tier), vec![slot.clone()]);
            }
        }
        slot
    }

    /// Place one member reporting to `sup`: a leaf agent, an agent leading a team of
    /// the tier below, or a router leading its workers.
    fn member(
        &mut self,
        m: Member<'_, M>,
        sup: &Arc<Slot<M>>,
        prefix: &Path,
        level: u32,
    ) -> Result<Arc<NodeSpec<M>>, BuildError> {
        let tier = m.tier;
        let j = m.index;
        let path = prefix.child(&tier.name, j);
        let capacity = tier.mailbox.or(self.b.mailbox).unwrap_or(0);
        let lead = |slot: Arc<Slot<M>>, spawner: Spawner<M>| {
            Arc::new(NodeSpec {
                kind: NodeKind::Agent(AgentSpec {
                    slot,
                    index: j,
                    escalate_to: sup.clone(),
                    spawner,
                }),
                restart: tier.restart,
            })
        };
        match &tier.kind {
            TierKind::Agents(spawner) => {
                let agent_slot = self.addressable(&path, &tier.name, level, Role::Agent);
                agent_slot
                    .capacity
                    .store(capacity, std::sync::atomic::Ordering::Relaxed);
                let agent = lead(agent_slot, spawner.clone());
                let Some((below, rest)) = m.rest.split_first() else {
                    return Ok(agent);
                };
                // a team: this agent leads the members of the tier below assigned to it
                let (n_here, n_below) = (tier.count, below.count);
                let members: Vec<Member<'_, M>> = ((j * n_below / n_here)
                    ..((j + 1) * n_below / n_here))
                    .map(|index| Member {
                        tier: below,
                        index,
                        rest,
                    })
                    .collect();
                let team_slot = self.slot(path.clone(), level, Role::Supervisor);
                let reports = self.reports(&members, &team_slot, &path, level + 1)?;
                Ok(self.team(agent, team_slot, reports, below, sup, tier.restart))
            }
            TierKind::Router(cfg) => {
                let router_slot = self.addressable(&path, &tier.name, level, Role::Router);
                router_slot
                    .capacity
                    .store(capacity, std::sync::atomic::Ordering::Relaxed);
                let members: Vec<Member<'_, M>> = cfg
                    .workers
                    .iter()
                    .flat_map(|wt| {
                        (0..wt.count).map(move |index| Member {
                            tier: wt,
                            index,
                            rest: &[],
                        })
                    })
                    .collect();
                let team_slot = self.slot(path.clone(), level, Role::Supervisor);
                let reports = self.reports(&members, &team_slot, &path, level + 1)?;
                let mut workers = Vec::with_capacity(members.len());
                let mut from = team_slot.uid as usize;
                for w in &members {
                    let wpath = path.child(&w.tier.name, w.index);
                    let (slot, next) =
                        self.placed(from, wpath.as_str())
                            .ok_or_else(|| BuildError::Spawn {
                                reason: format!("internal: router worker {wpath} was not placed"),
                            })?;
                    from = next;
                    workers.push(Worker {
                        slot,
                        health: Default::default(),
                    });
                }
                let inner = Arc::new(RouterShared {
                    cfg: cfg.clone(),
                    workers,
                    requests: Default::default(),
                    runs: Default::default(),
                    cursor: Default::default(),
                });
                self.dir.routers.insert(router_slot.uid, inner.clone());
                router_slot.count_in_flight(inner.runs.active());
                inner.runs.on_done(router_slot.room_waker());
                let router = lead(router_slot, Arc::new(Box::new(LeadSpawner { lead: inner })));
                let first = &cfg.workers[0];
                Ok(self.team(router, team_slot, reports, first, sup, tier.restart))
            }
            TierKind::Pipeline(cfg) => {
                let pipe_slot = self.addressable(&path, &tier.name, level, Role::Pipeline);
                pipe_slot
                    .capacity
                    .store(capacity, std::sync::atomic::Ordering::Relaxed);
                let chain = stage_chain(&cfg.stages);
                let members: Vec<Member<'_, M>> = chain
                    .iter()
                    .filter_map(|s| match &s.kind {
                        StageKind::Node(tiers) => tiers.split_first().map(|(first, rest)| Member {
                            tier: first,
                            index: 0,
                            rest,
                        }),
                        StageKind::Function(_) => None,
                    })
                    .collect();
                let team_slot = self.slot(path.clone(), level, Role::Supervisor);
                let reports = self.reports(&members, &team_slot, &path, level + 1)?;
                let mut stages = Vec::with_capacity(cfg.stages.len());
                for s in &cfg.stages {
                    stages.push(self.stage_runtime(s, &path, &team_slot)?);
                }
                let inner = Arc::new(PipelineShared {
                    cfg: cfg.clone(),
                    stages,
                    runs: Default::default(),
                    chained: cfg.chainable(),
                    home: std::sync::OnceLock::new(),
                });
                pipe_slot.count_in_flight(inner.runs.active());
                inner.runs.on_done(pipe_slot.room_waker());
                let pipe = lead(pipe_slot, Arc::new(Box::new(LeadSpawner { lead: inner })));
                let first = members.first().map_or(tier, |m| m.tier);
                Ok(self.team(pipe, team_slot, reports, first, sup, tier.restart))
            }
        }
    }

    /// The runtime view of a stage: its entry slot (placed by `member`) or function.
    /// The addressable slot placed at `path` at or after position `from` of `all` (a
    /// slot's uid is its position), and the position after it. Members are placed in
    /// order after their team's slot, so a caller looking up several of them starts
    /// each search where the last one ended: linear in the team, not quadratic.
    fn placed(&self, from: usize, path: &str) -> Option<(Arc<Slot<M>>, usize)> {
        let rest = self.dir.all.get(from..)?;
        let k = rest
            .iter()
            .position(|s| s.path.as_str() == path && addressable(s.role))?;
        rest.get(k).map(|s| (s.clone(), from + k + 1))
    }

    fn stage_runtime(
        &self,
        s: &Stage<M>,
        path: &Path,
        team: &Slot<M>,
    ) -> Result<StageRuntime<M>, BuildError> {
        let entry = match &s.kind {
            StageKind::Function(f) => Entry::Function(f.clone()),
            StageKind::Node(tiers) => {
                let first = tiers.first().ok_or_else(|| BuildError::EmptyTier {
                    tier: s.name.clone(),
                })?;
                let p = path.child(&first.name, 0);
                // from the team's slot: a pipeline has a few stages
                let (slot, _) = self.placed(team.uid as usize, p.as_str()).ok_or_else(|| {
                    BuildError::Spawn {
                        reason: format!("internal: stage node {p} was not placed"),
                    }
                })?;
                Entry::Node(slot)
            }
        };
        let fallback = match &s.fallback {
            Some(f) => Some(Box::new(self.stage_runtime(f, path, team)?)),
            None => None,
        };
        Ok(StageRuntime {
            name: s.name.clone(),
            entry,
            timeout: s.timeout,
            retry: s.retry,
            cost: s.cost,
            fallback,
        })
    }

    /// A team: a supervisor with its lead (child 0) and its reports.
    fn team(
        &self,
        lead: Arc<NodeSpec<M>>,
        slot: Arc<Slot<M>>,
        reports: Vec<Arc<NodeSpec<M>>>,
        reports_tier: &Tier<M>,
        sup: &Arc<Slot<M>>,
        restart: RestartPolicy,
    ) -> Arc<NodeSpec<M>> {
        let mut children = Vec::with_capacity(reports.len() + 1);
        children.push(lead);
        children.extend(reports);
        Arc::new(NodeSpec {
            kind: NodeKind::Team(Box::new(TeamSpec {
                slot,
                policy: self.policy(reports_tier),
                lead: Some(0),
                children,
                escalate_to: Some(sup.clone()),
            })),
            restart,
        })
    }
}
