//! Pure translation of the policy-engine wiring: the ext_proc filter (off by default, fail
//! closed), its HTTP/2 cluster, the per-route switch that turns it on for operations with
//! policies, and the response headers built from the engine's rate-limit metadata.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::common::mutation_rules::v3::HeaderMutationRules;
use envoy_types::pb::envoy::config::core::v3::{
    GrpcService, HeaderValue, HeaderValueOption,
    grpc_service::{EnvoyGrpc, TargetSpecifier},
};
use envoy_types::pb::envoy::config::route::v3::FilterConfig;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::{
    ExtProcOverrides, ExtProcPerRoute, ExternalProcessor, MetadataOptions, ProcessingMode,
    ext_proc_per_route::Override,
    metadata_options::MetadataNamespaces,
    processing_mode::{BodySendMode, HeaderSendMode},
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions,
    http_protocol_options::{
        ExplicitHttpConfig, UpstreamProtocolOptions, explicit_http_config::ProtocolConfig,
    },
};
use envoy_types::pb::google::protobuf::{Any, BoolValue, Duration as PbDuration};
use envoy_types::util::pack_any;

use crate::clusters::{ClusterSettings, cluster};
use crate::model::{Scheme, Upstream};

/// Name of the ext_proc filter (also the key of its per-route configuration).
pub const EXT_PROC_FILTER: &str = "envoy.filters.http.ext_proc";
/// Name of the policy engine's cluster.
pub const POLICY_CLUSTER: &str = "policy_engine";
/// Dynamic-metadata namespace the engine writes rate-limit figures to.
pub const METADATA_NAMESPACE: &str = "gateway";
/// Headers built from that metadata on allowed responses (absent when the engine sent none).
pub const RATE_HEADERS: [(&str, &str); 5] = [
    ("X-RateLimit-Limit", "x-ratelimit-limit"),
    ("X-RateLimit-Remaining", "x-ratelimit-remaining"),
    ("X-RateLimit-Reset", "x-ratelimit-reset"),
    ("RateLimit-Policy", "ratelimit-policy"),
    ("RateLimit", "ratelimit"),
];

/// Where the policy engine listens and how long Envoy waits for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyEngineSettings {
    /// Host of the engine's ext_proc server.
    pub host: String,
    /// Port of the engine's ext_proc server.
    pub port: u16,
    /// Longest wait for a decision before the request fails (closed).
    pub timeout: Duration,
}

impl Default for PolicyEngineSettings {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 9001,
            timeout: Duration::from_millis(500),
        }
    }
}

fn duration(d: Duration) -> PbDuration {
    PbDuration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn headers_only() -> ProcessingMode {
    ProcessingMode {
        request_header_mode: HeaderSendMode::Send as i32,
        response_header_mode: HeaderSendMode::Skip as i32,
        request_body_mode: BodySendMode::None as i32,
        response_body_mode: BodySendMode::None as i32,
        request_trailer_mode: HeaderSendMode::Skip as i32,
        response_trailer_mode: HeaderSendMode::Skip as i32,
    }
}

/// The ext_proc filter: disabled unless a route turns it on; request headers only; fails closed.
pub fn ext_proc_filter(s: &PolicyEngineSettings) -> HttpFilter {
    let config = ExternalProcessor {
        grpc_service: Some(GrpcService {
            target_specifier: Some(TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
                cluster_name: POLICY_CLUSTER.into(),
                ..Default::default()
            })),
            timeout: Some(duration(s.timeout)),
            ..Default::default()
        }),
        failure_mode_allow: false,
        processing_mode: Some(headers_only()),
        request_attributes: vec!["xds.route_name".into()],
        message_timeout: Some(duration(s.timeout)),
        mutation_rules: Some(HeaderMutationRules {
            // The engine rewrites :path to drop a query-string API key.
            allow_all_routing: Some(BoolValue { value: true }),
            ..Default::default()
        }),
        metadata_options: Some(MetadataOptions {
            receiving_namespaces: Some(MetadataNamespaces {
                untyped: vec![METADATA_NAMESPACE.into()],
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    HttpFilter {
        name: EXT_PROC_FILTER.into(),
        disabled: true,
        config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(config))),
        ..Default::default()
    }
}

/// The per-route configuration that turns the ext_proc filter on.
pub fn enabled_on_route() -> Any {
    pack_any(FilterConfig {
        config: Some(pack_any(ExtProcPerRoute {
            r#override: Some(Override::Overrides(ExtProcOverrides {
                processing_mode: Some(headers_only()),
                ..Default::default()
            })),
        })),
        disabled: false,
        ..Default::default()
    })
}

/// Response headers carrying the engine's rate-limit figures.
pub fn rate_limit_headers() -> Vec<HeaderValueOption> {
    RATE_HEADERS
        .iter()
        .map(|(header, key)| HeaderValueOption {
            header: Some(HeaderValue {
                key: (*header).into(),
                value: format!("%DYNAMIC_METADATA({METADATA_NAMESPACE}:{key})%"),
                ..Default::default()
            }),
            keep_empty_value: false,
            ..Default::default()
        })
        .collect()
}

/// The policy engine's cluster: HTTP/2 (gRPC).
pub fn policy_cluster(s: &PolicyEngineSettings, clusters: &ClusterSettings) -> Cluster {
    let endpoint = Upstream {
        scheme: Scheme::Http,
        host: s.host.clone(),
        port: s.port,
        base_path: String::new(),
    };
    let mut c = cluster(&endpoint, clusters);
    c.name = POLICY_CLUSTER.into();
    if let Some(la) = c.load_assignment.as_mut() {
        la.cluster_name = POLICY_CLUSTER.into();
    }
    c.typed_extension_protocol_options.insert(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(),
        pack_any(HttpProtocolOptions {
            upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                ExplicitHttpConfig {
                    protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(Default::default())),
                },
            )),
            ..Default::default()
        }),
    );
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_is_off_by_default_and_fails_closed() {
        let f = ext_proc_filter(&PolicyEngineSettings::default());
        assert!(f.disabled);
        let Some(http_filter::ConfigType::TypedConfig(any)) = f.config_type else {
            panic!("no config")
        };
        let c: ExternalProcessor = prost::Message::decode(any.value.as_slice()).unwrap();
        assert!(!c.failure_mode_allow);
        assert_eq!(c.request_attributes, vec!["xds.route_name"]);
        assert_eq!(
            c.processing_mode.unwrap().response_header_mode,
            HeaderSendMode::Skip as i32
        );
    }

    #[test]
    fn cluster_speaks_http2() {
        let c = policy_cluster(
            &PolicyEngineSettings::default(),
            &ClusterSettings::default(),
        );
        assert_eq!(c.name, POLICY_CLUSTER);
        assert!(
            c.typed_extension_protocol_options
                .contains_key("envoy.extensions.upstreams.http.v3.HttpProtocolOptions")
        );
    }

    #[test]
    fn rate_headers_read_the_engine_metadata() {
        let h = rate_limit_headers();
        assert_eq!(h.len(), 5);
        assert_eq!(
            h[0].header.as_ref().unwrap().value,
            "%DYNAMIC_METADATA(gateway:x-ratelimit-limit)%"
        );
    }
}
