//! Route-scale benchmark (`route-scale`): how the gateway behaves with thousands of APIs.
//!
//! On a fresh gateway per phase (managed Envoy, `--concurrency 2`, one local echo upstream) it
//! measures: the create rate of `POST /rest-apis` with a bounded number of requests in flight;
//! deploy-to-routable latency (POST answered -> first 200 from Envoy) for 100 APIs created one at a
//! time on top of the loaded table; controller and Envoy memory (`VmRSS`, peak `VmHWM`, Envoy KiB
//! per route); the bytes of each route-configuration push (`gateway_xds_route_config_bytes`); and,
//! at 10,000 APIs, `wrk` throughput spread over random APIs versus all on one API. From Envoy's
//! admin port it also reads `/memory` (tcmalloc) and the RDS `config_reload_time_ms` gauge, which
//! splits deploy-to-routable into "until Envoy has built the new table" and the rest.
//!
//! Phase A: 1,000 APIs x 8 operations. Phase B: 10,000 APIs x 2 operations. The program prints
//! figures next to their targets and never asserts on them.
//!
//! Run from the workspace root. The harness starts the `gateway-controller` binary found next to
//! this executable, so the controller must be built in release first:
//!
//! ```text
//! cargo build --release -p gateway-controller
//! cargo build --release -p gateway-tests --bin route-scale
//! target/release/route-scale
//! ```
//!
//! Options (defaults in brackets): `--apis-a N` [1000], `--ops-a N` [8], `--apis-b N` [10000],
//! `--ops-b N` [2], `--samples N` [100], `--concurrency N` [16], `--wrk-seconds N` [10],
//! `--wrk-rounds N` [2], `--only a|b`. `wrk` (`/usr/bin/wrk` or on `PATH`) is optional: without it
//! the data-path part is skipped. All traffic stays on 127.0.0.1.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use gateway_tests::stats::Stats;
use gateway_tests::wrk::{WrkRun, find_wrk};
use gateway_tests::{
    ADMIN_AUTH, EchoUpstream, Gateway, GatewayConfig, PATIENCE, eventually, rest_api,
    sibling_binary,
};
use reqwest::{Client, StatusCode};
use serde_json::Value;
use tokio::process::Command;
use tokio::task::JoinSet;

/// Operations of every API, in this order; an API with `n` operations gets the first `n`. The first
/// one (`GET /items/{id}`) is what probes and `wrk` request.
const OPERATIONS: [(&str, &str); 8] = [
    ("GET", "/items/{id}"),
    ("POST", "/items"),
    ("GET", "/items"),
    ("PUT", "/items/{id}"),
    ("DELETE", "/items/{id}"),
    ("PATCH", "/items/{id}"),
    ("GET", "/items/{id}/history"),
    ("GET", "/status"),
];

/// Upper bound for one API to become routable; it never takes this long unless something is wrong.
const ROUTABLE_BOUND: Duration = Duration::from_secs(60);
/// Pause before reading steady-state memory and metrics, so the last push is applied.
const SETTLE: Duration = Duration::from_secs(2);

const MIB: f64 = 1024.0 * 1024.0;

#[derive(Debug, Clone)]
struct Args {
    apis_a: usize,
    ops_a: usize,
    apis_b: usize,
    ops_b: usize,
    samples: usize,
    concurrency: usize,
    wrk_seconds: u64,
    wrk_rounds: usize,
    run_a: bool,
    run_b: bool,
}

