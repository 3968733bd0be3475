//! API key management through the real controller: create (generated and custom values), list
//! (masked), regenerate, set a value, revoke by name or id, expiry, quota, roles, and keys kept
//! across undeploy but deleted with their API.

use gateway_tests::{EchoUpstream, Gateway, rest_api};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn keys(gw: &Gateway, api: &str) -> anyhow::Result<(StatusCode, Value)> {
    gw.get_json(&format!("/rest-apis/{api}/api-keys")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_lifecycle() -> anyhow::Result<()> {
    let up = EchoUpstream::start().await?;
    let gw = Gateway::start("keys").await?;
    let api = rest_api(
        "PetStoreAPI",
        "/petstore",
        &up.url(""),
        &[("GET", "/pet/{id}")],
    );
    assert_eq!(gw.create_api(&api).await?.0, 201);

    // Create with a name (the seed's call).
    let (s, body) = gw
        .send_json(
            Method::POST,
            "/rest-apis/PetStoreAPI/api-keys",
            &json!({"name": "test-key"}),
        )
        .await?;
    assert_eq!(s, 201, "{body}");
    let value = body["key"].as_str().unwrap_or_default().to_string();
    assert!(value.starts_with("apip_") && value.len() == 69, "{body}");
    assert_eq!(body["apiKey"]["apiKey"], value.as_str());
    assert_eq!(body["name"], "test-key");
    assert_eq!(body["uuid"], body["apiKey"]["id"]);
    assert_eq!(body["apiKey"]["status"], "active");
    assert_eq!(body["apiKey"]["source"], "local");
    assert_eq!(body["apiKey"]["apiId"], "PetStoreAPI");
    assert_eq!(body["apiKey"]["createdBy"], "admin");
    assert_eq!(body["remainingApiKeyQuota"], 9);
    let id = body["uuid"].as_str().unwrap_or_default().to_string();

    // Empty body: a generated name. Custom value: external source.
    let r = gw
        .mgmt(Method::POST, "/rest-apis/PetStoreAPI/api-keys")
        .send()
        .await?;
    assert_eq!(r.status(), 201);
    let custom = "my-own-key-value-0123456789";
    let (s, body) = gw
        .send_json(
            Method::POST,
            "/rest-apis/PetStoreAPI/api-keys",
            &json!({"name": "ext", "apiKey": custom, "expiresIn": {"duration": 2, "unit": "days"}}),
        )
        .await?;
    assert_eq!(s, 201, "{body}");
    assert_eq!(body["apiKey"]["source"], "external");
    assert!(body["apiKey"]["expiresAt"].as_str().is_some());

    // List: masked values only, never the plaintext.
    let (s, list) = keys(&gw, "PetStoreAPI").await?;
    assert_eq!(s, 200);
    assert_eq!(list["status"], "success");
    assert_eq!(list["totalCount"], 3);
    let text = list.to_string();
    assert!(
        !text.contains(&value) && !text.contains(custom),
        "plaintext leaked: {text}"
    );
    assert!(text.contains(&format!("***{}", &value[value.len() - 5..])));

    // Duplicate name and duplicate value.
    assert_eq!(
        gw.send_json(
            Method::POST,
            "/rest-apis/PetStoreAPI/api-keys",
            &json!({"name": "test-key"})
        )
        .await?
        .0,
        409
    );
    assert_eq!(
        gw.send_json(
            Method::POST,
            "/rest-apis/PetStoreAPI/api-keys",
            &json!({"name": "dup", "apiKey": custom})
        )
        .await?
        .0,
        409
    );

    // Regenerate: a new value, same key.
    let (s, body) = gw
        .send_json(
            Method::POST,
            "/rest-apis/PetStoreAPI/api-keys/test-key/regenerate",
            &json!({}),
        )
        .await?;
    assert_eq!(s, 200, "{body}");
    let regenerated = body["key"].as_str().unwrap_or_default().to_string();
    assert!(regenerated.starts_with("apip_") && regenerated != value);
    assert_eq!(body["uuid"], id.as_str());

    // Set a custom value by id.
    let (s, body) = gw
        .send_json(
            Method::PUT,
            &format!("/rest-apis/PetStoreAPI/api-keys/{id}"),
            &json!({"apiKey": "another-custom-value-42"}),
        )
        .await?;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["apiKey"]["source"], "external");
    assert_eq!(
        body["key"], "***ue-42",
        "a caller-supplied value is not echoed"
    );
    let (s, _) = gw
        .send_json(
            Method::PUT,
            "/rest-apis/PetStoreAPI/api-keys/test-key",
            &json!({}),
        )
        .await?;
    assert_eq!(s, 400, "apiKey is required");

    // Revoke by id, then unknown keys of a known API are fine, unknown APIs are not.
    let r = gw
        .mgmt(
            Method::DELETE,
            &format!("/rest-apis/PetStoreAPI/api-keys/{id}"),
        )
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await?,
        json!({"status": "success", "message": "API key revoked successfully"})
    );
    assert_eq!(keys(&gw, "PetStoreAPI").await?.1["totalCount"], 2);
    assert_eq!(
        gw.mgmt(Method::DELETE, "/rest-apis/PetStoreAPI/api-keys/ghost")
            .send()
            .await?
            .status(),
        200
    );
    assert_eq!(
        gw.mgmt(Method::DELETE, "/rest-apis/Nope/api-keys/ghost")
            .send()
            .await?
            .status(),
        404
    );
    assert_eq!(
        gw.send_json(
            Method::POST,
            "/rest-apis/PetStoreAPI/api-keys/ghost/regenerate",
            &json!({})
        )
        .await?
        .0,
        404
    );
    assert_eq!(
        gw.send_json(Method::POST, "/rest-apis/Nope/api-keys", &json!({}))
            .await?
            .0,
        404
    );
    assert_eq!(keys(&gw, "Nope").await?.0, 404);

    // Keys survive undeploy and go with the API.
    let mut undeploy = api.clone();
    undeploy["spec"]["desiredState"] = json!("undeployed");
    assert_eq!(
        gw.send_json(Method::PUT, "/rest-apis/PetStoreAPI", &undeploy)
            .await?
            .0,
        200
    );
    assert_eq!(keys(&gw, "PetStoreAPI").await?.1["totalCount"], 2);
    assert_eq!(
        gw.mgmt(Method::DELETE, "/rest-apis/PetStoreAPI")
            .send()
            .await?
            .status(),
        200
    );
    assert_eq!(gw.create_api(&api).await?.0, 201);
    assert_eq!(
        keys(&gw, "PetStoreAPI").await?.1["totalCount"],
        0,
        "a recreated API starts without keys"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_key_requests_quota_and_roles() -> anyhow::Result<()> {
    let up = EchoUpstream::start().await?;
    let gw = Gateway::start("keys-bad").await?;
    assert_eq!(
        gw.create_api(&rest_api("k", "/k", &up.url(""), &[("GET", "/")]))
            .await?
            .0,
        201
    );
    let path = "/rest-apis/k/api-keys";
    for (what, body) in [
        ("past expiry", json!({"expiresAt": "2000-01-01T00:00:00Z"})),
        ("bad expiry", json!({"expiresAt": "soon"})),
        (
            "bad unit",
            json!({"expiresIn": {"duration": 1, "unit": "fortnights"}}),
        ),
        (
            "zero duration",
            json!({"expiresIn": {"duration": 0, "unit": "days"}}),
        ),
        ("short custom value", json!({"apiKey": "short"})),
        (
            "custom value with space",
            json!({"apiKey": "a value with spaces in it"}),
        ),
        ("bad name", json!({"name": "no spaces allowed"})),
        ("unknown field", json!({"colour": "blue"})),
        ("name of wrong type", json!({"name": 7})),
    ] {
        let (s, b) = gw.send_json(Method::POST, path, &body).await?;
        assert_eq!(s, 400, "{what}: {b}");
        assert_eq!(b["status"], "error", "{what}");
    }
    let r = gw
        .mgmt(Method::POST, path)
        .header("Content-Type", "application/json")
        .body("{not json")
        .send()
        .await?;
    assert_eq!(r.status(), 400);
    assert_eq!(
        keys(&gw, "k").await?.1["totalCount"],
        0,
        "nothing was created"
    );

    // Quota: 10 active keys per user per API; the 11th is refused.
    for i in 0..10 {
        let (s, b) = gw
            .send_json(Method::POST, path, &json!({"name": format!("q{i}")}))
            .await?;
        assert_eq!(s, 201, "{b}");
        assert_eq!(b["remainingApiKeyQuota"], 9 - i);
    }
    let (s, b) = gw
        .send_json(Method::POST, path, &json!({"name": "q10"}))
        .await?;
    assert_eq!(s, 409, "{b}");
    assert!(b["message"].as_str().unwrap_or("").contains("quota"));

    // Consumers manage keys (with their own quota); developers may not.
    let c = gw.client();
    let r = c
        .post(gw.mgmt_url(path))
        .basic_auth("consumer", Some("consumer-password"))
        .json(&json!({}))
        .send()
        .await?;
    assert_eq!(r.status(), 201);
    let r = c
        .get(gw.mgmt_url(path))
        .basic_auth("dev", Some("dev-password"))
        .send()
        .await?;
    assert_eq!(r.status(), 403);
    Ok(())
}
