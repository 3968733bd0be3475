//! The queue of APIs to sync: each handle at most once, never two syncs of one API at a time
//! (a change that arrives during a sync queues it again once that sync ends), plus a flag for
//! revisions of deleted APIs waiting to be undeployed.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

#[derive(Default)]
struct State {
    order: VecDeque<String>,
    queued: HashSet<String>,
    running: HashSet<String>,
    again: HashSet<String>,
    undeploys: bool,
}

/// Handle of the sync queue, shared by the registry (which pushes) and the workers.
#[derive(Clone, Default)]
pub struct SyncQueue {
    state: Arc<Mutex<State>>,
    wake: Arc<Notify>,
    undeploy_wake: Arc<Notify>,
}

impl SyncQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent through every operation, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues API `handle` for a sync.
    pub fn push(&self, handle: &str) {
        {
            let mut st = self.lock();
            if st.running.contains(handle) {
                st.again.insert(handle.to_string());
            } else if st.queued.insert(handle.to_string()) {
                st.order.push_back(handle.to_string());
            }
        }
        self.wake.notify_one();
    }

    /// Says that revisions of deleted APIs wait to be undeployed.
    pub fn push_undeploys(&self) {
        self.lock().undeploys = true;
        self.undeploy_wake.notify_one();
    }

    /// Takes the undeploy flag.
    pub(super) fn take_undeploys(&self) -> bool {
        std::mem::take(&mut self.lock().undeploys)
    }

    /// The next API to sync, now marked running.
    pub(super) fn pop(&self) -> Option<String> {
        let mut st = self.lock();
        let handle = st.order.pop_front()?;
        st.queued.remove(&handle);
        st.running.insert(handle.clone());
        Some(handle)
    }

    /// Marks the sync of `handle` finished; queues it again if it changed meanwhile.
    pub(super) fn done(&self, handle: &str) {
        let again = {
            let mut st = self.lock();
            st.running.remove(handle);
            st.again.remove(handle)
        };
        if again {
            self.push(handle);
        }
    }

    /// Resolves once an API was pushed since the last call (or is waiting).
    pub(super) async fn pushed(&self) {
        self.wake.notified().await;
    }

    /// Resolves once undeployments were pushed since the last call (or are waiting).
    pub(super) async fn pushed_undeploys(&self) {
        self.undeploy_wake.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_api_once_and_never_twice_at_a_time() {
        let q = SyncQueue::new();
        q.push("a");
        q.push("b");
        q.push("a");
        assert_eq!(q.pop().as_deref(), Some("a"));
        // A change during a's sync waits for it to end.
        q.push("a");
        assert_eq!(q.pop().as_deref(), Some("b"));
        assert_eq!(q.pop(), None);
        q.done("a");
        assert_eq!(q.pop().as_deref(), Some("a"));
        q.done("a");
        q.done("b");
        assert_eq!(q.pop(), None);
        assert!(!q.take_undeploys());
        q.push_undeploys();
        assert!(q.take_undeploys());
        assert!(!q.take_undeploys());
    }
}
