//! The host: the actor through which a node runs teams for other nodes.
//!
//! One host per node, registered as `echelon.host.<node>`; every session mirrors it as a
//! remote stub on the peer. A peer asks it to open a team of a
//! registered kind, then sends tasks for the team's agents. Each team runs in a
//! hierarchy of its own on this node (one tier, restarts in place), so a panic in a
//! hosted agent is caught and the agent restarted here; the verdict goes back to the
//! owner, which decides what the crash means for the task.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::message::{BoxedDowncastErr, SerializedMessage};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::codec::{self, Codec, HostAnswer, HostRequest, WireVerdict};
use crate::envelope::{FailureKind, Outcome};
use crate::{
    Agent, AgentError, AgentRef, Ctx, Hierarchy, Intensity, SpanOfControl, StopReason, Strategy,
    Tier, Verdict,
};

/// The registered name of a node's host; peers find its stub by this name.
pub(crate) fn host_name(node: &str) -> String {
    format!("echelon.host.{node}")
}

/// The variant name of a request on the wire.
const REQUEST: &str = "echelon.request";

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The host's messages. `Request` crosses the wire (a `ractor_cluster` call whose
/// arguments and reply are codec frames); `PeerDown` is local.
pub(crate) enum HostMsg {
    /// An encoded [`HostRequest`]; the reply is an encoded [`HostAnswer`].
    Request(Vec<u8>, RpcReplyPort<Vec<u8>>),
    /// A peer's session closed: stop the teams it owns.
    PeerDown(String),
}

impl ractor::Message for HostMsg {
    fn serializable() -> bool {
        true
    }

    fn serialize(self) -> Result<SerializedMessage, BoxedDowncastErr> {
        match self {
            HostMsg::Request(args, reply) => Ok(SerializedMessage::Call {
                variant: REQUEST.to_string(),
                args,
                reply,
                metadata: None,
            }),
            HostMsg::PeerDown(_) => Err(BoxedDowncastErr),
        }
    }

    fn deserialize(bytes: SerializedMessage) -> Result<Self, BoxedDowncastErr> {
        match bytes {
            SerializedMessage::Call {
                variant,
                args,
                reply,
                ..
            } if variant == REQUEST => Ok(HostMsg::Request(args, reply)),
            other => {
                tracing::warn!(
                    ?other,
                    "dropped a cluster message that is not an echelon request"
                );
                Err(BoxedDowncastErr)
            }
        }
    }
}

/// The team kinds a node can host, by name: what a peer's [`super::RemoteTeam`] asks
/// for. Code does not cross the wire, so every node that may host a kind must be
/// started with it.
#[derive(Default)]
pub struct Hosted {
    kinds: HashMap<String, Arc<dyn Kind>>,
}

impl std::fmt::Debug for Hosted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut k: Vec<&String> = self.kinds.keys().collect();
        k.sort();
        f.debug_struct("Hosted").field("kinds", &k).finish()
    }
}

impl Hosted {
    /// Nothing hosted yet.
    pub fn new() -> Self {
        Hosted::default()
    }

    /// Host teams of `kind`. `build` gets the configuration bytes the owner sent with
    /// the team (e.g. a scenario file) and returns the agent factory, or a message
    /// saying what is wrong with the configuration.
    pub fn team<A, F, B>(mut self, kind: impl Into<String>, build: B) -> Self
    where
        A: Agent,
        A::Msg: Serialize + DeserializeOwned,
        F: Fn(usize) -> A + Send + Sync + 'static,
        B: Fn(&[u8]) -> Result<F, String> + Send + Sync + 'static,
    {
        let build = Arc::new(build);
        let open: Arc<OpenFn> = Arc::new(move |name: String, count: usize, config: Vec<u8>| {
            let build = build.clone();
            Box::pin(async move {
                let factory = build(&config)?;
                let team = HostedTeam::<A::Msg>::spawn(name, count, factory).await?;
                Ok(Arc::new(team) as Arc<dyn Team>)
            }) as BoxFuture<Result<Arc<dyn Team>, String>>
        });
        self.kinds.insert(kind.into(), Arc::new(KindFn(open)));
        self
    }

    /// The kinds, sorted.
    pub fn kinds(&self) -> Vec<String> {
        let mut k: Vec<String> = self.kinds.keys().cloned().collect();
        k.sort();
        k
    }
}

type OpenFn =
    dyn Fn(String, usize, Vec<u8>) -> BoxFuture<Result<Arc<dyn Team>, String>> + Send + Sync;

trait Kind: Send + Sync {
    fn open(
        &self,
        name: String,
        count: usize,
        config: Vec<u8>,
    ) -> BoxFuture<Result<Arc<dyn Team>, String>>;
}

