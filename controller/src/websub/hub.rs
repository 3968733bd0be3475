//! The hub's HTTP side, behind Envoy: `POST /websub/{api}/hub` (subscribe and unsubscribe, answered
//! 202 before the asynchronous verification of intent) and `POST /websub/{api}/webhook-receiver`
//! (a publisher's event, answered 202 once stored). Envoy maps `{context}/hub` and
//! `{context}/webhook-receiver` of each deployed WebSub API onto these paths.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use gateway_policy_engine::chain::{RequestView, Verdict};
use gateway_policy_engine::extproc::{TOO_MANY, UNAUTHORIZED, rate_headers};
use rand::RngCore;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, error, info};

use super::delivery::{Deliverer, callback_label};
use super::store::Intent;
use super::{ANY_CHANNEL, Directory, Event, HubApi};
use crate::config::WebSubConfig;
use crate::http::body::read_limited;
use crate::metrics::{Metrics, inc};

/// Longest subscription request read.
const MAX_FORM_BYTES: usize = 64 * 1024;
/// Longest `hub.secret` accepted, in bytes.
const MAX_SECRET_BYTES: usize = 200;

/// The hub: the directory of APIs, the store, and the deliverer.
pub struct Hub {
    directory: Arc<Directory>,
    deliverer: Arc<Deliverer>,
    http: reqwest::Client,
    config: WebSubConfig,
    verifications: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

/// Verifications of intent running at once; the others wait (their intents are stored).
const CONCURRENT_VERIFICATIONS: usize = 64;

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let reason = status.canonical_reason().unwrap_or("Error");
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"error": reason, "message": message.into()}).to_string(),
    )
        .into_response()
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"error":"Not Found"}"#,
    )
        .into_response()
}

fn refusal(v: &Verdict) -> Option<Response> {
    match v {
        Verdict::Allow { .. } => None,
        Verdict::Unauthorized => Some(
            (
                StatusCode::UNAUTHORIZED,
                [(header::CONTENT_TYPE, "application/json")],
                UNAUTHORIZED,
            )
                .into_response(),
        ),
        Verdict::TooManyRequests(r) => {
            let mut resp = (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::CONTENT_TYPE, "application/json")],
                TOO_MANY,
            )
                .into_response();
            let headers = resp.headers_mut();
            for (k, v) in rate_headers(r, now_secs().max(0) as u64)
                .into_iter()
                .chain([("retry-after", r.retry_after_secs.to_string())])
            {
                if let Ok(v) = v.parse() {
                    headers.insert(k, v);
                }
            }
            Some(resp)
        }
    }
}

fn header_pairs(h: &HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect()
}

/// Scheme and host the client used, as Envoy passes them on: Envoy may rewrite `Host` to the
/// hub's own name, and then appends the original to `X-Forwarded-Host`.
fn base_url(h: &HeaderMap) -> String {
    let scheme = h
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .filter(|s| *s == "https" || *s == "http")
        .unwrap_or("http");
    let forwarded = h
        .get("x-forwarded-host")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .map(str::trim)
        .filter(|v| !v.is_empty());
    let host = forwarded
        .or_else(|| h.get(header::HOST).and_then(|v| v.to_str().ok()))
        .unwrap_or("localhost");
    format!("{scheme}://{host}")
}

fn path_and_query(api: &HubApi, tail: &str, query: &Option<String>) -> String {
    match query {
        Some(q) => format!("{}{tail}?{q}", api.context),
        None => format!("{}{tail}", api.context),
    }
}

/// Whether a verification answer's body is exactly `challenge`, reading no more than needed.
async fn echoes(mut r: reqwest::Response, challenge: &str) -> bool {
    let mut body = Vec::with_capacity(challenge.len());
    loop {
        match r.chunk().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk);
                if body.len() > challenge.len() {
                    return false;
                }
            }
            Ok(None) => return body == challenge.as_bytes(),
            Err(_) => return false,
        }
    }
}

impl Hub {
    /// A hub over `directory`, resuming interrupted verifications and deliveries.
    pub fn start(
        directory: Arc<Directory>,
        config: WebSubConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, reqwest::Error> {
        // Never a client that follows redirects: W3C WebSub treats them as failures.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(32)
            .build()?;
        let deliverer = Deliverer::new(directory.clone(), http.clone(), &config, metrics.clone());
        let hub = Arc::new(Self {
            directory,
            metrics,
            deliverer,
            http,
            config,
            verifications: Arc::new(Semaphore::new(CONCURRENT_VERIFICATIONS)),
        });
        match hub.directory.store().subscriptions() {
            Ok(subs) => {
                for s in subs {
                    hub.deliverer.ensure(s.id);
                }
            }
            Err(e) => error!(error = %e, "cannot resume WebSub deliveries"),
        }
        match hub.directory.store().intents() {
            Ok(intents) => {
                for i in intents {
                    tokio::spawn(hub.clone().verify(i));
                }
            }
            Err(e) => error!(error = %e, "cannot resume WebSub verifications"),
        }
        Ok(hub)
    }

    /// Serves the hub on `listener` until `shutdown` resolves.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let app = Router::new()
            .route("/websub/{api}/hub", post(subscription))
            .route("/websub/{api}/hub/", post(subscription))
            .route("/websub/{api}/webhook-receiver", post(publish))
            .route("/websub/{api}/webhook-receiver/", post(publish))
            .fallback(|| async { not_found() })
            .with_state(self);
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    }

