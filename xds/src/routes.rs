//! Pure translation of APIs into Envoy routes and the route configuration.
//!
//! The virtual host uses a `matcher` tree: a prefix map on `:path` keyed by each API context, each
//! leaf a `RouteList` holding the routes of the APIs at that context and at its ancestor contexts,
//! ordered by precedence, then a JSON 404. Lookup cost is therefore independent of how many APIs
//! are deployed (a flat route list is scanned linearly by Envoy).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{
    DataSource, HeaderValue, HeaderValueOption, data_source::Specifier,
    header_value_option::HeaderAppendAction,
};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, HeaderMatcher, Route, RouteAction, RouteConfiguration, RouteList,
    RouteMatch, VirtualHost,
    header_matcher::HeaderMatchSpecifier,
    route::Action,
    route_action::{ClusterSpecifier, HostRewriteSpecifier},
    route_match::PathSpecifier,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    HttpRequestHeaderMatchInput, RegexMatchAndSubstitute, RegexMatcher, StringMatcher,
    string_matcher::MatchPattern,
};
use envoy_types::pb::google::protobuf::{BoolValue, Duration as PbDuration};
use envoy_types::pb::xds::core::v3::TypedExtensionConfig;
use envoy_types::pb::xds::r#type::matcher::v3::{
    Matcher,
    matcher::{
        MatcherTree, MatcherType, OnMatch,
        matcher_tree::{MatchMap, TreeType},
        on_match,
    },
};
use envoy_types::util::pack_any;
use sha2::{Digest, Sha256};

use crate::clusters::cluster_name;
use crate::model::{ApiRoutes, Operation, PathPattern, Segment, Upstream, context_prefix};

/// Name of the single route configuration the listener asks for over RDS.
pub const ROUTE_CONFIG_NAME: &str = "gateway_routes";
/// Body of the catch-all answer for paths no API serves.
pub const NOT_FOUND_BODY: &str = r#"{"error":"Not Found"}"#;
/// Body answered on routes whose policies cannot be enforced: they fail closed.
pub const POLICY_UNAVAILABLE_BODY: &str = r#"{"error":"Service Unavailable","message":"Policy enforcement is not available for this route"}"#;

/// Knobs of route translation that come from the gateway configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSettings {
    /// Upstream response timeout per request.
    pub route_timeout: Duration,
}

impl Default for RouteSettings {
    fn default() -> Self {
        Self {
            route_timeout: Duration::from_secs(60),
        }
    }
}

/// Ordering of routes inside a list: literal before `{param}` before `/*`, then more segments
/// first, then segment by segment (literal before parameter), then by text for determinism.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Precedence {
    class: u8,
    segments: Reverse<usize>,
    ranks: Vec<u8>,
    text: String,
    method: String,
    api: String,
}

/// A translated route with its precedence.
#[derive(Debug, Clone)]
pub struct RankedRoute {
    /// Where the route sorts among others that may match the same request.
    pub precedence: Precedence,
    /// The Envoy route.
    pub route: Route,
}

fn json_header() -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: "content-type".into(),
            value: "application/json".into(),
            ..Default::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

