//! HTTP client of the on-prem API Manager: on-prem detection (`.well-known`), the OAuth2 token
//! (cached until shortly before it expires), and the publisher calls that import and undeploy.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::multipart::{Form, Part};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Mutex;
use tracing::debug;

use super::SyncError;
use super::artifact::Artifact;
use crate::config::ControlPlaneConfig;

/// Scopes the token must carry for import and swagger calls.
const SCOPES: &str = "apim:api_import_export apim:api_view";
/// Query of the import call: replace an existing API, deploy a new revision, keep no provider.
const IMPORT_QUERY: &str = "preserveProvider=false&overwrite=true&dryRun=false&rotateRevision=true";
/// Timeout of the on-prem detection call.
const WELL_KNOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a call to the API Manager failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApimError {
    /// No answer: connection refused, TLS failure, timeout.
    #[error("APIM unreachable: {0}")]
    Unreachable(String),
    /// The token endpoint did not issue a token.
    #[error("{message}")]
    Token {
        /// What went wrong, for the operator.
        message: String,
        /// Whether asking again may help (APIM away), as opposed to refused credentials.
        transient: bool,
    },
    /// A publisher call answered with an error status.
    #[error("APIM {call} failed: {message}")]
    Status {
        /// Which call.
        call: &'static str,
        /// HTTP status.
        status: u16,
        /// What APIM said, shortened.
        message: String,
    },
    /// A success answer that could not be understood.
    #[error("APIM {call} answered unexpectedly: {message}")]
    Response {
        /// Which call.
        call: &'static str,
        /// What was wrong.
        message: String,
    },
}

impl ApimError {
    /// Whether the request may succeed later as it is (APIM away or overloaded, or a token it
    /// refused and that is now dropped), as opposed to APIM refusing the request itself.
    pub fn transient(&self) -> bool {
        match self {
            ApimError::Unreachable(_) => true,
            ApimError::Token { transient, .. } => *transient,
            ApimError::Status { status, .. } => *status >= 500 || *status == 401 || *status == 429,
            ApimError::Response { .. } => false,
        }
    }
}

/// What an import answered.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Imported {
    /// The API Manager's id of the API.
    pub id: String,
    /// The revision created and deployed.
    pub revision: String,
}

enum Credentials {
    Client { id: String, secret: String },
    Password { username: String, password: String },
    Missing,
}

/// How long refused credentials are not tried again, so many APIs syncing at once cannot flood
/// the token endpoint (or lock the APIM user out) with wrong credentials.
const REFUSAL_MEMORY: Duration = Duration::from_secs(5);
/// Longest lifetime trusted from `expires_in`.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

