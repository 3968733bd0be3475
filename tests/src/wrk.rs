//! Running `wrk` from the benchmark programs: finding it and reading its figures.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::process::Command;

/// The figures of one `wrk --latency` run.
#[derive(Debug, Clone, Default)]
pub struct WrkRun {
    /// Requests per second.
    pub rps: f64,
    /// Median latency.
    pub p50_ms: f64,
    /// 99th percentile latency.
    pub p99_ms: f64,
    /// Requests completed.
    pub requests: u64,
    /// Answers that were not 2xx or 3xx.
    pub non_2xx: u64,
    /// wrk's socket error line, if any.
    pub socket_errors: String,
}

/// Parses a wrk duration such as `812.00us`, `1.23ms`, `2.01s` or `1.00m` into milliseconds.
fn wrk_ms(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, factor) = if let Some(n) = s.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000.0)
    } else {
        (s, 1000.0)
    };
    num.parse::<f64>().ok().map(|v| v * factor)
}

/// Reads the figures from wrk's output (with `--latency`).
pub fn parse_wrk(out: &str) -> Result<WrkRun> {
    let mut run = WrkRun::default();
    let mut seen_rps = false;
    for line in out.lines().map(str::trim) {
        let second = || line.split_whitespace().nth(1).and_then(wrk_ms);
        if line.starts_with("50%") {
            run.p50_ms = second().unwrap_or(0.0);
        } else if line.starts_with("99%") {
            run.p99_ms = second().unwrap_or(0.0);
        } else if let Some(v) = line.strip_prefix("Requests/sec:") {
            run.rps = v.trim().parse().context("parsing Requests/sec")?;
            seen_rps = true;
        } else if line.contains(" requests in ") {
            run.requests = line
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            run.non_2xx = v.trim().parse().unwrap_or(0);
        } else if line.starts_with("Socket errors:") {
            run.socket_errors = line.to_string();
        }
    }
    if !seen_rps {
        bail!("unexpected wrk output:\n{out}");
    }
    Ok(run)
}

/// Runs a prepared wrk command for a load of `seconds`, bounded in time, and reads its figures.
pub async fn run(mut cmd: Command, seconds: u64) -> Result<WrkRun> {
    let child = cmd.kill_on_drop(true).output();
    let out = tokio::time::timeout(Duration::from_secs(seconds + 30), child)
        .await
        .context("wrk did not finish in time")?
        .context("running wrk")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk failed ({}): {}{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_wrk(&stdout)
}

/// The `wrk` binary: `/usr/bin/wrk` or the first on `PATH`.
pub fn find_wrk() -> Option<PathBuf> {
    let default = PathBuf::from("/usr/bin/wrk");
    if default.is_file() {
        return Some(default);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("wrk"))
            .find(|p| p.is_file())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let out = "Running 10s test @ http://127.0.0.1:8080/x\n  Latency Distribution\n     50%    1.23ms\n     99%  812.00us\n  300000 requests in 10.00s, 30.00MB read\n  Non-2xx or 3xx responses: 7\nRequests/sec:  30000.50\n";
        let r = parse_wrk(out).unwrap();
        assert_eq!(
            (r.rps, r.p50_ms, r.requests, r.non_2xx),
            (30000.5, 1.23, 300000, 7)
        );
        assert!((r.p99_ms - 0.812).abs() < 1e-9);
        assert!(parse_wrk("garbage").is_err());
    }
}
