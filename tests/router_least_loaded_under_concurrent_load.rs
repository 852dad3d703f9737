//! A least-loaded router under concurrent load: worker loads change while it picks, and it must neither panic nor lose requests.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use echelon::prelude::*;

#[derive(Clone, Debug)]
struct M(u64);

struct W;
impl Agent for W {
    type Msg = M;
    async fn handle(&mut self, _ctx: &mut Ctx<M>, m: M) -> Result<Verdict<M>, AgentError> {
        if m.0 % 3 == 0 {
            tokio::task::yield_now().await;
        }
        Ok(Verdict::Reply(m))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn least_loaded_router_survives_concurrent_load_changes() {
    let r = Arc::new(
        Router::builder("r")
            .workers("w", 64, |_| W)
            .route(Route::LeastLoaded)
            .spawn()
            .await
            .unwrap(),
    );
    let mut tasks = Vec::new();
    for c in 0..64u64 {
        let r = r.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..3000u64 {
                let _ = r.entry().send(M(c * 1_000_000 + n));
                if n % 16 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let _ = r.hierarchy().wait_idle(Duration::from_secs(60)).await;
    let router = r.entry().counters();
    eprintln!("router counters: {router:?}");
    assert_eq!(
        router.lost_in_mailbox, 0,
        "the router's actor died (sort panic)"
    );
    assert_eq!(router.restarts, 0);
}
