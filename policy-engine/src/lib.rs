//! Policies of the gateway: their definitions and parameters ([`spec`]), the order in which they
//! apply to an operation ([`chain`]), the rate limiter ([`gcra`]), how their configuration reaches
//! policy engines ([`distribution`]), and the engine that enforces them for Envoy ([`engine`],
//! [`extproc`]).

pub mod chain;
pub mod distribution;
pub mod engine;
pub mod extproc;
pub mod gcra;
pub mod spec;

pub use spec::{FieldError, Policy, PolicyKind, parse_policy};
