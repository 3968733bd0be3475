//! A fake on-prem WSO2 API Manager for the bottom-up sync tests.
//!
//! It speaks the protocol the controller uses (see `CONTRACT.md`, "Bottom-up sync to an on-prem
//! WSO2 API Manager") over HTTPS with a self-signed certificate, and really checks what it
//! receives: the token request's grant, credentials and scopes; the bearer token of every
//! publisher call; the import's query parameters, multipart field and the zip's layout and YAML
//! contents; the undeploy body. A violation is answered the way APIM would (a 4xx with a JSON
//! body) with a message precise enough for a test to assert on. Tests can make it unavailable,
//! unauthorised or slow, fail a number of calls, and cut the control WebSocket.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{Cursor, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use axum::Router;
use axum::body::Bytes;
use axum::extract::multipart::MultipartRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{
    DefaultBodyLimit, Form, FromRequest, Multipart, Path as UrlPath, Query, Request, State,
};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value as Json, json};
use serde_yaml_ng::Value as Yaml;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

/// How the fake is set up: credentials it accepts, where it says the gateway API lives, and the
/// gateway environment imports must name.
#[derive(Debug, Clone)]
pub struct FakeApimConfig {
    /// Client id accepted by the `client_credentials` grant (HTTP Basic user).
    pub client_id: String,
    /// Client secret accepted by the `client_credentials` grant (HTTP Basic password).
    pub client_secret: String,
    /// User accepted by the `password` grant.
    pub username: String,
    /// Password accepted by the `password` grant.
    pub password: String,
    /// What `/internal/gateway/.well-known` answers as `gatewayPath`; empty means it answers
    /// `{}` (on-prem mode not enabled) and no WebSocket endpoint exists.
    pub gateway_path: String,
    /// When set, the WebSocket upgrade requires the header `api-key: <token>` (401 otherwise).
    pub registration_token: Option<String>,
    /// How often the server pings on each control WebSocket.
    pub ping_interval: Duration,
    /// The APIM gateway environment every import's `deployment_environments.yaml` and every
    /// undeploy body must name.
    pub gateway_name: String,
}

impl Default for FakeApimConfig {
    fn default() -> Self {
        Self {
            client_id: "test-client".into(),
            client_secret: "test-secret".into(),
            username: "admin".into(),
            password: "admin-password".into(),
            gateway_path: "/internal/data/v1".into(),
            registration_token: None,
            ping_interval: Duration::from_secs(1),
            gateway_name: "onprem-gw".into(),
        }
    }
}

/// How the fake answers from now on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Answers as APIM does.
    #[default]
    Normal,
    /// Every publisher call (`/api/am/publisher/...`: import, undeploy-revision, swagger, list)
    /// answers 503.
    Unavailable,
    /// The token endpoint answers 401 `{"error":"invalid_client"}` to everything.
    Unauthorized,
    /// Publisher calls wait this long before answering normally.
    Slow(Duration),
}

/// One HTTP request the fake received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// Request method, e.g. `POST`.
    pub method: String,
    /// Path, plus `?` and the raw query when there is one.
    pub path: String,
    /// Status answered (101 for a WebSocket upgrade); 0 while no answer has been sent.
    pub status: u16,
}

/// An API as imported into the fake (keyed by name and version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedApi {
    /// APIM id, assigned on the first import (UUID v4).
    pub id: String,
    /// `data.name` of the last import.
    pub name: String,
    /// `data.version` of the last import.
    pub version: String,
    /// `data.context` of the last import.
    pub context: String,
    /// `data.endpointConfig.production_endpoints.url` of the last import.
    pub endpoint_url: String,
    /// `(verb, target)` of each operation of the last import, in order.
    pub operations: Vec<(String, String)>,
    /// How many imports named this API.
    pub imports: u32,
    /// Revision ids, one per import, oldest first.
    pub revisions: Vec<String>,
    /// The revision deployed on the gateway environment, if any.
    pub deployed_revision: Option<String>,
    /// The gateway environment the last import deployed to.
    pub gateway_environment: String,
    /// Text of `Definitions/swagger.yaml` of the last import.
    pub swagger: String,
    /// Text of `api.yaml` of the last import.
    pub api_yaml: String,
}

/// A running fake APIM on 127.0.0.1 over HTTPS. Stops serving when dropped.
pub struct FakeApim {
    shared: Arc<Shared>,
    addr: SocketAddr,
    ca_file: PathBuf,
    server: JoinHandle<()>,
}

/// State shared with the handlers.
struct Shared {
    cfg: FakeApimConfig,
    inner: Mutex<Inner>,
    /// Bumped to make every open WebSocket task end at once.
    cut_websockets: watch::Sender<u64>,
}

