//! A tier placed on other nodes: proxies in the owning hierarchy, agents on the hosts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{ActorRef, ActorStatus};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::time::Instant;

use super::host::HostMsg;
use super::node::Node;
use crate::codec::{self, HostAnswer, HostRequest, WireTask, WireVerdict};
use crate::{Agent, AgentError, Ctx, Escalation, StopReason, Tier, Verdict};

/// Where a [`RemoteTeam`] runs: the nodes to try, in order of preference, and whether
/// to fall back to a local instance of the agents when none of them is reachable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    nodes: Vec<String>,
    local: bool,
}

impl Placement {
    /// On the first of `nodes` that is connected, the next one if it fails, and so on.
    pub fn on<I, S>(nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Placement {
            nodes: nodes.into_iter().map(Into::into).collect(),
            local: false,
        }
    }

    /// When no node of the list is reachable, run the agents here.
    pub fn or_local(mut self) -> Self {
        self.local = true;
        self
    }

    /// The nodes, in order of preference.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// Whether the team falls back to local agents.
    pub fn falls_back_locally(&self) -> bool {
        self.local
    }
}

/// What a remote team did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TeamStats {
    /// Tasks sent to a remote node that answered with a verdict.
    pub remote: u64,
    /// Tasks run by a local fallback instance.
    pub local: u64,
    /// Times a node was found gone or silent (each crashed the proxy holding a task).
    pub node_failures: u64,
}

struct TeamState {
    /// Nodes where the team is open, with the host stub reached through our session.
    open: HashMap<String, ActorRef<HostMsg>>,
    /// Nodes not to try again before the instant.
    down: HashMap<String, Instant>,
}

type LocalFactory<A> = dyn Fn(usize) -> A + Send + Sync;

struct TeamInner<A> {
    node: Node,
    id: u64,
    kind: String,
    name: String,
    count: usize,
    placement: Placement,
    local: Arc<LocalFactory<A>>,
    config: Mutex<Vec<u8>>,
    timeout_ms: AtomicU64,
    state: tokio::sync::Mutex<TeamState>,
    remote_tasks: AtomicU64,
    local_tasks: AtomicU64,
    node_failures: AtomicU64,
}

/// One tier of a hierarchy placed on other nodes.
///
/// ```no_run
/// # use echelon::prelude::*;
/// # use echelon::cluster::{Hosted, Node, NodeConfig, Placement, RemoteTeam};
/// # #[derive(Clone, Debug, serde::Serialize, serde::Deserialize)] struct Job(u32);
/// # struct Worker;
/// # impl Agent for Worker { type Msg = Job;
/// #   async fn handle(&mut self, _c: &mut Ctx<Job>, _m: Job) -> Result<Verdict<Job>, AgentError> { Ok(Verdict::Done) } }
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let node = Node::start(NodeConfig::new("a", "127.0.0.1:7100".parse()?, "secret"), Hosted::new()).await?;
/// node.connect("127.0.0.1:7101").await?; // node "b", started with Hosted::new().team("worker", ..)
/// let team = RemoteTeam::new(&node, "worker", "worker", 4, Placement::on(["b"]).or_local(), |_| Worker);
/// let h = Hierarchy::builder("plant").tier("lead", 1, |_| Worker).tier_with(team.tier()).spawn().await?;
/// # Ok(()) }
/// ```
pub struct RemoteTeam<A> {
    inner: Arc<TeamInner<A>>,
}

impl<A> Clone for RemoteTeam<A> {
    fn clone(&self) -> Self {
        RemoteTeam {
            inner: self.inner.clone(),
        }
    }
}

impl<A> std::fmt::Debug for RemoteTeam<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteTeam")
            .field("kind", &self.inner.kind)
            .field("name", &self.inner.name)
            .field("count", &self.inner.count)
            .field("placement", &self.inner.placement)
            .finish_non_exhaustive()
    }
}

