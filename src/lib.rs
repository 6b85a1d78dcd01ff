//! ovn-nb-proxy: a transparent OVSDB JSON-RPC proxy for the OVN Northbound database.
//!
//! See ARCHITECTURE.md for the codemap. Pure layers: `wire` (framing, envelopes), `policy`
//! (migration rules), `rewrite` (glue between the two), `cache` (the port view), `remote` (OVS
//! remote syntax). Edges: `proxy` (the only code that owns sockets), `sandbox` and `demo`
//! (processes for the demo and the tests), `metrics`.

pub mod cache;
pub mod control;
pub mod daemon;
pub mod demo;
pub mod docs;
pub mod lab;
pub mod memory;
pub mod metrics;
pub mod netlab;
pub mod policy;
pub mod proxy;
pub mod record;
pub mod remote;
pub mod replay;
pub mod rewrite;
pub mod sandbox;
pub mod timeline;
pub mod tls;
pub mod wire;
