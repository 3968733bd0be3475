//! The policies the gateway knows and their typed parameters, parsed (and validated, with field
//! paths) from the `name` / `version` / `params` a user attaches to an API or an operation.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Names and latest major versions of the supported policies.
pub const CATALOGUE: [(&str, u32); 3] = [
    ("api-key-auth", 1),
    ("rate-limit", 1),
    ("basic-ratelimit", 1),
];

/// One validation problem, with the path of the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Path of the offending field, e.g. `spec.policies[0].params.limit`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Where a client sends its API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyLocation {
    /// A request header (matched case-insensitively).
    Header,
    /// A query parameter.
    Query,
}

/// `api-key-auth` parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyAuth {
    /// Header or query parameter name (headers lower-cased).
    pub key: String,
    /// Header or query.
    pub location: KeyLocation,
    /// Optional prefix before the value, e.g. `Bearer `.
    pub value_prefix: Option<String>,
}

/// One limit: `requests` per `window_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limit {
    /// Requests allowed per window.
    pub requests: u64,
    /// Window length in seconds.
    pub window_secs: u64,
}

/// What a policy does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PolicyKind {
    /// Requires a valid API key of the API.
    ApiKeyAuth(ApiKeyAuth),
    /// Limits request rates; every limit applies.
    RateLimit(Vec<Limit>),
}

/// A policy attached to an API or an operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// The policy name as attached (`rate-limit` and `basic-ratelimit` are different names).
    pub name: String,
    /// Its typed parameters.
    pub kind: PolicyKind,
}

impl Policy {
    /// Authentication policies run before all others.
    pub fn is_auth(&self) -> bool {
        matches!(self.kind, PolicyKind::ApiKeyAuth(_))
    }
}

fn err(errors: &mut Vec<FieldError>, field: String, message: impl Into<String>) {
    errors.push(FieldError {
        field,
        message: message.into(),
    });
}

fn params_object<'a>(
    params: &'a Option<Value>,
    at: &str,
    errors: &mut Vec<FieldError>,
) -> Option<&'a Map<String, Value>> {
    match params {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(m),
        Some(_) => {
            err(errors, at.to_string(), "params must be an object");
            None
        }
    }
}

fn reject_unknown(
    m: &Map<String, Value>,
    allowed: &[&str],
    at: &str,
    errors: &mut Vec<FieldError>,
) {
    for k in m.keys().filter(|k| !allowed.contains(&k.as_str())) {
        err(
            errors,
            format!("{at}.{k}"),
            format!("unknown parameter '{k}' (allowed: {})", allowed.join(", ")),
        );
    }
}

fn positive_int(v: Option<&Value>, field: String, errors: &mut Vec<FieldError>) -> Option<u64> {
    match v {
        None => err(errors, field, "is required"),
        Some(v) if v.as_u64().is_some_and(|n| n > 0) => return v.as_u64(),
        Some(_) => err(errors, field, "must be a positive integer"),
    }
    None
}

/// Parses durations such as `30s`, `1m`, `1h`, `1d`, `1w` (a positive integer and one unit).
pub fn parse_duration_secs(s: &str) -> Option<u64> {
    let s = s.trim();
    let unit_at = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(unit_at);
    let n: u64 = num.parse().ok().filter(|n| *n > 0)?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return None,
    };
    n.checked_mul(mult)
}

fn header_name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn api_key_auth(
    m: Option<&Map<String, Value>>,
    at: &str,
    errors: &mut Vec<FieldError>,
) -> ApiKeyAuth {
    let empty = Map::new();
    let m = m.unwrap_or(&empty);
    reject_unknown(m, &["key", "in", "valuePrefix"], at, errors);
    let location = match m.get("in") {
        None => KeyLocation::Header,
        Some(Value::String(s)) if s == "header" => KeyLocation::Header,
        Some(Value::String(s)) if s == "query" => KeyLocation::Query,
        Some(_) => {
            err(errors, format!("{at}.in"), "must be 'header' or 'query'");
            KeyLocation::Header
        }
    };
    let key = match m.get("key") {
        None => "API-Key".to_string(),
        Some(Value::String(k)) if location == KeyLocation::Header && header_name_ok(k) => k.clone(),
        Some(Value::String(k))
            if location == KeyLocation::Query
                && !k.is_empty()
                && !k.contains(['&', '=', '#', ' ', '?']) =>
        {
            k.clone()
        }
        Some(_) => {
            let what = if location == KeyLocation::Header {
                "header"
            } else {
                "query parameter"
            };
            err(
                errors,
                format!("{at}.key"),
                format!("must be a valid {what} name"),
            );
            String::new()
        }
    };
    let value_prefix = match m.get("valuePrefix") {
        None => None,
        Some(Value::String(p)) if p.len() <= 64 && !p.contains(['\r', '\n']) => {
            Some(p.clone()).filter(|p| !p.is_empty())
        }
        Some(_) => {
            err(
                errors,
                format!("{at}.valuePrefix"),
                "must be a string of at most 64 characters",
            );
            None
        }
    };
    let key = if location == KeyLocation::Header {
        key.to_ascii_lowercase()
    } else {
        key
    };
    ApiKeyAuth {
        key,
        location,
        value_prefix,
    }
}