impl<A> RemoteTeam<A>
where
    A: Agent,
    A::Msg: Serialize + DeserializeOwned,
{
    /// `count` agents of the hosted `kind`, as tier `name` of a hierarchy owned by
    /// `node`, placed per `placement`. `local` builds the same agent here, for the
    /// fallback (it must be the code the hosts run for `kind`).
    pub fn new<F>(
        node: &Node,
        kind: impl Into<String>,
        name: impl Into<String>,
        count: usize,
        placement: Placement,
        local: F,
    ) -> Self
    where
        F: Fn(usize) -> A + Send + Sync + 'static,
    {
        RemoteTeam {
            inner: Arc::new(TeamInner {
                node: node.clone(),
                id: node.next_team_id(),
                kind: kind.into(),
                name: name.into(),
                count,
                placement,
                local: Arc::new(local),
                config: Mutex::new(Vec::new()),
                timeout_ms: AtomicU64::new(30_000),
                state: tokio::sync::Mutex::new(TeamState {
                    open: HashMap::new(),
                    down: HashMap::new(),
                }),
                remote_tasks: AtomicU64::new(0),
                local_tasks: AtomicU64::new(0),
                node_failures: AtomicU64::new(0),
            }),
        }
    }

    /// Configuration bytes handed to the host's builder for the kind when the team
    /// opens there (e.g. the scenario file the agents' parameters come from).
    pub fn with_config(self, config: impl Into<Vec<u8>>) -> Self {
        *self.inner.config.lock().unwrap_or_else(|p| p.into_inner()) = config.into();
        self
    }

    /// How long a proxy waits for a remote verdict before it gives the node up
    /// (default 30 s). A node that does not answer is treated as failed.
    pub fn with_timeout(self, timeout: Duration) -> Self {
        self.inner
            .timeout_ms
            .store(timeout.as_millis().max(1) as u64, Ordering::Relaxed);
        self
    }

    /// The factory of the proxies, for [`Tier::new`].
    pub fn factory(&self) -> impl Fn(usize) -> RemoteAgent<A> + Send + Sync + 'static {
        let team = self.inner.clone();
        move |index| RemoteAgent {
            team: team.clone(),
            index,
            local: None,
        }
    }

    /// The tier: `count` proxies named after the team.
    pub fn tier(&self) -> Tier<A::Msg> {
        Tier::new(self.inner.name.clone(), self.inner.count, self.factory())
    }

    /// What the team did so far.
    pub fn stats(&self) -> TeamStats {
        TeamStats {
            remote: self.inner.remote_tasks.load(Ordering::Relaxed),
            local: self.inner.local_tasks.load(Ordering::Relaxed),
            node_failures: self.inner.node_failures.load(Ordering::Relaxed),
        }
    }

    /// The nodes the team is open on now.
    pub async fn open_on(&self) -> Vec<String> {
        let st = self.inner.state.lock().await;
        let mut v: Vec<String> = st.open.keys().cloned().collect();
        v.sort();
        v
    }

    /// Stop the team on every node it is open on (its hosted agents stop; a task still
    /// running there is answered as unavailable).
    pub async fn close(&self) {
        let open: Vec<(String, ActorRef<HostMsg>)> =
            self.inner.state.lock().await.open.drain().collect();
        for (peer, host) in open {
            let Ok(req) = codec::encode_host(&HostRequest::Close {
                team: self.inner.id,
            }) else {
                continue;
            };
            if let Err(e) = host
                .call(|p| HostMsg::Request(req, p), Some(Duration::from_secs(10)))
                .await
            {
                tracing::debug!(%peer, error = %e, "could not close a remote team");
            }
        }
    }
}