struct KindFn(Arc<OpenFn>);

impl Kind for KindFn {
    fn open(
        &self,
        name: String,
        count: usize,
        config: Vec<u8>,
    ) -> BoxFuture<Result<Arc<dyn Team>, String>> {
        (self.0)(name, count, config)
    }
}

trait Team: Send + Sync {
    /// Run a task frame on agent `index`; the answer is a verdict frame.
    fn run(&self, index: u32, frame: Vec<u8>, codec: Arc<Codec>) -> BoxFuture<HostAnswer>;
    /// Drain the team (bounded), for an owner that closes it.
    fn close(&self) -> BoxFuture<()>;
    /// Stop the team now, for an owner that is gone or a node that stops.
    fn stop(&self) -> BoxFuture<()>;
}

/// What a hosted agent's escalation said, kept by task id until its reply is encoded
/// (the hosted hierarchy sees the escalation as a reply, so the key is not lost).
type Escalations = Arc<Mutex<HashMap<u64, (f64, String, Option<String>)>>>;

/// The user's agent, hosted: escalations become replies (recorded on the side), so the
/// verdict goes back to the owner whole instead of climbing this node's hierarchy.
struct HostedAgent<A> {
    inner: A,
    escalations: Escalations,
}

impl<A: Agent> Agent for HostedAgent<A> {
    type Msg = A::Msg;

    async fn handle(
        &mut self,
        ctx: &mut Ctx<A::Msg>,
        msg: A::Msg,
    ) -> Result<Verdict<A::Msg>, AgentError> {
        match self.inner.handle(ctx, msg).await? {
            Verdict::Escalate(e) => {
                self.escalations
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(ctx.task_id().0, (e.severity, e.reason, e.key));
                Ok(Verdict::Reply(e.payload))
            }
            v => Ok(v),
        }
    }

    async fn on_start(&mut self, ctx: &mut Ctx<A::Msg>) -> Result<(), AgentError> {
        self.inner.on_start(ctx).await
    }

    async fn on_stop(&mut self, ctx: &mut Ctx<A::Msg>, reason: &StopReason) {
        self.inner.on_stop(ctx, reason).await;
    }
}

struct HostedTeam<M: crate::Message> {
    hierarchy: Mutex<Option<Hierarchy<M>>>,
    agents: Vec<AgentRef<M>>,
    escalations: Escalations,
}

impl<M: crate::Message + Serialize + DeserializeOwned> HostedTeam<M> {
    async fn spawn<A, F>(name: String, count: usize, factory: F) -> Result<Self, String>
    where
        A: Agent<Msg = M>,
        F: Fn(usize) -> A + Send + Sync + 'static,
    {
        let escalations: Escalations = Arc::default();
        let esc = escalations.clone();
        // The owner decides how often a task is retried: here a crash restarts the
        // agent and the task goes back as crashed, once. Intensity is the owner's too.
        let h = Hierarchy::builder(format!("hosted-{name}"))
            .max_attempts(1)
            // a flat team: the owner's tree already has the shape
            .span(SpanOfControl::strict(count.max(1)))
            .restart(
                Strategy::OneForOne,
                Intensity::at_most(u32::MAX).per(Duration::from_secs(1)),
            )
            .tier_with(Tier::new(name.clone(), count, move |i| HostedAgent {
                inner: factory(i),
                escalations: esc.clone(),
            }))
            .spawn()
            .await
            .map_err(|e| e.to_string())?;
        let agents = h.tier(&name).map_err(|e| e.to_string())?;
        Ok(HostedTeam {
            hierarchy: Mutex::new(Some(h)),
            agents,
            escalations,
        })
    }
}

