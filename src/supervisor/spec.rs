//! What a supervisor spawns: a tree of node specifications, built once by the
//! hierarchy builder and kept so that a dead child can be respawned into its slot.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use ractor::{Actor, ActorCell, ActorRef};

use super::{RestartPolicy, TeamPolicy};
use crate::address::Slot;
use crate::agent::actor::{AgentActor, AgentArgs, Factory};
use crate::agent::Agent;
use crate::hierarchy::shared::Shared;
use crate::node::NodeMsg;

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Spawns agent actors of one concrete agent type behind a type-erased interface.
pub(crate) trait SpawnAgent<M>: Send + Sync {
    /// Spawn the actor linked to `supervisor` and attach it to `args.slot` (see
    /// [`attach_spawned`]). The whole spawn is this one boxed future: a box around it
    /// would be one more temporary of several hundred bytes per agent spawned.
    fn spawn(
        &self,
        args: AgentArgs<M>,
        supervisor: ActorCell,
    ) -> BoxFuture<'static, Result<ActorRef<NodeMsg<M>>, String>>;
}

/// Attach a freshly spawned actor to its slot; if the slot was closed meanwhile, the
/// actor is killed and the spawn fails.
pub(crate) fn attach_spawned<M: Send + 'static>(
    slot: &Slot<M>,
    actor: ActorRef<NodeMsg<M>>,
) -> Result<ActorRef<NodeMsg<M>>, String> {
    if slot.attach(actor.clone()) {
        Ok(actor)
    } else {
        actor.kill();
        Err(format!("{} was closed while it started", slot.path))
    }
}

/// A tier's spawner, shared by its agents' specs. A thin pointer (to a box): every
/// agent keeps a spec for restarts, and this makes the spec fit a 64-byte block.
pub(crate) type Spawner<M> = Arc<Box<dyn SpawnAgent<M>>>;

pub(crate) struct FactorySpawner<A: Agent> {
    pub(crate) factory: Factory<A>,
}

impl<A: Agent> SpawnAgent<A::Msg> for FactorySpawner<A> {
    fn spawn(
        &self,
        args: AgentArgs<A::Msg>,
        supervisor: ActorCell,
    ) -> BoxFuture<'static, Result<ActorRef<NodeMsg<A::Msg>>, String>> {
        let factory = self.factory.clone();
        Box::pin(async move {
            let slot = args.slot.clone();
            let actor = AgentActor::new();
            match Actor::spawn_linked(None, actor, (args, factory), supervisor).await {
                Ok((r, _join)) => attach_spawned(&slot, r),
                Err(e) => Err(e.to_string()),
            }
        })
    }
}

pub(crate) struct AgentSpec<M> {
    pub(crate) slot: Arc<Slot<M>>,
    pub(crate) index: usize,
    pub(crate) escalate_to: Arc<Slot<M>>,
    pub(crate) spawner: Spawner<M>,
}

pub(crate) struct TeamSpec<M> {
    pub(crate) slot: Arc<Slot<M>>,
    pub(crate) policy: TeamPolicy,
    /// Index in `children` of the lead agent, if the team has one (always 0).
    pub(crate) lead: Option<usize>,
    pub(crate) children: Vec<Arc<NodeSpec<M>>>,
    /// Where accepted escalations go when there is no lead; `None` at the root.
    pub(crate) escalate_to: Option<Arc<Slot<M>>>,
}

pub(crate) enum NodeKind<M> {
    Agent(AgentSpec<M>),
    /// Boxed: an agent's spec (one per agent, kept for restarts) is then the size of
    /// the agent variant, not of the far larger team.
    Team(Box<TeamSpec<M>>),
}

pub(crate) struct NodeSpec<M> {
    pub(crate) kind: NodeKind<M>,
    /// Restart policy of this node as a child of its supervisor.
    pub(crate) restart: RestartPolicy,
}

impl<M> NodeSpec<M> {
    pub(crate) fn slot(&self) -> &Arc<Slot<M>> {
        match &self.kind {
            NodeKind::Agent(a) => &a.slot,
            NodeKind::Team(t) => &t.slot,
        }
    }

    /// Visit this node's slot and every slot below it.
    pub(crate) fn for_each_slot(&self, f: &mut dyn FnMut(&Arc<Slot<M>>)) {
        f(self.slot());
        if let NodeKind::Team(t) = &self.kind {
            for c in &t.children {
                c.for_each_slot(f);
            }
        }
    }
}

/// Spawn `spec` linked to `supervisor` and attach it to its slot. Teams spawn their
/// children in their own `pre_start`, so this spawns the whole subtree.
pub(crate) fn spawn_node<M: crate::Message>(
    spec: Arc<NodeSpec<M>>,
    shared: Arc<Shared<M>>,
    parent: Arc<Slot<M>>,
    child_index: usize,
    supervisor: ActorCell,
) -> BoxFuture<'static, Result<ActorRef<NodeMsg<M>>, String>> {
    match &spec.kind {
        NodeKind::Agent(a) => {
            let args = AgentArgs {
                slot: a.slot.clone(),
                shared,
                parent,
                child_index,
                escalate_to: a.escalate_to.clone(),
                index: a.index,
            };
            a.spawner.spawn(args, supervisor)
        }
        NodeKind::Team(_) => Box::pin(async move {
            let args = super::actor::SupervisorArgs {
                spec: spec.clone(),
                shared,
                parent: Some((parent, child_index)),
            };
            match Actor::spawn_linked(None, super::actor::SupervisorActor::new(), args, supervisor)
                .await
            {
                Ok((r, _)) => attach_spawned(spec.slot(), r),
                Err(e) => Err(e.to_string()),
            }
        }),
    }
}
