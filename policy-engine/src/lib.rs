//! Policies of the gateway: their definitions and parameters ([`spec`]), the order in which they
//! apply to an operation ([`chain`]), and the rate limiter ([`gcra`]).

pub mod chain;
pub mod gcra;
pub mod spec;

pub use spec::{FieldError, Policy, PolicyKind, parse_policy};