impl<M: crate::Message + Serialize + DeserializeOwned> Team for HostedTeam<M> {
    fn run(&self, index: u32, frame: Vec<u8>, codec: Arc<Codec>) -> BoxFuture<HostAnswer> {
        let agent = self.agents.get(index as usize).cloned();
        let escalations = self.escalations.clone();
        Box::pin(async move {
            let Some(agent) = agent else {
                return HostAnswer::Error(format!("the team has no agent {index}"));
            };
            let task = match codec.count(frame.len(), codec::decode::<M>(&frame)) {
                Ok(t) => t,
                Err(e) => return HostAnswer::Error(format!("could not decode the task: {e}")),
            };
            let span = tracing::debug_span!(
                "echelon.hosted",
                trace = task.trace.as_deref().unwrap_or(""),
                agent = %agent.path()
            );
            let (tx, rx) = oneshot::channel();
            let escalation = task.escalation;
            let id = match agent.submit_with(task.payload, Some(tx.into()), false, |h| {
                if escalation.is_some() {
                    h.meta_mut().escalation = escalation.map(Box::new);
                }
            }) {
                Ok(id) => id,
                Err(e) => {
                    return HostAnswer::Error(format!("the hosted agent is not taking work: {e}"))
                }
            };
            let verdict = match rx.instrument(span).await.map(|a| a.outcome(agent.path())) {
                Ok(Outcome::Completed { reply, .. }) => {
                    let esc = escalations
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&id.0);
                    match (esc, reply) {
                        (Some((severity, reason, key)), Some(payload)) => WireVerdict::Escalate {
                            severity,
                            reason,
                            key,
                            payload,
                        },
                        (_, Some(m)) => WireVerdict::Reply(m),
                        (_, None) => WireVerdict::Done,
                    }
                }
                Ok(Outcome::Escalated { reason, .. }) => WireVerdict::Unavailable(format!(
                    "the hosted team escalated out of its top: {reason}"
                )),
                Ok(Outcome::Failed(f)) => {
                    escalations
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&id.0);
                    match f.kind {
                        FailureKind::Rejected => WireVerdict::Rejected(f.reason),
                        FailureKind::Crashed => WireVerdict::Crashed(f.reason),
                        _ => WireVerdict::Unavailable(f.reason),
                    }
                }
                Err(_) => WireVerdict::Unavailable("the hosted team stopped".to_string()),
            };
            match codec::encode_reply(verdict) {
                Ok(bytes) => HostAnswer::Verdict(bytes),
                Err(e) => HostAnswer::Error(format!("could not encode the verdict: {e}")),
            }
        })
    }

    fn close(&self) -> BoxFuture<()> {
        let h = self
            .hierarchy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        Box::pin(async move {
            if let Some(h) = h {
                let _ = h.shutdown(Duration::from_secs(5)).await;
            }
        })
    }

    fn stop(&self) -> BoxFuture<()> {
        let h = self
            .hierarchy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        Box::pin(async move {
            if let Some(h) = h {
                let _ = h.stop().await;
            }
        })
    }
}

pub(crate) struct HostActor {
    pub(crate) node: String,
    pub(crate) hosted: Arc<Hosted>,
    pub(crate) codec: Arc<Codec>,
    pub(crate) tasks_hosted: Arc<AtomicU64>,
    pub(crate) teams_hosted: Arc<AtomicU64>,
}

pub(crate) struct HostState {
    /// (owner, team id) → team
    teams: HashMap<(String, u64), Arc<dyn Team>>,
}

fn answer(reply: RpcReplyPort<Vec<u8>>, a: &HostAnswer) {
    match codec::encode_host(a) {
        Ok(bytes) => {
            let _ = reply.send(bytes);
        }
        Err(e) => tracing::warn!(error = %e, "could not encode a host answer"),
    }
}

impl Actor for HostActor {
    type Msg = HostMsg;
    type State = HostState;
    type Arguments = ();

