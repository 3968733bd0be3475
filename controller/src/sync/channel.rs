//! The control channel: on-prem detection, the WebSocket to the API Manager with its
//! `connection.ack` handshake, heartbeat, and reconnection with exponential backoff and jitter.
//! Whether it is up is published on a watch channel as the number of the current connection
//! (`None` while down), so a drop and reconnect are never mistaken for an unbroken connection;
//! syncs run only while it is up.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use serde::Deserialize;
use tokio::sync::watch;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, connect_async_tls_with_config};
use tracing::{debug, error, info, warn};

use super::apim::ApimClient;
use crate::metrics::Metrics;

/// Longest wait for the WebSocket handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for `connection.ack` after the handshake.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// How the control channel connects and stays up.
#[derive(Clone)]
pub struct ChannelSettings {
    /// `host:port` of the API Manager.
    pub host: String,
    /// Registration token sent as `api-key`, if any.
    pub token: Option<String>,
    /// TLS towards the API Manager.
    pub tls: Arc<rustls::ClientConfig>,
    /// First reconnection delay.
    pub reconnect_initial: Duration,
    /// Longest reconnection delay.
    pub reconnect_max: Duration,
    /// Silence after which the connection is considered dead.
    pub heartbeat_timeout: Duration,
}

#[derive(Deserialize)]
struct Frame {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(rename = "gatewayId", default)]
    gateway_id: Option<String>,
    #[serde(rename = "connectionId", default)]
    connection_id: Option<String>,
}

/// `d` shifted by up to ±25%.
pub(super) fn jittered(d: Duration) -> Duration {
    d.mul_f64(rand::rng().random_range(0.75..=1.25))
}

/// The state of the control channel: the number of the connection that is up, if any.
pub type Connection = Option<u64>;

/// How long a connection must have lasted for the reconnect backoff to start over, so a peer
/// that acknowledges and then drops at once is not hammered.
const STABLE: Duration = Duration::from_secs(30);

/// Keeps the control channel up until `stop` turns true, publishing its state on `connected`.
pub async fn run(
    apim: Arc<ApimClient>,
    settings: ChannelSettings,
    connected: watch::Sender<Connection>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = settings.reconnect_initial;
    let mut epoch = 0;
    loop {
        epoch += 1;
        let uptime = tokio::select! {
            up = session(&apim, &settings, &connected, &metrics, epoch) => up,
            _ = stop.wait_for(|s| *s) => None,
        };
        metrics.apim_connected.store(0, Ordering::Relaxed);
        if connected.send_replace(None).is_some() {
            warn!("Disconnected from control plane; reconnecting");
        }
        if *stop.borrow() {
            return;
        }
        if uptime.is_some_and(|u| u >= STABLE.min(settings.reconnect_max)) {
            backoff = settings.reconnect_initial;
        }
        let wait = jittered(backoff);
        debug!(
            wait_ms = wait.as_millis() as u64,
            "control plane reconnect scheduled"
        );
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(settings.reconnect_max);
    }
}

/// One connection attempt and, if it succeeds, its life. Returns how long it was up after
/// `connection.ack`, or `None` if it never was.
async fn session(
    apim: &ApimClient,
    settings: &ChannelSettings,
    connected: &watch::Sender<Connection>,
    metrics: &Metrics,
    epoch: u64,
) -> Option<Duration> {
    let gateway_path = match apim.gateway_path().await {
        Ok(p) if !p.is_empty() => p,
        Ok(_) => {
            warn!(
                host = settings.host,
                "On-prem Control Plane Mode Not Enabled: the .well-known endpoint names no gatewayPath"
            );
            return None;
        }
        Err(e) => {
            warn!(host = settings.host, error = %e, "Failed to resolve gateway path");
            return None;
        }
    };
    let url = format!("wss://{}{gateway_path}/ws/gateways/connect", settings.host);
    info!(url, "Resolved WebSocket connect URL");
    let mut request = match url.as_str().into_client_request() {
        Ok(r) => r,
        Err(e) => {
            error!(url, error = %e, "invalid control plane URL");
            return None;
        }
    };
    if let Some(token) = &settings.token {
        match HeaderValue::from_str(token) {
            Ok(v) => {
                request.headers_mut().insert("api-key", v);
            }
            Err(_) => {
                error!("controller.controlplane.token is not a valid header value");
                return None;
            }
        }
    }
    let connector = Connector::Rustls(settings.tls.clone());
    let dial = connect_async_tls_with_config(request, None, true, Some(connector));
    let mut ws = match timeout(HANDSHAKE_TIMEOUT, dial).await {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(tungstenite::Error::Http(resp))) => {
            let status = resp.status().as_u16();
            if matches!(status, 401 | 403) {
                error!(
                    status,
                    "control plane refused the gateway: check controller.controlplane.token"
                );
            } else {
                warn!(status, "control plane refused the WebSocket");
            }
            return None;
        }
        Ok(Err(e)) => {
            warn!(url, error = %e, "cannot connect to the control plane");
            return None;
        }
        Err(_) => {
            warn!(url, "control plane WebSocket handshake timed out");
            return None;
        }
    };
    let ack = loop {
        match timeout(ACK_TIMEOUT, ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => match serde_json::from_str::<Frame>(&text) {
                Ok(f) if f.kind == "connection.ack" => break f,
                _ => {
                    warn!("control plane's first message was not connection.ack");
                    return None;
                }
            },
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(Some(Ok(_))) => {
                warn!("control plane's first message was not connection.ack");
                return None;
            }
            Ok(Some(Err(e))) => {
                warn!(error = %e, "control plane connection failed before connection.ack");
                return None;
            }
            Ok(None) => {
                warn!("control plane closed the connection before connection.ack");
                return None;
            }
            Err(_) => {
                warn!("no connection.ack from the control plane in time");
                return None;
            }
        }
    };
    info!(
        gateway_id = ack.gateway_id.as_deref().unwrap_or(""),
        connection_id = ack.connection_id.as_deref().unwrap_or(""),
        "Connected to control plane"
    );
    connected.send_replace(Some(epoch));
    metrics.apim_connected.store(1, Ordering::Relaxed);
    let acked_at = Instant::now();
    // Our own pings keep NATs open and make a dead peer show up even if it stops pinging.
    let mut ping = tokio::time::interval(settings.heartbeat_timeout / 3);
    ping.reset();
    let mut last_heard = Instant::now();
    loop {
        let deadline = last_heard + settings.heartbeat_timeout;
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(m)) => {
                    last_heard = Instant::now();
                    if let Message::Text(text) = &m {
                        let kind = serde_json::from_str::<Frame>(text).map(|f| f.kind).unwrap_or_default();
                        debug!(event = kind, "control plane event (top-down events are not handled)");
                    }
                    if let Message::Close(_) = m {
                        info!("control plane closed the connection");
                        return Some(acked_at.elapsed());
                    }
                }
                Some(Err(e)) => {
                    warn!(error = %e, "control plane connection lost");
                    return Some(acked_at.elapsed());
                }
                None => {
                    warn!("control plane connection ended");
                    return Some(acked_at.elapsed());
                }
            },
            _ = ping.tick() => {
                if let Err(e) = ws.send(Message::Ping(Vec::new().into())).await {
                    warn!(error = %e, "control plane connection lost");
                    return Some(acked_at.elapsed());
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                warn!(
                    silent_s = settings.heartbeat_timeout.as_secs(),
                    "no heartbeat from the control plane; reconnecting"
                );
                return Some(acked_at.elapsed());
            }
        }
    }
}
