//! The `WebSubApi` resource as users send it: the seed's array of channels or the reference's
//! map keyed by channel name, and policies per event type, API-wide or per channel.

use serde::Deserialize;
use serde_json::Value;

use crate::model::{ApiRequest, DesiredState, PolicyRef};

/// The envelope of a `WebSubApi` request.
pub type WebSubApiRequest = ApiRequest<WebSubApiSpec>;

/// `spec` of a `WebSubApi`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebSubApiSpec {
    /// Human-readable name.
    #[serde(default)]
    pub display_name: Option<String>,
    /// API version.
    #[serde(default)]
    pub version: Option<String>,
    /// Base path on the router; may contain `$version`.
    #[serde(default)]
    pub context: Option<String>,
    /// `[{"name", "method": "SUB"}]` or `{"<name>": {<event policies>}}`; checked by validation.
    #[serde(default)]
    pub channels: Option<Value>,
    /// Policies of every channel, by event type.
    #[serde(default)]
    pub all_channels: Option<EventPolicies>,
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

/// Policies by event type.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventPolicies {
    /// Run on `hub.mode=subscribe`.
    #[serde(default)]
    pub on_subscription: Option<PolicyList>,
    /// Run on `hub.mode=unsubscribe`.
    #[serde(default)]
    pub on_unsubscription: Option<PolicyList>,
    /// Run when a publisher posts an event.
    #[serde(default)]
    pub on_message_received: Option<PolicyList>,
    /// Run before each delivery to a subscriber.
    #[serde(default)]
    pub on_message_delivery: Option<PolicyList>,
}

/// `{"policies": [...]}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyList {
    /// The policies, in order.
    #[serde(default)]
    pub policies: Vec<PolicyRef>,
}

/// One channel of the seed's array form.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelItem {
    /// Channel name.
    #[serde(default)]
    pub name: Option<String>,
    /// `SUB`, the only kind of channel.
    #[serde(default)]
    pub method: Option<String>,
}
