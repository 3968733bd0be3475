//! The bottom-up guide's PetStore flow, end to end through the real controller and Envoy:
//! deploy, get, route, update, undeploy, redeploy, delete; policy routes fail closed.

use gateway_tests::{EchoUpstream, Gateway};
use reqwest::Method;
use serde_json::{Value, json};

fn petstore(upstream: &str, with_policies: bool) -> Value {
    let mut api = json!({
        "apiVersion": "gateway.api-platform.wso2.com/v1alpha1",
        "kind": "RestApi",
        "metadata": {"name": "PetStoreAPI"},
        "spec": {
            "displayName": "PetStore API",
            "version": "v1.0",
            "context": "/petstore",
            "upstream": {"main": {"url": upstream}},
            "operations": [
                {"method": "GET", "path": "/pet/{petId}"},
                {"method": "POST", "path": "/pet"},
                {"method": "PUT", "path": "/pet"},
                {"method": "DELETE", "path": "/pet/{petId}"},
                {"method": "GET", "path": "/store/inventory"},
                {"method": "POST", "path": "/store/order"},
                {"method": "GET", "path": "/"}
            ]
        }
    });
    if with_policies {
        api["spec"]["policies"] = json!([
            {"name": "api-key-auth", "version": "v1", "params": {"key": "X-API-Key", "in": "header"}},
            {"name": "rate-limit", "version": "v1", "params": {"limit": 1000, "window": 3600}}
        ]);
        api["spec"]["operations"][0]["policies"] = json!([{"name": "rate-limit", "version": "v1", "params": {"limit": 100, "window": 60}}]);
    }
    api
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_flow_deploy_update_undeploy_redeploy_delete() -> anyhow::Result<()> {
    let up = EchoUpstream::start().await?;
    let gw = Gateway::start("petstore").await?;
    let api = petstore(&up.url("/api/v3"), false);

    let (status, body) = gw.create_api(&api).await?;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["displayName"], "PetStore API");
    assert_eq!(body["version"], "v1.0");
    assert_eq!(body["context"], "/petstore");
    assert_eq!(body["origin"], "gateway_api");
    assert_eq!(body["desiredState"], "deployed");
    assert_eq!(
        body["cpSyncStatus"],
        Value::Null,
        "no control plane configured"
    );
    assert_eq!(body["status"]["id"], "PetStoreAPI");
    assert_eq!(body["status"]["state"], "deployed");
    assert!(body["uuid"].as_str().is_some_and(|u| u.len() == 36));
    assert!(body["createdAt"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(body["spec"], api["spec"], "the envelope is echoed as sent");

    gw.wait_route_status("/petstore/pet/123", 200).await?;
    let (_, echoed) = gw.route(Method::GET, "/petstore/pet/123?x=1").await?;
    let echoed: Value = serde_json::from_str(&echoed)?;
    assert_eq!(
        echoed["path"], "/api/v3/pet/123?x=1",
        "context stripped, base path prepended, query kept"
    );
    assert_eq!(echoed["method"], "GET");

    let (status, got) = gw.get_json("/rest-apis/PetStoreAPI").await?;
    assert_eq!(status, 200);
    assert_eq!(got["uuid"], body["uuid"]);

    // Update: only GET /pet/{petId} remains.
    let mut updated = api.clone();
    updated["spec"]["operations"] = json!([{"method": "GET", "path": "/pet/{petId}"}]);
    let (status, body) = gw
        .send_json(Method::PUT, "/rest-apis/PetStoreAPI", &updated)
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["spec"]["operations"].as_array().map(Vec::len), Some(1));
    gw.wait_route_status("/petstore/store/inventory", 404)
        .await?;
    assert_eq!(gw.route(Method::GET, "/petstore/pet/1").await?.0, 200);

    // Undeploy with the seed's body: the record stays, the routes go.
    let mut undeploy = updated.clone();
    undeploy["spec"]["desiredState"] = json!("undeployed");
    let (status, body) = gw
        .send_json(Method::PUT, "/rest-apis/PetStoreAPI", &undeploy)
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["desiredState"], "undeployed");
    assert!(
        body["status"].get("deployedAt").is_none(),
        "no deployedAt while undeployed"
    );
    gw.wait_route_status("/petstore/pet/1", 404).await?;
    let (status, got) = gw.get_json("/rest-apis/PetStoreAPI").await?;
    assert_eq!(
        (status.as_u16(), got["status"]["state"].clone()),
        (200, json!("undeployed"))
    );
    let (_, list) = gw.get_json("/rest-apis?status=undeployed").await?;
    assert_eq!(list["count"], 1);

    // Redeploy with the reference spelling.
    let mut redeploy = updated.clone();
    redeploy["spec"]["deploymentState"] = json!("deployed");
    let (status, _) = gw
        .send_json(Method::PUT, "/rest-apis/PetStoreAPI", &redeploy)
        .await?;
    assert_eq!(status, 200);
    gw.wait_route_status("/petstore/pet/1", 200).await?;

    // Delete: gone from management and router; a second delete is 404.
    let r = gw
        .mgmt(Method::DELETE, "/rest-apis/PetStoreAPI")
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await?;
    assert_eq!(
        body,
        json!({"status": "success", "message": "RestAPI deleted successfully", "id": "PetStoreAPI"})
    );
    gw.wait_route_status("/petstore/pet/1", 404).await?;
    assert_eq!(gw.get_json("/rest-apis/PetStoreAPI").await?.0, 404);
    assert_eq!(
        gw.mgmt(Method::DELETE, "/rest-apis/PetStoreAPI")
            .send()
            .await?
            .status(),
        404
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_routes_fail_closed_until_a_policy_engine_enforces_them() -> anyhow::Result<()> {
    let up = EchoUpstream::start().await?;
    let gw = Gateway::start("petstore-policies").await?;
    let (status, body) = gw.create_api(&petstore(&up.url(""), true)).await?;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["policies"][0]["name"], "api-key-auth");
    gw.wait_route_status("/petstore/pet/1", 503).await?;
    let r = gw
        .client()
        .get(gw.router_url("/petstore/pet/1"))
        .header("X-API-Key", "anything")
        .send()
        .await?;
    assert_eq!(r.status(), 503, "never served unchecked");
    assert_eq!(
        r.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    let body: Value = r.json().await?;
    assert_eq!(body["error"], "Service Unavailable");
    // Removing the policies (PUT without them) serves the API.
    let (status, _) = gw
        .send_json(
            Method::PUT,
            "/rest-apis/PetStoreAPI",
            &petstore(&up.url(""), false),
        )
        .await?;
    assert_eq!(status, 200);
    gw.wait_route_status("/petstore/pet/1", 200).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yaml_definitions_are_accepted() -> anyhow::Result<()> {
    let up = EchoUpstream::start().await?;
    let gw = Gateway::start("petstore-yaml").await?;
    let yaml = format!(
        "apiVersion: gateway.api-platform.wso2.com/v1alpha1\nkind: RestApi\nmetadata:\n  name: PetStoreAPI\nspec:\n  displayName: PetStore API\n  version: v1.0\n  context: /petstore\n  upstream:\n    main:\n      url: \"{}\"\n  operations:\n    - method: GET\n      path: /pet/{{petId}}\n",
        up.url("")
    );
    let r = gw
        .mgmt(Method::POST, "/rest-apis")
        .header("Content-Type", "application/yaml")
        .body(yaml)
        .send()
        .await?;
    assert_eq!(r.status(), 201);
    gw.wait_route_status("/petstore/pet/7", 200).await?;
    Ok(())
}
