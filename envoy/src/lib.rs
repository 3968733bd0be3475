//! How the gateway runs the real Envoy: the bootstrap it is started with and the child process.

pub mod bootstrap;
pub mod process;

pub use bootstrap::{BootstrapSettings, render};
pub use process::{EnvoyCommand, EnvoyError, die_with_parent, find_binary};

/// Writes the bootstrap for `settings` to `path` (creating parent directories).
pub fn write_bootstrap(
    path: &std::path::Path,
    settings: &BootstrapSettings,
) -> Result<(), EnvoyError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let text = serde_json::to_string_pretty(&render(settings)).map_err(std::io::Error::other)?;
    std::fs::write(path, text)?;
    Ok(())
}
