//! Self-test of the fake WSO2 API Manager: it speaks the protocol over TLS that verifies against
//! its own certificate, and really checks what it receives.

use std::io::{Cursor, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use gateway_tests::fake_apim::{Call, FakeApim, FakeApimConfig, Mode};
use gateway_tests::{PATIENCE, eventually};
use reqwest::Client;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, connect_async_tls_with_config};

const SCOPE: &str = "apim:api_import_export apim:api_view";
const IMPORT: &str = "/api/am/publisher/v4/apis/import?preserveProvider=false&overwrite=true&dryRun=false&rotateRevision=true";
const BOUNDARY: &str = "fake-apim-test-boundary";

/// The `(path, text)` files of an import project.
type Files = Vec<(String, String)>;

/// An HTTPS client that trusts only the fake's certificate.
fn client(fake: &FakeApim) -> Result<Client> {
    let pem = std::fs::read(fake.ca_file())?;
    Ok(Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem)?)
        .https_only(true)
        .timeout(Duration::from_secs(10))
        .build()?)
}

fn url(fake: &FakeApim, path: &str) -> String {
    format!("https://{}{path}", fake.host())
}

/// Sends a request and returns status and JSON body (`Null` when the body is not JSON).
async fn send(req: reqwest::RequestBuilder) -> Result<(u16, Value)> {
    let r = req.send().await?;
    let status = r.status().as_u16();
    let text = r.text().await?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

/// A client-credentials token request with the given credentials and form.
fn token_request(
    http: &Client,
    fake: &FakeApim,
    basic: Option<(&str, &str)>,
    form: &[(&str, &str)],
) -> reqwest::RequestBuilder {
    let body: String = form
        .iter()
        .map(|(k, v)| format!("{k}={}", form_encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    let mut req = http
        .post(url(fake, "/oauth2/token"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(body);
    if let Some((user, pass)) = basic {
        req = req.basic_auth(user, Some(pass));
    }
    req
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                (b as char).to_string()
            }
            b' ' => "+".to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A token through the client-credentials grant.
async fn token(http: &Client, fake: &FakeApim) -> Result<String> {
    let (status, body) = send(token_request(
        http,
        fake,
        Some(("test-client", "test-secret")),
        &[("grant_type", "client_credentials"), ("scope", SCOPE)],
    ))
    .await?;
    if status != 200 {
        bail!("token endpoint answered {status} {body}");
    }
    body["access_token"]
        .as_str()
        .map(str::to_string)
        .context("no access_token")
}

/// A zip of the given `(path, text)` files, deflated.
fn zip_of(files: &[(String, String)]) -> Result<Vec<u8>> {
    let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (path, text) in files {
        writer.start_file(path.as_str(), options)?;
        writer.write_all(text.as_bytes())?;
    }
    Ok(writer.finish()?.into_inner())
}

/// The files of a valid import project, as the controller should build it.
fn project(name: &str, version: &str, upstream: &str) -> Files {
    let dir = format!("{name}-{version}");
    let api_yaml = format!(
        r#"type: api
version: v4.7.0
data:
  name: {name}
  version: {version}
  context: /pets
  type: HTTP
  transport: [http, https]
  provider: admin
  endpointConfig:
    endpoint_type: http
    production_endpoints:
      url: {upstream}
    sandbox_endpoints:
      url: {upstream}
  initiatedFromGateway: true
  gatewayVendor: wso2
  operations:
    - id: ""
      target: /pets
      verb: GET
    - id: ""
      target: /pets
      verb: POST
    - id: ""
      target: /pets/{{id}}
      verb: DELETE
"#
    );
    let environments = r#"type: deployment_environments
version: v4.3.0
data:
  - deploymentEnvironment: onprem-gw
    displayOnDevportal: true
"#
    .to_string();
    let swagger = format!(
        r#"openapi: 3.0.0
info:
  title: {name}
  version: {version}
paths:
  /pets:
    get:
      responses:
        "200": {{description: Successful response}}
    post:
      responses:
        "200": {{description: Successful response}}
  /pets/{{id}}:
    delete:
      parameters:
        - {{name: id, in: path, required: true, schema: {{type: string}}}}
      responses:
        "200": {{description: Successful response}}
"#
    );
    vec![
        (format!("{dir}/api.yaml"), api_yaml),
        (format!("{dir}/deployment_environments.yaml"), environments),
        (format!("{dir}/Definitions/swagger.yaml"), swagger),
    ]
}

/// `project` with `from` replaced by `to` in the file ending with `file`.
fn edited(files: &[(String, String)], file: &str, from: &str, to: &str) -> Files {
    files
        .iter()
        .map(|(p, t)| {
            if p.ends_with(file) {
                assert!(t.contains(from), "{p} has no {from:?}");
                (p.clone(), t.replace(from, to))
            } else {
                (p.clone(), t.clone())
            }
        })
        .collect()
}

/// The import call with `zip` as multipart field `file`.
fn import_request(
    http: &Client,
    fake: &FakeApim,
    token: &str,
    path: &str,
    zip: &[u8],
) -> reqwest::RequestBuilder {
    let mut body = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"api.zip\"\r\nContent-Type: application/zip\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(zip);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    http.post(url(fake, path))
        .bearer_auth(token)
        .header("Accept", "application/json")
        .header(
            "Content-Type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(body)
}

async fn import(http: &Client, fake: &FakeApim, token: &str, zip: &[u8]) -> Result<(u16, Value)> {
    send(import_request(http, fake, token, IMPORT, zip)).await
}

fn undeploy_request(
    http: &Client,
    fake: &FakeApim,
    token: &str,
    id: &str,
    revision: &str,
    body: &Value,
) -> reqwest::RequestBuilder {
    http.post(url(
        fake,
        &format!("/api/am/publisher/v4/apis/{id}/undeploy-revision?revisionId={revision}"),
    ))
    .bearer_auth(token)
    .header("Content-Type", "application/json")
    .body(body.to_string())
}

fn message(body: &Value) -> &str {
    body["message"].as_str().unwrap_or("")
}

#[tokio::test]
async fn well_known_and_token_grants() -> Result<()> {
    let fake = FakeApim::start(FakeApimConfig::default()).await?;
    let http = client(&fake)?;

    let (status, body) = send(http.get(url(&fake, "/internal/gateway/.well-known"))).await?;
    assert_eq!(
        (status, body),
        (200, json!({"gatewayPath": "/internal/data/v1"}))
    );

    let cc = [("grant_type", "client_credentials"), ("scope", SCOPE)];
    let (status, body) = send(token_request(
        &http,
        &fake,
        Some(("test-client", "test-secret")),
        &cc,
    ))
    .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert!(body["access_token"].as_str().is_some_and(|t| !t.is_empty()));

    let pw = [
        ("grant_type", "password"),
        ("username", "admin"),
        ("password", "admin-password"),
        ("scope", SCOPE),
    ];
    let (status, body) = send(token_request(&http, &fake, None, &pw)).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(fake.tokens_issued(), 2);

    let (status, body) = send(token_request(
        &http,
        &fake,
        Some(("test-client", "wrong")),
        &cc,
    ))
    .await?;
    assert_eq!((status, &body["error"]), (401, &json!("invalid_client")));
    let (status, body) = send(token_request(&http, &fake, None, &cc)).await?;
    assert_eq!((status, &body["error"]), (401, &json!("invalid_client")));
    let bad_user = [pw[0], pw[1], ("password", "nope"), pw[3]];
    let (status, body) = send(token_request(&http, &fake, None, &bad_user)).await?;
    assert_eq!((status, &body["error"]), (401, &json!("invalid_client")));
    // The password grant carries no client authentication.
    let (status, body) = send(token_request(
        &http,
        &fake,
        Some(("test-client", "test-secret")),
        &pw,
    ))
    .await?;
    assert_eq!((status, &body["error"]), (400, &json!("invalid_request")));

    let narrow = [
        ("grant_type", "client_credentials"),
        ("scope", "apim:api_view"),
    ];
    let (status, body) = send(token_request(
        &http,
        &fake,
        Some(("test-client", "test-secret")),
        &narrow,
    ))
    .await?;
    assert_eq!((status, &body["error"]), (400, &json!("invalid_scope")));
    assert!(
        body["error_description"]
            .as_str()
            .unwrap_or("")
            .contains("apim:api_import_export")
    );

    let odd = [("grant_type", "implicit"), ("scope", SCOPE)];
    let (status, body) = send(token_request(
        &http,
        &fake,
        Some(("test-client", "test-secret")),
        &odd,
    ))
    .await?;
    assert_eq!(
        (status, &body["error"]),
        (400, &json!("unsupported_grant_type"))
    );

    let (status, _) = send(
        http.post(url(&fake, "/oauth2/token"))
            .basic_auth("test-client", Some("test-secret"))
            .json(&json!({"grant_type": "client_credentials", "scope": SCOPE})),
    )
    .await?;
    assert_eq!(status, 400, "a JSON token request is refused");
    assert_eq!(fake.tokens_issued(), 2);

    fake.set_mode(Mode::Unauthorized);
    let (status, body) = send(token_request(
        &http,
        &fake,
        Some(("test-client", "test-secret")),
        &cc,
    ))
    .await?;
    assert_eq!((status, &body["error"]), (401, &json!("invalid_client")));

    let calls = fake.calls();
    assert_eq!(
        calls[0],
        Call {
            method: "GET".into(),
            path: "/internal/gateway/.well-known".into(),
            status: 200
        }
    );
    assert_eq!(calls.len(), 11);
    assert!(
        calls
            .iter()
            .skip(1)
            .all(|c| c.method == "POST" && c.path == "/oauth2/token")
    );

    let off = FakeApim::start(FakeApimConfig {
        gateway_path: String::new(),
        ..FakeApimConfig::default()
    })
    .await?;
    let (status, body) =
        send(client(&off)?.get(url(&off, "/internal/gateway/.well-known"))).await?;
    assert_eq!((status, body), (200, json!({})));
    Ok(())
}

#[tokio::test]
async fn import_update_swagger_and_undeploy() -> Result<()> {
    let fake = FakeApim::start(FakeApimConfig::default()).await?;
    let http = client(&fake)?;
    let token = token(&http, &fake).await?;
    let files = project("PetStore", "v1.0", "http://127.0.0.1:9/backend");
    let zip = zip_of(&files)?;

    let (status, body) = send(import_request(&http, &fake, "not-a-token", IMPORT, &zip)).await?;
    assert_eq!((status, &body["code"]), (401, &json!(900901)));

    let (status, first) = import(&http, &fake, &token, &zip).await?;
    assert_eq!(status, 201, "{first}");
    let id = first["id"].as_str().context("id")?.to_string();
    let rev1 = first["revision"].as_str().context("revision")?.to_string();

    let api = fake.api("PetStore", "v1.0").context("imported")?;
    assert_eq!(api.id, id);
    assert_eq!(api.context, "/pets");
    assert_eq!(api.endpoint_url, "http://127.0.0.1:9/backend");
    assert_eq!(api.gateway_environment, "onprem-gw");
    assert_eq!(
        api.operations,
        vec![
            ("GET".to_string(), "/pets".to_string()),
            ("POST".to_string(), "/pets".to_string()),
            ("DELETE".to_string(), "/pets/{id}".to_string()),
        ]
    );
    assert_eq!(
        (api.imports, api.deployed_revision.as_deref()),
        (1, Some(rev1.as_str()))
    );

    let (status, second) = import(&http, &fake, &token, &zip).await?;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["id"], json!(id));
    let rev2 = second["revision"].as_str().context("revision")?.to_string();
    assert_ne!(rev1, rev2);
    let api = fake.api("PetStore", "v1.0").context("imported")?;
    assert_eq!(api.imports, 2);
    assert_eq!(api.revisions, vec![rev1.clone(), rev2.clone()]);
    assert_eq!(api.deployed_revision.as_deref(), Some(rev2.as_str()));
    assert_eq!(fake.apis().len(), 1);

    let r = http
        .get(url(
            &fake,
            &format!("/api/am/publisher/v4/apis/{id}/swagger"),
        ))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().await?, files[2].1);

    let (status, list) = send(
        http.get(url(&fake, "/api/am/publisher/v4/apis"))
            .bearer_auth(&token),
    )
    .await?;
    assert_eq!(status, 200);
    assert_eq!(list["count"], 1);
    assert_eq!(list["list"][0]["id"], json!(id));
    assert_eq!(list["list"][0]["lifeCycleStatus"], "PUBLISHED");

    let envs = json!([{"name": "onprem-gw", "displayOnDevportal": false}]);
    let (status, body) = send(undeploy_request(
        &http,
        &fake,
        &token,
        &id,
        &rev2,
        &json!([{"name": "default", "displayOnDevportal": false}]),
    ))
    .await?;
    assert_eq!(status, 400, "{body}");
    let (status, body) = send(undeploy_request(&http, &fake, &token, &id, &rev1, &envs)).await?;
    assert_eq!(status, 404, "an older revision is not deployed: {body}");
    let (status, body) = send(undeploy_request(
        &http,
        &fake,
        &token,
        "no-such-api",
        &rev2,
        &envs,
    ))
    .await?;
    assert_eq!(status, 404, "{body}");
    let (status, body) = send(undeploy_request(&http, &fake, &token, &id, &rev2, &envs)).await?;
    assert_eq!((status, body), (201, json!([])));
    assert_eq!(
        fake.api("PetStore", "v1.0")
            .context("kept")?
            .deployed_revision,
        None
    );
    let (status, body) = send(undeploy_request(&http, &fake, &token, &id, &rev2, &envs)).await?;
    assert_eq!((status, &body["code"]), (404, &json!(404)));

    let statuses: Vec<u16> = fake.calls().iter().map(|c| c.status).collect();
    assert_eq!(
        statuses,
        vec![200, 401, 201, 200, 200, 200, 400, 404, 404, 201, 404]
    );
    assert!(fake.calls()[2].path.ends_with("rotateRevision=true"));
    Ok(())
}

#[tokio::test]
async fn import_rejects_what_apim_would() -> Result<()> {
    let fake = FakeApim::start(FakeApimConfig::default()).await?;
    let http = client(&fake)?;
    let token = token(&http, &fake).await?;
    let good = project("PetStore", "v1.0", "https://pets.example/v1");

    let cases: Vec<(&str, Files, &str)> = vec![
        (
            "directory name",
            good.iter()
                .map(|(p, t)| (p.replace("PetStore-v1.0", "PetStore-v2"), t.clone()))
                .collect(),
            "top-level directory \"PetStore-v2\" must be data.name + \"-\" + data.version = \"PetStore-v1.0\"",
        ),
        (
            "missing swagger",
            good[..2].to_vec(),
            "zip lacks PetStore-v1.0/Definitions/swagger.yaml",
        ),
        (
            "two top-level directories",
            [
                good.clone(),
                vec![("Other-v1/api.yaml".into(), "type: api".into())],
            ]
            .concat(),
            "exactly one top-level directory",
        ),
        (
            "relative context",
            edited(&good, "api.yaml", "context: /pets", "context: pets"),
            "api.yaml: data.context must start with \"/\", got \"pets\"",
        ),
        (
            "lower-case verb",
            edited(&good, "api.yaml", "verb: POST", "verb: post"),
            "api.yaml: data.operations[1].verb must be one of",
        ),
        (
            "not from the gateway",
            edited(
                &good,
                "api.yaml",
                "initiatedFromGateway: true",
                "initiatedFromGateway: \"yes\"",
            ),
            "api.yaml: data.initiatedFromGateway must be true",
        ),
        (
            "no sandbox",
            edited(
                &good,
                "api.yaml",
                "    sandbox_endpoints:\n      url: https://pets.example/v1\n",
                "",
            ),
            "api.yaml: data.endpointConfig.sandbox_endpoints.url is missing",
        ),
        (
            "wrong environment",
            edited(
                &good,
                "deployment_environments.yaml",
                "onprem-gw",
                "default",
            ),
            "deployment_environments.yaml: data[0].deploymentEnvironment is \"default\" but the gateway environment is \"onprem-gw\"",
        ),
        (
            "swagger 2",
            edited(&good, "swagger.yaml", "openapi: 3.0.0", "openapi: \"2.0\""),
            "Definitions/swagger.yaml: openapi must be 3.x",
        ),
        (
            "swagger lacks a method",
            edited(&good, "swagger.yaml", "    post:", "    put:"),
            "lacks the lower-case method key \"post\" for operation POST /pets",
        ),
        (
            "bad yaml",
            edited(&good, "api.yaml", "type: api", "type: [api"),
            "api.yaml is not valid YAML",
        ),
    ];
    for (what, files, expected) in cases {
        let (status, body) = import(&http, &fake, &token, &zip_of(&files)?).await?;
        assert_eq!(status, 400, "{what}: {body}");
        assert!(message(&body).contains(expected), "{what}: {body}");
    }

    let (status, body) = import(&http, &fake, &token, b"PK not really").await?;
    assert_eq!(status, 400);
    assert!(message(&body).contains("not a zip archive"), "{body}");

    let zip = zip_of(&good)?;
    let wrong_query = IMPORT.replace("dryRun=false", "dryRun=true");
    let (status, body) = send(import_request(&http, &fake, &token, &wrong_query, &zip)).await?;
    assert_eq!(
        (status, message(&body)),
        (400, "query parameter dryRun must be false, got \"true\"")
    );
    let short_query = IMPORT.replace("&rotateRevision=true", "");
    let (status, body) = send(import_request(&http, &fake, &token, &short_query, &zip)).await?;
    assert_eq!(status, 400);
    assert!(message(&body).contains("rotateRevision"), "{body}");

    let (status, body) = send(
        http.post(url(&fake, IMPORT))
            .bearer_auth(&token)
            .header("Content-Type", format!("multipart/form-data; boundary={BOUNDARY}"))
            .body(format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"api\"\r\n\r\nx\r\n--{BOUNDARY}--\r\n"
            )),
    )
    .await?;
    assert_eq!(status, 400);
    assert!(message(&body).contains("no field named file"), "{body}");

    assert!(fake.apis().is_empty());
    let (status, _) = import(&http, &fake, &token, &zip).await?;
    assert_eq!(status, 201);
    Ok(())
}

#[tokio::test]
async fn unavailable_failing_and_slow() -> Result<()> {
    let fake = FakeApim::start(FakeApimConfig::default()).await?;
    let http = client(&fake)?;
    let token = token(&http, &fake).await?;
    let zip = zip_of(&project("Echo", "1.0.0", "http://127.0.0.1:9"))?;

    fake.fail_next_publisher_calls(2);
    for _ in 0..2 {
        let (status, body) = import(&http, &fake, &token, &zip).await?;
        assert_eq!(
            (status, body),
            (503, json!({"code": 503, "message": "Service Unavailable"}))
        );
    }
    let (status, _) = import(&http, &fake, &token, &zip).await?;
    assert_eq!(status, 201);

    fake.set_mode(Mode::Unavailable);
    let (status, _) = import(&http, &fake, &token, &zip).await?;
    assert_eq!(status, 503);
    let id = fake.api("Echo", "1.0.0").context("imported")?.id;
    let (status, _) = send(
        http.get(url(
            &fake,
            &format!("/api/am/publisher/v4/apis/{id}/swagger"),
        ))
        .bearer_auth(&token),
    )
    .await?;
    assert_eq!(status, 503);
    // The token endpoint is not a publisher call.
    let (status, _) = send(token_request(
        &http,
        &fake,
        Some(("test-client", "test-secret")),
        &[("grant_type", "client_credentials"), ("scope", SCOPE)],
    ))
    .await?;
    assert_eq!(status, 200);

    fake.set_mode(Mode::Slow(Duration::from_millis(300)));
    let started = Instant::now();
    let (status, _) = import(&http, &fake, &token, &zip).await?;
    assert_eq!(status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));

    fake.set_mode(Mode::Normal);
    let (status, _) = import(&http, &fake, &token, &zip).await?;
    assert_eq!(status, 200);
    assert_eq!(fake.api("Echo", "1.0.0").context("kept")?.imports, 3);

    let statuses: Vec<u16> = fake.calls().iter().map(|c| c.status).collect();
    assert_eq!(statuses, vec![200, 503, 503, 201, 503, 503, 200, 200, 200]);
    Ok(())
}

/// A rustls client config trusting only the fake's certificate.
fn ws_connector(fake: &FakeApim) -> Result<Connector> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(fake.ca_file())? {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Connector::Rustls(Arc::new(config)))
}

#[tokio::test]
async fn control_websocket() -> Result<()> {
    let fake = FakeApim::start(FakeApimConfig {
        registration_token: Some("reg-token".into()),
        ping_interval: Duration::from_millis(100),
        ..FakeApimConfig::default()
    })
    .await?;
    let ws_url = format!("wss://{}/internal/data/v1/ws/gateways/connect", fake.host());

    let refused =
        connect_async_tls_with_config(ws_url.as_str(), None, false, Some(ws_connector(&fake)?))
            .await;
    match refused {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 401),
        Err(e) => bail!("expected a 401, got {e}"),
        Ok(_) => bail!("connected without api-key"),
    }

    let mut request = ws_url.as_str().into_client_request()?;
    request
        .headers_mut()
        .insert("api-key", HeaderValue::from_static("reg-token"));
    let (mut ws, _) =
        connect_async_tls_with_config(request, None, false, Some(ws_connector(&fake)?)).await?;

    let first = tokio::time::timeout(Duration::from_secs(2), ws.next())
        .await?
        .context("stream ended")??;
    let Message::Text(text) = first else {
        bail!("expected connection.ack, got {first:?}");
    };
    let ack: Value = serde_json::from_str(&text)?;
    assert_eq!(ack["type"], "connection.ack");
    assert_eq!(ack["gatewayId"], "onprem-gw");
    assert!(ack["connectionId"].as_str().is_some_and(|c| c.len() == 36));
    assert!(
        ack["timestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z') && t.len() == 24)
    );
    assert_eq!((fake.ws_connects(), fake.ws_open()), (1, 1));

    ws.send(Message::Ping(b"hello".to_vec().into())).await?;
    let (mut pinged, mut ponged) = (false, false);
    while !(pinged && ponged) {
        let msg = tokio::time::timeout(Duration::from_secs(2), ws.next())
            .await?
            .context("stream ended")??;
        match msg {
            Message::Ping(_) => pinged = true,
            Message::Pong(p) => {
                assert_eq!(&p[..], b"hello");
                ponged = true;
            }
            other => bail!("unexpected {other:?}"),
        }
    }
    ws.send(Message::text(r#"{"type":"hello"}"#)).await?;

    fake.drop_websockets();
    let ended = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(other)) => return Err(anyhow::anyhow!("unexpected {other:?}")),
                Some(Err(_)) | None => return Ok(()),
            }
        }
    })
    .await?;
    ended?;
    eventually(PATIENCE, "the socket to close", || async {
        (fake.ws_open() == 0).then_some(())
    })
    .await?;
    assert_eq!(fake.ws_connects(), 1);

    let upgrades: Vec<u16> = fake
        .calls()
        .iter()
        .filter(|c| c.path == "/internal/data/v1/ws/gateways/connect")
        .map(|c| c.status)
        .collect();
    assert_eq!(upgrades, vec![401, 101]);
    Ok(())
}

#[tokio::test]
async fn stop_releases_the_port() -> Result<()> {
    let fake = FakeApim::start(FakeApimConfig::default()).await?;
    let port = fake.port();
    let ca = fake.ca_file().to_path_buf();
    assert!(std::fs::read_to_string(&ca)?.starts_with("-----BEGIN CERTIFICATE-----"));
    let http = client(&fake)?;
    let (status, _) = send(http.get(url(&fake, "/internal/gateway/.well-known"))).await?;
    assert_eq!(status, 200);
    fake.stop().await;
    assert!(!ca.exists(), "the CA file is removed");

    let again = FakeApim::start_on(port, FakeApimConfig::default()).await?;
    assert_eq!(again.host(), format!("127.0.0.1:{port}"));
    let (status, _) =
        send(client(&again)?.get(url(&again, "/internal/gateway/.well-known"))).await?;
    assert_eq!(status, 200);
    Ok(())
}
