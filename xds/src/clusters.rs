//! Pure translation of upstream URLs into Envoy clusters, one per scheme, host and port.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster,
    circuit_breakers::Thresholds,
    cluster::{ClusterDiscoveryType, DiscoveryType, DnsLookupFamily},
};
use envoy_types::pb::envoy::config::core::v3::{
    Address, DataSource, SocketAddress, TransportSocket, address, data_source::Specifier,
    socket_address::PortSpecifier, transport_socket::ConfigType,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint::HostIdentifier,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, SubjectAltNameMatcher, UpstreamTlsContext,
    common_tls_context::ValidationContextType, subject_alt_name_matcher::SanType,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};
use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
use envoy_types::util::pack_any;

use sha2::{Digest, Sha256};

use crate::model::{Scheme, Upstream};

/// Knobs of cluster translation that come from the gateway configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// TCP connect timeout to upstreams.
    pub connect_timeout: Duration,
    /// PEM bundle of trusted roots used to verify https upstreams.
    pub trusted_ca_file: PathBuf,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            trusted_ca_file: PathBuf::from("/etc/ssl/certs/ca-certificates.crt"),
        }
    }
}

/// The cluster name shared by every API that forwards to the same scheme, host and port. A hash
/// of the exact triple keeps names unique when the readable part is sanitised (`a.b` vs `a_b`).
pub fn cluster_name(u: &Upstream) -> String {
    let host: String = u
        .host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let digest = Sha256::digest(format!("{}://{}:{}", u.scheme.as_str(), u.host, u.port));
    format!(
        "upstream_{}_{}_{}_{}",
        u.scheme.as_str(),
        host,
        u.port,
        hex::encode(&digest[..4])
    )
}

fn tls_socket(u: &Upstream, is_ip: bool, settings: &ClusterSettings) -> TransportSocket {
    let san = SubjectAltNameMatcher {
        san_type: if is_ip {
            SanType::IpAddress
        } else {
            SanType::Dns
        } as i32,
        matcher: Some(StringMatcher {
            match_pattern: Some(MatchPattern::Exact(u.host.clone())),
            ..Default::default()
        }),
        ..Default::default()
    };
    let validation = CertificateValidationContext {
        trusted_ca: Some(DataSource {
            specifier: Some(Specifier::Filename(
                settings.trusted_ca_file.display().to_string(),
            )),
            ..Default::default()
        }),
        match_typed_subject_alt_names: vec![san],
        ..Default::default()
    };
    let ctx = UpstreamTlsContext {
        sni: if is_ip { String::new() } else { u.host.clone() },
        common_tls_context: Some(CommonTlsContext {
            validation_context_type: Some(ValidationContextType::ValidationContext(validation)),
            ..Default::default()
        }),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(ConfigType::TypedConfig(pack_any(ctx))),
    }
}

/// Translates an upstream into its cluster: STATIC for IP addresses, STRICT_DNS for host names,
/// TLS with SNI and certificate verification for https.
pub fn cluster(u: &Upstream, settings: &ClusterSettings) -> Cluster {
    let is_ip = u.host.parse::<IpAddr>().is_ok();
    let discovery = if is_ip {
        DiscoveryType::Static
    } else {
        DiscoveryType::StrictDns
    };
    let endpoint = LbEndpoint {
        host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: u.host.clone(),
                    port_specifier: Some(PortSpecifier::PortValue(u32::from(u.port))),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        })),
        ..Default::default()
    };
    let name = cluster_name(u);
    let big = Some(UInt32Value { value: 1_000_000 });
    Cluster {
        name: name.clone(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(discovery as i32)),
        dns_lookup_family: DnsLookupFamily::V4Preferred as i32,
        connect_timeout: Some(PbDuration {
            seconds: settings.connect_timeout.as_secs() as i64,
            nanos: settings.connect_timeout.subsec_nanos() as i32,
        }),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name,
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![endpoint],
                ..Default::default()
            }],
            ..Default::default()
        }),
        circuit_breakers: Some(CircuitBreakers {
            thresholds: vec![Thresholds {
                max_connections: big,
                max_pending_requests: big,
                max_requests: big,
                ..Default::default()
            }],
            ..Default::default()
        }),
        transport_socket: (u.scheme == Scheme::Https).then(|| tls_socket(u, is_ip, settings)),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(scheme: Scheme, host: &str, port: u16) -> Upstream {
        Upstream {
            scheme,
            host: host.into(),
            port,
            base_path: String::new(),
        }
    }

    #[test]
    fn names_are_shared_per_scheme_host_port_and_unique() {
        let a = cluster_name(&up(Scheme::Http, "petstore.example.com", 80));
        assert!(
            a.starts_with("upstream_http_petstore_example_com_80_"),
            "{a}"
        );
        assert_eq!(
            a,
            cluster_name(&up(Scheme::Http, "petstore.example.com", 80))
        );
        assert_ne!(
            cluster_name(&up(Scheme::Http, "a.b", 80)),
            cluster_name(&up(Scheme::Http, "a_b", 80)),
            "sanitised names stay distinct"
        );
        assert_ne!(
            cluster_name(&up(Scheme::Http, "h", 80)),
            cluster_name(&up(Scheme::Https, "h", 80))
        );
    }

    #[test]
    fn ip_upstreams_are_static_and_plain() {
        let c = cluster(
            &up(Scheme::Http, "127.0.0.1", 9080),
            &ClusterSettings::default(),
        );
        assert_eq!(
            c.cluster_discovery_type,
            Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32))
        );
        assert!(c.transport_socket.is_none());
    }

    #[test]
    fn https_upstreams_verify_and_send_sni() {
        let c = cluster(
            &up(Scheme::Https, "api.example.com", 443),
            &ClusterSettings::default(),
        );
        assert_eq!(
            c.cluster_discovery_type,
            Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32))
        );
        let ts = c.transport_socket.unwrap();
        let Some(ConfigType::TypedConfig(any)) = ts.config_type else {
            panic!("no tls config")
        };
        let ctx: UpstreamTlsContext = prost::Message::decode(any.value.as_slice()).unwrap();
        assert_eq!(ctx.sni, "api.example.com");
        let Some(ValidationContextType::ValidationContext(v)) =
            ctx.common_tls_context.unwrap().validation_context_type
        else {
            panic!("no validation")
        };
        assert_eq!(v.match_typed_subject_alt_names.len(), 1);
    }
}