#[derive(Default)]
struct Inner {
    mode: Mode,
    fail_next: u32,
    calls: Vec<Call>,
    apis: Vec<ImportedApi>,
    tokens: HashSet<String>,
    tokens_issued: u32,
    ws_connects: u32,
    ws_open: u32,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl FakeApim {
    /// Starts the fake on a free port of 127.0.0.1.
    pub async fn start(cfg: FakeApimConfig) -> Result<Self> {
        Self::start_on(0, cfg).await
    }

    /// Starts the fake on the given port of 127.0.0.1 (0 picks a free one), e.g. one handed to
    /// a gateway that was started while APIM was still down.
    pub async fn start_on(port: u16, cfg: FakeApimConfig) -> Result<Self> {
        let certified = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_string(),
            "localhost".to_string(),
        ])
        .context("generating the fake APIM certificate")?;
        let cert_der = certified.cert.der().clone();
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            certified.signing_key.serialize_der(),
        ));
        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert_der], key_der)
        .context("building the fake APIM TLS config")?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(tls));

        let listener = bind(port)?;
        let addr = listener.local_addr()?;
        let ca_file = std::env::temp_dir().join(format!(
            "fake-apim-ca-{}-{}.pem",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::write(&ca_file, certified.cert.pem())
            .with_context(|| format!("writing {}", ca_file.display()))?;

        let (cut_websockets, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            cfg,
            inner: Mutex::new(Inner::default()),
            cut_websockets,
        });
        let app = router(shared.clone());
        let server = tokio::spawn(accept_loop(listener, acceptor, app));
        Ok(Self {
            shared,
            addr,
            ca_file,
            server,
        })
    }

    /// `127.0.0.1:<port>`, what goes into the gateway's `controlplane.host`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// PEM file of the self-signed certificate (valid for IP 127.0.0.1 and DNS `localhost`),
    /// to trust as a CA; removed when the fake is dropped.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// Changes how the fake answers from now on.
    pub fn set_mode(&self, mode: Mode) {
        self.shared.lock().mode = mode;
    }

    /// Makes the next `n` publisher calls answer 503, whatever the mode.
    pub fn fail_next_publisher_calls(&self, n: u32) {
        self.shared.lock().fail_next = n;
    }

    /// Abruptly ends every open control WebSocket: no close frame, the TCP connection just
    /// ends.
    pub fn drop_websockets(&self) {
        self.shared.cut_websockets.send_modify(|g| *g += 1);
    }

    /// WebSocket connections that were sent `connection.ack` so far.
    pub fn ws_connects(&self) -> u32 {
        self.shared.lock().ws_connects
    }

    /// WebSocket connections open now.
    pub fn ws_open(&self) -> u32 {
        self.shared.lock().ws_open
    }

    /// Every HTTP request received so far, in order of arrival.
    pub fn calls(&self) -> Vec<Call> {
        self.shared.lock().calls.clone()
    }

    /// Every imported API, in order of first import.
    pub fn apis(&self) -> Vec<ImportedApi> {
        self.shared.lock().apis.clone()
    }

    /// The imported API with this name and version.
    pub fn api(&self, name: &str, version: &str) -> Option<ImportedApi> {
        self.shared
            .lock()
            .apis
            .iter()
            .find(|a| a.name == name && a.version == version)
            .cloned()
    }

    /// Access tokens issued so far.
    pub fn tokens_issued(&self) -> u32 {
        self.shared.lock().tokens_issued
    }

    /// Stops serving, ends every connection and releases the port.
    pub async fn stop(mut self) {
        self.server.abort();
        let _ = (&mut self.server).await;
        self.drop_websockets();
        for _ in 0..100 {
            if self.ws_open() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for FakeApim {
    fn drop(&mut self) {
        self.server.abort();
        self.drop_websockets();
        let _ = std::fs::remove_file(&self.ca_file);
    }
}

/// A listening socket on 127.0.0.1:`port` that can be rebound right after a previous fake on
/// the same port stopped.
fn bind(port: u16) -> Result<TcpListener> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket
        .bind(addr)
        .with_context(|| format!("binding the fake APIM to {addr}"))?;
    Ok(socket.listen(1024)?)
}

/// Accepts TLS connections and serves each with HTTP/1.1 (with upgrades). Aborting this task
/// drops the listener and every connection task.
async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, app: Router) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    conns.spawn(serve_connection(tcp, acceptor.clone(), app.clone()));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn serve_connection(tcp: TcpStream, acceptor: TlsAcceptor, app: Router) {
    let _ = tcp.set_nodelay(true);
    let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
    else {
        return;
    };
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(tls), TowerToHyperService::new(app))
        .await;
}