    async fn pre_start(
        &self,
        _me: ActorRef<HostMsg>,
        _: (),
    ) -> Result<HostState, ActorProcessingErr> {
        Ok(HostState {
            teams: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        _me: ActorRef<HostMsg>,
        msg: HostMsg,
        state: &mut HostState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            HostMsg::Request(bytes, reply) => {
                let req = match self
                    .codec
                    .count(bytes.len(), codec::decode_host::<HostRequest>(&bytes))
                {
                    Ok(r) => r,
                    Err(e) => {
                        answer(
                            reply,
                            &HostAnswer::Error(format!(
                                "node {} could not decode the request: {e}",
                                self.node
                            )),
                        );
                        return Ok(());
                    }
                };
                match req {
                    HostRequest::Open {
                        team,
                        owner,
                        kind,
                        name,
                        count,
                        config,
                    } => {
                        if state.teams.contains_key(&(owner.clone(), team)) {
                            answer(reply, &HostAnswer::Opened);
                            return Ok(());
                        }
                        let Some(k) = self.hosted.kinds.get(&kind) else {
                            answer(
                                reply,
                                &HostAnswer::Error(format!(
                                    "node {} does not host team kind {kind:?} (it hosts {:?}); start it with that kind",
                                    self.node,
                                    self.hosted.kinds()
                                )),
                            );
                            return Ok(());
                        };
                        // Spawning waits for the agents' on_start; the host handles
                        // nothing else meanwhile, which keeps opens and tasks ordered.
                        match k.open(name.clone(), count as usize, config).await {
                            Ok(t) => {
                                tracing::info!(node = %self.node, %owner, %kind, %name, count, "hosting a team");
                                state.teams.insert((owner, team), t);
                                self.teams_hosted
                                    .store(state.teams.len() as u64, Ordering::Relaxed);
                                answer(reply, &HostAnswer::Opened);
                            }
                            Err(e) => answer(
                                reply,
                                &HostAnswer::Error(format!(
                                    "node {} cannot open team {name:?} of kind {kind:?}: {e}",
                                    self.node
                                )),
                            ),
                        }
                    }
                    HostRequest::Task { team, index, task } => {
                        let found = state
                            .teams
                            .iter()
                            .find(|((_, id), _)| *id == team)
                            .map(|(_, t)| t.clone());
                        let Some(t) = found else {
                            answer(
                                reply,
                                &HostAnswer::Error(format!(
                                    "node {} has no team {team} open; open it first",
                                    self.node
                                )),
                            );
                            return Ok(());
                        };
                        self.tasks_hosted.fetch_add(1, Ordering::Relaxed);
                        let codec = self.codec.clone();
                        // Tasks run concurrently (one agent still takes them one at a
                        // time, in its mailbox's order); the host goes on serving.
                        tokio::spawn(async move {
                            let a = t.run(index, task, codec).await;
                            answer(reply, &a);
                        });
                    }
                    HostRequest::Close { team } => {
                        let keys: Vec<(String, u64)> = state
                            .teams
                            .keys()
                            .filter(|(_, id)| *id == team)
                            .cloned()
                            .collect();
                        for k in keys {
                            if let Some(t) = state.teams.remove(&k) {
                                t.close().await;
                            }
                        }
                        self.teams_hosted
                            .store(state.teams.len() as u64, Ordering::Relaxed);
                        answer(reply, &HostAnswer::Closed);
                    }
                }
            }
            HostMsg::PeerDown(peer) => {
                let keys: Vec<(String, u64)> = state
                    .teams
                    .keys()
                    .filter(|(o, _)| *o == peer)
                    .cloned()
                    .collect();
                for k in keys {
                    if let Some(t) = state.teams.remove(&k) {
                        tracing::info!(node = %self.node, owner = %peer, "owner disconnected: stopping its team");
                        tokio::spawn(async move { t.stop().await });
                    }
                }
                self.teams_hosted
                    .store(state.teams.len() as u64, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _me: ActorRef<HostMsg>,
        state: &mut HostState,
    ) -> Result<(), ActorProcessingErr> {
        // in the background: a hosted handler may be stuck, and the node must stop now
        for (_, t) in state.teams.drain() {
            tokio::spawn(async move { t.stop().await });
        }
        self.teams_hosted.store(0, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame the host cannot decode is counted, logged and answered with an error;
    /// the host keeps serving.
    #[tokio::test]
    async fn undecodable_requests_are_counted_and_answered() {
        let codec = Arc::new(Codec::default());
        let (host, _) = Actor::spawn(
            None,
            HostActor {
                node: "t".into(),
                hosted: Arc::new(Hosted::new()),
                codec: codec.clone(),
                tasks_hosted: Arc::default(),
                teams_hosted: Arc::default(),
            },
            (),
        )
        .await
        .expect("host");
        for garbage in [vec![], vec![0xff; 7], vec![9, 1, 2, 3], vec![0u8; 64]] {
            let answer = host
                .call(
                    |p| HostMsg::Request(garbage.clone(), p),
                    Some(Duration::from_secs(5)),
                )
                .await
                .expect("the host answers");
            let ractor::rpc::CallResult::Success(bytes) = answer else {
                panic!("no answer for {garbage:?}");
            };
            let a: HostAnswer = codec::decode_host(&bytes).expect("a valid answer");
            assert!(
                matches!(a, HostAnswer::Error(ref e) if e.contains("could not decode")),
                "{a:?}"
            );
        }
        assert_eq!(codec.rejected(), 4);
        // an unknown kind is an error naming what the node hosts
        let open = codec::encode_host(&HostRequest::Open {
            team: 1,
            owner: "o".into(),
            kind: "nope".into(),
            name: "x".into(),
            count: 1,
            config: vec![],
        })
        .expect("encode");
        let answer = host
            .call(|p| HostMsg::Request(open, p), Some(Duration::from_secs(5)))
            .await
            .expect("answer");
        let ractor::rpc::CallResult::Success(bytes) = answer else {
            panic!("no answer");
        };
        let a: HostAnswer = codec::decode_host(&bytes).expect("valid");
        assert!(
            matches!(a, HostAnswer::Error(ref e) if e.contains("does not host team kind")),
            "{a:?}"
        );
        host.stop(None);
    }
}
