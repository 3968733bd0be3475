//! Gateway configuration: built-in defaults, `config.toml`, then `APIP_GW_...` environment
//! overrides, validated in one place before anything starts.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "APIP_GW_";

/// The whole configuration file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Config {
    /// The controller process: management API, ADS, storage, auth, control plane.
    pub controller: ControllerConfig,
    /// The Envoy router.
    pub router: RouterConfig,
    /// `[api_key]`: API key rules.
    pub api_key: ApiKeyConfig,
    /// `[policy_engine]`: the ext_proc server Envoy consults on routes with policies.
    pub policy_engine: PolicyEngineConfig,
    /// `[websub]`: the WebSub hub behind Envoy.
    pub websub: WebSubConfig,
}

/// `[websub]`: the hub serving WebSub APIs (Envoy routes `{context}/hub` and
/// `{context}/webhook-receiver` to it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct WebSubConfig {
    /// Address the hub listens on.
    pub host: String,
    /// Port the hub listens on.
    pub port: u16,
    /// Host name or address Envoy uses to reach the hub.
    pub upstream_host: String,
    /// Lease granted when a subscriber asks for none.
    pub default_lease_seconds: u64,
    /// Longest lease granted (leases are never perpetual).
    pub max_lease_seconds: u64,
    /// Timeout of a verification of intent.
    pub verification_timeout_ms: u64,
    /// Timeout of one delivery attempt.
    pub delivery_timeout_ms: u64,
    /// Wait after the first failed delivery; doubles up to `delivery_max_delay_ms`.
    pub delivery_initial_delay_ms: u64,
    /// Longest wait between delivery attempts.
    pub delivery_max_delay_ms: u64,
    /// Attempts per event and subscriber before the event is dropped for that subscriber.
    pub delivery_max_attempts: u32,
    /// Largest published event.
    pub max_body_bytes: usize,
}

impl Default for WebSubConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 9095,
            upstream_host: "127.0.0.1".into(),
            default_lease_seconds: 86_400,
            max_lease_seconds: 864_000,
            verification_timeout_ms: 10_000,
            delivery_timeout_ms: 10_000,
            delivery_initial_delay_ms: 1_000,
            delivery_max_delay_ms: 60_000,
            delivery_max_attempts: 10,
            max_body_bytes: 1 << 20,
        }
    }
}

/// `[policy_engine]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct PolicyEngineConfig {
    /// Address of the engine's ext_proc server (as Envoy reaches it).
    pub host: String,
    /// Port of the engine's ext_proc server.
    pub port: u16,
    /// Longest wait for a decision; past it the request fails (closed).
    pub timeout_ms: u64,
    /// Start and supervise an engine as a child of the controller.
    pub managed: bool,
    /// Path of the engine binary; the one next to the controller when empty.
    pub binary: String,
}

impl Default for PolicyEngineConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 9001,
            timeout_ms: 500,
            managed: true,
            binary: String::new(),
        }
    }
}

/// `[api_key]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ApiKeyConfig {
    /// Active keys one user may hold per API.
    pub keys_per_user_per_api: u32,
}

impl Default for ApiKeyConfig {
    fn default() -> Self {
        Self {
            keys_per_user_per_api: 10,
        }
    }
}

/// `[controller]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ControllerConfig {
    /// `[controller.server]`: the management REST API.
    pub server: ServerConfig,
    /// `[controller.xds]`: the ADS server Envoy connects to.
    pub xds: BindConfig,
    /// `[controller.policy_server]`: the policy stream policy engines follow.
    pub policy_server: PolicyServerConfig,
    /// `[controller.storage]`.
    pub storage: StorageConfig,
    /// `[controller.logging]`.
    pub logging: LoggingConfig,
    /// `[controller.controlplane]`: the on-prem API Manager to sync to.
    pub controlplane: ControlPlaneConfig,
    /// `[controller.auth]`.
    pub auth: AuthConfig,
}

