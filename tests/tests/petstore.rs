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
async fn seed_flow_with_policies_keys_and_rate_limits() -> anyhow::Result<()> {
    let up = EchoUpstream::start().await?;
    let gw = Gateway::start("petstore-policies").await?;
    let (status, body) = gw.create_api(&petstore(&up.url(""), true)).await?;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["policies"][0]["name"], "api-key-auth");

    // No key: 401 with the contract's body.
    gw.wait_route_status("/petstore/pet/1", 401).await?;
    let r = gw
        .client()
        .get(gw.router_url("/petstore/pet/1"))
        .send()
        .await?;
    assert_eq!(
        r.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    assert_eq!(
        r.json::<Value>().await?,
        json!({"error": "Unauthorized", "message": "Valid API key required"})
    );

    // Step 4 of the guide: create a key and call with it.
    let (s, key) = gw
        .send_json(
            Method::POST,
            "/rest-apis/PetStoreAPI/api-keys",
            &json!({"name": "test-key"}),
        )
        .await?;
    assert_eq!(s, 201, "{key}");
    let key = key["key"].as_str().unwrap_or_default().to_string();
    let call = |path: &'static str, key: String| {
        let c = gw.client().clone();
        let url = gw.router_url(path);
        async move { c.get(url).header("X-API-Key", key).send().await }
    };
    gateway_tests::eventually(gateway_tests::PATIENCE, "the new key to work", || {
        let f = call("/petstore/pet/1", key.clone());
        async move { f.await.ok().filter(|r| r.status() == 200).map(|_| ()) }
    })
    .await?;
    let r = call("/petstore/pet/1", key.clone()).await?;
    assert_eq!(
        r.headers()
            .get("x-ratelimit-limit")
            .and_then(|v| v.to_str().ok()),
        Some("100"),
        "operation limit"
    );
    assert!(r.headers().get("x-ratelimit-remaining").is_some());
    assert!(r.headers().get("x-ratelimit-reset").is_some());
    assert!(
        r.headers()
            .get("ratelimit-policy")
            .is_some_and(|v| v.to_str().unwrap_or("").contains("q=100;w=60"))
    );
    let echoed: Value = r.json().await?;
    assert!(
        echoed["headers"].get("x-api-key").is_none(),
        "the key never reaches the upstream: {echoed}"
    );
    // Other operations count against the API-level limit.
    let r = gw
        .client()
        .get(gw.router_url("/petstore/store/inventory"))
        .header("X-API-Key", &key)
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()
            .get("x-ratelimit-limit")
            .and_then(|v| v.to_str().ok()),
        Some("1000")
    );
    assert_eq!(
        call("/petstore/pet/1", "apip_wrong".into()).await?.status(),
        401
    );

    // Revoke: the key stops working.
    assert_eq!(
        gw.mgmt(Method::DELETE, "/rest-apis/PetStoreAPI/api-keys/test-key")
            .send()
            .await?
            .status(),
        200
    );
    gateway_tests::eventually(
        gateway_tests::PATIENCE,
        "the revoked key to be refused",
        || {
            let f = call("/petstore/pet/1", key.clone());
            async move { f.await.ok().filter(|r| r.status() == 401).map(|_| ()) }
        },
    )
    .await?;
    // Removing the policies (PUT without them) serves the API without a key.
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
