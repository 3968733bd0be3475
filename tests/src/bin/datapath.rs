//! Data-path load test (`datapath`): what the gateway's route and its policies cost per request,
//! next to the physical limits of the same machine.
//!
//! One run measures five cases with the same `wrk -t2 -c50 --latency` load (every request
//! `GET .../items/1` with an `X-API-Key` header), all on 127.0.0.1:
//!
//! - (a) direct to the upstream: a local echo server ([`EchoUpstream`]). It runs inside this
//!   program (on its tokio runtime), so its CPU shows up as "this process".
//! - (b) a bare Envoy: a static bootstrap written here (one HTTP listener, a single `prefix: /`
//!   route to a static cluster pointing at the upstream, the router filter), `--concurrency 2`.
//!   That is the physical limit of any Envoy-based path on this machine.
//! - (c) our gateway (the test harness: release `gateway-controller` with its managed Envoy,
//!   `--concurrency 2`, and its managed policy engine): an API `GET /items/{id}` without policies.
//! - (d) the same gateway, an API `GET /items/{id}` with `api-key-auth` (header `X-API-Key`) and a
//!   `rate-limit` that never trips (100,000,000 per 3600 s), called with a valid key.
//! - (e) the same API and policies on a second gateway whose Envoy consults a trivial always-allow
//!   ext_proc server instead of our policy engine. The trivial server is this program run as
//!   `datapath --trivial-ext-proc <port>` (a separate process, spawned by the main one): a tonic
//!   `ExternalProcessorServer` with tonic's default socket options (TCP_NODELAY on). The second
//!   gateway runs with the harness's `managed_data_plane = false` (see the comment in `run` for
//!   why): the harness runs its Envoy (same bootstrap, `--concurrency 2`), the controller starts
//!   no policy engine, and the trivial server listens where Envoy's ext_proc cluster points.
//!
//! For each case it prints requests per second, p50 and p99 latency (wrk's latency distribution),
//! the unloaded latency (requests sent one at a time, before any load), and CPU per request in
//! microseconds of Envoy, of the policy engine (or the trivial server), of this process (the
//! upstream) and of `wrk`, read as utime+stime from `/proc/<pid>/stat` (and
//! `getrusage(RUSAGE_CHILDREN)` for `wrk`) before and after each measured run, plus the CPU used by
//! everything else on the machine in that window and the CPU the hypervisor stole (signs of
//! interference). Then, on the gateway of (d), it measures key create -> usable (POST answered ->
//! first 200 through Envoy with the new key, polled every 1 ms) and revoke -> rejected (DELETE
//! answered -> first 401). It prints the figures next to their targets and asserts nothing.
//!
//! Run from the workspace root; the harness starts the `gateway-controller` and
//! `gateway-policy-engine` binaries that sit next to this one, so build them in release first:
//!
//! ```text
//! cargo build --release -p gateway-controller -p gateway-policy-engine
//! cargo build --release -p gateway-tests --bin datapath
//! target/release/datapath
//! ```
//!
//! Options (defaults in brackets): `--seconds N` [10] per measured wrk run, `--warmup N` [2] s of
//! wrk before each measured run, `--rounds N` [1] rounds of all five cases (figures are means),
//! `--samples N` [50] key create/revoke samples, `--idle N` [100] requests one at a time per case
//! (unloaded latency, measured before the load), `--trivial-nodelay on|off` [on] (off gives the
//! trivial server the policy engine's socket setup: Nagle's algorithm on). It needs `wrk`
//! (`/usr/bin/wrk` or on `PATH`) and Envoy (found like the gateway finds it). With the defaults a
//! run takes about 70 s (`--rounds 3`: about 3 min). Every process it starts is killed when it
//! ends, fails or is interrupted (Ctrl-C or SIGTERM).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyResponse, HeadersResponse, ProcessingRequest, ProcessingResponse, TrailersResponse,
    external_processor_server::{ExternalProcessor, ExternalProcessorServer},
    processing_request::Request as Req,
    processing_response::Response as Resp,
};
use gateway_tests::stats::Stats;
use gateway_tests::wrk::{WrkRun, find_wrk};
use gateway_tests::{EchoUpstream, Gateway, GatewayConfig, PATIENCE, eventually, free_port};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

/// The request path under each API's context (and directly on the upstream and the bare Envoy).
const PATH: &str = "/items/1";
/// Header carrying the API key on every request of every case.
const KEY_HEADER: &str = "X-API-Key";
/// Upper bound for a key change to show at the router; it never takes this long unless broken.
const KEY_BOUND: Duration = Duration::from_secs(10);

// Targets.
const ROUTE_VS_BARE: f64 = 0.95;
const POLICIES_VS_TRIVIAL: f64 = 0.9;
const P99_EXTRA_MS: f64 = 0.5;
const ENGINE_CPU_VS_TRIVIAL: f64 = 1.25;
const KEY_P99_MS: f64 = 100.0;

#[derive(Debug, Clone)]
struct Args {
    seconds: u64,
    warmup: u64,
    rounds: usize,
    samples: usize,
    idle: usize,
    trivial_nodelay: bool,
}

