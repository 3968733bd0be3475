//! The management API's error shape: `{"status":"error","message":...,"errors":[{field,message}]}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tracing::error;

use crate::registry::RegistryError;
use crate::validate::FieldError;

/// An error answered to a management client.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// One-line summary.
    pub message: String,
    /// Field-level problems, if any.
    pub errors: Vec<FieldError>,
}

impl ApiError {
    /// An error without field details.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            errors: Vec::new(),
        }
    }

    /// 400 with field details.
    pub fn validation(errors: Vec<FieldError>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: "Configuration validation failed".into(),
            errors,
        }
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::NotFound(m) => Self::not_found(m),
            RegistryError::Conflict(m) => Self::new(StatusCode::CONFLICT, m),
            RegistryError::Store(err) => {
                error!(error = %err, "storage failure");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Storage is unavailable; nothing was changed",
                )
            }
            RegistryError::Xds(err) => {
                error!(error = %err, "router translation failure");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Router translation is unavailable",
                )
            }
            RegistryError::Poisoned => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "Registry is unavailable")
            }
        }
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        error!(error = %e, "management task failed");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "The request could not be completed",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"status": "error", "message": self.message, "errors": self.errors});
        let mut resp = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"api-gateway\""),
            );
        }
        resp
    }
}