fn router(shared: Arc<Shared>) -> Router {
    let publisher = "/api/am/publisher/v4/apis";
    let mut app = Router::new()
        .route("/internal/gateway/.well-known", get(well_known))
        .route("/oauth2/token", post(token))
        .route(publisher, get(list_apis))
        .route(&format!("{publisher}/import"), post(import_api))
        .route(
            &format!("{publisher}/{{id}}/undeploy-revision"),
            post(undeploy_revision),
        )
        .route(&format!("{publisher}/{{id}}/swagger"), get(swagger));
    let gateway_path = shared.cfg.gateway_path.trim().trim_end_matches('/');
    if !shared.cfg.gateway_path.trim().is_empty() {
        let prefix = if gateway_path.starts_with('/') {
            gateway_path.to_string()
        } else {
            format!("/{gateway_path}")
        };
        app = app.route(&format!("{prefix}/ws/gateways/connect"), get(connect_ws));
    }
    app.fallback(not_found)
        .layer(DefaultBodyLimit::max(64 * 1024 * 1024))
        .layer(middleware::from_fn_with_state(shared.clone(), record))
        .with_state(shared)
}

/// Records every request with the status finally answered.
async fn record(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| req.uri().path().to_string());
    let index = {
        let mut inner = shared.lock();
        inner.calls.push(Call {
            method: req.method().as_str().to_string(),
            path,
            status: 0,
        });
        inner.calls.len() - 1
    };
    let response = next.run(req).await;
    if let Some(call) = shared.lock().calls.get_mut(index) {
        call.status = response.status().as_u16();
    }
    response
}

fn json_response(status: u16, body: Json) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// An APIM publisher error: `{"code": status, "message": ...}`.
fn apim_error(status: u16, message: impl Into<String>) -> Response {
    json_response(status, json!({"code": status, "message": message.into()}))
}

/// An OAuth2 token endpoint error.
fn oauth_error(status: u16, error: &str, description: impl Into<String>) -> Response {
    json_response(
        status,
        json!({"error": error, "error_description": description.into()}),
    )
}

async fn not_found(uri: Uri) -> Response {
    apim_error(404, format!("no resource at {}", uri.path()))
}

async fn well_known(State(shared): State<Arc<Shared>>) -> Response {
    if shared.cfg.gateway_path.is_empty() {
        json_response(200, json!({}))
    } else {
        json_response(200, json!({"gatewayPath": shared.cfg.gateway_path}))
    }
}

// ---------------------------------------------------------------------------------------------
// Control WebSocket
// ---------------------------------------------------------------------------------------------

async fn connect_ws(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if let Some(expected) = &shared.cfg.registration_token {
        let given = headers.get("api-key").and_then(|v| v.to_str().ok());
        if given != Some(expected.as_str()) {
            let why = if given.is_some() {
                "invalid api-key"
            } else {
                "missing api-key header"
            };
            return apim_error(401, why);
        }
    }
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(rejection) => return rejection.into_response(),
    };
    // Subscribe before upgrading so that a cut requested from now on reaches this socket.
    let cut = shared.cut_websockets.subscribe();
    upgrade.on_upgrade(move |socket| control_channel(socket, shared, cut))
}

/// Keeps `ws_open` right however the socket task ends (including abort).
struct OpenSocket(Arc<Shared>);

impl Drop for OpenSocket {
    fn drop(&mut self) {
        let mut inner = self.0.lock();
        inner.ws_open = inner.ws_open.saturating_sub(1);
    }
}

async fn control_channel(
    mut socket: WebSocket,
    shared: Arc<Shared>,
    mut cut: watch::Receiver<u64>,
) {
    let ack = json!({
        "type": "connection.ack",
        "gatewayId": shared.cfg.gateway_name,
        "connectionId": uuid::Uuid::new_v4().to_string(),
        "timestamp": rfc3339_now(),
    });
    {
        let mut inner = shared.lock();
        inner.ws_connects += 1;
        inner.ws_open += 1;
    }
    let _open = OpenSocket(shared.clone());
    if socket.send(Message::text(ack.to_string())).await.is_err() {
        let mut inner = shared.lock();
        inner.ws_connects = inner.ws_connects.saturating_sub(1);
        return;
    }
    let every = shared.cfg.ping_interval.max(Duration::from_millis(1));
    let mut pings = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            // Returning drops the socket without a close frame: the TCP connection just ends.
            _ = cut.changed() => return,
            _ = pings.tick() => {
                if socket.send(Message::Ping(Bytes::new())).await.is_err() {
                    return;
                }
            }
            received = socket.recv() => match received {
                Some(Ok(Message::Ping(payload))) => {
                    if socket.send(Message::Pong(payload)).await.is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            },
        }
    }
}

