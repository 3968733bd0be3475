//! Bottom-up sync benchmark (`apim-sync`): how long syncing to an on-prem API Manager takes, and
//! what it costs the management API.
//!
//! Runs a gateway (managed Envoy) against the fake API Manager of the test suite (HTTPS, real
//! token, import and WebSocket handling) on loopback and prints:
//! - one sync: `POST /rest-apis` answered -> `cpSyncStatus: success` visible on `GET`, for APIs
//!   created one at a time;
//! - a burst: N APIs created with 16 requests in flight -> all `success`;
//! - management latency (`GET /rest-apis/{id}` and `POST /rest-apis`) idle, during the burst's
//!   sync, and while the API Manager stalls (every publisher call delayed by 2 s).
//!
//! Figures only, no assertions. Build the controller in release first, from the workspace root:
//!
//! ```text
//! cargo build --release -p gateway-controller -p gateway-policy-engine
//! cargo build --release -p gateway-tests --bin apim-sync
//! target/release/apim-sync [--single N (20)] [--burst N (200)]
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use gateway_tests::fake_apim::{FakeApim, FakeApimConfig, Mode};
use gateway_tests::stats::Stats;
use gateway_tests::{EchoUpstream, Gateway, GatewayConfig, eventually, rest_api};
use serde_json::Value;
use tokio::task::JoinSet;

/// Upper bound for anything here; reached only when something is wrong.
const BOUND: Duration = Duration::from_secs(120);
/// Interval of status polls (the measurement's resolution).
const POLL: Duration = Duration::from_millis(1);
/// Requests in flight while creating the burst.
const IN_FLIGHT: usize = 16;

struct Args {
    single: usize,
    burst: usize,
}

fn args() -> Result<Args> {
    let mut a = Args {
        single: 20,
        burst: 200,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().context("every option takes a value")?;
        match flag.as_str() {
            "--single" => a.single = value.parse()?,
            "--burst" => a.burst = value.parse()?,
            other => bail!("unknown option {other}"),
        }
    }
    Ok(a)
}

fn api(name: &str, upstream: &str) -> Value {
    let mut a = rest_api(name, &format!("/{name}"), upstream, &[("GET", "/x/{id}")]);
    a["spec"]["displayName"] = Value::String(format!("{name} API"));
    a
}

async fn sync_status(gw: &Gateway, name: &str) -> Option<String> {
    let (_, v) = gw.get_json(&format!("/rest-apis/{name}")).await.ok()?;
    v["cpSyncStatus"].as_str().map(str::to_string)
}

