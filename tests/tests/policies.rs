//! Policies enforced at request time by the real policy engine through the real Envoy: API keys
//! (header, query, prefix, revoked, expired, regenerated, custom, another API's), rate limits at
//! both levels with their headers, and failure modes (engine down: fail closed; controller down:
//! the last configuration keeps being enforced).

use gateway_tests::{EchoUpstream, Gateway, GatewayConfig, PATIENCE, eventually, rest_api};
use reqwest::{Method, Response};
use serde_json::{Value, json};

fn with_policies(mut api: Value, api_level: Value, op_level: &[(usize, Value)]) -> Value {
    api["spec"]["policies"] = api_level;
    for (i, p) in op_level {
        api["spec"]["operations"][*i]["policies"] = p.clone();
    }
    api
}

fn key_auth(params: Value) -> Value {
    json!({"name": "api-key-auth", "version": "v1", "params": params})
}

async fn new_key(gw: &Gateway, api: &str, body: Value) -> anyhow::Result<String> {
    let (s, b) = gw
        .send_json(Method::POST, &format!("/rest-apis/{api}/api-keys"), &body)
        .await?;
    anyhow::ensure!(s == 201, "key creation answered {s}: {b}");
    Ok(b["key"].as_str().unwrap_or_default().to_string())
}

async fn get(gw: &Gateway, path: &str, header: Option<(&str, &str)>) -> anyhow::Result<Response> {
    let mut r = gw.client().get(gw.router_url(path));
    if let Some((k, v)) = header {
        r = r.header(k, v);
    }
    Ok(r.send().await?)
}

/// Waits until `GET path` with `header` answers `status`.
async fn wait_status(
    gw: &Gateway,
    path: &str,
    header: Option<(&str, &str)>,
    status: u16,
) -> anyhow::Result<()> {
    eventually(
        PATIENCE,
        &format!("GET {path} -> {status}"),
        || async move {
            get(gw, path, header)
                .await
                .ok()
                .filter(|r| r.status().as_u16() == status)
                .map(|_| ())
        },
    )
    .await
}

fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_at_request_time() -> anyhow::Result<()> {
    let up = EchoUpstream::start().await?;
    let gw = Gateway::start("policy-keys").await?;
    let a = with_policies(
        rest_api("a", "/a", &up.url(""), &[("GET", "/x")]),
        json!([key_auth(json!({"key": "X-API-Key"}))]),
        &[],
    );
    let b = with_policies(
        rest_api("b", "/b", &up.url(""), &[("GET", "/x")]),
        json!([key_auth(json!({}))]),
        &[],
    );
    let q = with_policies(
        rest_api("q", "/q", &up.url(""), &[("GET", "/x")]),
        json!([key_auth(json!({"key": "apikey", "in": "query"}))]),
        &[],
    );
    let bearer = with_policies(
        rest_api("bearer", "/bearer", &up.url(""), &[("GET", "/x")]),
        json!([key_auth(
            json!({"key": "Authorization", "valuePrefix": "Bearer "})
        )]),
        &[],
    );
    for api in [&a, &b, &q, &bearer] {
        assert_eq!(gw.create_api(api).await?.0, 201);
    }
    let ka = new_key(&gw, "a", json!({"name": "k"})).await?;
    let kb = new_key(&gw, "b", json!({})).await?;
    wait_status(&gw, "/a/x", Some(("X-API-Key", &ka)), 200).await?;
    // Snapshots apply in order: the last API created routable means all are.
    wait_status(&gw, "/bearer/x", None, 401).await?;

    // Header names match case-insensitively; the key does not reach the upstream.
    let r = get(&gw, "/a/x", Some(("x-api-key", &ka))).await?;
    assert_eq!(r.status(), 200);
    let echoed: Value = r.json().await?;
    assert!(echoed["headers"].get("x-api-key").is_none(), "{echoed}");
    // Missing, wrong, and another API's key.
    assert_eq!(get(&gw, "/a/x", None).await?.status(), 401);
    assert_eq!(
        get(&gw, "/a/x", Some(("X-API-Key", "apip_not_a_key")))
            .await?
            .status(),
        401
    );
    assert_eq!(
        get(&gw, "/a/x", Some(("X-API-Key", &kb))).await?.status(),
        401,
        "b's key does not open a"
    );
    wait_status(&gw, "/b/x", Some(("API-Key", &kb)), 200).await?;

    // Query keys are removed from the query string; other parameters pass.
    let kq = new_key(&gw, "q", json!({})).await?;
    wait_status(&gw, &format!("/q/x?apikey={kq}&keep=1"), None, 200).await?;
    let echoed: Value = get(&gw, &format!("/q/x?apikey={kq}&keep=1"), None)
        .await?
        .json()
        .await?;
    assert_eq!(echoed["path"], "/x?keep=1");
    assert_eq!(get(&gw, "/q/x?keep=1", None).await?.status(), 401);

    // valuePrefix.
    let kbear = new_key(&gw, "bearer", json!({})).await?;
    let with_prefix = format!("Bearer {kbear}");
    wait_status(&gw, "/bearer/x", Some(("Authorization", &with_prefix)), 200).await?;
    assert_eq!(
        get(&gw, "/bearer/x", Some(("Authorization", &kbear)))
            .await?
            .status(),
        401
    );

    // Regenerate: the old value dies, the new one works. Custom values work too.
    let (s, body) = gw
        .send_json(
            Method::POST,
            "/rest-apis/a/api-keys/k/regenerate",
            &json!({}),
        )
        .await?;
    assert_eq!(s, 200);
    let ka2 = body["key"].as_str().unwrap_or_default().to_string();
    wait_status(&gw, "/a/x", Some(("X-API-Key", &ka)), 401).await?;
    wait_status(&gw, "/a/x", Some(("X-API-Key", &ka2)), 200).await?;
    let custom = "a-custom-key-value-for-a";
    assert_eq!(
        gw.send_json(
            Method::PUT,
            "/rest-apis/a/api-keys/k",
            &json!({"apiKey": custom})
        )
        .await?
        .0,
        200
    );
    wait_status(&gw, "/a/x", Some(("X-API-Key", custom)), 200).await?;
    wait_status(&gw, "/a/x", Some(("X-API-Key", &ka2)), 401).await?;

    // Expiry: a key valid for five seconds stops working by itself.
    let short = new_key(
        &gw,
        "a",
        json!({"name": "short", "expiresIn": {"duration": 5, "unit": "seconds"}}),
    )
    .await?;
    wait_status(&gw, "/a/x", Some(("X-API-Key", &short)), 200).await?;
    wait_status(&gw, "/a/x", Some(("X-API-Key", &short)), 401).await?;

    // Revoke by name.
    assert_eq!(
        gw.mgmt(Method::DELETE, "/rest-apis/a/api-keys/k")
            .send()
            .await?
            .status(),
        200
    );
    wait_status(&gw, "/a/x", Some(("X-API-Key", custom)), 401).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_at_both_levels() -> anyhow::Result<()> {
    let up = EchoUpstream::start().await?;
    let gw = Gateway::start("policy-limits").await?;
    let api = with_policies(
        rest_api(
            "rl",
            "/rl",
            &up.url(""),
            &[
                ("GET", "/a"),
                ("GET", "/b"),
                ("GET", "/own"),
                ("GET", "/fast"),
            ],
        ),
        json!([
            {"name": "rate-limit", "version": "v1", "params": {"limit": 5, "window": 3600}},
            key_auth(json!({}))
        ]),
        &[
            (
                2,
                json!([{"name": "rate-limit", "version": "v1", "params": {"limit": 2, "window": 3600}}]),
            ),
            (
                3,
                json!([{"name": "rate-limit", "version": "v1", "params": {"limit": 1, "window": 1}}]),
            ),
            (
                1,
                json!([{"name": "basic-ratelimit", "version": "v1", "params": {"limits": [{"requests": 100, "duration": "1h"}, {"requests": 50, "duration": "1d"}]}}]),
            ),
        ],
    );
    assert_eq!(gw.create_api(&api).await?.0, 201);
    let key = new_key(&gw, "rl", json!({})).await?;
    let k = Some(("API-Key", key.as_str()));
    wait_status(&gw, "/rl/own", k, 200).await?;

    // Operation-level override: its own counter of 2 (the wait above used one).
    let r = get(&gw, "/rl/own", k).await?;
    assert_eq!(
        (r.status().as_u16(), header(&r, "x-ratelimit-limit")),
        (200, Some("2"))
    );
    assert_eq!(header(&r, "x-ratelimit-remaining"), Some("0"));
    let r = get(&gw, "/rl/own", k).await?;
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "x-ratelimit-limit"), Some("2"));
    assert_eq!(header(&r, "x-ratelimit-remaining"), Some("0"));
    assert!(
        header(&r, "retry-after")
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|s| s >= 1)
    );
    assert!(
        header(&r, "x-ratelimit-reset")
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|t| t > 1_700_000_000)
    );
    assert!(header(&r, "ratelimit-policy").is_some_and(|v| v.contains("q=2;w=3600")));
    assert!(header(&r, "ratelimit").is_some_and(|v| v.contains("r=0")));
    assert_eq!(
        r.json::<Value>().await?,
        json!({"error": "Too Many Requests", "message": "Rate limit exceeded. Please try again later."})
    );

    // Unauthenticated requests are refused before they count.
    for _ in 0..10 {
        assert_eq!(get(&gw, "/rl/a", None).await?.status(), 401);
    }
    // The API-level counter (5) is shared by /a and /b (whose basic-ratelimit, another name, adds
    // its own limits: the most restrictive is reported); /own and /fast override it.
    let mut remaining = Vec::new();
    for path in ["/rl/a", "/rl/b", "/rl/a", "/rl/b", "/rl/a"] {
        let r = get(&gw, path, k).await?;
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(header(&r, "x-ratelimit-limit"), Some("5"));
        remaining.push(
            header(&r, "x-ratelimit-remaining")
                .unwrap_or("")
                .to_string(),
        );
    }
    assert_eq!(remaining, vec!["4", "3", "2", "1", "0"]);
    assert_eq!(get(&gw, "/rl/b", k).await?.status(), 429);

    // A short window refills by itself.
    let r = get(&gw, "/rl/fast", k).await?;
    assert_eq!(r.status(), 200);
    assert_eq!(get(&gw, "/rl/fast", k).await?.status(), 429);
    wait_status(&gw, "/rl/fast", k, 200).await?;

    // Counters survive an update of the API.
    assert_eq!(
        gw.send_json(Method::PUT, "/rest-apis/rl", &api).await?.0,
        200
    );
    assert_eq!(
        get(&gw, "/rl/a", k).await?.status(),
        429,
        "the shared counter was not reset by the update"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_down_fails_closed_and_controller_down_keeps_enforcing() -> anyhow::Result<()> {
    let up = EchoUpstream::start().await?;
    let mut cfg = GatewayConfig::new("policy-failures");
    cfg.managed_data_plane = false;
    let mut gw = Gateway::start_with(cfg).await?;
    let api = with_policies(
        rest_api("f", "/f", &up.url(""), &[("GET", "/x")]),
        json!([key_auth(json!({}))]),
        &[],
    );
    assert_eq!(gw.create_api(&api).await?.0, 201);
    let open = rest_api("open", "/open", &up.url(""), &[("GET", "/x")]);
    assert_eq!(gw.create_api(&open).await?.0, 201);
    let key = new_key(&gw, "f", json!({})).await?;
    let k = Some(("API-Key", key.as_str()));
    wait_status(&gw, "/f/x", k, 200).await?;
    wait_status(&gw, "/open/x", None, 200).await?;

    // Policy engine killed: 5xx, never a 200 without a key; routes without policies still work.
    gw.kill_engine().await?;
    for _ in 0..20 {
        let s = get(&gw, "/f/x", None).await?.status();
        assert!(
            s.is_server_error(),
            "without an engine the policy route must fail closed, got {s}"
        );
        assert!(get(&gw, "/f/x", k).await?.status().is_server_error());
    }
    assert_eq!(get(&gw, "/open/x", None).await?.status(), 200);
    // Restarted: it follows the controller again and serves.
    gw.start_engine()?;
    wait_status(&gw, "/f/x", k, 200).await?;
    assert_eq!(get(&gw, "/f/x", None).await?.status(), 401);

    // Controller killed: Envoy and the engine keep enforcing the last configuration.
    gw.kill_controller().await?;
    for _ in 0..10 {
        assert_eq!(get(&gw, "/f/x", None).await?.status(), 401);
        assert_eq!(get(&gw, "/f/x", k).await?.status(), 200);
    }
    // Back: a key revoked while it runs is refused.
    gw.start_controller().await?;
    let (_, keys) = gw.get_json("/rest-apis/f/api-keys").await?;
    let name = keys["apiKeys"][0]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        gw.mgmt(Method::DELETE, &format!("/rest-apis/f/api-keys/{name}"))
            .send()
            .await?
            .status(),
        200
    );
    wait_status(&gw, "/f/x", k, 401).await?;
    Ok(())
}
