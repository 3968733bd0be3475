//! The gateway controller: management REST API, SQLite storage, and the wiring that turns stored
//! APIs into Envoy configuration.

pub mod app;
pub mod auth;
pub mod config;
pub mod http;
pub mod keys;
pub mod metrics;
pub mod model;
pub mod policy_view;
pub mod registry;
pub mod store;
pub mod sync;
pub mod validate;
pub mod websub;