/// Now as RFC 3339 UTC with milliseconds, e.g. `2025-01-31T12:00:00.000Z`.
fn rfc3339_now() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month as u32, day as u32)
}

// ---------------------------------------------------------------------------------------------
// OAuth2 token endpoint
// ---------------------------------------------------------------------------------------------

const REQUIRED_SCOPES: [&str; 2] = ["apim:api_import_export", "apim:api_view"];

async fn token(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    if shared.lock().mode == Mode::Unauthorized {
        return oauth_error(401, "invalid_client", "client authentication failed");
    }
    let headers = req.headers().clone();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime != "application/x-www-form-urlencoded" {
        return oauth_error(
            400,
            "invalid_request",
            format!("Content-Type must be application/x-www-form-urlencoded, got {content_type:?}"),
        );
    }
    let form = match Form::<Vec<(String, String)>>::from_request(req, &()).await {
        Ok(Form(form)) => form,
        Err(e) => return oauth_error(400, "invalid_request", e.body_text()),
    };
    let mut fields: BTreeMap<&str, &str> = BTreeMap::new();
    for (k, v) in &form {
        if fields.insert(k, v).is_some() {
            return oauth_error(
                400,
                "invalid_request",
                format!("form field {k} given more than once"),
            );
        }
    }
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let grant = fields.get("grant_type").copied().unwrap_or("");
    match grant {
        "client_credentials" => {
            let Some(authorization) = authorization else {
                return oauth_error(
                    401,
                    "invalid_client",
                    "client_credentials grant needs Authorization: Basic base64(client_id:client_secret)",
                );
            };
            match basic_credentials(authorization) {
                Some((id, secret))
                    if id == shared.cfg.client_id && secret == shared.cfg.client_secret => {}
                Some(_) => {
                    return oauth_error(401, "invalid_client", "unknown client id or wrong secret");
                }
                None => {
                    return oauth_error(
                        401,
                        "invalid_client",
                        format!(
                            "Authorization is not HTTP Basic base64(id:secret): {authorization:?}"
                        ),
                    );
                }
            }
        }
        "password" => {
            if authorization.is_some() {
                return oauth_error(
                    400,
                    "invalid_request",
                    "the password grant must be sent without an Authorization header",
                );
            }
            let (user, pass) = (fields.get("username"), fields.get("password"));
            let (Some(user), Some(pass)) = (user, pass) else {
                return oauth_error(
                    400,
                    "invalid_request",
                    "the password grant needs the username and password form fields",
                );
            };
            if *user != shared.cfg.username || *pass != shared.cfg.password {
                return oauth_error(401, "invalid_client", "wrong username or password");
            }
        }
        "" => {
            return oauth_error(400, "invalid_request", "missing grant_type");
        }
        other => {
            return oauth_error(
                400,
                "unsupported_grant_type",
                format!("grant_type {other:?} is not supported"),
            );
        }
    }
    let scope = fields.get("scope").copied().unwrap_or("");
    let requested: BTreeSet<&str> = scope.split_whitespace().collect();
    let missing: Vec<&str> = REQUIRED_SCOPES
        .iter()
        .copied()
        .filter(|s| !requested.contains(s))
        .collect();
    if !missing.is_empty() {
        return oauth_error(
            400,
            "invalid_scope",
            format!(
                "scope {scope:?} lacks {} (space separated)",
                missing.join(" and ")
            ),
        );
    }
    let access_token = uuid::Uuid::new_v4().simple().to_string();
    {
        let mut inner = shared.lock();
        inner.tokens.insert(access_token.clone());
        inner.tokens_issued += 1;
    }
    json_response(
        200,
        json!({
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": 3600,
            "scope": scope,
        }),
    )
}

