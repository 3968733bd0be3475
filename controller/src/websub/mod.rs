//! WebSub APIs: their definition ([`model`], [`validate`]) and the W3C WebSub hub that serves
//! them behind Envoy ([`hub`]): subscriptions verified asynchronously, events stored durably
//! ([`store`]) and delivered to each subscriber in order with retries ([`delivery`]). Policies
//! attached per event type and channel run in-process, with the policy engine's code, on the
//! [`Directory`] snapshot the registry keeps current.

pub mod delivery;
pub mod hub;
pub mod model;
pub mod store;
pub mod validate;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use arc_swap::ArcSwap;
use gateway_policy_engine::chain::{RequestView, Verdict};
use gateway_policy_engine::distribution::ApiPolicies;
use gateway_policy_engine::engine::{Engine, Outcome, now_ns};
use tokio::sync::watch;
use tracing::error;

pub use store::HubStore;
pub use validate::{ANY_CHANNEL, Event, WEBSUB_API, WebSubDef, validate_websub_api};

/// What the hub knows of one deployed WebSub API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubApi {
    /// Internal id (subscriptions and events are stored under it).
    pub uuid: String,
    /// `metadata.name`.
    pub name: String,
    /// Resolved context, as subscribers reach it through Envoy.
    pub context: String,
    /// Declared channels.
    pub channels: BTreeSet<String>,
}

#[derive(Default)]
struct Snapshot {
    by_name: HashMap<String, Arc<HubApi>>,
    by_uuid: HashMap<String, Arc<HubApi>>,
}

/// Name of the policy route of `event` on `channel` of API `api`.
pub fn policy_route(api: &str, event: Event, channel: &str) -> String {
    format!("{api}|{}|{channel}", event.tag())
}

/// The deployed WebSub APIs and their policies, swapped atomically by the registry and read by
/// the hub on every request; plus the hub's store, so deleting an API forgets its subscribers.
pub struct Directory {
    apis: ArcSwap<Snapshot>,
    engine: Engine,
    store: Arc<HubStore>,
    changes: watch::Sender<u64>,
}

impl Directory {
    /// An empty directory over `store`.
    pub fn new(store: Arc<HubStore>) -> Self {
        Self {
            apis: ArcSwap::from_pointee(Snapshot::default()),
            engine: Engine::default(),
            store,
            changes: watch::channel(0).0,
        }
    }

    /// Ticks on every change of the deployed APIs (deliveries of an undeployed API wait on it).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The hub's store.
    pub fn store(&self) -> &Arc<HubStore> {
        &self.store
    }

    fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        let current = self.apis.load();
        let mut next = Snapshot {
            by_name: current.by_name.clone(),
            by_uuid: current.by_uuid.clone(),
        };
        f(&mut next);
        self.apis.store(Arc::new(next));
        self.changes.send_modify(|n| *n += 1);
    }

    /// Serves (or updates) a deployed API with its policies.
    pub fn set(&self, api: HubApi, policies: ApiPolicies) {
        self.engine
            .apply(vec![(api.name.clone(), policies)], vec![]);
        let api = Arc::new(api);
        self.update(|s| {
            if let Some(old) = s.by_name.insert(api.name.clone(), api.clone()) {
                s.by_uuid.remove(&old.uuid);
            }
            s.by_uuid.insert(api.uuid.clone(), api);
        });
    }

    /// Stops serving API `name` (undeployed); its subscriptions wait for a redeploy.
    pub fn remove(&self, name: &str) {
        self.update(|s| {
            if let Some(old) = s.by_name.remove(name) {
                s.by_uuid.remove(&old.uuid);
            }
        });
        self.engine.apply(vec![], vec![name.to_string()]);
    }

    /// Forgets the subscriptions and events of deleted API `uuid`.
    pub fn purge(&self, uuid: &str) {
        if let Err(e) = self.store.purge_api(uuid) {
            error!(api_uuid = uuid, error = %e, "cannot forget the subscriptions of a deleted WebSub API");
        }
    }

    /// A deployed API by name.
    pub fn by_name(&self, name: &str) -> Option<Arc<HubApi>> {
        self.apis.load().by_name.get(name).cloned()
    }

    /// A deployed API by internal id.
    pub fn by_uuid(&self, uuid: &str) -> Option<Arc<HubApi>> {
        self.apis.load().by_uuid.get(uuid).cloned()
    }

    /// Runs the policies of `event` on `channel` of API `api` for a request; no chain allows.
    pub fn decide(&self, api: &str, event: Event, channel: &str, req: RequestView<'_>) -> Verdict {
        match self
            .engine
            .decide(&policy_route(api, event, channel), req, now_ns())
        {
            Outcome::Decided(v) => v,
            Outcome::Unconfigured => Verdict::Allow {
                remove_header: None,
                new_path: None,
                rate: None,
            },
        }
    }
}
