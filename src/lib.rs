//! ovn-nb-proxy: a transparent OVSDB JSON-RPC proxy for the OVN Northbound database.
//!
//! See ARCHITECTURE.md for the codemap. Layers: `wire` (pure framing and message
//! classification), `remote` (OVS remote syntax), `proxy` (the only code that owns sockets),
//! `demo` (the README's main job).

pub mod demo;
pub mod proxy;
pub mod remote;
pub mod sandbox;
pub mod wire;
