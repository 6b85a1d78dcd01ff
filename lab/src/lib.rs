//! The harness of ovn-nb-proxy, kept out of the product: throw-away NB databases and Raft
//! clusters (`sandbox`), a whole OVN deployment on simulated hypervisors (`ovn`), the
//! real-packet lab in network namespaces (`netlab`), and the README's demo (`demo`). Used by
//! the demo binary, the integration tests and the benches; it owns processes, never the data
//! path. Its connections to a database go through the product's one OVSDB client (`client`).

pub mod client;
pub mod demo;
pub mod netlab;
pub mod ovn;
pub mod sandbox;
