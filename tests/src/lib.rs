//! Test harness: starts the real `gateway-controller` binary (which runs the real Envoy) on free
//! loopback ports with its own data directory, a local echo upstream, and HTTP helpers that speak
//! to both the management API and the router as a user would.

pub mod fake_apim;
pub mod stats;
pub mod subscriber;
pub mod upstream;
pub mod wrk;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

pub use upstream::EchoUpstream;

/// `Authorization` header of the seed's `admin:admin` user.
pub const ADMIN_AUTH: &str = "Basic YWRtaW46YWRtaW4=";

/// A free TCP port on 127.0.0.1 (bound, then released), never the same twice in one test
/// process: Envoy listens with `SO_REUSEPORT`, so two gateways of parallel tests handed the same
/// port would silently share it instead of failing.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("no free port: {e}"));
        let mut seen = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
        if seen.insert(port) {
            return port;
        }
    }
}

/// Path of a binary built next to the running test executable (`target/<profile>/<name>`).
pub fn sibling_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join(name)
}

/// Polls `check` until it returns `Some`, or fails after `patience`. For waiting on eventual
/// consistency, not for asserting on time.
pub async fn eventually<T, F, Fut>(patience: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + patience;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {patience:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Generous patience for things that normally take milliseconds.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Ports and paths of one gateway under test.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Management API port.
    pub mgmt_port: u16,
    /// ADS port.
    pub xds_port: u16,
    /// Envoy listener port.
    pub router_port: u16,
    /// Envoy admin port.
    pub admin_port: u16,
    /// Data directory (SQLite, bootstrap).
    pub data_dir: PathBuf,
    /// Policy stream port.
    pub policy_port: u16,
    /// Policy engine (ext_proc) port.
    pub engine_port: u16,
    /// Whether the controller runs the data plane (Envoy and the policy engine) itself; when
    /// false the harness runs them, so they outlive controller restarts.
    pub managed_data_plane: bool,
    /// Envoy worker threads.
    pub envoy_concurrency: u32,
    /// WebSub hub port.
    pub websub_port: u16,
    /// Extra `key = value` lines of the `[websub]` table.
    pub websub_toml: String,
    /// Extra TOML appended to the generated config.
    pub extra_toml: String,
}

impl GatewayConfig {
    /// Fresh ports and a fresh data directory.
    pub fn new(name: &str) -> Self {
        let data_dir = std::env::temp_dir().join(format!(
            "gw-test-{name}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        Self {
            mgmt_port: free_port(),
            xds_port: free_port(),
            router_port: free_port(),
            admin_port: free_port(),
            data_dir,
            policy_port: free_port(),
            engine_port: free_port(),
            managed_data_plane: true,
            envoy_concurrency: 1,
            websub_port: free_port(),
            websub_toml: String::new(),
            extra_toml: String::new(),
        }
    }

    fn render(&self) -> String {
        format!(
            r#"
[controller.server]
host = "127.0.0.1"
port = {mgmt}
[controller.xds]
host = "127.0.0.1"
port = {xds}
[controller.policy_server]
host = "127.0.0.1"
port = {policy}
[policy_engine]
port = {engine}
managed = {managed}
[controller.storage]
data_dir = "{data}"
[controller.logging]
level = "info"
[controller.auth.basic]
enabled = true
[[controller.auth.basic.users]]
username = "admin"
password = "admin"
roles = ["admin"]
[[controller.auth.basic.users]]
username = "dev"
password = "dev-password"
roles = ["developer"]
[[controller.auth.basic.users]]
username = "consumer"
password = "consumer-password"
roles = ["consumer"]
[router]
listener_host = "127.0.0.1"
listener_port = {router}
admin_port = {admin}
managed = {managed}
concurrency = {concurrency}
[websub]
port = {websub}
{websub_extra}
{extra}
"#,
            mgmt = self.mgmt_port,
            xds = self.xds_port,
            data = self.data_dir.display(),
            router = self.router_port,
            admin = self.admin_port,
            managed = self.managed_data_plane,
            policy = self.policy_port,
            engine = self.engine_port,
            concurrency = self.envoy_concurrency,
            websub = self.websub_port,
            websub_extra = self.websub_toml,
            extra = self.extra_toml,
        )
    }
}

/// A running gateway: the controller process (and, when managed, its Envoy child).
pub struct Gateway {
    /// Its configuration.
    pub config: GatewayConfig,
    controller: Option<Child>,
    external_envoy: Option<Child>,
    external_engine: Option<Child>,
    client: Client,
}

fn client() -> Client {
    Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_default()
}

impl Gateway {
    /// Starts a gateway with fresh ports and data, and waits until both planes answer.
    pub async fn start(name: &str) -> Result<Self> {
        Self::start_with(GatewayConfig::new(name)).await
    }

    /// Starts a gateway with the given configuration and waits until it is ready.
    pub async fn start_with(config: GatewayConfig) -> Result<Self> {
        std::fs::create_dir_all(&config.data_dir)?;
        let mut gw = Self {
            config,
            controller: None,
            external_envoy: None,
            external_engine: None,
            client: client(),
        };
        if !gw.config.managed_data_plane {
            gw.start_external_envoy()?;
            gw.start_engine()?;
        }
        gw.start_controller().await?;
        Ok(gw)
    }

    fn start_external_envoy(&mut self) -> Result<()> {
        let path = self.config.data_dir.join("external-envoy.json");
        gateway_envoy::write_bootstrap(
            &path,
            &gateway_envoy::BootstrapSettings {
                node_id: "test-router".into(),
                xds_host: "127.0.0.1".into(),
                xds_port: self.config.xds_port,
                admin_host: "127.0.0.1".into(),
                admin_port: self.config.admin_port,
            },
        )?;
        let cmd = gateway_envoy::EnvoyCommand {
            binary: gateway_envoy::find_binary(None)?,
            config_path: path,
            concurrency: Some(self.config.envoy_concurrency),
            log_level: "warning".into(),
            log_file: Some(self.config.data_dir.join("envoy.log")),
        };
        self.external_envoy = Some(cmd.spawn()?);
        Ok(())
    }

    /// Starts (or restarts) a policy engine run by the harness, following the controller.
    pub fn start_engine(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.config.data_dir.join("engine.log"))?;
        let mut cmd = Command::new(sibling_binary("gateway-policy-engine"));
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{}", self.config.engine_port))
            .arg("--controller")
            .arg(format!("http://127.0.0.1:{}", self.config.policy_port))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        gateway_envoy::die_with_parent(&mut cmd);
        let child = cmd.spawn().context("starting gateway-policy-engine")?;
        self.external_engine = Some(child);
        Ok(())
    }

    /// Kills the harness-run policy engine (SIGKILL) and waits for it.
    pub async fn kill_engine(&mut self) -> Result<()> {
        if let Some(mut c) = self.external_engine.take() {
            c.start_kill()?;
            c.wait().await?;
        }
        Ok(())
    }

    /// Starts (or restarts) the controller on the same configuration and data, and waits until
    /// the management API is healthy and Envoy is ready.
    pub async fn start_controller(&mut self) -> Result<()> {
        let config_path = self.config.data_dir.join("config.toml");
        std::fs::write(&config_path, self.config.render())?;
        let bin = sibling_binary("gateway-controller");
        if !bin.is_file() {
            bail!(
                "{} not built: run `cargo build --workspace` before the tests",
                bin.display()
            );
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.config.data_dir.join("controller.log"))?;
        let mut cmd = Command::new(bin);
        cmd.arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        gateway_envoy::die_with_parent(&mut cmd);
        let child = cmd.spawn().context("starting gateway-controller")?;
        self.controller = Some(child);
        let c = self.client.clone();
        let health = format!("http://127.0.0.1:{}/health", self.config.mgmt_port);
        let ready = format!("http://127.0.0.1:{}/ready", self.config.admin_port);
        eventually(PATIENCE, "management API health", || {
            let (c, u) = (c.clone(), health.clone());
            async move {
                c.get(&u)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
            }
        })
        .await
        .with_context(|| self.log_tail())?;
        eventually(PATIENCE, "Envoy ready", || {
            let (c, u) = (c.clone(), ready.clone());
            async move {
                c.get(&u)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
            }
        })
        .await
        .with_context(|| self.log_tail())?;
        Ok(())
    }

    /// The whole controller log so far (across restarts).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.config.data_dir.join("controller.log")).unwrap_or_default()
    }

    /// The last lines of the controller log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Process id of the controller, while it runs.
    pub fn controller_pid(&self) -> Option<u32> {
        self.controller.as_ref().and_then(Child::id)
    }

    /// Kills the controller with SIGKILL (a crash) and waits for it and its Envoy to be gone.
    pub async fn kill_controller(&mut self) -> Result<()> {
        if let Some(mut c) = self.controller.take() {
            c.start_kill()?;
            c.wait().await?;
        }
        self.wait_router_released().await
    }

    /// Stops the controller with SIGTERM and waits for a clean exit.
    pub async fn stop_controller(&mut self) -> Result<()> {
        if let Some(mut c) = self.controller.take() {
            if let Some(pid) = c.id() {
                // SAFETY: signalling our own child.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGTERM);
                }
            }
            let status = tokio::time::timeout(PATIENCE, c.wait()).await??;
            if !status.success() {
                bail!("controller exited with {status}");
            }
        }
        self.wait_router_released().await
    }

    async fn wait_router_released(&self) -> Result<()> {
        if !self.config.managed_data_plane {
            return Ok(());
        }
        let port = self.config.router_port;
        eventually(
            PATIENCE,
            "managed Envoy to release its port",
            || async move {
                std::net::TcpListener::bind(("127.0.0.1", port))
                    .ok()
                    .map(|_| ())
            },
        )
        .await
    }

    /// Management URL for `path` (e.g. `/rest-apis`).
    pub fn mgmt_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.config.mgmt_port)
    }

    /// Router URL for `path`.
    pub fn router_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.config.router_port)
    }

    /// The shared HTTP client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// A management request as admin.
    pub fn mgmt(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.mgmt_url(path))
            .header("Authorization", ADMIN_AUTH)
    }

    /// Sends a management request with a JSON body and returns status and parsed body.
    pub async fn send_json(
        &self,
        method: Method,
        path: &str,
        body: &Value,
    ) -> Result<(StatusCode, Value)> {
        let r = self
            .mgmt(method, path)
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
            .await?;
        Ok((r.status(), r.json().await.unwrap_or(Value::Null)))
    }

    /// `POST /rest-apis` with a JSON body.
    pub async fn create_api(&self, api: &Value) -> Result<(StatusCode, Value)> {
        self.send_json(Method::POST, "/rest-apis", api).await
    }

    /// `GET` a management path as admin.
    pub async fn get_json(&self, path: &str) -> Result<(StatusCode, Value)> {
        let r = self.mgmt(Method::GET, path).send().await?;
        Ok((r.status(), r.json().await.unwrap_or(Value::Null)))
    }

    /// `GET /metrics` (Prometheus text) as admin.
    pub async fn metrics_text(&self) -> Result<String> {
        let r = self.mgmt(Method::GET, "/metrics").send().await?;
        if !r.status().is_success() {
            bail!("GET /metrics answered {}", r.status());
        }
        Ok(r.text().await?)
    }

    /// A request through the router; returns status and body text.
    pub async fn route(&self, method: Method, path: &str) -> Result<(StatusCode, String)> {
        let r = self
            .client
            .request(method, self.router_url(path))
            .send()
            .await?;
        Ok((r.status(), r.text().await?))
    }

    /// Waits until `GET path` through the router answers `status`.
    pub async fn wait_route_status(&self, path: &str, status: u16) -> Result<()> {
        self.wait_route(Method::GET, path, status).await
    }

    /// Waits until `method path` through the router answers `status`.
    pub async fn wait_route(&self, method: Method, path: &str, status: u16) -> Result<()> {
        let what = format!("{method} {path} -> {status}");
        let last = Mutex::new(String::new());
        eventually(PATIENCE, &what, || {
            let m = method.clone();
            let last = &last;
            async move {
                let answer = self.route(m, path).await;
                let seen = match &answer {
                    Ok((s, body)) => format!("{s} {body}"),
                    Err(e) => format!("{e:#}"),
                };
                *last.lock().unwrap_or_else(|p| p.into_inner()) = seen;
                answer
                    .ok()
                    .filter(|(s, _)| s.as_u16() == status)
                    .map(|_| ())
            }
        })
        .await
        .with_context(|| {
            let seen = last.lock().unwrap_or_else(|p| p.into_inner()).clone();
            format!("last answer: {seen}\ncontroller log:\n{}", self.log_tail())
        })
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        for child in [self.controller.as_mut(), self.external_envoy.as_mut()]
            .into_iter()
            .flatten()
        {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.config.data_dir);
    }
}

/// A RestApi definition in the seed's shape.
pub fn rest_api(name: &str, context: &str, upstream: &str, operations: &[(&str, &str)]) -> Value {
    json!({
        "apiVersion": "gateway.api-platform.wso2.com/v1alpha1",
        "kind": "RestApi",
        "metadata": {"name": name},
        "spec": {
            "displayName": name,
            "version": "v1.0",
            "context": context,
            "upstream": {"main": {"url": upstream}},
            "operations": operations.iter().map(|(m, p)| json!({"method": m, "path": p})).collect::<Vec<_>>()
        }
    })
}