/// `(user, password)` of an HTTP Basic `Authorization` value.
fn basic_credentials(authorization: &str) -> Option<(String, String)> {
    let (scheme, encoded) = authorization.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

// ---------------------------------------------------------------------------------------------
// Publisher REST API
// ---------------------------------------------------------------------------------------------

/// What every publisher call goes through first: forced failures and unavailability, slowness,
/// then the bearer token.
async fn publisher_gate(shared: &Shared, headers: &HeaderMap) -> Result<(), Response> {
    let (fail, mode) = {
        let mut inner = shared.lock();
        let fail = if inner.fail_next > 0 {
            inner.fail_next -= 1;
            true
        } else {
            inner.mode == Mode::Unavailable
        };
        (fail, inner.mode)
    };
    if let Mode::Slow(delay) = mode {
        tokio::time::sleep(delay).await;
    }
    if fail {
        return Err(apim_error(503, "Service Unavailable"));
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let known = token.is_some_and(|t| shared.lock().tokens.contains(t));
    if !known {
        return Err(json_response(
            401,
            json!({
                "code": 900901,
                "message": "Invalid Credentials",
                "description": "Invalid Credentials. Make sure you have provided the correct security credentials",
            }),
        ));
    }
    Ok(())
}

const IMPORT_QUERY: [(&str, &str); 4] = [
    ("preserveProvider", "false"),
    ("overwrite", "true"),
    ("dryRun", "false"),
    ("rotateRevision", "true"),
];

/// Checks the import's query: exactly the four parameters, each with its value.
fn check_import_query(uri: &Uri) -> Result<(), String> {
    let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map_err(|e| format!("unreadable query string: {}", e.body_text()))?;
    let mut seen = BTreeMap::new();
    for (k, v) in &pairs {
        if !IMPORT_QUERY.iter().any(|(name, _)| name == k) {
            return Err(format!("unexpected query parameter {k}"));
        }
        if seen.insert(k.as_str(), v.as_str()).is_some() {
            return Err(format!("query parameter {k} given more than once"));
        }
    }
    for (name, value) in IMPORT_QUERY {
        match seen.get(name) {
            None => {
                return Err(format!(
                    "missing query parameter {name} (must be {name}={value})"
                ));
            }
            Some(v) if *v != value => {
                return Err(format!("query parameter {name} must be {value}, got {v:?}"));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

async fn import_api(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    uri: Uri,
    multipart: Result<Multipart, MultipartRejection>,
) -> Response {
    if let Err(r) = publisher_gate(&shared, &headers).await {
        return r;
    }
    if let Err(message) = check_import_query(&uri) {
        return apim_error(400, message);
    }
    let zip = match read_file_field(multipart).await {
        Ok(zip) => zip,
        Err(message) => return apim_error(400, message),
    };
    let project = match parse_project(&zip, &shared.cfg.gateway_name) {
        Ok(p) => p,
        Err(message) => return apim_error(400, message),
    };
    let revision = uuid::Uuid::new_v4().to_string();
    let mut inner = shared.lock();
    let existing = inner
        .apis
        .iter_mut()
        .find(|a| a.name == project.name && a.version == project.version);
    let (status, id) = match existing {
        Some(api) => {
            api.context = project.context;
            api.endpoint_url = project.endpoint_url;
            api.operations = project.operations;
            api.imports += 1;
            api.revisions.push(revision.clone());
            api.deployed_revision = Some(revision.clone());
            api.gateway_environment = project.gateway_environment;
            api.swagger = project.swagger;
            api.api_yaml = project.api_yaml;
            (200, api.id.clone())
        }
        None => {
            let id = uuid::Uuid::new_v4().to_string();
            inner.apis.push(ImportedApi {
                id: id.clone(),
                name: project.name,
                version: project.version,
                context: project.context,
                endpoint_url: project.endpoint_url,
                operations: project.operations,
                imports: 1,
                revisions: vec![revision.clone()],
                deployed_revision: Some(revision.clone()),
                gateway_environment: project.gateway_environment,
                swagger: project.swagger,
                api_yaml: project.api_yaml,
            });
            (201, id)
        }
    };
    drop(inner);
    json_response(status, json!({"id": id, "revision": revision}))
}

/// The bytes of the single multipart field `file`.
async fn read_file_field(
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Bytes, String> {
    let mut multipart =
        multipart.map_err(|e| format!("expected a multipart/form-data body: {}", e.body_text()))?;
    let mut file = None;
    let mut others = Vec::new();
    loop {
        let field = multipart
            .next_field()
            .await
            .map_err(|e| format!("malformed multipart body: {}", e.body_text()))?;
        let Some(field) = field else { break };
        let name = field.name().unwrap_or("").to_string();
        if name == "file" {
            if file.is_some() {
                return Err("multipart field file given more than once".into());
            }
            let bytes = field
                .bytes()
                .await
                .map_err(|e| format!("malformed multipart field file: {}", e.body_text()))?;
            file = Some(bytes);
        } else {
            others.push(name);
        }
    }
    file.ok_or_else(|| format!("multipart body has no field named file (fields: {others:?})"))
}

/// What the fake keeps of a valid import.
struct Project {
    name: String,
    version: String,
    context: String,
    endpoint_url: String,
    operations: Vec<(String, String)>,
    gateway_environment: String,
    swagger: String,
    api_yaml: String,
}

const VERBS: [&str; 7] = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"];

/// Unzips and checks an import project; the error is the message APIM answers with.
fn parse_project(zip: &[u8], gateway_name: &str) -> Result<Project, String> {
    let files = unzip(zip)?;
    let mut dirs = BTreeSet::new();
    for name in files.keys() {
        match name.split_once('/') {
            Some((dir, _)) => {
                dirs.insert(dir.to_string());
            }
            None => {
                return Err(format!(
                    "zip has {name} at its top level: everything must be inside one <name>-<version>/ directory"
                ));
            }
        }
    }
    let dir = match dirs.len() {
        1 => dirs.into_iter().next().unwrap_or_default(),
        0 => return Err("zip holds no files".into()),
        _ => {
            return Err(format!(
                "zip must hold exactly one top-level directory, found {}: {:?}",
                dirs.len(),
                dirs
            ));
        }
    };
    let file = |rel: &str| -> Result<&String, String> {
        files
            .get(&format!("{dir}/{rel}"))
            .ok_or_else(|| format!("zip lacks {dir}/{rel}"))
    };
    let api_yaml = file("api.yaml")?.clone();
    let environments_yaml = file("deployment_environments.yaml")?;
    let swagger = file("Definitions/swagger.yaml")?.clone();

    let api = check_api_yaml(&api_yaml)?;
    let expected_dir = format!("{}-{}", api.name, api.version);
    if dir != expected_dir {
        return Err(format!(
            "top-level directory {dir:?} must be data.name + \"-\" + data.version = {expected_dir:?}"
        ));
    }
    let gateway_environment = check_environments(environments_yaml, gateway_name)?;
    check_swagger(&swagger, &api.operations)?;
    Ok(Project {
        name: api.name,
        version: api.version,
        context: api.context,
        endpoint_url: api.endpoint_url,
        operations: api.operations,
        gateway_environment,
        swagger,
        api_yaml,
    })
}

/// Every file of the zip (directories left out) by name, as UTF-8 text.
fn unzip(zip: &[u8]) -> Result<BTreeMap<String, String>, String> {
    let mut archive = zip::ZipArchive::new(Cursor::new(zip))
        .map_err(|e| format!("multipart field file is not a zip archive: {e}"))?;
    let mut files = BTreeMap::new();
    for i in 0..archive.len() {
        let mut entry = archive
            .by_index(i)
            .map_err(|e| format!("zip entry {i} is unreadable: {e}"))?;
        let name = entry
            .name()
            .map_err(|e| format!("zip entry {i} has an unreadable name: {e}"))?
            .to_string();
        if entry.enclosed_name().is_none() {
            return Err(format!("zip entry {name:?} escapes the archive"));
        }
        if entry.is_dir() {
            continue;
        }
        let mut text = String::new();
        entry
            .read_to_string(&mut text)
            .map_err(|e| format!("zip entry {name} is not readable UTF-8 text: {e}"))?;
        if files.insert(name.clone(), text).is_some() {
            return Err(format!("zip holds {name} twice"));
        }
    }
    Ok(files)
}

/// The fields of `api.yaml` that were checked.
struct ApiYaml {
    name: String,
    version: String,
    context: String,
    endpoint_url: String,
    operations: Vec<(String, String)>,
}

fn parse_yaml(file: &str, text: &str) -> Result<Yaml, String> {
    serde_yaml_ng::from_str(text).map_err(|e| format!("{file} is not valid YAML: {e}"))
}

/// The value at a dotted `path` of mappings, if any.
fn at<'a>(root: &'a Yaml, path: &str) -> Option<&'a Yaml> {
    path.split('.').try_fold(root, |v, key| v.get(key))
}

/// The non-empty string at the dotted `path` of `root`.
fn string_at<'a>(root: &'a Yaml, file: &str, path: &str) -> Result<&'a str, String> {
    string_in(root, file, path, path)
}

/// The non-empty string at the dotted `path` of `node`, named `label` in messages.
fn string_in<'a>(node: &'a Yaml, file: &str, path: &str, label: &str) -> Result<&'a str, String> {
    match at(node, path) {
        None | Some(Yaml::Null) => Err(format!("{file}: {label} is missing")),
        Some(Yaml::String(s)) if s.is_empty() => Err(format!("{file}: {label} is empty")),
        Some(Yaml::String(s)) => Ok(s),
        Some(other) => Err(format!(
            "{file}: {label} must be a string, got {}",
            describe(other)
        )),
    }
}

/// Checks that the string at `path` equals `expected`.
fn expect_string(root: &Yaml, file: &str, path: &str, expected: &str) -> Result<(), String> {
    let got = string_at(root, file, path)?;
    if got != expected {
        return Err(format!("{file}: {path} must be {expected:?}, got {got:?}"));
    }
    Ok(())
}

/// A short rendering of a YAML value for messages.
fn describe(v: &Yaml) -> String {
    serde_yaml_ng::to_string(v)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| format!("{v:?}"))
}

