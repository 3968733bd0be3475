//! Bottom-up sync end to end: the real controller (and Envoy, where traffic is checked) against
//! a fake on-prem API Manager that speaks its protocol over HTTPS and checks what it receives.

use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use futures_util::future::join_all;
use gateway_tests::fake_apim::{FakeApim, FakeApimConfig, Mode};
use gateway_tests::{EchoUpstream, Gateway, GatewayConfig, eventually, free_port, rest_api};
use reqwest::Method;
use serde_json::{Value, json};

/// Longer patience for syncs that include retries with backoff and reconnections.
const SYNC_PATIENCE: Duration = Duration::from_secs(60);

/// `[controller.controlplane]` pointing at `host`, trusting `ca_file` (or trusting anything).
fn controlplane(host: &str, ca_file: Option<&std::path::Path>, credentials: &str) -> String {
    let tls = match ca_file {
        Some(p) => format!("ca_file = \"{}\"", p.display()),
        None => "insecure_skip_verify = true".into(),
    };
    format!(
        r#"
[controller.controlplane]
host = "{host}"
{tls}
{credentials}
gateway_name = "onprem-gw"
reconnect_initial = "100ms"
reconnect_max = "500ms"
"#
    )
}

const CLIENT_CREDENTIALS: &str =
    "apim_oauth2_client_id = \"test-client\"\napim_oauth2_client_secret = \"test-secret\"";

async fn gateway(name: &str, extra_toml: String) -> anyhow::Result<Gateway> {
    let mut cfg = GatewayConfig::new(name);
    cfg.extra_toml = extra_toml;
    Gateway::start_with(cfg).await
}

fn api(name: &str, upstream: &str, ops: &[(&str, &str)]) -> Value {
    let mut a = rest_api(name, &format!("/{name}"), upstream, ops);
    a["spec"]["displayName"] = json!(format!("{name} API"));
    a["spec"]["version"] = json!("v1.0");
    a
}

/// Waits until API `name` shows `cpSyncStatus == status`; returns the resource.
async fn wait_sync(gw: &Gateway, name: &str, status: &str) -> anyhow::Result<Value> {
    let path = format!("/rest-apis/{name}");
    let last = Mutex::new(Value::Null);
    let found = eventually(
        SYNC_PATIENCE,
        &format!("{name} cpSyncStatus {status}"),
        || {
            let (last, path) = (&last, &path);
            async move {
                let (_, v) = gw.get_json(path).await.ok()?;
                *last.lock().unwrap_or_else(|p| p.into_inner()) = v.clone();
                (v["cpSyncStatus"] == status).then_some(v)
            }
        },
    )
    .await;
    found.with_context(|| {
        let last = last.lock().unwrap_or_else(|p| p.into_inner());
        format!("last seen: {last}\ncontroller log:\n{}", gw.log_tail())
    })
}

/// Waits until the controller has logged its `n`-th connection to the control plane.
async fn wait_connected(gw: &Gateway, n: usize) -> anyhow::Result<()> {
    eventually(SYNC_PATIENCE, "connected to the control plane", || async {
        (gw.log_text().matches("Connected to control plane").count() >= n).then_some(())
    })
    .await
}

fn count_calls(apim: &FakeApim, method: &str, path_prefix: &str) -> usize {
    apim.calls()
        .iter()
        .filter(|c| c.method == method && c.path.starts_with(path_prefix))
        .count()
}

