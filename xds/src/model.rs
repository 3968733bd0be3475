//! The router's view of a deployed API: the input to every translation in this crate.

use std::fmt;

use serde::Serialize;

/// One deployed API as the router needs it: where it lives and where it sends traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiRoutes {
    /// Stable unique identifier of the API (its `metadata.name`).
    pub id: String,
    /// Resolved context (`$version` substituted), `/` for the root context.
    pub context: String,
    /// The main upstream that every operation forwards to.
    pub upstream: Upstream,
    /// Operations in the order the user declared them.
    pub operations: Vec<Operation>,
}

/// One operation of an API: a method and a path template below the context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Operation {
    /// Upper-case HTTP method.
    pub method: String,
    /// Parsed operation path.
    pub path: PathPattern,
    /// Whether policies apply to this operation (API or operation level): Envoy then consults the
    /// policy engine before forwarding.
    pub guarded: bool,
    /// Whether a rate limit applies: the route then returns the engine's rate-limit figures as
    /// response headers.
    pub rate_limited: bool,
}

/// URL scheme of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS, verified against the configured trust roots.
    Https,
}

impl Scheme {
    /// The scheme as written in URLs.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// An upstream endpoint parsed from an absolute http(s) URL.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Upstream {
    /// http or https.
    pub scheme: Scheme,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// Port, defaulted from the scheme when the URL has none.
    pub port: u16,
    /// Path prefix prepended to forwarded requests, without a trailing slash (`""` for none).
    pub base_path: String,
}

/// One segment of an operation path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Segment {
    /// A literal segment that must match exactly.
    Literal(String),
    /// A `{name}` segment matching exactly one non-empty segment.
    Param(String),
}

/// A parsed operation path: literal and `{param}` segments, optionally ending in `/*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PathPattern {
    /// Segments between the context and an optional trailing wildcard.
    pub segments: Vec<Segment>,
    /// True when the path ends in `/*` (matches the prefix itself and anything below it).
    pub wildcard: bool,
}

/// Why an operation path was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/`.
    #[error("must start with '/'")]
    NoLeadingSlash,
    /// Two slashes in a row.
    #[error("must not contain empty segments ('//')")]
    EmptySegment,
    /// A `*` somewhere other than a trailing `/*`.
    #[error("'*' is only allowed as a trailing '/*'")]
    MisplacedWildcard,
    /// Braces that do not enclose a whole segment, or an empty/invalid name.
    #[error("parameters must be whole segments of the form {{name}} with letters, digits or '_'")]
    BadParam,
    /// A character outside the allowed set.
    #[error("contains a character that is not allowed: {0:?}")]
    BadChar(char),
    /// `.` or `..` segments.
    #[error("must not contain '.' or '..' segments")]
    DotSegment,
}

/// Characters allowed in a literal path segment (RFC 3986 pchar without `%`-decoding subtleties).
fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()+,;=:@%".contains(c)
}

impl PathPattern {
    /// Parses an operation path such as `/pet/{petId}`, `/store/*` or `/`.
    pub fn parse(path: &str) -> Result<Self, PathError> {
        let rest = path.strip_prefix('/').ok_or(PathError::NoLeadingSlash)?;
        let mut segments = Vec::new();
        let mut wildcard = false;
        if rest.is_empty() {
            return Ok(Self { segments, wildcard });
        }
        let parts: Vec<&str> = rest.split('/').collect();
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            if part.is_empty() {
                // A single trailing slash ("/pet/") is tolerated: literal paths match with or without it.
                if last && i > 0 {
                    break;
                }
                return Err(PathError::EmptySegment);
            }
            if *part == "*" {
                if !last {
                    return Err(PathError::MisplacedWildcard);
                }
                wildcard = true;
                continue;
            }
            if part.contains('*') {
                return Err(PathError::MisplacedWildcard);
            }
            if *part == "." || *part == ".." {
                return Err(PathError::DotSegment);
            }
            if part.contains('{') || part.contains('}') {
                let name = part
                    .strip_prefix('{')
                    .and_then(|p| p.strip_suffix('}'))
                    .ok_or(PathError::BadParam)?;
                if name.is_empty()
                    || !name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
                {
                    return Err(PathError::BadParam);
                }
                segments.push(Segment::Param(name.to_string()));
                continue;
            }
            if let Some(c) = part.chars().find(|c| !is_path_char(*c)) {
                return Err(PathError::BadChar(c));
            }
            segments.push(Segment::Literal((*part).to_string()));
        }
        Ok(Self { segments, wildcard })
    }

    /// True when the path has no `{param}` segment and no wildcard.
    pub fn is_literal(&self) -> bool {
        !self.wildcard
            && self
                .segments
                .iter()
                .all(|s| matches!(s, Segment::Literal(_)))
    }

    /// Precedence class: 0 literal, 1 with parameters, 2 with a wildcard.
    pub fn class(&self) -> u8 {
        if self.wildcard {
            2
        } else if self.is_literal() {
            0
        } else {
            1
        }
    }
}

