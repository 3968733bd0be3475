//! Bottom-up sync: every REST API deployed through the management API is mirrored to an on-prem
//! WSO2 API Manager when one is configured. Changes mark the API `pending` in the same
//! transaction and put its handle on the [`SyncQueue`]; a bounded pool of workers imports or
//! undeploys it while the control channel is up, and records `success` or `failed`. Nothing here
//! holds the registry lock during I/O, so management requests and the data path never wait on
//! the API Manager.

mod apim;
mod artifact;
mod channel;
mod queue;
mod tls;
mod worker;

use std::sync::Arc;

use tokio::sync::watch;
use tracing::{info, warn};

pub use queue::SyncQueue;

use crate::config::ControlPlaneConfig;
use crate::metrics::Metrics;
use crate::registry::Registry;

/// Why the sync could not start or an API could not be exported.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// TLS towards the API Manager could not be set up.
    #[error("control plane TLS: {0}")]
    Tls(String),
    /// The API cannot be turned into an import archive.
    #[error("cannot export the API for APIM: {0}")]
    Export(String),
}

/// What one sync of an API achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncOutcome {
    /// Imported and deployed as this API Manager id and revision.
    Imported {
        /// The API Manager's id.
        id: String,
        /// The deployed revision.
        revision: String,
    },
    /// No longer deployed in the API Manager.
    Undeployed,
    /// Every attempt failed; the last error.
    Failed(String),
}

/// Starts the control channel and the sync workers; they run until `stop` turns true.
pub fn start(
    cp: &ControlPlaneConfig,
    registry: Arc<Registry>,
    queue: SyncQueue,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
) -> Result<(), SyncError> {
    let tls = tls::client_config(cp.insecure_skip_verify, &cp.ca_file)?;
    let client = Arc::new(apim::ApimClient::new(cp, tls.clone())?);
    if !client.has_credentials() {
        warn!(
            "controller.controlplane has no apim_oauth2_* credentials: APIs will fail to sync until they are set"
        );
    }
    info!(
        host = cp.host,
        gateway_name = cp.gateway_name,
        "bottom-up sync to on-prem APIM enabled"
    );
    let (connected_tx, connected_rx) = watch::channel(None);
    let settings = channel::ChannelSettings {
        host: cp.host.clone(),
        token: (!cp.token.is_empty()).then(|| cp.token.clone()),
        tls: Arc::new(tls),
        reconnect_initial: cp.reconnect_initial,
        reconnect_max: cp.reconnect_max,
        heartbeat_timeout: cp.heartbeat_timeout,
    };
    tokio::spawn(channel::run(
        client.clone(),
        settings,
        connected_tx,
        metrics.clone(),
        stop.clone(),
    ));
    let workers = worker::Workers {
        registry,
        client,
        queue,
        gateway_name: cp.gateway_name.clone(),
        pool_size: cp.apim_sync_pool_size as usize,
        connected: connected_rx,
        metrics,
    };
    tokio::spawn(workers.run(stop));
    Ok(())
}
