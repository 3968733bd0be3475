//! WebSub end to end: the management API for WebSubApi resources, and the hub served through the
//! real Envoy (subscribe with verification of intent, publish to the webhook receiver, signed
//! deliveries with retries and per-subscriber order, unsubscribe, lease expiry, durability across
//! a controller crash, api-key-auth, undeploy, bad requests, and fan-out to 100 subscribers),
//! against local subscriber servers.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::future::join_all;
use gateway_tests::subscriber::{Delivery, Subscriber, Verify};
use gateway_tests::{Gateway, GatewayConfig, PATIENCE, eventually};
use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::Sha256;

/// Name of the seed's WebSubApi.
const SEED: &str = "github-events-v1.0";
/// The seed's resolved context.
const CTX: &str = "/github-events/v1.0";
/// Fast delivery retries, so tests of failing subscribers stay short.
const FAST_RETRY: &str = "delivery_initial_delay_ms = 50\ndelivery_max_delay_ms = 200\n";
/// Bounded, generous wait before asserting that something did NOT happen; only ever used after
/// something else proved the hub had made progress past the point where it would have happened.
const QUIET: Duration = Duration::from_millis(1000);
/// Body prefix of the probe events used to learn that subscriptions are active.
const PROBE: &str = "websub-probe-";
/// How often a new probe event is published while waiting for subscriptions to become active.
const PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// The seed's WebSubApi payload, verbatim.
fn seed() -> Value {
    json!({
        "apiVersion": "gateway.api-platform.wso2.com/v1alpha1",
        "kind": "WebSubApi",
        "metadata": {"name": "github-events-v1.0"},
        "spec": {
            "displayName": "GitHub Events",
            "version": "v1.0",
            "context": "/github-events/$version",
            "channels": [
                {"name": "issues", "method": "SUB"},
                {"name": "pull_requests", "method": "SUB"}
            ]
        }
    })
}

/// A WebSubApi with list-form channels.
fn websub_api(name: &str, display: &str, version: &str, context: &str, channels: &[&str]) -> Value {
    json!({
        "apiVersion": "gateway.api-platform.wso2.com/v1alpha1",
        "kind": "WebSubApi",
        "metadata": {"name": name},
        "spec": {
            "displayName": display,
            "version": version,
            "context": context,
            "channels": channels.iter().map(|c| json!({"name": c, "method": "SUB"})).collect::<Vec<_>>()
        }
    })
}

/// The api-key-auth policy reading header `X-API-Key`.
fn key_auth() -> Value {
    json!({"name": "api-key-auth", "version": "v1", "params": {"key": "X-API-Key"}})
}

/// A gateway with fast delivery retries.
async fn gateway(name: &str) -> anyhow::Result<Gateway> {
    gateway_with(name, "").await
}

/// A gateway with fast delivery retries and more `[websub]` settings.
async fn gateway_with(name: &str, websub: &str) -> anyhow::Result<Gateway> {
    let mut cfg = GatewayConfig::new(name);
    cfg.websub_toml = format!("{FAST_RETRY}{websub}");
    Gateway::start_with(cfg).await
}

/// `POST /websub-apis`, expecting 201.
async fn create(gw: &Gateway, api: &Value) -> anyhow::Result<Value> {
    let (s, body) = gw.send_json(Method::POST, "/websub-apis", api).await?;
    anyhow::ensure!(s == 201, "creating a WebSubApi answered {s}: {body}");
    Ok(body)
}

/// `POST {ctx}/hub` through the router with a form body and extra headers; status and body.
async fn hub(
    gw: &Gateway,
    ctx: &str,
    form: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> anyhow::Result<(StatusCode, String)> {
    let mut r = gw
        .client()
        .post(gw.router_url(&format!("{ctx}/hub")))
        .form(form);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let r = r.send().await?;
    Ok((r.status(), r.text().await?))
}

/// A form body: `(name, value)` pairs.
type Form<'a> = Vec<(&'a str, &'a str)>;

/// A subscribe request's form: mode, topic, callback, and optional secret and lease.
fn sub_form<'a>(
    topic: &'a str,
    callback: &'a str,
    secret: Option<&'a str>,
    lease: Option<&'a str>,
) -> Form<'a> {
    let mut f = vec![
        ("hub.mode", "subscribe"),
        ("hub.topic", topic),
        ("hub.callback", callback),
    ];
    if let Some(s) = secret {
        f.push(("hub.secret", s));
    }
    if let Some(l) = lease {
        f.push(("hub.lease_seconds", l));
    }
    f
}

/// Subscribes `callback` to `topic`, expecting 202 with an empty body.
async fn subscribe(
    gw: &Gateway,
    ctx: &str,
    topic: &str,
    callback: &str,
    secret: Option<&str>,
    lease: Option<&str>,
) -> anyhow::Result<()> {
    let (s, body) = hub(gw, ctx, &sub_form(topic, callback, secret, lease), &[]).await?;
    anyhow::ensure!(
        s == 202 && body.is_empty(),
        "subscribe {callback} to {topic}: {s} {body}\ncontroller log:\n{}",
        gw.log_tail()
    );
    Ok(())
}

/// `POST {ctx}/webhook-receiver?topic=<topic>` through the router; status and body.
async fn publish(
    gw: &Gateway,
    ctx: &str,
    topic: Option<&str>,
    content_type: &str,
    body: impl Into<reqwest::Body>,
    headers: &[(&str, &str)],
) -> anyhow::Result<(StatusCode, String)> {
    let url = match topic {
        Some(t) => gw.router_url(&format!("{ctx}/webhook-receiver?topic={t}")),
        None => gw.router_url(&format!("{ctx}/webhook-receiver")),
    };
    let mut r = gw
        .client()
        .post(url)
        .header("Content-Type", content_type)
        .body(body);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let r = r.send().await?;
    Ok((r.status(), r.text().await?))
}

