//! The policies the gateway knows, and deploy-time validation of their versions and parameters.

use serde_json::{Map, Value};

use crate::validate::FieldError;

/// Names and latest major versions of the supported policies.
pub const CATALOGUE: [(&str, u32); 3] = [
    ("api-key-auth", 1),
    ("rate-limit", 1),
    ("basic-ratelimit", 1),
];

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

fn positive_int(v: Option<&Value>, field: String, errors: &mut Vec<FieldError>) {
    match v {
        None => err(errors, field, "is required"),
        Some(v) if v.as_u64().is_some_and(|n| n > 0) => {}
        Some(_) => err(errors, field, "must be a positive integer"),
    }
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

fn check_api_key_auth(m: Option<&Map<String, Value>>, at: &str, errors: &mut Vec<FieldError>) {
    let Some(m) = m else { return };
    reject_unknown(m, &["key", "in", "valuePrefix"], at, errors);
    let location = match m.get("in") {
        None => "header",
        Some(Value::String(s)) if s == "header" || s == "query" => s.as_str(),
        Some(_) => {
            err(errors, format!("{at}.in"), "must be 'header' or 'query'");
            "header"
        }
    };
    match m.get("key") {
        None => {}
        Some(Value::String(k)) if location == "header" && header_name_ok(k) => {}
        Some(Value::String(k))
            if location == "query" && !k.is_empty() && !k.contains(['&', '=', '#', ' ']) => {}
        Some(_) => err(
            errors,
            format!("{at}.key"),
            format!("must be a valid {location} name"),
        ),
    }
    if let Some(v) = m.get("valuePrefix")
        && !v
            .as_str()
            .is_some_and(|s| s.len() <= 64 && !s.contains(['\r', '\n']))
    {
        err(
            errors,
            format!("{at}.valuePrefix"),
            "must be a string of at most 64 characters",
        );
    }
}

fn check_rate_limit(m: Option<&Map<String, Value>>, at: &str, errors: &mut Vec<FieldError>) {
    let Some(m) = m else {
        err(errors, at.to_string(), "'limit' and 'window' are required");
        return;
    };
    reject_unknown(m, &["limit", "window"], at, errors);
    positive_int(m.get("limit"), format!("{at}.limit"), errors);
    positive_int(m.get("window"), format!("{at}.window"), errors);
}

fn check_basic_ratelimit(m: Option<&Map<String, Value>>, at: &str, errors: &mut Vec<FieldError>) {
    let Some(m) = m else {
        err(errors, at.to_string(), "'limits' is required");
        return;
    };
    reject_unknown(m, &["limits"], at, errors);
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
                positive_int(o.get("requests"), format!("{f}.requests"), errors);
                if o.get("duration")
                    .and_then(Value::as_str)
                    .and_then(parse_duration_secs)
                    .is_none()
                {
                    err(
                        errors,
                        format!("{f}.duration"),
                        "must be a duration such as 30s, 1m, 1h or 1d",
                    );
                }
            }
        }
        _ => err(
            errors,
            format!("{at}.limits"),
            "must be a non-empty list of {requests, duration}",
        ),
    }
}

/// Validates one policy attachment at field path `at` (e.g. `spec.policies[0]`).
pub fn validate_policy(
    name: Option<&str>,
    version: Option<&str>,
    params: &Option<Value>,
    at: &str,
    errors: &mut Vec<FieldError>,
) {
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        err(errors, format!("{at}.name"), "Policy name is required");
        return;
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
        return;
    };
    if let Some(v) = version {
        let major = v
            .strip_prefix('v')
            .and_then(|d| d.parse::<u32>().ok())
            .filter(|_| !v[1..].starts_with('+'));
        match major {
            Some(m) if m == *latest => {}
            Some(_) => {
                err(
                    errors,
                    format!("{at}.version"),
                    format!("policy '{name}' version '{v}' not found (available: v{latest})"),
                );
                return;
            }
            None if v.starts_with('v') && v[1..].split('.').all(|p| p.parse::<u32>().is_ok()) => {
                err(
                    errors,
                    format!("{at}.version"),
                    format!(
                        "policy '{name}' version must be major-only (e.g., v1); full semantic version '{v}' is not allowed"
                    ),
                );
                return;
            }
            None => {
                err(
                    errors,
                    format!("{at}.version"),
                    format!(
                        "invalid version format '{v}' for policy '{name}'; expected major-only version (e.g., v1)"
                    ),
                );
                return;
            }
        }
    }
    let at_params = format!("{at}.params");
    let m = params_object(params, &at_params, errors);
    match name {
        "api-key-auth" => check_api_key_auth(m, &at_params, errors),
        "rate-limit" => check_rate_limit(m, &at_params, errors),
        _ => check_basic_ratelimit(m, &at_params, errors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(name: &str, version: Option<&str>, params: Value) -> Vec<String> {
        let mut errors = Vec::new();
        validate_policy(
            Some(name),
            version,
            &Some(params),
            "spec.policies[0]",
            &mut errors,
        );
        errors
            .into_iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect()
    }

    #[test]
    fn seed_policies_are_valid() {
        assert!(
            check(
                "api-key-auth",
                Some("v1"),
                json!({"key": "X-API-Key", "in": "header"})
            )
            .is_empty()
        );
        assert!(check("api-key-auth", None, json!({})).is_empty());
        assert!(
            check(
                "rate-limit",
                Some("v1"),
                json!({"limit": 1000, "window": 3600})
            )
            .is_empty()
        );
        assert!(
            check(
                "basic-ratelimit",
                Some("v1"),
                json!({"limits": [{"requests": 5, "duration": "1h"}]})
            )
            .is_empty()
        );
    }

    #[test]
    fn bad_policies_name_the_field() {
        assert_eq!(
            check("nope", Some("v1"), json!({}))[0].split(':').next(),
            Some("spec.policies[0].name")
        );
        assert!(check("rate-limit", Some("v1.0.0"), json!({}))[0].contains("major-only"));
        assert!(check("rate-limit", Some("v2"), json!({}))[0].contains("not found"));
        assert!(
            check("rate-limit", Some("latest"), json!({}))[0].contains("invalid version format")
        );
        assert_eq!(
            check(
                "rate-limit",
                Some("v1"),
                json!({"limit": "ten", "window": 0})
            ),
            vec![
                "spec.policies[0].params.limit: must be a positive integer",
                "spec.policies[0].params.window: must be a positive integer"
            ]
        );
        assert!(
            check("api-key-auth", None, json!({"in": "cookie"}))[0]
                .starts_with("spec.policies[0].params.in")
        );
        assert!(
            check("api-key-auth", None, json!({"key": "bad header"}))[0]
                .starts_with("spec.policies[0].params.key")
        );
        assert!(check("api-key-auth", None, json!({"extra": 1}))[0].contains("unknown parameter"));
        assert!(
            check(
                "basic-ratelimit",
                None,
                json!({"limits": [{"requests": 5, "duration": "soon"}]})
            )[0]
            .starts_with("spec.policies[0].params.limits[0].duration")
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