const IMPORT: &str = "/api/am/publisher/v4/apis/import";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_update_undeploy_redeploy_delete_are_mirrored() -> anyhow::Result<()> {
    let up = EchoUpstream::start().await?;
    let apim = FakeApim::start(FakeApimConfig::default()).await?;
    let gw = gateway(
        "apim-lifecycle",
        controlplane(&apim.host(), Some(apim.ca_file()), CLIENT_CREDENTIALS),
    )
    .await?;

    // Create: answered pending at once, served at once, then success with the APIM id.
    let petstore = api("petstore", &up.url("/v2"), &[("GET", "/pet/{petId}")]);
    let (status, created) = gw.create_api(&petstore).await?;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["origin"], "gateway_api");
    assert_eq!(created["cpSyncStatus"], "pending");
    gw.wait_route_status("/petstore/pet/1", 200).await?;
    let synced = wait_sync(&gw, "petstore", "success").await?;
    let imported = apim
        .api("petstore API", "v1.0")
        .context("APIM has the API")?;
    assert_eq!(synced["cpArtifactId"], json!(imported.id));
    assert_eq!(synced["cpRevisionId"], json!(imported.revisions[0]));
    assert!(synced.get("cpSyncError").is_none(), "{synced}");
    assert_eq!(imported.context, "/petstore");
    assert_eq!(imported.endpoint_url, up.url("/v2"));
    assert_eq!(imported.gateway_environment, "onprem-gw");
    assert_eq!(
        imported.operations,
        vec![("GET".to_string(), "/pet/{petId}".to_string())]
    );
    assert_eq!(
        imported.deployed_revision.as_deref(),
        Some(imported.revisions[0].as_str())
    );
    // The handshake came first: on-prem detection, the control channel, then a token.
    let calls: Vec<String> = apim.calls().iter().map(|c| c.path.clone()).collect();
    let pos = |p: &str| calls.iter().position(|c| c.starts_with(p));
    let well_known = pos("/internal/gateway/.well-known").context("no .well-known call")?;
    let ws = pos("/internal/data/v1/ws/gateways/connect").context("no WebSocket")?;
    let import = pos(IMPORT).context("no import")?;
    assert!(well_known < ws && ws < import, "{calls:?}");

    // Update: pending again, re-imported under the same id as a new revision.
    let updated = api(
        "petstore",
        &up.url("/v2"),
        &[("GET", "/pet/{petId}"), ("POST", "/pet")],
    );
    let (status, body) = gw
        .send_json(Method::PUT, "/rest-apis/petstore", &updated)
        .await?;
    assert_eq!(
        (status.as_u16(), &body["cpSyncStatus"]),
        (200, &json!("pending"))
    );
    let synced = wait_sync(&gw, "petstore", "success").await?;
    let imported = apim.api("petstore API", "v1.0").context("still there")?;
    assert_eq!(imported.imports, 2);
    assert_eq!(synced["cpArtifactId"], json!(imported.id));
    assert_eq!(imported.operations.len(), 2);
    let deployed = imported.deployed_revision.clone().context("deployed")?;
    assert_eq!(synced["cpRevisionId"], json!(deployed));

    // Undeploy: the gateway stops routing and APIM undeploys that revision.
    let mut undeploy = updated.clone();
    undeploy["spec"]["desiredState"] = json!("undeployed");
    let (status, _) = gw
        .send_json(Method::PUT, "/rest-apis/petstore", &undeploy)
        .await?;
    assert_eq!(status, 200);
    gw.wait_route_status("/petstore/pet/1", 404).await?;
    let synced = wait_sync(&gw, "petstore", "success").await?;
    assert_eq!(synced["desiredState"], "undeployed");
    assert!(synced.get("cpRevisionId").is_none(), "{synced}");
    let undeploy_call = format!(
        "/api/am/publisher/v4/apis/{}/undeploy-revision?revisionId={deployed}",
        imported.id
    );
    assert!(
        apim.calls()
            .iter()
            .any(|c| c.path == undeploy_call && c.status < 300),
        "{:?}",
        apim.calls()
    );
    assert_eq!(
        apim.api("petstore API", "v1.0")
            .context("kept")?
            .deployed_revision,
        None
    );

    // Redeploy: imported again and served again.
    gw.send_json(Method::PUT, "/rest-apis/petstore", &updated)
        .await?;
    gw.wait_route_status("/petstore/pet/1", 200).await?;
    let synced = wait_sync(&gw, "petstore", "success").await?;
    let imported = apim.api("petstore API", "v1.0").context("kept")?;
    assert_eq!(imported.imports, 3);
    assert_eq!(synced["cpRevisionId"], json!(imported.deployed_revision));

    // Delete: gone here at once; the APIM revision is undeployed, and APIM is never asked to
    // delete the API.
    let r = gw
        .mgmt(Method::DELETE, "/rest-apis/petstore")
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    assert_eq!(gw.get_json("/rest-apis/petstore").await?.0, 404);
    eventually(
        SYNC_PATIENCE,
        "APIM revision undeployed after delete",
        || async {
            apim.api("petstore API", "v1.0")
                .filter(|a| a.deployed_revision.is_none())
        },
    )
    .await?;
    assert!(apim.calls().iter().all(|c| c.method != "DELETE"));
    assert_eq!(apim.tokens_issued(), 1, "the token is cached");
    let metrics = gw.metrics_text().await?;
    for line in [
        "gateway_apim_connected 1\n",
        "gateway_apim_syncs_failed_total 0\n",
        "gateway_apim_apis_pending 0\n",
    ] {
        assert!(metrics.contains(line), "{line:?} not in {metrics}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apim_down_at_start_keeps_apis_pending_across_a_crash_then_syncs_them() -> anyhow::Result<()>
{
    let up = EchoUpstream::start().await?;
    let port = free_port();
    let password = "apim_oauth2_username = \"admin\"\napim_oauth2_password = \"admin-password\"";
    let mut gw = gateway(
        "apim-down",
        controlplane(&format!("127.0.0.1:{port}"), None, password),
    )
    .await?;
    for i in 0..3 {
        let a = api(&format!("down{i}"), &up.url(""), &[("GET", "/x")]);
        assert_eq!(gw.create_api(&a).await?.0, 201);
    }
    // Serving without APIM, and still pending after the gateway has failed to reach it.
    gw.wait_route_status("/down2/x", 200).await?;
    eventually(SYNC_PATIENCE, "a failed detection in the log", || async {
        gw.log_text()
            .contains("Failed to resolve gateway path")
            .then_some(())
    })
    .await?;
    for i in 0..3 {
        let (_, v) = gw.get_json(&format!("/rest-apis/down{i}")).await?;
        assert_eq!(v["cpSyncStatus"], "pending", "{v}");
    }
    // A crash loses nothing: the APIs are still pending after a restart, and APIM coming up
    // (password grant this time) syncs them all.
    gw.kill_controller().await?;
    gw.start_controller().await?;
    let apim = FakeApim::start_on(port, FakeApimConfig::default()).await?;
    for i in 0..3 {
        wait_sync(&gw, &format!("down{i}"), "success").await?;
    }
    assert_eq!(apim.apis().len(), 3);
    let log = gw.log_text();
    assert!(log.contains("Connected to control plane"), "{log}");
    assert!(log.contains("Bottom-up sync: starting"), "{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apim_failures_mark_failed_with_the_error_and_a_put_retries() -> anyhow::Result<()> {
    let up = EchoUpstream::start().await?;
    let apim = FakeApim::start(FakeApimConfig::default()).await?;
    let gw = gateway(
        "apim-failures",
        controlplane(&apim.host(), Some(apim.ca_file()), CLIENT_CREDENTIALS),
    )
    .await?;
    wait_connected(&gw, 1).await?;

    // 503 on every attempt: failed after exactly three, with APIM's answer as the error; the
    // API serves traffic throughout.
    apim.set_mode(Mode::Unavailable);
    let a = api("flaky", &up.url(""), &[("GET", "/x")]);
    assert_eq!(gw.create_api(&a).await?.0, 201);
    gw.wait_route_status("/flaky/x", 200).await?;
    let failed = wait_sync(&gw, "flaky", "failed").await?;
    let error = failed["cpSyncError"].as_str().unwrap_or_default();
    assert!(error.contains("503"), "{failed}");
    assert_eq!(count_calls(&apim, "POST", IMPORT), 3, "three attempts");
    assert_eq!(gw.route(Method::GET, "/flaky/x").await?.0, 200);

    // APIM back: a PUT of the same definition retries and succeeds.
    apim.set_mode(Mode::Normal);
    assert_eq!(
        gw.send_json(Method::PUT, "/rest-apis/flaky", &a).await?.0,
        200
    );
    let ok = wait_sync(&gw, "flaky", "success").await?;
    assert!(ok.get("cpSyncError").is_none(), "{ok}");

    // Two 503s then success: within the three attempts.
    apim.fail_next_publisher_calls(2);
    let b = api("bumpy", &up.url(""), &[("GET", "/x")]);
    assert_eq!(gw.create_api(&b).await?.0, 201);
    wait_sync(&gw, "bumpy", "success").await?;

    // A failure after a success keeps the APIM id, so a later undeploy still reaches APIM.
    let id = ok["cpArtifactId"].clone();
    apim.set_mode(Mode::Unavailable);
    let mut changed = a.clone();
    changed["spec"]["operations"] = json!([{"method": "GET", "path": "/y"}]);
    gw.send_json(Method::PUT, "/rest-apis/flaky", &changed)
        .await?;
    let failed = wait_sync(&gw, "flaky", "failed").await?;
    assert_eq!(failed["cpArtifactId"], id, "{failed}");

    // Failed APIs are retried on reconnection, without any PUT.
    apim.set_mode(Mode::Normal);
    let connects = apim.ws_connects();
    apim.drop_websockets();
    eventually(SYNC_PATIENCE, "control channel reconnected", || async {
        (apim.ws_connects() > connects).then_some(())
    })
    .await?;
    wait_sync(&gw, "flaky", "success").await?;
    assert_eq!(gw.route(Method::GET, "/flaky/y").await?.0, 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_and_untrusted_certificates_fail_clearly() -> anyhow::Result<()> {
    let up = EchoUpstream::start().await?;
    let apim = FakeApim::start(FakeApimConfig::default()).await?;
    let wrong = "apim_oauth2_client_id = \"test-client\"\napim_oauth2_client_secret = \"wrong\"";
    let gw = gateway(
        "apim-badcreds",
        controlplane(&apim.host(), Some(apim.ca_file()), wrong),
    )
    .await?;
    assert_eq!(
        gw.create_api(&api("creds", &up.url(""), &[("GET", "/x")]))
            .await?
            .0,
        201
    );
    let failed = wait_sync(&gw, "creds", "failed").await?;
    let error = failed["cpSyncError"].as_str().unwrap_or_default();
    assert!(
        error.contains("token endpoint returned unexpected status 401")
            && error.contains("apim_oauth2"),
        "{failed}"
    );
    assert_eq!(count_calls(&apim, "POST", IMPORT), 0);
    gw.wait_route_status("/creds/x", 200).await?;
    drop(gw);

    // Without the CA (and without insecure_skip_verify) the self-signed APIM is not trusted:
    // nothing is sent to it beyond the TLS handshake, and APIs stay pending.
    let gw = gateway(
        "apim-untrusted",
        format!(
            "[controller.controlplane]\nhost = \"{}\"\n{CLIENT_CREDENTIALS}\nreconnect_initial = \"100ms\"\nreconnect_max = \"500ms\"\n",
            apim.host()
        ),
    )
    .await?;
    let calls_before = apim.calls().len();
    assert_eq!(
        gw.create_api(&api("untrusted", &up.url(""), &[("GET", "/x")]))
            .await?
            .0,
        201
    );
    eventually(SYNC_PATIENCE, "a TLS failure in the log", || async {
        gw.log_text()
            .contains("Failed to resolve gateway path")
            .then_some(())
    })
    .await?;
    assert_eq!(
        gw.get_json("/rest-apis/untrusted").await?.1["cpSyncStatus"],
        "pending"
    );
    assert_eq!(apim.calls().len(), calls_before, "no request got through");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_apis_all_sync_and_a_stalled_apim_blocks_nothing() -> anyhow::Result<()> {
    let up = EchoUpstream::start().await?;
    let apim = FakeApim::start(FakeApimConfig::default()).await?;
    let gw = gateway(
        "apim-burst",
        controlplane(&apim.host(), Some(apim.ca_file()), CLIENT_CREDENTIALS),
    )
    .await?;
    const N: usize = 200;
    let upstream = up.url("");
    let mut created = 0;
    for chunk in (0..N).collect::<Vec<_>>().chunks(20) {
        let posts = chunk.iter().map(|i| {
            let a = api(&format!("burst{i}"), &upstream, &[("GET", "/x")]);
            let gw = &gw;
            async move { gw.create_api(&a).await }
        });
        for r in join_all(posts).await {
            assert_eq!(r?.0, 201);
            created += 1;
        }
    }
    assert_eq!(created, N);
    eventually(SYNC_PATIENCE, "all APIs synced", || async {
        let (_, list) = gw.get_json("/rest-apis").await.ok()?;
        let apis = list["apis"].as_array()?;
        (apis.len() == N && apis.iter().all(|a| a["cpSyncStatus"] == "success")).then_some(())
    })
    .await?;
    assert_eq!(apim.apis().len(), N);

    // APIM stalls: every management call still completes, and the data path serves.
    apim.set_mode(Mode::Slow(Duration::from_secs(5)));
    for i in 0..10 {
        let a = api(&format!("stall{i}"), &upstream, &[("GET", "/x")]);
        assert_eq!(gw.create_api(&a).await?.0, 201);
        let (s, v) = gw.get_json(&format!("/rest-apis/stall{i}")).await?;
        assert_eq!((s.as_u16(), &v["cpSyncStatus"]), (200, &json!("pending")));
        let mut u = a.clone();
        u["spec"]["operations"] = json!([{"method": "GET", "path": "/y"}]);
        assert_eq!(
            gw.send_json(Method::PUT, &format!("/rest-apis/stall{i}"), &u)
                .await?
                .0,
            200
        );
    }
    let (s, _) = gw.get_json("/rest-apis").await?;
    assert_eq!(s, 200);
    gw.wait_route_status("/stall9/y", 200).await?;
    assert_eq!(gw.route(Method::GET, "/burst0/x").await?.0, 200);
    apim.set_mode(Mode::Normal);
    for i in 0..10 {
        wait_sync(&gw, &format!("stall{i}"), "success").await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnection_while_every_worker_is_busy_still_retries_failed_apis() -> anyhow::Result<()>
{
    let up = EchoUpstream::start().await?;
    let apim = FakeApim::start(FakeApimConfig::default()).await?;
    let mut toml = controlplane(&apim.host(), Some(apim.ca_file()), CLIENT_CREDENTIALS);
    toml.push_str("apim_sync_pool_size = 1\n");
    let gw = gateway("apim-busy", toml).await?;
    wait_connected(&gw, 1).await?;
    apim.set_mode(Mode::Unavailable);
    let failing = api("failing", &up.url(""), &[("GET", "/x")]);
    assert_eq!(gw.create_api(&failing).await?.0, 201);
    wait_sync(&gw, "failing", "failed").await?;

    // The only worker is stuck on a slow import and another API waits for it when the control
    // channel drops and comes back.
    apim.set_mode(Mode::Slow(Duration::from_secs(3)));
    let imports = count_calls(&apim, "POST", IMPORT);
    for name in ["slow1", "slow2"] {
        assert_eq!(
            gw.create_api(&api(name, &up.url(""), &[("GET", "/x")]))
                .await?
                .0,
            201
        );
    }
    eventually(SYNC_PATIENCE, "the slow import in flight", || async {
        (count_calls(&apim, "POST", IMPORT) > imports).then_some(())
    })
    .await?;
    apim.drop_websockets();
    wait_connected(&gw, 2).await?;
    apim.set_mode(Mode::Normal);
    // The reconnection is noticed once a worker is free: the failed API is synced again.
    for name in ["slow1", "slow2", "failing"] {
        wait_sync(&gw, name, "success").await?;
    }
    Ok(())
}