/// Samples `GET /rest-apis/{probe}` latency until `stop` is set.
async fn sample_gets(gw: Arc<Gateway>, probe: String, stop: Arc<AtomicBool>) -> Vec<Duration> {
    let mut out = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        if gw.get_json(&format!("/rest-apis/{probe}")).await.is_ok() {
            out.push(t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    out
}

/// Creates APIs `names` with [`IN_FLIGHT`] requests at a time; returns each POST's latency.
async fn create_all(
    gw: &Arc<Gateway>,
    names: Vec<String>,
    upstream: &str,
) -> Result<Vec<Duration>> {
    let mut set = JoinSet::new();
    let mut latencies = Vec::new();
    for name in names {
        if set.len() >= IN_FLIGHT
            && let Some(r) = set.join_next().await
        {
            latencies.push(r??);
        }
        let gw = gw.clone();
        let body = api(&name, upstream);
        set.spawn(async move {
            let t = Instant::now();
            let (s, v) = gw.create_api(&body).await?;
            if s != 201 {
                bail!("create {name}: {s} {v}");
            }
            Ok(t.elapsed())
        });
    }
    while let Some(r) = set.join_next().await {
        latencies.push(r??);
    }
    Ok(latencies)
}

fn row(what: &str, s: &Stats, n: usize) {
    println!(
        "| {what:<44} | {n:>5} | {:>8.2} | {:>8.2} | {:>8.2} |",
        s.p50, s.p99, s.max
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = args()?;
    let up = EchoUpstream::start().await?;
    let upstream = up.url("");
    let apim = FakeApim::start(FakeApimConfig::default()).await?;
    let mut cfg = GatewayConfig::new("apim-bench");
    cfg.extra_toml = format!(
        "[controller.controlplane]\nhost = \"{}\"\nca_file = \"{}\"\napim_oauth2_client_id = \"test-client\"\n\
         apim_oauth2_client_secret = \"test-secret\"\ngateway_name = \"onprem-gw\"\n",
        apim.host(),
        apim.ca_file().display()
    );
    let gw = Arc::new(Gateway::start_with(cfg).await?);
    eventually(BOUND, "control channel up", || async {
        gw.log_text()
            .contains("Connected to control plane")
            .then_some(())
    })
    .await?;

    // One at a time: POST answered -> success visible.
    let mut one = Vec::new();
    let mut posts_idle = Vec::new();
    for i in 0..args.single {
        let name = format!("single{i}");
        let t = Instant::now();
        let (s, v) = gw.create_api(&api(&name, &upstream)).await?;
        if s != 201 {
            bail!("create {name}: {s} {v}");
        }
        posts_idle.push(t.elapsed());
        let answered = Instant::now();
        while sync_status(&gw, &name).await.as_deref() != Some("success") {
            if answered.elapsed() > BOUND {
                bail!("{name} not synced after {BOUND:?}");
            }
            tokio::time::sleep(POLL).await;
        }
        one.push(answered.elapsed());
    }
    let probe = "single0".to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let idle = tokio::spawn(sample_gets(gw.clone(), probe.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let gets_idle = idle.await?;

    // A burst: all created, then all synced; GET latency sampled meanwhile.
    let stop = Arc::new(AtomicBool::new(false));
    let during = tokio::spawn(sample_gets(gw.clone(), probe.clone(), stop.clone()));
    let started = Instant::now();
    let names: Vec<String> = (0..args.burst).map(|i| format!("burst{i}")).collect();
    let posts_burst = create_all(&gw, names, &upstream).await?;
    let created = started.elapsed();
    loop {
        let (_, list) = gw.get_json("/rest-apis").await?;
        let done = list["apis"]
            .as_array()
            .map(|apis| {
                apis.iter()
                    .filter(|a| a["cpSyncStatus"] == "success")
                    .count()
            })
            .unwrap_or(0);
        if done == args.single + args.burst {
            break;
        }
        if started.elapsed() > BOUND {
            bail!("burst not synced after {BOUND:?}");
        }
        tokio::time::sleep(POLL).await;
    }
    let synced = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let gets_burst = during.await?;

    // APIM stalls: management latency while every sync waits on it.
    apim.set_mode(Mode::Slow(Duration::from_secs(2)));
    let stop = Arc::new(AtomicBool::new(false));
    let stalled = tokio::spawn(sample_gets(gw.clone(), probe.clone(), stop.clone()));
    let names: Vec<String> = (0..50).map(|i| format!("stall{i}")).collect();
    let posts_stalled = create_all(&gw, names, &upstream).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let gets_stalled = stalled.await?;
    apim.set_mode(Mode::Normal);

    println!();
    println!("Bottom-up sync to the fake API Manager (HTTPS on loopback), figures in ms");
    println!();
    println!(
        "| what                                         |     n |      p50 |      p99 |      max |"
    );
    println!(
        "|----------------------------------------------|------:|---------:|---------:|---------:|"
    );
    row(
        "one sync: POST answered -> success on GET",
        &Stats::of(&one),
        one.len(),
    );
    row(
        "GET /rest-apis/{id}, idle",
        &Stats::of(&gets_idle),
        gets_idle.len(),
    );
    row(
        "GET /rest-apis/{id}, during the burst",
        &Stats::of(&gets_burst),
        gets_burst.len(),
    );
    row(
        "GET /rest-apis/{id}, APIM stalled (2 s)",
        &Stats::of(&gets_stalled),
        gets_stalled.len(),
    );
    row(
        "POST /rest-apis, one at a time, idle",
        &Stats::of(&posts_idle),
        posts_idle.len(),
    );
    row(
        "POST /rest-apis, 16 in flight, burst",
        &Stats::of(&posts_burst),
        posts_burst.len(),
    );
    row(
        "POST /rest-apis, 16 in flight, APIM stalled",
        &Stats::of(&posts_stalled),
        posts_stalled.len(),
    );
    println!();
    println!(
        "burst of {}: all created in {:.2} s, all synced (success) {:.2} s after the first POST; \
         {} imports, {} tokens issued",
        args.burst,
        created.as_secs_f64(),
        synced.as_secs_f64(),
        apim.calls()
            .iter()
            .filter(|c| c.path.starts_with("/api/am/publisher/v4/apis/import"))
            .count(),
        apim.tokens_issued()
    );
    Ok(())
}