impl Args {
    fn parse() -> Result<Self> {
        let mut a = Self {
            apis_a: 1000,
            ops_a: 8,
            apis_b: 10_000,
            ops_b: 2,
            samples: 100,
            concurrency: 16,
            wrk_seconds: 10,
            wrk_rounds: 2,
            run_a: true,
            run_b: true,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let value = it.next().with_context(|| format!("{flag} needs a value"))?;
            let num = || {
                value
                    .parse::<usize>()
                    .with_context(|| format!("{flag}: not a number: {value}"))
            };
            match flag.as_str() {
                "--apis-a" => a.apis_a = num()?,
                "--ops-a" => a.ops_a = num()?,
                "--apis-b" => a.apis_b = num()?,
                "--ops-b" => a.ops_b = num()?,
                "--samples" => a.samples = num()?,
                "--concurrency" => a.concurrency = num()?.max(1),
                "--wrk-seconds" => a.wrk_seconds = num()? as u64,
                "--wrk-rounds" => a.wrk_rounds = num()?.max(1),
                "--only" => {
                    a.run_a = value.eq_ignore_ascii_case("a");
                    a.run_b = value.eq_ignore_ascii_case("b");
                    if !a.run_a && !a.run_b {
                        bail!("--only takes a or b");
                    }
                }
                _ => bail!(
                    "unknown option {flag} (see the doc comment of tests/src/bin/route_scale.rs)"
                ),
            }
        }
        if !(1..=OPERATIONS.len()).contains(&a.ops_a) || !(1..=OPERATIONS.len()).contains(&a.ops_b)
        {
            bail!("operations per API must be 1..={}", OPERATIONS.len());
        }
        if a.apis_a == 0
            || a.apis_b == 0
            || a.apis_a + a.samples > 99_999
            || a.apis_b + a.samples > 99_999
        {
            bail!("API counts must be 1..=99,999 including the samples");
        }
        Ok(a)
    }
}

/// What one phase is about.
struct PhaseSpec {
    key: &'static str,
    apis: usize,
    ops: usize,
    /// Deploy-to-routable p99 target in milliseconds.
    deploy_p99_target_ms: f64,
    /// Whether the controller RSS target applies to this phase.
    controller_target: bool,
}

/// Resident memory of one process, in bytes.
#[derive(Debug, Clone, Copy, Default)]
struct Mem {
    rss: u64,
    hwm: u64,
}

/// Envoy's tcmalloc figures, in bytes.
#[derive(Debug, Clone, Copy, Default)]
struct Heap {
    /// In use by Envoy.
    allocated: u64,
    /// Obtained from the system (in use, cached and free).
    heap_size: u64,
}

/// Mean figures of several `wrk` runs of one kind.
#[derive(Debug, Clone, Default)]
struct WrkSummary {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: u64,
    non_2xx: u64,
    runs: usize,
}

impl WrkSummary {
    fn of(runs: &[WrkRun]) -> Self {
        let n = runs.len().max(1) as f64;
        Self {
            rps: runs.iter().map(|r| r.rps).sum::<f64>() / n,
            p50_ms: runs.iter().map(|r| r.p50_ms).sum::<f64>() / n,
            p99_ms: runs.iter().map(|r| r.p99_ms).sum::<f64>() / n,
            requests: runs.iter().map(|r| r.requests).sum(),
            non_2xx: runs.iter().map(|r| r.non_2xx).sum(),
            runs: runs.len(),
        }
    }
}

#[derive(Debug, Clone)]
struct DataPath {
    single: WrkSummary,
    spread: WrkSummary,
}

/// Everything measured in one phase.
#[derive(Debug, Clone)]
struct PhaseResult {
    key: &'static str,
    apis: usize,
    ops: usize,
    samples: usize,
    deploy_p99_target_ms: f64,
    controller_target: bool,
    create_secs: f64,
    create_rate: f64,
    post: Stats,
    converge_ms: f64,
    deploy: Stats,
    ctl_start: Mem,
    ctl: Mem,
    envoy_empty: Mem,
    envoy: Mem,
    heap_empty: Option<Heap>,
    heap: Option<Heap>,
    /// POST answered -> Envoy built the new table (its RDS reload timestamp; ms resolution).
    reload: Option<Stats>,
    route_config_bytes: u64,
    snapshots: u64,
    pushes: u64,
    acks: u64,
    nacks: u64,
    data_path: Option<DataPath>,
    data_path_note: Option<String>,
}

impl PhaseResult {
    /// Routes in the table when memory was read (bulk APIs plus the sequential samples).
    fn routes(&self) -> usize {
        (self.apis + self.samples) * self.ops
    }

    fn envoy_kib_per_route(&self) -> f64 {
        (self.envoy.rss as f64 - self.envoy_empty.rss as f64) / 1024.0 / self.routes().max(1) as f64
    }

    fn heap_kib_per_route(&self) -> Option<f64> {
        match (self.heap_empty, self.heap) {
            (Some(e), Some(h)) => Some(
                (h.allocated as f64 - e.allocated as f64) / 1024.0 / self.routes().max(1) as f64,
            ),
            _ => None,
        }
    }
}

