//! The integration tests, in one binary (one link on a 2-core machine, one run of the
//! harness). Every test talks to real OVN daemons and clients (`ovsdb-server` with the NB
//! schema, `ovn-nbctl`, `ovsdb-client`, the Python IDL, `ovsdbapp`, `ovn-northd`,
//! `ovn-controller`); the harness is the `ovn-nb-lab` crate, the shared helpers `common`.
//! Run one part with a filter: `cargo test --test it -- chaos::`.

mod common;

mod chaos;
mod cli;
mod clients;
mod cluster;
mod dataplane;
mod docker;
mod e2e;
mod faults;
mod hostile;
mod layers;
mod load;
mod migration;
mod operations;
mod policy_data;
mod python_clients;
mod raw;
mod reliability;
mod replay;
mod tls;