/// `[controller.server]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ServerConfig {
    /// Identifier of this gateway.
    pub gateway_id: String,
    /// Bind address of the management API.
    pub host: String,
    /// Port of the management API.
    pub port: u16,
    /// Largest accepted request body in bytes.
    pub max_body_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            gateway_id: "gateway-1".into(),
            host: "127.0.0.1".into(),
            port: 9090,
            max_body_bytes: 1 << 20,
        }
    }
}

/// A host and port to listen on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct BindConfig {
    /// Bind address.
    pub host: String,
    /// Port.
    pub port: u16,
}

impl Default for BindConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 18000,
        }
    }
}

/// `[controller.policy_server]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct PolicyServerConfig {
    /// Bind address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Token policy engines must present. Empty: a random one is made for the managed engine
    /// (external engines are then refused); with no managed engine, engines are not checked.
    pub token: String,
}

impl Default for PolicyServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 18001,
            token: String::new(),
        }
    }
}

/// `[controller.storage]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct StorageConfig {
    /// Directory holding `gateway.db` and generated files.
    pub data_dir: PathBuf,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
        }
    }
}

/// `[controller.logging]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct LoggingConfig {
    /// trace, debug, info, warn or error.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

/// `[controller.controlplane]`: the on-prem WSO2 API Manager that APIs deployed here are synced
/// to. The keys of the bottom-up deployment guide keep their names; the rest are ours.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ControlPlaneConfig {
    /// `host:port` of the API Manager (HTTPS); empty disables sync.
    pub host: String,
    /// Skip TLS verification of the API Manager (its certificate is then not checked at all).
    pub insecure_skip_verify: bool,
    /// PEM file of extra CA certificates trusted for the API Manager, besides the system roots.
    pub ca_file: String,
    /// Gateway registration token, sent as `api-key` on the control channel when set.
    pub token: String,
    /// OAuth2 client id (client credentials grant).
    pub apim_oauth2_client_id: String,
    /// OAuth2 client secret.
    pub apim_oauth2_client_secret: String,
    /// OAuth2 user name (password grant, used when no client id is set).
    pub apim_oauth2_username: String,
    /// OAuth2 password.
    pub apim_oauth2_password: String,
    /// Gateway environment name in the API Manager that synced APIs are deployed to.
    pub gateway_name: String,
    /// Whether APIs deployed here are synced at all.
    pub deployment_sync_enabled: bool,
    /// First wait before reconnecting the control channel; doubles up to `reconnect_max`.
    #[serde(with = "humantime_serde")]
    pub reconnect_initial: Duration,
    /// Longest wait between reconnection attempts.
    #[serde(with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// The control channel is considered dead after this long without any frame.
    #[serde(with = "humantime_serde")]
    pub heartbeat_timeout: Duration,
    /// Timeout of each HTTP call to the API Manager.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// APIs synced at the same time.
    pub apim_sync_pool_size: u32,
}

impl Default for ControlPlaneConfig {
    fn default() -> Self {
        Self {
            host: String::new(),
            insecure_skip_verify: false,
            ca_file: String::new(),
            token: String::new(),
            apim_oauth2_client_id: String::new(),
            apim_oauth2_client_secret: String::new(),
            apim_oauth2_username: String::new(),
            apim_oauth2_password: String::new(),
            gateway_name: "default".into(),
            deployment_sync_enabled: true,
            reconnect_initial: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(300),
            heartbeat_timeout: Duration::from_secs(35),
            request_timeout: Duration::from_secs(30),
            apim_sync_pool_size: 8,
        }
    }
}

impl ControlPlaneConfig {
    /// Whether APIs are synced to an API Manager.
    pub fn sync_enabled(&self) -> bool {
        !self.host.is_empty() && self.deployment_sync_enabled
    }
}

/// `[controller.auth]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct AuthConfig {
    /// `[controller.auth.basic]`.
    pub basic: BasicAuthConfig,
}

/// `[controller.auth.basic]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct BasicAuthConfig {
    /// Whether basic auth is on. Turning it off is only allowed on a loopback address.
    pub enabled: bool,
    /// `[[controller.auth.basic.users]]`.
    pub users: Vec<UserConfig>,
}

impl Default for BasicAuthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            users: Vec::new(),
        }
    }
}