enum TokenState {
    Empty,
    Valid { value: String, refresh_at: Instant },
    Refused { error: ApimError, until: Instant },
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: Option<String>,
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct WellKnown {
    #[serde(rename = "gatewayPath", default)]
    gateway_path: Option<String>,
}

/// Client of one API Manager.
pub struct ApimClient {
    http: reqwest::Client,
    base: String,
    credentials: Credentials,
    gateway_name: String,
    token: Mutex<TokenState>,
}

fn shorten(text: &str) -> String {
    let t = text.trim();
    match t.char_indices().nth(300) {
        Some((i, _)) => format!("{}...", &t[..i]),
        None => t.to_string(),
    }
}

fn unreachable(e: reqwest::Error) -> ApimError {
    // The source chain names the real cause (refused, TLS, timeout).
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    ApimError::Unreachable(text)
}

async fn status_error(call: &'static str, r: reqwest::Response) -> ApimError {
    let status = r.status();
    let body = r.text().await.unwrap_or_default();
    let message = match status {
        StatusCode::SERVICE_UNAVAILABLE => "on-prem APIM service unavailable (503)".to_string(),
        StatusCode::UNAUTHORIZED => {
            format!("APIM rejected the access token (401): {}", shorten(&body))
        }
        s => format!("status {}: {}", s.as_u16(), shorten(&body)),
    };
    ApimError::Status {
        call,
        status: status.as_u16(),
        message,
    }
}

impl ApimClient {
    /// A client for the API Manager at `cp.host`, over `tls`.
    pub fn new(cp: &ControlPlaneConfig, tls: rustls::ClientConfig) -> Result<Self, SyncError> {
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(cp.request_timeout)
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("api-gateway/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SyncError::Tls(e.to_string()))?;
        let credentials = if !cp.apim_oauth2_client_id.is_empty() {
            Credentials::Client {
                id: cp.apim_oauth2_client_id.clone(),
                secret: cp.apim_oauth2_client_secret.clone(),
            }
        } else if !cp.apim_oauth2_username.is_empty() {
            Credentials::Password {
                username: cp.apim_oauth2_username.clone(),
                password: cp.apim_oauth2_password.clone(),
            }
        } else {
            Credentials::Missing
        };
        Ok(Self {
            http,
            base: format!("https://{}", cp.host),
            credentials,
            gateway_name: cp.gateway_name.clone(),
            token: Mutex::new(TokenState::Empty),
        })
    }

    /// Whether OAuth2 credentials are configured at all.
    pub fn has_credentials(&self) -> bool {
        !matches!(self.credentials, Credentials::Missing)
    }

    /// The gateway path from `/internal/gateway/.well-known` (`/internal/data/v1`), normalised to
    /// one leading and no trailing slash; empty when APIM is not in on-prem mode.
    pub async fn gateway_path(&self) -> Result<String, ApimError> {
        let url = format!("{}/internal/gateway/.well-known", self.base);
        let r = self
            .http
            .get(&url)
            .timeout(WELL_KNOWN_TIMEOUT)
            .send()
            .await
            .map_err(unreachable)?;
        if !r.status().is_success() {
            return Err(status_error(".well-known", r).await);
        }
        let body: WellKnown = r.json().await.map_err(|e| ApimError::Response {
            call: ".well-known",
            message: e.to_string(),
        })?;
        let path = body.gateway_path.unwrap_or_default();
        let trimmed = path.trim().trim_matches('/');
        Ok(if trimmed.is_empty() {
            String::new()
        } else {
            format!("/{trimmed}")
        })
    }

    /// Drops `token` from the cache after APIM refused it (unless a newer one replaced it).
    async fn token_refused(&self, token: &str) {
        let mut cache = self.token.lock().await;
        if matches!(&*cache, TokenState::Valid { value, .. } if value == token) {
            *cache = TokenState::Empty;
        }
    }

    /// A valid access token, from the cache or the token endpoint. One request at a time asks
    /// for a new one; the others wait for it. Refused credentials are remembered briefly.
    async fn access_token(&self) -> Result<String, ApimError> {
        let mut cache = self.token.lock().await;
        let now = Instant::now();
        match &*cache {
            TokenState::Valid { value, refresh_at } if now < *refresh_at => {
                return Ok(value.clone());
            }
            TokenState::Refused { error, until } if now < *until => return Err(error.clone()),
            _ => {}
        }
        let result = self.request_token().await;
        *cache = match &result {
            Ok((value, lifetime)) => TokenState::Valid {
                value: value.clone(),
                refresh_at: now + lifetime.mul_f64(0.9),
            },
            Err(error) if !error.transient() => TokenState::Refused {
                error: error.clone(),
                until: now + REFUSAL_MEMORY,
            },
            Err(_) => TokenState::Empty,
        };
        result.map(|(value, _)| value)
    }

    /// Asks the token endpoint for a token; returns it with its lifetime.
    async fn request_token(&self) -> Result<(String, Duration), ApimError> {
        let url = format!("{}/oauth2/token", self.base);
        let request = match &self.credentials {
            Credentials::Client { id, secret } => self
                .http
                .post(&url)
                .basic_auth(id, Some(secret))
                .form(&[("grant_type", "client_credentials"), ("scope", SCOPES)]),
            Credentials::Password { username, password } => self.http.post(&url).form(&[
                ("grant_type", "password"),
                ("username", username.as_str()),
                ("password", password.as_str()),
                ("scope", SCOPES),
            ]),
            Credentials::Missing => {
                return Err(ApimError::Token {
                    message: "no APIM OAuth2 credentials configured: set controller.controlplane.apim_oauth2_client_id \
                              and apim_oauth2_client_secret (or apim_oauth2_username and apim_oauth2_password)"
                        .into(),
                    transient: false,
                });
            }
        };
        let r = request.send().await.map_err(unreachable)?;
        let status = r.status();
        if !status.is_success() {
            let body = shorten(&r.text().await.unwrap_or_default());
            let refused = matches!(status.as_u16(), 400 | 401 | 403);
            let hint = if refused {
                " (check the apim_oauth2_* credentials and that they carry the scopes apim:api_import_export apim:api_view)"
            } else {
                ""
            };
            return Err(ApimError::Token {
                message: format!(
                    "token endpoint returned unexpected status {}{hint}: {body}",
                    status.as_u16()
                ),
                transient: !refused,
            });
        }
        let not_found = |message: String| ApimError::Token {
            message,
            transient: false,
        };
        let answer: TokenAnswer = r.json().await.map_err(|e| {
            not_found(format!(
                "Access Token Not Found: unreadable token response: {e}"
            ))
        })?;
        let value = answer
            .access_token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                not_found("Access Token Not Found in the token endpoint's response".into())
            })?;
        let lifetime =
            Duration::from_secs(answer.expires_in.unwrap_or(3600)).min(MAX_TOKEN_LIFETIME);
        debug!(
            expires_in_s = lifetime.as_secs(),
            "obtained an APIM access token"
        );
        Ok((value, lifetime))
    }

