//! Every routing rule of the contract, checked through the real Envoy with an echo upstream.

use gateway_tests::{EchoUpstream, Gateway, rest_api};
use reqwest::Method;
use serde_json::{Value, json};

async fn upstream_path(
    gw: &Gateway,
    method: Method,
    path: &str,
) -> anyhow::Result<(u16, Option<String>)> {
    let (status, body) = gw.route(method, path).await?;
    let echoed = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v["path"].as_str().map(str::to_string));
    Ok((status.as_u16(), echoed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_templates_wildcards_and_methods() -> anyhow::Result<()> {
    let up = EchoUpstream::start().await?;
    let gw = Gateway::start("routing").await?;
    let mut api = rest_api(
        "weather",
        "/weather/$version",
        &up.url("/api/v2"),
        &[
            ("GET", "/{country}/{city}"),
            ("GET", "/alerts/active"),
            ("POST", "/alerts/active"),
            ("GET", "/forecast/*"),
            ("get", "/lower"),
            ("GET", "/"),
        ],
    );
    api["spec"]["version"] = json!("v1.0");
    let (status, body) = gw.create_api(&api).await?;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        body["spec"]["context"], "/weather/$version",
        "raw context echoed"
    );
    assert_eq!(body["context"], "/weather/v1.0", "resolved context");
    gw.wait_route_status("/weather/v1.0/us/seattle", 200)
        .await?;

    let cases: &[(Method, &str, u16, Option<&str>)] = &[
        // {param} matches exactly one non-empty segment; base path prepended.
        (
            Method::GET,
            "/weather/v1.0/us/seattle",
            200,
            Some("/api/v2/us/seattle"),
        ),
        (Method::GET, "/weather/v1.0/us/seattle/extra", 404, None),
        (Method::GET, "/weather/v1.0/us", 404, None),
        // Literal paths match with or without one trailing slash, which is preserved.
        (
            Method::GET,
            "/weather/v1.0/alerts/active",
            200,
            Some("/api/v2/alerts/active"),
        ),
        (
            Method::GET,
            "/weather/v1.0/alerts/active/",
            200,
            Some("/api/v2/alerts/active/"),
        ),
        (
            Method::POST,
            "/weather/v1.0/alerts/active",
            200,
            Some("/api/v2/alerts/active"),
        ),
        // Method must match.
        (Method::DELETE, "/weather/v1.0/alerts/active", 404, None),
        (Method::PUT, "/weather/v1.0/us/seattle", 404, None),
        // Lower-case methods in a definition are normalised.
        (
            Method::GET,
            "/weather/v1.0/lower",
            200,
            Some("/api/v2/lower"),
        ),
        // /* matches the prefix itself and anything below, not a sibling.
        (
            Method::GET,
            "/weather/v1.0/forecast",
            200,
            Some("/api/v2/forecast"),
        ),
        (
            Method::GET,
            "/weather/v1.0/forecast/today",
            200,
            Some("/api/v2/forecast/today"),
        ),
        (
            Method::GET,
            "/weather/v1.0/forecast/a/b/c",
            200,
            Some("/api/v2/forecast/a/b/c"),
        ),
        (Method::GET, "/weather/v1.0/forecastx", 404, None),
        // Operation "/" serves the context with and without a trailing slash.
        (Method::GET, "/weather/v1.0", 200, Some("/api/v2")),
        (Method::GET, "/weather/v1.0/", 200, Some("/api/v2/")),
        // Query strings pass through.
        (
            Method::GET,
            "/weather/v1.0/us/seattle?units=metric&x=1",
            200,
            Some("/api/v2/us/seattle?units=metric&x=1"),
        ),
        // Unknown paths and a sibling context.
        (Method::GET, "/weather/v2.0/us/seattle", 404, None),
        (Method::GET, "/weatherx/v1.0/us/seattle", 404, None),
        (Method::GET, "/nothing/here", 404, None),
        (Method::GET, "/", 404, None),
        // Path normalisation: dot segments and double slashes are resolved.
        (
            Method::GET,
            "/weather/v1.0/other/../alerts/active",
            200,
            Some("/api/v2/alerts/active"),
        ),
        (
            Method::GET,
            "/weather/v1.0//alerts//active",
            200,
            Some("/api/v2/alerts/active"),
        ),
        // An encoded slash stays inside one segment.
        (
            Method::GET,
            "/weather/v1.0/us/new%2Fyork",
            200,
            Some("/api/v2/us/new%2Fyork"),
        ),
    ];
    for (method, path, status, expected) in cases {
        let (got_status, got_path) = upstream_path(&gw, method.clone(), path).await?;
        assert_eq!(got_status, *status, "{method} {path}");
        if let Some(p) = expected {
            assert_eq!(got_path.as_deref(), Some(*p), "{method} {path}");
        }
    }
    let r = gw
        .client()
        .get(gw.router_url("/nothing/here"))
        .send()
        .await?;
    assert_eq!(
        r.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    assert_eq!(r.text().await?, r#"{"error":"Not Found"}"#);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precedence_nested_contexts_and_root_upstreams() -> anyhow::Result<()> {
    let up = EchoUpstream::start().await?;
    let gw = Gateway::start("routing-precedence").await?;
    // Literal before {param} before /*, whatever the declared order.
    let api = rest_api(
        "shop",
        "/shop",
        &up.url("/a"),
        &[
            ("GET", "/*"),
            ("GET", "/items/{id}"),
            ("GET", "/items/special"),
        ],
    );
    assert_eq!(gw.create_api(&api).await?.0, 201);
    // A nested context owns its own routes; its parent's wildcard still serves the rest.
    let nested = rest_api(
        "shop-admin",
        "/shop/admin",
        &up.url("/b"),
        &[("GET", "/users")],
    );
    assert_eq!(gw.create_api(&nested).await?.0, 201);
    // Upstream without a base path.
    let bare = rest_api(
        "bare",
        "/bare",
        &up.url(""),
        &[("GET", "/x"), ("GET", "/all/*"), ("GET", "/")],
    );
    assert_eq!(gw.create_api(&bare).await?.0, 201);
    gw.wait_route_status("/bare/x", 200).await?;
    gw.wait_route_status("/shop/admin/users", 200).await?;

    let cases: &[(&str, u16, &str)] = &[
        ("/shop/items/special", 200, "/a/items/special"),
        ("/shop/items/42", 200, "/a/items/42"),
        ("/shop/anything/else", 200, "/a/anything/else"),
        ("/shop", 200, "/a"),
        ("/shop/admin/users", 200, "/b/users"),
        ("/shop/admin/other", 200, "/a/admin/other"),
        ("/bare/x", 200, "/x"),
        ("/bare", 200, "/"),
        ("/bare/", 200, "/"),
        ("/bare/all", 200, "/all"),
        ("/bare/all/deep/er", 200, "/all/deep/er"),
    ];
    for (path, status, expected) in cases {
        let (s, p) = upstream_path(&gw, Method::GET, path).await?;
        assert_eq!((s, p.as_deref()), (*status, Some(*expected)), "GET {path}");
    }
    assert_eq!(upstream_path(&gw, Method::GET, "/bare/y").await?.0, 404);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_context_and_https_upstream_translation() -> anyhow::Result<()> {
    let up = EchoUpstream::start().await?;
    let gw = Gateway::start("routing-root").await?;
    let root = rest_api(
        "root",
        "/",
        &up.url("/base"),
        &[("GET", "/hello"), ("GET", "/")],
    );
    assert_eq!(gw.create_api(&root).await?.0, 201);
    let other = rest_api("other", "/other", &up.url(""), &[("GET", "/x")]);
    assert_eq!(gw.create_api(&other).await?.0, 201);
    gw.wait_route_status("/hello", 200).await?;
    gw.wait_route_status("/other/x", 200).await?;
    assert_eq!(
        upstream_path(&gw, Method::GET, "/hello").await?,
        (200, Some("/base/hello".into()))
    );
    assert_eq!(
        upstream_path(&gw, Method::GET, "/").await?,
        (200, Some("/base/".into()))
    );
    assert_eq!(
        upstream_path(&gw, Method::GET, "/other/x").await?,
        (200, Some("/x".into()))
    );
    assert_eq!(upstream_path(&gw, Method::GET, "/other/y").await?.0, 404);
    // An https upstream is accepted by Envoy (a NACK would leave the route unserved): the
    // request reaches the cluster and fails TLS against a plain-HTTP server.
    let tls = rest_api(
        "tls",
        "/tls",
        &format!("https://localhost:{}/", up.addr.port()),
        &[("GET", "/x")],
    );
    assert_eq!(gw.create_api(&tls).await?.0, 201);
    gw.wait_route_status("/tls/x", 503).await?;
    let metrics = gw.metrics_text().await?;
    assert!(metrics.contains("gateway_xds_nacks_total 0"), "{metrics}");
    Ok(())
}
