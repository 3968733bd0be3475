//! Validation of a `RestApi` request into the facts the gateway acts on. Every problem is
//! reported with the field path it concerns; nothing is stored unless validation passes.

use std::collections::HashMap;

use gateway_xds::{ApiRoutes, Operation, PathPattern, Scheme, Upstream, route_key};

use crate::model::{ApiRequest, DesiredState, Metadata, PolicyRef, UpstreamRef};

/// Accepted `apiVersion` values.
pub const API_VERSIONS: [&str; 3] = [
    "gateway.api-platform.wso2.com/v1alpha1",
    "gateway.api-platform.wso2.com/v1alpha2",
    "gateway.api-platform.wso2.com/v1",
];
/// Accepted operation methods.
pub const METHODS: [&str; 7] = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"];
const MAX_OPERATIONS: usize = 1000;

pub use gateway_policy_engine::FieldError;
use gateway_policy_engine::chain::{ChainEntry, build_chain};
use gateway_policy_engine::{Policy, PolicyKind};

/// A validated `RestApi`.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidApi {
    /// `metadata.name`.
    pub name: String,
    /// `spec.displayName`.
    pub display_name: String,
    /// `spec.version`.
    pub version: String,
    /// `spec.context` as sent (may contain `$version`).
    pub context_raw: String,
    /// Requested deployment state.
    pub state: DesiredState,
    /// What the router serves when the API is deployed.
    pub routes: ApiRoutes,
    /// Canonical `METHOD /full/path` keys of the operations, for conflict detection.
    pub route_keys: Vec<String>,
    /// The effective policy chain of each operation (same order as `routes.operations`).
    pub chains: Vec<Vec<ChainEntry>>,
    /// The channels and event policies of a `WebSubApi`; `None` for a `RestApi`.
    pub websub: Option<crate::websub::WebSubDef>,
}

impl ValidApi {
    /// The context with `$version` resolved.
    pub fn context(&self) -> &str {
        &self.routes.context
    }
}

/// Problems found so far, each with its field path.
pub(crate) struct Errors(pub(crate) Vec<FieldError>);

impl Errors {
    pub(crate) fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }
}

