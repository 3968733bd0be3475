//! Wiring: storage, registry, ADS server, management API and (optionally) a supervised Envoy.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use gateway_envoy::{BootstrapSettings, EnvoyCommand};
use gateway_xds::{
    ClusterSettings, ListenerSettings, PolicyEngineSettings, RouteSettings, Scheme, Upstream,
    XdsSettings,
};
use std::process::Stdio;

use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::auth::Authenticator;
use crate::config::Config;
use crate::http::{AppState, router};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::store::Store;
use crate::sync::SyncQueue;
use crate::websub::hub::Hub;
use crate::websub::{Directory, HubStore, WEBSUB_API};

/// How long open management requests may take to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Where Envoy reaches the WebSub hub.
fn hub_upstream(c: &Config) -> Upstream {
    Upstream {
        scheme: Scheme::Http,
        host: c.websub.upstream_host.clone(),
        port: c.websub.port,
        base_path: String::new(),
    }
}

fn xds_settings(c: &Config, trusted_ca_file: PathBuf) -> XdsSettings {
    let t = &c.router.upstream.timeouts;
    XdsSettings {
        listener: ListenerSettings {
            host: c.router.listener_host.clone(),
            port: c.router.listener_port,
        },
        routes: RouteSettings {
            route_timeout: Duration::from_millis(t.route_timeout_ms),
        },
        policy_engine: PolicyEngineSettings {
            host: c.policy_engine.host.clone(),
            port: c.policy_engine.port,
            timeout: Duration::from_millis(c.policy_engine.timeout_ms),
        },
        clusters: ClusterSettings {
            connect_timeout: Duration::from_millis(t.connect_timeout_ms),
            trusted_ca_file,
        },
    }
}

