//! One process of a cluster: the `ractor_cluster` node server, its sessions, and the
//! echelon host that serves other nodes' teams.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorCell, ActorRef};
use ractor_cluster::node::NodeServerSessionInformation;
use ractor_cluster::{NodeEventSubscription, NodeServer, NodeServerMessage};
use tokio::sync::broadcast;

use super::host::{host_name, HostActor, HostMsg, Hosted};
use crate::codec::Codec;

/// How a node starts.
#[derive(Clone)]
pub struct NodeConfig {
    /// The node's name, unique in the cluster (e.g. `"ward-b"`).
    pub name: String,
    /// Where it listens for other nodes. Port 0 picks a free port (see
    /// [`Node::listen_addr`]).
    pub listen: SocketAddr,
    /// The shared secret every node of the cluster must be started with. A peer with
    /// another cookie fails the handshake and is disconnected.
    pub cookie: String,
    /// How long [`Node::connect`] waits for the handshake.
    pub connect_timeout: Duration,
    /// Encrypt and mutually authenticate sessions with TLS; `None` for plain TCP.
    pub tls: Option<Tls>,
}

/// TLS for a node's sessions: both ends present a certificate, both verify the other's
/// against the cluster's CA. A peer without TLS, or with a certificate the CA did not
/// sign, fails the handshake.
#[derive(Clone)]
pub struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
    connector: tokio_rustls::TlsConnector,
    server_name: tokio_rustls::rustls::pki_types::ServerName<'static>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// From PEM text: this node's certificate chain and private key, the CA certificate(s)
    /// that sign the cluster's nodes, and the name peers' certificates are issued for
    /// (e.g. `"echelon-cluster"`; one certificate may serve every node).
    ///
    /// # Errors
    /// [`ClusterError::Tls`] saying which part is unusable.
    pub fn from_pem(
        cert_chain: &str,
        key: &str,
        ca: &str,
        server_name: &str,
    ) -> Result<Tls, ClusterError> {
        use tokio_rustls::rustls;
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
        let bad = |what: &str, e: &dyn std::fmt::Display| ClusterError::Tls(format!("{what}: {e}"));
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_chain.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| bad("the certificate chain is not PEM", &e))?;
        if chain.is_empty() {
            return Err(ClusterError::Tls(
                "the certificate file has no certificate".into(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
            .map_err(|e| bad("the private key is not PEM", &e))?;
        let mut roots = rustls::RootCertStore::empty();
        let mut n = 0;
        for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
            let c = c.map_err(|e| bad("the CA file is not PEM", &e))?;
            roots
                .add(c)
                .map_err(|e| bad("a CA certificate is unusable", &e))?;
            n += 1;
        }
        if n == 0 {
            return Err(ClusterError::Tls("the CA file has no certificate".into()));
        }
        let roots = Arc::new(roots);
        // explicit provider: the process may link more than one
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .map_err(|e| bad("cannot verify peers with this CA", &e))?;
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("TLS versions", &e))?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| bad("the certificate and key do not match", &e))?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("TLS versions", &e))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| bad("the certificate and key do not match", &e))?;
        let server_name = ServerName::try_from(server_name.to_string())
            .map_err(|e| bad("the server name is not a DNS name or address", &e))?;
        Ok(Tls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
            server_name,
        })
    }
}

impl std::fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeConfig")
            .field("name", &self.name)
            .field("listen", &self.listen)
            .field("cookie", &"<secret>")
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl NodeConfig {
    /// A node named `name` listening on `listen` with `cookie`; 10 s to connect.
    pub fn new(name: impl Into<String>, listen: SocketAddr, cookie: impl Into<String>) -> Self {
        NodeConfig {
            name: name.into(),
            listen,
            cookie: cookie.into(),
            connect_timeout: Duration::from_secs(10),
            tls: None,
        }
    }
}

/// Why a cluster operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The node name is empty or has characters other than letters, digits, `-`, `_`, `.`.
    #[error("invalid node name {0:?}: use letters, digits, '-', '_' or '.'")]
    BadName(String),
    /// The node server could not start (e.g. the port is taken).
    #[error("cannot start node {name} on {addr}: {reason}; pick a free address with --listen")]
    Start {
        /// The node.
        name: String,
        /// Where it tried to listen.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// No TCP connection to the peer.
    #[error("cannot reach {addr}: {reason}; is a node listening there?")]
    Unreachable {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The peer closed the session during the handshake.
    #[error("{addr} refused the connection during the handshake; check that both nodes use the same --cookie and different --name")]
    Refused {
        /// The address.
        addr: String,
    },
    /// The handshake did not finish in time.
    #[error("no handshake with {addr} within {timeout:?}; is it an echelon node?")]
    Timeout {
        /// The address.
        addr: String,
        /// The bound.
        timeout: Duration,
    },
    /// The node has stopped.
    #[error("the node has stopped")]
    Stopped,
    /// The TLS settings are unusable.
    #[error("TLS: {0}; give PEM files for the node's certificate, its key and the cluster's CA")]
    Tls(String),
}

/// A connected peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its node name.
    pub name: String,
    /// Its address as seen from here.
    pub addr: String,
}