fn direct_response(status: u32, body: &str) -> Action {
    Action::DirectResponse(DirectResponseAction {
        status,
        body: Some(DataSource {
            specifier: Some(Specifier::InlineString(body.to_string())),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The catch-all route: any path, a JSON 404.
pub fn not_found_route() -> Route {
    Route {
        name: "not-found".into(),
        r#match: Some(RouteMatch {
            path_specifier: Some(PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        action: Some(direct_response(404, NOT_FOUND_BODY)),
        response_headers_to_add: vec![json_header()],
        ..Default::default()
    }
}

/// RE2 pattern matching exactly the request paths an operation serves under a context.
pub fn path_regex(context: &str, path: &PathPattern) -> String {
    let mut re = String::from("^");
    re.push_str(&regex_syntax::escape(context_prefix(context)));
    for seg in &path.segments {
        re.push('/');
        match seg {
            Segment::Literal(l) => re.push_str(&regex_syntax::escape(l)),
            Segment::Param(_) => re.push_str("[^/]+"),
        }
    }
    if path.wildcard {
        re.push_str("(?:/.*)?");
    } else if path.is_literal() {
        // Literal paths (including the operation "/") match with or without one trailing slash.
        re.push_str("/?");
    }
    re.push('$');
    re
}

/// The path rewrite that strips the context and prepends the upstream base path, or `None` when
/// the path passes through unchanged.
pub fn path_rewrite(context: &str, base_path: &str) -> Option<(String, String)> {
    let ctx = context_prefix(context);
    if ctx.is_empty() && base_path.is_empty() {
        return None;
    }
    let escaped = regex_syntax::escape(ctx);
    if base_path.is_empty() {
        // Keep the remainder absolute: "/ctx" and "/ctx/" both become "/".
        Some((format!("^{escaped}/?(.*)$"), r"/\1".to_string()))
    } else {
        Some((format!("^{escaped}(.*)$"), format!(r"{base_path}\1")))
    }
}

fn exact(value: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(MatchPattern::Exact(value.into())),
        ..Default::default()
    }
}

fn regex(re: String) -> RegexMatcher {
    RegexMatcher {
        regex: re,
        ..Default::default()
    }
}

/// Name of the route serving one operation: `<api id>|<METHOD>|<operation path>`.
pub fn route_name(api: &ApiRoutes, op: &Operation) -> String {
    format!("{}|{}|{}", api.id, op.method, op.path)
}

fn precedence(api: &ApiRoutes, op: &Operation) -> Precedence {
    let ctx_segments = context_prefix(&api.context)
        .split('/')
        .filter(|s| !s.is_empty())
        .count();
    let mut ranks = vec![0u8; ctx_segments];
    ranks.extend(op.path.segments.iter().map(|s| match s {
        Segment::Literal(_) => 0,
        Segment::Param(_) => 1,
    }));
    Precedence {
        class: op.path.class(),
        segments: Reverse(ranks.len()),
        ranks,
        text: format!("{}{}", context_prefix(&api.context), op.path),
        method: op.method.clone(),
        api: api.id.clone(),
    }
}

/// Translates one operation of an API into its route.
pub fn operation_route(api: &ApiRoutes, op: &Operation, settings: &RouteSettings) -> RankedRoute {
    let r#match = RouteMatch {
        path_specifier: Some(PathSpecifier::SafeRegex(regex(path_regex(
            &api.context,
            &op.path,
        )))),
        headers: vec![HeaderMatcher {
            name: ":method".into(),
            header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(exact(&op.method))),
            ..Default::default()
        }],
        ..Default::default()
    };
    let (action, response_headers_to_add) = if op.guarded {
        (
            direct_response(503, POLICY_UNAVAILABLE_BODY),
            vec![json_header()],
        )
    } else {
        let regex_rewrite =
            path_rewrite(&api.context, &api.upstream.base_path).map(|(pattern, substitution)| {
                RegexMatchAndSubstitute {
                    pattern: Some(regex(pattern)),
                    substitution,
                }
            });
        let action = RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster(cluster_name(&api.upstream))),
            regex_rewrite,
            host_rewrite_specifier: Some(HostRewriteSpecifier::AutoHostRewrite(BoolValue {
                value: true,
            })),
            timeout: Some(PbDuration {
                seconds: settings.route_timeout.as_secs() as i64,
                nanos: settings.route_timeout.subsec_nanos() as i32,
            }),
            ..Default::default()
        };
        (Action::Route(action), Vec::new())
    };
    RankedRoute {
        precedence: precedence(api, op),
        route: Route {
            name: route_name(api, op),
            r#match: Some(r#match),
            action: Some(action),
            response_headers_to_add,
            ..Default::default()
        },
    }
}

/// Translates every operation of an API into ranked routes.
pub fn api_routes(api: &ApiRoutes, settings: &RouteSettings) -> Vec<RankedRoute> {
    api.operations
        .iter()
        .map(|op| operation_route(api, op, settings))
        .collect()
}

/// The upstream an API's routes forward to (none when every operation fails closed).
pub fn forwarded_upstream(api: &ApiRoutes) -> Option<&Upstream> {
    api.operations
        .iter()
        .any(|op| !op.guarded)
        .then_some(&api.upstream)
}

fn route_list_action(routes: Vec<Route>) -> OnMatch {
    OnMatch {
        on_match: Some(on_match::OnMatch::Action(TypedExtensionConfig {
            name: "routes".into(),
            typed_config: Some(pack_any(RouteList { routes })),
        })),
        ..Default::default()
    }
}

/// The contexts that are path-segment ancestors of `context`, the root `/` included.
fn ancestors(context: &str) -> Vec<String> {
    let mut out = Vec::new();
    if context == "/" {
        return out;
    }
    let mut cur = context;
    while let Some(idx) = cur.rfind('/') {
        cur = &cur[..idx];
        out.push(if cur.is_empty() {
            "/".to_string()
        } else {
            cur.to_string()
        });
    }
    out
}

struct ApiEntry {
    context: String,
    routes: Vec<RankedRoute>,
    upstream: Option<Upstream>,
    fingerprint: [u8; 32],
}

#[derive(Default)]
struct ContextEntry {
    apis: BTreeSet<String>,
    cached: Option<OnMatch>,
}

/// The route table of every deployed API, with per-context pieces cached so that a change only
/// re-translates the APIs it touches.
pub struct RouteTable {
    settings: RouteSettings,
    apis: BTreeMap<String, ApiEntry>,
    contexts: BTreeMap<String, ContextEntry>,
}

/// A hash of an API's translation input: equal inputs give equal routes.
pub fn fingerprint(api: &ApiRoutes) -> [u8; 32] {
    let encoded = serde_json::to_vec(api).unwrap_or_default();
    Sha256::digest(&encoded).into()
}

impl RouteTable {
    /// An empty table.
    pub fn new(settings: RouteSettings) -> Self {
        Self {
            settings,
            apis: BTreeMap::new(),
            contexts: BTreeMap::new(),
        }
    }

    /// Number of APIs in the table.
    pub fn len(&self) -> usize {
        self.apis.len()
    }

    /// True when no API is deployed.
    pub fn is_empty(&self) -> bool {
        self.apis.is_empty()
    }

    fn invalidate(&mut self, context: &str) {
        if context == "/" {
            self.contexts.values_mut().for_each(|c| c.cached = None);
            return;
        }
        if let Some(c) = self.contexts.get_mut(context) {
            c.cached = None;
        }
        let below = format!("{context}/");
        for (_, c) in self
            .contexts
            .range_mut(below.clone()..)
            .take_while(|(k, _)| k.starts_with(&below))
        {
            c.cached = None;
        }
    }

    /// Adds or replaces an API. Returns false when the API was already present unchanged.
    pub fn upsert(&mut self, api: &ApiRoutes) -> bool {
        let fp = fingerprint(api);
        if self.apis.get(&api.id).is_some_and(|e| e.fingerprint == fp) {
            return false;
        }
        self.remove(&api.id);
        self.invalidate(&api.context);
        self.contexts
            .entry(api.context.clone())
            .or_default()
            .apis
            .insert(api.id.clone());
        self.apis.insert(
            api.id.clone(),
            ApiEntry {
                context: api.context.clone(),
                routes: api_routes(api, &self.settings),
                upstream: forwarded_upstream(api).cloned(),
                fingerprint: fp,
            },
        );
        true
    }

    /// Removes an API. Returns false when it was not present.
    pub fn remove(&mut self, id: &str) -> bool {
        let Some(old) = self.apis.remove(id) else {
            return false;
        };
        self.invalidate(&old.context);
        if let Some(c) = self.contexts.get_mut(&old.context) {
            c.apis.remove(id);
            if c.apis.is_empty() {
                self.contexts.remove(&old.context);
            }
        }
        true
    }

    /// Every upstream some route forwards to, by cluster name.
    pub fn upstreams(&self) -> BTreeMap<String, Upstream> {
        self.apis
            .values()
            .filter_map(|e| e.upstream.as_ref())
            .map(|u| (cluster_name(u), u.clone()))
            .collect()
    }

    /// Version of the route configuration: changes exactly when some API's translation input does.
    pub fn version(&self) -> String {
        let mut h = Sha256::new();
        for (id, e) in &self.apis {
            h.update(id.as_bytes());
            h.update([0]);
            h.update(e.fingerprint);
        }
        hex::encode(&h.finalize()[..12])
    }

    fn list_for(&self, context: &str) -> OnMatch {
        let mut ranked: Vec<&RankedRoute> = Vec::new();
        let mut contexts = vec![context.to_string()];
        contexts.extend(ancestors(context));
        for ctx in &contexts {
            if let Some(c) = self.contexts.get(ctx) {
                for id in &c.apis {
                    if let Some(e) = self.apis.get(id) {
                        ranked.extend(e.routes.iter());
                    }
                }
            }
        }
        ranked.sort_by(|a, b| a.precedence.cmp(&b.precedence));
        let mut routes: Vec<Route> = ranked.into_iter().map(|r| r.route.clone()).collect();
        routes.push(not_found_route());
        route_list_action(routes)
    }

    /// Builds the route configuration, reusing the cached lists of untouched contexts.
    pub fn route_configuration(&mut self) -> RouteConfiguration {
        let stale: Vec<String> = self
            .contexts
            .iter()
            .filter(|(_, c)| c.cached.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        for ctx in stale {
            let list = self.list_for(&ctx);
            if let Some(c) = self.contexts.get_mut(&ctx) {
                c.cached = Some(list);
            }
        }
        let mut vhost = VirtualHost {
            name: "gateway".into(),
            domains: vec!["*".into()],
            ..Default::default()
        };
        if self.contexts.is_empty() {
            vhost.routes = vec![not_found_route()];
        } else {
            let map = self
                .contexts
                .iter()
                .filter_map(|(k, c)| c.cached.clone().map(|m| (k.clone(), m)))
                .collect();
            vhost.matcher = Some(Matcher {
                matcher_type: Some(MatcherType::MatcherTree(MatcherTree {
                    input: Some(TypedExtensionConfig {
                        name: "path".into(),
                        typed_config: Some(pack_any(HttpRequestHeaderMatchInput {
                            header_name: ":path".into(),
                        })),
                    }),
                    tree_type: Some(TreeType::PrefixMatchMap(MatchMap { map })),
                })),
                on_no_match: Some(Box::new(route_list_action(vec![not_found_route()]))),
            });
        }
        RouteConfiguration {
            name: ROUTE_CONFIG_NAME.into(),
            virtual_hosts: vec![vhost],
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Scheme, Upstream};
    use prost::Message;

    fn api(id: &str, context: &str, ops: &[(&str, &str)]) -> ApiRoutes {
        ApiRoutes {
            id: id.into(),
            context: context.into(),
            upstream: Upstream {
                scheme: Scheme::Http,
                host: "127.0.0.1".into(),
                port: 9080,
                base_path: "/api/v2".into(),
            },
            operations: ops
                .iter()
                .map(|(m, p)| Operation {
                    method: (*m).into(),
                    path: PathPattern::parse(p).unwrap(),
                    guarded: false,
                })
                .collect(),
        }
    }

    fn list_names(cfg: &RouteConfiguration, key: &str) -> Vec<String> {
        let Some(MatcherType::MatcherTree(tree)) =
            &cfg.virtual_hosts[0].matcher.as_ref().unwrap().matcher_type
        else {
            panic!("no tree")
        };
        let Some(TreeType::PrefixMatchMap(map)) = &tree.tree_type else {
            panic!("no map")
        };
        let Some(on_match::OnMatch::Action(action)) = &map.map[key].on_match else {
            panic!("no action")
        };
        let list =
            RouteList::decode(action.typed_config.as_ref().unwrap().value.as_slice()).unwrap();
        list.routes.into_iter().map(|r| r.name).collect()
    }

    #[test]
    fn path_regexes() {
        let p = |s| PathPattern::parse(s).unwrap();
        assert_eq!(
            path_regex("/petstore", &p("/pet/{petId}")),
            "^/petstore/pet/[^/]+$"
        );
        assert_eq!(
            path_regex("/petstore", &p("/store/inventory")),
            "^/petstore/store/inventory/?$"
        );
        assert_eq!(path_regex("/petstore", &p("/")), "^/petstore/?$");
        assert_eq!(
            path_regex("/weather/v1.0", &p("/*")),
            r"^/weather/v1\.0(?:/.*)?$"
        );
        assert_eq!(path_regex("/w", &p("/forecast/*")), "^/w/forecast(?:/.*)?$");
        assert_eq!(path_regex("/", &p("/")), "^/?$");
        assert_eq!(path_regex("/", &p("/a")), "^/a/?$");
    }

    #[test]
    fn path_rewrites() {
        assert_eq!(
            path_rewrite("/weather/v1.0", "/api/v2"),
            Some((
                r"^/weather/v1\.0(.*)$".to_string(),
                r"/api/v2\1".to_string()
            ))
        );
        assert_eq!(
            path_rewrite("/petstore", ""),
            Some(("^/petstore/?(.*)$".to_string(), r"/\1".to_string()))
        );
        assert_eq!(path_rewrite("/", ""), None);
        assert_eq!(
            path_rewrite("/", "/base"),
            Some(("^(.*)$".to_string(), r"/base\1".to_string()))
        );
    }

    #[test]
    fn operation_route_forwards_to_cluster_with_method_match() {
        let a = api("PetStore", "/petstore", &[("GET", "/pet/{petId}")]);
        let r = operation_route(&a, &a.operations[0], &RouteSettings::default()).route;
        assert_eq!(r.name, "PetStore|GET|/pet/{}");
        let m = r.r#match.unwrap();
        assert_eq!(m.headers[0].name, ":method");
        let Some(Action::Route(action)) = r.action else {
            panic!("not a route action")
        };
        assert_eq!(
            action.cluster_specifier,
            Some(ClusterSpecifier::Cluster(
                "upstream_http_127_0_0_1_9080".into()
            ))
        );
        assert_eq!(action.regex_rewrite.unwrap().substitution, r"/api/v2\1");
    }

    #[test]
    fn guarded_operations_fail_closed() {
        let mut a = api("P", "/p", &[("GET", "/x")]);
        a.operations[0].guarded = true;
        let r = operation_route(&a, &a.operations[0], &RouteSettings::default()).route;
        let Some(Action::DirectResponse(d)) = r.action else {
            panic!("expected direct response")
        };
        assert_eq!(d.status, 503);
        assert!(forwarded_upstream(&a).is_none());
    }

    #[test]
    fn lists_are_ordered_by_precedence_and_include_ancestors() {
        let mut t = RouteTable::new(RouteSettings::default());
        t.upsert(&api(
            "a",
            "/a",
            &[("GET", "/*"), ("GET", "/b/{x}"), ("GET", "/b/c")],
        ));
        t.upsert(&api("ab", "/a/b", &[("GET", "/*"), ("POST", "/{id}")]));
        let cfg = t.route_configuration();
        assert_eq!(
            list_names(&cfg, "/a"),
            vec!["a|GET|/b/c", "a|GET|/b/{}", "a|GET|/*", "not-found"]
        );
        assert_eq!(
            list_names(&cfg, "/a/b"),
            vec![
                "a|GET|/b/c",
                "a|GET|/b/{}",
                "ab|POST|/{}",
                "ab|GET|/*",
                "a|GET|/*",
                "not-found"
            ]
        );
    }

    #[test]
    fn versions_follow_content_and_removal_restores() {
        let mut t = RouteTable::new(RouteSettings::default());
        let empty = t.version();
        assert!(t.upsert(&api("a", "/a", &[("GET", "/x")])));
        let v1 = t.version();
        assert!(
            !t.upsert(&api("a", "/a", &[("GET", "/x")])),
            "unchanged upsert is a no-op"
        );
        assert_eq!(t.version(), v1);
        assert!(t.remove("a"));
        assert_eq!(t.version(), empty);
        assert!(t.route_configuration().virtual_hosts[0].matcher.is_none());
    }

    #[test]
    fn cached_lists_are_rebuilt_for_descendants() {
        let mut t = RouteTable::new(RouteSettings::default());
        t.upsert(&api("ab", "/a/b", &[("GET", "/x")]));
        t.route_configuration();
        t.upsert(&api("root", "/", &[("GET", "/*")]));
        let cfg = t.route_configuration();
        assert_eq!(
            list_names(&cfg, "/a/b"),
            vec!["ab|GET|/x", "root|GET|/*", "not-found"]
        );
        assert_eq!(list_names(&cfg, "/"), vec!["root|GET|/*", "not-found"]);
    }
}
