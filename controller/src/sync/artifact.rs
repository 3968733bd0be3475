//! The archive the API Manager imports: `<name>-<version>/api.yaml`,
//! `deployment_environments.yaml` and `Definitions/swagger.yaml`, built from a stored API.
//! Pure and deterministic (fixed timestamps), so the same API always gives the same bytes.

use std::collections::BTreeMap;
use std::io::Write;

use serde_json::{Value, json};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, ZipWriter};

use super::SyncError;
use crate::model::{ApiRequest, PolicyRef};
use crate::store::ApiRow;

/// An archive ready to upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// Name of the uploaded file (`<uuid>.zip`).
    pub file_name: String,
    /// The zip bytes.
    pub zip: Vec<u8>,
}

struct Operation {
    verb: String,
    target: String,
    policies: Vec<PolicyRef>,
}

/// Builds the import archive of `row` for the API Manager environment `gateway_name`.
pub fn export(row: &ApiRow, gateway_name: &str) -> Result<Artifact, SyncError> {
    let req: ApiRequest = serde_json::from_str(&row.definition)
        .map_err(|e| SyncError::Export(format!("stored definition unreadable: {e}")))?;
    let spec = req
        .spec
        .ok_or_else(|| SyncError::Export("the definition has no spec".into()))?;
    let upstream = spec.upstream.as_ref();
    let main = upstream
        .and_then(|u| u.main.as_ref())
        .and_then(|m| m.url.clone())
        .ok_or_else(|| {
            SyncError::Export("spec.upstream.main.url is required to sync to APIM".into())
        })?;
    let sandbox = upstream
        .and_then(|u| u.sandbox.as_ref())
        .and_then(|s| s.url.clone())
        .unwrap_or_else(|| main.clone());
    let operations: Vec<Operation> = spec
        .operations
        .unwrap_or_default()
        .into_iter()
        .filter_map(|o| {
            Some(Operation {
                verb: o.method?.to_ascii_uppercase(),
                target: o.path?,
                policies: o.policies,
            })
        })
        .collect();
    let api_yaml = api_yaml(row, &main, &sandbox, &spec.policies, &operations);
    let environments = json!({
        "type": "deployment_environments",
        "version": "v4.3.0",
        "data": [{"deploymentEnvironment": gateway_name, "displayOnDevportal": true}],
    });
    let swagger = swagger(row, &main, &operations);
    let dir = format!("{}-{}", row.display_name, row.version);
    let files = [
        (format!("{dir}/api.yaml"), api_yaml),
        (format!("{dir}/deployment_environments.yaml"), environments),
        (format!("{dir}/Definitions/swagger.yaml"), swagger),
    ];
    let mut zip = ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .last_modified_time(DateTime::default());
    for (name, doc) in files {
        let text = serde_yaml_ng::to_string(&doc)
            .map_err(|e| SyncError::Export(format!("cannot write {name}: {e}")))?;
        zip.start_file(name, options)
            .and_then(|_| zip.write_all(text.as_bytes()).map_err(Into::into))
            .map_err(|e| SyncError::Export(format!("cannot build the archive: {e}")))?;
    }
    let bytes = zip
        .finish()
        .map_err(|e| SyncError::Export(format!("cannot build the archive: {e}")))?
        .into_inner();
    Ok(Artifact {
        file_name: format!("{}.zip", row.uuid),
        zip: bytes,
    })
}

/// A policy as the API Manager's hub lists it: `v1` becomes `1.0`, and the id is a UUIDv5 of
/// the name and version so it is stable across imports.
fn hub_policy(p: &PolicyRef) -> Value {
    let name = p.name.clone().unwrap_or_default();
    let version = p.version.clone().unwrap_or_else(|| "v1".into());
    let major = version.trim_start_matches('v');
    let apim_version = if major.contains('.') {
        major.to_string()
    } else {
        format!("{major}.0")
    };
    let id = uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_DNS,
        format!("apim:policy:{name}:{version}").as_bytes(),
    );
    json!({
        "policyName": name,
        "policyVersion": apim_version,
        "policyId": id.to_string(),
        "policyType": null,
        "parameters": p.params.clone().unwrap_or_else(|| json!({})),
    })
}

