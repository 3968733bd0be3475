//! The policy chain of one operation and its evaluation for one request.
//!
//! Chain rules: an operation-level policy replaces the API-level policy of the same name for that
//! operation; authentication runs first whatever the listed order; the rest run in listed order,
//! API level before operation level. Rate-limit counters are keyed by API for API-level policies
//! (shared by every operation that does not override them) and by operation otherwise, so they
//! survive API updates; a request only counts if every policy allowed it.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::gcra::{Acquired, BucketKey, Limiter};
use crate::spec::{ApiKeyAuth, KeyLocation, Policy, PolicyKind};

/// Where a policy was attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Level {
    /// `spec.policies`.
    Api,
    /// `spec.operations[].policies`.
    Operation,
}

/// A policy in an operation's chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainEntry {
    /// The policy.
    pub policy: Policy,
    /// Where it was attached.
    pub level: Level,
}

/// The effective chain of an operation, in execution order.
pub fn build_chain(api: &[Policy], operation: &[Policy]) -> Vec<ChainEntry> {
    let overridden = |p: &Policy| operation.iter().any(|o| o.name == p.name);
    let api_level = api.iter().filter(|p| !overridden(p)).map(|p| ChainEntry {
        policy: p.clone(),
        level: Level::Api,
    });
    let op_level = operation.iter().map(|p| ChainEntry {
        policy: p.clone(),
        level: Level::Operation,
    });
    let (auth, rest): (Vec<ChainEntry>, Vec<ChainEntry>) =
        api_level.chain(op_level).partition(|e| e.policy.is_auth());
    auth.into_iter().chain(rest).collect()
}

/// Everything the engine knows about one route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteChain {
    /// Id of the API the route belongs to.
    pub api: String,
    /// The operation's route key (`GET /petstore/pet/{}`): the scope of operation-level counters.
    pub operation: String,
    /// The chain.
    pub entries: Vec<ChainEntry>,
}

/// Valid key hashes of one API with their expiry (Unix seconds), if any.
pub type KeySet = HashMap<String, Option<u64>>;

/// The parts of a request policies look at.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// Header names (lower case) and values.
    pub headers: &'a [(String, String)],
    /// `:path` including the query string.
    pub path: &'a str,
}

/// Rate-limit figures reported to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateReport {
    /// The limit's request count.
    pub limit: u64,
    /// Requests left.
    pub remaining: u64,
    /// Seconds until fully replenished (at least 1).
    pub reset_secs: u64,
    /// Window of the limit in seconds.
    pub window_secs: u64,
    /// Seconds to wait before retrying (refusals only, at least 1).
    pub retry_after_secs: u64,
}

/// The decision for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Forward it, with these changes.
    Allow {
        /// A header to remove (the API key) before the upstream sees the request.
        remove_header: Option<String>,
        /// A new `:path` (the API key removed from the query string).
        new_path: Option<String>,
        /// Rate-limit figures, when a rate limit applies.
        rate: Option<RateReport>,
    },
    /// No valid API key: 401.
    Unauthorized,
    /// Over a rate limit: 429.
    TooManyRequests(RateReport),
}

fn ceil_secs(ns: u128) -> u64 {
    ns.div_ceil(1_000_000_000).max(1) as u64
}

fn report(a: &Acquired) -> Option<RateReport> {
    a.most_restrictive().map(|s| RateReport {
        limit: s.limit,
        remaining: s.remaining,
        reset_secs: ceil_secs(s.reset_after_ns),
        window_secs: s.window_secs,
        retry_after_secs: ceil_secs(s.retry_after_ns),
    })
}

fn hex_digit(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Decodes `application/x-www-form-urlencoded` text (`+` and `%XX`); bad escapes stay as they are.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex_digit(bytes[i + 1]), hex_digit(bytes[i + 2]))
            {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Finds the presented key; for query keys also returns the path without that parameter.
fn presented_key(auth: &ApiKeyAuth, req: RequestView<'_>) -> Option<(String, Option<String>)> {
    let raw = match auth.location {
        KeyLocation::Header => {
            let v = req
                .headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(&auth.key))?
                .1
                .clone();
            (v, None)
        }
        KeyLocation::Query => {
            let (path, query) = req.path.split_once('?')?;
            let mut found = None;
            let mut kept = Vec::new();
            for pair in query.split('&') {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                if found.is_none() && percent_decode(k) == auth.key {
                    found = Some(percent_decode(v));
                } else if !pair.is_empty() {
                    kept.push(pair);
                }
            }
            let new_path = if kept.is_empty() {
                path.to_string()
            } else {
                format!("{path}?{}", kept.join("&"))
            };
            (found?, Some(new_path))
        }
    };
    let (value, new_path) = raw;
    let value = match &auth.value_prefix {
        Some(prefix) => value.strip_prefix(prefix.as_str())?.to_string(),
        None => value,
    };
    Some((value, new_path))
}