    /// The error of a failed publisher call; a refused token is dropped so the next attempt
    /// gets a new one.
    async fn status_error(
        &self,
        call: &'static str,
        token: &str,
        r: reqwest::Response,
    ) -> ApimError {
        if r.status() == StatusCode::UNAUTHORIZED {
            self.token_refused(token).await;
        }
        status_error(call, r).await
    }

    /// Imports (creating or replacing) and deploys the API in `artifact`.
    pub async fn import(&self, artifact: &Artifact) -> Result<Imported, ApimError> {
        const CALL: &str = "import";
        let token = self.access_token().await?;
        let part = Part::bytes(artifact.zip.clone())
            .file_name(artifact.file_name.clone())
            .mime_str("application/zip")
            .map_err(|e| ApimError::Response {
                call: CALL,
                message: e.to_string(),
            })?;
        let r = self
            .http
            .post(format!(
                "{}/api/am/publisher/v4/apis/import?{IMPORT_QUERY}",
                self.base
            ))
            .bearer_auth(&token)
            .header("Accept", "application/json")
            .multipart(Form::new().part("file", part))
            .send()
            .await
            .map_err(unreachable)?;
        if !r.status().is_success() {
            return Err(self.status_error(CALL, &token, r).await);
        }
        r.json::<Imported>().await.map_err(|e| ApimError::Response {
            call: CALL,
            message: format!("expected {{\"id\", \"revision\"}}: {e}"),
        })
    }

    /// Undeploys revision `revision` of API `id` from this gateway's environment.
    pub async fn undeploy(&self, id: &str, revision: &str) -> Result<(), ApimError> {
        const CALL: &str = "undeploy-revision";
        let token = self.access_token().await?;
        let mut url =
            url::Url::parse(&self.base).map_err(|e| ApimError::Unreachable(e.to_string()))?;
        url.path_segments_mut()
            .map_err(|_| ApimError::Unreachable(format!("{} is not a base URL", self.base)))?
            .extend([
                "api",
                "am",
                "publisher",
                "v4",
                "apis",
                id,
                "undeploy-revision",
            ]);
        let r = self
            .http
            .post(url)
            .query(&[("revisionId", revision)])
            .bearer_auth(&token)
            .json(&json!([{"name": self.gateway_name, "displayOnDevportal": false}]))
            .send()
            .await
            .map_err(unreachable)?;
        if !r.status().is_success() {
            return Err(self.status_error(CALL, &token, r).await);
        }
        Ok(())
    }
}