fn is_name(s: &str) -> bool {
    s != "."
        && s != ".."
        && (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn is_display_name(s: &str) -> bool {
    (1..=100).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_. ".contains(&b))
}

fn is_version(s: &str) -> bool {
    let digits = s.strip_prefix('v').unwrap_or(s);
    let parts: Vec<&str> = digits.split('.').collect();
    (1..=3).contains(&parts.len())
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 9 && p.bytes().all(|b| b.is_ascii_digit()))
}

fn check_context(raw: &str, version: &str, e: &mut Errors) -> Option<String> {
    const F: &str = "spec.context";
    if !raw.starts_with('/') {
        e.add(F, "Context must start with /");
        return None;
    }
    if raw.len() > 200 {
        e.add(F, "Context must be 1-200 characters");
        return None;
    }
    if raw.len() > 1 && raw.ends_with('/') {
        e.add(F, "Context cannot end with / (except for root context)");
        return None;
    }
    if raw.replace("$version", "").contains('$') {
        e.add(F, "Context may only contain the placeholder $version");
        return None;
    }
    let resolved = raw.replace("$version", version);
    if resolved == "/" {
        return Some(resolved);
    }
    match PathPattern::parse(&resolved) {
        Ok(p) if p.is_literal() && p.to_string() == resolved => Some(resolved),
        Ok(_) => {
            e.add(
                F,
                "Context must be a plain path: no {parameters}, wildcards or empty segments",
            );
            None
        }
        Err(err) => {
            e.add(F, format!("Context {err}"));
            None
        }
    }
}

/// Parses an upstream URL: absolute http(s) with a host, no credentials, query or fragment.
pub fn parse_upstream(url: &str) -> Result<Upstream, String> {
    let u = url::Url::parse(url)
        .map_err(|e| format!("Upstream URL is not a valid absolute URL: {e}"))?;
    let scheme = match u.scheme() {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        _ => return Err("Upstream URL must use http or https scheme".into()),
    };
    let host = match u.host() {
        Some(url::Host::Domain(d)) => d.to_string(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        None => return Err("Upstream URL must include a host".into()),
    };
    if !u.username().is_empty() || u.password().is_some() {
        return Err("Upstream URL must not contain credentials".into());
    }
    if u.query().is_some() {
        return Err("Upstream URL must not include a query string".into());
    }
    if u.fragment().is_some() {
        return Err("Upstream URL must not include a fragment".into());
    }
    let port = u
        .port_or_known_default()
        .ok_or("Upstream URL must include a port")?;
    let base_path = u.path().trim_end_matches('/').to_string();
    Ok(Upstream {
        scheme,
        host,
        port,
        base_path,
    })
}

fn check_upstream(
    r: &Option<UpstreamRef>,
    field: &str,
    required: bool,
    e: &mut Errors,
) -> Option<Upstream> {
    let Some(url) = r.as_ref().and_then(|r| r.url.as_deref()) else {
        if required || r.is_some() {
            e.add(format!("{field}.url"), "Upstream URL is required");
        }
        return None;
    };
    parse_upstream(url)
        .map_err(|m| e.add(format!("{field}.url"), m))
        .ok()
}

pub(crate) fn check_policies(policies: &[PolicyRef], at: &str, e: &mut Errors) -> Vec<Policy> {
    let mut parsed = Vec::new();
    for (i, p) in policies.iter().enumerate() {
        let field = format!("{at}[{i}]");
        if p.execution_condition.is_some() {
            e.add(
                format!("{field}.executionCondition"),
                "executionCondition is not supported yet",
            );
        }
        parsed.extend(gateway_policy_engine::parse_policy(
            p.name.as_deref(),
            p.version.as_deref(),
            &p.params,
            &field,
            &mut e.0,
        ));
    }
    parsed
}

fn required<'a>(
    v: &'a Option<String>,
    field: &str,
    message: &str,
    e: &mut Errors,
) -> Option<&'a str> {
    match v.as_deref().map(str::trim) {
        Some(s) if !s.is_empty() => v.as_deref(),
        _ => {
            e.add(field, message);
            None
        }
    }
}

/// The envelope fields every kind shares.
pub(crate) struct Envelope<'a> {
    /// `apiVersion`.
    pub api_version: Option<&'a str>,
    /// `kind`.
    pub kind: Option<&'a str>,
    /// `metadata`.
    pub metadata: Option<&'a Metadata>,
}

/// Checks `apiVersion`, `kind` (must be `expected`) and `metadata`; returns the API's name.
/// `path_name` is the `{id}` of a PUT: a body that names another API is rejected, a body without
/// a name takes it.
pub(crate) fn check_envelope(
    env: &Envelope<'_>,
    expected: &str,
    path_name: Option<&str>,
    e: &mut Errors,
) -> Option<String> {
    match env.api_version {
        None => e.add("apiVersion", "apiVersion is required"),
        Some(v) if API_VERSIONS.contains(&v) => {}
        Some(v) => e.add(
            "apiVersion",
            format!(
                "Unsupported apiVersion '{v}' (use one of {})",
                API_VERSIONS.join(", ")
            ),
        ),
    }
    match env.kind {
        Some(k) if k == expected => {}
        None => e.add("kind", "Resource kind is required"),
        Some(_) => e.add("kind", format!("Unsupported kind (must be '{expected}')")),
    }
    let meta_name = env
        .metadata
        .and_then(|m| m.name.clone())
        .filter(|n| !n.is_empty());
    let name = match (meta_name, path_name) {
        (Some(n), Some(p)) if n != p => {
            e.add("metadata.name", format!("metadata.name '{n}' does not match the API id '{p}' in the path (name mismatch)"));
            None
        }
        (Some(n), _) => Some(n),
        (None, Some(p)) => Some(p.to_string()),
        (None, None) => {
            e.add("metadata.name", "Metadata name is required");
            None
        }
    };
    if let Some(n) = &name
        && !is_name(n)
    {
        e.add(
            "metadata.name",
            "metadata.name must be 1-63 characters of letters, digits, '.', '_' or '-'",
        );
    }
    if let Some(m) = env.metadata {
        for k in m
            .labels
            .keys()
            .filter(|k| k.is_empty() || k.chars().any(char::is_whitespace))
        {
            e.add(
                format!("metadata.labels.{k}"),
                format!("Label key '{k}' must be non-empty and contain no whitespace"),
            );
        }
    }
    name
}