fn rate_limit(
    m: Option<&Map<String, Value>>,
    at: &str,
    errors: &mut Vec<FieldError>,
) -> Vec<Limit> {
    let Some(m) = m else {
        err(errors, at.to_string(), "'limit' and 'window' are required");
        return Vec::new();
    };
    reject_unknown(m, &["limit", "window"], at, errors);
    let requests = positive_int(m.get("limit"), format!("{at}.limit"), errors);
    let window = positive_int(m.get("window"), format!("{at}.window"), errors);
    match (requests, window) {
        (Some(requests), Some(window_secs)) => vec![Limit {
            requests,
            window_secs,
        }],
        _ => Vec::new(),
    }
}

fn basic_ratelimit(
    m: Option<&Map<String, Value>>,
    at: &str,
    errors: &mut Vec<FieldError>,
) -> Vec<Limit> {
    let Some(m) = m else {
        err(errors, at.to_string(), "'limits' is required");
        return Vec::new();
    };
    reject_unknown(m, &["limits"], at, errors);
    let mut out = Vec::new();
    match m.get("limits") {
        Some(Value::Array(items)) if !items.is_empty() => {
            for (i, item) in items.iter().enumerate() {
                let f = format!("{at}.limits[{i}]");
                let Some(o) = item.as_object() else {
                    err(
                        errors,
                        f,
                        "must be an object with 'requests' and 'duration'",
                    );
                    continue;
                };
                reject_unknown(o, &["requests", "duration"], &f, errors);
                let requests = positive_int(o.get("requests"), format!("{f}.requests"), errors);
                let window = o
                    .get("duration")
                    .and_then(Value::as_str)
                    .and_then(parse_duration_secs);
                if window.is_none() {
                    err(
                        errors,
                        format!("{f}.duration"),
                        "must be a duration such as 30s, 1m, 1h or 1d",
                    );
                }
                if let (Some(requests), Some(window_secs)) = (requests, window) {
                    out.push(Limit {
                        requests,
                        window_secs,
                    });
                }
            }
        }
        _ => err(
            errors,
            format!("{at}.limits"),
            "must be a non-empty list of {requests, duration}",
        ),
    }
    out
}

fn check_version(
    name: &str,
    version: Option<&str>,
    latest: u32,
    at: &str,
    errors: &mut Vec<FieldError>,
) -> bool {
    let Some(v) = version else { return true };
    let digits = v
        .strip_prefix('v')
        .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()));
    match digits.and_then(|d| d.parse::<u32>().ok()) {
        Some(m) if m == latest => true,
        Some(_) => {
            err(
                errors,
                format!("{at}.version"),
                format!("policy '{name}' version '{v}' not found (available: v{latest})"),
            );
            false
        }
        None if v.starts_with('v')
            && v[1..]
                .split('.')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())) =>
        {
            err(
                errors,
                format!("{at}.version"),
                format!(
                    "policy '{name}' version must be major-only (e.g., v1); full semantic version '{v}' is not allowed"
                ),
            );
            false
        }
        None => {
            err(
                errors,
                format!("{at}.version"),
                format!(
                    "invalid version format '{v}' for policy '{name}'; expected major-only version (e.g., v1)"
                ),
            );
            false
        }
    }
}