impl<A> TeamInner<A> {
    fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.load(Ordering::Relaxed))
    }

    /// The first node of the placement that is up, with the team open on it.
    async fn target(&self) -> Option<(String, ActorRef<HostMsg>)> {
        let mut st = self.state.lock().await;
        let now = Instant::now();
        for peer in &self.placement.nodes {
            if st.down.get(peer).is_some_and(|until| *until > now) {
                continue;
            }
            if let Some(h) = st.open.get(peer) {
                if h.get_status() == ActorStatus::Running {
                    return Some((peer.clone(), h.clone()));
                }
                st.open.remove(peer);
            }
            let Some(host) = self.node.host_of(peer).await else {
                continue;
            };
            match self.open(peer, &host).await {
                Ok(()) => {
                    st.open.insert(peer.clone(), host.clone());
                    return Some((peer.clone(), host));
                }
                Err(e) => {
                    tracing::warn!(team = %self.name, %peer, error = %e, "cannot open the team on a node");
                    st.down.insert(peer.clone(), now + self.cooldown());
                }
            }
        }
        None
    }

    fn cooldown(&self) -> Duration {
        self.timeout().min(Duration::from_secs(1))
    }

    async fn open(&self, peer: &str, host: &ActorRef<HostMsg>) -> Result<(), String> {
        let config = self
            .config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let req = codec::encode_host(&HostRequest::Open {
            team: self.id,
            owner: self.node.name().to_string(),
            kind: self.kind.clone(),
            name: self.name.clone(),
            count: self.count as u32,
            config,
        })
        .map_err(|e| e.to_string())?;
        match host
            .call(|p| HostMsg::Request(req, p), Some(self.timeout()))
            .await
        {
            Ok(CallResult::Success(bytes)) => {
                match self
                    .node
                    .inner
                    .codec
                    .count(bytes.len(), codec::decode_host::<HostAnswer>(&bytes))
                {
                    Ok(HostAnswer::Opened) => Ok(()),
                    Ok(HostAnswer::Error(e)) => Err(e),
                    Ok(other) => Err(format!("node {peer} answered {other:?} to an open")),
                    Err(e) => Err(e.to_string()),
                }
            }
            Ok(CallResult::Timeout) => Err(format!(
                "node {peer} did not answer the open within {:?}",
                self.timeout()
            )),
            Ok(CallResult::SenderError) | Err(_) => Err(format!("node {peer} disconnected")),
        }
    }

    /// The node failed a task: forget it for a cool-down.
    async fn node_failed(&self, peer: &str) {
        self.node_failures.fetch_add(1, Ordering::Relaxed);
        let mut st = self.state.lock().await;
        st.open.remove(peer);
        st.down
            .insert(peer.to_string(), Instant::now() + self.cooldown());
    }

    async fn forget(&self, peer: &str) {
        self.state.lock().await.open.remove(peer);
    }
}

/// The proxy for one remote agent: an agent of the owning hierarchy whose handler runs
/// the task on the node the team is placed on (or on a local instance, when the
/// placement allows it and no node is reachable).
pub struct RemoteAgent<A> {
    team: Arc<TeamInner<A>>,
    index: usize,
    local: Option<A>,
}

impl<A> std::fmt::Debug for RemoteAgent<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteAgent")
            .field("team", &self.team.name)
            .field("index", &self.index)
            .field("local", &self.local.is_some())
            .finish()
    }
}

fn crash(reason: String) -> AgentError {
    AgentError::crash(reason)
}