impl Args {
    fn parse(raw: &[String]) -> Result<Self> {
        let mut a = Self {
            seconds: 10,
            warmup: 2,
            rounds: 1,
            samples: 50,
            idle: 100,
            trivial_nodelay: true,
        };
        let mut it = raw.iter();
        while let Some(flag) = it.next() {
            let value = it.next().with_context(|| format!("{flag} needs a value"))?;
            let num = || {
                value
                    .parse::<u64>()
                    .with_context(|| format!("{flag}: not a number: {value}"))
            };
            match flag.as_str() {
                "--seconds" => a.seconds = num()?.max(1),
                "--warmup" => a.warmup = num()?,
                "--rounds" => a.rounds = usize::try_from(num()?)?.max(1),
                "--samples" => a.samples = usize::try_from(num()?)?.max(1),
                "--idle" => a.idle = usize::try_from(num()?)?.max(1),
                "--trivial-nodelay" => {
                    a.trivial_nodelay = match value.as_str() {
                        "on" => true,
                        "off" => false,
                        _ => bail!("--trivial-nodelay takes on or off"),
                    }
                }
                _ => bail!(
                    "unknown option {flag} (see the doc comment of tests/src/bin/datapath.rs)"
                ),
            }
        }
        Ok(a)
    }
}

fn main() -> Result<()> {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if raw.first().map(String::as_str) == Some("--trivial-ext-proc") {
        let port = raw
            .get(1)
            .and_then(|p| p.parse::<u16>().ok())
            .context("--trivial-ext-proc needs a port")?;
        let nodelay = raw.get(2).map(String::as_str) != Some("nodelay-off");
        return trivial_ext_proc(port, nodelay);
    }
    let args = Args::parse(&raw)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut started = Vec::new();
        // Dropping `run` (on a signal) drops every process handle it owns, which kills them.
        let outcome = tokio::select! {
            r = run(&args, &mut started) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
            _ = term.recv() => Err(anyhow::anyhow!("terminated")),
        };
        report_leftovers(&started).await;
        outcome
    })
}

// ---------------------------------------------------------------------------------------------
// The trivial ext_proc server (hidden mode).

/// Always-allow ext_proc: every RequestHeaders gets a default `HeadersResponse` (continue, no
/// mutation, no metadata). The stream handling mirrors the policy engine's `extproc.rs` (one task
/// per stream, a 4-deep channel), so (d) versus (e) isolates the engine's own work.
struct AlwaysAllow;

#[tonic::async_trait]
impl ExternalProcessor for AlwaysAllow {
    type ProcessStream = ReceiverStream<Result<ProcessingResponse, Status>>;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            while let Ok(Some(msg)) = inbound.message().await {
                let response = match msg.request {
                    Some(Req::RequestHeaders(_)) => {
                        Resp::RequestHeaders(HeadersResponse::default())
                    }
                    Some(Req::ResponseHeaders(_)) => {
                        Resp::ResponseHeaders(HeadersResponse::default())
                    }
                    Some(Req::RequestBody(_)) => Resp::RequestBody(BodyResponse::default()),
                    Some(Req::ResponseBody(_)) => Resp::ResponseBody(BodyResponse::default()),
                    Some(Req::RequestTrailers(_)) => {
                        Resp::RequestTrailers(TrailersResponse::default())
                    }
                    Some(Req::ResponseTrailers(_)) => {
                        Resp::ResponseTrailers(TrailersResponse::default())
                    }
                    None => continue,
                };
                let msg = ProcessingResponse {
                    response: Some(response),
                    ..Default::default()
                };
                if tx.send(Ok(msg)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Runs the trivial server on 127.0.0.1:`port` until killed, on the same kind of runtime and
/// tonic server as the policy engine (`#[tokio::main]`, default builder, a bound listener).
///
/// With `nodelay` (the default) accepted connections get TCP_NODELAY, as tonic's own
/// `Server::serve(addr)` does by default. `serve_with_incoming` ignores the builder's
/// `tcp_nodelay`, so a plain `TcpListenerStream` (what the policy engine's `main.rs` passes)
/// leaves Nagle's algorithm on; `--trivial-nodelay off` reproduces that socket setup here.
fn trivial_ext_proc(port: u16, nodelay: bool) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .with_context(|| format!("trivial ext_proc: cannot listen on 127.0.0.1:{port}"))?;
        eprintln!("trivial ext_proc listening on 127.0.0.1:{port}, TCP_NODELAY {nodelay}");
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(nodelay));
        tonic::transport::Server::builder()
            .add_service(ExternalProcessorServer::new(AlwaysAllow))
            .serve_with_incoming(incoming)
            .await?;
        Ok(())
    })
}

/// Starts `datapath --trivial-ext-proc <port> [nodelay-off]` and waits until it accepts
/// connections.
async fn spawn_trivial(port: u16, nodelay: bool, log: &Path) -> Result<Child> {
    let exe = std::env::current_exe().context("locating this program")?;
    let log = std::fs::File::create(log)?;
    let mut cmd = Command::new(exe);
    cmd.arg("--trivial-ext-proc").arg(port.to_string());
    if !nodelay {
        cmd.arg("nodelay-off");
    }
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    gateway_envoy::die_with_parent(&mut cmd);
    let child = cmd
        .spawn()
        .context("starting the trivial ext_proc server")?;
    eventually(
        PATIENCE,
        "trivial ext_proc server listening",
        || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        },
    )
    .await?;
    Ok(child)
}

