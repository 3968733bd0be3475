//! Nothing acknowledged is lost: restarts, `kill -9` in the middle of a stream of creates, and
//! live changes that never fail requests to other APIs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use gateway_tests::{EchoUpstream, Gateway, GatewayConfig, rest_api};
use reqwest::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_restores_every_api_and_state() -> anyhow::Result<()> {
    let up = EchoUpstream::start().await?;
    let mut gw = Gateway::start("restart").await?;
    for i in 0..5 {
        let api = rest_api(
            &format!("api{i}"),
            &format!("/api{i}"),
            &up.url("/base"),
            &[("GET", "/x/{id}")],
        );
        assert_eq!(gw.create_api(&api).await?.0, 201);
    }
    let mut undeployed = rest_api("api2", "/api2", &up.url("/base"), &[("GET", "/x/{id}")]);
    undeployed["spec"]["desiredState"] = json!("undeployed");
    assert_eq!(
        gw.send_json(Method::PUT, "/rest-apis/api2", &undeployed)
            .await?
            .0,
        200
    );
    let (_, before) = gw.get_json("/rest-apis/api1").await?;

    gw.stop_controller().await?;
    gw.start_controller().await?;

    let (_, list) = gw.get_json("/rest-apis").await?;
    assert_eq!(list["count"], 5);
    let (_, after) = gw.get_json("/rest-apis/api1").await?;
    assert_eq!(after, before, "the resource is unchanged across a restart");
    for i in [0, 1, 3, 4] {
        gw.wait_route_status(&format!("/api{i}/x/1"), 200).await?;
    }
    assert_eq!(
        gw.route(Method::GET, "/api2/x/1").await?.0,
        404,
        "undeployed stays undeployed"
    );
    assert_eq!(
        gw.get_json("/rest-apis/api2").await?.1["desiredState"],
        "undeployed"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_creates_loses_nothing_acknowledged() -> anyhow::Result<()> {
    let up = EchoUpstream::start().await?;
    let mut gw = Gateway::start("kill9").await?;
    let upstream = up.url("");
    let acked = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let next = Arc::new(AtomicU64::new(0));
    let client = gw.client().clone();
    let url = gw.mgmt_url("/rest-apis");
    let mut writers = Vec::new();
    for _ in 0..4 {
        let (acked, next, client, url, upstream) = (
            acked.clone(),
            next.clone(),
            client.clone(),
            url.clone(),
            upstream.clone(),
        );
        writers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let name = format!("k{i}");
                let api = rest_api(&name, &format!("/k{i}"), &upstream, &[("GET", "/x")]);
                let r = client
                    .post(&url)
                    .header("Authorization", gateway_tests::ADMIN_AUTH)
                    .header("Content-Type", "application/json")
                    .body(api.to_string())
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 201 => {
                        acked.lock().map(|mut a| a.push(name)).unwrap_or(())
                    }
                    Ok(r) => panic!("unexpected status {}", r.status()),
                    Err(_) => return,
                }
            }
        }));
    }
    gateway_tests::eventually(gateway_tests::PATIENCE, "some creates acknowledged", || {
        let n = acked.lock().map(|a| a.len()).unwrap_or(0);
        async move { (n >= 50).then_some(()) }
    })
    .await?;
    gw.kill_controller().await?;
    for w in writers {
        w.await?;
    }
    let acked: Vec<String> = acked.lock().map(|a| a.clone()).unwrap_or_default();
    gw.start_controller().await?;
    let (_, list) = gw.get_json("/rest-apis").await?;
    let stored: std::collections::HashSet<String> = list["apis"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v["metadata"]["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    for name in &acked {
        assert!(
            stored.contains(name),
            "{name} was acknowledged with 201 but lost"
        );
    }
    // Every stored API (acknowledged or not) is whole and routable.
    for name in stored.iter().take(20) {
        gw.wait_route_status(&format!("/{name}/x"), 200).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_to_other_apis_never_fail_live_traffic() -> anyhow::Result<()> {
    let up = EchoUpstream::start().await?;
    let gw = Gateway::start("live").await?;
    assert_eq!(
        gw.create_api(&rest_api(
            "steady",
            "/steady",
            &up.url(""),
            &[("GET", "/ping")]
        ))
        .await?
        .0,
        201
    );
    gw.wait_route_status("/steady/ping", 200).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut loaders = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed, client, url) = (
            stop.clone(),
            ok.clone(),
            failed.clone(),
            gw.client().clone(),
            gw.router_url("/steady/ping"),
        );
        loaders.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match client.get(&url).send().await {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    // Churn: create, update (new upstream port => new cluster), undeploy, delete other APIs.
    let other = EchoUpstream::start().await?;
    for i in 0..30 {
        let name = format!("churn{i}");
        let api = rest_api(
            &name,
            &format!("/churn{i}"),
            &up.url(""),
            &[("GET", "/a"), ("POST", "/b/{x}")],
        );
        assert_eq!(gw.create_api(&api).await?.0, 201);
        let moved = rest_api(
            &name,
            &format!("/churn{i}"),
            &other.url("/v2"),
            &[("GET", "/a")],
        );
        assert_eq!(
            gw.send_json(Method::PUT, &format!("/rest-apis/{name}"), &moved)
                .await?
                .0,
            200
        );
        if i % 3 == 0 {
            assert_eq!(
                gw.mgmt(Method::DELETE, &format!("/rest-apis/{name}"))
                    .send()
                    .await?
                    .status(),
                200
            );
        }
    }
    gw.wait_route_status("/churn29/a", 200).await?;
    stop.store(true, Ordering::Relaxed);
    for l in loaders {
        l.await?;
    }
    assert!(ok.load(Ordering::Relaxed) > 0);
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests to an untouched API failed during changes"
    );
    let metrics = gw.metrics_text().await?;
    assert!(metrics.contains("gateway_xds_nacks_total 0"), "{metrics}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_keeps_serving_while_the_controller_restarts() -> anyhow::Result<()> {
    let up = EchoUpstream::start().await?;
    let mut cfg = GatewayConfig::new("external-envoy");
    cfg.managed_data_plane = false;
    let mut gw = Gateway::start_with(cfg).await?;
    assert_eq!(
        gw.create_api(&rest_api("kept", "/kept", &up.url(""), &[("GET", "/x")]))
            .await?
            .0,
        201
    );
    gw.wait_route_status("/kept/x", 200).await?;
    // A clean stop does not wait forever on the external Envoy's open ADS stream.
    gw.stop_controller().await?;
    assert_eq!(
        gw.route(Method::GET, "/kept/x").await?.0,
        200,
        "the data plane outlives the controller"
    );
    gw.start_controller().await?;
    assert_eq!(
        gw.create_api(&rest_api("added", "/added", &up.url(""), &[("GET", "/y")]))
            .await?
            .0,
        201
    );
    gw.wait_route_status("/added/y", 200).await?;
    assert_eq!(
        gw.route(Method::GET, "/kept/x").await?.0,
        200,
        "restored config still served"
    );
    Ok(())
}
