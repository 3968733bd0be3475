//! Management API rules: base paths, authentication and roles, filters, conflicts, and a table
//! of bad inputs that must each get a 4xx in the error shape and change nothing.

use gateway_tests::{ADMIN_AUTH, EchoUpstream, Gateway, rest_api};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn assert_error_shape(status: StatusCode, body: &Value, what: &str) {
    assert!(
        status.is_client_error(),
        "{what}: expected 4xx, got {status} {body}"
    );
    assert_eq!(body["status"], "error", "{what}: {body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_base_paths_serve_the_same_resources() -> anyhow::Result<()> {
    let up = EchoUpstream::start().await?;
    let gw = Gateway::start("mgmt-bases").await?;
    let api = rest_api("a1", "/a1", &up.url(""), &[("GET", "/x")]);
    let (s, _) = gw
        .send_json(Method::POST, "/api/management/v1/rest-apis", &api)
        .await?;
    assert_eq!(s, 201);
    for base in ["", "/api/management/v0.9", "/api/management/v1"] {
        let (s, body) = gw.get_json(&format!("{base}/rest-apis/a1")).await?;
        assert_eq!(
            (s.as_u16(), body["metadata"]["name"].clone()),
            (200, json!("a1")),
            "{base}"
        );
        let (s, body) = gw.get_json(&format!("{base}/rest-apis")).await?;
        assert_eq!(
            (s.as_u16(), body["count"].clone()),
            (200, json!(1)),
            "{base}"
        );
    }
    let r = gw.client().get(gw.mgmt_url("/health")).send().await?;
    assert_eq!(r.status(), 200, "health needs no auth");
    assert_eq!(r.json::<Value>().await?, json!({"status": "healthy"}));
    let r = gw.client().get(gw.mgmt_url("/metrics")).send().await?;
    assert_eq!(r.status(), 401, "metrics need credentials");
    assert!(gw.metrics_text().await?.contains("gateway_xds_nacks_total"));
    let (s, body) = gw.get_json("/no/such/thing").await?;
    assert_eq!(s, 404);
    assert_eq!(body["status"], "error");
    let r = gw.mgmt(Method::PATCH, "/rest-apis/a1").send().await?;
    assert_eq!(r.status(), 405);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_and_roles() -> anyhow::Result<()> {
    let up = EchoUpstream::start().await?;
    let gw = Gateway::start("mgmt-auth").await?;
    let c = gw.client();
    let r = c.get(gw.mgmt_url("/rest-apis")).send().await?;
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()
            .get("www-authenticate")
            .is_some_and(|v| v.to_str().unwrap_or("").starts_with("Basic"))
    );
    let body: Value = r.json().await?;
    assert_eq!(body["status"], "error");
    let r = c
        .get(gw.mgmt_url("/rest-apis"))
        .basic_auth("admin", Some("wrong"))
        .send()
        .await?;
    assert_eq!(r.status(), 401);
    let r = c
        .get(gw.mgmt_url("/rest-apis"))
        .header("Authorization", "Basic !!!notbase64")
        .send()
        .await?;
    assert_eq!(r.status(), 401);
    // Developers manage definitions; consumers (keys only) may not.
    let api = rest_api("roles", "/roles", &up.url(""), &[("GET", "/x")]);
    let r = c
        .post(gw.mgmt_url("/rest-apis"))
        .basic_auth("dev", Some("dev-password"))
        .header("Content-Type", "application/json")
        .body(api.to_string())
        .send()
        .await?;
    assert_eq!(r.status(), 201);
    let r = c
        .get(gw.mgmt_url("/rest-apis/roles"))
        .basic_auth("consumer", Some("consumer-password"))
        .send()
        .await?;
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await?;
    assert_eq!(body["status"], "error");
    // User names match case-insensitively.
    let r = c
        .get(gw.mgmt_url("/rest-apis/roles"))
        .basic_auth("ADMIN", Some("admin"))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_and_conflicts() -> anyhow::Result<()> {
    let up = EchoUpstream::start().await?;
    let gw = Gateway::start("mgmt-conflicts").await?;
    let mut a = rest_api(
        "orders-v1",
        "/orders/$version",
        &up.url(""),
        &[("GET", "/{id}"), ("GET", "/")],
    );
    a["spec"]["displayName"] = json!("Orders");
    a["spec"]["version"] = json!("v1");
    let mut b = rest_api(
        "orders-v2",
        "/orders/$version",
        &up.url(""),
        &[("GET", "/{id}")],
    );
    b["spec"]["displayName"] = json!("Orders");
    b["spec"]["version"] = json!("v2");
    assert_eq!(gw.create_api(&a).await?.0, 201);
    assert_eq!(gw.create_api(&b).await?.0, 201);

    let count = |q: &'static str| {
        let gw = &gw;
        async move {
            gw.get_json(&format!("/rest-apis{q}"))
                .await
                .map(|(_, v)| v["count"].clone())
        }
    };
    assert_eq!(count("").await?, 2);
    assert_eq!(count("?displayName=Orders").await?, 2);
    assert_eq!(count("?displayName=Orders&version=v2").await?, 1);
    assert_eq!(count("?context=/orders/v1").await?, 1);
    assert_eq!(count("?context=/orders/$version").await?, 2);
    assert_eq!(count("?status=deployed").await?, 2);
    assert_eq!(count("?status=DEPLOYED&limit=10&offset=0").await?, 2);
    assert_eq!(count("?displayName=Nope").await?, 0);
    let (_, list) = gw.get_json("/rest-apis").await?;
    assert_eq!(list["status"], "success");
    assert_eq!(
        list["apis"][0]["metadata"]["name"], "orders-v2",
        "newest first"
    );

    // Duplicate name, duplicate displayName+version, and a route another deployed API serves.
    let (s, body) = gw.create_api(&a).await?;
    assert_eq!(s, 409, "{body}");
    assert_error_shape(s, &body, "duplicate name");
    let mut same_dv = rest_api("orders-copy", "/copy", &up.url(""), &[("GET", "/x")]);
    same_dv["spec"]["displayName"] = json!("Orders");
    same_dv["spec"]["version"] = json!("v1");
    assert_eq!(gw.create_api(&same_dv).await?.0, 409);
    // /orders + /v1/{x} serves the same requests as /orders/v1 + /{id}.
    let overlap = rest_api("overlap", "/orders", &up.url(""), &[("GET", "/v1/{x}")]);
    let (s, body) = gw.create_api(&overlap).await?;
    assert_eq!(s, 409, "{body}");
    assert!(
        body["message"].as_str().unwrap_or("").contains("orders-v1"),
        "{body}"
    );
    // The same path with another method is fine.
    let other_method = rest_api(
        "overlap-post",
        "/orders",
        &up.url(""),
        &[("POST", "/v1/{x}")],
    );
    assert_eq!(gw.create_api(&other_method).await?.0, 201);

    // Undeploying frees the routes; redeploying the original is then refused while taken.
    let mut undeploy = a.clone();
    undeploy["spec"]["deploymentState"] = json!("undeployed");
    assert_eq!(
        gw.send_json(Method::PUT, "/rest-apis/orders-v1", &undeploy)
            .await?
            .0,
        200
    );
    assert_eq!(gw.create_api(&overlap).await?.0, 201);
    let (s, body) = gw
        .send_json(Method::PUT, "/rest-apis/orders-v1", &a)
        .await?;
    assert_eq!(s, 409, "{body}");

    // PUT naming another API is a 400; PUT of an unknown API is a 404.
    let (s, body) = gw
        .send_json(Method::PUT, "/rest-apis/orders-v2", &a)
        .await?;
    assert_eq!(s, 400, "{body}");
    assert!(body.to_string().contains("mismatch"));
    let (s, _) = gw
        .send_json(
            Method::PUT,
            "/rest-apis/ghost",
            &rest_api("ghost", "/g", &up.url(""), &[("GET", "/")]),
        )
        .await?;
    assert_eq!(s, 404);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_4xx_and_change_nothing() -> anyhow::Result<()> {
    let up = EchoUpstream::start().await?;
    let gw = Gateway::start("mgmt-bad-inputs").await?;
    let good = rest_api("good", "/good", &up.url(""), &[("GET", "/x")]);
    assert_eq!(gw.create_api(&good).await?.0, 201);
    gw.wait_route_status("/good/x", 200).await?;

    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = rest_api("bad", "/bad", &up.url(""), &[("GET", "/x")]);
        f(&mut v);
        v.to_string().into_bytes()
    };
    let json_ct = "application/json";
    let two_mib = {
        let mut v = rest_api("big", "/big", &up.url(""), &[("GET", "/x")]);
        v["metadata"]["annotations"] = json!({"padding": "x".repeat(2 << 20)});
        v.to_string().into_bytes()
    };
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        (
            "invalid JSON",
            json_ct,
            b"{ this is not valid json".to_vec(),
            400,
            "Failed to parse configuration",
        ),
        (
            "invalid YAML",
            "application/yaml",
            b"kind: [unclosed".to_vec(),
            400,
            "failed to parse YAML",
        ),
        ("empty body", json_ct, Vec::new(), 400, "empty"),
        ("JSON array", json_ct, b"[1,2]".to_vec(), 400, "object"),
        (
            "binary garbage",
            json_ct,
            vec![0xff, 0x00, 0xfe, 0x13, 0x37, 0x80],
            400,
            "Failed to parse",
        ),
        (
            "binary garbage as YAML",
            "application/yaml",
            vec![0xff, 0x00, 0xfe, 0x13, 0x37, 0x80],
            400,
            "Failed to parse",
        ),
        (
            "wrong content type",
            "text/plain",
            good.to_string().into_bytes(),
            415,
            "content type",
        ),
        ("2 MiB body", json_ct, two_mib, 413, "limit"),
        (
            "wrong kind",
            json_ct,
            with(&|v| v["kind"] = json!("WebSubApi")),
            400,
            "kind",
        ),
        (
            "missing kind",
            json_ct,
            with(&|v| v["kind"] = Value::Null),
            400,
            "kind",
        ),
        (
            "bad apiVersion",
            json_ct,
            with(&|v| v["apiVersion"] = json!("v9")),
            400,
            "apiVersion",
        ),
        (
            "missing metadata.name",
            json_ct,
            with(&|v| v["metadata"] = json!({})),
            400,
            "metadata.name",
        ),
        (
            "bad metadata.name",
            json_ct,
            with(&|v| v["metadata"]["name"] = json!("a b/c")),
            400,
            "metadata.name",
        ),
        (
            "label key with space",
            json_ct,
            with(&|v| v["metadata"]["labels"] = json!({"My Label": "x"})),
            400,
            "metadata.labels",
        ),
        (
            "missing spec",
            json_ct,
            with(&|v| v["spec"] = Value::Null),
            400,
            "spec",
        ),
        (
            "missing context and operations",
            json_ct,
            with(&|v| {
                v["spec"]["context"] = Value::Null;
                v["spec"]["operations"] = Value::Null;
            }),
            400,
            "At least one operation is required",
        ),
        (
            "context without slash",
            json_ct,
            with(&|v| v["spec"]["context"] = json!("bad")),
            400,
            "spec.context",
        ),
        (
            "context with trailing slash",
            json_ct,
            with(&|v| v["spec"]["context"] = json!("/bad/")),
            400,
            "spec.context",
        ),
        (
            "context with a parameter",
            json_ct,
            with(&|v| v["spec"]["context"] = json!("/bad/{x}")),
            400,
            "spec.context",
        ),
        (
            "context with a stray $",
            json_ct,
            with(&|v| v["spec"]["context"] = json!("/bad/$ver")),
            400,
            "spec.context",
        ),
        (
            "bad version",
            json_ct,
            with(&|v| v["spec"]["version"] = json!("v1.0.0-beta")),
            400,
            "semantic versioning",
        ),
        (
            "bad displayName",
            json_ct,
            with(&|v| v["spec"]["displayName"] = json!("bad<name>")),
            400,
            "spec.displayName",
        ),
        (
            "missing upstream",
            json_ct,
            with(&|v| v["spec"]["upstream"] = Value::Null),
            400,
            "spec.upstream.main.url",
        ),
        (
            "relative upstream",
            json_ct,
            with(&|v| v["spec"]["upstream"]["main"]["url"] = json!("/x")),
            400,
            "spec.upstream.main.url",
        ),
        (
            "ftp upstream",
            json_ct,
            with(&|v| v["spec"]["upstream"]["main"]["url"] = json!("ftp://h/x")),
            400,
            "http or https",
        ),
        (
            "upstream with query",
            json_ct,
            with(&|v| v["spec"]["upstream"]["main"]["url"] = json!("http://h/x?y=1")),
            400,
            "query",
        ),
        (
            "upstream with fragment",
            json_ct,
            with(&|v| v["spec"]["upstream"]["main"]["url"] = json!("http://h/x#y")),
            400,
            "fragment",
        ),
        (
            "upstream with credentials",
            json_ct,
            with(&|v| v["spec"]["upstream"]["main"]["url"] = json!("http://u:p@h/")),
            400,
            "credentials",
        ),
        (
            "bad method",
            json_ct,
            with(&|v| v["spec"]["operations"][0]["method"] = json!("FETCH")),
            400,
            "spec.operations[0].method",
        ),
        (
            "method of wrong type",
            json_ct,
            with(&|v| v["spec"]["operations"][0]["method"] = json!(5)),
            400,
            "spec.operations[0].method",
        ),
        (
            "path without slash",
            json_ct,
            with(&|v| v["spec"]["operations"][0]["path"] = json!("x")),
            400,
            "spec.operations[0].path",
        ),
        (
            "unbalanced braces",
            json_ct,
            with(&|v| v["spec"]["operations"][0]["path"] = json!("/a/{id")),
            400,
            "spec.operations[0].path",
        ),
        (
            "wildcard in the middle",
            json_ct,
            with(&|v| v["spec"]["operations"][0]["path"] = json!("/a/*/b")),
            400,
            "spec.operations[0].path",
        ),
        (
            "duplicate operation",
            json_ct,
            with(&|v| {
                v["spec"]["operations"] = json!([
                    {"method": "GET", "path": "/p/{a}"}, {"method": "GET", "path": "/p/{b}"}
                ])
            }),
            400,
            "duplicate operation",
        ),
        (
            "unknown policy",
            json_ct,
            with(&|v| {
                v["spec"]["policies"] = json!([{"name": "policy-does-not-exist", "version": "v1"}])
            }),
            400,
            "spec.policies[0].name",
        ),
        (
            "full semver policy version",
            json_ct,
            with(
                &|v| v["spec"]["policies"] = json!([{"name": "rate-limit", "version": "v1.0.0", "params": {"limit": 1, "window": 1}}]),
            ),
            400,
            "spec.policies[0].version",
        ),
        (
            "bad policy params",
            json_ct,
            with(
                &|v| v["spec"]["operations"][0]["policies"] = json!([{"name": "rate-limit", "version": "v1", "params": {"limit": "lots", "window": 60}}]),
            ),
            400,
            "spec.operations[0].policies[0].params.limit",
        ),
        (
            "executionCondition",
            json_ct,
            with(
                &|v| v["spec"]["policies"] = json!([{"name": "api-key-auth", "version": "v1", "executionCondition": "request.Method == \"POST\""}]),
            ),
            400,
            "executionCondition",
        ),
        (
            "vhosts",
            json_ct,
            with(&|v| v["spec"]["vhosts"] = json!({"main": "api.example.com"})),
            400,
            "spec.vhosts",
        ),
        (
            "unknown spec field",
            json_ct,
            with(&|v| v["spec"]["resilience"] = json!({"timeout": "5s"})),
            400,
            "resilience",
        ),
        (
            "conflicting states",
            json_ct,
            with(&|v| {
                v["spec"]["desiredState"] = json!("deployed");
                v["spec"]["deploymentState"] = json!("undeployed");
            }),
            400,
            "deploymentState",
        ),
        (
            "bad state",
            json_ct,
            with(&|v| v["spec"]["desiredState"] = json!("sideways")),
            400,
            "desiredState",
        ),
    ];
    for (what, ct, body, status, needle) in cases {
        let r = gw
            .client()
            .post(gw.mgmt_url("/rest-apis"))
            .header("Authorization", ADMIN_AUTH)
            .header("Content-Type", ct)
            .body(body)
            .send()
            .await?;
        let got = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(got.as_u16(), status, "{what}: {body}");
        assert_error_shape(got, &body, what);
        assert!(
            body.to_string().contains(needle),
            "{what}: expected '{needle}' in {body}"
        );
    }
    // The same bad bodies on PUT leave the stored API untouched.
    let mut bad_put = good.clone();
    bad_put["spec"]["upstream"]["main"]["url"] = json!("not a url");
    let (s, _) = gw
        .send_json(Method::PUT, "/rest-apis/good", &bad_put)
        .await?;
    assert_eq!(s, 400);
    let (_, list) = gw.get_json("/rest-apis").await?;
    assert_eq!(list["count"], 1, "nothing was stored: {list}");
    assert_eq!(list["apis"][0]["spec"], good["spec"]);
    assert_eq!(
        gw.route(Method::GET, "/good/x").await?.0,
        200,
        "router unaffected"
    );
    assert_eq!(gw.route(Method::GET, "/bad/x").await?.0, 404);
    Ok(())
}
