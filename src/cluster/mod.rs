//! Distribution: hierarchies whose teams run on other machines, on `ractor_cluster`.
//!
//! A [`Node`] is one process in a cluster: a `ractor_cluster` node server (TCP, cookie
//! authentication, optional TLS) plus an echelon **host** that runs teams for other nodes.
//! A node hosts the team *kinds* it was started with ([`Hosted`]): names bound to agent
//! factories, because code does not travel, only tasks do.
//!
//! A [`RemoteTeam`] places one tier of a hierarchy on other nodes. In the owning
//! hierarchy each of the tier's positions is a proxy agent ([`RemoteAgent`]) supervised
//! like any other agent; the real agent runs on the remote node, inside a hierarchy of
//! its own (so a panic there is caught and restarted there). A task given to the proxy
//! crosses in the bincode envelope of [`crate::codec`] (payload, escalation context,
//! attempt, a trace id); the remote agent's verdict comes back and the proxy returns it as
//! its own. Thresholds, suppression, audit trails, accounting and the escalation sink all
//! stay on the owning node, as in Akka's remote deployment, where a remotely deployed
//! actor is still supervised by its local parent.
//!
//! When a node fails, a proxy waiting on it gets an error (the session closed, or no
//! answer within the team's timeout) and **crashes**: its supervisor applies the tier's
//! strategy and intensity, and the task is redelivered (up to `max_attempts`) to the
//! next placement that is up: another node, or, with [`Placement::or_local`], a local
//! instance of the same agent. Nothing is dropped silently: a task ends completed,
//! escalated, or failed with the node's name and the reason.

mod host;
mod node;
mod remote;

pub use host::Hosted;
pub use node::{ClusterError, Node, NodeConfig, Peer, Tls, WireStats};
pub use remote::{Placement, RemoteAgent, RemoteTeam, TeamStats};
