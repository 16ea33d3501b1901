//! One client's bounded send queue: the hub's fan-out pushes without ever waiting, the
//! client's connection task pops. A full queue is the caller's signal that the client
//! fell behind (closed with 4408).
//!
//! A `Mutex<VecDeque>` and a `Notify` instead of a tokio `mpsc` channel: a hub holds
//! thousands of mostly idle clients, and an mpsc channel costs about 800 bytes each
//! before its first message (cache-padded halves and a 32-slot block), this one about a
//! hundred. The queue's storage grows with what is waiting and shrinks back once drained.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

/// Storage kept after the queue drains; beyond it the buffer is given back.
const KEEP: usize = 16;

/// Why a push did not queue the item.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError {
    /// `capacity` items are waiting.
    Full,
    /// The receiving side is gone (the connection ended).
    Closed,
}

/// A bounded multi-producer, single-consumer queue.
#[derive(Debug)]
pub struct SendQueue<T> {
    state: Mutex<State<T>>,
    /// Woken on a push into an empty queue (a stored permit covers a push that comes
    /// before the consumer waits).
    ready: Notify,
    capacity: usize,
}

#[derive(Debug)]
struct State<T> {
    items: VecDeque<T>,
    closed: bool,
}

impl<T> SendQueue<T> {
    /// An empty queue holding at most `capacity` items (at least 1).
    pub fn new(capacity: usize) -> SendQueue<T> {
        SendQueue {
            state: Mutex::new(State {
                items: VecDeque::new(),
                closed: false,
            }),
            ready: Notify::new(),
            capacity: capacity.max(1),
        }
    }

    /// Queues `item` without waiting.
    pub fn push(&self, item: T) -> Result<(), PushError> {
        let mut state = self.lock();
        if state.closed {
            return Err(PushError::Closed);
        }
        if state.items.len() >= self.capacity {
            return Err(PushError::Full);
        }
        let was_empty = state.items.is_empty();
        state.items.push_back(item);
        drop(state);
        if was_empty {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// The next item, waiting for one.
    pub async fn pop(&self) -> T {
        loop {
            if let Some(item) = self.try_pop() {
                return item;
            }
            self.ready.notified().await;
        }
    }

    /// The next item if one is waiting.
    pub fn try_pop(&self) -> Option<T> {
        let mut state = self.lock();
        let item = state.items.pop_front();
        if state.items.is_empty() && state.items.capacity() > KEEP {
            state.items.shrink_to(KEEP);
        }
        item
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.lock().items.is_empty()
    }

    /// Refuses further pushes and drops what is waiting (the consumer is gone).
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.items = VecDeque::new();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        // Plain data: a panic elsewhere cannot leave it inconsistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn bounded_in_order_and_closable() {
        let q = SendQueue::new(2);
        assert_eq!(q.push(1), Ok(()));
        assert_eq!(q.push(2), Ok(()));
        assert_eq!(q.push(3), Err(PushError::Full));
        assert_eq!(q.try_pop(), Some(1));
        assert_eq!(q.push(3), Ok(()));
        assert_eq!(q.try_pop(), Some(2));
        assert_eq!(q.try_pop(), Some(3));
        assert!(q.is_empty());
        q.close();
        assert_eq!(q.push(4), Err(PushError::Closed));
    }

    #[test]
    fn storage_shrinks_once_drained() {
        let q = SendQueue::new(1000);
        for i in 0..1000 {
            assert_eq!(q.push(i), Ok(()));
        }
        while q.try_pop().is_some() {}
        assert!(q.lock().items.capacity() <= KEEP);
    }

    #[tokio::test]
    async fn a_waiting_consumer_is_woken_and_a_push_before_waiting_is_not_lost() {
        let q = Arc::new(SendQueue::new(4));
        assert_eq!(q.push(1), Ok(()));
        assert_eq!(q.pop().await, 1);
        let consumer = tokio::spawn({
            let q = q.clone();
            async move { q.pop().await }
        });
        tokio::task::yield_now().await;
        assert_eq!(q.push(2), Ok(()));
        let got = tokio::time::timeout(Duration::from_secs(5), consumer)
            .await
            .expect("woken")
            .expect("joined");
        assert_eq!(got, 2);
    }
}