/// One management user.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct UserConfig {
    /// Login name (matched case-insensitively).
    pub username: String,
    /// Plaintext, bcrypt (`$2b$...`) or argon2id (`$argon2id$...`) hash.
    pub password: String,
    /// `admin`, `developer` and/or `consumer`.
    pub roles: Vec<String>,
}

/// `[router]`: the Envoy data plane.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct RouterConfig {
    /// Address Envoy's HTTP listener binds.
    pub listener_host: String,
    /// Port of Envoy's HTTP listener.
    pub listener_port: u16,
    /// Port of Envoy's admin interface (always bound to 127.0.0.1).
    pub admin_port: u16,
    /// Start and supervise Envoy as a child of the controller.
    pub managed: bool,
    /// Path of the Envoy binary; found automatically when empty.
    pub envoy_binary: String,
    /// Envoy worker threads; 0 lets Envoy use every core.
    pub concurrency: u32,
    /// Envoy's own log level.
    pub log_level: String,
    /// Address a managed Envoy uses to reach the ADS server; derived from `[controller.xds]` when empty.
    pub xds_host: String,
    /// `[router.upstream]`.
    pub upstream: UpstreamConfig,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            listener_host: "0.0.0.0".into(),
            listener_port: 8080,
            admin_port: 9901,
            managed: true,
            envoy_binary: String::new(),
            concurrency: 0,
            log_level: "warning".into(),
            xds_host: String::new(),
            upstream: UpstreamConfig::default(),
        }
    }
}

/// `[router.upstream]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct UpstreamConfig {
    /// `[router.upstream.tls]`.
    pub tls: UpstreamTlsConfig,
    /// `[router.upstream.timeouts]`.
    pub timeouts: UpstreamTimeouts,
}

/// `[router.upstream.tls]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct UpstreamTlsConfig {
    /// Extra PEM CA bundle trusted for https upstreams, on top of the system roots.
    pub ca_file: String,
    /// The system roots.
    pub system_ca_file: String,
}

impl Default for UpstreamTlsConfig {
    fn default() -> Self {
        Self {
            ca_file: String::new(),
            system_ca_file: "/etc/ssl/certs/ca-certificates.crt".into(),
        }
    }
}

/// `[router.upstream.timeouts]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct UpstreamTimeouts {
    /// Upstream response timeout.
    pub route_timeout_ms: u64,
    /// Upstream connect timeout.
    pub connect_timeout_ms: u64,
}

impl Default for UpstreamTimeouts {
    fn default() -> Self {
        Self {
            route_timeout_ms: 60_000,
            connect_timeout_ms: 5_000,
        }
    }
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or a value has the wrong type.
    #[error("invalid configuration: {0}")]
    Parse(String),
    /// A value is out of range or the combination is unsafe.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The loaded configuration plus warnings to log once logging is up.
#[derive(Debug)]
pub struct Loaded {
    /// The configuration.
    pub config: Config,
    /// Unknown keys and ignored environment variables.
    pub warnings: Vec<String>,
}

/// Which config file to read: `--config`, else `$APIP_GW_CONFIG`, else `./config.toml` if present.
pub fn config_path(flag: Option<PathBuf>) -> Option<PathBuf> {
    flag.or_else(|| std::env::var_os("APIP_GW_CONFIG").map(PathBuf::from))
        .or_else(|| {
            let p = PathBuf::from("config.toml");
            p.is_file().then_some(p)
        })
}

/// Loads defaults, the file (if any) and the process environment, then validates.
pub fn load(path: Option<&Path>) -> Result<Loaded, ConfigError> {
    let text = match path {
        Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
            path: p.to_path_buf(),
            source,
        })?,
        None => String::new(),
    };
    load_from(&text, std::env::vars())
}

