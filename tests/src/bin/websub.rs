//! WebSub benchmark (`websub`): publish -> delivered latency and delivery throughput of the hub,
//! through Envoy, with 1, 10 and 100 subscribers on one channel.
//!
//! One gateway (managed Envoy) on loopback, one WebSub API with a channel per subscriber count,
//! and a local receiver that answers verifications and timestamps every delivery. For each
//! subscriber count it measures:
//! - latency: events published one at a time every 5 ms; for each (event, subscriber), the time
//!   from sending the publish request to the delivery's arrival; p50/p99/max;
//! - throughput: events published with 8 requests in flight until every subscriber has every
//!   event; events/s accepted and deliveries/s completed.
//!
//! Figures only, no assertions. Build the controller in release first, from the workspace root:
//!
//! ```text
//! cargo build --release -p gateway-controller -p gateway-policy-engine
//! cargo build --release -p gateway-tests --bin websub
//! target/release/websub [--latency-events N (200)] [--deliveries N (20000)]
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use gateway_tests::stats::Stats;
use gateway_tests::{Gateway, GatewayConfig};
use reqwest::Method;
use serde_json::json;
use tokio::sync::Notify;
use tokio::task::JoinSet;

/// Upper bound for anything here; reached only when something is wrong.
const BOUND: Duration = Duration::from_secs(120);
/// Publish requests in flight during the throughput run.
const IN_FLIGHT: usize = 8;
/// Subscriber counts measured.
const COUNTS: [usize; 3] = [1, 10, 100];

struct Args {
    latency_events: usize,
    deliveries: usize,
}

fn args() -> Result<Args> {
    let mut a = Args {
        latency_events: 200,
        deliveries: 20_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().context("every option takes a value")?;
        match flag.as_str() {
            "--latency-events" => a.latency_events = value.parse()?,
            "--deliveries" => a.deliveries = value.parse()?,
            other => bail!("unknown option {other}"),
        }
    }
    Ok(a)
}

/// What the receiver has seen: verifications and delivery arrival times by event id.
#[derive(Default)]
struct Seen {
    verified: usize,
    arrivals: HashMap<u64, Vec<Instant>>,
    total: usize,
}

#[derive(Clone, Default)]
struct Receiver {
    seen: Arc<Mutex<Seen>>,
    changed: Arc<Notify>,
}

impl Receiver {
    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reset(&self) {
        let mut s = self.lock();
        s.arrivals.clear();
        s.total = 0;
    }

    async fn wait(&self, what: &str, done: impl Fn(&Seen) -> bool) -> Result<()> {
        self.wait_up_to(BOUND, what, done).await
    }

