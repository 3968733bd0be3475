//! The management REST API: routes on the three base paths, authentication, and fallbacks.

pub mod api_keys;
pub mod apis;
pub mod body;
pub mod error;

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, MatchedPath, Path};
use axum::http::request::Parts;
use axum::http::{StatusCode, Uri, header};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::auth::{AuthError, Authenticator, Principal, Role};
use crate::metrics::{Gauges, Metrics};
use crate::registry::{REST_API, Registry, RegistryError, off_runtime};
use crate::websub::{HubStore, WEBSUB_API};
use error::ApiError;

/// Roles that may manage API definitions.
pub const DEFINITION_ROLES: &[Role] = &[Role::Admin, Role::Developer];
/// Roles that may manage API keys.
pub const KEY_ROLES: &[Role] = &[Role::Admin, Role::Consumer];

/// Base paths that serve the same management API.
pub const BASE_PATHS: [&str; 3] = ["", "/api/management/v0.9", "/api/management/v1"];

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// The API registry.
    pub registry: Arc<Registry>,
    /// Credential checks.
    pub auth: Arc<Authenticator>,
    /// Largest accepted body.
    pub max_body: usize,
    /// Active API keys one user may hold per API.
    pub key_quota: u32,
    /// Where Envoy reaches the WebSub hub.
    pub hub: gateway_xds::Upstream,
    /// Counters of the sync and the hub.
    pub metrics: Arc<Metrics>,
    /// The hub's store, for its gauges.
    pub hub_store: Arc<HubStore>,
}

/// The authenticated caller of a management request.
pub struct Caller(pub Principal);

impl Caller {
    /// Fails with 403 unless the caller holds one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if self.0.has_any(roles) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "User '{}' is not allowed to perform this operation",
                    self.0.username
                ),
            ))
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let auth = st.auth.clone();
        let result =
            tokio::task::spawn_blocking(move || auth.authenticate(header.as_deref())).await?;
        match result {
            Ok(p) => Ok(Caller(p)),
            Err(AuthError::Missing) => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "Authentication required",
            )),
            Err(AuthError::Invalid) => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "Invalid credentials",
            )),
        }
    }
}

/// The kind of API a request addresses (`RestApi` under `/rest-apis`, `WebSubApi` under
/// `/websub-apis`), for handlers both share.
pub struct ResourceKind(pub &'static str);

impl<S: Send + Sync> FromRequestParts<S> for ResourceKind {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let websub = parts
            .extensions
            .get::<MatchedPath>()
            .is_some_and(|p| p.as_str().contains("/websub-apis"));
        Ok(Self(if websub { WEBSUB_API } else { REST_API }))
    }
}

/// Runs a registry operation off the async runtime (it takes a lock and may write SQLite).
pub async fn blocking<T: Send + 'static>(
    registry: &Arc<Registry>,
    f: impl FnOnce(&Registry) -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, ApiError> {
    Ok(off_runtime(registry, f).await?)
}

/// Path parameters, or a 400 in the error shape.
pub fn path_params<T>(p: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    p.map(|Path(v)| v)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("Invalid path: {e}")))
}

async fn health() -> Json<Value> {
    Json(json!({"status": "healthy"}))
}

async fn metrics(
    axum::extract::State(st): axum::extract::State<AppState>,
    caller: Caller,
) -> Result<([(header::HeaderName, &'static str); 1], String), ApiError> {
    caller.require(&[Role::Admin])?;
    let (pending, synced, failed) = blocking(&st.registry, |r| r.sync_counts()).await?;
    let store = st.hub_store.clone();
    let (subscriptions, owed) = tokio::task::spawn_blocking(move || store.counts())
        .await?
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let gauges = Gauges {
        apis_pending: pending,
        apis_synced: synced,
        apis_failed: failed,
        websub_subscriptions: subscriptions,
        websub_pending_deliveries: owed,
    };
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.registry.xds().metrics().prometheus() + &st.metrics.prometheus(&gauges),
    ))
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(format!("No such resource: {}", uri.path()))
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "Method not allowed on this resource",
    )
}

fn management_routes() -> Router<AppState> {
    Router::new()
        .route("/rest-apis", get(apis::list).post(apis::create))
        .route(
            "/rest-apis/{id}/api-keys",
            get(api_keys::list).post(api_keys::create),
        )
        .route(
            "/rest-apis/{id}/api-keys/{key}",
            put(api_keys::update).delete(api_keys::revoke),
        )
        .route(
            "/rest-apis/{id}/api-keys/{key}/regenerate",
            post(api_keys::regenerate),
        )
        .route(
            "/rest-apis/{id}",
            get(apis::get).put(apis::update).delete(apis::delete),
        )
        .route("/websub-apis", get(apis::list).post(apis::create))
        .route(
            "/websub-apis/{id}/api-keys",
            get(api_keys::list).post(api_keys::create),
        )
        .route(
            "/websub-apis/{id}/api-keys/{key}",
            put(api_keys::update).delete(api_keys::revoke),
        )
        .route(
            "/websub-apis/{id}/api-keys/{key}/regenerate",
            post(api_keys::regenerate),
        )
        .route(
            "/websub-apis/{id}",
            get(apis::get).put(apis::update).delete(apis::delete),
        )
}

/// The full management router.
pub fn router(state: AppState) -> Router {
    let mut app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics));
    for base in BASE_PATHS {
        app = if base.is_empty() {
            app.merge(management_routes())
        } else {
            app.nest(base, management_routes())
        };
    }
    app.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}