/// Loads from TOML text and an explicit environment (testable without touching the process).
pub fn load_from(
    text: &str,
    env: impl Iterator<Item = (String, String)>,
) -> Result<Loaded, ConfigError> {
    let mut warnings = Vec::new();
    let mut root =
        toml::Table::try_from(Config::default()).map_err(|e| ConfigError::Parse(e.to_string()))?;
    let file: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
    merge(&mut root, file);
    let mut env: Vec<(String, String)> = env.filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect();
    env.sort();
    for (key, value) in env {
        if let Err(w) = apply_env(&mut root, &key, &value) {
            warnings.push(w);
        }
    }
    let config: Config = serde_ignored::deserialize(toml::Value::Table(root), |path| {
        warnings.push(format!("unknown config key '{path}' ignored"));
    })
    .map_err(|e| ConfigError::Parse(e.to_string()))?;
    validate(&config)?;
    Ok(Loaded { config, warnings })
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Applies one `APIP_GW_A__B__C=value` override. `__` separates levels; when the path runs past
/// a table to a key that does not exist, the remaining segments join with `_`
/// (`..._APIM_OAUTH2__CLIENT_ID` sets `apim_oauth2_client_id`). The value takes the type of the
/// key it replaces.
fn apply_env(root: &mut toml::Table, key: &str, value: &str) -> Result<(), String> {
    let rest = &key[ENV_PREFIX.len()..];
    if rest == "CONFIG" {
        return Ok(());
    }
    let segments: Vec<String> = if rest == "LOG_LEVEL" {
        vec!["controller".into(), "logging".into(), "level".into()]
    } else {
        rest.to_lowercase()
            .split("__")
            .map(str::to_string)
            .collect()
    };
    let mut table = root;
    let mut i = 0;
    while i + 1 < segments.len() {
        let is_table = matches!(table.get(&segments[i]), Some(toml::Value::Table(_)));
        if !is_table {
            break;
        }
        match table.get_mut(&segments[i]) {
            Some(toml::Value::Table(t)) => table = t,
            _ => {
                return Err(format!(
                    "environment variable {key} does not name a config key; ignored"
                ));
            }
        }
        i += 1;
    }
    let leaf = segments[i..].join("_");
    let Some(existing) = table.get(&leaf) else {
        return Err(format!(
            "environment variable {key} does not name a config key; ignored"
        ));
    };
    let parsed = match existing {
        toml::Value::String(_) => toml::Value::String(value.to_string()),
        toml::Value::Integer(_) => value
            .trim()
            .parse::<i64>()
            .map(toml::Value::Integer)
            .map_err(|_| format!("environment variable {key}: expected an integer"))?,
        toml::Value::Boolean(_) => match value.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => toml::Value::Boolean(true),
            "false" | "0" | "no" => toml::Value::Boolean(false),
            _ => {
                return Err(format!(
                    "environment variable {key}: expected true or false"
                ));
            }
        },
        toml::Value::Array(_) => toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .ok_or_else(|| format!("environment variable {key}: expected a TOML array"))?,
        _ => {
            return Err(format!(
                "environment variable {key} names a table, not a value; ignored"
            ));
        }
    };
    table.insert(leaf, parsed);
    Ok(())
}

/// Whether a bind address only accepts connections from this machine.
pub fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

const ROLES: [&str; 3] = ["admin", "developer", "consumer"];
const LEVELS: [&str; 5] = ["trace", "debug", "info", "warn", "error"];

