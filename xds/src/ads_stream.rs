//! The per-connection state of one ADS stream: subscriptions, nonces, ACK/NACK bookkeeping and
//! the ordering rules that keep Envoy consistent while resources change.
//!
//! Ordering: a route configuration is only sent once Envoy has acknowledged every cluster it
//! forwards to, and a cluster is only withdrawn once Envoy has acknowledged routes that no longer
//! use it. Each type is sent at most once at a time: while a response awaits its ACK, newer
//! snapshots wait, so bursts of changes coalesce into one push.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};

use crate::routes::ROUTE_CONFIG_NAME;
use crate::snapshot::{Resource, Snapshot, set_version};

/// Type URL of clusters.
pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// Type URL of listeners.
pub const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// Type URL of route configurations.
pub const ROUTE_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

/// The resource types this server serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// CDS.
    Cluster,
    /// LDS.
    Listener,
    /// RDS.
    Route,
}

impl Kind {
    fn from_url(url: &str) -> Option<Self> {
        match url {
            CLUSTER_TYPE => Some(Kind::Cluster),
            LISTENER_TYPE => Some(Kind::Listener),
            ROUTE_TYPE => Some(Kind::Route),
            _ => None,
        }
    }

    /// The type URL of this kind.
    pub fn url(self) -> &'static str {
        match self {
            Kind::Cluster => CLUSTER_TYPE,
            Kind::Listener => LISTENER_TYPE,
            Kind::Route => ROUTE_TYPE,
        }
    }
}

/// What a request from Envoy meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A first request (or a request without nonce) for a type.
    Subscribed(Kind),
    /// Envoy accepted the response with this version.
    Ack(Kind, String),
    /// Envoy rejected the response with this version.
    Nack(Kind, String, String),
    /// A request answering an older response: ignored.
    Stale(Kind),
    /// A type this server does not serve.
    Unknown(String),
}

#[derive(Debug, Default)]
struct TypeState {
    subscribed: bool,
    names: Vec<String>,
    sent_version: Option<String>,
    sent_nonce: Option<String>,
    pending: bool,
}

/// Bookkeeping of one ADS stream.
#[derive(Debug, Default)]
pub struct StreamState {
    cds: TypeState,
    lds: TypeState,
    rds: TypeState,
    nonce: u64,
    cds_sent: BTreeMap<String, Resource>,
    cds_acked: BTreeSet<String>,
    rds_sent_clusters: BTreeSet<String>,
    rds_acked_clusters: BTreeSet<String>,
}

impl StreamState {
    fn state(&mut self, kind: Kind) -> &mut TypeState {
        match kind {
            Kind::Cluster => &mut self.cds,
            Kind::Listener => &mut self.lds,
            Kind::Route => &mut self.rds,
        }
    }

    /// Records a request from Envoy and says what it meant.
    pub fn on_request(&mut self, req: &DiscoveryRequest) -> Event {
        let Some(kind) = Kind::from_url(&req.type_url) else {
            return Event::Unknown(req.type_url.clone());
        };
        let st = self.state(kind);
        if req.response_nonce.is_empty() {
            st.subscribed = true;
            st.names = req.resource_names.clone();
            st.sent_version = None;
            st.pending = false;
            return Event::Subscribed(kind);
        }
        if st.sent_nonce.as_deref() != Some(req.response_nonce.as_str()) {
            return Event::Stale(kind);
        }
        st.pending = false;
        st.subscribed = true;
        if st.names != req.resource_names {
            st.names = req.resource_names.clone();
            st.sent_version = None;
        }
        let sent = st.sent_version.clone().unwrap_or_default();
        if let Some(err) = &req.error_detail {
            return Event::Nack(kind, sent, err.message.clone());
        }
        match kind {
            Kind::Cluster => self.cds_acked = self.cds_sent.keys().cloned().collect(),
            Kind::Route => self.rds_acked_clusters = self.rds_sent_clusters.clone(),
            Kind::Listener => {}
        }
        Event::Ack(kind, sent)
    }

