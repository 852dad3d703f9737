//! Building a hierarchy: tiers, policies, the tree of specs, and spawning it.

use std::collections::HashMap;
use std::sync::Arc;

use ractor::Actor;

use super::shared::{Directory, Shared};
use super::{BuildError, Hierarchy};
use crate::address::Slot;
use crate::agent::Agent;
use crate::envelope::{Path, Role};
use crate::supervisor::actor::{SupervisorActor, SupervisorArgs};
use crate::supervisor::spec::{
    AgentSpec, FactorySpawner, NodeKind, NodeSpec, SpawnAgent, TeamSpec,
};
use crate::supervisor::{
    split, Backoff, Group, Intensity, RestartPolicy, SpanOfControl, SpanPolicy, Strategy,
    TeamPolicy, Threshold,
};

/// One tier of a hierarchy: a name, how many agents, how to build each, and the
/// tier's own policies.
pub struct Tier<M> {
    name: String,
    count: usize,
    spawner: Arc<dyn SpawnAgent<M>>,
    threshold: Option<Threshold>,
    restart: RestartPolicy,
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
            spawner: Arc::new(FactorySpawner {
                factory: Arc::new(factory),
            }),
            threshold: None,
            restart: RestartPolicy::Permanent,
        }
    }

    /// The threshold this tier's escalations must reach to go up a level (overrides
    /// the hierarchy's default).
    pub fn escalate_at(mut self, threshold: Threshold) -> Self {
        self.threshold = Some(threshold);
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
        let mut seen = std::collections::HashSet::new();
        for t in &self.tiers {
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
        }
        Ok(())
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
                by_path: HashMap::new(),
                by_tier: HashMap::new(),
                all: Vec::new(),
            },
        };
        let root_slot = plan.slot(Path::new(self.name.as_str()), 0, Role::Root);
        let top = self.tiers[0].count;
        let children = plan.reports(0, 0..top, &root_slot, &root_slot.path.clone(), 1)?;
        let root = Arc::new(NodeSpec {
            kind: NodeKind::Team(TeamSpec {
                slot: root_slot.clone(),
                policy: plan.policy(0),
                lead: None,
                children,
                escalate_to: None,
            }),
            restart: RestartPolicy::Permanent,
        });
        for slots in plan.dir.by_tier.values_mut() {
            slots.sort_by_key(|s| s.uid);
        }
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
        root_slot.attach(actor.clone());
        Ok(Hierarchy::new(shared, root, actor, join))
    }
}

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

    /// Policy of a supervisor whose reports are in tier `reports_tier`.
    fn policy(&self, reports_tier: usize) -> TeamPolicy {
        TeamPolicy {
            strategy: self.b.strategy,
            intensity: self.b.intensity,
            backoff: self.b.backoff,
            threshold: self.b.tiers[reports_tier]
                .threshold
                .unwrap_or(self.b.threshold),
        }
    }

    /// Specs for the reports `range` of tier `t` under supervisor `sup`, splitting into
    /// team leads if the span requires it.
    fn reports(
        &mut self,
        t: usize,
        range: std::ops::Range<usize>,
        sup: &Arc<Slot<M>>,
        prefix: &Path,
        level: u32,
    ) -> Result<Vec<Arc<NodeSpec<M>>>, BuildError> {
        let limit = self.b.span.limit;
        if range.len() > limit && self.b.span.policy == SpanPolicy::Strict {
            return Err(BuildError::SpanOfControl {
                team: sup.path.to_string(),
                reports: range.len(),
                limit,
            });
        }
        let group = split(0..range.len(), limit);
        self.group(t, &range, group, sup, prefix, level, &mut 0)
    }

    #[allow(clippy::too_many_arguments)]
    fn group(
        &mut self,
        t: usize,
        range: &std::ops::Range<usize>,
        group: Group,
        sup: &Arc<Slot<M>>,
        prefix: &Path,
        level: u32,
        next_lead: &mut usize,
    ) -> Result<Vec<Arc<NodeSpec<M>>>, BuildError> {
        match group {
            Group::Reports(r) => r
                .map(|k| self.member(t, range.start + k, sup, prefix, level))
                .collect(),
            Group::Leads(groups) => {
                let mut out = Vec::with_capacity(groups.len());
                for g in groups {
                    let lead_path = sup.path.child("split", *next_lead);
                    *next_lead += 1;
                    let slot = self.slot(lead_path, level, Role::TeamLead);
                    let children = self.group(t, range, g, &slot, prefix, level + 1, next_lead)?;
                    out.push(Arc::new(NodeSpec {
                        kind: NodeKind::Team(TeamSpec {
                            slot,
                            policy: self.policy(t),
                            lead: None,
                            children,
                            escalate_to: Some(sup.clone()),
                        }),
                        restart: RestartPolicy::Permanent,
                    }));
                }
                Ok(out)
            }
        }
    }

    /// Agent `j` of tier `t` reporting to `sup`: a leaf, or a team it leads.
    fn member(
        &mut self,
        t: usize,
        j: usize,
        sup: &Arc<Slot<M>>,
        prefix: &Path,
        level: u32,
    ) -> Result<Arc<NodeSpec<M>>, BuildError> {
        let tier = &self.b.tiers[t];
        let path = prefix.child(&tier.name, j);
        let tier_name: Arc<str> = Arc::from(tier.name.as_str());
        let restart = tier.restart;
        let spawner = tier.spawner.clone();
        let agent_slot = self.slot(path.clone(), level, Role::Agent);
        self.dir
            .by_path
            .insert(path.as_str().to_string(), agent_slot.clone());
        self.dir
            .by_path
            .insert(format!("{}/{j}", tier.name), agent_slot.clone());
        self.dir
            .by_tier
            .entry(tier.name.clone())
            .or_default()
            .push(agent_slot.clone());
        let agent = Arc::new(NodeSpec {
            kind: NodeKind::Agent(AgentSpec {
                slot: agent_slot,
                tier: tier_name,
                index: j,
                escalate_to: sup.clone(),
                spawner,
            }),
            restart,
        });
        let Some(below) = self.b.tiers.get(t + 1) else {
            return Ok(agent);
        };
        // a team: this agent leads the reports assigned to it from the tier below
        let n_here = tier.count;
        let n_below = below.count;
        let sub = (j * n_below / n_here)..((j + 1) * n_below / n_here);
        let team_slot = self.slot(path.clone(), level, Role::Supervisor);
        let mut children = vec![agent];
        children.extend(self.reports(t + 1, sub, &team_slot, &path, level + 1)?);
        Ok(Arc::new(NodeSpec {
            kind: NodeKind::Team(TeamSpec {
                slot: team_slot,
                policy: self.policy(t + 1),
                lead: Some(0),
                children,
                escalate_to: Some(sup.clone()),
            }),
            restart,
        }))
    }
}