/// Checks ranges and refuses unsafe combinations: no default credentials (or no auth at all)
/// reachable from another machine.
pub fn validate(c: &Config) -> Result<(), ConfigError> {
    let bad = |m: String| Err(ConfigError::Invalid(m));
    if !LEVELS.contains(&c.controller.logging.level.to_ascii_lowercase().as_str()) {
        return bad(format!(
            "controller.logging.level must be one of {LEVELS:?}"
        ));
    }
    if !["text", "json"].contains(&c.controller.logging.format.as_str()) {
        return bad("controller.logging.format must be 'text' or 'json'".into());
    }
    if c.controller.server.max_body_bytes < 1024 {
        return bad("controller.server.max_body_bytes must be at least 1024".into());
    }
    let basic = &c.controller.auth.basic;
    let exposed = !is_loopback(&c.controller.server.host);
    if !basic.enabled && exposed {
        return bad(format!(
            "controller.auth.basic.enabled = false is only allowed when the management API listens on a loopback \
             address, not on {}",
            c.controller.server.host
        ));
    }
    if basic.enabled && basic.users.is_empty() {
        return bad("controller.auth.basic is enabled but no [[controller.auth.basic.users]] are configured".into());
    }
    for (i, u) in basic.users.iter().enumerate() {
        if basic.users[..i]
            .iter()
            .any(|o| o.username.eq_ignore_ascii_case(&u.username))
        {
            return bad(format!(
                "controller.auth.basic.users[{i}]: user names are matched case-insensitively and '{}' is defined twice",
                u.username
            ));
        }
        if u.username.trim().is_empty() || u.password.is_empty() {
            return bad(format!(
                "controller.auth.basic.users[{i}] needs a username and a password"
            ));
        }
        if u.roles.is_empty() {
            return bad(format!(
                "controller.auth.basic.users[{i}] ('{}') has no roles",
                u.username
            ));
        }
        if let Some(r) = u.roles.iter().find(|r| !ROLES.contains(&r.as_str())) {
            return bad(format!(
                "controller.auth.basic.users[{i}] has unknown role '{r}' (use {ROLES:?})"
            ));
        }
        if basic.enabled && exposed && u.password == "admin" {
            return bad(format!(
                "user '{}' still has the example password 'admin' while the management API listens on {}; \
                 set a real password (or a bcrypt/argon2id hash) or bind controller.server.host to 127.0.0.1",
                u.username, c.controller.server.host
            ));
        }
    }
    for (name, port) in [
        ("controller.server.port", c.controller.server.port),
        ("controller.xds.port", c.controller.xds.port),
        (
            "controller.policy_server.port",
            c.controller.policy_server.port,
        ),
        ("policy_engine.port", c.policy_engine.port),
        ("router.listener_port", c.router.listener_port),
        ("router.admin_port", c.router.admin_port),
        ("websub.port", c.websub.port),
    ] {
        if port == 0 {
            return bad(format!("{name} must not be 0"));
        }
    }
    if c.router.upstream.timeouts.connect_timeout_ms == 0
        || c.router.upstream.timeouts.route_timeout_ms == 0
    {
        return bad("router.upstream.timeouts must be positive".into());
    }
    let w = &c.websub;
    if w.default_lease_seconds == 0 || w.default_lease_seconds > w.max_lease_seconds {
        return bad(
            "websub.default_lease_seconds must be positive and at most websub.max_lease_seconds"
                .into(),
        );
    }
    if w.verification_timeout_ms == 0
        || w.delivery_timeout_ms == 0
        || w.delivery_initial_delay_ms == 0
        || w.delivery_initial_delay_ms > w.delivery_max_delay_ms
        || w.delivery_max_attempts == 0
    {
        return bad("websub timeouts, delays and attempts must be positive, with delivery_initial_delay_ms <= delivery_max_delay_ms".into());
    }
    if w.max_body_bytes < 1024 {
        return bad("websub.max_body_bytes must be at least 1024".into());
    }
    validate_controlplane(&c.controller.controlplane)
}