/// The RestApi document of bulk API number `i`.
fn api_doc(i: usize, upstream: &str, ops: usize) -> Value {
    rest_api(
        &format!("bench-{i:05}"),
        &format!("/api-{i:05}"),
        upstream,
        &OPERATIONS[..ops],
    )
}

/// A request path that API `i` serves with its first operation.
fn probe_path(i: usize) -> String {
    format!("/api-{i:05}/items/1")
}

/// Reads `VmRSS` and `VmHWM` of a process.
fn read_mem(pid: u32) -> Result<Mem> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
    };
    let rss = field("VmRSS:").with_context(|| format!("no VmRSS for pid {pid}"))?;
    let hwm = field("VmHWM:").with_context(|| format!("no VmHWM for pid {pid}"))?;
    Ok(Mem {
        rss: rss * 1024,
        hwm: hwm * 1024,
    })
}

/// The Envoy child of the controller: a process whose parent is `parent`, preferring one named
/// `envoy`.
fn envoy_child(parent: u32) -> Option<u32> {
    let mut fallback = None;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces or parentheses, so split at the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let ppid = stat[close + 1..]
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u32>().ok());
        if ppid == Some(parent) {
            if comm.starts_with("envoy") {
                return Some(pid);
            }
            fallback.get_or_insert(pid);
        }
    }
    fallback
}

async fn envoy_pid(gw: &Gateway) -> Result<u32> {
    let ctl = gw
        .controller_pid()
        .context("the controller is not running")?;
    eventually(PATIENCE, "Envoy child of the controller", || async move {
        envoy_child(ctl)
    })
    .await
}

/// Envoy's allocator figures (`GET /memory` on the admin port), if available.
async fn envoy_heap(gw: &Gateway) -> Option<Heap> {
    let url = format!("http://127.0.0.1:{}/memory", gw.config.admin_port);
    let v: Value = gw.client().get(url).send().await.ok()?.json().await.ok()?;
    let field = |name: &str| -> Option<u64> {
        let f = v.get(name)?;
        f.as_str()
            .and_then(|s| s.parse().ok())
            .or_else(|| f.as_u64())
    };
    Some(Heap {
        allocated: field("allocated")?,
        heap_size: field("heap_size")?,
    })
}

/// When Envoy last applied the route configuration (its `rds.<name>.config_reload_time_ms` gauge,
/// milliseconds since the epoch), if available.
async fn envoy_rds_reload_ms(gw: &Gateway) -> Option<u64> {
    let url = format!(
        "http://127.0.0.1:{}/stats?filter=config_reload_time_ms",
        gw.config.admin_port
    );
    let text = gw.client().get(url).send().await.ok()?.text().await.ok()?;
    text.lines()
        .filter(|l| l.contains("rds.") && l.contains("config_reload_time_ms"))
        .filter_map(|l| l.rsplit(':').next()?.trim().parse::<u64>().ok())
        .max()
}

fn epoch_ms(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// The gauges and counters of `GET /metrics`, by name.
async fn read_metrics(gw: &Gateway) -> Result<Vec<(String, u64)>> {
    let r = gw.mgmt(reqwest::Method::GET, "/metrics").send().await?;
    let status = r.status();
    let text = r.text().await?;
    if !status.is_success() {
        bail!("GET /metrics answered {status}: {text}");
    }
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.split_once(' ')?;
            Some((name.to_string(), value.trim().parse::<f64>().ok()? as u64))
        })
        .collect())
}

fn metric(metrics: &[(String, u64)], name: &str) -> u64 {
    metrics
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| *v)
        .unwrap_or(0)
}

/// `POST /rest-apis` for API `i`; fails unless it is created.
async fn post_api(client: &Client, url: &str, i: usize, upstream: &str, ops: usize) -> Result<()> {
    let r = client
        .post(url)
        .header("Authorization", ADMIN_AUTH)
        .header("Content-Type", "application/json")
        .body(api_doc(i, upstream, ops).to_string())
        .send()
        .await
        .with_context(|| format!("POST /rest-apis for API {i}"))?;
    let status = r.status();
    let body = r.text().await?;
    if status != StatusCode::CREATED {
        bail!("POST /rest-apis for API {i} answered {status}: {body}");
    }
    Ok(())
}