fn check_url(file: &str, path: &str, url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| format!("{file}: {path} {url:?} is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(format!(
            "{file}: {path} {url:?} must be an http or https URL"
        ));
    }
    Ok(())
}

fn check_api_yaml(text: &str) -> Result<ApiYaml, String> {
    const F: &str = "api.yaml";
    let root = parse_yaml(F, text)?;
    expect_string(&root, F, "type", "api")?;
    string_at(&root, F, "version")?;
    if !matches!(root.get("data"), Some(Yaml::Mapping(_))) {
        return Err(format!("{F}: data must be a mapping"));
    }
    let name = string_at(&root, F, "data.name")?.to_string();
    let version = string_at(&root, F, "data.version")?.to_string();
    let context = string_at(&root, F, "data.context")?.to_string();
    if !context.starts_with('/') {
        return Err(format!(
            "{F}: data.context must start with \"/\", got {context:?}"
        ));
    }
    expect_string(&root, F, "data.type", "HTTP")?;
    expect_string(&root, F, "data.endpointConfig.endpoint_type", "http")?;
    let endpoint_url = string_at(&root, F, "data.endpointConfig.production_endpoints.url")?;
    check_url(
        F,
        "data.endpointConfig.production_endpoints.url",
        endpoint_url,
    )?;
    let sandbox_url = string_at(&root, F, "data.endpointConfig.sandbox_endpoints.url")?;
    check_url(F, "data.endpointConfig.sandbox_endpoints.url", sandbox_url)?;
    let operations = match at(&root, "data.operations") {
        Some(Yaml::Sequence(ops)) if !ops.is_empty() => ops,
        Some(Yaml::Sequence(_)) => return Err(format!("{F}: data.operations is empty")),
        None | Some(Yaml::Null) => return Err(format!("{F}: data.operations is missing")),
        Some(other) => {
            return Err(format!(
                "{F}: data.operations must be a list, got {}",
                describe(other)
            ));
        }
    };
    let mut checked = Vec::new();
    for (i, op) in operations.iter().enumerate() {
        let target = string_in(op, F, "target", &format!("data.operations[{i}].target"))?;
        if !target.starts_with('/') {
            return Err(format!(
                "{F}: data.operations[{i}].target must start with \"/\", got {target:?}"
            ));
        }
        let verb = string_in(op, F, "verb", &format!("data.operations[{i}].verb"))?;
        if !VERBS.contains(&verb) {
            return Err(format!(
                "{F}: data.operations[{i}].verb must be one of {}, got {verb:?}",
                VERBS.join("/")
            ));
        }
        checked.push((verb.to_string(), target.to_string()));
    }
    match at(&root, "data.initiatedFromGateway") {
        Some(Yaml::Bool(true)) => {}
        None => return Err(format!("{F}: data.initiatedFromGateway is missing")),
        Some(other) => {
            return Err(format!(
                "{F}: data.initiatedFromGateway must be true, got {}",
                describe(other)
            ));
        }
    }
    expect_string(&root, F, "data.gatewayVendor", "wso2")?;
    Ok(ApiYaml {
        name,
        version,
        context,
        endpoint_url: endpoint_url.to_string(),
        operations: checked,
    })
}

