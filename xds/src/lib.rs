//! Translation of deployed APIs into Envoy resources (listener, clusters, routes) and the ADS
//! server that streams them to Envoy. Translation is pure and deterministic; I/O lives in
//! [`server`].

pub mod ads_stream;
pub mod clusters;
pub mod listener;
pub mod model;
pub mod policy;
pub mod routes;
pub mod server;
pub mod snapshot;

pub use clusters::ClusterSettings;
pub use listener::ListenerSettings;
pub use model::{ApiRoutes, Operation, PathError, PathPattern, Scheme, Upstream, route_key};
pub use policy::PolicyEngineSettings;
pub use routes::RouteSettings;
pub use server::{Xds, XdsError, XdsMetrics};
pub use snapshot::XdsSettings;