    fn response(
        &mut self,
        kind: Kind,
        version: String,
        resources: Vec<Resource>,
    ) -> DiscoveryResponse {
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        let st = self.state(kind);
        st.sent_version = Some(version.clone());
        st.sent_nonce = Some(nonce.clone());
        st.pending = true;
        DiscoveryResponse {
            version_info: version,
            resources: resources.into_iter().map(|r| r.any).collect(),
            type_url: kind.url().to_string(),
            nonce,
            ..Default::default()
        }
    }

    /// The responses to send now for the given snapshot, in a safe order.
    pub fn responses(&mut self, snap: &Snapshot) -> Vec<DiscoveryResponse> {
        let mut out = Vec::new();
        if self.cds.subscribed && !self.cds.pending {
            let mut desired = snap.clusters.clone();
            // Keep every cluster that routes Envoy runs, or is about to run, still use.
            let in_flight = self.rds.pending.then_some(&self.rds_sent_clusters);
            for name in self
                .rds_acked_clusters
                .iter()
                .chain(in_flight.into_iter().flatten())
            {
                if let Some(r) = self.cds_sent.get(name) {
                    desired.entry(name.clone()).or_insert_with(|| r.clone());
                }
            }
            let version = set_version(desired.values());
            if self.cds.sent_version.as_deref() != Some(version.as_str()) {
                let resources = desired.values().cloned().collect();
                out.push(self.response(Kind::Cluster, version, resources));
                self.cds_sent = desired;
            }
        }
        if self.lds.subscribed
            && !self.lds.pending
            && self.lds.sent_version.as_deref() != Some(snap.listener.version.as_str())
        {
            out.push(self.response(
                Kind::Listener,
                snap.listener.version.clone(),
                vec![snap.listener.clone()],
            ));
        }
        let wants_routes =
            self.rds.names.is_empty() || self.rds.names.iter().any(|n| n == ROUTE_CONFIG_NAME);
        if self.rds.subscribed
            && !self.rds.pending
            && self.rds.sent_version.as_deref() != Some(snap.routes.version.as_str())
            && snap.route_clusters.is_subset(&self.cds_acked)
        {
            let resources = if wants_routes {
                vec![snap.routes.clone()]
            } else {
                Vec::new()
            };
            out.push(self.response(Kind::Route, snap.routes.version.clone(), resources));
            self.rds_sent_clusters = snap.route_clusters.clone();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ApiRoutes, Operation, PathPattern, Scheme, Upstream};
    use crate::snapshot::{Change, Translator, XdsSettings};
    use envoy_types::pb::google::rpc::Status;

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

    fn request(kind: Kind, nonce: &str, names: &[&str]) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: kind.url().into(),
            response_nonce: nonce.into(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn kinds(rs: &[DiscoveryResponse]) -> Vec<&str> {
        rs.iter()
            .map(|r| r.type_url.rsplit('.').next().unwrap_or(""))
            .collect()
    }

    /// Brings a stream to the steady state: CDS, LDS and RDS all sent and acknowledged.
    fn converge(state: &mut StreamState, snap: &Snapshot) {
        state.on_request(&request(Kind::Cluster, "", &[]));
        state.on_request(&request(Kind::Listener, "", &[]));
        state.on_request(&request(Kind::Route, "", &[ROUTE_CONFIG_NAME]));
        for _ in 0..5 {
            for r in state.responses(snap) {
                let kind = Kind::from_url(&r.type_url).unwrap();
                let names: &[&str] = if kind == Kind::Route {
                    &[ROUTE_CONFIG_NAME]
                } else {
                    &[]
                };
                assert!(matches!(
                    state.on_request(&request(kind, &r.nonce, names)),
                    Event::Ack(..)
                ));
            }
        }
    }

    #[test]
    fn routes_wait_for_their_clusters() {
        let mut t = Translator::new(XdsSettings::default());
        t.apply(Change::Upsert(api("a", 1)));
        let snap = t.snapshot();
        let mut s = StreamState::default();
        s.on_request(&request(Kind::Cluster, "", &[]));
        s.on_request(&request(Kind::Route, "", &[ROUTE_CONFIG_NAME]));
        let first = s.responses(&snap);
        assert_eq!(
            kinds(&first),
            vec!["Cluster"],
            "routes must not precede their clusters"
        );
        assert!(
            s.responses(&snap).is_empty(),
            "nothing more while CDS awaits its ACK"
        );
        assert_eq!(
            s.on_request(&request(Kind::Cluster, &first[0].nonce, &[])),
            Event::Ack(Kind::Cluster, first[0].version_info.clone())
        );
        assert_eq!(kinds(&s.responses(&snap)), vec!["RouteConfiguration"]);
    }

    #[test]
    fn clusters_are_withdrawn_only_after_routes_stop_using_them() {
        let mut t = Translator::new(XdsSettings::default());
        t.apply(Change::Upsert(api("a", 1)));
        let snap1 = t.snapshot();
        let mut s = StreamState::default();
        converge(&mut s, &snap1);
        t.apply(Change::Upsert(api("a", 2)));
        let snap2 = t.snapshot();
        let r = s.responses(&snap2);
        assert_eq!(kinds(&r), vec!["Cluster"]);
        assert_eq!(
            r[0].resources.len(),
            3,
            "old cluster kept while routes use it (plus the policy engine's)"
        );
        s.on_request(&request(Kind::Cluster, &r[0].nonce, &[]));
        let r = s.responses(&snap2);
        assert_eq!(kinds(&r), vec!["RouteConfiguration"]);
        s.on_request(&request(Kind::Route, &r[0].nonce, &[ROUTE_CONFIG_NAME]));
        let r = s.responses(&snap2);
        assert_eq!(kinds(&r), vec!["Cluster"]);
        assert_eq!(
            r[0].resources.len(),
            2,
            "old cluster removed after routes moved (the policy engine's stays)"
        );
    }

    #[test]
    fn clusters_of_routes_awaiting_their_ack_are_kept() {
        let mut t = Translator::new(XdsSettings::default());
        t.apply(Change::Upsert(api("a", 1)));
        let mut s = StreamState::default();
        converge(&mut s, &t.snapshot());
        // Move to upstream 2: CDS {1,2} is ACKed, then routes to 2 go out.
        t.apply(Change::Upsert(api("a", 2)));
        let snap2 = t.snapshot();
        let r = s.responses(&snap2);
        s.on_request(&request(Kind::Cluster, &r[0].nonce, &[]));
        let r = s.responses(&snap2);
        assert_eq!(kinds(&r), vec!["RouteConfiguration"]);
        // Before Envoy ACKs those routes, move to upstream 3: cluster 2 must survive.
        t.apply(Change::Upsert(api("a", 3)));
        let snap3 = t.snapshot();
        let r = s.responses(&snap3);
        assert_eq!(kinds(&r), vec!["Cluster"]);
        let names: Vec<String> = r[0]
            .resources
            .iter()
            .map(|a| {
                prost::Message::decode(a.value.as_slice())
                    .map(|c: envoy_types::pb::envoy::config::cluster::v3::Cluster| c.name)
                    .unwrap()
            })
            .collect();
        assert!(
            names.iter().any(|n| n.contains("_2")),
            "cluster of in-flight routes kept: {names:?}"
        );
        assert!(
            names.iter().any(|n| n.contains("_1")),
            "cluster of acknowledged routes kept: {names:?}"
        );
        assert!(
            names.iter().any(|n| n.contains("_3")),
            "new cluster added: {names:?}"
        );
    }

    #[test]
    fn nack_and_stale_nonces() {
        let mut t = Translator::new(XdsSettings::default());
        let snap = t.snapshot();
        let mut s = StreamState::default();
        s.on_request(&request(Kind::Listener, "", &[]));
        let r = s.responses(&snap);
        assert_eq!(
            s.on_request(&request(Kind::Listener, "999", &[])),
            Event::Stale(Kind::Listener)
        );
        let mut nack = request(Kind::Listener, &r[0].nonce, &[]);
        nack.error_detail = Some(Status {
            message: "bad listener".into(),
            ..Default::default()
        });
        assert_eq!(
            s.on_request(&nack),
            Event::Nack(
                Kind::Listener,
                r[0].version_info.clone(),
                "bad listener".into()
            )
        );
        assert!(
            s.responses(&snap).is_empty(),
            "a rejected version is not resent"
        );
        let unknown = DiscoveryRequest {
            type_url: "x".into(),
            ..Default::default()
        };
        assert_eq!(s.on_request(&unknown), Event::Unknown("x".into()));
    }
}
