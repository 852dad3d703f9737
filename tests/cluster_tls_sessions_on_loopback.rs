//! Distribution, security: with TLS, sessions are encrypted and both ends present a
//! certificate signed by the cluster's CA. Tasks cross as usual; a plain-TCP node or a
//! node with a certificate from another CA cannot join; unusable PEM is a clear error.
#![cfg(feature = "cluster")]

mod support;

use echelon::cluster::{ClusterError, Hosted, Node, NodeConfig, Placement, RemoteTeam, Tls};
use echelon::prelude::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use serde::{Deserialize, Serialize};
use support::within;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Echo(String);

struct Echoer(&'static str);

impl Agent for Echoer {
    type Msg = Echo;
    async fn handle(
        &mut self,
        _ctx: &mut Ctx<Echo>,
        msg: Echo,
    ) -> Result<Verdict<Echo>, AgentError> {
        Ok(Verdict::Reply(Echo(format!("{} via {}", msg.0, self.0))))
    }
}

/// (CA pem, node certificate pem, node key pem) for a fresh CA.
fn pki() -> (String, String, String) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "echelon test CA");
    let ca_key = KeyPair::generate().expect("ca key");
    let ca_cert = ca.self_signed(&ca_key).expect("ca cert");
    let mut leaf =
        CertificateParams::new(vec!["echelon-cluster".to_string()]).expect("leaf params");
    leaf.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().expect("key");
    let cert = leaf.signed_by(&key, &ca_cert, &ca_key).expect("leaf cert");
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

async fn node(name: &'static str, tls: Option<Tls>) -> Node {
    let mut cfg = NodeConfig::new(name, "127.0.0.1:0".parse().expect("addr"), "cookie");
    cfg.tls = tls;
    let hosted = Hosted::new().team("echo", move |_: &[u8]| Ok(move |_| Echoer(name)));
    within(10, "node start", Node::start(cfg, hosted))
        .await
        .expect("node starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_nodes_talk_and_others_cannot_join() {
    let (ca, cert, key) = pki();
    let tls = Tls::from_pem(&cert, &key, &ca, "echelon-cluster").expect("tls");
    let a = node("tls-a", Some(tls.clone())).await;
    let b = node("tls-b", Some(tls)).await;
    let peer = within(15, "tls connect", a.connect(&b.listen_addr().to_string()))
        .await
        .expect("TLS handshake and cookie");
    assert_eq!(peer, "tls-b");

    let team = RemoteTeam::new(&a, "echo", "echo", 1, Placement::on(["tls-b"]), |_| {
        Echoer("local")
    });
    let h = within(
        10,
        "spawn",
        Hierarchy::builder("t").tier_with(team.tier()).spawn(),
    )
    .await
    .expect("spawn");
    let out = within(10, "call", h.call("echo/0", Echo("hi".into())))
        .await
        .expect("sent");
    assert!(
        matches!(&out, Outcome::Completed { reply: Some(Echo(s)), .. } if s == "hi via tls-b"),
        "{out:?}"
    );

    // a plain-TCP node cannot join a TLS node
    let plain = node("plain", None).await;
    let err = within(
        20,
        "plain refused",
        plain.connect(&b.listen_addr().to_string()),
    )
    .await
    .expect_err("no TLS, no session");
    assert!(
        matches!(
            err,
            ClusterError::Refused { .. } | ClusterError::Timeout { .. }
        ),
        "{err:?}"
    );

    // a node whose certificate another CA signed cannot join either
    let (other_ca, other_cert, other_key) = pki();
    let stranger = node(
        "stranger",
        Some(Tls::from_pem(&other_cert, &other_key, &other_ca, "echelon-cluster").expect("tls")),
    )
    .await;
    let err = within(
        20,
        "stranger refused",
        stranger.connect(&b.listen_addr().to_string()),
    )
    .await
    .expect_err("untrusted certificate");
    assert!(
        matches!(err, ClusterError::Tls(_) | ClusterError::Refused { .. }),
        "{err:?}"
    );
    assert_eq!(b.peers().await.len(), 1, "only tls-a is connected to tls-b");

    let _ = h.shutdown(std::time::Duration::from_secs(5)).await;
    for n in [a, b, plain, stranger] {
        n.stop().await;
    }
}

#[test]
fn unusable_pem_is_a_clear_error() {
    let (ca, cert, key) = pki();
    for (c, k, a, name) in [
        ("not pem", key.as_str(), ca.as_str(), "echelon-cluster"),
        (cert.as_str(), "not a key", ca.as_str(), "echelon-cluster"),
        (cert.as_str(), key.as_str(), "", "echelon-cluster"),
        (
            cert.as_str(),
            key.as_str(),
            ca.as_str(),
            "not a valid name!",
        ),
    ] {
        match Tls::from_pem(c, k, a, name) {
            Err(ClusterError::Tls(msg)) => assert!(!msg.is_empty()),
            other => panic!("expected a TLS error, got {other:?}"),
        }
    }
}