/// The trust bundle for https upstreams: the system roots, plus `[router.upstream.tls] ca_file`
/// combined into one file under the data directory when set (an Envoy running elsewhere, as in
/// docker-compose, must see that directory at the same path).
fn trusted_ca_file(c: &Config) -> anyhow::Result<PathBuf> {
    let tls = &c.router.upstream.tls;
    if tls.ca_file.is_empty() {
        // Envoy rejects a cluster whose trust bundle is missing, which would hold back every
        // later route update: refuse to start instead.
        std::fs::metadata(&tls.system_ca_file).with_context(|| {
            format!(
                "router.upstream.tls.system_ca_file {} is not readable",
                tls.system_ca_file
            )
        })?;
        return Ok(PathBuf::from(&tls.system_ca_file));
    }
    let extra = std::fs::read_to_string(&tls.ca_file)
        .with_context(|| format!("reading router.upstream.tls.ca_file {}", tls.ca_file))?;
    let system = std::fs::read_to_string(&tls.system_ca_file).unwrap_or_default();
    let path = c.controller.storage.data_dir.join("upstream-ca-bundle.pem");
    std::fs::write(&path, format!("{system}\n{extra}\n"))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

async fn bind(host: &str, port: u16, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind((host, port))
        .await
        .with_context(|| format!("cannot listen for the {what} on {host}:{port}"))
}

/// Runs the gateway until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let data_dir = &config.controller.storage.data_dir;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating data directory {}", data_dir.display()))?;
    let db_path = data_dir.join("gateway.db");
    let store = Store::open(&db_path).with_context(|| format!("opening {}", db_path.display()))?;
    let cp = &config.controller.controlplane;
    // With a control plane configured, changes are tracked as pending even while the sync itself
    // is switched off (`deployment_sync_enabled = false`).
    let sync_queue = (!cp.host.is_empty()).then(SyncQueue::new);
    let hub_path = data_dir.join("websub.db");
    let hub_store = Arc::new(
        HubStore::open(&hub_path).with_context(|| format!("opening {}", hub_path.display()))?,
    );
    let directory = Arc::new(Directory::new(hub_store));
    let hub_upstream = hub_upstream(&config);
    let registry = Arc::new(Registry::open(
        store,
        xds_settings(&config, trusted_ca_file(&config)?),
        sync_queue.clone(),
        directory.clone(),
        &hub_upstream,
    )?);
    let websub_apis: std::collections::HashSet<String> = registry
        .list(WEBSUB_API)?
        .iter()
        .map(|e| e.row.uuid.clone())
        .collect();
    match directory.store().retain_apis(&websub_apis) {
        Ok(0) => {}
        Ok(n) => info!(
            apis = n,
            "forgot the hub state of WebSub APIs deleted before a crash"
        ),
        Err(e) => warn!(error = %e, "cannot clean up the hub state of deleted WebSub APIs"),
    }

    let xds_listener = bind(
        &config.controller.xds.host,
        config.controller.xds.port,
        "ADS server",
    )
    .await?;
    let api_listener = bind(
        &config.controller.server.host,
        config.controller.server.port,
        "management API",
    )
    .await?;
    let policy_listener = bind(
        &config.controller.policy_server.host,
        config.controller.policy_server.port,
        "policy stream",
    )
    .await?;
    let hub_listener = bind(&config.websub.host, config.websub.port, "WebSub hub").await?;
    let xds_addr = xds_listener.local_addr()?;
    let policy_addr = policy_listener.local_addr()?;
    info!(address = %api_listener.local_addr()?, "management API listening");
    info!(address = %xds_addr, "ADS server listening");
    info!(address = %policy_addr, "policy stream listening");
    info!(address = %hub_listener.local_addr()?, "WebSub hub listening");

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: watch::Receiver<bool>| async move { stop_requested(&mut rx).await };

    let xds = registry.xds().clone();
    let xds_task = tokio::spawn({
        let rx = stop_rx.clone();
        async move { xds.serve(xds_listener, stopped(rx)).await }
    });
    let metrics = Arc::new(Metrics::default());
    let hub = Hub::start(directory.clone(), config.websub.clone(), metrics.clone())
        .context("starting the WebSub hub")?;
    let hub_task = tokio::spawn({
        let rx = stop_rx.clone();
        async move { hub.serve(hub_listener, stopped(rx)).await }
    });
    let policy_token = policy_token(&config);
    let policies = registry.policies().clone();
    let policy_task = tokio::spawn({
        let rx = stop_rx.clone();
        let token = policy_token.clone();
        async move { policies.serve(policy_listener, token, stopped(rx)).await }
    });
    if let (Some(queue), true) = (sync_queue, cp.sync_enabled()) {
        // The gateway serves whatever the API Manager side does: a sync that cannot start is
        // reported, and APIs stay pending.
        if let Err(e) = crate::sync::start(
            cp,
            registry.clone(),
            queue,
            metrics.clone(),
            stop_rx.clone(),
        ) {
            error!(error = %e, "bottom-up sync disabled: APIs stay pending until this is fixed and the controller restarted");
        }
    }
    let mut children = Vec::new();
    if config.policy_engine.managed {
        let cfg = config.clone();
        let token = policy_token.clone();
        children.push(tokio::spawn(supervise(
            "policy engine",
            move || engine_child(&cfg, policy_addr, token.as_deref()),
            stop_rx.clone(),
        )));
    }
    if config.router.managed {
        match envoy_command(&config, xds_addr) {
            Ok(cmd) => children.push(tokio::spawn(supervise(
                "Envoy",
                move || Ok(cmd.spawn()?),
                stop_rx.clone(),
            ))),
            Err(e) => {
                error!(error = %e, "cannot start Envoy; the management API keeps running without a router")
            }
        }
    }
    let state = AppState {
        registry: registry.clone(),
        auth: Arc::new(Authenticator::new(&config.controller.auth.basic)),
        max_body: config.controller.server.max_body_bytes,
        key_quota: config.api_key.keys_per_user_per_api,
        hub: hub_upstream,
        metrics,
        hub_store: directory.store().clone(),
    };
    let mut api_task = tokio::spawn(
        axum::serve(api_listener, router(state))
            .with_graceful_shutdown(stopped(stop_rx.clone()))
            .into_future(),
    );
    let mut grace_rx = stop_rx.clone();
    tokio::select! {
        served = &mut api_task => served??,
        _ = async {
            stop_requested(&mut grace_rx).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            warn!("management connections still open after the grace period; closing them");
            api_task.abort();
        }
    }
    for child in children {
        let _ = child.await;
    }
    if let Ok(Err(e)) = hub_task.await {
        warn!(error = %e, "WebSub hub stopped with an error");
    }
    // Engines and an external Envoy keep their streams open: give them a moment, then stop.
    let policy_abort = policy_task.abort_handle();
    if tokio::time::timeout(Duration::from_secs(3), policy_task)
        .await
        .is_err()
    {
        policy_abort.abort();
    }
    // An external Envoy keeps its ADS stream open: give it a moment, then stop serving it.
    let abort = xds_task.abort_handle();
    match tokio::time::timeout(Duration::from_secs(3), xds_task).await {
        Ok(Ok(Err(e))) => warn!(error = %e, "ADS server stopped with an error"),
        Ok(Err(e)) if !e.is_cancelled() => warn!(error = %e, "ADS server task failed"),
        Err(_) => abort.abort(),
        _ => {}
    }
    info!("stopped");
    Ok(())
}