fn validate_controlplane(cp: &ControlPlaneConfig) -> Result<(), ConfigError> {
    let bad = |m: &str| Err(ConfigError::Invalid(format!("controller.controlplane.{m}")));
    if cp.host.is_empty() {
        if !cp.token.is_empty() {
            return bad("token is set but host is empty");
        }
        return Ok(());
    }
    if cp.host.contains("://") || cp.host.contains('/') || cp.host.trim() != cp.host {
        return bad(
            "host must be host:port of the API Manager (HTTPS is implied), e.g. 192.168.0.102:9443",
        );
    }
    if url::Url::parse(&format!("https://{}/", cp.host)).is_err() {
        return bad("host is not a valid host:port");
    }
    if cp.apim_oauth2_client_id.is_empty() != cp.apim_oauth2_client_secret.is_empty() {
        return bad("apim_oauth2_client_id and apim_oauth2_client_secret go together");
    }
    if cp.apim_oauth2_username.is_empty() != cp.apim_oauth2_password.is_empty() {
        return bad("apim_oauth2_username and apim_oauth2_password go together");
    }
    if cp.gateway_name.trim().is_empty() {
        return bad("gateway_name must not be empty");
    }
    if cp.reconnect_initial.is_zero() || cp.reconnect_initial > cp.reconnect_max {
        return bad("reconnect_initial must be positive and at most reconnect_max");
    }
    const DAY: Duration = Duration::from_secs(24 * 3600);
    if cp.reconnect_max > DAY || cp.heartbeat_timeout > DAY || cp.request_timeout > DAY {
        return bad("reconnect_max, heartbeat_timeout and request_timeout must be at most 24h");
    }
    if cp.heartbeat_timeout < Duration::from_secs(3) {
        return bad("heartbeat_timeout must be at least 3s");
    }
    if cp.request_timeout < Duration::from_millis(100) {
        return bad("request_timeout must be at least 100ms");
    }
    if !(1..=256).contains(&cp.apim_sync_pool_size) {
        return bad("apim_sync_pool_size must be between 1 and 256");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[controller.server]
gateway_id = "gateway-1"
port = 9090

[controller.controlplane]
host = ""
insecure_skip_verify = true
apim_oauth2_client_id = "<clientId>"
gateway_name = "onprem-gw"

[controller.auth.basic]
enabled = true
[[controller.auth.basic.users]]
username = "admin"
password = "admin"
roles = ["admin"]
"#;

    fn env(pairs: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn shipped_config_loads_without_warnings() {
        let l = load_from(include_str!("../../config.toml"), env(&[])).unwrap();
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
        assert_eq!(l.config.controller.server.port, 9090);
        assert_eq!(l.config.policy_engine.port, 9001);
        assert!(
            l.config.controller.controlplane.host.is_empty(),
            "no control plane by default"
        );
    }

    #[test]
    fn seed_config_loads_with_defaults_for_the_rest() {
        let l = load_from(BASE, env(&[])).unwrap();
        assert_eq!(l.config.controller.server.port, 9090);
        assert_eq!(l.config.controller.server.host, "127.0.0.1");
        assert_eq!(l.config.controller.controlplane.gateway_name, "onprem-gw");
        assert!(l.config.controller.controlplane.insecure_skip_verify);
        assert_eq!(l.config.router.listener_port, 8080);
        assert_eq!(l.config.controller.auth.basic.users[0].roles, vec!["admin"]);
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    }

    #[test]
    fn env_overrides_beat_the_file_and_join_unknown_tails() {
        let l = load_from(
            BASE,
            env(&[
                ("APIP_GW_CONTROLLER__CONTROLPLANE__HOST", "127.0.0.1:9443"),
                (
                    "APIP_GW_CONTROLLER__CONTROLPLANE__APIM_OAUTH2__CLIENT_ID",
                    "cid",
                ),
                (
                    "APIP_GW_CONTROLLER__CONTROLPLANE__APIM_OAUTH2__CLIENT_SECRET",
                    "secret",
                ),
                ("APIP_GW_CONTROLLER__SERVER__PORT", "9191"),
                (
                    "APIP_GW_CONTROLLER__CONTROLPLANE__INSECURE_SKIP_VERIFY",
                    "false",
                ),
                ("APIP_GW_LOG_LEVEL", "debug"),
                ("APIP_GW_CONFIG", "/ignored.toml"),
                ("OTHER", "x"),
            ]),
        )
        .unwrap();
        let cp = &l.config.controller.controlplane;
        assert_eq!(cp.host, "127.0.0.1:9443");
        assert_eq!(cp.apim_oauth2_client_id, "cid");
        assert_eq!(cp.apim_oauth2_client_secret, "secret");
        assert!(!cp.insecure_skip_verify);
        assert!(cp.sync_enabled());
        assert_eq!(l.config.controller.server.port, 9191);
        assert_eq!(l.config.controller.logging.level, "debug");
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    }

    #[test]
    fn env_can_set_users_as_a_toml_array() {
        let l = load_from(
            "",
            env(&[(
                "APIP_GW_CONTROLLER__AUTH__BASIC__USERS",
                r#"[{username = "ops", password = "s3cret-pass", roles = ["admin"]}]"#,
            )]),
        )
        .unwrap();
        assert_eq!(l.config.controller.auth.basic.users[0].username, "ops");
    }

    #[test]
    fn unknown_keys_and_variables_warn() {
        let l = load_from(
            &format!(
                "{BASE}
[controller.nonsense]
x = 1
"
            ),
            env(&[
                ("APIP_GW_CONTROLLER__NOPE", "1"),
                ("APIP_GW_CONTROLLER__SERVER__PORT", "abc"),
            ]),
        )
        .unwrap();
        assert_eq!(l.warnings.len(), 3, "{:?}", l.warnings);
    }

    #[test]
    fn controlplane_durations_and_rules() {
        let l = load_from(
            BASE,
            env(&[
                ("APIP_GW_CONTROLLER__CONTROLPLANE__HOST", "127.0.0.1:9443"),
                (
                    "APIP_GW_CONTROLLER__CONTROLPLANE__RECONNECT_INITIAL",
                    "250ms",
                ),
                (
                    "APIP_GW_CONTROLLER__CONTROLPLANE__APIM_OAUTH2__CLIENT_SECRET",
                    "s",
                ),
            ]),
        )
        .unwrap();
        let cp = &l.config.controller.controlplane;
        assert_eq!(cp.reconnect_initial, Duration::from_millis(250));
        assert_eq!(cp.reconnect_max, Duration::from_secs(300));
        let ok = "host = \"127.0.0.1:9443\"\napim_oauth2_client_secret = \"s\"\n";
        assert!(load_from(&BASE.replace("host = \"\"\n", ok), env(&[])).is_ok());
        for bad in [
            "token = \"t\"\n",
            "host = \"https://127.0.0.1:9443\"\n",
            "host = \"127.0.0.1:9443/x\"\napim_oauth2_client_secret = \"s\"\n",
            "host = \"127.0.0.1:9443\"\n",
            "host = \"127.0.0.1:9443\"\napim_oauth2_client_secret = \"s\"\nreconnect_initial = \"10m\"\nreconnect_max = \"1m\"\n",
            "host = \"127.0.0.1:9443\"\napim_oauth2_client_secret = \"s\"\nreconnect_max = \"soon\"\n",
            "host = \"127.0.0.1:9443\"\napim_oauth2_client_secret = \"s\"\nheartbeat_timeout = \"2ns\"\n",
            "host = \"127.0.0.1:9443\"\napim_oauth2_client_secret = \"s\"\nreconnect_max = \"1000d\"\n",
        ] {
            let text = BASE.replace("host = \"\"\n", bad);
            assert!(
                load_from(&text, env(&[])).is_err(),
                "accepted a bad controlplane: {bad}"
            );
        }
    }

    #[test]
    fn bad_values_are_errors() {
        assert!(load_from("[controller.server]\nport = \"x\"\n", env(&[])).is_err());
        assert!(load_from("not toml [", env(&[])).is_err());
        assert!(
            load_from("", env(&[])).is_err(),
            "auth enabled without users"
        );
    }

    #[test]
    fn default_credentials_are_refused_off_loopback() {
        let exposed = env(&[("APIP_GW_CONTROLLER__SERVER__HOST", "0.0.0.0")]);
        let err = load_from(BASE, exposed).unwrap_err().to_string();
        assert!(err.contains("example password"), "{err}");
        let no_auth =
            "[controller.server]\nhost = \"0.0.0.0\"\n[controller.auth.basic]\nenabled = false\n";
        assert!(load_from(no_auth, env(&[])).is_err());
        let local_no_auth = "[controller.auth.basic]\nenabled = false\n";
        assert!(load_from(local_no_auth, env(&[])).is_ok());
        let strong = BASE.replace("password = \"admin\"", "password = \"a-long-secret\"");
        assert!(
            load_from(
                &strong,
                env(&[("APIP_GW_CONTROLLER__SERVER__HOST", "0.0.0.0")])
            )
            .is_ok()
        );
    }
}