/// Checks `deployment_environments.yaml` and returns the environment it names.
fn check_environments(text: &str, gateway_name: &str) -> Result<String, String> {
    const F: &str = "deployment_environments.yaml";
    let root = parse_yaml(F, text)?;
    expect_string(&root, F, "type", "deployment_environments")?;
    let entries = match root.get("data") {
        Some(Yaml::Sequence(entries)) if !entries.is_empty() => entries,
        Some(Yaml::Sequence(_)) => return Err(format!("{F}: data is empty")),
        None | Some(Yaml::Null) => return Err(format!("{F}: data is missing")),
        Some(other) => {
            return Err(format!("{F}: data must be a list, got {}", describe(other)));
        }
    };
    for (i, entry) in entries.iter().enumerate() {
        let label = format!("data[{i}].deploymentEnvironment");
        let env = string_in(entry, F, "deploymentEnvironment", &label)?;
        if env != gateway_name {
            return Err(format!(
                "{F}: data[{i}].deploymentEnvironment is {env:?} but the gateway environment is {gateway_name:?}"
            ));
        }
    }
    Ok(gateway_name.to_string())
}

/// Checks `Definitions/swagger.yaml` against the operations of `api.yaml`.
fn check_swagger(text: &str, operations: &[(String, String)]) -> Result<(), String> {
    const F: &str = "Definitions/swagger.yaml";
    let root = parse_yaml(F, text)?;
    let openapi = string_at(&root, F, "openapi")?;
    if !openapi.starts_with("3.") {
        return Err(format!("{F}: openapi must be 3.x, got {openapi:?}"));
    }
    let paths = match root.get("paths") {
        Some(Yaml::Mapping(paths)) => paths,
        None | Some(Yaml::Null) => return Err(format!("{F}: paths is missing")),
        Some(other) => {
            return Err(format!(
                "{F}: paths must be a mapping, got {}",
                describe(other)
            ));
        }
    };
    let targets: BTreeSet<&str> = operations.iter().map(|(_, t)| t.as_str()).collect();
    for key in paths.keys() {
        let key = key
            .as_str()
            .ok_or_else(|| format!("{F}: paths has a non-string key {}", describe(key)))?;
        if !targets.contains(key) {
            return Err(format!(
                "{F}: paths has {key:?}, which is the target of no operation in api.yaml"
            ));
        }
    }
    for (verb, target) in operations {
        let Some(item) = paths.get(target.as_str()) else {
            return Err(format!(
                "{F}: paths lacks {target:?} (an operation target in api.yaml)"
            ));
        };
        let method = verb.to_ascii_lowercase();
        if item.get(method.as_str()).is_none() {
            return Err(format!(
                "{F}: paths.{target} lacks the lower-case method key {method:?} for operation {verb} {target}"
            ));
        }
    }
    Ok(())
}