/// Creates APIs `range` with `concurrency` requests in flight. Returns the wall time and the
/// latency of each POST.
async fn create_many(
    gw: &Gateway,
    range: Range<usize>,
    ops: usize,
    concurrency: usize,
    upstream: &str,
) -> Result<(Duration, Vec<Duration>)> {
    let next = Arc::new(AtomicUsize::new(range.start));
    let end = range.end;
    let url = gw.mgmt_url("/rest-apis");
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..concurrency {
        let (client, url, upstream, next) = (
            gw.client().clone(),
            url.clone(),
            upstream.to_string(),
            next.clone(),
        );
        workers.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= end {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                let t = Instant::now();
                post_api(&client, &url, i, &upstream, ops).await?;
                latencies.push(t.elapsed());
                if (i + 1) % 1000 == 0 {
                    eprintln!("    created {} APIs", i + 1);
                }
            }
        });
    }
    let mut latencies = Vec::with_capacity(range.len());
    while let Some(joined) = workers.join_next().await {
        latencies.extend(joined??);
    }
    Ok((started.elapsed(), latencies))
}

/// Polls Envoy every millisecond until `GET` on API `i`'s probe path answers 200; returns when.
async fn wait_routable(gw: &Gateway, i: usize) -> Result<Instant> {
    let url = gw.router_url(&probe_path(i));
    let deadline = Instant::now() + ROUTABLE_BOUND;
    loop {
        if let Ok(r) = gw.client().get(&url).send().await {
            let ok = r.status() == StatusCode::OK;
            // Drain the body so the connection is reused.
            let _ = r.bytes().await;
            if ok {
                return Ok(Instant::now());
            }
        }
        if Instant::now() > deadline {
            bail!("API {i} not routable at {url} after {ROUTABLE_BOUND:?}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Runs one phase on a fresh gateway.
async fn run_phase(
    spec: &PhaseSpec,
    args: &Args,
    upstream: &EchoUpstream,
    wrk: Option<&Path>,
) -> Result<PhaseResult> {
    eprintln!(
        "== phase {}: {} APIs x {} operations",
        spec.key, spec.apis, spec.ops
    );
    let mut config = GatewayConfig::new(&format!("route-scale-{}", spec.key.to_ascii_lowercase()));
    config.envoy_concurrency = 2;
    config.managed_data_plane = true;
    let mut gw = Gateway::start_with(config).await?;
    let result = measure_phase(&gw, spec, args, upstream, wrk)
        .await
        .with_context(|| gw.log_tail());
    if let Err(e) = gw.stop_controller().await {
        eprintln!("   (stopping the controller: {e:#})");
    }
    result
}

async fn measure_phase(
    gw: &Gateway,
    spec: &PhaseSpec,
    args: &Args,
    upstream: &EchoUpstream,
    wrk: Option<&Path>,
) -> Result<PhaseResult> {
    let ctl_pid = gw
        .controller_pid()
        .context("the controller is not running")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ctl_start = read_mem(ctl_pid)?;
    let envoy_empty = read_mem(envoy_pid(gw).await?)?;
    let heap_empty = envoy_heap(gw).await;
    let upstream_url = upstream.url("");

    eprintln!(
        "   creating {} APIs, {} in flight",
        spec.apis, args.concurrency
    );
    let (elapsed, post_latencies) =
        create_many(gw, 0..spec.apis, spec.ops, args.concurrency, &upstream_url).await?;
    let created = Instant::now();
    let routable = wait_routable(gw, spec.apis - 1).await?;
    let converge = routable.duration_since(created);
    // The first API must still answer too.
    wait_routable(gw, 0).await?;

    eprintln!(
        "   {} sequential creates: POST answered -> first 200 from Envoy",
        args.samples
    );
    let url = gw.mgmt_url("/rest-apis");
    let mut deploy = Vec::with_capacity(args.samples);
    let mut reload = Vec::with_capacity(args.samples);
    for i in spec.apis..spec.apis + args.samples {
        post_api(gw.client(), &url, i, &upstream_url, spec.ops).await?;
        let (t0, wall0) = (Instant::now(), SystemTime::now());
        let t1 = wait_routable(gw, i).await?;
        deploy.push(t1.duration_since(t0));
        // Read after the measurement, so it does not disturb it.
        if let Some(ms) = envoy_rds_reload_ms(gw).await {
            let delta = ms as f64 - epoch_ms(wall0);
            if delta >= -1.0 {
                reload.push(Duration::from_secs_f64(delta.max(0.0) / 1000.0));
            }
        }
    }

    tokio::time::sleep(SETTLE).await;
    let metrics = read_metrics(gw).await?;
    let ctl = read_mem(ctl_pid)?;
    let envoy = read_mem(envoy_pid(gw).await?)?;
    let heap = envoy_heap(gw).await;

    let (data_path, data_path_note) = match wrk {
        Some(bin) if args.wrk_seconds > 0 && spec.key == "B" => {
            (Some(data_path(gw, bin, spec.apis, args).await?), None)
        }
        None if spec.key == "B" => (None, Some("wrk not found: data path skipped".to_string())),
        _ => (None, None),
    };

    Ok(PhaseResult {
        key: spec.key,
        apis: spec.apis,
        ops: spec.ops,
        samples: args.samples,
        deploy_p99_target_ms: spec.deploy_p99_target_ms,
        controller_target: spec.controller_target,
        create_secs: elapsed.as_secs_f64(),
        create_rate: spec.apis as f64 / elapsed.as_secs_f64(),
        post: Stats::of(&post_latencies),
        converge_ms: converge.as_secs_f64() * 1000.0,
        deploy: Stats::of(&deploy),
        ctl_start,
        ctl,
        envoy_empty,
        envoy,
        heap_empty,
        heap,
        reload: (reload.len() == args.samples).then(|| Stats::of(&reload)),
        route_config_bytes: metric(&metrics, "gateway_xds_route_config_bytes"),
        snapshots: metric(&metrics, "gateway_xds_snapshots_total"),
        pushes: metric(&metrics, "gateway_xds_pushes_total"),
        acks: metric(&metrics, "gateway_xds_acks_total"),
        nacks: metric(&metrics, "gateway_xds_nacks_total"),
        data_path,
        data_path_note,
    })
}

/// Lua for `wrk`: every request goes to a random one of `apis` APIs (`GET /items/{id}`), except
/// ~10% to paths no operation serves (half under an existing context, half under none), which
/// Envoy answers with its JSON 404. With `single`, every request goes to API 0 instead; both use
/// the same per-request Lua work.
fn wrk_script(apis: usize, single: bool) -> String {
    let body = if single {
        r#"  return wrk.format("GET", string.format("/api-00000/items/%d", math.random(1, 1000)))"#
            .to_string()
    } else {
        format!(
            r#"  local n = {apis}
  local r = math.random()
  local path
  if r < 0.05 then
    path = string.format("/api-%05d/no-such-operation", math.random(0, n - 1))
  elseif r < 0.10 then
    path = string.format("/no-such-api-%05d/items/1", math.random(0, n - 1))
  else
    path = string.format("/api-%05d/items/%d", math.random(0, n - 1), math.random(1, 1000))
  end
  return wrk.format("GET", path)"#
        )
    };
    format!(
        r#"local counter = 1
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end
function init(args)
  math.randomseed(7919 * (id or 1))
end
function request()
{body}
end
"#
    )
}

/// One bounded `wrk -t2 -c50 --latency` run against the router on loopback.
async fn run_wrk(bin: &Path, script: &Path, base_url: &str, seconds: u64) -> Result<WrkRun> {
    let mut cmd = Command::new(bin);
    cmd.args([
        "-t2",
        "-c50",
        &format!("-d{seconds}s"),
        "--timeout",
        "5s",
        "--latency",
        "-s",
    ])
    .arg(script)
    .arg(base_url);
    gateway_tests::wrk::run(cmd, seconds).await
}

/// Same `wrk` load against one API and spread over all `apis` APIs, alternating, `wrk_rounds` each.
async fn data_path(gw: &Gateway, bin: &Path, apis: usize, args: &Args) -> Result<DataPath> {
    let dir = std::env::temp_dir();
    let tag = format!("{}-{}", std::process::id(), rand::random::<u32>());
    let single_path = dir.join(format!("route-scale-single-{tag}.lua"));
    let spread_path = dir.join(format!("route-scale-spread-{tag}.lua"));
    std::fs::write(&single_path, wrk_script(apis, true))?;
    std::fs::write(&spread_path, wrk_script(apis, false))?;
    let base = gw.router_url("");
    let result = async {
        eprintln!("   wrk warm-up (3 s, single API)");
        run_wrk(bin, &single_path, &base, 3).await?;
        let (mut single, mut spread) = (Vec::new(), Vec::new());
        for round in 1..=args.wrk_rounds {
            for (name, script, into) in [("single", &single_path, &mut single), ("spread", &spread_path, &mut spread)] {
                let r = run_wrk(bin, script, &base, args.wrk_seconds).await?;
                eprintln!(
                    "   wrk round {round} {name}: {:.0} rps, p50 {:.2} ms, p99 {:.2} ms, {} requests, {} non-2xx {}",
                    r.rps, r.p50_ms, r.p99_ms, r.requests, r.non_2xx, r.socket_errors
                );
                into.push(r);
            }
        }
        Ok::<_, anyhow::Error>(DataPath { single: WrkSummary::of(&single), spread: WrkSummary::of(&spread) })
    }
    .await;
    let _ = std::fs::remove_file(&single_path);
    let _ = std::fs::remove_file(&spread_path);
    result
}

/// A data-path cell: the figures, the reason they are missing, or `-` for phases without them.
fn data_cell(r: &PhaseResult, f: impl Fn(&DataPath) -> String) -> String {
    match (&r.data_path, &r.data_path_note) {
        (Some(d), _) => f(d),
        (None, Some(note)) => note.clone(),
        (None, None) => "-".into(),
    }
}

fn mark(ok: bool) -> &'static str {
    if ok { "ok" } else { "MISSED" }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB)
}

const CREATE_RATE_TARGET: f64 = 500.0;
const CONTROLLER_RSS_TARGET: u64 = 150_000_000;
const ENVOY_KIB_PER_ROUTE_TARGET: f64 = 4.0;
const SPREAD_RATIO_TARGET: f64 = 0.8;

fn print_table(results: &[PhaseResult], args: &Args) {
    let mut header = String::from("| metric |");
    let mut rule = String::from("|---|");
    for r in results {
        header.push_str(&format!(
            " phase {}: {} APIs x {} ops |",
            r.key, r.apis, r.ops
        ));
        rule.push_str("---|");
    }
    header.push_str(" target |");
    rule.push_str("---|");
    let row = |name: &str, cell: &dyn Fn(&PhaseResult) -> String, target: &str| {
        let mut line = format!("| {name} |");
        for r in results {
            line.push_str(&format!(" {} |", cell(r)));
        }
        line.push_str(&format!(" {target} |"));
        println!("{line}");
    };
    println!();
    println!("{header}");
    println!("{rule}");
    row(
        "routes at end (bulk + sequential APIs)",
        &|r| format!("{} ({} APIs)", r.routes(), r.apis + r.samples),
        "",
    );
    row(
        &format!("create rate, {} in flight", args.concurrency),
        &|r| {
            format!(
                "{:.0} APIs/s ({:.2} s) {}",
                r.create_rate,
                r.create_secs,
                mark(r.create_rate >= CREATE_RATE_TARGET)
            )
        },
        ">= 500 APIs/s",
    );
    row(
        "POST latency p50 / p99 during bulk create",
        &|r| format!("{:.1} / {:.1} ms", r.post.p50, r.post.p99),
        "",
    );
    row(
        "last bulk POST -> its route answers 200",
        &|r| format!("{:.0} ms", r.converge_ms),
        "",
    );
    row(
        "create rate incl. convergence (until the last route answers)",
        &|r| {
            format!(
                "{:.0} APIs/s",
                r.apis as f64 / (r.create_secs + r.converge_ms / 1000.0)
            )
        },
        "",
    );
    row(
        &format!(
            "deploy-to-routable p50 / p99 / max ({} sequential)",
            args.samples
        ),
        &|r| {
            format!(
                "{:.1} / {:.1} / {:.1} ms (p99 {})",
                r.deploy.p50,
                r.deploy.p99,
                r.deploy.max,
                mark(r.deploy.p99 <= r.deploy_p99_target_ms)
            )
        },
        "p99 <= 100 ms at 1k APIs, <= 300 ms at 10k",
    );
    row(
        "of which: POST answered -> Envoy has built the new table (RDS config_reload_time_ms) p50 / p99",
        &|r| {
            r.reload
                .map(|s| format!("{:.0} / {:.0} ms", s.p50, s.p99))
                .unwrap_or_else(|| "n/a".into())
        },
        "",
    );
    row(
        "controller RSS: start / steady / peak (VmHWM)",
        &|r| {
            let verdict = if r.controller_target {
                format!(" ({})", mark(r.ctl.rss <= CONTROLLER_RSS_TARGET))
            } else {
                String::new()
            };
            format!(
                "{} / {} / {}{verdict}",
                mib(r.ctl_start.rss),
                mib(r.ctl.rss),
                mib(r.ctl.hwm)
            )
        },
        "<= 150 MB (143 MiB) at 10k APIs",
    );
    row(
        "Envoy RSS: empty / loaded / peak (VmHWM)",
        &|r| {
            format!(
                "{} / {} / {}",
                mib(r.envoy_empty.rss),
                mib(r.envoy.rss),
                mib(r.envoy.hwm)
            )
        },
        "",
    );
    row(
        "Envoy RSS per route",
        &|r| {
            let k = r.envoy_kib_per_route();
            format!("{k:.2} KiB {}", mark(k <= ENVOY_KIB_PER_ROUTE_TARGET))
        },
        "<= 4 KiB",
    );
    row(
        "Envoy tcmalloc allocated / heap_size (loaded)",
        &|r| {
            r.heap
                .map(|h| format!("{} / {}", mib(h.allocated), mib(h.heap_size)))
                .unwrap_or_else(|| "n/a".into())
        },
        "",
    );
    row(
        "Envoy heap (allocated) per route",
        &|r| {
            r.heap_kib_per_route()
                .map(|k| format!("{k:.2} KiB"))
                .unwrap_or_else(|| "n/a".into())
        },
        "",
    );
    row(
        "route config bytes per push (whole table)",
        &|r| {
            format!(
                "{} B ({:.0} B/route)",
                r.route_config_bytes,
                r.route_config_bytes as f64 / r.routes().max(1) as f64
            )
        },
        "",
    );
    row(
        "xDS snapshots / pushes / ACKs / NACKs",
        &|r| format!("{} / {} / {} / {}", r.snapshots, r.pushes, r.acks, r.nacks),
        "",
    );
    let wrk_cell = |s: &WrkSummary| {
        format!(
            "{:.0} rps, p50 {:.2} ms, p99 {:.2} ms ({} x {} s)",
            s.rps, s.p50_ms, s.p99_ms, s.runs, args.wrk_seconds
        )
    };
    row(
        "wrk -t2 -c50, single API",
        &|r| data_cell(r, |d| wrk_cell(&d.single)),
        "",
    );
    row(
        "wrk -t2 -c50, random APIs + ~10% 404",
        &|r| {
            data_cell(r, |d| {
                let share = 100.0 * d.spread.non_2xx as f64 / d.spread.requests.max(1) as f64;
                format!("{} ({share:.1}% 404)", wrk_cell(&d.spread))
            })
        },
        "",
    );
    row(
        "spread / single rps",
        &|r| {
            data_cell(r, |d| {
                let ratio = d.spread.rps / d.single.rps.max(1.0);
                format!("{ratio:.2} {}", mark(ratio >= SPREAD_RATIO_TARGET))
            })
        },
        ">= 0.8",
    );
    println!();
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse()?;
    let controller = sibling_binary("gateway-controller");
    if !controller.is_file() {
        bail!(
            "{} not found: build it next to this program first (`cargo build --release -p gateway-controller`)",
            controller.display()
        );
    }
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: route-scale is a debug build; figures are only meaningful with --release"
        );
    }
    let wrk = find_wrk();
    if wrk.is_none() {
        eprintln!("wrk not found (/usr/bin/wrk or PATH): the data-path comparison is skipped");
    }
    eprintln!(
        "route-scale: controller {}, {} cores, Envoy --concurrency 2, {} POSTs in flight",
        controller.display(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        args.concurrency
    );
    let upstream = EchoUpstream::start().await?;
    let mut results = Vec::new();
    if args.run_a {
        let spec = PhaseSpec {
            key: "A",
            apis: args.apis_a,
            ops: args.ops_a,
            deploy_p99_target_ms: 100.0,
            controller_target: false,
        };
        results.push(run_phase(&spec, &args, &upstream, wrk.as_deref()).await?);
    }
    if args.run_b {
        let spec = PhaseSpec {
            key: "B",
            apis: args.apis_b,
            ops: args.ops_b,
            deploy_p99_target_ms: 300.0,
            controller_target: true,
        };
        results.push(run_phase(&spec, &args, &upstream, wrk.as_deref()).await?);
    }
    print_table(&results, &args);
    Ok(())
}