fn envoy_command(c: &Config, xds_addr: SocketAddr) -> anyhow::Result<EnvoyCommand> {
    let explicit =
        (!c.router.envoy_binary.is_empty()).then(|| PathBuf::from(&c.router.envoy_binary));
    let binary = gateway_envoy::find_binary(explicit.as_deref())?;
    let xds_host = if !c.router.xds_host.is_empty() {
        c.router.xds_host.clone()
    } else if xds_addr.ip().is_unspecified() {
        "127.0.0.1".into()
    } else {
        xds_addr.ip().to_string()
    };
    let bootstrap = BootstrapSettings {
        node_id: format!("{}-router", c.controller.server.gateway_id),
        xds_host,
        xds_port: xds_addr.port(),
        admin_host: "127.0.0.1".into(),
        admin_port: c.router.admin_port,
    };
    let config_path = c.controller.storage.data_dir.join("envoy-bootstrap.json");
    gateway_envoy::write_bootstrap(&config_path, &bootstrap)?;
    Ok(EnvoyCommand {
        binary,
        config_path,
        concurrency: (c.router.concurrency > 0).then_some(c.router.concurrency),
        log_level: c.router.log_level.clone(),
        log_file: None,
    })
}

/// The command that starts a managed policy engine following this controller.
/// The token engines must present on the policy stream: the configured one; else a random one
/// for the managed engine; else none.
fn policy_token(c: &Config) -> Option<String> {
    let configured = &c.controller.policy_server.token;
    if !configured.is_empty() {
        return Some(configured.clone());
    }
    if c.policy_engine.managed {
        let mut bytes = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
        return Some(hex::encode(bytes));
    }
    if !crate::config::is_loopback(&c.controller.policy_server.host) {
        warn!(
            host = c.controller.policy_server.host,
            "the policy stream is reachable off this machine without a token: set [controller.policy_server] token"
        );
    }
    None
}

fn engine_child(c: &Config, policy_addr: SocketAddr, token: Option<&str>) -> anyhow::Result<Child> {
    let binary = if c.policy_engine.binary.is_empty() {
        std::env::current_exe()?.with_file_name("gateway-policy-engine")
    } else {
        PathBuf::from(&c.policy_engine.binary)
    };
    let controller_host = if policy_addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        policy_addr.ip().to_string()
    };
    let mut cmd = Command::new(&binary);
    cmd.arg("--listen")
        .arg(format!("{}:{}", c.policy_engine.host, c.policy_engine.port))
        .arg("--controller")
        .arg(format!("http://{controller_host}:{}", policy_addr.port()))
        .arg("--node-id")
        .arg(format!("{}-policy-engine", c.controller.server.gateway_id))
        .arg("--log-level")
        .arg(&c.controller.logging.level)
        .env_remove("APIP_GW_POLICY_ENGINE__TOKEN")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(t) = token {
        // The environment, unlike arguments, is not visible to other local users.
        cmd.env("APIP_GW_POLICY_ENGINE__TOKEN", t);
    }
    gateway_envoy::die_with_parent(&mut cmd);
    cmd.spawn()
        .with_context(|| format!("starting {}", binary.display()))
}

/// Runs a child process, restarting it with backoff if it dies or cannot start, and stops it on
/// shutdown.
async fn supervise(
    name: &'static str,
    start: impl Fn() -> anyhow::Result<Child>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let started = std::time::Instant::now();
        let outcome = match start() {
            Ok(mut child) => {
                info!(name, pid = child.id(), "started");
                tokio::select! {
                    status = child.wait() => format!("exited ({:?})", status.ok()),
                    _ = stop_requested(&mut stop) => {
                        terminate(name, &mut child).await;
                        return;
                    }
                }
            }
            Err(e) => format!("cannot start: {e:#}"),
        };
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(500);
        }
        error!(
            name,
            outcome,
            retry_in_ms = backoff.as_millis() as u64,
            "restarting"
        );
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop_requested(&mut stop) => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

async fn stop_requested(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Asks a child to exit (SIGTERM), then kills it if it has not within five seconds.
async fn terminate(name: &str, child: &mut Child) {
    if let Some(pid) = child.id() {
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
    if tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
    info!(name, "stopped");
}