/// The spec fields every kind shares, as sent.
pub(crate) struct CommonSpec<'a> {
    /// `spec.displayName`.
    pub display_name: &'a Option<String>,
    /// `spec.version`.
    pub version: &'a Option<String>,
    /// `spec.context`.
    pub context: &'a Option<String>,
    /// Whether `spec.vhosts` was sent.
    pub vhosts: bool,
    /// `spec.desiredState`.
    pub desired_state: Option<DesiredState>,
    /// `spec.deploymentState`.
    pub deployment_state: Option<DesiredState>,
}

/// The shared spec fields once checked (`None` where invalid).
pub(crate) struct Common<'a> {
    /// Display name.
    pub display_name: Option<&'a str>,
    /// Version.
    pub version: Option<&'a str>,
    /// Context as sent.
    pub context_raw: Option<&'a str>,
    /// Context with `$version` resolved.
    pub context: Option<String>,
    /// Requested state.
    pub state: DesiredState,
}

/// Checks displayName, version, context, vhosts and the deployment state.
pub(crate) fn check_common<'a>(spec: &CommonSpec<'a>, e: &mut Errors) -> Common<'a> {
    let display_name = required(
        spec.display_name,
        "spec.displayName",
        "API display name is required",
        e,
    );
    if display_name.is_some_and(|d| !is_display_name(d)) {
        e.add(
            "spec.displayName",
            "API display name must be 1-100 characters: letters, numbers, spaces, hyphens, underscores and dots",
        );
    }
    let version = required(spec.version, "spec.version", "API version is required", e);
    if version.is_some_and(|v| !is_version(v)) {
        e.add(
            "spec.version",
            "API version must follow semantic versioning pattern (e.g., v1, v1.0, 1.0.0)",
        );
    }
    let context_raw = required(spec.context, "spec.context", "Context is required", e);
    let context = context_raw.and_then(|c| check_context(c, version.unwrap_or(""), e));
    if spec.vhosts {
        e.add(
            "spec.vhosts",
            "vhosts are not supported yet; remove the field to serve on every host",
        );
    }
    let state = match (spec.desired_state, spec.deployment_state) {
        (Some(a), Some(b)) if a != b => {
            e.add(
                "spec.deploymentState",
                "desiredState and deploymentState disagree",
            );
            DesiredState::Deployed
        }
        (a, b) => a.or(b).unwrap_or(DesiredState::Deployed),
    };
    Common {
        display_name,
        version,
        context_raw,
        context,
        state,
    }
}

