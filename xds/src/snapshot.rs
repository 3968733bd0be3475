//! The set of Envoy resources served at one moment, and the translator that keeps it current.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;
use sha2::{Digest, Sha256};

use crate::clusters::{ClusterSettings, cluster};
use crate::listener::{ListenerSettings, listener};
use crate::model::ApiRoutes;
use crate::policy::{POLICY_CLUSTER, PolicyEngineSettings, policy_cluster};
use crate::routes::{ROUTE_CONFIG_NAME, RouteSettings, RouteTable};

/// Everything that shapes translation besides the APIs themselves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct XdsSettings {
    /// The HTTP listener.
    pub listener: ListenerSettings,
    /// Route translation knobs.
    pub routes: RouteSettings,
    /// Cluster translation knobs.
    pub clusters: ClusterSettings,
    /// Where the policy engine is.
    pub policy_engine: PolicyEngineSettings,
}

/// One named, versioned, encoded resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// Resource name as Envoy knows it.
    pub name: String,
    /// Version derived from the translation input, not from encoded bytes.
    pub version: String,
    /// The encoded resource.
    pub any: Any,
}

/// An immutable view of all resources, shared by every ADS stream.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The HTTP listener.
    pub listener: Resource,
    /// Clusters by name.
    pub clusters: BTreeMap<String, Resource>,
    /// The route configuration.
    pub routes: Resource,
    /// Clusters the route configuration forwards to: they must be in Envoy before the routes.
    pub route_clusters: BTreeSet<String>,
}

/// A change to the set of deployed APIs.
#[derive(Debug, Clone)]
pub enum Change {
    /// Add or replace an API.
    Upsert(ApiRoutes),
    /// Remove an API by id.
    Remove(String),
}

fn short_hash(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..12])
}

/// Version of a set of resources: changes when a name or a member's version does.
pub fn set_version<'a>(resources: impl Iterator<Item = &'a Resource>) -> String {
    let mut h = Sha256::new();
    for r in resources {
        h.update(r.name.as_bytes());
        h.update([0]);
        h.update(r.version.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..12])
}

/// Holds the route table and a cluster cache, and turns them into snapshots.
pub struct Translator {
    settings: XdsSettings,
    table: RouteTable,
    clusters: BTreeMap<String, Resource>,
}

impl Translator {
    /// A translator with no APIs.
    pub fn new(settings: XdsSettings) -> Self {
        let table = RouteTable::new(settings.routes.clone());
        Self {
            settings,
            table,
            clusters: BTreeMap::new(),
        }
    }

    /// Applies one change; returns false when it changes nothing.
    pub fn apply(&mut self, change: Change) -> bool {
        match change {
            Change::Upsert(api) => self.table.upsert(&api),
            Change::Remove(id) => self.table.remove(&id),
        }
    }

    /// Number of APIs currently translated.
    pub fn api_count(&self) -> usize {
        self.table.len()
    }

    /// Builds the snapshot of the current state.
    pub fn snapshot(&mut self) -> Snapshot {
        let upstreams = self.table.upstreams();
        self.clusters.retain(|name, _| upstreams.contains_key(name));
        for (name, u) in &upstreams {
            if !self.clusters.contains_key(name) {
                let version = short_hash(format!("{u:?}{:?}", self.settings.clusters).as_bytes());
                let any = pack_any(cluster(u, &self.settings.clusters));
                self.clusters.insert(
                    name.clone(),
                    Resource {
                        name: name.clone(),
                        version,
                        any,
                    },
                );
            }
        }
        let mut clusters = self.clusters.clone();
        clusters.insert(
            POLICY_CLUSTER.into(),
            Resource {
                name: POLICY_CLUSTER.into(),
                version: short_hash(
                    format!(
                        "{:?}{:?}",
                        self.settings.policy_engine, self.settings.clusters
                    )
                    .as_bytes(),
                ),
                any: pack_any(policy_cluster(
                    &self.settings.policy_engine,
                    &self.settings.clusters,
                )),
            },
        );
        let listener_res = Resource {
            name: crate::listener::LISTENER_NAME.into(),
            version: short_hash(
                format!(
                    "{:?}{:?}",
                    self.settings.listener, self.settings.policy_engine
                )
                .as_bytes(),
            ),
            any: pack_any(listener(
                &self.settings.listener,
                &self.settings.policy_engine,
            )),
        };
        let routes = Resource {
            name: ROUTE_CONFIG_NAME.into(),
            version: self.table.version(),
            any: pack_any(self.table.route_configuration()),
        };
        Snapshot {
            listener: listener_res,
            route_clusters: upstreams.keys().cloned().collect(),
            clusters,
            routes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Operation, PathPattern, Scheme, Upstream};

    fn api(id: &str, port: u16) -> ApiRoutes {
        ApiRoutes {
            id: id.into(),
            context: format!("/{id}"),
            upstream: Upstream {
                scheme: Scheme::Http,
                host: "127.0.0.1".into(),
                port,
                base_path: String::new(),
            },
            operations: vec![Operation {
                method: "GET".into(),
                path: PathPattern::parse("/x").unwrap(),
                guarded: false,
                rate_limited: false,
            }],
        }
    }

    #[test]
    fn clusters_follow_apis_and_are_shared() {
        let mut t = Translator::new(XdsSettings::default());
        t.apply(Change::Upsert(api("a", 1000)));
        t.apply(Change::Upsert(api("b", 1000)));
        t.apply(Change::Upsert(api("c", 2000)));
        let s = t.snapshot();
        let names: Vec<&String> = s.clusters.keys().filter(|n| *n != POLICY_CLUSTER).collect();
        assert_eq!(names.len(), 2, "two upstreams, two clusters: {names:?}");
        assert!(s.clusters.contains_key(POLICY_CLUSTER));
        assert!(
            names[0].starts_with("upstream_http_127_0_0_1_1000_"),
            "{names:?}"
        );
        assert!(
            names[1].starts_with("upstream_http_127_0_0_1_2000_"),
            "{names:?}"
        );
        assert_eq!(s.route_clusters.len(), 2);
        t.apply(Change::Remove("c".into()));
        let s2 = t.snapshot();
        assert_eq!(s2.clusters.len(), 2, "one upstream and the policy engine");
        assert_ne!(s.routes.version, s2.routes.version);
        assert_eq!(s.listener.version, s2.listener.version);
    }

    #[test]
    fn identical_state_gives_identical_versions() {
        let mut a = Translator::new(XdsSettings::default());
        let mut b = Translator::new(XdsSettings::default());
        a.apply(Change::Upsert(api("x", 1)));
        a.apply(Change::Upsert(api("y", 2)));
        b.apply(Change::Upsert(api("y", 2)));
        b.apply(Change::Upsert(api("x", 1)));
        let (sa, sb) = (a.snapshot(), b.snapshot());
        assert_eq!(sa.routes.version, sb.routes.version);
        assert_eq!(
            set_version(sa.clusters.values()),
            set_version(sb.clusters.values())
        );
    }
}
