//! The `RestApi` resource as users send it. Fields are optional here so that validation can
//! report every missing field at once, with its path.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

/// The envelope of a management request: `apiVersion`, `kind`, `metadata`, and the `spec` of its
/// kind (a `RestApi`'s by default).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiRequest<S = RestApiSpec> {
    /// `gateway.api-platform.wso2.com/v1alpha1`, `v1alpha2` or `v1`.
    #[serde(default)]
    pub api_version: Option<String>,
    /// `RestApi`.
    #[serde(default)]
    pub kind: Option<String>,
    /// Name, labels, annotations.
    #[serde(default)]
    pub metadata: Option<Metadata>,
    /// The API definition.
    #[serde(default = "Option::default")]
    pub spec: Option<S>,
}

/// `metadata`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// The handle: unique, immutable, used as `{id}` in URLs.
    #[serde(default)]
    pub name: Option<String>,
    /// Free-form labels; keys without whitespace.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Free-form annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// Deployment state requested by the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DesiredState {
    /// Served by the router.
    Deployed,
    /// Kept, with its keys, but not routed.
    Undeployed,
}

impl DesiredState {
    /// The state as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            DesiredState::Deployed => "deployed",
            DesiredState::Undeployed => "undeployed",
        }
    }
}

/// `spec` of a `RestApi`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RestApiSpec {
    /// Human-readable name.
    #[serde(default)]
    pub display_name: Option<String>,
    /// API version (`v1.0`).
    #[serde(default)]
    pub version: Option<String>,
    /// Base path on the router; may contain `$version`.
    #[serde(default)]
    pub context: Option<String>,
    /// Backends.
    #[serde(default)]
    pub upstream: Option<Upstreams>,
    /// API-level policies.
    #[serde(default)]
    pub policies: Vec<PolicyRef>,
    /// Operations.
    #[serde(default)]
    pub operations: Option<Vec<OperationSpec>>,
    /// Seed spelling of the deployment state.
    #[serde(default)]
    pub desired_state: Option<DesiredState>,
    /// Reference spelling of the deployment state.
    #[serde(default)]
    pub deployment_state: Option<DesiredState>,
    /// Virtual hosts: not implemented yet, rejected when present.
    #[serde(default)]
    pub vhosts: Option<Value>,
}

/// `spec.upstream`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstreams {
    /// The production backend.
    #[serde(default)]
    pub main: Option<UpstreamRef>,
    /// The sandbox backend.
    #[serde(default)]
    pub sandbox: Option<UpstreamRef>,
}

/// One backend.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamRef {
    /// Absolute http(s) URL.
    #[serde(default)]
    pub url: Option<String>,
}

/// One operation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperationSpec {
    /// HTTP method.
    #[serde(default)]
    pub method: Option<String>,
    /// Path below the context.
    #[serde(default)]
    pub path: Option<String>,
    /// Operation-level policies.
    #[serde(default)]
    pub policies: Vec<PolicyRef>,
}

/// A policy attachment.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyRef {
    /// Policy name.
    #[serde(default)]
    pub name: Option<String>,
    /// Major version (`v1`); the latest when omitted.
    #[serde(default)]
    pub version: Option<String>,
    /// Policy parameters.
    #[serde(default)]
    pub params: Option<Value>,
    /// Conditional execution: not implemented yet, rejected when present.
    #[serde(default)]
    pub execution_condition: Option<Value>,
}
