//! The sync workers: while the control channel is up, take APIs off the queue and import or
//! undeploy them in the API Manager, at most `pool_size` at a time, each with up to three
//! attempts and backoff; and undeploy revisions of deleted APIs. Registry calls run on the
//! blocking pool and never while waiting on the API Manager.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, watch};
use tracing::{error, info, warn};

use super::SyncOutcome;
use super::apim::{ApimClient, ApimError};
use super::artifact;
use super::channel::{self, Connection};
use super::queue::SyncQueue;
use crate::metrics::{Metrics, inc};
use crate::registry::{Registry, off_runtime};

/// Attempts per sync before the API is marked failed.
const ATTEMPTS: u32 = 3;
/// Wait before the second attempt; doubles for the next.
const RETRY_BASE: Duration = Duration::from_millis(500);

/// The worker pool and what it works with.
pub struct Workers {
    /// Where APIs are read and outcomes recorded.
    pub registry: Arc<Registry>,
    /// The API Manager.
    pub client: Arc<ApimClient>,
    /// APIs waiting for a sync.
    pub queue: SyncQueue,
    /// API Manager environment of this gateway.
    pub gateway_name: String,
    /// Syncs running at once.
    pub pool_size: usize,
    /// The control channel's state.
    pub connected: watch::Receiver<Connection>,
    /// Where outcomes are counted.
    pub metrics: Arc<Metrics>,
}

/// Marks an API's sync finished when dropped, so even a panicking sync frees its API.
struct Finished {
    queue: SyncQueue,
    handle: String,
}

impl Drop for Finished {
    fn drop(&mut self) {
        self.queue.done(&self.handle);
    }
}