fn api_yaml(
    row: &ApiRow,
    main: &str,
    sandbox: &str,
    api_policies: &[PolicyRef],
    operations: &[Operation],
) -> Value {
    let ops: Vec<Value> = operations
        .iter()
        .map(|o| {
            json!({
                "id": "",
                "target": o.target,
                "verb": o.verb,
                "authType": "Application & Application User",
                "throttlingPolicy": "Unlimited",
                "scopes": [],
                "operationPolicies": {"request": [], "response": [], "fault": []},
                "operationHubPolicies": o.policies.iter().map(hub_policy).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "type": "api",
        "version": "v4.7.0",
        "data": {
            "name": row.display_name,
            "version": row.version,
            "context": row.context,
            "type": "HTTP",
            "transport": ["http", "https"],
            "provider": "admin",
            "tags": [],
            "policies": ["Unlimited"],
            "securityScheme": ["oauth_basic_auth_api_key_mandatory"],
            "visibility": "PUBLIC",
            "visibleOrganizations": ["none"],
            "apiHubPolicies": api_policies.iter().map(hub_policy).collect::<Vec<_>>(),
            "gatewayType": "APIPlatform",
            "gatewayVendor": "wso2",
            "endpointConfig": {
                "endpoint_type": "http",
                "production_endpoints": {"url": main},
                "sandbox_endpoints": {"url": sandbox},
            },
            "endpointImplementationType": "ENDPOINT",
            "initiatedFromGateway": true,
            "additionalProperties": [{"name": "gateway_api_id", "value": row.handle, "display": false}],
            "isRevision": false,
            "revisionId": 0,
            "cacheTimeout": 300,
            "operations": ops,
        }
    })
}

/// OpenAPI 3 of the operations, with `{param}` segments declared as string path parameters.
fn swagger(row: &ApiRow, main: &str, operations: &[Operation]) -> Value {
    let mut paths: BTreeMap<String, serde_json::Map<String, Value>> = BTreeMap::new();
    for o in operations {
        let params: Vec<Value> = o
            .target
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let mut op = json!({"responses": {"200": {"description": "Successful response"}}});
        if !params.is_empty() {
            op["parameters"] = Value::Array(params);
        }
        paths
            .entry(o.target.clone())
            .or_default()
            .insert(o.verb.to_ascii_lowercase(), op);
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": row.display_name, "version": row.version},
        "servers": [{"url": main}],
        "paths": paths,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn row(definition: Value) -> ApiRow {
        ApiRow {
            uuid: "0190-uuid".into(),
            kind: "RestApi".into(),
            handle: "petstore".into(),
            display_name: "PetStore API".into(),
            version: "v1.0".into(),
            context: "/petstore".into(),
            desired_state: "deployed".into(),
            origin: "gateway_api".into(),
            definition: definition.to_string(),
            created_at: "2026-01-01T00:00:00Z".into(),
            updated_at: "2026-01-01T00:00:00Z".into(),
            deployed_at: None,
            cp_sync_status: Some("pending".into()),
            cp_sync_error: None,
            cp_artifact_id: None,
            cp_revision: None,
        }
    }

    fn petstore() -> Value {
        json!({
            "apiVersion": "gateway.api-platform.wso2.com/v1alpha1",
            "kind": "RestApi",
            "metadata": {"name": "petstore"},
            "spec": {
                "displayName": "PetStore API", "version": "v1.0", "context": "/petstore",
                "upstream": {"main": {"url": "https://petstore.example.com/v2"}},
                "policies": [{"name": "api-key-auth", "version": "v1", "params": {"key": "X-API-Key", "in": "header"}}],
                "operations": [
                    {"method": "GET", "path": "/pet/{petId}", "policies": [{"name": "rate-limit", "version": "v1", "params": {"limit": 10, "window": 60}}]},
                    {"method": "post", "path": "/pet"},
                    {"method": "DELETE", "path": "/pet/{petId}"}
                ]
            }
        })
    }

    fn unzip(bytes: &[u8]) -> BTreeMap<String, Value> {
        let mut z = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
        let mut out = BTreeMap::new();
        for i in 0..z.len() {
            let mut f = z.by_index(i).unwrap();
            let mut text = String::new();
            f.read_to_string(&mut text).unwrap();
            out.insert(
                f.name().unwrap().to_string(),
                serde_yaml_ng::from_str(&text).unwrap(),
            );
        }
        out
    }

    #[test]
    fn archive_layout_and_contents() {
        let a = export(&row(petstore()), "onprem-gw").unwrap();
        assert_eq!(a.file_name, "0190-uuid.zip");
        let files = unzip(&a.zip);
        assert_eq!(
            files.keys().collect::<Vec<_>>(),
            vec![
                "PetStore API-v1.0/Definitions/swagger.yaml",
                "PetStore API-v1.0/api.yaml",
                "PetStore API-v1.0/deployment_environments.yaml",
            ]
        );
        let api = &files["PetStore API-v1.0/api.yaml"];
        assert_eq!(api["type"], "api");
        let d = &api["data"];
        assert_eq!(
            (&d["name"], &d["version"], &d["context"], &d["type"]),
            (
                &json!("PetStore API"),
                &json!("v1.0"),
                &json!("/petstore"),
                &json!("HTTP")
            )
        );
        assert_eq!(d["initiatedFromGateway"], true);
        assert_eq!(d["gatewayVendor"], "wso2");
        assert_eq!(
            d["endpointConfig"]["production_endpoints"]["url"],
            "https://petstore.example.com/v2"
        );
        assert_eq!(
            d["endpointConfig"]["sandbox_endpoints"]["url"],
            "https://petstore.example.com/v2"
        );
        let ops: Vec<(String, String)> = d["operations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                (
                    o["verb"].as_str().unwrap().into(),
                    o["target"].as_str().unwrap().into(),
                )
            })
            .collect();
        assert_eq!(
            ops,
            vec![
                ("GET".into(), "/pet/{petId}".into()),
                ("POST".into(), "/pet".into()),
                ("DELETE".into(), "/pet/{petId}".into())
            ]
        );
        let hub = &d["operations"][0]["operationHubPolicies"][0];
        assert_eq!(
            (&hub["policyName"], &hub["policyVersion"]),
            (&json!("rate-limit"), &json!("1.0"))
        );
        assert_eq!(d["apiHubPolicies"][0]["policyName"], "api-key-auth");
        let env = &files["PetStore API-v1.0/deployment_environments.yaml"];
        assert_eq!(env["data"][0]["deploymentEnvironment"], "onprem-gw");
        let sw = &files["PetStore API-v1.0/Definitions/swagger.yaml"];
        assert_eq!(sw["openapi"], "3.0.0");
        assert_eq!(sw["info"]["title"], "PetStore API");
        let pet = &sw["paths"]["/pet/{petId}"];
        assert!(pet["get"].is_object() && pet["delete"].is_object());
        assert_eq!(pet["get"]["parameters"][0]["name"], "petId");
        assert!(sw["paths"]["/pet"]["post"]["parameters"].is_null());
    }

    #[test]
    fn deterministic_and_stable_policy_ids() {
        let a = export(&row(petstore()), "gw").unwrap();
        let b = export(&row(petstore()), "gw").unwrap();
        assert_eq!(a, b, "same API, same bytes");
        let p = PolicyRef {
            name: Some("rate-limit".into()),
            version: Some("v1".into()),
            params: None,
            execution_condition: None,
        };
        assert_eq!(hub_policy(&p)["policyId"], hub_policy(&p)["policyId"]);
    }

    #[test]
    fn an_api_without_main_upstream_cannot_be_exported() {
        let mut d = petstore();
        d["spec"]["upstream"] = json!({});
        let err = export(&row(d), "gw").unwrap_err().to_string();
        assert!(err.contains("upstream.main.url"), "{err}");
    }
}
