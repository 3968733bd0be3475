//! `/{kind}/{id}/api-keys` handlers: create, list, regenerate, set a custom value, revoke.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::body::read_optional_document;
use super::error::ApiError;
use super::{AppState, Caller, KEY_ROLES, ResourceKind, blocking, path_params};
use crate::keys::{self, ExpiresIn};
use crate::registry::{IssuedKey, KeyRequest, key_active, now};
use crate::store::KeyRow;
use crate::validate::FieldError;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateKey {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    api_key: Option<String>,
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    expires_in: Option<ExpiresIn>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Expiry {
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    expires_in: Option<ExpiresIn>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SetValue {
    #[serde(default)]
    api_key: Option<String>,
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    expires_in: Option<ExpiresIn>,
}

fn bad(field: &str, message: impl Into<String>) -> ApiError {
    ApiError {
        status: StatusCode::BAD_REQUEST,
        message: "Invalid API key request".into(),
        errors: vec![FieldError {
            field: field.into(),
            message: message.into(),
        }],
    }
}

fn typed<T: DeserializeOwned>(doc: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(doc).map_err(|e| {
        let field = e.path().to_string();
        bad(
            if field == "." { "body" } else { &field },
            e.into_inner().to_string(),
        )
    })
}

fn is_key_name(s: &str) -> bool {
    s != "."
        && s != ".."
        && (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn expiry(at: Option<&str>, within: Option<&ExpiresIn>) -> Result<Option<String>, ApiError> {
    keys::expiry(at, within, chrono::Utc::now()).map_err(|e| bad("expiresAt", e.to_string()))
}

/// A freshly generated key value (503 if the OS random source fails).
fn generated_key() -> Result<String, ApiError> {
    keys::generate().map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
}

fn key_json(api: &str, k: &KeyRow, shown: &str) -> Value {
    json!({
        "id": k.uuid,
        "name": k.name,
        "displayName": k.display_name,
        "apiKey": shown,
        "apiId": api,
        "status": if key_active(k, &now()) { "active" } else { "expired" },
        "createdAt": k.created_at,
        "createdBy": k.created_by,
        "expiresAt": k.expires_at,
        "source": k.source,
    })
}

/// The answer of create, regenerate and update: the reference's `apiKey` object plus the
/// bottom-up guide's top-level `uuid`, `name`, `key`, `createdAt`.
fn issued(api: &str, k: &IssuedKey, shown: &str, message: &str) -> Value {
    json!({
        "status": "success",
        "message": message,
        "remainingApiKeyQuota": k.remaining_quota,
        "apiKey": key_json(api, &k.row, shown),
        "uuid": k.row.uuid,
        "name": k.row.name,
        "key": shown,
        "createdAt": k.row.created_at,
    })
}

/// `POST /{kind}/{id}/api-keys`.
pub async fn create(
    State(st): State<AppState>,
    kind: ResourceKind,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(KEY_ROLES)?;
    let id: String = path_params(id)?;
    let req: CreateKey = typed(read_optional_document(&headers, body, st.max_body).await?)?;
    let name = match req.name {
        Some(n) if is_key_name(&n) => n,
        Some(_) => {
            return Err(bad(
                "name",
                "name must be 1-63 characters of letters, digits, '.', '_' or '-'",
            ));
        }
        None => format!("key-{}", &generated_key()?[5..17]),
    };
    let display_name = req.display_name.unwrap_or_else(|| name.clone());
    if display_name.is_empty()
        || display_name.len() > 100
        || display_name.chars().any(char::is_control)
    {
        return Err(bad(
            "displayName",
            "displayName must be 1-100 characters without control characters",
        ));
    }
    let (value, source) = match req.api_key {
        Some(v) => {
            keys::check_custom(&v).map_err(|e| bad("apiKey", e.to_string()))?;
            (v, "external")
        }
        None => (generated_key()?, "local"),
    };
    let expires_at = expiry(req.expires_at.as_deref(), req.expires_in.as_ref())?;
    let (quota, user) = (st.key_quota, caller.0.username.clone());
    let shown = value.clone();
    let request = KeyRequest {
        name,
        display_name,
        value,
        source,
        expires_at,
    };
    let target = id.clone();
    let k = blocking(&st.registry, move |r| {
        r.create_key(kind.0, &target, request, &user, quota)
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(issued(&id, &k, &shown, "API key generated successfully")),
    ))
}

/// `GET /{kind}/{id}/api-keys`.
pub async fn list(
    State(st): State<AppState>,
    kind: ResourceKind,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.require(KEY_ROLES)?;
    let id: String = path_params(id)?;
    let target = id.clone();
    let all = blocking(&st.registry, move |r| r.list_keys(kind.0, &target)).await?;
    let keys: Vec<Value> = all.iter().map(|k| key_json(&id, k, &k.masked)).collect();
    Ok(Json(
        json!({"status": "success", "totalCount": keys.len(), "apiKeys": keys}),
    ))
}

/// `POST /{kind}/{id}/api-keys/{key}/regenerate`.
pub async fn regenerate(
    State(st): State<AppState>,
    kind: ResourceKind,
    caller: Caller,
    p: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    caller.require(KEY_ROLES)?;
    let (id, key): (String, String) = path_params(p)?;
    let req: Expiry = typed(read_optional_document(&headers, body, st.max_body).await?)?;
    let expires_at = expiry(req.expires_at.as_deref(), req.expires_in.as_ref())?;
    let value = generated_key()?;
    let (shown, quota, target) = (value.clone(), st.key_quota, id.clone());
    let k = blocking(&st.registry, move |r| {
        r.replace_key_value(kind.0, &target, &key, &value, "local", expires_at, quota)
    })
    .await?;
    Ok(Json(issued(
        &id,
        &k,
        &shown,
        "API key regenerated successfully",
    )))
}

/// `PUT /{kind}/{id}/api-keys/{key}`: sets a caller-supplied value.
pub async fn update(
    State(st): State<AppState>,
    kind: ResourceKind,
    caller: Caller,
    p: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    caller.require(KEY_ROLES)?;
    let (id, key): (String, String) = path_params(p)?;
    let req: SetValue = typed(read_optional_document(&headers, body, st.max_body).await?)?;
    let value = req
        .api_key
        .ok_or_else(|| bad("apiKey", "apiKey is required"))?;
    keys::check_custom(&value).map_err(|e| bad("apiKey", e.to_string()))?;
    let expires_at = expiry(req.expires_at.as_deref(), req.expires_in.as_ref())?;
    let (quota, target) = (st.key_quota, id.clone());
    let k = blocking(&st.registry, move |r| {
        r.replace_key_value(kind.0, &target, &key, &value, "external", expires_at, quota)
    })
    .await?;
    let masked = k.row.masked.clone();
    Ok(Json(issued(
        &id,
        &k,
        &masked,
        "API key updated successfully",
    )))
}

/// `DELETE /{kind}/{id}/api-keys/{key}`.
pub async fn revoke(
    State(st): State<AppState>,
    kind: ResourceKind,
    caller: Caller,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.require(KEY_ROLES)?;
    let (id, key): (String, String) = path_params(p)?;
    blocking(&st.registry, move |r| r.revoke_key(kind.0, &id, &key)).await?;
    Ok(Json(
        json!({"status": "success", "message": "API key revoked successfully"}),
    ))
}