    async fn wait_up_to(
        &self,
        bound: Duration,
        what: &str,
        done: impl Fn(&Seen) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + bound;
        loop {
            let notified = self.changed.notified();
            if done(&self.lock()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("timed out waiting for {what}");
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
        }
    }
}

async fn verify(
    State(r): State<Receiver>,
    Query(q): Query<HashMap<String, String>>,
) -> (StatusCode, String) {
    r.lock().verified += 1;
    r.changed.notify_waiters();
    (
        StatusCode::OK,
        q.get("hub.challenge").cloned().unwrap_or_default(),
    )
}

async fn deliver(State(r): State<Receiver>, Path(_n): Path<usize>, body: Bytes) -> StatusCode {
    let at = Instant::now();
    let id = std::str::from_utf8(&body)
        .ok()
        .and_then(|b| serde_json::from_str::<serde_json::Value>(b).ok())
        .and_then(|v| v["id"].as_u64());
    if let Some(id) = id {
        let mut s = r.lock();
        s.arrivals.entry(id).or_default().push(at);
        s.total += 1;
    }
    r.changed.notify_waiters();
    StatusCode::OK
}

async fn start_receiver() -> Result<(SocketAddr, Receiver)> {
    let r = Receiver::default();
    let app = Router::new()
        .route("/cb/{n}", get(verify).post(deliver))
        .with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((addr, r))
}

async fn publish(gw: &Gateway, channel: &str, id: u64) -> Result<()> {
    let r = gw
        .client()
        .post(gw.router_url(&format!("/bench/v1/webhook-receiver?topic={channel}")))
        .header("content-type", "application/json")
        .body(json!({"id": id, "payload": "x".repeat(200)}).to_string())
        .send()
        .await?;
    if r.status() != StatusCode::ACCEPTED {
        bail!("publish answered {}", r.status());
    }
    Ok(())
}

struct Row {
    subscribers: usize,
    latency: Stats,
    samples: usize,
    events_per_s: f64,
    deliveries_per_s: f64,
}

async fn measure(
    gw: &Arc<Gateway>,
    receiver: &Receiver,
    addr: SocketAddr,
    n: usize,
    args: &Args,
    next_id: &mut u64,
) -> Result<Row> {
    let channel = format!("c{n}");
    let before = receiver.lock().verified;
    for i in 0..n {
        let form = [
            ("hub.mode", "subscribe".to_string()),
            ("hub.topic", channel.clone()),
            ("hub.callback", format!("http://{addr}/cb/{i}")),
            ("hub.secret", "bench-secret".to_string()),
        ];
        let r = gw
            .client()
            .post(gw.router_url("/bench/v1/hub"))
            .form(&form)
            .send()
            .await?;
        if r.status() != StatusCode::ACCEPTED {
            bail!("subscribe answered {}", r.status());
        }
    }
    receiver
        .wait("verifications", |s| s.verified >= before + n)
        .await?;
    // A verified subscription becomes active just after: probe until one reaches everyone.
    let started = Instant::now();
    loop {
        receiver.reset();
        let probe = *next_id;
        *next_id += 1;
        publish(gw, &channel, probe).await?;
        let all = receiver
            .wait_up_to(Duration::from_secs(1), "probe deliveries", |s| {
                s.arrivals.get(&probe).is_some_and(|a| a.len() >= n)
            })
            .await;
        if all.is_ok() {
            break;
        }
        if started.elapsed() > BOUND {
            bail!("subscriptions never became active");
        }
    }
    // Let stragglers of earlier probes arrive before measuring.
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Latency.
    receiver.reset();
    let mut sent = HashMap::new();
    for _ in 0..args.latency_events {
        let id = *next_id;
        *next_id += 1;
        sent.insert(id, Instant::now());
        publish(gw, &channel, id).await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let expected = args.latency_events * n;
    receiver
        .wait("latency deliveries", |s| s.total >= expected)
        .await?;
    let mut samples = Vec::with_capacity(expected);
    for (id, arrivals) in &receiver.lock().arrivals {
        if let Some(t0) = sent.get(id) {
            samples.extend(arrivals.iter().map(|a| a.duration_since(*t0)));
        }
    }

    // Throughput.
    receiver.reset();
    let events = (args.deliveries / n).max(10);
    let first = *next_id;
    *next_id += events as u64;
    let started = Instant::now();
    let mut set = JoinSet::new();
    for id in first..first + events as u64 {
        if set.len() >= IN_FLIGHT
            && let Some(r) = set.join_next().await
        {
            r??;
        }
        let gw = gw.clone();
        let channel = channel.clone();
        set.spawn(async move { publish(&gw, &channel, id).await });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    let accepted = started.elapsed();
    receiver
        .wait("throughput deliveries", |s| s.total >= events * n)
        .await?;
    let delivered = started.elapsed();
    Ok(Row {
        subscribers: n,
        latency: Stats::of(&samples),
        samples: samples.len(),
        events_per_s: events as f64 / accepted.as_secs_f64(),
        deliveries_per_s: (events * n) as f64 / delivered.as_secs_f64(),
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = args()?;
    let (addr, receiver) = start_receiver().await?;
    let mut cfg = GatewayConfig::new("websub-bench");
    cfg.envoy_concurrency = 2;
    let gw = Arc::new(Gateway::start_with(cfg).await?);
    let channels: Vec<_> = COUNTS
        .iter()
        .map(|n| json!({"name": format!("c{n}"), "method": "SUB"}))
        .collect();
    let api = json!({
        "apiVersion": "gateway.api-platform.wso2.com/v1alpha1",
        "kind": "WebSubApi",
        "metadata": {"name": "bench"},
        "spec": {"displayName": "bench", "version": "v1", "context": "/bench/$version", "channels": channels}
    });
    let (s, v) = gw.send_json(Method::POST, "/websub-apis", &api).await?;
    if s != StatusCode::CREATED {
        bail!("create answered {s}: {v}");
    }
    gw.wait_route(Method::POST, "/bench/v1/webhook-receiver?topic=c1", 202)
        .await?;
    let mut next_id = 1_000_000;
    let mut rows = Vec::new();
    for n in COUNTS {
        rows.push(measure(&gw, &receiver, addr, n, &args, &mut next_id).await?);
    }
    println!();
    println!(
        "WebSub hub through Envoy on loopback: publish -> delivered (ms), signed deliveries, 200-byte JSON events"
    );
    println!();
    println!(
        "| subscribers | deliveries timed |   p50 |   p99 |   max | events/s accepted | deliveries/s |"
    );
    println!(
        "|------------:|-----------------:|------:|------:|------:|------------------:|-------------:|"
    );
    for r in rows {
        println!(
            "| {:>11} | {:>16} | {:>5.1} | {:>5.1} | {:>5.1} | {:>17.0} | {:>12.0} |",
            r.subscribers,
            r.samples,
            r.latency.p50,
            r.latency.p99,
            r.latency.max,
            r.events_per_s,
            r.deliveries_per_s
        );
    }
    Ok(())
}
