//! Validation of a `WebSubApi` request. A valid WebSub API is routed like a REST API whose
//! operations are `POST {context}/hub` and `POST {context}/webhook-receiver`, sent to the hub as
//! `/websub/{name}/...`; its channels and event policies ride along in [`WebSubDef`].

use std::collections::BTreeMap;

use gateway_policy_engine::chain::{ChainEntry, build_chain};
use gateway_policy_engine::{Policy, PolicyKind};
use gateway_xds::{ApiRoutes, Operation, PathPattern, Upstream, route_key};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::model::{ChannelItem, EventPolicies, WebSubApiRequest};
use crate::validate::{
    Common, CommonSpec, Envelope, Errors, FieldError, ValidApi, check_common, check_envelope,
    check_policies,
};

/// The kind of WebSub APIs.
pub const WEBSUB_API: &str = "WebSubApi";
/// Path of the subscription endpoint below the context.
pub const HUB_PATH: &str = "/hub";
/// Path of the publishing endpoint below the context.
pub const RECEIVER_PATH: &str = "/webhook-receiver";
const MAX_CHANNELS: usize = 200;

/// The event types policies attach to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Event {
    /// `hub.mode=subscribe`.
    Subscribe,
    /// `hub.mode=unsubscribe`.
    Unsubscribe,
    /// A publisher's event arriving.
    Receive,
    /// An event leaving for a subscriber.
    Deliver,
}

impl Event {
    /// Every event type.
    pub const ALL: [Event; 4] = [
        Event::Subscribe,
        Event::Unsubscribe,
        Event::Receive,
        Event::Deliver,
    ];

    /// The field name users write (`on_subscription`, ...).
    pub fn field(self) -> &'static str {
        match self {
            Event::Subscribe => "on_subscription",
            Event::Unsubscribe => "on_unsubscription",
            Event::Receive => "on_message_received",
            Event::Deliver => "on_message_delivery",
        }
    }

    /// The tag used in policy route names.
    pub fn tag(self) -> &'static str {
        match self {
            Event::Subscribe => "SUBSCRIBE",
            Event::Unsubscribe => "UNSUBSCRIBE",
            Event::Receive => "PUBLISH",
            Event::Deliver => "DELIVER",
        }
    }
}

/// What a valid `WebSubApi` adds to a routed API: its channels and the effective policy chain of
/// each (event type, channel) that has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSubDef {
    /// Channel names, as declared.
    pub channels: Vec<String>,
    /// Non-empty chains: channel-level policies replace API-level ones of the same name;
    /// authentication runs first. The channel [`ANY_CHANNEL`] holds the API-wide policies alone,
    /// which guard requests naming no declared channel.
    pub chains: BTreeMap<(Event, String), Vec<ChainEntry>>,
}

/// The channel key of the API-wide chain (no declared channel is empty).
pub const ANY_CHANNEL: &str = "";

fn is_channel_name(s: &str) -> bool {
    (1..=100).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn event_policies(p: &EventPolicies, at: &str, e: &mut Errors) -> BTreeMap<Event, Vec<Policy>> {
    let mut out = BTreeMap::new();
    for event in Event::ALL {
        let list = match event {
            Event::Subscribe => &p.on_subscription,
            Event::Unsubscribe => &p.on_unsubscription,
            Event::Receive => &p.on_message_received,
            Event::Deliver => &p.on_message_delivery,
        };
        let Some(list) = list else { continue };
        let field = format!("{at}.{}.policies", event.field());
        let parsed = check_policies(&list.policies, &field, e);
        if event == Event::Deliver {
            for (i, p) in parsed.iter().enumerate() {
                if matches!(p.kind, PolicyKind::ApiKeyAuth(_)) {
                    e.add(
                        format!("{field}[{i}].name"),
                        "api-key-auth cannot apply to on_message_delivery: deliveries carry no client credentials",
                    );
                }
            }
        }
        out.insert(event, parsed);
    }
    out
}

/// Channel names and their own event policies, from either accepted form.
fn channels(v: Option<&Value>, e: &mut Errors) -> Vec<(String, BTreeMap<Event, Vec<Policy>>)> {
    const F: &str = "spec.channels";
    let mut out: Vec<(String, BTreeMap<Event, Vec<Policy>>)> = Vec::new();
    let mut add = |name: String, field: String, policies, e: &mut Errors| {
        if !is_channel_name(&name) {
            e.add(
                field,
                "Channel name must be 1-100 characters of letters, digits, '.', '_' or '-'",
            );
        } else if out.iter().any(|(n, _)| *n == name) {
            e.add(field, format!("Channel '{name}' is declared twice"));
        } else {
            out.push((name, policies));
        }
    };
    match v {
        None | Some(Value::Null) => e.add(F, "At least one channel is required"),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let at = format!("{F}[{i}]");
                let c: ChannelItem = match serde_json::from_value(item.clone()) {
                    Ok(c) => c,
                    Err(err) => {
                        e.add(at, format!("Invalid channel: {err}"));
                        continue;
                    }
                };
                if let Some(m) = c.method.as_deref()
                    && !m.eq_ignore_ascii_case("SUB")
                {
                    e.add(
                        format!("{at}.method"),
                        format!("Unsupported channel method '{m}' (only SUB)"),
                    );
                }
                match c.name {
                    Some(name) => add(name, format!("{at}.name"), BTreeMap::new(), e),
                    None => e.add(format!("{at}.name"), "Channel name is required"),
                }
            }
        }
        Some(Value::Object(map)) => {
            for (name, body) in map {
                let at = format!("{F}.{name}");
                let body = if body.is_null() {
                    Value::Object(Default::default())
                } else {
                    body.clone()
                };
                match serde_json::from_value::<EventPolicies>(body) {
                    Ok(p) => {
                        let policies = event_policies(&p, &at, e);
                        add(name.clone(), at, policies, e);
                    }
                    Err(err) => e.add(at, format!("Invalid channel: {err}")),
                }
            }
        }
        Some(_) => e.add(
            F,
            "channels must be an array of {name, method} or a map keyed by channel name",
        ),
    }
    if matches!(v, Some(Value::Array(a)) if a.is_empty())
        || matches!(v, Some(Value::Object(m)) if m.is_empty())
    {
        e.add(F, "At least one channel is required");
    }
    if out.len() > MAX_CHANNELS {
        e.add(F, format!("At most {MAX_CHANNELS} channels are allowed"));
    }
    out
}

