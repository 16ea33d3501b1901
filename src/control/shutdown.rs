//! The one way to wait for shutdown. The sidecar holds the [`Trigger`]; every listener,
//! worker and control-plane task holds a [`Shutdown`] and either checks it or awaits
//! [`Shutdown::wait`]. Firing is sticky: a task that starts waiting after the trigger fired
//! stops at once, and a dropped trigger counts as fired (nothing can stop the task later).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::sync::watch;

/// Fires shutdown for every [`Shutdown`] made from it.
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

/// A handle that learns when shutdown began.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

/// Waits for SIGTERM or Ctrl-C (SIGINT): how `meshlet run` begins its shutdown and how the
/// live CLI views (`stat` on a terminal, `tap`) end.
pub async fn signalled() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// A new trigger and its first handle.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    /// Starts shutdown (idempotent).
    pub fn fire(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// Whether shutdown has begun.
    pub fn is_started(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once shutdown has begun (at once if it already has). Owns what it needs, so
    /// it can be pinned in a loop or moved into a task.
    pub fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.0.clone();
        async move {
            // An error means the trigger is gone: nothing will ever fire it, so stop too.
            let _ = rx.wait_for(|started| *started).await;
        }
    }
}

impl Shutdown {
    /// Resolves once shutdown has begun, borrowing the handle: the cheap form for a loop
    /// that selects on it with every message.
    pub async fn started(&mut self) {
        // An error means the trigger is gone: nothing will ever fire it, so stop too.
        let _ = self.0.wait_for(|started| *started).await;
    }

    /// Sleeps `pause`; `false` when shutdown began first.
    pub async fn sleep(&self, pause: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(pause) => true,
            () = self.wait() => false,
        }
    }
}

/// [`Shutdown::wait`] for a task that polls it with every wake-up (a connection between
/// its requests): once its wait is registered, a poll with the same waker only reads the
/// channel's version, one atomic load, instead of polling the wait again (a lock in the
/// channel's notifier each time).
pub struct Stopping {
    changes: watch::Receiver<bool>,
    wait: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// The waker the wait was last polled with: the one shutdown wakes.
    registered: Option<Waker>,
}

impl Future for Stopping {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let same_waker = this
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()));
        // A dropped trigger counts as a change: the wait then ends at once.
        if same_waker && !this.changes.has_changed().unwrap_or(true) {
            return Poll::Pending;
        }
        let polled = this.wait.as_mut().poll(cx);
        if polled.is_pending() && !same_waker {
            this.registered = Some(cx.waker().clone());
        }
        polled
    }
}

impl Shutdown {
    /// [`Shutdown::wait`] in the form that is cheap to poll often ([`Stopping`]).
    pub fn stopping(&self) -> Stopping {
        Stopping {
            changes: self.0.clone(),
            wait: Box::pin(self.wait()),
            registered: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_until_fired_and_is_sticky() {
        let (trigger, shutdown) = channel();
        let waiting = tokio::spawn(shutdown.wait());
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        assert!(!shutdown.is_started());
        trigger.fire();
        waiting.await.unwrap();
        assert!(shutdown.is_started());
        shutdown.clone().wait().await;
    }

    #[tokio::test]
    async fn stopping_polled_often_still_ends_when_fired() {
        let (trigger, shutdown) = channel();
        let mut stopping = Box::pin(shutdown.stopping());
        // Polled repeatedly with the same waker before the trigger fires: pending each time.
        for _ in 0..3 {
            let polled = std::future::poll_fn(|cx| Poll::Ready(stopping.as_mut().poll(cx))).await;
            assert!(polled.is_pending());
        }
        let waiting = tokio::spawn(stopping);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        trigger.fire();
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("woken by the trigger")
            .unwrap();
        // Made after firing: ready at once.
        tokio::time::timeout(Duration::from_secs(1), shutdown.stopping())
            .await
            .expect("sticky");
        drop(trigger);
    }

    #[tokio::test]
    async fn a_dropped_trigger_counts_as_fired() {
        let (trigger, shutdown) = channel();
        drop(trigger);
        tokio::time::timeout(std::time::Duration::from_secs(1), shutdown.wait())
            .await
            .expect("a handle without a trigger stops at once");
    }
}
