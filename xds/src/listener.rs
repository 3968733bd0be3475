//! Pure translation of the router settings into the single HTTP listener.

use envoy_types::pb::envoy::config::accesslog::v3::{
    AccessLogFilter, ResponseFlagFilter, access_log_filter::FilterSpecifier,
};
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, DataSource, SocketAddress,
    SubstitutionFormatString, address, config_source::ConfigSourceSpecifier, data_source,
    socket_address::PortSpecifier, substitution_format_string,
};
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, Listener, filter,
    listener::{ConnectionBalanceConfig, connection_balance_config},
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, LocalReplyConfig, Rds, ResponseMapper,
    http_connection_manager::{CodecType, PathWithEscapedSlashesAction, RouteSpecifier},
    http_filter,
};
use envoy_types::pb::google::protobuf::BoolValue;
use envoy_types::util::pack_any;

use crate::policy::{PolicyEngineSettings, ext_proc_filter};
use crate::routes::{NOT_FOUND_BODY, ROUTE_CONFIG_NAME};

/// Name of the listener resource.
pub const LISTENER_NAME: &str = "gateway_http";

/// Where the router listens for traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSettings {
    /// Bind address, e.g. `0.0.0.0`.
    pub host: String,
    /// Bind port, e.g. 8080.
    pub port: u16,
}

impl Default for ListenerSettings {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".into(),
            port: 8080,
        }
    }
}

/// Envoy's own answer when no route matches becomes the JSON 404 of the contract, so the route
/// table needs no catch-all routes.
fn not_found_reply() -> LocalReplyConfig {
    let inline = |s: &str| DataSource {
        specifier: Some(data_source::Specifier::InlineString(s.to_string())),
        ..Default::default()
    };
    LocalReplyConfig {
        mappers: vec![ResponseMapper {
            filter: Some(AccessLogFilter {
                filter_specifier: Some(FilterSpecifier::ResponseFlagFilter(ResponseFlagFilter {
                    flags: vec!["NR".into()],
                })),
            }),
            body: Some(inline(NOT_FOUND_BODY)),
            body_format_override: Some(SubstitutionFormatString {
                format: Some(substitution_format_string::Format::TextFormatSource(
                    inline("%LOCAL_REPLY_BODY%"),
                )),
                content_type: "application/json".into(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The HTTP listener: path normalisation on, routes from RDS over ADS, the router filter last.
/// `SO_REUSEPORT` is off so that a stale Envoy on the same port makes the new one fail loudly
/// instead of silently sharing traffic; connections are balanced exactly across workers.
pub fn listener(settings: &ListenerSettings, policy: &PolicyEngineSettings) -> Listener {
    let hcm = HttpConnectionManager {
        codec_type: CodecType::Auto as i32,
        stat_prefix: "gateway".into(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ConfigSource {
                config_source_specifier: Some(ConfigSourceSpecifier::Ads(
                    AggregatedConfigSource {},
                )),
                resource_api_version: ApiVersion::V3 as i32,
                ..Default::default()
            }),
            route_config_name: ROUTE_CONFIG_NAME.into(),
        })),
        http_filters: vec![
            ext_proc_filter(policy),
            HttpFilter {
                name: "envoy.filters.http.router".into(),
                config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
                    Router::default(),
                ))),
                ..Default::default()
            },
        ],
        normalize_path: Some(BoolValue { value: true }),
        merge_slashes: true,
        path_with_escaped_slashes_action: PathWithEscapedSlashesAction::KeepUnchanged as i32,
        local_reply_config: Some(not_found_reply()),
        ..Default::default()
    };
    Listener {
        name: LISTENER_NAME.into(),
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: settings.host.clone(),
                port_specifier: Some(PortSpecifier::PortValue(u32::from(settings.port))),
                ..Default::default()
            })),
        }),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(pack_any(hcm))),
            }],
            ..Default::default()
        }],
        enable_reuse_port: Some(BoolValue { value: false }),
        connection_balance_config: Some(ConnectionBalanceConfig {
            balance_type: Some(connection_balance_config::BalanceType::ExactBalance(
                connection_balance_config::ExactBalance {},
            )),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_binds_configured_address_and_uses_rds() {
        let l = listener(
            &ListenerSettings {
                host: "127.0.0.1".into(),
                port: 18080,
            },
            &PolicyEngineSettings::default(),
        );
        let Some(address::Address::SocketAddress(sa)) = l.address.unwrap().address else {
            panic!("no address")
        };
        assert_eq!(sa.address, "127.0.0.1");
        assert_eq!(sa.port_specifier, Some(PortSpecifier::PortValue(18080)));
        let Some(filter::ConfigType::TypedConfig(any)) = &l.filter_chains[0].filters[0].config_type
        else {
            panic!("no hcm")
        };
        let hcm: HttpConnectionManager = prost::Message::decode(any.value.as_slice()).unwrap();
        let Some(RouteSpecifier::Rds(rds)) = hcm.route_specifier else {
            panic!("not rds")
        };
        assert_eq!(rds.route_config_name, ROUTE_CONFIG_NAME);
        assert_eq!(
            hcm.http_filters.last().unwrap().name,
            "envoy.filters.http.router"
        );
        assert_eq!(hcm.http_filters[0].name, crate::policy::EXT_PROC_FILTER);
    }
}
