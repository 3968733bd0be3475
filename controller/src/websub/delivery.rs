//! Delivery: one task per subscription sends what it is owed, oldest first, one event at a time
//! (so a subscriber sees events in publish order), signing each with the subscription's secret.
//! A failed attempt is retried after an exponential backoff up to a cap; after the last attempt
//! the event is dropped for that subscriber. Deliveries of an undeployed API wait for its
//! redeployment; an expired lease ends the subscription.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gateway_policy_engine::chain::{RequestView, Verdict};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::{Notify, Semaphore};
use tracing::{debug, error, info, warn};

use super::store::{HubStore, Pending, Subscription};
use super::{Directory, Event, HubApi};
use crate::config::WebSubConfig;
use crate::metrics::{Metrics, inc};
use crate::store::StoreError;

/// How soon a subscription tries again after its store failed.
const STORE_RETRY: Duration = Duration::from_secs(1);
/// Longest idle wait before a subscription checks its lease again.
const IDLE_CHECK: Duration = Duration::from_secs(3600);

/// The delivery tasks.
pub struct Deliverer {
    directory: Arc<Directory>,
    http: reqwest::Client,
    timeout: Duration,
    initial_delay: Duration,
    max_delay: Duration,
    max_attempts: i64,
    workers: Mutex<HashMap<i64, Arc<Notify>>>,
    in_flight: Semaphore,
    metrics: Arc<Metrics>,
}

/// Deliveries in flight at once, over all subscriptions.
const CONCURRENT_DELIVERIES: usize = 256;

/// `X-Hub-Signature` value of `body` under `secret` (`None` only if HMAC refused the key, which
/// it does for no length).
pub fn signature(secret: &str, body: &[u8]) -> Option<String> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).ok()?;
    mac.update(body);
    Some(format!(
        "sha256={}",
        hex::encode(mac.finalize().into_bytes())
    ))
}

/// `Link` header of a delivery: the hub and the topic as the subscriber reached them.
pub fn link(base_url: &str, context: &str, channel: &str) -> String {
    let topic: String = url::form_urlencoded::byte_serialize(channel.as_bytes()).collect();
    let ctx = context.trim_end_matches('/');
    format!(
        "<{base_url}{ctx}/hub>; rel=\"hub\", <{base_url}{ctx}/webhook-receiver?topic={topic}>; rel=\"self\""
    )
}

/// A callback URL for logs: without its query string, which may carry credentials.
pub fn callback_label(callback: &str) -> &str {
    callback.split(['?', '#']).next().unwrap_or(callback)
}

/// Wait before attempt `failed + 1` after `failed` failures.
fn backoff(initial: Duration, max: Duration, failed: i64) -> Duration {
    let doublings = failed.saturating_sub(1).clamp(0, 30) as u32;
    initial.saturating_mul(1u32 << doublings).min(max)
}

async fn db<T: Send + 'static>(
    store: &Arc<HubStore>,
    f: impl FnOnce(&HubStore) -> Result<T, StoreError> + Send + 'static,
) -> Option<T> {
    let s = store.clone();
    match tokio::task::spawn_blocking(move || f(&s)).await {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) => {
            error!(error = %e, "WebSub store failed");
            None
        }
        Err(_) => None,
    }
}

/// A delivery task's entry in the worker map, removed when the task ends, even by a panic, so
/// that [`Deliverer::ensure`] starts a new one.
struct Registration {
    deliverer: Arc<Deliverer>,
    id: i64,
    notify: Arc<Notify>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut workers = self.deliverer.workers();
        if workers
            .get(&self.id)
            .is_some_and(|n| Arc::ptr_eq(n, &self.notify))
        {
            workers.remove(&self.id);
        }
    }
}

enum Step {
    /// Look again at once.
    Next,
    /// Wait for new events (or this long).
    Idle(Duration),
    /// The API is not deployed: wait until the deployed APIs change.
    Paused,
    /// The subscription is gone.
    Done,
}

