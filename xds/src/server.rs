//! The ADS gRPC service Envoy connects to, and the task that turns API changes into snapshots.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    aggregated_discovery_service_server::{
        AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
    },
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::ads_stream::{Event, StreamState};
use crate::model::ApiRoutes;
use crate::snapshot::{Change, Snapshot, Translator, XdsSettings};

/// How long the translator lets a burst of changes gather before building a snapshot.
const COALESCE: Duration = Duration::from_millis(2);

/// Counters describing what the ADS server has done.
#[derive(Debug, Default)]
pub struct XdsMetrics {
    /// Snapshots built.
    pub snapshots: AtomicU64,
    /// Responses sent to Envoy.
    pub pushes: AtomicU64,
    /// Responses Envoy accepted.
    pub acks: AtomicU64,
    /// Responses Envoy rejected.
    pub nacks: AtomicU64,
    /// Size in bytes of the last route configuration built.
    pub route_config_bytes: AtomicU64,
    /// APIs in the last snapshot.
    pub apis: AtomicU64,
}

impl XdsMetrics {
    /// The counters in Prometheus text exposition format.
    pub fn prometheus(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "# TYPE gateway_xds_snapshots_total counter\ngateway_xds_snapshots_total {}\n\
             # TYPE gateway_xds_pushes_total counter\ngateway_xds_pushes_total {}\n\
             # TYPE gateway_xds_acks_total counter\ngateway_xds_acks_total {}\n\
             # TYPE gateway_xds_nacks_total counter\ngateway_xds_nacks_total {}\n\
             # TYPE gateway_xds_route_config_bytes gauge\ngateway_xds_route_config_bytes {}\n\
             # TYPE gateway_xds_apis gauge\ngateway_xds_apis {}\n",
            get(&self.snapshots),
            get(&self.pushes),
            get(&self.acks),
            get(&self.nacks),
            get(&self.route_config_bytes),
            get(&self.apis),
        )
    }
}

/// Errors of the ADS server.
#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    /// The gRPC server failed.
    #[error("ADS server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The translator thread could not be started.
    #[error("cannot start the translator thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Handle to the translator and the ADS server: feed it API changes, serve Envoy from it.
#[derive(Clone)]
pub struct Xds {
    changes: std_mpsc::Sender<Change>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    metrics: Arc<XdsMetrics>,
}

impl Xds {
    /// Translates the initial APIs synchronously (so Envoy never sees a partial table after a
    /// restart) and starts the translator thread that applies later changes.
    pub fn start(settings: XdsSettings, initial: Vec<ApiRoutes>) -> Result<Self, XdsError> {
        let mut translator = Translator::new(settings);
        for api in initial {
            translator.apply(Change::Upsert(api));
        }
        let metrics = Arc::new(XdsMetrics::default());
        let first = translator.snapshot();
        record(&metrics, &translator, &first);
        let (snap_tx, snap_rx) = watch::channel(Arc::new(first));
        let (tx, rx) = std_mpsc::channel();
        let m = metrics.clone();
        std::thread::Builder::new()
            .name("xds-translator".into())
            .spawn(move || translate_loop(translator, rx, snap_tx, m))?;
        Ok(Self {
            changes: tx,
            snapshots: snap_rx,
            metrics,
        })
    }

    /// Adds or replaces an API in the router.
    pub fn upsert(&self, api: ApiRoutes) {
        let _ = self.changes.send(Change::Upsert(api));
    }

    /// Removes an API from the router.
    pub fn remove(&self, id: &str) {
        let _ = self.changes.send(Change::Remove(id.to_string()));
    }

    /// A receiver of the current snapshot.
    pub fn snapshots(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshots.clone()
    }

    /// Counters of the server.
    pub fn metrics(&self) -> Arc<XdsMetrics> {
        self.metrics.clone()
    }

    /// Serves ADS on `listener` until `shutdown` resolves.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), XdsError> {
        let service = AdsService {
            snapshots: self.snapshots.clone(),
            metrics: self.metrics.clone(),
        };
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(
                AggregatedDiscoveryServiceServer::new(service).max_decoding_message_size(64 << 20),
            )
            .serve_with_incoming_shutdown(
                // Small gRPC messages: without TCP_NODELAY each answer waits for the peer's delayed ACK (~40 ms).
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                shutdown,
            )
            .await?;
        Ok(())
    }
}

