//! Reaching an OVSDB remote: OVS remote syntax, TLS material, dialling. No policy, no state.

pub mod client;
pub mod dial;
pub mod remote;
pub mod tls;
