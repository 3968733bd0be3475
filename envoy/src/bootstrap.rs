//! The Envoy bootstrap: node identity, admin on loopback, and the ADS cluster over HTTP/2.
//! Everything else (listener, routes, upstream clusters) arrives over xDS.

use std::net::IpAddr;

use serde_json::{Value, json};

/// What the bootstrap needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapSettings {
    /// Node id Envoy presents to the ADS server.
    pub node_id: String,
    /// Host of the ADS server (IP address or DNS name).
    pub xds_host: String,
    /// Port of the ADS server.
    pub xds_port: u16,
    /// Address of Envoy's admin interface (keep it on loopback).
    pub admin_host: String,
    /// Port of Envoy's admin interface.
    pub admin_port: u16,
}

/// Renders the bootstrap as JSON (which Envoy reads as YAML).
pub fn render(s: &BootstrapSettings) -> Value {
    let discovery = if s.xds_host.parse::<IpAddr>().is_ok() {
        "STATIC"
    } else {
        "STRICT_DNS"
    };
    json!({
        "node": {"id": s.node_id, "cluster": "gateway"},
        "admin": {"address": {"socket_address": {"address": s.admin_host, "port_value": s.admin_port}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds_cluster"}}],
                "set_node_on_first_message_only": true
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"}
        },
        "static_resources": {"clusters": [{
            "name": "xds_cluster",
            "type": discovery,
            "connect_timeout": "1s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}}
                }
            },
            "load_assignment": {
                "cluster_name": "xds_cluster",
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                    "address": s.xds_host, "port_value": s.xds_port
                }}}}]}]
            }
        }]},
        // Every route-table rebuild briefly holds the old and the new table. shrink_heap (kept
        // active by a fixed_heap monitor with a limit far above any real use) makes Envoy hand
        // free pages back to the OS once more than ~100 MiB of its heap is unused.
        "overload_manager": {
            "refresh_interval": "1s",
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                        "max_active_downstream_connections": 50000
                    }
                },
                {
                    "name": "envoy.resource_monitors.fixed_heap",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig",
                        "max_heap_size_bytes": 68719476736u64
                    }
                }
            ],
            "actions": [{
                "name": "envoy.overload_actions.shrink_heap",
                "triggers": [{"name": "envoy.resource_monitors.fixed_heap", "threshold": {"value": 0.00001}}]
            }]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(host: &str) -> BootstrapSettings {
        BootstrapSettings {
            node_id: "router".into(),
            xds_host: host.into(),
            xds_port: 18000,
            admin_host: "127.0.0.1".into(),
            admin_port: 9901,
        }
    }

    #[test]
    fn ads_cluster_is_http2_and_points_at_the_controller() {
        let b = render(&settings("127.0.0.1"));
        let c = &b["static_resources"]["clusters"][0];
        assert_eq!(c["type"], "STATIC");
        assert!(
            c["typed_extension_protocol_options"]
                .to_string()
                .contains("http2_protocol_options")
        );
        let addr = &c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            ["socket_address"];
        assert_eq!(addr["port_value"], 18000);
        assert_eq!(
            b["admin"]["address"]["socket_address"]["address"],
            "127.0.0.1"
        );
        assert_eq!(b["dynamic_resources"]["cds_config"]["ads"], json!({}));
    }

    #[test]
    fn dns_names_use_strict_dns() {
        assert_eq!(
            render(&settings("controller"))["static_resources"]["clusters"][0]["type"],
            "STRICT_DNS"
        );
    }
}

#[cfg(test)]
mod compose_tests {
    use super::*;

    /// The bootstrap shipped for docker-compose is exactly what `render` produces for it.
    #[test]
    fn compose_bootstrap_file_is_current() {
        let expected = render(&BootstrapSettings {
            node_id: "gateway-1-router".into(),
            xds_host: "controller".into(),
            xds_port: 18000,
            admin_host: "127.0.0.1".into(),
            admin_port: 9901,
        });
        let shipped: Value =
            serde_json::from_str(include_str!("../compose-bootstrap.json")).unwrap();
        assert_eq!(
            shipped, expected,
            "regenerate envoy/compose-bootstrap.json from bootstrap::render"
        );
    }
}
