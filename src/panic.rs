//! Catching panics in user handlers, and recording them without the default hook.
//!
//! A panicking handler is a crash of that agent, not of the process: the agent's actor
//! catches the unwind, reports the crash to its supervisor and keeps its mailbox.
//! Rust's default panic hook prints a message and a backtrace note to stderr for every
//! panic, which costs more than the restart itself and floods a simulation with noise.
//! [`install_quiet_hook`] installs (once per process) a hook that stays silent for
//! panics raised inside an echelon handler — the message is still recorded in the
//! task's audit trail, the failure reason and a `tracing` event — and delegates every
//! other panic to the previously installed hook.

use std::any::Any;
use std::cell::Cell;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Once;
use std::task::{Context, Poll};

thread_local! {
    static IN_HANDLER: Cell<bool> = const { Cell::new(false) };
}

static INSTALL: Once = Once::new();

/// Install the quiet panic hook, once per process. Panics outside echelon handlers
/// still reach the previous hook unchanged.
pub(crate) fn install_quiet_hook() {
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_HANDLER.with(Cell::get) {
                previous(info);
            }
        }));
    });
}

/// Turn a panic payload into a message.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        format!("panicked: {s}")
    } else if let Some(s) = payload.downcast_ref::<String>() {
        format!("panicked: {s}")
    } else {
        "panicked with a non-string payload".to_string()
    }
}

/// Wraps a future so that a panic in any poll becomes `Err(message)`.
pub(crate) struct CatchUnwind<F> {
    inner: F,
}

impl<F> CatchUnwind<F> {
    pub(crate) fn new(inner: F) -> Self {
        CatchUnwind { inner }
    }
}

struct HandlerFlag(bool);

impl HandlerFlag {
    #[inline]
    fn set() -> Self {
        HandlerFlag(IN_HANDLER.with(|f| f.replace(true)))
    }
}

impl Drop for HandlerFlag {
    #[inline]
    fn drop(&mut self) {
        let prev = self.0;
        IN_HANDLER.with(|f| f.set(prev));
    }
}

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = Result<F::Output, String>;

    // inlined: around an agent's handler it is on every message's path
    #[inline(always)]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.inner;
        let _flag = HandlerFlag::set();
        match catch_unwind(AssertUnwindSafe(|| Pin::new(inner).poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(payload) => Poll::Ready(Err(panic_message(payload.as_ref()))),
        }
    }
}

/// Run a synchronous closure, catching a panic as `Err(message)`.
pub(crate) fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let _flag = HandlerFlag::set();
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| panic_message(p.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_future_becomes_an_error_with_its_message() {
        install_quiet_hook();
        let fut = Box::pin(async {
            tokio::task::yield_now().await;
            panic!("boom {}", 7);
        });
        let r: Result<(), String> = CatchUnwind::new(fut).await;
        assert_eq!(r, Err("panicked: boom 7".to_string()));
    }

    #[test]
    fn catch_reports_static_str_panics() {
        install_quiet_hook();
        let r = catch(|| -> u8 { panic!("static") });
        assert_eq!(r, Err("panicked: static".to_string()));
        assert_eq!(catch(|| 3), Ok(3));
    }
}
