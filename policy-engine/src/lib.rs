//! Policies of the gateway: their definitions and parameters ([`spec`]), the order in which they
//! apply to an operation ([`chain`]), the rate limiter ([`gcra`]), and how their configuration
//! reaches policy engines ([`distribution`]).

pub mod chain;
pub mod distribution;
pub mod gcra;
pub mod spec;

pub use spec::{FieldError, Policy, PolicyKind, parse_policy};