// ---------------------------------------------------------------------------------------------
// Processes and CPU time.

/// One process from `/proc/<pid>/stat`.
#[derive(Debug, Clone)]
struct ProcInfo {
    pid: u32,
    comm: String,
    ppid: u32,
    state: char,
    /// utime + stime, in clock ticks.
    ticks: u64,
}

fn read_proc(pid: u32) -> Option<ProcInfo> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`; comm may hold spaces or parentheses: split at the last ')'.
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let comm = stat.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state): field n is rest[n - 3]; utime is field 14, stime field 15.
    let field = |n: usize| rest.get(n - 3).and_then(|s| s.parse::<u64>().ok());
    Some(ProcInfo {
        pid,
        comm,
        ppid: u32::try_from(field(4)?).ok()?,
        state: rest.first()?.chars().next()?,
        ticks: field(14)? + field(15)?,
    })
}

/// Every live (non-zombie) child of `parent`.
fn children_of(parent: u32) -> Vec<ProcInfo> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(read_proc)
        .filter(|p| p.ppid == parent && p.state != 'Z')
        .collect()
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Waits for a child of `parent` whose command name starts with `comm` (and whose command line
/// contains `needle`, when given).
async fn find_child(parent: u32, comm: &str, needle: Option<&str>) -> Result<u32> {
    let what = format!("a '{comm}' child of pid {parent}");
    eventually(PATIENCE, &what, || async move {
        children_of(parent)
            .into_iter()
            .find(|p| p.comm.starts_with(comm) && needle.is_none_or(|n| cmdline(p.pid).contains(n)))
            .map(|p| p.pid)
    })
    .await
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// CPU time of this process's waited-for children (here: finished `wrk` runs), in microseconds.
fn children_cpu_us() -> u64 {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) } != 0 {
        return 0;
    }
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(usage.ru_utime) + us(usage.ru_stime)
}

/// Machine-wide busy time (user + nice + system + irq + softirq) and steal time (CPU the
/// hypervisor gave to someone else; no process here is charged for it) from `/proc/stat`, in
/// clock ticks.
fn machine_ticks() -> (u64, u64) {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("cpu "))?.to_string();
            let v: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            // user, nice, system, (idle, iowait,) irq, softirq: with tick accounting the ticks a
            // process spends serving interrupts count in its stime but in irq/softirq here.
            let busy = v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)?;
            Some((busy, v.get(7).copied().unwrap_or(0)))
        })
        .unwrap_or((0, 0))
}

/// A process this program started or found, remembered so that the end of the run can check
/// that it is gone.
#[derive(Debug, Clone)]
struct Tracked {
    what: String,
    pid: u32,
    comm: String,
}

fn track(started: &mut Vec<Tracked>, what: &str, pid: u32) {
    let comm = read_proc(pid).map(|p| p.comm).unwrap_or_default();
    started.push(Tracked {
        what: what.into(),
        pid,
        comm,
    });
}

/// After everything is dropped: waits briefly for every tracked process to be gone and says so.
async fn report_leftovers(started: &[Tracked]) {
    let alive = || -> Vec<&Tracked> {
        started
            .iter()
            .filter(|t| read_proc(t.pid).is_some_and(|p| p.state != 'Z' && p.comm == t.comm))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !alive().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left = alive();
    if left.is_empty() {
        eprintln!(
            "cleanup: all {} processes this run started are gone",
            started.len()
        );
    } else {
        for t in left {
            eprintln!(
                "cleanup: WARNING: {} (pid {}) is still running",
                t.what, t.pid
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// wrk.

/// One bounded `wrk -t2 -c50 --latency` run against `url` with the key header.
async fn run_wrk(bin: &Path, url: &str, key: &str, seconds: u64) -> Result<WrkRun> {
    let mut cmd = Command::new(bin);
    cmd.args([
        "-t2",
        "-c50",
        &format!("-d{seconds}s"),
        "--timeout",
        "5s",
        "--latency",
        "-H",
        &format!("{KEY_HEADER}: {key}"),
    ])
    .arg(url)
    .stdin(Stdio::null());
    gateway_tests::wrk::run(cmd, seconds).await
}

// ---------------------------------------------------------------------------------------------
// Cases and measurements.

/// One case of the table: where wrk sends its load and which processes to account.
struct Case {
    key: &'static str,
    label: &'static str,
    url: String,
    envoy: Option<u32>,
    engine: Option<u32>,
}

/// Figures of one measured run of one case.
#[derive(Debug, Clone, Default)]
struct Sample {
    wrk: WrkRun,
    envoy_us: Option<f64>,
    engine_us: Option<f64>,
    self_us: f64,
    wrk_us: f64,
    /// CPU used by everything else on the machine during the run, in cores.
    other_cores: f64,
    /// CPU stolen by the hypervisor during the run, in cores.
    steal_cores: f64,
}

/// CPU counters at one instant.
struct Counters {
    at: Instant,
    envoy: Option<u64>,
    engine: Option<u64>,
    own: u64,
    ours: u64,
    children_us: u64,
    busy: u64,
    steal: u64,
}

fn ticks_of(pid: Option<u32>, what: &str) -> Result<Option<u64>> {
    pid.map(|p| {
        read_proc(p)
            .filter(|i| i.state != 'Z')
            .map(|i| i.ticks)
            .with_context(|| format!("{what} (pid {p}) is gone"))
    })
    .transpose()
}

impl Counters {
    fn read(case: &Case, ours: &[u32]) -> Result<Self> {
        let own = read_proc(std::process::id()).map_or(0, |p| p.ticks);
        let (busy, steal) = machine_ticks();
        Ok(Self {
            at: Instant::now(),
            envoy: ticks_of(case.envoy, "Envoy")?,
            engine: ticks_of(case.engine, "the ext_proc server")?,
            own,
            ours: own
                + ours
                    .iter()
                    .filter_map(|p| read_proc(*p))
                    .map(|p| p.ticks)
                    .sum::<u64>(),
            children_us: children_cpu_us(),
            busy,
            steal,
        })
    }
}

/// Warms up, then runs wrk once for `seconds` while reading CPU counters around it.
async fn measure(case: &Case, wrk: &Path, key: &str, args: &Args, ours: &[u32]) -> Result<Sample> {
    if args.warmup > 0 {
        run_wrk(wrk, &case.url, key, args.warmup).await?;
    }
    let before = Counters::read(case, ours)?;
    let run = run_wrk(wrk, &case.url, key, args.seconds).await?;
    let after = Counters::read(case, ours)?;
    let tck = clock_ticks();
    let n = run.requests.max(1) as f64;
    let per_req = |b: Option<u64>, a: Option<u64>| match (b, a) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b) as f64 / tck * 1e6 / n),
        _ => None,
    };
    let wrk_us = after.children_us.saturating_sub(before.children_us) as f64;
    let elapsed = after.at.duration_since(before.at).as_secs_f64().max(0.001);
    let busy = after.busy.saturating_sub(before.busy) as f64 / tck;
    let ours_secs = after.ours.saturating_sub(before.ours) as f64 / tck + wrk_us / 1e6;
    let sample = Sample {
        envoy_us: per_req(before.envoy, after.envoy),
        engine_us: per_req(before.engine, after.engine),
        self_us: after.own.saturating_sub(before.own) as f64 / tck * 1e6 / n,
        wrk_us: wrk_us / n,
        other_cores: ((busy - ours_secs) / elapsed).max(0.0),
        steal_cores: after.steal.saturating_sub(before.steal) as f64 / tck / elapsed,
        wrk: run,
    };
    eprintln!(
        "   ({}) {:.0} rps, p50 {:.2} ms, p99 {:.2} ms, {} requests, {} non-2xx {}",
        case.key,
        sample.wrk.rps,
        sample.wrk.p50_ms,
        sample.wrk.p99_ms,
        sample.wrk.requests,
        sample.wrk.non_2xx,
        sample.wrk.socket_errors
    );
    Ok(sample)
}

/// Means over the rounds of one case.
#[derive(Debug, Clone, Default)]
struct Summary {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: u64,
    non_2xx: u64,
    socket_errors: Vec<String>,
    envoy_us: Option<f64>,
    engine_us: Option<f64>,
    self_us: f64,
    wrk_us: f64,
    other_cores: f64,
    steal_cores: f64,
    /// One request at a time, before the load.
    idle: Stats,
}

impl Summary {
    fn of(samples: &[Sample]) -> Self {
        let n = samples.len().max(1) as f64;
        let mean = |f: &dyn Fn(&Sample) -> f64| samples.iter().map(f).sum::<f64>() / n;
        let mean_opt = |f: &dyn Fn(&Sample) -> Option<f64>| {
            let v: Option<Vec<f64>> = samples.iter().map(f).collect();
            v.map(|v| v.iter().sum::<f64>() / n)
        };
        Self {
            rps: mean(&|s| s.wrk.rps),
            p50_ms: mean(&|s| s.wrk.p50_ms),
            p99_ms: mean(&|s| s.wrk.p99_ms),
            requests: samples.iter().map(|s| s.wrk.requests).sum(),
            non_2xx: samples.iter().map(|s| s.wrk.non_2xx).sum(),
            socket_errors: samples
                .iter()
                .map(|s| s.wrk.socket_errors.clone())
                .filter(|e| !e.is_empty())
                .collect(),
            envoy_us: mean_opt(&|s| s.envoy_us),
            engine_us: mean_opt(&|s| s.engine_us),
            self_us: mean(&|s| s.self_us),
            wrk_us: mean(&|s| s.wrk_us),
            other_cores: mean(&|s| s.other_cores),
            steal_cores: mean(&|s| s.steal_cores),
            idle: Stats::default(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The bare Envoy of case (b).

/// A static bootstrap: one HTTP listener (no SO_REUSEPORT, exact connection balance, like the
/// gateway's listener), one `prefix: /` route to one static cluster, the router filter. No xDS.
fn bare_bootstrap(listen_port: u16, admin_port: u16, upstream_port: u16) -> Value {
    json!({
        "node": {"id": "datapath-bare", "cluster": "datapath"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [{
                "name": "bare_http",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen_port}},
                "enable_reuse_port": false,
                "connection_balance_config": {"exact_balance": {}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "bare",
                        "codec_type": "AUTO",
                        "route_config": {
                            "name": "bare",
                            "virtual_hosts": [{
                                "name": "all",
                                "domains": ["*"],
                                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}]
                            }]
                        },
                        "http_filters": [{
                            "name": "envoy.filters.http.router",
                            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
                        }]
                    }
                }]}]
            }],
            "clusters": [{
                "name": "upstream",
                "type": "STATIC",
                "connect_timeout": "5s",
                "load_assignment": {
                    "cluster_name": "upstream",
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                        "address": "127.0.0.1", "port_value": upstream_port
                    }}}}]}]
                }
            }]
        }
    })
}

/// Starts the bare Envoy and waits until it routes to the upstream.
async fn start_bare_envoy(
    dir: &Path,
    upstream: &EchoUpstream,
    client: &reqwest::Client,
) -> Result<(Child, String)> {
    let (port, admin) = (free_port(), free_port());
    let config_path = dir.join("bare-envoy.json");
    std::fs::write(
        &config_path,
        serde_json::to_string_pretty(&bare_bootstrap(port, admin, upstream.addr.port()))?,
    )?;
    let cmd = gateway_envoy::EnvoyCommand {
        binary: gateway_envoy::find_binary(None)?,
        config_path,
        concurrency: Some(2),
        log_level: "warning".into(),
        log_file: Some(dir.join("bare-envoy.log")),
    };
    let child = cmd.spawn()?;
    let url = format!("http://127.0.0.1:{port}{PATH}");
    let probe = url.clone();
    eventually(PATIENCE, "bare Envoy routing to the upstream", || {
        let (c, u) = (client.clone(), probe.clone());
        async move {
            c.get(&u)
                .send()
                .await
                .ok()
                .filter(|r| r.status() == StatusCode::OK)
                .map(|_| ())
        }
    })
    .await
    .with_context(|| {
        let log = std::fs::read_to_string(dir.join("bare-envoy.log")).unwrap_or_default();
        format!("bare Envoy log:\n{log}")
    })?;
    Ok((child, url))
}

// ---------------------------------------------------------------------------------------------
// Gateways.

/// The API of cases (d) and (e): key auth on `X-API-Key` plus a rate limit that never trips.
fn secured_api(upstream: &EchoUpstream) -> Value {
    let mut api = gateway_tests::rest_api(
        "secured",
        "/secured",
        &upstream.url(""),
        &[("GET", "/items/{id}")],
    );
    api["spec"]["policies"] = json!([
        {"name": "api-key-auth", "version": "v1", "params": {"key": KEY_HEADER}},
        {"name": "rate-limit", "version": "v1", "params": {"limit": 100_000_000u64, "window": 3600}}
    ]);
    api
}

async fn create_api(gw: &Gateway, api: &Value) -> Result<()> {
    let (status, body) = gw.create_api(api).await?;
    ensure!(
        status == StatusCode::CREATED,
        "POST /rest-apis answered {status}: {body}"
    );
    Ok(())
}

async fn create_key(gw: &Gateway, api: &str, name: &str) -> Result<String> {
    let (status, body) = gw
        .send_json(
            Method::POST,
            &format!("/rest-apis/{api}/api-keys"),
            &json!({"name": name}),
        )
        .await?;
    ensure!(
        status == StatusCode::CREATED,
        "creating key {name} answered {status}: {body}"
    );
    body["key"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("no key in {body}"))
}

/// `GET url` through the router with an optional key; the status.
async fn status_of(gw: &Gateway, url: &str, key: Option<&str>) -> Option<u16> {
    let mut req = gw.client().get(url);
    if let Some(k) = key {
        req = req.header(KEY_HEADER, k);
    }
    let r = req.send().await.ok()?;
    let status = r.status().as_u16();
    // Drain the body so the connection is reused.
    let _ = r.bytes().await;
    Some(status)
}

async fn wait_status(gw: &Gateway, url: &str, key: Option<&str>, want: u16) -> Result<()> {
    let what = format!("GET {url} -> {want}");
    eventually(PATIENCE, &what, || async move {
        (status_of(gw, url, key).await == Some(want)).then_some(())
    })
    .await
}

/// Polls every millisecond until `GET url` with `key` answers `want`; returns when.
async fn first_status(gw: &Gateway, url: &str, key: &str, want: u16) -> Result<Instant> {
    let deadline = Instant::now() + KEY_BOUND;
    loop {
        if status_of(gw, url, Some(key)).await == Some(want) {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("GET {url} with the key did not answer {want} within {KEY_BOUND:?}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Latency of `n` requests sent one at a time (after 10 unmeasured ones) on one kept-alive
/// connection: what a single client sees on an otherwise idle gateway.
async fn idle_latency(client: &reqwest::Client, url: &str, key: &str, n: usize) -> Result<Stats> {
    let mut latencies = Vec::with_capacity(n);
    for i in 0..n + 10 {
        let t = Instant::now();
        let r = client.get(url).header(KEY_HEADER, key).send().await?;
        let status = r.status();
        r.bytes().await?;
        let elapsed = t.elapsed();
        ensure!(status == StatusCode::OK, "GET {url} answered {status}");
        if i >= 10 {
            latencies.push(elapsed);
        }
    }
    Ok(Stats::of(&latencies))
}

/// Key create -> usable and revoke -> rejected, `samples` of each, one key at a time.
async fn key_latency(gw: &Gateway, api: &str, url: &str, samples: usize) -> Result<(Stats, Stats)> {
    let (mut create, mut revoke) = (Vec::new(), Vec::new());
    for i in 0..samples {
        let name = format!("latency-{i}");
        let key = create_key(gw, api, &name).await?;
        let t0 = Instant::now();
        create.push(first_status(gw, url, &key, 200).await?.duration_since(t0));
        let r = gw
            .mgmt(Method::DELETE, &format!("/rest-apis/{api}/api-keys/{name}"))
            .send()
            .await?;
        let status = r.status();
        let _ = r.bytes().await;
        ensure!(status.is_success(), "revoking key {name} answered {status}");
        let t0 = Instant::now();
        revoke.push(first_status(gw, url, &key, 401).await?.duration_since(t0));
    }
    Ok((Stats::of(&create), Stats::of(&revoke)))
}

/// What the run found out about case (e)'s setup, for the output.
struct TrivialSetup {
    port: u16,
    pid: u32,
    note: String,
}

// ---------------------------------------------------------------------------------------------
// The run.

/// Removes the scratch directory when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn run(args: &Args, started: &mut Vec<Tracked>) -> Result<()> {
    let wrk = find_wrk().context("wrk not found (/usr/bin/wrk or PATH)")?;
    for bin in ["gateway-controller", "gateway-policy-engine"] {
        let path = gateway_tests::sibling_binary(bin);
        ensure!(
            path.is_file(),
            "{} not found: `cargo build --release -p gateway-controller -p gateway-policy-engine` first",
            path.display()
        );
    }
    if cfg!(debug_assertions) {
        eprintln!("warning: datapath is a debug build; figures are only meaningful with --release");
    }
    let envoy_bin = gateway_envoy::find_binary(None)?;
    let envoy_version = std::process::Command::new(&envoy_bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let per_case = args.warmup + args.seconds;
    eprintln!(
        "datapath: {cores} cores, wrk -t2 -c50 -d{}s (+{} s warm-up) x 5 cases x {} round(s): ~{} s of load",
        args.seconds,
        args.warmup,
        args.rounds,
        per_case * 5 * args.rounds as u64
    );
    eprintln!("   Envoy: {} ({envoy_version})", envoy_bin.display());

    let scratch = Scratch(std::env::temp_dir().join(format!(
        "datapath-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    )));
    std::fs::create_dir_all(&scratch.0)?;
    let me = std::process::id();
    let upstream = EchoUpstream::start().await?;
    let probe_client = reqwest::Client::new();

    // (b) the bare Envoy.
    eprintln!("== starting: bare Envoy (b)");
    let (bare, bare_url) = start_bare_envoy(&scratch.0, &upstream, &probe_client).await?;
    let bare_pid = bare.id().context("bare Envoy exited")?;
    track(started, "bare Envoy", bare_pid);

    // (c), (d): a gateway with its managed Envoy and policy engine.
    eprintln!("== starting: gateway 1 (c, d)");
    let mut config = GatewayConfig::new("datapath-policies");
    config.envoy_concurrency = 2;
    config.managed_data_plane = true;
    let mut gw1 = Gateway::start_with(config).await?;
    let ctl1 = gw1
        .controller_pid()
        .context("gateway 1 controller not running")?;
    track(started, "gateway 1 controller", ctl1);
    let envoy1 = find_child(ctl1, "envoy", None).await?;
    track(started, "gateway 1 Envoy", envoy1);
    let engine1 = find_child(ctl1, "gateway-policy", None).await?;
    track(started, "gateway 1 policy engine", engine1);
    create_api(
        &gw1,
        &gateway_tests::rest_api(
            "plain",
            "/plain",
            &upstream.url(""),
            &[("GET", "/items/{id}")],
        ),
    )
    .await?;
    create_api(&gw1, &secured_api(&upstream)).await?;
    let key1 = create_key(&gw1, "secured", "wrk").await?;
    let plain_url = gw1.router_url(&format!("/plain{PATH}"));
    let secured1_url = gw1.router_url(&format!("/secured{PATH}"));
    wait_status(&gw1, &plain_url, None, 200).await?;
    wait_status(&gw1, &secured1_url, Some(&key1), 200).await?;
    ensure!(
        status_of(&gw1, &secured1_url, None).await == Some(401),
        "gateway 1: a request without a key is not refused"
    );

    // (e): a second gateway whose Envoy consults the trivial ext_proc server.
    //
    // How the controller is kept from running its own engine: the harness writes `[policy_engine]`
    // itself (a second table would be a TOML error) and has no "managed engine off" switch while
    // the data plane is managed. Starting the trivial server first on `engine_port` would make the
    // managed engine fail to bind and be restarted forever, with backoff, polluting the machine and
    // the log. Instead we use the harness's documented unmanaged mode: `managed_data_plane = false`
    // writes `managed = false` for both Envoy and the engine, and the harness runs Envoy itself
    // (same `write_bootstrap`, same `EnvoyCommand`, same `--concurrency 2`; the controller
    // configures it over xDS exactly as its own) and the real engine on `engine_port`. We stop
    // that engine with the harness's `kill_engine()` and start the trivial server on the freed
    // port, where Envoy's `policy_engine` cluster points. No harness file is edited. The output
    // then checks that the controller started no engine (its log) and that a keyless request is
    // allowed (only the trivial server would allow it).
    eprintln!("== starting: trivial ext_proc server and gateway 2 (e)");
    let mut config = GatewayConfig::new("datapath-trivial");
    config.envoy_concurrency = 2;
    config.managed_data_plane = false;
    let mut gw2 = Gateway::start_with(config).await?;
    let ctl2 = gw2
        .controller_pid()
        .context("gateway 2 controller not running")?;
    track(started, "gateway 2 controller", ctl2);
    let envoy2 = find_child(
        me,
        "envoy",
        Some(&gw2.config.data_dir.display().to_string()),
    )
    .await?;
    track(started, "gateway 2 Envoy", envoy2);
    gw2.kill_engine().await?;
    let trivial_port = gw2.config.engine_port;
    let trivial = spawn_trivial(
        trivial_port,
        args.trivial_nodelay,
        &scratch.0.join("trivial-ext-proc.log"),
    )
    .await?;
    let trivial_pid = trivial.id().context("trivial ext_proc server exited")?;
    track(started, "trivial ext_proc server", trivial_pid);
    create_api(&gw2, &secured_api(&upstream)).await?;
    let key2 = create_key(&gw2, "secured", "wrk").await?;
    let secured2_url = gw2.router_url(&format!("/secured{PATH}"));
    wait_status(&gw2, &secured2_url, Some(&key2), 200).await?;
    let keyless_allowed = status_of(&gw2, &secured2_url, None).await == Some(200);
    let log2 =
        std::fs::read_to_string(gw2.config.data_dir.join("controller.log")).unwrap_or_default();
    let engine_started_by_controller = log2
        .lines()
        .any(|l| l.contains("policy engine") && l.contains("started"));
    let engine_children: Vec<u32> = children_of(ctl2)
        .into_iter()
        .filter(|p| p.comm.starts_with("gateway-policy"))
        .map(|p| p.pid)
        .collect();
    ensure!(
        keyless_allowed && !engine_started_by_controller && engine_children.is_empty(),
        "gateway 2 is not wired to the trivial server (keyless request allowed: {keyless_allowed}, \
         controller log shows an engine start: {engine_started_by_controller}, engine children: {engine_children:?})"
    );
    let setup = TrivialSetup {
        port: trivial_port,
        pid: trivial_pid,
        note: format!(
            "gateway 2 controller (pid {ctl2}) ran with [policy_engine] managed = false: its log has no \
             policy-engine start and it has no engine child; the harness-run engine was killed and the \
             trivial server (pid {trivial_pid}) took over 127.0.0.1:{trivial_port}; a request without a key \
             is answered 200 there (401 on gateway 1), so Envoy consults the trivial server"
        ),
    };
    eprintln!("   {}", setup.note);

    // Everything of ours, for the "other load" column.
    let ours = [bare_pid, ctl1, envoy1, engine1, ctl2, envoy2, trivial_pid];
    let cases = [
        Case {
            key: "a",
            label: "direct to the upstream (in this process)",
            url: upstream.url(PATH),
            envoy: None,
            engine: None,
        },
        Case {
            key: "b",
            label: "bare Envoy, static route",
            url: bare_url,
            envoy: Some(bare_pid),
            engine: None,
        },
        Case {
            key: "c",
            label: "gateway route, no policies",
            url: plain_url,
            envoy: Some(envoy1),
            engine: Some(engine1),
        },
        Case {
            key: "d",
            label: "gateway route + api-key-auth + rate-limit (our engine)",
            url: secured1_url.clone(),
            envoy: Some(envoy1),
            engine: Some(engine1),
        },
        Case {
            key: "e",
            label: "same API + policies, trivial always-allow ext_proc",
            url: secured2_url,
            envoy: Some(envoy2),
            engine: Some(trivial_pid),
        },
    ];
    let keys = [&key1, &key1, &key1, &key1, &key2];
    eprintln!(
        "== unloaded latency: {} sequential requests per case",
        args.idle
    );
    let mut idle = Vec::new();
    for (case, key) in cases.iter().zip(keys) {
        let stats = idle_latency(&probe_client, &case.url, key, args.idle).await?;
        eprintln!(
            "   ({}) p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            case.key, stats.p50, stats.p99, stats.max
        );
        idle.push(stats);
    }
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); cases.len()];
    for round in 1..=args.rounds {
        eprintln!("== round {round}/{}", args.rounds);
        for ((case, key), into) in cases.iter().zip(keys).zip(samples.iter_mut()) {
            eprintln!("   ({}) {}: {}", case.key, case.label, case.url);
            into.push(measure(case, &wrk, key, args, &ours).await?);
        }
    }
    let summaries: Vec<Summary> = samples
        .iter()
        .zip(idle)
        .map(|(s, idle)| Summary {
            idle,
            ..Summary::of(s)
        })
        .collect();

    eprintln!(
        "== key create -> usable and revoke -> rejected on gateway 1, {} samples",
        args.samples
    );
    let (create, revoke) = key_latency(&gw1, "secured", &secured1_url, args.samples).await?;

    print_report(
        args,
        cores,
        &envoy_version,
        &cases,
        &summaries,
        create,
        revoke,
        &setup,
    );

    // Orderly shutdown; on an error above, dropping the handles kills everything instead.
    eprintln!("== stopping");
    if let Err(e) = gw1.stop_controller().await {
        eprintln!("   (stopping gateway 1: {e:#})");
    }
    if let Err(e) = gw2.stop_controller().await {
        eprintln!("   (stopping gateway 2: {e:#})");
    }
    drop(gw2);
    drop(gw1);
    drop(trivial);
    drop(bare);
    drop(upstream);
    drop(scratch);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Output.

fn mark(ok: bool) -> &'static str {
    if ok { "ok" } else { "MISSED" }
}

fn us(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1}"))
}

#[allow(clippy::too_many_arguments)]
fn print_report(
    args: &Args,
    cores: usize,
    envoy_version: &str,
    cases: &[Case],
    s: &[Summary],
    create: Stats,
    revoke: Stats,
    setup: &TrivialSetup,
) {
    println!();
    println!(
        "Data path: wrk -t2 -c50 -d{}s --latency ({} s warm-up before each run, {} round(s), means), \
         {cores} cores shared by wrk, Envoy, the engine and the upstream; {envoy_version}",
        args.seconds, args.warmup, args.rounds
    );
    println!(
        "(e) setup: trivial ext_proc on 127.0.0.1:{} (pid {}, TCP_NODELAY {}): {}",
        setup.port,
        setup.pid,
        if args.trivial_nodelay { "on" } else { "off" },
        setup.note
    );
    println!();
    println!(
        "| case | rps | p50 | p99 | non-2xx / requests | unloaded p50 / p99 | Envoy CPU/req | engine CPU/req | upstream (this process) CPU/req | wrk CPU/req | other load / steal |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (c, r) in cases.iter().zip(s) {
        let errors = if r.socket_errors.is_empty() {
            String::new()
        } else {
            format!(" ({})", r.socket_errors.join("; "))
        };
        println!(
            "| ({}) {} | {:.0} | {:.2} ms | {:.2} ms | {} / {}{errors} | {:.2} / {:.2} ms | {} µs | {} µs | {:.1} µs | {:.1} µs | {:.2} / {:.2} cores |",
            c.key,
            c.label,
            r.rps,
            r.p50_ms,
            r.p99_ms,
            r.non_2xx,
            r.requests,
            r.idle.p50,
            r.idle.p99,
            us(r.envoy_us),
            us(r.engine_us),
            r.self_us,
            r.wrk_us,
            r.other_cores,
            r.steal_cores
        );
    }
    println!();
    let [_, b, c, d, e] = s else {
        return;
    };
    println!("| check | measured | target |");
    println!("|---|---|---|");
    let ratio = c.rps / b.rps.max(1.0);
    println!(
        "| (c) rps / (b) rps | {ratio:.3} {} | >= {ROUTE_VS_BARE} |",
        mark(ratio >= ROUTE_VS_BARE)
    );
    let ratio = d.rps / e.rps.max(1.0);
    println!(
        "| (d) rps / (e) rps | {ratio:.3} {} | >= {POLICIES_VS_TRIVIAL} |",
        mark(ratio >= POLICIES_VS_TRIVIAL)
    );
    let extra = d.p99_ms - e.p99_ms;
    println!(
        "| p99 (d) - p99 (e) | {extra:+.2} ms {} | <= +{P99_EXTRA_MS} ms |",
        mark(extra <= P99_EXTRA_MS)
    );
    match (d.engine_us, e.engine_us) {
        (Some(dv), Some(ev)) => {
            let ratio = dv / ev.max(0.001);
            println!(
                "| engine CPU/req (d) / trivial server's (e) | {dv:.1} / {ev:.1} µs = {ratio:.3} {} | <= {ENGINE_CPU_VS_TRIVIAL} |",
                mark(ratio <= ENGINE_CPU_VS_TRIVIAL)
            );
        }
        _ => println!(
            "| engine CPU/req (d) / trivial server's (e) | n/a | <= {ENGINE_CPU_VS_TRIVIAL} |"
        ),
    }
    println!(
        "| key create -> usable, p50 / p99 / max ({} samples) | {:.1} / {:.1} / {:.1} ms {} | p99 <= {KEY_P99_MS} ms |",
        args.samples,
        create.p50,
        create.p99,
        create.max,
        mark(create.p99 <= KEY_P99_MS)
    );
    println!(
        "| key revoke -> rejected, p50 / p99 / max ({} samples) | {:.1} / {:.1} / {:.1} ms {} | p99 <= {KEY_P99_MS} ms |",
        args.samples,
        revoke.p50,
        revoke.p99,
        revoke.max,
        mark(revoke.p99 <= KEY_P99_MS)
    );
    if s.iter()
        .any(|r| r.non_2xx > 0 || !r.socket_errors.is_empty())
    {
        println!();
        println!(
            "WARNING: some runs had non-2xx answers or socket errors; their figures are suspect."
        );
    }
    println!();
}
