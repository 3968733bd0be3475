//! `gateway-policy-engine`: the ext_proc server Envoy consults on routes with policies. It follows
//! the controller's policy stream and keeps enforcing the last configuration it received while the
//! controller is away.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use gateway_policy_engine::{distribution, engine::Engine, extproc};
use tonic::transport::server::TcpIncoming;
use tracing::info;
use tracing_subscriber::EnvFilter;

/// Command-line arguments.
#[derive(Parser)]
#[command(version, about = "Policy engine (Envoy ext_proc) of the API gateway")]
struct Args {
    /// Address the ext_proc gRPC server listens on.
    #[arg(
        long,
        env = "APIP_GW_POLICY_ENGINE__LISTEN",
        default_value = "127.0.0.1:9001"
    )]
    listen: SocketAddr,
    /// The controller's policy stream.
    #[arg(
        long,
        env = "APIP_GW_POLICY_ENGINE__CONTROLLER",
        default_value = "http://127.0.0.1:18001"
    )]
    controller: String,
    /// Token presented to the controller's policy stream (its `[controller.policy_server] token`).
    /// Prefer the environment variable: arguments are visible to every local user.
    #[arg(long, env = "APIP_GW_POLICY_ENGINE__TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Node id presented to the controller.
    #[arg(long, default_value = "policy-engine")]
    node_id: String,
    /// Log level.
    #[arg(long, env = "APIP_GW_LOG_LEVEL", default_value = "info")]
    log_level: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_new(format!("{},h2=warn,hyper=warn", args.log_level))
                .unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_target(false)
        .init();
    let engine = Arc::new(Engine::default());
    let follower = engine.clone();
    tokio::spawn(distribution::follow(
        args.controller.clone(),
        args.token.clone().filter(|t| !t.is_empty()),
        args.node_id.clone(),
        HashMap::new(),
        move |changed, removed| follower.apply(changed, removed),
    ));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    info!(address = %listener.local_addr()?, controller = args.controller, "policy engine listening");
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tonic::transport::Server::builder()
        .add_service(extproc::service(engine))
        .serve_with_incoming_shutdown(
            // Small gRPC messages: without TCP_NODELAY each answer waits for the peer's delayed ACK (~40 ms).
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            async move {
                tokio::select! {
                    _ = shutdown => {}
                    _ = term.recv() => {}
                }
            },
        )
        .await?;
    info!("stopped");
    Ok(())
}
