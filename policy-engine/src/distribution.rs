//! How policy configuration travels from the controller to policy engines: delta ADS (the xDS
//! wire protocol, served by the controller) with one resource per API, of our own type
//! [`POLICY_TYPE`], whose payload is the JSON of [`ApiPolicies`]. A change to one API or its keys
//! sends that API alone; a reconnecting engine reports what it has and gets only the difference.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
    aggregated_discovery_service_server::{
        AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
    },
};
use envoy_types::pb::google::protobuf::Any;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::chain::RouteChain;

/// Type URL of the per-API policy resource.
pub const POLICY_TYPE: &str = "type.googleapis.com/gateway.policy.v1.ApiPolicies";

/// Everything an engine needs about one API: the chain of each of its routes and its valid keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiPolicies {
    /// Route name -> chain, for routes that carry policies.
    pub routes: BTreeMap<String, RouteChain>,
    /// SHA-256 (hex) of each valid key -> expiry in Unix seconds, if any.
    pub keys: BTreeMap<String, Option<u64>>,
}

/// Errors of policy distribution.
#[derive(Debug, thiserror::Error)]
pub enum DistributionError {
    /// The gRPC transport failed.
    #[error("policy distribution transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The stream was refused or broke.
    #[error("policy distribution stream: {0}")]
    Status(#[from] Status),
    /// A resource could not be decoded.
    #[error("policy resource '{0}' is not valid: {1}")]
    Decode(String, serde_json::Error),
}

#[derive(Debug)]
struct Encoded {
    version: String,
    json: Vec<u8>,
}

/// Current resources plus a change log, so that a stream catching up after a change looks at the
/// APIs that changed, not at every API.
#[derive(Debug, Default)]
struct Resources {
    entries: BTreeMap<String, Arc<Encoded>>,
    /// Sequence number of each API's last change (removed APIs keep theirs as tombstones).
    changed_at: HashMap<String, u64>,
    /// The same, ordered by sequence number.
    log: BTreeMap<u64, String>,
    seq: u64,
}

impl Resources {
    fn touch(&mut self, api: &str) {
        self.seq += 1;
        if let Some(old) = self.changed_at.insert(api.to_string(), self.seq) {
            self.log.remove(&old);
        }
        self.log.insert(self.seq, api.to_string());
    }

    /// APIs changed after sequence number `after`.
    fn changed_since(&self, after: u64) -> impl Iterator<Item = &String> {
        self.log.range(after + 1..).map(|(_, api)| api)
    }
}

/// The controller's side: the current per-API resources and the delta ADS service that streams
/// them to engines.
#[derive(Clone)]
pub struct Distributor {
    tx: Arc<watch::Sender<Resources>>,
}

impl Default for Distributor {
    fn default() -> Self {
        Self::new()
    }
}

impl Distributor {
    /// An empty distributor.
    pub fn new() -> Self {
        Self {
            tx: Arc::new(watch::channel(Resources::default()).0),
        }
    }

    /// Sets the policies of API `api` (a no-op when unchanged).
    pub fn set(&self, api: &str, policies: &ApiPolicies) {
        let json = serde_json::to_vec(policies).unwrap_or_default();
        let version = hex::encode(&Sha256::digest(&json)[..12]);
        self.tx.send_if_modified(|m| {
            if m.entries.get(api).is_some_and(|e| e.version == version) {
                return false;
            }
            m.entries
                .insert(api.to_string(), Arc::new(Encoded { version, json }));
            m.touch(api);
            true
        });
    }

    /// Removes API `api`.
    pub fn remove(&self, api: &str) {
        self.tx.send_if_modified(|m| {
            let removed = m.entries.remove(api).is_some();
            if removed {
                m.touch(api);
            }
            removed
        });
    }

    /// Serves engines on `listener` until `shutdown` resolves. With a `token`, only engines
    /// presenting it (`authorization: Bearer <token>`) are served.
    pub async fn serve(
        &self,
        listener: TcpListener,
        token: Option<String>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), DistributionError> {
        let expected = token.map(|t| format!("Bearer {t}"));
        let check = move |req: Request<()>| match &expected {
            None => Ok(req),
            Some(want) => {
                let got = req
                    .metadata()
                    .get(AUTHORIZATION)
                    .map(|v| v.as_bytes())
                    .unwrap_or_default();
                if bool::from(got.ct_eq(want.as_bytes())) {
                    Ok(req)
                } else {
                    Err(Status::unauthenticated(
                        "the policy stream needs the controller's policy token",
                    ))
                }
            }
        };
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(AggregatedDiscoveryServiceServer::with_interceptor(
                DeltaService {
                    rx: self.tx.subscribe(),
                },
                check,
            ))
            .serve_with_incoming_shutdown(
                // Small gRPC messages: without TCP_NODELAY each answer waits for the peer's delayed ACK (~40 ms).
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                shutdown,
            )
            .await?;
        Ok(())
    }
}

struct DeltaService {
    rx: watch::Receiver<Resources>,
}

/// The changes among `names` that bring a peer holding `sent` up to `current`.
fn diff<'a>(
    current: &BTreeMap<String, Arc<Encoded>>,
    names: impl Iterator<Item = &'a String>,
    sent: &HashMap<String, String>,
) -> (Vec<Resource>, Vec<String>) {
    let mut changed = Vec::new();
    let mut removed = Vec::new();
    for name in names {
        match current.get(name) {
            Some(e) if sent.get(name) != Some(&e.version) => changed.push(Resource {
                name: name.clone(),
                version: e.version.clone(),
                resource: Some(Any {
                    type_url: POLICY_TYPE.into(),
                    value: e.json.clone(),
                }),
                ..Default::default()
            }),
            None if sent.contains_key(name) => removed.push(name.clone()),
            _ => {}
        }
    }
    (changed, removed)
}