fn record(metrics: &XdsMetrics, translator: &Translator, snap: &Snapshot) {
    metrics.snapshots.fetch_add(1, Ordering::Relaxed);
    metrics
        .route_config_bytes
        .store(snap.routes.any.value.len() as u64, Ordering::Relaxed);
    metrics
        .apis
        .store(translator.api_count() as u64, Ordering::Relaxed);
}

fn translate_loop(
    mut translator: Translator,
    rx: std_mpsc::Receiver<Change>,
    tx: watch::Sender<Arc<Snapshot>>,
    metrics: Arc<XdsMetrics>,
) {
    let mut last_build = std::time::Duration::ZERO;
    while let Ok(first) = rx.recv() {
        let mut changed = translator.apply(first);
        // Let a burst gather, then take everything queued. The wait is at least as long as the
        // last build took, so building snapshots never takes more than half of a core and a
        // stream of changes at any rate still yields a snapshot every few milliseconds.
        std::thread::sleep(COALESCE.max(last_build));
        while let Ok(c) = rx.try_recv() {
            changed |= translator.apply(c);
        }
        if changed {
            let started = std::time::Instant::now();
            let snap = translator.snapshot();
            last_build = started.elapsed();
            record(&metrics, &translator, &snap);
            debug!(
                apis = translator.api_count(),
                routes_version = %snap.routes.version,
                bytes = snap.routes.any.value.len(),
                took_us = started.elapsed().as_micros() as u64,
                "built snapshot"
            );
            if tx.send(Arc::new(snap)).is_err() {
                return;
            }
        }
    }
}

struct AdsService {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    metrics: Arc<XdsMetrics>,
}

fn log_event(event: &Event, node: &str, metrics: &XdsMetrics) {
    match event {
        Event::Subscribed(kind) => debug!(node, ?kind, "subscribed"),
        Event::Ack(kind, version) => {
            metrics.acks.fetch_add(1, Ordering::Relaxed);
            debug!(node, ?kind, version, "ACK");
        }
        Event::Nack(kind, version, error) => {
            metrics.nacks.fetch_add(1, Ordering::Relaxed);
            warn!(
                node,
                ?kind,
                version,
                error,
                "Envoy rejected configuration (NACK)"
            );
        }
        Event::Stale(kind) => debug!(node, ?kind, "ignored request with a stale nonce"),
        Event::Unknown(url) => debug!(node, type_url = url, "ignored request for an unserved type"),
    }
}

async fn run_stream(
    mut inbound: Streaming<DiscoveryRequest>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    metrics: Arc<XdsMetrics>,
) {
    let mut state = StreamState::default();
    let mut node = String::new();
    loop {
        tokio::select! {
            msg = inbound.message() => match msg {
                Ok(Some(req)) => {
                    if let Some(n) = req.node.as_ref().filter(|_| node.is_empty()) {
                        node = n.id.clone();
                        info!(node, "Envoy connected");
                    }
                    let event = state.on_request(&req);
                    log_event(&event, &node, &metrics);
                }
                Ok(None) => break,
                Err(status) => {
                    debug!(node, %status, "ADS stream ended with an error");
                    break;
                }
            },
            changed = snapshots.changed() => if changed.is_err() { break },
        }
        let snap = snapshots.borrow_and_update().clone();
        for resp in state.responses(&snap) {
            metrics.pushes.fetch_add(1, Ordering::Relaxed);
            debug!(
                node,
                type_url = resp.type_url,
                version = resp.version_info,
                "push"
            );
            if tx.send(Ok(resp)).await.is_err() {
                return;
            }
        }
    }
    info!(node, "Envoy disconnected");
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsService {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(run_stream(
            request.into_inner(),
            tx,
            self.snapshots.clone(),
            self.metrics.clone(),
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented(
            "delta xDS is not supported; use state-of-the-world ADS",
        ))
    }
}