/// Publishes a JSON event, expecting 202.
async fn publish_json(gw: &Gateway, ctx: &str, topic: &str, event: &Value) -> anyhow::Result<()> {
    let (s, body) = publish(
        gw,
        ctx,
        Some(topic),
        "application/json",
        event.to_string(),
        &[],
    )
    .await?;
    anyhow::ensure!(
        s == 202,
        "publishing {event} to {topic}: {s} {body}\ncontroller log:\n{}",
        gw.log_tail()
    );
    Ok(())
}

/// Publishes `event` as soon as the router accepts it (202), retrying only while the route is
/// not there yet (an event answered with anything but 202 was not stored).
async fn publish_when_routable(
    gw: &Gateway,
    ctx: &str,
    topic: &str,
    event: &Value,
) -> anyhow::Result<()> {
    let last = Mutex::new(String::new());
    eventually(PATIENCE, &format!("publish {event} -> 202"), || {
        let last = &last;
        async move {
            let r = publish(
                gw,
                ctx,
                Some(topic),
                "application/json",
                event.to_string(),
                &[],
            )
            .await;
            *last.lock().unwrap_or_else(|p| p.into_inner()) = format!("{r:?}");
            r.ok().filter(|(s, _)| *s == 202).map(|_| ())
        }
    })
    .await
    .with_context(|| {
        let last = last.lock().unwrap_or_else(|p| p.into_inner()).clone();
        format!("last answer: {last}\ncontroller log:\n{}", gw.log_tail())
    })
}

/// Waits until the hub and the webhook receiver of `ctx` are routed through Envoy (an empty
/// request answers 400, or 401 where api-key-auth applies, instead of Envoy's 404).
async fn wait_live(gw: &Gateway, ctx: &str) -> anyhow::Result<()> {
    let ok = |s: StatusCode| s == 400 || s == 401;
    let last = Mutex::new(String::new());
    eventually(PATIENCE, &format!("{ctx} hub routed"), || {
        let last = &last;
        async move {
            let h = hub(gw, ctx, &[], &[]).await;
            let p = publish(gw, ctx, None, "text/plain", "x", &[]).await;
            *last.lock().unwrap_or_else(|p| p.into_inner()) = format!("hub {h:?}, receiver {p:?}");
            match (h, p) {
                (Ok((a, _)), Ok((b, _))) if ok(a) && ok(b) => Some(()),
                _ => None,
            }
        }
    })
    .await
    .with_context(|| {
        let last = last.lock().unwrap_or_else(|p| p.into_inner()).clone();
        format!("last answers: {last}\ncontroller log:\n{}", gw.log_tail())
    })
}

/// Waits until a valid subscribe and a valid publish to `ctx` both answer 404 through Envoy.
async fn wait_gone(gw: &Gateway, ctx: &str, sub: &Subscriber) -> anyhow::Result<()> {
    // A probe that still got through must not renew the subscription under test.
    let callback = sub.callback_at("/gone-probe");
    let last = Mutex::new(String::new());
    eventually(PATIENCE, &format!("{ctx} hub gone"), || {
        let (last, callback) = (&last, &callback);
        async move {
            let h = hub(gw, ctx, &sub_form("issues", callback, None, None), &[]).await;
            let p = publish(gw, ctx, Some("issues"), "text/plain", probe_body(), &[]).await;
            *last.lock().unwrap_or_else(|p| p.into_inner()) = format!("hub {h:?}, receiver {p:?}");
            match (h, p) {
                (Ok((a, _)), Ok((b, _))) if a == 404 && b == 404 => Some(()),
                _ => None,
            }
        }
    })
    .await
    .with_context(|| {
        let last = last.lock().unwrap_or_else(|p| p.into_inner()).clone();
        format!("last answers: {last}\ncontroller log:\n{}", gw.log_tail())
    })
}

/// A fresh probe event body.
fn probe_body() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{PROBE}{}", N.fetch_add(1, Ordering::Relaxed))
}

fn is_probe(d: &Delivery) -> bool {
    d.body.starts_with(PROBE.as_bytes())
}

/// Publishes probe events to `topic` (with `headers`) until every `(subscriber, path)` has
/// received one: a delivered probe proves the subscription active, whereas a verification GET
/// only proves the hub asked.
async fn wait_active(
    gw: &Gateway,
    ctx: &str,
    topic: &str,
    targets: &[(&Subscriber, &str)],
    headers: &[(&str, &str)],
) -> anyhow::Result<()> {
    let last_probe: Mutex<Option<Instant>> = Mutex::new(None);
    let what = format!("{} subscriptions to {topic} active", targets.len());
    eventually(PATIENCE, &what, || {
        let last_probe = &last_probe;
        async move {
            let all = targets.iter().all(|(s, path)| {
                s.deliveries()
                    .iter()
                    .any(|d| d.path() == *path && is_probe(d))
            });
            if all {
                return Some(());
            }
            let due = {
                let mut t = last_probe.lock().unwrap_or_else(|p| p.into_inner());
                let due = t.is_none_or(|t| t.elapsed() >= PROBE_INTERVAL);
                if due {
                    *t = Some(Instant::now());
                }
                due
            };
            if due {
                let _ = publish(gw, ctx, Some(topic), "text/plain", probe_body(), headers).await;
            }
            None
        }
    })
    .await
    .with_context(|| format!("controller log:\n{}", gw.log_tail()))
}

/// The non-probe deliveries `sub` accepted at `path`, in arrival order.
fn events(sub: &Subscriber, path: &str) -> Vec<Delivery> {
    sub.deliveries()
        .into_iter()
        .filter(|d| d.path() == path && !is_probe(d))
        .collect()
}

/// The bodies of `deliveries` as text.
fn bodies(deliveries: &[Delivery]) -> Vec<String> {
    deliveries.iter().map(Delivery::text).collect()
}

/// Waits until `sub` accepted at least `n` non-probe deliveries at `path`; returns them.
async fn wait_events(
    gw: &Gateway,
    sub: &Subscriber,
    path: &str,
    n: usize,
) -> anyhow::Result<Vec<Delivery>> {
    eventually(PATIENCE, &format!("{n} events at {path}"), || async move {
        let e = events(sub, path);
        (e.len() >= n).then_some(e)
    })
    .await
    .with_context(|| {
        format!(
            "received so far: {:?} ({} attempts)\ncontroller log:\n{}",
            bodies(&sub.deliveries()),
            sub.delivery_attempts(),
            gw.log_tail()
        )
    })
}