    /// The answer of the policies of `event` on `channel` (the API-wide ones when no declared
    /// channel is named) if they refuse the request.
    fn refused(
        &self,
        api: &HubApi,
        event: Event,
        channel: Option<&str>,
        headers: &HeaderMap,
        path: &str,
    ) -> Option<Response> {
        let h = header_pairs(headers);
        let verdict = self.directory.decide(
            &api.name,
            event,
            channel.unwrap_or(ANY_CHANNEL),
            RequestView { headers: &h, path },
        );
        refusal(&verdict)
    }

    /// Verifies intent with a GET to the callback; applies the request if the challenge comes back.
    async fn verify(self: Arc<Self>, intent: Intent) {
        let Ok(_slot) = self.verifications.clone().acquire_owned().await else {
            return;
        };
        let mut challenge = [0u8; 32];
        rand::rng().fill_bytes(&mut challenge);
        let challenge = hex::encode(challenge);
        let verified = match url::Url::parse(&intent.callback) {
            Ok(mut url) => {
                {
                    let mut q = url.query_pairs_mut();
                    q.append_pair("hub.mode", &intent.mode)
                        .append_pair("hub.topic", &intent.channel)
                        .append_pair("hub.challenge", &challenge);
                    if intent.mode == "subscribe" {
                        q.append_pair("hub.lease_seconds", &intent.lease_seconds.to_string());
                    }
                }
                let answer = self
                    .http
                    .get(url)
                    .timeout(Duration::from_millis(self.config.verification_timeout_ms))
                    .send()
                    .await;
                match answer {
                    Ok(r) if r.status().is_success() => echoes(r, &challenge).await,
                    Ok(r) => {
                        debug!(
                            callback = %callback_label(&intent.callback),
                            status = r.status().as_u16(),
                            "verification refused"
                        );
                        false
                    }
                    Err(e) => {
                        debug!(callback = %callback_label(&intent.callback), error = %e, "verification failed");
                        false
                    }
                }
            }
            Err(_) => false,
        };
        let store = self.directory.store().clone();
        let i = intent.clone();
        let applied = tokio::task::spawn_blocking(move || {
            if verified {
                store.apply_intent(&i, now_secs()).map(Some)
            } else {
                store.drop_intent(i.id).map(|_| None)
            }
        })
        .await;
        match applied {
            Ok(Ok(Some(Some(id)))) => {
                info!(
                    channel = intent.channel,
                    callback = %callback_label(&intent.callback),
                    mode = intent.mode,
                    "WebSub intent verified"
                );
                if intent.mode == "subscribe" {
                    self.deliverer.ensure(id);
                } else {
                    self.deliverer.wake(id);
                }
            }
            Ok(Ok(Some(None))) => {
                info!(
                    channel = intent.channel,
                    callback = %callback_label(&intent.callback),
                    "unsubscribed a callback that had no subscription"
                );
            }
            Ok(Ok(None)) => {
                info!(
                    channel = intent.channel,
                    callback = %callback_label(&intent.callback),
                    mode = intent.mode,
                    "WebSub intent not verified; request dropped"
                );
            }
            Ok(Err(e)) => error!(error = %e, "cannot record a WebSub verification"),
            Err(e) => error!(error = %e, "WebSub verification task failed"),
        }
    }
}

