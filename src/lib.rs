//! ovn-nb-proxy: a transparent OVSDB JSON-RPC proxy for the OVN Northbound database.
//!
//! The modules in layer order; each imports only the ones before it (an integration test
//! checks it). See ARCHITECTURE.md for the codemap and the invariants.
//!
//! - `wire`: bytes → whole messages, lazy JSON-RPC envelopes (pure)
//! - `policy`: the migration contract: tags, desired options, transaction plans (pure)
//! - `timeline`: what the proxy remembers of each migration (pure)
//! - `cache`: the views the proxy's monitors feed: NB ports, SB bindings (pure)
//! - `net`: reaching an OVSDB remote: syntax, TLS, dialling
//! - `transcript`: session transcripts: recording and replaying them
//! - `proxy`: the data path: listeners, sessions, upstreams, monitors, the reconciler
//! - `control`: the operator's side: `ovs-appctl` commands, metrics/health endpoint, daemon
//!   files, generated docs
//!
//! The demo and the test harness live in the `ovn-nb-lab` workspace crate.

pub mod wire;

pub mod policy;

pub mod timeline;

pub mod cache;

pub mod net;

pub mod transcript;

pub mod proxy;

pub mod control;
