//! The engine's state: the policies of every API (swapped atomically as updates arrive) and the
//! rate-limit counters. A request reads one snapshot and touches the counters; it never waits on
//! the controller or on I/O.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use crate::chain::{KeySet, RequestView, RouteChain, Verdict, evaluate};
use crate::distribution::ApiPolicies;
use crate::gcra::Limiter;

/// The policies of one API, in the form requests look them up.
#[derive(Debug, Default)]
pub struct ApiState {
    /// Route name -> chain.
    pub routes: HashMap<String, RouteChain>,
    /// Valid keys.
    pub keys: KeySet,
}

impl From<ApiPolicies> for ApiState {
    fn from(p: ApiPolicies) -> Self {
        Self {
            routes: p.routes.into_iter().collect(),
            keys: p.keys.into_iter().collect(),
        }
    }
}

/// API id -> its policies, for the APIs of one shard.
type Shard = HashMap<Arc<str>, Arc<ApiState>>;

/// Shards of the API map: an update copies only the shards it touches.
const SHARDS: usize = 64;

/// What the engine decides for a route it has no configuration for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A policy decision.
    Decided(Verdict),
    /// The route is unknown to this engine (not yet configured): fail closed.
    Unconfigured,
}

/// The policy engine: every API's policies (each shard swapped atomically) plus the counters.
#[derive(Debug)]
pub struct Engine {
    shards: Vec<ArcSwap<Shard>>,
    limiter: Limiter,
}

impl Default for Engine {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| ArcSwap::from_pointee(Shard::new()))
                .collect(),
            limiter: Limiter::default(),
        }
    }
}

fn shard_of(api: &str) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(api, &mut h);
    (std::hash::Hasher::finish(&h) as usize) % SHARDS
}

/// Unix time in nanoseconds.
pub fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

impl Engine {
    /// Applies a batch of per-API changes from the controller.
    pub fn apply(&self, changed: Vec<(String, ApiPolicies)>, removed: Vec<String>) {
        let mut touched: HashMap<usize, Shard> = HashMap::new();
        for (api, p) in changed {
            let i = shard_of(&api);
            let shard = touched
                .entry(i)
                .or_insert_with(|| (**self.shards[i].load()).clone());
            shard.insert(Arc::from(api), Arc::new(ApiState::from(p)));
        }
        for api in removed {
            let i = shard_of(&api);
            let shard = touched
                .entry(i)
                .or_insert_with(|| (**self.shards[i].load()).clone());
            shard.remove(api.as_str());
        }
        for (i, shard) in touched {
            self.shards[i].store(Arc::new(shard));
        }
    }

    /// Number of APIs configured.
    pub fn api_count(&self) -> usize {
        self.shards.iter().map(|s| s.load().len()).sum()
    }

    /// Decides a request to route `route` (its name is `<api id>|<METHOD>|<path>`).
    pub fn decide(&self, route: &str, req: RequestView<'_>, now_ns: u128) -> Outcome {
        let api = route.split('|').next().unwrap_or_default();
        let shard = self.shards[shard_of(api)].load();
        let Some(state) = shard.get(api) else {
            return Outcome::Unconfigured;
        };
        let Some(chain) = state.routes.get(route) else {
            return Outcome::Unconfigured;
        };
        Outcome::Decided(evaluate(
            chain,
            req,
            Some(&state.keys),
            &self.limiter,
            now_ns,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::build_chain;
    use crate::spec::{Limit, Policy, PolicyKind};

    #[test]
    fn decisions_follow_applied_updates() {
        let e = Engine::default();
        let req = RequestView {
            headers: &[],
            path: "/p",
        };
        assert_eq!(e.decide("a|GET|/p", req, 0), Outcome::Unconfigured);
        let limit = Policy {
            name: "rate-limit".into(),
            kind: PolicyKind::RateLimit(vec![Limit {
                requests: 1,
                window_secs: 60,
            }]),
        };
        let chain = RouteChain {
            api: "a".into(),
            operation: "GET /p".into(),
            entries: build_chain(&[limit], &[]),
        };
        let mut p = ApiPolicies::default();
        p.routes.insert("a|GET|/p".into(), chain);
        e.apply(vec![("a".into(), p)], vec![]);
        assert_eq!(e.api_count(), 1);
        assert!(matches!(
            e.decide("a|GET|/p", req, 0),
            Outcome::Decided(Verdict::Allow { .. })
        ));
        assert!(matches!(
            e.decide("a|GET|/p", req, 0),
            Outcome::Decided(Verdict::TooManyRequests(_))
        ));
        assert_eq!(e.decide("a|GET|/other", req, 0), Outcome::Unconfigured);
        e.apply(vec![], vec!["a".into()]);
        assert_eq!(e.decide("a|GET|/p", req, 0), Outcome::Unconfigured);
    }
}
