//! Pure translation of a stored API and its keys into what policy engines enforce: the chain of
//! every route that carries policies, and the hashes (with expiry) of the API's keys.

use gateway_policy_engine::chain::RouteChain;
use gateway_policy_engine::distribution::ApiPolicies;
use gateway_xds::routes::route_name;

use crate::store::KeyRow;
use crate::validate::ValidApi;
use crate::websub::policy_route;

/// The policies of API `v` with its `keys`: one chain per route of a REST API, per (event type,
/// channel) of a WebSub API.
pub fn api_policies(v: &ValidApi, keys: &[KeyRow]) -> ApiPolicies {
    let websub = v.websub.iter().flat_map(|w| {
        w.chains.iter().map(|((event, channel), entries)| {
            let chain = RouteChain {
                api: v.name.clone(),
                operation: format!("{} {channel}", event.tag()),
                entries: entries.clone(),
            };
            (policy_route(&v.name, *event, channel), chain)
        })
    });
    let routes = v
        .routes
        .operations
        .iter()
        .zip(v.chains.iter().zip(&v.route_keys))
        .filter(|(_, (chain, _))| !chain.is_empty())
        .map(|(op, (chain, key))| {
            let chain = RouteChain {
                api: v.name.clone(),
                operation: key.clone(),
                entries: chain.clone(),
            };
            (route_name(&v.routes, op), chain)
        })
        .chain(websub)
        .collect();
    let keys = keys
        .iter()
        .map(|k| {
            let expires = k
                .expires_at
                .as_deref()
                .and_then(|e| chrono::DateTime::parse_from_rfc3339(e).ok())
                .map(|t| t.timestamp().max(0) as u64);
            (k.key_hash.clone(), expires)
        })
        .collect();
    ApiPolicies { routes, keys }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ApiRequest;
    use crate::validate::validate_rest_api;
    use serde_json::json;

    #[test]
    fn routes_with_policies_and_keys_with_expiry() {
        let req: ApiRequest = serde_json::from_value(json!({
            "apiVersion": "gateway.api-platform.wso2.com/v1alpha1",
            "kind": "RestApi",
            "metadata": {"name": "pets"},
            "spec": {
                "displayName": "Pets", "version": "v1", "context": "/pets",
                "upstream": {"main": {"url": "http://127.0.0.1:9"}},
                "operations": [
                    {"method": "GET", "path": "/{id}", "policies": [{"name": "rate-limit", "version": "v1", "params": {"limit": 1, "window": 60}}]},
                    {"method": "GET", "path": "/open"}
                ]
            }
        }))
        .unwrap();
        let v = validate_rest_api(&req, None).unwrap();
        let key = |hash: &str, expires: Option<&str>| KeyRow {
            uuid: "k".into(),
            api_uuid: "a".into(),
            name: "n".into(),
            display_name: "n".into(),
            key_hash: hash.into(),
            masked: "***".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            created_by: "admin".into(),
            updated_at: "2026-01-01T00:00:00Z".into(),
            expires_at: expires.map(str::to_string),
            source: "local".into(),
        };
        let p = api_policies(
            &v,
            &[key("h1", None), key("h2", Some("1970-01-01T00:01:40Z"))],
        );
        assert_eq!(
            p.routes.keys().collect::<Vec<_>>(),
            vec!["pets|GET|/{}"],
            "only routes with policies"
        );
        let chain = &p.routes["pets|GET|/{}"];
        assert_eq!(
            (chain.api.as_str(), chain.operation.as_str()),
            ("pets", "GET /pets/{}")
        );
        assert_eq!(p.keys.get("h1"), Some(&None));
        assert_eq!(p.keys.get("h2"), Some(&Some(100)));
    }
}