/// Counters of what crossed the wire at this node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WireStats {
    /// Frames decoded.
    pub decoded: u64,
    /// Frames rejected (malformed, too large, another version): each was logged and
    /// answered with an error or dropped, never a crash.
    pub rejected: u64,
    /// Tasks this node ran for other nodes.
    pub tasks_hosted: u64,
    /// Teams this node is hosting now.
    pub teams_hosted: u64,
}

#[derive(Debug, Clone)]
pub(crate) enum PeerEvent {
    Ready { addr: String, name: String },
    Down { addr: String },
}

struct Events {
    tx: broadcast::Sender<PeerEvent>,
    host: ActorRef<HostMsg>,
}

fn short_name(full: &str) -> String {
    full.split('@').next().unwrap_or(full).to_string()
}

impl NodeEventSubscription for Events {
    fn node_session_opened(&self, _ses: NodeServerSessionInformation) {}

    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        let name = ses.peer_name.as_ref().map(|n| short_name(&n.name));
        if let Some(name) = &name {
            tracing::info!(peer = %name, addr = %ses.peer_addr, "node disconnected");
            let _ = self.host.cast(HostMsg::PeerDown(name.clone()));
        }
        let _ = self.tx.send(PeerEvent::Down {
            addr: ses.peer_addr,
        });
    }

    fn node_session_authenticated(&self, _ses: NodeServerSessionInformation) {}

    fn node_session_ready(&self, ses: NodeServerSessionInformation) {
        let name = ses
            .peer_name
            .as_ref()
            .map(|n| short_name(&n.name))
            .unwrap_or_default();
        tracing::info!(peer = %name, addr = %ses.peer_addr, "node connected");
        let _ = self.tx.send(PeerEvent::Ready {
            addr: ses.peer_addr,
            name,
        });
    }
}

pub(crate) struct NodeInner {
    pub(crate) name: String,
    listen: SocketAddr,
    server: ActorRef<NodeServerMessage>,
    host: ActorRef<HostMsg>,
    events: broadcast::Sender<PeerEvent>,
    pub(crate) codec: Arc<Codec>,
    pub(crate) tasks_hosted: Arc<AtomicU64>,
    pub(crate) teams_hosted: Arc<AtomicU64>,
    tls: Option<Tls>,
    connect_timeout: Duration,
    stopped: Mutex<bool>,
    team_ids: AtomicU64,
}

impl Drop for NodeInner {
    fn drop(&mut self) {
        self.host.stop(None);
        self.server.stop(None);
    }
}