async fn run_delta_stream(
    mut inbound: Streaming<DeltaDiscoveryRequest>,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    mut rx: watch::Receiver<Resources>,
) {
    let first = match inbound.message().await {
        Ok(Some(r)) if r.type_url == POLICY_TYPE => r,
        Ok(Some(r)) => {
            let _ = tx
                .send(Err(Status::invalid_argument(format!(
                    "unsupported type {}",
                    r.type_url
                ))))
                .await;
            return;
        }
        _ => return,
    };
    let node = first.node.map(|n| n.id).unwrap_or_default();
    info!(node, "policy engine connected");
    let mut sent: HashMap<String, String> = first.initial_resource_versions;
    let mut nonce = 0u64;
    // The first answer compares everything (the engine may hold anything); later ones only what
    // changed since the last.
    let mut cursor: Option<u64> = None;
    loop {
        let (changed, removed) = {
            let current = rx.borrow_and_update();
            let result = match cursor {
                None => {
                    let names: std::collections::BTreeSet<&String> =
                        current.entries.keys().chain(sent.keys()).collect();
                    diff(&current.entries, names.into_iter(), &sent)
                }
                Some(c) => diff(&current.entries, current.changed_since(c), &sent),
            };
            cursor = Some(current.seq);
            result
        };
        if !changed.is_empty() || !removed.is_empty() {
            for r in &changed {
                sent.insert(r.name.clone(), r.version.clone());
            }
            for n in &removed {
                sent.remove(n);
            }
            nonce += 1;
            debug!(
                node,
                changed = changed.len(),
                removed = removed.len(),
                "policy push"
            );
            let resp = DeltaDiscoveryResponse {
                type_url: POLICY_TYPE.into(),
                resources: changed,
                removed_resources: removed,
                nonce: nonce.to_string(),
                ..Default::default()
            };
            if tx.send(Ok(resp)).await.is_err() {
                break;
            }
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { break },
            msg = inbound.message() => match msg {
                Ok(Some(r)) => if let Some(e) = r.error_detail {
                    warn!(node, error = e.message, "policy engine rejected an update");
                },
                _ => break,
            },
        }
    }
    info!(node, "policy engine disconnected");
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for DeltaService {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        _request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented("policy distribution uses delta ADS"))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(run_delta_stream(request.into_inner(), tx, self.rx.clone()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Metadata key of the policy token.
const AUTHORIZATION: &str = "authorization";

/// The engine's side: follows the controller at `endpoint` (`http://host:port`) forever,
/// presenting `token` if any, and calling `apply` with each batch of changes (changed APIs,
/// removed APIs). Reconnects with backoff and jitter; what was applied stays in force while the
/// controller is away.
pub async fn follow(
    endpoint: String,
    token: Option<String>,
    node_id: String,
    mut versions: HashMap<String, String>,
    mut apply: impl FnMut(Vec<(String, ApiPolicies)>, Vec<String>),
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        match follow_once(
            &endpoint,
            token.as_deref(),
            &node_id,
            &mut versions,
            &mut apply,
        )
        .await
        {
            Ok(()) => info!(endpoint, "policy stream closed by the controller"),
            Err(e) => {
                warn!(endpoint, error = %e, retry_in_ms = backoff.as_millis() as u64, "policy stream failed")
            }
        }
        let jitter =
            Duration::from_millis(rand::random::<u64>() % (backoff.as_millis() as u64 / 2 + 1));
        tokio::time::sleep(backoff + jitter).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn follow_once(
    endpoint: &str,
    token: Option<&str>,
    node_id: &str,
    versions: &mut HashMap<String, String>,
    apply: &mut impl FnMut(Vec<(String, ApiPolicies)>, Vec<String>),
) -> Result<(), DistributionError> {
    let channel = Channel::from_shared(endpoint.to_string())
        .map_err(|e| Status::invalid_argument(format!("bad controller address: {e}")))?
        .connect()
        .await?;
    let header = match token {
        Some(t) => Some(MetadataValue::try_from(format!("Bearer {t}")).map_err(|_| {
            Status::invalid_argument("the policy token is not a valid header value")
        })?),
        None => None,
    };
    let mut client =
        AggregatedDiscoveryServiceClient::with_interceptor(channel, move |mut req: Request<()>| {
            if let Some(h) = &header {
                req.metadata_mut().insert(AUTHORIZATION, h.clone());
            }
            Ok(req)
        });
    let (req_tx, req_rx) = mpsc::channel(16);
    let first = DeltaDiscoveryRequest {
        node: Some(Node {
            id: node_id.to_string(),
            ..Default::default()
        }),
        type_url: POLICY_TYPE.into(),
        initial_resource_versions: versions.clone(),
        ..Default::default()
    };
    let _ = req_tx.send(first).await;
    let mut responses = client
        .delta_aggregated_resources(ReceiverStream::new(req_rx))
        .await?
        .into_inner();
    info!(endpoint, "following the controller's policies");
    while let Some(resp) = responses.message().await? {
        let mut changed = Vec::with_capacity(resp.resources.len());
        for r in resp.resources {
            let bytes = r.resource.map(|a| a.value).unwrap_or_default();
            let policies: ApiPolicies = serde_json::from_slice(&bytes)
                .map_err(|e| DistributionError::Decode(r.name.clone(), e))?;
            versions.insert(r.name.clone(), r.version);
            changed.push((r.name, policies));
        }
        for n in &resp.removed_resources {
            versions.remove(n);
        }
        apply(changed, resp.removed_resources);
        let ack = DeltaDiscoveryRequest {
            type_url: POLICY_TYPE.into(),
            response_nonce: resp.nonce,
            ..Default::default()
        };
        if req_tx.send(ack).await.is_err() {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(version: &str) -> Arc<Encoded> {
        Arc::new(Encoded {
            version: version.into(),
            json: b"{}".to_vec(),
        })
    }

    #[test]
    fn diffs_send_only_changes_and_removals() {
        let current = BTreeMap::from([
            ("a".to_string(), encoded("1")),
            ("b".to_string(), encoded("2")),
        ]);
        let sent = HashMap::from([
            ("a".to_string(), "1".to_string()),
            ("c".to_string(), "9".to_string()),
        ]);
        let names: Vec<String> = vec!["a".into(), "b".into(), "c".into()];
        let (changed, removed) = diff(&current, names.iter(), &sent);
        assert_eq!(
            changed.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            vec!["b"]
        );
        assert_eq!(removed, vec!["c".to_string()]);
        assert_eq!(
            changed[0].resource.as_ref().map(|a| a.type_url.as_str()),
            Some(POLICY_TYPE)
        );
    }

    #[test]
    fn the_change_log_keeps_the_last_change_of_each_api() {
        let mut r = Resources::default();
        r.touch("a");
        r.touch("b");
        r.touch("a");
        assert_eq!(r.changed_since(0).collect::<Vec<_>>(), vec!["b", "a"]);
        assert_eq!(r.changed_since(2).collect::<Vec<_>>(), vec!["a"]);
        assert_eq!(r.changed_since(3).count(), 0);
    }

    #[tokio::test]
    async fn engines_follow_changes_and_resume_after_reconnect() {
        let d = Distributor::new();
        d.set("a", &ApiPolicies::default());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = d.clone();
        tokio::spawn(async move {
            server
                .serve(listener, Some("s3cret".into()), std::future::pending())
                .await
        });
        // A follower without the token gets nothing.
        let (bad_tx, mut bad_rx) = mpsc::unbounded_channel();
        tokio::spawn(follow(
            format!("http://{addr}"),
            Some("wrong".into()),
            "intruder".into(),
            HashMap::new(),
            move |c, r| {
                let _ = bad_tx.send((c.len(), r.len()));
            },
        ));
        let (tx, mut rx) = mpsc::unbounded_channel();
        tokio::spawn(follow(
            format!("http://{addr}"),
            Some("s3cret".into()),
            "t".into(),
            HashMap::new(),
            move |c, r| {
                let _ = tx.send((c.into_iter().map(|(n, _)| n).collect::<Vec<_>>(), r));
            },
        ));
        assert_eq!(rx.recv().await, Some((vec!["a".to_string()], vec![])));
        let mut keyed = ApiPolicies::default();
        keyed.keys.insert("h".into(), None);
        d.set("b", &keyed);
        assert_eq!(rx.recv().await, Some((vec!["b".to_string()], vec![])));
        d.set("b", &keyed);
        d.remove("a");
        assert_eq!(
            rx.recv().await,
            Some((vec![], vec!["a".to_string()])),
            "an unchanged set sends nothing"
        );
        assert!(
            bad_rx.try_recv().is_err(),
            "a follower with the wrong token received policies"
        );
    }
}