/// Validates a `RestApi` request. `path_name` is the `{id}` of a PUT: a body that names another
/// API is rejected, a body without a name takes it.
pub fn validate_rest_api(
    req: &ApiRequest,
    path_name: Option<&str>,
) -> Result<ValidApi, Vec<FieldError>> {
    let mut e = Errors(Vec::new());
    let name = check_envelope(
        &Envelope {
            api_version: req.api_version.as_deref(),
            kind: req.kind.as_deref(),
            metadata: req.metadata.as_ref(),
        },
        "RestApi",
        path_name,
        &mut e,
    );
    let Some(spec) = &req.spec else {
        e.add("spec", "spec is required");
        return Err(e.0);
    };
    let Common {
        display_name,
        version,
        context_raw,
        context,
        state,
    } = check_common(
        &CommonSpec {
            display_name: &spec.display_name,
            version: &spec.version,
            context: &spec.context,
            vhosts: spec.vhosts.is_some(),
            desired_state: spec.desired_state,
            deployment_state: spec.deployment_state,
        },
        &mut e,
    );
    let main = match &spec.upstream {
        None => {
            e.add("spec.upstream.main.url", "Upstream URL is required");
            None
        }
        Some(u) => {
            check_upstream(&u.sandbox, "spec.upstream.sandbox", false, &mut e);
            check_upstream(&u.main, "spec.upstream.main", true, &mut e)
        }
    };
    let api_policies = check_policies(&spec.policies, "spec.policies", &mut e);
    let mut chains = Vec::new();

    let mut operations = Vec::new();
    let mut route_keys = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    match spec.operations.as_deref() {
        None | Some([]) => e.add("spec.operations", "At least one operation is required"),
        Some(ops) if ops.len() > MAX_OPERATIONS => e.add(
            "spec.operations",
            format!("At most {MAX_OPERATIONS} operations are allowed"),
        ),
        Some(ops) => {
            for (i, op) in ops.iter().enumerate() {
                let at = format!("spec.operations[{i}]");
                let method = match op.method.as_deref().map(str::to_ascii_uppercase) {
                    None => {
                        e.add(format!("{at}.method"), "HTTP method is required");
                        None
                    }
                    Some(m) if METHODS.contains(&m.as_str()) => Some(m),
                    Some(m) => {
                        e.add(
                            format!("{at}.method"),
                            format!(
                                "Invalid HTTP method '{m}' (use one of {})",
                                METHODS.join(", ")
                            ),
                        );
                        None
                    }
                };
                let path = match op.path.as_deref() {
                    None => {
                        e.add(format!("{at}.path"), "Operation path is required");
                        None
                    }
                    Some(p) => PathPattern::parse(p)
                        .map_err(|err| e.add(format!("{at}.path"), format!("Operation path {err}")))
                        .ok(),
                };
                let op_policies = check_policies(&op.policies, &format!("{at}.policies"), &mut e);
                let (Some(method), Some(path)) = (method, path) else {
                    continue;
                };
                if let Some(ctx) = &context {
                    let key = route_key(ctx, &method, &path);
                    if let Some(first) = seen.insert(key.clone(), i) {
                        e.add(at.clone(), format!("duplicate operation: {key} is already defined by spec.operations[{first}]"));
                    }
                    route_keys.push(key);
                }
                let chain = build_chain(&api_policies, &op_policies);
                operations.push(Operation {
                    method,
                    path,
                    guarded: !chain.is_empty(),
                    rate_limited: chain
                        .iter()
                        .any(|c| matches!(c.policy.kind, PolicyKind::RateLimit(_))),
                });
                chains.push(chain);
            }
        }
    }
    if !e.0.is_empty() {
        return Err(e.0);
    }
    let (
        Some(name),
        Some(display_name),
        Some(version),
        Some(context_raw),
        Some(context),
        Some(upstream),
    ) = (name, display_name, version, context_raw, context, main)
    else {
        e.add("spec", "incomplete definition");
        return Err(e.0);
    };
    Ok(ValidApi {
        routes: ApiRoutes {
            id: name.clone(),
            context,
            upstream,
            operations,
        },
        name,
        display_name: display_name.to_string(),
        version: version.to_string(),
        context_raw: context_raw.to_string(),
        state,
        route_keys,
        chains,
        websub: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn seed() -> Value {
        json!({
            "apiVersion": "gateway.api-platform.wso2.com/v1alpha1",
            "kind": "RestApi",
            "metadata": {"name": "PetStoreAPI"},
            "spec": {
                "displayName": "PetStore API",
                "version": "v1.0",
                "context": "/petstore/$version",
                "upstream": {"main": {"url": "https://petstore.example.com/api/v3/"}},
                "policies": [{"name": "api-key-auth", "version": "v1", "params": {"key": "X-API-Key", "in": "header"}}],
                "operations": [
                    {"method": "GET", "path": "/pet/{petId}",
                     "policies": [{"name": "rate-limit", "version": "v1", "params": {"limit": 100, "window": 60}}]},
                    {"method": "post", "path": "/pet"}
                ]
            }
        })
    }

    fn run(v: Value, path: Option<&str>) -> Result<ValidApi, Vec<FieldError>> {
        let req: ApiRequest = serde_json::from_value(v).unwrap();
        validate_rest_api(&req, path)
    }

    fn fields(v: Value) -> Vec<String> {
        run(v, None)
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn seed_definition_validates_into_router_input() {
        let v = run(seed(), None).unwrap();
        assert_eq!(v.name, "PetStoreAPI");
        assert_eq!(v.context(), "/petstore/v1.0");
        assert_eq!(v.context_raw, "/petstore/$version");
        assert_eq!(v.state, DesiredState::Deployed);
        assert_eq!(
            v.routes.upstream,
            Upstream {
                scheme: Scheme::Https,
                host: "petstore.example.com".into(),
                port: 443,
                base_path: "/api/v3".into()
            }
        );
        assert_eq!(v.routes.operations[1].method, "POST");
        assert!(
            v.routes.operations.iter().all(|o| o.guarded),
            "API-level policies guard every operation"
        );
        assert_eq!(
            v.route_keys,
            vec!["GET /petstore/v1.0/pet/{}", "POST /petstore/v1.0/pet"]
        );
    }

    #[test]
    fn missing_fields_are_all_reported() {
        let mut v = seed();
        v["spec"]["context"] = Value::Null;
        v["spec"]["operations"] = Value::Null;
        v["spec"]["displayName"] = Value::Null;
        assert_eq!(
            fields(v),
            vec!["spec.displayName", "spec.context", "spec.operations"]
        );
    }

    #[test]
    fn names_versions_contexts() {
        let mut v = seed();
        v["metadata"]["name"] = json!("x".repeat(64));
        let mut dots = seed();
        dots["metadata"]["name"] = json!("..");
        assert_eq!(
            fields(dots),
            vec!["metadata.name"],
            "'..' cannot be addressed in a URL"
        );
        v["spec"]["version"] = json!("1.2.3.4");
        v["spec"]["context"] = json!("/a//b");
        assert_eq!(
            fields(v),
            vec!["metadata.name", "spec.version", "spec.context"]
        );
        for ok in ["v1", "1.0", "v1.0.0", "2"] {
            let mut v = seed();
            v["spec"]["version"] = json!(ok);
            assert!(run(v, None).is_ok(), "{ok}");
        }
        let mut root = seed();
        root["spec"]["context"] = json!("/");
        assert_eq!(run(root, None).unwrap().context(), "/");
    }

    #[test]
    fn put_path_name_rules() {
        let mut no_name = seed();
        no_name["metadata"] = json!({});
        assert_eq!(
            run(no_name, Some("PetStoreAPI")).unwrap().name,
            "PetStoreAPI"
        );
        let err = run(seed(), Some("Other")).unwrap_err();
        assert_eq!(err[0].field, "metadata.name");
        assert!(err[0].message.contains("mismatch"));
    }

    #[test]
    fn upstream_urls() {
        assert_eq!(parse_upstream("http://10.0.0.1:8080").unwrap().port, 8080);
        assert_eq!(parse_upstream("http://[::1]:81/p").unwrap().host, "::1");
        assert_eq!(parse_upstream("http://h").unwrap().base_path, "");
        assert!(parse_upstream("http://h/?a=1").is_err());
        assert!(parse_upstream("mailto:a@b").is_err());
        assert!(parse_upstream("http://user@h/").is_err());
    }

    #[test]
    fn undeploy_spellings() {
        let mut v = seed();
        v["spec"]["desiredState"] = json!("undeployed");
        assert_eq!(run(v, None).unwrap().state, DesiredState::Undeployed);
        let mut v = seed();
        v["spec"]["deploymentState"] = json!("undeployed");
        assert_eq!(run(v, None).unwrap().state, DesiredState::Undeployed);
    }
}
