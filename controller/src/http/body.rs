//! Reading management request bodies: size limit, content type, JSON or YAML.

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::Value;

use super::error::ApiError;

/// Largest oversized body read (and discarded) before answering 413.
const DRAIN_LIMIT: usize = 16 << 20;

/// How long a client may take to send a request body.
const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Yaml,
    Sniff,
}

fn format_of(headers: &HeaderMap) -> Result<Format, ApiError> {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return Ok(Format::Sniff);
    };
    let ct = ct
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match ct.as_str() {
        "application/json" => Ok(Format::Json),
        "application/yaml" | "application/x-yaml" | "text/yaml" => Ok(Format::Yaml),
        "" => Ok(Format::Sniff),
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Unsupported content type '{other}': use application/json or application/yaml"),
        )),
    }
}

/// Why a body could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// Over the limit (in bytes).
    TooLarge(usize),
    /// Not received within [`BODY_READ_TIMEOUT`].
    Timeout,
    /// The connection failed while reading.
    Read(String),
}

impl BodyError {
    /// The HTTP status answering this error.
    pub fn status(&self) -> StatusCode {
        match self {
            BodyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::Timeout => StatusCode::REQUEST_TIMEOUT,
            BodyError::Read(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// A message for the client.
    pub fn message(&self) -> String {
        match self {
            BodyError::TooLarge(limit) => {
                format!("Request body exceeds the limit of {limit} bytes")
            }
            BodyError::Timeout => "The request body was not received in time".into(),
            BodyError::Read(e) => format!("Failed to read request body: {e}"),
        }
    }
}

/// Reads a body of at most `limit` bytes. A larger body is refused; it is still read (and
/// discarded, up to `DRAIN_LIMIT`) so that the client, which may still be sending, receives the
/// answer instead of a reset connection.
pub async fn read_limited(
    headers: &HeaderMap,
    mut body: Body,
    limit: usize,
) -> Result<Vec<u8>, BodyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let drain = DRAIN_LIMIT.max(limit);
    if declared.is_some_and(|n| n > drain as u64) {
        return Err(BodyError::TooLarge(limit));
    }
    let read = async {
        let mut buf = Vec::new();
        let mut seen = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| BodyError::Read(e.to_string()))?;
            if let Ok(data) = frame.into_data() {
                seen = seen.saturating_add(data.len());
                if seen > drain {
                    break;
                }
                if seen <= limit {
                    buf.extend_from_slice(&data);
                }
            }
        }
        if seen > limit {
            Err(BodyError::TooLarge(limit))
        } else {
            Ok(buf)
        }
    };
    tokio::time::timeout(BODY_READ_TIMEOUT, read)
        .await
        .unwrap_or(Err(BodyError::Timeout))
}

/// [`read_limited`] with the management API's error shape.
pub async fn read_bytes(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Vec<u8>, ApiError> {
    read_limited(headers, body, limit)
        .await
        .map_err(|e| ApiError::new(e.status(), e.message()))
}

fn parse_json(bytes: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("failed to parse JSON: {e}"))
}

fn parse_yaml(bytes: &[u8]) -> Result<Value, String> {
    serde_yaml_ng::from_slice(bytes).map_err(|e| format!("failed to parse YAML: {e}"))
}

/// Reads and parses a JSON or YAML document (by content type; sniffed when none is given).
pub async fn read_document(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Value, ApiError> {
    read_document_or(headers, body, limit, None).await
}

/// Like [`read_document`], but an empty body stands for `empty` (for bodies that are optional).
pub async fn read_optional_document(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Value, ApiError> {
    read_document_or(
        headers,
        body,
        limit,
        Some(Value::Object(Default::default())),
    )
    .await
}

async fn read_document_or(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    empty: Option<Value>,
) -> Result<Value, ApiError> {
    let format = format_of(headers)?;
    let bytes = read_bytes(headers, body, limit).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return empty.ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "Failed to parse configuration: the request body is empty",
            )
        });
    }
    let parsed = match format {
        Format::Json => parse_json(&bytes),
        Format::Yaml => parse_yaml(&bytes),
        Format::Sniff => parse_json(&bytes).or_else(|_| parse_yaml(&bytes)),
    };
    let value = parsed.map_err(|m| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("Failed to parse configuration: {m}"),
        )
    })?;
    if !value.is_object() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "Failed to parse configuration: the document must be an object with apiVersion, kind, metadata and spec",
        ));
    }
    Ok(value)
}