impl Deliverer {
    /// A deliverer for the APIs of `directory`.
    pub fn new(
        directory: Arc<Directory>,
        http: reqwest::Client,
        c: &WebSubConfig,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            directory,
            metrics,
            http,
            timeout: Duration::from_millis(c.delivery_timeout_ms),
            initial_delay: Duration::from_millis(c.delivery_initial_delay_ms),
            max_delay: Duration::from_millis(c.delivery_max_delay_ms),
            max_attempts: i64::from(c.delivery_max_attempts),
            workers: Mutex::new(HashMap::new()),
            in_flight: Semaphore::new(CONCURRENT_DELIVERIES),
        })
    }

    fn workers(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Arc<Notify>>> {
        self.workers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes sure subscription `id` has a delivery task, and wakes it.
    pub fn ensure(self: &Arc<Self>, id: i64) {
        let mut workers = self.workers();
        if let Some(n) = workers.get(&id) {
            n.notify_one();
            return;
        }
        let notify = Arc::new(Notify::new());
        workers.insert(id, notify.clone());
        tokio::spawn(self.clone().run(id, notify));
    }

    /// Tells subscription `id` that something changed (new event, unsubscribed).
    pub fn wake(&self, id: i64) {
        if let Some(n) = self.workers().get(&id) {
            n.notify_one();
        }
    }

    async fn run(self: Arc<Self>, id: i64, notify: Arc<Notify>) {
        let registration = Registration {
            deliverer: self.clone(),
            id,
            notify: notify.clone(),
        };
        let mut changes = self.directory.changes();
        loop {
            // Seen before the step: a redeploy during it still wakes a pause.
            changes.borrow_and_update();
            match self.step(id).await {
                Step::Next => {}
                Step::Idle(d) => {
                    let _ = tokio::time::timeout(d, notify.notified()).await;
                }
                Step::Paused => {
                    tokio::select! {
                        _ = notify.notified() => {}
                        r = changes.changed() => if r.is_err() { break },
                    }
                }
                Step::Done => break,
            }
        }
        drop(registration);
        // Subscribed again while this task was ending: hand over to a new task.
        let store = self.directory.store().clone();
        if db(&store, move |s| s.subscription(id))
            .await
            .flatten()
            .is_some()
        {
            self.ensure(id);
        }
    }

    async fn step(&self, id: i64) -> Step {
        let store = self.directory.store().clone();
        let Some(sub) = db(&store, move |s| s.subscription(id)).await else {
            return Step::Idle(STORE_RETRY);
        };
        let Some(sub) = sub else {
            return Step::Done;
        };
        let now = chrono::Utc::now().timestamp();
        if sub.expires_at <= now {
            // A renewal may land meanwhile: only an expired row is removed.
            return match db(&store, move |s| s.remove_expired(id, now)).await {
                Some(true) => {
                    info!(channel = sub.channel, callback = %callback_label(&sub.callback), "WebSub lease expired");
                    Step::Done
                }
                _ => Step::Next,
            };
        }
        let Some(api) = self.directory.by_uuid(&sub.api_uuid) else {
            return Step::Paused;
        };
        if !api.channels.contains(&sub.channel) {
            info!(channel = sub.channel, callback = %callback_label(&sub.callback), "WebSub channel removed from its API; subscription ended");
            db(&store, move |s| s.remove_subscription(id)).await;
            return Step::Done;
        }
        let Some(next) = db(&store, move |s| s.next_delivery(id)).await else {
            return Step::Idle(STORE_RETRY);
        };
        let Some(p) = next else {
            let lease_left = Duration::from_secs((sub.expires_at - now).max(1) as u64);
            return Step::Idle(lease_left.min(IDLE_CHECK));
        };
        let seq = p.seq;
        let headers = [("content-type".to_string(), p.content_type.clone())];
        let verdict = self.directory.decide(
            &api.name,
            Event::Deliver,
            &sub.channel,
            RequestView {
                headers: &headers,
                path: &api.context,
            },
        );
        if !matches!(verdict, Verdict::Allow { .. }) {
            debug!(
                channel = sub.channel,
                callback = %callback_label(&sub.callback),
                seq,
                "delivery policy dropped an event"
            );
            db(&store, move |s| s.finish_delivery(id, seq)).await;
            return Step::Next;
        }
        match self.send(&sub, &api, &p).await {
            Ok(()) => {
                inc(&self.metrics.websub_deliveries);
                db(&store, move |s| s.finish_delivery(id, seq)).await;
                Step::Next
            }
            Err(why) => {
                inc(&self.metrics.websub_delivery_failures);
                let failed = p.attempts + 1;
                if failed >= self.max_attempts {
                    inc(&self.metrics.websub_deliveries_dropped);
                    warn!(
                        channel = sub.channel,
                        callback = %callback_label(&sub.callback),
                        seq,
                        attempts = failed,
                        error = why,
                        "WebSub delivery given up"
                    );
                    db(&store, move |s| s.finish_delivery(id, seq)).await;
                    return Step::Next;
                }
                debug!(
                    channel = sub.channel,
                    callback = %callback_label(&sub.callback),
                    seq,
                    attempts = failed,
                    error = why,
                    "WebSub delivery failed; retrying"
                );
                db(&store, move |s| s.failed_attempt(id, seq)).await;
                tokio::time::sleep(backoff(self.initial_delay, self.max_delay, failed)).await;
                Step::Next
            }
        }
    }

    async fn send(&self, sub: &Subscription, api: &HubApi, p: &Pending) -> Result<(), String> {
        let _slot = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| "the hub is shutting down")?;
        let mut req = self
            .http
            .post(&sub.callback)
            .timeout(self.timeout)
            .header("content-type", &p.content_type)
            .header("link", link(&sub.base_url, &api.context, &sub.channel))
            .body(p.body.clone());
        if let Some(secret) = &sub.secret {
            let sig = signature(secret, &p.body).ok_or("cannot sign with this secret")?;
            req = req.header("x-hub-signature", sig);
        }
        match req.send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("callback answered {}", r.status().as_u16())),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_hmac() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?").unwrap(),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn link_names_hub_and_topic() {
        assert_eq!(
            link("http://gw:8080", "/events/v1", "a b"),
            "<http://gw:8080/events/v1/hub>; rel=\"hub\", <http://gw:8080/events/v1/webhook-receiver?topic=a+b>; rel=\"self\""
        );
    }

    #[test]
    fn callbacks_are_logged_without_their_query() {
        assert_eq!(
            callback_label("https://s.example/cb?token=x"),
            "https://s.example/cb"
        );
        assert_eq!(callback_label("http://s/cb"), "http://s/cb");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let ms = Duration::from_millis;
        let b = |n| backoff(ms(100), ms(1000), n);
        assert_eq!(
            (b(1), b(2), b(3), b(4), b(5), b(60)),
            (ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000))
        );
    }
}
