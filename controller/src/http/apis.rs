//! The definition endpoints of both kinds, `/rest-apis` and `/websub-apis`: create, list, get,
//! update, delete. Only parsing and the rendering of top-level fields differ by kind.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Map, Value, json};

use super::body::read_document;
use super::error::ApiError;
use super::{AppState, Caller, DEFINITION_ROLES, ResourceKind, blocking, path_params};
use crate::model::ApiRequest;
use crate::registry::{ApiEntry, REST_API, kind_label};
use crate::validate::{FieldError, ValidApi, validate_rest_api};
use crate::websub::model::WebSubApiRequest;
use crate::websub::{WEBSUB_API, validate_websub_api};

fn typed<T: serde::de::DeserializeOwned>(doc: &Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(doc).map_err(|e| {
        let field = e.path().to_string();
        ApiError::validation(vec![FieldError {
            field: if field == "." { "body".into() } else { field },
            message: e.into_inner().to_string(),
        }])
    })
}

/// Parses and validates a request document of `kind`; returns the validated API and the
/// envelope to store.
fn parse(
    st: &AppState,
    kind: &str,
    doc: Value,
    path_name: Option<&str>,
) -> Result<(ValidApi, String), ApiError> {
    let valid = if kind == WEBSUB_API {
        let req: WebSubApiRequest = typed(&doc)?;
        validate_websub_api(&req, path_name, &st.hub)
    } else {
        let req: ApiRequest = typed(&doc)?;
        validate_rest_api(&req, path_name)
    }
    .map_err(ApiError::validation)?;
    let mut envelope = Map::new();
    for key in ["apiVersion", "kind", "metadata", "spec"] {
        if let Some(v) = doc.get(key) {
            envelope.insert(key.into(), v.clone());
        }
    }
    let meta = envelope.entry("metadata").or_insert_with(|| json!({}));
    if let Some(m) = meta.as_object_mut() {
        m.insert("name".into(), json!(valid.name));
    }
    Ok((valid, Value::Object(envelope).to_string()))
}

/// The resource as answered: the envelope as sent and the `status` block; a REST API also
/// carries the bottom-up guide's top-level fields.
pub fn render(e: &ApiEntry) -> Value {
    let r = &e.row;
    let mut v: Value = serde_json::from_str(&r.definition).unwrap_or_else(|_| json!({}));
    let policies = v
        .pointer("/spec/policies")
        .cloned()
        .unwrap_or_else(|| json!([]));
    let mut status = json!({"id": r.handle, "state": r.desired_state, "createdAt": r.created_at, "updatedAt": r.updated_at});
    if let Some(d) = &r.deployed_at {
        status["deployedAt"] = json!(d);
    }
    let Some(obj) = v.as_object_mut() else {
        return v;
    };
    obj.insert("status".into(), status);
    if r.kind == REST_API {
        obj.insert("uuid".into(), json!(r.uuid));
        obj.insert("displayName".into(), json!(r.display_name));
        obj.insert("version".into(), json!(r.version));
        obj.insert("context".into(), json!(r.context));
        obj.insert("policies".into(), policies);
        obj.insert("origin".into(), json!(r.origin));
        obj.insert("desiredState".into(), json!(r.desired_state));
        obj.insert("cpSyncStatus".into(), json!(r.cp_sync_status));
        if let Some(err) = &r.cp_sync_error {
            obj.insert("cpSyncError".into(), json!(err));
        }
        if let Some(id) = &r.cp_artifact_id {
            obj.insert("cpArtifactId".into(), json!(id));
        }
        if let Some(rev) = &r.cp_revision {
            obj.insert("cpRevisionId".into(), json!(rev));
        }
        obj.insert("createdAt".into(), json!(r.created_at));
    }
    v
}

/// `POST /rest-apis`, `POST /websub-apis`.
pub async fn create(
    State(st): State<AppState>,
    ResourceKind(kind): ResourceKind,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(DEFINITION_ROLES)?;
    let doc = read_document(&headers, body, st.max_body).await?;
    let (valid, definition) = parse(&st, kind, doc, None)?;
    let entry = blocking(&st.registry, move |r| r.create(valid, definition)).await?;
    Ok((StatusCode::CREATED, Json(render(&entry))))
}

/// `PUT /{kind}/{id}`.
pub async fn update(
    State(st): State<AppState>,
    ResourceKind(kind): ResourceKind,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    caller.require(DEFINITION_ROLES)?;
    let id = path_params::<String>(id)?;
    let doc = read_document(&headers, body, st.max_body).await?;
    // An unknown id is a 404 even when the body is also invalid.
    let target = id.clone();
    blocking(&st.registry, move |r| r.get(kind, &target)).await?;
    let (valid, definition) = parse(&st, kind, doc, Some(&id))?;
    let entry = blocking(&st.registry, move |r| r.update(valid, definition)).await?;
    Ok(Json(render(&entry)))
}

/// `GET /{kind}/{id}`.
pub async fn get(
    State(st): State<AppState>,
    ResourceKind(kind): ResourceKind,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.require(DEFINITION_ROLES)?;
    let id = path_params::<String>(id)?;
    let entry = blocking(&st.registry, move |r| r.get(kind, &id)).await?;
    Ok(Json(render(&entry)))
}

/// `DELETE /{kind}/{id}`.
pub async fn delete(
    State(st): State<AppState>,
    ResourceKind(kind): ResourceKind,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.require(DEFINITION_ROLES)?;
    let id = path_params::<String>(id)?;
    let target = id.clone();
    blocking(&st.registry, move |r| r.delete(kind, &target)).await?;
    let label = kind_label(kind);
    Ok(Json(
        json!({"status": "success", "message": format!("{label} deleted successfully"), "id": id}),
    ))
}

fn matches(e: &ApiEntry, key: &str, want: &str) -> bool {
    let r = &e.row;
    match key {
        "displayName" => r.display_name == want,
        "version" => r.version == want,
        "context" => r.context == want || e.valid.as_ref().is_some_and(|v| v.context_raw == want),
        "status" => r.desired_state.eq_ignore_ascii_case(want),
        _ => true,
    }
}

/// `GET /{kind}?displayName=&version=&context=&status=`.
pub async fn list(
    State(st): State<AppState>,
    ResourceKind(kind): ResourceKind,
    caller: Caller,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    caller.require(DEFINITION_ROLES)?;
    let filters: Vec<(String, String)> =
        url::form_urlencoded::parse(q.unwrap_or_default().as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
    let all = blocking(&st.registry, move |r| r.list(kind)).await?;
    let apis: Vec<Value> = all
        .iter()
        .filter(|e| filters.iter().all(|(k, v)| matches(e, k, v)))
        .map(|e| render(e))
        .collect();
    Ok(Json(
        json!({"status": "success", "count": apis.len(), "apis": apis}),
    ))
}