impl<A> Agent for RemoteAgent<A>
where
    A: Agent,
    A::Msg: Serialize + DeserializeOwned,
{
    type Msg = A::Msg;

    async fn handle(
        &mut self,
        ctx: &mut Ctx<A::Msg>,
        msg: A::Msg,
    ) -> Result<Verdict<A::Msg>, AgentError> {
        let team = self.team.clone();
        let Some((peer, host)) = team.target().await else {
            if !team.placement.local {
                return Err(crash(format!(
                    "no node of {:?} is reachable for team {:?}, and the team has no local fallback",
                    team.placement.nodes, team.name
                )));
            }
            team.local_tasks.fetch_add(1, Ordering::Relaxed);
            if self.local.is_none() {
                let mut a = (team.local)(self.index);
                a.on_start(ctx).await?;
                self.local = Some(a);
            }
            let Some(a) = self.local.as_mut() else {
                return Err(crash("the local fallback agent is missing".to_string()));
            };
            return a.handle(ctx, msg).await;
        };
        if self.local.take().is_some() {
            tracing::info!(team = %team.name, index = self.index, %peer, "back on a remote node");
        }
        let span_id = tracing::Span::current().id().map(|i| i.into_u64());
        let trace = match span_id {
            Some(s) => format!("{}/{}/{s}", team.node.name(), ctx.task_id()),
            None => format!("{}/{}", team.node.name(), ctx.task_id()),
        };
        let task = WireTask {
            version: codec::VERSION,
            id: ctx.task_id().0,
            attempt: ctx.attempt(),
            escalation: ctx.escalation().cloned(),
            trail: Vec::new(),
            trace: Some(trace),
            payload: msg,
        };
        let cannot_send = |e: codec::CodecError| {
            AgentError::reject(format!("cannot send the task to node {peer}: {e}"))
        };
        let frame = codec::encode(&task).map_err(cannot_send)?;
        let req = codec::encode_host(&HostRequest::Task {
            team: team.id,
            index: self.index as u32,
            task: frame,
        })
        .map_err(cannot_send)?;
        let timeout = team.timeout();
        let answer = match host.call(|p| HostMsg::Request(req, p), Some(timeout)).await {
            Ok(CallResult::Success(bytes)) => bytes,
            Ok(CallResult::Timeout) => {
                team.node_failed(&peer).await;
                return Err(crash(format!(
                    "node {peer} did not answer within {timeout:?}"
                )));
            }
            Ok(CallResult::SenderError) | Err(_) => {
                team.node_failed(&peer).await;
                return Err(crash(format!(
                    "node {peer} disconnected while handling the task"
                )));
            }
        };
        let wire = &team.node.inner.codec;
        let verdict = match wire.count(answer.len(), codec::decode_host::<HostAnswer>(&answer)) {
            Ok(HostAnswer::Verdict(v)) => wire
                .count(v.len(), codec::decode_reply::<A::Msg>(&v))
                .map_err(|e| crash(format!("undecodable verdict from node {peer}: {e}")))?,
            Ok(HostAnswer::Error(e)) => {
                // e.g. the node restarted and no longer has the team: open it again
                team.forget(&peer).await;
                return Err(crash(format!("node {peer}: {e}")));
            }
            Ok(other) => return Err(crash(format!("node {peer} answered {other:?} to a task"))),
            Err(e) => return Err(crash(format!("undecodable answer from node {peer}: {e}"))),
        };
        team.remote_tasks.fetch_add(1, Ordering::Relaxed);
        match verdict {
            WireVerdict::Done => Ok(Verdict::Done),
            WireVerdict::Reply(m) => Ok(Verdict::Reply(m)),
            WireVerdict::Escalate {
                severity,
                reason,
                key,
                payload,
            } => {
                let mut e = Escalation::new(severity, reason, payload);
                e.key = key;
                Ok(e.into())
            }
            WireVerdict::Crashed(r) => Err(crash(format!("on node {peer}: {r}"))),
            WireVerdict::Rejected(r) => Err(AgentError::reject(format!("on node {peer}: {r}"))),
            WireVerdict::Unavailable(r) => {
                team.node_failed(&peer).await;
                Err(crash(format!("node {peer} could not run the task: {r}")))
            }
        }
    }

    async fn on_stop(&mut self, ctx: &mut Ctx<A::Msg>, reason: &StopReason) {
        if let Some(a) = self.local.as_mut() {
            a.on_stop(ctx, reason).await;
        }
    }
}
