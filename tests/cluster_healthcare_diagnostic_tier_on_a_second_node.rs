//! Distribution, the flagship: the healthcare hierarchy with its diagnostic tier on a
//! second node decides exactly what the all-local hierarchy decides, and when that node
//! is stopped mid-run the accounting still balances (lost = 0), the remaining findings
//! going to the local fallback.
#![cfg(all(feature = "cluster", feature = "sim"))]

mod support;

use std::path::Path;
use std::time::Duration;

use echelon::cluster::{Hosted, Node, NodeConfig};
use echelon::prelude::*;
use echelon::sim::cluster::{hosted, run_healthcare};
use echelon::sim::healthcare::{Diagnostic, Ward};
use echelon::sim::scenario::{Scenario, Span};
use support::within;
use tokio::sync::mpsc;

fn scenario(hours: u64) -> Scenario {
    let mut s = Scenario::load(Path::new("scenarios/healthcare.toml")).expect("scenario");
    s.duration = Span(Duration::from_secs(hours * 3600));
    s
}

async fn node(name: &str, hosted: Hosted) -> Node {
    let cfg = NodeConfig::new(name, "127.0.0.1:0".parse().expect("addr"), "ward-cookie");
    within(10, "node start", Node::start(cfg, hosted))
        .await
        .expect("node starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_diagnostic_tier_decides_what_the_local_one_decides() {
    let a = node("ward-a", hosted()).await;
    let b = node("ward-b", hosted()).await;
    within(10, "connect", a.connect(&b.listen_addr().to_string()))
        .await
        .expect("connect");
    let s = scenario(12);

    let local = within(120, "local run", run_healthcare(&a, &s, &[], false))
        .await
        .expect("local");
    let place = vec![("diagnostic".to_string(), vec!["ward-b".to_string()])];
    let remote = within(
        120,
        "distributed run",
        run_healthcare(&a, &s, &place, false),
    )
    .await
    .expect("distributed");

    assert!(local.readings > 100_000, "{local:?}");
    assert_eq!(local.readings, remote.readings);
    assert!(local.alerts > 0, "the scenario raises alerts: {local:?}");
    assert_eq!(
        (
            remote.alerts,
            remote.true_alerts,
            remote.false_alarms,
            remote.never_alerted
        ),
        (
            local.alerts,
            local.true_alerts,
            local.false_alarms,
            local.never_alerted
        ),
        "same decisions\nlocal  {local:?}\nremote {remote:?}"
    );
    assert_eq!(local.lost, 0, "{local:?}");
    assert_eq!(remote.lost, 0, "{remote:?}");
    assert_eq!(remote.failed, 0, "{remote:?}");
    assert!(
        remote.remote_tasks > 0,
        "findings crossed to ward-b: {remote:?}"
    );
    assert_eq!(remote.local_tasks, 0, "{remote:?}");
    assert_eq!(
        b.stats().tasks_hosted,
        remote.remote_tasks,
        "{:?}",
        b.stats()
    );
    assert_eq!(b.stats().rejected, 0);
    a.stop().await;
    b.stop().await;
}

/// The healthcare diagnostic agent, hosted, that reports how many findings it handled
/// so the test can stop its node mid-run.
struct Counting {
    inner: Diagnostic,
    handled: mpsc::UnboundedSender<()>,
}

impl Agent for Counting {
    type Msg = Ward;
    async fn handle(
        &mut self,
        ctx: &mut Ctx<Ward>,
        msg: Ward,
    ) -> Result<Verdict<Ward>, AgentError> {
        let v = self.inner.handle(ctx, msg).await;
        let _ = self.handled.send(());
        v
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_diagnostic_node_mid_run_loses_nothing() {
    let (tx, mut handled) = mpsc::unbounded_channel();
    let counting = Hosted::new().team("healthcare.diagnostic", move |cfg: &[u8]| {
        let d = f64::from_le_bytes(cfg.try_into().map_err(|_| "decide_at".to_string())?);
        let tx = tx.clone();
        Ok(move |_| Counting {
            inner: Diagnostic::new(d, Duration::ZERO),
            handled: tx.clone(),
        })
    });
    let a = node("ward-c", hosted()).await;
    let b = node("ward-d", counting).await;
    within(10, "connect", a.connect(&b.listen_addr().to_string()))
        .await
        .expect("connect");

    let s = scenario(12);
    let run = {
        let a = a.clone();
        tokio::spawn(async move {
            let place = vec![("diagnostic".to_string(), vec!["ward-d".to_string()])];
            run_healthcare(&a, &s, &place, true).await
        })
    };
    // stop ward-d once it has handled 50 findings: the run is in full flow
    for _ in 0..50 {
        within(60, "a finding handled on ward-d", handled.recv())
            .await
            .expect("handled");
    }
    within(10, "stop ward-d", b.stop()).await;
    let r = within(120, "run", run).await.expect("joined").expect("run");

    assert_eq!(r.lost, 0, "nothing lost: {r:?}");
    assert_eq!(r.submitted, r.completed + r.escalated + r.failed, "{r:?}");
    // ward-d handled at least 50 findings, but the answers still on the wire when it
    // stopped never arrived: those tasks crashed their proxies and were redelivered
    assert!(r.remote_tasks > 0, "{r:?}");
    assert!(r.node_failures >= 1, "{r:?}");
    assert!(r.local_tasks > 0, "the rest ran on the fallback: {r:?}");
    assert!(r.alerts > 0, "{r:?}");
    a.stop().await;
}