async fn undeploy_revision(
    State(shared): State<Arc<Shared>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    if let Err(r) = publisher_gate(&shared, &headers).await {
        return r;
    }
    let query = match Query::<Vec<(String, String)>>::try_from_uri(&uri) {
        Ok(Query(q)) => q,
        Err(e) => return apim_error(400, format!("unreadable query string: {}", e.body_text())),
    };
    let revisions: Vec<&str> = query
        .iter()
        .filter(|(k, _)| k == "revisionId")
        .map(|(_, v)| v.as_str())
        .collect();
    let revision = match revisions.as_slice() {
        [r] if !r.is_empty() => r.to_string(),
        [] | [_] => return apim_error(400, "missing query parameter revisionId"),
        _ => return apim_error(400, "query parameter revisionId given more than once"),
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type
        .split(';')
        .next()
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
    {
        return apim_error(
            415,
            format!("Content-Type must be application/json, got {content_type:?}"),
        );
    }
    let expected = json!([{"name": shared.cfg.gateway_name, "displayOnDevportal": false}]);
    match serde_json::from_slice::<Json>(&body) {
        Ok(given) if given == expected => {}
        Ok(given) => {
            return apim_error(400, format!("body must be {expected}, got {given}"));
        }
        Err(e) => return apim_error(400, format!("body is not JSON: {e}")),
    }
    let mut inner = shared.lock();
    let Some(api) = inner.apis.iter_mut().find(|a| a.id == id) else {
        return apim_error(404, format!("API {id} not found"));
    };
    if api.deployed_revision.as_deref() != Some(revision.as_str()) {
        let known = api.revisions.contains(&revision);
        let message = if known {
            format!("revision {revision} of API {id} is not deployed")
        } else {
            format!("revision {revision} not found for API {id}")
        };
        return apim_error(404, message);
    }
    api.deployed_revision = None;
    drop(inner);
    json_response(201, json!([]))
}

async fn swagger(
    State(shared): State<Arc<Shared>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = publisher_gate(&shared, &headers).await {
        return r;
    }
    let text = shared
        .lock()
        .apis
        .iter()
        .find(|a| a.id == id)
        .map(|a| a.swagger.clone());
    match text {
        Some(text) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/yaml")],
            text,
        )
            .into_response(),
        None => apim_error(404, format!("API {id} not found")),
    }
}

async fn list_apis(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(r) = publisher_gate(&shared, &headers).await {
        return r;
    }
    let list: Vec<Json> = shared
        .lock()
        .apis
        .iter()
        .map(|a| {
            json!({
                "id": a.id,
                "name": a.name,
                "version": a.version,
                "context": a.context,
                "lifeCycleStatus": "PUBLISHED",
            })
        })
        .collect();
    json_response(200, json!({"count": list.len(), "list": list}))
}

#[cfg(test)]
mod tests {
    use super::civil_from_days;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_723 + 31 + 28), (2024, 2, 29));
        assert_eq!(civil_from_days(19_723 + 31 + 29), (2024, 3, 1));
        assert_eq!(civil_from_days(10_956), (1999, 12, 31));
    }
}