/// Renders the pattern in canonical form: parameters as `{}` so that two templates that match the
/// same requests render the same (`/pet/{id}` and `/pet/{petId}` are both `/pet/{}`).
impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.segments {
            match s {
                Segment::Literal(l) => write!(f, "/{l}")?,
                Segment::Param(_) => f.write_str("/{}")?,
            }
        }
        if self.wildcard {
            f.write_str("/*")?;
        }
        if self.segments.is_empty() && !self.wildcard {
            f.write_str("/")?;
        }
        Ok(())
    }
}

/// The canonical key of the requests a route serves, used to detect two deployed operations that
/// would serve the same method and full path: `GET /petstore/pet/{}`.
pub fn route_key(context: &str, method: &str, path: &PathPattern) -> String {
    let ctx = context_prefix(context);
    let p = path.to_string();
    if p == "/" {
        format!("{method} {}", if ctx.is_empty() { "/" } else { ctx })
    } else {
        format!("{method} {ctx}{p}")
    }
}

/// The context as a path prefix: `""` for the root context, the context itself otherwise.
pub fn context_prefix(context: &str) -> &str {
    if context == "/" { "" } else { context }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_templates_and_wildcards() {
        let p = PathPattern::parse("/pet/{petId}/photos").unwrap();
        assert_eq!(
            p.segments,
            vec![
                Segment::Literal("pet".into()),
                Segment::Param("petId".into()),
                Segment::Literal("photos".into())
            ]
        );
        assert!(!p.wildcard);
        assert_eq!(p.class(), 1);
        let w = PathPattern::parse("/forecast/*").unwrap();
        assert!(w.wildcard);
        assert_eq!(w.to_string(), "/forecast/*");
        assert_eq!(PathPattern::parse("/").unwrap().to_string(), "/");
        assert_eq!(PathPattern::parse("/*").unwrap().to_string(), "/*");
        assert_eq!(PathPattern::parse("/pet/").unwrap().to_string(), "/pet");
    }

    #[test]
    fn rejects_malformed_paths() {
        assert_eq!(PathPattern::parse("pet"), Err(PathError::NoLeadingSlash));
        assert_eq!(PathPattern::parse("/a//b"), Err(PathError::EmptySegment));
        assert_eq!(
            PathPattern::parse("/a/*/b"),
            Err(PathError::MisplacedWildcard)
        );
        assert_eq!(PathPattern::parse("/a*"), Err(PathError::MisplacedWildcard));
        assert_eq!(PathPattern::parse("/a{b}"), Err(PathError::BadParam));
        assert_eq!(PathPattern::parse("/{}"), Err(PathError::BadParam));
        assert_eq!(PathPattern::parse("/{a"), Err(PathError::BadParam));
        assert_eq!(PathPattern::parse("/a b"), Err(PathError::BadChar(' ')));
        assert_eq!(PathPattern::parse("/a/../b"), Err(PathError::DotSegment));
    }

    #[test]
    fn route_keys_ignore_parameter_names() {
        let a = PathPattern::parse("/pet/{id}").unwrap();
        let b = PathPattern::parse("/pet/{petId}").unwrap();
        assert_eq!(
            route_key("/petstore", "GET", &a),
            route_key("/petstore", "GET", &b)
        );
        assert_eq!(route_key("/petstore", "GET", &a), "GET /petstore/pet/{}");
        let root = PathPattern::parse("/").unwrap();
        assert_eq!(route_key("/", "GET", &root), "GET /");
        assert_eq!(route_key("/p", "GET", &root), "GET /p");
        // Context /a + /b/c and context /a/b + /c serve the same requests.
        assert_eq!(
            route_key("/a", "GET", &PathPattern::parse("/b/c").unwrap()),
            route_key("/a/b", "GET", &PathPattern::parse("/c").unwrap())
        );
    }
}