/// The route of WebSub API `name` to the hub at `hub`.
fn hub_upstream(hub: &Upstream, name: &str) -> Upstream {
    Upstream {
        base_path: format!("/websub/{name}"),
        ..hub.clone()
    }
}

/// Validates a `WebSubApi` request; `hub` is where Envoy reaches the hub. `path_name` is the
/// `{id}` of a PUT.
pub fn validate_websub_api(
    req: &WebSubApiRequest,
    path_name: Option<&str>,
    hub: &Upstream,
) -> Result<ValidApi, Vec<FieldError>> {
    let mut e = Errors(Vec::new());
    let name = check_envelope(
        &Envelope {
            api_version: req.api_version.as_deref(),
            kind: req.kind.as_deref(),
            metadata: req.metadata.as_ref(),
        },
        WEBSUB_API,
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
    let api_level = spec
        .all_channels
        .as_ref()
        .map(|p| event_policies(p, "spec.allChannels", &mut e))
        .unwrap_or_default();
    let declared = channels(spec.channels.as_ref(), &mut e);
    if !e.0.is_empty() {
        return Err(e.0);
    }
    let (Some(name), Some(display_name), Some(version), Some(context_raw), Some(context)) =
        (name, display_name, version, context_raw, context)
    else {
        e.add("spec", "incomplete definition");
        return Err(e.0);
    };
    let mut chains = BTreeMap::new();
    for (event, policies) in &api_level {
        let chain = build_chain(policies, &[]);
        if !chain.is_empty() {
            chains.insert((*event, ANY_CHANNEL.to_string()), chain);
        }
    }
    for (channel, own) in &declared {
        for event in Event::ALL {
            let none = Vec::new();
            let chain = build_chain(
                api_level.get(&event).unwrap_or(&none),
                own.get(&event).unwrap_or(&none),
            );
            if !chain.is_empty() {
                chains.insert((event, channel.clone()), chain);
            }
        }
    }
    let mut operations = Vec::new();
    let mut route_keys = Vec::new();
    for path in [HUB_PATH, RECEIVER_PATH] {
        let Ok(pattern) = PathPattern::parse(path) else {
            continue;
        };
        route_keys.push(route_key(&context, "POST", &pattern));
        operations.push(Operation {
            method: "POST".into(),
            path: pattern,
            guarded: false,
            rate_limited: false,
        });
    }
    Ok(ValidApi {
        routes: ApiRoutes {
            id: name.clone(),
            context,
            upstream: hub_upstream(hub, &name),
            operations,
        },
        name,
        display_name: display_name.to_string(),
        version: version.to_string(),
        context_raw: context_raw.to_string(),
        state,
        route_keys,
        chains: Vec::new(),
        websub: Some(WebSubDef {
            channels: declared.into_iter().map(|(n, _)| n).collect(),
            chains,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_xds::Scheme;
    use serde_json::json;

    fn hub() -> Upstream {
        Upstream {
            scheme: Scheme::Http,
            host: "127.0.0.1".into(),
            port: 9095,
            base_path: String::new(),
        }
    }

    fn parse(v: Value) -> Result<ValidApi, Vec<FieldError>> {
        let req: WebSubApiRequest = serde_json::from_value(v).unwrap();
        validate_websub_api(&req, None, &hub())
    }

    fn seed() -> Value {
        json!({
            "apiVersion": "gateway.api-platform.wso2.com/v1alpha1",
            "kind": "WebSubApi",
            "metadata": {"name": "github-events-v1.0"},
            "spec": {
                "displayName": "GitHub Events", "version": "v1.0",
                "context": "/github-events/$version",
                "channels": [{"name": "issues", "method": "SUB"}, {"name": "pull_requests", "method": "SUB"}]
            }
        })
    }

    #[test]
    fn the_seed_payload_routes_hub_and_receiver_to_the_hub() {
        let v = parse(seed()).unwrap();
        assert_eq!(v.context(), "/github-events/v1.0");
        assert_eq!(v.routes.upstream.base_path, "/websub/github-events-v1.0");
        let ops: Vec<String> = v
            .routes
            .operations
            .iter()
            .map(|o| format!("{} {}", o.method, o.path))
            .collect();
        assert_eq!(ops, vec!["POST /hub", "POST /webhook-receiver"]);
        assert!(v.routes.operations.iter().all(|o| !o.guarded));
        let w = v.websub.unwrap();
        assert_eq!(w.channels, vec!["issues", "pull_requests"]);
        assert!(w.chains.is_empty());
    }

    #[test]
    fn map_channels_and_event_policies_build_chains() {
        let mut d = seed();
        d["spec"]["channels"] = json!({
            "issues": {"on_subscription": {"policies": [{"name": "rate-limit", "version": "v1", "params": {"limit": 5, "window": 60}}]}},
            "pulls": {}
        });
        d["spec"]["allChannels"] = json!({
            "on_subscription": {"policies": [{"name": "api-key-auth", "version": "v1", "params": {"key": "X-API-Key"}}]},
            "on_message_received": {"policies": [{"name": "api-key-auth", "version": "v1"}]}
        });
        let w = parse(d).unwrap().websub.unwrap();
        assert_eq!(w.channels, vec!["issues", "pulls"]);
        let names = |ev: Event, ch: &str| -> Vec<String> {
            w.chains
                .get(&(ev, ch.to_string()))
                .map(|c| c.iter().map(|e| e.policy.name.clone()).collect())
                .unwrap_or_default()
        };
        assert_eq!(
            names(Event::Subscribe, "issues"),
            vec!["api-key-auth", "rate-limit"]
        );
        assert_eq!(names(Event::Subscribe, "pulls"), vec!["api-key-auth"]);
        assert_eq!(names(Event::Receive, "pulls"), vec!["api-key-auth"]);
        assert_eq!(
            names(Event::Subscribe, ANY_CHANNEL),
            vec!["api-key-auth"],
            "API-wide policies guard unknown channels"
        );
        assert!(names(Event::Deliver, "pulls").is_empty());
    }

    #[test]
    fn bad_definitions_name_their_fields() {
        let cases: Vec<(Value, &str)> = vec![
            (json!(null), "spec.channels"),
            (json!([]), "spec.channels"),
            (
                json!([{"name": "a", "method": "PUB"}]),
                "spec.channels[0].method",
            ),
            (json!([{"method": "SUB"}]), "spec.channels[0].name"),
            (json!([{"name": "a{b}"}]), "spec.channels[0].name"),
            (
                json!([{"name": "a"}, {"name": "a"}]),
                "spec.channels[1].name",
            ),
            (json!("issues"), "spec.channels"),
            (
                json!({"a": {"on_subscription": {"policies": [{"name": "nope", "version": "v1"}]}}}),
                "spec.channels.a.on_subscription.policies[0].name",
            ),
            (
                json!({"a": {"on_message_delivery": {"policies": [{"name": "api-key-auth", "version": "v1"}]}}}),
                "spec.channels.a.on_message_delivery.policies[0].name",
            ),
            (json!({"a": {"on_publish": {}}}), "spec.channels.a"),
        ];
        for (channels, field) in cases {
            let mut d = seed();
            d["spec"]["channels"] = channels.clone();
            let errs = parse(d).unwrap_err();
            assert!(
                errs.iter().any(|e| e.field == field),
                "{channels}: expected an error on {field}, got {errs:?}"
            );
        }
        let mut d = seed();
        d["kind"] = json!("RestApi");
        assert!(parse(d).unwrap_err().iter().any(|e| e.field == "kind"));
    }
}