/// Evaluates `chain` for a request at `now_ns` (Unix nanoseconds). `keys` are the valid keys of
/// the chain's API.
pub fn evaluate(
    chain: &RouteChain,
    req: RequestView<'_>,
    keys: Option<&KeySet>,
    limiter: &Limiter,
    now_ns: u128,
) -> Verdict {
    let now_secs = (now_ns / 1_000_000_000) as u64;
    let mut remove_header = None;
    let mut new_path = None;
    let mut limits = Vec::new();
    for entry in &chain.entries {
        match &entry.policy.kind {
            PolicyKind::ApiKeyAuth(auth) => {
                let Some((value, path)) = presented_key(auth, req) else {
                    return Verdict::Unauthorized;
                };
                let hash = hex::encode(Sha256::digest(value.as_bytes()));
                match keys.and_then(|k| k.get(&hash)) {
                    Some(None) => {}
                    Some(Some(expires)) if *expires > now_secs => {}
                    _ => return Verdict::Unauthorized,
                }
                match auth.location {
                    KeyLocation::Header => remove_header = Some(auth.key.clone()),
                    KeyLocation::Query => new_path = path,
                }
            }
            PolicyKind::RateLimit(ls) => {
                let scope = match entry.level {
                    Level::Api => "api".to_string(),
                    Level::Operation => chain.operation.clone(),
                };
                for (index, l) in ls.iter().enumerate() {
                    let key = BucketKey {
                        api: chain.api.clone(),
                        scope: scope.clone(),
                        policy: entry.policy.name.clone(),
                        index,
                    };
                    limits.push((key, *l));
                }
            }
        }
    }
    if limits.is_empty() {
        return Verdict::Allow {
            remove_header,
            new_path,
            rate: None,
        };
    }
    let acquired = limiter.acquire(&limits, now_ns);
    let rate = report(&acquired);
    match (acquired.allowed, rate) {
        (false, Some(r)) => Verdict::TooManyRequests(r),
        (_, rate) => Verdict::Allow {
            remove_header,
            new_path,
            rate,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Limit;

    const S: u128 = 1_000_000_000;

    fn key_auth(key: &str, location: KeyLocation, prefix: Option<&str>) -> Policy {
        Policy {
            name: "api-key-auth".into(),
            kind: PolicyKind::ApiKeyAuth(ApiKeyAuth {
                key: key.into(),
                location,
                value_prefix: prefix.map(str::to_string),
            }),
        }
    }

    fn limit(name: &str, requests: u64, window_secs: u64) -> Policy {
        Policy {
            name: name.into(),
            kind: PolicyKind::RateLimit(vec![Limit {
                requests,
                window_secs,
            }]),
        }
    }

    fn names(c: &[ChainEntry]) -> Vec<(String, Level)> {
        c.iter().map(|e| (e.policy.name.clone(), e.level)).collect()
    }

    fn hash(v: &str) -> String {
        hex::encode(Sha256::digest(v.as_bytes()))
    }

    #[test]
    fn query_values_are_form_decoded() {
        assert_eq!(percent_decode("a%2Db+c"), "a-b c");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%aé%"), "%aé%");
    }

    #[test]
    fn operation_policies_override_by_name_and_auth_runs_first() {
        let api = [
            limit("rate-limit", 1000, 3600),
            key_auth("x-api-key", KeyLocation::Header, None),
        ];
        let op = [limit("rate-limit", 100, 60)];
        assert_eq!(
            names(&build_chain(&api, &op)),
            vec![
                ("api-key-auth".into(), Level::Api),
                ("rate-limit".into(), Level::Operation)
            ]
        );
        let other = [limit("basic-ratelimit", 5, 60)];
        assert_eq!(
            names(&build_chain(&api, &other)),
            vec![
                ("api-key-auth".into(), Level::Api),
                ("rate-limit".into(), Level::Api),
                ("basic-ratelimit".into(), Level::Operation)
            ]
        );
        assert!(build_chain(&[], &[]).is_empty());
    }

    fn chain(entries: Vec<ChainEntry>, op: &str) -> RouteChain {
        RouteChain {
            api: "pets".into(),
            operation: op.into(),
            entries,
        }
    }

    #[test]
    fn api_keys_from_headers_and_queries() {
        let keys: KeySet = HashMap::from([(hash("good-key"), None), (hash("old-key"), Some(100))]);
        let limiter = Limiter::default();
        let c = chain(
            build_chain(&[key_auth("x-api-key", KeyLocation::Header, None)], &[]),
            "GET /p",
        );
        let h = |v: &str| vec![("x-api-key".to_string(), v.to_string())];
        let eval = |headers: &[(String, String)], path: &str, keys: Option<&KeySet>, now: u128| {
            evaluate(&c, RequestView { headers, path }, keys, &limiter, now)
        };
        assert_eq!(
            eval(&h("good-key"), "/p", Some(&keys), 0),
            Verdict::Allow {
                remove_header: Some("x-api-key".into()),
                new_path: None,
                rate: None
            }
        );
        assert_eq!(
            eval(&h("bad-key"), "/p", Some(&keys), 0),
            Verdict::Unauthorized
        );
        assert_eq!(eval(&[], "/p", Some(&keys), 0), Verdict::Unauthorized);
        assert_eq!(
            eval(&h("good-key"), "/p", None, 0),
            Verdict::Unauthorized,
            "keys of another API do not count"
        );
        assert!(matches!(
            eval(&h("old-key"), "/p", Some(&keys), 99 * S),
            Verdict::Allow { .. }
        ));
        assert_eq!(
            eval(&h("old-key"), "/p", Some(&keys), 100 * S),
            Verdict::Unauthorized,
            "expired"
        );

        let q = chain(
            build_chain(&[key_auth("apikey", KeyLocation::Query, None)], &[]),
            "GET /p",
        );
        let v = evaluate(
            &q,
            RequestView {
                headers: &[],
                path: "/p/1?a=1&apikey=good%2Dkey&b=2",
            },
            Some(&keys),
            &limiter,
            0,
        );
        assert_eq!(
            v,
            Verdict::Allow {
                remove_header: None,
                new_path: Some("/p/1?a=1&b=2".into()),
                rate: None
            }
        );
        let v = evaluate(
            &q,
            RequestView {
                headers: &[],
                path: "/p/1?apikey=good-key",
            },
            Some(&keys),
            &limiter,
            0,
        );
        assert_eq!(
            v,
            Verdict::Allow {
                remove_header: None,
                new_path: Some("/p/1".into()),
                rate: None
            }
        );

        let b = chain(
            build_chain(
                &[key_auth(
                    "authorization",
                    KeyLocation::Header,
                    Some("Bearer "),
                )],
                &[],
            ),
            "GET /p",
        );
        let bearer = vec![("authorization".to_string(), "Bearer good-key".to_string())];
        assert!(matches!(
            evaluate(
                &b,
                RequestView {
                    headers: &bearer,
                    path: "/p"
                },
                Some(&keys),
                &limiter,
                0
            ),
            Verdict::Allow { .. }
        ));
        let bare = vec![("authorization".to_string(), "good-key".to_string())];
        assert_eq!(
            evaluate(
                &b,
                RequestView {
                    headers: &bare,
                    path: "/p"
                },
                Some(&keys),
                &limiter,
                0
            ),
            Verdict::Unauthorized
        );
    }

    #[test]
    fn rate_limits_share_api_counters_and_skip_refused_requests() {
        let limiter = Limiter::default();
        let keys: KeySet = HashMap::from([(hash("k"), None)]);
        let api = [
            key_auth("x-api-key", KeyLocation::Header, None),
            limit("rate-limit", 3, 60),
        ];
        let a = chain(build_chain(&api, &[]), "GET /a");
        let b = chain(build_chain(&api, &[]), "GET /b");
        let own = chain(build_chain(&api, &[limit("rate-limit", 1, 60)]), "GET /c");
        let ok = vec![("x-api-key".to_string(), "k".to_string())];
        let run = |c: &RouteChain, h: &[(String, String)]| {
            evaluate(
                c,
                RequestView {
                    headers: h,
                    path: "/",
                },
                Some(&keys),
                &limiter,
                0,
            )
        };
        // Unauthenticated requests do not count.
        for _ in 0..5 {
            assert_eq!(run(&a, &[]), Verdict::Unauthorized);
        }
        let Verdict::Allow { rate: Some(r), .. } = run(&a, &ok) else {
            panic!("first request allowed")
        };
        assert_eq!((r.limit, r.remaining, r.window_secs), (3, 2, 60));
        assert!(
            matches!(run(&b, &ok), Verdict::Allow { .. }),
            "the API counter is shared"
        );
        assert!(
            matches!(run(&own, &ok), Verdict::Allow { .. }),
            "an override has its own counter"
        );
        assert!(matches!(run(&own, &ok), Verdict::TooManyRequests(_)));
        assert!(matches!(run(&a, &ok), Verdict::Allow { .. }));
        let Verdict::TooManyRequests(r) = run(&b, &ok) else {
            panic!("the shared counter is exhausted")
        };
        assert_eq!((r.limit, r.remaining, r.retry_after_secs), (3, 0, 20));
    }
}