/// Waits for the `n`-th verification request `sub` received; returns its parameters.
async fn wait_verification(
    gw: &Gateway,
    sub: &Subscriber,
    n: usize,
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let v = sub
        .wait_verifications(n)
        .await
        .with_context(|| format!("controller log:\n{}", gw.log_tail()))?;
    Ok(v[n - 1].clone())
}

/// All values of the `Link` headers of `d`, split into `(url, rel)` pairs.
fn links(d: &Delivery) -> Vec<(String, String)> {
    d.headers
        .iter()
        .filter(|(k, _)| k == "link")
        .flat_map(|(_, v)| v.split(',').map(str::trim).map(str::to_string))
        .filter_map(|part| {
            let (url, params) = part.split_once(';')?;
            let url = url.trim().strip_prefix('<')?.strip_suffix('>')?.to_string();
            let rel = params.split(';').find_map(|p| {
                let (k, v) = p.trim().split_once('=')?;
                (k.trim() == "rel").then(|| v.trim().trim_matches('"').to_string())
            })?;
            Some((url, rel))
        })
        .collect()
}

/// `sha256=<hex HMAC-SHA256(secret, body)>`.
fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Checks a verification of intent: its mode, its topic, and a non-empty challenge.
fn assert_intent(v: &BTreeMap<String, String>, mode: &str, topic: &str) {
    assert_eq!(v.get("hub.mode").map(String::as_str), Some(mode), "{v:?}");
    assert_eq!(v.get("hub.topic").map(String::as_str), Some(topic), "{v:?}");
    assert!(
        v.get("hub.challenge").is_some_and(|c| !c.is_empty()),
        "{v:?}"
    );
}
fn assert_error_shape(status: StatusCode, body: &Value, expected: u16, what: &str) {
    assert_eq!(status, expected, "{what}: {body}");
    assert_eq!(body["status"], "error", "{what}: {body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_lifecycle() -> anyhow::Result<()> {
    let gw = gateway("websub-mgmt").await?;
    let seed = seed();

    // The seed's call, verbatim: the envelope comes back as sent, plus a status block.
    let (s, created) = gw
        .send_json(Method::POST, "/api/management/v0.9/websub-apis", &seed)
        .await?;
    assert_eq!(s, 201, "{created}");
    let mut envelope = created.clone();
    let status = envelope
        .as_object_mut()
        .and_then(|o| o.remove("status"))
        .unwrap_or(Value::Null);
    assert_eq!(envelope, seed, "the envelope as sent");
    assert!(
        status["id"].as_str().is_some_and(|s| !s.is_empty()),
        "{status}"
    );
    assert_eq!(status["state"], "deployed", "{status}");
    for field in ["createdAt", "updatedAt", "deployedAt"] {
        assert!(
            status[field].as_str().is_some_and(|s| !s.is_empty()),
            "{field}: {status}"
        );
    }

    // Readable on all three bases.
    for base in ["", "/api/management/v0.9", "/api/management/v1"] {
        let (s, body) = gw.get_json(&format!("{base}/websub-apis/{SEED}")).await?;
        assert_eq!(s, 200, "{base}: {body}");
        assert_eq!(body["metadata"], seed["metadata"], "{base}");
        assert_eq!(body["spec"], seed["spec"], "{base}");
        assert_eq!(body["status"]["state"], "deployed", "{base}");
        assert_eq!(body["status"]["createdAt"], status["createdAt"], "{base}");
        let (s, body) = gw.get_json(&format!("{base}/websub-apis")).await?;
        assert_eq!(
            (s.as_u16(), body["count"].clone()),
            (200, json!(1)),
            "{base}"
        );
    }
    let (s, body) = gw
        .send_json(
            Method::POST,
            "/api/management/v1/websub-apis",
            &websub_api(
                "gitlab-v2",
                "GitLab Events",
                "v2.0",
                "/gitlab/$version",
                &["push"],
            ),
        )
        .await?;
    assert_eq!(s, 201, "{body}");

    // List and exact-match filters.
    let names = |q: &'static str| {
        let gw = &gw;
        async move {
            let (s, v) = gw.get_json(&format!("/websub-apis{q}")).await?;
            anyhow::ensure!(s == 200 && v["status"] == "success", "{q}: {s} {v}");
            let apis = v["apis"].as_array().cloned().unwrap_or_default();
            anyhow::ensure!(v["count"] == apis.len(), "{q}: count {v}");
            let mut names: Vec<String> = apis
                .iter()
                .map(|a| a["metadata"]["name"].as_str().unwrap_or("?").to_string())
                .collect();
            names.sort();
            Ok::<_, anyhow::Error>(names)
        }
    };
    let both = vec!["github-events-v1.0".to_string(), "gitlab-v2".to_string()];
    let github = vec!["github-events-v1.0".to_string()];
    let gitlab = vec!["gitlab-v2".to_string()];
    assert_eq!(names("").await?, both);
    assert_eq!(names("?displayName=GitHub%20Events").await?, github);
    assert_eq!(names("?displayName=GitHub").await?, Vec::<String>::new());
    assert_eq!(names("?version=v2.0").await?, gitlab);
    assert_eq!(names("?context=/github-events/$version").await?, github);
    assert_eq!(names("?context=/github-events/v1.0").await?, github);
    assert_eq!(names("?context=/gitlab/v2.0").await?, gitlab);
    assert_eq!(
        names("?displayName=GitHub%20Events&version=v2.0").await?,
        Vec::<String>::new()
    );
    assert_eq!(names("?status=deployed").await?, both);
    assert_eq!(names("?status=undeployed").await?, Vec::<String>::new());

    // Undeploy one through PUT: the status filter follows.
    let mut gitlab_down = websub_api(
        "gitlab-v2",
        "GitLab Events",
        "v2.0",
        "/gitlab/$version",
        &["push"],
    );
    gitlab_down["spec"]["deploymentState"] = json!("undeployed");
    let (s, body) = gw
        .send_json(Method::PUT, "/websub-apis/gitlab-v2", &gitlab_down)
        .await?;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["status"]["state"], "undeployed", "{body}");
    assert_eq!(names("?status=undeployed").await?, gitlab);
    assert_eq!(names("?status=deployed").await?, github);

    // PUT adds a channel; the hub then knows it.
    wait_live(&gw, CTX).await?;
    let sub = Subscriber::start().await?;
    let (s, _) = hub(
        &gw,
        CTX,
        &sub_form("releases", &sub.callback(), None, None),
        &[],
    )
    .await?;
    assert_eq!(s, 404, "releases is not a channel yet");
    let mut more = seed.clone();
    more["spec"]["channels"]
        .as_array_mut()
        .context("channels")?
        .push(json!({"name": "releases", "method": "SUB"}));
    let (s, body) = gw
        .send_json(Method::PUT, &format!("/websub-apis/{SEED}"), &more)
        .await?;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["spec"]["channels"], more["spec"]["channels"], "{body}");
    assert_eq!(body["status"]["state"], "deployed", "{body}");
    assert_eq!(body["status"]["createdAt"], status["createdAt"], "{body}");
    let (_, got) = gw.get_json(&format!("/websub-apis/{SEED}")).await?;
    assert_eq!(
        got["spec"]["channels"].as_array().map(Vec::len),
        Some(3),
        "{got}"
    );
    let callback = sub.callback();
    eventually(PATIENCE, "subscribing to the new channel", || {
        let (gw, callback) = (&gw, &callback);
        async move {
            hub(gw, CTX, &sub_form("releases", callback, None, None), &[])
                .await
                .ok()
                .filter(|(s, _)| *s == 202)
        }
    })
    .await
    .with_context(|| gw.log_tail())?;

    // Conflicts: the same name, and the same displayName + version under another name.
    let (s, body) = gw.send_json(Method::POST, "/websub-apis", &seed).await?;
    assert_error_shape(s, &body, 409, "duplicate name");
    let (s, body) = gw
        .send_json(
            Method::POST,
            "/websub-apis",
            &websub_api("copy", "GitHub Events", "v1.0", "/copy", &["issues"]),
        )
        .await?;
    assert_error_shape(s, &body, 409, "duplicate displayName + version");

    // A table of invalid definitions: each a 400 with field errors, and nothing created.
    let valid = websub_api("bad", "Bad", "v1", "/bad", &["issues"]);
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = valid.clone();
        f(&mut v);
        v
    };
    let cases: Vec<(&str, Value)> = vec![
        (
            "missing channels",
            with(&|v| {
                v["spec"].as_object_mut().map(|o| o.remove("channels"));
            }),
        ),
        (
            "a PUB channel",
            with(&|v| v["spec"]["channels"] = json!([{"name": "issues", "method": "PUB"}])),
        ),
        (
            "a POST channel",
            with(&|v| v["spec"]["channels"] = json!([{"name": "issues", "method": "POST"}])),
        ),
        (
            "context without a leading /",
            with(&|v| v["spec"]["context"] = json!("bad")),
        ),
        (
            "context with a trailing /",
            with(&|v| v["spec"]["context"] = json!("/bad/")),
        ),
        (
            "an unknown policy",
            with(&|v| {
                v["spec"]["allChannels"] = json!({"on_subscription": {"policies": [
                    {"name": "no-such-policy", "version": "v1", "params": {}}
                ]}})
            }),
        ),
        (
            "api-key-auth on message delivery",
            with(&|v| {
                v["spec"]["allChannels"] =
                    json!({"on_message_delivery": {"policies": [key_auth()]}})
            }),
        ),
    ];
    for (what, body) in &cases {
        let (s, answer) = gw.send_json(Method::POST, "/websub-apis", body).await?;
        assert_error_shape(s, &answer, 400, what);
        let errors = answer["errors"].as_array().cloned().unwrap_or_default();
        assert!(!errors.is_empty(), "{what}: {answer}");
        for e in &errors {
            assert!(
                e["field"].as_str().is_some_and(|f| !f.is_empty())
                    && e["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{what}: {answer}"
            );
        }
    }
    assert_eq!(gw.get_json("/websub-apis/bad").await?.0, 404);
    assert_eq!(names("").await?, both, "no invalid definition was stored");

    // Channels as a map come back as a map.
    let mut map_form = websub_api("map-form", "Map Form", "v1", "/map-form", &[]);
    map_form["spec"]["channels"] = json!({
        "issues": {"on_subscription": {"policies": [key_auth()]}},
        "pull_requests": {}
    });
    let body = create(&gw, &map_form).await?;
    assert_eq!(
        body["spec"]["channels"], map_form["spec"]["channels"],
        "{body}"
    );
    let (_, body) = gw.get_json("/websub-apis/map-form").await?;
    assert_eq!(
        body["spec"]["channels"], map_form["spec"]["channels"],
        "{body}"
    );

    // API keys: create (named and generated), list masked, revoke.
    let keys_path = format!("/websub-apis/{SEED}/api-keys");
    let (s, k1) = gw
        .send_json(Method::POST, &keys_path, &json!({"name": "k1"}))
        .await?;
    assert_eq!(s, 201, "{k1}");
    let plain = k1["apiKey"]["apiKey"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(plain.starts_with("apip_"), "{k1}");
    assert_eq!(k1["apiKey"]["name"], "k1", "{k1}");
    let (s, k2) = gw.send_json(Method::POST, &keys_path, &json!({})).await?;
    assert_eq!(s, 201, "{k2}");
    assert!(
        k2["apiKey"]["apiKey"]
            .as_str()
            .is_some_and(|k| k.starts_with("apip_") && k != plain),
        "{k2}"
    );
    let (s, list) = gw.get_json(&keys_path).await?;
    assert_eq!(s, 200, "{list}");
    assert_eq!(list["totalCount"], 2, "{list}");
    assert!(
        !list.to_string().contains(&plain),
        "plaintext leaked: {list}"
    );
    let r = gw
        .mgmt(Method::DELETE, &format!("{keys_path}/k1"))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let (_, list) = gw.get_json(&keys_path).await?;
    assert_eq!(list["totalCount"], 1, "{list}");
    let (s, _) = gw
        .send_json(Method::POST, "/websub-apis/ghost/api-keys", &json!({}))
        .await?;
    assert_eq!(s, 404, "keys of an unknown API");

    // DELETE: the answer, then 404 everywhere, and the hub is gone from the router.
    let r = gw
        .mgmt(Method::DELETE, &format!("/websub-apis/{SEED}"))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await?;
    assert_eq!(body["status"], "success", "{body}");
    assert_eq!(body["id"], SEED, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    let (s, body) = gw.get_json(&format!("/websub-apis/{SEED}")).await?;
    assert_error_shape(s, &body, 404, "GET after DELETE");
    assert_eq!(
        gw.mgmt(Method::DELETE, &format!("/websub-apis/{SEED}"))
            .send()
            .await?
            .status(),
        404
    );
    let (s, _) = gw
        .send_json(Method::PUT, &format!("/websub-apis/{SEED}"), &seed)
        .await?;
    assert_eq!(s, 404, "PUT of a deleted API");
    wait_gone(&gw, CTX, &sub).await?;
    assert_eq!(
        names("").await?,
        vec!["gitlab-v2".to_string(), "map-form".to_string()]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_verify_publish_signed_delivery() -> anyhow::Result<()> {
    let gw = gateway("websub-deliver").await?;
    create(&gw, &seed()).await?;
    wait_live(&gw, CTX).await?;
    let signed = Subscriber::start().await?;
    let plain = Subscriber::start().await?;
    let secret = "s3cr3t-of-the-subscriber";

    subscribe(
        &gw,
        CTX,
        "issues",
        &signed.callback(),
        Some(secret),
        Some("3600"),
    )
    .await?;
    let v = wait_verification(&gw, &signed, 1).await?;
    assert_intent(&v, "subscribe", "issues");
    assert!(
        v.get("hub.lease_seconds")
            .and_then(|l| l.parse::<u64>().ok())
            .is_some_and(|l| l > 0),
        "{v:?}"
    );
    subscribe(&gw, CTX, "issues", &plain.callback(), None, None).await?;
    let v = wait_verification(&gw, &plain, 1).await?;
    assert_eq!(
        v.get("hub.mode").map(String::as_str),
        Some("subscribe"),
        "{v:?}"
    );
    assert!(v.contains_key("hub.lease_seconds"), "{v:?}");
    wait_active(
        &gw,
        CTX,
        "issues",
        &[(&signed, "/cb"), (&plain, "/cb")],
        &[],
    )
    .await?;

    let event = json!({"action": "opened", "issue": {"number": 1, "title": "Hub test"}});
    let raw = event.to_string();
    let (s, body) = publish(
        &gw,
        CTX,
        Some("issues"),
        "application/json",
        raw.clone(),
        &[
            ("X-API-Key", "secret-publisher-header"),
            ("Authorization", "Bearer publisher-token"),
        ],
    )
    .await?;
    assert_eq!(s, 202, "{body}");

    let got = wait_events(&gw, &signed, "/cb", 1).await?;
    let unsigned = wait_events(&gw, &plain, "/cb", 1).await?;
    let d = &got[0];
    assert_eq!(d.body, raw.as_bytes());
    assert_eq!(d.header("content-type"), Some("application/json"));
    assert_eq!(
        d.header("x-hub-signature"),
        Some(signature(secret, raw.as_bytes()).as_str())
    );
    assert!(
        d.header("x-api-key").is_none(),
        "publisher header forwarded: {:?}",
        d.headers
    );
    assert!(
        d.header("authorization").is_none(),
        "publisher header forwarded: {:?}",
        d.headers
    );
    let links = links(d);
    assert!(
        links
            .iter()
            .any(|(url, rel)| rel == "hub" && *url == gw.router_url(&format!("{CTX}/hub"))),
        "{links:?} from {:?}",
        d.headers
    );
    assert!(
        links.iter().any(|(url, rel)| rel == "self"
            && *url == gw.router_url(&format!("{CTX}/webhook-receiver?topic=issues"))),
        "{links:?} from {:?}",
        d.headers
    );
    // The probes were signed too, each with its own body.
    for p in signed.deliveries().iter().filter(|d| is_probe(d)) {
        assert_eq!(
            p.header("x-hub-signature"),
            Some(signature(secret, &p.body).as_str())
        );
    }

    let u = &unsigned[0];
    assert_eq!(u.body, raw.as_bytes());
    assert_eq!(u.header("content-type"), Some("application/json"));
    assert!(u.header("x-hub-signature").is_none(), "{:?}", u.headers);
    assert!(u.header("x-api-key").is_none(), "{:?}", u.headers);

    // Exactly one delivery each.
    tokio::time::sleep(QUIET).await;
    assert_eq!(bodies(&events(&signed, "/cb")), vec![raw.clone()]);
    assert_eq!(bodies(&events(&plain, "/cb")), vec![raw]);
    let metrics = gw.metrics_text().await?;
    for line in [
        "gateway_websub_subscriptions 2\n",
        "gateway_websub_delivery_failures_total 0\n",
    ] {
        assert!(metrics.contains(line), "{line:?} not in {metrics}");
    }
    assert!(
        !metrics.contains("gateway_websub_deliveries_total 0\n"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_verification_activates_nothing() -> anyhow::Result<()> {
    let gw = gateway("websub-verify").await?;
    create(&gw, &seed()).await?;
    wait_live(&gw, CTX).await?;
    let wrong = Subscriber::start().await?;
    wrong.set_verify(Verify::WrongChallenge);
    let refuse = Subscriber::start().await?;
    refuse.set_verify(Verify::Refuse404);
    let good = Subscriber::start().await?;

    subscribe(
        &gw,
        CTX,
        "issues",
        &wrong.callback(),
        Some("w-secret"),
        None,
    )
    .await?;
    subscribe(&gw, CTX, "issues", &refuse.callback(), None, None).await?;
    for s in [&wrong, &refuse] {
        let v = wait_verification(&gw, s, 1).await?;
        assert_intent(&v, "subscribe", "issues");
    }
    // A correctly verifying subscriber on the same channel, subscribed afterwards.
    subscribe(&gw, CTX, "issues", &good.callback(), None, None).await?;
    wait_active(&gw, CTX, "issues", &[(&good, "/cb")], &[]).await?;
    let event = json!({"n": 1});
    publish_json(&gw, CTX, "issues", &event).await?;
    assert_eq!(
        bodies(&wait_events(&gw, &good, "/cb", 1).await?),
        vec![event.to_string()]
    );

    tokio::time::sleep(QUIET).await;
    for (what, s) in [
        ("wrong challenge", &wrong),
        ("404 on verification", &refuse),
    ] {
        assert_eq!(
            s.delivery_attempts(),
            0,
            "{what}: got deliveries {:?}\ncontroller log:\n{}",
            bodies(&s.deliveries()),
            gw.log_tail()
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_stops_deliveries() -> anyhow::Result<()> {
    let gw = gateway("websub-unsub").await?;
    create(&gw, &seed()).await?;
    wait_live(&gw, CTX).await?;
    let leaving = Subscriber::start().await?;
    let staying = Subscriber::start().await?;
    for s in [&leaving, &staying] {
        subscribe(&gw, CTX, "issues", &s.callback(), None, None).await?;
    }
    wait_active(
        &gw,
        CTX,
        "issues",
        &[(&leaving, "/cb"), (&staying, "/cb")],
        &[],
    )
    .await?;
    let e1 = json!({"n": 1});
    publish_json(&gw, CTX, "issues", &e1).await?;
    wait_events(&gw, &leaving, "/cb", 1).await?;
    wait_events(&gw, &staying, "/cb", 1).await?;

    let callback = leaving.callback();
    let form = [
        ("hub.mode", "unsubscribe"),
        ("hub.topic", "issues"),
        ("hub.callback", callback.as_str()),
    ];
    let (s, body) = hub(&gw, CTX, &form, &[]).await?;
    assert_eq!((s.as_u16(), body.as_str()), (202, ""));
    let v = wait_verification(&gw, &leaving, 2).await?;
    assert_intent(&v, "unsubscribe", "issues");

    // The echo removes the subscription: eventually a probe reaches the staying subscriber and,
    // a generous while later, still not the one that left.
    eventually(PATIENCE, "the unsubscription applied", || {
        let (gw, leaving, staying) = (&gw, &leaving, &staying);
        async move {
            let probe = probe_body();
            let (s, _) = publish(gw, CTX, Some("issues"), "text/plain", probe.clone(), &[])
                .await
                .ok()?;
            if s != 202 {
                return None;
            }
            eventually(Duration::from_secs(5), "a probe", || {
                let probe = &probe;
                async move {
                    staying
                        .deliveries()
                        .iter()
                        .any(|d| d.text() == *probe)
                        .then_some(())
                }
            })
            .await
            .ok()?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            (!leaving.deliveries().iter().any(|d| d.text() == probe)).then_some(())
        }
    })
    .await
    .with_context(|| gw.log_tail())?;

    let e2 = json!({"n": 2});
    publish_json(&gw, CTX, "issues", &e2).await?;
    assert_eq!(
        bodies(&wait_events(&gw, &staying, "/cb", 2).await?),
        vec![e1.to_string(), e2.to_string()]
    );
    tokio::time::sleep(QUIET).await;
    assert_eq!(bodies(&events(&leaving, "/cb")), vec![e1.to_string()]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_subscriber_gets_everything_in_order() -> anyhow::Result<()> {
    let gw = gateway("websub-retry").await?;
    create(&gw, &seed()).await?;
    wait_live(&gw, CTX).await?;
    let sub = Subscriber::start().await?;
    subscribe(&gw, CTX, "issues", &sub.callback(), None, None).await?;
    wait_active(&gw, CTX, "issues", &[(&sub, "/cb")], &[]).await?;

    let before = sub.delivery_attempts();
    sub.fail_next_deliveries(3);
    let sent: Vec<String> = (0..5).map(|i| format!("e{i}")).collect();
    for e in &sent {
        let (s, body) = publish(&gw, CTX, Some("issues"), "text/plain", e.clone(), &[]).await?;
        assert_eq!(s, 202, "{body}");
    }
    let got = wait_events(&gw, &sub, "/cb", 5).await?;
    assert_eq!(bodies(&got), sent, "every event, in publish order");
    assert!(
        sub.delivery_attempts() - before >= 5 + 3,
        "{} attempts for 5 events with 3 failures",
        sub.delivery_attempts() - before
    );
    for d in &got {
        assert_eq!(d.header("content-type"), Some("text/plain"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_lease_gets_nothing() -> anyhow::Result<()> {
    let gw = gateway("websub-lease").await?;
    create(&gw, &seed()).await?;
    wait_live(&gw, CTX).await?;
    let long = Subscriber::start().await?;
    let short = Subscriber::start().await?;
    subscribe(&gw, CTX, "issues", &long.callback(), None, Some("3600")).await?;
    wait_active(&gw, CTX, "issues", &[(&long, "/cb")], &[]).await?;

    subscribe(&gw, CTX, "issues", &short.callback(), None, Some("2")).await?;
    let v = wait_verification(&gw, &short, 1).await?;
    assert_eq!(
        v.get("hub.lease_seconds").map(String::as_str),
        Some("2"),
        "{v:?}"
    );
    // Active first (a probe reaches it within its lease), then the lease runs out.
    wait_active(&gw, CTX, "issues", &[(&short, "/cb")], &[]).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let event = json!({"after": "lease"});
    publish_json(&gw, CTX, "issues", &event).await?;
    assert_eq!(
        bodies(&wait_events(&gw, &long, "/cb", 1).await?),
        vec![event.to_string()]
    );
    tokio::time::sleep(QUIET).await;
    assert!(
        events(&short, "/cb").is_empty(),
        "an expired subscription got {:?}",
        bodies(&short.deliveries())
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_and_pending_events_survive_a_crash() -> anyhow::Result<()> {
    // Enough attempts that no pending event is given up while the controller is down.
    let mut gw = gateway_with("websub-restart", "delivery_max_attempts = 1000\n").await?;
    create(&gw, &seed()).await?;
    wait_live(&gw, CTX).await?;
    let sub = Subscriber::start().await?;
    subscribe(&gw, CTX, "issues", &sub.callback(), Some("keep-me"), None).await?;
    wait_active(&gw, CTX, "issues", &[(&sub, "/cb")], &[]).await?;

    sub.fail_next_deliveries(1000);
    let before = sub.delivery_attempts();
    let sent: Vec<String> = (0..3).map(|i| json!({"pending": i}).to_string()).collect();
    for e in &sent {
        let (s, body) =
            publish(&gw, CTX, Some("issues"), "application/json", e.clone(), &[]).await?;
        assert_eq!(s, 202, "{body}");
    }
    // The hub is trying (and failing) to deliver when it crashes.
    eventually(PATIENCE, "a failed delivery attempt", || async {
        (sub.delivery_attempts() > before).then_some(())
    })
    .await
    .with_context(|| gw.log_tail())?;
    gw.kill_controller().await?;
    sub.fail_next_deliveries(0);
    gw.start_controller().await?;

    let got = wait_events(&gw, &sub, "/cb", 3).await?;
    assert_eq!(
        bodies(&got),
        sent,
        "pending events delivered after the restart, in order"
    );
    for d in &got {
        assert_eq!(
            d.header("x-hub-signature"),
            Some(signature("keep-me", &d.body).as_str()),
            "the secret survived too"
        );
    }

    // The subscription made before the crash receives new events.
    let after = json!({"after": "restart"});
    publish_when_routable(&gw, CTX, "issues", &after).await?;
    let got = wait_events(&gw, &sub, "/cb", 4).await?;
    assert_eq!(got[3].text(), after.to_string());
    tokio::time::sleep(QUIET).await;
    let mut expected = sent.clone();
    expected.push(after.to_string());
    assert_eq!(
        bodies(&events(&sub, "/cb")),
        expected,
        "each event exactly once"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_auth_on_subscribe_and_publish() -> anyhow::Result<()> {
    let gw = gateway("websub-keys").await?;
    let mut api = websub_api("secured", "Secured Events", "v1", "/secured", &["issues"]);
    api["spec"]["allChannels"] = json!({
        "on_subscription": {"policies": [key_auth()]},
        "on_message_received": {"policies": [key_auth()]}
    });
    create(&gw, &api).await?;
    let ctx = "/secured";
    let sub = Subscriber::start().await?;
    let callback = sub.callback();
    let form = sub_form("issues", &callback, None, None);
    let unauthorized = json!({"error": "Unauthorized", "message": "Valid API key required"});

    // Without a key: 401 in the policy's shape (once routed), and no verification.
    eventually(PATIENCE, "keyless requests -> 401", || {
        let (gw, form) = (&gw, &form);
        async move {
            let (a, _) = hub(gw, ctx, form, &[]).await.ok()?;
            let (b, _) = publish(gw, ctx, Some("issues"), "text/plain", probe_body(), &[])
                .await
                .ok()?;
            (a == 401 && b == 401).then_some(())
        }
    })
    .await
    .with_context(|| gw.log_tail())?;
    let (s, body) = hub(&gw, ctx, &form, &[]).await?;
    assert_eq!(s, 401, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap_or_default(),
        unauthorized
    );
    // Without a key, nobody learns which channels exist.
    let unknown = sub_form("no-such-channel", &callback, None, None);
    assert_eq!(hub(&gw, ctx, &unknown, &[]).await?.0, 401);
    let (s, body) = publish(&gw, ctx, Some("no-such-channel"), "text/plain", "x", &[]).await?;
    assert_eq!(s, 401, "{body}");

    let (s, k) = gw
        .send_json(
            Method::POST,
            "/websub-apis/secured/api-keys",
            &json!({"name": "k1"}),
        )
        .await?;
    assert_eq!(s, 201, "{k}");
    let key = k["apiKey"]["apiKey"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let with_key = [("X-API-Key", key.as_str())];
    let form = &form;
    eventually(PATIENCE, "subscribe with the key -> 202", || {
        let gw = &gw;
        let headers = &with_key;
        async move {
            hub(gw, ctx, form, headers)
                .await
                .ok()
                .filter(|(s, _)| *s == 202)
        }
    })
    .await
    .with_context(|| gw.log_tail())?;
    wait_verification(&gw, &sub, 1).await?;
    wait_active(&gw, ctx, "issues", &[(&sub, "/cb")], &with_key).await?;
    assert_eq!(
        sub.verifications().len(),
        1,
        "only the keyed subscribe was verified"
    );

    // Publishing: without a key 401 (nothing stored), with it 202 and delivered.
    let (s, body) = publish(
        &gw,
        ctx,
        Some("issues"),
        "application/json",
        "{\"no\":\"key\"}",
        &[],
    )
    .await?;
    assert_eq!(s, 401, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap_or_default(),
        unauthorized
    );
    let event = json!({"with": "key"});
    let (s, body) = publish(
        &gw,
        ctx,
        Some("issues"),
        "application/json",
        event.to_string(),
        &with_key,
    )
    .await?;
    assert_eq!(s, 202, "{body}");
    let got = wait_events(&gw, &sub, "/cb", 1).await?;
    assert_eq!(
        bodies(&got),
        vec![event.to_string()],
        "only the authorized event"
    );
    assert!(got[0].header("x-api-key").is_none(), "{:?}", got[0].headers);

    // Revoked: both sides refuse the key.
    let r = gw
        .mgmt(Method::DELETE, "/websub-apis/secured/api-keys/k1")
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    eventually(PATIENCE, "the revoked key refused", || {
        let gw = &gw;
        let headers = &with_key;
        async move {
            let (a, _) = hub(gw, ctx, form, headers).await.ok()?;
            let (b, _) = publish(gw, ctx, Some("issues"), "text/plain", probe_body(), headers)
                .await
                .ok()?;
            (a == 401 && b == 401).then_some(())
        }
    })
    .await
    .with_context(|| gw.log_tail())?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeploy_and_redeploy_keep_subscriptions() -> anyhow::Result<()> {
    let gw = gateway("websub-undeploy").await?;
    create(&gw, &seed()).await?;
    wait_live(&gw, CTX).await?;
    let sub = Subscriber::start().await?;
    subscribe(&gw, CTX, "issues", &sub.callback(), None, None).await?;
    wait_active(&gw, CTX, "issues", &[(&sub, "/cb")], &[]).await?;

    let mut down = seed();
    down["spec"]["deploymentState"] = json!("undeployed");
    let (s, body) = gw
        .send_json(Method::PUT, &format!("/websub-apis/{SEED}"), &down)
        .await?;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["status"]["state"], "undeployed", "{body}");
    wait_gone(&gw, CTX, &sub).await?;

    let mut up = seed();
    up["spec"]["deploymentState"] = json!("deployed");
    let (s, body) = gw
        .send_json(Method::PUT, &format!("/websub-apis/{SEED}"), &up)
        .await?;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["status"]["state"], "deployed", "{body}");
    let event = json!({"after": "redeploy"});
    publish_when_routable(&gw, CTX, "issues", &event).await?;
    let got = wait_events(&gw, &sub, "/cb", 1).await?;
    assert_eq!(bodies(&got), vec![event.to_string()]);
    let other = Subscriber::start().await?;
    subscribe(&gw, CTX, "pull_requests", &other.callback(), None, None).await?;
    wait_verification(&gw, &other, 1).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_hub_and_receiver_requests() -> anyhow::Result<()> {
    let gw = gateway("websub-bad").await?;
    create(&gw, &seed()).await?;
    wait_live(&gw, CTX).await?;
    let sub = Subscriber::start().await?;
    let cb = sub.callback();
    let cb = cb.as_str();
    let secret_201 = "s".repeat(201);
    let secret_200 = "s".repeat(200);
    let cases: Vec<(&str, Form, u16)> = vec![
        (
            "missing hub.mode",
            vec![("hub.topic", "issues"), ("hub.callback", cb)],
            400,
        ),
        (
            "bad hub.mode",
            vec![
                ("hub.mode", "publish"),
                ("hub.topic", "issues"),
                ("hub.callback", cb),
            ],
            400,
        ),
        (
            "missing hub.topic",
            vec![("hub.mode", "subscribe"), ("hub.callback", cb)],
            400,
        ),
        ("unknown channel", sub_form("nope", cb, None, None), 404),
        (
            "missing hub.callback",
            vec![("hub.mode", "subscribe"), ("hub.topic", "issues")],
            400,
        ),
        (
            "ftp callback",
            sub_form("issues", "ftp://x", None, None),
            400,
        ),
        (
            "callback not a URL",
            sub_form("issues", "not a url", None, None),
            400,
        ),
        (
            "201-byte secret",
            sub_form("issues", cb, Some(&secret_201), None),
            400,
        ),
        (
            "non-integer lease",
            sub_form("issues", cb, None, Some("abc")),
            400,
        ),
        (
            "200-byte secret",
            sub_form("issues", cb, Some(&secret_200), None),
            202,
        ),
    ];
    for (what, form, expected) in &cases {
        let (s, body) = hub(&gw, CTX, form, &[]).await?;
        assert_eq!(s, *expected, "{what}: {body}");
    }
    // Only the valid request was verified: the refused ones stored nothing to verify.
    let v = wait_verification(&gw, &sub, 1).await?;
    assert_eq!(
        v.get("hub.topic").map(String::as_str),
        Some("issues"),
        "{v:?}"
    );
    tokio::time::sleep(QUIET).await;
    assert_eq!(sub.verifications().len(), 1, "{:?}", sub.verifications());

    let (s, body) = publish(&gw, CTX, None, "text/plain", "x", &[]).await?;
    assert_eq!(s, 400, "no topic: {body}");
    let (s, body) = publish(&gw, CTX, Some("nope"), "text/plain", "x", &[]).await?;
    assert_eq!(s, 404, "unknown topic: {body}");
    let (s, body) = publish(
        &gw,
        CTX,
        Some("issues"),
        "application/octet-stream",
        vec![b'a'; 2 * 1024 * 1024],
        &[],
    )
    .await?;
    assert_eq!(s, 413, "2 MiB: {body}");
    let (s, body) = publish(
        &gw,
        CTX,
        Some("issues"),
        "application/octet-stream",
        vec![b'a'; 1024 * 1024],
        &[],
    )
    .await?;
    assert_eq!(s, 202, "exactly 1 MiB: {body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_to_a_hundred_subscribers() -> anyhow::Result<()> {
    let gw = gateway("websub-fanout").await?;
    create(&gw, &seed()).await?;
    wait_live(&gw, CTX).await?;
    let mut servers = Vec::new();
    for _ in 0..4 {
        servers.push(Subscriber::start().await?);
    }
    let targets: Vec<(&Subscriber, String)> = (0..100)
        .map(|i| (&servers[i % servers.len()], format!("/s/{i}")))
        .collect();
    let answers = join_all(targets.iter().map(|(s, path)| {
        let callback = s.callback_at(path);
        let gw = &gw;
        async move { subscribe(gw, CTX, "issues", &callback, None, None).await }
    }))
    .await;
    for a in answers {
        a?;
    }
    let pairs: Vec<(&Subscriber, &str)> = targets.iter().map(|(s, p)| (*s, p.as_str())).collect();
    wait_active(&gw, CTX, "issues", &pairs, &[]).await?;

    let sent: Vec<String> = (0..5).map(|i| json!({"fan": i}).to_string()).collect();
    for e in &sent {
        let (s, body) =
            publish(&gw, CTX, Some("issues"), "application/json", e.clone(), &[]).await?;
        assert_eq!(s, 202, "{body}");
    }
    for (s, path) in &pairs {
        let got = wait_events(&gw, s, path, 5).await?;
        assert_eq!(bodies(&got), sent, "{path}: all five, in order");
    }
    Ok(())
}
