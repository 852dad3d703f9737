//! Distribution, security: a node started with another cookie is refused during the
//! handshake (and never listed as a peer); an address with no node is reported as
//! unreachable; a node name that cannot be addressed is refused at start.
#![cfg(feature = "cluster")]

mod support;

use echelon::cluster::{ClusterError, Hosted, Node, NodeConfig};
use support::within;

async fn node(name: &str, cookie: &str) -> Node {
    let cfg = NodeConfig::new(name, "127.0.0.1:0".parse().expect("addr"), cookie);
    within(10, "node start", Node::start(cfg, Hosted::new()))
        .await
        .expect("node starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_cookie_is_refused_both_ways() {
    let a = node("left", "right-secret").await;
    let b = node("right", "other-secret").await;
    let err = within(15, "refusal", a.connect(&b.listen_addr().to_string()))
        .await
        .expect_err("the handshake must fail");
    assert!(matches!(err, ClusterError::Refused { .. }), "{err:?}");
    assert!(
        err.to_string().contains("--cookie"),
        "the message says what to check: {err}"
    );
    let err = within(15, "refusal", b.connect(&a.listen_addr().to_string()))
        .await
        .expect_err("and the other way");
    assert!(matches!(err, ClusterError::Refused { .. }), "{err:?}");
    assert!(a.peers().await.is_empty());
    assert!(b.peers().await.is_empty());

    // the same cookie works, and lists the peer on both sides
    let c = node("center", "right-secret").await;
    let peer = within(15, "connect", a.connect(&c.listen_addr().to_string()))
        .await
        .expect("same cookie");
    assert_eq!(peer, "center");
    assert!(a.peers().await.iter().any(|p| p.name == "center"));
    a.stop().await;
    b.stop().await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_node_at_the_address_is_unreachable() {
    let a = node("lonely", "s").await;
    // a port that was free a moment ago
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("probe")
        .port();
    let err = within(15, "unreachable", a.connect(&format!("127.0.0.1:{port}")))
        .await
        .expect_err("nobody listens");
    assert!(matches!(err, ClusterError::Unreachable { .. }), "{err:?}");
    a.stop().await;
    assert!(matches!(
        a.connect("127.0.0.1:1").await,
        Err(ClusterError::Stopped)
    ));
}

#[tokio::test]
async fn bad_names_are_refused_at_start() {
    for name in ["", "has space", "slash/name", "at@host"] {
        let cfg = NodeConfig::new(name, "127.0.0.1:0".parse().expect("addr"), "s");
        let err = Node::start(cfg, Hosted::new()).await.expect_err("bad name");
        assert!(matches!(err, ClusterError::BadName(_)), "{name:?}: {err:?}");
    }
}
