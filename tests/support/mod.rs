//! Helpers shared by the integration tests. Every wait is bounded and fails the test.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::future::Future;
use std::time::Duration;

/// Await `fut`, failing the test with `what` if it takes longer than `secs` seconds
/// (wall clock or virtual, whichever the runtime uses).
pub async fn within<T>(secs: u64, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {secs}s waiting for {what}"),
    }
}

/// Wait until `cond` holds, yielding between looks (for state no event announces, such
/// as a counter), failing the test with `what` after `secs` seconds.
pub async fn until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    within(secs, what, async {
        while !cond() {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

/// Wait until the hierarchy has no task in flight, failing the test after `secs`.
pub async fn idle<M: echelon::Message>(h: &echelon::Hierarchy<M>, secs: u64) -> echelon::Counters {
    match h.wait_idle(Duration::from_secs(secs)).await {
        Ok(c) => c,
        Err(c) => panic!("hierarchy not idle after {secs}s: {c:?}"),
    }
}