impl Workers {
    /// Dispatches syncs until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let this = Arc::new(self);
        tokio::spawn(this.clone().undeploy_loop(stop.clone()));
        let permits = Arc::new(Semaphore::new(this.pool_size));
        let mut connected = this.connected.clone();
        let mut synced_epoch = None;
        loop {
            let Some(epoch) = *connected.borrow_and_update() else {
                tokio::select! {
                    r = connected.changed() => if r.is_err() { return },
                    _ = stop.wait_for(|s| *s) => return,
                }
                continue;
            };
            if synced_epoch != Some(epoch) {
                synced_epoch = Some(epoch);
                this.start_bottom_up_sync().await;
            }
            // A worker slot first: waiting for one never hides a reconnection.
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
                r = connected.changed() => {
                    if r.is_err() {
                        return;
                    }
                    continue;
                }
                _ = stop.wait_for(|s| *s) => return,
            };
            let Some(handle) = this.queue.pop() else {
                drop(permit);
                tokio::select! {
                    _ = this.queue.pushed() => {}
                    r = connected.changed() => if r.is_err() { return },
                    _ = stop.wait_for(|s| *s) => return,
                }
                continue;
            };
            let worker = this.clone();
            tokio::spawn(async move {
                let _finished = Finished {
                    queue: worker.queue.clone(),
                    handle: handle.clone(),
                };
                worker.sync_api(&handle, epoch).await;
                drop(permit);
            });
        }
    }

    /// On every (re)connection: queue every API still pending or failed, and the undeployments
    /// left over.
    async fn start_bottom_up_sync(&self) {
        match off_runtime(&self.registry, move |r| r.sync_candidates()).await {
            Ok(due) => {
                info!(apis = due.len(), "Bottom-up sync: starting");
                for handle in &due {
                    self.queue.push(handle);
                }
            }
            Err(e) => error!(error = %e, "Bottom-up sync: cannot list APIs to sync"),
        }
        self.queue.push_undeploys();
    }

    /// Runs `op` up to [`ATTEMPTS`] times while it fails transiently, with backoff.
    async fn attempts<T, F, Fut>(&self, what: &str, api: &str, mut op: F) -> Result<T, ApimError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ApimError>>,
    {
        let mut delay = RETRY_BASE;
        let mut attempt = 1;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    warn!(api, attempt, error = %e, "APIM {what} attempt failed");
                    if attempt == ATTEMPTS || !e.transient() {
                        return Err(e);
                    }
                }
            }
            tokio::time::sleep(channel::jittered(delay)).await;
            delay *= 2;
            attempt += 1;
        }
    }

    /// Syncs one API if it is still due, and records the outcome. A failure while connection
    /// `epoch` went away is not recorded: the API stays as it was and is synced again on the
    /// next connection.
    async fn sync_api(&self, handle: &str, epoch: u64) {
        let h = handle.to_string();
        let entry = match off_runtime(&self.registry, move |r| r.sync_entry(&h)).await {
            Ok(Some(e)) => e,
            Ok(None) => return,
            Err(e) => {
                error!(api = handle, error = %e, "cannot read the API to sync");
                return;
            }
        };
        let started = Instant::now();
        let row = &entry.row;
        let outcome = if row.desired_state == "deployed" {
            match artifact::export(row, &self.gateway_name) {
                Err(e) => SyncOutcome::Failed(e.to_string()),
                Ok(a) => match self
                    .attempts("import", handle, || self.client.import(&a))
                    .await
                {
                    Ok(i) => SyncOutcome::Imported {
                        id: i.id,
                        revision: i.revision,
                    },
                    Err(e) => SyncOutcome::Failed(e.to_string()),
                },
            }
        } else if let (Some(id), Some(revision)) = (&row.cp_artifact_id, &row.cp_revision) {
            match self
                .attempts("undeploy-revision", handle, || {
                    self.client.undeploy(id, revision)
                })
                .await
            {
                Ok(()) => SyncOutcome::Undeployed,
                Err(ApimError::Status { status: 404, .. }) => {
                    warn!(
                        api = handle,
                        apim_id = id,
                        revision,
                        "revision already gone from APIM"
                    );
                    SyncOutcome::Undeployed
                }
                Err(e) => SyncOutcome::Failed(e.to_string()),
            }
        } else {
            SyncOutcome::Undeployed
        };
        let took_ms = started.elapsed().as_millis() as u64;
        if matches!(outcome, SyncOutcome::Failed(_)) && *self.connected.borrow() != Some(epoch) {
            warn!(
                api = handle,
                took_ms,
                "control plane connection lost during the sync; retried on the next connection"
            );
            return;
        }
        match &outcome {
            SyncOutcome::Imported { id, revision } => {
                info!(
                    api = handle,
                    apim_id = id,
                    revision,
                    took_ms,
                    "Bottom-up sync: API imported and deployed in APIM"
                )
            }
            SyncOutcome::Undeployed => {
                info!(
                    api = handle,
                    took_ms, "Bottom-up sync: API undeployed in APIM"
                )
            }
            SyncOutcome::Failed(e) => {
                warn!(
                    api = handle,
                    error = e,
                    took_ms,
                    "Bottom-up sync: API sync failed"
                )
            }
        }
        inc(if matches!(outcome, SyncOutcome::Failed(_)) {
            &self.metrics.apim_syncs_failed
        } else {
            &self.metrics.apim_syncs_succeeded
        });
        if let Err(e) = off_runtime(&self.registry, move |r| r.record_sync(&entry, &outcome)).await
        {
            error!(api = handle, error = %e, "cannot record the sync outcome");
        }
    }

    /// Undeploys revisions of deleted APIs whenever some are queued and the channel is up.
    async fn undeploy_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut connected = self.connected.clone();
        loop {
            if connected.borrow_and_update().is_some() && self.queue.take_undeploys() {
                self.undeploy_deleted().await;
                continue;
            }
            tokio::select! {
                _ = self.queue.pushed_undeploys() => {}
                r = connected.changed() => if r.is_err() { return },
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// Undeploys the revisions of deleted APIs; keeps those APIM could not be reached for.
    async fn undeploy_deleted(&self) {
        let rows = match off_runtime(&self.registry, move |r| r.pending_undeploys()).await {
            Ok(r) => r,
            Err(e) => {
                error!(error = %e, "cannot list APIM revisions to undeploy");
                return;
            }
        };
        for u in rows {
            let result = self
                .attempts("undeploy-revision", &u.api_handle, || {
                    self.client.undeploy(&u.artifact_id, &u.revision)
                })
                .await;
            let handled = match result {
                Ok(()) => {
                    info!(
                        api = u.api_handle,
                        apim_id = u.artifact_id,
                        revision = u.revision,
                        "deleted API undeployed in APIM"
                    );
                    true
                }
                Err(e) if !e.transient() => {
                    warn!(api = u.api_handle, apim_id = u.artifact_id, error = %e, "APIM refused to undeploy a deleted API's revision; dropped");
                    true
                }
                Err(e) => {
                    warn!(api = u.api_handle, apim_id = u.artifact_id, error = %e, "cannot undeploy a deleted API's revision yet; retried on the next connection");
                    false
                }
            };
            if handled
                && let Err(e) = off_runtime(&self.registry, move |r| r.finish_undeploy(u.seq)).await
            {
                error!(error = %e, "cannot record an undeployment");
            }
        }
    }
}