/// A running node. Cheap to clone; the node stops when [`Node::stop`] is called or the
/// last clone is dropped.
#[derive(Clone)]
pub struct Node {
    pub(crate) inner: Arc<NodeInner>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.inner.name)
            .field("listen", &self.inner.listen)
            .finish_non_exhaustive()
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl Node {
    /// Start a node that hosts the team kinds in `hosted` for its peers.
    ///
    /// # Errors
    /// [`ClusterError::BadName`], or [`ClusterError::Start`] if the address cannot be
    /// listened on.
    pub async fn start(config: NodeConfig, hosted: Hosted) -> Result<Node, ClusterError> {
        if !valid_name(&config.name) {
            return Err(ClusterError::BadName(config.name));
        }
        let start_err = |reason: String| ClusterError::Start {
            name: config.name.clone(),
            addr: config.listen,
            reason,
        };
        // ractor_cluster's listener cannot tell which port the OS picked, so a port 0 is
        // resolved here: bind, read the port, release it for the node server.
        let mut listen = config.listen;
        if listen.port() == 0 {
            let probe =
                std::net::TcpListener::bind(listen).map_err(|e| start_err(e.to_string()))?;
            listen = probe.local_addr().map_err(|e| start_err(e.to_string()))?;
        }
        let codec = Arc::new(Codec::default());
        let tasks_hosted = Arc::new(AtomicU64::new(0));
        let teams_hosted = Arc::new(AtomicU64::new(0));
        let (host, _) = Actor::spawn(
            Some(host_name(&config.name)),
            HostActor {
                node: config.name.clone(),
                hosted: Arc::new(hosted),
                codec: codec.clone(),
                tasks_hosted: tasks_hosted.clone(),
                teams_hosted: teams_hosted.clone(),
            },
            (),
        )
        .await
        .map_err(|e| start_err(e.to_string()))?;

        let server = NodeServer::new(
            listen.port(),
            config.cookie.clone(),
            config.name.clone(),
            listen.ip().to_string(),
            config
                .tls
                .as_ref()
                .map(|t| ractor_cluster::IncomingEncryptionMode::Tls(t.acceptor.clone())),
            None,
        )
        .with_listen_addr(listen.ip())
        .with_max_inbound_frame_size(crate::codec::MAX_FRAME as u64 + 4096);
        let server = match Actor::spawn(None, server, ()).await {
            Ok((s, _)) => s,
            Err(e) => {
                host.stop(None);
                return Err(start_err(e.to_string()));
            }
        };
        let (events, _) = broadcast::channel(256);
        let _ = server.cast(NodeServerMessage::SubscribeToEvents {
            id: "echelon".to_string(),
            subscription: Box::new(Events {
                tx: events.clone(),
                host: host.clone(),
            }),
        });
        tracing::info!(node = %config.name, %listen, "node started");
        Ok(Node {
            inner: Arc::new(NodeInner {
                name: config.name,
                listen,
                server,
                host,
                events,
                codec,
                tasks_hosted,
                teams_hosted,
                tls: config.tls,
                connect_timeout: config.connect_timeout,
                stopped: Mutex::new(false),
                team_ids: AtomicU64::new(1),
            }),
        })
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The address it listens on (with the port the OS picked, if it was 0).
    pub fn listen_addr(&self) -> SocketAddr {
        self.inner.listen
    }

    /// Connect to the node at `addr` and wait for the handshake (cookie check and state
    /// exchange). Returns the peer's name.
    ///
    /// # Errors
    /// [`ClusterError::Unreachable`] with no TCP connection, [`ClusterError::Refused`] if
    /// the peer closed the session during the handshake (a wrong cookie, a duplicate
    /// name), [`ClusterError::Timeout`] past the node's connect timeout.
    pub async fn connect(&self, addr: &str) -> Result<String, ClusterError> {
        if self.is_stopped() {
            return Err(ClusterError::Stopped);
        }
        let target: Vec<SocketAddr> = match tokio::net::lookup_host(addr).await {
            Ok(a) => a.collect(),
            Err(e) => {
                return Err(ClusterError::Unreachable {
                    addr: addr.to_string(),
                    reason: e.to_string(),
                })
            }
        };
        let mut rx = self.inner.events.subscribe();
        let mut last = String::from("no address");
        let mut connected = None;
        for a in &target {
            let r = match &self.inner.tls {
                Some(t) => {
                    ractor_cluster::client_connect_enc(
                        &self.inner.server,
                        *a,
                        t.connector.clone(),
                        t.server_name.clone(),
                    )
                    .await
                }
                None => ractor_cluster::client_connect(&self.inner.server, *a).await,
            };
            match r {
                Ok(()) => {
                    connected = Some(a.to_string());
                    break;
                }
                Err(ractor_cluster::ClientConnectErr::Encryption(e)) => {
                    return Err(ClusterError::Tls(format!(
                        "the TLS handshake with {addr} failed ({e}); check that both nodes use TLS with certificates from the same CA"
                    )));
                }
                Err(e) => last = format!("{e:?}"),
            }
        }
        let Some(peer_addr) = connected else {
            return Err(ClusterError::Unreachable {
                addr: addr.to_string(),
                reason: last,
            });
        };
        let timeout = self.inner.connect_timeout;
        let wait = async {
            loop {
                match rx.recv().await {
                    Ok(PeerEvent::Ready { addr: a, name }) if a == peer_addr => {
                        return Ok(name);
                    }
                    Ok(PeerEvent::Down { addr: a, .. }) if a == peer_addr => {
                        return Err(ClusterError::Refused {
                            addr: addr.to_string(),
                        });
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return Err(ClusterError::Stopped),
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(r) => r,
            Err(_) => Err(ClusterError::Timeout {
                addr: addr.to_string(),
                timeout,
            }),
        }
    }

    /// The peers with an authenticated session.
    pub async fn peers(&self) -> Vec<Peer> {
        self.sessions()
            .await
            .into_iter()
            .filter_map(|s| {
                s.peer_name.as_ref().map(|n| Peer {
                    name: short_name(&n.name),
                    addr: s.peer_addr.clone(),
                })
            })
            .collect()
    }

    async fn sessions(&self) -> Vec<NodeServerSessionInformation> {
        match self
            .inner
            .server
            .call(NodeServerMessage::GetSessions, Some(Duration::from_secs(5)))
            .await
        {
            Ok(ractor::rpc::CallResult::Success(map)) => map.into_values().collect(),
            _ => Vec::new(),
        }
    }

    /// The host of `peer`, reached through this node's own session with it.
    ///
    /// Each session mirrors the peer's remotable actors as stubs, its children. The
    /// host's stub is found by name among the children of *this* node's session with
    /// `peer`, not through ractor's process groups: those are global to the process, and
    /// with several nodes in one process (tests) stubs of different sessions share ids.
    pub(crate) async fn host_of(&self, peer: &str) -> Option<ActorRef<HostMsg>> {
        let session = self.sessions().await.into_iter().find(|s| {
            s.peer_name
                .as_ref()
                .is_some_and(|n| short_name(&n.name) == peer)
        })?;
        let name = host_name(peer);
        session
            .actor
            .get_cell()
            .get_children()
            .into_iter()
            .find(|c: &ActorCell| {
                !c.get_id().is_local() && c.get_name().as_deref() == Some(name.as_str())
            })
            .map(ActorRef::from)
    }

    /// A fresh id for a team owned by this node: random, so that teams of different
    /// owners never share an id at a host.
    pub(crate) fn next_team_id(&self) -> u64 {
        let n = self.inner.team_ids.fetch_add(1, Ordering::Relaxed);
        rand::random::<u64>() ^ n
    }

    /// What crossed the wire here.
    pub fn stats(&self) -> WireStats {
        WireStats {
            decoded: self.inner.codec.decoded(),
            rejected: self.inner.codec.rejected(),
            tasks_hosted: self.inner.tasks_hosted.load(Ordering::Relaxed),
            teams_hosted: self.inner.teams_hosted.load(Ordering::Relaxed),
        }
    }

    /// True once [`Node::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        *self.inner.stopped.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keep a connection to `addr`: connect now, and whenever the session closes, try
    /// again (every `retry`, until the node stops). Teams placed on that peer use it
    /// again once it is back. Returns the first attempt's result.
    ///
    /// # Errors
    /// As [`Node::connect`], for the first attempt; later failures are logged.
    pub async fn connect_and_keep(
        &self,
        addr: &str,
        retry: Duration,
    ) -> Result<String, ClusterError> {
        let first = self.connect(addr).await;
        let node = Arc::downgrade(&self.inner);
        let addr = addr.to_string();
        let mut connected = first.is_ok();
        tokio::spawn(async move {
            loop {
                let Some(inner) = node.upgrade() else { return };
                let n = Node { inner };
                if n.is_stopped() {
                    return;
                }
                if connected {
                    // wait for this session to close
                    let mut rx = n.inner.events.subscribe();
                    let peers = n.peers().await;
                    let still = peers.iter().any(|p| p.addr == addr);
                    drop(n);
                    if still {
                        loop {
                            match rx.recv().await {
                                Ok(PeerEvent::Down { addr: a }) if a == addr => break,
                                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                                Err(broadcast::error::RecvError::Closed) => return,
                            }
                        }
                    }
                } else {
                    drop(n);
                }
                tokio::time::sleep(retry).await;
                let Some(inner) = node.upgrade() else { return };
                let n = Node { inner };
                if n.is_stopped() {
                    return;
                }
                match n.connect(&addr).await {
                    Ok(peer) => {
                        tracing::info!(%peer, %addr, "reconnected");
                        connected = true;
                    }
                    Err(e) => {
                        tracing::debug!(%addr, error = %e, "reconnect failed; will retry");
                        connected = false;
                    }
                }
            }
        });
        first
    }

    /// Stop the node: close every session (peers see it disconnect at once), then stop
    /// the teams it hosts in the background (their running tasks are abandoned; their
    /// owners redeliver or fail them).
    pub async fn stop(&self) {
        {
            let mut s = self.inner.stopped.lock().unwrap_or_else(|p| p.into_inner());
            if *s {
                return;
            }
            *s = true;
        }
        let _ = self
            .inner
            .server
            .stop_and_wait(Some("node stopping".into()), Some(Duration::from_secs(10)))
            .await;
        let _ = self
            .inner
            .host
            .stop_and_wait(Some("node stopping".into()), Some(Duration::from_secs(10)))
            .await;
        tracing::info!(node = %self.inner.name, "node stopped");
    }
}