/// `POST /websub/{api}/hub`: `hub.mode`, `hub.topic`, `hub.callback`, `hub.secret`,
/// `hub.lease_seconds`, form-encoded.
async fn subscription(
    State(hub): State<Arc<Hub>>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(api) = hub.directory.by_name(&name) else {
        return not_found();
    };
    let bytes = match read_limited(&headers, body, MAX_FORM_BYTES).await {
        Ok(b) => b,
        Err(e) => return error(e.status(), e.message()),
    };
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&bytes)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let (mode, event) = match field("hub.mode") {
        None => return error(StatusCode::BAD_REQUEST, "hub.mode is required"),
        Some("subscribe") => ("subscribe", Event::Subscribe),
        Some("unsubscribe") => ("unsubscribe", Event::Unsubscribe),
        Some(m) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("unknown hub.mode '{m}' (use subscribe or unsubscribe)"),
            );
        }
    };
    // Policies first: without credentials nobody learns which channels exist.
    let topic = field("hub.topic").filter(|t| !t.is_empty());
    let known = topic.filter(|t| api.channels.contains(*t));
    let path = path_and_query(&api, "/hub", &query);
    if let Some(r) = hub.refused(&api, event, known, &headers, &path) {
        return r;
    }
    let Some(channel) = topic else {
        return error(StatusCode::BAD_REQUEST, "hub.topic is required");
    };
    if known.is_none() {
        return error(
            StatusCode::NOT_FOUND,
            format!("unknown channel '{channel}'"),
        );
    }
    let Some(callback) = field("hub.callback").filter(|c| !c.is_empty()) else {
        return error(StatusCode::BAD_REQUEST, "hub.callback is required");
    };
    match url::Url::parse(callback) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "hub.callback must be an absolute http or https URL",
            );
        }
    }
    let secret = field("hub.secret").filter(|s| !s.is_empty());
    if secret.is_some_and(|s| s.len() > MAX_SECRET_BYTES) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("hub.secret must be at most {MAX_SECRET_BYTES} bytes"),
        );
    }
    // The lease of an unsubscription is ignored (W3C WebSub).
    let requested = field("hub.lease_seconds").filter(|l| !l.is_empty() && mode == "subscribe");
    let lease = match requested {
        None => hub.config.default_lease_seconds,
        Some(l) => match l.parse::<u64>() {
            Ok(n) if n > 0 => n.min(hub.config.max_lease_seconds),
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "hub.lease_seconds must be a positive integer",
                );
            }
        },
    };
    let mut intent = Intent {
        id: 0,
        api_uuid: api.uuid.clone(),
        channel: channel.to_string(),
        callback: callback.to_string(),
        mode: mode.to_string(),
        secret: secret.map(str::to_string),
        lease_seconds: lease as i64,
        base_url: base_url(&headers),
    };
    let store = hub.directory.store().clone();
    let stored = intent.clone();
    match tokio::task::spawn_blocking(move || store.add_intent(&stored, now_secs())).await {
        Ok(Ok(id)) => intent.id = id,
        Ok(Err(e)) => {
            error!(error = %e, "cannot store a WebSub request");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the hub cannot store requests right now",
            );
        }
        Err(_) => return error(StatusCode::SERVICE_UNAVAILABLE, "the hub is shutting down"),
    }
    tokio::spawn(hub.clone().verify(intent));
    StatusCode::ACCEPTED.into_response()
}

/// `POST /websub/{api}/webhook-receiver?topic=<channel>`: a publisher's event.
async fn publish(
    State(hub): State<Arc<Hub>>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(api) = hub.directory.by_name(&name) else {
        return not_found();
    };
    let topic = url::form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes())
        .find(|(k, _)| k == "topic")
        .map(|(_, v)| v.into_owned())
        .filter(|t| !t.is_empty());
    // Policies first: without credentials nobody learns which channels exist.
    let known = topic.as_deref().filter(|t| api.channels.contains(*t));
    let path = path_and_query(&api, "/webhook-receiver", &query);
    if let Some(r) = hub.refused(&api, Event::Receive, known, &headers, &path) {
        return r;
    }
    let Some(channel) = topic.clone() else {
        return error(
            StatusCode::BAD_REQUEST,
            "query parameter 'topic' is required",
        );
    };
    if known.is_none() {
        return error(
            StatusCode::NOT_FOUND,
            format!("unknown channel '{channel}'"),
        );
    }
    let bytes = match read_limited(&headers, body, hub.config.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return error(e.status(), e.message()),
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_string();
    let store = hub.directory.store().clone();
    let uuid = api.uuid.clone();
    let ch = channel.clone();
    let stored = tokio::task::spawn_blocking(move || {
        store.publish(&uuid, &ch, &content_type, &bytes, now_secs())
    })
    .await;
    match stored {
        Ok(Ok(subscribers)) => {
            inc(&hub.metrics.websub_events_published);
            debug!(
                api = api.name,
                channel,
                subscribers = subscribers.len(),
                "event stored"
            );
            for id in subscribers {
                hub.deliverer.wake(id);
            }
            StatusCode::ACCEPTED.into_response()
        }
        Ok(Err(e)) => {
            error!(error = %e, "cannot store a WebSub event");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the hub cannot store events right now",
            )
        }
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the hub is shutting down"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn base_url_is_what_the_subscriber_used() {
        assert_eq!(
            base_url(&headers(&[("host", "gw.example:8080")])),
            "http://gw.example:8080"
        );
        // Envoy rewrote Host to the hub's name and appended the original.
        assert_eq!(
            base_url(&headers(&[
                ("host", "controller:9095"),
                ("x-forwarded-host", "spoofed.example, gw.example"),
                ("x-forwarded-proto", "https"),
            ])),
            "https://gw.example"
        );
        assert_eq!(
            base_url(&headers(&[("host", "h"), ("x-forwarded-proto", "gopher")])),
            "http://h"
        );
    }
}