/// Parses one policy attachment found at field path `at` (e.g. `spec.policies[0]`). Problems are
/// appended to `errors`; `None` is returned when any was found.
pub fn parse_policy(
    name: Option<&str>,
    version: Option<&str>,
    params: &Option<Value>,
    at: &str,
    errors: &mut Vec<FieldError>,
) -> Option<Policy> {
    let before = errors.len();
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        err(errors, format!("{at}.name"), "Policy name is required");
        return None;
    };
    let Some((_, latest)) = CATALOGUE.iter().find(|(n, _)| *n == name) else {
        let known: Vec<&str> = CATALOGUE.iter().map(|(n, _)| *n).collect();
        err(
            errors,
            format!("{at}.name"),
            format!(
                "Policy '{name}' not found (available: {})",
                known.join(", ")
            ),
        );
        return None;
    };
    if !check_version(name, version, *latest, at, errors) {
        return None;
    }
    let at_params = format!("{at}.params");
    let m = params_object(params, &at_params, errors);
    let kind = match name {
        "api-key-auth" => PolicyKind::ApiKeyAuth(api_key_auth(m, &at_params, errors)),
        "rate-limit" => PolicyKind::RateLimit(rate_limit(m, &at_params, errors)),
        _ => PolicyKind::RateLimit(basic_ratelimit(m, &at_params, errors)),
    };
    (errors.len() == before).then(|| Policy {
        name: name.to_string(),
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(name: &str, version: Option<&str>, params: Value) -> Result<Policy, Vec<String>> {
        let mut errors = Vec::new();
        parse_policy(
            Some(name),
            version,
            &Some(params),
            "spec.policies[0]",
            &mut errors,
        )
        .ok_or_else(|| {
            errors
                .into_iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect()
        })
    }

    #[test]
    fn seed_policies_parse_into_typed_parameters() {
        assert_eq!(
            parse(
                "api-key-auth",
                Some("v1"),
                json!({"key": "X-API-Key", "in": "header"})
            )
            .unwrap()
            .kind,
            PolicyKind::ApiKeyAuth(ApiKeyAuth {
                key: "x-api-key".into(),
                location: KeyLocation::Header,
                value_prefix: None
            })
        );
        assert_eq!(
            parse("api-key-auth", None, json!({})).unwrap().kind,
            PolicyKind::ApiKeyAuth(ApiKeyAuth {
                key: "api-key".into(),
                location: KeyLocation::Header,
                value_prefix: None
            })
        );
        assert_eq!(
            parse(
                "api-key-auth",
                None,
                json!({"key": "apikey", "in": "query", "valuePrefix": "Bearer "})
            )
            .unwrap()
            .kind,
            PolicyKind::ApiKeyAuth(ApiKeyAuth {
                key: "apikey".into(),
                location: KeyLocation::Query,
                value_prefix: Some("Bearer ".into())
            })
        );
        assert_eq!(
            parse(
                "rate-limit",
                Some("v1"),
                json!({"limit": 1000, "window": 3600})
            )
            .unwrap()
            .kind,
            PolicyKind::RateLimit(vec![Limit {
                requests: 1000,
                window_secs: 3600
            }])
        );
        assert_eq!(
            parse("basic-ratelimit", Some("v1"), json!({"limits": [{"requests": 5, "duration": "1h"}, {"requests": 10, "duration": "1d"}]}))
                .unwrap()
                .kind,
            PolicyKind::RateLimit(vec![Limit { requests: 5, window_secs: 3600 }, Limit { requests: 10, window_secs: 86_400 }])
        );
    }

    #[test]
    fn bad_policies_name_the_field() {
        assert_eq!(
            parse("nope", Some("v1"), json!({})).unwrap_err()[0]
                .split(':')
                .next(),
            Some("spec.policies[0].name")
        );
        assert!(
            parse("rate-limit", Some("v1.0.0"), json!({})).unwrap_err()[0].contains("major-only")
        );
        assert!(parse("rate-limit", Some("v2"), json!({})).unwrap_err()[0].contains("not found"));
        assert!(
            parse("rate-limit", Some("latest"), json!({})).unwrap_err()[0]
                .contains("invalid version format")
        );
        assert!(
            parse("rate-limit", Some("v+1"), json!({})).unwrap_err()[0]
                .contains("invalid version format")
        );
        assert_eq!(
            parse(
                "rate-limit",
                Some("v1"),
                json!({"limit": "ten", "window": 0})
            )
            .unwrap_err(),
            vec![
                "spec.policies[0].params.limit: must be a positive integer",
                "spec.policies[0].params.window: must be a positive integer"
            ]
        );
        assert!(
            parse("api-key-auth", None, json!({"in": "cookie"})).unwrap_err()[0]
                .starts_with("spec.policies[0].params.in")
        );
        assert!(
            parse("api-key-auth", None, json!({"key": "bad header"})).unwrap_err()[0]
                .starts_with("spec.policies[0].params.key")
        );
        assert!(
            parse("api-key-auth", None, json!({"extra": 1})).unwrap_err()[0]
                .contains("unknown parameter")
        );
        assert!(
            parse(
                "basic-ratelimit",
                None,
                json!({"limits": [{"requests": 5, "duration": "soon"}]})
            )
            .unwrap_err()[0]
                .starts_with("spec.policies[0].params.limits[0].duration")
        );
        assert!(
            parse("rate-limit", None, json!(7)).unwrap_err()[0]
                .contains("params must be an object")
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_secs("30s"), Some(30));
        assert_eq!(parse_duration_secs("1h"), Some(3600));
        assert_eq!(parse_duration_secs("2d"), Some(172_800));
        assert_eq!(parse_duration_secs("0s"), None);
        assert_eq!(parse_duration_secs("1.5h"), None);
        assert_eq!(parse_duration_secs("h"), None);
    }
}
